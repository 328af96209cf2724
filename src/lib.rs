//! projectvm: a Kubernetes operator that gives every project its own persistent Compute
//! Engine VM and keeps it ready to work in.

pub mod api;

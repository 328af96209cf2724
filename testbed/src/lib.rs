//! Local test bed for projectvm.
//!
//! - [`gce`]: a Compute Engine emulator (compute v1 REST, Google's JSON and errors) whose
//!   instances are real systemd-nspawn machines (or plain records for fast tests).

pub mod gce;

pub fn placeholder() {}

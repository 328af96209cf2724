//! End-to-end suite on the local test bed (see `testbed/bed.sh`): a real kube-apiserver,
//! the chart installed with helm, the operator running with the chart's ServiceAccount,
//! the Compute Engine emulator whose instances are real machines, and an HTTPS git host.
//! Everything is driven the way a user would: `kubectl apply`, `kubectl wait`, a browser.
//!
//! Run with `./scripts/test.sh` (which brings the bed up and passes PROJECTVM_TESTBED).
//! The tests are `#[ignore]`d so a plain `cargo test` does not need the bed.

#[path = "e2e/bed.rs"]
mod bed;
#[path = "e2e/booting.rs"]
mod booting;
#[path = "e2e/chart.rs"]
mod chart;
#[path = "e2e/clusters.rs"]
mod clusters;
#[path = "e2e/errors.rs"]
mod errors;
#[path = "e2e/ingress.rs"]
mod ingress;
#[path = "e2e/kstatus.rs"]
mod kstatus;
#[path = "e2e/leader.rs"]
mod leader;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/names.rs"]
mod names;
#[path = "e2e/plugin.rs"]
mod plugin;
#[path = "e2e/projectvm.rs"]
mod projectvm;
#[path = "e2e/rbac.rs"]
mod rbac;
#[path = "e2e/runs.rs"]
mod runs;
#[path = "e2e/scale.rs"]
mod scale;
#[path = "e2e/shards.rs"]
mod shards;
#[path = "e2e/sharing.rs"]
mod sharing;
#[path = "e2e/stock.rs"]
mod stock;
#[path = "e2e/workspace.rs"]
mod workspace;

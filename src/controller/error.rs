//! Errors that end a reconcile early, and how long to back off after them.

use std::time::Duration;

use crate::cloud::CloudError;

/// Errors that abort a reconcile; the error policy retries them with capped backoff.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Compute Engine: {0}")]
    Cloud(#[from] CloudError),
    #[error("{0}")]
    Invalid(String),
    /// Already recorded in a condition by the stage that met it; only backs off.
    #[error("{0}")]
    Reported(Box<Error>),
    /// A panic inside this object's reconcile, contained to it.
    #[error("internal error: {0}")]
    Internal(String),
    #[error("finalizer: {0}")]
    Finalizer(#[source] Box<kube::runtime::finalizer::Error<Error>>),
    /// Deletion is under way; not a failure.
    #[error("{what}: still in progress")]
    CleanupPending { what: String, retry_in: Duration },
}

impl Error {
    /// When deletion is simply not finished yet, how soon to look again.
    pub(crate) fn pending(&self) -> Option<Duration> {
        match self {
            Error::CleanupPending { retry_in, .. } => Some(*retry_in),
            Error::Finalizer(f) => match f.as_ref() {
                kube::runtime::finalizer::Error::CleanupFailed(e) => e.pending(),
                _ => None,
            },
            _ => None,
        }
    }
}

/// Capped exponential backoff for failed reconciles: 2 s, 4 s, … up to 5 minutes.
pub fn error_backoff(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.min(9)).min(300))
}

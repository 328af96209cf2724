//! What the Compute Engine edge counts: `projectvm_compute_requests_total{method,code}`, one
//! per HTTP request sent (each page of a list counts), by Compute Engine's method name and
//! the HTTP status it answered (`error` when no answer came, `throttled` when the operator's
//! own rate limit refused to send it); and the rate limit in force.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::metrics::Metrics;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: String,
    code: String,
}

/// The Compute Engine edge's counters; clones share them.
#[derive(Clone, Debug, Default)]
pub struct ComputeRequests {
    requests: Family<RequestLabels, Counter>,
    rate: Gauge<f64, AtomicU64>,
}

impl ComputeRequests {
    /// Counters registered with the operator's metrics.
    pub fn registered(metrics: &Metrics) -> Self {
        let c = Self::default();
        metrics.register(
            "compute_requests",
            "Compute Engine requests sent, by method and HTTP status",
            c.requests.clone(),
        );
        metrics.register(
            "compute_rate_limit_qps",
            "Compute Engine requests per second the client allows itself now (--compute-qps, lower after rateLimitExceeded)",
            c.rate.clone(),
        );
        c
    }

    pub fn observe(&self, method: &str, code: &str) {
        self.requests.get_or_create(&RequestLabels { method: method.into(), code: code.into() }).inc();
    }

    pub fn set_rate(&self, qps: f64) {
        self.rate.set(qps);
    }

    /// Requests counted so far for this method and code.
    pub fn count(&self, method: &str, code: &str) -> u64 {
        self.requests.get(&RequestLabels { method: method.into(), code: code.into() }).map(|c| c.get()).unwrap_or(0)
    }
}

//! Prometheus metrics.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ObjectLabels {
    kind: String,
    namespace: String,
    name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NamespaceLabel {
    namespace: String,
}

/// The operator's metrics.
pub struct Metrics {
    registry: Mutex<Registry>,
    reconciles: Family<KindLabel, Counter>,
    failures: Family<KindLabel, Counter>,
    status_writes: Family<KindLabel, Counter>,
    duration: Family<KindLabel, Histogram>,
    ready: Family<ObjectLabels, Gauge>,
    accrued: Family<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    hourly: Family<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    per_namespace: Mutex<std::collections::HashMap<(String, String), f64>>,
    namespace_cost: Family<NamespaceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub tasks_running: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("projectvm");
        let reconciles = Family::<KindLabel, Counter>::default();
        let failures = Family::<KindLabel, Counter>::default();
        let status_writes = Family::<KindLabel, Counter>::default();
        let duration = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
        });
        let ready = Family::<ObjectLabels, Gauge>::default();
        let accrued = Family::<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let hourly = Family::<ObjectLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let namespace_cost = Family::<NamespaceLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        let tasks_running = Gauge::default();
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register("reconcile_errors", "Reconciles that failed and were retried", failures.clone());
        registry.register("status_writes", "Status writes (only changed statuses are written)", status_writes.clone());
        registry.register("reconcile_duration_seconds", "Time spent in one reconcile", duration.clone());
        registry.register("ready", "1 when the resource's Ready condition is True", ready.clone());
        registry.register("cost_accrued_dollars", "Cost accrued by one resource's VM, USD", accrued.clone());
        registry.register("cost_hourly_rate_dollars", "Current hourly rate of one resource's VM, USD", hourly.clone());
        registry.register(
            "namespace_cost_accrued_dollars",
            "Cost accrued by all VMs of a namespace, USD",
            namespace_cost.clone(),
        );
        registry.register("tasks_running", "Step tasks running on VMs", tasks_running.clone());
        Self {
            registry: Mutex::new(registry),
            reconciles,
            failures,
            status_writes,
            duration,
            ready,
            accrued,
            hourly,
            per_namespace: Mutex::new(Default::default()),
            namespace_cost,
            tasks_running,
        }
    }

    pub fn observe_reconcile(&self, kind: &str, took: Duration) {
        let l = KindLabel { kind: kind.into() };
        self.reconciles.get_or_create(&l).inc();
        self.duration.get_or_create(&l).observe(took.as_secs_f64());
    }

    pub fn status_written(&self, kind: &str) {
        self.status_writes.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    pub fn reconcile_failed(&self, kind: &str) {
        self.failures.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    pub fn set_ready(&self, kind: &str, namespace: &str, name: &str, ready: bool) {
        let l = ObjectLabels { kind: kind.into(), namespace: namespace.into(), name: name.into() };
        self.ready.get_or_create(&l).set(i64::from(ready));
    }

    pub fn set_cost(&self, kind: &str, namespace: &str, name: &str, accrued: f64, hourly: f64) {
        let l = ObjectLabels { kind: kind.into(), namespace: namespace.into(), name: name.into() };
        self.accrued.get_or_create(&l).set(accrued);
        self.hourly.get_or_create(&l).set(hourly);
        let mut per = self.per_namespace.lock().expect("metrics lock");
        per.insert((namespace.to_string(), format!("{kind}/{name}")), accrued);
        let total: f64 = per.iter().filter(|((ns, _), _)| ns == namespace).map(|(_, v)| v).sum();
        self.namespace_cost.get_or_create(&NamespaceLabel { namespace: namespace.into() }).set(total);
    }

    /// Drops a deleted resource's series.
    pub fn forget(&self, kind: &str, namespace: &str, name: &str) {
        let l = ObjectLabels { kind: kind.into(), namespace: namespace.into(), name: name.into() };
        self.ready.remove(&l);
        self.accrued.remove(&l);
        self.hourly.remove(&l);
        self.per_namespace.lock().expect("metrics lock").remove(&(namespace.to_string(), format!("{kind}/{name}")));
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("metrics lock");
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }

    /// Registers a metric kept by an edge (the Compute Engine and Kubernetes clients count
    /// their own requests).
    pub fn register(&self, name: &str, help: &str, metric: impl prometheus_client::registry::Metric) {
        self.registry.lock().expect("metrics lock").register(name, help, metric);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_cost_per_namespace() {
        let m = Metrics::new();
        m.set_cost("projectvm", "team-a", "api", 1.5, 0.03);
        m.set_cost("workspace", "team-a", "ui", 0.5, 0.03);
        m.set_cost("projectvm", "team-b", "x", 2.0, 0.03);
        m.observe_reconcile("projectvm", Duration::from_millis(20));
        let text = m.render();
        assert!(text.contains("projectvm_namespace_cost_accrued_dollars{namespace=\"team-a\"} 2.0"), "{text}");
        assert!(text.contains("projectvm_namespace_cost_accrued_dollars{namespace=\"team-b\"} 2.0"), "{text}");
        assert!(text.contains("projectvm_reconciles_total{kind=\"projectvm\"} 1"), "{text}");
        m.forget("workspace", "team-a", "ui");
        m.set_cost("projectvm", "team-a", "api", 1.5, 0.03);
        assert!(m.render().contains("projectvm_namespace_cost_accrued_dollars{namespace=\"team-a\"} 1.5"));
    }
}

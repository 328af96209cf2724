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

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    kind: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LeaseLabel {
    lease: String,
}

type FloatGauge = Gauge<f64, std::sync::atomic::AtomicU64>;
type FloatCounter = Counter<f64, std::sync::atomic::AtomicU64>;

/// What one resource's VM is doing, for the per-resource series.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VmGauges {
    pub running: bool,
    /// Unix seconds of the last activity seen, if any.
    pub last_activity: Option<f64>,
    /// `idleTimeout` in seconds, when set.
    pub idle_timeout: Option<f64>,
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
    namespace_spend: Family<NamespaceLabel, FloatCounter>,
    time_to_ready: Family<KindLabel, Histogram>,
    failures_by_reason: Family<ReasonLabels, Counter>,
    leader: Family<LeaseLabel, Gauge>,
    vm_running: Family<ObjectLabels, Gauge>,
    last_activity: Family<ObjectLabels, FloatGauge>,
    idle_timeout: Family<ObjectLabels, FloatGauge>,
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
        let namespace_spend = Family::<NamespaceLabel, FloatCounter>::default();
        // From a few seconds (a prepared image) to the better part of an hour (a big install).
        let time_to_ready = Family::<KindLabel, Histogram>::new_with_constructor(|| {
            Histogram::new([1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0])
        });
        let failures_by_reason = Family::<ReasonLabels, Counter>::default();
        let leader = Family::<LeaseLabel, Gauge>::default();
        let vm_running = Family::<ObjectLabels, Gauge>::default();
        let last_activity = Family::<ObjectLabels, FloatGauge>::default();
        let idle_timeout = Family::<ObjectLabels, FloatGauge>::default();
        registry.register(
            "namespace_cost_dollars",
            "Cost accrued by the VMs of a namespace while this operator watched them, USD; kept when a VM is deleted (use increase() over a window)",
            namespace_spend.clone(),
        );
        registry.register(
            "time_to_ready_seconds",
            "Time from a resource's creation to its first Ready",
            time_to_ready.clone(),
        );
        registry.register(
            "failures",
            "Failures reported to users (Warning events), by reason",
            failures_by_reason.clone(),
        );
        registry.register("leader", "1 while this replica holds the Lease and reconciles", leader.clone());
        registry.register("vm_running", "1 when the resource's VM is running", vm_running.clone());
        registry.register(
            "last_activity_timestamp_seconds",
            "Unix time of the last activity seen on the resource's VM",
            last_activity.clone(),
        );
        registry.register("idle_timeout_seconds", "The resource's idleTimeout, when it has one", idle_timeout.clone());
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
            namespace_spend,
            time_to_ready,
            failures_by_reason,
            leader,
            vm_running,
            last_activity,
            idle_timeout,
            tasks_running,
        }
    }

    /// A resource became Ready for the first time, `took` after its creation.
    pub fn first_ready(&self, kind: &str, took: Duration) {
        self.time_to_ready.get_or_create(&KindLabel { kind: kind.into() }).observe(took.as_secs_f64());
    }

    /// A failure users were told about (a Warning event).
    pub fn failure(&self, kind: &str, reason: &str) {
        self.failures_by_reason.get_or_create(&ReasonLabels { kind: kind.into(), reason: reason.into() }).inc();
    }

    /// Whether this replica leads (and so reconciles) under `lease`.
    pub fn set_leader(&self, lease: &str, leading: bool) {
        self.leader.get_or_create(&LeaseLabel { lease: lease.into() }).set(i64::from(leading));
    }

    pub fn set_vm(&self, kind: &str, namespace: &str, name: &str, vm: VmGauges) {
        let l = ObjectLabels { kind: kind.into(), namespace: namespace.into(), name: name.into() };
        self.vm_running.get_or_create(&l).set(i64::from(vm.running));
        set_or_remove(&self.last_activity, &l, vm.last_activity);
        set_or_remove(&self.idle_timeout, &l, vm.idle_timeout);
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
        // The spend counter grows by what the resource accrued since it was last seen; the
        // first sight in this process only sets the baseline (what came before was counted
        // by the process before, whose counter Prometheus keeps across the reset).
        if let Some(before) = per.insert((namespace.to_string(), format!("{kind}/{name}")), accrued)
            && accrued > before
        {
            self.namespace_spend
                .get_or_create(&NamespaceLabel { namespace: namespace.into() })
                .inc_by(accrued - before);
        }
        let total: f64 = per.iter().filter(|((ns, _), _)| ns == namespace).map(|(_, v)| v).sum();
        self.namespace_cost.get_or_create(&NamespaceLabel { namespace: namespace.into() }).set(total);
    }

    /// Drops a deleted resource's series.
    pub fn forget(&self, kind: &str, namespace: &str, name: &str) {
        let l = ObjectLabels { kind: kind.into(), namespace: namespace.into(), name: name.into() };
        self.ready.remove(&l);
        self.accrued.remove(&l);
        self.hourly.remove(&l);
        self.vm_running.remove(&l);
        self.last_activity.remove(&l);
        self.idle_timeout.remove(&l);
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

/// A series that exists only while its value does.
fn set_or_remove(family: &Family<ObjectLabels, FloatGauge>, labels: &ObjectLabels, value: Option<f64>) {
    match value {
        Some(v) => {
            family.get_or_create(labels).set(v);
        }
        None => {
            family.remove(labels);
        }
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

    fn value(text: &str, series: &str) -> Option<f64> {
        text.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    }

    #[test]
    fn namespace_spend_never_drops_when_a_vm_is_deleted() {
        let m = Metrics::new();
        m.set_cost("projectvm", "team-a", "api", 1.0, 0.03);
        m.set_cost("workspace", "team-a", "ui", 2.0, 0.03);
        m.set_cost("projectvm", "team-a", "api", 1.5, 0.03);
        m.set_cost("workspace", "team-a", "ui", 2.25, 0.03);
        let series = "projectvm_namespace_cost_dollars_total{namespace=\"team-a\"}";
        assert_eq!(value(&m.render(), series), Some(0.75), "growth since first sight");
        m.forget("workspace", "team-a", "ui");
        assert_eq!(value(&m.render(), series), Some(0.75), "the deleted VM's spend stays");
        m.set_cost("projectvm", "team-a", "api", 2.0, 0.03);
        assert_eq!(value(&m.render(), series), Some(1.25));
    }

    #[test]
    fn per_resource_series_go_with_the_resource() {
        let m = Metrics::new();
        let vm = VmGauges { running: true, last_activity: Some(1_700_000_000.0), idle_timeout: Some(3600.0) };
        m.set_vm("projectvm", "ns", "a", vm);
        m.set_ready("projectvm", "ns", "a", true);
        m.set_cost("projectvm", "ns", "a", 1.0, 0.1);
        m.first_ready("projectvm", Duration::from_secs(3));
        m.failure("workspace", "Unhealthy");
        m.set_leader("projectvm-operator", true);
        let text = m.render();
        for series in [
            "projectvm_vm_running{kind=\"projectvm\",namespace=\"ns\",name=\"a\"} 1",
            "projectvm_idle_timeout_seconds{kind=\"projectvm\",namespace=\"ns\",name=\"a\"} 3600",
            "projectvm_time_to_ready_seconds_bucket{le=\"5.0\",kind=\"projectvm\"} 1",
            "projectvm_failures_total{kind=\"workspace\",reason=\"Unhealthy\"} 1",
            "projectvm_leader{lease=\"projectvm-operator\"} 1",
        ] {
            assert!(text.contains(series), "{series} in:\n{text}");
        }
        m.forget("projectvm", "ns", "a");
        let text = m.render();
        assert!(!text.contains("name=\"a\""), "no series of a deleted resource:\n{text}");
    }
}

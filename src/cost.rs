//! Cost accounting: a rate table and the arithmetic that turns recorded running periods
//! into accrued and estimated cost. Compute is charged while running, disk always.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::api::{CostStatus, PowerStatus};

/// Hours in the month Compute Engine bills by.
pub const HOURS_PER_MONTH: f64 = 730.0;

/// Prices in USD: per running hour by machine type, and per GB-month of disk.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Rates {
    #[serde(default = "default_machine_rates")]
    pub machine_types: BTreeMap<String, f64>,
    #[serde(default = "default_disk_rate")]
    pub disk_per_gb_month: f64,
}

impl Default for Rates {
    fn default() -> Self {
        Self { machine_types: default_machine_rates(), disk_per_gb_month: default_disk_rate() }
    }
}

// On-demand e2 prices in us-central1; override with `--rates-file`.
fn default_machine_rates() -> BTreeMap<String, f64> {
    [
        ("e2-micro", 0.008376),
        ("e2-small", 0.016751),
        ("e2-medium", 0.033503),
        ("e2-standard-2", 0.067006),
        ("e2-standard-4", 0.134012),
        ("e2-standard-8", 0.268024),
        ("e2-standard-16", 0.536048),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

// Standard persistent disk, per GB-month.
fn default_disk_rate() -> f64 {
    0.04
}

impl Rates {
    /// Reads a rates file; machine types it names override the defaults, others stay.
    pub fn from_yaml(text: &str) -> Result<Self, serde_yaml::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Overrides {
            #[serde(default)]
            machine_types: BTreeMap<String, f64>,
            disk_per_gb_month: Option<f64>,
        }
        let o: Overrides = serde_yaml::from_str(text)?;
        let mut rates = Rates::default();
        rates.machine_types.extend(o.machine_types);
        if let Some(d) = o.disk_per_gb_month {
            rates.disk_per_gb_month = d;
        }
        Ok(rates)
    }

    /// USD per running hour of a machine type; 0 for a type the table does not know.
    pub fn compute_hourly(&self, machine_type: &str) -> f64 {
        self.machine_types.get(machine_type).copied().unwrap_or(0.0)
    }

    /// USD per hour of a disk of this size.
    pub fn disk_hourly(&self, disk_gb: i32) -> f64 {
        f64::from(disk_gb) * self.disk_per_gb_month / HOURS_PER_MONTH
    }
}

fn hours_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    ((to - from).num_milliseconds().max(0) as f64) / 3_600_000.0
}

fn parse(ts: &Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime>) -> Option<DateTime<Utc>> {
    ts.as_ref().map(crate::clock::from_micro_time)
}

/// Advances the power history given what the cloud reports now. A running period opens at
/// the instance's last start time and closes at its last stop time, so the history is right
/// even when the operator was down during a transition.
pub fn observe_power(
    power: &PowerStatus,
    running: bool,
    last_start: Option<DateTime<Utc>>,
    last_stop: Option<DateTime<Utc>>,
    created: Option<DateTime<Utc>>,
    compute_hourly: f64,
    now: DateTime<Utc>,
) -> PowerStatus {
    let mut next = power.clone();
    if next.created_at.is_none() {
        next.created_at = Some(crate::clock::micro_time(created.unwrap_or(now)));
    }
    match (running, parse(&power.running_since)) {
        (true, None) => {
            next.running_since = Some(crate::clock::micro_time(last_start.unwrap_or(now)));
        }
        (false, Some(since)) => {
            let end = last_stop.filter(|s| *s >= since).unwrap_or(now);
            let hours = hours_between(since, end);
            next.running_hours_closed += hours;
            next.compute_cost_closed += hours * compute_hourly;
            next.running_since = None;
        }
        _ => {}
    }
    next
}

/// The cost block from the power history.
pub fn cost(power: &PowerStatus, compute_hourly: f64, disk_hourly: f64, now: DateTime<Utc>) -> CostStatus {
    let open_hours = parse(&power.running_since).map(|s| hours_between(s, now)).unwrap_or(0.0);
    let hours_used = power.running_hours_closed + open_hours;
    let compute = power.compute_cost_closed + open_hours * compute_hourly;
    let lifetime = parse(&power.created_at).map(|c| hours_between(c, now)).unwrap_or(0.0);
    let disk = lifetime * disk_hourly;
    let accrued = compute + disk;
    // The running share of the VM's life so far predicts the month; a VM younger than an
    // hour is assumed to keep its current state.
    let running_share = if lifetime >= 1.0 {
        (hours_used / lifetime).clamp(0.0, 1.0)
    } else if power.running_since.is_some() {
        1.0
    } else {
        0.0
    };
    let estimated_monthly = HOURS_PER_MONTH * (running_share * compute_hourly + disk_hourly);
    CostStatus {
        hourly_rate: round(compute_hourly + disk_hourly, 6),
        hours_used: round(hours_used, 4),
        accrued: round(accrued, 6),
        estimated_monthly: round(estimated_monthly, 2),
        display: Some(format!("${accrued:.2}")),
        computed_at: Some(crate::clock::time(now)),
    }
}

/// The cost block of a VM that does not exist yet: nothing accrued, and the month predicted
/// from the spec alone (running all month unless it is to stay stopped).
pub fn estimate(compute_hourly: f64, disk_hourly: f64, will_run: bool, now: DateTime<Utc>) -> CostStatus {
    let running = if will_run { compute_hourly } else { 0.0 };
    let estimated_monthly = HOURS_PER_MONTH * (running + disk_hourly);
    CostStatus {
        hourly_rate: round(compute_hourly + disk_hourly, 6),
        hours_used: 0.0,
        accrued: 0.0,
        estimated_monthly: round(estimated_monthly, 2),
        display: Some("$0.00".into()),
        computed_at: Some(crate::clock::time(now)),
    }
}

/// What the estimate says before a VM is made, e.g. `e2-standard-8 with a 200 GB disk:
/// about $211.64 a month running all month ($0.2790/h)`.
pub fn estimate_note(rates: &Rates, machine_type: &str, disk_gb: i32, will_run: bool) -> String {
    let compute = rates.compute_hourly(machine_type);
    let disk = rates.disk_hourly(disk_gb);
    let e = estimate(compute, disk, will_run, Utc::now());
    let unknown = if rates.machine_types.contains_key(machine_type) {
        String::new()
    } else {
        format!("; no rate is known for {machine_type}, so compute is not counted (add it to the rates file)")
    };
    let how = if will_run { "running all month" } else { "kept stopped (disk only)" };
    format!(
        "{machine_type} with a {disk_gb} GB disk: about ${:.2} a month {how} (${:.4}/h while running){unknown}",
        e.estimated_monthly,
        compute + disk
    )
}

fn round(v: f64, digits: i32) -> f64 {
    let f = 10f64.powi(digits);
    (v * f).round() / f
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn estimates_before_the_vm_exists() {
        let rates = Rates::default();
        let e = estimate(rates.compute_hourly("e2-standard-8"), rates.disk_hourly(200), true, t(0));
        assert_eq!(e.accrued, 0.0);
        assert_eq!(e.estimated_monthly, round(730.0 * 0.268024 + 200.0 * 0.04, 2));
        let halted = estimate(rates.compute_hourly("e2-standard-8"), rates.disk_hourly(200), false, t(0));
        assert_eq!(halted.estimated_monthly, 8.0, "disk only");
        let note = estimate_note(&rates, "e2-standard-8", 200, true);
        assert!(note.contains("$203.66 a month running all month"), "{note}");
        let odd = estimate_note(&rates, "n2-highmem-96", 50, true);
        assert!(odd.contains("no rate is known for n2-highmem-96"), "{odd}");
    }

    fn t(h: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap() + chrono::Duration::hours(h)
    }

    #[test]
    fn default_rates_cover_presets() {
        let r = Rates::default();
        for s in ["e2-small", "e2-medium", "e2-standard-4", "e2-standard-8"] {
            assert!(r.compute_hourly(s) > 0.0, "{s}");
        }
        assert_eq!(r.compute_hourly("n2-custom-4-8192"), 0.0);
        assert!((r.disk_hourly(730) - 0.04).abs() < 1e-12);
    }

    #[test]
    fn rates_file_overrides_some() {
        let r = Rates::from_yaml("machineTypes:\n  e2-medium: 1.5\ndiskPerGbMonth: 0.1\n").unwrap();
        assert_eq!(r.compute_hourly("e2-medium"), 1.5);
        assert_eq!(r.compute_hourly("e2-small"), 0.016751);
        assert_eq!(r.disk_per_gb_month, 0.1);
        assert!(Rates::from_yaml("machineTypes: [").is_err());
    }

    #[test]
    fn start_stop_cycle_accrues_hand_computed_cost() {
        let rate = 0.5;
        let disk_hourly = 0.01;
        let p0 = PowerStatus::default();
        // created and started at t0, stopped at t3, looked at again at t10
        let p1 = observe_power(&p0, true, Some(t(0)), None, Some(t(0)), rate, t(1));
        assert_eq!(p1.running_since, Some(crate::clock::micro_time(t(0))));
        let p2 = observe_power(&p1, false, Some(t(0)), Some(t(3)), Some(t(0)), rate, t(4));
        assert_eq!(p2.running_since, None);
        assert!((p2.running_hours_closed - 3.0).abs() < 1e-9);
        let c = cost(&p2, rate, disk_hourly, t(10));
        // compute 3h * 0.5 + disk 10h * 0.01
        assert!((c.accrued - 1.6).abs() < 1e-9, "{c:?}");
        assert!((c.hours_used - 3.0).abs() < 1e-9);
        assert_eq!(c.display.as_deref(), Some("$1.60"));
        // ran 30% of its life: 730 * (0.3*0.5 + 0.01)
        assert!((c.estimated_monthly - 116.8).abs() < 0.01, "{c:?}");
    }

    #[test]
    fn running_period_counts_until_now() {
        let p = observe_power(&PowerStatus::default(), true, Some(t(0)), None, Some(t(0)), 1.0, t(0));
        let c = cost(&p, 1.0, 0.0, t(2));
        assert!((c.accrued - 2.0).abs() < 1e-9);
        assert!((c.estimated_monthly - 730.0).abs() < 1e-6);
    }

    #[test]
    fn observing_same_state_twice_changes_nothing() {
        let p1 = observe_power(&PowerStatus::default(), true, Some(t(0)), None, Some(t(0)), 1.0, t(1));
        let p2 = observe_power(&p1, true, Some(t(0)), None, Some(t(0)), 1.0, t(2));
        assert_eq!(p1, p2);
        let s1 = observe_power(&p2, false, Some(t(0)), Some(t(2)), None, 1.0, t(3));
        let s2 = observe_power(&s1, false, Some(t(0)), Some(t(2)), None, 1.0, t(4));
        assert_eq!(s1, s2);
    }

    #[test]
    fn stop_before_start_time_falls_back_to_now() {
        // A stale stop time (from an earlier cycle) must not produce a negative period.
        let p1 = observe_power(&PowerStatus::default(), true, Some(t(5)), None, Some(t(0)), 1.0, t(5));
        let p2 = observe_power(&p1, false, Some(t(5)), Some(t(1)), None, 1.0, t(7));
        assert!((p2.running_hours_closed - 2.0).abs() < 1e-9);
    }
}

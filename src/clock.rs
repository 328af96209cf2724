//! Time in one place: the `1h30m` durations the CRDs admit, their human form for messages,
//! and the conversions between the operator's clock (`chrono`) and the timestamps status
//! carries (`k8s_openapi` `Time`, and `MicroTime` where cost arithmetic needs sub-second
//! precision).

use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, Time};
use k8s_openapi::jiff::Timestamp;

/// Parses `1h30m`-style durations (the forms the CRD admits: digits followed by `h`, `m` or
/// `s`, repeated). `None` for anything else.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let mut total = 0u64;
    let mut num = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let n: u64 = num.parse().ok()?;
        num.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return None,
        };
        total = total.checked_add(n.checked_mul(unit)?)?;
    }
    if !num.is_empty() {
        return None;
    }
    Some(Duration::from_secs(total))
}

/// `90s` → `1m30s`, for messages.
pub fn humanize(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, _) => format!("{h}h{m}m"),
    }
}

/// A status timestamp (whole seconds, as Kubernetes serialises `Time`).
pub fn time(t: DateTime<Utc>) -> Time {
    Time(Timestamp::from_second(t.timestamp()).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// A precise status timestamp, for the power history cost is computed from.
pub fn micro_time(t: DateTime<Utc>) -> MicroTime {
    let nanos = t.timestamp_nanos_opt().unwrap_or_default();
    let micros = nanos - nanos % 1000;
    MicroTime(Timestamp::from_nanosecond(i128::from(micros)).unwrap_or(Timestamp::UNIX_EPOCH))
}

/// The operator's clock reading of a status `Time`.
pub fn from_time(t: &Time) -> DateTime<Utc> {
    from_timestamp(t.0)
}

/// The operator's clock reading of a status `MicroTime`.
pub fn from_micro_time(t: &MicroTime) -> DateTime<Utc> {
    from_timestamp(t.0)
}

fn from_timestamp(t: Timestamp) -> DateTime<Utc> {
    DateTime::<Utc>::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32).unwrap_or_default()
}

/// An RFC 3339 time from outside (Compute Engine's start/stop times), `None` when absent or
/// unreadable.
pub fn parse_rfc3339(s: Option<&str>) -> Option<DateTime<Utc>> {
    s.and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|d| d.with_timezone(&Utc))
}

/// How long ago `then` was, zero when it lies in the future (clock skew).
pub fn elapsed(now: DateTime<Utc>, then: DateTime<Utc>) -> Duration {
    (now - then).to_std().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("45s"), Some(Duration::from_secs(45)));
        assert_eq!(parse_duration("15"), None);
        assert_eq!(parse_duration("1d"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
        assert_eq!(humanize(Duration::from_secs(90)), "1m30s");
        assert_eq!(humanize(Duration::from_secs(7200)), "2h");
        assert_eq!(humanize(Duration::from_secs(900)), "15m");
    }

    #[test]
    fn times_round_trip() {
        let t = DateTime::parse_from_rfc3339("2026-12-01T07:00:05.123456789Z").unwrap().with_timezone(&Utc);
        assert_eq!(from_time(&time(t)).to_rfc3339(), "2026-12-01T07:00:05+00:00");
        assert_eq!(from_micro_time(&micro_time(t)).timestamp_micros(), t.timestamp_micros());
        assert_eq!(serde_json::to_value(time(t)).unwrap(), "2026-12-01T07:00:05Z");
        assert_eq!(elapsed(t, t + chrono::Duration::seconds(5)), Duration::ZERO);
    }
}

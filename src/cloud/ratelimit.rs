//! Client-side rate limiting of Compute Engine requests: one token bucket per GCP project
//! (Compute Engine's API rate quotas are per project), shared by every call the operator
//! makes there, including each page of a list.
//!
//! When Compute Engine answers `rateLimitExceeded` (HTTP 403 `rateLimitExceeded` /
//! `userRateLimitExceeded`, or 429), retrying that one call later is not enough: every other
//! reconcile would keep hitting the same quota. The whole client slows down instead: the rate
//! is halved (at most once per [`DECREASE_GAP`], so one burst of refusals counts once, and
//! never below [`MIN_FRACTION`] of the configured rate), held there for [`HOLD`], then grows
//! back by a tenth of the configured rate every [`RECOVER_EVERY`].
//!
//! A caller that would have to wait longer than [`MAX_WAIT`] for its token is refused at
//! once with a retryable `RateLimited` error (the reconcile backs off as for any cloud
//! error) instead of piling up behind the bucket.

use std::time::Duration;

use tokio::time::Instant;

/// The configured rate; `--compute-qps` / `--compute-burst`.
#[derive(Clone, Debug, clap::Args)]
pub struct ComputeLimits {
    /// Compute Engine requests per second this operator sends to its GCP project, at most
    /// (a token bucket; halved for a while after Compute Engine answers rateLimitExceeded).
    #[arg(long, env = "PROJECTVM_COMPUTE_QPS", default_value_t = 20.0, value_parser = positive_qps)]
    pub compute_qps: f64,
    /// Requests that may go out at once above that rate, after a quiet spell.
    #[arg(long, env = "PROJECTVM_COMPUTE_BURST", default_value_t = 40, value_parser = clap::value_parser!(u32).range(1..))]
    pub compute_burst: u32,
}

impl Default for ComputeLimits {
    fn default() -> Self {
        Self { compute_qps: 20.0, compute_burst: 40 }
    }
}

fn positive_qps(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(q) if q.is_finite() && q > 0.0 => Ok(q),
        _ => Err(format!("{s:?} is not a positive number of requests per second")),
    }
}

/// How long the halved rate is kept before it starts to grow back.
pub const HOLD: Duration = Duration::from_secs(30);
/// Recovery step interval; each step adds a tenth of the configured rate.
pub const RECOVER_EVERY: Duration = Duration::from_secs(10);
/// Refusals closer together than this halve the rate only once.
pub const DECREASE_GAP: Duration = Duration::from_secs(5);
/// The rate never drops below this share of the configured rate.
pub const MIN_FRACTION: f64 = 1.0 / 16.0;
/// Longest a caller waits for a token before it is refused.
pub const MAX_WAIT: Duration = Duration::from_secs(120);

#[derive(Debug)]
struct Bucket {
    /// The rate now (requests per second), between `full * MIN_FRACTION` and `full`.
    rate: f64,
    /// Tokens available; negative while callers hold reservations they are waiting out.
    tokens: f64,
    last: Instant,
    /// Until when the rate stays where it is (after a refusal).
    hold_until: Option<Instant>,
    /// When the rate last grew back a step.
    recovered_at: Instant,
    decreased_at: Option<Instant>,
}

/// The caller would wait too long for a token.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throttled {
    pub wait: Duration,
    pub rate: f64,
}

/// A token bucket with multiplicative slow-down and additive recovery.
#[derive(Debug)]
pub struct RateLimiter {
    full: f64,
    burst: f64,
    bucket: std::sync::Mutex<Bucket>,
}

impl RateLimiter {
    pub fn new(limits: &ComputeLimits) -> Self {
        let full = if limits.compute_qps.is_finite() && limits.compute_qps > 0.0 { limits.compute_qps } else { 1.0 };
        let burst = f64::from(limits.compute_burst.max(1));
        let now = Instant::now();
        Self {
            full,
            burst,
            bucket: std::sync::Mutex::new(Bucket {
                rate: full,
                tokens: burst,
                last: now,
                hold_until: None,
                recovered_at: now,
                decreased_at: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bucket> {
        self.bucket.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Brings the bucket to `now`: refills tokens at the current rate and lets the rate grow
    /// back once the hold is over.
    fn advance(&self, b: &mut Bucket, now: Instant) {
        let elapsed = now.saturating_duration_since(b.last).as_secs_f64();
        b.tokens = (b.tokens + elapsed * b.rate).min(self.burst);
        b.last = now;
        match b.hold_until {
            Some(h) if now < h => {}
            Some(h) => {
                b.hold_until = None;
                b.recovered_at = h;
                self.recover(b, now);
            }
            None => self.recover(b, now),
        }
    }

    fn recover(&self, b: &mut Bucket, now: Instant) {
        if b.rate >= self.full {
            b.recovered_at = now;
            return;
        }
        let steps = (now.saturating_duration_since(b.recovered_at).as_secs_f64() / RECOVER_EVERY.as_secs_f64()).floor();
        if steps >= 1.0 {
            b.rate = (b.rate + steps * self.full / 10.0).min(self.full);
            b.recovered_at += RECOVER_EVERY.mul_f64(steps);
        }
    }

    /// Takes one token, waiting for it when the bucket is empty (callers are served in the
    /// order they asked). Refused without waiting when the wait would exceed [`MAX_WAIT`].
    pub async fn acquire(&self) -> Result<(), Throttled> {
        let wait = {
            let mut b = self.lock();
            let now = Instant::now();
            self.advance(&mut b, now);
            let wait =
                if b.tokens >= 1.0 { Duration::ZERO } else { Duration::from_secs_f64((1.0 - b.tokens) / b.rate) };
            if wait > MAX_WAIT {
                return Err(Throttled { wait, rate: b.rate });
            }
            b.tokens -= 1.0;
            wait
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }

    /// Compute Engine said the project is over its rate: halve the rate and hold it.
    pub fn slow_down(&self) {
        let mut b = self.lock();
        let now = Instant::now();
        self.advance(&mut b, now);
        b.hold_until = Some(now + HOLD);
        if b.decreased_at.is_some_and(|d| now.saturating_duration_since(d) < DECREASE_GAP) {
            return;
        }
        b.decreased_at = Some(now);
        b.rate = (b.rate / 2.0).max(self.full * MIN_FRACTION);
        // Saved-up tokens would send a burst straight back into the quota.
        b.tokens = b.tokens.min(1.0);
        tracing::warn!(rate = b.rate, hold = ?HOLD, "Compute Engine answered rateLimitExceeded: slowing every call down");
    }

    /// The rate now, in requests per second.
    pub fn rate(&self) -> f64 {
        let mut b = self.lock();
        self.advance(&mut b, Instant::now());
        b.rate
    }

    /// The configured rate.
    pub fn full_rate(&self) -> f64 {
        self.full
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(qps: f64, burst: u32) -> RateLimiter {
        RateLimiter::new(&ComputeLimits { compute_qps: qps, compute_burst: burst })
    }

    /// Paused time moves in whole milliseconds; the bucket computes in f64 seconds.
    fn near(got: Duration, want: Duration) {
        let d = got.abs_diff(want);
        assert!(d <= Duration::from_millis(12), "{got:?}, want {want:?}");
    }

    /// How many tokens `n` callers get within `within`, asking one after another.
    async fn granted_within(l: &RateLimiter, within: Duration) -> u32 {
        let start = Instant::now();
        let mut n = 0;
        loop {
            l.acquire().await.unwrap();
            if Instant::now().duration_since(start) > within {
                return n;
            }
            n += 1;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_then_the_rate() {
        let l = limiter(10.0, 5);
        let start = Instant::now();
        for _ in 0..5 {
            l.acquire().await.unwrap();
        }
        assert_eq!(Instant::now(), start, "the burst is free");
        l.acquire().await.unwrap();
        near(Instant::now().duration_since(start), Duration::from_millis(100));
        // 10 more take one more second.
        for _ in 0..10 {
            l.acquire().await.unwrap();
        }
        near(Instant::now().duration_since(start), Duration::from_millis(1100));
        // A quiet spell refills at most the burst.
        tokio::time::advance(Duration::from_secs(60)).await;
        let t = Instant::now();
        for _ in 0..5 {
            l.acquire().await.unwrap();
        }
        assert_eq!(Instant::now(), t);
        l.acquire().await.unwrap();
        near(Instant::now().duration_since(t), Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_the_rate() {
        let l = std::sync::Arc::new(limiter(20.0, 1));
        let start = Instant::now();
        let tasks: Vec<_> = (0..41)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.acquire().await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        // one from the burst, then 40 at 20/s
        near(Instant::now().duration_since(start), Duration::from_secs(2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_halves_the_rate_holds_it_and_it_recovers_gradually() {
        let l = limiter(16.0, 1);
        assert_eq!(l.rate(), 16.0);
        l.slow_down();
        assert_eq!(l.rate(), 8.0);
        // A burst of refusals (calls that were in flight together) halves it once.
        l.slow_down();
        l.slow_down();
        assert_eq!(l.rate(), 8.0);
        // Callers now get about 8 a second.
        let n = granted_within(&l, Duration::from_secs(10)).await;
        assert!((79..=81).contains(&n), "{n} tokens in 10 s at 8/s");
        // Still refused later: halved again, and the hold restarts.
        l.slow_down();
        assert_eq!(l.rate(), 4.0);
        tokio::time::advance(HOLD - Duration::from_secs(1)).await;
        assert_eq!(l.rate(), 4.0, "held");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(l.rate(), 4.0, "the hold is over; no step yet");
        tokio::time::advance(RECOVER_EVERY).await;
        assert_eq!(l.rate(), 4.0 + 1.6);
        tokio::time::advance(RECOVER_EVERY * 3).await;
        assert!((l.rate() - (4.0 + 4.0 * 1.6)).abs() < 1e-9, "{}", l.rate());
        tokio::time::advance(RECOVER_EVERY * 100).await;
        assert_eq!(l.rate(), 16.0, "never above the configured rate");
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_has_a_floor() {
        let l = limiter(16.0, 1);
        for _ in 0..20 {
            l.slow_down();
            tokio::time::advance(DECREASE_GAP).await;
        }
        assert_eq!(l.rate(), 1.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_wait_beyond_the_cap_is_refused_at_once() {
        let l = limiter(1.0, 1);
        // Reserve every token up to the cap.
        for _ in 0..=MAX_WAIT.as_secs() {
            l.acquire().now_or_never_reserved();
        }
        let start = Instant::now();
        let err = l.acquire().await.unwrap_err();
        assert_eq!(Instant::now(), start, "refused without waiting");
        assert!(err.wait > MAX_WAIT, "{err:?}");
        // Once the reservations are served, callers get tokens again.
        tokio::time::advance(MAX_WAIT + Duration::from_secs(1)).await;
        l.acquire().await.unwrap();
    }

    trait Reserve {
        fn now_or_never_reserved(self);
    }

    impl<F: std::future::Future> Reserve for F {
        /// Polls once: the token is reserved, the wait is not served.
        fn now_or_never_reserved(self) {
            let _ = futures::FutureExt::now_or_never(self);
        }
    }

    #[test]
    fn flags() {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            l: ComputeLimits,
        }
        let t = T::try_parse_from(["t"]).unwrap();
        assert_eq!((t.l.compute_qps, t.l.compute_burst), (20.0, 40));
        let t = T::try_parse_from(["t", "--compute-qps", "2.5", "--compute-burst", "3"]).unwrap();
        assert_eq!((t.l.compute_qps, t.l.compute_burst), (2.5, 3));
        assert!(T::try_parse_from(["t", "--compute-qps", "0"]).is_err());
        assert!(T::try_parse_from(["t", "--compute-qps", "nan"]).is_err());
        assert!(T::try_parse_from(["t", "--compute-burst", "0"]).is_err());
    }
}

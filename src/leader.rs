//! Leader election on a `coordination.k8s.io` Lease, so two replicas never act at once.
//!
//! The rules are client-go's (`k8s.io/client-go/tools/leaderelection`):
//! - **Expiry on the local monotonic clock.** A follower never compares the holder's
//!   `renewTime` with its own wall clock (clocks are skewed). It records the Lease record it
//!   observed and the local [`Instant`] at which that record last *changed*; it may take the
//!   Lease only once the record's `leaseDurationSeconds` have passed on its own clock since
//!   then, or at once when the Lease has no holder (released).
//! - **Renew deadline shorter than the lease.** The leader tries to renew every retry period;
//!   when it has not renewed within the renew deadline, counted from the *start* of its last
//!   successful renew request, it stops leading. Every Lease call has its own timeout, and
//!   no call of the leader's outlives its deadline. Between the renew deadline and the lease
//!   duration lies the margin in which the old leader has stopped before anyone may start.
//! - **A fence for the work.** The leader keeps [`Fence`] open until its renew deadline; every
//!   GCE mutation, VM command and Kubernetes write checks it at the moment it is issued, so a
//!   paused process that resumes late does nothing, whatever fires first on resume.
//! - **Release on shutdown** (client-go's `ReleaseOnCancel`): holder cleared,
//!   `leaseDurationSeconds: 1`, `renewTime` now — only while we still hold it — so a follower
//!   takes over at its next try instead of after the lease duration.
//!
//! No maintained crate fits: `kube-lease-manager` (kube 5) judges expiry by `renewTime` plus
//! the duration against the local wall clock and has no renew deadline; `kube-leader-election`
//! is on kube 4 and also compares `renewTime` with the wall clock; `kube-coordinate` uses a
//! monotonic clock but is on kube 2.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::fence::Fence;

/// Lease name, place, who we are, and the timings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    pub timings: Timings,
}

/// The three timings, validated together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
}

impl Timings {
    /// client-go's rules: whole seconds for the Lease (its field is in seconds), the renew
    /// deadline shorter than the lease duration, and room for more than one try (with
    /// client-go's jitter factor 1.2) before the deadline.
    pub fn new(lease_duration: Duration, renew_deadline: Duration, retry_period: Duration) -> Result<Self, String> {
        if lease_duration.as_secs() == 0 || lease_duration.subsec_nanos() != 0 {
            return Err(format!("the lease duration must be whole seconds, at least 1s (got {lease_duration:?})"));
        }
        if retry_period.is_zero() {
            return Err("the lease retry period must be positive".into());
        }
        if renew_deadline >= lease_duration {
            return Err(format!(
                "the lease renew deadline ({renew_deadline:?}) must be shorter than the lease duration ({lease_duration:?})"
            ));
        }
        if renew_deadline <= retry_period.mul_f64(1.2) {
            return Err(format!(
                "the lease renew deadline ({renew_deadline:?}) must be longer than 1.2 × the retry period ({retry_period:?})"
            ));
        }
        Ok(Self { lease_duration, renew_deadline, retry_period })
    }

    /// The bound on one Lease API call: half the renew deadline, so a hung call leaves time
    /// for another try (the leader's calls are also cut at its renew deadline).
    pub fn call_timeout(&self) -> Duration {
        self.renew_deadline / 2
    }
}

/// A unique identity: the pod's name (or host name) and a random suffix, so two processes
/// never both believe they hold the Lease (client-go uses `hostname_uuid` the same way).
pub fn identity() -> String {
    let base = std::env::var("POD_NAME")
        .or_else(|_| std::env::var("HOSTNAME"))
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok().map(|h| h.trim().to_string()))
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "projectvm".into());
    format!("{base}_{:08x}", rand::random::<u32>())
}

/// What this replica last saw of the Lease record, and when it last changed, on the local
/// monotonic clock.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    pub spec: LeaseSpec,
    pub changed_at: Instant,
}

/// The pure part of the election: observations and the rules on them.
#[derive(Clone, Debug)]
pub struct Election {
    identity: String,
    observed: Option<Observed>,
}

impl Election {
    pub fn new(identity: impl Into<String>) -> Self {
        Self { identity: identity.into(), observed: None }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn observed(&self) -> Option<&Observed> {
        self.observed.as_ref()
    }

    /// Records the record read (or written) at `now`; the clock restarts only when the
    /// record differs from the one observed before. `None`: there is no Lease.
    pub fn observe(&mut self, spec: Option<&LeaseSpec>, now: Instant) {
        match spec {
            None => self.observed = None,
            Some(spec) => {
                if self.observed.as_ref().is_none_or(|o| &o.spec != spec) {
                    self.observed = Some(Observed { spec: spec.clone(), changed_at: now });
                }
            }
        }
    }

    /// The holder of the observed record; `None` when nobody holds it.
    pub fn holder(&self) -> Option<&str> {
        self.observed.as_ref().and_then(|o| o.spec.holder_identity.as_deref()).filter(|h| !h.is_empty())
    }

    /// Whether the observed record names us.
    pub fn we_hold(&self) -> bool {
        self.holder() == Some(self.identity.as_str())
    }

    /// When the observed holder's claim runs out on our clock: its `leaseDurationSeconds`
    /// after we saw the record change. `None` when nobody holds it.
    pub fn expires_at(&self) -> Option<Instant> {
        let o = self.observed.as_ref()?;
        self.holder()?;
        let secs = o.spec.lease_duration_seconds.unwrap_or(0).max(0);
        Some(o.changed_at + Duration::from_secs(secs as u64))
    }

    /// Whether we may write ourselves in as holder at `now`: no Lease, no holder, our own
    /// Lease, or another holder's claim ran out on our clock. `renewTime` is never read.
    pub fn may_take(&self, now: Instant) -> bool {
        if self.we_hold() {
            return true;
        }
        self.expires_at().is_none_or(|t| now >= t)
    }

    /// The record that takes or renews the Lease at wall time `wall` (which only informs
    /// people reading the Lease).
    pub fn claim(&self, lease_duration: Duration, wall: Timestamp) -> LeaseSpec {
        let old = self.observed.as_ref().map(|o| o.spec.clone()).unwrap_or_default();
        let renewing = self.we_hold();
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(lease_duration.as_secs() as i32),
            renew_time: Some(MicroTime(wall)),
            acquire_time: if renewing { old.acquire_time } else { Some(MicroTime(wall)) },
            // client-go's count: every change of holder, a released Lease's included.
            lease_transitions: Some(
                old.lease_transitions.unwrap_or(0) + i32::from(!renewing && self.observed.is_some()),
            ),
            ..old
        }
    }

    /// The record that gives the Lease up: no holder, a one-second duration, renewed now.
    pub fn release(&self, wall: Timestamp) -> LeaseSpec {
        let old = self.observed.as_ref().map(|o| o.spec.clone()).unwrap_or_default();
        LeaseSpec {
            holder_identity: None,
            lease_duration_seconds: Some(1),
            renew_time: Some(MicroTime(wall)),
            acquire_time: Some(MicroTime(wall)),
            ..old
        }
    }
}

/// The leader's own deadline: the start of its last successful renew request plus the
/// renew deadline.
pub fn renew_deadline(last_renew_started: Instant, timings: &Timings) -> Instant {
    last_renew_started + timings.renew_deadline
}

/// Why a Lease call did not go through.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// Someone else wrote the Lease first (HTTP 409) or it went away under us.
    #[error("the Lease changed under us")]
    Conflict,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Other(String),
}

/// The three Lease calls, behind a trait so the election runs against a fake in tests.
#[async_trait::async_trait]
pub trait LeaseStore: Send + Sync + 'static {
    async fn get(&self) -> Result<Option<Lease>, StoreError>;
    async fn create(&self, lease: Lease) -> Result<Lease, StoreError>;
    /// A compare-and-swap on the resourceVersion in `lease`.
    async fn replace(&self, lease: Lease) -> Result<Lease, StoreError>;
}

/// [`LeaseStore`] on the API server.
pub struct KubeLeases {
    api: Api<Lease>,
    name: String,
}

impl KubeLeases {
    pub fn new(client: Client, namespace: &str, name: &str) -> Self {
        Self { api: Api::namespaced(client, namespace), name: name.to_string() }
    }
}

fn store_error(e: kube::Error) -> StoreError {
    match e {
        kube::Error::Api(s) if s.code == 409 || s.code == 404 => StoreError::Conflict,
        e => StoreError::Other(e.to_string()),
    }
}

#[async_trait::async_trait]
impl LeaseStore for KubeLeases {
    async fn get(&self) -> Result<Option<Lease>, StoreError> {
        self.api.get_opt(&self.name).await.map_err(store_error)
    }

    async fn create(&self, lease: Lease) -> Result<Lease, StoreError> {
        self.api.create(&PostParams::default(), &lease).await.map_err(store_error)
    }

    async fn replace(&self, lease: Lease) -> Result<Lease, StoreError> {
        self.api.replace(&self.name, &PostParams::default(), &lease).await.map_err(store_error)
    }
}

/// What one try at the Lease found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease now (taken or renewed).
    Holding,
    /// Another replica holds it and its claim has not run out on our clock.
    HeldBy(String),
}

/// How leading ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The renew deadline passed or another replica took the Lease.
    Lost(String),
    /// We gave it up on request; `released` says whether the Lease was cleared.
    SteppedDown { released: bool },
}

/// One replica's side of the election.
pub struct Elector<S> {
    store: S,
    cfg: LeaseConfig,
    election: Election,
    fence: Arc<Fence>,
    ready: Arc<AtomicBool>,
    /// Last time the Lease could be read, for readiness.
    last_read: Option<Instant>,
    started: Instant,
}

impl<S: LeaseStore> Elector<S> {
    /// `fence` is opened while we lead; `ready` says whether we lead or follow healthily.
    pub fn new(store: S, cfg: LeaseConfig, fence: Arc<Fence>, ready: Arc<AtomicBool>) -> Self {
        let election = Election::new(cfg.identity.clone());
        Self { store, cfg, election, fence, ready, last_read: None, started: Instant::now() }
    }

    pub fn election(&self) -> &Election {
        &self.election
    }

    async fn bounded<T>(
        &self,
        cap: Option<Instant>,
        call: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let start = Instant::now();
        let own = start + self.cfg.timings.call_timeout();
        let deadline = cap.map_or(own, |c| c.min(own));
        match tokio::time::timeout_at(deadline, call).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(deadline.saturating_duration_since(start))),
        }
    }

    /// One try to take or renew the Lease (client-go's `tryAcquireOrRenew`). No call runs
    /// past `cap` (the leader's renew deadline).
    pub async fn try_acquire_or_renew(&mut self, cap: Option<Instant>) -> Result<Attempt, StoreError> {
        let read = self.bounded(cap, self.store.get()).await;
        let lease = match read {
            Ok(l) => {
                self.last_read = Some(Instant::now());
                l
            }
            Err(e) => return Err(e),
        };
        let now = Instant::now();
        self.election.observe(lease.as_ref().and_then(|l| l.spec.as_ref()), now);
        if !self.election.may_take(now) {
            return Ok(Attempt::HeldBy(self.election.holder().unwrap_or_default().to_string()));
        }
        let spec = self.election.claim(self.cfg.timings.lease_duration, Timestamp::now());
        let written = match lease {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.cfg.name.clone()),
                        namespace: Some(self.cfg.namespace.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec),
                };
                self.bounded(cap, self.store.create(lease)).await?
            }
            Some(mut lease) => {
                // The resourceVersion read above makes this a compare-and-swap.
                lease.spec = Some(spec);
                self.bounded(cap, self.store.replace(lease)).await?
            }
        };
        self.election.observe(written.spec.as_ref(), Instant::now());
        Ok(Attempt::Holding)
    }

    fn note_read_trouble(&self) {
        let since = self.last_read.unwrap_or(self.started);
        if since.elapsed() >= self.cfg.timings.lease_duration {
            self.ready.store(false, Ordering::Relaxed);
        }
    }

    /// Stands for the Lease until this replica holds it (client-go's `acquire`), then opens
    /// the fence and keeps renewing in a background task.
    pub async fn acquire(mut self) -> Leadership {
        let timings = self.cfg.timings;
        tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "standing for leader");
        let mut last_holder: Option<String> = None;
        loop {
            let started = Instant::now();
            match self.try_acquire_or_renew(None).await {
                Ok(Attempt::Holding) => {
                    self.fence.open_until(renew_deadline(started, &timings));
                    self.ready.store(true, Ordering::Relaxed);
                    tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "became leader");
                    let (stop, stopped) = oneshot::channel();
                    let task = tokio::spawn(self.keep(started, stopped));
                    return Leadership { stop: Some(stop), task: Some(task) };
                }
                Ok(Attempt::HeldBy(holder)) => {
                    self.ready.store(true, Ordering::Relaxed);
                    if last_holder.as_deref() != Some(holder.as_str()) {
                        let wait = self.election.expires_at().map(|t| t.saturating_duration_since(Instant::now()));
                        tracing::info!(lease = %self.cfg.name, %holder, takes_over_in = ?wait, "another replica leads; following");
                        last_holder = Some(holder);
                    }
                }
                Err(e) => {
                    self.note_read_trouble();
                    tracing::warn!(lease = %self.cfg.name, error = %e, "taking the lease failed; retrying");
                }
            }
            tokio::time::sleep_until(started + timings.retry_period).await;
        }
    }

    /// The renew loop (client-go's `renew`): every retry period, bounded by the renew
    /// deadline counted from the start of the last successful renewal.
    async fn keep(mut self, mut renewed_at: Instant, mut stop: oneshot::Receiver<()>) -> Ending {
        let timings = self.cfg.timings;
        let mut next = renewed_at + timings.retry_period;
        loop {
            let deadline = renew_deadline(renewed_at, &timings);
            tokio::select! {
                biased;
                _ = &mut stop => return self.step_down().await,
                _ = tokio::time::sleep_until(next.min(deadline)) => {}
            }
            let started = Instant::now();
            if started >= deadline {
                return self.lose(format!(
                    "could not renew the lease within the renew deadline ({:?})",
                    timings.renew_deadline
                ));
            }
            next = started + timings.retry_period;
            match self.try_acquire_or_renew(Some(deadline)).await {
                Ok(Attempt::Holding) => {
                    renewed_at = started;
                    self.fence.open_until(renew_deadline(started, &timings));
                    tracing::trace!(lease = %self.cfg.name, "renewed the lease");
                }
                Ok(Attempt::HeldBy(holder)) => return self.lose(format!("{holder} holds the lease now")),
                Err(e) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    tracing::warn!(lease = %self.cfg.name, error = %e, ?left, "renewing the lease failed; retrying");
                }
            }
        }
    }

    fn lose(&self, why: String) -> Ending {
        self.fence.close();
        self.ready.store(false, Ordering::Relaxed);
        tracing::error!(lease = %self.cfg.name, identity = %self.cfg.identity, reason = %why, "lost leadership");
        Ending::Lost(why)
    }

    /// Closes the fence, then gives the Lease up if we still hold it.
    async fn step_down(&mut self) -> Ending {
        self.fence.close();
        self.ready.store(false, Ordering::Relaxed);
        let released = match self.release().await {
            Ok(true) => {
                tracing::info!(lease = %self.cfg.name, identity = %self.cfg.identity, "released the lease");
                true
            }
            Ok(false) => {
                tracing::info!(lease = %self.cfg.name, "the lease was no longer ours; nothing to release");
                false
            }
            Err(e) => {
                tracing::warn!(lease = %self.cfg.name, error = %e, "releasing the lease failed; it runs out by itself");
                false
            }
        };
        Ending::SteppedDown { released }
    }

    /// client-go's `release`: only while we still hold the Lease (a compare-and-swap on
    /// what we read).
    pub async fn release(&mut self) -> Result<bool, StoreError> {
        let Some(mut lease) = self.bounded(None, self.store.get()).await? else { return Ok(false) };
        self.election.observe(lease.spec.as_ref(), Instant::now());
        if !self.election.we_hold() {
            return Ok(false);
        }
        lease.spec = Some(self.election.release(Timestamp::now()));
        let written = self.bounded(None, self.store.replace(lease)).await?;
        self.election.observe(written.spec.as_ref(), Instant::now());
        Ok(true)
    }
}

/// A running term as leader: the renew loop in the background.
pub struct Leadership {
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<Ending>>,
}

impl Leadership {
    /// Completes when leadership was lost (the renew loop ended by itself); cancel-safe, for
    /// `select!`.
    pub async fn lost(&mut self) -> String {
        let Some(task) = self.task.as_mut() else { return std::future::pending().await };
        let ending = task.await;
        self.task = None;
        match ending {
            Ok(Ending::Lost(why)) => why,
            Ok(Ending::SteppedDown { .. }) => "stepped down".into(),
            Err(e) => format!("the lease renew task failed: {e}"),
        }
    }

    /// Stops renewing, closes the fence and releases the Lease if we still hold it.
    pub async fn step_down(mut self) -> Ending {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.unwrap_or_else(|e| Ending::Lost(format!("the lease renew task failed: {e}"))),
            None => Ending::Lost("already lost".into()),
        }
    }
}

/// Waits for leadership `lost` (pending forever without leader election).
pub async fn lost(leadership: &mut Option<Leadership>) -> String {
    match leadership {
        Some(l) => l.lost().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    fn t(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn timings() -> Timings {
        Timings::new(t(15), t(10), t(2)).unwrap()
    }

    fn spec(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            renew_time: Some(MicroTime(Timestamp::from_second(renewed).unwrap())),
            lease_duration_seconds: Some(duration),
            ..Default::default()
        }
    }

    #[test]
    fn timings_are_validated() {
        assert!(Timings::new(t(15), t(10), t(2)).is_ok());
        assert!(Timings::new(t(6), t(4), t(1)).is_ok());
        assert!(Timings::new(t(10), t(10), t(2)).unwrap_err().contains("shorter than the lease duration"));
        assert!(Timings::new(t(10), t(12), t(2)).is_err());
        assert!(Timings::new(t(15), t(2), t(2)).unwrap_err().contains("retry period"));
        assert!(Timings::new(Duration::from_millis(1500), t(1), Duration::from_millis(100)).is_err());
        assert!(Timings::new(t(15), t(10), Duration::ZERO).is_err());
        assert_eq!(timings().call_timeout(), t(5));
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_judged_on_the_local_monotonic_clock_since_the_record_changed() {
        let mut e = Election::new("me");
        let t0 = Instant::now();
        // The holder's renewTime is far in the past by our wall clock (skew): irrelevant.
        e.observe(Some(&spec("other", 0, 15)), t0);
        assert!(!e.may_take(t0));
        assert_eq!(e.expires_at(), Some(t0 + t(15)));
        // The same record seen again does not restart the clock.
        e.observe(Some(&spec("other", 0, 15)), t0 + t(10));
        assert!(!e.may_take(t0 + Duration::from_millis(14_999)));
        assert!(e.may_take(t0 + t(15)));
        // A changed record (a renewal, even one whose renewTime lies in the future) does.
        e.observe(Some(&spec("other", 4_000_000_000, 15)), t0 + t(14));
        assert!(!e.may_take(t0 + t(15)));
        assert!(!e.may_take(t0 + t(28)));
        assert!(e.may_take(t0 + t(29)));
        // The record's own duration counts, not ours.
        e.observe(Some(&spec("other", 5, 3)), t0 + t(30));
        assert!(!e.may_take(t0 + t(32)));
        assert!(e.may_take(t0 + t(33)));
    }

    #[test]
    fn free_or_own_leases_are_taken_at_once() {
        let now = Instant::now();
        let mut e = Election::new("me");
        assert!(e.may_take(now), "no lease");
        e.observe(Some(&spec("me", 0, 15)), now);
        assert!(e.may_take(now), "our own");
        e.observe(
            Some(&LeaseSpec { holder_identity: None, lease_duration_seconds: Some(1), ..Default::default() }),
            now,
        );
        assert!(e.may_take(now), "released");
        e.observe(Some(&spec("", 0, 15)), now);
        assert!(e.may_take(now), "empty holder");
        e.observe(None, now);
        assert!(e.may_take(now), "deleted");
    }

    #[test]
    fn claims_keep_acquire_time_when_renewing_and_count_transitions() {
        let now = Instant::now();
        let wall = Timestamp::from_second(100).unwrap();
        let mut e = Election::new("me");
        let first = e.claim(t(15), wall);
        assert_eq!(first.holder_identity.as_deref(), Some("me"));
        assert_eq!(first.lease_transitions, Some(0));
        assert_eq!(first.acquire_time, Some(MicroTime(wall)));
        e.observe(Some(&first), now);
        let later = Timestamp::from_second(110).unwrap();
        let renewed = e.claim(t(15), later);
        assert_eq!(
            (renewed.acquire_time.clone(), renewed.renew_time.clone()),
            (Some(MicroTime(wall)), Some(MicroTime(later)))
        );
        assert_eq!(renewed.lease_transitions, Some(0));
        let mut other = Election::new("other");
        other.observe(Some(&renewed), now);
        let taken = other.claim(t(15), later);
        assert_eq!(taken.lease_transitions, Some(1));
        assert_eq!(taken.acquire_time, Some(MicroTime(later)));
        let released = other.release(later);
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(0));
        e.observe(Some(&released), now);
        assert_eq!(e.claim(t(15), later).lease_transitions, Some(1), "taking a released lease is a transition");
    }

    #[test]
    fn the_renew_deadline_counts_from_the_start_of_the_last_renewal() {
        let start = Instant::now();
        assert_eq!(renew_deadline(start, &timings()), start + t(10));
        assert!(renew_deadline(start, &timings()) < start + timings().lease_duration);
    }

    /// An in-memory Lease with a compare-and-swap, and a switch that makes calls hang.
    #[derive(Clone, Default)]
    struct Fake {
        lease: Arc<Mutex<Option<Lease>>>,
        hang: Arc<AtomicBool>,
        version: Arc<Mutex<u64>>,
    }

    impl Fake {
        async fn maybe_hang(&self) {
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
        }
        fn holder(&self) -> Option<String> {
            self.lease.lock().unwrap().as_ref().and_then(|l| l.spec.as_ref()?.holder_identity.clone())
        }
        fn store(&self, mut lease: Lease) -> Lease {
            let mut v = self.version.lock().unwrap();
            *v += 1;
            lease.metadata.resource_version = Some(v.to_string());
            *self.lease.lock().unwrap() = Some(lease.clone());
            lease
        }
    }

    #[async_trait::async_trait]
    impl LeaseStore for Fake {
        async fn get(&self) -> Result<Option<Lease>, StoreError> {
            self.maybe_hang().await;
            Ok(self.lease.lock().unwrap().clone())
        }
        async fn create(&self, lease: Lease) -> Result<Lease, StoreError> {
            self.maybe_hang().await;
            if self.lease.lock().unwrap().is_some() {
                return Err(StoreError::Conflict);
            }
            Ok(self.store(lease))
        }
        async fn replace(&self, lease: Lease) -> Result<Lease, StoreError> {
            self.maybe_hang().await;
            let current = self.lease.lock().unwrap().as_ref().and_then(|l| l.metadata.resource_version.clone());
            if current != lease.metadata.resource_version {
                return Err(StoreError::Conflict);
            }
            Ok(self.store(lease))
        }
    }

    fn elector(store: &Fake, id: &str) -> (Elector<Fake>, Arc<Fence>, Arc<AtomicBool>) {
        let fence = Fence::closed();
        let ready = Arc::new(AtomicBool::new(false));
        let cfg = LeaseConfig { name: "l".into(), namespace: "ns".into(), identity: id.into(), timings: timings() };
        (Elector::new(store.clone(), cfg, fence.clone(), ready.clone()), fence, ready)
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_renewal_ends_leadership_at_the_renew_deadline_not_minutes_later() {
        let store = Fake::default();
        let (a, fence, ready) = elector(&store, "a");
        let t0 = Instant::now();
        let mut leading = a.acquire().await;
        assert!(fence.is_open() && ready.load(Ordering::SeqCst));
        assert_eq!(store.holder().as_deref(), Some("a"));
        // Renewals go through for a while.
        tokio::time::sleep(t(7)).await;
        assert!(fence.is_open());
        // Then the API server stops answering: every call hangs.
        store.hang.store(true, Ordering::SeqCst);
        let hung_at = Instant::now();
        let why = tokio::time::timeout(t(60), leading.lost()).await.expect("leadership ends in time");
        let after = Instant::now() - hung_at;
        assert!(why.contains("renew deadline"), "{why}");
        // The last successful renewal started at most a retry period before the hang.
        assert!(after <= timings().renew_deadline, "stepped down {after:?} after the hang");
        assert!(after + timings().retry_period >= timings().renew_deadline - t(1), "{after:?}");
        assert!(!fence.is_open(), "the fence is closed once the deadline passed");
        assert!(!ready.load(Ordering::SeqCst));
        // …and it was closed by the clock at the deadline itself, before anyone may take over.
        assert!(Instant::now() < t0 + t(7) + timings().lease_duration);
    }

    #[tokio::test(start_paused = true)]
    async fn a_follower_takes_over_only_after_the_lease_duration_on_its_own_clock() {
        let store = Fake::default();
        let (a, _fa, _) = elector(&store, "a");
        let leading = a.acquire().await;
        let (mut b, fence_b, ready_b) = elector(&store, "b");
        assert_eq!(b.try_acquire_or_renew(None).await, Ok(Attempt::HeldBy("a".into())));
        assert!(!fence_b.is_open());
        // The leader is frozen (SIGSTOP): its record stops changing from now.
        leading.task.as_ref().unwrap().abort();
        let frozen = Instant::now();
        let b_task = tokio::spawn(async move {
            let l = b.acquire().await;
            (Instant::now(), l)
        });
        let (took_at, _lb) = b_task.await.unwrap();
        let waited = took_at - frozen;
        assert!(waited >= timings().lease_duration - timings().retry_period, "took over after {waited:?}");
        assert!(waited <= timings().lease_duration + timings().retry_period, "took over after {waited:?}");
        assert_eq!(store.holder().as_deref(), Some("b"));
        assert!(fence_b.is_open() && ready_b.load(Ordering::SeqCst));
        let transitions = store.lease.lock().unwrap().as_ref().unwrap().spec.as_ref().unwrap().lease_transitions;
        assert_eq!(transitions, Some(1));
    }

    #[tokio::test(start_paused = true)]
    async fn the_fence_closes_at_the_renew_deadline_even_if_the_leader_loop_never_runs() {
        let store = Fake::default();
        let (a, fence_a, _) = elector(&store, "a");
        let t0 = Instant::now();
        let leading = a.acquire().await;
        // The loop is frozen for good (a paused process whose timers have not fired yet).
        leading.task.as_ref().unwrap().abort();
        tokio::time::sleep_until(t0 + timings().renew_deadline - Duration::from_millis(1)).await;
        assert!(fence_a.is_open());
        tokio::time::sleep_until(t0 + timings().renew_deadline).await;
        assert!(!fence_a.is_open(), "closed by the clock alone");
        // A follower that started watching at t0 may take over only 5s later.
        let (b, fence_b, _) = elector(&store, "b");
        let (took, _lb) = tokio::spawn(async move {
            let l = b.acquire().await;
            (Instant::now(), l)
        })
        .await
        .unwrap();
        assert!(took >= t0 + timings().renew_deadline + timings().lease_duration - timings().retry_period);
        assert!(fence_b.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn stepping_down_releases_so_a_follower_takes_over_at_its_next_try() {
        let store = Fake::default();
        let (a, fence_a, _) = elector(&store, "a");
        let leading = a.acquire().await;
        let (b, _fb, _) = elector(&store, "b");
        let b_task = tokio::spawn(async move {
            let l = b.acquire().await;
            (Instant::now(), l)
        });
        tokio::time::sleep(t(5)).await;
        let released_at = Instant::now();
        assert_eq!(leading.step_down().await, Ending::SteppedDown { released: true });
        assert!(!fence_a.is_open());
        let (took_at, _lb) = b_task.await.unwrap();
        assert!(took_at - released_at <= timings().retry_period, "{:?}", took_at - released_at);
        assert_eq!(store.holder().as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn release_leaves_another_holders_lease_alone() {
        let store = Fake::default();
        let (mut a, _, _) = elector(&store, "a");
        assert_eq!(a.try_acquire_or_renew(None).await, Ok(Attempt::Holding));
        // b took it over (a was presumed dead).
        let mut lease = store.lease.lock().unwrap().clone().unwrap();
        lease.spec.as_mut().unwrap().holder_identity = Some("b".into());
        store.store(lease);
        assert_eq!(a.release().await, Ok(false));
        assert_eq!(store.holder().as_deref(), Some("b"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_call_is_cut_by_its_own_timeout() {
        let store = Fake::default();
        store.hang.store(true, Ordering::SeqCst);
        let (mut a, _, _) = elector(&store, "a");
        let start = Instant::now();
        let r = a.try_acquire_or_renew(None).await;
        assert!(matches!(r, Err(StoreError::Timeout(_))), "{r:?}");
        assert_eq!(Instant::now() - start, timings().call_timeout());
        // A cap (the leader's deadline) cuts it shorter.
        let start = Instant::now();
        let _ = a.try_acquire_or_renew(Some(start + t(1))).await;
        assert_eq!(Instant::now() - start, t(1));
    }
}

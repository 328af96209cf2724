//! The leadership fence: what stops a replica that is no longer sure it leads from acting,
//! even before its leader loop has noticed.
//!
//! A leader may act only until its renew deadline (the start of its last successful renew
//! plus `--lease-renew-deadline`), judged on the local monotonic clock at the moment of each
//! call. A process that was paused (SIGSTOP, a long GC-like stall, a frozen VM) and resumes
//! past that deadline finds the fence closed for every timer and watch event that fires on
//! resume, whatever order they run in.
//!
//! Every edge that changes the world passes through it: Compute Engine mutations
//! ([`FencedCompute`]), commands on the VMs ([`FencedVms`]) and Kubernetes writes (the
//! [`FenceLayer`] on the controllers' client: every request but GET/HEAD). Reads pass. A
//! refused call is a retryable error (the cloud's `Unavailable`, SSH's `Connect`, a kube
//! service error), logged once at warn. Every call let through leaves a debug line
//! (`gce mutation`, `ssh exec` from the SSH pool, `kubernetes write`), so a log proves the
//! absence of work.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context as TaskContext, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::cloud::{CloudError, CloudErrorKind, CloudInstance, Compute, GuestAttribute, InstanceRequest};
use crate::cloud::{OperationRef, OperationState};
use crate::controller::vm::{HealthAnswer, OnOutput, VmAccess};
use crate::ssh::{ExecOutput, SshError, SshTarget};

/// Why a call was not issued.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not issued: this replica is not the leader (or can no longer be sure it is)")]
pub struct NotLeading;

#[derive(Clone, Copy, Debug)]
enum Until {
    Always,
    Never,
    At(Instant),
}

/// Open while this replica may act; see the module docs.
#[derive(Debug)]
pub struct Fence {
    until: Mutex<Until>,
    /// The first refusal is logged at warn, later ones at debug.
    warned: AtomicBool,
}

impl Fence {
    /// A fence that never closes (no leader election: the only replica).
    pub fn always_open() -> Arc<Self> {
        Arc::new(Self { until: Mutex::new(Until::Always), warned: AtomicBool::new(false) })
    }

    /// A fence that opens only when a leader loop opens it.
    pub fn closed() -> Arc<Self> {
        Arc::new(Self { until: Mutex::new(Until::Never), warned: AtomicBool::new(false) })
    }

    /// Opens the fence until `deadline` (a successful acquire or renew). Never moves a
    /// closed-for-good fence.
    pub fn open_until(&self, deadline: Instant) {
        let mut u = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if let Until::Always = *u {
            return;
        }
        *u = Until::At(deadline);
        self.warned.store(false, Ordering::Relaxed);
    }

    /// Closes the fence now (leadership lost or given up).
    pub fn close(&self) {
        let mut u = self.until.lock().unwrap_or_else(|e| e.into_inner());
        if let Until::Always = *u {
            return;
        }
        *u = Until::Never;
    }

    /// Whether a call may be issued now, on the local monotonic clock.
    pub fn is_open(&self) -> bool {
        match *self.until.lock().unwrap_or_else(|e| e.into_inner()) {
            Until::Always => true,
            Until::Never => false,
            Until::At(t) => Instant::now() < t,
        }
    }

    /// How long the fence stays open from now (`None`: forever; zero: closed).
    pub fn remaining(&self) -> Option<Duration> {
        match *self.until.lock().unwrap_or_else(|e| e.into_inner()) {
            Until::Always => None,
            Until::Never => Some(Duration::ZERO),
            Until::At(t) => Some(t.saturating_duration_since(Instant::now())),
        }
    }

    /// `Ok` when `what` may be issued now; otherwise logs (the first time at warn) and
    /// refuses.
    pub fn check(&self, what: &dyn std::fmt::Display) -> Result<(), NotLeading> {
        if self.is_open() {
            return Ok(());
        }
        if !self.warned.swap(true, Ordering::Relaxed) {
            tracing::warn!(%what, "not leading: refusing Compute Engine mutations, VM commands and Kubernetes writes");
        } else {
            tracing::debug!(%what, "not leading: refused");
        }
        Err(NotLeading)
    }
}

fn refused_cloud(e: NotLeading) -> CloudError {
    CloudError::new(CloudErrorKind::Unavailable, e.to_string())
}

/// [`Compute`] behind the fence: mutations are checked and logged, reads pass.
pub struct FencedCompute {
    inner: Arc<dyn Compute>,
    fence: Arc<Fence>,
}

impl FencedCompute {
    pub fn new(inner: Arc<dyn Compute>, fence: Arc<Fence>) -> Self {
        Self { inner, fence }
    }

    fn admit(&self, call: &str, zone: &str, name: &str) -> Result<(), CloudError> {
        self.fence.check(&format_args!("gce {call} {zone}/{name}")).map_err(refused_cloud)?;
        tracing::debug!(call, zone, instance = name, "gce mutation");
        Ok(())
    }
}

#[async_trait::async_trait]
impl Compute for FencedCompute {
    async fn insert_instance(&self, req: &InstanceRequest) -> Result<OperationRef, CloudError> {
        self.admit("insert", &req.zone, &req.name)?;
        self.inner.insert_instance(req).await
    }

    async fn get_instance(&self, zone: &str, name: &str) -> Result<Option<CloudInstance>, CloudError> {
        self.inner.get_instance(zone, name).await
    }

    async fn list_instances(
        &self,
        zone: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Vec<CloudInstance>, CloudError> {
        self.inner.list_instances(zone, labels).await
    }

    async fn start_instance(&self, zone: &str, name: &str) -> Result<OperationRef, CloudError> {
        self.admit("start", zone, name)?;
        self.inner.start_instance(zone, name).await
    }

    async fn stop_instance(&self, zone: &str, name: &str) -> Result<OperationRef, CloudError> {
        self.admit("stop", zone, name)?;
        self.inner.stop_instance(zone, name).await
    }

    async fn delete_instance(&self, zone: &str, name: &str) -> Result<Option<OperationRef>, CloudError> {
        self.admit("delete", zone, name)?;
        self.inner.delete_instance(zone, name).await
    }

    async fn set_machine_type(&self, zone: &str, name: &str, machine_type: &str) -> Result<OperationRef, CloudError> {
        self.admit("setMachineType", zone, name)?;
        self.inner.set_machine_type(zone, name, machine_type).await
    }

    async fn set_labels(
        &self,
        zone: &str,
        name: &str,
        fingerprint: Option<&str>,
        labels: &BTreeMap<String, String>,
    ) -> Result<OperationRef, CloudError> {
        self.admit("setLabels", zone, name)?;
        self.inner.set_labels(zone, name, fingerprint, labels).await
    }

    async fn set_metadata(
        &self,
        zone: &str,
        name: &str,
        fingerprint: Option<&str>,
        items: &BTreeMap<String, String>,
    ) -> Result<OperationRef, CloudError> {
        self.admit("setMetadata", zone, name)?;
        self.inner.set_metadata(zone, name, fingerprint, items).await
    }

    async fn guest_attributes(
        &self,
        zone: &str,
        name: &str,
        query_path: &str,
    ) -> Result<Vec<GuestAttribute>, CloudError> {
        self.inner.guest_attributes(zone, name, query_path).await
    }

    async fn operation(&self, op: &OperationRef) -> Result<OperationState, CloudError> {
        self.inner.operation(op).await
    }
}

/// [`VmAccess`] behind the fence: commands and file writes are checked (the SSH pool logs
/// each command it runs as `ssh exec`); health probes (plain GETs) pass.
pub struct FencedVms {
    inner: Arc<dyn VmAccess>,
    fence: Arc<Fence>,
}

impl FencedVms {
    pub fn new(inner: Arc<dyn VmAccess>, fence: Arc<Fence>) -> Self {
        Self { inner, fence }
    }

    fn admit(&self, target: &SshTarget) -> Result<(), SshError> {
        self.fence.check(&format_args!("ssh command on {}", target.host)).map_err(|e| SshError::Connect(e.to_string()))
    }
}

#[async_trait::async_trait]
impl VmAccess for FencedVms {
    async fn exec(
        &self,
        target: &SshTarget,
        command: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
        on_output: OnOutput<'_>,
    ) -> Result<ExecOutput, SshError> {
        self.admit(target)?;
        self.inner.exec(target, command, stdin, timeout, on_output).await
    }

    async fn write_file(
        &self,
        target: &SshTarget,
        path: &str,
        contents: &[u8],
        mode: u32,
        owner: Option<&str>,
        timeout: Duration,
    ) -> Result<(), SshError> {
        self.admit(target)?;
        self.inner.write_file(target, path, contents, mode, owner, timeout).await
    }

    async fn exec_stream(
        &self,
        target: &SshTarget,
        command: &str,
        timeout: Duration,
    ) -> Result<crate::ssh::ByteStream, SshError> {
        self.admit(target)?;
        self.inner.exec_stream(target, command, timeout).await
    }

    async fn forget(&self, host: &str) {
        self.inner.forget(host).await;
    }

    async fn probe_health(&self, url: &str) -> HealthAnswer {
        self.inner.probe_health(url).await
    }
}

/// A tower layer for a kube [`Client`](kube::Client): every request but GET and HEAD (reads
/// and watches) is checked against the fence and logged as `kubernetes write`.
#[derive(Clone)]
pub struct FenceLayer(pub Arc<Fence>);

impl<S> tower::Layer<S> for FenceLayer {
    type Service = FencedService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        FencedService { inner, fence: self.0.clone() }
    }
}

/// The service [`FenceLayer`] makes.
#[derive(Clone)]
pub struct FencedService<S> {
    inner: S,
    fence: Arc<Fence>,
}

/// Whether a request changes something on the API server.
pub fn is_write(method: &http::Method) -> bool {
    !matches!(*method, http::Method::GET | http::Method::HEAD | http::Method::OPTIONS)
}

impl<S, B> tower::Service<http::Request<B>> for FencedService<S>
where
    S: tower::Service<http::Request<B>>,
    S::Response: Send + 'static,
    S::Error: Into<tower::BoxError>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = tower::BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, tower::BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if is_write(req.method()) {
            let method = req.method().clone();
            let path = req.uri().path().to_string();
            if let Err(e) = self.fence.check(&format_args!("kubernetes {method} {path}")) {
                return Box::pin(std::future::ready(Err(Box::new(e) as tower::BoxError)));
            }
            tracing::debug!(%method, path, "kubernetes write");
        }
        let fut = self.inner.call(req);
        Box::pin(async move { fut.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn open_until_the_deadline_on_the_monotonic_clock() {
        let fence = Fence::closed();
        assert!(!fence.is_open());
        assert_eq!(fence.check(&"x"), Err(NotLeading));
        fence.open_until(Instant::now() + Duration::from_secs(10));
        assert!(fence.is_open());
        tokio::time::advance(Duration::from_millis(9_999)).await;
        assert!(fence.check(&"x").is_ok());
        // A pause past the deadline: nothing is issued on resume, before anyone notices.
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(!fence.is_open());
        assert_eq!(fence.remaining(), Some(Duration::ZERO));
        fence.open_until(Instant::now() + Duration::from_secs(10));
        fence.close();
        assert!(!fence.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn always_open_never_closes() {
        let fence = Fence::always_open();
        fence.close();
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert!(fence.is_open());
        assert_eq!(fence.remaining(), None);
    }

    #[test]
    fn writes_are_everything_but_reads() {
        for m in [http::Method::POST, http::Method::PUT, http::Method::PATCH, http::Method::DELETE] {
            assert!(is_write(&m), "{m}");
        }
        assert!(!is_write(&http::Method::GET));
        assert!(!is_write(&http::Method::HEAD));
    }

    #[derive(Clone)]
    struct Echo(Arc<std::sync::atomic::AtomicUsize>);

    impl tower::Service<http::Request<()>> for Echo {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), std::convert::Infallible>>;
        fn poll_ready(&mut self, _: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            self.0.fetch_add(1, Ordering::SeqCst);
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_layer_refuses_writes_not_reads_once_closed() {
        use tower::{Layer, Service};
        let fence = Fence::closed();
        let sent = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut svc = FenceLayer(fence.clone()).layer(Echo(sent.clone()));
        let req = |m: http::Method| http::Request::builder().method(m).uri("/api/v1/x").body(()).unwrap();
        assert!(svc.call(req(http::Method::GET)).await.is_ok());
        let err = svc.call(req(http::Method::PATCH)).await.unwrap_err();
        assert!(err.downcast_ref::<NotLeading>().is_some());
        assert_eq!(sent.load(Ordering::SeqCst), 1);
        fence.open_until(Instant::now() + Duration::from_secs(1));
        assert!(svc.call(req(http::Method::PATCH)).await.is_ok());
        assert_eq!(sent.load(Ordering::SeqCst), 2);
    }
}

//! The controllers: one per kind, sharing one [`Context`] and one reconcile pipeline
//! (read → plan → apply → status) in [`reconcile`].

pub mod kind;
pub mod reconcile;
pub mod route;
pub mod secrets;
pub mod work;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Api, Client, ResourceExt};
use tokio::sync::mpsc;

use crate::api::{ProjectVM, Workspace};
use crate::cloud::{CloudError, Compute, InstanceCache};
use crate::config::Config;
use crate::cost::Rates;
use crate::engine::tasks::TaskRegistry;
use crate::metrics::Metrics;
use crate::ssh::SshPool;

/// Field manager for everything the operator applies.
pub const FIELD_MANAGER: &str = "projectvm-operator";
/// Finalizer that makes deletion remove the VM first.
pub const FINALIZER: &str = "projectvm.dev/cleanup";
/// Annotation that pauses reconciling one resource.
pub const PAUSED_ANNOTATION: &str = "projectvm.dev/paused";
/// Annotation a person sets (to any new value, e.g. a timestamp) to start a stopped
/// `Manual` VM without editing its spec.
pub const START_ANNOTATION: &str = "projectvm.dev/start-requested";

/// Errors that abort a reconcile; the error policy retries them with capped backoff.
#[derive(thiserror::Error, Debug)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Compute Engine: {0}")]
    Cloud(#[from] CloudError),
    #[error("{0}")]
    Invalid(String),
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
    fn pending(&self) -> Option<Duration> {
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

/// Shared state of both controllers.
pub struct Context {
    pub client: Client,
    pub compute: Arc<dyn Compute>,
    pub instances: InstanceCache,
    pub ssh: SshPool,
    pub tasks: TaskRegistry,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    pub rates: Rates,
    pub http: reqwest::Client,
    /// Consecutive reconcile errors per object, for the error policy's backoff.
    failures: Mutex<HashMap<String, u32>>,
    wake_projectvm: mpsc::UnboundedSender<ObjectRef<ProjectVM>>,
    wake_workspace: mpsc::UnboundedSender<ObjectRef<Workspace>>,
}

/// Trigger streams for the controllers, fed by finishing tasks.
pub struct Wakeups {
    projectvm: mpsc::UnboundedReceiver<ObjectRef<ProjectVM>>,
    workspace: mpsc::UnboundedReceiver<ObjectRef<Workspace>>,
}

impl Context {
    pub fn new(
        client: Client,
        compute: Arc<dyn Compute>,
        config: Config,
        rates: Rates,
        metrics: Arc<Metrics>,
    ) -> (Arc<Self>, Wakeups) {
        let (tp, rp) = mpsc::unbounded_channel();
        let (tw, rw) = mpsc::unbounded_channel();
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        let ctx = Context {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            compute,
            instances: InstanceCache::new(Duration::from_secs(15)),
            ssh: SshPool::new(),
            tasks: TaskRegistry::new(config.max_concurrent_tasks),
            metrics,
            http: reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build().unwrap_or_default(),
            config,
            rates,
            failures: Mutex::new(HashMap::new()),
            wake_projectvm: tp,
            wake_workspace: tw,
        };
        (Arc::new(ctx), Wakeups { projectvm: rp, workspace: rw })
    }

    /// A closure that re-queues the object's reconcile.
    pub fn waker<K: kind::VmKind>(self: &Arc<Self>, obj: &K) -> crate::engine::tasks::Wake {
        let ns = obj.namespace().unwrap_or_default();
        let name = obj.name_any();
        let ctx = Arc::downgrade(self);
        let label = K::LABEL;
        Arc::new(move || {
            let Some(ctx) = ctx.upgrade() else { return };
            match label {
                "projectvm" => {
                    let _ = ctx.wake_projectvm.send(ObjectRef::new(&name).within(&ns));
                }
                _ => {
                    let _ = ctx.wake_workspace.send(ObjectRef::new(&name).within(&ns));
                }
            }
        })
    }

    pub(crate) fn record_failure(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().expect("failures lock");
        let n = f.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    pub(crate) fn reset_failures(&self, key: &str) {
        self.failures.lock().expect("failures lock").remove(key);
    }
}

/// Capped exponential backoff for failed reconciles: 2 s, 4 s, … up to 5 minutes.
pub fn error_backoff(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.min(9)).min(300))
}

fn error_policy<K: kind::VmKind>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    if let Some(retry_in) = err.pending() {
        return Action::requeue(retry_in);
    }
    let key = reconcile::object_key(&*obj);
    let n = ctx.record_failure(&key);
    let delay = error_backoff(n);
    tracing::warn!(object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    ctx.metrics.reconcile_failed(K::LABEL);
    Action::requeue(delay)
}

/// Runs both controllers until shutdown.
pub async fn run(
    ctx: Arc<Context>,
    wakeups: Wakeups,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let client = ctx.client.clone();
    let ns = ctx.config.watch_namespace.clone();
    let pvms: Api<ProjectVM> = match &ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    };
    let wss: Api<Workspace> = match &ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    };
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = match &ns {
        Some(n) => Api::namespaced(client.clone(), n),
        None => Api::all(client.clone()),
    };

    let pvm = controller_for(pvms, secrets.clone(), wakeups.projectvm, ctx.clone(), shutdown.clone());
    let ws = controller_for(wss, secrets, wakeups.workspace, ctx.clone(), shutdown);
    futures::future::join(pvm, ws).await;
}

/// One kind's controller. Besides its own objects it watches Secrets, mapping each to the
/// resources that use it, so a refreshed token or password reaches the VM without a restart.
async fn controller_for<K>(
    api: Api<K>,
    secrets: Api<k8s_openapi::api::core::v1::Secret>,
    wakeups: mpsc::UnboundedReceiver<ObjectRef<K>>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) where
    K: kind::VmKind + work::KindWork,
{
    let controller = Controller::new(api, watcher::Config::default());
    let store = controller.store();
    controller
        .watches(secrets, watcher::Config::default(), move |secret| {
            let ns = secret.namespace().unwrap_or_default();
            let name = secret.name_any();
            store
                .state()
                .iter()
                .filter(|o| o.namespace().as_deref() == Some(ns.as_str()) && o.uses_secret(&name))
                .map(|o| ObjectRef::from_obj(&**o))
                .collect::<Vec<_>>()
        })
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(wakeups))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

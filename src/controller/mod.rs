//! The controllers: one per kind, sharing one [`Context`] and one reconcile pipeline.
//!
//! - [`reconcile`]: the pipeline, top to bottom (finalizer → observe → plan → act → status).
//! - [`observe`], [`plan`], [`instance`], [`steps`], [`activity`], [`cleanup`]: its stages.
//! - [`status`]: the pure status builder (conditions, kstatus, phase, progress, events).
//! - [`kind`]: what differs between ProjectVM and Workspace, behind one trait.
//! - [`cluster`], [`vm`]: the Kubernetes and VM edges, behind narrow traits (the cloud's is
//!   `crate::cloud::Compute`), so the scenario tests run the real pipeline in-process.
//! - [`secrets`], [`route`]: the Secrets and route objects the operator reads and owns.

pub mod activity;
pub mod cleanup;
pub mod cluster;
pub mod instance;
pub mod kind;
pub mod observe;
pub mod plan;
pub mod reconcile;
pub mod route;
pub mod secrets;
pub mod status;
pub mod steps;
pub mod vm;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;

use crate::api::{ProjectVM, Workspace};
use crate::cloud::{CloudError, Compute, InstanceCache};
use crate::config::Config;
use crate::cost::Rates;
use crate::engine::tasks::TaskRegistry;
use crate::metrics::Metrics;
use cluster::Cluster;
use vm::VmAccess;

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
    /// For the finalizer and the watches; everything else goes through the edges below.
    pub client: Client,
    pub cluster: Arc<dyn Cluster>,
    pub compute: Arc<dyn Compute>,
    pub vm: Arc<dyn VmAccess>,
    pub instances: InstanceCache,
    pub tasks: TaskRegistry,
    pub metrics: Arc<Metrics>,
    pub config: Config,
    pub rates: Rates,
    /// Consecutive reconcile errors per object, for the error policy's backoff.
    failures: Mutex<HashMap<String, u32>>,
    pub(crate) wake_projectvm: mpsc::UnboundedSender<ObjectRef<ProjectVM>>,
    pub(crate) wake_workspace: mpsc::UnboundedSender<ObjectRef<Workspace>>,
}

/// The edges a [`Context`] is built from.
pub struct Edges {
    pub client: Client,
    pub cluster: Arc<dyn Cluster>,
    pub compute: Arc<dyn Compute>,
    pub vm: Arc<dyn VmAccess>,
}

/// Trigger streams for the controllers, fed by finishing tasks.
pub struct Wakeups {
    projectvm: mpsc::UnboundedReceiver<ObjectRef<ProjectVM>>,
    workspace: mpsc::UnboundedReceiver<ObjectRef<Workspace>>,
}

impl Context {
    pub fn new(edges: Edges, config: Config, rates: Rates, metrics: Arc<Metrics>) -> (Arc<Self>, Wakeups) {
        let (tp, rp) = mpsc::unbounded_channel();
        let (tw, rw) = mpsc::unbounded_channel();
        let ctx = Context {
            client: edges.client,
            cluster: edges.cluster,
            compute: edges.compute,
            vm: edges.vm,
            instances: InstanceCache::new(Duration::from_secs(15)),
            tasks: TaskRegistry::new(config.max_concurrent_tasks),
            metrics,
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
        let target = ObjectRef::from_obj(obj);
        let ctx = Arc::downgrade(self);
        Arc::new(move || {
            if let Some(ctx) = ctx.upgrade() {
                let _ = K::wakeups(&ctx).send(target.clone());
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

/// `kind/namespace/name`, the key for tasks and backoff.
pub fn object_key<K: kind::VmKind>(o: &K) -> String {
    format!("{}/{}/{}", K::LABEL, o.namespace().unwrap_or_default(), o.name_any())
}

/// Capped exponential backoff for failed reconciles: 2 s, 4 s, … up to 5 minutes.
pub fn error_backoff(failures: u32) -> Duration {
    Duration::from_secs((1u64 << failures.min(9)).min(300))
}

fn error_policy<K: kind::VmKind>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    if let Some(retry_in) = err.pending() {
        return Action::requeue(retry_in);
    }
    let key = object_key(&*obj);
    let n = ctx.record_failure(&key);
    let delay = error_backoff(n);
    tracing::warn!(object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    ctx.metrics.reconcile_failed(K::LABEL);
    Action::requeue(delay)
}

/// Runs both controllers until shutdown.
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    wakeups: Wakeups,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
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

/// Hashes what a person or a tool changes: the spec (through the generation), labels,
/// annotations (pause, start requests), finalizers and the deletion timestamp.
fn spec_or_metadata_changed<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(obj).hash(&mut h);
    predicates::labels(obj).hash(&mut h);
    predicates::annotations(obj).hash(&mut h);
    predicates::finalizers(obj).hash(&mut h);
    obj.meta().deletion_timestamp.as_ref().map(|t| t.0.as_second()).hash(&mut h);
    Some(h.finish())
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
    K: kind::VmKind,
{
    // Only changes someone else made start a reconcile: the operator's own status writes
    // move none of these, so they do not trigger a second pass.
    let (reader, writer) = reflector::store();
    let changes = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_metadata_changed::<K>, Default::default());
    let controller = Controller::for_stream(changes, reader);
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

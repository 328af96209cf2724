//! The controllers: one per kind, sharing one [`Context`] and one reconcile pipeline.
//!
//! - [`reconcile`]: the pipeline, top to bottom (finalizer → observe → plan → act → status).
//! - [`observe`], [`plan`], [`instance`], [`steps`], [`activity`], [`cleanup`]: its stages.
//! - [`status`]: the pure status builder (conditions, kstatus, phase, progress, events).
//! - [`kind`]: what differs between ProjectVM and Workspace, behind one trait.
//! - [`context`], [`error`], [`writer`]: shared state, errors and backoff, writing status.
//! - [`cluster`], [`vm`]: the Kubernetes and VM edges, behind narrow traits (the cloud's is
//!   `crate::cloud::Compute`), so the scenario tests run the real pipeline in-process.
//! - [`secrets`], [`route`]: the Secrets and route objects the operator reads and owns.

pub mod activity;
pub mod cleanup;
pub mod cluster;
pub mod context;
pub mod error;
pub mod instance;
pub mod kind;
pub mod names;
pub mod observe;
pub mod owner;
pub mod plan;
pub mod reconcile;
pub mod route;
pub mod secrets;
pub mod status;
pub mod steps;
pub mod vm;
pub mod writer;

use std::sync::Arc;

use futures::StreamExt;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;

pub use context::{Context, Edges, Wakeups};
pub use error::{Error, error_backoff};
pub use kind::object_key;

use crate::api::{ProjectVM, Workspace};

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
    K::watch_cache(&ctx, controller.store());
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

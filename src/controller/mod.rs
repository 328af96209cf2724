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
pub mod own_secrets;
pub mod owner;
pub mod plan;
pub mod reconcile;
pub mod route;
pub mod route_cache;
pub mod secrets;
pub mod status;
pub mod steps;
pub mod vm;
pub mod writer;

use std::collections::HashMap;
use std::sync::Arc;

use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt, predicates, reflector, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use tokio::sync::mpsc;

pub use context::{Context, Edges, Wakeups};
pub use error::{Error, error_backoff};
pub use kind::object_key;

use crate::api::{ProjectVM, Workspace};

fn error_policy<K: kind::VmKind>(obj: Arc<K>, err: &Error, ctx: Arc<Context>) -> Action {
    backoff_after(&ctx, &object_key(&*obj), K::LABEL, err)
}

/// What every controller does after a failed reconcile: a deletion still under way is looked
/// at again soon; anything else is retried with capped backoff in the object's consecutive
/// failures.
pub(crate) fn backoff_after(ctx: &Context, key: &str, label: &'static str, err: &Error) -> Action {
    if let Some(retry_in) = err.pending() {
        return Action::requeue(retry_in);
    }
    let n = ctx.record_failure(key);
    let delay = error_backoff(n);
    tracing::warn!(object = %key, error = %err, retry_in = ?delay, "reconcile failed");
    ctx.metrics.reconcile_failed(label);
    Action::requeue(delay)
}

/// Runs the three controllers (ProjectVM, Workspace, Run) until shutdown: over all namespaces, or only over those of
/// `--watch-namespace` (the chart's namespaced mode, whose Roles grant nothing elsewhere).
pub async fn run(
    client: Client,
    ctx: Arc<Context>,
    wakeups: Wakeups,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let shutdown = futures::future::FutureExt::shared(Box::pin(shutdown));
    let namespaces = ctx.config.watched_namespaces();
    tracing::info!(shard = %ctx.config.shard_selector, "reconciling this shard");
    if namespaces.is_empty() {
        tracing::info!("watching all namespaces");
    } else {
        tracing::info!(namespaces = %namespaces.join(","), "watching only these namespaces");
    }
    let pvm = controller_for::<ProjectVM>(&client, &namespaces, wakeups.projectvm, ctx.clone(), shutdown.clone());
    let ws = controller_for::<Workspace>(&client, &namespaces, wakeups.workspace, ctx.clone(), shutdown.clone());
    let runs = crate::run::run(client.clone(), ctx.clone(), wakeups.run, shutdown);
    futures::future::join3(pvm, ws, runs).await;
}

/// What every controller (ProjectVM, Workspace, Run) runs with: at most
/// `--max-concurrent-reconciles` reconciles at once.
pub(crate) fn controller_config(ctx: &Context) -> kube::runtime::controller::Config {
    kube::runtime::controller::Config::default().concurrency(ctx.config.max_concurrent_reconciles)
}

/// One `Api` per watched namespace, or a single one over all namespaces; each with the
/// namespace it is limited to.
pub(crate) fn scoped_apis<K>(client: &Client, namespaces: &[String]) -> Vec<(Option<String>, Api<K>)>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>,
{
    if namespaces.is_empty() {
        return vec![(None, Api::all(client.clone()))];
    }
    namespaces.iter().map(|ns| (Some(ns.clone()), Api::namespaced(client.clone(), ns))).collect()
}

type EventStream<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// Merges the watch streams of several namespaces into one stream for a single reflector.
///
/// A reflector takes `Init … InitDone` as a relist of everything it stores, so passing one
/// namespace's (re)list through unchanged would drop the other namespaces' objects, and
/// interleaved lists would mix their buffers. Each namespace's list is therefore held back
/// until its `InitDone` and then replayed, in one piece, as a relist of the whole store:
/// that namespace's fresh objects plus the others' as the store holds them. Objects deleted
/// while a namespace's watch was down disappear with that relist, as with one watcher.
pub(crate) fn merge_namespaces<K>(streams: Vec<(Option<String>, EventStream<K>)>, store: Store<K>) -> EventStream<K>
where
    K: Resource<DynamicType = ()> + Clone + Send + Sync + 'static,
{
    if streams.len() == 1 {
        return streams.into_iter().next().expect("one stream").1;
    }
    let tagged = futures::stream::select_all(streams.into_iter().map(|(ns, s)| s.map(move |e| (ns.clone(), e))));
    let mut listing: HashMap<Option<String>, Vec<K>> = HashMap::new();
    tagged
        .flat_map(move |(ns, event)| {
            let out: Vec<Result<watcher::Event<K>, watcher::Error>> = match event {
                Ok(watcher::Event::Init) => {
                    listing.insert(ns, Vec::new());
                    Vec::new()
                }
                Ok(watcher::Event::InitApply(obj)) => {
                    listing.entry(ns).or_default().push(obj);
                    Vec::new()
                }
                Ok(watcher::Event::InitDone) => {
                    let fresh = listing.remove(&ns).unwrap_or_default();
                    let others = store
                        .state()
                        .into_iter()
                        .filter(|o| o.namespace() != ns)
                        .map(|o| watcher::Event::InitApply((*o).clone()));
                    std::iter::once(watcher::Event::Init)
                        .chain(others)
                        .chain(fresh.into_iter().map(watcher::Event::InitApply))
                        .chain(std::iter::once(watcher::Event::InitDone))
                        .map(Ok)
                        .collect()
                }
                other => vec![other],
            };
            futures::stream::iter(out)
        })
        .boxed()
}

/// Secrets in the watched namespaces, by metadata only: the mapper needs a Secret's
/// namespace and name, never its data, so the operator holds no Secret data it did not ask
/// for by name (a referenced token, its own SSH key and password).
/// The watch of this operator's share of the ProjectVMs and Workspaces (see [`crate::shard`]).
pub(crate) fn shard_watch(ctx: &Context) -> watcher::Config {
    let config = watcher::Config::default();
    match ctx.config.shard_selector.as_watch_selector() {
        Some(selector) => config.labels(selector),
        None => config,
    }
}

pub(crate) fn secret_metadata(
    client: &Client,
    namespaces: &[String],
) -> impl Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    // An `Api` of `PartialObjectMeta` lists and watches with metadata-only requests.
    let streams = scoped_apis::<PartialObjectMeta<Secret>>(client, namespaces)
        .into_iter()
        .map(|(_, api)| watcher(api, watcher::Config::default()).default_backoff().touched_objects().boxed());
    futures::stream::select_all(streams)
}

/// Watched objects are stored without their managedFields: nothing reads them, and they are
/// more than half of each stored object's JSON (about 6.7 of 11 KB for a ProjectVM).
pub(crate) fn drop_managed_fields<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Hashes what a person or a tool changes: the spec (through the generation), labels,
/// annotations (pause, start requests), finalizers and the deletion timestamp.
pub(crate) fn spec_or_metadata_changed<K: Resource>(obj: &K) -> Option<u64> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    predicates::generation(obj).hash(&mut h);
    predicates::labels(obj).hash(&mut h);
    predicates::annotations(obj).hash(&mut h);
    predicates::finalizers(obj).hash(&mut h);
    obj.meta().deletion_timestamp.as_ref().map(|t| t.0.as_second()).hash(&mut h);
    Some(h.finish())
}

/// One kind's controller. Besides its own objects it watches Secrets (metadata only), mapping
/// each to the resources that use it, so a refreshed token or password reaches the VM
/// without a restart.
async fn controller_for<K>(
    client: &Client,
    namespaces: &[String],
    wakeups: mpsc::UnboundedReceiver<ObjectRef<K>>,
    ctx: Arc<Context>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) where
    K: kind::VmKind,
{
    // Only changes someone else made start a reconcile: the operator's own status writes
    // move none of these, so they do not trigger a second pass.
    let (reader, writer) = reflector::store();
    let watches = scoped_apis::<K>(client, namespaces)
        .into_iter()
        .map(|(ns, api)| (ns, watcher(api, shard_watch(&ctx)).default_backoff().modify(drop_managed_fields).boxed()))
        .collect();
    let leaving = ctx.clone();
    let changes = merge_namespaces(watches, reader.clone())
        .inspect(move |event| {
            // Deleted, or relabelled into another shard: its tasks and series go with it.
            if let Ok(watcher::Event::Delete(obj)) = event {
                leaving.forget_object(&obj.owner());
            }
        })
        .reflect(writer)
        .applied_objects()
        .predicate_filter(spec_or_metadata_changed::<K>, Default::default());
    let controller = K::watch_owned(Controller::for_stream(changes, reader), client, namespaces, &ctx);
    K::watch_cache(&ctx, controller.store());
    let store = controller.store();
    let cluster = ctx.cluster.clone();
    controller
        .watches_stream(secret_metadata(client, namespaces), move |secret| {
            let ns = secret.namespace().unwrap_or_default();
            let name = secret.name_any();
            cluster.secret_changed(&ns, &name);
            store
                .state()
                .iter()
                .filter(|o| o.namespace().as_deref() == Some(ns.as_str()) && o.uses_secret(&name))
                .map(|o| ObjectRef::from_obj(&**o))
                .collect::<Vec<_>>()
        })
        .reconcile_on(tokio_stream::wrappers::UnboundedReceiverStream::new(wakeups))
        .graceful_shutdown_on(shutdown)
        .with_config(controller_config(&ctx))
        .run(reconcile::reconcile::<K>, error_policy::<K>, ctx)
        .for_each(|_| futures::future::ready(()))
        .await;
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use futures::channel::mpsc::{UnboundedSender, unbounded};
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    use super::*;

    fn cm(ns: &str, name: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta { namespace: Some(ns.into()), name: Some(name.into()), ..Default::default() },
            ..Default::default()
        }
    }

    type Sender = UnboundedSender<Result<watcher::Event<ConfigMap>, watcher::Error>>;

    fn send(tx: &Sender, events: Vec<watcher::Event<ConfigMap>>) {
        for e in events {
            tx.unbounded_send(Ok(e)).unwrap();
        }
    }

    fn names(store: &Store<ConfigMap>) -> Vec<String> {
        let mut v: Vec<String> =
            store.state().iter().map(|o| format!("{}/{}", o.namespace().unwrap(), o.name_any())).collect();
        v.sort();
        v
    }

    #[test]
    fn several_namespaces_share_one_store() {
        use watcher::Event::*;
        let (reader, writer) = reflector::store::<ConfigMap>();
        let (a, a_rx) = unbounded();
        let (b, b_rx) = unbounded();
        let merged = merge_namespaces(
            vec![(Some("a".to_string()), a_rx.boxed()), (Some("b".to_string()), b_rx.boxed())],
            reader.clone(),
        );
        let mut applied = merged.reflect(writer).applied_objects().boxed();
        let mut drain = || {
            let mut seen = Vec::new();
            while let Some(Some(o)) = applied.next().now_or_never() {
                seen.push(o.map(|o| o.name_any()).unwrap_or_else(|e| format!("error: {e}")));
            }
            seen
        };

        // Interleaved initial lists: nothing reaches the store before a list is complete.
        send(&a, vec![Init, InitApply(cm("a", "a1"))]);
        send(&b, vec![Init, InitApply(cm("b", "b1"))]);
        drain();
        assert!(names(&reader).is_empty());
        send(&a, vec![InitDone]);
        drain();
        assert_eq!(names(&reader), ["a/a1"]);
        send(&b, vec![InitApply(cm("b", "b2")), InitDone]);
        drain();
        assert_eq!(names(&reader), ["a/a1", "b/b1", "b/b2"]);

        // b relists (its watch was down, b2 was deleted meanwhile) while a keeps changing.
        send(&b, vec![Init, InitApply(cm("b", "b1"))]);
        send(&a, vec![Apply(cm("a", "a3"))]);
        assert_eq!(drain(), ["a3"]);
        send(&b, vec![InitDone]);
        drain();
        assert_eq!(names(&reader), ["a/a1", "a/a3", "b/b1"], "a kept, b2 gone");

        // Deletes and errors pass through.
        send(&a, vec![Delete(cm("a", "a1"))]);
        a.unbounded_send(Err(watcher::Error::NoResourceVersion)).unwrap();
        assert_eq!(drain().len(), 1, "the error");
        assert_eq!(names(&reader), ["a/a3", "b/b1"]);
    }

    #[test]
    fn one_namespace_or_all_is_passed_through() {
        let (reader, writer) = reflector::store::<ConfigMap>();
        let (a, a_rx) = unbounded();
        let mut s = merge_namespaces(vec![(None, a_rx.boxed())], reader.clone()).reflect(writer).boxed();
        send(&a, vec![watcher::Event::Init, watcher::Event::InitApply(cm("x", "1")), watcher::Event::InitDone]);
        let mut n = 0;
        while let Some(Some(_)) = s.next().now_or_never() {
            n += 1;
        }
        assert_eq!(n, 3);
        assert_eq!(names(&reader), ["x/1"]);
    }
}

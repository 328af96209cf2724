//! What the operator knows of its Workspaces' route objects between reconciles, so a Ready
//! Workspace's resync costs the API server nothing: a metadata-only watch of the Services,
//! EndpointSlices and Ingresses the operator made (by their managed-by label), and what it
//! last wrote for each Workspace. When the desired route is the one last written and every
//! object still has the version that write left, there is nothing to apply. Anything else —
//! an object deleted or edited by someone (a new resourceVersion), a new address, a watch not
//! yet synced — takes the full path: read, check ownership, apply.
//!
//! The same watch wakes the owning Workspace when one of its objects changes or goes, so a
//! deleted Service comes back at once rather than at the next resync. Before this, every
//! resync of every Workspace read its three objects and re-applied two (5 requests a minute
//! per Workspace, most of the API traffic of a large operator at rest).

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::networking::v1::Ingress;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::api::Workspace;

/// The resourceVersion of each route object: as a write left it, or as the watch shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RouteVersions {
    pub service: Option<String>,
    pub endpoint_slice: Option<String>,
    /// `None` when no Ingress is asked for (and none of ours exists).
    pub ingress: Option<String>,
}

/// The last route written for a Workspace: a hash of the desired objects (owner UID
/// included, so a Workspace recreated under the same name never matches) and the versions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Applied {
    pub desired: u64,
    pub versions: RouteVersions,
}

/// Whether the route needs no write: the same desired objects as last written, and the
/// watch shows each of them at the version that write left.
pub fn unchanged(last: Option<&Applied>, desired: u64, seen: &RouteVersions) -> bool {
    let Some(last) = last else { return false };
    last.desired == desired
        && last.versions.service.is_some()
        && last.versions.endpoint_slice.is_some()
        && last.versions == *seen
}

/// The watch caches of the three kinds (metadata only, the operator's objects only).
#[derive(Clone)]
pub struct RouteStores {
    pub services: Store<PartialObjectMeta<Service>>,
    pub endpoint_slices: Store<PartialObjectMeta<EndpointSlice>>,
    pub ingresses: Store<PartialObjectMeta<Ingress>>,
}

fn version_in<K>(store: &Store<PartialObjectMeta<K>>, namespace: &str, name: &str) -> Option<String>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let key = ObjectRef::<PartialObjectMeta<K>>::new(name).within(namespace);
    store.get(&key).and_then(|o| o.metadata.resource_version.clone())
}

/// Route memory of one operator process.
#[derive(Default)]
pub struct RouteCache {
    stores: OnceLock<RouteStores>,
    applied: Mutex<HashMap<(String, String), Applied>>,
}

impl RouteCache {
    /// Receives the watch caches once the Workspace controller runs (later calls are ignored).
    pub fn watch(&self, stores: RouteStores) {
        let _ = self.stores.set(stores);
    }

    /// What the watch shows of the route objects of these names; all `None` without a watch.
    fn seen(&self, namespace: &str, service: &str, endpoint_slice: &str) -> RouteVersions {
        let Some(s) = self.stores.get() else { return RouteVersions::default() };
        RouteVersions {
            service: version_in(&s.services, namespace, service),
            endpoint_slice: version_in(&s.endpoint_slices, namespace, endpoint_slice),
            // The Ingress shares the Service's name.
            ingress: version_in(&s.ingresses, namespace, service),
        }
    }

    /// Whether the route last written for `ws` still stands, as the watch shows it.
    pub fn is_current(&self, ws: &Workspace, desired: u64) -> bool {
        let (ns, name) = (ws.namespace().unwrap_or_default(), ws.name_any());
        let seen = self.seen(&ns, &super::names::service(&name), &super::names::endpoint_slice(&name));
        let applied = self.applied.lock().unwrap_or_else(|e| e.into_inner());
        unchanged(applied.get(&(ns, name)), desired, &seen)
    }

    pub fn record(&self, ws: &Workspace, applied: Applied) {
        let key = (ws.namespace().unwrap_or_default(), ws.name_any());
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).insert(key, applied);
    }

    /// The Workspace is gone (or left this shard), or its route is refused: write in full next time.
    pub fn forget(&self, namespace: &str, name: &str) {
        self.applied.lock().unwrap_or_else(|e| e.into_inner()).remove(&(namespace.to_string(), name.to_string()));
    }
}

type Touched<K> = futures::stream::BoxStream<'static, Result<PartialObjectMeta<K>, watcher::Error>>;

/// One kind's watch: the store it fills, and the stream of objects it saw change or go.
fn watch_kind<K>(client: &Client, namespaces: &[String]) -> (Store<PartialObjectMeta<K>>, Touched<K>)
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope> + Clone + Send + Sync + std::fmt::Debug + 'static,
    K: serde::de::DeserializeOwned,
{
    let (reader, writer) = reflector::store();
    let selector = format!("{}={}", super::route::MANAGED_BY, super::route::MANAGED_BY_US);
    let config = watcher::Config::default().labels(&selector);
    let watches = super::scoped_apis::<PartialObjectMeta<K>>(client, namespaces)
        .into_iter()
        .map(|(ns, api)| {
            (ns, watcher(api, config.clone()).default_backoff().modify(super::drop_managed_fields).boxed())
        })
        .collect();
    let touched = super::merge_namespaces(watches, reader.clone()).reflect(writer).touched_objects().boxed();
    (reader, touched)
}

/// The three watches: their stores, and the streams that wake the owning Workspace.
pub fn watches(
    client: &Client,
    namespaces: &[String],
) -> (RouteStores, Touched<Service>, Touched<EndpointSlice>, Touched<Ingress>) {
    let (services, s) = watch_kind::<Service>(client, namespaces);
    let (endpoint_slices, e) = watch_kind::<EndpointSlice>(client, namespaces);
    let (ingresses, i) = watch_kind::<Ingress>(client, namespaces);
    (RouteStores { services, endpoint_slices, ingresses }, s, e, i)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str, e: &str, i: Option<&str>) -> RouteVersions {
        RouteVersions { service: Some(s.into()), endpoint_slice: Some(e.into()), ingress: i.map(String::from) }
    }

    #[test]
    fn only_the_route_as_written_and_untouched_is_skipped() {
        let last = Applied { desired: 7, versions: v("10", "11", None) };
        assert!(unchanged(Some(&last), 7, &v("10", "11", None)));
        // Nothing written yet (a new process, or a refused route).
        assert!(!unchanged(None, 7, &v("10", "11", None)));
        // Something else is wanted: a new address, port, Ingress or owner.
        assert!(!unchanged(Some(&last), 8, &v("10", "11", None)));
        // Someone edited the Service, or the watch has not caught up with our write.
        assert!(!unchanged(Some(&last), 7, &v("12", "11", None)));
        // The EndpointSlice was deleted (or the watch is not synced yet).
        let gone = RouteVersions { endpoint_slice: None, ..v("10", "11", None) };
        assert!(!unchanged(Some(&last), 7, &gone));
        // An Ingress of ours appeared where none is asked for: it must go.
        assert!(!unchanged(Some(&last), 7, &v("10", "11", Some("13"))));
        // With an Ingress asked for, its version counts too.
        let with = Applied { desired: 9, versions: v("10", "11", Some("13")) };
        assert!(unchanged(Some(&with), 9, &v("10", "11", Some("13"))));
        assert!(!unchanged(Some(&with), 9, &v("10", "11", None)));
        // A write that left no versions never counts as current.
        let empty = Applied { desired: 7, versions: RouteVersions::default() };
        assert!(!unchanged(Some(&empty), 7, &RouteVersions::default()));
    }
}

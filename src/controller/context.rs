//! The state both controllers share: the three edges (Kubernetes, Compute Engine, the
//! VMs), the instance cache, the step tasks, metrics and configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Client;
use kube::runtime::reflector::{ObjectRef, Store};
use tokio::sync::mpsc;

use super::cluster::Cluster;
use super::vm::VmAccess;
use crate::api::{ProjectVM, Run, Workspace};
use crate::cloud::{Compute, InstanceCache};
use crate::config::Config;
use crate::cost::Rates;
use crate::engine::tasks::TaskRegistry;
use crate::metrics::Metrics;

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
    /// This cluster's name (`--cluster-name`, settled at start-up by
    /// [`crate::config::with_cluster_name`]): on every instance, and in its name.
    pub cluster_name: String,
    pub rates: Rates,
    /// Consecutive reconcile errors per object, for the error policy's backoff.
    failures: Mutex<HashMap<String, u32>>,
    pub(crate) wake_projectvm: mpsc::UnboundedSender<ObjectRef<ProjectVM>>,
    pub(crate) wake_workspace: mpsc::UnboundedSender<ObjectRef<Workspace>>,
    pub(crate) wake_run: mpsc::UnboundedSender<ObjectRef<Run>>,
    /// The Workspace controller's watch cache, once it runs: who holds which Ingress host.
    workspace_store: std::sync::OnceLock<Store<Workspace>>,
    /// The ProjectVM controller's watch cache: what Runs read of their ProjectVM.
    projectvm_store: std::sync::OnceLock<Store<ProjectVM>>,
    /// The Run controller's watch cache: the queue of each ProjectVM.
    run_store: std::sync::OnceLock<Store<Run>>,
    /// Where Run artifacts go; `None` without `--artifact-bucket`.
    pub artifacts: Option<Arc<dyn crate::storage::ArtifactStore>>,
}

/// The edges a [`Context`] is built from.
pub struct Edges {
    pub client: Client,
    pub cluster: Arc<dyn Cluster>,
    pub compute: Arc<dyn Compute>,
    pub vm: Arc<dyn VmAccess>,
    /// Where Run artifacts go, when a bucket is configured.
    pub artifacts: Option<Arc<dyn crate::storage::ArtifactStore>>,
}

/// Trigger streams for the controllers, fed by finishing tasks.
pub struct Wakeups {
    pub(crate) projectvm: mpsc::UnboundedReceiver<ObjectRef<ProjectVM>>,
    pub(crate) workspace: mpsc::UnboundedReceiver<ObjectRef<Workspace>>,
    pub(crate) run: mpsc::UnboundedReceiver<ObjectRef<Run>>,
}

impl Context {
    /// Panics when `config.cluster_name` is unset: settle it first with
    /// [`crate::config::with_cluster_name`] (without it no instance could be told apart from
    /// another cluster's).
    pub fn new(edges: Edges, config: Config, rates: Rates, metrics: Arc<Metrics>) -> (Arc<Self>, Wakeups) {
        let cluster_name = config
            .cluster_name
            .clone()
            .filter(|n| !n.is_empty())
            .expect("the cluster name is settled before the controllers start");
        let selector = crate::cloud::naming::cluster_selector(&cluster_name);
        let (tp, rp) = mpsc::unbounded_channel();
        let (tw, rw) = mpsc::unbounded_channel();
        let (tr, rr) = mpsc::unbounded_channel();
        let ctx = Context {
            client: edges.client,
            cluster: edges.cluster,
            compute: edges.compute,
            vm: edges.vm,
            // One list per zone per resync: every Ready object looks once per resync, and
            // all of them in that interval share the list (a shorter TTL listed the zone
            // several times per resync, each list carrying every instance).
            instances: InstanceCache::new(config.resync(), selector),
            tasks: TaskRegistry::new(config.max_concurrent_tasks),
            metrics,
            config,
            cluster_name,
            rates,
            failures: Mutex::new(HashMap::new()),
            wake_projectvm: tp,
            wake_workspace: tw,
            wake_run: tr,
            workspace_store: std::sync::OnceLock::new(),
            projectvm_store: std::sync::OnceLock::new(),
            run_store: std::sync::OnceLock::new(),
            artifacts: edges.artifacts,
        };
        (Arc::new(ctx), Wakeups { projectvm: rp, workspace: rw, run: rr })
    }

    /// Publishes an event about `owner`; a Warning also counts as a failure by its reason.
    pub async fn publish(&self, owner: &super::owner::Owner, event: &kube::runtime::events::Event) {
        if event.type_ == kube::runtime::events::EventType::Warning {
            self.metrics.failure(owner.label, &event.reason);
        }
        self.cluster.publish(owner, event).await;
    }

    /// Drops what this operator holds for an object that is gone from its watch (deleted, or
    /// moved to another shard): its running step tasks, its metric series and what the
    /// Kubernetes edge remembers of it.
    pub fn forget_object(&self, owner: &super::owner::Owner) {
        self.tasks.forget(&owner.key());
        self.metrics.forget(owner.label, &owner.namespace, &owner.name);
        self.cluster.forget(owner);
    }

    /// Hands the Workspace watch cache to the route step (once; later calls are ignored).
    pub fn set_workspace_store(&self, store: Store<Workspace>) {
        let _ = self.workspace_store.set(store);
    }

    /// Hands the ProjectVM watch cache to the Run controller (once).
    pub fn set_projectvm_store(&self, store: Store<ProjectVM>) {
        let _ = self.projectvm_store.set(store);
    }

    /// A ProjectVM as the ProjectVM controller's cache has it; `None` before the cache
    /// exists or when it does not hold the object.
    pub fn cached_projectvm(&self, namespace: &str, name: &str) -> Option<Arc<ProjectVM>> {
        self.projectvm_store.get()?.get(&ObjectRef::new(name).within(namespace))
    }

    /// Hands the Run watch cache to the Run controller's queue (once).
    pub fn set_run_store(&self, store: Store<Run>) {
        let _ = self.run_store.set(store);
    }

    /// Every Run the controller watches; empty before its cache exists.
    pub fn runs(&self) -> Vec<Arc<Run>> {
        self.run_store.get().map(|s| s.state()).unwrap_or_default()
    }

    /// Re-queues a Run's reconcile.
    pub fn wake_run(&self, run: ObjectRef<Run>) {
        let _ = self.wake_run.send(run);
    }

    /// Every Workspace the controller watches; empty before its cache exists.
    pub fn workspaces(&self) -> Vec<Arc<Workspace>> {
        self.workspace_store.get().map(|s| s.state()).unwrap_or_default()
    }

    pub(crate) fn record_failure(&self, key: &str) -> u32 {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let n = f.entry(key.to_string()).or_insert(0);
        *n += 1;
        *n
    }

    pub(crate) fn reset_failures(&self, key: &str) {
        self.failures.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }
}

//! What differs between the two kinds, behind one trait so the reconcile pipeline is shared:
//! the step graph, where the spec keeps the machine and the repository, how each step's
//! inputs come from the spec, and how activity is detected.

use kube::runtime::Controller;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::mpsc::UnboundedSender;

use std::sync::Arc;

use super::Context;
use super::owner::Owner;
use super::steps::{self, Prepared, StepEnv};
use crate::api::{
    CodeServerAuth, MachineSpec, OwnedObjects, ProjectVM, SecretKeyRef, VmStatus, Workspace, WorkspaceStatus,
};
use crate::engine::tasks::Wake;
use crate::engine::{PROJECTVM_GRAPH, StepId, StepNode, WORKSPACE_GRAPH};

/// `kind/namespace/name`, the key for tasks and backoff.
pub fn object_key<K: VmKind>(o: &K) -> String {
    format!("{}/{}/{}", K::LABEL, o.namespace().unwrap_or_default(), o.name_any())
}

/// A closure that re-queues the object's reconcile (for tasks that finish in the background).
pub fn waker<K: VmKind>(ctx: &Arc<Context>, obj: &K) -> Wake {
    let target = ObjectRef::from_obj(obj);
    let ctx = Arc::downgrade(ctx);
    Arc::new(move || {
        if let Some(ctx) = ctx.upgrade() {
            let _ = K::wakeups(&ctx).send(target.clone());
        }
    })
}

/// What the steps need of `obj`, with every step prepared from its spec and `env`.
pub fn step_subject<'a, K: VmKind>(ctx: &Arc<Context>, obj: &'a K, env: &StepEnv) -> steps::Subject<'a> {
    steps::Subject {
        key: object_key(obj),
        graph: K::GRAPH,
        prepared: K::GRAPH.iter().map(|n| (n.id, obj.prepare(n.id, env))).collect(),
        credentials: obj.credentials_ref(),
        workspace: obj.as_workspace(),
        limit: obj.machine().progress_limit(),
        wake: waker(ctx, obj),
    }
}

/// A kind the operator manages a VM for.
pub trait VmKind:
    Resource<DynamicType = (), Scope = NamespaceResourceScope>
    + Clone
    + Debug
    + DeserializeOwned
    + Serialize
    + Send
    + Sync
    + 'static
{
    /// Short lowercase name used in instance names, labels and Secret names.
    const LABEL: &'static str;
    /// The kind's step graph.
    const GRAPH: &'static [StepNode];
    /// Whether activity (for idle shutdown) is read on the VM over SSH; otherwise it comes
    /// from code-server's heartbeat in the health probe.
    const ACTIVITY_OVER_SSH: bool;

    fn machine(&self) -> &MachineSpec;
    fn vm_status(&self) -> Option<&VmStatus>;
    /// The status to write, from the shared part and the URL (Workspace only).
    fn status_json(vm: &VmStatus, url: Option<&str>) -> serde_json::Value;
    fn current_url(&self) -> Option<&str> {
        None
    }
    /// The repository's credentials Secret, if any.
    fn credentials_ref(&self) -> Option<&SecretKeyRef>;
    /// The Workspace itself, for the steps only Workspaces have (code-server, route).
    fn as_workspace(&self) -> Option<&Workspace> {
        None
    }
    /// Secrets whose change must reach the VM (tokens, passwords).
    fn uses_secret(&self, name: &str) -> bool {
        self.credentials_ref().is_some_and(|r| r.name == name)
    }
    /// A step's inputs, fingerprint and work, from the spec and what was read this pass.
    fn prepare(&self, step: StepId, env: &StepEnv) -> Prepared;
    /// The resource as the Kubernetes edge knows it.
    /// Receives the controller's watch cache of this kind (the Workspace one is kept for the
    /// route's host check).
    fn watch_cache(_ctx: &Context, _store: kube::runtime::reflector::Store<Self>) {}
    /// Adds the watches of the objects the operator makes for this kind, which wake their
    /// owner when they change or go.
    fn watch_owned(
        controller: Controller<Self>,
        _client: &kube::Client,
        _namespaces: &[String],
        _ctx: &Context,
    ) -> Controller<Self> {
        controller
    }
    fn owner(&self) -> Owner {
        Owner::new(Self::LABEL, self)
    }
    /// The objects the operator makes for this resource, by name.
    fn owned_objects(&self) -> OwnedObjects {
        OwnedObjects {
            ssh_key_secret: Some(super::names::ssh_key_secret(Self::LABEL, &self.name_any())),
            ..Default::default()
        }
    }
    /// The channel that re-queues this kind's reconciles.
    fn wakeups(ctx: &Context) -> &UnboundedSender<ObjectRef<Self>>;
}

impl VmKind for ProjectVM {
    const LABEL: &'static str = "projectvm";
    const GRAPH: &'static [StepNode] = PROJECTVM_GRAPH;
    const ACTIVITY_OVER_SSH: bool = true;

    fn watch_cache(ctx: &Context, store: kube::runtime::reflector::Store<Self>) {
        ctx.set_projectvm_store(store);
    }
    fn machine(&self) -> &MachineSpec {
        &self.spec.machine
    }
    fn vm_status(&self) -> Option<&VmStatus> {
        self.status.as_ref()
    }
    fn status_json(vm: &VmStatus, _url: Option<&str>) -> serde_json::Value {
        serde_json::to_value(vm).unwrap_or_default()
    }
    fn credentials_ref(&self) -> Option<&SecretKeyRef> {
        self.spec.repository.credentials_secret_ref.as_ref()
    }
    fn prepare(&self, step: StepId, env: &StepEnv) -> Prepared {
        let r = &self.spec.repository;
        match step {
            StepId::Prerequisites => steps::prerequisites::prepare(&self.spec.prerequisites, env),
            StepId::Repository => steps::repository::prepare(
                env,
                steps::repository::Source {
                    url: r.url.clone(),
                    revision: r.revision.clone(),
                    path: r.effective_path(&self.spec.machine.user),
                    depth: r.depth,
                    user: self.spec.machine.user.clone(),
                    wants_token: r.credentials_secret_ref.is_some(),
                },
            ),
            other => Err(steps::not_in_graph("ProjectVM", other)),
        }
    }
    fn wakeups(ctx: &Context) -> &UnboundedSender<ObjectRef<Self>> {
        &ctx.wake_projectvm
    }
}

impl VmKind for Workspace {
    const LABEL: &'static str = "workspace";
    const GRAPH: &'static [StepNode] = WORKSPACE_GRAPH;
    const ACTIVITY_OVER_SSH: bool = false;

    fn watch_cache(ctx: &Context, store: kube::runtime::reflector::Store<Self>) {
        ctx.set_workspace_store(store);
    }
    /// The route objects (metadata only): the route step reads them from this cache, and a
    /// deleted or edited one wakes its Workspace.
    fn watch_owned(
        controller: Controller<Self>,
        client: &kube::Client,
        namespaces: &[String],
        ctx: &Context,
    ) -> Controller<Self> {
        let (stores, services, slices, ingresses) = super::route_cache::watches(client, namespaces);
        ctx.cluster.watch_routes(stores);
        controller.owns_stream(services).owns_stream(slices).owns_stream(ingresses)
    }
    fn machine(&self) -> &MachineSpec {
        &self.spec.machine
    }
    fn vm_status(&self) -> Option<&VmStatus> {
        self.status.as_ref().map(|s| &s.vm)
    }
    fn status_json(vm: &VmStatus, url: Option<&str>) -> serde_json::Value {
        serde_json::to_value(WorkspaceStatus { url: url.map(String::from), vm: vm.clone() }).unwrap_or_default()
    }
    fn current_url(&self) -> Option<&str> {
        self.status.as_ref().and_then(|s| s.url.as_deref())
    }
    fn as_workspace(&self) -> Option<&Workspace> {
        Some(self)
    }
    fn credentials_ref(&self) -> Option<&SecretKeyRef> {
        self.spec.repository.credentials_secret_ref.as_ref()
    }
    fn uses_secret(&self, name: &str) -> bool {
        self.credentials_ref().is_some_and(|r| r.name == name)
            || self.spec.code_server.password_secret_ref.as_ref().is_some_and(|r| r.name == name)
            || name == super::secrets::password_secret_name(&self.name_any())
    }
    fn owned_objects(&self) -> OwnedObjects {
        let name = self.name_any();
        let generated_password = self.spec.code_server.auth == CodeServerAuth::Password
            && self.spec.code_server.password_secret_ref.is_none();
        OwnedObjects {
            ssh_key_secret: Some(super::names::ssh_key_secret(Self::LABEL, &name)),
            password_secret: generated_password.then(|| super::names::password_secret(&name)),
            service: Some(super::names::service(&name)),
            endpoint_slice: Some(super::names::endpoint_slice(&name)),
            ingress: self.spec.ingress.as_ref().map(|_| super::names::service(&name)),
        }
    }
    fn prepare(&self, step: StepId, env: &StepEnv) -> Prepared {
        let r = &self.spec.repository;
        match step {
            StepId::Repository => steps::repository::prepare(
                env,
                steps::repository::Source {
                    url: r.clone_url(),
                    revision: r.revision.clone(),
                    path: self.spec.effective_folder(),
                    depth: r.depth,
                    user: self.spec.machine.user.clone(),
                    wants_token: r.credentials_secret_ref.is_some(),
                },
            ),
            StepId::CodeServer => steps::code_server::prepare(self, env),
            StepId::Health => steps::health::prepare(self.spec.code_server.port, env),
            StepId::Route => steps::route::prepare(self, env),
            other => Err(steps::not_in_graph("Workspace", other)),
        }
    }
    fn wakeups(ctx: &Context) -> &UnboundedSender<ObjectRef<Self>> {
        &ctx.wake_workspace
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::secrets::Token;
    use crate::controller::steps::Work;

    fn pvm(yaml: &str) -> ProjectVM {
        serde_yaml::from_str(yaml).unwrap()
    }

    fn env() -> StepEnv {
        StepEnv { instance_id: "111".into(), address: "10.0.0.9".into(), ..Default::default() }
    }

    fn fp(p: Prepared) -> String {
        p.unwrap().0
    }

    const BASE: &str = "apiVersion: projectvm.dev/v1alpha1\nkind: ProjectVM\nmetadata: {name: a, namespace: n}\nspec:\n  repository: {url: 'https://git.example.com/acme/api.git', revision: main}\n";

    #[test]
    fn revision_change_changes_only_repository_fingerprint() {
        let a = pvm(BASE);
        let b = pvm(&BASE.replace("revision: main", "revision: feature"));
        let e = env();
        assert_eq!(fp(a.prepare(StepId::Prerequisites, &e)), fp(b.prepare(StepId::Prerequisites, &e)));
        assert_ne!(fp(a.prepare(StepId::Repository, &e)), fp(b.prepare(StepId::Repository, &e)));
    }

    #[test]
    fn the_default_checkout_is_in_the_users_home() {
        let e = env();
        let Work::Repository(r) = pvm(BASE).prepare(StepId::Repository, &e).unwrap().1 else { panic!() };
        assert_eq!(r.sync.path, "/home/project/repo");
        let dev = pvm(&BASE.replace("spec:\n", "spec:\n  user: dev\n"));
        let Work::Repository(r) = dev.prepare(StepId::Repository, &e).unwrap().1 else { panic!() };
        assert_eq!(r.sync.path, "/home/dev/repo");
    }

    #[test]
    fn recreated_instance_changes_every_fingerprint() {
        let a = pvm(BASE);
        let mut e2 = env();
        e2.instance_id = "222".into();
        for s in [StepId::Prerequisites, StepId::Repository] {
            assert_ne!(fp(a.prepare(s, &env())), fp(a.prepare(s, &e2)));
        }
    }

    #[test]
    fn missing_secret_blocks_repository_with_secret_not_found() {
        let a = pvm(&BASE.replace("revision: main}", "revision: main, credentialsSecretRef: {name: tok}}"));
        let mut e = env();
        e.token_problem = Some(crate::controller::secrets::SecretProblem {
            reason: crate::conditions::Reason::SecretNotFound,
            message: "Secret n/tok (key \"token\") not found".into(),
        });
        let err = a.prepare(StepId::Repository, &e).unwrap_err();
        assert_eq!(err.reason, crate::conditions::Reason::SecretNotFound);
        assert!(err.message.contains("n/tok"));
    }

    #[test]
    fn refreshed_token_changes_fingerprint_and_never_enters_it() {
        let a = pvm(&BASE.replace("revision: main}", "revision: main, credentialsSecretRef: {name: tok}}"));
        let mut e = env();
        e.token = Some(Token { value: "secret-1".into(), version: "1".into() });
        let (fp1, w) = a.prepare(StepId::Repository, &e).unwrap();
        e.token = Some(Token { value: "secret-2".into(), version: "2".into() });
        let fp2 = fp(a.prepare(StepId::Repository, &e));
        assert_ne!(fp1, fp2);
        assert!(!fp1.contains("secret"));
        let Work::Repository(w) = w else { panic!("not the repository step") };
        assert_eq!(w.host, "git.example.com");
        assert_eq!(w.sync.credential_helper.as_deref(), Some("/home/project/.config/projectvm/git-credential-helper"));
        assert!(!crate::guest::repository_sync(&w.sync).contains("secret-1"));
    }

    #[test]
    fn workspace_defaults() {
        let w: Workspace = serde_yaml::from_str(
            "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata: {name: w, namespace: n}\nspec:\n  repository: {url: acme/demo}\n",
        )
        .unwrap();
        let mut e = env();
        e.password = Some(Token { value: "pw".into(), version: "3".into() });
        let Work::Repository(r) = w.prepare(StepId::Repository, &e).unwrap().1 else { panic!() };
        assert_eq!(r.sync.url, "https://github.com/acme/demo.git");
        assert_eq!(r.sync.path, "/home/project/demo");
        let Work::CodeServer(c) = w.prepare(StepId::CodeServer, &e).unwrap().1 else { panic!() };
        assert_eq!(c.cfg.port, 8080);
        assert_eq!(c.cfg.password.as_deref(), Some("pw"));
        let Work::Health { url } = w.prepare(StepId::Health, &e).unwrap().1 else { panic!() };
        assert_eq!(url, "http://10.0.0.9:8080/healthz");
        // A step of the other kind is an operator bug, reported as such.
        assert_eq!(w.prepare(StepId::Prerequisites, &e).unwrap_err().reason, crate::conditions::Reason::InternalError);
    }
}

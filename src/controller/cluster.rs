//! The Kubernetes edge of a reconcile: the Secrets it reads and owns, the route objects it
//! applies, and the status and events it writes. Behind one narrow trait, so the pipeline
//! runs unchanged against the API server and against the in-memory cluster of the scenario
//! tests.

use kube::api::{DynamicObject, Patch, PatchParams};
use std::time::Instant;

use kube::runtime::events::{Event, Recorder, Reporter};
use kube::{Api, Client, ResourceExt};

use super::Error;
use super::own_secrets::OwnSecrets;
use super::owner::Owner;
use super::route::RouteConflict;
use super::route_cache::{Applied, RouteCache, RouteStores};
use super::secrets::{self, SecretProblem, SecretValues, SshKey, Token};
use crate::api::FIELD_MANAGER;
use crate::api::{SecretKeyRef, Workspace};

/// What a reconcile reads from and writes to the cluster.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync + 'static {
    /// The operator's SSH key for this resource, created on first use.
    async fn ssh_key(&self, owner: &Owner) -> Result<SshKey, Error>;
    /// A token from a referenced Secret, or why it cannot be used.
    async fn token(&self, namespace: &str, r: &SecretKeyRef) -> Result<Result<Token, SecretProblem>, Error>;
    /// Every key of a referenced Secret (a Run's environment), or why it cannot be used.
    async fn secret_values(&self, namespace: &str, name: &str) -> Result<Result<SecretValues, SecretProblem>, Error>;
    /// Asks the ProjectVM controller to start a stopped VM: sets the start-request
    /// annotation on the ProjectVM to `value`.
    async fn request_start(&self, namespace: &str, project_vm: &str, value: &str) -> Result<(), Error>;
    /// Deletes a finished Run whose `ttlAfterFinished` passed (only the object of that UID).
    async fn delete_run(&self, namespace: &str, name: &str, uid: &str) -> Result<(), Error>;
    /// The generated code-server password, created on first use.
    async fn generated_password(&self, owner: &Owner) -> Result<Token, Error>;
    /// Applies a Workspace's Service, EndpointSlice and (when asked for) Ingress, or says
    /// which existing object is not the operator's to change.
    async fn apply_route(&self, ws: &Workspace, address: &str) -> Result<Result<(), RouteConflict>, Error>;
    /// Writes the whole status (server-side apply under the operator's field manager).
    async fn write_status(&self, owner: &Owner, status: serde_json::Value) -> Result<(), Error>;
    /// Publishes an event about the resource; a failure is logged, never fatal.
    async fn publish(&self, owner: &Owner, event: &Event);
    /// A Secret changed or was deleted (from the Secret metadata watch): what was read of it
    /// must be read again.
    fn secret_changed(&self, _namespace: &str, _name: &str) {}
    /// Receives the watch caches of the route objects, once the Workspace controller runs.
    fn watch_routes(&self, _stores: RouteStores) {}
    /// The resource is gone, or left this shard: what is remembered of it goes too.
    fn forget(&self, _owner: &Owner) {}
}

/// The longest Kubernetes object name.
const MAX_OBJECT_NAME: usize = 253;

/// [`Cluster`] on the API server.
pub struct KubeCluster {
    client: Client,
    recorder: Recorder,
    ssh_keys: OwnSecrets<SshKey>,
    passwords: OwnSecrets<Token>,
    routes: RouteCache,
}

impl KubeCluster {
    pub fn new(client: Client) -> Self {
        let reporter = Reporter { controller: FIELD_MANAGER.into(), instance: std::env::var("POD_NAME").ok() };
        Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            ssh_keys: OwnSecrets::default(),
            passwords: OwnSecrets::default(),
            routes: RouteCache::default(),
        }
    }
}

impl KubeCluster {
    async fn publish_for_long_name(&self, owner: &Owner, event: &Event) -> Result<(), kube::Error> {
        use k8s_openapi::api::events::v1::Event as K8sEvent;
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
        // A generated name must not end in a dot; the API server appends five characters.
        let prefix = format!("{}-", super::names::label_value(&owner.name));
        let k8s = K8sEvent {
            metadata: kube::api::ObjectMeta {
                namespace: Some(owner.namespace.clone()),
                generate_name: Some(prefix),
                ..Default::default()
            },
            action: Some(event.action.clone()),
            reason: Some(event.reason.clone()),
            note: event.note.clone(),
            event_time: Some(MicroTime(k8s_openapi::jiff::Timestamp::now())),
            regarding: Some(owner.reference.clone()),
            reporting_controller: Some(FIELD_MANAGER.into()),
            reporting_instance: Some(std::env::var("POD_NAME").unwrap_or_else(|_| FIELD_MANAGER.into())),
            type_: Some(
                if event.type_ == kube::runtime::events::EventType::Warning { "Warning" } else { "Normal" }.into(),
            ),
            ..Default::default()
        };
        let api: Api<K8sEvent> = Api::namespaced(self.client.clone(), &owner.namespace);
        api.create(&kube::api::PostParams::default(), &k8s).await.map(|_| ())
    }
}

#[async_trait::async_trait]
impl Cluster for KubeCluster {
    async fn ssh_key(&self, owner: &Owner) -> Result<SshKey, Error> {
        let name = secrets::ssh_secret_name(owner);
        if let Some(key) = self.ssh_keys.get(&owner.namespace, &name, Instant::now()) {
            return Ok(key);
        }
        let key = secrets::ensure_ssh_key(&self.client, owner).await?;
        self.ssh_keys.put(&owner.namespace, &name, key.clone(), Instant::now());
        Ok(key)
    }

    async fn token(&self, namespace: &str, r: &SecretKeyRef) -> Result<Result<Token, SecretProblem>, Error> {
        secrets::read_token(&self.client, namespace, r).await
    }

    async fn secret_values(&self, namespace: &str, name: &str) -> Result<Result<SecretValues, SecretProblem>, Error> {
        secrets::read_values(&self.client, namespace, name).await
    }

    async fn request_start(&self, namespace: &str, project_vm: &str, value: &str) -> Result<(), Error> {
        let api: Api<crate::api::ProjectVM> = Api::namespaced(self.client.clone(), namespace);
        let patch = serde_json::json!({ "metadata": { "annotations": { crate::api::START_ANNOTATION: value } } });
        api.patch(project_vm, &PatchParams::default(), &Patch::Merge(&patch)).await?;
        Ok(())
    }

    async fn delete_run(&self, namespace: &str, name: &str, uid: &str) -> Result<(), Error> {
        let api: Api<crate::api::Run> = Api::namespaced(self.client.clone(), namespace);
        let dp = kube::api::DeleteParams {
            preconditions: Some(kube::api::Preconditions { uid: Some(uid.to_string()), resource_version: None }),
            ..Default::default()
        };
        match api.delete(name, &dp).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn generated_password(&self, owner: &Owner) -> Result<Token, Error> {
        let name = secrets::password_secret_name(&owner.name);
        if let Some(password) = self.passwords.get(&owner.namespace, &name, Instant::now()) {
            return Ok(password);
        }
        let password = secrets::ensure_password(&self.client, owner).await?;
        self.passwords.put(&owner.namespace, &name, password.clone(), Instant::now());
        Ok(password)
    }

    async fn apply_route(&self, ws: &Workspace, address: &str) -> Result<Result<(), RouteConflict>, Error> {
        let desired = super::route::desired_hash(ws, address);
        if self.routes.is_current(ws, desired) {
            return Ok(Ok(()));
        }
        let result = super::route::apply(&self.client, ws, address).await;
        match &result {
            Ok(Ok(versions)) => self.routes.record(ws, Applied { desired, versions: versions.clone() }),
            _ => self.routes.forget(&ws.namespace().unwrap_or_default(), &ws.name_any()),
        }
        result.map(|r| r.map(|_| ()))
    }

    async fn write_status(&self, owner: &Owner, status: serde_json::Value) -> Result<(), Error> {
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &owner.namespace, &owner.api_resource);
        let patch = serde_json::json!({
            "apiVersion": owner.api_resource.api_version,
            "kind": owner.api_resource.kind,
            "status": status,
        });
        api.patch_status(&owner.name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
        Ok(())
    }

    fn secret_changed(&self, namespace: &str, name: &str) {
        self.ssh_keys.forget(namespace, name);
        self.passwords.forget(namespace, name);
    }

    fn watch_routes(&self, stores: RouteStores) {
        self.routes.watch(stores);
    }

    fn forget(&self, owner: &Owner) {
        if owner.label == <Workspace as super::kind::VmKind>::LABEL {
            self.routes.forget(&owner.namespace, &owner.name);
        }
    }

    async fn publish(&self, owner: &Owner, event: &Event) {
        // The recorder names an event `<object name>.<16 hex digits>`, which is too long for
        // an object whose own name is near the 253-character limit; such events are created
        // here under a name the API server generates.
        let result = if owner.name.len() + 17 > MAX_OBJECT_NAME {
            self.publish_for_long_name(owner, event).await
        } else {
            self.recorder.publish(event, &owner.reference).await
        };
        if let Err(err) = result {
            tracing::warn!(object = %owner.key(), error = %err, "publishing event failed");
        }
    }
}

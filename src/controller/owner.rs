//! The resource a reconcile works for, as the Kubernetes edge needs to know it: where it
//! lives, how to reference it in events, and how to own the objects made for it.

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::core::ApiResource;
use kube::{Resource, ResourceExt};

/// A managed resource, by kind label, namespace and name.
#[derive(Clone, Debug)]
pub struct Owner {
    /// The kind's short label (`projectvm`, `workspace`).
    pub label: &'static str,
    pub namespace: String,
    pub name: String,
    /// Owner reference for the objects the operator creates for this resource.
    pub owner_ref: Option<OwnerReference>,
    /// Reference for events.
    pub reference: ObjectReference,
    pub api_resource: ApiResource,
}

impl Owner {
    pub fn new<K: Resource<DynamicType = ()>>(label: &'static str, obj: &K) -> Self {
        Self {
            label,
            namespace: obj.namespace().unwrap_or_default(),
            name: obj.name_any(),
            owner_ref: obj.controller_owner_ref(&()),
            reference: obj.object_ref(&()),
            api_resource: ApiResource::erase::<K>(&()),
        }
    }

    /// `kind/namespace/name`, the key for tasks, backoff and logs.
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.label, self.namespace, self.name)
    }
}

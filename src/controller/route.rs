//! The Workspace's route: a selector-less Service with an EndpointSlice pointing at the VM,
//! and an Ingress when asked for. Applied with server-side apply, so re-applying an
//! unchanged route is a no-op.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::api::networking::v1::{
    HTTPIngressPath, HTTPIngressRuleValue, Ingress, IngressBackend, IngressRule, IngressServiceBackend,
    IngressSpec as K8sIngressSpec, IngressTLS, ServiceBackendPort,
};
use kube::api::{DeleteParams, ObjectMeta, Patch, PatchParams};
use kube::{Api, Client, Resource, ResourceExt};

use super::Error;
use super::route_cache::RouteVersions;
use crate::api::FIELD_MANAGER;
use crate::api::{IngressSpec, Workspace};

/// Name of the Service (and of the Ingress) for a Workspace.
pub fn service_name(ws: &str) -> String {
    super::names::service(ws)
}

/// Where users open the workspace: the Ingress URL when there is one, else the VM's
/// address and code-server port.
pub fn url(ingress: Option<&IngressSpec>, vm_address: &str, port: i32) -> String {
    match ingress {
        Some(i) => {
            let scheme = if i.tls_secret_name.is_some() { "https" } else { "http" };
            let path = if i.path.ends_with('/') { i.path.clone() } else { format!("{}/", i.path) };
            format!("{scheme}://{}{path}", i.host)
        }
        None => format!("http://{vm_address}:{port}/"),
    }
}

/// The label every route object the operator makes carries: ownership checks read it, and
/// the route watch selects by it (see [`super::route_cache`]).
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_US: &str = "projectvm";

fn meta(ws: &Workspace, name: &str, extra_labels: &[(&str, &str)]) -> ObjectMeta {
    let mut labels = BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_US.to_string()),
        ("projectvm.dev/workspace".to_string(), super::names::label_value(&ws.name_any())),
    ]);
    for (k, v) in extra_labels {
        labels.insert(k.to_string(), v.to_string());
    }
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: ws.namespace(),
        labels: Some(labels),
        owner_references: ws.controller_owner_ref(&()).map(|o| vec![o]),
        ..Default::default()
    }
}

/// The Service, EndpointSlice and optional Ingress for a Workspace whose VM is at `address`.
pub fn desired(ws: &Workspace, address: &str) -> (Service, EndpointSlice, Option<Ingress>) {
    let port = ws.spec.code_server.port;
    let svc_name = service_name(&ws.name_any());
    let service = Service {
        metadata: meta(ws, &svc_name, &[]),
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port,
                protocol: Some("TCP".into()),
                target_port: Some(k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(port)),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let address_type = if address.contains(':') { "IPv6" } else { "IPv4" };
    let slice = EndpointSlice {
        metadata: meta(
            ws,
            &super::names::endpoint_slice(&ws.name_any()),
            &[("kubernetes.io/service-name", &svc_name), ("endpointslice.kubernetes.io/managed-by", "projectvm.dev")],
        ),
        address_type: address_type.into(),
        endpoints: vec![Endpoint {
            addresses: vec![address.to_string()],
            conditions: Some(EndpointConditions { ready: Some(true), serving: Some(true), terminating: Some(false) }),
            ..Default::default()
        }],
        ports: Some(vec![EndpointPort {
            name: Some("http".into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..Default::default()
        }]),
    };
    let ingress = ws.spec.ingress.as_ref().map(|i| Ingress {
        metadata: meta(ws, &svc_name, &[]),
        spec: Some(K8sIngressSpec {
            ingress_class_name: i.class_name.clone(),
            tls: i
                .tls_secret_name
                .as_ref()
                .map(|s| vec![IngressTLS { hosts: Some(vec![i.host.clone()]), secret_name: Some(s.clone()) }]),
            rules: Some(vec![IngressRule {
                host: Some(i.host.clone()),
                http: Some(HTTPIngressRuleValue {
                    paths: vec![HTTPIngressPath {
                        path: Some(i.path.clone()),
                        path_type: "Prefix".into(),
                        backend: IngressBackend {
                            service: Some(IngressServiceBackend {
                                name: svc_name.clone(),
                                port: Some(ServiceBackendPort { name: Some("http".into()), number: None }),
                            }),
                            ..Default::default()
                        },
                    }],
                }),
            }]),
            ..Default::default()
        }),
        ..Default::default()
    });
    (service, slice, ingress)
}

/// A hash of the route objects [`desired`] makes, as they would be sent (owner UID
/// included): equal hashes, the same objects (see [`super::route_cache`]).
pub fn desired_hash(ws: &Workspace, address: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    serde_json::to_string(&desired(ws, address)).unwrap_or_default().hash(&mut h);
    h.finish()
}

/// Why the route cannot be applied: an object of its name that the operator did not make
/// for this Workspace, or an Ingress host and path another Workspace holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteConflict {
    pub message: String,
    /// The object belongs to an earlier Workspace of the same name and garbage collection
    /// is removing it: this passes by itself.
    pub transient: bool,
}

/// Whose an existing object of a route's name is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    Absent,
    /// Made by the operator for this Workspace (its UID in the ownerReferences and the
    /// managed-by label).
    Ours,
    /// Made by the operator for an earlier Workspace of the same name, now deleted.
    Previous,
    /// Anybody else's; the text says whose.
    Foreign(String),
}

/// Who owns `meta`, as far as this Workspace is concerned.
pub fn ownership(ws: &Workspace, meta: Option<&ObjectMeta>) -> Ownership {
    let Some(meta) = meta else { return Ownership::Absent };
    let uid = ws.metadata.uid.as_deref().unwrap_or_default();
    let managed_by = meta.labels.as_ref().and_then(|l| l.get(MANAGED_BY)).map(String::as_str);
    let owners = meta.owner_references.as_deref().unwrap_or_default();
    let ours_by_label = managed_by == Some(MANAGED_BY_US);
    if ours_by_label && owners.iter().any(|o| o.uid == uid) {
        return Ownership::Ours;
    }
    let controller = owners.iter().find(|o| o.controller == Some(true)).or(owners.first());
    if ours_by_label
        && let Some(o) = controller
        && o.kind == "Workspace"
        && o.name == ws.name_any()
    {
        return Ownership::Previous;
    }
    Ownership::Foreign(match (controller, managed_by) {
        (Some(o), _) => format!("owned by {} {}", o.kind, o.name),
        (None, Some(m)) => format!("managed by {m}"),
        (None, None) => "not made by projectvm".to_string(),
    })
}

fn conflict(kind: &str, ns: &str, name: &str, ownership: &Ownership) -> Option<RouteConflict> {
    match ownership {
        Ownership::Absent | Ownership::Ours => None,
        Ownership::Previous => Some(RouteConflict {
            message: format!(
                "{kind} {ns}/{name} belongs to an earlier Workspace of this name; waiting for garbage collection to remove it"
            ),
            transient: true,
        }),
        Ownership::Foreign(whose) => Some(RouteConflict {
            message: format!(
                "{kind} {ns}/{name} already exists and is {whose}: projectvm never takes over or deletes an object it \
                 did not make; delete or rename that {kind}, or give the Workspace another name"
            ),
            transient: false,
        }),
    }
}

/// The route's `(host, path)` when it asks for an Ingress, the path without a trailing `/`.
fn ingress_claim(ws: &Workspace) -> Option<(&str, &str)> {
    ws.spec.ingress.as_ref().map(|i| (i.host.as_str(), i.path.trim_end_matches('/')))
}

/// Another Workspace that holds the Ingress host and path this one asks for. The holder is
/// the one already routed there, else the oldest (then the first by namespace/name), so
/// every Workspace reaches the same verdict and a routed one never loses its host.
pub fn host_conflict<'a>(ws: &Workspace, others: impl IntoIterator<Item = &'a Workspace>) -> Option<RouteConflict> {
    let claim = ingress_claim(ws)?;
    let rank = |w: &Workspace| {
        let routed = w.status.as_ref().and_then(|s| s.url.as_deref()).is_some_and(|u| {
            u.contains(&format!("://{}{}/", claim.0, claim.1)) || u.ends_with(&format!("://{}{}", claim.0, claim.1))
        });
        let created = w.metadata.creation_timestamp.as_ref().map(|t| t.0.as_second()).unwrap_or(i64::MAX);
        (!routed, created, w.namespace().unwrap_or_default(), w.name_any())
    };
    let mine = rank(ws);
    let holder = others
        .into_iter()
        .filter(|o| o.metadata.uid != ws.metadata.uid && ingress_claim(o) == Some(claim))
        .filter(|o| o.metadata.deletion_timestamp.is_none())
        .min_by_key(|o| rank(o))?;
    (rank(holder) < mine).then(|| RouteConflict {
        message: format!(
            "Ingress host {}{}/ is already used by Workspace {}/{}: choose another host or path",
            claim.0,
            claim.1,
            holder.namespace().unwrap_or_default(),
            holder.name_any()
        ),
        transient: false,
    })
}

/// The objects of the route's names as they exist now (metadata only).
#[derive(Clone, Debug, Default)]
pub struct Existing {
    pub service: Option<ObjectMeta>,
    pub endpoint_slice: Option<ObjectMeta>,
    pub ingress: Option<ObjectMeta>,
}

/// Whether the route may be applied over what exists: each object is absent or ours (the
/// Ingress only matters when one is asked for).
pub fn check(ws: &Workspace, existing: &Existing) -> Result<(), RouteConflict> {
    let ns = ws.namespace().unwrap_or_default();
    let svc_name = service_name(&ws.name_any());
    let slice_name = super::names::endpoint_slice(&ws.name_any());
    let mut checks = vec![
        ("Service", &svc_name, existing.service.as_ref()),
        ("EndpointSlice", &slice_name, existing.endpoint_slice.as_ref()),
    ];
    if ws.spec.ingress.is_some() {
        checks.push(("Ingress", &svc_name, existing.ingress.as_ref()));
    }
    for (kind, name, meta) in checks {
        if let Some(c) = conflict(kind, &ns, name, &ownership(ws, meta)) {
            return Err(c);
        }
    }
    Ok(())
}

/// The Ingress to delete because it is no longer asked for: only ours, never another's.
pub fn stale_ingress<'a>(ws: &Workspace, existing: &'a Existing) -> Option<&'a ObjectMeta> {
    let m = existing.ingress.as_ref()?;
    (ws.spec.ingress.is_none() && ownership(ws, Some(m)) == Ownership::Ours).then_some(m)
}

/// Applies the route, only over objects the operator made for this Workspace, and removes
/// its Ingress when that is no longer asked for. An object of the same name that is not
/// ours is never changed or deleted: that is a [`RouteConflict`].
pub async fn apply(
    client: &Client,
    ws: &Workspace,
    address: &str,
) -> Result<Result<RouteVersions, RouteConflict>, Error> {
    let ns = ws.namespace().unwrap_or_default();
    let (service, slice, ingress) = desired(ws, address);
    let services = Api::<Service>::namespaced(client.clone(), &ns);
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns);
    let ingresses = Api::<Ingress>::namespaced(client.clone(), &ns);
    let svc_name = service_name(&ws.name_any());
    let existing = Existing {
        service: services.get_metadata_opt(&svc_name).await?.map(|m| m.metadata),
        endpoint_slice: slices
            .get_metadata_opt(&super::names::endpoint_slice(&ws.name_any()))
            .await?
            .map(|m| m.metadata),
        ingress: ingresses.get_metadata_opt(&svc_name).await?.map(|m| m.metadata),
    };
    if let Err(c) = check(ws, &existing) {
        return Ok(Err(c));
    }
    let mut versions = RouteVersions {
        service: apply_one(&services, service, existing.service.as_ref()).await?,
        endpoint_slice: apply_one(&slices, slice, existing.endpoint_slice.as_ref()).await?,
        ingress: None,
    };
    match ingress {
        Some(ing) => versions.ingress = apply_one(&ingresses, ing, existing.ingress.as_ref()).await?,
        None => {
            if let Some(m) = stale_ingress(ws, &existing) {
                // Only that very object: the UID precondition.
                let dp = DeleteParams {
                    preconditions: Some(kube::api::Preconditions { uid: m.uid.clone(), resource_version: None }),
                    ..Default::default()
                };
                match ingresses.delete(&svc_name, &dp).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
    }
    Ok(Ok(versions))
}

/// Creates the object when it is absent (failing rather than adopting one that appeared
/// since it was read), else applies it over our own, conditional on the version read.
/// Returns the resourceVersion the write left.
async fn apply_one<K>(api: &Api<K>, mut desired: K, current: Option<&ObjectMeta>) -> Result<Option<String>, Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let name = desired.meta().name.clone().unwrap_or_default();
    let written = match current {
        None => {
            api.create(
                &kube::api::PostParams { field_manager: Some(FIELD_MANAGER.into()), ..Default::default() },
                &desired,
            )
            .await?
        }
        Some(meta) => {
            desired.meta_mut().resource_version = meta.resource_version.clone();
            api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&desired)).await?
        }
    };
    Ok(written.meta().resource_version.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(ingress: Option<IngressSpec>) -> Workspace {
        let mut w: Workspace = serde_yaml::from_str(
            "apiVersion: projectvm.dev/v1alpha1\nkind: Workspace\nmetadata: {name: demo, namespace: team, uid: u1}\nspec:\n  repository: {url: acme/demo}\n",
        )
        .unwrap();
        w.spec.ingress = ingress;
        w
    }

    #[test]
    fn urls() {
        assert_eq!(url(None, "10.0.0.5", 8080), "http://10.0.0.5:8080/");
        let i = IngressSpec {
            host: "demo.dev.example.com".into(),
            class_name: None,
            path: "/ws".into(),
            tls_secret_name: Some("tls".into()),
        };
        assert_eq!(url(Some(&i), "10.0.0.5", 8080), "https://demo.dev.example.com/ws/");
    }

    #[test]
    fn route_points_at_the_vm() {
        let (svc, slice, ing) = desired(&ws(None), "10.213.0.20");
        assert_eq!(svc.metadata.name.as_deref(), Some("demo-workspace"));
        assert!(svc.spec.as_ref().unwrap().selector.is_none(), "selector-less service");
        assert_eq!(slice.endpoints[0].addresses, vec!["10.213.0.20".to_string()]);
        assert_eq!(slice.metadata.labels.as_ref().unwrap()["kubernetes.io/service-name"], "demo-workspace");
        assert_eq!(slice.ports.as_ref().unwrap()[0].port, Some(8080));
        assert!(ing.is_none());
        assert_eq!(svc.metadata.owner_references.as_ref().unwrap()[0].uid, "u1");
    }

    #[test]
    fn the_hash_follows_address_owner_and_ingress() {
        let w = ws(None);
        assert_eq!(desired_hash(&w, "10.0.0.1"), desired_hash(&w, "10.0.0.1"));
        assert_ne!(desired_hash(&w, "10.0.0.1"), desired_hash(&w, "10.0.0.2"));
        let mut recreated = w.clone();
        recreated.metadata.uid = Some("u2".into());
        assert_ne!(desired_hash(&w, "10.0.0.1"), desired_hash(&recreated, "10.0.0.1"));
        let i = IngressSpec { host: "a.example.com".into(), class_name: None, path: "/".into(), tls_secret_name: None };
        assert_ne!(desired_hash(&w, "10.0.0.1"), desired_hash(&ws(Some(i)), "10.0.0.1"));
    }

    #[test]
    fn ingress_when_asked() {
        let i = IngressSpec {
            host: "demo.example.com".into(),
            class_name: Some("nginx".into()),
            path: "/".into(),
            tls_secret_name: None,
        };
        let (_, _, ing) = desired(&ws(Some(i)), "10.0.0.1");
        let ing = ing.unwrap();
        let spec = ing.spec.unwrap();
        assert_eq!(spec.ingress_class_name.as_deref(), Some("nginx"));
        let rule = &spec.rules.unwrap()[0];
        assert_eq!(rule.host.as_deref(), Some("demo.example.com"));
        assert_eq!(rule.http.as_ref().unwrap().paths[0].backend.service.as_ref().unwrap().name, "demo-workspace");
    }

    fn with_host(name: &str, uid: &str, created: i64, host: &str, routed: bool) -> Workspace {
        let mut w =
            ws(Some(IngressSpec { host: host.into(), class_name: None, path: "/".into(), tls_secret_name: None }));
        w.metadata.name = Some(name.into());
        w.metadata.uid = Some(uid.into());
        w.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        if routed {
            w.status = Some(crate::api::WorkspaceStatus { url: Some(format!("http://{host}/")), ..Default::default() });
        }
        w
    }

    #[test]
    fn an_ingress_host_belongs_to_the_routed_workspace_then_the_oldest() {
        let old = with_host("old", "u-old", 100, "a.example.com", false);
        let new = with_host("new", "u-new", 200, "a.example.com", false);
        let other_host = with_host("b", "u-b", 50, "b.example.com", false);
        assert!(host_conflict(&old, [&new, &other_host]).is_none(), "the oldest keeps it");
        let c = host_conflict(&new, [&old, &other_host]).expect("the newer one is refused");
        assert!(c.message.contains("a.example.com/") && c.message.contains("team/old"), "{}", c.message);
        // Already routed there wins over age, so a routed Workspace never loses its host.
        let routed_new = with_host("new", "u-new", 200, "a.example.com", true);
        assert!(host_conflict(&routed_new, [&old]).is_none());
        assert!(host_conflict(&old, [&routed_new]).is_some());
        // The same object seen in the cache is not a rival.
        assert!(host_conflict(&new, [&new.clone()]).is_none());
    }

    #[test]
    fn ownership_needs_our_uid_and_label() {
        let w = ws(None);
        let (svc, _, _) = desired(&w, "10.0.0.1");
        assert_eq!(ownership(&w, Some(&svc.metadata)), Ownership::Ours);
        assert_eq!(ownership(&w, None), Ownership::Absent);
        let mut theirs = svc.metadata.clone();
        theirs.labels = None;
        assert!(matches!(ownership(&w, Some(&theirs)), Ownership::Foreign(_)), "same owner, no label");
        let mut previous = svc.metadata.clone();
        previous.owner_references.as_mut().unwrap()[0].uid = "u0".into();
        assert_eq!(ownership(&w, Some(&previous)), Ownership::Previous);
        let plain = ObjectMeta { name: Some("demo-workspace".into()), ..Default::default() };
        let Ownership::Foreign(whose) = ownership(&w, Some(&plain)) else { panic!() };
        assert_eq!(whose, "not made by projectvm");
        let existing = Existing { service: Some(plain.clone()), ..Default::default() };
        let c = check(&w, &existing).unwrap_err();
        assert!(c.message.contains("Service team/demo-workspace") && !c.transient, "{}", c.message);
        // Their Ingress is no concern of a Workspace that asks for none, and never deleted.
        let existing = Existing { ingress: Some(plain), ..Default::default() };
        assert!(check(&w, &existing).is_ok());
        assert!(stale_ingress(&w, &existing).is_none());
    }
}

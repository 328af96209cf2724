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

fn meta(ws: &Workspace, name: &str, extra_labels: &[(&str, &str)]) -> ObjectMeta {
    let mut labels = BTreeMap::from([
        ("app.kubernetes.io/managed-by".to_string(), "projectvm".to_string()),
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

/// Applies the route; removes an Ingress that is no longer asked for.
pub async fn apply(client: &Client, ws: &Workspace, address: &str) -> Result<(), Error> {
    let ns = ws.namespace().unwrap_or_default();
    let (service, slice, ingress) = desired(ws, address);
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let svc_name = service_name(&ws.name_any());
    Api::<Service>::namespaced(client.clone(), &ns).patch(&svc_name, &pp, &Patch::Apply(&service)).await?;
    Api::<EndpointSlice>::namespaced(client.clone(), &ns)
        .patch(&super::names::endpoint_slice(&ws.name_any()), &pp, &Patch::Apply(&slice))
        .await?;
    let ingresses = Api::<Ingress>::namespaced(client.clone(), &ns);
    match ingress {
        Some(ing) => {
            ingresses.patch(&svc_name, &pp, &Patch::Apply(&ing)).await?;
        }
        None => match ingresses.delete(&svc_name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(e.into()),
        },
    }
    Ok(())
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
}

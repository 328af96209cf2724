//! Workspace step: the Service and EndpointSlice that point at the VM, and an Ingress when
//! asked for; `status.url` says where to go. Inline, and re-applied every reconcile so a
//! deleted or edited object comes back.

use super::{Prepared, StepEnv};
use crate::api::Workspace;
use crate::conditions::{Reason, Update};
use crate::controller::Context;
use crate::controller::route::{service_name, url};
use crate::controller::status::Report;
use crate::engine::fingerprint;
use kube::ResourceExt;

/// Address, port, Ingress and name make the fingerprint.
pub fn prepare(ws: &Workspace, env: &StepEnv) -> Prepared {
    let ingress = serde_json::to_string(&ws.spec.ingress).unwrap_or_default();
    let port = ws.spec.code_server.port.to_string();
    let fp = fingerprint(&[&env.instance_id, &env.address, &port, &ingress, &ws.name_any()]);
    Ok((fp, super::Work::Route { address: env.address.clone() }))
}

pub async fn apply(
    ctx: &Context,
    report: &mut Report,
    ws: &Workspace,
    condition: &'static str,
    address: &str,
    fp: &str,
) {
    if let Err(e) = ctx.cluster.apply_route(ws, address).await {
        // The API server's answer (a name it refuses, a conflict) belongs in the condition.
        report.set(Update::falsy(condition, Reason::KubernetesError, format!("applying the route failed: {e}")));
        report.soon(std::time::Duration::from_secs(10));
        return;
    }
    let to = url(ws.spec.ingress.as_ref(), address, ws.spec.code_server.port);
    if report.url.as_deref() != Some(to.as_str()) {
        report.normal("Routed", format!("workspace is served at {to}"));
    }
    report.url = Some(to.clone());
    report.set(
        Update::truthy(
            condition,
            Reason::Routed,
            format!("Service {} routes to {address}; open {to}", service_name(&ws.name_any())),
        )
        .with_fingerprint(Some(fp.to_string())),
    );
}

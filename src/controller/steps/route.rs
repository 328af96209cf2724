//! Workspace step: the Service and EndpointSlice that point at the VM, and an Ingress when
//! asked for; `status.url` says where to go. Inline, and checked every reconcile so a
//! deleted or edited object comes back — but only over objects the operator made. An
//! unchanged route costs no request (see `controller::route_cache`).

use super::{Prepared, StepEnv};
use crate::api::Workspace;
use crate::conditions::{Reason, Update};
use crate::controller::Context;
use crate::controller::route::{self, RouteConflict, service_name, url};
use crate::controller::status::Report;
use crate::engine::fingerprint;
use kube::ResourceExt;
use kube::runtime::events::EventType;

/// Address, port, Ingress and name make the fingerprint.
pub fn prepare(ws: &Workspace, env: &StepEnv) -> Prepared {
    let ingress = serde_json::to_string(&ws.spec.ingress).unwrap_or_default();
    let port = ws.spec.code_server.port.to_string();
    let fp = fingerprint(&[&env.instance_id, &env.address, &port, &ingress, &ws.name_any()]);
    let public = env.external_ip.as_deref() == Some(env.address.as_str());
    Ok((fp, super::Work::Route { address: env.address.clone(), public }))
}

/// Why a URL on the VM's external address is a risk, for the condition and the event.
fn plain_http_warning(to: &str) -> String {
    format!(
        "warning: {to} is plain HTTP on the VM's external address, so the code-server password and session \
         cookie cross the network in clear text; publish it through spec.ingress with TLS, or run the operator \
         with gcp.useInternalIp"
    )
}

pub async fn apply(
    ctx: &Context,
    report: &mut Report,
    ws: &Workspace,
    condition: &'static str,
    address: &str,
    public: bool,
    fp: &str,
) {
    // Only an Ingress claims a host; the other Workspaces are read from the watch cache.
    let others = if ws.spec.ingress.is_some() { ctx.workspaces() } else { Vec::new() };
    let result = match route::host_conflict(ws, others.iter().map(|w| &**w)) {
        Some(c) => Ok(Err(c)),
        None => ctx.cluster.apply_route(ws, address).await,
    };
    match result {
        Ok(Ok(())) => {}
        Ok(Err(RouteConflict { message, transient })) => {
            let reason = if transient { Reason::Waiting } else { Reason::RouteConflict };
            report.set(Update::falsy(condition, reason, message));
            report.soon(std::time::Duration::from_secs(if transient { 5 } else { 60 }));
            return;
        }
        Err(e) => {
            // The API server's answer (a name it refuses, a conflict) belongs in the condition.
            report.set(Update::falsy(condition, Reason::KubernetesError, format!("applying the route failed: {e}")));
            report.soon(std::time::Duration::from_secs(10));
            return;
        }
    }
    let to = url(ws.spec.ingress.as_ref(), address, ws.spec.code_server.port);
    let exposed = public && ws.spec.ingress.is_none();
    if report.url.as_deref() != Some(to.as_str()) {
        report.normal("Routed", format!("workspace is served at {to}"));
        if exposed {
            report.event(EventType::Warning, "PlainHTTPOnPublicAddress", plain_http_warning(&to));
        }
    }
    report.url = Some(to.clone());
    let mut message = format!("Service {} routes to {address}; open {to}", service_name(&ws.name_any()));
    if exposed {
        message = format!("{message}; {}", plain_http_warning(&to));
    }
    report.set(Update::truthy(condition, Reason::Routed, message).with_fingerprint(Some(fp.to_string())));
}

//! The emulator's own API under `/emulator/v1/`: fault knobs and inspection.
//!
//! - `GET  /emulator/v1/healthz`
//! - `GET  /emulator/v1/instances` — every instance with its machine (pid, address, state,
//!   `boot`: how the boot went by the machine's own account, `bootingHeld`…)
//! - `GET  /emulator/v1/operations`
//! - `GET|PUT|DELETE /emulator/v1/faults` — the whole knob set ([`Faults`] as JSON)
//! - `PUT|DELETE /emulator/v1/faults/methods/{method}` — [`MethodFault`] for one method or `*`
//! - `PUT|DELETE /emulator/v1/faults/quota` — [`QuotaFault`]: next inserts fail QUOTA_EXCEEDED
//! - `PUT|DELETE /emulator/v1/faults/zones/{zone}/exhausted` — ZONE_RESOURCE_POOL_EXHAUSTED
//! - `PUT|DELETE /emulator/v1/faults/stuck` — [`StuckFault`]: operations stay RUNNING
//! - `PUT|DELETE /emulator/v1/faults/booting` — [`BootingFault`] `{"instances": ["ws-", …]}`
//!   (names or name prefixes; empty = all): those machines keep `/run/nologin`, so every
//!   non-root SSH login is refused with "System is booting up. Unprivileged users are not
//!   permitted to log in yet…" (pam_nologin), now and at every boot, until DELETE (which
//!   removes `/run/nologin` as a finished boot does). The instances stay RUNNING.
//!   `GET /emulator/v1/instances` shows `machine.bootingHeld`.
//! - `POST /emulator/v1/operations/unstick` — let stuck operations finish
//! - `POST /emulator/v1/reset` — body `{"instances": true}` also deletes every instance
//!   (it leaves the request counters alone)
//! - `GET  /emulator/v1/requests` — Compute API calls served so far, per method:
//!   `{"instances.get": 12, "zoneOperations.get": 3, …}` (every call that reached its method,
//!   failed ones included; see [`super::requests`])
//! - `GET  /emulator/v1/requests/instances` — the calls that named an instance (operations
//!   count for the instance they target), `{"P/ZONE/NAME": {"instances.get": 4, …}, …}`
//! - `DELETE /emulator/v1/requests` — zero the counters

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{get, post, put};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::Emulator;
use super::errors::ApiError;
use super::faults::{BootingFault, Faults, METHODS, MethodFault, QuotaFault, StuckFault};

type Res = Result<axum::Json<Value>, ApiError>;

pub fn router(e: Emulator) -> Router {
    Router::new()
        .route("/emulator/v1/healthz", get(healthz))
        .route("/emulator/v1/instances", get(instances))
        .route("/emulator/v1/operations", get(operations))
        .route("/emulator/v1/operations/unstick", post(unstick))
        .route("/emulator/v1/faults", get(get_faults).put(put_faults).delete(clear_faults))
        .route("/emulator/v1/faults/methods/{method}", put(put_method).delete(delete_method))
        .route("/emulator/v1/faults/quota", put(put_quota).delete(delete_quota))
        .route("/emulator/v1/faults/zones/{zone}/exhausted", put(put_zone).delete(delete_zone))
        .route("/emulator/v1/faults/stuck", put(put_stuck).delete(delete_stuck))
        .route("/emulator/v1/faults/booting", put(put_booting).delete(delete_booting))
        .route("/emulator/v1/reset", post(reset))
        .route("/emulator/v1/requests", get(get_requests).delete(delete_requests))
        .route("/emulator/v1/requests/instances", get(get_instance_requests))
        .with_state(e)
}

fn body<T: DeserializeOwned + Default>(b: &Bytes) -> Result<T, ApiError> {
    if b.iter().all(|c| c.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(b).map_err(|e| ApiError::bad_request(format!("bad knob: {e}")))
}

fn faults_json(f: Faults) -> Res {
    Ok(axum::Json(serde_json::to_value(f).expect("serialise")))
}

async fn healthz(State(e): State<Emulator>) -> Res {
    Ok(axum::Json(json!({"ok": true, "backend": e.backend_kind()})))
}

async fn instances(State(e): State<Emulator>) -> Res {
    let e2 = e.clone();
    let v =
        tokio::task::spawn_blocking(move || e2.inspect()).await.map_err(|err| ApiError::internal(err.to_string()))?;
    Ok(axum::Json(v))
}

async fn operations(State(e): State<Emulator>) -> Res {
    Ok(axum::Json(e.operations()))
}

async fn unstick(State(e): State<Emulator>) -> Res {
    e.unstick();
    Ok(axum::Json(json!({"ok": true})))
}

async fn get_faults(State(e): State<Emulator>) -> Res {
    faults_json(e.faults())
}

async fn put_faults(State(e): State<Emulator>, b: Bytes) -> Res {
    let f: Faults = body(&b)?;
    for m in f.methods.keys() {
        check_method(m)?;
    }
    let f = e.update_faults(|cur| *cur = f);
    e.apply_booting().await;
    faults_json(f)
}

async fn clear_faults(State(e): State<Emulator>) -> Res {
    let f = e.update_faults(|cur| *cur = Faults::default());
    e.apply_booting().await;
    faults_json(f)
}

fn check_method(m: &str) -> Result<(), ApiError> {
    if m == "*" || METHODS.contains(&m) {
        Ok(())
    } else {
        Err(ApiError::bad_request(format!("unknown method '{m}'; one of * {}", METHODS.join(" "))))
    }
}

async fn put_method(State(e): State<Emulator>, Path(method): Path<String>, b: Bytes) -> Res {
    check_method(&method)?;
    let f: MethodFault = body(&b)?;
    if !(0.0..=1.0).contains(&f.error_rate) {
        return Err(ApiError::bad_request("errorRate must be within 0..1"));
    }
    faults_json(e.update_faults(|cur| {
        cur.methods.insert(method, f);
    }))
}

async fn delete_method(State(e): State<Emulator>, Path(method): Path<String>) -> Res {
    faults_json(e.update_faults(|cur| {
        cur.methods.remove(&method);
    }))
}

async fn put_quota(State(e): State<Emulator>, b: Bytes) -> Res {
    let q: QuotaFault = body(&b)?;
    faults_json(e.update_faults(|cur| cur.quota = Some(q)))
}

async fn delete_quota(State(e): State<Emulator>) -> Res {
    faults_json(e.update_faults(|cur| cur.quota = None))
}

async fn put_zone(State(e): State<Emulator>, Path(zone): Path<String>) -> Res {
    faults_json(e.update_faults(|cur| {
        cur.exhausted_zones.insert(zone);
    }))
}

async fn delete_zone(State(e): State<Emulator>, Path(zone): Path<String>) -> Res {
    faults_json(e.update_faults(|cur| {
        cur.exhausted_zones.remove(&zone);
    }))
}

async fn put_stuck(State(e): State<Emulator>, b: Bytes) -> Res {
    let s: StuckFault = body(&b)?;
    faults_json(e.update_faults(|cur| cur.stuck = Some(s)))
}

async fn delete_stuck(State(e): State<Emulator>) -> Res {
    faults_json(e.update_faults(|cur| cur.stuck = None))
}

async fn put_booting(State(e): State<Emulator>, b: Bytes) -> Res {
    let f: BootingFault = body(&b)?;
    let f = e.update_faults(|cur| cur.booting = Some(f));
    e.apply_booting().await;
    faults_json(f)
}

async fn delete_booting(State(e): State<Emulator>) -> Res {
    let f = e.update_faults(|cur| cur.booting = None);
    e.apply_booting().await;
    faults_json(f)
}

async fn get_requests(State(e): State<Emulator>) -> Res {
    Ok(axum::Json(serde_json::to_value(e.requests().methods).expect("serialise")))
}

async fn get_instance_requests(State(e): State<Emulator>) -> Res {
    Ok(axum::Json(serde_json::to_value(e.requests().instances).expect("serialise")))
}

async fn delete_requests(State(e): State<Emulator>) -> Res {
    e.reset_requests();
    Ok(axum::Json(json!({"ok": true})))
}

#[derive(serde::Deserialize, Default)]
#[serde(default)]
struct ResetBody {
    instances: bool,
}

async fn reset(State(e): State<Emulator>, b: Bytes) -> Res {
    let r: ResetBody = body(&b)?;
    e.reset(r.instances).await;
    Ok(axum::Json(json!({"ok": true})))
}

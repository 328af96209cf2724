//! The compute v1 REST paths.

use std::collections::HashMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::Value;

use super::Emulator;
use super::errors::ApiError;

type Params = Query<HashMap<String, String>>;
type ApiResult = Result<axum::Json<Value>, ApiError>;

pub fn router(e: Emulator) -> Router {
    Router::new()
        .route("/compute/v1/projects/{project}/zones/{zone}/instances", get(list).post(insert))
        .route("/compute/v1/projects/{project}/zones/{zone}/instances/{instance}", get(get_instance).delete(delete))
        .route(
            "/compute/v1/projects/{project}/zones/{zone}/instances/{instance}/{action}",
            get(instance_get_action).post(instance_post_action),
        )
        .route("/compute/v1/projects/{project}/aggregated/instances", get(aggregated_list))
        .route("/compute/v1/projects/{project}/zones/{zone}/operations/{operation}", get(get_operation))
        .route("/compute/v1/projects/{project}/zones/{zone}/operations/{operation}/wait", post(wait_operation))
        .fallback(fallback)
        .with_state(e)
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.is_empty() {
        return Ok(Value::Object(Default::default()));
    }
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(400, "parseError", format!("Invalid JSON payload received. {e}")))
}

fn resource(project: &str, zone: &str, instance: &str) -> String {
    format!("projects/{project}/zones/{zone}/instances/{instance}")
}

fn log_result(method: &str, target: &str, r: &ApiResult) {
    match r {
        Ok(_) => tracing::debug!(method, target, "ok"),
        Err(e) => tracing::info!(method, target, code = e.code, reason = %e.reason, "error"),
    }
}

async fn insert(State(e): State<Emulator>, Path((project, zone)): Path<(String, String)>, body: Bytes) -> ApiResult {
    let body = parse_body(&body)?;
    let name = body.get("name").and_then(|n| n.as_str()).unwrap_or("");
    let target = resource(&project, &zone, name);
    e.fault("instances.insert", &project, &target).await?;
    let r = e.insert(&project, &zone, &body).map(axum::Json);
    log_result("instances.insert", &target, &r);
    r
}

async fn list(State(e): State<Emulator>, Path((project, zone)): Path<(String, String)>, Query(q): Params) -> ApiResult {
    e.fault("instances.list", &project, &format!("projects/{project}/zones/{zone}")).await?;
    e.list(
        &project,
        &zone,
        q.get("filter").map(|s| s.as_str()),
        q.get("maxResults").map(|s| s.as_str()),
        q.get("pageToken").map(|s| s.as_str()),
    )
    .map(axum::Json)
}

async fn aggregated_list(State(e): State<Emulator>, Path(project): Path<String>, Query(q): Params) -> ApiResult {
    e.fault("instances.aggregatedList", &project, &format!("projects/{project}")).await?;
    e.aggregated_list(
        &project,
        q.get("filter").map(|s| s.as_str()),
        q.get("maxResults").map(|s| s.as_str()),
        q.get("pageToken").map(|s| s.as_str()),
    )
    .map(axum::Json)
}

async fn get_instance(
    State(e): State<Emulator>,
    Path((project, zone, instance)): Path<(String, String, String)>,
) -> ApiResult {
    let target = resource(&project, &zone, &instance);
    e.fault("instances.get", &project, &target).await?;
    e.get(&project, &zone, &instance).map(axum::Json)
}

async fn delete(
    State(e): State<Emulator>,
    Path((project, zone, instance)): Path<(String, String, String)>,
) -> ApiResult {
    let target = resource(&project, &zone, &instance);
    e.fault("instances.delete", &project, &target).await?;
    let r = e.delete(&project, &zone, &instance).map(axum::Json);
    log_result("instances.delete", &target, &r);
    r
}

async fn instance_get_action(
    State(e): State<Emulator>,
    Path((project, zone, instance, action)): Path<(String, String, String, String)>,
    Query(q): Params,
) -> ApiResult {
    if action != "getGuestAttributes" {
        return Err(no_such_method(&Method::GET, &action));
    }
    let target = resource(&project, &zone, &instance);
    e.fault("instances.getGuestAttributes", &project, &target).await?;
    e.guest_attributes(
        &project,
        &zone,
        &instance,
        q.get("queryPath").map(|s| s.as_str()),
        q.get("variableKey").map(|s| s.as_str()),
    )
    .map(axum::Json)
}

async fn instance_post_action(
    State(e): State<Emulator>,
    Path((project, zone, instance, action)): Path<(String, String, String, String)>,
    body: Bytes,
) -> ApiResult {
    let target = resource(&project, &zone, &instance);
    let method = match action.as_str() {
        "start" => "instances.start",
        "stop" => "instances.stop",
        "setMachineType" => "instances.setMachineType",
        "setMetadata" => "instances.setMetadata",
        "setLabels" => "instances.setLabels",
        _ => return Err(no_such_method(&Method::POST, &action)),
    };
    let body = parse_body(&body)?;
    e.fault(method, &project, &target).await?;
    let r = match action.as_str() {
        "start" => e.start(&project, &zone, &instance),
        "stop" => e.stop(&project, &zone, &instance),
        "setMachineType" => e.set_machine_type(&project, &zone, &instance, &body),
        "setLabels" => e.set_labels(&project, &zone, &instance, &body),
        _ => e.set_metadata(&project, &zone, &instance, &body),
    }
    .map(axum::Json);
    log_result(method, &target, &r);
    r
}

async fn get_operation(
    State(e): State<Emulator>,
    Path((project, zone, operation)): Path<(String, String, String)>,
) -> ApiResult {
    e.fault("zoneOperations.get", &project, &format!("projects/{project}/zones/{zone}/operations/{operation}")).await?;
    e.get_operation(&project, &zone, &operation).map(axum::Json)
}

async fn wait_operation(
    State(e): State<Emulator>,
    Path((project, zone, operation)): Path<(String, String, String)>,
) -> ApiResult {
    e.fault("zoneOperations.wait", &project, &format!("projects/{project}/zones/{zone}/operations/{operation}"))
        .await?;
    e.wait_operation(&project, &zone, &operation).await.map(axum::Json)
}

fn no_such_method(method: &Method, action: &str) -> ApiError {
    ApiError::not_found(&format!("{method} {action}"))
}

async fn fallback(method: Method, uri: axum::http::Uri) -> Response {
    tracing::info!(%method, %uri, "no such path");
    ApiError::new(404, "notFound", format!("The requested URL {} was not found on this server.", uri.path()))
        .into_response()
}

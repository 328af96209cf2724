//! Errors in the shape Compute Engine's REST API uses:
//! `{"error":{"code":404,"message":"…","errors":[{"message":"…","domain":"global","reason":"notFound"}]}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// An HTTP-level API error (the request itself is refused; no operation is created).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
}

impl ApiError {
    pub fn new(code: u16, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { code, reason: reason.into(), message: message.into() }
    }

    pub fn not_found(resource: &str) -> Self {
        Self::new(404, "notFound", format!("The resource '{resource}' was not found"))
    }

    pub fn already_exists(resource: &str) -> Self {
        Self::new(409, "alreadyExists", format!("The resource '{resource}' already exists"))
    }

    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(400, "invalid", message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "badRequest", message)
    }

    pub fn invalid_field(field: &str, value: &str, why: &str) -> Self {
        Self::invalid(format!("Invalid value for field '{field}': '{value}'. {why}"))
    }

    pub fn forbidden(permission: &str, resource: &str) -> Self {
        Self::new(403, "forbidden", format!("Required '{permission}' permission for '{resource}'"))
    }

    pub fn condition_not_met(message: impl Into<String>) -> Self {
        Self::new(412, "conditionNotMet", message)
    }

    pub fn rate_limited(project: &str) -> Self {
        Self::new(
            429,
            "rateLimitExceeded",
            format!(
                "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute' of service 'compute.googleapis.com' for consumer 'project:{project}'."
            ),
        )
    }

    pub fn backend_error() -> Self {
        Self::new(503, "backendError", "The service is currently unavailable.")
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(500, "internalError", message)
    }

    /// The JSON body Google sends.
    pub fn body(&self) -> serde_json::Value {
        json!({
            "error": {
                "code": self.code,
                "message": self.message,
                "errors": [{
                    "message": self.message,
                    "domain": "global",
                    "reason": self.reason,
                }],
            }
        })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.code, self.reason, self.message)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, axum::Json(self.body())).into_response()
    }
}

/// An error recorded inside an operation (`error.errors[{code, message}]`,
/// `httpErrorStatusCode`, `httpErrorMessage`).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationError {
    pub code: String,
    pub message: String,
    pub http_status: u16,
    pub http_message: String,
}

impl OperationError {
    pub fn new(code: &str, message: impl Into<String>, http_status: u16) -> Self {
        let http_message = match http_status {
            400 => "BAD REQUEST",
            403 => "FORBIDDEN",
            404 => "NOT FOUND",
            409 => "CONFLICT",
            412 => "PRECONDITION FAILED",
            429 => "TOO MANY REQUESTS",
            503 => "SERVICE UNAVAILABLE",
            _ => "INTERNAL SERVER ERROR",
        };
        Self { code: code.to_string(), message: message.into(), http_status, http_message: http_message.to_string() }
    }

    pub fn quota_exceeded(metric: &str, limit: f64, region: &str) -> Self {
        Self::new("QUOTA_EXCEEDED", format!("Quota '{metric}' exceeded.  Limit: {limit:.1} in region {region}."), 403)
    }

    pub fn zone_exhausted(project: &str, zone: &str) -> Self {
        Self::new(
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            format!(
                "The zone 'projects/{project}/zones/{zone}' does not have enough resources available to fulfill the request. Try a different zone, or try again later."
            ),
            503,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new("INTERNAL_ERROR", message, 500)
    }
}

//! Compute Engine errors, mapped to the reasons users see in conditions.

use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::StatusDetails;

/// What went wrong, in the operator's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloudErrorKind {
    NotFound,
    AlreadyExists,
    QuotaExceeded,
    ZoneResourcesExhausted,
    PermissionDenied,
    Unauthenticated,
    RateLimited,
    PreconditionFailed,
    ResourceInUse,
    InvalidRequest,
    Unavailable,
    Other,
}

impl CloudErrorKind {
    /// The condition reason users see.
    pub fn condition_reason(self) -> &'static str {
        match self {
            CloudErrorKind::QuotaExceeded => "QuotaExceeded",
            CloudErrorKind::ZoneResourcesExhausted => "ZoneResourcesExhausted",
            CloudErrorKind::PermissionDenied | CloudErrorKind::Unauthenticated => "PermissionDenied",
            CloudErrorKind::NotFound => "InstanceNotFound",
            CloudErrorKind::AlreadyExists => "InstanceNameConflict",
            CloudErrorKind::RateLimited => "RateLimited",
            CloudErrorKind::PreconditionFailed => "ConcurrentUpdate",
            CloudErrorKind::ResourceInUse => "ResourceInUse",
            CloudErrorKind::InvalidRequest => "InvalidRequest",
            CloudErrorKind::Unavailable => "ComputeUnavailable",
            CloudErrorKind::Other => "ComputeError",
        }
    }

    /// Whether retrying the same call can help.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            CloudErrorKind::RateLimited
                | CloudErrorKind::Unavailable
                | CloudErrorKind::PreconditionFailed
                | CloudErrorKind::ZoneResourcesExhausted
                | CloudErrorKind::QuotaExceeded
                | CloudErrorKind::Other
        )
    }
}

/// A Compute Engine failure. The message is Google's, which names the quota, zone or
/// permission; it never carries credentials.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CloudError {
    pub kind: CloudErrorKind,
    pub message: String,
    pub http_status: Option<u16>,
    pub reason: Option<String>,
}

impl CloudError {
    pub fn new(kind: CloudErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into(), http_status: None, reason: None }
    }
}

/// Maps an HTTP status and Google's error reason to a kind.
pub fn classify_http(status: Option<u16>, reason: Option<&str>, message: &str) -> CloudErrorKind {
    let m = message.to_ascii_lowercase();
    match (status, reason.unwrap_or("")) {
        (_, "quotaExceeded") | (_, "QUOTA_EXCEEDED") => CloudErrorKind::QuotaExceeded,
        (_, r) if r.starts_with("ZONE_RESOURCE_POOL_EXHAUSTED") || r == "resourcePoolExhausted" => {
            CloudErrorKind::ZoneResourcesExhausted
        }
        (_, "rateLimitExceeded") | (_, "userRateLimitExceeded") | (Some(429), _) => CloudErrorKind::RateLimited,
        (Some(404), _) | (_, "notFound") => CloudErrorKind::NotFound,
        (Some(409), _) | (_, "alreadyExists") => CloudErrorKind::AlreadyExists,
        (Some(412), _) | (_, "conditionNotMet") => CloudErrorKind::PreconditionFailed,
        (Some(401), _) => CloudErrorKind::Unauthenticated,
        (Some(403), _) if m.contains("quota") => CloudErrorKind::QuotaExceeded,
        (Some(403), _) | (_, "forbidden") | (_, "insufficientPermissions") => CloudErrorKind::PermissionDenied,
        (Some(400), "resourceInUseByAnotherResource") | (Some(400), "invalidResourceUsage") => {
            CloudErrorKind::ResourceInUse
        }
        (Some(400), _) => CloudErrorKind::InvalidRequest,
        (Some(500..=599), _) => CloudErrorKind::Unavailable,
        _ => CloudErrorKind::Other,
    }
}

/// Maps an error code found inside a finished operation.
pub fn classify_operation(code: &str, http_status: Option<i32>) -> CloudErrorKind {
    match code {
        "QUOTA_EXCEEDED" => CloudErrorKind::QuotaExceeded,
        c if c.starts_with("ZONE_RESOURCE_POOL_EXHAUSTED") => CloudErrorKind::ZoneResourcesExhausted,
        "RESOURCE_NOT_FOUND" => CloudErrorKind::NotFound,
        "RESOURCE_ALREADY_EXISTS" => CloudErrorKind::AlreadyExists,
        "PERMISSIONS_ERROR" | "FORBIDDEN" => CloudErrorKind::PermissionDenied,
        "RESOURCE_OPERATION_RATE_EXCEEDED" | "RATE_LIMIT_EXCEEDED" => CloudErrorKind::RateLimited,
        "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE" | "INVALID_RESOURCE_USAGE" => CloudErrorKind::ResourceInUse,
        "INVALID_FIELD_VALUE" | "BAD_REQUEST" => CloudErrorKind::InvalidRequest,
        _ => match http_status {
            Some(s) => classify_http(u16::try_from(s).ok(), None, ""),
            None => CloudErrorKind::Other,
        },
    }
}

impl From<GaxError> for CloudError {
    fn from(e: GaxError) -> Self {
        let http_status = e.http_status_code();
        let reason = e.status().and_then(|s| {
            s.details.iter().find_map(|d| match d {
                StatusDetails::ErrorInfo(i) => Some(i.reason.clone()),
                _ => None,
            })
        });
        let message = e.status().map(|s| s.message.clone()).filter(|m| !m.is_empty()).unwrap_or_else(|| e.to_string());
        let kind = if http_status.is_none() && (e.is_io() || e.is_connect() || e.is_timeout() || e.is_transport()) {
            CloudErrorKind::Unavailable
        } else if e.is_authentication() {
            CloudErrorKind::Unauthenticated
        } else {
            classify_http(http_status, reason.as_deref(), &message)
        };
        CloudError { kind, message, http_status, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CloudErrorKind::*;

    #[test]
    fn http_errors_map_on_status_and_reason() {
        let cases: &[(Option<u16>, Option<&str>, &str, CloudErrorKind)] = &[
            (Some(404), Some("notFound"), "The resource 'x' was not found", NotFound),
            (Some(409), Some("alreadyExists"), "exists", AlreadyExists),
            (
                Some(403),
                Some("forbidden"),
                "Required 'compute.instances.create' permission for 'projects/p'",
                PermissionDenied,
            ),
            (Some(403), Some("quotaExceeded"), "Quota 'CPUS' exceeded", QuotaExceeded),
            (Some(403), None, "Quota 'CPUS' exceeded.  Limit: 8.0", QuotaExceeded),
            (Some(429), Some("rateLimitExceeded"), "slow down", RateLimited),
            (Some(412), Some("conditionNotMet"), "fingerprint", PreconditionFailed),
            (
                Some(400),
                Some("invalidResourceUsage"),
                "Resource cannot be deleted if it's protected against deletion.",
                ResourceInUse,
            ),
            (Some(400), Some("invalid"), "bad", InvalidRequest),
            (Some(503), Some("backendError"), "try later", Unavailable),
            (Some(401), None, "no", Unauthenticated),
            (None, None, "?", Other),
        ];
        for (status, reason, msg, want) in cases {
            assert_eq!(classify_http(*status, *reason, msg), *want, "{status:?} {reason:?}");
        }
    }

    #[test]
    fn operation_errors_map_on_code() {
        assert_eq!(classify_operation("QUOTA_EXCEEDED", Some(403)), QuotaExceeded);
        assert_eq!(classify_operation("ZONE_RESOURCE_POOL_EXHAUSTED", Some(503)), ZoneResourcesExhausted);
        assert_eq!(classify_operation("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", None), ZoneResourcesExhausted);
        assert_eq!(classify_operation("RESOURCE_NOT_FOUND", Some(404)), NotFound);
        assert_eq!(classify_operation("PERMISSIONS_ERROR", None), PermissionDenied);
        assert_eq!(classify_operation("RESOURCE_IN_USE_BY_ANOTHER_RESOURCE", Some(400)), ResourceInUse);
        assert_eq!(classify_operation("INTERNAL_ERROR", Some(500)), Unavailable);
        assert_eq!(classify_operation("SOMETHING_NEW", None), Other);
    }

    #[test]
    fn reasons_and_retry() {
        assert_eq!(QuotaExceeded.condition_reason(), "QuotaExceeded");
        assert_eq!(ZoneResourcesExhausted.condition_reason(), "ZoneResourcesExhausted");
        assert_eq!(PermissionDenied.condition_reason(), "PermissionDenied");
        assert!(RateLimited.retryable());
        assert!(Unavailable.retryable());
        assert!(!PermissionDenied.retryable());
        assert!(!InvalidRequest.retryable());
    }
}

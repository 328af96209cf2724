//! Compute Engine errors, mapped to the reasons users see in conditions.
//!
//! Two sources feed the same [`CloudErrorKind`]:
//! - a refused request: the HTTP status plus Google's error reason, which the client library
//!   puts into `ErrorInfo` details (AIP-193 `details[].reason`, or the legacy
//!   `error.errors[].reason` such as `notFound`, `quotaExceeded`, `forbidden`). The gRPC-style
//!   `status().code` is `Unknown` for Compute Engine's REST errors, so it is only a last resort;
//! - an operation that finished with `error.errors[].code` (`QUOTA_EXCEEDED`,
//!   `ZONE_RESOURCE_POOL_EXHAUSTED`, …).
//!
//! The mapping itself is pure ([`classify_http`], [`classify_reason`],
//! [`classify_operation`]) and table-tested below.

use crate::conditions::Reason;

use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::error::rpc::{Code, StatusDetails};

/// What went wrong, in the operator's terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
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
    pub fn condition_reason(&self) -> Reason {
        match self {
            CloudErrorKind::QuotaExceeded => Reason::QuotaExceeded,
            CloudErrorKind::ZoneResourcesExhausted => Reason::ZoneResourcesExhausted,
            CloudErrorKind::PermissionDenied | CloudErrorKind::Unauthenticated => Reason::PermissionDenied,
            CloudErrorKind::NotFound => Reason::InstanceNotFound,
            CloudErrorKind::AlreadyExists => Reason::InstanceNameConflict,
            CloudErrorKind::RateLimited => Reason::RateLimited,
            CloudErrorKind::PreconditionFailed => Reason::ConcurrentUpdate,
            CloudErrorKind::ResourceInUse => Reason::ResourceInUse,
            CloudErrorKind::InvalidRequest => Reason::InvalidRequest,
            CloudErrorKind::Unavailable => Reason::ComputeUnavailable,
            CloudErrorKind::Other => Reason::ComputeError,
        }
    }

    /// Whether retrying the same call later (with backoff) can help. Quota and zone
    /// capacity free up over time; a permission, a bad request or a name conflict need a
    /// person.
    pub fn retryable(&self) -> bool {
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
    /// Google's reason (`notFound`, `QUOTA_EXCEEDED`, …) when there was one.
    pub reason: Option<String>,
}

impl CloudError {
    pub fn new(kind: CloudErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: redact(&message.into()), http_status: None, reason: None }
    }

    /// Shorthand for `self.kind.condition_reason()`.
    pub fn condition_reason(&self) -> Reason {
        self.kind.condition_reason()
    }

    /// Shorthand for `self.kind.retryable()`.
    pub fn retryable(&self) -> bool {
        self.kind.retryable()
    }
}

/// Maps one Google error reason (legacy `errors[].reason` or AIP-193 `ErrorInfo.reason`) to a
/// kind; `None` when the reason says nothing more specific than the HTTP status does.
pub fn classify_reason(reason: &str) -> Option<CloudErrorKind> {
    use CloudErrorKind::*;
    Some(match reason {
        "notFound" | "RESOURCE_NOT_FOUND" => NotFound,
        "alreadyExists" | "duplicate" | "RESOURCE_ALREADY_EXISTS" => AlreadyExists,
        "quotaExceeded" | "QUOTA_EXCEEDED" | "dailyLimitExceeded" => QuotaExceeded,
        r if r.starts_with("ZONE_RESOURCE_POOL_EXHAUSTED") => ZoneResourcesExhausted,
        "resourcePoolExhausted" | "zoneResourcePoolExhausted" | "STOCKOUT" => ZoneResourcesExhausted,
        "rateLimitExceeded" | "userRateLimitExceeded" | "RATE_LIMIT_EXCEEDED" | "RESOURCE_OPERATION_RATE_EXCEEDED" => {
            RateLimited
        }
        "forbidden"
        | "insufficientPermissions"
        | "accessNotConfigured"
        | "IAM_PERMISSION_DENIED"
        | "ACCESS_TOKEN_SCOPE_INSUFFICIENT"
        | "SERVICE_DISABLED"
        | "PERMISSIONS_ERROR" => PermissionDenied,
        "authError" | "required" | "CREDENTIALS_MISSING" | "ACCESS_TOKEN_EXPIRED" | "ACCESS_TOKEN_TYPE_UNSUPPORTED" => {
            Unauthenticated
        }
        "conditionNotMet" | "CONDITION_NOT_MET" => PreconditionFailed,
        "resourceInUseByAnotherResource" | "invalidResourceUsage" | "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE" => {
            ResourceInUse
        }
        "resourceNotReady" | "backendError" | "internalError" | "serviceUnavailable" => Unavailable,
        "invalid" | "invalidParameter" | "badRequest" | "parseError" | "INVALID_FIELD_VALUE" => InvalidRequest,
        _ => return None,
    })
}

/// Maps an HTTP status and Google's error reasons to a kind. The most specific reason wins;
/// the HTTP status decides when no reason is known.
pub fn classify_http(status: Option<u16>, reasons: &[&str], message: &str) -> CloudErrorKind {
    use CloudErrorKind::*;
    let by_reason: Vec<CloudErrorKind> = reasons.iter().filter_map(|r| classify_reason(r)).collect();
    // A 401 `required` reason also appears on other statuses; only trust it with 401.
    let by_reason: Vec<CloudErrorKind> =
        by_reason.into_iter().filter(|k| *k != Unauthenticated || matches!(status, Some(401) | None)).collect();
    // Capacity and quota are the most actionable; they win over a generic reason given too.
    for k in [ZoneResourcesExhausted, QuotaExceeded, RateLimited] {
        if by_reason.contains(&k) {
            return k;
        }
    }
    // Older quota errors arrive as a 403 with a generic reason and say so in the message.
    let m = message.to_ascii_lowercase();
    if status == Some(403) && m.contains("quota") && m.contains("exceeded") {
        return QuotaExceeded;
    }
    if let Some(k) = by_reason.first() {
        // Unavailable reasons on a 4xx (e.g. `resourceNotReady` on 400) stay retryable.
        return *k;
    }
    match status {
        Some(400) => InvalidRequest,
        Some(401) => Unauthenticated,
        Some(403) => PermissionDenied,
        Some(404) => NotFound,
        Some(409) => AlreadyExists,
        Some(412) => PreconditionFailed,
        Some(429) => RateLimited,
        Some(408) | Some(500..=599) => Unavailable,
        _ => Other,
    }
}

/// Maps a gRPC-style code; only used when there is no HTTP status at all.
fn classify_code(code: Code) -> CloudErrorKind {
    use CloudErrorKind::*;
    match code {
        Code::NotFound => NotFound,
        Code::AlreadyExists => AlreadyExists,
        Code::PermissionDenied => PermissionDenied,
        Code::Unauthenticated => Unauthenticated,
        Code::ResourceExhausted => RateLimited,
        Code::FailedPrecondition | Code::Aborted => PreconditionFailed,
        Code::InvalidArgument | Code::OutOfRange => InvalidRequest,
        Code::Unavailable | Code::DeadlineExceeded | Code::Internal => Unavailable,
        _ => Other,
    }
}

/// Maps one error code found inside a finished operation (`error.errors[].code`).
pub fn classify_operation(code: &str, http_status: Option<i32>) -> CloudErrorKind {
    use CloudErrorKind::*;
    let by_code = match code {
        "QUOTA_EXCEEDED" => Some(QuotaExceeded),
        c if c.starts_with("ZONE_RESOURCE_POOL_EXHAUSTED") => Some(ZoneResourcesExhausted),
        "RESOURCE_NOT_FOUND" => Some(NotFound),
        "RESOURCE_ALREADY_EXISTS" => Some(AlreadyExists),
        "PERMISSIONS_ERROR" | "FORBIDDEN" | "forbidden" => Some(PermissionDenied),
        "RESOURCE_OPERATION_RATE_EXCEEDED" | "RATE_LIMIT_EXCEEDED" => Some(RateLimited),
        "RESOURCE_IN_USE_BY_ANOTHER_RESOURCE" | "INVALID_RESOURCE_USAGE" => Some(ResourceInUse),
        "CONDITION_NOT_MET" => Some(PreconditionFailed),
        "RESOURCE_NOT_READY" | "INTERNAL_ERROR" | "SERVICE_UNAVAILABLE" | "TIMEOUT" => Some(Unavailable),
        "INVALID_FIELD_VALUE" | "BAD_REQUEST" | "REQUIRED_FIELD_MISSING" | "UNSUPPORTED_OPERATION" => {
            Some(InvalidRequest)
        }
        other => classify_reason(other),
    };
    match (by_code, http_status) {
        (Some(k), _) => k,
        (None, Some(s)) => classify_http(u16::try_from(s).ok(), &[], ""),
        (None, None) => Other,
    }
}

/// Picks the kind for several operation error codes: the first specific one wins.
pub fn classify_operation_codes(codes: &[&str], http_status: Option<i32>) -> CloudErrorKind {
    codes.iter().map(|c| classify_operation(c, None)).find(|k| *k != CloudErrorKind::Other).unwrap_or_else(|| {
        match http_status {
            Some(s) => classify_http(u16::try_from(s).ok(), &[], ""),
            None => CloudErrorKind::Other,
        }
    })
}

const MAX_MESSAGE: usize = 600;

/// Removes anything that could be a credential from a message: bearer tokens, access
/// tokens or keys in query strings, and user info in URLs. Long messages are cut.
pub fn redact(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    // `Bearer <token>` / `Basic <creds>`
    while let Some((pos, word_end)) = find_ci(rest, &["bearer ", "authorization: basic "]) {
        let (head, tail) = rest.split_at(pos);
        out.push_str(head);
        out.push_str(&tail[..word_end]);
        let tok_end = tail[word_end..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(tail.len() - word_end);
        out.push_str("[redacted]");
        rest = &tail[word_end + tok_end..];
    }
    out.push_str(rest);
    let mut s = out;
    for key in ["access_token=", "key=", "token=", "client_secret=", "password="] {
        s = redact_after(&s, key);
    }
    // scheme://user:pass@host → scheme://[redacted]@host
    let mut cleaned = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(pos) = rest.find("://") {
        let (head, tail) = rest.split_at(pos + 3);
        cleaned.push_str(head);
        let auth_end = tail.find(['/', ' ', '"', '\'', ')']).unwrap_or(tail.len());
        match tail[..auth_end].rfind('@') {
            Some(at) => {
                cleaned.push_str("[redacted]");
                rest = &tail[at..];
            }
            None => rest = tail,
        }
    }
    cleaned.push_str(rest);
    if cleaned.chars().count() > MAX_MESSAGE {
        let cut: String = cleaned.chars().take(MAX_MESSAGE).collect();
        return format!("{cut}…");
    }
    cleaned
}

/// The first case-insensitive match of any needle: (position, needle length).
fn find_ci(hay: &str, needles: &[&str]) -> Option<(usize, usize)> {
    let lower = hay.to_ascii_lowercase();
    needles.iter().filter_map(|n| lower.find(n).map(|p| (p, n.len()))).min()
}

fn redact_after(s: &str, key: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(pos) = rest.find(key) {
        // only at a parameter boundary (`?key=` / `&key=`) or the start
        let boundary = pos == 0 || matches!(rest.as_bytes()[pos - 1], b'?' | b'&' | b' ' | b'"');
        let (head, tail) = rest.split_at(pos + key.len());
        out.push_str(head);
        if boundary {
            let end = tail.find(['&', ' ', '"', '\'', ')', '\n']).unwrap_or(tail.len());
            out.push_str("[redacted]");
            rest = &tail[end..];
        } else {
            rest = tail;
        }
    }
    out.push_str(rest);
    out
}

impl From<GaxError> for CloudError {
    fn from(e: GaxError) -> Self {
        let http_status = e.http_status_code();
        let reasons: Vec<String> = e
            .status()
            .map(|s| {
                s.details
                    .iter()
                    .filter_map(|d| match d {
                        StatusDetails::ErrorInfo(i) if !i.reason.is_empty() => Some(i.reason.clone()),
                        _ => None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        let status_message = e.status().map(|s| s.message.clone()).filter(|m| !m.is_empty());
        let message = match (&status_message, http_status, e.http_payload()) {
            (Some(m), _, _) => m.clone(),
            // An HTTP error whose body is not Google's JSON (a proxy, a load balancer).
            (None, Some(code), Some(p)) => {
                let body = String::from_utf8_lossy(p);
                let body = body.trim();
                if body.is_empty() {
                    format!("Compute Engine answered HTTP {code}")
                } else {
                    format!("Compute Engine answered HTTP {code}: {body}")
                }
            }
            _ => e.to_string(),
        };
        let reason_refs: Vec<&str> = reasons.iter().map(String::as_str).collect();
        let kind = if e.is_authentication() {
            CloudErrorKind::Unauthenticated
        } else if http_status.is_none()
            && (e.is_io() || e.is_connect() || e.is_timeout() || e.is_transport() || e.is_exhausted())
        {
            CloudErrorKind::Unavailable
        } else if http_status.is_none() && (e.is_binding() || e.is_serialization()) {
            CloudErrorKind::InvalidRequest
        } else if http_status.is_none() && reason_refs.is_empty() {
            e.status().map(|s| classify_code(s.code)).unwrap_or(CloudErrorKind::Other)
        } else {
            classify_http(http_status, &reason_refs, &message)
        };
        CloudError {
            kind,
            message: redact(&message),
            http_status,
            reason: reasons.iter().find(|r| classify_reason(r) == Some(kind)).or(reasons.first()).cloned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use CloudErrorKind::*;

    #[test]
    fn http_errors_map_on_status_and_reason() {
        #[rustfmt::skip]
        let cases: &[(Option<u16>, &[&str], &str, CloudErrorKind)] = &[
            (Some(404), &["notFound"], "The resource 'projects/p/zones/z/instances/x' was not found", NotFound),
            (Some(404), &[], "", NotFound),
            (Some(409), &["alreadyExists"], "The resource 'x' already exists", AlreadyExists),
            (Some(409), &[], "", AlreadyExists),
            (Some(403), &["forbidden"], "Required 'compute.instances.create' permission for 'projects/p'", PermissionDenied),
            (Some(403), &["insufficientPermissions"], "Request had insufficient authentication scopes.", PermissionDenied),
            (Some(403), &["accessNotConfigured"], "Compute Engine API has not been used in project 1", PermissionDenied),
            (Some(403), &["IAM_PERMISSION_DENIED"], "Permission 'compute.instances.get' denied", PermissionDenied),
            (Some(403), &["SERVICE_DISABLED"], "API disabled", PermissionDenied),
            (Some(403), &[], "Required 'compute.instances.get' permission", PermissionDenied),
            (Some(403), &["quotaExceeded"], "Quota 'CPUS' exceeded.  Limit: 8.0 in region us-central1.", QuotaExceeded),
            (Some(403), &[], "Quota 'CPUS' exceeded.  Limit: 8.0", QuotaExceeded),
            (Some(403), &["QUOTA_EXCEEDED"], "Quota exceeded", QuotaExceeded),
            (Some(403), &["dailyLimitExceeded"], "Daily Limit Exceeded", QuotaExceeded),
            (Some(403), &["rateLimitExceeded"], "Rate Limit Exceeded", RateLimited),
            (Some(403), &["userRateLimitExceeded"], "User Rate Limit Exceeded", RateLimited),
            (Some(429), &["rateLimitExceeded"], "Quota exceeded for quota metric 'Queries'", RateLimited),
            (Some(429), &["RATE_LIMIT_EXCEEDED"], "", RateLimited),
            (Some(429), &[], "", RateLimited),
            (Some(412), &["conditionNotMet"], "Supplied fingerprint does not match current metadata fingerprint.", PreconditionFailed),
            (Some(412), &[], "", PreconditionFailed),
            (Some(400), &["invalidResourceUsage"], "Resource cannot be deleted if it's protected against deletion.", ResourceInUse),
            (Some(400), &["resourceInUseByAnotherResource"], "The disk resource is already being used", ResourceInUse),
            (Some(400), &["resourceNotReady"], "The resource is not ready", Unavailable),
            (Some(400), &["invalid"], "Invalid value for field 'resource.name'", InvalidRequest),
            (Some(400), &["badRequest"], "bad", InvalidRequest),
            (Some(400), &[], "", InvalidRequest),
            (Some(401), &["authError"], "Invalid Credentials", Unauthenticated),
            (Some(401), &["required"], "Login Required.", Unauthenticated),
            (Some(401), &[], "no", Unauthenticated),
            (Some(500), &["internalError"], "Internal error", Unavailable),
            (Some(502), &[], "Bad Gateway", Unavailable),
            (Some(503), &["backendError"], "The service is currently unavailable.", Unavailable),
            (Some(503), &["ZONE_RESOURCE_POOL_EXHAUSTED"], "The zone 'projects/p/zones/z' does not have enough resources", ZoneResourcesExhausted),
            (Some(503), &["resourcePoolExhausted"], "", ZoneResourcesExhausted),
            (Some(504), &[], "", Unavailable),
            (Some(408), &[], "", Unavailable),
            // A generic reason beside a specific one: the specific one wins.
            (Some(403), &["forbidden", "quotaExceeded"], "Quota 'CPUS' exceeded", QuotaExceeded),
            (Some(418), &["somethingNew"], "", Other),
            (None, &[], "?", Other),
            (None, &["notFound"], "", NotFound),
        ];
        for (status, reasons, msg, want) in cases {
            assert_eq!(classify_http(*status, reasons, msg), *want, "{status:?} {reasons:?} {msg}");
        }
    }

    #[test]
    fn operation_errors_map_on_code() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<i32>, CloudErrorKind)] = &[
            ("QUOTA_EXCEEDED", Some(403), QuotaExceeded),
            ("ZONE_RESOURCE_POOL_EXHAUSTED", Some(503), ZoneResourcesExhausted),
            ("ZONE_RESOURCE_POOL_EXHAUSTED_WITH_DETAILS", None, ZoneResourcesExhausted),
            ("RESOURCE_NOT_FOUND", Some(404), NotFound),
            ("RESOURCE_ALREADY_EXISTS", Some(409), AlreadyExists),
            ("PERMISSIONS_ERROR", None, PermissionDenied),
            ("forbidden", Some(403), PermissionDenied),
            ("RESOURCE_OPERATION_RATE_EXCEEDED", Some(403), RateLimited),
            ("RATE_LIMIT_EXCEEDED", None, RateLimited),
            ("RESOURCE_IN_USE_BY_ANOTHER_RESOURCE", Some(400), ResourceInUse),
            ("CONDITION_NOT_MET", Some(412), PreconditionFailed),
            ("RESOURCE_NOT_READY", Some(400), Unavailable),
            ("INTERNAL_ERROR", Some(500), Unavailable),
            ("INVALID_FIELD_VALUE", Some(400), InvalidRequest),
            ("UNSUPPORTED_OPERATION", Some(400), InvalidRequest),
            ("SOMETHING_NEW", Some(403), PermissionDenied),
            ("SOMETHING_NEW", Some(503), Unavailable),
            ("SOMETHING_NEW", None, Other),
        ];
        for (code, status, want) in cases {
            assert_eq!(classify_operation(code, *status), *want, "{code} {status:?}");
        }
        assert_eq!(classify_operation_codes(&["SOMETHING_NEW", "QUOTA_EXCEEDED"], Some(403)), QuotaExceeded);
        assert_eq!(classify_operation_codes(&["SOMETHING_NEW"], Some(404)), NotFound);
        assert_eq!(classify_operation_codes(&[], None), Other);
    }

    #[test]
    fn reasons_and_retry() {
        #[rustfmt::skip]
        let cases: &[(CloudErrorKind, &str, bool)] = &[
            (NotFound, "InstanceNotFound", false),
            (AlreadyExists, "InstanceNameConflict", false),
            (QuotaExceeded, "QuotaExceeded", true),
            (ZoneResourcesExhausted, "ZoneResourcesExhausted", true),
            (PermissionDenied, "PermissionDenied", false),
            (Unauthenticated, "PermissionDenied", false),
            (RateLimited, "RateLimited", true),
            (PreconditionFailed, "ConcurrentUpdate", true),
            (ResourceInUse, "ResourceInUse", false),
            (InvalidRequest, "InvalidRequest", false),
            (Unavailable, "ComputeUnavailable", true),
            (Other, "ComputeError", true),
        ];
        for (kind, reason, retry) in cases {
            assert_eq!(kind.condition_reason(), *reason, "{kind:?}");
            assert_eq!(kind.retryable(), *retry, "{kind:?}");
        }
        let e = CloudError::new(QuotaExceeded, "Quota 'CPUS' exceeded");
        assert_eq!(e.condition_reason(), "QuotaExceeded");
        assert!(e.retryable());
    }

    fn service_error(status: u16, body: &str) -> GaxError {
        let s = google_cloud_gax::error::rpc::Status::try_from(&bytes::Bytes::from(body.to_string())).unwrap();
        GaxError::service_with_http_metadata(s, Some(status), None)
    }

    #[test]
    fn client_errors_use_status_and_legacy_reason() {
        let e: CloudError = service_error(
            403,
            r#"{"error":{"code":403,"message":"Required 'compute.instances.create' permission for 'projects/p/zones/z/instances/x'","errors":[{"message":"m","domain":"global","reason":"forbidden"}]}}"#,
        )
        .into();
        assert_eq!(e.kind, PermissionDenied);
        assert_eq!(e.http_status, Some(403));
        assert_eq!(e.reason.as_deref(), Some("forbidden"));
        assert!(e.message.contains("compute.instances.create"), "{}", e.message);

        let e: CloudError = service_error(
            404,
            r#"{"error":{"code":404,"message":"The resource 'projects/p/zones/z/instances/x' was not found","errors":[{"reason":"notFound"}]}}"#,
        )
        .into();
        assert_eq!(e.kind, NotFound);

        // AIP-193 details win over the legacy array, and an unknown `status` does not matter.
        let e: CloudError = service_error(
            429,
            r#"{"error":{"code":429,"message":"Quota exceeded for quota metric 'Read requests'","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"RATE_LIMIT_EXCEEDED","domain":"googleapis.com"}]}}"#,
        )
        .into();
        assert_eq!(e.kind, RateLimited);
        assert_eq!(e.reason.as_deref(), Some("RATE_LIMIT_EXCEEDED"));
    }

    #[test]
    fn transport_errors_are_unavailable() {
        let io = GaxError::io(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused"));
        assert_eq!(CloudError::from(io).kind, Unavailable);
        let c = GaxError::connect(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(CloudError::from(c).kind, Unavailable);
        let t = GaxError::timeout("deadline");
        assert_eq!(CloudError::from(t).kind, Unavailable);
        // A proxy's non-JSON 502 keeps its status.
        let h = GaxError::http(502, Default::default(), bytes::Bytes::from_static(b"<html>Bad Gateway</html>"));
        let e = CloudError::from(h);
        assert_eq!((e.kind, e.http_status), (Unavailable, Some(502)));
        assert!(e.message.contains("HTTP 502"), "{}", e.message);
        let h = GaxError::http(403, Default::default(), bytes::Bytes::new());
        assert_eq!(CloudError::from(h).kind, PermissionDenied);
    }

    #[test]
    fn messages_never_carry_credentials() {
        #[rustfmt::skip]
        let cases: &[(&str, &str)] = &[
            ("Authorization: Bearer ya29.a0AfH6SMC secret", "ya29"),
            ("GET https://compute.googleapis.com/x?access_token=ya29.abc&alt=json failed", "ya29"),
            ("GET https://compute.googleapis.com/x?key=AIzaSyD123 failed", "AIzaSyD123"),
            ("connect http://user:hunter2@proxy:3128/ refused", "hunter2"),
            ("Proxy-Authorization: Basic dXNlcjpwYXNz in header", "dXNlcjpwYXNz"),
        ];
        for (msg, secret) in cases {
            let r = redact(msg);
            assert!(!r.contains(secret), "{r}");
            assert!(r.contains("[redacted]"), "{r}");
        }
        assert_eq!(redact("Quota 'CPUS' exceeded.  Limit: 8.0"), "Quota 'CPUS' exceeded.  Limit: 8.0");
        assert_eq!(
            redact("Required 'compute.instances.create' permission for 'projects/p'"),
            "Required 'compute.instances.create' permission for 'projects/p'"
        );
        assert_eq!(redact("monkey=banana"), "monkey=banana");
        assert_eq!(redact("uses basic settings"), "uses basic settings");
        assert!(redact(&"x".repeat(5000)).chars().count() <= MAX_MESSAGE + 1);
    }
}

//! [`ArtifactStore`] on the official `google-cloud-storage` client. Endpoint and credentials
//! are configurable, so the same code talks to Cloud Storage or to an emulator.
//!
//! Uploads go through `write_object(..).send_buffered()` with the body as a streaming source:
//! objects below [`RESUMABLE_THRESHOLD`] are collected (at most that much) and sent in one
//! request; larger ones go as a resumable upload holding one [`UPLOAD_BUFFER`] at a time, so
//! the client's memory stays bounded whatever the object's size. The SDK resends a failed
//! chunk from that buffer after asking the server how much it kept, and stops with an error
//! when the server is behind the buffer, so a body read once is never replayed from a wrong
//! offset. (`send_unbuffered` is not used: it needs a seekable body, and below 16 MiB it
//! stores its trailing checksum as object data on fake-gcs-server.)

use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_gax::error::Error as GaxError;
use google_cloud_gax::exponential_backoff::{ExponentialBackoff, ExponentialBackoffBuilder};
use google_cloud_gax::retry_policy::RetryPolicyExt as _;
use google_cloud_storage::client::Storage;
use google_cloud_storage::retry_policy::RetryableErrors;
use google_cloud_storage::streaming_source::{SizeHint, StreamingSource};

use super::body::{BodyFailure, CheckedBody};
use super::{
    ArtifactStore, ByteStream, StorageError, StorageErrorKind, Uploaded, check_bucket_name, check_object_name,
    object_url,
};
use crate::cloud::gce::CredentialsMode;

/// Objects at least this long go as resumable uploads; smaller ones are held whole.
pub const RESUMABLE_THRESHOLD: usize = 8 * 1024 * 1024;
/// The resumable upload's chunk, held in memory until the server has it (a multiple of 256 KiB).
pub const UPLOAD_BUFFER: usize = 8 * 1024 * 1024;
/// Tries of one request (the first included) before an upload gives up.
const ATTEMPTS: u32 = 5;
/// Retry backoff: doubling from `BACKOFF_INITIAL`, never above `BACKOFF_MAX`.
const BACKOFF_INITIAL: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(16);
/// No chunk from the body for this long fails the upload (kind Source).
const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// Every upload may take this long, plus its size at [`MIN_THROUGHPUT`].
const BASE_DEADLINE: Duration = Duration::from_secs(120);
const MIN_THROUGHPUT: u64 = 512 * 1024;
/// The most of a server's answer quoted in a message.
const MAX_SERVER_TEXT: usize = 300;

/// Cloud Storage through the official client.
pub struct GcsStore {
    bucket: String,
    /// `projects/_/buckets/<bucket>`, the client's name for it.
    resource: String,
    client: Storage,
    attempts: u32,
    backoff_max: Duration,
    idle: Duration,
    base_deadline: Duration,
    min_throughput: u64,
}

impl GcsStore {
    /// A store for `bucket`. `endpoint` overrides Google's (an emulator's URL, such as
    /// fake-gcs-server's; it must listen on port 80 or 443, because the client's resumable
    /// uploads follow a session URL built from a Host header without the port). Anonymous
    /// credentials are for emulators only and need an endpoint. Nothing is sent until the
    /// first upload.
    pub async fn new(bucket: &str, endpoint: Option<&str>, credentials: CredentialsMode) -> anyhow::Result<Self> {
        check_bucket_name(bucket).map_err(|e| anyhow::anyhow!("--artifact-bucket: {e}"))?;
        if let Some(e) = endpoint
            && !(e.starts_with("http://") || e.starts_with("https://"))
        {
            anyhow::bail!("--storage-endpoint {e:?} is not an http:// or https:// URL");
        }
        let mut b = Storage::builder()
            .with_resumable_upload_threshold(RESUMABLE_THRESHOLD)
            .with_resumable_upload_buffer_size(UPLOAD_BUFFER);
        if let Some(e) = endpoint {
            b = b.with_endpoint(e.trim_end_matches('/'));
        }
        match (credentials, endpoint) {
            (CredentialsMode::Anonymous, None) => anyhow::bail!(
                "anonymous credentials are for a Cloud Storage emulator: set --storage-endpoint (chart value \
                 gcp.storageEndpoint) to its URL, or use default credentials"
            ),
            (CredentialsMode::Anonymous, Some(_)) => {
                b = b.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
            }
            (CredentialsMode::Default, _) => {}
        }
        let client = b.build().await.map_err(|e| anyhow::anyhow!("building the Cloud Storage client: {e}"))?;
        Ok(Self {
            bucket: bucket.to_string(),
            resource: format!("projects/_/buckets/{bucket}"),
            client,
            attempts: ATTEMPTS,
            backoff_max: BACKOFF_MAX,
            idle: IDLE_TIMEOUT,
            base_deadline: BASE_DEADLINE,
            min_throughput: MIN_THROUGHPUT,
        })
    }

    /// Retry settings: `attempts` tries of a request in all (at least 1), waits capped at
    /// `backoff_max`.
    pub fn with_retries(mut self, attempts: u32, backoff_max: Duration) -> Self {
        self.attempts = attempts.max(1);
        self.backoff_max = backoff_max.max(BACKOFF_INITIAL);
        self
    }

    /// How long the body may go without a chunk before the upload fails (kind Source).
    pub fn with_idle_timeout(mut self, idle: Duration) -> Self {
        self.idle = idle.max(Duration::from_millis(1));
        self
    }

    /// The time limit of an upload: `base`, plus its size at `min_bytes_per_sec`.
    pub fn with_deadline(mut self, base: Duration, min_bytes_per_sec: u64) -> Self {
        self.base_deadline = base;
        self.min_throughput = min_bytes_per_sec.max(1);
        self
    }

    fn backoff(&self) -> ExponentialBackoff {
        ExponentialBackoffBuilder::new()
            .with_initial_delay(BACKOFF_INITIAL)
            .with_maximum_delay(self.backoff_max)
            .with_scaling(2.0)
            .clamp()
    }
}

/// How long an upload of `size` bytes may take in all, retries included.
/// At most [`MAX_DEADLINE`].
pub fn upload_deadline(size: u64, base: Duration, min_bytes_per_sec: u64) -> Duration {
    base.saturating_add(Duration::from_secs(size / min_bytes_per_sec.max(1))).min(MAX_DEADLINE)
}

/// The longest any upload may take.
pub const MAX_DEADLINE: Duration = Duration::from_secs(7 * 24 * 3600);

/// What the body source saw, read back once the client is done with it.
#[derive(Clone, Debug, Default)]
struct Outcome {
    sent: u64,
    digest: Option<String>,
    failure: Option<BodyFailure>,
}

/// The body as the client's streaming source, reporting into a shared [`Outcome`]. The
/// client wants a `Sync` source; the stream is only ever touched through `&mut self`, so the
/// mutex is never locked (`get_mut`) and exists only for that bound.
struct SdkSource {
    body: Mutex<CheckedBody>,
    expected: u64,
    outcome: Arc<Mutex<Outcome>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StreamingSource for SdkSource {
    type Error = std::io::Error;

    async fn next(&mut self) -> Option<Result<bytes::Bytes, Self::Error>> {
        let body = self.body.get_mut().unwrap_or_else(std::sync::PoisonError::into_inner);
        let item = body.next().await;
        let mut o = lock(&self.outcome);
        o.sent = body.sent();
        o.digest = body.digest().map(str::to_string);
        o.failure = body.failure().cloned();
        drop(o);
        item.map(|r| r.map_err(|f| std::io::Error::other(format!("{f:?}"))))
    }

    async fn size_hint(&self) -> Result<SizeHint, Self::Error> {
        Ok(SizeHint::with_exact(self.expected))
    }
}

#[async_trait::async_trait]
impl ArtifactStore for GcsStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn upload(
        &self,
        object: &str,
        content_type: &str,
        size: u64,
        body: ByteStream,
    ) -> Result<Uploaded, StorageError> {
        check_object_name(&self.bucket, object)?;
        let url = object_url(&self.bucket, object);
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let source = SdkSource {
            body: Mutex::new(CheckedBody::new(body, size, self.idle)),
            expected: size,
            outcome: outcome.clone(),
        };
        let deadline = upload_deadline(size, self.base_deadline, self.min_throughput);
        let content_type = if content_type.trim().is_empty() { "application/octet-stream" } else { content_type };
        let write = self
            .client
            .write_object(&self.resource, object, source)
            .set_content_type(content_type)
            // Writing the same bytes to the same name twice is harmless: let the client retry.
            .with_idempotency(true)
            .with_retry_policy(RetryableErrors.with_attempt_limit(self.attempts).with_time_limit(deadline))
            .with_backoff_policy(self.backoff())
            .send_buffered();
        // The retry policy's time limit is only looked at between tries; this bounds a try
        // that hangs.
        let result = tokio::time::timeout(deadline.saturating_add(Duration::from_secs(5)), write).await;
        let seen = lock(&outcome).clone();
        if let Some(f) = &seen.failure {
            return Err(f.to_error(&self.bucket, object, size));
        }
        let stored = match result {
            Err(_) => {
                return Err(StorageError::new(
                    StorageErrorKind::Transient,
                    format!(
                        "storing {url} did not finish within {}s ({} of {size} bytes read); worth retrying",
                        deadline.as_secs(),
                        seen.sent
                    ),
                    true,
                ));
            }
            Ok(Err(e)) => return Err(error_from_sdk(&e, &self.bucket, object)),
            Ok(Ok(o)) => o,
        };
        let Some(sha256) = seen.digest else {
            return Err(StorageError::new(
                StorageErrorKind::Other,
                format!("storing {url}: the client finished after {} of {size} bytes", seen.sent),
                true,
            ));
        };
        if u64::try_from(stored.size).ok() != Some(size) {
            return Err(StorageError::new(
                StorageErrorKind::Other,
                format!("Cloud Storage reports {} bytes stored for {url}, but {size} were sent", stored.size),
                true,
            ));
        }
        Ok(Uploaded { url, size, sha256 })
    }
}

/// The pure part of the mapping: a kind and whether to retry, from the HTTP status (if any),
/// the server's message, and whether the request never got an answer.
pub fn classify(status: Option<u16>, server_message: &str, no_answer: bool) -> (StorageErrorKind, bool) {
    match status {
        Some(403) => {
            let permission = missing_permission(server_message).unwrap_or_else(|| "storage.objects.create".into());
            (StorageErrorKind::PermissionDenied { permission }, false)
        }
        Some(404) => (StorageErrorKind::BucketNotFound, false),
        Some(408 | 429 | 500..=599) => (StorageErrorKind::Transient, true),
        Some(_) => (StorageErrorKind::Other, false),
        None if no_answer => (StorageErrorKind::Transient, true),
        None => (StorageErrorKind::Other, false),
    }
}

/// The IAM permission a refusal names (`storage.objects.create`, `storage.objects.delete`, …).
pub fn missing_permission(message: &str) -> Option<String> {
    let is_word = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '_';
    let mut rest = message;
    let mut offset = 0;
    while let Some(pos) = rest.find("storage.") {
        let at = offset + pos;
        let before_ok = message[..at].chars().next_back().is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        let word: String = message[at..].chars().take_while(|&c| is_word(c)).collect();
        let word = word.trim_end_matches('.');
        let parts: Vec<&str> = word.split('.').collect();
        if before_ok
            && parts.len() == 3
            && parts.iter().all(|p| p.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
            && !matches!(parts[1], "googleapis" | "cloud")
            && parts[2] != "com"
        {
            return Some(word.to_string());
        }
        offset = at + "storage.".len();
        rest = &message[offset..];
    }
    None
}

/// Removes what could be a secret from text that came back from the client or server:
/// bearer tokens, keys and passwords (the Compute edge's rules), and resumable upload session
/// ids, which let anyone holding them write into the session.
pub fn scrub(text: &str) -> String {
    let s = crate::cloud::error::redact(text);
    let mut out = String::with_capacity(s.len());
    let mut rest = s.as_str();
    while let Some(pos) = rest.find("upload_id=") {
        let (head, tail) = rest.split_at(pos + "upload_id=".len());
        out.push_str(head);
        out.push_str("[redacted]");
        let end = tail.find(|c: char| c == '&' || c == '"' || c == '\'' || c == ')' || c.is_whitespace());
        rest = &tail[end.unwrap_or(tail.len())..];
    }
    out.push_str(rest);
    out
}

/// The server's words, bounded: the JSON error's message, else the start of the body.
fn server_text(e: &GaxError) -> String {
    let text = match (e.status().map(|s| s.message.as_str()).filter(|m| !m.is_empty()), e.http_payload()) {
        (Some(m), _) => m.to_string(),
        (None, Some(p)) => crate::text::lossy(&p[..p.len().min(4 * MAX_SERVER_TEXT)]),
        (None, None) => e.to_string(),
    };
    crate::text::head(scrub(text.trim()).as_str(), MAX_SERVER_TEXT).to_string()
}

/// The innermost client error in `e`'s chain (a retry loop wraps the last failure).
fn innermost(e: &GaxError) -> &GaxError {
    let mut best = e;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(c) = cur {
        if let Some(g) = c.downcast_ref::<GaxError>() {
            best = g;
        }
        cur = c.source();
    }
    best
}

/// Maps a client error to the store's, naming the bucket and object.
fn error_from_sdk(e: &GaxError, bucket: &str, object: &str) -> StorageError {
    let url = object_url(bucket, object);
    let inner = innermost(e);
    let status = inner.http_status_code();
    let text = server_text(inner);
    if status.is_none() && inner.is_authentication() {
        let transient = std::error::Error::source(inner)
            .and_then(|s| s.downcast_ref::<google_cloud_gax::error::CredentialsError>())
            .is_some_and(|c| c.is_transient());
        let kind = if transient { StorageErrorKind::Transient } else { StorageErrorKind::Other };
        return StorageError::new(
            kind,
            format!("no Google credentials to store {url} with: {text}; check the operator's service account"),
            transient,
        );
    }
    let no_answer = status.is_none()
        && (inner.is_io() || inner.is_connect() || inner.is_timeout() || inner.is_transport() || e.is_exhausted());
    let (kind, retryable) = classify(status, &text, no_answer);
    let http = status.map(|s| format!("HTTP {s}")).unwrap_or_else(|| "no answer".into());
    let message = match &kind {
        StorageErrorKind::PermissionDenied { permission } => {
            let grant = if permission == "storage.objects.create" {
                "grant it roles/storage.objectCreator on the bucket".to_string()
            } else {
                format!("grant it a role with {permission} on the bucket")
            };
            format!(
                "Cloud Storage refused to store {url}: the operator's Google service account lacks {permission} on \
                 bucket {bucket} ({grant}): {text}"
            )
        }
        StorageErrorKind::BucketNotFound => format!(
            "bucket {bucket} does not exist (storing {url}): create it, or set --artifact-bucket (chart value \
             artifacts.bucket) to an existing bucket: {text}"
        ),
        StorageErrorKind::Transient => {
            format!("Cloud Storage did not store {url} ({http}): {text}; worth retrying")
        }
        _ if inner.is_serialization() => {
            // A checksum the server computed differently from what was sent.
            return StorageError::new(
                StorageErrorKind::Other,
                format!("storing {url}: the stored object does not match what was sent: {text}"),
                true,
            );
        }
        _ if status == Some(401) => format!(
            "Cloud Storage rejected the operator's credentials storing {url} (HTTP 401): {text}; check the Google \
             service account (Workload Identity or key Secret)"
        ),
        _ => format!("Cloud Storage did not store {url} ({http}): {text}"),
    };
    StorageError::new(kind, message, retryable)
}

#[cfg(test)]
mod tests {
    use super::super::body::tests::chunks;
    use super::*;

    #[test]
    fn statuses_map_to_kinds() {
        use StorageErrorKind::*;
        let create = || PermissionDenied { permission: "storage.objects.create".into() };
        #[rustfmt::skip]
        let cases: Vec<(Option<u16>, &str, bool, StorageErrorKind, bool)> = vec![
            (Some(403), "x@p.iam.gserviceaccount.com does not have storage.objects.create access to the Google Cloud Storage object. Permission 'storage.objects.create' denied on resource (or it may not exist).", false, create(), false),
            (Some(403), "does not have storage.objects.delete access to the Google Cloud Storage object.", false, PermissionDenied { permission: "storage.objects.delete".into() }, false),
            (Some(403), "Forbidden", false, create(), false),
            (Some(404), "The specified bucket does not exist.", false, BucketNotFound, false),
            (Some(429), "rate", false, Transient, true),
            (Some(408), "", false, Transient, true),
            (Some(500), "", false, Transient, true),
            (Some(503), "", false, Transient, true),
            (Some(400), "Invalid", false, Other, false),
            (Some(401), "Invalid Credentials", false, Other, false),
            (Some(412), "", false, Other, false),
            (None, "connection refused", true, Transient, true),
            (None, "?", false, Other, false),
        ];
        for (status, msg, no_answer, kind, retry) in cases {
            assert_eq!(classify(status, msg, no_answer), (kind, retry), "{status:?} {msg}");
        }
    }

    #[test]
    fn permissions_are_read_from_the_message_only_when_they_look_like_one() {
        assert_eq!(
            missing_permission("Permission 'storage.buckets.get' denied").as_deref(),
            Some("storage.buckets.get")
        );
        assert_eq!(
            missing_permission("see https://storage.googleapis.com/x; lacks storage.objects.create.").as_deref(),
            Some("storage.objects.create")
        );
        assert_eq!(
            missing_permission("storage.multipartUploads.create").as_deref(),
            Some("storage.multipartUploads.create")
        );
        assert_eq!(missing_permission("cloudstorage.objects.create"), None);
        assert_eq!(missing_permission("storage.objects"), None);
        assert_eq!(missing_permission("ünï storage. storage"), None);
        assert_eq!(missing_permission(""), None);
    }

    #[test]
    fn session_ids_and_tokens_are_scrubbed() {
        let s = scrub("PUT http://h/upload/storage/v1/b/b/o?uploadType=resumable&upload_id=ABCdef123&x=1 failed");
        assert!(!s.contains("ABCdef123") && s.contains("upload_id=[redacted]&x=1"), "{s}");
        let s = scrub("Authorization: Bearer ya29.secret-token and upload_id=zzz");
        assert!(!s.contains("ya29") && !s.contains("zzz"), "{s}");
    }

    fn http_error(status: u16, body: &str) -> GaxError {
        GaxError::http(status, http::HeaderMap::new(), bytes::Bytes::from(body.to_string()))
    }

    #[test]
    fn sdk_errors_become_messages_that_name_bucket_object_and_permission() {
        let e = error_from_sdk(&http_error(403, "no storage.objects.create for you"), "arts", "runs/a.txt");
        assert_eq!(e.kind, StorageErrorKind::PermissionDenied { permission: "storage.objects.create".into() });
        for want in ["gs://arts/runs/a.txt", "bucket arts", "storage.objects.create", "roles/storage.objectCreator"] {
            assert!(e.message.contains(want), "{want}: {e}");
        }
        let e = error_from_sdk(&http_error(404, "Not Found"), "arts", "o");
        assert_eq!(e.kind, StorageErrorKind::BucketNotFound);
        assert!(e.message.contains("bucket arts does not exist") && !e.retryable, "{e}");
        // A retry loop that gave up wraps the last error: its status still decides.
        let e = error_from_sdk(&GaxError::exhausted(http_error(503, "busy")), "arts", "o");
        assert_eq!((e.kind.clone(), e.retryable), (StorageErrorKind::Transient, true), "{e}");
        let e = error_from_sdk(&GaxError::io("connection reset"), "arts", "o");
        assert_eq!(e.kind, StorageErrorKind::Transient, "{e}");
    }

    #[test]
    fn server_bodies_are_bounded_on_character_boundaries_and_scrubbed() {
        let body = format!("{} upload_id=SECRET", "é".repeat(5000));
        let e = error_from_sdk(&http_error(400, &body), "arts", "o");
        assert!(e.message.len() < 700, "{}", e.message.len());
        let e = error_from_sdk(&http_error(400, "bad upload_id=SECRET"), "arts", "o");
        assert!(!e.message.contains("SECRET") && e.message.contains("HTTP 400"), "{e}");
        // Invalid UTF-8 from the server is text, not a panic.
        let raw = GaxError::http(500, http::HeaderMap::new(), bytes::Bytes::from_static(&[0xff, 0xfe, b'x']));
        assert!(error_from_sdk(&raw, "arts", "o").message.contains('x'));
    }

    #[test]
    fn deadlines_grow_with_size() {
        let base = Duration::from_secs(120);
        assert_eq!(upload_deadline(0, base, 512 * 1024), base);
        assert_eq!(upload_deadline(100 * 1024 * 1024, base, 512 * 1024), Duration::from_secs(320));
        assert_eq!(upload_deadline(u64::MAX, base, 0), MAX_DEADLINE);
    }

    #[tokio::test]
    async fn the_source_reports_what_passed_and_says_its_length() {
        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let mut s = SdkSource {
            body: Mutex::new(CheckedBody::new(chunks(&[b"ab", b"c"]), 3, Duration::from_secs(5))),
            expected: 3,
            outcome: outcome.clone(),
        };
        assert_eq!(s.size_hint().await.unwrap().exact(), Some(3));
        let mut got = Vec::new();
        while let Some(c) = s.next().await {
            got.extend_from_slice(&c.unwrap());
        }
        assert_eq!(got, b"abc");
        let o = lock(&outcome).clone();
        assert_eq!(o.sent, 3);
        assert_eq!(o.digest.as_deref(), Some("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
        assert!(o.failure.is_none());

        let outcome = Arc::new(Mutex::new(Outcome::default()));
        let mut s = SdkSource {
            body: Mutex::new(CheckedBody::new(chunks(&[b"ab"]), 3, Duration::from_secs(5))),
            expected: 3,
            outcome: outcome.clone(),
        };
        assert!(s.next().await.unwrap().is_ok());
        assert!(s.next().await.unwrap().is_err());
        assert!(s.next().await.unwrap().is_err(), "a retry cannot go on from a wrong offset");
        assert_eq!(lock(&outcome).failure, Some(BodyFailure::TooShort { got: 2 }));
    }
}

//! The Cloud Storage edge: where Run artifacts are copied.
//!
//! [`ArtifactStore`] is the narrow interface the controllers use; [`GcsStore`] implements it on
//! the official `google-cloud-storage` client (production, or fake-gcs-server in the test bed
//! with only the endpoint and credentials changed), and [`MemoryStore`] is the in-process
//! double for scenario tests. Bodies are streamed: a store holds at most a bounded buffer of
//! an object, never the whole file, and checks the length and sha256 of what it sent.

mod body;
pub mod gcs;
pub mod memory;

use std::sync::Arc;

pub use gcs::GcsStore;
pub use memory::MemoryStore;

use crate::cloud::gce::CredentialsMode;
use crate::config::Config;

/// A body to upload: chunks as they arrive (from an SSH channel), never a whole file in memory.
pub type ByteStream = futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// What was stored: `url` is `gs://<bucket>/<object>`; `size` and `sha256` (lowercase hex) are
/// computed over the bytes actually sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub url: String,
    pub size: u64,
    pub sha256: String,
}

/// Where artifacts go.
#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    /// The bucket name, for messages.
    fn bucket(&self) -> &str;
    /// Uploads `body` as object `object` (full object name, no leading slash). `size` is the
    /// expected length: a stream that yields a different number of bytes fails the upload
    /// (kind Source) and no object is left claiming to be complete.
    async fn upload(
        &self,
        object: &str,
        content_type: &str,
        size: u64,
        body: ByteStream,
    ) -> Result<Uploaded, StorageError>;
}

/// A failed upload. `message` names the bucket and object (and, for a refusal, the missing
/// permission); it never carries credentials, and any text from the server in it is bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageError {
    pub kind: StorageErrorKind,
    pub message: String,
    /// Whether the same upload, tried again later with a fresh body, can succeed.
    pub retryable: bool,
}

/// What kind of failure, in the terms a Run's condition reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageErrorKind {
    /// 403: `permission` is the IAM permission that was missing (e.g. `storage.objects.create`).
    PermissionDenied {
        permission: String,
    },
    /// 404 on the bucket.
    BucketNotFound,
    /// The body stream failed or had the wrong length.
    Source,
    /// 429/5xx/connection trouble; worth retrying.
    Transient,
    Other,
}

impl StorageError {
    pub fn new(kind: StorageErrorKind, message: impl Into<String>, retryable: bool) -> Self {
        Self { kind, message: message.into(), retryable }
    }
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for StorageError {}

/// `gs://<bucket>/<object>`, the object's address as `gcloud storage` and the console print it.
pub fn object_url(bucket: &str, object: &str) -> String {
    format!("gs://{bucket}/{object}")
}

/// `prefix/name` with exactly one `/` between them (none when the prefix is empty), for
/// object names under `--artifact-prefix`.
pub fn prefixed(prefix: &str, name: &str) -> String {
    let prefix = prefix.trim_matches('/');
    let name = name.trim_start_matches('/');
    if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") }
}

/// The longest object name Cloud Storage accepts, in bytes of UTF-8.
pub const MAX_OBJECT_NAME: usize = 1024;

/// Checks an object name against Cloud Storage's rules before any byte is sent, so a bad name
/// is an error that says so instead of a server refusal (or a panic) later.
pub fn check_object_name(bucket: &str, object: &str) -> Result<(), StorageError> {
    let why = if object.is_empty() {
        Some("is empty".to_string())
    } else if object.starts_with('/') {
        Some("starts with '/'".to_string())
    } else if object.len() > MAX_OBJECT_NAME {
        Some(format!("is {} bytes long (at most {MAX_OBJECT_NAME})", object.len()))
    } else if object.contains(['\r', '\n']) {
        Some("contains a line break".to_string())
    } else if object == "." || object == ".." {
        Some("is '.' or '..'".to_string())
    } else if object.starts_with(".well-known/acme-challenge/") {
        Some("is under .well-known/acme-challenge/".to_string())
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(StorageError::new(
            StorageErrorKind::Other,
            format!(
                "cannot store an artifact in bucket {bucket}: the object name {:?} {why}",
                crate::text::head(object, 200)
            ),
            false,
        )),
    }
}

/// Checks a bucket name against Cloud Storage's rules (3-63 characters of lowercase letters,
/// digits, `-`, `_` and `.`, starting and ending with a letter or digit; up to 222 with dots).
pub fn check_bucket_name(bucket: &str) -> Result<(), String> {
    let ok_chars = bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
    let ends = bucket.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bucket.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    let max = if bucket.contains('.') { 222 } else { 63 };
    if ok_chars && ends && (3..=max).contains(&bucket.len()) && bucket.split('.').all(|p| p.len() <= 63) {
        Ok(())
    } else {
        Err(format!(
            "{:?} is not a Cloud Storage bucket name: 3-63 lowercase letters, digits, '-', '_' or '.', \
             starting and ending with a letter or digit",
            crate::text::head(bucket, 100)
        ))
    }
}

/// The artifact store the configuration asks for: none without `--artifact-bucket` (Runs then
/// report that artifacts cannot be kept), else Cloud Storage at `--storage-endpoint` (default
/// Google's) with `credentials`.
pub async fn store_from_config(
    config: &Config,
    credentials: CredentialsMode,
) -> anyhow::Result<Option<Arc<dyn ArtifactStore>>> {
    let Some(bucket) = config.artifact_bucket.as_deref().map(str::trim).filter(|b| !b.is_empty()) else {
        return Ok(None);
    };
    let endpoint = config.storage_endpoint.as_deref().map(str::trim).filter(|e| !e.is_empty());
    let store = GcsStore::new(bucket, endpoint, credentials).await?;
    Ok(Some(Arc::new(store)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser as _;

    #[test]
    fn urls_and_prefixes() {
        assert_eq!(object_url("b", "runs/ns/r/out.tar"), "gs://b/runs/ns/r/out.tar");
        assert_eq!(prefixed("runs", "ns/r/a"), "runs/ns/r/a");
        assert_eq!(prefixed("/runs/", "/ns/r/a"), "runs/ns/r/a");
        assert_eq!(prefixed("", "ns/r/a"), "ns/r/a");
        assert_eq!(prefixed("a/b", "c"), "a/b/c");
    }

    #[test]
    fn object_names_are_checked_without_panicking() {
        for ok in ["a", "runs/ns/r/file with spaces.txt", "ünïcødé/ファイル", &"x".repeat(1024)] {
            assert!(check_object_name("b", ok).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("", "is empty"),
            ("/a", "starts with '/'"),
            ("a\nb", "line break"),
            ("..", "'.' or '..'"),
            (&"é".repeat(513), "1026 bytes"),
        ] {
            let e = check_object_name("bkt", bad).unwrap_err();
            assert_eq!(e.kind, StorageErrorKind::Other);
            assert!(!e.retryable);
            assert!(e.message.contains(why) && e.message.contains("bkt"), "{e}");
        }
    }

    #[test]
    fn bucket_names_are_checked() {
        for ok in ["projectvm-artifacts", "abc", "a.b.c", "my_bucket-1"] {
            assert!(check_bucket_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "ab", "Upper", "-a-", "a b", &"a".repeat(64), "gs://x", "a/b"] {
            assert!(check_bucket_name(bad).is_err(), "{bad}");
        }
    }

    fn config(args: &[&str]) -> Config {
        let mut argv = vec!["op", "--gcp-project", "p"];
        argv.extend_from_slice(args);
        Config::try_parse_from(argv).unwrap()
    }

    #[tokio::test]
    async fn no_bucket_no_store() {
        assert!(store_from_config(&config(&[]), CredentialsMode::Anonymous).await.unwrap().is_none());
        let c = config(&["--artifact-bucket", " "]);
        assert!(store_from_config(&c, CredentialsMode::Anonymous).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_bucket_makes_a_store_and_bad_settings_fail_at_start_up() {
        // Building the client sends nothing; the endpoint is a closed local port anyway.
        let c = config(&["--artifact-bucket", "arts", "--storage-endpoint", "http://127.0.0.1:9"]);
        let store = store_from_config(&c, CredentialsMode::Anonymous).await.unwrap().unwrap();
        assert_eq!(store.bucket(), "arts");
        let bad = config(&["--artifact-bucket", "Not A Bucket", "--storage-endpoint", "http://127.0.0.1:9"]);
        let e = store_from_config(&bad, CredentialsMode::Anonymous).await.err().unwrap();
        assert!(e.to_string().contains("not a Cloud Storage bucket name"), "{e}");
        // Anonymous credentials are for emulators: never towards Google's own endpoint.
        let anon = config(&["--artifact-bucket", "arts"]);
        let e = store_from_config(&anon, CredentialsMode::Anonymous).await.err().unwrap();
        assert!(e.to_string().contains("--storage-endpoint"), "{e}");
    }
}

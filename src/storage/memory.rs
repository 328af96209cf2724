//! An [`ArtifactStore`] in memory, for the in-process scenario tests: the same body rules as
//! Cloud Storage (exact length, sha256 over what was sent, nothing kept from a failed upload),
//! a way to look at what was stored, and a knob to make uploads fail.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::body::CheckedBody;
use super::{ArtifactStore, ByteStream, StorageError, StorageErrorKind, Uploaded, check_object_name, object_url};

/// The largest object kept (a test double must not grow without bound either).
const DEFAULT_MAX_OBJECT: u64 = 256 * 1024 * 1024;

/// Objects kept in a map, by name.
pub struct MemoryStore {
    bucket: String,
    objects: Mutex<BTreeMap<String, Vec<u8>>>,
    fail_with: Mutex<Option<StorageError>>,
    max_object: u64,
    idle: Duration,
}

impl MemoryStore {
    pub fn new(bucket: &str) -> Self {
        Self {
            bucket: bucket.to_string(),
            objects: Mutex::new(BTreeMap::new()),
            fail_with: Mutex::new(None),
            max_object: DEFAULT_MAX_OBJECT,
            idle: Duration::from_secs(300),
        }
    }

    /// Refuse objects larger than `bytes` (kind Other, before reading the body).
    pub fn with_max_object_size(mut self, bytes: u64) -> Self {
        self.max_object = bytes;
        self
    }

    /// A copy of everything stored, by object name.
    pub fn objects(&self) -> BTreeMap<String, Vec<u8>> {
        lock(&self.objects).clone()
    }

    /// One object's bytes.
    pub fn object(&self, name: &str) -> Option<Vec<u8>> {
        lock(&self.objects).get(name).cloned()
    }

    /// Every upload from now on fails with `error` (without reading its body), until
    /// `None` is set.
    pub fn fail_uploads(&self, error: Option<StorageError>) {
        *lock(&self.fail_with) = error;
    }
}

/// A poisoned lock only means a test panicked while holding it; the map is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait::async_trait]
impl ArtifactStore for MemoryStore {
    fn bucket(&self) -> &str {
        &self.bucket
    }

    async fn upload(
        &self,
        object: &str,
        _content_type: &str,
        size: u64,
        body: ByteStream,
    ) -> Result<Uploaded, StorageError> {
        if let Some(e) = lock(&self.fail_with).clone() {
            return Err(e);
        }
        check_object_name(&self.bucket, object)?;
        if size > self.max_object {
            return Err(StorageError::new(
                StorageErrorKind::Other,
                format!(
                    "{} is {size} bytes, more than this in-memory store keeps ({})",
                    object_url(&self.bucket, object),
                    self.max_object
                ),
                false,
            ));
        }
        let mut body = CheckedBody::new(body, size, self.idle);
        let mut data = Vec::new();
        while let Some(chunk) = body.next().await {
            match chunk {
                Ok(c) => data.extend_from_slice(&c),
                Err(f) => return Err(f.to_error(&self.bucket, object, size)),
            }
        }
        let sha256 = body.digest().unwrap_or_default().to_string();
        lock(&self.objects).insert(object.to_string(), data);
        Ok(Uploaded { url: object_url(&self.bucket, object), size, sha256 })
    }
}

#[cfg(test)]
mod tests {
    use super::super::body::tests::{chunks, sha256_hex};
    use super::*;
    use bytes::Bytes;
    use futures::StreamExt as _;

    #[tokio::test]
    async fn stores_what_was_streamed() {
        let s = MemoryStore::new("arts");
        let up = s.upload("runs/ns/r/a b.txt", "text/plain", 5, chunks(&[b"he", b"llo"])).await.unwrap();
        assert_eq!(up, Uploaded { url: "gs://arts/runs/ns/r/a b.txt".into(), size: 5, sha256: sha256_hex(b"hello") });
        assert_eq!(s.object("runs/ns/r/a b.txt").as_deref(), Some(&b"hello"[..]));
        let empty = s.upload("e", "application/octet-stream", 0, chunks(&[])).await.unwrap();
        assert_eq!(empty.size, 0);
        assert_eq!(s.objects().len(), 2);
        assert_eq!(s.bucket(), "arts");
    }

    #[tokio::test]
    async fn bad_bodies_leave_nothing() {
        let s = MemoryStore::new("arts");
        let e = s.upload("short", "x", 9, chunks(&[b"abc"])).await.unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::Source);
        assert!(e.message.contains("gs://arts/short"), "{e}");
        let failing = futures::stream::iter(vec![Ok(Bytes::from_static(b"ab")), Err(std::io::Error::other("eof"))]);
        let e = s.upload("broken", "x", 4, failing.boxed()).await.unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::Source);
        assert!(e.message.contains("eof"), "{e}");
        let e = s.upload("long", "x", 1, chunks(&[b"ab"])).await.unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::Source);
        assert!(s.objects().is_empty());
    }

    #[tokio::test]
    async fn the_failure_knob_and_limits() {
        let s = MemoryStore::new("arts").with_max_object_size(4);
        let denied = StorageError::new(
            StorageErrorKind::PermissionDenied { permission: "storage.objects.create".into() },
            "no",
            false,
        );
        s.fail_uploads(Some(denied.clone()));
        assert_eq!(s.upload("a", "x", 1, chunks(&[b"a"])).await.unwrap_err(), denied);
        s.fail_uploads(None);
        assert!(s.upload("a", "x", 1, chunks(&[b"a"])).await.is_ok());
        let e = s.upload("big", "x", 5, chunks(&[b"abcde"])).await.unwrap_err();
        assert_eq!(e.kind, StorageErrorKind::Other);
        let e = s.upload("/lead", "x", 1, chunks(&[b"a"])).await.unwrap_err();
        assert!(e.message.contains("starts with '/'"), "{e}");
        assert_eq!(s.objects().keys().collect::<Vec<_>>(), ["a"]);
    }
}

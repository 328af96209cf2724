//! Placeholder of the storage edge's interface (replaced by the real module on merge).

/// A body to upload: chunks as they arrive (from an SSH channel), never a whole file in memory.
pub type ByteStream = futures::stream::BoxStream<'static, std::io::Result<bytes::Bytes>>;

/// What was stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Uploaded {
    pub url: String,
    pub size: u64,
    pub sha256: String,
}

#[async_trait::async_trait]
pub trait ArtifactStore: Send + Sync + 'static {
    fn bucket(&self) -> &str;
    async fn upload(
        &self,
        object: &str,
        content_type: &str,
        size: u64,
        body: ByteStream,
    ) -> Result<Uploaded, StorageError>;
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StorageError {
    pub kind: StorageErrorKind,
    pub message: String,
    pub retryable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StorageErrorKind {
    PermissionDenied { permission: String },
    BucketNotFound,
    Source,
    Transient,
    Other,
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

//! A body stream checked as it passes: counted against the expected length, hashed with
//! sha256, and given a time limit per chunk. Both stores read their bodies through it, so the
//! same rules hold in production and in the scenario tests.
//!
//! The last bytes are only handed on once the stream has been seen to end: an uploader that
//! finalizes an object on its last chunk (a resumable upload with a known length) must never
//! do so for a stream that turns out longer, or that fails right after.

use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use sha2::{Digest, Sha256};

use super::{ByteStream, StorageError, StorageErrorKind};

/// Why a body was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    /// The stream itself failed after `after` bytes.
    Read { after: u64, error: String },
    /// It ended after `got` bytes, fewer than expected.
    TooShort { got: u64 },
    /// It went on past the expected length (at least `at_least` bytes).
    TooLong { at_least: u64 },
    /// No chunk for `secs` seconds after `after` bytes.
    Stalled { after: u64, secs: u64 },
}

impl BodyFailure {
    /// As the store's error, naming where the bytes were going.
    pub(crate) fn to_error(&self, bucket: &str, object: &str, expected: u64) -> StorageError {
        let url = super::object_url(bucket, object);
        let (message, retryable) = match self {
            BodyFailure::Read { after, error } => (
                format!(
                    "reading the artifact for {url} failed after {after} of {expected} bytes: {}; nothing was stored",
                    crate::text::head(error, 300)
                ),
                true,
            ),
            BodyFailure::TooShort { got } => (
                format!(
                    "the artifact for {url} ended after {got} bytes, but {expected} were expected (was the file \
                     changed while it was copied?); nothing was stored"
                ),
                false,
            ),
            BodyFailure::TooLong { at_least } => (
                format!(
                    "the artifact for {url} is longer than the {expected} bytes expected (at least {at_least}; was \
                     the file changed while it was copied?); nothing was stored"
                ),
                false,
            ),
            BodyFailure::Stalled { after, secs } => (
                format!(
                    "reading the artifact for {url} stalled: no data for {secs}s after {after} of {expected} bytes; \
                     nothing was stored"
                ),
                true,
            ),
        };
        StorageError::new(StorageErrorKind::Source, message, retryable)
    }
}

enum State {
    Streaming,
    /// The stream ended at the expected length; `digest` is the sha256 of all of it.
    Done {
        digest: String,
    },
    Failed(BodyFailure),
}

/// The checked stream. Once it has failed, every further read fails the same way, so a retry
/// inside an uploader can never continue from a wrong offset.
pub(crate) struct CheckedBody {
    stream: ByteStream,
    expected: u64,
    sent: u64,
    hasher: Sha256,
    idle: Duration,
    state: State,
}

impl CheckedBody {
    pub(crate) fn new(stream: ByteStream, expected: u64, idle: Duration) -> Self {
        Self { stream, expected, sent: 0, hasher: Sha256::new(), idle, state: State::Streaming }
    }

    /// Bytes handed on so far.
    pub(crate) fn sent(&self) -> u64 {
        self.sent
    }

    /// The sha256 (lowercase hex) once the whole body has passed.
    pub(crate) fn digest(&self) -> Option<&str> {
        match &self.state {
            State::Done { digest } => Some(digest),
            _ => None,
        }
    }

    pub(crate) fn failure(&self) -> Option<&BodyFailure> {
        match &self.state {
            State::Failed(f) => Some(f),
            _ => None,
        }
    }

    fn fail(&mut self, f: BodyFailure) -> BodyFailure {
        self.state = State::Failed(f.clone());
        f
    }

    /// The next non-empty chunk from the inner stream, within the idle limit.
    async fn pull(&mut self) -> Result<Option<Bytes>, BodyFailure> {
        loop {
            match tokio::time::timeout(self.idle, self.stream.next()).await {
                Err(_) => return Err(BodyFailure::Stalled { after: self.sent, secs: self.idle.as_secs() }),
                Ok(None) => return Ok(None),
                Ok(Some(Err(e))) => return Err(BodyFailure::Read { after: self.sent, error: e.to_string() }),
                Ok(Some(Ok(b))) if b.is_empty() => continue,
                Ok(Some(Ok(b))) => return Ok(Some(b)),
            }
        }
    }

    /// The next checked chunk; `None` once the body has ended at exactly the expected length.
    pub(crate) async fn next(&mut self) -> Option<Result<Bytes, BodyFailure>> {
        match &self.state {
            State::Done { .. } => return None,
            State::Failed(f) => return Some(Err(f.clone())),
            State::Streaming => {}
        }
        let chunk = match self.pull().await {
            Err(f) => return Some(Err(self.fail(f))),
            Ok(None) if self.sent == self.expected => {
                self.finish();
                return None;
            }
            Ok(None) => return Some(Err(self.fail(BodyFailure::TooShort { got: self.sent }))),
            Ok(Some(b)) => b,
        };
        let len = chunk.len() as u64;
        if self.sent.saturating_add(len) > self.expected {
            let at_least = self.sent.saturating_add(len);
            return Some(Err(self.fail(BodyFailure::TooLong { at_least })));
        }
        if self.sent + len == self.expected {
            // The last bytes: hand them on only once the stream has really ended.
            match self.pull().await {
                Err(f) => return Some(Err(self.fail(f))),
                Ok(Some(more)) => {
                    let at_least = self.expected.saturating_add(more.len() as u64);
                    return Some(Err(self.fail(BodyFailure::TooLong { at_least })));
                }
                Ok(None) => {}
            }
        }
        self.sent += len;
        self.hasher.update(&chunk);
        if self.sent == self.expected {
            self.finish();
        }
        Some(Ok(chunk))
    }

    fn finish(&mut self) {
        let digest = hex(&std::mem::take(&mut self.hasher).finalize());
        self.state = State::Done { digest };
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use futures::stream;

    pub(crate) fn chunks(parts: &[&'static [u8]]) -> ByteStream {
        stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>()).boxed()
    }

    pub(crate) fn sha256_hex(data: &[u8]) -> String {
        hex(&Sha256::digest(data))
    }

    async fn drain(b: &mut CheckedBody) -> Result<Vec<u8>, BodyFailure> {
        let mut out = Vec::new();
        while let Some(c) = b.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    const LONG: Duration = Duration::from_secs(30);

    #[tokio::test]
    async fn exact_length_passes_with_its_sha256() {
        let mut b = CheckedBody::new(chunks(&[b"hello ", b"", b"world"]), 11, LONG);
        assert_eq!(drain(&mut b).await.unwrap(), b"hello world");
        assert_eq!(b.sent(), 11);
        assert_eq!(b.digest(), Some(sha256_hex(b"hello world").as_str()));
        assert!(b.next().await.is_none(), "stays ended");
    }

    #[tokio::test]
    async fn empty_body() {
        let mut b = CheckedBody::new(chunks(&[]), 0, LONG);
        assert!(b.next().await.is_none());
        assert_eq!(b.digest(), Some("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"));
    }

    #[tokio::test]
    async fn short_and_long_bodies_fail_and_stay_failed() {
        let mut b = CheckedBody::new(chunks(&[b"abc"]), 4, LONG);
        assert_eq!(drain(&mut b).await.unwrap_err(), BodyFailure::TooShort { got: 3 });
        assert!(matches!(b.next().await, Some(Err(BodyFailure::TooShort { .. }))), "sticky");
        assert!(b.digest().is_none());

        // One chunk past the end.
        let mut b = CheckedBody::new(chunks(&[b"abcdef"]), 4, LONG);
        assert_eq!(drain(&mut b).await.unwrap_err(), BodyFailure::TooLong { at_least: 6 });

        // The expected length reached exactly, then more: the last good chunk is held back.
        let mut b = CheckedBody::new(chunks(&[b"ab", b"cd", b"e"]), 4, LONG);
        assert_eq!(b.next().await.unwrap().unwrap(), "ab");
        assert_eq!(b.next().await.unwrap().unwrap_err(), BodyFailure::TooLong { at_least: 5 });
        assert_eq!(b.sent(), 2);
        assert!(b.failure().is_some());
    }

    #[tokio::test]
    async fn an_error_right_after_the_last_byte_still_fails() {
        let s = stream::iter(vec![Ok(Bytes::from_static(b"abcd")), Err(std::io::Error::other("channel closed"))]);
        let mut b = CheckedBody::new(s.boxed(), 4, LONG);
        let e = b.next().await.unwrap().unwrap_err();
        assert_eq!(e, BodyFailure::Read { after: 0, error: "channel closed".into() });
    }

    #[tokio::test]
    async fn a_read_error_midway() {
        let s = stream::iter(vec![Ok(Bytes::from_static(b"ab")), Err(std::io::Error::other("boom"))]);
        let mut b = CheckedBody::new(s.boxed(), 10, LONG);
        assert_eq!(drain(&mut b).await.unwrap_err(), BodyFailure::Read { after: 2, error: "boom".into() });
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_fails_after_the_idle_limit() {
        let s = stream::iter(vec![Ok(Bytes::from_static(b"ab"))]).chain(stream::pending());
        let mut b = CheckedBody::new(s.boxed(), 10, Duration::from_secs(300));
        assert_eq!(drain(&mut b).await.unwrap_err(), BodyFailure::Stalled { after: 2, secs: 300 });
    }

    #[test]
    fn failures_name_the_object_and_the_lengths() {
        let e = BodyFailure::TooShort { got: 3 }.to_error("bkt", "runs/a b/ü.txt", 9);
        assert_eq!(e.kind, StorageErrorKind::Source);
        assert!(e.message.contains("gs://bkt/runs/a b/ü.txt") && e.message.contains("3 bytes"), "{e}");
        assert!(e.message.contains("9 were expected"), "{e}");
        let long_error = "é".repeat(1000);
        let e = BodyFailure::Read { after: 1, error: long_error }.to_error("bkt", "o", 9);
        assert!(e.message.len() < 600 && e.retryable, "{e}");
        assert!(BodyFailure::TooLong { at_least: 10 }.to_error("b", "o", 9).message.contains("longer"));
        assert!(BodyFailure::Stalled { after: 1, secs: 5 }.to_error("b", "o", 9).message.contains("no data for 5s"));
    }
}

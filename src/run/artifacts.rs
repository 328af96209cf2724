//! Copying a finished Run's log and artifacts to Cloud Storage, as a tracked background task:
//! each file streams from `cat` on the VM over SSH straight into the upload, so the operator
//! never holds a whole file; size and SHA-256 are those of the bytes actually sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::ArtifactStatus;
use crate::conditions::Reason;
use crate::controller::vm::VmAccess;
use crate::engine::tasks::{ProgressReporter, TaskOutcome};
use crate::ssh::SshTarget;
use crate::storage::{ArtifactStore, StorageError, StorageErrorKind};

use super::guest::{self, RunPaths};

/// Files one Run may bring back (besides its log).
pub const MAX_FILES: usize = 1000;
/// Bytes of listing output read; past this the listing is refused.
const MAX_LISTING_BYTES: usize = 4 * 1024 * 1024;
/// The output key the task's result carries the uploaded artifacts under (JSON).
pub const OUTPUT_KEY: &str = "artifacts";
/// The object name of the log, below the Run's prefix.
pub const LOG_NAME: &str = "run.log";

/// One upload task's inputs.
pub struct Job {
    pub store: Arc<dyn ArtifactStore>,
    pub vm: Arc<dyn VmAccess>,
    pub target: SshTarget,
    pub paths: RunPaths,
    pub patterns: Vec<String>,
    /// `<prefix>/<namespace>/<name>-<uid>`, without a trailing slash.
    pub object_prefix: String,
    pub max_bytes: u64,
}

/// `<prefix>/<namespace>/<run-name>-<uid>`.
pub fn object_prefix(prefix: &str, namespace: &str, name: &str, uid: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() { format!("{namespace}/{name}-{uid}") } else { format!("{prefix}/{namespace}/{name}-{uid}") }
}

/// What a failed upload says: the bucket, and for a refusal the permission.
pub fn describe(bucket: &str, what: &str, e: &StorageError) -> String {
    match &e.kind {
        StorageErrorKind::PermissionDenied { permission } => format!(
            "bucket {bucket} refused {what}: the operator's service account lacks {permission} on it (grant it roles/storage.objectCreator on the bucket): {}",
            e.message
        ),
        StorageErrorKind::BucketNotFound => {
            format!(
                "bucket {bucket} does not exist: create it, or set the operator's --artifact-bucket to one that does"
            )
        }
        StorageErrorKind::Source => format!("reading {what} from the VM failed: {}", e.message),
        StorageErrorKind::Transient | StorageErrorKind::Other => {
            format!("copying {what} to bucket {bucket} failed: {}", e.message)
        }
    }
}

async fn run_collect(job: &Job, script: &str, limit: Duration) -> Result<Vec<u8>, String> {
    let buf = Mutex::new(Vec::new());
    let overflow = Mutex::new(false);
    let collect = |chunk: crate::ssh::OutputChunk<'_>| {
        if let crate::ssh::OutputChunk::Stdout(data) = chunk {
            let mut b = buf.lock().unwrap_or_else(|e| e.into_inner());
            if b.len() + data.len() > MAX_LISTING_BYTES {
                *overflow.lock().unwrap_or_else(|e| e.into_inner()) = true;
            } else {
                b.extend_from_slice(data);
            }
        }
    };
    let out = job
        .vm
        .exec(&job.target, crate::shell::RUN_AS_USER, Some(script.as_bytes()), limit, Some(&collect))
        .await
        .map_err(|e| e.to_string())?;
    if !out.success() {
        return Err(format!(
            "exit {}: {}",
            out.exit_status,
            crate::text::tail(crate::text::lossy(&out.stderr).trim(), 512)
        ));
    }
    if *overflow.lock().unwrap_or_else(|e| e.into_inner()) {
        return Err(format!("the listing is longer than {MAX_LISTING_BYTES} bytes"));
    }
    Ok(buf.into_inner().unwrap_or_else(|e| e.into_inner()))
}

/// Streaming a file: allow a slow 1 MB/s, never less than two minutes.
fn stream_limit(size: u64) -> Duration {
    Duration::from_secs(120 + size / 1_000_000)
}

async fn copy_one(
    job: &Job,
    command: &str,
    object: &str,
    content_type: &str,
    size: u64,
    what: &str,
) -> Result<crate::storage::Uploaded, TaskOutcome> {
    let bucket = job.store.bucket().to_string();
    let stream = job.vm.exec_stream(&job.target, command, stream_limit(size)).await.map_err(|e| {
        TaskOutcome::failed(Reason::ArtifactUploadFailed, format!("reading {what} from the VM failed: {e}"))
    })?;
    job.store
        .upload(object, content_type, size, stream)
        .await
        .map_err(|e| TaskOutcome::failed(Reason::ArtifactUploadFailed, describe(&bucket, what, &e)))
}

/// The task: list, check the cap, copy the log, then every artifact.
pub async fn upload(job: Job, progress: ProgressReporter) -> TaskOutcome {
    progress.report(None, "listing artifacts");
    let listing =
        match run_collect(&job, &guest::list_artifacts(&job.paths, &job.patterns), Duration::from_secs(120)).await {
            Ok(out) => guest::parse_listing(&out),
            Err(e) => {
                return TaskOutcome::failed(Reason::ArtifactUploadFailed, format!("listing the artifacts failed: {e}"));
            }
        };
    let log_size = match run_collect(
        &job,
        &format!("stat -c %s -- {} 2>/dev/null || echo 0\n", crate::shell::shell_quote(&job.paths.log())),
        Duration::from_secs(30),
    )
    .await
    {
        Ok(out) => crate::text::lossy(&out).trim().parse::<u64>().unwrap_or(0),
        Err(e) => {
            return TaskOutcome::failed(Reason::ArtifactUploadFailed, format!("reading the log's size failed: {e}"));
        }
    };
    let mut notes = Vec::new();
    if !listing.unmatched.is_empty() {
        notes.push(format!("matched nothing: {}", listing.unmatched.join(", ")));
    }
    if !listing.outside.is_empty() {
        notes.push(format!("not copied, they lead outside the checkout: {}", listing.outside.join(", ")));
    }
    if listing.skipped > 0 {
        notes.push(format!("{} file name(s) not UTF-8 or malformed, skipped", listing.skipped));
    }
    let files_bytes: u64 = listing.files.iter().map(|(_, s)| *s).sum();
    let total = log_size.saturating_add(files_bytes);
    let too_many = listing.files.len() > MAX_FILES;
    let too_large = total > job.max_bytes;

    let mut done: Vec<ArtifactStatus> = Vec::new();
    let record = |done: &mut Vec<ArtifactStatus>, name: &str, u: crate::storage::Uploaded| {
        done.push(ArtifactStatus { name: name.to_string(), size: u.size, sha256: u.sha256, url: u.url });
    };
    // The log always goes (as long as it fits by itself).
    if log_size <= job.max_bytes {
        progress.report(None, format!("copying the log ({log_size} bytes)"));
        let object = format!("{}/{LOG_NAME}", job.object_prefix);
        match copy_one(&job, &guest::cat_log(&job.paths), &object, "text/plain; charset=utf-8", log_size, "the log")
            .await
        {
            Ok(u) => record(&mut done, LOG_NAME, u),
            Err(failed) => return failed,
        }
    }
    if too_many || too_large {
        let why = if too_many {
            format!(
                "{} files match the artifact patterns, more than the {MAX_FILES} a Run may copy",
                listing.files.len()
            )
        } else {
            format!(
                "the log and {} artifact file(s) come to {total} bytes, more than the {} bytes a Run may copy (the operator's --run-artifacts-max-bytes)",
                listing.files.len(),
                job.max_bytes
            )
        };
        let copied = if done.is_empty() { "nothing was copied" } else { "only the log was copied" };
        return with_artifacts(TaskOutcome::failed(Reason::ArtifactsTooLarge, format!("{why}; {copied}")), &done);
    }
    let count = listing.files.len();
    for (i, (path, size)) in listing.files.iter().enumerate() {
        progress.report(Some(((i * 100) / count.max(1)) as i32), format!("copying {path} ({size} bytes)"));
        let object = format!("{}/artifacts/{path}", job.object_prefix);
        match copy_one(&job, &guest::cat_artifact(&job.paths, path), &object, "application/octet-stream", *size, path)
            .await
        {
            Ok(u) => record(&mut done, path, u),
            Err(failed) => return with_artifacts(failed, &done),
        }
    }
    let mut message = format!(
        "copied the log and {count} artifact file(s), {} bytes, to gs://{}/{}/",
        done.iter().map(|a| a.size).sum::<u64>(),
        job.store.bucket(),
        job.object_prefix
    );
    if !notes.is_empty() {
        message.push_str("; ");
        message.push_str(&notes.join("; "));
    }
    with_artifacts(TaskOutcome::ok(Reason::Uploaded, message), &done)
}

fn with_artifacts(outcome: TaskOutcome, done: &[ArtifactStatus]) -> TaskOutcome {
    outcome.with_output(OUTPUT_KEY, serde_json::to_string(done).unwrap_or_default())
}

/// The artifacts a finished task recorded.
pub fn recorded(outcome: &TaskOutcome) -> Vec<ArtifactStatus> {
    outcome.outputs.get(OUTPUT_KEY).and_then(|j| serde_json::from_str(j).ok()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::vm::{HealthAnswer, OnOutput};
    use crate::engine::StepId;
    use crate::engine::tasks::TaskRegistry;
    use crate::ssh::{ExecOutput, OutputChunk, SshError};
    use crate::storage::memory::MemoryStore;

    /// A VM with a log and some files: answers the listing and size scripts, streams `cat`.
    struct Vm {
        log: Vec<u8>,
        files: Vec<(&'static str, Vec<u8>)>,
    }

    #[async_trait::async_trait]
    impl VmAccess for Vm {
        async fn exec(
            &self,
            _t: &SshTarget,
            _command: &str,
            stdin: Option<&[u8]>,
            _timeout: Duration,
            on_output: OnOutput<'_>,
        ) -> Result<ExecOutput, SshError> {
            let script = String::from_utf8_lossy(stdin.unwrap_or_default()).to_string();
            let out: Vec<u8> = if script.contains("globstar") {
                self.files.iter().flat_map(|(p, b)| format!("F {} {p}\0", b.len()).into_bytes()).collect()
            } else {
                format!("{}\n", self.log.len()).into_bytes()
            };
            if let Some(cb) = on_output {
                cb(OutputChunk::Stdout(&out));
            }
            Ok(ExecOutput::default())
        }
        async fn write_file(
            &self,
            _: &SshTarget,
            _: &str,
            _: &[u8],
            _: u32,
            _: Option<&str>,
            _: Duration,
        ) -> Result<(), SshError> {
            Ok(())
        }
        async fn exec_stream(
            &self,
            _t: &SshTarget,
            command: &str,
            _timeout: Duration,
        ) -> Result<crate::ssh::ByteStream, SshError> {
            let bytes = if command.ends_with("/log'") {
                self.log.clone()
            } else {
                self.files
                    .iter()
                    .find(|(p, _)| command.ends_with(&format!("'{p}'")))
                    .map(|(_, b)| b.clone())
                    .unwrap_or_default()
            };
            // In small chunks, as an SSH channel delivers them.
            let chunks: Vec<std::io::Result<bytes::Bytes>> =
                bytes.chunks(1000).map(|c| Ok(bytes::Bytes::copy_from_slice(c))).collect();
            Ok(Box::pin(futures::stream::iter(chunks)))
        }
        async fn forget(&self, _: &str) {}
        async fn probe_health(&self, _: &str) -> HealthAnswer {
            unreachable!()
        }
    }

    async fn upload_with(store: Arc<MemoryStore>, max_bytes: u64) -> TaskOutcome {
        let vm = Vm {
            log: b"line 1\nline 2\n".to_vec(),
            files: vec![("out/a.bin", vec![7u8; 5000]), ("b c.txt", b"x".to_vec())],
        };
        let job = Job {
            store,
            vm: Arc::new(vm),
            target: SshTarget {
                host: "h".into(),
                port: 22,
                user: "project".into(),
                pinned_host_key: String::new(),
                private_key_openssh: String::new(),
            },
            paths: RunPaths::new("project", "0b9c6f3e-2b7a-4c59-9d0e-6f1f2a3b4c5d", "/home/project/repo").unwrap(),
            patterns: vec!["out".into(), "b c.txt".into()],
            object_prefix: object_prefix("runs", "ns", "r", "u"),
            max_bytes,
        };
        let tasks = TaskRegistry::new(1);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let wake = Arc::new(move || {
            let _ = tx.send(());
        });
        tasks.spawn("run/ns/r", StepId::Artifacts, "fp", Duration::from_secs(30), wake, move |p| upload(job, p));
        loop {
            rx.recv().await;
            if let Some((_, outcome)) = tasks.take_finished("run/ns/r", StepId::Artifacts) {
                return outcome;
            }
        }
    }

    #[tokio::test]
    async fn the_log_and_every_file_are_copied_with_their_digests() {
        let store = Arc::new(MemoryStore::new("arts"));
        let outcome = upload_with(store.clone(), 1 << 20).await;
        assert!(outcome.success, "{outcome:?}");
        let arts = recorded(&outcome);
        let names: Vec<&str> = arts.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["run.log", "out/a.bin", "b c.txt"]);
        assert_eq!(store.object("runs/ns/r-u/artifacts/out/a.bin").unwrap(), vec![7u8; 5000]);
        assert_eq!(store.object("runs/ns/r-u/run.log").unwrap(), b"line 1\nline 2\n");
        let a = &arts[1];
        assert_eq!((a.size, a.url.as_str()), (5000, "gs://arts/runs/ns/r-u/artifacts/out/a.bin"));
        use sha2::Digest;
        let want: String = sha2::Sha256::digest(vec![7u8; 5000]).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(a.sha256, want);
    }

    #[tokio::test]
    async fn past_the_cap_only_the_log_is_copied() {
        let store = Arc::new(MemoryStore::new("arts"));
        let outcome = upload_with(store.clone(), 1000).await;
        assert_eq!(outcome.reason, Reason::ArtifactsTooLarge);
        assert!(
            outcome.message.contains("1000 bytes") && outcome.message.contains("only the log"),
            "{}",
            outcome.message
        );
        assert_eq!(store.objects().keys().collect::<Vec<_>>(), ["runs/ns/r-u/run.log"]);
        assert_eq!(recorded(&outcome).len(), 1);
    }

    #[tokio::test]
    async fn a_refused_bucket_names_itself_and_the_permission() {
        let store = Arc::new(MemoryStore::new("arts"));
        store.fail_uploads(Some(StorageError::new(
            StorageErrorKind::PermissionDenied { permission: "storage.objects.create".into() },
            "HTTP 403",
            false,
        )));
        let outcome = upload_with(store.clone(), 1 << 20).await;
        assert_eq!(outcome.reason, Reason::ArtifactUploadFailed);
        assert!(
            outcome.message.contains("bucket arts") && outcome.message.contains("storage.objects.create"),
            "{}",
            outcome.message
        );
        assert!(store.objects().is_empty());
    }

    #[test]
    fn object_names_and_messages() {
        assert_eq!(object_prefix("runs/", "team", "build", "u1"), "runs/team/build-u1");
        assert_eq!(object_prefix("", "team", "build", "u1"), "team/build-u1");
        let denied = StorageError {
            kind: StorageErrorKind::PermissionDenied { permission: "storage.objects.create".into() },
            message: "403".into(),
            retryable: false,
        };
        let m = describe("b1", "the log", &denied);
        assert!(m.contains("bucket b1") && m.contains("storage.objects.create"), "{m}");
        let missing = StorageError { kind: StorageErrorKind::BucketNotFound, message: "404".into(), retryable: false };
        assert!(describe("b1", "x", &missing).contains("b1 does not exist"));
        let done = vec![ArtifactStatus { name: "a".into(), size: 1, sha256: "00".into(), url: "gs://b/a".into() }];
        assert_eq!(recorded(&with_artifacts(TaskOutcome::ok(Reason::Uploaded, "m"), &done)), done);
    }
}

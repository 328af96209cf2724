//! Typed status conditions: the condition types, every reason the operator writes with its
//! severity, and the bookkeeping that sets a condition (keeping its transition time when the
//! status does not change).
//!
//! Severity decides what users and tools see: a `Progress` reason is work under way, a
//! `Transient` one is trouble the operator retries by itself (never phase `Failed`, never
//! `Stalled`), and a `Terminal` one stops progress until someone acts (`Stalled=True`, a
//! Warning event, phase `Failed`).

use chrono::{DateTime, Utc};

use crate::api::{Condition, ConditionStatus};

/// Condition types, shared by both kinds where they mean the same thing.
pub mod types {
    pub const INSTANCE_READY: &str = "InstanceReady";
    pub const PREREQUISITES_INSTALLED: &str = "PrerequisitesInstalled";
    pub const REPOSITORY_SYNCED: &str = "RepositorySynced";
    pub const REPOSITORY_CLONED: &str = "RepositoryCloned";
    pub const CODE_SERVER_CONFIGURED: &str = "CodeServerConfigured";
    pub const HEALTHY: &str = "Healthy";
    pub const ROUTED: &str = "Routed";
    pub const CREDENTIALS_CURRENT: &str = "CredentialsCurrent";
    pub const READY: &str = "Ready";
    /// Run: the work was launched on the VM.
    pub const STARTED: &str = "Started";
    /// Run: the work succeeded (as a Job's `Complete`).
    pub const COMPLETE: &str = "Complete";
    /// Run: the work failed, timed out, was cancelled or could not start.
    pub const FAILED: &str = "Failed";
    /// Run: the log and artifacts were copied to Cloud Storage.
    pub const ARTIFACTS_UPLOADED: &str = "ArtifactsUploaded";
    /// kstatus: True while the operator has work pending.
    pub const RECONCILING: &str = "Reconciling";
    /// kstatus: True when a terminal reason stops progress until someone acts.
    pub const STALLED: &str = "Stalled";
}

/// How a reason counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Severity {
    /// Done, or work under way.
    Progress,
    /// Trouble the operator retries by itself.
    Transient,
    /// Progress is stopped until someone acts.
    Terminal,
}

macro_rules! reasons {
    ($($variant:ident => $severity:ident),+ $(,)?) => {
        /// Every reason the operator writes into a condition.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum Reason { $($variant),+ }

        impl Reason {
            pub const ALL: &'static [Reason] = &[$(Reason::$variant),+];

            /// The CamelCase word written into `reason`.
            pub fn as_str(self) -> &'static str {
                match self { $(Reason::$variant => stringify!($variant)),+ }
            }

            pub fn severity(self) -> Severity {
                match self { $(Reason::$variant => Severity::$severity),+ }
            }

            /// The reason a condition carries, when it is one of ours.
            pub fn parse(s: &str) -> Option<Reason> {
                match s { $(stringify!($variant) => Some(Reason::$variant),)+ _ => None }
            }
        }
    };
}

reasons! {
    // Work done or under way.
    Ready => Progress,
    Running => Progress,
    Installed => Progress,
    Synced => Progress,
    Configured => Progress,
    Healthy => Progress,
    Routed => Progress,
    TokenApplied => Progress,
    Provisioning => Progress,
    Starting => Progress,
    Stopping => Progress,
    Stopped => Progress,
    IdleTimeout => Progress,
    RunningTimeout => Progress,
    Resizing => Progress,
    Waiting => Progress,
    InProgress => Progress,
    Pending => Progress,
    Refreshing => Progress,
    Paused => Progress,
    // Runs.
    Queued => Progress,
    Launched => Progress,
    Succeeded => Progress,
    Uploading => Progress,
    Uploaded => Progress,
    NotConfigured => Progress,
    // Retried by the operator.
    SSHUnavailable => Transient,
    VMBooting => Transient,
    NoAddress => Transient,
    RepositoryUnreachable => Transient,
    SyncFailed => Transient,
    RateLimited => Transient,
    ConcurrentUpdate => Transient,
    ComputeUnavailable => Transient,
    ComputeError => Transient,
    InstanceNotFound => Transient,
    ResourceInUse => Transient,
    OperationLost => Transient,
    KubernetesError => Transient,
    Shutdown => Transient,
    // Need a person.
    RepositoryNotFound => Terminal,
    AuthenticationFailed => Terminal,
    RevisionNotFound => Terminal,
    CheckoutConflict => Terminal,
    SecretNotFound => Terminal,
    SecretNotAllowed => Terminal,
    PermissionDenied => Terminal,
    QuotaExceeded => Terminal,
    ZoneResourcesExhausted => Terminal,
    InvalidRequest => Terminal,
    InstanceNameConflict => Terminal,
    StepTimedOut => Terminal,
    PrerequisitesFailed => Terminal,
    SSHAuthFailed => Terminal,
    HostKeyMismatch => Terminal,
    CodeServerFailed => Terminal,
    CodeServerInstallFailed => Terminal,
    Unhealthy => Terminal,
    RouteConflict => Terminal,
    AuthNoneNotAllowed => Terminal,
    InternalError => Terminal,
    // Runs.
    ProjectVMNotFound => Terminal,
    VMStopped => Terminal,
    Failed => Terminal,
    TimedOut => Terminal,
    Cancelled => Terminal,
    Killed => Terminal,
    LaunchFailed => Terminal,
    RunLost => Terminal,
    ArtifactUploadFailed => Terminal,
    ArtifactsTooLarge => Terminal,
}

impl Reason {
    /// Whether this reason stops progress until someone acts.
    pub fn is_terminal(self) -> bool {
        self.severity() == Severity::Terminal
    }

    /// Whether this reason is trouble (transient or terminal), worth a Warning event.
    pub fn is_trouble(self) -> bool {
        self.severity() != Severity::Progress
    }
}

impl PartialEq<&str> for Reason {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A condition update: everything but the bookkeeping fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub type_: &'static str,
    pub status: ConditionStatus,
    pub reason: Reason,
    pub message: String,
    pub fingerprint: Option<String>,
}

impl Update {
    pub fn new(type_: &'static str, status: ConditionStatus, reason: Reason, message: impl Into<String>) -> Self {
        Self { type_, status, reason, message: message.into(), fingerprint: None }
    }
    pub fn truthy(type_: &'static str, reason: Reason, message: impl Into<String>) -> Self {
        Self::new(type_, ConditionStatus::True, reason, message)
    }
    pub fn falsy(type_: &'static str, reason: Reason, message: impl Into<String>) -> Self {
        Self::new(type_, ConditionStatus::False, reason, message)
    }
    pub fn with_fingerprint(mut self, fingerprint: Option<String>) -> Self {
        self.fingerprint = fingerprint;
        self
    }
}

/// Sets a condition in `conditions`. `lastTransitionTime` moves only when the status
/// changes; a missing fingerprint in the update keeps the recorded one, so a step's
/// last-success fingerprint survives transient failures.
pub fn set(conditions: &mut Vec<Condition>, update: Update, generation: Option<i64>, now: DateTime<Utc>) {
    let message = crate::text::clip(&update.message, MAX_MESSAGE_BYTES);
    let now = crate::clock::time(now);
    match conditions.iter_mut().find(|c| c.type_ == update.type_) {
        Some(existing) => {
            if existing.status != update.status || existing.last_transition_time.is_none() {
                existing.last_transition_time = Some(now);
            }
            existing.status = update.status;
            existing.reason = update.reason.as_str().to_string();
            existing.message = message;
            existing.observed_generation = generation;
            if update.fingerprint.is_some() {
                existing.fingerprint = update.fingerprint;
            }
        }
        None => conditions.push(Condition {
            type_: update.type_.to_string(),
            status: update.status,
            reason: update.reason.as_str().to_string(),
            message,
            last_transition_time: Some(now),
            observed_generation: generation,
            fingerprint: update.fingerprint,
        }),
    }
}

/// Removes the recorded fingerprint of a condition, forcing its step to run again.
pub fn clear_fingerprint(conditions: &mut [Condition], type_: &str) {
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        c.fingerprint = None;
    }
}

/// Finds a condition by type.
pub fn get<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition is present and True.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    get(conditions, type_).is_some_and(|c| c.status == ConditionStatus::True)
}

/// The reason of a condition that is present and False, when it is one of ours.
pub fn false_reason(conditions: &[Condition], type_: &str) -> Option<Reason> {
    get(conditions, type_).filter(|c| c.status == ConditionStatus::False).and_then(|c| Reason::parse(&c.reason))
}

/// Condition messages are capped so a long log tail cannot bloat the object.
pub const MAX_MESSAGE_BYTES: usize = 2048;

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, s).unwrap()
    }

    fn update(status: ConditionStatus, reason: Reason) -> Update {
        Update::new(types::READY, status, reason, "msg")
    }

    #[test]
    fn new_condition_gets_transition_time() {
        let mut c = vec![];
        set(&mut c, update(ConditionStatus::False, Reason::Provisioning), Some(1), at(1));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time, Some(crate::clock::time(at(1))));
        assert_eq!(c[0].observed_generation, Some(1));
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let mut c = vec![];
        set(&mut c, update(ConditionStatus::False, Reason::Provisioning), Some(1), at(1));
        set(&mut c, update(ConditionStatus::False, Reason::InProgress), Some(2), at(2));
        assert_eq!(c[0].last_transition_time, Some(crate::clock::time(at(1))));
        assert_eq!(c[0].reason, "InProgress");
        assert_eq!(c[0].observed_generation, Some(2));
    }

    #[test]
    fn changed_status_moves_transition_time() {
        let mut c = vec![];
        set(&mut c, update(ConditionStatus::False, Reason::Provisioning), Some(1), at(1));
        set(&mut c, update(ConditionStatus::True, Reason::Ready), Some(1), at(2));
        assert_eq!(c[0].last_transition_time, Some(crate::clock::time(at(2))));
        assert_eq!(c[0].status, ConditionStatus::True);
    }

    #[test]
    fn fingerprint_survives_failure_without_fingerprint() {
        let mut c = vec![];
        set(&mut c, update(ConditionStatus::True, Reason::Synced).with_fingerprint(Some("fp1".into())), None, at(1));
        set(&mut c, update(ConditionStatus::False, Reason::SyncFailed), None, at(2));
        assert_eq!(c[0].fingerprint.as_deref(), Some("fp1"));
        clear_fingerprint(&mut c, types::READY);
        assert_eq!(c[0].fingerprint, None);
    }

    #[test]
    fn long_messages_keep_their_tail() {
        let mut c = vec![];
        let long = format!("{}END", "é".repeat(5000));
        set(&mut c, Update::falsy(types::READY, Reason::PrerequisitesFailed, long), None, at(1));
        assert!(c[0].message.len() <= MAX_MESSAGE_BYTES);
        assert!(c[0].message.ends_with("END"));
    }

    #[test]
    fn lookups() {
        let mut c = vec![];
        set(&mut c, update(ConditionStatus::True, Reason::Ready), None, at(1));
        set(&mut c, Update::falsy(types::HEALTHY, Reason::Unhealthy, "x"), None, at(1));
        assert!(is_true(&c, types::READY));
        assert!(!is_true(&c, types::HEALTHY));
        assert_eq!(false_reason(&c, types::HEALTHY), Some(Reason::Unhealthy));
        assert!(get(&c, types::ROUTED).is_none());
    }

    #[test]
    fn reasons_round_trip_and_the_error_table_is_terminal() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.as_str()), Some(*r));
        }
        // DESIGN.md's error table: each of these stops progress until someone acts.
        for r in [
            "RepositoryNotFound",
            "AuthenticationFailed",
            "RevisionNotFound",
            "StepTimedOut",
            "SecretNotFound",
            "SecretNotAllowed",
            "QuotaExceeded",
            "ZoneResourcesExhausted",
            "PermissionDenied",
            "SSHAuthFailed",
            "HostKeyMismatch",
            "PrerequisitesFailed",
            "Unhealthy",
            "RouteConflict",
            "CodeServerInstallFailed",
        ] {
            assert!(Reason::parse(r).is_some_and(Reason::is_terminal), "{r}");
        }
        // A dropped SSH channel on a booting VM is not a failure.
        assert_eq!(Reason::SSHUnavailable.severity(), Severity::Transient);
        assert_eq!(Reason::Waiting.severity(), Severity::Progress);
    }
}

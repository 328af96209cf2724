//! Condition bookkeeping: set a condition, keeping its transition time when the status does
//! not change, and read conditions back.

use crate::api::Condition;

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
}

/// Condition status values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }
}

/// A condition update: everything but the bookkeeping fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Update {
    pub type_: &'static str,
    pub status: Status,
    pub reason: String,
    pub message: String,
    pub fingerprint: Option<String>,
}

impl Update {
    pub fn new(type_: &'static str, status: Status, reason: impl Into<String>, message: impl Into<String>) -> Self {
        Self { type_, status, reason: reason.into(), message: message.into(), fingerprint: None }
    }
    pub fn with_fingerprint(mut self, fingerprint: Option<String>) -> Self {
        self.fingerprint = fingerprint;
        self
    }
}

/// Sets a condition in `conditions`. `lastTransitionTime` moves only when the status
/// changes; a missing fingerprint in the update keeps the recorded one, so a step's
/// last-success fingerprint survives transient failures.
pub fn set(conditions: &mut Vec<Condition>, update: Update, generation: Option<i64>, now: &str) {
    let message = truncate_message(&update.message);
    match conditions.iter_mut().find(|c| c.type_ == update.type_) {
        Some(existing) => {
            if existing.status != update.status.as_str() || existing.last_transition_time.is_none() {
                existing.last_transition_time = Some(now.to_string());
            }
            existing.status = update.status.as_str().to_string();
            existing.reason = update.reason;
            existing.message = message;
            existing.observed_generation = generation;
            if update.fingerprint.is_some() {
                existing.fingerprint = update.fingerprint;
            }
        }
        None => conditions.push(Condition {
            type_: update.type_.to_string(),
            status: update.status.as_str().to_string(),
            reason: update.reason,
            message,
            last_transition_time: Some(now.to_string()),
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
    get(conditions, type_).is_some_and(|c| c.status == "True")
}

/// Condition messages are capped so a long log tail cannot bloat the object.
pub const MAX_MESSAGE_BYTES: usize = 2048;

fn truncate_message(message: &str) -> String {
    crate::text::clip(message, MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(status: Status, reason: &str) -> Update {
        Update::new(types::READY, status, reason, "msg")
    }

    #[test]
    fn new_condition_gets_transition_time() {
        let mut c = vec![];
        set(&mut c, update(Status::False, "Provisioning"), Some(1), "t1");
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].last_transition_time.as_deref(), Some("t1"));
        assert_eq!(c[0].observed_generation, Some(1));
    }

    #[test]
    fn unchanged_status_keeps_transition_time() {
        let mut c = vec![];
        set(&mut c, update(Status::False, "Provisioning"), Some(1), "t1");
        set(&mut c, update(Status::False, "Installing"), Some(2), "t2");
        assert_eq!(c[0].last_transition_time.as_deref(), Some("t1"));
        assert_eq!(c[0].reason, "Installing");
        assert_eq!(c[0].observed_generation, Some(2));
    }

    #[test]
    fn changed_status_moves_transition_time() {
        let mut c = vec![];
        set(&mut c, update(Status::False, "Provisioning"), Some(1), "t1");
        set(&mut c, update(Status::True, "Ready"), Some(1), "t2");
        assert_eq!(c[0].last_transition_time.as_deref(), Some("t2"));
        assert_eq!(c[0].status, "True");
    }

    #[test]
    fn fingerprint_survives_failure_without_fingerprint() {
        let mut c = vec![];
        set(&mut c, update(Status::True, "Done").with_fingerprint(Some("fp1".into())), None, "t1");
        set(&mut c, update(Status::False, "Failed"), None, "t2");
        assert_eq!(c[0].fingerprint.as_deref(), Some("fp1"));
        clear_fingerprint(&mut c, types::READY);
        assert_eq!(c[0].fingerprint, None);
    }

    #[test]
    fn long_messages_keep_their_tail() {
        let mut c = vec![];
        let long = format!("{}END", "x".repeat(5000));
        set(&mut c, Update::new(types::READY, Status::False, "R", long), None, "t");
        assert!(c[0].message.len() <= MAX_MESSAGE_BYTES);
        assert!(c[0].message.ends_with("END"));
    }

    #[test]
    fn lookups() {
        let mut c = vec![];
        set(&mut c, update(Status::True, "Ready"), None, "t");
        assert!(is_true(&c, types::READY));
        assert!(!is_true(&c, types::HEALTHY));
        assert!(get(&c, types::HEALTHY).is_none());
    }
}

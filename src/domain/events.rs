//! Events the reconciler publishes (`messages.md`, "Events").

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::{FailureCode, JobType, Ticket};

pub const EVENT_SCHEMA_VERSION: u32 = 1;

/// `failures` lists at most this many entries; `failures_truncated` says when there were more.
pub const MAX_FAILURES_LISTED: usize = 1_000;

/// Fields every event about a job carries.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct EventHeader {
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: &'static str,
    pub schema_version: u32,
    pub occurred_at: DateTime<Utc>,
    pub job_id: Uuid,
    pub source_message_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ticket: Option<Ticket>,
}

impl EventHeader {
    pub fn new(
        event_type: &'static str,
        job_id: Uuid,
        source_message_id: String,
        ticket: Option<Ticket>,
    ) -> Self {
        Self {
            event_id: Uuid::now_v7(),
            event_type,
            schema_version: EVENT_SCHEMA_VERSION,
            occurred_at: Utc::now(),
            job_id,
            source_message_id,
            ticket,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Schedule {
    Immediate,
    OffPeak,
}

impl Schedule {
    /// The label in events, metrics and the `jobs.schedule` column.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Immediate => "immediate",
            Self::OffPeak => "off_peak",
        }
    }
}

/// Published once the job is planned.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobAccepted {
    #[serde(flatten)]
    pub header: EventHeader,
    pub job_type: JobType,
    pub total: u64,
    pub schedule: Schedule,
    pub earliest_start: DateTime<Utc>,
}

impl JobAccepted {
    pub const TYPE: &'static str = "job.accepted";
}

/// What a planned job would do to each of its users (contracts 1.1, "Guard rails on large
/// changes", and 1.2, "Guard rails judge every job type"), counted at planning.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, JsonSchema)]
pub struct ChangeEffect {
    /// Users who would hold no licence of the policy afterwards (a revert taking back the
    /// licence a job gave to users who had none). Members leaving a policy are not counted
    /// here: they keep their licence (`members_leaving`).
    pub licence_removed: u64,
    /// Members whose licence the job changes (the policy's licence changed, or a move from a
    /// policy of another licence).
    pub licence_changed: u64,
    /// Members whose licence stays and whose toggles change.
    pub toggles_changed: u64,
    /// Members the job leaves as they are.
    pub unchanged: u64,
    /// Members new to every policy, who get a licence (beyond the contract's four: additive).
    pub licence_added: u64,
    /// Members leaving the policy (dropped from its member list), who keep the licence they
    /// hold (contract 1.2; the 1.1 example counted them as `licence_removed`). Not required:
    /// a 1.1 event without it stays valid.
    #[serde(default)]
    pub members_leaving: u64,
}

impl ChangeEffect {
    /// What the guard rail counts: users who lose or change their licence, and members
    /// leaving the policy. Those keep their licence, but a list that drops most of a
    /// policy's members is more likely cut short (the portal's update timing out) than
    /// meant, and an operator should see it before the policy's definition forgets them.
    pub fn affected(&self) -> u64 {
        self.licence_removed + self.licence_changed + self.members_leaving
    }
}

/// The thresholds a job's effect was over.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, serde::Deserialize, JsonSchema)]
pub struct ApprovalThreshold {
    /// `engine.approval.users`: a job removing or changing the licence of this many users waits.
    pub users: u64,
    /// `engine.approval.share`: the same as a share of the policy's members (0 to 1).
    #[schemars(range(min = 0.0, max = 1.0))]
    pub share: f64,
}

/// Published when a planned job waits for an operator's approval.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobApprovalRequired {
    #[serde(flatten)]
    pub header: EventHeader,
    pub job_type: JobType,
    /// What the job is about: the policy and the job's version.
    pub subject: Value,
    pub effect: ChangeEffect,
    pub threshold: ApprovalThreshold,
}

impl JobApprovalRequired {
    pub const TYPE: &'static str = "job.approval_required";
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    PartiallySucceeded,
    Failed,
    Rejected,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Succeeded => "succeeded",
            Self::PartiallySucceeded => "partially_succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct Counts {
    pub total: u64,
    pub changed: u64,
    pub already_compliant: u64,
    pub failed: u64,
    pub skipped: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, JsonSchema)]
pub struct Failure {
    pub item: String,
    pub code: FailureCode,
    pub detail: String,
}

/// Exactly one per accepted job; resolves the ticket.
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct JobCompleted {
    #[serde(flatten)]
    pub header: EventHeader,
    /// Absent only when the message's type could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job_type: Option<JobType>,
    /// What the job was about (a policy and version, a user and role, a batch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject: Option<Value>,
    pub outcome: Outcome,
    pub dry_run: bool,
    pub counts: Counts,
    pub failures: Vec<Failure>,
    pub failures_truncated: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
}

impl JobCompleted {
    pub const TYPE: &'static str = "job.completed";

    /// Cap `failures` at [`MAX_FAILURES_LISTED`], setting `failures_truncated`.
    pub fn with_failures(mut self, mut failures: Vec<Failure>) -> Self {
        self.failures_truncated = failures.len() > MAX_FAILURES_LISTED;
        failures.truncate(MAX_FAILURES_LISTED);
        self.failures = failures;
        self
    }
}

/// An email for the notification service to send (`template` names its text).
#[derive(Debug, Clone, Serialize, JsonSchema)]
pub struct NotificationEmail {
    #[serde(flatten)]
    pub header: EventHeader,
    pub template: &'static str,
    pub to: String,
    pub data: Value,
}

impl NotificationEmail {
    pub const TYPE: &'static str = "notification.email";
    /// Sent when a Phone System admin role is granted (never when one is removed).
    pub const PHONE_SYSTEM_ADMIN_GRANTED: &'static str = "phone_system_admin_granted";
}

/// `drift.detected` (contract 1.1, "Drift"): a drift sweep of one policy (or ODS code) found
/// tenant state that differs from what was applied. Published once per sweep job, and only
/// when `counts.drifted > 0`. The header carries `source_message_id` (the sweep job's
/// `message_id`, as every event about a job does) and never a ticket.
#[derive(Debug, Clone, Serialize)]
pub struct DriftDetected {
    #[serde(flatten)]
    pub header: EventHeader,
    /// `{"policy_id", "version"}` or `{"ods_code"}`.
    pub subject: Value,
    pub counts: DriftCounts,
    /// The first drifted or failed items, at most [`MAX_DRIFT_ITEMS_LISTED`].
    pub items: Vec<DriftItem>,
    pub items_truncated: bool,
}

impl DriftDetected {
    pub const TYPE: &'static str = "drift.detected";
}

/// `items` of `drift.detected` lists at most this many entries (the contract's schema).
pub const MAX_DRIFT_ITEMS_LISTED: usize = 1_000;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct DriftCounts {
    /// Items whose tenant state was read and compared.
    pub checked: u64,
    /// Items that did not hold what was applied (or could not be shown to: failed).
    pub drifted: u64,
    /// Of those, brought back to what was applied (repair mode; 0 when only reporting).
    pub repaired: u64,
    /// Items whose read or repair failed.
    pub failed: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DriftItem {
    pub item: String,
    /// What the tenant held.
    pub found: Value,
    /// What was applied (the policy's state).
    pub expected: Value,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notification_email_has_the_contract_shape() {
        let header = EventHeader::new(NotificationEmail::TYPE, Uuid::nil(), "m-1".into(), None);
        let event = NotificationEmail {
            header,
            template: "portal_invitation",
            to: "clerk@anyparish.gov.uk".into(),
            data: serde_json::json!({ "contact_id": "c-1001" }),
        };
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "notification.email");
        assert_eq!(json["template"], "portal_invitation");
        assert_eq!(json["to"], "clerk@anyparish.gov.uk");
        assert_eq!(json["data"]["contact_id"], "c-1001");
        assert_eq!(json["source_message_id"], "m-1");
        assert!(json.get("ticket").is_none());
        for key in ["event_id", "schema_version", "occurred_at", "job_id"] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
    }

    #[test]
    fn completed_has_the_contract_shape() {
        let header = EventHeader::new(
            JobCompleted::TYPE,
            Uuid::nil(),
            "m-1".into(),
            Some(Ticket::new("INC1", "a@nhs.net")),
        );
        let now = Utc::now();
        let event = JobCompleted {
            header,
            job_type: Some(JobType::PolicyChanged),
            subject: None,
            outcome: Outcome::PartiallySucceeded,
            dry_run: false,
            counts: Counts::default(),
            failures: vec![],
            failures_truncated: false,
            started_at: now,
            finished_at: now,
        }
        .with_failures(
            (0..1_001)
                .map(|i| Failure {
                    item: format!("u{i}@nhs.net"),
                    code: FailureCode::UserNotFound,
                    detail: String::new(),
                })
                .collect(),
        );
        let json = serde_json::to_value(&event).unwrap();
        assert_eq!(json["type"], "job.completed");
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["job_type"], "policy.changed");
        assert_eq!(json["outcome"], "partially_succeeded");
        assert_eq!(json["ticket"]["reference"], "INC1");
        assert_eq!(json["failures"].as_array().unwrap().len(), 1_000);
        assert_eq!(json["failures_truncated"], true);
        assert_eq!(json["failures"][0]["code"], "user_not_found");
        for key in [
            "event_id",
            "occurred_at",
            "job_id",
            "source_message_id",
            "counts",
        ] {
            assert!(json.get(key).is_some(), "{key} missing");
        }
    }
}

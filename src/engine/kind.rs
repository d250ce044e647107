//! What a job kind provides to the engine: a planner and an applier.
//!
//! The engine owns everything else (claiming jobs and chunks, leases, recording outcomes,
//! completion events), so a new job kind is a new [`JobKind`], not a new pipeline.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::EngineError;
use crate::configuration::EngineSettings;
use crate::domain::{Actor, Failure, FailureCode, JobPayload, JobType, Ticket};
use crate::tenant::Tenant;

/// A stored job, as the planner sees it.
#[derive(Debug, Clone)]
pub struct StoredJob {
    pub id: Uuid,
    pub message_id: String,
    pub job_type: JobType,
    pub dry_run: bool,
    pub ticket: Option<Ticket>,
    pub actor: Option<Actor>,
    pub payload: JobPayload,
    pub received_at: DateTime<Utc>,
}

/// What the planner decided.
#[derive(Debug)]
pub enum Plan {
    /// Work to do: `items` in order, with the kind's plan snapshot for the applier.
    Accept {
        subject: Value,
        plan: Value,
        items: PlannedItems,
    },
    /// The job is invalid; nothing was written anywhere.
    Reject {
        subject: Option<Value>,
        failures: Vec<Failure>,
    },
    /// The job cannot be done (for example its policy never arrived).
    Fail {
        subject: Option<Value>,
        failures: Vec<Failure>,
    },
    /// Not yet: plan again at `until`.
    Wait { until: DateTime<Utc> },
}

/// The items of an accepted plan.
#[derive(Debug)]
pub enum PlannedItems {
    /// Listed by the planner, in order.
    Listed(Vec<PlannedItem>),
    /// Too many to hold in the worker (a policy of 200,000 members): left by the planner in
    /// a temporary table of its transaction with columns `seq int` (from 0, in item order)
    /// and `item text`, `count` rows; `table` names it (`store::work::PLANNED_ITEMS`, or
    /// another table the store defines with that shape).
    Staged { table: &'static str, count: u64 },
}

impl PlannedItems {
    pub fn len(&self) -> u64 {
        match self {
            Self::Listed(items) => items.len() as u64,
            Self::Staged { count, .. } => *count,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Vec<PlannedItem>> for PlannedItems {
    fn from(items: Vec<PlannedItem>) -> Self {
        Self::Listed(items)
    }
}

#[derive(Debug, Clone)]
pub struct PlannedItem {
    /// What the item is about, as reported in failures (an email address, a contact id).
    pub key: String,
    /// Item-specific instructions for the applier.
    pub spec: Option<Value>,
}

impl PlannedItem {
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            spec: None,
        }
    }
}

/// The planner's view: the job, its transaction (desired-state changes commit together with
/// the plan), and the tenant for validation.
pub struct PlanContext<'a, 'c> {
    pub tx: &'a mut Transaction<'c, Postgres>,
    pub tenant: &'a Arc<dyn Tenant>,
    pub settings: &'a EngineSettings,
    pub job: &'a StoredJob,
}

/// A planned job, as the applier sees it.
#[derive(Debug, Clone)]
pub struct JobHeader {
    pub id: Uuid,
    pub job_type: JobType,
    pub dry_run: bool,
    pub plan: Value,
}

/// One item of a chunk, not yet done.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub seq: i32,
    pub key: String,
    pub spec: Option<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ItemOutcome {
    /// The tenant was changed (or, in a dry run, would be) and now holds the desired state.
    Changed,
    /// The tenant already held the desired state; nothing was written.
    AlreadyCompliant,
    Failed,
    /// Deliberately not done (superseded by a newer job, cancelled, excluded from a batch).
    Skipped,
}

impl ItemOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Changed => "changed",
            Self::AlreadyCompliant => "already_compliant",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
        }
    }
}

#[derive(Debug, Clone)]
pub struct ItemResult {
    pub seq: i32,
    pub outcome: ItemOutcome,
    /// Set for `Failed`; for `Skipped`, the reason (job.completed lists it in `failures`).
    pub code: Option<FailureCode>,
    pub detail: Option<String>,
}

impl ItemResult {
    pub fn ok(seq: i32, outcome: ItemOutcome) -> Self {
        Self {
            seq,
            outcome,
            code: None,
            detail: None,
        }
    }

    pub fn failed(seq: i32, code: FailureCode, detail: impl Into<String>) -> Self {
        Self {
            seq,
            outcome: ItemOutcome::Failed,
            code: Some(code),
            detail: Some(detail.into()),
        }
    }

    pub fn skipped(seq: i32, code: FailureCode, detail: impl Into<String>) -> Self {
        Self {
            seq,
            outcome: ItemOutcome::Skipped,
            code: Some(code),
            detail: Some(detail.into()),
        }
    }
}

/// The applier's view.
pub struct ApplyContext<'a> {
    pub pool: &'a PgPool,
    pub tenant: &'a Arc<dyn Tenant>,
    pub settings: &'a EngineSettings,
    pub job: &'a JobHeader,
    /// Cancelled when the chunk's lease is lost or the worker stops: stop at the next safe point.
    pub cancel: &'a CancellationToken,
}

#[async_trait]
pub trait JobKind: Send + Sync {
    /// The job types this kind plans and applies.
    fn job_types(&self) -> &'static [JobType];

    /// A payload field holding a list too long to pass through the worker whole: the planner
    /// gets the payload with it emptied (`[]`) and reads the list from the stored job in
    /// the database instead.
    fn list_left_in_database(&self) -> Option<&'static str> {
        None
    }

    /// Validate the job, update desired state (unless a dry run) and list its items.
    async fn plan(&self, ctx: PlanContext<'_, '_>) -> Result<Plan, EngineError>;

    /// Bring `items` to their desired state in the tenant and verify it; one result per item
    /// that was settled (items left out are retried with the chunk).
    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        items: &[WorkItem],
    ) -> Result<Vec<ItemResult>, EngineError>;
}

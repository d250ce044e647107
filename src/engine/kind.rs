//! What a job kind provides to the engine: a typed planner and a typed applier.
//!
//! A kind is one job type (as river's and underway's job arguments are): its payload, the plan
//! it hands its applier and the instructions of each item are Rust types. The engine owns
//! everything else (claiming jobs and chunks, leases, recording outcomes, completion events)
//! and stores plans and item specs as JSON: they are serialised only at the store boundary
//! ([`super::registry`]), so a kind never sees `serde_json::Value` but for the event subject,
//! which is free-form by contract.
//!
//! Kinds that share an applier (the two policy jobs, the five admin-role jobs) share it as a
//! function or a value of their module, not by dispatching on the job type.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::EngineError;
use super::access::AccessGuard;
use super::clock::Clock;
use super::gate::ChunkWrites;
use super::retry::ItemRetry;
use crate::configuration::EngineSettings;
use crate::domain::{Actor, ChangeEffect, Failure, FailureCode, JobType, Ticket};
use crate::tenant::Tenant;

/// A job kind: the planner and applier of one job type.
#[async_trait]
pub trait JobKind: Send + Sync + 'static {
    /// The job message's payload, as the contract defines it for [`JobKind::JOB_TYPE`].
    type Payload: DeserializeOwned + Send + Sync;
    /// What the planner hands the applier for the whole job (stored in `jobs.plan`).
    type Plan: Serialize + DeserializeOwned + Send + Sync;
    /// An item's instructions (stored in `job_items.spec`); `()` for kinds whose items are
    /// their keys alone.
    type Spec: Serialize + DeserializeOwned + Send + Sync;

    /// The job type this kind plans and applies.
    const JOB_TYPE: JobType;

    /// A payload field holding a list too long to pass through the worker whole: the planner
    /// gets the payload with it emptied (`[]`) and reads the list from the stored job in
    /// the database instead.
    const LIST_LEFT_IN_DATABASE: Option<&'static str> = None;

    /// Whether applying writes to the tenant. Only such jobs wait for the off-peak windows
    /// when large: the windows protect the tenant's write budget and its daytime users, and a
    /// kind that writes only to our own store (portal access) has nothing to protect them from.
    const WRITES_TO_TENANT: bool = true;

    /// Background work the service schedules itself (drift sweeps): always off-peak, whatever
    /// its size, and claimed only when no other job's chunk waits.
    const BACKGROUND: bool = false;

    /// Validate the job, update desired state (unless a dry run) and list its items.
    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: Self::Payload,
    ) -> Result<Plan<Self::Plan, Self::Spec>, EngineError>;

    /// Bring `items` to their desired state in the tenant and verify it; one result per item
    /// that was settled (items left out are retried with the chunk).
    async fn apply(
        &self,
        ctx: &ApplyContext<'_, Self::Plan>,
        items: &[WorkItem<Self::Spec>],
    ) -> Result<Vec<ItemResult>, EngineError>;
}

/// A stored job, as the planner sees it (its payload is given beside it, typed).
#[derive(Debug, Clone)]
pub struct StoredJob {
    pub id: Uuid,
    pub message_id: String,
    pub job_type: JobType,
    pub dry_run: bool,
    pub ticket: Option<Ticket>,
    pub actor: Option<Actor>,
    pub received_at: DateTime<Utc>,
}

/// What the planner decided. `P` is the kind's plan, `S` its item spec.
#[derive(Debug)]
pub enum Plan<P, S> {
    /// Work to do: `items` in order, with the kind's plan for the applier. `subject` is the
    /// free-form subject of the job's events.
    Accept {
        subject: Value,
        plan: P,
        items: PlannedItems<S>,
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
    /// Not yet: plan again at `until` (on the engine's clock).
    Wait { until: DateTime<Utc> },
}

/// The items of an accepted plan.
#[derive(Debug)]
pub enum PlannedItems<S> {
    /// Listed by the planner, in order.
    Listed(Vec<PlannedItem<S>>),
    /// Too many to hold in the worker (a policy of 200,000 members): left by the planner in
    /// a temporary table of its transaction with columns `seq int` (from 0, in item order)
    /// and `item text`, `count` rows; `table` names it (`store::work::PLANNED_ITEMS`, or
    /// another table the store defines with that shape). Such items have no spec.
    Staged { table: &'static str, count: u64 },
}

impl<S> PlannedItems<S> {
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

impl<S> From<Vec<PlannedItem<S>>> for PlannedItems<S> {
    fn from(items: Vec<PlannedItem<S>>) -> Self {
        Self::Listed(items)
    }
}

#[derive(Debug, Clone)]
pub struct PlannedItem<S> {
    /// What the item is about, as reported in failures (an email address, a contact id).
    pub key: String,
    /// Item-specific instructions for the applier.
    pub spec: Option<S>,
}

impl<S> PlannedItem<S> {
    pub fn new(key: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            spec: None,
        }
    }

    pub fn with_spec(key: impl Into<String>, spec: S) -> Self {
        Self {
            key: key.into(),
            spec: Some(spec),
        }
    }
}

/// The planner's view: the job, its transaction (desired-state changes commit together with
/// the plan), the tenant for validation, and the engine's clock.
pub struct PlanContext<'a, 'c> {
    pub tx: &'a mut Transaction<'c, Postgres>,
    pub tenant: &'a Arc<dyn Tenant>,
    pub settings: &'a EngineSettings,
    pub clock: &'a dyn Clock,
    pub job: &'a StoredJob,
    /// What the job would do to its users' licences, and the size of what it is about (the
    /// policy's members), when the kind knows: the engine holds a job over
    /// `engine.approval`'s thresholds for an operator's approval.
    pub effect: &'a mut Option<(ChangeEffect, u64)>,
}

/// A planned job, as the applier sees it.
#[derive(Debug, Clone)]
pub struct JobHeader {
    pub id: Uuid,
    pub job_type: JobType,
    pub dry_run: bool,
    /// Other chunks of the job were waiting to be claimed when this one started: an applier
    /// may hand its verification back ([`Defer`]) to let the executor get on with them.
    pub others_waiting: bool,
}

/// One item of a chunk, not yet done.
#[derive(Debug, Clone)]
pub struct WorkItem<S> {
    pub seq: i32,
    pub key: String,
    pub spec: Option<S>,
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
    pub const ALL: [ItemOutcome; 4] = [
        Self::Changed,
        Self::AlreadyCompliant,
        Self::Failed,
        Self::Skipped,
    ];

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

/// The applier's view. `P` is the kind's plan.
pub struct ApplyContext<'a, P> {
    pub pool: &'a PgPool,
    pub tenant: &'a Arc<dyn Tenant>,
    pub settings: &'a EngineSettings,
    pub clock: &'a dyn Clock,
    /// How items are retried and verified: the one policy of every kind.
    pub retry: &'a ItemRetry,
    pub job: &'a JobHeader,
    pub plan: &'a P,
    /// Cancelled when the chunk's lease is lost, its job ends, or the worker stops: stop at
    /// the next safe point, and report what was done.
    pub cancel: &'a CancellationToken,
    /// Cancelled when the worker stops: a tenant call in flight may then be abandoned (its
    /// writes' intents are recorded, so the chunk's next worker finds them: see
    /// [`super::gate`]).
    pub stop: &'a CancellationToken,
    /// Open items whose writes an earlier claim may have made (intents recorded, outcomes
    /// not), with the age of that intent: a cancelled chunk reads them back before it ends
    /// ([`super::reconcile`]).
    pub intended: &'a HashMap<i32, Duration>,
    /// The chunk's write gates: pass `writes.gate(seqs)` to every tenant write call.
    pub writes: &'a ChunkWrites,
    /// Items an applier leaves without a result to come back to later (see [`Defer`]).
    pub defer: &'a Defer,
    /// Turns for write calls of jobs with other chunks waiting (see [`WRITE_TURNS`]).
    pub write_turns: &'a tokio::sync::Semaphore,
    /// The chunk's watch on tenant access ([`super::access`]): once it has tripped, the chunk
    /// stops and the results an access failure produced are dropped, so an applier settles no
    /// stored state for them (`access.tripped().is_some()`).
    pub access: &'a AccessGuard,
}

impl<P> ApplyContext<'_, P> {
    /// Runs a call of `writes` writes in one of this replica's [`WRITE_TURNS`] when other
    /// chunks of the job wait (`job.others_waiting`) and it has more than
    /// [`TURN_FREE_WRITES`]; a small job, or a call of a few writes, writes at once.
    pub async fn in_write_turn<T>(
        &self,
        writes: usize,
        write: impl std::future::Future<Output = T>,
    ) -> T {
        let _turn = if self.job.others_waiting && writes > TURN_FREE_WRITES {
            self.write_turns.acquire().await.ok()
        } else {
            None
        };
        write.await
    }
}

/// Write calls of large jobs (other chunks waiting) that one replica makes at once. Why: the
/// write budget serves callers in turn, so chunks that write together share it evenly, finish
/// together, and then all read (their read-backs, the next chunks' first reads) while nobody
/// writes. In turns, the next chunk has read and waits, ready, while one writes, and takes
/// over the moment it is done; two turns, because one call keeps only a quarter second of
/// the budget in flight (`tenant::batch`). A single ticket's job does not take a turn: its
/// few writes never wait behind a large chunk's call.
pub const WRITE_TURNS: usize = 2;

/// Write calls of at most this many writes (one Graph `$batch`) take no turn: a chunk's few
/// stragglers written again (after a 5xx, a 429) are not what makes chunks finish together,
/// but waiting for a turn behind two full calls held their executor for seconds; with two
/// executors held so, no chunk had read ahead when the writers finished, and the budget went
/// unused (the realistic benchmark's regular dips).
pub const TURN_FREE_WRITES: usize = 20;

/// An applier may return no result for items that only wait for the tenant to show a write
/// it accepted (Entra ID replicates asynchronously), after calling [`Defer::later`]: the
/// chunk then records the other items' outcomes and is handed back, claimable again after the
/// wait, instead of holding an executor while a few stragglers replicate. The next claim
/// reads those items again (their writes' intents make them `changed`).
#[derive(Debug, Default)]
pub struct Defer(parking_lot::Mutex<Option<std::time::Duration>>);

impl Defer {
    /// Come back for the items left without a result after `wait` (the shortest wait asked
    /// for by any round of the chunk wins).
    pub fn later(&self, wait: std::time::Duration) {
        let mut slot = self.0.lock();
        *slot = Some(slot.map_or(wait, |w| w.min(wait)));
    }

    /// The wait asked for, if any.
    pub fn asked(&self) -> Option<std::time::Duration> {
        *self.0.lock()
    }
}

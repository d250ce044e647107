//! What happens in the engine, each logged and counted together (see [`crate::telemetry::event`]).

use std::time::Duration;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::kind::{ItemOutcome, ItemResult};
use crate::domain::{ChangeEffect, Counts, JobType, Outcome, Schedule};
use crate::store::work::Backlog;
use crate::telemetry::InternalEvent;
use crate::telemetry::metrics as m;

/// A job was planned and its chunks stored.
pub struct JobAccepted {
    pub job_type: JobType,
    pub schedule: Schedule,
    pub total: u64,
    pub earliest_start: DateTime<Utc>,
}

impl InternalEvent for JobAccepted {
    fn emit(self) {
        let schedule = self.schedule.as_str();
        tracing::info!(total = self.total, schedule, earliest_start = %self.earliest_start, "job accepted");
        metrics::counter!(m::JOBS_ACCEPTED_TOTAL, "job_type" => self.job_type.as_str(), "schedule" => schedule)
            .increment(1);
    }
}

/// A job completed (its `job.completed` is in the outbox): at planning (rejected, failed,
/// nothing to do), when its last chunk ended, or when a newer job superseded it.
pub struct JobCompleted<'a> {
    pub job_id: Uuid,
    pub job_type: JobType,
    pub outcome: Outcome,
    pub counts: &'a Counts,
    /// Failures listed at planning (a rejected job's reasons).
    pub failures: usize,
}

impl InternalEvent for JobCompleted<'_> {
    fn emit(self) {
        tracing::info!(
            job_id = %self.job_id,
            outcome = self.outcome.as_str(),
            total = self.counts.total,
            changed = self.counts.changed,
            already_compliant = self.counts.already_compliant,
            failed = self.counts.failed,
            skipped = self.counts.skipped,
            failures = self.failures,
            "job completed"
        );
        metrics::counter!(m::JOBS_COMPLETED_TOTAL, "job_type" => self.job_type.as_str(), "outcome" => self.outcome.as_str())
            .increment(1);
    }
}

/// A job's planning transaction committed.
pub struct JobPlanned {
    pub job_type: Option<JobType>,
    pub took: Duration,
}

impl InternalEvent for JobPlanned {
    fn emit(self) {
        let job_type = self.job_type.map_or("unknown", JobType::as_str);
        metrics::histogram!(m::PLAN_DURATION_SECONDS, "job_type" => job_type)
            .record(self.took.as_secs_f64());
    }
}

/// Planning a job failed for a reason worth trying again (tenant or database unavailable).
pub struct PlanningDeferred<'a> {
    pub error: &'a super::EngineError,
}

impl InternalEvent for PlanningDeferred<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, "planning failed; will retry");
    }
}

/// A chunk's items are all settled and the chunk ended.
pub struct ChunkFinished {
    pub job_type: JobType,
    pub took: Duration,
}

impl InternalEvent for ChunkFinished {
    fn emit(self) {
        metrics::histogram!(m::CHUNK_DURATION_SECONDS, "job_type" => self.job_type.as_str())
            .record(self.took.as_secs_f64());
    }
}

/// A chunk whose lease had expired (its worker died or stalled) was claimed again.
pub struct ChunkReclaimed {
    pub job_id: Uuid,
    pub chunk: i32,
}

impl InternalEvent for ChunkReclaimed {
    fn emit(self) {
        tracing::warn!(job_id = %self.job_id, chunk = self.chunk, "took over a chunk whose lease expired");
        metrics::counter!(m::CHUNKS_RECLAIMED_TOTAL).increment(1);
    }
}

/// A chunk was handed back with items waiting for the tenant to show their writes
/// (replication), claimable again after `wait`.
pub struct ChunkDeferred {
    pub job_id: Uuid,
    pub chunk: i32,
    pub wait: std::time::Duration,
}

impl InternalEvent for ChunkDeferred {
    fn emit(self) {
        tracing::debug!(job_id = %self.job_id, chunk = self.chunk, wait_ms = self.wait.as_millis() as u64, "chunk handed back until its writes show in reads");
        metrics::counter!(m::CHUNKS_DEFERRED_TOTAL).increment(1);
    }
}

/// A chunk was handed back because the tenant refused the service's access: its job holds.
pub struct ChunkHeld<'a> {
    pub job_id: Uuid,
    pub chunk: i32,
    pub loss: &'a crate::tenant::AccessLoss,
    pub wait: std::time::Duration,
}

impl InternalEvent for ChunkHeld<'_> {
    fn emit(self) {
        tracing::warn!(
            job_id = %self.job_id,
            chunk = self.chunk,
            code = self.loss.code,
            reason = self.loss.reason.as_str(),
            detail = %self.loss.detail,
            wait_s = self.wait.as_secs(),
            "chunk held: the tenant refuses the service's access; its items wait"
        );
        metrics::counter!(m::CHUNKS_HELD_TOTAL, "reason" => self.loss.reason.as_str()).increment(1);
    }
}

/// A chunk was given back after an error, claimable again after a pause.
pub struct ChunkGivenBack<'a> {
    pub job_id: Uuid,
    pub chunk: i32,
    pub error: &'a super::EngineError,
}

impl InternalEvent for ChunkGivenBack<'_> {
    fn emit(self) {
        tracing::warn!(error = %self.error, job_id = %self.job_id, chunk = self.chunk, "chunk released after an error");
    }
}

/// A running chunk of an ended job stopped: what it wrote is recorded, the rest skipped.
pub struct ChunkEndedEarly {
    pub job_id: Uuid,
    pub chunk: i32,
}

impl InternalEvent for ChunkEndedEarly {
    fn emit(self) {
        tracing::info!(job_id = %self.job_id, chunk = self.chunk, "chunk of an ended job stopped; its remaining items are skipped");
    }
}

/// A chunk's lease could not be renewed: another worker may hold it now.
pub struct LeaseLost {
    pub job_id: Uuid,
    pub chunk: i32,
}

impl InternalEvent for LeaseLost {
    fn emit(self) {
        tracing::warn!(job_id = %self.job_id, chunk = self.chunk, "lease lost; abandoning the chunk");
    }
}

/// Items' outcomes were recorded.
pub struct ItemsRecorded<'a> {
    pub job_type: JobType,
    pub results: &'a [ItemResult],
    /// Of the `already_compliant` ones, recorded `changed`: this job's write, sent before a
    /// crash or an outage, was what made them compliant.
    pub promoted: u64,
}

impl InternalEvent for ItemsRecorded<'_> {
    fn emit(self) {
        let mut by_outcome = [0u64; ItemOutcome::ALL.len()];
        for result in self.results {
            by_outcome[result.outcome as usize] += 1;
        }
        let promoted = self
            .promoted
            .min(by_outcome[ItemOutcome::AlreadyCompliant as usize]);
        by_outcome[ItemOutcome::AlreadyCompliant as usize] -= promoted;
        by_outcome[ItemOutcome::Changed as usize] += promoted;
        for outcome in ItemOutcome::ALL {
            let n = by_outcome[outcome as usize];
            if n > 0 {
                metrics::counter!(m::ITEMS_TOTAL, "job_type" => self.job_type.as_str(), "outcome" => outcome.as_str())
                    .increment(n);
            }
        }
    }
}

/// The backlog as the monitor measured it (the same on every replica).
pub struct BacklogMeasured<'a> {
    pub backlog: &'a Backlog,
    pub now: DateTime<Utc>,
}

impl InternalEvent for BacklogMeasured<'_> {
    fn emit(self) {
        let b = self.backlog;
        for (state, n) in [
            ("received", b.received),
            ("accepted", b.accepted),
            ("running", b.running),
        ] {
            metrics::gauge!(m::JOBS_UNFINISHED, "state" => state).set(n as f64);
        }
        metrics::gauge!(m::ITEMS_REMAINING).set(b.items_remaining as f64);
        let age = b
            .oldest_received_at
            .map(|t| (self.now - t).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!(m::OLDEST_UNFINISHED_JOB_AGE_SECONDS).set(age);
    }
}

/// Unfinished jobs that cannot finish within the 24-hour target at the budgeted rate.
pub struct JobsAtRisk(pub usize);

impl InternalEvent for JobsAtRisk {
    fn emit(self) {
        metrics::gauge!(m::JOBS_AT_RISK).set(self.0 as f64);
    }
}

/// A job had every chunk done but was not completed (its worker stopped in between).
pub struct OrphanCompleting {
    pub job_id: Uuid,
}

impl InternalEvent for OrphanCompleting {
    fn emit(self) {
        tracing::warn!(job_id = %self.job_id, "every chunk done but the job not completed; completing it");
    }
}

/// A planned job waits for an operator's approval (guard rails on large changes).
pub struct ApprovalRequired {
    pub job_id: Uuid,
    pub effect: ChangeEffect,
    pub policy_size: u64,
}

impl InternalEvent for ApprovalRequired {
    fn emit(self) {
        let e = self.effect;
        tracing::warn!(
            job_id = %self.job_id,
            licence_removed = e.licence_removed,
            licence_changed = e.licence_changed,
            toggles_changed = e.toggles_changed,
            unchanged = e.unchanged,
            licence_added = e.licence_added,
            members_leaving = e.members_leaving,
            policy_size = self.policy_size,
            "the job's effect is over the approval thresholds; it waits for `jobs approve`"
        );
    }
}

/// A job waited for approval longer than `engine.approval.wait_seconds`.
pub struct ApprovalExpired {
    pub job_id: Uuid,
}

impl InternalEvent for ApprovalExpired {
    fn emit(self) {
        tracing::warn!(job_id = %self.job_id, "no approval came in time; the job ends rejected (awaiting_approval_expired)");
    }
}

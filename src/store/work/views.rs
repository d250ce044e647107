//! What the operators read of the work: the job list and one job in detail (`jobs list`,
//! `jobs show`). Reads only; [`super::controls`] holds the writes.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{ChunkState, JobRef, JobState};
use crate::domain::{Schedule, Ticket};
use crate::store::StoreError;

/// Which jobs a listing returns (`jobs list` and the console: [`super::browse::JobFilter::state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listed {
    All,
    /// Jobs in this state.
    In(JobState),
    /// Every state but `completed`.
    Unfinished,
}

/// Items of a job by outcome (`pending`: no outcome yet).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ItemCounts {
    pub changed: i64,
    pub already_compliant: i64,
    pub failed: i64,
    pub skipped: i64,
    pub pending: i64,
}

/// Chunks of a job by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChunkCounts {
    pub pending: i64,
    pub running: i64,
    pub done: i64,
}

/// A failed item.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct FailureRow {
    pub item: String,
    pub code: String,
    pub detail: Option<String>,
}

/// One job in detail.
#[derive(Debug, Clone)]
pub struct JobDetail {
    pub id: Uuid,
    pub message_id: String,
    pub job_type: Option<String>,
    pub state: JobState,
    pub outcome: Option<String>,
    pub dry_run: bool,
    pub paused: bool,
    pub expedited: bool,
    pub ended_early: Option<String>,
    /// Why the job is held, while it is: `{"code": "tenant_access_lost", "reason", "detail",
    /// "since"}` (the tenant refuses the service's access; its items wait, none fails).
    pub held: Option<Value>,
    /// While the job waits for an operator's approval: `{"effect", "threshold", "since"}`.
    pub awaiting_approval: Option<Value>,
    /// Who paused, resumed, expedited, cancelled or approved the job, when and why.
    pub operator_actions: Vec<super::controls::OperatorAction>,
    pub schedule: Option<Schedule>,
    pub earliest_start: Option<DateTime<Utc>>,
    pub received_at: DateTime<Utc>,
    pub accepted_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub subject: Option<Value>,
    pub ticket: Option<Ticket>,
    /// Items planned; `None` before planning.
    pub total: Option<i64>,
    /// Items with an outcome.
    pub done: i64,
    pub items: ItemCounts,
    pub chunks: ChunkCounts,
    /// The first failed items (as many as [`detail`] was asked for), in plan order; for a job
    /// rejected before it had items, the failures of its `job.completed`.
    pub failures: Vec<FailureRow>,
    /// Failed items beyond those listed.
    pub more_failures: i64,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    message_id: String,
    job_type: Option<String>,
    state: JobState,
    outcome: Option<String>,
    dry_run: bool,
    paused: bool,
    expedited: bool,
    ended_early: Option<String>,
    held: Option<Value>,
    awaiting_approval: Option<Value>,
    schedule: Option<Schedule>,
    earliest_start: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
    accepted_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    subject: Option<Value>,
    ticket: super::StoredTicket,
    total_items: Option<i64>,
}

/// One job, with at most `failures_shown` of its failures listed; `None` when no job has
/// this id or `message_id`.
pub async fn detail(
    pool: &PgPool,
    job: JobRef<'_>,
    failures_shown: i64,
) -> Result<Option<JobDetail>, StoreError> {
    let row: Option<JobRow> = sqlx::query_as(
        "SELECT id, message_id, job_type, state, outcome, dry_run, paused, expedited,
                ended_early, CASE WHEN state <> 'completed' THEN held END AS held, awaiting_approval, schedule,
                earliest_start, received_at, accepted_at, started_at,
                completed_at, subject, ticket, total_items
         FROM jobs WHERE id = $1 OR message_id = $2
         ORDER BY (id = $1) DESC NULLS LAST LIMIT 1",
    )
    .bind(job.id)
    .bind(job.message_id)
    .fetch_optional(pool)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };

    let mut items = ItemCounts::default();
    let by_outcome: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT outcome, count(*) FROM job_items WHERE job_id = $1 GROUP BY outcome",
    )
    .bind(row.id)
    .fetch_all(pool)
    .await?;
    for (outcome, n) in by_outcome {
        match outcome.as_deref() {
            Some("changed") => items.changed = n,
            Some("already_compliant") => items.already_compliant = n,
            Some("failed") => items.failed = n,
            Some("skipped") => items.skipped = n,
            _ => items.pending += n,
        }
    }
    let mut chunks = ChunkCounts::default();
    let by_state: Vec<(ChunkState, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM job_chunks WHERE job_id = $1 GROUP BY state")
            .bind(row.id)
            .fetch_all(pool)
            .await?;
    for (state, n) in by_state {
        match state {
            ChunkState::Pending => chunks.pending = n,
            ChunkState::Running => chunks.running = n,
            ChunkState::Done => chunks.done += n,
        }
    }
    let failures: Vec<FailureRow> = sqlx::query_as(
        "SELECT item, failure_code AS code, detail FROM job_items
         WHERE job_id = $1 AND outcome = 'failed' ORDER BY seq LIMIT $2",
    )
    .bind(row.id)
    .bind(failures_shown)
    .fetch_all(pool)
    .await?;
    let mut more_failures = items.failed - failures.len() as i64;
    let mut failures = failures;
    if failures.is_empty() && row.state == JobState::Completed {
        // A job rejected by ingest or by the planner has no items: its failures exist only
        // in its `job.completed`, which the outbox keeps.
        (failures, more_failures) = event_failures(pool, row.id, failures_shown).await?;
    }
    let done = items.changed + items.already_compliant + items.failed + items.skipped;
    Ok(Some(JobDetail {
        id: row.id,
        message_id: row.message_id,
        job_type: row.job_type,
        state: row.state,
        outcome: row.outcome,
        dry_run: row.dry_run,
        paused: row.paused,
        expedited: row.expedited,
        ended_early: row.ended_early,
        held: row.held,
        awaiting_approval: row.awaiting_approval,
        operator_actions: super::controls::operator_actions(pool, row.id).await?,
        schedule: row.schedule,
        earliest_start: row.earliest_start,
        received_at: row.received_at,
        accepted_at: row.accepted_at,
        started_at: row.started_at,
        completed_at: row.completed_at,
        subject: row.subject,
        ticket: super::ticket(row.ticket),
        total: row.total_items,
        done,
        items,
        chunks,
        failures,
        more_failures,
    }))
}

/// The failures listed in a job's stored `job.completed` (at most `shown`), and how many more
/// it lists.
async fn event_failures(
    pool: &PgPool,
    job_id: Uuid,
    shown: i64,
) -> Result<(Vec<FailureRow>, i64), StoreError> {
    let body: Option<Value> = sqlx::query_scalar(
        "SELECT body FROM outbox WHERE job_id = $1 AND event_type = 'job.completed'
         ORDER BY id LIMIT 1",
    )
    .bind(job_id)
    .fetch_optional(pool)
    .await?;
    let listed: Vec<FailureRow> = body
        .as_ref()
        .and_then(|b| b["failures"].as_array())
        .into_iter()
        .flatten()
        .map(|f| FailureRow {
            item: f["item"].as_str().unwrap_or_default().to_owned(),
            code: f["code"].as_str().unwrap_or_default().to_owned(),
            detail: f["detail"].as_str().map(str::to_owned),
        })
        .collect();
    let more = listed.len().saturating_sub(shown as usize) as i64;
    Ok((listed.into_iter().take(shown as usize).collect(), more))
}

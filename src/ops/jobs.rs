//! `jobs list`, `jobs show` and the operator controls `pause`, `resume`, `expedite` and
//! `cancel`: reads and writes of the jobs tables that the engine honours.
//!
//! A job is named by its `id` (a UUID) or by its `message_id`, whichever the operator has
//! (the ticket shows the latter).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{OpsError, table};
use crate::domain::{Counts, Outcome, Ticket};
use crate::store::{StoreError, work};

/// Why an operator-cancelled job ended early: stored in `jobs.ended_early`, in the
/// completed event's `subject`, and (prefixed `cancelled: `) on each skipped item.
pub const CANCELLED_BY_OPERATOR: &str = "cancelled by an operator";

/// Failures `jobs show` lists; the rest are counted.
pub const FAILURES_SHOWN: i64 = 50;

/// Which jobs `jobs list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    Received,
    Accepted,
    Running,
    Completed,
    /// Every state but `completed`.
    Unfinished,
}

impl StateFilter {
    fn state(self) -> Option<&'static str> {
        match self {
            Self::Received => Some("received"),
            Self::Accepted => Some("accepted"),
            Self::Running => Some("running"),
            Self::Completed => Some("completed"),
            Self::Unfinished => None,
        }
    }
}

/// One line of `jobs list`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct JobSummary {
    pub id: Uuid,
    pub message_id: String,
    pub job_type: Option<String>,
    pub state: String,
    pub outcome: Option<String>,
    /// Items with an outcome.
    pub done: i64,
    /// Items planned; `None` before planning (and for rejected jobs).
    pub total: Option<i64>,
    pub ticket_reference: Option<String>,
    pub received_at: DateTime<Utc>,
    pub paused: bool,
    pub expedited: bool,
    pub dry_run: bool,
}

/// The most recently received jobs first, at most `limit`.
pub async fn list(
    pool: &PgPool,
    state: Option<StateFilter>,
    limit: u32,
) -> Result<Vec<JobSummary>, OpsError> {
    let unfinished_only = state == Some(StateFilter::Unfinished);
    let state = state.and_then(StateFilter::state);
    Ok(sqlx::query_as(
        "SELECT j.id, j.message_id, j.job_type, j.state, j.outcome,
                (SELECT count(*) FROM job_items i
                 WHERE i.job_id = j.id AND i.outcome IS NOT NULL) AS done,
                j.total_items AS total, j.ticket->>'reference' AS ticket_reference,
                j.received_at, j.paused, j.expedited, j.dry_run
         FROM jobs j
         WHERE ($1::text IS NULL OR j.state = $1) AND (NOT $2 OR j.state <> 'completed')
         ORDER BY j.received_at DESC, j.id DESC
         LIMIT $3",
    )
    .bind(state)
    .bind(unfinished_only)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?)
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

/// Everything `jobs show` prints.
#[derive(Debug, Clone)]
pub struct JobDetail {
    pub id: Uuid,
    pub message_id: String,
    pub job_type: Option<String>,
    pub state: String,
    pub outcome: Option<String>,
    pub dry_run: bool,
    pub paused: bool,
    pub expedited: bool,
    pub ended_early: Option<String>,
    pub schedule: Option<String>,
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
    /// The first [`FAILURES_SHOWN`] failed items, in plan order; for a job rejected before it
    /// had items, the failures of its `job.completed`.
    pub failures: Vec<FailureRow>,
    /// Failed items beyond those listed.
    pub more_failures: i64,
}

#[derive(sqlx::FromRow)]
struct JobRow {
    id: Uuid,
    message_id: String,
    job_type: Option<String>,
    state: String,
    outcome: Option<String>,
    dry_run: bool,
    paused: bool,
    expedited: bool,
    ended_early: Option<String>,
    schedule: Option<String>,
    earliest_start: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
    accepted_at: Option<DateTime<Utc>>,
    started_at: Option<DateTime<Utc>>,
    completed_at: Option<DateTime<Utc>>,
    subject: Option<Value>,
    ticket: Option<Value>,
    total_items: Option<i64>,
}

/// One job, by id or `message_id`.
pub async fn show(pool: &PgPool, job: &str) -> Result<JobDetail, OpsError> {
    let (uuid, message_id) = job_ref(job);
    let row: JobRow = sqlx::query_as(
        "SELECT id, message_id, job_type, state, outcome, dry_run, paused, expedited,
                ended_early, schedule, earliest_start, received_at, accepted_at, started_at,
                completed_at, subject, ticket, total_items
         FROM jobs WHERE id = $1 OR message_id = $2
         ORDER BY (id = $1) DESC NULLS LAST LIMIT 1",
    )
    .bind(uuid)
    .bind(message_id)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| not_found(job))?;

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
    let by_state: Vec<(String, i64)> =
        sqlx::query_as("SELECT state, count(*) FROM job_chunks WHERE job_id = $1 GROUP BY state")
            .bind(row.id)
            .fetch_all(pool)
            .await?;
    for (state, n) in by_state {
        match state.as_str() {
            "pending" => chunks.pending = n,
            "running" => chunks.running = n,
            _ => chunks.done += n,
        }
    }
    let failures: Vec<FailureRow> = sqlx::query_as(
        "SELECT item, failure_code AS code, detail FROM job_items
         WHERE job_id = $1 AND outcome = 'failed' ORDER BY seq LIMIT $2",
    )
    .bind(row.id)
    .bind(FAILURES_SHOWN)
    .fetch_all(pool)
    .await?;
    let mut more_failures = items.failed - failures.len() as i64;
    let mut failures = failures;
    if failures.is_empty() && row.state == "completed" {
        // A job rejected by ingest or by the planner has no items: its failures exist only
        // in its `job.completed`, which the outbox keeps.
        (failures, more_failures) = event_failures(pool, row.id).await?;
    }
    let done = items.changed + items.already_compliant + items.failed + items.skipped;
    Ok(JobDetail {
        id: row.id,
        message_id: row.message_id,
        job_type: row.job_type,
        state: row.state,
        outcome: row.outcome,
        dry_run: row.dry_run,
        paused: row.paused,
        expedited: row.expedited,
        ended_early: row.ended_early,
        schedule: row.schedule,
        earliest_start: row.earliest_start,
        received_at: row.received_at,
        accepted_at: row.accepted_at,
        started_at: row.started_at,
        completed_at: row.completed_at,
        subject: row.subject,
        ticket: work::ticket(row.ticket),
        total: row.total_items,
        done,
        items,
        chunks,
        failures,
        more_failures,
    })
}

/// The failures listed in a job's stored `job.completed` (at most [`FAILURES_SHOWN`]), and
/// how many more it lists.
async fn event_failures(pool: &PgPool, job_id: Uuid) -> Result<(Vec<FailureRow>, i64), OpsError> {
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
    let more = listed.len().saturating_sub(FAILURES_SHOWN as usize) as i64;
    Ok((
        listed.into_iter().take(FAILURES_SHOWN as usize).collect(),
        more,
    ))
}

/// What a control did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlReport {
    pub id: Uuid,
    pub message_id: String,
    /// `paused`, `resumed`, `expedited`.
    pub action: &'static str,
    /// For `expedite`: chunks made claimable now.
    pub chunks_rescheduled: Option<u64>,
}

/// `paused = true`: the engine claims no new chunk of the job (chunks running finish).
pub async fn pause(pool: &PgPool, job: &str) -> Result<ControlReport, OpsError> {
    set_paused(pool, job, true).await
}

/// `paused = false`.
pub async fn resume(pool: &PgPool, job: &str) -> Result<ControlReport, OpsError> {
    set_paused(pool, job, false).await
}

async fn set_paused(pool: &PgPool, job: &str, paused: bool) -> Result<ControlReport, OpsError> {
    let (uuid, message_id) = job_ref(job);
    let updated: Option<(Uuid, String)> = sqlx::query_as(
        "UPDATE jobs SET paused = $3, updated_at = now()
         WHERE (id = $1 OR message_id = $2) AND state <> 'completed'
         RETURNING id, message_id",
    )
    .bind(uuid)
    .bind(message_id)
    .bind(paused)
    .fetch_optional(pool)
    .await?;
    let Some((id, message_id)) = updated else {
        return Err(why_unchanged(pool, job).await);
    };
    Ok(ControlReport {
        id,
        message_id,
        action: if paused { "paused" } else { "resumed" },
        chunks_rescheduled: None,
    })
}

/// `expedited = true`, and every chunk not done claimable now: the job runs at once,
/// outside the off-peak windows.
pub async fn expedite(pool: &PgPool, job: &str) -> Result<ControlReport, OpsError> {
    let (uuid, message_id) = job_ref(job);
    let mut tx = pool.begin().await?;
    let updated: Option<(Uuid, String)> = sqlx::query_as(
        "UPDATE jobs SET expedited = true, updated_at = now()
         WHERE (id = $1 OR message_id = $2) AND state <> 'completed'
         RETURNING id, message_id",
    )
    .bind(uuid)
    .bind(message_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, message_id)) = updated else {
        drop(tx);
        return Err(why_unchanged(pool, job).await);
    };
    let rescheduled = sqlx::query(
        "UPDATE job_chunks SET not_before = now() WHERE job_id = $1 AND state <> 'done'",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    tx.commit().await?;
    Ok(ControlReport {
        id,
        message_id,
        action: "expedited",
        chunks_rescheduled: Some(rescheduled),
    })
}

/// What `cancel` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelReport {
    pub id: Uuid,
    pub message_id: String,
    /// The state the job was in.
    pub previous_state: String,
    /// Items without an outcome, now `skipped`.
    pub items_skipped: u64,
    /// Chunks not done, now done.
    pub chunks_closed: u64,
    /// The completion, as published in `job.completed`.
    pub outcome: Outcome,
    pub counts: Counts,
}

/// Cancel an unfinished job: items without an outcome become `skipped`, chunks not done
/// become done, and the job completes as the engine completes it (counts from items, the
/// outcome rules, one `job.completed` whose `subject` says `ended_early`); all in one
/// transaction under the job's row lock.
///
/// Work already running is not interrupted in the tenant, but it can no longer record
/// anything: the engine writes outcomes only under a running chunk's lease, and the chunk is
/// done. A worker's claim of a chunk of an `accepted` job can deadlock with this transaction
/// (chunk then job, against job then chunk); PostgreSQL aborts one of the two, and a
/// transient failure here is retried.
pub async fn cancel(pool: &PgPool, job: &str) -> Result<CancelReport, OpsError> {
    let mut attempt = 1;
    loop {
        match try_cancel(pool, job).await {
            Err(OpsError::Store(error)) if error.is_transient() && attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
            }
            result => return result,
        }
    }
}

async fn try_cancel(pool: &PgPool, job: &str) -> Result<CancelReport, OpsError> {
    let (uuid, message_id) = job_ref(job);
    let mut tx = pool.begin().await?;
    let row: Option<(Uuid, String, String)> = sqlx::query_as(
        "SELECT id, message_id, state FROM jobs WHERE id = $1 OR message_id = $2
         ORDER BY (id = $1) DESC NULLS LAST LIMIT 1 FOR UPDATE",
    )
    .bind(uuid)
    .bind(message_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, message_id, previous_state)) = row else {
        return Err(not_found(job));
    };
    if previous_state == "completed" {
        return Err(OpsError::AlreadyCompleted(job.to_owned()));
    }
    let ended = work::end_early_in(
        &mut tx,
        id,
        crate::domain::FailureCode::Cancelled,
        CANCELLED_BY_OPERATOR,
    )
    .await?;
    let (items_skipped, chunks_closed) = (ended.items_skipped, ended.chunks_closed);
    let (_, outcome, counts) = complete(&mut tx, id).await?;
    tx.commit().await?;
    Ok(CancelReport {
        id,
        message_id,
        previous_state,
        items_skipped,
        chunks_closed,
        outcome,
        counts,
    })
}

async fn complete(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<(crate::domain::JobType, Outcome, Counts), OpsError> {
    work::complete_if_done_in(tx, id).await?.ok_or_else(|| {
        // Every chunk is done and the job is unfinished under our lock, so this cannot be.
        OpsError::Store(StoreError::Corrupt(format!(
            "job {id} did not complete after its chunks were closed"
        )))
    })
}

/// Split an operator's job reference into a UUID (when it is one) and a `message_id`: a
/// `message_id` may itself be a UUID, so both are tried.
fn job_ref(job: &str) -> (Option<Uuid>, &str) {
    (Uuid::parse_str(job.trim()).ok(), job.trim())
}

fn not_found(job: &str) -> OpsError {
    OpsError::NotFound(format!("no job has the id or message_id {job:?}"))
}

/// Why an update guarded by `state <> 'completed'` changed nothing.
async fn why_unchanged(pool: &PgPool, job: &str) -> OpsError {
    let (uuid, message_id) = job_ref(job);
    let exists: Result<bool, sqlx::Error> =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 OR message_id = $2)")
            .bind(uuid)
            .bind(message_id)
            .fetch_one(pool)
            .await;
    match exists {
        Ok(true) => OpsError::AlreadyCompleted(job.to_owned()),
        Ok(false) => not_found(job),
        Err(error) => error.into(),
    }
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_else(|| "-".into())
}

fn progress(done: i64, total: Option<i64>) -> String {
    match total {
        Some(total) => format!("{done}/{total}"),
        None => "-".into(),
    }
}

/// `jobs list` as a table.
pub fn render_list(jobs: &[JobSummary]) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let flags: Vec<&str> = [
                (j.paused, "paused"),
                (j.expedited, "expedited"),
                (j.dry_run, "dry-run"),
            ]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
            vec![
                j.id.to_string(),
                j.job_type.clone().unwrap_or_else(|| "-".into()),
                j.state.clone(),
                j.outcome.clone().unwrap_or_else(|| "-".into()),
                progress(j.done, j.total),
                j.ticket_reference.clone().unwrap_or_else(|| "-".into()),
                time(j.received_at),
                flags.join(","),
            ]
        })
        .collect();
    table::render(
        &[
            "ID", "TYPE", "STATE", "OUTCOME", "PROGRESS", "TICKET", "RECEIVED", "FLAGS",
        ],
        &rows,
    )
}

/// `jobs show` as text.
pub fn render_detail(job: &JobDetail) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let fields: Vec<Vec<String>> = [
        ("id", job.id.to_string()),
        ("message_id", job.message_id.clone()),
        ("type", or_dash(&job.job_type)),
        ("state", job.state.clone()),
        ("outcome", or_dash(&job.outcome)),
        ("progress", progress(job.done, job.total)),
        ("dry run", yes_no(job.dry_run)),
        ("paused", yes_no(job.paused)),
        ("expedited", yes_no(job.expedited)),
        ("ended early", or_dash(&job.ended_early)),
        ("schedule", or_dash(&job.schedule)),
        ("earliest start", opt_time(job.earliest_start)),
        ("received", time(job.received_at)),
        ("accepted", opt_time(job.accepted_at)),
        ("started", opt_time(job.started_at)),
        ("completed", opt_time(job.completed_at)),
        (
            "ticket",
            job.ticket
                .as_ref()
                .map(|t| format!("{} ({})", t.reference, t.originator))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "subject",
            job.subject
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "items",
            format!(
                "changed {}, already compliant {}, failed {}, skipped {}, pending {}",
                job.items.changed,
                job.items.already_compliant,
                job.items.failed,
                job.items.skipped,
                job.items.pending
            ),
        ),
        (
            "chunks",
            format!(
                "pending {}, running {}, done {}",
                job.chunks.pending, job.chunks.running, job.chunks.done
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| vec![format!("{k}:"), v])
    .collect();
    // Two columns without a header line: the field names are the first column.
    let mut out = table::render(&["", ""], &fields)
        .split_once('\n')
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_default();
    if !job.failures.is_empty() {
        out.push_str("\nfailures:\n");
        let rows: Vec<Vec<String>> = job
            .failures
            .iter()
            .map(|f| vec![f.item.clone(), f.code.clone(), or_dash(&f.detail)])
            .collect();
        out.push_str(&table::render(&["ITEM", "CODE", "DETAIL"], &rows));
        if job.more_failures > 0 {
            out.push_str(&format!("… and {} more\n", job.more_failures));
        }
    }
    out
}

/// What `pause`, `resume` and `expedite` print.
pub fn render_control(report: &ControlReport) -> String {
    let mut out = format!(
        "job {} (message_id {}) {}",
        report.id, report.message_id, report.action
    );
    if let Some(n) = report.chunks_rescheduled {
        out.push_str(&format!("; {n} chunk(s) claimable now"));
    }
    out.push('\n');
    out
}

/// What `cancel` prints.
pub fn render_cancel(report: &CancelReport) -> String {
    let c = &report.counts;
    format!(
        "job {} (message_id {}) cancelled (was {}): {} item(s) skipped, {} chunk(s) closed\n\
         completed {}: total {}, changed {}, already compliant {}, failed {}, skipped {}\n\
         job.completed queued in the outbox\n",
        report.id,
        report.message_id,
        report.previous_state,
        report.items_skipped,
        report.chunks_closed,
        report.outcome.as_str(),
        c.total,
        c.changed,
        c.already_compliant,
        c.failed,
        c.skipped,
    )
}

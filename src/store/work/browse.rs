//! The operator console's reads (and the `jobs` commands' filtered list): jobs by filter and
//! search, a job's items, chunks and events, every job that touched an address, and the
//! overview's figures. Reads only, every one paged and served by an index (migration
//! `0018_console.sql`), so that a job of 200,000 items answers as quickly as one of ten.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::views::Listed;
use crate::store::StoreError;

/// A flag a job may carry, for the job list's filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flag {
    Paused,
    Expedited,
    DryRun,
    /// Held while the tenant refuses the service's access.
    Held,
    AwaitingApproval,
}

impl Flag {
    pub const ALL: [Self; 5] = [
        Self::Paused,
        Self::Expedited,
        Self::DryRun,
        Self::Held,
        Self::AwaitingApproval,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Paused => "paused",
            Self::Expedited => "expedited",
            Self::DryRun => "dry_run",
            Self::Held => "held",
            Self::AwaitingApproval => "awaiting_approval",
        }
    }

    pub fn parse(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == label)
    }
}

/// Which jobs [`jobs`] returns; every field narrows, `None` does not.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<Listed>,
    pub job_type: Option<String>,
    pub outcome: Option<String>,
    /// The policy's or the job's ODS code.
    pub ods_code: Option<String>,
    pub flag: Option<Flag>,
    /// A ticket reference, a `message_id`, a job id, a policy id, or an item (a user's email).
    pub search: Option<String>,
}

/// One job in a list.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct JobRow {
    pub id: Uuid,
    pub message_id: String,
    pub job_type: Option<String>,
    pub state: String,
    pub outcome: Option<String>,
    /// Items with an outcome.
    pub done: i64,
    /// Items planned; `None` before planning (and for jobs rejected before it).
    pub total: Option<i64>,
    pub ticket_reference: Option<String>,
    pub policy_id: Option<String>,
    pub received_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub paused: bool,
    pub expedited: bool,
    pub dry_run: bool,
    pub held: bool,
    pub awaiting_approval: bool,
}

/// Jobs matching `filter`, most recently received first: `limit` of them after `offset`, and
/// whether more follow.
pub async fn jobs(
    pool: &PgPool,
    filter: &JobFilter,
    offset: u32,
    limit: u32,
) -> Result<(Vec<JobRow>, bool), StoreError> {
    let (state, unfinished_only) = match filter.state {
        None | Some(Listed::All) => (None, false),
        Some(Listed::In(state)) => (Some(state.as_str()), false),
        Some(Listed::Unfinished) => (None, true),
    };
    let search = filter
        .search
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty());
    // A completed job has an outcome for every item: its `total_items` is its count, so
    // a list of finished 200,000-item jobs counts nothing. The count per unfinished job makes
    // the planner's estimate large enough to JIT-compile the query, which took longer (about
    // 100 ms, measured) than running it (20 ms for 200,000 items): no JIT here.
    let mut tx = pool.begin().await?;
    sqlx::query("SET LOCAL jit = off").execute(&mut *tx).await?;
    let mut rows: Vec<JobRow> = sqlx::query_as(
        "SELECT j.id, j.message_id, j.job_type, j.state, j.outcome,
                CASE WHEN j.state = 'completed' THEN coalesce(j.total_items, 0)
                     ELSE (SELECT count(*) FROM job_items i
                           WHERE i.job_id = j.id AND i.outcome IS NOT NULL) END AS done,
                j.total_items AS total, j.ticket ->> 'reference' AS ticket_reference,
                j.subject ->> 'policy_id' AS policy_id,
                j.received_at, j.started_at, j.completed_at, j.paused, j.expedited, j.dry_run,
                (j.held IS NOT NULL AND j.state <> 'completed') AS held,
                (j.awaiting_approval IS NOT NULL) AS awaiting_approval
         FROM jobs j
         WHERE ($1::text IS NULL OR j.state = $1) AND (NOT $2 OR j.state <> 'completed')
           AND ($3::text IS NULL OR j.job_type = $3)
           AND ($4::text IS NULL OR j.outcome = $4)
           AND ($5::text IS NULL OR j.payload -> 'policy' ->> 'ods_code' = $5
                OR j.payload ->> 'ods_code' = $5 OR j.actor ->> 'ods_code' = $5)
           AND ($6::text IS NULL
                OR ($6 = 'paused' AND j.paused) OR ($6 = 'expedited' AND j.expedited)
                OR ($6 = 'dry_run' AND j.dry_run)
                OR ($6 = 'held' AND j.held IS NOT NULL AND j.state <> 'completed')
                OR ($6 = 'awaiting_approval' AND j.awaiting_approval IS NOT NULL))
           AND ($7::text IS NULL OR j.message_id = $7 OR j.id::text = lower($7)
                OR j.ticket ->> 'reference' = $7 OR j.subject ->> 'policy_id' = $7
                OR j.id IN (SELECT DISTINCT job_id FROM job_items
                            WHERE item = $7 OR item = lower($7)))
         ORDER BY j.received_at DESC, j.id DESC
         LIMIT $8 OFFSET $9",
    )
    .bind(state)
    .bind(unfinished_only)
    .bind(filter.job_type.as_deref())
    .bind(filter.outcome.as_deref())
    .bind(filter.ods_code.as_deref())
    .bind(filter.flag.map(Flag::as_str))
    .bind(search)
    .bind(i64::from(limit) + 1)
    .bind(i64::from(offset))
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    Ok((rows, more))
}

/// One item of a job with its outcome.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ItemRow {
    pub seq: i32,
    pub chunk: i32,
    pub item: String,
    /// `None` while pending.
    pub outcome: Option<String>,
    pub code: Option<String>,
    pub detail: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Which items [`items`] returns.
#[derive(Debug, Clone, Default)]
pub struct ItemFilter {
    /// An outcome, or `pending` for items without one.
    pub outcome: Option<String>,
    /// A failure code (failed items only).
    pub code: Option<String>,
}

/// A job's items in plan order, `limit` of them after item `after` (keyset paging: the
/// primary key, or the failed items' index, serves every page alike).
pub async fn items(
    pool: &PgPool,
    job_id: Uuid,
    filter: &ItemFilter,
    after: i32,
    limit: u32,
) -> Result<Vec<ItemRow>, StoreError> {
    let outcome = if filter.code.is_some() {
        Some("failed")
    } else {
        filter.outcome.as_deref()
    };
    Ok(sqlx::query_as(
        "SELECT seq, chunk, item, outcome, failure_code AS code, detail, finished_at
         FROM job_items
         WHERE job_id = $1 AND seq > $2
           AND ($3::text IS NULL OR ($3 = 'pending' AND outcome IS NULL) OR outcome = $3)
           AND ($4::text IS NULL OR failure_code = $4)
         ORDER BY seq LIMIT $5",
    )
    .bind(job_id)
    .bind(after)
    .bind(outcome)
    .bind(filter.code.as_deref())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?)
}

/// A job's failure codes and how many items failed with each, most frequent first.
pub async fn failure_codes(pool: &PgPool, job_id: Uuid) -> Result<Vec<(String, i64)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT failure_code, count(*) FROM job_items
         WHERE job_id = $1 AND outcome = 'failed'
         GROUP BY failure_code ORDER BY count(*) DESC, failure_code",
    )
    .bind(job_id)
    .fetch_all(pool)
    .await?)
}

/// One chunk of a job.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct ChunkRow {
    pub chunk: i32,
    pub state: String,
    pub claims: i32,
    pub lease_owner: Option<String>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub not_before: DateTime<Utc>,
    pub wait_until: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// A job's chunks in order, `limit` of them after chunk `after`.
pub async fn chunks(
    pool: &PgPool,
    job_id: Uuid,
    after: i32,
    limit: u32,
) -> Result<Vec<ChunkRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT chunk, state, claims, lease_owner, lease_expires_at, not_before, wait_until,
                finished_at
         FROM job_chunks WHERE job_id = $1 AND chunk > $2 ORDER BY chunk LIMIT $3",
    )
    .bind(job_id)
    .bind(after)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?)
}

/// An event a job published (or will: the outbox's row).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct EventRow {
    pub event_id: Uuid,
    pub event_type: String,
    pub routing_key: String,
    pub created_at: DateTime<Utc>,
    /// `None` while the relay has not had the broker's confirm.
    pub published_at: Option<DateTime<Utc>>,
    pub body: Value,
}

/// The events of a job, in the order they were written (at most `limit`).
pub async fn events(pool: &PgPool, job_id: Uuid, limit: u32) -> Result<Vec<EventRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT event_id, event_type, routing_key, created_at, published_at, body
         FROM outbox WHERE job_id = $1 ORDER BY id LIMIT $2",
    )
    .bind(job_id)
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?)
}

/// A job that touched an address, and what it did for it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct TouchRow {
    pub job_id: Uuid,
    pub message_id: String,
    pub job_type: Option<String>,
    pub job_state: String,
    pub job_outcome: Option<String>,
    pub ticket_reference: Option<String>,
    pub received_at: DateTime<Utc>,
    /// The item's own outcome (`None` while pending).
    pub outcome: Option<String>,
    pub code: Option<String>,
    pub detail: Option<String>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// Every job that had `address` as an item (as typed, or lower-cased), newest first, at
/// most `limit`.
pub async fn user_jobs(
    pool: &PgPool,
    address: &str,
    limit: u32,
) -> Result<Vec<TouchRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT j.id AS job_id, j.message_id, j.job_type, j.state AS job_state,
                j.outcome AS job_outcome, j.ticket ->> 'reference' AS ticket_reference,
                j.received_at, i.outcome, i.failure_code AS code, i.detail, i.finished_at
         FROM job_items i JOIN jobs j ON j.id = i.job_id
         WHERE i.item = $1 OR i.item = lower($1)
         ORDER BY j.received_at DESC, i.seq LIMIT $2",
    )
    .bind(address.trim())
    .bind(i64::from(limit))
    .fetch_all(pool)
    .await?)
}

/// A token bucket of the shared tenant write budget.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct BudgetRow {
    pub name: String,
    pub tokens: f64,
    /// Share of the configured rate in force (halved on throttling, recovering over time).
    pub factor: f64,
    pub updated_at: DateTime<Utc>,
    pub throttled_at: Option<DateTime<Utc>>,
}

/// The overview's figures that are not a job list.
#[derive(Debug, Clone, Serialize)]
pub struct OverviewFigures {
    /// Messages dead-lettered by ingest, ever and in the last 24 hours.
    pub dead_letters: i64,
    pub dead_letters_24h: i64,
    pub write_budget: Vec<BudgetRow>,
    /// Drift found by recent sweeps.
    pub drift: Vec<DriftRow>,
}

/// A sweep job that found drift, as its `drift.detected` says (see `store::drift`).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct DriftRow {
    pub found_at: DateTime<Utc>,
    /// The sweep job.
    pub job_id: Option<Uuid>,
    /// `{policy_id, version}` or `{ods_code}`.
    pub subject: serde_json::Value,
    /// `{checked, drifted, repaired, failed}`.
    pub counts: serde_json::Value,
}

/// How many days back the overview lists drift.
pub const DRIFT_LISTED_DAYS: i32 = 7;
/// At most this many of them, newest first.
pub const DRIFT_LISTED_MAX: i64 = 50;

/// The sweeps that found drift in the last [`DRIFT_LISTED_DAYS`] days, newest first (index
/// `outbox_drift_detected`).
pub async fn recent_drift(pool: &PgPool) -> Result<Vec<DriftRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT created_at AS found_at, job_id, body -> 'subject' AS subject,
                body -> 'counts' AS counts
         FROM outbox WHERE event_type = 'drift.detected'
           AND created_at > now() - make_interval(days => $1)
         ORDER BY id DESC LIMIT $2",
    )
    .bind(DRIFT_LISTED_DAYS)
    .bind(DRIFT_LISTED_MAX)
    .fetch_all(pool)
    .await?)
}

pub async fn overview_figures(pool: &PgPool) -> Result<OverviewFigures, StoreError> {
    let (dead_letters, dead_letters_24h): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(*) FILTER (WHERE received_at > now() - interval '24 hours')
         FROM inbox WHERE disposition = 'dead_lettered'",
    )
    .fetch_one(pool)
    .await?;
    let write_budget = sqlx::query_as(
        "SELECT name, tokens, factor, updated_at, throttled_at FROM write_budget ORDER BY name",
    )
    .fetch_all(pool)
    .await?;
    Ok(OverviewFigures {
        dead_letters,
        dead_letters_24h,
        write_budget,
        drift: recent_drift(pool).await?,
    })
}

/// The id of the job named `job` (its id or `message_id`), without reading anything else.
pub async fn resolve(pool: &PgPool, job: super::JobRef<'_>) -> Result<Option<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM jobs WHERE id = $1 OR message_id = $2
         ORDER BY (id = $1) DESC NULLS LAST LIMIT 1",
    )
    .bind(job.id)
    .bind(job.message_id)
    .fetch_optional(pool)
    .await?)
}

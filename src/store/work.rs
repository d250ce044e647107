//! Planned work: jobs moving through their states, items in chunks, leases, completion.
//!
//! Every claim uses `FOR UPDATE SKIP LOCKED`, so any number of replicas share the work
//! without blocking each other; every write by a chunk's worker is guarded by its lease, so a
//! worker that lost its lease (it stalled and another took over) changes nothing.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{StoreError, outbox};
use crate::domain::{
    Actor, Counts, EventHeader, Failure, FailureCode, JobAccepted, JobCompleted, JobType,
    MAX_FAILURES_LISTED, Outcome, Schedule, Ticket,
};

/// A job row claimed for planning.
#[derive(Debug, sqlx::FromRow)]
pub struct JobToPlan {
    pub id: Uuid,
    pub message_id: String,
    pub job_type: Option<String>,
    pub dry_run: bool,
    pub ticket: Option<Value>,
    pub actor: Option<Value>,
    pub received_at: DateTime<Utc>,
}

/// Lock the oldest job waiting to be planned, if any (skipping jobs other planners hold).
pub async fn claim_job_to_plan(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<Option<JobToPlan>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, message_id, job_type, dry_run, ticket, actor, received_at
         FROM jobs WHERE state = 'received' AND plan_not_before <= now()
         ORDER BY received_at LIMIT 1 FOR UPDATE SKIP LOCKED",
    )
    .fetch_optional(&mut **tx)
    .await?)
}

/// The payload of a stored job, with the list in field `left_out` (if any, and if a list)
/// emptied: that one stays in the database, for the planner to read set-wise.
pub async fn job_payload(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    left_out: Option<&str>,
) -> Result<Option<Value>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT CASE WHEN $2::text IS NOT NULL AND jsonb_typeof(payload -> $2) = 'array'
                     THEN jsonb_set(payload, ARRAY[$2], '[]'::jsonb)
                     ELSE payload END
         FROM jobs WHERE id = $1",
    )
    .bind(job_id)
    .bind(left_out)
    .fetch_one(&mut **tx)
    .await?)
}

/// Plan `job` again no earlier than `delay` from now.
pub async fn defer_planning(
    executor: impl sqlx::PgExecutor<'_>,
    job_id: Uuid,
    delay: chrono::Duration,
) -> Result<(), StoreError> {
    // Measured on the database's clock, which the planner's claim compares with.
    sqlx::query(
        "UPDATE jobs SET plan_not_before = now() + make_interval(secs => $2), updated_at = now()
         WHERE id = $1",
    )
    .bind(job_id)
    .bind(delay.num_milliseconds() as f64 / 1000.0)
    .execute(executor)
    .await?;
    Ok(())
}

/// What is known of a job for its events.
pub struct JobIdentity<'a> {
    pub id: Uuid,
    pub message_id: &'a str,
    pub job_type: JobType,
    pub ticket: Option<Ticket>,
    pub dry_run: bool,
}

/// The items of a plan, for [`accept`].
pub enum ItemRows {
    /// Keys and specs (JSON text), in order.
    Listed {
        keys: Vec<String>,
        specs: Vec<Option<String>>,
    },
    /// In a temporary table of the transaction with columns `seq int` (counting from 0) and
    /// `item text`: the planner left them in the database. `table` is one of the names the
    /// store defines for this (`planned_items`, `staged_members`), never input.
    Staged { table: &'static str, count: u64 },
}

/// The temporary table a planner may fill with its items ([`ItemRows::Staged`]).
pub const PLANNED_ITEMS: &str = "planned_items";

/// Create the transaction's `planned_items` table, for a planner to fill
/// ([`ItemRows::Staged`]).
pub async fn create_planned_items(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query(
        "CREATE TEMPORARY TABLE planned_items (seq int NOT NULL, item text NOT NULL)
         ON COMMIT DROP",
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Store the plan: items split into chunks of `chunk_size` claimable from `earliest_start`,
/// the job `accepted`, and its `job.accepted` event; all in `tx`.
#[allow(clippy::too_many_arguments)]
pub async fn accept(
    tx: &mut Transaction<'_, Postgres>,
    job: &JobIdentity<'_>,
    subject: &Value,
    plan: &Value,
    items: ItemRows,
    chunk_size: u32,
    schedule: Schedule,
    earliest_start: DateTime<Utc>,
) -> Result<(), StoreError> {
    let chunk_size = i64::from(chunk_size.max(1));
    let total = match items {
        ItemRows::Listed { keys, specs } => {
            sqlx::query(
                "INSERT INTO job_items (job_id, seq, chunk, item, spec)
                 SELECT $1, (s.ord - 1)::int, ((s.ord - 1) / $4)::int, s.item, s.spec::jsonb
                 FROM unnest($2::text[], $3::text[]) WITH ORDINALITY AS s(item, spec, ord)",
            )
            .bind(job.id)
            .bind(&keys)
            .bind(&specs)
            .bind(chunk_size)
            .execute(&mut **tx)
            .await?;
            keys.len() as i64
        }
        ItemRows::Staged { table, count } => {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "INSERT INTO job_items (job_id, seq, chunk, item)
                 SELECT $1, seq, (seq / $2)::int, item FROM {table}"
            )))
            .bind(job.id)
            .bind(chunk_size)
            .execute(&mut **tx)
            .await?;
            count as i64
        }
    };
    let chunks = (total + chunk_size - 1) / chunk_size;
    sqlx::query(
        "INSERT INTO job_chunks (job_id, chunk, state, not_before)
         SELECT $1, g, 'pending', $2 FROM generate_series(0, $3 - 1) AS g",
    )
    .bind(job.id)
    .bind(earliest_start)
    .bind(chunks as i32)
    .execute(&mut **tx)
    .await?;
    let schedule_text = match schedule {
        Schedule::Immediate => "immediate",
        Schedule::OffPeak => "off_peak",
    };
    sqlx::query(
        "UPDATE jobs SET state = 'accepted', plan = $2, subject = $3, total_items = $4,
                schedule = $5, earliest_start = $6, accepted_at = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(job.id)
    .bind(plan)
    .bind(subject)
    .bind(total)
    .bind(schedule_text)
    .bind(earliest_start)
    .execute(&mut **tx)
    .await?;
    let header = EventHeader::new(
        JobAccepted::TYPE,
        job.id,
        job.message_id.to_owned(),
        job.ticket.clone(),
    );
    let event = JobAccepted {
        header: header.clone(),
        job_type: job.job_type,
        total: total as u64,
        schedule,
        earliest_start,
    };
    outbox::enqueue(tx, &header, &event).await
}

/// Complete a job at once, from the planner (rejected, failed, or nothing to do).
pub async fn complete_now(
    tx: &mut Transaction<'_, Postgres>,
    job: &JobIdentity<'_>,
    subject: Option<&Value>,
    outcome: Outcome,
    counts: Counts,
    failures: Vec<Failure>,
) -> Result<(), StoreError> {
    let now = Utc::now();
    let started_at: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT coalesce(started_at, accepted_at) FROM jobs WHERE id = $1")
            .bind(job.id)
            .fetch_one(&mut **tx)
            .await?;
    finish(
        tx,
        job,
        subject.cloned(),
        outcome,
        counts,
        failures,
        started_at.unwrap_or(now),
    )
    .await
}

async fn finish(
    tx: &mut Transaction<'_, Postgres>,
    job: &JobIdentity<'_>,
    subject: Option<Value>,
    outcome: Outcome,
    counts: Counts,
    failures: Vec<Failure>,
    started_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let now = Utc::now();
    sqlx::query(
        "UPDATE jobs SET state = 'completed', outcome = $2, subject = coalesce($3, subject),
                counts = $4, completed_at = $5, updated_at = $5
         WHERE id = $1",
    )
    .bind(job.id)
    .bind(outcome.as_str())
    .bind(&subject)
    .bind(serde_json::to_value(counts).expect("counts serialize"))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let header = EventHeader::new(
        JobCompleted::TYPE,
        job.id,
        job.message_id.to_owned(),
        job.ticket.clone(),
    );
    let event = JobCompleted {
        header: header.clone(),
        job_type: Some(job.job_type),
        subject,
        outcome,
        dry_run: job.dry_run,
        counts,
        failures: vec![],
        failures_truncated: false,
        started_at,
        finished_at: now,
    }
    .with_failures(failures);
    outbox::enqueue(tx, &header, &event).await
}

/// A chunk claimed by this worker.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedChunk {
    pub job_id: Uuid,
    pub chunk: i32,
    /// True when the chunk was taken over from a worker whose lease expired.
    pub reclaimed: bool,
}

/// What a claim may take.
#[derive(Debug, Clone, Copy)]
pub struct ClaimLimits {
    /// The scheduler's now: chunks due by then may start.
    pub now: DateTime<Utc>,
    /// Whether an off-peak window is open now (else only immediate or expedited jobs run).
    pub window_open: bool,
    /// Chunks running at once across every replica.
    pub max_running: u32,
}

/// Claim the next claimable chunk: pending, or running with an expired lease, of an
/// accepted or running job that is not paused, due by `limits.now`, of an immediate or
/// expedited job or within an open window; and only while fewer than `limits.max_running`
/// chunks hold live leases across all replicas (the claim is serialised by an advisory
/// lock, so the cap holds). Lower chunk numbers first across jobs, so that many jobs
/// progress together and a small job is never stuck behind a large one.
pub async fn claim_chunk(
    pool: &PgPool,
    owner: &str,
    lease_seconds: u64,
    limits: ClaimLimits,
) -> Result<Option<ClaimedChunk>, StoreError> {
    // The advisory lock is taken in the same round trip as BEGIN.
    let mut tx = pool
        .begin_with(
            "BEGIN; SET LOCAL synchronous_commit = off;
             SELECT pg_advisory_xact_lock(hashtextextended('reconciler:claim', 0))",
        )
        .await?;
    // One statement after the lock (so its snapshot sees every claim committed before it):
    // the cap, the claim, and the job marked running.
    let claimed: Option<ClaimedChunk> = sqlx::query_as(
        "WITH next AS (
             SELECT c.job_id, c.chunk, c.state = 'running' AS reclaimed
             FROM job_chunks c JOIN jobs j ON j.id = c.job_id
             WHERE j.state IN ('accepted', 'running') AND NOT j.paused
               AND (c.not_before <= $3 OR j.expedited)
               AND (j.schedule IS DISTINCT FROM 'off_peak' OR j.expedited OR $4)
               AND (c.state = 'pending' OR (c.state = 'running' AND c.lease_expires_at < now()))
               AND (SELECT count(*) FROM job_chunks r
                    WHERE r.state = 'running' AND r.lease_expires_at > now()) < $5
             ORDER BY c.chunk, j.accepted_at, c.job_id
             LIMIT 1 FOR UPDATE OF c SKIP LOCKED),
         claimed AS (
             UPDATE job_chunks c
             SET state = 'running', lease_owner = $1,
                 lease_expires_at = now() + make_interval(secs => $2), claims = c.claims + 1
             FROM next WHERE c.job_id = next.job_id AND c.chunk = next.chunk
             RETURNING c.job_id, c.chunk, next.reclaimed),
         started AS (
             UPDATE jobs j SET state = 'running', started_at = coalesce(j.started_at, $3),
                    updated_at = now()
             FROM claimed WHERE j.id = claimed.job_id AND j.state = 'accepted')
         SELECT job_id, chunk, reclaimed FROM claimed",
    )
    .bind(owner)
    .bind(lease_seconds as f64)
    .bind(limits.now)
    .bind(limits.window_open)
    .bind(i64::from(limits.max_running))
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(claimed)
}

/// Begin a transaction whose commit does not wait for its WAL to reach disk.
///
/// Only for a chunk's bookkeeping (claims, leases, outcomes, finishing), where the flush
/// would be most of the cost (each is a few milliseconds of `fdatasync`, four of them a
/// chunk). What it risks is small and safe: a PostgreSQL crash (not a worker crash) may lose
/// the last fraction of a second of such commits, which only means a chunk is claimed again
/// and some items are read again and found compliant; reconciliation is idempotent. Ingest,
/// planning, completion and the outbox keep synchronous commits, and since WAL is flushed in
/// order, a synchronous commit also makes every earlier relaxed one durable: a job is never
/// completed on the strength of bookkeeping that could still be lost.
async fn begin_relaxed(pool: &PgPool) -> Result<Transaction<'static, Postgres>, StoreError> {
    Ok(pool
        .begin_with("BEGIN; SET LOCAL synchronous_commit = off")
        .await?)
}

/// Extend the lease; false when it is no longer ours.
pub async fn renew_lease(
    pool: &PgPool,
    chunk: &ClaimedChunk,
    owner: &str,
    lease_seconds: u64,
) -> Result<bool, StoreError> {
    let mut tx = begin_relaxed(pool).await?;
    let renewed = sqlx::query(
        "UPDATE job_chunks SET lease_expires_at = now() + make_interval(secs => $4)
         WHERE job_id = $1 AND chunk = $2 AND lease_owner = $3 AND state = 'running'",
    )
    .bind(chunk.job_id)
    .bind(chunk.chunk)
    .bind(owner)
    .bind(lease_seconds as f64)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(renewed.rows_affected() == 1)
}

/// Give a chunk back before its lease expires (shutdown, or a transient failure), to be
/// claimed again no earlier than `not_before`.
pub async fn release_chunk(
    pool: &PgPool,
    chunk: &ClaimedChunk,
    owner: &str,
    not_before: DateTime<Utc>,
) -> Result<(), StoreError> {
    let mut tx = begin_relaxed(pool).await?;
    sqlx::query(
        "UPDATE job_chunks SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                not_before = $4
         WHERE job_id = $1 AND chunk = $2 AND lease_owner = $3 AND state = 'running'",
    )
    .bind(chunk.job_id)
    .bind(chunk.chunk)
    .bind(owner)
    .bind(not_before)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The job of a claimed chunk.
#[derive(Debug, sqlx::FromRow)]
pub struct ChunkJob {
    pub job_type: String,
    pub dry_run: bool,
    pub plan: Option<Value>,
}

pub async fn chunk_job(pool: &PgPool, job_id: Uuid) -> Result<ChunkJob, StoreError> {
    Ok(
        sqlx::query_as("SELECT job_type, dry_run, plan FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(pool)
            .await?,
    )
}

/// Items of the chunk still without an outcome (a chunk taken over resumes where its
/// previous worker stopped).
pub async fn open_items(
    pool: &PgPool,
    chunk: &ClaimedChunk,
) -> Result<Vec<(i32, String, Option<Value>)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT seq, item, spec FROM job_items
         WHERE job_id = $1 AND chunk = $2 AND outcome IS NULL ORDER BY seq",
    )
    .bind(chunk.job_id)
    .bind(chunk.chunk)
    .fetch_all(pool)
    .await?)
}

/// A round's outcomes, one entry per item in each list.
pub struct Outcomes<'a> {
    pub seqs: &'a [i32],
    pub outcomes: &'a [&'a str],
    pub codes: &'a [Option<&'a str>],
    pub details: &'a [Option<String>],
}

/// What [`record_outcomes`] did.
#[derive(Debug, Clone, Copy)]
pub struct Recorded {
    pub items: u64,
    /// The chunk was marked done with them.
    pub finished: bool,
    /// Other chunks of the job were still pending: this one cannot have been the last, and
    /// whoever finishes those will look at completing the job.
    pub others_pending: bool,
}

/// Record item outcomes, only while the lease is ours, and with `finish` mark the chunk done
/// in the same statement (its last round; the owner stays on record: which replica did
/// which chunk). Returns how many were recorded.
///
/// The chunk is named in the condition although the sequence numbers alone identify the
/// items: it keeps the statement to the chunk's rows whatever the planner believes of a
/// table that has just grown by a 20,000-item job and not been analysed yet (without it,
/// it hashed every item of the job, on every chunk).
pub async fn record_outcomes(
    pool: &PgPool,
    chunk: &ClaimedChunk,
    owner: &str,
    round: Outcomes<'_>,
    finish: bool,
) -> Result<Recorded, StoreError> {
    let mut tx = begin_relaxed(pool).await?;
    let (items, finished, others_pending): (i64, bool, bool) = sqlx::query_as(
        "WITH lease AS (
             SELECT 1 FROM job_chunks c WHERE c.job_id = $1 AND c.chunk = $2
                AND c.lease_owner = $3 AND c.state = 'running'),
         recorded AS (
             UPDATE job_items i
             SET outcome = u.outcome, failure_code = u.code, detail = u.detail,
                 finished_at = now()
             FROM unnest($4::int[], $5::text[], $6::text[], $7::text[])
                  AS u(seq, outcome, code, detail)
             WHERE i.job_id = $1 AND i.chunk = $2 AND i.seq = u.seq AND i.outcome IS NULL
               AND EXISTS (SELECT 1 FROM lease)
             RETURNING 1),
         finished AS (
             UPDATE job_chunks SET state = 'done', finished_at = now(), lease_expires_at = NULL
             WHERE $8 AND job_id = $1 AND chunk = $2 AND lease_owner = $3 AND state = 'running'
             RETURNING 1)
         SELECT (SELECT count(*) FROM recorded),
                EXISTS (SELECT 1 FROM finished),
                EXISTS (SELECT 1 FROM job_chunks o
                        WHERE o.job_id = $1 AND o.chunk <> $2 AND o.state = 'pending')",
    )
    .bind(chunk.job_id)
    .bind(chunk.chunk)
    .bind(owner)
    .bind(round.seqs)
    .bind(round.outcomes)
    .bind(round.codes)
    .bind(round.details)
    .bind(finish)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Recorded {
        items: items as u64,
        finished,
        others_pending,
    })
}

/// Whether every chunk of the job is done: asked after finishing a chunk has committed (so
/// that of two workers finishing the last two chunks at once, at least the later one sees
/// both), before taking the job's lock to complete it. Most chunks are not the last, and
/// this costs them one read instead of a locking transaction.
pub async fn all_chunks_done(pool: &PgPool, job_id: Uuid) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT NOT EXISTS (SELECT 1 FROM job_chunks WHERE job_id = $1 AND state <> 'done')",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await?)
}

/// Jobs whose chunks are all done but which were not completed: their last worker stopped
/// between finishing its chunk and completing the job. [`complete_if_done`] completes them.
pub async fn uncompleted_done_jobs(pool: &PgPool) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT j.id FROM jobs j
         WHERE j.state IN ('accepted', 'running')
           AND EXISTS (SELECT 1 FROM job_chunks c WHERE c.job_id = j.id)
           AND NOT EXISTS (SELECT 1 FROM job_chunks c WHERE c.job_id = j.id AND c.state <> 'done')
         LIMIT 100",
    )
    .fetch_all(pool)
    .await?)
}

/// Complete the job if every chunk is done: counts and failures from its items, state
/// `completed`, and its one `job.completed` event, in one transaction under the job's row
/// lock (so two workers finishing the last chunks at once complete it once). Returns the
/// outcome when this call completed it. `failures` lists failed items and skipped items with
/// a reason code, in item order; the outcome considers failed items only.
pub async fn complete_if_done(
    pool: &PgPool,
    job_id: Uuid,
) -> Result<Option<(JobType, Outcome, Counts)>, StoreError> {
    let mut tx = pool.begin().await?;
    let completed = complete_if_done_in(&mut tx, job_id).await?;
    // Nothing changed when nothing completed; committing the empty transaction is harmless
    // and releases the row lock as a rollback would.
    tx.commit().await?;
    Ok(completed)
}

/// [`complete_if_done`] inside the caller's transaction: takes the job's row lock (a no-op
/// when the caller already holds it) and neither begins nor commits, so that an operator's
/// cancel can close the job's items and chunks and complete it in one transaction, with the
/// engine's own completion rules.
pub async fn complete_if_done_in(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
) -> Result<Option<(JobType, Outcome, Counts)>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        state: String,
        message_id: String,
        job_type: Option<String>,
        dry_run: bool,
        ticket: Option<Value>,
        subject: Option<Value>,
        started_at: Option<DateTime<Utc>>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT state, message_id, job_type, dry_run, ticket, subject,
                coalesce(started_at, accepted_at) AS started_at
         FROM jobs WHERE id = $1 FOR UPDATE",
    )
    .bind(job_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(Row {
        state,
        message_id,
        job_type,
        dry_run,
        ticket,
        subject,
        started_at,
    }) = row
    else {
        return Ok(None);
    };
    if state == "completed" {
        return Ok(None);
    }
    let open: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_chunks WHERE job_id = $1 AND state <> 'done'")
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?;
    if open > 0 {
        return Ok(None);
    }
    let job_type = job_type
        .as_deref()
        .and_then(JobType::parse)
        .ok_or_else(|| StoreError::Corrupt(format!("job {job_id} has no known type")))?;
    let mut counts = Counts::default();
    let by_outcome: Vec<(Option<String>, i64)> = sqlx::query_as(
        "SELECT outcome, count(*) FROM job_items WHERE job_id = $1 GROUP BY outcome",
    )
    .bind(job_id)
    .fetch_all(&mut **tx)
    .await?;
    for (outcome, n) in by_outcome {
        let n = n as u64;
        counts.total += n;
        match outcome.as_deref() {
            Some("changed") => counts.changed += n,
            Some("already_compliant") => counts.already_compliant += n,
            Some("failed") => counts.failed += n,
            Some("skipped") => counts.skipped += n,
            _ => {
                return Err(StoreError::Corrupt(format!(
                    "job {job_id} has items without an outcome in done chunks"
                )));
            }
        }
    }
    let failures: Vec<(String, String, Option<String>)> = sqlx::query_as(
        "SELECT item, failure_code, detail FROM job_items
         WHERE job_id = $1 AND failure_code IS NOT NULL ORDER BY seq LIMIT $2",
    )
    .bind(job_id)
    .bind(MAX_FAILURES_LISTED as i64 + 1)
    .fetch_all(&mut **tx)
    .await?;
    let failures = failures
        .into_iter()
        .map(|(item, code, detail)| Failure {
            item,
            code: FailureCode::ALL
                .iter()
                .copied()
                .find(|c| c.as_str() == code)
                .unwrap_or(FailureCode::TenantRejected),
            detail: detail.unwrap_or_default(),
        })
        .collect();
    let outcome = if counts.failed == 0 {
        Outcome::Succeeded
    } else if counts.failed == counts.total {
        Outcome::Failed
    } else {
        Outcome::PartiallySucceeded
    };
    let ticket = ticket
        .map(serde_json::from_value::<Ticket>)
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))?;
    let identity = JobIdentity {
        id: job_id,
        message_id: &message_id,
        job_type,
        ticket,
        dry_run,
    };
    finish(
        tx,
        &identity,
        subject,
        outcome,
        counts,
        failures,
        started_at.unwrap_or_else(Utc::now),
    )
    .await?;
    Ok(Some((job_type, outcome, counts)))
}

/// Decode a stored actor.
pub fn actor(value: Option<Value>) -> Option<Actor> {
    value.and_then(|v| serde_json::from_value(v).ok())
}

/// Decode a stored ticket.
pub fn ticket(value: Option<Value>) -> Option<Ticket> {
    value.and_then(|v| serde_json::from_value(v).ok())
}

/// Figures for the operators' gauges.
#[derive(Debug, Default)]
pub struct Backlog {
    pub received: i64,
    pub accepted: i64,
    pub running: i64,
    pub items_remaining: i64,
    pub oldest_received_at: Option<DateTime<Utc>>,
}

pub async fn backlog(pool: &PgPool) -> Result<Backlog, StoreError> {
    let (received, accepted, running, oldest): (i64, i64, i64, Option<DateTime<Utc>>) =
        sqlx::query_as(
            "SELECT count(*) FILTER (WHERE state = 'received'),
                    count(*) FILTER (WHERE state = 'accepted'),
                    count(*) FILTER (WHERE state = 'running'),
                    min(received_at)
             FROM jobs WHERE state <> 'completed'",
        )
        .fetch_one(pool)
        .await?;
    let items_remaining: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_items i JOIN jobs j ON j.id = i.job_id
         WHERE j.state IN ('accepted', 'running') AND i.outcome IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(Backlog {
        received,
        accepted,
        running,
        items_remaining,
        oldest_received_at: oldest,
    })
}

/// An unfinished job, for the 24-hour target.
#[derive(Debug, sqlx::FromRow)]
pub struct UnfinishedJob {
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    pub schedule: Option<String>,
    pub expedited: bool,
    /// Items without an outcome (all of them before planning: unknown, counted as 0).
    pub remaining: i64,
}

pub async fn unfinished_jobs(pool: &PgPool) -> Result<Vec<UnfinishedJob>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT j.id, j.received_at, j.schedule, j.expedited,
                (SELECT count(*) FROM job_items i WHERE i.job_id = j.id AND i.outcome IS NULL)
                    AS remaining
         FROM jobs j WHERE j.state <> 'completed'",
    )
    .fetch_all(pool)
    .await?)
}

/// What ending a job early did.
#[derive(Debug, Clone, Copy)]
pub struct EndedEarly {
    pub items_skipped: u64,
    pub chunks_closed: u64,
}

/// End an unfinished job now, in `tx` (whose caller holds or takes the job's row lock): every
/// item without an outcome is skipped with `code` (`cancelled`, `superseded`) and detail `reason`, so the ticket lists what was not done; every open chunk is
/// closed, and `ended_early` is recorded and merged into the subject, so the completion the
/// caller then makes (`complete_if_done_in`) tells the ticket why. A worker still inside one
/// of the chunks can record nothing more: its writes are guarded by `outcome IS NULL` and by
/// the chunk still running under its lease.
pub async fn end_early_in(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    code: FailureCode,
    reason: &str,
) -> Result<EndedEarly, StoreError> {
    // The subject is merged, not replaced, so the ticket still says what the job was about;
    // a job not yet planned has none and gets one saying only why it ended.
    sqlx::query(
        "UPDATE jobs SET ended_early = $2,
                subject = CASE WHEN jsonb_typeof(subject) = 'object'
                               THEN subject || jsonb_build_object('ended_early', $2::text)
                               ELSE jsonb_build_object('ended_early', $2::text) END,
                updated_at = now()
         WHERE id = $1",
    )
    .bind(job_id)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    let items_skipped = sqlx::query(
        "UPDATE job_items SET outcome = 'skipped', failure_code = $3, detail = $2,
                finished_at = now()
         WHERE job_id = $1 AND outcome IS NULL",
    )
    .bind(job_id)
    .bind(reason)
    .bind(code.as_str())
    .execute(&mut **tx)
    .await?
    .rows_affected();
    let chunks_closed = sqlx::query(
        "UPDATE job_chunks SET state = 'done', lease_owner = NULL, lease_expires_at = NULL,
                finished_at = now()
         WHERE job_id = $1 AND state <> 'done'",
    )
    .bind(job_id)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    Ok(EndedEarly {
        items_skipped,
        chunks_closed,
    })
}

/// Unfinished jobs of `policy_id` planned for a version older than `version` (not dry runs),
/// locked for update: the work a newer definition supersedes.
pub async fn older_policy_jobs(
    tx: &mut Transaction<'_, Postgres>,
    policy_id: &str,
    version: i64,
    except: Uuid,
) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM jobs
         WHERE state IN ('accepted', 'running') AND id <> $3 AND NOT dry_run
           AND job_type IN ('policy.changed', 'policy.members_added')
           AND plan -> 'policy' ->> 'id' = $1
           AND (plan -> 'policy' ->> 'version')::bigint < $2
         ORDER BY id FOR UPDATE",
    )
    .bind(policy_id)
    .bind(version)
    .bind(except)
    .fetch_all(&mut **tx)
    .await?)
}

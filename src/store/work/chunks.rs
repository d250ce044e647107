//! Chunks and their leases: claiming a chunk, renewing and giving back its lease, reading its
//! open items, and recording their outcomes (the chunk done with its last round).
//!
//! Every write by a chunk's worker is guarded by its lease, so a worker that lost its lease
//! (it stalled and another took over) changes nothing.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use crate::store::StoreError;
use crate::tenant::AccessLoss;

/// `jobs.priority` of work that may wait for everything else (an internal sweep): claimed only
/// when no chunk of a higher priority is claimable, never in the slots kept for small jobs,
/// and written with Graph's low priority. Portal jobs have priority 0.
pub const LOW_PRIORITY: i16 = -1;

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
    /// Of those, slots only chunks of small jobs may take.
    pub small_job_reserve: u32,
    /// A job with at most this many items is small (one chunk).
    pub small_job_items: u32,
    /// Claim only chunks of small jobs (an executor kept for them).
    pub only_small: bool,
}

/// Claim the next claimable chunk: pending, or running with an expired lease, of an
/// accepted or running job that is not paused (nor awaiting approval), due by `limits.now`, of an immediate or
/// expedited job or within an open window; and only while fewer than `limits.max_running`
/// chunks hold live leases across all replicas (the claim is serialised by an advisory
/// lock, so the cap holds). A job that superseded another waits while a chunk of that one
/// still runs (it stops at its next write batch), so no write of the older definition lands
/// after the newer one's.
///
/// Which chunk (fair share, issue 18), in this order:
/// 1. the highest `jobs.priority` ([`LOW_PRIORITY`] work only when nothing else is claimable);
/// 2. chunks of small jobs (one chunk: a ticket about a few users) before large jobs' ones;
/// 3. the organisation (`jobs.fair_key`, see migration `0017_fair_share.sql`) holding the
///    fewest live leases: the tenant write budget is taken in turn by the running chunks
///    (`engine::kind::WRITE_TURNS`, the budget's FIFO), so an even count of chunks per
///    organisation is an even share of the budget, whatever one organisation's job size;
/// 4. within that, the smallest job first (shortest job first: fewest tickets wait);
/// 5. lower chunk numbers, older jobs.
///
/// Leases are counted once per claim (the running chunks are a handful), so a claim costs
/// about what it did without the fair share. The share is reached as chunks end: a chunk
/// already running is not interrupted for a newcomer (the slots kept for small jobs let a
/// ticket start at once).
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
        "WITH live AS (
             SELECT coalesce(rj.fair_key, rj.id::text) AS fair_key, count(*) AS running
             FROM job_chunks r JOIN jobs rj ON rj.id = r.job_id
             WHERE r.state = 'running' AND r.lease_expires_at > now()
             GROUP BY 1),
         next AS (
             SELECT c.job_id, c.chunk, c.state = 'running' AS reclaimed
             FROM job_chunks c JOIN jobs j ON j.id = c.job_id
             LEFT JOIN live k ON k.fair_key = coalesce(j.fair_key, j.id::text)
             WHERE j.state IN ('accepted', 'running')
               AND (NOT j.paused OR j.ended_early IS NOT NULL)
               AND j.awaiting_approval IS NULL
               AND (c.not_before <= $3 OR j.expedited OR j.ended_early IS NOT NULL)
               AND (c.wait_until IS NULL OR c.wait_until <= now())
               -- An ended job's chunk left to settle its writes ([`end_early_in`]) writes
               -- nothing: no window, pause or pacing holds it.
               AND (j.schedule IS DISTINCT FROM 'off_peak' OR j.expedited OR $4
                    OR j.ended_early IS NOT NULL)
               AND (c.state = 'pending' OR (c.state = 'running' AND c.lease_expires_at < now()))
               AND NOT EXISTS (
                   SELECT 1 FROM jobs o JOIN job_chunks oc ON oc.job_id = o.id
                   WHERE o.superseded_by = j.id AND oc.state = 'running'
                     AND oc.lease_expires_at > now())
               AND (SELECT coalesce(sum(running), 0) FROM live)
                   < $5 - CASE WHEN coalesce(j.total_items, 0) > $7 OR j.priority < 0
                               THEN $6 ELSE 0 END
               AND (NOT $8 OR (coalesce(j.total_items, 0) <= $7 AND j.priority >= 0))
             ORDER BY j.priority DESC, coalesce(j.total_items, 0) > $7,
                      coalesce(k.running, 0), coalesce(j.total_items, 0),
                      c.chunk, j.accepted_at, c.job_id
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
    .bind(i64::from(limits.small_job_reserve))
    .bind(i64::from(limits.small_job_items))
    .bind(limits.only_small)
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

/// Hand a held chunk back, claimable again (by any replica) `wait` from now on the
/// database's clock: its open items wait for writes to show in reads (replication).
pub async fn defer_chunk(
    pool: &PgPool,
    chunk: &ClaimedChunk,
    owner: &str,
    wait: std::time::Duration,
) -> Result<(), StoreError> {
    let mut tx = begin_relaxed(pool).await?;
    sqlx::query(
        "UPDATE job_chunks SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                wait_until = now() + make_interval(secs => $4)
         WHERE job_id = $1 AND chunk = $2 AND lease_owner = $3 AND state = 'running'",
    )
    .bind(chunk.job_id)
    .bind(chunk.chunk)
    .bind(owner)
    .bind(wait.as_secs_f64())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Hand a chunk back because the tenant refused the service's access, claimable again after
/// `wait`, and say so in its job's detail (`jobs.held`: the [`AccessLoss`], code
/// `tenant_access_lost`), in one transaction. The job stays running; its items keep no outcome.
pub async fn hold_chunk(
    pool: &PgPool,
    chunk: &ClaimedChunk,
    owner: &str,
    wait: std::time::Duration,
    loss: &AccessLoss,
) -> Result<(), StoreError> {
    let mut tx = begin_relaxed(pool).await?;
    let held = sqlx::query(
        "UPDATE job_chunks SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                wait_until = now() + make_interval(secs => $4)
         WHERE job_id = $1 AND chunk = $2 AND lease_owner = $3 AND state = 'running'",
    )
    .bind(chunk.job_id)
    .bind(chunk.chunk)
    .bind(owner)
    .bind(wait.as_secs_f64())
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if held > 0 {
        mark_held(&mut *tx, chunk.job_id, loss).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Say in a job's detail that it is held because the tenant refuses the service's access
/// (as [`hold_chunk`] does, for a job whose planning met the refusal: planning reads the
/// tenant's licences and seats).
pub async fn hold_job(pool: &PgPool, job_id: Uuid, loss: &AccessLoss) -> Result<(), StoreError> {
    mark_held(pool, job_id, loss).await
}

/// `jobs.held` = `loss`, keeping the time the hold began.
async fn mark_held(
    db: impl sqlx::PgExecutor<'_>,
    job_id: Uuid,
    loss: &AccessLoss,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE jobs SET held = jsonb_build_object('code', $2::text, 'reason', $3::text,
                'detail', $4::text, 'since', coalesce(held->'since', to_jsonb($5::timestamptz)))
         WHERE id = $1",
    )
    .bind(job_id)
    .bind(loss.code)
    .bind(loss.reason.as_str())
    .bind(&loss.detail)
    .bind(loss.since)
    .execute(db)
    .await?;
    Ok(())
}

/// The job is no longer held (a chunk of it ran with access).
pub async fn clear_hold(pool: &PgPool, job_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("UPDATE jobs SET held = NULL WHERE id = $1 AND held IS NOT NULL")
        .bind(job_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// The job of a claimed chunk.
#[derive(Debug, sqlx::FromRow)]
pub struct ChunkJob {
    pub job_type: String,
    pub dry_run: bool,
    pub plan: Option<Value>,
    /// The job was ended (cancelled, superseded): its chunks only record what they did.
    pub ended: bool,
    /// Bulk work scheduled for the off-peak window (even when expedited).
    pub off_peak: bool,
    /// Other chunks of the job are waiting to be claimed (when this one was read).
    pub others_waiting: bool,
    /// A chunk of the job was held for lost tenant access ([`hold_chunk`]) and not cleared since.
    pub held: bool,
    /// The job's priority is below normal ([`LOW_PRIORITY`]).
    pub low_priority: bool,
}

pub async fn chunk_job(pool: &PgPool, job_id: Uuid) -> Result<ChunkJob, StoreError> {
    Ok(sqlx::query_as(
        "SELECT job_type, dry_run, plan, ended_early IS NOT NULL AS ended,
                schedule IS NOT DISTINCT FROM 'off_peak' AS off_peak, held IS NOT NULL AS held,
                priority < 0 AS low_priority,
                EXISTS (SELECT 1 FROM job_chunks c
                         WHERE c.job_id = jobs.id AND c.state = 'pending') AS others_waiting
           FROM jobs WHERE id = $1",
    )
    .bind(job_id)
    .fetch_one(pool)
    .await?)
}

/// Record that writes for the items `seqs` of the chunk are about to be sent to the tenant,
/// if and only if the chunk is still this worker's and its job has not ended. Returns whether
/// they may be sent. Asked before every write batch: an ended job stops writing within one
/// batch per running chunk, and a write's item is known to be this job's change even if its
/// outcome is never recorded (a crash, an outage): see [`record_outcomes`].
///
/// `before` holds, for such items, what the applier read before the write (seq, lower-case
/// address, image): recorded in the same statement (`job_item_before_images`, first image
/// kept), so a revert finds it whether or not the write's outcome is ever recorded.
pub async fn intend_writes(
    pool: &PgPool,
    chunk: &ClaimedChunk,
    owner: &str,
    seqs: &[i32],
    before: &[(i32, String, Value)],
) -> Result<bool, StoreError> {
    let mut tx = begin_relaxed(pool).await?;
    let image_seqs: Vec<i32> = before.iter().map(|b| b.0).collect();
    let addresses: Vec<&str> = before.iter().map(|b| b.1.as_str()).collect();
    let images: Vec<Value> = before.iter().map(|b| b.2.clone()).collect();
    // One row for the call's writes (`write_intents`), inserted only while the chunk is held
    // and its job runs; `seqs` empty only asks.
    let held: bool = sqlx::query_scalar(
        "WITH held AS (
             SELECT 1 FROM job_chunks c JOIN jobs j ON j.id = c.job_id
             WHERE c.job_id = $1 AND c.chunk = $2 AND c.lease_owner = $3 AND c.state = 'running'
               AND j.ended_early IS NULL),
         intended AS (
             INSERT INTO write_intents (job_id, chunk, seqs)
             SELECT $1, $2, $4 WHERE cardinality($4::int[]) > 0 AND EXISTS (SELECT 1 FROM held)
             RETURNING 1),
         imaged AS (
             INSERT INTO job_item_before_images (job_id, seq, address, image)
             SELECT $1, b.seq, b.address, b.image
               FROM unnest($5::int[], $6::text[], $7::jsonb[]) AS b(seq, address, image)
              WHERE EXISTS (SELECT 1 FROM held)
             ON CONFLICT (job_id, seq) DO NOTHING
             RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM held)",
    )
    .bind(chunk.job_id)
    .bind(chunk.chunk)
    .bind(owner)
    .bind(seqs)
    .bind(&image_seqs)
    .bind(&addresses)
    .bind(&images)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(held)
}

/// Where a chunk whose work was interrupted stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkFate {
    /// Still this worker's, and its job goes on (the worker is stopping, or hit an error).
    Held,
    /// Still this worker's, but its job has ended: record what was done, skip the rest.
    JobEnded,
    /// Another worker's now (or done): nothing more to record here.
    Lost,
}

pub async fn chunk_fate(
    pool: &PgPool,
    chunk: &ClaimedChunk,
    owner: &str,
) -> Result<ChunkFate, StoreError> {
    let ended: Option<bool> = sqlx::query_scalar(
        "SELECT j.ended_early IS NOT NULL FROM job_chunks c JOIN jobs j ON j.id = c.job_id
         WHERE c.job_id = $1 AND c.chunk = $2 AND c.lease_owner = $3 AND c.state = 'running'",
    )
    .bind(chunk.job_id)
    .bind(chunk.chunk)
    .bind(owner)
    .fetch_optional(pool)
    .await?;
    Ok(match ended {
        None => ChunkFate::Lost,
        Some(true) => ChunkFate::JobEnded,
        Some(false) => ChunkFate::Held,
    })
}

/// End a held chunk of an ended job: its items without an outcome are skipped with the
/// job's `ended_code` and reason, and the chunk is done. Returns whether it was ours to end.
pub async fn end_chunk_early(
    pool: &PgPool,
    chunk: &ClaimedChunk,
    owner: &str,
) -> Result<bool, StoreError> {
    let mut tx = pool.begin().await?;
    let ended: bool = sqlx::query_scalar(
        // No FOR UPDATE in `held`: a row this statement also updates (`finished`) would be
        // skipped by it, and the items with it.
        "WITH held AS (
             SELECT 1 FROM job_chunks c WHERE c.job_id = $1 AND c.chunk = $2
                AND c.lease_owner = $3 AND c.state = 'running'),
         skipped AS (
             UPDATE job_items i SET outcome = 'skipped',
                    failure_code = coalesce(j.ended_code, 'cancelled'), detail = j.ended_early,
                    finished_at = now()
             FROM jobs j
             WHERE j.id = $1 AND i.job_id = $1 AND i.chunk = $2 AND i.outcome IS NULL
               AND EXISTS (SELECT 1 FROM held)
             RETURNING 1),
         finished AS (
             UPDATE job_chunks SET state = 'done', finished_at = now(), lease_expires_at = NULL
             WHERE job_id = $1 AND chunk = $2 AND lease_owner = $3 AND state = 'running'
             RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM finished)",
    )
    .bind(chunk.job_id)
    .bind(chunk.chunk)
    .bind(owner)
    .fetch_one(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(ended)
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

/// Open items of the chunk whose writes an earlier claim may have made (their intents are
/// recorded, their outcomes are not: its worker died or stopped, or its job ended, before it
/// could record them), each with the age of its latest intent (by the database's clock). A
/// read that does not show such a write within the verify window of that age can be trusted.
pub async fn intended_items(
    pool: &PgPool,
    chunk: &ClaimedChunk,
) -> Result<HashMap<i32, std::time::Duration>, StoreError> {
    let rows: Vec<(i32, f64)> = sqlx::query_as(
        "SELECT s.seq, extract(epoch FROM now() - max(w.at))::float8
           FROM write_intents w
           CROSS JOIN LATERAL unnest(w.seqs) AS s(seq)
           JOIN job_items i ON i.job_id = w.job_id AND i.chunk = w.chunk AND i.seq = s.seq
          WHERE w.job_id = $1 AND w.chunk = $2 AND i.outcome IS NULL
          GROUP BY s.seq",
    )
    .bind(chunk.job_id)
    .bind(chunk.chunk)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, age)| (seq, std::time::Duration::from_secs_f64(age.max(0.0))))
        .collect())
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
    /// Of them, found compliant by a read after a write of this job that was sent but not
    /// recorded (a crash, an outage): recorded `changed`.
    pub promoted: u64,
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
    let (items, promoted, finished, others_pending): (i64, i64, bool, bool) = sqlx::query_as(
        "WITH lease AS (
             SELECT 1 FROM job_chunks c WHERE c.job_id = $1 AND c.chunk = $2
                AND c.lease_owner = $3 AND c.state = 'running'),
         recorded AS (
             UPDATE job_items i
             SET outcome = CASE WHEN u.outcome = 'already_compliant' AND EXISTS (
                                    SELECT 1 FROM write_intents w
                                    WHERE w.job_id = $1 AND w.chunk = $2 AND u.seq = ANY(w.seqs))
                                THEN 'changed' ELSE u.outcome END,
                 failure_code = u.code, detail = u.detail,
                 finished_at = now()
             FROM unnest($4::int[], $5::text[], $6::text[], $7::text[])
                  AS u(seq, outcome, code, detail)
             WHERE i.job_id = $1 AND i.chunk = $2 AND i.seq = u.seq AND i.outcome IS NULL
               AND EXISTS (SELECT 1 FROM lease)
             RETURNING u.outcome = 'already_compliant' AND i.outcome = 'changed' AS promoted),
         finished AS (
             UPDATE job_chunks SET state = 'done', finished_at = now(), lease_expires_at = NULL
             WHERE $8 AND job_id = $1 AND chunk = $2 AND lease_owner = $3 AND state = 'running'
             RETURNING 1)
         SELECT (SELECT count(*) FROM recorded),
                (SELECT count(*) FROM recorded WHERE promoted),
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
        promoted: promoted as u64,
        finished,
        others_pending,
    })
}

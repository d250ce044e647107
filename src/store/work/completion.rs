//! Completion: a job completed at once by its planner, or when its last chunk is done (counts
//! and failures from its items, one `job.completed` event); a job ended early (cancelled by an
//! operator, or superseded by a newer policy definition).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{JobIdentity, JobState};
use crate::domain::{
    Counts, EventHeader, Failure, FailureCode, JobCompleted, JobType, MAX_FAILURES_LISTED, Outcome,
    Ticket,
};
use crate::store::{StoreError, outbox};

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
    // What operators did to the job (who, when, why) goes with its completion.
    let actions = super::controls::operator_actions(&mut **tx, job.id).await?;
    let subject = if actions.is_empty() {
        subject
    } else {
        let mut subject = match subject {
            Some(Value::Object(map)) => map,
            _ => serde_json::Map::new(),
        };
        subject.insert(
            "operator_actions".into(),
            serde_json::to_value(&actions).expect("actions serialize"),
        );
        Some(Value::Object(subject))
    };
    sqlx::query(
        "UPDATE jobs SET state = 'completed', outcome = $2, subject = coalesce($3, subject),
                counts = $4, completed_at = $5, updated_at = $5, awaiting_approval = NULL
         WHERE id = $1",
    )
    .bind(job.id)
    .bind(outcome.as_str())
    .bind(&subject)
    .bind(serde_json::to_value(counts).expect("counts serialize"))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    // A job the service stored itself resolves no ticket: a drift sweep publishes what it
    // found (`drift.detected`, when anything drifted) instead of a `job.completed`.
    if !job.job_type.publishes_job_events() {
        return crate::store::drift::publish_detected(
            tx,
            job.id,
            job.message_id,
            job.dry_run,
            subject.as_ref(),
        )
        .await;
    }
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
        state: JobState,
        message_id: String,
        job_type: Option<String>,
        dry_run: bool,
        ticket: super::StoredTicket,
        subject: Option<Value>,
        started_at: Option<DateTime<Utc>>,
        ended_code: Option<String>,
    }
    let row: Option<Row> = sqlx::query_as(
        "SELECT state, message_id, job_type, dry_run, ticket, subject, ended_code,
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
        ended_code,
    }) = row
    else {
        return Ok(None);
    };
    if state == JobState::Completed {
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
    // Every outcome is recorded: the write intents have served.
    sqlx::query("DELETE FROM write_intents WHERE job_id = $1")
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
    let job_type = job_type
        .as_deref()
        .and_then(JobType::from_stored)
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
        .collect::<Vec<_>>();
    // A job that waited for an approval that never came did nothing it was asked to: the
    // contract's `rejected`, `awaiting_approval_expired`.
    let expired = ended_code.as_deref() == Some(FailureCode::AwaitingApprovalExpired.as_str());
    let mut failures = failures;
    if expired && failures.is_empty() {
        // Held before planning stored items: the job itself is the failure.
        let detail: Option<String> =
            sqlx::query_scalar("SELECT ended_early FROM jobs WHERE id = $1")
                .bind(job_id)
                .fetch_one(&mut **tx)
                .await?;
        failures.push(Failure {
            item: message_id.clone(),
            code: FailureCode::AwaitingApprovalExpired,
            detail: detail.unwrap_or_default(),
        });
    }
    let outcome = if expired {
        Outcome::Rejected
    } else if counts.failed == 0 {
        Outcome::Succeeded
    } else if counts.failed == counts.total {
        Outcome::Failed
    } else {
        Outcome::PartiallySucceeded
    };
    let ticket = ticket
        .map(|raw| Ticket::from_json(raw.get()))
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

/// What ending a job early did.
#[derive(Debug, Clone, Copy)]
pub struct EndedEarly {
    pub items_skipped: u64,
    pub chunks_closed: u64,
    /// Chunks a worker still holds, or reopened for a worker to read back the writes an
    /// earlier claim may have made: they end when it is done, and the job with them.
    pub chunks_running: u64,
}

/// The channel a job's end is announced on (`NOTIFY`), with the job's id as payload: every
/// replica stops its running chunks of that job at once.
pub const JOB_ENDED_CHANNEL: &str = "reconciler_job_ended";

/// End an unfinished job, in `tx` (whose caller holds or takes the job's row lock), by an
/// operator's cancel or a newer job (`superseded_by`): `ended_early` and `ended_code` are
/// recorded and `ended_early` merged into the subject, so the completion tells the ticket why.
///
/// Chunks nobody works on (pending, or whose lease expired) end now: their items without an
/// outcome are skipped with `code` and detail `reason`. A chunk a worker holds is left to it:
/// the worker is told (`NOTIFY`, [`JOB_ENDED_CHANNEL`]), its write gate refuses the next batch
/// ([`intend_writes`](super::intend_writes)), it records what it did write and skips the rest
/// ([`end_chunk_early`](super::end_chunk_early)). The job completes when its last chunk is
/// done, so `job.completed` counts every write that reached the tenant.
pub async fn end_early_in(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    code: FailureCode,
    reason: &str,
    superseded_by: Option<Uuid>,
) -> Result<EndedEarly, StoreError> {
    // The subject is merged, not replaced, so the ticket still says what the job was about;
    // a job not yet planned has none and gets one saying only why it ended.
    sqlx::query(
        "UPDATE jobs SET ended_early = $2, ended_code = $3, superseded_by = $4,
                subject = CASE WHEN jsonb_typeof(subject) = 'object'
                               THEN subject || jsonb_build_object('ended_early', $2::text)
                               ELSE jsonb_build_object('ended_early', $2::text) END,
                updated_at = now()
         WHERE id = $1",
    )
    .bind(job_id)
    .bind(reason)
    .bind(code.as_str())
    .bind(superseded_by)
    .execute(&mut **tx)
    .await?;
    // Idle chunks (no live lease) end here, their open items skipped: but for items whose
    // writes an earlier claim may have made (intents recorded, outcomes not: its worker died
    // or stopped). Those stay open, and their chunk pending, claimable at once: a worker reads
    // them back and reports what reached the tenant before the chunk ends
    // ([`crate::engine::reconcile`]); skipped unread, a write made would be reported undone.
    let (items_skipped, chunks_closed, chunks_running): (i64, i64, i64) = sqlx::query_as(
        "WITH idle AS (
             SELECT chunk FROM job_chunks
             WHERE job_id = $1 AND state <> 'done'
               AND NOT (state = 'running' AND lease_expires_at > now())),
         intended AS (
             SELECT DISTINCT w.chunk, s.seq
               FROM write_intents w CROSS JOIN LATERAL unnest(w.seqs) AS s(seq)
              WHERE w.job_id = $1 AND w.chunk IN (SELECT chunk FROM idle)),
         skipped AS (
             UPDATE job_items i SET outcome = 'skipped', failure_code = $3, detail = $2,
                    finished_at = now()
             WHERE i.job_id = $1 AND i.outcome IS NULL AND i.chunk IN (SELECT chunk FROM idle)
               AND NOT EXISTS (SELECT 1 FROM intended n WHERE n.chunk = i.chunk AND n.seq = i.seq)
             RETURNING 1),
         unsettled AS (
             SELECT DISTINCT n.chunk FROM intended n JOIN job_items i
                 ON i.job_id = $1 AND i.chunk = n.chunk AND i.seq = n.seq
              WHERE i.outcome IS NULL),
         reopened AS (
             UPDATE job_chunks SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                    wait_until = NULL
             WHERE job_id = $1 AND chunk IN (SELECT chunk FROM unsettled)
             RETURNING 1),
         closed AS (
             UPDATE job_chunks SET state = 'done', lease_owner = NULL, lease_expires_at = NULL,
                    finished_at = now()
             WHERE job_id = $1 AND chunk IN (SELECT chunk FROM idle)
               AND chunk NOT IN (SELECT chunk FROM unsettled)
             RETURNING 1)
         SELECT (SELECT count(*) FROM skipped), (SELECT count(*) FROM closed),
                (SELECT count(*) FROM job_chunks
                 WHERE job_id = $1 AND state = 'running' AND lease_expires_at > now())
                + (SELECT count(*) FROM reopened)",
    )
    .bind(job_id)
    .bind(reason)
    .bind(code.as_str())
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(JOB_ENDED_CHANNEL)
        .bind(job_id.to_string())
        .execute(&mut **tx)
        .await?;
    Ok(EndedEarly {
        items_skipped: items_skipped as u64,
        chunks_closed: chunks_closed as u64,
        chunks_running: chunks_running as u64,
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

/// A listener for [`JOB_ENDED_CHANNEL`] (a connection of its own).
pub async fn job_end_listener(pool: &PgPool) -> Result<sqlx::postgres::PgListener, StoreError> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(JOB_ENDED_CHANNEL).await?;
    Ok(listener)
}

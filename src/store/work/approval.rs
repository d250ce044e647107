//! Guard rails on large changes (contract 1.1): a job whose planned effect is over the
//! thresholds waits (`jobs.awaiting_approval`), `received`, with nothing of its plan stored
//! (no desired state changed, no items), until an operator approves it
//! ([`super::controls::approve`]: it is then planned again, from the state of then, and runs)
//! or cancels it, or until it has waited too long ([`expire_approval`]: it ends `rejected`,
//! `awaiting_approval_expired`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{JobIdentity, JobState, complete_if_done_in, end_early_in};
use crate::domain::{
    ApprovalThreshold, ChangeEffect, Counts, EventHeader, FailureCode, JobApprovalRequired,
    JobType, Outcome,
};
use crate::store::{StoreError, outbox};

/// Make a job being planned wait for approval (not planned again until approved), and
/// publish `job.approval_required`; in the planning transaction.
pub async fn await_approval(
    tx: &mut Transaction<'_, Postgres>,
    job: &JobIdentity<'_>,
    subject: &Value,
    effect: ChangeEffect,
    threshold: ApprovalThreshold,
) -> Result<(), StoreError> {
    // The database's clock, which judges the expiry too ([`approvals_expired`]).
    let since: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE jobs SET awaiting_approval = $2, subject = $3, plan_not_before = 'infinity',
                updated_at = now()
         WHERE id = $1",
    )
    .bind(job.id)
    .bind(json!({ "effect": effect, "threshold": threshold, "since": since }))
    .bind(subject)
    .execute(&mut **tx)
    .await?;
    let header = EventHeader::new(
        JobApprovalRequired::TYPE,
        job.id,
        job.message_id.to_owned(),
        job.ticket.clone(),
    );
    let event = JobApprovalRequired {
        header: header.clone(),
        job_type: job.job_type,
        subject: subject.clone(),
        effect,
        threshold,
    };
    outbox::enqueue(tx, &header, &event).await
}

/// Whether an operator approved the job (it is then never held again).
pub async fn approved(
    executor: impl sqlx::PgExecutor<'_>,
    job_id: Uuid,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM job_operator_actions WHERE job_id = $1 AND action = 'approve')",
    )
    .bind(job_id)
    .fetch_one(executor)
    .await?)
}

/// Jobs that have waited for approval since before `before`.
pub async fn approvals_expired(pool: &PgPool, wait: Duration) -> Result<Vec<Uuid>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT id FROM jobs WHERE awaiting_approval IS NOT NULL AND state <> 'completed'
           AND (awaiting_approval ->> 'since')::timestamptz < now() - make_interval(secs => $1)",
    )
    .bind(wait.as_secs_f64())
    .fetch_all(pool)
    .await?)
}

/// End a job that has waited for approval longer than `wait` (by the database's clock): its items are skipped with
/// `awaiting_approval_expired` and it completes `rejected`. `None` when it no longer waits
/// (approved or ended meanwhile).
pub async fn expire_approval(
    pool: &PgPool,
    job_id: Uuid,
    wait: Duration,
    reason: &str,
) -> Result<Option<(JobType, Outcome, Counts)>, StoreError> {
    let mut tx = pool.begin().await?;
    let waiting: Option<JobState> = sqlx::query_scalar(
        "SELECT state FROM jobs WHERE id = $1 AND awaiting_approval IS NOT NULL
           AND (awaiting_approval ->> 'since')::timestamptz < now() - make_interval(secs => $2)
         FOR UPDATE",
    )
    .bind(job_id)
    .bind(wait.as_secs_f64())
    .fetch_optional(&mut *tx)
    .await?;
    if waiting.is_none_or(|state| state == JobState::Completed) {
        return Ok(None);
    }
    end_early_in(
        &mut tx,
        job_id,
        FailureCode::AwaitingApprovalExpired,
        reason,
        None,
    )
    .await?;
    let completed = complete_if_done_in(&mut tx, job_id).await?;
    tx.commit().await?;
    Ok(completed)
}

/// List the items of a `policy.changed` held for approval as `skipped`, `cancelled` (with
/// `detail`), in one chunk that is never claimed: the members its payload lists (normalised
/// as the planner does plain addresses: trimmed, lower case, each once, in list order), or,
/// without a list, the policy's stored members. Its `total_items` is set. Returns how many.
pub async fn store_cancelled_items(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    detail: &str,
) -> Result<u64, StoreError> {
    let listed = sqlx::query(
        "WITH job AS (SELECT payload FROM jobs WHERE id = $1),
         listed AS (
             SELECT lower(btrim(e.m)) AS item, min(e.ord) AS ord
               FROM job CROSS JOIN LATERAL jsonb_array_elements_text(
                        CASE WHEN jsonb_typeof(job.payload -> 'members') = 'array'
                             THEN job.payload -> 'members' ELSE '[]'::jsonb END)
                    WITH ORDINALITY AS e(m, ord)
              GROUP BY 1),
         stored AS (
             SELECT pm.email AS item, row_number() OVER (ORDER BY pm.email) AS ord
               FROM job JOIN policy_members pm ON pm.policy_id = job.payload -> 'policy' ->> 'id'
              WHERE jsonb_typeof(job.payload -> 'members') IS DISTINCT FROM 'array'),
         items AS (SELECT item, ord FROM listed UNION ALL SELECT item, ord FROM stored)
         INSERT INTO job_items (job_id, seq, chunk, item, outcome, failure_code, detail,
                                finished_at)
         SELECT $1, (row_number() OVER (ORDER BY ord) - 1)::int, 0, item, 'skipped',
                $2, $3, now()
           FROM items",
    )
    .bind(job_id)
    .bind(FailureCode::Cancelled.as_str())
    .bind(detail)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    sqlx::query("UPDATE jobs SET total_items = $2 WHERE id = $1")
        .bind(job_id)
        .bind(listed as i64)
        .execute(&mut **tx)
        .await?;
    Ok(listed)
}

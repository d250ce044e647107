//! The operator controls: pause, resume, expedite, cancel and approve an unfinished job. The
//! engine honours the flags: it claims no chunk of a paused job (or of one awaiting approval),
//! and lets an expedited job's chunks run at once, outside the off-peak windows. Every control
//! records who used it, when and why (`job_operator_actions`), in its own transaction.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::{JobRef, JobState, complete_if_done_in, end_early_in};
use crate::domain::{Counts, FailureCode, JobType, Outcome};
use crate::store::StoreError;

/// Why a cancelled job ended early: stored in `jobs.ended_early`, in the completed event's
/// `subject`, and (prefixed `cancelled: `) on each skipped item.
pub const CANCELLED_BY_OPERATOR: &str = "cancelled by an operator";

/// Why a control changed nothing, or could not run.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No job has this id or `message_id`.
    #[error("no such job")]
    NotFound,
    /// The job is completed; controls apply to unfinished jobs only.
    #[error("the job is already completed")]
    AlreadyCompleted,
    /// `approve` of a job that does not wait for approval.
    #[error("the job is not awaiting approval")]
    NotAwaitingApproval,
    /// `--by` or `--reason` is empty.
    #[error("{0} must not be empty")]
    MissingOperator(&'static str),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for ControlError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// Who used a control, and why (`--by`, `--reason`: both required).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Operator<'a> {
    pub by: &'a str,
    pub reason: &'a str,
}

impl Operator<'_> {
    pub(super) fn check(&self) -> Result<(), ControlError> {
        if self.by.trim().is_empty() {
            return Err(ControlError::MissingOperator("--by"));
        }
        if self.reason.trim().is_empty() {
            return Err(ControlError::MissingOperator("--reason"));
        }
        Ok(())
    }
}

/// A recorded operator action, as `jobs show` lists it and `job.completed` carries it
/// (`subject.operator_actions`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct OperatorAction {
    pub action: String,
    pub by: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

pub(super) async fn record(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    action: &str,
    operator: &Operator<'_>,
) -> Result<(), ControlError> {
    sqlx::query(
        "INSERT INTO job_operator_actions (job_id, action, by_whom, reason) VALUES ($1, $2, $3, $4)",
    )
    .bind(job_id)
    .bind(action)
    .bind(operator.by.trim())
    .bind(operator.reason.trim())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The operator actions on a job, oldest first.
pub async fn operator_actions(
    executor: impl sqlx::PgExecutor<'_>,
    job_id: Uuid,
) -> Result<Vec<OperatorAction>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT action, by_whom AS by, reason, at FROM job_operator_actions
         WHERE job_id = $1 ORDER BY id",
    )
    .bind(job_id)
    .fetch_all(executor)
    .await?)
}

/// The job a control changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Controlled {
    pub id: Uuid,
    pub message_id: String,
    /// The job still waits for an operator's approval: a pause, resume or expedite does not
    /// go round it (only `jobs approve` or `jobs cancel` ends the wait).
    pub awaiting_approval: bool,
}

/// Set `paused`: while it is set the engine claims no new chunk of the job (chunks running
/// finish).
pub async fn set_paused(
    pool: &PgPool,
    job: JobRef<'_>,
    paused: bool,
    operator: &Operator<'_>,
) -> Result<Controlled, ControlError> {
    operator.check()?;
    let mut tx = pool.begin().await?;
    let updated: Option<(Uuid, String, bool)> = sqlx::query_as(
        "UPDATE jobs SET paused = $3, updated_at = now()
         WHERE (id = $1 OR message_id = $2) AND state <> 'completed'
         RETURNING id, message_id, awaiting_approval IS NOT NULL",
    )
    .bind(job.id)
    .bind(job.message_id)
    .bind(paused)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, message_id, awaiting_approval)) = updated else {
        drop(tx);
        return Err(why_unchanged(pool, job).await);
    };
    let action = if paused { "pause" } else { "resume" };
    record(&mut tx, id, action, operator).await?;
    tx.commit().await?;
    Ok(Controlled {
        id,
        message_id,
        awaiting_approval,
    })
}

/// Set `expedited`, and make every chunk not done claimable now: the job runs at once,
/// outside the off-peak windows. Returns the job and how many chunks were rescheduled.
pub async fn expedite(
    pool: &PgPool,
    job: JobRef<'_>,
    operator: &Operator<'_>,
) -> Result<(Controlled, u64), ControlError> {
    operator.check()?;
    let mut tx = pool.begin().await?;
    let updated: Option<(Uuid, String, bool)> = sqlx::query_as(
        "UPDATE jobs SET expedited = true, updated_at = now()
         WHERE (id = $1 OR message_id = $2) AND state <> 'completed'
         RETURNING id, message_id, awaiting_approval IS NOT NULL",
    )
    .bind(job.id)
    .bind(job.message_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((id, message_id, awaiting_approval)) = updated else {
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
    record(&mut tx, id, "expedite", operator).await?;
    tx.commit().await?;
    Ok((
        Controlled {
            id,
            message_id,
            awaiting_approval,
        },
        rescheduled,
    ))
}

/// What [`cancel`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CancelReport {
    pub id: Uuid,
    pub message_id: String,
    /// The state the job was in.
    pub previous_state: JobState,
    /// Items without an outcome, now `skipped`.
    pub items_skipped: u64,
    /// Chunks not done, now done.
    pub chunks_closed: u64,
    /// Chunks a worker holds: it stops them at its next write batch, records what it wrote,
    /// and then the job completes.
    pub chunks_running: u64,
    /// The completion, as published in `job.completed`, when no chunk was running.
    pub completed: Option<(Outcome, Counts)>,
}

/// Cancel an unfinished job ([`end_early_in`]): items of chunks nobody works on become
/// `skipped`, and their chunks done; chunks a worker holds stop at their next write batch and
/// record what they wrote. The job completes as the engine completes it (counts from items,
/// the outcome rules, one `job.completed` whose `subject` says `ended_early`): now, in this
/// transaction under the job's row lock, when no chunk was running, else when the last
/// running chunk has stopped.
///
/// A worker's claim of a chunk of an `accepted` job can deadlock with this transaction
/// (chunk then job, against job then chunk); PostgreSQL aborts one of the two, and a
/// transient failure here is retried.
pub async fn cancel(
    pool: &PgPool,
    job: JobRef<'_>,
    operator: &Operator<'_>,
) -> Result<CancelReport, ControlError> {
    operator.check()?;
    let mut attempt = 1;
    loop {
        match try_cancel(pool, job, operator).await {
            Err(ControlError::Store(error)) if error.is_transient() && attempt < 3 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(100 * attempt)).await;
            }
            result => return result,
        }
    }
}

/// The job `job` names, locked for an operator's control: id, message id, state, and whether
/// it awaits approval.
async fn lock_job(
    tx: &mut Transaction<'_, Postgres>,
    job: JobRef<'_>,
) -> Result<Option<(Uuid, String, JobState, bool)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, message_id, state, awaiting_approval IS NOT NULL FROM jobs
         WHERE id = $1 OR message_id = $2
         ORDER BY (id = $1) DESC NULLS LAST LIMIT 1 FOR UPDATE",
    )
    .bind(job.id)
    .bind(job.message_id)
    .fetch_optional(&mut **tx)
    .await
}

async fn try_cancel(
    pool: &PgPool,
    job: JobRef<'_>,
    operator: &Operator<'_>,
) -> Result<CancelReport, ControlError> {
    let mut tx = pool.begin().await?;
    let row = lock_job(&mut tx, job).await?;
    let Some((id, message_id, previous_state, awaiting)) = row else {
        return Err(ControlError::NotFound);
    };
    if previous_state == JobState::Completed {
        return Err(ControlError::AlreadyCompleted);
    }
    // Recorded first, so that the completion (now or when the last running chunk stops)
    // carries it.
    record(&mut tx, id, "cancel", operator).await?;
    // A job waiting for approval kept nothing of its plan: its items are listed now, skipped
    // as `cancelled` (the contract's "completes with its items skipped as cancelled").
    let listed = if awaiting {
        super::approval::store_cancelled_items(&mut tx, id, CANCELLED_BY_OPERATOR).await?
    } else {
        0
    };
    let mut ended = end_early_in(
        &mut tx,
        id,
        FailureCode::Cancelled,
        CANCELLED_BY_OPERATOR,
        None,
    )
    .await?;
    ended.items_skipped += listed;
    let completed = if ended.chunks_running == 0 {
        let (_, outcome, counts) = complete(&mut tx, id).await?;
        Some((outcome, counts))
    } else {
        None
    };
    tx.commit().await?;
    Ok(CancelReport {
        id,
        message_id,
        previous_state,
        items_skipped: ended.items_skipped,
        chunks_closed: ended.chunks_closed,
        chunks_running: ended.chunks_running,
        completed,
    })
}

/// Approve a job that waits for approval: it is planned again at once (from the state of
/// now, as the contract's "runs as planned": the same job, its effect recounted) and runs.
pub async fn approve(
    pool: &PgPool,
    job: JobRef<'_>,
    operator: &Operator<'_>,
) -> Result<Controlled, ControlError> {
    operator.check()?;
    let mut tx = pool.begin().await?;
    let row = lock_job(&mut tx, job).await?;
    let Some((id, message_id, state, awaiting)) = row else {
        return Err(ControlError::NotFound);
    };
    if state == JobState::Completed {
        return Err(ControlError::AlreadyCompleted);
    }
    if !awaiting {
        return Err(ControlError::NotAwaitingApproval);
    }
    // Planned again now: from the state of now, and never held again.
    sqlx::query(
        "UPDATE jobs SET awaiting_approval = NULL, plan_not_before = now(), updated_at = now()
         WHERE id = $1",
    )
    .bind(id)
    .execute(&mut *tx)
    .await?;
    record(&mut tx, id, "approve", operator).await?;
    tx.commit().await?;
    Ok(Controlled {
        id,
        message_id,
        awaiting_approval: false,
    })
}

async fn complete(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<(JobType, Outcome, Counts), ControlError> {
    complete_if_done_in(tx, id).await?.ok_or_else(|| {
        // Every chunk is done and the job is unfinished under our lock, so this cannot be.
        ControlError::Store(StoreError::Corrupt(format!(
            "job {id} did not complete after its chunks were closed"
        )))
    })
}

/// Why an update guarded by `state <> 'completed'` changed nothing.
async fn why_unchanged(pool: &PgPool, job: JobRef<'_>) -> ControlError {
    let exists: Result<bool, sqlx::Error> =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM jobs WHERE id = $1 OR message_id = $2)")
            .bind(job.id)
            .bind(job.message_id)
            .fetch_one(pool)
            .await;
    match exists {
        Ok(true) => ControlError::AlreadyCompleted,
        Ok(false) => ControlError::NotFound,
        Err(error) => error.into(),
    }
}

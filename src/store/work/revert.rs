//! Revert (contract 1.1): what a job's items were before its writes (`job_item_before_images`,
//! recorded with each write's intent: [`super::intend_writes`]), an operator's request to
//! restore them as a new job ([`request`]), and what that job needs to plan and apply: the
//! reverted job's changed items with their images ([`changed_items`]) and which of them a
//! later job wrote again ([`superseded`]).

use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::JobRef;
use super::controls::{ControlError, Operator, record};
use crate::domain::JobType;
use crate::store::StoreError;

/// How the message id of a revert job begins; the rest is `{reverted job id}:{revert job id}`.
pub const REVERT_PREFIX: &str = "revert:";

/// Job types a revert can undo: those whose applier records before-images (the policy
/// applier: licences and disabled plans). Admin-role and portal jobs are refused.
const REVERTIBLE: [JobType; 3] = [
    JobType::PolicyChanged,
    JobType::PolicyMembersAdded,
    JobType::PolicyRevert,
];

/// Why a revert was refused.
#[derive(Debug, thiserror::Error)]
pub enum RevertRefused {
    #[error("the job is not completed (it is {0}): only a completed job can be reverted")]
    NotCompleted(&'static str),
    #[error("the job was a dry run: it changed nothing in the tenant")]
    DryRun,
    #[error(
        "revert is for policy jobs only (policy.changed, policy.members_added); this job is {0}"
    )]
    NotRevertible(String),
    #[error("the job changed nothing in the tenant: there is nothing to revert")]
    NothingChanged,
    #[error(
        "{missing} of the {changed} item(s) the job changed have no before-image (images are \
         recorded from this release on and kept for engine.revert.retention_days)"
    )]
    NoBeforeImages { missing: i64, changed: i64 },
    #[error("the job is being reverted already, by job {0}")]
    AlreadyReverting(Uuid),
}

/// A revert job stored for planning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RevertRequested {
    /// The new job.
    pub id: Uuid,
    pub message_id: String,
    /// The job it reverts.
    pub reverts: Uuid,
    pub reverts_message_id: String,
    /// Items it will restore (or skip as superseded).
    pub items: i64,
}

/// Why a revert may not be made, or `None` when it may; in `tx`, with the reverted job's row
/// locked (two operators reverting one job at once make one revert job).
async fn refusal(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    state: &str,
    job_type: Option<&str>,
    dry_run: bool,
) -> Result<Result<i64, RevertRefused>, StoreError> {
    if state != "completed" {
        let state = match state {
            "received" => "received",
            "accepted" => "accepted",
            _ => "running",
        };
        return Ok(Err(RevertRefused::NotCompleted(state)));
    }
    if dry_run {
        return Ok(Err(RevertRefused::DryRun));
    }
    let revertible = job_type
        .and_then(JobType::from_stored)
        .is_some_and(|t| REVERTIBLE.contains(&t));
    if !revertible {
        return Ok(Err(RevertRefused::NotRevertible(
            job_type.unwrap_or("of no known type").to_owned(),
        )));
    }
    let (changed, imaged): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(b.seq) FROM job_items i
           LEFT JOIN job_item_before_images b ON b.job_id = i.job_id AND b.seq = i.seq
          WHERE i.job_id = $1 AND i.outcome = 'changed'",
    )
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    if changed == 0 {
        return Ok(Err(RevertRefused::NothingChanged));
    }
    if imaged < changed {
        return Ok(Err(RevertRefused::NoBeforeImages {
            missing: changed - imaged,
            changed,
        }));
    }
    let reverting: Option<Uuid> = sqlx::query_scalar(
        "SELECT id FROM jobs WHERE job_type = 'policy.revert' AND state <> 'completed'
           AND payload ->> 'reverts' = $1::text LIMIT 1",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some(other) = reverting {
        return Ok(Err(RevertRefused::AlreadyReverting(other)));
    }
    Ok(Ok(changed))
}

/// An operator's revert of a completed policy job: stores a new job (`policy.revert`,
/// published as `policy.changed` with `subject.reverts`) that the engine plans and applies as
/// any other, and records the action (who, why) on both jobs, in one transaction. The job
/// carries no ticket: the reverted job's ticket is resolved already; the reason says why.
pub async fn request(
    pool: &PgPool,
    job: JobRef<'_>,
    operator: &Operator<'_>,
) -> Result<Result<RevertRequested, RevertRefused>, ControlError> {
    operator.check()?;
    let mut tx = pool.begin().await?;
    let row: Option<(Uuid, String, String, Option<String>, bool)> = sqlx::query_as(
        "SELECT id, message_id, state, job_type, dry_run FROM jobs
         WHERE id = $1 OR message_id = $2
         ORDER BY (id = $1) DESC NULLS LAST LIMIT 1 FOR UPDATE",
    )
    .bind(job.id)
    .bind(job.message_id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((reverts, reverts_message_id, state, job_type, dry_run)) = row else {
        return Err(ControlError::NotFound);
    };
    let items = match refusal(&mut tx, reverts, &state, job_type.as_deref(), dry_run).await? {
        Ok(items) => items,
        Err(refused) => return Ok(Err(refused)),
    };
    let id = Uuid::now_v7();
    let message_id = format!("{REVERT_PREFIX}{reverts}:{id}");
    sqlx::query(
        "INSERT INTO jobs (id, message_id, job_type, schema_version, state, dry_run, payload,
                           sent_at)
         VALUES ($1, $2, $3, 1, 'received', false, $4, now())",
    )
    .bind(id)
    .bind(&message_id)
    .bind(JobType::PolicyRevert.as_str())
    .bind(json!({ "reverts": reverts }))
    .execute(&mut *tx)
    .await?;
    sqlx::query("INSERT INTO inbox (message_id, job_id, disposition) VALUES ($1, $2, 'job')")
        .bind(&message_id)
        .bind(id)
        .execute(&mut *tx)
        .await?;
    record(&mut tx, id, "revert", operator).await?;
    record(&mut tx, reverts, "revert", operator).await?;
    tx.commit().await?;
    Ok(Ok(RevertRequested {
        id,
        message_id,
        reverts,
        reverts_message_id,
        items,
    }))
}

/// The reverted job, as a revert's planner checks it again (the request's checks hold unless
/// retention deleted the images since).
pub struct Reverted {
    pub subject: Option<Value>,
    /// The licence (part number) the reverted job's policy assigned, when it was a policy job.
    pub licence: Option<String>,
    /// Why it cannot be reverted now, if so.
    pub refused: Option<RevertRefused>,
}

pub async fn reverted(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<Option<Reverted>, StoreError> {
    /// State, job type, dry run, subject, and the licence of its policy.
    type Row = (String, Option<String>, bool, Option<Value>, Option<String>);
    let row: Option<Row> = sqlx::query_as(
        "SELECT state, job_type, dry_run, subject::jsonb, plan -> 'policy' ->> 'licence'
               FROM jobs WHERE id = $1 FOR SHARE",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((state, job_type, dry_run, subject, licence)) = row else {
        return Ok(None);
    };
    // Its own (unfinished) revert is this job: not a reason to refuse.
    let refused = match refusal(tx, id, &state, job_type.as_deref(), dry_run).await? {
        Ok(_) | Err(RevertRefused::AlreadyReverting(_)) => None,
        Err(refused) => Some(refused),
    };
    Ok(Some(Reverted {
        subject,
        licence,
        refused,
    }))
}

/// A changed item of the reverted job with the image recorded before its write.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ChangedItem {
    pub seq: i32,
    pub item: String,
    pub image: Value,
}

/// The reverted job's changed items with their before-images, in item order.
pub async fn changed_items(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
) -> Result<Vec<ChangedItem>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT i.seq, i.item, b.image FROM job_items i
           JOIN job_item_before_images b ON b.job_id = i.job_id AND b.seq = i.seq
          WHERE i.job_id = $1 AND i.outcome = 'changed' ORDER BY i.seq",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?)
}

/// Of the reverted job's items `seqs`, those a later job (not `revert_job`) wrote, or is
/// writing, after the reverted job's write: `(seq, the later job)`. A later write is one
/// whose before-image was recorded after the reverted item's, by an item that changed the
/// user or has no outcome yet (a failed write changed nothing).
pub async fn superseded(
    pool: &PgPool,
    reverted: Uuid,
    revert_job: Uuid,
    seqs: &[i32],
) -> Result<Vec<(i32, Uuid)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT DISTINCT ON (r.seq) r.seq, l.job_id
           FROM job_item_before_images r
           JOIN job_item_before_images l
             ON l.address = r.address AND l.recorded_at > r.recorded_at
            AND l.job_id <> r.job_id AND l.job_id <> $2
           JOIN job_items li ON li.job_id = l.job_id AND li.seq = l.seq
          WHERE r.job_id = $1 AND r.seq = ANY($3::int[])
            AND (li.outcome IS NULL OR li.outcome = 'changed')
          ORDER BY r.seq, l.recorded_at",
    )
    .bind(reverted)
    .bind(revert_job)
    .bind(seqs)
    .fetch_all(pool)
    .await?)
}

/// Delete before-images recorded more than `age` ago (retention) by the database's clock,
/// which stamped them; returns how many.
pub async fn delete_images_older_than(
    pool: &PgPool,
    age: std::time::Duration,
) -> Result<u64, StoreError> {
    Ok(sqlx::query(
        "DELETE FROM job_item_before_images WHERE recorded_at < now() - make_interval(secs => $1)",
    )
    .bind(age.as_secs_f64())
    .execute(pool)
    .await?
    .rows_affected())
}

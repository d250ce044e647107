//! Planning: claiming a received job, reading its payload, deferring it, and accepting its
//! plan (items split into chunks, the job `accepted`, its `job.accepted` event).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::JobIdentity;
use crate::domain::{EventHeader, JobAccepted, Schedule};
use crate::store::{StoreError, outbox};

/// A job row claimed for planning.
#[derive(Debug, sqlx::FromRow)]
pub struct JobToPlan {
    pub id: Uuid,
    pub message_id: String,
    pub job_type: Option<String>,
    pub dry_run: bool,
    pub ticket: super::StoredTicket,
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
           AND awaiting_approval IS NULL
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
    chunk_size: std::num::NonZeroU32,
    schedule: Schedule,
    earliest_start: DateTime<Utc>,
) -> Result<(), StoreError> {
    let chunk_size = i64::from(chunk_size.get());
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
    sqlx::query(
        "UPDATE jobs SET state = 'accepted', plan = $2, subject = $3, total_items = $4,
                schedule = $5, earliest_start = $6, accepted_at = now(), updated_at = now(),
                fair_key = job_fair_key(jobs)
         WHERE id = $1",
    )
    .bind(job.id)
    .bind(plan)
    .bind(subject)
    .bind(total)
    .bind(schedule)
    .bind(earliest_start)
    .execute(&mut **tx)
    .await?;
    // Jobs the service stores itself (drift sweeps) have no ticket to acknowledge.
    if !job.job_type.publishes_job_events() {
        return Ok(());
    }
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

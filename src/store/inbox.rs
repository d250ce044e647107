//! The inbox: taking responsibility for a received job message exactly once.
//!
//! A valid message becomes a job in state `received` ([`record_job`]); a rejected one whose
//! `message_id` is known becomes a completed, `rejected` job with its `job.completed` event
//! ([`record_rejection`]); a message seen before changes nothing ([`Recorded::Duplicate`]).
//! Each is recorded with its `inbox` row in one transaction, keyed on `message_id`. From
//! `received` on, a job belongs to [`super::work`].

use chrono::Utc;
use sqlx::PgPool;
use uuid::Uuid;

use super::{StoreError, outbox};
use crate::domain::limits::{MAX_DETAIL_BYTES, storable_text};
use crate::domain::{Counts, EventHeader, Failure, JobCompleted, JobMessage, Outcome, Rejection};

/// What storing a message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    /// A new job, now in state `received`.
    New(Uuid),
    /// The `message_id` was seen before; nothing changed.
    Duplicate(Uuid),
}

/// Store a valid job and its inbox entry in one transaction. Idempotent on `message_id`.
pub async fn record_job(pool: &PgPool, job: &JobMessage<'_>) -> Result<Recorded, StoreError> {
    let mut tx = pool.begin().await?;
    let id = Uuid::now_v7();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO jobs (id, message_id, job_type, schema_version, state, dry_run, ticket,
                           actor, payload, sent_at)
         VALUES ($1, $2, $3, $4, 'received', $5, $6::json, $7, $8::jsonb, $9)
         ON CONFLICT (message_id) DO NOTHING
         RETURNING id",
    )
    .bind(id)
    .bind(job.message_id.as_str())
    .bind(job.job_type.as_str())
    .bind(job.schema_version as i32)
    .bind(job.dry_run)
    // The ticket's own text: it is carried byte for byte (`Ticket`).
    .bind(job.ticket.as_ref().map(|t| t.raw_json()))
    .bind(json(&job.actor)?)
    .bind(job.raw_payload.get())
    .bind(job.sent_at)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = inserted else {
        let existing = existing_job(&mut tx, job.message_id.as_str()).await?;
        return Ok(Recorded::Duplicate(existing));
    };
    sqlx::query("INSERT INTO inbox (message_id, job_id, disposition) VALUES ($1, $2, 'job')")
        .bind(job.message_id.as_str())
        .bind(id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(Recorded::New(id))
}

/// Record a rejected message whose `message_id` is known: a completed, `rejected` job and its
/// `job.completed` event, in one transaction. Idempotent on `message_id`.
///
/// What it stores must never fail the way the message did: the `message_id` is checked at
/// decoding (no NUL, at most 255 bytes), the ticket is only ever one the database can hold (a
/// NUL or lone surrogate in it was replaced by U+FFFD at decoding), and the detail is stored
/// with any NUL replaced and cut to [`MAX_DETAIL_BYTES`], saying so.
pub async fn record_rejection(
    pool: &PgPool,
    rejection: &Rejection,
) -> Result<Recorded, StoreError> {
    let Some(message_id) = &rejection.message_id else {
        return Err(StoreError::Corrupt(
            "a rejection without message_id cannot be recorded".into(),
        ));
    };
    let mut tx = pool.begin().await?;
    let id = Uuid::now_v7();
    let now = Utc::now();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO jobs (id, message_id, job_type, state, outcome, dry_run, ticket,
                           completed_at, updated_at)
         VALUES ($1, $2, $3, 'completed', 'rejected', $4, $5::json, $6, $6)
         ON CONFLICT (message_id) DO NOTHING
         RETURNING id",
    )
    .bind(id)
    .bind(message_id.as_str())
    .bind(rejection.job_type.map(|t| t.as_str()))
    .bind(rejection.dry_run)
    .bind(rejection.ticket.as_ref().map(|t| t.raw_json()))
    .bind(now)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(id) = inserted else {
        let existing = existing_job(&mut tx, message_id.as_str()).await?;
        return Ok(Recorded::Duplicate(existing));
    };
    sqlx::query(
        "INSERT INTO inbox (message_id, job_id, disposition) VALUES ($1, $2, 'dead_lettered')",
    )
    .bind(message_id.as_str())
    .bind(id)
    .execute(&mut *tx)
    .await?;
    let header = EventHeader::new(
        JobCompleted::TYPE,
        id,
        message_id.to_string(),
        rejection.ticket.clone(),
    );
    let event = JobCompleted {
        header: header.clone(),
        job_type: rejection.job_type,
        subject: None,
        outcome: Outcome::Rejected,
        dry_run: rejection.dry_run,
        counts: Counts::default(),
        failures: vec![],
        failures_truncated: false,
        started_at: now,
        finished_at: now,
    }
    .with_failures(vec![Failure {
        item: message_id.to_string(),
        code: rejection.code,
        detail: storable_text(&rejection.detail, MAX_DETAIL_BYTES).into_owned(),
    }]);
    outbox::enqueue(&mut tx, &header, &event).await?;
    tx.commit().await?;
    Ok(Recorded::New(id))
}

/// Whether a message id was seen before (a dead letter is not published twice for it).
pub async fn seen(pool: &PgPool, message_id: &str) -> Result<bool, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM inbox WHERE message_id = $1)")
            .bind(message_id)
            .fetch_one(pool)
            .await?,
    )
}

async fn existing_job(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    message_id: &str,
) -> Result<Uuid, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT id FROM jobs WHERE message_id = $1")
            .bind(message_id)
            .fetch_one(&mut **tx)
            .await?,
    )
}

fn json<T: serde::Serialize>(value: &Option<T>) -> Result<Option<serde_json::Value>, StoreError> {
    value
        .as_ref()
        .map(serde_json::to_value)
        .transpose()
        .map_err(|e| StoreError::Corrupt(e.to_string()))
}

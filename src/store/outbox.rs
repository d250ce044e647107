//! The transactional outbox: events are inserted in the transaction that changes the state
//! they report, and the relay publishes them with publisher confirms afterwards.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::StoreError;
use crate::domain::EventHeader;

/// Store `event` (whose header is `header`) for publication when `tx` commits. The body is
/// stored as the JSON text it serialises to (`json`, not `jsonb`) and published as that text,
/// so what an event carries verbatim (the ticket) reaches consumers byte for byte.
pub async fn enqueue<E: Serialize>(
    tx: &mut Transaction<'_, Postgres>,
    header: &EventHeader,
    event: &E,
) -> Result<(), StoreError> {
    let body = serde_json::to_string(event)
        .map_err(|e| StoreError::Corrupt(format!("event does not serialize: {e}")))?;
    sqlx::query(
        "INSERT INTO outbox (event_id, event_type, routing_key, job_id, body)
         VALUES ($1, $2, $2, $3, $4::json)",
    )
    .bind(header.event_id)
    .bind(header.event_type)
    .bind(header.job_id)
    .bind(body)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An event waiting for publication.
#[derive(Debug, sqlx::FromRow)]
pub struct PendingEvent {
    pub id: i64,
    pub event_id: Uuid,
    pub event_type: String,
    pub routing_key: String,
    /// The event's JSON text, to publish as it is.
    pub body: String,
}

/// Lock up to `limit` pending events, oldest first, skipping those another relay holds.
/// The lock lasts until `tx` ends, so no two replicas publish the same event at once.
pub async fn claim(
    tx: &mut Transaction<'_, Postgres>,
    limit: u32,
) -> Result<Vec<PendingEvent>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, event_id, event_type, routing_key, body::text AS body FROM outbox
         WHERE published_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED",
    )
    .bind(i64::from(limit))
    .fetch_all(&mut **tx)
    .await?)
}

/// Mark events published (after the broker confirmed them).
pub async fn mark_published(
    tx: &mut Transaction<'_, Postgres>,
    ids: &[i64],
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE outbox SET published_at = now(), attempts = attempts + 1 WHERE id = ANY($1)",
    )
    .bind(ids)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Record a failed attempt (outside the claiming transaction, which was rolled back).
pub async fn record_failure(pool: &PgPool, ids: &[i64], error: &str) -> Result<(), StoreError> {
    sqlx::query("UPDATE outbox SET attempts = attempts + 1, last_error = $2 WHERE id = ANY($1)")
        .bind(ids)
        .bind(error)
        .execute(pool)
        .await?;
    Ok(())
}

/// How many events wait, and since when.
pub async fn backlog(pool: &PgPool) -> Result<(i64, Option<DateTime<Utc>>), StoreError> {
    Ok(
        sqlx::query_as("SELECT count(*), min(created_at) FROM outbox WHERE published_at IS NULL")
            .fetch_one(pool)
            .await?,
    )
}

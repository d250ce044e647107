//! What the monitor reads: the backlog for the operators' gauges, and the unfinished jobs
//! for the 24-hour target.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::domain::Schedule;
use crate::store::StoreError;

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
                    -- The 24-hour target is the tickets': background work (drift sweeps)
                    -- has none.
                    min(received_at) FILTER (WHERE NOT background)
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

/// An unfinished job, for the 24-hour target (background work, which resolves no ticket, is
/// left out).
#[derive(Debug, sqlx::FromRow)]
pub struct UnfinishedJob {
    pub id: Uuid,
    pub received_at: DateTime<Utc>,
    pub schedule: Option<Schedule>,
    pub expedited: bool,
    /// Items without an outcome (all of them before planning: unknown, counted as 0).
    pub remaining: i64,
    /// Whose share of the write budget the job uses (`jobs.fair_key`; the job's id when unset).
    pub fair_key: String,
    /// `jobs.priority`.
    pub priority: i16,
}

pub async fn unfinished_jobs(pool: &PgPool) -> Result<Vec<UnfinishedJob>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT j.id, j.received_at, j.schedule, j.expedited, j.priority,
                coalesce(j.fair_key, j.id::text) AS fair_key,
                (SELECT count(*) FROM job_items i WHERE i.job_id = j.id AND i.outcome IS NULL)
                    AS remaining
         FROM jobs j WHERE j.state <> 'completed' AND NOT j.background",
    )
    .fetch_all(pool)
    .await?)
}

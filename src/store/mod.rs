//! PostgreSQL, the source of truth: connection pool, embedded migrations, and every query
//! the service makes. No SQL lives outside this module (and `migrations/`).
//!
//! What the store holds, by module:
//!
//! | Module | Tables | What for |
//! |---|---|---|
//! | [`inbox`] | `inbox`, `jobs` (new rows) | a received message recorded once: a job, a rejection, or a duplicate |
//! | [`work`] | `jobs`, `job_chunks`, `job_items` | the job lifecycle: planning, chunks and leases, completion, the monitor's reads, and (in [`work::views`] and [`work::controls`]) the operators' reads and controls |
//! | [`outbox`] | `outbox` | events written with the state they report, for the relay to publish |
//! | [`policies`] | `policies`, `policy_members` | desired state of user policies |
//! | [`roles`] | `admin_roles`, `ods_mappings`, `admin_role_notifications` | desired state of Phone System admin roles |
//! | [`portal`] | `portal_contacts` | contacts granted portal access, and what was done about them |
//! | [`budget`] | `write_budget` | the tenant write budget shared by every replica |
//! | [`drift`] | `jobs` (`background`, sweep jobs) | drift sweeps: a sweep's internal jobs, and the `drift.detected` of each |
//! | [`licensing`] | `jobs` (seat columns), `sku_service_plans` | seats jobs will take; plans seen per SKU, and the internal jobs re-verifying policies after a plan is added |
//!
//! Here: creating the database, the pool, migrations, and the readiness checks ([`ping`],
//! [`migrations_applied`]). Job, chunk and schedule states are Rust enums
//! ([`work::JobState`], [`work::ChunkState`], [`crate::domain::Schedule`]) mapped to their
//! `text` columns. What happens here is logged and counted through `store::events`.

pub mod budget;
pub mod drift;
mod error;
mod events;
pub mod inbox;
pub mod licensing;
pub mod outbox;
pub mod policies;
pub mod portal;
pub mod roles;
pub mod users;
pub mod work;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, Executor, PgConnection, PgPool};

pub use error::StoreError;

use crate::configuration::DatabaseSettings;
use crate::telemetry::emit;
use events::DatabaseCreated;

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Create the configured database when it does not exist (when allowed by the settings).
pub async fn ensure_database(settings: &DatabaseSettings) -> Result<(), StoreError> {
    if !settings.create_if_missing {
        return Ok(());
    }
    let mut conn = PgConnection::connect_with(&settings.without_db()).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&settings.database_name)
            .fetch_one(&mut conn)
            .await?;
    if !exists {
        let statement = format!(
            "CREATE DATABASE \"{}\"",
            settings.database_name.replace('"', "\"\"")
        );
        // Another replica may create it at the same moment: 42P04 (duplicate_database) is fine.
        if let Err(error) = conn.execute(sqlx::AssertSqlSafe(statement)).await {
            let duplicate = matches!(&error, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P04"));
            if !duplicate {
                return Err(error.into());
            }
        }
        emit(DatabaseCreated {
            database: &settings.database_name,
        });
    }
    conn.close().await.ok();
    Ok(())
}

/// A pool that connects lazily, so that a replica starts (and says "not ready") while the
/// database is down, instead of crashing.
pub fn pool(settings: &DatabaseSettings) -> PgPool {
    PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(settings.acquire_timeout())
        .connect_lazy_with(settings.with_db())
}

/// Apply every pending migration. Safe with many replicas (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> Result<(), StoreError> {
    MIGRATOR.run(pool).await?;
    Ok(())
}

/// One round trip to the database (readiness).
pub async fn ping(pool: &PgPool) -> Result<(), StoreError> {
    sqlx::query_scalar::<_, i32>("SELECT 1")
        .fetch_one(pool)
        .await?;
    Ok(())
}

/// Whether every embedded migration is applied (readiness).
pub async fn migrations_applied(pool: &PgPool) -> Result<bool, StoreError> {
    let latest = MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let applied: Option<i64> =
        sqlx::query_scalar("SELECT max(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(pool)
            .await
            .or_else(|e| match &e {
                // 42P01: the table does not exist yet, nothing is applied.
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42P01") => Ok(None),
                _ => Err(e),
            })?;
    Ok(applied.unwrap_or(0) >= latest)
}

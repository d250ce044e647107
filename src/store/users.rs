//! The tenant users addresses were found to be (`user_directory`): see `engine::users`.
use std::collections::HashMap;

use sqlx::PgPool;
use uuid::Uuid;

use super::StoreError;

/// The remembered user ids of these addresses (lower case), by address.
pub async fn remembered(
    pool: &PgPool,
    addresses: &[String],
) -> Result<HashMap<String, Uuid>, StoreError> {
    let rows: Vec<(String, Uuid)> = sqlx::query_as(
        "SELECT address, user_id FROM user_directory WHERE address = ANY($1::text[])",
    )
    .bind(addresses)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().collect())
}

/// Remembers (address, user id, how it matched) triples; an address already remembered with
/// another id is updated.
pub async fn remember(
    pool: &PgPool,
    found: &[(String, Uuid, &'static str)],
) -> Result<(), StoreError> {
    if found.is_empty() {
        return Ok(());
    }
    let addresses: Vec<&str> = found.iter().map(|f| f.0.as_str()).collect();
    let ids: Vec<Uuid> = found.iter().map(|f| f.1).collect();
    let by: Vec<&str> = found.iter().map(|f| f.2).collect();
    sqlx::query(
        "INSERT INTO user_directory (address, user_id, matched_by)
         SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[])
         ON CONFLICT (address) DO UPDATE
            SET user_id = EXCLUDED.user_id, matched_by = EXCLUDED.matched_by, resolved_at = now()
          WHERE user_directory.user_id <> EXCLUDED.user_id",
    )
    .bind(&addresses)
    .bind(&ids)
    .bind(&by)
    .execute(pool)
    .await?;
    Ok(())
}

/// Forgets an address's id (the tenant no longer knows it).
pub async fn forget(pool: &PgPool, address: &str, user_id: Uuid) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM user_directory WHERE address = $1 AND user_id = $2")
        .bind(address)
        .bind(user_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// A licence this service wrote for a user.
#[derive(Debug, Clone)]
pub struct RecentWrite {
    /// As Graph's `addLicenses` entry.
    pub licence: serde_json::Value,
    /// How long ago.
    pub age: std::time::Duration,
    /// Graph accepted it (false: answered 5xx or timed out, so maybe applied).
    pub certain: bool,
}

/// Licences written for these addresses (lower case) less than `within` ago, by address.
pub async fn recent_writes(
    pool: &PgPool,
    addresses: &[String],
    within: std::time::Duration,
) -> Result<HashMap<String, RecentWrite>, StoreError> {
    let rows: Vec<(String, serde_json::Value, f64, bool)> = sqlx::query_as(
        "SELECT address, written_licence,
                extract(epoch FROM now() - written_at)::float8, written_certain
           FROM user_directory
          WHERE address = ANY($1::text[])
            AND written_at > now() - make_interval(secs => $2)",
    )
    .bind(addresses)
    .bind(within.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(address, licence, age, certain)| {
            let age = std::time::Duration::from_secs_f64(age.max(0.0));
            (
                address,
                RecentWrite {
                    licence,
                    age,
                    certain,
                },
            )
        })
        .collect())
}

/// Records licences written for these addresses (lower case), now: (address, licence,
/// whether Graph accepted it).
pub async fn record_writes(
    pool: &PgPool,
    written: &[(String, serde_json::Value, bool)],
) -> Result<(), StoreError> {
    if written.is_empty() {
        return Ok(());
    }
    let addresses: Vec<&str> = written.iter().map(|w| w.0.as_str()).collect();
    let licences: Vec<serde_json::Value> = written.iter().map(|w| w.1.clone()).collect();
    let certain: Vec<bool> = written.iter().map(|w| w.2).collect();
    sqlx::query(
        "UPDATE user_directory d
            SET written_licence = w.licence, written_at = now(), written_certain = w.certain
           FROM unnest($1::text[], $2::jsonb[], $3::bool[]) AS w(address, licence, certain)
          WHERE d.address = w.address",
    )
    .bind(&addresses)
    .bind(&licences)
    .bind(&certain)
    .execute(pool)
    .await?;
    Ok(())
}

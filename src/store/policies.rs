//! Desired state of user policies: definitions (highest version wins) and membership
//! (a user in at most one policy).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::StoreError;

/// A policy definition as stored (and as snapshotted into a job's plan).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, sqlx::FromRow)]
pub struct PolicyRow {
    pub id: String,
    pub name: String,
    pub ods_code: String,
    pub version: i64,
    pub licence: String,
    #[sqlx(json)]
    pub toggles: BTreeMap<String, bool>,
}

/// Serialise planning of one policy across replicas until `tx` ends.
pub async fn lock(tx: &mut Transaction<'_, Postgres>, policy_id: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('policy:' || $1, 0))")
        .bind(policy_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn get(
    tx: &mut Transaction<'_, Postgres>,
    policy_id: &str,
) -> Result<Option<PolicyRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT id, name, ods_code, version, licence, toggles FROM policies WHERE id = $1",
    )
    .bind(policy_id)
    .fetch_optional(&mut **tx)
    .await?)
}

pub async fn upsert(
    tx: &mut Transaction<'_, Postgres>,
    policy: &PolicyRow,
    job_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO policies (id, name, ods_code, version, licence, toggles, updated_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (id) DO UPDATE SET name = EXCLUDED.name, ods_code = EXCLUDED.ods_code,
             version = EXCLUDED.version, licence = EXCLUDED.licence, toggles = EXCLUDED.toggles,
             updated_by = EXCLUDED.updated_by, updated_at = now()",
    )
    .bind(&policy.id)
    .bind(&policy.name)
    .bind(&policy.ods_code)
    .bind(policy.version)
    .bind(&policy.licence)
    .bind(serde_json::to_value(&policy.toggles).expect("toggles serialize"))
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Make `emails` members of `policy_id`, moving them from any other policy.
pub async fn add_members(
    tx: &mut Transaction<'_, Postgres>,
    policy_id: &str,
    emails: &[String],
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO policy_members (email, policy_id) SELECT e, $1 FROM unnest($2::text[]) AS e
         ON CONFLICT (email) DO UPDATE SET policy_id = EXCLUDED.policy_id, added_at = now()
         WHERE policy_members.policy_id <> EXCLUDED.policy_id",
    )
    .bind(policy_id)
    .bind(emails)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Make `emails` the whole membership of `policy_id`.
pub async fn replace_members(
    tx: &mut Transaction<'_, Postgres>,
    policy_id: &str,
    emails: &[String],
) -> Result<(), StoreError> {
    // An anti-join (hashed), not `NOT (email = ANY($2))`, which compares every stored member
    // with the whole list: quadratic on a re-sent 20,000-member policy.
    sqlx::query(
        "DELETE FROM policy_members m WHERE m.policy_id = $1
           AND NOT EXISTS (SELECT 1 FROM unnest($2::text[]) AS k(email) WHERE k.email = m.email)",
    )
    .bind(policy_id)
    .bind(emails)
    .execute(&mut **tx)
    .await?;
    add_members(tx, policy_id, emails).await
}

pub async fn members(
    tx: &mut Transaction<'_, Postgres>,
    policy_id: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT email FROM policy_members WHERE policy_id = $1 ORDER BY email")
            .bind(policy_id)
            .fetch_all(&mut **tx)
            .await?,
    )
}

/// The current policy of each of `emails` that has one.
pub async fn memberships(
    pool: &PgPool,
    emails: &[String],
) -> Result<Vec<(String, PolicyRow)>, StoreError> {
    #[derive(sqlx::FromRow)]
    struct Row {
        email: String,
        #[sqlx(flatten)]
        policy: PolicyRow,
    }
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT m.email, p.id, p.name, p.ods_code, p.version, p.licence, p.toggles
         FROM policy_members m JOIN policies p ON p.id = m.policy_id
         WHERE m.email = ANY($1)",
    )
    .bind(emails)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.email, r.policy)).collect())
}

/// Every licence some policy assigns: the licences a policy move takes away.
pub async fn managed_licences(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT DISTINCT licence FROM policies")
        .fetch_all(pool)
        .await?)
}

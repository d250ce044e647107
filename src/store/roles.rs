//! Desired state of Phone System admin roles: who holds which role for which ODS code (at most
//! one role a user), the ODS mappings of lead organisations, and the granted-role emails sent.

use serde::{Deserialize, Serialize};
use sqlx::{PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use super::{StoreError, outbox};
use crate::domain::{AdminRole, EventHeader, NotificationEmail, Ticket};

/// A role as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRow {
    pub email: String,
    pub ods_code: String,
    pub role: AdminRole,
}

/// A lead organisation's mapping as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, sqlx::FromRow)]
pub struct MappingRow {
    pub lead_ods_code: String,
    pub managed: Vec<String>,
    pub onboarded: Vec<String>,
}

impl MappingRow {
    /// Managed organisations that are onboarded, other than the lead itself: those whose
    /// Primary group the lead's Primary admins join.
    pub fn reach(&self) -> Vec<String> {
        let mut codes: Vec<String> = self
            .managed
            .iter()
            .filter(|c| **c != self.lead_ods_code && self.onboarded.contains(c))
            .cloned()
            .collect();
        codes.sort();
        codes.dedup();
        codes
    }
}

async fn advisory_lock(tx: &mut Transaction<'_, Postgres>, key: &str) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(key)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Serialise planning for an ODS code across replicas until `tx` ends (the 10-admin limit).
/// Take it before [`lock_user`].
pub async fn lock_ods_code(
    tx: &mut Transaction<'_, Postgres>,
    ods_code: &str,
) -> Result<(), StoreError> {
    advisory_lock(tx, &format!("admin_roles:ods:{ods_code}")).await
}

/// Serialise work on one user's roles (planning a change, applying memberships) until `tx`
/// ends.
pub async fn lock_user(tx: &mut Transaction<'_, Postgres>, email: &str) -> Result<(), StoreError> {
    advisory_lock(tx, &format!("admin_roles:user:{email}")).await
}

/// Serialise changes of one lead organisation's mapping until `tx` ends.
pub async fn lock_mapping(
    tx: &mut Transaction<'_, Postgres>,
    lead: &str,
) -> Result<(), StoreError> {
    advisory_lock(tx, &format!("admin_roles:mapping:{lead}")).await
}

/// Serialise finding or creating one tenant group until `tx` ends (no duplicate groups).
pub async fn lock_group_name(
    tx: &mut Transaction<'_, Postgres>,
    display_name: &str,
) -> Result<(), StoreError> {
    advisory_lock(tx, &format!("admin_roles:group:{display_name}")).await
}

pub async fn role_of(
    executor: impl PgExecutor<'_>,
    email: &str,
) -> Result<Option<RoleRow>, StoreError> {
    let row: Option<(String, String, String)> =
        sqlx::query_as("SELECT email, ods_code, role FROM admin_roles WHERE email = $1")
            .bind(email)
            .fetch_optional(executor)
            .await?;
    row.map(|(email, ods_code, role)| {
        let role = AdminRole::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown admin role {role:?}")))?;
        Ok(RoleRow {
            email,
            ods_code,
            role,
        })
    })
    .transpose()
}

/// Users holding either role for `ods_code`.
pub async fn count_at(
    tx: &mut Transaction<'_, Postgres>,
    ods_code: &str,
) -> Result<i64, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM admin_roles WHERE ods_code = $1")
            .bind(ods_code)
            .fetch_one(&mut **tx)
            .await?,
    )
}

/// Give `email` `role` for `ods_code` (replacing the role it held).
pub async fn put(
    tx: &mut Transaction<'_, Postgres>,
    row: &RoleRow,
    job_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO admin_roles (email, ods_code, role, assigned_by_job) VALUES ($1, $2, $3, $4)
         ON CONFLICT (email) DO UPDATE SET ods_code = EXCLUDED.ods_code, role = EXCLUDED.role,
             assigned_by_job = EXCLUDED.assigned_by_job, assigned_at = now()",
    )
    .bind(&row.email)
    .bind(&row.ods_code)
    .bind(row.role.as_str())
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn delete(tx: &mut Transaction<'_, Postgres>, email: &str) -> Result<(), StoreError> {
    sqlx::query("DELETE FROM admin_roles WHERE email = $1")
        .bind(email)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The Primary admins of `ods_code`.
pub async fn primary_admins(
    tx: &mut Transaction<'_, Postgres>,
    ods_code: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT email FROM admin_roles WHERE ods_code = $1 AND role = $2 ORDER BY email",
    )
    .bind(ods_code)
    .bind(AdminRole::PhoneSystemPrimaryAdmin.as_str())
    .fetch_all(&mut **tx)
    .await?)
}

pub async fn mapping(
    executor: impl PgExecutor<'_>,
    lead: &str,
) -> Result<Option<MappingRow>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT lead_ods_code, managed, onboarded FROM ods_mappings WHERE lead_ods_code = $1",
    )
    .bind(lead)
    .fetch_optional(executor)
    .await?)
}

pub async fn put_mapping(
    tx: &mut Transaction<'_, Postgres>,
    mapping: &MappingRow,
    job_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO ods_mappings (lead_ods_code, managed, onboarded, updated_by_job)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (lead_ods_code) DO UPDATE SET managed = EXCLUDED.managed,
             onboarded = EXCLUDED.onboarded, updated_by_job = EXCLUDED.updated_by_job,
             updated_at = now()",
    )
    .bind(&mapping.lead_ods_code)
    .bind(&mapping.managed)
    .bind(&mapping.onboarded)
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Enqueue the `phone_system_admin_granted` email of job `job_id` for `role.email`, unless it
/// was enqueued before (a retried or taken-over item). Returns whether it was enqueued now.
pub async fn notify_granted(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    role: &RoleRow,
) -> Result<bool, StoreError> {
    let claimed = sqlx::query(
        "INSERT INTO admin_role_notifications (job_id, email) VALUES ($1, $2)
         ON CONFLICT DO NOTHING",
    )
    .bind(job_id)
    .bind(&role.email)
    .execute(&mut **tx)
    .await?;
    if claimed.rows_affected() == 0 {
        return Ok(false);
    }
    let (message_id, ticket): (String, super::work::StoredTicket) =
        sqlx::query_as("SELECT message_id, ticket FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?;
    let ticket: Option<Ticket> = super::work::ticket(ticket);
    let header = EventHeader::new(NotificationEmail::TYPE, job_id, message_id, ticket);
    let event = NotificationEmail {
        header: header.clone(),
        template: NotificationEmail::PHONE_SYSTEM_ADMIN_GRANTED,
        to: role.email.clone(),
        data: serde_json::json!({ "ods_code": role.ods_code, "role": role.role.as_str() }),
    };
    outbox::enqueue(tx, &header, &event).await?;
    Ok(true)
}

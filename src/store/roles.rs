//! Desired state of Phone System admin roles: who holds which role for which ODS code (at most
//! one role a user) and how far its tenant work got ([`GrantState`]), the ODS mappings of lead
//! organisations, and the granted-role emails sent.

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

/// How far a stored role's tenant work got (`admin_roles.state`, migration
/// `0008_admin_role_states.sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantState {
    /// Granted by a job (`assigned_by_job`) whose memberships are not confirmed yet.
    Pending,
    /// The tenant showed the user in the role's groups.
    Realised,
    /// The granting job's item failed: the role is not held and takes no place under the limit.
    Failed,
    /// A removal or a leaver (`removed_by_job`) is ending the memberships; the row goes when
    /// that is done.
    Removing,
}

impl GrantState {
    pub const ALL: [Self; 4] = [Self::Pending, Self::Realised, Self::Failed, Self::Removing];

    /// The label in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Realised => "realised",
            Self::Failed => "failed",
            Self::Removing => "removing",
        }
    }

    fn parse(label: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == label)
    }

    /// Whether the role is held (what the tenant should show): pending or realised.
    pub fn is_held(self) -> bool {
        matches!(self, Self::Pending | Self::Realised)
    }

    /// Whether the row takes one of its code's places under the limit: every state but
    /// `failed` (a row being removed still has its memberships until the removal is done).
    pub fn counts(self) -> bool {
        self != Self::Failed
    }
}

/// A stored role with its state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRole {
    pub role: RoleRow,
    pub state: GrantState,
    /// The job whose grant this is (`None` for rows of unknown origin).
    pub assigned_by_job: Option<Uuid>,
    /// The job ending it, while `removing`.
    pub removed_by_job: Option<Uuid>,
    /// How long ago it took its state (a role realised moments ago may not show in reads yet).
    /// Stamped and measured with `statement_timestamp()`, not `now()`: a role is realised at
    /// the end of its applier's transaction, which holds the user's lock for as long as the
    /// tenant takes to show the memberships (22 s for a group too new to take members), and
    /// `now()` is that transaction's start. A role realised moments ago then looked 22 s
    /// old, and an assign sent again at once trusted a replica behind and wrote again.
    pub state_age: std::time::Duration,
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

/// The role stored for `email`, in whatever state.
pub async fn stored_role(
    executor: impl PgExecutor<'_>,
    email: &str,
) -> Result<Option<StoredRole>, StoreError> {
    type Row = (
        String,
        String,
        String,
        String,
        Option<Uuid>,
        Option<Uuid>,
        f64,
    );
    let row: Option<Row> = sqlx::query_as(
        "SELECT email, ods_code, role, state, assigned_by_job, removed_by_job,
                extract(epoch FROM statement_timestamp() - state_changed_at)::float8
           FROM admin_roles WHERE email = $1",
    )
    .bind(email)
    .fetch_optional(executor)
    .await?;
    row.map(
        |(email, ods_code, role, state, assigned_by_job, removed_by_job, age)| {
            let role = AdminRole::parse(&role)
                .ok_or_else(|| StoreError::Corrupt(format!("unknown admin role {role:?}")))?;
            let state = GrantState::parse(&state).ok_or_else(|| {
                StoreError::Corrupt(format!("unknown admin role state {state:?}"))
            })?;
            Ok(StoredRole {
                role: RoleRow {
                    email,
                    ods_code,
                    role,
                },
                state,
                assigned_by_job,
                removed_by_job,
                state_age: std::time::Duration::from_secs_f64(age.max(0.0)),
            })
        },
    )
    .transpose()
}

/// Users taking a place under the limit for `ods_code`: every stored role of the code but
/// failed grants ([`GrantState::counts`]).
pub async fn count_at(
    tx: &mut Transaction<'_, Postgres>,
    ods_code: &str,
) -> Result<i64, StoreError> {
    // A pending grant whose job completed without realising it (cancelled or superseded
    // before its item ran) holds no place either.
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM admin_roles r
         WHERE r.ods_code = $1 AND r.state <> $2
           AND NOT (r.state = $3 AND EXISTS (
               SELECT 1 FROM jobs j WHERE j.id = r.assigned_by_job AND j.state = 'completed'))",
    )
    .bind(ods_code)
    .bind(GrantState::Failed.as_str())
    .bind(GrantState::Pending.as_str())
    .fetch_one(&mut **tx)
    .await?)
}

/// Grant `email` `role` for `ods_code` by job `job_id` (replacing whatever was stored):
/// `pending` until the tenant shows it.
pub async fn put(
    tx: &mut Transaction<'_, Postgres>,
    row: &RoleRow,
    job_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO admin_roles (email, ods_code, role, assigned_by_job, state)
         VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (email) DO UPDATE SET ods_code = EXCLUDED.ods_code, role = EXCLUDED.role,
             assigned_by_job = EXCLUDED.assigned_by_job, assigned_at = now(),
             state = EXCLUDED.state, removed_by_job = NULL, state_changed_at = statement_timestamp()",
    )
    .bind(&row.email)
    .bind(&row.ods_code)
    .bind(row.role.as_str())
    .bind(job_id)
    .bind(GrantState::Pending.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Job `job_id` ends `email`'s stored role: `removing` until [`delete_removed`].
pub async fn mark_removing(
    tx: &mut Transaction<'_, Postgres>,
    email: &str,
    job_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE admin_roles SET state = $2, removed_by_job = $3, state_changed_at = statement_timestamp()
          WHERE email = $1",
    )
    .bind(email)
    .bind(GrantState::Removing.as_str())
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Deletes `email`'s role if job `job_id` is still the one removing it (a job planned since
/// may have granted it again). Returns whether it was deleted.
pub async fn delete_removed(
    tx: &mut Transaction<'_, Postgres>,
    email: &str,
    job_id: Uuid,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "DELETE FROM admin_roles WHERE email = $1 AND state = $2 AND removed_by_job = $3",
    )
    .bind(email)
    .bind(GrantState::Removing.as_str())
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The grant of job `job_id` for `email` failed in the tenant: `failed`, unless the row has
/// moved on since (another job's grant or a removal). Returns whether it was marked.
pub async fn mark_failed(
    tx: &mut Transaction<'_, Postgres>,
    email: &str,
    job_id: Uuid,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE admin_roles SET state = $2, state_changed_at = statement_timestamp()
          WHERE email = $1 AND assigned_by_job = $3 AND state IN ($4, $2)",
    )
    .bind(email)
    .bind(GrantState::Failed.as_str())
    .bind(job_id)
    .bind(GrantState::Pending.as_str())
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() > 0)
}

/// The tenant shows `email` in the groups of their stored role: a `pending` grant (or a
/// `failed` one of job `job_id`, which has just made it after all) becomes `realised`.
/// Returns the grant when this call realised it (its email is then due), `None` otherwise.
pub async fn realise(
    tx: &mut Transaction<'_, Postgres>,
    email: &str,
    job_id: Uuid,
) -> Result<Option<(RoleRow, Option<Uuid>)>, StoreError> {
    let row: Option<(String, String, String, Option<Uuid>)> = sqlx::query_as(
        "UPDATE admin_roles SET state = $2, state_changed_at = statement_timestamp()
          WHERE email = $1 AND (state = $3 OR (state = $4 AND assigned_by_job = $5))
      RETURNING email, ods_code, role, assigned_by_job",
    )
    .bind(email)
    .bind(GrantState::Realised.as_str())
    .bind(GrantState::Pending.as_str())
    .bind(GrantState::Failed.as_str())
    .bind(job_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|(email, ods_code, role, granted_by)| {
        let role = AdminRole::parse(&role)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown admin role {role:?}")))?;
        Ok((
            RoleRow {
                email,
                ods_code,
                role,
            },
            granted_by,
        ))
    })
    .transpose()
}

/// The Primary admins of `ods_code` holding their role (pending or realised).
pub async fn primary_admins(
    tx: &mut Transaction<'_, Postgres>,
    ods_code: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT email FROM admin_roles
          WHERE ods_code = $1 AND role = $2 AND state IN ($3, $4) ORDER BY email",
    )
    .bind(ods_code)
    .bind(AdminRole::PhoneSystemPrimaryAdmin.as_str())
    .bind(GrantState::Pending.as_str())
    .bind(GrantState::Realised.as_str())
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

/// The id of the group this service found or made with this display name, if any.
pub async fn remembered_group(
    executor: impl PgExecutor<'_>,
    display_name: &str,
) -> Result<Option<Uuid>, StoreError> {
    Ok(
        sqlx::query_scalar("SELECT group_id FROM tenant_groups WHERE display_name = lower($1)")
            .bind(display_name)
            .fetch_optional(executor)
            .await?,
    )
}

/// Remembers the group of a display name (the newest found wins).
pub async fn remember_group(
    executor: impl PgExecutor<'_>,
    display_name: &str,
    group_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO tenant_groups (display_name, group_id) VALUES (lower($1), $2)
         ON CONFLICT (display_name) DO UPDATE SET group_id = EXCLUDED.group_id, found_at = now()
          WHERE tenant_groups.group_id <> EXCLUDED.group_id",
    )
    .bind(display_name)
    .bind(group_id)
    .execute(executor)
    .await?;
    Ok(())
}

//! Portal access: the contacts of the batches granted so far, and what was done about them
//! (invited, activated, reminded). See `engine::portal` for the rules.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use super::StoreError;
use crate::domain::Ticket;

/// Serialise the planning of grant batches across replicas until `tx` ends, so that two
/// batches planned at once see each other's contacts in their duplicate-email checks.
pub async fn lock_grants(tx: &mut Transaction<'_, Postgres>) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('portal:grant', 0))")
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A contact as a batch sends it, with its email already lower-cased (None when missing).
#[derive(Debug, Clone)]
pub struct ContactData<'a> {
    pub contact_id: &'a str,
    pub name: &'a str,
    /// `individual` or `organisation`.
    pub kind: &'static str,
    pub email: Option<String>,
    pub council: &'a str,
    pub member: bool,
    pub clerk_until: Option<NaiveDate>,
    pub has_portal_access: bool,
}

/// Store (insert or update) the batch's contacts, keeping their invitation, activation and
/// reminder state.
pub async fn upsert_contacts(
    tx: &mut Transaction<'_, Postgres>,
    contacts: &[ContactData<'_>],
    job_id: Uuid,
) -> Result<(), StoreError> {
    for c in contacts {
        sqlx::query(
            "INSERT INTO portal_contacts (contact_id, name, kind, email, council, member,
                                          clerk_until, has_portal_access, updated_by_job)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
             ON CONFLICT (contact_id) DO UPDATE SET name = EXCLUDED.name,
                 kind = EXCLUDED.kind, email = EXCLUDED.email, council = EXCLUDED.council,
                 member = EXCLUDED.member, clerk_until = EXCLUDED.clerk_until,
                 has_portal_access = EXCLUDED.has_portal_access,
                 updated_by_job = EXCLUDED.updated_by_job, updated_at = now()",
        )
        .bind(c.contact_id)
        .bind(c.name)
        .bind(c.kind)
        .bind(&c.email)
        .bind(c.council)
        .bind(c.member)
        .bind(c.clerk_until)
        .bind(c.has_portal_access)
        .bind(job_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Individuals stored from earlier batches, other than `except` (the batch's own contacts,
/// whose data the batch replaces), whose email is one of `emails` (lower-cased): as
/// (email, contact_id, council).
pub async fn individuals_with_emails(
    executor: impl PgExecutor<'_>,
    emails: &[String],
    except: &[String],
) -> Result<Vec<(String, String, String)>, StoreError> {
    Ok(sqlx::query_as(
        "SELECT lower(email), contact_id, council FROM portal_contacts
         WHERE kind = 'individual' AND lower(email) = ANY($1) AND NOT (contact_id = ANY($2))
         ORDER BY contact_id",
    )
    .bind(emails)
    .bind(except)
    .fetch_all(executor)
    .await?)
}

/// What the reconciler did about a contact.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ContactState {
    pub contact_id: String,
    pub name: String,
    pub council: String,
    pub invited_at: Option<DateTime<Utc>>,
    pub invited_by_job: Option<Uuid>,
    pub invited_email: Option<String>,
    pub invited_batch: Option<String>,
    pub activated_at: Option<DateTime<Utc>>,
    pub activated_by_job: Option<Uuid>,
    pub last_reminded_by_job: Option<Uuid>,
}

const STATE_COLUMNS: &str = "contact_id, name, council, invited_at, invited_by_job, \
     invited_email, invited_batch, activated_at, activated_by_job, last_reminded_by_job";

/// The stored state of `ids` (those that are stored).
pub async fn states(
    executor: impl PgExecutor<'_>,
    ids: &[String],
) -> Result<Vec<ContactState>, StoreError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {STATE_COLUMNS} FROM portal_contacts WHERE contact_id = ANY($1)"
    )))
    .bind(ids)
    .fetch_all(executor)
    .await?)
}

/// The stored state of one contact, locked until `tx` ends (so that two jobs acting on the
/// same contact take turns).
pub async fn lock_state(
    tx: &mut Transaction<'_, Postgres>,
    contact_id: &str,
) -> Result<Option<ContactState>, StoreError> {
    Ok(sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {STATE_COLUMNS} FROM portal_contacts WHERE contact_id = $1 FOR UPDATE"
    )))
    .bind(contact_id)
    .fetch_optional(&mut **tx)
    .await?)
}

/// Contacts invited and not yet activated, in contact-id order.
pub async fn not_activated(executor: impl PgExecutor<'_>) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT contact_id FROM portal_contacts
         WHERE invited_at IS NOT NULL AND activated_at IS NULL ORDER BY contact_id",
    )
    .fetch_all(executor)
    .await?)
}

/// Mark the contact invited to `email` in batch `batch_label` by `job_id`, if nobody invited
/// it yet. Returns whether this call did.
pub async fn mark_invited(
    tx: &mut Transaction<'_, Postgres>,
    contact_id: &str,
    email: &str,
    batch_label: &str,
    job_id: Uuid,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE portal_contacts SET invited_at = now(), invited_by_job = $2, invited_email = $3,
                invited_batch = $4, updated_at = now()
         WHERE contact_id = $1 AND invited_at IS NULL",
    )
    .bind(contact_id)
    .bind(job_id)
    .bind(email)
    .bind(batch_label)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Record the contact's activation by `job_id`, if not recorded yet. Returns whether this
/// call did.
pub async fn mark_activated(
    tx: &mut Transaction<'_, Postgres>,
    contact_id: &str,
    job_id: Uuid,
) -> Result<bool, StoreError> {
    let done = sqlx::query(
        "UPDATE portal_contacts SET activated_at = now(), activated_by_job = $2,
                updated_at = now()
         WHERE contact_id = $1 AND activated_at IS NULL",
    )
    .bind(contact_id)
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Record a reminder sent by `job_id`.
pub async fn mark_reminded(
    tx: &mut Transaction<'_, Postgres>,
    contact_id: &str,
    job_id: Uuid,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE portal_contacts SET last_reminded_at = now(), last_reminded_by_job = $2,
                reminders_sent = reminders_sent + 1, updated_at = now()
         WHERE contact_id = $1",
    )
    .bind(contact_id)
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// What events about a job carry: its `message_id` and ticket.
pub async fn job_source(
    executor: impl PgExecutor<'_>,
    job_id: Uuid,
) -> Result<(String, Option<Ticket>), StoreError> {
    let (message_id, ticket): (String, super::work::StoredTicket) =
        sqlx::query_as("SELECT message_id, ticket FROM jobs WHERE id = $1")
            .bind(job_id)
            .fetch_one(executor)
            .await?;
    let ticket = ticket
        .map(|raw| Ticket::from_json(raw.get()))
        .transpose()
        .map_err(|e| StoreError::Corrupt(format!("job {job_id} ticket: {e}")))?;
    Ok((message_id, ticket))
}

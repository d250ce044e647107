//! Desired state of user policies: definitions (highest version wins) and membership
//! (a user in at most one policy).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::StoreError;
use crate::domain::ChangeEffect;

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
    // One primary-key probe per address, by construction (the LIMIT keeps the planner from
    // turning the lateral lookup into a join): a membership just grown by a large policy has
    // no statistics yet, and the planner then scanned the whole policy for every chunk.
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT m.email, p.id, p.name, p.ods_code, p.version, p.licence, p.toggles
         FROM unnest($1::text[]) AS e(email)
         CROSS JOIN LATERAL (SELECT x.email, x.policy_id FROM policy_members x
                             WHERE x.email = e.email LIMIT 1) AS m
         JOIN policies p ON p.id = m.policy_id",
    )
    .bind(emails)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|r| (r.email, r.policy)).collect())
}

/// Every licence some policy assigns: the licences a policy move takes away.
pub async fn managed_licences<'e>(
    db: impl sqlx::PgExecutor<'e>,
) -> Result<Vec<String>, StoreError> {
    Ok(sqlx::query_scalar("SELECT DISTINCT licence FROM policies")
        .fetch_all(db)
        .await?)
}

/// How many members policy `id` has.
pub async fn member_count<'e>(db: impl sqlx::PgExecutor<'e>, id: &str) -> Result<u64, StoreError> {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM policy_members WHERE policy_id = $1")
        .bind(id)
        .fetch_one(db)
        .await?;
    Ok(count as u64)
}

/// Stage the member list of a stored job for set-wise checks, in `staged_members` (`seq`
/// from 0 in list order, `raw`, `item`), a table of the transaction: the list stays in
/// PostgreSQL and never passes through the worker whole (a policy may have 200,000
/// members). `item` is the normalised address of plain addresses (SQL function
/// `plain_email`, migration 0007) and NULL for the rest, which [`unusual_members`] hands to
/// the worker's rule. Returns how many are listed.
pub async fn stage_members(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
) -> Result<i64, StoreError> {
    sqlx::query(
        "CREATE TEMPORARY TABLE staged_members (seq int NOT NULL, raw text NOT NULL, item text)
         ON COMMIT DROP",
    )
    .execute(&mut **tx)
    .await?;
    let staged = sqlx::query(
        "INSERT INTO staged_members (seq, raw, item)
         SELECT (m.ord - 1)::int, m.raw, plain_email(m.raw)
         FROM jobs j,
              jsonb_array_elements_text(j.payload -> 'members') WITH ORDINALITY AS m(raw, ord)
         WHERE j.id = $1",
    )
    .bind(job_id)
    .execute(&mut **tx)
    .await?;
    Ok(staged.rows_affected() as i64)
}

/// Staged members that are not plain addresses, in list order: `(seq, raw)`.
pub async fn unusual_members(
    tx: &mut Transaction<'_, Postgres>,
) -> Result<Vec<(i32, String)>, StoreError> {
    Ok(
        sqlx::query_as("SELECT seq, raw FROM staged_members WHERE item IS NULL ORDER BY seq")
            .fetch_all(&mut **tx)
            .await?,
    )
}

/// Record the normalised address of unusual members the worker's rule accepted.
pub async fn set_staged_emails(
    tx: &mut Transaction<'_, Postgres>,
    seqs: &[i32],
    emails: &[String],
) -> Result<(), StoreError> {
    if seqs.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "UPDATE staged_members s SET item = u.email
         FROM unnest($1::int[], $2::text[]) AS u(seq, email) WHERE s.seq = u.seq",
    )
    .bind(seqs)
    .bind(emails)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Staged members listed again after their first appearance (same address, any case), in
/// list order: `(seq, email)`, at most `limit`.
pub async fn repeated_members(
    tx: &mut Transaction<'_, Postgres>,
    limit: i64,
) -> Result<Vec<(i32, String)>, StoreError> {
    Ok(sqlx::query_as(
        "WITH repeated AS (
             SELECT item, min(seq) AS first FROM staged_members WHERE item IS NOT NULL
             GROUP BY item HAVING count(*) > 1)
         SELECT s.seq, s.item FROM staged_members s
         JOIN repeated r ON r.item = s.item AND s.seq > r.first
         ORDER BY s.seq LIMIT $1",
    )
    .bind(limit)
    .fetch_all(&mut **tx)
    .await?)
}

/// Make the staged (valid, unique) members the whole membership of `policy_id`, or add them
/// to it (`replace` false), moving them from any other policy.
pub async fn store_staged_members(
    tx: &mut Transaction<'_, Postgres>,
    policy_id: &str,
    replace: bool,
) -> Result<(), StoreError> {
    // Both differences are set operations (EXCEPT), which PostgreSQL can only hash or sort,
    // never compare pairwise: with statistics that do not know this policy yet (a new one,
    // on an analysed table), an anti-join was planned as a nested loop over both lists,
    // quadratic on a 20,000-member policy (21 s measured).
    if replace {
        sqlx::query(
            "DELETE FROM policy_members m
             USING (SELECT email FROM policy_members WHERE policy_id = $1
                    EXCEPT SELECT item FROM staged_members) AS gone
             WHERE m.email = gone.email",
        )
        .bind(policy_id)
        .execute(&mut **tx)
        .await?;
    }
    // Members already in this policy are left out before the insert: a conflict, even one
    // that updates nothing, locks its row, and a re-sent policy would lock every member.
    sqlx::query(
        "INSERT INTO policy_members (email, policy_id)
         SELECT item, $1 FROM (SELECT item FROM staged_members WHERE item IS NOT NULL
                               EXCEPT SELECT email FROM policy_members WHERE policy_id = $1)
                              AS new
         ON CONFLICT (email) DO UPDATE SET policy_id = EXCLUDED.policy_id, added_at = now()
         WHERE policy_members.policy_id <> EXCLUDED.policy_id",
    )
    .bind(policy_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Whose members a policy job's effect counts (see [`change_effect`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Members {
    /// The policy's stored members (a new definition without a list).
    Stored,
    /// The staged list ([`STAGED_MEMBERS`], checked), which replaces the stored membership:
    /// stored members not in it leave the policy.
    Replaced,
    /// The staged list, added to the stored membership (`policy.members_added`).
    Added,
}

/// What a policy job for `incoming` would do to its members, before any desired state
/// changes (see [`ChangeEffect`]). Nobody loses a licence: members leaving keep theirs.
/// Returns the effect and the policy's size for the share threshold (its members after the
/// job, or before it when it drops some).
pub async fn change_effect(
    tx: &mut Transaction<'_, Postgres>,
    incoming: &PolicyRow,
    members: Members,
) -> Result<(ChangeEffect, u64), StoreError> {
    // The members the job writes, classified by where they stand now. Set operations
    // (EXCEPT, UNION), as in `store_staged_members`, so that a 200,000-member list is hashed.
    let target = match members {
        Members::Stored => "SELECT email FROM policy_members WHERE policy_id = $1",
        Members::Replaced | Members::Added => "SELECT item AS email FROM staged_members",
    };
    let (changed, toggles, unchanged, added): (i64, i64, i64, i64) =
        sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FILTER (WHERE p.id IS NOT NULL AND p.licence <> $2),
                count(*) FILTER (WHERE p.licence = $2 AND p.toggles <> $3::jsonb),
                count(*) FILTER (WHERE p.licence = $2 AND p.toggles = $3::jsonb),
                count(*) FILTER (WHERE p.id IS NULL)
         FROM ({target}) t
         LEFT JOIN policy_members m ON m.email = t.email
         LEFT JOIN policies p ON p.id = m.policy_id"
        )))
        .bind(&incoming.id)
        .bind(&incoming.licence)
        .bind(serde_json::to_value(&incoming.toggles).expect("toggles serialize"))
        .fetch_one(&mut **tx)
        .await?;
    let stored = member_count(&mut **tx, &incoming.id).await? as i64;
    // `staged_members` exists only when a list was staged.
    let set_count = |op: &str| {
        format!(
            "SELECT count(*) FROM (SELECT email FROM policy_members WHERE policy_id = $1
                                   {op} SELECT item FROM staged_members) AS s"
        )
    };
    let (leaving, after): (i64, i64) = match members {
        Members::Stored => (0, stored),
        Members::Replaced => (
            sqlx::query_scalar(sqlx::AssertSqlSafe(set_count("EXCEPT")))
                .bind(&incoming.id)
                .fetch_one(&mut **tx)
                .await?,
            0,
        ),
        Members::Added => (
            0,
            sqlx::query_scalar(sqlx::AssertSqlSafe(set_count("UNION")))
                .bind(&incoming.id)
                .fetch_one(&mut **tx)
                .await?,
        ),
    };
    let effect = ChangeEffect {
        licence_removed: 0,
        licence_changed: changed as u64,
        toggles_changed: toggles as u64,
        unchanged: unchanged as u64,
        licence_added: added as u64,
        members_leaving: leaving as u64,
    };
    let size = match members {
        Members::Added => after,
        _ if stored > 0 => stored,
        _ => changed + toggles + unchanged + added,
    };
    Ok((effect, size as u64))
}

/// The staged members as the plan's items, in list order: once checked (every one valid
/// and unique), `staged_members` has the shape [`super::work::ItemRows::Staged`] reads.
pub const STAGED_MEMBERS: &str = "staged_members";

/// The stored members of `policy_id` as the plan's items, by address, in table
/// `planned_items`. Returns how many.
pub async fn stage_items_of_policy(
    tx: &mut Transaction<'_, Postgres>,
    policy_id: &str,
) -> Result<u64, StoreError> {
    super::work::create_planned_items(tx).await?;
    let staged = sqlx::query(
        "INSERT INTO planned_items (seq, item)
         SELECT (row_number() OVER (ORDER BY email) - 1)::int, email
         FROM policy_members WHERE policy_id = $1",
    )
    .bind(policy_id)
    .execute(&mut **tx)
    .await?;
    Ok(staged.rows_affected())
}

//! Licensing bookkeeping: the seats jobs will take, and the service plans seen per SKU
//! (migration `0013_licensing.sql`).
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::StoreError;

/// Of the members listed in the planner's staged table (`staged_members`, valid emails only),
/// how many do not already hold `licence` through a stored policy: the users that need a new
/// seat of it. A member whose stored policy assigns `licence` holds a seat already.
pub async fn staged_needing_seat(
    tx: &mut Transaction<'_, Postgres>,
    licence: &str,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(DISTINCT s.item) FROM staged_members s
         WHERE s.item IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM policy_members m JOIN policies p ON p.id = m.policy_id
                           WHERE m.email = s.item AND p.licence = $1)",
    )
    .bind(licence)
    .fetch_one(&mut **tx)
    .await?)
}

/// Of the stored members of `policy_id`, how many do not hold `licence` through their stored
/// policy (all of them when the policy's licence changes to `licence`).
pub async fn stored_needing_seat(
    tx: &mut Transaction<'_, Postgres>,
    policy_id: &str,
    licence: &str,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM policy_members m JOIN policies p ON p.id = m.policy_id
         WHERE m.policy_id = $1 AND p.licence <> $2",
    )
    .bind(policy_id)
    .bind(licence)
    .fetch_one(&mut **tx)
    .await?)
}

/// Seats of `licence` that unfinished jobs (other than `except`) will still take: what each
/// recorded at planning, less its items already `changed` (their seats are in the tenant's
/// `consumedUnits` by now), never below zero. An approximation on the safe side: a changed
/// item that did not take a seat still counts as taken.
pub async fn seats_reserved(
    tx: &mut Transaction<'_, Postgres>,
    licence: &str,
    except: Uuid,
) -> Result<i64, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT coalesce(sum(greatest(0, j.seats_needed - coalesce(
                    (SELECT count(*) FROM job_items i
                     WHERE i.job_id = j.id AND i.outcome = 'changed'), 0))), 0)::bigint
         FROM jobs j
         WHERE j.seat_licence = $1 AND j.id <> $2 AND NOT j.dry_run
           AND j.state IN ('received', 'accepted', 'running')",
    )
    .bind(licence)
    .bind(except)
    .fetch_one(&mut **tx)
    .await?)
}

/// Records on the job how many new seats of `licence` it needs.
pub async fn record_seats(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    licence: &str,
    needed: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE jobs SET seat_licence = $2, seats_needed = $3 WHERE id = $1")
        .bind(job_id)
        .bind(licence)
        .bind(needed.clamp(0, i32::MAX as i64) as i32)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A service plan as the catalogue lists it.
#[derive(Debug, Clone)]
pub struct SeenPlan {
    pub sku_id: Uuid,
    pub sku_part_number: String,
    pub service_plan_id: Uuid,
    pub plan_name: String,
}

/// Records the plans of a catalogue reading, under a transaction-scoped advisory lock (one
/// replica at a time). Plans of a SKU never seen before are its baseline; plans new to a SKU
/// seen before are `added_later` and wait to be re-verified. Returns those added now.
pub async fn record_plans(pool: &PgPool, plans: &[SeenPlan]) -> Result<Vec<SeenPlan>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sku_service_plans'))")
        .execute(&mut *tx)
        .await?;
    let known_skus: Vec<Uuid> = sqlx::query_scalar("SELECT DISTINCT sku_id FROM sku_service_plans")
        .fetch_all(&mut *tx)
        .await?;
    let mut added = Vec::new();
    for p in plans {
        let later = known_skus.contains(&p.sku_id);
        let inserted = sqlx::query(
            "INSERT INTO sku_service_plans
                 (sku_id, service_plan_id, sku_part_number, plan_name, added_later)
             VALUES ($1, $2, $3, $4, $5)
             ON CONFLICT (sku_id, service_plan_id) DO NOTHING",
        )
        .bind(p.sku_id)
        .bind(p.service_plan_id)
        .bind(&p.sku_part_number)
        .bind(&p.plan_name)
        .bind(later)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted > 0 && later {
            added.push(p.clone());
        }
    }
    tx.commit().await?;
    Ok(added)
}

/// How the message id of an internal re-verification job begins; the rest is
/// `{skuPartNumber}:{plan name}:{plan id}:{policy id}:v{version}`.
pub const REVERIFY_PREFIX: &str = "service-plan-added:";

/// For every plan added later and not yet re-verified, stores a `policy.changed` job per
/// stored policy that uses its SKU (its stored definition, no member list: the stored
/// membership is verified), idempotent on the message id, and marks the plan re-verified, in
/// one transaction. Returns the message ids of the jobs stored.
pub async fn store_reverify_jobs(pool: &PgPool) -> Result<Vec<String>, StoreError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('sku_service_plans'))")
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(Uuid, Uuid, String, String, String, serde_json::Value)> = sqlx::query_as(
        "SELECT s.sku_id, s.service_plan_id, s.plan_name, p.id, s.sku_part_number,
                jsonb_build_object('policy', jsonb_build_object(
                    'id', p.id, 'name', p.name, 'ods_code', p.ods_code, 'version', p.version,
                    'licence', p.licence, 'toggles', p.toggles))
         FROM sku_service_plans s JOIN policies p ON p.licence = s.sku_part_number
         WHERE s.added_later AND s.reverified_at IS NULL
         ORDER BY s.first_seen_at, p.id",
    )
    .fetch_all(&mut *tx)
    .await?;
    let mut stored = Vec::new();
    for (_, plan_id, plan_name, policy_id, part, payload) in &rows {
        let version = payload["policy"]["version"].as_i64().unwrap_or_default();
        let message_id =
            format!("{REVERIFY_PREFIX}{part}:{plan_name}:{plan_id}:{policy_id}:v{version}");
        let id = Uuid::now_v7();
        let inserted: Option<Uuid> = sqlx::query_scalar(
            "INSERT INTO jobs (id, message_id, job_type, schema_version, state, dry_run, payload,
                               sent_at)
             VALUES ($1, $2, 'policy.changed', 1, 'received', false, $3, now())
             ON CONFLICT (message_id) DO NOTHING RETURNING id",
        )
        .bind(id)
        .bind(&message_id)
        .bind(payload)
        .fetch_optional(&mut *tx)
        .await?;
        if inserted.is_some() {
            sqlx::query(
                "INSERT INTO inbox (message_id, job_id, disposition) VALUES ($1, $2, 'job')
                 ON CONFLICT DO NOTHING",
            )
            .bind(&message_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
            stored.push(message_id);
        }
    }
    sqlx::query(
        "UPDATE sku_service_plans SET reverified_at = now()
         WHERE added_later AND reverified_at IS NULL",
    )
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(stored)
}

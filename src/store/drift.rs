//! Drift sweeps (migration `0016_drift.sql`): storing a sweep's internal `drift.sweep` jobs,
//! one per stored policy, and what a finished sweep job found (its `drift.detected`).
use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

use super::roles::RoleRow;
use super::{StoreError, outbox};
use crate::domain::{
    AdminRole, DriftCounts, DriftDetected, DriftItem, EventHeader, MAX_DRIFT_ITEMS_LISTED,
};
use crate::telemetry::InternalEvent;
use crate::telemetry::metrics as m;

/// How the message id of a sweep job begins; the rest is `{sweep}:policy:{policy id}` or
/// `{sweep}:ods:{ODS code}`, where `{sweep}` is the start of the scheduled period (RFC 3339)
/// or `manual-{time}`.
pub const SWEEP_PREFIX: &str = "drift:";

/// Stores sweep `sweep`: a `drift.sweep` job per stored policy and a `drift.sweep_roles` job
/// per ODS code with a realised admin role (last changed before `changed_before`, when given:
/// what was applied moments ago is swept next time), idempotent
/// on the message id, so every replica may store the same sweep and one set of jobs results.
/// `report`: the jobs are dry runs (nothing is written). Returns the message ids stored.
pub async fn store_sweep(
    pool: &PgPool,
    sweep: &str,
    report: bool,
    items_max: u64,
    changed_before: Option<DateTime<Utc>>,
) -> Result<Vec<String>, StoreError> {
    let mut tx = pool.begin().await?;
    let policies: Vec<String> = sqlx::query_scalar(
        "SELECT id FROM policies WHERE $1::timestamptz IS NULL OR updated_at < $1 ORDER BY id",
    )
    .bind(changed_before)
    .fetch_all(&mut *tx)
    .await?;
    let mut stored = Vec::new();
    for policy_id in policies {
        let message_id = format!("{SWEEP_PREFIX}{sweep}:policy:{policy_id}");
        let payload = json!({ "policy_id": policy_id, "items_max": items_max });
        if store_job(&mut tx, &message_id, "drift.sweep", report, payload).await? {
            stored.push(message_id);
        }
    }
    // The admin roles of every ODS code with a role realised (`drift.sweep_roles`).
    let codes: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT ods_code FROM admin_roles
         WHERE state = 'realised' AND ($1::timestamptz IS NULL OR state_changed_at < $1)
         ORDER BY ods_code",
    )
    .bind(changed_before)
    .fetch_all(&mut *tx)
    .await?;
    for ods_code in codes {
        let message_id = format!("{SWEEP_PREFIX}{sweep}:ods:{ods_code}");
        let payload = json!({ "ods_code": ods_code, "items_max": items_max });
        if store_job(&mut tx, &message_id, "drift.sweep_roles", report, payload).await? {
            stored.push(message_id);
        }
    }
    tx.commit().await?;
    Ok(stored)
}

/// One sweep job and its inbox entry, unless its message id is known. Whether it was stored.
async fn store_job(
    tx: &mut Transaction<'_, Postgres>,
    message_id: &str,
    job_type: &str,
    report: bool,
    payload: Value,
) -> Result<bool, StoreError> {
    let id = Uuid::now_v7();
    let inserted: Option<Uuid> = sqlx::query_scalar(
        "INSERT INTO jobs (id, message_id, job_type, schema_version, state, dry_run, payload,
                           sent_at, background, priority)
         -- Low priority (migration 0017): claimed only when nothing else is claimable.
         VALUES ($1, $2, $3, 1, 'received', $4, $5, now(), true, -1)
         ON CONFLICT (message_id) DO NOTHING RETURNING id",
    )
    .bind(id)
    .bind(message_id)
    .bind(job_type)
    .bind(report)
    .bind(payload)
    .fetch_optional(&mut **tx)
    .await?;
    if inserted.is_some() {
        sqlx::query(
            "INSERT INTO inbox (message_id, job_id, disposition) VALUES ($1, $2, 'job')
             ON CONFLICT DO NOTHING",
        )
        .bind(message_id)
        .bind(id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(inserted.is_some())
}

/// The roles of `ods_code` whose memberships the tenant has shown (`realised`): what a sweep
/// verifies. Pending and removing ones are a job's, still at work.
pub async fn realised_roles(
    tx: &mut Transaction<'_, Postgres>,
    ods_code: &str,
) -> Result<Vec<RoleRow>, StoreError> {
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT email, ods_code, role FROM admin_roles
         WHERE ods_code = $1 AND state = 'realised' ORDER BY email",
    )
    .bind(ods_code)
    .fetch_all(&mut **tx)
    .await?;
    rows.into_iter()
        .map(|(email, ods_code, role)| {
            Ok(RoleRow {
                email,
                ods_code,
                role: AdminRole::parse(&role)
                    .ok_or_else(|| StoreError::Corrupt(format!("unknown admin role {role:?}")))?,
            })
        })
        .collect()
}

/// Whether a job of the portal's (other than a sweep) that changes or applies `policy_id` is
/// unfinished: its users may not hold the policy yet, which is no drift.
pub async fn policy_job_unfinished(
    tx: &mut Transaction<'_, Postgres>,
    policy_id: &str,
) -> Result<bool, StoreError> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM jobs
             WHERE state <> 'completed' AND NOT dry_run
               AND job_type IN ('policy.changed', 'policy.members_added')
               AND (plan -> 'policy' ->> 'id' = $1
                    OR (state = 'received' AND (payload -> 'policy' ->> 'id' = $1
                                                OR payload ->> 'policy_id' = $1))))",
    )
    .bind(policy_id)
    .fetch_one(&mut **tx)
    .await?)
}

/// What a sweep item found, as the applier records it in the item's `detail` (JSON text) when
/// the item drifted.
pub fn finding(found: Value, expected: Value) -> String {
    json!({ "found": found, "expected": expected }).to_string()
}

/// What a sweep learnt of an item in an earlier claim of its chunk (`drift_notes`).
#[derive(Debug, Clone)]
pub struct Note {
    /// How long until a read shows a difference `window` after it was first seen (zero: a
    /// read now can be trusted). Measured by the database's clock, which every replica shares.
    pub remaining: std::time::Duration,
    /// What a read made once replication had had time found (JSON, [`finding`]): the item
    /// drifted, and its repair is under way.
    pub finding: Option<String>,
}

/// The notes of those of `seqs` of the sweep job `job_id`, with `window` (how long after a
/// difference was first seen a read of it is trusted).
pub async fn notes(
    pool: &PgPool,
    job_id: Uuid,
    seqs: &[i32],
    window: std::time::Duration,
) -> Result<HashMap<i32, Note>, StoreError> {
    let rows: Vec<(i32, f64, Option<String>)> = sqlx::query_as(
        "SELECT seq,
                greatest(0, extract(epoch FROM suspected_at - now()) + $3)::float8,
                finding
         FROM drift_notes WHERE job_id = $1 AND seq = ANY($2)",
    )
    .bind(job_id)
    .bind(seqs)
    .bind(window.as_secs_f64())
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, remaining, finding)| {
            (
                seq,
                Note {
                    remaining: std::time::Duration::try_from_secs_f64(remaining)
                        .unwrap_or(std::time::Duration::MAX),
                    finding,
                },
            )
        })
        .collect())
}

/// Notes that reads of the items `seqs` differed (now, by the database's clock: after the
/// reads; the first such time is kept).
pub async fn suspect(pool: &PgPool, job_id: Uuid, seqs: &[i32]) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO drift_notes (job_id, seq, suspected_at)
         SELECT $1, seq, now() FROM unnest($2::int[]) AS seq
         ON CONFLICT (job_id, seq) DO NOTHING",
    )
    .bind(job_id)
    .bind(seqs)
    .execute(pool)
    .await?;
    Ok(())
}

/// Keeps what was found of items about to be repaired (`seq -> finding`).
pub async fn found(
    pool: &PgPool,
    job_id: Uuid,
    findings: &HashMap<i32, String>,
) -> Result<(), StoreError> {
    let (seqs, texts): (Vec<i32>, Vec<&str>) =
        findings.iter().map(|(s, d)| (*s, d.as_str())).unzip();
    sqlx::query(
        "INSERT INTO drift_notes (job_id, seq, suspected_at, finding)
         SELECT $1, u.seq, now(), u.finding FROM unnest($2::int[], $3::text[]) AS u(seq, finding)
         ON CONFLICT (job_id, seq) DO UPDATE SET finding = excluded.finding",
    )
    .bind(job_id)
    .bind(&seqs)
    .bind(&texts)
    .execute(pool)
    .await?;
    Ok(())
}

/// The sweep job `job_id` has completed (in `tx`): publish its `drift.detected` when anything
/// drifted. Items `changed` drifted (in a report-only sweep, a dry run, they would be
/// repaired; otherwise they were), items `failed` could not be read or repaired and count as
/// drifted too, `skipped` ones (no longer members) were not checked. An item with a finding
/// noted ([`found`]) whose repair a later claim found done (recorded `already_compliant`: no
/// write intent of that claim, as for an interrupted admin-role repair) drifted and was
/// brought back: it counts as `changed`.
pub async fn publish_detected(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    message_id: &str,
    dry_run: bool,
    subject: Option<&Value>,
) -> Result<(), StoreError> {
    let (checked, changed, failed, items_max): (i64, i64, i64, Option<i64>) = sqlx::query_as(
        "SELECT count(*) FILTER (WHERE i.outcome IN ('changed', 'already_compliant', 'failed')),
                count(*) FILTER (WHERE i.outcome = 'changed'
                                 OR (i.outcome = 'already_compliant' AND n.finding IS NOT NULL)),
                count(*) FILTER (WHERE i.outcome = 'failed'),
                (SELECT (payload ->> 'items_max')::bigint FROM jobs WHERE id = $1)
         FROM job_items i LEFT JOIN drift_notes n ON n.job_id = i.job_id AND n.seq = i.seq
         WHERE i.job_id = $1",
    )
    .bind(job_id)
    .fetch_one(&mut **tx)
    .await?;
    let counts = DriftCounts {
        checked: checked as u64,
        drifted: (changed + failed) as u64,
        repaired: if dry_run { 0 } else { changed as u64 },
        failed: failed as u64,
    };
    emit_found(counts);
    if counts.drifted == 0 {
        return Ok(());
    }
    let limit = items_max
        .unwrap_or(100)
        .clamp(1, MAX_DRIFT_ITEMS_LISTED as i64);
    let rows: Vec<(String, String, Option<String>, Option<String>)> = sqlx::query_as(
        // A repair finished by a later claim of its chunk has its finding in the notes.
        "SELECT i.item, CASE WHEN i.outcome = 'failed' THEN 'failed' ELSE 'changed' END,
                i.failure_code,
                CASE WHEN i.outcome = 'failed' THEN i.detail ELSE coalesce(i.detail, n.finding) END
         FROM job_items i LEFT JOIN drift_notes n ON n.job_id = i.job_id AND n.seq = i.seq
         WHERE i.job_id = $1
           AND (i.outcome IN ('changed', 'failed')
                OR (i.outcome = 'already_compliant' AND n.finding IS NOT NULL))
         ORDER BY i.seq LIMIT $2",
    )
    .bind(job_id)
    .bind(limit + 1)
    .fetch_all(&mut **tx)
    .await?;
    let items_truncated = rows.len() as i64 > limit;
    let items = rows
        .into_iter()
        .take(limit as usize)
        .map(|(item, outcome, code, detail)| item_of(item, &outcome, code, detail))
        .collect();
    // The contract's subject: the policy and its version (or an ODS code), nothing else.
    let mut contract_subject = serde_json::Map::new();
    if let Some(Value::Object(fields)) = subject {
        for key in ["policy_id", "version", "ods_code"] {
            if let Some(value) = fields.get(key) {
                contract_subject.insert(key.to_owned(), value.clone());
            }
        }
    }
    let header = EventHeader::new(DriftDetected::TYPE, job_id, message_id.to_owned(), None);
    let event = DriftDetected {
        header: header.clone(),
        subject: Value::Object(contract_subject),
        counts,
        items,
        items_truncated,
    };
    outbox::enqueue(tx, &header, &event).await
}

fn item_of(item: String, outcome: &str, code: Option<String>, detail: Option<String>) -> DriftItem {
    let recorded: Option<Value> = detail
        .as_deref()
        .and_then(|d| serde_json::from_str(d).ok())
        .filter(|v: &Value| v.get("found").is_some());
    match recorded {
        Some(finding) => DriftItem {
            item,
            found: finding["found"].clone(),
            expected: finding["expected"].clone(),
        },
        // A failed read or repair: what was found is the failure.
        None if outcome == "failed" => DriftItem {
            item,
            found: json!({ "failure_code": code, "detail": detail }),
            expected: Value::Null,
        },
        // Changed by a write whose outcome was recorded after a crash: no finding kept.
        None => DriftItem {
            item,
            found: Value::Null,
            expected: Value::Null,
        },
    }
}

/// What a completed sweep job found, counted ([`m::DRIFT_ITEMS_TOTAL`]).
struct DriftFound(DriftCounts);

impl InternalEvent for DriftFound {
    fn emit(self) {
        let c = self.0;
        for (result, n) in [
            ("checked", c.checked),
            ("drifted", c.drifted),
            ("repaired", c.repaired),
            ("failed", c.failed),
        ] {
            metrics::counter!(m::DRIFT_ITEMS_TOTAL, "result" => result).increment(n);
        }
        if c.drifted > 0 {
            tracing::warn!(
                checked = c.checked,
                drifted = c.drifted,
                repaired = c.repaired,
                failed = c.failed,
                "drift found"
            );
        }
    }
}

fn emit_found(counts: DriftCounts) {
    crate::telemetry::emit(DriftFound(counts));
}

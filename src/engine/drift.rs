//! Drift sweeps (issue 18; contract 1.1, "Drift"): off-peak, the service verifies every stored
//! policy's members and every realised admin role against the tenant, as jobs of its own on
//! the one engine.
//!
//! A sweep is a `drift.sweep` job per stored policy and a `drift.sweep_roles` job per ODS
//! code with a realised admin role ([`crate::store::drift::store_sweep`]),
//! stored once per `engine.drift.every_hours` period when an off-peak window is open (or by
//! hand: `policy-reconciler drift sweep`). Such a job is background work: planned off-peak
//! whatever its size (its tenant calls carry the low throttling priority and wait for the
//! windows), claimed only when no other job's chunk waits, with leases and per-item outcomes
//! like every job, so it is listed, paused, resumed after a crash and paced by the shared write
//! budget as they are.
//!
//! Its applier reads each member and compares the direct assignment with the policy's
//! (the same rule as the policy applier's). A member that differs is drift: its item records
//! what was found and what was expected. In `repair` mode the drifted members are then handed
//! to the policy applier (write, read back, verify); in `report` mode the job is a dry run and
//! writes nothing. When the job completes, the store publishes one `drift.detected` if any
//! item drifted, and no `job.completed` (no ticket waits for a sweep).

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::kind::{
    ApplyContext, ItemOutcome, ItemResult, JobKind, Plan, PlanContext, PlannedItem, PlannedItems,
    WorkItem,
};
use super::policy::{self, PolicyPlan};
use super::roles::{self, GroupNames, ItemSpec, Preview};
use super::{Engine, EngineError, failure_code, licensing, users};
use crate::configuration::{DriftMode, DriftSettings, RoleSettings};
use crate::domain::{AdminRole, Failure, FailureCode, JobType};
use crate::store::drift as store;
use crate::store::policies::{self, PolicyRow};
use crate::store::roles::{self as store_roles, GrantState};
use crate::store::work;
use crate::telemetry::{InternalEvent, emit};
use crate::tenant::{AssignedLicence, SkuCatalogue};

/// How long a sweep of a policy waits, planned again after it, while a job of the portal for
/// that policy is unfinished (its users may not hold the policy yet: no drift).
const WAIT_FOR_POLICY_JOB: chrono::Duration = chrono::Duration::seconds(60);

/// The payload of a `drift.sweep` job, as [`store::store_sweep`] writes it.
#[derive(Debug, Deserialize)]
pub struct SweepPayload {
    pub policy_id: String,
}

/// `drift.sweep`: verify one policy's members (see the module docs).
pub struct DriftSweepKind;

#[async_trait]
impl JobKind for DriftSweepKind {
    type Payload = SweepPayload;
    type Plan = PolicyPlan;
    type Spec = ();
    const JOB_TYPE: JobType = JobType::DriftSweep;
    const BACKGROUND: bool = true;

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: SweepPayload,
    ) -> Result<Plan<PolicyPlan, ()>, EngineError> {
        policies::lock(ctx.tx, &payload.policy_id).await?;
        let Some(policy) = policies::get(ctx.tx, &payload.policy_id).await? else {
            return Ok(Plan::Fail {
                subject: Some(json!({ "policy_id": payload.policy_id })),
                failures: vec![Failure {
                    item: payload.policy_id.clone(),
                    code: FailureCode::UnknownPolicy,
                    detail: "the policy is no longer stored".into(),
                }],
            });
        };
        if store::policy_job_unfinished(ctx.tx, &policy.id).await? {
            tracing::info!(policy_id = %policy.id, "a job of the policy is unfinished; the sweep waits");
            return Ok(Plan::Wait {
                until: ctx.clock.now() + WAIT_FOR_POLICY_JOB,
            });
        }
        let catalogue = ctx.tenant.skus().await?;
        let count = policies::stage_items_of_policy(ctx.tx, &policy.id).await?;
        Ok(Plan::Accept {
            subject: json!({ "policy_id": policy.id, "version": policy.version }),
            plan: PolicyPlan {
                sku_plans: licensing::plans_of(&catalogue, &policy.licence),
                policy,
                stale: false,
            },
            items: PlannedItems::Staged {
                table: work::PLANNED_ITEMS,
                count,
            },
        })
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, PolicyPlan>,
        items: &[WorkItem<()>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply(ctx, items).await
    }
}

/// Licences as a sweep reports them: `[{"sku": part number, "disabled_plans": [names]}]`,
/// sorted.
fn describe(licences: &[&AssignedLicence], catalogue: &SkuCatalogue) -> Value {
    let mut described: Vec<Value> = licences
        .iter()
        .map(|l| {
            let sku = catalogue.by_id(l.sku_id);
            let mut plans: Vec<String> = l
                .disabled_plans
                .iter()
                .map(|p| {
                    sku.and_then(|s| s.service_plans.iter().find(|sp| sp.service_plan_id == *p))
                        .map_or_else(|| p.to_string(), |sp| sp.service_plan_name.clone())
                })
                .collect();
            plans.sort();
            json!({
                "sku": sku.map_or_else(|| l.sku_id.to_string(), |s| s.sku_part_number.clone()),
                "disabled_plans": plans,
            })
        })
        .collect();
    described.sort_by_key(|v| v["sku"].as_str().unwrap_or_default().to_owned());
    Value::Array(described)
}

async fn apply(
    ctx: &ApplyContext<'_, PolicyPlan>,
    items: &[WorkItem<()>],
) -> Result<Vec<ItemResult>, EngineError> {
    let planned = &ctx.plan.policy;
    let addresses: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    let (current, managed_parts) = tokio::try_join!(
        policies::memberships(ctx.pool, &addresses),
        policies::managed_licences(ctx.pool)
    )?;
    let current: HashMap<String, PolicyRow> = current.into_iter().collect();
    let catalogue =
        licensing::fresh_catalogue(ctx.tenant.as_ref(), &planned.licence, &ctx.plan.sku_plans)
            .await?;
    let mut results = Vec::new();
    // The members still of this policy at the version swept; the others are some job's to
    // verify, not drift.
    let mut checked: Vec<&WorkItem<()>> = Vec::new();
    for item in items {
        match current.get(&item.key) {
            Some(p) if p.id == planned.id && p.version == planned.version => checked.push(item),
            Some(p) if p.id == planned.id => results.push(ItemResult::skipped(
                item.seq,
                FailureCode::Superseded,
                format!(
                    "policy {} is at version {} since the sweep was planned; its job verifies it",
                    p.id, p.version
                ),
            )),
            Some(other) => results.push(ItemResult::skipped(
                item.seq,
                FailureCode::Superseded,
                format!("now a member of policy {}", other.id),
            )),
            None => results.push(ItemResult::skipped(
                item.seq,
                FailureCode::Superseded,
                format!("no longer a member of policy {}", planned.id),
            )),
        }
    }
    if checked.is_empty() {
        return Ok(results);
    }
    let desired = match catalogue.assignment(&planned.licence, &planned.toggles) {
        Ok(desired) => desired,
        Err(error) => {
            let code = failure_code(&error);
            results.extend(
                checked
                    .iter()
                    .map(|i| ItemResult::failed(i.seq, code, error.to_string())),
            );
            return Ok(results);
        }
    };
    let mut managed: HashSet<Uuid> = managed_parts
        .iter()
        .filter_map(|part| catalogue.by_part_number(part).ok().map(|sku| sku.sku_id))
        .collect();
    managed.insert(desired.sku_id);
    let expected = describe(&[&desired], &catalogue);

    let keys: Vec<String> = checked.iter().map(|i| i.key.clone()).collect();
    let states = users::read_users(ctx.pool, ctx.tenant.as_ref(), &keys).await?;
    let mut findings: HashMap<i32, String> = HashMap::new();
    let mut drifted: Vec<WorkItem<()>> = Vec::new();
    for (item, state) in checked.iter().zip(states) {
        match state {
            Err(error) => results.push(ItemResult::failed(
                item.seq,
                failure_code(&error),
                error.to_string(),
            )),
            Ok(state) => {
                if policy::change_for(&state, &desired, &managed).is_none() {
                    results.push(ItemResult::ok(item.seq, ItemOutcome::AlreadyCompliant));
                    continue;
                }
                let held: Vec<&AssignedLicence> = state
                    .assigned_licenses
                    .iter()
                    .filter(|l| managed.contains(&l.sku_id))
                    .collect();
                let finding = store::finding(describe(&held, &catalogue), expected.clone());
                if ctx.job.dry_run {
                    results.push(ItemResult {
                        seq: item.seq,
                        outcome: ItemOutcome::Changed,
                        code: None,
                        detail: Some(finding),
                    });
                } else {
                    findings.insert(item.seq, finding);
                    drifted.push((*item).clone());
                }
            }
        }
    }
    if drifted.is_empty() {
        return Ok(results);
    }
    // Repair: the policy applier's own read, write and read-back (it reads the user again: a
    // write is never planned from a read it did not make itself).
    for mut result in policy::apply(ctx, &drifted).await? {
        if result.outcome == ItemOutcome::Changed {
            result.detail = findings.remove(&result.seq);
        }
        results.push(result);
    }
    Ok(results)
}

/// The payload of a `drift.sweep_roles` job, as [`store::store_sweep`] writes it.
#[derive(Debug, Deserialize)]
pub struct RolesSweepPayload {
    pub ods_code: String,
}

/// What a roles sweep hands its applier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RolesSweepPlan {
    pub ods_code: String,
}

/// `drift.sweep_roles`: verify the Phone System admin roles realised for one ODS code: each
/// holder is in exactly the groups of their role (for a Primary admin, also those of the
/// onboarded organisations of their mapping) among the Phone System groups of the
/// organisations involved. Repairs go through the admin-role applier.
pub struct RolesSweepKind {
    names: GroupNames,
}

impl RolesSweepKind {
    pub fn new(settings: &RoleSettings) -> Self {
        Self {
            names: GroupNames::new(settings),
        }
    }
}

#[async_trait]
impl JobKind for RolesSweepKind {
    type Payload = RolesSweepPayload;
    type Plan = RolesSweepPlan;
    type Spec = ItemSpec;
    const JOB_TYPE: JobType = JobType::DriftSweepRoles;
    const BACKGROUND: bool = true;

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: RolesSweepPayload,
    ) -> Result<Plan<RolesSweepPlan, ItemSpec>, EngineError> {
        let mut items = Vec::new();
        for row in store::realised_roles(ctx.tx, &payload.ods_code).await? {
            let holding = roles::holding_of(&mut **ctx.tx, &row).await?;
            // The holding swept is kept with the item: the applier skips a holder whose role
            // changed since, and a dry run (report mode) reconciles to it.
            let spec = ItemSpec {
                codes: vec![payload.ods_code.clone()],
                sweep: false,
                preview: Some(Preview {
                    holding: Some(holding),
                }),
            };
            items.push(PlannedItem::with_spec(row.email, spec));
        }
        Ok(Plan::Accept {
            subject: json!({ "ods_code": payload.ods_code }),
            plan: RolesSweepPlan {
                ods_code: payload.ods_code,
            },
            items: items.into(),
        })
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, RolesSweepPlan>,
        items: &[WorkItem<ItemSpec>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply_roles(&self.names, ctx, items).await
    }
}

fn sorted(groups: impl IntoIterator<Item = String>) -> Value {
    let mut groups: Vec<String> = groups.into_iter().collect();
    groups.sort_by_key(|g| g.to_lowercase());
    json!(groups)
}

async fn apply_roles(
    names: &GroupNames,
    ctx: &ApplyContext<'_, RolesSweepPlan>,
    items: &[WorkItem<ItemSpec>],
) -> Result<Vec<ItemResult>, EngineError> {
    let mut results = Vec::new();
    let mut findings: HashMap<i32, String> = HashMap::new();
    let mut drifted: Vec<WorkItem<ItemSpec>> = Vec::new();
    for item in items {
        let Some(holding) = item
            .spec
            .as_ref()
            .and_then(|s| s.preview.as_ref())
            .and_then(|p| p.holding.clone())
        else {
            return Err(EngineError::Corrupt(format!(
                "sweep item {} has no holding",
                item.key
            )));
        };
        // Still the role swept, and settled: otherwise a job is at work on it.
        let stored = store_roles::stored_role(ctx.pool, &item.key).await?;
        let current = match &stored {
            Some(s) if s.state == GrantState::Realised => {
                Some(roles::holding_of(ctx.pool, &s.role).await?)
            }
            _ => None,
        };
        if current.as_ref() != Some(&holding) {
            results.push(ItemResult::skipped(
                item.seq,
                FailureCode::Superseded,
                "the role changed since the sweep was planned; its job verifies it",
            ));
            continue;
        }
        let expected = holding.groups(names);
        let mut codes: BTreeSet<&str> = BTreeSet::from([ctx.plan.ods_code.as_str()]);
        codes.insert(&holding.ods_code);
        codes.extend(holding.reach.iter().map(String::as_str));
        let candidates: BTreeSet<String> = codes
            .iter()
            .flat_map(|code| {
                AdminRole::ALL
                    .iter()
                    .map(|r| names.name(*r, code).to_lowercase())
            })
            .collect();
        let user = users::read_users(
            ctx.pool,
            ctx.tenant.as_ref(),
            std::slice::from_ref(&item.key),
        )
        .await?
        .pop();
        let user = match user {
            Some(Ok(state)) => state.id,
            Some(Err(error)) => {
                results.push(ItemResult::failed(
                    item.seq,
                    failure_code(&error),
                    error.to_string(),
                ));
                continue;
            }
            None => continue,
        };
        let found: Vec<String> = match ctx.tenant.member_of(user).await {
            Ok(groups) => groups
                .into_iter()
                .map(|g| g.display_name)
                .filter(|n| candidates.contains(&n.to_lowercase()))
                .collect(),
            Err(error) => {
                results.push(ItemResult::failed(
                    item.seq,
                    failure_code(&error),
                    error.to_string(),
                ));
                continue;
            }
        };
        let lower =
            |set: &[String]| -> BTreeSet<String> { set.iter().map(|n| n.to_lowercase()).collect() };
        let want: Vec<String> = expected.iter().cloned().collect();
        if lower(&found) == lower(&want) {
            results.push(ItemResult::ok(item.seq, ItemOutcome::AlreadyCompliant));
            continue;
        }
        let finding = store::finding(sorted(found), sorted(want));
        if ctx.job.dry_run {
            results.push(ItemResult {
                seq: item.seq,
                outcome: ItemOutcome::Changed,
                code: None,
                detail: Some(finding),
            });
        } else {
            findings.insert(item.seq, finding);
            drifted.push(item.clone());
        }
    }
    if drifted.is_empty() {
        return Ok(results);
    }
    // Repair: the admin-role applier's own reads, writes and read-backs, under its user locks.
    for mut result in roles::apply(names, ctx, &drifted).await? {
        if result.outcome == ItemOutcome::Changed {
            result.detail = findings.remove(&result.seq);
        }
        results.push(result);
    }
    Ok(results)
}

/// A sweep's jobs were stored.
struct SweepStored<'a> {
    sweep: &'a str,
    mode: DriftMode,
    jobs: usize,
}

impl InternalEvent for SweepStored<'_> {
    fn emit(self) {
        tracing::info!(
            sweep = %self.sweep,
            mode = self.mode.as_str(),
            jobs = self.jobs,
            "drift sweep stored"
        );
    }
}

/// The sweep of the period of `every` (counted from 00:00 UTC) that `now` falls in, named by
/// its start.
pub fn period_start(now: DateTime<Utc>, every: Duration) -> DateTime<Utc> {
    let every = every.as_secs().max(1) as i64;
    let start = now.timestamp().div_euclid(every) * every;
    DateTime::from_timestamp(start, 0).unwrap_or(now)
}

/// Store a sweep now, named `manual-{time}` (`policy-reconciler drift sweep`): its jobs still
/// wait for an off-peak window (`jobs expedite` runs one at once). Returns the message ids.
pub async fn sweep_now(
    pool: &sqlx::PgPool,
    settings: &DriftSettings,
    mode: Option<DriftMode>,
) -> Result<Vec<String>, EngineError> {
    let mode = mode.unwrap_or(settings.mode);
    let sweep = format!(
        "manual-{}",
        Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
    );
    let stored = store::store_sweep(
        pool,
        &sweep,
        mode == DriftMode::Report,
        settings.items_max.get(),
        None,
    )
    .await?;
    emit(SweepStored {
        sweep: &sweep,
        mode,
        jobs: stored.len(),
    });
    Ok(stored)
}

impl Engine {
    /// Stores the sweep of the current `engine.drift.every_hours` period once an off-peak
    /// window is open in it (checked every minute; every replica may, the jobs' message ids
    /// make it one sweep). Policies changed since the period began are left to the next one:
    /// their own jobs have just verified them.
    pub(super) async fn drift_loop(self: Arc<Self>, shutdown: CancellationToken) {
        if !self.settings.drift.enabled {
            return;
        }
        loop {
            if let Err(error) = self.sweep_if_due().await {
                tracing::warn!(%error, "storing the drift sweep failed; trying again later");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_secs(60)) => {}
            }
        }
    }

    async fn sweep_if_due(&self) -> Result<(), EngineError> {
        let settings = &self.settings.drift;
        let now = self.clock.now();
        if !self.off_peak.is_open(now) {
            return Ok(());
        }
        let start = period_start(now, settings.period());
        let sweep = start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let stored = store::store_sweep(
            &self.pool,
            &sweep,
            settings.mode == DriftMode::Report,
            settings.items_max.get(),
            Some(start),
        )
        .await?;
        if !stored.is_empty() {
            emit(SweepStored {
                sweep: &sweep,
                mode: settings.mode,
                jobs: stored.len(),
            });
            self.jobs_stored.wake();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_counted_from_midnight_utc() {
        let at = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        let day = Duration::from_secs(24 * 3600);
        assert_eq!(
            period_start(at("2026-11-28T22:15:00Z"), day),
            at("2026-11-28T00:00:00Z")
        );
        let six = Duration::from_secs(6 * 3600);
        assert_eq!(
            period_start(at("2026-11-28T13:59:59Z"), six),
            at("2026-11-28T12:00:00Z")
        );
    }
}

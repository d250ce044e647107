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
//! (the same rule as the policy applier's). A member that differs is read again once
//! replication has had time (`engine.verify_within_ms` after the first sighting, the chunk
//! handed back meanwhile: `Sighting`): a replica behind a recent write answers with an older
//! state, which is neither drift nor what to report. A member that still differs is drift: its
//! item records what that read found and what was expected. In `repair` mode the drifted
//! members are then handed to the policy applier (write, read back, verify), their findings
//! stored first (a repair whose read-back waits for replication is finished by a later claim);
//! in `report` mode the job is a dry run and writes nothing.
//!
//! When the job completes, the store publishes one `drift.detected` if any
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

use super::clock::Clock;
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
use crate::tenant::{AssignedLicence, SkuCatalogue, TenantError, UserLicenceState};

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

    // Members found drifted by an earlier claim of this chunk go straight back to their repair.
    let mut round = Round::begin(ctx, checked.iter().map(|i| i.seq)).await?;
    let checked: Vec<&WorkItem<()>> = checked
        .into_iter()
        .filter(|i| !round.repairing(i))
        .collect();
    let states = read(ctx, &checked).await?;
    for (item, state) in checked.iter().zip(states) {
        let state = match state {
            Err(error) => {
                results.push(failed(item.seq, &error));
                continue;
            }
            Ok(state) if policy::change_for(&state, &desired, &managed).is_none() => {
                results.push(ItemResult::ok(item.seq, ItemOutcome::AlreadyCompliant));
                continue;
            }
            Ok(state) => state,
        };
        round.differs(ctx, item, &mut results, || {
            let held: Vec<&AssignedLicence> = state
                .assigned_licenses
                .iter()
                .filter(|l| managed.contains(&l.sku_id))
                .collect();
            store::finding(describe(&held, &catalogue), expected.clone())
        });
    }
    let (drifted, findings) = round.finish(ctx).await?;
    if drifted.is_empty() {
        return Ok(results);
    }
    // Repair: the policy applier's own read, write and read-back (it reads the user again: a
    // write is never planned from a read it did not make itself).
    for result in policy::apply(ctx, &drifted).await? {
        results.push(with_finding(result, &findings));
    }
    Ok(results)
}

/// A repaired item's result with what the sweep found as its detail. One found compliant by
/// a later claim (the repair written by an earlier one) keeps no detail: `drift.detected`
/// takes its finding from the notes (`store::publish_detected`).
fn with_finding(mut result: ItemResult, findings: &HashMap<i32, String>) -> ItemResult {
    if result.outcome == ItemOutcome::Changed
        && let Some(finding) = findings.get(&result.seq)
    {
        result.detail = Some(finding.clone());
    }
    result
}

/// One round of a sweep, for either kind: which items go to repair and with what finding.
struct Round<S> {
    sighting: Sighting,
    notes: HashMap<i32, store::Note>,
    /// What was found of the items to repair: noted by earlier claims, or found now.
    findings: HashMap<i32, String>,
    /// Of those, found now (to be noted).
    found_now: HashMap<i32, String>,
    drifted: Vec<WorkItem<S>>,
}

impl<S: Clone> Round<S> {
    /// The round of the items `seqs`, with what earlier claims noted of them.
    async fn begin<P>(
        ctx: &ApplyContext<'_, P>,
        seqs: impl Iterator<Item = i32>,
    ) -> Result<Self, EngineError> {
        let seqs: Vec<i32> = seqs.collect();
        let notes = store::notes(ctx.pool, ctx.job.id, &seqs, ctx.retry.verify_within()).await?;
        let findings = notes
            .iter()
            .filter_map(|(seq, n)| n.finding.clone().map(|f| (*seq, f)))
            .collect();
        Ok(Self {
            sighting: Sighting::new(ctx),
            notes,
            findings,
            found_now: HashMap::new(),
            drifted: Vec::new(),
        })
    }

    /// Whether an earlier claim found `item` drifted: it then goes straight to its repair,
    /// unread here.
    fn repairing(&mut self, item: &WorkItem<S>) -> bool {
        let noted = self.findings.contains_key(&item.seq);
        if noted {
            self.drifted.push(item.clone());
        }
        noted
    }

    /// A read of `item` differs from what is expected (`finding` describes it): once trusted
    /// ([`Sighting`]), drift, reported at once in a dry run and otherwise repaired; until then
    /// the item is left without a result.
    fn differs<P>(
        &mut self,
        ctx: &ApplyContext<'_, P>,
        item: &WorkItem<S>,
        results: &mut Vec<ItemResult>,
        finding: impl FnOnce() -> String,
    ) {
        if !self.sighting.trusted(item.seq, self.notes.get(&item.seq)) {
            return;
        }
        let finding = finding();
        if ctx.job.dry_run {
            results.push(ItemResult {
                seq: item.seq,
                outcome: ItemOutcome::Changed,
                code: None,
                detail: Some(finding),
            });
        } else {
            self.found_now.insert(item.seq, finding);
            self.drifted.push(item.clone());
        }
    }

    /// Hands the chunk back for the differences not trusted yet, notes what was found now,
    /// and returns the items to repair with every finding.
    async fn finish<P>(
        mut self,
        ctx: &ApplyContext<'_, P>,
    ) -> Result<(Vec<WorkItem<S>>, HashMap<i32, String>), EngineError> {
        self.sighting.hand_back(ctx).await?;
        if !self.found_now.is_empty() {
            store::found(ctx.pool, ctx.job.id, &self.found_now).await?;
            self.findings.extend(self.found_now);
        }
        Ok((self.drifted, self.findings))
    }
}

/// The differences one round of a sweep read, and whether each can be trusted yet.
///
/// A read may come from a replica behind a recent write (ours or anyone's): it shows an older
/// state, which is neither drift nor what to report as found. So a difference counts only when
/// a read made `engine.verify_within_ms` (how long after a write reads may still not show it;
/// MicrosoftDocs/entra-docs `docs/architecture/architecture.md`, "Data consistency") after it
/// was first seen still shows it: by then every replica has every write made before the first
/// sighting. Meanwhile the item keeps no result and the chunk is handed back ([`Defer`]), so a
/// sweep holds no executor while it waits; the first sighting is noted in the store, for
/// whichever claim comes back, and timed by the database's clock (which every replica shares).
///
/// [`Defer`]: super::kind::Defer
struct Sighting {
    /// `engine.verify_within_ms`.
    window: Duration,
    /// Seen differing for the first time.
    new: Vec<i32>,
    /// The shortest wait until a difference seen can be trusted.
    wait: Option<Duration>,
}

impl Sighting {
    fn new<P>(ctx: &ApplyContext<'_, P>) -> Self {
        Self::with_window(ctx.retry.verify_within())
    }

    fn with_window(window: Duration) -> Self {
        Self {
            window,
            new: Vec::new(),
            wait: None,
        }
    }

    /// Whether the difference the item `seq` shows now is drift (see the type's docs); when
    /// not, the item is to be left without a result. `note` was read before the item.
    fn trusted(&mut self, seq: i32, note: Option<&store::Note>) -> bool {
        let remaining = match note {
            Some(note) if note.remaining.is_zero() => return true,
            Some(note) => note.remaining,
            None => {
                self.new.push(seq);
                self.window
            }
        };
        self.wait = Some(self.wait.map_or(remaining, |w| w.min(remaining)));
        false
    }

    /// Notes the new sightings (by the database's clock, after their reads) and hands the
    /// chunk back for the items left without a result.
    async fn hand_back<P>(&self, ctx: &ApplyContext<'_, P>) -> Result<(), EngineError> {
        if !self.new.is_empty() {
            store::suspect(ctx.pool, ctx.job.id, &self.new).await?;
        }
        if let Some(wait) = self.wait {
            ctx.defer.later(wait.max(MIN_COME_BACK));
        }
        Ok(())
    }
}

/// The shortest wait before a chunk handed back for differences comes back.
const MIN_COME_BACK: Duration = Duration::from_millis(200);

/// The members `items` as the tenant has them now.
async fn read<P>(
    ctx: &ApplyContext<'_, P>,
    items: &[&WorkItem<()>],
) -> Result<Vec<Result<UserLicenceState, TenantError>>, EngineError> {
    let keys: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    users::read_users(ctx.pool, ctx.tenant.as_ref(), &keys).await
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
    // Holders still of the role swept: (item, the groups they should be in, the Phone System
    // groups looked at).
    let mut checked: Vec<(&WorkItem<ItemSpec>, BTreeSet<String>, BTreeSet<String>)> = Vec::new();
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
        checked.push((item, expected.into_iter().collect(), candidates));
    }
    // As for policies: holders found drifted by an earlier claim go straight to their repair,
    // and a difference counts once a read made after replication has had time shows it
    // ([`Sighting`]).
    let mut round = Round::begin(ctx, checked.iter().map(|(i, ..)| i.seq)).await?;
    for (item, expected, candidates) in checked {
        if round.repairing(item) {
            continue;
        }
        let found = match held_groups(ctx, &item.key, &candidates).await? {
            Err(error) => {
                results.push(failed(item.seq, &error));
                continue;
            }
            Ok(found) if same_groups(&found, &expected) => {
                results.push(ItemResult::ok(item.seq, ItemOutcome::AlreadyCompliant));
                continue;
            }
            Ok(found) => found,
        };
        round.differs(ctx, item, &mut results, || {
            store::finding(sorted(found), sorted(expected))
        });
    }
    let (drifted, findings) = round.finish(ctx).await?;
    if drifted.is_empty() {
        return Ok(results);
    }
    // Repair: the admin-role applier's own reads, writes and read-backs, under its user locks.
    for result in roles::apply(names, ctx, &drifted).await? {
        results.push(with_finding(result, &findings));
    }
    Ok(results)
}

/// The Phone System groups among `candidates` (lowercase names) that the user `address` is a
/// member of, as the tenant answers now.
async fn held_groups(
    ctx: &ApplyContext<'_, RolesSweepPlan>,
    address: &str,
    candidates: &BTreeSet<String>,
) -> Result<Result<Vec<String>, TenantError>, EngineError> {
    let user = users::read_users(ctx.pool, ctx.tenant.as_ref(), &[address.to_owned()])
        .await?
        .pop();
    let user = match user {
        Some(Ok(state)) => state.id,
        Some(Err(error)) => return Ok(Err(error)),
        None => {
            return Err(EngineError::Corrupt(format!(
                "no answer when reading user {address}"
            )));
        }
    };
    Ok(match ctx.tenant.member_of(user).await {
        Ok(groups) => Ok(groups
            .into_iter()
            .map(|g| g.display_name)
            .filter(|n| candidates.contains(&n.to_lowercase()))
            .collect()),
        Err(error) => Err(error),
    })
}

/// The result of an item whose read failed.
fn failed(seq: i32, error: &TenantError) -> ItemResult {
    ItemResult::failed(seq, failure_code(error), error.to_string())
}

/// Whether the groups found are those expected (group names are compared case-insensitively,
/// as Entra ID does).
fn same_groups(found: &[String], expected: &BTreeSet<String>) -> bool {
    let lower = |names: Vec<&String>| -> BTreeSet<String> {
        names.into_iter().map(|n| n.to_lowercase()).collect()
    };
    lower(found.iter().collect()) == lower(expected.iter().collect())
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
    clock: &dyn Clock,
) -> Result<Vec<String>, EngineError> {
    let mode = mode.unwrap_or(settings.mode);
    let sweep = format!(
        "manual-{}",
        clock
            .now()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
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
    fn a_difference_counts_once_replication_has_had_time_since_it_was_first_seen() {
        let mut sighting = Sighting::with_window(Duration::from_secs(60));
        let note = |remaining: u64| store::Note {
            remaining: Duration::from_secs(remaining),
            finding: None,
        };
        // First seen now: noted, not trusted, back after the whole window.
        assert!(!sighting.trusted(1, None));
        assert_eq!(sighting.new, vec![1]);
        assert_eq!(sighting.wait, Some(Duration::from_secs(60)));
        // Seen 45 s ago: 15 s to go, the shortest wait wins.
        assert!(!sighting.trusted(2, Some(&note(15))));
        assert_eq!(sighting.wait, Some(Duration::from_secs(15)));
        // Seen a window ago or more: the read now is trusted.
        assert!(sighting.trusted(3, Some(&note(0))));
        assert_eq!(sighting.new, vec![1]);
        assert_eq!(sighting.wait, Some(Duration::from_secs(15)));
    }

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

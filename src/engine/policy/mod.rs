//! User policies: `policy.changed` and `policy.members_added`.
//!
//! Desired state: every member of a policy holds exactly the policy's licence, with every
//! plan the policy's toggles do not set `true` disabled, and no licence of another policy
//! (a move is one `assignLicense` that adds the new and removes the old, so the user never
//! goes without service). Licences no policy assigns are left alone.
//!
//! The applier reads the *current* definition and membership at apply time, not the ones of
//! plan time: two jobs for the same policy therefore always apply the same (newest) state,
//! an item whose user has since moved to another policy is skipped as `superseded`, and a job
//! with an older version resolves its ticket once the newer definition holds. Dry runs apply
//! the definition snapshotted in the plan, as they write no desired state.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::events::JobCompleted;
use super::kind::{
    ApplyContext, ItemOutcome, ItemResult, JobKind, Plan, PlanContext, PlannedItems, WorkItem,
};
use super::licensing;
use super::retry::ItemRetry;
use super::users;
use super::{EngineError, failure_code};
use crate::domain::{
    EmailAddress, Failure, FailureCode, JobType, MAX_FAILURES_LISTED, MembersAdded, OdsCode,
    PolicyChanged,
};
use crate::store::licensing as store_licensing;
use crate::store::policies::{self, PolicyRow};
use crate::store::users as store_users;
use crate::store::work;
use crate::telemetry::emit;
use crate::tenant::{
    AssignedLicence, LicenceChange, SkuCatalogue, TenantError, UserLicenceState, UserRef, waits,
};

/// What both policy jobs hand their applier: the definition to reconcile members to.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyPlan {
    /// The definition as planned (the applier reads the current one; dry runs apply this).
    pub policy: PolicyRow,
    /// The job carried an older version than the one stored.
    pub stale: bool,
    /// The service plans of the policy's licence as the planner saw them: an applier whose
    /// cached catalogue lacks one (a plan the vendor added since) reads it afresh
    /// ([`licensing::fresh_catalogue`]).
    #[serde(default)]
    pub sku_plans: Vec<Uuid>,
}

/// `policy.changed`: a new definition, and optionally the whole membership.
pub struct PolicyChangedKind;

#[async_trait]
impl JobKind for PolicyChangedKind {
    type Payload = PolicyChanged;
    type Plan = PolicyPlan;
    type Spec = ();
    const JOB_TYPE: JobType = JobType::PolicyChanged;
    const LIST_LEFT_IN_DATABASE: Option<&'static str> = Some("members");

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: PolicyChanged,
    ) -> Result<Plan<PolicyPlan, ()>, EngineError> {
        plan_changed(ctx, payload).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, PolicyPlan>,
        items: &[WorkItem<()>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply(ctx, items).await
    }
}

/// `policy.members_added`: members added to a stored policy.
pub struct MembersAddedKind;

#[async_trait]
impl JobKind for MembersAddedKind {
    type Payload = MembersAdded;
    type Plan = PolicyPlan;
    type Spec = ();
    const JOB_TYPE: JobType = JobType::PolicyMembersAdded;
    const LIST_LEFT_IN_DATABASE: Option<&'static str> = Some("members");

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: MembersAdded,
    ) -> Result<Plan<PolicyPlan, ()>, EngineError> {
        plan_members_added(ctx, payload).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, PolicyPlan>,
        items: &[WorkItem<()>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply(ctx, items).await
    }
}

fn subject(policy: &PolicyRow, job_version: i64) -> Value {
    let mut subject = json!({
        "policy_id": policy.id,
        "policy_name": policy.name,
        "version": job_version,
    });
    if policy.version != job_version {
        subject["applied_version"] = json!(policy.version);
    }
    subject
}

/// Check the job's member list where it is stored (it is never held whole here: a policy
/// may have 200,000 members): well-formed, unique emails, and `total` equal to their number.
/// Leaves the list staged ([`policies::STAGED_MEMBERS`]) for storing and as the plan's
/// items. Returns how many are listed, and the failures in list order, at most as many as
/// `job.completed` lists (plus one, so that it says the list was cut).
async fn check_members(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job_id: Uuid,
    total: Option<u64>,
) -> Result<(u64, Vec<Failure>), EngineError> {
    let listed = policies::stage_members(tx, job_id).await?;
    let limit = MAX_FAILURES_LISTED + 1;
    let mut failures: Vec<(i32, Failure)> = Vec::new();
    let (mut seqs, mut emails) = (Vec::new(), Vec::new());
    // Addresses PostgreSQL could not pass as plain: the domain's rule decides.
    for (seq, raw) in policies::unusual_members(tx).await? {
        match EmailAddress::parse(&raw) {
            Ok(email) => {
                seqs.push(seq);
                emails.push(email.as_str().to_owned());
            }
            Err(detail) if failures.len() < limit => failures.push((
                seq,
                Failure {
                    item: raw,
                    code: FailureCode::InvalidEmail,
                    detail,
                },
            )),
            Err(_) => {}
        }
    }
    policies::set_staged_emails(tx, &seqs, &emails).await?;
    for (seq, email) in policies::repeated_members(tx, limit as i64).await? {
        failures.push((
            seq,
            Failure {
                item: email,
                code: FailureCode::DuplicateEmail,
                detail: "listed more than once".into(),
            },
        ));
    }
    failures.sort_by_key(|(seq, _)| *seq);
    failures.truncate(limit);
    let mut failures: Vec<Failure> = failures.into_iter().map(|(_, f)| f).collect();
    if let Some(total) = total
        && total != listed as u64
    {
        failures.push(Failure {
            item: "total_members".into(),
            code: FailureCode::MemberCountMismatch,
            detail: format!("total_members is {total} but {listed} members are listed"),
        });
    }
    Ok((listed as u64, failures))
}

/// Check a definition against the tenant's catalogue.
fn check_definition(policy: &PolicyRow, catalogue: &SkuCatalogue) -> Vec<Failure> {
    let mut failures = Vec::new();
    if let Err(detail) = OdsCode::parse(&policy.ods_code) {
        failures.push(Failure {
            item: policy.id.clone(),
            code: FailureCode::InvalidMessage,
            detail,
        });
    }
    if policy.id.trim().is_empty() {
        failures.push(Failure {
            item: "policy.id".into(),
            code: FailureCode::InvalidMessage,
            detail: "policy id is empty".into(),
        });
    }
    match catalogue.by_part_number(&policy.licence) {
        Err(_) => failures.push(Failure {
            item: policy.licence.clone(),
            code: FailureCode::UnknownLicence,
            detail: format!("the tenant has no licence {}", policy.licence),
        }),
        Ok(sku) => {
            for name in policy.toggles.keys() {
                if sku.plan_id(name).is_none() {
                    failures.push(Failure {
                        item: name.clone(),
                        code: FailureCode::UnknownServicePlan,
                        detail: format!("{} has no service plan {name}", policy.licence),
                    });
                }
            }
        }
    }
    failures
}

async fn plan_changed(
    mut ctx: PlanContext<'_, '_>,
    payload: PolicyChanged,
) -> Result<Plan<PolicyPlan, ()>, EngineError> {
    let def = &payload.policy;
    let incoming = PolicyRow {
        id: def.id.clone(),
        name: def.name.clone(),
        ods_code: def.ods_code.clone(),
        version: def.version,
        licence: def.licence.clone(),
        toggles: def.toggles.clone(),
    };
    let job_subject = subject(&incoming, def.version);
    // A re-verification after a plan was added reads the catalogue afresh: this replica's
    // cache may predate the plan.
    let catalogue = if licensing::is_reverification(&ctx.job.message_id) {
        ctx.tenant.refresh_skus().await?
    } else {
        ctx.tenant.skus().await?
    };
    let mut failures = check_definition(&incoming, &catalogue);
    if let Ok(sku) = catalogue.by_part_number(&incoming.licence) {
        failures.extend(licensing::dependency_failures(
            &incoming,
            sku,
            &ctx.settings.licensing.plan_dependencies,
        ));
    }
    // The payload's list was left in the database (an empty list here means "given").
    let listed = payload.members.is_some();
    let mut listed_count = 0;
    if listed {
        let (count, member_failures) =
            check_members(ctx.tx, ctx.job.id, payload.total_members).await?;
        listed_count = count;
        failures.extend(member_failures);
    }
    if !failures.is_empty() {
        return Ok(Plan::Reject {
            subject: Some(job_subject),
            failures,
        });
    }

    policies::lock(ctx.tx, &incoming.id).await?;
    let stored = policies::get(ctx.tx, &incoming.id).await?;
    let stale = stored
        .as_ref()
        .is_some_and(|s| s.version > incoming.version);
    let definition = if stale {
        stored.clone().expect("stale implies stored")
    } else {
        incoming.clone()
    };
    // Seats: before any desired state changes (the count compares with the stored policies).
    if !stale {
        let needed = if listed {
            store_licensing::staged_needing_seat(ctx.tx, &incoming.licence).await?
        } else {
            store_licensing::stored_needing_seat(ctx.tx, &incoming.id, &incoming.licence).await?
        };
        if let Some(failure) = licensing::check_seats(&mut ctx, &incoming.licence, needed).await? {
            return Ok(Plan::Reject {
                subject: Some(job_subject),
                failures: vec![failure],
            });
        }
    }
    // The guard rail's count, before any desired state changes (an older version changes
    // nothing).
    if !stale {
        *ctx.effect = Some(policies::change_effect(ctx.tx, &incoming, listed).await?);
    }
    let items = match (listed, stale) {
        // The list given is the whole membership: it is what the items are (no re-read).
        (true, false) => {
            if !ctx.job.dry_run {
                policies::upsert(ctx.tx, &incoming, ctx.job.id).await?;
                policies::store_staged_members(ctx.tx, &incoming.id, true).await?;
                supersede_older_jobs(&mut *ctx.tx, &incoming, ctx.job.id).await?;
            }
            PlannedItems::Staged {
                table: policies::STAGED_MEMBERS,
                count: listed_count,
            }
        }
        (false, false) => {
            if !ctx.job.dry_run {
                policies::upsert(ctx.tx, &incoming, ctx.job.id).await?;
                supersede_older_jobs(&mut *ctx.tx, &incoming, ctx.job.id).await?;
            }
            stored_members(ctx.tx, &incoming.id).await?
        }
        (_, true) => stored_members(ctx.tx, &incoming.id).await?,
    };
    if stale {
        tracing::info!(
            job_version = incoming.version,
            stored_version = definition.version,
            "older version: no definition change; members verified against the newer one"
        );
    }
    Ok(Plan::Accept {
        subject: subject(&definition, def.version),
        plan: PolicyPlan {
            sku_plans: licensing::plans_of(&catalogue, &definition.licence),
            policy: definition,
            stale,
        },
        items,
    })
}

/// The policy's stored members as the plan's items.
async fn stored_members(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    policy_id: &str,
) -> Result<PlannedItems<()>, EngineError> {
    let count = policies::stage_items_of_policy(tx, policy_id).await?;
    Ok(PlannedItems::Staged {
        table: work::PLANNED_ITEMS,
        count,
    })
}

/// End the remaining work of older unfinished jobs of this policy: this job reconciles every
/// member to the newer definition, so their open items are skipped (`superseded`) and they
/// complete now, resolving their tickets; no user is written again for a stale definition.
async fn supersede_older_jobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    policy: &PolicyRow,
    job_id: Uuid,
) -> Result<(), EngineError> {
    let reason = format!(
        "superseded by version {} of policy {}",
        policy.version, policy.id
    );
    for older in work::older_policy_jobs(tx, &policy.id, policy.version, job_id).await? {
        let ended =
            work::end_early_in(tx, older, FailureCode::Superseded, &reason, Some(job_id)).await?;
        if let Some((job_type, outcome, counts)) = work::complete_if_done_in(tx, older).await? {
            emit(JobCompleted {
                job_id: older,
                job_type,
                outcome,
                counts: &counts,
                failures: 0,
            });
        }
        tracing::info!(
            %older,
            skipped = ended.items_skipped,
            chunks_running = ended.chunks_running,
            "older job superseded"
        );
    }
    Ok(())
}

async fn plan_members_added(
    mut ctx: PlanContext<'_, '_>,
    payload: MembersAdded,
) -> Result<Plan<PolicyPlan, ()>, EngineError> {
    let (count, failures) = check_members(ctx.tx, ctx.job.id, Some(payload.total_members)).await?;
    policies::lock(ctx.tx, &payload.policy_id).await?;
    let Some(policy) = policies::get(ctx.tx, &payload.policy_id).await? else {
        let deadline = ctx.job.received_at
            + chrono::Duration::seconds(ctx.settings.unknown_policy_wait_seconds as i64);
        let now = ctx.clock.now();
        if now < deadline {
            tracing::info!(policy_id = %payload.policy_id, "policy not known yet; waiting");
            let recheck = (now + chrono::Duration::seconds(1)).min(deadline);
            return Ok(Plan::Wait { until: recheck });
        }
        return Ok(Plan::Fail {
            subject: Some(json!({ "policy_id": payload.policy_id })),
            failures: vec![Failure {
                item: payload.policy_id.clone(),
                code: FailureCode::UnknownPolicy,
                detail: format!(
                    "no definition of policy {} arrived within {} s",
                    payload.policy_id, ctx.settings.unknown_policy_wait_seconds
                ),
            }],
        });
    };
    let job_subject = subject(&policy, policy.version);
    if !failures.is_empty() {
        return Ok(Plan::Reject {
            subject: Some(job_subject),
            failures,
        });
    }
    let needed = store_licensing::staged_needing_seat(ctx.tx, &policy.licence).await?;
    if let Some(failure) = licensing::check_seats(&mut ctx, &policy.licence, needed).await? {
        return Ok(Plan::Reject {
            subject: Some(job_subject),
            failures: vec![failure],
        });
    }
    if !ctx.job.dry_run {
        policies::store_staged_members(ctx.tx, &policy.id, false).await?;
    }
    let sku_plans = licensing::plans_of(&*ctx.tenant.skus().await?, &policy.licence);
    Ok(Plan::Accept {
        subject: job_subject,
        plan: PolicyPlan {
            policy,
            stale: false,
            sku_plans,
        },
        items: PlannedItems::Staged {
            table: policies::STAGED_MEMBERS,
            count,
        },
    })
}

/// What a revert restores of a user (`job_item_before_images.image`): their object id and
/// the licences assigned directly, with their disabled plans, as read before a write.
pub fn before_image(state: &UserLicenceState) -> Value {
    json!({ "user_id": state.id, "licences": state.assigned_licenses })
}

/// The licence change that brings `state` to `desired` (None when it already holds):
/// add the policy's licence with its disabled plans unless held exactly so, and remove every
/// other policy-managed licence the user holds, in the same call.
pub(crate) fn change_for(
    state: &UserLicenceState,
    desired: &AssignedLicence,
    managed: &HashSet<Uuid>,
) -> Option<LicenceChange> {
    let wanted = LicenceChange {
        user: UserRef::Id(state.id),
        add: vec![desired.clone()],
        remove: vec![],
    };
    let add_needed = !wanted.is_satisfied_by(state);
    let remove: Vec<Uuid> = state
        .assigned_licenses
        .iter()
        .map(|l| l.sku_id)
        .filter(|sku| *sku != desired.sku_id && managed.contains(sku))
        .collect();
    if !add_needed && remove.is_empty() {
        return None;
    }
    Some(LicenceChange {
        user: UserRef::Id(state.id),
        add: vec![desired.clone()],
        remove,
    })
}

/// Where an item stands within one claim of its chunk.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// The last read is trusted: write what differs.
    Write,
    /// A write was made at `since` (accepted by Graph, or `uncertain`: it failed in a way that
    /// may have been applied, or was refused because the read it was planned from was stale).
    /// Re-read until it shows, for at most the verify window (see [`crate::engine::retry`]).
    Verify { since: Instant, uncertain: bool },
}

/// Reconcile a round of members (see the module docs), under the item retry policy: read the
/// users, write what differs in one batch, then re-read what was written until the tenant
/// shows it: never sending a write again because a replica has not caught up with it.
pub(crate) async fn apply(
    ctx: &ApplyContext<'_, PolicyPlan>,
    items: &[WorkItem<()>],
) -> Result<Vec<ItemResult>, EngineError> {
    let snapshot = &ctx.plan.policy;
    let catalogue =
        licensing::fresh_catalogue(ctx.tenant.as_ref(), &snapshot.licence, &ctx.plan.sku_plans)
            .await?;

    // The desired definition of each item, read now (see the module docs).
    let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
    let mut desired: Vec<Option<AssignedLicence>> = vec![None; items.len()];
    // The desired state (two reads, on two connections) and the users' current state (the
    // first round's read) at once: they are on every chunk's path, and independent.
    let addresses: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    let (desired_state, first_read) = tokio::join!(
        async {
            tokio::try_join!(
                async {
                    // A dry run applies the planned definition: no membership to read.
                    if ctx.job.dry_run || addresses.is_empty() {
                        Ok(vec![])
                    } else {
                        policies::memberships(ctx.pool, &addresses).await
                    }
                },
                policies::managed_licences(ctx.pool)
            )
        },
        async {
            let keys: Vec<String> = addresses.iter().map(|a| a.to_lowercase()).collect();
            tokio::try_join!(
                waits::return_early(users::read_users(ctx.pool, ctx.tenant.as_ref(), &addresses)),
                async {
                    store_users::recent_writes(ctx.pool, &keys, ctx.retry.verify_within())
                        .await
                        .map_err(EngineError::from)
                }
            )
        }
    );
    let (current, managed_parts) = desired_state?;
    let (first_read, recent_writes) = first_read?;
    // Re-reads go by object id (the address may not be the user principal name).
    let mut ids: Vec<Option<Uuid>> = first_read
        .iter()
        .map(|r| r.as_ref().ok().map(|u| u.id))
        .collect();
    let mut first_read: Vec<Option<Result<UserLicenceState, TenantError>>> =
        first_read.into_iter().map(Some).collect();
    let current: HashMap<String, PolicyRow> = current.into_iter().collect();
    let mut assignments: HashMap<(String, i64), Result<AssignedLicence, TenantError>> =
        HashMap::new();
    for (i, item) in items.iter().enumerate() {
        let policy = if ctx.job.dry_run {
            snapshot
        } else {
            match current.get(&item.key) {
                Some(policy) if policy.id == snapshot.id => policy,
                Some(other) => {
                    results[i] = Some(ItemResult::skipped(
                        item.seq,
                        FailureCode::Superseded,
                        format!("now a member of policy {}", other.id),
                    ));
                    continue;
                }
                None => {
                    results[i] = Some(ItemResult::skipped(
                        item.seq,
                        FailureCode::Superseded,
                        format!("no longer a member of policy {}", snapshot.id),
                    ));
                    continue;
                }
            }
        };
        let assignment = assignments
            .entry((policy.id.clone(), policy.version))
            .or_insert_with(|| catalogue.assignment(&policy.licence, &policy.toggles));
        match assignment {
            Ok(licence) => desired[i] = Some(licence.clone()),
            Err(error) => {
                results[i] = Some(ItemResult::failed(
                    item.seq,
                    failure_code(error),
                    error.to_string(),
                ));
            }
        }
    }
    let mut managed: HashSet<Uuid> = managed_parts
        .iter()
        .chain(std::iter::once(&snapshot.licence))
        .filter_map(|part| catalogue.by_part_number(part).ok().map(|sku| sku.sku_id))
        .collect();
    managed.extend(desired.iter().flatten().map(|d| d.sku_id));

    // Rounds: read the open items, write what differs for those whose read is trusted, and
    // re-read the written ones until they show (or their window passes).
    let mut pending: Vec<usize> = (0..items.len()).filter(|&i| results[i].is_none()).collect();
    let mut phase: Vec<Phase> = vec![Phase::Write; items.len()];
    let mut writes_sent: Vec<u32> = vec![0; items.len()];
    let mut read_failures: Vec<u32> = vec![0; items.len()];
    let mut suspected_stale: Vec<bool> = vec![false; items.len()];
    let mut last_error: HashMap<usize, TenantError> = HashMap::new();
    // What a group's licence keeps direct assignment from reaching, per item (`licensing`).
    let mut unreachable: Vec<Option<licensing::Unreachable>> = vec![None; items.len()];
    let mut group_names: HashMap<Uuid, String> = HashMap::new();
    let attempts = ctx.retry.attempts();
    let window = ctx.retry.verify_within();
    let resend_after = ctx.retry.resend_after();
    // Items waiting for a write another claim or job recorded (see `written_recently`).
    let mut remembered: Vec<bool> = vec![false; items.len()];
    // Reads that failed while the rest of their call was answered, handed back to be sent
    // again after Graph's `Retry-After` (see `tenant::waits`): not before `not_before`, and
    // for no longer than the window from the first such failure in a row (then they count as
    // read failures, as if the call had waited).
    let mut not_before: Vec<Option<Instant>> = vec![None; items.len()];
    let mut postponed_since: Vec<Option<Instant>> = vec![None; items.len()];
    let mut round: u32 = 0;
    // Pause before a round only when it has nothing to write: a first read-back right after a
    // write costs one read and, on a caught-up replica, settles the item at once.
    let mut pause_before = false;
    while !pending.is_empty() && !ctx.cancel.is_cancelled() {
        if pause_before {
            round += 1;
            if !ctx.retry.wait(round, ctx.cancel).await {
                break;
            }
        }
        // Items still waiting out a `Retry-After` sit this round out.
        let started = Instant::now();
        let (ready, waiting): (Vec<usize>, Vec<usize>) = pending
            .iter()
            .partition(|&&i| not_before[i].is_none_or(|t| t <= started));
        if ready.is_empty() {
            let until = waiting.iter().filter_map(|&i| not_before[i]).min();
            let wait = until.map_or_else(Default::default, |t| t - started);
            tokio::select! {
                _ = ctx.cancel.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
            pause_before = false;
            continue;
        }
        let states: Vec<Result<UserLicenceState, TenantError>> =
            if ready.iter().all(|&i| first_read[i].is_some()) {
                ready
                    .iter()
                    .map(|&i| first_read[i].take().expect("checked above"))
                    .collect()
            } else {
                read_again(ctx, items, &ready, &mut ids).await?
            };
        let now = Instant::now();
        let mut keep = waiting;
        let mut writes: Vec<(usize, LicenceChange)> = Vec::new();
        // What each written user held before (recorded with the write's intent): a revert
        // restores it.
        let mut before: Vec<(i32, String, Value)> = Vec::new();
        for (&i, state) in ready.iter().zip(states) {
            let seq = items[i].seq;
            not_before[i] = None;
            let postponed_for = match &state {
                Err(TenantError::Postponed { .. }) => now - *postponed_since[i].get_or_insert(now),
                _ => {
                    postponed_since[i] = None;
                    std::time::Duration::ZERO
                }
            };
            match state {
                Err(TenantError::Postponed { after, error }) if postponed_for < window => {
                    not_before[i] = Some(now + after);
                    last_error.insert(i, *error);
                    keep.push(i);
                }
                Err(error) if ItemRetry::is_retryable(&error) => {
                    read_failures[i] += 1;
                    let in_window =
                        matches!(phase[i], Phase::Verify { since, .. } if now < since + window);
                    if read_failures[i] >= attempts && !in_window {
                        results[i] = Some(ItemRetry::exhausted(
                            seq,
                            Some(error),
                            "the tenant kept failing",
                        ));
                    } else {
                        last_error.insert(i, error);
                        keep.push(i);
                    }
                }
                Err(error) => {
                    results[i] = Some(ItemResult::failed(
                        seq,
                        failure_code(&error),
                        error.to_string(),
                    ));
                }
                Ok(mut state) => {
                    read_failures[i] = 0;
                    let want = desired[i]
                        .as_ref()
                        .expect("pending items have a desired licence");
                    // A licence of another policy that this service wrote moments ago and the
                    // read does not show yet (a replica behind): the user holds it, so a move
                    // must remove it in the same call.
                    if matches!(phase[i], Phase::Write)
                        && let Some(other) = other_recent_write(&recent_writes, &items[i].key, want)
                        && state.licence(other.sku_id).is_none()
                    {
                        state.assigned_licenses.push(other);
                    }
                    unreachable[i] = licensing::unreachable(&state, want, &managed, &catalogue);
                    let Some(change) = change_for(&state, want, &managed) else {
                        // The direct assignment holds; what a group's licence keeps it from
                        // reaching is reported, not written again.
                        if let Some(u) = unreachable[i].take() {
                            let detail = u
                                .detail_naming_groups(ctx.tenant.as_ref(), &mut group_names)
                                .await;
                            results[i] = Some(ItemResult::failed(
                                seq,
                                FailureCode::LicenceInheritedFromGroup,
                                detail,
                            ));
                            continue;
                        }
                        let outcome = if writes_sent[i] > 0 {
                            ItemOutcome::Changed
                        } else {
                            ItemOutcome::AlreadyCompliant
                        };
                        results[i] = Some(ItemResult::ok(seq, outcome));
                        continue;
                    };
                    if ctx.job.dry_run {
                        results[i] = Some(ItemResult::ok(seq, ItemOutcome::Changed));
                        continue;
                    }
                    match phase[i] {
                        // Not showing yet: a replica that has not caught up. Read again.
                        // (A write Graph accepted is given the whole window; one that may not
                        // have been applied, `resend_after`.)
                        Phase::Verify { since, uncertain }
                            if now
                                < since
                                    + if uncertain && !remembered[i] {
                                        resend_after
                                    } else {
                                        window
                                    } =>
                        {
                            keep.push(i)
                        }
                        Phase::Verify {
                            uncertain: false, ..
                        } => {
                            results[i] = Some(ItemRetry::unverified(
                                seq,
                                format!(
                                    "the tenant does not show the licence assigned {} s ago",
                                    window.as_secs_f64()
                                ),
                            ));
                        }
                        // This service wrote exactly this licence moments ago (another job,
                        // a ticket sent again): the read comes from a replica that has not
                        // caught up. Read again until the window of that write passes.
                        Phase::Write
                            if writes_sent[i] == 0
                                && let Some((age, certain)) =
                                    written_recently(&recent_writes, &items[i].key, want)
                                && age < if certain { window } else { resend_after } =>
                        {
                            // Sent again once its window passes without it showing (not
                            // `verification_failed`: this job did not write it).
                            phase[i] = Phase::Verify {
                                since: now.checked_sub(age).unwrap_or(now),
                                uncertain: true,
                            };
                            if certain {
                                remembered[i] = true;
                            }
                            keep.push(i);
                        }
                        // A trusted read (the window has passed) that needs a write.
                        _ if writes_sent[i] >= attempts => {
                            results[i] = Some(ItemRetry::exhausted(
                                seq,
                                last_error.remove(&i),
                                "no write succeeded",
                            ));
                        }
                        _ => {
                            before.push((
                                items[i].seq,
                                items[i].key.to_lowercase(),
                                before_image(&state),
                            ));
                            writes.push((i, change));
                        }
                    }
                }
            }
        }
        pause_before = writes.is_empty();
        if !writes.is_empty() {
            let changes: Vec<LicenceChange> = writes.iter().map(|(_, c)| c.clone()).collect();
            let gate = ctx
                .writes
                .gate_with_before(writes.iter().map(|(i, _)| items[*i].seq).collect(), before);
            let outcomes = tokio::select! {
                // Throttled writes come back postponed rather than hold the turn.
                outcomes = ctx.in_write_turn(changes.len(), waits::return_early(
                    ctx.tenant.assign_licences_gated(&changes, &gate),
                )) => outcomes,
                // Stopping: abandon the call. Its writes' intents are recorded, so the chunk's
                // next worker, reading the users back, reports them as this job's changes.
                _ = ctx.stop.cancelled() => return Ok(results.into_iter().flatten().collect()),
            };
            let sent_at = Instant::now();
            let mut written: Vec<(String, Value, bool)> = Vec::new();
            let mut remember = |i: usize, change: &LicenceChange, certain: bool| {
                if let Some(licence) = change.add.first() {
                    written.push((
                        items[i].key.to_lowercase(),
                        serde_json::to_value(licence).unwrap_or_default(),
                        certain,
                    ));
                }
            };
            for ((i, change), outcome) in writes.into_iter().zip(outcomes) {
                let uncertain = match outcome {
                    Ok(_) => {
                        remember(i, &change, true);
                        false
                    }
                    // Not sent: the chunk is stopping (its token is cancelled).
                    Err(TenantError::Withheld(_)) => continue,
                    // Throttled (not applied) while the call's other writes went through:
                    // read and written again after Graph's `Retry-After`, in a later round.
                    Err(TenantError::Postponed { after, error }) => {
                        not_before[i] = Some(sent_at + after);
                        last_error.insert(i, *error);
                        keep.push(i);
                        continue;
                    }
                    // Refused because of another policy's licence the user inherits from a
                    // group: no direct write can reach the policy (`licensing::unreachable`).
                    Err(
                        TenantError::MutuallyExclusiveLicence(_) | TenantError::LicenceInherited(_),
                    ) if unreachable[i].as_ref().is_some_and(|u| u.other_licence) => {
                        let detail = match unreachable[i].take() {
                            Some(u) => {
                                u.detail_naming_groups(ctx.tenant.as_ref(), &mut group_names)
                                    .await
                            }
                            None => String::new(),
                        };
                        results[i] = Some(ItemResult::failed(
                            items[i].seq,
                            FailureCode::LicenceInheritedFromGroup,
                            detail,
                        ));
                        continue;
                    }
                    // Planned from a stale read: a licence it removes is already gone, or one
                    // it would conflict with has just been removed (a move made moments ago by
                    // an earlier job that the read did not show yet). Nothing was applied: read
                    // again until the window passes, then write from what the tenant shows;
                    // refused a second time, the item fails with Graph's answer.
                    Err(
                        error @ (TenantError::LicenceNotHeld(_)
                        | TenantError::MutuallyExclusiveLicence(_)),
                    ) if !suspected_stale[i] => {
                        suspected_stale[i] = true;
                        last_error.insert(i, error);
                        phase[i] = Phase::Verify {
                            since: sent_at,
                            uncertain: true,
                        };
                        keep.push(i);
                        continue;
                    }
                    Err(error) if ItemRetry::is_retryable(&error) => {
                        remember(i, &change, false);
                        last_error.insert(i, error);
                        true
                    }
                    Err(error) => {
                        results[i] = Some(ItemResult::failed(
                            items[i].seq,
                            failure_code(&error),
                            error.to_string(),
                        ));
                        continue;
                    }
                };
                writes_sent[i] += 1;
                phase[i] = Phase::Verify {
                    since: sent_at,
                    uncertain,
                };
                keep.push(i);
            }
            // Remembered for every replica and later job: a read that does not show these
            // within the window is a replica that has not caught up.
            store_users::record_writes(ctx.pool, &written).await?;
        }
        pending = keep;
        // Only stragglers left after a read-back (a round without writes), each waiting for a
        // write recorded above to show: hand them back to be read again shortly. A caught-up
        // replica settles every item at the first read-back; against a lagging one, holding
        // the chunk would idle its executor and the write budget it could use.
        // Items whose read waits out a `Retry-After` and that have nothing written yet are
        // handed back too: read again when the chunk comes back, as if for the first time.
        if !pending.is_empty()
            && !ctx.job.dry_run
            && pause_before
            && pending.iter().all(|&i| {
                !suspected_stale[i]
                    && match phase[i] {
                        // Waiting for this chunk's write, or for one recorded earlier
                        // (certain or not: the record is read again on coming back).
                        Phase::Verify { .. } => true,
                        Phase::Write => not_before[i].is_some(),
                    }
            })
        {
            let now = Instant::now();
            let longest = pending
                .iter()
                .filter_map(|&i| not_before[i])
                .map(|t| t.saturating_duration_since(now))
                .max()
                .unwrap_or_default();
            ctx.defer.later(COME_BACK_AFTER.max(longest));
            return Ok(results.into_iter().flatten().collect());
        }
    }
    if ctx.cancel.is_cancelled() && !ctx.stop.is_cancelled() {
        // The job ended (or the chunk was lost) mid-way: report what reached the tenant. A
        // write Graph accepted is `changed`; one that failed in a way that may have been
        // applied (a 5xx, a timeout) is read once. The rest is left to be skipped.
        let mut uncertain = Vec::new();
        for i in pending {
            match phase[i] {
                Phase::Verify {
                    uncertain: false, ..
                } => results[i] = Some(ItemResult::ok(items[i].seq, ItemOutcome::Changed)),
                Phase::Verify {
                    uncertain: true, ..
                } => uncertain.push(i),
                Phase::Write => {}
            }
        }
        if !uncertain.is_empty() {
            let states = read_again(ctx, items, &uncertain, &mut ids).await?;
            for (&i, state) in uncertain.iter().zip(states) {
                let want = desired[i]
                    .as_ref()
                    .expect("written items have a desired licence");
                if let Ok(state) = state
                    && change_for(&state, want, &managed).is_none()
                {
                    results[i] = Some(ItemResult::ok(items[i].seq, ItemOutcome::Changed));
                }
            }
        }
    }
    Ok(results.into_iter().flatten().collect())
}

/// When stragglers handed back ([`crate::engine::kind::Defer`]) are read again.
const COME_BACK_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// How long ago this service wrote exactly `want` for `address` (within the window the query
/// asked for), and whether Graph accepted it.
fn written_recently(
    recent: &HashMap<String, store_users::RecentWrite>,
    address: &str,
    want: &AssignedLicence,
) -> Option<(std::time::Duration, bool)> {
    let recent = recent.get(&address.to_lowercase())?;
    let (licence, age) = (&recent.licence, recent.age);
    let written: AssignedLicence = serde_json::from_value(licence.clone()).ok()?;
    written.same_as(want).then_some((age, recent.certain))
}

/// A licence of another SKU than `want` that this service wrote for `address` within the
/// window (see [`store_users::recent_writes`]).
fn other_recent_write(
    recent: &HashMap<String, store_users::RecentWrite>,
    address: &str,
    want: &AssignedLicence,
) -> Option<AssignedLicence> {
    let recent = recent.get(&address.to_lowercase())?;
    let written: AssignedLicence = serde_json::from_value(recent.licence.clone()).ok()?;
    (written.sku_id != want.sku_id).then_some(written)
}

/// Reads the users of `which` again: by id when their first read found them, else by address.
async fn read_again(
    ctx: &ApplyContext<'_, PolicyPlan>,
    items: &[WorkItem<()>],
    which: &[usize],
    ids: &mut [Option<Uuid>],
) -> Result<Vec<Result<UserLicenceState, TenantError>>, EngineError> {
    let (by_id, by_address): (Vec<usize>, Vec<usize>) =
        which.iter().partition(|&&i| ids[i].is_some());
    let refs: Vec<UserRef> = by_id
        .iter()
        .map(|&i| UserRef::Id(ids[i].expect("partitioned")))
        .collect();
    let addresses: Vec<String> = by_address.iter().map(|&i| items[i].key.clone()).collect();
    // Answers come back at once, the failed ones postponed (see `apply`).
    let (read_by_id, read_by_address) = waits::return_early(async {
        tokio::join!(ctx.tenant.get_users(&refs), async {
            if addresses.is_empty() {
                Ok(Vec::new())
            } else {
                users::read_users(ctx.pool, ctx.tenant.as_ref(), &addresses).await
            }
        })
    })
    .await;
    let mut out: HashMap<usize, Result<UserLicenceState, TenantError>> =
        by_id.into_iter().zip(read_by_id).collect();
    for (i, state) in by_address.into_iter().zip(read_by_address?) {
        if let Ok(user) = &state {
            ids[i] = Some(user.id);
        }
        out.insert(i, state);
    }
    Ok(which
        .iter()
        .map(|i| out.remove(i).expect("every item was read"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(licences: Vec<AssignedLicence>) -> UserLicenceState {
        UserLicenceState {
            id: Uuid::nil(),
            user_principal_name: "u@nhs.net".into(),
            usage_location: Some("GB".into()),
            assigned_licenses: licences,
            inherited: vec![],
        }
    }

    #[test]
    fn change_adds_swaps_and_leaves_unmanaged_licences() {
        let e3 = Uuid::from_u128(3);
        let e1 = Uuid::from_u128(1);
        let other = Uuid::from_u128(9);
        let plan_a = Uuid::from_u128(100);
        let desired = AssignedLicence {
            sku_id: e3,
            disabled_plans: vec![plan_a],
        };
        let managed: HashSet<Uuid> = [e3, e1].into_iter().collect();

        // Already exactly right, with an unmanaged licence beside it: nothing to do.
        let held = state(vec![
            desired.clone(),
            AssignedLicence {
                sku_id: other,
                disabled_plans: vec![],
            },
        ]);
        assert!(change_for(&held, &desired, &managed).is_none());

        // Different disabled plans: re-add with the complete list.
        let toggled = state(vec![AssignedLicence {
            sku_id: e3,
            disabled_plans: vec![],
        }]);
        let change = change_for(&toggled, &desired, &managed).unwrap();
        assert_eq!(change.add, vec![desired.clone()]);
        assert!(change.remove.is_empty());

        // Another policy's licence: one call adds the new and removes the old.
        let moved = state(vec![AssignedLicence {
            sku_id: e1,
            disabled_plans: vec![],
        }]);
        let change = change_for(&moved, &desired, &managed).unwrap();
        assert_eq!(change.add, vec![desired]);
        assert_eq!(change.remove, vec![e1]);
    }
}

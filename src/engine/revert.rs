//! Revert (contract 1.1): an operator's `jobs revert` of a completed policy job, planned and
//! applied by the one engine as a job of its own (`policy.revert`, published as
//! `policy.changed` with `subject.reverts`): throttled, gated and verified like any other.
//!
//! For every item the reverted job changed, the applier restores the licences and disabled
//! plans the user held directly before that job's write (its before-image, recorded with the
//! write's intent: [`crate::store::work::revert`]). Only licences some policy assigns are
//! touched: one held in the image is assigned again with its disabled plans, one held now
//! and not in the image is removed, in one `assignLicense` call (the user never goes without
//! service); licences no policy assigns are left alone. The policy applier changes no group
//! membership (groups are read, for group-based licences, never written), so there is none
//! to restore. An item that a later job has written since is skipped as `superseded`, judged
//! when the item is applied (level-triggered), not when the revert was asked for.
//!
//! The stored desired state (policies, memberships) is not changed: the revert undoes a
//! job's effect in the tenant, and the portal owns the definitions (see the README).

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::kind::{
    ApplyContext, ItemOutcome, ItemResult, JobKind, Plan, PlanContext, PlannedItem, WorkItem,
};
use super::retry::ItemRetry;
use super::users;
use super::{EngineError, failure_code};
use crate::domain::{Failure, FailureCode, JobType};
use crate::store::policies;
use crate::store::users as store_users;
use crate::store::work::revert as store;
use crate::tenant::{AssignedLicence, LicenceChange, TenantError, UserLicenceState, UserRef};

/// The stored payload of a revert job (made by [`store::request`], never by the portal).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevertPayload {
    pub reverts: Uuid,
}

/// What the applier needs of the whole job.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevertPlan {
    pub reverts: Uuid,
}

/// One item: the user's before-image, and the reverted job's item it comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevertSpec {
    /// The item's `seq` in the reverted job.
    pub seq: i32,
    pub image: BeforeImage,
}

/// `job_item_before_images.image` (see [`super::policy::before_image`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BeforeImage {
    pub user_id: Uuid,
    pub licences: Vec<AssignedLicence>,
}

pub struct RevertKind;

#[async_trait]
impl JobKind for RevertKind {
    type Payload = RevertPayload;
    type Plan = RevertPlan;
    type Spec = RevertSpec;
    const JOB_TYPE: JobType = JobType::PolicyRevert;

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: RevertPayload,
    ) -> Result<Plan<RevertPlan, RevertSpec>, EngineError> {
        let reverts = payload.reverts;
        let refuse = |subject: Value, detail: String| Plan::Reject {
            subject: Some(subject),
            failures: vec![Failure {
                item: reverts.to_string(),
                code: FailureCode::InvalidMessage,
                detail,
            }],
        };
        let mut subject = json!({ "reverts": reverts });
        let Some(reverted) = store::reverted(ctx.tx, reverts).await? else {
            return Ok(refuse(subject, format!("no job {reverts} to revert")));
        };
        // What the reverted job was about (its policy), beside `reverts`.
        if let Some(Value::Object(was)) = &reverted.subject {
            for key in ["policy_id", "policy_name", "version"] {
                if let Some(value) = was.get(key) {
                    subject[key] = value.clone();
                }
            }
        }
        if let Some(refused) = reverted.refused {
            return Ok(refuse(subject, format!("job {reverts}: {refused}")));
        }
        let items = store::changed_items(ctx.tx, reverts)
            .await?
            .into_iter()
            .map(|item| {
                let image: BeforeImage = serde_json::from_value(item.image).map_err(|e| {
                    EngineError::Corrupt(format!("before-image of {}: {e}", item.item))
                })?;
                Ok(PlannedItem::with_spec(
                    item.item,
                    RevertSpec {
                        seq: item.seq,
                        image,
                    },
                ))
            })
            .collect::<Result<Vec<_>, EngineError>>()?;
        Ok(Plan::Accept {
            subject,
            plan: RevertPlan { reverts },
            items: items.into(),
        })
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, RevertPlan>,
        items: &[WorkItem<RevertSpec>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply(ctx, items).await
    }
}

/// The change that gives `state` back the policy licences of `image` (None when it holds
/// them exactly): add each with its disabled plans unless held so, remove every other one.
fn revert_change(
    state: &UserLicenceState,
    image: &[AssignedLicence],
    managed: &HashSet<Uuid>,
) -> Option<LicenceChange> {
    let add: Vec<AssignedLicence> = image
        .iter()
        .filter(|l| managed.contains(&l.sku_id))
        .filter(|l| state.licence(l.sku_id).is_none_or(|held| !held.same_as(l)))
        .cloned()
        .collect();
    let remove: Vec<Uuid> = state
        .assigned_licenses
        .iter()
        .map(|l| l.sku_id)
        .filter(|sku| managed.contains(sku) && !image.iter().any(|l| l.sku_id == *sku))
        .collect();
    if add.is_empty() && remove.is_empty() {
        return None;
    }
    Some(LicenceChange {
        user: UserRef::Id(state.id),
        add,
        remove,
    })
}

async fn apply(
    ctx: &ApplyContext<'_, RevertPlan>,
    items: &[WorkItem<RevertSpec>],
) -> Result<Vec<ItemResult>, EngineError> {
    let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
    let specs: Vec<&RevertSpec> = items
        .iter()
        .map(|i| {
            i.spec
                .as_ref()
                .ok_or_else(|| EngineError::Corrupt(format!("revert item {} has no spec", i.key)))
        })
        .collect::<Result<_, _>>()?;
    // Written again by a later job since: not this revert's to undo.
    let seqs: Vec<i32> = specs.iter().map(|s| s.seq).collect();
    let later: HashMap<i32, Uuid> =
        store::superseded(ctx.pool, ctx.plan.reverts, ctx.job.id, &seqs)
            .await?
            .into_iter()
            .collect();
    for (i, spec) in specs.iter().enumerate() {
        if let Some(job) = later.get(&spec.seq) {
            results[i] = Some(ItemResult::skipped(
                items[i].seq,
                FailureCode::Superseded,
                format!("changed again by job {job} after the reverted job"),
            ));
        }
    }
    let catalogue = ctx.tenant.skus().await?;
    let managed: HashSet<Uuid> = policies::managed_licences(ctx.pool)
        .await?
        .iter()
        .filter_map(|part| catalogue.by_part_number(part).ok().map(|sku| sku.sku_id))
        .collect();

    let mut pending: Vec<usize> = (0..items.len()).filter(|&i| results[i].is_none()).collect();
    let addresses: Vec<String> = pending.iter().map(|&i| items[i].key.clone()).collect();
    let mut states: HashMap<usize, Result<UserLicenceState, TenantError>> = if addresses.is_empty()
    {
        HashMap::new()
    } else {
        pending
            .iter()
            .copied()
            .zip(users::read_users(ctx.pool, ctx.tenant.as_ref(), &addresses).await?)
            .collect()
    };
    // A licence this service wrote for a user moments ago (the reverted job's, say) that a
    // read does not show is a replica that has not caught up: read again until its window
    // passes rather than judge the user from it (Entra ID gives no read-your-writes).
    let keys: Vec<String> = items.iter().map(|i| i.key.to_lowercase()).collect();
    let recent = store_users::recent_writes(ctx.pool, &keys, ctx.retry.verify_within()).await?;
    let started = Instant::now();
    let lagging_until: Vec<Option<(AssignedLicence, Instant)>> = keys
        .iter()
        .map(|key| {
            let write = recent.get(key)?;
            let licence: AssignedLicence = serde_json::from_value(write.licence.clone()).ok()?;
            let left = ctx.retry.verify_within().checked_sub(write.age)?;
            Some((licence, started + left))
        })
        .collect();
    let mut ids: Vec<Uuid> = specs.iter().map(|s| s.image.user_id).collect();
    let mut written: Vec<Option<Instant>> = vec![None; items.len()];
    // The last write failed in a way that may have been applied (a 5xx, a timeout).
    let mut uncertain: Vec<bool> = vec![false; items.len()];
    let mut writes_sent: Vec<u32> = vec![0; items.len()];
    let mut read_failures: Vec<u32> = vec![0; items.len()];
    let mut last_error: HashMap<usize, TenantError> = HashMap::new();
    let attempts = ctx.retry.attempts();
    let window = ctx.retry.verify_within();
    let mut round = 0;
    while !pending.is_empty() && !ctx.cancel.is_cancelled() {
        let now = Instant::now();
        let mut keep = Vec::new();
        let mut writes: Vec<(usize, LicenceChange)> = Vec::new();
        let mut before: Vec<(i32, String, Value)> = Vec::new();
        // Written this round: read back in the next.
        let mut read_back: Vec<usize> = Vec::new();
        for &i in &pending {
            let seq = items[i].seq;
            match states.remove(&i) {
                None => keep.push(i),
                Some(Err(error)) if ItemRetry::is_retryable(&error) => {
                    read_failures[i] += 1;
                    let in_window = written[i].is_some_and(|at| now < at + window);
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
                Some(Err(error)) => {
                    results[i] = Some(ItemResult::failed(
                        seq,
                        failure_code(&error),
                        error.to_string(),
                    ));
                }
                Some(Ok(state)) => {
                    read_failures[i] = 0;
                    ids[i] = state.id;
                    if written[i].is_none()
                        && let Some((licence, until)) = &lagging_until[i]
                        && now < *until
                        && state
                            .licence(licence.sku_id)
                            .is_none_or(|l| !l.same_as(licence))
                    {
                        keep.push(i);
                        continue;
                    }
                    let Some(change) = revert_change(&state, &specs[i].image.licences, &managed)
                    else {
                        let outcome = if writes_sent[i] > 0 {
                            ItemOutcome::Changed
                        } else {
                            ItemOutcome::AlreadyCompliant
                        };
                        results[i] = Some(ItemResult::ok(seq, outcome));
                        continue;
                    };
                    match written[i] {
                        // Written, not showing yet: a replica that has not caught up. (A
                        // write answered 5xx or timed out may have been applied: it is read
                        // for `resend_after`, then sent again.)
                        Some(at)
                            if now
                                < at + if uncertain[i] {
                                    ctx.retry.resend_after()
                                } else {
                                    window
                                } =>
                        {
                            keep.push(i)
                        }
                        Some(_) if uncertain[i] && writes_sent[i] < attempts => {
                            before.push((
                                seq,
                                items[i].key.to_lowercase(),
                                super::policy::before_image(&state),
                            ));
                            writes.push((i, change));
                        }
                        Some(_) if uncertain[i] => {
                            results[i] = Some(ItemRetry::exhausted(
                                seq,
                                last_error.remove(&i),
                                "no write succeeded",
                            ));
                        }
                        Some(_) => {
                            results[i] = Some(ItemRetry::unverified(
                                seq,
                                format!(
                                    "the tenant does not show the restored licences {} s after \
                                     they were written",
                                    window.as_secs_f64()
                                ),
                            ));
                        }
                        None if writes_sent[i] >= attempts => {
                            results[i] = Some(ItemRetry::exhausted(
                                seq,
                                last_error.remove(&i),
                                "no write succeeded",
                            ));
                        }
                        None => {
                            before.push((
                                seq,
                                items[i].key.to_lowercase(),
                                super::policy::before_image(&state),
                            ));
                            writes.push((i, change));
                        }
                    }
                }
            }
        }
        if !writes.is_empty() {
            let changes: Vec<LicenceChange> = writes.iter().map(|(_, c)| c.clone()).collect();
            let gate = ctx
                .writes
                .gate_with_before(writes.iter().map(|(i, _)| items[*i].seq).collect(), before);
            let outcomes = tokio::select! {
                outcomes = ctx.in_write_turn(
                    changes.len(),
                    ctx.tenant.assign_licences_gated(&changes, &gate),
                ) => outcomes,
                // Stopping: the writes' intents are recorded; the chunk's next worker reads
                // the users back.
                _ = ctx.stop.cancelled() => return Ok(results.into_iter().flatten().collect()),
            };
            let sent_at = Instant::now();
            let mut remembered: Vec<(String, Value, bool)> = Vec::new();
            for ((i, change), outcome) in writes.into_iter().zip(outcomes) {
                match outcome {
                    Ok(_) => {
                        writes_sent[i] += 1;
                        written[i] = Some(sent_at);
                        uncertain[i] = false;
                        read_back.push(i);
                        // Remembered as the policy applier's writes are: a later job that
                        // reads a lagging replica re-reads instead of writing again.
                        if let Some(licence) = change.add.first() {
                            remembered.push((
                                items[i].key.to_lowercase(),
                                serde_json::to_value(licence).unwrap_or_default(),
                                true,
                            ));
                        }
                    }
                    // Not sent: the chunk is stopping.
                    Err(TenantError::Withheld(_)) => {}
                    // May have been applied: read until `resend_after`, then sent again.
                    Err(error) if ItemRetry::is_retryable(&error) => {
                        writes_sent[i] += 1;
                        written[i] = Some(sent_at);
                        uncertain[i] = true;
                        last_error.insert(i, error);
                        read_back.push(i);
                    }
                    Err(error) => {
                        results[i] = Some(ItemResult::failed(
                            items[i].seq,
                            failure_code(&error),
                            error.to_string(),
                        ));
                    }
                }
            }
            store_users::record_writes(ctx.pool, &remembered).await?;
        }
        pending = keep;
        pending.extend(read_back);
        if pending.is_empty() || ctx.cancel.is_cancelled() {
            break;
        }
        round += 1;
        if !ctx.retry.wait(round, ctx.cancel).await {
            break;
        }
        let refs: Vec<UserRef> = pending.iter().map(|&i| UserRef::Id(ids[i])).collect();
        states = pending
            .iter()
            .copied()
            .zip(ctx.tenant.get_users(&refs).await)
            .collect();
    }
    Ok(results.into_iter().flatten().collect())
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

    fn licence(sku: u128, disabled: &[u128]) -> AssignedLicence {
        AssignedLicence {
            sku_id: Uuid::from_u128(sku),
            disabled_plans: disabled.iter().map(|p| Uuid::from_u128(*p)).collect(),
        }
    }

    #[test]
    fn a_revert_swaps_back_restores_plans_and_leaves_unmanaged_licences() {
        let managed: HashSet<Uuid> = [1, 2].into_iter().map(Uuid::from_u128).collect();
        let image = vec![licence(1, &[10, 11]), licence(9, &[])];
        // Moved to SKU 2 by the job; SKU 9 (no policy's) is not touched either way.
        let now = state(vec![licence(2, &[20]), licence(9, &[])]);
        let change = revert_change(&now, &image, &managed).unwrap();
        assert_eq!(change.add, vec![licence(1, &[10, 11])]);
        assert_eq!(change.remove, vec![Uuid::from_u128(2)]);
        // Toggles changed on the same SKU: re-added with the old disabled plans.
        let toggled = state(vec![licence(1, &[10])]);
        let change = revert_change(&toggled, &image, &managed).unwrap();
        assert_eq!(change.add, vec![licence(1, &[10, 11])]);
        assert!(change.remove.is_empty());
        // Restored already (order of plans ignored): nothing to do.
        let restored = state(vec![licence(1, &[11, 10])]);
        assert!(revert_change(&restored, &image, &managed).is_none());
    }
}

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
//! job's effect in the tenant, and the portal owns the definitions (see docs/architecture.md,
//! "Revert").

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::EngineError;
use super::kind::{ApplyContext, ItemResult, JobKind, Plan, PlanContext, PlannedItem, WorkItem};
use super::policy::{Licences, Want};
use crate::domain::{ChangeEffect, Failure, FailureCode, JobType};
use crate::store::policies;
use crate::store::work::revert as store;
use crate::tenant::AssignedLicence;

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
        mut ctx: PlanContext<'_, '_>,
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
        *ctx.effect = Some(effect(&mut ctx, &reverted, &subject, &items).await?);
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

/// What restoring each item's before-image does to its user (contract 1.2: the approval
/// rule judges a revert too), against the licence the reverted job assigned: a user who held
/// no licence of any policy before loses it (`licence_removed`), one who held another gets it
/// back (`licence_changed`), one who held the same gets its plans back (`toggles_changed`).
/// The share is of the reverted job's policy's members (of the items when it has none).
async fn effect(
    ctx: &mut PlanContext<'_, '_>,
    reverted: &store::Reverted,
    subject: &Value,
    items: &[PlannedItem<RevertSpec>],
) -> Result<(ChangeEffect, u64), EngineError> {
    let catalogue = ctx.tenant.skus().await?;
    let sku = |part: &str| catalogue.by_part_number(part).ok().map(|sku| sku.sku_id);
    let managed: HashSet<Uuid> = policies::managed_licences(&mut **ctx.tx)
        .await?
        .iter()
        .filter_map(|part| sku(part))
        .collect();
    let written = reverted.licence.as_deref().and_then(sku);
    let mut effect = ChangeEffect::default();
    for item in items {
        let Some(spec) = &item.spec else { continue };
        let held: Vec<Uuid> = spec
            .image
            .licences
            .iter()
            .map(|l| l.sku_id)
            .filter(|sku| managed.contains(sku))
            .collect();
        if held.is_empty() {
            effect.licence_removed += 1;
        } else if written.is_some_and(|w| held.contains(&w)) {
            effect.toggles_changed += 1;
        } else {
            effect.licence_changed += 1;
        }
    }
    let members = match subject["policy_id"].as_str() {
        Some(policy) => policies::member_count(&mut **ctx.tx, policy).await?,
        None => 0,
    };
    Ok((effect, members.max(items.len() as u64)))
}

/// Restore the before-images of `items` through the engine's state machine
/// ([`super::reconcile`]): read, write what differs, read back; items written again by a later
/// job are skipped.
async fn apply(
    ctx: &ApplyContext<'_, RevertPlan>,
    items: &[WorkItem<RevertSpec>],
) -> Result<Vec<ItemResult>, EngineError> {
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
    let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
    let mut wants: Vec<Option<Want>> = vec![None; items.len()];
    for (i, spec) in specs.iter().enumerate() {
        match later.get(&spec.seq) {
            Some(job) => {
                results[i] = Some(ItemResult::skipped(
                    items[i].seq,
                    FailureCode::Superseded,
                    format!("changed again by job {job} after the reverted job"),
                ))
            }
            None => wants[i] = Some(Want::Restore(spec.image.licences.clone())),
        }
    }
    let catalogue = ctx.tenant.skus().await?;
    let managed: HashSet<Uuid> = policies::managed_licences(ctx.pool)
        .await?
        .iter()
        .filter_map(|part| catalogue.by_part_number(part).ok().map(|sku| sku.sku_id))
        .collect();
    Licences::new(ctx, items, wants, managed)
        .await?
        .run(results)
        .await
}

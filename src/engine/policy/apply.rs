//! Applying licences: what the policy jobs, their drift repairs and reverts share. Each
//! states what an item wants ([`Want`]); [`Licences`] reads users, compares and writes
//! `assignLicense` for the engine's one per-item state machine ([`crate::engine::reconcile`]).

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use serde_json::{Value, json};
use uuid::Uuid;

use super::PolicyPlan;
use crate::domain::FailureCode;
use crate::engine::kind::{ApplyContext, ItemResult, WorkItem};
use crate::engine::reconcile::{Compare, Machine, Reads, Recent, Reconcile};
use crate::engine::{EngineError, failure_code, licensing, users};
use crate::store::policies::{self, PolicyRow};
use crate::store::users::{self as store_users, RecentWrite};
use crate::tenant::{
    AssignedLicence, LicenceChange, SkuCatalogue, TenantError, UserLicenceState, UserRef,
    WriteGate, waits,
};

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
    Want::Licence(desired.clone()).change(state, managed)
}

/// What one user should hold directly, of the licences some policy assigns (`managed`).
#[derive(Debug, Clone)]
pub(crate) enum Want {
    /// A policy's licence with its disabled plans, and no other managed licence.
    Licence(AssignedLicence),
    /// Exactly these (a before-image a revert restores); unmanaged ones are ignored.
    Restore(Vec<AssignedLicence>),
}

impl Want {
    /// The managed licences wanted.
    fn licences<'w>(
        &'w self,
        managed: &'w HashSet<Uuid>,
    ) -> impl Iterator<Item = &'w AssignedLicence> + 'w {
        let all: &[AssignedLicence] = match self {
            Self::Licence(licence) => std::slice::from_ref(licence),
            Self::Restore(image) => image,
        };
        all.iter().filter(move |l| match self {
            Self::Licence(_) => true,
            Self::Restore(_) => managed.contains(&l.sku_id),
        })
    }

    /// The change that brings `state` here (None when it holds): every wanted licence added
    /// (held ones again, with their disabled plans: Graph's `assignLicense` updates them) and
    /// every other managed licence removed, in one call, so the user never goes without.
    pub(crate) fn change(
        &self,
        state: &UserLicenceState,
        managed: &HashSet<Uuid>,
    ) -> Option<LicenceChange> {
        let add: Vec<AssignedLicence> = self.licences(managed).cloned().collect();
        let holds_all = add
            .iter()
            .all(|l| state.licence(l.sku_id).is_some_and(|held| held.same_as(l)));
        let remove: Vec<Uuid> = state
            .assigned_licenses
            .iter()
            .map(|l| l.sku_id)
            .filter(|sku| managed.contains(sku) && !add.iter().any(|l| l.sku_id == *sku))
            .collect();
        if holds_all && remove.is_empty() {
            return None;
        }
        Some(LicenceChange {
            user: UserRef::Id(state.id),
            add,
            remove,
        })
    }

    /// Whether `licence` is one of those wanted, exactly.
    fn wants(&self, licence: &AssignedLicence, managed: &HashSet<Uuid>) -> bool {
        self.licences(managed).any(|l| l.same_as(licence))
    }

    fn wants_sku(&self, sku: Uuid, managed: &HashSet<Uuid>) -> bool {
        self.licences(managed).any(|l| l.sku_id == sku)
    }
}

/// Users' licences, as the state machine reads, compares and writes them.
pub(crate) struct Licences<'c, 'a, P> {
    ctx: &'c ApplyContext<'a, P>,
    seqs: Vec<i32>,
    addresses: Vec<String>,
    /// What each item wants (`None`: settled before the machine runs).
    wants: Vec<Option<Want>>,
    managed: HashSet<Uuid>,
    /// The catalogue, to tell a licence a group keeps direct assignment from reaching
    /// ([`licensing::unreachable`]); policies only.
    catalogue: Option<&'c SkuCatalogue>,
    /// Licences this service wrote within the verify window, by lower-case address.
    recent: HashMap<String, RecentWrite>,
    /// Reads made before the machine started (policies read with their desired state).
    first_read: Vec<Option<Result<UserLicenceState, TenantError>>>,
    /// Object ids, once known: re-reads go by id (the address may not be the UPN).
    ids: Vec<Option<Uuid>>,
    unreachable: Vec<Option<licensing::Unreachable>>,
    group_names: HashMap<Uuid, String>,
}

impl<'c, 'a, P: Sync> Licences<'c, 'a, P> {
    /// The licences of `items`, each wanting `wants[i]`. Reads what this service wrote for
    /// them recently (a read not showing it is a replica behind).
    pub(crate) async fn new<S>(
        ctx: &'c ApplyContext<'a, P>,
        items: &[WorkItem<S>],
        wants: Vec<Option<Want>>,
        managed: HashSet<Uuid>,
    ) -> Result<Self, EngineError> {
        let keys: Vec<String> = items.iter().map(|i| i.key.to_lowercase()).collect();
        let recent = store_users::recent_writes(ctx.pool, &keys, ctx.retry.verify_within()).await?;
        Ok(Self::with_recent(ctx, items, wants, managed, recent))
    }

    fn with_recent<S>(
        ctx: &'c ApplyContext<'a, P>,
        items: &[WorkItem<S>],
        wants: Vec<Option<Want>>,
        managed: HashSet<Uuid>,
        recent: HashMap<String, RecentWrite>,
    ) -> Self {
        Self {
            ctx,
            seqs: items.iter().map(|i| i.seq).collect(),
            addresses: items.iter().map(|i| i.key.clone()).collect(),
            unreachable: vec![None; items.len()],
            first_read: items.iter().map(|_| None).collect(),
            ids: vec![None; items.len()],
            wants,
            managed,
            catalogue: None,
            recent,
            group_names: HashMap::new(),
        }
    }

    /// Items whose first read was made already (in the order of the items).
    pub(crate) fn with_first_read(
        mut self,
        read: Vec<Result<UserLicenceState, TenantError>>,
    ) -> Self {
        self.ids = read.iter().map(|r| r.as_ref().ok().map(|u| u.id)).collect();
        self.first_read = read.into_iter().map(Some).collect();
        self
    }

    /// Tell licences a group's licence keeps from reaching (policies).
    pub(crate) fn with_catalogue(mut self, catalogue: &'c SkuCatalogue) -> Self {
        self.catalogue = Some(catalogue);
        self
    }

    /// Reads the users of `which` again: by id when known, else by address.
    async fn read_again(
        &mut self,
        which: &[usize],
    ) -> Result<Vec<Result<UserLicenceState, TenantError>>, EngineError> {
        let (by_id, by_address): (Vec<usize>, Vec<usize>) =
            which.iter().partition(|&&i| self.ids[i].is_some());
        let refs: Vec<UserRef> = by_id
            .iter()
            .map(|&i| UserRef::Id(self.ids[i].expect("partitioned")))
            .collect();
        let addresses: Vec<String> = by_address
            .iter()
            .map(|&i| self.addresses[i].clone())
            .collect();
        let ctx = self.ctx;
        // Answers come back at once, the failed ones postponed (see `tenant::waits`).
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
                self.ids[i] = Some(user.id);
            }
            out.insert(i, state);
        }
        Ok(which
            .iter()
            .map(|i| out.remove(i).expect("every item was read"))
            .collect())
    }

    /// What this service wrote for item `i` recently, if that is what it wants.
    fn written_recently(&self, i: usize, want: &Want) -> Option<Recent> {
        let recent = self.recent.get(&self.addresses[i].to_lowercase())?;
        let written: AssignedLicence = serde_json::from_value(recent.licence.clone()).ok()?;
        want.wants(&written, &self.managed).then_some(Recent {
            age: recent.age,
            certain: recent.certain,
        })
    }

    /// A licence of another SKU than those wanted that this service wrote for item `i`
    /// within the window: a read that does not show it is behind, and the user holds it.
    fn other_recent_write(&self, i: usize, want: &Want) -> Option<AssignedLicence> {
        let recent = self.recent.get(&self.addresses[i].to_lowercase())?;
        let written: AssignedLicence = serde_json::from_value(recent.licence.clone()).ok()?;
        (!want.wants_sku(written.sku_id, &self.managed)).then_some(written)
    }

    /// Runs the state machine over the items; `results[i]` set for items settled before.
    pub(crate) async fn run(
        mut self,
        results: Vec<Option<ItemResult>>,
    ) -> Result<Vec<ItemResult>, EngineError> {
        let seqs = self.seqs.clone();
        Machine::new(self.ctx, &seqs, results).run(&mut self).await
    }
}

#[async_trait]
impl<P: Sync> Reconcile for Licences<'_, '_, P> {
    type State = UserLicenceState;
    type Change = LicenceChange;

    async fn read(&mut self, which: &[usize]) -> Reads<UserLicenceState> {
        if which.iter().all(|&i| self.first_read[i].is_some()) {
            return Ok(which
                .iter()
                .map(|&i| self.first_read[i].take().expect("checked above"))
                .collect());
        }
        for &i in which {
            self.first_read[i] = None;
        }
        self.read_again(which).await
    }

    async fn compare(
        &mut self,
        i: usize,
        mut state: UserLicenceState,
        fresh: bool,
    ) -> Compare<LicenceChange> {
        self.ids[i] = Some(state.id);
        let want = self.wants[i]
            .clone()
            .expect("items the machine runs want something");
        // A licence of another policy that this service wrote moments ago and the read does
        // not show yet (a replica behind): the user holds it, so the change must remove it.
        if fresh
            && let Some(other) = self.other_recent_write(i, &want)
            && state.licence(other.sku_id).is_none()
        {
            state.assigned_licenses.push(other);
        }
        if let (Some(catalogue), Want::Licence(licence)) = (self.catalogue, &want) {
            self.unreachable[i] = licensing::unreachable(&state, licence, &self.managed, catalogue);
        }
        let Some(change) = want.change(&state, &self.managed) else {
            // The direct assignment holds; what a group's licence keeps it from reaching is
            // reported, not written again.
            return match self.unreachable[i].take() {
                Some(u) => {
                    let detail = u
                        .detail_naming_groups(self.ctx.tenant.as_ref(), &mut self.group_names)
                        .await;
                    Compare::Settle(ItemResult::failed(
                        self.seqs[i],
                        FailureCode::LicenceInheritedFromGroup,
                        detail,
                    ))
                }
                None => Compare::Holds,
            };
        };
        Compare::Write {
            change,
            before: Some((self.addresses[i].to_lowercase(), before_image(&state))),
            recent: self.written_recently(i, &want),
        }
    }

    async fn write(
        &mut self,
        changes: &[LicenceChange],
        gate: &(dyn WriteGate + Sync),
    ) -> Result<Vec<Result<(), TenantError>>, EngineError> {
        Ok(self
            .ctx
            .tenant
            .assign_licences_gated(changes, gate)
            .await
            .into_iter()
            .map(|r| r.map(|_| ()))
            .collect())
    }

    /// Refused because of another policy's licence the user inherits from a group: no direct
    /// write can reach the policy (`licensing::unreachable`).
    async fn refused(&mut self, i: usize, error: &TenantError) -> Option<ItemResult> {
        if !matches!(
            error,
            TenantError::MutuallyExclusiveLicence(_) | TenantError::LicenceInherited(_)
        ) || !self.unreachable[i]
            .as_ref()
            .is_some_and(|u| u.other_licence)
        {
            return None;
        }
        let detail = match self.unreachable[i].take() {
            Some(u) => {
                u.detail_naming_groups(self.ctx.tenant.as_ref(), &mut self.group_names)
                    .await
            }
            None => String::new(),
        };
        Some(ItemResult::failed(
            self.seqs[i],
            FailureCode::LicenceInheritedFromGroup,
            detail,
        ))
    }

    /// A licence it removes is already gone, or one it would conflict with has just been
    /// removed (a move made moments ago by an earlier job that the read did not show yet).
    fn stale_refusal(&self, error: &TenantError) -> bool {
        matches!(
            error,
            TenantError::LicenceNotHeld(_) | TenantError::MutuallyExclusiveLicence(_)
        )
    }

    /// Remembered for every replica and later job: a read that does not show these within
    /// the window is a replica that has not caught up.
    async fn written(
        &mut self,
        writes: Vec<(usize, LicenceChange, bool)>,
    ) -> Result<(), EngineError> {
        let remembered: Vec<(String, Value, bool)> = writes
            .into_iter()
            .filter_map(|(i, change, certain)| {
                let licence = change.add.first()?;
                Some((
                    self.addresses[i].to_lowercase(),
                    serde_json::to_value(licence).unwrap_or_default(),
                    certain,
                ))
            })
            .collect();
        store_users::record_writes(self.ctx.pool, &remembered).await?;
        Ok(())
    }
}

/// Reconcile a chunk of members (see the module docs of [`super`]): the desired definition of
/// each read now, then the state machine: read the users, write what differs, read back
/// until the tenant shows it, never sending a write again because a replica is behind.
pub(crate) async fn apply(
    ctx: &ApplyContext<'_, PolicyPlan>,
    items: &[WorkItem<()>],
) -> Result<Vec<ItemResult>, EngineError> {
    let snapshot = &ctx.plan.policy;
    let catalogue =
        licensing::fresh_catalogue(ctx.tenant.as_ref(), &snapshot.licence, &ctx.plan.sku_plans)
            .await?;
    // The desired state (two reads, on two connections), the users' current state and what
    // this service wrote for them recently, at once: on every chunk's path, and independent.
    let addresses: Vec<String> = items.iter().map(|i| i.key.clone()).collect();
    let keys: Vec<String> = addresses.iter().map(|a| a.to_lowercase()).collect();
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
    let (first_read, recent) = first_read?;
    let (wants, results) = desired(ctx, items, current.into_iter().collect(), &catalogue);
    let mut managed: HashSet<Uuid> = managed_parts
        .iter()
        .chain(std::iter::once(&snapshot.licence))
        .filter_map(|part| catalogue.by_part_number(part).ok().map(|sku| sku.sku_id))
        .collect();
    managed.extend(wants.iter().flatten().filter_map(|w| match w {
        Want::Licence(l) => Some(l.sku_id),
        Want::Restore(_) => None,
    }));
    Licences::with_recent(ctx, items, wants, managed, recent)
        .with_first_read(first_read)
        .with_catalogue(&catalogue)
        .run(results)
        .await
}

/// What each member wants: the licence of the policy they are a member of now (a dry run:
/// the planned definition); members who moved or left are skipped as `superseded`.
fn desired(
    ctx: &ApplyContext<'_, PolicyPlan>,
    items: &[WorkItem<()>],
    current: HashMap<String, PolicyRow>,
    catalogue: &SkuCatalogue,
) -> (Vec<Option<Want>>, Vec<Option<ItemResult>>) {
    let snapshot = &ctx.plan.policy;
    let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
    let mut wants: Vec<Option<Want>> = vec![None; items.len()];
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
            Ok(licence) => wants[i] = Some(Want::Licence(licence.clone())),
            Err(error) => {
                results[i] = Some(ItemResult::failed(
                    item.seq,
                    failure_code(error),
                    error.to_string(),
                ));
            }
        }
    }
    (wants, results)
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
    fn change_adds_swaps_and_leaves_unmanaged_licences() {
        let desired = licence(3, &[100]);
        let managed: HashSet<Uuid> = [3, 1].into_iter().map(Uuid::from_u128).collect();

        // Already exactly right, with an unmanaged licence beside it: nothing to do.
        let held = state(vec![desired.clone(), licence(9, &[])]);
        assert!(change_for(&held, &desired, &managed).is_none());

        // Different disabled plans: re-add with the complete list.
        let toggled = state(vec![licence(3, &[])]);
        let change = change_for(&toggled, &desired, &managed).unwrap();
        assert_eq!(change.add, vec![desired.clone()]);
        assert!(change.remove.is_empty());

        // Another policy's licence: one call adds the new and removes the old.
        let moved = state(vec![licence(1, &[])]);
        let change = change_for(&moved, &desired, &managed).unwrap();
        assert_eq!(change.add, vec![desired]);
        assert_eq!(change.remove, vec![Uuid::from_u128(1)]);
    }

    #[test]
    fn a_restore_swaps_back_restores_plans_and_leaves_unmanaged_licences() {
        let managed: HashSet<Uuid> = [1, 2].into_iter().map(Uuid::from_u128).collect();
        let want = Want::Restore(vec![licence(1, &[10, 11]), licence(9, &[])]);
        // Moved to SKU 2 by the job; SKU 9 (no policy's) is not touched either way.
        let now = state(vec![licence(2, &[20]), licence(9, &[])]);
        let change = want.change(&now, &managed).unwrap();
        assert_eq!(change.add, vec![licence(1, &[10, 11])]);
        assert_eq!(change.remove, vec![Uuid::from_u128(2)]);
        // Toggles changed on the same SKU: re-added with the old disabled plans.
        let toggled = state(vec![licence(1, &[10])]);
        let change = want.change(&toggled, &managed).unwrap();
        assert_eq!(change.add, vec![licence(1, &[10, 11])]);
        assert!(change.remove.is_empty());
        // Restored already (order of plans ignored): nothing to do.
        let restored = state(vec![licence(1, &[11, 10])]);
        assert!(want.change(&restored, &managed).is_none());
        // Held no managed licence before: the job's is removed, nothing added.
        let none = Want::Restore(vec![licence(9, &[])]);
        let change = none.change(&now, &managed).unwrap();
        assert!(change.add.is_empty());
        assert_eq!(change.remove, vec![Uuid::from_u128(2)]);
    }
}

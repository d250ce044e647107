//! Licensing decisions of user policies beyond "write what differs": what direct assignment
//! cannot reach because a group's licence holds or enables it, service-plan dependencies and
//! seats checked at planning, and the catalogue watcher (seat metrics, plans the vendor adds).
//!
//! Contract version 1.1 (`service_plan_dependency`, `licence_inherited_from_group`, a job-level
//! `no_seats_available`) and tenant.md, "Licensing semantics".

use std::collections::HashSet;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Engine, EngineError};
use crate::configuration::PlanDependency;
use crate::domain::{Failure, FailureCode};
use crate::store::licensing as store;
use crate::store::policies::PolicyRow;
use crate::telemetry::emit;
use crate::telemetry::event::InternalEvent;
use crate::telemetry::metrics as m;
use crate::tenant::{AssignedLicence, Sku, SkuCatalogue, UserLicenceState};

/// Toggles that enable a plan while disabling every plan it requires (of those the licence
/// has): one failure per broken dependency, naming both plans.
pub fn dependency_failures(
    policy: &PolicyRow,
    sku: &Sku,
    table: &[PlanDependency],
) -> Vec<Failure> {
    let enabled = |name: &str| policy.toggles.get(name).copied().unwrap_or(false);
    let mut failures = Vec::new();
    for dep in table {
        if sku.plan_id(&dep.plan).is_none() || !enabled(&dep.plan) {
            continue;
        }
        let present: Vec<&str> = dep
            .requires
            .iter()
            .map(String::as_str)
            .filter(|r| sku.plan_id(r).is_some())
            .collect();
        if !present.is_empty() && !present.iter().any(|r| enabled(r)) {
            failures.push(Failure {
                item: dep.plan.clone(),
                code: FailureCode::ServicePlanDependency,
                detail: format!(
                    "{} requires {} in {}: the toggles enable {} but not {}",
                    dep.plan,
                    present.join(" or "),
                    policy.licence,
                    dep.plan,
                    present.join(" or ")
                ),
            });
        }
    }
    failures
}

/// Whether `needed` new seats of `sku` fit: the seats left (`prepaidUnits.enabled + warning −
/// consumedUnits`), less those unfinished jobs will still take. A `Suspended` or `LockedOut`
/// SKU gives none. `None`: they fit (or none is needed).
pub fn seat_failure(sku: &Sku, needed: i64, reserved: i64) -> Option<Failure> {
    if needed <= 0 {
        return None;
    }
    let status = sku.capability_status.as_str();
    if matches!(status, "Suspended" | "LockedOut") {
        return Some(Failure {
            item: sku.sku_part_number.clone(),
            code: FailureCode::NoSeatsAvailable,
            detail: format!(
                "{} is {status}: the subscription assigns no new seats, and {needed} users need one",
                sku.sku_part_number
            ),
        });
    }
    let units = &sku.prepaid_units;
    let left = i64::from(units.enabled) + i64::from(units.warning) - i64::from(sku.consumed_units);
    let free = (left - reserved).max(0);
    (needed > free).then(|| Failure {
        item: sku.sku_part_number.clone(),
        code: FailureCode::NoSeatsAvailable,
        detail: format!(
            "{needed} users need a new seat of {} but {free} are free ({} enabled + {} warning \
             − {} consumed − {reserved} that unfinished jobs will take)",
            sku.sku_part_number, units.enabled, units.warning, sku.consumed_units
        ),
    })
}

/// Checks seats at planning for a job whose `needed` users lack `licence`, and records the
/// need on the job so that later jobs count it. Reads the catalogue afresh (seats move) only
/// when a seat is needed. `Some`: the job is rejected with it.
pub async fn check_seats(
    ctx: &mut super::PlanContext<'_, '_>,
    licence: &str,
    needed: i64,
) -> Result<Option<Failure>, EngineError> {
    if needed <= 0 {
        return Ok(None);
    }
    let catalogue = ctx.tenant.refresh_skus().await?;
    let Ok(sku) = catalogue.by_part_number(licence) else {
        return Ok(None);
    };
    let reserved = store::seats_reserved(ctx.tx, licence, ctx.job.id).await?;
    if let Some(failure) = seat_failure(sku, needed, reserved) {
        return Ok(Some(failure));
    }
    if !ctx.job.dry_run {
        store::record_seats(ctx.tx, ctx.job.id, licence, needed).await?;
    }
    Ok(None)
}

/// Whether a job is one the service stored itself to re-verify a policy after a plan was
/// added to its licence ([`crate::store::licensing::REVERIFY_PREFIX`]).
pub fn is_reverification(message_id: &str) -> bool {
    message_id.starts_with(store::REVERIFY_PREFIX)
}

/// The service plan ids of `licence` in `catalogue` (none when it has no such licence).
pub fn plans_of(catalogue: &SkuCatalogue, licence: &str) -> Vec<Uuid> {
    catalogue.by_part_number(licence).map_or_else(
        |_| Vec::new(),
        |sku| {
            sku.service_plans
                .iter()
                .map(|p| p.service_plan_id)
                .collect()
        },
    )
}

/// The cached catalogue, or a fresh one when the cached `licence` lacks a plan the planner saw
/// (`planned`): an applier on another replica must not compute the policy's disabled plans
/// from a catalogue that predates a plan the vendor added.
pub async fn fresh_catalogue(
    tenant: &dyn crate::tenant::Tenant,
    licence: &str,
    planned: &[Uuid],
) -> Result<Arc<SkuCatalogue>, EngineError> {
    let cached = tenant.skus().await?;
    let known = plans_of(&cached, licence);
    if planned.iter().all(|p| known.contains(p)) {
        return Ok(cached);
    }
    Ok(tenant.refresh_skus().await?)
}

/// What direct assignment cannot reach for a user because of a group's licence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreachable {
    /// The failure's detail, naming the group.
    pub detail: String,
    /// The group holds another policy's licence (which a direct assignment of the policy's
    /// licence may conflict with, and which cannot be removed directly).
    pub other_licence: bool,
    /// The groups the detail names (by id).
    pub groups: Vec<Uuid>,
}

impl Unreachable {
    /// The detail with each group named by its display name too (`group 'E3 staff' (id)`),
    /// reading the names the cache `names` lacks from the tenant. A name that cannot be read
    /// leaves the id alone.
    pub async fn detail_naming_groups(
        self,
        tenant: &dyn crate::tenant::Tenant,
        names: &mut std::collections::HashMap<Uuid, String>,
    ) -> String {
        let unknown: Vec<Uuid> = self
            .groups
            .iter()
            .copied()
            .filter(|g| !names.contains_key(g))
            .collect();
        if !unknown.is_empty() {
            names.extend(tenant.group_names(&unknown).await);
        }
        let mut detail = self.detail;
        for g in &self.groups {
            if let Some(name) = names.get(g) {
                detail = detail.replace(&format!("group {g}"), &format!("group '{name}' ({g})"));
            }
        }
        detail
    }
}

/// Decides what the policy asks that direct assignment cannot give `state`: a licence of
/// another policy the user inherits (it cannot be removed directly: Graph refuses with "User
/// license is inherited from a group membership …"), or plans of the policy's licence that the
/// policy disables and a group's licence of that SKU enables (the effective plans are the union
/// of every assignment's). The direct assignment is still brought to the policy (that part is
/// reachable); what is left is reported as `licence_inherited_from_group`, once, not rewritten.
pub fn unreachable(
    state: &UserLicenceState,
    want: &AssignedLicence,
    managed: &HashSet<Uuid>,
    catalogue: &SkuCatalogue,
) -> Option<Unreachable> {
    let part = |sku: Uuid| {
        catalogue
            .by_id(sku)
            .map_or_else(|| sku.to_string(), |s| s.sku_part_number.clone())
    };
    let active = || state.inherited.iter().filter(|i| i.is_active());
    if let Some(other) = active().find(|i| i.sku_id != want.sku_id && managed.contains(&i.sku_id)) {
        return Some(Unreachable {
            detail: format!(
                "holds {} through group {}: a licence inherited from a group cannot be removed \
                 by direct assignment (remove the user from the group, or the licence from it)",
                part(other.sku_id),
                other.group_id
            ),
            other_licence: true,
            groups: vec![other.group_id],
        });
    }
    let plan_name = |plan: Uuid| {
        catalogue
            .by_id(want.sku_id)
            .and_then(|s| s.service_plans.iter().find(|p| p.service_plan_id == plan))
            .map_or_else(|| plan.to_string(), |p| p.service_plan_name.clone())
    };
    let mut reasons = Vec::new();
    let mut groups = Vec::new();
    for inh in active().filter(|i| i.sku_id == want.sku_id) {
        let enabled_by_group: Vec<String> = want
            .disabled_plans
            .iter()
            .filter(|p| !inh.disabled_plans.contains(p))
            .map(|p| plan_name(*p))
            .collect();
        if !enabled_by_group.is_empty() {
            groups.push(inh.group_id);
            reasons.push(format!(
                "group {} assigns {} with {} enabled",
                inh.group_id,
                part(inh.sku_id),
                enabled_by_group.join(", ")
            ));
        }
    }
    (!reasons.is_empty()).then(|| Unreachable {
        detail: format!(
            "{}: the policy disables them, and a direct assignment cannot disable what a \
             group's licence enables (the effective plans are the union)",
            reasons.join("; ")
        ),
        other_licence: false,
        groups,
    })
}

/// The seats of each SKU, as the catalogue watcher read them.
struct SeatsRead<'a>(&'a SkuCatalogue);

impl InternalEvent for SeatsRead<'_> {
    fn emit(self) {
        for sku in self.0.skus() {
            let assignable = match sku.capability_status.as_str() {
                "Suspended" | "LockedOut" => 0,
                _ => sku.prepaid_units.enabled + sku.prepaid_units.warning,
            };
            let label = sku.sku_part_number.clone();
            metrics::gauge!(m::LICENCE_SEATS_CONSUMED, "sku" => label.clone())
                .set(f64::from(sku.consumed_units));
            metrics::gauge!(m::LICENCE_SEATS_ASSIGNABLE, "sku" => label).set(f64::from(assignable));
        }
    }
}

/// Service plans the vendor added to a SKU since the catalogue was last read.
struct PlansAdded<'a>(&'a [store::SeenPlan]);

impl InternalEvent for PlansAdded<'_> {
    fn emit(self) {
        for p in self.0 {
            tracing::info!(
                sku = %p.sku_part_number,
                plan = %p.plan_name,
                "a service plan was added to a licence; its policies are re-verified off-peak"
            );
        }
    }
}

/// Internal jobs stored to re-verify policies whose licence gained a plan.
struct ReverifyStored<'a>(&'a [String]);

impl InternalEvent for ReverifyStored<'_> {
    fn emit(self) {
        for message_id in self.0 {
            tracing::info!(%message_id, "policy re-verification stored");
        }
    }
}

impl Engine {
    /// Re-reads the SKU catalogue every `engine.licensing.catalogue_refresh_seconds` (the first
    /// time at start): seat metrics, and plans added to SKUs. Policies whose licence gained a
    /// plan are re-verified by an internal `policy.changed` job each (same engine, same
    /// applier: toggles are an allow-list, so the new plan ends disabled unless enabled),
    /// stored once an off-peak window is open.
    pub(super) async fn catalogue_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let every = self.settings.licensing.catalogue_refresh();
        loop {
            if let Err(error) = self.watch_catalogue().await {
                tracing::warn!(%error, "reading the licence catalogue failed; trying again later");
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(every) => {}
            }
        }
    }

    async fn watch_catalogue(&self) -> Result<(), EngineError> {
        let catalogue = self.tenant.refresh_skus().await?;
        emit(SeatsRead(&catalogue));
        let plans: Vec<store::SeenPlan> = catalogue
            .skus()
            .iter()
            .flat_map(|sku| {
                sku.service_plans.iter().map(|p| store::SeenPlan {
                    sku_id: sku.sku_id,
                    sku_part_number: sku.sku_part_number.clone(),
                    service_plan_id: p.service_plan_id,
                    plan_name: p.service_plan_name.clone(),
                })
            })
            .collect();
        let added = store::record_plans(&self.pool, &plans).await?;
        emit(PlansAdded(&added));
        if self.off_peak.is_open(self.clock.now()) {
            let stored = store::store_reverify_jobs(&self.pool).await?;
            if !stored.is_empty() {
                emit(ReverifyStored(&stored));
                self.jobs_stored.wake();
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::tenant::{InheritedLicence, ServicePlan, skus::PrepaidUnits};

    fn sku(enabled: u32, consumed: u32, status: &str) -> Sku {
        let plan = |n: u128, name: &str| ServicePlan {
            service_plan_id: Uuid::from_u128(n),
            service_plan_name: name.to_owned(),
            applies_to: "User".to_owned(),
        };
        Sku {
            sku_id: Uuid::from_u128(100),
            sku_part_number: "ENTERPRISEPACK".to_owned(),
            service_plans: vec![
                plan(1, "SHAREPOINTENTERPRISE"),
                plan(2, "SHAREPOINTWAC"),
                plan(3, "SWAY"),
            ],
            prepaid_units: PrepaidUnits {
                enabled,
                warning: 0,
            },
            consumed_units: consumed,
            capability_status: status.to_owned(),
        }
    }

    fn policy(toggles: &[(&str, bool)]) -> PolicyRow {
        PolicyRow {
            id: "p".into(),
            name: "P".into(),
            ods_code: "RX1".into(),
            version: 1,
            licence: "ENTERPRISEPACK".into(),
            toggles: toggles
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect::<BTreeMap<_, _>>(),
        }
    }

    #[test]
    fn a_dependent_plan_without_what_it_requires_is_named_with_it() {
        let table = vec![PlanDependency {
            plan: "SHAREPOINTWAC".into(),
            requires: vec!["SHAREPOINTENTERPRISE".into(), "SHAREPOINTSTANDARD".into()],
        }];
        let s = sku(10, 0, "Enabled");
        let f = dependency_failures(&policy(&[("SHAREPOINTWAC", true)]), &s, &table);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].code, FailureCode::ServicePlanDependency);
        assert!(
            f[0].detail.contains("SHAREPOINTWAC") && f[0].detail.contains("SHAREPOINTENTERPRISE")
        );
        assert!(
            dependency_failures(
                &policy(&[("SHAREPOINTWAC", true), ("SHAREPOINTENTERPRISE", true)]),
                &s,
                &table
            )
            .is_empty()
        );
        assert!(dependency_failures(&policy(&[("SWAY", true)]), &s, &table).is_empty());
    }

    #[test]
    fn seats_count_what_unfinished_jobs_take_and_a_suspended_sku_gives_none() {
        let s = sku(1000, 200, "Enabled");
        let f = seat_failure(&s, 1200, 0).unwrap();
        assert!(
            f.detail
                .starts_with("1200 users need a new seat of ENTERPRISEPACK but 800 are free")
        );
        assert!(seat_failure(&s, 800, 0).is_none());
        assert!(seat_failure(&s, 800, 1).is_some());
        let suspended = seat_failure(&sku(1000, 0, "Suspended"), 1, 0).unwrap();
        assert!(suspended.detail.contains("Suspended"));
        assert!(seat_failure(&sku(0, 0, "Suspended"), 0, 0).is_none());
    }

    #[test]
    fn plans_a_group_enables_are_unreachable_and_name_the_group() {
        let catalogue = SkuCatalogue::new(vec![sku(10, 0, "Enabled")]);
        let group = Uuid::from_u128(77);
        let want = AssignedLicence {
            sku_id: Uuid::from_u128(100),
            disabled_plans: vec![Uuid::from_u128(3)],
        };
        let mut state = UserLicenceState {
            id: Uuid::nil(),
            user_principal_name: "u@nhs.net".into(),
            usage_location: Some("GB".into()),
            assigned_licenses: vec![want.clone()],
            inherited: vec![InheritedLicence {
                sku_id: Uuid::from_u128(100),
                disabled_plans: vec![],
                group_id: group,
                error: None,
            }],
        };
        let managed: HashSet<Uuid> = [want.sku_id].into_iter().collect();
        let u = unreachable(&state, &want, &managed, &catalogue).unwrap();
        assert!(u.detail.contains(&group.to_string()) && u.detail.contains("SWAY"));
        state.inherited[0].disabled_plans = vec![Uuid::from_u128(3)];
        assert!(unreachable(&state, &want, &managed, &catalogue).is_none());
        state.inherited[0].error = Some("CountViolation".into());
        state.inherited[0].disabled_plans = vec![];
        assert!(unreachable(&state, &want, &managed, &catalogue).is_none());
    }
}

//! Licensing rules of the simulated directory beyond `assignLicense` itself: group-based
//! licensing (groups that hold licences, members who inherit them, and the errors Entra ID
//! records on a member it cannot license), service-plan dependencies, conflicts worded as
//! Graph words them, and the SKU changes an administrator or the vendor makes
//! (`capabilityStatus`, seats, a service plan added to a SKU).
//!
//! Sources: entra-docs `docs/identity/users/licensing-groups-resolve-problems.md` (the error
//! states `CountViolation`, `MutuallyExclusiveViolation`, `DependencyViolation`; a user in two
//! groups with one SKU takes one seat), microsoft-graph-docs-contrib
//! `api-reference/v1.0/resources/licenseassignmentstate.md` (`assignedByGroup` null for a
//! direct assignment; `state` `Active` or `Error`; `error` `None` or the violation), and the
//! contract's "Licensing semantics" (tenant.md).
use serde_json::{Value, json};
use uuid::Uuid;

use super::super::catalogue::{CONFLICTING_PLANS, PLAN_DEPENDENCIES};
use super::*;

/// Graph's answer to removing, with `assignLicense`, a licence the user holds only through a
/// group (400; the message Graph and `Set-MgUserLicense` report, tenant.md "Licensing
/// semantics").
pub const INHERITED_REMOVAL_MESSAGE: &str = "User license is inherited from a group membership and it cannot be removed directly from the user.";

/// The licensing rules that change what the simulator did before they existed; each is a
/// [`crate::SimulatorBehaviour`] knob, on in the `realistic` profile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rules {
    /// Refuse an assignment whose disabled plans break a service-plan dependency
    /// ([`PLAN_DEPENDENCIES`]).
    pub plan_dependencies: bool,
    /// Word a conflict as Graph does ("… Conflicting Service Plans: X, Y") rather than the
    /// simulator's older "… are mutually exclusive".
    pub graph_conflict_wording: bool,
}

/// A licence a user inherits from a group.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inherited {
    /// The group that holds it (`assignedByGroup`).
    pub group: Uuid,
    /// The SKU.
    pub sku: Uuid,
    /// The group's disabled plans of that SKU.
    pub disabled: Vec<Uuid>,
    /// Why Entra ID could not give it to the user (`CountViolation`, …), if so; a licence in
    /// error is listed in `licenseAssignmentStates` only, not in `assignedLicenses`.
    pub error: Option<&'static str>,
}

impl Sku {
    /// Seats that can be assigned in all: none while the subscription is `Suspended` or
    /// `LockedOut` (its units are then counted as `suspended` / `lockedOut`, not `enabled`).
    pub(super) fn assignable(&self) -> u32 {
        match self.status.as_str() {
            "Suspended" | "LockedOut" => 0,
            _ => self.enabled + self.warning,
        }
    }

    /// Graph's `prepaidUnits` for the current status.
    pub(super) fn prepaid_units_json(&self) -> Value {
        let (enabled, suspended, locked_out) = match self.status.as_str() {
            "Suspended" => (0, self.enabled, 0),
            "LockedOut" => (0, 0, self.enabled),
            _ => (self.enabled, 0, 0),
        };
        json!({"enabled": enabled, "suspended": suspended, "warning": self.warning,
               "lockedOut": locked_out})
    }

    fn plan_name(&self, id: Uuid) -> Option<&str> {
        self.plans.iter().find(|p| p.0 == id).map(|p| p.1.as_str())
    }

    fn plan_named(&self, name: &str) -> Option<Uuid> {
        self.plans.iter().find(|p| p.1 == name).map(|p| p.0)
    }

    /// Whether the SKU has the plan `name` and `disabled` leaves it enabled.
    fn enables(&self, name: &str, disabled: &[Uuid]) -> bool {
        self.plan_named(name)
            .is_some_and(|id| !disabled.contains(&id))
    }
}

/// The plans a SKU's assignments disable together: a plan is disabled only when every
/// assignment of the SKU disables it (the effective plans are the union of what each enables).
fn effective_disabled<'a>(mut sources: impl Iterator<Item = &'a Vec<Uuid>>) -> Vec<Uuid> {
    let mut disabled: Vec<Uuid> = sources.next().cloned().unwrap_or_default();
    for other in sources {
        disabled.retain(|p| other.contains(p));
    }
    disabled
}

/// Why two different SKUs, held with these disabled plans, cannot be held together: the names
/// of the two plans to report. Either a seed's exclusive group (simulator-only; the first plan of
/// each is named) or a documented pair of conflicting plans ([`CONFLICTING_PLANS`]), each enabled
/// in one of them.
fn conflict(
    a: &Sku,
    a_disabled: &[Uuid],
    b: &Sku,
    b_disabled: &[Uuid],
) -> Option<(String, String)> {
    if a.id == b.id {
        return None;
    }
    if a.exclusive_group.is_some() && a.exclusive_group == b.exclusive_group {
        let first = |s: &Sku| s.plans.first().map(|p| p.1.clone()).unwrap_or_default();
        return Some((first(a), first(b)));
    }
    CONFLICTING_PLANS.iter().find_map(|&(x, y)| {
        [(x, y), (y, x)]
            .into_iter()
            .find(|(p, q)| a.enables(p, a_disabled) && b.enables(q, b_disabled))
            .map(|(p, q)| (p.to_owned(), q.to_owned()))
    })
}

impl User {
    /// Whether the user holds `sku` through a group (without error).
    pub(super) fn inherits(&self, sku: Uuid) -> bool {
        self.inherited
            .iter()
            .any(|i| i.sku == sku && i.error.is_none())
    }

    /// Every SKU the user holds, directly or through a group, each once (one seat each).
    pub(super) fn held(&self) -> Vec<Uuid> {
        let mut held: Vec<Uuid> = self.licences.iter().map(|(s, _)| *s).collect();
        for i in self.inherited.iter().filter(|i| i.error.is_none()) {
            if !held.contains(&i.sku) {
                held.push(i.sku);
            }
        }
        held
    }

    /// Graph's `assignedLicenses`: one entry per SKU held, direct or inherited; a plan is
    /// disabled only when every assignment of the SKU disables it (the effective plans are the
    /// union of what each enables).
    pub(super) fn assigned_licenses_json(&self) -> Vec<Value> {
        self.held()
            .into_iter()
            .map(|sku| {
                let sources = self
                    .licences
                    .iter()
                    .filter(|(s, _)| *s == sku)
                    .map(|(_, d)| d)
                    .chain(
                        self.inherited
                            .iter()
                            .filter(|i| i.sku == sku && i.error.is_none())
                            .map(|i| &i.disabled),
                    );
                json!({"disabledPlans": effective_disabled(sources), "skuId": sku})
            })
            .collect()
    }

    /// Graph's `licenseAssignmentStates`: every assignment, direct (`assignedByGroup` null)
    /// and inherited, with its state and error.
    pub(super) fn assignment_states_json(&self) -> Vec<Value> {
        let direct = self.licences.iter().map(|(sku, disabled)| {
            json!({"skuId": sku, "disabledPlans": disabled, "assignedByGroup": null,
                   "state": "Active", "error": "None", "lastUpdatedDateTime": null})
        });
        let inherited = self.inherited.iter().map(|i| {
            json!({"skuId": i.sku, "disabledPlans": i.disabled, "assignedByGroup": i.group,
                   "state": if i.error.is_some() { "Error" } else { "Active" },
                   "error": i.error.unwrap_or("None"), "lastUpdatedDateTime": null})
        });
        direct.chain(inherited).collect()
    }
}

impl Directory {
    /// Refuses `disabled` plans of `sku` that leave a plan enabled whose required plans are all
    /// disabled (when the rule is on). The wording is the one entra-docs
    /// `licensing-groups-resolve-problems.md` quotes ("Manage licenses for products with
    /// prerequisites"), for a user or a group as `holder` says.
    pub(super) fn check_dependencies(
        &self,
        sku: &Sku,
        disabled: &[Uuid],
        holder: &str,
    ) -> Result<(), GraphError> {
        if !self.rules.plan_dependencies {
            return Ok(());
        }
        for (dependent, required) in PLAN_DEPENDENCIES {
            let Some(dep) = sku.plan_named(dependent) else {
                continue;
            };
            if disabled.contains(&dep) {
                continue;
            }
            let present: Vec<(Uuid, &str)> = required
                .iter()
                .filter_map(|r| sku.plan_named(r).map(|id| (id, *r)))
                .collect();
            if !present.is_empty() && present.iter().all(|(id, _)| disabled.contains(id)) {
                return Err(GraphError::bad_request(format!(
                    "License operation failed. Make sure that the {holder} has necessary services \
                     before adding or removing a dependent service. The service {dependent} \
                     requires {} to be enabled as well.",
                    present[0].1
                )));
            }
        }
        Ok(())
    }

    /// The refusal of two SKUs whose plans conflict, naming the conflicting plans (see
    /// `conflict`).
    ///
    /// Graph's wording ends "Conflicting Service Plans: X, Y"; the part before it is not
    /// published (entra-docs `licensing-groups-resolve-problems.md`, "Conflicting service
    /// plans", describes the refusal; MSOnline's wording, quoted in MicrosoftDocs/azure-docs
    /// issue 96390, is "This set of licenses includes two or more service plans which cannot
    /// be assigned at the same time", followed by the plans), so the simulator uses that
    /// sentence before the list. With the rule off, the simulator's older wording.
    pub(super) fn conflict_error(&self, (a, b): (String, String)) -> GraphError {
        if self.rules.graph_conflict_wording {
            GraphError::bad_request(format!(
                "Unable to update license for this user. This set of licenses includes two or \
                 more service plans which cannot be assigned at the same time. Conflicting \
                 Service Plans: {a}, {b}"
            ))
        } else {
            GraphError::bad_request(format!(
                "License assignment failed because service plans {a} and {b} are mutually exclusive."
            ))
        }
    }

    /// Recomputes what `uid` inherits from the groups it is a direct member of, as Entra ID's
    /// group-licensing processing does after a membership or group-licence change, and moves the
    /// seats: a SKU newly held takes one, a SKU no longer held by any path frees one.
    pub(super) fn recompute_inherited(&mut self, uid: Uuid) {
        let Some(user) = self.users.get(&uid) else {
            return;
        };
        let before = user.held();
        let mut held: Vec<Uuid> = user.licences.iter().map(|(s, _)| *s).collect();
        // Every assignment the user holds so far (direct, then inherited without error), for
        // the plans each SKU enables.
        let mut accepted: Vec<(Uuid, Vec<Uuid>)> = user.licences.clone();
        let groups: Vec<Uuid> = self
            .member_of
            .get(&uid)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        let mut inherited = Vec::new();
        for gid in groups {
            let Some(group) = self.groups.get(&gid) else {
                continue;
            };
            for (sku_id, disabled) in &group.licences {
                let Some(&i) = self.sku_index.get(sku_id) else {
                    continue;
                };
                let sku = &self.skus[i];
                let conflicting = |other: &Uuid| {
                    self.sku_index.get(other).is_some_and(|&j| {
                        let held_disabled = effective_disabled(
                            accepted.iter().filter(|(s, _)| s == other).map(|(_, d)| d),
                        );
                        conflict(sku, disabled, &self.skus[j], &held_disabled).is_some()
                    })
                };
                let error = if held.iter().any(conflicting) {
                    Some("MutuallyExclusiveViolation")
                } else if self.check_dependencies(sku, disabled, "group").is_err() {
                    Some("DependencyViolation")
                } else if !held.contains(sku_id)
                    && !before.contains(sku_id)
                    && sku.consumed >= sku.assignable()
                {
                    Some("CountViolation")
                } else {
                    None
                };
                if error.is_none() {
                    if !held.contains(sku_id) {
                        held.push(*sku_id);
                    }
                    accepted.push((*sku_id, disabled.clone()));
                }
                inherited.push(Inherited {
                    group: gid,
                    sku: *sku_id,
                    disabled: disabled.clone(),
                    error,
                });
            }
        }
        let user = self.users.get_mut(&uid).expect("checked above");
        user.inherited = inherited;
        let after = user.held();
        for sku in after.iter().filter(|s| !before.contains(s)) {
            if let Some(&i) = self.sku_index.get(sku) {
                self.skus[i].consumed += 1;
            }
        }
        for sku in before.iter().filter(|s| !after.contains(s)) {
            if let Some(&i) = self.sku_index.get(sku) {
                self.skus[i].consumed = self.skus[i].consumed.saturating_sub(1);
            }
        }
    }

    fn checked_licences(&self, licences: &[(Uuid, Vec<Uuid>)]) -> Result<(), GraphError> {
        for (sku_id, disabled) in licences {
            let Some(&i) = self.sku_index.get(sku_id) else {
                return Err(GraphError::bad_request(format!(
                    "License {sku_id} does not correspond to a valid company License."
                )));
            };
            if let Some(bad) = disabled.iter().find(|p| !self.skus[i].plan_ids.contains(p)) {
                return Err(GraphError::bad_request(format!(
                    "Invalid disabled plan id {bad}: the service plan is not part of the license {sku_id}."
                )));
            }
        }
        Ok(())
    }

    /// Sets the licences a group holds (replacing them) and reprocesses its members.
    pub fn set_group_licences(
        &mut self,
        gid: Uuid,
        licences: Vec<(Uuid, Vec<Uuid>)>,
    ) -> Result<(), GraphError> {
        self.checked_licences(&licences)?;
        let group = self
            .groups
            .get_mut(&gid)
            .ok_or_else(|| GraphError::not_found(&gid.to_string()))?;
        group.licences = licences;
        let members: Vec<Uuid> = group.members.iter().copied().collect();
        for uid in members {
            self.recompute_inherited(uid);
        }
        Ok(())
    }

    /// Adds users (ids or UPNs) to a group, outside any Graph call (no replication lag), each
    /// reprocessed for the group's licences.
    pub fn add_group_members(&mut self, gid: Uuid, members: &[String]) -> Result<(), GraphError> {
        if !self.groups.contains_key(&gid) {
            return Err(GraphError::not_found(&gid.to_string()));
        }
        let ids = members
            .iter()
            .map(|m| self.resolve_user(m).ok_or_else(|| GraphError::not_found(m)))
            .collect::<Result<Vec<_>, _>>()?;
        for uid in ids {
            self.insert_member(gid, uid);
        }
        Ok(())
    }

    /// Creates a security group that holds `licences`, with `members` (admin route).
    pub fn create_licensed_group(
        &mut self,
        display_name: &str,
        licences: Vec<(Uuid, Vec<Uuid>)>,
        members: &[String],
    ) -> Result<Uuid, GraphError> {
        self.checked_licences(&licences)?;
        let id = Uuid::new_v4();
        self.insert_group(super::Group {
            id,
            display_name: display_name.to_owned(),
            mail_nickname: display_name.replace(' ', ""),
            unique_name: None,
            description: None,
            members: Default::default(),
            licences: Vec::new(),
        });
        self.add_group_members(id, members)?;
        self.set_group_licences(id, licences)?;
        Ok(id)
    }

    fn sku_mut(&mut self, part_number: &str) -> Result<&mut Sku, GraphError> {
        self.skus
            .iter_mut()
            .find(|s| s.part_number.eq_ignore_ascii_case(part_number))
            .ok_or_else(|| GraphError::not_found(part_number))
    }

    /// Adds a service plan to a SKU, as the vendor does: users who hold the SKU have it
    /// enabled at once (their `disabledPlans` do not list it). The id is generated when not
    /// given. Returns the plan.
    pub fn add_service_plan(
        &mut self,
        part_number: &str,
        id: Option<Uuid>,
        name: &str,
    ) -> Result<Value, GraphError> {
        let sku = self.sku_mut(part_number)?;
        if sku.plans.iter().any(|p| p.1 == name) || id.is_some_and(|i| sku.plan_ids.contains(&i)) {
            return Err(GraphError::new(
                409,
                "Request_BadRequest",
                format!("{part_number} already has the service plan {name}"),
            ));
        }
        let id = id.unwrap_or_else(Uuid::new_v4);
        sku.plans.push((id, name.to_owned(), "User".to_owned()));
        sku.plan_ids.insert(id);
        Ok(json!({"servicePlanId": id, "servicePlanName": name, "appliesTo": "User"}))
    }

    /// Changes a SKU's `capabilityStatus` (`Enabled`, `Warning`, `Suspended`, `LockedOut`) and
    /// seats (`prepaidUnits.enabled`, `prepaidUnits.warning`) from a partial JSON object.
    pub fn update_sku(&mut self, part_number: &str, patch: &Value) -> Result<Value, GraphError> {
        let status = match patch.get("capabilityStatus") {
            None => None,
            Some(Value::String(s))
                if ["Enabled", "Warning", "Suspended", "LockedOut"].contains(&s.as_str()) =>
            {
                Some(s.clone())
            }
            Some(other) => {
                return Err(GraphError::bad_request(format!(
                    "capabilityStatus must be Enabled, Warning, Suspended or LockedOut, not {other}"
                )));
            }
        };
        let units = |k: &str| {
            patch
                .get("prepaidUnits")
                .and_then(|p| p.get(k))
                .and_then(Value::as_u64)
                .map(|n| n as u32)
        };
        let (enabled, warning) = (units("enabled"), units("warning"));
        let sku = self.sku_mut(part_number)?;
        if let Some(s) = status {
            sku.status = s;
        }
        if let Some(n) = enabled {
            sku.enabled = n;
        }
        if let Some(n) = warning {
            sku.warning = n;
        }
        Ok(
            json!({"skuPartNumber": sku.part_number, "capabilityStatus": sku.status,
                  "prepaidUnits": sku.prepaid_units_json(), "consumedUnits": sku.consumed,
                  "servicePlans": sku.plans.iter().filter_map(|p| sku.plan_name(p.0)).collect::<Vec<_>>()}),
        )
    }
}

/// A validated `assignLicense` body.
#[derive(Debug, Clone)]
pub struct AssignLicense {
    /// (skuId, disabledPlans).
    pub add: Vec<(Uuid, Vec<Uuid>)>,
    /// SKUs to remove.
    pub remove: Vec<Uuid>,
}

impl AssignLicense {
    /// Parses Graph's body `{"addLicenses":[{"skuId","disabledPlans"}],"removeLicenses":[…]}`.
    ///
    /// Both parameters are required, `[]` when there is nothing to add or remove
    /// (microsoft-graph-docs-contrib `api-reference/v1.0/api/user-assignlicense.md`, "Request
    /// body": removeLicenses "Required. Can be an empty collection."). A body without one answers
    /// as Graph does, 400 `Request_BadRequest` "One or more parameters of the operation
    /// 'assignLicense' are missing from the request payload. The missing parameters are:
    /// addLicenses." (the docs give no wording; this is Graph's answer recorded in
    /// microsoftgraph/msgraph-sdk-powershell issues 3231 and 3361, and seen by the Python SDK
    /// for `removeLicenses`). Both missing: both named, comma-separated.
    pub fn parse(body: &Value) -> Result<Self, GraphError> {
        let bad = |m: &str| GraphError::new(400, "BadRequest", m.to_owned());
        let obj = body
            .as_object()
            .ok_or_else(|| bad("Empty Payload. JSON content expected."))?;
        let missing: Vec<&str> = ["addLicenses", "removeLicenses"]
            .into_iter()
            .filter(|k| !obj.contains_key(*k))
            .collect();
        if !missing.is_empty() {
            return Err(GraphError::bad_request(format!(
                "One or more parameters of the operation 'assignLicense' are missing from the \
                 request payload. The missing parameters are: {}.",
                missing.join(", ")
            )));
        }
        let uuid_of = |v: &Value| -> Result<Uuid, GraphError> {
            v.as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| bad("Invalid GUID in request."))
        };
        let adds = obj
            .get("addLicenses")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("The parameter 'addLicenses' is not an array."))?;
        let removes = obj
            .get("removeLicenses")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("The parameter 'removeLicenses' is not an array."))?;
        let mut add = Vec::new();
        for a in adds {
            let sku = uuid_of(a.get("skuId").unwrap_or(&Value::Null))?;
            let disabled = match a.get("disabledPlans") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(list)) => list.iter().map(uuid_of).collect::<Result<_, _>>()?,
                Some(_) => return Err(bad("disabledPlans must be an array.")),
            };
            add.push((sku, disabled));
        }
        let remove = removes.iter().map(uuid_of).collect::<Result<_, _>>()?;
        Ok(Self { add, remove })
    }
}

impl Directory {
    /// `POST /users/{id or upn}/assignLicense`: validates everything first, then applies atomically.
    ///
    /// Licences inherited from groups (this module) take part: a SKU held through a group
    /// takes no second seat, conflicts with it are refused, and removing it directly is refused
    /// with Graph's message ([`INHERITED_REMOVAL_MESSAGE`]); a direct assignment beside it is
    /// allowed.
    pub fn assign_license(&mut self, key: &str, req: &AssignLicense) -> Result<Value, GraphError> {
        let id = self
            .resolve_user(key)
            .ok_or_else(|| GraphError::not_found(key))?;
        let user = &self.users[&id];
        for (sku_id, disabled) in &req.add {
            let Some(&i) = self.sku_index.get(sku_id) else {
                return Err(GraphError::bad_request(format!(
                    "License {sku_id} does not correspond to a valid company License."
                )));
            };
            let sku = &self.skus[i];
            if let Some(bad) = disabled.iter().find(|p| !sku.plan_ids.contains(p)) {
                return Err(GraphError::bad_request(format!(
                    "Invalid disabled plan id {bad}: the service plan is not part of the license {sku_id}."
                )));
            }
            if req.remove.contains(sku_id) {
                return Err(GraphError::bad_request(format!(
                    "License {sku_id} cannot be both added and removed."
                )));
            }
            self.check_dependencies(sku, disabled, "user")?;
        }
        for sku_id in &req.remove {
            if !user.licences.iter().any(|(s, _)| s == sku_id) {
                if user.inherits(*sku_id) {
                    return Err(GraphError::bad_request(INHERITED_REMOVAL_MESSAGE));
                }
                return Err(GraphError::bad_request(format!(
                    "User does not have a corresponding license {sku_id}."
                )));
            }
        }
        if !req.add.is_empty() && user.usage_location.as_deref().is_none_or(str::is_empty) {
            return Err(GraphError::bad_request(USAGE_LOCATION_MESSAGE));
        }
        let held_before = user.held();
        // The licences the user would hold directly afterwards.
        let mut after: Vec<(Uuid, Vec<Uuid>)> = user
            .licences
            .iter()
            .filter(|(s, _)| !req.remove.contains(s))
            .cloned()
            .collect();
        for (sku_id, disabled) in &req.add {
            let mut disabled = disabled.clone();
            disabled.sort();
            disabled.dedup();
            match after.iter_mut().find(|(s, _)| s == sku_id) {
                Some(existing) => existing.1 = disabled,
                None => after.push((*sku_id, disabled)),
            }
        }
        // Every SKU held afterwards: direct ones and those inherited without error.
        let mut held_after: Vec<Uuid> = after.iter().map(|(s, _)| *s).collect();
        for sku in user
            .inherited
            .iter()
            .filter(|i| i.error.is_none())
            .map(|i| i.sku)
        {
            if !held_after.contains(&sku) {
                held_after.push(sku);
            }
        }
        // Each SKU held afterwards with the plans its assignments disable together.
        let effective: Vec<(&Sku, Vec<Uuid>)> = held_after
            .iter()
            .map(|sku| {
                let sources = after
                    .iter()
                    .filter(|(s, _)| s == sku)
                    .map(|(_, d)| d)
                    .chain(
                        user.inherited
                            .iter()
                            .filter(|i| i.sku == *sku && i.error.is_none())
                            .map(|i| &i.disabled),
                    );
                (&self.skus[self.sku_index[sku]], effective_disabled(sources))
            })
            .collect();
        for (i, (sa, da)) in effective.iter().enumerate() {
            for (sb, db) in &effective[i + 1..] {
                if let Some(plans) = conflict(sa, da, sb, db) {
                    return Err(self.conflict_error(plans));
                }
            }
        }
        let newly_added: Vec<Uuid> = held_after
            .iter()
            .copied()
            .filter(|s| !held_before.contains(s))
            .collect();
        for sku_id in &newly_added {
            let sku = &self.skus[self.sku_index[sku_id]];
            if sku.consumed >= sku.assignable() {
                return Err(GraphError::bad_request(format!(
                    "Subscription {} ({}) does not have any available licenses.",
                    sku.part_number, sku.id
                )));
            }
        }
        // Validated: apply.
        for sku_id in &newly_added {
            let i = self.sku_index[sku_id];
            self.skus[i].consumed += 1;
        }
        for sku_id in held_before.iter().filter(|s| !held_after.contains(s)) {
            let i = self.sku_index[sku_id];
            self.skus[i].consumed = self.skus[i].consumed.saturating_sub(1);
        }
        let lag = write_lag();
        let user = self.users.get_mut(&id).expect("resolved above");
        if let Some((now, lag)) = lag {
            self.replication
                .user_written(id, Some(user.clone()), now, lag);
        }
        user.licences = after;
        // Graph answers with the user's default properties (not its licences): clients must read.
        select(user.json(), None, Some(USER_DEFAULT_PROPERTIES), "user")
    }
}

//! The simulated directory: SKUs with seats, users, security groups, and Graph's rules about them.
//!
//! Every operation takes the lock once, does O(1) or O(log n) work on indexed maps and returns a
//! Graph-shaped JSON value or a [`GraphError`]. No operation scans all users.
use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::Bound;

use serde_json::{Value, json};
use uuid::Uuid;

use super::catalogue::{Seed, SeedSku};

/// An error in Graph's shape: `{"error":{"code","message"}}` with an HTTP status.
#[derive(Debug, Clone, PartialEq)]
pub struct GraphError {
    /// HTTP status.
    pub status: u16,
    /// Graph's error code, e.g. `Request_ResourceNotFound`.
    pub code: &'static str,
    /// Human-readable message (clients match some of these, as they must with real Graph).
    pub message: String,
}

impl GraphError {
    pub(crate) fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "Request_BadRequest", message)
    }

    pub(crate) fn not_found(id: &str) -> Self {
        Self::new(
            404,
            "Request_ResourceNotFound",
            format!(
                "Resource '{id}' does not exist or one of its queried reference-property objects are not present."
            ),
        )
    }

    /// The JSON body Graph sends with this error; its `innerError` carries the ids and date of
    /// the response it is sent in (Graph's `concepts/errors.md` and the inner 403/405 examples of
    /// `concepts/json-batching.md`, microsoft-graph-docs-contrib).
    pub fn body(&self, ids: &RequestIds) -> Value {
        json!({"error": {"code": self.code, "message": self.message,
            "innerError": {"date": ids.date.format("%Y-%m-%dT%H:%M:%S").to_string(),
                           "request-id": ids.request_id,
                           "client-request-id": ids.client_request_id}}})
    }
}

/// The ids Graph gives one response (or one inner `$batch` response): its own `request-id`, the
/// caller's `client-request-id` echoed, and the time. Microsoft asks clients to log these for
/// support cases (microsoft-graph-docs-contrib `concepts/best-practices-concept.md`,
/// "Reliability and support").
#[derive(Debug, Clone)]
pub struct RequestIds {
    /// A new UUID per response.
    pub request_id: String,
    /// The request's `client-request-id`, or else the `request-id`: what Graph is seen to answer
    /// when a client sends none (the docs are silent; observed in recorded responses).
    pub client_request_id: String,
    /// When the response was made.
    pub date: chrono::DateTime<chrono::Utc>,
}

impl RequestIds {
    /// Ids for a response to a request that sent `client_request_id` (if any).
    pub fn new(client_request_id: Option<&str>) -> Self {
        let request_id = Uuid::new_v4().to_string();
        Self {
            client_request_id: client_request_id
                .filter(|c| !c.is_empty())
                .map_or_else(|| request_id.clone(), str::to_owned),
            request_id,
            date: chrono::Utc::now(),
        }
    }

    /// The `Date` header value (RFC 7231's IMF-fixdate).
    pub fn http_date(&self) -> String {
        self.date.format("%a, %d %b %Y %H:%M:%S GMT").to_string()
    }
}

/// The exact message Graph gives when a user without usage location is licensed.
pub const USAGE_LOCATION_MESSAGE: &str =
    "License assignment cannot be done for user with invalid usage location.";

struct Sku {
    id: Uuid,
    part_number: String,
    plans: Vec<(Uuid, String, String)>,
    plan_ids: HashSet<Uuid>,
    enabled: u32,
    consumed: u32,
    exclusive_group: Option<String>,
}

/// A simulated user (only what the reconciler touches plus Graph's default properties).
#[derive(Debug, Clone)]
struct User {
    id: Uuid,
    upn: String,
    display_name: String,
    mail_nickname: String,
    account_enabled: bool,
    usage_location: Option<String>,
    /// (skuId, disabledPlans) in assignment order.
    licences: Vec<(Uuid, Vec<Uuid>)>,
}

struct Group {
    id: Uuid,
    display_name: String,
    mail_nickname: String,
    /// Ordered so that `$skiptoken` paging is a cheap range query with stable pages.
    members: BTreeSet<Uuid>,
}

/// The directory behind the simulator's lock.
#[derive(Default)]
pub struct Directory {
    skus: Vec<Sku>,
    sku_index: HashMap<Uuid, usize>,
    users: HashMap<Uuid, User>,
    /// Lower-cased UPN -> id: UPN lookups are case-insensitive in Graph.
    upn_index: HashMap<String, Uuid>,
    groups: HashMap<Uuid, Group>,
    /// Lower-cased displayName -> ids (display names are not unique in Graph).
    group_names: HashMap<String, Vec<Uuid>>,
    /// User id -> the groups they are a direct member of, ordered so that `memberOf` pages
    /// like `members` (a range after the skip token), without scanning every group.
    member_of: HashMap<Uuid, BTreeSet<Uuid>>,
}

const USER_DEFAULT_PROPERTIES: &[&str] = &[
    "businessPhones",
    "displayName",
    "givenName",
    "jobTitle",
    "mail",
    "mobilePhone",
    "officeLocation",
    "preferredLanguage",
    "surname",
    "userPrincipalName",
    "id",
];

/// Applies a `$select` to a full object; without one, `defaults` (if given) are kept.
fn select(
    full: Value,
    select: Option<&str>,
    defaults: Option<&[&str]>,
    type_name: &str,
) -> Result<Value, GraphError> {
    let Value::Object(map) = full else {
        return Ok(full);
    };
    let wanted: Vec<String> = match (select, defaults) {
        (Some(s), _) => s.split(',').map(|p| p.trim().to_owned()).collect(),
        (None, Some(d)) => d.iter().map(|p| (*p).to_owned()).collect(),
        (None, None) => return Ok(Value::Object(map)),
    };
    let mut out = serde_json::Map::new();
    for p in wanted.iter().filter(|p| !p.is_empty()) {
        let Some((k, v)) = map.iter().find(|(k, _)| k.eq_ignore_ascii_case(p)) else {
            return Err(GraphError::new(
                400,
                "BadRequest",
                format!(
                    "Could not find a property named '{p}' on type 'microsoft.graph.{type_name}'."
                ),
            ));
        };
        out.insert(k.clone(), v.clone());
    }
    Ok(Value::Object(out))
}

impl User {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "businessPhones": [],
            "displayName": self.display_name,
            "givenName": null,
            "jobTitle": null,
            "mail": null,
            "mobilePhone": null,
            "officeLocation": null,
            "preferredLanguage": null,
            "surname": null,
            "userPrincipalName": self.upn,
            "mailNickname": self.mail_nickname,
            "accountEnabled": self.account_enabled,
            "usageLocation": self.usage_location,
            "assignedLicenses": self.licences.iter().map(|(sku, disabled)| json!({
                "disabledPlans": disabled, "skuId": sku})).collect::<Vec<_>>(),
        })
    }
}

impl Group {
    fn json(&self) -> Value {
        json!({
            "id": self.id,
            "displayName": self.display_name,
            "mailNickname": self.mail_nickname,
            "mailEnabled": false,
            "securityEnabled": true,
            "groupTypes": [],
            "description": null,
        })
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
    pub fn parse(body: &Value) -> Result<Self, GraphError> {
        let bad = |m: &str| GraphError::new(400, "BadRequest", m.to_owned());
        let obj = body
            .as_object()
            .ok_or_else(|| bad("Empty Payload. JSON content expected."))?;
        let uuid_of = |v: &Value| -> Result<Uuid, GraphError> {
            v.as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
                .ok_or_else(|| bad("Invalid GUID in request."))
        };
        let adds = obj
            .get("addLicenses")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("The parameter 'addLicenses' is missing or not an array."))?;
        let removes = obj
            .get("removeLicenses")
            .and_then(Value::as_array)
            .ok_or_else(|| bad("The parameter 'removeLicenses' is missing or not an array."))?;
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
    /// A directory with the given catalogue and no users or groups.
    pub fn with_catalogue(skus: &[SeedSku]) -> Self {
        let mut d = Self::default();
        d.set_catalogue(skus);
        d
    }

    fn set_catalogue(&mut self, skus: &[SeedSku]) {
        self.skus = skus
            .iter()
            .map(|s| Sku {
                id: s.sku_id,
                part_number: s.sku_part_number.clone(),
                plans: s
                    .service_plans
                    .iter()
                    .map(|p| {
                        (
                            p.service_plan_id,
                            p.service_plan_name.clone(),
                            p.applies_to.clone(),
                        )
                    })
                    .collect(),
                plan_ids: s.service_plans.iter().map(|p| p.service_plan_id).collect(),
                enabled: s.prepaid_units.enabled,
                consumed: 0,
                exclusive_group: s.mutually_exclusive_group.clone(),
            })
            .collect();
        self.sku_index = self
            .skus
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        for u in self.users.values() {
            for (sku, _) in &u.licences {
                if let Some(&i) = self.sku_index.get(sku) {
                    self.skus[i].consumed += 1;
                }
            }
        }
    }

    /// Loads a seed: replaces the catalogue when it has one, then adds users and groups.
    pub fn seed(&mut self, seed: &Seed) -> Result<(), GraphError> {
        if let Some(skus) = &seed.skus {
            self.set_catalogue(skus);
        }
        for u in &seed.users {
            let id = u.id.unwrap_or_else(Uuid::new_v4);
            let nickname = u
                .user_principal_name
                .split('@')
                .next()
                .unwrap_or_default()
                .to_owned();
            self.insert_user(User {
                id,
                upn: u.user_principal_name.clone(),
                display_name: u.display_name.clone().unwrap_or_else(|| nickname.clone()),
                mail_nickname: nickname,
                account_enabled: true,
                usage_location: u.usage_location.clone(),
                licences: Vec::new(),
            })?;
            if !u.assigned_licenses.is_empty() {
                let req = AssignLicense {
                    add: u
                        .assigned_licenses
                        .iter()
                        .map(|l| (l.sku_id, l.disabled_plans.clone()))
                        .collect(),
                    remove: Vec::new(),
                };
                self.assign_license(&id.to_string(), &req)?;
            }
        }
        for g in &seed.groups {
            let id = g.id.unwrap_or_else(Uuid::new_v4);
            self.insert_group(Group {
                id,
                display_name: g.display_name.clone(),
                mail_nickname: g.display_name.replace(' ', ""),
                members: BTreeSet::new(),
            });
            for m in &g.members {
                let uid = self
                    .resolve_user(m)
                    .ok_or_else(|| GraphError::not_found(m))?;
                if let Some(group) = self.groups.get_mut(&id) {
                    group.members.insert(uid);
                    self.member_of.entry(uid).or_default().insert(id);
                }
            }
        }
        Ok(())
    }

    fn insert_user(&mut self, user: User) -> Result<(), GraphError> {
        let key = user.upn.to_lowercase();
        if self.upn_index.contains_key(&key) || self.users.contains_key(&user.id) {
            return Err(GraphError::bad_request(
                "Another object with the same value for property userPrincipalName already exists.",
            ));
        }
        self.upn_index.insert(key, user.id);
        self.users.insert(user.id, user);
        Ok(())
    }

    fn insert_group(&mut self, group: Group) {
        self.group_names
            .entry(group.display_name.to_lowercase())
            .or_default()
            .push(group.id);
        self.groups.insert(group.id, group);
    }

    /// Resolves an id or a user principal name (case-insensitive) to a user id.
    pub fn resolve_user(&self, key: &str) -> Option<Uuid> {
        match Uuid::parse_str(key) {
            Ok(id) if self.users.contains_key(&id) => Some(id),
            _ => self.upn_index.get(&key.to_lowercase()).copied(),
        }
    }

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// `GET /subscribedSkus`.
    pub fn subscribed_skus(&self) -> Value {
        let value: Vec<Value> = self
            .skus
            .iter()
            .map(|s| {
                json!({
                    "capabilityStatus": "Enabled",
                    "consumedUnits": s.consumed,
                    "id": format!("00000000-0000-0000-0000-000000000000_{}", s.id),
                    "skuId": s.id,
                    "skuPartNumber": s.part_number,
                    "appliesTo": "User",
                    "prepaidUnits": {"enabled": s.enabled, "suspended": 0, "warning": 0, "lockedOut": 0},
                    "servicePlans": s.plans.iter().map(|(id, name, applies)| json!({
                        "servicePlanId": id, "servicePlanName": name,
                        "provisioningStatus": "Success", "appliesTo": applies})).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({ "value": value })
    }

    /// `GET /users/{id or upn}` with an optional `$select`.
    pub fn get_user(&self, key: &str, selection: Option<&str>) -> Result<Value, GraphError> {
        let id = self
            .resolve_user(key)
            .ok_or_else(|| GraphError::not_found(key))?;
        select(
            self.users[&id].json(),
            selection,
            Some(USER_DEFAULT_PROPERTIES),
            "user",
        )
    }

    /// The full JSON of a user (simulator inspection).
    pub fn user_json(&self, key: &str) -> Option<Value> {
        self.resolve_user(key).map(|id| self.users[&id].json())
    }

    /// `POST /users/{id or upn}/assignLicense`: validates everything first, then applies atomically.
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
        }
        for sku_id in &req.remove {
            if !user.licences.iter().any(|(s, _)| s == sku_id) {
                return Err(GraphError::bad_request(format!(
                    "User does not have a corresponding license {sku_id}."
                )));
            }
        }
        if !req.add.is_empty() && user.usage_location.as_deref().is_none_or(str::is_empty) {
            return Err(GraphError::bad_request(USAGE_LOCATION_MESSAGE));
        }
        // The licences the user would hold afterwards.
        let mut after: Vec<(Uuid, Vec<Uuid>)> = user
            .licences
            .iter()
            .filter(|(s, _)| !req.remove.contains(s))
            .cloned()
            .collect();
        let mut newly_added = Vec::new();
        for (sku_id, disabled) in &req.add {
            let mut disabled = disabled.clone();
            disabled.sort();
            disabled.dedup();
            match after.iter_mut().find(|(s, _)| s == sku_id) {
                Some(existing) => existing.1 = disabled,
                None => {
                    after.push((*sku_id, disabled));
                    if !user.licences.iter().any(|(s, _)| s == sku_id) {
                        newly_added.push(*sku_id);
                    }
                }
            }
        }
        for (i, (a, _)) in after.iter().enumerate() {
            let sa = &self.skus[self.sku_index[a]];
            for (b, _) in &after[i + 1..] {
                let sb = &self.skus[self.sku_index[b]];
                if sa.exclusive_group.is_some() && sa.exclusive_group == sb.exclusive_group {
                    let first = |s: &Sku| s.plans.first().map(|p| p.1.clone()).unwrap_or_default();
                    return Err(GraphError::bad_request(format!(
                        "License assignment failed because service plans {} and {} are mutually exclusive.",
                        first(sa),
                        first(sb)
                    )));
                }
            }
        }
        for sku_id in &newly_added {
            let sku = &self.skus[self.sku_index[sku_id]];
            if sku.consumed >= sku.enabled {
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
        for sku_id in &req.remove {
            let i = self.sku_index[sku_id];
            self.skus[i].consumed = self.skus[i].consumed.saturating_sub(1);
        }
        let user = self.users.get_mut(&id).expect("resolved above");
        user.licences = after;
        // Graph answers with the user's default properties (not its licences): clients must read.
        select(user.json(), None, Some(USER_DEFAULT_PROPERTIES), "user")
    }

    /// `POST /users`.
    pub fn create_user(&mut self, body: &Value) -> Result<Value, GraphError> {
        let s = |k: &str| body.get(k).and_then(Value::as_str).map(str::to_owned);
        let missing = |k: &str| {
            GraphError::bad_request(format!(
                "Invalid value specified for property '{k}' of resource 'User'."
            ))
        };
        let upn = s("userPrincipalName").ok_or_else(|| missing("userPrincipalName"))?;
        let display_name = s("displayName").ok_or_else(|| missing("displayName"))?;
        let mail_nickname = s("mailNickname").ok_or_else(|| missing("mailNickname"))?;
        let account_enabled = body
            .get("accountEnabled")
            .and_then(Value::as_bool)
            .ok_or_else(|| missing("accountEnabled"))?;
        if body.get("passwordProfile").is_none_or(|p| !p.is_object()) {
            return Err(missing("passwordProfile"));
        }
        if !upn.contains('@') {
            return Err(missing("userPrincipalName"));
        }
        let user = User {
            id: Uuid::new_v4(),
            upn,
            display_name,
            mail_nickname,
            account_enabled,
            usage_location: s("usageLocation"),
            licences: Vec::new(),
        };
        let json = user.json();
        self.insert_user(user)?;
        Ok(json)
    }

    /// `POST /groups` (security groups only).
    pub fn create_group(&mut self, body: &Value) -> Result<Value, GraphError> {
        let display_name = body
            .get("displayName")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                GraphError::bad_request(
                    "Invalid value specified for property 'displayName' of resource 'Group'.",
                )
            })?;
        let mail_nickname = body
            .get("mailNickname")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                GraphError::bad_request(
                    "Invalid value specified for property 'mailNickname' of resource 'Group'.",
                )
            })?;
        let mail_enabled = body.get("mailEnabled").and_then(Value::as_bool);
        let security_enabled = body.get("securityEnabled").and_then(Value::as_bool);
        if mail_enabled != Some(false) || security_enabled != Some(true) {
            return Err(GraphError::bad_request(
                "The simulator only creates security groups (mailEnabled false, securityEnabled true).",
            ));
        }
        let group = Group {
            id: Uuid::new_v4(),
            display_name: display_name.to_owned(),
            mail_nickname: mail_nickname.to_owned(),
            members: BTreeSet::new(),
        };
        let json = group.json();
        self.insert_group(group);
        Ok(json)
    }

    /// `GET /groups?$filter=displayName eq '…'` (the only filter supported).
    pub fn find_groups(&self, filter: Option<&str>) -> Result<Value, GraphError> {
        let Some(filter) = filter else {
            let all: Vec<Value> = self.groups.values().map(Group::json).collect();
            return Ok(json!({ "value": all }));
        };
        let name = parse_display_name_filter(filter).ok_or_else(|| {
            GraphError::new(
                400,
                "BadRequest",
                format!("Invalid filter clause: {filter}"),
            )
        })?;
        let value: Vec<Value> = self
            .group_names
            .get(&name.to_lowercase())
            .map(|ids| ids.iter().map(|id| self.groups[id].json()).collect())
            .unwrap_or_default();
        Ok(json!({ "value": value }))
    }

    fn group(&self, key: &str) -> Result<&Group, GraphError> {
        Uuid::parse_str(key)
            .ok()
            .and_then(|id| self.groups.get(&id))
            .ok_or_else(|| GraphError::not_found(key))
    }

    /// One page of `GET /groups/{id}/members`; returns the page and the skip token of the next one.
    pub fn members_page(
        &self,
        group: &str,
        selection: Option<&str>,
        after: Option<Uuid>,
        page_size: usize,
    ) -> Result<(Vec<Value>, Option<Uuid>), GraphError> {
        let group = self.group(group)?;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut ids = group
            .members
            .range((start, Bound::Unbounded))
            .take(page_size.max(1) + 1);
        let mut page = Vec::new();
        let mut last = None;
        for id in ids.by_ref().take(page_size.max(1)) {
            let mut v = select(
                self.users[id].json(),
                selection,
                Some(USER_DEFAULT_PROPERTIES),
                "user",
            )?;
            if let Value::Object(m) = &mut v {
                m.insert("@odata.type".into(), json!("#microsoft.graph.user"));
            }
            page.push(v);
            last = Some(*id);
        }
        let more = ids.next().is_some();
        Ok((page, if more { last } else { None }))
    }

    /// `POST /groups/{id}/members/$ref`.
    pub fn add_member(&mut self, group: &str, body: &Value) -> Result<Uuid, GraphError> {
        let reference = body
            .get("@odata.id")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("Invalid request: '@odata.id' is missing."))?;
        let user_key = reference
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or_default();
        let gid = self.group(group)?.id;
        let uid = Uuid::parse_str(user_key)
            .ok()
            .filter(|id| self.users.contains_key(id))
            .ok_or_else(|| GraphError::not_found(user_key))?;
        let g = self.groups.get_mut(&gid).expect("checked above");
        if !g.members.insert(uid) {
            return Err(GraphError::bad_request(
                "One or more added object references already exist for the following modified properties: 'members'.",
            ));
        }
        self.member_of.entry(uid).or_default().insert(gid);
        Ok(uid)
    }

    /// `DELETE /groups/{id}/members/{user-id}/$ref`.
    pub fn remove_member(&mut self, group: &str, user: &str) -> Result<(), GraphError> {
        let gid = self.group(group)?.id;
        let g = self.groups.get_mut(&gid).expect("checked above");
        match Uuid::parse_str(user) {
            Ok(uid) if g.members.remove(&uid) => {
                if let Some(groups) = self.member_of.get_mut(&uid) {
                    groups.remove(&gid);
                }
                Ok(())
            }
            _ => Err(GraphError::not_found(user)),
        }
    }

    /// The display names of the groups a user is a direct member of, sorted (inspection).
    pub fn group_names_of(&self, user: &str) -> Option<Vec<String>> {
        let uid = self.resolve_user(user)?;
        let mut names: Vec<String> = self
            .member_of
            .get(&uid)
            .into_iter()
            .flatten()
            .map(|g| self.groups[g].display_name.clone())
            .collect();
        names.sort();
        Some(names)
    }

    /// One page of `GET /users/{id or upn}/memberOf[/microsoft.graph.group]`: the groups the
    /// user is a direct member of (Graph: "List a user's direct memberships",
    /// `user-list-memberof`; the simulator holds no directory roles or administrative units,
    /// so the OData cast to groups changes nothing but the `@odata.type` annotation). Paged as
    /// Graph pages directory objects ("Paging Microsoft Graph data", `paging.md`): at most
    /// `page_size` a page, the rest behind an opaque skip token. Returns the page and the skip
    /// token of the next one.
    pub fn member_of_page(
        &self,
        user: &str,
        selection: Option<&str>,
        annotate: bool,
        after: Option<Uuid>,
        page_size: usize,
    ) -> Result<(Vec<Value>, Option<Uuid>), GraphError> {
        let uid = self
            .resolve_user(user)
            .ok_or_else(|| GraphError::not_found(user))?;
        let empty = BTreeSet::new();
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut ids = self
            .member_of
            .get(&uid)
            .unwrap_or(&empty)
            .range((start, Bound::Unbounded));
        let mut page = Vec::new();
        let mut last = None;
        for id in ids.by_ref().take(page_size.max(1)) {
            let mut v = select(self.groups[id].json(), selection, None, "group")?;
            if let (true, Value::Object(m)) = (annotate, &mut v) {
                m.insert("@odata.type".into(), json!("#microsoft.graph.group"));
            }
            page.push(v);
            last = Some(*id);
        }
        let more = ids.next().is_some();
        Ok((page, if more { last } else { None }))
    }
}

/// Parses `displayName eq 'O''Brien'` into `O'Brien` (OData doubles single quotes).
fn parse_display_name_filter(filter: &str) -> Option<String> {
    let rest = filter.trim();
    let (prop, rest) = rest.split_once(char::is_whitespace)?;
    if !prop.eq_ignore_ascii_case("displayName") {
        return None;
    }
    let rest = rest.trim_start();
    let rest = rest.strip_prefix("eq")?.trim();
    let inner = rest.strip_prefix('\'')?.strip_suffix('\'')?;
    // Any single quote left must be doubled.
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None;
        }
        out.push(c);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_unescapes_doubled_quotes() {
        assert_eq!(
            parse_display_name_filter("displayName eq 'O''Brien team'").as_deref(),
            Some("O'Brien team")
        );
        assert_eq!(
            parse_display_name_filter("displayName eq 'bad'quote'"),
            None
        );
        assert_eq!(parse_display_name_filter("mail eq 'x'"), None);
    }
}

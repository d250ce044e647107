//! The simulated directory: SKUs with seats, users, security groups, and Graph's rules about them.
//!
//! Every operation takes the lock once, does O(1) or O(log n) work on indexed maps and returns a
//! Graph-shaped JSON value or a [`GraphError`]. No operation scans all users.
//!
//! Eventual consistency ([`super::replica`]) lives in the lookup and mutation primitives: reads
//! go through [`Directory::visible_user`], [`Directory::visible_group`] and the membership
//! iterators, which in a lagging view show the version from before the writes not yet
//! replicated; `insert_user`, `insert_group`, `assign_license` and the membership changes record
//! those writes when a Graph call makes them. Routes built on these primitives inherit it.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::ops::Bound;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use super::catalogue::{Seed, SeedSku};
use super::replica::{self, Pending, View};

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
    /// Writes of Graph calls not yet replicated.
    replication: Replication,
}

/// An object or membership with a write not yet replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Replicated {
    User(Uuid),
    Group(Uuid),
    Membership { group: Uuid, user: Uuid },
}

/// The writes replicas have not seen yet ([`super::replica`]): per object its version from
/// before them, per (group, user) whether the user was a member. Entries are dropped once
/// replicated (`expiry`), so the store holds only the writes of the last lag window.
#[derive(Default)]
struct Replication {
    /// User id -> the user as replicas show it (`None`: created, not yet replicated).
    users: HashMap<Uuid, Pending<Option<User>>>,
    /// Groups created, not yet replicated.
    groups: HashMap<Uuid, Pending<()>>,
    /// Group id -> user id -> whether replicas still show the user as a member.
    members: HashMap<Uuid, BTreeMap<Uuid, Pending<bool>>>,
    /// User id -> group id -> the same entries, for `memberOf`.
    member_of: HashMap<Uuid, BTreeMap<Uuid, Pending<bool>>>,
    /// When each entry is replicated, soonest first.
    expiry: BinaryHeap<Reverse<(Instant, Replicated)>>,
}

impl Replication {
    fn is_empty(&self) -> bool {
        self.expiry.is_empty()
    }

    /// Drops the entries replicated by `now`.
    fn prune(&mut self, now: Instant) {
        while let Some(Reverse((at, key))) = self.expiry.peek().copied() {
            if at > now {
                break;
            }
            self.expiry.pop();
            match key {
                Replicated::User(id) => {
                    if self.users.get(&id).is_some_and(|p| !p.active(now)) {
                        self.users.remove(&id);
                    }
                }
                Replicated::Group(id) => {
                    if self.groups.get(&id).is_some_and(|p| !p.active(now)) {
                        self.groups.remove(&id);
                    }
                }
                Replicated::Membership { group, user } => {
                    drop_replicated(&mut self.members, group, user, now);
                    drop_replicated(&mut self.member_of, user, group, now);
                }
            }
        }
    }

    fn expires(&mut self, at: Instant, key: Replicated) {
        self.expiry.push(Reverse((at, key)));
    }

    /// Records a change of `user` (its version `before` it; `None` when it was created).
    fn user_written(&mut self, user: Uuid, before: Option<User>, now: Instant, lag: Duration) {
        self.prune(now);
        let mut slot = self.users.remove(&user);
        let at = replica::record(&mut slot, before, now, lag);
        self.users.extend(slot.map(|p| (user, p)));
        self.expires(at, Replicated::User(user));
    }

    fn group_created(&mut self, group: Uuid, now: Instant, lag: Duration) {
        self.prune(now);
        let mut slot = None;
        let at = replica::record(&mut slot, (), now, lag);
        self.groups.extend(slot.map(|p| (group, p)));
        self.expires(at, Replicated::Group(group));
    }

    /// Records a membership change; `was_member` is the membership before it.
    fn membership_written(
        &mut self,
        group: Uuid,
        user: Uuid,
        was_member: bool,
        now: Instant,
        lag: Duration,
    ) {
        self.prune(now);
        let by_group = self.members.entry(group).or_default();
        let mut slot = by_group.remove(&user);
        let at = replica::record(&mut slot, was_member, now, lag);
        if let Some(p) = slot {
            self.member_of
                .entry(user)
                .or_default()
                .insert(group, p.clone());
            by_group.insert(user, p);
        }
        self.expires(at, Replicated::Membership { group, user });
    }
}

/// Drops `outer -> inner` from a pending-membership index once replicated.
fn drop_replicated(
    index: &mut HashMap<Uuid, BTreeMap<Uuid, Pending<bool>>>,
    outer: Uuid,
    inner: Uuid,
    now: Instant,
) {
    if let Some(map) = index.get_mut(&outer) {
        if map.get(&inner).is_some_and(|p| !p.active(now)) {
            map.remove(&inner);
        }
        if map.is_empty() {
            index.remove(&outer);
        }
    }
}

/// The ids of a membership set after `after`, in order, as the current view shows them: in a
/// lagging view the (group, user) pairs with a change not yet replicated show their state from
/// before it.
fn membership_ids<'a>(
    primary: Option<&'a BTreeSet<Uuid>>,
    pending: Option<&'a BTreeMap<Uuid, Pending<bool>>>,
    after: Option<Uuid>,
) -> Box<dyn Iterator<Item = Uuid> + 'a> {
    let range = (
        after.map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Unbounded,
    );
    let primary = primary
        .into_iter()
        .flat_map(move |s| s.range(range))
        .copied();
    let lagging = replica::current().is_some_and(View::is_lagging);
    let Some(pending) = pending.filter(|_| lagging) else {
        return Box::new(primary);
    };
    let now = Instant::now();
    let mut a = primary.peekable();
    let mut b = pending.range(range).peekable();
    Box::new(std::iter::from_fn(move || {
        loop {
            let (id, in_primary, change) = match (a.peek().copied(), b.peek()) {
                (None, None) => return None,
                (Some(x), Some((y, _))) if x < **y => (a.next()?, true, None),
                (Some(_), Some(_)) => {
                    let (y, p) = b.next()?;
                    let same = a.next_if_eq(y).is_some();
                    (*y, same, Some(p))
                }
                (Some(_), None) => (a.next()?, true, None),
                (None, Some(_)) => {
                    let (y, p) = b.next()?;
                    (*y, false, Some(p))
                }
            };
            let member = match change {
                Some(p) if p.active(now) => p.before,
                _ => in_primary,
            };
            if member {
                return Some(id);
            }
        }
    }))
}

/// The lag of a write made now, when a Graph call makes it and it is not replicated at once.
fn write_lag() -> Option<(Instant, Duration)> {
    match replica::current() {
        Some(View::Write { lag, .. }) => lag.draw().map(|d| (Instant::now(), d)),
        _ => None,
    }
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
        if let Some((now, lag)) = write_lag() {
            self.replication.user_written(user.id, None, now, lag);
        }
        self.upn_index.insert(key, user.id);
        self.users.insert(user.id, user);
        Ok(())
    }

    fn insert_group(&mut self, group: Group) {
        if let Some((now, lag)) = write_lag() {
            self.replication.group_created(group.id, now, lag);
        }
        self.group_names
            .entry(group.display_name.to_lowercase())
            .or_default()
            .push(group.id);
        self.groups.insert(group.id, group);
    }

    /// A user as the current Graph call's view shows it ([`super::replica`]): the primary's,
    /// its version from before writes not yet replicated in a lagging view, or none when its
    /// creation is not yet replicated and the view hides new objects. Outside a Graph call, the
    /// primary's.
    fn visible_user(&self, id: &Uuid) -> Option<&User> {
        let primary = self.users.get(id);
        if self.replication.is_empty() {
            return primary;
        }
        let (Some(view), Some(p)) = (replica::current(), self.replication.users.get(id)) else {
            return primary;
        };
        if !p.active(Instant::now()) {
            primary
        } else if view.is_lagging() {
            p.before.as_ref()
        } else if view.hides_new() && p.before.is_none() {
            None
        } else {
            primary
        }
    }

    /// A group as the current Graph call's view shows it: none while its creation is not yet
    /// replicated and the view hides new objects.
    fn visible_group(&self, id: &Uuid) -> Option<&Group> {
        let primary = self.groups.get(id);
        if self.replication.is_empty() {
            return primary;
        }
        match (replica::current(), self.replication.groups.get(id)) {
            (Some(view), Some(p)) if view.hides_new() && p.active(Instant::now()) => None,
            _ => primary,
        }
    }

    /// Resolves an id or a user principal name (case-insensitive) to the id of a user the
    /// current view shows.
    pub fn resolve_user(&self, key: &str) -> Option<Uuid> {
        let id = match Uuid::parse_str(key) {
            Ok(id) if self.users.contains_key(&id) => id,
            _ => *self.upn_index.get(&key.to_lowercase())?,
        };
        self.visible_user(&id).map(|_| id)
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
        let user = self
            .resolve_user(key)
            .and_then(|id| self.visible_user(&id))
            .ok_or_else(|| GraphError::not_found(key))?;
        select(
            user.json(),
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
            let all: Vec<Value> = self
                .groups
                .keys()
                .filter_map(|id| self.visible_group(id))
                .map(Group::json)
                .collect();
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
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| self.visible_group(id))
                    .map(Group::json)
                    .collect()
            })
            .unwrap_or_default();
        Ok(json!({ "value": value }))
    }

    fn group(&self, key: &str) -> Result<&Group, GraphError> {
        Uuid::parse_str(key)
            .ok()
            .and_then(|id| self.visible_group(&id))
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
        let mut ids = membership_ids(
            Some(&group.members),
            self.replication.members.get(&group.id),
            after,
        )
        .filter_map(|id| self.visible_user(&id).map(|u| (id, u)));
        let mut page = Vec::new();
        let mut last = None;
        for (id, user) in ids.by_ref().take(page_size.max(1)) {
            let mut v = select(
                user.json(),
                selection,
                Some(USER_DEFAULT_PROPERTIES),
                "user",
            )?;
            if let Value::Object(m) = &mut v {
                m.insert("@odata.type".into(), json!("#microsoft.graph.user"));
            }
            page.push(v);
            last = Some(id);
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
            .filter(|id| self.visible_user(id).is_some())
            .ok_or_else(|| GraphError::not_found(user_key))?;
        let g = self.groups.get_mut(&gid).expect("checked above");
        if !g.members.insert(uid) {
            return Err(GraphError::bad_request(
                "One or more added object references already exist for the following modified properties: 'members'.",
            ));
        }
        self.member_of.entry(uid).or_default().insert(gid);
        if let Some((now, lag)) = write_lag() {
            self.replication
                .membership_written(gid, uid, false, now, lag);
        }
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
                if let Some((now, lag)) = write_lag() {
                    self.replication
                        .membership_written(gid, uid, true, now, lag);
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
        let mut ids = membership_ids(
            self.member_of.get(&uid),
            self.replication.member_of.get(&uid),
            after,
        )
        .filter_map(|id| self.visible_group(&id).map(|g| (id, g)));
        let mut page = Vec::new();
        let mut last = None;
        for (id, group) in ids.by_ref().take(page_size.max(1)) {
            let mut v = select(group.json(), selection, None, "group")?;
            if let (true, Value::Object(m)) = (annotate, &mut v) {
                m.insert("@odata.type".into(), json!("#microsoft.graph.group"));
            }
            page.push(v);
            last = Some(id);
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
    use super::super::catalogue::{default_catalogue, sku_ids};
    use super::super::replica::{Lag, enter};
    use super::*;

    fn lag(ms: u64) -> Lag {
        Lag {
            max: Duration::from_millis(ms),
            long_probability: 1.0,
            long: Duration::from_millis(ms),
        }
    }

    fn write(ms: u64, hide_new: bool) -> View {
        View::Write {
            hide_new,
            lag: lag(ms),
        }
    }

    /// A directory with one user (GB) and one group with no members; their ids.
    fn directory() -> (Directory, Uuid, Uuid) {
        let mut d = Directory::with_catalogue(&default_catalogue());
        let (user, group) = (Uuid::new_v4(), Uuid::new_v4());
        let seed: Seed = serde_json::from_value(json!({
            "users": [{"id": user, "userPrincipalName": "a@example.org", "usageLocation": "GB"}],
            "groups": [{"id": group, "displayName": "G"}],
        }))
        .unwrap();
        d.seed(&seed).unwrap();
        assert!(d.replication.is_empty(), "seeding is replicated at once");
        (d, user, group)
    }

    fn licences(d: &Directory, user: Uuid) -> Result<usize, GraphError> {
        let u = d.get_user(&user.to_string(), Some("assignedLicenses"))?;
        Ok(u["assignedLicenses"].as_array().map_or(0, Vec::len))
    }

    fn e3() -> AssignLicense {
        AssignLicense {
            add: vec![(sku_ids::ENTERPRISEPACK, Vec::new())],
            remove: Vec::new(),
        }
    }

    fn member_ids(d: &Directory, group: Uuid) -> Vec<Uuid> {
        let (page, _) = d
            .members_page(&group.to_string(), Some("id"), None, 100)
            .unwrap();
        page.iter()
            .map(|v| serde_json::from_value(v["id"].clone()).unwrap())
            .collect()
    }

    #[test]
    fn a_lagging_replica_shows_the_user_before_the_licence_write() {
        let (mut d, user, _) = directory();
        {
            let _w = enter(write(3_600_000, false));
            d.assign_license(&user.to_string(), &e3()).unwrap();
        }
        {
            let _r = enter(View::Lagging);
            assert_eq!(licences(&d, user).unwrap(), 0);
        }
        {
            let _r = enter(View::Fresh);
            assert_eq!(licences(&d, user).unwrap(), 1);
        }
        // Inspection, outside any Graph call, reads the primary.
        assert_eq!(
            d.user_json(&user.to_string()).unwrap()["assignedLicenses"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(licences(&d, user).unwrap(), 1);
    }

    #[test]
    fn a_write_becomes_visible_everywhere_after_its_lag() {
        let (mut d, user, _) = directory();
        {
            let _w = enter(write(30, false));
            d.assign_license(&user.to_string(), &e3()).unwrap();
        }
        std::thread::sleep(Duration::from_millis(40));
        let _r = enter(View::Lagging);
        assert_eq!(licences(&d, user).unwrap(), 1);
        drop(_r);
        // The next write drops the replicated entry.
        let _w = enter(write(30, false));
        d.create_group(&json!({"displayName": "H", "mailNickname": "H",
            "mailEnabled": false, "securityEnabled": true}))
            .unwrap();
        assert!(!d.replication.users.contains_key(&user));
    }

    #[test]
    fn without_lag_nothing_is_recorded_and_every_view_is_the_primary() {
        let (mut d, user, group) = directory();
        {
            let _w = enter(write(0, true));
            let lag0 = View::Write {
                hide_new: true,
                lag: Lag::default(),
            };
            let _w = enter(lag0);
            d.assign_license(&user.to_string(), &e3()).unwrap();
            d.add_member(&group.to_string(), &json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{user}")}))
                .unwrap();
        }
        assert!(d.replication.is_empty());
        let _r = enter(View::Lagging);
        assert_eq!(licences(&d, user).unwrap(), 1);
        assert_eq!(member_ids(&d, group), vec![user]);
    }

    #[test]
    fn a_new_group_is_missing_until_replicated_even_to_writes() {
        let (mut d, user, _) = directory();
        let created = {
            let _w = enter(write(3_600_000, false));
            d.create_group(&json!({"displayName": "New", "mailNickname": "New",
                "mailEnabled": false, "securityEnabled": true}))
                .unwrap()
        };
        let gid = created["id"].as_str().unwrap().to_owned();
        let filter = Some("displayName eq 'New'");
        {
            let _r = enter(View::Lagging);
            assert_eq!(
                d.group(&gid).err().map(|e| e.code),
                Some("Request_ResourceNotFound")
            );
            assert_eq!(d.find_groups(filter).unwrap()["value"], json!([]));
            assert!(
                d.find_groups(None).unwrap()["value"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|g| g["id"] != gid.as_str())
            );
        }
        {
            let _r = enter(View::Fresh);
            assert_eq!(
                d.find_groups(filter).unwrap()["value"]
                    .as_array()
                    .unwrap()
                    .len(),
                1
            );
        }
        let member = json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{user}")});
        {
            let _w = enter(write(3_600_000, true));
            let e = d.add_member(&gid, &member).unwrap_err();
            assert_eq!((e.status, e.code), (404, "Request_ResourceNotFound"));
        }
        let _w = enter(write(3_600_000, false));
        d.add_member(&gid, &member).unwrap();
    }

    #[test]
    fn a_new_user_is_missing_to_reads_and_to_writes_that_name_it() {
        let (mut d, _, group) = directory();
        let created = {
            let _w = enter(write(3_600_000, false));
            d.create_user(
                &json!({"userPrincipalName": "new@example.org", "displayName": "N",
                "mailNickname": "new", "accountEnabled": true, "usageLocation": "GB",
                "passwordProfile": {"password": "x"}}),
            )
            .unwrap()
        };
        let uid = created["id"].as_str().unwrap().to_owned();
        {
            let _r = enter(View::Lagging);
            assert_eq!(d.get_user(&uid, None).unwrap_err().status, 404);
            assert_eq!(d.get_user("NEW@example.org", None).unwrap_err().status, 404);
        }
        {
            let _w = enter(write(3_600_000, true));
            assert_eq!(d.assign_license(&uid, &e3()).unwrap_err().status, 404);
            let member = json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{uid}")});
            assert_eq!(
                d.add_member(&group.to_string(), &member)
                    .unwrap_err()
                    .status,
                404
            );
        }
        let _w = enter(write(3_600_000, false));
        d.assign_license(&uid, &e3()).unwrap();
        assert!(d.user_json(&uid).is_some());
    }

    #[test]
    fn lagging_replicas_show_memberships_from_before_their_changes() {
        let (mut d, user, group) = directory();
        let others: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
        let seed: Seed = serde_json::from_value(json!({
            "users": others.iter().enumerate().map(|(i, id)| json!({"id": id,
                "userPrincipalName": format!("o{i}@example.org")})).collect::<Vec<_>>(),
        }))
        .unwrap();
        d.seed(&seed).unwrap();
        let reference = |u: &Uuid| json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{u}")});
        // Replicated at once: others[0] and others[1] are members everywhere.
        {
            let _w = enter(write(0, false));
            d.add_member(&group.to_string(), &reference(&others[0]))
                .unwrap();
            d.add_member(&group.to_string(), &reference(&others[1]))
                .unwrap();
        }
        // Lagging: add user and others[2], remove others[0].
        {
            let _w = enter(write(3_600_000, false));
            d.add_member(&group.to_string(), &reference(&user)).unwrap();
            d.add_member(&group.to_string(), &reference(&others[2]))
                .unwrap();
            d.remove_member(&group.to_string(), &others[0].to_string())
                .unwrap();
        }
        let sorted = |mut v: Vec<Uuid>| {
            v.sort();
            v
        };
        {
            let _r = enter(View::Fresh);
            assert_eq!(
                member_ids(&d, group),
                sorted(vec![user, others[1], others[2]])
            );
        }
        let _r = enter(View::Lagging);
        assert_eq!(member_ids(&d, group), sorted(vec![others[0], others[1]]));
        // Pages of one, in order, through the skip tokens.
        let mut seen = Vec::new();
        let mut after = None;
        loop {
            let (page, next) = d
                .members_page(&group.to_string(), Some("id"), after, 1)
                .unwrap();
            seen.extend(
                page.iter()
                    .map(|v| serde_json::from_value::<Uuid>(v["id"].clone()).unwrap()),
            );
            match next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        assert_eq!(seen, sorted(vec![others[0], others[1]]));
        let (groups, _) = d
            .member_of_page(&user.to_string(), None, false, None, 10)
            .unwrap();
        assert!(groups.is_empty());
        let (groups, _) = d
            .member_of_page(&others[0].to_string(), None, false, None, 10)
            .unwrap();
        assert_eq!(groups.len(), 1);
        drop(_r);
        // Inspection reads the primary.
        assert_eq!(
            d.group_names_of(&user.to_string()).unwrap(),
            vec!["G".to_owned()]
        );
    }

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

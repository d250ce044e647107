//! The simulated directory: SKUs with seats, users, security groups, and Graph's rules about them.
//!
//! Every operation takes the lock once, does O(1) or O(log n) work on indexed maps and returns a
//! Graph-shaped JSON value or a [`GraphError`]. No operation scans all users.
//!
//! Eventual consistency ([`super::replica`]) lives in the lookup and mutation primitives: reads
//! go through [`Directory::visible_user`], [`Directory::visible_group`] and the membership
//! iterators, which in a lagging view show the version from before the writes not yet
//! replicated; `insert_user`, `insert_group`, `assign_license`, `set_usage_location` and the
//! membership changes (`insert_member`, `remove_member`) record those writes when a Graph call
//! makes them. Routes built on these primitives inherit it: `GET /users?$filter`, `GET /groups/{id}`,
//! the `uniqueName` lookups, `members/$count`, and the writes of `PATCH /users/{id}`,
//! `PATCH /groups/{id}` (`members@odata.bind`) and the upsert (a group creation plus member adds).
//! Group property changes (`displayName`, `description`) are not versioned: replicas show them
//! at once.
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap, HashSet};
use std::ops::Bound;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use uuid::Uuid;

use super::catalogue::{Seed, SeedSku};
use super::replica::{self, Pending, View};

mod licensing;
pub use licensing::{INHERITED_REMOVAL_MESSAGE, Rules as LicensingRules};

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
    /// `prepaidUnits.warning`: seats still assignable.
    warning: u32,
    consumed: u32,
    exclusive_group: Option<String>,
    /// `capabilityStatus`.
    status: String,
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
    mail: Option<String>,
    proxy_addresses: Vec<String>,
    other_mails: Vec<String>,
    /// Licences inherited from licensed groups ([`licensing`]), recomputed when a group's
    /// licences or members change.
    inherited: Vec<licensing::Inherited>,
}

struct Group {
    id: Uuid,
    display_name: String,
    mail_nickname: String,
    /// Graph's `uniqueName`: an alternate key, settable once (`group-upsert.md`).
    unique_name: Option<String>,
    description: Option<String>,
    /// Ordered so that `$skiptoken` paging is a cheap range query with stable pages.
    members: BTreeSet<Uuid>,
    /// Group-based licensing: (skuId, disabledPlans) its members inherit.
    licences: Vec<(Uuid, Vec<Uuid>)>,
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
    /// Lower-cased `mail` -> ids (not unique: a seed may give two users one mail).
    mail_index: HashMap<String, Vec<Uuid>>,
    /// Lower-cased proxy address, prefix included (`smtp:a@b`) -> id: unique in Entra ID.
    proxy_index: HashMap<String, Uuid>,
    /// Lower-cased `otherMails` entry -> ids.
    other_mail_index: HashMap<String, Vec<Uuid>>,
    /// Lower-cased group `uniqueName` -> id.
    unique_names: HashMap<String, Uuid>,
    /// Every user id, ordered, so that `GET /users` pages by a range after the skip token.
    user_order: BTreeSet<Uuid>,
    /// Writes of Graph calls not yet replicated.
    replication: Replication,
    /// Which licensing rules are enforced (from the behaviour's knobs).
    pub(crate) rules: licensing::Rules,
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
            "mail": self.mail,
            "mobilePhone": null,
            "officeLocation": null,
            "preferredLanguage": null,
            "surname": null,
            "userPrincipalName": self.upn,
            "mailNickname": self.mail_nickname,
            "accountEnabled": self.account_enabled,
            "usageLocation": self.usage_location,
            "proxyAddresses": self.proxy_addresses,
            "otherMails": self.other_mails,
            "assignedLicenses": self.assigned_licenses_json(),
            "licenseAssignmentStates": self.assignment_states_json(),
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
            "description": self.description,
            "uniqueName": self.unique_name,
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
                warning: s.prepaid_units.warning,
                consumed: 0,
                exclusive_group: s.mutually_exclusive_group.clone(),
                status: s
                    .capability_status
                    .clone()
                    .unwrap_or_else(|| "Enabled".to_owned()),
            })
            .collect();
        self.sku_index = self
            .skus
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id, i))
            .collect();
        for u in self.users.values() {
            for sku in u.held() {
                if let Some(&i) = self.sku_index.get(&sku) {
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
                mail: u.mail.clone(),
                proxy_addresses: u.proxy_addresses.clone(),
                other_mails: u.other_mails.clone(),
                inherited: Vec::new(),
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
            if let Some(name) = &g.unique_name {
                self.check_unique_name_free(name)?;
            }
            self.insert_group(Group {
                id,
                display_name: g.display_name.clone(),
                mail_nickname: g.display_name.replace(' ', ""),
                unique_name: g.unique_name.clone(),
                description: None,
                members: BTreeSet::new(),
                licences: Vec::new(),
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
            if !g.assigned_licenses.is_empty() {
                let licences = g
                    .assigned_licenses
                    .iter()
                    .map(|l| (l.sku_id, l.disabled_plans.clone()))
                    .collect();
                self.set_group_licences(id, licences)?;
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
        self.check_addresses_free(&user)?;
        if let Some((now, lag)) = write_lag() {
            self.replication.user_written(user.id, None, now, lag);
        }
        self.index_addresses(&user);
        self.user_order.insert(user.id);
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
        if let Some(name) = &group.unique_name {
            self.unique_names.insert(name.to_lowercase(), group.id);
        }
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
                    "capabilityStatus": s.status,
                    "consumedUnits": s.consumed,
                    "id": format!("00000000-0000-0000-0000-000000000000_{}", s.id),
                    "skuId": s.id,
                    "skuPartNumber": s.part_number,
                    "appliesTo": "User",
                    "prepaidUnits": s.prepaid_units_json(),
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
    ///
    /// Licences inherited from groups ([`licensing`]) take part: a SKU held through a group
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
        for (i, a) in held_after.iter().enumerate() {
            let sa = &self.skus[self.sku_index[a]];
            for b in &held_after[i + 1..] {
                let sb = &self.skus[self.sku_index[b]];
                if sa.exclusive_group.is_some() && sa.exclusive_group == sb.exclusive_group {
                    return Err(self.conflict_error(sa, sb));
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
        validate_upn(&upn)?;
        let usage_location = body
            .get("usageLocation")
            .map(validate_usage_location)
            .transpose()?
            .flatten();
        let (mail, proxy_addresses, other_mails) = create_addresses(body)?;
        let user = User {
            id: Uuid::new_v4(),
            upn,
            display_name,
            mail_nickname,
            account_enabled,
            usage_location,
            licences: Vec::new(),
            mail,
            proxy_addresses,
            other_mails,
            inherited: Vec::new(),
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
            unique_name: None,
            description: body
                .get("description")
                .and_then(Value::as_str)
                .map(str::to_owned),
            members: BTreeSet::new(),
            licences: Vec::new(),
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
        if !self.insert_member(gid, uid) {
            return Err(GraphError::bad_request(
                "One or more added object references already exist for the following modified properties: 'members'.",
            ));
        }
        Ok(uid)
    }

    /// The membership-add primitive behind `add_member` and `members@odata.bind`: adds `uid`
    /// to `gid` (both checked by the caller) and records the change for the replicas. Returns
    /// false when the user already was a member.
    fn insert_member(&mut self, gid: Uuid, uid: Uuid) -> bool {
        let Some(g) = self.groups.get_mut(&gid) else {
            return false;
        };
        if !g.members.insert(uid) {
            return false;
        }
        self.member_of.entry(uid).or_default().insert(gid);
        if let Some((now, lag)) = write_lag() {
            self.replication
                .membership_written(gid, uid, false, now, lag);
        }
        self.recompute_inherited(uid);
        true
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
                self.recompute_inherited(uid);
                Ok(())
            }
            _ => Err(GraphError::not_found(user)),
        }
    }

    /// The ids of the groups with this display name, sorted (inspection, primary state).
    pub fn group_ids_named(&self, display_name: &str) -> Vec<Uuid> {
        let mut ids = self
            .group_names
            .get(&display_name.to_lowercase())
            .cloned()
            .unwrap_or_default();
        ids.sort();
        ids
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

/// Graph's most members one request may bind (`members@odata.bind`): "up to 20 members can be
/// added in a single request" (microsoft-graph-docs-contrib
/// `api-reference/v1.0/api/group-post-members.md`, example 2; `group-upsert.md`, example 2).
pub const MAX_MEMBER_BINDS: usize = 20;

/// The error Graph answers for a `$filter` clause it does not support on a property
/// (microsoft-graph-docs-contrib `concepts/aad-advanced-queries.md`, "Error handling").
fn unsupported_filter(property: &str, resource: &str) -> GraphError {
    GraphError::new(
        400,
        "Request_UnsupportedQuery",
        format!(
            "Unsupported or invalid query filter clause specified for property '{property}' of resource '{resource}'."
        ),
    )
}

fn invalid_filter(filter: &str) -> GraphError {
    GraphError::new(
        400,
        "BadRequest",
        format!("Invalid filter clause: {filter}"),
    )
}

/// Checks a user principal name against Entra ID's rules (MicrosoftDocs/entra-docs
/// `docs/identity/authentication/concept-sspr-policy.md`, "UserPrincipalName policies that apply
/// to all user accounts"; also microsoft-graph-docs-contrib `api-reference/v1.0/api/user-post-users.md`):
/// one `@`; the local part only `A-Z a-z 0-9 ' . - _ ! # ^ ~`, at most 64 characters and not
/// ending with `.`; at most 48 characters after the `@`; at most 113 in all. The message is
/// the one Graph is seen to answer (the docs give none).
pub fn validate_upn(upn: &str) -> Result<(), GraphError> {
    let invalid = || {
        GraphError::new(
            400,
            "Request_BadRequest",
            "Property userPrincipalName is invalid.",
        )
    };
    let (local, domain) = upn.split_once('@').ok_or_else(invalid)?;
    let local_ok = |c: char| c.is_ascii_alphanumeric() || "'.-_!#^~".contains(c);
    let domain_ok = |c: char| c.is_ascii_alphanumeric() || ".-".contains(c);
    if local.is_empty()
        || domain.is_empty()
        || upn.chars().count() > 113
        || local.chars().count() > 64
        || domain.chars().count() > 48
        || local.ends_with('.')
        || !local.chars().all(local_ok)
        || !domain.chars().all(domain_ok)
    {
        return Err(invalid());
    }
    Ok(())
}

/// Checks a `usageLocation`: "A two-letter country code (ISO standard 3166)" (microsoft-graph-docs-contrib
/// `api-reference/v1.0/resources/user.md`). `null` clears it. The simulator checks the form (two
/// ASCII letters), not the list of assigned codes; it stores the code in upper case.
pub fn validate_usage_location(value: &Value) -> Result<Option<String>, GraphError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) if s.len() == 2 && s.chars().all(|c| c.is_ascii_alphabetic()) => {
            Ok(Some(s.to_ascii_uppercase()))
        }
        _ => Err(GraphError::new(
            400,
            "Request_BadRequest",
            "Invalid value specified for property 'usageLocation' of resource 'User'.",
        )),
    }
}

/// `mail`, `proxyAddresses` and `otherMails` of a `POST /users` body. `mail` is writable and
/// becomes the primary proxy address; `proxyAddresses` "can't be updated through Microsoft
/// Graph" (microsoft-graph-docs-contrib `api-reference/v1.0/resources/user.md`, "mail and
/// proxyAddresses properties").
type Addresses = (Option<String>, Vec<String>, Vec<String>);

fn create_addresses(body: &Value) -> Result<Addresses, GraphError> {
    if body.get("proxyAddresses").is_some() {
        return Err(GraphError::new(
            400,
            "Request_BadRequest",
            "Property 'proxyAddresses' is read-only and cannot be set.",
        ));
    }
    let invalid = |p: &str| {
        GraphError::new(
            400,
            "Request_BadRequest",
            format!("Invalid value specified for property '{p}' of resource 'User'."),
        )
    };
    let mail = match body.get("mail") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) if m.contains('@') => Some(m.clone()),
        Some(_) => return Err(invalid("mail")),
    };
    let other_mails = match body.get("otherMails") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(list)) => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| invalid("otherMails"))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("otherMails")),
    };
    let proxies = mail.iter().map(|m| format!("SMTP:{m}")).collect();
    Ok((mail, proxies, other_mails))
}

/// A parsed user `$filter`: the subset of Graph's default (non-advanced) filters the simulator
/// serves from its indexes (microsoft-graph-docs-contrib `includes/filter-directory-objects.md`:
/// `eq` on `userPrincipalName` and `mail`, `any(… eq …)` on `proxyAddresses` and `otherMails`, all
/// "Default", i.e. without `ConsistencyLevel: eventual`).
#[derive(Debug, PartialEq)]
enum UserFilter {
    Or(Box<UserFilter>, Box<UserFilter>),
    And(Box<UserFilter>, Box<UserFilter>),
    Upn(String),
    Mail(String),
    ProxyAddress(String),
    OtherMail(String),
}

#[derive(Debug, PartialEq)]
enum Token {
    Open,
    Close,
    Colon,
    Slash,
    Str(String),
    Word(String),
}

fn tokenize(filter: &str) -> Result<Vec<Token>, GraphError> {
    let mut out = Vec::new();
    let mut chars = filter.chars().peekable();
    while let Some(&c) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | ':' | '/' => {
                chars.next();
                out.push(match c {
                    '(' => Token::Open,
                    ')' => Token::Close,
                    ':' => Token::Colon,
                    _ => Token::Slash,
                });
            }
            '\'' => {
                chars.next();
                let mut s = String::new();
                loop {
                    match chars.next() {
                        None => return Err(invalid_filter(filter)),
                        // OData doubles a quote inside a string literal.
                        Some('\'') if chars.peek() == Some(&'\'') => {
                            chars.next();
                            s.push('\'');
                        }
                        Some('\'') => break,
                        Some(c) => s.push(c),
                    }
                }
                out.push(Token::Str(s));
            }
            _ => {
                let mut w = String::new();
                while let Some(&c) = chars.peek() {
                    if c.is_whitespace() || "():/'".contains(c) {
                        break;
                    }
                    w.push(c);
                    chars.next();
                }
                out.push(Token::Word(w));
            }
        }
    }
    Ok(out)
}

struct FilterParser<'a> {
    filter: &'a str,
    tokens: Vec<Token>,
    at: usize,
}

impl FilterParser<'_> {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<&Token> {
        self.at += 1;
        self.tokens.get(self.at - 1)
    }

    fn keyword(&self, word: &str) -> bool {
        matches!(self.peek(), Some(Token::Word(w)) if w.eq_ignore_ascii_case(word))
    }

    fn expect(&mut self, t: &Token) -> Result<(), GraphError> {
        match self.next() {
            Some(x) if x == t => Ok(()),
            _ => Err(invalid_filter(self.filter)),
        }
    }

    fn word(&mut self) -> Result<String, GraphError> {
        match self.next() {
            Some(Token::Word(w)) => Ok(w.clone()),
            _ => Err(invalid_filter(self.filter)),
        }
    }

    fn string(&mut self, property: &str) -> Result<String, GraphError> {
        match self.next() {
            Some(Token::Str(s)) => Ok(s.clone()),
            // `null`, numbers, …: not supported by default on these properties.
            Some(Token::Word(_)) => Err(unsupported_filter(property, "User")),
            _ => Err(invalid_filter(self.filter)),
        }
    }

    fn or(&mut self) -> Result<UserFilter, GraphError> {
        let mut left = self.and()?;
        while self.keyword("or") {
            self.at += 1;
            left = UserFilter::Or(Box::new(left), Box::new(self.and()?));
        }
        Ok(left)
    }

    fn and(&mut self) -> Result<UserFilter, GraphError> {
        let mut left = self.primary()?;
        while self.keyword("and") {
            self.at += 1;
            left = UserFilter::And(Box::new(left), Box::new(self.primary()?));
        }
        Ok(left)
    }

    fn primary(&mut self) -> Result<UserFilter, GraphError> {
        if self.peek() == Some(&Token::Open) {
            self.at += 1;
            let inner = self.or()?;
            self.expect(&Token::Close)?;
            return Ok(inner);
        }
        let property = self.word()?;
        if self.peek() == Some(&Token::Slash) {
            // `proxyAddresses/any(p:p eq '…')`
            self.at += 1;
            let lambda = self.word()?;
            if !lambda.eq_ignore_ascii_case("any") {
                return Err(unsupported_filter(&property, "User"));
            }
            self.expect(&Token::Open)?;
            let var = self.word()?;
            self.expect(&Token::Colon)?;
            let var2 = self.word()?;
            let op = self.word()?;
            if var != var2 || !op.eq_ignore_ascii_case("eq") {
                return Err(unsupported_filter(&property, "User"));
            }
            let value = self.string(&property)?;
            self.expect(&Token::Close)?;
            return if property.eq_ignore_ascii_case("proxyAddresses") {
                Ok(UserFilter::ProxyAddress(value))
            } else if property.eq_ignore_ascii_case("otherMails") {
                Ok(UserFilter::OtherMail(value))
            } else {
                Err(unsupported_filter(&property, "User"))
            };
        }
        if self.peek() == Some(&Token::Open) {
            // A function such as `startsWith(…)` or `endsWith(…)`.
            return Err(unsupported_filter(&property, "User"));
        }
        let op = self.word()?;
        if !op.eq_ignore_ascii_case("eq") {
            return Err(unsupported_filter(&property, "User"));
        }
        if property.eq_ignore_ascii_case("userPrincipalName") {
            Ok(UserFilter::Upn(self.string(&property)?))
        } else if property.eq_ignore_ascii_case("mail") {
            Ok(UserFilter::Mail(self.string(&property)?))
        } else {
            Err(unsupported_filter(&property, "User"))
        }
    }
}

fn parse_user_filter(filter: &str) -> Result<UserFilter, GraphError> {
    let mut p = FilterParser {
        filter,
        tokens: tokenize(filter)?,
        at: 0,
    };
    let f = p.or()?;
    if p.at != p.tokens.len() {
        return Err(invalid_filter(filter));
    }
    Ok(f)
}

/// Parses a `groups(uniqueName='…')` path segment (microsoft-graph-docs-contrib
/// `api-reference/v1.0/api/group-upsert.md`) into the unique name, quotes undoubled.
pub fn parse_unique_name_key(segment: &str) -> Option<String> {
    let inner = segment.strip_prefix("groups(")?.strip_suffix(')')?;
    let (key, value) = inner.split_once('=')?;
    if !key.trim().eq_ignore_ascii_case("uniqueName") {
        return None;
    }
    match tokenize(value).ok()?.as_slice() {
        [Token::Str(s)] => Some(s.clone()),
        _ => None,
    }
}

/// One page of `GET /users`.
pub struct UsersPage {
    /// The users of the page, `$select`ed.
    pub value: Vec<Value>,
    /// The skip token of the next page.
    pub next: Option<Uuid>,
    /// How many users match in all (for `@odata.count`).
    pub count: usize,
}

/// What `PATCH /groups(uniqueName='…')` did.
pub enum Upsert {
    /// 201 with the new group.
    Created(Value, Vec<Uuid>),
    /// 204: the group existed and was updated (members added).
    Updated(Vec<Uuid>),
}

impl Directory {
    /// Whether a user id resolves (so that any rule the lookup applies also applies to filters).
    fn visible(&self, id: Uuid) -> bool {
        self.resolve_user(&id.to_string()) == Some(id)
    }

    /// Refuses a user whose proxy addresses belong to another object, or whose `mail` is another
    /// object's proxy address: "proxyAddresses are unique across directory objects" and "If a
    /// user's mail property conflicts with one of the proxyAddresses of another object, an attempt
    /// to update the mail fails" (microsoft-graph-docs-contrib `api-reference/v1.0/resources/user.md`).
    fn check_addresses_free(&self, user: &User) -> Result<(), GraphError> {
        let taken = |key: String| self.proxy_index.get(&key).is_some_and(|id| *id != user.id);
        let mail_taken = user
            .mail
            .as_deref()
            .is_some_and(|m| taken(format!("smtp:{}", m.to_lowercase())));
        if mail_taken || user.proxy_addresses.iter().any(|p| taken(p.to_lowercase())) {
            return Err(GraphError::bad_request(
                "Another object with the same value for property proxyAddresses already exists.",
            ));
        }
        Ok(())
    }

    fn index_addresses(&mut self, user: &User) {
        if let Some(m) = &user.mail {
            self.mail_index
                .entry(m.to_lowercase())
                .or_default()
                .push(user.id);
        }
        for p in &user.proxy_addresses {
            self.proxy_index.insert(p.to_lowercase(), user.id);
        }
        for m in &user.other_mails {
            self.other_mail_index
                .entry(m.to_lowercase())
                .or_default()
                .push(user.id);
        }
    }

    fn check_unique_name_free(&self, name: &str) -> Result<(), GraphError> {
        if self.unique_names.contains_key(&name.to_lowercase()) {
            return Err(GraphError::bad_request(
                "Another object with the same value for property uniqueName already exists.",
            ));
        }
        Ok(())
    }

    /// The users a filter matches, from the indexes only (no filter scans all users). Values are
    /// compared case-insensitively, so `smtp:` matches both `SMTP:` and `smtp:` entries.
    fn matching_users(&self, f: &UserFilter) -> BTreeSet<Uuid> {
        let many = |index: &HashMap<String, Vec<Uuid>>, v: &str| -> BTreeSet<Uuid> {
            index
                .get(&v.to_lowercase())
                .into_iter()
                .flatten()
                .copied()
                .collect()
        };
        let ids: BTreeSet<Uuid> = match f {
            UserFilter::Or(a, b) => {
                return &self.matching_users(a) | &self.matching_users(b);
            }
            UserFilter::And(a, b) => {
                return &self.matching_users(a) & &self.matching_users(b);
            }
            UserFilter::Upn(v) => self
                .upn_index
                .get(&v.to_lowercase())
                .copied()
                .into_iter()
                .collect(),
            UserFilter::Mail(v) => many(&self.mail_index, v),
            UserFilter::ProxyAddress(v) => self
                .proxy_index
                .get(&v.to_lowercase())
                .copied()
                .into_iter()
                .collect(),
            UserFilter::OtherMail(v) => many(&self.other_mail_index, v),
        };
        ids.into_iter().filter(|id| self.visible(*id)).collect()
    }

    /// `GET /users[?$filter=…]`: one page of the users a filter matches (all users without one),
    /// ordered by id, at most `page_size`, after the skip token `after`
    /// (microsoft-graph-docs-contrib `api-reference/v1.0/api/user-list.md`, `concepts/paging.md`).
    pub fn list_users(
        &self,
        filter: Option<&str>,
        selection: Option<&str>,
        after: Option<Uuid>,
        page_size: usize,
    ) -> Result<UsersPage, GraphError> {
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        // Through the view: a lagging replica shows a user as before its last writes.
        let render = |id: &Uuid| {
            let user = self
                .visible_user(id)
                .ok_or_else(|| GraphError::not_found(&id.to_string()))?;
            select(
                user.json(),
                selection,
                Some(USER_DEFAULT_PROPERTIES),
                "user",
            )
        };
        let (ids, count): (Vec<Uuid>, usize) = match filter {
            Some(f) => {
                let matched = self.matching_users(&parse_user_filter(f)?);
                let page = matched
                    .range((start, Bound::Unbounded))
                    .take(page_size.max(1) + 1)
                    .copied()
                    .collect();
                (page, matched.len())
            }
            None => (
                self.user_order
                    .range((start, Bound::Unbounded))
                    .filter(|id| self.visible(**id))
                    .take(page_size.max(1) + 1)
                    .copied()
                    .collect(),
                self.visible_user_count(),
            ),
        };
        let more = ids.len() > page_size.max(1);
        let page: Vec<Uuid> = ids.into_iter().take(page_size.max(1)).collect();
        Ok(UsersPage {
            value: page.iter().map(render).collect::<Result<_, _>>()?,
            next: if more { page.last().copied() } else { None },
            count,
        })
    }

    /// `PATCH /users/{id or upn}`: the simulator updates `usageLocation` (validated as an ISO 3166
    /// two-letter code) and refuses other properties (microsoft-graph-docs-contrib
    /// `api-reference/v1.0/api/user-update.md`; 204 on success). Returns the user's id.
    pub fn update_user(&mut self, key: &str, body: &Value) -> Result<Uuid, GraphError> {
        let id = self
            .resolve_user(key)
            .ok_or_else(|| GraphError::not_found(key))?;
        let obj = body.as_object().ok_or_else(|| {
            GraphError::new(400, "BadRequest", "Empty Payload. JSON content expected.")
        })?;
        if let Some(other) = obj.keys().find(|k| *k != "usageLocation") {
            return Err(GraphError::bad_request(format!(
                "The simulator updates only 'usageLocation' of a user, not '{other}'."
            )));
        }
        if let Some(v) = obj.get("usageLocation") {
            let location = validate_usage_location(v)?;
            self.set_usage_location(id, location);
        }
        Ok(id)
    }

    /// Sets a user's usage location (the mutation primitive of `update_user`), recording the
    /// user's previous version for the replicas the write has not reached yet.
    fn set_usage_location(&mut self, id: Uuid, location: Option<String>) {
        let lag = write_lag();
        if let Some(u) = self.users.get_mut(&id) {
            if let Some((now, lag)) = lag {
                self.replication.user_written(id, Some(u.clone()), now, lag);
            }
            u.usage_location = location;
        }
    }

    /// The number of users the current view shows: all of them, less those whose creation is
    /// not yet replicated when the view hides new objects (from the pending writes only, so
    /// that no user is scanned).
    fn visible_user_count(&self) -> usize {
        let hides_new = replica::current().is_some_and(View::hides_new);
        if !hides_new || self.replication.is_empty() {
            return self.users.len();
        }
        let now = Instant::now();
        let hidden = self
            .replication
            .users
            .values()
            .filter(|p| p.before.is_none() && p.active(now))
            .count();
        self.users.len().saturating_sub(hidden)
    }

    /// The id of the group with a `uniqueName` (case-insensitive), through the group lookup.
    fn group_by_unique_name(&self, name: &str) -> Option<Uuid> {
        let id = self.unique_names.get(&name.to_lowercase())?;
        self.group(&id.to_string()).ok().map(|g| g.id)
    }

    /// `GET /groups/{id}` or `GET /groups(uniqueName='…')` with an optional `$select`
    /// (microsoft-graph-docs-contrib `api-reference/v1.0/api/group-get.md`).
    pub fn get_group(&self, key: &GroupKey, selection: Option<&str>) -> Result<Value, GraphError> {
        let id = self.group_key(key)?;
        select(
            self.group(&id.to_string())?.json(),
            selection,
            None,
            "group",
        )
    }

    fn group_key(&self, key: &GroupKey) -> Result<Uuid, GraphError> {
        match key {
            GroupKey::Id(id) => self.group(id).map(|g| g.id),
            GroupKey::UniqueName(name) => self
                .group_by_unique_name(name)
                .ok_or_else(|| GraphError::not_found(name)),
        }
    }

    /// `GET /groups/{id}/members/$count`: the number of direct members the current view shows
    /// (a lagging replica counts the membership from before changes not yet replicated, and
    /// leaves out users it does not have yet, as `members_page` lists them).
    pub fn member_count(&self, group: &str) -> Result<usize, GraphError> {
        let group = self.group(group)?;
        if self.replication.is_empty() || !replica::current().is_some_and(View::hides_new) {
            return Ok(group.members.len());
        }
        Ok(membership_ids(
            Some(&group.members),
            self.replication.members.get(&group.id),
            None,
        )
        .filter(|id| self.visible_user(id).is_some())
        .count())
    }

    /// Validates a `members@odata.bind` list for group `gid` (absent: none): at most
    /// [`MAX_MEMBER_BINDS`], each a `…/directoryObjects/{id}` or `…/users/{id}` URL of an existing
    /// user that is not yet a member and not named twice. "If an error condition exists in the
    /// request body, no members are added" (`group-post-members.md`, example 2).
    fn member_binds(&self, gid: Option<Uuid>, body: &Value) -> Result<Vec<Uuid>, GraphError> {
        let Some(list) = body.get("members@odata.bind") else {
            return Ok(Vec::new());
        };
        let list = list.as_array().ok_or_else(|| {
            GraphError::bad_request(
                "Invalid value for 'members@odata.bind': an array of URLs is expected.",
            )
        })?;
        if list.len() > MAX_MEMBER_BINDS {
            // The docs give the limit, not the wording.
            return Err(GraphError::bad_request(format!(
                "The request has {} references in 'members@odata.bind'; at most {MAX_MEMBER_BINDS} can be added in one request.",
                list.len()
            )));
        }
        let members = gid.map(|g| self.group(&g.to_string())).transpose()?;
        let mut out = Vec::with_capacity(list.len());
        for url in list {
            let url = url.as_str().unwrap_or_default();
            let mut parts = url.trim_end_matches('/').rsplit('/');
            let key = parts.next().unwrap_or_default();
            let kind = parts.next().unwrap_or_default();
            if !(kind.eq_ignore_ascii_case("directoryObjects")
                || kind.eq_ignore_ascii_case("users"))
            {
                return Err(GraphError::bad_request(format!(
                    "Invalid URL format specified in @odata.bind for members: '{url}'."
                )));
            }
            let uid = Uuid::parse_str(key)
                .ok()
                .and_then(|_| self.resolve_user(key))
                .ok_or_else(|| GraphError::not_found(key))?;
            if out.contains(&uid) || members.is_some_and(|g| g.members.contains(&uid)) {
                return Err(GraphError::bad_request(
                    "One or more added object references already exist for the following modified properties: 'members'.",
                ));
            }
            out.push(uid);
        }
        Ok(out)
    }

    /// Adds members validated by [`Self::member_binds`] through the membership-add primitive,
    /// in order; each add is recorded for the replicas like a `POST …/members/$ref`.
    fn add_members(&mut self, gid: Uuid, members: &[Uuid]) {
        for uid in members {
            self.insert_member(gid, *uid);
        }
    }

    /// The writable properties of a security group in a `PATCH` body, validated; unknown ones
    /// are refused rather than silently ignored.
    fn group_patch(body: &Value) -> Result<GroupPatch, GraphError> {
        let obj = body.as_object().ok_or_else(|| {
            GraphError::new(400, "BadRequest", "Empty Payload. JSON content expected.")
        })?;
        let text = |k: &str| -> Result<Option<String>, GraphError> {
            match obj.get(k) {
                None => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(GraphError::bad_request(format!(
                    "Invalid value specified for property '{k}' of resource 'Group'."
                ))),
            }
        };
        for (k, v) in obj {
            let ok = match k.as_str() {
                "displayName" | "description" | "mailNickname" | "members@odata.bind" => true,
                "mailEnabled" => v == &json!(false),
                "securityEnabled" => v == &json!(true),
                "groupTypes" => v == &json!([]),
                _ => false,
            };
            if !ok {
                return Err(GraphError::bad_request(format!(
                    "The simulator does not support '{k}' with this value on a group (security groups only)."
                )));
            }
        }
        Ok(GroupPatch {
            display_name: text("displayName")?,
            description: text("description")?,
            mail_nickname: text("mailNickname")?,
        })
    }

    /// Applies changed properties to a group (the mutation primitive of updates), keeping the
    /// display-name index right.
    fn set_group_properties(&mut self, gid: Uuid, patch: GroupPatch) {
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        if let Some(name) = patch.display_name {
            let old = std::mem::replace(&mut g.display_name, name.clone());
            if let Some(ids) = self.group_names.get_mut(&old.to_lowercase()) {
                ids.retain(|id| *id != gid);
            }
            self.group_names
                .entry(name.to_lowercase())
                .or_default()
                .push(gid);
        }
        let Some(g) = self.groups.get_mut(&gid) else {
            return;
        };
        if let Some(d) = patch.description {
            g.description = Some(d);
        }
        if let Some(n) = patch.mail_nickname {
            g.mail_nickname = n;
        }
    }

    /// `PATCH /groups/{id}`: group properties and `members@odata.bind` (up to 20, all or none;
    /// microsoft-graph-docs-contrib `api-reference/v1.0/api/group-post-members.md`, example 2, and
    /// `group-update.md`). Returns the members added.
    pub fn update_group(&mut self, group: &str, body: &Value) -> Result<Vec<Uuid>, GraphError> {
        let gid = self.group(group)?.id;
        let patch = Self::group_patch(body)?;
        let members = self.member_binds(Some(gid), body)?;
        self.set_group_properties(gid, patch);
        self.add_members(gid, &members);
        Ok(members)
    }

    /// `PATCH /groups(uniqueName='…')` (microsoft-graph-docs-contrib
    /// `api-reference/v1.0/api/group-upsert.md`): with `Prefer: create-if-missing` a missing group
    /// is created (201 with the group, `uniqueName` set; `displayName`, `mailEnabled`,
    /// `mailNickname` and `securityEnabled` required), an existing one updated (204); without it
    /// the request "is treated as an update operation", so a missing group is 404. `uniqueName` is
    /// unique (compared case-insensitively by the simulator); `displayName` is not.
    pub fn upsert_group(
        &mut self,
        unique_name: &str,
        body: &Value,
        create_if_missing: bool,
    ) -> Result<Upsert, GraphError> {
        let patch = Self::group_patch(body)?;
        if let Some(gid) = self.group_by_unique_name(unique_name) {
            let members = self.member_binds(Some(gid), body)?;
            self.set_group_properties(gid, patch);
            self.add_members(gid, &members);
            return Ok(Upsert::Updated(members));
        }
        // A group that exists but whose creation this write's replica has not seen: the write
        // names an object not yet replicated and answers 404 ([`super::replica`]), rather than
        // creating a second group or refusing the name as taken.
        if !create_if_missing || self.unique_names.contains_key(&unique_name.to_lowercase()) {
            return Err(GraphError::not_found(unique_name));
        }
        self.check_unique_name_free(unique_name)?;
        let members = self.member_binds(None, body)?;
        let required = |k: &str| {
            GraphError::bad_request(format!(
                "Invalid value specified for property '{k}' of resource 'Group'."
            ))
        };
        for k in ["mailEnabled", "securityEnabled"] {
            if body.get(k).is_none() {
                return Err(required(k));
            }
        }
        let group = Group {
            id: Uuid::new_v4(),
            display_name: patch.display_name.ok_or_else(|| required("displayName"))?,
            mail_nickname: patch
                .mail_nickname
                .ok_or_else(|| required("mailNickname"))?,
            unique_name: Some(unique_name.to_owned()),
            description: patch.description,
            members: BTreeSet::new(),
            licences: Vec::new(),
        };
        let gid = group.id;
        self.insert_group(group);
        // The group was just created by this very write: its members are added to it whatever
        // the write's replica shows of new objects.
        self.add_members(gid, &members);
        let json = self
            .groups
            .get(&gid)
            .map(Group::json)
            .ok_or_else(|| GraphError::not_found(unique_name))?;
        Ok(Upsert::Created(json, members))
    }
}

/// How a group is addressed: by id, or by its `uniqueName` alternate key.
#[derive(Debug, Clone)]
pub enum GroupKey {
    /// `/groups/{id}`.
    Id(String),
    /// `/groups(uniqueName='…')`.
    UniqueName(String),
}

/// Validated writable properties of a group `PATCH`.
struct GroupPatch {
    display_name: Option<String>,
    description: Option<String>,
    mail_nickname: Option<String>,
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

    fn directory_with(users: serde_json::Value) -> Directory {
        let seed: Seed = serde_json::from_value(json!({ "users": users })).unwrap();
        let mut d = Directory::default();
        d.seed(&seed).unwrap();
        d
    }

    fn upns(d: &Directory, filter: &str) -> Vec<String> {
        let page = d.list_users(Some(filter), None, None, 10).unwrap();
        let mut v: Vec<String> = page
            .value
            .iter()
            .map(|u| u["userPrincipalName"].as_str().unwrap().to_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn user_filters_parse_with_doubled_quotes_lambdas_and_or() {
        assert_eq!(
            parse_user_filter("mail eq 'o''brien@x.org'"),
            Ok(UserFilter::Mail("o'brien@x.org".into()))
        );
        assert_eq!(
            parse_user_filter(
                "proxyAddresses/any(p: p eq 'smtp:a@x.org') or userPrincipalName eq 'b@x.org'"
            ),
            Ok(UserFilter::Or(
                Box::new(UserFilter::ProxyAddress("smtp:a@x.org".into())),
                Box::new(UserFilter::Upn("b@x.org".into()))
            ))
        );
        let unsupported = parse_user_filter("displayName eq 'x'").unwrap_err();
        assert_eq!(unsupported.code, "Request_UnsupportedQuery");
        assert_eq!(
            parse_user_filter("startsWith(mail,'a')").unwrap_err().code,
            "Request_UnsupportedQuery"
        );
        assert_eq!(parse_user_filter("mail eq 'open").unwrap_err().status, 400);
        assert_eq!(
            parse_user_filter("mail eq 'a' junk").unwrap_err().status,
            400
        );
    }

    #[test]
    fn users_are_found_by_mail_proxy_address_and_other_mails_case_insensitively() {
        let d = directory_with(json!([
            {"userPrincipalName": "jane@x.org", "mail": "Jane.Smith@x.org",
             "proxyAddresses": ["SMTP:Jane.Smith@x.org", "smtp:js@x.org"]},
            {"userPrincipalName": "bob@x.org", "otherMails": ["bob@home.example"]},
        ]));
        assert_eq!(upns(&d, "mail eq 'jane.smith@X.org'"), ["jane@x.org"]);
        assert_eq!(
            upns(&d, "proxyAddresses/any(p:p eq 'smtp:jane.smith@x.org')"),
            ["jane@x.org"]
        );
        assert_eq!(
            upns(&d, "proxyAddresses/any(p:p eq 'SMTP:JS@x.org')"),
            ["jane@x.org"]
        );
        assert_eq!(
            upns(&d, "otherMails/any(m:m eq 'BOB@home.example')"),
            ["bob@x.org"]
        );
        assert_eq!(
            upns(&d, "mail eq 'js@x.org' or userPrincipalName eq 'BOB@x.org'"),
            ["bob@x.org"]
        );
        assert!(upns(&d, "mail eq 'nobody@x.org'").is_empty());
    }

    #[test]
    fn proxy_addresses_are_unique_across_users() {
        let mut d = directory_with(json!([
            {"userPrincipalName": "a@x.org", "proxyAddresses": ["SMTP:shared@x.org"]},
        ]));
        let seed: Seed = serde_json::from_value(json!({"users": [
            {"userPrincipalName": "b@x.org", "proxyAddresses": ["smtp:SHARED@x.org"]}]}))
        .unwrap();
        let err = d.seed(&seed).unwrap_err();
        assert!(err.message.contains("proxyAddresses"), "{err:?}");
        assert!(d.resolve_user("b@x.org").is_none());
    }

    #[test]
    fn upn_rules_follow_entra_id() {
        for ok in [
            "a.b@x.org",
            "o'brien@x.org",
            "alice_contoso.com#EXT#@tenant.onmicrosoft.com",
            "a!#^~-_@x.org",
        ] {
            assert_eq!(validate_upn(ok), Ok(()), "{ok}");
        }
        let long_local = format!("{}@x.org", "a".repeat(65));
        let long_domain = format!("a@{}.org", "d".repeat(45));
        for bad in [
            "no-at-sign",
            "a.@x.org",
            "a b@x.org",
            "ä@x.org",
            "a@b@x.org",
            "a+tag@x.org",
            &long_local,
            &long_domain,
        ] {
            let e = validate_upn(bad).unwrap_err();
            assert_eq!((e.status, e.code), (400, "Request_BadRequest"), "{bad}");
        }
        assert_eq!(validate_usage_location(&json!("gb")), Ok(Some("GB".into())));
        assert_eq!(validate_usage_location(&Value::Null), Ok(None));
        for bad in [json!("GBR"), json!("G1"), json!(""), json!(44)] {
            assert!(validate_usage_location(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn member_binds_are_all_or_nothing_and_use_the_add_member_primitive() {
        let mut d = directory_with(json!([
            {"id": "00000000-0000-0000-0000-000000000001", "userPrincipalName": "a@x.org"},
            {"id": "00000000-0000-0000-0000-000000000002", "userPrincipalName": "b@x.org"},
        ]));
        let g = d
            .create_group(&json!({"displayName": "G", "mailNickname": "g",
                "mailEnabled": false, "securityEnabled": true}))
            .unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned();
        let url = |n: u8| {
            format!(
                "https://graph.microsoft.com/v1.0/directoryObjects/00000000-0000-0000-0000-00000000000{n}"
            )
        };
        // One unknown user: nobody is added.
        let err = d
            .update_group(&g, &json!({"members@odata.bind": [url(1), url(9)]}))
            .unwrap_err();
        assert_eq!(err.status, 404);
        assert_eq!(d.member_count(&g), Ok(0));
        let added = d
            .update_group(&g, &json!({"members@odata.bind": [url(1), url(2)]}))
            .unwrap();
        assert_eq!(added.len(), 2);
        assert_eq!(d.member_count(&g), Ok(2));
        assert_eq!(d.group_names_of("a@x.org"), Some(vec!["G".to_owned()]));
        // Already a member: refused whole.
        let err = d
            .update_group(&g, &json!({"members@odata.bind": [url(1)]}))
            .unwrap_err();
        assert_eq!(err.status, 400);
        let too_many: Vec<String> = (0..21).map(|_| url(1)).collect();
        let err = d
            .update_group(&g, &json!({"members@odata.bind": too_many}))
            .unwrap_err();
        assert!(err.message.contains("20"), "{err:?}");
    }

    #[test]
    fn upsert_creates_once_by_unique_name_and_then_updates() {
        let mut d = Directory::default();
        let body = json!({"displayName": "Ops", "mailNickname": "ops",
            "mailEnabled": false, "securityEnabled": true});
        assert_eq!(
            d.upsert_group("ops-1", &body, false)
                .err()
                .map(|e| e.status),
            Some(404)
        );
        let Ok(Upsert::Created(group, _)) = d.upsert_group("ops-1", &body, true) else {
            panic!("not created");
        };
        assert_eq!(group["uniqueName"], "ops-1");
        let renamed = json!({"displayName": "Operations"});
        assert!(matches!(
            d.upsert_group("OPS-1", &renamed, true),
            Ok(Upsert::Updated(_))
        ));
        let got = d
            .get_group(
                &GroupKey::UniqueName("ops-1".into()),
                Some("id,displayName"),
            )
            .unwrap();
        assert_eq!(got["displayName"], "Operations");
        assert_eq!(got["id"], group["id"]);
        assert_eq!(
            d.find_groups(Some("displayName eq 'Ops'")).unwrap()["value"],
            json!([])
        );
        assert_eq!(
            parse_unique_name_key("groups(uniqueName='O''Neil team')").as_deref(),
            Some("O'Neil team")
        );
        assert_eq!(parse_unique_name_key("groups(displayName='x')"), None);
    }

    fn bind(users: &[Uuid]) -> Value {
        json!({"members@odata.bind": users.iter()
            .map(|u| format!("https://graph.microsoft.com/v1.0/directoryObjects/{u}"))
            .collect::<Vec<_>>()})
    }

    #[test]
    fn an_upserted_group_lags_like_a_created_one_to_reads_and_to_writes_naming_it() {
        let (mut d, user, _) = directory();
        let body = json!({"displayName": "Role X", "mailNickname": "rolex",
            "mailEnabled": false, "securityEnabled": true,
            "members@odata.bind": [format!("https://graph.microsoft.com/v1.0/users/{user}")]});
        let created = {
            // A write that itself hides new objects still creates the group and adds its
            // members: the group is its own.
            let _w = enter(write(3_600_000, true));
            match d.upsert_group("role-x", &body, true).unwrap() {
                Upsert::Created(g, members) => {
                    assert_eq!(members, vec![user]);
                    g
                }
                Upsert::Updated(_) => panic!("not created"),
            }
        };
        let gid = created["id"].as_str().unwrap().to_owned();
        let by_name = GroupKey::UniqueName("ROLE-X".into());
        let by_id = GroupKey::Id(gid.clone());
        {
            let _r = enter(View::Lagging);
            assert_eq!(d.get_group(&by_name, None).unwrap_err().status, 404);
            assert_eq!(d.get_group(&by_id, None).unwrap_err().status, 404);
            assert_eq!(
                d.find_groups(Some("displayName eq 'Role X'")).unwrap()["value"],
                json!([])
            );
            let (groups, _) = d
                .member_of_page(&user.to_string(), None, false, None, 10)
                .unwrap();
            assert!(groups.is_empty());
        }
        {
            let _r = enter(View::Fresh);
            assert_eq!(
                d.get_group(&by_name, Some("id")).unwrap()["id"],
                gid.as_str()
            );
            assert_eq!(d.member_count(&gid).unwrap(), 1);
        }
        {
            // Writes naming the new group, by id or by uniqueName, answer 404 on a replica that
            // has not seen it, and an upsert does not create a second group.
            let _w = enter(write(3_600_000, true));
            let other = Uuid::new_v4();
            assert_eq!(
                d.update_group(&gid, &bind(&[other])).unwrap_err().status,
                404
            );
            assert_eq!(
                d.upsert_group("role-x", &body, true)
                    .err()
                    .map(|e| e.status),
                Some(404)
            );
        }
        assert_eq!(d.unique_names.len(), 1);
        let _w = enter(write(3_600_000, false));
        assert!(matches!(
            d.upsert_group("role-x", &json!({"description": "d"}), true),
            Ok(Upsert::Updated(_))
        ));
    }

    #[test]
    fn members_bound_by_patch_lag_in_members_count_and_member_of() {
        let (mut d, user, group) = directory();
        let gid = group.to_string();
        {
            let _w = enter(write(3_600_000, false));
            assert_eq!(d.update_group(&gid, &bind(&[user])).unwrap(), vec![user]);
        }
        {
            let _r = enter(View::Lagging);
            assert_eq!(member_ids(&d, group), Vec::<Uuid>::new());
            assert_eq!(d.member_count(&gid).unwrap(), 0);
            let (groups, _) = d
                .member_of_page(&user.to_string(), None, false, None, 10)
                .unwrap();
            assert!(groups.is_empty());
        }
        {
            let _r = enter(View::Fresh);
            assert_eq!(member_ids(&d, group), vec![user]);
            assert_eq!(d.member_count(&gid).unwrap(), 1);
        }
        // The primary has it: binding the user again is refused.
        let _w = enter(write(3_600_000, false));
        assert_eq!(
            d.update_group(&gid, &bind(&[user])).unwrap_err().status,
            400
        );
    }

    #[test]
    fn user_filters_and_usage_location_patches_go_through_the_replica_view() {
        let (mut d, user, _) = directory();
        {
            let _w = enter(write(3_600_000, false));
            d.update_user(&user.to_string(), &json!({"usageLocation": "FR"}))
                .unwrap();
            d.create_user(
                &json!({"userPrincipalName": "new@example.org", "displayName": "N",
                "mailNickname": "new", "accountEnabled": true, "mail": "new@example.org",
                "passwordProfile": {"password": "x"}}),
            )
            .unwrap();
        }
        let location = |d: &Directory| {
            let page = d
                .list_users(
                    Some("userPrincipalName eq 'a@example.org'"),
                    Some("usageLocation"),
                    None,
                    10,
                )
                .unwrap();
            page.value[0]["usageLocation"].clone()
        };
        {
            let _r = enter(View::Lagging);
            assert_eq!(location(&d), json!("GB"));
            assert_eq!(upns(&d, "mail eq 'new@example.org'"), Vec::<String>::new());
            assert_eq!(d.list_users(None, None, None, 10).unwrap().count, 1);
        }
        {
            let _r = enter(View::Fresh);
            assert_eq!(location(&d), json!("FR"));
            assert_eq!(
                upns(&d, "mail eq 'new@example.org'"),
                vec!["new@example.org"]
            );
            assert_eq!(d.list_users(None, None, None, 10).unwrap().count, 2);
        }
        // A usage-location write naming the new user answers 404 on a replica without it.
        let _w = enter(write(3_600_000, true));
        let e = d
            .update_user("new@example.org", &json!({"usageLocation": "GB"}))
            .unwrap_err();
        assert_eq!((e.status, e.code), (404, "Request_ResourceNotFound"));
    }
}

//! The simulated directory: SKUs with seats, users, security groups, and Graph's rules about them.
//!
//! Every operation takes the lock once, does O(1) or O(log n) work on indexed maps and returns a
//! Graph-shaped JSON value or a [`GraphError`]. No operation scans all users.
//!
//! Eventual consistency ([`super::replica`]) lives in the lookup and mutation primitives: reads
//! go through `Directory::visible_user`, `Directory::visible_group` and the membership
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

mod filters;
mod groups;
mod licensing;
mod replication;
#[cfg(test)]
mod tests;
mod users;

use filters::*;
use replication::*;

pub use groups::{GroupKey, MAX_MEMBER_BINDS, Upsert, parse_unique_name_key};
pub use licensing::{AssignLicense, INHERITED_REMOVAL_MESSAGE, Rules as LicensingRules};
pub use users::{UsersPage, validate_upn, validate_usage_location};

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
    /// Lower-cased displayName -> ids (display names are not unique in Graph); ordered, so that
    /// `startswith(displayName,'…')` is a range of keys.
    group_names: BTreeMap<String, Vec<Uuid>>,
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

/// One page of a directory-object collection, as Graph pages them ("Paging Microsoft Graph
/// data", `paging.md`): at most `page_size` (at least 1) of `entries` (id first, in skip-token
/// order) as `json` renders them, and the skip token of the next page (the page's last id) when
/// more follow. Members, `memberOf` and users are paged by it.
fn page_of<T>(
    mut entries: impl Iterator<Item = (Uuid, T)>,
    page_size: usize,
    mut json: impl FnMut(T) -> Result<Value, GraphError>,
) -> Result<(Vec<Value>, Option<Uuid>), GraphError> {
    let mut page = Vec::new();
    let mut last = None;
    for (id, entry) in entries.by_ref().take(page_size.max(1)) {
        page.push(json(entry)?);
        last = Some(id);
    }
    let more = entries.next().is_some();
    Ok((page, if more { last } else { None }))
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
}

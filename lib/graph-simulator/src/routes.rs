//! HTTP surface of the simulator: the token endpoint, the Graph v1.0 subset, `$batch`, and the
//! simulator-only `/_sim/*` admin routes.
//!
//! Graph calls are routed by hand (one fallback handler) rather than by axum's router, because the
//! same dispatch must serve the inner requests of a `$batch`, whose URLs are plain strings.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Form, Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post, put};
use rand::Rng;
use rand::seq::SliceRandom;
use secrecy::ExposeSecret;
use serde_json::{Value, json};
use uuid::Uuid;

use super::Shared;
use super::replica::{self, Lag, View};
use super::state::{
    AssignLicense, GraphError, GroupKey, RequestIds, Upsert, parse_unique_name_key,
};
use super::stats::WriteLogEntry;
use super::throttle::{
    LIST_COST_UNITS, LOAD_REPORTED_ABOVE, Limits, Priority, READ_COST_UNITS, SIMULATED_TENANT_ID,
    Throttled, WRITE_COST_UNITS,
};

/// Graph's limit of requests in one `$batch`.
pub const MAX_BATCH_REQUESTS: usize = 20;

/// The simulator's router.
pub fn router(shared: Arc<Shared>) -> axum::Router {
    axum::Router::new()
        .route("/{tenant}/oauth2/v2.0/token", post(token))
        .route(
            "/{tenant}/v2.0/.well-known/openid-configuration",
            get(openid_configuration),
        )
        .route("/{tenant}/discovery/v2.0/keys", get(jwks))
        .route("/_sim/stats", get(stats))
        .route("/_sim/reset-stats", post(reset_stats))
        .route("/_sim/config", get(get_config).post(set_config))
        .route("/_sim/users/{key}", get(sim_user))
        .route("/_sim/users/{key}/assignLicense", post(sim_assign_license))
        .route("/_sim/fail-next", post(fail_next))
        .route("/_sim/revoke-tokens", post(revoke_tokens))
        .route("/_sim/access", get(get_access).post(set_access))
        .route("/_sim/skus/{part}", patch(sim_update_sku))
        .route("/_sim/skus/{part}/plans", post(sim_add_plan))
        .route("/_sim/groups", post(sim_create_group))
        .route(
            "/_sim/groups/{id}/assignedLicenses",
            put(sim_group_licences),
        )
        .route("/_sim/groups/{id}/members", post(sim_group_members))
        .route(
            "/_sim/groups/{id}/members/{user}",
            axum::routing::delete(sim_remove_group_member),
        )
        .fallback(graph)
        .with_state(shared)
}

/// The header a client names its request by, echoed in the response.
const CLIENT_REQUEST_ID: &str = "client-request-id";
/// The header Graph names its response by.
const REQUEST_ID: &str = "request-id";
/// The request header asking for a throttling priority (`concepts/throttling-limits.md`).
const THROTTLE_PRIORITY: &str = "x-ms-throttle-priority";

/// What a Graph call carries besides its method, URL and body.
#[derive(Debug, Clone, Copy)]
struct CallContext {
    /// Its `x-ms-throttle-priority` (an inner `$batch` request without one: the `$batch`'s).
    priority: Priority,
    /// A request of its own (not inside a `$batch`), whose connection can be dropped.
    single: bool,
    /// Its `ConsistencyLevel` and `Prefer` headers (an inner request's own).
    hints: Hints,
}

/// A Graph answer before it becomes an HTTP response or an inner `$batch` response.
#[derive(Debug)]
struct SimResponse {
    status: u16,
    /// `Retry-After` in seconds, as sent (Graph may send a fraction, e.g. `2.128`).
    retry_after: Option<String>,
    body: Option<Value>,
    /// An error, whose body is made once the response's ids are known.
    error: Option<GraphError>,
    /// Headers of its own (throttling information).
    headers: Vec<(&'static str, String)>,
    /// Answer by dropping the connection (a single request's only).
    dropped: bool,
    /// The body is sent as `text/plain` (a `$count` segment), not JSON.
    plain_text: bool,
}

impl SimResponse {
    fn ok(status: u16, body: Option<Value>) -> Self {
        Self {
            status,
            retry_after: None,
            body,
            error: None,
            headers: Vec::new(),
            dropped: false,
            plain_text: false,
        }
    }

    fn error(e: &GraphError) -> Self {
        Self {
            status: e.status,
            retry_after: None,
            body: None,
            error: Some(e.clone()),
            headers: Vec::new(),
            dropped: false,
            plain_text: false,
        }
    }

    /// A 429 with `Retry-After`, `x-ms-throttle-scope` (`<Scope>/<Limit>/<ApplicationId>/
    /// <TenantId>`) and `x-ms-throttle-information`, as `concepts/throttling-limits.md`
    /// ("Throttled responses requests") describes them.
    fn throttled(t: &Throttled, application_id: &str) -> Self {
        let mut r = Self::error(&GraphError::new(
            429,
            "TooManyRequests",
            "Too many requests. Please retry after the time given in Retry-After.",
        ))
        .with_retry_after(t.retry_after.to_string());
        r.headers.push((
            "x-ms-throttle-scope",
            format!("{}/{application_id}/{SIMULATED_TENANT_ID}", t.limit.scope()),
        ));
        r.headers.push((
            "x-ms-throttle-information",
            t.limit.information().to_owned(),
        ));
        r
    }

    /// Adds `x-ms-throttle-limit-percentage` when the load is above 80 %, as Graph does on
    /// regular responses (`concepts/throttling-limits.md`, "Regular responses requests").
    fn with_load(mut self, load: f64) -> Self {
        if load > LOAD_REPORTED_ABOVE {
            self.headers
                .push(("x-ms-throttle-limit-percentage", format!("{load:.1}")));
        }
        self
    }

    /// A 503 with a `Retry-After` of one to two seconds: "503 Service Unavailable: … repeat the
    /// request after a delay, the length of which may be specified in a Retry-After header"
    /// (microsoft-graph-docs-contrib `concepts/errors.md`), with a fraction as an older docs
    /// sample had (`Retry-After: 2.128`, `concepts/throttling.md`), so that clients must parse
    /// decimals.
    fn unavailable() -> Self {
        Self::error(&GraphError::new(
            503,
            "serviceNotAvailable",
            "The service is temporarily unavailable. Please retry.",
        ))
        .with_retry_after(short_retry_after())
    }

    /// A 5xx other than 503 (500 `generalException`, 504 `gatewayTimeout`).
    fn server_error(status: u16) -> Self {
        let (code, message) = if status == 504 {
            (
                "gatewayTimeout",
                "The gateway did not receive a response in time.",
            )
        } else {
            ("generalException", "An internal server error occurred.")
        };
        Self::error(&GraphError::new(status, code, message))
    }

    /// A `text/plain` answer, as Graph gives to a `$count` segment
    /// (microsoft-graph-docs-contrib `api-reference/v1.0/api/group-list-members.md`).
    fn text(status: u16, body: Value) -> Self {
        Self {
            plain_text: true,
            ..Self::ok(status, Some(body))
        }
    }

    fn with_retry_after(mut self, seconds: String) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// The body, an error's carrying `ids` in its `innerError`.
    fn body(&mut self, ids: &RequestIds) -> Option<Value> {
        match &self.error {
            Some(e) => Some(e.body(ids)),
            None => self.body.take(),
        }
    }

    /// The HTTP response, with `request-id`, the echoed `client-request-id` and `Date`, as Graph
    /// sends on every response (microsoft-graph-docs-contrib `concepts/best-practices-concept.md`,
    /// "Reliability and support").
    fn into_http(mut self, ids: &RequestIds) -> Response {
        let plain_text = self.plain_text;
        let mut resp = match self.body(ids) {
            Some(Value::String(text)) if plain_text => text.into_response(),
            Some(body) if plain_text => body.to_string().into_response(),
            Some(body) => Json(body).into_response(),
            None => Response::new(Body::empty()),
        };
        *resp.status_mut() = StatusCode::from_u16(self.status).unwrap_or(StatusCode::OK);
        let headers = resp.headers_mut();
        if let Some(secs) = self.retry_after.as_deref()
            && let Ok(v) = HeaderValue::from_str(secs)
        {
            headers.insert(header::RETRY_AFTER, v);
        }
        for (name, value) in &self.headers {
            if let Ok(v) = HeaderValue::from_str(value) {
                headers.insert(*name, v);
            }
        }
        if self.status == 401 {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(WWW_AUTHENTICATE_GRAPH),
            );
        }
        for (name, value) in [
            (REQUEST_ID, ids.request_id.clone()),
            (CLIENT_REQUEST_ID, ids.client_request_id.clone()),
            (header::DATE.as_str(), ids.http_date()),
        ] {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        resp
    }
}

/// A `Retry-After` of one to two seconds, with a fraction (see [`SimResponse::unavailable`]).
fn short_retry_after() -> String {
    let secs = rand::rng().random_range(1.0..=2.0_f64);
    format!("{secs:.3}")
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Percent-decodes a URL component; `+` is a space only in queries.
fn pct_decode(s: &str, plus_is_space: bool) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 3;
                        continue;
                    }
                    _ => out.push(b'%'),
                }
            }
            b'+' if plus_is_space => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes a query value.
fn pct_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~,".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The challenge Graph sends with every 401: Entra ID's authorize endpoint and Graph's own
/// application id as the resource (observed on graph.microsoft.com; the docs name the header in
/// microsoft-graph-docs-contrib `concepts/errors.md` only as part of a 401).
const WWW_AUTHENTICATE_GRAPH: &str = r#"Bearer realm="", authorization_uri="https://login.microsoftonline.com/common/oauth2/authorize", client_id="00000003-0000-0000-c000-000000000000""#;

/// The request headers that change what a Graph call does, from an HTTP request or from the
/// `headers` object of an inner `$batch` request.
#[derive(Debug, Clone, Copy, Default)]
struct Hints {
    /// `ConsistencyLevel: eventual`: advanced queries, needed by `$count`
    /// (microsoft-graph-docs-contrib `concepts/aad-advanced-queries.md`).
    eventual: bool,
    /// `Prefer: create-if-missing` (`group-upsert.md`).
    create_if_missing: bool,
}

impl Hints {
    fn from_pairs<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> Self {
        let mut h = Self::default();
        for (name, value) in pairs {
            if name.eq_ignore_ascii_case("ConsistencyLevel") {
                h.eventual |= value.trim().eq_ignore_ascii_case("eventual");
            } else if name.eq_ignore_ascii_case("Prefer") {
                h.create_if_missing |= value
                    .split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("create-if-missing"));
            }
        }
        h
    }

    fn from_http(headers: &HeaderMap) -> Self {
        Self::from_pairs(
            headers
                .iter()
                .filter_map(|(k, v)| Some((k.as_str(), v.to_str().ok()?))),
        )
    }

    fn from_batch(headers: Option<&serde_json::Map<String, Value>>) -> Self {
        Self::from_pairs(
            headers
                .into_iter()
                .flatten()
                .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?))),
        )
    }
}

/// The `…/{id}` keys of a `members@odata.bind` list (write-log targets: one per member).
fn bind_targets(body: Option<&Value>) -> Vec<String> {
    body.and_then(|b| b.get("members@odata.bind"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|u| u.trim_end_matches('/').rsplit('/').next())
        .map(str::to_owned)
        .collect()
}

/// A Graph call, classified before it is throttled or executed.
#[derive(Debug)]
enum Route {
    Skus,
    GetUser(String),
    AssignLicense(String),
    CreateUser,
    CreateGroup,
    ListGroups,
    ListMembers(String),
    /// `GET /users/{id}/memberOf`, and with the OData cast `/microsoft.graph.group` (true).
    MemberOf(String, bool),
    AddMember(String),
    RemoveMember(String, String),
    Batch,
    /// `GET /users[?$filter=…]`.
    ListUsers,
    /// `PATCH /users/{id or upn}`.
    UpdateUser(String),
    /// `GET /groups/{id}`, `GET /groups(uniqueName='…')`.
    GetGroup(GroupKey),
    /// `PATCH /groups/{id}` (properties, `members@odata.bind`).
    UpdateGroup(String),
    /// `PATCH /groups(uniqueName='…')`.
    UpsertGroup(String),
    /// `GET /groups/{id}/members/$count`.
    CountMembers(String),
    /// A known path with a method it does not take.
    MethodNotAllowed,
    Invalid(String),
}

impl Route {
    /// Classifies a call; a path that exists with another method is [`Route::MethodNotAllowed`]
    /// (Graph's 405, microsoft-graph-docs-contrib `concepts/json-batching.md`, response 4).
    fn parse(method: &Method, path: &str) -> Self {
        match Self::parse_exact(method, path) {
            Self::Invalid(msg) => {
                let other = [Method::GET, Method::POST, Method::PATCH, Method::DELETE]
                    .iter()
                    .filter(|m| *m != method)
                    .any(|m| !matches!(Self::parse_exact(m, path), Self::Invalid(_)));
                if other {
                    Self::MethodNotAllowed
                } else {
                    Self::Invalid(msg)
                }
            }
            route => route,
        }
    }

    fn parse_exact(method: &Method, path: &str) -> Self {
        let segs: Vec<String> = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(|s| pct_decode(s, false))
            .collect();
        let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
        let m = method.clone();
        match (m, segs.as_slice()) {
            (Method::GET, ["subscribedSkus"]) => Self::Skus,
            (Method::POST, ["users"]) => Self::CreateUser,
            (Method::GET, ["users", u]) => Self::GetUser((*u).to_owned()),
            (Method::GET, ["users", u, m]) if m.eq_ignore_ascii_case("memberOf") => {
                Self::MemberOf((*u).to_owned(), false)
            }
            (Method::GET, ["users", u, m, "microsoft.graph.group"])
                if m.eq_ignore_ascii_case("memberOf") =>
            {
                Self::MemberOf((*u).to_owned(), true)
            }
            (Method::POST, ["users", u, "assignLicense"]) => Self::AssignLicense((*u).to_owned()),
            (Method::POST, ["groups"]) => Self::CreateGroup,
            (Method::GET, ["groups"]) => Self::ListGroups,
            (Method::GET, ["groups", g, "members"]) => Self::ListMembers((*g).to_owned()),
            (Method::POST, ["groups", g, "members", "$ref"]) => Self::AddMember((*g).to_owned()),
            (Method::DELETE, ["groups", g, "members", u, "$ref"]) => {
                Self::RemoveMember((*g).to_owned(), (*u).to_owned())
            }
            (Method::POST, ["$batch"]) => Self::Batch,
            (Method::GET, ["users"]) => Self::ListUsers,
            (Method::PATCH, ["users", u]) => Self::UpdateUser((*u).to_owned()),
            (Method::GET, ["groups", g]) => Self::GetGroup(GroupKey::Id((*g).to_owned())),
            (Method::PATCH, ["groups", g]) => Self::UpdateGroup((*g).to_owned()),
            (Method::GET, ["groups", g, "members", "$count"]) => {
                Self::CountMembers((*g).to_owned())
            }
            (Method::GET, [g]) if parse_unique_name_key(g).is_some() => Self::GetGroup(
                GroupKey::UniqueName(parse_unique_name_key(g).unwrap_or_default()),
            ),
            (Method::PATCH, [g]) if parse_unique_name_key(g).is_some() => {
                Self::UpsertGroup(parse_unique_name_key(g).unwrap_or_default())
            }
            (_, [first, ..]) => {
                Self::Invalid(format!("Resource not found for the segment '{first}'."))
            }
            (_, []) => Self::Invalid("Invalid request.".to_owned()),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            Self::Skus => "subscribed_skus",
            Self::GetUser(_) => "get_user",
            Self::AssignLicense(_) => "assign_license",
            Self::CreateUser => "create_user",
            Self::CreateGroup => "create_group",
            Self::ListGroups => "list_groups",
            Self::ListMembers(_) => "list_members",
            Self::MemberOf(..) => "member_of",
            Self::AddMember(_) => "add_member",
            Self::RemoveMember(..) => "remove_member",
            Self::Batch => "batch",
            Self::ListUsers => "list_users",
            Self::UpdateUser(_) => "update_user",
            Self::GetGroup(_) => "get_group",
            Self::UpdateGroup(_) => "update_group",
            Self::UpsertGroup(_) => "upsert_group",
            Self::CountMembers(_) => "count_members",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Invalid(_) => "invalid",
        }
    }

    fn is_write(&self) -> bool {
        matches!(
            self,
            Self::AssignLicense(_)
                | Self::CreateUser
                | Self::CreateGroup
                | Self::AddMember(_)
                | Self::RemoveMember(..)
                | Self::UpdateUser(_)
                | Self::UpdateGroup(_)
                | Self::UpsertGroup(_)
        )
    }

    fn cost(&self) -> u32 {
        match self {
            Self::Skus
            | Self::ListGroups
            | Self::ListMembers(_)
            | Self::MemberOf(..)
            | Self::ListUsers => LIST_COST_UNITS,
            _ if self.is_write() => WRITE_COST_UNITS,
            _ => READ_COST_UNITS,
        }
    }

    fn targets(&self, body: Option<&Value>) -> Vec<String> {
        match self {
            Self::AssignLicense(u) | Self::UpdateUser(u) => vec![u.clone()],
            Self::UpdateGroup(g) | Self::UpsertGroup(g) => std::iter::once(g.clone())
                .chain(bind_targets(body))
                .collect(),
            Self::AddMember(g) => vec![g.clone()],
            Self::RemoveMember(g, u) => vec![g.clone(), u.clone()],
            _ => Vec::new(),
        }
    }
}

/// Parses a query string into decoded pairs (keys compared case-insensitively by callers).
fn parse_query(query: Option<&str>) -> Vec<(String, String)> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (pct_decode(k, true), pct_decode(v, true))
        })
        .collect()
}

/// The `$top` of a directory-object collection (1 to 999), or `default`.
fn page_size(q: &[(String, String)], default: usize) -> Result<usize, GraphError> {
    match query_param(q, "$top") {
        Some(t) => t
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=999).contains(n))
            .ok_or_else(|| {
                GraphError::new(
                    400,
                    "BadRequest",
                    format!("Invalid page size specified: '{t}'."),
                )
            }),
        None => Ok(default),
    }
}

/// The `$skiptoken` of a collection page (the id of the previous page's last object).
fn skip_token(q: &[(String, String)]) -> Result<Option<Uuid>, GraphError> {
    query_param(q, "$skiptoken")
        .map(|t| {
            Uuid::parse_str(t)
                .map_err(|_| GraphError::new(400, "Request_BadRequest", "Invalid skip token."))
        })
        .transpose()
}

fn query_param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

impl Shared {
    /// Takes a scripted or random fault: `outer` asks for dropped connections (status 0), otherwise
    /// for 5xx answers of single Graph calls.
    fn take_fault(&self, outer: bool) -> Option<u16> {
        {
            let mut scripted = self.fail_next.lock();
            if scripted.0 > 0 && (scripted.1 == 0) == outer {
                scripted.0 -= 1;
                return Some(scripted.1);
            }
        }
        let b = self.behaviour.read();
        let mut rng = rand::rng();
        if outer {
            let p = b.dropped_connection_rate.clamp(0.0, 1.0);
            (p > 0.0 && rng.random_bool(p)).then_some(0)
        } else {
            let p = b.fault_rate.clamp(0.0, 1.0);
            (p > 0.0 && rng.random_bool(p)).then(|| if rng.random_bool(0.5) { 500 } else { 503 })
        }
    }

    /// The replica a Graph call sees ([`replica`]): a write's lag and whether objects not yet
    /// replicated are missing to it; a read is served by a lagging replica with
    /// `stale_read_probability`, drawn anew for every call (so reads are not monotonic).
    fn view_for(&self, is_write: bool) -> View {
        let b = self.behaviour.read();
        let chance = |p: f64| {
            let p = p.clamp(0.0, 1.0);
            p > 0.0 && rand::rng().random_bool(p)
        };
        if is_write {
            View::Write {
                hide_new: chance(b.new_object_write_404_probability),
                lag: Lag {
                    max: Duration::from_millis(b.replication_lag_ms),
                    long_probability: b.long_lag_probability,
                    long: Duration::from_millis(b.long_lag_ms),
                },
            }
        } else if chance(b.stale_read_probability) {
            View::Lagging
        } else {
            View::Fresh
        }
    }

    /// What happens to a write after it was applied: with `applied_then_dropped_rate` a single
    /// request's connection is dropped, with `applied_then_fault_rate` it is answered 500, or
    /// 503 or 504 (with `Retry-After`). No Graph document promises that a write answered with a 5xx,
    /// or never answered, was not applied, so a client must read before writing again; the
    /// simulator makes that case happen.
    fn after_applied(&self, r: SimResponse, single: bool) -> SimResponse {
        let (dropped, fault) = {
            let b = self.behaviour.read();
            (
                b.applied_then_dropped_rate.clamp(0.0, 1.0),
                b.applied_then_fault_rate.clamp(0.0, 1.0),
            )
        };
        let mut rng = rand::rng();
        if single && dropped > 0.0 && rng.random_bool(dropped) {
            return SimResponse { dropped: true, ..r };
        }
        if fault > 0.0 && rng.random_bool(fault) {
            return match rng.random_range(0..3) {
                0 => SimResponse::server_error(500),
                1 => SimResponse::unavailable(),
                // The tenant contract: 503 and 504 may carry `Retry-After`.
                _ => SimResponse::server_error(504).with_retry_after(short_retry_after()),
            };
        }
        r
    }

    /// One Graph call (single or inside a `$batch`): faults, throttling, execution, statistics.
    fn call(
        &self,
        method: &Method,
        rel_url: &str,
        body: Option<&Value>,
        base: &str,
        ids: &RequestIds,
        ctx: CallContext,
    ) -> SimResponse {
        let (path, query) = match rel_url.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (rel_url, None),
        };
        let route = Route::parse(method, path);
        let now = now_ms();
        let is_write = route.is_write();
        if is_write {
            let mut stats = self.stats.lock();
            stats.write_attempted(now);
            stats.write_priority(ctx.priority);
        }
        let _view = replica::enter(self.view_for(is_write));
        let mut applied = false;
        let resp = if let Route::Invalid(msg) = &route {
            SimResponse::error(&GraphError::new(400, "BadRequest", msg.clone()))
        } else if matches!(route, Route::MethodNotAllowed) {
            // microsoft-graph-docs-contrib `concepts/json-batching.md`, response 4 of the example.
            SimResponse::error(&GraphError::new(
                405,
                "Request_BadRequest",
                "Specified HTTP method is not allowed for the request target.",
            ))
        } else if matches!(route, Route::Batch) {
            SimResponse::error(&GraphError::new(
                400,
                "BadRequest",
                "Nested batch requests are not supported.",
            ))
        } else if self.access.read().permissions_revoked {
            // The application's Graph permissions were revoked: every call is denied, inner
            // `$batch` requests one by one (microsoft-graph-docs-contrib `concepts/errors.md`:
            // 403 Forbidden, code `Authorization_RequestDenied`).
            SimResponse::error(&GraphError::new(
                403,
                "Authorization_RequestDenied",
                "Insufficient privileges to complete the operation.",
            ))
        } else if let Some(status) = self.take_fault(false) {
            if status == 503 {
                SimResponse::unavailable()
            } else {
                SimResponse::server_error(status)
            }
        } else {
            let limited = {
                let b = self.behaviour.read();
                let limits = Limits {
                    resource_units: (b.resource_units_per_window, b.resource_unit_window_seconds),
                    app_writes: (b.writes_per_window, b.write_window_seconds),
                    tenant_writes: (b.tenant_writes_per_window, b.tenant_write_window_seconds),
                };
                self.throttle.lock().admit(
                    route.cost(),
                    is_write,
                    ctx.priority == Priority::Low,
                    &limits,
                    now,
                )
            };
            match limited {
                Err(throttled) => {
                    let p = self
                        .behaviour
                        .read()
                        .throttled_write_applied_probability
                        .clamp(0.0, 1.0);
                    if is_write && p > 0.0 && rand::rng().random_bool(p) {
                        let r = self.execute(&route, query, body, base, ctx.hints);
                        applied = (200..300).contains(&r.status);
                    }
                    SimResponse::throttled(&throttled, &self.client_id)
                }
                Ok(load) => {
                    let r = self.execute(&route, query, body, base, ctx.hints);
                    applied = is_write && (200..300).contains(&r.status);
                    let r = if applied {
                        self.after_applied(r, ctx.single)
                    } else {
                        r
                    };
                    r.with_load(load)
                }
            }
        };
        // A dropped connection is counted with status 0, as the outer handler counts its own.
        let status = if resp.dropped { 0 } else { resp.status };
        let mut stats = self.stats.lock();
        stats.request(route.kind(), status);
        if is_write {
            stats.write_finished(WriteLogEntry {
                seq: 0,
                unix_ms: now,
                method: method.to_string(),
                route: route.kind().to_owned(),
                targets: route.targets(body),
                status,
                applied,
                body: body.cloned(),
                request_id: ids.request_id.clone(),
                client_request_id: ids.client_request_id.clone(),
            });
        }
        resp
    }

    fn execute(
        &self,
        route: &Route,
        query: Option<&str>,
        body: Option<&Value>,
        base: &str,
        hints: Hints,
    ) -> SimResponse {
        let q = parse_query(query);
        let null = Value::Null;
        let body = body.unwrap_or(&null);
        let result = match route {
            Route::Skus => Ok((200, Some(self.directory.read().subscribed_skus()))),
            Route::GetUser(u) => self
                .directory
                .read()
                .get_user(u, query_param(&q, "$select"))
                .map(|v| (200, Some(v))),
            Route::AssignLicense(u) => AssignLicense::parse(body)
                .and_then(|req| self.directory.write().assign_license(u, &req))
                .map(|v| (200, Some(v))),
            Route::CreateUser => self
                .directory
                .write()
                .create_user(body)
                .map(|v| (201, Some(v))),
            Route::CreateGroup => self
                .directory
                .write()
                .create_group(body)
                .map(|v| (201, Some(v))),
            Route::ListGroups => self
                .directory
                .read()
                .find_groups(query_param(&q, "$filter"))
                .map(|v| (200, Some(v))),
            Route::ListMembers(g) => self.list_members(g, &q, base).map(|v| (200, Some(v))),
            Route::MemberOf(u, cast) => self.member_of(u, *cast, &q, base).map(|v| (200, Some(v))),
            Route::AddMember(g) => self
                .directory
                .write()
                .add_member(g, body)
                .map(|_| (204, None)),
            Route::RemoveMember(g, u) => self
                .directory
                .write()
                .remove_member(g, u)
                .map(|()| (204, None)),
            Route::ListUsers => self.list_users(&q, base, hints).map(|v| (200, Some(v))),
            Route::UpdateUser(u) => self
                .directory
                .write()
                .update_user(u, body)
                .map(|_| (204, None)),
            Route::GetGroup(k) => self
                .directory
                .read()
                .get_group(k, query_param(&q, "$select"))
                .map(|v| (200, Some(v))),
            Route::UpdateGroup(g) => self
                .directory
                .write()
                .update_group(g, body)
                .map(|_| (204, None)),
            Route::UpsertGroup(name) => self
                .directory
                .write()
                .upsert_group(name, body, hints.create_if_missing)
                .map(|r| match r {
                    Upsert::Created(mut group, _) => {
                        group["@odata.context"] =
                            json!(format!("{base}/v1.0/$metadata#groups/$entity"));
                        (201, Some(group))
                    }
                    Upsert::Updated(_) => (204, None),
                }),
            Route::CountMembers(g) => return self.count_members(g, hints),
            Route::Batch | Route::Invalid(_) | Route::MethodNotAllowed => {
                Err(GraphError::new(400, "BadRequest", "Invalid request."))
            }
        };
        match result {
            Ok((status, body)) => SimResponse::ok(status, body),
            Err(e) => SimResponse::error(&e),
        }
    }

    fn list_members(
        &self,
        group: &str,
        q: &[(String, String)],
        base: &str,
    ) -> Result<Value, GraphError> {
        let selection = query_param(q, "$select");
        let page_size = page_size(q, self.behaviour.read().members_page_size)?;
        let after = skip_token(q)?;
        let (page, next) = self
            .directory
            .read()
            .members_page(group, selection, after, page_size)?;
        let mut out = json!({
            "@odata.context": format!("{base}/v1.0/$metadata#directoryObjects"),
            "value": page,
        });
        if let Some(next) = next {
            out["@odata.nextLink"] = json!(next_link(
                format!("{base}/v1.0/groups/{group}/members"),
                q,
                page_size,
                next
            ));
        }
        Ok(out)
    }

    /// `GET /users/{id}/memberOf[/microsoft.graph.group]`, paged like `list_members` (`$top`
    /// from 1 to 999, otherwise `members_page_size`; an absolute `@odata.nextLink` carrying the
    /// `$select`, the `$top` and a `$skiptoken`), as Graph documents for directory-object
    /// collections ("Paging Microsoft Graph data", `paging.md`, and `user-list-memberof`).
    fn member_of(
        &self,
        user: &str,
        cast: bool,
        q: &[(String, String)],
        base: &str,
    ) -> Result<Value, GraphError> {
        let selection = query_param(q, "$select");
        let page_size = page_size(q, self.behaviour.read().members_page_size)?;
        let after = skip_token(q)?;
        let (page, next) = self
            .directory
            .read()
            .member_of_page(user, selection, !cast, after, page_size)?;
        let context = if cast {
            "$metadata#groups"
        } else {
            "$metadata#directoryObjects"
        };
        let mut out = json!({
            "@odata.context": format!("{base}/v1.0/{context}"),
            "value": page,
        });
        if let Some(next) = next {
            let path = if cast {
                "memberOf/microsoft.graph.group"
            } else {
                "memberOf"
            };
            out["@odata.nextLink"] = json!(next_link(
                format!("{base}/v1.0/users/{}/{path}", pct_encode(user)),
                q,
                page_size,
                next
            ));
        }
        Ok(out)
    }

    /// Checks the bearer token of a Graph request.
    fn authenticate(&self, headers: &HeaderMap) -> Result<(), GraphError> {
        let unauthorized =
            |m: &str| GraphError::new(401, "InvalidAuthenticationToken", m.to_owned());
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .unwrap_or_default();
        if token.is_empty() {
            return Err(unauthorized("Access token is empty."));
        }
        match self.tokens.lock().get(token) {
            None => Err(unauthorized(
                "Access token validation failure. Invalid audience.",
            )),
            Some(exp) if *exp <= Instant::now() => Err(unauthorized(
                "Lifetime validation failed, the token is expired.",
            )),
            Some(_) => Ok(()),
        }
    }

    fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(b) = &self.public_base_url {
            return b.trim_end_matches('/').to_owned();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("http://{host}")
    }

    fn batch(&self, body: &Bytes, base: &str, priority: Priority) -> SimResponse {
        let bad = |m: &str| SimResponse::error(&GraphError::new(400, "BadRequest", m.to_owned()));
        let Ok(payload) = serde_json::from_slice::<Value>(body) else {
            return bad("Invalid batch payload format.");
        };
        let Some(requests) = payload.get("requests").and_then(Value::as_array) else {
            return bad("Invalid batch payload format.");
        };
        if requests.len() > MAX_BATCH_REQUESTS {
            return bad(&format!(
                "Invalid batch payload format: the number of requests ({}) exceeds the limit of {MAX_BATCH_REQUESTS}.",
                requests.len()
            ));
        }
        // Ids are "Not case-sensitive. Must be unique in the batch, otherwise, the batch request
        // fails with a `400` error code" (microsoft-graph-docs-contrib `concepts/json-batching.md`).
        let mut seen = HashSet::new();
        let mut parsed = Vec::with_capacity(requests.len());
        for r in requests {
            let id = r.get("id").and_then(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .or_else(|| v.as_u64().map(|n| n.to_string()))
            });
            let method = r
                .get("method")
                .and_then(Value::as_str)
                .and_then(|m| Method::from_bytes(m.to_ascii_uppercase().as_bytes()).ok());
            let url = r.get("url").and_then(Value::as_str);
            let (Some(id), Some(method), Some(url)) = (id, method, url) else {
                return bad(
                    "Invalid batch payload format: every request needs id, method and url.",
                );
            };
            if !seen.insert(id.to_lowercase()) {
                return bad(&format!("Batch request ids must be unique: '{id}'."));
            }
            let inner_body = r.get("body").filter(|b| !b.is_null());
            let headers = r.get("headers").and_then(Value::as_object);
            let has_content_type =
                headers.is_some_and(|h| h.keys().any(|k| k.eq_ignore_ascii_case("content-type")));
            if inner_body.is_some() && !has_content_type {
                return bad(&format!(
                    "Write request id : {id} does not contain Content-Type header or body."
                ));
            }
            // Graph's docs are silent on an inner `client-request-id`; the simulator echoes it
            // like an outer one, so a client can match each inner answer.
            let inner_header = |name: &str| {
                headers
                    .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                    .and_then(|(_, v)| v.as_str())
            };
            let client_request_id = inner_header(CLIENT_REQUEST_ID).map(str::to_owned);
            // An inner request's own priority, else the `$batch`'s (the docs are silent on
            // inner headers; Graph applies an inner request's headers to it).
            let priority = match inner_header(THROTTLE_PRIORITY) {
                Some(v) => Priority::from_header(Some(v)),
                None => priority,
            };
            let depends_on = match r.get("dependsOn") {
                None | Some(Value::Null) => Vec::new(),
                Some(Value::Array(list)) => {
                    let ids: Option<Vec<String>> = list
                        .iter()
                        .map(|d| d.as_str().map(str::to_lowercase))
                        .collect();
                    match ids {
                        Some(ids) => ids,
                        None => {
                            return bad(
                                "Invalid batch payload format: dependsOn must list request ids.",
                            );
                        }
                    }
                }
                Some(_) => {
                    return bad("Invalid batch payload format: dependsOn must list request ids.");
                }
            };
            parsed.push(InnerRequest {
                id,
                method,
                url: url.to_owned(),
                body: inner_body.cloned(),
                client_request_id,
                hints: Hints::from_batch(headers),
                priority,
                depends_on,
            });
        }
        let Some(order) = batch_order(&parsed) else {
            return bad(
                "Invalid batch payload format: dependsOn names an unknown request id or forms a cycle.",
            );
        };
        self.stats.lock().batch(parsed.len());
        // Status of each request run so far, by lower-cased id.
        let mut done: HashMap<String, u16> = HashMap::new();
        let mut responses: Vec<Value> = Vec::with_capacity(parsed.len());
        for i in order {
            let req = &parsed[i];
            // Inner URLs are relative to the version ("/users/…"); tolerate a "/v1.0" prefix.
            let rel = req.url.strip_prefix("/v1.0").unwrap_or(&req.url);
            let rel = if rel.starts_with('/') {
                rel.to_owned()
            } else {
                format!("/{rel}")
            };
            // Each inner answer has ids of its own, as in the inner error bodies of
            // microsoft-graph-docs-contrib `concepts/json-batching.md`.
            let ids = RequestIds::new(req.client_request_id.as_deref());
            let failed_dependency = req
                .depends_on
                .iter()
                .any(|d| done.get(d).is_none_or(|s| !(200..300).contains(s)));
            let mut r = if failed_dependency {
                // "If an individual request fails, any request that depends on that request
                // fails with status code 424 (Failed Dependency)" (`json-batching.md`); the docs
                // give no body, the simulator sends Graph's error shape.
                let path = rel.split_once('?').map_or(rel.as_str(), |(p, _)| p);
                self.stats
                    .lock()
                    .request(Route::parse(&req.method, path).kind(), 424);
                SimResponse::error(&GraphError::new(
                    424,
                    "FailedDependency",
                    "The request was not run because a request it depends on failed.",
                ))
            } else {
                self.call(
                    &req.method,
                    &rel,
                    req.body.as_ref(),
                    base,
                    &ids,
                    CallContext {
                        priority: req.priority,
                        single: false,
                        hints: req.hints,
                    },
                )
            };
            done.insert(req.id.to_lowercase(), r.status);
            let body = r.body(&ids);
            let mut headers = serde_json::Map::new();
            if body.is_some() {
                let content_type = if r.plain_text {
                    "text/plain"
                } else {
                    "application/json"
                };
                headers.insert("Content-Type".into(), json!(content_type));
            }
            if let Some(s) = r.retry_after.take() {
                headers.insert("Retry-After".into(), json!(s));
            }
            for (name, value) in r.headers.drain(..) {
                headers.insert(name.into(), json!(value));
            }
            headers.insert(REQUEST_ID.into(), json!(ids.request_id));
            headers.insert(CLIENT_REQUEST_ID.into(), json!(ids.client_request_id));
            headers.insert("Date".into(), json!(ids.http_date()));
            let mut out = json!({"id": req.id, "status": r.status, "headers": headers});
            if let Some(b) = body {
                out["body"] = b;
            }
            responses.push(out);
        }
        // Graph answers in any order; so does the simulator, to keep clients honest.
        responses.shuffle(&mut rand::rng());
        SimResponse::ok(200, Some(json!({ "responses": responses })))
    }

    /// `GET /users[?$filter=…]`: a page of users, `$select`ed, paged like `list_members`; with
    /// `$count=true` and `ConsistencyLevel: eventual`, `@odata.count`. Without the header,
    /// `$count=true` is "silently ignored" and filters still work: `userPrincipalName`, `mail`,
    /// `proxyAddresses` and `otherMails` filter by default (microsoft-graph-docs-contrib
    /// `concepts/aad-advanced-queries.md`, `includes/filter-directory-objects.md`).
    fn list_users(
        &self,
        q: &[(String, String)],
        base: &str,
        hints: Hints,
    ) -> Result<Value, GraphError> {
        let selection = query_param(q, "$select");
        let filter = query_param(q, "$filter");
        let page_size = page_size(q, self.behaviour.read().members_page_size)?;
        let after = skip_token(q)?;
        let page = self
            .directory
            .read()
            .list_users(filter, selection, after, page_size)?;
        let mut out = json!({
            "@odata.context": format!("{base}/v1.0/$metadata#users"),
            "value": page.value,
        });
        let count = query_param(q, "$count").is_some_and(|c| c.eq_ignore_ascii_case("true"));
        if count && hints.eventual {
            out["@odata.count"] = json!(page.count);
        }
        if let Some(next) = page.next {
            // The next page keeps the filter and `$count`, and what `next_link` keeps.
            let mut link = next_link(format!("{base}/v1.0/users"), q, page_size, next);
            if let Some(f) = filter {
                link.push_str(&format!("&$filter={}", pct_encode(f)));
            }
            if count {
                link.push_str("&$count=true");
            }
            out["@odata.nextLink"] = json!(link);
        }
        Ok(out)
    }

    /// `GET /groups/{id}/members/$count`: a plain-text number, only with
    /// `ConsistencyLevel: eventual`; without it Graph answers 400 "$count is not currently
    /// supported." (microsoft-graph-docs-contrib `api-reference/v1.0/api/group-list-members.md`
    /// and `concepts/aad-advanced-queries.md`, "Error handling").
    fn count_members(&self, group: &str, hints: Hints) -> SimResponse {
        if !hints.eventual {
            return SimResponse::error(&GraphError::new(
                400,
                "Request_BadRequest",
                "$count is not currently supported.",
            ));
        }
        match self.directory.read().member_count(group) {
            Ok(n) => SimResponse::text(200, json!(n)),
            Err(e) => SimResponse::error(&e),
        }
    }
}

/// One inner request of a `$batch`.
struct InnerRequest {
    id: String,
    method: Method,
    url: String,
    body: Option<Value>,
    client_request_id: Option<String>,
    hints: Hints,
    /// Its own `x-ms-throttle-priority`, else the `$batch`'s.
    priority: Priority,
    /// Lower-cased ids of the requests it depends on.
    depends_on: Vec<String>,
}

/// The order to run a batch in: each request after those it `dependsOn`, otherwise in the order
/// given (`json-batching.md`, "Sequencing requests with the dependsOn property"). `None` when a
/// dependency names no request of the batch or the dependencies form a cycle.
fn batch_order(requests: &[InnerRequest]) -> Option<Vec<usize>> {
    let index: HashMap<String, usize> = requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id.to_lowercase(), i))
        .collect();
    let deps: Vec<Vec<usize>> = requests
        .iter()
        .map(|r| r.depends_on.iter().map(|d| index.get(d).copied()).collect())
        .collect::<Option<_>>()?;
    let mut order = Vec::with_capacity(requests.len());
    let mut placed = vec![false; requests.len()];
    while order.len() < requests.len() {
        let next =
            (0..requests.len()).find(|&i| !placed[i] && deps[i].iter().all(|&d| placed[d]))?;
        placed[next] = true;
        order.push(next);
    }
    Some(order)
}

async fn simulated_latency(shared: &Shared) {
    let (fixed, jitter) = {
        let b = shared.behaviour.read();
        (b.latency_ms, b.latency_jitter_ms)
    };
    let extra = if jitter > 0 {
        rand::rng().random_range(0..=jitter)
    } else {
        0
    };
    if fixed + extra > 0 {
        tokio::time::sleep(Duration::from_millis(fixed + extra)).await;
    }
}

/// A response whose body fails at once: hyper aborts the connection, which a client sees as a
/// connection or body error, like a connection dropped by a load balancer.
fn dropped_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("simulated dropped connection"))
    });
    Response::new(Body::from_stream(stream))
}

/// Every `/v1.0/…` request.
async fn graph(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    simulated_latency(&shared).await;
    let ids = RequestIds::new(headers.get(CLIENT_REQUEST_ID).and_then(|v| v.to_str().ok()));
    let path = uri.path();
    let Some(rel_path) = path.strip_prefix("/v1.0") else {
        return SimResponse::error(&GraphError::new(
            404,
            "NotFound",
            "Unknown API version or path.",
        ))
        .into_http(&ids);
    };
    let rel = match uri.query() {
        Some(q) => format!("{rel_path}?{q}"),
        None => rel_path.to_owned(),
    };
    let kind = Route::parse(&method, rel_path).kind();
    if shared.take_fault(true).is_some() {
        shared.stats.lock().request(kind, 0);
        return dropped_connection();
    }
    if let Err(e) = shared.authenticate(&headers) {
        shared.stats.lock().request(kind, 401);
        return SimResponse::error(&e).into_http(&ids);
    }
    let base = shared.base_url(&headers);
    let priority = Priority::from_header(
        headers
            .get(THROTTLE_PRIORITY)
            .map(|v| v.to_str().unwrap_or_default()),
    );
    if method == Method::POST && rel_path == "/$batch" {
        let r = shared.batch(&body, &base, priority);
        shared.stats.lock().request("batch", r.status);
        return r.into_http(&ids);
    }
    let json_body = if body.is_empty() {
        None
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(v) => Some(v),
            Err(e) => {
                shared.stats.lock().request(kind, 400);
                return SimResponse::error(&GraphError::new(
                    400,
                    "BadRequest",
                    format!("Unable to read JSON request payload: {e}"),
                ))
                .into_http(&ids);
            }
        }
    };
    let r = shared.call(
        &method,
        &rel,
        json_body.as_ref(),
        &base,
        &ids,
        CallContext {
            priority,
            single: true,
            hints: Hints::from_http(&headers),
        },
    );
    if r.dropped {
        return dropped_connection();
    }
    r.into_http(&ids)
}

/// `POST /{tenant}/oauth2/v2.0/token` (client credentials only: a client secret, or a client
/// assertion from a registered certificate or federated issuer; see [`super::identity`]), with
/// Entra ID's error shape (MicrosoftDocs/entra-docs `docs/identity-platform/reference-error-codes.md`,
/// "Handling error codes in your application": `error`, `error_description` starting with the
/// AADSTS code, `error_codes`, `timestamp`, `trace_id`, `correlation_id`, `error_uri`).
async fn token(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
    Form(form): Form<HashMap<String, String>>,
) -> Response {
    let fail =
        |status: u16, error: &str, code: u32, description: &str| {
            shared.stats.lock().request("token", status);
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
            (
            status,
            Json(json!({"error": error, "error_description": format!("AADSTS{code}: {description}"),
            "error_codes": [code], "timestamp": chrono::Utc::now().to_rfc3339(),
            "trace_id": Uuid::new_v4(), "correlation_id": Uuid::new_v4(),
            "error_uri": format!("https://login.microsoftonline.com/error?code={code}")})),
        )
            .into_response()
        };
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    if field("grant_type") != "client_credentials" {
        return fail(
            400,
            "unsupported_grant_type",
            70003,
            "The app requested an unsupported grant type.",
        );
    }
    if !field("scope").ends_with("/.default") {
        return fail(
            400,
            "invalid_scope",
            1002012,
            "The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier.",
        );
    }
    if field("client_id") != shared.client_id {
        return fail(
            400,
            "unauthorized_client",
            700016,
            "Application was not found in the directory.",
        );
    }
    if shared.access.read().credentials_revoked {
        return fail(
            400,
            "unauthorized_client",
            7000112,
            "Application is disabled.",
        );
    }
    if let Some(assertion) = form.get("client_assertion") {
        let token_url = format!("{}/{tenant}/oauth2/v2.0/token", shared.base_url(&headers));
        let verified = shared.credentials.lock().verify(
            field("client_assertion_type"),
            assertion,
            &shared.client_id,
            &token_url,
            chrono::Utc::now().timestamp(),
        );
        if let Err(r) = verified {
            return fail(r.status, r.error, r.code, &r.message);
        }
    } else if let Some(secret) = form.get("client_secret") {
        if secret.as_str() != shared.client_secret.expose_secret() {
            return fail(
                401,
                "invalid_client",
                7000215,
                "Invalid client secret provided.",
            );
        }
    } else {
        return fail(
            401,
            "invalid_client",
            7000218,
            "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
        );
    }
    let lifetime = shared.behaviour.read().token_lifetime_seconds;
    let token = {
        let mut rng = rand::rng();
        let bytes: [u8; 24] = rng.random();
        format!(
            "sim.{}",
            bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    };
    {
        let mut tokens = shared.tokens.lock();
        let now = Instant::now();
        if tokens.len() > 10_000 {
            tokens.retain(|_, exp| *exp > now);
        }
        tokens.insert(token.clone(), now + Duration::from_secs(lifetime));
    }
    shared.stats.lock().request("token", 200);
    Json(json!({"token_type": "Bearer", "expires_in": lifetime, "ext_expires_in": lifetime, "access_token": token}))
        .into_response()
}

/// `GET /{tenant}/v2.0/.well-known/openid-configuration`: the OpenID Connect discovery document
/// of the simulator's token service, shaped like Entra ID's (MicrosoftDocs/entra-docs
/// `docs/identity-platform/v2-protocols-oidc.md`, "Find your app's OpenID configuration document
/// URI" and "Sample response"), its endpoints pointing at the simulator. For the multi-tenant
/// names (`common`, `organizations`, `consumers`) the issuer keeps the `{tenantid}` template,
/// as Entra ID's does.
async fn openid_configuration(
    State(shared): State<Arc<Shared>>,
    Path(tenant): Path<String>,
    headers: HeaderMap,
) -> Response {
    shared.stats.lock().request("openid_configuration", 200);
    let base = shared.base_url(&headers);
    let issuer_tenant = match tenant.to_ascii_lowercase().as_str() {
        "common" | "organizations" | "consumers" => "{tenantid}".to_owned(),
        _ => tenant.clone(),
    };
    let authority = format!("{base}/{tenant}");
    Json(json!({
        "token_endpoint": format!("{authority}/oauth2/v2.0/token"),
        "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
        "jwks_uri": format!("{authority}/discovery/v2.0/keys"),
        "response_modes_supported": ["query", "fragment", "form_post"],
        "subject_types_supported": ["pairwise"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
        "scopes_supported": ["openid", "profile", "email", "offline_access"],
        "issuer": format!("{base}/{issuer_tenant}/v2.0"),
        "request_uri_parameter_supported": false,
        "userinfo_endpoint": "https://graph.microsoft.com/oidc/userinfo",
        "authorization_endpoint": format!("{authority}/oauth2/v2.0/authorize"),
        "device_authorization_endpoint": format!("{authority}/oauth2/v2.0/devicecode"),
        "http_logout_supported": true,
        "frontchannel_logout_supported": true,
        "end_session_endpoint": format!("{authority}/oauth2/v2.0/logout"),
        "claims_supported": ["sub", "iss", "cloud_instance_name", "cloud_instance_host_name",
            "cloud_graph_host_name", "msgraph_host", "aud", "exp", "iat", "auth_time", "acr",
            "nonce", "preferred_username", "name", "tid", "ver", "at_hash", "c_hash", "email"],
        "kerberos_endpoint": format!("{authority}/kerberos"),
        "tenant_region_scope": null,
        "cloud_instance_name": "microsoftonline.com",
        "cloud_graph_host_name": "graph.windows.net",
        "msgraph_host": "graph.microsoft.com",
        "rbac_url": "https://pas.windows.net",
    }))
    .into_response()
}

/// `GET /{tenant}/discovery/v2.0/keys`, the `jwks_uri` of the discovery document: the
/// simulator's access tokens are opaque, not signed JWTs, so it publishes no keys.
async fn jwks(State(shared): State<Arc<Shared>>) -> Response {
    shared.stats.lock().request("jwks", 200);
    Json(json!({ "keys": [] })).into_response()
}

async fn stats(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.stats.lock().snapshot()).into_response()
}

async fn reset_stats(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.stats.lock().reset();
    StatusCode::NO_CONTENT
}

async fn get_config(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.behaviour.read().clone()).into_response()
}

async fn set_config(State(shared): State<Arc<Shared>>, Json(patch): Json<Value>) -> Response {
    match shared.set_behaviour(&patch) {
        Ok(b) => Json(b).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

async fn sim_user(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    match shared.directory.read().user_json(&key) {
        Some(u) => Json(u).into_response(),
        None => SimResponse::error(&GraphError::not_found(&key)).into_http(&RequestIds::new(None)),
    }
}

/// `POST /_sim/users/{id or upn}/assignLicense`: a licence change made behind the service's
/// back (an administrator in the Microsoft 365 admin center), with Graph's body and rules
/// (user: assignLicense, https://learn.microsoft.com/graph/api/user-assignlicense) but not
/// counted in the Graph call statistics: drift for the service's sweeps to find.
async fn sim_assign_license(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let result = AssignLicense::parse(&body)
        .and_then(|req| shared.directory.write().assign_license(&key, &req));
    admin_answer(StatusCode::OK, result)
}

/// `POST /_sim/fail-next {"count": N, "status": 503}`: the next N Graph calls fail with that
/// status; status 0 drops the next N connections instead.
async fn fail_next(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> StatusCode {
    let count = body.get("count").and_then(Value::as_u64).unwrap_or(1) as u32;
    let status = body.get("status").and_then(Value::as_u64).unwrap_or(503) as u16;
    *shared.fail_next.lock() = (count, status);
    StatusCode::NO_CONTENT
}

async fn get_access(State(shared): State<Arc<Shared>>) -> Response {
    Json(shared.access()).into_response()
}

/// `POST /_sim/access {"credentials_revoked": bool, "permissions_revoked": bool}` (keys left
/// out keep their value): take the application's access away, or give it back.
async fn set_access(State(shared): State<Arc<Shared>>, Json(patch): Json<Value>) -> Response {
    let mut current = serde_json::to_value(shared.access()).unwrap_or_default();
    if let (Some(c), Some(p)) = (current.as_object_mut(), patch.as_object()) {
        for (k, v) in p {
            c.insert(k.clone(), v.clone());
        }
    }
    match serde_json::from_value(current) {
        Ok(knobs) => {
            shared.set_access(knobs);
            Json(shared.access()).into_response()
        }
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": e.to_string()})),
        )
            .into_response(),
    }
}

/// An admin route's answer: the value, or the error in Graph's shape.
fn admin_answer(status: StatusCode, result: Result<Value, GraphError>) -> Response {
    match result {
        Ok(v) => (status, Json(v)).into_response(),
        Err(e) => SimResponse::error(&e).into_http(&RequestIds::new(None)),
    }
}

/// `[{"skuId","disabledPlans"}]` of an admin body.
fn licences_of(body: &Value) -> Result<Vec<(Uuid, Vec<Uuid>)>, GraphError> {
    let parsed = AssignLicense::parse(&json!({
        "addLicenses": body.get("assignedLicenses").cloned().unwrap_or(json!([])),
        "removeLicenses": [],
    }))?;
    Ok(parsed.add)
}

fn strings_of(body: &Value, key: &str) -> Vec<String> {
    body.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// `PATCH /_sim/skus/{skuPartNumber}`: `capabilityStatus` and seats.
async fn sim_update_sku(
    State(shared): State<Arc<Shared>>,
    Path(part): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    admin_answer(StatusCode::OK, shared.update_sku(&part, &body))
}

/// `POST /_sim/skus/{skuPartNumber}/plans`: the vendor adds a service plan to the SKU.
async fn sim_add_plan(
    State(shared): State<Arc<Shared>>,
    Path(part): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let name = body.get("servicePlanName").and_then(Value::as_str);
    let id = body
        .get("servicePlanId")
        .and_then(Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok());
    let result = match name {
        Some(name) => shared.add_service_plan(&part, id, name),
        None => Err(GraphError::bad_request("servicePlanName is required")),
    };
    admin_answer(StatusCode::CREATED, result)
}

/// `POST /_sim/groups`: a security group holding licences, with members.
async fn sim_create_group(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> Response {
    let result = (|| {
        let name = body
            .get("displayName")
            .and_then(Value::as_str)
            .ok_or_else(|| GraphError::bad_request("displayName is required"))?;
        let licences = licences_of(&body)?;
        let id = shared.create_licensed_group(name, licences, &strings_of(&body, "members"))?;
        Ok(json!({ "id": id }))
    })();
    admin_answer(StatusCode::CREATED, result)
}

fn group_id(id: &str) -> Result<Uuid, GraphError> {
    Uuid::parse_str(id).map_err(|_| GraphError::not_found(id))
}

/// `PUT /_sim/groups/{id}/assignedLicenses`: replaces the licences a group holds.
async fn sim_group_licences(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let result = group_id(&id)
        .and_then(|gid| Ok((gid, licences_of(&body)?)))
        .and_then(|(gid, licences)| shared.set_group_licences(gid, licences))
        .map(|()| json!({}));
    admin_answer(StatusCode::OK, result)
}

/// `POST /_sim/groups/{id}/members`: adds members, reprocessed for the group's licences.
async fn sim_group_members(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let result = group_id(&id)
        .and_then(|gid| shared.add_group_members(gid, &strings_of(&body, "members")))
        .map(|()| json!({}));
    admin_answer(StatusCode::OK, result)
}

/// `DELETE /_sim/groups/{id}/members/{id or upn}`: a membership ended behind the service's
/// back, with Graph's rules (group: remove member,
/// https://learn.microsoft.com/graph/api/group-delete-members) but not counted in the Graph
/// call statistics.
async fn sim_remove_group_member(
    State(shared): State<Arc<Shared>>,
    Path((id, user)): Path<(String, String)>,
) -> Response {
    let result = shared.remove_group_member(&id, &user).map(|()| json!({}));
    admin_answer(StatusCode::OK, result)
}

/// `POST /_sim/revoke-tokens`: every issued token becomes invalid (clients must fetch new ones).
async fn revoke_tokens(State(shared): State<Arc<Shared>>) -> StatusCode {
    shared.revoke_tokens();
    StatusCode::NO_CONTENT
}

/// The absolute `@odata.nextLink` of a paged collection at `url`: the request's `$select`, its
/// `$top` (when it gave one) and the `$skiptoken` of the next page.
fn next_link(
    url: String,
    q: &[(String, String)],
    page_size: usize,
    next: impl std::fmt::Display,
) -> String {
    let mut link = url + "?";
    if let Some(s) = query_param(q, "$select") {
        link.push_str(&format!("$select={}&", pct_encode(s)));
    }
    if query_param(q, "$top").is_some() {
        link.push_str(&format!("$top={page_size}&"));
    }
    link.push_str(&format!("$skiptoken={next}"));
    link
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inner(id: &str, depends_on: &[&str]) -> InnerRequest {
        InnerRequest {
            id: id.to_owned(),
            method: Method::GET,
            url: "/users".to_owned(),
            body: None,
            client_request_id: None,
            hints: Hints::default(),
            priority: Priority::None,
            depends_on: depends_on.iter().map(|d| d.to_lowercase()).collect(),
        }
    }

    #[test]
    fn batch_runs_dependencies_first_and_refuses_unknown_ids_and_cycles() {
        let reqs = [
            inner("1", &[]),
            inner("2", &["4"]),
            inner("3", &[]),
            inner("4", &["1"]),
        ];
        assert_eq!(batch_order(&reqs), Some(vec![0, 2, 3, 1]));
        // Ids are compared case-insensitively.
        assert_eq!(
            batch_order(&[inner("B", &["a"]), inner("A", &[])]),
            Some(vec![1, 0])
        );
        assert_eq!(batch_order(&[inner("1", &["9"])]), None);
        assert_eq!(batch_order(&[inner("1", &["2"]), inner("2", &["1"])]), None);
    }

    #[test]
    fn a_known_path_with_another_method_is_405() {
        assert!(matches!(
            Route::parse(&Method::DELETE, "/users/a@x.org"),
            Route::MethodNotAllowed
        ));
        assert!(matches!(
            Route::parse(&Method::POST, "/groups(uniqueName='x')"),
            Route::MethodNotAllowed
        ));
        assert!(matches!(
            Route::parse(&Method::GET, "/nothing"),
            Route::Invalid(_)
        ));
        assert!(matches!(
            Route::parse(&Method::GET, "/users/alice_x.org%23EXT%23@t.onmicrosoft.com"),
            Route::GetUser(u) if u == "alice_x.org#EXT#@t.onmicrosoft.com"
        ));
    }
}

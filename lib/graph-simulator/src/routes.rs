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

mod admin;
mod batch;
mod dispatch;
mod identity;

use admin::*;
use dispatch::*;
use identity::*;

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
    /// `GET /groups/{id}/members`, and with the OData cast `/microsoft.graph.user` (true).
    ListMembers(String, bool),
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
    /// `GET /groups/{id}/members/$count`, and `/members/microsoft.graph.user/$count` (every
    /// member is a user in the simulator).
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
            (Method::GET, ["groups", g, "members"]) => Self::ListMembers((*g).to_owned(), false),
            // The OData cast to users (microsoft-graph-docs-contrib
            // `api-reference/v1.0/api/group-list-members.md`, "OData cast is also enabled, for
            // example, you can cast to get just the group members that are users"; example 3 for
            // its `$count`).
            (Method::GET, ["groups", g, "members", "microsoft.graph.user"]) => {
                Self::ListMembers((*g).to_owned(), true)
            }
            (Method::GET, ["groups", g, "members", "microsoft.graph.user", "$count"]) => {
                Self::CountMembers((*g).to_owned())
            }
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
            Self::ListMembers(..) => "list_members",
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
            | Self::ListMembers(..)
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

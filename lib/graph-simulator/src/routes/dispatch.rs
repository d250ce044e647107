//! Graph calls: authentication, scripted and random faults, replication views, throttling, and
//! the dispatch of every `/v1.0/…` route to the directory (also for the inner requests of a
//! `$batch`).
use super::*;

impl Shared {
    /// Takes a scripted or random fault: `outer` asks for dropped connections (status 0), otherwise
    /// for 5xx answers of single Graph calls.
    pub(super) fn take_fault(&self, outer: bool) -> Option<u16> {
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
    pub(super) fn view_for(&self, is_write: bool) -> View {
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
    pub(super) fn after_applied(&self, r: SimResponse, single: bool) -> SimResponse {
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
    pub(super) fn call(
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

    pub(super) fn execute(
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
            // Graph's collection answers carry their `@odata.context`, as the example response of
            // microsoft-graph-docs-contrib `api-reference/v1.0/api/subscribedsku-list.md` does
            // ("https://graph.microsoft.com/v1.0/$metadata#subscribedSkus"); the simulator's base
            // URL stands for Graph's, as in every other collection it serves.
            Route::Skus => {
                let mut skus = self.directory.read().subscribed_skus();
                skus["@odata.context"] = json!(format!("{base}/v1.0/$metadata#subscribedSkus"));
                Ok((200, Some(skus)))
            }
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
            // "@odata.context": "https://graph.microsoft.com/v1.0/$metadata#groups"
            // (microsoft-graph-docs-contrib `api-reference/v1.0/api/group-list.md`, examples).
            Route::ListGroups => self
                .directory
                .read()
                .find_groups(query_param(&q, "$filter"))
                .map(|mut v| {
                    v["@odata.context"] = json!(format!("{base}/v1.0/$metadata#groups"));
                    (200, Some(v))
                }),
            Route::ListMembers(g, cast) => self
                .list_members(g, *cast, &q, base)
                .map(|v| (200, Some(v))),
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

    /// `GET /groups/{id}/members[/microsoft.graph.user]`: a page of the group's direct members
    /// (`$select`, `$top` from 1 to 999, otherwise `members_page_size`, an absolute
    /// `@odata.nextLink` with a `$skiptoken`). With the OData cast (`cast`) only the members
    /// that are users, in a collection of users (`$metadata#users`, no `@odata.type` on each;
    /// microsoft-graph-docs-contrib `api-reference/v1.0/api/group-list-members.md`, example 4):
    /// every member the simulator holds is a user, so the pages are the same. The cast works
    /// without `ConsistencyLevel: eventual`: only an OData cast on a *transitive* members list
    /// needs advanced query parameters (`concepts/aad-advanced-queries.md`, "Query scenarios that
    /// require advanced query capabilities"), as the simulator's `memberOf/microsoft.graph.group`.
    pub(super) fn list_members(
        &self,
        group: &str,
        cast: bool,
        q: &[(String, String)],
        base: &str,
    ) -> Result<Value, GraphError> {
        let p = self.paging(q)?;
        let page =
            self.directory
                .read()
                .members_page(group, p.selection, !cast, p.after, p.size)?;
        let (context, path) = if cast {
            ("$metadata#users", "members/microsoft.graph.user")
        } else {
            ("$metadata#directoryObjects", "members")
        };
        Ok(p.answer(base, context, &format!("groups/{group}/{path}"), q, page))
    }

    /// `GET /users/{id}/memberOf[/microsoft.graph.group]`, paged like `list_members` (`$top`
    /// from 1 to 999, otherwise `members_page_size`; an absolute `@odata.nextLink` carrying the
    /// `$select`, the `$top` and a `$skiptoken`), as Graph documents for directory-object
    /// collections ("Paging Microsoft Graph data", `paging.md`, and `user-list-memberof`).
    pub(super) fn member_of(
        &self,
        user: &str,
        cast: bool,
        q: &[(String, String)],
        base: &str,
    ) -> Result<Value, GraphError> {
        let p = self.paging(q)?;
        let page =
            self.directory
                .read()
                .member_of_page(user, p.selection, !cast, p.after, p.size)?;
        let (context, path) = if cast {
            ("$metadata#groups", "memberOf/microsoft.graph.group")
        } else {
            ("$metadata#directoryObjects", "memberOf")
        };
        let path = format!("users/{}/{path}", pct_encode(user));
        Ok(p.answer(base, context, &path, q, page))
    }

    /// The paging parameters of a directory-object collection request.
    fn paging<'q>(&self, q: &'q [(String, String)]) -> Result<Paging<'q>, GraphError> {
        Ok(Paging {
            selection: query_param(q, "$select"),
            size: page_size(q, self.behaviour.read().members_page_size)?,
            after: skip_token(q)?,
        })
    }

    /// Checks the bearer token of a Graph request.
    pub(super) fn authenticate(&self, headers: &HeaderMap) -> Result<(), GraphError> {
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

    pub(super) fn base_url(&self, headers: &HeaderMap) -> String {
        if let Some(b) = &self.public_base_url {
            return b.trim_end_matches('/').to_owned();
        }
        let host = headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        format!("http://{host}")
    }

    /// `GET /users[?$filter=…]`: a page of users, `$select`ed, paged like `list_members`; with
    /// `$count=true` and `ConsistencyLevel: eventual`, `@odata.count`. Without the header,
    /// `$count=true` is "silently ignored" and filters still work: `userPrincipalName`, `mail`,
    /// `proxyAddresses` and `otherMails` filter by default (microsoft-graph-docs-contrib
    /// `concepts/aad-advanced-queries.md`, `includes/filter-directory-objects.md`).
    pub(super) fn list_users(
        &self,
        q: &[(String, String)],
        base: &str,
        hints: Hints,
    ) -> Result<Value, GraphError> {
        let filter = query_param(q, "$filter");
        let Paging {
            selection,
            size: page_size,
            after,
        } = self.paging(q)?;
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
    pub(super) fn count_members(&self, group: &str, hints: Hints) -> SimResponse {
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

pub(super) async fn simulated_latency(shared: &Shared) {
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
pub(super) fn dropped_connection() -> Response {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("simulated dropped connection"))
    });
    Response::new(Body::from_stream(stream))
}

/// Every `/v1.0/…` request.
pub(super) async fn graph(
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

/// The absolute `@odata.nextLink` of a paged collection at `url`: the request's `$select`, its
/// The paging of a directory-object collection request: its `$select`, its page size (`$top`
/// from 1 to 999, otherwise `members_page_size`) and the `$skiptoken` to start after.
struct Paging<'q> {
    selection: Option<&'q str>,
    size: usize,
    after: Option<Uuid>,
}

impl Paging<'_> {
    /// A page as Graph answers it: `@odata.context` (`{base}/v1.0/{context}`), the page, and
    /// when more follow an absolute `@odata.nextLink` to `{base}/v1.0/{path}` ([`next_link`]).
    fn answer(
        &self,
        base: &str,
        context: &str,
        path: &str,
        q: &[(String, String)],
        (page, next): (Vec<Value>, Option<Uuid>),
    ) -> Value {
        let mut out = json!({
            "@odata.context": format!("{base}/v1.0/{context}"),
            "value": page,
        });
        if let Some(next) = next {
            out["@odata.nextLink"] =
                json!(next_link(format!("{base}/v1.0/{path}"), q, self.size, next));
        }
        out
    }
}

/// `$top` (when it gave one) and the `$skiptoken` of the next page.
pub(super) fn next_link(
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

    /// A simulator state (no server) with three users in one group; the group's id.
    fn shared_with_group() -> (Shared, Uuid) {
        let shared = Shared::from_settings(&crate::SimulatorSettings::for_tests()).unwrap();
        let group = Uuid::new_v4();
        let seed: crate::Seed = serde_json::from_value(json!({
            "users": [{"userPrincipalName": "a@x.org"}, {"userPrincipalName": "b@x.org"},
                      {"userPrincipalName": "c@x.org"}],
            "groups": [{"id": group, "displayName": "Readers",
                        "members": ["a@x.org", "b@x.org", "c@x.org"]}],
        }))
        .unwrap();
        shared.seed(&seed).unwrap();
        (shared, group)
    }

    fn get(shared: &Shared, url: &str) -> SimResponse {
        let (path, query) = url.split_once('?').unwrap_or((url, ""));
        let route = Route::parse(&Method::GET, path);
        shared.execute(&route, Some(query), None, "http://sim", Hints::default())
    }

    /// microsoft-graph-docs-contrib `api-reference/v1.0/api/subscribedsku-list.md`: the
    /// collection carries `@odata.context` `…/$metadata#subscribedSkus`; groups `…#groups`.
    #[test]
    fn subscribed_skus_and_groups_carry_their_odata_context() {
        let (shared, _) = shared_with_group();
        let r = get(&shared, "/subscribedSkus");
        assert_eq!(r.status, 200);
        let body = r.body.unwrap();
        assert_eq!(
            body["@odata.context"],
            "http://sim/v1.0/$metadata#subscribedSkus"
        );
        assert!(!body["value"].as_array().unwrap().is_empty());
        let r = get(&shared, "/groups?$filter=startswith(displayName,'read')");
        assert_eq!(r.status, 200);
        let body = r.body.unwrap();
        assert_eq!(body["@odata.context"], "http://sim/v1.0/$metadata#groups");
        assert_eq!(body["value"][0]["displayName"], "Readers");
    }

    /// `GET /groups/{id}/members/microsoft.graph.user` (group-list-members.md, OData cast):
    /// the members that are users, paged like `members`, in a collection of users.
    #[test]
    fn members_cast_to_users_are_served_and_paged() {
        let (shared, group) = shared_with_group();
        assert!(matches!(
            Route::parse(&Method::GET, &format!("/groups/{group}/members/microsoft.graph.user")),
            Route::ListMembers(g, true) if g == group.to_string()
        ));
        assert!(matches!(
            Route::parse(
                &Method::GET,
                &format!("/groups/{group}/members/microsoft.graph.user/$count")
            ),
            Route::CountMembers(_)
        ));
        let first = get(
            &shared,
            &format!(
                "/groups/{group}/members/microsoft.graph.user?$select=id,userPrincipalName&$top=2"
            ),
        );
        assert_eq!(first.status, 200, "{:?}", first.error);
        let first = first.body.unwrap();
        assert_eq!(first["@odata.context"], "http://sim/v1.0/$metadata#users");
        let page = first["value"].as_array().unwrap();
        assert_eq!(page.len(), 2);
        assert!(page.iter().all(|u| u.get("@odata.type").is_none()));
        let next = first["@odata.nextLink"].as_str().unwrap();
        let prefix =
            format!("http://sim/v1.0/groups/{group}/members/microsoft.graph.user?$select=");
        assert!(next.starts_with(&prefix), "{next}");
        let second = get(&shared, next.strip_prefix("http://sim/v1.0").unwrap());
        let second = second.body.unwrap();
        assert_eq!(second["value"].as_array().unwrap().len(), 1);
        assert!(second.get("@odata.nextLink").is_none());
        let mut upns: Vec<&str> = page
            .iter()
            .chain(second["value"].as_array().unwrap())
            .map(|u| u["userPrincipalName"].as_str().unwrap())
            .collect();
        upns.sort();
        assert_eq!(upns, ["a@x.org", "b@x.org", "c@x.org"]);
        // Without the cast, the same members as directory objects, each with its type.
        let all = get(&shared, &format!("/groups/{group}/members?$top=5"));
        let all = all.body.unwrap();
        assert_eq!(
            all["@odata.context"],
            "http://sim/v1.0/$metadata#directoryObjects"
        );
        assert!(
            all["value"]
                .as_array()
                .unwrap()
                .iter()
                .all(|u| u["@odata.type"] == "#microsoft.graph.user")
        );
        // An unknown group is 404, as for `members`.
        let missing = get(
            &shared,
            &format!("/groups/{}/members/microsoft.graph.user", Uuid::new_v4()),
        );
        assert_eq!(missing.status, 404);
    }
}

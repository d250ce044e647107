//! `POST /v1.0/$batch` (microsoft-graph-docs-contrib `concepts/json-batching.md`): at most 20
//! requests, ids unique and case-insensitive, `dependsOn` run first and a request whose
//! dependency failed answered 424.
use super::*;

impl Shared {
    pub(super) fn batch(&self, body: &Bytes, base: &str, priority: Priority) -> SimResponse {
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
}

/// One inner request of a `$batch`.
pub(super) struct InnerRequest {
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
pub(super) fn batch_order(requests: &[InnerRequest]) -> Option<Vec<usize>> {
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

//! Tenant simulator tests: raw HTTP calls shaped like the Microsoft Graph documentation's examples.
use policy_reconciler::simulator::{USAGE_LOCATION_MESSAGE, sku_ids};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::kit::simulator::{licences, seed, sku, start, start_with, token_response};

/// An access token from the simulator's token endpoint, fetched like any client would; its
/// answer has the shape of Entra ID's.
async fn token(
    http: &reqwest::Client,
    sim: &policy_reconciler::simulator::SimulatorHandle,
) -> String {
    let resp = token_response(http, &sim.base_url(), "any-tenant").await;
    assert_eq!(resp["token_type"], "Bearer");
    assert!(resp["expires_in"].as_u64().unwrap() > 0);
    resp["access_token"].as_str().unwrap().to_owned()
}

struct Raw {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Raw {
    async fn new(sim: &policy_reconciler::simulator::SimulatorHandle) -> Self {
        let http = reqwest::Client::new();
        let token = token(&http, sim).await;
        Self {
            http,
            base: format!("{}/v1.0", sim.base_url()),
            token,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        let mut req = self.http.request(method, url).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.unwrap();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

const E3_SWAY: &str = "a23b959c-7ce8-4e57-9140-b90eb88a9e97";

fn user_seed(id: Uuid, upn: &str) -> Value {
    json!({"users": [{"id": id, "userPrincipalName": upn, "usageLocation": "GB"}]})
}

#[tokio::test]
async fn graph_calls_need_a_valid_bearer_token() {
    let sim = start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/v1.0/subscribedSkus", sim.base_url());
    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "InvalidAuthenticationToken");
    let resp = http.get(&url).bearer_auth("forged").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    // Wrong secret: Entra ID's error shape.
    let resp = http
        .post(format!("{}/t/oauth2/v2.0/token", sim.base_url()))
        .form(&[
            ("client_id", "policy-reconciler-dev"),
            ("client_secret", "nope"),
            ("scope", "https://graph.microsoft.com/.default"),
            ("grant_type", "client_credentials"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "invalid_client");
}

#[tokio::test]
async fn subscribed_skus_and_user_select_have_graph_shapes() {
    let sim = start().await;
    let id = Uuid::new_v4();
    seed(&sim, user_seed(id, "Jane.Smith@example.org"));
    let raw = Raw::new(&sim).await;

    let (status, skus) = raw
        .call(reqwest::Method::GET, "/subscribedSkus", None)
        .await;
    assert_eq!(status, 200);
    let e3 = sku(&skus, "ENTERPRISEPACK");
    assert_eq!(e3["skuId"], sku_ids::ENTERPRISEPACK.to_string());
    assert!(e3["prepaidUnits"]["enabled"].as_u64().unwrap() > 0);
    assert_eq!(e3["consumedUnits"], 0);
    assert_eq!(e3["capabilityStatus"], "Enabled");
    let names: Vec<&str> = e3["servicePlans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            assert!(Uuid::parse_str(p["servicePlanId"].as_str().unwrap()).is_ok());
            assert_eq!(p["appliesTo"], "User");
            p["servicePlanName"].as_str().unwrap()
        })
        .collect();
    for plan in [
        "EXCHANGE_S_ENTERPRISE",
        "TEAMS1",
        "SHAREPOINTENTERPRISE",
        "SWAY",
        "FORMS_PLAN_E3",
        "MCOSTANDARD",
    ] {
        assert!(names.contains(&plan), "{plan}");
    }

    // UPN lookup is case-insensitive; $select returns exactly the selected properties.
    let (status, user) = raw
        .call(
            reqwest::Method::GET,
            "/users/jane.smith@EXAMPLE.org?$select=id,userPrincipalName,usageLocation,assignedLicenses",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let mut keys: Vec<&String> = user.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "assignedLicenses",
            "id",
            "usageLocation",
            "userPrincipalName"
        ]
    );
    assert_eq!(user["id"], id.to_string());
    // Without $select Graph's default properties come back, which do not include licences.
    let (_, user) = raw
        .call(reqwest::Method::GET, &format!("/users/{id}"), None)
        .await;
    assert!(user.get("assignedLicenses").is_none());
    assert_eq!(user["userPrincipalName"], "Jane.Smith@example.org");
    let (status, err) = raw
        .call(reqwest::Method::GET, "/users/nobody@example.org", None)
        .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "Request_ResourceNotFound");
}

#[tokio::test]
async fn assign_license_documentation_example() {
    let sim = start().await;
    let id = Uuid::new_v4();
    seed(&sim, user_seed(id, "lic@example.org"));
    seed(
        &sim,
        json!({"users": [{"userPrincipalName": "nowhere@example.org"}]}),
    );
    let raw = Raw::new(&sim).await;
    // The body of the Graph documentation's example (with this tenant's ids).
    let body = json!({
      "addLicenses": [
        {
          "disabledPlans": [ E3_SWAY ],
          "skuId": sku_ids::ENTERPRISEPACK
        }
      ],
      "removeLicenses": []
    });
    let (status, user) = raw
        .call(
            reqwest::Method::POST,
            &format!("/users/{id}/assignLicense"),
            Some(body.clone()),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(user["id"], id.to_string());
    assert_eq!(
        licences(&sim, "lic@example.org"),
        vec![(
            sku_ids::ENTERPRISEPACK,
            vec![Uuid::parse_str(E3_SWAY).unwrap()]
        )]
    );
    // Re-adding the SKU replaces disabledPlans.
    let (status, _) = raw
        .call(
            reqwest::Method::POST,
            &format!("/users/{id}/assignLicense"),
            Some(json!({"addLicenses": [{"disabledPlans": [], "skuId": sku_ids::ENTERPRISEPACK}], "removeLicenses": []})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        licences(&sim, "lic@example.org"),
        vec![(sku_ids::ENTERPRISEPACK, vec![])]
    );

    // E1 while holding E3: mutually exclusive.
    let (status, err) = raw
        .call(
            reqwest::Method::POST,
            &format!("/users/{id}/assignLicense"),
            Some(json!({"addLicenses": [{"disabledPlans": [], "skuId": sku_ids::STANDARDPACK}], "removeLicenses": []})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("mutually exclusive"),
        "{err}"
    );

    let (status, err) = raw
        .call(
            reqwest::Method::POST,
            "/users/nowhere@example.org/assignLicense",
            Some(body),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["message"], USAGE_LOCATION_MESSAGE);
    assert_eq!(
        USAGE_LOCATION_MESSAGE,
        "License assignment cannot be done for user with invalid usage location."
    );
}

#[tokio::test]
async fn members_ref_documentation_example_and_paging() {
    let sim = start_with(|s| s.members_page_size = 2).await;
    let ids: Vec<Uuid> = (0..3).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        seed(&sim, user_seed(*id, &format!("member{i}@example.org")));
    }
    let raw = Raw::new(&sim).await;
    let (status, group) = raw
        .call(
            reqwest::Method::POST,
            "/groups",
            Some(json!({
              "description": "Self help community for library",
              "displayName": "Library Assist",
              "groupTypes": [],
              "mailEnabled": false,
              "mailNickname": "library",
              "securityEnabled": true
            })),
        )
        .await;
    assert_eq!(status, 201);
    let gid = group["id"].as_str().unwrap().to_owned();

    for id in &ids {
        let (status, _) = raw
            .call(
                reqwest::Method::POST,
                &format!("/groups/{gid}/members/$ref"),
                Some(json!({ "@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{id}") })),
            )
            .await;
        assert_eq!(status, 204);
    }
    let (status, err) = raw
        .call(
            reqwest::Method::POST,
            &format!("/groups/{gid}/members/$ref"),
            Some(json!({ "@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{}", ids[0]) })),
        )
        .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("already exist")
    );

    // Find by name, paged members with absolute nextLinks.
    let (status, found) = raw
        .call(
            reqwest::Method::GET,
            "/groups?$filter=displayName%20eq%20'Library%20Assist'",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(found["value"][0]["id"], gid.as_str());
    let mut url = format!("/groups/{gid}/members?$select=id,userPrincipalName");
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let (status, page) = raw.call(reqwest::Method::GET, &url, None).await;
        assert_eq!(status, 200);
        pages += 1;
        for m in page["value"].as_array().unwrap() {
            assert_eq!(m["@odata.type"], "#microsoft.graph.user");
            seen.push(m["id"].as_str().unwrap().to_owned());
        }
        match page.get("@odata.nextLink").and_then(Value::as_str) {
            Some(next) => {
                assert!(next.starts_with(&sim.base_url()), "{next}");
                url = next.to_owned();
            }
            None => break,
        }
    }
    assert_eq!(pages, 2);
    seen.sort();
    let mut want: Vec<String> = ids.iter().map(Uuid::to_string).collect();
    want.sort();
    assert_eq!(seen, want);

    let (status, _) = raw
        .call(
            reqwest::Method::DELETE,
            &format!("/groups/{gid}/members/{}/$ref", ids[0]),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, err) = raw
        .call(
            reqwest::Method::DELETE,
            &format!("/groups/{gid}/members/{}/$ref", ids[0]),
            None,
        )
        .await;
    assert_eq!(status, 404);
    assert_eq!(err["error"]["code"], "Request_ResourceNotFound");
}

#[tokio::test]
async fn batch_documentation_example() {
    let sim = start().await;
    let id = Uuid::new_v4();
    seed(&sim, user_seed(id, "batch@example.org"));
    let raw = Raw::new(&sim).await;
    let (status, answer) = raw
        .call(
            reqwest::Method::POST,
            "/$batch",
            Some(json!({
              "requests": [
                {
                  "id": "1",
                  "method": "GET",
                  "url": "/users/batch@example.org?$select=id,assignedLicenses"
                },
                {
                  "id": "2",
                  "method": "POST",
                  "url": format!("/users/{id}/assignLicense"),
                  "body": {"addLicenses": [{"skuId": sku_ids::MCOEV, "disabledPlans": []}], "removeLicenses": []},
                  "headers": { "Content-Type": "application/json" }
                },
                {
                  "id": "3",
                  "method": "GET",
                  "url": "/users/missing@example.org"
                }
              ]
            })),
        )
        .await;
    assert_eq!(status, 200);
    let responses = answer["responses"].as_array().unwrap();
    assert_eq!(responses.len(), 3);
    let by_id = |i: &str| responses.iter().find(|r| r["id"] == i).unwrap();
    assert_eq!(by_id("1")["status"], 200);
    assert_eq!(by_id("1")["body"]["id"], id.to_string());
    assert_eq!(by_id("1")["headers"]["Content-Type"], "application/json");
    assert_eq!(by_id("2")["status"], 200);
    assert_eq!(by_id("3")["status"], 404);
    assert_eq!(
        by_id("3")["body"]["error"]["code"],
        "Request_ResourceNotFound"
    );
    assert_eq!(
        licences(&sim, "batch@example.org"),
        vec![(sku_ids::MCOEV, vec![])]
    );

    // A body without its Content-Type is refused, as Graph does.
    let (status, _) = raw
        .call(
            reqwest::Method::POST,
            "/$batch",
            Some(json!({"requests": [{"id": "1", "method": "POST", "url": format!("/users/{id}/assignLicense"),
                "body": {"addLicenses": [], "removeLicenses": []}}]})),
        )
        .await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn batch_of_twenty_one_is_rejected() {
    let sim = start().await;
    let id = Uuid::new_v4();
    seed(&sim, user_seed(id, "many@example.org"));
    let raw = Raw::new(&sim).await;
    let requests: Vec<Value> = (1..=21)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{id}")}))
        .collect();
    let (status, err) = raw
        .call(
            reqwest::Method::POST,
            "/$batch",
            Some(json!({ "requests": requests })),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(err["error"]["code"], "BadRequest");
    let stats = sim.state().stats();
    assert_eq!(stats.count("batch", 400), 1);
    assert_eq!(stats.total("get_user"), 0, "no inner request was processed");
    // Twenty is fine.
    let requests: Vec<Value> = (1..=20)
        .map(|i| json!({"id": i.to_string(), "method": "GET", "url": format!("/users/{id}")}))
        .collect();
    let (status, _) = raw
        .call(
            reqwest::Method::POST,
            "/$batch",
            Some(json!({ "requests": requests })),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(sim.state().stats().count("get_user", 200), 20);
}

#[tokio::test]
async fn inner_requests_are_throttled_one_by_one_with_retry_after() {
    let sim = start_with(|s| {
        s.writes_per_window = 2;
        s.write_window_seconds = 60;
    })
    .await;
    let ids: Vec<Uuid> = (0..4).map(|_| Uuid::new_v4()).collect();
    for (i, id) in ids.iter().enumerate() {
        seed(&sim, user_seed(*id, &format!("th{i}@example.org")));
    }
    let raw = Raw::new(&sim).await;
    let requests: Vec<Value> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            json!({"id": i.to_string(), "method": "POST", "url": format!("/users/{id}/assignLicense"),
                "headers": {"Content-Type": "application/json"},
                "body": {"addLicenses": [{"skuId": sku_ids::MCOEV, "disabledPlans": []}], "removeLicenses": []}})
        })
        .collect();
    let (status, answer) = raw
        .call(
            reqwest::Method::POST,
            "/$batch",
            Some(json!({ "requests": requests })),
        )
        .await;
    assert_eq!(status, 200);
    let responses = answer["responses"].as_array().unwrap();
    let throttled: Vec<&Value> = responses.iter().filter(|r| r["status"] == 429).collect();
    assert_eq!(throttled.len(), 2);
    assert_eq!(responses.iter().filter(|r| r["status"] == 200).count(), 2);
    for r in throttled {
        assert_eq!(r["body"]["error"]["code"], "TooManyRequests");
        let secs: u64 = r["headers"]["Retry-After"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!((1..=60).contains(&secs));
    }
    // A single request is throttled the same way, with the header.
    let (status, _) = raw
        .call(
            reqwest::Method::POST,
            &format!("/users/{}/assignLicense", ids[3]),
            Some(json!({"addLicenses": [{"skuId": sku_ids::MCOEV, "disabledPlans": []}], "removeLicenses": []})),
        )
        .await;
    assert_eq!(status, 429);
    let stats = sim.state().stats();
    assert_eq!(stats.throttled, 3);
    assert_eq!(stats.writes_applied, 2);
    assert_eq!(stats.writes_attempted, 5);
    let log: Vec<u64> = stats.recent_writes.iter().map(|w| w.seq).collect();
    assert!(
        log.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers increase"
    );
    assert_eq!(
        stats.recent_writes.last().unwrap().targets,
        vec![ids[3].to_string()]
    );
}

#[tokio::test]
async fn admin_routes_change_behaviour_at_runtime() {
    let sim = start().await;
    let http = reqwest::Client::new();
    let resp = http
        .post(format!("{}/_sim/config", sim.base_url()))
        .json(&json!({"latency_ms": 5, "fault_rate": 0.0}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let b: Value = resp.json().await.unwrap();
    assert_eq!(b["latency_ms"], 5);
    assert_eq!(sim.state().behaviour().latency_ms, 5);
    let resp = http
        .post(format!("{}/_sim/config", sim.base_url()))
        .json(&json!({"no_such_knob": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 400);
    let stats: Value = http
        .get(format!("{}/_sim/stats", sim.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["writes_applied"], 0);
    let resp = http
        .post(format!("{}/_sim/reset-stats", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 204);
    sim.shutdown().await;
}

/// The `request-id`, `client-request-id` and `Date` headers of `resp`, the first two checked to
/// be UUIDs.
fn ids_of(headers: &reqwest::header::HeaderMap) -> (String, String) {
    let get = |name: &str| {
        headers
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing: {headers:?}"))
            .to_str()
            .unwrap()
            .to_owned()
    };
    assert!(!get("date").is_empty());
    let request_id = get("request-id");
    Uuid::parse_str(&request_id).expect("request-id is a UUID");
    (request_id, get("client-request-id"))
}

/// `innerError` of an error body: its `request-id`, `client-request-id` and a `date`.
fn inner_error_ids(body: &Value) -> (String, String) {
    let inner = &body["error"]["innerError"];
    assert!(
        inner["date"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
    (
        inner["request-id"].as_str().unwrap().to_owned(),
        inner["client-request-id"].as_str().unwrap().to_owned(),
    )
}

/// Graph names every response with a `request-id` and the caller's `client-request-id`, and
/// its error bodies carry the same ids (microsoft-graph-docs-contrib
/// `concepts/best-practices-concept.md`, `concepts/errors.md`).
#[tokio::test]
async fn every_response_carries_a_request_id_and_echoes_the_client_request_id() {
    let sim = start().await;
    let id = Uuid::new_v4();
    seed(&sim, user_seed(id, "ids@example.org"));
    let raw = Raw::new(&sim).await;
    let send = |method: reqwest::Method, path: &str, crid: Option<&str>| {
        let mut req = raw
            .http
            .request(method, format!("{}{path}", raw.base))
            .bearer_auth(&raw.token);
        if let Some(c) = crid {
            req = req.header("client-request-id", c);
        }
        req
    };

    // A success, with and without a client-request-id.
    let crid = Uuid::new_v4().to_string();
    let resp = send(reqwest::Method::GET, &format!("/users/{id}"), Some(&crid))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (first, echoed) = ids_of(resp.headers());
    assert_eq!(echoed, crid);
    let resp = send(reqwest::Method::GET, &format!("/users/{id}"), None)
        .send()
        .await
        .unwrap();
    let (second, echoed) = ids_of(resp.headers());
    assert_ne!(first, second, "a new request-id per response");
    assert_eq!(echoed, second, "without one, Graph answers its request-id");

    // An error: the body's innerError names the same ids as the headers.
    let resp = send(
        reqwest::Method::GET,
        "/users/nobody@example.org",
        Some(&crid),
    )
    .send()
    .await
    .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let (request_id, echoed) = ids_of(resp.headers());
    assert_eq!(echoed, crid);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(inner_error_ids(&body), (request_id, crid.clone()));

    // A 401 too.
    let resp = raw
        .http
        .get(format!("{}/subscribedSkus", raw.base))
        .bearer_auth("forged")
        .header("client-request-id", &crid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401);
    let (request_id, echoed) = ids_of(resp.headers());
    assert_eq!(echoed, crid);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(inner_error_ids(&body), (request_id, crid.clone()));

    // An injected 503 carries them, and a Retry-After of one to two seconds.
    sim.state().fail_next(1, 503);
    let resp = send(reqwest::Method::GET, &format!("/users/{id}"), Some(&crid))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 503);
    let (request_id, echoed) = ids_of(resp.headers());
    assert_eq!(echoed, crid);
    let retry_after: f64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1.0..=2.0).contains(&retry_after), "{retry_after}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["error"]["code"], "serviceNotAvailable");
    assert_eq!(inner_error_ids(&body), (request_id, crid.clone()));

    // The write log names each write by its ids.
    let write = Uuid::new_v4().to_string();
    let resp = send(reqwest::Method::POST, &format!("/users/{id}/assignLicense"), Some(&write))
        .json(&json!({"addLicenses": [{"skuId": sku_ids::MCOEV, "disabledPlans": []}], "removeLicenses": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (request_id, _) = ids_of(resp.headers());
    let logged = sim.state().stats().recent_writes.pop().unwrap();
    assert_eq!(
        (logged.request_id, logged.client_request_id),
        (request_id, write)
    );
}

/// Inner `$batch` answers carry ids of their own, echoing each inner request's
/// `client-request-id` (as the inner errors of `concepts/json-batching.md` show).
#[tokio::test]
async fn inner_batch_responses_carry_their_own_request_ids() {
    let sim = start().await;
    let id = Uuid::new_v4();
    seed(&sim, user_seed(id, "inner@example.org"));
    let raw = Raw::new(&sim).await;
    let (outer, one, two) = (
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
        Uuid::new_v4().to_string(),
    );
    let resp = raw
        .http
        .post(format!("{}/$batch", raw.base))
        .bearer_auth(&raw.token)
        .header("client-request-id", &outer)
        .json(&json!({"requests": [
            {"id": "1", "method": "GET", "url": format!("/users/{id}"),
             "headers": {"client-request-id": one}},
            {"id": "2", "method": "GET", "url": "/users/missing@example.org",
             "headers": {"Client-Request-Id": two}},
            {"id": "3", "method": "GET", "url": format!("/users/{id}")},
        ]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let (envelope, echoed) = ids_of(resp.headers());
    assert_eq!(echoed, outer);
    let answer: Value = resp.json().await.unwrap();
    let responses = answer["responses"].as_array().unwrap();
    let by_id = |i: &str| responses.iter().find(|r| r["id"] == i).unwrap();
    let header = |r: &Value, name: &str| r["headers"][name].as_str().unwrap().to_owned();
    let mut request_ids = vec![envelope];
    for (i, crid) in [("1", Some(&one)), ("2", Some(&two)), ("3", None)] {
        let r = by_id(i);
        let request_id = header(r, "request-id");
        Uuid::parse_str(&request_id).unwrap();
        assert!(!header(r, "Date").is_empty());
        let expected = crid.cloned().unwrap_or_else(|| request_id.clone());
        assert_eq!(header(r, "client-request-id"), expected, "{r}");
        request_ids.push(request_id);
    }
    let two_answer = by_id("2");
    assert_eq!(two_answer["status"], 404);
    assert_eq!(
        inner_error_ids(&two_answer["body"]),
        (header(two_answer, "request-id"), two.clone())
    );
    request_ids.sort();
    request_ids.dedup();
    assert_eq!(request_ids.len(), 4, "every answer has its own request-id");
}

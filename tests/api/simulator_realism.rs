//! The simulator's unkind behaviours, each switched on alone and driven over HTTP: replication
//! lag and stale reads, new objects missing, writes applied and then failed, the tenant-wide
//! write quota with Graph's throttling headers, `x-ms-throttle-priority`, and the `realistic`
//! profile.
use std::time::Duration;

use policy_reconciler::cli::Cli;
use policy_reconciler::configuration::Settings;
use policy_reconciler::simulator::{
    SimulatorBehaviour, SimulatorHandle, SimulatorProfile, SimulatorSettings, sku_ids,
};
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::kit::simulator::{licences, seed, start_with, token_response};

/// A raw Graph client of one simulator.
struct Graph {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Graph {
    async fn new(sim: &SimulatorHandle) -> Self {
        let http = reqwest::Client::new();
        let token = token_response(&http, &sim.base_url(), "t").await["access_token"]
            .as_str()
            .unwrap()
            .to_owned();
        Self {
            http,
            base: sim.base_url(),
            token,
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> reqwest::Result<(u16, HeaderMap, Value)> {
        let mut req = self
            .http
            .request(method, format!("{}/v1.0{path}", self.base))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await?;
        Ok((
            status,
            headers,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, HeaderMap, Value) {
        self.send(method, path, body, &[]).await.unwrap()
    }

    async fn assign_e3(&self, user: Uuid, headers: &[(&str, &str)]) -> (u16, HeaderMap, Value) {
        self.send(
            Method::POST,
            &format!("/users/{user}/assignLicense"),
            Some(e3_body()),
            headers,
        )
        .await
        .unwrap()
    }

    async fn sim_config(&self, patch: Option<Value>) -> Value {
        let url = format!("{}/_sim/config", self.base);
        let req = match patch {
            Some(p) => self.http.post(url).json(&p),
            None => self.http.get(url),
        };
        req.send().await.unwrap().json().await.unwrap()
    }
}

fn e3_body() -> Value {
    json!({"addLicenses": [{"skuId": sku_ids::ENTERPRISEPACK, "disabledPlans": []}], "removeLicenses": []})
}

/// Seeds `n` users with usage location GB; their ids.
fn users(sim: &SimulatorHandle, n: usize) -> Vec<Uuid> {
    let ids: Vec<Uuid> = (0..n).map(|_| Uuid::new_v4()).collect();
    let users: Vec<Value> = ids
        .iter()
        .map(|id| json!({"id": id, "userPrincipalName": format!("{id}@example.org"), "usageLocation": "GB"}))
        .collect();
    seed(sim, json!({ "users": users }));
    ids
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

fn new_group(name: &str) -> Value {
    json!({"displayName": name, "mailNickname": name, "mailEnabled": false, "securityEnabled": true})
}

#[tokio::test]
async fn a_read_after_assign_license_can_be_stale_and_is_fresh_after_the_lag() {
    let sim = start_with(|s| {
        s.replication_lag_ms = 300;
        s.stale_read_probability = 1.0;
    })
    .await;
    let [user] = users(&sim, 1)[..] else {
        unreachable!()
    };
    let graph = Graph::new(&sim).await;
    assert_eq!(graph.assign_e3(user, &[]).await.0, 200);
    // The primary has it at once (inspection and `/_sim/users`).
    assert_eq!(licences(&sim, &user.to_string()).len(), 1);
    let path = format!("/users/{user}?$select=assignedLicenses");
    let (status, _, stale) = graph.call(Method::GET, &path, None).await;
    assert_eq!(status, 200);
    assert_eq!(
        stale["assignedLicenses"],
        json!([]),
        "a lagging replica answered"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (_, _, fresh) = graph.call(Method::GET, &path, None).await;
    assert_eq!(
        fresh["assignedLicenses"][0]["skuId"],
        json!(sku_ids::ENTERPRISEPACK)
    );

    // Half the reads stale: within the lag window, answers are not monotonic.
    graph
        .sim_config(Some(json!({"stale_read_probability": 0.5, "replication_lag_ms": 5000, "long_lag_probability": 1.0, "long_lag_ms": 5000})))
        .await;
    let [other] = users(&sim, 1)[..] else {
        unreachable!()
    };
    graph.assign_e3(other, &[]).await;
    let path = format!("/users/{other}?$select=assignedLicenses");
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (_, _, u) = graph.call(Method::GET, &path, None).await;
        seen.insert(u["assignedLicenses"].as_array().unwrap().len());
    }
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), vec![0, 1]);
}

#[tokio::test]
async fn a_new_group_is_missing_then_appears() {
    let sim = start_with(|s| {
        s.replication_lag_ms = 400;
        s.long_lag_probability = 1.0;
        s.long_lag_ms = 400;
        s.stale_read_probability = 1.0;
        s.new_object_write_404_probability = 1.0;
    })
    .await;
    let [user] = users(&sim, 1)[..] else {
        unreachable!()
    };
    let graph = Graph::new(&sim).await;
    let (status, _, group) = graph
        .call(Method::POST, "/groups", Some(new_group("Fresh")))
        .await;
    assert_eq!(status, 201);
    let id = group["id"].as_str().unwrap().to_owned();
    let filter = "/groups?$filter=displayName%20eq%20'Fresh'";
    let (_, _, found) = graph.call(Method::GET, filter, None).await;
    assert_eq!(found["value"], json!([]));
    let (status, _, err) = graph
        .call(Method::GET, &format!("/groups/{id}/members"), None)
        .await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );
    let member =
        json!({"@odata.id": format!("https://graph.microsoft.com/v1.0/directoryObjects/{user}")});
    let add = format!("/groups/{id}/members/$ref");
    let (status, _, err) = graph.call(Method::POST, &add, Some(member.clone())).await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (404, Some("Request_ResourceNotFound"))
    );
    assert!(sim.state().groups_of(&user.to_string()).unwrap().is_empty());

    tokio::time::sleep(Duration::from_millis(500)).await;
    let (_, _, found) = graph.call(Method::GET, filter, None).await;
    assert_eq!(found["value"][0]["id"], json!(id));
    assert_eq!(graph.call(Method::POST, &add, Some(member)).await.0, 204);
    assert_eq!(
        sim.state().groups_of(&user.to_string()).unwrap(),
        vec!["Fresh".to_owned()]
    );
}

#[tokio::test]
async fn a_write_applied_then_failed_leaves_the_licence_applied() {
    let sim = start_with(|s| s.applied_then_fault_rate = 1.0).await;
    let ids = users(&sim, 6);
    let graph = Graph::new(&sim).await;
    for user in &ids[..3] {
        let (status, headers, body) = graph.assign_e3(*user, &[]).await;
        assert!([500, 503, 504].contains(&status), "{status}");
        assert!(body["error"]["code"].is_string());
        if status != 500 {
            assert!(header(&headers, "retry-after").is_some());
        }
        assert_eq!(licences(&sim, &user.to_string()).len(), 1);
    }
    // Inside $batch, per inner request.
    let requests: Vec<Value> = ids[3..5]
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"id": i.to_string(), "method": "POST", "url": format!("/users/{u}/assignLicense"),
            "headers": {"Content-Type": "application/json"}, "body": e3_body()}))
        .collect();
    let (status, _, batch) = graph
        .call(
            Method::POST,
            "/$batch",
            Some(json!({ "requests": requests })),
        )
        .await;
    assert_eq!(status, 200);
    for r in batch["responses"].as_array().unwrap() {
        assert!(r["status"].as_u64().unwrap() >= 500);
    }
    for user in &ids[3..5] {
        assert_eq!(licences(&sim, &user.to_string()).len(), 1);
    }
    // Applied, then the connection dropped.
    graph
        .sim_config(Some(
            json!({"applied_then_fault_rate": 0.0, "applied_then_dropped_rate": 1.0}),
        ))
        .await;
    let path = format!("/users/{}/assignLicense", ids[5]);
    let dropped = graph.send(Method::POST, &path, Some(e3_body()), &[]).await;
    assert!(dropped.is_err(), "the connection is dropped");
    assert_eq!(licences(&sim, &ids[5].to_string()).len(), 1);

    let stats = sim.state().stats();
    let log: Vec<_> = stats
        .recent_writes
        .iter()
        .filter(|w| w.route == "assign_license")
        .collect();
    assert_eq!(log.len(), 6);
    assert!(log.iter().all(|w| w.applied));
    assert!(log[..5].iter().all(|w| w.status >= 500));
    assert_eq!(log[5].status, 0);
    assert_eq!(stats.writes_applied, 6);
}

#[tokio::test]
async fn the_tenant_wide_write_quota_answers_429_with_graphs_headers() {
    let sim = start_with(|s| {
        s.tenant_writes_per_window = 3;
        s.tenant_write_window_seconds = 86_400;
    })
    .await;
    let [user] = users(&sim, 1)[..] else {
        unreachable!()
    };
    let graph = Graph::new(&sim).await;
    let mut percentages = Vec::new();
    for _ in 0..3 {
        let (status, headers, _) = graph.assign_e3(user, &[]).await;
        assert_eq!(status, 200);
        percentages.push(header(&headers, "x-ms-throttle-limit-percentage").map(str::to_owned));
    }
    // 1 of 3 and 2 of 3 are below 80 %; 3 of 3 is reported.
    assert_eq!(percentages, vec![None, None, Some("1.0".to_owned())]);
    let (status, headers, body) = graph.assign_e3(user, &[]).await;
    assert_eq!(status, 429);
    assert_eq!(body["error"]["code"], "TooManyRequests");
    assert!(
        header(&headers, "retry-after")
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    let scope = header(&headers, "x-ms-throttle-scope").unwrap();
    assert!(
        scope.starts_with("Tenant/Write/policy-reconciler-dev/"),
        "{scope}"
    );
    assert_eq!(
        header(&headers, "x-ms-throttle-information"),
        Some("WriteLimitExceeded")
    );
    // Reads are not writes.
    assert_eq!(
        graph
            .call(Method::GET, &format!("/users/{user}"), None)
            .await
            .0,
        200
    );
    let stats = sim.state().stats();
    assert_eq!((stats.writes_applied, stats.throttled), (3, 1));
}

#[tokio::test]
async fn write_priorities_are_counted_and_low_is_throttled_first() {
    let sim = start_with(|s| {
        s.writes_per_window = 10;
        s.write_window_seconds = 86_400;
    })
    .await;
    let [user] = users(&sim, 1)[..] else {
        unreachable!()
    };
    let graph = Graph::new(&sim).await;
    graph
        .assign_e3(user, &[("x-ms-throttle-priority", "Low")])
        .await;
    graph
        .assign_e3(user, &[("x-ms-throttle-priority", "HIGH")])
        .await;
    graph.assign_e3(user, &[]).await;
    // Inner requests carry their own priority, or inherit the $batch's.
    let inner = |id: &str, headers: Value| {
        json!({"id": id, "method": "POST", "url": format!("/users/{user}/assignLicense"),
            "headers": headers, "body": e3_body()})
    };
    let (status, _, _) = graph
        .send(
            Method::POST,
            "/$batch",
            Some(json!({"requests": [
                inner("1", json!({"Content-Type": "application/json", "x-ms-throttle-priority": "low"})),
                inner("2", json!({"Content-Type": "application/json"})),
            ]})),
            &[("x-ms-throttle-priority", "normal")],
        )
        .await
        .unwrap();
    assert_eq!(status, 200);
    // Reads are not counted.
    graph
        .send(
            Method::GET,
            &format!("/users/{user}"),
            None,
            &[("x-ms-throttle-priority", "low")],
        )
        .await
        .unwrap();
    let stats: Value = reqwest::get(format!("{}/_sim/stats", sim.base_url()))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        stats["writes_by_priority"],
        json!({"low": 2, "normal": 1, "high": 1, "none": 1})
    );

    // 5 writes so far of 10; 3 more reach 80 %.
    for _ in 0..3 {
        assert_eq!(graph.assign_e3(user, &[]).await.0, 200);
    }
    let (status, headers, _) = graph
        .assign_e3(user, &[("x-ms-throttle-priority", "low")])
        .await;
    assert_eq!(status, 429, "low priority is throttled first above 80 %");
    assert_eq!(
        header(&headers, "x-ms-throttle-scope").map(|s| s.starts_with("Tenant_Application/Write/")),
        Some(true)
    );
    let (status, headers, _) = graph
        .assign_e3(user, &[("x-ms-throttle-priority", "high")])
        .await;
    assert_eq!(status, 200, "normal and high go on to the limit");
    assert!(header(&headers, "x-ms-throttle-limit-percentage").is_some());
    assert_eq!(sim.state().stats().writes_with_priority("low"), 3);
}

#[tokio::test]
async fn the_realistic_profile_from_the_command_line_and_at_runtime() {
    let cli = <Cli as clap::Parser>::try_parse_from([
        "policy-reconciler",
        "tenant-simulator",
        "--profile",
        "realistic",
    ])
    .unwrap();
    let none = config::Environment::default().source(Some(Default::default()));
    let settings = Settings::load_with(&cli.sources(), none).unwrap();
    assert_eq!(settings.simulator.profile, SimulatorProfile::Realistic);
    assert_eq!(
        settings.simulator.behaviour,
        SimulatorBehaviour::realistic()
    );
    // An explicit key wins over the profile's figure.
    let env = config::Environment::default().source(Some(
        [(
            "RECONCILER__SIMULATOR__REPLICATION_LAG_MS".to_owned(),
            "5".to_owned(),
        )]
        .into(),
    ));
    let settings = Settings::load_with(&cli.sources(), env).unwrap();
    assert_eq!(settings.simulator.replication_lag_ms, 5);
    assert_eq!(
        settings.simulator.stale_read_probability,
        SimulatorBehaviour::realistic().stale_read_probability
    );
    assert!(
        <Cli as clap::Parser>::try_parse_from([
            "policy-reconciler",
            "tenant-simulator",
            "--profile",
            "kind"
        ])
        .is_err()
    );

    // /_sim/config reads and patches every knob, a profile too.
    let sim = start_with(|_| {}).await;
    let graph = Graph::new(&sim).await;
    let config = graph.sim_config(None).await;
    for key in [
        "replication_lag_ms",
        "stale_read_probability",
        "applied_then_fault_rate",
        "tenant_writes_per_window",
    ] {
        assert!(config.get(key).is_some(), "{key}");
    }
    let realistic = graph
        .sim_config(Some(json!({"profile": "realistic", "latency_ms": 0})))
        .await;
    let mut expected = serde_json::to_value(SimulatorBehaviour::realistic()).unwrap();
    expected["latency_ms"] = json!(0);
    assert_eq!(realistic, expected);
    assert_eq!(sim.state().behaviour().replication_lag_ms, 3000);
    // Settings for tests with the profile.
    assert_eq!(
        SimulatorSettings::realistic().behaviour,
        SimulatorBehaviour::realistic()
    );
}

//! The operator console's JSON API against a real worker: reads (filters, search, one job, its
//! items, failures as CSV, chunks, events, a user's jobs, the overview) and operator actions
//! with roles and CSRF, a revert posted from a job's page included. The pages in a real browser are in `console_browser`.

use std::time::Duration;

use policy_reconciler::ops;
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{AppOptions, TestApp, spawn_app_with};
use crate::kit::wait_until;

pub const OPERATOR_TOKEN: &str = "operator-token-0123456789";
pub const READER_TOKEN: &str = "reader-token-0123456789";

/// A worker whose console knows an operator `ops` and a reader `viewer`, plus `env`.
pub async fn console_app(extra: &[(&str, &str)]) -> TestApp {
    let mut env: Vec<(String, String)> = [
        ("CONSOLE__TOKENS__OPS__ROLE", "operator"),
        ("CONSOLE__TOKENS__OPS__TOKEN", OPERATOR_TOKEN),
        ("CONSOLE__TOKENS__VIEWER__ROLE", "reader"),
        ("CONSOLE__TOKENS__VIEWER__TOKEN", READER_TOKEN),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.dedup();
    spawn_app_with(AppOptions {
        env,
        ..AppOptions::default()
    })
    .await
}

/// A `policy.changed` for `members` (licence ENTERPRISEPACK with Teams), published.
pub async fn publish_policy(app: &TestApp, id: &str, members: &[String]) -> Value {
    let job = app.job(
        "policy.changed",
        json!({ "policy": { "id": id, "name": format!("{id} users"), "ods_code": "RX1",
                            "version": 1, "licence": "ENTERPRISEPACK",
                            "toggles": { "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true } },
                "members": members, "total_members": members.len() }),
    );
    app.publish_job(&job).await;
    job
}

/// Users of whom one is missing and one has no usage location: two failure codes.
pub fn mixed_members(app: &TestApp, prefix: &str, ok: usize) -> Vec<String> {
    let mut members = app.sim.seed_users(prefix, ok);
    app.sim.seed(json!({ "users": [{ "id": uuid::Uuid::new_v4(), "userPrincipalName": "nowhere@nhs.net" }] }));
    members.push("nowhere@nhs.net".into());
    members.push("ghost@nhs.net".into());
    members
}

pub struct Api {
    client: reqwest::Client,
    base: String,
}

impl Api {
    pub fn new(app: &TestApp) -> Self {
        Self {
            client: reqwest::Client::new(),
            base: app.url(""),
        }
    }

    pub async fn get(&self, token: Option<&str>, path: &str) -> (StatusCode, String) {
        let mut request = self.client.get(format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        (response.status(), response.text().await.unwrap())
    }

    pub async fn json(&self, token: &str, path: &str) -> Value {
        let (status, body) = self.get(Some(token), path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        check_documented("get", path, status, &body);
        body
    }

    pub async fn act(
        &self,
        token: &str,
        job: &str,
        action: &str,
        reason: &str,
    ) -> (StatusCode, Value) {
        let response = self
            .client
            .post(format!("{}/api/v1/jobs/{job}/actions", self.base))
            .bearer_auth(token)
            .json(&json!({ "action": action, "reason": reason }))
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.json().await.unwrap_or(Value::Null);
        check_documented(
            "post",
            &format!("/api/v1/jobs/{job}/actions"),
            status,
            &body,
        );
        (status, body)
    }
}

/// The console API's OpenAPI document (`contract/console-api.openapi.yaml`).
fn openapi() -> &'static Value {
    static DOC: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
    DOC.get_or_init(|| {
        serde_norway::from_str(policy_reconciler::contract::CONSOLE_OPENAPI)
            .expect("the OpenAPI document is YAML")
    })
}

/// The document's path template that `path` (without its query) matches.
fn documented_path(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').collect();
    openapi()["paths"]
        .as_object()?
        .keys()
        .map(String::as_str)
        .find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts
                    .iter()
                    .zip(&segments)
                    .all(|(t, s)| t == s || (t.starts_with('{') && !s.is_empty()))
        })
}

/// Checks an answer of the API against the OpenAPI document: its path and status are
/// documented, and a JSON body validates against the response's schema.
fn check_documented(method: &str, path: &str, status: StatusCode, body: &Value) {
    let doc = openapi();
    let template =
        documented_path(path).unwrap_or_else(|| panic!("{path} is not in the OpenAPI document"));
    let escape = |s: &str| s.replace('~', "~0").replace('/', "~1");
    let mut response = format!(
        "/paths/{}/{method}/responses/{}",
        escape(template),
        status.as_u16()
    );
    let documented = doc
        .pointer(&response)
        .unwrap_or_else(|| panic!("{method} {template} answered {status}, not documented"));
    if let Some(target) = documented["$ref"].as_str() {
        response = target.trim_start_matches('#').to_owned();
    }
    let schema = doc
        .pointer(&format!("{response}/content/application~1json/schema"))
        .unwrap_or_else(|| panic!("{method} {template} {status}: no JSON schema documented"));
    // With the document's components beside it, so that `#/components/...` resolves.
    let mut root = schema.clone();
    root["components"] = doc["components"].clone();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&root)
        .expect("the document's schemas compile");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| e.to_string()).collect();
    assert!(
        errors.is_empty(),
        "{method} {path} ({status}) does not match the OpenAPI document: {errors:?}\n{body}"
    );
}

pub async fn completed(api: &Api, job: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        // 404 until ingest has stored the job.
        let (_, body) = api
            .get(Some(READER_TOKEN), &format!("/api/v1/jobs/{job}"))
            .await;
        let detail: Value = serde_json::from_str(&body).unwrap_or_default();
        if detail["state"] == "completed" {
            return detail;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job {job} did not complete: {detail}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn the_api_finds_a_job_and_shows_its_items_failures_chunks_and_events() {
    let app = console_app(&[]).await;
    let api = Api::new(&app);
    let members = mixed_members(&app, "con", 5);
    let job = publish_policy(&app, "rx1-console", &members).await;
    let message_id = job["message_id"].as_str().unwrap();
    let ticket = job["ticket"]["reference"].as_str().unwrap();
    let detail = completed(&api, message_id).await;

    // No credential, a wrong one: refused.
    assert_eq!(
        api.get(None, "/api/v1/jobs").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.get(Some("not-a-token-at-all"), "/api/v1/jobs").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.json(READER_TOKEN, "/api/v1/whoami").await,
        json!({ "name": "viewer", "role": "reader" })
    );

    // Search by ticket, message id, policy id, a member's email; filters.
    for q in [ticket, message_id, "rx1-console", members[0].as_str()] {
        let list = api.json(READER_TOKEN, &format!("/api/v1/jobs?q={q}")).await;
        let jobs = list["jobs"].as_array().unwrap();
        assert_eq!(jobs.len(), 1, "{q}: {list}");
        assert_eq!(jobs[0]["message_id"], message_id);
        assert_eq!(jobs[0]["done"], 7);
        assert_eq!(jobs[0]["progress"]["percent"], 100.0);
    }
    let none = api
        .json(READER_TOKEN, "/api/v1/jobs?q=nobody@nhs.net")
        .await;
    assert!(none["jobs"].as_array().unwrap().is_empty(), "{none}");
    let filtered = api
        .json(
            READER_TOKEN,
            "/api/v1/jobs?state=completed&type=policy.changed&outcome=partially_succeeded&ods=RX1",
        )
        .await;
    assert_eq!(filtered["jobs"].as_array().unwrap().len(), 1, "{filtered}");
    let other = api
        .json(READER_TOKEN, "/api/v1/jobs?outcome=succeeded")
        .await;
    assert!(other["jobs"].as_array().unwrap().is_empty());
    let paused = api.json(READER_TOKEN, "/api/v1/jobs?flag=paused").await;
    assert!(paused["jobs"].as_array().unwrap().is_empty());
    assert_eq!(
        api.get(Some(READER_TOKEN), "/api/v1/jobs?state=nonsense")
            .await
            .0,
        StatusCode::BAD_REQUEST
    );

    // One job.
    assert_eq!(detail["outcome"], "partially_succeeded", "{detail}");
    assert_eq!(detail["items"]["changed"], 5);
    assert_eq!(detail["items"]["failed"], 2);
    assert_eq!(detail["ticket"]["reference"], ticket);
    let mut codes: Vec<String> = detail["failure_codes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["code"].as_str().unwrap().to_owned())
        .collect();
    codes.sort();
    assert_eq!(codes, ["usage_location_missing", "user_not_found"]);
    assert_eq!(detail["chunks"]["done"], 1);

    // Its items, by code; paged.
    let failed = api
        .json(
            READER_TOKEN,
            &format!("/api/v1/jobs/{message_id}/items?code=user_not_found"),
        )
        .await;
    let items = failed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{failed}");
    assert_eq!(items[0]["item"], "ghost@nhs.net");
    assert_eq!(items[0]["outcome"], "failed");
    let first = api
        .json(
            READER_TOKEN,
            &format!("/api/v1/jobs/{message_id}/items?limit=3"),
        )
        .await;
    assert_eq!(first["items"].as_array().unwrap().len(), 3);
    let after = first["next_after"].as_i64().unwrap();
    let rest = api
        .json(
            READER_TOKEN,
            &format!("/api/v1/jobs/{message_id}/items?limit=10&after={after}"),
        )
        .await;
    assert_eq!(rest["items"].as_array().unwrap().len(), 4);
    assert!(rest["next_after"].is_null());

    // Failures as CSV, all and by code.
    let (status, csv) = api
        .get(
            Some(READER_TOKEN),
            &format!("/api/v1/jobs/{message_id}/failures.csv"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], "item,code,detail");
    assert_eq!(lines.len(), 3, "{csv}");
    let (_, only) = api
        .get(
            Some(READER_TOKEN),
            &format!("/api/v1/jobs/{message_id}/failures.csv?code=usage_location_missing"),
        )
        .await;
    assert_eq!(only.lines().count(), 2, "{only}");
    assert!(
        only.contains("nowhere@nhs.net,usage_location_missing"),
        "{only}"
    );

    // Chunks and events.
    let chunks = api
        .json(READER_TOKEN, &format!("/api/v1/jobs/{message_id}/chunks"))
        .await;
    assert_eq!(chunks["chunks"][0]["state"], "done", "{chunks}");
    let events = api
        .json(READER_TOKEN, &format!("/api/v1/jobs/{message_id}/events"))
        .await;
    let types: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["job.accepted", "job.completed"], "{events}");
    assert_eq!(
        events["events"][1]["body"]["outcome"],
        "partially_succeeded"
    );

    // A user's jobs.
    let user = api
        .json(READER_TOKEN, &format!("/api/v1/users/{}/jobs", members[0]))
        .await;
    assert_eq!(user["jobs"][0]["message_id"], message_id, "{user}");
    assert_eq!(user["jobs"][0]["outcome"], "changed");
    let ghost = api
        .json(READER_TOKEN, "/api/v1/users/ghost@nhs.net/jobs")
        .await;
    assert_eq!(ghost["jobs"][0]["code"], "user_not_found");

    // Overview.
    let overview = api.json(READER_TOKEN, "/api/v1/overview").await;
    assert!(
        overview["unfinished"].as_array().unwrap().is_empty(),
        "{overview}"
    );
    assert_eq!(overview["dead_letters"], 0);
    assert_eq!(overview["drift"], json!([]), "no sweep has found drift");

    // Actions: a completed job refuses; a reader is refused whatever the job.
    let (status, body) = api.act(OPERATOR_TOKEN, message_id, "pause", "test").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let (status, _) = api.act(READER_TOKEN, message_id, "pause", "test").await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, _) = api
        .act(OPERATOR_TOKEN, "no-such-job", "pause", "test")
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The same search from the command line's path.
    let (rows, more) = ops::search(
        &app.pool,
        &ops::JobFilter {
            search: Some(ticket.to_owned()),
            ..ops::JobFilter::default()
        },
        1,
        10,
    )
    .await
    .unwrap();
    assert!(!more);
    assert_eq!(rows[0].message_id, message_id);
    assert!(ops::render_rows(&rows, more).contains(ticket));
}

#[tokio::test]
async fn operators_pause_and_resume_with_a_reason_readers_and_forged_posts_cannot() {
    // Slow enough to act on while it runs: 200 users at 20 writes a second.
    let app = console_app(&[
        ("TENANT__WRITES_PER_SECOND", "20"),
        ("TENANT__WRITE_BURST", "1"),
    ])
    .await;
    let api = Api::new(&app);
    let members = app.sim.seed_users("act", 200);
    let job = publish_policy(&app, "rx1-act", &members).await;
    let message_id = job["message_id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(30), "the job to run", || async {
        let (_, body) = api
            .get(Some(READER_TOKEN), &format!("/api/v1/jobs/{message_id}"))
            .await;
        body.contains("\"state\":\"running\"")
    })
    .await;

    let (status, _) = api
        .act(READER_TOKEN, &message_id, "pause", "reader tries")
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let (status, body) = api.act(OPERATOR_TOKEN, &message_id, "pause", " ").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api.act(OPERATOR_TOKEN, &message_id, "explode", "why").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = api
        .act(OPERATOR_TOKEN, &message_id, "pause", "CHG0001 freeze")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["action"], "paused");
    assert_eq!(body["by"], "ops");
    let detail = api
        .json(READER_TOKEN, &format!("/api/v1/jobs/{message_id}"))
        .await;
    assert_eq!(detail["paused"], true);
    assert_eq!(detail["operator_actions"][0]["action"], "pause");
    assert_eq!(detail["operator_actions"][0]["by"], "ops");
    assert_eq!(detail["operator_actions"][0]["reason"], "CHG0001 freeze");

    // A browser's session cookie without the CSRF token is refused; with it, accepted.
    let client = reqwest::Client::new();
    let url = app.url(&format!("/api/v1/jobs/{message_id}/actions"));
    let cookie = format!("pr_console={OPERATOR_TOKEN}; pr_csrf=abc123");
    let forged = client
        .post(&url)
        .header("cookie", &cookie)
        .json(&json!({ "action": "resume", "reason": "forged" }))
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::FORBIDDEN);
    let wrong = client
        .post(&url)
        .header("cookie", &cookie)
        .header("x-csrf-token", "abc124")
        .json(&json!({ "action": "resume", "reason": "forged" }))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), StatusCode::FORBIDDEN);
    let resumed = client
        .post(&url)
        .header("cookie", &cookie)
        .header("x-csrf-token", "abc123")
        .json(&json!({ "action": "resume", "reason": "freeze over" }))
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), StatusCode::OK);

    // `jobs watch`'s path follows it to the end.
    let done = tokio::time::timeout(
        Duration::from_secs(90),
        ops::watch(&app.pool, &message_id, Duration::from_millis(200)),
    )
    .await
    .expect("the job completes")
    .unwrap();
    assert_eq!(done.outcome.as_deref(), Some("succeeded"));
    assert_eq!(done.items.changed, 200);
    assert!(ops::render_watched(&done).contains("completed succeeded"));
    let recorded: Vec<(String, String, String)> =
        sqlx::query_as("SELECT action, by_whom, reason FROM job_operator_actions ORDER BY id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        recorded,
        [
            ("pause".into(), "ops".into(), "CHG0001 freeze".into()),
            ("resume".into(), "ops".into(), "freeze over".into()),
        ]
    );
}

#[tokio::test]
async fn no_console_without_authentication_unless_configured() {
    let app = console_app(&[]).await;
    let api = Api::new(&app);
    let (status, _) = api.get(None, "/api/v1/overview").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A page sends the browser to the sign-in form.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page = client.get(app.url("/console/jobs")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::SEE_OTHER);
    assert_eq!(page.headers()["location"], "/console/login");
    // The vendored htmx is served by the binary itself.
    let (status, script) = api.get(None, "/console/assets/htmx.min.js").await;
    assert_eq!(status, StatusCode::OK);
    assert!(script.contains("htmx"), "not htmx");
    drop(app);

    let open = console_app(&[("CONSOLE__ALLOW_UNAUTHENTICATED", "true")]).await;
    let api = Api::new(&open);
    let (status, body) = api.get(None, "/api/v1/whoami").await;
    assert_eq!(status, StatusCode::OK);
    assert!(body.contains("local-dev"), "{body}");
    // A wrong bearer token is still refused.
    assert_eq!(
        api.get(Some("wrong-token-0000000000"), "/api/v1/whoami")
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn an_operator_reverts_a_completed_job_from_its_page_a_reader_cannot() {
    let app = console_app(&[]).await;
    let api = Api::new(&app);
    let members = app.sim.seed_users("undo", 4);
    let before: Vec<_> = members.iter().map(|u| app.sim.licences(u)).collect();
    let job = publish_policy(&app, "rx1-undo", &members).await;
    let message_id = job["message_id"].as_str().unwrap().to_owned();
    let detail = completed(&api, &message_id).await;
    for (upn, was) in members.iter().zip(&before) {
        assert_ne!(&app.sim.licences(upn), was, "{upn} licensed by the job");
    }

    // The completed job's page offers the revert to an operator only.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let page_url = app.url(&format!("/console/jobs/{message_id}"));
    let operator = format!("pr_console={OPERATOR_TOKEN}; pr_csrf=abc123");
    let reader = format!("pr_console={READER_TOKEN}; pr_csrf=abc123");
    let page = |cookie: String| {
        let request = client.get(&page_url).header("cookie", cookie);
        async move { request.send().await.unwrap().text().await.unwrap() }
    };
    assert!(page(operator.clone()).await.contains("id=\"revert\""));
    assert!(!page(reader.clone()).await.contains("id=\"revert\""));

    let post = |cookie: &str, csrf: &str, reason: &str| {
        client
            .post(&page_url)
            .header("cookie", cookie)
            .form(&[("action", "revert"), ("reason", reason), ("csrf", csrf)])
            .send()
    };
    let reason = "INC0100200 sent for the wrong practice";
    assert_eq!(
        post(&reader, "abc123", reason).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        post(&operator, "abc124", reason).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let no_revert: i64 =
        sqlx::query_scalar("SELECT count(*) FROM jobs WHERE job_type = 'policy.revert'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(no_revert, 0, "a refused post stored a revert");
    // The button's post: post/redirect/get back to the page, saying what was done.
    let done = post(&operator, "abc123", reason).await.unwrap();
    assert_eq!(done.status(), StatusCode::SEE_OTHER);
    let location = done.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("revert%20job"), "{location}");

    // The revert runs as a job of its own and restores every member, in the tenant.
    let (revert_id, revert_message): (uuid::Uuid, String) =
        sqlx::query_as("SELECT id, message_id FROM jobs WHERE job_type = 'policy.revert'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    let reverted = completed(&api, &revert_message).await;
    assert_eq!(reverted["outcome"], "succeeded", "{reverted}");
    assert!(detail["id"].is_string(), "{detail}");
    assert_eq!(reverted["subject"]["reverts"], detail["id"], "{reverted}");
    for (upn, was) in members.iter().zip(&before) {
        assert_eq!(&app.sim.licences(upn), was, "{upn} restored");
    }
    // Recorded as the operator's action on the job reverted: who, why, and the revert job.
    let detail = api
        .json(READER_TOKEN, &format!("/api/v1/jobs/{message_id}"))
        .await;
    let actions = detail["operator_actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{detail}");
    assert_eq!(actions[0]["action"], "revert");
    assert_eq!(actions[0]["by"], "ops");
    assert_eq!(actions[0]["reason"], reason);
    assert!(
        location.contains(&revert_id.to_string()),
        "{location} names the revert job"
    );
}

#[tokio::test]
async fn every_path_of_the_openapi_document_is_served_and_the_document_too() {
    let app = console_app(&[]).await;
    let api = Api::new(&app);
    let (status, served) = api.get(Some(READER_TOKEN), "/api/v1/openapi.yaml").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(served, policy_reconciler::contract::CONSOLE_OPENAPI);
    assert_eq!(
        api.get(None, "/api/v1/openapi.yaml").await.0,
        StatusCode::UNAUTHORIZED
    );
    // Each path with its parameters filled: the route answers (a handler's 404 says which
    // job is missing; the router's own has no body).
    let client = reqwest::Client::new();
    let missing = uuid::Uuid::new_v4().to_string();
    for (template, operations) in openapi()["paths"].as_object().unwrap() {
        let path = template
            .replace("{job}", &missing)
            .replace("{email}", "nobody@nhs.net");
        for method in operations.as_object().unwrap().keys() {
            let request = match method.as_str() {
                "get" => client.get(app.url(&path)),
                "post" => client
                    .post(app.url(&path))
                    .json(&json!({ "action": "pause", "reason": "probe" })),
                other => panic!("{other} {template}: a method the test does not know"),
            };
            let response = request.bearer_auth(OPERATOR_TOKEN).send().await.unwrap();
            let status = response.status();
            let body = response.text().await.unwrap();
            assert!(
                status != StatusCode::NOT_FOUND || body.contains("no job"),
                "{method} {template}: {status} {body}"
            );
            assert_ne!(
                status,
                StatusCode::METHOD_NOT_ALLOWED,
                "{method} {template}"
            );
            if let Ok(json) = serde_json::from_str::<Value>(&body) {
                check_documented(method, &path, status, &json);
            }
        }
    }
    // An undocumented path is the router's 404.
    let (status, _) = api.get(Some(READER_TOKEN), "/api/v1/nothing-here").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(documented_path("/api/v1/nothing-here").is_none());
}

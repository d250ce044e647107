//! Drift sweeps (issue 18) end to end: a policy applied by a job, its tenant state then changed
//! behind the service's back (the simulator's admin route, as an administrator in the admin
//! center would), a sweep stored (`drift sweep`'s library function), and what it finds: the
//! `drift.detected` event (checked against the contract's schema) and the tenant's state.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc, Weekday};
use policy_reconciler::configuration::DriftMode;
use policy_reconciler::engine::clock::SystemClock;
use policy_reconciler::engine::drift::{period_start, sweep_now};
use policy_reconciler::store::drift::store_sweep;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::console::{Api, READER_TOKEN};
use crate::helpers::{AppOptions, TestApp, spawn_app_with};
use crate::kit::broker::EventQueue;
use crate::kit::{time, wait_until};

const ON: &[&str] = &["EXCHANGE_S_ENTERPRISE", "TEAMS1"];

/// A worker whose clock is in an off-peak window (a Saturday): sweeps run only there. The
/// schedule is off (the helpers' default): the test stores its sweeps itself. Its console
/// knows the reader of `console::READER_TOKEN`.
async fn app() -> TestApp {
    let (clock, _) = time::clock_on(Weekday::Sat, 10, 0).await;
    spawn_app_with(AppOptions {
        clock: Some(clock),
        env: vec![
            ("CONSOLE__TOKENS__VIEWER__ROLE".into(), "reader".into()),
            ("CONSOLE__TOKENS__VIEWER__TOKEN".into(), READER_TOKEN.into()),
        ],
        ..Default::default()
    })
    .await
}

/// Policy `id` applied to `members` by a `policy.changed`, completed `succeeded`.
async fn apply_policy(app: &TestApp, events: &mut EventQueue, id: &str, members: &[String]) {
    let job = app.job(
        "policy.changed",
        json!({ "policy": { "id": id, "name": format!("{id} users"), "ods_code": "RX1",
                            "version": 3, "licence": "ENTERPRISEPACK",
                            "toggles": { "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true } },
                "members": members, "total_members": members.len() }),
    );
    app.publish_job(&job).await;
    let done = events
        .next_of("job.completed", job["message_id"].as_str().unwrap())
        .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
}

/// Assign `licence` ((skuId, disabled plans)) to `upn` behind the service's back.
async fn assign_behind_the_back(
    app: &TestApp,
    upn: &str,
    add: Option<(Uuid, Vec<Uuid>)>,
    remove: &[Uuid],
) {
    let add: Vec<Value> = add
        .into_iter()
        .map(|(sku, disabled)| json!({ "skuId": sku, "disabledPlans": disabled }))
        .collect();
    let response = reqwest::Client::new()
        .post(format!(
            "{}/_sim/users/{upn}/assignLicense",
            app.sim.base_url
        ))
        .json(&json!({ "addLicenses": add, "removeLicenses": remove }))
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{}",
        response.text().await.unwrap()
    );
}

/// The name of service plan `id` of ENTERPRISEPACK.
fn plan_name(app: &TestApp, id: Uuid) -> String {
    let skus = app.sim.state.subscribed_skus();
    let sku = crate::kit::simulator::sku(&skus, "ENTERPRISEPACK");
    sku["servicePlans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["servicePlanId"] == id.to_string())
        .unwrap()["servicePlanName"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The next `drift.detected`, checked against the contract's schema.
async fn next_drift(events: &mut EventQueue) -> Value {
    let schema = policy_reconciler::contract::schema("drift.detected").unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    loop {
        let event = events
            .next(Duration::from_secs(60))
            .await
            .expect("no drift.detected");
        if event["type"] == "drift.detected" {
            let errors: Vec<String> = validator
                .iter_errors(&event)
                .map(|e| e.to_string())
                .collect();
            assert!(errors.is_empty(), "{event} does not validate: {errors:?}");
            return event;
        }
        assert_ne!(event["type"], "job.completed", "a sweep published {event}");
    }
}

/// The sweep job `message_id`, once completed: (outcome, schedule, background, dry_run).
async fn completed_sweep(app: &TestApp, message_id: &str) -> (String, String, bool, bool) {
    let query = "SELECT outcome, schedule, background, dry_run FROM jobs
                 WHERE message_id = $1 AND state = 'completed'";
    wait_until(
        Duration::from_secs(60),
        "the sweep job to complete",
        || async {
            sqlx::query(query)
                .bind(message_id)
                .fetch_optional(&app.pool)
                .await
                .unwrap()
                .is_some()
        },
    )
    .await;
    sqlx::query_as(query)
        .bind(message_id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

/// The event types stored for the job `message_id`.
async fn events_of(app: &TestApp, message_id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT o.event_type FROM outbox o JOIN jobs j ON j.id = o.job_id
         WHERE j.message_id = $1 ORDER BY o.id",
    )
    .bind(message_id)
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_plan_enabled_behind_the_services_back_is_found_and_repaired() {
    let mut app = app().await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("drift", 3);
    apply_policy(&app, &mut events, "rx1-drift", &members).await;
    let expected = app.sim.expected_licence("ENTERPRISEPACK", ON);

    // An administrator enables a plan the policy disables, for one member.
    let enabled = expected.1[0];
    let drifted: Vec<Uuid> = expected.1[1..].to_vec();
    assign_behind_the_back(&app, &members[1], Some((expected.0, drifted)), &[]).await;
    assert_ne!(app.sim.licences(&members[1]), vec![expected.clone()]);
    let writes = app.sim.licence_writes();

    let stored = sweep_now(
        &app.pool,
        &app.settings.engine.drift,
        Some(DriftMode::Repair),
        &SystemClock,
    )
    .await
    .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].starts_with("drift:manual-") && stored[0].ends_with(":policy:rx1-drift"));
    let drift = next_drift(&mut events).await;
    assert_eq!(drift["source_message_id"], stored[0].as_str());
    assert_eq!(
        drift["subject"],
        json!({ "policy_id": "rx1-drift", "version": 3 })
    );
    assert_eq!(
        drift["counts"],
        json!({ "checked": 3, "drifted": 1, "repaired": 1, "failed": 0 }),
        "{drift}"
    );
    assert_eq!(drift["items_truncated"], false);
    let items = drift["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{drift}");
    assert_eq!(items[0]["item"], members[1].as_str());
    let name = plan_name(&app, enabled);
    let disabled = |v: &Value| -> Vec<String> {
        assert_eq!(v[0]["sku"], "ENTERPRISEPACK", "{v}");
        serde_json::from_value(v[0]["disabled_plans"].clone()).unwrap()
    };
    assert!(!disabled(&items[0]["found"]).contains(&name), "{drift}");
    assert!(disabled(&items[0]["expected"]).contains(&name), "{drift}");
    assert_eq!(
        disabled(&items[0]["expected"]).len(),
        disabled(&items[0]["found"]).len() + 1
    );

    // The tenant is back to the policy's state, by one write; the others were only read.
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    assert_eq!(app.sim.licence_writes(), writes + 1);
    // A job of its own: listed, off-peak background work, no job.accepted or job.completed.
    let (outcome, schedule, background, dry_run) = completed_sweep(&app, &stored[0]).await;
    assert_eq!(
        (outcome.as_str(), schedule.as_str(), background, dry_run),
        ("succeeded", "off_peak", true, false)
    );
    assert_eq!(events_of(&app, &stored[0]).await, vec!["drift.detected"]);
    let (listed, _) = policy_reconciler::ops::search(&app.pool, &Default::default(), 1, 50)
        .await
        .unwrap();
    assert!(
        listed
            .iter()
            .any(|j| j.message_id == stored[0] && j.job_type.as_deref() == Some("drift.sweep"))
    );

    // The next sweep finds nothing: it publishes nothing.
    let again = sweep_now(
        &app.pool,
        &app.settings.engine.drift,
        Some(DriftMode::Repair),
        &SystemClock,
    )
    .await
    .unwrap();
    assert_eq!(again.len(), 1);
    let (outcome, ..) = completed_sweep(&app, &again[0]).await;
    assert_eq!(outcome, "succeeded");
    assert!(events_of(&app, &again[0]).await.is_empty());
    assert_eq!(app.sim.licence_writes(), writes + 1);
}

#[tokio::test]
async fn a_report_only_sweep_reports_a_removed_licence_and_writes_nothing() {
    let mut app = app().await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("report", 2);
    apply_policy(&app, &mut events, "rx1-report", &members).await;
    let expected = app.sim.expected_licence("ENTERPRISEPACK", ON);

    // An administrator removes the licence of one member.
    assign_behind_the_back(&app, &members[0], None, &[expected.0]).await;
    assert!(app.sim.licences(&members[0]).is_empty());
    let writes = app.sim.licence_writes();

    let stored = sweep_now(
        &app.pool,
        &app.settings.engine.drift,
        Some(DriftMode::Report),
        &SystemClock,
    )
    .await
    .unwrap();
    assert_eq!(stored.len(), 1);
    let drift = next_drift(&mut events).await;
    assert_eq!(
        drift["subject"],
        json!({ "policy_id": "rx1-report", "version": 3 })
    );
    assert_eq!(
        drift["counts"],
        json!({ "checked": 2, "drifted": 1, "repaired": 0, "failed": 0 }),
        "{drift}"
    );
    assert_eq!(drift["items"][0]["item"], members[0].as_str());
    assert_eq!(drift["items"][0]["found"], json!([]), "{drift}");
    assert_eq!(drift["items"][0]["expected"][0]["sku"], "ENTERPRISEPACK");

    // Nothing was written: the licence is still gone.
    let (outcome, _, _, dry_run) = completed_sweep(&app, &stored[0]).await;
    assert_eq!((outcome.as_str(), dry_run), ("succeeded", true));

    // The console's overview lists it, with a link to the sweep job.
    let api = Api::new(&app);
    let sweep_id: Uuid = sqlx::query_scalar("SELECT id FROM jobs WHERE message_id = $1")
        .bind(&stored[0])
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let overview = api.json(READER_TOKEN, "/api/v1/overview").await;
    let listed = overview["drift"].as_array().unwrap();
    assert_eq!(listed.len(), 1, "{overview}");
    assert_eq!(listed[0]["job_id"], sweep_id.to_string());
    assert_eq!(listed[0]["subject"], drift["subject"]);
    assert_eq!(listed[0]["counts"], drift["counts"]);
    let (_, page) = api.get(Some(READER_TOKEN), "/console").await;
    assert!(page.contains("1 sweep found drift"), "{page}");
    assert!(page.contains("policy rx1-report v3"), "{page}");
    assert!(
        page.contains(&format!("/console/jobs/{sweep_id}")),
        "{page}"
    );
    assert!(app.sim.licences(&members[0]).is_empty());
    assert_eq!(app.sim.licences(&members[1]), vec![expected]);
    assert_eq!(app.sim.licence_writes(), writes);

    // A scheduled sweep is stored once per period, however many replicas store it; a policy
    // changed after its period began waits for the next one. The periods are the database's
    // days, the clock that stamped the policy (tests/kit/time.rs, rule 3): tomorrow's began
    // after the policy was stored, yesterday's before.
    let now = time::database_now().await;
    let day = Duration::from_secs(86_400);
    let label = |start: DateTime<Utc>| start.to_rfc3339_opts(SecondsFormat::Secs, true);
    let start = period_start(now + chrono::Duration::days(1), day);
    let period = label(start);
    let first = store_sweep(&app.pool, &period, true, 100, Some(start))
        .await
        .unwrap();
    assert_eq!(first, vec![format!("drift:{period}:policy:rx1-report")]);
    assert!(
        store_sweep(&app.pool, &period, true, 100, Some(start))
            .await
            .unwrap()
            .is_empty()
    );
    let before = period_start(now - chrono::Duration::days(1), day);
    assert!(
        store_sweep(&app.pool, &label(before), true, 100, Some(before))
            .await
            .unwrap()
            .is_empty()
    );
}

/// Assign `role` of RX1 to `user` through the broker, completed `succeeded`.
async fn assign_role(app: &TestApp, events: &mut EventQueue, user: &str, role: &str) {
    let job = app.job(
        "admin_role.assign",
        json!({ "user": user, "ods_code": "RX1", "role": role }),
    );
    app.publish_job(&job).await;
    let done = events
        .next_of("job.completed", job["message_id"].as_str().unwrap())
        .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
}

fn phone_groups(app: &TestApp, user: &str) -> Vec<String> {
    app.sim
        .state
        .groups_of(user)
        .unwrap()
        .into_iter()
        .filter(|g| g.starts_with("PhoneSystem-"))
        .collect()
}

#[tokio::test]
async fn a_role_holder_removed_from_their_group_behind_the_services_back_is_put_back() {
    let mut app = app().await;
    let mut events = app.event_queue().await;
    let users = app.sim.seed_users("holder", 2);
    for user in &users {
        assign_role(&app, &mut events, user, "phone_system_local_admin").await;
    }
    assert_eq!(phone_groups(&app, &users[0]), vec!["PhoneSystem-Local-RX1"]);

    // An administrator removes the first holder from the group.
    let group = app.sim.state.groups_named("PhoneSystem-Local-RX1")[0];
    let id = app.sim.state.user(&users[0]).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let response = reqwest::Client::new()
        .delete(format!(
            "{}/_sim/groups/{group}/members/{id}",
            app.sim.base_url
        ))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    assert!(phone_groups(&app, &users[0]).is_empty());

    // Report only: found and reported, nothing written.
    let stored = sweep_now(
        &app.pool,
        &app.settings.engine.drift,
        Some(DriftMode::Report),
        &SystemClock,
    )
    .await
    .unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert!(stored[0].ends_with(":ods:RX1"), "{stored:?}");
    let drift = next_drift(&mut events).await;
    assert_eq!(drift["subject"], json!({ "ods_code": "RX1" }));
    assert_eq!(
        drift["counts"],
        json!({ "checked": 2, "drifted": 1, "repaired": 0, "failed": 0 }),
        "{drift}"
    );
    assert_eq!(
        drift["items"],
        json!([{ "item": users[0], "found": [], "expected": ["PhoneSystem-Local-RX1"] }])
    );
    completed_sweep(&app, &stored[0]).await;
    assert!(phone_groups(&app, &users[0]).is_empty());

    // Repair: back in the group.
    let stored = sweep_now(
        &app.pool,
        &app.settings.engine.drift,
        Some(DriftMode::Repair),
        &SystemClock,
    )
    .await
    .unwrap();
    let drift = next_drift(&mut events).await;
    assert_eq!(drift["source_message_id"], stored[0].as_str());
    assert_eq!(
        drift["counts"],
        json!({ "checked": 2, "drifted": 1, "repaired": 1, "failed": 0 }),
        "{drift}"
    );
    let (outcome, ..) = completed_sweep(&app, &stored[0]).await;
    assert_eq!(outcome, "succeeded");
    assert_eq!(phone_groups(&app, &users[0]), vec!["PhoneSystem-Local-RX1"]);
    assert_eq!(phone_groups(&app, &users[1]), vec!["PhoneSystem-Local-RX1"]);
    assert_eq!(events_of(&app, &stored[0]).await, vec!["drift.detected"]);
}

#[tokio::test]
async fn a_sweep_whose_worker_is_killed_mid_way_is_finished_by_another_with_one_event() {
    let mut simulator = policy_reconciler::simulator::SimulatorSettings::for_tests();
    simulator.latency_ms = 40;
    let (clock, _) = time::clock_on(Weekday::Sat, 10, 0).await;
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(simulator),
        clock: Some(clock),
        env: vec![
            ("ENGINE__CHUNK_SIZE".into(), "20".into()),
            ("ENGINE__ROUND_SIZE".into(), "4".into()),
            ("ENGINE__CHUNK_CONCURRENCY".into(), "1".into()),
            ("ENGINE__LEASE_SECONDS".into(), "2".into()),
        ],
        ..Default::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("resume", 40);
    apply_policy(&app, &mut events, "rx1-resume", &members).await;
    let expected = app.sim.expected_licence("ENTERPRISEPACK", ON);
    // Every fourth member loses the licence behind the service's back.
    let drifted: Vec<&String> = members.iter().step_by(4).collect();
    for upn in &drifted {
        assign_behind_the_back(&app, upn, None, &[expected.0]).await;
    }

    let stored = sweep_now(
        &app.pool,
        &app.settings.engine.drift,
        Some(DriftMode::Repair),
        &SystemClock,
    )
    .await
    .unwrap();
    assert_eq!(stored.len(), 1);
    // Kill the worker in the middle of a chunk of the sweep.
    wait_until(
        Duration::from_secs(30),
        "a sweep chunk part-way done",
        || async {
            sqlx::query_scalar::<_, i64>(
                "SELECT count(*) FROM job_chunks c JOIN jobs j ON j.id = c.job_id
             WHERE j.job_type = 'drift.sweep' AND c.state = 'running'
               AND (SELECT count(*) FROM job_items i
                    WHERE i.job_id = c.job_id AND i.chunk = c.chunk AND i.outcome IS NOT NULL)
                   BETWEEN 4 AND 12",
            )
            .fetch_one(&app.pool)
            .await
            .unwrap_or(0)
                == 1
        },
    )
    .await;
    app.kill_worker(0);
    let done_before: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_items i JOIN jobs j ON j.id = i.job_id
         WHERE j.job_type = 'drift.sweep' AND i.outcome IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(done_before < 40, "killed mid-way");

    app.start_worker().await;
    let drift = next_drift(&mut events).await;
    assert_eq!(drift["source_message_id"], stored[0].as_str());
    assert_eq!(
        drift["counts"],
        json!({ "checked": 40, "drifted": 10, "repaired": 10, "failed": 0 }),
        "{drift}"
    );
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    completed_sweep(&app, &stored[0]).await;
    assert_eq!(events_of(&app, &stored[0]).await, vec!["drift.detected"]);
    let reclaimed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_chunks c JOIN jobs j ON j.id = c.job_id
         WHERE j.job_type = 'drift.sweep' AND c.claims > 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        reclaimed >= 1,
        "a sweep chunk was taken over after its lease expired"
    );
}

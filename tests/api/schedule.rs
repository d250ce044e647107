//! Large jobs wait for off-peak windows; small ones start at once. The scheduler's clock is
//! under the test's control: no real waiting.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc, Weekday};
use policy_reconciler::engine::clock::ManualClock;
use serde_json::{Value, json};

use crate::helpers::{AppOptions, OPERATOR, spawn_app_with};
use crate::kit::broker::EventQueue;
use crate::kit::time;

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn next_of(events: &mut EventQueue, event_type: &str, message_id: &Value) -> Value {
    events
        .next_of(event_type, message_id.as_str().expect("a message_id"))
        .await
}

#[tokio::test]
async fn a_large_job_accepted_at_ten_waits_for_seven_while_a_small_one_runs_at_once() {
    // A Tuesday, 10:00 in London, after the database's now (tests/kit/time.rs).
    let tuesday = time::next(Weekday::Tue).await;
    let clock = Arc::new(ManualClock::new(tuesday.at(10, 0)));
    let mut app = spawn_app_with(AppOptions {
        clock: Some(clock.clone()),
        ..AppOptions::default()
    })
    .await;
    let mut large_events = app.event_queue().await;
    let mut small_events = app.event_queue().await;
    let large_members = app.sim.seed_users("large", 1_500);
    let small_members = app.sim.seed_users("small", 999);
    let policy = |id: &str| {
        json!({ "id": id, "name": id, "ods_code": "RX1", "version": 1,
                                    "licence": "ENTERPRISEPACK", "toggles": { "TEAMS1": true } })
    };

    let large = app.job(
        "policy.changed",
        json!({ "policy": policy("rx1-large"), "members": large_members, "total_members": 1_500 }),
    );
    app.publish_job(&large).await;
    let accepted = next_of(&mut large_events, "job.accepted", &large["message_id"]).await;
    assert_eq!(accepted["schedule"], "off_peak");
    assert_eq!(accepted["total"], 1_500);
    assert_eq!(
        at(accepted["earliest_start"].as_str().unwrap()),
        tuesday.at(19, 0)
    );

    let small = app.job(
        "policy.changed",
        json!({ "policy": policy("rx1-small"), "members": small_members, "total_members": 999 }),
    );
    app.publish_job(&small).await;
    let accepted = next_of(&mut small_events, "job.accepted", &small["message_id"]).await;
    assert_eq!(accepted["schedule"], "immediate");
    let done = next_of(&mut small_events, "job.completed", &small["message_id"]).await;
    assert_eq!(done["outcome"], "succeeded");
    assert_eq!(done["counts"]["changed"], 999);

    // The large job has not started: not one of its users was written.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sim.licence_writes(), 999);
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE message_id = $1")
        .bind(large["message_id"].as_str().unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "accepted");
    assert!(app.sim.licences(&large_members[0]).is_empty());

    // Still closed at 18:59; at 19:00 it runs and completes.
    clock.set(tuesday.at(18, 59));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sim.licence_writes(), 999);
    clock.set(tuesday.at(19, 0));
    let done = next_of(&mut large_events, "job.completed", &large["message_id"]).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1_500);
    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in large_members.iter().step_by(97) {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    assert_eq!(app.sim.licence_writes(), 2_499);
}

#[tokio::test]
async fn jobs_that_would_miss_the_24_hour_target_are_counted_at_risk() {
    use policy_reconciler::engine::{Engine, Kinds};
    use policy_reconciler::tenant::{GraphClient, Tenant};

    let app = crate::helpers::spawn_app().await;
    // A Tuesday, 10:00 in London, after the database's now (tests/kit/time.rs): the next
    // window opens at 19:00 and closes at 07:00, so an off-peak job received now has 12 window
    // hours before its deadline.
    let tuesday = time::next(Weekday::Tue).await;
    let now = tuesday.at(10, 0);
    let insert = |received: DateTime<Utc>, schedule: &'static str, items: i32| {
        let pool = app.pool.clone();
        async move {
            let id = uuid::Uuid::now_v7();
            sqlx::query(
                "INSERT INTO jobs (id, message_id, job_type, state, received_at, schedule, accepted_at)
                 VALUES ($1, $1::text, 'policy.changed', 'accepted', $2, $3, $2)",
            )
            .bind(id)
            .bind(received)
            .bind(schedule)
            .execute(&pool)
            .await
            .unwrap();
            sqlx::query(
                "INSERT INTO job_items (job_id, seq, chunk, item)
                 SELECT $1, g, g / 250, 'u' || g || '@nhs.net' FROM generate_series(0, $2 - 1) g",
            )
            .bind(id)
            .bind(items)
            .execute(&pool)
            .await
            .unwrap();
        }
    };
    let tenant: Arc<dyn Tenant> = Arc::new(GraphClient::new(app.settings.tenant.clone()).unwrap());
    let engine = Engine::new(
        app.pool.clone(),
        tenant,
        Kinds::default(),
        app.settings.engine.clone(),
        &app.settings.schedule,
        "forecast-test",
        Arc::new(ManualClock::new(now)),
    )
    .unwrap()
    .with_items_per_second(20.0);

    // 1,500 users at 20 a second need 75 s of the 12 window hours: fine.
    insert(now, "off_peak", 1_500).await;
    assert_eq!(engine.jobs_at_risk().await.unwrap(), 0);
    // 900,000 users need 12.5 hours: more than the windows before the deadline.
    insert(now, "off_peak", 900_000).await;
    assert_eq!(engine.jobs_at_risk().await.unwrap(), 1);
    // An immediate job received 23 h 59 min ago with 10,000 users left (500 s): too late.
    insert(
        now - chrono::Duration::minutes(23 * 60 + 59),
        "immediate",
        10_000,
    )
    .await;
    assert_eq!(engine.jobs_at_risk().await.unwrap(), 2);
}

fn large_policy(version: i64, toggles: Value, members: Option<&[String]>) -> Value {
    let mut payload = json!({ "policy": { "id": "rx1-big", "name": "RX1 big", "ods_code": "RX1",
        "version": version, "licence": "ENTERPRISEPACK", "toggles": toggles } });
    if let Some(members) = members {
        payload["members"] = json!(members);
        payload["total_members"] = json!(members.len());
    }
    payload
}

async fn off_peak_app(clock: &Arc<ManualClock>) -> crate::helpers::TestApp {
    spawn_app_with(AppOptions {
        clock: Some(clock.clone()),
        env: vec![("SCHEDULE__LARGE_JOB_THRESHOLD".into(), "50".into())],
        ..AppOptions::default()
    })
    .await
}

#[tokio::test]
async fn a_newer_version_supersedes_the_remaining_work_of_a_scheduled_older_job() {
    // A Tuesday in London, after the database's now (tests/kit/time.rs).
    let tuesday = time::next(Weekday::Tue).await;
    let clock = Arc::new(ManualClock::new(tuesday.at(10, 0)));
    let mut app = off_peak_app(&clock).await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("sup", 100);

    let v1 = app.job(
        "policy.changed",
        large_policy(1, json!({ "TEAMS1": true }), Some(&members)),
    );
    app.publish_job(&v1).await;
    assert_eq!(
        next_of(&mut events, "job.accepted", &v1["message_id"]).await["schedule"],
        "off_peak"
    );

    let v2 = app.job(
        "policy.changed",
        large_policy(2, json!({ "TEAMS1": true, "SWAY": true }), None),
    );
    app.publish_job(&v2).await;
    // The older job ends at once: its ticket is resolved, saying why.
    let old = next_of(&mut events, "job.completed", &v1["message_id"]).await;
    assert_eq!(old["outcome"], "succeeded", "{old}");
    assert_eq!(old["counts"]["skipped"], 100);
    assert_eq!(old["counts"]["changed"], 0);
    assert!(
        old["subject"]["ended_early"]
            .as_str()
            .unwrap()
            .contains("superseded by version 2")
    );
    assert_eq!(app.sim.licence_writes(), 0);

    // In the evening the newer job writes every member once, with the newer definition.
    clock.set(tuesday.at(19, 0));
    let new = next_of(&mut events, "job.completed", &v2["message_id"]).await;
    assert_eq!(new["outcome"], "succeeded", "{new}");
    assert_eq!(new["counts"]["changed"], 100);
    assert_eq!(
        app.sim.licence_writes(),
        100,
        "no user written for the stale definition"
    );
    let expected = app
        .sim
        .expected_licence("ENTERPRISEPACK", &["TEAMS1", "SWAY"]);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
}

#[tokio::test]
async fn expedite_runs_a_large_job_now_and_pause_holds_one_until_resumed() {
    // A Tuesday in London, after the database's now (tests/kit/time.rs).
    let tuesday = time::next(Weekday::Tue).await;
    use policy_reconciler::ops::jobs;

    let clock = Arc::new(ManualClock::new(tuesday.at(10, 0)));
    let mut app = off_peak_app(&clock).await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("exp", 60);

    // Expedite: runs at 10:00 without waiting for the window.
    let job = app.job(
        "policy.changed",
        large_policy(1, json!({ "TEAMS1": true }), Some(&members)),
    );
    app.publish_job(&job).await;
    next_of(&mut events, "job.accepted", &job["message_id"]).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.sim.licence_writes(), 0);
    jobs::expedite(&app.pool, job["message_id"].as_str().unwrap(), &OPERATOR)
        .await
        .unwrap();
    let done = next_of(&mut events, "job.completed", &job["message_id"]).await;
    assert_eq!(done["counts"]["changed"], 60);

    // Pause: the window opens, yet nothing runs until resumed.
    let job = app.job(
        "policy.changed",
        large_policy(2, json!({ "SWAY": true }), None),
    );
    app.publish_job(&job).await;
    next_of(&mut events, "job.accepted", &job["message_id"]).await;
    jobs::pause(&app.pool, job["message_id"].as_str().unwrap(), &OPERATOR)
        .await
        .unwrap();
    clock.set(tuesday.at(19, 0));
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        app.sim.licence_writes(),
        60,
        "a paused job is not worked on"
    );
    jobs::resume(&app.pool, job["message_id"].as_str().unwrap(), &OPERATOR)
        .await
        .unwrap();
    let done = next_of(&mut events, "job.completed", &job["message_id"]).await;
    assert_eq!(done["outcome"], "succeeded");
    assert_eq!(done["counts"]["changed"], 60);
    assert_eq!(app.sim.licence_writes(), 120);
}

#[tokio::test]
async fn a_small_job_is_not_stuck_behind_a_large_one() {
    // One chunk at a time across the whole service, with some tenant latency: the large job
    // has six chunks; the small job, published after it started, has one.
    let mut simulator = policy_reconciler::simulator::SimulatorSettings::for_tests();
    simulator.latency_ms = 20;
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(simulator),
        env: vec![
            ("ENGINE__CHUNK_SIZE".into(), "10".into()),
            ("ENGINE__CHUNK_CONCURRENCY".into(), "1".into()),
            ("ENGINE__MAX_RUNNING_CHUNKS".into(), "1".into()),
            // The claim order alone, without slots kept for small jobs.
            ("ENGINE__SMALL_JOB_RESERVE".into(), "0".into()),
        ],
        ..AppOptions::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let large_members = app.sim.seed_users("fairlarge", 60);
    let small_members = app.sim.seed_users("fairsmall", 5);
    let policy = |id: &str| {
        json!({ "id": id, "name": id, "ods_code": "RX1", "version": 1,
                                    "licence": "ENTERPRISEPACK", "toggles": { "TEAMS1": true } })
    };
    let large = app.job("policy.changed", json!({ "policy": policy("rx1-fair-large"), "members": large_members, "total_members": 60 }));
    app.publish_job(&large).await;
    next_of(&mut events, "job.accepted", &large["message_id"]).await;
    let small = app.job(
        "policy.changed",
        json!({ "policy": policy("rx1-fair-small"), "members": small_members, "total_members": 5 }),
    );
    app.publish_job(&small).await;

    let mut completed = Vec::new();
    while completed.len() < 2 {
        let event = events
            .next(Duration::from_secs(60))
            .await
            .expect("both jobs complete");
        if event["type"] == "job.completed" {
            completed.push(event["source_message_id"].clone());
        }
    }
    assert_eq!(
        completed,
        vec![small["message_id"].clone(), large["message_id"].clone()],
        "the small job finished first"
    );
}

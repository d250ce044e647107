//! What a job reports is what happened, when it ends early or its workers stop: a cancel or a
//! newer version stops the tenant writes within one batch per running chunk, every write that
//! reached the tenant is counted `changed`, and a stopping worker hands its chunks back.

use std::collections::HashSet;
use std::time::Duration;

use chrono::{DateTime, Utc};
use policy_reconciler::ops;
use policy_reconciler::simulator::SimulatorSettings;
use serde_json::{Value, json};

use crate::helpers::{AppOptions, OPERATOR, TestApp, spawn_app_with};
use crate::kit::wait_until;

fn policy(id: &str, version: i64, toggles: Value) -> Value {
    json!({ "id": id, "name": format!("{id} users"), "ods_code": "RX1", "version": version,
            "licence": "ENTERPRISEPACK", "toggles": toggles })
}

fn changed(policy: Value, members: &[String]) -> Value {
    json!({ "policy": policy, "members": members, "total_members": members.len() })
}

/// A worker paced by a write budget, so that a 1,500-member job takes several seconds, with
/// large jobs run at once (no off-peak wait).
async fn paced_app(writes_per_second: u32) -> TestApp {
    let mut simulator = SimulatorSettings::for_tests();
    simulator.latency_ms = 20;
    spawn_app_with(AppOptions {
        simulator: Some(simulator),
        env: vec![
            (
                "TENANT__WRITES_PER_SECOND".into(),
                writes_per_second.to_string(),
            ),
            ("SCHEDULE__LARGE_JOB_THRESHOLD".into(), "100000".into()),
        ],
        ..AppOptions::default()
    })
    .await
}

/// Users of `members` holding any licence in the simulator.
fn licensed(app: &TestApp, members: &[String]) -> u64 {
    members
        .iter()
        .filter(|m| !app.sim.licences(m).is_empty())
        .count() as u64
}

fn count(done: &Value, field: &str) -> u64 {
    done["counts"][field].as_u64().unwrap()
}

/// Licence writes the simulator applied, with their arrival time and what they assigned.
fn applied_writes(app: &TestApp) -> Vec<(DateTime<Utc>, Value)> {
    app.sim
        .state
        .stats()
        .recent_writes
        .into_iter()
        .filter(|w| w.route == "assign_license" && w.applied)
        .map(|w| {
            (
                DateTime::from_timestamp_millis(w.unix_ms as i64).unwrap(),
                w.body.unwrap_or_default(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_cancel_stops_the_writes_and_the_completion_counts_every_write_made() {
    let mut app = paced_app(150).await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("cancel", 1_500);
    let job = app.job(
        "policy.changed",
        changed(policy("rx1-cancel", 1, json!({ "TEAMS1": true })), &members),
    );
    app.publish_job(&job).await;
    let message_id = job["message_id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(60), "250 users written", || async {
        app.sim.licence_writes() >= 250
    })
    .await;

    let report = ops::cancel(&app.pool, &message_id, &OPERATOR)
        .await
        .unwrap();
    let cancelled_at = Utc::now();
    let done = events.next_of("job.completed", &message_id).await;
    assert_eq!(
        done["subject"]["ended_early"],
        policy_reconciler::store::work::controls::CANCELLED_BY_OPERATOR
    );
    let written = licensed(&app, &members);
    assert!(
        written < 1_500,
        "the cancel stopped nothing: {written} written"
    );

    // Every user written is reported as changed (they held no licence before), and the rest
    // as skipped: none written is reported skipped.
    assert_eq!(count(&done, "changed"), written, "{}", done["counts"]);
    assert_eq!(count(&done, "already_compliant"), 0);
    assert_eq!(count(&done, "skipped"), 1_500 - written);
    assert_eq!(count(&done, "failed"), 0);

    // After the cancel, at most the batches already sent land: one `$batch` per request in
    // flight of each running chunk (batch_concurrency of them), and nothing after completion.
    let settings = &app.settings;
    let in_flight = u64::from(settings.engine.max_running_chunks.get())
        * settings.tenant.batch_concurrency.get() as u64
        * settings.tenant.batch_size.get() as u64;
    let late = applied_writes(&app)
        .into_iter()
        .filter(|(at, _)| *at > cancelled_at)
        .count() as u64;
    assert!(
        late <= in_flight,
        "{late} writes after the cancel returned (running chunks: {})",
        report.chunks_running
    );
    let writes = app.sim.licence_writes();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app.sim.licence_writes(),
        writes,
        "writes after the completion"
    );
}

#[tokio::test]
async fn a_superseded_job_stops_writing_and_no_user_is_left_in_the_older_state() {
    let mut app = paced_app(150).await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("supersede", 1_500);
    let v1 = app.job(
        "policy.changed",
        changed(
            policy("rx1-versions", 1, json!({ "TEAMS1": true })),
            &members,
        ),
    );
    app.publish_job(&v1).await;
    wait_until(Duration::from_secs(60), "250 users written", || async {
        app.sim.licence_writes() >= 250
    })
    .await;
    let v2 = app.job(
        "policy.changed",
        changed(
            policy("rx1-versions", 2, json!({ "TEAMS1": true, "SWAY": true })),
            &members,
        ),
    );
    app.publish_job(&v2).await;
    let v2_id = v2["message_id"].as_str().unwrap();
    let v1_id = v1["message_id"].as_str().unwrap();
    // v1 ends in v2's planning transaction, which publishes v2's job.accepted.
    let accepted = events.next_of("job.accepted", v2_id).await;
    let ended_at: DateTime<Utc> = accepted["occurred_at"].as_str().unwrap().parse().unwrap();
    let v1_done = events.next_of("job.completed", v1_id).await;
    let v2_done = events.next_of("job.completed", v2_id).await;
    assert_eq!(v2_done["outcome"], "succeeded", "{}", v2_done["counts"]);
    assert!(v1_done["subject"]["ended_early"].is_string(), "{v1_done}");

    // Every member holds the newer version.
    let newer = app
        .sim
        .expected_licence("ENTERPRISEPACK", &["TEAMS1", "SWAY"]);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![newer.clone()], "{upn}");
    }
    // No write of the older version (SWAY disabled) arrived more than 2 s after it ended.
    let sway = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    let older_disabled: HashSet<String> = sway.1.iter().map(|p| p.to_string()).collect();
    let is_older = |body: &Value| {
        body["addLicenses"][0]["disabledPlans"]
            .as_array()
            .is_some_and(|plans| {
                plans.len() == older_disabled.len()
                    && plans
                        .iter()
                        .all(|p| older_disabled.contains(p.as_str().unwrap_or_default()))
            })
    };
    let late: Vec<DateTime<Utc>> = applied_writes(&app)
        .into_iter()
        .filter(|(at, body)| is_older(body) && *at > ended_at + chrono::Duration::seconds(2))
        .map(|(at, _)| at)
        .collect();
    assert!(late.is_empty(), "older writes after its end: {late:?}");
    // What v1 wrote is counted as changed, the rest skipped as superseded.
    assert_eq!(
        count(&v1_done, "changed") + count(&v1_done, "skipped"),
        1_500,
        "{}",
        v1_done["counts"]
    );
    assert!(count(&v1_done, "changed") >= 250);
}

/// The database goes away mid-job: writes admitted before the outage land in the tenant with
/// their outcomes unrecorded, and none is made during it. When it returns, the chunks are taken
/// up again, the users found compliant, and reported `changed` (their intent was recorded),
/// not `already_compliant`.
// Multi-threaded: the proxy runs on the test's runtime, which must keep serving the worker's
// connections while the test blocks (stopping the worker at the end).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_around_a_database_outage_are_reported_changed() {
    let proxy = crate::helpers::TcpProxy::start("127.0.0.1:5432").await;
    let mut simulator = SimulatorSettings::for_tests();
    simulator.latency_ms = 20;
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(simulator),
        database_port: Some(proxy.port),
        env: vec![
            ("TENANT__WRITES_PER_SECOND".into(), "150".into()),
            ("ENGINE__LEASE_SECONDS".into(), "3".into()),
            ("SCHEDULE__LARGE_JOB_THRESHOLD".into(), "100000".into()),
        ],
        ..AppOptions::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("outage", 1_200);
    let job = app.job(
        "policy.changed",
        changed(policy("rx1-outage", 1, json!({ "TEAMS1": true })), &members),
    );
    app.publish_job(&job).await;
    wait_until(Duration::from_secs(60), "200 users written", || async {
        app.sim.licence_writes() >= 200
    })
    .await;
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = app.sim.licence_writes();
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(
        app.sim.licence_writes(),
        during,
        "writes while the database was unreachable"
    );
    proxy.set_down(false);

    let done = events
        .next_of("job.completed", job["message_id"].as_str().unwrap())
        .await;
    assert_eq!(done["outcome"], "succeeded", "{}", done["counts"]);
    assert_eq!(count(&done, "changed"), 1_200, "{}", done["counts"]);
    assert_eq!(count(&done, "already_compliant"), 0);
    assert_eq!(licensed(&app, &members), 1_200);
}

/// Two workers; each is stopped (as on SIGTERM) and started again in turn while a
/// 5,000-member job runs. A stopping worker hands its chunks back at once, so the other takes
/// them up without waiting for their leases to expire (60 s).
#[tokio::test]
async fn a_rolling_restart_hands_chunks_over_at_once() {
    let mut app = paced_app(400).await;
    app.start_worker().await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("rolling", 5_000);
    let job = app.job(
        "policy.changed",
        changed(
            policy("rx1-rolling", 1, json!({ "TEAMS1": true })),
            &members,
        ),
    );
    app.publish_job(&job).await;
    wait_until(Duration::from_secs(60), "500 users written", || async {
        app.sim.licence_writes() >= 500
    })
    .await;
    let mut handover = Duration::ZERO;
    for _ in 0..2 {
        let stopping = std::time::Instant::now();
        app.stop_worker(0).await;
        let stopped = stopping.elapsed();
        assert!(
            stopped < Duration::from_secs(10),
            "stopping took {stopped:?}"
        );
        // Nothing is left leased by the stopped worker: only the other's chunks hold leases,
        // so every other chunk can be claimed now, not when a lease expires (60 s).
        let leased: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM job_chunks WHERE state = 'running' AND lease_expires_at > now()",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap();
        assert!(
            leased <= i64::from(app.settings.engine.chunk_concurrency.get()),
            "{leased} chunks still leased after the stop"
        );
        handover += stopped;
        app.start_worker().await;
    }
    let done = events
        .next_of("job.completed", job["message_id"].as_str().unwrap())
        .await;
    assert_eq!(done["outcome"], "succeeded", "{}", done["counts"]);
    assert_eq!(count(&done, "changed"), 5_000, "{}", done["counts"]);
    assert!(
        handover < Duration::from_secs(10),
        "the restarts cost {handover:?}"
    );
}

/// A small job never waits behind a large one: slots are reserved for small jobs
/// (`engine.small_job_reserve`), and under a write budget each chunk keeps one batch of writes
/// queued for tokens, so a small job's writes wait behind a few batches, not hundreds.
#[tokio::test]
async fn a_small_job_completes_within_15_s_beside_a_large_one_at_18_writes_a_second() {
    let mut app = paced_app(18).await;
    let mut events = app.event_queue().await;
    let large_members = app.sim.seed_users("large", 3_000);
    let small_members = app.sim.seed_users("small", 20);
    let large = app.job(
        "policy.changed",
        changed(
            policy("rx1-large", 1, json!({ "TEAMS1": true })),
            &large_members,
        ),
    );
    app.publish_job(&large).await;
    // The large job holds every slot it may take.
    wait_until(Duration::from_secs(60), "the large job running", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM job_chunks WHERE state = 'running' AND lease_expires_at > now()",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap_or(0)
            >= i64::from(app.settings.engine.chunk_concurrency.get())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let small = app.job(
        "policy.changed",
        changed(
            policy("rx1-small", 1, json!({ "TEAMS1": true })),
            &small_members,
        ),
    );
    let started = std::time::Instant::now();
    app.publish_job(&small).await;
    let done = events
        .next_of("job.completed", small["message_id"].as_str().unwrap())
        .await;
    let took = started.elapsed();
    assert_eq!(done["outcome"], "succeeded", "{}", done["counts"]);
    assert_eq!(count(&done, "changed"), 20);
    assert!(
        took < Duration::from_secs(15),
        "the small job took {took:?}"
    );
    // The large job is still under way (it needs minutes at this rate): end it.
    ops::cancel(&app.pool, large["message_id"].as_str().unwrap(), &OPERATOR)
        .await
        .unwrap();
}

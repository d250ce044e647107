//! Many replicas, one tenant budget: the write rate holds across worker processes.

use std::time::Duration;

use policy_reconciler::simulator::SimulatorSettings;
use serde_json::json;

use crate::helpers::{AppOptions, spawn_app_with};

const RATE: u64 = 250;
const BURST: u64 = 20;

#[tokio::test]
async fn two_worker_processes_share_the_tenant_write_rate() {
    let mut simulator = SimulatorSettings::for_tests();
    // The tenant allows a little more than the workers' budget, and would say 429 beyond.
    simulator.writes_per_window = 300;
    simulator.write_window_seconds = 1;
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(simulator),
        env: vec![
            ("TENANT__WRITES_PER_SECOND".into(), RATE.to_string()),
            ("TENANT__WRITE_BURST".into(), BURST.to_string()),
            ("TENANT__SHARED_WRITE_BUDGET".into(), "true".into()),
            ("ENGINE__CHUNK_SIZE".into(), "250".into()),
            ("ENGINE__CHUNK_CONCURRENCY".into(), "4".into()),
            // Size alone must not defer the job to the evening in this test.
            ("SCHEDULE__LARGE_JOB_THRESHOLD".into(), "100000".into()),
        ],
        ..AppOptions::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("bulk", 5_000);

    // Two worker processes instead of the in-process one.
    app.stop_workers();
    app.start_worker_process(&[]);
    app.start_worker_process(&[]);

    let job = app.job(
        "policy.changed",
        json!({ "policy": { "id": "rx1-bulk", "name": "RX1 bulk", "ods_code": "RX1", "version": 1,
                            "licence": "ENTERPRISEPACK", "toggles": { "TEAMS1": true } },
                "members": members, "total_members": 5_000 }),
    );
    app.publish_job(&job).await;
    let done = loop {
        let event = events
            .next(Duration::from_secs(180))
            .await
            .expect("the job completes");
        if event["type"] == "job.completed" {
            break event;
        }
    };
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 5_000);

    // Every member correct, each written once.
    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    let stats = app.sim.state.stats();
    assert_eq!(
        stats.writes_applied, 5_000,
        "each changed member written once"
    );

    // Both processes did part of the work (a finished chunk keeps its last owner).
    let (chunks, owners): (i64, i64) = sqlx::query_as(
        "SELECT count(*), count(DISTINCT split_part(lease_owner, '/', 1))
         FROM job_chunks WHERE state = 'done'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(chunks, 20);
    assert_eq!(owners, 2, "both worker processes claimed chunks");

    // The simulator's own per-second counters: never above the rate plus one burst.
    let busiest = stats
        .writes_attempted_per_second
        .values()
        .copied()
        .max()
        .unwrap_or(0);
    println!(
        "busiest second: {busiest} writes (budget {RATE}/s + burst {BURST}); throttled {}",
        stats.throttled
    );
    assert!(busiest <= RATE + BURST, "{busiest} writes in one second");
    assert_eq!(
        stats.throttled, 0,
        "the shared budget kept the workers under the tenant's limit"
    );
}

#[tokio::test]
async fn the_shared_rate_drops_on_429_and_recovers() {
    use policy_reconciler::store::budget::PgWriteBudget;
    use policy_reconciler::tenant::WriteBudget;

    let app = crate::helpers::spawn_app().await;
    let budget = PgWriteBudget::new(
        app.pool.clone(),
        "adaptive-test",
        100.0,
        std::num::NonZeroU32::new(10).unwrap(),
    );
    budget.acquire(1).await;
    let factor = || async {
        sqlx::query_scalar::<_, f64>("SELECT factor FROM write_budget WHERE name = 'adaptive-test'")
            .fetch_one(&app.pool)
            .await
            .unwrap()
    };
    assert_eq!(factor().await, 1.0);

    budget.throttled();
    // Down by 15 % (`store::budget::DECREASE_FACTOR`).
    crate::kit::wait_until(Duration::from_secs(5), "the rate to drop", || async {
        factor().await < 0.9
    })
    .await;
    let dropped = factor().await;
    assert!((0.84..0.9).contains(&dropped), "{dropped}");
    // A second 429 within the same second does not lower it again.
    budget.throttled();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(factor().await > 0.8);

    // Writing on, the factor climbs back (0.1 a second) to the full rate.
    tokio::time::sleep(Duration::from_secs(2)).await;
    budget.acquire(1).await;
    let recovered = factor().await;
    assert!(recovered > 0.99, "{recovered}");
}

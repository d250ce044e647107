//! Fair share between organisations (issue 18): one organisation's large policy does not hold
//! another's ticket, and the claim shares the running chunks between organisations.

use std::time::{Duration, Instant};

use chrono::Utc;
use policy_reconciler::store::work::{self, ClaimLimits, LOW_PRIORITY};
use serde_json::json;
use uuid::Uuid;

use crate::helpers::{AppOptions, spawn_app_with};
use crate::kit::wait_until;

const RATE: u64 = 20;

fn policy(id: &str, ods: &str, members: &[String]) -> serde_json::Value {
    json!({ "policy": { "id": id, "name": id, "ods_code": ods, "version": 1,
                        "licence": "ENTERPRISEPACK", "toggles": { "TEAMS1": true } },
            "members": members, "total_members": members.len() })
}

#[tokio::test]
async fn a_20_member_ticket_completes_within_a_minute_beside_another_organisations_20000_member_job()
 {
    let mut app = spawn_app_with(AppOptions {
        env: vec![
            ("TENANT__WRITES_PER_SECOND".into(), RATE.to_string()),
            ("TENANT__WRITE_BURST".into(), "5".into()),
            ("TENANT__SHARED_WRITE_BUDGET".into(), "true".into()),
            // Size alone must not defer the large job to the evening in this test.
            ("SCHEDULE__LARGE_JOB_THRESHOLD".into(), "100000".into()),
        ],
        ..AppOptions::default()
    })
    .await;
    let mut events = app.event_queue().await;
    // Seats for everyone (the built-in catalogue has 10,000 of each suite).
    let mut skus = policy_reconciler::simulator::default_catalogue();
    for sku in &mut skus {
        sku.prepaid_units.enabled = 50_000;
    }
    app.sim
        .state
        .seed(&policy_reconciler::simulator::Seed {
            skus: Some(skus),
            ..Default::default()
        })
        .unwrap();
    let large_members = app.sim.seed_users("big", 20_000);
    let small_members = app.sim.seed_users("small", 20);

    // Two replicas sharing the one budget.
    app.start_worker().await;

    let large = app.job(
        "policy.changed",
        policy("rx1-everyone", "RX1", &large_members),
    );
    app.publish_job(&large).await;
    // The large job writes at the whole budget before the ticket arrives.
    wait_until(Duration::from_secs(120), "the large job writes", || {
        let sim = &app.sim;
        async move { sim.state.stats().writes_applied >= 2 * RATE }
    })
    .await;
    let running: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_chunks WHERE state = 'running' AND lease_expires_at > now()",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(running >= 2, "the large job holds {running} chunks");

    let before = app.sim.state.stats().writes_applied;
    let small = app.job("policy.changed", policy("rx2-ward", "RX2", &small_members));
    let published = Instant::now();
    app.publish_job(&small).await;
    let small_id = small["message_id"].as_str().unwrap();
    let done = loop {
        let left = Duration::from_secs(60).saturating_sub(published.elapsed());
        let event = events
            .next(left)
            .await
            .unwrap_or_else(|| panic!("no job.completed for the ticket within 60 s"));
        if event["type"] == "job.completed" && event["source_message_id"] == small_id {
            break event;
        }
    };
    let took = published.elapsed();
    println!("the 20-member ticket took {took:?} beside the 20,000-member job");
    assert!(took < Duration::from_secs(60), "{took:?}");
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 20, "{done}");
    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in &small_members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    // The large job's ticket is still open, and it kept writing meanwhile.
    // Each job's share is its organisation's (the policy's ODS code).
    let keys: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT message_id, fair_key FROM jobs ORDER BY received_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        keys,
        vec![
            (
                large["message_id"].as_str().unwrap().to_owned(),
                Some("ods:RX1".into())
            ),
            (small_id.to_owned(), Some("ods:RX2".into())),
        ]
    );
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE message_id = $1")
        .bind(large["message_id"].as_str().unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "running");
    let during = app.sim.state.stats().writes_applied - before - 20;
    assert!(
        during > 0,
        "the large job wrote nothing while the ticket ran"
    );
    let at_ticket = app.sim.state.stats().writes_applied;
    wait_until(Duration::from_secs(30), "the large job goes on", || {
        let sim = &app.sim;
        async move { sim.state.stats().writes_applied >= at_ticket + 2 * RATE }
    })
    .await;
}

/// A job row and its pending chunks, as the planner leaves them.
async fn insert_job(
    pool: &sqlx::PgPool,
    fair_key: &str,
    items: i64,
    chunks: i32,
    priority: i16,
) -> Uuid {
    let id = Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (id, message_id, job_type, state, schedule, accepted_at, total_items,
                           fair_key, priority)
         VALUES ($1, $1::text, 'policy.changed', 'accepted', 'immediate', now(), $2, $3, $4)",
    )
    .bind(id)
    .bind(items)
    .bind(fair_key)
    .bind(priority)
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_chunks (job_id, chunk, state, not_before)
         SELECT $1, g, 'pending', now() - interval '1 minute' FROM generate_series(0, $2 - 1) g",
    )
    .bind(id)
    .bind(chunks)
    .execute(pool)
    .await
    .unwrap();
    id
}

#[tokio::test]
async fn the_claim_gives_the_next_chunk_to_the_organisation_holding_fewest() {
    let mut app = spawn_app_with(AppOptions::default()).await;
    app.stop_workers();
    let pool = &app.pool;
    let limits = ClaimLimits {
        now: Utc::now(),
        window_open: true,
        max_running: 8,
        small_job_reserve: 2,
        small_job_items: 250,
        only_small: false,
    };
    let claim = || async {
        work::claim_chunk(pool, "test/claimer", 60, limits)
            .await
            .unwrap()
            .map(|c| c.job_id)
    };

    let sweep = insert_job(pool, "job:sweep", 100, 1, LOW_PRIORITY).await;
    let rx1_large = insert_job(pool, "ods:RX1", 20_000, 80, 0).await;
    let rx1_mid = insert_job(pool, "ods:RX1", 1_000, 4, 0).await;
    let rx2_large = insert_job(pool, "ods:RX2", 5_000, 20, 0).await;
    let rx3_ticket = insert_job(pool, "ods:RX3", 20, 1, 0).await;

    // The ticket first, whoever holds what.
    assert_eq!(claim().await, Some(rx3_ticket));
    // RX1 and RX2 hold none: the smaller job (RX1's 1,000) first, then RX2 (holding none) ...
    assert_eq!(claim().await, Some(rx1_mid));
    assert_eq!(claim().await, Some(rx2_large));
    // ... and they alternate while both have work: RX1 takes its smaller job first.
    assert_eq!(claim().await, Some(rx1_mid));
    assert_eq!(claim().await, Some(rx2_large));
    // Six chunks run: the last two slots are kept for small jobs (the sweep is not one).
    assert_eq!(claim().await, Some(rx1_mid));
    assert_eq!(claim().await, None);
    // A chunk of RX2 ends: RX2 (1 running) takes the slot, not RX1 (3).
    sqlx::query(
        "UPDATE job_chunks SET state = 'done', lease_expires_at = NULL
         WHERE job_id = $1 AND chunk = 0",
    )
    .bind(rx2_large)
    .execute(pool)
    .await
    .unwrap();
    assert_eq!(claim().await, Some(rx2_large));
    // Every running chunk ends: normal work still goes before the sweep.
    sqlx::query("UPDATE job_chunks SET state = 'done' WHERE state = 'running'")
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(claim().await, Some(rx1_mid));
    // Within RX1, its larger job waited for the smaller one.
    let large_claims: i64 =
        sqlx::query_scalar("SELECT coalesce(sum(claims), 0) FROM job_chunks WHERE job_id = $1")
            .bind(rx1_large)
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(large_claims, 0);
    // Nothing else left: the sweep's turn.
    sqlx::query("UPDATE job_chunks SET state = 'done' WHERE job_id <> $1")
        .bind(sweep)
        .execute(pool)
        .await
        .unwrap();
    assert_eq!(claim().await, Some(sweep));
}

#[tokio::test]
async fn the_24_hour_forecast_counts_the_share_of_the_budget_each_job_gets() {
    use policy_reconciler::engine::clock::ManualClock;
    use policy_reconciler::engine::{Engine, Kinds};
    use policy_reconciler::tenant::{GraphClient, Tenant};
    use std::sync::Arc;

    let mut app = spawn_app_with(AppOptions::default()).await;
    app.stop_workers();
    // A Tuesday, 10:00 in London, after the database's now (tests/kit/time.rs).
    let now = crate::kit::time::next(chrono::Weekday::Tue).await.at(10, 0);
    let insert = |received: chrono::DateTime<Utc>, fair_key: &'static str, items: i32| {
        let pool = app.pool.clone();
        async move {
            let id = Uuid::now_v7();
            sqlx::query(
                "INSERT INTO jobs (id, message_id, job_type, state, received_at, schedule,
                                   accepted_at, fair_key)
                 VALUES ($1, $1::text, 'policy.changed', 'accepted', $2, 'immediate', $2, $3)",
            )
            .bind(id)
            .bind(received)
            .bind(fair_key)
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
            id
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

    // RX1's 40,000 users received 23 hours ago: 2,000 s at the whole budget, of 3,600 left.
    insert(now - chrono::Duration::hours(23), "ods:RX1", 40_000).await;
    assert_eq!(engine.jobs_at_risk().await.unwrap(), 0);
    // A larger job of RX1 itself waits for the smaller one: still on time.
    let other = insert(now, "ods:RX1", 100_000).await;
    assert_eq!(engine.jobs_at_risk().await.unwrap(), 0);
    // Of another organisation, it takes half the budget: 4,000 s for the first, too late.
    sqlx::query("UPDATE jobs SET fair_key = 'ods:RX2' WHERE id = $1")
        .bind(other)
        .execute(&app.pool)
        .await
        .unwrap();
    assert_eq!(engine.jobs_at_risk().await.unwrap(), 1);
}

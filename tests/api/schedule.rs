//! Large jobs wait for off-peak windows; small ones start at once. The scheduler's clock is
//! under the test's control: no real waiting.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use policy_reconciler::engine::clock::ManualClock;
use serde_json::{Value, json};

use crate::helpers::{AppOptions, EventQueue, spawn_app_with};

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn next_of(events: &mut EventQueue, event_type: &str, message_id: &Value) -> Value {
    loop {
        let event = events
            .next(Duration::from_secs(120))
            .await
            .unwrap_or_else(|| panic!("no {event_type} for {message_id}"));
        if event["type"] == event_type && event["source_message_id"] == *message_id {
            return event;
        }
    }
}

#[tokio::test]
async fn a_large_job_accepted_at_ten_waits_for_seven_while_a_small_one_runs_at_once() {
    // Tuesday 24 November 2026, 10:00 in London (GMT).
    let clock = Arc::new(ManualClock::new(at("2026-11-24T10:00:00Z")));
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
        at("2026-11-24T19:00:00Z")
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
    clock.set(at("2026-11-24T18:59:00Z"));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(app.sim.licence_writes(), 999);
    clock.set(at("2026-11-24T19:00:00Z"));
    let done = next_of(&mut large_events, "job.completed", &large["message_id"]).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1_500);
    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in large_members.iter().step_by(97) {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    assert_eq!(app.sim.licence_writes(), 2_499);
}

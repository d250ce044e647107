//! The reconciler against a tenant as it really is (issue 15, `tenant.md` "The tenant as it
//! really is"): the simulator's `realistic` profile, with replication lag (reads that return
//! the state from before a write, objects missing for a while), writes applied and then
//! answered 5xx, and Graph's throttling. These run under that profile whatever
//! `RECONCILER_TEST_TENANT` says.
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use policy_reconciler::engine::clock::ManualClock;
use policy_reconciler::simulator::SimulatorSettings;
use serde_json::json;

use crate::helpers::{AppOptions, spawn_app_with};

/// A Saturday, 10:00 in London: inside the default off-peak windows.
async fn saturday() -> Arc<ManualClock> {
    crate::kit::time::clock_on(chrono::Weekday::Sat, 10, 0)
        .await
        .0
}

#[tokio::test]
async fn a_2000_member_policy_converges_in_a_lagging_tenant_writing_each_member_once() {
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(SimulatorSettings::realistic()),
        clock: Some(saturday().await),
        env: vec![("ENGINE__VERIFY_WITHIN_MS".into(), "20000".into())],
        ..AppOptions::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("lag", 2000);
    let job = app.job(
        "policy.changed",
        json!({ "policy": { "id": "rx1-lag", "name": "lag", "ods_code": "RX1", "version": 1,
                            "licence": "ENTERPRISEPACK", "toggles": { "TEAMS1": true } },
                "members": members, "total_members": members.len() }),
    );
    app.publish_job(&job).await;
    let done = events
        .next_of("job.completed", job["message_id"].as_str().unwrap())
        .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 2000, "{done}");

    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    // Each member's licence was applied once: no write was sent again because a read-back
    // came from a replica that had not caught up. (A write answered 5xx but not applied is
    // sent again; one applied and then answered 5xx is found by re-reading, not re-sent.)
    let stats = app.sim.state.stats();
    let mut applied: HashMap<&str, u32> = HashMap::new();
    for w in stats
        .recent_writes
        .iter()
        .filter(|w| w.route == "assign_license")
    {
        if w.applied {
            *applied.entry(w.targets[0].as_str()).or_default() += 1;
        }
    }
    assert_eq!(applied.len(), 2000);
    let twice: Vec<_> = applied.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "written more than once: {twice:?}");
    // Bulk work in the off-peak window lets Graph throttle it first.
    assert_eq!(stats.writes_with_priority("normal"), 0);
    assert!(
        stats.writes_with_priority("low") >= 2000,
        "{:?}",
        stats.writes_by_priority
    );
}

#[tokio::test]
async fn a_role_given_in_a_group_created_moments_earlier_lands_in_exactly_one_group() {
    // Every read within 4 s of a write comes from a replica without it: the group the first
    // assign creates is invisible to the second assign's search by display name.
    let mut sim = SimulatorSettings::realistic();
    sim.replication_lag_ms = 4000;
    sim.long_lag_probability = 0.0;
    sim.stale_read_probability = 1.0;
    sim.fault_rate = 0.0;
    sim.applied_then_fault_rate = 0.0;
    sim.applied_then_dropped_rate = 0.0;
    sim.dropped_connection_rate = 0.0;
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(sim),
        env: vec![("ENGINE__VERIFY_WITHIN_MS".into(), "20000".into())],
        ..AppOptions::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let users = app.sim.seed_users("phone", 2);
    let mut jobs = Vec::new();
    for user in &users {
        let job = app.job(
            "admin_role.assign",
            json!({ "user": user, "ods_code": "RX1", "role": "phone_system_local_admin" }),
        );
        app.publish_job(&job).await;
        jobs.push(job);
    }
    let mut seen = Vec::new();
    for job in &jobs {
        let done = events
            .completion_keeping(&job["message_id"], &mut seen, Duration::from_secs(120))
            .await;
        assert_eq!(done["outcome"], "succeeded", "{done}");
    }
    let groups = app.sim.state.groups_named("PhoneSystem-Local-RX1");
    assert_eq!(groups.len(), 1, "{groups:?}");
    for user in &users {
        assert_eq!(
            app.sim.state.groups_of(user).unwrap(),
            vec!["PhoneSystem-Local-RX1".to_owned()],
            "{user}"
        );
    }
}

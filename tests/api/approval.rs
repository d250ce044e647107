//! Guard rails on large changes and the record of operator actions (contracts 1.1 and 1.2) end
//! to end: a job over the approval thresholds (a `policy.changed`, a `policy.members_added`, a
//! revert) waits, publishes `job.approval_required`
//! and writes nothing (no tenant write, no desired state) until `jobs approve`; `jobs cancel`
//! ends it; waiting too long ends it `rejected` with `awaiting_approval_expired`.

use std::time::Duration;

use policy_reconciler::ops::{self, Operator, OpsError};
use serde_json::{Value, json};

use crate::helpers::{AppOptions, OPERATOR, TestApp, spawn_app_with};
use crate::kit::broker::EventQueue;

const E3_ON: &[&str] = &["EXCHANGE_S_ENTERPRISE", "TEAMS1"];

fn changed(id: &str, version: i64, toggles: Value, members: &[String]) -> Value {
    json!({ "policy": { "id": id, "name": format!("{id} users"), "ods_code": "RX1",
                        "version": version, "licence": "ENTERPRISEPACK", "toggles": toggles },
            "members": members, "total_members": members.len() })
}

async fn app_with(env: &[(&str, &str)]) -> TestApp {
    let mut env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    // A 2,000-member job is not left for the off-peak windows here.
    env.push(("SCHEDULE__LARGE_JOB_THRESHOLD".into(), "100000".into()));
    spawn_app_with(AppOptions {
        env,
        ..AppOptions::default()
    })
    .await
}

/// Store policy `id` (version 1) with `members` and reconcile them.
async fn seed_policy(app: &TestApp, events: &mut EventQueue, id: &str, members: &[String]) {
    let job = app.job(
        "policy.changed",
        changed(
            id,
            1,
            json!({ "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true }),
            members,
        ),
    );
    app.publish_job(&job).await;
    let done = events
        .next_of("job.completed", job["message_id"].as_str().unwrap())
        .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], members.len() as u64);
}

async fn stored_members(app: &TestApp, id: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM policy_members WHERE policy_id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

async fn stored_version(app: &TestApp, id: &str) -> i64 {
    sqlx::query_scalar("SELECT version FROM policies WHERE id = $1")
        .bind(id)
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn dropping_1800_of_2000_members_waits_for_approval_and_runs_once_approved() {
    let mut app = app_with(&[]).await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("appr", 2000);
    seed_policy(&app, &mut events, "rx1-approval", &members).await;
    app.sim.state.reset_stats();

    // The new list keeps 200 members (with one more plan enabled) and drops 1,800.
    let kept = &members[..200];
    let toggles = json!({ "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true, "SWAY": true });
    let job = app.job("policy.changed", changed("rx1-approval", 2, toggles, kept));
    let message_id = job["message_id"].as_str().unwrap().to_owned();
    app.publish_job(&job).await;
    let required = events.next_of("job.approval_required", &message_id).await;
    assert_eq!(
        required["effect"],
        // The dropped members keep their licence: they only leave the policy (contract 1.2).
        json!({ "licence_removed": 0, "licence_changed": 0, "toggles_changed": 200,
                "unchanged": 0, "licence_added": 0, "members_leaving": 1800 }),
        "{required}"
    );
    assert_eq!(required["threshold"], json!({ "users": 500, "share": 0.2 }));
    assert_eq!(required["job_type"], "policy.changed");
    assert_eq!(required["subject"]["policy_id"], "rx1-approval");
    assert_eq!(required["subject"]["version"], 2);
    assert_eq!(required["ticket"], job["ticket"]);
    assert_eq!(required["schema_version"], 1);

    // Waiting: nothing written to the tenant, no desired state changed.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.sim.state.stats().writes_attempted, 0);
    assert_eq!(stored_members(&app, "rx1-approval").await, 2000);
    assert_eq!(stored_version(&app, "rx1-approval").await, 1);
    let shown = ops::show(&app.pool, &message_id).await.unwrap();
    assert_eq!(shown.state.as_str(), "received");
    assert_eq!(
        shown.awaiting_approval.as_ref().unwrap()["effect"]["members_leaving"],
        1800
    );
    assert!(ops::render_detail(&shown).contains("awaiting approval"));

    // Approval needs a name and a reason.
    let anonymous = Operator {
        by: " ",
        reason: "looks fine",
    };
    assert!(matches!(
        ops::approve(&app.pool, &message_id, &anonymous).await,
        Err(OpsError::Invalid(_))
    ));
    let approver = Operator {
        by: "jane.ops",
        reason: "INC0012345: the practice split, confirmed by phone",
    };
    let report = ops::approve(&app.pool, &message_id, &approver)
        .await
        .unwrap();
    assert_eq!(report.action, "approved");

    let done = events.next_of("job.completed", &message_id).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["total"], 200);
    assert_eq!(done["counts"]["changed"], 200);
    let actions = done["subject"]["operator_actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{done}");
    assert_eq!(actions[0]["action"], "approve");
    assert_eq!(actions[0]["by"], "jane.ops");
    assert_eq!(actions[0]["reason"], approver.reason);
    assert!(actions[0]["at"].is_string());
    // The tenant: the kept members hold the new plans; the dropped ones keep their licence
    // (a user removed from a member list keeps it until another policy claims them).
    let new = app.sim.expected_licence(
        "ENTERPRISEPACK",
        &["EXCHANGE_S_ENTERPRISE", "TEAMS1", "SWAY"],
    );
    let old = app.sim.expected_licence("ENTERPRISEPACK", E3_ON);
    for upn in kept {
        assert_eq!(app.sim.licences(upn), vec![new.clone()], "{upn}");
    }
    for upn in &members[200..] {
        assert_eq!(app.sim.licences(upn), vec![old.clone()], "{upn}");
    }
    assert_eq!(app.sim.state.stats().writes_applied, 200);
    assert_eq!(stored_members(&app, "rx1-approval").await, 200);
    assert_eq!(stored_version(&app, "rx1-approval").await, 2);
    let shown = ops::show(&app.pool, &message_id).await.unwrap();
    assert!(shown.awaiting_approval.is_none());
    assert_eq!(shown.operator_actions.len(), 1);
    assert!(ops::render_detail(&shown).contains("jane.ops"));
}

#[tokio::test]
async fn an_approval_that_never_comes_ends_the_job_rejected() {
    let mut app = app_with(&[
        ("ENGINE__APPROVAL__USERS", "5"),
        ("ENGINE__APPROVAL__WAIT_SECONDS", "1"),
    ])
    .await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("exp", 10);
    seed_policy(&app, &mut events, "rx1-expiry", &members).await;
    app.sim.state.reset_stats();

    // An accidental empty member list.
    let job = app.job(
        "policy.changed",
        changed("rx1-expiry", 2, json!({ "TEAMS1": true }), &[]),
    );
    let message_id = job["message_id"].as_str().unwrap().to_owned();
    app.publish_job(&job).await;
    let required = events.next_of("job.approval_required", &message_id).await;
    assert_eq!(required["effect"]["members_leaving"], 10, "{required}");
    assert_eq!(required["effect"]["licence_removed"], 0, "{required}");
    let done = events.next_of("job.completed", &message_id).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(
        done["failures"][0]["code"], "awaiting_approval_expired",
        "{done}"
    );
    assert_eq!(app.sim.state.stats().writes_attempted, 0);
    assert_eq!(stored_members(&app, "rx1-expiry").await, 10);
    assert_eq!(stored_version(&app, "rx1-expiry").await, 1);
    // Ended: it can no longer be approved.
    assert!(matches!(
        ops::approve(&app.pool, &message_id, &OPERATOR).await,
        Err(OpsError::AlreadyCompleted(_))
    ));
}

#[tokio::test]
async fn a_job_awaiting_approval_is_cancelled_and_a_dry_run_never_waits() {
    let mut app = app_with(&[("ENGINE__APPROVAL__USERS", "5")]).await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("can", 10);
    seed_policy(&app, &mut events, "rx1-cancel", &members).await;
    app.sim.state.reset_stats();

    // A dry run of the same accident reports and completes.
    let mut dry = app.job(
        "policy.changed",
        changed("rx1-cancel", 2, json!({ "TEAMS1": true }), &[]),
    );
    dry["dry_run"] = json!(true);
    app.publish_job(&dry).await;
    let done = events
        .next_of("job.completed", dry["message_id"].as_str().unwrap())
        .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");

    // Keeps 2 of the 10 members: 8 lose their licence, over the threshold of 5.
    let job = app.job(
        "policy.changed",
        changed("rx1-cancel", 2, json!({ "TEAMS1": true }), &members[..2]),
    );
    let message_id = job["message_id"].as_str().unwrap().to_owned();
    app.publish_job(&job).await;
    events.next_of("job.approval_required", &message_id).await;
    // `jobs list` flags it.
    let (listed, more) = ops::search(&app.pool, &Default::default(), 1, 10)
        .await
        .unwrap();
    let waiting = listed.iter().find(|j| j.message_id == message_id).unwrap();
    assert!(waiting.awaiting_approval);
    let table = ops::render_rows(&listed, more);
    assert!(table.contains("awaiting-approval"), "{table}");
    // Operator actions that cannot go round the approval say so.
    for report in [
        ops::expedite(&app.pool, &message_id, &OPERATOR)
            .await
            .unwrap(),
        ops::resume(&app.pool, &message_id, &OPERATOR)
            .await
            .unwrap(),
    ] {
        assert!(report.awaiting_approval, "{report:?}");
        let printed = ops::render_control(&report);
        assert!(
            printed.contains("still waits for approval") && printed.contains("jobs approve"),
            "{printed}"
        );
    }
    assert_eq!(app.sim.state.stats().writes_attempted, 0);
    // A job not awaiting approval cannot be approved.
    assert!(matches!(
        ops::approve(&app.pool, dry["message_id"].as_str().unwrap(), &OPERATOR).await,
        Err(OpsError::AlreadyCompleted(_))
    ));
    let canceller = Operator {
        by: "sam.ops",
        reason: "the member list was sent empty by mistake",
    };
    let report = ops::cancel(&app.pool, &message_id, &canceller)
        .await
        .unwrap();
    assert_eq!(report.items_skipped, 2);
    let done = events.next_of("job.completed", &message_id).await;
    // Its items (the two listed members) are skipped as cancelled.
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["total"], 2, "{done}");
    assert_eq!(done["counts"]["skipped"], 2, "{done}");
    let failures = done["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 2, "{done}");
    for (failure, member) in failures.iter().zip(&members[..2]) {
        assert_eq!(failure["item"], member.to_lowercase().as_str(), "{done}");
        assert_eq!(failure["code"], "cancelled", "{done}");
    }
    assert_eq!(
        done["subject"]["ended_early"], "cancelled by an operator",
        "{done}"
    );
    let actions = done["subject"]["operator_actions"].as_array().unwrap();
    let names: Vec<&str> = actions
        .iter()
        .filter_map(|a| a["action"].as_str())
        .collect();
    assert_eq!(names, ["expedite", "resume", "cancel"], "{done}");
    assert_eq!(actions[2]["by"], "sam.ops");
    assert_eq!(actions[2]["reason"], canceller.reason);
    assert_eq!(app.sim.state.stats().writes_attempted, 0);
    assert_eq!(stored_members(&app, "rx1-cancel").await, 10);
    let recorded: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_operator_actions a JOIN jobs j ON j.id = a.job_id
         WHERE j.message_id = $1 AND a.action = 'cancel' AND a.by_whom = 'sam.ops'",
    )
    .bind(&message_id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(recorded, 1);

    // Without a member list, the items are the policy's stored members: a change of licence
    // for all 10 waits, and a cancel skips all 10.
    let relicensed = app.job(
        "policy.changed",
        json!({ "policy": { "id": "rx1-cancel", "name": "rx1-cancel users", "ods_code": "RX1",
                            "version": 3, "licence": "STANDARDPACK", "toggles": {} } }),
    );
    let relicensed_id = relicensed["message_id"].as_str().unwrap().to_owned();
    app.publish_job(&relicensed).await;
    events
        .next_of("job.approval_required", &relicensed_id)
        .await;
    let report = ops::cancel(&app.pool, &relicensed_id, &canceller)
        .await
        .unwrap();
    assert_eq!(report.items_skipped, 10);
    let done = events.next_of("job.completed", &relicensed_id).await;
    assert_eq!(done["counts"]["skipped"], 10, "{done}");
    assert_eq!(done["counts"]["total"], 10, "{done}");
    assert_eq!(app.sim.state.stats().writes_attempted, 0);
}

/// A `policy.members_added` that moves 60 users from a STANDARDPACK policy into a 40-member
/// ENTERPRISEPACK one changes the licence of 60 % of the policy: it waits like a
/// `policy.changed` (contract 1.2), naming the 60 as `licence_changed`, and writes nothing
/// until approved.
#[tokio::test]
async fn members_added_that_change_the_licence_of_most_of_a_policy_wait_for_approval() {
    let mut app = app_with(&[]).await;
    let mut events = app.event_queue().await;
    let users = app.sim.seed_users("added", 100);
    seed_policy(&app, &mut events, "rx1-e3", &users[..40]).await;
    let standard = app.job(
        "policy.changed",
        json!({ "policy": { "id": "rx1-e1", "name": "RX1 E1", "ods_code": "RX1", "version": 1,
                            "licence": "STANDARDPACK", "toggles": { "SWAY": true } },
                "members": &users[40..], "total_members": 60 }),
    );
    app.publish_job(&standard).await;
    let done = events
        .next_of("job.completed", standard["message_id"].as_str().unwrap())
        .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    app.sim.state.reset_stats();

    let added = app.job(
        "policy.members_added",
        json!({ "policy_id": "rx1-e3", "members": &users[40..], "total_members": 60 }),
    );
    let message_id = added["message_id"].as_str().unwrap().to_owned();
    app.publish_job(&added).await;
    let required = events.next_of("job.approval_required", &message_id).await;
    assert_eq!(required["job_type"], "policy.members_added", "{required}");
    assert_eq!(
        required["effect"],
        json!({ "licence_removed": 0, "licence_changed": 60, "toggles_changed": 0,
                "unchanged": 0, "licence_added": 0, "members_leaving": 0 }),
        "{required}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.sim.state.stats().writes_attempted, 0);
    assert_eq!(stored_members(&app, "rx1-e3").await, 40);

    ops::approve(&app.pool, &message_id, &OPERATOR)
        .await
        .unwrap();
    let done = events.next_of("job.completed", &message_id).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 60, "{done}");
    let e3 = app.sim.expected_licence("ENTERPRISEPACK", E3_ON);
    for upn in &users {
        assert_eq!(app.sim.licences(upn), vec![e3.clone()], "{upn}");
    }
    assert_eq!(stored_members(&app, "rx1-e3").await, 100);
}

/// A revert is judged like any job (contract 1.2): reverting a policy job that gave 30 users
/// with no licence their first takes it back from them (`licence_removed`), so over the
/// thresholds it waits, and writes nothing until approved.
#[tokio::test]
async fn a_revert_that_takes_licences_away_waits_for_approval() {
    let mut app = app_with(&[("ENGINE__APPROVAL__USERS", "20")]).await;
    let mut events = app.event_queue().await;
    let users = app.sim.seed_users("reverted", 30);
    let job = app.job(
        "policy.changed",
        changed(
            "rx1-new",
            1,
            json!({ "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true }),
            &users,
        ),
    );
    app.publish_job(&job).await;
    let done = events
        .next_of("job.completed", job["message_id"].as_str().unwrap())
        .await;
    assert_eq!(done["counts"]["changed"], 30, "{done}");
    app.sim.state.reset_stats();

    let revert = ops::revert(&app.pool, job["message_id"].as_str().unwrap(), &OPERATOR)
        .await
        .unwrap();
    let required = events
        .next_of("job.approval_required", &revert.message_id)
        .await;
    assert_eq!(required["effect"]["licence_removed"], 30, "{required}");
    assert_eq!(required["effect"]["licence_changed"], 0, "{required}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.sim.state.stats().writes_attempted, 0);
    for upn in &users {
        assert_eq!(
            app.sim.licences(upn).len(),
            1,
            "{upn} keeps the licence while it waits"
        );
    }

    ops::approve(&app.pool, &revert.message_id, &OPERATOR)
        .await
        .unwrap();
    let done = events.next_of("job.completed", &revert.message_id).await;
    assert_eq!(done["counts"]["changed"], 30, "{done}");
    for upn in &users {
        assert!(app.sim.licences(upn).is_empty(), "{upn}");
    }
}

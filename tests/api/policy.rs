//! Policy reconciliation end to end: the portal's messages through RabbitMQ, the worker's
//! database, and the tenant simulator's state and counters.

use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{AppOptions, TestApp, spawn_app, spawn_app_with};
use crate::kit::broker::EventQueue;
use crate::kit::wait_until;

const E3_ON: &[&str] = &["EXCHANGE_S_ENTERPRISE", "TEAMS1"];

fn policy(id: &str, version: i64, licence: &str, toggles: Value) -> Value {
    json!({ "id": id, "name": format!("{id} users"), "ods_code": "RX1", "version": version,
            "licence": licence, "toggles": toggles })
}

fn changed(policy: Value, members: &[String]) -> Value {
    json!({ "policy": policy, "members": members, "total_members": members.len() })
}

/// Wait for the `job.completed` of `message_id`, keeping every event seen in `seen`.
async fn completion(events: &mut EventQueue, message_id: &Value, seen: &mut Vec<Value>) -> Value {
    events
        .completion_keeping(message_id, seen, Duration::from_secs(90))
        .await
}

fn completions_of(seen: &[Value], message_id: &Value) -> usize {
    seen.iter()
        .filter(|e| e["type"] == "job.completed" && e["source_message_id"] == *message_id)
        .count()
}

async fn publish(app: &TestApp, job_type: &str, payload: Value) -> Value {
    let job = app.job(job_type, payload);
    app.publish_job(&job).await;
    job
}

#[tokio::test]
async fn a_300_member_policy_is_reconciled_idempotently() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("staff", 300);
    let toggles = json!({ "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true, "SWAY": false });

    // First change: every member gets the licence with exactly the implied disabled plans.
    let first = publish(
        &app,
        "policy.changed",
        changed(
            policy("rx1-standard", 8, "ENTERPRISEPACK", toggles.clone()),
            &members,
        ),
    )
    .await;
    let done = completion(&mut events, &first["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["total"], 300);
    assert_eq!(done["counts"]["changed"], 300);
    assert_eq!(done["counts"]["failed"], 0);
    assert_eq!(done["ticket"], first["ticket"]);
    assert_eq!(done["subject"]["policy_id"], "rx1-standard");
    assert_eq!(done["subject"]["version"], 8);
    assert_eq!(done["dry_run"], false);
    let accepted: Vec<&Value> = seen
        .iter()
        .filter(|e| e["type"] == "job.accepted" && e["source_message_id"] == first["message_id"])
        .collect();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0]["total"], 300);
    assert_eq!(accepted[0]["schedule"], "immediate");
    let expected = app.sim.expected_licence("ENTERPRISEPACK", E3_ON);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    assert_eq!(app.sim.licence_writes_applied(), 300);
    let writes_after_first = app.sim.licence_writes();

    // The same message again: acknowledged, no second completion.
    app.publish_job(&first).await;
    // The same change under a new message_id: nothing written, all already compliant.
    let again = publish(
        &app,
        "policy.changed",
        changed(
            policy("rx1-standard", 8, "ENTERPRISEPACK", toggles),
            &members,
        ),
    )
    .await;
    let done = completion(&mut events, &again["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "succeeded");
    assert_eq!(done["counts"]["changed"], 0);
    assert_eq!(done["counts"]["already_compliant"], 300);
    assert_eq!(
        app.sim.licence_writes(),
        writes_after_first,
        "a compliant re-run wrote"
    );
    assert_eq!(completions_of(&seen, &first["message_id"]), 1);

    // One toggle changed: every member written exactly once.
    app.sim.state.reset_stats();
    let toggles = json!({ "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true, "SWAY": true });
    let third = publish(
        &app,
        "policy.changed",
        json!({ "policy": policy("rx1-standard", 9, "ENTERPRISEPACK", toggles) }),
    )
    .await;
    let done = completion(&mut events, &third["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 300);
    let stats = app.sim.state.stats();
    if !crate::kit::realistic_tenant() {
        assert_eq!(stats.total("assign_license"), 300);
    }
    // Applied (a realistic tenant answers some writes 5xx without applying them: those are
    // sent again once a read shows they did not land).
    let mut targets: Vec<&String> = stats
        .recent_writes
        .iter()
        .filter(|w| w.route == "assign_license" && w.applied)
        .flat_map(|w| &w.targets)
        .collect();
    assert_eq!(targets.len(), 300, "each member written once");
    targets.sort();
    targets.dedup();
    assert_eq!(targets.len(), 300, "each member written once");
    let expected = app.sim.expected_licence(
        "ENTERPRISEPACK",
        &["EXCHANGE_S_ENTERPRISE", "TEAMS1", "SWAY"],
    );
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }

    // Still exactly one completion for the first message after everything else.
    seen.extend(events.drain(Duration::from_millis(500)).await);
    assert_eq!(completions_of(&seen, &first["message_id"]), 1);
    let stored: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT state, outcome FROM jobs ORDER BY received_at")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(stored.len(), 3);
    assert!(
        stored
            .iter()
            .all(|(s, o)| s == "completed" && o.as_deref() == Some("succeeded"))
    );
}

#[tokio::test]
async fn moving_members_to_a_policy_with_another_licence_swaps_in_one_call() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("mover", 10);

    let e3 = publish(
        &app,
        "policy.changed",
        changed(
            policy("rx1-e3", 1, "ENTERPRISEPACK", json!({ "TEAMS1": true })),
            &members,
        ),
    )
    .await;
    assert_eq!(
        completion(&mut events, &e3["message_id"], &mut seen).await["outcome"],
        "succeeded"
    );
    let e1 = publish(
        &app,
        "policy.changed",
        changed(policy("rx1-e1", 1, "STANDARDPACK", json!({})), &[]),
    )
    .await;
    assert_eq!(
        completion(&mut events, &e1["message_id"], &mut seen).await["outcome"],
        "succeeded"
    );

    app.sim.state.reset_stats();
    let moved: Vec<String> = members[..4].to_vec();
    let add = publish(
        &app,
        "policy.members_added",
        json!({ "policy_id": "rx1-e1", "members": moved, "total_members": 4 }),
    )
    .await;
    let done = completion(&mut events, &add["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 4);

    // One assignLicense per moved user, each adding E1 and removing E3 at once.
    let stats = app.sim.state.stats();
    if !crate::kit::realistic_tenant() {
        assert_eq!(stats.total("assign_license"), 4);
        assert_eq!(stats.count("assign_license", 200), 4);
    }
    let applied: Vec<_> = stats
        .recent_writes
        .iter()
        .filter(|w| w.route == "assign_license" && w.applied)
        .collect();
    assert_eq!(applied.len(), 4, "{applied:?}");
    for w in applied {
        let body = w.body.as_ref().unwrap();
        assert_eq!(body["addLicenses"].as_array().unwrap().len(), 1, "{body}");
        assert_eq!(
            body["removeLicenses"].as_array().unwrap().len(),
            1,
            "{body}"
        );
    }
    let e1_licence = app.sim.expected_licence("STANDARDPACK", &[]);
    let e3_licence = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in &members[..4] {
        assert_eq!(app.sim.licences(upn), vec![e1_licence.clone()], "{upn}");
    }
    for upn in &members[4..] {
        assert_eq!(app.sim.licences(upn), vec![e3_licence.clone()], "{upn}");
    }
    let owners: Vec<(String, String)> =
        sqlx::query_as("SELECT email, policy_id FROM policy_members ORDER BY email")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(owners.iter().filter(|(_, p)| p == "rx1-e1").count(), 4);
    assert_eq!(owners.iter().filter(|(_, p)| p == "rx1-e3").count(), 6);
}

#[tokio::test]
async fn users_the_tenant_refuses_fail_alone() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let mut members = app.sim.seed_users("ok", 5);
    app.sim.seed(json!({ "users": [{ "id": uuid::Uuid::new_v4(), "userPrincipalName": "nowhere@nhs.net" }] }));
    members.push("nowhere@nhs.net".into());
    members.push("ghost@nhs.net".into());

    let job = publish(
        &app,
        "policy.changed",
        changed(
            policy("rx1-mixed", 1, "ENTERPRISEPACK", json!({ "TEAMS1": true })),
            &members,
        ),
    )
    .await;
    let done = completion(&mut events, &job["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "partially_succeeded", "{done}");
    assert_eq!(done["counts"]["total"], 7);
    assert_eq!(done["counts"]["changed"], 5);
    assert_eq!(done["counts"]["failed"], 2);
    let mut failures: Vec<(String, String)> = done["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["item"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    failures.sort();
    assert_eq!(
        failures,
        vec![
            ("ghost@nhs.net".to_owned(), "user_not_found".to_owned()),
            (
                "nowhere@nhs.net".to_owned(),
                "usage_location_missing".to_owned()
            ),
        ]
    );
    assert_eq!(done["failures_truncated"], false);
    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in &members[..5] {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()]);
    }
    assert!(app.sim.licences("nowhere@nhs.net").is_empty());
}

#[tokio::test]
async fn an_invalid_job_is_rejected_and_writes_nothing() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("inv", 3);
    let mut listed = members.clone();
    listed.push("Inv0@NHS.net".into()); // a duplicate, differently cased
    listed.push("not an email".into());
    let payload = json!({
        "policy": policy("rx1-bad", 1, "ENTERPRISEPACK", json!({ "TEAMS1": true, "NOT_A_PLAN": true })),
        "members": listed,
        "total_members": 99
    });
    let job = publish(&app, "policy.changed", payload).await;
    let done = completion(&mut events, &job["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    let mut codes: Vec<&str> = done["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    codes.sort();
    assert_eq!(
        codes,
        vec![
            "duplicate_email",
            "invalid_email",
            "member_count_mismatch",
            "unknown_service_plan"
        ]
    );
    let unknown_licence = publish(
        &app,
        "policy.changed",
        changed(policy("rx1-bad2", 1, "NOSUCHSKU", json!({})), &members),
    )
    .await;
    let done = completion(&mut events, &unknown_licence["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "rejected");
    assert_eq!(done["failures"][0]["code"], "unknown_licence");

    assert_eq!(app.sim.state.stats().writes_attempted, 0);
    let policies: i64 = sqlx::query_scalar("SELECT count(*) FROM policies")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(policies, 0, "a rejected job stores no desired state");
    assert!(!seen.iter().any(|e| e["type"] == "job.accepted"));
}

#[tokio::test]
async fn a_dry_run_reports_and_writes_nothing() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("dry", 20);
    let mut job = app.job(
        "policy.changed",
        changed(
            policy("rx1-dry", 1, "ENTERPRISEPACK", json!({ "TEAMS1": true })),
            &members,
        ),
    );
    job["dry_run"] = json!(true);
    app.publish_job(&job).await;
    let done = completion(&mut events, &job["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["dry_run"], true);
    assert_eq!(
        done["counts"]["changed"], 20,
        "reports what it would change"
    );
    assert_eq!(app.sim.state.stats().writes_attempted, 0);
    for upn in &members {
        assert!(app.sim.licences(upn).is_empty());
    }
    let policies: i64 = sqlx::query_scalar("SELECT count(*) FROM policies")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(policies, 0, "a dry run stores no desired state");
}

#[tokio::test]
async fn members_added_before_its_policy_waits_for_it() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("early", 3);
    let add = publish(
        &app,
        "policy.members_added",
        json!({ "policy_id": "rx1-late", "members": members, "total_members": 3 }),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let def = publish(
        &app,
        "policy.changed",
        json!({ "policy": policy("rx1-late", 1, "ENTERPRISEPACK", json!({ "TEAMS1": true })) }),
    )
    .await;
    let done = completion(&mut events, &add["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 3);
    let _ = completion(&mut events, &def["message_id"], &mut seen).await;
    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()]);
    }
}

#[tokio::test]
async fn members_added_for_a_policy_that_never_arrives_fails_with_unknown_policy() {
    let mut app = spawn_app_with(AppOptions {
        env: vec![("ENGINE__UNKNOWN_POLICY_WAIT_SECONDS".into(), "1".into())],
        ..AppOptions::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let add = publish(
        &app,
        "policy.members_added",
        json!({ "policy_id": "rx1-never", "members": ["a@nhs.net"], "total_members": 1 }),
    )
    .await;
    let done = completion(&mut events, &add["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "failed");
    assert_eq!(done["failures"][0]["code"], "unknown_policy");
    assert_eq!(app.sim.state.stats().writes_attempted, 0);
}

#[tokio::test]
async fn a_second_worker_finishes_the_job_of_a_worker_killed_mid_way() {
    let mut simulator = policy_reconciler::simulator::SimulatorSettings::for_tests();
    simulator.latency_ms = 40;
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(simulator),
        env: vec![
            ("ENGINE__CHUNK_SIZE".into(), "30".into()),
            ("ENGINE__ROUND_SIZE".into(), "5".into()),
            ("ENGINE__CHUNK_CONCURRENCY".into(), "1".into()),
            ("ENGINE__LEASE_SECONDS".into(), "2".into()),
        ],
        ..AppOptions::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("crash", 60);
    let job = publish(
        &app,
        "policy.changed",
        changed(
            policy("rx1-crash", 1, "ENTERPRISEPACK", json!({ "TEAMS1": true })),
            &members,
        ),
    )
    .await;

    // Kill the worker in the middle of a chunk: some of its rounds recorded, at least two
    // rounds (hundreds of milliseconds at this latency) still to go, so its lease is held.
    wait_until(Duration::from_secs(30), "a chunk part-way done", || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM job_chunks c WHERE c.state = 'running'
               AND (SELECT count(*) FROM job_items i
                    WHERE i.job_id = c.job_id AND i.chunk = c.chunk AND i.outcome IS NOT NULL)
                   BETWEEN 5 AND 20",
        )
        .fetch_one(&app.pool)
        .await
        .unwrap_or(0)
            == 1
    })
    .await;
    app.kill_worker(0);
    let held: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_chunks WHERE state = 'running' AND lease_owner IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(held, 1, "the dead worker left its lease behind");
    let done_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM job_items WHERE outcome IS NOT NULL")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert!(done_before < 60, "killed mid-way");

    app.start_worker().await;
    let done = completion(&mut events, &job["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["total"], 60);
    assert_eq!(done["counts"]["failed"], 0);
    // Every member was written by this job, the killed worker's unrecorded writes included:
    // none is reported already compliant.
    assert_eq!(done["counts"]["changed"], 60, "{}", done["counts"]);
    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    let reclaimed: i64 = sqlx::query_scalar("SELECT count(*) FROM job_chunks WHERE claims > 1")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        reclaimed >= 1,
        "a chunk was taken over after its lease expired"
    );
    seen.extend(events.drain(Duration::from_secs(1)).await);
    assert_eq!(completions_of(&seen, &job["message_id"]), 1);
}

/// The planner lets PostgreSQL pass plain addresses (`plain_email`, migration 0007) and asks
/// the domain's rule about the rest: the fast path must never accept what the rule refuses,
/// nor normalise differently.
#[tokio::test]
async fn the_databases_fast_path_for_addresses_is_never_wider_than_the_rule() {
    let app = spawn_app().await;
    let long_local = format!("{}@nhs.net", "a".repeat(65));
    let long_total = format!("a@{}.net", "b".repeat(250));
    let corpus: Vec<&str> = vec![
        "a.one@nhs.net",
        "A.One@NHS.net",
        "o'brien@nhs.net",
        "first+tag@sub.nhs.net",
        "x-y_z%1@a-b.c-d.uk",
        "@nhs.net",
        "a@",
        "a@nhs",
        "a@.nhs.net",
        "a@nhs.net.",
        "a@nhs..net",
        "a b@nhs.net",
        " a@nhs.net",
        "a@nhs.net ",
        "a@b@nhs.net",
        "a,b@nhs.net",
        "a;b@nhs.net",
        "a<b>@nhs.net",
        "a(b)@nhs.net",
        "a[b]@nhs.net",
        "a\\b@nhs.net",
        "a\"b@nhs.net",
        "a@nhs_net.uk",
        "a@nhs!net.uk",
        "jos\u{e9}@nhs.net",
        "a@b\u{fc}cher.de",
        "a\u{0}@nhs.net",
        "a\t@nhs.net",
        "",
        "not an email",
        &long_local,
        &long_total,
    ];
    let mut passed = 0;
    for raw in corpus {
        let fast: Option<String> = sqlx::query_scalar("SELECT plain_email($1)")
            .bind(raw.replace('\u{0}', "?"))
            .fetch_one(&app.pool)
            .await
            .unwrap();
        let Some(fast) = fast else { continue };
        passed += 1;
        let rule = policy_reconciler::domain::EmailAddress::parse(&raw.replace('\u{0}', "?"))
            .unwrap_or_else(|e| panic!("{raw:?} passed the fast path but the rule says: {e}"));
        assert_eq!(rule.as_str(), fast, "{raw:?} normalised differently");
    }
    // The fast path is used: every plain address above passes it.
    assert_eq!(passed, 5);
}

/// An address the database's fast path does not pass (spaces around it, capitals) is checked
/// by the domain's rule, normalised, and reconciled like any other; duplicates of it count.
#[tokio::test]
async fn members_the_fast_path_leaves_to_the_rule_are_normalised_and_reconciled() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("odd", 3);
    let listed = vec![
        members[0].clone(),
        format!("  {}  ", members[1].to_uppercase()),
        format!("\t{}", members[2]),
    ];
    let job = publish(
        &app,
        "policy.changed",
        changed(
            policy("rx1-odd", 1, "ENTERPRISEPACK", json!({ "TEAMS1": true })),
            &listed,
        ),
    )
    .await;
    let done = completion(&mut events, &job["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 3, "{done}");
    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT email FROM policy_members WHERE policy_id = 'rx1-odd' ORDER BY email",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut normalised = members.clone();
    normalised.sort();
    assert_eq!(stored, normalised);

    // The same address twice, once plain and once only the rule accepts: a duplicate.
    let twice = vec![
        members[0].clone(),
        format!(" {} ", members[0].to_uppercase()),
    ];
    let job = publish(
        &app,
        "policy.changed",
        changed(
            policy("rx1-odd", 2, "ENTERPRISEPACK", json!({ "TEAMS1": true })),
            &twice,
        ),
    )
    .await;
    let done = completion(&mut events, &job["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(done["failures"][0]["code"], "duplicate_email", "{done}");
    assert_eq!(done["failures"][0]["item"], members[0].as_str(), "{done}");
}

/// A worker that stops between finishing a job's last chunk and completing the job leaves
/// every chunk done and the job open: the next replica's monitor completes it.
#[tokio::test]
async fn a_job_left_with_every_chunk_done_is_completed_by_the_monitor() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("gap", 3);
    let job = publish(
        &app,
        "policy.changed",
        changed(
            policy("rx1-gap", 1, "ENTERPRISEPACK", json!({ "TEAMS1": true })),
            &members,
        ),
    )
    .await;
    let first = completion(&mut events, &job["message_id"], &mut seen).await;

    // The state that stop leaves: chunks and items done, the job not completed.
    app.kill_worker(0);
    let reopened = sqlx::query(
        "UPDATE jobs SET state = 'running', outcome = NULL, counts = NULL, completed_at = NULL
         WHERE message_id = $1",
    )
    .bind(job["message_id"].as_str().unwrap())
    .execute(&app.pool)
    .await
    .unwrap();
    assert_eq!(reopened.rows_affected(), 1);
    seen.clear();

    app.start_worker().await;
    // (The first completion may arrive again: delivery is at least once, and the worker was
    // killed around its publication.)
    let done = loop {
        let event = events
            .next_of("job.completed", job["message_id"].as_str().unwrap())
            .await;
        if event["event_id"] != first["event_id"] {
            break event;
        }
    };
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 3, "{done}");
    let state: String = sqlx::query_scalar("SELECT state FROM jobs WHERE message_id = $1")
        .bind(job["message_id"].as_str().unwrap())
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(state, "completed");
}

/// A job the database cannot store the desired state of (a policy id of 8 KB is too large for
/// its index) is rejected once, with a code: never planned again and again. Since ingest checks
/// the sizes of identifiers, it is rejected there (dead-lettered), before any planning.
#[tokio::test]
async fn a_job_that_can_never_be_planned_is_rejected_not_retried() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let members = app.sim.seed_users("big-id", 2);
    // Random, so that PostgreSQL cannot compress it below its index's limit. Over the 255
    // bytes of an identifier: the contract's schema refuses it, and ingest rejects it before
    // the planner (or the index) ever sees it.
    let id: String = (0..228)
        .map(|_| uuid::Uuid::new_v4().simple().to_string())
        .collect();
    let job = app.job(
        "policy.changed",
        changed(policy(&id, 1, "ENTERPRISEPACK", json!({})), &members),
    );
    let dead = app.publish_job_refused_by_schema(&job).await;
    assert_eq!(dead.error.as_deref(), Some("invalid_message"));
    let done = completion(&mut events, &job["message_id"], &mut seen).await;
    let failure = &done["failures"][0];
    assert_eq!(done["outcome"], "rejected", "{failure}");
    assert_eq!(failure["code"], "invalid_message", "{failure}");
    assert_eq!(app.sim.licence_writes(), 0);
    // No second completion, and the job is not planned again.
    for event in events.drain(Duration::from_secs(2)).await {
        assert_ne!(event["type"], "job.completed", "{event}");
    }
    let planned_again: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM jobs WHERE state <> 'completed' OR plan_not_before > now()",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(planned_again, 0);
}

/// The portal's address is often not the user principal name (issue 15): a user is found by
/// `mail`, or by an alias in `proxyAddresses` (a guest's UPN holds `#EXT#`), and licensed; an
/// address two users answer to fails alone with `user_ambiguous`. What was found is remembered
/// in PostgreSQL, so a second job reads by id.
#[tokio::test]
async fn users_are_found_by_mail_or_alias_and_an_ambiguous_address_fails_alone() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    app.sim.seed(json!({ "users": [
        { "userPrincipalName": "jo.new@nhs.net", "mail": "jo.old@nhs.net", "usageLocation": "GB" },
        { "userPrincipalName": "kim_partner.org#EXT#@nhsuk.onmicrosoft.com", "usageLocation": "GB",
          "proxyAddresses": ["SMTP:kim@partner.org", "smtp:kim.alias@nhs.net"] },
        { "userPrincipalName": "twin.a@nhs.net", "mail": "twins@nhs.net", "usageLocation": "GB" },
        { "userPrincipalName": "twin.b@nhs.net", "mail": "twins@nhs.net", "usageLocation": "GB" },
    ]}));
    let members: Vec<String> = ["jo.old@nhs.net", "kim.alias@nhs.net", "twins@nhs.net"]
        .map(str::to_owned)
        .to_vec();
    let job = publish(
        &app,
        "policy.changed",
        changed(
            policy(
                "rx1-aliases",
                1,
                "ENTERPRISEPACK",
                json!({ "TEAMS1": true }),
            ),
            &members,
        ),
    )
    .await;
    let done = completion(&mut events, &job["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "partially_succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 2, "{done}");
    assert_eq!(done["failures"][0]["item"], "twins@nhs.net", "{done}");
    assert_eq!(done["failures"][0]["code"], "user_ambiguous", "{done}");
    let detail = done["failures"][0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("twin.a@nhs.net") && detail.contains("twin.b@nhs.net"),
        "{detail}"
    );
    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    for upn in [
        "jo.new@nhs.net",
        "kim_partner.org#EXT#@nhsuk.onmicrosoft.com",
    ] {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }
    assert!(app.sim.licences("twin.a@nhs.net").is_empty());
    assert!(app.sim.licences("twin.b@nhs.net").is_empty());
    // A single ticket's job, not bulk off-peak work: Graph may throttle it last.
    let stats = app.sim.state.stats();
    assert!(
        stats.writes_with_priority("normal") >= 2,
        "{:?}",
        stats.writes_by_priority
    );
    assert_eq!(stats.writes_with_priority("low"), 0);
    assert_eq!(stats.writes_with_priority("none"), 0);

    // Remembered, with how each was found; the ambiguous address is not.
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT address, matched_by FROM user_directory ORDER BY address")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![
            ("jo.old@nhs.net".to_owned(), "mail".to_owned()),
            ("kim.alias@nhs.net".to_owned(), "proxy_address".to_owned()),
        ]
    );

    // A second job for the same members reads them by id: no address search at all.
    let searches = || app.sim.state.stats().total("list_users");
    let before = searches();
    let again = publish(
        &app,
        "policy.changed",
        changed(
            policy(
                "rx1-aliases",
                2,
                "ENTERPRISEPACK",
                json!({ "TEAMS1": true }),
            ),
            &members[..2],
        ),
    )
    .await;
    let done = completion(&mut events, &again["message_id"], &mut seen).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["already_compliant"], 2, "{done}");
    assert_eq!(searches(), before);
}

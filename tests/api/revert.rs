//! Revert (contract 1.1) end to end: `jobs revert` of a completed `policy.changed` that moved
//! users to another licence restores every user's licence and disabled plans of before, in
//! the simulator's tenant, as a new job whose `job.completed` carries `subject.reverts`;
//! users changed again since by a later job are skipped as `superseded`; the revert is an
//! operator action (who, why) and is refused, with the reason, where it cannot apply.

use std::time::Duration;

use policy_reconciler::ops::{self, Operator, OpsError};
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};
use crate::kit::broker::EventQueue;
use crate::kit::wait_until;

pub(crate) const A_ON: &[&str] = &["EXCHANGE_S_ENTERPRISE", "TEAMS1"];

pub(crate) const OPERATOR: Operator<'static> = Operator {
    by: "sam.ops",
    reason: "INC0099999: the move to E1 was sent for the wrong practice",
};

fn changed(id: &str, licence: &str, toggles: Value, members: &[String]) -> Value {
    json!({ "policy": { "id": id, "name": format!("{id} users"), "ods_code": "RX1",
                        "version": 1, "licence": licence, "toggles": toggles },
            "members": members, "total_members": members.len() })
}

/// Publish `job` and wait for its `job.completed` (events of other jobs are kept in `seen`).
async fn run(app: &TestApp, events: &mut EventQueue, seen: &mut Vec<Value>, job: &Value) -> Value {
    app.publish_job(job).await;
    completion(events, seen, job["message_id"].as_str().unwrap()).await
}

pub(crate) async fn completion(
    events: &mut EventQueue,
    seen: &mut Vec<Value>,
    message_id: &str,
) -> Value {
    events
        .completion_keeping(&json!(message_id), seen, Duration::from_secs(120))
        .await
}

/// Users on policy `rx1-a` (E3, two plans on), then moved by one `policy.changed` to policy
/// `rx1-b` (E1, other plans on). Returns the users and the move's `job.completed`.
pub(crate) async fn seed_and_move(
    app: &TestApp,
    events: &mut EventQueue,
    seen: &mut Vec<Value>,
    n: usize,
) -> (Vec<String>, Value) {
    let members = app.sim.seed_users("rev", n);
    let toggles_a = json!({ "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true, "SWAY": false });
    let a = app.job(
        "policy.changed",
        changed("rx1-a", "ENTERPRISEPACK", toggles_a, &members),
    );
    let done = run(app, events, seen, &a).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    let toggles_b = json!({ "EXCHANGE_S_STANDARD": true, "SWAY": true });
    let b = app.job(
        "policy.changed",
        changed("rx1-b", "STANDARDPACK", toggles_b, &members),
    );
    let moved = run(app, events, seen, &b).await;
    assert_eq!(moved["outcome"], "succeeded", "{moved}");
    assert_eq!(moved["counts"]["changed"], n as u64, "{moved}");
    let b_licence = app
        .sim
        .expected_licence("STANDARDPACK", &["EXCHANGE_S_STANDARD", "SWAY"]);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![b_licence.clone()], "{upn}");
    }
    (members, moved)
}

#[tokio::test]
async fn a_revert_of_a_completed_move_restores_every_users_licence_and_disabled_plans() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let (members, moved) = seed_and_move(&app, &mut events, &mut seen, 6).await;
    let moved_id = moved["job_id"].as_str().unwrap().to_owned();
    let moved_message = moved["source_message_id"].as_str().unwrap().to_owned();
    app.sim.state.reset_stats();

    let requested = ops::revert(&app.pool, &moved_message, &OPERATOR)
        .await
        .unwrap();
    assert_eq!(requested.reverts.to_string(), moved_id);
    assert_eq!(requested.items, 6);
    assert!(ops::render_revert(&requested).contains(&moved_id));

    let done = completion(&mut events, &mut seen, &requested.message_id).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    // A contract job type, with what it reverts in its subject.
    assert_eq!(done["job_type"], "policy.changed", "{done}");
    assert_eq!(done["subject"]["reverts"], moved_id.as_str(), "{done}");
    assert_eq!(done["subject"]["policy_id"], "rx1-b", "{done}");
    assert_eq!(done["counts"]["total"], 6);
    assert_eq!(done["counts"]["changed"], 6, "{done}");
    assert_eq!(done["dry_run"], false);
    let actions = done["subject"]["operator_actions"].as_array().unwrap();
    assert_eq!(actions.len(), 1, "{done}");
    assert_eq!(actions[0]["action"], "revert");
    assert_eq!(actions[0]["by"], OPERATOR.by);
    assert_eq!(actions[0]["reason"], OPERATOR.reason);
    let accepted = seen
        .iter()
        .find(|e| e["type"] == "job.accepted" && e["source_message_id"] == requested.message_id)
        .unwrap_or_else(|| panic!("no job.accepted for the revert: {seen:?}"));
    assert_eq!(accepted["job_type"], "policy.changed");
    assert_eq!(accepted["total"], 6);

    // The tenant: every user holds E3 with exactly the plans of before, and E1 no more (one
    // call each: add E3 and remove E1 together).
    let a_licence = app.sim.expected_licence("ENTERPRISEPACK", A_ON);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![a_licence.clone()], "{upn}");
    }
    let stats = app.sim.state.stats();
    let applied: Vec<_> = stats
        .recent_writes
        .iter()
        .filter(|w| w.route == "assign_license" && w.applied)
        .collect();
    assert_eq!(applied.len(), 6, "{applied:?}");
    for w in applied {
        let body = w.body.as_ref().unwrap();
        assert_eq!(body["addLicenses"].as_array().unwrap().len(), 1, "{body}");
        assert_eq!(
            body["removeLicenses"].as_array().unwrap().len(),
            1,
            "{body}"
        );
    }

    // The reverted job's history names the revert too.
    let shown = ops::show(&app.pool, &moved_message).await.unwrap();
    assert_eq!(shown.operator_actions.len(), 1);
    assert_eq!(shown.operator_actions[0].action, "revert");
    assert_eq!(shown.operator_actions[0].by, OPERATOR.by);
    let (rows, more) = ops::search(&app.pool, &Default::default(), 1, 10)
        .await
        .unwrap();
    let listed = ops::render_rows(&rows, more);
    assert!(listed.contains("policy.revert"), "{listed}");
}

#[tokio::test]
async fn a_user_changed_again_by_a_later_job_is_skipped_as_superseded_and_refusals_say_why() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let (members, moved) = seed_and_move(&app, &mut events, &mut seen, 4).await;
    let moved_message = moved["source_message_id"].as_str().unwrap().to_owned();

    // A later job moves the first user on to a third policy.
    let c_toggles = json!({ "TEAMS1": true });
    let c = app.job(
        "policy.changed",
        changed("rx1-c", "ENTERPRISEPACK", c_toggles, &members[..1]),
    );
    let c_done = run(&app, &mut events, &mut seen, &c).await;
    assert_eq!(c_done["counts"]["changed"], 1, "{c_done}");
    let c_id = c_done["job_id"].as_str().unwrap().to_owned();

    let requested = ops::revert(&app.pool, &moved_message, &OPERATOR)
        .await
        .unwrap();
    let done = completion(&mut events, &mut seen, &requested.message_id).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 3, "{done}");
    assert_eq!(done["counts"]["skipped"], 1, "{done}");
    let failures = done["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 1, "{done}");
    assert_eq!(failures[0]["item"], members[0].as_str());
    assert_eq!(failures[0]["code"], "superseded");
    assert!(
        failures[0]["detail"].as_str().unwrap().contains(&c_id),
        "{done}"
    );
    // The later job's state stands; the others are back.
    let c_licence = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    assert_eq!(app.sim.licences(&members[0]), vec![c_licence]);
    let a_licence = app.sim.expected_licence("ENTERPRISEPACK", A_ON);
    for upn in &members[1..] {
        assert_eq!(app.sim.licences(upn), vec![a_licence.clone()], "{upn}");
    }

    // Refusals, each with its reason.
    let refused = |result: Result<ops::RevertRequested, OpsError>| match result {
        Err(OpsError::Invalid(why)) => why,
        other => panic!("expected a refusal, got {other:?}"),
    };
    // Who and why are required.
    let anonymous = Operator {
        by: "",
        reason: "x",
    };
    assert!(refused(ops::revert(&app.pool, &moved_message, &anonymous).await).contains("--by"));
    assert!(matches!(
        ops::revert(&app.pool, "no-such-job", &OPERATOR).await,
        Err(OpsError::NotFound(_))
    ));
    // A dry run changed nothing.
    let mut dry = app.job(
        "policy.changed",
        changed(
            "rx1-c",
            "ENTERPRISEPACK",
            json!({ "SWAY": true }),
            &members[..1],
        ),
    );
    dry["dry_run"] = json!(true);
    run(&app, &mut events, &mut seen, &dry).await;
    let why = refused(ops::revert(&app.pool, dry["message_id"].as_str().unwrap(), &OPERATOR).await);
    assert!(why.contains("dry run"), "{why}");
    // A job that found everything compliant changed nothing.
    let again = app.job(
        "policy.changed",
        changed(
            "rx1-c",
            "ENTERPRISEPACK",
            json!({ "TEAMS1": true }),
            &members[..1],
        ),
    );
    let again_done = run(&app, &mut events, &mut seen, &again).await;
    assert_eq!(again_done["counts"]["already_compliant"], 1, "{again_done}");
    let why =
        refused(ops::revert(&app.pool, again["message_id"].as_str().unwrap(), &OPERATOR).await);
    assert!(why.contains("changed nothing"), "{why}");
    // A job that is not completed (a member list waiting for its policy).
    let waiting = app.job(
        "policy.members_added",
        json!({ "policy_id": "rx1-later", "members": [members[1]], "total_members": 1 }),
    );
    app.publish_job(&waiting).await;
    let waiting_id = waiting["message_id"].as_str().unwrap().to_owned();
    wait_until(Duration::from_secs(30), "the waiting job is stored", || {
        let pool = app.pool.clone();
        let id = waiting_id.clone();
        async move { ops::show(&pool, &id).await.is_ok() }
    })
    .await;
    let why = refused(ops::revert(&app.pool, &waiting_id, &OPERATOR).await);
    assert!(why.contains("not completed"), "{why}");
    // Not a policy job.
    let remind = app.job("portal_access.remind", json!({ "contact_ids": [] }));
    run(&app, &mut events, &mut seen, &remind).await;
    let why =
        refused(ops::revert(&app.pool, remind["message_id"].as_str().unwrap(), &OPERATOR).await);
    assert!(why.contains("policy jobs only"), "{why}");

    // Retention: before-images older than `engine.revert.retention_days` are deleted by the
    // monitor, and the job can no longer be reverted.
    sqlx::query(
        "UPDATE job_item_before_images SET recorded_at = now() - interval '91 days'
          WHERE job_id = $1::uuid",
    )
    .bind(&c_id)
    .execute(&app.pool)
    .await
    .unwrap();
    wait_until(Duration::from_secs(30), "old before-images deleted", || {
        let pool = app.pool.clone();
        let id = c_id.clone();
        async move {
            let left: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM job_item_before_images WHERE job_id = $1::uuid",
            )
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap();
            left == 0
        }
    })
    .await;
    let why = refused(ops::revert(&app.pool, &c_id, &OPERATOR).await);
    assert!(why.contains("no before-image"), "{why}");
}

/// Before-images older than `engine.revert.retention_days` (90) are deleted by the monitor,
/// judged by the database's clock that stamped them; younger ones stay.
#[tokio::test]
async fn before_images_past_their_retention_are_deleted_and_younger_ones_kept() {
    let app = spawn_app().await;
    // A job the planner leaves alone (planned never), for the images to belong to.
    let job = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO jobs (id, message_id, job_type, state, plan_not_before)
         VALUES ($1, $1::text, 'policy.changed', 'received', 'infinity')",
    )
    .bind(job)
    .execute(&app.pool)
    .await
    .unwrap();
    // Ages relative to the database's now(), never fixed dates (tests/kit/time.rs, rule 3).
    for (seq, days) in [(0, 91), (1, 89)] {
        sqlx::query(
            "INSERT INTO job_item_before_images (job_id, seq, address, image, recorded_at)
             VALUES ($1, $2, $3, '{}', now() - make_interval(days => $4))",
        )
        .bind(job)
        .bind(seq)
        .bind(format!("u{seq}@nhs.net"))
        .bind(days)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let kept = || async {
        sqlx::query_scalar::<_, i32>(
            "SELECT seq FROM job_item_before_images WHERE job_id = $1 ORDER BY seq",
        )
        .bind(job)
        .fetch_all(&app.pool)
        .await
        .unwrap()
    };
    wait_until(
        Duration::from_secs(30),
        "the 91-day image deleted",
        || async { kept().await == vec![1] },
    )
    .await;
    // The monitor runs every 10 s: the younger image is still there after another round.
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(kept().await, vec![1]);
}

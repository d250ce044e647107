//! What an interrupted job reports is what happened in the tenant (issue 28): one helper
//! interrupts a running job the same way whatever its kind ([`interrupt`]: a cancel while it
//! writes; its worker stopped as on SIGTERM, or killed, then the job cancelled under the next
//! worker), and each kind's test checks the job's counts against the tenant's state. Policy
//! jobs, reverts and admin roles share the engine's one write loop (`engine::reconcile`); a
//! cancelled revert once reported none of the writes it had made.

use std::time::Duration;

use policy_reconciler::ops;
use policy_reconciler::simulator::SimulatorSettings;
use serde_json::{Value, json};

use crate::helpers::{AppOptions, TestApp, spawn_app_with};
use crate::kit::broker::EventQueue;
use crate::kit::wait_until;
use crate::revert::{A_ON, OPERATOR, completion, seed_and_move};

/// How a running job is interrupted.
#[derive(Debug, Clone, Copy)]
pub enum Interruption {
    /// `jobs cancel` while its worker writes.
    Cancel,
    /// Its worker stopped gracefully (SIGTERM) mid-way; another takes over; then cancelled.
    Stop,
    /// Its worker killed mid-way (nothing cleaned up); another takes over once the lease
    /// expires; then cancelled.
    Kill,
    /// Its worker killed mid-way, the job cancelled while no worker runs, then a worker
    /// started: it reads back the writes the dead one may have made before the job ends.
    CancelWhileDown,
}

/// A worker writing at `writes_per_second`, large jobs run at once without approval, and
/// leases short enough for a killed worker's chunks to be taken over within seconds.
pub async fn interruptible_app(writes_per_second: u32) -> TestApp {
    let mut simulator = SimulatorSettings::for_tests();
    simulator.latency_ms = 20;
    spawn_app_with(AppOptions {
        simulator: Some(simulator),
        env: [
            ("TENANT__WRITES_PER_SECOND", writes_per_second.to_string()),
            ("SCHEDULE__LARGE_JOB_THRESHOLD", "100000".into()),
            ("ENGINE__APPROVAL__USERS", "1000000".into()),
            ("ENGINE__APPROVAL__SHARE_MIN_USERS", "1000000".into()),
            ("ENGINE__LEASE_SECONDS", "3".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect(),
        ..AppOptions::default()
    })
    .await
}

/// Interrupts the job `message_id`, running on the app's one worker, once `progress` has
/// reached `at` (see [`Interruption`]); for a stop or a kill, the job is cancelled once the
/// next worker has made `at` more progress. Returns the job's `job.completed`.
pub async fn interrupt(
    app: &mut TestApp,
    events: &mut EventQueue,
    message_id: &str,
    how: Interruption,
    progress: impl Fn(&TestApp) -> u64,
    at: u64,
) -> Value {
    wait_until(Duration::from_secs(90), "the job to make progress", || {
        let done = progress(app) >= at;
        async move { done }
    })
    .await;
    if let Interruption::CancelWhileDown = how {
        app.kill_worker(0);
        ops::cancel(&app.pool, message_id, &OPERATOR)
            .await
            .expect("the job is cancelled");
        app.start_worker().await;
        let done = events.next_of("job.completed", message_id).await;
        assert_eq!(
            done["subject"]["ended_early"],
            policy_reconciler::store::work::controls::CANCELLED_BY_OPERATOR,
            "{done}"
        );
        return done;
    }
    if let Interruption::Stop | Interruption::Kill = how {
        match how {
            Interruption::Stop => app.stop_worker(0).await,
            _ => app.kill_worker(0),
        }
        let stopped_at = progress(app);
        app.start_worker().await;
        wait_until(Duration::from_secs(90), "the next worker to go on", || {
            let done = progress(app) >= stopped_at + at;
            async move { done }
        })
        .await;
    }
    ops::cancel(&app.pool, message_id, &OPERATOR)
        .await
        .expect("the job is cancelled");
    let done = events.next_of("job.completed", message_id).await;
    assert_eq!(
        done["subject"]["ended_early"],
        policy_reconciler::store::work::controls::CANCELLED_BY_OPERATOR,
        "{done}"
    );
    done
}

fn count(done: &Value, field: &str) -> u64 {
    done["counts"][field].as_u64().unwrap_or_default()
}

/// The interrupted job's `job.completed` reports `changed` exactly the `written` of its
/// `total` items, the rest skipped, none failed. (`context`: what the tenant showed.)
fn assert_reported(done: &Value, written: u64, total: u64, context: &str) {
    let counts = &done["counts"];
    assert_eq!(count(done, "changed"), written, "{counts} {context}");
    assert_eq!(
        count(done, "skipped"),
        total - written,
        "{counts} {context}"
    );
    assert_eq!(count(done, "failed"), 0, "{counts} {context}");
}

/// A revert of a 3,000-member move interrupted after about 200 writes reports as `changed`
/// exactly the users it restored, the rest skipped; a revert of that revert gives every one
/// of them back the licence of the move.
async fn revert_interrupted(how: Interruption) {
    const N: u64 = 3_000;
    let mut app = interruptible_app(250).await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let (members, moved) = seed_and_move(&app, &mut events, &mut seen, N as usize).await;
    let moved_message = moved["source_message_id"].as_str().unwrap().to_owned();
    let a_licence = app.sim.expected_licence("ENTERPRISEPACK", A_ON);
    let b_licence = app
        .sim
        .expected_licence("STANDARDPACK", &["EXCHANGE_S_STANDARD", "SWAY"]);
    app.sim.state.reset_stats();

    let revert = ops::revert(&app.pool, &moved_message, &OPERATOR)
        .await
        .unwrap();
    let done = interrupt(
        &mut app,
        &mut events,
        &revert.message_id,
        how,
        |app| app.sim.licence_writes(),
        200,
    )
    .await;

    // Every user holds one of the two licences (never none), and those holding the one of
    // before the move are exactly what the revert reports `changed`.
    let restored: Vec<&String> = members
        .iter()
        .filter(|m| app.sim.licences(m) == vec![a_licence.clone()])
        .collect();
    let kept = members
        .iter()
        .filter(|m| app.sim.licences(m) == vec![b_licence.clone()])
        .count() as u64;
    let restored_count = restored.len() as u64;
    assert_eq!(restored_count + kept, N, "a user holds neither licence");
    assert!(
        restored_count > 0 && restored_count < N,
        "interrupted mid-way: {restored_count} restored"
    );
    assert_reported(&done, restored_count, N, "");

    // The operator's natural fix: revert the cancelled revert. Every user it wrote gets the
    // move's licence back.
    let again = ops::revert(&app.pool, &revert.message_id, &OPERATOR)
        .await
        .expect("a revert that changed users can be reverted");
    assert_eq!(again.items as u64, restored_count);
    let done = completion(&mut events, &mut seen, &again.message_id).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(
        count(&done, "changed"),
        restored_count,
        "{}",
        done["counts"]
    );
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![b_licence.clone()], "{upn}");
    }
}

#[tokio::test]
async fn a_cancelled_revert_reports_exactly_the_users_it_restored() {
    revert_interrupted(Interruption::Cancel).await;
}

#[tokio::test]
async fn a_revert_whose_worker_stopped_then_cancelled_reports_exactly_the_users_it_restored() {
    revert_interrupted(Interruption::Stop).await;
}

#[tokio::test]
async fn a_revert_whose_worker_was_killed_then_cancelled_reports_exactly_the_users_it_restored() {
    revert_interrupted(Interruption::Kill).await;
}

/// A 3,000-member `policy.changed` to users holding nothing, interrupted after about 200
/// writes: `changed` is exactly the users who hold the licence, the rest skipped.
async fn policy_interrupted(how: Interruption) {
    const N: u64 = 3_000;
    let mut app = interruptible_app(250).await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("int", N as usize);
    let job = app.job(
        "policy.changed",
        json!({ "policy": { "id": "rx1-int", "name": "RX1 int", "ods_code": "RX1",
                            "version": 1, "licence": "ENTERPRISEPACK",
                            "toggles": { "TEAMS1": true } },
                "members": members, "total_members": N }),
    );
    app.publish_job(&job).await;
    let message_id = job["message_id"].as_str().unwrap();
    let done = interrupt(
        &mut app,
        &mut events,
        message_id,
        how,
        |app| app.sim.licence_writes(),
        200,
    )
    .await;
    let expected = app.sim.expected_licence("ENTERPRISEPACK", &["TEAMS1"]);
    let mut written = 0;
    for upn in &members {
        match app.sim.licences(upn).as_slice() {
            [] => {}
            [held] if *held == expected => written += 1,
            other => panic!("{upn} holds {other:?}"),
        }
    }
    assert!(written > 0 && written < N, "interrupted mid-way: {written}");
    assert_reported(&done, written, N, "");
}

#[tokio::test]
async fn a_cancelled_policy_job_reports_exactly_the_users_it_wrote() {
    policy_interrupted(Interruption::Cancel).await;
}

#[tokio::test]
async fn a_policy_job_whose_worker_stopped_then_cancelled_reports_exactly_the_users_it_wrote() {
    policy_interrupted(Interruption::Stop).await;
}

#[tokio::test]
async fn a_policy_job_whose_worker_was_killed_then_cancelled_reports_exactly_the_users_it_wrote() {
    policy_interrupted(Interruption::Kill).await;
}

#[tokio::test]
async fn a_revert_cancelled_while_its_worker_is_down_reports_exactly_the_users_it_restored() {
    revert_interrupted(Interruption::CancelWhileDown).await;
}

#[tokio::test]
async fn a_policy_job_cancelled_while_its_worker_is_down_reports_exactly_the_users_it_wrote() {
    policy_interrupted(Interruption::CancelWhileDown).await;
}

/// The Phone System groups of `codes`' Primary admins that `user` is a member of, in the
/// tenant itself (not a replica).
fn primary_groups(app: &TestApp, user: &str, codes: &[String]) -> usize {
    let names: Vec<String> = codes
        .iter()
        .map(|code| format!("PhoneSystem-Primary-{code}"))
        .collect();
    app.sim
        .state
        .groups_of(user)
        .unwrap_or_default()
        .iter()
        .filter(|g| names.contains(g))
        .count()
}

/// RX1's mapping: it manages `codes`, of which `onboarded` (and RX1) are on Phone System. A
/// platform process: no actor.
fn mapping(app: &TestApp, codes: &[String], onboarded: &[String]) -> Value {
    let onboarded = [&["RX1".to_owned()], onboarded].concat();
    let mut job = app.job(
        "ods_mapping.changed",
        json!({ "ods_code": "RX1", "managed_ods_codes": codes, "onboarded": onboarded }),
    );
    job["actor"] = Value::Null;
    job
}

/// An admin-role job interrupted mid-way: a mapping change that takes 30 organisations off
/// Phone System ends 30 memberships of each of RX1's ten Primary admins (300 removals at 20
/// a second), interrupted after about 60. `changed` is exactly the admins who lost a
/// membership, the rest skipped; sent again, the change finishes what was left, and every
/// admin keeps their own organisation's group throughout.
async fn roles_interrupted(how: Interruption) {
    const ADMINS: u64 = 10;
    let mut app = interruptible_app(20).await;
    let mut events = app.event_queue().await;
    let mut seen = Vec::new();
    let admins = app.sim.seed_users("admin", ADMINS as usize);
    let mut assigns = Vec::new();
    for admin in &admins {
        let job = app.job(
            "admin_role.assign",
            json!({ "user": admin, "ods_code": "RX1", "role": "phone_system_primary_admin" }),
        );
        app.publish_job(&job).await;
        assigns.push(job["message_id"].as_str().unwrap().to_owned());
    }
    for assign in &assigns {
        let done = completion(&mut events, &mut seen, assign).await;
        assert_eq!(done["outcome"], "succeeded", "{done}");
    }
    let codes: Vec<String> = (2..32).map(|n| format!("RX{n}")).collect();
    let onboard = mapping(&app, &codes, &codes);
    app.publish_job(&onboard).await;
    let done = completion(
        &mut events,
        &mut seen,
        onboard["message_id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    for admin in &admins {
        assert_eq!(primary_groups(&app, admin, &codes), codes.len(), "{admin}");
    }

    app.sim.state.reset_stats();
    let off = mapping(&app, &codes, &[]);
    app.publish_job(&off).await;
    let off_id = off["message_id"].as_str().unwrap().to_owned();
    let done = interrupt(
        &mut app,
        &mut events,
        &off_id,
        how,
        |app| app.sim.state.stats().total("remove_member"),
        60,
    )
    .await;
    let left: Vec<usize> = admins
        .iter()
        .map(|admin| primary_groups(&app, admin, &codes))
        .collect();
    let touched = left.iter().filter(|&&n| n < codes.len()).count() as u64;
    assert!(
        touched > 0 && touched < ADMINS,
        "interrupted mid-way: {left:?}"
    );
    assert_reported(&done, touched, ADMINS, &format!("{left:?}"));

    let again = mapping(&app, &codes, &[]);
    app.publish_job(&again).await;
    let done = completion(
        &mut events,
        &mut seen,
        again["message_id"].as_str().unwrap(),
    )
    .await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    let unfinished = left.iter().filter(|&&n| n > 0).count() as u64;
    assert_eq!(
        count(&done, "changed"),
        unfinished,
        "{} {left:?}",
        done["counts"]
    );
    for admin in &admins {
        assert_eq!(primary_groups(&app, admin, &codes), 0, "{admin}");
        assert_eq!(
            primary_groups(&app, admin, &["RX1".to_owned()]),
            1,
            "{admin} keeps RX1's group"
        );
    }
}

#[tokio::test]
async fn a_cancelled_role_job_reports_exactly_the_admins_it_changed() {
    roles_interrupted(Interruption::Cancel).await;
}

#[tokio::test]
async fn a_role_job_whose_worker_stopped_then_cancelled_reports_exactly_the_admins_it_changed() {
    roles_interrupted(Interruption::Stop).await;
}

#[tokio::test]
async fn a_role_job_whose_worker_was_killed_then_cancelled_reports_exactly_the_admins_it_changed() {
    roles_interrupted(Interruption::Kill).await;
}

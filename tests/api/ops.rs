//! Operator commands end to end: `enqueue --from-csv` through RabbitMQ to a real worker and
//! the tenant simulator, and `jobs list/show/pause/resume/expedite/cancel` against the
//! worker's database. The library functions are called with the test's settings and pool,
//! and their returned data is checked (the CLI only prints it).

use std::path::PathBuf;
use std::time::Duration;

use policy_reconciler::ops::{self, EnqueueKind, EnqueueRequest, OpsError, StateFilter};
use policy_reconciler::simulator::SimulatorSettings;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{AppOptions, OPERATOR, TestApp, spawn_app, spawn_app_with};
use crate::kit::broker::EventQueue;
use crate::kit::wait_until;

const TICKET: &str = "INC0099001";
const CANCELLED: &str = "cancelled by an operator";

/// A CSV export as the portal writes it: BOM, CRLF, quoted cells, extra columns, a blank line.
fn write_csv(members: &[String]) -> PathBuf {
    let mut text = String::from("\u{feff}\"Name\",\"Email Address\",\"ODS\"\r\n");
    for (i, member) in members.iter().enumerate() {
        text.push_str(&format!("\"User {i}, Test\",\"{member}\",RX1\r\n"));
    }
    text.push_str("\r\n");
    let path = std::env::temp_dir().join(format!("pr-members-{}.csv", Uuid::new_v4().simple()));
    std::fs::write(&path, text).unwrap();
    path
}

fn request(csv: PathBuf, policy: &str, kind: EnqueueKind) -> EnqueueRequest {
    EnqueueRequest {
        csv,
        policy_id: policy.into(),
        kind,
        ticket: Some(TICKET.into()),
        originator: Some("jane.smith@nhs.net".into()),
        ..EnqueueRequest::default()
    }
}

/// Store a policy's definition the way the portal does: a `policy.changed` without members.
async fn seed_policy(app: &TestApp, events: &mut EventQueue, id: &str) {
    let job = app.job(
        "policy.changed",
        json!({ "policy": { "id": id, "name": format!("{id} users"), "ods_code": "RX1",
                            "version": 1, "licence": "ENTERPRISEPACK",
                            "toggles": { "EXCHANGE_S_ENTERPRISE": true, "TEAMS1": true } },
                "members": [], "total_members": 0 }),
    );
    app.publish_job(&job).await;
    let done = completion(events, job["message_id"].as_str().unwrap()).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
}

/// The `job.completed` of `message_id` (skipping other events).
async fn completion(events: &mut EventQueue, message_id: &str) -> Value {
    events.next_of("job.completed", message_id).await
}

/// The first page of `jobs list` (`state`, at most `limit`), as the CLI reads it.
async fn list(app: &TestApp, state: Option<StateFilter>, limit: u32) -> (Vec<ops::JobRow>, bool) {
    let filter = ops::JobFilter {
        state: ops::jobs::listed(state),
        ..Default::default()
    };
    ops::search(&app.pool, &filter, 1, limit).await.unwrap()
}

#[tokio::test]
async fn enqueue_from_csv_reconciles_every_listed_member() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    seed_policy(&app, &mut events, "rx1-csv").await;
    let members = app.sim.seed_users("csv", 12);
    let expected = app
        .sim
        .expected_licence("ENTERPRISEPACK", &["EXCHANGE_S_ENTERPRISE", "TEAMS1"]);

    // members-added: every listed member gets the policy's licence.
    let csv = write_csv(&members);
    let enqueued = ops::enqueue_from_csv(
        &app.settings,
        &request(csv.clone(), "rx1-csv", EnqueueKind::MembersAdded),
    )
    .await
    .expect("published");
    assert_eq!(enqueued.members, 12);
    assert!(enqueued.warnings.is_empty());
    let done = completion(&mut events, &enqueued.message_id).await;
    assert_eq!(done["job_type"], "policy.members_added");
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["total"], 12);
    assert_eq!(done["counts"]["changed"], 12);
    assert_eq!(done["ticket"]["reference"], TICKET);
    for upn in &members {
        assert_eq!(app.sim.licences(upn), vec![expected.clone()], "{upn}");
    }

    // changed: the stored definition with the CSV as the whole membership.
    let fewer = write_csv(&members[..5]);
    let mut changed = request(fewer.clone(), "rx1-csv", EnqueueKind::Changed);
    changed.message_id = Some(format!("op-{}", Uuid::new_v4()));
    let enqueued = ops::enqueue_from_csv(&app.settings, &changed)
        .await
        .expect("published");
    assert_eq!(enqueued.message_id, changed.message_id.clone().unwrap());
    let done = completion(&mut events, &enqueued.message_id).await;
    assert_eq!(done["job_type"], "policy.changed");
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["total"], 5);
    assert_eq!(done["subject"]["policy_id"], "rx1-csv");
    let stored: Vec<String> = sqlx::query_scalar(
        "SELECT email FROM policy_members WHERE policy_id = 'rx1-csv' ORDER BY email",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let mut want: Vec<String> = members[..5].to_vec();
    want.sort();
    assert_eq!(stored, want);
    let _ = std::fs::remove_file(csv);
    let _ = std::fs::remove_file(fewer);
}

#[tokio::test]
async fn malformed_addresses_are_sent_for_the_worker_to_reject() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    seed_policy(&app, &mut events, "rx1-bad").await;
    let mut members = app.sim.seed_users("bad", 2);
    members.push("not-an-email".into());
    let csv = write_csv(&members);
    let enqueued = ops::enqueue_from_csv(
        &app.settings,
        &request(csv.clone(), "rx1-bad", EnqueueKind::MembersAdded),
    )
    .await
    .unwrap();
    assert_eq!(enqueued.members, 3);
    assert_eq!(enqueued.warnings.malformed, ["not-an-email"]);
    let done = completion(&mut events, &enqueued.message_id).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert!(
        done["failures"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["code"] == "invalid_email" && f["item"] == "not-an-email"),
        "{done}"
    );
    assert_eq!(app.sim.licence_writes(), 0);
    // `jobs show` gives the reason, although a rejected job has no items.
    let detail = ops::show(&app.pool, &enqueued.message_id).await.unwrap();
    assert_eq!(detail.outcome.as_deref(), Some("rejected"));
    assert!(
        detail
            .failures
            .iter()
            .any(|f| f.code == "invalid_email" && f.item == "not-an-email"),
        "{detail:?}"
    );
    let _ = std::fs::remove_file(csv);
}

#[tokio::test]
async fn enqueue_changed_for_an_unknown_policy_publishes_nothing() {
    let app = spawn_app().await;
    let members = app.sim.seed_users("nopolicy", 3);
    let csv = write_csv(&members);
    let error = ops::enqueue_from_csv(
        &app.settings,
        &request(csv.clone(), "no-such-policy", EnqueueKind::Changed),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, OpsError::NotFound(what) if what.contains("no-such-policy")),
        "{error}"
    );
    // Give a published message time to be stored, were there one.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(app.jobs().await.is_empty(), "a job was stored");
    let _ = std::fs::remove_file(csv);
}

#[tokio::test]
async fn list_and_show_report_progress_and_failures() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    seed_policy(&app, &mut events, "rx1-show").await;
    let mut members = app.sim.seed_users("show", 4);
    members.push("ghost@nhs.net".into());
    let csv = write_csv(&members);
    let enqueued = ops::enqueue_from_csv(
        &app.settings,
        &request(csv.clone(), "rx1-show", EnqueueKind::MembersAdded),
    )
    .await
    .unwrap();
    let done = completion(&mut events, &enqueued.message_id).await;
    assert_eq!(done["outcome"], "partially_succeeded", "{done}");

    let (jobs, more) = list(&app, None, 10).await;
    assert_eq!(jobs.len(), 2, "the seed and the enqueued job");
    // Most recent first.
    let job = &jobs[0];
    assert_eq!(job.message_id, enqueued.message_id);
    assert_eq!(job.job_type.as_deref(), Some("policy.members_added"));
    assert_eq!(job.state.as_str(), "completed");
    assert_eq!(job.outcome.as_deref(), Some("partially_succeeded"));
    assert_eq!((job.done, job.total), (5, Some(5)));
    assert_eq!(job.ticket_reference.as_deref(), Some(TICKET));
    assert!(!job.paused && !job.expedited);
    assert_eq!(list(&app, Some(StateFilter::Completed), 1).await.0.len(), 1);
    assert!(
        list(&app, Some(StateFilter::Unfinished), 10)
            .await
            .0
            .is_empty()
    );
    let table = ops::render_rows(&jobs, more);
    assert!(table.contains("5/5") && table.contains(TICKET), "{table}");

    // By message_id and by id alike.
    let detail = ops::show(&app.pool, &enqueued.message_id).await.unwrap();
    let by_id = ops::show(&app.pool, &job.id.to_string()).await.unwrap();
    assert_eq!(by_id.message_id, detail.message_id);
    assert_eq!(detail.state.as_str(), "completed");
    assert_eq!(detail.outcome.as_deref(), Some("partially_succeeded"));
    assert_eq!(detail.schedule.map(|s| s.as_str()), Some("immediate"));
    assert!(detail.earliest_start.is_some());
    assert!(detail.accepted_at.is_some() && detail.started_at.is_some());
    assert!(detail.completed_at.is_some());
    assert_eq!((detail.done, detail.total), (5, Some(5)));
    assert_eq!(detail.items.changed, 4);
    assert_eq!(detail.items.failed, 1);
    assert_eq!(detail.items.pending, 0);
    assert_eq!(detail.chunks.done, 1);
    assert_eq!(detail.chunks.pending + detail.chunks.running, 0);
    assert_eq!(detail.ticket.as_ref().unwrap().reference, TICKET);
    assert_eq!(detail.subject.as_ref().unwrap()["policy_id"], "rx1-show");
    assert_eq!(detail.failures.len(), 1);
    assert_eq!(detail.failures[0].item, "ghost@nhs.net");
    assert_eq!(detail.failures[0].code, "user_not_found");
    assert_eq!(detail.more_failures, 0);
    assert!(detail.ended_early.is_none());
    let text = ops::render_detail(&detail);
    assert!(
        text.contains("user_not_found") && text.contains("ghost@nhs.net"),
        "{text}"
    );

    assert!(matches!(
        ops::show(&app.pool, "no-such-job").await,
        Err(OpsError::NotFound(_))
    ));
    let _ = std::fs::remove_file(csv);
}

#[tokio::test]
async fn controls_refuse_completed_and_unknown_jobs() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    seed_policy(&app, &mut events, "rx1-done").await;
    let seed = list(&app, None, 1).await.0.remove(0);
    assert_eq!(seed.state.as_str(), "completed");
    let id = seed.id.to_string();
    for result in [
        ops::cancel(&app.pool, &id, &OPERATOR).await.map(|_| ()),
        ops::pause(&app.pool, &id, &OPERATOR).await.map(|_| ()),
        ops::resume(&app.pool, &id, &OPERATOR).await.map(|_| ()),
        ops::expedite(&app.pool, &id, &OPERATOR).await.map(|_| ()),
    ] {
        assert!(
            matches!(&result, Err(OpsError::AlreadyCompleted(_))),
            "{result:?}"
        );
    }
    assert!(matches!(
        ops::cancel(&app.pool, &Uuid::new_v4().to_string(), &OPERATOR).await,
        Err(OpsError::NotFound(_))
    ));
    // The refused cancel published nothing more.
    let more = events.drain(Duration::from_millis(500)).await;
    assert!(
        more.iter().all(|e| e["type"] != "job.completed"),
        "{more:?}"
    );
}

#[tokio::test]
async fn a_job_not_yet_planned_is_cancelled_with_no_items() {
    // The policy never arrives, so the job waits in `received`.
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let csv = write_csv(&["a@nhs.net".to_owned()]);
    let enqueued = ops::enqueue_from_csv(
        &app.settings,
        &request(csv.clone(), "rx1-later", EnqueueKind::MembersAdded),
    )
    .await
    .unwrap();
    app.wait_for_jobs(1).await;
    let report = ops::cancel(&app.pool, &enqueued.message_id, &OPERATOR)
        .await
        .unwrap();
    assert_eq!(report.previous_state.as_str(), "received");
    let (_, counts) = report.completed.expect("completed at once: nothing ran");
    assert_eq!((report.items_skipped, counts.total), (0, 0));
    let done = completion(&mut events, &enqueued.message_id).await;
    assert_eq!(done["counts"]["total"], 0);
    assert_eq!(done["subject"]["ended_early"], CANCELLED);
    assert_eq!(done["ticket"]["reference"], TICKET);
    let detail = ops::show(&app.pool, &enqueued.message_id).await.unwrap();
    assert_eq!(detail.state.as_str(), "completed");
    assert_eq!(detail.ended_early.as_deref(), Some(CANCELLED));
    let _ = std::fs::remove_file(csv);
}

#[tokio::test]
async fn pause_resume_expedite_and_cancel_a_running_job() {
    // A slow tenant and small chunks, so that the job stays unfinished for a while.
    let mut simulator = SimulatorSettings::for_tests();
    simulator.latency_ms = 200;
    let mut app = spawn_app_with(AppOptions {
        simulator: Some(simulator),
        env: vec![
            ("ENGINE__CHUNK_SIZE".into(), "5".into()),
            ("ENGINE__CHUNK_CONCURRENCY".into(), "1".into()),
            ("ENGINE__LEASE_SECONDS".into(), "3".into()),
        ],
        ..AppOptions::default()
    })
    .await;
    let mut events = app.event_queue().await;
    seed_policy(&app, &mut events, "rx1-slow").await;
    let members = app.sim.seed_users("slow", 50);
    let csv = write_csv(&members);
    let enqueued = ops::enqueue_from_csv(
        &app.settings,
        &request(csv.clone(), "rx1-slow", EnqueueKind::MembersAdded),
    )
    .await
    .unwrap();
    let message_id = enqueued.message_id.clone();

    // Planned (items and chunks exist), then paused so that no more chunks start.
    wait_until(Duration::from_secs(20), "the job to be planned", || async {
        ops::show(&app.pool, &message_id)
            .await
            .is_ok_and(|d| d.total == Some(50))
    })
    .await;
    let paused = ops::pause(&app.pool, &message_id, &OPERATOR).await.unwrap();
    assert_eq!(paused.action, "paused");
    assert_eq!(paused.message_id, message_id);
    let detail = ops::show(&app.pool, &message_id).await.unwrap();
    assert!(detail.paused && !detail.expedited);
    assert_eq!(
        detail.chunks.pending + detail.chunks.running + detail.chunks.done,
        10
    );

    let (unfinished, _) = list(&app, Some(StateFilter::Unfinished), 10).await;
    assert_eq!(unfinished.len(), 1);
    assert!(unfinished[0].paused);

    assert!(
        !ops::resume(&app.pool, &message_id, &OPERATOR)
            .await
            .unwrap()
            .message_id
            .is_empty()
    );
    assert!(!ops::show(&app.pool, &message_id).await.unwrap().paused);

    let expedited = ops::expedite(&app.pool, &paused.id.to_string(), &OPERATOR)
        .await
        .unwrap();
    let detail = ops::show(&app.pool, &message_id).await.unwrap();
    assert!(detail.expedited);
    assert!(expedited.chunks_rescheduled.unwrap() >= 1);
    let later: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM job_chunks WHERE job_id = $1 AND state <> 'done'
           AND not_before > now()",
    )
    .bind(paused.id)
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(later, 0, "chunks not done still wait after expedite");

    ops::pause(&app.pool, &message_id, &OPERATOR).await.unwrap();
    let report = ops::cancel(&app.pool, &message_id, &OPERATOR)
        .await
        .unwrap();
    assert!(report.items_skipped > 0, "{report:?}");
    assert!(ops::render_cancel(&report).contains("skipped"));

    // Exactly one job.completed, once any running chunk has stopped, saying why it ended
    // early and counting every write that reached the tenant as `changed`.
    let done = completion(&mut events, &message_id).await;
    let counts = &done["counts"];
    assert_eq!(counts["total"], 50);
    assert_eq!(counts["failed"], 0);
    assert_eq!(done["outcome"], "succeeded");
    assert_eq!(done["subject"]["ended_early"], CANCELLED);
    assert_eq!(done["subject"]["policy_id"], "rx1-slow");
    assert_eq!(done["ticket"]["reference"], TICKET);
    let licensed = members
        .iter()
        .filter(|m| !app.sim.licences(m).is_empty())
        .count() as u64;
    assert_eq!(
        counts["changed"].as_u64().unwrap() + counts["already_compliant"].as_u64().unwrap(),
        licensed,
        "every user written is counted: {counts}"
    );
    assert!(licensed < 50, "every member was written: {licensed}");
    if let Some((outcome, c)) = &report.completed {
        assert_eq!(outcome.as_str(), "succeeded");
        assert_eq!(c.skipped, report.items_skipped);
    }

    // Nothing reaches the tenant after the completion.
    let writes = app.sim.licence_writes();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(app.sim.licence_writes(), writes, "writes after the cancel");

    let more = events.drain(Duration::from_secs(1)).await;
    assert!(
        !more
            .iter()
            .any(|e| e["type"] == "job.completed" && e["source_message_id"] == message_id.as_str()),
        "a second job.completed: {more:?}"
    );
    let detail = ops::show(&app.pool, &message_id).await.unwrap();
    assert_eq!(detail.state.as_str(), "completed");
    assert_eq!(detail.outcome.as_deref(), Some("succeeded"));
    assert_eq!(detail.ended_early.as_deref(), Some(CANCELLED));
    assert_eq!(detail.items.pending, 0);
    assert_eq!(
        detail.items.skipped as u64,
        counts["skipped"].as_u64().unwrap()
    );
    assert_eq!(detail.chunks.done, 10);
    let skipped: Vec<(Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT DISTINCT failure_code, detail FROM job_items
         WHERE job_id = $1 AND outcome = 'skipped'",
    )
    .bind(report.id)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        skipped,
        [(Some("cancelled".to_owned()), Some(CANCELLED.to_owned()))]
    );
    // The ticket lists what was not done.
    let listed = done["failures"].as_array().unwrap();
    assert_eq!(listed.len() as u64, counts["skipped"].as_u64().unwrap());
    assert!(listed.iter().all(|f| f["code"] == "cancelled"));
    let _ = std::fs::remove_file(csv);
}

#[tokio::test]
async fn publish_sends_a_file_as_it_is() {
    use policy_reconciler::ops::enqueue::publish_file;

    let mut app = crate::helpers::spawn_app().await;
    let mut events = app.event_queue().await;
    let members = app.sim.seed_users("file", 3);
    let dir = std::env::temp_dir();

    // A complete policy.changed from a file: routed by its type and reconciled.
    let job = app.job(
        "policy.changed",
        serde_json::json!({ "policy": { "id": "rx1-file", "name": "From a file", "ods_code": "RX1",
            "version": 1, "licence": "ENTERPRISEPACK", "toggles": { "TEAMS1": true } },
            "members": members, "total_members": 3 }),
    );
    let path = dir.join(format!("job-{}.json", app.id));
    std::fs::write(&path, job.to_string()).unwrap();
    let published = publish_file(&app.settings, &path, None).await.unwrap();
    assert_eq!(published.routing_key, "policy.changed");
    assert_eq!(published.message_id.as_deref(), job["message_id"].as_str());
    let done = loop {
        let event = events
            .next(std::time::Duration::from_secs(30))
            .await
            .expect("completion");
        if event["type"] == "job.completed" {
            break event;
        }
    };
    assert_eq!(done["source_message_id"], job["message_id"]);
    assert_eq!(done["counts"]["changed"], 3);

    // A body that is not a job needs a routing key, and is dead-lettered with its code.
    let bad = dir.join(format!("bad-{}.json", app.id));
    std::fs::write(&bad, b"not json at all").unwrap();
    assert!(publish_file(&app.settings, &bad, None).await.is_err());
    publish_file(&app.settings, &bad, Some("policy.changed"))
        .await
        .unwrap();
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.error.as_deref(), Some("invalid_message"));
    assert_eq!(dead.body, b"not json at all");
    let _ = std::fs::remove_file(path);
    let _ = std::fs::remove_file(bad);
}

//! Ingest: store, commit, then ack; duplicates; dead letters with coded headers.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::json;

use crate::helpers::spawn_app;

fn members_added() -> serde_json::Value {
    json!({ "policy_id": "rx1-standard", "members": ["c.three@nhs.net"], "total_members": 1 })
}

#[tokio::test]
async fn a_published_job_is_stored_then_acknowledged() {
    let mut app = spawn_app().await;
    let job = app.job("policy.members_added", members_added());
    app.publish_job(&job).await;
    app.wait_for_jobs(1).await;

    let (message_id, job_type, state, outcome): (String, String, String, Option<String>) =
        sqlx::query_as("SELECT message_id, job_type, state, outcome FROM jobs")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(message_id, job["message_id"].as_str().unwrap());
    assert_eq!(job_type, "policy.members_added");
    assert_eq!(state, "received");
    assert_eq!(outcome, None);
    let (ticket, payload): (serde_json::Value, serde_json::Value) =
        sqlx::query_as("SELECT ticket, payload FROM jobs")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(ticket, job["ticket"]);
    assert_eq!(payload, job["payload"]);
    let inbox: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox WHERE disposition = 'job'")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert_eq!(inbox, 1);

    // Acknowledged: once the worker is gone, nothing returns to the queue.
    app.stop_workers();
    let queue = app
        .channel
        .queue_declare(
            app.settings.broker.topology.jobs_queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap();
    assert_eq!(queue.message_count(), 0);
}

#[tokio::test]
async fn the_same_message_id_twice_yields_one_job() {
    let app = spawn_app().await;
    let job = app.job("policy.members_added", members_added());
    app.publish_job(&job).await;
    app.publish_job(&job).await;
    // A later, different job: once it is stored, both copies were handled.
    let marker = app.job("policy.members_added", members_added());
    app.publish_job(&marker).await;
    app.wait_for_jobs(2).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let jobs = app.jobs().await;
    assert_eq!(jobs.len(), 2, "{jobs:?}");
    let copies = jobs
        .iter()
        .filter(|j| j.0 == job["message_id"].as_str().unwrap())
        .count();
    assert_eq!(copies, 1);
}

#[tokio::test]
async fn bad_messages_are_dead_lettered_with_their_code_and_the_next_is_processed() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;

    // Not JSON.
    app.publish_raw(
        "policy.changed",
        b"{ this is not json",
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.error.as_deref(), Some("invalid_message"));
    assert!(dead.detail.unwrap().contains("not JSON"));
    assert_eq!(dead.body, b"{ this is not json");

    // Unknown type: the job is known by its message_id, so a rejection resolves its ticket.
    let unknown = app.job("policy.exploded", json!({}));
    app.publish_job(&unknown).await;
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.error.as_deref(), Some("unknown_type"));
    assert!(dead.detail.unwrap().contains("policy.exploded"));

    // A missing required field.
    let missing = app.job(
        "policy.members_added",
        json!({ "policy_id": "rx1-standard", "total_members": 1 }),
    );
    app.publish_job(&missing).await;
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.error.as_deref(), Some("missing_field"));
    assert!(dead.detail.unwrap().contains("members"));

    // The worker is still consuming.
    let valid = app.job("policy.members_added", members_added());
    app.publish_job(&valid).await;
    app.wait_for_jobs(3).await;
    let jobs = app.jobs().await;
    let find = |id: &serde_json::Value| {
        jobs.iter()
            .find(|j| j.0 == id.as_str().unwrap())
            .cloned()
            .unwrap()
    };
    assert_eq!(find(&valid["message_id"]).2, "received");
    assert_eq!(find(&unknown["message_id"]).3.as_deref(), Some("rejected"));
    assert_eq!(find(&missing["message_id"]).3.as_deref(), Some("rejected"));

    // Exactly one rejected completion per known job, carrying its ticket and failure code.
    let mut completed = Vec::new();
    while completed.len() < 2 {
        let event = events
            .next(Duration::from_secs(10))
            .await
            .expect("a job.completed for each rejected message");
        completed.push(event);
    }
    completed.sort_by_key(|e| e["source_message_id"].as_str().map(str::to_owned));
    for event in &completed {
        assert_eq!(event["type"], "job.completed");
        assert_eq!(event["outcome"], "rejected");
        assert_eq!(event["ticket"], unknown["ticket"]);
        assert_eq!(event["failures"].as_array().unwrap().len(), 1);
    }
    let codes: Vec<_> = completed
        .iter()
        .map(|e| {
            (
                e["source_message_id"].as_str().unwrap().to_owned(),
                e["failures"][0]["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert!(codes.contains(&(
        unknown["message_id"].as_str().unwrap().into(),
        "unknown_type".into()
    )));
    assert!(codes.contains(&(
        missing["message_id"].as_str().unwrap().into(),
        "missing_field".into()
    )));
    assert!(events.drain(Duration::from_millis(500)).await.is_empty());
}

#[tokio::test]
async fn a_message_id_property_that_differs_from_the_body_is_rejected() {
    let app = spawn_app().await;
    let job = app.job("policy.members_added", members_added());
    app.publish_raw(
        "policy.members_added",
        job.to_string().as_bytes(),
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id("something-else".into()),
    )
    .await;
    let dead = app.next_dead_letter().await;
    assert_eq!(dead.error.as_deref(), Some("invalid_message"));
    assert!(dead.detail.unwrap().contains("differs"));
}

#[tokio::test]
async fn jobs_published_while_the_worker_is_dead_are_stored_by_its_replacement() {
    let mut app = spawn_app().await;
    let first = app.job("policy.members_added", members_added());
    app.publish_job(&first).await;
    app.wait_for_jobs(1).await;

    app.kill_worker(0);
    let second = app.job("policy.members_added", members_added());
    app.publish_job(&second).await;

    app.start_worker().await;
    app.wait_ready().await;
    app.wait_for_jobs(2).await;
    let ids: Vec<String> = app.jobs().await.into_iter().map(|j| j.0).collect();
    assert_eq!(
        ids,
        vec![
            first["message_id"].as_str().unwrap().to_owned(),
            second["message_id"].as_str().unwrap().to_owned()
        ]
    );
}

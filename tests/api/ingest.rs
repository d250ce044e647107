//! Ingest: store, commit, then ack; duplicates; dead letters with coded headers.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::json;

use crate::helpers::{TestApp, spawn_app};

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
    let dead = app
        .publish_raw_refused_by_schema(
            "policy.changed",
            b"{ this is not json",
            BasicProperties::default().with_delivery_mode(2),
        )
        .await;
    assert_eq!(dead.error.as_deref(), Some("invalid_message"));
    assert!(dead.detail.unwrap().contains("not JSON"));
    assert_eq!(dead.body, b"{ this is not json");

    // Unknown type: the job is known by its message_id, so a rejection resolves its ticket.
    let unknown = app.job("policy.exploded", json!({}));
    let dead = app.publish_job_refused_by_schema(&unknown).await;
    assert_eq!(dead.error.as_deref(), Some("unknown_type"));
    assert!(dead.detail.unwrap().contains("policy.exploded"));

    // A missing required field.
    let missing = app.job(
        "policy.members_added",
        json!({ "policy_id": "rx1-standard", "total_members": 1 }),
    );
    let dead = app.publish_job_refused_by_schema(&missing).await;
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

/// A message the database cannot store: one dead letter with `x-reconciler-error`, and a
/// `job.completed` (`rejected`) when its `message_id` can be read.
struct Unstorable {
    body: String,
    /// How the detail starts: the field, then the rule.
    detail: &'static str,
    /// `None` when the `message_id` itself is unreadable: the dead letter alone.
    message_id: Option<String>,
}

impl Unstorable {
    fn new(job: &serde_json::Value, body: String, detail: &'static str) -> Self {
        Self {
            body,
            detail,
            message_id: Some(job["message_id"].as_str().unwrap().to_owned()),
        }
    }
}

/// The envelope `job` as text, with `"PLACEHOLDER"` (quotes included) replaced by `raw`: JSON
/// text that serde_json would not write itself (a lone surrogate, deep nesting).
fn with_raw(job: &serde_json::Value, raw: &str) -> String {
    let text = job.to_string();
    assert!(text.contains("\"PLACEHOLDER\""));
    text.replace("\"PLACEHOLDER\"", raw)
}

/// Publish each message and check its one dead letter and its completion; then show that the
/// worker goes on (a valid job is stored) and that nothing else was dead-lettered, requeued or
/// published: no redelivery loop. Returns the completions, in the order of `cases`.
async fn assert_rejected_once(app: &mut TestApp, cases: Vec<Unstorable>) -> Vec<serde_json::Value> {
    let mut events = app.event_queue().await;
    let mut completions = Vec::new();
    for case in &cases {
        let dead = app
            .publish_raw_refused_by_schema(
                "policy.members_added",
                case.body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await;
        assert_eq!(
            dead.error.as_deref(),
            Some("invalid_message"),
            "{}",
            case.detail
        );
        let detail = dead.detail.unwrap();
        assert!(detail.starts_with(case.detail), "{detail}");
        assert_eq!(
            dead.body,
            case.body.as_bytes(),
            "the dead letter is the original body"
        );
        if let Some(id) = &case.message_id {
            let done = events.next_of("job.completed", id).await;
            assert_eq!(done["outcome"], "rejected");
            assert_eq!(done["failures"][0]["code"], "invalid_message");
            let stored_detail = done["failures"][0]["detail"].as_str().unwrap();
            assert!(stored_detail.starts_with(case.detail), "{stored_detail}");
            let stored: (String, Option<String>) =
                sqlx::query_as("SELECT state, outcome FROM jobs WHERE message_id = $1")
                    .bind(id)
                    .fetch_one(&app.pool)
                    .await
                    .unwrap();
            assert_eq!(stored, ("completed".into(), Some("rejected".into())));
            completions.push(done);
        }
    }

    let valid = app.job("policy.members_added", members_added());
    app.publish_job(&valid).await;
    let valid_id = valid["message_id"].as_str().unwrap();
    crate::kit::wait_until(Duration::from_secs(20), "the valid job stored", || async {
        app.jobs().await.iter().any(|j| j.0 == valid_id)
    })
    .await;
    let rejected = cases.iter().filter(|c| c.message_id.is_some()).count();
    assert_eq!(app.jobs().await.len(), rejected + 1);
    // No copy comes back: both queues are empty, and no other completion was published.
    for queue in [
        &app.settings.broker.topology.dead_letter_queue,
        &app.settings.broker.topology.jobs_queue,
    ] {
        let declared = app
            .channel
            .queue_declare(
                queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        assert_eq!(declared.message_count(), 0, "{queue}");
    }
    let rest = events.drain(Duration::from_millis(500)).await;
    assert!(
        rest.iter().all(|e| e["type"] != "job.completed"),
        "{rest:?}"
    );
    completions
}

#[tokio::test]
async fn a_nul_character_is_one_coded_dead_letter_and_one_rejected_completion() {
    let mut app = spawn_app().await;
    let in_member = app.job(
        "policy.members_added",
        json!({ "policy_id": "rx1-standard", "members": ["a@nhs.net", "b\u{0}@nhs.net"], "total_members": 2 }),
    );
    // serde_json writes a NUL character as the escape `\u0000`: valid JSON.
    assert!(in_member.to_string().contains("\\u0000"));
    let mut in_ticket = app.job("policy.members_added", members_added());
    in_ticket["ticket"]["reference"] = json!("INC\u{0}1");
    let mut in_message_id = app.job("policy.members_added", members_added());
    in_message_id["message_id"] = json!("m\u{0}1");
    let mut in_key = app.job("policy.members_added", members_added());
    in_key["payload"]["note\u{0}"] = json!(1);
    let cases = vec![
        Unstorable::new(
            &in_member,
            in_member.to_string(),
            "payload.members[1] contains a NUL",
        ),
        Unstorable::new(
            &in_ticket,
            in_ticket.to_string(),
            "ticket.reference contains a NUL",
        ),
        Unstorable {
            body: in_message_id.to_string(),
            detail: "message_id contains a NUL",
            message_id: None,
        },
        Unstorable::new(
            &in_key,
            in_key.to_string(),
            "payload.note\\u0000 (an object key) contains a NUL",
        ),
    ];
    let done = assert_rejected_once(&mut app, cases).await;
    // The rejection resolves the ticket it could read, the NUL replaced (and says so).
    assert_eq!(done[0]["ticket"], in_member["ticket"]);
    assert_eq!(done[1]["ticket"]["reference"], "INC\u{fffd}1");
    assert_eq!(
        done[1]["ticket"]["originator"],
        in_ticket["ticket"]["originator"]
    );
    assert!(
        done[1]["failures"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("U+FFFD")
    );
}

#[tokio::test]
async fn a_lone_surrogate_or_a_100_000_deep_field_is_one_coded_dead_letter() {
    let mut app = spawn_app().await;
    let email = app.job(
        "policy.members_added",
        json!({ "policy_id": "rx1-standard", "members": ["PLACEHOLDER"], "total_members": 1 }),
    );
    let email_body = with_raw(&email, "\"a\\ud800@nhs.net\"");
    let mut ticket = app.job("policy.members_added", members_added());
    ticket["ticket"]["originator"] = json!("PLACEHOLDER");
    let ticket_body = with_raw(&ticket, "\"\\udc00@nhs.net\"");
    let mut message_id = app.job("policy.members_added", members_added());
    message_id["message_id"] = json!("PLACEHOLDER");
    let message_id_body = with_raw(&message_id, "\"m-\\ud800\"");
    let mut deep = app.job("policy.members_added", members_added());
    deep["payload"]["extra"] = json!("PLACEHOLDER");
    let levels = 100_000;
    let deep_body = with_raw(
        &deep,
        &format!("{}1{}", "[".repeat(levels), "]".repeat(levels)),
    );
    // serde_json, too, refuses to read the deep body as a value (recursion limit): it is
    // valid JSON only to a reader without one.
    assert!(serde_json::from_str::<serde_json::Value>(&deep_body).is_err());
    let cases = vec![
        Unstorable::new(
            &email,
            email_body,
            "payload.members[0] contains a lone UTF-16 surrogate",
        ),
        Unstorable::new(
            &ticket,
            ticket_body,
            "ticket.originator contains a lone UTF-16 surrogate",
        ),
        Unstorable {
            body: message_id_body,
            detail: "message_id contains a lone UTF-16 surrogate",
            message_id: None,
        },
        Unstorable::new(&deep, deep_body, "payload.extra[0][0]"),
    ];
    let done = assert_rejected_once(&mut app, cases).await;
    assert!(
        done[2]["failures"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("nested deeper than 32 levels")
    );
}

#[tokio::test]
async fn an_oversized_value_is_rejected_at_ingest_naming_the_field_and_the_limit() {
    let mut app = spawn_app().await;
    // 8 KB of incompressible text: as a policy id, no B-tree index row could hold it.
    let policy_id: String = (0..8_192)
        .map(|i| char::from(b'a' + ((i * 7919 + i / 26) % 26) as u8))
        .collect();
    let oversized = app.job(
        "policy.members_added",
        json!({ "policy_id": policy_id, "members": ["a@nhs.net"], "total_members": 1 }),
    );
    let cases = vec![Unstorable::new(
        &oversized,
        oversized.to_string(),
        "payload.policy_id is 8192 bytes long; an identifier may have at most 255 bytes",
    )];
    let done = assert_rejected_once(&mut app, cases).await;
    assert_eq!(done[0]["ticket"], oversized["ticket"]);
    assert_eq!(done[0]["job_type"], "policy.members_added");
}

#[tokio::test]
async fn the_ticket_is_carried_byte_for_byte_on_every_event() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let ticket = r#"{"reference":"INC1","originator":"a@b","priority":"P2"}"#;
    let mut job = app.job(
        "portal_access.activated",
        json!({ "contact_ids": ["c-unknown"] }),
    );
    job["ticket"] = json!("PLACEHOLDER");
    let body = with_raw(&job, ticket);
    let message_id = job["message_id"].as_str().unwrap().to_owned();
    app.publish_raw(
        "portal_access.activated",
        body.as_bytes(),
        BasicProperties::default().with_delivery_mode(2),
    )
    .await;

    let mut seen = std::collections::BTreeMap::new();
    while seen.len() < 2 {
        let raw = events
            .next_raw(Duration::from_secs(30))
            .await
            .expect("job.accepted and job.completed");
        let event: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(event["source_message_id"], message_id.as_str());
        seen.insert(event["type"].as_str().unwrap().to_owned(), raw);
    }
    for (event_type, raw) in &seen {
        let text = String::from_utf8(raw.clone()).unwrap();
        assert!(
            text.contains(&format!(r#""ticket":{ticket}"#)),
            "{event_type} carries the ticket as sent: {text}"
        );
    }
    assert_eq!(
        seen.keys().collect::<Vec<_>>(),
        ["job.accepted", "job.completed"]
    );
}

#[tokio::test]
async fn the_database_refusing_values_is_told_from_other_permanent_errors() {
    let app = spawn_app().await;
    let refused = |sql: &'static str, value: &'static str| {
        let pool = app.pool.clone();
        async move {
            let error = sqlx::query(sql)
                .bind(value)
                .execute(&pool)
                .await
                .unwrap_err();
            policy_reconciler::store::StoreError::from(error)
        }
    };
    let nul = refused("SELECT $1::text", "a\u{0}b").await;
    assert!(!nul.is_transient() && nul.refuses_the_data(), "{nul}");
    let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000)).leak();
    let too_deep = refused("SELECT $1::jsonb", deep).await;
    assert!(too_deep.refuses_the_data(), "{too_deep}");
    let schema = refused("SELECT * FROM no_such_table WHERE $1::text IS NULL", "a").await;
    assert!(
        !schema.is_transient() && !schema.refuses_the_data(),
        "{schema}"
    );
}

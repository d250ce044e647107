//! Portal access end to end: batches granted through RabbitMQ, invitations and reminders as
//! `notification.email` events, and the contacts stored in PostgreSQL.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{TestApp, spawn_app};
use crate::kit::broker::EventQueue;

fn contact(id: &str, name: &str, email: Option<&str>, council: &str) -> Value {
    json!({ "contact_id": id, "name": name, "type": "individual", "email": email,
            "council": council, "member": true, "clerk_until": null,
            "has_portal_access": false })
}

fn with(mut contact: Value, field: &str, value: Value) -> Value {
    contact[field] = value;
    contact
}

fn grant(label: &str, contacts: &[Value]) -> Value {
    json!({ "batch_label": label, "contacts": contacts })
}

/// Publish `job`, wait for its `job.completed`, and return it with every other event of the
/// job (events of the job arrive before its completion; a short quiet wait catches stragglers
/// from other relays anyway).
async fn run(app: &TestApp, events: &mut EventQueue, job: &Value) -> (Value, Vec<Value>) {
    app.publish_job(job).await;
    let message_id = &job["message_id"];
    let mut of_job = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let completed = loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let event = events
            .next(left)
            .await
            .unwrap_or_else(|| panic!("no job.completed for {message_id}"));
        if event["source_message_id"] != *message_id {
            continue;
        }
        if event["type"] == "job.completed" {
            break event;
        }
        of_job.push(event);
    };
    for event in events.drain(Duration::from_millis(300)).await {
        assert_ne!(
            event["type"], "job.completed",
            "a second completion: {event}"
        );
        if event["source_message_id"] == *message_id {
            of_job.push(event);
        }
    }
    (completed, of_job)
}

/// The `notification.email` events among `events` with `template`, by recipient.
fn emails(events: &[Value], template: &str) -> BTreeMap<String, Value> {
    let mut by_recipient = BTreeMap::new();
    for event in events.iter().filter(|e| e["type"] == "notification.email") {
        assert_eq!(event["template"], template, "{event}");
        let to = event["to"].as_str().unwrap().to_owned();
        assert!(
            by_recipient.insert(to.clone(), event.clone()).is_none(),
            "two emails to {to}"
        );
    }
    by_recipient
}

fn recipients(emails: &BTreeMap<String, Value>) -> Vec<&str> {
    emails.keys().map(String::as_str).collect()
}

/// `failures` as (item, code) pairs.
fn failures(completed: &Value) -> BTreeSet<(String, String)> {
    completed["failures"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["item"].as_str().unwrap().to_owned(),
                f["code"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> BTreeSet<(String, String)> {
    list.iter()
        .map(|(i, c)| (i.to_string(), c.to_string()))
        .collect()
}

fn dry(mut job: Value) -> Value {
    job["dry_run"] = json!(true);
    job
}

/// Stored contacts: id -> (email, invited_by_job).
async fn stored(app: &TestApp) -> BTreeMap<String, (Option<String>, Option<Uuid>)> {
    let rows: Vec<(String, Option<String>, Option<Uuid>)> =
        sqlx::query_as("SELECT contact_id, email, invited_by_job FROM portal_contacts")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    rows.into_iter()
        .map(|(id, email, job)| (id, (email, job)))
        .collect()
}

fn job_id(completed: &Value) -> Uuid {
    completed["job_id"].as_str().unwrap().parse().unwrap()
}

/// The A-B batch: every exclusion rule, and three eligible contacts.
fn batch_a_b() -> Vec<Value> {
    vec![
        contact(
            "c-01",
            "Alice Able",
            Some("alice@aparish.gov.uk"),
            "Aparish PC",
        ),
        with(
            contact(
                "c-02",
                "Bob Brook",
                Some("Bob.Brook@BParish.gov.uk"),
                "Bparish PC",
            ),
            "clerk_until",
            // Relative to the worker's clock, the system's (tests/kit/time.rs, rule 2).
            json!(crate::kit::time::today().plus(365).iso()),
        ),
        // The council's own record, with its clerk's address: excluded, and no duplicate.
        with(
            contact(
                "c-03",
                "Aparish Parish Council",
                Some("alice@aparish.gov.uk"),
                "Aparish PC",
            ),
            "type",
            json!("organisation"),
        ),
        contact("c-04", "Ann Nomail", None, "Ambridge PC"),
        contact(
            "c-05",
            "Arthur Shared",
            Some("shared@clerks.org.uk"),
            "Ashby PC",
        ),
        contact(
            "c-06",
            "Betty Shared",
            Some("SHARED@clerks.org.uk"),
            "Bexley PC",
        ),
        with(
            contact(
                "c-07",
                "Alan Outsider",
                Some("alan@aston.gov.uk"),
                "Aston PC",
            ),
            "member",
            json!(false),
        ),
        with(
            contact("c-08", "Beth Former", Some("beth@bures.gov.uk"), "Bures PC"),
            "clerk_until",
            json!(crate::kit::time::today().plus(-1).iso()),
        ),
        with(
            contact(
                "c-09",
                "Bill Pilot",
                Some("bill@bacton.gov.uk"),
                "Bacton PC",
            ),
            "has_portal_access",
            json!(true),
        ),
        // Same address as c-90 of the earlier pilot batch, for another council.
        contact(
            "c-10",
            "Barry Again",
            Some("barry@bparish.gov.uk"),
            "Bramford PC",
        ),
        contact("c-11", "Anna Typo", Some("anna at aparish"), "Acton PC"),
        // An organisation without email: the first rule wins.
        with(
            contact("c-12", "Bildeston Town Council", None, "Bildeston TC"),
            "type",
            json!("organisation"),
        ),
        // Invited by the pilot batch already.
        contact(
            "c-91",
            "Cara Invited",
            Some("cara@cparish.gov.uk"),
            "Cparish PC",
        ),
        contact("c-14", "Ben Valid", Some("ben@bmere.gov.uk"), "Bmere PC"),
    ]
}

fn pilot_batch() -> Vec<Value> {
    vec![
        contact(
            "c-90",
            "Barry Earlier",
            Some("barry@bparish.gov.uk"),
            "Bparish PC",
        ),
        contact(
            "c-91",
            "Cara Invited",
            Some("cara@cparish.gov.uk"),
            "Cparish PC",
        ),
    ]
}

const A_B_EXCLUSIONS: &[(&str, &str)] = &[
    ("c-03", "not_an_individual"),
    ("c-04", "missing_email"),
    ("c-05", "duplicate_email"),
    ("c-06", "duplicate_email"),
    ("c-07", "not_member"),
    ("c-08", "clerk_term_ended"),
    ("c-09", "already_has_access"),
    ("c-10", "duplicate_email"),
    ("c-11", "invalid_email"),
    ("c-12", "not_an_individual"),
    ("c-91", "already_has_access"),
];

#[tokio::test]
async fn a_batch_invites_exactly_the_eligible_contacts_and_reports_every_exclusion() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;

    // An earlier batch: both invited.
    let pilot = app.job("portal_access.grant", grant("pilot", &pilot_batch()));
    let (done, of_pilot) = run(&app, &mut events, &pilot).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 2);
    let invited = emails(&of_pilot, "portal_invitation");
    assert_eq!(
        recipients(&invited),
        vec!["barry@bparish.gov.uk", "cara@cparish.gov.uk"]
    );
    let pilot_job = job_id(&done);

    // The A-B batch: exactly the three eligible contacts are invited, once each.
    let a_b = app.job("portal_access.grant", grant("A-B", &batch_a_b()));
    let (done, of_a_b) = run(&app, &mut events, &a_b).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["job_type"], "portal_access.grant");
    assert_eq!(done["dry_run"], false);
    assert_eq!(done["ticket"], a_b["ticket"]);
    assert_eq!(
        done["counts"],
        json!({ "total": 14, "changed": 3, "already_compliant": 0, "failed": 0, "skipped": 11 })
    );
    assert_eq!(
        done["subject"],
        json!({ "batch_label": "A-B", "contacts": 14, "invited": 3,
                "excluded": { "not_an_individual": 2, "missing_email": 1, "invalid_email": 1,
                              "duplicate_email": 3, "not_member": 1, "clerk_term_ended": 1,
                              "already_has_access": 2 } })
    );
    assert_eq!(failures(&done), pairs(A_B_EXCLUSIONS));
    assert_eq!(done["failures_truncated"], false);
    let detail = |item: &str| -> String {
        done["failures"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["item"] == item)
            .unwrap()["detail"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(
        detail("c-05").contains("c-06 (Bexley PC)"),
        "{}",
        detail("c-05")
    );
    assert!(
        detail("c-10").contains("c-90 (Bparish PC, an earlier batch)"),
        "{}",
        detail("c-10")
    );
    assert!(detail("c-04").starts_with("Ann Nomail (Ambridge PC)"));

    let invited = emails(&of_a_b, "portal_invitation");
    assert_eq!(
        recipients(&invited),
        vec![
            "alice@aparish.gov.uk",
            "ben@bmere.gov.uk",
            "bob.brook@bparish.gov.uk"
        ]
    );
    assert_eq!(of_a_b.len(), 3 + 1, "three invitations and job.accepted");
    let alice = &invited["alice@aparish.gov.uk"];
    assert_eq!(
        alice["data"],
        json!({ "contact_id": "c-01", "name": "Alice Able", "council": "Aparish PC",
                "batch_label": "A-B" })
    );
    assert_eq!(alice["job_id"], done["job_id"]);
    assert_eq!(alice["ticket"], a_b["ticket"]);
    assert_eq!(alice["schema_version"], 1);
    assert!(alice["event_id"].is_string() && alice["occurred_at"].is_string());

    // Stored: every contact of both batches, emails lower-cased, invited by their batch.
    let a_b_job = job_id(&done);
    let rows = stored(&app).await;
    assert_eq!(rows.len(), 15, "{rows:?}");
    let invited_by: BTreeMap<&str, Uuid> = rows
        .iter()
        .filter_map(|(id, (_, job))| job.map(|j| (id.as_str(), j)))
        .collect();
    assert_eq!(
        invited_by,
        BTreeMap::from([
            ("c-01", a_b_job),
            ("c-02", a_b_job),
            ("c-14", a_b_job),
            ("c-90", pilot_job),
            ("c-91", pilot_job),
        ])
    );
    assert_eq!(rows["c-02"].0.as_deref(), Some("bob.brook@bparish.gov.uk"));
    assert_eq!(rows["c-06"].0.as_deref(), Some("shared@clerks.org.uk"));
    assert_eq!(rows["c-04"].0, None);
    let coded: Vec<(String, Option<String>)> = sqlx::query_as(
        "SELECT outcome, failure_code FROM job_items WHERE job_id = $1 AND item = 'c-07'",
    )
    .bind(a_b_job)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        coded,
        vec![("skipped".to_owned(), Some("not_member".to_owned()))]
    );

    // The same batch under a new message_id: nobody is invited again.
    let again = app.job("portal_access.grant", grant("A-B", &batch_a_b()));
    let (done, of_again) = run(&app, &mut events, &again).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert!(emails(&of_again, "portal_invitation").is_empty());
    assert_eq!(
        done["counts"],
        json!({ "total": 14, "changed": 0, "already_compliant": 0, "failed": 0, "skipped": 14 })
    );
    let mut expected = pairs(A_B_EXCLUSIONS);
    expected.extend(pairs(&[
        ("c-01", "already_has_access"),
        ("c-02", "already_has_access"),
        ("c-14", "already_has_access"),
    ]));
    assert_eq!(failures(&done), expected);
    assert_eq!(done["subject"]["invited"], 0);
    assert_eq!(done["subject"]["excluded"]["already_has_access"], 5);
    assert_eq!(stored(&app).await, rows, "nothing changed");
    let sent: i64 =
        sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'notification.email'")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(sent, 5, "two pilot and three A-B invitations in all");
}

#[tokio::test]
async fn reminders_go_only_to_invited_contacts_not_yet_activated() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let batch = vec![
        contact("c-1", "Ada", Some("ada@a.gov.uk"), "A PC"),
        contact("c-2", "Bea", Some("bea@b.gov.uk"), "B PC"),
        contact("c-3", "Cal", Some("cal@c.gov.uk"), "C PC"),
        contact("c-4", "Dot", None, "D PC"),
    ];
    let job = app.job("portal_access.grant", grant("A-D", &batch));
    let (done, _) = run(&app, &mut events, &job).await;
    assert_eq!(done["counts"]["changed"], 3, "{done}");

    // Activation: recorded once; an unknown contact fails.
    let job = app.job(
        "portal_access.activated",
        json!({ "contact_ids": ["c-1", "c-404"] }),
    );
    let (done, of_job) = run(&app, &mut events, &job).await;
    assert_eq!(done["outcome"], "partially_succeeded", "{done}");
    assert_eq!(
        done["counts"],
        json!({ "total": 2, "changed": 1, "already_compliant": 0, "failed": 1, "skipped": 0 })
    );
    assert_eq!(failures(&done), pairs(&[("c-404", "unknown_contact")]));
    assert!(of_job.iter().all(|e| e["type"] != "notification.email"));
    let activated: Vec<String> =
        sqlx::query_scalar("SELECT contact_id FROM portal_contacts WHERE activated_at IS NOT NULL")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(activated, vec!["c-1"]);
    let job = app.job("portal_access.activated", json!({ "contact_ids": ["c-1"] }));
    let (done, _) = run(&app, &mut events, &job).await;
    assert_eq!(done["counts"]["already_compliant"], 1, "{done}");

    // Everyone invited and not activated.
    let job = app.job("portal_access.remind", json!({ "contact_ids": [] }));
    let (done, of_job) = run(&app, &mut events, &job).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(
        done["subject"],
        json!({ "contacts": 2, "scope": "all_not_activated" })
    );
    assert_eq!(done["counts"]["changed"], 2);
    let reminded = emails(&of_job, "portal_invitation_reminder");
    assert_eq!(recipients(&reminded), vec!["bea@b.gov.uk", "cal@c.gov.uk"]);
    assert_eq!(reminded["bea@b.gov.uk"]["data"]["contact_id"], "c-2");
    assert_eq!(reminded["bea@b.gov.uk"]["data"]["batch_label"], "A-D");
    assert_eq!(reminded["bea@b.gov.uk"]["ticket"], job["ticket"]);

    // A list: only the invited, not activated one (listed twice) gets one reminder.
    let job = app.job(
        "portal_access.remind",
        json!({ "contact_ids": ["c-1", "c-4", "c-2", "c-2", "c-405"] }),
    );
    let (done, of_job) = run(&app, &mut events, &job).await;
    assert_eq!(done["outcome"], "partially_succeeded", "{done}");
    assert_eq!(
        done["counts"],
        json!({ "total": 4, "changed": 1, "already_compliant": 0, "failed": 1, "skipped": 2 })
    );
    assert_eq!(
        failures(&done),
        pairs(&[
            ("c-1", "already_activated"),
            ("c-4", "not_invited"),
            ("c-405", "unknown_contact"),
        ])
    );
    assert_eq!(
        recipients(&emails(&of_job, "portal_invitation_reminder")),
        vec!["bea@b.gov.uk"]
    );
    let sent: Vec<(String, i32)> = sqlx::query_as(
        "SELECT contact_id, reminders_sent FROM portal_contacts ORDER BY contact_id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        sent,
        vec![
            ("c-1".to_owned(), 0),
            ("c-2".to_owned(), 2),
            ("c-3".to_owned(), 1),
            ("c-4".to_owned(), 0)
        ]
    );
}

#[tokio::test]
async fn a_dry_run_grant_reports_the_same_and_invites_nobody() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let pilot = app.job("portal_access.grant", grant("pilot", &pilot_batch()));
    let (done, _) = run(&app, &mut events, &pilot).await;
    assert_eq!(done["counts"]["changed"], 2, "{done}");
    let before = stored(&app).await;

    let job = dry(app.job("portal_access.grant", grant("A-B", &batch_a_b())));
    let (done, of_job) = run(&app, &mut events, &job).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["dry_run"], true);
    assert_eq!(
        done["counts"],
        json!({ "total": 14, "changed": 3, "already_compliant": 0, "failed": 0, "skipped": 11 })
    );
    assert_eq!(done["subject"]["invited"], 3);
    assert_eq!(failures(&done), pairs(A_B_EXCLUSIONS));
    assert!(
        of_job.iter().all(|e| e["type"] != "notification.email"),
        "{of_job:?}"
    );
    assert_eq!(stored(&app).await, before, "a dry run stores nothing");

    // For real afterwards: the same three are invited (the dry run changed nothing).
    let job = app.job("portal_access.grant", grant("A-B", &batch_a_b()));
    let (done, of_job) = run(&app, &mut events, &job).await;
    assert_eq!(done["counts"]["changed"], 3, "{done}");
    assert_eq!(
        recipients(&emails(&of_job, "portal_invitation")),
        vec![
            "alice@aparish.gov.uk",
            "ben@bmere.gov.uk",
            "bob.brook@bparish.gov.uk"
        ]
    );
}

/// Rewind a completed job to what a worker crash right after the applier's transaction (and
/// before the engine recorded the outcomes) leaves: items without outcome, the chunk to do
/// again, the job running. The engine then applies the chunk a second time.
async fn rewind(app: &TestApp, job_id: Uuid) {
    let mut tx = app.pool.begin().await.unwrap();
    for statement in [
        "UPDATE job_items SET outcome = NULL, failure_code = NULL, detail = NULL,
                finished_at = NULL WHERE job_id = $1",
        "UPDATE job_chunks SET state = 'pending', lease_owner = NULL, lease_expires_at = NULL,
                finished_at = NULL WHERE job_id = $1",
        "UPDATE jobs SET state = 'running', outcome = NULL, completed_at = NULL WHERE id = $1",
    ] {
        sqlx::query(statement)
            .bind(job_id)
            .execute(&mut *tx)
            .await
            .unwrap();
    }
    tx.commit().await.unwrap();
}

/// The next `job.completed` of `message_id`, with the job's other events before it.
async fn next_completion(events: &mut EventQueue, message_id: &Value) -> (Value, Vec<Value>) {
    let mut of_job = Vec::new();
    loop {
        let event = events
            .next(Duration::from_secs(60))
            .await
            .unwrap_or_else(|| panic!("no job.completed for {message_id}"));
        if event["source_message_id"] != *message_id {
            continue;
        }
        if event["type"] == "job.completed" {
            return (event, of_job);
        }
        of_job.push(event);
    }
}

async fn emails_in_outbox(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = 'notification.email'")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_chunk_applied_again_sends_no_second_invitation_or_reminder() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let batch = vec![
        contact("c-1", "Ada", Some("ada@a.gov.uk"), "A PC"),
        contact("c-2", "Bea", Some("bea@b.gov.uk"), "B PC"),
        contact("c-3", "Cal", None, "C PC"),
    ];
    let job = app.job("portal_access.grant", grant("A-C", &batch));
    let (done, _) = run(&app, &mut events, &job).await;
    assert_eq!(done["counts"]["changed"], 2, "{done}");
    assert_eq!(emails_in_outbox(&app).await, 2);

    // Applied again: this job invited them, so they count as changed, and nothing is sent.
    rewind(&app, job_id(&done)).await;
    let (done, of_job) = next_completion(&mut events, &job["message_id"]).await;
    assert_eq!(
        done["counts"],
        json!({ "total": 3, "changed": 2, "already_compliant": 0, "failed": 0, "skipped": 1 })
    );
    assert!(of_job.iter().all(|e| e["type"] != "notification.email"));
    assert_eq!(emails_in_outbox(&app).await, 2);

    let job = app.job("portal_access.remind", json!({ "contact_ids": [] }));
    let (done, of_job) = run(&app, &mut events, &job).await;
    assert_eq!(done["counts"]["changed"], 2, "{done}");
    assert_eq!(emails(&of_job, "portal_invitation_reminder").len(), 2);
    rewind(&app, job_id(&done)).await;
    let (done, of_job) = next_completion(&mut events, &job["message_id"]).await;
    assert_eq!(done["counts"]["changed"], 2, "{done}");
    assert!(of_job.iter().all(|e| e["type"] != "notification.email"));
    assert_eq!(emails_in_outbox(&app).await, 4);
    let reminded: Vec<i32> =
        sqlx::query_scalar("SELECT reminders_sent FROM portal_contacts ORDER BY contact_id")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(reminded, vec![1, 1, 0]);
}

#[tokio::test]
async fn a_batch_naming_a_contact_twice_is_rejected_and_stores_nothing() {
    let mut app = spawn_app().await;
    let mut events = app.event_queue().await;
    let batch = vec![
        contact("c-1", "Ada", Some("ada@a.gov.uk"), "A PC"),
        contact("c-1", "Ada Again", Some("ada2@a.gov.uk"), "A PC"),
    ];
    let job = app.job("portal_access.grant", grant("A", &batch));
    let (done, of_job) = run(&app, &mut events, &job).await;
    assert_eq!(done["outcome"], "rejected", "{done}");
    assert_eq!(failures(&done), pairs(&[("c-1", "invalid_message")]));
    assert_eq!(done["subject"], json!({ "batch_label": "A" }));
    assert!(of_job.is_empty(), "{of_job:?}");
    assert!(stored(&app).await.is_empty());
}

/// Portal access writes nothing to the tenant, so a batch larger than the off-peak threshold
/// still runs at once (at 10:00 on a Tuesday, with every window closed).
#[tokio::test]
async fn a_large_portal_batch_runs_at_once_in_the_daytime() {
    let (clock, _) = crate::kit::time::clock_on(chrono::Weekday::Tue, 10, 0).await;
    let mut app = crate::helpers::spawn_app_with(crate::helpers::AppOptions {
        clock: Some(clock),
        ..Default::default()
    })
    .await;
    let mut events = app.event_queue().await;
    let batch: Vec<Value> = (0..1_500)
        .map(|i| {
            contact(
                &format!("c-{i:04}"),
                &format!("Clerk {i}"),
                Some(&format!("clerk{i}@p{i}.gov.uk")),
                &format!("P{i} PC"),
            )
        })
        .collect();
    let job = app.job("portal_access.grant", grant("Large", &batch));
    let (done, of_job) = run(&app, &mut events, &job).await;
    let accepted = of_job
        .iter()
        .find(|e| e["type"] == "job.accepted")
        .expect("a job.accepted");
    assert_eq!(accepted["schedule"], "immediate", "{accepted}");
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], 1_500, "{done}");
    assert_eq!(emails(&of_job, "portal_invitation").len(), 1_500);
}

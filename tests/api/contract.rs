//! The contract as code (issue 20): the schema's verdict on a job body is the worker's. A
//! table of bodies, valid and not, each published to a real worker; a body the schema refuses
//! must be dead-lettered at ingest, one it accepts must be stored. And the `contract` command.

use std::time::Duration;

use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use serde_json::{Value, json};

use crate::helpers::{TestApp, spawn_app};
use crate::kit::broker;
use crate::kit::contract as kit_contract;

/// A body of the table: JSON built by the test, or text as it is.
enum Body {
    Json(Value),
    Text(String),
}

impl Body {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Body::Json(value) => value.to_string().into_bytes(),
            Body::Text(text) => text.clone().into_bytes(),
        }
    }

    fn message_id(&self) -> Option<String> {
        let value: Value = serde_json::from_slice(&self.bytes()).ok()?;
        value.get("message_id")?.as_str().map(str::to_owned)
    }
}

/// What the worker did with a body at ingest: stored it, or dead-lettered it with a code.
#[derive(Debug)]
#[allow(dead_code)] // `detail` is read through `Debug`, in the report of a disagreement
enum Ingested {
    Stored,
    DeadLettered { code: String, detail: String },
}

/// Publish `body` (routing key `routing_key`, AMQP `message_id` the body's when it has one)
/// and wait for what ingest does with it.
async fn ingest(app: &TestApp, routing_key: &str, body: &Body) -> Ingested {
    let bytes = body.bytes();
    let message_id = body.message_id();
    let mut properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2);
    // An AMQP short string holds 255 bytes: a longer id goes in the body only.
    if let Some(id) = message_id.as_ref().filter(|id| id.len() <= 255) {
        properties = properties.with_message_id(id.as_str().into());
    }
    kit_contract::remember(&bytes, &kit_contract::job_verdict(&bytes));
    broker::publish(
        &app.channel,
        &app.settings.broker.topology.jobs_exchange,
        routing_key,
        &bytes,
        properties,
    )
    .await;
    let queue = app.settings.broker.topology.dead_letter_queue.as_str();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(message)) = app
            .channel
            .basic_get(queue.into(), BasicGetOptions::default())
            .await
        {
            message.ack(BasicAckOptions::default()).await.unwrap();
            let delivery = message.delivery;
            assert_eq!(delivery.data, bytes, "a dead letter of another body");
            let headers = delivery.properties.headers().clone().unwrap_or_default();
            let header = |name: &str| match headers.inner().get(name) {
                Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into(),
                _ => String::new(),
            };
            return Ingested::DeadLettered {
                code: header("x-reconciler-error"),
                detail: header("x-reconciler-detail"),
            };
        }
        if let Some(id) = &message_id {
            let disposition: Option<String> =
                sqlx::query_scalar("SELECT disposition FROM inbox WHERE message_id = $1")
                    .bind(id)
                    .fetch_optional(&app.pool)
                    .await
                    .unwrap();
            if disposition.as_deref() == Some("job") {
                return Ingested::Stored;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ingest did nothing with {}",
            String::from_utf8_lossy(&bytes)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `job` with the value at JSON pointer `pointer` set to `value` (its parent must exist).
fn set(mut job: Value, pointer: &str, value: Value) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match job.pointer_mut(parent) {
        Some(Value::Object(fields)) => {
            fields.insert(key.to_owned(), value);
        }
        Some(Value::Array(items)) => items[key.parse::<usize>().unwrap()] = value,
        _ => panic!("no {parent}"),
    }
    job
}

/// `job` without the field at `pointer`.
fn without(mut job: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    job.pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .unwrap()
        .remove(key);
    job
}

/// `levels` arrays nested in each other around `1`.
fn nested(levels: usize) -> Value {
    (0..levels).fold(json!(1), |inner, _| json!([inner]))
}

fn contact() -> Value {
    json!({ "contact_id": "c-1001", "name": "Alice Clerk", "type": "individual",
            "email": "clerk@anyparish.gov.uk", "council": "Anyparish Parish Council",
            "member": true, "clerk_until": null, "has_portal_access": false })
}

/// The table: (what, routing key, body). Whether each passes is the schema's to say; the test
/// checks that the worker says the same.
fn table(app: &TestApp) -> Vec<(&'static str, String, Body)> {
    let added = || {
        app.job(
            "policy.members_added",
            json!({ "policy_id": "rx1-standard", "members": ["a.one@nhs.net"], "total_members": 1 }),
        )
    };
    let changed = || {
        app.job(
            "policy.changed",
            json!({ "policy": { "id": "rx1-standard", "name": "RX1 Standard Users",
                    "ods_code": "RX1", "version": 8, "licence": "ENTERPRISEPACK",
                    "toggles": { "EXCHANGE_S_ENTERPRISE": true, "SWAY": false } },
                    "members": ["a.one@nhs.net"], "total_members": 1 }),
        )
    };
    let grant = || {
        app.job(
            "portal_access.grant",
            json!({ "batch_label": "A-B", "contacts": [contact()] }),
        )
    };
    let leaver = || {
        app.job(
            "user.leaver",
            json!({ "user": "bob.jones@nhs.net", "marked_for_deletion_at": "2026-11-21T17:00:00Z" }),
        )
    };
    let assign = || {
        app.job(
            "admin_role.assign",
            json!({ "user": "bob.jones@nhs.net", "ods_code": "RX1", "role": "phone_system_primary_admin" }),
        )
    };
    let euro = |n: usize| "\u{20ac}".repeat(n); // 3 bytes each
    let mut cases: Vec<(&'static str, Value)> =
        vec![
        // Valid: the contract's examples of every type, and what the planner (not ingest)
        // judges.
        ("members_added", added()),
        ("policy.changed", changed()),
        ("portal_access.grant", grant()),
        ("user.leaver", leaver()),
        ("admin_role.assign", assign()),
        (
            "admin_role.change",
            app.job(
                "admin_role.change",
                json!({ "user": "bob.jones@nhs.net", "ods_code": "RX1",
                        "from": "phone_system_local_admin", "to": "phone_system_primary_admin" }),
            ),
        ),
        (
            "ods_mapping.changed",
            app.job(
                "ods_mapping.changed",
                json!({ "ods_code": "RX1", "managed_ods_codes": ["RX2"], "onboarded": ["RX1"] }),
            ),
        ),
        (
            "portal_access.activated",
            app.job(
                "portal_access.activated",
                json!({ "contact_ids": ["c-1001"] }),
            ),
        ),
        (
            "portal_access.remind",
            app.job("portal_access.remind", json!({ "contact_ids": [] })),
        ),
        (
            "unknown fields anywhere",
            set(
                set(added(), "/priority", json!("P2")),
                "/payload/note",
                json!({ "a": [1, 2] }),
            ),
        ),
        ("no ticket", without(added(), "/ticket")),
        ("ticket null", set(added(), "/ticket", json!(null))),
        ("no actor, no dry_run", without(without(added(), "/actor"), "/dry_run")),
        (
            "a ticket with more fields",
            set(added(), "/ticket/priority", json!("P2")),
        ),
        (
            "a malformed member email (the planner's)",
            set(added(), "/payload/members/0", json!("not an email")),
        ),
        (
            "a member of 1,024 bytes",
            set(added(), "/payload/members/0", json!("a".repeat(1_024))),
        ),
        (
            "total_members not adding up (the planner's)",
            set(added(), "/payload/total_members", json!(5)),
        ),
        (
            "an identifier of 255 bytes",
            set(added(), "/payload/policy_id", json!("p".repeat(255))),
        ),
        (
            "an identifier of 85 three-byte characters (255 bytes)",
            set(added(), "/payload/policy_id", json!(euro(85))),
        ),
        (
            "a message_id of 255 bytes",
            set(added(), "/message_id", json!("m".repeat(255))),
        ),
        (
            "members null in policy.changed",
            set(changed(), "/payload/members", json!(null)),
        ),
        (
            "no members in policy.changed",
            without(without(changed(), "/payload/members"), "/payload/total_members"),
        ),
        (
            "sent_at with an offset and a fraction",
            set(added(), "/sent_at", json!("2026-11-22T11:15:00.123+01:00")),
        ),
        (
            "a clerk_until date",
            set(
                grant(),
                "/payload/contacts/0/clerk_until",
                json!("2027-03-31"),
            ),
        ),
        (
            "a contact named twice (the planner's)",
            set(
                grant(),
                "/payload/contacts",
                json!([contact(), contact()]),
            ),
        ),
        (
            "a contact without email",
            without(grant(), "/payload/contacts/0/email"),
        ),
        (
            "an unknown licence (the planner's)",
            set(changed(), "/payload/policy/licence", json!("NO_SUCH_SKU")),
        ),
        (
            "the lowest i64 version",
            set(changed(), "/payload/policy/version", json!(i64::MIN)),
        ),
        (
            "total_members the highest u64 (the planner's)",
            set(added(), "/payload/total_members", json!(u64::MAX)),
        ),
        (
            "a negative version",
            set(changed(), "/payload/policy/version", json!(-3)),
        ),
        (
            "nested 32 levels",
            set(added(), "/payload/note", nested(30)),
        ),
        // Refused: missing, wrong types, unknown type and version, sizes, NUL, depth.
        ("no message_id", without(added(), "/message_id")),
        ("message_id empty", set(added(), "/message_id", json!(""))),
        ("message_id blank", set(added(), "/message_id", json!("   "))),
        ("message_id a number", set(added(), "/message_id", json!(42))),
        // Blank is Unicode's White_Space to the worker (`str::trim`); regular expressions'
        // `\s` differ on U+0085 and U+FEFF from one engine to the next.
        (
            "message_id a next-line character",
            set(added(), "/message_id", json!("\u{85}")),
        ),
        (
            "message_id a byte-order mark",
            set(added(), "/message_id", json!("\u{feff}")),
        ),
        (
            "message_id an ideographic space",
            set(added(), "/message_id", json!("\u{3000}")),
        ),
        (
            "message_id of 256 bytes",
            set(added(), "/message_id", json!("m".repeat(256))),
        ),
        (
            "message_id of 86 three-byte characters (258 bytes)",
            set(added(), "/message_id", json!(euro(86))),
        ),
        ("no type", without(added(), "/type")),
        ("an unknown type", set(added(), "/type", json!("policy.exploded"))),
        ("schema_version 2", set(added(), "/schema_version", json!(2))),
        ("schema_version \"1\"", set(added(), "/schema_version", json!("1"))),
        ("schema_version 1.0", set(added(), "/schema_version", json!(1.0))),
        ("no sent_at", without(added(), "/sent_at")),
        ("sent_at not a time", set(added(), "/sent_at", json!("yesterday"))),
        (
            "sent_at without an offset",
            set(added(), "/sent_at", json!("2026-11-22T10:15:00")),
        ),
        (
            "sent_at on the 30th of February",
            set(added(), "/sent_at", json!("2026-02-30T10:15:00Z")),
        ),
        ("no payload", without(added(), "/payload")),
        ("payload null", set(added(), "/payload", json!(null))),
        ("payload a list", set(added(), "/payload", json!([]))),
        ("no members", without(added(), "/payload/members")),
        ("members a string", set(added(), "/payload/members", json!("a@nhs.net"))),
        ("a member a number", set(added(), "/payload/members/0", json!(7))),
        ("total_members -1", set(added(), "/payload/total_members", json!(-1))),
        ("total_members \"1\"", set(added(), "/payload/total_members", json!("1"))),
        ("total_members 1.0", set(added(), "/payload/total_members", json!(1.0))),
        ("total_members 1.5", set(added(), "/payload/total_members", json!(1.5))),
        ("version 8.0", set(changed(), "/payload/policy/version", json!(8.0))),
        ("version \"8\"", set(changed(), "/payload/policy/version", json!("8"))),
        (
            "version one over i64",
            set(
                changed(),
                "/payload/policy/version",
                json!(i64::MAX as u64 + 1),
            ),
        ),
        (
            "total_members one over u64",
            set(added(), "/payload/total_members", json!(18446744073709551616.0)),
        ),
        (
            "a toggle \"on\"",
            set(changed(), "/payload/policy/toggles/SWAY", json!("on")),
        ),
        (
            "a toggle named with 256 bytes",
            set(
                changed(),
                "/payload/policy/toggles",
                Value::Object([("P".repeat(256), json!(true))].into_iter().collect()),
            ),
        ),
        (
            "an unknown role",
            set(assign(), "/payload/role", json!("global_admin")),
        ),
        (
            "a contact of an unknown kind",
            set(grant(), "/payload/contacts/0/type", json!("council")),
        ),
        (
            "member \"yes\"",
            set(grant(), "/payload/contacts/0/member", json!("yes")),
        ),
        (
            "clerk_until not a date",
            set(
                grant(),
                "/payload/contacts/0/clerk_until",
                json!("31/03/2027"),
            ),
        ),
        (
            "marked_for_deletion_at not a time",
            set(leaver(), "/payload/marked_for_deletion_at", json!("tomorrow")),
        ),
        (
            "an identifier of 256 bytes",
            set(added(), "/payload/policy_id", json!("p".repeat(256))),
        ),
        (
            "an identifier of 86 three-byte characters (258 bytes)",
            set(added(), "/payload/policy_id", json!(euro(86))),
        ),
        (
            "a member of 1,025 bytes",
            set(added(), "/payload/members/0", json!("a".repeat(1_025))),
        ),
        (
            "a contact email of 342 three-byte characters (1,026 bytes)",
            set(grant(), "/payload/contacts/0/email", json!(euro(342))),
        ),
        (
            "a ticket reference of 256 bytes",
            set(added(), "/ticket/reference", json!("R".repeat(256))),
        ),
        (
            "a NUL in a member",
            set(added(), "/payload/members/0", json!("a\u{0}@nhs.net")),
        ),
        (
            "a NUL in an unknown field",
            set(added(), "/payload/note", json!({ "deep": ["x\u{0}"] })),
        ),
        (
            "a NUL in a key",
            set(added(), "/payload/note", json!({ "k\u{0}": 1 })),
        ),
        (
            "a ticket without originator",
            without(added(), "/ticket/originator"),
        ),
        ("a ticket as text", set(added(), "/ticket", json!("INC1"))),
        ("an actor without ODS code", without(added(), "/actor/ods_code")),
        ("dry_run \"yes\"", set(added(), "/dry_run", json!("yes"))),
        ("dry_run null", set(added(), "/dry_run", json!(null))),
        // Times and dates as RFC 3339 allows them, or nearly: what chrono reads and what the
        // `date-time` and `date` formats accept must be the same.
        (
            "sent_at with a space for T",
            set(added(), "/sent_at", json!("2026-11-22 10:15:00Z")),
        ),
        (
            "sent_at in lower case",
            set(added(), "/sent_at", json!("2026-11-22t10:15:00z")),
        ),
        (
            "sent_at without seconds",
            set(added(), "/sent_at", json!("2026-11-22T10:15Z")),
        ),
        (
            "sent_at on a leap second",
            set(added(), "/sent_at", json!("2016-12-31T23:59:60Z")),
        ),
        (
            "sent_at with an offset of -00:00",
            set(added(), "/sent_at", json!("2026-11-22T10:15:00-00:00")),
        ),
        (
            "clerk_until without leading zeros",
            set(grant(), "/payload/contacts/0/clerk_until", json!("2027-3-31")),
        ),
        (
            "clerk_until a time",
            set(
                grant(),
                "/payload/contacts/0/clerk_until",
                json!("2027-03-31T00:00:00Z"),
            ),
        ),
        (
            "nested 33 levels",
            set(added(), "/payload/note", nested(31)),
        ),
    ];
    let mut table: Vec<(&'static str, String, Body)> = cases
        .drain(..)
        .map(|(what, job)| {
            let routing_key = job["type"].as_str().unwrap_or("unknown").to_owned();
            (what, routing_key, Body::Json(job))
        })
        .collect();
    table.push((
        "not JSON",
        "policy.members_added".into(),
        Body::Text("{ not json".into()),
    ));
    let spaced = format!("\n  {}  \n", added());
    table.push((
        "white space around the object",
        "policy.members_added".into(),
        Body::Text(spaced),
    ));
    table.push((
        "text after the object",
        "policy.members_added".into(),
        Body::Text(format!("{} x", added())),
    ));
    table.push((
        "a JSON list",
        "policy.members_added".into(),
        Body::Text("[]".into()),
    ));
    table
}

/// Every body of the table, published to a real worker: the schema's verdict is the worker's
/// (refused by the schema = dead-lettered at ingest with an ingest code).
#[tokio::test]
async fn the_schema_and_the_worker_agree_on_every_body_of_the_table() {
    let app = spawn_app().await;
    let mut disagreements = Vec::new();
    let (mut accepted, mut refused) = (0, 0);
    for (what, routing_key, body) in table(&app) {
        let schema = kit_contract::job_verdict(&body.bytes());
        let worker = ingest(&app, &routing_key, &body).await;
        match (&schema, &worker) {
            (Ok(()), Ingested::Stored) => accepted += 1,
            (Err(_), Ingested::DeadLettered { code, .. })
                if kit_contract::INGEST_CODES.contains(&code.as_str()) =>
            {
                refused += 1
            }
            _ => disagreements.push(format!(
                "{what}: the schema says {schema:?}, the worker {worker:?}"
            )),
        }
    }
    assert!(
        disagreements.is_empty(),
        "{} disagreements:\n{}",
        disagreements.len(),
        disagreements.join("\n")
    );
    // Both kinds are in the table (a table of one kind would prove little).
    assert!(accepted >= 25 && refused >= 40, "{accepted} {refused}");
}

#[test]
fn the_contract_command_prints_the_asyncapi_document_and_each_schema() {
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_policy-reconciler"))
            .arg("contract")
            .args(args)
            .output()
            .expect("the binary runs")
    };
    let output = run(&[]);
    assert!(output.status.success());
    let document: Value =
        serde_norway::from_slice(&output.stdout).expect("the AsyncAPI document is YAML");
    assert_eq!(document["asyncapi"], "3.0.0");
    assert_eq!(
        String::from_utf8(output.stdout).unwrap(),
        policy_reconciler::contract::ASYNCAPI
    );

    for name in policy_reconciler::contract::names() {
        let output = run(&["--schema", name]);
        assert!(output.status.success(), "{name}");
        let printed: Value = serde_json::from_slice(&output.stdout).unwrap();
        let file = std::fs::read_to_string(format!(
            "{}/contract/schemas/{name}.json",
            env!("CARGO_MANIFEST_DIR")
        ))
        .unwrap();
        assert_eq!(
            printed,
            serde_json::from_str::<Value>(&file).unwrap(),
            "{name}"
        );
    }

    let output = run(&["--schema", "policy.exploded"]);
    assert!(!output.status.success());
    let error = String::from_utf8(output.stderr).unwrap();
    assert!(error.contains("\"policy.exploded\""), "{error}");
    assert!(
        error.contains("policy.changed") && error.contains("notification.email"),
        "the error lists the names: {error}"
    );
}

/// A job as the portal sends it, for the checks of the kit itself.
fn portal_job(policy_id: &str) -> Value {
    json!({ "message_id": uuid::Uuid::new_v4().to_string(), "type": "policy.members_added",
            "schema_version": 1, "sent_at": "2026-11-22T10:15:00Z",
            "payload": { "policy_id": policy_id, "members": ["a@nhs.net"], "total_members": 1 } })
}

/// The kit's event check bites: an event its schema refuses fails the test that reads it.
#[test]
#[should_panic(expected = "the worker published a job.completed its schema refuses")]
fn the_kit_fails_an_event_its_schema_refuses() {
    kit_contract::check_event(&json!({ "type": "job.completed", "event_id": "not a uuid" }));
}

/// The kit's verdict check bites, both ways: a job the schema accepts that the worker
/// dead-lettered, and one it refuses that the worker did not.
#[test]
fn the_kit_fails_a_worker_that_contradicts_the_schema() {
    let check = |job: &Value, dead_lettered: bool| {
        let bytes = job.to_string().into_bytes();
        kit_contract::remember(&bytes, &kit_contract::job_verdict(&bytes));
        let completed = json!({ "source_message_id": job["message_id"], "failures": [] });
        std::panic::catch_unwind(|| kit_contract::check_disposition(&completed, dead_lettered))
            .is_ok()
    };
    let accepted = portal_job("rx1-standard");
    let refused = portal_job(&"p".repeat(256));
    assert!(check(&accepted, false));
    assert!(
        !check(&accepted, true),
        "accepted by the schema, dead-lettered"
    );
    assert!(check(&refused, true));
    assert!(!check(&refused, false), "refused by the schema, stored");
}

/// The jobs the `enqueue` command sends are the contract's too (malformed and duplicate
/// addresses included: those are the planner's to fail).
#[test]
fn the_jobs_the_enqueue_command_builds_are_what_the_schemas_accept() {
    use policy_reconciler::ops::enqueue::build_message;
    use policy_reconciler::ops::{EnqueueKind, EnqueueRequest};
    use policy_reconciler::store::policies::PolicyRow;

    let members = vec![
        "a@nhs.net".to_owned(),
        "not an email".into(),
        "a@nhs.net".into(),
    ];
    let policy = PolicyRow {
        id: "rx1-standard".into(),
        name: "RX1 Standard".into(),
        ods_code: "RX1".into(),
        version: 8,
        licence: "ENTERPRISEPACK".into(),
        toggles: [("TEAMS1".to_owned(), true)].into(),
    };
    for kind in [EnqueueKind::MembersAdded, EnqueueKind::Changed] {
        let request = EnqueueRequest {
            policy_id: "rx1-standard".into(),
            kind,
            ticket: Some("INC0099001".into()),
            originator: Some("jane.smith@nhs.net".into()),
            actor_email: Some("jane.smith@nhs.net".into()),
            actor_ods: Some("RX1".into()),
            dry_run: true,
            ..EnqueueRequest::default()
        };
        let message = build_message(&request, &members, Some(&policy)).unwrap();
        if let Err(errors) = kit_contract::job_value_verdict(&message) {
            panic!("{}: {errors}\n{message}", message["type"]);
        }
    }
}

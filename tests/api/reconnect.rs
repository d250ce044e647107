//! The worker survives losing its broker and its database: no valid job is lost or
//! dead-lettered for a transient reason, changed queue settings never wedge it, recoveries are
//! counted, and it stops cleanly while the broker is down.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::process::Stdio;
use std::time::Duration;

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::helpers::{AppOptions, TcpProxy, TestApp, spawn_app, spawn_app_with, test_env};
use crate::kit::broker::AMQP_URI_HOST_PORT;
use crate::kit::{cleanup, run_id, wait_until, worker};

const POSTGRES_HOST_PORT: &str = "127.0.0.1:5432";

fn members_payload() -> Value {
    json!({ "policy_id": "rx1-standard", "members": ["c.three@nhs.net"], "total_members": 1 })
}

/// A portal batch of one contact: completes without writing to the tenant.
fn grant_payload(n: usize) -> Value {
    json!({ "batch_label": format!("outage-{n}"), "contacts": [{
        "contact_id": format!("C-OUT-{n}"), "name": format!("Outage Contact {n}"),
        "type": "individual", "email": format!("outage.{n}@example.org"), "council": "Leeds",
        "member": true, "clerk_until": null, "has_portal_access": false }] })
}

/// Messages ready in `queue` (a passive declaration on the test's own channel).
async fn queue_depth(app: &TestApp, queue: &str) -> u32 {
    app.channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("the queue exists")
        .message_count()
}

async fn readyz(address: &str) -> Option<Value> {
    let response = reqwest::get(format!("http://{address}/readyz"))
        .await
        .ok()?;
    response.json().await.ok()
}

// Multi-threaded: the proxies keep forwarding while a worker is stopped (a blocking join).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_reconnects_after_its_connection_is_cut() {
    let proxy = TcpProxy::start(AMQP_URI_HOST_PORT).await;
    let app = spawn_app_with(AppOptions {
        broker_port: Some(proxy.port),
        ..AppOptions::default()
    })
    .await;

    let before = app.job("policy.members_added", members_payload());
    app.publish_job(&before).await;
    app.wait_for_jobs(1).await;
    let connections_before = proxy.accepted();

    proxy.cut();

    // The worker notices and connects again through the proxy.
    wait_until(
        Duration::from_secs(30),
        "a new broker connection",
        || async { proxy.accepted() > connections_before },
    )
    .await;
    app.wait_ready().await;

    // Messages published after the cut are processed.
    for _ in 0..3 {
        app.publish_job(&app.job("policy.members_added", members_payload()))
            .await;
    }
    app.wait_for_jobs(4).await;
    assert_eq!(app.jobs().await.len(), 4);
}

/// The scenario: PostgreSQL unreachable for about 30 s, the broker connection cut six
/// times meanwhile and the worker restarted, with three valid jobs published during the
/// outage. Each job completes exactly once after the database returns, and nothing reaches the
/// dead-letter queue (the delivery limit is 5: held through six cuts, the jobs would have been
/// dead-lettered).
// Multi-threaded: the proxies keep forwarding while a worker is stopped (a blocking join).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_with_broker_cuts_and_a_restart_loses_no_job() {
    let broker = TcpProxy::start(AMQP_URI_HOST_PORT).await;
    let database = TcpProxy::start(POSTGRES_HOST_PORT).await;
    let mut app = spawn_app_with(AppOptions {
        broker_port: Some(broker.port),
        database_port: Some(database.port),
        ..AppOptions::default()
    })
    .await;
    let mut events = app.event_queue().await;

    database.set_down(true);
    let jobs: Vec<Value> = (0..3)
        .map(|n| app.job("portal_access.grant", grant_payload(n)))
        .collect();
    for job in &jobs {
        app.publish_job(job).await;
    }

    // Readiness says why the worker takes no jobs.
    let address = app.http.to_string();
    wait_until(
        Duration::from_secs(30),
        "/readyz to report ingest paused",
        || async {
            readyz(&address).await.is_some_and(|body| {
                body["ready"] == false
                    && body["checks"]["ingest"] == "paused_database_unreachable"
                    && body["reasons"].to_string().contains("ingest paused")
            })
        },
    )
    .await;

    // Six broker cuts about 5 s apart (the outage lasts about 30 s), the worker restarted
    // after the third.
    for cut in 1..=6 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        broker.cut();
        if cut == 3 {
            app.stop_workers();
            app.start_worker().await;
        }
    }
    database.set_down(false);

    let mut seen = Vec::new();
    for job in &jobs {
        let completed = events
            .completion_keeping(&job["message_id"], &mut seen, Duration::from_secs(120))
            .await;
        assert_eq!(completed["outcome"], "succeeded", "{completed}");
    }
    for event in events.drain(Duration::from_secs(2)).await {
        seen.push(event);
    }
    for job in &jobs {
        let completions = seen
            .iter()
            .filter(|e| e["type"] == "job.completed" && e["source_message_id"] == job["message_id"])
            .count();
        assert_eq!(completions, 1, "one job.completed per job");
    }
    let stored = app.jobs().await;
    for job in &jobs {
        let rows = stored
            .iter()
            .filter(|(id, ..)| id == job["message_id"].as_str().unwrap())
            .count();
        assert_eq!(rows, 1, "one job per message");
    }
    let dead = app.settings.broker.topology.dead_letter_queue.clone();
    assert_eq!(queue_depth(&app, &dead).await, 0, "nothing dead-lettered");
}

/// Queue arguments cannot change; a worker started with another `broker.delivery_limit` than
/// the queue was created with still becomes ready, says what differs and what to do, and
/// processes jobs.
#[tokio::test]
async fn changing_the_delivery_limit_between_starts_does_not_wedge_the_worker() {
    let mut app = spawn_app().await;
    assert_eq!(app.settings.broker.delivery_limit.get(), 5);
    app.stop_workers();

    app.settings.broker.delivery_limit = NonZeroU32::new(7).unwrap();
    app.start_worker().await;
    app.wait_ready().await;

    let body = readyz(&app.http.to_string())
        .await
        .expect("/readyz answers");
    let notice = body["queue_settings"].as_str().unwrap_or_default();
    assert!(notice.contains("x-delivery-limit"), "{body}");
    assert!(notice.contains("delete it"), "{body}");

    let job = app.job("policy.members_added", members_payload());
    app.publish_job(&job).await;
    app.wait_for_jobs(1).await;
}

/// A worker process: a cut broker connection is rebuilt and counted; stopped while the broker
/// is unreachable, it exits 0, prints only JSON log lines, no panic and no ERROR.
// Multi-threaded: the proxies keep forwarding while a worker is stopped (a blocking join).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recoveries_are_counted_and_a_worker_stops_cleanly_while_the_broker_is_down() {
    let id = run_id();
    let broker = TcpProxy::start(AMQP_URI_HOST_PORT).await;
    let port = worker::free_port();
    let options = AppOptions {
        broker_port: Some(broker.port),
        env: vec![("HTTP__LISTEN_ADDRESS".into(), format!("127.0.0.1:{port}"))],
        ..AppOptions::default()
    };
    let env: HashMap<String, String> = test_env(&id, &options);
    let settings = crate::kit::env::settings(&env);
    let mut child = worker::command(env!("CARGO_BIN_EXE_policy-reconciler"), &env)
        .env("RECONCILER__LOG__FORMAT", "json")
        .env("RUST_BACKTRACE", "1")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the binary starts");
    let address = format!("127.0.0.1:{port}");
    worker::wait_ready(&address).await;

    // One cut: rebuilt and counted.
    let connections = broker.accepted();
    broker.cut();
    wait_until(
        Duration::from_secs(30),
        "a new broker connection",
        || async { broker.accepted() > connections },
    )
    .await;
    worker::wait_ready(&address).await;
    let metrics = reqwest::get(format!("http://{address}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.trim() == "reconciler_broker_reconnects_total 1"),
        "{metrics}"
    );

    // The broker goes away; the worker notices, then is stopped while reconnecting.
    broker.set_down(true);
    wait_until(
        Duration::from_secs(30),
        "/readyz to report the broker down",
        || async {
            readyz(&address)
                .await
                .is_some_and(|body| body["checks"]["broker"] == false)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    worker::terminate(&mut child, Duration::from_secs(15));
    let output = child.wait_with_output().expect("the worker's output");
    cleanup(&settings, &[]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.trim().is_empty(), "nothing but JSON logs: {stderr}");
    for line in stdout.lines().filter(|l| !l.trim().is_empty()) {
        let log: Value =
            serde_json::from_str(line).unwrap_or_else(|_| panic!("a non-JSON line: {line}"));
        assert_ne!(log["level"], "ERROR", "{line}");
    }
}

//! `spawn_app` and friends: a real worker against the real PostgreSQL and RabbitMQ, in a fresh
//! database and with its own queue names, cleaned up when the test ends (even on panic).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions,
    ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use policy_reconciler::configuration::{ConfigSources, Settings};
use policy_reconciler::engine::clock::ManualClock;
use policy_reconciler::simulator::{Seed, Shared, SimulatorSettings};
use policy_reconciler::startup::Application;
use serde_json::{Value, json};
use sqlx::{Connection as _, Executor, PgConnection, PgPool};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use uuid::Uuid;

pub const AMQP_URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
pub const AMQP_URI_HOST_PORT: &str = "127.0.0.1:5672";

/// How a test wants its worker.
#[derive(Default, Clone)]
pub struct AppOptions {
    /// Simulator behaviour (latency, throttling, faults); test defaults otherwise.
    pub simulator: Option<SimulatorSettings>,
    /// Reach the broker through this port (a [`TcpProxy`]) instead of 5672.
    pub broker_port: Option<u16>,
    /// Extra `RECONCILER__…` settings.
    pub env: Vec<(String, String)>,
    /// Schedule by this clock instead of the system's.
    pub clock: Option<Arc<ManualClock>>,
}

/// A running worker and the test's own handles on its database and broker.
pub struct TestApp {
    pub id: String,
    pub settings: Settings,
    pub http: SocketAddr,
    pub pool: PgPool,
    pub amqp: Connection,
    pub channel: Channel,
    /// The tenant this worker reconciles.
    pub sim: SimThread,
    /// Worker replicas, the first one serving `http`.
    workers: Vec<WorkerThread>,
    /// The `RECONCILER__…` variables of this app's workers (for worker processes).
    env: HashMap<String, String>,
    processes: Vec<std::process::Child>,
    clock: Option<Arc<ManualClock>>,
    event_queues: Vec<String>,
}

/// A worker on its own runtime and thread, so that a test can stop it gracefully or kill it
/// abruptly (dropping its runtime mid-flight, like a crash) independently of the test's runtime.
struct WorkerThread {
    stop: oneshot::Sender<()>,
    kill: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// The `RECONCILER__…` variables that give a test its own database and queue names.
pub fn test_env(id: &str, options: &AppOptions) -> HashMap<String, String> {
    let mut env: HashMap<String, String> = [
        ("DATABASE__DATABASE_NAME", format!("pr_test_{id}")),
        ("HTTP__LISTEN_ADDRESS", "127.0.0.1:0".into()),
        ("WORKER__INSTANCE_NAME", format!("test-{id}")),
        ("WORKER__SHUTDOWN_GRACE_SECONDS", "5".into()),
        ("OUTBOX__POLL_INTERVAL_MS", "100".into()),
        ("BROKER__RECOVERY_TIMEOUT_SECONDS", "5".into()),
        ("BROKER__RECONNECT_MAX_DELAY_MS", "1000".into()),
        ("BROKER__HEARTBEAT_SECONDS", "5".into()),
        ("BROKER__TOPOLOGY__JOBS_EXCHANGE", format!("test.{id}.jobs")),
        ("BROKER__TOPOLOGY__JOBS_QUEUE", format!("test.{id}.jobs")),
        (
            "BROKER__TOPOLOGY__DEAD_LETTER_EXCHANGE",
            format!("test.{id}.dlx"),
        ),
        (
            "BROKER__TOPOLOGY__DEAD_LETTER_QUEUE",
            format!("test.{id}.jobs.dead"),
        ),
        (
            "BROKER__TOPOLOGY__EVENTS_EXCHANGE",
            format!("test.{id}.events"),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (format!("RECONCILER__{k}"), v))
    .collect();
    if let Some(port) = options.broker_port {
        env.insert("RECONCILER__BROKER__PORT".into(), port.to_string());
    }
    for (k, v) in &options.env {
        env.insert(format!("RECONCILER__{k}"), v.clone());
    }
    env
}

pub fn test_settings(id: &str, options: &AppOptions) -> Settings {
    Settings::load_with(
        &ConfigSources::default(),
        config::Environment::default().source(Some(test_env(id, options))),
    )
    .expect("test settings are valid")
}

pub async fn spawn_app_with(mut options: AppOptions) -> TestApp {
    init_test_logs();
    let id = Uuid::new_v4().simple().to_string()[..12].to_owned();
    let sim = SimThread::start(
        options
            .simulator
            .clone()
            .unwrap_or_else(SimulatorSettings::for_tests),
    );
    for (key, value) in [
        ("TENANT__GRAPH_BASE_URL", sim.base_url.clone()),
        ("TENANT__LOGIN_BASE_URL", sim.base_url.clone()),
        ("TENANT__WRITES_PER_SECOND", "0".into()),
        ("TENANT__RETRY_MIN_DELAY_MS", "10".into()),
        ("TENANT__RETRY_MAX_DELAY_MS", "200".into()),
        ("ENGINE__POLL_INTERVAL_MS", "50".into()),
    ] {
        if !options.env.iter().any(|(k, _)| k == key) {
            options.env.push((key.to_owned(), value));
        }
    }
    let settings = test_settings(&id, &options);
    let env = test_env(&id, &options);
    let worker = start_worker(settings.clone(), options.clock.clone());
    let (http, worker) = worker.await;

    let amqp = Connection::connect(AMQP_URI, ConnectionProperties::default())
        .await
        .expect("the test reaches RabbitMQ on 127.0.0.1:5672");
    let channel = amqp.create_channel().await.unwrap();
    let app = TestApp {
        id,
        pool: policy_reconciler::store::pool(&settings.database),
        settings,
        http,
        amqp,
        channel,
        workers: vec![worker],
        env,
        processes: Vec::new(),
        clock: options.clock.clone(),
        event_queues: Vec::new(),
        sim,
    };
    app.wait_ready().await;
    app
}

/// `TEST_LOG=1` shows the workers' logs (filtered by `RUST_LOG`, default `info`).
pub fn init_test_logs() {
    if std::env::var_os("TEST_LOG").is_some() {
        policy_reconciler::telemetry::init_tracing(
            &policy_reconciler::configuration::LogSettings {
                level: "info".into(),
                format: policy_reconciler::configuration::LogFormat::Pretty,
            },
        );
    }
}

async fn start_worker(
    settings: Settings,
    clock: Option<Arc<ManualClock>>,
) -> (SocketAddr, WorkerThread) {
    let (address_tx, address_rx) = oneshot::channel();
    let (stop, stop_rx) = oneshot::channel::<()>();
    let (kill, kill_rx) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let mut app = Application::build(settings).await.expect("worker builds");
            if let Some(clock) = clock {
                app = app.with_clock(clock);
            }
            let _ = address_tx.send(app.http_address());
            tokio::select! {
                _ = app.run_until_stopped(async { let _ = stop_rx.await; }) => {}
                _ = kill_rx => {}
            }
        });
        // Dropping the runtime here aborts whatever a kill left running.
        runtime.shutdown_background();
    });
    let address = address_rx.await.expect("worker started");
    (address, WorkerThread { stop, kill, thread })
}

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Wait until `/readyz` says ready (database, migrations, broker).
    pub async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        wait_until(
            Duration::from_secs(30),
            "the worker to be ready",
            || async {
                matches!(client.get(self.url("/readyz")).send().await, Ok(r) if r.status() == 200)
            },
        )
        .await;
    }

    /// Stop every worker gracefully and wait for them.
    pub fn stop_workers(&mut self) {
        for worker in self.workers.drain(..) {
            let _ = worker.stop.send(());
            let _ = worker.thread.join();
        }
    }

    /// Kill worker `index` abruptly: its runtime is dropped mid-flight, nothing is cleaned up
    /// (no acknowledgement, no lease released, connections simply vanish).
    pub fn kill_worker(&mut self, index: usize) {
        let worker = self.workers.remove(index);
        let _ = worker.kill.send(());
        let _ = worker.thread.join();
    }

    /// Start another replica with the same settings; `http` follows the newest one.
    pub async fn start_worker(&mut self) {
        let mut settings = self.settings.clone();
        settings.worker.instance_name = format!("test-{}-{}", self.id, Uuid::new_v4().simple());
        let (http, worker) = start_worker(settings, self.clock.clone()).await;
        self.workers.push(worker);
        self.http = http;
    }

    /// Start a worker as a separate `policy-reconciler run` process with this app's settings
    /// (plus `extra` variables); it is stopped with SIGTERM when the app is dropped.
    pub fn start_worker_process(&mut self, extra: &[(&str, &str)]) {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_policy-reconciler"));
        command
            .arg("run")
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .envs(&self.env)
            .env("RECONCILER__HTTP__LISTEN_ADDRESS", "127.0.0.1:0")
            .env(
                "RECONCILER__WORKER__INSTANCE_NAME",
                format!("test-{}-p{}", self.id, self.processes.len()),
            )
            .env("RECONCILER__LOG__FORMAT", "json")
            .stdout(std::process::Stdio::null())
            .stderr(if std::env::var_os("TEST_LOG").is_some() {
                std::process::Stdio::inherit()
            } else {
                std::process::Stdio::null()
            });
        for (key, value) in extra {
            command.env(format!("RECONCILER__{key}"), value);
        }
        self.processes
            .push(command.spawn().expect("the worker binary starts"));
    }

    /// Publish a job as the portal does: persistent JSON, routing key = type, AMQP
    /// `message_id` = the body's.
    pub async fn publish_job(&self, job: &Value) {
        let routing_key = job["type"].as_str().unwrap_or("unknown").to_owned();
        let mut properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        if let Some(id) = job["message_id"].as_str() {
            properties = properties.with_message_id(id.into());
        }
        self.publish_raw(&routing_key, job.to_string().as_bytes(), properties)
            .await;
    }

    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        self.channel
            .basic_publish(
                self.settings.broker.topology.jobs_exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                properties,
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// A queue bound to the events exchange (`#`), declared before the events it should see.
    pub async fn event_queue(&mut self) -> EventQueue {
        let name = format!("test.{}.events.{}", self.id, self.event_queues.len());
        self.channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.channel
            .queue_bind(
                name.as_str().into(),
                self.settings
                    .broker
                    .topology
                    .events_exchange
                    .as_str()
                    .into(),
                "#".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.event_queues.push(name.clone());
        let channel = self.amqp.create_channel().await.unwrap();
        let consumer = channel
            .basic_consume(
                name.as_str().into(),
                format!("{name}.consumer").into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        EventQueue {
            _channel: channel,
            consumer,
        }
    }

    /// Take one message from the dead-letter queue, waiting for it.
    pub async fn next_dead_letter(&self) -> DeadLetter {
        let queue = self.settings.broker.topology.dead_letter_queue.clone();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let found = loop {
            if let Ok(Some(message)) = self
                .channel
                .basic_get(queue.as_str().into(), BasicGetOptions::default())
                .await
            {
                message.ack(BasicAckOptions::default()).await.unwrap();
                break Some(message.delivery);
            }
            if tokio::time::Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let delivery = found.expect("a dead letter within 15 s");
        let header = |name: &str| -> Option<String> {
            delivery
                .properties
                .headers()
                .as_ref()?
                .inner()
                .get(name)
                .and_then(|v| match v {
                    AMQPValue::LongString(s) => {
                        Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                    }
                    AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
                    _ => None,
                })
        };
        DeadLetter {
            error: header("x-reconciler-error"),
            detail: header("x-reconciler-detail"),
            body: delivery.data.clone(),
        }
    }

    /// Jobs stored so far, as (message_id, job_type, state, outcome).
    pub async fn jobs(&self) -> Vec<(String, Option<String>, String, Option<String>)> {
        sqlx::query_as("SELECT message_id, job_type, state, outcome FROM jobs ORDER BY received_at")
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default()
    }

    pub async fn wait_for_jobs(&self, count: usize) {
        wait_until(
            Duration::from_secs(20),
            &format!("{count} stored jobs"),
            || async { self.jobs().await.len() >= count },
        )
        .await;
    }

    /// A job envelope with a fresh `message_id`.
    pub fn job(&self, job_type: &str, payload: Value) -> Value {
        json!({
            "message_id": Uuid::new_v4().to_string(),
            "type": job_type,
            "schema_version": 1,
            "sent_at": "2026-11-22T10:15:00Z",
            "ticket": { "reference": format!("INC{}", &self.id[..6]), "originator": "jane.smith@nhs.net" },
            "actor": { "email": "jane.smith@nhs.net", "ods_code": "RX1" },
            "dry_run": false,
            "payload": payload
        })
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop_workers();
        for mut process in self.processes.drain(..) {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &process.id().to_string()])
                .status();
            for _ in 0..200 {
                if matches!(process.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = process.kill();
            let _ = process.wait();
        }
        cleanup(&self.settings, &self.event_queues);
    }
}

/// Delete a test's queues and exchanges and drop its database, on a runtime of its own (the
/// caller may be inside a runtime that is busy dropping it).
pub fn cleanup(settings: &Settings, extra_queues: &[String]) {
    let settings = settings.clone();
    let topology = &settings.broker.topology;
    let mut queues = extra_queues.to_vec();
    queues.push(topology.jobs_queue.clone());
    queues.push(topology.dead_letter_queue.clone());
    let exchanges = vec![
        topology.jobs_exchange.clone(),
        topology.dead_letter_exchange.clone(),
        topology.events_exchange.clone(),
    ];
    let cleanup = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async move {
                if let Ok(amqp) =
                    Connection::connect(AMQP_URI, ConnectionProperties::default()).await
                    && let Ok(channel) = amqp.create_channel().await
                {
                    for queue in queues {
                        let _ = channel
                            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                            .await;
                    }
                    for exchange in exchanges {
                        let _ = channel
                            .exchange_delete(
                                exchange.as_str().into(),
                                ExchangeDeleteOptions::default(),
                            )
                            .await;
                    }
                    let _ = amqp.close(200, "test done".into()).await;
                }
                if let Ok(mut conn) =
                    PgConnection::connect_with(&settings.database.without_db()).await
                {
                    let _ = conn
                        .execute(sqlx::AssertSqlSafe(format!(
                            "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                            settings.database.database_name
                        )))
                        .await;
                }
            });
    });
    let _ = cleanup.join();
}

pub struct EventQueue {
    _channel: Channel,
    consumer: lapin::Consumer,
}

impl EventQueue {
    /// The next event, as JSON, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Value> {
        let delivery = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .ok()??
            .ok()?;
        delivery.ack(BasicAckOptions::default()).await.ok()?;
        serde_json::from_slice(&delivery.data).ok()
    }

    /// The next event of `event_type` about the job of `message_id` (others are passed over),
    /// within 120 s.
    pub async fn next_of(&mut self, event_type: &str, message_id: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no {event_type} for {message_id}"));
            if event["type"] == event_type && event["source_message_id"] == message_id {
                return event;
            }
        }
    }

    /// The `job.completed` of `message_id`: found among `seen`, or awaited within `timeout`
    /// while every event received is kept in `seen` (for checks on the other events).
    pub async fn completion_keeping(
        &mut self,
        message_id: &Value,
        seen: &mut Vec<Value>,
        timeout: Duration,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(event) = seen
                .iter()
                .find(|e| e["type"] == "job.completed" && e["source_message_id"] == *message_id)
            {
                return event.clone();
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let event = self
                .next(left)
                .await
                .unwrap_or_else(|| panic!("no job.completed for {message_id}"));
            seen.push(event);
        }
    }

    /// Every event arriving within `quiet` of the previous one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut events = Vec::new();
        while let Some(event) = self.next(quiet).await {
            events.push(event);
        }
        events
    }
}

pub struct DeadLetter {
    pub error: Option<String>,
    pub detail: Option<String>,
    pub body: Vec<u8>,
}

/// Poll `condition` every 50 ms until it holds; panic with `what` after `timeout`.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TCP proxy in front of RabbitMQ whose connections a test can cut.
pub struct TcpProxy {
    pub port: u16,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accepted: Arc<AtomicUsize>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let connections = connections.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let task = tokio::spawn(async move {
                        if let Ok(mut outbound) = TcpStream::connect(upstream).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    connections.lock().unwrap().push(task.abort_handle());
                }
            })
        };
        Self {
            port,
            connections,
            accepted,
            acceptor,
        }
    }

    /// Drop every open connection (both directions), as a network failure would.
    pub fn cut(&self) {
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.acceptor.abort();
        self.cut();
    }
}

/// The tenant simulator on a runtime and thread of its own, so that it keeps answering while
/// a test blocks its own thread (joining a worker, say).
pub struct SimThread {
    pub base_url: String,
    pub state: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl SimThread {
    pub fn start(settings: SimulatorSettings) -> Self {
        let state = Arc::new(Shared::from_settings(&settings).expect("simulator state"));
        let (address_tx, address_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = {
            let state = state.clone();
            std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async move {
                    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                    address_tx.send(listener.local_addr().unwrap()).unwrap();
                    let _ =
                        policy_reconciler::simulator::serve_shared(listener, state, async move {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })
        };
        let address = address_rx.recv().expect("simulator started");
        Self {
            base_url: format!("http://{address}"),
            state,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Seed from a JSON value in the seed-file format.
    pub fn seed(&self, seed: Value) {
        let seed: Seed = serde_json::from_value(seed).expect("valid seed");
        self.state.seed(&seed).expect("seed applies");
    }

    /// Seed `n` users `{prefix}{i}@nhs.net` with usage location GB; returns their UPNs.
    pub fn seed_users(&self, prefix: &str, n: usize) -> Vec<String> {
        let upns: Vec<String> = (0..n).map(|i| format!("{prefix}{i}@nhs.net")).collect();
        let users: Vec<Value> = upns
            .iter()
            .map(|upn| json!({ "id": Uuid::new_v4(), "userPrincipalName": upn, "usageLocation": "GB" }))
            .collect();
        self.seed(json!({ "users": users }));
        upns
    }

    /// The licences `user` holds, as (skuId, sorted disabledPlans), sorted.
    pub fn licences(&self, user: &str) -> Vec<(Uuid, Vec<Uuid>)> {
        crate::sim_helpers::licences_in(&self.state, user)
    }

    /// The licence a policy with `toggles` gives: (skuId, sorted disabled plan ids).
    pub fn expected_licence(&self, part_number: &str, enabled: &[&str]) -> (Uuid, Vec<Uuid>) {
        let skus = self.state.subscribed_skus();
        let sku = skus["value"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["skuPartNumber"] == part_number)
            .unwrap_or_else(|| panic!("no SKU {part_number}"));
        let mut disabled: Vec<Uuid> = sku["servicePlans"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| !enabled.contains(&p["servicePlanName"].as_str().unwrap()))
            .map(|p| serde_json::from_value(p["servicePlanId"].clone()).unwrap())
            .collect();
        disabled.sort();
        (
            serde_json::from_value(sku["skuId"].clone()).unwrap(),
            disabled,
        )
    }

    /// Licence writes (`assignLicense`) that reached the simulator, any status.
    pub fn licence_writes(&self) -> u64 {
        self.state.stats().total("assign_license")
    }
}

impl Drop for SimThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

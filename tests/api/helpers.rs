//! `spawn_app` and friends: a real worker against the real PostgreSQL and RabbitMQ, in a fresh
//! database and with its own queue names, cleaned up when the test ends (even on panic). Built
//! on the shared test kit (`tests/kit`); what is here only the API tests use.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::AMQPValue;
use lapin::{BasicProperties, Channel, Connection};
use policy_reconciler::configuration::Settings;
use policy_reconciler::engine::clock::ManualClock;
use policy_reconciler::simulator::SimulatorSettings;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::net::{TcpListener, TcpStream};
use uuid::Uuid;

use crate::kit::broker::{self, EventQueue};
use crate::kit::contract as kit_contract;
use crate::kit::simulator::SimThread;
use crate::kit::worker::{self, WorkerThread};
use crate::kit::{env, wait_until};

/// How a test wants its worker.
#[derive(Default, Clone)]
pub struct AppOptions {
    /// Simulator behaviour (latency, throttling, faults); test defaults otherwise.
    pub simulator: Option<SimulatorSettings>,
    /// Reach the broker through this port (a [`TcpProxy`]) instead of 5672.
    pub broker_port: Option<u16>,
    /// Reach PostgreSQL through this port (a [`TcpProxy`]) instead of 5432; the test's own
    /// pool goes through it too.
    pub database_port: Option<u16>,
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

pub async fn spawn_app() -> TestApp {
    spawn_app_with(AppOptions::default()).await
}

/// The `RECONCILER__…` variables that give a test its own database and queue names.
pub fn test_env(id: &str, options: &AppOptions) -> HashMap<String, String> {
    let mut env = env::isolated("test", id);
    env.extend(env::variables([
        ("WORKER__INSTANCE_NAME", format!("test-{id}")),
        ("WORKER__SHUTDOWN_GRACE_SECONDS", "5".into()),
        ("OUTBOX__POLL_INTERVAL_MS", "100".into()),
        ("BROKER__RECONNECT_MAX_DELAY_MS", "1000".into()),
        ("BROKER__HEARTBEAT_SECONDS", "5".into()),
    ]));
    if let Some(port) = options.broker_port {
        env.insert("RECONCILER__BROKER__PORT".into(), port.to_string());
    }
    if let Some(port) = options.database_port {
        env.insert("RECONCILER__DATABASE__PORT".into(), port.to_string());
    }
    env.extend(env::variables(options.env.iter().cloned()));
    env
}

pub fn test_settings(id: &str, options: &AppOptions) -> Settings {
    env::settings(&test_env(id, options))
}

pub async fn spawn_app_with(mut options: AppOptions) -> TestApp {
    init_test_logs();
    let id = crate::kit::run_id();
    let realistic = crate::kit::realistic_tenant();
    let sim = SimThread::start(options.simulator.clone().unwrap_or_else(|| {
        if realistic {
            SimulatorSettings::realistic()
        } else {
            SimulatorSettings::for_tests()
        }
    }));
    // Writes show in reads at once in the default simulator: a short verify window keeps tests
    // of writes that failed (and are re-read before they are sent again) quick. The realistic
    // one lags up to 15 s.
    let verify_within = if realistic { "20000" } else { "1500" };
    let defaults = env::simulated_tenant(&sim.base_url).into_iter().chain([
        ("TENANT__RETRY_MIN_DELAY_MS", "10".into()),
        ("TENANT__RETRY_MAX_DELAY_MS", "200".into()),
        ("ENGINE__POLL_INTERVAL_MS", "50".into()),
        ("ENGINE__VERIFY_WITHIN_MS", verify_within.into()),
        // Scheduled drift sweeps would add jobs and events to tests whose clock is moved into a
        // later period; `tests/api/drift.rs` stores its sweeps itself.
        ("ENGINE__DRIFT__ENABLED", "false".into()),
    ]);
    for (key, value) in defaults {
        if !options.env.iter().any(|(k, _)| k == key) {
            options.env.push((key.to_owned(), value));
        }
    }
    let settings = test_settings(&id, &options);
    let env = test_env(&id, &options);
    let (http, worker) = WorkerThread::start(settings.clone(), options.clock.clone()).await;

    let amqp = broker::connect().await;
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

impl TestApp {
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }

    /// Wait until `/readyz` says ready (database, migrations, broker).
    pub async fn wait_ready(&self) {
        worker::wait_ready(&self.http.to_string()).await;
    }

    /// Stop every worker gracefully and wait for them.
    pub fn stop_workers(&mut self) {
        for worker in self.workers.drain(..) {
            worker.stop();
        }
    }

    /// Kill worker `index` abruptly: its runtime is dropped mid-flight, nothing is cleaned up
    /// (no acknowledgement, no lease released, connections simply vanish).
    pub fn kill_worker(&mut self, index: usize) {
        self.workers.remove(index).kill();
    }

    /// Stop worker `index` gracefully (as on SIGTERM) and wait until it has stopped.
    pub async fn stop_worker(&mut self, index: usize) {
        let worker = self.workers.remove(index);
        tokio::task::spawn_blocking(move || worker.stop())
            .await
            .unwrap();
    }

    /// Start another replica with the same settings; `http` follows the newest one.
    pub async fn start_worker(&mut self) {
        let mut settings = self.settings.clone();
        settings.worker.instance_name = format!("test-{}-{}", self.id, Uuid::new_v4().simple());
        let (http, worker) = WorkerThread::start(settings, self.clock.clone()).await;
        self.workers.push(worker);
        self.http = http;
    }

    /// Start a worker as a separate `policy-reconciler run` process with this app's settings
    /// (plus `extra` variables); it is stopped with SIGTERM when the app is dropped.
    pub fn start_worker_process(&mut self, extra: &[(&str, &str)]) {
        let mut command = worker::command(env!("CARGO_BIN_EXE_policy-reconciler"), &self.env);
        command
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
    /// `message_id` = the body's. The contract's schema must accept it (`tests/kit/contract.rs`).
    pub async fn publish_job(&self, job: &Value) {
        broker::publish_job(&self.channel, self.jobs_exchange(), job).await;
    }

    /// Publish a job the contract's schema refuses, on purpose, and return its dead letter:
    /// the worker must reject it at ingest with one of the ingest codes.
    pub async fn publish_job_refused_by_schema(&self, job: &Value) -> DeadLetter {
        broker::publish_job_refused_by_schema(&self.channel, self.jobs_exchange(), job).await;
        self.dead_letter_at_ingest(job.to_string().as_bytes()).await
    }

    /// Publish `body` as it is. The contract's schema must accept it (what differs from
    /// [`Self::publish_job`] is the text or the properties).
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        let verdict = kit_contract::job_verdict(body);
        if let Err(errors) = &verdict {
            panic!(
                "the contract's schema refuses this body (publish_raw_refused_by_schema sends \
                 it on purpose):\n{errors}"
            );
        }
        kit_contract::remember(body, &verdict);
        self.send_raw(routing_key, body, properties).await;
    }

    /// Publish `body`, which the contract's schema refuses, on purpose, and return its dead
    /// letter: the worker must reject it at ingest with one of the ingest codes.
    pub async fn publish_raw_refused_by_schema(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> DeadLetter {
        let verdict = kit_contract::job_verdict(body);
        assert!(
            verdict.is_err(),
            "the contract's schema accepts this body, which the test expects it to refuse: {}",
            String::from_utf8_lossy(body)
        );
        kit_contract::remember(body, &verdict);
        self.send_raw(routing_key, body, properties).await;
        self.dead_letter_at_ingest(body).await
    }

    async fn send_raw(&self, routing_key: &str, body: &[u8], properties: BasicProperties) {
        broker::publish(
            &self.channel,
            self.jobs_exchange(),
            routing_key,
            body,
            properties,
        )
        .await;
    }

    /// The dead letter of `body`, which must come with an ingest code.
    async fn dead_letter_at_ingest(&self, body: &[u8]) -> DeadLetter {
        let dead = self.next_dead_letter().await;
        assert_eq!(dead.body, body, "the dead letter is another message");
        let code = dead.error.as_deref().unwrap_or("none");
        assert!(
            kit_contract::INGEST_CODES.contains(&code),
            "a body the schema refuses was dead-lettered with {code}, not an ingest code"
        );
        dead
    }

    fn jobs_exchange(&self) -> &str {
        &self.settings.broker.topology.jobs_exchange
    }

    /// A queue bound to the events exchange (`#`), declared before the events it should see.
    pub async fn event_queue(&mut self) -> EventQueue {
        let name = format!("test.{}.events.{}", self.id, self.event_queues.len());
        let queue = EventQueue::declare(
            &self.amqp,
            &name,
            &self.settings.broker.topology.events_exchange,
            "#",
        )
        .await
        .checking_dispositions(self.pool.clone());
        self.event_queues.push(name);
        queue
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
        let dead = DeadLetter {
            error: header("x-reconciler-error"),
            detail: header("x-reconciler-detail"),
            body: delivery.data.clone(),
        };
        // A body the schema accepts is never rejected at ingest for what it holds; only its
        // AMQP properties (which no schema of the body covers) may be wrong.
        if kit_contract::job_verdict(&dead.body).is_ok()
            && let Some(code) = dead.error.as_deref()
            && kit_contract::INGEST_CODES.contains(&code)
        {
            let detail = dead.detail.as_deref().unwrap_or_default();
            assert!(
                detail.starts_with("AMQP message_id property"),
                "the worker rejected at ingest ({code}: {detail}) a body the contract's schema \
                 accepts: {}",
                String::from_utf8_lossy(&dead.body)
            );
        }
        dead
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
            worker::terminate(&mut process, Duration::from_secs(10));
        }
        crate::kit::cleanup(&self.settings, &self.event_queues);
    }
}

pub struct DeadLetter {
    pub error: Option<String>,
    pub detail: Option<String>,
    pub body: Vec<u8>,
}

/// A TCP proxy in front of RabbitMQ or PostgreSQL whose connections a test can cut, and
/// which can play the service down (connections accepted and dropped at once).
pub struct TcpProxy {
    pub port: u16,
    connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accepted: Arc<AtomicUsize>,
    down: Arc<std::sync::atomic::AtomicBool>,
    acceptor: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(upstream: &'static str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let connections: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let accepted = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acceptor = {
            let connections = connections.clone();
            let accepted = accepted.clone();
            let down = down.clone();
            tokio::spawn(async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if down.load(Ordering::SeqCst) {
                        drop(inbound);
                        continue;
                    }
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
            down,
            acceptor,
        }
    }

    /// Play the service down (`true`: every connection cut, new ones dropped at once) or up.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
        if down {
            self.cut();
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

/// The operator tests name in `jobs pause/resume/expedite/cancel/approve`.
pub const OPERATOR: policy_reconciler::ops::Operator<'static> = policy_reconciler::ops::Operator {
    by: "test.operator",
    reason: "a test",
};

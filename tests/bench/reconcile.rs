//! The reconciler against its limits and against the manual procedure, in one run.
//!
//! `cargo bench --bench reconcile` (flags after `--`, see `--help`). It starts the tenant
//! simulator in this process and the worker as a separate `policy-reconciler run` process
//! (release build) against the local PostgreSQL and RabbitMQ, in a database and with queue
//! names of its own, runs the scenarios, prints one markdown table and writes the same figures
//! as JSON (`bench-results/reconcile.json` by default). Everything it creates is removed.
//! Its database, queue names, simulator, worker process and event queue come from the test kit
//! it shares with `tests/api` (`lib/test-kit`).

use std::collections::HashMap;
use std::io::Write;
use std::panic::AssertUnwindSafe;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::{FutureExt as _, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection};
use policy_reconciler::configuration::Settings;
use policy_reconciler::simulator::{Seed, SimulatorSettings, default_catalogue};
use policy_reconciler::tenant::{GraphClient, LicenceChange, Tenant, TenantSettings, UserRef};
use serde_json::{Value, json};
use sqlx::{Connection as _, Executor, PgConnection};
use uuid::Uuid;

use test_kit as kit;

use kit::broker::{self, EventQueue};
use kit::simulator::SimThread;
use kit::{env, worker};

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmarks of policy-reconciler")]
struct Args {
    /// Members of the overhead, budget and re-run job.
    #[arg(long, default_value_t = 20_000)]
    users: usize,
    /// Rounds of the overhead and re-run scenarios (their figures are medians).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Write limit of the simulator (writes a second) in the budget scenario.
    #[arg(long, default_value_t = 200)]
    budget_rate: u32,
    /// Simulated Graph latency (ms) in the budget and manual scenarios.
    #[arg(long, default_value_t = 20)]
    latency_ms: u64,
    /// Members of the manual-procedure comparison (the sequential script is slow).
    #[arg(long, default_value_t = 1_000)]
    manual_users: usize,
    /// Members of the large job of the memory scenario (the small one is `--users`).
    #[arg(long, default_value_t = 200_000)]
    memory_users: usize,
    /// Messages of the ingest scenario.
    #[arg(long, default_value_t = 10_000)]
    ingest_messages: usize,
    /// Where the JSON figures go.
    #[arg(long, default_value = "bench-results/reconcile.json")]
    output: String,
    /// Members of the realistic-tenant scenario.
    #[arg(long, default_value_t = 10_000)]
    realistic_users: usize,
    /// Items of the console scenario's job.
    #[arg(long, default_value_t = 200_000)]
    console_items: usize,
    /// Members of the chaos scenario's job.
    #[arg(long, default_value_t = 5_000)]
    chaos_users: usize,
    /// Scenarios to run (comma-separated):
    /// overhead,rerun,budget,chaos,realistic,manual,memory,ingest,console.
    #[arg(
        long,
        default_value = "overhead,rerun,budget,chaos,realistic,manual,memory,ingest,console"
    )]
    only: String,
    // `cargo bench` passes `--bench`; accept and ignore it.
    #[arg(long, hide = true)]
    bench: bool,
}

/// One line of the results table.
#[derive(Debug, Clone, serde::Serialize)]
struct Figure {
    scenario: String,
    figure: String,
    value: f64,
    unit: &'static str,
    target: String,
    /// value / target-reference where a ratio means something.
    ratio: Option<f64>,
    met: Option<bool>,
}

/// The simulator on a runtime of its own (it must not share the measuring thread), with two
/// runtime threads and seats for every scenario: the built-in catalogue with a million of each.
fn start_simulator() -> SimThread {
    let sim = SimThread::start_on(SimulatorSettings::for_tests(), 2);
    let mut skus = default_catalogue();
    for sku in &mut skus {
        sku.prepaid_units.enabled = 1_000_000;
    }
    sim.state
        .seed(&Seed {
            skus: Some(skus),
            users: vec![],
            groups: vec![],
        })
        .unwrap();
    sim
}

/// How the simulated tenant behaves in a scenario (its statistics start again).
trait Behaviour {
    fn behave(&self, patch: Value);

    /// No latency and no limits.
    fn unlimited(&self) {
        self.behave(
            json!({ "latency_ms": 0, "latency_jitter_ms": 0, "writes_per_window": 0,
                            "resource_units_per_window": 0 }),
        );
    }
}

impl Behaviour for SimThread {
    /// Every scenario starts from the bench's own tenant ([`SimulatorSettings::for_tests`]:
    /// no throttling beyond what the scenario sets) plus its patch, unless the patch names a
    /// profile (which starts from that profile's figures): what an earlier scenario set (the
    /// realistic one's faults) does not leak into the next.
    fn behave(&self, patch: Value) {
        let patch = match patch.as_object() {
            Some(keys) if !keys.contains_key("profile") => {
                let mut base = serde_json::to_value(SimulatorSettings::for_tests().behaviour)
                    .expect("the behaviour serialises");
                let fields = base.as_object_mut().expect("an object");
                fields.extend(keys.clone());
                base
            }
            _ => patch,
        };
        self.state.set_behaviour(&patch).expect("valid behaviour");
        self.state.reset_stats();
    }
}

/// A worker process and what it needs.
struct Bench {
    id: String,
    env: HashMap<String, String>,
    settings: Settings,
    sim: SimThread,
    amqp: Connection,
    channel: Channel,
    events: EventQueue,
    worker: Option<Child>,
    /// The worker's /metrics port.
    worker_port: u16,
    /// Every worker process started, so that none outlives the bench, whatever failed.
    spawned: Mutex<Vec<u32>>,
    /// The overhead scenario's job time, for the JSON report.
    overhead_time: Option<Duration>,
}

impl Bench {
    async fn new() -> Self {
        let id = kit::run_id();
        let sim = start_simulator();
        let mut env = env::isolated("bench", &id);
        env.extend(env::variables(
            [
                ("LOG__LEVEL", "warn".into()),
                ("LOG__FORMAT", "json".into()),
                ("OUTBOX__POLL_INTERVAL_MS", "100".into()),
                ("ENGINE__POLL_INTERVAL_MS", "50".into()),
                ("SCHEDULE__LARGE_JOB_THRESHOLD", "100000000".into()),
            ]
            .into_iter()
            .chain(env::simulated_tenant(&sim.base_url)),
        ));
        let settings = env::settings(&env);
        // The database and its tables, before any scenario reads them (a worker would make
        // them too, but `--only ingest` reads before its worker starts).
        policy_reconciler::store::ensure_database(&settings.database)
            .await
            .expect("the bench's database");
        let pool = policy_reconciler::store::pool(&settings.database);
        policy_reconciler::store::migrate(&pool)
            .await
            .expect("migrations");
        pool.close().await;
        let amqp = broker::connect().await;
        let channel = amqp.create_channel().await.unwrap();
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        let t = &settings.broker.topology;
        // Declare what the worker declares, so that nothing published before it starts is lost.
        policy_reconciler::broker::topology::declare(
            &amqp,
            t,
            settings.broker.delivery_limit.get(),
        )
        .await
        .expect("topology");
        let events = EventQueue::declare(
            &amqp,
            &events_queue(&id),
            &t.events_exchange,
            "job.completed",
        )
        .await;
        Self {
            id,
            env,
            settings,
            sim,
            amqp,
            channel,
            events,
            worker: None,
            worker_port: 0,
            spawned: Mutex::default(),
            overhead_time: None,
        }
    }

    /// (Re)start the worker process with `extra` settings; wait until it is ready.
    async fn start_worker(&mut self, extra: &[(&str, String)]) {
        self.stop_worker();
        let (child, port) = self.spawn_worker(extra).await;
        self.worker = Some(child);
        self.worker_port = port;
    }

    /// A worker process with `extra` settings, ready, and its port; the caller ends it.
    async fn spawn_worker(&self, extra: &[(&str, String)]) -> (Child, u16) {
        let port = worker::free_port();
        let mut command = worker::command(env!("CARGO_BIN_EXE_policy-reconciler"), &self.env);
        command
            .env(
                "RECONCILER__HTTP__LISTEN_ADDRESS",
                format!("127.0.0.1:{port}"),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in extra {
            command.env(format!("RECONCILER__{k}"), v);
        }
        let child = command.spawn().expect("worker binary");
        self.spawned.lock().unwrap().push(child.id());
        worker::wait_ready(&format!("127.0.0.1:{port}")).await;
        (child, port)
    }

    /// A worker whose write budget is as an operator configures it for a tenant limited to
    /// `limit` writes a second: just under the limit, with a small burst.
    async fn start_budgeted_worker(&mut self, limit: u32) {
        let budget = f64::from(limit) * 0.98;
        self.start_worker(&[
            ("TENANT__WRITES_PER_SECOND", format!("{budget}")),
            ("TENANT__WRITE_BURST", "5".into()),
        ])
        .await;
    }

    fn stop_worker(&mut self) {
        if let Some(mut child) = self.worker.take() {
            worker::terminate(&mut child, Duration::from_secs(20));
        }
    }

    /// The worker's own timings (histogram sums and counts), for the profile notes.
    async fn worker_profile(&self) -> Vec<String> {
        let text = reqwest::get(format!("http://127.0.0.1:{}/metrics", self.worker_port))
            .await
            .and_then(|r| r.error_for_status())
            .map(|r| r.text());
        let Ok(text) = text else { return vec![] };
        let text = text.await.unwrap_or_default();
        text.lines()
            .filter(|l| {
                !l.starts_with('#')
                    && (l.contains("_sum") || l.contains("_count") || l.contains("_total"))
            })
            .filter(|l| {
                l.contains("chunk_duration")
                    || l.contains("plan_duration")
                    || l.contains("tenant_request_duration")
                    || l.contains("ingest_duration")
                    || l.contains("budget_wait")
                    || l.contains("chunks_deferred")
                    || l.contains("retries_total")
            })
            .map(str::to_owned)
            .collect()
    }

    fn worker_pid(&self) -> Option<u32> {
        self.worker.as_ref().map(Child::id)
    }

    /// Peak resident memory of the worker process so far (VmHWM), in MiB.
    fn worker_peak_rss_mib(&self) -> f64 {
        let pid = self.worker.as_ref().expect("a worker runs").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0)
            .unwrap_or(f64::NAN)
    }

    async fn publish(&self, job_type: &str, payload: Value) -> String {
        let message_id = Uuid::new_v4().to_string();
        let body = json!({ "message_id": message_id, "type": job_type, "schema_version": 1,
                           "sent_at": chrono::Utc::now().to_rfc3339(), "dry_run": false,
                           "ticket": { "reference": "INC-BENCH", "originator": "bench@nhs.net" },
                           "payload": payload });
        broker::publish_job(
            &self.channel,
            &self.settings.broker.topology.jobs_exchange,
            &body,
        )
        .await;
        message_id
    }

    /// Publish a policy change and wait for its completion; returns (elapsed, event).
    async fn run_policy(
        &mut self,
        policy: &str,
        version: i64,
        members: &[String],
    ) -> (Duration, Value) {
        let started = Instant::now();
        let published_at = chrono::Utc::now();
        let payload = policy_payload(policy, version, members);
        let message_id = self.publish("policy.changed", payload).await;
        loop {
            let event = self
                .events
                .next(Duration::from_secs(900))
                .await
                .expect("job.completed within 15 minutes");
            if event["source_message_id"] == message_id.as_str() {
                assert_eq!(event["outcome"], "succeeded", "{event}");
                let elapsed = started.elapsed();
                self.timeline(&message_id, published_at, elapsed).await;
                return (elapsed, event);
            }
        }
    }

    /// `VACUUM ANALYZE` the worker's database, as pgbench does before a run: the clean-up
    /// after one round (autovacuum, on tables that just took 40,000 writes) is not billed to
    /// the next, whose figures it otherwise doubled PostgreSQL's CPU in.
    async fn vacuum(&self) {
        if let Ok(mut conn) = PgConnection::connect_with(&self.settings.database.with_db()).await {
            let _ = conn.execute("VACUUM ANALYZE").await;
        }
    }

    /// Where a job's time went, from its row: stored, planning begun, first chunk claimed
    /// (planning committed), completed; and the event's arrival.
    async fn timeline(
        &self,
        message_id: &str,
        published_at: chrono::DateTime<chrono::Utc>,
        elapsed: Duration,
    ) {
        type Times = (
            Option<chrono::DateTime<chrono::Utc>>,
            Option<chrono::DateTime<chrono::Utc>>,
            Option<chrono::DateTime<chrono::Utc>>,
            Option<chrono::DateTime<chrono::Utc>>,
        );
        let Ok(mut conn) = PgConnection::connect_with(&self.settings.database.with_db()).await
        else {
            return;
        };
        let times: Result<Times, _> = sqlx::query_as(
            "SELECT received_at, accepted_at, started_at, completed_at FROM jobs
             WHERE message_id = $1",
        )
        .bind(message_id)
        .fetch_one(&mut conn)
        .await;
        let at = |t: Option<chrono::DateTime<chrono::Utc>>| {
            t.map_or("?".to_owned(), |t| {
                format!("{} ms", (t - published_at).num_milliseconds())
            })
        };
        if let Ok((received, accepted, started, completed)) = times {
            eprintln!(
                "  timeline from publish: stored {}, planning began {}, first chunk {}, completed {}, event received {} ms",
                at(received),
                at(accepted),
                at(started),
                at(completed),
                elapsed.as_millis()
            );
        }
    }

    async fn cleanup(mut self) {
        self.stop_worker();
        // Workers a failed or interrupted scenario left running (the chaos scenario's two):
        // those of the recorded ids that are still this bench's (their environment names its
        // run id; a finished worker's id may belong to another process by now).
        for pid in self.spawned.lock().unwrap().drain(..) {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if String::from_utf8_lossy(&environ).contains(&self.id) {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .stderr(Stdio::null())
                    .status();
            }
        }
        kit::remove_run(
            &self.settings,
            &[events_queue(&self.id), bare_queue(&self.id)],
        )
        .await;
    }
}

/// A `policy.changed` of `policy` (ENTERPRISEPACK with Teams on: every scenario's policy)
/// listing `members`.
fn policy_payload(policy: &str, version: i64, members: &[String]) -> Value {
    json!({ "policy": { "id": policy, "name": policy, "ods_code": "RX1", "version": version,
                        "licence": "ENTERPRISEPACK", "toggles": { "TEAMS1": true } },
            "members": members, "total_members": members.len() })
}

/// Crash recovery (issue 28): kills of one of two workers during the chaos scenario's job.
const CHAOS_KILLS: usize = 20;

/// The chaos scenario: `users` members at 150 writes a second on two workers with 5-s
/// leases, once undisturbed and once while one worker or the other is killed (SIGKILL) and
/// started again [`CHAOS_KILLS`] times, spread over the undisturbed run's time. A killed
/// worker's chunks are taken over once their leases expire; what it wrote is read back, not
/// written again. Figures: the time against the undisturbed run, and writes per member.
async fn chaos(bench: &mut Bench, users: usize, latency_ms: u64) -> Vec<Figure> {
    bench.stop_worker();
    bench
        .sim
        .behave(json!({ "latency_ms": latency_ms, "latency_jitter_ms": 0,
                             "writes_per_window": 0, "resource_units_per_window": 0 }));
    let extra = [
        ("TENANT__WRITES_PER_SECOND", "150".to_owned()),
        ("ENGINE__LEASE_SECONDS", "5".to_owned()),
    ];
    let mut workers = vec![
        bench.spawn_worker(&extra).await.0,
        bench.spawn_worker(&extra).await.0,
    ];
    let members = bench.sim.seed_users("calm", users);
    bench.sim.state.reset_stats();
    let (calm, _) = bench.run_policy("bench-calm", 1, &members).await;
    let calm_writes = bench.sim.state.stats().writes_applied as f64 / users as f64;
    eprintln!(
        "chaos: undisturbed {:.1} s, {calm_writes:.2} writes per member",
        calm.as_secs_f64()
    );

    let members = bench.sim.seed_users("chaos", users);
    bench.sim.state.reset_stats();
    let started = Instant::now();
    let message_id = bench
        .publish("policy.changed", policy_payload("bench-chaos", 1, &members))
        .await;
    let every = calm / (CHAOS_KILLS as u32 + 1);
    let mut kills = 0;
    let done = loop {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "the chaos job within 15 minutes"
        );
        match bench.events.next(every).await {
            Some(event) if event["source_message_id"] == message_id.as_str() => break event,
            Some(_) => {}
            None if kills < CHAOS_KILLS => {
                let victim = &mut workers[kills % 2];
                let _ = victim.kill();
                let _ = victim.wait();
                workers[kills % 2] = bench.spawn_worker(&extra).await.0;
                kills += 1;
            }
            None => {}
        }
    };
    let elapsed = started.elapsed();
    assert_eq!(done["outcome"], "succeeded", "{done}");
    assert_eq!(done["counts"]["changed"], users as u64, "{done}");
    let writes = bench.sim.state.stats().writes_applied as f64 / users as f64;
    eprintln!(
        "chaos: {kills} kills, {:.1} s, {writes:.2} writes per member",
        elapsed.as_secs_f64()
    );
    for mut worker in workers {
        worker::terminate(&mut worker, Duration::from_secs(20));
    }
    let ratio = elapsed.as_secs_f64() / calm.as_secs_f64();
    vec![
        figure(
            "chaos",
            &format!(
                "time with {kills} kills over the undisturbed run ({:.0} s)",
                calm.as_secs_f64()
            ),
            elapsed.as_secs_f64(),
            "s",
            "≤ 2.5 × undisturbed",
            Some(ratio),
            Some(ratio <= 2.5),
        ),
        figure(
            "chaos",
            "tenant writes applied per member, with kills",
            writes,
            "writes",
            "= 1.00",
            None,
            Some((writes - 1.0).abs() < 0.005),
        ),
    ]
}

/// The queue of the `job.completed` events the bench waits for.
fn events_queue(id: &str) -> String {
    format!("bench.{id}.events")
}

/// The queue of the bare-consumer baseline of the ingest scenario.
fn bare_queue(id: &str) -> String {
    format!("bench.{id}.bare")
}

/// The median (the mean of the middle two for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// CPU seconds used so far, by part of the machine: where a run's time goes on 2 cores.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    worker: f64,
    postgres: f64,
    rabbitmq: f64,
    /// This process: the simulator, the publisher and the direct loop.
    bench: f64,
}

impl Cpu {
    fn now(worker: Option<u32>) -> Self {
        // utime, stime, cutime, cstime: fields 14 to 17 of /proc/PID/stat (exited backends
        // are counted in the postmaster's cutime and cstime).
        fn read(pid: &str) -> Option<(String, f64)> {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            let (head, tail) = stat.rsplit_once(')')?;
            let comm = head.split_once('(')?.1.to_owned();
            let fields: Vec<&str> = tail.split_whitespace().collect();
            let ticks: f64 = fields[11..15]
                .iter()
                .filter_map(|f| f.parse::<f64>().ok())
                .sum();
            Some((comm, ticks / 100.0))
        }
        let mut cpu = Cpu {
            bench: read("self").map_or(0.0, |(_, t)| t),
            worker: worker
                .and_then(|pid| read(&pid.to_string()))
                .map_or(0.0, |(_, t)| t),
            ..Cpu::default()
        };
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            match read(&name) {
                Some((comm, t)) if comm == "postgres" => cpu.postgres += t,
                Some((comm, t)) if comm.starts_with("beam") => cpu.rabbitmq += t,
                _ => {}
            }
        }
        cpu
    }

    fn since(self, before: Cpu) -> Cpu {
        Cpu {
            worker: self.worker - before.worker,
            postgres: self.postgres - before.postgres,
            rabbitmq: self.rabbitmq - before.rabbitmq,
            bench: self.bench - before.bench,
        }
    }

    fn describe(&self, what: &str, seconds: f64) -> String {
        format!(
            "{what}: {seconds:.2} s wall; CPU s: worker {:.2}, postgres {:.2}, rabbitmq {:.2}, simulator and bench {:.2}",
            self.worker, self.postgres, self.rabbitmq, self.bench
        )
    }
}

fn figure(
    scenario: &str,
    figure: &str,
    value: f64,
    unit: &'static str,
    target: &str,
    ratio: Option<f64>,
    met: Option<bool>,
) -> Figure {
    Figure {
        scenario: scenario.to_owned(),
        figure: figure.into(),
        value,
        unit,
        target: target.into(),
        ratio,
        met,
    }
}

/// The engine's work without broker, database or engine: the same client, the same rounds
/// (read, write what differs, read back), the same chunking and concurrency.
async fn direct_loop(sim: &SimThread, members: &[String], settings: &Settings) -> Duration {
    let mut tenant = TenantSettings::for_simulator(&sim.base_url);
    tenant.batch_size = settings.tenant.batch_size;
    tenant.batch_concurrency = settings.tenant.batch_concurrency;
    let client = Arc::new(GraphClient::new(tenant).unwrap());
    let catalogue = client.skus().await.unwrap();
    let desired = catalogue
        .assignment("ENTERPRISEPACK", [("TEAMS1", true)])
        .unwrap();
    let started = Instant::now();
    let chunks: Vec<Vec<String>> = members
        .chunks(settings.engine.chunk_size.get() as usize)
        .map(|c| c.to_vec())
        .collect();
    let queue = Arc::new(tokio::sync::Mutex::new(chunks.into_iter()));
    let mut tasks = Vec::new();
    for _ in 0..settings.engine.chunk_concurrency.get() {
        let queue = queue.clone();
        let client = client.clone();
        let desired = desired.clone();
        let round = settings.engine.round_size.get() as usize;
        tasks.push(tokio::spawn(async move {
            loop {
                let Some(chunk) = queue.lock().await.next() else {
                    return;
                };
                for part in chunk.chunks(round) {
                    let refs: Vec<UserRef> = part.iter().map(|u| UserRef::Upn(u.clone())).collect();
                    let states = client.get_users(&refs).await;
                    let changes: Vec<LicenceChange> = states
                        .into_iter()
                        .flatten()
                        .map(|s| LicenceChange {
                            user: UserRef::Id(s.id),
                            add: vec![desired.clone()],
                            remove: vec![],
                        })
                        .collect();
                    client.assign_licences(&changes).await;
                    client.get_users(&refs).await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    started.elapsed()
}

/// What a resolver's script does today: for each user, read, then assign; one at a time.
async fn manual_script(sim: &SimThread, members: &[String]) -> Duration {
    let http = reqwest::Client::new();
    let token = kit::simulator::token_response(&http, &sim.base_url, "tenant").await;
    let bearer = format!("Bearer {}", token["access_token"].as_str().unwrap());
    let skus: Value = http
        .get(format!("{}/v1.0/subscribedSkus", sim.base_url))
        .header("Authorization", &bearer)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sku = kit::simulator::sku(&skus, "ENTERPRISEPACK");
    let disabled: Vec<Value> = sku["servicePlans"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["servicePlanName"] != "TEAMS1" && p["servicePlanName"] != "SWAY")
        .map(|p| p["servicePlanId"].clone())
        .collect();
    let started = Instant::now();
    for upn in members {
        let _: Value = http
            .get(format!(
                "{}/v1.0/users/{upn}?$select=id,assignedLicenses",
                sim.base_url
            ))
            .header("Authorization", &bearer)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let status = http.post(format!("{}/v1.0/users/{upn}/assignLicense", sim.base_url))
            .header("Authorization", &bearer)
            .json(&json!({ "addLicenses": [{ "skuId": sku["skuId"], "disabledPlans": disabled }], "removeLicenses": [] }))
            .send().await.unwrap().status();
        assert!(status.is_success(), "{status}");
    }
    started.elapsed()
}

/// A consumer that only acknowledges: the ceiling of ingest on this machine.
async fn bare_consumer(bench: &Bench, messages: usize) -> Duration {
    let queue = bare_queue(&bench.id);
    let channel = bench.amqp.create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        lapin::types::AMQPValue::LongString("quorum".into()),
    );
    channel
        .queue_declare(queue.as_str().into(), QueueDeclareOptions::durable(), args)
        .await
        .unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let body = json!({ "policy_id": "bench-ingest", "members": ["x@nhs.net"], "total_members": 1 })
        .to_string();
    for _ in 0..messages {
        channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                body.as_bytes(),
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap();
    }
    channel.wait_for_confirms().await.unwrap();
    let consuming = bench.amqp.create_channel().await.unwrap();
    consuming
        .basic_qos(
            bench.settings.broker.prefetch_count.get(),
            Default::default(),
        )
        .await
        .unwrap();
    let mut consumer = consuming
        .basic_consume(
            queue.as_str().into(),
            "bare".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let started = Instant::now();
    for _ in 0..messages {
        let delivery = consumer.next().await.unwrap().unwrap();
        delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    started.elapsed()
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if !args.bench {
        // `cargo test --all-targets` runs bench targets in test mode; the benchmark is not a
        // test (minutes long, figures rather than verdicts): run it with `cargo bench`.
        eprintln!("run with: cargo bench --bench reconcile [-- FLAGS]");
        return;
    }
    let only: Vec<&str> = args.only.split(',').map(str::trim).collect();
    if let Some(unknown) = only.iter().find(|s| !SCENARIOS.contains(s)) {
        eprintln!(
            "unknown scenario {unknown:?}; the scenarios: {}",
            SCENARIOS.join(",")
        );
        std::process::exit(2);
    }
    let wants = |s: &str| only.contains(&s);
    let mut bench = Bench::new().await;
    eprintln!("bench {}: simulator at {}", bench.id, bench.sim.base_url);
    let mut figures: Vec<Figure> = Vec::new();
    let mut failed = false;
    for scenario in SCENARIOS {
        let runs = match *scenario {
            // The re-run figures are measured on the overhead scenario's jobs.
            "overhead" => wants("overhead") || wants("rerun"),
            "rerun" => false,
            s => wants(s),
        };
        if !runs {
            continue;
        }
        eprintln!("== {scenario}");
        let run = AssertUnwindSafe(run_scenario(scenario, &mut bench, &args, wants("rerun")))
            .catch_unwind();
        let result = tokio::select! {
            result = run => result,
            _ = tokio::signal::ctrl_c() => {
                figures.push(failure(scenario, "interrupted"));
                failed = true;
                break;
            }
        };
        match result {
            Ok(more) => figures.extend(more),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .map(String::as_str)
                    .or_else(|| panic.downcast_ref::<&str>().copied())
                    .unwrap_or("panicked");
                figures.push(failure(scenario, why));
                failed = true;
            }
        }
    }
    let overhead_time = bench.overhead_time;
    bench.cleanup().await;

    // ---- report ----
    let mut table =
        String::from("| scenario | figure | value | target | ratio |\n|---|---|---|---|---|\n");
    for f in &figures {
        let ratio = f.ratio.map(|r| format!("{r:.2}")).unwrap_or_default();
        let verdict = match f.met {
            Some(true) => " ✓",
            Some(false) => " ✗",
            None => "",
        };
        table.push_str(&format!(
            "| {} | {} | {:.2} {} | {}{} | {} |\n",
            f.scenario, f.figure, f.value, f.unit, f.target, verdict, ratio
        ));
    }
    println!("{table}");
    if let Some(dir) = std::path::Path::new(&args.output).parent() {
        let _ = std::fs::create_dir_all(dir);
    }
    let report = json!({
        "date": chrono::Utc::now().to_rfc3339(),
        "machine": { "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0) },
        "args": { "users": args.users, "rounds": args.rounds, "budget_rate": args.budget_rate, "latency_ms": args.latency_ms,
                  "manual_users": args.manual_users, "memory_users": args.memory_users,
                  "ingest_messages": args.ingest_messages },
        "overhead_seconds": overhead_time.map(|d| d.as_secs_f64()),
        "failed": failed,
        "figures": figures,
    });
    let mut file = std::fs::File::create(&args.output).expect("output file");
    writeln!(file, "{}", serde_json::to_string_pretty(&report).unwrap()).unwrap();
    eprintln!("figures written to {}", args.output);
    if failed {
        std::process::exit(1);
    }
}

/// The scenarios, in the order they run (`--only` takes any of them).
const SCENARIOS: &[&str] = &[
    "overhead",
    "rerun",
    "budget",
    "chaos",
    "realistic",
    "manual",
    "memory",
    "console",
    "ingest",
];

/// Runs one scenario (`overhead` measures the re-run too when `rerun` is wanted).
async fn run_scenario(scenario: &str, bench: &mut Bench, args: &Args, rerun: bool) -> Vec<Figure> {
    match scenario {
        "overhead" => overhead(bench, args, rerun).await,
        "budget" => budget(bench, args).await,
        "chaos" => chaos(bench, args.chaos_users, args.latency_ms).await,
        "realistic" => realistic(bench, args).await,
        "manual" => manual(bench, args).await,
        "memory" => memory(bench, args).await,
        "console" => console_pages(bench, args.console_items).await,
        "ingest" => ingest(bench, args).await,
        other => unreachable!("scenario {other}"),
    }
}

/// The row of a scenario that failed or was interrupted: the table says so, and the bench's
/// exit code is 1.
fn failure(scenario: &str, why: &str) -> Figure {
    Figure {
        scenario: scenario.to_owned(),
        figure: format!("failed: {}", why.lines().next().unwrap_or(why)),
        value: f64::NAN,
        unit: "",
        target: String::new(),
        ratio: None,
        met: Some(false),
    }
}

/// The console's pages for one job of `items` items (half done, one in fifty of those failed,
/// 800 chunks), stored directly (what is measured is the pages, not the reconciling): the
/// median of five requests of each after one to warm up.
async fn console_pages(bench: &mut Bench, items: usize) -> Vec<Figure> {
    const TOKEN: &str = "bench-console-token-0123456789";
    bench
        .start_worker(&[
            ("CONSOLE__TOKENS__BENCH__ROLE", "reader".into()),
            ("CONSOLE__TOKENS__BENCH__TOKEN", TOKEN.into()),
        ])
        .await;
    let pool = policy_reconciler::store::pool(&bench.settings.database);
    let id = Uuid::new_v4();
    let ticket = format!("INCBENCH{}", &bench.id[..6]);
    // Paused, so that no replica claims its chunks.
    sqlx::query(
        "INSERT INTO jobs (id, message_id, job_type, schema_version, state, ticket, payload,
                           subject, total_items, schedule, earliest_start, accepted_at,
                           started_at, received_at, paused)
         VALUES ($1, $1::text, 'policy.changed', 1, 'running',
                 json_build_object('reference', $2::text, 'originator', 'bench@nhs.net'),
                 '{}'::jsonb, jsonb_build_object('policy_id', 'bench-console'), $3,
                 'immediate', now(), now() - interval '10 minutes',
                 now() - interval '10 minutes', now() - interval '10 minutes', true)",
    )
    .bind(id)
    .bind(&ticket)
    .bind(items as i64)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_items (job_id, seq, chunk, item, outcome, failure_code, detail, finished_at)
         SELECT $1, n, n / 250, 'console' || n || '@nhs.net',
                CASE WHEN n >= $2 / 2 THEN NULL WHEN n % 50 = 0 THEN 'failed' ELSE 'changed' END,
                CASE WHEN n >= $2 / 2 OR n % 50 <> 0 THEN NULL
                     WHEN n % 100 = 0 THEN 'user_not_found' ELSE 'usage_location_missing' END,
                CASE WHEN n < $2 / 2 AND n % 50 = 0 THEN 'bench failure detail' END,
                CASE WHEN n < $2 / 2 THEN now() END
         FROM generate_series(0, $2 - 1) AS n",
    )
    .bind(id)
    .bind(items as i32)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO job_chunks (job_id, chunk, state, not_before)
         SELECT $1, c, CASE WHEN c < $2 / 500 THEN 'done' ELSE 'pending' END, now()
         FROM generate_series(0, ($2 - 1) / 250) AS c",
    )
    .bind(id)
    .bind(items as i32)
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("ANALYZE job_items")
        .execute(&pool)
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", bench.worker_port);
    let someone = format!("console{}@nhs.net", items / 3);
    let pages = [
        ("job page".to_owned(), format!("/console/jobs/{id}")),
        (
            "job page, failures of one code".to_owned(),
            format!("/console/jobs/{id}?code=user_not_found"),
        ),
        (
            "live progress fragment".to_owned(),
            format!("/console/jobs/{id}/progress"),
        ),
        (
            "jobs list, search by ticket".to_owned(),
            format!("/console/jobs?q={ticket}"),
        ),
        (
            "jobs list, search by email".to_owned(),
            format!("/console/jobs?q={someone}"),
        ),
        (
            "a user's jobs".to_owned(),
            format!("/console/users?email={someone}"),
        ),
        ("overview".to_owned(), "/console".to_owned()),
        (
            "API: failed items of one code".to_owned(),
            format!("/api/v1/jobs/{id}/items?code=user_not_found"),
        ),
    ];
    let mut figures = Vec::new();
    for (name, path) in pages {
        let mut times = Vec::new();
        for round in 0..6 {
            let started = Instant::now();
            let response = client
                .get(format!("{base}{path}"))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap();
            assert!(
                response.status().is_success(),
                "{path}: {}",
                response.status()
            );
            response.bytes().await.unwrap();
            if round > 0 {
                times.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        figures.push(figure(
            "console",
            &format!("{name}, job of {items} items (median of 5)"),
            median,
            "ms",
            "< 200 ms",
            None,
            Some(median < 200.0),
        ));
    }
    pool.close().await;
    bench.stop_worker();
    figures
}

/// The overhead scenario (and the re-run, when `rerun`): repeated, worker and direct loop
/// alternating, each round on users of its own: on a shared 2-core machine one run can be 30 %
/// off the next, so the figures are medians of the rounds' own ratios.
async fn overhead(bench: &mut Bench, args: &Args, rerun: bool) -> Vec<Figure> {
    let mut figures = Vec::new();
    bench.sim.unlimited();
    bench.start_worker(&[]).await;
    let (mut worker_rates, mut direct_rates, mut ratios) = (vec![], vec![], vec![]);
    let (mut rerun_times, mut rerun_ratios, mut rerun_writes) = (vec![], vec![], 0);
    for round in 0..args.rounds {
        bench.vacuum().await;
        let members = bench.sim.seed_users(&format!("ovh{round}-"), args.users);
        let policy = format!("bench-overhead-{round}");
        let cpu = Cpu::now(bench.worker_pid());
        let (elapsed, done) = bench.run_policy(&policy, 1, &members).await;
        assert_eq!(done["counts"]["changed"], args.users as u64);
        let worker_cpu = Cpu::now(bench.worker_pid()).since(cpu);
        let direct_members = bench.sim.seed_users(&format!("dir{round}-"), args.users);
        let cpu = Cpu::now(bench.worker_pid());
        let direct = direct_loop(&bench.sim, &direct_members, &bench.settings).await;
        let direct_cpu = Cpu::now(bench.worker_pid()).since(cpu);
        let worker_rate = args.users as f64 / elapsed.as_secs_f64();
        let direct_rate = args.users as f64 / direct.as_secs_f64();
        eprintln!(
            "overhead round {round}: worker {worker_rate:.0} users/s, direct {direct_rate:.0} users/s"
        );
        eprintln!(
            "  {}",
            worker_cpu.describe("worker run", elapsed.as_secs_f64())
        );
        eprintln!(
            "  {}",
            direct_cpu.describe("direct loop", direct.as_secs_f64())
        );
        worker_rates.push(worker_rate);
        direct_rates.push(direct_rate);
        ratios.push(worker_rate / direct_rate);
        bench.overhead_time = Some(elapsed);
        if rerun {
            bench.sim.state.reset_stats();
            let cpu = Cpu::now(bench.worker_pid());
            let (again, done) = bench.run_policy(&policy, 1, &members).await;
            assert_eq!(done["counts"]["already_compliant"], args.users as u64);
            eprintln!(
                "  {}",
                Cpu::now(bench.worker_pid())
                    .since(cpu)
                    .describe("re-run", again.as_secs_f64())
            );
            rerun_writes += bench.sim.state.stats().writes_attempted;
            rerun_times.push(again.as_secs_f64());
            rerun_ratios.push(again.as_secs_f64() / elapsed.as_secs_f64());
        }
    }
    for line in bench.worker_profile().await {
        eprintln!("  worker profile: {line}");
    }
    let ratio = median(&ratios);
    figures.push(figure(
        "overhead",
        "worker, publish to job.completed",
        median(&worker_rates),
        "users/s",
        "≥ 0.8 × direct",
        Some(ratio),
        Some(ratio >= 0.8),
    ));
    figures.push(figure(
        "overhead",
        "direct loop (same client, batching, concurrency)",
        median(&direct_rates),
        "users/s",
        "",
        None,
        None,
    ));
    if rerun {
        let ratio = median(&rerun_ratios);
        figures.push(figure(
            "re-run",
            "writes",
            rerun_writes as f64,
            "writes",
            "0",
            None,
            Some(rerun_writes == 0),
        ));
        figures.push(figure(
            "re-run",
            "time against the overhead run",
            median(&rerun_times),
            "s",
            "≤ 0.5 × overhead",
            Some(ratio),
            Some(ratio <= 0.5),
        ));
    }
    figures
}

/// The write budget against a tenant limited to `--budget-rate` writes a second.
async fn budget(bench: &mut Bench, args: &Args) -> Vec<Figure> {
    let mut figures = Vec::new();
    bench.sim.behave(
        json!({ "latency_ms": args.latency_ms, "writes_per_window": args.budget_rate,
                             "write_window_seconds": 1, "resource_units_per_window": 0 }),
    );
    bench.start_budgeted_worker(args.budget_rate).await;
    let members = bench.sim.seed_users("bud", args.users);
    let (elapsed, _) = bench.run_policy("bench-budget", 1, &members).await;
    let stats = bench.sim.state.stats();
    let achieved = stats.writes_applied as f64 / elapsed.as_secs_f64();
    let requests: u64 = stats.requests.values().flat_map(|m| m.values()).sum();
    let throttled_share = stats.throttled as f64 / requests.max(1) as f64;
    let ratio = achieved / f64::from(args.budget_rate);
    figures.push(figure(
        "budget",
        "achieved writes/s over the limit",
        achieved,
        "writes/s",
        "≥ 0.95 × limit",
        Some(ratio),
        Some(ratio >= 0.95),
    ));
    figures.push(figure(
        "budget",
        "requests answered 429",
        throttled_share * 100.0,
        "%",
        "≤ 1 %",
        None,
        Some(throttled_share <= 0.01),
    ));
    figures
}

/// The budget scenario's limit, in a tenant as it really is: the simulator's `realistic`
/// profile (replication lag of up to 3 s and now and then 15 s, half the reads from a
/// lagging replica, writes applied then answered 5xx or dropped, 5xx not applied, latency).
async fn realistic(bench: &mut Bench, args: &Args) -> Vec<Figure> {
    let mut figures = Vec::new();
    bench.sim.behave(
        json!({ "profile": "realistic", "writes_per_window": args.budget_rate,
                             "write_window_seconds": 1, "resource_units_per_window": 0,
                             "tenant_writes_per_window": 0 }),
    );
    bench.start_budgeted_worker(args.budget_rate).await;
    let members = bench.sim.seed_users("real", args.realistic_users);
    let (elapsed, done) = bench.run_policy("bench-realistic", 1, &members).await;
    assert_eq!(done["outcome"], "succeeded", "{done}");
    let changed = done["counts"]["changed"].as_u64().unwrap_or(0).max(1) as f64;
    let stats = bench.sim.state.stats();
    let writes = stats.total("assign_license") as f64;
    let reads = (stats.total("get_user") + stats.total("list_users")) as f64;
    let end_to_end = stats.writes_applied as f64 / elapsed.as_secs_f64();
    // The rate while writing: from the first second with an applied write to the second
    // by which 99 % of them were applied (the rest are the few writes answered 5xx and not
    // applied, sent again after `engine.resend_after_ms`, and verification).
    let per_second: Vec<(u64, u64)> = stats
        .writes_applied_per_second
        .iter()
        .map(|(s, n)| (*s, *n))
        .collect();
    let total: u64 = per_second.iter().map(|(_, n)| n).sum();
    if let Some((start, _)) = per_second.first() {
        let line: Vec<String> = per_second
            .iter()
            .map(|(s, n)| format!("{}:{n}", s - start))
            .collect();
        eprintln!("  writes applied per second: {}", line.join(" "));
    }
    let (first, _) = per_second.first().copied().unwrap_or_default();
    let mut cumulative = 0;
    let mut busy_until = first;
    for (second, n) in &per_second {
        cumulative += n;
        busy_until = *second;
        if cumulative * 100 >= total * 99 {
            break;
        }
    }
    let achieved = cumulative.saturating_sub(per_second.first().map_or(0, |p| p.1)) as f64
        / (busy_until.saturating_sub(first)).max(1) as f64;
    let ratio = achieved / f64::from(args.budget_rate);
    figures.push(figure(
        "realistic",
        "licence writes per changed user",
        writes / changed,
        "writes",
        "≤ 1.01",
        None,
        Some(writes / changed <= 1.01),
    ));
    figures.push(figure(
        "realistic",
        "user reads per user",
        reads / args.realistic_users as f64,
        "reads",
        "",
        None,
        None,
    ));
    figures.push(figure(
        "realistic",
        "achieved writes/s while writing, over the limit, with lag and faults",
        achieved,
        "writes/s",
        "≥ 0.95 × limit",
        Some(ratio),
        Some(ratio >= 0.95),
    ));
    figures.push(figure(
        "realistic",
        "writes/s from publish to job.completed (verification included)",
        end_to_end,
        "writes/s",
        "",
        Some(end_to_end / f64::from(args.budget_rate)),
        None,
    ));
    eprintln!(
        "realistic: {} users in {:.1} s",
        args.realistic_users,
        elapsed.as_secs_f64()
    );
    for line in bench.worker_profile().await {
        eprintln!("  worker profile: {line}");
    }
    let by_status: Vec<String> = stats
        .requests
        .iter()
        .map(|(route, statuses)| format!("{route} {statuses:?}"))
        .collect();
    eprintln!("  simulator answers: {}", by_status.join("; "));
    figures
}

/// The resolver's sequential script against the worker, on the same users and latency.
async fn manual(bench: &mut Bench, args: &Args) -> Vec<Figure> {
    let mut figures = Vec::new();
    bench.sim.behave(json!({ "latency_ms": args.latency_ms, "writes_per_window": 0, "resource_units_per_window": 0 }));
    bench.start_worker(&[]).await;
    let script_members = bench.sim.seed_users("man", args.manual_users);
    let script = manual_script(&bench.sim, &script_members).await;
    let members = bench.sim.seed_users("wrk", args.manual_users);
    let (worker, _) = bench.run_policy("bench-manual", 1, &members).await;
    let ratio = script.as_secs_f64() / worker.as_secs_f64();
    figures.push(figure(
        "manual",
        "sequential script (read, assign)",
        args.manual_users as f64 / script.as_secs_f64(),
        "users/s",
        "",
        None,
        None,
    ));
    figures.push(figure(
        "manual",
        "worker, same users and latency",
        args.manual_users as f64 / worker.as_secs_f64(),
        "users/s",
        "≥ 20 × script",
        Some(ratio),
        Some(ratio >= 20.0),
    ));
    figures
}

/// The worker's peak memory for a job of `--users` and of `--memory-users` members.
async fn memory(bench: &mut Bench, args: &Args) -> Vec<Figure> {
    let mut figures = Vec::new();
    bench.sim.unlimited();
    let mut peaks = Vec::new();
    for (label, n) in [("small", args.users), ("large", args.memory_users)] {
        bench.start_worker(&[]).await;
        let members = bench.sim.seed_users(&format!("mem{label}"), n);
        bench
            .run_policy(&format!("bench-memory-{label}"), 1, &members)
            .await;
        peaks.push(bench.worker_peak_rss_mib());
    }
    let ratio = peaks[1] / peaks[0];
    figures.push(figure(
        "memory",
        &format!("worker peak RSS, {} members", args.users),
        peaks[0],
        "MiB",
        "",
        None,
        None,
    ));
    figures.push(figure(
        "memory",
        &format!("worker peak RSS, {} members", args.memory_users),
        peaks[1],
        "MiB",
        "≤ 1.5 × and < 200 MB",
        Some(ratio),
        Some(ratio <= 1.5 && peaks[1] * 1.048_576 < 200.0),
    ));
    figures
}

/// Small jobs stored and acknowledged by a starting worker, against a bare consumer.
async fn ingest(bench: &mut Bench, args: &Args) -> Vec<Figure> {
    let mut figures = Vec::new();
    bench.stop_worker();
    let payload =
        json!({ "policy_id": "bench-ingest", "members": ["x@nhs.net"], "total_members": 1 });
    for _ in 0..args.ingest_messages {
        let message_id = Uuid::new_v4().to_string();
        let body = json!({ "message_id": message_id, "type": "policy.members_added", "schema_version": 1,
                           "sent_at": chrono::Utc::now().to_rfc3339(), "payload": payload });
        bench
            .channel
            .basic_publish(
                bench.settings.broker.topology.jobs_exchange.as_str().into(),
                "policy.members_added".into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default()
                    .with_delivery_mode(2)
                    .with_message_id(message_id.as_str().into()),
            )
            .await
            .unwrap();
    }
    bench.channel.wait_for_confirms().await.unwrap();
    let pool = policy_reconciler::store::pool(&bench.settings.database);
    // Counted in the table the loop below watches: earlier scenarios' jobs are there too
    // (and the console's job is in `jobs` only).
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(&pool)
        .await
        .unwrap();
    let started = Instant::now();
    bench.start_worker(&[]).await;
    loop {
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
            .fetch_one(&pool)
            .await
            .unwrap();
        if stored - before >= args.ingest_messages as i64 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let worker = started.elapsed();
    pool.close().await;
    let bare = bare_consumer(bench, args.ingest_messages).await;
    let worker_rate = args.ingest_messages as f64 / worker.as_secs_f64();
    let bare_rate = args.ingest_messages as f64 / bare.as_secs_f64();
    figures.push(figure(
        "ingest",
        "worker: stored and acknowledged (incl. start-up)",
        worker_rate,
        "messages/s",
        "report",
        Some(worker_rate / bare_rate),
        None,
    ));
    figures.push(figure(
        "ingest",
        "bare lapin consumer: acknowledge only",
        bare_rate,
        "messages/s",
        "",
        None,
        None,
    ));
    figures
}

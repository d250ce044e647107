//! The test kit shared by the integration tests (`tests/api`) and the benchmark (`tests/bench`).
//!
//! Both run the real worker against the local PostgreSQL and RabbitMQ and the tenant simulator,
//! and both must leave nothing behind and never meet another run. The kit gives every run (a
//! test, or the benchmark) an id of its own ([`run_id`]) and from it:
//!
//! - its own database (`pr_{prefix}_{id}`) and exchange and queue names (`{prefix}.{id}.…`),
//!   as the `RECONCILER__…` variables of [`env::isolated`], and [`env::settings`] to read them;
//! - the worker, in-process on a thread of its own or as a `policy-reconciler run` process, and
//!   waiting for it to be ready ([`worker`]);
//! - the tenant simulator on a thread of its own, seeding it and reading its state ([`simulator`]);
//! - publishing jobs and reading the events the worker publishes ([`broker`]), each checked
//!   against the contract's JSON Schemas ([`contract`]);
//! - dates: how a test gets them, never a fixed date compared with a clock ([`time`]);
//! - clean-up: [`remove_run`] (or [`cleanup`], from a `Drop`) deletes the run's queues and
//!   exchanges ([`broker::remove_topology`]) and drops its database ([`database::drop_database`]).
//!
//! It is a crate of its own (`lib/test-kit`), a dev-dependency of the service; the targets name
//! it `kit` (`use test_kit as kit;`).

pub mod broker;
pub mod contract;
pub mod database;
pub mod env;
pub mod simulator;
pub mod time;
pub mod worker;

use std::time::Duration;

use policy_reconciler::configuration::Settings;
use uuid::Uuid;

/// A fresh id for a run: 12 hex digits, short enough for database and queue names.
/// Whether this run's tests use a tenant simulator with the `realistic` profile
/// (`RECONCILER_TEST_TENANT=realistic`): replication lag, objects missing for a while, writes
/// applied then failed, Graph's throttling. The README's test command runs the end-to-end
/// tests of policies, roles and portal access a second time so.
pub fn realistic_tenant() -> bool {
    std::env::var("RECONCILER_TEST_TENANT").is_ok_and(|v| v == "realistic")
}

/// The service package's folder (the workspace root): where `config/` and `migrations/` are,
/// and where a worker process runs from.
pub fn service_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn run_id() -> String {
    Uuid::new_v4().simple().to_string()[..12].to_owned()
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

/// Delete a run's queues (its topology's and `extra_queues`) and exchanges, then drop its
/// database. Failures are ignored: what is already gone needs no removing.
pub async fn remove_run(settings: &Settings, extra_queues: &[String]) {
    broker::remove_topology(&settings.broker.topology, extra_queues).await;
    database::drop_database(&settings.database).await;
}

/// [`remove_run`] on a runtime and thread of its own, for a `Drop` (the caller may be inside a
/// runtime that is busy dropping it).
pub fn cleanup(settings: &Settings, extra_queues: &[String]) {
    let settings = settings.clone();
    let extra_queues = extra_queues.to_vec();
    let cleanup = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(remove_run(&settings, &extra_queues));
    });
    let _ = cleanup.join();
}

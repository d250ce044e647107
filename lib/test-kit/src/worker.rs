//! The worker under test: in-process on a runtime and thread of its own ([`WorkerThread`]), or
//! as a `policy-reconciler run` process ([`command`], [`terminate`]); and waiting until it is
//! ready ([`wait_ready`]).

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use policy_reconciler::configuration::Settings;
use policy_reconciler::engine::clock::ManualClock;
use policy_reconciler::startup::Application;
use tokio::sync::oneshot;

use super::env::Env;

/// A worker on its own runtime and thread, so that a test can stop it gracefully or kill it
/// abruptly (dropping its runtime mid-flight, like a crash) independently of the test's runtime.
pub struct WorkerThread {
    stop: oneshot::Sender<()>,
    kill: oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl WorkerThread {
    /// Build and run a worker with `settings` (scheduling by `clock` if given); returns once
    /// it is built, with the address its HTTP endpoint listens on.
    pub async fn start(
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

    /// Stop gracefully (as on SIGTERM) and wait for the thread.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }

    /// Kill abruptly: the runtime is dropped mid-flight, nothing is cleaned up (no
    /// acknowledgement, no lease released, connections simply vanish).
    pub fn kill(self) {
        let _ = self.kill.send(());
        let _ = self.thread.join();
    }
}

/// `policy-reconciler run` with the variables `env`, from the service's folder (where the
/// configuration files are); the caller adds its own variables and output, then spawns it.
/// `binary` is the calling target's `env!("CARGO_BIN_EXE_policy-reconciler")`: Cargo tells the
/// binary's path to the package's own tests and benchmarks, not to a crate they use.
pub fn command(binary: &str, env: &Env) -> Command {
    let mut command = Command::new(binary);
    command
        .arg("run")
        .current_dir(super::service_dir())
        .envs(env);
    command
}

/// Stop a worker process as an orchestrator does: SIGTERM, up to `patience` to exit, then
/// SIGKILL.
pub fn terminate(child: &mut Child, patience: Duration) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = std::time::Instant::now() + patience;
    while std::time::Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// A local port free now, for a worker process's HTTP endpoint (whose address the caller must
/// know in advance).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Wait until the worker at `address` (`host:port`) says ready on `/readyz` (database,
/// migrations, broker); panic after 30 s.
pub async fn wait_ready(address: &str) {
    let client = reqwest::Client::new();
    let url = format!("http://{address}/readyz");
    super::wait_until(
        Duration::from_secs(30),
        "the worker to be ready",
        || async { matches!(client.get(&url).send().await, Ok(r) if r.status() == 200) },
    )
    .await;
}

//! Building and running a worker: the parts wired together, started in order, and stopped
//! gracefully within the configured grace period.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::broker::Supervisor;
use crate::configuration::Settings;
use crate::console;
use crate::engine::clock::{Clock, SystemClock};
use crate::engine::{Engine, Kinds, drift, policy, portal, revert, roles};
use crate::http::{self, Health};
use crate::store::budget::PgWriteBudget;
use crate::store::{self, StoreError};
use crate::telemetry;
use crate::tenant::{GraphClient, Tenant};

/// Why a worker could not start. Permanent: the process exits non-zero.
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("cannot build the Graph client: {0}")]
    Tenant(#[from] crate::tenant::TenantError),
}

/// A built worker, listening but not yet running.
pub struct Application {
    settings: Settings,
    /// The scheduler's clock: the system's, or a test's.
    clock: Arc<dyn Clock>,
    tenant: Arc<dyn Tenant>,
    pool: PgPool,
    health: Arc<Health>,
    listener: TcpListener,
    address: SocketAddr,
}

impl Application {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        let pool = store::pool(&settings.database);
        let health = Health::new(pool.clone());
        let tenant: Arc<dyn Tenant> = if settings.tenant.shared_write_budget
            && settings.tenant.effective_writes_per_second() > 0.0
        {
            let budget = PgWriteBudget::new(
                pool.clone(),
                "tenant-writes",
                settings.tenant.effective_writes_per_second(),
                settings.tenant.write_burst,
            );
            Arc::new(GraphClient::with_write_budget(
                settings.tenant.clone(),
                Arc::new(budget),
            )?)
        } else {
            Arc::new(GraphClient::new(settings.tenant.clone())?)
        };
        let listener = TcpListener::bind(settings.http.listen_address)
            .await
            .map_err(|source| StartupError::Listen {
                address: settings.http.listen_address.to_string(),
                source,
            })?;
        let address = listener
            .local_addr()
            .map_err(|source| StartupError::Listen {
                address: settings.http.listen_address.to_string(),
                source,
            })?;
        Ok(Self {
            settings,
            clock: Arc::new(SystemClock),
            tenant,
            pool,
            health,
            listener,
            address,
        })
    }

    /// Schedule by `clock` instead of the system clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The address of `/metrics`, `/healthz` and `/readyz` (the real port when 0 was asked).
    pub fn http_address(&self) -> SocketAddr {
        self.address
    }

    pub fn pool(&self) -> PgPool {
        self.pool.clone()
    }

    /// Run until `shutdown` resolves, then stop consuming, let in-flight work finish, flush
    /// the outbox and return, all within `worker.shutdown_grace_seconds`.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send + 'static) {
        let token = CancellationToken::new();
        let trigger = token.clone();
        tokio::spawn(async move {
            shutdown.await;
            tracing::info!("shutdown requested");
            trigger.cancel();
        });

        let metrics = telemetry::metrics::install();
        let upkeep = {
            let metrics = metrics.clone();
            let token = token.clone();
            tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => metrics.run_upkeep(),
                    }
                }
            })
        };
        let http_stop = CancellationToken::new();
        let server = tokio::spawn(http::serve(
            self.listener,
            http::router(self.health.clone(), metrics)
                .merge(console::router(&self.settings.console, self.pool.clone())),
            http_stop.clone().cancelled_owned(),
        ));
        tracing::info!(
            address = %self.address,
            console = self.settings.console.enabled,
            "serving /metrics, /healthz, /readyz, and the console (/console, /api/v1)"
        );

        let instance = self.settings.worker.instance_name();
        let grace = self.settings.worker.shutdown_grace();
        let work = {
            let token = token.clone();
            let settings = self.settings.clone();
            let pool = self.pool.clone();
            let health = self.health.clone();
            let tenant = self.tenant.clone();
            let clock = self.clock.clone();
            async move {
                if !prepare_database(&settings, &pool, &token).await {
                    return;
                }
                let engine = match Engine::new(
                    pool.clone(),
                    tenant,
                    job_kinds(&settings),
                    settings.engine.clone(),
                    &settings.schedule,
                    &instance,
                    clock,
                ) {
                    Ok(engine) => {
                        let access = Arc::new(crate::tenant::AccessWatch::default());
                        health.watch_tenant_access(access.clone());
                        Arc::new(
                            engine
                                .with_items_per_second(
                                    settings.tenant.effective_writes_per_second(),
                                )
                                .with_access_watch(access),
                        )
                    }
                    Err(error) => {
                        tracing::error!(%error, "cannot start the engine");
                        return;
                    }
                };
                let supervisor = Supervisor {
                    settings: settings.broker.clone(),
                    outbox: settings.outbox.clone(),
                    instance,
                    pool,
                    health,
                    jobs_stored: engine.jobs_stored(),
                };
                tokio::join!(supervisor.run(token.clone()), engine.run(token));
            }
        };
        tokio::pin!(work);
        let deadline = async {
            token.cancelled().await;
            tokio::time::sleep(grace).await;
        };
        tokio::select! {
            _ = &mut work => tracing::info!("stopped cleanly"),
            _ = deadline => tracing::warn!(
                grace_seconds = grace.as_secs(),
                "grace period over; unfinished messages return to the broker"
            ),
        }
        // Each step is bounded: an idle keep-alive client or a dead database must not keep a
        // terminating replica alive.
        http_stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
        upkeep.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.pool.close()).await;
    }
}

/// Every job kind this release plans and applies: one line each (see the checklist for adding
/// one in docs/development.md).
pub fn job_kinds(settings: &Settings) -> Kinds {
    Kinds::builder()
        .register(policy::PolicyChangedKind::new())
        .register(policy::MembersAddedKind::new())
        .register(portal::GrantKind)
        .register(portal::ActivatedKind)
        .register(portal::RemindKind)
        .register(roles::AssignKind::new(&settings.roles))
        .register(roles::RemoveKind::new(&settings.roles))
        .register(roles::ChangeKind::new(&settings.roles))
        .register(roles::MappingKind::new(&settings.roles))
        .register(roles::LeaverKind::new(&settings.roles))
        .register(revert::RevertKind)
        .register(drift::DriftSweepKind)
        .register(drift::RolesSweepKind::new(&settings.roles))
        .build()
}

/// Create the database if allowed and apply migrations, retrying while the database is
/// unreachable. Returns false if shutdown came first.
async fn prepare_database(settings: &Settings, pool: &PgPool, token: &CancellationToken) -> bool {
    let attempt = || async {
        store::ensure_database(&settings.database).await?;
        if settings.database.migrate_on_start {
            store::migrate(pool).await?;
        }
        Ok::<(), StoreError>(())
    };
    let backoff = ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times();
    let prepared = attempt.retry(backoff).notify(|error, delay| {
        tracing::warn!(%error, ?delay, "database not ready; retrying");
    });
    tokio::select! {
        result = prepared => match result {
            Ok(()) => true,
            Err(error) => {
                tracing::error!(%error, "database preparation failed");
                false
            }
        },
        _ = token.cancelled() => false,
    }
}

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("a SIGTERM handler can be installed");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::configuration::ConfigSources;
    use crate::domain::JobType;

    /// The checklist for adding a job kind (docs/development.md), as far as the code can tell
    /// it: every job type, the contract's and the service's own, has exactly one kind
    /// registered in [`job_kinds`]; an internal type that publishes job events publishes them as
    /// a contract type; and the checklist names every place a new type touches.
    /// (`contract::tests` check each contract type's schema file, AsyncAPI message and example.)
    #[test]
    fn every_job_type_has_a_registered_kind_and_the_checklist_names_every_step() {
        let environment = config::Environment::default().source(Some(Default::default()));
        let settings = Settings::load_with(&ConfigSources::default(), environment).unwrap();
        let mut registered: Vec<&str> = job_kinds(&settings)
            .job_types()
            .map(JobType::as_str)
            .collect();
        registered.sort_unstable();
        let mut every: Vec<&str> = JobType::ALL
            .iter()
            .chain(JobType::INTERNAL)
            .map(|t| t.as_str())
            .collect();
        every.sort_unstable();
        assert_eq!(
            registered, every,
            "startup::job_kinds registers one kind per job type"
        );
        for t in JobType::INTERNAL {
            assert!(
                !t.publishes_job_events() || JobType::ALL.contains(&t.published_as()),
                "{t} publishes its events as {}, not a contract type",
                t.published_as()
            );
        }
        let development =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/development.md"))
                .unwrap();
        let checklist = &development[development
            .find("## Adding a job kind")
            .expect("the checklist in docs/development.md")..];
        for place in [
            "src/domain/job.rs",
            "job_types!",
            "payload_limits",
            "UPDATE_CONTRACT=1 cargo test --lib contract",
            "contract/asyncapi.yaml",
            "engine::JobKind",
            "engine::reconcile::Reconcile",
            "src/store/",
            "migrations/",
            "src/domain/codes.rs",
            "startup::job_kinds",
            "tests/api/",
        ] {
            assert!(
                checklist.contains(place),
                "the checklist does not name {place}"
            );
        }
    }
}

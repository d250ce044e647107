//! The operational endpoint: `/metrics` (Prometheus text), `/healthz` (the process is alive)
//! and `/readyz` (the database answers, migrations are applied, the broker is connected), which
//! also says in words why a worker is not taking jobs (`reasons`).

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;

use crate::store;
use crate::tenant::{AccessLoss, AccessWatch};

/// What readiness depends on, shared by the parts that know it.
#[derive(Debug)]
pub struct Health {
    pool: PgPool,
    /// Set by the broker supervisor while its connection (and channels) work.
    broker_connected: AtomicBool,
    /// Set once this process has seen every embedded migration applied; never unset.
    migrations_applied: AtomicBool,
    /// Whether ingest takes deliveries ([`IngestState`] as its `u8`).
    ingest: AtomicU8,
    /// Set when the existing jobs queue has other settings than the configuration asks for:
    /// what differs and what to do (the worker keeps serving with the queue's own settings).
    queue_settings: Mutex<Option<String>>,
    /// The engine's view of its access to the tenant (set once the engine starts).
    tenant_access: std::sync::OnceLock<Arc<AccessWatch>>,
}

/// Whether ingest is taking deliveries from the jobs queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum IngestState {
    /// Not consuming: starting, or the broker connection is down.
    Idle = 0,
    /// Consuming the jobs queue.
    Consuming = 1,
    /// Not consuming because the database is unreachable: deliveries stay in the queue, so
    /// that redeliveries do not count against the queue's delivery limit.
    PausedForDatabase = 2,
}

impl IngestState {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Consuming => "consuming",
            Self::PausedForDatabase => "paused_database_unreachable",
        }
    }

    fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Consuming,
            2 => Self::PausedForDatabase,
            _ => Self::Idle,
        }
    }
}

impl Health {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            broker_connected: AtomicBool::new(false),
            migrations_applied: AtomicBool::new(false),
            ingest: AtomicU8::new(IngestState::Idle as u8),
            queue_settings: Mutex::new(None),
            tenant_access: std::sync::OnceLock::new(),
        })
    }

    /// Show `watch`'s access losses in readiness (the engine's watch).
    pub fn watch_tenant_access(&self, watch: Arc<AccessWatch>) {
        let _ = self.tenant_access.set(watch);
    }

    pub fn set_ingest(&self, state: IngestState) {
        self.ingest.store(state as u8, Ordering::Relaxed);
    }

    pub fn ingest(&self) -> IngestState {
        IngestState::from_u8(self.ingest.load(Ordering::Relaxed))
    }

    /// Record (or clear, with `None`) how the existing jobs queue differs from the settings.
    pub fn set_queue_settings_notice(&self, notice: Option<String>) {
        *self
            .queue_settings
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = notice;
    }

    fn queue_settings_notice(&self) -> Option<String> {
        self.queue_settings
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn set_broker_connected(&self, connected: bool) {
        self.broker_connected.store(connected, Ordering::Relaxed);
    }

    pub fn broker_connected(&self) -> bool {
        self.broker_connected.load(Ordering::Relaxed)
    }

    /// Check every dependency; returns each check's result.
    pub async fn check(&self) -> Readiness {
        let database = tokio::time::timeout(Duration::from_secs(2), store::ping(&self.pool))
            .await
            .is_ok_and(|r| r.is_ok());
        let migrations = if self.migrations_applied.load(Ordering::Relaxed) {
            true
        } else if database {
            let applied = store::migrations_applied(&self.pool).await.unwrap_or(false);
            self.migrations_applied.store(applied, Ordering::Relaxed);
            applied
        } else {
            false
        };
        let broker = self.broker_connected();
        let ingest = self.ingest();
        let mut reasons = Vec::new();
        if !database {
            reasons.push("the database does not answer".to_owned());
        } else if !migrations {
            reasons.push("migrations are not applied yet".to_owned());
        }
        if !broker {
            reasons.push("the broker connection is down; reconnecting".to_owned());
        }
        if ingest == IngestState::PausedForDatabase {
            reasons.push(
                "ingest paused: the database is unreachable, so jobs wait in the queue \
                 (not delivered, so not counted against the delivery limit); it resumes \
                 when the database answers"
                    .to_owned(),
            );
        }
        let tenant_access = self.tenant_access.get().and_then(|w| w.current());
        if let Some(loss) = &tenant_access {
            reasons.push(format!(
                "{}: the tenant refuses the service's access ({}) since {}: {}; jobs hold \
                 (no item fails) and resume by themselves once access is back",
                loss.code,
                loss.reason.as_str(),
                loss.since.to_rfc3339(),
                loss.detail
            ));
        }
        Readiness {
            database,
            migrations,
            broker,
            ingest: ingest.as_str(),
            reasons,
            queue_settings: self.queue_settings_notice(),
            tenant_access,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Readiness {
    pub database: bool,
    pub migrations: bool,
    pub broker: bool,
    /// [`IngestState::as_str`].
    pub ingest: &'static str,
    /// Why the worker is not ready or not taking jobs, in words (empty when all is well).
    pub reasons: Vec<String>,
    /// How the existing jobs queue differs from the settings, and what to do; the worker
    /// stays ready and uses the queue's settings meanwhile.
    pub queue_settings: Option<String>,
    /// The tenant refuses the service's access: jobs hold meanwhile. Not a readiness failure
    /// (restarting cannot bring access back), but shown with its code `tenant_access_lost`.
    pub tenant_access: Option<AccessLoss>,
}

impl Readiness {
    pub fn ready(&self) -> bool {
        self.database && self.migrations && self.broker
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

pub fn router(health: Arc<Health>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render_metrics))
        .with_state(AppState { health, metrics })
}

/// Serve until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}

async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "alive" }))
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let readiness = state.health.check().await;
    let status = if readiness.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": readiness.ready(),
            "checks": {
                "database": readiness.database,
                "migrations": readiness.migrations,
                "broker": readiness.broker,
                "ingest": readiness.ingest,
            },
            "reasons": readiness.reasons,
            "queue_settings": readiness.queue_settings,
            "tenant_access": readiness.tenant_access,
        })),
    )
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

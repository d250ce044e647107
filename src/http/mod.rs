//! The operational endpoint: `/metrics` (Prometheus text), `/healthz` (the process is alive)
//! and `/readyz` (the database answers, migrations are applied, the broker is connected).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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

/// What readiness depends on, shared by the parts that know it.
#[derive(Debug)]
pub struct Health {
    pool: PgPool,
    /// Set by the broker supervisor while its connection (and channels) work.
    broker_connected: AtomicBool,
    /// Set once this process has seen every embedded migration applied; never unset.
    migrations_applied: AtomicBool,
}

impl Health {
    pub fn new(pool: PgPool) -> Arc<Self> {
        Arc::new(Self {
            pool,
            broker_connected: AtomicBool::new(false),
            migrations_applied: AtomicBool::new(false),
        })
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
        Readiness {
            database,
            migrations,
            broker: self.broker_connected(),
        }
    }
}

#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Readiness {
    pub database: bool,
    pub migrations: bool,
    pub broker: bool,
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
        Json(json!({ "ready": readiness.ready(), "checks": readiness })),
    )
}

async fn render_metrics(State(state): State<AppState>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
}

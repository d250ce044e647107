//! The operator console: a JSON API over the store ([`api`], `/api/v1`) and server-rendered
//! pages ([`pages`], `/console`) on the worker's HTTP endpoint, both behind [`auth`] (bearer
//! tokens from `[console]`, or a reverse proxy's identity header; readers and operators; CSRF
//! on the browser's POSTs). The reads and the operator actions are the `jobs` commands' own
//! ([`crate::ops::jobs`], [`crate::store::work::browse`]): the console adds no second path.
//!
//! Pages are HTML from `maud` (compiled in, no template files) with htmx for the live
//! progress; htmx is vendored (`assets/htmx.min.js`, BSD-2-Clause) and served by the binary,
//! so a page fetches nothing from outside.

pub mod api;
pub mod auth;
pub mod pages;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::configuration::ConsoleSettings;
use crate::ops::OpsError;

/// What every console handler shares.
#[derive(Clone)]
pub struct Console {
    pub pool: PgPool,
    pub auth: Arc<auth::Auth>,
}

/// The console's routes (pages, API, the vendored script), or none when `console.enabled` is
/// false.
pub fn router(settings: &ConsoleSettings, pool: PgPool) -> Router {
    if !settings.enabled {
        return Router::new();
    }
    let console = Console {
        pool,
        auth: Arc::new(auth::Auth::new(settings)),
    };
    Router::new()
        .merge(api::routes())
        .merge(pages::routes())
        .with_state(console)
}

/// A job's progress against the 24-hour target.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    pub done: i64,
    pub total: Option<i64>,
    /// 0 to 100 (100 once completed).
    pub percent: f64,
    /// Items a second since the job started (until it completed).
    pub rate_per_second: Option<f64>,
    /// When the job ends at that rate (its end, once completed).
    pub forecast_end: Option<DateTime<Utc>>,
    /// `received_at` + 24 hours.
    pub deadline: DateTime<Utc>,
    /// Unfinished, and forecast to end after the deadline (or past it with no rate yet).
    pub at_risk: bool,
}

/// The figures [`progress`] needs of a job.
pub struct ProgressInput {
    pub completed: bool,
    pub done: i64,
    pub total: Option<i64>,
    pub received_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
}

pub fn progress(job: ProgressInput, now: DateTime<Utc>) -> Progress {
    let deadline = job.received_at + crate::engine::RESOLUTION_TARGET;
    let percent = match job.total {
        _ if job.completed => 100.0,
        Some(total) if total > 0 => (job.done as f64 * 100.0 / total as f64).min(100.0),
        _ => 0.0,
    };
    let end = if job.completed {
        job.completed_at.unwrap_or(now)
    } else {
        now
    };
    let rate_per_second = job.started_at.and_then(|started| {
        let seconds = (end - started).num_milliseconds() as f64 / 1000.0;
        (seconds > 0.0 && job.done > 0).then(|| job.done as f64 / seconds)
    });
    let forecast_end = if job.completed {
        job.completed_at
    } else {
        match (rate_per_second, job.total) {
            (Some(rate), Some(total)) => {
                let remaining = (total - job.done).max(0) as f64;
                Some(now + chrono::TimeDelta::milliseconds((remaining / rate * 1000.0) as i64))
            }
            _ => None,
        }
    };
    let at_risk = !job.completed
        && match forecast_end {
            Some(end) => end > deadline,
            None => now > deadline,
        };
    Progress {
        done: job.done,
        total: job.total,
        percent,
        rate_per_second,
        forecast_end,
        deadline,
        at_risk,
    }
}

/// An error as the console shows it: its status and a sentence.
#[derive(Debug)]
pub struct ConsoleError {
    pub status: StatusCode,
    pub message: String,
}

impl ConsoleError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    pub fn not_found(what: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, what)
    }
}

impl From<OpsError> for ConsoleError {
    fn from(error: OpsError) -> Self {
        let status = match &error {
            OpsError::NotFound(_) => StatusCode::NOT_FOUND,
            OpsError::AlreadyCompleted(_) => StatusCode::CONFLICT,
            OpsError::Invalid(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(%error, "console request failed");
        }
        Self::new(status, error.to_string())
    }
}

impl From<crate::store::StoreError> for ConsoleError {
    fn from(error: crate::store::StoreError) -> Self {
        OpsError::Store(error).into()
    }
}

/// API errors are JSON (`{"error": "…"}`); pages render their own (see [`pages`]).
impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        (
            self.status,
            axum::Json(serde_json::json!({ "error": self.message })),
        )
            .into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn forecast_from_the_rate_since_start() {
        let p = progress(
            ProgressInput {
                completed: false,
                done: 100,
                total: Some(400),
                received_at: at("2026-01-01T00:00:00Z"),
                started_at: Some(at("2026-01-01T00:00:00Z")),
                completed_at: None,
            },
            at("2026-01-01T00:01:40Z"),
        );
        assert_eq!(p.percent, 25.0);
        assert_eq!(p.rate_per_second, Some(1.0));
        assert_eq!(p.forecast_end, Some(at("2026-01-01T00:06:40Z")));
        assert!(!p.at_risk);
    }

    #[test]
    fn a_slow_job_is_at_risk() {
        let p = progress(
            ProgressInput {
                completed: false,
                done: 10,
                total: Some(200_000),
                received_at: at("2026-01-01T00:00:00Z"),
                started_at: Some(at("2026-01-01T00:00:00Z")),
                completed_at: None,
            },
            at("2026-01-01T00:01:40Z"),
        );
        assert!(p.at_risk, "{p:?}");
        let waiting = progress(
            ProgressInput {
                completed: false,
                done: 0,
                total: None,
                received_at: at("2026-01-01T00:00:00Z"),
                started_at: None,
                completed_at: None,
            },
            at("2026-01-02T00:00:01Z"),
        );
        assert!(waiting.at_risk);
    }
}

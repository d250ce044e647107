//! Operator commands: enqueue a job from the portal's CSV export, list and inspect jobs, and
//! pause, resume, expedite or cancel them.
//!
//! The functions here return data (structs) and leave printing to the caller; the `render_*`
//! functions turn that data into the plain aligned text the command line prints. The engine
//! honours the flags these commands set: it skips chunks of paused jobs and lets expedited
//! jobs run outside the off-peak windows.
//!
//! * [`csv`] reads the portal's member export.
//! * [`enqueue`] publishes `policy.members_added` or `policy.changed` with publisher confirms.
//! * [`jobs`] lists and shows jobs and applies the operator controls.

#[cfg(feature = "dev-certificate")]
pub mod certificate;
pub mod csv;
#[cfg(feature = "simulator")]
pub mod demo;
pub mod enqueue;
pub mod jobs;
mod table;

pub use enqueue::{EnqueueKind, EnqueueRequest, Enqueued, enqueue_from_csv, render_enqueued};
pub use jobs::{
    Action, ActionReport, Flag, JobFilter, JobRow, act, render_action, render_rows, render_watched,
    search, watch,
};
pub use jobs::{
    CancelReport, ChunkCounts, ControlReport, FailureRow, ItemCounts, JobDetail, Operator,
    OperatorAction, RevertRefused, RevertRequested, StateFilter, approve, cancel, expedite, pause,
    render_cancel, render_control, render_detail, render_revert, resume, revert, show,
};

use sqlx::PgPool;

use crate::configuration::DatabaseSettings;
use crate::store::{self, StoreError};

/// A pool for the operator commands, refusing a database this release has not migrated (a
/// missing column would otherwise surface as an obscure SQL error).
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, OpsError> {
    let pool = store::pool(settings);
    if !store::migrations_applied(&pool).await? {
        pool.close().await;
        return Err(OpsError::Invalid(format!(
            "database {:?} lacks migrations of this release; run `policy-reconciler migrate`",
            settings.database_name
        )));
    }
    Ok(pool)
}

/// Why an operator command failed. Every variant is worth showing to the operator as is.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// No job has this id or `message_id`, or no policy this id.
    #[error("{0}")]
    NotFound(String),
    /// The job is completed; controls apply to unfinished jobs only.
    #[error("job {0} is already completed")]
    AlreadyCompleted(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("broker: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused the job, or routed it to no queue.
    #[error("broker did not take the job: {0}")]
    NotPublished(String),
    /// The CSV file cannot be used (no header, no `Email Address` column, bad quoting).
    #[error("CSV: {0}")]
    Csv(String),
    #[error("reading {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A command-line value that cannot be used (an originator that is not an email).
    #[error("{0}")]
    Invalid(String),
}

impl From<sqlx::Error> for OpsError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

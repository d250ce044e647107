//! Store errors, classified as transient (retry later, keep the message) or permanent.

/// A database failure. `is_transient` decides whether the caller retries (and keeps the
/// broker message unacknowledged) or gives up.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is inconsistent: {0}")]
    Corrupt(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }

    /// Whether the database refused the *values* given to it, so that trying again with the
    /// same values can never succeed: SQLSTATE class 22 (data exception: a NUL byte, invalid
    /// JSON text, a number out of range) and 54 (program limit exceeded: an index row too
    /// large, too deep a JSON value). Ingest dead-letters the message that carried them with a
    /// code. Other permanent errors (a missing table after a bad deploy, a bug) are not the
    /// message's fault and are not treated as this.
    pub fn refuses_the_data(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(db)) => db
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("54")),
            _ => false,
        }
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        if is_transient(&error) {
            Self::Unavailable(error)
        } else {
            Self::Database(error)
        }
    }
}

/// Connection trouble, pool exhaustion, and the SQLSTATE classes a retry can cure:
/// 08 (connection), 40001/40P01 (serialization, deadlock), 53 (resources), 57P0x (shutdown).
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            code.starts_with("08")
                || code.starts_with("53")
                || code.starts_with("57P")
                || code == "40001"
                || code == "40P01"
        }),
        _ => false,
    }
}

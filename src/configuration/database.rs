//! `[database]`: the PostgreSQL that holds jobs, desired state and the outbox.

use std::num::NonZeroU64;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use sqlx::postgres::PgConnectOptions;

use super::ConfigError;
use super::parse::at_least_one;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    /// Empty for trust or peer authentication.
    #[serde(serialize_with = "super::parse::redacted")]
    pub password: SecretString,
    pub database_name: String,
    /// Pool size per replica. Each in-flight message and each claimed chunk holds one briefly.
    pub max_connections: u32,
    /// How long a caller waits for a pooled connection before the attempt counts as transient.
    #[serde(deserialize_with = "at_least_one")]
    pub acquire_timeout_seconds: NonZeroU64,
    /// Apply embedded migrations at start-up (`migrate` does it on demand either way).
    pub migrate_on_start: bool,
    /// Create `database_name` when it does not exist (development convenience; production
    /// databases are provisioned by their owners and this stays false there).
    pub create_if_missing: bool,
}

impl DatabaseSettings {
    /// Options for the server's maintenance database (`postgres`), used to create ours.
    pub fn without_db(&self) -> PgConnectOptions {
        let options = PgConnectOptions::new()
            .host(&self.host)
            .port(self.port)
            .username(&self.username)
            .database("postgres");
        match self.password.expose_secret() {
            "" => options,
            password => options.password(password),
        }
    }

    /// Options for our database.
    pub fn with_db(&self) -> PgConnectOptions {
        self.without_db().database(&self.database_name)
    }

    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_secs(self.acquire_timeout_seconds.get())
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.max_connections < 2 {
            return Err(ConfigError::invalid(
                "database.max_connections",
                "must be at least 2 (the consumer and the outbox relay each need one)",
            ));
        }
        if self.database_name.is_empty() {
            return Err(ConfigError::invalid(
                "database.database_name",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

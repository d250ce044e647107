//! `[broker]`: RabbitMQ connection, consumption and topology names.

use std::num::{NonZeroU16, NonZeroU32, NonZeroU64};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::parse::at_least_one;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerSettings {
    pub host: String,
    pub port: u16,
    pub username: String,
    #[serde(serialize_with = "super::parse::redacted")]
    pub password: SecretString,
    /// Virtual host, unescaped (`/` is the default vhost).
    pub vhost: String,
    /// Unacknowledged deliveries a replica holds at once; also how many it ingests concurrently.
    #[serde(deserialize_with = "at_least_one")]
    pub prefetch_count: NonZeroU16,
    /// Deliveries of one message before the quorum queue dead-letters it on its own
    /// (a message that crashes workers; ordinary bad input is dead-lettered by the worker).
    /// A queue argument, set when the worker creates the queue: a different value later is
    /// reported (log and `/readyz`) with what to do, and the queue's own value stays in force.
    #[serde(deserialize_with = "at_least_one")]
    pub delivery_limit: NonZeroU32,
    /// First delay of the supervisor's reconnect backoff.
    #[serde(deserialize_with = "at_least_one")]
    pub reconnect_min_delay_ms: NonZeroU64,
    /// Longest delay of the supervisor's reconnect backoff.
    pub reconnect_max_delay_ms: u64,
    /// AMQP heartbeat; a dead peer is noticed after about twice this.
    pub heartbeat_seconds: u16,
    pub topology: Topology,
}

/// Exchange and queue names (the defaults are the contract's).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    pub jobs_exchange: String,
    pub jobs_queue: String,
    pub dead_letter_exchange: String,
    pub dead_letter_queue: String,
    pub events_exchange: String,
}

impl BrokerSettings {
    /// The AMQP URI, password included: never log it.
    pub fn uri(&self) -> SecretString {
        let vhost = if self.vhost == "/" {
            "%2f".to_owned()
        } else {
            self.vhost.replace('/', "%2f")
        };
        let password = self.password.expose_secret();
        format!(
            "amqp://{}:{}@{}:{}/{}?heartbeat={}",
            self.username, password, self.host, self.port, vhost, self.heartbeat_seconds
        )
        .into()
    }

    pub fn reconnect_min_delay(&self) -> Duration {
        Duration::from_millis(self.reconnect_min_delay_ms.get())
    }

    pub fn reconnect_max_delay(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_delay_ms)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.reconnect_min_delay_ms.get() > self.reconnect_max_delay_ms {
            return Err(ConfigError::invalid(
                "broker.reconnect_min_delay_ms",
                "must not be above broker.reconnect_max_delay_ms",
            ));
        }
        let t = &self.topology;
        for (key, name) in [
            ("broker.topology.jobs_exchange", &t.jobs_exchange),
            ("broker.topology.jobs_queue", &t.jobs_queue),
            (
                "broker.topology.dead_letter_exchange",
                &t.dead_letter_exchange,
            ),
            ("broker.topology.dead_letter_queue", &t.dead_letter_queue),
            ("broker.topology.events_exchange", &t.events_exchange),
        ] {
            if name.is_empty() || name.len() > 255 {
                return Err(ConfigError::invalid(key, "must be 1 to 255 characters"));
            }
        }
        Ok(())
    }
}

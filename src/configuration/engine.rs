//! `[engine]`: planning, chunking, leases.

use std::time::Duration;

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Items (users) per chunk: the unit a worker claims, and whose outcomes commit together.
    pub chunk_size: u32,
    /// Chunks one replica works on at once.
    pub chunk_concurrency: u32,
    /// A claimed chunk is another replica's to take once its lease has not been renewed for
    /// this long (its worker died or stalled). Renewed every third of it while working.
    pub lease_seconds: u64,
    /// How often an idle replica looks for jobs to plan and chunks to claim.
    pub poll_interval_ms: u64,
    /// Rounds of read, write, read-back for one item before it fails with a code.
    pub item_attempts: u32,
    /// Items read and written per round within a chunk; outcomes are recorded per round.
    pub round_size: u32,
    /// Chunks running at once across all replicas together: the tenant's concurrency.
    pub max_running_chunks: u32,
    /// How long a `policy.members_added` waits for its policy's definition before it fails
    /// with `unknown_policy`.
    pub unknown_policy_wait_seconds: u64,
}

impl EngineSettings {
    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds)
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms)
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let checks: [(&'static str, bool); 7] = [
            ("engine.max_running_chunks", self.max_running_chunks == 0),
            ("engine.chunk_size", self.chunk_size == 0),
            ("engine.chunk_concurrency", self.chunk_concurrency == 0),
            ("engine.lease_seconds", self.lease_seconds < 1),
            ("engine.poll_interval_ms", self.poll_interval_ms == 0),
            ("engine.item_attempts", self.item_attempts == 0),
            ("engine.round_size", self.round_size == 0),
        ];
        for (key, bad) in checks {
            if bad {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

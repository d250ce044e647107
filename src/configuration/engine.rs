//! `[engine]`: planning, chunking, leases.

use std::num::{NonZeroU32, NonZeroU64};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::parse::at_least_one;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EngineSettings {
    /// Items (users) per chunk: the unit a worker claims, and whose outcomes commit together.
    #[serde(deserialize_with = "at_least_one")]
    pub chunk_size: NonZeroU32,
    /// Chunks one replica works on at once.
    #[serde(deserialize_with = "at_least_one")]
    pub chunk_concurrency: NonZeroU32,
    /// A claimed chunk is another replica's to take once its lease has not been renewed for
    /// this long (its worker died or stalled). Renewed every third of it while working.
    #[serde(deserialize_with = "at_least_one")]
    pub lease_seconds: NonZeroU64,
    /// How often an idle replica looks for jobs to plan and chunks to claim.
    #[serde(deserialize_with = "at_least_one")]
    pub poll_interval_ms: NonZeroU64,
    /// Rounds of read, write, read-back for one item before it fails with a code.
    #[serde(deserialize_with = "at_least_one")]
    pub item_attempts: NonZeroU32,
    /// How long a write is given to show in reads. Entra ID is replicated and gives an
    /// application no read-your-writes: a read right after a write may still return the state
    /// from before it. A write Graph accepted is re-read (never re-sent) until it shows, for at
    /// most this long, then reported `verification_failed`; a write that failed in a way that
    /// may have been applied (a 5xx, a timeout) is re-read for this long before it is sent
    /// again. Give it the replication delay the tenant shows at its worst.
    #[serde(deserialize_with = "at_least_one")]
    pub verify_within_ms: NonZeroU64,
    /// How long a write that failed in a way that may have been applied (a 5xx, a timeout) is
    /// re-read before it is sent again. At most `verify_within_ms`.
    #[serde(deserialize_with = "at_least_one")]
    pub resend_after_ms: NonZeroU64,
    /// Items read and written per round within a chunk; outcomes are recorded per round.
    #[serde(deserialize_with = "at_least_one")]
    pub round_size: NonZeroU32,
    /// Chunks running at once across all replicas together: the tenant's concurrency.
    #[serde(deserialize_with = "at_least_one")]
    pub max_running_chunks: NonZeroU32,
    /// Of `max_running_chunks`, the slots only small jobs (one chunk, at most `chunk_size`
    /// items) may take: a ticket about a few users never waits for a large job's chunks to end.
    pub small_job_reserve: u32,
    /// How long a `policy.members_added` waits for its policy's definition before it fails
    /// with `unknown_policy`.
    pub unknown_policy_wait_seconds: u64,
    /// How long a chunk held because the service lost its access to the tenant (a credential
    /// refused, a permission revoked: `tenant_access_lost`) waits before it tries again.
    #[serde(deserialize_with = "at_least_one")]
    pub access_retry_seconds: NonZeroU64,
    /// `[engine.licensing]`: the dependency table and the catalogue watcher.
    pub licensing: super::LicensingSettings,
    /// `[engine.approval]`: the thresholds over which a job waits for an operator.
    pub approval: super::ApprovalSettings,
    /// `[engine.drift]`: drift sweeps.
    pub drift: super::DriftSettings,
    /// `[engine.revert]`: how long the state items had before a job's writes is kept.
    pub revert: RevertSettings,
}

/// `[engine.revert]`: `jobs revert` restores what a job's items were before its writes, as
/// long as their before-images are kept.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RevertSettings {
    /// Before-images older than this many days are deleted (by every replica's monitor); a
    /// job whose images are gone can no longer be reverted.
    #[serde(deserialize_with = "at_least_one")]
    pub retention_days: NonZeroU32,
}

impl RevertSettings {
    pub fn retention(&self) -> std::time::Duration {
        std::time::Duration::from_secs(u64::from(self.retention_days.get()) * 86_400)
    }
}

impl EngineSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        self.approval.validate()?;
        self.drift.validate()?;
        if self.small_job_reserve >= self.max_running_chunks.get() {
            return Err(ConfigError::invalid(
                "engine.small_job_reserve",
                format!(
                    "must be less than engine.max_running_chunks ({}), or large jobs never run",
                    self.max_running_chunks
                ),
            ));
        }
        Ok(())
    }

    pub fn verify_within(&self) -> Duration {
        Duration::from_millis(self.verify_within_ms.get())
    }

    pub fn resend_after(&self) -> Duration {
        Duration::from_millis(self.resend_after_ms.get().min(self.verify_within_ms.get()))
    }

    pub fn lease(&self) -> Duration {
        Duration::from_secs(self.lease_seconds.get())
    }

    pub fn access_retry(&self) -> Duration {
        Duration::from_secs(self.access_retry_seconds.get())
    }

    pub fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.poll_interval_ms.get())
    }
}

//! `[engine.drift]`: drift sweeps (issue 18): how often every stored policy is verified
//! against the tenant, and whether what differs is repaired or only reported.
use std::num::NonZeroU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::parse::at_least_one;

/// What a sweep does with what it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftMode {
    /// Bring drifted users back to their policy (a normal apply: write, read back).
    Repair,
    /// Write nothing; report what differs (the sweep runs as a dry run).
    Report,
}

impl DriftMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Repair => "repair",
            Self::Report => "report",
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DriftSettings {
    /// Sweep on a schedule (a sweep can always be stored by hand: `policy-reconciler drift
    /// sweep`).
    pub enabled: bool,
    /// One sweep per period of this many hours (periods counted from 00:00 UTC), stored the
    /// first time an off-peak window is open in the period.
    #[serde(deserialize_with = "at_least_one")]
    pub every_hours: NonZeroU64,
    pub mode: DriftMode,
    /// Items `drift.detected` lists at most (the contract allows 1,000).
    #[serde(deserialize_with = "at_least_one")]
    pub items_max: NonZeroU64,
}

impl DriftSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if self.items_max.get() > crate::domain::MAX_DRIFT_ITEMS_LISTED as u64 {
            return Err(ConfigError::invalid(
                "engine.drift.items_max",
                format!(
                    "must be at most {} (the contract's limit)",
                    crate::domain::MAX_DRIFT_ITEMS_LISTED
                ),
            ));
        }
        Ok(())
    }

    pub fn period(&self) -> Duration {
        Duration::from_secs(self.every_hours.get().saturating_mul(3600))
    }
}

//! `[engine.approval]`: the guard rail on large changes (contracts 1.1, "Guard rails on large
//! changes", and 1.2): a job whose effect is over these thresholds waits for an operator.
use std::num::NonZeroU64;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::parse::at_least_one;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApprovalSettings {
    /// A job that would remove or change the licence of at least this many users, counting
    /// members leaving the policy ([`crate::domain::ChangeEffect::affected`]), waits.
    pub users: u64,
    /// A job that would remove or change the licence of at least this share of the policy's
    /// members (0 to 1) waits, when that is at least `share_min_users` users.
    pub share: f64,
    /// The share rule applies from this many affected users on (a ticket moving 3 of 10 users
    /// is not an accident).
    pub share_min_users: u64,
    /// A job waiting longer than this for approval ends `rejected` with
    /// `awaiting_approval_expired`.
    #[serde(deserialize_with = "at_least_one")]
    pub wait_seconds: NonZeroU64,
}

impl ApprovalSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(0.0..=1.0).contains(&self.share) {
            return Err(ConfigError::invalid(
                "engine.approval.share",
                "must be between 0 and 1".to_owned(),
            ));
        }
        Ok(())
    }

    pub fn wait(&self) -> Duration {
        Duration::from_secs(self.wait_seconds.get())
    }

    /// Whether `affected` users of a policy of `policy_size` members need an approval.
    pub fn needs_approval(&self, affected: u64, policy_size: u64) -> bool {
        if affected == 0 {
            return false;
        }
        let share = affected as f64 / policy_size.max(1) as f64;
        affected >= self.users || (affected >= self.share_min_users && share >= self.share)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ApprovalSettings {
        ApprovalSettings {
            users: 500,
            share: 0.2,
            share_min_users: 20,
            wait_seconds: NonZeroU64::new(60).unwrap(),
        }
    }

    #[test]
    fn an_emptied_policy_waits_and_a_ticket_does_not() {
        let s = settings();
        // An accidental empty `members` list on a 2,000 or a 100-member policy.
        assert!(s.needs_approval(2000, 2000));
        assert!(s.needs_approval(100, 100));
        // A ticket moving a few users, of a small or a large policy.
        assert!(!s.needs_approval(3, 10));
        assert!(!s.needs_approval(19, 30));
        assert!(!s.needs_approval(100, 2000));
        assert!(!s.needs_approval(0, 0));
        // Over the absolute threshold whatever the share.
        assert!(s.needs_approval(500, 100_000));
    }
}

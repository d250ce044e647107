//! How every kind applies, retries and verifies an item: one policy, in one place.
//!
//! An **attempt** reads the item's current state in the tenant, writes only what differs from
//! the desired state, and reads back. Then:
//!
//! - An item gets at most `engine.item_attempts` attempts each time its chunk is claimed.
//! - A failure worth another attempt ([`ItemRetry::is_retryable`]: throttling, a 5xx or a
//!   timeout) is retried after a pause that doubles from 200 ms (capped at 5 s); any other
//!   failure ends the item with its code.
//! - **A write Graph accepted is trusted, and never sent again because a read does not show
//!   it yet.** Entra ID replicates asynchronously and gives an application no read-your-writes
//!   (MicrosoftDocs/entra-docs `docs/architecture/architecture.md`, "Data consistency"): a
//!   read-back may show the state from before the write. It is re-read, with the same doubling
//!   pauses, until it shows, for at most `engine.verify_within_ms` ([`ItemRetry::verify_within`])
//!   after the write; only then is it `verification_failed`.
//! - A write that failed in a way that may have been applied (a 5xx, a timeout) is re-read in
//!   the same way; it is sent again only when `engine.resend_after_ms`
//!   ([`ItemRetry::resend_after`]) passed without the write showing. A
//!   write that finds the desired state already there writes nothing, so a write that reported
//!   a failure but was applied is found done (and reported `changed`).
//! - Below this, the Graph client repeats only requests that were certainly not applied (a
//!   429) or are safe to repeat (reads, membership changes); see `tenant::graph`.
//!
//! **Worst case** per item and claim of its chunk: `item_attempts` `assignLicense` calls for a
//! policy member (3 with the defaults); for an admin role, `item_attempts` removals and
//! `item_attempts` additions per Phone System group involved. A chunk claimed again after its
//! worker died starts again from a read, so it writes nothing that is already done.

use std::num::NonZeroU32;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tokio_util::sync::CancellationToken;

use super::error::failure_code;
use super::kind::ItemResult;
use crate::domain::FailureCode;
use crate::tenant::TenantError;

/// The pause before the first retry; it doubles for each one after.
const FIRST_PAUSE: Duration = Duration::from_millis(200);
/// The longest pause between two attempts at an item.
const LONGEST_PAUSE: Duration = Duration::from_secs(5);

/// What to do after an attempt failed.
#[derive(Debug)]
pub enum Verdict {
    /// Worth another attempt (after a pause).
    Retry(TenantError),
    /// The item fails with this code and detail.
    Fail(FailureCode, String),
}

/// The item retry policy (see the module docs).
#[derive(Debug, Clone)]
pub struct ItemRetry {
    attempts: u32,
    verify_within: Duration,
    resend_after: Duration,
    backoff: ExponentialBuilder,
}

impl ItemRetry {
    pub fn new(attempts: NonZeroU32, verify_within: Duration, resend_after: Duration) -> Self {
        Self {
            attempts: attempts.get(),
            verify_within,
            resend_after: resend_after.min(verify_within),
            backoff: ExponentialBuilder::new()
                .with_min_delay(FIRST_PAUSE)
                .with_factor(2.0)
                .with_max_delay(LONGEST_PAUSE)
                .without_max_times(),
        }
    }

    /// Attempts per item and claim.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long after a write reads may still not show it (see the module docs).
    pub fn verify_within(&self) -> Duration {
        self.verify_within
    }

    /// How long a write that may have been applied (a 5xx, a timeout) is re-read before it is
    /// sent again (see the module docs).
    pub fn resend_after(&self) -> Duration {
        self.resend_after
    }

    /// Whether a failed attempt is worth another.
    pub fn is_retryable(error: &TenantError) -> bool {
        error.is_transient() || matches!(error, TenantError::NotConverged(_))
    }

    pub fn verdict(error: TenantError) -> Verdict {
        if Self::is_retryable(&error) {
            Verdict::Retry(error)
        } else {
            Verdict::Fail(failure_code(&error), error.to_string())
        }
    }

    /// The pause before retry number `retry` (from 1).
    pub fn pause(&self, retry: u32) -> Duration {
        self.backoff
            .build()
            .nth(retry.saturating_sub(1) as usize)
            .unwrap_or(LONGEST_PAUSE)
    }

    /// Wait before retry number `retry`; false when `cancel` came first (stop at once).
    pub async fn wait(&self, retry: u32, cancel: &CancellationToken) -> bool {
        tokio::select! {
            _ = cancel.cancelled() => false,
            _ = tokio::time::sleep(self.pause(retry)) => true,
        }
    }

    /// An item written successfully whose read-backs never showed the write.
    pub fn unverified(seq: i32, detail: impl Into<String>) -> ItemResult {
        ItemResult::failed(seq, FailureCode::VerificationFailed, detail)
    }

    /// An item whose attempts ran out: the last error's code, else `tenant_unavailable`
    /// with `fallback` as detail.
    pub fn exhausted(seq: i32, last_error: Option<TenantError>, fallback: &str) -> ItemResult {
        match last_error {
            Some(error) => ItemResult::failed(seq, failure_code(&error), error.to_string()),
            None => ItemResult::failed(seq, FailureCode::TenantUnavailable, fallback),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_from_200_ms_up_to_5_s() {
        let retry = ItemRetry::new(
            NonZeroU32::new(3).unwrap(),
            Duration::from_secs(60),
            Duration::from_secs(20),
        );
        let pauses: Vec<u128> = (1..=7).map(|n| retry.pause(n).as_millis()).collect();
        assert_eq!(pauses, vec![200, 400, 800, 1600, 3200, 5000, 5000]);
    }

    #[test]
    fn transient_and_unconverged_failures_are_retried_others_fail_with_their_code() {
        assert!(matches!(
            ItemRetry::verdict(TenantError::Transient("503".into())),
            Verdict::Retry(_)
        ));
        assert!(matches!(
            ItemRetry::verdict(TenantError::NotConverged("not yet".into())),
            Verdict::Retry(_)
        ));
        assert!(matches!(
            ItemRetry::verdict(TenantError::UserNotFound("x".into())),
            Verdict::Fail(FailureCode::UserNotFound, _)
        ));
    }
}

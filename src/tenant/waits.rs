//! Whether a call waits out a fault's `Retry-After` for part of its requests.
//!
//! A batched read retries the requests that failed in a way worth retrying, after the
//! `Retry-After` Graph asked for (503s carry one: "503 … employ a back-off strategy similar to
//! 429", microsoft-graph-docs-contrib `concepts/best-practices-concept.md`) or a back-off step.
//! Waiting inside the call holds every other answer of it: a chunk of 250 users whose read has
//! one 503 among 13 `$batch`es sits idle for a second or two, and so does its share of the
//! write budget. Work that can get on with the answers it has asks, with [`return_early`], to
//! get them at once: a request that failed while others of the same call succeeded comes back
//! as [`TenantError::Postponed`](super::TenantError::Postponed), saying how long to wait before
//! asking again, and the caller sends it again later (the engine's policy rounds do). When
//! nothing of the call succeeded (Graph is down, or throttling all of it) the call waits and
//! retries as always: there is nothing else to get on with.
use std::future::Future;

tokio::task_local! {
    static RETURN_EARLY: ();
}

/// Runs `work` with its batched reads returning early (see the module docs).
pub async fn return_early<F: Future>(work: F) -> F::Output {
    RETURN_EARLY.scope((), work).await
}

/// Whether the current work asked for early returns.
pub(crate) fn returns_early() -> bool {
    RETURN_EARLY.try_with(|()| ()).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn early_returns_hold_inside_their_scope_only() {
        assert!(!returns_early());
        assert!(
            return_early(async {
                tokio::task::yield_now().await;
                returns_early()
            })
            .await
        );
        assert!(!returns_early());
    }
}

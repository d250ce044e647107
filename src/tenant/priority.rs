//! The `x-ms-throttle-priority` a request is sent with.
//!
//! Graph lets a client say which of its requests may be throttled first when it nears a limit:
//! "`x-ms-throttle-priority`: `Low`, `Normal`, `High` … When a request is throttled, requests
//! with a lower priority are throttled first" (microsoft-graph-docs-contrib
//! `concepts/throttling-limits.md`, identity and access service limits). Bulk work that runs
//! off-peak can wait, so it is sent `low`; a single ticket's job is `normal`; nothing here is
//! `high` (reserved for interactive work, which this service has none of).
//!
//! The priority is set for a whole unit of work with [`scope`] (the engine does it around a
//! chunk) and read by the transport when it builds each request, so that no call in between
//! has to carry it.
use std::future::Future;

tokio::task_local! {
    static PRIORITY: Priority;
}

/// A request's throttling priority.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Bulk work that can wait (off-peak policies).
    Low,
    /// Work for one ticket.
    Normal,
    /// Interactive work (unused here).
    High,
}

impl Priority {
    /// The header value Graph documents.
    pub fn as_header(self) -> &'static str {
        match self {
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// The header name.
pub const THROTTLE_PRIORITY: &str = "x-ms-throttle-priority";

/// Runs `work` with every Graph request it makes sent at `priority`.
pub async fn scope<F: Future>(priority: Priority, work: F) -> F::Output {
    PRIORITY.scope(priority, work).await
}

/// The priority of the work this request belongs to, if one was set.
pub(crate) fn current() -> Option<Priority> {
    PRIORITY.try_with(|p| *p).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_priority_holds_inside_its_scope_only() {
        assert_eq!(current(), None);
        let inside = scope(Priority::Low, async {
            tokio::task::yield_now().await;
            current()
        })
        .await;
        assert_eq!(inside, Some(Priority::Low));
        assert_eq!(current(), None);
    }
}

//! What happens in the tenant client, each as one [`InternalEvent`] that writes its log line and
//! updates its metrics together.
//!
//! Label values come from [`Operation::as_str`], [`RetryReason::as_str`] and
//! [`m::status_class`], never from input.
use std::time::Duration;

use super::error::{Operation, TenantError};
use crate::telemetry::event::InternalEvent;
use crate::telemetry::metrics as m;

/// Why a request is sent again (the `reason` label of [`m::TENANT_RETRIES_TOTAL`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// Graph throttled it (429).
    Throttled,
    /// Any other fault worth another attempt.
    Transient,
    /// Graph refused the token (401): sent again with a new one.
    Unauthorized,
}

impl RetryReason {
    /// The metric label (one of [`m::TENANT_RETRY_REASONS`]).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttled => "throttled",
            Self::Transient => "transient",
            Self::Unauthorized => "unauthorized",
        }
    }

    /// The reason for retrying after `error`.
    pub fn of(error: &TenantError) -> Self {
        if let TenantError::Postponed { error, .. } = error {
            Self::of(error)
        } else if matches!(error, TenantError::Throttled { .. }) {
            Self::Throttled
        } else {
            Self::Transient
        }
    }
}

/// The time one request took, by operation.
fn record_duration(op: Operation, elapsed: Duration) {
    metrics::histogram!(m::TENANT_REQUEST_DURATION_SECONDS, "operation" => op.as_str())
        .record(elapsed.as_secs_f64());
}

/// A request that got no answer (connection, timeout, body).
fn count_unreachable(op: Operation) {
    metrics::counter!(m::TENANT_REQUESTS_TOTAL, "operation" => op.as_str(), "status" => "network")
        .increment(1);
}

/// Counts answers by operation and status class, and 429s on their own.
fn count_answer(op: Operation, status: u16) {
    metrics::counter!(m::TENANT_REQUESTS_TOTAL, "operation" => op.as_str(), "status" => m::status_class(status))
        .increment(1);
    if status == 429 {
        metrics::counter!(m::TENANT_THROTTLED_TOTAL, "operation" => op.as_str()).increment(1);
    }
}

fn count_retries<'a>(op: Operation, errors: impl IntoIterator<Item = &'a TenantError>) -> usize {
    let mut n = 0;
    for error in errors {
        metrics::counter!(m::TENANT_RETRIES_TOTAL, "operation" => op.as_str(), "reason" => RetryReason::of(error).as_str())
            .increment(1);
        n += 1;
    }
    n
}

/// Graph answered an HTTP request (any status).
///
/// The line carries the `client-request-id` sent and Graph's `request-id`: Microsoft needs both
/// to look into a failure (microsoft-graph-docs-contrib `concepts/best-practices-concept.md`,
/// "Reliability and support").
pub(crate) struct GraphAnswered<'a> {
    pub op: Operation,
    pub status: u16,
    pub elapsed: Duration,
    pub client_request_id: &'a str,
    /// Graph's `request-id` header, when it sent one.
    pub request_id: Option<&'a str>,
}

impl InternalEvent for GraphAnswered<'_> {
    fn emit(self) {
        record_duration(self.op, self.elapsed);
        count_answer(self.op, self.status);
        let elapsed = self.elapsed.as_secs_f64();
        let message = if (200..300).contains(&self.status) {
            "graph request"
        } else {
            "graph request failed"
        };
        tracing::debug!(
            operation = self.op.as_str(),
            status = self.status,
            elapsed,
            client_request_id = self.client_request_id,
            request_id = self.request_id.unwrap_or_default(),
            "{message}"
        );
    }
}

/// An HTTP request to Graph got no answer (connection, timeout, body).
pub(crate) struct GraphUnreachable<'a> {
    pub op: Operation,
    pub elapsed: Duration,
    pub error: &'a reqwest::Error,
    pub client_request_id: &'a str,
}

impl InternalEvent for GraphUnreachable<'_> {
    fn emit(self) {
        record_duration(self.op, self.elapsed);
        count_unreachable(self.op);
        tracing::debug!(
            operation = self.op.as_str(),
            error = %self.error,
            client_request_id = self.client_request_id,
            "graph request failed"
        );
    }
}

/// One inner request of a `$batch` was answered; a failure is logged with the inner request's
/// `client-request-id` and the inner answer's `request-id`.
pub(crate) struct InnerAnswered<'a> {
    pub op: Operation,
    pub status: u16,
    /// The `client-request-id` sent in the inner request's headers.
    pub client_request_id: Option<&'a str>,
    /// The `request-id` of the inner answer's headers, when Graph sent one.
    pub request_id: Option<&'a str>,
}

impl InternalEvent for InnerAnswered<'_> {
    fn emit(self) {
        count_answer(self.op, self.status);
        if !(200..300).contains(&self.status) {
            tracing::debug!(
                operation = self.op.as_str(),
                status = self.status,
                client_request_id = self.client_request_id.unwrap_or_default(),
                request_id = self.request_id.unwrap_or_default(),
                "graph inner request failed"
            );
        }
    }
}

/// Graph refused the token (401): the request is sent once more with a new one.
pub(crate) struct RetryingWithNewToken {
    pub op: Operation,
}

impl InternalEvent for RetryingWithNewToken {
    fn emit(self) {
        metrics::counter!(m::TENANT_RETRIES_TOTAL, "operation" => self.op.as_str(), "reason" => RetryReason::Unauthorized.as_str())
            .increment(1);
    }
}

/// A single request is sent again after `wait`.
pub(crate) struct Retrying<'a> {
    pub op: Operation,
    pub error: &'a TenantError,
    pub wait: Duration,
}

impl InternalEvent for Retrying<'_> {
    fn emit(self) {
        count_retries(self.op, [self.error]);
        tracing::debug!(operation = self.op.as_str(), wait = ?self.wait, error = %self.error, "retrying");
    }
}

/// Inner requests of a `$batch` operation are sent again after `wait`, one for each error.
pub(crate) struct BatchRetrying<'a, I: Iterator<Item = &'a TenantError>> {
    pub op: Operation,
    pub errors: I,
    pub wait: Duration,
}

impl<'a, I: Iterator<Item = &'a TenantError>> InternalEvent for BatchRetrying<'a, I> {
    fn emit(self) {
        let items = count_retries(self.op, self.errors);
        tracing::debug!(
            operation = self.op.as_str(),
            items,
            wait = ?self.wait,
            "retrying batched requests"
        );
    }
}

/// Batched requests left for the caller to send again after `wait` (see
/// [`super::waits`]); counted as retries, as the caller retries them.
pub(crate) struct BatchPostponed<'a, I: Iterator<Item = &'a TenantError>> {
    pub op: Operation,
    pub errors: I,
    pub wait: Duration,
}

impl<'a, I: Iterator<Item = &'a TenantError>> InternalEvent for BatchPostponed<'a, I> {
    fn emit(self) {
        let items = count_retries(self.op, self.errors);
        tracing::debug!(
            operation = self.op.as_str(),
            items,
            wait = ?self.wait,
            "batched requests handed back to be sent again later"
        );
    }
}

/// Throttled licence writes: their users are re-read after `wait`, and written again where
/// they still differ.
pub(crate) struct LicenceWritesThrottled<'a, I: Iterator<Item = &'a TenantError>> {
    pub errors: I,
    pub wait: Duration,
}

impl<'a, I: Iterator<Item = &'a TenantError>> InternalEvent for LicenceWritesThrottled<'a, I> {
    fn emit(self) {
        let items = count_retries(Operation::AssignLicence, self.errors);
        tracing::debug!(
            items,
            wait = ?self.wait,
            "licence writes throttled; re-reading before retrying"
        );
    }
}

/// A write waited for the write budget.
pub(crate) struct WriteBudgetWaited {
    pub elapsed: Duration,
}

impl InternalEvent for WriteBudgetWaited {
    fn emit(self) {
        metrics::histogram!(m::TENANT_WRITE_BUDGET_WAIT_SECONDS).record(self.elapsed.as_secs_f64());
    }
}

/// The token endpoint answered (any status).
pub(crate) struct TokenEndpointAnswered {
    pub status: u16,
    pub elapsed: Duration,
}

impl InternalEvent for TokenEndpointAnswered {
    fn emit(self) {
        // Not `count_answer`: a 429 of the token endpoint is not a throttled Graph call.
        record_duration(Operation::Token, self.elapsed);
        metrics::counter!(m::TENANT_REQUESTS_TOTAL, "operation" => Operation::Token.as_str(), "status" => m::status_class(self.status))
            .increment(1);
    }
}

/// The token endpoint could not be reached.
pub(crate) struct TokenEndpointUnreachable {
    pub elapsed: Duration,
}

impl InternalEvent for TokenEndpointUnreachable {
    fn emit(self) {
        record_duration(Operation::Token, self.elapsed);
        count_unreachable(Operation::Token);
    }
}

/// The token endpoint refused to issue a token (4xx other than 429).
pub(crate) struct TokenRefused<'a> {
    pub status: u16,
    pub error: &'a str,
}

impl InternalEvent for TokenRefused<'_> {
    fn emit(self) {
        tracing::warn!(status = self.status, error = %self.error, "access token refused");
    }
}

/// A new access token was fetched.
pub(crate) struct TokenFetched {
    pub expires_in: u64,
}

impl InternalEvent for TokenFetched {
    fn emit(self) {
        metrics::counter!(m::TENANT_TOKEN_REFRESHES_TOTAL).increment(1);
        tracing::debug!(expires_in = self.expires_in, "access token fetched");
    }
}

/// `find_group` found several groups of one display name and uses the first.
pub(crate) struct SeveralGroupsShareAName<'a> {
    pub display_name: &'a str,
    pub count: usize,
}

impl InternalEvent for SeveralGroupsShareAName<'_> {
    fn emit(self) {
        tracing::warn!(
            display_name = self.display_name,
            count = self.count,
            "several groups share a display name; using the first"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// The log lines `f` writes, at debug level.
    fn logged(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        String::from_utf8(buf.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn failure_lines_name_the_client_request_id_and_graphs_request_id() {
        let out = logged(|| {
            GraphAnswered {
                op: Operation::GetUser,
                status: 503,
                elapsed: Duration::from_millis(3),
                client_request_id: "c-outer",
                request_id: Some("r-outer"),
            }
            .emit();
            InnerAnswered {
                op: Operation::AddMember,
                status: 404,
                client_request_id: Some("c-inner"),
                request_id: Some("r-inner"),
            }
            .emit();
            InnerAnswered {
                op: Operation::AddMember,
                status: 204,
                client_request_id: Some("c-fine"),
                request_id: Some("r-fine"),
            }
            .emit();
        });
        let failed: Vec<&str> = out.lines().filter(|l| l.contains("failed")).collect();
        assert_eq!(failed.len(), 2, "{out}");
        assert!(failed[0].contains("client_request_id=\"c-outer\""), "{out}");
        assert!(failed[0].contains("request_id=\"r-outer\""), "{out}");
        assert!(failed[1].contains("client_request_id=\"c-inner\""), "{out}");
        assert!(failed[1].contains("request_id=\"r-inner\""), "{out}");
        assert!(
            !out.contains("c-fine"),
            "a success inner answer is not logged: {out}"
        );
    }
}

//! The transport leaf of the Graph client: one HTTP exchange, and the rules every exchange
//! follows.
//!
//! The tenant client is layered, each layer using only the ones below it:
//!
//! ```text
//! graph.rs      GraphClient: the Tenant impl (users, licences, groups, SKUs)
//!    │          what each operation is, and which of its failures it sends again
//!    ▼
//! batch.rs      JSON `$batch`: ≤ 20 inner requests per call, several calls in flight,
//!    │          one result per inner request
//!    ▼
//! transport.rs  this module: URL encoding, the bearer token, sending one request, the
//!    │          answer as a `Raw` and its `TenantError`, `Retry-After`, which faults are
//!    │          worth another attempt, the back-off, and counting requests
//!    ▼
//! auth.rs · rate.rs · error.rs · settings.rs · events.rs   (token, write budget, errors, …)
//! ```
//!
//! `model.rs` uses only the URL encoding here. Nothing here knows about batching or the
//! [`Tenant`](super::Tenant) trait.
//!
//! Every failed exchange is a `Failure`: the [`TenantError`] the caller sees, and a `Fault`
//! saying whether the request may have reached Graph, which is what decides a retry (see
//! `Fault::is_retried` and the table in [`graph`](super::graph)'s docs).
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use reqwest::Method;
use secrecy::ExposeSecret;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::auth::TokenSource;
use super::error::{Operation, TenantError};
use super::events::{
    GraphAnswered, GraphUnreachable, Retrying, RetryingWithNewToken, WriteBudgetWaited,
};
use super::rate::WriteBudget;
use super::settings::TenantSettings;
use crate::telemetry::emit;

/// Percent-encodes a URL path segment (a UPN, an id).
pub fn encode_path_segment(s: &str) -> String {
    encode(s, b"-._~@")
}

/// Percent-encodes a query parameter value.
pub fn encode_query_value(s: &str) -> String {
    encode(s, b"-._~,")
}

fn encode(s: &str, keep: &[u8]) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || keep.contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The OData literal of a string: single quotes doubled, the whole quoted.
pub fn odata_string(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Parses `Retry-After` in seconds, whole or decimal (Graph sends seconds, and a sample in
/// microsoft-graph-docs-contrib `concepts/throttling.md` once showed `Retry-After: 2.128`); an
/// HTTP date, a negative or an unreadable value is ignored.
pub(crate) fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    // Only digits and one point: `f64` would also take "inf", "NaN" and exponents.
    if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return v
            .parse::<f64>()
            .ok()
            .and_then(|s| Duration::try_from_secs_f64(s).ok());
    }
    None
}

/// The header naming a request, sent on every request (a new UUID v4 each): "On every request
/// to Microsoft Graph, generate a unique GUID, send it in the `client-request-id` HTTP request
/// header, and also log it" (microsoft-graph-docs-contrib `concepts/best-practices-concept.md`,
/// "Reliability and support").
pub(crate) const CLIENT_REQUEST_ID: &str = "client-request-id";

/// The header Graph names its response by; logged with the `client-request-id` for support.
pub(crate) const REQUEST_ID: &str = "request-id";

/// A new `client-request-id`.
pub(crate) fn new_client_request_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// What a failed exchange says about sending it again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// 429: Graph asks to come back later (after the `Retry-After`, when it sent one). A
    /// throttled request was not applied.
    Throttled(Option<Duration>),
    /// The request never reached Graph: no token could be had (token endpoint unavailable) or
    /// no connection could be made. Certainly not applied.
    NotSent,
    /// 408 or 5xx, a timeout, a dropped connection, an inner request missing from a `$batch`
    /// answer: Graph may or may not have applied it. A 503's `Retry-After` is kept: a retry
    /// waits for it as after a 429 ("503 … employ a back-off strategy similar to 429",
    /// microsoft-graph-docs-contrib `concepts/best-practices-concept.md`), but whether to retry
    /// is decided as for any fault that may have been applied, so a creation is not sent twice.
    Unavailable(Option<Duration>),
    /// Any other answer: sending the same request again gets the same answer.
    Final,
}

impl Fault {
    /// Whether the client sends a request of `op` again after this fault (attempts allowing).
    ///
    /// Throttling and requests that never left are retried for every operation; a request
    /// that may have been applied only when repeating it is harmless
    /// ([`Operation::is_idempotent`]: reads and membership changes). A throttled licence write
    /// is retried only after re-reading the user (see `GraphClient::assign_licences`).
    pub(crate) fn is_retried(self, op: Operation) -> bool {
        match self {
            Self::Throttled(_) | Self::NotSent => true,
            Self::Unavailable(_) => op.is_idempotent(),
            Self::Final => false,
        }
    }
}

/// A failed exchange: the error the caller sees, and what it says about retrying.
#[derive(Debug, Clone)]
pub(crate) struct Failure {
    pub(crate) error: TenantError,
    pub(crate) fault: Fault,
}

impl Failure {
    pub(crate) fn unavailable(message: String) -> Self {
        Self {
            error: TenantError::Transient(message),
            fault: Fault::Unavailable(None),
        }
    }
}

/// An HTTP answer (of a single call or of one inner request).
#[derive(Debug, Clone)]
pub(crate) struct Raw {
    pub(crate) status: u16,
    pub(crate) retry_after: Option<Duration>,
    /// The JSON body, `Null` when empty or not JSON.
    pub(crate) body: Value,
}

impl Raw {
    pub(crate) fn new(status: u16, retry_after: Option<Duration>, bytes: &[u8]) -> Self {
        Self {
            status,
            retry_after,
            body: serde_json::from_slice(bytes).unwrap_or(Value::Null),
        }
    }

    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The error this (non-2xx) answer means for `op`.
    pub(crate) fn error(&self, op: Operation) -> TenantError {
        let e = self.body.get("error");
        let field = |k: &str| {
            e.and_then(|e| e.get(k))
                .and_then(Value::as_str)
                .unwrap_or_default()
        };
        TenantError::from_graph(
            op,
            self.status,
            field("code"),
            field("message"),
            self.retry_after,
        )
    }

    /// What this (non-2xx) answer says about retrying.
    pub(crate) fn fault(&self) -> Fault {
        match (self.status, self.retry_after) {
            (429, retry_after) => Fault::Throttled(retry_after),
            (503, retry_after) => Fault::Unavailable(retry_after),
            (408 | 500..=599, _) => Fault::Unavailable(None),
            _ => Fault::Final,
        }
    }

    /// The [`Failure`] this (non-2xx) answer is for `op`.
    pub(crate) fn failure(&self, op: Operation) -> Failure {
        Failure {
            error: self.error(op),
            fault: self.fault(),
        }
    }

    pub(crate) fn invalid(&self, what: &str) -> TenantError {
        TenantError::Other {
            status: self.status,
            code: "invalid_response".to_owned(),
            message: what.to_owned(),
        }
    }

    /// The body as `T`.
    pub(crate) fn parse<T: DeserializeOwned>(self, op: Operation) -> Result<T, TenantError> {
        let status = self.status;
        serde_json::from_value(self.body).map_err(|e| TenantError::Other {
            status,
            code: "invalid_response".to_owned(),
            message: format!("{}: {e}", op.as_str()),
        })
    }

    /// The `value` array of a collection answer as `Vec<T>`.
    pub(crate) fn value_list<T: DeserializeOwned>(
        &self,
        op: Operation,
    ) -> Result<Vec<T>, TenantError> {
        let value = self
            .body
            .get("value")
            .cloned()
            .unwrap_or(Value::Array(Vec::new()));
        serde_json::from_value(value).map_err(|e| TenantError::Other {
            status: self.status,
            code: "invalid_response".to_owned(),
            message: format!("{}: {e}", op.as_str()),
        })
    }
}

/// Sends requests to Graph with a valid token, spends the write budget, and paces retries.
pub(crate) struct Transport {
    http: reqwest::Client,
    pub(crate) settings: TenantSettings,
    /// `{graph_base_url}/v1.0`.
    pub(crate) root: String,
    auth: TokenSource,
    pub(crate) budget: Arc<dyn WriteBudget>,
}

impl Transport {
    pub(crate) fn new(
        settings: TenantSettings,
        budget: Arc<dyn WriteBudget>,
    ) -> Result<Self, TenantError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(settings.request_timeout_ms))
            .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
            .build()
            .map_err(|e| TenantError::Other {
                status: 0,
                code: "client_setup".to_owned(),
                message: e.to_string(),
            })?;
        Ok(Self {
            auth: TokenSource::new(http.clone(), &settings)?,
            root: format!("{}/v1.0", settings.graph_base_url.trim_end_matches('/')),
            http,
            settings,
            budget,
        })
    }

    /// Whether writes are limited by a budget (then write `$batch` calls hold at most `write_burst`).
    pub(crate) fn write_limited(&self) -> bool {
        self.settings.effective_writes_per_second() > 0.0
    }

    /// Attempts per request or item, the first included (`tenant.max_attempts`).
    pub(crate) fn max_attempts(&self) -> u32 {
        self.settings.max_attempts.get()
    }

    /// A fresh back-off: exponential from `retry_min_delay_ms` to `retry_max_delay_ms`, with jitter.
    pub(crate) fn backoff(&self) -> ExponentialBackoff {
        ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.retry_min_delay_ms))
            .with_max_delay(Duration::from_millis(self.settings.retry_max_delay_ms))
            .with_jitter()
            .with_max_times(self.settings.max_attempts.get() as usize)
            .build()
    }

    /// The (capped) `Retry-After` of a fault (a 429's or a 503's).
    fn retry_after(&self, fault: Fault) -> Option<Duration> {
        match fault {
            Fault::Throttled(Some(d)) | Fault::Unavailable(Some(d)) => {
                Some(d.min(Duration::from_secs(self.settings.max_retry_after_seconds)))
            }
            _ => None,
        }
    }

    fn next_backoff(&self, backoff: &mut ExponentialBackoff) -> Duration {
        backoff
            .next()
            .unwrap_or(Duration::from_millis(self.settings.retry_max_delay_ms))
    }

    /// How long to wait before retrying after `fault`: its `Retry-After` (capped) or the next
    /// back-off.
    pub(crate) fn delay_for(&self, fault: Fault, backoff: &mut ExponentialBackoff) -> Duration {
        self.retry_after(fault)
            .unwrap_or_else(|| self.next_backoff(backoff))
    }

    /// The wait before the next round of a batched operation: the longest `Retry-After` among
    /// its faults, and at least one back-off step when a fault had none.
    pub(crate) fn round_delay(
        &self,
        faults: impl IntoIterator<Item = Fault>,
        backoff: &mut ExponentialBackoff,
    ) -> Duration {
        let mut wait = Duration::ZERO;
        let mut needs_backoff = false;
        for fault in faults {
            match self.retry_after(fault) {
                Some(d) => wait = wait.max(d),
                None => needs_backoff = true,
            }
        }
        if needs_backoff {
            wait = wait.max(self.next_backoff(backoff));
        }
        wait
    }

    /// Waits until `n` writes may be sent.
    pub(crate) async fn acquire_budget(&self, n: u32) {
        let started = Instant::now();
        self.budget.acquire(n).await;
        emit(WriteBudgetWaited {
            elapsed: started.elapsed(),
        });
    }

    /// One HTTP exchange. A 401 makes it fetch a new token and try once more. Every HTTP answer
    /// (also an error status) is `Ok`; `Err` means there was no answer.
    pub(crate) async fn send(
        &self,
        op: Operation,
        method: Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&'static str, &str)],
    ) -> Result<Raw, Failure> {
        let mut refreshed = false;
        loop {
            let token = self.auth.token().await.map_err(|error| Failure {
                fault: if error.is_transient() {
                    Fault::NotSent
                } else {
                    Fault::Final
                },
                error,
            })?;
            let started = Instant::now();
            // A new id per attempt, as the best practice asks for every request.
            let client_request_id = new_client_request_id();
            let mut req = self
                .http
                .request(method.clone(), url)
                .bearer_auth(token.expose_secret())
                .header(CLIENT_REQUEST_ID, &client_request_id);
            if let Some(priority) = super::priority::current() {
                req = req.header(super::priority::THROTTLE_PRIORITY, priority.as_header());
            }
            for (name, value) in headers {
                req = req.header(*name, *value);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            let mut request_id = None;
            let result = match req.send().await {
                Ok(resp) => {
                    let status = resp.status().as_u16();
                    let header = |name| resp.headers().get(name).and_then(|v| v.to_str().ok());
                    let retry_after =
                        header(reqwest::header::RETRY_AFTER.as_str()).and_then(parse_retry_after);
                    request_id = header(REQUEST_ID).map(str::to_owned);
                    resp.bytes()
                        .await
                        .map(|b| Raw::new(status, retry_after, &b))
                }
                Err(e) => Err(e),
            };
            let elapsed = started.elapsed();
            let raw = match result {
                Ok(raw) => raw,
                Err(error) => {
                    emit(GraphUnreachable {
                        op,
                        elapsed,
                        error: &error,
                        client_request_id: &client_request_id,
                    });
                    return Err(Failure {
                        // Only a connection never made is certainly not applied.
                        fault: if error.is_connect() {
                            Fault::NotSent
                        } else {
                            Fault::Unavailable(None)
                        },
                        error: TenantError::Transient(format!("{}: {error}", op.as_str())),
                    });
                }
            };
            emit(GraphAnswered {
                op,
                status: raw.status,
                elapsed,
                client_request_id: &client_request_id,
                request_id: request_id.as_deref(),
            });
            if raw.status == 429 {
                self.budget.throttled();
            }
            if raw.status == 401 && !refreshed {
                refreshed = true;
                emit(RetryingWithNewToken { op });
                self.auth.invalidate(&token).await;
                continue;
            }
            return Ok(raw);
        }
    }

    /// A single (non-batched) call, sent again after the faults [`Fault::is_retried`] allows
    /// for `op`, up to `max_attempts` sends; `Ok` only for 2xx.
    pub(crate) async fn call(
        &self,
        op: Operation,
        method: Method,
        url: &str,
        body: Option<&Value>,
    ) -> Result<Raw, TenantError> {
        self.call_with(op, method, url, body, &[]).await
    }

    /// [`Transport::call`] with extra request headers (such as `Prefer`).
    pub(crate) async fn call_with(
        &self,
        op: Operation,
        method: Method,
        url: &str,
        body: Option<&Value>,
        headers: &[(&'static str, &str)],
    ) -> Result<Raw, TenantError> {
        let mut backoff = self.backoff();
        let mut attempt = 1;
        loop {
            if op.is_write() {
                self.acquire_budget(1).await;
            }
            let failure = match self.send(op, method.clone(), url, body, headers).await {
                Ok(raw) if raw.is_success() => return Ok(raw),
                Ok(raw) => raw.failure(op),
                Err(failure) => failure,
            };
            if !failure.fault.is_retried(op) || attempt >= self.max_attempts() {
                return Err(failure.error);
            }
            let wait = self.delay_for(failure.fault, &mut backoff);
            emit(Retrying {
                op,
                error: &failure.error,
                wait,
            });
            tokio::time::sleep(wait).await;
            attempt += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_upns_and_filters() {
        assert_eq!(
            encode_path_segment("o'neil+x@nhs.net"),
            "o%27neil%2Bx@nhs.net"
        );
        assert_eq!(odata_string("O'Brien"), "'O''Brien'");
        assert_eq!(
            encode_query_value("displayName eq 'a b'"),
            "displayName%20eq%20%27a%20b%27"
        );
    }

    #[test]
    fn faults_decide_retries_by_operation() {
        let raw = |status, retry_after| Raw {
            status,
            retry_after,
            body: Value::Null,
        };
        let ra = Some(Duration::from_secs(2));
        assert_eq!(raw(429, None).fault(), Fault::Throttled(None));
        assert_eq!(raw(503, ra).fault(), Fault::Unavailable(ra));
        assert_eq!(raw(503, None).fault(), Fault::Unavailable(None));
        assert_eq!(raw(504, None).fault(), Fault::Unavailable(None));
        assert_eq!(raw(400, None).fault(), Fault::Final);
        // A 503 with Retry-After is still reported as tenant_unavailable.
        assert_eq!(
            raw(503, ra).error(Operation::GetUser).code(),
            "tenant_unavailable"
        );

        for op in [Operation::AssignLicence, Operation::CreateUser] {
            assert!(Fault::Throttled(None).is_retried(op));
            assert!(Fault::NotSent.is_retried(op));
            assert!(
                !Fault::Unavailable(None).is_retried(op),
                "{op:?} may be applied"
            );
            assert!(
                !Fault::Unavailable(ra).is_retried(op),
                "{op:?} may be applied"
            );
        }
        for op in [
            Operation::GetUser,
            Operation::AddMember,
            Operation::RemoveMember,
        ] {
            assert!(Fault::Unavailable(None).is_retried(op));
            assert!(Fault::Unavailable(ra).is_retried(op));
            assert!(!Fault::Final.is_retried(op));
        }
    }

    #[test]
    fn retry_after_may_be_fractional() {
        assert_eq!(parse_retry_after("10"), Some(Duration::from_secs(10)));
        assert_eq!(
            parse_retry_after(" 2.128 "),
            Some(Duration::from_millis(2128))
        );
        assert_eq!(parse_retry_after("0.5"), Some(Duration::from_millis(500)));
        for bad in [
            "",
            "-1",
            "1e3",
            "inf",
            "NaN",
            "Wed, 21 Oct 2015 07:28:00 GMT",
        ] {
            assert_eq!(parse_retry_after(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_503_waits_for_its_retry_after_like_a_429() {
        let transport = Transport::new(
            TenantSettings::default(),
            Arc::new(crate::tenant::rate::Unlimited),
        )
        .unwrap();
        let mut backoff = transport.backoff();
        let ra = Duration::from_millis(1500);
        for fault in [Fault::Throttled(Some(ra)), Fault::Unavailable(Some(ra))] {
            assert_eq!(transport.delay_for(fault, &mut backoff), ra, "{fault:?}");
        }
        assert_eq!(
            transport.round_delay([Fault::Unavailable(Some(ra))], &mut backoff),
            ra
        );
    }
}

//! JSON batching: up to 20 requests per `POST /$batch`, several batches in flight, every inner
//! answer handled on its own and results returned in input order.
//!
//! The middle layer of the client (see [`super::transport`] for the picture): it sends through
//! `Transport` and knows nothing of what the requests mean; [`super::graph`] builds them.
use std::collections::HashMap;

use futures_util::StreamExt;
use reqwest::Method;
use serde_json::{Value, json};

use super::error::{Operation, TenantError};
use super::events::{BatchPostponed, BatchRetrying, InnerAnswered};
use super::transport::{
    CLIENT_REQUEST_ID, Failure, Fault, REQUEST_ID, Raw, Transport, new_client_request_id,
    parse_retry_after,
};
use super::{Ungated, WriteGate};
use crate::telemetry::emit;

/// Graph's limit of requests per `$batch`.
pub const MAX_BATCH_SIZE: usize = 20;

/// The share of the write budget one call keeps in flight (see
/// [`Transport::write_batches_in_flight`]): a round trip with some margin.
const WRITE_PIPELINE: std::time::Duration = std::time::Duration::from_millis(250);

/// One request inside a `$batch`; `url` is relative to the version (`/users/…`).
#[derive(Debug, Clone)]
pub(crate) struct Inner {
    method: &'static str,
    url: String,
    body: Option<Value>,
}

impl Inner {
    pub(crate) fn get(url: String) -> Self {
        Self {
            method: "GET",
            url,
            body: None,
        }
    }

    pub(crate) fn post(url: String, body: Value) -> Self {
        Self {
            method: "POST",
            url,
            body: Some(body),
        }
    }

    pub(crate) fn delete(url: String) -> Self {
        Self {
            method: "DELETE",
            url,
            body: None,
        }
    }

    /// The inner request, named `client_request_id` in its own headers (the best practice asks
    /// for one on every request; Graph's docs are silent on inner ones, so the envelope has its
    /// own too).
    fn json(&self, id: usize, client_request_id: &str) -> Value {
        let mut r = json!({
            "id": id.to_string(),
            "method": self.method,
            "url": self.url,
            "headers": { CLIENT_REQUEST_ID: client_request_id },
        });
        // Inner requests carry the work's priority too: Graph throttles them one by one.
        if let Some(priority) = super::priority::current() {
            r["headers"][super::priority::THROTTLE_PRIORITY] = json!(priority.as_header());
        }
        if let Some(b) = &self.body {
            // Graph refuses an inner body without its Content-Type.
            r["headers"]["Content-Type"] = json!("application/json");
            r["body"] = b.clone();
        }
        r
    }
}

impl Transport {
    fn chunk_size(&self, op: Operation) -> usize {
        let mut size = self.settings.batch_size.get().min(MAX_BATCH_SIZE);
        if op.is_write() && self.write_limited() {
            size = size.min(self.settings.write_burst.get() as usize);
        }
        size
    }

    /// How many `$batch`es of `size` writes one call keeps in flight under a write budget:
    /// enough to cover [`WRITE_PIPELINE`] of the budget's rate, at least one, at most
    /// `batch_concurrency`.
    ///
    /// Why: a call with one batch in flight writes `size` per round trip, whatever the budget
    /// (5 writes per 50–90 ms is 55–100 writes/s), so at a high rate a chunk could not use the
    /// budget on its own, and every pause of a chunk (a read-back, a 503's `Retry-After`) left
    /// it unused (Little's law: writes in flight = rate × round trip). More in flight than that
    /// would only queue for tokens, and every token queued ahead delays other jobs' writes: a
    /// small job's batch waits behind at most `WRITE_PIPELINE` of each running chunk's writes.
    /// At the default 18 writes/s this is one batch.
    fn write_batches_in_flight(&self, size: usize) -> usize {
        let rate = self.settings.effective_writes_per_second();
        let wanted = (rate * WRITE_PIPELINE.as_secs_f64() / size.max(1) as f64).ceil() as usize;
        wanted.clamp(1, self.settings.batch_concurrency.get())
    }

    /// Sends `items` once, in `$batch` chunks, several at a time, asking `gate` before each
    /// `$batch` of writes is sent. Each item's result is `Ok` for a 2xx answer and its
    /// [`Failure`] otherwise (an envelope failure fails all of its items).
    pub(crate) async fn batch_round_gated(
        &self,
        op: Operation,
        items: Vec<(usize, Inner)>,
        gate: &dyn WriteGate,
    ) -> Vec<(usize, Result<Raw, Failure>)> {
        let size = self.chunk_size(op);
        let concurrency = if op.is_write() && self.write_limited() {
            self.write_batches_in_flight(size)
        } else {
            self.settings.batch_concurrency.get()
        };
        // Owned chunks: borrowed items in the stream trip the compiler's Send inference.
        let mut chunks: Vec<Vec<(usize, Inner)>> = Vec::new();
        for item in items {
            match chunks.last_mut() {
                Some(c) if c.len() < size => c.push(item),
                _ => chunks.push(vec![item]),
            }
        }
        futures_util::stream::iter(chunks)
            .map(|chunk| self.send_batch(op, chunk, gate))
            .buffer_unordered(concurrency)
            .flat_map(futures_util::stream::iter)
            .collect()
            .await
    }

    async fn send_batch(
        &self,
        op: Operation,
        chunk: Vec<(usize, Inner)>,
        gate: &dyn WriteGate,
    ) -> Vec<(usize, Result<Raw, Failure>)> {
        let all = |f: Failure| chunk.iter().map(|(i, _)| (*i, Err(f.clone()))).collect();
        if op.is_write() {
            self.acquire_budget(chunk.len() as u32).await;
            // Asked last, right before sending: the budget wait may have been long.
            let positions: Vec<usize> = chunk.iter().map(|(i, _)| *i).collect();
            if !gate.admit(&positions).await {
                return all(Failure {
                    error: TenantError::Withheld("refused by the write gate".into()),
                    fault: Fault::Final,
                });
            }
        }
        let client_request_ids: HashMap<usize, String> = chunk
            .iter()
            .map(|(i, _)| (*i, new_client_request_id()))
            .collect();
        let body = json!({ "requests": chunk
            .iter()
            .map(|(i, r)| r.json(*i, &client_request_ids[i]))
            .collect::<Vec<_>>() });
        let url = format!("{}/$batch", self.root);
        let raw = match self
            .send(Operation::Batch, Method::POST, &url, Some(&body), &[])
            .await
        {
            Ok(raw) if raw.is_success() => raw,
            Ok(raw) => return all(raw.failure(Operation::Batch)),
            Err(f) => return all(f),
        };
        let mut answers: HashMap<usize, Raw> = HashMap::with_capacity(chunk.len());
        for r in raw
            .body
            .get("responses")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            let Some(id) = r
                .get("id")
                .and_then(Value::as_str)
                .and_then(|s| s.parse::<usize>().ok())
            else {
                continue;
            };
            let status = r.get("status").and_then(Value::as_u64).unwrap_or(0) as u16;
            let header = |name: &str| {
                r.get("headers")
                    .and_then(Value::as_object)
                    .and_then(|h| h.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)))
                    .and_then(|(_, v)| {
                        v.as_str()
                            .map(str::to_owned)
                            .or_else(|| v.as_number().map(ToString::to_string))
                    })
            };
            let retry_after = header("retry-after").and_then(|v| parse_retry_after(&v));
            let request_id = header(REQUEST_ID);
            emit(InnerAnswered {
                op,
                status,
                client_request_id: client_request_ids.get(&id).map(String::as_str),
                request_id: request_id.as_deref(),
            });
            if status == 429 {
                self.budget.throttled();
            }
            answers.insert(
                id,
                Raw {
                    status,
                    retry_after,
                    body: r.get("body").cloned().unwrap_or(Value::Null),
                },
            );
        }
        chunk
            .iter()
            .map(|(i, _)| {
                let result = match answers.remove(i) {
                    Some(raw) if raw.is_success() => Ok(raw),
                    Some(raw) => Err(raw.failure(op)),
                    None => Err(Failure::unavailable(format!(
                        "request {i} missing from the $batch answer"
                    ))),
                };
                (*i, result)
            })
            .collect()
    }

    /// Sends every item, sending again those whose fault [`Fault::is_retried`] allows for `op`
    /// (as they are, after the longest `Retry-After` or a back-off step) until they succeed or
    /// `max_attempts` sends are spent. For reads and membership changes; licence writes have
    /// their own loop. Results are in input order.
    ///
    /// [`Fault::is_retried`]: super::transport::Fault::is_retried
    pub(crate) async fn batch_with_retry(
        &self,
        op: Operation,
        inners: &[Inner],
    ) -> Vec<Result<Raw, TenantError>> {
        self.batch_with_retry_gated(op, inners, &Ungated).await
    }

    /// [`Transport::batch_with_retry`], asking `gate` before each `$batch` of writes is sent
    /// (a refused batch is not sent, nor sent again: its items fail
    /// [`TenantError::Withheld`]).
    pub(crate) async fn batch_with_retry_gated(
        &self,
        op: Operation,
        inners: &[Inner],
        gate: &dyn WriteGate,
    ) -> Vec<Result<Raw, TenantError>> {
        let mut results: Vec<Option<Result<Raw, Failure>>> = vec![None; inners.len()];
        let mut pending: Vec<usize> = (0..inners.len()).collect();
        // Sent, and answered in a way that may have been applied (a 5xx, a timeout).
        let mut maybe_applied = vec![false; inners.len()];
        let mut backoff = self.backoff();
        let max = self.max_attempts();
        for attempt in 1..=max {
            let round = self
                .batch_round_gated(
                    op,
                    pending.iter().map(|&i| (i, inners[i].clone())).collect(),
                    gate,
                )
                .await;
            pending.clear();
            for (i, mut r) in round {
                // A membership change sent again after an answer that may have been applied,
                // and now answered "already a member" / "not a member": the first one was.
                if maybe_applied[i]
                    && let Err(f) = &r
                    && matches!(
                        (op, &f.error),
                        (Operation::AddMember, TenantError::AlreadyMember(_))
                            | (Operation::RemoveMember, TenantError::NotMember(_))
                    )
                {
                    r = Ok(Raw::new(204, None, b""));
                }
                if let Err(f) = &r {
                    maybe_applied[i] |= matches!(f.fault, Fault::Unavailable(_));
                }
                if let Err(f) = &r
                    && f.fault.is_retried(op)
                    && attempt < max
                {
                    pending.push(i);
                }
                results[i] = Some(r);
            }
            if pending.is_empty() {
                break;
            }
            let failures: Vec<&Failure> = pending
                .iter()
                .filter_map(|&i| results[i].as_ref().and_then(|r| r.as_ref().err()))
                .collect();
            let wait = self.round_delay(failures.iter().map(|f| f.fault), &mut backoff);
            // The caller can get on with the answers that came (see `super::waits`): hand it
            // the rest to ask again after `wait`, rather than hold them all. Only when some
            // did come: a call that got nothing waits, as there is nothing to get on with.
            if super::waits::returns_early() && results.iter().any(|r| matches!(r, Some(Ok(_)))) {
                emit(BatchPostponed {
                    op,
                    errors: failures.iter().map(|f| &f.error),
                    wait,
                });
                for &i in &pending {
                    if let Some(Err(f)) = &mut results[i] {
                        f.error = TenantError::Postponed {
                            after: wait,
                            error: Box::new(f.error.clone()),
                        };
                    }
                }
                break;
            }
            emit(BatchRetrying {
                op,
                errors: failures.iter().map(|f| &f.error),
                wait,
            });
            tokio::time::sleep(wait).await;
        }
        results
            .into_iter()
            .map(|r| match r {
                Some(r) => r.map_err(|f| f.error),
                None => Err(TenantError::Transient("no answer".to_owned())),
            })
            .collect()
    }
}

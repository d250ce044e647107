//! JSON batching: up to 20 requests per `POST /$batch`, several batches in flight, every inner
//! answer handled on its own and results returned in input order.
use std::collections::HashMap;
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::{Operation, TenantError};
use super::graph::{GraphClient, count_retry, parse_retry_after, record};

/// Graph's limit of requests per `$batch`.
pub const MAX_BATCH_SIZE: usize = 20;

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

    fn json(&self, id: usize) -> Value {
        let mut r = json!({ "id": id.to_string(), "method": self.method, "url": self.url });
        if let Some(b) = &self.body {
            // Graph refuses an inner body without its Content-Type.
            r["headers"] = json!({ "Content-Type": "application/json" });
            r["body"] = b.clone();
        }
        r
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

impl GraphClient {
    fn chunk_size(&self, op: Operation) -> usize {
        let mut size = self.settings.batch_size.clamp(1, MAX_BATCH_SIZE);
        if op.is_write() && self.write_limited() {
            size = size.min(self.settings.write_burst.max(1) as usize);
        }
        size
    }

    /// Sends `items` once, in `$batch` chunks, several at a time. Each item's result is `Ok` for a
    /// 2xx answer and the mapped error otherwise (an envelope failure fails all of its items).
    pub(crate) async fn batch_round(
        &self,
        op: Operation,
        items: Vec<(usize, Inner)>,
    ) -> Vec<(usize, Result<Raw, TenantError>)> {
        let size = self.chunk_size(op);
        let concurrency = self.settings.batch_concurrency.max(1);
        // Owned chunks: borrowed items in the stream trip the compiler's Send inference.
        let mut chunks: Vec<Vec<(usize, Inner)>> = Vec::new();
        for item in items {
            match chunks.last_mut() {
                Some(c) if c.len() < size => c.push(item),
                _ => chunks.push(vec![item]),
            }
        }
        futures_util::stream::iter(chunks)
            .map(|chunk| self.send_batch(op, chunk))
            .buffer_unordered(concurrency)
            .flat_map(futures_util::stream::iter)
            .collect()
            .await
    }

    async fn send_batch(
        &self,
        op: Operation,
        chunk: Vec<(usize, Inner)>,
    ) -> Vec<(usize, Result<Raw, TenantError>)> {
        if op.is_write() {
            self.acquire_budget(chunk.len() as u32).await;
        }
        let body = json!({ "requests": chunk.iter().map(|(i, r)| r.json(*i)).collect::<Vec<_>>() });
        let url = format!("{}/$batch", self.root);
        let all = |e: TenantError| chunk.iter().map(|(i, _)| (*i, Err(e.clone()))).collect();
        let raw = match self
            .send(Operation::Batch, Method::POST, &url, Some(&body))
            .await
        {
            Ok(raw) if raw.is_success() => raw,
            Ok(raw) => return all(raw.error(Operation::Batch)),
            Err(e) => return all(e),
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
            let retry_after = r
                .get("headers")
                .and_then(Value::as_object)
                .and_then(|h| {
                    h.iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
                })
                .and_then(|(_, v)| {
                    v.as_str()
                        .map(str::to_owned)
                        .or_else(|| v.as_u64().map(|n| n.to_string()))
                })
                .and_then(|v| parse_retry_after(&v));
            record(op, status);
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
                    Some(raw) => Err(raw.error(op)),
                    None => Err(TenantError::Transient(format!(
                        "request {i} missing from the $batch answer"
                    ))),
                };
                (*i, result)
            })
            .collect()
    }

    /// Sends every item, retrying the transient failures of each (as they are) until they succeed
    /// or attempts run out. Results are in input order.
    pub(crate) async fn batch_with_retry(
        &self,
        op: Operation,
        inners: &[Inner],
    ) -> Vec<Result<Raw, TenantError>> {
        let mut results: Vec<Option<Result<Raw, TenantError>>> = vec![None; inners.len()];
        let mut pending: Vec<usize> = (0..inners.len()).collect();
        let mut backoff = self.backoff();
        let max = self.settings.max_attempts.max(1);
        for attempt in 1..=max {
            let round = self
                .batch_round(
                    op,
                    pending.iter().map(|&i| (i, inners[i].clone())).collect(),
                )
                .await;
            pending.clear();
            for (i, r) in round {
                if let Err(e) = &r
                    && e.is_transient()
                    && attempt < max
                {
                    count_retry(op, e);
                    pending.push(i);
                }
                results[i] = Some(r);
            }
            let wait = self.round_delay(
                pending
                    .iter()
                    .filter_map(|&i| results[i].as_ref().and_then(|r| r.as_ref().err())),
                &mut backoff,
            );
            if pending.is_empty() {
                break;
            }
            tracing::debug!(
                operation = op.as_str(),
                items = pending.len(),
                ?wait,
                "retrying batched requests"
            );
            tokio::time::sleep(wait).await;
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(TenantError::Transient("no answer".to_owned()))))
            .collect()
    }
}

//! What reached the simulator: counters tests and benchmarks read at `GET /_sim/stats`.
use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use super::events;
use super::throttle::Priority;

/// Entries kept in the recent-writes log.
pub const WRITE_LOG_CAPACITY: usize = 10_000;
/// Unix seconds kept in the per-second histograms.
pub const HISTOGRAM_SECONDS: usize = 3_600;

/// One write as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteLogEntry {
    /// Order of arrival (starts at 1, never reset).
    pub seq: u64,
    /// Arrival time, Unix milliseconds.
    pub unix_ms: u64,
    /// HTTP method.
    pub method: String,
    /// Route kind, e.g. `assign_license`, `add_member`.
    pub route: String,
    /// Ids named by the request (user, group).
    pub targets: Vec<String>,
    /// Status answered.
    pub status: u16,
    /// Whether the write changed the directory (also true for a 429 applied anyway).
    pub applied: bool,
    /// The request's body as received (what was written), when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<serde_json::Value>,
    /// The `request-id` the simulator answered with.
    #[serde(default)]
    pub request_id: String,
    /// The request's `client-request-id` (the `request-id` when it sent none), so that a
    /// client's log line can be matched to the write.
    #[serde(default)]
    pub client_request_id: String,
}

/// A snapshot of the counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatsSnapshot {
    /// Route kind -> status -> count. Inner requests of a `$batch` count under their own route;
    /// the envelope counts under `batch`. Dropped connections count with status `0`.
    pub requests: BTreeMap<String, BTreeMap<String, u64>>,
    /// `$batch` envelopes received (authenticated).
    pub batch_calls: u64,
    /// Inner requests of those envelopes.
    pub batch_inner_requests: u64,
    /// Writes that reached the throttling stage.
    pub writes_attempted: u64,
    /// Writes that changed the directory.
    pub writes_applied: u64,
    /// Requests answered with 429.
    pub throttled: u64,
    /// Writes answered with 429 that were applied anyway.
    pub throttled_writes_applied: u64,
    /// Writes (inner `$batch` ones included) by their `x-ms-throttle-priority`: `low`,
    /// `normal` (also any unknown value), `high`, and `none` when they sent none (an inner
    /// request without one inherits its `$batch`'s).
    #[serde(default)]
    pub writes_by_priority: BTreeMap<String, u64>,
    /// Unix second -> writes attempted in it.
    pub writes_attempted_per_second: BTreeMap<u64, u64>,
    /// Unix second -> writes applied in it.
    pub writes_applied_per_second: BTreeMap<u64, u64>,
    /// The most recent writes, oldest first.
    pub recent_writes: Vec<WriteLogEntry>,
}

impl StatsSnapshot {
    /// Requests of a route with a status.
    pub fn count(&self, route: &str, status: u16) -> u64 {
        self.requests
            .get(route)
            .and_then(|m| m.get(&status.to_string()))
            .copied()
            .unwrap_or(0)
    }

    /// Write requests sent with the priority `priority` (`low`, `normal`, `high`, `none`).
    pub fn writes_with_priority(&self, priority: &str) -> u64 {
        self.writes_by_priority.get(priority).copied().unwrap_or(0)
    }

    /// Requests of a route, any status.
    pub fn total(&self, route: &str) -> u64 {
        self.requests.get(route).map_or(0, |m| m.values().sum())
    }
}

/// The live counters.
#[derive(Debug, Default)]
pub struct Stats {
    requests: BTreeMap<&'static str, BTreeMap<u16, u64>>,
    batch_calls: u64,
    batch_inner_requests: u64,
    writes_attempted: u64,
    writes_applied: u64,
    throttled: u64,
    throttled_writes_applied: u64,
    writes_by_priority: BTreeMap<&'static str, u64>,
    attempted_per_second: BTreeMap<u64, u64>,
    applied_per_second: BTreeMap<u64, u64>,
    log: VecDeque<WriteLogEntry>,
    seq: u64,
}

fn bump(hist: &mut BTreeMap<u64, u64>, second: u64) {
    *hist.entry(second).or_default() += 1;
    while hist.len() > HISTOGRAM_SECONDS {
        hist.pop_first();
    }
}

impl Stats {
    /// Counts a request of a route with its status.
    pub fn request(&mut self, route: &'static str, status: u16) {
        *self
            .requests
            .entry(route)
            .or_default()
            .entry(status)
            .or_default() += 1;
        if status == 429 {
            self.throttled += 1;
        }
    }

    /// Counts a `$batch` envelope with its inner request count.
    pub fn batch(&mut self, inner: usize) {
        self.batch_calls += 1;
        self.batch_inner_requests += inner as u64;
    }

    /// Counts a write reaching the throttling stage.
    pub fn write_attempted(&mut self, unix_ms: u64) {
        self.writes_attempted += 1;
        bump(&mut self.attempted_per_second, unix_ms / 1000);
    }

    /// Counts a write request's priority.
    pub fn write_priority(&mut self, priority: Priority) {
        *self
            .writes_by_priority
            .entry(priority.as_str())
            .or_default() += 1;
    }

    /// Logs a finished write.
    pub fn write_finished(&mut self, mut entry: WriteLogEntry) {
        if entry.applied {
            self.writes_applied += 1;
            events::write_applied();
            bump(&mut self.applied_per_second, entry.unix_ms / 1000);
            if entry.status == 429 {
                self.throttled_writes_applied += 1;
            }
        }
        self.seq += 1;
        entry.seq = self.seq;
        self.log.push_back(entry);
        if self.log.len() > WRITE_LOG_CAPACITY {
            self.log.pop_front();
        }
    }

    /// Clears every counter (the sequence number keeps increasing).
    pub fn reset(&mut self) {
        let seq = self.seq;
        *self = Self::default();
        self.seq = seq;
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            requests: self
                .requests
                .iter()
                .map(|(r, m)| {
                    (
                        (*r).to_owned(),
                        m.iter().map(|(s, c)| (s.to_string(), *c)).collect(),
                    )
                })
                .collect(),
            batch_calls: self.batch_calls,
            batch_inner_requests: self.batch_inner_requests,
            writes_attempted: self.writes_attempted,
            writes_applied: self.writes_applied,
            throttled: self.throttled,
            throttled_writes_applied: self.throttled_writes_applied,
            writes_by_priority: [
                Priority::Low,
                Priority::Normal,
                Priority::High,
                Priority::None,
            ]
            .into_iter()
            .map(|p| {
                let n = self.writes_by_priority.get(p.as_str()).copied();
                (p.as_str().to_owned(), n.unwrap_or(0))
            })
            .collect(),
            writes_attempted_per_second: self.attempted_per_second.clone(),
            writes_applied_per_second: self.applied_per_second.clone(),
            recent_writes: self.log.iter().cloned().collect(),
        }
    }
}

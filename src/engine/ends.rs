//! Telling running chunks that their job has ended, on every replica at once.
//!
//! Ending a job (an operator's cancel, a newer policy version) `NOTIFY`s
//! [`work::JOB_ENDED_CHANNEL`] with the job's id, in the transaction that ends it. Each replica
//! listens, and cancels the tokens of its running chunks of that job: an applier waiting (a
//! pause between attempts, a read) stops at once. The write gate ([`super::gate`]) is what
//! guarantees that no write leaves after the end; this only makes the stop prompt. A
//! notification missed while the listener reconnects is covered by the gate.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::work;

/// The running chunks of this replica, by job.
#[derive(Debug, Default)]
pub struct JobEnds {
    running: Mutex<HashMap<Uuid, Vec<(u64, CancellationToken)>>>,
    next: AtomicU64,
}

/// Stops watching when dropped.
pub struct Watch {
    ends: Arc<JobEnds>,
    job_id: Uuid,
    id: u64,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut running = self.ends.running.lock();
        if let Some(tokens) = running.get_mut(&self.job_id) {
            tokens.retain(|(id, _)| *id != self.id);
            if tokens.is_empty() {
                running.remove(&self.job_id);
            }
        }
    }
}

impl JobEnds {
    /// Cancel `token` when `job_id` ends, until the returned watch is dropped.
    pub fn watch(self: &Arc<Self>, job_id: Uuid, token: CancellationToken) -> Watch {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.running
            .lock()
            .entry(job_id)
            .or_default()
            .push((id, token));
        Watch {
            ends: self.clone(),
            job_id,
            id,
        }
    }

    /// `job_id` has ended: cancel its running chunks here.
    pub fn ended(&self, job_id: Uuid) {
        if let Some(tokens) = self.running.lock().get(&job_id) {
            tracing::info!(%job_id, chunks = tokens.len(), "job ended; stopping its running chunks");
            for (_, token) in tokens {
                token.cancel();
            }
        }
    }

    /// Listen for job ends until `shutdown`, reconnecting after a database outage.
    pub async fn listen(self: Arc<Self>, pool: PgPool, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            let mut listener = match work::job_end_listener(&pool).await {
                Ok(listener) => listener,
                Err(error) => {
                    tracing::debug!(%error, "cannot listen for job ends yet; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let notification = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    n = listener.recv() => n,
                };
                match notification {
                    Ok(n) => {
                        if let Ok(job_id) = n.payload().parse::<Uuid>() {
                            self.ended(job_id);
                        }
                    }
                    // The connection broke: listen again on a new one.
                    Err(_) => break,
                }
            }
        }
    }
}

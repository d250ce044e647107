//! Write gates: the engine's say over every batch of tenant writes a chunk sends.
//!
//! Right before a `$batch` of writes goes out (after its write budget is spent), the tenant
//! client asks the chunk's gate ([`crate::tenant::WriteGate`]). The gate admits the batch only
//! if the chunk's token stands (its job has not ended: every replica is told at once, see
//! `ends.rs`; the worker is not stopping; the lease holds) and the database agrees that the
//! chunk is still this worker's and its job still runs; in the same statement it records that
//! the items' writes are about to be made ([`work::intend_writes`]). The database is asked at
//! the first batch of a call (for every write of the call) and again whenever its last answer
//! is older than half a second. So:
//!
//! - an ended job stops writing within one `$batch` per running chunk (those already sent);
//! - a write that reached the tenant is reported `changed` even when its outcome could not be
//!   recorded (a crash, a database outage): the re-read that finds the item compliant finds
//!   the intent too;
//! - no write is made while the database cannot record it: the gate refuses, and the chunk is
//!   given back.
//!
//! A refusal also cancels the chunk's token, so the applier stops at once (no pause, no
//! further read) and the executor settles the chunk by its fate ([`work::ChunkFate`]).

use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::PgPool;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::store::work::{self, ClaimedChunk};
use crate::tenant::WriteGate;

/// A chunk's writes, as its applier sees them.
pub struct ChunkWrites {
    pool: PgPool,
    chunk: ClaimedChunk,
    owner: String,
    cancel: CancellationToken,
}

impl ChunkWrites {
    pub(crate) fn new(
        pool: PgPool,
        chunk: ClaimedChunk,
        owner: String,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            pool,
            chunk,
            owner,
            cancel,
        }
    }

    /// The gate for one call whose writes, in order, are those of the items `seqs`.
    pub fn gate(&self, seqs: Vec<i32>) -> ItemGate<'_> {
        self.gate_with_before(seqs, Vec::new())
    }

    /// A gate that also records, with the writes' intent, each written item's state before
    /// the write (`(seq, lower-case address, image)`): what a revert restores
    /// ([`crate::store::work::revert`]).
    pub fn gate_with_before(
        &self,
        seqs: Vec<i32>,
        before: Vec<(i32, String, serde_json::Value)>,
    ) -> ItemGate<'_> {
        ItemGate {
            writes: self,
            seqs,
            before,
            confirmed: Mutex::const_new(None),
        }
    }

    /// Whether the writes of `seqs` may be sent now (and they are recorded as intended).
    pub async fn admit(&self, seqs: &[i32], before: &[(i32, String, serde_json::Value)]) -> bool {
        if self.cancel.is_cancelled() {
            return false;
        }
        match work::intend_writes(&self.pool, &self.chunk, &self.owner, seqs, before).await {
            Ok(true) => true,
            Ok(false) => {
                tracing::info!(
                    job_id = %self.chunk.job_id,
                    chunk = self.chunk.chunk,
                    "writes withheld: the job has ended or the chunk is no longer ours"
                );
                self.cancel.cancel();
                false
            }
            Err(error) => {
                tracing::warn!(
                    %error,
                    job_id = %self.chunk.job_id,
                    chunk = self.chunk.chunk,
                    "writes withheld: their intent cannot be recorded"
                );
                self.cancel.cancel();
                false
            }
        }
    }
}

/// How long the database's word that the chunk and its job still run is trusted for the next
/// batches of the same call. The job's end also cancels the chunk's token at once (`NOTIFY`),
/// so this only bounds how late a missed notification is noticed. Against real Graph (about 20
/// writes a second) every batch is asked anyway; against a fast tenant a round of 250 writes
/// costs one statement, not thirteen.
const TRUSTED_FOR: Duration = Duration::from_millis(500);

/// The gate of one tenant call (see [`ChunkWrites::gate`]). Its first batch records the
/// intent of every write of the call in one statement; later batches are admitted on that
/// answer for `TRUSTED_FOR` while the chunk's token stands, then asked again.
pub struct ItemGate<'a> {
    writes: &'a ChunkWrites,
    seqs: Vec<i32>,
    /// Before-images of the written items, recorded with their intent.
    before: Vec<(i32, String, serde_json::Value)>,
    /// When the database last admitted writes of this call.
    confirmed: Mutex<Option<Instant>>,
}

#[async_trait]
impl WriteGate for ItemGate<'_> {
    async fn admit(&self, _positions: &[usize]) -> bool {
        if self.writes.cancel.is_cancelled() {
            return false;
        }
        // Held while the database is asked: the call's other batches wait for its answer
        // instead of asking too.
        let mut confirmed = self.confirmed.lock().await;
        if self.writes.cancel.is_cancelled() {
            return false;
        }
        let admitted = match *confirmed {
            Some(at) if at.elapsed() < TRUSTED_FOR => return true,
            // Asked again: the intents are recorded already.
            Some(_) => self.writes.admit(&[], &[]).await,
            // First: the intent of every write of the call.
            None => self.writes.admit(&self.seqs, &self.before).await,
        };
        if admitted {
            *confirmed = Some(Instant::now());
        }
        admitted
    }
}

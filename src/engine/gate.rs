//! Write gates: the engine's say over every batch of tenant writes a chunk sends.
//!
//! Right before a `$batch` of writes goes out (after its write budget is spent), the tenant
//! client asks the chunk's gate ([`crate::tenant::WriteGate`]). The gate admits the batch only
//! if the chunk is still this worker's, its job has not ended (cancelled, superseded) and the
//! worker is not stopping, and it records, in the same statement, that the items' writes are
//! about to be made ([`work::intend_writes`]). So:
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

use async_trait::async_trait;
use sqlx::PgPool;
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
        ItemGate { writes: self, seqs }
    }

    /// Whether the writes of `seqs` may be sent now (and they are recorded as intended).
    pub async fn admit(&self, seqs: &[i32]) -> bool {
        if self.cancel.is_cancelled() {
            return false;
        }
        match work::intend_writes(&self.pool, &self.chunk, &self.owner, seqs).await {
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

/// The gate of one tenant call (see [`ChunkWrites::gate`]).
pub struct ItemGate<'a> {
    writes: &'a ChunkWrites,
    seqs: Vec<i32>,
}

#[async_trait]
impl WriteGate for ItemGate<'_> {
    async fn admit(&self, positions: &[usize]) -> bool {
        let seqs: Vec<i32> = positions.iter().map(|&p| self.seqs[p]).collect();
        self.writes.admit(&seqs).await
    }
}

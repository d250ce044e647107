//! Applying: claim a chunk under a lease, apply its items round by round, record outcomes,
//! and complete the job after its last chunk.

use crate::tenant::priority::{self, Priority};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::access::AccessGuard;
use super::events::{
    ChunkDeferred, ChunkEndedEarly, ChunkFinished, ChunkGivenBack, ChunkHeld, ChunkReclaimed,
    ItemsRecorded, JobCompleted, LeaseLost,
};
use super::gate::ChunkWrites;
use super::kind::{ApplyContext, Defer, ItemOutcome, ItemResult, JobHeader, WorkItem};
use super::registry::AnyKind;
use super::{Engine, EngineError, Waiter};
use crate::domain::{FailureCode, JobType};
use crate::store::work::{self, ChunkFate, ClaimedChunk};
use crate::telemetry::emit;
use crate::tenant::Tenant;

/// How long a chunk given back after an error waits before it may be claimed again.
const RETRY_AFTER_ERROR: chrono::Duration = chrono::Duration::seconds(5);

/// What claiming a chunk came to.
enum Next {
    /// Nothing to claim.
    Idle,
    /// A chunk was worked on and needs nothing more (released, or already ended).
    Done,
    /// A chunk was applied; its last outcomes are still to be recorded.
    Tail(Tail),
}

/// How a chunk's rounds ended.
enum Rounds {
    /// Every item of the last round is settled: its results, still to be recorded.
    Settled(Vec<ItemResult>),
    /// Items were left to come back to after this wait ([`Defer`]); the rest is recorded.
    Deferred(Duration),
    /// Nothing left to return: cancelled, or nothing was open.
    Open,
}

/// A chunk whose items are all settled in the tenant, with the last round's outcomes still
/// to record: they and the chunk's end commit together, after the lease renewal has
/// stopped (the lease has most of its time left), while the executor takes the next chunk.
struct Tail {
    chunk: ClaimedChunk,
    job_type: JobType,
    results: Vec<ItemResult>,
    /// When the chunk's work began (for the chunk-duration histogram).
    started: Instant,
}

impl Engine {
    /// Claim and apply chunks until `shutdown`; with `only_small`, only chunks of small jobs
    /// (this replica's executors kept for them, so that a small job never waits for a large
    /// job's chunk to end here either).
    pub(super) async fn executor_loop(&self, shutdown: CancellationToken, only_small: bool) {
        let mut planned: Waiter = self.jobs_planned.waiter();
        let mut tail: Option<Tail> = None;
        while !shutdown.is_cancelled() {
            // The previous chunk's last outcomes are recorded while the next chunk is claimed
            // and applied: a chunk's own bookkeeping stays off the tenant's path.
            let had_tail = tail.is_some();
            let (_, next) = tokio::join!(
                self.settle(tail.take()),
                self.run_next_chunk(&shutdown, only_small)
            );
            match next {
                Ok(Next::Tail(next)) => tail = Some(next),
                Ok(Next::Done) => {}
                // The cap may have counted the chunk that was being settled: claim again.
                Ok(Next::Idle) if had_tail => {}
                Ok(Next::Idle) => self.idle_until_nudged(&shutdown, &mut planned).await,
                Err(error) => {
                    tracing::warn!(%error, "chunk failed; will retry");
                    self.idle(&shutdown, Duration::from_secs(1)).await;
                }
            }
        }
        self.settle(tail.take()).await;
    }

    /// Record a chunk's last outcomes and end it (see [`Tail`]); then complete the job if
    /// that was its last chunk. On failure the chunk is given back.
    async fn settle(&self, tail: Option<Tail>) {
        let Some(tail) = tail else { return };
        let settled = async {
            let recorded = self
                .record(&tail.chunk, tail.job_type, &tail.results, true)
                .await?;
            if recorded.finished {
                emit(ChunkFinished {
                    job_type: tail.job_type,
                    took: tail.started.elapsed(),
                });
                if !recorded.others_pending
                    && work::all_chunks_done(&self.pool, tail.chunk.job_id).await?
                {
                    self.complete(tail.chunk.job_id).await?;
                }
            }
            Ok::<_, EngineError>(())
        }
        .instrument(
            tracing::info_span!("chunk", job_id = %tail.chunk.job_id, chunk = tail.chunk.chunk),
        )
        .await;
        if let Err(error) = settled {
            self.give_back(&tail.chunk, &error).await;
        }
    }

    /// Give a chunk back after an error, claimable again after a pause, rather than leave
    /// it to its lease.
    async fn give_back(&self, chunk: &ClaimedChunk, error: &EngineError) {
        let retry_at = self.clock.now() + RETRY_AFTER_ERROR;
        let _ = work::release_chunk(&self.pool, chunk, &self.owner, retry_at).await;
        emit(ChunkGivenBack {
            job_id: chunk.job_id,
            chunk: chunk.chunk,
            error,
        });
    }

    /// Claim and process one chunk, but for its last round's bookkeeping (returned as its
    /// [`Tail`], for [`Engine::settle`]).
    async fn run_next_chunk(
        &self,
        shutdown: &CancellationToken,
        only_small: bool,
    ) -> Result<Next, EngineError> {
        let now = self.clock.now();
        let limits = work::ClaimLimits {
            now,
            window_open: self.off_peak.is_open(now),
            max_running: self.settings.max_running_chunks.get(),
            small_job_reserve: self.settings.small_job_reserve,
            small_job_items: self.settings.chunk_size.get(),
            only_small,
        };
        let Some(chunk) = work::claim_chunk(
            &self.pool,
            &self.owner,
            self.settings.lease_seconds.get(),
            limits,
        )
        .await?
        else {
            return Ok(Next::Idle);
        };
        if chunk.reclaimed {
            emit(ChunkReclaimed {
                job_id: chunk.job_id,
                chunk: chunk.chunk,
            });
        }
        let span = tracing::info_span!("chunk", job_id = %chunk.job_id, chunk = chunk.chunk);
        let result = self.process_chunk(&chunk, shutdown).instrument(span).await;
        if let Err(error) = &result {
            self.give_back(&chunk, error).await;
        }
        result.map(|tail| tail.map_or(Next::Done, Next::Tail))
    }

    async fn process_chunk(
        &self,
        chunk: &ClaimedChunk,
        shutdown: &CancellationToken,
    ) -> Result<Option<Tail>, EngineError> {
        let started = Instant::now();
        let (job, items, intended) = tokio::try_join!(
            work::chunk_job(&self.pool, chunk.job_id),
            work::open_items(&self.pool, chunk),
            work::intended_items(&self.pool, chunk)
        )?;
        let job_type = JobType::from_stored(&job.job_type)
            .ok_or_else(|| EngineError::Corrupt(format!("unknown job type {}", job.job_type)))?;
        let kind = self
            .kinds
            .get(job_type)
            .cloned()
            .ok_or_else(|| EngineError::Corrupt(format!("no applier for {job_type}")))?;
        let header = JobHeader {
            id: chunk.job_id,
            job_type,
            dry_run: job.dry_run,
            others_waiting: job.others_waiting,
        };
        if job.ended && intended.is_empty() {
            // Taken over from a worker that died after its job ended: nothing to apply.
            self.end_early(chunk).await?;
            return Ok(None);
        }
        let plan = job.plan.unwrap_or_default();

        // The lease is renewed in the background; losing it, the job's end, or shutdown
        // cancels the work at the next safe point (at the latest, the next write batch: the
        // gate refuses it).
        let cancel = shutdown.child_token();
        let _watch = self.job_ends.watch(chunk.job_id, cancel.clone());
        let writes = ChunkWrites::new(
            self.pool.clone(),
            chunk.clone(),
            self.owner.clone(),
            cancel.clone(),
        );
        // Renewed until the chunk's work is over, not only until it is cancelled: a cancelled
        // chunk still reads back its uncertain writes before it ends (`engine::reconcile`).
        let worked = CancellationToken::new();
        let renewal = self.renew_lease_until(chunk, &cancel, &worked);
        // The applier's tenant: a loss of access stops the chunk (see `engine::access`).
        let guard = Arc::new(AccessGuard::new(
            self.tenant.clone(),
            self.access.clone(),
            cancel.clone(),
        ));
        let tenant: Arc<dyn Tenant> = guard.clone();
        let defer = Defer::default();
        let items: Vec<WorkItem<serde_json::Value>> = items
            .into_iter()
            .map(|(seq, key, spec)| WorkItem { seq, key, spec })
            .collect();
        // An ended job's chunk is applied cancelled from the start: nothing is written, and
        // the writes an earlier claim may have made are read back (`engine::reconcile`).
        if job.ended {
            cancel.cancel();
        }
        let ctx = ApplyContext {
            pool: &self.pool,
            tenant: &tenant,
            settings: &self.settings,
            clock: self.clock.as_ref(),
            retry: &self.retry,
            job: &header,
            plan: &plan,
            cancel: &cancel,
            stop: shutdown,
            intended: &intended,
            writes: &writes,
            defer: &defer,
            write_turns: &self.write_turns,
            access: &guard,
        };
        // Bulk off-peak work, and work of a low `jobs.priority` (a sweep), lets Graph throttle
        // it before a single ticket's (see `tenant::priority`).
        let priority = if job.off_peak || job.low_priority {
            Priority::Low
        } else {
            Priority::Normal
        };
        if job.ended {
            let settled = priority::scope(priority, self.settle_ended(chunk, items, &kind, &ctx));
            let settled = settled.await;
            worked.cancel();
            let _ = renewal.await;
            settled?;
            return Ok(None);
        }
        let result = priority::scope(priority, self.apply_rounds(chunk, items, &kind, &ctx)).await;
        let interrupted = cancel.is_cancelled();
        cancel.cancel();
        worked.cancel();
        let _ = renewal.await;
        if let Some(loss) = guard.tripped() {
            if let Err(error) = &result {
                tracing::debug!(%error, "chunk stopped by the loss of access");
            }
            self.hold_for_access(chunk, &loss).await?;
            return Ok(None);
        }
        if job.held && result.is_ok() {
            // Access is back for this job: its detail no longer says it is held.
            work::clear_hold(&self.pool, chunk.job_id).await?;
        }
        let results = match result? {
            Rounds::Settled(results) => results,
            // Some items wait for the tenant to show their writes: hand the chunk back, to be
            // claimed again (by any replica) after the wait.
            Rounds::Deferred(wait) => {
                work::defer_chunk(&self.pool, chunk, &self.owner, wait).await?;
                emit(ChunkDeferred {
                    job_id: chunk.job_id,
                    chunk: chunk.chunk,
                    wait,
                });
                return Ok(None);
            }
            // What was done is recorded; the rest goes by where the chunk stands.
            Rounds::Open if interrupted => {
                self.after_interruption(chunk, shutdown).await?;
                return Ok(None);
            }
            // Nothing was left to apply (a chunk taken over after its last round was
            // recorded): it only needs ending, like any other.
            Rounds::Open => Vec::new(),
        };
        Ok(Some(Tail {
            chunk: chunk.clone(),
            job_type,
            results,
            started,
        }))
    }

    /// A chunk whose rounds were interrupted, its results recorded: settled by where it
    /// stands ([`ChunkFate`]).
    async fn after_interruption(
        &self,
        chunk: &ClaimedChunk,
        shutdown: &CancellationToken,
    ) -> Result<(), EngineError> {
        match work::chunk_fate(&self.pool, chunk, &self.owner).await? {
            ChunkFate::Lost => {}
            ChunkFate::JobEnded => self.end_early(chunk).await?,
            // Stopping (or the database refused a write's intent): hand it back now.
            ChunkFate::Held => {
                let not_before = if shutdown.is_cancelled() {
                    self.clock.now()
                } else {
                    self.clock.now() + RETRY_AFTER_ERROR
                };
                work::release_chunk(&self.pool, chunk, &self.owner, not_before).await?;
            }
        }
        Ok(())
    }

    /// A chunk of a job that ended after an earlier claim's worker died or stopped: nothing
    /// more is written; of its open items, those whose writes that worker may have made
    /// (intents recorded) are read back and reported ([`super::reconcile`]), then the chunk
    /// ends, its other items skipped.
    async fn settle_ended(
        &self,
        chunk: &ClaimedChunk,
        items: Vec<WorkItem<serde_json::Value>>,
        kind: &Arc<dyn AnyKind>,
        ctx: &ApplyContext<'_, serde_json::Value>,
    ) -> Result<(), EngineError> {
        self.read_back_intended(chunk, items, kind, ctx).await?;
        self.end_early(chunk).await
    }

    /// Of `items`, under a cancelled `ctx`, read back those whose writes an earlier claim may
    /// have made ([`ApplyContext::intended`]) and record what reached the tenant.
    async fn read_back_intended(
        &self,
        chunk: &ClaimedChunk,
        items: impl IntoIterator<Item = WorkItem<serde_json::Value>>,
        kind: &Arc<dyn AnyKind>,
        ctx: &ApplyContext<'_, serde_json::Value>,
    ) -> Result<(), EngineError> {
        let intended: Vec<_> = items
            .into_iter()
            .filter(|i| ctx.intended.contains_key(&i.seq))
            .collect();
        if intended.is_empty() {
            return Ok(());
        }
        let results = ctx.access.keep(kind.apply(ctx, &intended).await?);
        if !results.is_empty() {
            self.record(chunk, ctx.job.job_type, &results, false)
                .await?;
        }
        Ok(())
    }

    /// The tenant refused the service's access: a fault of the service, not of the items.
    /// What was done is recorded; the rest waits for access, the job held.
    async fn hold_for_access(
        &self,
        chunk: &ClaimedChunk,
        loss: &crate::tenant::AccessLoss,
    ) -> Result<(), EngineError> {
        match work::chunk_fate(&self.pool, chunk, &self.owner).await? {
            ChunkFate::Lost => {}
            ChunkFate::JobEnded => self.end_early(chunk).await?,
            ChunkFate::Held => {
                let wait = self.settings.access_retry();
                work::hold_chunk(&self.pool, chunk, &self.owner, wait, loss).await?;
                emit(ChunkHeld {
                    job_id: chunk.job_id,
                    chunk: chunk.chunk,
                    loss,
                    wait,
                });
            }
        }
        Ok(())
    }

    /// Renew `chunk`'s lease every third of it until `until`; cancel `cancel` when it is lost.
    fn renew_lease_until(
        &self,
        chunk: &ClaimedChunk,
        cancel: &CancellationToken,
        until: &CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let pool = self.pool.clone();
        let chunk = chunk.clone();
        let owner = self.owner.clone();
        let lease = self.settings.lease_seconds.get();
        let cancel = cancel.clone();
        let until = until.clone();
        tokio::spawn(async move {
            let every = Duration::from_millis((lease * 1000 / 3).max(100));
            loop {
                tokio::select! {
                    _ = until.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                match work::renew_lease(&pool, &chunk, &owner, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        emit(LeaseLost {
                            job_id: chunk.job_id,
                            chunk: chunk.chunk,
                        });
                        cancel.cancel();
                        return;
                    }
                    Err(error) => {
                        tracing::warn!(%error, job_id = %chunk.job_id, chunk = chunk.chunk, "lease renewal failed; retrying")
                    }
                }
            }
        })
    }

    /// End a held chunk of an ended job (its open items skipped with the job's code), and
    /// complete the job if that was its last running chunk.
    async fn end_early(&self, chunk: &ClaimedChunk) -> Result<(), EngineError> {
        if work::end_chunk_early(&self.pool, chunk, &self.owner).await? {
            emit(ChunkEndedEarly {
                job_id: chunk.job_id,
                chunk: chunk.chunk,
            });
            if work::all_chunks_done(&self.pool, chunk.job_id).await? {
                self.complete(chunk.job_id).await?;
            }
        }
        Ok(())
    }

    /// Complete the job if every chunk is done (once, whoever asks).
    pub(super) async fn complete(&self, job_id: uuid::Uuid) -> Result<(), EngineError> {
        if let Some((job_type, outcome, counts)) =
            work::complete_if_done(&self.pool, job_id).await?
        {
            emit(JobCompleted {
                job_id,
                job_type,
                outcome,
                counts: &counts,
                failures: 0,
            });
        }
        Ok(())
    }

    /// Apply the chunk's open items round by round, recording outcomes after each round but
    /// the last: when every item of that one is settled, its results are returned instead,
    /// to be recorded together with the chunk's end ([`Engine::settle`]). A round whose
    /// applier left items for later ([`Defer`]) has its other outcomes recorded, and the
    /// chunk is handed back once every round has run.
    async fn apply_rounds(
        &self,
        chunk: &ClaimedChunk,
        items: Vec<WorkItem<serde_json::Value>>,
        kind: &Arc<dyn AnyKind>,
        ctx: &ApplyContext<'_, serde_json::Value>,
    ) -> Result<Rounds, EngineError> {
        let rounds: Vec<&[WorkItem<serde_json::Value>]> = items
            .chunks(self.settings.round_size.get() as usize)
            .collect();
        for (i, round) in rounds.iter().enumerate() {
            if ctx.cancel.is_cancelled() {
                // Ended mid-way: of the rounds not reached, the items whose writes an earlier
                // claim may have made are read back and reported (`engine::reconcile`).
                if !ctx.stop.is_cancelled() {
                    let rest = rounds[i..].iter().flat_map(|r| r.iter()).cloned();
                    self.read_back_intended(chunk, rest, kind, ctx).await?;
                }
                break;
            }
            // After a loss of access, the results it caused are dropped (`engine::access`).
            let results = ctx.access.keep(kind.apply(ctx, round).await?);
            let settled = results.len() == round.len();
            if i + 1 == rounds.len()
                && settled
                && ctx.defer.asked().is_none()
                && !ctx.cancel.is_cancelled()
            {
                return Ok(Rounds::Settled(results));
            }
            if !results.is_empty() {
                self.record(chunk, ctx.job.job_type, &results, false)
                    .await?;
            }
            if !settled && !ctx.cancel.is_cancelled() && ctx.defer.asked().is_none() {
                return Err(EngineError::Corrupt(format!(
                    "applier settled {} of {} items",
                    results.len(),
                    round.len()
                )));
            }
        }
        match ctx.defer.asked() {
            Some(wait) if !ctx.cancel.is_cancelled() => Ok(Rounds::Deferred(wait)),
            _ => Ok(Rounds::Open),
        }
    }

    /// Record a round's outcomes (and, when `finish`, end the chunk in the same commit).
    async fn record(
        &self,
        chunk: &ClaimedChunk,
        job_type: JobType,
        results: &[ItemResult],
        finish: bool,
    ) -> Result<work::Recorded, EngineError> {
        let seqs: Vec<i32> = results.iter().map(|r| r.seq).collect();
        let outcomes: Vec<&str> = results.iter().map(|r| r.outcome.as_str()).collect();
        // A failed item always has a code; a skipped one keeps its reason's code when it has
        // one (job.completed lists both in `failures`); other outcomes have none.
        let codes: Vec<Option<&str>> = results
            .iter()
            .map(|r| match r.outcome {
                ItemOutcome::Failed => Some(r.code.unwrap_or(FailureCode::TenantRejected).as_str()),
                ItemOutcome::Skipped => r.code.map(FailureCode::as_str),
                _ => None,
            })
            .collect();
        let details: Vec<Option<String>> = results.iter().map(|r| r.detail.clone()).collect();
        let recorded = work::record_outcomes(
            &self.pool,
            chunk,
            &self.owner,
            work::Outcomes {
                seqs: &seqs,
                outcomes: &outcomes,
                codes: &codes,
                details: &details,
            },
            finish,
        )
        .await?;
        if recorded.items > 0 {
            emit(ItemsRecorded {
                job_type,
                results,
                promoted: recorded.promoted,
            });
        }
        Ok(recorded)
    }
}

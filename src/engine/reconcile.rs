//! The per-item state machine every writing applier runs: read, compare, gated write (its
//! intent recorded), read back, send again, give up; and what an item reports when its chunk
//! is cancelled, superseded, stopped, or taken over after a crash. In one place, so that a
//! fix made here holds for every kind (issue 28: the licence loop existed three times, and a
//! cancelled revert reported none of the writes it had made).
//!
//! A kind supplies only what is its own ([`Reconcile`]): how to read its items' state in the
//! tenant, how to compare that state with what it wants, and how to write a change. The
//! machine owns the rest, under the one retry policy of [`super::retry`]:
//!
//! ```text
//!            ┌──────────── read fails (retryable) ─────────────┐
//!            ▼                                                 │
//!   ┌──── Write ──read──► compare ──holds──► AlreadyCompliant / Changed (if written)
//!   │        ▲               │
//!   │        │               └─differs──► gated write ──accepted──► Verify{certain}
//!   │        │                                  │ 5xx/timeout ──────► Verify{uncertain}
//!   │        │                                  │ refused ──────────► Failed(code)
//!   │        │                                  └ throttled ────────► Write, after Retry-After
//!   │        └── Verify{uncertain} past resend_after: send again (at most item_attempts)
//!   └─────────── Verify{certain} past verify_within: verification_failed
//! ```
//!
//! - **Cancel** (the job ended, was superseded or refused, or the chunk's lease was lost):
//!   no new write is sent; an item whose write Graph accepted reports `changed`; one whose
//!   write may have been applied (a 5xx, a timeout, a write withheld at the cancel, or one an
//!   earlier claim recorded the intent of: [`ApplyContext::intended`]) is read back until the
//!   tenant shows it (`changed`) or its window passes; the rest is left without a result (the
//!   executor records it `skipped`). A chunk that no worker held when its job ended is
//!   reopened for this read-back (`store::work::end_early_in`).
//! - **Stop** (the worker shuts down, or is killed): a call in flight is abandoned and nothing
//!   more is reported; the writes' intents are recorded ([`super::gate`]), so the chunk's next
//!   worker reads the items back and reports what reached the tenant as this job's changes.
//! - **Steps**: a kind whose items take several writes, each to be shown before the next
//!   (an admin role's removals, then its additions), numbers them ([`Reconcile::step`]); a
//!   read that calls for a later step shows the last write took effect, and the next is sent.
//! - **Stragglers**: items that only wait for a write to show in reads (Entra ID replicates
//!   asynchronously) are handed back ([`super::kind::Defer`]) instead of holding an executor.

use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;

use super::EngineError;
use super::error::failure_code;
use super::kind::{ApplyContext, ItemOutcome, ItemResult};
use super::retry::ItemRetry;
use crate::tenant::{TenantError, WriteGate};

/// The states of the items read, one per item asked for, in order.
pub type Reads<S> = Result<Vec<Result<S, TenantError>>, EngineError>;

/// What a kind supplies to the machine. Items are named by their index in the chunk.
#[async_trait]
pub trait Reconcile: Send {
    /// An item's state as read from the tenant.
    type State: Send;
    /// A write that brings an item to what it wants.
    type Change: Clone + Send + Sync;

    /// Reads the items `which`. A failed read of one item is its own answer; a read that
    /// failed while others were answered may come back [`TenantError::Postponed`].
    async fn read(&mut self, which: &[usize]) -> Reads<Self::State>;

    /// Compares item `i`'s state with what it wants. `fresh`: nothing was written for it in
    /// this claim yet (a kind may then trust a write recorded by an earlier claim or job).
    async fn compare(&mut self, i: usize, state: Self::State, fresh: bool)
    -> Compare<Self::Change>;

    /// Sends `changes` through `gate`; one answer per change, in order. A change made of
    /// several writes answers `Ok` when those sent were accepted and the rest withheld (the
    /// chunk is stopping), and a failure otherwise.
    async fn write(
        &mut self,
        changes: &[Self::Change],
        gate: &(dyn WriteGate + Sync),
    ) -> Result<Vec<Result<(), TenantError>>, EngineError>;

    /// The step of a reconciliation a change is (`0` unless a kind's items take several,
    /// each shown before the next is written: an admin role's removals, then its additions).
    /// A read calling for a later step than the last write shows that write took effect.
    fn step(&self, _change: &Self::Change) -> u8 {
        0
    }

    /// Whether item `i`'s state (read after its job ended) shows writes of this job: it then
    /// reports `changed`. By default, whether it holds what it wants; a kind whose change is
    /// made of several writes also counts a part of it.
    async fn shows_writes(&mut self, i: usize, state: Self::State) -> bool {
        matches!(self.compare(i, state, false).await, Compare::Holds)
    }

    /// A refused write of item `i` that ends it otherwise than with the error's code (a
    /// licence a group assigns, say); `None` lets the machine decide.
    async fn refused(&mut self, _i: usize, _error: &TenantError) -> Option<ItemResult> {
        None
    }

    /// Whether a refusal may come from a read that was stale (the write was planned from a
    /// replica behind): nothing was applied; the item is read again until the window passes.
    fn stale_refusal(&self, _error: &TenantError) -> bool {
        false
    }

    /// Called once per write call with the writes Graph answered: accepted (`true`) or
    /// failed in a way that may have been applied (`false`), so that a later claim or job
    /// reading a lagging replica waits for them instead of writing again.
    async fn written(
        &mut self,
        _writes: Vec<(usize, Self::Change, bool)>,
    ) -> Result<(), EngineError> {
        Ok(())
    }
}

/// What a comparison found.
pub enum Compare<C> {
    /// The item holds what it wants.
    Holds,
    /// It differs: write `change`. `before` (the item's lower-case address and its state
    /// before the write, for a revert) is recorded with the write's intent. `recent`: this service wrote what the item wants `age` ago
    /// (another claim or job, a ticket sent again), accepted by Graph or not (`certain`):
    /// a read that does not show it is from a replica behind.
    Write {
        change: C,
        before: Option<(String, Value)>,
        recent: Option<Recent>,
    },
    /// The item ends so, whatever else.
    Settle(ItemResult),
}

/// A write of what an item wants, recorded by this service (see [`Compare::Write`]).
#[derive(Debug, Clone, Copy)]
pub struct Recent {
    pub age: Duration,
    pub certain: bool,
}

/// Where an item stands within one claim of its chunk.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// The last read is trusted: write what differs.
    Write,
    /// A write was made at `since` (accepted by Graph, or `uncertain`: it failed in a way that
    /// may have been applied, or was refused because the read it was planned from was stale).
    /// Re-read until it shows, for at most the verify window.
    Verify { since: Instant, uncertain: bool },
}

/// One item's bookkeeping.
#[derive(Debug)]
struct Item {
    seq: i32,
    phase: Phase,
    /// Writes sent in this claim, and how many of them before the current step.
    writes_sent: u32,
    step_start: u32,
    step: u8,
    read_failures: u32,
    suspected_stale: bool,
    /// Waiting for a write another claim or job recorded as accepted.
    remembered: bool,
    /// A read answered [`TenantError::Postponed`]: not before this.
    not_before: Option<Instant>,
    /// The first of a run of postponed reads.
    postponed_since: Option<Instant>,
    last_error: Option<TenantError>,
}

/// A write the round decided on.
struct Pending<C> {
    i: usize,
    change: C,
}

/// When stragglers handed back ([`super::kind::Defer`]) are read again.
const COME_BACK_AFTER: Duration = Duration::from_secs(2);

/// The machine over one chunk's items. `seqs[i]` is item `i`'s seq; `results[i]` is set for
/// items the kind settled before (superseded, say).
pub struct Machine<'c, 'a, P> {
    ctx: &'c ApplyContext<'a, P>,
    items: Vec<Item>,
    results: Vec<Option<ItemResult>>,
}

impl<'c, 'a, P: Sync> Machine<'c, 'a, P> {
    pub fn new(
        ctx: &'c ApplyContext<'a, P>,
        seqs: &[i32],
        results: Vec<Option<ItemResult>>,
    ) -> Self {
        let items = seqs
            .iter()
            .map(|&seq| Item {
                seq,
                phase: Phase::Write,
                writes_sent: 0,
                step_start: 0,
                step: 0,
                read_failures: 0,
                suspected_stale: false,
                remembered: false,
                not_before: None,
                postponed_since: None,
                last_error: None,
            })
            .collect();
        Self {
            ctx,
            items,
            results,
        }
    }

    /// Runs the items to their ends (see the module docs); one result per item settled.
    pub async fn run<K: Reconcile>(mut self, kind: &mut K) -> Result<Vec<ItemResult>, EngineError> {
        let ctx = self.ctx;
        let mut pending: Vec<usize> = (0..self.items.len())
            .filter(|&i| self.results[i].is_none())
            .collect();
        let mut round: u32 = 0;
        // Pause before a round only when the last one wrote nothing: a first read-back right
        // after a write costs one read and, on a caught-up replica, settles the item at once.
        let mut pause_before = false;
        while !pending.is_empty() && !ctx.cancel.is_cancelled() {
            if pause_before {
                round += 1;
                if !ctx.retry.wait(round, ctx.cancel).await {
                    break;
                }
            }
            // Items still waiting out a `Retry-After` sit this round out.
            let started = Instant::now();
            let (ready, waiting): (Vec<usize>, Vec<usize>) = pending
                .iter()
                .partition(|&&i| self.items[i].not_before.is_none_or(|t| t <= started));
            if ready.is_empty() {
                let until = waiting
                    .iter()
                    .filter_map(|&i| self.items[i].not_before)
                    .min();
                let wait = until.map_or_else(Default::default, |t| t - started);
                tokio::select! {
                    _ = ctx.cancel.cancelled() => break,
                    _ = tokio::time::sleep(wait) => {}
                }
                pause_before = false;
                continue;
            }
            let states = kind.read(&ready).await?;
            let mut keep = waiting;
            let mut writes = Vec::new();
            let mut before = Vec::new();
            let now = Instant::now();
            for (&i, state) in ready.iter().zip(states) {
                match self.after_read(kind, i, state, now).await {
                    Next::Keep => keep.push(i),
                    Next::Done => {}
                    Next::Write(change, image) => {
                        if let Some((address, image)) = image {
                            before.push((self.items[i].seq, address, image));
                        }
                        writes.push(Pending { i, change });
                    }
                }
            }
            pause_before = writes.is_empty();
            if !writes.is_empty() {
                match self.send(kind, writes, before).await? {
                    Some(written) => keep.extend(written),
                    // Stopping: abandon the call; the next worker reads the items back.
                    None => return Ok(self.results.into_iter().flatten().collect()),
                }
            }
            pending = keep;
            if pause_before && self.hand_back(&pending) {
                return Ok(self.results.into_iter().flatten().collect());
            }
        }
        if ctx.cancel.is_cancelled() && !ctx.stop.is_cancelled() {
            self.report_cancelled(kind, pending).await?;
        }
        Ok(self.results.into_iter().flatten().collect())
    }

    /// Decides on item `i` after a read.
    async fn after_read<K: Reconcile>(
        &mut self,
        kind: &mut K,
        i: usize,
        state: Result<K::State, TenantError>,
        now: Instant,
    ) -> Next<K::Change> {
        let retry = self.ctx.retry;
        let window = retry.verify_within();
        let item = &mut self.items[i];
        let seq = item.seq;
        item.not_before = None;
        let postponed_for = match &state {
            Err(TenantError::Postponed { .. }) => now - *item.postponed_since.get_or_insert(now),
            _ => {
                item.postponed_since = None;
                Duration::ZERO
            }
        };
        let state = match state {
            Ok(state) => state,
            Err(TenantError::Postponed { after, error }) if postponed_for < window => {
                item.not_before = Some(now + after);
                item.last_error = Some(*error);
                return Next::Keep;
            }
            Err(error) if ItemRetry::is_retryable(&error) => {
                item.read_failures += 1;
                let in_window =
                    matches!(item.phase, Phase::Verify { since, .. } if now < since + window);
                if item.read_failures >= retry.attempts() && !in_window {
                    return self.settle(
                        i,
                        ItemRetry::exhausted(seq, Some(error), "the tenant kept failing"),
                    );
                }
                item.last_error = Some(error);
                return Next::Keep;
            }
            Err(error) => {
                return self.settle(
                    i,
                    ItemResult::failed(seq, failure_code(&error), error.to_string()),
                );
            }
        };
        item.read_failures = 0;
        let fresh = matches!(item.phase, Phase::Write) && item.writes_sent == 0;
        match kind.compare(i, state, fresh).await {
            Compare::Settle(result) => self.settle(i, result),
            Compare::Holds => {
                let outcome = if item.writes_sent > 0 {
                    ItemOutcome::Changed
                } else {
                    ItemOutcome::AlreadyCompliant
                };
                self.settle(i, ItemResult::ok(seq, outcome))
            }
            Compare::Write {
                change,
                before,
                recent,
            } => {
                // A later step: the last write shows. Write this one.
                let step = kind.step(&change);
                let item = &mut self.items[i];
                if step > item.step {
                    item.step = step;
                    item.step_start = item.writes_sent;
                    item.phase = Phase::Write;
                    item.suspected_stale = false;
                }
                self.differs(i, change, before, recent, now)
            }
        }
    }

    /// Item `i` does not hold what it wants: read again, give up, or write `change`.
    fn differs<C>(
        &mut self,
        i: usize,
        change: C,
        before: Option<(String, Value)>,
        recent: Option<Recent>,
        now: Instant,
    ) -> Next<C> {
        let retry = self.ctx.retry;
        let window = retry.verify_within();
        if self.ctx.job.dry_run {
            let seq = self.items[i].seq;
            return self.settle(i, ItemResult::ok(seq, ItemOutcome::Changed));
        }
        let item = &mut self.items[i];
        let seq = item.seq;
        match item.phase {
            // Not showing yet: a replica that has not caught up. Read again. (A write Graph
            // accepted is given the whole window; one that may not have been applied,
            // `resend_after`.)
            Phase::Verify { since, uncertain }
                if now
                    < since
                        + if uncertain && !item.remembered {
                            retry.resend_after()
                        } else {
                            window
                        } =>
            {
                Next::Keep
            }
            Phase::Verify {
                uncertain: false, ..
            } => self.settle(
                i,
                ItemRetry::unverified(
                    seq,
                    format!(
                        "the tenant does not show the write made {} s ago",
                        window.as_secs_f64()
                    ),
                ),
            ),
            // This service wrote exactly this moments ago: read again until the window of
            // that write passes, then send it again (not `verification_failed`: this claim
            // did not write it).
            Phase::Write
                if let Some(Recent { age, certain }) = recent
                    && age
                        < if certain {
                            window
                        } else {
                            retry.resend_after()
                        } =>
            {
                item.phase = Phase::Verify {
                    since: now.checked_sub(age).unwrap_or(now),
                    uncertain: true,
                };
                item.remembered |= certain;
                Next::Keep
            }
            // A trusted read (the window has passed) that needs a write.
            _ if item.writes_sent - item.step_start >= retry.attempts() => {
                let error = item.last_error.take();
                self.settle(i, ItemRetry::exhausted(seq, error, "no write succeeded"))
            }
            _ => Next::Write(change, before),
        }
    }

    fn settle<C>(&mut self, i: usize, result: ItemResult) -> Next<C> {
        self.results[i] = Some(result);
        Next::Done
    }

    /// Sends the round's writes in one gated call. The items to read back, or `None` when the
    /// worker is stopping (the call was abandoned).
    async fn send<K: Reconcile>(
        &mut self,
        kind: &mut K,
        writes: Vec<Pending<K::Change>>,
        before: Vec<(i32, String, Value)>,
    ) -> Result<Option<Vec<usize>>, EngineError> {
        let ctx = self.ctx;
        let changes: Vec<K::Change> = writes.iter().map(|w| w.change.clone()).collect();
        let seqs = writes.iter().map(|w| self.items[w.i].seq).collect();
        let gate = ctx.writes.gate_with_before(seqs, before);
        let outcomes = tokio::select! {
            // Throttled writes come back postponed rather than hold the turn.
            outcomes = ctx.in_write_turn(
                changes.len(),
                crate::tenant::waits::return_early(kind.write(&changes, &gate)),
            ) => outcomes?,
            _ = ctx.stop.cancelled() => return Ok(None),
        };
        let sent_at = Instant::now();
        let mut read_back = Vec::new();
        let mut answered = Vec::new();
        for (Pending { i, change }, outcome) in writes.into_iter().zip(outcomes) {
            let uncertain = match outcome {
                Ok(()) => {
                    answered.push((i, change, true));
                    false
                }
                // Not sent: the chunk is stopping (its token is cancelled). Kept: an earlier
                // claim's write of it may still need reading back ([`Self::report_cancelled`]).
                Err(TenantError::Withheld(_)) => {
                    read_back.push(i);
                    continue;
                }
                // Throttled (not applied) while the call's other writes went through: read
                // and written again after Graph's `Retry-After`, in a later round.
                Err(TenantError::Postponed { after, error }) => {
                    let item = &mut self.items[i];
                    item.not_before = Some(sent_at + after);
                    item.last_error = Some(*error);
                    read_back.push(i);
                    continue;
                }
                Err(error) => {
                    if let Some(result) = kind.refused(i, &error).await {
                        self.results[i] = Some(result);
                        continue;
                    }
                    let item = &mut self.items[i];
                    if kind.stale_refusal(&error) && !item.suspected_stale {
                        // Planned from a stale read: nothing was applied. Read again until
                        // the window passes, then write from what the tenant shows; refused
                        // a second time, the item fails with Graph's answer.
                        item.suspected_stale = true;
                        item.last_error = Some(error);
                        item.phase = Phase::Verify {
                            since: sent_at,
                            uncertain: true,
                        };
                        read_back.push(i);
                        continue;
                    }
                    if !ItemRetry::is_retryable(&error) {
                        let seq = item.seq;
                        self.results[i] = Some(ItemResult::failed(
                            seq,
                            failure_code(&error),
                            error.to_string(),
                        ));
                        continue;
                    }
                    // May have been applied (a 5xx, a timeout): read until `resend_after`,
                    // then sent again.
                    item.last_error = Some(error);
                    answered.push((i, change, false));
                    true
                }
            };
            let item = &mut self.items[i];
            item.writes_sent += 1;
            item.phase = Phase::Verify {
                since: sent_at,
                uncertain,
            };
            read_back.push(i);
        }
        kind.written(answered).await?;
        Ok(Some(read_back))
    }

    /// After a round without writes: hand the chunk back ([`super::kind::Defer`]) when every
    /// item left only waits, for a write to show (this chunk's, or one recorded earlier) or
    /// for a `Retry-After` with nothing written yet; against a lagging replica, holding the
    /// chunk would idle its executor and the write budget it could use. Whether it did.
    fn hand_back(&self, pending: &[usize]) -> bool {
        if pending.is_empty()
            || self.ctx.job.dry_run
            || !pending.iter().all(|&i| {
                let item = &self.items[i];
                !item.suspected_stale
                    && match item.phase {
                        Phase::Verify { .. } => true,
                        Phase::Write => item.not_before.is_some(),
                    }
            })
        {
            return false;
        }
        let now = Instant::now();
        let longest = pending
            .iter()
            .filter_map(|&i| self.items[i].not_before)
            .map(|t| t.saturating_duration_since(now))
            .max()
            .unwrap_or_default();
        self.ctx.defer.later(COME_BACK_AFTER.max(longest));
        true
    }

    /// The job ended (or the chunk was lost) mid-way: report what reached the tenant. A write
    /// Graph accepted is `changed`. One that may have been applied (a 5xx, a timeout, or a
    /// write an earlier claim recorded the intent of: [`ApplyContext::intended`]) is read
    /// back, and `changed` once the tenant shows it; a read that does not show it is trusted
    /// only once the write's verify window has passed (a replica may be behind). The rest
    /// is left to be skipped.
    async fn report_cancelled<K: Reconcile>(
        &mut self,
        kind: &mut K,
        pending: Vec<usize>,
    ) -> Result<(), EngineError> {
        let ctx = self.ctx;
        let window = ctx.retry.verify_within();
        let started = Instant::now();
        // Each uncertain item, with when its window ends.
        let mut uncertain: Vec<(usize, Instant)> = Vec::new();
        for i in pending {
            let item = &self.items[i];
            match item.phase {
                Phase::Verify {
                    uncertain: false, ..
                } => self.results[i] = Some(ItemResult::ok(item.seq, ItemOutcome::Changed)),
                // As in the rounds: given `resend_after` (unless it waits for a write another
                // claim recorded as accepted).
                Phase::Verify {
                    since,
                    uncertain: true,
                } => {
                    let given = if item.remembered {
                        window
                    } else {
                        ctx.retry.resend_after()
                    };
                    uncertain.push((i, since + given))
                }
                Phase::Write => {
                    if let Some(age) = ctx.intended.get(&item.seq) {
                        let since = started.checked_sub(*age).unwrap_or(started);
                        uncertain.push((i, since + window));
                    }
                }
            }
        }
        let mut round = 0;
        while !uncertain.is_empty() {
            let which: Vec<usize> = uncertain.iter().map(|(i, _)| *i).collect();
            let states = kind.read(&which).await?;
            let now = Instant::now();
            let mut again = Vec::new();
            for ((i, until), state) in uncertain.into_iter().zip(states) {
                let holds = match state {
                    Ok(state) => kind.shows_writes(i, state).await,
                    Err(_) => false,
                };
                if holds {
                    self.results[i] = Some(ItemResult::ok(self.items[i].seq, ItemOutcome::Changed));
                } else if now < until {
                    again.push((i, until));
                }
            }
            uncertain = again;
            round += 1;
            // Paced as every read-back is; a worker stopping reports nothing more.
            if !uncertain.is_empty() && !ctx.retry.wait(round, ctx.stop).await {
                break;
            }
        }
        Ok(())
    }
}

/// What a round does next with an item.
enum Next<C> {
    /// Read it again in a later round.
    Keep,
    /// It has its result.
    Done,
    /// Write this change (with the state before it, for a revert).
    Write(C, Option<(String, Value)>),
}

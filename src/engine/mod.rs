//! The reconciliation engine: one pipeline for every job kind.
//!
//! 1. **Plan.** A planner claims a `received` job (`SKIP LOCKED`), asks its [`JobKind`] to
//!    validate it, update desired state and list its items, and stores the items in chunks
//!    with the job `accepted` and its `job.accepted` event, in one transaction. An invalid
//!    job completes `rejected` in that same transaction, having written nothing.
//! 2. **Apply.** Executors claim chunks with a lease, renew it while working, and have the
//!    kind bring each item to its desired state and verify it by reading back. Outcomes are
//!    recorded per round, under the lease. A chunk whose worker died is claimed again once
//!    its lease expires, and resumes with the items that have no outcome yet.
//! 3. **Complete.** Whoever finishes the last chunk completes the job: counts, failures and
//!    exactly one `job.completed`, under the job's row lock.
//!
//! Job kinds: [`policy`] (`policy.changed`, `policy.members_added`), [`portal`]
//! (`portal_access.grant`, `portal_access.activated`, `portal_access.remind`) and [`roles`]
//! (`admin_role.assign`, `admin_role.remove`, `admin_role.change`, `ods_mapping.changed`,
//! `user.leaver`).

pub mod clock;
pub mod kind;
pub mod policy;
pub mod portal;
pub mod roles;
pub mod schedule;
pub mod wakeup;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use kind::{
    ApplyContext, ItemOutcome, ItemResult, JobHeader, JobKind, Plan, PlanContext, PlannedItem,
    PlannedItems, StoredJob, WorkItem,
};

use crate::configuration::{EngineSettings, RoleSettings, ScheduleSettings};
use crate::domain::{Counts, Failure, FailureCode, JobType, Outcome, Schedule, decode_payload};
use crate::store::StoreError;
use crate::store::work::{self, ClaimedChunk, JobIdentity};
use crate::telemetry::metrics as m;
use crate::tenant::{Tenant, TenantError};
use clock::Clock;
use schedule::OffPeak;
pub use wakeup::{Waiter, Wakeup};

/// Items a second assumed for the forecast without a configured budget: Graph's own figure
/// for licence writes (about 20 a second per app and tenant).
const DEFAULT_ITEMS_PER_SECOND: f64 = 20.0;

/// An engine failure. Transient ones (database or tenant unavailable) leave the job or chunk
/// to be tried again; permanent ones are bugs or corrupt data, logged loudly.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tenant: {0}")]
    Tenant(#[from] TenantError),
    #[error("stored job is inconsistent: {0}")]
    Corrupt(String),
}

impl EngineError {
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Store(e) => e.is_transient(),
            Self::Tenant(e) => e.is_transient(),
            Self::Corrupt(_) => false,
        }
    }
}

impl From<sqlx::Error> for EngineError {
    fn from(error: sqlx::Error) -> Self {
        Self::Store(error.into())
    }
}

/// The engine of one replica.
pub struct Engine {
    pool: sqlx::PgPool,
    tenant: Arc<dyn Tenant>,
    settings: EngineSettings,
    /// This process's lease-owner name: unique per process start, so a restarted replica
    /// never mistakes a lease of its previous life for its own.
    owner: String,
    kinds: Vec<Arc<dyn JobKind>>,
    /// The scheduler's time (manual in tests).
    clock: Arc<dyn Clock>,
    off_peak: OffPeak,
    /// Jobs with more items than this wait for off-peak windows.
    large_job_threshold: u64,
    /// Items a second the tenant budget allows, for the 24-hour forecast.
    items_per_second: f64,
    /// Nudged when a job is stored (by this replica's ingest): plan it now.
    jobs_stored: Wakeup,
    /// Nudged when a job is planned: its chunks may be claimed now.
    jobs_planned: Wakeup,
}

/// What claiming a chunk came to.
enum Next {
    /// Nothing to claim.
    Idle,
    /// A chunk was worked on and needs nothing more (released, or already ended).
    Done,
    /// A chunk was applied; its last outcomes are still to be recorded.
    Tail(Tail),
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

/// The resolution target of the resolver team: every ticket within 24 hours.
pub const RESOLUTION_TARGET: chrono::Duration = chrono::Duration::hours(24);

impl Engine {
    pub fn new(
        pool: sqlx::PgPool,
        tenant: Arc<dyn Tenant>,
        settings: EngineSettings,
        schedule: &ScheduleSettings,
        instance: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, EngineError> {
        let off_peak = OffPeak::new(schedule);
        Ok(Self {
            pool,
            tenant,
            settings,
            owner: format!("{instance}/{}", uuid::Uuid::new_v4().simple()),
            kinds: vec![
                Arc::new(policy::PolicyKind),
                Arc::new(portal::PortalAccessKind),
                Arc::new(roles::RolesKind::new(&RoleSettings::default())),
            ],
            clock,
            off_peak,
            large_job_threshold: schedule.large_job_threshold,
            items_per_second: DEFAULT_ITEMS_PER_SECOND,
            jobs_stored: Wakeup::default(),
            jobs_planned: Wakeup::default(),
        })
    }

    /// What this replica's ingest nudges when it stores a job.
    pub fn jobs_stored(&self) -> Wakeup {
        self.jobs_stored.clone()
    }

    /// Realise admin roles with these group name templates (`[roles]`) instead of the defaults.
    pub fn with_roles(mut self, roles: &RoleSettings) -> Self {
        self.kinds
            .retain(|k| !k.job_types().contains(&JobType::AdminRoleAssign));
        self.kinds.push(Arc::new(roles::RolesKind::new(roles)));
        self
    }

    /// Forecast the 24-hour target at `items_per_second` (the tenant write budget).
    pub fn with_items_per_second(mut self, items_per_second: f64) -> Self {
        if items_per_second > 0.0 {
            self.items_per_second = items_per_second;
        }
        self
    }

    /// Unfinished jobs that cannot finish within the target at the budgeted rate, given the
    /// window time left before their deadline (off-peak jobs run only in windows).
    pub async fn jobs_at_risk(&self) -> Result<usize, EngineError> {
        let now = self.clock.now();
        let jobs = work::unfinished_jobs(&self.pool).await?;
        Ok(jobs
            .iter()
            .filter(|job| {
                let deadline = job.received_at + RESOLUTION_TARGET;
                let available = if job.schedule.as_deref() == Some("off_peak") && !job.expedited {
                    self.off_peak.open_between(now, deadline)
                } else {
                    (deadline - now).max(chrono::Duration::zero())
                };
                let needed = chrono::Duration::milliseconds(
                    (job.remaining as f64 / self.items_per_second * 1000.0) as i64,
                );
                needed > available || (job.remaining > 0 && available.is_zero())
            })
            .count())
    }

    fn kind(&self, job_type: JobType) -> Option<&Arc<dyn JobKind>> {
        self.kinds
            .iter()
            .find(|k| k.job_types().contains(&job_type))
    }

    /// Plan and execute until `shutdown`; then stop claiming, let in-flight rounds end, and
    /// release unfinished chunks for other replicas.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) {
        let mut tasks = JoinSet::new();
        {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { engine.planner_loop(shutdown).await });
        }
        for _ in 0..self.settings.chunk_concurrency.get() {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { engine.executor_loop(shutdown).await });
        }
        {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { engine.monitor_loop(shutdown).await });
        }
        while tasks.join_next().await.is_some() {}
    }

    async fn idle(&self, shutdown: &CancellationToken, delay: Duration) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(delay) => {}
        }
    }

    /// Until `shutdown`, the next poll, or a nudge.
    async fn idle_until_nudged(&self, shutdown: &CancellationToken, waiter: &mut Waiter) {
        tokio::select! {
            _ = shutdown.cancelled() => {}
            _ = tokio::time::sleep(self.settings.poll_interval()) => {}
            _ = waiter.wait() => {}
        }
    }

    async fn planner_loop(&self, shutdown: CancellationToken) {
        let mut stored = self.jobs_stored.waiter();
        while !shutdown.is_cancelled() {
            match self.plan_next().await {
                Ok(true) => {}
                Ok(false) => self.idle_until_nudged(&shutdown, &mut stored).await,
                Err(error) => {
                    tracing::warn!(%error, "planning failed; will retry");
                    self.idle(&shutdown, Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn executor_loop(&self, shutdown: CancellationToken) {
        let mut planned = self.jobs_planned.waiter();
        let mut tail: Option<Tail> = None;
        while !shutdown.is_cancelled() {
            // The previous chunk's last outcomes are recorded while the next chunk is claimed
            // and applied: a chunk's own bookkeeping stays off the tenant's path.
            let had_tail = tail.is_some();
            let (_, next) = tokio::join!(self.settle(tail.take()), self.run_next_chunk(&shutdown));
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
                metrics::histogram!(m::CHUNK_DURATION_SECONDS, "job_type" => tail.job_type.as_str())
                    .record(tail.started.elapsed().as_secs_f64());
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
        let retry_at = self.clock.now() + chrono::Duration::seconds(5);
        let _ = work::release_chunk(&self.pool, chunk, &self.owner, retry_at).await;
        tracing::warn!(%error, job_id = %chunk.job_id, chunk = chunk.chunk, "chunk released after an error");
    }

    async fn monitor_loop(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Ok(backlog) = work::backlog(&self.pool).await {
                for (state, n) in [
                    ("received", backlog.received),
                    ("accepted", backlog.accepted),
                    ("running", backlog.running),
                ] {
                    metrics::gauge!(m::JOBS_UNFINISHED, "state" => state).set(n as f64);
                }
                metrics::gauge!(m::ITEMS_REMAINING).set(backlog.items_remaining as f64);
                let age = backlog
                    .oldest_received_at
                    .map(|t| (Utc::now() - t).num_milliseconds().max(0) as f64 / 1000.0)
                    .unwrap_or(0.0);
                metrics::gauge!(m::OLDEST_UNFINISHED_JOB_AGE_SECONDS).set(age);
            }
            if let Ok(at_risk) = self.jobs_at_risk().await {
                metrics::gauge!(m::JOBS_AT_RISK).set(at_risk as f64);
            }
            self.complete_orphans().await;
            self.idle(&shutdown, Duration::from_secs(10)).await;
        }
    }

    /// Plan the oldest job waiting for it. Returns whether there was one.
    pub async fn plan_next(&self) -> Result<bool, EngineError> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = work::claim_job_to_plan(&mut tx).await? else {
            return Ok(false);
        };
        let job_id = row.id;
        let span = tracing::info_span!(
            "plan",
            job_id = %row.id,
            message_id = %row.message_id,
            job_type = row.job_type.as_deref().unwrap_or("?"),
            ticket = tracing::field::Empty,
        );
        let started = Instant::now();
        let job_type_label = row
            .job_type
            .as_deref()
            .and_then(JobType::parse)
            .map_or("unknown", JobType::as_str);
        let result = self.plan_job(&mut tx, row).instrument(span).await;
        match result {
            Ok(chunks_planned) => {
                tx.commit().await?;
                metrics::histogram!(m::PLAN_DURATION_SECONDS, "job_type" => job_type_label)
                    .record(started.elapsed().as_secs_f64());
                // Only now can executors see the chunks (and only then is there a point).
                if chunks_planned {
                    self.jobs_planned.wake();
                }
                Ok(true)
            }
            Err(error) => {
                drop(tx);
                // Not before a while: a tenant outage must not spin the planner.
                let retry_at = Utc::now() + chrono::Duration::seconds(5);
                let _ = work::defer_planning(&self.pool, job_id, retry_at).await;
                Err(error)
            }
        }
    }

    async fn plan_job(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        row: work::JobToPlan,
    ) -> Result<bool, EngineError> {
        let job_type = row
            .job_type
            .as_deref()
            .and_then(JobType::parse)
            .ok_or_else(|| EngineError::Corrupt(format!("job {} has no known type", row.id)))?;
        let ticket = work::ticket(row.ticket);
        if let Some(t) = &ticket {
            tracing::Span::current().record("ticket", t.reference.as_str());
        }
        let identity = JobIdentity {
            id: row.id,
            message_id: &row.message_id,
            job_type,
            ticket: ticket.clone(),
            dry_run: row.dry_run,
        };
        let Some(kind) = self.kind(job_type).cloned() else {
            // Kinds still to be built (portal access) wait, stored, for the
            // release that plans them, without blocking the planner.
            tracing::warn!("no planner for this job type in this release; kept for later");
            let later = Utc::now() + chrono::Duration::hours(1);
            work::defer_planning(&mut **tx, row.id, later).await?;
            return Ok(false);
        };
        let payload = work::job_payload(tx, row.id, kind.list_left_in_database())
            .await?
            .ok_or_else(|| EngineError::Corrupt("job without payload".into()))?;
        let payload = match decode_payload(job_type, payload) {
            Ok(payload) => payload,
            Err(error) => {
                let failure = Failure {
                    item: row.message_id.clone(),
                    code: FailureCode::InvalidMessage,
                    detail: format!("payload: {error}"),
                };
                work::complete_now(
                    tx,
                    &identity,
                    None,
                    Outcome::Rejected,
                    Counts::default(),
                    vec![failure],
                )
                .await?;
                return Ok(false);
            }
        };
        let job = StoredJob {
            id: row.id,
            message_id: row.message_id.clone(),
            job_type,
            dry_run: row.dry_run,
            ticket,
            actor: work::actor(row.actor),
            payload,
            received_at: row.received_at,
        };
        let plan = kind
            .plan(PlanContext {
                tx,
                tenant: &self.tenant,
                settings: &self.settings,
                job: &job,
            })
            .await?;
        match plan {
            Plan::Wait { until } => {
                work::defer_planning(&mut **tx, job.id, until).await?;
            }
            Plan::Reject { subject, failures } => {
                tracing::info!(failures = failures.len(), "job rejected");
                work::complete_now(
                    tx,
                    &identity,
                    subject.as_ref(),
                    Outcome::Rejected,
                    Counts::default(),
                    failures,
                )
                .await?;
                metrics::counter!(m::JOBS_COMPLETED_TOTAL, "job_type" => job_type.as_str(), "outcome" => "rejected")
                    .increment(1);
            }
            Plan::Fail { subject, failures } => {
                tracing::info!(failures = failures.len(), "job failed at planning");
                work::complete_now(
                    tx,
                    &identity,
                    subject.as_ref(),
                    Outcome::Failed,
                    Counts::default(),
                    failures,
                )
                .await?;
                metrics::counter!(m::JOBS_COMPLETED_TOTAL, "job_type" => job_type.as_str(), "outcome" => "failed")
                    .increment(1);
            }
            Plan::Accept {
                subject,
                plan,
                items,
            } => {
                let total = items.len();
                let now = self.clock.now();
                let (schedule, earliest_start, label) = if total > self.large_job_threshold {
                    (Schedule::OffPeak, self.off_peak.next_open(now), "off_peak")
                } else {
                    (Schedule::Immediate, now, "immediate")
                };
                let rows = match items {
                    PlannedItems::Listed(items) => {
                        let (keys, specs): (Vec<String>, Vec<Option<String>>) = items
                            .into_iter()
                            .map(|i| (i.key, i.spec.map(|s| s.to_string())))
                            .unzip();
                        work::ItemRows::Listed { keys, specs }
                    }
                    PlannedItems::Staged { table, count } => {
                        work::ItemRows::Staged { table, count }
                    }
                };
                work::accept(
                    tx,
                    &identity,
                    &subject,
                    &plan,
                    rows,
                    self.settings.chunk_size.get(),
                    schedule,
                    earliest_start,
                )
                .await?;
                metrics::counter!(m::JOBS_ACCEPTED_TOTAL, "job_type" => job_type.as_str(), "schedule" => label)
                    .increment(1);
                tracing::info!(total, schedule = label, %earliest_start, "job accepted");
                if total == 0 {
                    work::complete_now(
                        tx,
                        &identity,
                        Some(&subject),
                        Outcome::Succeeded,
                        Counts::default(),
                        vec![],
                    )
                    .await?;
                    metrics::counter!(m::JOBS_COMPLETED_TOTAL, "job_type" => job_type.as_str(), "outcome" => "succeeded")
                        .increment(1);
                }
                return Ok(total > 0);
            }
        }
        Ok(false)
    }

    /// Claim and process one chunk, but for its last round's bookkeeping (returned as its
    /// [`Tail`], for [`Engine::settle`]).
    async fn run_next_chunk(&self, shutdown: &CancellationToken) -> Result<Next, EngineError> {
        let now = self.clock.now();
        let limits = work::ClaimLimits {
            now,
            window_open: self.off_peak.is_open(now),
            max_running: self.settings.max_running_chunks.get(),
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
            metrics::counter!(m::CHUNKS_RECLAIMED_TOTAL).increment(1);
            tracing::warn!(job_id = %chunk.job_id, chunk = chunk.chunk, "took over a chunk whose lease expired");
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
        let (job, items) = tokio::try_join!(
            work::chunk_job(&self.pool, chunk.job_id),
            work::open_items(&self.pool, chunk)
        )?;
        let job_type = JobType::parse(&job.job_type)
            .ok_or_else(|| EngineError::Corrupt(format!("unknown job type {}", job.job_type)))?;
        let kind = self
            .kind(job_type)
            .cloned()
            .ok_or_else(|| EngineError::Corrupt(format!("no applier for {job_type}")))?;
        let header = JobHeader {
            id: chunk.job_id,
            job_type,
            dry_run: job.dry_run,
            plan: job.plan.unwrap_or_default(),
        };

        // The lease is renewed in the background; losing it (or shutdown) cancels the work
        // at the next safe point.
        let cancel = shutdown.child_token();
        let renewal = {
            let pool = self.pool.clone();
            let chunk = chunk.clone();
            let owner = self.owner.clone();
            let lease = self.settings.lease_seconds.get();
            let cancel = cancel.clone();
            tokio::spawn(async move {
                let every = Duration::from_millis((lease * 1000 / 3).max(100));
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(every) => {}
                    }
                    match work::renew_lease(&pool, &chunk, &owner, lease).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!("lease lost; abandoning the chunk");
                            cancel.cancel();
                            return;
                        }
                        Err(error) => tracing::warn!(%error, "lease renewal failed; retrying"),
                    }
                }
            })
        };
        let result = self
            .apply_rounds(chunk, items, &kind, &header, &cancel)
            .await;
        let lease_lost = cancel.is_cancelled() && !shutdown.is_cancelled();
        cancel.cancel();
        let _ = renewal.await;
        let results = match result? {
            Some(results) => results,
            None if shutdown.is_cancelled() || lease_lost => {
                if !lease_lost {
                    work::release_chunk(&self.pool, chunk, &self.owner, self.clock.now()).await?;
                }
                return Ok(None);
            }
            // Nothing was left to apply (a chunk taken over after its last round was
            // recorded): it only needs ending, like any other.
            None => Vec::new(),
        };
        Ok(Some(Tail {
            chunk: chunk.clone(),
            job_type,
            results,
            started,
        }))
    }

    /// Complete the job if every chunk is done (once, whoever asks).
    async fn complete(&self, job_id: uuid::Uuid) -> Result<(), EngineError> {
        if let Some((job_type, outcome, counts)) =
            work::complete_if_done(&self.pool, job_id).await?
        {
            metrics::counter!(m::JOBS_COMPLETED_TOTAL, "job_type" => job_type.as_str(), "outcome" => outcome.as_str())
                .increment(1);
            tracing::info!(
                %job_id,
                outcome = outcome.as_str(),
                total = counts.total,
                changed = counts.changed,
                already_compliant = counts.already_compliant,
                failed = counts.failed,
                "job completed"
            );
        }
        Ok(())
    }

    /// Complete jobs whose last worker stopped between finishing their last chunk and
    /// completing them (a crash at that point must not leave a ticket open).
    async fn complete_orphans(&self) {
        let Ok(jobs) = work::uncompleted_done_jobs(&self.pool).await else {
            return;
        };
        for job_id in jobs {
            tracing::warn!(%job_id, "every chunk done but the job not completed; completing it");
            if let Err(error) = self.complete(job_id).await {
                tracing::warn!(%job_id, %error, "cannot complete the job yet");
            }
        }
    }

    /// Apply the chunk's open items round by round, recording outcomes after each round but
    /// the last: when every item of that one is settled, its results are returned instead,
    /// to be recorded together with the chunk's end ([`Engine::settle`]).
    async fn apply_rounds(
        &self,
        chunk: &ClaimedChunk,
        items: Vec<(i32, String, Option<serde_json::Value>)>,
        kind: &Arc<dyn JobKind>,
        header: &JobHeader,
        cancel: &CancellationToken,
    ) -> Result<Option<Vec<ItemResult>>, EngineError> {
        let items: Vec<WorkItem> = items
            .into_iter()
            .map(|(seq, key, spec)| WorkItem { seq, key, spec })
            .collect();
        let ctx = ApplyContext {
            pool: &self.pool,
            tenant: &self.tenant,
            settings: &self.settings,
            job: header,
            cancel,
        };
        let rounds: Vec<&[WorkItem]> = items
            .chunks(self.settings.round_size.get() as usize)
            .collect();
        for (i, round) in rounds.iter().enumerate() {
            if cancel.is_cancelled() {
                break;
            }
            let results = kind.apply(&ctx, round).await?;
            let settled = results.len() == round.len();
            if i + 1 == rounds.len() && settled && !cancel.is_cancelled() {
                return Ok(Some(results));
            }
            if !results.is_empty() {
                self.record(chunk, header.job_type, &results, false).await?;
            }
            if !settled && !cancel.is_cancelled() {
                return Err(EngineError::Corrupt(format!(
                    "applier settled {} of {} items",
                    results.len(),
                    round.len()
                )));
            }
        }
        Ok(None)
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
            let mut by_outcome = [0u64; 4];
            for result in results {
                by_outcome[result.outcome as usize] += 1;
            }
            for outcome in [
                ItemOutcome::Changed,
                ItemOutcome::AlreadyCompliant,
                ItemOutcome::Failed,
                ItemOutcome::Skipped,
            ] {
                let n = by_outcome[outcome as usize];
                if n > 0 {
                    metrics::counter!(m::ITEMS_TOTAL, "job_type" => job_type.as_str(), "outcome" => outcome.as_str())
                        .increment(n);
                }
            }
        }
        Ok(recorded)
    }
}

/// The failure code for a tenant error on an item.
pub fn failure_code(error: &TenantError) -> FailureCode {
    match error {
        TenantError::UserNotFound(_) => FailureCode::UserNotFound,
        TenantError::UsageLocationMissing(_) => FailureCode::UsageLocationMissing,
        TenantError::NoSeatsAvailable(_) => FailureCode::NoSeatsAvailable,
        TenantError::UnknownServicePlan(_) => FailureCode::UnknownServicePlan,
        TenantError::UnknownLicence(_) => FailureCode::UnknownLicence,
        TenantError::MutuallyExclusiveLicence(_) => FailureCode::MutuallyExclusiveLicence,
        TenantError::Forbidden(_) => FailureCode::Forbidden,
        TenantError::Throttled { .. } | TenantError::Transient(_) | TenantError::Auth(_) => {
            FailureCode::TenantUnavailable
        }
        TenantError::NotConverged(_) => FailureCode::VerificationFailed,
        _ => FailureCode::TenantRejected,
    }
}

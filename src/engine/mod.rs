//! The reconciliation engine: one pipeline for every job kind.
//!
//! 1. **Plan** ([`planner`]). A planner claims a `received` job (`SKIP LOCKED`), asks its
//!    [`JobKind`] to validate it, update desired state and list its items, and stores the
//!    items in chunks with the job `accepted` and its `job.accepted` event, in one
//!    transaction. An invalid job completes `rejected` in that same transaction, having
//!    written nothing.
//! 2. **Apply** ([`executor`]). Executors claim chunks with a lease, renew it while working,
//!    and have the kind bring each item to its desired state and verify it by reading back,
//!    under the one item retry policy ([`retry`]) and, for kinds that write to the tenant
//!    (licences, group memberships), the one per-item state machine ([`reconcile`]). Outcomes are recorded per round, under the
//!    lease. A chunk whose worker died is claimed again once its lease expires, and resumes
//!    with the items that have no outcome yet; a job ended meanwhile has those items whose
//!    writes the dead worker may have made read back before it completes.
//! 3. **Complete.** Whoever finishes the last chunk completes the job: counts, failures and
//!    exactly one `job.completed`, under the job's row lock. The [`monitor`] completes jobs
//!    whose last worker stopped just before, and measures the backlog and the 24-hour target.
//!
//! Job kinds, one per job type, registered in `startup.rs` ([`registry`]): [`policy`]
//! (`policy.changed`, `policy.members_added`), [`revert`] (`policy.revert`, an operator's
//! revert of a policy job), [`portal`] (`portal_access.grant`, `portal_access.activated`,
//! `portal_access.remind`), [`roles`] (`admin_role.assign`, `admin_role.remove`,
//! `admin_role.change`, `ods_mapping.changed`, `user.leaver`) and [`drift`] (`drift.sweep`,
//! `drift.sweep_roles`, the service's own sweeps).
//!
//! Users are found by the address the portal knows them by ([`users`]: UPN, then mail, then
//! proxy addresses, remembered in PostgreSQL).
//!
//! **Time.** Every decision the engine and its kinds make (off-peak windows, deadlines,
//! waits) reads the engine's [`Clock`], the only reader of the system clock here. Leases, row
//! timestamps and what is compared with them (approval waits, retention) use the database's
//! `now()`: liveness is measured where the lease is held, and every replica shares it. Waits
//! within one chunk (retry pauses, how long a write is given to show in reads) are durations
//! on the monotonic clock (`Instant`).

pub mod access;
pub mod clock;
pub mod drift;
mod ends;
mod error;
mod events;
pub mod executor;
pub mod gate;
pub mod kind;
pub mod licensing;
pub mod monitor;
pub mod planner;
pub mod policy;
pub mod portal;
pub mod reconcile;
pub mod registry;
pub mod retry;
pub mod revert;
pub mod roles;
pub mod schedule;
pub mod users;
pub mod wakeup;

use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use error::{EngineError, failure_code};
pub use kind::{
    ApplyContext, ItemOutcome, ItemResult, JobHeader, JobKind, Plan, PlanContext, PlannedItem,
    PlannedItems, StoredJob, WorkItem,
};
pub use registry::{Kinds, KindsBuilder};
pub use retry::ItemRetry;

use crate::configuration::{EngineSettings, ScheduleSettings};
use crate::tenant::{AccessWatch, Tenant};
use clock::Clock;
use ends::JobEnds;
use schedule::OffPeak;
pub use wakeup::{Waiter, Wakeup};

/// Items a second assumed for the forecast without a configured budget: Graph's own figure
/// for licence writes (about 20 a second per app and tenant).
const DEFAULT_ITEMS_PER_SECOND: f64 = 20.0;

/// The resolution target of the resolver team: every ticket within 24 hours.
pub const RESOLUTION_TARGET: chrono::Duration = chrono::Duration::hours(24);

/// The engine of one replica.
pub struct Engine {
    pool: sqlx::PgPool,
    tenant: Arc<dyn Tenant>,
    settings: EngineSettings,
    /// The job kinds this release plans and applies.
    kinds: Kinds,
    /// How every kind retries and verifies an item.
    retry: ItemRetry,
    /// This process's lease-owner name: unique per process start, so a restarted replica
    /// never mistakes a lease of its previous life for its own.
    owner: String,
    /// The engine's time (manual in tests).
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
    /// This replica's running chunks by job, stopped when their job ends.
    job_ends: Arc<JobEnds>,
    /// Turns for large jobs' write calls ([`kind::WRITE_TURNS`]).
    write_turns: tokio::sync::Semaphore,
    /// Whether the tenant still grants this process access (shared with `/readyz`).
    access: Arc<AccessWatch>,
}

impl Engine {
    pub fn new(
        pool: sqlx::PgPool,
        tenant: Arc<dyn Tenant>,
        kinds: Kinds,
        settings: EngineSettings,
        schedule: &ScheduleSettings,
        instance: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, EngineError> {
        let off_peak = OffPeak::new(schedule);
        Ok(Self {
            pool,
            tenant,
            retry: ItemRetry::new(
                settings.item_attempts,
                settings.verify_within(),
                settings.resend_after(),
            ),
            settings,
            kinds,
            owner: format!("{instance}/{}", uuid::Uuid::new_v4().simple()),
            clock,
            off_peak,
            large_job_threshold: schedule.large_job_threshold,
            items_per_second: DEFAULT_ITEMS_PER_SECOND,
            jobs_stored: Wakeup::default(),
            jobs_planned: Wakeup::default(),
            job_ends: Arc::default(),
            write_turns: tokio::sync::Semaphore::new(kind::WRITE_TURNS),
            access: Arc::default(),
        })
    }

    /// Report access losses to `watch` (the one `/readyz` reads) instead of the engine's own.
    pub fn with_access_watch(mut self, watch: Arc<AccessWatch>) -> Self {
        self.access = watch;
        self
    }

    /// What this replica's ingest nudges when it stores a job.
    pub fn jobs_stored(&self) -> Wakeup {
        self.jobs_stored.clone()
    }

    /// Forecast the 24-hour target at `items_per_second` (the tenant write budget).
    pub fn with_items_per_second(mut self, items_per_second: f64) -> Self {
        if items_per_second > 0.0 {
            self.items_per_second = items_per_second;
        }
        self
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
        let general = self.settings.chunk_concurrency.get();
        for i in 0..general + self.settings.small_job_reserve {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { engine.executor_loop(shutdown, i >= general).await });
        }
        {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { engine.monitor_loop(shutdown).await });
        }
        {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { engine.catalogue_loop(shutdown).await });
        }
        {
            let engine = self.clone();
            let shutdown = shutdown.clone();
            tasks.spawn(async move { engine.drift_loop(shutdown).await });
        }
        tasks.spawn(
            self.job_ends
                .clone()
                .listen(self.pool.clone(), shutdown.clone()),
        );
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
}

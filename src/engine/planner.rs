//! Planning: claim a received job, have its kind plan it, store the plan, in one transaction.

use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::events::{ApprovalRequired, JobAccepted, JobCompleted, JobPlanned, PlanningDeferred};
use super::kind::{Plan, PlanContext, PlannedItems, StoredJob};
use super::{Engine, EngineError};
use crate::domain::{
    ApprovalThreshold, ChangeEffect, Counts, Failure, FailureCode, JobType, Outcome, Schedule,
};
use crate::store::work::{self, JobIdentity};
use crate::telemetry::emit;

/// Whether a planning failure will happen again however often the job is planned: the
/// database refused what the job holds (a value too large for an index, say) or stored data
/// does not decode. Such a job is rejected rather than planned again forever. Tenant trouble
/// is never permanent here: the job waits for the tenant.
fn is_permanent(error: &EngineError) -> bool {
    match error {
        EngineError::Store(e) => !e.is_transient(),
        EngineError::Corrupt(_) => true,
        EngineError::Tenant(_) => false,
    }
}

/// How long a job waits after its planning failed for a transient reason: a tenant outage
/// must not spin the planner.
const RETRY_AFTER_FAILURE: chrono::Duration = chrono::Duration::seconds(5);
/// How long a job of a type this release has no kind for waits before it is looked at again.
const RETRY_UNKNOWN_TYPE: chrono::Duration = chrono::Duration::hours(1);

impl Engine {
    pub(super) async fn planner_loop(&self, shutdown: CancellationToken) {
        let mut stored = self.jobs_stored.waiter();
        while !shutdown.is_cancelled() {
            match self.plan_next().await {
                Ok(true) => {}
                Ok(false) => self.idle_until_nudged(&shutdown, &mut stored).await,
                Err(error) => {
                    if let EngineError::Tenant(e) = &error
                        && let Some(reason) = e.access_lost()
                    {
                        // The job waits for access as chunks do; the loss shows in `/readyz`.
                        self.access.lost(reason, &e.to_string());
                    }
                    emit(PlanningDeferred { error: &error });
                    self.idle(&shutdown, Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Plan the oldest job waiting for it. Returns whether there was one.
    pub async fn plan_next(&self) -> Result<bool, EngineError> {
        let mut tx = self.pool.begin().await?;
        let Some(row) = work::claim_job_to_plan(&mut tx).await? else {
            return Ok(false);
        };
        let job_id = row.id;
        let job_type = row.job_type.as_deref().and_then(JobType::from_stored);
        let span = tracing::info_span!(
            "plan",
            job_id = %row.id,
            message_id = %row.message_id,
            job_type = job_type.map_or("?", JobType::as_str),
            ticket = tracing::field::Empty,
        );
        let started = Instant::now();
        // What a rejection needs, should planning fail for good.
        let message_id = row.message_id.clone();
        let ticket = row.ticket.clone();
        let dry_run = row.dry_run;
        // A savepoint: a permanent failure undoes the kind's work but keeps the job's lock.
        let mut attempt = sqlx::Acquire::begin(&mut *tx).await?;
        let result = self
            .plan_job(&mut attempt, row)
            .instrument(span.clone())
            .await;
        let result = match result {
            Ok(Planned::Held(held)) => {
                // Held for approval: nothing the kind did (desired state, items) is kept, so
                // a cancel or an expiry leaves the stored policies as they were, and an
                // approval plans the job afresh from the state of then.
                attempt.rollback().await?;
                let identity = JobIdentity {
                    id: job_id,
                    message_id: &message_id,
                    job_type: held.job_type,
                    ticket: work::ticket(ticket.clone()),
                    dry_run,
                };
                work::await_approval(
                    &mut tx,
                    &identity,
                    &held.subject,
                    held.effect,
                    held.threshold,
                )
                .await?;
                emit(ApprovalRequired {
                    job_id,
                    effect: held.effect,
                    policy_size: held.policy_size,
                });
                Ok(false)
            }
            Ok(Planned::Chunks(planned)) => {
                attempt.commit().await.map(|()| planned).map_err(Into::into)
            }
            Err(error) => {
                attempt.rollback().await?;
                Err(error)
            }
        };
        match result {
            Err(error) if is_permanent(&error) => {
                let Some(job_type) = job_type else {
                    return Err(error);
                };
                let identity = JobIdentity {
                    id: job_id,
                    message_id: &message_id,
                    job_type,
                    ticket: work::ticket(ticket),
                    dry_run,
                };
                let failure = Failure {
                    item: message_id.clone(),
                    code: FailureCode::InvalidMessage,
                    detail: format!("the job cannot be planned: {error}"),
                };
                span.in_scope(|| {
                    tracing::error!(%error, "planning failed for good; the job is rejected");
                });
                complete_at_planning(&mut tx, &identity, None, Outcome::Rejected, vec![failure])
                    .await?;
                tx.commit().await?;
                Ok(true)
            }
            Ok(chunks_planned) => {
                tx.commit().await?;
                emit(JobPlanned {
                    job_type,
                    took: started.elapsed(),
                });
                // Only now can executors see the chunks (and only then is there a point).
                if chunks_planned {
                    self.jobs_planned.wake();
                }
                Ok(true)
            }
            Err(error) => {
                drop(tx);
                // Planning reads the tenant (licences, seats): a refused access holds the job
                // as it holds a chunk, said in its detail, and tries again after the same wait.
                let wait = match &error {
                    EngineError::Tenant(e) if let Some(reason) = e.access_lost() => {
                        let loss = crate::tenant::AccessLoss::new(reason, e.to_string());
                        let _ = work::hold_job(&self.pool, job_id, &loss).await;
                        chrono::Duration::seconds(
                            self.settings.access_retry_seconds.get().min(86_400) as i64,
                        )
                    }
                    _ => RETRY_AFTER_FAILURE,
                };
                let _ = work::defer_planning(&self.pool, job_id, wait).await;
                Err(error)
            }
        }
    }

    /// Plan one claimed job in `tx`. Returns whether chunks were stored, or that the job is
    /// held for approval (the caller then undoes `tx`'s work).
    async fn plan_job(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        row: work::JobToPlan,
    ) -> Result<Planned, EngineError> {
        let job_type = row
            .job_type
            .as_deref()
            .and_then(JobType::from_stored)
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
        let Some(kind) = self.kinds.get(job_type).cloned() else {
            // A type this release does not plan waits, stored, for the release that does,
            // without blocking the planner.
            tracing::warn!("no planner for this job type in this release; kept for later");
            work::defer_planning(&mut **tx, row.id, RETRY_UNKNOWN_TYPE).await?;
            return Ok(Planned::Chunks(false));
        };
        let payload = work::job_payload(tx, row.id, kind.list_left_in_database())
            .await?
            .ok_or_else(|| EngineError::Corrupt("job without payload".into()))?;
        let job = StoredJob {
            id: row.id,
            message_id: row.message_id.clone(),
            job_type,
            dry_run: row.dry_run,
            ticket,
            actor: work::actor(row.actor),
            received_at: row.received_at,
        };
        let mut effect = None;
        let ctx = PlanContext {
            tx,
            tenant: &self.tenant,
            settings: &self.settings,
            clock: self.clock.as_ref(),
            job: &job,
            effect: &mut effect,
        };
        let plan = match kind.plan(ctx, payload).await? {
            Ok(plan) => plan,
            Err(error) => Plan::Reject {
                subject: None,
                failures: vec![Failure {
                    item: row.message_id.clone(),
                    code: FailureCode::InvalidMessage,
                    detail: format!("payload: {error}"),
                }],
            },
        };
        let (outcome, subject, failures) = match plan {
            Plan::Wait { until } => {
                let delay = (until - self.clock.now()).max(chrono::Duration::zero());
                work::defer_planning(&mut **tx, job.id, delay).await?;
                return Ok(Planned::Chunks(false));
            }
            Plan::Reject { subject, failures } => (Outcome::Rejected, subject, failures),
            Plan::Fail { subject, failures } => (Outcome::Failed, subject, failures),
            Plan::Accept {
                subject,
                plan,
                items,
            } => {
                let total = items.len();
                // Guard rails on large changes: over the thresholds, the job waits for an
                // operator (unless one approved it already), even with no items left: an
                // emptied member list is the accident this is for. A dry run writes nothing
                // and never waits.
                let approval = &self.settings.approval;
                if let Some((effect, size)) = effect
                    && !job.dry_run
                    && approval.needs_approval(effect.affected(), size)
                    && !work::approved(&mut **tx, job.id).await?
                {
                    return Ok(Planned::Held(Held {
                        job_type,
                        subject,
                        effect,
                        policy_size: size,
                        threshold: ApprovalThreshold {
                            users: approval.users,
                            share: approval.share,
                        },
                    }));
                }
                let now = self.clock.now();
                let large = (total > self.large_job_threshold && kind.writes_to_tenant())
                    || kind.background();
                let (schedule, earliest_start) = if large {
                    (Schedule::OffPeak, self.off_peak.next_open(now))
                } else {
                    (Schedule::Immediate, now)
                };
                let rows = match items {
                    PlannedItems::Listed(items) => {
                        let (keys, specs) = items.into_iter().map(|i| (i.key, i.spec)).unzip();
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
                    self.settings.chunk_size,
                    schedule,
                    earliest_start,
                )
                .await?;
                emit(JobAccepted {
                    job_type,
                    schedule,
                    total,
                    earliest_start,
                });
                if total > 0 {
                    return Ok(Planned::Chunks(true));
                }
                (Outcome::Succeeded, Some(subject), vec![])
            }
        };
        complete_at_planning(tx, &identity, subject.as_ref(), outcome, failures).await?;
        Ok(Planned::Chunks(false))
    }
}

/// What planning one job came to.
enum Planned {
    /// Planned (or completed, or deferred); whether chunks were stored.
    Chunks(bool),
    /// Over the approval thresholds: it waits for an operator, with nothing stored.
    Held(Held),
}

struct Held {
    job_type: JobType,
    subject: serde_json::Value,
    effect: ChangeEffect,
    policy_size: u64,
    threshold: ApprovalThreshold,
}

/// Complete a job in its planning transaction, with no item done: rejected, failed, or
/// accepted with nothing to do.
async fn complete_at_planning(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    identity: &JobIdentity<'_>,
    subject: Option<&serde_json::Value>,
    outcome: Outcome,
    failures: Vec<Failure>,
) -> Result<(), EngineError> {
    let failures_listed = failures.len();
    work::complete_now(tx, identity, subject, outcome, Counts::default(), failures).await?;
    emit(JobCompleted {
        job_id: identity.id,
        job_type: identity.job_type,
        outcome,
        counts: &Counts::default(),
        failures: failures_listed,
    });
    Ok(())
}

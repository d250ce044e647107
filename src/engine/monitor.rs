//! The monitor: backlog gauges, the 24-hour forecast, completing jobs whose last worker
//! stopped between finishing their last chunk and completing them, and ending jobs that
//! waited for an approval too long, and deleting before-images past their retention.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::events::{ApprovalExpired, BacklogMeasured, JobCompleted, JobsAtRisk, OrphanCompleting};
use super::{Engine, EngineError, RESOLUTION_TARGET};
use crate::domain::Schedule;
use crate::store::work;
use crate::telemetry::emit;

/// How often each replica measures (the figures are the same on every replica).
const EVERY: Duration = Duration::from_secs(10);

impl Engine {
    pub(super) async fn monitor_loop(&self, shutdown: CancellationToken) {
        while !shutdown.is_cancelled() {
            if let Ok(backlog) = work::backlog(&self.pool).await {
                emit(BacklogMeasured {
                    backlog: &backlog,
                    now: self.clock.now(),
                });
            }
            if let Ok(at_risk) = self.jobs_at_risk().await {
                emit(JobsAtRisk(at_risk));
            }
            self.complete_orphans().await;
            self.expire_approvals().await;
            self.delete_old_before_images().await;
            self.idle(&shutdown, EVERY).await;
        }
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
                let available = if job.schedule == Some(Schedule::OffPeak) && !job.expedited {
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

    /// End the jobs that have waited for approval longer than `engine.approval.wait_seconds`:
    /// `rejected`, their items skipped with `awaiting_approval_expired`. Judged by the
    /// database's clock at approval time and this replica's when ending; a few seconds of skew
    /// matter nothing against a wait of hours.
    pub async fn expire_approvals(&self) {
        let wait = self.settings.approval.wait();
        let Ok(wait) = chrono::Duration::from_std(wait) else {
            return;
        };
        let before = chrono::Utc::now() - wait;
        let Ok(jobs) = work::approvals_expired(&self.pool, before).await else {
            return;
        };
        let reason = format!(
            "no approval within {} s (engine.approval.wait_seconds)",
            wait.num_seconds()
        );
        for job_id in jobs {
            match work::expire_approval(&self.pool, job_id, before, &reason).await {
                Ok(Some((job_type, outcome, counts))) => {
                    emit(ApprovalExpired { job_id });
                    emit(JobCompleted {
                        job_id,
                        job_type,
                        outcome,
                        counts: &counts,
                        failures: 0,
                    });
                }
                Ok(None) => {}
                Err(error) => tracing::warn!(%job_id, %error, "cannot end the job yet"),
            }
        }
    }

    /// Retention of before-images (`engine.revert.retention_days`): a job older than that can
    /// no longer be reverted. On every replica: the delete is idempotent and, by its index,
    /// touches only what is due.
    async fn delete_old_before_images(&self) {
        let before = chrono::Utc::now() - self.settings.revert.retention();
        match work::revert::delete_images_before(&self.pool, before).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "before-images past their retention deleted"),
            Err(error) => tracing::warn!(%error, "cannot delete old before-images yet"),
        }
    }

    /// Complete jobs whose last worker stopped between finishing their last chunk and
    /// completing them (a crash at that point must not leave a ticket open).
    async fn complete_orphans(&self) {
        let Ok(jobs) = work::uncompleted_done_jobs(&self.pool).await else {
            return;
        };
        for job_id in jobs {
            emit(OrphanCompleting { job_id });
            if let Err(error) = self.complete(job_id).await {
                tracing::warn!(%job_id, %error, "cannot complete the job yet");
            }
        }
    }
}

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

/// A job's claim on the write budget, for [`finish_times`].
#[derive(Debug, Clone, Copy)]
pub struct Demand<'a> {
    /// Its organisation (`jobs.fair_key`).
    pub key: &'a str,
    /// `jobs.priority`.
    pub priority: i16,
    /// Items left.
    pub remaining: u64,
}

/// Seconds from now until each job is done, at `rate` items a second shared as the claim
/// shares it (`store::work::claim_chunk`): a priority is served only when every higher one is
/// done; within one, the organisations with work left share the rate evenly, and each works
/// through its jobs smallest first. A model: the share is reached as chunks end, and a small
/// job (one chunk) starts at once rather than in its organisation's turn; both matter seconds
/// against a 24-hour target.
pub fn finish_times(jobs: &[Demand<'_>], rate: f64) -> Vec<f64> {
    let rate = rate.max(f64::MIN_POSITIVE);
    let mut finish = vec![0.0; jobs.len()];
    let mut priorities: Vec<i16> = jobs.iter().map(|j| j.priority).collect();
    priorities.sort_unstable_by(|a, b| b.cmp(a));
    priorities.dedup();
    let mut now = 0.0;
    for priority in priorities {
        // Per organisation, its jobs still to do, largest first (the smallest is popped).
        let mut queues: std::collections::BTreeMap<&str, Vec<(f64, usize)>> = Default::default();
        for (i, job) in jobs.iter().enumerate() {
            if job.priority != priority {
                continue;
            }
            if job.remaining == 0 {
                finish[i] = now;
            } else {
                queues
                    .entry(job.key)
                    .or_default()
                    .push((job.remaining as f64, i));
            }
        }
        for queue in queues.values_mut() {
            queue.sort_by(|a, b| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)));
        }
        queues.retain(|_, q| !q.is_empty());
        while !queues.is_empty() {
            let share = rate / queues.len() as f64;
            // Until the next job is done, each organisation's smallest job goes at `share`.
            let step = queues
                .values()
                .filter_map(|q| q.last())
                .map(|(left, _)| left / share)
                .fold(f64::INFINITY, f64::min);
            now += step;
            for queue in queues.values_mut() {
                if let Some(head) = queue.last_mut() {
                    head.0 -= step * share;
                    if head.0 <= 1e-9 * (1.0 + step * share) {
                        finish[head.1] = now;
                        queue.pop();
                    }
                }
            }
            queues.retain(|_, q| !q.is_empty());
        }
    }
    finish
}

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
    /// window time left before their deadline (off-peak jobs run only in windows), and the
    /// share of the budget each gets while others run ([`finish_times`]): a small job of one
    /// organisation is not at risk behind another's large one, and a large job sharing the
    /// budget with others' takes longer than it would alone.
    pub async fn jobs_at_risk(&self) -> Result<usize, EngineError> {
        let now = self.clock.now();
        let jobs = work::unfinished_jobs(&self.pool).await?;
        let demands: Vec<Demand<'_>> = jobs
            .iter()
            .map(|job| Demand {
                key: &job.fair_key,
                priority: job.priority,
                remaining: job.remaining.max(0) as u64,
            })
            .collect();
        let finish = finish_times(&demands, self.items_per_second);
        Ok(jobs
            .iter()
            .zip(finish)
            .filter(|(job, needed)| {
                let deadline = job.received_at + RESOLUTION_TARGET;
                let available = if job.schedule == Some(Schedule::OffPeak) && !job.expedited {
                    self.off_peak.open_between(now, deadline)
                } else {
                    (deadline - now).max(chrono::Duration::zero())
                };
                let needed = chrono::Duration::milliseconds((needed * 1000.0) as i64);
                needed > available || (job.remaining > 0 && available.is_zero())
            })
            .count())
    }

    /// End the jobs that have waited for approval longer than `engine.approval.wait_seconds`:
    /// `rejected`, their items skipped with `awaiting_approval_expired`. Judged by the
    /// database's clock, which also stamped when the wait began: one clock for every replica.
    pub async fn expire_approvals(&self) {
        let wait = self.settings.approval.wait();
        let Ok(jobs) = work::approvals_expired(&self.pool, wait).await else {
            return;
        };
        let reason = format!(
            "no approval within {} s (engine.approval.wait_seconds)",
            wait.as_secs()
        );
        for job_id in jobs {
            match work::expire_approval(&self.pool, job_id, wait, &reason).await {
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
        let retention = self.settings.revert.retention();
        match work::revert::delete_images_older_than(&self.pool, retention).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn demand(key: &str, remaining: u64) -> Demand<'_> {
        Demand {
            key,
            priority: 0,
            remaining,
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn a_job_alone_has_the_whole_budget() {
        let t = finish_times(&[demand("ods:RX1", 20_000)], 20.0);
        assert!(close(t[0], 1000.0), "{t:?}");
    }

    #[test]
    fn organisations_share_the_budget_and_a_small_ticket_is_not_held_behind_a_large_job() {
        // RX1's 100,000 users, RX2's 20: RX2 has half the budget while it has work.
        let jobs = [demand("ods:RX1", 100_000), demand("ods:RX2", 20)];
        let t = finish_times(&jobs, 20.0);
        assert!(close(t[1], 2.0), "{t:?}");
        // RX1 loses the 1 s RX2 took of the budget: all items at 20/s.
        assert!(close(t[0], 100_020.0 / 20.0), "{t:?}");
    }

    #[test]
    fn a_large_job_sharing_with_another_organisations_takes_longer_than_alone() {
        let jobs = [demand("ods:RX1", 10_000), demand("ods:RX2", 30_000)];
        let t = finish_times(&jobs, 20.0);
        // Both at 10/s until RX1's is done (1,000 s), then RX2's alone at 20/s.
        assert!(close(t[0], 1000.0), "{t:?}");
        assert!(close(t[1], 1000.0 + 20_000.0 / 20.0), "{t:?}");
    }

    #[test]
    fn within_an_organisation_the_smaller_job_goes_first() {
        let jobs = [
            demand("ods:RX1", 5_000),
            demand("ods:RX1", 100),
            demand("ods:RX2", 1_000),
        ];
        let t = finish_times(&jobs, 10.0);
        // RX1's 100 and RX2's share: 100 at 5/s = 20 s.
        assert!(close(t[1], 20.0), "{t:?}");
        // RX2's 1,000 at 5/s while RX1 has work: 200 s.
        assert!(close(t[2], 200.0), "{t:?}");
        // RX1's 5,000 after its 100: 6,100 items in all at 10/s.
        assert!(close(t[0], 610.0), "{t:?}");
    }

    #[test]
    fn low_priority_work_waits_for_everything_else() {
        let jobs = [
            Demand {
                key: "job:sweep",
                priority: -1,
                remaining: 1_000,
            },
            demand("ods:RX1", 2_000),
            demand("ods:RX2", 0),
        ];
        let t = finish_times(&jobs, 20.0);
        assert!(close(t[2], 0.0), "{t:?}");
        assert!(close(t[1], 100.0), "{t:?}");
        assert!(close(t[0], 150.0), "{t:?}");
    }
}

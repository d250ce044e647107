//! `jobs list`, `jobs show` and the operator controls `pause`, `resume`, `expedite`,
//! `cancel` and `approve` (each with `--by` and `--reason`, recorded with the time): the
//! operator's arguments in, plain text out. The reads and writes themselves are
//! the store's ([`views`], [`controls`]), which the engine honours.
//!
//! A job is named by its `id` (a UUID) or by its `message_id`, whichever the operator has
//! (the ticket shows the latter).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use super::{OpsError, table};
use crate::store::work::controls::{self, ControlError};
use crate::store::work::revert as revert_store;
use crate::store::work::views::{self, Listed};
use crate::store::work::{JobRef, JobState};

pub use crate::store::work::controls::{
    CANCELLED_BY_OPERATOR, CancelReport, Operator, OperatorAction,
};
pub use crate::store::work::revert::{RevertRefused, RevertRequested};
pub use crate::store::work::views::{ChunkCounts, FailureRow, ItemCounts, JobDetail};

/// Failures `jobs show` lists; the rest are counted.
pub const FAILURES_SHOWN: i64 = 50;

/// Which jobs `jobs list` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    Received,
    Accepted,
    Running,
    Completed,
    /// Every state but `completed`.
    Unfinished,
}

impl StateFilter {
    fn listed(self) -> Listed {
        match self {
            Self::Received => Listed::In(JobState::Received),
            Self::Accepted => Listed::In(JobState::Accepted),
            Self::Running => Listed::In(JobState::Running),
            Self::Completed => Listed::In(JobState::Completed),
            Self::Unfinished => Listed::Unfinished,
        }
    }
}

/// One job, by id or `message_id`, with at most [`FAILURES_SHOWN`] failures listed.
pub async fn show(pool: &PgPool, job: &str) -> Result<JobDetail, OpsError> {
    views::detail(pool, JobRef::parse(job), FAILURES_SHOWN)
        .await?
        .ok_or_else(|| not_found(job))
}

/// What a control did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlReport {
    pub id: Uuid,
    pub message_id: String,
    /// `paused`, `resumed`, `expedited`, `approved`.
    pub action: &'static str,
    /// For `expedite`: chunks made claimable now.
    pub chunks_rescheduled: Option<u64>,
    /// The job still waits for approval: the control does not go round it.
    pub awaiting_approval: bool,
}

/// `paused = true`: the engine claims no new chunk of the job (chunks running finish).
pub async fn pause(
    pool: &PgPool,
    job: &str,
    operator: &Operator<'_>,
) -> Result<ControlReport, OpsError> {
    set_paused(pool, job, true, operator).await
}

/// `paused = false`.
pub async fn resume(
    pool: &PgPool,
    job: &str,
    operator: &Operator<'_>,
) -> Result<ControlReport, OpsError> {
    set_paused(pool, job, false, operator).await
}

async fn set_paused(
    pool: &PgPool,
    job: &str,
    paused: bool,
    operator: &Operator<'_>,
) -> Result<ControlReport, OpsError> {
    let controlled = controls::set_paused(pool, JobRef::parse(job), paused, operator)
        .await
        .map_err(|e| refused(job, e))?;
    Ok(ControlReport {
        id: controlled.id,
        message_id: controlled.message_id,
        action: if paused { "paused" } else { "resumed" },
        chunks_rescheduled: None,
        awaiting_approval: controlled.awaiting_approval,
    })
}

/// `expedited = true`, and every chunk not done claimable now: the job runs at once,
/// outside the off-peak windows.
pub async fn expedite(
    pool: &PgPool,
    job: &str,
    operator: &Operator<'_>,
) -> Result<ControlReport, OpsError> {
    let (controlled, rescheduled) = controls::expedite(pool, JobRef::parse(job), operator)
        .await
        .map_err(|e| refused(job, e))?;
    Ok(ControlReport {
        id: controlled.id,
        message_id: controlled.message_id,
        action: "expedited",
        chunks_rescheduled: Some(rescheduled),
        awaiting_approval: controlled.awaiting_approval,
    })
}

/// Approve a job awaiting approval (guard rails on large changes): it runs as planned.
pub async fn approve(
    pool: &PgPool,
    job: &str,
    operator: &Operator<'_>,
) -> Result<ControlReport, OpsError> {
    let controlled = controls::approve(pool, JobRef::parse(job), operator)
        .await
        .map_err(|e| refused(job, e))?;
    Ok(ControlReport {
        id: controlled.id,
        message_id: controlled.message_id,
        action: "approved",
        chunks_rescheduled: None,
        awaiting_approval: false,
    })
}

/// Cancel an unfinished job: its open items are skipped and it completes at once, with one
/// `job.completed` (see [`controls::cancel`]).
pub async fn cancel(
    pool: &PgPool,
    job: &str,
    operator: &Operator<'_>,
) -> Result<CancelReport, OpsError> {
    controls::cancel(pool, JobRef::parse(job), operator)
        .await
        .map_err(|e| refused(job, e))
}

/// Revert a completed policy job (contract 1.1, "Revert"): stores a new job that restores,
/// for every user the job changed, the licences and disabled plans of before; the action is
/// recorded on both jobs. Refused, with the reason, for a job not completed, a dry run, a job
/// that changed nothing, one that is not a policy job, or one whose before-images are gone.
pub async fn revert(
    pool: &PgPool,
    job: &str,
    operator: &Operator<'_>,
) -> Result<RevertRequested, OpsError> {
    match revert_store::request(pool, JobRef::parse(job), operator).await {
        Ok(Ok(requested)) => Ok(requested),
        Ok(Err(refused)) => Err(OpsError::Invalid(format!(
            "job {job} cannot be reverted: {refused}"
        ))),
        Err(error) => Err(refused(job, error)),
    }
}

/// What `revert` prints.
pub fn render_revert(r: &RevertRequested) -> String {
    format!(
        "job {} (message_id {}) will revert job {} (message_id {}): {} item(s) to restore
         its job.completed carries subject.reverts = {}
",
        r.id, r.message_id, r.reverts, r.reverts_message_id, r.items, r.reverts
    )
}

/// The operator's error for a control that changed nothing, naming the job as they typed it.
fn refused(job: &str, error: ControlError) -> OpsError {
    match error {
        ControlError::NotFound => not_found(job),
        ControlError::AlreadyCompleted => OpsError::AlreadyCompleted(job.to_owned()),
        ControlError::NotAwaitingApproval => {
            OpsError::Invalid(format!("job {job} is not awaiting approval"))
        }
        ControlError::MissingOperator(flag) => {
            OpsError::Invalid(format!("{flag} must not be empty"))
        }
        ControlError::Store(error) => OpsError::Store(error),
    }
}

fn not_found(job: &str) -> OpsError {
    OpsError::NotFound(format!("no job has the id or message_id {job:?}"))
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_else(|| "-".into())
}

fn progress(done: i64, total: Option<i64>) -> String {
    match total {
        Some(total) => format!("{done}/{total}"),
        None => "-".into(),
    }
}

/// `jobs show` as text.
pub fn render_detail(job: &JobDetail) -> String {
    let or_dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
    // `tenant_access_lost (credential) since …: detail`.
    let held = |h: Option<&serde_json::Value>| {
        h.map_or_else(
            || "-".to_owned(),
            |h| {
                let f = |k: &str| h.get(k).and_then(|v| v.as_str()).unwrap_or("?");
                format!(
                    "{} ({}) since {}: {}",
                    f("code"),
                    f("reason"),
                    f("since"),
                    f("detail")
                )
            },
        )
    };
    let yes_no = |b: bool| if b { "yes" } else { "no" }.to_owned();
    let fields: Vec<Vec<String>> = [
        ("id", job.id.to_string()),
        ("message_id", job.message_id.clone()),
        ("type", or_dash(&job.job_type)),
        ("state", job.state.as_str().to_owned()),
        ("outcome", or_dash(&job.outcome)),
        ("progress", progress(job.done, job.total)),
        ("dry run", yes_no(job.dry_run)),
        ("paused", yes_no(job.paused)),
        ("expedited", yes_no(job.expedited)),
        ("ended early", or_dash(&job.ended_early)),
        ("held", held(job.held.as_ref())),
        (
            "awaiting approval",
            job.awaiting_approval
                .as_ref()
                .map(|a| {
                    format!(
                        "since {}: effect {}, threshold {}",
                        a.get("since").and_then(Value::as_str).unwrap_or("?"),
                        a.get("effect").map(Value::to_string).unwrap_or_default(),
                        a.get("threshold").map(Value::to_string).unwrap_or_default(),
                    )
                })
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "schedule",
            or_dash(&job.schedule.map(|s| s.as_str().to_owned())),
        ),
        ("earliest start", opt_time(job.earliest_start)),
        ("received", time(job.received_at)),
        ("accepted", opt_time(job.accepted_at)),
        ("started", opt_time(job.started_at)),
        ("completed", opt_time(job.completed_at)),
        (
            "ticket",
            job.ticket
                .as_ref()
                .map(|t| format!("{} ({})", t.reference, t.originator))
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "subject",
            job.subject
                .as_ref()
                .map(Value::to_string)
                .unwrap_or_else(|| "-".into()),
        ),
        (
            "items",
            format!(
                "changed {}, already compliant {}, failed {}, skipped {}, pending {}",
                job.items.changed,
                job.items.already_compliant,
                job.items.failed,
                job.items.skipped,
                job.items.pending
            ),
        ),
        (
            "chunks",
            format!(
                "pending {}, running {}, done {}",
                job.chunks.pending, job.chunks.running, job.chunks.done
            ),
        ),
    ]
    .into_iter()
    .map(|(k, v)| vec![format!("{k}:"), v])
    .collect();
    // Two columns without a header line: the field names are the first column.
    let mut out = table::render(&["", ""], &fields)
        .split_once('\n')
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_default();
    if !job.operator_actions.is_empty() {
        out.push_str("\noperator actions:\n");
        let rows: Vec<Vec<String>> = job
            .operator_actions
            .iter()
            .map(|a| vec![time(a.at), a.action.clone(), a.by.clone(), a.reason.clone()])
            .collect();
        out.push_str(&table::render(&["AT", "ACTION", "BY", "REASON"], &rows));
    }
    if !job.failures.is_empty() {
        out.push_str("\nfailures:\n");
        let rows: Vec<Vec<String>> = job
            .failures
            .iter()
            .map(|f| vec![f.item.clone(), f.code.clone(), or_dash(&f.detail)])
            .collect();
        out.push_str(&table::render(&["ITEM", "CODE", "DETAIL"], &rows));
        if job.more_failures > 0 {
            out.push_str(&format!("… and {} more\n", job.more_failures));
        }
    }
    out
}

/// What `pause`, `resume` and `expedite` print.
pub fn render_control(report: &ControlReport) -> String {
    let mut out = format!(
        "job {} (message_id {}) {}",
        report.id, report.message_id, report.action
    );
    if let Some(n) = report.chunks_rescheduled {
        out.push_str(&format!("; {n} chunk(s) claimable now"));
    }
    if report.awaiting_approval {
        out.push_str(&format!(
            "; it still waits for approval, which {} does not go round: \
             `jobs approve {} --by NAME --reason TEXT` runs it, `jobs cancel` ends it",
            report.action, report.id
        ));
    }
    out.push('\n');
    out
}

/// What `cancel` prints.
pub fn render_cancel(report: &CancelReport) -> String {
    let mut out = format!(
        "job {} (message_id {}) cancelled (was {}): {} item(s) skipped, {} chunk(s) closed\n",
        report.id,
        report.message_id,
        report.previous_state.as_str(),
        report.items_skipped,
        report.chunks_closed,
    );
    match &report.completed {
        Some((outcome, c)) => out.push_str(&format!(
            "completed {}: total {}, changed {}, already compliant {}, failed {}, skipped {}\n\
             job.completed queued in the outbox\n",
            outcome.as_str(),
            c.total,
            c.changed,
            c.already_compliant,
            c.failed,
            c.skipped,
        )),
        None => out.push_str(&format!(
            "{} chunk(s) still running stop at their next write batch and record what they \
             wrote; the job completes then (job.completed counts every write made)\n",
            report.chunks_running
        )),
    }
    out
}

/// An operator action, by its name in the command line, the API and the console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Pause,
    Resume,
    Expedite,
    Cancel,
    Approve,
    /// Of a completed policy job: a new job restores its before-images (see [`revert`]).
    Revert,
}

impl Action {
    pub const ALL: [Self; 6] = [
        Self::Pause,
        Self::Resume,
        Self::Expedite,
        Self::Cancel,
        Self::Approve,
        Self::Revert,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pause => "pause",
            Self::Resume => "resume",
            Self::Expedite => "expedite",
            Self::Cancel => "cancel",
            Self::Approve => "approve",
            Self::Revert => "revert",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// What an action did.
#[derive(Debug, Clone)]
pub enum ActionReport {
    Control(ControlReport),
    Cancel(CancelReport),
    Revert(RevertRequested),
}

/// Apply `action` to `job` as `operator`: the one path of `jobs pause|resume|…`, the API
/// and the console. Each records who, when and why (`job_operator_actions`).
pub async fn act(
    pool: &PgPool,
    job: &str,
    action: Action,
    operator: &Operator<'_>,
) -> Result<ActionReport, OpsError> {
    Ok(match action {
        Action::Pause => ActionReport::Control(pause(pool, job, operator).await?),
        Action::Resume => ActionReport::Control(resume(pool, job, operator).await?),
        Action::Expedite => ActionReport::Control(expedite(pool, job, operator).await?),
        Action::Approve => ActionReport::Control(approve(pool, job, operator).await?),
        Action::Cancel => ActionReport::Cancel(cancel(pool, job, operator).await?),
        Action::Revert => ActionReport::Revert(revert(pool, job, operator).await?),
    })
}

/// What `jobs pause|resume|expedite|cancel|approve` prints.
pub fn render_action(report: &ActionReport) -> String {
    match report {
        ActionReport::Control(report) => render_control(report),
        ActionReport::Cancel(report) => render_cancel(report),
        ActionReport::Revert(report) => render_revert(report),
    }
}

pub use crate::store::work::browse::{Flag, JobFilter, JobRow};

/// A page of jobs matching `filter` (`page` from 1), and whether more follow: `jobs list`
/// and the console's job list alike.
pub async fn search(
    pool: &PgPool,
    filter: &JobFilter,
    page: u32,
    per_page: u32,
) -> Result<(Vec<JobRow>, bool), OpsError> {
    let per_page = per_page.clamp(1, 500);
    let offset = page.max(1).saturating_sub(1).saturating_mul(per_page);
    Ok(crate::store::work::browse::jobs(pool, filter, offset, per_page).await?)
}

/// The filter `jobs list` and the console build from a state name.
pub fn listed(state: Option<StateFilter>) -> Option<Listed> {
    state.map(StateFilter::listed)
}

/// `jobs list` as a table (the rows of [`search`]).
pub fn render_rows(jobs: &[JobRow], more: bool) -> String {
    if jobs.is_empty() {
        return "no jobs\n".into();
    }
    let rows: Vec<Vec<String>> = jobs
        .iter()
        .map(|j| {
            let flags: Vec<&str> = [
                (j.paused, "paused"),
                (j.expedited, "expedited"),
                (j.dry_run, "dry-run"),
                (j.held, "held"),
                (j.awaiting_approval, "awaiting-approval"),
            ]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
            vec![
                j.id.to_string(),
                j.job_type.clone().unwrap_or_else(|| "-".into()),
                j.state.clone(),
                j.outcome.clone().unwrap_or_else(|| "-".into()),
                progress(j.done, j.total),
                j.ticket_reference.clone().unwrap_or_else(|| "-".into()),
                time(j.received_at),
                flags.join(","),
            ]
        })
        .collect();
    let mut out = table::render(
        &[
            "ID", "TYPE", "STATE", "OUTCOME", "PROGRESS", "TICKET", "RECEIVED", "FLAGS",
        ],
        &rows,
    );
    if more {
        out.push_str("… more on the next page (--page)\n");
    }
    out
}

/// Follow a job until it completes, drawing a progress bar on the terminal (none when
/// standard error is not one); returns the completed job.
pub async fn watch(
    pool: &PgPool,
    job: &str,
    every: std::time::Duration,
) -> Result<JobDetail, OpsError> {
    use indicatif::{ProgressBar, ProgressStyle};
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} items ({per_sec}, eta {eta}) {msg}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    loop {
        let detail = show(pool, job).await?;
        if let Some(total) = detail.total {
            bar.set_length(total.max(0) as u64);
        }
        bar.set_position(detail.done.max(0) as u64);
        let mut message = detail.state.as_str().to_owned();
        if detail.paused {
            message.push_str(", paused");
        }
        if detail.items.failed > 0 {
            message.push_str(&format!(", {} failed", detail.items.failed));
        }
        bar.set_message(message);
        if detail.state == JobState::Completed {
            bar.finish_with_message(format!(
                "completed: {}",
                detail.outcome.as_deref().unwrap_or("-")
            ));
            return Ok(detail);
        }
        tokio::time::sleep(every).await;
    }
}

/// The line `jobs watch` ends with.
pub fn render_watched(job: &JobDetail) -> String {
    format!(
        "job {} (message_id {}) completed {}: changed {}, already compliant {}, failed {}, \
         skipped {}\n",
        job.id,
        job.message_id,
        job.outcome.as_deref().unwrap_or("-"),
        job.items.changed,
        job.items.already_compliant,
        job.items.failed,
        job.items.skipped,
    )
}

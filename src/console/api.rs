//! The JSON API, `/api/v1` (every route needs a credential, see [`super::auth`]):
//!
//! | route | what |
//! |---|---|
//! | `GET /api/v1/openapi.yaml` | this API's OpenAPI 3.1 document (`contract/console-api.openapi.yaml`) |
//! | `GET /api/v1/whoami` | the caller's name and role |
//! | `GET /api/v1/overview` | unfinished jobs, jobs at risk, dead letters, write budget, drift found by sweeps |
//! | `GET /api/v1/jobs?state&type&outcome&ods&flag&q&page&per_page` | jobs, newest first |
//! | `GET /api/v1/jobs/{job}` | one job (id or message_id): counts, progress, failure codes, operator actions |
//! | `GET /api/v1/jobs/{job}/items?outcome&code&after&limit` | its items with outcomes and codes (keyset pages) |
//! | `GET /api/v1/jobs/{job}/failures.csv?code` | its failures as CSV (`item,code,detail`) |
//! | `GET /api/v1/jobs/{job}/chunks?after&limit` | its chunks |
//! | `GET /api/v1/jobs/{job}/events` | the events it published |
//! | `POST /api/v1/jobs/{job}/actions` `{"action", "reason"}` | pause, resume, expedite, cancel, approve, revert (operators) |
//! | `GET /api/v1/users/{email}/jobs` | every job that touched an address |

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::auth::{CSRF_HEADER, Identity};
use super::{Console, ConsoleError, ProgressInput, progress};
use crate::ops::{self, Action, ActionReport, Flag, JobDetail, JobFilter, JobRow, Operator};
use crate::store::work::JobRef;
use crate::store::work::browse::{self, ItemFilter};
use crate::store::work::views::Listed;

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/api/v1/openapi.yaml", get(openapi))
        .route("/api/v1/whoami", get(whoami))
        .route("/api/v1/overview", get(overview))
        .route("/api/v1/jobs", get(jobs))
        .route("/api/v1/jobs/{job}", get(job))
        .route("/api/v1/jobs/{job}/items", get(items))
        .route("/api/v1/jobs/{job}/failures.csv", get(failures_csv))
        .route("/api/v1/jobs/{job}/chunks", get(chunks))
        .route("/api/v1/jobs/{job}/events", get(events))
        .route("/api/v1/jobs/{job}/actions", post(act))
        .route("/api/v1/users/{email}/jobs", get(user_jobs))
}

/// The job list's query, shared with the page.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JobsQuery {
    pub state: Option<String>,
    #[serde(rename = "type")]
    pub job_type: Option<String>,
    pub outcome: Option<String>,
    pub ods: Option<String>,
    pub flag: Option<String>,
    pub q: Option<String>,
    pub page: Option<u32>,
    pub per_page: Option<u32>,
}

fn some(value: &Option<String>) -> Option<String> {
    value
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
}

impl JobsQuery {
    pub fn filter(&self) -> Result<JobFilter, ConsoleError> {
        let state = match some(&self.state).as_deref() {
            None | Some("all") => None,
            Some("unfinished") => Some(Listed::Unfinished),
            Some(label) => Some(Listed::In(
                crate::store::work::JobState::ALL
                    .into_iter()
                    .find(|s| s.as_str() == label)
                    .ok_or_else(|| bad(format!("unknown state {label:?}")))?,
            )),
        };
        let flag = match some(&self.flag) {
            None => None,
            Some(label) => {
                Some(Flag::parse(&label).ok_or_else(|| bad(format!("unknown flag {label:?}")))?)
            }
        };
        Ok(JobFilter {
            state,
            job_type: some(&self.job_type),
            outcome: some(&self.outcome),
            ods_code: some(&self.ods),
            flag,
            search: some(&self.q),
        })
    }

    pub fn page(&self) -> u32 {
        self.page.unwrap_or(1).max(1)
    }

    pub fn per_page(&self) -> u32 {
        self.per_page.unwrap_or(50).clamp(1, 500)
    }
}

fn bad(message: String) -> ConsoleError {
    ConsoleError::new(StatusCode::BAD_REQUEST, message)
}

/// This API's OpenAPI document ([`crate::contract::CONSOLE_OPENAPI`]).
async fn openapi(_who: Identity) -> Response {
    (
        [(header::CONTENT_TYPE, "application/yaml")],
        crate::contract::CONSOLE_OPENAPI,
    )
        .into_response()
}

async fn whoami(who: Identity) -> Json<Value> {
    Json(json!({ "name": who.name, "role": who.role.as_str() }))
}

/// A job row with its progress, as the API gives it.
pub fn row_json(row: &JobRow, now: chrono::DateTime<chrono::Utc>) -> Value {
    let mut value = serde_json::to_value(row).unwrap_or_default();
    value["progress"] = serde_json::to_value(row_progress(row, now)).unwrap_or_default();
    value
}

pub fn row_progress(row: &JobRow, now: chrono::DateTime<chrono::Utc>) -> super::Progress {
    progress(
        ProgressInput {
            completed: row.state == "completed",
            done: row.done,
            total: row.total,
            received_at: row.received_at,
            started_at: row.started_at,
            completed_at: row.completed_at,
        },
        now,
    )
}

async fn jobs(
    _who: Identity,
    State(console): State<Console>,
    Query(query): Query<JobsQuery>,
) -> Result<Json<Value>, ConsoleError> {
    let (rows, more) = ops::search(
        &console.pool,
        &query.filter()?,
        query.page(),
        query.per_page(),
    )
    .await?;
    let now = chrono::Utc::now();
    Ok(Json(json!({
        "jobs": rows.iter().map(|r| row_json(r, now)).collect::<Vec<_>>(),
        "page": query.page(),
        "per_page": query.per_page(),
        "more": more,
    })))
}

/// Everything the job page shows above its tables.
pub struct JobView {
    pub detail: JobDetail,
    pub progress: super::Progress,
    pub failure_codes: Vec<(String, i64)>,
}

pub async fn job_view(console: &Console, job: &str) -> Result<JobView, ConsoleError> {
    // No failures listed here: the failures table pages through them itself.
    let detail = crate::store::work::views::detail(&console.pool, JobRef::parse(job), 0)
        .await?
        .ok_or_else(|| {
            ConsoleError::not_found(format!("no job has the id or message_id {job:?}"))
        })?;
    let progress = progress(
        ProgressInput {
            completed: detail.state == crate::store::work::JobState::Completed,
            done: detail.done,
            total: detail.total,
            received_at: detail.received_at,
            started_at: detail.started_at,
            completed_at: detail.completed_at,
        },
        chrono::Utc::now(),
    );
    let failure_codes = browse::failure_codes(&console.pool, detail.id).await?;
    Ok(JobView {
        detail,
        progress,
        failure_codes,
    })
}

pub fn detail_json(view: &JobView) -> Value {
    let d = &view.detail;
    json!({
        "id": d.id,
        "message_id": d.message_id,
        "job_type": d.job_type,
        "state": d.state.as_str(),
        "outcome": d.outcome,
        "dry_run": d.dry_run,
        "paused": d.paused,
        "expedited": d.expedited,
        "ended_early": d.ended_early,
        "held": d.held,
        "awaiting_approval": d.awaiting_approval,
        "schedule": d.schedule.map(|s| s.as_str()),
        "earliest_start": d.earliest_start,
        "received_at": d.received_at,
        "accepted_at": d.accepted_at,
        "started_at": d.started_at,
        "completed_at": d.completed_at,
        "ticket": d.ticket.as_ref().map(|t| json!({ "reference": t.reference, "originator": t.originator })),
        "subject": d.subject,
        "total": d.total,
        "done": d.done,
        "items": {
            "changed": d.items.changed,
            "already_compliant": d.items.already_compliant,
            "failed": d.items.failed,
            "skipped": d.items.skipped,
            "pending": d.items.pending,
        },
        "chunks": { "pending": d.chunks.pending, "running": d.chunks.running, "done": d.chunks.done },
        "failure_codes": view.failure_codes.iter().map(|(code, n)| json!({ "code": code, "count": n })).collect::<Vec<_>>(),
        "operator_actions": d.operator_actions,
        "progress": view.progress,
    })
}

async fn job(
    _who: Identity,
    State(console): State<Console>,
    Path(job): Path<String>,
) -> Result<Json<Value>, ConsoleError> {
    Ok(Json(detail_json(&job_view(&console, &job).await?)))
}

pub async fn resolve(console: &Console, job: &str) -> Result<Uuid, ConsoleError> {
    browse::resolve(&console.pool, JobRef::parse(job))
        .await?
        .ok_or_else(|| ConsoleError::not_found(format!("no job has the id or message_id {job:?}")))
}

#[derive(Debug, Default, Deserialize)]
pub struct ItemsQuery {
    pub outcome: Option<String>,
    pub code: Option<String>,
    pub after: Option<i32>,
    pub limit: Option<u32>,
}

impl ItemsQuery {
    pub fn filter(&self) -> ItemFilter {
        ItemFilter {
            outcome: some(&self.outcome),
            code: some(&self.code),
        }
    }
}

async fn items(
    _who: Identity,
    State(console): State<Console>,
    Path(job): Path<String>,
    Query(query): Query<ItemsQuery>,
) -> Result<Json<Value>, ConsoleError> {
    let id = resolve(&console, &job).await?;
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let rows = browse::items(
        &console.pool,
        id,
        &query.filter(),
        query.after.unwrap_or(-1),
        limit,
    )
    .await?;
    let next_after = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.seq))
        .flatten();
    Ok(Json(json!({ "items": rows, "next_after": next_after })))
}

/// A job's failures (those with `code`, or all) as CSV: `item,code,detail`, in plan order;
/// with the file's name.
pub async fn failures_csv_of(
    console: &Console,
    job: &str,
    code: Option<String>,
) -> Result<(String, String), ConsoleError> {
    let id = resolve(console, job).await?;
    let filter = ItemFilter {
        outcome: Some("failed".into()),
        code,
    };
    let mut out = String::from("item,code,detail\r\n");
    let mut after = -1;
    loop {
        let rows = browse::items(&console.pool, id, &filter, after, 5_000).await?;
        for row in &rows {
            out.push_str(&csv_field(&row.item));
            out.push(',');
            out.push_str(&csv_field(row.code.as_deref().unwrap_or("")));
            out.push(',');
            out.push_str(&csv_field(row.detail.as_deref().unwrap_or("")));
            out.push_str("\r\n");
        }
        match rows.last() {
            Some(last) if rows.len() == 5_000 => after = last.seq,
            _ => break,
        }
    }
    Ok((format!("{id}-failures.csv"), out))
}

/// RFC 4180 quoting; a cell that a spreadsheet would run as a formula gets a leading `'`.
fn csv_field(value: &str) -> String {
    let value = if value.starts_with(['=', '+', '-', '@']) {
        format!("'{value}")
    } else {
        value.to_owned()
    };
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value
    }
}

pub fn csv_response(file: String, body: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8".to_owned()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            ),
        ],
        body,
    )
        .into_response()
}

#[derive(Debug, Default, Deserialize)]
pub struct CodeQuery {
    pub code: Option<String>,
}

async fn failures_csv(
    _who: Identity,
    State(console): State<Console>,
    Path(job): Path<String>,
    Query(query): Query<CodeQuery>,
) -> Result<Response, ConsoleError> {
    let (file, body) = failures_csv_of(&console, &job, some(&query.code)).await?;
    Ok(csv_response(file, body))
}

#[derive(Debug, Default, Deserialize)]
struct ChunksQuery {
    after: Option<i32>,
    limit: Option<u32>,
}

async fn chunks(
    _who: Identity,
    State(console): State<Console>,
    Path(job): Path<String>,
    Query(query): Query<ChunksQuery>,
) -> Result<Json<Value>, ConsoleError> {
    let id = resolve(&console, &job).await?;
    let limit = query.limit.unwrap_or(200).clamp(1, 1000);
    let rows = browse::chunks(&console.pool, id, query.after.unwrap_or(-1), limit).await?;
    let next_after = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.chunk))
        .flatten();
    Ok(Json(json!({ "chunks": rows, "next_after": next_after })))
}

async fn events(
    _who: Identity,
    State(console): State<Console>,
    Path(job): Path<String>,
) -> Result<Json<Value>, ConsoleError> {
    let id = resolve(&console, &job).await?;
    let rows = browse::events(&console.pool, id, 1000).await?;
    Ok(Json(json!({ "events": rows })))
}

#[derive(Debug, Deserialize)]
struct ActionBody {
    action: String,
    #[serde(default)]
    reason: String,
}

/// Check that `who` may act, and act: the path of the API and the console's forms.
pub async fn perform(
    console: &Console,
    who: &Identity,
    job: &str,
    action: &str,
    reason: &str,
    csrf: Option<&str>,
) -> Result<ActionReport, ConsoleError> {
    if !who.is_operator() {
        tracing::warn!(user = %who.name, job, action, "operator action refused: read-only user");
        return Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            format!("{} may read but not act (role reader)", who.name),
        ));
    }
    if !who.csrf_ok(csrf) {
        tracing::warn!(user = %who.name, job, action, "operator action refused: CSRF token");
        return Err(ConsoleError::new(
            StatusCode::FORBIDDEN,
            "missing or wrong CSRF token; reload the page and try again",
        ));
    }
    let action = Action::parse(action).ok_or_else(|| bad(format!("unknown action {action:?}")))?;
    if reason.trim().is_empty() {
        return Err(bad("a reason is required".into()));
    }
    let report = ops::act(
        &console.pool,
        job,
        action,
        &Operator {
            by: &who.name,
            reason: reason.trim(),
        },
    )
    .await?;
    tracing::info!(user = %who.name, job, action = action.as_str(), reason, "operator action");
    Ok(report)
}

async fn act(
    who: Identity,
    State(console): State<Console>,
    Path(job): Path<String>,
    headers: HeaderMap,
    Json(body): Json<ActionBody>,
) -> Result<Json<Value>, ConsoleError> {
    let csrf = headers.get(CSRF_HEADER).and_then(|v| v.to_str().ok());
    let report = perform(&console, &who, &job, &body.action, &body.reason, csrf).await?;
    Ok(Json(match report {
        ActionReport::Control(c) => json!({
            "id": c.id, "message_id": c.message_id, "action": c.action,
            "chunks_rescheduled": c.chunks_rescheduled,
            "awaiting_approval": c.awaiting_approval, "by": who.name,
        }),
        ActionReport::Cancel(c) => json!({
            "id": c.id, "message_id": c.message_id, "action": "cancelled",
            "items_skipped": c.items_skipped, "chunks_closed": c.chunks_closed,
            "chunks_running": c.chunks_running,
            "completed": c.completed.as_ref().map(|(outcome, _)| outcome.as_str()),
            "by": who.name,
        }),
        ActionReport::Revert(r) => json!({
            "id": r.reverts, "message_id": r.reverts_message_id, "action": "revert",
            "revert_job": r.id, "revert_message_id": r.message_id, "items": r.items,
            "by": who.name,
        }),
    }))
}

async fn user_jobs(
    _who: Identity,
    State(console): State<Console>,
    Path(email): Path<String>,
) -> Result<Json<Value>, ConsoleError> {
    let rows = browse::user_jobs(&console.pool, &email, 500).await?;
    Ok(Json(json!({ "address": email, "jobs": rows })))
}

/// The overview: unfinished jobs (at most 200), those at risk, dead letters, write budget.
pub struct OverviewView {
    pub unfinished: Vec<JobRow>,
    pub more_unfinished: bool,
    pub at_risk: Vec<JobRow>,
    pub figures: browse::OverviewFigures,
}

pub async fn overview_view(console: &Console) -> Result<OverviewView, ConsoleError> {
    let filter = JobFilter {
        state: Some(Listed::Unfinished),
        ..JobFilter::default()
    };
    let (unfinished, more_unfinished) = ops::search(&console.pool, &filter, 1, 200).await?;
    let now = chrono::Utc::now();
    let at_risk = unfinished
        .iter()
        .filter(|r| row_progress(r, now).at_risk)
        .cloned()
        .collect();
    Ok(OverviewView {
        unfinished,
        more_unfinished,
        at_risk,
        figures: browse::overview_figures(&console.pool).await?,
    })
}

async fn overview(
    _who: Identity,
    State(console): State<Console>,
) -> Result<Json<Value>, ConsoleError> {
    let view = overview_view(&console).await?;
    let now = chrono::Utc::now();
    Ok(Json(json!({
        "unfinished": view.unfinished.iter().map(|r| row_json(r, now)).collect::<Vec<_>>(),
        "more_unfinished": view.more_unfinished,
        "at_risk": view.at_risk.iter().map(|r| row_json(r, now)).collect::<Vec<_>>(),
        "dead_letters": view.figures.dead_letters,
        "dead_letters_24h": view.figures.dead_letters_24h,
        "write_budget": view.figures.write_budget,
        "drift": view.figures.drift,
    })))
}

//! The console's pages, rendered on the server (maud), working without JavaScript but for
//! the live progress (htmx polls `/console/jobs/{job}/progress` every second until the job
//! completes). Each page reads what it shows in a few indexed, paged queries.
//!
//! | page | what |
//! |---|---|
//! | `/console` | overview: unfinished jobs, jobs at risk, dead letters, write budget, drift found by sweeps |
//! | `/console/jobs` | jobs by state, type, outcome, ODS code, flag; search; pages |
//! | `/console/jobs/{job}` | progress, target, counts, chunks, actions, failures, events |
//! | `/console/users?email=` | every job that touched an address |

use axum::Router;
use axum::extract::{Form, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::get;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde::Deserialize;

use super::api::{
    CodeQuery, ItemsQuery, JobView, JobsQuery, csv_response, failures_csv_of, job_view,
    overview_view, perform, resolve, row_progress,
};
use super::auth::{self, Identity};
use super::{Console, ConsoleError, Progress};
use crate::ops::{self, JobRow};
use crate::store::work::browse;

const HTMX: &str = include_str!("assets/htmx.min.js");

/// Failures listed on one page of the job page's table.
const FAILURES_PER_PAGE: u32 = 100;

pub fn routes() -> Router<Console> {
    Router::new()
        .route("/console", get(overview))
        .route("/console/", get(overview))
        .route("/console/assets/htmx.min.js", get(htmx))
        .route("/console/login", get(login_form).post(login))
        .route("/console/logout", axum::routing::post(logout))
        .route("/console/jobs", get(jobs))
        .route("/console/jobs/{job}", get(job).post(act))
        .route("/console/jobs/{job}/progress", get(progress_fragment))
        .route("/console/jobs/{job}/failures.csv", get(failures_csv))
        .route("/console/users", get(user))
}

/// A page error as HTML.
struct PageError(ConsoleError);

impl From<ConsoleError> for PageError {
    fn from(error: ConsoleError) -> Self {
        Self(error)
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        let body = layout(
            "Error",
            None,
            html! { h1 { "Error " (self.0.status.as_u16()) } p.error { (self.0.message) } },
        );
        (self.0.status, body).into_response()
    }
}

type PageResult = Result<Response, PageError>;

/// A page with the CSRF cookie set when the browser has none yet (the token its forms carry).
fn page(who: &Identity, title: &str, body: impl FnOnce(&str) -> Markup) -> Response {
    let (token, fresh) = match &who.csrf {
        Some(token) if !token.is_empty() => (token.clone(), false),
        _ => (auth::new_csrf_token(), true),
    };
    let html = layout(title, Some(who), body(&token));
    let mut response = html.into_response();
    if fresh && let Ok(value) = auth::csrf_cookie(&token).parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:0;color:#1d2733;background:#f6f7f9}
header{background:#005eb8;color:#fff;padding:.6rem 1.2rem;display:flex;gap:1.2rem;align-items:center}
header a{color:#fff;text-decoration:none;font-weight:600}header .who{margin-left:auto;font-size:.9rem}
main{padding:1rem 1.2rem;max-width:80rem}
table{border-collapse:collapse;background:#fff;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #d8dde3;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#eef1f4}
.bar{background:#dde3ea;border-radius:4px;height:1.4rem;width:100%;max-width:40rem;overflow:hidden}
.bar>div{background:#007f3b;height:100%}
.risk{color:#b00020;font-weight:600}.ok{color:#007f3b;font-weight:600}
.error{color:#b00020}
form.inline{display:inline}
.actions{background:#fff;border:1px solid #d8dde3;padding:.6rem;max-width:40rem}
.actions input[type=text]{width:24rem}
.filters label{margin-right:.6rem}
.muted{color:#5d6b7a}
dl.facts{display:grid;grid-template-columns:max-content auto;gap:.15rem 1rem}dl.facts dt{font-weight:600}
";

fn layout(title: &str, who: Option<&Identity>, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    title { (title) " · policy-reconciler" }
                    style { (PreEscaped(STYLE)) }
                    script src="/console/assets/htmx.min.js" {}
                }
                body {
                    header {
                        a href="/console" { "policy-reconciler" }
                        a href="/console/jobs" { "Jobs" }
                        a href="/console/users" { "Users" }
                        @if let Some(who) = who {
                            span.who { "Signed in as " (who.name) " (" (who.role.as_str()) ")" }
                        }
                    }
                    main { (body) }
                }
            }
        }
        .into_string(),
    )
}

async fn htmx() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=86400"),
        ],
        HTMX,
    )
        .into_response()
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map(time).unwrap_or_else(|| "-".into())
}

fn dash(v: &Option<String>) -> &str {
    v.as_deref().unwrap_or("-")
}

// ---- sign-in ----

#[derive(Deserialize)]
struct LoginForm {
    token: String,
}

async fn login_form() -> Html<String> {
    layout(
        "Sign in",
        None,
        html! {
            h1 { "Sign in" }
            p.muted { "Give the console token you were issued (" code { "[console.tokens]" } ")." }
            form method="post" action="/console/login" {
                input type="password" name="token" id="token" required autocomplete="off";
                " "
                button type="submit" id="sign-in" { "Sign in" }
            }
        },
    )
}

async fn login(State(console): State<Console>, Form(form): Form<LoginForm>) -> Response {
    match console.auth.token_user(&form.token) {
        Some((name, role)) => {
            tracing::info!(user = %name, role = role.as_str(), "console sign-in");
            let mut response = Redirect::to("/console").into_response();
            let headers = response.headers_mut();
            for cookie in [
                auth::session_cookie(Some(form.token.trim())),
                auth::csrf_cookie(&auth::new_csrf_token()),
            ] {
                if let Ok(value) = cookie.parse() {
                    headers.append(header::SET_COOKIE, value);
                }
            }
            response
        }
        None => {
            tracing::warn!("console sign-in refused: unknown token");
            (
                StatusCode::UNAUTHORIZED,
                layout(
                    "Sign in",
                    None,
                    html! { h1 { "Sign in" } p.error { "Unknown token." } a href="/console/login" { "Try again" } },
                ),
            )
                .into_response()
        }
    }
}

async fn logout() -> Response {
    let mut response = Redirect::to("/console/login").into_response();
    if let Ok(value) = auth::session_cookie(None).parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

// ---- tables ----

fn flags(row: &JobRow) -> String {
    [
        (row.paused, "paused"),
        (row.expedited, "expedited"),
        (row.dry_run, "dry run"),
        (row.held, "held"),
        (row.awaiting_approval, "awaiting approval"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect::<Vec<_>>()
    .join(", ")
}

fn jobs_table(rows: &[JobRow]) -> Markup {
    let now = Utc::now();
    html! {
        table #jobs {
            tr { th { "Job" } th { "Type" } th { "State" } th { "Outcome" } th { "Progress" }
                 th { "Ticket" } th { "Policy" } th { "Received" } th { "Forecast end" } th { "Flags" } }
            @for row in rows {
                @let p = row_progress(row, now);
                tr {
                    td { a href={ "/console/jobs/" (row.id) } { (row.message_id) } }
                    td { (dash(&row.job_type)) }
                    td { (row.state) }
                    td { (dash(&row.outcome)) }
                    td { (row.done) " / " (row.total.map(|t| t.to_string()).unwrap_or_else(|| "-".into()))
                         " (" (format!("{:.0}", p.percent)) " %)" }
                    td { (dash(&row.ticket_reference)) }
                    td { (dash(&row.policy_id)) }
                    td { (time(row.received_at)) }
                    td { (opt_time(p.forecast_end)) @if p.at_risk { " " span.risk { "at risk" } } }
                    td { (flags(row)) }
                }
            }
        }
    }
}

// ---- overview ----

async fn overview(who: Identity, State(console): State<Console>) -> PageResult {
    let view = overview_view(&console).await?;
    Ok(page(&who, "Overview", |_| {
        html! {
            h1 { "Overview" }
            dl.facts {
                dt { "Unfinished jobs" } dd #unfinished-count { (view.unfinished.len()) @if view.more_unfinished { "+" } }
                dt { "At risk of missing the 24-hour target" }
                dd #at-risk-count class=(if view.at_risk.is_empty() { "ok" } else { "risk" }) { (view.at_risk.len()) }
                dt { "Dead letters (ingest)" } dd { (view.figures.dead_letters_24h) " in the last 24 h, " (view.figures.dead_letters) " in all" }
                dt { "Drift (last " (browse::DRIFT_LISTED_DAYS) " days)" }
                dd #drift-count class=(if view.figures.drift.is_empty() { "ok" } else { "risk" }) {
                    (view.figures.drift.len()) @if view.figures.drift.len() == 1 { " sweep" } @else { " sweeps" } " found drift"
                }
            }
            h2 { "Write budget" }
            @if view.figures.write_budget.is_empty() {
                p.muted { "No shared write budget in use (tenant.shared_write_budget off, or nothing written yet)." }
            } @else {
                table {
                    tr { th { "Budget" } th { "Tokens" } th { "Share of the rate in force" } th { "Last throttled" } th { "Updated" } }
                    @for b in &view.figures.write_budget {
                        tr { td { (b.name) } td { (format!("{:.1}", b.tokens)) } td { (format!("{:.0} %", b.factor * 100.0)) }
                             td { (opt_time(b.throttled_at)) } td { (time(b.updated_at)) } }
                    }
                }
            }
            h2 #drift { "Drift found by sweeps" }
            @if view.figures.drift.is_empty() {
                p.ok { "None in the last " (browse::DRIFT_LISTED_DAYS) " days." }
            } @else {
                table #drift-table {
                    tr { th { "Found" } th { "Sweep job" } th { "Of" } th { "Checked" } th { "Drifted" } th { "Repaired" } th { "Failed" } }
                    @for d in &view.figures.drift {
                        tr {
                            td { (time(d.found_at)) }
                            td { @if let Some(id) = d.job_id { a href={ "/console/jobs/" (id) } { (id) } } }
                            td { (drift_subject(&d.subject)) }
                            @for key in ["checked", "drifted", "repaired", "failed"] {
                                td { (d.counts[key].as_u64().unwrap_or(0)) }
                            }
                        }
                    }
                }
            }
            h2 { "At risk" }
            @if view.at_risk.is_empty() { p.ok { "None." } } @else { (jobs_table(&view.at_risk)) }
            h2 { "Unfinished" }
            @if view.unfinished.is_empty() { p.muted { "None." } } @else { (jobs_table(&view.unfinished)) }
        }
    }))
}

/// What a sweep looked at: "policy ID v VERSION" or "ODS code CODE".
fn drift_subject(subject: &serde_json::Value) -> String {
    match (subject["policy_id"].as_str(), subject["ods_code"].as_str()) {
        (Some(policy), _) => format!("policy {policy} v{}", subject["version"]),
        (None, Some(code)) => format!("ODS code {code}"),
        _ => subject.to_string(),
    }
}

// ---- jobs ----

fn selected(current: &Option<String>, value: &str) -> bool {
    current.as_deref() == Some(value)
}

fn jobs_query_string(q: &JobsQuery, page: u32) -> String {
    let mut pairs: Vec<(&str, String)> = Vec::new();
    for (k, v) in [
        ("state", &q.state),
        ("type", &q.job_type),
        ("outcome", &q.outcome),
        ("ods", &q.ods),
        ("flag", &q.flag),
        ("q", &q.q),
    ] {
        if let Some(v) = v.as_deref().filter(|v| !v.is_empty()) {
            pairs.push((k, v.to_owned()));
        }
    }
    pairs.push(("page", page.to_string()));
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", url_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn jobs(
    who: Identity,
    State(console): State<Console>,
    Query(query): Query<JobsQuery>,
) -> PageResult {
    let filter = query.filter()?;
    let (page_no, per_page) = (query.page(), query.per_page());
    let (rows, more) = ops::search(&console.pool, &filter, page_no, per_page)
        .await
        .map_err(ConsoleError::from)?;
    let select = |name: &str, current: &Option<String>, options: &[&str]| {
        html! {
            label { (name) " "
                select name=(name) {
                    option value="" { "any" }
                    @for o in options { option value=(o) selected[selected(current, o)] { (o) } }
                }
            }
        }
    };
    Ok(page(&who, "Jobs", |_| {
        html! {
            h1 { "Jobs" }
            form.filters method="get" action="/console/jobs" {
                label { "Search " input type="search" name="q" id="search" value=(query.q.clone().unwrap_or_default())
                    placeholder="ticket, message id, policy id, email" size="36"; }
                (select("state", &query.state, &["unfinished", "received", "accepted", "running", "completed"]))
                (select("type", &query.job_type, &["policy.changed", "policy.members_added", "admin_role.assign",
                    "admin_role.remove", "admin_role.change", "ods_mapping.changed", "user.leaver",
                    "portal_access.grant", "portal_access.activated", "portal_access.remind"]))
                (select("outcome", &query.outcome, &["succeeded", "partially_succeeded", "failed", "rejected"]))
                label { "ODS " input type="text" name="ods" size="8" value=(query.ods.clone().unwrap_or_default()); }
                (select("flag", &query.flag, &["paused", "expedited", "dry_run", "held", "awaiting_approval"]))
                " " button type="submit" id="apply" { "Apply" }
            }
            @if rows.is_empty() { p #no-jobs.muted { "No job matches." } } @else { (jobs_table(&rows)) }
            p {
                @if page_no > 1 { a href={ "/console/jobs?" (jobs_query_string(&query, page_no - 1)) } { "← previous" } " " }
                "page " (page_no)
                @if more { " " a href={ "/console/jobs?" (jobs_query_string(&query, page_no + 1)) } { "next →" } }
            }
        }
    }))
}

// ---- one job ----

fn progress_markup(job: &str, view: &JobView) -> Markup {
    let d = &view.detail;
    let p: &Progress = &view.progress;
    let completed = d.state == crate::store::work::JobState::Completed;
    html! {
        section #progress data-percent=(format!("{:.0}", p.percent)) data-state=(d.state.as_str())
            hx-get=[(!completed).then(|| format!("/console/jobs/{job}/progress"))]
            hx-trigger=[(!completed).then_some("every 1s")] hx-swap="outerHTML" {
            div.bar { div style={ "width:" (format!("{:.1}", p.percent)) "%" } {} }
            p #progress-text {
                strong { (format!("{:.0} %", p.percent)) } " · " (d.done) " of "
                (d.total.map(|t| t.to_string()).unwrap_or_else(|| "?".into())) " items · "
                "state " strong #job-state { (d.state.as_str()) }
                @if let Some(outcome) = &d.outcome { " · outcome " strong #job-outcome { (outcome) } }
                @if d.paused { " · " span.risk #paused { "paused" } }
            }
            dl.facts {
                dt { "Rate" } dd { (p.rate_per_second.map(|r| format!("{r:.1} items/s since start")).unwrap_or_else(|| "-".into())) }
                dt { @if completed { "Ended" } @else { "Forecast end" } } dd { (opt_time(p.forecast_end)) }
                dt { "24-hour target" } dd { (time(p.deadline)) " "
                    @if p.at_risk { span.risk { "at risk" } } @else if !completed { span.ok { "on track" } } }
                dt { "Items" } dd { "changed " (d.items.changed) ", already compliant " (d.items.already_compliant)
                    ", failed " (d.items.failed) ", skipped " (d.items.skipped) ", pending " (d.items.pending) }
                dt { "Chunks" } dd { "pending " (d.chunks.pending) ", running " (d.chunks.running) ", done " (d.chunks.done) }
            }
        }
    }
}

async fn progress_fragment(
    _who: Identity,
    State(console): State<Console>,
    Path(job): Path<String>,
) -> PageResult {
    let view = job_view(&console, &job).await?;
    Ok(Html(progress_markup(&job, &view).into_string()).into_response())
}

#[derive(Debug, Default, Deserialize)]
struct JobPageQuery {
    code: Option<String>,
    after: Option<i32>,
    /// A message after an action.
    done: Option<String>,
}

async fn job(
    who: Identity,
    State(console): State<Console>,
    Path(job): Path<String>,
    Query(query): Query<JobPageQuery>,
) -> PageResult {
    let view = job_view(&console, &job).await?;
    let d = &view.detail;
    let code = query.code.clone().filter(|c| !c.is_empty());
    let items_query = ItemsQuery {
        code: code.clone(),
        outcome: Some("failed".into()),
        ..ItemsQuery::default()
    };
    let failures = browse::items(
        &console.pool,
        d.id,
        &items_query.filter(),
        query.after.unwrap_or(-1),
        FAILURES_PER_PAGE,
    )
    .await
    .map_err(ConsoleError::from)?;
    let events = browse::events(&console.pool, d.id, 200)
        .await
        .map_err(ConsoleError::from)?;
    let chunks = browse::chunks(&console.pool, d.id, -1, 200)
        .await
        .map_err(ConsoleError::from)?;
    let id = d.id.to_string();
    let completed = d.state == crate::store::work::JobState::Completed;
    let csv = match &code {
        Some(code) => format!("/console/jobs/{id}/failures.csv?code={}", url_encode(code)),
        None => format!("/console/jobs/{id}/failures.csv"),
    };
    let next_failures = (failures.len() == FAILURES_PER_PAGE as usize)
        .then(|| failures.last().map(|f| f.seq))
        .flatten();
    Ok(page(&who, &d.message_id, |csrf| {
        html! {
            h1 { "Job " code { (d.message_id) } }
            @if let Some(done) = &query.done { p.ok #flash { (done) } }
            dl.facts {
                dt { "Id" } dd { (id) }
                dt { "Type" } dd { (dash(&d.job_type)) }
                dt { "Ticket" } dd #ticket { (d.ticket.as_ref().map(|t| format!("{} ({})", t.reference, t.originator)).unwrap_or_else(|| "-".into())) }
                dt { "Subject" } dd { code { (d.subject.as_ref().map(|s| s.to_string()).unwrap_or_else(|| "-".into())) } }
                dt { "Schedule" } dd { (d.schedule.map(|s| s.as_str()).unwrap_or("-")) @if d.expedited { " (expedited)" } " · earliest start " (opt_time(d.earliest_start)) }
                dt { "Received" } dd { (time(d.received_at)) " · accepted " (opt_time(d.accepted_at)) " · started " (opt_time(d.started_at)) " · completed " (opt_time(d.completed_at)) }
                @if d.dry_run { dt { "Dry run" } dd { "yes: nothing is written to the tenant" } }
                @if let Some(e) = &d.ended_early { dt { "Ended early" } dd { (e) } }
                @if let Some(h) = &d.held { dt { "Held" } dd.risk { (h.to_string()) } }
                @if let Some(a) = &d.awaiting_approval { dt { "Awaiting approval" } dd.risk { (a.to_string()) } }
            }
            (progress_markup(&id, &view))

            h2 { "Operator actions" }
            @if d.operator_actions.is_empty() { p.muted #no-actions { "None yet." } } @else {
                table #actions-log {
                    tr { th { "At" } th { "Action" } th { "By" } th { "Reason" } }
                    @for a in &d.operator_actions { tr { td { (time(a.at)) } td { (a.action) } td { (a.by) } td { (a.reason) } } }
                }
            }
            @if who.is_operator() && !completed {
                form.actions #actions method="post" action={ "/console/jobs/" (id) } {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Reason (required) " input type="text" name="reason" id="reason" required; }
                    div {
                        @if d.paused {
                            button type="submit" name="action" value="resume" id="resume" { "Resume" } " "
                        } @else {
                            button type="submit" name="action" value="pause" id="pause" { "Pause" } " "
                        }
                        @if !d.expedited { button type="submit" name="action" value="expedite" id="expedite" { "Expedite" } " " }
                        @if d.awaiting_approval.is_some() { button type="submit" name="action" value="approve" id="approve" { "Approve" } " " }
                        button type="submit" name="action" value="cancel" id="cancel" { "Cancel the job" }
                    }
                }
            }
            @if who.is_operator() && completed && d.items.changed > 0 && !d.dry_run {
                // A revert is refused with its reason (not a policy job, images gone, …).
                form.actions #revert-form method="post" action={ "/console/jobs/" (id) } {
                    input type="hidden" name="csrf" value=(csrf);
                    label { "Reason (required) " input type="text" name="reason" id="revert-reason" required; }
                    " " button type="submit" name="action" value="revert" id="revert" { "Revert this job" }
                }
            }

            h2 #failures { "Failures" }
            p #failure-codes {
                a href={ "/console/jobs/" (id) "#failures" } { "all (" (d.items.failed) ")" }
                @for (c, n) in &view.failure_codes {
                    " · " a.code-filter href={ "/console/jobs/" (id) "?code=" (url_encode(c)) "#failures" } data-code=(c) { (c) " (" (n) ")" }
                }
                " · " a #csv href=(csv) { "export CSV" }
            }
            @if let Some(code) = &code { p { "Showing " strong #shown-code { (code) } " only." } }
            @if failures.is_empty() { p.muted #no-failures { "No failed items" @if code.is_some() { " with this code" } "." } } @else {
                table #failures-table {
                    tr { th { "Code" } th { "Item" } th { "Detail" } }
                    @for f in &failures {
                        tr { td.code { (f.code.as_deref().unwrap_or("-")) } td { a href={ "/console/users?email=" (url_encode(&f.item)) } { (f.item) } } td { (f.detail.as_deref().unwrap_or("")) } }
                    }
                }
                @if let Some(after) = next_failures {
                    p { a href={ "/console/jobs/" (id) "?after=" (after) (code.as_ref().map(|c| format!("&code={}", url_encode(c))).unwrap_or_default()) "#failures" } { "next failures →" } }
                }
            }

            h2 { "Events published" }
            @if events.is_empty() { p.muted { "None yet." } } @else {
                table #events {
                    tr { th { "Type" } th { "Written" } th { "Published" } th { "Event id" } }
                    @for e in &events { tr { td { (e.event_type) } td { (time(e.created_at)) } td { (opt_time(e.published_at)) } td { code { (e.event_id) } } } }
                }
            }

            h2 { "Chunks" }
            details {
                summary { (d.chunks.pending + d.chunks.running + d.chunks.done) " chunks (first 200)" }
                table #chunks {
                    tr { th { "Chunk" } th { "State" } th { "Claims" } th { "Lease owner" } th { "Lease until" } th { "Finished" } }
                    @for c in &chunks { tr { td { (c.chunk) } td { (c.state) } td { (c.claims) } td { (dash(&c.lease_owner)) } td { (opt_time(c.lease_expires_at)) } td { (opt_time(c.finished_at)) } } }
                }
            }
        }
    }))
}

#[derive(Deserialize)]
struct ActionForm {
    action: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    csrf: String,
}

async fn act(
    who: Identity,
    State(console): State<Console>,
    Path(job): Path<String>,
    _headers: HeaderMap,
    Form(form): Form<ActionForm>,
) -> PageResult {
    let id = resolve(&console, &job).await?;
    let report = perform(
        &console,
        &who,
        &id.to_string(),
        &form.action,
        &form.reason,
        Some(&form.csrf),
    )
    .await?;
    let mut done = format!(
        "{} recorded: by {}, reason: {}",
        form.action,
        who.name,
        form.reason.trim()
    );
    if let ops::ActionReport::Revert(r) = &report {
        done.push_str(&format!("; revert job {} stored", r.id));
    }
    // Post/redirect/get: a reload does not act twice.
    Ok(Redirect::to(&format!("/console/jobs/{id}?done={}", url_encode(&done))).into_response())
}

async fn failures_csv(
    _who: Identity,
    State(console): State<Console>,
    Path(job): Path<String>,
    Query(query): Query<CodeQuery>,
) -> PageResult {
    let code = query.code.filter(|c| !c.trim().is_empty());
    let (file, body) = failures_csv_of(&console, &job, code).await?;
    Ok(csv_response(file, body))
}

// ---- a user ----

#[derive(Debug, Default, Deserialize)]
struct UserQuery {
    email: Option<String>,
}

async fn user(
    who: Identity,
    State(console): State<Console>,
    Query(query): Query<UserQuery>,
) -> PageResult {
    let email = query.email.unwrap_or_default().trim().to_owned();
    let rows = if email.is_empty() {
        Vec::new()
    } else {
        browse::user_jobs(&console.pool, &email, 500)
            .await
            .map_err(ConsoleError::from)?
    };
    Ok(page(&who, "User", |_| {
        html! {
            h1 { "A user's jobs" }
            form method="get" action="/console/users" {
                input type="search" name="email" id="email" value=(email) placeholder="user@nhs.net" size="36";
                " " button type="submit" { "Show" }
            }
            @if !email.is_empty() {
                @if rows.is_empty() { p.muted { "No job touched " (email) "." } } @else {
                    table #user-jobs {
                        tr { th { "Job" } th { "Type" } th { "Ticket" } th { "Received" } th { "Job state" } th { "Job outcome" } th { "For this user" } th { "Code" } th { "Detail" } }
                        @for r in &rows {
                            tr {
                                td { a href={ "/console/jobs/" (r.job_id) } { (r.message_id) } }
                                td { (dash(&r.job_type)) } td { (dash(&r.ticket_reference)) } td { (time(r.received_at)) }
                                td { (r.job_state) } td { (dash(&r.job_outcome)) }
                                td { (r.outcome.as_deref().unwrap_or("pending")) } td { (dash(&r.code)) } td { (dash(&r.detail)) }
                            }
                        }
                    }
                }
            }
        }
    }))
}

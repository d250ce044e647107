//! Applying the admin-role jobs: reconcile a user's Phone System group memberships, as the
//! tenant lists them (`memberOf`), with the desired state read at apply time, removals first
//! and confirmed, then additions, under the item retry policy ([`crate::engine::retry`]); then
//! settle the stored role: a grant realised (and its email), a grant failed, a removal done.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Instant;

use uuid::Uuid;

use super::plan::holding_of;
use super::{GroupNames, ItemSpec};
use crate::domain::{AdminRole, FailureCode, JobType};
use crate::engine::EngineError;
use crate::engine::failure_code;
use crate::engine::kind::{ApplyContext, ItemOutcome, ItemResult, WorkItem};
use crate::engine::retry::{ItemRetry, Verdict};
use crate::engine::users;
use crate::store::roles::{self, GrantState, StoredRole};
use crate::tenant::{Group, NewGroup, TenantError};

/// The writes Graph accepted for an item within one claim: never sent again while reads do
/// not show them yet, and when the last one (or a group creation) was made.
#[derive(Default)]
struct Writes {
    /// (group id, true for an addition, false for a removal).
    accepted: HashSet<(Uuid, bool)>,
    /// Groups a removal found the user not a member of (at the directory's primary copy).
    gone: HashSet<Uuid>,
    /// Groups asked for that the display-name search did not find (so made or found by their
    /// unique name): when first asked for.
    new_groups: HashMap<String, Instant>,
    /// The latest event whose effect reads may not show yet: the verify window runs from it.
    at: Option<Instant>,
}

impl Writes {
    fn accepted_now(&mut self, group: Uuid, add: bool) {
        self.accepted.insert((group, add));
        self.seen(Instant::now());
    }

    fn seen(&mut self, at: Instant) {
        self.at = Some(self.at.map_or(at, |t| t.max(at)));
    }

    /// A group not found by display name, asked for at `at`: the window runs from the first
    /// time it was (asking again, while it is not yet visible, does not move the window).
    fn new_group(&mut self, name: &str, at: Instant) {
        let first = *self.new_groups.entry(name.to_lowercase()).or_insert(at);
        self.seen(first);
    }
}

/// Graph's limit of members added by one `PATCH` of a group (microsoft-graph-docs-contrib
/// `api-reference/v1.0/api/group-post-members.md`).
const MAX_MEMBERS_PER_PATCH: usize = 20;

/// Which part of an item's reconciliation an attempt does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// End the memberships no longer wanted, confirm it, and say what is missing.
    Removals,
    /// Everything: removals, additions, and confirming both.
    All,
}

/// How one attempt at an item ended.
enum Attempt {
    /// Removals are done (step [`Step::Removals`]); these groups are still to be joined.
    Missing(Vec<String>),
    /// The tenant holds the desired memberships (or, in a dry run, `would_change` says).
    Done {
        would_change: bool,
    },
    /// Worth another attempt (transient failure, or a read-back that did not show a write).
    Retry(TenantError),
    Fail(FailureCode, String),
}

fn classify(error: TenantError) -> Attempt {
    match ItemRetry::verdict(error) {
        Verdict::Retry(error) => Attempt::Retry(error),
        Verdict::Fail(code, detail) => Attempt::Fail(code, detail),
    }
}

/// A mail nickname for a group name: letters, digits, `-`, `_` and `.` only.
pub(super) fn mail_nickname(display_name: &str) -> String {
    display_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(64)
        .collect()
}

/// Reconcile the items' users (see the module docs), in three passes over the round, under
/// one transaction that holds every user's advisory lock (taken in address order, so two
/// rounds never wait for each other in a circle):
///
/// 1. each user's memberships to end are removed and the removal confirmed, and the groups
///    they miss are noted;
/// 2. users who miss the same group join it together, up to 20 per `PATCH` (Graph's
///    `members@odata.bind`; a mapping change moves up to ten admins at once);
/// 3. each user's memberships are read back until the tenant shows them (adding singly what
///    the shared requests could not), and the stored role is settled.
pub(crate) async fn apply<P: Sync>(
    names: &GroupNames,
    ctx: &ApplyContext<'_, P>,
    items: &[WorkItem<ItemSpec>],
) -> Result<Vec<ItemResult>, EngineError> {
    let mut groups = HashMap::new();
    let mut tx = ctx.pool.begin().await?;
    // Held until the round settles: no other job's writes for these users interleave.
    let mut emails: Vec<&str> = items.iter().map(|i| i.key.as_str()).collect();
    emails.sort_unstable();
    emails.dedup();
    for email in emails {
        roles::lock_user(&mut tx, email).await?;
    }
    let mut prepared = Vec::with_capacity(items.len());
    for item in items {
        prepared.push(prepare(names, ctx, &mut tx, item).await?);
    }

    // 1. Removals, confirmed; what is missing.
    let mut missing: Vec<Option<Vec<String>>> = vec![None; items.len()];
    for (i, p) in prepared.iter_mut().enumerate() {
        if ctx.cancel.is_cancelled() {
            break;
        }
        match run(ctx, &mut groups, p, Step::Removals).await? {
            Some(Attempt::Missing(names)) => missing[i] = Some(names),
            Some(ended) => p.ended = Some(ended),
            None => break,
        }
    }

    // 2. Shared additions.
    if !ctx.job.dry_run && !ctx.cancel.is_cancelled() {
        add_together(ctx, &mut groups, &mut prepared, &missing).await;
    }

    // 3. Confirm (adding singly what is still missing), settle.
    let mut results = Vec::with_capacity(items.len());
    for p in &mut prepared {
        if ctx.cancel.is_cancelled() {
            break;
        }
        let ended = match p.ended.take() {
            Some(ended) => ended,
            None => match run(ctx, &mut groups, p, Step::All).await? {
                Some(ended) => ended,
                None => break,
            },
        };
        results.push(finish(ctx, &mut tx, p, ended).await?);
    }
    tx.commit().await?;
    Ok(results)
}

/// An item's desired state, read under its user's lock, and what has been written for it.
struct Prepared<'n> {
    seq: i32,
    email: String,
    stored: Option<StoredRole>,
    own_grant: bool,
    held: bool,
    desired: BTreeSet<String>,
    scope: Scope<'n>,
    /// The user's object id, once read.
    user: Option<Uuid>,
    /// Groups the stored role gave that the desired state no longer has.
    ended_before: BTreeSet<String>,
    /// When the stored role was realised, if within the verify window.
    realised_at: Option<Instant>,
    /// The group of the stored role's own organisation (not one a mapping gives).
    own_group: Option<String>,
    writes: Writes,
    last_error: Option<TenantError>,
    /// How the item ended in the first pass, when it needs no addition.
    ended: Option<Attempt>,
}

async fn prepare<'n, P: Sync>(
    names: &'n GroupNames,
    ctx: &ApplyContext<'_, P>,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    item: &WorkItem<ItemSpec>,
) -> Result<Prepared<'n>, EngineError> {
    let spec = item.spec.clone().unwrap_or_default();
    let dry_run = ctx.job.dry_run;
    let job = ctx.job.id;
    let email = item.key.as_str();
    let stored = if dry_run {
        None
    } else {
        roles::stored_role(&mut **tx, email).await?
    };
    // This job's own grant: its item keeps trying to realise it even once marked failed (a
    // retried or taken-over item finds its earlier failure recorded).
    let own_grant = stored
        .as_ref()
        .is_some_and(|s| s.assigned_by_job == Some(job) && s.state != GrantState::Removing);
    let holding = if dry_run {
        spec.preview.as_ref().and_then(|p| p.holding.clone())
    } else {
        match &stored {
            Some(s) if s.state.is_held() || own_grant => {
                Some(holding_of(&mut **tx, &s.role).await?)
            }
            _ => None,
        }
    };
    let desired: BTreeSet<String> = holding
        .as_ref()
        .map(|h| h.groups(names))
        .unwrap_or_default();
    let mut codes: BTreeSet<&str> = spec.codes.iter().map(String::as_str).collect();
    if let Some(h) = &holding {
        codes.insert(&h.ods_code);
        codes.extend(h.reach.iter().map(String::as_str));
    }
    let candidates: BTreeSet<String> = codes
        .iter()
        .flat_map(|code| AdminRole::ALL.iter().map(|r| names.name(*r, code)))
        .map(|n| n.to_lowercase())
        .collect();
    let not_desired = |n: &String| !desired.iter().any(|d| d.eq_ignore_ascii_case(n));
    let ended_before: BTreeSet<String> = match &stored {
        // A removal or a leaver: the groups the stored role gave.
        Some(s) if holding.is_none() => holding_of(&mut **tx, &s.role)
            .await?
            .groups(names)
            .into_iter()
            .filter(not_desired)
            .collect(),
        // The role changed moments ago (a change right after an assign): `memberOf` may not
        // show the old role's memberships yet, and they must end before the new ones begin.
        // Once the change is realised (the tenant showed its memberships, the old ones gone),
        // the same change sent again ends nothing blindly: it writes nothing.
        Some(s)
            if s.state != GrantState::Realised
                && s.state_age < ctx.retry.verify_within()
                && matches!(
                    ctx.job.job_type,
                    JobType::AdminRoleChange | JobType::OdsMappingChanged
                ) =>
        {
            candidates
                .iter()
                .filter(|n| not_desired(n))
                .cloned()
                .collect()
        }
        _ => BTreeSet::new(),
    };
    let scope = Scope {
        names,
        desired: desired.iter().map(|n| n.to_lowercase()).collect(),
        candidates,
        sweep: spec.sweep,
    };
    let realised_at = stored
        .as_ref()
        .filter(|s| s.state == GrantState::Realised && s.state_age < ctx.retry.verify_within())
        .and_then(|s| Instant::now().checked_sub(s.state_age));
    Ok(Prepared {
        seq: item.seq,
        email: email.to_owned(),
        stored,
        own_grant,
        held: holding.is_some(),
        desired,
        scope,
        user: None,
        ended_before,
        realised_at,
        own_group: holding.as_ref().map(|h| names.name(h.role, &h.ods_code)),
        writes: Writes::default(),
        last_error: None,
        ended: None,
    })
}

/// Attempts at one step of an item until it ends: `None` when cancelled first (the item is
/// retried with its chunk). Attempts count transient failures; a write that reads do not show
/// yet is re-read (not re-sent) for as long as the verify window allows (see `engine::retry`).
async fn run<P: Sync>(
    ctx: &ApplyContext<'_, P>,
    groups: &mut HashMap<String, Group>,
    p: &mut Prepared<'_>,
    step: Step,
) -> Result<Option<Attempt>, EngineError> {
    let (mut failed_attempts, mut pauses) = (0, 0);
    loop {
        if pauses > 0 && !ctx.retry.wait(pauses, ctx.cancel).await {
            return Ok(None);
        }
        pauses += 1;
        let result = reconcile(ctx, groups, p, step).await?;
        match result {
            Attempt::Retry(error @ TenantError::NotConverged(_))
                if p.writes
                    .at
                    .is_some_and(|at| at.elapsed() < ctx.retry.verify_within()) =>
            {
                p.last_error = Some(error);
            }
            Attempt::Retry(error) => {
                p.last_error = Some(error.clone());
                failed_attempts += 1;
                if failed_attempts >= ctx.retry.attempts() {
                    return Ok(Some(Attempt::Retry(error)));
                }
            }
            done => return Ok(Some(done)),
        }
    }
}

/// The item's result, and its stored role settled (see [`settled`]).
async fn finish<P: Sync>(
    ctx: &ApplyContext<'_, P>,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    p: &mut Prepared<'_>,
    ended: Attempt,
) -> Result<ItemResult, EngineError> {
    let job = ctx.job.id;
    let wrote = !p.writes.accepted.is_empty();
    let result = match ended {
        Attempt::Done { would_change } => {
            let outcome = if wrote || would_change {
                ItemOutcome::Changed
            } else {
                ItemOutcome::AlreadyCompliant
            };
            if !ctx.job.dry_run {
                settled(tx, job, &p.email, p.held, p.stored.as_ref()).await?;
            }
            ItemResult::ok(p.seq, outcome)
        }
        Attempt::Fail(code, detail) => ItemResult::failed(p.seq, code, detail),
        Attempt::Retry(_) | Attempt::Missing(_) => {
            let error = p
                .last_error
                .take()
                .unwrap_or(TenantError::Transient("no attempt".into()));
            let code = if wrote && matches!(error, TenantError::NotConverged(_)) {
                FailureCode::VerificationFailed
            } else {
                failure_code(&error)
            };
            ItemResult::failed(p.seq, code, error.to_string())
        }
    };
    // A failure from a loss of tenant access is not the item's: its result is dropped and the
    // item tried again once access is back (`engine::access`), so the grant keeps its place.
    if result.outcome == ItemOutcome::Failed
        && p.own_grant
        && p.held
        && ctx.access.tripped().is_none()
    {
        // The grant's tenant work failed: it holds no place under the limit any more, and a
        // new assign for the user is a grant again (with its email once realised).
        roles::mark_failed(tx, &p.email, job).await?;
    }
    Ok(result)
}

/// Users missing the same group join it together, up to 20 per `PATCH`
/// ([`Tenant::add_members_at_once`](crate::tenant::Tenant::add_members_at_once)). A request
/// that fails (one user already a member, a 5xx, a group too new to take members) adds
/// nothing certain: its users are left to the third pass, which reads them and adds singly
/// what is still missing.
async fn add_together<P: Sync>(
    ctx: &ApplyContext<'_, P>,
    groups: &mut HashMap<String, Group>,
    prepared: &mut [Prepared<'_>],
    missing: &[Option<Vec<String>>],
) {
    let mut joining: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, names) in missing.iter().enumerate() {
        for name in names.iter().flatten() {
            joining.entry(name.clone()).or_default().push(i);
        }
    }
    for (name, members) in joining {
        // A group joined by one user only is left to the single add of the third pass.
        if members.len() < 2 {
            continue;
        }
        let mut created = None;
        let Ok(Ok(Some(group))) = group(ctx, groups, &name, true, &mut created).await else {
            continue;
        };
        if let Some(at) = created {
            for &i in &members {
                prepared[i].writes.new_group(&name, at);
            }
        }
        for part in members.chunks(MAX_MEMBERS_PER_PATCH) {
            let ids: Vec<Uuid> = part.iter().filter_map(|&i| prepared[i].user).collect();
            if ids.len() < 2 {
                continue;
            }
            // A group made moments ago can answer 404 to writes until it has replicated
            // (Graph's message names the group): try again within the verify window.
            let asked = Instant::now();
            let mut pauses = 0;
            let result = loop {
                match ctx.tenant.add_members_at_once(group.id, &ids).await {
                    Err(error @ TenantError::NotConverged(_))
                        if asked.elapsed() < ctx.retry.verify_within() =>
                    {
                        pauses += 1;
                        if !ctx.retry.wait(pauses, ctx.cancel).await {
                            break Err(error);
                        }
                    }
                    other => break other,
                }
            };
            match result {
                Ok(()) => {
                    for &i in part {
                        prepared[i].writes.accepted_now(group.id, true);
                    }
                }
                Err(error) => {
                    tracing::info!(group = %name, %error, users = ids.len(), "adding members together failed; adding them one by one");
                }
            }
        }
    }
}

/// The tenant shows the desired memberships: a grant not yet realised is now (and its email
/// is enqueued, once per grant: the claim of its job's row in `admin_role_notifications`);
/// a role this job is removing is deleted.
async fn settled(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job: Uuid,
    email: &str,
    held: bool,
    stored: Option<&StoredRole>,
) -> Result<(), EngineError> {
    if held {
        if let Some((row, Some(granted_by))) = roles::realise(tx, email, job).await? {
            roles::notify_granted(tx, granted_by, &row).await?;
        }
    } else if stored
        .is_some_and(|s| s.state == GrantState::Removing && s.removed_by_job == Some(job))
    {
        roles::delete_removed(tx, email, job).await?;
    }
    Ok(())
}

/// Which of a user's Phone System memberships an item keeps, adds and ends (group names in
/// lower case: Graph compares display names without regard to case).
struct Scope<'a> {
    names: &'a GroupNames,
    desired: BTreeSet<String>,
    /// The groups of the organisations involved: memberships of these not desired end.
    candidates: BTreeSet<String>,
    /// Every Phone System membership not desired ends, whatever its organisation.
    sweep: bool,
}

impl Scope<'_> {
    fn ends(&self, group: &Group) -> bool {
        let name = group.display_name.to_lowercase();
        !self.desired.contains(&name)
            && (self.candidates.contains(&name)
                || (self.sweep && self.names.is_phone_system(&group.display_name)))
    }
}

/// The unique name (Graph's alternate key) of the group this service creates for `name`.
fn unique_name(name: &str) -> String {
    format!("policy-reconciler.{}", mail_nickname(name).to_lowercase())
}

/// The group named `name`: remembered in PostgreSQL (every group this service found or made
/// is), found by display name, or, when `create`, made by an upsert on its unique name
/// (`Tenant::ensure_group`), which is idempotent also while a group created a moment ago (by
/// this replica or another) is not yet visible to the display-name search: a role never lands
/// in a second group of the same name, and a removal finds a group made moments ago.
/// `created` is set when the group came from the upsert (it may be too new to take members).
async fn group<P: Sync>(
    ctx: &ApplyContext<'_, P>,
    cache: &mut HashMap<String, Group>,
    name: &str,
    create: bool,
    created: &mut Option<Instant>,
) -> Result<Result<Option<Group>, TenantError>, EngineError> {
    if let Some(group) = cache.get(name) {
        return Ok(Ok(Some(group.clone())));
    }
    if let Some(id) = roles::remembered_group(ctx.pool, name).await? {
        let group = Group {
            id,
            display_name: name.to_owned(),
        };
        cache.insert(name.to_owned(), group.clone());
        return Ok(Ok(Some(group)));
    }
    let found = match ctx.tenant.find_group(name).await {
        Ok(Some(group)) => Some(group),
        Ok(None) if create => {
            tracing::info!(group = name, "ensuring a Phone System admin group");
            *created = Some(Instant::now());
            match ctx
                .tenant
                .ensure_group(
                    &unique_name(name),
                    &NewGroup {
                        display_name: name.to_owned(),
                        mail_nickname: mail_nickname(name),
                    },
                )
                .await
            {
                Ok(group) => Some(group),
                Err(error) => return Ok(Err(error)),
            }
        }
        // Absent groups are not cached: another replica may create one at any time.
        Ok(None) => None,
        Err(error) => return Ok(Err(error)),
    };
    if let Some(group) = &found {
        roles::remember_group(ctx.pool, name, group.id).await?;
        cache.insert(name.to_owned(), group.clone());
    }
    Ok(Ok(found))
}

/// One attempt: read the user's group memberships (`memberOf`), end those the scope ends and
/// verify, then add the desired ones missing and verify.
async fn reconcile<P: Sync>(
    ctx: &ApplyContext<'_, P>,
    cache: &mut HashMap<String, Group>,
    p: &mut Prepared<'_>,
    step: Step,
) -> Result<Attempt, EngineError> {
    let dry_run = ctx.job.dry_run;
    let (email, desired, scope) = (p.email.as_str(), &p.desired, &p.scope);
    let writes = &mut p.writes;
    let found = match p.user {
        Some(id) => Some(Ok(id)),
        None => users::read_users(ctx.pool, ctx.tenant.as_ref(), &[email.to_owned()])
            .await?
            .pop()
            .map(|r| r.map(|state| state.id)),
    };
    let user = match found {
        Some(Ok(id)) => {
            p.user = Some(id);
            id
        }
        // A user who does not exist holds no membership: nothing to remove.
        Some(Err(TenantError::UserNotFound(_))) if desired.is_empty() => {
            return Ok(Attempt::Done {
                would_change: false,
            });
        }
        Some(Err(error)) => return Ok(classify(error)),
        None => return Ok(Attempt::Retry(TenantError::Transient("no answer".into()))),
    };

    let held = match ctx.tenant.member_of(user).await {
        Ok(groups) => groups,
        Err(error) => return Ok(classify(error)),
    };
    let mut extra: Vec<Group> = held.iter().filter(|g| scope.ends(g)).cloned().collect();
    // The memberships the stored role gave and the desired state no longer has: ended even
    // when `memberOf` does not show them, since it may come from a replica that has not
    // caught up with their addition (a leaver seconds after an assign). A removal of one the
    // user does not hold answers "not a member", which is done.
    if !dry_run {
        for name in &p.ended_before {
            if extra
                .iter()
                .any(|g| g.display_name.eq_ignore_ascii_case(name))
            {
                continue;
            }
            if let Ok(Some(group)) = group(ctx, cache, name, false, &mut None).await?
                && !writes.gone.contains(&group.id)
            {
                extra.push(group);
            }
        }
    }
    let missing: Vec<&String> = desired
        .iter()
        .filter(|name| {
            !held
                .iter()
                .any(|g| g.display_name.eq_ignore_ascii_case(name))
        })
        .collect();
    if dry_run || (extra.is_empty() && missing.is_empty()) {
        return Ok(Attempt::Done {
            would_change: dry_run && !(extra.is_empty() && missing.is_empty()),
        });
    }

    // 1. End the memberships no longer wanted, and confirm it in the tenant. A removal Graph
    // accepted is not sent again while reads do not show it yet.
    for group in &extra {
        if writes.accepted.contains(&(group.id, false)) {
            continue;
        }
        match ctx.tenant.remove_members(group.id, &[user]).await.pop() {
            Some(Ok(())) => writes.accepted_now(group.id, false),
            // A group created moments ago, not yet replicated (`Tenant::remove_members`): wait.
            Some(Err(error @ TenantError::NotConverged(_))) => {
                writes.new_group(&group.display_name, Instant::now());
                return Ok(Attempt::Retry(error));
            }
            Some(Err(TenantError::NotMember(_))) => {
                writes.gone.insert(group.id);
            }
            Some(Err(error)) => return Ok(classify(error)),
            None => return Ok(Attempt::Retry(TenantError::Transient("no answer".into()))),
        }
    }
    if !extra.is_empty() {
        let now = match ctx.tenant.member_of(user).await {
            Ok(groups) => groups,
            Err(error) => return Ok(classify(error)),
        };
        if let Some(group) = extra.iter().find(|g| now.iter().any(|n| n.id == g.id)) {
            return Ok(Attempt::Retry(TenantError::NotConverged(format!(
                "{email} is still a member of {} after its removal",
                group.display_name
            ))));
        }
    }

    // The stored role was realised moments ago (the tenant showed the user in its own group
    // to an earlier item): a read that does not show that membership comes from a replica
    // that has not caught up. Read again until the window of that realisation passes rather
    // than adding it again. (Groups a mapping gives are not the role's own: they may be new.)
    if let Some(at) = p.realised_at
        && at.elapsed() < ctx.retry.verify_within()
        && p.own_group
            .as_ref()
            .is_some_and(|own| missing.iter().any(|m| m.eq_ignore_ascii_case(own)))
    {
        writes.seen(at);
        return Ok(Attempt::Retry(TenantError::NotConverged(format!(
            "{email}'s memberships, realised {:.1} s ago, do not show yet",
            at.elapsed().as_secs_f64()
        ))));
    }
    if step == Step::Removals {
        return Ok(if missing.is_empty() {
            Attempt::Done {
                would_change: false,
            }
        } else {
            Attempt::Missing(missing.into_iter().cloned().collect())
        });
    }

    // 2. Only then add the missing memberships, and confirm them too.
    let mut added = Vec::new();
    for name in missing {
        let mut created = None;
        let found = group(ctx, cache, name, true, &mut created).await?;
        // A group just made (or found by its unique name only) may not take members, or show
        // in reads, for a while: the verify window runs from the first time it was asked for.
        if let Some(at) = created {
            writes.new_group(name, at);
        }
        let group = match found {
            Ok(Some(group)) => group,
            Ok(None) => {
                return Ok(Attempt::Retry(TenantError::NotConverged(format!(
                    "group {name} was not created"
                ))));
            }
            Err(error) => return Ok(classify(error)),
        };
        if writes.accepted.contains(&(group.id, true)) {
            added.push(group);
            continue;
        }
        match ctx.tenant.add_members(group.id, &[user]).await.pop() {
            Some(Ok(())) => writes.accepted_now(group.id, true),
            Some(Err(TenantError::AlreadyMember(_))) => {}
            // A group created moments ago, not yet replicated (`Tenant::add_members`): wait.
            Some(Err(error @ TenantError::NotConverged(_))) => {
                writes.new_group(name, Instant::now());
                return Ok(Attempt::Retry(error));
            }
            Some(Err(error)) => return Ok(classify(error)),
            None => return Ok(Attempt::Retry(TenantError::Transient("no answer".into()))),
        }
        added.push(group);
    }
    if !added.is_empty() {
        let now = match ctx.tenant.member_of(user).await {
            Ok(groups) => groups,
            Err(error) => return Ok(classify(error)),
        };
        if let Some(group) = added.iter().find(|g| !now.iter().any(|n| n.id == g.id)) {
            return Ok(Attempt::Retry(TenantError::NotConverged(format!(
                "{email} is not a member of {} after being added",
                group.display_name
            ))));
        }
    }
    Ok(Attempt::Done {
        would_change: false,
    })
}

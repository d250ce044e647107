//! Applying the admin-role jobs: reconcile a user's Phone System group memberships, as the
//! tenant lists them (`memberOf`), with the desired state read at apply time, removals first
//! and confirmed, then additions, under the item retry policy ([`crate::engine::retry`]); then
//! settle the stored role: a grant realised (and its email), a grant failed, a removal done.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Instant;

use uuid::Uuid;

use super::plan::holding_of;
use super::{GroupNames, ItemSpec};
use crate::domain::{AdminRole, FailureCode};
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
    at: Option<Instant>,
}

impl Writes {
    fn accepted_now(&mut self, group: Uuid, add: bool) {
        self.accepted.insert((group, add));
        self.at = Some(Instant::now());
    }
}

/// How one attempt at an item ended.
enum Attempt {
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

/// Reconcile each item's user, one after another (see the module docs).
pub(super) async fn apply<P: Sync>(
    names: &GroupNames,
    ctx: &ApplyContext<'_, P>,
    items: &[WorkItem<ItemSpec>],
) -> Result<Vec<ItemResult>, EngineError> {
    let mut groups = HashMap::new();
    let mut results = Vec::with_capacity(items.len());
    for item in items {
        if ctx.cancel.is_cancelled() {
            break;
        }
        match apply_item(names, ctx, item, &mut groups).await? {
            Some(result) => results.push(result),
            None => break,
        }
    }
    Ok(results)
}

/// Returns `None` when cancelled before the item settled (it is retried with the chunk).
async fn apply_item<P: Sync>(
    names: &GroupNames,
    ctx: &ApplyContext<'_, P>,
    item: &WorkItem<ItemSpec>,
    groups: &mut HashMap<String, Group>,
) -> Result<Option<ItemResult>, EngineError> {
    let spec = item.spec.clone().unwrap_or_default();
    let dry_run = ctx.job.dry_run;
    let job = ctx.job.id;
    let email = item.key.as_str();

    // Held until the item settles: no other job's writes for this user interleave.
    let mut tx = ctx.pool.begin().await?;
    roles::lock_user(&mut tx, email).await?;
    let stored = if dry_run {
        None
    } else {
        roles::stored_role(&mut *tx, email).await?
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
            Some(s) if s.state.is_held() || own_grant => Some(holding_of(&mut *tx, &s.role).await?),
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
    let scope = Scope {
        names,
        desired: desired.iter().map(|n| n.to_lowercase()).collect(),
        candidates: codes
            .iter()
            .flat_map(|code| AdminRole::ALL.iter().map(|r| names.name(*r, code)))
            .map(|n| n.to_lowercase())
            .collect(),
        sweep: spec.sweep,
    };

    let mut writes = Writes::default();
    let mut last_error = None;
    let mut ended = None;
    // Attempts count transient failures; a write that reads do not show yet is re-read (not
    // re-sent) for as long as the verify window allows (see `engine::retry`).
    let (mut failed_attempts, mut pauses) = (0, 0);
    loop {
        if pauses > 0 && !ctx.retry.wait(pauses, ctx.cancel).await {
            return Ok(None);
        }
        pauses += 1;
        let result = reconcile(ctx, groups, email, &desired, &scope, &mut writes).await?;
        match result {
            Attempt::Retry(error @ TenantError::NotConverged(_))
                if writes
                    .at
                    .is_some_and(|at| at.elapsed() < ctx.retry.verify_within()) =>
            {
                last_error = Some(error);
            }
            Attempt::Retry(error) => {
                last_error = Some(error);
                failed_attempts += 1;
                if failed_attempts >= ctx.retry.attempts() {
                    break;
                }
            }
            done => {
                ended = Some(done);
                break;
            }
        }
    }
    let wrote = !writes.accepted.is_empty();
    let result = match ended {
        Some(Attempt::Done { would_change }) => {
            let outcome = if wrote || would_change {
                ItemOutcome::Changed
            } else {
                ItemOutcome::AlreadyCompliant
            };
            if !dry_run {
                settled(&mut tx, job, email, holding.is_some(), stored.as_ref()).await?;
            }
            ItemResult::ok(item.seq, outcome)
        }
        Some(Attempt::Fail(code, detail)) => ItemResult::failed(item.seq, code, detail),
        Some(Attempt::Retry(_)) | None => {
            let error = last_error.unwrap_or(TenantError::Transient("no attempt".into()));
            let code = if wrote && matches!(error, TenantError::NotConverged(_)) {
                FailureCode::VerificationFailed
            } else {
                failure_code(&error)
            };
            ItemResult::failed(item.seq, code, error.to_string())
        }
    };
    if result.outcome == ItemOutcome::Failed && own_grant && holding.is_some() {
        // The grant's tenant work failed: it holds no place under the limit any more, and a
        // new assign for the user is a grant again (with its email once realised).
        roles::mark_failed(&mut tx, email, job).await?;
    }
    tx.commit().await?;
    Ok(Some(result))
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

/// The group named `name`: found by display name (cached per apply call), or, when `create`,
/// made by an upsert on its unique name (`Tenant::ensure_group`), which is idempotent also
/// while a group created a moment ago (by this replica or another) is not yet visible to the
/// display-name search: a role never lands in a second group of the same name.
/// `created` is set when the group came from the upsert (it may be too new to take members).
async fn group<P: Sync>(
    ctx: &ApplyContext<'_, P>,
    cache: &mut HashMap<String, Group>,
    name: &str,
    create: bool,
    created: &mut Option<Instant>,
) -> Result<Option<Group>, TenantError> {
    if let Some(group) = cache.get(name) {
        return Ok(Some(group.clone()));
    }
    let found = match ctx.tenant.find_group(name).await? {
        Some(group) => Some(group),
        None if create => {
            tracing::info!(group = name, "ensuring a Phone System admin group");
            *created = Some(Instant::now());
            Some(
                ctx.tenant
                    .ensure_group(
                        &unique_name(name),
                        &NewGroup {
                            display_name: name.to_owned(),
                            mail_nickname: mail_nickname(name),
                        },
                    )
                    .await?,
            )
        }
        // Absent groups are not cached: another replica may create one at any time.
        None => None,
    };
    if let Some(group) = &found {
        cache.insert(name.to_owned(), group.clone());
    }
    Ok(found)
}

/// One attempt: read the user's group memberships (`memberOf`), end those the scope ends and
/// verify, then add the desired ones missing and verify.
async fn reconcile<P: Sync>(
    ctx: &ApplyContext<'_, P>,
    cache: &mut HashMap<String, Group>,
    email: &str,
    desired: &BTreeSet<String>,
    scope: &Scope<'_>,
    writes: &mut Writes,
) -> Result<Attempt, EngineError> {
    let dry_run = ctx.job.dry_run;
    let user = match users::read_users(ctx.pool, ctx.tenant.as_ref(), &[email.to_owned()])
        .await?
        .pop()
    {
        Some(Ok(state)) => state.id,
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
    let extra: Vec<&Group> = held.iter().filter(|g| scope.ends(g)).collect();
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
            Some(Err(TenantError::NotMember(_))) => {}
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

    // 2. Only then add the missing memberships, and confirm them too.
    let mut added = Vec::new();
    for name in missing {
        let group = match group(ctx, cache, name, true, &mut writes.at).await {
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
            // A group created moments ago can answer 404 to writes until it has replicated
            // (SupportArticles-docs `404-not-found-error-manage-objects-microsoft-graph.md`):
            // Graph's message names the group, not the user.
            Some(Err(TenantError::UserNotFound(message)))
                if message.contains(&group.id.to_string()) =>
            {
                return Ok(Attempt::Retry(TenantError::NotConverged(format!(
                    "group {name} cannot take members yet: {message}"
                ))));
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

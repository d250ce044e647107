//! Applying the admin-role jobs: reconcile a user's Phone System group memberships with the
//! desired state read at apply time, removals first and confirmed, then additions, under the
//! item retry policy ([`crate::engine::retry`]).

use std::collections::{BTreeSet, HashMap};

use uuid::Uuid;

use super::plan::holding_of;
use super::{GroupNames, ItemSpec};
use crate::domain::{AdminRole, FailureCode};
use crate::engine::EngineError;
use crate::engine::failure_code;
use crate::engine::kind::{ApplyContext, ItemOutcome, ItemResult, WorkItem};
use crate::engine::retry::{ItemRetry, Verdict};
use crate::store::roles::{self, RoleRow};
use crate::tenant::{Group, NewGroup, TenantError, UserRef};

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
    let email = item.key.as_str();

    // Held until the item settles: no other job's writes for this user interleave.
    let mut tx = ctx.pool.begin().await?;
    roles::lock_user(&mut tx, email).await?;
    let holding = if dry_run {
        spec.preview.as_ref().and_then(|p| p.holding.clone())
    } else {
        match roles::role_of(&mut *tx, email).await? {
            Some(row) => Some(holding_of(&mut *tx, &row).await?),
            None => None,
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
    let mut candidates: BTreeSet<String> = codes
        .iter()
        .flat_map(|code| AdminRole::ALL.iter().map(|r| names.name(*r, code)))
        .collect();
    candidates.extend(desired.iter().cloned());

    let mut wrote = false;
    let mut last_error = None;
    let mut ended = None;
    for attempt in 0..ctx.retry.attempts() {
        if attempt > 0 && !ctx.retry.wait(attempt, ctx.cancel).await {
            return Ok(None);
        }
        let result = reconcile(ctx, groups, email, &desired, &candidates, &mut wrote).await?;
        match result {
            Attempt::Retry(error) => last_error = Some(error),
            done => {
                ended = Some(done);
                break;
            }
        }
    }
    let result = match ended {
        Some(Attempt::Done { would_change }) => {
            let outcome = if wrote || would_change {
                ItemOutcome::Changed
            } else {
                ItemOutcome::AlreadyCompliant
            };
            if let (false, Some(grant), Some(h)) = (dry_run, &spec.grant, &holding)
                && grant.role == h.role
                && grant.ods_code == h.ods_code
            {
                let row = RoleRow {
                    email: email.to_owned(),
                    ods_code: h.ods_code.clone(),
                    role: h.role,
                };
                roles::notify_granted(&mut tx, ctx.job.id, &row).await?;
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
    tx.commit().await?;
    Ok(Some(result))
}

/// The group named `name`: found (cached per apply call), or created when `create`
/// (under an advisory lock, so two replicas never create it twice).
async fn group<P: Sync>(
    ctx: &ApplyContext<'_, P>,
    cache: &mut HashMap<String, Group>,
    name: &str,
    create: bool,
) -> Result<Result<Option<Group>, TenantError>, EngineError> {
    if let Some(group) = cache.get(name) {
        return Ok(Ok(Some(group.clone())));
    }
    let found = if create {
        let mut tx = ctx.pool.begin().await?;
        roles::lock_group_name(&mut tx, name).await?;
        let found = match ctx.tenant.find_group(name).await {
            Ok(Some(group)) => Ok(Some(group)),
            Ok(None) => {
                tracing::info!(group = name, "creating a Phone System admin group");
                ctx.tenant
                    .create_group(&NewGroup {
                        display_name: name.to_owned(),
                        mail_nickname: mail_nickname(name),
                    })
                    .await
                    .map(Some)
            }
            Err(error) => Err(error),
        };
        tx.commit().await?;
        found
    } else {
        // Absent groups are not cached: another replica may create one at any time.
        ctx.tenant.find_group(name).await
    };
    if let Ok(Some(group)) = &found {
        cache.insert(name.to_owned(), group.clone());
    }
    Ok(found)
}

/// One attempt: read the user's memberships of `candidates`, remove those not `desired`
/// and verify, then add the missing ones and verify.
async fn reconcile<P: Sync>(
    ctx: &ApplyContext<'_, P>,
    cache: &mut HashMap<String, Group>,
    email: &str,
    desired: &BTreeSet<String>,
    candidates: &BTreeSet<String>,
    wrote: &mut bool,
) -> Result<Attempt, EngineError> {
    let dry_run = ctx.job.dry_run;
    let user = match ctx
        .tenant
        .get_users(&[UserRef::Upn(email.to_owned())])
        .await
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

    // Which candidate groups hold the user now.
    let mut held: Vec<(String, Group)> = Vec::new();
    for name in candidates {
        let create = desired.contains(name) && !dry_run;
        let group = match group(ctx, cache, name, create).await? {
            Ok(Some(group)) => group,
            Ok(None) => continue,
            Err(error) => return Ok(classify(error)),
        };
        match is_member(ctx, group.id, user).await {
            Ok(true) => held.push((name.clone(), group)),
            Ok(false) => {}
            Err(error) => return Ok(classify(error)),
        }
    }
    let extra: Vec<&Group> = held
        .iter()
        .filter(|(name, _)| !desired.contains(name))
        .map(|(_, g)| g)
        .collect();
    let missing: Vec<&String> = desired
        .iter()
        .filter(|name| !held.iter().any(|(n, _)| n == *name))
        .collect();
    if dry_run || (extra.is_empty() && missing.is_empty()) {
        return Ok(Attempt::Done {
            would_change: dry_run && !(extra.is_empty() && missing.is_empty()),
        });
    }

    // 1. End the memberships no longer wanted, and confirm it in the tenant.
    for group in &extra {
        match ctx.tenant.remove_members(group.id, &[user]).await.pop() {
            Some(Ok(())) => *wrote = true,
            Some(Err(TenantError::NotMember(_))) => {}
            Some(Err(error)) => return Ok(classify(error)),
            None => return Ok(Attempt::Retry(TenantError::Transient("no answer".into()))),
        }
    }
    for group in &extra {
        match is_member(ctx, group.id, user).await {
            Ok(false) => {}
            Ok(true) => {
                return Ok(Attempt::Retry(TenantError::NotConverged(format!(
                    "{email} is still a member of {} after its removal",
                    group.display_name
                ))));
            }
            Err(error) => return Ok(classify(error)),
        }
    }

    // 2. Only then add the missing memberships, and confirm them too.
    let mut added = Vec::new();
    for name in missing {
        let group = match group(ctx, cache, name, true).await? {
            Ok(Some(group)) => group,
            Ok(None) => {
                return Ok(Attempt::Retry(TenantError::NotConverged(format!(
                    "group {name} was not created"
                ))));
            }
            Err(error) => return Ok(classify(error)),
        };
        match ctx.tenant.add_members(group.id, &[user]).await.pop() {
            Some(Ok(())) => *wrote = true,
            Some(Err(TenantError::AlreadyMember(_))) => {}
            Some(Err(error)) => return Ok(classify(error)),
            None => return Ok(Attempt::Retry(TenantError::Transient("no answer".into()))),
        }
        added.push(group);
    }
    for group in &added {
        match is_member(ctx, group.id, user).await {
            Ok(true) => {}
            Ok(false) => {
                return Ok(Attempt::Retry(TenantError::NotConverged(format!(
                    "{email} is not a member of {} after being added",
                    group.display_name
                ))));
            }
            Err(error) => return Ok(classify(error)),
        }
    }
    Ok(Attempt::Done {
        would_change: false,
    })
}

async fn is_member<P: Sync>(
    ctx: &ApplyContext<'_, P>,
    group: Uuid,
    user: Uuid,
) -> Result<bool, TenantError> {
    Ok(ctx
        .tenant
        .list_members(group)
        .await?
        .iter()
        .any(|m| m.id == user))
}

//! Planning the admin-role jobs: validate, authorise, check the limit and the one-role rule
//! under advisory locks, update the desired state, and list one item per affected user.

use serde_json::json;

use super::{
    GrantPlan, Holding, ItemSpec, LeaverPlan, MAX_ADMINS_PER_ODS_CODE, MappingPlan, Preview,
    RemovalPlan,
};
use crate::domain::{
    Actor, AdminRole, AdminRoleChange, AdminRoleTarget, EmailAddress, Failure, FailureCode,
    OdsCode, OdsMappingChanged, UserLeaver,
};
use crate::engine::EngineError;
use crate::engine::kind::{Plan, PlanContext, PlannedItem};
use crate::store::roles::{self, GrantState, MappingRow, RoleRow, StoredRole};

fn failure(item: impl Into<String>, code: FailureCode, detail: impl Into<String>) -> Failure {
    Failure {
        item: item.into(),
        code,
        detail: detail.into(),
    }
}

fn parse_email(raw: &str, failures: &mut Vec<Failure>) -> Option<EmailAddress> {
    EmailAddress::parse(raw)
        .map_err(|detail| failures.push(failure(raw, FailureCode::InvalidEmail, detail)))
        .ok()
}

fn parse_code(raw: &str, failures: &mut Vec<Failure>) -> Option<OdsCode> {
    OdsCode::parse(raw)
        .map_err(|detail| failures.push(failure(raw, FailureCode::InvalidMessage, detail)))
        .ok()
}

/// Whether `actor` administers `target`: its own code, or one in the mapping it leads.
async fn authorise(
    ctx: &mut PlanContext<'_, '_>,
    actor: Option<&Actor>,
    target: &OdsCode,
) -> Result<Option<Failure>, EngineError> {
    let Some(actor) = actor else {
        return Ok(Some(failure(
            target.as_str(),
            FailureCode::Forbidden,
            "the job names no actor; admin roles are changed only on behalf of an administrator",
        )));
    };
    let refused = |why: String| Some(failure(actor.email.as_str(), FailureCode::Forbidden, why));
    let Ok(actor_code) = OdsCode::parse(&actor.ods_code) else {
        return Ok(refused(format!(
            "the actor's ODS code {:?} is not one",
            actor.ods_code
        )));
    };
    if actor_code == *target {
        return Ok(None);
    }
    let mapping = roles::mapping(&mut **ctx.tx, actor_code.as_str()).await?;
    if mapping.is_some_and(|m| m.managed.iter().any(|c| c == target.as_str())) {
        return Ok(None);
    }
    Ok(refused(format!(
        "{} of {} does not administer {}: not its own code nor in the mapping it leads",
        actor.email, actor_code, target
    )))
}

/// Codes whose groups a user holding a role for `ods_code` may be in: the code and every
/// code of its mapping (onboarded or not: one that left the onboarded list may still hold a
/// membership).
async fn codes_around(
    ctx: &mut PlanContext<'_, '_>,
    ods_code: &str,
) -> Result<Vec<String>, EngineError> {
    let mut codes = vec![ods_code.to_owned()];
    if let Some(mapping) = roles::mapping(&mut **ctx.tx, ods_code).await? {
        codes.extend(mapping.managed);
    }
    codes.sort();
    codes.dedup();
    Ok(codes)
}

/// The holding a stored role means, given the stored mapping.
pub(crate) async fn holding_of(
    executor: impl sqlx::PgExecutor<'_>,
    row: &RoleRow,
) -> Result<Holding, EngineError> {
    let reach = match row.role {
        AdminRole::PhoneSystemPrimaryAdmin => roles::mapping(executor, &row.ods_code)
            .await?
            .map(|m| m.reach())
            .unwrap_or_default(),
        AdminRole::PhoneSystemLocalAdmin => vec![],
    };
    Ok(Holding {
        role: row.role,
        ods_code: row.ods_code.clone(),
        reach,
    })
}

/// The one item of a single-user job. `sweep`: the item ends every Phone System membership
/// the tenant shows for the user that the desired state does not want (removals, leavers).
async fn user_item(
    ctx: &mut PlanContext<'_, '_>,
    email: &EmailAddress,
    codes: Vec<String>,
    after: Option<&RoleRow>,
    sweep: bool,
) -> Result<PlannedItem<ItemSpec>, EngineError> {
    let preview = if ctx.job.dry_run {
        let holding = match after {
            Some(row) => Some(holding_of(&mut **ctx.tx, row).await?),
            None => None,
        };
        Some(Preview { holding })
    } else {
        None
    };
    let spec = ItemSpec {
        codes,
        sweep,
        preview,
    };
    Ok(PlannedItem::with_spec(email.as_str(), spec))
}

fn conflict(email: &EmailAddress, detail: String) -> Failure {
    failure(email.as_str(), FailureCode::RoleConflict, detail)
}

/// What a user holds, for a refusal's detail.
fn holds(stored: Option<&StoredRole>) -> String {
    match stored {
        Some(s) if s.state.is_held() => {
            format!("holds {} for {}", s.role.role.as_str(), s.role.ods_code)
        }
        Some(s) if s.state == GrantState::Failed => format!(
            "holds no Phone System admin role (a grant of {} for {} failed)",
            s.role.role.as_str(),
            s.role.ods_code
        ),
        Some(s) => format!(
            "holds no Phone System admin role ({} for {} is being removed)",
            s.role.role.as_str(),
            s.role.ods_code
        ),
        None => "holds no Phone System admin role".to_owned(),
    }
}

/// A grant of `wanted` to a user whose stored role is `stored` (none, or one that is not
/// realised): checks the limit unless the user already takes a place for the code (a failed
/// grant takes none), then stores the grant as `pending`, owned by this job. `Err`: refused.
async fn grant(
    ctx: &mut PlanContext<'_, '_>,
    stored: Option<&StoredRole>,
    wanted: &RoleRow,
) -> Result<Result<(), Failure>, EngineError> {
    let counted = stored.is_some_and(|s| s.state.counts() && s.role.ods_code == wanted.ods_code);
    if !counted {
        let holders = roles::count_at(ctx.tx, &wanted.ods_code).await?;
        if holders >= MAX_ADMINS_PER_ODS_CODE {
            return Ok(Err(failure(
                wanted.email.as_str(),
                FailureCode::AdminLimitReached,
                format!(
                    "{} already has {holders} Phone System admins (at most {MAX_ADMINS_PER_ODS_CODE})",
                    wanted.ods_code
                ),
            )));
        }
    }
    if !ctx.job.dry_run {
        roles::put(ctx.tx, wanted, ctx.job.id).await?;
    }
    Ok(Ok(()))
}

/// The codes whose groups an item may have to leave: those around `code`, and those around
/// a stored role of another code that a grant replaces.
async fn codes_with(
    ctx: &mut PlanContext<'_, '_>,
    code: &str,
    stored: Option<&StoredRole>,
) -> Result<Vec<String>, EngineError> {
    let mut codes = codes_around(ctx, code).await?;
    if let Some(old) = stored.filter(|s| s.role.ods_code != code) {
        codes.extend(codes_around(ctx, &old.role.ods_code).await?);
        codes.sort();
        codes.dedup();
    }
    Ok(codes)
}

/// The common start of the role jobs: parse the user and the ODS code (adding to `failures`,
/// which may already hold the job's own), check that the actor may act on the code, and lock
/// the code (the 10-admin limit) and the user (one role) for the planning transaction.
/// `Err` holds the failures of a job to reject.
async fn checked_target(
    ctx: &mut PlanContext<'_, '_>,
    user: &str,
    ods_code: &str,
    mut failures: Vec<Failure>,
) -> Result<Result<(EmailAddress, OdsCode), Vec<Failure>>, EngineError> {
    let email = parse_email(user, &mut failures);
    let code = parse_code(ods_code, &mut failures);
    let (Some(email), Some(code), true) = (email, code, failures.is_empty()) else {
        return Ok(Err(failures));
    };
    let actor = ctx.job.actor.clone();
    if let Some(refused) = authorise(ctx, actor.as_ref(), &code).await? {
        return Ok(Err(vec![refused]));
    }
    roles::lock_ods_code(ctx.tx, code.as_str()).await?;
    roles::lock_user(ctx.tx, email.as_str()).await?;
    Ok(Ok((email, code)))
}

pub(super) async fn assign(
    mut ctx: PlanContext<'_, '_>,
    target: AdminRoleTarget,
) -> Result<Plan<GrantPlan, ItemSpec>, EngineError> {
    let target = &target;
    let subject = json!({ "user": target.user, "ods_code": target.ods_code, "role": target.role });
    let reject = |failures| Plan::Reject {
        subject: Some(subject.clone()),
        failures,
    };
    let (email, code) =
        match checked_target(&mut ctx, &target.user, &target.ods_code, Vec::new()).await? {
            Ok(target) => target,
            Err(failures) => return Ok(reject(failures)),
        };
    let wanted = RoleRow {
        email: email.as_str().to_owned(),
        ods_code: code.as_str().to_owned(),
        role: target.role,
    };
    let stored = roles::stored_role(&mut **ctx.tx, email.as_str()).await?;
    let granted = match &stored {
        // Held and realised: only the memberships are checked (and repaired), no email.
        Some(s) if s.role == wanted && s.state == GrantState::Realised => false,
        Some(s) if s.state.is_held() && s.role != wanted => {
            return Ok(reject(vec![conflict(
                &email,
                format!(
                    "already {}; a user holds one Phone System admin role",
                    holds(Some(s))
                ),
            )]));
        }
        // Not held (none, a failed grant, a role being removed), or stored but not realised
        // yet: a grant, owned by this job, whose email goes once the tenant shows it.
        _ => match grant(&mut ctx, stored.as_ref(), &wanted).await? {
            Ok(()) => true,
            Err(refused) => return Ok(reject(vec![refused])),
        },
    };
    let codes = codes_with(&mut ctx, code.as_str(), stored.as_ref()).await?;
    let item = user_item(&mut ctx, &email, codes, Some(&wanted), false).await?;
    Ok(Plan::Accept {
        subject,
        plan: GrantPlan { granted },
        items: vec![item].into(),
    })
}

pub(super) async fn remove(
    mut ctx: PlanContext<'_, '_>,
    target: AdminRoleTarget,
) -> Result<Plan<RemovalPlan, ItemSpec>, EngineError> {
    let target = &target;
    let subject = json!({ "user": target.user, "ods_code": target.ods_code, "role": target.role });
    let reject = |failures| Plan::Reject {
        subject: Some(subject.clone()),
        failures,
    };
    let (email, code) =
        match checked_target(&mut ctx, &target.user, &target.ods_code, Vec::new()).await? {
            Ok(target) => target,
            Err(failures) => return Ok(reject(failures)),
        };
    let stored = roles::stored_role(&mut **ctx.tx, email.as_str()).await?;
    let removed = match &stored {
        // Not stored: nothing to change in the desired state; the memberships are still ended.
        None => false,
        // The role named, or a role not held (a failed grant, one already being removed): it
        // stays stored, `removing`, until the tenant shows no membership left.
        Some(s)
            if !s.state.is_held()
                || (s.role.ods_code == code.as_str() && s.role.role == target.role) =>
        {
            if !ctx.job.dry_run {
                roles::mark_removing(ctx.tx, email.as_str(), ctx.job.id).await?;
            }
            true
        }
        Some(s) => {
            return Ok(reject(vec![conflict(
                &email,
                format!(
                    "{}, not {} for {code}",
                    holds(Some(s)),
                    target.role.as_str()
                ),
            )]));
        }
    };
    let codes = codes_with(&mut ctx, code.as_str(), stored.as_ref()).await?;
    let item = user_item(&mut ctx, &email, codes, None, true).await?;
    Ok(Plan::Accept {
        subject,
        plan: RemovalPlan { removed },
        items: vec![item].into(),
    })
}

pub(super) async fn change(
    mut ctx: PlanContext<'_, '_>,
    change: AdminRoleChange,
) -> Result<Plan<GrantPlan, ItemSpec>, EngineError> {
    let change = &change;
    let subject = json!({ "user": change.user, "ods_code": change.ods_code,
                          "from": change.from, "to": change.to });
    let reject = |failures| Plan::Reject {
        subject: Some(subject.clone()),
        failures,
    };
    let mut failures = Vec::new();
    if change.from == change.to {
        failures.push(failure(
            change.user.as_str(),
            FailureCode::InvalidMessage,
            "from and to are the same role",
        ));
    }
    let (email, code) =
        match checked_target(&mut ctx, &change.user, &change.ods_code, failures).await? {
            Ok(target) => target,
            Err(failures) => return Ok(reject(failures)),
        };
    let wanted = RoleRow {
        email: email.as_str().to_owned(),
        ods_code: code.as_str().to_owned(),
        role: change.to,
    };
    let stored = roles::stored_role(&mut **ctx.tx, email.as_str()).await?;
    let granted = match &stored {
        // The change itself. Same code: the user keeps their place under the limit.
        Some(s)
            if s.state.is_held()
                && s.role.ods_code == code.as_str()
                && s.role.role == change.from =>
        {
            if !ctx.job.dry_run {
                roles::put(ctx.tx, &wanted, ctx.job.id).await?;
            }
            true
        }
        // Done before (the same change again): the memberships are still checked.
        Some(s) if s.role == wanted && s.state == GrantState::Realised => false,
        // The same change sent again after its grant failed or before it was realised: a
        // grant again, owned by this job.
        Some(s) if s.role == wanted => match grant(&mut ctx, stored.as_ref(), &wanted).await? {
            Ok(()) => true,
            Err(refused) => return Ok(reject(vec![refused])),
        },
        other => {
            return Ok(reject(vec![conflict(
                &email,
                format!(
                    "{}, not {} for {code}: nothing to change from",
                    holds(other.as_ref()),
                    change.from.as_str()
                ),
            )]));
        }
    };
    let codes = codes_around(&mut ctx, code.as_str()).await?;
    let item = user_item(&mut ctx, &email, codes, Some(&wanted), false).await?;
    Ok(Plan::Accept {
        subject,
        plan: GrantPlan { granted },
        items: vec![item].into(),
    })
}

/// No actor check: mappings come from the onboarding process of the platform, not from an
/// administrator acting in the portal.
pub(super) async fn mapping(
    ctx: PlanContext<'_, '_>,
    change: OdsMappingChanged,
) -> Result<Plan<MappingPlan, ItemSpec>, EngineError> {
    let change = &change;
    let subject = json!({ "ods_code": change.ods_code, "managed_ods_codes": change.managed_ods_codes,
                          "onboarded": change.onboarded });
    let mut failures = Vec::new();
    let lead = parse_code(&change.ods_code, &mut failures);
    let mut parse_all = |raw: &[String]| {
        let mut codes: Vec<String> = raw
            .iter()
            .filter_map(|c| parse_code(c, &mut failures))
            .map(|c| c.as_str().to_owned())
            .collect();
        codes.sort();
        codes.dedup();
        codes
    };
    let managed = parse_all(&change.managed_ods_codes);
    let onboarded = parse_all(&change.onboarded);
    let Some(lead) = lead.filter(|_| failures.is_empty()) else {
        return Ok(Plan::Reject {
            subject: Some(subject),
            failures,
        });
    };
    // The code's lock: an assignment for the lead code plans either before (and its Primary
    // admin is listed here) or after (and it reads the new mapping).
    roles::lock_ods_code(ctx.tx, lead.as_str()).await?;
    let new = MappingRow {
        lead_ods_code: lead.as_str().to_owned(),
        managed,
        onboarded,
    };
    let old = roles::mapping(&mut **ctx.tx, lead.as_str()).await?;
    if !ctx.job.dry_run {
        roles::put_mapping(ctx.tx, &new, ctx.job.id).await?;
    }
    let mut codes: Vec<String> = std::iter::once(new.lead_ods_code.clone())
        .chain(new.managed.iter().cloned())
        .chain(old.iter().flat_map(|m| m.managed.iter().cloned()))
        .collect();
    codes.sort();
    codes.dedup();
    let preview = ctx.job.dry_run.then(|| Preview {
        holding: Some(Holding {
            role: AdminRole::PhoneSystemPrimaryAdmin,
            ods_code: new.lead_ods_code.clone(),
            reach: new.reach(),
        }),
    });
    let items = roles::primary_admins(ctx.tx, lead.as_str())
        .await?
        .into_iter()
        .map(|email| {
            PlannedItem::with_spec(
                email,
                ItemSpec {
                    codes: codes.clone(),
                    sweep: false,
                    preview: preview.clone(),
                },
            )
        })
        .collect::<Vec<_>>();
    Ok(Plan::Accept {
        subject,
        plan: MappingPlan {
            mapping: new,
            previous: old,
        },
        items: items.into(),
    })
}

/// No actor check: leavers come from the platform's JML process. The user loses their role
/// and every membership of the Phone System groups of their organisation and its mapping.
pub(super) async fn leaver(
    mut ctx: PlanContext<'_, '_>,
    leaver: UserLeaver,
) -> Result<Plan<LeaverPlan, ItemSpec>, EngineError> {
    let leaver = &leaver;
    let subject = json!({ "user": leaver.user });
    let mut failures = Vec::new();
    let Some(email) = parse_email(&leaver.user, &mut failures) else {
        return Ok(Plan::Reject {
            subject: Some(subject),
            failures,
        });
    };
    roles::lock_user(ctx.tx, email.as_str()).await?;
    let stored = roles::stored_role(&mut **ctx.tx, email.as_str()).await?;
    let codes = match &stored {
        Some(s) => {
            // Stored (in any state) until the tenant shows no Phone System membership left.
            if !ctx.job.dry_run {
                roles::mark_removing(ctx.tx, email.as_str(), ctx.job.id).await?;
            }
            codes_around(&mut ctx, &s.role.ods_code).await?
        }
        // No role known: the item still ends every Phone System membership the tenant shows.
        None => vec![],
    };
    let held = stored.map(|s| s.role);
    let item = user_item(&mut ctx, &email, codes, None, true).await?;
    Ok(Plan::Accept {
        subject: json!({ "user": email.as_str(), "role": held.as_ref().map(|h| h.role),
                         "ods_code": held.as_ref().map(|h| h.ods_code.clone()) }),
        plan: LeaverPlan { removed: held },
        items: vec![item].into(),
    })
}

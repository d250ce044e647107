//! Phone System admin roles: `admin_role.assign`, `admin_role.remove`, `admin_role.change`,
//! `ods_mapping.changed` and `user.leaver`.
//!
//! **Desired state** (`store::roles`): a user holds at most one role (Primary or Local) for one
//! ODS code, at most [`MAX_ADMINS_PER_ODS_CODE`] users hold a role for a code, and a lead
//! organisation has one ODS mapping (managed and onboarded organisations).
//!
//! **In the tenant** a role is membership of security groups named from the `[roles]`
//! templates, one group per role and organisation: a Local admin is in their organisation's
//! Local group; a Primary admin is in their organisation's Primary group and in the Primary
//! group of every onboarded organisation of the mapping their organisation leads.
//!
//! **Planning** (in the planner's transaction) validates the job, checks the actor, the limit
//! (under an advisory lock per ODS code, so replicas cannot exceed it together) and the
//! one-role rule, updates the desired state and lists one item per affected user. A rejected
//! job writes nothing.
//!
//! **Applying** an item reconciles the user's memberships of the Phone System groups of the
//! organisations involved with the desired state read *at apply time*, under an advisory lock
//! per user (so two jobs about one user never interleave their writes, and the last job
//! planned decides). Memberships to end are removed first and the removal is verified by
//! reading the groups back; only then are missing memberships added and verified. An
//! `admin_role.change` therefore removes the old role, confirms it in the tenant, then assigns
//! the new one: two separate, ordered actions, never one.
//!
//! **Email.** A job that grants a role (an assign of a role the user did not hold, or the new
//! role of a change) sends one `notification.email` (`phone_system_admin_granted`) once the
//! tenant shows the user in the role's groups: the applier enqueues it in the outbox in the
//! same transaction that claims the `(job, user)` row of `admin_role_notifications`, so a
//! retried or taken-over item never sends it twice, and a grant whose memberships could not be
//! made sends none. Removals, by an administrator or by the leaver process, send no email.

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use serde_json::json;
use uuid::Uuid;

use super::kind::{
    ApplyContext, ItemOutcome, ItemResult, JobKind, Plan, PlanContext, PlannedItem, WorkItem,
};
use super::{EngineError, failure_code};
use crate::configuration::{ODS_CODE_PLACEHOLDER, RoleSettings};
use crate::domain::{
    Actor, AdminRole, EmailAddress, Failure, FailureCode, JobPayload, JobType, OdsCode,
};
use crate::store::roles::{self, MappingRow, RoleRow};
use crate::tenant::{Group, NewGroup, TenantError, UserRef};

/// Users per ODS code holding either Phone System admin role.
pub const MAX_ADMINS_PER_ODS_CODE: i64 = 10;

/// Group display names from the `[roles]` templates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupNames {
    primary: String,
    local: String,
}

impl GroupNames {
    pub fn new(settings: &RoleSettings) -> Self {
        Self {
            primary: settings.primary_group_template.clone(),
            local: settings.local_group_template.clone(),
        }
    }

    /// The group of `role` for `ods_code`.
    pub fn name(&self, role: AdminRole, ods_code: &str) -> String {
        let template = match role {
            AdminRole::PhoneSystemPrimaryAdmin => &self.primary,
            AdminRole::PhoneSystemLocalAdmin => &self.local,
        };
        template.replace(ODS_CODE_PLACEHOLDER, ods_code)
    }
}

/// What a user should hold in the tenant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub role: AdminRole,
    pub ods_code: String,
    /// For a Primary admin: the onboarded organisations of their organisation's mapping.
    pub reach: Vec<String>,
}

impl Holding {
    /// The groups this holding means.
    pub fn groups(&self, names: &GroupNames) -> BTreeSet<String> {
        let mut groups = BTreeSet::from([names.name(self.role, &self.ods_code)]);
        if self.role == AdminRole::PhoneSystemPrimaryAdmin {
            groups.extend(
                self.reach
                    .iter()
                    .map(|code| names.name(AdminRole::PhoneSystemPrimaryAdmin, code)),
            );
        }
        groups
    }
}

/// The role a job granted, to be announced by email once realised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Grant {
    ods_code: String,
    role: AdminRole,
}

/// An item's instructions.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ItemSpec {
    /// Organisations whose groups (of both roles) may hold memberships to end.
    codes: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    grant: Option<Grant>,
    /// Dry runs only (they write no desired state): what the job would leave the user with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    preview: Option<Preview>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Preview {
    holding: Option<Holding>,
}

pub struct RolesKind {
    names: GroupNames,
}

impl RolesKind {
    pub fn new(settings: &RoleSettings) -> Self {
        Self {
            names: GroupNames::new(settings),
        }
    }
}

#[async_trait]
impl JobKind for RolesKind {
    fn job_types(&self) -> &'static [JobType] {
        &[
            JobType::AdminRoleAssign,
            JobType::AdminRoleRemove,
            JobType::AdminRoleChange,
            JobType::OdsMappingChanged,
            JobType::UserLeaver,
        ]
    }

    async fn plan(&self, ctx: PlanContext<'_, '_>) -> Result<Plan, EngineError> {
        match &ctx.job.payload {
            JobPayload::AdminRoleAssign(_) => plan_assign(ctx).await,
            JobPayload::AdminRoleRemove(_) => plan_remove(ctx).await,
            JobPayload::AdminRoleChange(_) => plan_change(ctx).await,
            JobPayload::OdsMappingChanged(_) => plan_mapping(ctx).await,
            JobPayload::UserLeaver(_) => plan_leaver(ctx).await,
            other => Err(EngineError::Corrupt(format!(
                "admin role planner given {other:?}"
            ))),
        }
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_>,
        items: &[WorkItem],
    ) -> Result<Vec<ItemResult>, EngineError> {
        let mut groups = HashMap::new();
        let mut results = Vec::with_capacity(items.len());
        for item in items {
            if ctx.cancel.is_cancelled() {
                break;
            }
            match self.apply_item(ctx, item, &mut groups).await? {
                Some(result) => results.push(result),
                None => break,
            }
        }
        Ok(results)
    }
}

// ---------------------------------------------------------------------------------------------
// Planning

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
async fn holding_of(
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

/// The one item of a single-user job.
async fn user_item(
    ctx: &mut PlanContext<'_, '_>,
    email: &EmailAddress,
    codes: Vec<String>,
    after: Option<&RoleRow>,
    grant: Option<Grant>,
) -> Result<PlannedItem, EngineError> {
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
        grant,
        preview,
    };
    Ok(PlannedItem {
        key: email.as_str().to_owned(),
        spec: Some(serde_json::to_value(spec).expect("item spec serializes")),
    })
}

fn conflict(email: &EmailAddress, detail: String) -> Failure {
    failure(email.as_str(), FailureCode::RoleConflict, detail)
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

async fn plan_assign(mut ctx: PlanContext<'_, '_>) -> Result<Plan, EngineError> {
    let JobPayload::AdminRoleAssign(target) = &ctx.job.payload else {
        unreachable!("dispatched on the payload");
    };
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
    let grant = match roles::role_of(&mut **ctx.tx, email.as_str()).await? {
        Some(held) if held == wanted => None,
        Some(held) => {
            return Ok(reject(vec![conflict(
                &email,
                format!(
                    "already holds {} for {}; a user holds one Phone System admin role",
                    held.role.as_str(),
                    held.ods_code
                ),
            )]));
        }
        None => {
            let holders = roles::count_at(ctx.tx, code.as_str()).await?;
            if holders >= MAX_ADMINS_PER_ODS_CODE {
                return Ok(reject(vec![failure(
                    email.as_str(),
                    FailureCode::AdminLimitReached,
                    format!(
                        "{code} already has {holders} Phone System admins (at most {MAX_ADMINS_PER_ODS_CODE})"
                    ),
                )]));
            }
            if !ctx.job.dry_run {
                roles::put(ctx.tx, &wanted, ctx.job.id).await?;
            }
            Some(Grant {
                ods_code: wanted.ods_code.clone(),
                role: wanted.role,
            })
        }
    };
    let codes = codes_around(&mut ctx, code.as_str()).await?;
    let granted = grant.is_some();
    let item = user_item(&mut ctx, &email, codes, Some(&wanted), grant).await?;
    Ok(Plan::Accept {
        subject,
        plan: json!({ "granted": granted }),
        items: vec![item].into(),
    })
}

async fn plan_remove(mut ctx: PlanContext<'_, '_>) -> Result<Plan, EngineError> {
    let JobPayload::AdminRoleRemove(target) = &ctx.job.payload else {
        unreachable!("dispatched on the payload");
    };
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
    let removed = match roles::role_of(&mut **ctx.tx, email.as_str()).await? {
        // Not held: nothing to change in the desired state; the memberships are still checked.
        None => false,
        Some(held) if held.ods_code == code.as_str() && held.role == target.role => {
            if !ctx.job.dry_run {
                roles::delete(ctx.tx, email.as_str()).await?;
            }
            true
        }
        Some(held) => {
            return Ok(reject(vec![conflict(
                &email,
                format!(
                    "holds {} for {}, not {} for {code}",
                    held.role.as_str(),
                    held.ods_code,
                    target.role.as_str()
                ),
            )]));
        }
    };
    let codes = codes_around(&mut ctx, code.as_str()).await?;
    let item = user_item(&mut ctx, &email, codes, None, None).await?;
    Ok(Plan::Accept {
        subject,
        plan: json!({ "removed": removed }),
        items: vec![item].into(),
    })
}

async fn plan_change(mut ctx: PlanContext<'_, '_>) -> Result<Plan, EngineError> {
    let JobPayload::AdminRoleChange(change) = &ctx.job.payload else {
        unreachable!("dispatched on the payload");
    };
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
    let grant = match roles::role_of(&mut **ctx.tx, email.as_str()).await? {
        Some(held) if held.ods_code == code.as_str() && held.role == change.from => {
            // Same code, so the number of admins for it does not change.
            if !ctx.job.dry_run {
                roles::put(ctx.tx, &wanted, ctx.job.id).await?;
            }
            Some(Grant {
                ods_code: wanted.ods_code.clone(),
                role: wanted.role,
            })
        }
        // Done before (the same change again): the memberships are still checked.
        Some(held) if held == wanted => None,
        held => {
            let holds = held.map_or_else(
                || "holds no Phone System admin role".to_owned(),
                |h| format!("holds {} for {}", h.role.as_str(), h.ods_code),
            );
            return Ok(reject(vec![conflict(
                &email,
                format!(
                    "{holds}, not {} for {code}: nothing to change from",
                    change.from.as_str()
                ),
            )]));
        }
    };
    let codes = codes_around(&mut ctx, code.as_str()).await?;
    let granted = grant.is_some();
    let item = user_item(&mut ctx, &email, codes, Some(&wanted), grant).await?;
    Ok(Plan::Accept {
        subject,
        plan: json!({ "granted": granted }),
        items: vec![item].into(),
    })
}

/// No actor check: mappings come from the onboarding process of the platform, not from an
/// administrator acting in the portal.
async fn plan_mapping(ctx: PlanContext<'_, '_>) -> Result<Plan, EngineError> {
    let JobPayload::OdsMappingChanged(change) = &ctx.job.payload else {
        unreachable!("dispatched on the payload");
    };
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
        .map(|email| PlannedItem {
            key: email,
            spec: Some(
                serde_json::to_value(ItemSpec {
                    codes: codes.clone(),
                    grant: None,
                    preview: preview.clone(),
                })
                .expect("item spec serializes"),
            ),
        })
        .collect::<Vec<_>>();
    Ok(Plan::Accept {
        subject,
        plan: json!({ "mapping": new, "previous": old }),
        items: items.into(),
    })
}

/// No actor check: leavers come from the platform's JML process. The user loses their role
/// and every membership of the Phone System groups of their organisation and its mapping.
async fn plan_leaver(mut ctx: PlanContext<'_, '_>) -> Result<Plan, EngineError> {
    let JobPayload::UserLeaver(leaver) = &ctx.job.payload else {
        unreachable!("dispatched on the payload");
    };
    let subject = json!({ "user": leaver.user });
    let mut failures = Vec::new();
    let Some(email) = parse_email(&leaver.user, &mut failures) else {
        return Ok(Plan::Reject {
            subject: Some(subject),
            failures,
        });
    };
    roles::lock_user(ctx.tx, email.as_str()).await?;
    let held = roles::role_of(&mut **ctx.tx, email.as_str()).await?;
    let codes = match &held {
        Some(held) => {
            if !ctx.job.dry_run {
                roles::delete(ctx.tx, email.as_str()).await?;
            }
            codes_around(&mut ctx, &held.ods_code).await?
        }
        // No role known: no group of ours to check (the item settles at once).
        None => vec![],
    };
    let item = user_item(&mut ctx, &email, codes, None, None).await?;
    Ok(Plan::Accept {
        subject: json!({ "user": email.as_str(), "role": held.as_ref().map(|h| h.role),
                         "ods_code": held.as_ref().map(|h| h.ods_code.clone()) }),
        plan: json!({ "removed": held }),
        items: vec![item].into(),
    })
}

// ---------------------------------------------------------------------------------------------
// Applying

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
    if error.is_transient() || matches!(error, TenantError::NotConverged(_)) {
        Attempt::Retry(error)
    } else {
        Attempt::Fail(failure_code(&error), error.to_string())
    }
}

/// A mail nickname for a group name: letters, digits, `-`, `_` and `.` only.
fn mail_nickname(display_name: &str) -> String {
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

impl RolesKind {
    /// Returns `None` when cancelled before the item settled (it is retried with the chunk).
    async fn apply_item(
        &self,
        ctx: &ApplyContext<'_>,
        item: &WorkItem,
        groups: &mut HashMap<String, Group>,
    ) -> Result<Option<ItemResult>, EngineError> {
        let spec: ItemSpec = item
            .spec
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| EngineError::Corrupt(format!("admin role item spec: {e}")))?
            .unwrap_or_default();
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
            .map(|h| h.groups(&self.names))
            .unwrap_or_default();
        let mut codes: BTreeSet<&str> = spec.codes.iter().map(String::as_str).collect();
        if let Some(h) = &holding {
            codes.insert(&h.ods_code);
            codes.extend(h.reach.iter().map(String::as_str));
        }
        let mut candidates: BTreeSet<String> = codes
            .iter()
            .flat_map(|code| AdminRole::ALL.iter().map(|r| self.names.name(*r, code)))
            .collect();
        candidates.extend(desired.iter().cloned());

        let attempts = ctx.settings.item_attempts.get();
        let mut wrote = false;
        let mut last_error = None;
        let mut ended = None;
        for attempt in 0..attempts {
            if attempt > 0 {
                let pause = Duration::from_millis(200 * u64::from(attempt));
                tokio::select! {
                    _ = ctx.cancel.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(pause) => {}
                }
            }
            let result = self
                .reconcile(ctx, groups, email, &desired, &candidates, &mut wrote)
                .await?;
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
    async fn group(
        &self,
        ctx: &ApplyContext<'_>,
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
    async fn reconcile(
        &self,
        ctx: &ApplyContext<'_>,
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
            let group = match self.group(ctx, cache, name, create).await? {
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
            let group = match self.group(ctx, cache, name, true).await? {
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
}

async fn is_member(ctx: &ApplyContext<'_>, group: Uuid, user: Uuid) -> Result<bool, TenantError> {
    Ok(ctx
        .tenant
        .list_members(group)
        .await?
        .iter()
        .any(|m| m.id == user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> GroupNames {
        GroupNames::new(&RoleSettings::default())
    }

    #[test]
    fn group_names_follow_the_templates() {
        let names = names();
        assert_eq!(
            names.name(AdminRole::PhoneSystemPrimaryAdmin, "RX1"),
            "PhoneSystem-Primary-RX1"
        );
        assert_eq!(
            names.name(AdminRole::PhoneSystemLocalAdmin, "Y02345"),
            "PhoneSystem-Local-Y02345"
        );
    }

    #[test]
    fn a_primary_reaches_the_onboarded_organisations_of_its_mapping() {
        let mapping = MappingRow {
            lead_ods_code: "RX1".into(),
            managed: vec!["RX2".into(), "RX3".into(), "RX1".into()],
            onboarded: vec!["RX1".into(), "RX2".into()],
        };
        assert_eq!(mapping.reach(), vec!["RX2".to_owned()]);
        let primary = Holding {
            role: AdminRole::PhoneSystemPrimaryAdmin,
            ods_code: "RX1".into(),
            reach: mapping.reach(),
        };
        assert_eq!(
            primary.groups(&names()).into_iter().collect::<Vec<_>>(),
            vec!["PhoneSystem-Primary-RX1", "PhoneSystem-Primary-RX2"]
        );
        // A Local admin's reach never extends beyond their own organisation.
        let local = Holding {
            role: AdminRole::PhoneSystemLocalAdmin,
            ods_code: "RX1".into(),
            reach: vec!["RX2".into()],
        };
        assert_eq!(
            local.groups(&names()).into_iter().collect::<Vec<_>>(),
            vec!["PhoneSystem-Local-RX1"]
        );
    }

    #[test]
    fn mail_nicknames_are_plain() {
        assert_eq!(
            mail_nickname("Phone System/RX1 (primary)"),
            "Phone-System-RX1--primary-"
        );
    }
}

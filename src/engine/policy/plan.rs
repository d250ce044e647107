//! Planning the two policy jobs: validate, store the desired state (definitions and
//! memberships), supersede older jobs of the policy, and list the members as items.

use serde_json::{Value, json};
use uuid::Uuid;

use super::PolicyPlan;
use crate::domain::{
    EmailAddress, Failure, FailureCode, MAX_FAILURES_LISTED, MembersAdded, OdsCode, PolicyChanged,
};
use crate::engine::events::JobCompleted;
use crate::engine::kind::{Plan, PlanContext, PlannedItems};
use crate::engine::{EngineError, licensing};
use crate::store::licensing as store_licensing;
use crate::store::policies::{self, PolicyRow};
use crate::store::work;
use crate::telemetry::emit;
use crate::tenant::SkuCatalogue;

fn subject(policy: &PolicyRow, job_version: i64) -> Value {
    let mut subject = json!({
        "policy_id": policy.id,
        "policy_name": policy.name,
        "version": job_version,
    });
    if policy.version != job_version {
        subject["applied_version"] = json!(policy.version);
    }
    subject
}

/// Check the job's member list where it is stored (it is never held whole here: a policy
/// may have 200,000 members): well-formed, unique emails, and `total` equal to their number.
/// Leaves the list staged ([`policies::STAGED_MEMBERS`]) for storing and as the plan's
/// items. Returns how many are listed, and the failures in list order, at most as many as
/// `job.completed` lists (plus one, so that it says the list was cut).
async fn check_members(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    job_id: Uuid,
    total: Option<u64>,
) -> Result<(u64, Vec<Failure>), EngineError> {
    let listed = policies::stage_members(tx, job_id).await?;
    let limit = MAX_FAILURES_LISTED + 1;
    let mut failures: Vec<(i32, Failure)> = Vec::new();
    let (mut seqs, mut emails) = (Vec::new(), Vec::new());
    // Addresses PostgreSQL could not pass as plain: the domain's rule decides.
    for (seq, raw) in policies::unusual_members(tx).await? {
        match EmailAddress::parse(&raw) {
            Ok(email) => {
                seqs.push(seq);
                emails.push(email.as_str().to_owned());
            }
            Err(detail) if failures.len() < limit => failures.push((
                seq,
                Failure {
                    item: raw,
                    code: FailureCode::InvalidEmail,
                    detail,
                },
            )),
            Err(_) => {}
        }
    }
    policies::set_staged_emails(tx, &seqs, &emails).await?;
    for (seq, email) in policies::repeated_members(tx, limit as i64).await? {
        failures.push((
            seq,
            Failure {
                item: email,
                code: FailureCode::DuplicateEmail,
                detail: "listed more than once".into(),
            },
        ));
    }
    failures.sort_by_key(|(seq, _)| *seq);
    failures.truncate(limit);
    let mut failures: Vec<Failure> = failures.into_iter().map(|(_, f)| f).collect();
    if let Some(total) = total
        && total != listed as u64
    {
        failures.push(Failure {
            item: "total_members".into(),
            code: FailureCode::MemberCountMismatch,
            detail: format!("total_members is {total} but {listed} members are listed"),
        });
    }
    Ok((listed as u64, failures))
}

/// Check a definition against the tenant's catalogue.
fn check_definition(policy: &PolicyRow, catalogue: &SkuCatalogue) -> Vec<Failure> {
    let mut failures = Vec::new();
    if let Err(detail) = OdsCode::parse(&policy.ods_code) {
        failures.push(Failure {
            item: policy.id.clone(),
            code: FailureCode::InvalidMessage,
            detail,
        });
    }
    if policy.id.trim().is_empty() {
        failures.push(Failure {
            item: "policy.id".into(),
            code: FailureCode::InvalidMessage,
            detail: "policy id is empty".into(),
        });
    }
    match catalogue.by_part_number(&policy.licence) {
        Err(_) => failures.push(Failure {
            item: policy.licence.clone(),
            code: FailureCode::UnknownLicence,
            detail: format!("the tenant has no licence {}", policy.licence),
        }),
        Ok(sku) => {
            for name in policy.toggles.keys() {
                if sku.plan_id(name).is_none() {
                    failures.push(Failure {
                        item: name.clone(),
                        code: FailureCode::UnknownServicePlan,
                        detail: format!("{} has no service plan {name}", policy.licence),
                    });
                }
            }
        }
    }
    failures
}

pub(super) async fn plan_changed(
    mut ctx: PlanContext<'_, '_>,
    payload: PolicyChanged,
) -> Result<Plan<PolicyPlan, ()>, EngineError> {
    let def = &payload.policy;
    let incoming = PolicyRow {
        id: def.id.clone(),
        name: def.name.clone(),
        ods_code: def.ods_code.clone(),
        version: def.version,
        licence: def.licence.clone(),
        toggles: def.toggles.clone(),
    };
    let job_subject = subject(&incoming, def.version);
    // A re-verification after a plan was added reads the catalogue afresh: this replica's
    // cache may predate the plan.
    let catalogue = if licensing::is_reverification(&ctx.job.message_id) {
        ctx.tenant.refresh_skus().await?
    } else {
        ctx.tenant.skus().await?
    };
    let mut failures = check_definition(&incoming, &catalogue);
    if let Ok(sku) = catalogue.by_part_number(&incoming.licence) {
        failures.extend(licensing::dependency_failures(
            &incoming,
            sku,
            &ctx.settings.licensing.plan_dependencies,
        ));
    }
    // The payload's list was left in the database (an empty list here means "given").
    let listed = payload.members.is_some();
    let mut listed_count = 0;
    if listed {
        let (count, member_failures) =
            check_members(ctx.tx, ctx.job.id, payload.total_members).await?;
        listed_count = count;
        failures.extend(member_failures);
    }
    if !failures.is_empty() {
        return Ok(Plan::Reject {
            subject: Some(job_subject),
            failures,
        });
    }

    policies::lock(ctx.tx, &incoming.id).await?;
    let stored = policies::get(ctx.tx, &incoming.id).await?;
    let stale = stored
        .as_ref()
        .is_some_and(|s| s.version > incoming.version);
    let definition = if stale {
        stored.clone().expect("stale implies stored")
    } else {
        incoming.clone()
    };
    // Seats: before any desired state changes (the count compares with the stored policies).
    if !stale {
        let needed = if listed {
            store_licensing::staged_needing_seat(ctx.tx, &incoming.licence).await?
        } else {
            store_licensing::stored_needing_seat(ctx.tx, &incoming.id, &incoming.licence).await?
        };
        if let Some(failure) = licensing::check_seats(&mut ctx, &incoming.licence, needed).await? {
            return Ok(Plan::Reject {
                subject: Some(job_subject),
                failures: vec![failure],
            });
        }
    }
    // The guard rail's count, before any desired state changes (an older version changes
    // nothing).
    if !stale {
        let members = if listed {
            policies::Members::Replaced
        } else {
            policies::Members::Stored
        };
        *ctx.effect = Some(policies::change_effect(ctx.tx, &incoming, members).await?);
    }
    let items = match (listed, stale) {
        // The list given is the whole membership: it is what the items are (no re-read).
        (true, false) => {
            if !ctx.job.dry_run {
                policies::upsert(ctx.tx, &incoming, ctx.job.id).await?;
                policies::store_staged_members(ctx.tx, &incoming.id, true).await?;
                supersede_older_jobs(&mut *ctx.tx, &incoming, ctx.job.id).await?;
            }
            PlannedItems::Staged {
                table: policies::STAGED_MEMBERS,
                count: listed_count,
            }
        }
        (false, false) => {
            if !ctx.job.dry_run {
                policies::upsert(ctx.tx, &incoming, ctx.job.id).await?;
                supersede_older_jobs(&mut *ctx.tx, &incoming, ctx.job.id).await?;
            }
            stored_members(ctx.tx, &incoming.id).await?
        }
        (_, true) => stored_members(ctx.tx, &incoming.id).await?,
    };
    if stale {
        tracing::info!(
            job_version = incoming.version,
            stored_version = definition.version,
            "older version: no definition change; members verified against the newer one"
        );
    }
    Ok(Plan::Accept {
        subject: subject(&definition, def.version),
        plan: PolicyPlan {
            sku_plans: licensing::plans_of(&catalogue, &definition.licence),
            policy: definition,
            stale,
        },
        items,
    })
}

/// The policy's stored members as the plan's items.
async fn stored_members(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    policy_id: &str,
) -> Result<PlannedItems<()>, EngineError> {
    let count = policies::stage_items_of_policy(tx, policy_id).await?;
    Ok(PlannedItems::Staged {
        table: work::PLANNED_ITEMS,
        count,
    })
}

/// End the remaining work of older unfinished jobs of this policy: this job reconciles every
/// member to the newer definition, so their open items are skipped (`superseded`) and they
/// complete now, resolving their tickets; no user is written again for a stale definition.
async fn supersede_older_jobs(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    policy: &PolicyRow,
    job_id: Uuid,
) -> Result<(), EngineError> {
    let reason = format!(
        "superseded by version {} of policy {}",
        policy.version, policy.id
    );
    for older in work::older_policy_jobs(tx, &policy.id, policy.version, job_id).await? {
        let ended =
            work::end_early_in(tx, older, FailureCode::Superseded, &reason, Some(job_id)).await?;
        if let Some((job_type, outcome, counts)) = work::complete_if_done_in(tx, older).await? {
            emit(JobCompleted {
                job_id: older,
                job_type,
                outcome,
                counts: &counts,
                failures: 0,
            });
        }
        tracing::info!(
            %older,
            skipped = ended.items_skipped,
            chunks_running = ended.chunks_running,
            "older job superseded"
        );
    }
    Ok(())
}

pub(super) async fn plan_members_added(
    mut ctx: PlanContext<'_, '_>,
    payload: MembersAdded,
) -> Result<Plan<PolicyPlan, ()>, EngineError> {
    let (count, failures) = check_members(ctx.tx, ctx.job.id, Some(payload.total_members)).await?;
    policies::lock(ctx.tx, &payload.policy_id).await?;
    let Some(policy) = policies::get(ctx.tx, &payload.policy_id).await? else {
        let deadline = ctx.job.received_at
            + chrono::Duration::seconds(ctx.settings.unknown_policy_wait_seconds as i64);
        let now = ctx.clock.now();
        if now < deadline {
            tracing::info!(policy_id = %payload.policy_id, "policy not known yet; waiting");
            let recheck = (now + chrono::Duration::seconds(1)).min(deadline);
            return Ok(Plan::Wait { until: recheck });
        }
        return Ok(Plan::Fail {
            subject: Some(json!({ "policy_id": payload.policy_id })),
            failures: vec![Failure {
                item: payload.policy_id.clone(),
                code: FailureCode::UnknownPolicy,
                detail: format!(
                    "no definition of policy {} arrived within {} s",
                    payload.policy_id, ctx.settings.unknown_policy_wait_seconds
                ),
            }],
        });
    };
    let job_subject = subject(&policy, policy.version);
    if !failures.is_empty() {
        return Ok(Plan::Reject {
            subject: Some(job_subject),
            failures,
        });
    }
    let needed = store_licensing::staged_needing_seat(ctx.tx, &policy.licence).await?;
    if let Some(failure) = licensing::check_seats(&mut ctx, &policy.licence, needed).await? {
        return Ok(Plan::Reject {
            subject: Some(job_subject),
            failures: vec![failure],
        });
    }
    // The guard rail's count (contract 1.2: every job type), before the members are stored.
    *ctx.effect = Some(policies::change_effect(ctx.tx, &policy, policies::Members::Added).await?);
    if !ctx.job.dry_run {
        policies::store_staged_members(ctx.tx, &policy.id, false).await?;
    }
    let sku_plans = licensing::plans_of(&*ctx.tenant.skus().await?, &policy.licence);
    Ok(Plan::Accept {
        subject: job_subject,
        plan: PolicyPlan {
            policy,
            stale: false,
            sku_plans,
        },
        items: PlannedItems::Staged {
            table: policies::STAGED_MEMBERS,
            count,
        },
    })
}

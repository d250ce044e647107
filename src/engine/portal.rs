//! Portal access for member councils' clerks, granted in batches: `portal_access.grant`,
//! `portal_access.activated` and `portal_access.remind`.
//!
//! Organisations grant access in small (alphabetical) batches and use each batch to check
//! the contact data they imported. A grant job therefore invites every eligible contact of
//! the batch and reports every other one with the reason, so that the data can be fixed
//! before the next batch. The first rule that applies, in this order, excludes a contact:
//!
//! 1. `not_an_individual`: an organisation record; only individuals get access.
//! 2. `missing_email`: no email address (absent or blank).
//! 3. `invalid_email`: an email address that is not one.
//! 4. `duplicate_email`: another individual contact, of this batch or stored from an earlier
//!    one, has the same email (case-insensitively). One email may access only one council
//!    record, so none of them is invited; they are listed for separate follow-up.
//!    Organisation records do not count: a council's own record commonly carries its
//!    clerk's address, and it never gets access.
//! 5. `not_member`: the contact's council is not a member.
//! 6. `clerk_term_ended`: `clerk_until` is before today in Europe/London (the clerk is
//!    still a clerk on that day itself).
//! 7. `already_has_access`: the portal says the contact has access (an earlier pilot), or
//!    this service already invited it (or recorded its activation).
//!
//! Every contact of a (non-dry-run) batch is stored in `portal_contacts`, keeping what was
//! done about it, so the next batches see it. Invitations and reminders are
//! `notification.email` events, published through the outbox in the transaction that
//! records them: an email is never sent twice for one record, even when a chunk is retried.

use std::collections::{BTreeMap, HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use super::EngineError;
use super::kind::{
    ApplyContext, ItemOutcome, ItemResult, JobKind, Plan, PlanContext, PlannedItem, WorkItem,
};
use crate::domain::{
    Contact, ContactKind, EmailAddress, EventHeader, Failure, FailureCode, JobType,
    NotificationEmail, PortalAccessContacts, PortalAccessGrant, Ticket,
};
use crate::store::outbox;
use crate::store::portal::{self, ContactData, ContactState};

/// The invitation's email template.
pub const INVITATION_TEMPLATE: &str = "portal_invitation";
/// The reminder's email template.
pub const REMINDER_TEMPLATE: &str = "portal_invitation_reminder";

/// Why a grant leaves a contact out, in order of precedence.
pub const EXCLUSIONS: &[FailureCode] = &[
    FailureCode::NotAnIndividual,
    FailureCode::MissingEmail,
    FailureCode::InvalidEmail,
    FailureCode::DuplicateEmail,
    FailureCode::NotMember,
    FailureCode::ClerkTermEnded,
    FailureCode::AlreadyHasAccess,
];

/// A grant's plan: the batch, for the invitations.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GrantPlan {
    pub batch_label: String,
}

/// The plan of jobs that need nothing beyond their items.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NoPlan {}

/// `portal_access.grant`: invite a batch's eligible contacts.
pub struct GrantKind;

#[async_trait]
impl JobKind for GrantKind {
    type Payload = PortalAccessGrant;
    type Plan = GrantPlan;
    type Spec = GrantSpec;
    const JOB_TYPE: JobType = JobType::PortalAccessGrant;
    const WRITES_TO_TENANT: bool = false;

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: PortalAccessGrant,
    ) -> Result<Plan<GrantPlan, GrantSpec>, EngineError> {
        plan_grant(ctx, payload).await
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, GrantPlan>,
        items: &[WorkItem<GrantSpec>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply_grant(ctx, items).await
    }
}

/// `portal_access.activated`: record that contacts activated their access.
pub struct ActivatedKind;

#[async_trait]
impl JobKind for ActivatedKind {
    type Payload = PortalAccessContacts;
    type Plan = NoPlan;
    type Spec = ();
    const JOB_TYPE: JobType = JobType::PortalAccessActivated;
    const WRITES_TO_TENANT: bool = false;

    async fn plan(
        &self,
        _ctx: PlanContext<'_, '_>,
        payload: PortalAccessContacts,
    ) -> Result<Plan<NoPlan, ()>, EngineError> {
        Ok(plan_listed(&payload.contact_ids, false))
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, NoPlan>,
        items: &[WorkItem<()>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply_activated(ctx, items).await
    }
}

/// `portal_access.remind`: re-send invitations (to the contacts listed, or to every invited
/// contact that has not activated when none is).
pub struct RemindKind;

#[async_trait]
impl JobKind for RemindKind {
    type Payload = PortalAccessContacts;
    type Plan = NoPlan;
    type Spec = ();
    const JOB_TYPE: JobType = JobType::PortalAccessRemind;
    const WRITES_TO_TENANT: bool = false;

    async fn plan(
        &self,
        ctx: PlanContext<'_, '_>,
        payload: PortalAccessContacts,
    ) -> Result<Plan<NoPlan, ()>, EngineError> {
        if payload.contact_ids.is_empty() {
            let ids = portal::not_activated(&mut **ctx.tx).await?;
            Ok(plan_listed(&ids, true))
        } else {
            Ok(plan_listed(&payload.contact_ids, false))
        }
    }

    async fn apply(
        &self,
        ctx: &ApplyContext<'_, NoPlan>,
        items: &[WorkItem<()>],
    ) -> Result<Vec<ItemResult>, EngineError> {
        apply_remind(ctx, items).await
    }
}

/// What the grant decided for one contact (a grant item's spec).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GrantSpec {
    Invite {
        email: String,
        name: String,
        council: String,
    },
    Excluded {
        code: String,
        detail: String,
    },
}

/// What is stored that the rules need.
#[derive(Debug, Default)]
struct Known {
    /// Contacts of the batch that already have access through this service: id -> how.
    has_access: HashMap<String, String>,
    /// Individuals stored from earlier batches and not in this one, by lower-cased email:
    /// (contact id, council).
    others: HashMap<String, Vec<(String, String)>>,
}

/// A contact's email: None when missing or blank, else parsed.
fn email_of(contact: &Contact) -> Option<Result<EmailAddress, String>> {
    let raw = contact.email.as_deref()?.trim();
    if raw.is_empty() {
        return None;
    }
    Some(EmailAddress::parse(raw))
}

/// Apply the exclusion rules (module docs) to a batch.
fn classify(contacts: &[Contact], known: &Known, today: NaiveDate) -> Vec<GrantSpec> {
    let emails: Vec<_> = contacts.iter().map(email_of).collect();
    let mut holders: HashMap<String, Vec<(&str, &str)>> = HashMap::new();
    for (contact, email) in contacts.iter().zip(&emails) {
        if let (ContactKind::Individual, Some(Ok(email))) = (contact.kind, email) {
            holders
                .entry(email.as_str().to_owned())
                .or_default()
                .push((&contact.contact_id, &contact.council));
        }
    }
    let excluded = |code: FailureCode, contact: &Contact, why: String| GrantSpec::Excluded {
        code: code.as_str().to_owned(),
        detail: format!("{} ({}): {why}", contact.name, contact.council),
    };
    contacts
        .iter()
        .zip(emails)
        .map(|(contact, email)| {
            if contact.kind == ContactKind::Organisation {
                return excluded(
                    FailureCode::NotAnIndividual,
                    contact,
                    "an organisation record; only individuals get portal access".into(),
                );
            }
            let email = match email {
                None => {
                    return excluded(
                        FailureCode::MissingEmail,
                        contact,
                        "no email address".into(),
                    );
                }
                Some(Err(why)) => return excluded(FailureCode::InvalidEmail, contact, why),
                Some(Ok(email)) => email,
            };
            let sharing: Vec<String> = holders
                .get(email.as_str())
                .into_iter()
                .flatten()
                .filter(|(id, _)| *id != contact.contact_id)
                .map(|(id, council)| format!("{id} ({council})"))
                .chain(
                    known
                        .others
                        .get(email.as_str())
                        .into_iter()
                        .flatten()
                        .map(|(id, council)| format!("{id} ({council}, an earlier batch)")),
                )
                .collect();
            if !sharing.is_empty() {
                return excluded(
                    FailureCode::DuplicateEmail,
                    contact,
                    format!(
                        "{email} is also the email of {}; one email may access only one \
                         council record",
                        sharing.join(", ")
                    ),
                );
            }
            if !contact.member {
                return excluded(
                    FailureCode::NotMember,
                    contact,
                    "the council is not a member".into(),
                );
            }
            if let Some(until) = contact.clerk_until
                && until < today
            {
                return excluded(
                    FailureCode::ClerkTermEnded,
                    contact,
                    format!("clerk until {until}"),
                );
            }
            if contact.has_portal_access {
                return excluded(
                    FailureCode::AlreadyHasAccess,
                    contact,
                    "the portal shows access already".into(),
                );
            }
            if let Some(how) = known.has_access.get(&contact.contact_id) {
                return excluded(FailureCode::AlreadyHasAccess, contact, how.clone());
            }
            GrantSpec::Invite {
                email: email.as_str().to_owned(),
                name: contact.name.clone(),
                council: contact.council.clone(),
            }
        })
        .collect()
}

/// The date at `now` in Europe/London (the organisations' calendar).
fn london_date(now: DateTime<Utc>) -> NaiveDate {
    now.with_timezone(&chrono_tz::Europe::London).date_naive()
}

async fn plan_grant(
    ctx: PlanContext<'_, '_>,
    payload: PortalAccessGrant,
) -> Result<Plan<GrantPlan, GrantSpec>, EngineError> {
    let label = payload.batch_label.as_str();

    // A batch must name each contact once: the items are keyed by contact id.
    let mut failures = Vec::new();
    let mut seen = HashSet::new();
    for (i, contact) in payload.contacts.iter().enumerate() {
        if contact.contact_id.trim().is_empty() {
            failures.push(Failure {
                item: format!("contacts[{i}]"),
                code: FailureCode::InvalidMessage,
                detail: "empty contact_id".into(),
            });
        } else if !seen.insert(contact.contact_id.as_str()) {
            failures.push(Failure {
                item: contact.contact_id.clone(),
                code: FailureCode::InvalidMessage,
                detail: "listed more than once in the batch".into(),
            });
        }
    }
    if !failures.is_empty() {
        return Ok(Plan::Reject {
            subject: Some(json!({ "batch_label": label })),
            failures,
        });
    }

    portal::lock_grants(ctx.tx).await?;
    let ids: Vec<String> = payload
        .contacts
        .iter()
        .map(|c| c.contact_id.clone())
        .collect();
    let mut known = Known::default();
    for state in portal::states(&mut **ctx.tx, &ids).await? {
        let how = if let Some(at) = state.activated_at {
            format!("activated on {}", at.date_naive())
        } else if let Some(at) = state.invited_at {
            format!(
                "invited on {} (batch {})",
                at.date_naive(),
                state.invited_batch.as_deref().unwrap_or("?")
            )
        } else {
            continue;
        };
        known.has_access.insert(state.contact_id, how);
    }
    let emails: Vec<String> = payload
        .contacts
        .iter()
        .filter(|c| c.kind == ContactKind::Individual)
        .filter_map(|c| email_of(c)?.ok())
        .map(|e| e.as_str().to_owned())
        .collect();
    for (email, id, council) in
        portal::individuals_with_emails(&mut **ctx.tx, &emails, &ids).await?
    {
        known.others.entry(email).or_default().push((id, council));
    }

    let specs = classify(&payload.contacts, &known, london_date(ctx.clock.now()));

    if !ctx.job.dry_run {
        let rows: Vec<ContactData<'_>> = payload
            .contacts
            .iter()
            .map(|c| ContactData {
                contact_id: &c.contact_id,
                name: &c.name,
                kind: match c.kind {
                    ContactKind::Individual => "individual",
                    ContactKind::Organisation => "organisation",
                },
                email: c
                    .email
                    .as_deref()
                    .map(|e| e.trim().to_lowercase())
                    .filter(|e| !e.is_empty()),
                council: &c.council,
                member: c.member,
                clerk_until: c.clerk_until,
                has_portal_access: c.has_portal_access,
            })
            .collect();
        portal::upsert_contacts(ctx.tx, &rows, ctx.job.id).await?;
    }

    let mut excluded: BTreeMap<&'static str, u64> =
        EXCLUSIONS.iter().map(|c| (c.as_str(), 0)).collect();
    let mut invited = 0u64;
    for spec in &specs {
        match spec {
            GrantSpec::Invite { .. } => invited += 1,
            GrantSpec::Excluded { code, .. } => {
                if let Some(n) = excluded.get_mut(code.as_str()) {
                    *n += 1;
                }
            }
        }
    }
    tracing::info!(batch_label = label, invited, ?excluded, "grant planned");
    let items = ids
        .into_iter()
        .zip(specs)
        .map(|(id, spec)| PlannedItem::with_spec(id, spec))
        .collect::<Vec<_>>();
    Ok(Plan::Accept {
        subject: json!({
            "batch_label": label,
            "contacts": payload.contacts.len(),
            "invited": invited,
            "excluded": excluded,
        }),
        plan: GrantPlan {
            batch_label: label.to_owned(),
        },
        items: items.into(),
    })
}

/// `activated` and `remind`: one item per listed contact (each once, in the order given).
fn plan_listed(ids: &[String], all_not_activated: bool) -> Plan<NoPlan, ()> {
    let mut seen = HashSet::new();
    let ids: Vec<&String> = ids.iter().filter(|id| seen.insert(id.as_str())).collect();
    let mut subject = json!({ "contacts": ids.len() });
    if all_not_activated {
        subject["scope"] = json!("all_not_activated");
    }
    Plan::Accept {
        subject,
        plan: NoPlan {},
        items: ids
            .into_iter()
            .map(PlannedItem::new)
            .collect::<Vec<_>>()
            .into(),
    }
}

fn code_named(name: &str) -> Result<FailureCode, EngineError> {
    FailureCode::ALL
        .iter()
        .copied()
        .find(|c| c.as_str() == name)
        .ok_or_else(|| EngineError::Corrupt(format!("unknown failure code {name}")))
}

fn unknown(seq: i32, contact_id: &str) -> ItemResult {
    ItemResult::failed(
        seq,
        FailureCode::UnknownContact,
        format!("no grant batch has included contact {contact_id}"),
    )
}

/// Enqueue a `notification.email` for the job in `tx`.
async fn notify(
    tx: &mut Transaction<'_, Postgres>,
    job_id: Uuid,
    source: &(String, Option<Ticket>),
    template: &'static str,
    to: &str,
    data: Value,
) -> Result<(), EngineError> {
    let header = EventHeader::new(
        NotificationEmail::TYPE,
        job_id,
        source.0.clone(),
        source.1.clone(),
    );
    let event = NotificationEmail {
        header: header.clone(),
        template,
        to: to.to_owned(),
        data,
    };
    outbox::enqueue(tx, &header, &event).await?;
    Ok(())
}

/// Invite the round's eligible contacts: mark each invited and enqueue its invitation in one
/// transaction, so an invitation is sent exactly when the contact becomes invited.
///
/// The engine records the outcomes after this returns, in a statement of its own. If the
/// worker dies in between, the chunk is retried and the contact is found invited already:
/// no second email. It is then reported `changed` when this very job invited it (the stored
/// `invited_by_job`), and `already_compliant` when another job did (a batch re-sent under a
/// new `message_id` and planned before this one applied).
async fn apply_grant(
    ctx: &ApplyContext<'_, GrantPlan>,
    items: &[WorkItem<GrantSpec>],
) -> Result<Vec<ItemResult>, EngineError> {
    let job = ctx.job;
    let batch_label = ctx.plan.batch_label.as_str();
    let mut results = Vec::with_capacity(items.len());
    let mut invites = Vec::new();
    for item in items {
        let spec = item
            .spec
            .clone()
            .ok_or_else(|| EngineError::Corrupt(format!("grant item {} has no spec", item.key)))?;
        match spec {
            GrantSpec::Excluded { code, detail } => {
                results.push(ItemResult::skipped(item.seq, code_named(&code)?, detail));
            }
            // A dry run reports who would be invited, and writes and sends nothing.
            GrantSpec::Invite { .. } if job.dry_run => {
                results.push(ItemResult::ok(item.seq, ItemOutcome::Changed));
            }
            GrantSpec::Invite {
                email,
                name,
                council,
            } => invites.push((item, email, name, council)),
        }
    }
    if invites.is_empty() {
        return Ok(results);
    }
    let source = portal::job_source(ctx.pool, job.id).await?;
    let mut tx = ctx.pool.begin().await?;
    for (item, email, name, council) in invites {
        let outcome = match portal::lock_state(&mut tx, &item.key).await? {
            None => {
                results.push(unknown(item.seq, &item.key));
                continue;
            }
            Some(state) if state.invited_at.is_some() => {
                if state.invited_by_job == Some(job.id) {
                    ItemOutcome::Changed
                } else {
                    ItemOutcome::AlreadyCompliant
                }
            }
            Some(_) => {
                if portal::mark_invited(&mut tx, &item.key, &email, batch_label, job.id).await? {
                    let data = json!({
                        "contact_id": item.key,
                        "name": name,
                        "council": council,
                        "batch_label": batch_label,
                    });
                    notify(&mut tx, job.id, &source, INVITATION_TEMPLATE, &email, data).await?;
                    ItemOutcome::Changed
                } else {
                    ItemOutcome::AlreadyCompliant
                }
            }
        };
        results.push(ItemResult::ok(item.seq, outcome));
    }
    tx.commit().await?;
    Ok(results)
}

/// Record activations (a dry run only reports them).
async fn apply_activated(
    ctx: &ApplyContext<'_, NoPlan>,
    items: &[WorkItem<()>],
) -> Result<Vec<ItemResult>, EngineError> {
    let job = ctx.job;
    let mut results = Vec::with_capacity(items.len());
    let mut tx = ctx.pool.begin().await?;
    for item in items {
        let result = match portal::lock_state(&mut tx, &item.key).await? {
            None => unknown(item.seq, &item.key),
            Some(ContactState {
                activated_at: Some(_),
                activated_by_job,
                ..
            }) => ItemResult::ok(
                item.seq,
                if activated_by_job == Some(job.id) {
                    ItemOutcome::Changed
                } else {
                    ItemOutcome::AlreadyCompliant
                },
            ),
            Some(_) if job.dry_run => ItemResult::ok(item.seq, ItemOutcome::Changed),
            Some(_) => {
                portal::mark_activated(&mut tx, &item.key, job.id).await?;
                ItemResult::ok(item.seq, ItemOutcome::Changed)
            }
        };
        results.push(result);
    }
    tx.commit().await?;
    Ok(results)
}

/// Re-send invitations to invited contacts that have not activated, at most once per job and
/// contact: the reminder's event and `last_reminded_by_job` commit together, so a retried
/// chunk finds the contact reminded by this job and sends nothing again.
async fn apply_remind(
    ctx: &ApplyContext<'_, NoPlan>,
    items: &[WorkItem<()>],
) -> Result<Vec<ItemResult>, EngineError> {
    let job = ctx.job;
    let source = portal::job_source(ctx.pool, job.id).await?;
    let mut results = Vec::with_capacity(items.len());
    let mut tx = ctx.pool.begin().await?;
    for item in items {
        let Some(state) = portal::lock_state(&mut tx, &item.key).await? else {
            results.push(unknown(item.seq, &item.key));
            continue;
        };
        let result = if let Some(at) = state.activated_at {
            ItemResult::skipped(
                item.seq,
                FailureCode::AlreadyActivated,
                format!("activated on {}", at.date_naive()),
            )
        } else if let (Some(_), Some(email)) = (state.invited_at, &state.invited_email) {
            if state.last_reminded_by_job == Some(job.id) || job.dry_run {
                ItemResult::ok(item.seq, ItemOutcome::Changed)
            } else {
                portal::mark_reminded(&mut tx, &item.key, job.id).await?;
                let data = json!({
                    "contact_id": state.contact_id,
                    "name": state.name,
                    "council": state.council,
                    "batch_label": state.invited_batch,
                    "invited_at": state.invited_at,
                });
                notify(&mut tx, job.id, &source, REMINDER_TEMPLATE, email, data).await?;
                ItemResult::ok(item.seq, ItemOutcome::Changed)
            }
        } else {
            ItemResult::skipped(
                item.seq,
                FailureCode::NotInvited,
                "never invited through this service",
            )
        };
        results.push(result);
    }
    tx.commit().await?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contact(id: &str, email: Option<&str>) -> Contact {
        Contact {
            contact_id: id.into(),
            name: format!("Clerk {id}"),
            kind: ContactKind::Individual,
            email: email.map(String::from),
            council: format!("{id} Parish Council"),
            member: true,
            clerk_until: None,
            has_portal_access: false,
        }
    }

    fn codes(specs: &[GrantSpec]) -> Vec<&str> {
        specs
            .iter()
            .map(|s| match s {
                GrantSpec::Invite { .. } => "invite",
                GrantSpec::Excluded { code, .. } => code.as_str(),
            })
            .collect()
    }

    fn day(s: &str) -> NaiveDate {
        s.parse().unwrap()
    }

    #[test]
    fn each_rule_excludes_and_the_first_one_wins() {
        let today = day("2026-11-22");
        let mut org = contact("org", None);
        org.kind = ContactKind::Organisation;
        let mut org_sharing = contact("org2", Some("ok@a.gov.uk"));
        org_sharing.kind = ContactKind::Organisation;
        let mut non_member_no_email = contact("nm0", None);
        non_member_no_email.member = false;
        let mut non_member = contact("nm", Some("nm@a.gov.uk"));
        non_member.member = false;
        let mut ended = contact("end", Some("end@a.gov.uk"));
        ended.clerk_until = Some(day("2026-11-21"));
        let mut ends_today = contact("today", Some("today@a.gov.uk"));
        ends_today.clerk_until = Some(day("2026-11-22"));
        let mut pilot = contact("pilot", Some("pilot@a.gov.uk"));
        pilot.has_portal_access = true;
        let mut dup_non_member = contact("dup3", Some("dup@a.gov.uk"));
        dup_non_member.member = false;
        let batch = vec![
            org,
            org_sharing,
            non_member_no_email,
            contact("blank", Some("  ")),
            contact("bad", Some("not-an-email")),
            contact("dup1", Some("dup@a.gov.uk")),
            contact("dup2", Some("DUP@a.gov.uk")),
            dup_non_member,
            contact("old", Some("old@a.gov.uk")),
            non_member,
            ended,
            ends_today,
            pilot,
            contact("invited", Some("invited@a.gov.uk")),
            contact("ok", Some("OK@a.gov.uk")),
        ];
        let mut known = Known::default();
        known
            .has_access
            .insert("invited".into(), "invited on 2026-11-01 (batch A)".into());
        known.others.insert(
            "old@a.gov.uk".into(),
            vec![("c-9".into(), "Zed Parish Council".into())],
        );
        let specs = classify(&batch, &known, today);
        assert_eq!(
            codes(&specs),
            vec![
                "not_an_individual",
                "not_an_individual",
                "missing_email",
                "missing_email",
                "invalid_email",
                "duplicate_email",
                "duplicate_email",
                "duplicate_email",
                "duplicate_email",
                "not_member",
                "clerk_term_ended",
                "invite",
                "already_has_access",
                "already_has_access",
                "invite",
            ]
        );
        assert_eq!(
            specs[14],
            GrantSpec::Invite {
                email: "ok@a.gov.uk".into(),
                name: "Clerk ok".into(),
                council: "ok Parish Council".into(),
            }
        );
        let GrantSpec::Excluded { detail, .. } = &specs[5] else {
            panic!("dup1 excluded");
        };
        assert!(detail.contains("dup2 (dup2 Parish Council)"), "{detail}");
        assert!(detail.contains("dup3"), "{detail}");
        let GrantSpec::Excluded { detail, .. } = &specs[8] else {
            panic!("old excluded");
        };
        assert!(
            detail.contains("c-9 (Zed Parish Council, an earlier batch)"),
            "{detail}"
        );
    }

    #[test]
    fn grant_specs_round_trip() {
        let spec = GrantSpec::Excluded {
            code: "missing_email".into(),
            detail: "x".into(),
        };
        let value = serde_json::to_value(&spec).unwrap();
        assert_eq!(value["excluded"]["code"], "missing_email");
        assert_eq!(serde_json::from_value::<GrantSpec>(value).unwrap(), spec);
        for code in EXCLUSIONS {
            assert_eq!(code_named(code.as_str()).unwrap(), *code);
        }
    }
}

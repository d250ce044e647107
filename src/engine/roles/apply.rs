//! Applying the admin-role jobs: a user's Phone System group memberships, as the tenant
//! lists them (`memberOf`), reconciled with the desired state read at apply time by the
//! engine's one per-item state machine ([`crate::engine::reconcile`]), in two steps: the
//! memberships to end are removed first, and the tenant must show them ended before the
//! missing ones are added and shown (the contract: "the old role is removed and confirmed
//! first, then the new one is assigned"). Then the stored role is settled: a grant realised
//! (and its email), a grant failed, a removal done.
//!
//! The round's users are locked (PostgreSQL advisory locks, in address order) until their
//! roles are settled, so no other job's writes for them interleave.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use super::plan::holding_of;
use super::{GroupNames, ItemSpec};
use crate::domain::{AdminRole, JobType};
use crate::engine::EngineError;
use crate::engine::kind::{ApplyContext, ItemOutcome, ItemResult, WorkItem};
use crate::engine::reconcile::{Compare, Machine, Reads, Recent, Reconcile};
use crate::engine::users;
use crate::store::roles::{self, GrantState, StoredRole};
use crate::tenant::{Group, MembershipWrite, NewGroup, TenantError, WriteGate};

/// Graph's limit of members added by one `PATCH` of a group (microsoft-graph-docs-contrib
/// `api-reference/v1.0/api/group-post-members.md`).
const MAX_MEMBERS_PER_PATCH: usize = 20;

/// Reconciles the items' users (see the module docs) and settles their stored roles.
pub(crate) async fn apply<P: Sync>(
    names: &GroupNames,
    ctx: &ApplyContext<'_, P>,
    items: &[WorkItem<ItemSpec>],
) -> Result<Vec<ItemResult>, EngineError> {
    let mut tx = ctx.pool.begin().await?;
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
    let seqs: Vec<i32> = items.iter().map(|i| i.seq).collect();
    let mut kind = Memberships {
        ctx,
        groups: HashMap::new(),
        items: prepared,
    };
    let results = Machine::new(ctx, &seqs, vec![None; items.len()])
        .run(&mut kind)
        .await?;
    for result in &results {
        kind.settle(&mut tx, result).await?;
    }
    tx.commit().await?;
    Ok(results)
}

/// An item's desired state, read under its user's lock, and what this claim did for it.
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
    /// How long ago the stored role was realised, if within the verify window.
    realised_age: Option<Duration>,
    /// The group of the stored role's own organisation (not one a mapping gives).
    own_group: Option<String>,
    /// Groups whose membership this claim ended (accepted) or found ended ("not a member").
    ended: HashSet<Uuid>,
    /// Groups the directory's primary copy answered "not a member" for: ended, whatever a
    /// read from a replica behind still shows.
    found: HashSet<Uuid>,
    /// Some write of this item was accepted.
    accepted_any: bool,
    /// The tenant showed the desired memberships.
    holds: bool,
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
    let realised_age = stored
        .as_ref()
        .filter(|s| s.state == GrantState::Realised && s.state_age < ctx.retry.verify_within())
        .map(|s| s.state_age);
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
        realised_age,
        own_group: holding.as_ref().map(|h| names.name(h.role, &h.ods_code)),
        ended: HashSet::new(),
        found: HashSet::new(),
        accepted_any: false,
        holds: false,
    })
}

/// What one read of an item found.
pub(crate) struct Held {
    /// `None`: the user does not exist (and nothing is desired of them).
    user: Option<Uuid>,
    /// Their groups (`memberOf`).
    groups: Vec<Group>,
    /// The groups of [`Prepared::ended_before`], found.
    ended_before: Vec<Group>,
}

/// One step of an item's reconciliation (see the module docs).
#[derive(Debug, Clone)]
pub(crate) enum Change {
    /// Item `item`'s user ends these memberships.
    Remove {
        item: usize,
        user: Uuid,
        groups: Vec<Group>,
    },
    /// Item `item`'s user joins these groups (made if missing).
    Add {
        item: usize,
        user: Uuid,
        names: Vec<String>,
    },
}

impl Change {
    fn item(&self) -> usize {
        match self {
            Self::Remove { item, .. } | Self::Add { item, .. } => *item,
        }
    }
}

/// The items' memberships, as the state machine reads, compares and writes them.
struct Memberships<'c, 'a, 'n, P> {
    ctx: &'c ApplyContext<'a, P>,
    /// Groups found or made, by display name.
    groups: HashMap<String, Group>,
    items: Vec<Prepared<'n>>,
}

impl<P: Sync> Memberships<'_, '_, '_, P> {
    /// The stored role of a settled item: a grant the tenant shows is realised (a removal
    /// done); a grant whose tenant work failed holds no place under the limit any more.
    async fn settle(
        &self,
        tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
        result: &ItemResult,
    ) -> Result<(), EngineError> {
        let Some(p) = self.items.iter().find(|p| p.seq == result.seq) else {
            return Ok(());
        };
        let job = self.ctx.job.id;
        match result.outcome {
            // A failure from a loss of tenant access is not the item's: its result is dropped
            // and the item tried again once access is back (`engine::access`), so the grant
            // keeps its place.
            ItemOutcome::Failed if p.own_grant && p.held && self.ctx.access.tripped().is_none() => {
                // A new assign for the user is a grant again (with its email once realised).
                roles::mark_failed(tx, &p.email, job).await?;
            }
            ItemOutcome::Changed | ItemOutcome::AlreadyCompliant
                if p.holds && !self.ctx.job.dry_run =>
            {
                settled(tx, job, &p.email, p.held, p.stored.as_ref()).await?;
            }
            _ => {}
        }
        Ok(())
    }

    /// The group named `name`: remembered in PostgreSQL (every group this service found or
    /// made is), found by display name, or, when `create`, made by an upsert on its unique
    /// name (`Tenant::ensure_group`), which is idempotent also while a group created a moment
    /// ago (by this replica or another) is not yet visible to the display-name search: a role
    /// never lands in a second group of the same name, and a removal finds a group made
    /// moments ago.
    async fn group(
        &mut self,
        name: &str,
        create: bool,
    ) -> Result<Result<Option<Group>, TenantError>, EngineError> {
        let ctx = self.ctx;
        if let Some(group) = self.groups.get(name) {
            return Ok(Ok(Some(group.clone())));
        }
        if let Some(id) = roles::remembered_group(ctx.pool, name).await? {
            let group = Group {
                id,
                display_name: name.to_owned(),
            };
            self.groups.insert(name.to_owned(), group.clone());
            return Ok(Ok(Some(group)));
        }
        let found = match ctx.tenant.find_group(name).await {
            Ok(Some(group)) => Some(group),
            Ok(None) if create => {
                tracing::info!(group = name, "ensuring a Phone System admin group");
                let new = NewGroup {
                    display_name: name.to_owned(),
                    mail_nickname: mail_nickname(name),
                };
                match ctx.tenant.ensure_group(&unique_name(name), &new).await {
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
            self.groups.insert(name.to_owned(), group.clone());
        }
        Ok(Ok(found))
    }

    /// The writes of `change`, its groups found or made; nothing when one cannot be.
    async fn plan(
        &mut self,
        change: &Change,
    ) -> Result<Result<Vec<MembershipWrite>, TenantError>, EngineError> {
        let (user, add, groups) = match change {
            Change::Remove { user, groups, .. } => (*user, false, groups.clone()),
            Change::Add { user, names, .. } => {
                let mut groups = Vec::with_capacity(names.len());
                for name in names {
                    // No group is made for a chunk that is stopping.
                    if self.ctx.cancel.is_cancelled() {
                        return Ok(Err(TenantError::Withheld("the chunk is stopping".into())));
                    }
                    match self.group(name, true).await? {
                        Ok(Some(group)) => groups.push(group),
                        Ok(None) => {
                            return Ok(Err(TenantError::NotConverged(format!(
                                "group {name} was not created"
                            ))));
                        }
                        Err(error) => return Ok(Err(error)),
                    }
                }
                (*user, true, groups)
            }
        };
        Ok(Ok(groups
            .into_iter()
            .map(|group| MembershipWrite {
                group: group.id,
                user,
                add,
            })
            .collect()))
    }

    /// Users joining the same group in this call join it in one `PATCH`, up to 20 (Graph's
    /// `members@odata.bind`, microsoft-graph-docs-contrib
    /// `api-reference/v1.0/api/group-post-members.md`): one write, not one each (a mapping
    /// change moves up to ten admins at once). Such a request is all or nothing: when it
    /// fails (one user already a member, a 5xx, a group too new to take members), its users
    /// are left to the single additions, where "already a member" is done.
    async fn together(
        &self,
        writes: &[MembershipWrite],
        gate: &(dyn WriteGate + Sync),
        answers: &mut [Option<Result<(), TenantError>>],
    ) {
        let mut joining: BTreeMap<Uuid, Vec<usize>> = BTreeMap::new();
        for (w, write) in writes.iter().enumerate() {
            if write.add {
                joining.entry(write.group).or_default().push(w);
            }
        }
        for (group, members) in joining {
            for part in members.chunks(MAX_MEMBERS_PER_PATCH) {
                // Refused: the single additions are withheld too.
                if part.len() < 2 || !gate.admit(&[]).await {
                    continue;
                }
                let users: Vec<Uuid> = part.iter().map(|&w| writes[w].user).collect();
                match self.ctx.tenant.add_members_at_once(group, &users).await {
                    Ok(()) => {
                        for &w in part {
                            answers[w] = Some(Ok(()));
                        }
                    }
                    Err(error) => {
                        tracing::info!(%group, %error, users = users.len(), "adding members together failed; adding them one by one");
                    }
                }
            }
        }
    }

    /// Item `i`'s change as Graph answered its `writes`: done when each was accepted or
    /// found done ("already a member", "not a member"), also when the rest was withheld
    /// (the chunk is stopping) after some were accepted; else the first failure. Removals
    /// all answered "not a member" wrote nothing: the change answers that (the read it was
    /// planned from was behind, [`Reconcile::stale_refusal`]), so the item is not counted as
    /// changed (a leaver whose role was already ended).
    fn answered(
        &mut self,
        i: usize,
        writes: &[MembershipWrite],
        answers: &[Result<(), TenantError>],
    ) -> Result<(), TenantError> {
        let p = &mut self.items[i];
        let (mut accepted, mut withheld, mut failure, mut done) = (false, None, None, None);
        for (write, answer) in writes.iter().zip(answers) {
            match answer {
                Ok(()) => {
                    accepted = true;
                    if !write.add {
                        p.ended.insert(write.group);
                    }
                }
                Err(TenantError::AlreadyMember(_)) if write.add => {}
                Err(error @ TenantError::NotMember(_)) if !write.add => {
                    p.found.insert(write.group);
                    p.ended.insert(write.group);
                    done.get_or_insert_with(|| error.clone());
                }
                Err(error @ TenantError::Withheld(_)) => {
                    withheld.get_or_insert_with(|| error.clone());
                }
                Err(error) => {
                    failure.get_or_insert_with(|| error.clone());
                }
            }
        }
        p.accepted_any |= accepted;
        match (failure, withheld, done) {
            (Some(error), ..) => Err(error),
            (None, Some(error), _) if !accepted => Err(error),
            (None, None, Some(error)) if !accepted => Err(error),
            _ => Ok(()),
        }
    }

    /// Item `i`'s memberships as `memberOf` lists them, with the groups its stored role gave.
    async fn read_one(
        &mut self,
        i: usize,
        user: Uuid,
        groups: Result<Vec<Group>, TenantError>,
    ) -> Result<Result<Held, TenantError>, EngineError> {
        let groups = match groups {
            Ok(groups) => groups,
            Err(error) => return Ok(Err(error)),
        };
        let mut ended_before = Vec::new();
        for name in self.items[i].ended_before.clone() {
            match self.group(&name, false).await? {
                Ok(Some(group)) => ended_before.push(group),
                Ok(None) => {}
                Err(error) => return Ok(Err(error)),
            }
        }
        Ok(Ok(Held {
            user: Some(user),
            groups,
            ended_before,
        }))
    }
}

#[async_trait]
impl<P: Sync> Reconcile for Memberships<'_, '_, '_, P> {
    type State = Held;
    type Change = Change;

    async fn read(&mut self, which: &[usize]) -> Reads<Held> {
        let ctx = self.ctx;
        // Users not known yet, by address, in one read.
        let unknown: Vec<usize> = which
            .iter()
            .copied()
            .filter(|&i| self.items[i].user.is_none())
            .collect();
        let mut not_read: HashMap<usize, Result<Held, TenantError>> = HashMap::new();
        if !unknown.is_empty() {
            let addresses: Vec<String> = unknown
                .iter()
                .map(|&i| self.items[i].email.clone())
                .collect();
            let found = users::read_users(ctx.pool, ctx.tenant.as_ref(), &addresses).await?;
            for (i, found) in unknown.into_iter().zip(found) {
                match found {
                    Ok(state) => self.items[i].user = Some(state.id),
                    // A user who does not exist holds no membership: nothing to end.
                    Err(TenantError::UserNotFound(_)) if self.items[i].desired.is_empty() => {
                        not_read.insert(
                            i,
                            Ok(Held {
                                user: None,
                                groups: Vec::new(),
                                ended_before: Vec::new(),
                            }),
                        );
                    }
                    Err(error) => {
                        not_read.insert(i, Err(error));
                    }
                }
            }
        }
        let users: Vec<Option<Uuid>> = which
            .iter()
            .map(|i| {
                if not_read.contains_key(i) {
                    None
                } else {
                    self.items[*i].user
                }
            })
            .collect();
        let memberships = futures_util::future::join_all(users.iter().map(|user| async move {
            match user {
                Some(user) => Some(ctx.tenant.member_of(*user).await),
                None => None,
            }
        }))
        .await;
        let mut states = Vec::with_capacity(which.len());
        for ((&i, user), groups) in which.iter().zip(users).zip(memberships) {
            states.push(match (user, groups) {
                (Some(user), Some(groups)) => self.read_one(i, user, groups).await?,
                _ => not_read
                    .remove(&i)
                    .unwrap_or_else(|| Err(TenantError::Transient("no answer".into()))),
            });
        }
        Ok(states)
    }

    async fn compare(&mut self, i: usize, state: Held, _fresh: bool) -> Compare<Change> {
        let p = &mut self.items[i];
        let Some(user) = state.user else {
            p.holds = true;
            return Compare::Holds;
        };
        // Memberships to end: those the scope ends that `memberOf` shows, and those the stored
        // role gave, also when `memberOf` does not show them (it may come from a replica that
        // has not caught up with their addition: a leaver seconds after an assign) unless this
        // claim ended them already.
        // What the primary copy answered "not a member" for is ended, whatever a replica shows.
        let mut ends: Vec<Group> = state
            .groups
            .iter()
            .filter(|g| p.scope.ends(g) && !p.found.contains(&g.id))
            .cloned()
            .collect();
        for group in state.ended_before {
            let shown = state.groups.iter().any(|g| g.id == group.id);
            if ((shown && !p.found.contains(&group.id)) || !p.ended.contains(&group.id))
                && !ends.iter().any(|g| g.id == group.id)
            {
                ends.push(group);
            }
        }
        if !ends.is_empty() {
            return Compare::Write {
                change: Change::Remove {
                    item: i,
                    user,
                    groups: ends,
                },
                before: None,
                recent: None,
            };
        }
        let missing: Vec<String> = p
            .desired
            .iter()
            .filter(|name| {
                !state
                    .groups
                    .iter()
                    .any(|g| g.display_name.eq_ignore_ascii_case(name))
            })
            .cloned()
            .collect();
        if missing.is_empty() {
            p.holds = true;
            return Compare::Holds;
        }
        // The stored role was realised moments ago (the tenant showed the user in its own
        // group to an earlier item): a read that does not show that membership comes from a
        // replica that has not caught up. (Groups a mapping gives are not the role's own.)
        let recent = p
            .realised_age
            .filter(|_| {
                p.own_group
                    .as_ref()
                    .is_some_and(|own| missing.iter().any(|m| m.eq_ignore_ascii_case(own)))
            })
            .map(|age| Recent { age, certain: true });
        Compare::Write {
            change: Change::Add {
                item: i,
                user,
                names: missing,
            },
            before: None,
            recent,
        }
    }

    fn step(&self, change: &Change) -> u8 {
        match change {
            Change::Remove { .. } => 0,
            Change::Add { .. } => 1,
        }
    }

    async fn write(
        &mut self,
        changes: &[Change],
        gate: &(dyn WriteGate + Sync),
    ) -> Result<Vec<Result<(), TenantError>>, EngineError> {
        // One call for every change's writes; each change's are `writes[range]`.
        let mut writes = Vec::new();
        let mut planned = Vec::with_capacity(changes.len());
        for change in changes {
            planned.push(match self.plan(change).await? {
                Ok(mine) => {
                    let start = writes.len();
                    writes.extend(mine);
                    Ok(start..writes.len())
                }
                Err(error) => Err(error),
            });
        }
        let mut answers = vec![None; writes.len()];
        self.together(&writes, gate, &mut answers).await;
        let rest: Vec<usize> = (0..writes.len())
            .filter(|&w| answers[w].is_none())
            .collect();
        let sent: Vec<MembershipWrite> = rest.iter().map(|&w| writes[w]).collect();
        let answered = self.ctx.tenant.write_memberships(&sent, gate).await;
        for (w, answer) in rest.into_iter().zip(answered) {
            answers[w] = Some(answer);
        }
        let answers: Vec<Result<(), TenantError>> = answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(TenantError::Transient("no answer".into()))))
            .collect();
        Ok(changes
            .iter()
            .zip(planned)
            .map(|(change, planned)| {
                let range = planned?;
                self.answered(change.item(), &writes[range.clone()], &answers[range])
            })
            .collect())
    }

    /// Nothing was applied: a group made moments ago that cannot take members yet
    /// (`Tenant::write_memberships`), or writes found done by the directory's primary copy
    /// (planned from a read behind it); read again.
    fn stale_refusal(&self, error: &TenantError) -> bool {
        matches!(
            error,
            TenantError::NotConverged(_)
                | TenantError::AlreadyMember(_)
                | TenantError::NotMember(_)
        )
    }

    /// Also a part of a change: a membership ended or begun is a change of the user's.
    async fn shows_writes(&mut self, i: usize, state: Held) -> bool {
        self.items[i].accepted_any || matches!(self.compare(i, state, false).await, Compare::Holds)
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

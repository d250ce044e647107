//! Replication in the directory: the writes replicas have not seen yet, and the lag of a write
//! made now ([`crate::replica`] decides what each Graph call's view sees).
use super::*;

/// An object or membership with a write not yet replicated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Replicated {
    User(Uuid),
    Group(Uuid),
    Membership { group: Uuid, user: Uuid },
}

/// The writes replicas have not seen yet ([`super::replica`]): per object its version from
/// before them, per (group, user) whether the user was a member. Entries are dropped once
/// replicated (`expiry`), so the store holds only the writes of the last lag window.
#[derive(Default)]
pub(super) struct Replication {
    /// User id -> the user as replicas show it (`None`: created, not yet replicated).
    pub(super) users: HashMap<Uuid, Pending<Option<User>>>,
    /// Groups created, not yet replicated.
    pub(super) groups: HashMap<Uuid, Pending<()>>,
    /// Group id -> user id -> whether replicas still show the user as a member.
    pub(super) members: HashMap<Uuid, BTreeMap<Uuid, Pending<bool>>>,
    /// User id -> group id -> the same entries, for `memberOf`.
    pub(super) member_of: HashMap<Uuid, BTreeMap<Uuid, Pending<bool>>>,
    /// When each entry is replicated, soonest first.
    pub(super) expiry: BinaryHeap<Reverse<(Instant, Replicated)>>,
}

impl Replication {
    pub(super) fn is_empty(&self) -> bool {
        self.expiry.is_empty()
    }

    /// Drops the entries replicated by `now`.
    pub(super) fn prune(&mut self, now: Instant) {
        while let Some(Reverse((at, key))) = self.expiry.peek().copied() {
            if at > now {
                break;
            }
            self.expiry.pop();
            match key {
                Replicated::User(id) => {
                    if self.users.get(&id).is_some_and(|p| !p.active(now)) {
                        self.users.remove(&id);
                    }
                }
                Replicated::Group(id) => {
                    if self.groups.get(&id).is_some_and(|p| !p.active(now)) {
                        self.groups.remove(&id);
                    }
                }
                Replicated::Membership { group, user } => {
                    drop_replicated(&mut self.members, group, user, now);
                    drop_replicated(&mut self.member_of, user, group, now);
                }
            }
        }
    }

    pub(super) fn expires(&mut self, at: Instant, key: Replicated) {
        self.expiry.push(Reverse((at, key)));
    }

    /// Records a change of `user` (its version `before` it; `None` when it was created).
    pub(super) fn user_written(
        &mut self,
        user: Uuid,
        before: Option<User>,
        now: Instant,
        lag: Duration,
    ) {
        self.prune(now);
        let mut slot = self.users.remove(&user);
        let at = replica::record(&mut slot, before, now, lag);
        self.users.extend(slot.map(|p| (user, p)));
        self.expires(at, Replicated::User(user));
    }

    pub(super) fn group_created(&mut self, group: Uuid, now: Instant, lag: Duration) {
        self.prune(now);
        let mut slot = None;
        let at = replica::record(&mut slot, (), now, lag);
        self.groups.extend(slot.map(|p| (group, p)));
        self.expires(at, Replicated::Group(group));
    }

    /// Records a membership change; `was_member` is the membership before it.
    pub(super) fn membership_written(
        &mut self,
        group: Uuid,
        user: Uuid,
        was_member: bool,
        now: Instant,
        lag: Duration,
    ) {
        self.prune(now);
        let by_group = self.members.entry(group).or_default();
        let mut slot = by_group.remove(&user);
        let at = replica::record(&mut slot, was_member, now, lag);
        if let Some(p) = slot {
            self.member_of
                .entry(user)
                .or_default()
                .insert(group, p.clone());
            by_group.insert(user, p);
        }
        self.expires(at, Replicated::Membership { group, user });
    }
}

/// Drops `outer -> inner` from a pending-membership index once replicated.
pub(super) fn drop_replicated(
    index: &mut HashMap<Uuid, BTreeMap<Uuid, Pending<bool>>>,
    outer: Uuid,
    inner: Uuid,
    now: Instant,
) {
    if let Some(map) = index.get_mut(&outer) {
        if map.get(&inner).is_some_and(|p| !p.active(now)) {
            map.remove(&inner);
        }
        if map.is_empty() {
            index.remove(&outer);
        }
    }
}

/// The ids of a membership set after `after`, in order, as the current view shows them: in a
/// lagging view the (group, user) pairs with a change not yet replicated show their state from
/// before it.
pub(super) fn membership_ids<'a>(
    primary: Option<&'a BTreeSet<Uuid>>,
    pending: Option<&'a BTreeMap<Uuid, Pending<bool>>>,
    after: Option<Uuid>,
) -> Box<dyn Iterator<Item = Uuid> + 'a> {
    let range = (
        after.map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Unbounded,
    );
    let primary = primary
        .into_iter()
        .flat_map(move |s| s.range(range))
        .copied();
    let lagging = replica::current().is_some_and(View::is_lagging);
    let Some(pending) = pending.filter(|_| lagging) else {
        return Box::new(primary);
    };
    let now = Instant::now();
    let mut a = primary.peekable();
    let mut b = pending.range(range).peekable();
    Box::new(std::iter::from_fn(move || {
        loop {
            let (id, in_primary, change) = match (a.peek().copied(), b.peek()) {
                (None, None) => return None,
                (Some(x), Some((y, _))) if x < **y => (a.next()?, true, None),
                (Some(_), Some(_)) => {
                    let (y, p) = b.next()?;
                    let same = a.next_if_eq(y).is_some();
                    (*y, same, Some(p))
                }
                (Some(_), None) => (a.next()?, true, None),
                (None, Some(_)) => {
                    let (y, p) = b.next()?;
                    (*y, false, Some(p))
                }
            };
            let member = match change {
                Some(p) if p.active(now) => p.before,
                _ => in_primary,
            };
            if member {
                return Some(id);
            }
        }
    }))
}

/// The lag of a write made now, when a Graph call makes it and it is not replicated at once.
pub(super) fn write_lag() -> Option<(Instant, Duration)> {
    match replica::current() {
        Some(View::Write { lag, .. }) => lag.draw().map(|d| (Instant::now(), d)),
        _ => None,
    }
}

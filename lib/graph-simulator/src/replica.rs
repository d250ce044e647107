//! Eventual consistency: which replica a Graph call sees, and the writes replicas have not seen.
//!
//! Microsoft Entra ID keeps every directory on several replicas; a write reaches the primary
//! and is replicated to the others within seconds, and an app-only caller is given no
//! read-your-writes guarantee: its next read may be served by a replica the write has not
//! reached (entra-docs `docs/architecture/architecture.md`, "Data consistency"). Objects just
//! created can therefore answer 404 `Request_ResourceNotFound` for a while, to reads and to
//! writes that name them (Microsoft's SupportArticles on `Request_ResourceNotFound` just after
//! an object is created; Graph's `concepts/best-practices-concept.md`, "Handling expected
//! errors", lists 404 for a resource "not yet provisioned").
//!
//! The simulator models this per object. A write made by a Graph call records, beside the
//! authoritative (primary) state, the object's version from before it and the instant the write
//! becomes visible everywhere ([`Pending`]); memberships get one entry per (group, user). Each
//! Graph call runs in a [`View`] chosen by the routes (a read is served by a lagging replica with
//! `stale_read_probability`, so successive reads are not monotonic), set for the duration of the
//! call with [`enter`]; the directory's lookup primitives consult [`current`]. Code outside a
//! Graph call (seeding, `/_sim/*` inspection, `Shared::user`) has no view and sees the primary,
//! and its writes are replicated at once.
use std::cell::Cell;
use std::time::{Duration, Instant};

use rand::Rng;

/// The replication lag of Graph writes: uniform from 0 to `max`, or `long` with
/// `long_probability`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Lag {
    /// Upper bound of the usual lag.
    pub max: Duration,
    /// Probability of the long lag instead.
    pub long_probability: f64,
    /// The occasional long lag.
    pub long: Duration,
}

impl Lag {
    /// The lag of one write; `None` when it is replicated at once.
    pub fn draw(&self) -> Option<Duration> {
        let mut rng = rand::rng();
        let p = self.long_probability.clamp(0.0, 1.0);
        let lag = if p > 0.0 && rng.random_bool(p) {
            self.long
        } else if self.max.is_zero() {
            Duration::ZERO
        } else {
            Duration::from_millis(rng.random_range(0..=self.max.as_millis() as u64))
        };
        (!lag.is_zero()).then_some(lag)
    }
}

/// What a Graph call sees of the directory.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum View {
    /// A read served by an up-to-date replica: the primary state.
    Fresh,
    /// A read served by a lagging replica: no write not yet replicated is seen.
    Lagging,
    /// A write: applied to the primary, and replicated after a lag drawn from `lag`. When
    /// `hide_new`, users and groups whose creation is not yet replicated are missing to it.
    Write { hide_new: bool, lag: Lag },
}

impl View {
    /// Whether objects whose creation is not yet replicated are missing in this view.
    pub fn hides_new(self) -> bool {
        matches!(self, Self::Lagging | Self::Write { hide_new: true, .. })
    }

    /// Whether changes not yet replicated are undone in this view.
    pub fn is_lagging(self) -> bool {
        self == Self::Lagging
    }
}

thread_local! {
    static VIEW: Cell<Option<View>> = const { Cell::new(None) };
}

/// The view of the Graph call running on this thread, if any (see [`enter`]).
pub fn current() -> Option<View> {
    VIEW.with(Cell::get)
}

/// Runs the rest of a Graph call in `view`, until the guard is dropped. The directory's methods
/// are synchronous and called on the thread of the call, so a thread-local is enough.
pub fn enter(view: View) -> ViewGuard {
    ViewGuard {
        previous: VIEW.with(|v| v.replace(Some(view))),
    }
}

/// Restores the previous view when dropped.
pub struct ViewGuard {
    previous: Option<View>,
}

impl Drop for ViewGuard {
    fn drop(&mut self) {
        VIEW.with(|v| v.set(self.previous));
    }
}

/// A write not yet replicated: what replicas still show, and when they stop showing it.
#[derive(Debug, Clone)]
pub struct Pending<T> {
    /// The state before the write(s) not yet replicated.
    pub before: T,
    /// When every replica has the write.
    pub visible_at: Instant,
}

impl<T> Pending<T> {
    /// Whether replicas still show `before` at `now`.
    pub fn active(&self, now: Instant) -> bool {
        now < self.visible_at
    }
}

/// Records a write at `now` replicated after `lag` into `slot`: the oldest state not yet
/// replicated is kept (`before`), the time everything is replicated moves later if need be.
/// Returns the entry's new `visible_at`.
pub fn record<T>(slot: &mut Option<Pending<T>>, before: T, now: Instant, lag: Duration) -> Instant {
    let at = now + lag;
    match slot {
        Some(p) if p.active(now) => {
            p.visible_at = p.visible_at.max(at);
            p.visible_at
        }
        _ => {
            *slot = Some(Pending {
                before,
                visible_at: at,
            });
            at
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_nest_and_restore() {
        assert_eq!(current(), None);
        {
            let _outer = enter(View::Lagging);
            assert_eq!(current(), Some(View::Lagging));
            {
                let _inner = enter(View::Fresh);
                assert_eq!(current(), Some(View::Fresh));
            }
            assert_eq!(current(), Some(View::Lagging));
        }
        assert_eq!(current(), None);
    }

    #[test]
    fn lag_draws_within_bounds() {
        assert_eq!(Lag::default().draw(), None);
        let lag = Lag {
            max: Duration::from_millis(50),
            long_probability: 0.0,
            long: Duration::from_secs(9),
        };
        for _ in 0..100 {
            assert!(lag.draw().is_none_or(|d| d <= Duration::from_millis(50)));
        }
        let always_long = Lag {
            long_probability: 1.0,
            ..lag
        };
        assert_eq!(always_long.draw(), Some(Duration::from_secs(9)));
    }

    #[test]
    fn record_keeps_the_oldest_state_and_the_latest_time() {
        let now = Instant::now();
        let mut slot = None;
        record(&mut slot, 1, now, Duration::from_secs(2));
        record(&mut slot, 2, now, Duration::from_secs(1));
        let p = slot.as_ref().unwrap();
        assert_eq!(p.before, 1);
        assert_eq!(p.visible_at, now + Duration::from_secs(2));
        // Once replicated, a new write starts from its own state.
        record(
            &mut slot,
            3,
            now + Duration::from_secs(5),
            Duration::from_secs(1),
        );
        assert_eq!(slot.unwrap().before, 3);
    }
}

//! The client-side write budget: keeps this process under the tenant's write limit.
//!
//! [`WriteBudget`] is the seam for a coordinated (cluster-wide) budget; [`LocalTokenBucket`] is
//! the in-process one.
use std::fmt::Debug;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use parking_lot::Mutex;

/// A source of permission to write. Each write request (also each inner request of a `$batch`)
/// costs one token.
#[async_trait]
pub trait WriteBudget: Send + Sync + Debug {
    /// Waits until `n` writes may be sent.
    async fn acquire(&self, n: u32);

    /// The tenant answered 429: a budget that adapts slows down (the default does not).
    fn throttled(&self) {}
}

/// No limit.
#[derive(Debug, Clone, Copy, Default)]
pub struct Unlimited;

#[async_trait]
impl WriteBudget for Unlimited {
    async fn acquire(&self, _n: u32) {}
}

/// A token bucket of `rate` tokens a second holding at most `burst`.
///
/// Acquiring takes the tokens at once, letting the balance go negative, and sleeps off the debt:
/// concurrent callers are thereby queued fairly in the order they asked, with no polling.
#[derive(Debug)]
pub struct LocalTokenBucket {
    rate: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl LocalTokenBucket {
    /// A full bucket of `burst` tokens refilled at `rate` per second (`rate` must be > 0).
    pub fn new(rate: f64, burst: NonZeroU32) -> Self {
        let burst = f64::from(burst.get());
        Self {
            rate: rate.max(f64::MIN_POSITIVE),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// Takes `n` tokens and says how long to wait before using them.
    fn reserve(&self, n: u32) -> Duration {
        let mut s = self.state.lock();
        let now = Instant::now();
        let elapsed = now.duration_since(s.1).as_secs_f64();
        s.0 = (s.0 + elapsed * self.rate).min(self.burst) - f64::from(n);
        s.1 = now;
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / self.rate)
        }
    }
}

#[async_trait]
impl WriteBudget for LocalTokenBucket {
    async fn acquire(&self, n: u32) {
        let wait = self.reserve(n);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debt_is_spread_at_the_rate() {
        let b = LocalTokenBucket::new(10.0, NonZeroU32::new(2).unwrap());
        assert_eq!(b.reserve(2), Duration::ZERO);
        let w = b.reserve(1);
        assert!(
            w > Duration::from_millis(90) && w <= Duration::from_millis(100),
            "{w:?}"
        );
        let w = b.reserve(1);
        assert!(
            w > Duration::from_millis(190) && w <= Duration::from_millis(200),
            "{w:?}"
        );
    }
}

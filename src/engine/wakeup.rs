//! Nudges between the parts of one replica: a stored job wakes the planner, a planned job
//! wakes the executors, at once instead of at their next poll.
//!
//! Polling stays: it is how replicas find each other's work (and anything a nudge missed).

use std::sync::Arc;

use tokio::sync::watch;

/// A level, not an edge: a nudge given while nobody waits is seen by the next wait, so none
/// is lost between a claim that found nothing and the wait after it.
#[derive(Debug, Clone)]
pub struct Wakeup {
    generation: Arc<watch::Sender<u64>>,
}

impl Default for Wakeup {
    fn default() -> Self {
        Self {
            generation: Arc::new(watch::Sender::new(0)),
        }
    }
}

impl Wakeup {
    /// Wake every waiter, and every later waiter that has not seen this nudge yet.
    pub fn wake(&self) {
        self.generation.send_modify(|g| *g = g.wrapping_add(1));
    }

    /// A waiter's view: [`Waiter::wait`] returns at the first nudge it has not seen.
    pub fn waiter(&self) -> Waiter {
        Waiter {
            generation: self.generation.subscribe(),
        }
    }
}

pub struct Waiter {
    generation: watch::Receiver<u64>,
}

impl Waiter {
    /// Until a nudge this waiter has not seen yet (at once if one came since the last wait).
    pub async fn wait(&mut self) {
        // The sender lives as long as the engine; if it is gone, there is nothing to wait for.
        if self.generation.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_nudge_before_the_wait_is_not_lost() {
        let wakeup = Wakeup::default();
        let mut waiter = wakeup.waiter();
        wakeup.wake();
        tokio::time::timeout(Duration::from_secs(1), waiter.wait())
            .await
            .expect("woken by the earlier nudge");
        // Seen now: the next wait waits.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), waiter.wait())
                .await
                .is_err()
        );
    }
}

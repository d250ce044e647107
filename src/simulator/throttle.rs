//! The simulator's throttling: fixed windows of writes and of resource units per app.
//!
//! Windows are aligned to multiples of their length in Unix time, so with a one-second window the
//! number of writes let through in any Unix second never exceeds the limit; tests rely on that.

/// Resource units a read costs (Graph charges about 1 for a single-object read).
pub const READ_COST_UNITS: u32 = 1;
/// Resource units a list call costs (Graph charges more for collections).
pub const LIST_COST_UNITS: u32 = 2;
/// Resource units a write costs (on top of its place in the write window).
pub const WRITE_COST_UNITS: u32 = 1;

/// One fixed window counter.
#[derive(Debug, Default)]
pub struct FixedWindow {
    window_start_ms: u64,
    used: u32,
}

impl FixedWindow {
    /// Takes `cost` from the window containing `now_ms`, or says how many whole seconds (≥ 1) to wait.
    /// A `limit` of 0 means unlimited.
    pub fn try_take(
        &mut self,
        cost: u32,
        limit: u32,
        window_seconds: u64,
        now_ms: u64,
    ) -> Result<(), u64> {
        if limit == 0 {
            return Ok(());
        }
        let window_ms = window_seconds.max(1) * 1000;
        let start = now_ms - now_ms % window_ms;
        if start != self.window_start_ms {
            self.window_start_ms = start;
            self.used = 0;
        }
        if self.used.saturating_add(cost) <= limit {
            self.used += cost;
            Ok(())
        } else {
            let remaining_ms = start + window_ms - now_ms;
            Err(remaining_ms.div_ceil(1000).max(1))
        }
    }
}

/// The two buckets Graph applies to an app: writes and resource units.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Writes per window.
    pub writes: FixedWindow,
    /// Resource units per window.
    pub units: FixedWindow,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_limits_and_reports_retry_after() {
        let mut w = FixedWindow::default();
        assert!(w.try_take(1, 2, 1, 10_000).is_ok());
        assert!(w.try_take(1, 2, 1, 10_100).is_ok());
        assert_eq!(w.try_take(1, 2, 1, 10_200), Err(1));
        assert!(w.try_take(1, 2, 1, 11_000).is_ok());
        let mut long = FixedWindow::default();
        assert!(long.try_take(1, 1, 150, 0).is_ok());
        assert_eq!(long.try_take(1, 1, 150, 1_500), Err(149));
        assert!(FixedWindow::default().try_take(100, 0, 1, 5).is_ok());
    }
}

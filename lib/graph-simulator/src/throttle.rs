//! The simulator's throttling: fixed windows of resource units and writes per app, and of
//! writes per tenant (all applications), as Graph's identity service limits them
//! (microsoft-graph-docs-contrib `concepts/throttling-limits.md`, "Identity and access service
//! limits"), with the load Graph reports and `low` priority requests throttled first.
//!
//! Windows are aligned to multiples of their length in Unix time, so with a one-second window the
//! number of writes let through in any Unix second never exceeds the limit; tests rely on that.

/// Resource units a read costs (Graph charges about 1 for a single-object read).
pub const READ_COST_UNITS: u32 = 1;
/// Resource units a list call costs (Graph charges more for collections).
pub const LIST_COST_UNITS: u32 = 2;
/// Resource units a write costs (on top of its place in the write window).
pub const WRITE_COST_UNITS: u32 = 1;

/// The tenant id the simulator names in `x-ms-throttle-scope` (it serves one tenant).
pub const SIMULATED_TENANT_ID: &str = "00000000-0000-0000-0000-00000000000a";

/// Share of a limit above which answers carry `x-ms-throttle-limit-percentage` and `low`
/// priority writes are throttled (microsoft-graph-docs-contrib `concepts/throttling-limits.md`,
/// identity section, "Other headers").
pub const LOAD_REPORTED_ABOVE: f64 = 0.8;

/// A request's `x-ms-throttle-priority` (`concepts/throttling-limits.md`, "Request headers":
/// `low`, `normal` or `high`; absent or any other value is a normal request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// No header.
    None,
    Low,
    Normal,
    High,
}

impl Priority {
    /// The priority a header value gives (case-insensitive; an unknown value is normal).
    pub fn from_header(value: Option<&str>) -> Self {
        match value.map(str::trim) {
            None => Self::None,
            Some(v) if v.eq_ignore_ascii_case("low") => Self::Low,
            Some(v) if v.eq_ignore_ascii_case("high") => Self::High,
            Some(_) => Self::Normal,
        }
    }

    /// The key it is counted under in `StatsSnapshot::writes_by_priority`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Low => "low",
            Self::Normal => "normal",
            Self::High => "high",
        }
    }
}

/// One fixed window counter.
#[derive(Debug, Default)]
pub struct FixedWindow {
    window_start_ms: u64,
    used: u32,
    /// Requests refused in this window (they count in the reported load).
    refused: u32,
}

impl FixedWindow {
    /// Moves to the window containing `now_ms`; returns the milliseconds left in it.
    fn roll(&mut self, window_seconds: u64, now_ms: u64) -> u64 {
        let window_ms = window_seconds.max(1) * 1000;
        let start = now_ms - now_ms % window_ms;
        if start != self.window_start_ms {
            self.window_start_ms = start;
            self.used = 0;
            self.refused = 0;
        }
        start + window_ms - now_ms
    }

    /// Whether `cost` fits the window containing `now_ms`, or how many whole seconds (≥ 1) to
    /// wait. A `limit` of 0 means unlimited. Takes nothing.
    pub fn check(
        &mut self,
        cost: u32,
        limit: u32,
        window_seconds: u64,
        now_ms: u64,
    ) -> Result<(), u64> {
        if limit == 0 {
            return Ok(());
        }
        let remaining_ms = self.roll(window_seconds, now_ms);
        if self.used.saturating_add(cost) <= limit {
            Ok(())
        } else {
            Err(remaining_ms.div_ceil(1000).max(1))
        }
    }

    /// Takes `cost` from the current window (after a successful [`Self::check`]).
    pub fn take(&mut self, cost: u32) {
        self.used = self.used.saturating_add(cost);
    }

    /// Counts a refused request in the current window.
    pub fn refuse(&mut self) {
        self.refused = self.refused.saturating_add(1);
    }

    /// Takes `cost` from the window containing `now_ms`, or says how many whole seconds (≥ 1) to wait.
    /// A `limit` of 0 means unlimited.
    pub fn try_take(
        &mut self,
        cost: u32,
        limit: u32,
        window_seconds: u64,
        now_ms: u64,
    ) -> Result<(), u64> {
        let r = self.check(cost, limit, window_seconds, now_ms);
        match r {
            Ok(()) => self.take(cost),
            Err(_) if limit > 0 => self.refuse(),
            Err(_) => {}
        }
        r
    }

    /// The share of `limit` used in the window containing `now_ms`, refused requests included,
    /// as Graph reports it in `x-ms-throttle-limit-percentage` (1.2: a fifth of the requests
    /// are refused); at most 1.8. 0 when unlimited.
    pub fn load(&mut self, limit: u32, window_seconds: u64, now_ms: u64) -> f64 {
        if limit == 0 {
            return 0.0;
        }
        self.roll(window_seconds, now_ms);
        (f64::from(self.used.saturating_add(self.refused)) / f64::from(limit)).min(1.8)
    }
}

/// A limit of Graph's identity service (`concepts/throttling-limits.md`, "Identity and access
/// service limits": resource units and writes per app and tenant, writes per tenant).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Resource units of this app in this tenant.
    ResourceUnits,
    /// Writes of this app in this tenant.
    AppWrites,
    /// Writes of every app in this tenant.
    TenantWrites,
}

impl Limit {
    /// The `<Scope>/<Limit>` part of `x-ms-throttle-scope`.
    pub fn scope(self) -> &'static str {
        match self {
            Self::ResourceUnits => "Tenant_Application/ReadWrite",
            Self::AppWrites => "Tenant_Application/Write",
            Self::TenantWrites => "Tenant/Write",
        }
    }

    /// The `x-ms-throttle-information` of a 429 caused by this limit.
    pub fn information(self) -> &'static str {
        match self {
            Self::ResourceUnits => "ResourceUnitLimitExceeded",
            Self::AppWrites | Self::TenantWrites => "WriteLimitExceeded",
        }
    }
}

/// A request refused by a limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Throttled {
    /// The limit exceeded.
    pub limit: Limit,
    /// Seconds until its window ends (`Retry-After`).
    pub retry_after: u64,
}

/// The figures of the limits (from the behaviour), 0 meaning unlimited.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub resource_units: (u32, u64),
    pub app_writes: (u32, u64),
    pub tenant_writes: (u32, u64),
}

/// The buckets Graph applies: resource units and writes per app, writes per tenant.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Resource units per window.
    pub units: FixedWindow,
    /// Writes of the app per window.
    pub writes: FixedWindow,
    /// Writes of the whole tenant per window.
    pub tenant_writes: FixedWindow,
}

impl Throttle {
    /// Admits a request costing `cost` resource units (and one write when `is_write`) at
    /// `now_ms`, or says which limit refuses it. A `low` priority write is refused once a write
    /// limit is above 80 % used ("low priority requests are throttled first",
    /// `concepts/throttling-limits.md`). Returns the highest load of the limits the request
    /// counts against, after it.
    pub fn admit(
        &mut self,
        cost: u32,
        is_write: bool,
        low_priority: bool,
        limits: &Limits,
        now_ms: u64,
    ) -> Result<f64, Throttled> {
        let (ru, ru_window) = limits.resource_units;
        let (app, app_window) = limits.app_writes;
        let (tenant, tenant_window) = limits.tenant_writes;
        if is_write && low_priority {
            for (limit, window, (n, secs)) in [
                (Limit::AppWrites, &mut self.writes, limits.app_writes),
                (
                    Limit::TenantWrites,
                    &mut self.tenant_writes,
                    limits.tenant_writes,
                ),
            ] {
                if n > 0 && window.load(n, secs, now_ms) >= LOAD_REPORTED_ABOVE {
                    window.refuse();
                    let remaining = window.roll(secs, now_ms);
                    return Err(Throttled {
                        limit,
                        retry_after: remaining.div_ceil(1000).max(1),
                    });
                }
            }
        }
        self.units
            .try_take(cost, ru, ru_window, now_ms)
            .map_err(|retry_after| Throttled {
                limit: Limit::ResourceUnits,
                retry_after,
            })?;
        let mut load = self.units.load(ru, ru_window, now_ms);
        if is_write {
            for (limit, window, n, secs) in [
                (Limit::AppWrites, &mut self.writes, app, app_window),
                (
                    Limit::TenantWrites,
                    &mut self.tenant_writes,
                    tenant,
                    tenant_window,
                ),
            ] {
                if let Err(retry_after) = window.check(1, n, secs, now_ms) {
                    window.refuse();
                    return Err(Throttled { limit, retry_after });
                }
            }
            if app > 0 {
                self.writes.take(1);
            }
            if tenant > 0 {
                self.tenant_writes.take(1);
            }
            load = load
                .max(self.writes.load(app, app_window, now_ms))
                .max(self.tenant_writes.load(tenant, tenant_window, now_ms));
        }
        Ok(load)
    }
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

    fn limits(app: u32, tenant: u32) -> Limits {
        Limits {
            resource_units: (0, 10),
            app_writes: (app, 10),
            tenant_writes: (tenant, 10),
        }
    }

    #[test]
    fn the_tenant_quota_limits_writes_beside_the_app_one() {
        let mut t = Throttle::default();
        let l = limits(0, 3);
        for _ in 0..3 {
            assert!(t.admit(1, true, false, &l, 1_000).is_ok());
        }
        let refused = t.admit(1, true, false, &l, 1_000).unwrap_err();
        assert_eq!(refused.limit, Limit::TenantWrites);
        assert_eq!(refused.retry_after, 9);
        // Reads are not writes.
        assert!(t.admit(1, false, false, &l, 1_000).is_ok());
    }

    #[test]
    fn low_priority_writes_are_refused_above_80_percent_and_load_is_reported() {
        let mut t = Throttle::default();
        let l = limits(10, 0);
        for i in 1..=8 {
            let load = t.admit(1, true, true, &l, 0).unwrap();
            assert!((load - f64::from(i) / 10.0).abs() < 1e-9);
        }
        let low = t.admit(1, true, true, &l, 0).unwrap_err();
        assert_eq!(low.limit, Limit::AppWrites);
        // Normal and high priority writes still pass up to the limit.
        assert!(t.admit(1, true, false, &l, 0).is_ok());
        assert!(t.admit(1, true, false, &l, 0).is_ok());
        assert!(t.admit(1, true, false, &l, 0).is_err());
        // 10 used + 2 refused of 10: 1.2.
        assert!((t.writes.load(10, 10, 0) - 1.2).abs() < 1e-9);
    }
}

//! How a test gets its dates: never a fixed calendar date compared with a clock.
//!
//! The code under test reads two clocks: the engine's [`Clock`](policy_reconciler::engine::clock::Clock)
//! (off-peak windows, `not_before`, drift periods, portal's "today") and PostgreSQL's `now()`
//! (rows stamped on insert, leases, approval waits, "the last 7 days"). In production both
//! follow the same wall clock. A test that writes `2026-11-28` as "a Saturday" and lets the
//! database stamp its rows with `now()` passes until the calendar passes that date, and fails
//! every day after (issue 27: main was red from 28 November on). So:
//!
//! 1. **A time of day or a day of the week** (a window open or closed, "later in the day"):
//!    the test's [`ManualClock`] starts on the London day [`next`] finds after the database's
//!    `now()`, at the local time the test needs ([`Day::at`]). The weekday and the hour are
//!    fixed; the calendar date is not, and the engine's clock is never behind the database's.
//! 2. **Dates in messages** the code compares with its clock (`clerk_until`, a period's
//!    start): relative to the clock the code reads: [`Day::plus`] of the test's day, or
//!    [`today`] when the worker runs on the system clock.
//! 3. **Rows compared with the database's `now()`** are stamped by it, or relative to
//!    [`database_now`] (`now() - interval …` in the SQL of the test).
//! 4. **Fixed dates stay only where no clock is read**: a pure function given a date (the
//!    schedule's and the forecast's unit tests), parsing and schema checks (`sent_at` formats,
//!    `clerk_until` formats, `marked_for_deletion_at`, which the service stores and never
//!    compares).
//!
//! Daylight saving: days are London days and times London times ([`Day::at`] converts), so a
//! test reads the same in GMT and in BST. The unit tests also run with the process clock
//! moved (`.ci/clock-check`: 400 days ahead, and around both of London's clock changes).

use chrono::{DateTime, Datelike, Days, NaiveDate, NaiveTime, TimeZone, Utc, Weekday};
use chrono_tz::Europe::London;
use policy_reconciler::engine::clock::ManualClock;
use sqlx::{Connection, PgConnection};

/// PostgreSQL's `now()`, read over a connection of its own to the server the tests use.
pub async fn database_now() -> DateTime<Utc> {
    let settings = super::env::settings(&super::env::Env::new());
    let mut conn = PgConnection::connect_with(&settings.database.without_db())
        .await
        .expect("PostgreSQL answers");
    let now = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut conn)
        .await
        .expect("now()");
    let _ = conn.close().await;
    now
}

/// Today in London by the system clock: for a test whose worker reads the system clock.
pub fn today() -> Day {
    Day(Utc::now().with_timezone(&London).date_naive())
}

/// A day in London.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Day(pub NaiveDate);

impl Day {
    /// `hh:mm` on this day in London, as an instant. Panics on a time the clock skips (01:xx
    /// on the last Sunday of March); an hour repeated in October is its first occurrence.
    pub fn at(self, hour: u32, minute: u32) -> DateTime<Utc> {
        let time = NaiveTime::from_hms_opt(hour, minute, 0).expect("a time of day");
        London
            .from_local_datetime(&self.0.and_time(time))
            .earliest()
            .unwrap_or_else(|| panic!("{} {time} does not exist in London", self.0))
            .with_timezone(&Utc)
    }

    /// The day `days` later (earlier when negative).
    pub fn plus(self, days: i64) -> Day {
        let shifted = if days >= 0 {
            self.0.checked_add_days(Days::new(days as u64))
        } else {
            self.0.checked_sub_days(Days::new(days.unsigned_abs()))
        };
        Day(shifted.expect("a date in range"))
    }

    /// `YYYY-MM-DD`, as messages carry dates.
    pub fn iso(self) -> String {
        self.0.format("%Y-%m-%d").to_string()
    }

    pub fn weekday(self) -> Weekday {
        self.0.weekday()
    }
}

/// The first London day on `weekday` strictly after the database's `now()`: a test's clock set
/// on it is ahead of every row the database stamps during the test.
pub async fn next(weekday: Weekday) -> Day {
    next_after(database_now().await, weekday)
}

/// The first London day on `weekday` strictly after `now`.
pub fn next_after(now: DateTime<Utc>, weekday: Weekday) -> Day {
    let mut day = Day(now.with_timezone(&London).date_naive()).plus(1);
    while day.weekday() != weekday {
        day = day.plus(1);
    }
    day
}

/// A manual clock at `hour:minute` London time on the next `weekday` (rule 1), and that day.
pub async fn clock_on(
    weekday: Weekday,
    hour: u32,
    minute: u32,
) -> (std::sync::Arc<ManualClock>, Day) {
    let day = next(weekday).await;
    (
        std::sync::Arc::new(ManualClock::new(day.at(hour, minute))),
        day,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn the_next_weekday_is_strictly_later_and_in_london() {
        // 23:30 UTC on a Friday in summer is already Saturday in London.
        let day = next_after(at("2027-07-02T23:30:00Z"), Weekday::Sat);
        assert_eq!(day.iso(), "2027-07-10");
        let day = next_after(at("2027-07-02T10:00:00Z"), Weekday::Sat);
        assert_eq!(day.iso(), "2027-07-03");
        // Times are London's, in BST as in GMT.
        assert_eq!(day.at(10, 0), at("2027-07-03T09:00:00Z"));
        assert_eq!(
            Day(NaiveDate::from_ymd_opt(2027, 1, 2).unwrap()).at(10, 0),
            at("2027-01-02T10:00:00Z")
        );
    }
}

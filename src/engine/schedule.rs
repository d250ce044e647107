//! Off-peak windows: when large jobs may run, in the platform's local time.
//!
//! Windows are weekly, in local time of a named time zone (`Europe/London` by default), and
//! are resolved to UTC day by day, so they follow daylight-saving changes: a window from
//! 19:00 to 07:00 is 12 hours long on most nights, 11 hours across the last Sunday of March
//! and 13 across the last Sunday of October. A local time that does not exist (the hour
//! skipped in spring) is moved forward by an hour; an ambiguous one (the hour repeated in
//! autumn) takes its first occurrence.

use chrono::{
    DateTime, Datelike, Duration, LocalResult, NaiveDate, NaiveTime, TimeZone, Utc, Weekday,
};
use chrono_tz::Tz;

use crate::configuration::ScheduleSettings;

/// The weekly off-peak windows, ready to query.
#[derive(Debug, Clone)]
pub struct OffPeak {
    tz: Tz,
    windows: Vec<Window>,
}

#[derive(Debug, Clone)]
struct Window {
    days: Vec<Weekday>,
    /// Minutes after local midnight of the start day.
    start: u32,
    /// Minutes after local midnight; at or before `start` means the next day (1440 = midnight).
    end: u32,
}

impl OffPeak {
    /// The windows of `settings` (checked when the settings were read).
    pub fn new(settings: &ScheduleSettings) -> Self {
        let windows = settings
            .off_peak_windows
            .iter()
            .map(|w| Window {
                days: w.days().to_vec(),
                start: w.start().minutes(),
                end: w.end().minutes(),
            })
            .collect();
        Self {
            tz: settings.time_zone,
            windows,
        }
    }

    /// UTC instant of local `date` + `minutes` (1440 = next midnight).
    fn instant(&self, date: NaiveDate, minutes: u32) -> DateTime<Utc> {
        let (date, minutes) = if minutes >= 1440 {
            (date + Duration::days(1), minutes - 1440)
        } else {
            (date, minutes)
        };
        let time = NaiveTime::from_hms_opt(minutes / 60, minutes % 60, 0).expect("valid time");
        let local = date.and_time(time);
        match self.tz.from_local_datetime(&local) {
            LocalResult::Single(t) => t.with_timezone(&Utc),
            LocalResult::Ambiguous(first, _) => first.with_timezone(&Utc),
            LocalResult::None => {
                // Skipped by a clock change: the first instant after the gap.
                let later = local + Duration::hours(1);
                self.tz
                    .from_local_datetime(&later)
                    .earliest()
                    .expect("an hour after a gap exists")
                    .with_timezone(&Utc)
            }
        }
    }

    /// Windows (UTC, merged where they touch) that start between `days_before` days before
    /// and `days_after` days after `at`.
    fn intervals(
        &self,
        at: DateTime<Utc>,
        days_before: i64,
        days_after: i64,
    ) -> Vec<(DateTime<Utc>, DateTime<Utc>)> {
        let today = at.with_timezone(&self.tz).date_naive();
        let mut intervals = Vec::new();
        for offset in -days_before..=days_after {
            let date = today + Duration::days(offset);
            for w in &self.windows {
                if !w.days.contains(&date.weekday()) {
                    continue;
                }
                let end_minutes = if w.end <= w.start {
                    w.end + 1440
                } else {
                    w.end
                };
                intervals.push((self.instant(date, w.start), self.instant(date, end_minutes)));
            }
        }
        intervals.sort();
        let mut merged: Vec<(DateTime<Utc>, DateTime<Utc>)> = Vec::new();
        for (start, end) in intervals {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        merged
    }

    /// Whether `at` is inside a window.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        self.intervals(at, 2, 1)
            .iter()
            .any(|(start, end)| *start <= at && at < *end)
    }

    /// `at` when a window is open, else the start of the next window (within two weeks;
    /// without any window, `at`).
    pub fn next_open(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        if self.windows.is_empty() || self.is_open(at) {
            return at;
        }
        self.intervals(at, 0, 14)
            .into_iter()
            .map(|(start, _)| start)
            .find(|start| *start > at)
            .unwrap_or(at)
    }

    /// Open window time between `from` and `to`.
    pub fn open_between(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> Duration {
        if to <= from {
            return Duration::zero();
        }
        let days = (to - from).num_days() + 2;
        self.intervals(from, 2, days)
            .into_iter()
            .map(|(start, end)| (start.max(from), end.min(to)))
            .filter(|(start, end)| start < end)
            .map(|(start, end)| end - start)
            .fold(Duration::zero(), |a, b| a + b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn london() -> OffPeak {
        OffPeak::new(&ScheduleSettings::default())
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn weekday_daytime_waits_until_seven_in_the_evening() {
        let p = london();
        // Tuesday 24 November 2026, 10:00 GMT (= UTC in winter).
        let at = utc("2026-11-24T10:00:00Z");
        assert!(!p.is_open(at));
        assert_eq!(p.next_open(at), utc("2026-11-24T19:00:00Z"));
        assert!(p.is_open(utc("2026-11-24T19:00:00Z")));
        assert!(p.is_open(utc("2026-11-25T06:59:59Z")));
        assert!(!p.is_open(utc("2026-11-25T07:00:00Z")));
    }

    #[test]
    fn summer_time_shifts_the_window_by_an_hour_in_utc() {
        let p = london();
        // Wednesday 17 June 2026, 10:00 BST = 09:00 UTC; 19:00 BST = 18:00 UTC.
        let at = utc("2026-06-17T09:00:00Z");
        assert_eq!(p.next_open(at), utc("2026-06-17T18:00:00Z"));
        assert!(!p.is_open(utc("2026-06-18T06:00:00Z")), "07:00 BST: closed");
    }

    #[test]
    fn the_weekend_is_open_from_friday_evening_to_monday_morning() {
        let p = london();
        assert!(p.is_open(utc("2026-11-27T19:30:00Z"))); // Friday evening
        assert!(p.is_open(utc("2026-11-28T12:00:00Z"))); // Saturday noon
        assert!(p.is_open(utc("2026-11-29T23:30:00Z"))); // Sunday night
        assert!(p.is_open(utc("2026-11-30T06:30:00Z"))); // Monday before seven
        assert!(!p.is_open(utc("2026-11-30T07:30:00Z"))); // Monday morning
        // Saturday 10:00 is inside: next_open is now.
        let saturday = utc("2026-11-28T10:00:00Z");
        assert_eq!(p.next_open(saturday), saturday);
    }

    #[test]
    fn last_sunday_of_march_spring_forward() {
        let p = london();
        // Clocks go forward at 01:00 UTC on Sunday 29 March 2026. The weekend window runs
        // until Monday 07:00 BST = 06:00 UTC.
        assert!(p.is_open(utc("2026-03-29T00:30:00Z")));
        assert!(p.is_open(utc("2026-03-29T01:30:00Z")));
        assert!(p.is_open(utc("2026-03-30T05:59:00Z")));
        assert!(!p.is_open(utc("2026-03-30T06:00:00Z")));
        // Friday before (GMT) opens at 19:00 UTC; Monday after (BST) at 18:00 UTC.
        assert_eq!(
            p.next_open(utc("2026-03-27T12:00:00Z")),
            utc("2026-03-27T19:00:00Z")
        );
        assert_eq!(
            p.next_open(utc("2026-03-30T12:00:00Z")),
            utc("2026-03-30T18:00:00Z")
        );
        // Open time across the change: Saturday 00:00 GMT to Monday 07:00 BST is 54 h, and
        // Friday 19:00 GMT to Saturday 00:00 adds 5 h, 59 h in all from Friday noon to
        // Monday noon.
        let open = p.open_between(utc("2026-03-27T12:00:00Z"), utc("2026-03-30T11:00:00Z"));
        assert_eq!(open, Duration::hours(59));
    }

    #[test]
    fn last_sunday_of_october_fall_back() {
        let p = london();
        // Clocks go back at 01:00 UTC on Sunday 25 October 2026 (02:00 BST -> 01:00 GMT).
        // Friday 23 October 19:00 BST = 18:00 UTC; Monday 26 October 07:00 GMT = 07:00 UTC.
        assert_eq!(
            p.next_open(utc("2026-10-23T12:00:00Z")),
            utc("2026-10-23T18:00:00Z")
        );
        assert!(p.is_open(utc("2026-10-25T01:30:00Z")));
        assert!(p.is_open(utc("2026-10-26T06:59:00Z")));
        assert!(!p.is_open(utc("2026-10-26T07:00:00Z")));
        // Friday 18:00 UTC to Monday 07:00 UTC: 61 h, one more than a plain weekend.
        let open = p.open_between(utc("2026-10-23T12:00:00Z"), utc("2026-10-26T12:00:00Z"));
        assert_eq!(open, Duration::hours(61));
    }
}

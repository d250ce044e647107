//! `[schedule]`: which jobs wait for off-peak windows, and when those are.
//!
//! The windows are parsed as they are read (days, `HH:MM` times, the IANA time zone), so
//! [`crate::engine::schedule::OffPeak`] is built from them without anything left to fail.

use std::str::FromStr;

use chrono::Weekday;
use chrono_tz::Tz;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Jobs with more items than this run in off-peak windows; the rest start at once.
    pub large_job_threshold: u64,
    /// IANA time zone of the windows.
    #[serde(deserialize_with = "time_zone", serialize_with = "time_zone_name")]
    pub time_zone: Tz,
    /// Weekly windows in local time.
    pub off_peak_windows: Vec<OffPeakWindow>,
}

/// One weekly window: on each of `days`, from `start` to `end` (local time). An `end` at or
/// before `start` is on the next day; `24:00` is the end of the day.
///
/// Written as `{ days = ["mon", …], start = "HH:MM", end = "HH:MM" }`; at least one day, and
/// no window starts at `24:00`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "WindowText", into = "WindowText")]
pub struct OffPeakWindow {
    days: Vec<Weekday>,
    start: TimeOfDay,
    end: TimeOfDay,
}

/// A local time of day from `00:00` to `24:00`, as minutes after midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct TimeOfDay(u32);

impl TimeOfDay {
    /// Minutes after midnight, 0 to 1440.
    pub fn minutes(self) -> u32 {
        self.0
    }
}

impl FromStr for TimeOfDay {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let not_hh_mm = || format!("{text:?} is not HH:MM");
        let (h, m) = text.split_once(':').ok_or_else(not_hh_mm)?;
        let (h, m): (u32, u32) = (
            h.parse().map_err(|_| not_hh_mm())?,
            m.parse().map_err(|_| not_hh_mm())?,
        );
        if m >= 60 || h > 24 || (h == 24 && m != 0) {
            return Err(format!("{text:?} is not a time of day (00:00 to 24:00)"));
        }
        Ok(Self(h * 60 + m))
    }
}

impl OffPeakWindow {
    /// A window on `days` from `start` to `end` (`HH:MM`), checked as when read from settings.
    pub fn new(days: &[&str], start: &str, end: &str) -> Result<Self, String> {
        Self::try_from(WindowText {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.to_owned(),
            end: end.to_owned(),
        })
    }

    /// The days it starts on.
    pub fn days(&self) -> &[Weekday] {
        &self.days
    }

    /// When it starts, on each of its days.
    pub fn start(&self) -> TimeOfDay {
        self.start
    }

    /// When it ends: at or before [`Self::start`] means the next day.
    pub fn end(&self) -> TimeOfDay {
        self.end
    }
}

/// A window as written in the settings (and shown by `check-config`).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct WindowText {
    days: Vec<String>,
    start: String,
    end: String,
}

impl TryFrom<WindowText> for OffPeakWindow {
    type Error = String;

    fn try_from(w: WindowText) -> Result<Self, String> {
        let days = w
            .days
            .iter()
            .map(|d| Weekday::from_str(d).map_err(|_| format!("{d:?} is not a day (mon, tue, …)")))
            .collect::<Result<Vec<_>, _>>()?;
        if days.is_empty() {
            return Err("a window needs at least one day".to_owned());
        }
        let (start, end): (TimeOfDay, TimeOfDay) = (w.start.parse()?, w.end.parse()?);
        if start.minutes() == 1440 {
            return Err("a window cannot start at 24:00".to_owned());
        }
        Ok(Self { days, start, end })
    }
}

impl From<OffPeakWindow> for WindowText {
    fn from(w: OffPeakWindow) -> Self {
        Self {
            // `Mon` → `mon`, as written.
            days: w
                .days
                .iter()
                .map(|d| d.to_string().to_lowercase())
                .collect(),
            start: w.start.to_string(),
            end: w.end.to_string(),
        }
    }
}

impl std::fmt::Display for TimeOfDay {
    /// `HH:MM`, as written (`24:00` for the end of the day).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:02}:{:02}", self.0 / 60, self.0 % 60)
    }
}

fn time_zone_name<S: serde::Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(tz.name())
}

fn time_zone<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
    let text = String::deserialize(d)?;
    Tz::from_str(&text).map_err(|_| D::Error::custom(format!("{text:?} is not an IANA time zone")))
}

impl Default for ScheduleSettings {
    /// The resolver team's practice: large policies after 19:00 on weekdays, and at weekends.
    fn default() -> Self {
        let window = |days: &[&str], start: &str, end: &str| {
            OffPeakWindow::new(days, start, end).expect("a valid default window")
        };
        Self {
            large_job_threshold: 1_000,
            time_zone: Tz::Europe__London,
            off_peak_windows: vec![
                window(&["mon", "tue", "wed", "thu", "fri"], "19:00", "07:00"),
                window(&["sat", "sun"], "00:00", "24:00"),
                // Sunday night runs on to Monday morning.
                window(&["mon"], "00:00", "07:00"),
            ],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml: &str) -> Result<ScheduleSettings, String> {
        config::Config::builder()
            .add_source(config::File::from_str(toml, config::FileFormat::Toml))
            .build()
            .unwrap()
            .try_deserialize::<ScheduleSettings>()
            .map_err(|e| e.to_string())
    }

    #[test]
    fn windows_are_parsed_as_they_are_read() {
        let s = parse(
            r#"large_job_threshold = 5
time_zone = "Europe/London"
off_peak_windows = [{ days = ["sat", "sun"], start = "00:00", end = "24:00" }]"#,
        )
        .unwrap();
        assert_eq!(s.time_zone, Tz::Europe__London);
        let w = &s.off_peak_windows[0];
        assert_eq!(w.days(), &[Weekday::Sat, Weekday::Sun]);
        assert_eq!((w.start().minutes(), w.end().minutes()), (0, 1440));
    }

    #[test]
    fn bad_settings_are_refused() {
        let error = parse(
            r#"large_job_threshold = 5
time_zone = "Mars/Olympus"
off_peak_windows = []"#,
        )
        .unwrap_err();
        assert!(error.contains("is not an IANA time zone"), "{error}");
        assert!(error.contains("time_zone"), "{error}");
        assert!(OffPeakWindow::new(&["mon"], "25:00", "07:00").is_err());
        assert!(OffPeakWindow::new(&["funday"], "19:00", "07:00").is_err());
        assert!(OffPeakWindow::new(&[], "19:00", "07:00").is_err());
        assert!(OffPeakWindow::new(&["mon"], "24:00", "07:00").is_err());
        let error = parse(
            r#"large_job_threshold = 5
time_zone = "Europe/London"
off_peak_windows = [{ days = ["mon"], start = "7pm", end = "07:00" }]"#,
        )
        .unwrap_err();
        assert!(error.contains("\"7pm\" is not HH:MM"), "{error}");
        assert!(error.contains("off_peak_windows"), "{error}");
    }
}

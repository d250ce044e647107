//! `[schedule]`: which jobs wait for off-peak windows, and when those are.

use serde::Deserialize;

use super::ConfigError;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSettings {
    /// Jobs with more items than this run in off-peak windows; the rest start at once.
    pub large_job_threshold: u64,
    /// IANA time zone of the windows.
    pub time_zone: String,
    /// Weekly windows in local time.
    pub off_peak_windows: Vec<OffPeakWindow>,
}

/// One weekly window: on each of `days`, from `start` to `end` (HH:MM, local time). An `end`
/// at or before `start` is on the next day; `24:00` is the end of the day.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OffPeakWindow {
    pub days: Vec<String>,
    pub start: String,
    pub end: String,
}

impl Default for ScheduleSettings {
    /// The resolver team's practice: large policies after 19:00 on weekdays, and at weekends.
    fn default() -> Self {
        let window = |days: &[&str], start: &str, end: &str| OffPeakWindow {
            days: days.iter().map(|d| d.to_string()).collect(),
            start: start.into(),
            end: end.into(),
        };
        Self {
            large_job_threshold: 1_000,
            time_zone: "Europe/London".into(),
            off_peak_windows: vec![
                window(&["mon", "tue", "wed", "thu", "fri"], "19:00", "07:00"),
                window(&["sat", "sun"], "00:00", "24:00"),
                // Sunday night runs on to Monday morning.
                window(&["mon"], "00:00", "07:00"),
            ],
        }
    }
}

impl ScheduleSettings {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        crate::engine::schedule::OffPeak::new(self)
            .map(|_| ())
            .map_err(|problem| ConfigError::invalid("schedule.off_peak_windows", problem))
    }
}

//! Time for the budgets: a wall clock that tests replace, and the calendar windows it falls
//! in (days and months in a time zone, daylight-saving changes included, by jiff).

use std::sync::Mutex;
use std::time::Duration;

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;

use super::Window;

/// The time now, as the budgets read it.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock that moves only when told (tests).
#[derive(Debug)]
pub struct ManualClock(Mutex<Timestamp>);

impl ManualClock {
    pub fn new(at: Timestamp) -> Self {
        Self(Mutex::new(at))
    }

    pub fn set(&self, at: Timestamp) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = at;
    }

    pub fn advance(&self, by: Duration) {
        let mut now = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Ok(later) = now.checked_add(by) {
            *now = later;
        }
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Timestamp {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The calendar periods of a time zone.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
}

impl Calendar {
    pub fn new(tz: TimeZone) -> Self {
        Self { tz }
    }

    /// The time zone named `name` (IANA, `UTC`, or a fixed offset like `+08:00`), from
    /// the tz database built into the binary when the system has none.
    pub fn named(name: &str) -> Result<Self, String> {
        let name = name.trim();
        if name.eq_ignore_ascii_case("utc") || name == "Z" {
            return Ok(Self::new(TimeZone::UTC));
        }
        if let Some(offset) = fixed_offset(name) {
            return Ok(Self::new(TimeZone::fixed(offset)));
        }
        TimeZone::get(name).map(Self::new).map_err(|e| {
            format!("{name:?} is not a time zone (an IANA name like \"Europe/Berlin\", or \"UTC\"): {e}")
        })
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    fn date(&self, at: Timestamp) -> Date {
        at.to_zoned_datetime(self.tz.clone()).date()
    }

    /// The period `at` falls in: `YYYYMMDD` for a day, `YYYYMM` for a month (0 for the
    /// minute bucket, which has none).
    pub fn period(&self, window: Window, at: Timestamp) -> i64 {
        let d = self.date(at);
        let (y, m, day) = (
            i64::from(d.year()),
            i64::from(d.month()),
            i64::from(d.day()),
        );
        match window {
            Window::Minute => 0,
            Window::Day => y * 10_000 + m * 100 + day,
            Window::Month => y * 100 + m,
        }
    }

    /// When the period that `at` falls in ends: the next midnight (or the first instant of
    /// the next day where a change skips midnight), or the first of the next month.
    pub fn period_end(&self, window: Window, at: Timestamp) -> Timestamp {
        let d = self.date(at);
        let next = match window {
            Window::Minute => return at,
            Window::Day => d.tomorrow(),
            Window::Month => d.last_of_month().tomorrow(),
        };
        next.ok()
            .and_then(|n| n.to_zoned_datetime(self.tz.clone()).ok())
            .map(|z| z.timestamp())
            .unwrap_or(Timestamp::MAX)
    }
}

/// A fixed offset written `+08:00`, `-0530` or `+8`.
fn fixed_offset(text: &str) -> Option<jiff::tz::Offset> {
    let sign = match text.as_bytes().first()? {
        b'+' => 1,
        b'-' => -1,
        _ => return None,
    };
    let digits: String = text[1..].chars().filter(|c| *c != ':').collect();
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m) = match digits.len() {
        1 | 2 => (digits.parse::<i32>().ok()?, 0),
        _ => {
            let (h, m) = digits.split_at(digits.len() - 2);
            (h.parse::<i32>().ok()?, m.parse::<i32>().ok()?)
        }
    };
    if h > 25 || m > 59 {
        return None;
    }
    jiff::tz::Offset::from_seconds(sign * (h * 3600 + m * 60)).ok()
}

/// `to - from`, never negative.
pub fn until(from: Timestamp, to: Timestamp) -> Duration {
    let (f, t) = (from.as_nanosecond(), to.as_nanosecond());
    if t <= f {
        return Duration::ZERO;
    }
    let nanos = u64::try_from(t - f).unwrap_or(u64::MAX);
    Duration::from_nanos(nanos)
}

/// `at + by`, saturating.
pub fn after(at: Timestamp, by: Duration) -> Timestamp {
    at.checked_add(by).unwrap_or(Timestamp::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn days_and_months_in_utc() {
        let c = Calendar::named("UTC").unwrap();
        let at = ts("2026-12-31T23:59:59Z");
        assert_eq!(c.period(Window::Day, at), 20261231);
        assert_eq!(c.period(Window::Month, at), 202612);
        assert_eq!(c.period_end(Window::Day, at), ts("2027-01-01T00:00:00Z"));
        assert_eq!(c.period_end(Window::Month, at), ts("2027-01-01T00:00:00Z"));
        let next = ts("2027-01-01T00:00:00Z");
        assert_eq!(c.period(Window::Day, next), 20270101);
        assert_eq!(c.period(Window::Month, next), 202701);
        assert_eq!(
            c.period_end(Window::Month, ts("2028-02-10T12:00:00Z")),
            ts("2028-03-01T00:00:00Z")
        );
    }

    #[test]
    fn a_day_with_a_daylight_saving_change_is_23_or_25_hours() {
        let c = Calendar::named("Europe/Berlin").unwrap();
        // 2026-03-29: clocks go from 02:00 to 03:00 (CET to CEST).
        let morning = ts("2026-03-29T00:30:00Z"); // 01:30 CET
        assert_eq!(c.period(Window::Day, morning), 20260329);
        let end = c.period_end(Window::Day, morning);
        assert_eq!(end, ts("2026-03-29T22:00:00Z")); // midnight CEST
        let start = ts("2026-03-28T23:00:00Z"); // midnight CET
        assert_eq!(until(start, end), Duration::from_secs(23 * 3600));
        // 2026-10-25: back from 03:00 to 02:00.
        let autumn = ts("2026-10-25T12:00:00Z");
        let end = c.period_end(Window::Day, autumn);
        assert_eq!(end, ts("2026-10-25T23:00:00Z"));
        assert_eq!(
            until(ts("2026-10-24T22:00:00Z"), end),
            Duration::from_secs(25 * 3600)
        );
        // The local day, not UTC's: 23:30 UTC on the 24th is the 25th in Berlin.
        assert_eq!(c.period(Window::Day, ts("2026-10-24T23:30:00Z")), 20261025);
    }

    #[test]
    fn zones_by_name_and_offset() {
        assert!(Calendar::named("Asia/Taipei").is_ok());
        let c = Calendar::named("+08:00").unwrap();
        assert_eq!(c.period(Window::Day, ts("2026-12-01T16:00:00Z")), 20261202);
        let err = Calendar::named("Mars/Olympus").unwrap_err();
        assert!(err.contains("Mars/Olympus"), "{err}");
    }
}

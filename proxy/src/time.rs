//! Wall-clock time as Unix milliseconds, the unit of expiries and activity.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Formats Unix milliseconds as RFC 3339 UTC with second precision
/// (`2023-11-14T22:13:20Z`).
pub fn format_unix_millis(millis: u64) -> String {
    let seconds = millis / 1000;
    let days = seconds / 86_400;
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        of_day / 3600,
        of_day % 3600 / 60,
        of_day % 60
    )
}

/// A UTC instant split into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil {
    pub year: u64,
    pub month: u64,
    pub day: u64,
    pub hour: u64,
    pub minute: u64,
    pub second: u64,
    pub millisecond: u64,
}

impl Civil {
    /// The calendar fields of `millis` since the Unix epoch, UTC.
    pub fn from_unix_millis(millis: u64) -> Civil {
        let seconds = millis / 1000;
        let of_day = seconds % 86_400;
        let (year, month, day) = civil_from_days(seconds / 86_400);
        Civil {
            year,
            month,
            day,
            hour: of_day / 3600,
            minute: of_day % 3600 / 60,
            second: of_day % 60,
            millisecond: millis % 1000,
        }
    }

    /// Appends RFC 3339 UTC with milliseconds (`2023-11-14T22:13:20.123Z`).
    pub fn write_rfc3339_millis(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        let _ = write!(
            out,
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            self.year, self.month, self.day, self.hour, self.minute, self.second, self.millisecond
        );
    }

    /// Appends the common log format's time (`14/Nov/2023:22:13:20 +0000`).
    pub fn write_clf(&self, out: &mut Vec<u8>) {
        use std::io::Write;
        const MONTHS: [&str; 12] = [
            "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
        ];
        let month = MONTHS[(self.month.clamp(1, 12) - 1) as usize];
        let _ = write!(
            out,
            "{:02}/{month}/{:04}:{:02}:{:02}:{:02} +0000",
            self.day, self.year, self.hour, self.minute, self.second
        );
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`, for non-negative day counts).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_unix_millis(0), "1970-01-01T00:00:00Z");
        assert_eq!(
            format_unix_millis(1_700_000_000_000),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(format_unix_millis(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(
            format_unix_millis(4_102_444_799_999),
            "2099-12-31T23:59:59Z"
        );
    }

    #[test]
    fn civil_forms_with_milliseconds() {
        let civil = Civil::from_unix_millis(1_700_000_000_123);
        let mut out = Vec::new();
        civil.write_rfc3339_millis(&mut out);
        assert_eq!(out, b"2023-11-14T22:13:20.123Z");
        out.clear();
        civil.write_clf(&mut out);
        assert_eq!(out, b"14/Nov/2023:22:13:20 +0000");
        out.clear();
        Civil::from_unix_millis(951_782_400_007).write_rfc3339_millis(&mut out);
        assert_eq!(out, b"2000-02-29T00:00:00.007Z");
    }

    #[test]
    fn now_is_after_2020() {
        assert!(now_unix_millis() > 1_577_836_800_000);
    }
}

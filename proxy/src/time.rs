//! Wall-clock time as Unix milliseconds, the unit of expiries and activity.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::format_description::BorrowedFormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Formats Unix milliseconds as RFC 3339 UTC with second precision
/// (`2023-11-14T22:13:20Z`), through the `humantime` crate.
pub fn format_unix_millis(millis: u64) -> String {
    // humantime writes four-digit years: later instants (a far expiry) show as
    // the last second of 9999.
    const LAST_SECOND_OF_9999: u64 = 253_402_300_799;
    let at = UNIX_EPOCH + Duration::from_secs((millis / 1000).min(LAST_SECOND_OF_9999));
    humantime::format_rfc3339_seconds(at).to_string()
}

/// RFC 3339 UTC with milliseconds, the access log's `time`.
const RFC3339_MILLIS: &[BorrowedFormatItem<'_>] =
    format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z");

/// The common log format's time, `[day/Mon/year:hh:mm:ss +0000]` without the
/// brackets.
const CLF: &[BorrowedFormatItem<'_>] =
    format_description!("[day]/[month repr:short]/[year]:[hour]:[minute]:[second] +0000");

/// A UTC instant, written in the access log's forms (through the `time` crate).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Civil(OffsetDateTime);

impl Civil {
    /// The instant `millis` after the Unix epoch, UTC (the epoch itself when
    /// out of the crate's range, past the year 9999).
    pub fn from_unix_millis(millis: u64) -> Civil {
        let nanos = i128::from(millis) * 1_000_000;
        Civil(
            OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(OffsetDateTime::UNIX_EPOCH),
        )
    }

    /// Appends RFC 3339 UTC with milliseconds (`2023-11-14T22:13:20.123Z`).
    pub fn write_rfc3339_millis(&self, out: &mut Vec<u8>) {
        // Formatting into a Vec fails only for years past 9999, which
        // `from_unix_millis` never makes.
        let _ = self.0.format_into(out, RFC3339_MILLIS);
    }

    /// Appends the common log format's time (`14/Nov/2023:22:13:20 +0000`).
    pub fn write_clf(&self, out: &mut Vec<u8>) {
        let _ = self.0.format_into(out, CLF);
    }
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
        assert_eq!(format_unix_millis(u64::MAX), "9999-12-31T23:59:59Z");
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

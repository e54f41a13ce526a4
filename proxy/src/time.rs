//! Wall-clock time as Unix milliseconds, the unit of expiries and activity.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

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
    fn now_is_after_2020() {
        assert!(now_unix_millis() > 1_577_836_800_000);
    }
}

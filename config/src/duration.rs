//! Durations as operators write them in the config file and on the command line:
//! a number followed by a unit, `250ms`, `90s`, `30m`, `24h`, `7d`, or a sum
//! (`1h 30m`), parsed by the `humantime` crate.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// The units a duration may be written in, for error messages.
pub const DURATION_RULE: &str =
    "write a number followed by ms, s, m, h or d (for example 90s, 30m, 24h, 7d, or 1h 30m)";

/// Parses `250ms`, `90s`, `30m`, `24h`, `7d` (or a sum, `1h 30m`; the `humantime`
/// crate's syntax) into a [`Duration`] of whole milliseconds.
///
/// Returns an error message (without the key name) that states the rule when the
/// text is not of that form, overflows, or is finer than a millisecond.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let trimmed = text.trim();
    // humantime reads a bare "0" as zero; a duration here always names its unit.
    if trimmed.is_empty() || trimmed.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} is not a duration; {DURATION_RULE}"));
    }
    let duration = humantime::parse_duration(trimmed).map_err(|e| match e {
        humantime::DurationError::NumberOverflow => {
            format!("{text:?} is not a duration: it is too long")
        }
        other => format!("{text:?} is not a duration ({other}); {DURATION_RULE}"),
    })?;
    if duration.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "{text:?} is not a duration of whole milliseconds; {DURATION_RULE}"
        ));
    }
    if u64::try_from(duration.as_millis()).is_err() {
        return Err(format!("{text:?} is not a duration: it is too long"));
    }
    Ok(duration)
}

/// Formats a duration as one token in the largest unit that divides it exactly
/// (`90s`, `30m`, `7d`), so that `parse_duration(format_duration(d)) == d` for
/// whole milliseconds. (Not humantime's `1m 30s`: messages suggest the value as
/// a command-line argument or a config value, where one token pastes as is.)
pub fn format_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis == 0 {
        return "0s".to_string();
    }
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if millis.is_multiple_of(size) {
            return format!("{}{unit}", millis / size);
        }
    }
    format!("{millis}ms")
}

/// Deserializes a duration string for a config field (`#[serde(with = ...)]`-style helper).
pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    struct DurationVisitor;
    impl Visitor<'_> for DurationVisitor {
        type Value = Duration;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            write!(f, "a duration string; {DURATION_RULE}")
        }
        fn visit_str<E: de::Error>(self, text: &str) -> Result<Duration, E> {
            parse_duration(text).map_err(E::custom)
        }
    }
    deserializer.deserialize_str(DurationVisitor)
}

/// A config field that holds a duration; exists so that `Deserialize` can be derived
/// for the settings structs while the text form stays `90s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserialize(deserializer).map(ConfigDuration)
    }
}

impl fmt::Display for ConfigDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
    }

    #[test]
    fn rejects_what_is_not_a_duration_and_states_the_rule() {
        for bad in ["", "s", "90", "-1s", "10 parsecs", "3x", "h1"] {
            let error = parse_duration(bad).unwrap_err();
            assert!(error.contains("is not a duration"), "{bad}: {error}");
            assert!(error.contains("ms, s, m, h or d"), "{bad}: {error}");
        }
        for too_long in ["99999999999999999999d", "999999999999999999d"] {
            let error = parse_duration(too_long).unwrap_err();
            assert!(error.contains("too long"), "{too_long}: {error}");
        }
        assert!(parse_duration("500us")
            .unwrap_err()
            .contains("whole milliseconds"));
    }

    #[test]
    fn formats_back_to_the_same_duration() {
        for text in ["250ms", "90s", "30m", "25h", "7d", "0s", "1500ms"] {
            let parsed = parse_duration(text).unwrap();
            assert_eq!(format_duration(parsed), text);
        }
    }
}

//! TLS termination: certificates chosen by SNI from a lock-free store that the
//! control plane publishes to, the listener settings (rustls, ALPN), and what a
//! connection carries into request handling (its SNI and certificate).

pub mod certificate;
pub mod edge;
pub mod listener;
pub mod store;

pub use certificate::{CertError, CertSource, CertStatus, Certificate};
pub use edge::{Edge, Verdict};
pub use listener::{ConnTls, TlsOptions};
pub use store::{CertSet, CertStore, Reason};

/// `unix` seconds as an RFC 3339 UTC time (`2026-12-02T00:00:00Z`), for messages.
pub fn format_unix(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Howard Hinnant's days-to-civil algorithm.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats_unix_time() {
        assert_eq!(super::format_unix(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::format_unix(1_796_169_600), "2026-12-02T00:00:00Z");
        assert_eq!(
            super::format_unix(951_782_400 + 3_661),
            "2000-02-29T01:01:01Z"
        );
    }
}

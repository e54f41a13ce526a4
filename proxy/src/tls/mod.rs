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

/// `unix` seconds as an RFC 3339 UTC time (`2026-12-02T00:00:00Z`), for messages
/// (through the `time` crate); a time it cannot represent is written as Unix
/// seconds.
pub fn format_unix(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|at| {
            at.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| format!("{unix} (Unix seconds)"))
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
        assert_eq!(
            super::format_unix(i64::MAX),
            format!("{} (Unix seconds)", i64::MAX)
        );
    }
}

//! Host normalisation (SPEC §2.1): lower-case, drop the port and one trailing dot,
//! and refuse what is not a valid host name, without allocating.

use std::fmt;

/// Longest host name in its normalised form (RFC 1035: 253 characters without the
/// trailing dot).
pub const MAX_HOST_LEN: usize = 253;

/// Longest single label of a host name (RFC 1035).
pub const MAX_LABEL_LEN: usize = 63;

/// Why a Host header cannot be routed. Shown to the client in a 400 response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostError {
    /// No Host header and no authority in the request line.
    Missing,
    /// Longer than 253 characters once the port and trailing dot are dropped.
    TooLong,
    /// A label is empty (`a..b`, a leading dot) or longer than 63 characters.
    BadLabelLength,
    /// A character other than letters, digits, `-` and `.` (IDNs must use punycode).
    BadCharacter,
    /// A label starts or ends with `-`.
    BadHyphen,
    /// The port after `:` is not a number from 0 to 65535.
    BadPort,
    /// A bracketed IPv6 literal that is not an IPv6 address.
    BadIpv6,
}

impl fmt::Display for HostError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HostError::Missing => "the request has no Host header",
            HostError::TooLong => "the host is longer than 253 characters",
            HostError::BadLabelLength => {
                "each dot-separated label of the host must have 1 to 63 characters"
            }
            HostError::BadCharacter => {
                "the host may contain only letters, digits, '-' and '.' (write international names in punycode, xn--)"
            }
            HostError::BadHyphen => "a label of the host must not start or end with '-'",
            HostError::BadPort => "the port after ':' must be a number from 0 to 65535",
            HostError::BadIpv6 => "the bracketed host is not an IPv6 address",
        })
    }
}

/// A buffer that holds one lower-cased host; lives on the caller's stack so that
/// normalisation does not allocate.
pub type HostBuf = [u8; MAX_HOST_LEN + 2];

/// Normalises a raw `Host` value: lower-cased, without port, without one trailing
/// dot. IPv6 literals keep their brackets (`[::1]`). The result borrows `raw` when
/// it was already lower-case (the common case) and is copied into `buf` otherwise.
/// Returns why the host is invalid.
pub fn normalise_host<'a>(raw: &'a [u8], buf: &'a mut HostBuf) -> Result<&'a str, HostError> {
    if raw.is_empty() {
        return Err(HostError::Missing);
    }
    if raw[0] == b'[' {
        return normalise_ipv6(raw, buf);
    }
    let name = match raw.iter().rposition(|&b| b == b':') {
        Some(colon) => {
            check_port(&raw[colon + 1..])?;
            &raw[..colon]
        }
        None => raw,
    };
    let name = name.strip_suffix(b".").unwrap_or(name);
    if name.len() > MAX_HOST_LEN {
        return Err(HostError::TooLong);
    }
    // Pass 1: every byte through a table that maps what a host may not contain to
    // 0 and upper case to lower case. Pass 2: label lengths and hyphens.
    let mut has_upper = false;
    for &byte in name {
        let lower = HOST_BYTES[usize::from(byte)];
        if lower == 0 {
            return Err(HostError::BadCharacter);
        }
        has_upper |= lower != byte;
    }
    for label in name.split(|&b| b == b'.') {
        match label {
            [] => return Err(HostError::BadLabelLength),
            [b'-', ..] | [.., b'-'] => return Err(HostError::BadHyphen),
            _ if label.len() > MAX_LABEL_LEN => return Err(HostError::BadLabelLength),
            _ => {}
        }
    }
    let host = if has_upper {
        for (slot, &byte) in buf.iter_mut().zip(name) {
            *slot = HOST_BYTES[usize::from(byte)];
        }
        &buf[..name.len()]
    } else {
        name
    };
    // Every byte is ASCII, checked by the table above.
    std::str::from_utf8(host).map_err(|_| HostError::BadCharacter)
}

/// Host bytes lower-cased: letters, digits, `-` and `.` map to themselves (upper
/// case to lower case); every other byte maps to 0.
const HOST_BYTES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut byte = 0usize;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = match b {
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' => b,
            b'A'..=b'Z' => b + 32,
            _ => 0,
        };
        byte += 1;
    }
    table
};

fn normalise_ipv6<'a>(raw: &'a [u8], buf: &'a mut HostBuf) -> Result<&'a str, HostError> {
    let close = raw
        .iter()
        .position(|&b| b == b']')
        .ok_or(HostError::BadIpv6)?;
    match &raw[close + 1..] {
        [] => {}
        [b':', port @ ..] => check_port(port)?,
        _ => return Err(HostError::BadPort),
    }
    let literal = &raw[..=close];
    let inner = std::str::from_utf8(&literal[1..close]).map_err(|_| HostError::BadIpv6)?;
    inner
        .parse::<std::net::Ipv6Addr>()
        .map_err(|_| HostError::BadIpv6)?;
    // A valid IPv6 literal is at most 47 bytes with its brackets: it fits.
    for (slot, byte) in buf.iter_mut().zip(literal) {
        *slot = byte.to_ascii_lowercase();
    }
    std::str::from_utf8(&buf[..literal.len()]).map_err(|_| HostError::BadIpv6)
}

fn check_port(port: &[u8]) -> Result<(), HostError> {
    if port.is_empty() || port.len() > 5 || !port.iter().all(u8::is_ascii_digit) {
        return Err(HostError::BadPort);
    }
    let value = port
        .iter()
        .fold(0u32, |acc, digit| acc * 10 + u32::from(digit - b'0'));
    if value > 65_535 {
        return Err(HostError::BadPort);
    }
    Ok(())
}

/// Checks that `label` is one RFC 1123 DNS label as the snapshot stores it:
/// 1 to 63 characters of `[a-z0-9-]`, not starting or ending with `-`.
pub fn is_dns_label(label: &str) -> bool {
    let bytes = label.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= MAX_LABEL_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-')
        && bytes[0] != b'-'
        && bytes[bytes.len() - 1] != b'-'
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<String, HostError> {
        let mut buf = [0u8; MAX_HOST_LEN + 2];
        normalise_host(raw.as_bytes(), &mut buf).map(str::to_string)
    }

    #[test]
    fn lower_cases_and_drops_port_and_trailing_dot() {
        assert_eq!(norm("Shop.Example.COM"), Ok("shop.example.com".into()));
        assert_eq!(norm("shop.example.com:8080"), Ok("shop.example.com".into()));
        assert_eq!(norm("shop.example.com."), Ok("shop.example.com".into()));
        assert_eq!(norm("SHOP.example.com.:443"), Ok("shop.example.com".into()));
        assert_eq!(norm("localhost"), Ok("localhost".into()));
        assert_eq!(norm("127.0.0.1:80"), Ok("127.0.0.1".into()));
    }

    #[test]
    fn punycode_passes_through() {
        assert_eq!(
            norm("XN--BCHER-KVA.example"),
            Ok("xn--bcher-kva.example".into())
        );
    }

    #[test]
    fn ipv6_literals_keep_brackets() {
        assert_eq!(norm("[::1]"), Ok("[::1]".into()));
        assert_eq!(norm("[FE80::1]:8080"), Ok("[fe80::1]".into()));
        assert_eq!(norm("[::1"), Err(HostError::BadIpv6));
        assert_eq!(norm("[zz::1]"), Err(HostError::BadIpv6));
        assert_eq!(norm("[::1]x"), Err(HostError::BadPort));
    }

    #[test]
    fn rejects_malformed_hosts() {
        assert_eq!(norm(""), Err(HostError::Missing));
        assert_eq!(norm("."), Err(HostError::BadLabelLength));
        assert_eq!(norm("a..b"), Err(HostError::BadLabelLength));
        assert_eq!(norm(".a"), Err(HostError::BadLabelLength));
        assert_eq!(norm("a.b.."), Err(HostError::BadLabelLength));
        assert_eq!(norm("bad host"), Err(HostError::BadCharacter));
        assert_eq!(norm("under_score.com"), Err(HostError::BadCharacter));
        assert_eq!(norm("bücher.example"), Err(HostError::BadCharacter));
        assert_eq!(norm("-a.com"), Err(HostError::BadHyphen));
        assert_eq!(norm("a-.com"), Err(HostError::BadHyphen));
        assert_eq!(norm("a.com-"), Err(HostError::BadHyphen));
        assert_eq!(norm("a.com:"), Err(HostError::BadPort));
        assert_eq!(norm("a.com:99999"), Err(HostError::BadPort));
        assert_eq!(norm("a.com:8o"), Err(HostError::BadPort));
        assert_eq!(norm("a:b:c"), Err(HostError::BadPort));
        assert_eq!(norm(":80"), Err(HostError::BadLabelLength));
    }

    #[test]
    fn label_length_limits() {
        let label63 = "a".repeat(63);
        let label64 = "a".repeat(64);
        assert_eq!(
            norm(&format!("{label63}.com")),
            Ok(format!("{label63}.com"))
        );
        assert_eq!(
            norm(&format!("{label64}.com")),
            Err(HostError::BadLabelLength)
        );
    }

    #[test]
    fn host_length_limits() {
        // Four labels of 63 plus three dots is 255; trim to the exact sizes.
        let label = "a".repeat(63);
        let host255 = format!("{label}.{label}.{label}.{label}");
        let host253 = &host255[..253];
        let host254 = &host255[..254];
        assert_eq!(host254.len(), 254);
        assert_eq!(norm(host253), Ok(host253.to_string()));
        assert_eq!(norm(host254), Err(HostError::TooLong));
        // A trailing dot and a port do not count toward the limit.
        assert_eq!(norm(&format!("{host253}.:8080")), Ok(host253.to_string()));
    }

    #[test]
    fn dns_label_rule() {
        assert!(is_dns_label("pr-42"));
        assert!(is_dns_label("a"));
        assert!(!is_dns_label(""));
        assert!(!is_dns_label("-a"));
        assert!(!is_dns_label("a-"));
        assert!(!is_dns_label("A"));
        assert!(!is_dns_label("a.b"));
        assert!(!is_dns_label(&"a".repeat(64)));
    }
}

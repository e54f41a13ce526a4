//! Reading one HTTP/1 request head and deciding, before anything is proxied,
//! whether it is unambiguous. Every request on an HTTP/1 connection passes here
//! first, whichever path then serves it.
//!
//! The rules are at least as strict as nginx's, because an ingress that forwards
//! what an upstream may read differently is a request-smuggling vector:
//! - **One body length.** Two `Content-Length` fields, or a list (`5, 5`), or a
//!   value that is not plain digits: 400. Proxies and servers disagree on which
//!   value wins, so the body of one request becomes the start of the next
//!   (CL.CL smuggling).
//! - **`Transfer-Encoding` is exactly `chunked`.** Any other coding or list
//!   (`identity, chunked`, `gzip, chunked`) is 501, a repeated field 400: a hop
//!   that ignores an unknown coding frames the body differently (TE.TE).
//! - **Never both.** `Content-Length` with `Transfer-Encoding` is 400 (RFC 9112
//!   §6.1 lets a server accept it if it closes the connection; refusing is
//!   simpler and is what nginx does): the CL.TE and TE.CL shapes.
//! - **HTTP/1.0 with `Transfer-Encoding`** is 400 (RFC 9112 §6.1).
//! - **A clean target**: origin-form (`/…`), `*` only for OPTIONS, or
//!   absolute-form (`http://…`); no control bytes, NUL or spaces (which some
//!   servers split on, so a second request line can hide inside the first).
//! - **A method token of upper-case letters** (`_` and `-` allowed, as nginx);
//!   `TRACE` and `CONNECT` are 405 (TRACE reflects credentials back, cross-site
//!   tracing; this is no forward proxy).
//! - **Exactly one `Host`** on HTTP/1.1, at most one on 1.0: a duplicate lets two
//!   hops route the same request to different apps.
//! - **Bounded size**: the header block (`proxy.max_header_bytes`) and the field
//!   count (`proxy.max_headers`) are 431, the target (`proxy.max_target_bytes`)
//!   414. The parser (`httparse`) already refuses obs-fold, a space before the
//!   colon and control bytes in values (400).

use std::mem::MaybeUninit;

/// The size limits of a request head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadLimits {
    /// Request line and headers, in bytes (431 past it).
    pub max_header_bytes: usize,
    /// Header fields (431 past it). At most [`MAX_HEADERS`].
    pub max_headers: usize,
    /// Request target, in bytes (414 past it).
    pub max_target_bytes: usize,
}

/// The largest `max_headers` the parser supports (Pingora's own limit).
pub const MAX_HEADERS: usize = 256;

/// How the request's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// No body.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A request head that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Bytes of the head, up to and including the blank line.
    pub len: usize,
    /// How the body that follows is framed.
    pub body: BodyFraming,
    /// The request asked for JSON error bodies.
    pub accepts_json: bool,
}

/// A request refused before it is proxied: answered with `status` and
/// `Connection: close`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub status: u16,
    /// Stable machine-readable code for JSON bodies.
    pub code: &'static str,
    /// What was wrong and what is allowed.
    pub message: String,
    /// The client asked for JSON (when the head got far enough to tell).
    pub accepts_json: bool,
}

/// What the bytes read so far hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole head yet, and within the limits: read more.
    Partial,
    /// A whole head that passed every rule.
    Complete(Head),
    /// A head that breaks a rule (or could only grow past a limit).
    Refused(Refusal),
}

fn refuse(status: u16, code: &'static str, message: impl Into<String>) -> Parsed {
    Parsed::Refused(Refusal {
        status,
        code,
        message: message.into(),
        accepts_json: false,
    })
}

/// Parses and checks the request head at the start of `buf`.
pub fn parse(buf: &[u8], limits: &HeadLimits) -> Parsed {
    let mut headers = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    let max_headers = limits.max_headers.min(MAX_HEADERS);
    let status = request.parse_with_uninit_headers(buf, &mut headers[..max_headers]);
    match status {
        Ok(httparse::Status::Partial) => partial(buf, limits),
        Ok(httparse::Status::Complete(len)) => {
            if len > limits.max_header_bytes {
                return too_large(limits);
            }
            check(&request, len, limits)
        }
        Err(httparse::Error::TooManyHeaders) => refuse(
            431,
            "too_many_headers",
            format!(
                "the request has more than {} header fields (proxy.max_headers)",
                limits.max_headers
            ),
        ),
        Err(httparse::Error::Version) if names_another_version(buf) => refuse(
            505,
            "http_version",
            "only HTTP/1.0 and HTTP/1.1 requests are served over this connection",
        ),
        Err(error) => {
            if first_line_too_long(buf, limits) {
                return target_too_long(limits);
            }
            refuse(
                400,
                "malformed_request",
                format!(
                    "the request head is malformed ({}); send a request line and header fields as RFC 9112 defines, without control bytes, spaces before colons or folded lines",
                    describe(error)
                ),
            )
        }
    }
}

/// The request line is `METHOD TARGET HTTP/x.y` with a version other than 1.0
/// or 1.1 (rather than a target with a space in it).
fn names_another_version(buf: &[u8]) -> bool {
    let line = &buf[..memchr::memchr(b'\n', buf).unwrap_or(buf.len())];
    let mut words = line.trim_ascii_end().split(|b| *b == b' ');
    let parts = (words.next(), words.next(), words.next(), words.next());
    matches!(parts, (Some(_), Some(_), Some(version), None) if version.starts_with(b"HTTP/"))
}

fn describe(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => "invalid header field name",
        httparse::Error::HeaderValue => "invalid byte in a header field value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid byte in the method or request target",
        httparse::Error::TooManyHeaders => "too many header fields",
        httparse::Error::Version => "invalid HTTP version",
    }
}

/// The limits of a head that is not complete yet: `Partial`, or the refusal of
/// a head that can only end up over one. The loop calls it alone while no line
/// has ended since the last parse.
pub fn partial(buf: &[u8], limits: &HeadLimits) -> Parsed {
    if first_line_too_long(buf, limits) {
        return target_too_long(limits);
    }
    if buf.len() >= limits.max_header_bytes {
        return too_large(limits);
    }
    Parsed::Partial
}

/// The request line (method, target, version) cannot fit the target limit.
fn first_line_too_long(buf: &[u8], limits: &HeadLimits) -> bool {
    // Method, two spaces and `HTTP/1.1` take at most this much beside the target.
    const LINE_OVERHEAD: usize = 32;
    let line = memchr::memchr(b'\n', buf).unwrap_or(buf.len());
    line > limits.max_target_bytes + LINE_OVERHEAD
}

fn too_large(limits: &HeadLimits) -> Parsed {
    refuse(
        431,
        "header_too_large",
        format!(
            "the request header block is larger than {} bytes (proxy.max_header_bytes)",
            limits.max_header_bytes
        ),
    )
}

fn target_too_long(limits: &HeadLimits) -> Parsed {
    refuse(
        414,
        "uri_too_long",
        format!(
            "the request target is longer than {} bytes (proxy.max_target_bytes)",
            limits.max_target_bytes
        ),
    )
}

/// The rules of the module doc on a complete head.
fn check(request: &httparse::Request<'_, '_>, len: usize, limits: &HeadLimits) -> Parsed {
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return refuse(400, "malformed_request", "the request line is incomplete");
    };
    let mut accepts_json = false;
    let mut hosts = 0usize;
    let mut content_length: Option<&[u8]> = None;
    let mut content_lengths = 0usize;
    let mut transfer_encoding: Option<&[u8]> = None;
    let mut transfer_encodings = 0usize;
    let mut underscored = None;
    let mut host: Option<&[u8]> = None;
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
            host = Some(header.value);
        } else if name.eq_ignore_ascii_case(b"content-length") {
            content_lengths += 1;
            content_length = Some(header.value);
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            transfer_encodings += 1;
            transfer_encoding = Some(header.value);
        } else if name.eq_ignore_ascii_case(b"accept") {
            accepts_json |= crate::error_response::accepts_json(Some(header.value));
        }
        if name.contains(&b'_') && is_protected_with_underscores(name) {
            underscored = Some(header.name);
        }
    }
    let refused = |status, code, message: String| {
        Parsed::Refused(Refusal {
            status,
            code,
            message,
            accepts_json,
        })
    };

    if let Some(name) = underscored {
        return refused(
            400,
            "invalid_header_name",
            format!("the header name {name:?} spells a framing or forwarding header with underscores, which some servers read as that header; use hyphens"),
        );
    }
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'_' || b == b'-')
    {
        return refused(
            400,
            "invalid_method",
            format!(
                "{method:?} is not a valid method; methods are upper-case letters (GET, POST, ...)"
            ),
        );
    }
    if method == "TRACE" || method == "CONNECT" {
        return refused(
            405,
            "method_not_allowed",
            format!("{method} is not served by this ingress"),
        );
    }
    if target.len() > limits.max_target_bytes {
        return target_too_long(limits);
    }
    if let Some(problem) = target_problem(method, target) {
        return refused(400, "invalid_target", problem);
    }
    let http10 = version == 0;
    if hosts > 1 {
        return refused(
            400,
            "duplicate_host",
            "the request has more than one Host header; send exactly one".to_string(),
        );
    }
    if hosts == 0 && !http10 {
        return refused(
            400,
            "missing_host",
            "an HTTP/1.1 request needs a Host header".to_string(),
        );
    }
    if let (Some(authority), Some(host)) = (absolute_authority(target), host) {
        if !authority.eq_ignore_ascii_case(host.trim_ascii()) {
            return refused(
                400,
                "host_mismatch",
                format!(
                    "the absolute-form target names {:?} but the Host header says {:?}; send the same host in both",
                    String::from_utf8_lossy(authority),
                    String::from_utf8_lossy(host.trim_ascii())
                ),
            );
        }
    }
    let body = match (content_length, transfer_encoding) {
        (Some(_), Some(_)) => {
            return refused(
                400,
                "ambiguous_framing",
                "the request has both Content-Length and Transfer-Encoding; send one of them"
                    .to_string(),
            )
        }
        (Some(value), None) => {
            if content_lengths > 1 {
                return refused(
                    400,
                    "ambiguous_framing",
                    "the request has more than one Content-Length header; send exactly one"
                        .to_string(),
                );
            }
            match parse_length(value) {
                Some(0) => BodyFraming::None,
                Some(length) => BodyFraming::Length(length),
                None => {
                    return refused(
                        400,
                        "ambiguous_framing",
                        format!(
                            "Content-Length {:?} is not one decimal number; send a single value of digits only",
                            String::from_utf8_lossy(value)
                        ),
                    )
                }
            }
        }
        (None, Some(value)) => {
            if transfer_encodings > 1 {
                return refused(
                    400,
                    "ambiguous_framing",
                    "the request has more than one Transfer-Encoding header; send `Transfer-Encoding: chunked` once"
                        .to_string(),
                );
            }
            if http10 {
                return refused(
                    400,
                    "ambiguous_framing",
                    "an HTTP/1.0 request cannot use Transfer-Encoding; send Content-Length"
                        .to_string(),
                );
            }
            if !value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return refused(
                    501,
                    "unsupported_transfer_coding",
                    format!(
                        "Transfer-Encoding {:?} is not supported; only `chunked` is",
                        String::from_utf8_lossy(value)
                    ),
                );
            }
            BodyFraming::Chunked
        }
        (None, None) => BodyFraming::None,
    };
    Parsed::Complete(Head {
        len,
        body,
        accepts_json,
    })
}

/// Servers in the CGI tradition map `X_Forwarded_For` and `X-Forwarded-For` to the
/// same variable, so a client could spoof what the ingress sets (nginx drops
/// underscored names by default). Refused for the fields that matter.
fn is_protected_with_underscores(name: &[u8]) -> bool {
    const PROTECTED: [&[u8]; 8] = [
        b"host",
        b"content-length",
        b"transfer-encoding",
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-real-ip",
        b"forwarded",
    ];
    PROTECTED.iter().any(|protected| {
        protected.len() == name.len()
            && protected
                .iter()
                .zip(name)
                .all(|(p, n)| p.eq_ignore_ascii_case(n) || (*p == b'-' && *n == b'_'))
    })
}

/// The authority of an absolute-form target (`http://HOST[:PORT]/...`).
fn absolute_authority(target: &str) -> Option<&[u8]> {
    let bytes = target.as_bytes();
    let rest = if bytes.len() >= 7 && bytes[..7].eq_ignore_ascii_case(b"http://") {
        &bytes[7..]
    } else if bytes.len() >= 8 && bytes[..8].eq_ignore_ascii_case(b"https://") {
        &bytes[8..]
    } else {
        return None;
    };
    let end = rest
        .iter()
        .position(|b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    Some(&rest[..end])
}

/// What is wrong with the request target, if anything.
fn target_problem(method: &str, target: &str) -> Option<String> {
    if let Some(byte) = target.bytes().find(|b| *b <= b' ' || *b == 0x7f) {
        return Some(format!(
            "the request target contains the byte 0x{byte:02x}; control bytes and spaces must be percent-encoded"
        ));
    }
    let bytes = target.as_bytes();
    let absolute = bytes.len() > 7
        && (bytes[..7].eq_ignore_ascii_case(b"http://")
            || bytes.len() > 8 && bytes[..8].eq_ignore_ascii_case(b"https://"));
    if bytes.first() == Some(&b'/') || absolute || (target == "*" && method == "OPTIONS") {
        return None;
    }
    Some(format!(
        "the request target {:?} is not a path; it must start with '/' (or be `*` for OPTIONS, or an absolute http:// URL)",
        truncate(target)
    ))
}

fn truncate(text: &str) -> &str {
    match text.char_indices().nth(64) {
        Some((end, _)) => &text[..end],
        None => text,
    }
}

/// One `Content-Length` value: ASCII digits only (at most 18, so it fits a u64),
/// surrounding whitespace allowed.
pub(crate) fn parse_length(value: &[u8]) -> Option<u64> {
    let value = value.trim_ascii();
    if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
        return None;
    }
    value.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: HeadLimits = HeadLimits {
        max_header_bytes: 1024,
        max_headers: 8,
        max_target_bytes: 100,
    };

    fn status(raw: &[u8]) -> u16 {
        match parse(raw, &LIMITS) {
            Parsed::Refused(refusal) => refusal.status,
            Parsed::Complete(_) => 200,
            Parsed::Partial => 0,
        }
    }

    #[test]
    fn a_plain_request_passes_with_its_length() {
        let raw = b"POST /a?b=c HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello";
        assert_eq!(
            parse(raw, &LIMITS),
            Parsed::Complete(Head {
                len: raw.len() - 5,
                body: BodyFraming::Length(5),
                accepts_json: false
            })
        );
        let raw = b"GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n";
        assert!(matches!(
            parse(raw, &LIMITS),
            Parsed::Complete(Head {
                body: BodyFraming::Chunked,
                ..
            })
        ));
        assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\n"), 0);
        assert_eq!(status(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(status(b"GET http://X/x HTTP/1.1\r\nHost: x\r\n\r\n"), 200);
        assert_eq!(
            status(b"GET http://other/x HTTP/1.1\r\nHost: x\r\n\r\n"),
            400,
            "an absolute-form target naming another host"
        );
        assert_eq!(status(b"GET / HTTP/1.0\r\n\r\n"), 200);
        assert_eq!(
            status(b"GET / HTTP/1.1\r\nHost: x\r\nX_Custom: 1\r\n\r\n"),
            200
        );
    }

    #[test]
    fn ambiguous_framing_is_refused() {
        for (raw, expected) in [
            (&b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n"[..], 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 501),
            (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nA: b\r\n c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nX_Forwarded_For: 1.2.3.4\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost: x\r\nContent_Length: 5\r\n\r\n", 400),
        ] {
            assert_eq!(status(raw), expected, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn bad_targets_and_methods_are_refused() {
        for (raw, expected) in [
            (&b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n"[..], 400),
            (b"GET /a\0b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET /a\x01b HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET a HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"G3T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
            (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            (b"CONNECT x:443 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
            (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        ] {
            assert_eq!(status(raw), expected, "{}", String::from_utf8_lossy(raw));
        }
    }

    #[test]
    fn limits_give_431_and_414() {
        let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        for i in 0..9 {
            many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
        }
        many.extend_from_slice(b"\r\n");
        assert_eq!(status(&many), 431);

        let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nCookie: ".to_vec();
        big.resize(1100, b'a');
        assert_eq!(status(&big), 431, "a partial head over the limit");
        big.extend_from_slice(b"\r\n\r\n");
        assert_eq!(status(&big), 431, "a complete head over the limit");

        let mut long = b"GET /".to_vec();
        long.resize(200, b'a');
        assert_eq!(status(&long), 414, "a partial request line");
        long.extend_from_slice(b" HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(status(&long), 414);
    }

    #[test]
    fn refusals_remember_a_json_accept() {
        let raw = b"GET / HTTP/1.1\r\nAccept: application/json\r\nHost: x\r\nHost: y\r\n\r\n";
        let Parsed::Refused(refusal) = parse(raw, &LIMITS) else {
            panic!("expected a refusal");
        };
        assert!(refusal.accepts_json);
    }
}

//! The fast path's view of an upstream response: its head, parsed and rewritten
//! for the client, how its body is framed, and a validating pass-through parser
//! for chunked bodies.

use std::time::Duration;

use crate::http1::head::parse_length;

/// Header fields an upstream response may carry, at most (more is a 502).
const MAX_RESPONSE_HEADERS: usize = 100;
/// Fields an upstream response may name in `Connection`, at most.
const MAX_NOMINATED: usize = 8;

/// How the response body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked, passed through as it is (validated on the way).
    Chunked,
    /// Until the upstream closes; sent to the client as chunked.
    UntilClose,
}

/// A parsed upstream response head.
#[derive(Debug)]
pub struct ResponseHead {
    /// Bytes of the head in the read buffer.
    pub len: usize,
    pub status: u16,
    pub framing: Framing,
    /// The upstream keeps the connection open for another request.
    pub keep_alive: bool,
    /// The upstream's `Keep-Alive: timeout=N`, when it gave one.
    pub idle_hint: Option<Duration>,
}

/// Why a response head cannot be used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadResponse {
    /// Not HTTP, or malformed.
    Invalid,
    /// A 101 to a request that asked for no upgrade.
    UnexpectedUpgrade,
    /// A framing we do not pass on (two lengths, a coding other than chunked).
    AmbiguousFraming,
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum ParsedResponse {
    Partial,
    /// An informational (1xx) head of this many bytes, to skip.
    Informational(usize),
    Complete(ResponseHead),
    Bad(BadResponse),
}

/// Parses the response head at the start of `buf` to a request with method
/// HEAD when `head_request`, and appends the head to send to the client to
/// `out`: the status line and the upstream's fields without hop-by-hop ones and
/// framing, then `Date`, the framing, `Connection`, `x-ingress-version`,
/// `x-request-id` (the upstream's own is replaced) and the `extra` lines (each
/// ending in CRLF; `Strict-Transport-Security` on TLS).
#[allow(clippy::too_many_arguments)]
pub fn parse(
    buf: &[u8],
    head_request: bool,
    client_keep_alive: bool,
    version_header: &[u8],
    request_id: &[u8],
    extra: &[u8],
    out: &mut Vec<u8>,
) -> ParsedResponse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return ParsedResponse::Partial,
        Err(_) => return ParsedResponse::Bad(BadResponse::Invalid),
    };
    let (Some(status), Some(version)) = (response.code, response.version) else {
        return ParsedResponse::Bad(BadResponse::Invalid);
    };
    if status == 101 {
        return ParsedResponse::Bad(BadResponse::UnexpectedUpgrade);
    }
    if (100..200).contains(&status) {
        return ParsedResponse::Informational(len);
    }
    let mut keep_alive = version == 1;
    let mut idle_hint = None;
    let mut content_length: Option<u64> = None;
    let mut lengths = 0;
    let mut chunked = false;
    let mut codings = 0;
    // Fields the upstream names in `Connection` are hop-by-hop too (RFC 9110
    // §7.6.1); kept as slices of the head.
    let mut nominated: [&[u8]; MAX_NOMINATED] = [b""; MAX_NOMINATED];
    let mut nominations = 0;
    for header in response.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            content_length = parse_length(header.value);
            if content_length.is_none() {
                return ParsedResponse::Bad(BadResponse::AmbiguousFraming);
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            codings += 1;
            chunked = header.value.trim_ascii().eq_ignore_ascii_case(b"chunked");
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case(b"keep-alive") {
                    // An HTTP/1.0 keep-alive is not worth the ambiguity.
                    keep_alive &= version == 1;
                } else if !token.is_empty() {
                    if nominations == MAX_NOMINATED {
                        return ParsedResponse::Bad(BadResponse::Invalid);
                    }
                    nominated[nominations] = token;
                    nominations += 1;
                }
            }
        } else if name.eq_ignore_ascii_case(b"keep-alive") {
            idle_hint = keep_alive_timeout(header.value);
        }
    }
    let bodyless = head_request || status == 204 || status == 304;
    let framing = if bodyless {
        Framing::None
    } else if codings > 0 {
        if codings > 1 || !chunked {
            return ParsedResponse::Bad(BadResponse::AmbiguousFraming);
        }
        // RFC 9112 §6.3: chunked wins over a length, but such a connection is
        // not trusted for another request.
        if lengths > 0 {
            keep_alive = false;
        }
        Framing::Chunked
    } else if lengths > 1 {
        return ParsedResponse::Bad(BadResponse::AmbiguousFraming);
    } else if let Some(length) = content_length {
        Framing::Length(length)
    } else {
        keep_alive = false;
        Framing::UntilClose
    };

    let reason = response
        .reason
        .filter(|r| !r.is_empty())
        .or_else(|| {
            http::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
        })
        .unwrap_or("");
    out.extend_from_slice(b"HTTP/1.1 ");
    push_status(out, status);
    out.push(b' ');
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    for header in response.headers.iter() {
        let name = header.name.as_bytes();
        let dropped = is_hop_by_hop(name)
            || nominated[..nominations]
                .iter()
                .any(|n| n.eq_ignore_ascii_case(name))
            || name.eq_ignore_ascii_case(b"date")
            // A bodyless answer keeps its length (HEAD and 304 describe the
            // resource); otherwise the framing is written below.
            || (name.eq_ignore_ascii_case(b"content-length") && framing != Framing::None)
            || name.eq_ignore_ascii_case(b"x-ingress-version")
            || name.eq_ignore_ascii_case(crate::request_id::HEADER.as_bytes())
            || (!extra.is_empty() && name.eq_ignore_ascii_case(b"strict-transport-security"));
        if !dropped {
            out.extend_from_slice(name);
            out.extend_from_slice(b": ");
            out.extend_from_slice(header.value);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"Date: ");
    out.extend_from_slice(pingora_core::protocols::http::date::get_cached_date().as_bytes());
    out.extend_from_slice(b"\r\n");
    match framing {
        Framing::Length(length) => {
            out.extend_from_slice(b"Content-Length: ");
            push_number(out, length);
            out.extend_from_slice(b"\r\n");
        }
        Framing::Chunked | Framing::UntilClose => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n")
        }
        Framing::None => {}
    }
    out.extend_from_slice(if client_keep_alive {
        b"Connection: keep-alive\r\n"
    } else {
        b"Connection: close\r\n"
    });
    out.extend_from_slice(b"x-ingress-version: ");
    out.extend_from_slice(version_header);
    out.extend_from_slice(b"\r\nx-request-id: ");
    out.extend_from_slice(request_id);
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(extra);
    out.extend_from_slice(b"\r\n");
    ParsedResponse::Complete(ResponseHead {
        len,
        status,
        framing,
        keep_alive,
        idle_hint,
    })
}

/// The fields a proxy never forwards (RFC 9110 §7.6.1, and what Pingora strips).
pub fn is_hop_by_hop(name: &[u8]) -> bool {
    const HOP_BY_HOP: [&[u8]; 9] = [
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"transfer-encoding",
        b"upgrade",
        b"http2-settings",
    ];
    HOP_BY_HOP.iter().any(|h| name.eq_ignore_ascii_case(h))
}

/// `timeout=N` of a `Keep-Alive` value.
fn keep_alive_timeout(value: &[u8]) -> Option<Duration> {
    value.split(|b| *b == b',').find_map(|part| {
        let part = part.trim_ascii();
        let (key, seconds) = part.split_at(part.iter().position(|b| *b == b'=')?);
        key.trim_ascii()
            .eq_ignore_ascii_case(b"timeout")
            .then(|| parse_length(&seconds[1..]))
            .flatten()
            .map(Duration::from_secs)
    })
}

fn push_status(out: &mut Vec<u8>, status: u16) {
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ]);
}

/// Appends `n` in decimal.
pub fn push_number(out: &mut Vec<u8>, n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// A chunked body that breaks the framing rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedChunk;

/// Where a chunked body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading a chunk-size line.
    Size,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// After chunk data: the CRLF.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailer,
    Done,
}

/// A validating pass-through parser of a chunked body: it is fed what the
/// upstream sends, says how much of it belongs to the body, and knows where the
/// body ends, so the bytes are forwarded as they are and a connection is pooled
/// only after a complete, well-formed body with nothing after it.
#[derive(Debug)]
pub struct Chunked {
    state: ChunkState,
    /// The current size, CRLF or trailer line, while it is incomplete.
    line: Vec<u8>,
    trailer_bytes: usize,
}

/// Longest chunk-size or trailer line, and most trailer bytes, accepted.
const MAX_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

impl Default for Chunked {
    fn default() -> Self {
        Chunked {
            state: ChunkState::Size,
            line: Vec::new(),
            trailer_bytes: 0,
        }
    }
}

impl Chunked {
    /// True once the last chunk and the trailers ended.
    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Takes `input`; returns how many of its bytes belong to the body (all of
    /// them unless the body ended inside it), or `Err` on malformed framing.
    pub fn feed(&mut self, input: &[u8]) -> Result<usize, MalformedChunk> {
        let mut at = 0;
        while at < input.len() {
            match self.state {
                ChunkState::Done => break,
                ChunkState::Data(left) => {
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - at);
                    at += take;
                    let left = left - take as u64;
                    self.state = if left == 0 {
                        ChunkState::DataEnd
                    } else {
                        ChunkState::Data(left)
                    };
                }
                ChunkState::Size | ChunkState::DataEnd | ChunkState::Trailer => {
                    let rest = &input[at..];
                    let (line_end, complete) = match memchr::memchr(b'\n', rest) {
                        Some(i) => (i + 1, true),
                        None => (rest.len(), false),
                    };
                    if self.line.len() + line_end > MAX_LINE {
                        return Err(MalformedChunk);
                    }
                    self.line.extend_from_slice(&rest[..line_end]);
                    at += line_end;
                    if complete {
                        self.end_line()?;
                    }
                }
            }
        }
        Ok(at)
    }

    fn end_line(&mut self) -> Result<(), MalformedChunk> {
        let line = std::mem::take(&mut self.line);
        self.state = match self.state {
            // At least one hex digit (httparse takes an empty line as 0), and
            // no control bytes in an extension.
            ChunkState::Size
                if !line.first().is_some_and(u8::is_ascii_hexdigit)
                    || line[..line.len() - 2]
                        .iter()
                        .any(|b| b.is_ascii_control() && *b != b'\t') =>
            {
                return Err(MalformedChunk)
            }
            ChunkState::Size => match httparse::parse_chunk_size(&line) {
                Ok(httparse::Status::Complete((_, 0))) => ChunkState::Trailer,
                Ok(httparse::Status::Complete((_, size))) => ChunkState::Data(size),
                _ => return Err(MalformedChunk),
            },
            ChunkState::DataEnd if line == b"\r\n" => ChunkState::Size,
            ChunkState::DataEnd => return Err(MalformedChunk),
            ChunkState::Trailer if line == b"\r\n" => ChunkState::Done,
            ChunkState::Trailer => {
                self.trailer_bytes += line.len();
                if self.trailer_bytes > MAX_TRAILERS || !is_field_line(&line) {
                    return Err(MalformedChunk);
                }
                ChunkState::Trailer
            }
            ChunkState::Data(_) | ChunkState::Done => return Err(MalformedChunk),
        };
        self.line = line;
        self.line.clear();
        Ok(())
    }
}

/// `name: value\r\n` with a token name and no control bytes but HTAB in the
/// value: a trailer that no reader can mistake for anything else.
fn is_field_line(line: &[u8]) -> bool {
    let Some(body) = line.strip_suffix(b"\r\n") else {
        return false;
    };
    let Some(colon) = memchr::memchr(b':', body) else {
        return false;
    };
    let (name, value) = (&body[..colon], &body[colon + 1..]);
    !name.is_empty()
        && name
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b))
        && value.iter().all(|b| !b.is_ascii_control() || *b == b'\t')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(raw: &[u8], head_request: bool) -> (ParsedResponse, String) {
        let mut out = Vec::new();
        let parsed = parse(raw, head_request, true, b"v1", b"rid", b"", &mut out);
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn a_length_response_is_rewritten_for_the_client() {
        let raw = b"HTTP/1.1 200 OK\r\nServer: up\r\nDate: old\r\nKeep-Alive: timeout=5\r\nConnection: keep-alive\r\nContent-Length: 5\r\n\r\nhello";
        let (parsed, out) = head(raw, false);
        let ParsedResponse::Complete(parsed) = parsed else {
            panic!("{parsed:?}");
        };
        assert_eq!(parsed.len, raw.len() - 5);
        assert_eq!(parsed.framing, Framing::Length(5));
        assert!(parsed.keep_alive);
        assert_eq!(parsed.idle_hint, Some(Duration::from_secs(5)));
        assert!(out.starts_with("HTTP/1.1 200 OK\r\nServer: up\r\nDate: "));
        assert!(out.ends_with(
            "\r\nContent-Length: 5\r\nConnection: keep-alive\r\nx-ingress-version: v1\r\nx-request-id: rid\r\n\r\n"
        ));
        assert!(!out.contains("old") && !out.contains("timeout=5"));

        let raw = b"HTTP/1.1 200 OK\r\nConnection: x-up, keep-alive\r\nX-Up: secret\r\nX-Kept: 1\r\nX-Request-Id: upstream-own\r\nContent-Length: 0\r\n\r\n";
        let (parsed, out) = head(raw, false);
        assert!(matches!(parsed, ParsedResponse::Complete(_)));
        assert!(!out.to_ascii_lowercase().contains("x-up"), "{out}");
        assert!(out.contains("X-Kept: 1"));
        assert!(!out.contains("upstream-own") && out.contains("x-request-id: rid\r\n"));
    }

    #[test]
    fn framing_by_method_status_and_fields() {
        let framing = |raw: &[u8], head_request| match head(raw, head_request).0 {
            ParsedResponse::Complete(head) => Ok((head.framing, head.keep_alive)),
            ParsedResponse::Bad(bad) => Err(bad),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true),
            Ok((Framing::None, true))
        );
        assert_eq!(
            framing(b"HTTP/1.1 304 Not Modified\r\n\r\n", false),
            Ok((Framing::None, true))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok((Framing::Chunked, true))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                false
            ),
            Ok((Framing::Chunked, false))
        );
        assert_eq!(
            framing(b"HTTP/1.1 200 OK\r\n\r\n", false),
            Ok((Framing::UntilClose, false))
        );
        assert_eq!(
            framing(b"HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", false),
            Ok((Framing::Length(1), false))
        );
        assert_eq!(
            framing(
                b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\n",
                false
            ),
            Ok((Framing::Length(1), false))
        );
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        ] {
            assert_eq!(framing(bad, false), Err(BadResponse::AmbiguousFraming));
        }
        assert_eq!(
            framing(b"HTTP/1.1 101 Switching Protocols\r\n\r\n", false),
            Err(BadResponse::UnexpectedUpgrade)
        );
        assert!(matches!(
            head(b"HTTP/1.1 100 Continue\r\n\r\n", false).0,
            ParsedResponse::Informational(25)
        ));
        assert!(matches!(
            head(b"HTTP/1.1 200 OK\r\n", false).0,
            ParsedResponse::Partial
        ));
        assert_eq!(
            framing(b"garbage\r\n\r\n", false),
            Err(BadResponse::Invalid)
        );
    }

    #[test]
    fn chunked_bodies_end_where_they_end_fed_in_any_pieces() {
        let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\n";
        for split in 1..body.len() {
            let mut chunked = Chunked::default();
            let mut taken = chunked.feed(&body[..split]).unwrap();
            taken += chunked.feed(&body[split..]).unwrap();
            assert_eq!(taken, body.len());
            assert!(chunked.is_done(), "split at {split}");
        }
        let mut chunked = Chunked::default();
        let mut after = body.to_vec();
        after.extend_from_slice(b"EXTRA");
        assert_eq!(chunked.feed(&after).unwrap(), body.len());
        assert!(chunked.is_done());
    }

    #[test]
    fn malformed_chunks_are_errors() {
        for bad in [
            &b"zz\r\nhello\r\n"[..],
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\r\n0\r\nno-crlf\n",
            b"5\r\nhello\r\n\r\n",
            b";ext\r\n",
            b"5;a\x01b\r\nhello\r\n",
            b"0\r\nX: a\r\r\n\r\n",
            b"0\r\nHTTP/1.1 200 OK\r\n\r\n",
        ] {
            assert!(Chunked::default().feed(bad).is_err(), "{bad:?}");
        }
    }
}

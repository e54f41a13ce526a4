//! Which requests the fast path serves, and the request it sends upstream.
//!
//! The subset is deliberately narrow; everything else goes to `pingora-proxy`:
//! exactly `HTTP/1.1`, a known method, an origin-form target, no
//! `Transfer-Encoding`, a `Content-Length` body of at most [`MAX_BODY`] bytes,
//! no `Upgrade`, `Expect` or `HTTP2-Settings`, a `Connection` field naming only
//! `keep-alive` or `close`, and at most [`MAX_HEADERS`] fields. The head has
//! already passed the connection loop's strictness checks.

use std::net::IpAddr;

use crate::fast_path::response::{is_hop_by_hop, push_number};
use crate::http1::head::BodyFraming;
use crate::request_id::RequestId;

/// Fields of a request the fast path serves, at most.
pub const MAX_HEADERS: usize = 64;
/// The largest request body the fast path reads whole before forwarding.
pub const MAX_BODY: u64 = 64 * 1024;

/// What the fast path needs of a request beyond the bytes it forwards.
#[derive(Debug)]
pub struct FastRequest<'a> {
    pub method: &'a str,
    /// The request target as sent (path and query).
    pub target: &'a str,
    /// The raw Host value.
    pub host: &'a [u8],
    /// The target's path, without the query (for `wake.ignore_paths`).
    pub path: &'a str,
    pub user_agent: Option<&'a [u8]>,
    /// The `Referer` value (for the access log's combined format).
    pub referer: Option<&'a [u8]>,
    /// The client's `X-Request-Id` when it was one valid field, else a new id;
    /// the upstream request carries it either way.
    pub request_id: RequestId,
    /// A request that may be sent twice (RFC 9110 §9.2.2).
    pub idempotent: bool,
    pub head_method: bool,
    /// The client asked to close after this request.
    pub close: bool,
    pub accepts_json: bool,
    /// Bytes of body that follow the head.
    pub body: u64,
}

/// Parses `head` (a whole request head that passed the loop's checks) and, when
/// the fast path may serve it, appends the request to send upstream to `out`:
/// the request line, the client's fields in their order and case without
/// hop-by-hop ones and without `X-Forwarded-*`, then `X-Forwarded-For` (the
/// client's first value with `client_ip` appended), `X-Forwarded-Proto` (`https`
/// when `https`, else `http`) and
/// `X-Forwarded-Host`, exactly as the Pingora path's `upstream_request_filter`
/// does, and `x-request-id` when the client's was missing or not valid (a
/// valid one passes in its place; see [`crate::request_id`]). `None` (and
/// `out` untouched) when the request is outside the subset.
pub fn parse<'a>(
    head: &'a [u8],
    framing: BodyFraming,
    client_ip: Option<IpAddr>,
    https: bool,
    out: &mut Vec<u8>,
) -> Option<FastRequest<'a>> {
    let body = match framing {
        BodyFraming::None => 0,
        BodyFraming::Length(length) if length <= MAX_BODY => length,
        _ => return None,
    };
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let Ok(httparse::Status::Complete(_)) = request.parse(head) else {
        return None;
    };
    let (method, target) = (request.method?, request.path?);
    if request.version != Some(1) || !target.starts_with('/') {
        return None;
    }
    let idempotent = match method {
        "GET" | "HEAD" | "PUT" | "DELETE" | "OPTIONS" => true,
        "POST" | "PATCH" => false,
        _ => return None,
    };
    let mut host = None;
    let mut user_agent = None;
    let mut referer = None;
    let mut incoming_id = None;
    let mut ids = 0;
    let mut forwarded_for = None;
    let mut close = false;
    let mut accepts_json = false;
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        if name.eq_ignore_ascii_case(b"host") {
            host = Some(header.value);
        } else if name.eq_ignore_ascii_case(b"user-agent") {
            user_agent = Some(header.value);
        } else if name.eq_ignore_ascii_case(b"referer") {
            referer = Some(header.value);
        } else if name.eq_ignore_ascii_case(crate::request_id::HEADER.as_bytes()) {
            incoming_id = Some(header.value);
            ids += 1;
        } else if name.eq_ignore_ascii_case(b"accept") {
            accepts_json |= crate::error_response::accepts_json(Some(header.value));
        } else if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for.get_or_insert(header.value);
        } else if name.eq_ignore_ascii_case(b"connection") {
            for token in header.value.split(|b| *b == b',') {
                let token = token.trim_ascii();
                if token.eq_ignore_ascii_case(b"close") {
                    close = true;
                } else if !token.eq_ignore_ascii_case(b"keep-alive") && !token.is_empty() {
                    // A nominated field would have to be removed too: Pingora's.
                    return None;
                }
            }
        } else if name.eq_ignore_ascii_case(b"upgrade")
            || name.eq_ignore_ascii_case(b"expect")
            || name.eq_ignore_ascii_case(b"http2-settings")
            || name.eq_ignore_ascii_case(b"transfer-encoding")
        {
            return None;
        }
    }
    let host = host?;
    let path = target.split('?').next().unwrap_or(target);
    // Two ids would leave the upstream to pick one: replace both.
    let (request_id, kept_id) = RequestId::accept_or_generate(incoming_id.filter(|_| ids == 1));

    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for header in request.headers.iter() {
        let name = header.name.as_bytes();
        let forwarded = name.len() > 12 && name[..12].eq_ignore_ascii_case(b"x-forwarded-");
        let replaced = forwarded
            && [&b"for"[..], b"proto", b"host"]
                .iter()
                .any(|suffix| name[12..].eq_ignore_ascii_case(suffix));
        let replaced_id =
            !kept_id && name.eq_ignore_ascii_case(crate::request_id::HEADER.as_bytes());
        if replaced || replaced_id || is_hop_by_hop(name) || name.eq_ignore_ascii_case(b"trailer") {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(header.value);
        out.extend_from_slice(b"\r\n");
    }
    if let Some(ip) = client_ip {
        out.extend_from_slice(b"x-forwarded-for: ");
        if let Some(earlier) = forwarded_for {
            out.extend_from_slice(earlier);
            out.extend_from_slice(b", ");
        }
        push_ip(out, ip);
        out.extend_from_slice(b"\r\n");
    } else if let Some(earlier) = forwarded_for {
        out.extend_from_slice(b"x-forwarded-for: ");
        out.extend_from_slice(earlier);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if https {
        b"x-forwarded-proto: https\r\nx-forwarded-host: "
    } else {
        b"x-forwarded-proto: http\r\nx-forwarded-host: "
    });
    out.extend_from_slice(host);
    if !kept_id {
        out.extend_from_slice(b"\r\nx-request-id: ");
        out.extend_from_slice(request_id.as_bytes());
    }
    out.extend_from_slice(b"\r\n\r\n");
    Some(FastRequest {
        method,
        target,
        host,
        path,
        user_agent,
        referer,
        request_id,
        idempotent,
        head_method: method == "HEAD",
        close,
        accepts_json,
        body,
    })
}

fn push_ip(out: &mut Vec<u8>, ip: IpAddr) {
    match ip {
        IpAddr::V4(v4) => {
            for (i, octet) in v4.octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                push_number(out, u64::from(*octet));
            }
        }
        IpAddr::V6(v6) => out.extend_from_slice(v6.to_string().as_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwarded(raw: &[u8], framing: BodyFraming) -> Option<String> {
        let mut out = Vec::new();
        let ip = Some(IpAddr::from([10, 0, 0, 7]));
        let request = parse(raw, framing, ip, false, &mut out)?;
        let text = String::from_utf8(out).unwrap();
        Some(text.replace(request.request_id.as_str(), "ID"))
    }

    #[test]
    fn the_upstream_request_keeps_order_and_case_and_sets_forwarding() {
        let raw = b"GET /p?q=1 HTTP/1.1\r\nHost: shop.example.com\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nx-forwarded-proto: https\r\nX-Forwarded-Host: evil\r\nConnection: keep-alive\r\nKeep-Alive: 300\r\nTE: trailers\r\nUser-Agent: t\r\nAccept: */*\r\n\r\n";
        assert_eq!(
            forwarded(raw, BodyFraming::None).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nHost: shop.example.com\r\nUser-Agent: t\r\nAccept: */*\r\nx-forwarded-for: 1.2.3.4, 10.0.0.7\r\nx-forwarded-proto: http\r\nx-forwarded-host: shop.example.com\r\nx-request-id: ID\r\n\r\n"
        );
    }

    #[test]
    fn a_valid_request_id_and_traceparent_pass_as_they_are() {
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: abc-1\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntracestate: a=b\r\n\r\n";
        let mut out = Vec::new();
        let request = parse(raw, BodyFraming::None, None, false, &mut out).unwrap();
        assert_eq!(request.request_id.as_str(), "abc-1");
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\r\nX-Request-Id: abc-1\r\n"), "{text}");
        assert_eq!(text.to_ascii_lowercase().matches("x-request-id").count(), 1);
        assert!(text.contains(
            "\r\ntraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\ntracestate: a=b\r\n"
        ));
    }

    #[test]
    fn an_invalid_or_doubled_request_id_is_replaced() {
        for raw in [
            &b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: bad id!\r\n\r\n"[..],
            b"GET / HTTP/1.1\r\nHost: h\r\nX-Request-Id: a\r\nx-request-id: b\r\n\r\n",
        ] {
            let mut out = Vec::new();
            let request = parse(raw, BodyFraming::None, None, false, &mut out).unwrap();
            let id = request.request_id.to_string();
            assert_eq!(id.len(), 32);
            let text = String::from_utf8(out).unwrap();
            assert_eq!(
                text.to_ascii_lowercase().matches("x-request-id").count(),
                1,
                "{text}"
            );
            assert!(
                text.ends_with(&format!("x-request-id: {id}\r\n\r\n")),
                "{text}"
            );
        }
    }

    #[test]
    fn over_tls_the_forwarded_proto_is_https() {
        let mut out = Vec::new();
        let raw = b"GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: http\r\n\r\n";
        parse(raw, BodyFraming::None, None, true, &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("x-forwarded-proto: https\r\nx-forwarded-host: h\r\n"),
            "{text}"
        );
        assert_eq!(text.matches("x-forwarded-proto").count(), 1, "{text}");
    }

    #[test]
    fn outside_the_subset_nothing_is_written() {
        for (raw, framing) in [
            (&b"GET / HTTP/1.0\r\nHost: x\r\n\r\n"[..], BodyFraming::None),
            (
                b"GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n",
                BodyFraming::None,
            ),
            (b"PROPFIND / HTTP/1.1\r\nHost: x\r\n\r\n", BodyFraming::None),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
                BodyFraming::None,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
                BodyFraming::Length(1),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nConnection: x-drop\r\n\r\n",
                BodyFraming::None,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                BodyFraming::Chunked,
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n",
                BodyFraming::Length(99_999_999),
            ),
        ] {
            let mut out = Vec::new();
            assert!(
                parse(raw, framing, None, false, &mut out).is_none(),
                "{}",
                String::from_utf8_lossy(raw)
            );
            assert!(out.is_empty());
        }
    }

    #[test]
    fn what_the_fast_path_reads_of_a_request() {
        let mut out = Vec::new();
        let raw = b"POST /a/b?c HTTP/1.1\r\nHost: h\r\nUser-Agent: kube-probe\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: 3\r\n\r\n";
        let request = parse(raw, BodyFraming::Length(3), None, false, &mut out).unwrap();
        assert_eq!(request.host, b"h");
        assert_eq!(request.path, "/a/b");
        assert_eq!(request.user_agent, Some(&b"kube-probe"[..]));
        assert!(!request.idempotent && request.close && request.accepts_json);
        assert_eq!(request.body, 3);
        assert!(String::from_utf8(out)
            .unwrap()
            .contains("Content-Length: 3\r\n"));
    }
}

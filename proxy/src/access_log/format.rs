//! Access-log lines: JSON (one object a line) or the Apache/nginx combined
//! format. Runs on the writer thread, appending to a buffer it reuses.

use std::io::Write;

use super::record::AccessRecord;
use crate::time::Civil;

/// Appends `record` as one JSON object and a newline. Every field is always
/// present (`null` when it does not apply), so a reader never guesses:
/// `time` (RFC 3339, UTC, milliseconds), `request_id`, `client_ip`, `method`,
/// `host`, `path` (path and query), `protocol`, `status` (0: nothing was sent),
/// `bytes_in`, `bytes_out` (body bytes), `duration_ms`, `upstream_addr`,
/// `upstream_ms`, `app`, `version`, `label`, `kind` (how the host resolved),
/// `cold_start_ms`, `error` (the code of the ingress's own error answer),
/// `user_agent`, `referer`. Text is escaped by `serde_json`; bytes that are
/// not UTF-8 become U+FFFD.
pub fn json(record: &AccessRecord, out: &mut Vec<u8>) {
    let text = &record.text;
    out.extend_from_slice(b"{\"time\":\"");
    Civil::from_unix_millis(record.time_ms).write_rfc3339_millis(out);
    // Request ids hold only `[A-Za-z0-9._:-]`: nothing to escape.
    out.extend_from_slice(b"\",\"request_id\":\"");
    out.extend_from_slice(record.request_id.as_bytes());
    out.extend_from_slice(b"\",\"client_ip\":");
    match record.client_ip {
        Some(ip) => {
            let _ = write!(out, "\"{ip}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"method\":");
    json_bytes(out, text.method());
    out.extend_from_slice(b",\"host\":");
    json_bytes(out, text.host());
    out.extend_from_slice(b",\"path\":");
    json_bytes(out, text.target());
    out.extend_from_slice(b",\"protocol\":\"");
    out.extend_from_slice(protocol(record.http_version).as_bytes());
    let _ = write!(
        out,
        "\",\"status\":{},\"bytes_in\":{},\"bytes_out\":{},\"duration_ms\":",
        record.status, record.bytes_in, record.bytes_out
    );
    millis(out, record.duration_us);
    out.extend_from_slice(b",\"upstream_addr\":");
    match record.upstream_addr {
        Some(addr) => {
            let _ = write!(out, "\"{addr}\"");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"upstream_ms\":");
    match record.upstream_us {
        Some(us) => millis(out, us),
        None => out.extend_from_slice(b"null"),
    }
    let target = record.target.as_deref();
    out.extend_from_slice(b",\"app\":");
    json_opt(out, target.map(|t| &*t.app));
    out.extend_from_slice(b",\"version\":");
    json_opt(out, target.map(|t| &*t.version_id));
    out.extend_from_slice(b",\"label\":");
    json_opt(out, target.and_then(|t| t.label.as_deref()));
    out.extend_from_slice(b",\"kind\":");
    json_opt(out, record.kind.map(|kind| kind.as_str()));
    out.extend_from_slice(b",\"cold_start_ms\":");
    match record.cold_start_ms {
        Some(ms) => {
            let _ = write!(out, "{ms}");
        }
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"error\":");
    json_opt(out, record.error);
    out.extend_from_slice(b",\"user_agent\":");
    json_opt_bytes(out, text.user_agent());
    out.extend_from_slice(b",\"referer\":");
    json_opt_bytes(out, text.referer());
    out.extend_from_slice(b"}\n");
}

/// Appends `record` in the combined log format and a newline:
/// `IP - - [14/Nov/2023:22:13:20 +0000] "GET /path HTTP/1.1" 200 512 "referer" "agent"`.
/// The time is UTC; the byte count is the response body (0 when none); a
/// missing IP, referer or agent is `-`. Quotes, backslashes, control bytes and
/// bytes past ASCII are written `\xHH`, as nginx does, so a field cannot
/// break the line apart.
pub fn combined(record: &AccessRecord, out: &mut Vec<u8>) {
    let text = &record.text;
    match record.client_ip {
        Some(ip) => {
            let _ = write!(out, "{ip}");
        }
        None => out.push(b'-'),
    }
    out.extend_from_slice(b" - - [");
    Civil::from_unix_millis(record.time_ms).write_clf(out);
    out.extend_from_slice(b"] \"");
    if text.method().is_empty() {
        // A head refused before it could be read: no request line to show.
        out.push(b'-');
    } else {
        escaped(out, text.method());
        out.push(b' ');
        escaped(out, text.target());
        out.push(b' ');
        out.extend_from_slice(protocol(record.http_version).as_bytes());
    }
    let _ = write!(out, "\" {} {} \"", record.status, record.bytes_out);
    dash_or_escaped(out, text.referer());
    out.extend_from_slice(b"\" \"");
    dash_or_escaped(out, text.user_agent());
    out.extend_from_slice(b"\"\n");
}

fn protocol(version: u8) -> &'static str {
    match version {
        10 => "HTTP/1.0",
        20 => "HTTP/2.0",
        _ => "HTTP/1.1",
    }
}

/// Microseconds as milliseconds with three decimals (`0.412`).
fn millis(out: &mut Vec<u8>, micros: u64) {
    let _ = write!(out, "{}.{:03}", micros / 1000, micros % 1000);
}

fn json_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    let start = out.len();
    let _ = serde_json::to_writer(&mut *out, &*String::from_utf8_lossy(bytes));
    escape_line_separators(out, start);
}

fn json_opt(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        Some(text) => {
            let start = out.len();
            let _ = serde_json::to_writer(&mut *out, text);
            escape_line_separators(out, start);
        }
        None => out.extend_from_slice(b"null"),
    }
}

/// Escapes U+0085, U+2028 and U+2029 in the JSON string written from `from`
/// on: JSON allows them raw, but readers that split on Unicode line breaks
/// (Python's `splitlines`, some log shippers) would cut the line there, so a
/// client could split its own log line with a crafted User-Agent. In UTF-8
/// their lead bytes 0xC2 and 0xE2 start a character, never continue one.
fn escape_line_separators(out: &mut Vec<u8>, from: usize) {
    if !out[from..].iter().any(|&b| b == 0xC2 || b == 0xE2) {
        return;
    }
    let written = out.split_off(from);
    let mut rest = &written[..];
    while let Some((&first, tail)) = rest.split_first() {
        let (escape, len): (&[u8], usize) = match rest {
            [0xC2, 0x85, ..] => (b"\\u0085", 2),
            [0xE2, 0x80, 0xA8, ..] => (b"\\u2028", 3),
            [0xE2, 0x80, 0xA9, ..] => (b"\\u2029", 3),
            _ => {
                out.push(first);
                rest = tail;
                continue;
            }
        };
        out.extend_from_slice(escape);
        rest = &rest[len..];
    }
}

fn json_opt_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        json_bytes(out, bytes);
    }
}

fn dash_or_escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    if bytes.is_empty() {
        out.push(b'-');
    } else {
        escaped(out, bytes);
    }
}

/// nginx's access-log escaping: `"`, `\`, control bytes and bytes past ASCII
/// as `\xHH`.
fn escaped(out: &mut Vec<u8>, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &byte in bytes {
        if byte == b'"' || byte == b'\\' || !(0x20..0x7f).contains(&byte) {
            out.extend_from_slice(&[
                b'\\',
                b'x',
                HEX[usize::from(byte >> 4)],
                HEX[usize::from(byte & 0xf)],
            ]);
        } else {
            out.push(byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::record::RequestText;
    use crate::request_id::RequestId;
    use crate::resolve::ResolutionKind;

    #[test]
    fn unicode_line_breaks_are_escaped_so_a_line_stays_one_line() {
        let mut out = b"x".to_vec();
        json_bytes(&mut out, "a\u{2028}b\u{2029}c\u{85}d\u{e9}\n".as_bytes());
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "x\"a\\u2028b\\u2029c\\u0085d\u{e9}\\n\""
        );
        let value: serde_json::Value = serde_json::from_slice(&out[1..]).unwrap();
        assert_eq!(value, "a\u{2028}b\u{2029}c\u{85}d\u{e9}\n");
    }

    fn record() -> AccessRecord {
        AccessRecord {
            time_ms: 1_700_000_000_123,
            client_ip: Some("10.0.0.7".parse().unwrap()),
            text: RequestText::new(
                b"GET",
                b"shop.example.com",
                b"/a?q=\"x\"",
                Some(b"curl/8 \"quoted\"\n"),
                None,
            ),
            http_version: 11,
            status: 404,
            bytes_in: 3,
            bytes_out: 120,
            duration_us: 1_234,
            upstream_addr: None,
            upstream_us: None,
            target: None,
            kind: Some(ResolutionKind::NotFound),
            cold_start_ms: None,
            error: Some("no_route"),
            request_id: RequestId::parse(b"req-1").unwrap(),
        }
    }

    #[test]
    fn a_json_line_is_one_object_with_every_field() {
        let mut out = Vec::new();
        json(&record(), &mut out);
        assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1);
        assert!(out.ends_with(b"}\n"));
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["request_id"], "req-1");
        assert_eq!(value["client_ip"], "10.0.0.7");
        assert_eq!(value["method"], "GET");
        assert_eq!(value["host"], "shop.example.com");
        assert_eq!(value["path"], "/a?q=\"x\"");
        assert_eq!(value["protocol"], "HTTP/1.1");
        assert_eq!(value["status"], 404);
        assert_eq!(value["bytes_in"], 3);
        assert_eq!(value["bytes_out"], 120);
        assert_eq!(value["duration_ms"], 1.234);
        assert_eq!(value["upstream_addr"], serde_json::Value::Null);
        assert_eq!(value["upstream_ms"], serde_json::Value::Null);
        assert_eq!(value["app"], serde_json::Value::Null);
        assert_eq!(value["kind"], "not_found");
        assert_eq!(value["error"], "no_route");
        assert_eq!(value["user_agent"], "curl/8 \"quoted\"\n");
        assert_eq!(value["referer"], serde_json::Value::Null);
        assert_eq!(value.as_object().unwrap().len(), 21);
    }

    #[test]
    fn upstream_fields_and_odd_bytes_in_json() {
        let mut r = record();
        r.upstream_addr = Some("127.0.0.1:9000".parse().unwrap());
        r.upstream_us = Some(7);
        r.cold_start_ms = Some(850);
        r.client_ip = None;
        r.text = RequestText::new(b"GET", b"h\xff", b"/", None, None);
        let mut out = Vec::new();
        json(&r, &mut out);
        let value: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(value["upstream_addr"], "127.0.0.1:9000");
        assert_eq!(value["upstream_ms"], 0.007);
        assert_eq!(value["cold_start_ms"], 850);
        assert_eq!(value["client_ip"], serde_json::Value::Null);
        assert_eq!(value["host"], "h\u{fffd}");
    }

    #[test]
    fn a_combined_line() {
        let mut out = Vec::new();
        combined(&record(), &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "10.0.0.7 - - [14/Nov/2023:22:13:20 +0000] \"GET /a?q=\\x22x\\x22 HTTP/1.1\" 404 120 \"-\" \"curl/8 \\x22quoted\\x22\\x0A\"\n"
        );
        let mut refused = record();
        refused.text = RequestText::default();
        let mut out = Vec::new();
        combined(&refused, &mut out);
        assert!(String::from_utf8(out)
            .unwrap()
            .ends_with("] \"-\" 404 120 \"-\" \"-\"\n"),);
    }
}

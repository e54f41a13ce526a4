//! Error answers the proxy writes itself: JSON when the client accepts JSON, a short
//! line of text otherwise (SPEC §2). Always `Cache-Control: no-store`.

use bytes::Bytes;

use crate::request_id::RequestId;

/// An error answer: status, a stable code and a human sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrorAnswer {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    /// Seconds for a `Retry-After` header, when the client should try again later.
    pub retry_after_secs: Option<u64>,
}

/// The page a browser gets while its version wakes (`wake.mode = "page"`): it
/// reloads itself every 2 seconds until the version answers.
pub fn starting_page(app: &str, version: &str) -> Bytes {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('"', "&quot;")
    };
    Bytes::from(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">\
<title>Starting {app}</title></head>\n<body style=\"font-family:sans-serif;margin:3em\">\
<h1>Starting {app}</h1><p>Version {version} is waking up. This page reloads by itself.</p></body></html>\n",
        app = escape(app),
        version = escape(version),
    ))
}

/// True when the `Accept` header asks for JSON (`application/json` or any `+json`).
pub fn accepts_json(accept: Option<&[u8]>) -> bool {
    accept.is_some_and(|value| value.windows(4).any(|w| w.eq_ignore_ascii_case(b"json")))
}

/// Headers the proxy sets or must pass on itself, so that a client cannot have
/// them dropped as hop-by-hop by naming them in `Connection`. Pingora refuses
/// such a request when it builds the upstream request (`InvalidHTTPHeader`).
const FORWARDED_HEADERS: [&str; 4] = [
    "host",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-forwarded-proto",
];

/// Most header names a `Connection` header may list before Pingora refuses it.
const MAX_CONNECTION_NAMES: usize = 9;

/// Why the proxy cannot forward a request with these `Connection` header values,
/// as a 400 answer naming the cause; `None` when they are acceptable (the
/// refusal then had another cause). Checks what Pingora refuses: a nominated
/// forwarded header or pseudo-header, more than nine names, and a name that is
/// not an HTTP token.
pub fn connection_header_problem<'a>(
    values: impl IntoIterator<Item = &'a [u8]>,
) -> Option<ErrorAnswer> {
    let answer = |message: String| ErrorAnswer {
        status: 400,
        code: "bad_connection_header",
        message,
        retry_after_secs: None,
    };
    let mut count = 0;
    for token in values
        .into_iter()
        .flat_map(|value| value.split(|&byte| byte == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
    {
        count += 1;
        let text = String::from_utf8_lossy(token);
        let protected = token.starts_with(b":")
            || FORWARDED_HEADERS
                .iter()
                .any(|name| name.as_bytes().eq_ignore_ascii_case(token));
        if protected {
            return Some(answer(format!(
                "the Connection header nominates a header the proxy must forward ({text}); remove it from Connection"
            )));
        }
        if !token.iter().all(|&byte| is_token_byte(byte)) {
            return Some(answer(format!(
                "the Connection header holds {text:?}, which is not a header name; list header names separated by commas"
            )));
        }
    }
    (count > MAX_CONNECTION_NAMES).then(|| {
        answer(format!(
            "the Connection header names {count} headers; at most {MAX_CONNECTION_NAMES} are allowed"
        ))
    })
}

/// A byte of an HTTP token (RFC 9110 §5.6.2).
fn is_token_byte(byte: u8) -> bool {
    byte.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&byte)
}

impl ErrorAnswer {
    /// The body and its content type, in the form the client asked for. Both
    /// carry the request id, so a user's report can be matched to the logs:
    /// JSON in `request_id`, text as a `(request id ...)` suffix on its line.
    pub fn body(&self, json: bool, request_id: &RequestId) -> (&'static str, Bytes) {
        if json {
            let body = serde_json::json!({
                "status": self.status,
                "error": self.code,
                "message": self.message,
                "request_id": request_id.as_str(),
            });
            ("application/json", Bytes::from(body.to_string()))
        } else {
            (
                "text/plain; charset=utf-8",
                Bytes::from(format!("{} (request id {request_id})\n", self.message)),
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_starting_page_refreshes_and_escapes_names() {
        let page = starting_page("shop", "<v1>");
        let text = std::str::from_utf8(&page).unwrap();
        assert!(text.contains("http-equiv=\"refresh\" content=\"2\""));
        assert!(text.contains("&lt;v1&gt;") && !text.contains("<v1>"));
    }

    #[test]
    fn json_only_when_asked_for() {
        assert!(accepts_json(Some(b"application/json")));
        assert!(accepts_json(Some(
            b"text/html, application/problem+JSON;q=0.9"
        )));
        assert!(!accepts_json(Some(b"text/html")));
        assert!(!accepts_json(None));
    }

    #[test]
    fn connection_nominations_of_forwarded_headers_name_the_header() {
        for (value, named) in [
            ("Host", "(Host)"),
            ("close, X-Forwarded-For", "(X-Forwarded-For)"),
            ("x-forwarded-host", "(x-forwarded-host)"),
            ("X-FORWARDED-PROTO", "(X-FORWARDED-PROTO)"),
            (":authority", "(:authority)"),
        ] {
            let answer = connection_header_problem([value.as_bytes()]).unwrap();
            assert_eq!(answer.status, 400);
            assert_eq!(answer.code, "bad_connection_header");
            assert!(
                answer
                    .message
                    .starts_with("the Connection header nominates a header the proxy must forward")
                    && answer.message.contains(named),
                "{value}: {}",
                answer.message
            );
        }
        // Split over two Connection headers.
        let answer = connection_header_problem([&b"keep-alive"[..], b"host"]).unwrap();
        assert!(answer.message.contains("(host)"), "{}", answer.message);
    }

    #[test]
    fn other_connection_problems_and_acceptable_values() {
        let many = "a,b,c,d,e,f,g,h,i,j";
        let answer = connection_header_problem([many.as_bytes()]).unwrap();
        assert_eq!(
            answer.message,
            "the Connection header names 10 headers; at most 9 are allowed"
        );
        let answer = connection_header_problem([&b"\"x-forwarded-for\""[..]]).unwrap();
        assert!(
            answer.message.contains("is not a header name"),
            "{}",
            answer.message
        );
        for fine in [
            "close",
            "keep-alive, upgrade",
            "a,b,c,d,e,f,g,h,i",
            "",
            " , ",
        ] {
            assert_eq!(connection_header_problem([fine.as_bytes()]), None, "{fine}");
        }
        assert_eq!(connection_header_problem(std::iter::empty()), None);
    }

    #[test]
    fn bodies() {
        let answer = ErrorAnswer {
            status: 404,
            code: "no_such_preview",
            message: "no preview named pr-2 for app shop".into(),
            retry_after_secs: None,
        };
        let id = RequestId::parse(b"req-7").unwrap();
        let (kind, body) = answer.body(false, &id);
        assert_eq!(kind, "text/plain; charset=utf-8");
        assert_eq!(
            &body[..],
            b"no preview named pr-2 for app shop (request id req-7)\n"
        );
        let (kind, body) = answer.body(true, &id);
        assert_eq!(kind, "application/json");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["status"], 404);
        assert_eq!(value["error"], "no_such_preview");
        assert_eq!(value["message"], "no preview named pr-2 for app shop");
        assert_eq!(value["request_id"], "req-7");
    }
}

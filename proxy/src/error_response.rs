//! Error answers the proxy writes itself: JSON when the client accepts JSON, a short
//! line of text otherwise (SPEC §2). Always `Cache-Control: no-store`.

use bytes::Bytes;

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

impl ErrorAnswer {
    /// The body and its content type, in the form the client asked for.
    pub fn body(&self, json: bool) -> (&'static str, Bytes) {
        if json {
            let body = serde_json::json!({
                "status": self.status,
                "error": self.code,
                "message": self.message,
            });
            ("application/json", Bytes::from(body.to_string()))
        } else {
            (
                "text/plain; charset=utf-8",
                Bytes::from(format!("{}\n", self.message)),
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
    fn bodies() {
        let answer = ErrorAnswer {
            status: 404,
            code: "no_such_preview",
            message: "no preview named pr-2 for app shop".into(),
            retry_after_secs: None,
        };
        let (kind, body) = answer.body(false);
        assert_eq!(kind, "text/plain; charset=utf-8");
        assert_eq!(&body[..], b"no preview named pr-2 for app shop\n");
        let (kind, body) = answer.body(true);
        assert_eq!(kind, "application/json");
        let value: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["status"], 404);
        assert_eq!(value["error"], "no_such_preview");
        assert_eq!(value["message"], "no preview named pr-2 for app shop");
    }
}

//! A differential test of odd requests (issue 11, item 7), on the real `ingress`
//! binary: the same raw bytes go to an ingress with the fast path on and to one
//! with it off (everything through `pingora-proxy`), each in front of its own
//! scripted raw upstream. For every case the test compares what the upstream
//! parsed (method, target, version, the sorted field list with lower-cased
//! names, the decoded body) and what the client got (status, framing and
//! connection fields, `x-ingress-version`, the body decoded from its framing),
//! and requires them to be the same, or the fast path to be stricter where a
//! case documents why. Whatever either path does, no smuggled request ever
//! reaches an upstream: each case bounds the requests the upstream may parse.

mod support;

use std::time::Duration;

use support::binary::Ingress;
use support::scripted::{converse, Conversation, RawAnswer, Received, ScriptedUpstream, Step};

/// A request a smuggling case hides after (or inside) a legitimate one: the
/// upstream must never parse it.
const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: shop.example.com\r\n\r\n";

/// What one path did with one case.
struct Observed {
    conversation: Conversation,
    upstream: Vec<Received>,
}

type Check = fn(&Observed) -> Result<(), String>;

struct Case {
    name: &'static str,
    steps: Vec<Step>,
    /// The statuses the client must get on both paths (unless `fast_stricter`
    /// lets the fast path answer an error instead).
    statuses: &'static [u16],
    /// The most requests the upstream may parse (the legitimate ones).
    max_upstream: usize,
    /// Why the fast path may be stricter than the Pingora path here (refuse,
    /// or close, where Pingora forwards or keeps the connection open).
    fast_stricter: Option<&'static str>,
    /// A further expectation on both paths.
    check: Option<Check>,
    /// Why the trailers of a chunked answer may differ between the paths.
    trailers_may_differ: Option<&'static str>,
}

fn case(name: &'static str, request: &str, statuses: &'static [u16], max_upstream: usize) -> Case {
    case_bytes(name, request.as_bytes(), statuses, max_upstream)
}

fn case_bytes(
    name: &'static str,
    request: &[u8],
    statuses: &'static [u16],
    max_upstream: usize,
) -> Case {
    let method = if request.starts_with(b"HEAD ") {
        "HEAD"
    } else {
        "GET"
    };
    let methods = vec![method; statuses.len()];
    Case {
        name,
        steps: vec![Step::new(request, &methods)],
        statuses,
        max_upstream,
        fast_stricter: None,
        check: None,
        trailers_may_differ: None,
    }
}

impl Case {
    fn check(mut self, check: Check) -> Case {
        self.check = Some(check);
        self
    }

    fn trailers_may_differ(mut self, why: &'static str) -> Case {
        self.trailers_may_differ = Some(why);
        self
    }

    fn steps(mut self, steps: Vec<Step>) -> Case {
        self.steps = steps;
        self
    }
}

/// A GET of `path` on the shop, kept alive.
fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
}

/// `path` answered by the upstream script, then a plain GET on the same
/// connection: the answer's framing must leave the connection usable.
fn response_case(name: &'static str, method: &'static str, path: &str) -> Case {
    let first = format!("{method} {path} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n");
    Case {
        name,
        steps: vec![
            Step::new(first.as_bytes(), &[method]),
            Step::new(get("/next").as_bytes(), &["GET"]),
        ],
        statuses: &[],
        max_upstream: 2,
        fast_stricter: None,
        check: None,
        trailers_may_differ: None,
    }
}

fn corpus() -> Vec<Case> {
    let host = "Host: shop.example.com\r\n";
    vec![
        // The control: a plain request reaches the upstream on both paths.
        case("plain GET", &get("/plain"), &[200], 1),
        // --- Framing ambiguity: refused before any upstream, on both paths.
        case(
            "CL+TE",
            &format!("POST /clte HTTP/1.1\r\n{host}Content-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            &[400],
            0,
        ),
        case(
            "TE+CL",
            &format!("POST /tecl HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n5c\r\n{SMUGGLED}\r\n0\r\n\r\n"),
            &[400],
            0,
        ),
        case(
            "two Content-Lengths",
            &format!("POST /clcl HTTP/1.1\r\n{host}Content-Length: 5\r\nContent-Length: 56\r\n\r\nhello{SMUGGLED}"),
            &[400],
            0,
        ),
        case(
            "TE chunked, identity",
            &format!("POST /teid HTTP/1.1\r\n{host}Transfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"),
            &[501],
            0,
        ),
        case(
            "space before colon",
            &format!("GET /sp HTTP/1.1\r\n{host}X-A : b\r\n\r\n"),
            &[400],
            0,
        ),
        case(
            "space before colon (TE)",
            &format!("POST /spte HTTP/1.1\r\n{host}Transfer-Encoding : chunked\r\nContent-Length: 4\r\n\r\n5c\r\n{SMUGGLED}\r\n0\r\n\r\n"),
            &[400],
            0,
        ),
        case(
            "obs-fold",
            &format!("GET /fold HTTP/1.1\r\n{host}X-A: b\r\n c\r\n\r\n"),
            &[400],
            0,
        ),
        case(
            "obs-fold (TE)",
            &format!("POST /foldte HTTP/1.1\r\n{host}Content-Length: 4\r\nTransfer-Encoding:\r\n chunked\r\n\r\n5c\r\n{SMUGGLED}\r\n0\r\n\r\n"),
            &[400],
            0,
        ),
        // --- Line endings: httparse takes a bare LF as a line end; both paths
        // re-serialise the head with CRLF.
        case("bare LF", "GET /lf HTTP/1.1\nHost: shop.example.com\n\n", &[200], 1),
        case(
            "bare LF, CL body",
            "POST /lfpost HTTP/1.1\nHost: shop.example.com\nContent-Length: 5\n\nhello",
            &[200],
            1,
        ),
        case(
            "bare CR in a value",
            &format!("GET /cr HTTP/1.1\r\n{host}X-A: b\rGET /smuggled HTTP/1.1\r\n\r\n"),
            &[400],
            0,
        ),
        // --- Control bytes.
        case_bytes(
            "SOH in a value",
            b"GET /ctl HTTP/1.1\r\nHost: shop.example.com\r\nX-A: b\x01c\r\n\r\n",
            &[400],
            0,
        ),
        case_bytes(
            "NUL in a value",
            b"GET /nul HTTP/1.1\r\nHost: shop.example.com\r\nX-A: b\x00c\r\n\r\n",
            &[400],
            0,
        ),
        case_bytes(
            "DEL in a value",
            b"GET /del HTTP/1.1\r\nHost: shop.example.com\r\nX-A: b\x7fc\r\n\r\n",
            &[400],
            0,
        ),
        case_bytes(
            "BEL in the target",
            b"GET /a\x07b HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
            &[400],
            0,
        ),
        case_bytes(
            "NUL in the target",
            b"GET /a\x00b HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
            &[400],
            0,
        ),
        case_bytes(
            "DEL in the target",
            b"GET /a\x7fb HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
            &[400],
            0,
        ),
        case_bytes(
            "TAB in the target",
            b"GET /a\tb HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
            &[400],
            0,
        ),
        // --- Routing.
        // Absolute-form is outside the fast path's subset, so both ingresses
        // hand it to Pingora, which refuses a Host that differs from the URI's
        // authority (a bare 400 with `Connection: close`): the shop's upstream
        // sees nothing.
        case(
            "absolute-form, other Host",
            &format!("GET http://other.example.com/x HTTP/1.1\r\n{host}\r\n"),
            &[400],
            0,
        ),
        case(
            "absolute-form, same Host",
            &format!("GET http://shop.example.com/abs HTTP/1.1\r\n{host}\r\n"),
            &[200],
            1,
        ),
        case(
            "duplicate Host",
            &format!("GET /dup HTTP/1.1\r\n{host}Host: other.example.com\r\n\r\n"),
            &[400],
            0,
        ),
        // --- Versions and connection handling.
        case("HTTP/1.0", &format!("GET /ten HTTP/1.0\r\n{host}\r\n"), &[200], 1),
        case(
            "HTTP/1.0 keep-alive",
            &format!("GET /tenka HTTP/1.0\r\n{host}Connection: keep-alive\r\n\r\n"),
            &[200],
            1,
        ),
        case(
            "Connection: close",
            &format!("GET /close HTTP/1.1\r\n{host}Connection: close\r\n\r\n"),
            &[200],
            1,
        )
        .check(|seen| {
            (seen.conversation.closed)
                .then_some(())
                .ok_or_else(|| "the connection stayed open after Connection: close".to_string())
        }),
        case(
            "Connection nominates X-Custom",
            &format!("GET /nominate HTTP/1.1\r\n{host}Connection: x-custom\r\nX-Custom: 1\r\n\r\n"),
            &[200],
            1,
        )
        .check(|seen| match seen.upstream.iter().find(|r| r.header("x-custom").is_some()) {
            Some(request) => Err(format!("x-custom reached the upstream: {request:?}")),
            None => Ok(()),
        }),
        case(
            "two pipelined GETs",
            &format!("{}{}", get("/pipe1"), get("/pipe2")),
            &[200, 200],
            2,
        )
        .check(|seen| {
            let bodies: Vec<String> = seen
                .conversation
                .answers
                .iter()
                .map(|a| String::from_utf8_lossy(&a.body).into_owned())
                .collect();
            let in_order = bodies.len() == 2
                && bodies[0].starts_with("GET /pipe1 ")
                && bodies[1].starts_with("GET /pipe2 ");
            in_order
                .then_some(())
                .ok_or_else(|| format!("answers out of order: {bodies:?}"))
        }),
        // --- Bodies.
        case(
            "POST with Content-Length",
            &format!("POST /post HTTP/1.1\r\n{host}Content-Length: 11\r\n\r\nhello world"),
            &[200],
            1,
        )
        .check(|seen| body_reached(seen, b"hello world")),
        case(
            "POST with Content-Length, then a GET",
            &format!(
                "POST /post2 HTTP/1.1\r\n{host}Content-Length: 5\r\n\r\nhello{}",
                get("/after-post")
            ),
            &[200, 200],
            2,
        ),
        case(
            "chunked POST",
            &format!("POST /chunked HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            &[200],
            1,
        )
        .check(|seen| body_reached(seen, b"hello world")),
        case(
            "chunked POST, chunk shorter than its size line",
            &format!("POST /badchunk HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n3\r\nhello\r\n0\r\n\r\n{SMUGGLED}"),
            &[400],
            1,
        ),
        case("HEAD", &format!("HEAD /head HTTP/1.1\r\n{host}\r\n"), &[200], 1).check(|seen| {
            match seen.conversation.answers.first() {
                Some(answer) if answer.header("content-length") == Some("16") && answer.body.is_empty() => Ok(()),
                other => Err(format!("HEAD keeps the upstream's length: {other:?}")),
            }
        }),
        // --- Forwarding fields: overwritten (proto, host) or appended (for).
        case(
            "client X-Forwarded-*",
            &format!("GET /xff HTTP/1.1\r\n{host}X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: evil.example.com\r\n\r\n"),
            &[200],
            1,
        )
        .check(|seen| {
            let request = seen.upstream.first().ok_or("nothing reached the upstream")?;
            let values = |name: &str| -> Vec<&str> {
                request
                    .headers
                    .iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_str())
                    .collect()
            };
            let expected = (
                vec!["1.2.3.4, 127.0.0.1"],
                vec!["http"],
                vec!["shop.example.com"],
            );
            let got = (
                values("x-forwarded-for"),
                values("x-forwarded-proto"),
                values("x-forwarded-host"),
            );
            (got == expected)
                .then_some(())
                .ok_or_else(|| format!("forwarding fields {got:?}, expected {expected:?}"))
        }),
        // --- More requests the fast path serves itself (HTTP/1.1, origin-form).
        case(
            "GET with a body that looks like a request",
            &format!("GET /getbody HTTP/1.1\r\n{host}Content-Length: {}\r\n\r\n{SMUGGLED}", SMUGGLED.len()),
            &[200],
            1,
        )
        .check(|seen| body_reached(seen, SMUGGLED.as_bytes())),
        case(
            "Content-Length with leading zeros",
            &format!("POST /zeros HTTP/1.1\r\n{host}Content-Length: 005\r\n\r\nhello{}", get("/after-zeros")),
            &[200, 200],
            2,
        ),
        case(
            "hop-by-hop request fields",
            &format!("GET /hop HTTP/1.1\r\n{host}Connection: keep-alive\r\nKeep-Alive: 300\r\nTE: trailers\r\nProxy-Connection: keep-alive\r\nTrailer: x-t\r\nX-Keep: 1\r\n\r\n"),
            &[200],
            1,
        ),
        case(
            "Connection: close, x-custom",
            &format!("GET /close-custom HTTP/1.1\r\n{host}Connection: close, x-custom\r\nX-Custom: 1\r\n\r\n"),
            &[200],
            1,
        )
        .check(|seen| match seen.upstream.iter().find(|r| r.header("x-custom").is_some()) {
            Some(request) => Err(format!("x-custom reached the upstream: {request:?}")),
            None => Ok(()),
        }),
        // A chunked body goes to Pingora with everything read behind it; Pingora
        // closes the connection after the answer rather than find the end of the
        // body in the stream, so the pipelined GET is never read (the client
        // retries it on a new connection, RFC 9112 §9.3.2). Same on both paths.
        case(
            "chunked POST, then a pipelined GET",
            &format!("POST /chunked2 HTTP/1.1\r\n{host}Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{}", get("/after-chunked")),
            &[200],
            2,
        ),
        case(
            "Expect: 100-continue",
            &format!("POST /expect HTTP/1.1\r\n{host}Expect: 100-continue\r\nContent-Length: 5\r\n\r\nhello"),
            &[200],
            1,
        ),
        // --- Responses, each followed by a GET on the same connection.
        response_case("204", "GET", "/r/204"),
        response_case("304 with Content-Length", "GET", "/r/304"),
        response_case("HEAD with Content-Length", "HEAD", "/head-len"),
        response_case("chunked with a trailer", "GET", "/r/chunked")
            .trailers_may_differ(
                "the fast path passes chunked bodies through with their trailers; Pingora re-frames them and drops trailers (RFC 9110 §6.5.1 allows both)",
            )
            .check(|seen| match seen.conversation.answers.first() {
                Some(answer) if answer.body == b"hello world" => Ok(()),
                other => Err(format!("the chunked body arrived as {other:?}")),
            }),
        response_case("upstream Connection: close", "GET", "/r/conn-close"),
        // A close-delimited body can only end the client's connection when it is
        // passed through as it is; re-framed as chunked the connection lives on.
        response_case("close-delimited", "GET", "/r/until-close"),
        // RFC 9110 §7.6.1: a field the upstream nominates in `Connection` is
        // hop-by-hop and must not be forwarded. (Known to fail on both paths:
        // see the report of issue 11, item 7.)
        // Odd upstream answers: whatever comes after an answer's end on an
        // upstream connection must never be taken as the next request's answer.
        response_case("upstream nominates X-Up in Connection", "GET", "/r/nominate").check(
            |seen| match seen.conversation.answers.first() {
                Some(answer) if answer.header("x-up").is_none() => Ok(()),
                other => Err(format!("x-up reached the client: {other:?}")),
            },
        ),
        response_case("204 followed by stray bytes", "GET", "/r/204-stray").check(next_is_own),
        response_case("Content-Length shorter than the body", "GET", "/r/extra").check(next_is_own),
        response_case("response CL+TE", "GET", "/r/clte").check(next_is_own),
        response_case("response two Content-Lengths", "GET", "/r/two-cl").check(next_is_own),
        response_case("100 Continue, then 200", "GET", "/r/100"),
        response_case("HTTP/1.0 response, no keep-alive", "GET", "/r/http10"),
        // The upstream closes an idle pooled connection between two requests.
        case("idle pooled connection closed", "", &[200, 200], 2)
            .steps(vec![
                Step::new(get("/r/idle-close").as_bytes(), &["GET"]),
                Step::new(get("/after-idle").as_bytes(), &["GET"]).after(Duration::from_millis(300)),
            ]),
    ]
}

/// The GET that follows a scripted answer got its own answer.
fn next_is_own(seen: &Observed) -> Result<(), String> {
    match seen.conversation.answers.get(1) {
        None => Ok(()),
        Some(answer) if answer.body.starts_with(b"GET /next ") => Ok(()),
        Some(answer) => Err(format!(
            "the next request got another answer: {} {:?}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        )),
    }
}

/// The first request reached the upstream with exactly `body`.
fn body_reached(seen: &Observed, body: &[u8]) -> Result<(), String> {
    match seen.upstream.first() {
        Some(request) if request.body == body => Ok(()),
        other => Err(format!(
            "the upstream got {:?}",
            other.map(|r| String::from_utf8_lossy(&r.body).into_owned())
        )),
    }
}

/// The two ingresses deploy the same upstream script as different versions:
/// their ids (`v` and 12 hex digits, in `x-ingress-version` and error
/// messages) are written as `vID`.
fn without_version_ids(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < bytes.len() {
        let id = bytes[at] == b'v'
            && bytes.len() >= at + 13
            && bytes[at + 1..at + 13]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            && (at == 0 || !bytes[at - 1].is_ascii_alphanumeric())
            && bytes
                .get(at + 13)
                .is_none_or(|b| !b.is_ascii_alphanumeric());
        if id {
            out.push_str("vID");
            at += 13;
        } else {
            let ch = text[at..].chars().next().unwrap_or_default();
            out.push(ch);
            at += ch.len_utf8().max(1);
        }
    }
    out
}

/// Generated request ids (32 hex digits; each ingress has its own prefix) in
/// error bodies are written as `RID`.
fn without_request_ids(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    while at < bytes.len() {
        let id = bytes.len() >= at + 32
            && bytes[at..at + 32]
                .iter()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
            && (at == 0 || !bytes[at - 1].is_ascii_alphanumeric())
            && bytes
                .get(at + 32)
                .is_none_or(|b| !b.is_ascii_alphanumeric());
        if id {
            out.push_str("RID");
            at += 32;
        } else {
            let ch = text[at..].chars().next().unwrap_or_default();
            out.push(ch);
            at += ch.len_utf8().max(1);
        }
    }
    out
}

/// What of an answer both paths must agree on.
fn answer_summary(answer: &RawAnswer) -> String {
    let fields: Vec<String> = [
        "content-length",
        "transfer-encoding",
        "connection",
        "x-ingress-version",
        "content-type",
        "etag",
        "trailer",
    ]
    .iter()
    .filter_map(|name| {
        answer
            .header(name)
            .map(|v| format!("{name}: {}", v.to_ascii_lowercase()))
    })
    .collect();
    without_request_ids(&without_version_ids(&format!(
        "{} [{}] body={:?} trailers={:?}",
        answer.status,
        fields.join("; "),
        String::from_utf8_lossy(&answer.body),
        answer.trailers
    )))
}

fn client_summary(conversation: &Conversation) -> Vec<String> {
    let mut lines: Vec<String> = conversation.answers.iter().map(answer_summary).collect();
    if !conversation.leftover.is_empty() {
        lines.push(format!(
            "leftover {:?}",
            String::from_utf8_lossy(&conversation.leftover)
        ));
    }
    lines.push(format!("closed={}", conversation.closed));
    lines
}

fn upstream_summary(upstream: &[Received]) -> Vec<String> {
    upstream
        .iter()
        .map(|request| format!("{:?}", request.normalised()))
        .collect()
}

/// How the two paths compared on a case.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Same,
    /// The fast path refused or closed where Pingora forwarded; documented.
    FastStricter,
    Differs(String),
}

fn compare(case: &Case, fast: &Observed, pingora: &Observed) -> Verdict {
    let summary = |conversation: &Conversation| {
        let mut conversation = conversation.clone();
        if case.trailers_may_differ.is_some() {
            for answer in &mut conversation.answers {
                answer.trailers.clear();
            }
        }
        client_summary(&conversation)
    };
    let (fast_client, pingora_client) =
        (summary(&fast.conversation), summary(&pingora.conversation));
    let (fast_up, pingora_up) = (
        upstream_summary(&fast.upstream),
        upstream_summary(&pingora.upstream),
    );
    if fast_client == pingora_client && fast_up == pingora_up {
        return Verdict::Same;
    }
    let detail = format!(
        "client:\n  fast:    {fast_client:?}\n  pingora: {pingora_client:?}\nupstream:\n  fast:    {fast_up:?}\n  pingora: {pingora_up:?}"
    );
    if case.fast_stricter.is_some() {
        // Everything the fast path forwarded, Pingora forwarded too; each answer
        // is Pingora's or an error; a close is allowed where Pingora kept open.
        let forwarded_subset = fast_up.iter().all(|r| pingora_up.contains(r));
        let answers_ok = fast
            .conversation
            .answers
            .iter()
            .enumerate()
            .all(|(i, answer)| {
                answer.status >= 400
                    || pingora
                        .conversation
                        .answers
                        .get(i)
                        .is_some_and(|theirs| answer_summary(theirs) == answer_summary(answer))
            });
        let fewer_only_when_closed = fast.conversation.answers.len()
            >= pingora.conversation.answers.len()
            || fast.conversation.closed;
        if forwarded_subset && answers_ok && fewer_only_when_closed {
            return Verdict::FastStricter;
        }
    }
    Verdict::Differs(detail)
}

/// Problems of one path on its own: statuses, smuggling, the case's check.
fn own_problems(case: &Case, path: &str, seen: &Observed, stricter: bool) -> Vec<String> {
    let mut problems = Vec::new();
    let statuses: Vec<u16> = seen.conversation.answers.iter().map(|a| a.status).collect();
    if !case.statuses.is_empty() && statuses != case.statuses && !stricter {
        problems.push(format!(
            "{}: {path}: statuses {statuses:?}, expected {:?}: {:?}",
            case.name,
            case.statuses,
            client_summary(&seen.conversation)
        ));
    }
    if seen.upstream.len() > case.max_upstream {
        problems.push(format!(
            "{}: {path}: the upstream parsed {} requests, at most {} are legitimate: {:?}",
            case.name,
            seen.upstream.len(),
            case.max_upstream,
            upstream_summary(&seen.upstream)
        ));
    }
    if let Some(smuggled) = seen.upstream.iter().find(|r| r.target.contains("smuggled")) {
        problems.push(format!(
            "{}: {path}: a smuggled request reached the upstream: {smuggled:?}",
            case.name
        ));
    }
    if let Some(check) = case.check {
        if let Err(problem) = check(seen) {
            problems.push(format!("{}: {path}: {problem}", case.name));
        }
    }
    problems
}

fn outcome_cell(seen: &Observed) -> String {
    let statuses: Vec<String> = seen
        .conversation
        .answers
        .iter()
        .map(|a| a.status.to_string())
        .collect();
    let statuses = if statuses.is_empty() {
        "-".to_string()
    } else {
        statuses.join(",")
    };
    format!(
        "{statuses} {} up={}",
        if seen.conversation.closed {
            "close"
        } else {
            "open "
        },
        seen.upstream.len()
    )
}

async fn run(ingress: &Ingress, upstream: &ScriptedUpstream, case: &Case) -> Observed {
    upstream.take();
    let conversation = converse(ingress.proxy, &case.steps).await;
    // What the upstream parsed arrived before the answers the client read; a
    // smuggled request right behind them gets a moment to be parsed too.
    tokio::time::sleep(Duration::from_millis(50)).await;
    Observed {
        conversation,
        upstream: upstream.take(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_requests_fare_the_same_on_the_fast_path_and_the_pingora_path() {
    let fast_upstream = ScriptedUpstream::start().await;
    let pingora_upstream = ScriptedUpstream::start().await;
    let fast_dir = tempfile::tempdir().expect("temp dir");
    let pingora_dir = tempfile::tempdir().expect("temp dir");
    let fast = Ingress::shop(fast_dir.path(), fast_upstream.addr, "fast_path = true\n");
    let pingora = Ingress::shop(
        pingora_dir.path(),
        pingora_upstream.addr,
        "fast_path = false\n",
    );
    // Both serve a plain request before the corpus (the lease is in place).
    for (ingress, upstream) in [(&fast, &fast_upstream), (&pingora, &pingora_upstream)] {
        let warm = run(
            ingress,
            upstream,
            &case("warm-up", &get("/warm"), &[200], 1),
        )
        .await;
        assert_eq!(
            warm.conversation.answers.first().map(|a| a.status),
            Some(200),
            "{:?}",
            warm.conversation
        );
    }

    let mut problems = Vec::new();
    let mut table = vec![format!(
        "{:<48} {:<20} {:<20} {}",
        "case", "fast path", "pingora path", "verdict"
    )];
    for case in corpus() {
        let on_fast = run(&fast, &fast_upstream, &case).await;
        let on_pingora = run(&pingora, &pingora_upstream, &case).await;
        let verdict = compare(&case, &on_fast, &on_pingora);
        let stricter = verdict == Verdict::FastStricter;
        problems.extend(own_problems(&case, "fast", &on_fast, stricter));
        problems.extend(own_problems(&case, "pingora", &on_pingora, false));
        let label = match &verdict {
            Verdict::Same if case.trailers_may_differ.is_some() => {
                "same but trailers (documented)".to_string()
            }
            Verdict::Same => "same".to_string(),
            Verdict::FastStricter => format!("fast stricter: {}", case.fast_stricter.unwrap_or("")),
            Verdict::Differs(detail) => {
                problems.push(format!("{}: the paths differ:\n{detail}", case.name));
                "DIFFERS".to_string()
            }
        };
        table.push(format!(
            "{:<48} {:<20} {:<20} {label}",
            case.name,
            outcome_cell(&on_fast),
            outcome_cell(&on_pingora)
        ));
    }
    println!("{}", table.join("\n"));
    // The fast ingress served the plain cases itself; the other never did.
    let served = |text: String| {
        text.lines()
            .find_map(|line| line.strip_prefix("ingress_fast_path_requests_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    let on_fast = served(fast.metrics_text().await);
    let on_pingora = served(pingora.metrics_text().await);
    assert!(on_fast >= 20, "the fast path served {on_fast} requests");
    assert_eq!(on_pingora, 0, "fast_path = false serves nothing itself");
    assert!(
        problems.is_empty(),
        "{} problem(s):\n{}",
        problems.len(),
        problems.join("\n\n")
    );
}

//! Raw HTTP/1 on both sides of the ingress, for tests that send bytes no client
//! library would: a client that writes requests as they are and decodes every
//! answer from its framing, and an upstream that parses what reaches it
//! (leniently, as a naive origin server would, so a smuggled request shows up as
//! one more parsed request) and answers each request by a script keyed on its
//! path.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The longest a client waits for the answers to one step.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// After the expected answers, how long the client watches for the ingress
/// closing the connection.
const CLOSE_WATCH: Duration = Duration::from_millis(150);

/// One write of a raw conversation.
#[derive(Clone, Debug)]
pub struct Step {
    /// Pause before the write.
    pub pause: Duration,
    /// The bytes written as they are.
    pub bytes: Vec<u8>,
    /// The method of each request in `bytes` (for the framing of its answer:
    /// a HEAD answer has no body), in order.
    pub methods: Vec<&'static str>,
}

impl Step {
    pub fn new(bytes: &[u8], methods: &[&'static str]) -> Step {
        Step {
            pause: Duration::ZERO,
            bytes: bytes.to_vec(),
            methods: methods.to_vec(),
        }
    }

    pub fn after(mut self, pause: Duration) -> Step {
        self.pause = pause;
        self
    }
}

/// One answer as the client decoded it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawAnswer {
    pub status: u16,
    /// Fields in order, names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body decoded from its framing (chunks joined).
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body, names lower-cased.
    pub trailers: Vec<(String, String)>,
}

impl RawAnswer {
    /// The first value of `name` (lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// How a raw conversation ended.
#[derive(Clone, Debug, Default)]
pub struct Conversation {
    /// Every answer decoded, in order.
    pub answers: Vec<RawAnswer>,
    /// The ingress closed the connection (at the end, or before all answers).
    pub closed: bool,
    /// Bytes after the last decodable answer (garbage, or a cut-off answer).
    pub leftover: Vec<u8>,
}

/// Sends `steps` on one connection to `addr`; after each, reads until its
/// answers are decoded, the connection closes, or 10 s pass. Then watches the
/// connection briefly for a close.
pub async fn converse(addr: SocketAddr, steps: &[Step]) -> Conversation {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut out = Conversation::default();
    let mut buf: Vec<u8> = Vec::new();
    let mut read = [0u8; 16 * 1024];
    for step in steps {
        if out.closed {
            break;
        }
        if !step.pause.is_zero() {
            tokio::time::sleep(step.pause).await;
        }
        if stream.write_all(&step.bytes).await.is_err() {
            out.closed = true;
            break;
        }
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut methods = step.methods.iter();
        let mut method = methods.next();
        while let Some(m) = method {
            if let Some((answer, used)) = parse_answer(&buf, *m == "HEAD", false) {
                buf.drain(..used);
                out.answers.push(answer);
                method = methods.next();
                continue;
            }
            match tokio::time::timeout_at(deadline, stream.read(&mut read)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&read[..n]),
                Ok(_) => {
                    // Closed: a close-delimited answer ends here.
                    out.closed = true;
                    if let Some((answer, used)) = parse_answer(&buf, *m == "HEAD", true) {
                        buf.drain(..used);
                        out.answers.push(answer);
                    }
                    break;
                }
                Err(_) => break,
            }
        }
    }
    if !out.closed {
        let watch = Instant::now() + CLOSE_WATCH;
        loop {
            match tokio::time::timeout_at(watch, stream.read(&mut read)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&read[..n]),
                Ok(_) => {
                    out.closed = true;
                    break;
                }
                Err(_) => break,
            }
        }
    }
    out.leftover = buf;
    out
}

/// Header or trailer fields: lower-cased names, trimmed values, in order.
pub type Fields = Vec<(String, String)>;

/// Splits a head (`\r\n` or bare `\n` lines) into its first line and fields;
/// `None` until the blank line arrived. Returns the bytes of the head too.
fn split_head(buf: &[u8]) -> Option<(String, Fields, usize)> {
    let mut at = 0;
    let mut lines = Vec::new();
    loop {
        let end = at + buf[at..].iter().position(|b| *b == b'\n')?;
        let line = &buf[at..end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        at = end + 1;
        if line.is_empty() {
            if lines.is_empty() {
                // Tolerate blank lines before a message (RFC 9112 §2.2).
                continue;
            }
            break;
        }
        lines.push(String::from_utf8_lossy(line).into_owned());
    }
    let mut lines = lines.into_iter();
    let first = lines.next()?;
    let fields = lines
        .map(|line| match line.split_once(':') {
            Some((name, value)) => (name.trim().to_ascii_lowercase(), value.trim().to_string()),
            None => (line.trim().to_ascii_lowercase(), String::new()),
        })
        .collect();
    Some((first, fields, at))
}

fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// A chunked body at the start of `buf`: (data, trailers, bytes used), `None`
/// while incomplete or when malformed.
fn decode_chunked(buf: &[u8]) -> Option<(Vec<u8>, Fields, usize)> {
    let mut at = 0;
    let mut data = Vec::new();
    loop {
        let end = at + buf[at..].iter().position(|b| *b == b'\n')?;
        let line = String::from_utf8_lossy(&buf[at..end]);
        let size = line.trim().split(';').next()?.trim();
        let size = usize::from_str_radix(size, 16).ok()?;
        at = end + 1;
        if size == 0 {
            break;
        }
        if buf.len() < at + size {
            return None;
        }
        data.extend_from_slice(&buf[at..at + size]);
        at += size;
        if buf[at..].starts_with(b"\r\n") {
            at += 2;
        } else if buf[at..].starts_with(b"\n") {
            at += 1;
        } else {
            return None;
        }
    }
    let mut trailers = Vec::new();
    loop {
        let end = at + buf[at..].iter().position(|b| *b == b'\n')?;
        let line = String::from_utf8_lossy(&buf[at..end]).trim().to_string();
        at = end + 1;
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            trailers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
    }
    Some((data, trailers, at))
}

/// One answer at the start of `buf`, to a HEAD request when `head`; `closed`:
/// nothing more will arrive (a close-delimited body ends at the end of `buf`).
pub fn parse_answer(buf: &[u8], head: bool, closed: bool) -> Option<(RawAnswer, usize)> {
    let (status_line, headers, head_len) = split_head(buf)?;
    let status: u16 = status_line.split_whitespace().nth(1)?.parse().ok()?;
    let rest = &buf[head_len..];
    let mut answer = RawAnswer {
        status,
        headers,
        body: Vec::new(),
        trailers: Vec::new(),
    };
    if (100..200).contains(&status) && status != 101 {
        // Informational: skip to the final answer.
        let (next, used) = parse_answer(rest, head, closed)?;
        return Some((next, head_len + used));
    }
    if head || status == 204 || status == 304 {
        return Some((answer, head_len));
    }
    let chunked = field(&answer.headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    if chunked {
        let (data, trailers, used) = decode_chunked(rest)?;
        answer.body = data;
        answer.trailers = trailers;
        return Some((answer, head_len + used));
    }
    if let Some(length) = field(&answer.headers, "content-length") {
        let length: usize = length.parse().ok()?;
        if rest.len() < length {
            return None;
        }
        answer.body = rest[..length].to_vec();
        return Some((answer, head_len + length));
    }
    if !closed {
        return None;
    }
    answer.body = rest.to_vec();
    Some((answer, buf.len()))
}

/// A request as the upstream parsed it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// Which upstream connection carried it (1, 2, ... in accept order).
    pub conn: usize,
    pub method: String,
    pub target: String,
    pub version: String,
    /// Fields in order, names lower-cased, values trimmed.
    pub headers: Vec<(String, String)>,
    /// The body decoded from its framing.
    pub body: Vec<u8>,
}

impl Received {
    /// The request without what may differ between two proxies that forward it
    /// equally: field order and the case of names.
    pub fn normalised(&self) -> (String, String, String, Vec<(String, String)>, Vec<u8>) {
        // A generated request id differs per ingress and per request.
        let mut headers: Vec<(String, String)> = self
            .headers
            .iter()
            .map(|(name, value)| {
                if name.eq_ignore_ascii_case("x-request-id") {
                    (name.to_ascii_lowercase(), "ID".to_string())
                } else {
                    (name.clone(), value.clone())
                }
            })
            .collect();
        headers.sort();
        (
            self.method.clone(),
            self.target.clone(),
            self.version.clone(),
            headers,
            self.body.clone(),
        )
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        field(&self.headers, name)
    }
}

/// The answer an upstream script gives to one request.
struct Scripted {
    bytes: Vec<u8>,
    /// Close the connection after the answer, after this pause.
    close_after: Option<Duration>,
}

/// An upstream that parses every request it receives and answers by path:
/// - `/r/204`: 204 No Content;
/// - `/r/304`: 304 Not Modified with `Content-Length: 7` (and no body);
/// - `/r/chunked`: a chunked body `hello world` with a trailer `x-sum: 11`;
/// - `/r/until-close`: no length, the body, then the connection closes;
/// - `/r/conn-close`: a length and `Connection: close`, then it closes;
/// - `/r/idle-close`: a keep-alive answer, then the connection is closed
///   100 ms later (an idle pooled connection going away);
/// - `/r/nominate`: `Connection: x-up` with `X-Up: secret`;
/// - `/r/204-stray`, `/r/extra`: a 204, or a length shorter than the body,
///   followed by a stray second answer on the connection;
/// - `/r/clte`, `/r/two-cl`: a length with chunked, two lengths;
/// - `/r/100`: 100 Continue, then 200; `/r/http10`: an HTTP/1.0 answer, then
///   the connection closes;
/// - anything else: 200 with `Content-Length` and the body `METHOD TARGET
///   body=BODY` (a HEAD answer has the length of that body, without it).
///
/// Every answer carries `x-upstream-seq: N`, the request's number on this
/// upstream. A request with `Connection: close` is answered, then the
/// connection closes.
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl ScriptedUpstream {
    pub async fn start() -> ScriptedUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let conns = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(async move {
            let mut handlers = tokio::task::JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let conn = conns.fetch_add(1, Ordering::SeqCst) + 1;
                handlers.spawn(serve(stream, conn, Arc::clone(&log)));
                // Reap finished handlers so the set stays small.
                while handlers.try_join_next().is_some() {}
            }
        });
        ScriptedUpstream {
            addr,
            received,
            task,
        }
    }

    /// The requests parsed since the last call.
    pub fn take(&self) -> Vec<Received> {
        std::mem::take(&mut *self.received.lock().unwrap())
    }
}

/// Serves one upstream connection (at most 64 requests; an idle one is closed
/// after 60 s, longer than any test keeps a pooled connection).
async fn serve(mut stream: TcpStream, conn: usize, log: Arc<Mutex<Vec<Received>>>) {
    let mut buf = Vec::new();
    let mut read = [0u8; 16 * 1024];
    for _ in 0..64 {
        let (request, used) = loop {
            if let Some(parsed) = parse_request(&buf, conn) {
                break parsed;
            }
            match tokio::time::timeout(Duration::from_secs(60), stream.read(&mut read)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&read[..n]),
                _ => return,
            }
        };
        buf.drain(..used);
        let seq = {
            let mut log = log.lock().unwrap();
            log.push(request.clone());
            log.len()
        };
        let client_close = request
            .header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("close"));
        let script = script(&request, seq);
        if stream.write_all(&script.bytes).await.is_err() {
            return;
        }
        if let Some(pause) = script.close_after {
            tokio::time::sleep(pause).await;
            return;
        }
        if client_close {
            return;
        }
    }
}

/// The request at the start of `buf`, when it is whole.
fn parse_request(buf: &[u8], conn: usize) -> Option<(Received, usize)> {
    let (line, headers, head_len) = split_head(buf)?;
    let mut words = line.split(' ');
    let method = words.next().unwrap_or_default().to_string();
    let target = words.next().unwrap_or_default().to_string();
    let version = words.next().unwrap_or_default().to_string();
    let rest = &buf[head_len..];
    let chunked = field(&headers, "transfer-encoding")
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let (body, used) = if chunked {
        let (data, _trailers, used) = decode_chunked(rest)?;
        (data, used)
    } else if let Some(length) = field(&headers, "content-length") {
        let length: usize = length.split(',').next()?.trim().parse().ok()?;
        if rest.len() < length {
            return None;
        }
        (rest[..length].to_vec(), length)
    } else {
        (Vec::new(), 0)
    };
    Some((
        Received {
            conn,
            method,
            target,
            version,
            headers,
            body,
        },
        head_len + used,
    ))
}

fn script(request: &Received, seq: usize) -> Scripted {
    let path = request.target.split('?').next().unwrap_or_default();
    let path = path
        .strip_prefix("http://")
        .and_then(|rest| rest.find('/').map(|at| &rest[at..]))
        .unwrap_or(path);
    let keep = |text: String| Scripted {
        bytes: text.into_bytes(),
        close_after: None,
    };
    match path {
        "/r/204" => keep(format!(
            "HTTP/1.1 204 No Content\r\nx-upstream-seq: {seq}\r\n\r\n"
        )),
        "/r/304" => keep(format!(
            "HTTP/1.1 304 Not Modified\r\nETag: \"v1\"\r\nContent-Length: 7\r\nx-upstream-seq: {seq}\r\n\r\n"
        )),
        "/r/chunked" => keep(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTrailer: x-sum\r\nTransfer-Encoding: chunked\r\nx-upstream-seq: {seq}\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\nx-sum: 11\r\n\r\n"
        )),
        "/r/nominate" => keep(format!(
            "HTTP/1.1 200 OK\r\nConnection: x-up\r\nX-Up: secret\r\nContent-Length: 2\r\nx-upstream-seq: {seq}\r\n\r\nok"
        )),
        "/r/204-stray" => keep(format!(
            "HTTP/1.1 204 No Content\r\nx-upstream-seq: {seq}\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"
        )),
        "/r/extra" => keep(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-upstream-seq: {seq}\r\n\r\nokHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"
        )),
        "/r/clte" => keep(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\nx-upstream-seq: {seq}\r\n\r\n2\r\nok\r\n0\r\n\r\n"
        )),
        "/r/two-cl" => keep(format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 7\r\nx-upstream-seq: {seq}\r\n\r\nokstray"
        )),
        "/r/100" => keep(format!(
            "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\nx-upstream-seq: {seq}\r\n\r\nok"
        )),
        "/r/http10" => Scripted {
            bytes: format!(
                "HTTP/1.0 200 OK\r\nContent-Length: 2\r\nx-upstream-seq: {seq}\r\n\r\nok"
            )
            .into_bytes(),
            close_after: Some(Duration::ZERO),
        },
        "/r/until-close" => Scripted {
            bytes: format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nx-upstream-seq: {seq}\r\n\r\nclose-delimited body"
            )
            .into_bytes(),
            close_after: Some(Duration::ZERO),
        },
        "/r/conn-close" => Scripted {
            bytes: format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 7\r\nConnection: close\r\nx-upstream-seq: {seq}\r\n\r\nclosing"
            )
            .into_bytes(),
            close_after: Some(Duration::ZERO),
        },
        "/r/idle-close" => Scripted {
            bytes: format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 4\r\nx-upstream-seq: {seq}\r\n\r\nidle"
            )
            .into_bytes(),
            close_after: Some(Duration::from_millis(100)),
        },
        _ => {
            let body = format!(
                "{} {} body={}",
                request.method,
                request.target,
                String::from_utf8_lossy(&request.body)
            );
            let mut text = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nx-upstream-seq: {seq}\r\n\r\n",
                body.len()
            );
            if request.method != "HEAD" {
                text.push_str(&body);
            }
            keep(text)
        }
    }
}

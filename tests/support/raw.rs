//! Raw-socket HTTP/1 helpers for tests that send bytes a client library would
//! not (malformed, trickled, pipelined) and watch when the ingress closes.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What the ingress answered to raw bytes: status, lower-cased head, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub head: String,
    pub body: String,
    /// The head as sent (case kept).
    pub raw_head: String,
}

impl Answer {
    fn parse(text: &str) -> Answer {
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        Answer {
            status,
            head: head.to_ascii_lowercase(),
            body: body.to_string(),
            raw_head: head.to_string(),
        }
    }

    /// The value of the first field `name` (any case), as sent.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.raw_head.lines().skip(1).find_map(|line| {
            let (field, value) = line.split_once(':')?;
            field.eq_ignore_ascii_case(name).then(|| value.trim())
        })
    }

    /// The whole answer, for messages.
    pub fn text(&self) -> String {
        format!("{}\r\n\r\n{}", self.raw_head, self.body)
    }
}

/// Sends `request` as it is and reads until the ingress closes the connection
/// (at most 10 s).
pub async fn send_raw(addr: SocketAddr, request: &[u8]) -> Answer {
    send_raw_within(addr, request, Duration::from_secs(10))
        .await
        .expect("the ingress closes the connection after its answer")
}

/// Like [`send_raw`], waiting at most `wait`; `None` when the ingress neither
/// answered nor closed by then.
pub async fn send_raw_within(addr: SocketAddr, request: &[u8], wait: Duration) -> Option<Answer> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.ok()?;
        stream.write_all(request).await.ok()?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.ok()?;
        Some(Answer::parse(&String::from_utf8_lossy(&bytes)))
    };
    tokio::time::timeout(wait, exchange).await.ok().flatten()
}

/// Reads one response with a `Content-Length` body (or none) from `stream`,
/// waiting at most `wait` in all. Bytes read past it stay in `pending` for the
/// next call. `None` when the connection ended or the wait ran out first.
pub async fn read_response(
    stream: &mut (impl AsyncRead + Unpin),
    pending: &mut Vec<u8>,
    wait: Duration,
) -> Option<Answer> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).to_ascii_lowercase();
            let length = head
                .lines()
                .find_map(|line| line.strip_prefix("content-length:"))
                .and_then(|value| value.trim().parse::<usize>().ok())
                .unwrap_or(0);
            let total = end + 4 + length;
            if pending.len() >= total {
                let text = String::from_utf8_lossy(&pending[..total]).into_owned();
                pending.drain(..total);
                return Some(Answer::parse(&text));
            }
        }
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => pending.extend_from_slice(&buf[..n]),
            _ => return None,
        }
    }
}

/// One keep-alive GET of `/` for `shop.example.com` on `stream`; the status,
/// or 0 when the connection ended before an answer.
pub async fn keepalive_get(stream: &mut TcpStream) -> u16 {
    let request = b"GET / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n";
    if stream.write_all(request).await.is_err() {
        return 0;
    }
    let mut pending = Vec::new();
    read_response(stream, &mut pending, Duration::from_secs(10))
        .await
        .map_or(0, |answer| answer.status)
}

/// How a wait for the peer to close ended.
#[derive(Debug)]
pub enum Closed {
    /// EOF (or a reset) within the wait, with everything read before it.
    Yes(Vec<u8>),
    /// Still open when the wait ran out, with everything read so far.
    No(Vec<u8>),
}

/// Reads until the ingress closes `stream` (EOF or a reset), at most `wait`.
pub async fn wait_for_close(stream: &mut (impl AsyncRead + Unpin), wait: Duration) -> Closed {
    let deadline = tokio::time::Instant::now() + wait;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Closed::Yes(bytes),
            Ok(Ok(n)) => bytes.extend_from_slice(&buf[..n]),
            Err(_) => return Closed::No(bytes),
        }
    }
}

//! Answers the connection loop and the fast path write themselves, as raw
//! HTTP/1.1: an error body (JSON or text) with `Connection: close`.

use std::time::Duration;

use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use crate::error_response::ErrorAnswer;
use crate::request_id::RequestId;

/// After an answer that closes the connection, how long and how much of the
/// client's unread input is drained, so the answer is not lost to a TCP reset.
const LINGER_TIME: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

/// The bytes of `answer` as a whole HTTP/1.1 response with `Connection: close`
/// and the request's `X-Request-Id`.
pub fn answer_bytes(answer: &ErrorAnswer, json: bool, request_id: &RequestId) -> Vec<u8> {
    let (content_type, body) = answer.body(json, request_id);
    let reason = http::StatusCode::from_u16(answer.status)
        .ok()
        .and_then(|status| status.canonical_reason())
        .unwrap_or("Error");
    let date = pingora_core::protocols::http::date::get_cached_date();
    let retry_after = answer
        .retry_after_secs
        .map(|seconds| format!("Retry-After: {seconds}\r\n"))
        .unwrap_or_default();
    let mut response = format!(
        "HTTP/1.1 {} {reason}\r\nDate: {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nX-Request-Id: {request_id}\r\n{retry_after}Connection: close\r\n\r\n",
        answer.status,
        date.to_str().unwrap_or_default(),
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    response
}

/// Writes `answer` and half-closes the connection (bounded in time).
pub async fn write_answer(
    stream: &mut Stream,
    answer: &ErrorAnswer,
    json: bool,
    request_id: &RequestId,
) -> std::io::Result<()> {
    let response = answer_bytes(answer, json, request_id);
    let written = async {
        stream.write_all(&response).await?;
        stream.flush().await?;
        stream.shutdown().await
    };
    tokio::time::timeout(LINGER_TIME, written)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Drains what the client still sends, for at most a second or 64 KiB.
pub async fn linger(stream: &mut Stream) {
    let mut drained = 0usize;
    let mut sink = [0u8; 4096];
    let deadline = Instant::now() + LINGER_TIME;
    while drained < LINGER_BYTES {
        match tokio::time::timeout_at(deadline, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => break,
        }
    }
}

//! What one access-log line says, as the request path hands it over.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::request_id::RequestId;
use crate::resolve::ResolutionKind;
use crate::snapshot::Target;

/// One request, as the access log records it. Built on the request thread at
/// the end of the request and formatted on the writer thread.
#[derive(Debug)]
pub struct AccessRecord {
    /// When the request's head was complete, Unix milliseconds (UTC).
    pub time_ms: u64,
    /// The client's IP address, when the connection has one.
    pub client_ip: Option<IpAddr>,
    /// Method, host, target and the two fields the combined format shows.
    pub text: RequestText,
    /// `10`, `11` or `20` (HTTP/1.0, 1.1, 2).
    pub http_version: u8,
    /// The status sent to the client; 0 when nothing was sent (the client left
    /// first, or the connection broke before a response).
    pub status: u16,
    /// Request body bytes read from the client.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From the complete request head to the end of the response, microseconds.
    pub duration_us: u64,
    /// The upstream instance the request went to, if it went to one.
    pub upstream_addr: Option<SocketAddr>,
    /// From choosing the upstream to its response head, microseconds.
    pub upstream_us: Option<u64>,
    /// The version the host resolved to (app, version id, label). A shared
    /// pointer: no copy of the names on the request thread.
    pub target: Option<Arc<Target>>,
    /// How the host resolved, or why it did not.
    pub kind: Option<ResolutionKind>,
    /// Milliseconds the request was held while its version woke.
    pub cold_start_ms: Option<u64>,
    /// The `code` of the error answer the ingress gave (`no_route`,
    /// `upstream_error`, ...); none when the upstream answered.
    pub error: Option<&'static str>,
    pub request_id: RequestId,
}

/// The request's strings, copied into one allocation of exactly their size:
/// they must outlive the request's buffers and cross to the writer thread.
#[derive(Debug, Default)]
pub struct RequestText {
    bytes: Vec<u8>,
    /// Where each part ends in `bytes`: method, host, target, user agent, referer.
    ends: [u32; 5],
}

impl RequestText {
    /// The parts of one request; a part longer than 64 KiB is cut there (no
    /// request head this proxy accepts is that long).
    pub fn new(
        method: &[u8],
        host: &[u8],
        target: &[u8],
        user_agent: Option<&[u8]>,
        referer: Option<&[u8]>,
    ) -> RequestText {
        const MAX_PART: usize = 64 * 1024;
        let parts = [
            method,
            host,
            target,
            user_agent.unwrap_or_default(),
            referer.unwrap_or_default(),
        ];
        let total = parts.iter().map(|p| p.len().min(MAX_PART)).sum();
        let mut bytes = Vec::with_capacity(total);
        let mut ends = [0u32; 5];
        for (end, part) in ends.iter_mut().zip(parts) {
            bytes.extend_from_slice(&part[..part.len().min(MAX_PART)]);
            *end = bytes.len() as u32;
        }
        RequestText { bytes, ends }
    }

    fn part(&self, index: usize) -> &[u8] {
        let start = if index == 0 {
            0
        } else {
            self.ends[index - 1] as usize
        };
        self.bytes
            .get(start..self.ends[index] as usize)
            .unwrap_or_default()
    }

    /// The request method.
    pub fn method(&self) -> &[u8] {
        self.part(0)
    }

    /// The Host as the client sent it (or the HTTP/2 authority).
    pub fn host(&self) -> &[u8] {
        self.part(1)
    }

    /// The request target: path and query.
    pub fn target(&self) -> &[u8] {
        self.part(2)
    }

    /// The `User-Agent` value; empty when absent.
    pub fn user_agent(&self) -> &[u8] {
        self.part(3)
    }

    /// The `Referer` value; empty when absent.
    pub fn referer(&self) -> &[u8] {
        self.part(4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_come_back_as_given() {
        let text = RequestText::new(b"GET", b"shop.example.com", b"/a?b=1", None, Some(b"r"));
        assert_eq!(text.method(), b"GET");
        assert_eq!(text.host(), b"shop.example.com");
        assert_eq!(text.target(), b"/a?b=1");
        assert_eq!(text.user_agent(), b"");
        assert_eq!(text.referer(), b"r");
        let empty = RequestText::default();
        assert_eq!(empty.method(), b"");
        assert_eq!(empty.referer(), b"");
    }
}

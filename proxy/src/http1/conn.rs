//! The project's own HTTP/1 connection loop, hosted by Pingora's listening service.
//!
//! Every client connection runs here. For each request the loop:
//! 1. waits for its first byte, at most `proxy.keepalive_timeout` after the
//!    previous response (Pingora's own loop has no such limit after the first
//!    request, cloudflare/pingora#447), and closes at once when idle at shutdown;
//! 2. reads the head into a buffer that grows only as needed and never past
//!    `proxy.max_header_bytes`, within `proxy.header_timeout` from its first byte
//!    (a deadline for the whole head: Pingora's read timeout applies per read, so
//!    a head trickled a byte at a time was never cut);
//! 3. checks it ([`super::head`]): anything ambiguous is answered here with
//!    `Connection: close` and never reaches an upstream;
//! 4. hands the request to `pingora-proxy` with the bytes already read as the
//!    pipelined prefix, and takes the connection back for the next request.
//!
//! Only this request's bytes are handed over (its head, and as much of a
//! `Content-Length` body as was read), so a pipelined next request stays in the
//! loop's buffer and passes step 3 like any other.
//!
//! HTTP/2 connections (ALPN `h2` on TLS, or the h2c preface on the plain
//! listener when `proxy.h2c` is on) are handed to `pingora-proxy` whole; a
//! graceful stop sends them GOAWAY and waits for their open streams.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::l4::stream::Stream as L4Stream;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::HttpProxy;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

use super::answer::{linger, write_answer};
use super::drain::Drain;
use super::h2;
use super::head::{self, BodyFraming, HeadLimits, Parsed, Refusal};
use super::limits::ConnectionLimiter;
use super::rebind;
use crate::access_log::{AccessLog, AccessRecord, RequestText};
use crate::error_response::ErrorAnswer;
use crate::fast_path::{Buffers, Client, FastPath, Outcome};
use crate::metrics::Metrics;
use crate::request_id::RequestId;
use crate::service::IngressProxy;
use crate::tls::ConnTls;

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The first allocation of a connection's head buffer; it grows as needed.
const INITIAL_BUFFER: usize = 1024;

/// Timeouts and limits of the connection loop.
#[derive(Debug, Clone)]
pub struct ConnOptions {
    pub head: HeadLimits,
    /// The whole head must arrive within this, from its first byte (from the
    /// accept for a connection's first request).
    pub header_timeout: Duration,
    /// An idle keep-alive connection is closed after this.
    pub keepalive_timeout: Duration,
    /// Longest pause between two reads of a request body.
    pub body_timeout: Duration,
    /// Longest a write to the client may take (`proxy.write_timeout`).
    pub write_timeout: Duration,
    /// Serve the strict subset with the fast path (`proxy.fast_path`).
    pub fast_path: bool,
    /// Accept HTTP/2 with prior knowledge on plain connections (`proxy.h2c`).
    pub h2c: bool,
}

impl ConnOptions {
    /// The options from the `[proxy]` settings.
    pub fn from_config(config: &ingress_config::Config) -> ConnOptions {
        ConnOptions {
            head: HeadLimits {
                max_header_bytes: config.proxy.max_header_bytes,
                max_headers: config.proxy.max_headers,
                max_target_bytes: config.proxy.max_target_bytes,
            },
            header_timeout: config.proxy.header_timeout.0,
            keepalive_timeout: config.proxy.keepalive_timeout.0,
            body_timeout: config.proxy.body_timeout.0,
            write_timeout: config.proxy.write_timeout.0,
            fast_path: config.proxy.fast_path,
            h2c: config.proxy.h2c,
        }
    }
}

/// The HTTP/1 server application: the loop above in front of `pingora-proxy`.
pub struct Http1App {
    proxy: Arc<HttpProxy<IngressProxy>>,
    /// Serves the strict subset itself when `proxy.fast_path` is on.
    fast: Option<FastPath>,
    limiter: Arc<ConnectionLimiter>,
    drain: Arc<Drain>,
    metrics: Arc<Metrics>,
    /// Swapped whole by a config reload; loaded once per request.
    options: Arc<ArcSwap<ConnOptions>>,
    /// Refused requests are logged here too (off unless set).
    access_log: AccessLog,
}

/// How waiting for a request head ended.
enum Next {
    /// A head that passed the checks is at the start of the buffer.
    Request(head::Head),
    /// Refused: answer and close.
    Refuse(Refusal),
    /// The client closed, went idle past the keep-alive limit, or the proxy is
    /// shutting down with nothing in progress: close without an answer.
    Close,
    /// The buffer starts with the HTTP/2 preface (h2c with prior knowledge).
    H2c,
}

impl Http1App {
    /// The loop in front of `proxy`, admitting connections through `limiter`.
    pub fn new(
        proxy: Arc<HttpProxy<IngressProxy>>,
        fast: Option<FastPath>,
        limiter: Arc<ConnectionLimiter>,
        drain: Arc<Drain>,
        metrics: Arc<Metrics>,
        options: Arc<ArcSwap<ConnOptions>>,
    ) -> Http1App {
        Http1App {
            proxy,
            fast,
            limiter,
            drain,
            metrics,
            options,
            access_log: AccessLog::off(),
        }
    }

    /// The loop logging the requests it refuses itself to `log`.
    pub fn with_access_log(mut self, log: AccessLog) -> Http1App {
        self.access_log = log;
        self
    }

    /// Reads until `buf` starts with a whole, acceptable head.
    async fn next_head(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        first_request: bool,
        shutdown: &mut ShutdownWatch,
        draining: &mut watch::Receiver<bool>,
        mut h2c: bool,
    ) -> Next {
        // A copy (no heap): no reference count shared between threads.
        let options: ConnOptions = ConnOptions::clone(&self.options.load());
        let limits = &options.head;
        // A connection's first request has header_timeout from the accept; a
        // later one keepalive_timeout to start and then header_timeout.
        let mut deadline = Instant::now()
            + if first_request {
                options.header_timeout
            } else {
                options.keepalive_timeout
            };
        let mut started = first_request;
        // The head can only have become complete (or malformed) when a line
        // ended: reparsing after every read would cost O(n²) for a trickled head.
        let mut fresh_line = !buf.is_empty();
        loop {
            // While the bytes so far could be the HTTP/2 preface, wait for all of it.
            let mut awaiting_preface = false;
            if h2c && !buf.is_empty() {
                let n = buf.len().min(H2_PREFACE.len());
                if buf[..n] != H2_PREFACE[..n] {
                    h2c = false;
                } else if n == H2_PREFACE.len() {
                    return Next::H2c;
                } else {
                    awaiting_preface = true;
                }
            }
            if awaiting_preface {
                if !started {
                    started = true;
                    deadline = Instant::now() + options.header_timeout;
                }
            } else if !buf.is_empty() && !fresh_line {
                if let Parsed::Refused(refusal) = head::partial(buf, limits) {
                    return Next::Refuse(refusal);
                }
            } else if !buf.is_empty() {
                if !started {
                    started = true;
                    deadline = Instant::now() + options.header_timeout;
                }
                match head::parse(buf, limits) {
                    Parsed::Complete(head) => return Next::Request(head),
                    Parsed::Refused(refusal) => return Next::Refuse(refusal),
                    Parsed::Partial => {}
                }
            } else if (*shutdown.borrow() && !first_request) || *draining.borrow() {
                // A connection's first request is still read and answered
                // (with `Connection: close`) after Pingora stops accepting: the
                // client connected before, so it waits for an answer.
                return Next::Close;
            }
            // Grow only as far as the head may go; `parse` refuses at the limit.
            let room = limits.max_header_bytes + 1 - buf.len().min(limits.max_header_bytes);
            if buf.capacity() == buf.len() {
                // Grow to an exact size (`reserve` may double past the limit).
                let size = (buf.len() * 2).clamp(INITIAL_BUFFER, limits.max_header_bytes + 1);
                let mut grown = BytesMut::with_capacity(size);
                grown.extend_from_slice(buf);
                *buf = grown;
            }
            let spare = buf.capacity() - buf.len();
            let idle = buf.is_empty();
            let before = buf.len();
            let read = async {
                let mut limited = (&mut *buf).limit(spare.min(room));
                stream.read_buf(&mut limited).await
            };
            let outcome = tokio::select! {
                outcome = tokio::time::timeout_at(deadline, read) => outcome,
                _ = shutdown.changed(), if idle && !first_request => return Next::Close,
                _ = draining.changed(), if idle => return Next::Close,
            };
            match outcome {
                Ok(Ok(0)) | Ok(Err(_)) => return Next::Close,
                Ok(Ok(_)) => fresh_line = memchr::memchr(b'\n', &buf[before..]).is_some(),
                Err(_elapsed) if idle => return Next::Close,
                Err(_elapsed) => {
                    return Next::Refuse(Refusal {
                        status: 408,
                        code: "header_timeout",
                        message: format!(
                            "the request head was not complete within {}ms (proxy.header_timeout)",
                            options.header_timeout.as_millis()
                        ),
                        accepts_json: false,
                    })
                }
            }
        }
    }
}

#[async_trait]
impl ServerApp for Http1App {
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        // Past proxy.max_connections the connection is closed at once (dropped),
        // so the ones already open keep their descriptors and keep working.
        let _admitted = self.limiter.try_enter()?;
        if self.drain.is_draining() {
            return None;
        }
        let mut draining = self.drain.subscribe();
        let mut shutdown = shutdown.clone();
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            let preface_within = Some(self.options.load().header_timeout);
            h2::serve(&self.proxy, &self.drain, stream, preface_within, &shutdown).await;
            return None;
        }
        let mut stream = rebind::to_this_thread(stream);
        // The TLS facts of the connection, for the fast path's edge checks.
        let ssl = stream.get_ssl_digest();
        let conn_tls = ssl.as_ref().and_then(|ssl| ssl.extension.get::<ConnTls>());
        let is_tls = ssl.is_some();
        let mut h2c = self.options.load().h2c && !is_tls;
        let mut buf = BytesMut::with_capacity(INITIAL_BUFFER);
        let mut first_request = true;
        let mut fast_buffers = Buffers::default();
        let client_ip = stream.get_socket_digest().and_then(|digest| {
            digest
                .peer_addr()
                .and_then(|addr| addr.as_inet())
                .map(|a| a.ip())
        });
        loop {
            if buf.is_empty() && buf.capacity() > INITIAL_BUFFER * 4 {
                // Do not keep a large head's or body's buffer for an idle connection.
                buf = BytesMut::with_capacity(INITIAL_BUFFER);
            }
            let head = match self
                .next_head(
                    &mut stream,
                    &mut buf,
                    first_request,
                    &mut shutdown,
                    &mut draining,
                    h2c,
                )
                .await
            {
                Next::Request(head) => head,
                Next::Close => return None,
                Next::H2c => {
                    // Give the preface back to the stream for the HTTP/2 codec.
                    let plain = stream.into_any().downcast::<L4Stream>().ok();
                    match plain {
                        Some(mut l4) => {
                            l4.rewind(&buf);
                            h2::serve(&self.proxy, &self.drain, l4, None, &shutdown).await;
                        }
                        None => log::warn!("h2c on a stream that cannot be rewound; closed"),
                    }
                    return None;
                }
                Next::Refuse(refusal) => {
                    self.metrics.count_refusal(refusal.status);
                    // Refused heads are not trusted, their X-Request-Id neither.
                    let request_id = RequestId::generate();
                    let refused_at = (crate::time::now_unix_millis(), std::time::Instant::now());
                    let sent = refuse(stream, &refusal, &request_id).await;
                    if self.access_log.is_on() {
                        self.access_log.send(AccessRecord {
                            time_ms: refused_at.0,
                            client_ip,
                            text: RequestText::default(),
                            http_version: 11,
                            status: if sent { refusal.status } else { 0 },
                            bytes_in: 0,
                            bytes_out: 0,
                            duration_us: u64::try_from(refused_at.1.elapsed().as_micros())
                                .unwrap_or(u64::MAX),
                            upstream_addr: None,
                            upstream_us: None,
                            target: None,
                            kind: None,
                            cold_start_ms: None,
                            error: Some(refusal.code),
                            request_id,
                        });
                    }
                    return None;
                }
            };
            first_request = false;
            h2c = false;
            let _busy = self.drain.enter();
            let shutting_down = *shutdown.borrow() || self.drain.is_draining();
            if let Some(fast) = &self.fast {
                match fast
                    .serve(
                        &mut stream,
                        &mut buf,
                        &head,
                        Client {
                            ip: client_ip,
                            tls: is_tls,
                            conn_tls,
                        },
                        shutting_down,
                        &mut fast_buffers,
                    )
                    .await
                {
                    Outcome::Delegate => {}
                    Outcome::KeepAlive => continue,
                    Outcome::Close => {
                        if !buf.is_empty() {
                            // Unread pipelined input would turn the close into a
                            // reset that can destroy the last answer.
                            let _ = stream.shutdown().await;
                            linger(&mut stream).await;
                        }
                        return None;
                    }
                }
            }
            // Hand over this request's bytes only: the head, and what was read of
            // a Content-Length body. A chunked body's end is unknown here, so all
            // of it goes; Pingora closes the connection if it read past the end.
            let request_bytes = match head.body {
                BodyFraming::None => head.len,
                BodyFraming::Length(length) => {
                    let body = u64::try_from(buf.len() - head.len).unwrap_or(u64::MAX);
                    head.len + usize::try_from(length.min(body)).unwrap_or(0)
                }
                BodyFraming::Chunked => buf.len(),
            };
            let prefix = buf.split_to(request_bytes);
            let mut session = ServerSession::new_http1(stream);
            let options = self.options.load();
            if shutting_down {
                session.set_keepalive(None);
            } else {
                session.set_keepalive(Some(options.keepalive_timeout.as_secs().max(1)));
            }
            if head.body != BodyFraming::None {
                // Pingora's read timeout applies per read: the body's idle limit.
                session.set_read_timeout(Some(options.body_timeout));
            }
            // A client that stops reading must not hold a slot or an upstream.
            session.set_write_timeout(Some(options.write_timeout));
            drop(options);
            session.set_pipelined_prefix(prefix);
            let reused = self.proxy.process_new_http(session, &shutdown).await?;
            let (returned, _settings) = reused.consume();
            stream = returned;
        }
    }

    async fn cleanup(&self) {
        self.proxy.http_cleanup().await;
    }
}

/// Answers a refused request with `Connection: close`, then drains what the
/// client still sends for a moment so the answer is not lost to a reset.
/// True when the answer was written.
async fn refuse(mut stream: Stream, refusal: &Refusal, request_id: &RequestId) -> bool {
    let answer = ErrorAnswer {
        status: refusal.status,
        code: refusal.code,
        message: refusal.message.clone(),
        retry_after_secs: None,
    };
    if write_answer(&mut stream, &answer, refusal.accepts_json, request_id)
        .await
        .is_ok()
    {
        linger(&mut stream).await;
        return true;
    }
    false
}

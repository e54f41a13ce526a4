//! The fast path: the project's own proxying of plain HTTP/1.1 requests, with its
//! own per-thread upstream pool, in the connection loop and without
//! `pingora-proxy`. It serves a request only when the request is in the strict
//! subset ([`request`]), its host resolves to a version with a ready lease and a
//! free slot on the instance, and an upstream connection is at hand. Anything
//! else is handed back to the loop untouched and goes to `pingora-proxy`
//! (rejections, wakes, queueing, upgrades, odd requests), so behaviour there is
//! unchanged. It does what the Pingora path does for the same request: the same
//! resolution, forwarding headers, hop-by-hop removal, `x-ingress-version`,
//! activity and in-flight tracking, metrics, error answers, the request id and
//! the access-log line.

pub mod pool;
pub mod request;
pub mod response;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use pingora_core::protocols::Stream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::access_log::{AccessRecord, RequestText};
use crate::error_response::ErrorAnswer;
use crate::http1::answer::answer_bytes;
use crate::http1::head::Head;
use crate::instance_gate::is_fresh;
use crate::lease::Lease;
use crate::lease_source::LeaseAnswer;
use crate::request_id::RequestId;
use crate::resolve::resolve;
use crate::service::{upstream_error_answer, IngressProxy};
use crate::snapshot::Target;
use crate::time::now_unix_millis;
use crate::tls::{ConnTls, Verdict};
use pool::Conn;
use response::{BadResponse, Chunked, Framing, ParsedResponse, ResponseHead};

/// Idle connections kept before the next use are kept for at most this less
/// than the upstream's own `Keep-Alive: timeout`, so the upstream does not close
/// one just as it is reused.
const IDLE_MARGIN: Duration = Duration::from_secs(1);
/// The read size for response bodies, and for response heads (small, so an idle
/// connection keeps little).
const READ_CHUNK: usize = 16 * 1024;
const HEAD_CHUNK: usize = 4 * 1024;

/// How the fast path ended a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not served: the request's bytes are untouched; hand it to `pingora-proxy`.
    Delegate,
    /// Served; the connection may take another request.
    KeepAlive,
    /// Served (or the client left); close the connection.
    Close,
}

/// What the fast path knows of the client connection.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    /// The peer's address (`X-Forwarded-For`).
    pub ip: Option<IpAddr>,
    /// The connection is TLS.
    pub tls: bool,
    /// What it was handshaken with (TLS only).
    pub conn_tls: Option<&'a ConnTls>,
}

/// Buffers one client connection reuses across its requests.
#[derive(Default)]
pub struct Buffers {
    /// The request sent upstream.
    request: Vec<u8>,
    /// What the upstream sent.
    upstream: BytesMut,
    /// The response head (and first body bytes) sent to the client.
    client: Vec<u8>,
}

impl Buffers {
    /// Lets go of large buffers before the connection goes idle.
    pub fn trim(&mut self) {
        const KEEP: usize = 4 * 1024;
        if self.request.capacity() > KEEP {
            self.request = Vec::new();
        }
        if self.upstream.capacity() > KEEP {
            self.upstream = BytesMut::new();
        }
        if self.client.capacity() > KEEP {
            self.client = Vec::new();
        }
    }
}

/// The fast path, sharing the Pingora path's snapshots, leases, metrics and
/// options.
pub struct FastPath {
    proxy: IngressProxy,
    /// Idle upstream connections kept per thread.
    pool_cap: usize,
    /// `Strict-Transport-Security: ...\r\n` for TLS responses, or empty.
    hsts_line: Vec<u8>,
}

/// What a request needs after its head's bytes are no longer borrowed.
struct Plan {
    target: Arc<Target>,
    kind: crate::resolve::ResolutionKind,
    lease: Arc<Lease>,
    /// The lease came from the cache.
    lease_hit: bool,
    /// This request's round-robin turn, and its address.
    turn: usize,
    addr: SocketAddr,
    /// Matches `wake.ignore_*`: no activity is recorded.
    ignored: bool,
    /// When the request was resolved (Unix ms), also its activity time.
    now_ms: u64,
    idempotent: bool,
    head_method: bool,
    client_keep_alive: bool,
    accepts_json: bool,
    /// Head plus body bytes of the request in the loop's buffer.
    request_len: usize,
    /// The request came over TLS.
    tls: bool,
    request_id: RequestId,
    /// Request body bytes.
    body_len: u64,
    /// The request's strings for the access log; only when it is on.
    text: Option<RequestText>,
}

/// What the access log wants to know of an exchange beyond its status.
#[derive(Debug, Default)]
struct Tally {
    /// Response body bytes written to the client (chunked framing included).
    bytes_out: u64,
    /// From taking the upstream connection to its response head.
    upstream_us: Option<u64>,
    /// The code of the error answer given, if any.
    error: Option<&'static str>,
}

/// Why an exchange with the upstream failed before any response byte reached
/// the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Timeout,
    Closed,
    Invalid(BadResponse),
}

impl FastPath {
    /// A fast path over `proxy`'s state, keeping at most `pool_cap` idle upstream
    /// connections per thread.
    pub fn new(proxy: IngressProxy, pool_cap: usize) -> FastPath {
        let hsts_line = proxy
            .edge
            .as_ref()
            .and_then(|edge| edge.hsts())
            .map(|value| format!("strict-transport-security: {value}\r\n").into_bytes())
            .unwrap_or_default();
        FastPath {
            proxy,
            pool_cap,
            hsts_line,
        }
    }

    /// Serves the request whose head (`head`) starts `buf`, or returns
    /// [`Outcome::Delegate`] with `buf` untouched. On any other outcome the
    /// request's bytes have been taken out of `buf`.
    pub async fn serve(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        head: &Head,
        client: Client<'_>,
        shutting_down: bool,
        bufs: &mut Buffers,
    ) -> Outcome {
        let started = std::time::Instant::now();
        bufs.request.clear();
        let Some(mut plan) = self.plan(buf, head, client, shutting_down, &mut bufs.request) else {
            return Outcome::Delegate;
        };
        let mut tally = Tally::default();
        let write_limit = self.proxy.options().write_timeout;
        // The whole body, before anything goes upstream (at most request::MAX_BODY)
        // and before a slot is taken: a slow body never holds an instance's slot.
        if buf.len() < plan.request_len {
            match self.read_body(stream, buf, plan.request_len).await {
                Ok(()) => {}
                Err(answer) => {
                    let mut status = 0;
                    if let Some(answer) = answer {
                        let bytes = answer_bytes(&answer, plan.accepts_json, &plan.request_id);
                        if write_all(stream, &bytes, write_limit).await.is_ok() {
                            status = answer.status;
                        }
                        tally.error = Some(answer.code);
                    }
                    self.log(&mut plan, client, status, tally, started, false);
                    return Outcome::Close;
                }
            }
        }
        let slot = match plan.lease.gate_at(plan.turn) {
            Some(gate) => match gate.try_take() {
                Some(slot) => Some(slot),
                // A saturated instance: Pingora's path queues, watching the client.
                None => return Outcome::Delegate,
            },
            None => None,
        };
        let in_flight = (!plan.ignored).then(|| plan.target.activity.enter(plan.now_ms));
        let upstream_started = Instant::now();
        let mut conn = match pool::take(plan.addr) {
            Some(conn) => conn,
            None => match self.connect(plan.addr).await {
                Some(conn) => conn,
                // Nothing was sent: Pingora's path retries, backs off on a fresh
                // instance and answers the error.
                None => return Outcome::Delegate,
            },
        };
        let metrics = &self.proxy.metrics;
        if plan.lease_hit {
            metrics.lease_hits.inc();
        } else {
            metrics.lease_misses.inc();
        }
        bufs.request
            .extend_from_slice(&buf[head.len..plan.request_len]);
        buf.advance(plan.request_len);

        let outcome = self
            .exchange(stream, &plan, &mut conn, bufs, upstream_started, &mut tally)
            .await;
        let (status, next) = match outcome {
            Ok((status, reusable, idle_hint)) => {
                if reusable {
                    conn.uses += 1;
                    let idle_limit = self.proxy.options().upstream_idle_timeout;
                    let idle_for = idle_hint
                        .map(|hint| hint.saturating_sub(IDLE_MARGIN))
                        .unwrap_or(idle_limit)
                        .min(idle_limit);
                    pool::give_back(plan.addr, conn, idle_for, self.pool_cap);
                }
                let next = if plan.client_keep_alive && !self.proxy.drain.is_draining() {
                    Outcome::KeepAlive
                } else {
                    Outcome::Close
                };
                (status, next)
            }
            // An error answer (or a response cut short) closes the connection.
            Err(status) => (status, Outcome::Close),
        };
        self.proxy.metrics.count_request(plan.kind, status);
        plan.target.activity.count_answer(status);
        self.proxy.metrics.fast_path_requests.inc();
        drop((slot, in_flight));
        self.log(&mut plan, client, status, tally, started, true);
        bufs.trim();
        next
    }

    /// Hands the request's access-log record to the writer (when the log is on).
    fn log(
        &self,
        plan: &mut Plan,
        client: Client<'_>,
        status: u16,
        tally: Tally,
        started: std::time::Instant,
        went_upstream: bool,
    ) {
        let Some(text) = plan.text.take() else {
            return;
        };
        self.proxy.access_log.send(AccessRecord {
            time_ms: plan.now_ms,
            client_ip: client.ip,
            text,
            http_version: 11,
            status,
            bytes_in: plan.body_len,
            bytes_out: tally.bytes_out,
            duration_us: micros(started.elapsed()),
            upstream_addr: went_upstream.then_some(plan.addr),
            upstream_us: tally.upstream_us,
            target: Some(Arc::clone(&plan.target)),
            kind: Some(plan.kind),
            cold_start_ms: None,
            error: tally.error,
            request_id: plan.request_id,
        });
    }

    /// Decides whether the fast path serves this request, and writes the request
    /// head to send upstream into `out`.
    fn plan(
        &self,
        buf: &BytesMut,
        head: &Head,
        client: Client<'_>,
        shutting_down: bool,
        out: &mut Vec<u8>,
    ) -> Option<Plan> {
        let is_tls = client.tls;
        let request = request::parse(&buf[..head.len], head.body, client.ip, is_tls, out)?;
        // Redirects to https and 421s are answered by the Pingora path.
        if let Some(edge) = &self.proxy.edge {
            if edge.may_intervene(is_tls)
                && edge.verdict(
                    client.conn_tls,
                    is_tls,
                    request.host,
                    request.path.as_bytes(),
                ) != Verdict::Serve
            {
                return None;
            }
        }
        let now_ms = now_unix_millis();
        let (kind, target) = {
            let snapshot = self.proxy.snapshots.load();
            let resolved = resolve(&snapshot, request.host, now_ms).ok()?;
            (resolved.kind, Arc::clone(resolved.target))
        };
        // Lease hits and misses are counted once the request is served here, so
        // a request handed on is not counted twice.
        let (lease, lease_hit) = match self.proxy.leases.get(&target, now_ms) {
            Some(lease) => (lease, true),
            None => match self.proxy.lease_source.lease(&target) {
                // A fresh instance is left to the Pingora path (below), which
                // then takes the lease and counts the miss.
                Ok(LeaseAnswer::Ready(grant)) if !is_fresh(grant.ready_at_ms, now_ms) => {
                    (self.proxy.leases.insert(&target, grant, now_ms)?, false)
                }
                // Asleep, failed or unknown: the Pingora path wakes or answers.
                _ => return None,
            },
        };
        // A fresh instance (ready seconds ago) may still drop connects; the
        // Pingora path retries those with a back-off, so it serves them.
        if is_fresh(lease.ready_at_ms(), now_ms) {
            return None;
        }
        let turn = lease.next_turn();
        let addr = lease.addr_at(turn);
        let ignored = self
            .proxy
            .options()
            .ignore
            .ignores(request.path, request.user_agent);
        let request_len = head.len + usize::try_from(request.body).ok()?;
        // Copied only when the log is on; a request handed on to the Pingora
        // path drops it unused (rare: a full instance or a failed connect).
        let text = self.proxy.access_log.is_on().then(|| {
            RequestText::new(
                request.method.as_bytes(),
                request.host,
                request.target.as_bytes(),
                request.user_agent,
                request.referer,
            )
        });
        Some(Plan {
            request_id: request.request_id,
            body_len: request.body,
            text,
            now_ms,
            lease_hit,
            turn,
            addr,
            ignored,
            idempotent: request.idempotent,
            head_method: request.head_method,
            client_keep_alive: !request.close && !shutting_down,
            accepts_json: request.accepts_json,
            request_len,
            tls: is_tls,
            target,
            kind,
            lease,
        })
    }

    /// Reads the rest of a request body into `buf`; `Err(None)` when the client
    /// left, `Err(Some(answer))` when it stalled past `proxy.body_timeout`.
    async fn read_body(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        until: usize,
    ) -> Result<(), Option<ErrorAnswer>> {
        buf.reserve(until - buf.len());
        while buf.len() < until {
            let limit = self.proxy.options().body_timeout;
            let read = tokio::time::timeout(limit, stream.read_buf(buf)).await;
            match read {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err(None),
                Err(_) => {
                    return Err(Some(ErrorAnswer {
                        status: 408,
                        code: "body_timeout",
                        message: format!(
                            "the request body stalled for {}ms (proxy.body_timeout)",
                            self.proxy.options().body_timeout.as_millis()
                        ),
                        retry_after_secs: None,
                    }))
                }
            }
        }
        Ok(())
    }

    async fn connect(&self, addr: SocketAddr) -> Option<Conn> {
        let connect = TcpStream::connect(addr);
        let stream = tokio::time::timeout(self.proxy.options().connect_timeout, connect)
            .await
            .ok()?
            .ok()?;
        let _ = stream.set_nodelay(true);
        Some(Conn {
            stream,
            uses: 0,
            reused: false,
        })
    }

    /// Sends the request, relays the response, and says whether the upstream
    /// connection can be reused: `Ok((status, reusable, idle hint))`, or
    /// `Err(status)` after an error answer (0 when nothing could be answered).
    async fn exchange(
        &self,
        client: &mut Stream,
        plan: &Plan,
        conn: &mut Conn,
        bufs: &mut Buffers,
        upstream_started: Instant,
        tally: &mut Tally,
    ) -> Result<(u16, bool, Option<Duration>), u16> {
        let version_header = plan.target.version_header.as_bytes();
        let mut retried = false;
        let head = loop {
            bufs.upstream.clear();
            bufs.client.clear();
            match self
                .send_and_read_head(conn, plan, version_header, bufs)
                .await
            {
                Ok(head) => break head,
                // An idle connection the upstream closed as we reused it: nothing
                // was answered, so an idempotent request is sent again once on a
                // fresh connection (Pingora's rule, and nginx's).
                Err((Failure::Closed, false)) if conn.reused && plan.idempotent && !retried => {
                    retried = true;
                    match self.connect(plan.addr).await {
                        Some(fresh) => *conn = fresh,
                        None => {
                            return Err(self
                                .answer_failure(client, plan, Failure::Closed, tally)
                                .await)
                        }
                    }
                }
                Err((failure, _)) => {
                    return Err(self.answer_failure(client, plan, failure, tally).await)
                }
            }
        };
        let upstream_time = upstream_started.elapsed();
        self.proxy
            .metrics
            .upstream_latency
            .observe(upstream_time.as_secs_f64());
        tally.upstream_us = Some(micros(upstream_time));
        let status = head.status;
        match self.relay_body(client, conn, &head, bufs, tally).await {
            Ok(reusable) => Ok((status, reusable && head.keep_alive, head.idle_hint)),
            // The response had started: the client sees the connection end early.
            Err(()) => Err(status),
        }
    }

    /// Writes the request and reads up to the end of the response head, skipping
    /// informational answers. The `bool` of an error says whether any response
    /// byte had arrived.
    async fn send_and_read_head(
        &self,
        conn: &mut Conn,
        plan: &Plan,
        version_header: &[u8],
        bufs: &mut Buffers,
    ) -> Result<ResponseHead, (Failure, bool)> {
        let options = self.proxy.options();
        let write =
            tokio::time::timeout(options.write_timeout, conn.stream.write_all(&bufs.request));
        match write.await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err((Failure::Closed, false)),
            Err(_) => return Err((Failure::Timeout, false)),
        }
        loop {
            if bufs.upstream.capacity() - bufs.upstream.len() < 1024 {
                bufs.upstream.reserve(HEAD_CHUNK);
            }
            let any = !bufs.upstream.is_empty();
            let read = tokio::time::timeout(
                options.read_timeout,
                conn.stream.read_buf(&mut bufs.upstream),
            );
            match read.await {
                Ok(Ok(n)) if n > 0 => {}
                Ok(_) => return Err((Failure::Closed, any)),
                Err(_) => return Err((Failure::Timeout, any)),
            }
            // Decided when the answer starts: a stop that began while the
            // upstream worked closes the connection after this answer.
            let keep_alive = plan.client_keep_alive && !self.proxy.drain.is_draining();
            loop {
                match response::parse(
                    &bufs.upstream,
                    plan.head_method,
                    keep_alive,
                    version_header,
                    plan.request_id.as_bytes(),
                    if plan.tls { &self.hsts_line } else { &[] },
                    &mut bufs.client,
                ) {
                    ParsedResponse::Complete(head) => return Ok(head),
                    ParsedResponse::Informational(len) => {
                        bufs.upstream.advance(len);
                        if bufs.upstream.is_empty() {
                            break;
                        }
                    }
                    ParsedResponse::Partial => {
                        if bufs.upstream.len() > 64 * 1024 {
                            return Err((Failure::Invalid(BadResponse::Invalid), true));
                        }
                        break;
                    }
                    ParsedResponse::Bad(bad) => return Err((Failure::Invalid(bad), true)),
                }
            }
        }
    }

    /// Sends the response head and relays the body. `Ok(reusable)`: the body
    /// ended where its framing said, with nothing after it.
    async fn relay_body(
        &self,
        client: &mut Stream,
        conn: &mut Conn,
        head: &ResponseHead,
        bufs: &mut Buffers,
        tally: &mut Tally,
    ) -> Result<bool, ()> {
        let (read_timeout, write_limit) = {
            let options = self.proxy.options();
            (options.read_timeout, options.write_timeout)
        };
        bufs.upstream.advance(head.len);
        // What the client is sent beyond the head: counted as it is written.
        let head_out = bufs.client.len() as u64;
        match head.framing {
            Framing::None => {
                write_all(client, &bufs.client, write_limit).await?;
                Ok(bufs.upstream.is_empty())
            }
            Framing::Length(length) => {
                let mut left = length;
                let first = usize::try_from(left)
                    .unwrap_or(usize::MAX)
                    .min(bufs.upstream.len());
                bufs.client.extend_from_slice(&bufs.upstream[..first]);
                bufs.upstream.advance(first);
                left -= first as u64;
                write_all(client, &bufs.client, write_limit).await?;
                tally.bytes_out += bufs.client.len() as u64 - head_out;
                let extra = !bufs.upstream.is_empty();
                while left > 0 {
                    bufs.upstream.clear();
                    read_more(conn, &mut bufs.upstream, read_timeout).await?;
                    let take = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(bufs.upstream.len());
                    write_all(client, &bufs.upstream[..take], write_limit).await?;
                    tally.bytes_out += take as u64;
                    left -= take as u64;
                    if take < bufs.upstream.len() {
                        return Ok(false);
                    }
                }
                Ok(!extra)
            }
            Framing::Chunked => {
                let mut chunked = Chunked::default();
                let taken = chunked.feed(&bufs.upstream).map_err(drop)?;
                bufs.client.extend_from_slice(&bufs.upstream[..taken]);
                let mut extra = taken < bufs.upstream.len();
                write_all(client, &bufs.client, write_limit).await?;
                tally.bytes_out += bufs.client.len() as u64 - head_out;
                while !chunked.is_done() {
                    bufs.upstream.clear();
                    read_more(conn, &mut bufs.upstream, read_timeout).await?;
                    let taken = chunked.feed(&bufs.upstream).map_err(drop)?;
                    write_all(client, &bufs.upstream[..taken], write_limit).await?;
                    tally.bytes_out += taken as u64;
                    extra = taken < bufs.upstream.len();
                }
                Ok(!extra)
            }
            Framing::UntilClose => {
                // Re-framed as chunked for the client, as Pingora does.
                if !bufs.upstream.is_empty() {
                    push_chunk(&mut bufs.client, &bufs.upstream);
                }
                write_all(client, &bufs.client, write_limit).await?;
                tally.bytes_out += bufs.client.len() as u64 - head_out;
                loop {
                    bufs.upstream.clear();
                    if read_some(conn, &mut bufs.upstream, read_timeout).await? == 0 {
                        break;
                    }
                    bufs.client.clear();
                    push_chunk(&mut bufs.client, &bufs.upstream);
                    write_all(client, &bufs.client, write_limit).await?;
                    tally.bytes_out += bufs.client.len() as u64;
                }
                write_all(client, b"0\r\n\r\n", write_limit).await?;
                tally.bytes_out += 5;
                Ok(false)
            }
        }
    }

    /// Answers a failure before the response started; returns the status.
    async fn answer_failure(
        &self,
        client: &mut Stream,
        plan: &Plan,
        failure: Failure,
        tally: &mut Tally,
    ) -> u16 {
        let (status, reason) = match failure {
            Failure::Timeout => (504, "the upstream did not answer in time"),
            Failure::Closed => (502, "the upstream closed the connection"),
            Failure::Invalid(BadResponse::UnexpectedUpgrade) => {
                (502, "the upstream switched protocols without being asked")
            }
            Failure::Invalid(_) => (502, "the upstream sent an invalid response"),
        };
        let answer = upstream_error_answer(Some(&plan.target), status, reason);
        tally.error = Some(answer.code);
        let write_limit = self.proxy.options().write_timeout;
        let bytes = answer_bytes(&answer, plan.accepts_json, &plan.request_id);
        let _ = write_all(client, &bytes, write_limit).await;
        status
    }
}

/// Writes all of `bytes` to the client and flushes (Pingora's stream buffers
/// writes), within `limit`: a client that stops reading never holds a slot,
/// an in-flight count or an upstream connection for longer.
async fn write_all(client: &mut Stream, bytes: &[u8], limit: Duration) -> Result<(), ()> {
    let write = async {
        client.write_all(bytes).await?;
        client.flush().await
    };
    match tokio::time::timeout(limit, write).await {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}

/// Reads more of the body from the upstream: the bytes read, 0 at its end;
/// `Err` on a timeout or an error.
async fn read_some(conn: &mut Conn, into: &mut BytesMut, limit: Duration) -> Result<usize, ()> {
    into.reserve(READ_CHUNK);
    match tokio::time::timeout(limit, conn.stream.read_buf(into)).await {
        Ok(Ok(n)) => Ok(n),
        _ => Err(()),
    }
}

/// Like [`read_some`], where the end of the stream is an error (the framing
/// promised more).
async fn read_more(conn: &mut Conn, into: &mut BytesMut, limit: Duration) -> Result<(), ()> {
    match read_some(conn, into, limit).await? {
        0 => Err(()),
        _ => Ok(()),
    }
}

/// Whole microseconds of `elapsed`.
fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// Appends `data` as one chunk.
fn push_chunk(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

//! The Pingora `ProxyHttp` implementation. Each hook is thin: resolution, leases,
//! activity and error bodies live in their own modules.
//!
//! Request path, hook by hook:
//! - `request_filter`: normalise the Host, resolve against the current snapshot,
//!   answer 400/404/410/503 at once; record activity (unless `wake.ignore_*`
//!   matches); take a lease (cache, then the lease source). A sleeping version is
//!   woken: the request is held (bounded by `wake.max_waiters`, `wake.timeout` and
//!   the client staying connected), or a browser gets the "starting" page.
//! - `upstream_peer`: the lease's next address (round robin), with timeouts set.
//!   With `[tls]`, first: a plain request for a host a certificate covers gets
//!   308 to https, a TLS request for a host outside the connection's certificate
//!   421 ([`crate::tls::edge`]).
//! - `upstream_request_filter`: `X-Forwarded-For/-Proto/-Host`; an HTTP/2
//!   request's `cookie` fields joined into one (cloudflare/pingora#892).
//! - `request_body_filter`: an empty last body chunk dropped (cloudflare/pingora#935).
//! - `upstream_response_filter`: upstream latency.
//! - `response_filter`: `x-ingress-version`, `x-ingress-cold-start` on requests
//!   that were held while their version woke, and `Strict-Transport-Security` on
//!   TLS when configured.
//! - `fail_to_connect` / `fail_to_proxy`: retry another address, then a clear 502/504.
//! - `logging`: request counter by resolution kind and status class, and the
//!   access-log line ([`crate::access_log`]).
//!
//! Every request has an id ([`crate::request_id`]), taken in `request_filter`:
//! it goes upstream and back to the client in `X-Request-Id`, and into error
//! bodies and the access log.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::access_log::{AccessLog, AccessRecord, RequestText};
use crate::activity::InFlightGuard;
use crate::error_response::{accepts_json, connection_header_problem, starting_page, ErrorAnswer};
use crate::http1::drain::Drain;
use crate::instance_gate::{is_fresh, retransmitted, Exchange, Gate, Slot};
use crate::lease::{Lease, LeaseCache};
use crate::lease_source::{Grant, LeaseAnswer, LeaseError, LeaseSource};
use crate::metrics::{Metrics, WakeOutcome};
use crate::request_id::{self, RequestId};
use crate::resolve::{resolve, ResolutionKind};
use crate::snapshot::{SnapshotHandle, Target};
use crate::time::now_unix_millis;
use crate::tls::edge::{misdirected_answer, Edge, Verdict};
use crate::tls::ConnTls;
use crate::wake_rules::IgnoreRules;

/// Timeouts and limits of the proxy service.
#[derive(Debug, Clone)]
pub struct ProxyOptions {
    /// TCP connect to an upstream.
    pub connect_timeout: Duration,
    /// Between two reads from an upstream.
    pub read_timeout: Duration,
    /// One write to an upstream.
    pub write_timeout: Duration,
    /// Idle upstream keep-alive connection lifetime.
    pub upstream_idle_timeout: Duration,
    /// Longest a request is held while its version wakes (`wake.timeout`).
    pub wake_timeout: Duration,
    /// Requests held per version; past it, 503 at once (`wake.max_waiters`).
    pub max_waiters: u64,
    /// Serve browser GETs the "starting" page instead of holding them.
    pub wake_page: bool,
    /// Requests that neither wake a version nor count as activity.
    pub ignore: IgnoreRules,
    /// Longest wait for a slot on a saturated instance (`proxy.queue_timeout`).
    pub queue_timeout: Duration,
    /// Longest pause between two reads of a request body (`proxy.body_timeout`).
    pub body_timeout: Duration,
}

impl ProxyOptions {
    /// The options from the `[proxy]` and `[wake]` settings.
    pub fn from_config(config: &ingress_config::Config) -> ProxyOptions {
        ProxyOptions {
            connect_timeout: config.proxy.connect_timeout.0,
            read_timeout: config.proxy.read_timeout.0,
            write_timeout: config.proxy.write_timeout.0,
            upstream_idle_timeout: config.proxy.upstream_idle_timeout.0,
            wake_timeout: config.wake.timeout.0,
            max_waiters: config.wake.max_waiters as u64,
            wake_page: config.wake.mode == ingress_config::WakeMode::Page,
            ignore: IgnoreRules::new(&config.wake.ignore_paths, &config.wake.ignore_user_agents),
            queue_timeout: config.proxy.queue_timeout.0,
            body_timeout: config.proxy.body_timeout.0,
        }
    }
}

/// The ingress proxy: routes by host from the current snapshot to a version's
/// instances, waking the version first when it sleeps.
#[derive(Clone)]
pub struct IngressProxy {
    pub(crate) snapshots: Arc<SnapshotHandle>,
    pub(crate) leases: Arc<LeaseCache>,
    pub(crate) lease_source: Arc<dyn LeaseSource>,
    pub(crate) metrics: Arc<Metrics>,
    /// Swapped whole by a config reload ([`IngressProxy::live_options`]); read
    /// with one atomic load where used.
    pub(crate) options: Arc<ArcSwap<ProxyOptions>>,
    /// Set once a graceful stop began: answers say `Connection: close`.
    pub(crate) drain: Arc<Drain>,
    /// The `[tls]` request-path rules, when TLS is configured.
    pub(crate) edge: Option<Arc<Edge>>,
    /// Where each request's access-log line goes (off unless set).
    pub(crate) access_log: AccessLog,
}

/// How the lease step of a request ended when it did not produce a lease.
enum NoLease {
    /// Answer with this error.
    Answer(ErrorAnswer),
    /// Answer a browser with the "starting" page.
    StartingPage,
    /// The client hung up while held: answer nothing.
    ClientGone,
}

impl IngressProxy {
    /// A proxy reading `snapshots`, caching leases in `leases` and asking
    /// `lease_source` on a miss.
    pub fn new(
        snapshots: Arc<SnapshotHandle>,
        leases: LeaseCache,
        lease_source: Arc<dyn LeaseSource>,
        metrics: Arc<Metrics>,
        options: ProxyOptions,
    ) -> IngressProxy {
        IngressProxy {
            snapshots,
            leases: Arc::new(leases),
            lease_source,
            metrics,
            options: Arc::new(ArcSwap::from_pointee(options)),
            drain: Drain::new(),
            edge: None,
            access_log: AccessLog::off(),
        }
    }

    /// The proxy writing one access-log line per request to `log`.
    pub fn with_access_log(mut self, log: AccessLog) -> IngressProxy {
        self.access_log = log;
        self
    }

    /// The access log this proxy writes to (shared with the connection loop).
    pub fn access_log(&self) -> &AccessLog {
        &self.access_log
    }

    /// The proxy with the `[tls]` request-path rules (redirect, 421, HSTS).
    pub fn with_edge(mut self, edge: Edge) -> IngressProxy {
        self.edge = Some(Arc::new(edge));
        self
    }

    /// The HSTS value for a response on a TLS connection (`tls`).
    fn hsts(&self, tls: bool) -> Option<&str> {
        if !tls {
            return None;
        }
        self.edge.as_ref().and_then(|edge| edge.hsts())
    }

    /// The options every request reads; a config reload stores new ones here.
    pub fn live_options(&self) -> Arc<ArcSwap<ProxyOptions>> {
        Arc::clone(&self.options)
    }

    /// The options now (one atomic load).
    pub(crate) fn options(&self) -> arc_swap::Guard<Arc<ProxyOptions>> {
        self.options.load()
    }

    /// The drain state of a graceful stop, shared with the connection loop.
    pub fn drain(&self) -> &Arc<Drain> {
        &self.drain
    }

    /// The metrics this proxy reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// What `request`'s host routes to now, when that is another version than
    /// `target`'s.
    fn moved_on(&self, request: &RequestHeader, target: &Arc<Target>) -> Option<Arc<Target>> {
        let snapshot = self.snapshots.load();
        let resolved = resolve(&snapshot, request_host(request), now_unix_millis()).ok()?;
        (resolved.target.version_id != target.version_id).then(|| Arc::clone(resolved.target))
    }

    /// The lease of `target`: from the cache, else from the lease source, waking
    /// the version when it sleeps and this request may wake it.
    async fn lease_for(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        target: &Arc<Target>,
        ignored: bool,
        now_ms: u64,
    ) -> std::result::Result<Arc<Lease>, NoLease> {
        if let Some(lease) = self.leases.get(target, now_ms) {
            self.metrics.lease_hits.inc();
            return Ok(lease);
        }
        self.metrics.lease_misses.inc();
        let grant = match self.lease_source.lease(target) {
            Ok(LeaseAnswer::Ready(grant)) => grant,
            Ok(LeaseAnswer::Asleep) => self.wake(session, ctx, target, ignored).await?,
            Err(error) => return Err(NoLease::Answer(lease_error_answer(&error))),
        };
        // Stamp the lease with the time it was granted, not when the request began.
        self.leases
            .insert(target, grant, now_unix_millis())
            .ok_or_else(|| {
                NoLease::Answer(lease_error_answer(&LeaseError::Failed {
                    reason: format!(
                        "version {} of app {} has no ready instance",
                        target.version_id, target.app
                    ),
                }))
            })
    }

    /// Wakes a sleeping version for this request (SPEC §4): answers at once when
    /// the request may not wake it, serves browsers the "starting" page in page
    /// mode, and otherwise holds the request (bounded in number and time, and
    /// released when the client hangs up) until the version is ready.
    async fn wake(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        target: &Arc<Target>,
        ignored: bool,
    ) -> std::result::Result<Grant, NoLease> {
        if ignored {
            self.metrics.count_wake(WakeOutcome::Ignored);
            return Err(NoLease::Answer(ErrorAnswer {
                status: 503,
                code: "version_asleep",
                message: format!(
                    "version {} of app {} is not running, and requests matching wake.ignore_paths or wake.ignore_user_agents do not wake it",
                    target.version_id, target.app
                ),
                retry_after_secs: Some(5),
            }));
        }
        if self.options.load().wake_page && wants_page(session.req_header()) {
            self.metrics.count_wake(WakeOutcome::Page);
            let source = Arc::clone(&self.lease_source);
            let woken = Arc::clone(target);
            let limit = self.options.load().wake_timeout;
            // The page reloads itself; the start runs on without this request.
            tokio::spawn(async move {
                let _ = tokio::time::timeout(limit, source.wake(&woken)).await;
            });
            return Err(NoLease::StartingPage);
        }
        let Some(_waiting) = target.activity.try_wait(self.options.load().max_waiters) else {
            self.metrics.count_wake(WakeOutcome::Overflow);
            return Err(NoLease::Answer(ErrorAnswer {
                status: 503,
                code: "too_many_waiting",
                message: format!(
                    "version {} of app {} is starting and already has {} requests waiting (wake.max_waiters); try again shortly",
                    target.version_id, target.app, self.options.load().max_waiters
                ),
                retry_after_secs: Some(1),
            }));
        };
        let started = Instant::now();
        let waking = tokio::time::timeout(
            self.options.load().wake_timeout,
            self.lease_source.wake(target),
        );
        match unless_client_leaves(session, waking).await {
            None => {
                self.metrics.count_wake(WakeOutcome::ClientGone);
                Err(NoLease::ClientGone)
            }
            Some(Err(_elapsed)) => {
                self.metrics.count_wake(WakeOutcome::Timeout);
                Err(NoLease::Answer(ErrorAnswer {
                    status: 503,
                    code: "wake_timeout",
                    message: format!(
                        "version {} of app {} is starting and was not ready within {}ms (wake.timeout); try again shortly",
                        target.version_id,
                        target.app,
                        self.options.load().wake_timeout.as_millis()
                    ),
                    retry_after_secs: Some(2),
                }))
            }
            Some(Ok(Err(error))) => {
                self.metrics.count_wake(WakeOutcome::Failed);
                Err(NoLease::Answer(lease_error_answer(&error)))
            }
            Some(Ok(Ok(grant))) => {
                let waited = started.elapsed();
                self.metrics.count_wake(WakeOutcome::Served);
                self.metrics.wake_wait.observe(waited.as_secs_f64());
                ctx.cold_start_ms = Some(u64::try_from(waited.as_millis()).unwrap_or(u64::MAX));
                Ok(grant)
            }
        }
    }
}

/// Runs `wait` while watching the client: `None` when it hangs up first. A
/// request without a body can watch its connection while it waits; one with a
/// body cannot without consuming the body, so it waits `wait` out.
async fn unless_client_leaves<F: std::future::Future>(
    session: &mut Session,
    wait: F,
) -> Option<F::Output> {
    if !session.is_body_empty() {
        return Some(wait.await);
    }
    let downstream = session.as_downstream_mut();
    tokio::select! {
        outcome = wait => Some(outcome),
        _ = downstream.read_body_or_idle(true) => None,
    }
}

fn client_gone(why: &'static str) -> Box<Error> {
    let mut error = Error::explain(ErrorType::ConnectionClosed, why);
    error.esource = ErrorSource::Downstream;
    error
}

impl IngressProxy {
    /// A slot on the instance behind `gate`: at once when one is free, else after
    /// waiting in line for at most `proxy.queue_timeout` (then 503, kept in
    /// `ctx.answer`), unless the client hangs up first.
    async fn take_slot(
        &self,
        session: &mut Session,
        gate: Arc<Gate>,
        ctx: &mut RequestCtx,
    ) -> Result<Slot> {
        if let Some(slot) = gate.try_take() {
            return Ok(slot);
        }
        let started = Instant::now();
        let waited = {
            // A guard, so the gauge is right even if this future is dropped.
            let _queued = GaugeGuard::inc(&self.metrics.queue_length);
            unless_client_leaves(
                session,
                tokio::time::timeout(self.options.load().queue_timeout, gate.take()),
            )
            .await
        };
        match waited {
            Some(Ok(slot)) => {
                self.metrics
                    .queue_wait
                    .observe(started.elapsed().as_secs_f64());
                Ok(slot)
            }
            None => Err(client_gone(
                "the client hung up while waiting for a slot on its instance",
            )),
            Some(Err(_)) => {
                self.metrics.queue_rejections.inc();
                let target = ctx.target.as_deref();
                let limit = match gate.narrowed_to() {
                    Some(limit) => format!(
                        "{limit} requests (a narrower limit while the instance starts; it widens to runtime.max_conns_per_instance)"
                    ),
                    None => format!(
                        "{} requests (runtime.max_conns_per_instance)",
                        self.leases.instance_limit()
                    ),
                };
                ctx.answer = Some(ErrorAnswer {
                    status: 503,
                    code: "instance_saturated",
                    message: format!(
                        "{}every instance is busy with {limit} and none freed a slot within {}ms (proxy.queue_timeout); try again shortly",
                        target.map_or(String::new(), |t| format!("version {} of app {}: ", t.version_id, t.app)),
                        self.options.load().queue_timeout.as_millis()
                    ),
                    retry_after_secs: Some(1),
                });
                Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "no slot on the instance within proxy.queue_timeout",
                ))
            }
        }
    }
}

/// Holds a gauge one higher for as long as it lives.
struct GaugeGuard<'a>(&'a prometheus::IntGauge);

impl<'a> GaugeGuard<'a> {
    fn inc(gauge: &'a prometheus::IntGauge) -> GaugeGuard<'a> {
        gauge.inc();
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn lease_error_answer(error: &LeaseError) -> ErrorAnswer {
    ErrorAnswer {
        status: error.status(),
        code: error.code(),
        message: error.to_string(),
        retry_after_secs: error.retry_after_secs(),
    }
}

/// A browser navigation: a GET that accepts HTML.
fn wants_page(request: &RequestHeader) -> bool {
    request.method == http::Method::GET
        && request.headers.get(header::ACCEPT).is_some_and(|accept| {
            accept
                .as_bytes()
                .windows(9)
                .any(|w| w.eq_ignore_ascii_case(b"text/html"))
        })
}

/// Removes the fields the upstream names in its `Connection` header: they are
/// hop-by-hop (RFC 9110 §7.6.1), and Pingora passes them on. Allocates only
/// when such a nomination exists.
fn remove_nominated_fields(response: &mut ResponseHeader) {
    let nominated: Vec<String> = response
        .headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|value| value.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|token| {
            !token.is_empty()
                && !token.eq_ignore_ascii_case(b"close")
                && !token.eq_ignore_ascii_case(b"keep-alive")
        })
        .map(|token| String::from_utf8_lossy(token).into_owned())
        .collect();
    for name in nominated {
        response.remove_header(name.as_str());
    }
}

/// At most this many such retries per request (about 4 s of pauses).
const MAX_FRESH_RETRIES: u32 = 12;

/// The pause before retrying a failed connect to `lease`'s instances, when they
/// became ready within [`crate::instance_gate::FRESH_WINDOW_MS`]: nothing was sent, so a retry is safe
/// for any method. 25 ms, doubling to 500 ms.
fn fresh_retry_pause(lease: &Lease, retries_so_far: u32, now_ms: u64) -> Option<Duration> {
    (is_fresh(lease.ready_at_ms(), now_ms) && retries_so_far < MAX_FRESH_RETRIES)
        .then(|| Duration::from_millis((25u64 << retries_so_far.min(5)).min(500)))
}

/// Per-request state shared across hooks.
#[derive(Default)]
pub struct RequestCtx {
    /// When the request's head was complete: Unix ms for the log line, and an
    /// instant for its duration.
    started_ms: u64,
    started: Option<Instant>,
    /// The request's id; taken from the request at the first hook that needs it.
    request_id: Option<RequestId>,
    /// The last upstream address tried, and its time to the response head.
    upstream_addr: Option<SocketAddr>,
    upstream_us: Option<u64>,
    /// The code of the error answer the proxy gave, for the access log.
    error: Option<&'static str>,
    kind: Option<ResolutionKind>,
    target: Option<Arc<Target>>,
    lease: Option<Arc<Lease>>,
    in_flight: Option<InFlightGuard>,
    upstream_started: Option<Instant>,
    /// The round-robin turn of this request's first upstream address.
    first_turn: Option<usize>,
    failed_connects: usize,
    /// Milliseconds this request was held while its version woke.
    cold_start_ms: Option<u64>,
    /// This request's slot on its instance (`runtime.max_conns_per_instance`),
    /// held until the exchange ends.
    slot: Option<Slot>,
    /// The upstream socket, kept while the slot's verdict is wanted.
    upstream_fd: Option<std::os::unix::io::RawFd>,
    /// Connect retries on a fresh instance so far, and the pause before the next.
    fresh_retries: u32,
    connect_backoff: Option<Duration>,
    /// The answer to give when proxying fails for a reason the proxy chose.
    answer: Option<ErrorAnswer>,
    /// The request arrived over TLS.
    tls: bool,
}

impl RequestCtx {
    /// This request's id: the client's `X-Request-Id` when it sent exactly one
    /// valid one, else a new one. Fixed at the first call.
    fn request_id(&mut self, request: &RequestHeader) -> RequestId {
        if let Some(id) = self.request_id {
            return id;
        }
        let mut values = request.headers.get_all(request_id::HEADER).iter();
        let only = match (values.next(), values.next()) {
            (Some(value), None) => Some(value.as_bytes()),
            _ => None,
        };
        let (id, _from_client) = RequestId::accept_or_generate(only);
        self.request_id = Some(id);
        id
    }
}

/// The access-log record of a request the Pingora path served (or answered).
fn access_record(session: &Session, ctx: &mut RequestCtx) -> AccessRecord {
    let request = session.req_header();
    let request_id = ctx.request_id(request);
    let header = |name: header::HeaderName| request.headers.get(name).map(|v| v.as_bytes());
    let host = match request.uri.authority() {
        Some(authority) => authority.as_str().as_bytes(),
        None => header(header::HOST).unwrap_or_default(),
    };
    let target = request.uri.path_and_query().map_or("", |p| p.as_str());
    AccessRecord {
        time_ms: ctx.started_ms,
        client_ip: session
            .client_addr()
            .and_then(|addr| addr.as_inet())
            .map(|addr| addr.ip()),
        text: RequestText::new(
            request.method.as_str().as_bytes(),
            host,
            target.as_bytes(),
            header(header::USER_AGENT),
            header(header::REFERER),
        ),
        http_version: match request.version {
            http::Version::HTTP_10 | http::Version::HTTP_09 => 10,
            http::Version::HTTP_2 => 20,
            _ => 11,
        },
        status: session
            .response_written()
            .map_or(0, |response| response.status.as_u16()),
        bytes_in: session.body_bytes_read() as u64,
        bytes_out: session.body_bytes_sent() as u64,
        duration_us: ctx.started.map_or(0, |started| micros(started.elapsed())),
        upstream_addr: ctx.upstream_addr,
        upstream_us: ctx.upstream_us,
        target: ctx.target.clone(),
        kind: ctx.kind,
        cold_start_ms: ctx.cold_start_ms,
        error: ctx.error,
        request_id,
    }
}

/// Whole microseconds of `elapsed`.
fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// Joins several `cookie` fields into one `Cookie: a=1; b=2` for an HTTP/1
/// upstream: HTTP/2 clients may split cookies into one field each (RFC 9113
/// §8.2.3), and Pingora passes them on as they came (cloudflare/pingora#892).
fn join_cookies(request: &mut RequestHeader) -> Result<()> {
    let cookies = request.headers.get_all(header::COOKIE);
    if cookies.iter().nth(1).is_none() {
        return Ok(());
    }
    let mut joined = Vec::new();
    for value in cookies.iter() {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(value.as_bytes());
    }
    request.remove_header(&header::COOKIE);
    let value = http::HeaderValue::from_bytes(&joined)
        .map_err(|e| Error::because(ErrorType::InvalidHTTPHeader, "joining cookie fields", e))?;
    request.insert_header(header::COOKIE, value)
}

/// The raw host of the request: the URI authority (HTTP/2, absolute-form) or the
/// Host header.
fn request_host(request: &RequestHeader) -> &[u8] {
    if let Some(authority) = request.uri.authority() {
        return authority.host().as_bytes();
    }
    request
        .headers
        .get(header::HOST)
        .map_or(&b""[..], |value| value.as_bytes())
}

/// Answers with `answer`, as JSON when the client accepts JSON, with the
/// request id in the body and in `X-Request-Id`; notes its code for the access
/// log. Only error paths look at `Accept`, so a proxied request never pays for
/// it.
async fn write_error(
    session: &mut Session,
    answer: &ErrorAnswer,
    hsts: Option<&str>,
    ctx: &mut RequestCtx,
) -> Result<()> {
    ctx.error = Some(answer.code);
    let request_id = ctx.request_id(session.req_header());
    let accept = session.req_header().headers.get(header::ACCEPT);
    let json = accepts_json(accept.map(|v| v.as_bytes()));
    let (content_type, body) = answer.body(json, &request_id);
    let mut response = ResponseHeader::build(answer.status, Some(5))?;
    response.insert_header(request_id::HEADER, request_id.as_str())?;
    response.insert_header(header::CONTENT_TYPE, content_type)?;
    response.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
    if let Some(seconds) = answer.retry_after_secs {
        response.insert_header(header::RETRY_AFTER, seconds.to_string())?;
    }
    if let Some(hsts) = hsts {
        response.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts)?;
    }
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// Answers 308 to `location` (method and body are kept by the client).
async fn write_redirect(
    session: &mut Session,
    location: &str,
    request_id: &RequestId,
) -> Result<()> {
    let body = format!("moved to {location}\n");
    let mut response = ResponseHeader::build(308, Some(5))?;
    response.insert_header(request_id::HEADER, request_id.as_str())?;
    response.insert_header(header::LOCATION, location)?;
    response.insert_header(header::CONTENT_TYPE, "text/plain; charset=utf-8")?;
    response.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session
        .write_response_body(Some(bytes::Bytes::from(body)), true)
        .await
}

/// Answers a browser with the self-refreshing "starting" page.
async fn write_starting_page(
    session: &mut Session,
    target: &Target,
    request_id: &RequestId,
) -> Result<()> {
    let body = starting_page(&target.app, &target.version_id);
    let mut response = ResponseHeader::build(503, Some(6))?;
    response.insert_header(request_id::HEADER, request_id.as_str())?;
    response.insert_header(header::CONTENT_TYPE, "text/html; charset=utf-8")?;
    response.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
    response.insert_header(header::RETRY_AFTER, "2")?;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await
}

/// The answer to a failed exchange with an upstream: `reason` for the version of
/// `target`, coded `upstream_timeout` (504) or `upstream_error`.
pub(crate) fn upstream_error_answer(
    target: Option<&Target>,
    status: u16,
    reason: &str,
) -> ErrorAnswer {
    let message = match target {
        Some(target) => format!(
            "version {} of app {}: {reason}",
            target.version_id, target.app
        ),
        None => reason.to_string(),
    };
    ErrorAnswer {
        status,
        code: if status == 504 {
            "upstream_timeout"
        } else {
            "upstream_error"
        },
        message,
        retry_after_secs: None,
    }
}

fn describe_upstream_error(error: &Error) -> (u16, &'static str) {
    match error.etype() {
        ErrorType::ConnectTimedout => (504, "the connection to the upstream timed out"),
        ErrorType::ReadTimedout => (504, "the upstream did not answer in time"),
        ErrorType::WriteTimedout => (504, "writing to the upstream timed out"),
        ErrorType::ConnectRefused => (502, "the upstream refused the connection"),
        ErrorType::ConnectNoRoute => (502, "there is no route to the upstream"),
        ErrorType::ConnectionClosed => (502, "the upstream closed the connection"),
        ErrorType::InvalidHTTPHeader => (502, "the upstream sent an invalid response"),
        _ => (502, "the upstream could not be reached"),
    }
}

#[async_trait]
impl ProxyHttp for IngressProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        // Pingora makes the context once the request head is read.
        RequestCtx {
            started_ms: now_unix_millis(),
            started: Some(Instant::now()),
            ..RequestCtx::default()
        }
    }

    /// No downstream modules: Pingora's default adds a compression module that is
    /// disabled (level 0) yet still costs an allocation and filter calls per
    /// request.
    fn init_downstream_modules(&self, _modules: &mut pingora_core::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if session.is_http2() {
            // Pingora gives HTTP/2 streams no write timeout: a client that never
            // opens its flow-control window would hold the stream, its upstream
            // connection and its instance slot forever. (The connection loop sets
            // it on HTTP/1 sessions.)
            session.set_write_timeout(Some(self.options.load().write_timeout));
        }
        let request_id = ctx.request_id(session.req_header());
        if let Some(edge) = &self.edge {
            let digest = session.digest();
            ctx.tls = digest.is_some_and(|d| d.ssl_digest.is_some());
            let request = session.req_header();
            let target = request
                .uri
                .path_and_query()
                .map_or(&b"/"[..], |p| p.as_str().as_bytes());
            match edge.verdict(ConnTls::of(digest), ctx.tls, request_host(request), target) {
                Verdict::Serve => {}
                Verdict::Redirect(location) => {
                    write_redirect(session, &location, &request_id).await?;
                    return Ok(true);
                }
                Verdict::Misdirected(host) => {
                    let answer = misdirected_answer(&host);
                    write_error(session, &answer, self.hsts(ctx.tls), ctx).await?;
                    return Ok(true);
                }
            }
        }
        let request = session.req_header();
        let now_ms = now_unix_millis();
        let resolved = {
            let snapshot = self.snapshots.load();
            resolve(&snapshot, request_host(request), now_ms)
                .map(|resolved| (resolved.kind, Arc::clone(resolved.target)))
        };
        let mut target = match resolved {
            Ok((kind, target)) => {
                ctx.kind = Some(kind);
                target
            }
            Err(rejection) => {
                ctx.kind = Some(rejection.kind());
                let answer = ErrorAnswer {
                    status: rejection.status(),
                    code: rejection.code(),
                    message: rejection.to_string(),
                    retry_after_secs: None,
                };
                write_error(session, &answer, self.hsts(ctx.tls), ctx).await?;
                return Ok(true);
            }
        };
        // Known from here on, so the access log names the app and version of a
        // request that fails later (a wake that times out, say).
        ctx.target = Some(Arc::clone(&target));
        let request = session.req_header();
        let user_agent = request
            .headers
            .get(header::USER_AGENT)
            .map(|v| v.as_bytes());
        let ignored = self
            .options
            .load()
            .ignore
            .ignores(request.uri.path(), user_agent);
        if !ignored {
            ctx.in_flight = Some(target.activity.enter(now_ms));
        }
        let mut lease = self.lease_for(session, ctx, &target, ignored, now_ms).await;
        if matches!(lease, Err(NoLease::Answer(_))) {
            // The host may have moved on while this request waited (its label
            // redeployed: the version it woke is gone). Once, with what the
            // host routes to now.
            if let Some(next) = self.moved_on(session.req_header(), &target) {
                let now_ms = now_unix_millis();
                if !ignored {
                    ctx.in_flight = Some(next.activity.enter(now_ms));
                }
                target = next;
                ctx.target = Some(Arc::clone(&target));
                lease = self.lease_for(session, ctx, &target, ignored, now_ms).await;
            }
        }
        match lease {
            Ok(lease) => ctx.lease = Some(lease),
            Err(NoLease::Answer(answer)) => {
                write_error(session, &answer, self.hsts(ctx.tls), ctx).await?;
                return Ok(true);
            }
            Err(NoLease::StartingPage) => {
                write_starting_page(session, &target, &request_id).await?;
                return Ok(true);
            }
            Err(NoLease::ClientGone) => {
                return Err(client_gone(
                    "the client hung up while its version was waking",
                ));
            }
        }
        ctx.target = Some(target);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let lease = ctx
            .lease
            .clone()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no lease for this request"))?;
        // The first attempt takes the next round-robin turn; each retry after a
        // failed connect moves on to the lease's next address.
        let first_turn = *ctx.first_turn.get_or_insert_with(|| lease.next_turn());
        let turn = first_turn + ctx.failed_connects;
        let addr: SocketAddr = lease.addr_at(turn);
        // A retry gives its earlier slot back before it pauses and queues again.
        ctx.slot = None;
        if let Some(pause) = ctx.connect_backoff.take() {
            tokio::time::sleep(pause).await;
        }
        if let Some(gate) = lease.gate_at(turn) {
            let gate = Arc::clone(gate);
            ctx.slot = Some(self.take_slot(session, gate, ctx).await?);
        }
        let mut peer = HttpPeer::new(addr, false, String::new());
        let options = self.options.load();
        peer.options.connection_timeout = Some(options.connect_timeout);
        peer.options.total_connection_timeout = Some(options.connect_timeout);
        peer.options.read_timeout = Some(options.read_timeout);
        peer.options.write_timeout = Some(options.write_timeout);
        peer.options.idle_timeout = Some(options.upstream_idle_timeout);
        ctx.upstream_started = Some(Instant::now());
        ctx.upstream_addr = Some(addr);
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Try each address of the lease once before giving up; keep trying, with
        // a pause, an instance that only just became ready.
        ctx.failed_connects += 1;
        // A fresh instance that refuses or drops a connect is overrun: its
        // adaptive limit halves (the slot is given back at the retry).
        if let Some(slot) = &mut ctx.slot {
            slot.judge(Exchange::Congested);
        }
        let Some(lease) = &ctx.lease else {
            return e;
        };
        let mut retry = ctx.failed_connects < lease.addrs().len();
        if !retry {
            if let Some(pause) = fresh_retry_pause(lease, ctx.fresh_retries, now_unix_millis()) {
                ctx.fresh_retries += 1;
                ctx.connect_backoff = Some(pause);
                retry = true;
            }
        }
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(client) = session.client_addr().and_then(|addr| addr.as_inet()) {
            let ip = client.ip();
            let forwarded_for = match upstream_request
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(earlier) => format!("{earlier}, {ip}"),
                None => ip.to_string(),
            };
            upstream_request.insert_header("x-forwarded-for", forwarded_for)?;
        }
        let proto = if ctx.tls { "https" } else { "http" };
        upstream_request.insert_header("x-forwarded-proto", proto)?;
        if session.is_http2() {
            join_cookies(upstream_request)?;
        }
        if let Some(host) = upstream_request.headers.get(header::HOST).cloned() {
            upstream_request.insert_header("x-forwarded-host", host)?;
        }
        // Set whether or not it came from the client: Pingora drops the fields
        // a `Connection` header names (`Connection: x-request-id`) before this
        // filter runs, and any other client value is replaced.
        let request_id = ctx.request_id(session.req_header());
        upstream_request.insert_header(request_id::HEADER, request_id.as_str())?;
        Ok(())
    }

    async fn connected_to_upstream(
        &self,
        _session: &mut Session,
        reused: bool,
        _peer: &HttpPeer,
        fd: std::os::unix::io::RawFd,
        _digest: Option<&pingora_core::protocols::Digest>,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // Only a new connection to an instance whose limit adapts is judged: a
        // reused one did not pass its accept queue.
        ctx.upstream_fd = None;
        if let Some(slot) = &mut ctx.slot {
            if reused || !slot.wants_verdict() {
                slot.judge(Exchange::Unknown);
            } else {
                // Trouble until its answer begins: an exchange that ends first
                // (a timeout, the client leaving) may leave its connection in
                // the instance's accept queue after the slot is given back.
                slot.judge(Exchange::Congested);
                ctx.upstream_fd = Some(fd);
            }
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        // The answer began: a clean exchange unless the kernel had to retransmit
        // the handshake or the request (the instance's accept queue overflowed).
        if let (Some(fd), Some(slot)) = (ctx.upstream_fd.take(), &mut ctx.slot) {
            slot.judge(match retransmitted(fd) {
                Some(false) => Exchange::Clean,
                Some(true) => Exchange::Congested,
                None => Exchange::Unknown,
            });
        }
        if let Some(started) = ctx.upstream_started.take() {
            let elapsed = started.elapsed();
            self.metrics.upstream_latency.observe(elapsed.as_secs_f64());
            ctx.upstream_us = Some(micros(elapsed));
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if self.drain.is_draining() {
            // A stop began while this request was in progress: close after it.
            session.set_keepalive(None);
        }
        // A 101 names `Upgrade` in `Connection`, and the client needs it.
        if upstream_response.status != 101 {
            remove_nominated_fields(upstream_response);
        }
        if let Some(target) = &ctx.target {
            upstream_response.insert_header("x-ingress-version", target.version_header.clone())?;
        }
        if let Some(waited_ms) = ctx.cold_start_ms {
            upstream_response.insert_header("x-ingress-cold-start", waited_ms.to_string())?;
        }
        let request_id = ctx.request_id(session.req_header());
        upstream_response.insert_header(request_id::HEADER, request_id.as_str())?;
        if let Some(hsts) = self.hsts(ctx.tls) {
            upstream_response.insert_header(header::STRICT_TRANSPORT_SECURITY, hsts)?;
        }
        Ok(())
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<bytes::Bytes>,
        end_of_stream: bool,
        _ctx: &mut RequestCtx,
    ) -> Result<()> {
        // cloudflare/pingora#935: an HTTP/2 body of unknown length that ends with
        // an empty DATA frame would be sent to an HTTP/1 upstream as two final
        // chunks, the second corrupting the pooled connection's next request.
        if end_of_stream && body.as_ref().is_some_and(|b| b.is_empty()) {
            *body = None;
        }
        Ok(())
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        // Once the response has started, an error cannot be answered any more: the
        // client sees the connection end early, never a message inside the body.
        if let Some(started) = session.response_written() {
            return FailToProxy {
                error_code: started.status.as_u16(),
                can_reuse_downstream: false,
            };
        }
        // The connection is never reused after a failure (a body may be half
        // read), so the answer must say so: `Connection: close`.
        session.set_keepalive(None);
        // An answer the proxy chose itself (a full queue), or, when Pingora
        // refused to build the upstream request because `Connection` nominates a
        // header the proxy must forward, one that says so instead of "could not
        // be read".
        let chosen = ctx.answer.take().or_else(|| {
            let nominations = e.esource() == &ErrorSource::Downstream
                && e.etype() == &ErrorType::InvalidHTTPHeader;
            let connection = session.req_header().headers.get_all(header::CONNECTION);
            nominations
                .then(|| connection_header_problem(connection.iter().map(|v| v.as_bytes())))
                .flatten()
        });
        if let Some(answer) = chosen {
            if let Err(write_error) = write_error(session, &answer, self.hsts(ctx.tls), ctx).await {
                log::debug!("could not send the error response: {write_error}");
            }
            return FailToProxy {
                error_code: answer.status,
                can_reuse_downstream: false,
            };
        }
        let (status, reason) = match e.etype() {
            ErrorType::HTTPStatus(code) => (*code, "the request failed"),
            _ => match e.esource() {
                ErrorSource::Upstream => describe_upstream_error(e),
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => {
                        (0, "the client went away")
                    }
                    _ => (400, "the request could not be read"),
                },
                ErrorSource::Internal | ErrorSource::Unset => {
                    (500, "the ingress failed internally")
                }
            },
        };
        if status > 0 {
            let answer = upstream_error_answer(ctx.target.as_deref(), status, reason);
            if let Err(write_error) = write_error(session, &answer, self.hsts(ctx.tls), ctx).await {
                log::debug!("could not send the error response: {write_error}");
            }
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        if let Some(kind) = ctx.kind {
            let status = session
                .response_written()
                .map_or(0, |response| response.status.as_u16());
            self.metrics.count_request(kind, status);
            if let Some(target) = &ctx.target {
                target.activity.count_answer(status);
            }
        }
        ctx.slot = None;
        ctx.in_flight = None;
        if self.access_log.is_on() {
            self.access_log.send(access_record(session, ctx));
        }
    }
}

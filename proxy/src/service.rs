//! The Pingora `ProxyHttp` implementation. Each hook is thin: resolution, leases,
//! activity and error bodies live in their own modules.
//!
//! Request path, hook by hook:
//! - `request_filter`: normalise the Host, resolve against the current snapshot,
//!   answer 400/404/410/503 at once; record activity; take a lease (cache, then the
//!   lease source), answer 502/503 if none.
//! - `upstream_peer`: the lease's next address (round robin), with timeouts set.
//! - `upstream_request_filter`: `X-Forwarded-For/-Proto/-Host`.
//! - `upstream_response_filter`: upstream latency.
//! - `response_filter`: `x-ingress-version`.
//! - `fail_to_connect` / `fail_to_proxy`: retry another address, then a clear 502/504.
//! - `logging`: request counter by resolution kind and status class.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use http::header;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result};
use pingora_http::{RequestHeader, ResponseHeader};
use pingora_proxy::{FailToProxy, ProxyHttp, Session};

use crate::activity::InFlightGuard;
use crate::error_response::{accepts_json, ErrorAnswer};
use crate::lease::{Lease, LeaseCache};
use crate::lease_source::{LeaseError, LeaseSource};
use crate::metrics::Metrics;
use crate::resolve::{resolve, ResolutionKind};
use crate::snapshot::{SnapshotHandle, Target};
use crate::time::now_unix_millis;

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
    /// Longest wait for the lease source to grant a lease.
    pub lease_wait: Duration,
}

impl ProxyOptions {
    /// The options from the `[proxy]` and `[wake]` settings.
    pub fn from_config(config: &ingress_config::Config) -> ProxyOptions {
        ProxyOptions {
            connect_timeout: config.proxy.connect_timeout.0,
            read_timeout: config.proxy.read_timeout.0,
            write_timeout: config.proxy.write_timeout.0,
            upstream_idle_timeout: config.proxy.upstream_idle_timeout.0,
            lease_wait: config.wake.timeout.0,
        }
    }
}

/// The ingress proxy: routes by host from the current snapshot to a version's
/// instances.
pub struct IngressProxy {
    snapshots: Arc<SnapshotHandle>,
    leases: LeaseCache,
    lease_source: Arc<dyn LeaseSource>,
    metrics: Arc<Metrics>,
    options: ProxyOptions,
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
            leases,
            lease_source,
            metrics,
            options,
        }
    }

    /// The lease of `target`: from the cache, else from the lease source.
    async fn lease_for(
        &self,
        target: &Target,
        now_ms: u64,
    ) -> std::result::Result<Arc<Lease>, LeaseError> {
        if let Some(lease) = self.leases.get(target, now_ms) {
            self.metrics.lease_hits.inc();
            return Ok(lease);
        }
        self.metrics.lease_misses.inc();
        let asked = tokio::time::timeout(self.options.lease_wait, self.lease_source.lease(target));
        let addrs = match asked.await {
            Ok(result) => result?,
            Err(_) => {
                return Err(LeaseError::NotRunning {
                    reason: format!(
                        "version {} of app {} was not ready within {}ms",
                        target.version_id,
                        target.app,
                        self.options.lease_wait.as_millis()
                    ),
                })
            }
        };
        // Stamp the lease with the time it was granted, not when the request began.
        self.leases
            .insert(target, addrs, now_unix_millis())
            .ok_or_else(|| LeaseError::NotRunning {
                reason: format!(
                    "version {} of app {} has no ready instance",
                    target.version_id, target.app
                ),
            })
    }
}

/// Per-request state shared across hooks.
#[derive(Default)]
pub struct RequestCtx {
    kind: Option<ResolutionKind>,
    target: Option<Arc<Target>>,
    lease: Option<Arc<Lease>>,
    in_flight: Option<InFlightGuard>,
    upstream_started: Option<Instant>,
    /// The round-robin turn of this request's first upstream address.
    first_turn: Option<usize>,
    failed_connects: usize,
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

/// Answers with `answer`, as JSON when the client accepts JSON. Only error paths
/// look at `Accept`, so a proxied request never pays for it.
async fn write_error(session: &mut Session, answer: &ErrorAnswer) -> Result<()> {
    let accept = session.req_header().headers.get(header::ACCEPT);
    let json = accepts_json(accept.map(|v| v.as_bytes()));
    let (content_type, body) = answer.body(json);
    let mut response = ResponseHeader::build(answer.status, Some(4))?;
    response.insert_header(header::CONTENT_TYPE, content_type)?;
    response.insert_header(header::CONTENT_LENGTH, body.len().to_string())?;
    response.insert_header(header::CACHE_CONTROL, "no-store")?;
    session
        .write_response_header(Box::new(response), false)
        .await?;
    session.write_response_body(Some(body), true).await
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
        RequestCtx::default()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let request = session.req_header();
        let now_ms = now_unix_millis();
        let resolved = {
            let snapshot = self.snapshots.load();
            resolve(&snapshot, request_host(request), now_ms)
                .map(|resolved| (resolved.kind, Arc::clone(resolved.target)))
        };
        let target = match resolved {
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
                };
                write_error(session, &answer).await?;
                return Ok(true);
            }
        };
        ctx.in_flight = Some(target.activity.enter(now_ms));
        match self.lease_for(&target, now_ms).await {
            Ok(lease) => ctx.lease = Some(lease),
            Err(error) => {
                let answer = ErrorAnswer {
                    status: error.status(),
                    code: error.code(),
                    message: error.to_string(),
                };
                write_error(session, &answer).await?;
                return Ok(true);
            }
        }
        ctx.target = Some(target);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let lease = ctx
            .lease
            .as_ref()
            .ok_or_else(|| Error::explain(ErrorType::InternalError, "no lease for this request"))?;
        // The first attempt takes the next round-robin turn; each retry after a
        // failed connect moves on to the lease's next address.
        let first_turn = *ctx.first_turn.get_or_insert_with(|| lease.next_turn());
        let addr: SocketAddr = lease.addr_at(first_turn + ctx.failed_connects);
        let mut peer = HttpPeer::new(addr, false, String::new());
        peer.options.connection_timeout = Some(self.options.connect_timeout);
        peer.options.total_connection_timeout = Some(self.options.connect_timeout);
        peer.options.read_timeout = Some(self.options.read_timeout);
        peer.options.write_timeout = Some(self.options.write_timeout);
        peer.options.idle_timeout = Some(self.options.upstream_idle_timeout);
        ctx.upstream_started = Some(Instant::now());
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        // Try each address of the lease once before giving up.
        ctx.failed_connects += 1;
        let addresses = ctx.lease.as_ref().map_or(0, |lease| lease.addrs().len());
        e.set_retry(ctx.failed_connects < addresses);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream_request: &mut RequestHeader,
        _ctx: &mut RequestCtx,
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
        upstream_request.insert_header("x-forwarded-proto", "http")?;
        if let Some(host) = upstream_request.headers.get(header::HOST).cloned() {
            upstream_request.insert_header("x-forwarded-host", host)?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        _upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(started) = ctx.upstream_started.take() {
            self.metrics
                .upstream_latency
                .observe(started.elapsed().as_secs_f64());
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(target) = &ctx.target {
            upstream_response.insert_header("x-ingress-version", target.version_header.clone())?;
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
            let message = match &ctx.target {
                Some(target) => format!(
                    "version {} of app {}: {reason}",
                    target.version_id, target.app
                ),
                None => reason.to_string(),
            };
            let answer = ErrorAnswer {
                status,
                code: if status == 504 {
                    "upstream_timeout"
                } else {
                    "upstream_error"
                },
                message,
            };
            if let Err(write_error) = write_error(session, &answer).await {
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
        }
        ctx.in_flight = None;
    }
}

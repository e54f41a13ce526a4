//! Test support: real upstream servers on loopback and the real Pingora proxy
//! service, started in this process on a free port and stopped when dropped.

#![allow(dead_code)]

pub mod binary;
pub mod certs;
pub mod raw;
pub mod scripted;
pub mod webdriver;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use ingress_control_api::model::RuntimeSpec;
use ingress_control_api::pools::{PoolSettings, Pools};
use ingress_control_api::runtime::{ProcessRuntime, Runtimes, StaticRuntime};
use ingress_control_api::ControlMetrics;
use ingress_proxy::{
    AppSpec, IngressProxy, LeaseCache, Metrics, PreviewSpec, ProxyOptions, ProxyServer,
    ServerOptions, ShutdownTrigger, SnapshotHandle, SnapshotInput, VersionRef,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// True when `INGRESS_TEST_FAST_PATH=off`: every proxy the tests start (in
/// process or as the `ingress` binary) then runs with `proxy.fast_path = false`
/// unless the test sets it itself, so the whole suite runs through both request
/// paths (`make test` runs the end-to-end tests in both modes).
pub fn fast_path_off() -> bool {
    std::env::var("INGRESS_TEST_FAST_PATH").is_ok_and(|value| value == "off")
}

/// A port on 127.0.0.1 that was free a moment ago.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// `N` distinct ports on 127.0.0.1 that were free a moment ago: all are held at
/// once before they are released, so no two are the same (separate
/// [`free_port`] calls can return one port twice).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().expect("local addr").port())
}

/// An address where nothing listens (connections are refused).
pub fn closed_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A real HTTP/1.1 upstream. Every answer is JSON naming the upstream and echoing
/// the request's path and headers, with an `x-upstream` header. `/slow` waits
/// 400 ms before answering (`/slow?ms=N`: N ms).
pub struct Upstream {
    pub addr: SocketAddr,
    pub name: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Upstream {
    pub async fn start(name: &str) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind upstream");
        let addr = listener.local_addr().expect("upstream addr");
        let upstream_name = name.to_string();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let name = upstream_name.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let name = name.clone();
                        async move { Ok::<_, Infallible>(answer(&name, request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream {
            addr,
            name: name.to_string(),
            task,
        }
    }
}

async fn answer(name: &str, request: Request<Incoming>) -> Response<Full<Bytes>> {
    if request.uri().path() == "/slow" {
        let ms = request
            .uri()
            .query()
            .and_then(|query| query.strip_prefix("ms="))
            .and_then(|ms| ms.parse().ok())
            .unwrap_or(400);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    let headers: serde_json::Map<String, serde_json::Value> = request
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()),
            )
        })
        .collect();
    let body = serde_json::json!({
        "upstream": name,
        "path": request.uri().path(),
        "headers": headers,
    });
    Response::builder()
        .header("content-type", "application/json")
        .header("x-upstream", name)
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// A real WebSocket upstream that echoes every text and binary message.
pub struct WebSocketEcho {
    pub addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for WebSocketEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl WebSocketEcho {
    pub async fn start() -> WebSocketEcho {
        use futures_util::{SinkExt, StreamExt};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind ws");
        let addr = listener.local_addr().expect("ws addr");
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let Ok(mut socket) = tokio_tungstenite::accept_async(stream).await else {
                        return;
                    };
                    while let Some(Ok(message)) = socket.next().await {
                        if message.is_text() || message.is_binary() {
                            if socket.send(message).await.is_err() {
                                return;
                            }
                        } else if message.is_close() {
                            return;
                        }
                    }
                });
            }
        });
        WebSocketEcho { addr, task }
    }
}

/// The real pools, running static versions for the proxy tests.
pub struct TestRuntime {
    pub pools: Arc<Pools>,
}

impl TestRuntime {
    /// Runs `version` (its own pool) on the static runtime over `addrs`.
    pub fn set_upstreams(&self, version: &str, addrs: Vec<SocketAddr>) {
        self.pools
            .register(version, version, &RuntimeSpec::Static { upstreams: addrs });
        self.pools.hold(version, false).expect("hold the version");
    }
}

/// The real Pingora proxy service on a free loopback port.
pub struct TestProxy {
    pub addr: SocketAddr,
    pub snapshots: Arc<SnapshotHandle>,
    pub runtime: TestRuntime,
    pub metrics: Arc<Metrics>,
    trigger: ShutdownTrigger,
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        self.trigger.trigger();
    }
}

impl TestProxy {
    /// Starts the proxy with the default configuration (but a free port) and
    /// waits until it accepts connections.
    pub async fn start() -> TestProxy {
        Self::start_with(|_| {}).await
    }

    /// Like [`TestProxy::start`], after `adjust` has changed the configuration.
    pub async fn start_with(adjust: impl FnOnce(&mut ingress_config::Config)) -> TestProxy {
        let mut config = ingress_config::Config::default();
        config.proxy.connect_timeout.0 = Duration::from_secs(1);
        // Many Pingora servers start and stop in one test process. Under
        // `work_stealing = false` (the product's default) only the first of them
        // ever listens: pingora-runtime 0.9.1 records each no-steal worker's
        // runtimes in a `thread_local::ThreadLocal`, whose values outlive their
        // threads, so a later server's worker with a recycled thread id spawns onto
        // the first server's stopped runtimes. The product runs one server per
        // process, and the end-to-end tests through the `ingress` binary cover the
        // default; here, work stealing.
        config.proxy.work_stealing = true;
        if fast_path_off() {
            config.proxy.fast_path = false;
        }
        adjust(&mut config);
        config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let metrics = Arc::new(Metrics::new().expect("metrics"));
        let snapshots = Arc::new(
            SnapshotHandle::new().with_generation_gauge(metrics.snapshot_generation.clone()),
        );
        let logs = std::env::temp_dir().join("ingress-test-logs");
        let (pools, _events) = Pools::new(
            Runtimes {
                static_runtime: Arc::new(StaticRuntime),
                process_runtime: Arc::new(ProcessRuntime::new(&logs, Duration::from_secs(10))),
            },
            PoolSettings {
                drain_timeout: Duration::from_secs(1),
                stop_grace: Duration::from_secs(1),
                failure_backoff: Duration::from_secs(1),
                failure_backoff_max: Duration::from_secs(1),
            },
            Arc::clone(&snapshots),
            Arc::new(ControlMetrics::unregistered()),
            Arc::new(ingress_proxy::time::now_unix_millis),
        )
        .expect("pools");
        let pools = Arc::new(pools);
        let runtime = TestRuntime {
            pools: Arc::clone(&pools),
        };
        let proxy = IngressProxy::new(
            Arc::clone(&snapshots),
            LeaseCache::new(config.proxy.lease_cache_capacity, config.proxy.lease_ttl.0)
                .with_instance_limit(config.runtime.max_conns_per_instance),
            pools as _,
            Arc::clone(&metrics),
            ProxyOptions::from_config(&config),
        );
        let (server, trigger) =
            ProxyServer::new(&ServerOptions::from_config(&config), proxy, false);
        server.spawn().expect("spawn the proxy thread");
        let addr = config.proxy.listen;
        for _ in 0..500 {
            if TcpStream::connect(addr).await.is_ok() {
                return TestProxy {
                    addr,
                    snapshots,
                    runtime,
                    metrics,
                    trigger,
                };
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the proxy did not listen on {addr} within 5 s");
    }

    /// `http://ADDR`, for a client that sets the Host header itself.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Publishes `input`, panicking on a build error.
    pub fn publish(&self, input: &SnapshotInput) -> u64 {
        self.snapshots.publish(input).expect("publish snapshot")
    }
}

/// A version reference with state epoch 0.
pub fn version(id: &str) -> VersionRef {
    VersionRef {
        id: id.to_string(),
        state_epoch: 0,
    }
}

/// An app with an optional active version and no previews.
pub fn app(name: &str, active: Option<&str>) -> AppSpec {
    AppSpec {
        name: name.to_string(),
        active: active.map(version),
        previews: vec![],
        expired_labels: vec![],
    }
}

/// A preview of `version_id` at `label`, expiring at `expires_at_ms`.
pub fn preview(label: &str, version_id: &str, expires_at_ms: u64) -> PreviewSpec {
    PreviewSpec {
        label: label.to_string(),
        version: version(version_id),
        expires_at_ms,
    }
}

/// An HTTP client that keeps connections alive and never follows redirects.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client")
}

/// A text error body without its ` (request id ID)` suffix, which must name
/// `id` (the answer's `x-request-id`).
pub fn strip_request_id(body: &str, id: &str) -> String {
    let suffix = format!(" (request id {id})\n");
    match body.strip_suffix(&suffix) {
        Some(message) => format!("{message}\n"),
        None => panic!("{body:?} does not end with {suffix:?}"),
    }
}

/// A raw response: status, headers (lower-cased names) and body.
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends `head` (a request head without the final blank line) with
/// `Connection: close` and reads the whole answer. For requests an HTTP client
/// library refuses to send, such as malformed Host headers.
pub async fn raw_request(addr: SocketAddr, head: &str) -> RawResponse {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let request = format!("{head}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut bytes))
        .await
        .expect("answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .expect("status line");
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    RawResponse {
        status,
        headers,
        body: body.to_string(),
    }
}

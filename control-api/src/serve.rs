//! Runs the control plane's network side on a thread of its own (Pingora owns the
//! main thread and its own runtimes): the gRPC admin API (with server reflection
//! and the health service, [`crate::grpc_tools`]), the admin HTTP listener
//! (`/metrics`, `/healthz`, `/readyz`, `/routing` and the dashboard at `/ui`,
//! [`crate::dashboard`]), the TTL garbage-collection loop and the
//! lifecycle loop (idle sweep and stored schedules).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::certs::Certs;
use crate::control_plane::ControlPlane;
use crate::dashboard::Dashboard;
use crate::grpc::{admin_service, Authenticator};

/// How long open gRPC calls may take to finish once the ingress stops.
const GRPC_DRAIN_LIMIT: Duration = Duration::from_secs(3);

/// What the control plane's thread needs.
pub struct ControlSettings {
    /// The proxy's listener: `/readyz` is ready only while it accepts connections.
    pub proxy_listen: SocketAddr,
    /// Why the proxy cannot take new connections right now (it holds
    /// `proxy.max_connections`), if it cannot: `/readyz` is not ready then.
    pub proxy_full: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    /// Checks the bearer tokens; the caller keeps a clone to swap them on a
    /// config reload.
    pub authenticator: Authenticator,
    pub gc_interval: Duration,
    /// `idle.check_interval`.
    pub idle_interval: Duration,
    /// On a control node: the routing stream and the replicas it serves.
    pub replication: Option<ReplicationSettings>,
    /// The TLS listener's certificates: served through the admin API, rescanned
    /// from `tls.cert_dir` every `tls.reload_interval` (when it changed) and on
    /// SIGHUP.
    pub certs: Arc<Certs>,
    /// Runs first on SIGHUP (on a blocking thread): the config file reload.
    pub on_hangup: Option<Arc<dyn Fn() + Send + Sync>>,
}

/// What a control node needs to serve replicas.
pub struct ReplicationSettings {
    pub feed: Arc<crate::replication::Feed>,
    pub nodes: Arc<crate::replication::Nodes>,
    /// `activity.report_interval`: replicas silent for three are forgotten.
    pub report_interval: Duration,
}

/// Feeds the pools' endpoint changes into the routing stream, and forgets
/// replicas that stopped reporting.
async fn replication_loop(
    plane: Arc<ControlPlane>,
    feed: Arc<crate::replication::Feed>,
    nodes: Arc<crate::replication::Nodes>,
    report_interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut changes = plane.subscribe_pool_changes();
    let mut ticker = tokio::time::interval(report_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let _ = plane.changed_endpoints();
    feed.endpoints(&plane.endpoints());
    loop {
        tokio::select! {
            changed = changes.changed() => {
                if changed.is_err() {
                    return;
                }
                // Only the pools that changed, unless all may have.
                match plane.changed_endpoints() {
                    Some(changes) => feed.pools_changed(changes),
                    None => feed.endpoints(&plane.endpoints()),
                }
            }
            _ = ticker.tick() => {
                let now = ingress_proxy::time::now_unix_millis();
                for node in nodes.expire(now, plane.activity()) {
                    log::warn!("replica {node} stopped reporting; what it had in flight no longer counts");
                }
            }
            _ = stopped.wait_for(|stop| *stop) => return,
        }
    }
}

/// The running control-plane thread.
pub struct ControlHandle {
    stop: watch::Sender<bool>,
    thread: std::thread::JoinHandle<Result<(), String>>,
}

impl ControlHandle {
    /// Stops the listeners and loops and waits for the thread; returns the first
    /// fatal error the thread met, if any.
    pub fn stop(self) -> Result<(), String> {
        self.stop.send_replace(true);
        self.thread
            .join()
            .map_err(|_| "the control-plane thread panicked".to_string())?
    }
}

/// Starts the control plane's thread. Binding both listeners happens before this
/// returns, so a port in use is reported at once; so does taking SIGHUP (a
/// rescan of `tls.cert_dir`), so a SIGHUP sent once the ports answer never ends
/// the process. `metrics` renders the Prometheus
/// text for `/metrics`. `on_fatal` runs if the thread stops on its own with an error.
pub fn spawn(
    settings: ControlSettings,
    plane: Arc<ControlPlane>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    on_fatal: Box<dyn FnOnce() + Send>,
) -> Result<ControlHandle, String> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("ingress-control")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the control-plane runtime: {e}"))?;
    let (grpc, http) = runtime.block_on(async {
        let grpc = TcpListener::bind(settings.grpc_listen).await.map_err(|e| {
            format!(
                "admin.grpc_listen {}: cannot listen: {e}",
                settings.grpc_listen
            )
        })?;
        let http = TcpListener::bind(settings.http_listen).await.map_err(|e| {
            format!(
                "admin.http_listen {}: cannot listen: {e}",
                settings.http_listen
            )
        })?;
        Ok::<_, String>((grpc, http))
    })?;
    let hangup = runtime.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| log::warn!("cannot take SIGHUP (tls.cert_dir reloads): {e}"))
            .ok()
    });
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("ingress-control".into())
        .spawn(move || {
            let result =
                runtime.block_on(serve(settings, plane, metrics, grpc, http, hangup, stopped));
            if result.is_err() {
                on_fatal();
            }
            runtime.shutdown_timeout(Duration::from_secs(2));
            result
        })
        .map_err(|e| format!("cannot start the control-plane thread: {e}"))?;
    Ok(ControlHandle { stop, thread })
}

async fn serve(
    settings: ControlSettings,
    plane: Arc<ControlPlane>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    grpc: TcpListener,
    http: TcpListener,
    hangup: Option<tokio::signal::unix::Signal>,
    stopped: watch::Receiver<bool>,
) -> Result<(), String> {
    let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let authenticator = settings.authenticator.clone();
    let dashboard = Arc::new(crate::dashboard::Dashboard::new(
        Arc::clone(&plane),
        authenticator.clone(),
        Arc::clone(&metrics),
    ));
    let replication = settings.replication.as_ref().map(|replication| {
        crate::grpc::proto::replication_server::ReplicationServer::with_interceptor(
            crate::replication::ReplicationService {
                plane: Arc::clone(&plane),
                feed: Arc::clone(&replication.feed),
                nodes: Arc::clone(&replication.nodes),
                stopping: stopped.clone(),
            },
            authenticator.clone(),
        )
    });
    let replication_task = settings.replication.as_ref().map(|replication| {
        tokio::spawn(replication_loop(
            Arc::clone(&plane),
            Arc::clone(&replication.feed),
            Arc::clone(&replication.nodes),
            replication.report_interval,
            stopped.clone(),
        ))
    });
    // Reflection and health beside the admin API (crate::grpc_tools):
    // reflection behind the bearer check, health open.
    let own = crate::grpc_tools::own_services(settings.replication.is_some());
    let reflection_v1 = crate::grpc_tools::reflection_v1(&own, authenticator.clone())?;
    let reflection_v1alpha = crate::grpc_tools::reflection_v1alpha(&own, authenticator.clone())?;
    let health = crate::grpc_tools::health_service(&own, stopped.clone()).await;
    let grpc_server = tonic::transport::Server::builder()
        .add_service(admin_service(
            Arc::clone(&plane),
            Arc::clone(&settings.certs),
            settings
                .replication
                .as_ref()
                .map(|replication| crate::grpc::Replicas {
                    feed: Arc::clone(&replication.feed),
                    nodes: Arc::clone(&replication.nodes),
                }),
            authenticator,
            stopped.clone(),
        ))
        .add_optional_service(replication)
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(grpc),
            until_stopped(stopped.clone()),
        );
    let http_task = tokio::spawn(serve_admin_http(
        http,
        settings.proxy_listen,
        settings.proxy_full,
        metrics,
        match &settings.replication {
            Some(replication) => replication.feed.subscribe(),
            None => plane.subscribe(),
        },
        Some(dashboard),
        stopped.clone(),
    ));
    let gc_task = tokio::spawn(gc_loop(
        Arc::clone(&plane),
        settings.gc_interval,
        stopped.clone(),
    ));
    let lifecycle_task = tokio::spawn(lifecycle_loop(
        Arc::clone(&plane),
        settings.idle_interval,
        stopped.clone(),
    ));
    let certs_task = tokio::spawn(cert_loop(
        Arc::clone(&settings.certs),
        hangup,
        settings.on_hangup.clone(),
        stopped.clone(),
    ));
    // The admin HTTP listener and the loops end only on stop. The gRPC server
    // ends on stop too, or on its own with an error, which must stop the ingress:
    // the caller's `on_fatal` does that.
    // Draining waits for open calls; a client that keeps one open must not keep
    // the ingress from stopping, so the drain is bounded.
    let mut stopping = stopped.clone();
    let drain_limit = async move {
        let _ = stopping.wait_for(|stop| *stop).await;
        tokio::time::sleep(GRPC_DRAIN_LIMIT).await;
    };
    let result = tokio::select! {
        result = grpc_server => result.map_err(|e| format!("the gRPC admin API stopped: {e}")),
        () = drain_limit => {
            log::warn!("gRPC calls still open {GRPC_DRAIN_LIMIT:?} after the stop; closing them");
            Ok(())
        }
    };
    if let Some(task) = replication_task {
        task.abort();
    }
    if result.is_err() {
        http_task.abort();
        gc_task.abort();
        lifecycle_task.abort();
        certs_task.abort();
    } else {
        let _ = tokio::join!(http_task, gc_task, lifecycle_task, certs_task);
    }
    result
}

async fn gc_loop(plane: Arc<ControlPlane>, interval: Duration, mut stopped: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let plane = Arc::clone(&plane);
        match tokio::task::spawn_blocking(move || plane.collect_garbage()).await {
            Ok(Ok(report)) if !report.deleted.is_empty() || report.tombstones_pruned > 0 => {
                log::info!(
                    "gc: deleted {} expired versions ({}), pruned {} tombstones",
                    report.deleted.len(),
                    report.deleted.join(", "),
                    report.tombstones_pruned
                );
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::warn!("gc: {e}; retrying next sweep"),
            Err(e) => log::warn!("gc: the sweep did not finish: {e}; retrying next sweep"),
        }
    }
}

/// Rescans `tls.cert_dir` on SIGHUP, and every `tls.reload_interval` (not 0)
/// when its files changed, publishing what loads.
async fn cert_loop(
    certs: Arc<Certs>,
    mut hangup: Option<tokio::signal::unix::Signal>,
    on_hangup: Option<Arc<dyn Fn() + Send + Sync>>,
    mut stopped: watch::Receiver<bool>,
) {
    let settings = certs.settings();
    let polling = settings.cert_dir.is_some() && !settings.reload_interval.is_zero();
    // Also a minute at most: a certificate that becomes valid (or expires)
    // must be published again to take over its names.
    let period = if polling {
        settings.reload_interval.min(Duration::from_secs(60))
    } else {
        Duration::from_secs(60)
    };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let signalled = async {
            match hangup.as_mut() {
                Some(signal) => {
                    if signal.recv().await.is_none() {
                        std::future::pending::<()>().await;
                    }
                }
                None => std::future::pending::<()>().await,
            }
        };
        let forced = tokio::select! {
            _ = ticker.tick() => false,
            _ = signalled => true,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let certs = Arc::clone(&certs);
        let on_hangup = on_hangup.clone();
        let ran = tokio::task::spawn_blocking(move || {
            if forced {
                if let Some(reload_config) = on_hangup {
                    reload_config();
                }
                log::info!("SIGHUP: reloading tls.cert_dir");
                if let Err(e) = certs.reload(None) {
                    log::warn!("SIGHUP: reloading tls.cert_dir failed: {e}");
                }
            } else {
                if polling {
                    certs.reload_if_changed();
                }
                certs.republish_if_due();
            }
        })
        .await;
        if let Err(e) = ran {
            log::warn!("certificates: the reload did not finish: {e}");
        }
    }
}

/// Longest sleep of the lifecycle loop: a schedule runs at most this late.
const SCHEDULE_RESOLUTION: Duration = Duration::from_millis(200);

/// Runs due schedules as they come due, and the idle sweep every `idle_interval`.
async fn lifecycle_loop(
    plane: Arc<ControlPlane>,
    idle_interval: Duration,
    mut stopped: watch::Receiver<bool>,
) {
    let mut next_sweep = tokio::time::Instant::now() + idle_interval;
    loop {
        let wake_at = next_sweep.min(tokio::time::Instant::now() + SCHEDULE_RESOLUTION);
        tokio::select! {
            () = tokio::time::sleep_until(wake_at) => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let sweep = tokio::time::Instant::now() >= next_sweep;
        if sweep {
            next_sweep = tokio::time::Instant::now() + idle_interval;
        }
        let plane = Arc::clone(&plane);
        let ran = tokio::task::spawn_blocking(move || {
            if sweep {
                match plane.check_idle() {
                    Ok(report) if !report.versions.is_empty() => {
                        log::info!("idle: stopping {}", report.versions.join(", "));
                    }
                    Ok(_) => {}
                    Err(e) => log::warn!("idle: {e}; retrying next sweep"),
                }
            }
            match plane.run_due_schedules() {
                Ok(report) if !report.versions.is_empty() => {
                    log::info!("schedules: executed for {}", report.versions.join(", "));
                }
                Ok(_) => {}
                Err(e) => log::warn!("schedules: {e}; retrying"),
            }
        })
        .await;
        if let Err(e) = ran {
            log::warn!("lifecycle: the loop's work did not finish: {e}");
        }
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` (ready while the proxy accepts
/// connections on `proxy_listen` and `proxy_full` has nothing to say) and
/// `/routing?wait_generation=G&timeout_ms=T` (answers once the routing
/// generation `generation` reaches G, or with 504 after T ms; at most 60 s) on
/// `listener` until `stopped`; and `/ui` and below with `dashboard` (the
/// control plane's; a proxy-only replica has none and answers 404 there).
pub async fn serve_admin_http(
    listener: TcpListener,
    proxy_listen: SocketAddr,
    proxy_full: Arc<dyn Fn() -> Option<String> + Send + Sync>,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    generation: watch::Receiver<u64>,
    dashboard: Option<Arc<Dashboard>>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                log::warn!("admin HTTP: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = Arc::clone(&metrics);
        let proxy_full = Arc::clone(&proxy_full);
        let generation = generation.clone();
        let dashboard = dashboard.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: Request<hyper::body::Incoming>| {
                    let metrics = Arc::clone(&metrics);
                    let proxy_full = Arc::clone(&proxy_full);
                    let generation = generation.clone();
                    let dashboard = dashboard.clone();
                    async move {
                        if Dashboard::serves(request.uri().path()) {
                            return Ok::<_, Infallible>(match dashboard {
                                Some(dashboard) => dashboard.handle(request).await,
                                None => text(
                                    404,
                                    "application/json",
                                    "{\"error\":\"no dashboard here: this node is a proxy-only replica; open /ui on the control node\",\"code\":\"not_found\"}\n"
                                        .to_string(),
                                ),
                            });
                        }
                        let answer = match request.uri().path() {
                            "/metrics" => text(200, "text/plain; version=0.0.4", metrics()),
                            "/healthz" => text(200, "text/plain", "ok\n".to_string()),
                            "/readyz" => readiness(proxy_listen, proxy_full()).await,
                            "/routing" => routing(request.uri().query(), generation).await,
                            _ => text(
                                404,
                                "text/plain",
                                "not found; try /metrics, /healthz, /readyz, /routing or /ui\n"
                                    .to_string(),
                            ),
                        };
                        Ok::<_, Infallible>(answer)
                    }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

/// `/routing?wait_generation=G&timeout_ms=T`: the generation applied, once it
/// is at least G (200), or when T ms passed first (504).
async fn routing(
    query: Option<&str>,
    mut generation: watch::Receiver<u64>,
) -> Response<Full<Bytes>> {
    let mut wanted = 0u64;
    let mut timeout_ms = 0u64;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = match value.parse::<u64>() {
            Ok(number) => number,
            Err(_) => {
                return text(
                    400,
                    "text/plain",
                    format!("{key}={value:?} is not a number; write /routing?wait_generation=G&timeout_ms=T\n"),
                )
            }
        };
        match key {
            "wait_generation" => wanted = number,
            "timeout_ms" => timeout_ms = number.min(60_000),
            _ => {
                return text(
                    400,
                    "text/plain",
                    format!("unknown parameter {key:?}; allowed: wait_generation, timeout_ms\n"),
                )
            }
        }
    }
    let _ = tokio::time::timeout(
        Duration::from_millis(timeout_ms),
        generation.wait_for(|g| *g >= wanted),
    )
    .await;
    let now = *generation.borrow();
    let status = if now >= wanted { 200 } else { 504 };
    text(
        status,
        "application/json",
        format!("{{\"generation\":{now},\"wanted\":{wanted}}}\n"),
    )
}

/// Ready while the proxy accepts connections on its listener.
async fn readiness(proxy_listen: SocketAddr, full: Option<String>) -> Response<Full<Bytes>> {
    if let Some(why) = full {
        return text(503, "text/plain", format!("not ready: {why}\n"));
    }
    let connect = tokio::net::TcpStream::connect(proxy_listen);
    match tokio::time::timeout(Duration::from_millis(500), connect).await {
        Ok(Ok(_)) => text(200, "text/plain", "ok\n".to_string()),
        _ => text(
            503,
            "text/plain",
            format!("not ready: the proxy does not accept connections on {proxy_listen}\n"),
        ),
    }
}

fn text(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))))
}

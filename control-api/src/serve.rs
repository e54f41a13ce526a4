//! Runs the control plane's network side on a thread of its own (Pingora owns the
//! main thread and its own runtimes): the gRPC admin API, the admin HTTP listener
//! (`/metrics`, `/healthz`, `/readyz`) and the TTL garbage-collection loop.

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

use crate::control_plane::ControlPlane;
use crate::grpc::{admin_service, Authenticator, Token};

/// What the control plane's thread needs.
pub struct ControlSettings {
    pub grpc_listen: SocketAddr,
    pub http_listen: SocketAddr,
    pub tokens: Vec<Token>,
    pub gc_interval: Duration,
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
/// returns, so a port in use is reported at once. `metrics` renders the Prometheus
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
    let (stop, stopped) = watch::channel(false);
    let thread = std::thread::Builder::new()
        .name("ingress-control".into())
        .spawn(move || {
            let result = runtime.block_on(serve(settings, plane, metrics, grpc, http, stopped));
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
    stopped: watch::Receiver<bool>,
) -> Result<(), String> {
    let until_stopped = |mut stopped: watch::Receiver<bool>| async move {
        let _ = stopped.wait_for(|stop| *stop).await;
    };
    let grpc_server = tonic::transport::Server::builder()
        .add_service(admin_service(
            Arc::clone(&plane),
            Authenticator::new(settings.tokens),
        ))
        .serve_with_incoming_shutdown(tokio_stream_of(grpc), until_stopped(stopped.clone()));
    let http_server = serve_admin_http(http, metrics, stopped.clone());
    let gc = gc_loop(Arc::clone(&plane), settings.gc_interval, stopped.clone());
    let (grpc_result, (), ()) = tokio::join!(grpc_server, http_server, gc);
    grpc_result.map_err(|e| format!("the gRPC admin API stopped: {e}"))
}

fn tokio_stream_of(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    tokio_stream::wrappers::TcpListenerStream::new(listener)
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

async fn serve_admin_http(
    listener: TcpListener,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => return,
        };
        let Ok((stream, _)) = accepted else { continue };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let service = hyper::service::service_fn(
                move |request: Request<hyper::body::Incoming>| {
                    let metrics = Arc::clone(&metrics);
                    async move { Ok::<_, Infallible>(admin_answer(request.uri().path(), &*metrics)) }
                },
            );
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn admin_answer(path: &str, metrics: &(dyn Fn() -> String + Send + Sync)) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match path {
        "/metrics" => (200, "text/plain; version=0.0.4", metrics()),
        "/healthz" | "/readyz" => (200, "text/plain", "ok\n".to_string()),
        _ => (
            404,
            "text/plain",
            "not found; try /metrics, /healthz or /readyz\n".to_string(),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))))
}

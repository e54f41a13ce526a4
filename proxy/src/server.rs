//! Running the proxy service on a Pingora `Server`. `Server::run` builds its own
//! runtimes and blocks, so it runs on a thread of its own and is stopped through a
//! [`ShutdownTrigger`] (or SIGTERM/SIGINT when asked to watch them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;
use tokio::sync::watch;

use crate::fast_path::FastPath;
use crate::http1::drain::Drain;
use crate::http1::limits::descriptor_limit;
use crate::http1::{derived_max_connections, ConnOptions, ConnectionLimiter, Http1App};
use crate::service::IngressProxy;
use crate::tls::listener::tls_settings;
use crate::tls::{CertStore, TlsOptions};

/// How the Pingora server is set up.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The public listener.
    pub listen: SocketAddr,
    /// Worker threads of the proxy service.
    pub threads: usize,
    /// Let idle workers steal tasks.
    pub work_stealing: bool,
    /// Idle upstream connections kept for reuse.
    pub upstream_keepalive_pool_size: usize,
    /// Timeouts and limits of client connections.
    pub conn: ConnOptions,
    /// Open client connections at most (`proxy.max_connections`, resolved).
    pub max_connections: usize,
    /// The TLS listener and the certificates it serves (`[tls]`), if any.
    pub tls: Option<(TlsOptions, Arc<CertStore>)>,
}

impl ServerOptions {
    /// The options from the `[proxy]` settings.
    pub fn from_config(config: &ingress_config::Config) -> ServerOptions {
        ServerOptions {
            listen: config.proxy.listen,
            threads: config.proxy.threads,
            work_stealing: config.proxy.work_stealing,
            upstream_keepalive_pool_size: config.proxy.upstream_keepalive_pool_size,
            conn: ConnOptions::from_config(config),
            max_connections: match config.proxy.max_connections {
                0 => derived_max_connections(descriptor_limit()),
                max => max,
            },
            tls: None,
        }
    }

    /// These options with the `[tls]` listener of `config` (if it has one),
    /// serving the certificates of `certs`.
    pub fn with_tls(
        mut self,
        config: &ingress_config::Config,
        certs: Arc<CertStore>,
    ) -> ServerOptions {
        self.tls = TlsOptions::from_config(config).map(|options| (options, certs));
        self
    }
}

/// Stops a running proxy server: in-flight requests get up to 5 s to finish.
#[derive(Clone)]
pub struct ShutdownTrigger(Arc<watch::Sender<bool>>);

impl ShutdownTrigger {
    /// Asks the server to stop. Idempotent.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

/// The watch the Pingora server waits on: the trigger, and optionally SIGTERM
/// (graceful) and SIGINT (fast).
struct ShutdownWatch {
    trigger: watch::Receiver<bool>,
    os_signals: bool,
    drain: Arc<Drain>,
}

/// How long a graceful stop waits for requests in progress.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

impl ShutdownWatch {
    /// Drains client connections, then lets Pingora stop.
    async fn drained(&self) -> ShutdownSignal {
        self.drain.start();
        self.drain.settled(DRAIN_LIMIT).await;
        ShutdownSignal::GracefulTerminate
    }
}

#[async_trait]
impl ShutdownSignalWatch for ShutdownWatch {
    async fn recv(&self) -> ShutdownSignal {
        let mut trigger = self.trigger.clone();
        let triggered = async move {
            // An error means every trigger was dropped: treat it as a stop request.
            let _ = trigger.wait_for(|stop| *stop).await;
        };
        if !self.os_signals {
            triggered.await;
            return self.drained().await;
        }
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot watch SIGTERM/SIGINT; stop the ingress through its trigger");
            triggered.await;
            return self.drained().await;
        };
        tokio::select! {
            _ = triggered => self.drained().await,
            _ = term.recv() => {
                log::info!("SIGTERM received: stopping after in-flight requests (at most {}s)", DRAIN_LIMIT.as_secs());
                self.drained().await
            }
            _ = int.recv() => {
                log::info!("SIGINT received: stopping");
                ShutdownSignal::FastShutdown
            }
        }
    }
}

/// A Pingora server with the proxy service on `options.listen`, ready to run.
pub struct ProxyServer {
    server: Server,
    watch: ShutdownWatch,
    limiter: Arc<ConnectionLimiter>,
}

impl ProxyServer {
    /// Builds the server: the HTTP/1 connection loop in front of `proxy`, on the
    /// plain listener and (with `options.tls`) the TLS one. With `os_signals`,
    /// SIGTERM and SIGINT also stop it. Fails when the TLS listener cannot be set
    /// up.
    pub fn new(
        options: &ServerOptions,
        proxy: IngressProxy,
        os_signals: bool,
    ) -> (ProxyServer, ShutdownTrigger) {
        match ProxyServer::build(options, proxy, os_signals) {
            Ok(built) => built,
            // Only the TLS settings can fail, and callers without TLS never do.
            Err(e) => panic!("the proxy server cannot be built: {e}"),
        }
    }

    /// Like [`ProxyServer::new`], with the TLS set-up error returned.
    pub fn build(
        options: &ServerOptions,
        proxy: IngressProxy,
        os_signals: bool,
    ) -> Result<(ProxyServer, ShutdownTrigger), String> {
        let conf = ServerConf {
            threads: options.threads,
            work_stealing: options.work_stealing,
            upstream_keepalive_pool_size: options.upstream_keepalive_pool_size,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(5),
            ..ServerConf::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let metrics = Arc::clone(proxy.metrics());
        let drain = Arc::clone(proxy.drain());
        let limiter = ConnectionLimiter::new(
            options.max_connections,
            metrics.connections_open.clone(),
            metrics.connections_refused.clone(),
        );
        let fast = options.conn.fast_path.then(|| {
            FastPath::new(
                proxy.clone(),
                options.upstream_keepalive_pool_size,
                options.conn.body_timeout,
            )
        });
        let access_log = proxy.access_log().clone();
        let mut proxy = pingora_proxy::http_proxy(&server.configuration, proxy);
        let mut server_options = pingora_core::apps::HttpServerOptions::default();
        // The loop hands over only connections it found to be h2c; Pingora's
        // own check would wait for 24 bytes that a short HTTP/1 request lacks.
        server_options.h2c = options.conn.h2c;
        // An HTTP/2 connection with no open stream is closed like an idle
        // HTTP/1 keep-alive connection.
        server_options.h2_idle_timeout = Some(options.conn.keepalive_timeout);
        proxy.server_options = Some(server_options);
        let proxy = Arc::new(proxy);
        let metrics_for_tls = Arc::clone(&metrics);
        let app = Http1App::new(
            proxy,
            fast,
            Arc::clone(&limiter),
            Arc::clone(&drain),
            metrics,
            options.conn.clone(),
        )
        .with_access_log(access_log);
        let mut service = Service::new("ingress proxy".to_string(), app);
        service.add_tcp(&options.listen.to_string());
        if let Some((tls, certs)) = &options.tls {
            let settings = tls_settings(tls, Arc::clone(certs), Arc::clone(&metrics_for_tls))
                .map_err(|e| format!("tls.listen {}: cannot set up TLS: {e}", tls.listen))?;
            service.add_tls_with_settings(&tls.listen.to_string(), None, settings);
        }
        server.add_service(service);
        let (sender, receiver) = watch::channel(false);
        let watch = ShutdownWatch {
            trigger: receiver,
            os_signals,
            drain,
        };
        Ok((
            ProxyServer {
                server,
                watch,
                limiter,
            },
            ShutdownTrigger(Arc::new(sender)),
        ))
    }

    /// The count of open client connections against `max_connections`
    /// (`/readyz` is not ready while it is full).
    pub fn connections(&self) -> Arc<ConnectionLimiter> {
        Arc::clone(&self.limiter)
    }

    /// Serves until the trigger fires (or a watched signal arrives). Blocks; never
    /// call it from inside a tokio runtime.
    pub fn run(self) {
        self.server.run(RunArgs {
            shutdown_signal: Box::new(self.watch),
        });
    }

    /// Runs the server on a thread of its own.
    pub fn spawn(self) -> std::io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("ingress-proxy".into())
            .spawn(move || self.run())
    }
}

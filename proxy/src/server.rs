//! Running the proxy service on a Pingora `Server`. `Server::run` builds its own
//! runtimes and blocks, so it runs on a thread of its own and is stopped through a
//! [`ShutdownTrigger`] (or SIGTERM/SIGINT when asked to watch them).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::listening::Service;
use tokio::sync::watch;

use crate::fast_path::FastPath;
use crate::http1::drain::Drain;
use crate::http1::limits::descriptor_limit;
use crate::http1::{derived_max_connections, ConnOptions, ConnectionLimiter, Http1App};
use crate::service::{IngressProxy, ProxyOptions};
use crate::tls::listener::tls_settings;
use crate::tls::{CertStore, TlsOptions};

/// The Unix socket of a graceful upgrade, in `store.data_dir`.
pub const UPGRADE_SOCK: &str = "upgrade.sock";

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
    /// The Unix socket listening sockets are handed over on in a graceful
    /// upgrade (`<store.data_dir>/upgrade.sock`); empty: no upgrades.
    pub upgrade_sock: String,
    /// This process takes over the listening sockets of a running one
    /// (`ingress --upgrade`) instead of binding them.
    pub upgrade: bool,
    /// The caller registers [`ProxyServer::on_graceful_stop`], which ends the
    /// process: Pingora then keeps its runtimes for a grace period after it
    /// stopped accepting (in-flight requests of an upgrade finish there).
    pub stop_hook: bool,
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
            upgrade_sock: config
                .store
                .data_dir
                .join(UPGRADE_SOCK)
                .display()
                .to_string(),
            upgrade: false,
            stop_hook: false,
        }
    }

    /// These options for the `ingress` binary: with `upgrade`, taking over
    /// the listening sockets of the running process (`--upgrade`); with a stop
    /// hook ([`ProxyServer::on_graceful_stop`]).
    pub fn upgrading(mut self, upgrade: bool) -> ServerOptions {
        self.upgrade = upgrade;
        self.stop_hook = true;
        self
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
    upgrade_sock: String,
    /// Set when SIGQUIT handed the listeners over.
    upgrading: Arc<std::sync::atomic::AtomicBool>,
}

/// How long a graceful stop waits for requests in progress.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

impl ShutdownWatch {
    /// Drains client connections, then lets Pingora stop (the stop hook, when
    /// set, ends the process then).
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
        let (Ok(mut term), Ok(mut int), Ok(mut quit)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
            signal(SignalKind::quit()),
        ) else {
            log::error!(
                "cannot watch SIGTERM/SIGINT/SIGQUIT; stop the ingress through its trigger"
            );
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
            _ = quit.recv() => {
                log::info!(
                    "SIGQUIT received: handing the listening sockets to the new process (ingress --upgrade) over {}; this one keeps accepting for 5 s, then stops accepting and gives in-flight requests {}s",
                    self.upgrade_sock,
                    DRAIN_LIMIT.as_secs()
                );
                self.upgrading.store(true, std::sync::atomic::Ordering::Release);
                ShutdownSignal::GracefulUpgrade
            }
        }
    }
}

/// A Pingora server with the proxy service on `options.listen`, ready to run.
pub struct ProxyServer {
    server: Server,
    watch: ShutdownWatch,
    limiter: Arc<ConnectionLimiter>,
    live: LiveOptions,
    upgrading: Arc<std::sync::atomic::AtomicBool>,
}

/// A Pingora server bootstrapped: with `ServerOptions::upgrade`, holding the
/// listening sockets received from the old process; else ready to bind them.
pub struct Listeners {
    server: Server,
}

impl Listeners {
    /// Creates the Pingora server and bootstraps it. With `options.upgrade`
    /// this waits (about 5 s at most) for the old process, sent SIGQUIT, to
    /// hand over its listening sockets on `options.upgrade_sock`; Pingora ends
    /// the process (exit 1) when none arrive. Fails when the socket's
    /// directory cannot be created.
    pub fn bootstrap(options: &ServerOptions) -> Result<Listeners, String> {
        let conf = ServerConf {
            threads: options.threads,
            work_stealing: options.work_stealing,
            upstream_keepalive_pool_size: options.upstream_keepalive_pool_size,
            // With a stop hook (`ProxyServer::on_graceful_stop`), which ends
            // the process within it: the old process of an upgrade finishes
            // its requests in this period, after it stopped accepting.
            grace_period_seconds: Some(if options.stop_hook {
                DRAIN_LIMIT.as_secs() + 5
            } else {
                0
            }),
            graceful_shutdown_timeout_seconds: Some(5),
            upgrade_sock: options.upgrade_sock.clone(),
            ..ServerConf::default()
        };
        let opt = Opt {
            upgrade: options.upgrade,
            ..Opt::default()
        };
        if options.upgrade {
            // A replica has no store: its data directory may not exist yet.
            if let Some(dir) = std::path::Path::new(&options.upgrade_sock).parent() {
                std::fs::create_dir_all(dir).map_err(|e| {
                    format!(
                        "--upgrade: cannot create {} for the upgrade socket: {e}",
                        dir.display()
                    )
                })?;
            }
            log::info!(
                "--upgrade: waiting for the running ingress's listening sockets on {} (send it SIGQUIT now)",
                options.upgrade_sock
            );
        }
        let mut server = Server::new_with_opt_and_conf(Some(opt), conf);
        server.bootstrap();
        if options.upgrade {
            log::info!("--upgrade: listening sockets received from the old process");
        }
        Ok(Listeners { server })
    }
}

/// The settings a config reload changes while the proxy serves: each is
/// swapped whole and read with one atomic load per request.
#[derive(Clone)]
pub struct LiveOptions {
    proxy: Arc<ArcSwap<ProxyOptions>>,
    conn: Arc<ArcSwap<ConnOptions>>,
}

impl LiveOptions {
    /// Applies the `[proxy]` timeouts and limits and the `[wake]` rules of
    /// `config`; `proxy.fast_path` and `proxy.h2c` keep their values (they
    /// shape the server and need a restart).
    pub fn apply(&self, config: &ingress_config::Config) {
        self.proxy
            .store(Arc::new(ProxyOptions::from_config(config)));
        let mut conn = ConnOptions::from_config(config);
        let old = self.conn.load();
        conn.fast_path = old.fast_path;
        conn.h2c = old.h2c;
        self.conn.store(Arc::new(conn));
    }

    /// The proxy options now.
    pub fn proxy(&self) -> Arc<ProxyOptions> {
        self.proxy.load_full()
    }

    /// The connection options now.
    pub fn conn(&self) -> Arc<ConnOptions> {
        self.conn.load_full()
    }
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
        ProxyServer::build_on(Listeners::bootstrap(options)?, options, proxy, os_signals)
    }

    /// Like [`ProxyServer::build`], on listeners already bootstrapped (taken
    /// over from the old process with `options.upgrade`).
    pub fn build_on(
        listeners: Listeners,
        options: &ServerOptions,
        proxy: IngressProxy,
        os_signals: bool,
    ) -> Result<(ProxyServer, ShutdownTrigger), String> {
        let mut server = listeners.server;
        let metrics = Arc::clone(proxy.metrics());
        let drain = Arc::clone(proxy.drain());
        let limiter = ConnectionLimiter::new(
            options.max_connections,
            metrics.connections_open.clone(),
            metrics.connections_refused.clone(),
        );
        let fast = options
            .conn
            .fast_path
            .then(|| FastPath::new(proxy.clone(), options.upstream_keepalive_pool_size));
        let proxy_live = proxy.live_options();
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
        let live = LiveOptions {
            proxy: proxy_live,
            conn: Arc::new(ArcSwap::from_pointee(options.conn.clone())),
        };
        let conn_options = Arc::clone(&live.conn);
        let proxy = Arc::new(proxy);
        let metrics_for_tls = Arc::clone(&metrics);
        let app = Http1App::new(
            proxy,
            fast,
            Arc::clone(&limiter),
            Arc::clone(&drain),
            metrics,
            Arc::clone(&conn_options),
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
        let upgrading = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watch = ShutdownWatch {
            trigger: receiver,
            os_signals,
            drain,
            upgrade_sock: options.upgrade_sock.clone(),
            upgrading: Arc::clone(&upgrading),
        };
        Ok((
            ProxyServer {
                server,
                watch,
                limiter,
                live,
                upgrading,
            },
            ShutdownTrigger(Arc::new(sender)),
        ))
    }

    /// The count of open client connections against `max_connections`
    /// (`/readyz` is not ready while it is full).
    pub fn connections(&self) -> Arc<ConnectionLimiter> {
        Arc::clone(&self.limiter)
    }

    /// The options a config reload may swap.
    pub fn live(&self) -> LiveOptions {
        self.live.clone()
    }

    /// Whether the server stopped because SIGQUIT handed its listeners to a
    /// new process (valid once it stopped; shared, so read it after `run`).
    pub fn upgrade_flag(&self) -> Arc<std::sync::atomic::AtomicBool> {
        Arc::clone(&self.upgrading)
    }

    /// Runs `release` on a thread of its own once a graceful stop let go of
    /// the listeners, while Pingora waits out its grace period (set only with
    /// `ServerOptions::stop_hook`): after SIGTERM (or the trigger) once the
    /// drain is over, with `false`; after SIGQUIT (an upgrade) once no request
    /// is in progress any more (the drain limit at most), with `true`.
    /// `release` stops what else runs and ends the process, so that neither
    /// waits out the grace period; what the new process of an upgrade waits
    /// for (the data directory, the admin listeners) is released as soon as
    /// the old one is done. Without an upgrade, SIGTERM ends as before.
    pub fn on_graceful_stop(&self, release: impl FnOnce(bool) + Send + 'static) {
        use pingora_core::server::ExecutionPhase;
        use tokio::sync::broadcast::error::RecvError;
        let mut phases = self.server.watch_execution_phase();
        let drain = Arc::clone(&self.watch.drain);
        let upgrading = Arc::clone(&self.upgrading);
        let spawned = std::thread::Builder::new()
            .name("ingress-stop".into())
            .spawn(move || {
                loop {
                    match phases.blocking_recv() {
                        Ok(ExecutionPhase::ShutdownGracePeriod) => break,
                        Ok(ExecutionPhase::Terminated) | Err(RecvError::Closed) => return,
                        Ok(_) | Err(RecvError::Lagged(_)) => {}
                    }
                }
                let upgrade = upgrading.load(std::sync::atomic::Ordering::Acquire);
                if upgrade {
                    let deadline = std::time::Instant::now() + DRAIN_LIMIT;
                    while drain.busy() > 0 && std::time::Instant::now() < deadline {
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
                release(upgrade);
            });
        if let Err(e) = spawned {
            log::warn!("cannot start the stop thread ({e}); stopping after Pingora's grace period");
        }
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

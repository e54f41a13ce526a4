//! `ingress --config FILE [--upgrade]`: one process with the Pingora proxy, the
//! control plane (store, gRPC admin API, admin HTTP, GC and lifecycle loops) and
//! the runtimes; serves until SIGTERM (graceful: running instances are stopped
//! too), SIGINT, or SIGQUIT (a graceful upgrade: the listening sockets go to
//! the process started with `--upgrade`). SIGHUP reloads the config file
//! ([`reload`]) and `tls.cert_dir`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use ingress_config::{Config, NodeRole};
use ingress_control_api::certs::{CertSettings, Certs};
use ingress_control_api::grpc::Authenticator;
use ingress_control_api::replication::{Feed, Nodes};
use ingress_control_api::runtime::{process_tree, reap_leftovers};
use ingress_control_api::serve::ReplicationSettings;
use ingress_control_api::serve::{self, ControlSettings};
use ingress_control_api::store::{DataDirLock, SqliteSandboxLedger, SqliteStore};
use ingress_control_api::{ControlMetrics, ControlPlane, PlaneSettings};
use ingress_proxy::access_log::install_reopen_signal;
use ingress_proxy::http1::raise_descriptor_limit;
use ingress_proxy::time::now_unix_millis;
use ingress_proxy::tls::{CertStore, Edge, TlsOptions};
use ingress_proxy::{
    AccessLog, IngressProxy, LeaseCache, Listeners, Metrics, ProxyOptions, ProxyServer,
    ServerOptions, SnapshotHandle,
};

#[path = "ingress/reload.rs"]
mod reload;
#[path = "ingress/replica.rs"]
mod replica;

const USAGE: &str = "usage: ingress --config FILE [--upgrade]";

/// The command line.
pub struct Args {
    pub config: PathBuf,
    /// Take over the listening sockets of the running ingress (sent SIGQUIT)
    /// instead of binding them.
    pub upgrade: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    let mut upgrade = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                path = Some(args.next().ok_or("--config needs a file path")?);
            }
            "--upgrade" | "-u" => upgrade = true,
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    let config = path.map(PathBuf::from).ok_or_else(|| USAGE.to_string())?;
    Ok(Args { config, upgrade })
}

/// How long a process started with `--upgrade` waits for the old one to
/// release the data directory (it finishes its requests and stops its
/// sandboxes first).
const UPGRADE_WAIT: std::time::Duration = std::time::Duration::from_secs(120);

fn main() -> ExitCode {
    let loaded = parse_args().and_then(|args| {
        Config::load(&args.config)
            .map(|config| (args, config))
            .map_err(|e| e.to_string())
    });
    match loaded {
        Ok((args, config)) => match run(&args, &config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(message) => {
                eprintln!("ingress: {message}");
                ExitCode::FAILURE
            }
        },
        Err(message) => {
            eprintln!("ingress: {message}");
            ExitCode::from(2)
        }
    }
}

/// The longest a stopping process waits for its last access-log lines.
const ACCESS_LOG_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

/// The access log of `[log]`, its writer thread started and SIGUSR1 set to
/// reopen its file; off when `log.access = "off"` (SIGUSR1 is then ignored).
fn start_access_log(config: &Config, metrics: &Metrics) -> Result<AccessLog, String> {
    let log = AccessLog::start(
        &config.log.access,
        config.log.access_format,
        config.log.access_buffer,
        metrics.access_log_dropped.clone(),
    )?;
    // Also with the log off: logrotate's postrotate sends SIGUSR1 whatever the
    // config says, and its default action would end the process.
    install_reopen_signal().map_err(|e| format!("log.access: cannot handle SIGUSR1: {e}"))?;
    Ok(log)
}

/// Wires the store, the control plane and the proxy, and serves until a signal.
fn run(args: &Args, config: &Config) -> Result<(), String> {
    let log_from_env = reload::init_logging(config)?;
    if config.node.role == NodeRole::Proxy {
        return replica::run(args, config, log_from_env);
    }
    match raise_descriptor_limit() {
        Ok(limits) if limits.soft_before != limits.soft => log::info!(
            "descriptor limit raised from {} to {} (the hard limit)",
            limits.soft_before,
            limits.soft
        ),
        Ok(limits) => log::info!(
            "descriptor limit {} (hard limit {})",
            limits.soft,
            limits.hard
        ),
        Err(e) => log::warn!("cannot read the descriptor limit: {e}"),
    }
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("cannot set up metrics: {e}"))?);
    let certs = Arc::new(CertStore::from_config(config, Some(Arc::clone(&metrics))));
    let server_options = ServerOptions::from_config(config)
        .with_tls(config, Arc::clone(&certs))
        .upgrading(args.upgrade);
    let (listeners, lock) = if args.upgrade {
        // First the proxy's listening sockets, from the old process (it sends
        // them on SIGQUIT, then serves 5 s more, stops accepting and finishes
        // its requests); then its data directory, once it exited: its store,
        // admin listeners and sandboxes are gone with it.
        let listeners = Listeners::bootstrap(&server_options)?;
        let lock = DataDirLock::acquire_waiting(&config.store.data_dir, UPGRADE_WAIT)
            .map_err(|e| format!("--upgrade: {e}"))?;
        log::info!("--upgrade: the old process released the data directory; starting");
        (listeners, lock)
    } else {
        // One ingress per data directory, decided before the store is opened and
        // before any sandbox is started or reaped; held until the process ends.
        let lock = DataDirLock::acquire(&config.store.data_dir).map_err(|e| e.to_string())?;
        // Pingora retries a busy port for 30 s and then fails inside its own thread,
        // leaving a process that serves nothing: check the port first and fail at once.
        std::net::TcpListener::bind(config.proxy.listen)
            .map_err(|e| format!("proxy.listen {}: cannot listen: {e}", config.proxy.listen))?;
        if let Some(tls) = &config.tls {
            std::net::TcpListener::bind(tls.listen)
                .map_err(|e| format!("tls.listen {}: cannot listen: {e}", tls.listen))?;
        }
        (Listeners::bootstrap(&server_options)?, lock)
    };
    // Processes get a free port on runtime.process.bind: an IP this machine
    // does not have would fail every start; say so now.
    let process_bind = config.runtime.process.bind;
    std::net::TcpListener::bind((process_bind, 0)).map_err(|e| {
        format!("runtime.process.bind {process_bind}: cannot listen: {e}; give an IP of this machine (default 127.0.0.1)")
    })?;
    let snapshots =
        Arc::new(SnapshotHandle::new().with_generation_gauge(metrics.snapshot_generation.clone()));
    let control_metrics = Arc::new(
        ControlMetrics::register(metrics.registry())
            .map_err(|e| format!("cannot set up metrics: {e}"))?,
    );
    let store = SqliteStore::open(&config.store.data_dir).map_err(|e| e.to_string())?;
    let mut settings = PlaneSettings::from_config(config);
    let ledger =
        Arc::new(SqliteSandboxLedger::open(&config.store.data_dir).map_err(|e| e.to_string())?);
    reap_previous_run(config, &settings.sandbox_scope, &ledger)?;
    settings.sandbox_ledger = Some(ledger);
    let plane = ControlPlane::open(
        Box::new(store),
        Arc::clone(&snapshots),
        settings,
        control_metrics,
        Arc::new(now_unix_millis),
    )
    .map_err(|e| e.to_string())?;
    // The store's and tls.cert_dir's certificates, published to `certs` now and
    // on every change.
    let cert_manager = Certs::open(
        Arc::clone(&plane),
        Arc::clone(&certs),
        CertSettings::from_config(config),
    );
    let replication = (config.node.role == NodeRole::Control).then(|| {
        let feed = Arc::new(Feed::new());
        let nodes = Arc::new(Nodes::new(config.activity.report_interval.0));
        plane.attach_feed(Arc::clone(&feed), Arc::clone(&nodes));
        log::info!(
            "control node: serving the routing stream to replicas (epoch {})",
            feed.epoch()
        );
        ReplicationSettings {
            feed,
            nodes,
            report_interval: config.activity.report_interval.0,
        }
    });

    let mut proxy = IngressProxy::new(
        Arc::clone(&snapshots),
        LeaseCache::new(config.proxy.lease_cache_capacity, config.proxy.lease_ttl.0)
            .with_instance_limit(config.runtime.max_conns_per_instance),
        plane.lease_source(),
        Arc::clone(&metrics),
        ProxyOptions::from_config(config),
    )
    .with_access_log(start_access_log(config, &metrics)?);
    let access_log = proxy.access_log().clone();
    if let Some(tls) = TlsOptions::from_config(config) {
        proxy = proxy.with_edge(Edge::new(tls, Arc::clone(&certs)));
    }
    log::info!(
        "at most {} open client connections (proxy.max_connections{})",
        server_options.max_connections,
        if config.proxy.max_connections == 0 {
            ", derived from the descriptor limit"
        } else {
            ""
        }
    );
    let (server, trigger) = ProxyServer::build_on(listeners, &server_options, proxy, true)?;
    let connections = server.connections();

    let tokens = reload::admin_tokens(config);
    if tokens.is_empty() {
        log::warn!("admin.tokens is empty: every admin API call will be refused");
    }
    let authenticator = Authenticator::new(tokens);
    let reloader = Arc::new(reload::Reloader::new(
        args.config.clone(),
        config.clone(),
        server.live(),
        Some(authenticator.clone()),
        log_from_env,
    ));
    let upgraded = server.upgrade_flag();
    let render_metrics = Arc::clone(&metrics);
    let gauges = Arc::clone(&plane);
    let cert_gauges = Arc::clone(&certs);
    let expiry_warning_secs = config.tls.as_ref().map_or(0, |tls| {
        i64::try_from(tls.expiry_warning.0.as_secs()).unwrap_or(i64::MAX)
    });
    let control = serve::spawn(
        ControlSettings {
            proxy_listen: config.proxy.listen,
            proxy_full: Arc::new(move || {
                connections.is_saturated().then(|| {
                    format!(
                        "the proxy holds {} open client connections (proxy.max_connections)",
                        connections.max()
                    )
                })
            }),
            grpc_listen: config.admin.grpc_listen,
            http_listen: config.admin.http_listen,
            authenticator,
            gc_interval: config.ephemeral.gc_interval.0,
            idle_interval: config.idle.check_interval.0,
            replication,
            certs: cert_manager,
            on_hangup: Some(Arc::new(move || {
                let _ = reloader.reload();
            })),
        },
        Arc::clone(&plane),
        Arc::new(move || {
            gauges.refresh_version_gauge();
            let now_secs = i64::try_from(now_unix_millis() / 1000).unwrap_or(i64::MAX);
            cert_gauges.refresh_metrics(now_secs, expiry_warning_secs);
            render_metrics.encode_text()
        }),
        Box::new(move || trigger.trigger()),
    )?;
    log::info!(
        "proxy on http://{}, admin gRPC on {}, metrics on http://{}/metrics",
        config.proxy.listen,
        config.admin.grpc_listen,
        config.admin.http_listen
    );
    if let Some(tls) = &config.tls {
        log::info!(
            "TLS on https://{} ({}), {} certificate(s) loaded",
            tls.listen,
            if tls.h2 {
                "HTTP/2 and HTTP/1.1"
            } else {
                "HTTP/1.1"
            },
            certs.load().len()
        );
    }
    // Pingora builds its own runtimes and blocks until SIGTERM/SIGINT (or until the
    // control plane fails and triggers the stop).
    // Stopping the control plane and the sandboxes, then releasing the data
    // directory: after the proxy stopped, or during an upgrade as soon as the
    // old proxy stopped accepting and finished its requests (the new process
    // waits for exactly this to start).
    let rest = Arc::new(std::sync::Mutex::new(Some((control, plane, lock))));
    let stopped = Arc::new(std::sync::Mutex::new(None));
    let stop_rest = {
        let rest = Arc::clone(&rest);
        let stopped = Arc::clone(&stopped);
        move || {
            // Held to the end: a second caller waits until the first is done.
            let mut rest = rest.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((control, plane, lock)) = rest.take() {
                let result = control.stop();
                plane.shutdown();
                drop(lock);
                *stopped.lock().unwrap_or_else(|p| p.into_inner()) = Some(result);
            }
        }
    };
    server.on_graceful_stop({
        let stop_rest = stop_rest.clone();
        let stopped = Arc::clone(&stopped);
        move |upgrade| {
            if upgrade {
                log::info!("upgrade: no request in progress; stopping the control plane and this process's sandboxes, then releasing the data directory to the new process");
            }
            stop_rest();
            // The last requests' lines, before the exit cuts the writer off.
            access_log.flush(ACCESS_LOG_FLUSH);
            let result = stopped.lock().unwrap_or_else(|p| p.into_inner()).take();
            match result.unwrap_or(Ok(())) {
                Ok(()) => std::process::exit(0),
                Err(message) => {
                    eprintln!("ingress: {message}");
                    std::process::exit(1)
                }
            }
        }
    });
    server.run();
    if upgraded.load(std::sync::atomic::Ordering::Acquire) {
        log::info!("upgrade: the proxy stopped");
    }
    stop_rest();
    let result = stopped.lock().unwrap_or_else(|p| p.into_inner()).take();
    result.unwrap_or(Ok(()))
}

/// Stops what a previous run on this data directory left running (it was killed
/// with `kill -9` or crashed), before anything starts.
fn reap_previous_run(
    config: &Config,
    scope: &str,
    ledger: &Arc<SqliteSandboxLedger>,
) -> Result<(), String> {
    let reaped = reap_leftovers(scope, ledger.as_ref(), config.runtime.stop_grace.0)?;
    if !reaped.stopped.is_empty() || reaped.records > 0 {
        log::warn!(
            "a previous run left {} sandbox record(s) and {} process(es) behind; stopped: {:?}",
            reaped.records,
            reaped.stopped.len(),
            reaped.stopped.iter().map(|p| p.pid).collect::<Vec<_>>()
        );
    }
    if !reaped.survivors.is_empty() {
        log::error!(
            "processes {:?} of a previous run (marked {}={scope}:...) survived SIGKILL",
            reaped.survivors.iter().map(|p| p.pid).collect::<Vec<_>>(),
            process_tree::SANDBOX_ENV
        );
    }
    Ok(())
}

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

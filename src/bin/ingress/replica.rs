//! `node.role = "proxy"`: the data plane alone, following a control node. No
//! store, no runtimes, no admin API: the routing stream fills the snapshot and
//! the endpoint table, wakes go to the control node, and the admin HTTP
//! listener serves `/metrics`, `/healthz`, `/readyz` and `/routing`.

use std::sync::Arc;
use std::time::Duration;

use ingress_config::Config;
use ingress_control_api::replication::client::ControlClients;
use ingress_control_api::replication::{RemoteLeases, Replica, ReplicaMetrics};
use ingress_control_api::serve::serve_admin_http;
use ingress_proxy::http1::raise_descriptor_limit;
use ingress_proxy::{
    IngressProxy, LeaseCache, LeaseSource, Listeners, Metrics, ProxyOptions, ProxyServer,
    ServerOptions, SnapshotHandle,
};

use super::reload::Reloader;
use tokio::sync::watch;

/// Runs a replica until SIGTERM/SIGINT/SIGQUIT; SIGHUP reloads the config.
pub fn run(args: &super::Args, config: &Config, log_from_env: bool) -> Result<(), String> {
    if let Ok(limits) = raise_descriptor_limit() {
        log::info!(
            "descriptor limit {} (hard limit {})",
            limits.soft,
            limits.hard
        );
    }
    let server_options = ServerOptions::from_config(config).upgrading(args.upgrade);
    let listeners = if args.upgrade {
        // The old replica sends its listening socket on SIGQUIT.
        Listeners::bootstrap(&server_options)?
    } else {
        std::net::TcpListener::bind(config.proxy.listen)
            .map_err(|e| format!("proxy.listen {}: cannot listen: {e}", config.proxy.listen))?;
        Listeners::bootstrap(&server_options)?
    };
    let node_id = match config.node.id.as_str() {
        "" => format!(
            "{}:{}",
            hostname().unwrap_or_else(|| "replica".to_string()),
            config.proxy.listen.port()
        ),
        id => id.to_string(),
    };
    let token = config
        .control
        .token
        .clone()
        .ok_or("control.token: a replica needs a token (the config check sets it)")?;
    let metrics = Arc::new(Metrics::new().map_err(|e| format!("cannot set up metrics: {e}"))?);
    let replica_metrics = ReplicaMetrics::register(metrics.registry())
        .map_err(|e| format!("cannot set up metrics: {e}"))?;
    let snapshots =
        Arc::new(SnapshotHandle::new().with_generation_gauge(metrics.snapshot_generation.clone()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("ingress-replica")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the replica's runtime: {e}"))?;
    // tonic's lazy channels start their workers on the current runtime; the
    // context is left before Pingora builds its own runtimes below.
    let clients = {
        let _context = runtime.enter();
        Arc::new(ControlClients::new(&config.control.endpoints, &token)?)
    };
    let leases = RemoteLeases::new(Arc::clone(&clients), &node_id, config.wake.timeout.0);
    let status = Replica::new_status();
    let replica = Arc::new(Replica {
        node_id: node_id.clone(),
        address: config.proxy.listen.to_string(),
        clients,
        snapshots: Arc::clone(&snapshots),
        leases: Arc::clone(&leases),
        status: Arc::clone(&status),
        metrics: replica_metrics,
        report_interval: config.activity.report_interval.0,
    });
    let proxy = IngressProxy::new(
        Arc::clone(&snapshots),
        LeaseCache::new(config.proxy.lease_cache_capacity, config.proxy.lease_ttl.0)
            .with_instance_limit(config.runtime.max_conns_per_instance),
        leases as Arc<dyn LeaseSource>,
        Arc::clone(&metrics),
        ProxyOptions::from_config(config),
    )
    .with_access_log(super::start_access_log(config, &metrics)?);
    let access_log = proxy.access_log().clone();
    let (server, _trigger) = ProxyServer::build_on(listeners, &server_options, proxy, true)?;
    let connections = server.connections();
    let reloader = Arc::new(Reloader::new(
        args.config.clone(),
        config.clone(),
        server.live(),
        None,
        log_from_env,
    ));

    // After an upgrade the old replica holds its admin listener until it exits.
    let bind_until = std::time::Instant::now()
        + if args.upgrade {
            super::UPGRADE_WAIT
        } else {
            Duration::ZERO
        };
    let http = loop {
        match runtime.block_on(tokio::net::TcpListener::bind(config.admin.http_listen)) {
            Ok(http) => break http,
            Err(e)
                if e.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < bind_until =>
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => {
                return Err(format!(
                    "admin.http_listen {}: cannot listen: {e}",
                    config.admin.http_listen
                ))
            }
        }
    };
    let hangup = runtime.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            .map_err(|e| log::warn!("cannot take SIGHUP (config reloads): {e}"))
            .ok()
    });
    if let Some(mut hangup) = hangup {
        runtime.spawn(async move {
            while hangup.recv().await.is_some() {
                let reloader = Arc::clone(&reloader);
                let _ = tokio::task::spawn_blocking(move || reloader.reload()).await;
            }
        });
    }
    let (stop, stopped) = watch::channel(false);
    let ready_status = Arc::clone(&status);
    let render = Arc::clone(&metrics);
    runtime.spawn(serve_admin_http(
        http,
        config.proxy.listen,
        Arc::new(move || {
            if !ready_status.has_state() {
                return Some("no routing state from the control node yet".to_string());
            }
            connections.is_saturated().then(|| {
                format!(
                    "the proxy holds {} open client connections (proxy.max_connections)",
                    connections.max()
                )
            })
        }),
        Arc::new(move || render.encode_text()),
        status.subscribe(),
        None,
        stopped.clone(),
    ));
    runtime.spawn(Arc::clone(&replica).follow(stopped.clone()));
    runtime.spawn(Arc::clone(&replica).report(stopped.clone()));
    log::info!(
        "replica {node_id}: proxy on http://{}, following {}, metrics on http://{}/metrics",
        config.proxy.listen,
        config.control.endpoints.join(", "),
        config.admin.http_listen
    );
    {
        let stop = stop.clone();
        server.on_graceful_stop(move |_upgrade| {
            stop.send_replace(true);
            // The routing stream and activity reports end with the process.
            std::thread::sleep(Duration::from_millis(100));
            access_log.flush(super::ACCESS_LOG_FLUSH);
            std::process::exit(0);
        });
    }
    if args.upgrade {
        // Serve once the routing state arrived: until then every request
        // would get 404; the old replica serves meanwhile.
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while !status.has_state() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    server.run();
    stop.send_replace(true);
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok(())
}

/// The machine's host name, if it has one.
fn hostname() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").ok()?;
    let name = name.trim();
    (!name.is_empty()).then(|| name.to_string())
}

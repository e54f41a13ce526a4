//! `ingress --config FILE`: parses the configuration, wires the data plane to the
//! control plane's runtime, and serves until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use ingress_config::Config;
use ingress_control_api::StaticRuntime;
use ingress_proxy::{
    IngressProxy, LeaseCache, Metrics, ProxyOptions, ProxyServer, ServerOptions, SnapshotHandle,
};

const USAGE: &str = "usage: ingress --config FILE";

fn config_path() -> Result<PathBuf, String> {
    let mut args = std::env::args().skip(1);
    let mut path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                path = Some(args.next().ok_or("--config needs a file path")?);
            }
            "--help" | "-h" => return Err(USAGE.to_string()),
            other => return Err(format!("unknown argument {other:?}; {USAGE}")),
        }
    }
    path.map(PathBuf::from).ok_or_else(|| USAGE.to_string())
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let config = match config_path().and_then(|path| Config::load(&path).map_err(|e| e.to_string()))
    {
        Ok(config) => config,
        Err(message) => {
            eprintln!("ingress: {message}");
            return ExitCode::from(2);
        }
    };
    let metrics = match Metrics::new() {
        Ok(metrics) => Arc::new(metrics),
        Err(e) => {
            eprintln!("ingress: cannot set up metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let snapshots =
        Arc::new(SnapshotHandle::new().with_generation_gauge(metrics.snapshot_generation.clone()));
    let runtime = Arc::new(StaticRuntime::new());
    let proxy = IngressProxy::new(
        snapshots,
        LeaseCache::new(config.proxy.lease_cache_capacity, config.proxy.lease_ttl.0),
        runtime,
        metrics,
        ProxyOptions::from_config(&config),
    );
    let (server, _trigger) = ProxyServer::new(&ServerOptions::from_config(&config), proxy, true);
    log::warn!(
        "no control plane yet: serving an empty routing snapshot, so every request is answered 404 (no route)"
    );
    log::info!("proxy listening on http://{}", config.proxy.listen);
    server.run();
    ExitCode::SUCCESS
}

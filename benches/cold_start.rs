//! The cost of waking a sleeping version (issue 4), on the whole in-process stack:
//! control plane, pools, process runtime and the Pingora proxy on loopback.
//!
//! - `wake_overhead`: from the process being ready (it writes `time_ns()` the
//!   moment it listens) to the first byte of the proxied answer at the client.
//!   This is what the ingress adds to a cold start: noticing readiness (probes
//!   every 1–5 ms) and forwarding the held request. Target: median ≤ 10 ms.
//! - Starts for 1,000 concurrent cold requests: printed and asserted to be 1.
//!
//! Run: `cargo bench --bench cold_start`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use criterion::{criterion_group, criterion_main, Criterion};
use ingress_control_api::model::ReadyCheck;
use ingress_control_api::store::SqliteStore;
use ingress_control_api::{
    ControlMetrics, ControlPlane, DeployRequest, DeploySource, Observed, PlaneSettings,
};
use ingress_proxy::time::now_unix_millis;
use ingress_proxy::{
    IngressProxy, LeaseCache, Metrics, ProxyOptions, ProxyServer, ServerOptions, ShutdownTrigger,
    SnapshotHandle,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/app.py");
const HOST: &str = "pr-1.shop.example.com";

struct Stack {
    plane: Arc<ControlPlane>,
    proxy: SocketAddr,
    trigger: ShutdownTrigger,
    version: String,
    dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn start_stack() -> Stack {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut config = ingress_config::Config::default();
    config.store.data_dir = dir.path().join("data");
    config.proxy.listen = SocketAddr::from(([127, 0, 0, 1], free_port()));
    config.wake.max_waiters = 2_000;
    config.runtime.stop_grace.0 = Duration::from_secs(2);
    config.runtime.drain_timeout.0 = Duration::from_secs(2);
    let metrics = Arc::new(Metrics::new().expect("metrics"));
    let snapshots = Arc::new(SnapshotHandle::new());
    let store = SqliteStore::open(&config.store.data_dir).expect("store");
    let plane = ControlPlane::open(
        Box::new(store),
        Arc::clone(&snapshots),
        PlaneSettings::from_config(&config),
        Arc::new(ControlMetrics::register(metrics.registry()).expect("control metrics")),
        Arc::new(now_unix_millis),
    )
    .expect("control plane");
    let proxy = IngressProxy::new(
        snapshots,
        LeaseCache::new(config.proxy.lease_cache_capacity, config.proxy.lease_ttl.0)
            .with_instance_limit(config.runtime.max_conns_per_instance),
        plane.lease_source(),
        metrics,
        ProxyOptions::from_config(&config),
    );
    let (server, trigger) = ProxyServer::new(&ServerOptions::from_config(&config), proxy, false);
    server.spawn().expect("proxy thread");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(config.proxy.listen).is_err() {
        assert!(Instant::now() < deadline, "the proxy did not listen");
        std::thread::sleep(Duration::from_millis(10));
    }
    plane.create_app("bench", "shop").expect("app");
    plane
        .add_route("bench", "shop.example.com", "shop")
        .expect("route");
    let command = format!(
        "exec python3 {APP} --starts {} --ready-file {}",
        dir.path().join("starts").display(),
        dir.path().join("ready").display()
    );
    let version = plane
        .deploy(
            "bench",
            &DeployRequest {
                app: "shop".into(),
                source: DeploySource::Command {
                    command,
                    ready: ReadyCheck::Http { path: "/".into() },
                },
                env: None,
                branch: None,
                ephemeral: Some(("pr-1".into(), Some("1h".into()))),
            },
        )
        .expect("deploy")
        .version
        .id;
    Stack {
        plane,
        proxy: config.proxy.listen,
        trigger,
        version,
        dir,
    }
}

impl Stack {
    fn starts(&self) -> usize {
        std::fs::read_to_string(self.dir.path().join("starts"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    fn ready_file(&self) -> PathBuf {
        self.dir.path().join("ready")
    }

    /// Stops the version (if it runs) and waits until it is observed stopped.
    fn put_to_sleep(&self) {
        let observed = |plane: &ControlPlane| {
            plane.versions("shop", false).expect("versions")[0].observed_state
        };
        if observed(&self.plane) != Observed::Stopped {
            self.plane
                .stop_version("bench", "shop", &self.version, false)
                .expect("stop");
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while observed(&self.plane) != Observed::Stopped {
            assert!(Instant::now() < deadline, "the version did not stop");
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = std::fs::remove_file(self.ready_file());
    }
}

/// Sends one request; returns the status and the wall-clock time of the first
/// byte of the answer (Unix ns).
async fn request(proxy: SocketAddr) -> (u16, u128) {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut first = [0u8; 1];
    stream.read_exact(&mut first).await.expect("first byte");
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.expect("answer");
    rest.insert(0, first[0]);
    let text = String::from_utf8_lossy(&rest);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, at)
}

fn read_ready_ns(path: &Path) -> u128 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .expect("the app wrote its ready time")
}

fn wake(c: &mut Criterion) {
    let stack = start_stack();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");

    // Starts for 1,000 concurrent cold requests.
    stack.put_to_sleep();
    let before = stack.starts();
    let statuses = runtime.block_on(async {
        let tasks: Vec<_> = (0..1_000)
            .map(|_| {
                let proxy = stack.proxy;
                tokio::spawn(async move {
                    tokio::time::timeout(Duration::from_secs(60), request(proxy))
                        .await
                        .map_or(0, |(status, _)| status)
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap_or(0));
        }
        statuses
    });
    let starts = stack.starts() - before;
    let ok = statuses.iter().filter(|s| **s == 200).count();
    println!("cold_start: 1000 concurrent cold requests -> {ok} answered 200, {starts} start(s)");
    assert_eq!(ok, 1_000, "every request is answered 200");
    assert_eq!(starts, 1, "single flight: exactly one start");

    // Ready -> first proxied byte.
    let mut overheads: Vec<Duration> = Vec::new();
    let mut group = c.benchmark_group("cold_start");
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(1));
    group.measurement_time(Duration::from_secs(5));
    group.bench_function("ready_to_first_byte", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                stack.put_to_sleep();
                let (status, first_byte_ns) = runtime.block_on(request(stack.proxy));
                assert_eq!(status, 200);
                let ready_ns = read_ready_ns(&stack.ready_file());
                let overhead = Duration::from_nanos(
                    u64::try_from(first_byte_ns.saturating_sub(ready_ns)).unwrap_or(0),
                );
                overheads.push(overhead);
                total += overhead;
            }
            total
        })
    });
    group.finish();
    overheads.sort();
    if !overheads.is_empty() {
        let pick = |q: f64| overheads[((overheads.len() - 1) as f64 * q) as usize];
        println!(
            "cold_start: ready -> first proxied byte over {} wakes: median {:.2} ms, p90 {:.2} ms, max {:.2} ms (target: median <= 10 ms)",
            overheads.len(),
            pick(0.5).as_secs_f64() * 1e3,
            pick(0.9).as_secs_f64() * 1e3,
            overheads[overheads.len() - 1].as_secs_f64() * 1e3,
        );
    }
    stack.plane.shutdown();
    stack.trigger.trigger();
}

criterion_group!(benches, wake);
criterion_main!(benches);

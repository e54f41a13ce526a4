//! Micro benchmarks of the data plane's hot path and of snapshot publishing.
//!
//! - `resolve_and_lease_hit/N`: one snapshot load, host normalisation and
//!   resolution, and a lease-cache hit, at N routes (half exact, half wildcard, one
//!   app per exact route, 10 preview labels per app). Hosts rotate over exact,
//!   label and wildcard requests spread over all apps.
//! - `snapshot_publish/10k_apps_100k_versions`: building and swapping in a snapshot
//!   of 10,000 apps with 10 versions each (1 active, 9 previews).

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ingress_proxy::{
    resolve, AppSpec, LeaseCache, PreviewSpec, RouteSpec, SnapshotHandle, SnapshotInput, VersionRef,
};

const LABELS_PER_APP: usize = 10;

fn version(id: String) -> VersionRef {
    VersionRef { id, state_epoch: 0 }
}

/// `apps` apps, each with an active version, `labels` previews, an exact route
/// `appI.example.com` and, when `wildcards`, a wildcard route `*.appI.wild.test`.
fn input(apps: usize, labels: usize, wildcards: bool) -> SnapshotInput {
    let mut input = SnapshotInput::default();
    for i in 0..apps {
        let name = format!("app{i}");
        input.apps.push(AppSpec {
            name: name.clone(),
            active: Some(version(format!("v{i}"))),
            previews: (0..labels)
                .map(|l| PreviewSpec {
                    label: format!("pr-{l}"),
                    version: version(format!("p{i}-{l}")),
                    expires_at_ms: u64::MAX,
                })
                .collect(),
            expired_labels: vec![],
        });
        input
            .routes
            .push(RouteSpec::exact(&format!("{name}.example.com"), &name));
        if wildcards {
            input
                .routes
                .push(RouteSpec::wildcard(&format!("{name}.wild.test"), &name));
        }
    }
    input
}

fn resolve_and_lease_hit(c: &mut Criterion) {
    let mut group = c.benchmark_group("resolve_and_lease_hit");
    for routes in [1_000usize, 10_000, 100_000] {
        let apps = routes / 2;
        let handle = SnapshotHandle::new();
        handle
            .publish(&input(apps, LABELS_PER_APP, true))
            .expect("benchmark snapshot");
        // 1,024 hosts spread over the apps: a third exact, a third label, a third
        // wildcard, written as clients do (mixed case, some with a port).
        let hosts: Vec<String> = (0..1_024usize)
            .map(|n| {
                let app = (n * 7_919) % apps;
                match n % 3 {
                    0 => format!("app{app}.example.com"),
                    1 => format!("pr-{}.App{app}.example.com:8080", n % LABELS_PER_APP),
                    _ => format!("x{n}.app{app}.wild.test"),
                }
            })
            .collect();
        let cache = LeaseCache::new(10_000, Duration::from_secs(3_600));
        let addr = SocketAddr::from(([127, 0, 0, 1], 9));
        for host in &hosts {
            let snapshot = handle.load();
            let target = resolve(&snapshot, host.as_bytes(), 1)
                .expect("host resolves")
                .target;
            cache.insert(
                target,
                ingress_proxy::Grant::new(vec![addr], ingress_proxy::lease::LeaseValidity::new()),
                1,
            );
        }
        let mut next = 0usize;
        group.bench_function(BenchmarkId::from_parameter(routes), |b| {
            b.iter(|| {
                let host = &hosts[next & 1_023];
                next = next.wrapping_add(1);
                let snapshot = handle.load();
                let resolved = resolve(&snapshot, black_box(host.as_bytes()), 1);
                let lease = resolved.ok().and_then(|r| cache.get(r.target, 1));
                black_box(lease.map(|l| l.pick()))
            })
        });
    }
    group.finish();
}

fn snapshot_publish(c: &mut Criterion) {
    let mut group = c.benchmark_group("snapshot_publish");
    group.sample_size(10);
    let input = input(10_000, LABELS_PER_APP - 1, false);
    let handle = SnapshotHandle::new();
    handle.publish(&input).expect("benchmark snapshot");
    group.bench_function("10k_apps_100k_versions", |b| {
        b.iter(|| black_box(handle.publish(&input).expect("publish")))
    });
    group.finish();
}

criterion_group!(benches, resolve_and_lease_hit, snapshot_publish);
criterion_main!(benches);

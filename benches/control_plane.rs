//! How long a committed change takes to reach the proxy (issue target: ≤ 50 ms).
//!
//! `change_visible/N_apps`: one ephemeral deploy through `ControlPlane::deploy` on
//! a SQLite store in a temp dir (validation, one durable commit with fsync, snapshot
//! publish of the changed app only, arc-swap), followed by the resolve that finds the new
//! version in the proxy's snapshot. N apps each have an exact route, an active
//! version and 9 previews (N × 10 versions).

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use ingress_control_api::model::{
    App, DesiredState, Environment, Mutation, Route, RouteKind, RuntimeSpec, Version,
};
use ingress_control_api::store::{SqliteStore, Store};
use ingress_control_api::{
    ControlMetrics, ControlPlane, DeployRequest, DeploySource, PlaneSettings,
};
use ingress_proxy::time::now_unix_millis;
use ingress_proxy::{resolve, SnapshotHandle};

fn seed(store: &mut SqliteStore, apps: usize) {
    let spec = RuntimeSpec::Static {
        upstreams: vec![SocketAddr::from(([127, 0, 0, 1], 3000))],
    };
    let now = now_unix_millis();
    let mut mutations = Vec::new();
    for a in 0..apps {
        let name = format!("app{a}");
        let version = |id: String, label: Option<String>| Version {
            pool: id.clone(),
            desired: if label.is_some() {
                DesiredState::Stopped
            } else {
                DesiredState::Running
            },
            id,
            app: name.clone(),
            spec: spec.clone(),
            env: Environment::Preview,
            branch: None,
            expires_at_ms: label.as_ref().map(|_| now + 86_400_000),
            label,
            created_at_ms: now,
            cloned_from: None,
        };
        mutations.push(Mutation::PutVersion(version(format!("v{a}"), None)));
        for l in 0..9 {
            mutations.push(Mutation::PutVersion(version(
                format!("p{a}-{l}"),
                Some(format!("pr-{l}")),
            )));
        }
        mutations.push(Mutation::PutApp(App {
            name: name.clone(),
            created_at_ms: now,
            active_version: Some(format!("v{a}")),
        }));
        mutations.push(Mutation::PutRoute(Route {
            kind: RouteKind::Exact,
            host: format!("{name}.example.com"),
            app: name.clone(),
        }));
    }
    store.commit(&mutations).expect("seed the store");
}

fn change_visible(c: &mut Criterion) {
    let mut group = c.benchmark_group("change_visible");
    group.sample_size(20);
    for apps in [100usize, 1_000, 10_000] {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = SqliteStore::open(dir.path()).expect("store");
        seed(&mut store, apps);
        let snapshots = Arc::new(SnapshotHandle::new());
        let mut config = ingress_config::Config::default();
        config.store.data_dir = dir.path().to_path_buf();
        let plane = ControlPlane::open(
            Box::new(store),
            Arc::clone(&snapshots),
            PlaneSettings::from_config(&config),
            Arc::new(ControlMetrics::unregistered()),
            Arc::new(now_unix_millis),
        )
        .expect("control plane");
        let request = DeployRequest {
            app: "app0".into(),
            source: DeploySource::Upstreams(vec![SocketAddr::from(([127, 0, 0, 1], 4000))]),
            env: None,
            branch: None,
            ephemeral: Some(("bench".into(), Some("1h".into()))),
        };
        group.bench_function(BenchmarkId::from_parameter(format!("{apps}_apps")), |b| {
            b.iter(|| {
                let outcome = plane.deploy("bench", &request).expect("deploy");
                let snapshot = snapshots.load();
                let resolved = resolve(&snapshot, b"bench.app0.example.com", now_unix_millis())
                    .expect("the new version is routed");
                assert_eq!(&*resolved.target.version_id, outcome.version.id);
                black_box(resolved.kind)
            })
        });
    }
    group.finish();
}

criterion_group!(benches, change_visible);
criterion_main!(benches);

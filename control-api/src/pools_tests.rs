//! Tests of the pools on the static runtime (instant starts), so that drain,
//! reference counting and back-off are checked without process timing.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ingress_proxy::SnapshotHandle;

use super::*;
use crate::control_plane::Clock;
use crate::model::ReadyCheck;
use crate::runtime::{ProcessRuntime, StaticRuntime};

fn pools(backoff: Duration) -> (Pools, Arc<SnapshotHandle>) {
    pools_with_clock(backoff, Arc::new(|| 1_000))
}

fn pools_with_clock(backoff: Duration, clock: Clock) -> (Pools, Arc<SnapshotHandle>) {
    let snapshots = Arc::new(SnapshotHandle::new());
    let (pools, _events) = Pools::new(
        Runtimes {
            static_runtime: Arc::new(StaticRuntime),
            process_runtime: Arc::new(ProcessRuntime::new(
                &std::env::temp_dir(),
                Duration::from_secs(5),
            )),
        },
        PoolSettings {
            drain_timeout: Duration::from_secs(5),
            stop_grace: Duration::from_secs(1),
            failure_backoff: backoff,
            failure_backoff_max: backoff * 5,
        },
        Arc::clone(&snapshots),
        Arc::new(ControlMetrics::unregistered()),
        clock,
    )
    .unwrap();
    (pools, snapshots)
}

fn spec() -> RuntimeSpec {
    RuntimeSpec::Static {
        upstreams: vec![SocketAddr::from(([127, 0, 0, 1], 4000))],
    }
}

fn wait_until(pools: &Pools, version: &str, state: Observed) {
    for _ in 0..400 {
        if pools.observe(version).observed == state {
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    panic!(
        "{version} never became {state:?}: {:?}",
        pools.observe(version)
    );
}

#[test]
fn a_shared_pool_runs_until_its_last_holder_lets_go() {
    let (pools, _) = pools(Duration::from_secs(1));
    pools.register("v1", "v1", &spec());
    pools.register("clone", "v1", &spec());
    pools.hold("v1", false).unwrap();
    pools.hold("clone", false).unwrap();
    wait_until(&pools, "v1", Observed::Ready);
    pools.release("v1", false);
    assert_eq!(pools.observe("clone").observed, Observed::Ready);
    assert_eq!(pools.observe("v1").observed, Observed::Stopped, "v1 let go");
    pools.release("clone", true);
    wait_until(&pools, "v1", Observed::Stopped);
}

#[test]
fn a_stop_waits_for_in_flight_requests_and_a_wake_while_draining_keeps_the_instance() {
    let (pools, snapshots) = pools(Duration::from_secs(1));
    pools.register("v1", "v1", &spec());
    pools.hold("v1", false).unwrap();
    wait_until(&pools, "v1", Observed::Ready);
    let request = snapshots.activity().for_version("v1").enter(1_000);
    pools.release("v1", false);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pools.observe("v1").observed, Observed::Stopping, "draining");
    // Woken again while draining: ready at once, the stop is called off.
    pools.hold("v1", false).unwrap();
    assert_eq!(pools.observe("v1").observed, Observed::Ready);
    assert!(
        pools.observe("v1").ready_since_ms.is_some(),
        "the idle sweep can see it again"
    );
    drop(request);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(pools.observe("v1").observed, Observed::Ready);
    pools.release("v1", false);
    wait_until(&pools, "v1", Observed::Stopped);
}

#[test]
fn the_failure_back_off_doubles_up_to_its_cap() {
    let (pools, _) = pools(Duration::from_secs(2));
    let shared = &pools.shared;
    assert_eq!(shared.backoff(1), Duration::from_secs(2));
    assert_eq!(shared.backoff(2), Duration::from_secs(4));
    assert_eq!(shared.backoff(3), Duration::from_secs(8));
    assert_eq!(shared.backoff(4), Duration::from_secs(10));
    assert_eq!(shared.backoff(40), Duration::from_secs(10));
}

#[test]
fn a_version_joining_a_running_pool_is_idle_from_when_it_joined() {
    let now = Arc::new(std::sync::atomic::AtomicU64::new(1_000));
    let tick = Arc::clone(&now);
    let (pools, _) = pools_with_clock(
        Duration::from_secs(1),
        Arc::new(move || tick.load(std::sync::atomic::Ordering::Relaxed)),
    );
    pools.register("v1", "v1", &spec());
    pools.register("clone", "v1", &spec());
    pools.hold("v1", false).unwrap();
    wait_until(&pools, "v1", Observed::Ready);
    now.store(9_000, std::sync::atomic::Ordering::Relaxed);
    pools.hold("clone", false).unwrap();
    assert_eq!(pools.observe("v1").ready_since_ms, Some(1_000));
    assert_eq!(pools.observe("clone").ready_since_ms, Some(9_000));
    assert!(pools.holds("clone") && !pools.holds("nobody"));
}

#[test]
fn an_instance_that_dies_while_draining_is_started_afresh_by_the_next_wake() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    let (pools, snapshots) = pools(Duration::from_secs(1));
    let spec = RuntimeSpec::Process {
        command: format!(
            "echo $$ > {}; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1",
            pid_file.display()
        ),
        ready: ReadyCheck::Tcp,
    };
    pools.register("v1", "v1", &spec);
    pools.hold("v1", false).unwrap();
    for _ in 0..1000 {
        if pools.observe("v1").observed == Observed::Ready {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pools.observe("v1").observed, Observed::Ready);
    let request = snapshots.activity().for_version("v1").enter(1_000);
    pools.release("v1", false); // draining: the request is in flight
    let pid: i32 = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    // SAFETY: a plain signal to the child this test started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    std::thread::sleep(Duration::from_millis(300));
    drop(request);
    let wait = pools.hold("v1", false).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(20), wait.ready()).await })
        .expect("ready within 20 s")
        .expect("a fresh start");
    let handle = SnapshotHandle::new();
    handle
        .publish(&ingress_proxy::SnapshotInput {
            apps: vec![ingress_proxy::AppSpec {
                name: "shop".into(),
                active: Some(ingress_proxy::VersionRef {
                    id: "v1".into(),
                    state_epoch: 0,
                }),
                previews: vec![],
                expired_labels: vec![],
            }],
            routes: vec![],
        })
        .unwrap();
    let snapshot = handle.load_full();
    let target = snapshot.app("shop").unwrap().active().unwrap();
    let Ok(LeaseAnswer::Ready(grant)) = pools.lease(target) else {
        panic!("no lease after the fresh start");
    };
    assert!(
        std::net::TcpStream::connect(grant.addrs[0]).is_ok(),
        "a live instance"
    );
    pools.shutdown();
}

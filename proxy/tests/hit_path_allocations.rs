//! The hit path (host resolution + lease-cache hit) must not allocate (SPEC §2.3).
//! A counting global allocator, in a test binary of its own, checks it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::net::SocketAddr;
use std::time::Duration;

use ingress_proxy::{
    resolve, AppSpec, LeaseCache, PreviewSpec, RouteSpec, SnapshotHandle, SnapshotInput, VersionRef,
};

struct CountingAllocator;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: CountingAllocator = CountingAllocator;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn resolve_and_lease_hit_do_not_allocate() {
    let handle = SnapshotHandle::new();
    let apps = (0..100)
        .map(|i| AppSpec {
            name: format!("app{i}"),
            active: Some(VersionRef {
                id: format!("v{i}"),
                state_epoch: 0,
            }),
            previews: vec![PreviewSpec {
                label: "pr-1".into(),
                version: VersionRef {
                    id: format!("p{i}"),
                    state_epoch: 0,
                },
                expires_at_ms: u64::MAX,
            }],
            expired_labels: vec![],
        })
        .collect();
    let routes = (0..100)
        .map(|i| RouteSpec::exact(&format!("app{i}.example.com"), &format!("app{i}")))
        .collect();
    handle.publish(&SnapshotInput { apps, routes }).unwrap();
    let cache = LeaseCache::new(1_000, Duration::from_secs(3600));
    let hosts: Vec<String> = (0..100)
        .flat_map(|i| {
            [
                format!("app{i}.example.com"),
                format!("PR-1.app{i}.example.com:8080"),
            ]
        })
        .collect();
    let addr = SocketAddr::from(([127, 0, 0, 1], 9));
    for host in &hosts {
        let snapshot = handle.load();
        let target = resolve(&snapshot, host.as_bytes(), 1).unwrap().target;
        cache.insert(
            target,
            ingress_proxy::Grant::new(vec![addr], ingress_proxy::lease::LeaseValidity::new()),
            1,
        );
    }

    // Warm up (thread-local state of the cache and arc-swap), then measure.
    for host in &hosts {
        let snapshot = handle.load();
        let target = resolve(&snapshot, host.as_bytes(), 1).unwrap().target;
        assert!(cache.get(target, 1).is_some());
    }
    let before = allocations();
    let mut hits = 0;
    for _ in 0..50 {
        for host in &hosts {
            let snapshot = handle.load();
            let target = resolve(&snapshot, host.as_bytes(), 1).unwrap().target;
            if let Some(lease) = cache.get(target, 1) {
                std::hint::black_box(lease.pick());
                hits += 1;
            }
        }
    }
    let allocated = allocations() - before;
    assert_eq!(hits, 50 * hosts.len());
    assert_eq!(
        allocated, 0,
        "{allocated} allocations in {hits} resolve + lease hits"
    );
}

//! The lease cache (SPEC §2.3): where a version's ready instances are, keyed by
//! (app, label or none, version id) so that active and preview traffic never share
//! an entry and a replaced version's entry is never reused.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::instance_gate::{Gate, InstanceGates};
use crate::lease_source::Grant;
use crate::snapshot::Target;

/// Identifies one lease: the app, the preview label (none for active traffic) and
/// the version. Built once per snapshot entry, so a lookup only hashes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseKey {
    pub app: Arc<str>,
    pub label: Option<Arc<str>>,
    pub version_id: Arc<str>,
}

/// Whether the instances behind a grant still serve: one per running incarnation
/// of a pool, shared by every lease granted on it. The runtime revokes it when the
/// pool starts to stop or its instance exits, and every cached lease over those
/// instances stops being used at once, whatever version or label it was taken for.
#[derive(Debug, Default)]
pub struct LeaseValidity {
    revoked: AtomicBool,
}

impl LeaseValidity {
    /// A validity that holds until [`LeaseValidity::revoke`].
    pub fn new() -> Arc<LeaseValidity> {
        Arc::new(LeaseValidity::default())
    }

    /// Ends the validity of every lease that shares it.
    pub fn revoke(&self) {
        self.revoked.store(true, Ordering::Release);
    }

    /// True once revoked.
    pub fn is_revoked(&self) -> bool {
        self.revoked.load(Ordering::Acquire)
    }
}

/// The ready upstream addresses of one version, valid for one `state_epoch` of it
/// until `expires_at_ms`, until it is revoked, or until the instances behind it
/// stop (its shared [`LeaseValidity`]).
#[derive(Debug)]
pub struct Lease {
    addrs: Box<[SocketAddr]>,
    /// The concurrency gate of each address, when instances are limited.
    gates: Option<Box<[Arc<Gate>]>>,
    ready_at_ms: u64,
    state_epoch: u64,
    expires_at_ms: u64,
    revoked: AtomicBool,
    validity: Arc<LeaseValidity>,
    next: AtomicUsize,
}

impl Lease {
    /// A lease over `addrs` for the version state `state_epoch`, valid until
    /// `expires_at_ms` (Unix milliseconds) and while `validity` holds. `None` when
    /// `addrs` is empty: a lease always has somewhere to go.
    pub fn new(
        addrs: Vec<SocketAddr>,
        state_epoch: u64,
        expires_at_ms: u64,
        validity: Arc<LeaseValidity>,
    ) -> Option<Lease> {
        if addrs.is_empty() {
            return None;
        }
        Some(Lease {
            addrs: addrs.into_boxed_slice(),
            gates: None,
            ready_at_ms: 0,
            state_epoch,
            expires_at_ms,
            revoked: AtomicBool::new(false),
            validity,
            next: AtomicUsize::new(0),
        })
    }

    /// The next address in round-robin order.
    pub fn pick(&self) -> SocketAddr {
        self.addrs[self.next_turn() % self.addrs.len()]
    }

    /// A round-robin turn: the request's first address is `addr_at(turn)`, and
    /// its retries take `addr_at(turn + 1)`, `addr_at(turn + 2)`, ..., so each
    /// retry goes to an address this request has not tried yet.
    pub fn next_turn(&self) -> usize {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The address of `turn`, wrapping around the lease's addresses.
    pub fn addr_at(&self, turn: usize) -> SocketAddr {
        self.addrs[turn % self.addrs.len()]
    }

    /// The concurrency gate of the address of `turn`, when instances are limited.
    pub fn gate_at(&self, turn: usize) -> Option<&Arc<Gate>> {
        let gates = self.gates.as_ref()?;
        gates.get(turn % gates.len())
    }

    /// Unix milliseconds when the instances became ready (0 when not fresh).
    pub fn ready_at_ms(&self) -> u64 {
        self.ready_at_ms
    }

    /// Every address of the lease.
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The version state the lease was granted for.
    pub fn state_epoch(&self) -> u64 {
        self.state_epoch
    }

    /// True when the lease may still be used for `target` at `now_ms`.
    fn is_valid_for(&self, target: &Target, now_ms: u64) -> bool {
        self.state_epoch == target.state_epoch
            && now_ms < self.expires_at_ms
            && !self.revoked.load(Ordering::Relaxed)
            && !self.validity.is_revoked()
    }
}

/// The lease cache: a bounded moka cache keyed by [`LeaseKey`], which outlives
/// snapshot swaps, fronted by a memo slot in each snapshot [`Target`] that points
/// at the target's current lease. A hit is one lock-free atomic load of the memo and
/// no allocation; moka is consulted on the first request for a target after each
/// snapshot swap. (Moka's own read bookkeeping costs as much as the rest of the
/// request path; see benches/README.md.)
pub struct LeaseCache {
    leases: moka::sync::Cache<LeaseKey, Arc<Lease>, ahash::RandomState>,
    ttl_ms: u64,
    gates: InstanceGates,
}

impl LeaseCache {
    /// A cache of at most `capacity` leases, each used for at most `ttl`.
    pub fn new(capacity: u64, ttl: Duration) -> LeaseCache {
        LeaseCache {
            leases: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_live(ttl)
                .build_with_hasher(ahash::RandomState::new()),
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            gates: InstanceGates::new(0),
        }
    }

    /// The same cache, with leases that limit each instance to
    /// `max_conns_per_instance` requests at once (0 = no limit).
    pub fn with_instance_limit(mut self, max_conns_per_instance: usize) -> LeaseCache {
        self.gates = InstanceGates::new(max_conns_per_instance);
        self
    }

    /// Requests one instance serves at once (0 = no limit).
    pub fn instance_limit(&self) -> usize {
        self.gates.max()
    }

    /// The lease of `target` at `now_ms`, if one was granted for the version's
    /// current state and has neither expired nor been revoked. A lease from an
    /// earlier state (the version was stopped or restarted since) is never returned.
    pub fn get(&self, target: &Target, now_ms: u64) -> Option<Arc<Lease>> {
        if let Some(lease) = &*target.lease_memo.load() {
            if lease.is_valid_for(target, now_ms) {
                return Some(Arc::clone(lease));
            }
        }
        let lease = self.leases.get(&target.lease_key)?;
        if !lease.is_valid_for(target, now_ms) {
            return None;
        }
        target.lease_memo.store(Some(Arc::clone(&lease)));
        Some(lease)
    }

    /// Caches a lease over `grant`'s addresses for `target`, granted at `now_ms`
    /// and valid while the grant's validity holds, and returns it; `None` (and
    /// nothing cached) when the grant has no address.
    pub fn insert(&self, target: &Target, grant: Grant, now_ms: u64) -> Option<Arc<Lease>> {
        let expires_at_ms = now_ms.saturating_add(self.ttl_ms);
        let mut lease = Lease::new(
            grant.addrs,
            target.state_epoch,
            expires_at_ms,
            grant.validity,
        )?;
        lease.gates = self
            .gates
            .gates_for(&lease.addrs, grant.ready_at_ms, now_ms);
        lease.ready_at_ms = grant.ready_at_ms;
        let lease = Arc::new(lease);
        self.leases
            .insert(target.lease_key.clone(), Arc::clone(&lease));
        target.lease_memo.store(Some(Arc::clone(&lease)));
        Some(lease)
    }

    /// Revokes the lease of `key`, if any: no request takes it again, whichever
    /// snapshot it comes through.
    pub fn invalidate(&self, key: &LeaseKey) {
        if let Some(lease) = self.leases.remove(key) {
            lease.revoked.store(true, Ordering::Relaxed);
        }
    }

    /// Approximate number of cached leases.
    pub fn len(&self) -> u64 {
        self.leases.run_pending_tasks();
        self.leases.entry_count()
    }

    /// True when no lease is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{
        AppSpec, PreviewSpec, RouteSpec, SnapshotHandle, SnapshotInput, VersionRef,
    };

    const NOW: u64 = 1_000_000;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn version(id: &str, state_epoch: u64) -> VersionRef {
        VersionRef {
            id: id.to_string(),
            state_epoch,
        }
    }

    /// One app whose active version and whose preview `pr-1` are given.
    fn snapshot(active: VersionRef, preview: VersionRef) -> SnapshotInput {
        SnapshotInput {
            apps: vec![AppSpec {
                name: "shop".into(),
                active: Some(active),
                previews: vec![PreviewSpec {
                    label: "pr-1".into(),
                    version: preview,
                    expires_at_ms: u64::MAX,
                }],
                expired_labels: vec![],
            }],
            routes: vec![RouteSpec::exact("shop.example.com", "shop")],
        }
    }

    #[test]
    fn round_robin_over_the_addresses() {
        let lease = Lease::new(
            vec![addr(1), addr(2), addr(3)],
            0,
            u64::MAX,
            LeaseValidity::new(),
        )
        .unwrap();
        let picks: Vec<u16> = (0..6).map(|_| lease.pick().port()).collect();
        assert_eq!(picks, [1, 2, 3, 1, 2, 3]);
        assert!(Lease::new(vec![], 0, u64::MAX, LeaseValidity::new()).is_none());
    }

    #[test]
    fn active_and_preview_traffic_never_share_an_entry() {
        let handle = SnapshotHandle::new();
        // Even with the same version id behind both, the label keeps them apart.
        handle
            .publish(&snapshot(version("v1", 0), version("v1", 0)))
            .unwrap();
        let snap = handle.load();
        let app = snap.app("shop").unwrap();
        let active = app.active().unwrap();
        let preview = app.preview("pr-1").unwrap();
        assert_ne!(active.lease_key, preview.lease_key);

        let cache = LeaseCache::new(100, Duration::from_secs(60));
        cache.insert(active, Grant::new(vec![addr(1)], LeaseValidity::new()), NOW);
        assert!(cache.get(preview, NOW).is_none());
        cache.insert(
            preview,
            Grant::new(vec![addr(2)], LeaseValidity::new()),
            NOW,
        );
        assert_eq!(cache.get(active, NOW).unwrap().pick(), addr(1));
        assert_eq!(cache.get(preview, NOW).unwrap().pick(), addr(2));
    }

    #[test]
    fn a_replaced_version_is_never_served_from_the_cache() {
        let handle = SnapshotHandle::new();
        handle
            .publish(&snapshot(version("v1", 0), version("p1", 0)))
            .unwrap();
        let cache = LeaseCache::new(100, Duration::from_secs(60));
        let old = handle.load();
        let old_preview = old.app("shop").unwrap().preview("pr-1").unwrap();
        cache.insert(
            old_preview,
            Grant::new(vec![addr(1)], LeaseValidity::new()),
            NOW,
        );

        // Same label, new version: a different key.
        handle
            .publish(&snapshot(version("v1", 0), version("p2", 0)))
            .unwrap();
        let new = handle.load();
        let new_preview = new.app("shop").unwrap().preview("pr-1").unwrap();
        assert!(cache.get(new_preview, NOW).is_none());
    }

    #[test]
    fn a_stopped_or_restarted_version_is_never_served_from_the_cache() {
        let handle = SnapshotHandle::new();
        handle
            .publish(&snapshot(version("v1", 3), version("p1", 0)))
            .unwrap();
        let cache = LeaseCache::new(100, Duration::from_secs(60));
        let before = handle.load();
        let active = before.app("shop").unwrap().active().unwrap();
        cache.insert(active, Grant::new(vec![addr(1)], LeaseValidity::new()), NOW);
        assert!(cache.get(active, NOW).is_some());

        handle
            .publish(&snapshot(version("v1", 4), version("p1", 0)))
            .unwrap();
        let after = handle.load();
        assert!(cache
            .get(after.app("shop").unwrap().active().unwrap(), NOW)
            .is_none());
    }

    #[test]
    fn entries_expire_after_the_ttl() {
        let handle = SnapshotHandle::new();
        handle
            .publish(&snapshot(version("v1", 0), version("p1", 0)))
            .unwrap();
        let snap = handle.load();
        let active = snap.app("shop").unwrap().active().unwrap();
        let cache = LeaseCache::new(100, Duration::from_millis(20));
        cache.insert(active, Grant::new(vec![addr(1)], LeaseValidity::new()), NOW);
        assert!(cache.get(active, NOW + 19).is_some());
        assert!(cache.get(active, NOW + 20).is_none());
    }

    #[test]
    fn a_lease_survives_a_snapshot_swap_and_revocation_reaches_every_snapshot() {
        let handle = SnapshotHandle::new();
        let input = snapshot(version("v1", 0), version("p1", 0));
        handle.publish(&input).unwrap();
        let cache = LeaseCache::new(100, Duration::from_secs(60));
        let old = handle.load_full();
        let old_active = old.app("shop").unwrap().active().unwrap();
        cache.insert(
            old_active,
            Grant::new(vec![addr(1)], LeaseValidity::new()),
            NOW,
        );

        handle.publish(&input).unwrap();
        let new = handle.load_full();
        let new_active = new.app("shop").unwrap().active().unwrap();
        assert_eq!(cache.get(new_active, NOW).unwrap().pick(), addr(1));

        cache.invalidate(&new_active.lease_key);
        assert!(cache.get(new_active, NOW).is_none());
        assert!(cache.get(old_active, NOW).is_none());
    }

    #[test]
    fn revoking_a_validity_ends_every_lease_that_shares_it() {
        let handle = SnapshotHandle::new();
        // A preview sharing its pool with the active version: one validity.
        handle
            .publish(&snapshot(version("v1", 0), version("p1", 0)))
            .unwrap();
        let snap = handle.load();
        let app = snap.app("shop").unwrap();
        let (active, preview) = (app.active().unwrap(), app.preview("pr-1").unwrap());
        let cache = LeaseCache::new(100, Duration::from_secs(60));
        let shared = LeaseValidity::new();
        cache.insert(active, Grant::new(vec![addr(1)], Arc::clone(&shared)), NOW);
        cache.insert(preview, Grant::new(vec![addr(1)], Arc::clone(&shared)), NOW);
        assert!(cache.get(active, NOW).is_some() && cache.get(preview, NOW).is_some());
        shared.revoke();
        assert!(cache.get(active, NOW).is_none());
        assert!(cache.get(preview, NOW).is_none());
    }
}

//! Per-version activity (SPEC §2.6, §3): last-seen time and in-flight requests,
//! kept in atomics outside the snapshot so that they survive snapshot swaps and can
//! be read by the control plane's idle loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

/// Activity counters of one version. Shared by every snapshot that routes to it.
#[derive(Debug, Default)]
pub struct VersionActivity {
    last_seen_ms: AtomicU64,
    in_flight: AtomicU64,
    waiting: AtomicU64,
    /// On a control node: requests in flight on replicas, as they last reported.
    remote_in_flight: AtomicU64,
    /// Requests answered by this process, and how many of them with a 5xx: the
    /// dashboard's per-app rates (a metric label per app would cost a label
    /// lookup per request and a series per app).
    answered: AtomicU64,
    failed: AtomicU64,
}

impl VersionActivity {
    /// Records a request seen at `now_ms` (Unix milliseconds) and counts it as in
    /// flight until the returned guard is dropped.
    pub fn enter(self: &Arc<Self>, now_ms: u64) -> InFlightGuard {
        self.last_seen_ms.fetch_max(now_ms, Ordering::Relaxed);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlightGuard {
            activity: Arc::clone(self),
        }
    }

    /// Counts one request this process answered with `status` (a 5xx also as
    /// failed), whichever path served it.
    pub fn count_answer(&self, status: u16) {
        self.answered.fetch_add(1, Ordering::Relaxed);
        if status >= 500 {
            self.failed.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Requests this process answered since it started, and how many with a 5xx.
    pub fn answers(&self) -> (u64, u64) {
        (
            self.answered.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }

    /// Unix milliseconds of the latest request, or 0 if none was seen.
    pub fn last_seen_ms(&self) -> u64 {
        self.last_seen_ms.load(Ordering::Relaxed)
    }

    /// Requests (and open WebSockets) currently being served, here and (on a
    /// control node) on replicas as they last reported.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed) + self.remote_in_flight.load(Ordering::Relaxed)
    }

    /// Requests being served by this process only (what a replica reports).
    pub fn local_in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records a request a replica saw at `ms` (Unix milliseconds).
    pub fn seen_at(&self, ms: u64) {
        self.last_seen_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// Sets the requests in flight on replicas (their latest reports, summed).
    pub fn set_remote_in_flight(&self, count: u64) {
        self.remote_in_flight.store(count, Ordering::Relaxed);
    }

    /// Counts one request as waiting for the version to wake, unless `max` are
    /// already waiting; `None` then, and nothing is counted.
    pub fn try_wait(self: &Arc<Self>, max: u64) -> Option<WaitingGuard> {
        let admitted = self
            .waiting
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |waiting| {
                (waiting < max).then_some(waiting + 1)
            })
            .is_ok();
        admitted.then(|| WaitingGuard {
            activity: Arc::clone(self),
        })
    }

    /// Requests currently held while the version wakes.
    pub fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// Counts one request as waiting for its version to wake for as long as it lives.
#[derive(Debug)]
pub struct WaitingGuard {
    activity: Arc<VersionActivity>,
}

impl Drop for WaitingGuard {
    fn drop(&mut self) {
        self.activity.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Counts one request as in flight for as long as it lives; dropping it ends the
/// request, whichever way the request ended.
#[derive(Debug)]
pub struct InFlightGuard {
    activity: Arc<VersionActivity>,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.activity.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The activity counters of every version, by version id. Snapshot builds take their
/// counters from here so that a version keeps the same counters across swaps.
#[derive(Debug, Default)]
pub struct ActivityRegistry {
    by_version: DashMap<Arc<str>, Arc<VersionActivity>, ahash::RandomState>,
}

impl ActivityRegistry {
    /// The counters of `version_id`, created at zero on first use.
    pub fn for_version(&self, version_id: &str) -> Arc<VersionActivity> {
        if let Some(existing) = self.by_version.get(version_id) {
            return Arc::clone(&existing);
        }
        Arc::clone(&self.by_version.entry(Arc::from(version_id)).or_default())
    }

    /// The counters of `version_id` if any snapshot has routed to it.
    pub fn get(&self, version_id: &str) -> Option<Arc<VersionActivity>> {
        self.by_version
            .get(version_id)
            .map(|entry| Arc::clone(&entry))
    }

    /// Calls `f` with every version's id and counters.
    pub fn for_each(&self, mut f: impl FnMut(&str, &VersionActivity)) {
        for entry in self.by_version.iter() {
            f(entry.key(), entry.value());
        }
    }

    /// Forgets the counters of `version_ids` that nothing else holds (no
    /// snapshot routes to them, no request in flight, no open WebSocket).
    /// Counters that are still held stay, so a version routed again (a rollback)
    /// keeps its last-seen time and in-flight count.
    pub fn forget_unused(&self, version_ids: &[Arc<str>]) {
        for id in version_ids {
            self.by_version
                .remove_if(&**id, |_, activity| Arc::strong_count(activity) == 1);
        }
    }

    /// Number of versions tracked.
    pub fn len(&self) -> usize {
        self.by_version.len()
    }

    /// True when no version is tracked.
    pub fn is_empty(&self) -> bool {
        self.by_version.is_empty()
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn answers_are_counted_with_their_5xx() {
        let activity = VersionActivity::default();
        for status in [200, 404, 502, 503, 101] {
            activity.count_answer(status);
        }
        assert_eq!(activity.answers(), (5, 2));
    }

    use super::*;

    #[test]
    fn waiters_are_bounded_and_released() {
        let activity = Arc::new(VersionActivity::default());
        let first = activity.try_wait(2).unwrap();
        let _second = activity.try_wait(2).unwrap();
        assert!(activity.try_wait(2).is_none());
        assert_eq!(activity.waiting(), 2);
        drop(first);
        assert!(activity.try_wait(2).is_some());
        assert_eq!(activity.waiting(), 1);
    }

    #[test]
    fn in_flight_follows_guards_and_last_seen_only_moves_forward() {
        let registry = ActivityRegistry::default();
        let activity = registry.for_version("v1");
        let first = activity.enter(1_000);
        let second = activity.enter(900);
        assert_eq!(activity.in_flight(), 2);
        assert_eq!(activity.last_seen_ms(), 1_000);
        drop(first);
        assert_eq!(activity.in_flight(), 1);
        drop(second);
        assert_eq!(activity.in_flight(), 0);
    }

    #[test]
    fn the_same_version_gets_the_same_counters() {
        let registry = ActivityRegistry::default();
        let a = registry.for_version("v1");
        let b = registry.for_version("v1");
        assert!(Arc::ptr_eq(&a, &b));
        assert!(!Arc::ptr_eq(&a, &registry.for_version("v2")));
        let v2 = registry.for_version("v2");
        drop((a, b));
        registry.forget_unused(&[Arc::from("v1"), Arc::from("v2")]);
        assert!(registry.get("v1").is_none());
        assert_eq!(registry.len(), 1, "v2 is still held");
        drop(v2);
    }

    #[test]
    fn counters_still_held_survive_forgetting() {
        let registry = ActivityRegistry::default();
        let guard = registry.for_version("v1").enter(1_000);
        registry.forget_unused(&[Arc::from("v1")]);
        let again = registry.for_version("v1");
        assert_eq!(again.in_flight(), 1);
        assert_eq!(again.last_seen_ms(), 1_000);
        drop(guard);
        drop(again);
        registry.forget_unused(&[Arc::from("v1")]);
        assert!(registry.is_empty());
    }
}

//! Pools: when instances run (SPEC §4, §5, §9). A pool is the running copy of one
//! runtime spec, shared by a version and its clones. Versions that want it running
//! *hold* it; the pool runs while anyone holds it and stops (after draining) when
//! the last holder lets go, so stopping or deleting one clone never stops the
//! instance its siblings use.
//!
//! A pool moves through `stopped → starting → ready → draining → stopping →
//! stopped`, or to `failed` when a start fails or a ready instance exits. Every
//! start is single flight: whoever asks while it starts waits on the same start.
//! Start, drain and stop run as tasks on the pools' own runtime, so a caller that
//! goes away (a client hanging up) never cancels them.
//!
//! The proxy reaches pools through [`LeaseSource`]; the control plane holds and
//! releases versions as their desired state changes, and hears back through
//! [`PoolEvent`]s (a request woke a version, a pool became ready, failed or
//! exited).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ingress_proxy::{
    Grant, LeaseAnswer, LeaseError, LeaseSource, LeaseValidity, SnapshotHandle, Target,
};
use tokio::sync::{mpsc, watch};

use crate::metrics::ControlMetrics;
use crate::model::RuntimeSpec;
use crate::runtime::{Instance, Runtimes};

/// A version's state as observed (SPEC §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Observed {
    Stopped,
    Starting,
    Ready,
    Stopping,
    Failed,
}

impl Observed {
    /// Every state, in display order.
    pub const ALL: [Observed; 5] = [
        Observed::Stopped,
        Observed::Starting,
        Observed::Ready,
        Observed::Stopping,
        Observed::Failed,
    ];

    /// The displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Observed::Stopped => "stopped",
            Observed::Starting => "starting",
            Observed::Ready => "ready",
            Observed::Stopping => "stopping",
            Observed::Failed => "failed",
        }
    }
}

/// What the pools know of one version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRuntime {
    pub observed: Observed,
    /// Why it failed, when `observed` is `failed`.
    pub failure: Option<String>,
    /// Unix milliseconds since when its pool has been ready.
    pub ready_since_ms: Option<u64>,
    /// How long its pool's latest successful start took, in milliseconds (from
    /// the start to readiness), since the ingress started; `None` before one.
    pub last_start_ms: Option<u64>,
    /// Where its instances are reached, while ready.
    pub addresses: Vec<SocketAddr>,
}

/// What the pools tell the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolEvent {
    /// A request woke a version that was not held: its desired state is now
    /// running (reason `request`).
    Woken { version: String },
    /// A pool became ready for these holders.
    Ready { versions: Vec<String> },
    /// A start failed before readiness.
    StartFailed {
        versions: Vec<String>,
        reason: String,
    },
    /// A ready instance ended on its own.
    Exited {
        versions: Vec<String>,
        status: String,
    },
}

/// Timings of the pools' lifecycle.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// Longest wait for in-flight requests before a stopping pool is signalled.
    pub drain_timeout: Duration,
    /// SIGTERM to SIGKILL.
    pub stop_grace: Duration,
    /// No new start for this long after a failed one; doubles per failure.
    pub failure_backoff: Duration,
    /// The longest pause between failed starts.
    pub failure_backoff_max: Duration,
}

/// How a wake ends, as waiters see it.
#[derive(Clone)]
enum Outcome {
    Pending,
    Ready(Grant),
    /// Why, and when a new start may be tried.
    Failed(String, Instant),
}

enum Phase {
    Stopped,
    Starting,
    Ready {
        instance: Box<dyn Instance>,
        grant: Grant,
    },
    /// Leases are revoked; in-flight requests finish before the stop.
    Draining {
        instance: Box<dyn Instance>,
        grant: Grant,
    },
    Stopping,
    Failed {
        reason: String,
        /// The start failed (a back-off applies), rather than a ready instance
        /// exiting (the next request simply starts it again).
        during_start: bool,
    },
}

struct Pool {
    id: Arc<str>,
    spec: RuntimeSpec,
    members: BTreeSet<String>,
    /// Versions that want it running, with the Unix ms since when.
    holders: BTreeMap<String, u64>,
    phase: Phase,
    /// Bumped on every transition that a background task must not undo.
    turn: u64,
    /// Bumped on every start: which instance an exit report is about.
    incarnation: u64,
    failures: u32,
    retry_at: Option<Instant>,
    ready_since_ms: Option<u64>,
    /// When the start under way began.
    start_began: Option<Instant>,
    /// How long the latest successful start took, in milliseconds.
    last_start_ms: Option<u64>,
    outcome: watch::Sender<Outcome>,
}

#[derive(Default)]
struct Table {
    pool_of: HashMap<String, String>,
    pools: PoolMap,
}

/// The pools by id, remembering which were written to since the replication
/// feed last asked ([`Pools::take_changed`]), so a change is sent as the
/// endpoints of its pool rather than by comparing every version's.
#[derive(Default)]
struct PoolMap {
    pools: HashMap<String, Pool>,
    changed: HashSet<String>,
    /// Every pool may have changed (a shutdown).
    all_changed: bool,
}

impl PoolMap {
    fn get(&self, id: &str) -> Option<&Pool> {
        self.pools.get(id)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut Pool> {
        if !self.changed.contains(id) {
            self.changed.insert(id.to_string());
        }
        self.pools.get_mut(id)
    }

    fn entry(&mut self, id: String) -> std::collections::hash_map::Entry<'_, String, Pool> {
        self.changed.insert(id.clone());
        self.pools.entry(id)
    }

    fn remove(&mut self, id: &str) -> Option<Pool> {
        self.changed.insert(id.to_string());
        self.pools.remove(id)
    }

    fn values_mut(&mut self) -> std::collections::hash_map::ValuesMut<'_, String, Pool> {
        self.all_changed = true;
        self.pools.values_mut()
    }
}

struct Shared {
    table: Mutex<Table>,
    /// Bumped after every change of the table (see [`TableGuard`]): replicas'
    /// endpoints are recomputed from it.
    changes: watch::Sender<u64>,
    /// On a control node: whether replicas have seen a drain and finished.
    drain_gate: std::sync::OnceLock<Arc<dyn DrainGate>>,
    runtimes: Runtimes,
    settings: PoolSettings,
    snapshots: Arc<SnapshotHandle>,
    events: mpsc::UnboundedSender<PoolEvent>,
    metrics: Arc<ControlMetrics>,
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    handle: tokio::runtime::Handle,
}

/// Every pool, and the runtime their tasks run on.
pub struct Pools {
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Drop for Pools {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            // Allowed anywhere, unlike a blocking drop inside another runtime.
            runtime.shutdown_background();
        }
    }
}

/// What else a drain waits for before it stops an instance (on a control
/// node: that every live replica has seen the drain and has nothing in flight
/// for the pool's versions). Asked every 10 ms; the drain stops anyway after
/// `runtime.drain_timeout`.
pub trait DrainGate: Send + Sync {
    /// A drain of a pool whose versions are `versions` begins.
    fn begin(&self, versions: &[String]);
    /// Whether that drain may end.
    fn settled(&self, versions: &[String]) -> bool;
}

/// `version`'s endpoint in `pool` (`pool_id`) at `now`.
fn endpoint_view(version: &str, pool_id: &str, pool: &Pool, now: Instant) -> EndpointView {
    let mut view = EndpointView {
        version: version.to_string(),
        pool: pool_id.to_string(),
        addrs: Vec::new(),
        incarnation: pool.incarnation,
        state: "stopped",
        ready_at_ms: 0,
        failure: String::new(),
        retry_after_ms: 0,
    };
    if !pool.holders.contains_key(version) {
        return view;
    }
    match &pool.phase {
        Phase::Ready { grant, .. } => {
            view.state = "ready";
            view.addrs = grant.addrs.clone();
            view.ready_at_ms = grant.ready_at_ms;
        }
        Phase::Starting => view.state = "starting",
        Phase::Draining { .. } | Phase::Stopping => view.state = "stopping",
        Phase::Stopped => {}
        Phase::Failed {
            reason,
            during_start,
        } => {
            view.state = "failed";
            view.failure = reason.clone();
            if *during_start {
                let wait = pool
                    .retry_at
                    .map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
                view.retry_after_ms = u64::try_from(wait.as_millis()).unwrap_or(u64::MAX);
            }
        }
    }
    view
}

/// Where one version's instances are, as replicas are told (`Endpoint`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointView {
    pub version: String,
    pub pool: String,
    /// Ready addresses (empty unless `state` is `ready`).
    pub addrs: Vec<std::net::SocketAddr>,
    pub incarnation: u64,
    /// `ready`, `starting`, `stopping`, `stopped` or `failed`, as a request for
    /// this version sees it (a version that does not hold its pool is `stopped`
    /// even when a sibling keeps the pool running: a request must wake it).
    pub state: &'static str,
    pub ready_at_ms: u64,
    pub failure: String,
    /// With `failed`: how long before the next start may be tried.
    pub retry_after_ms: u64,
}

/// A wait for a held version's pool to be ready.
pub struct ReadyWait {
    outcome: watch::Receiver<Outcome>,
}

impl ReadyWait {
    /// Resolves when the pool is ready, or with why its start failed.
    pub async fn ready(mut self) -> Result<(), String> {
        loop {
            match &*self.outcome.borrow_and_update() {
                Outcome::Ready(_) => return Ok(()),
                Outcome::Failed(reason, _) => return Err(reason.clone()),
                Outcome::Pending => {}
            }
            if self.outcome.changed().await.is_err() {
                return Err("the runtime shut down".to_string());
            }
        }
    }
}

impl Pools {
    /// Pools running on their own small runtime. `events` receives what the
    /// control plane must record; `clock` gives Unix milliseconds.
    pub fn new(
        runtimes: Runtimes,
        settings: PoolSettings,
        snapshots: Arc<SnapshotHandle>,
        metrics: Arc<ControlMetrics>,
        clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    ) -> Result<(Pools, mpsc::UnboundedReceiver<PoolEvent>), String> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ingress-pools")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the runtime of the pools: {e}"))?;
        let (events, received) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            table: Mutex::new(Table::default()),
            changes: watch::channel(0).0,
            drain_gate: std::sync::OnceLock::new(),
            runtimes,
            settings,
            snapshots,
            events,
            metrics,
            clock,
            handle: runtime.handle().clone(),
        });
        Ok((
            Pools {
                shared,
                runtime: Some(runtime),
            },
            received,
        ))
    }

    /// Every version's endpoint, by version id.
    pub fn endpoints(&self) -> BTreeMap<String, EndpointView> {
        let table = self.shared.lock();
        let now = Instant::now();
        let mut all = BTreeMap::new();
        for (version, pool_id) in &table.pool_of {
            let Some(pool) = table.pools.get(pool_id) else {
                continue;
            };
            all.insert(version.clone(), endpoint_view(version, pool_id, pool, now));
        }
        all
    }

    /// The pools written to since the last call, each with its versions'
    /// endpoints now (none for a pool that is gone); `None` when every pool may
    /// have changed (ask [`Pools::endpoints`] then).
    pub fn take_changed(&self) -> Option<Vec<(String, Vec<EndpointView>)>> {
        // Taking the marks is a write the feed need not hear about.
        let mut guard = self.shared.lock();
        guard.wrote = false;
        let table = &mut guard.guard;
        let all = std::mem::take(&mut table.pools.all_changed);
        let changed = std::mem::take(&mut table.pools.changed);
        if all {
            return None;
        }
        let now = Instant::now();
        let changes = changed
            .into_iter()
            .map(|pool_id| {
                let views = match table.pools.get(&pool_id) {
                    Some(pool) => pool
                        .members
                        .iter()
                        .filter(|v| table.pool_of.get(*v) == Some(&pool_id))
                        .map(|v| endpoint_view(v, &pool_id, pool, now))
                        .collect(),
                    None => Vec::new(),
                };
                (pool_id, views)
            })
            .collect();
        Some(changes)
    }

    /// Makes every drain also wait for `gate`. Later calls change nothing.
    pub fn set_drain_gate(&self, gate: Arc<dyn DrainGate>) {
        let _ = self.shared.drain_gate.set(gate);
    }

    /// Changes whenever a pool changed (a start, a stop, a version joining).
    pub fn subscribe_changes(&self) -> watch::Receiver<u64> {
        self.shared.changes.subscribe()
    }

    /// Wakes `version` of `app` as a request would (for a request held on a
    /// replica): one start however many ask, and its grant once ready.
    pub async fn wake_version(&self, app: &str, version: &str) -> Result<Grant, LeaseError> {
        self.wake_ids(app, version).await
    }

    /// Makes `version` a member of the pool `pool` running `spec` (created on
    /// first use). Does not start anything.
    pub fn register(&self, version: &str, pool: &str, spec: &RuntimeSpec) {
        let mut table = self.shared.lock();
        table.pool_of.insert(version.to_string(), pool.to_string());
        let entry = table.pools.entry(pool.to_string()).or_insert_with(|| Pool {
            id: Arc::from(pool),
            spec: spec.clone(),
            members: BTreeSet::new(),
            holders: BTreeMap::new(),
            phase: Phase::Stopped,
            turn: 0,
            incarnation: 0,
            failures: 0,
            retry_at: None,
            ready_since_ms: None,
            start_began: None,
            last_start_ms: None,
            outcome: watch::channel(Outcome::Pending).0,
        });
        entry.members.insert(version.to_string());
    }

    /// `version` wants its pool running: starts it unless it runs or starts
    /// already. An admin's wake (`skip_backoff`) does not wait out a failure
    /// back-off. Returns a wait for readiness.
    pub fn hold(&self, version: &str, skip_backoff: bool) -> Result<ReadyWait, String> {
        let shared = &self.shared;
        let mut table = shared.lock();
        let pool_id = table
            .pool_of
            .get(version)
            .cloned()
            .ok_or_else(|| format!("version {version} is unknown to the runtime"))?;
        shared.hold_locked(&mut table, &pool_id, version, skip_backoff);
        let pool = table
            .pools
            .get(&pool_id)
            .ok_or_else(|| format!("version {version} has no pool"))?;
        Ok(ReadyWait {
            outcome: pool.outcome.subscribe(),
        })
    }

    /// `version` no longer wants its pool running; the pool drains and stops when
    /// no one else holds it. With `forget`, the version also leaves the pool (it
    /// was deleted).
    pub fn release(&self, version: &str, forget: bool) {
        self.shared.release(version, forget);
    }

    /// True while `version` holds its pool (it wants it running), whatever state
    /// the pool is in.
    pub fn holds(&self, version: &str) -> bool {
        let table = self.shared.lock();
        table
            .pool_of
            .get(version)
            .and_then(|p| table.pools.get(p))
            .is_some_and(|pool| pool.holders.contains_key(version))
    }

    /// What the pools know of `version`.
    pub fn observe(&self, version: &str) -> VersionRuntime {
        let table = self.shared.lock();
        let pool = table.pool_of.get(version).and_then(|p| table.pools.get(p));
        let Some(pool) = pool else {
            return VersionRuntime {
                observed: Observed::Stopped,
                failure: None,
                ready_since_ms: None,
                last_start_ms: None,
                addresses: Vec::new(),
            };
        };
        let held_since = pool.holders.get(version).copied();
        let held = held_since.is_some();
        let (observed, failure) = match (&pool.phase, held) {
            (Phase::Draining { .. } | Phase::Stopping, _) => (Observed::Stopping, None),
            (_, false) => (Observed::Stopped, None),
            (Phase::Stopped, true) => (Observed::Stopped, None),
            (Phase::Starting, true) => (Observed::Starting, None),
            (Phase::Ready { .. }, true) => (Observed::Ready, None),
            (Phase::Failed { reason, .. }, true) => (Observed::Failed, Some(reason.clone())),
        };
        let addresses = match (&pool.phase, observed) {
            (Phase::Ready { grant, .. }, Observed::Ready) => grant.addrs.clone(),
            _ => Vec::new(),
        };
        VersionRuntime {
            observed,
            failure,
            // A version that joined a pool a sibling keeps running is idle from
            // when it joined, not from when the pool started.
            ready_since_ms: match (observed, pool.ready_since_ms, held_since) {
                (Observed::Ready, Some(ready), Some(held)) => Some(ready.max(held)),
                _ => None,
            },
            last_start_ms: pool.last_start_ms,
            addresses,
        }
    }

    /// Stops every instance (SIGTERM, then SIGKILL after `stop_grace`) and waits
    /// for them, for at most `stop_grace` and 2 seconds. Usable from any context.
    pub fn shutdown(&self) {
        let instances: Vec<Box<dyn Instance>> = {
            let mut table = self.shared.lock();
            table
                .pools
                .values_mut()
                .filter_map(|pool| {
                    pool.turn += 1;
                    match std::mem::replace(&mut pool.phase, Phase::Stopped) {
                        Phase::Ready { instance, grant } | Phase::Draining { instance, grant } => {
                            grant.validity.revoke();
                            Some(instance)
                        }
                        _ => None,
                    }
                })
                .collect()
        };
        if instances.is_empty() {
            return;
        }
        let grace = self.shared.settings.stop_grace;
        let (done, finished) = std::sync::mpsc::channel();
        self.shared.handle.spawn(async move {
            let mut stops = tokio::task::JoinSet::new();
            for instance in instances {
                stops.spawn(instance.stop(grace));
            }
            while stops.join_next().await.is_some() {}
            let _ = done.send(());
        });
        let _ = finished.recv_timeout(grace + Duration::from_secs(2));
    }
}

/// The locked table; a guard that was written through tells the subscribers of
/// [`Pools::subscribe_changes`] when it is released. Reads (a lease on a cache
/// miss) tell nobody.
struct TableGuard<'a> {
    guard: MutexGuard<'a, Table>,
    changes: &'a watch::Sender<u64>,
    wrote: bool,
}

impl std::ops::Deref for TableGuard<'_> {
    type Target = Table;
    fn deref(&self) -> &Table {
        &self.guard
    }
}

impl std::ops::DerefMut for TableGuard<'_> {
    fn deref_mut(&mut self) -> &mut Table {
        self.wrote = true;
        &mut self.guard
    }
}

impl Drop for TableGuard<'_> {
    fn drop(&mut self) {
        if self.wrote {
            self.changes.send_modify(|n| *n = n.wrapping_add(1));
        }
    }
}

impl Shared {
    fn lock(&self) -> TableGuard<'_> {
        TableGuard {
            guard: self
                .table
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner()),
            changes: &self.changes,
            wrote: false,
        }
    }

    fn backoff(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.settings
            .failure_backoff
            .saturating_mul(1 << doublings)
            .min(self.settings.failure_backoff_max)
    }

    /// Adds a holder and moves the pool towards ready. Returns a back-off error
    /// when a failed start forbids a new one yet.
    fn hold_locked(
        self: &Arc<Self>,
        table: &mut Table,
        pool_id: &str,
        version: &str,
        skip_backoff: bool,
    ) -> Option<(String, Duration)> {
        let pool = table.pools.get_mut(pool_id)?;
        if !pool.holders.contains_key(version) {
            pool.holders.insert(version.to_string(), (self.clock)());
        }
        match &pool.phase {
            Phase::Stopped => self.begin_start(pool),
            Phase::Failed {
                reason,
                during_start,
            } => {
                let wait = pool
                    .retry_at
                    .map(|at| at.saturating_duration_since(Instant::now()))
                    .unwrap_or_default();
                if *during_start && !skip_backoff && !wait.is_zero() {
                    return Some((reason.clone(), wait));
                }
                self.begin_start(pool);
            }
            Phase::Draining { .. } => {
                // A request (or a wake) while draining keeps the instance.
                let Phase::Draining { instance, .. } =
                    std::mem::replace(&mut pool.phase, Phase::Stopping)
                else {
                    return None;
                };
                // The instance has been serving since before the drain: not fresh.
                let grant = Grant::new(instance.addrs(), LeaseValidity::new());
                pool.turn += 1;
                // Idle time counts again from now, as after a start.
                pool.ready_since_ms = Some((self.clock)());
                pool.outcome.send_replace(Outcome::Ready(grant.clone()));
                pool.phase = Phase::Ready { instance, grant };
            }
            Phase::Starting | Phase::Ready { .. } | Phase::Stopping => {}
        }
        None
    }

    fn begin_start(self: &Arc<Self>, pool: &mut Pool) {
        pool.phase = Phase::Starting;
        pool.start_began = Some(Instant::now());
        pool.turn += 1;
        pool.outcome.send_replace(Outcome::Pending);
        let turn = pool.turn;
        let runtime = Arc::clone(self.runtimes.for_spec(&pool.spec));
        let spec = pool.spec.clone();
        let id = Arc::clone(&pool.id);
        let shared = Arc::clone(self);
        self.handle.spawn(async move {
            let started = runtime.start(&id, &spec).await;
            shared.finish_start(&id, turn, started).await;
        });
    }

    async fn finish_start(
        self: &Arc<Self>,
        pool_id: &str,
        turn: u64,
        started: Result<Box<dyn Instance>, String>,
    ) {
        let mut unwanted = None;
        {
            let mut table = self.lock();
            match table.pools.get_mut(pool_id) {
                Some(pool) if pool.turn == turn => match started {
                    Ok(instance) if pool.holders.is_empty() => {
                        // Everyone let go while it started.
                        pool.outcome.send_replace(Outcome::Failed(
                            "it was stopped while it started".to_string(),
                            Instant::now(),
                        ));
                        pool.phase = Phase::Stopping;
                        pool.turn += 1;
                        unwanted = Some((instance, pool.turn));
                    }
                    Ok(instance) => {
                        self.metrics.count_start(true);
                        let ready_at_ms = (self.clock)();
                        // Only a process that just started may drop its first
                        // connects; static upstreams were serving all along.
                        let fresh = matches!(pool.spec, RuntimeSpec::Process { .. });
                        let grant = Grant {
                            addrs: instance.addrs(),
                            validity: LeaseValidity::new(),
                            ready_at_ms: if fresh { ready_at_ms } else { 0 },
                        };
                        let exited = instance.exited();
                        pool.failures = 0;
                        pool.retry_at = None;
                        pool.ready_since_ms = Some(ready_at_ms);
                        if let Some(began) = pool.start_began.take() {
                            pool.last_start_ms = Some(
                                u64::try_from(began.elapsed().as_millis()).unwrap_or(u64::MAX),
                            );
                        }
                        pool.outcome.send_replace(Outcome::Ready(grant.clone()));
                        pool.phase = Phase::Ready { instance, grant };
                        pool.incarnation += 1;
                        let incarnation = pool.incarnation;
                        let _ = self.events.send(PoolEvent::Ready {
                            versions: pool.holders.keys().cloned().collect(),
                        });
                        let shared = Arc::clone(self);
                        let id = pool_id.to_string();
                        self.handle.spawn(async move {
                            let status = exited.await;
                            shared.instance_exited(&id, incarnation, status);
                        });
                    }
                    Err(reason) => {
                        self.metrics.count_start(false);
                        pool.failures += 1;
                        let backoff = self.backoff(pool.failures);
                        let retry_at = Instant::now() + backoff;
                        pool.retry_at = Some(retry_at);
                        pool.outcome
                            .send_replace(Outcome::Failed(reason.clone(), retry_at));
                        pool.phase = Phase::Failed {
                            reason: reason.clone(),
                            during_start: true,
                        };
                        let _ = self.events.send(PoolEvent::StartFailed {
                            versions: pool.holders.keys().cloned().collect(),
                            reason,
                        });
                    }
                },
                // The pool was shut down or deleted meanwhile.
                _ => unwanted = started.ok().map(|instance| (instance, u64::MAX)),
            }
        }
        if let Some((instance, stop_turn)) = unwanted {
            instance.stop(self.settings.stop_grace).await;
            self.finish_stop(pool_id, stop_turn);
        }
    }

    /// An instance ended on its own. A ready one makes the pool `failed`; a
    /// draining one makes it stopped; a stopping one is being stopped anyway.
    fn instance_exited(self: &Arc<Self>, pool_id: &str, incarnation: u64, status: String) {
        let mut table = self.lock();
        let Some(pool) = table.pools.get_mut(pool_id) else {
            return;
        };
        if pool.incarnation != incarnation {
            return;
        }
        match &pool.phase {
            Phase::Ready { grant, .. } => grant.validity.revoke(),
            // Exited while draining: nothing is left to stop, and a wake must not
            // bring the dead instance back as ready.
            Phase::Draining { .. } => {
                pool.turn += 1;
                pool.phase = Phase::Stopped;
                if pool.members.is_empty() {
                    table.pools.remove(pool_id);
                }
                return;
            }
            _ => return,
        }
        let reason = format!("the process exited on its own ({status})");
        pool.turn += 1;
        pool.ready_since_ms = None;
        pool.outcome
            .send_replace(Outcome::Failed(reason.clone(), Instant::now()));
        pool.phase = Phase::Failed {
            reason,
            during_start: false,
        };
        let _ = self.events.send(PoolEvent::Exited {
            versions: pool.holders.keys().cloned().collect(),
            status,
        });
    }

    fn release(self: &Arc<Self>, version: &str, forget: bool) {
        let mut table = self.lock();
        let Some(pool_id) = table.pool_of.get(version).cloned() else {
            return;
        };
        if forget {
            table.pool_of.remove(version);
        }
        let Some(pool) = table.pools.get_mut(&pool_id) else {
            return;
        };
        pool.holders.remove(version);
        if forget {
            pool.members.remove(version);
        }
        if !pool.holders.is_empty() {
            return;
        }
        match std::mem::replace(&mut pool.phase, Phase::Stopped) {
            Phase::Ready { instance, grant } => {
                // New requests stop using the instance now; those in flight finish.
                grant.validity.revoke();
                pool.turn += 1;
                pool.ready_since_ms = None;
                pool.outcome.send_replace(Outcome::Pending);
                pool.phase = Phase::Draining { instance, grant };
                let (shared, id, turn) = (Arc::clone(self), pool_id.clone(), pool.turn);
                self.handle
                    .spawn(async move { shared.drain_then_stop(&id, turn).await });
            }
            // A start under way sees no holder when it ends and stops.
            other @ (Phase::Starting | Phase::Draining { .. } | Phase::Stopping) => {
                pool.phase = other;
            }
            Phase::Stopped | Phase::Failed { .. } => {
                pool.outcome.send_replace(Outcome::Pending);
                if pool.members.is_empty() {
                    table.pools.remove(&pool_id);
                }
            }
        }
    }

    async fn drain_then_stop(self: &Arc<Self>, pool_id: &str, turn: u64) {
        let deadline = Instant::now() + self.settings.drain_timeout;
        if let Some(gate) = self.drain_gate.get() {
            let table = self.lock();
            if let Some(pool) = table.pools.get(pool_id) {
                let members: Vec<String> = pool.members.iter().cloned().collect();
                drop(table);
                gate.begin(&members);
            }
        }
        let (instance, stop_turn) = loop {
            // Read first (a read does not count as a change of the pools)...
            let members: Vec<String> = {
                let table = self.lock();
                let Some(pool) = table.pools.get(pool_id) else {
                    return;
                };
                if pool.turn != turn {
                    return; // woken again while draining
                }
                pool.members.iter().cloned().collect()
            };
            let in_flight: u64 = members
                .iter()
                .filter_map(|v| self.snapshots.activity().get(v))
                .map(|activity| activity.in_flight())
                .sum();
            // ...and ask replicas (outside the table's lock) whether they have
            // all seen the drain and finished what they had.
            let settled = in_flight == 0
                && self
                    .drain_gate
                    .get()
                    .is_none_or(|gate| gate.settled(&members));
            if settled || Instant::now() >= deadline {
                let mut table = self.lock();
                let Some(pool) = table.pools.get_mut(pool_id) else {
                    return;
                };
                if pool.turn != turn {
                    return;
                }
                let Phase::Draining { instance, .. } =
                    std::mem::replace(&mut pool.phase, Phase::Stopping)
                else {
                    return;
                };
                pool.turn += 1;
                break (instance, pool.turn);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        instance.stop(self.settings.stop_grace).await;
        self.finish_stop(pool_id, stop_turn);
    }

    /// A stop finished: the pool is stopped, and starts again at once if someone
    /// took hold of it meanwhile.
    fn finish_stop(self: &Arc<Self>, pool_id: &str, turn: u64) {
        let mut table = self.lock();
        let Some(pool) = table.pools.get_mut(pool_id) else {
            return;
        };
        if pool.turn != turn {
            return;
        }
        pool.phase = Phase::Stopped;
        if !pool.holders.is_empty() {
            self.begin_start(pool);
        } else if pool.members.is_empty() {
            table.pools.remove(pool_id);
        }
    }
}

fn unknown(app: &str, version: &str) -> LeaseError {
    LeaseError::Failed {
        reason: format!("version {version} of app {app} is unknown to the runtime"),
    }
}

fn start_failed(app: &str, version: &str, reason: &str, retry_after: Duration) -> LeaseError {
    LeaseError::StartFailed {
        reason: format!(
            "version {version} of app {app} failed to start: {reason}; the next start is tried in {}s",
            retry_after.as_secs_f64().ceil()
        ),
        retry_after,
    }
}

#[async_trait]
impl LeaseSource for Pools {
    fn lease(&self, target: &Target) -> Result<LeaseAnswer, LeaseError> {
        let table = self.shared.lock();
        let pool = table
            .pool_of
            .get(&*target.version_id)
            .and_then(|p| table.pools.get(p))
            .ok_or_else(|| unknown(&target.app, &target.version_id))?;
        // A version that does not hold its pool yet goes through `wake`, which
        // records that it is wanted, even when a sibling keeps the pool ready.
        if !pool.holders.contains_key(&*target.version_id) {
            return Ok(LeaseAnswer::Asleep);
        }
        match &pool.phase {
            Phase::Ready { grant, .. } => Ok(LeaseAnswer::Ready(grant.clone())),
            Phase::Failed {
                reason,
                during_start: true,
            } => match pool
                .retry_at
                .map(|at| at.saturating_duration_since(Instant::now()))
            {
                Some(wait) if !wait.is_zero() => {
                    Err(start_failed(&target.app, &target.version_id, reason, wait))
                }
                _ => Ok(LeaseAnswer::Asleep),
            },
            _ => Ok(LeaseAnswer::Asleep),
        }
    }

    async fn wake(&self, target: &Target) -> Result<Grant, LeaseError> {
        self.wake_ids(&target.app, &target.version_id).await
    }
}

impl Pools {
    async fn wake_ids(&self, app: &str, version: &str) -> Result<Grant, LeaseError> {
        let shared = &self.shared;
        let mut outcome = {
            let mut table = shared.lock();
            let pool_id = table
                .pool_of
                .get(version)
                .cloned()
                .ok_or_else(|| unknown(app, version))?;
            let newly_held = table
                .pools
                .get(&pool_id)
                .is_some_and(|pool| !pool.holders.contains_key(version));
            let backing_off = shared.hold_locked(&mut table, &pool_id, version, false);
            if newly_held {
                let _ = shared.events.send(PoolEvent::Woken {
                    version: version.to_string(),
                });
            }
            if let Some((reason, wait)) = backing_off {
                return Err(start_failed(app, version, &reason, wait));
            }
            let pool = table
                .pools
                .get(&pool_id)
                .ok_or_else(|| unknown(app, version))?;
            if let Phase::Ready { grant, .. } = &pool.phase {
                return Ok(grant.clone());
            }
            pool.outcome.subscribe()
        };
        loop {
            match &*outcome.borrow_and_update() {
                Outcome::Ready(grant) => return Ok(grant.clone()),
                Outcome::Failed(reason, retry_at) => {
                    let wait = retry_at.saturating_duration_since(Instant::now());
                    return Err(start_failed(app, version, reason, wait));
                }
                Outcome::Pending => {}
            }
            if outcome.changed().await.is_err() {
                return Err(LeaseError::Failed {
                    reason: "the runtime is shutting down".to_string(),
                });
            }
        }
    }
}

#[cfg(test)]
#[path = "pools_tests.rs"]
mod tests;

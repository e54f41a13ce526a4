//! The routing snapshot (SPEC §3): an immutable view of apps, routes and routable
//! versions, built by the control plane and read by the proxy with one atomic load.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption, Guard};
use http::HeaderValue;

use crate::activity::{ActivityRegistry, VersionActivity};
use crate::host::{is_dns_label, normalise_host, HostBuf, MAX_HOST_LEN};
use crate::lease::{Lease, LeaseKey};

type FastMap<K, V> = HashMap<K, V, ahash::RandomState>;

// ---------------------------------------------------------------------------
// What the control plane hands in.
// ---------------------------------------------------------------------------

/// Everything a snapshot is built from.
#[derive(Debug, Clone, Default)]
pub struct SnapshotInput {
    pub apps: Vec<AppSpec>,
    pub routes: Vec<RouteSpec>,
}

/// One app with the versions that requests can reach.
#[derive(Debug, Clone)]
pub struct AppSpec {
    /// The app's name (unique).
    pub name: String,
    /// The version served on the app's routes; none gives 503.
    pub active: Option<VersionRef>,
    /// Preview versions reached at `<label>.<exact route>`.
    pub previews: Vec<PreviewSpec>,
    /// Labels whose version expired recently (tombstones): answered 410 Gone.
    pub expired_labels: Vec<ExpiredLabel>,
}

/// A version as the data plane sees it: its id and a counter the control plane
/// bumps whenever the version's instances change (stopped, started, moved), which
/// invalidates every lease granted before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionRef {
    pub id: String,
    pub state_epoch: u64,
}

/// A live preview label of an app.
#[derive(Debug, Clone)]
pub struct PreviewSpec {
    pub label: String,
    pub version: VersionRef,
    /// Unix milliseconds at which the label stops routing.
    pub expires_at_ms: u64,
}

/// A label that expired at `expired_at_ms` (Unix milliseconds).
#[derive(Debug, Clone)]
pub struct ExpiredLabel {
    pub label: String,
    pub expired_at_ms: u64,
}

/// A host that belongs to an app.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteSpec {
    pub host: RouteHost,
    pub app: String,
}

/// The three kinds of route (SPEC §1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteHost {
    /// One exact host, `shop.example.com`.
    Exact(String),
    /// Every host one label below `suffix`: `Wildcard("example.com")` is `*.example.com`.
    Wildcard(String),
    /// Every host that nothing else matches.
    Default,
}

impl RouteSpec {
    /// An exact route.
    pub fn exact(host: &str, app: &str) -> RouteSpec {
        RouteSpec {
            host: RouteHost::Exact(host.to_string()),
            app: app.to_string(),
        }
    }

    /// A wildcard route written `*.suffix`.
    pub fn wildcard(suffix: &str, app: &str) -> RouteSpec {
        RouteSpec {
            host: RouteHost::Wildcard(suffix.to_string()),
            app: app.to_string(),
        }
    }

    /// The default route.
    pub fn default_route(app: &str) -> RouteSpec {
        RouteSpec {
            host: RouteHost::Default,
            app: app.to_string(),
        }
    }
}

impl fmt::Display for RouteHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteHost::Exact(host) => f.write_str(host),
            RouteHost::Wildcard(suffix) => write!(f, "*.{suffix}"),
            RouteHost::Default => f.write_str("(default)"),
        }
    }
}

/// Why a snapshot could not be built. The previous snapshot stays in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildError(pub String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BuildError {}

// ---------------------------------------------------------------------------
// What the proxy reads.
// ---------------------------------------------------------------------------

/// Where a resolved request goes: one version of one app, reached either as the
/// app's active version or through a preview label.
#[derive(Debug)]
pub struct Target {
    pub app: Arc<str>,
    pub version_id: Arc<str>,
    /// The preview label, or none for active traffic.
    pub label: Option<Arc<str>>,
    /// Unix milliseconds at which a preview stops routing; none for active traffic.
    pub expires_at_ms: Option<u64>,
    /// See [`VersionRef::state_epoch`].
    pub state_epoch: u64,
    /// The key of this target's lease; prebuilt so a cache hit does not allocate.
    pub lease_key: LeaseKey,
    /// The value of the `x-ingress-version` response header, prebuilt.
    pub version_header: HeaderValue,
    /// Activity counters shared across snapshots.
    pub activity: Arc<VersionActivity>,
    /// The lease this target last used: the lease cache's lock-free fast path.
    /// The one mutable part of a snapshot, and only a cache.
    pub(crate) lease_memo: ArcSwapOption<Lease>,
}

/// One app in a snapshot.
#[derive(Debug)]
pub struct AppEntry {
    name: Arc<str>,
    active: Option<Arc<Target>>,
    labels: FastMap<Box<str>, LabelEntry>,
}

/// What a label under an app's exact route leads to.
#[derive(Debug)]
pub(crate) enum LabelEntry {
    Live(Arc<Target>),
    Expired { expired_at_ms: u64 },
}

impl AppEntry {
    /// The app's name.
    pub fn name(&self) -> &Arc<str> {
        &self.name
    }

    /// The active version, if any.
    pub fn active(&self) -> Option<&Arc<Target>> {
        self.active.as_ref()
    }

    /// The version behind preview `label`, live or past its expiry (the resolver
    /// checks expiry against the clock).
    pub fn preview(&self, label: &str) -> Option<&Arc<Target>> {
        match self.labels.get(label)? {
            LabelEntry::Live(target) => Some(target),
            LabelEntry::Expired { .. } => None,
        }
    }

    pub(crate) fn label(&self, label: &str) -> Option<&LabelEntry> {
        self.labels.get(label)
    }

    /// The versions this app routes to: its active one and its live previews.
    fn version_ids(&self) -> impl Iterator<Item = &str> {
        let previews = self.labels.values().filter_map(|entry| match entry {
            LabelEntry::Live(t) => Some(&*t.version_id),
            LabelEntry::Expired { .. } => None,
        });
        self.active.iter().map(|t| &*t.version_id).chain(previews)
    }
}

/// An immutable routing snapshot. Its parts sit behind `Arc`s so that the next
/// snapshot can share everything a change did not touch: a preview deploy copies
/// one vector of pointers and rebuilds one app, whatever the number of apps.
#[derive(Debug, Clone)]
pub struct Snapshot {
    generation: u64,
    /// Slots of apps; a deleted app's slot holds [`vacant_app`] so that the
    /// indices in `app_index` and `hosts` stay valid without a rebuild.
    apps: AppSlots,
    app_index: Arc<FastMap<Arc<str>, usize>>,
    /// Exact and wildcard routes in one map, so that a host and its parent each
    /// cost one lookup: `hosts["example.com"].wildcard` is the app of `*.example.com`.
    hosts: Arc<FastMap<Box<str>, HostRoutes>>,
    default_app: Option<usize>,
}

/// The routes of one host name: the app routed at it exactly, and the app routed
/// one label below it (`*.host`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HostRoutes {
    pub(crate) exact: Option<usize>,
    pub(crate) wildcard: Option<usize>,
}

/// A change to a snapshot: whole apps replaced or removed, routes removed and
/// added. What the control plane publishes after a commit instead of the whole
/// state, so that publishing costs what changed, not what exists.
#[derive(Debug, Clone, Default)]
pub struct SnapshotDelta {
    /// Apps added, or replaced whole (their active version, labels, tombstones).
    pub upsert_apps: Vec<AppSpec>,
    /// Apps removed; their routes must be in `remove_routes` of the same delta.
    pub remove_apps: Vec<String>,
    /// Routes removed, applied before `add_routes`.
    pub remove_routes: Vec<RouteHost>,
    pub add_routes: Vec<RouteSpec>,
}

impl SnapshotDelta {
    /// True when applying it changes nothing.
    pub fn is_empty(&self) -> bool {
        self.upsert_apps.is_empty()
            && self.remove_apps.is_empty()
            && self.remove_routes.is_empty()
            && self.add_routes.is_empty()
    }
}

/// Apps per chunk of [`AppSlots`].
const SLOT_CHUNK: usize = 256;

/// App slots in chunks that snapshots share: a change copies the list of chunk
/// pointers and the one chunk it touches, not every slot (at 100,000 apps that is
/// 391 pointers and 256 slots instead of 100,000 slots).
#[derive(Debug, Clone, Default)]
struct AppSlots {
    chunks: Vec<Arc<Vec<Arc<AppEntry>>>>,
    len: usize,
}

impl AppSlots {
    fn get(&self, i: usize) -> &Arc<AppEntry> {
        &self.chunks[i / SLOT_CHUNK][i % SLOT_CHUNK]
    }

    fn set(&mut self, i: usize, entry: Arc<AppEntry>) {
        Arc::make_mut(&mut self.chunks[i / SLOT_CHUNK])[i % SLOT_CHUNK] = entry;
    }

    /// Appends `entry`; returns its slot.
    fn push(&mut self, entry: Arc<AppEntry>) -> usize {
        if self.len.is_multiple_of(SLOT_CHUNK) {
            self.chunks.push(Arc::new(Vec::with_capacity(SLOT_CHUNK)));
        }
        if let Some(last) = self.chunks.last_mut() {
            Arc::make_mut(last).push(entry);
        }
        self.len += 1;
        self.len - 1
    }

    /// The entries of `self` that `other` does not share in the same slot;
    /// whole chunks are skipped when both hold the same one.
    fn changed_from<'a>(
        &'a self,
        other: &'a AppSlots,
    ) -> impl Iterator<Item = &'a Arc<AppEntry>> + 'a {
        self.chunks.iter().enumerate().flat_map(move |(c, chunk)| {
            let theirs = other.chunks.get(c);
            let shared = theirs.is_some_and(|t| Arc::ptr_eq(t, chunk));
            chunk
                .iter()
                .enumerate()
                .filter(move |(i, entry)| {
                    !shared
                        && !theirs
                            .and_then(|t| t.get(*i))
                            .is_some_and(|t| Arc::ptr_eq(t, entry))
                })
                .map(|(_, entry)| entry)
        })
    }
}

/// The placeholder in the slot of a deleted app; no route leads to it.
fn vacant_app() -> Arc<AppEntry> {
    Arc::new(AppEntry {
        name: Arc::from(""),
        active: None,
        labels: FastMap::default(),
    })
}

impl Snapshot {
    /// The snapshot with nothing in it (every request is 404).
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            apps: AppSlots::default(),
            app_index: Arc::default(),
            hosts: Arc::default(),
            default_app: None,
        }
    }

    /// The generation number; every published snapshot has a larger one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<&AppEntry> {
        self.app_index.get(name).map(|&i| &**self.apps.get(i))
    }

    /// Every app, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = &AppEntry> {
        self.app_index.values().map(|&i| &**self.apps.get(i))
    }

    /// The routes of `host` (exact at it, wildcard below it).
    pub(crate) fn host_routes(&self, host: &str) -> Option<HostRoutes> {
        self.hosts.get(host).copied()
    }

    /// The app at index `i` of this snapshot.
    pub(crate) fn app_at(&self, i: usize) -> &AppEntry {
        self.apps.get(i)
    }

    #[cfg(test)]
    pub(crate) fn exact_route(&self, host: &str) -> Option<&AppEntry> {
        self.host_routes(host)?.exact.map(|i| self.app_at(i))
    }

    pub(crate) fn default_route(&self) -> Option<&AppEntry> {
        self.default_app.map(|i| self.app_at(i))
    }

    /// Builds a snapshot with generation `generation` from `input`, taking activity
    /// counters from `activity`. Refuses input that is inconsistent (a route to an
    /// unknown app, two routes for one host, a duplicate label, an invalid host or
    /// label) with a message naming the offending item.
    pub fn build(
        input: &SnapshotInput,
        generation: u64,
        activity: &ActivityRegistry,
    ) -> Result<Snapshot, BuildError> {
        let mut snapshot = Snapshot::empty();
        snapshot.generation = generation;
        Arc::make_mut(&mut snapshot.app_index).reserve(input.apps.len());
        for spec in &input.apps {
            if snapshot.app_index.contains_key(spec.name.as_str()) {
                return Err(BuildError(format!("app {:?} is listed twice", spec.name)));
            }
            snapshot.put_app(build_app(spec, activity)?);
        }
        for route in &input.routes {
            snapshot.add_route(route)?;
        }
        Ok(snapshot)
    }

    /// The snapshot after `delta`, sharing every app and map the delta does not
    /// touch with `self`. Refuses a delta that would leave the snapshot
    /// inconsistent, with the same messages as [`Snapshot::build`]; `self` is
    /// never changed.
    pub fn apply(
        &self,
        delta: &SnapshotDelta,
        activity: &ActivityRegistry,
    ) -> Result<Snapshot, BuildError> {
        let mut next = self.clone();
        for host in &delta.remove_routes {
            next.remove_route(host);
        }
        for name in &delta.remove_apps {
            let Some(i) = Arc::make_mut(&mut next.app_index).remove(name.as_str()) else {
                continue;
            };
            let routed = next.default_app == Some(i)
                || next
                    .hosts
                    .values()
                    .any(|r| r.exact == Some(i) || r.wildcard == Some(i));
            if routed {
                return Err(BuildError(format!(
                    "app {name:?} cannot be removed while a route points to it"
                )));
            }
            next.apps.set(i, vacant_app());
        }
        let mut seen = std::collections::HashSet::with_capacity(delta.upsert_apps.len());
        for spec in &delta.upsert_apps {
            if !seen.insert(spec.name.as_str()) {
                return Err(BuildError(format!("app {:?} is listed twice", spec.name)));
            }
            next.put_app(build_app(spec, activity)?);
        }
        for route in &delta.add_routes {
            next.add_route(route)?;
        }
        Ok(next)
    }

    /// Adds `entry`, or replaces the app of the same name in its slot.
    fn put_app(&mut self, entry: AppEntry) {
        let entry = Arc::new(entry);
        match self.app_index.get(&*entry.name) {
            Some(&i) => self.apps.set(i, entry),
            None => {
                let name = Arc::clone(&entry.name);
                let i = self.apps.push(entry);
                Arc::make_mut(&mut self.app_index).insert(name, i);
            }
        }
    }

    fn remove_route(&mut self, host: &RouteHost) {
        let (name, exact) = match host {
            RouteHost::Default => {
                self.default_app = None;
                return;
            }
            RouteHost::Exact(name) => (name, true),
            RouteHost::Wildcard(name) => (name, false),
        };
        let hosts = Arc::make_mut(&mut self.hosts);
        if let Some(routes) = hosts.get_mut(name.as_str()) {
            if exact {
                routes.exact = None;
            } else {
                routes.wildcard = None;
            }
            if routes.exact.is_none() && routes.wildcard.is_none() {
                hosts.remove(name.as_str());
            }
        }
    }

    fn add_route(&mut self, route: &RouteSpec) -> Result<(), BuildError> {
        let app = *self.app_index.get(route.app.as_str()).ok_or_else(|| {
            BuildError(format!(
                "route {} points to app {:?}, which does not exist",
                route.host, route.app
            ))
        })?;
        let taken = |snapshot: &Snapshot, other: usize| {
            BuildError(format!(
                "route {} is claimed by both app {:?} and app {:?}",
                route.host,
                snapshot.apps.get(other).name,
                route.app
            ))
        };
        match &route.host {
            RouteHost::Default => {
                if let Some(other) = self.default_app {
                    return Err(taken(self, other));
                }
                self.default_app = Some(app);
            }
            RouteHost::Exact(name) | RouteHost::Wildcard(name) => {
                let name = canonical_route_host(name, &route.host)?;
                let exact = matches!(route.host, RouteHost::Exact(_));
                let existing = self.hosts.get(name.as_str()).and_then(|routes| {
                    if exact {
                        routes.exact
                    } else {
                        routes.wildcard
                    }
                });
                if let Some(other) = existing {
                    return Err(taken(self, other));
                }
                let routes = Arc::make_mut(&mut self.hosts)
                    .entry(name.into_boxed_str())
                    .or_default();
                if exact {
                    routes.exact = Some(app);
                } else {
                    routes.wildcard = Some(app);
                }
            }
        }
        Ok(())
    }
}

fn canonical_route_host(host: &str, route: &RouteHost) -> Result<String, BuildError> {
    let mut buf: HostBuf = [0; MAX_HOST_LEN + 2];
    let normalised = normalise_host(host.as_bytes(), &mut buf)
        .map_err(|e| BuildError(format!("route {route}: {e}")))?;
    if normalised != host {
        return Err(BuildError(format!(
            "route {route} is not in canonical form; write {normalised:?}"
        )));
    }
    Ok(host.to_string())
}

fn build_app(spec: &AppSpec, activity: &ActivityRegistry) -> Result<AppEntry, BuildError> {
    let name: Arc<str> = Arc::from(spec.name.as_str());
    let active = spec
        .active
        .as_ref()
        .map(|version| Arc::new(target(&name, None, None, version, activity)));
    let mut labels = FastMap::default();
    labels.reserve(spec.previews.len() + spec.expired_labels.len());
    for preview in &spec.previews {
        check_label(&spec.name, &preview.label)?;
        let label: Arc<str> = Arc::from(preview.label.as_str());
        let entry = LabelEntry::Live(Arc::new(target(
            &name,
            Some(label),
            Some(preview.expires_at_ms),
            &preview.version,
            activity,
        )));
        if labels
            .insert(Box::from(preview.label.as_str()), entry)
            .is_some()
        {
            return Err(BuildError(format!(
                "app {:?} has two previews labelled {:?}",
                spec.name, preview.label
            )));
        }
    }
    for expired in &spec.expired_labels {
        check_label(&spec.name, &expired.label)?;
        // A live preview wins over a tombstone of the same label (it was redeployed).
        labels
            .entry(Box::from(expired.label.as_str()))
            .or_insert(LabelEntry::Expired {
                expired_at_ms: expired.expired_at_ms,
            });
    }
    Ok(AppEntry {
        name,
        active,
        labels,
    })
}

fn check_label(app: &str, label: &str) -> Result<(), BuildError> {
    if is_dns_label(label) {
        Ok(())
    } else {
        Err(BuildError(format!(
            "app {app:?}: label {label:?} is not an RFC 1123 DNS label (1 to 63 of a-z, 0-9 and '-', not starting or ending with '-')"
        )))
    }
}

fn target(
    app: &Arc<str>,
    label: Option<Arc<str>>,
    expires_at_ms: Option<u64>,
    version: &VersionRef,
    activity: &ActivityRegistry,
) -> Target {
    let version_id: Arc<str> = Arc::from(version.id.as_str());
    let version_header = HeaderValue::from_str(&version.id)
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-version-id"));
    Target {
        app: Arc::clone(app),
        lease_key: LeaseKey {
            app: Arc::clone(app),
            label: label.clone(),
            version_id: Arc::clone(&version_id),
        },
        activity: activity.for_version(&version.id),
        version_id,
        label,
        expires_at_ms,
        state_epoch: version.state_epoch,
        version_header,
        lease_memo: ArcSwapOption::empty(),
    }
}

// ---------------------------------------------------------------------------
// Publishing.
// ---------------------------------------------------------------------------

/// A snapshot built but not yet current; see [`SnapshotHandle::prepare`].
pub struct PreparedSnapshot(Snapshot);

/// The current snapshot, swapped atomically. Readers never block; publishers are
/// serialised so that generations only grow.
pub struct SnapshotHandle {
    current: ArcSwap<Snapshot>,
    activity: ActivityRegistry,
    publish_lock: Mutex<()>,
    generation: AtomicU64,
    generation_gauge: Option<prometheus::IntGauge>,
}

impl Default for SnapshotHandle {
    fn default() -> Self {
        Self::new()
    }
}

impl SnapshotHandle {
    /// A handle holding the empty snapshot (generation 0).
    pub fn new() -> SnapshotHandle {
        SnapshotHandle {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            activity: ActivityRegistry::default(),
            publish_lock: Mutex::new(()),
            generation: AtomicU64::new(0),
            generation_gauge: None,
        }
    }

    /// Also reports every published generation on `gauge`.
    pub fn with_generation_gauge(mut self, gauge: prometheus::IntGauge) -> SnapshotHandle {
        gauge.set(0);
        self.generation_gauge = Some(gauge);
        self
    }

    /// The current snapshot: one atomic load, no lock.
    pub fn load(&self) -> Guard<Arc<Snapshot>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for holding across awaits.
    pub fn load_full(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Builds a snapshot from `input` and makes it current. Returns its generation.
    /// On error nothing changes and the proxy keeps serving the previous snapshot.
    pub fn publish(&self, input: &SnapshotInput) -> Result<u64, BuildError> {
        Ok(self.install(self.prepare(input)?))
    }

    /// Builds a snapshot from `input` without making it current, so that a caller
    /// can check that its change is routable before committing the change.
    pub fn prepare(&self, input: &SnapshotInput) -> Result<PreparedSnapshot, BuildError> {
        Snapshot::build(input, 0, &self.activity).map(PreparedSnapshot)
    }

    /// Builds the current snapshot changed by `delta`, without making it
    /// current. The caller serialises prepare and install (the control plane
    /// holds its lock across both), so the base is still current at install.
    pub fn prepare_delta(&self, delta: &SnapshotDelta) -> Result<PreparedSnapshot, BuildError> {
        self.current
            .load()
            .apply(delta, &self.activity)
            .map(PreparedSnapshot)
    }

    /// Makes a prepared snapshot current with the next generation, which it
    /// returns. Cannot fail.
    pub fn install(&self, prepared: PreparedSnapshot) -> u64 {
        let _serialised = self
            .publish_lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut snapshot = prepared.0;
        let generation = self.generation.load(Ordering::Relaxed) + 1;
        snapshot.generation = generation;
        let previous = self.current.swap(Arc::new(snapshot));
        // Forget the activity of versions the new snapshot no longer routes to.
        // Only apps whose entry changed can have lost a version, so the cost is
        // that of the change, not of the whole snapshot.
        let mut dropped: Vec<Arc<str>> = Vec::new();
        {
            let current = self.current.load();
            for old in previous.apps.changed_from(&current.apps) {
                let now_routed: Vec<&str> = current
                    .app(&old.name)
                    .map(|new| new.version_ids().collect())
                    .unwrap_or_default();
                dropped.extend(
                    old.version_ids()
                        .filter(|id| !now_routed.contains(id))
                        .map(Arc::from),
                );
            }
        }
        // The old snapshot's targets hold counters too: let them go first.
        drop(previous);
        self.activity.forget_unused(&dropped);
        self.generation.store(generation, Ordering::Relaxed);
        if let Some(gauge) = &self.generation_gauge {
            gauge.set(i64::try_from(generation).unwrap_or(i64::MAX));
        }
        generation
    }

    /// Activity counters of every version the current snapshot routes to.
    pub fn activity(&self) -> &ActivityRegistry {
        &self.activity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app(name: &str, active: Option<&str>) -> AppSpec {
        AppSpec {
            name: name.into(),
            active: active.map(|id| VersionRef {
                id: id.into(),
                state_epoch: 0,
            }),
            previews: vec![],
            expired_labels: vec![],
        }
    }

    fn build(input: &SnapshotInput) -> Result<Snapshot, BuildError> {
        Snapshot::build(input, 1, &ActivityRegistry::default())
    }

    #[test]
    fn refuses_inconsistent_input_naming_the_item() {
        let two_apps = vec![app("a", Some("v1")), app("b", Some("v2"))];
        let err = |routes: Vec<RouteSpec>| {
            build(&SnapshotInput {
                apps: two_apps.clone(),
                routes,
            })
            .unwrap_err()
            .0
        };
        assert_eq!(
            err(vec![RouteSpec::exact("x.com", "nope")]),
            "route x.com points to app \"nope\", which does not exist"
        );
        assert_eq!(
            err(vec![
                RouteSpec::exact("x.com", "a"),
                RouteSpec::exact("x.com", "b")
            ]),
            "route x.com is claimed by both app \"a\" and app \"b\""
        );
        assert_eq!(
            err(vec![
                RouteSpec::wildcard("x.com", "a"),
                RouteSpec::wildcard("x.com", "b")
            ]),
            "route *.x.com is claimed by both app \"a\" and app \"b\""
        );
        assert!(err(vec![
            RouteSpec::default_route("a"),
            RouteSpec::default_route("b")
        ])
        .contains("claimed by both"));
        assert_eq!(
            err(vec![RouteSpec::exact("X.com", "a")]),
            "route X.com is not in canonical form; write \"x.com\""
        );
        assert!(err(vec![RouteSpec::exact("bad host", "a")]).starts_with("route bad host: "));

        let duplicate_app = build(&SnapshotInput {
            apps: vec![app("a", None), app("a", None)],
            routes: vec![],
        });
        assert_eq!(duplicate_app.unwrap_err().0, "app \"a\" is listed twice");

        let mut bad_label = app("a", None);
        bad_label.previews.push(PreviewSpec {
            label: "Bad_Label".into(),
            version: VersionRef {
                id: "p".into(),
                state_epoch: 0,
            },
            expires_at_ms: 1,
        });
        let e = build(&SnapshotInput {
            apps: vec![bad_label],
            routes: vec![],
        })
        .unwrap_err();
        assert!(e.0.contains("is not an RFC 1123 DNS label"), "{e}");
    }

    #[test]
    fn publish_bumps_the_generation_and_keeps_activity_across_swaps() {
        let handle = SnapshotHandle::new();
        assert_eq!(handle.load().generation(), 0);
        let input = SnapshotInput {
            apps: vec![app("a", Some("v1"))],
            routes: vec![RouteSpec::exact("a.com", "a")],
        };
        assert_eq!(handle.publish(&input), Ok(1));
        let first = handle.load_full();
        let counters = Arc::clone(&first.app("a").unwrap().active().unwrap().activity);
        assert_eq!(handle.publish(&input), Ok(2));
        let second = handle.load_full();
        assert_eq!(second.generation(), 2);
        assert!(Arc::ptr_eq(
            &counters,
            &second.app("a").unwrap().active().unwrap().activity
        ));
    }

    #[test]
    fn a_failed_publish_changes_nothing() {
        let handle = SnapshotHandle::new();
        let good = SnapshotInput {
            apps: vec![app("a", Some("v1"))],
            routes: vec![RouteSpec::exact("a.com", "a")],
        };
        handle.publish(&good).unwrap();
        let bad = SnapshotInput {
            apps: vec![app("a", Some("v1"))],
            routes: vec![RouteSpec::exact("a.com", "missing")],
        };
        assert!(handle.publish(&bad).is_err());
        assert_eq!(handle.load().generation(), 1);
        assert!(handle.load().exact_route("a.com").is_some());
        assert_eq!(handle.publish(&good), Ok(2));
    }

    #[test]
    fn activity_of_versions_no_longer_routed_is_forgotten() {
        let handle = SnapshotHandle::new();
        handle
            .publish(&SnapshotInput {
                apps: vec![app("a", Some("v1"))],
                routes: vec![],
            })
            .unwrap();
        assert!(handle.activity().get("v1").is_some());
        handle
            .publish(&SnapshotInput {
                apps: vec![app("a", Some("v2"))],
                routes: vec![],
            })
            .unwrap();
        assert!(handle.activity().get("v1").is_none());
        assert!(handle.activity().get("v2").is_some());
    }

    fn delta(f: impl FnOnce(&mut SnapshotDelta)) -> SnapshotDelta {
        let mut delta = SnapshotDelta::default();
        f(&mut delta);
        delta
    }

    /// A delta rebuilds only the apps it names: the others are the same
    /// allocations (their cached leases survive), and the base is unchanged.
    #[test]
    fn a_delta_shares_untouched_apps_and_leaves_the_base_alone() {
        let activity = ActivityRegistry::default();
        let base = Snapshot::build(
            &SnapshotInput {
                apps: vec![app("a", Some("v1")), app("b", Some("v2"))],
                routes: vec![
                    RouteSpec::exact("a.test", "a"),
                    RouteSpec::exact("b.test", "b"),
                ],
            },
            1,
            &activity,
        )
        .unwrap();
        let next = base
            .apply(
                &delta(|d| d.upsert_apps.push(app("b", Some("v3")))),
                &activity,
            )
            .unwrap();
        assert!(Arc::ptr_eq(base.apps.get(0), next.apps.get(0)));
        assert_eq!(next.apps.changed_from(&base.apps).count(), 1);
        assert!(Arc::ptr_eq(&base.hosts, &next.hosts));
        assert_eq!(
            next.exact_route("b.test")
                .unwrap()
                .active()
                .unwrap()
                .version_id
                .as_ref(),
            "v3"
        );
        assert_eq!(
            base.exact_route("b.test")
                .unwrap()
                .active()
                .unwrap()
                .version_id
                .as_ref(),
            "v2"
        );
    }

    /// Routes and apps come and go through deltas as through a full build, and a
    /// delta that would break the snapshot is refused whole.
    #[test]
    fn deltas_add_and_remove_routes_and_apps_and_refuse_inconsistency() {
        let activity = ActivityRegistry::default();
        let base = Snapshot::build(
            &SnapshotInput {
                apps: vec![app("a", Some("v1"))],
                routes: vec![
                    RouteSpec::exact("a.test", "a"),
                    RouteSpec::wildcard("a.test", "a"),
                ],
            },
            1,
            &activity,
        )
        .unwrap();
        let with_b = base
            .apply(
                &delta(|d| {
                    d.upsert_apps.push(app("b", Some("v2")));
                    d.add_routes.push(RouteSpec::exact("b.test", "b"));
                    d.add_routes.push(RouteSpec::default_route("b"));
                    d.remove_routes.push(RouteHost::Wildcard("a.test".into()));
                }),
                &activity,
            )
            .unwrap();
        assert_eq!(with_b.exact_route("b.test").unwrap().name().as_ref(), "b");
        assert_eq!(with_b.default_route().unwrap().name().as_ref(), "b");
        assert!(with_b.host_routes("a.test").unwrap().wildcard.is_none());
        // A route to an app of another, a routed app removed, a route to nothing.
        let taken = with_b.apply(
            &delta(|d| d.add_routes.push(RouteSpec::exact("a.test", "b"))),
            &activity,
        );
        assert!(taken.unwrap_err().0.contains("claimed by both"));
        let routed = with_b.apply(&delta(|d| d.remove_apps.push("b".into())), &activity);
        assert!(routed.unwrap_err().0.contains("while a route points to it"));
        let nowhere = with_b.apply(
            &delta(|d| d.add_routes.push(RouteSpec::exact("c.test", "c"))),
            &activity,
        );
        assert!(nowhere.unwrap_err().0.contains("does not exist"));
        // Removing b with its routes leaves a vacant slot no lookup reaches.
        let without_b = with_b
            .apply(
                &delta(|d| {
                    d.remove_apps.push("b".into());
                    d.remove_routes.push(RouteHost::Exact("b.test".into()));
                    d.remove_routes.push(RouteHost::Default);
                }),
                &activity,
            )
            .unwrap();
        assert!(without_b.app("b").is_none());
        assert!(without_b.host_routes("b.test").is_none());
        assert_eq!(without_b.apps().count(), 1);
    }

    /// Installing a delta forgets the activity of the versions it stopped routing
    /// to, and only those.
    #[test]
    fn a_delta_install_forgets_only_the_versions_it_dropped() {
        let handle = SnapshotHandle::new();
        handle
            .publish(&SnapshotInput {
                apps: vec![app("a", Some("v1")), app("b", Some("v2"))],
                routes: vec![],
            })
            .unwrap();
        let prepared = handle
            .prepare_delta(&delta(|d| d.upsert_apps.push(app("a", Some("v3")))))
            .unwrap();
        assert_eq!(handle.install(prepared), 2);
        assert!(handle.activity().get("v1").is_none());
        assert!(handle.activity().get("v2").is_some());
        assert!(handle.activity().get("v3").is_some());
    }
}

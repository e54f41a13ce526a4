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
}

/// An immutable routing snapshot.
#[derive(Debug)]
pub struct Snapshot {
    generation: u64,
    apps: Vec<AppEntry>,
    app_index: FastMap<Arc<str>, usize>,
    /// Exact and wildcard routes in one map, so that a host and its parent each
    /// cost one lookup: `hosts["example.com"].wildcard` is the app of `*.example.com`.
    hosts: FastMap<Box<str>, HostRoutes>,
    default_app: Option<usize>,
}

/// The routes of one host name: the app routed at it exactly, and the app routed
/// one label below it (`*.host`).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct HostRoutes {
    pub(crate) exact: Option<usize>,
    pub(crate) wildcard: Option<usize>,
}

impl Snapshot {
    /// The snapshot with nothing in it (every request is 404).
    pub fn empty() -> Snapshot {
        Snapshot {
            generation: 0,
            apps: Vec::new(),
            app_index: FastMap::default(),
            hosts: FastMap::default(),
            default_app: None,
        }
    }

    /// The generation number; every published snapshot has a larger one.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The app named `name`.
    pub fn app(&self, name: &str) -> Option<&AppEntry> {
        self.app_index.get(name).map(|&i| &self.apps[i])
    }

    /// Every app, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = &AppEntry> {
        self.apps.iter()
    }

    /// The ids of every version this snapshot routes to (active or live preview).
    pub fn routed_version_ids(&self) -> std::collections::HashSet<&str, ahash::RandomState> {
        let mut ids = std::collections::HashSet::with_hasher(ahash::RandomState::new());
        for app in &self.apps {
            ids.extend(app.active.iter().map(|t| &*t.version_id));
            ids.extend(app.labels.values().filter_map(|entry| match entry {
                LabelEntry::Live(t) => Some(&*t.version_id),
                LabelEntry::Expired { .. } => None,
            }));
        }
        ids
    }

    /// The routes of `host` (exact at it, wildcard below it).
    pub(crate) fn host_routes(&self, host: &str) -> Option<HostRoutes> {
        self.hosts.get(host).copied()
    }

    /// The app at index `i` of this snapshot.
    pub(crate) fn app_at(&self, i: usize) -> &AppEntry {
        &self.apps[i]
    }

    #[cfg(test)]
    pub(crate) fn exact_route(&self, host: &str) -> Option<&AppEntry> {
        self.host_routes(host)?.exact.map(|i| &self.apps[i])
    }

    pub(crate) fn default_route(&self) -> Option<&AppEntry> {
        self.default_app.map(|i| &self.apps[i])
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
        snapshot.apps.reserve(input.apps.len());
        snapshot.app_index.reserve(input.apps.len());
        for spec in &input.apps {
            if snapshot.app_index.contains_key(spec.name.as_str()) {
                return Err(BuildError(format!("app {:?} is listed twice", spec.name)));
            }
            let entry = build_app(spec, activity)?;
            snapshot
                .app_index
                .insert(Arc::clone(&entry.name), snapshot.apps.len());
            snapshot.apps.push(entry);
        }
        for route in &input.routes {
            snapshot.add_route(route)?;
        }
        Ok(snapshot)
    }

    fn add_route(&mut self, route: &RouteSpec) -> Result<(), BuildError> {
        let app = *self.app_index.get(route.app.as_str()).ok_or_else(|| {
            BuildError(format!(
                "route {} points to app {:?}, which does not exist",
                route.host, route.app
            ))
        })?;
        let apps = &self.apps;
        let taken = |other: usize| {
            BuildError(format!(
                "route {} is claimed by both app {:?} and app {:?}",
                route.host, apps[other].name, route.app
            ))
        };
        match &route.host {
            RouteHost::Default => {
                if let Some(other) = self.default_app {
                    return Err(taken(other));
                }
                self.default_app = Some(app);
            }
            RouteHost::Exact(name) | RouteHost::Wildcard(name) => {
                let name = canonical_route_host(name, &route.host)?;
                let routes = self.hosts.entry(name.into_boxed_str()).or_default();
                let slot = match route.host {
                    RouteHost::Exact(_) => &mut routes.exact,
                    _ => &mut routes.wildcard,
                };
                if let Some(other) = *slot {
                    return Err(taken(other));
                }
                *slot = Some(app);
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
        self.current.store(Arc::new(snapshot));
        self.generation.store(generation, Ordering::Relaxed);
        if let Some(gauge) = &self.generation_gauge {
            gauge.set(i64::try_from(generation).unwrap_or(i64::MAX));
        }
        let current = self.current.load();
        let routed = current.routed_version_ids();
        self.activity.prune(|id| routed.contains(id));
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
}

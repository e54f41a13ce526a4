//! The control plane's operations (SPEC §6): apps, routes, deploys (active,
//! ephemeral, clone), deletes, listings, the TTL garbage collection, and publishing
//! every committed change to the proxy as a new snapshot.
//!
//! Every mutation is validated against the in-memory state first, then committed to
//! the store as one atomic batch (with its audit entry), then applied in memory and
//! published. A failure at any step before the commit changes nothing.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use ingress_config::{format_duration, parse_duration, Config, EphemeralSettings, IdleSettings};
use ingress_proxy::{
    AppSpec, ExpiredLabel, LeaseSource, PreparedSnapshot, PreviewSpec, RouteHost, RouteSpec,
    SnapshotDelta, SnapshotHandle, SnapshotInput, VersionRef,
};

use crate::metrics::ControlMetrics;
use crate::model::{
    App, AuditEntry, ChangeReason, DesiredState, Environment, Mutation, ReadyCheck, Route,
    RouteKind, RuntimeSpec, Schedule, State, Tombstone, Version, VersionStatus, DEFAULT_ROUTE_KEY,
};
use crate::names::{check_app_name, normalise_label, parse_route_host};
use crate::pools::{Observed, PoolEvent, PoolSettings, Pools};
use crate::runtime::{
    process_tree, Network, ProcessRuntime, Runtimes, SandboxLedger, StaticRuntime,
};
use crate::store::Store;

/// The actor name of automatic changes in the audit log.
pub const SYSTEM_ACTOR: &str = "system";

/// Which rule an operation broke; maps one to one onto gRPC status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    /// The operation could not finish now (a wake that failed or timed out).
    Unavailable,
    Internal,
}

/// Why an operation was refused or failed. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlError {
    pub kind: ErrorKind,
    pub message: String,
}

impl fmt::Display for ControlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ControlError {}

fn refuse(kind: ErrorKind, message: impl Into<String>) -> ControlError {
    ControlError {
        kind,
        message: message.into(),
    }
}

/// Where a deploy's instances come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeploySource {
    /// A new static version over these addresses.
    Upstreams(Vec<SocketAddr>),
    /// A new process version running this command, ready when `ready` says so.
    Command { command: String, ready: ReadyCheck },
    /// An existing version of the app: activated again, or cloned as a preview.
    Version(String),
}

/// A deploy as `ingressctl deploy` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployRequest {
    pub app: String,
    pub source: DeploySource,
    pub env: Option<Environment>,
    pub branch: Option<String>,
    /// `(label as given, ttl as given)` for an ephemeral deploy.
    pub ephemeral: Option<(String, Option<String>)>,
}

/// What a deploy did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployOutcome {
    pub version: VersionView,
    /// A version deleted because it had the same label.
    pub replaced: Option<String>,
    /// Versions deleted to stay within `ephemeral.max_per_app`, nearest to expiry
    /// first.
    pub evicted: Vec<String>,
}

/// A version as listings show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionView {
    pub id: String,
    pub app: String,
    pub status: VersionStatus,
    pub label: Option<String>,
    pub expires_at_ms: Option<u64>,
    pub env: Environment,
    pub branch: Option<String>,
    pub desired_state: DesiredState,
    /// What the runtime sees now.
    pub observed_state: Observed,
    /// Why it failed, when `observed_state` is `failed`.
    pub failure: Option<String>,
    /// Unix milliseconds of its latest request since the ingress started.
    pub last_activity_at_ms: Option<u64>,
    /// Requests this node's proxy answered for the version since it started,
    /// and how many with a 5xx (not counting replicas').
    pub answers: (u64, u64),
    /// How long its latest start (a cold start) took, in milliseconds, since
    /// the ingress started; `None` before one.
    pub last_start_ms: Option<u64>,
    /// Its pending desired-state change.
    pub pending: Option<Schedule>,
    pub created_at_ms: u64,
    pub cloned_from: Option<String>,
    /// `static` or `process`.
    pub runtime: &'static str,
    /// The command of a process version.
    pub command: Option<String>,
    pub upstreams: Vec<SocketAddr>,
    /// Where its running instances are reached now (while ready): the static
    /// upstreams, or a process's `runtime.process.advertise` IP and port.
    pub addresses: Vec<SocketAddr>,
    /// Where the version is reachable: `http://label.host` for a live preview,
    /// `http://host` for the active version.
    pub urls: Vec<String>,
}

/// What one garbage-collection sweep did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    pub deleted: Vec<String>,
    pub tombstones_pruned: usize,
}

/// What the idle sweep and the GC did, and what a schedule run executed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoopReport {
    /// `app/version` of each version acted on.
    pub versions: Vec<String>,
}

struct Inner {
    store: Box<dyn Store>,
    state: State,
}

/// The control plane's settings, from the configuration file.
#[derive(Debug, Clone)]
pub struct PlaneSettings {
    pub ephemeral: EphemeralSettings,
    pub idle: IdleSettings,
    /// `supersede.grace`.
    pub supersede_grace: Duration,
    /// The longest `ingressctl wake` waits for readiness (`wake.timeout`).
    pub wake_timeout: Duration,
    /// Where process versions write their output.
    pub log_dir: PathBuf,
    /// `runtime.start_timeout`.
    pub start_timeout: Duration,
    pub pools: PoolSettings,
    /// The scope of sandbox markers (from `store.data_dir`), and where running
    /// sandboxes are recorded (none in tests that need no restart clean-up).
    pub sandbox_scope: String,
    pub sandbox_ledger: Option<Arc<dyn SandboxLedger>>,
    /// `runtime.process.bind` and the IP it is reached at
    /// (`runtime.process.advertise`, else the bind IP).
    pub process_network: Network,
}

impl PlaneSettings {
    /// The settings of `config`; logs go to `<store.data_dir>/logs`.
    pub fn from_config(config: &Config) -> PlaneSettings {
        PlaneSettings {
            ephemeral: config.ephemeral.clone(),
            idle: config.idle.clone(),
            supersede_grace: config.supersede.grace.0,
            wake_timeout: config.wake.timeout.0,
            log_dir: config.store.data_dir.join("logs"),
            start_timeout: config.runtime.start_timeout.0,
            pools: PoolSettings {
                drain_timeout: config.runtime.drain_timeout.0,
                stop_grace: config.runtime.stop_grace.0,
                failure_backoff: config.wake.failure_backoff.0,
                failure_backoff_max: config.wake.failure_backoff_max.0,
            },
            sandbox_scope: process_tree::scope_of(&config.store.data_dir),
            sandbox_ledger: None,
            process_network: Network {
                bind: config.runtime.process.bind,
                advertise: config.runtime.process.advertised(),
            },
        }
    }
}

/// A clock giving Unix milliseconds.
pub type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The control plane: state, operations, snapshot publishing and the pools that
/// run versions.
pub struct ControlPlane {
    inner: Mutex<Inner>,
    snapshots: Arc<SnapshotHandle>,
    pools: Arc<Pools>,
    settings: EphemeralSettings,
    lifecycle: PlaneSettings,
    metrics: Arc<ControlMetrics>,
    clock: Clock,
    /// The generation of the latest published snapshot, for watchers.
    published: tokio::sync::watch::Sender<u64>,
    /// Set when `[tls]` is configured: hosts a certificate covers get `https://` URLs.
    https: std::sync::OnceLock<HttpsUrls>,
    /// Set on a control node: every routing change also goes to replicas.
    feed: std::sync::OnceLock<Arc<crate::replication::Feed>>,
}

/// What decides whether a version's URL is `https://`: the published
/// certificates, and the TLS listener's port (left out of the URL when 443).
struct HttpsUrls {
    certs: Arc<ingress_proxy::tls::CertStore>,
    port: u16,
}

impl ControlPlane {
    /// Loads the state from `store`, registers every version with its pool, starts
    /// the versions whose desired state is running, and publishes the first
    /// snapshot. `clock` gives Unix milliseconds. Pool events are handled on a
    /// thread of their own for as long as the plane lives.
    pub fn open(
        store: Box<dyn Store>,
        snapshots: Arc<SnapshotHandle>,
        settings: PlaneSettings,
        metrics: Arc<ControlMetrics>,
        clock: Clock,
    ) -> Result<Arc<ControlPlane>, ControlError> {
        let mut state = store
            .load()
            .map_err(|e| refuse(ErrorKind::Internal, e.to_string()))?;
        // Any store fills `versions` directly; the derived index is the plane's.
        state.reindex();
        let runtimes = Runtimes {
            static_runtime: Arc::new(StaticRuntime),
            process_runtime: Arc::new(
                ProcessRuntime::new(&settings.log_dir, settings.start_timeout)
                    .with_sandboxes(
                        settings.sandbox_scope.clone(),
                        settings.sandbox_ledger.clone(),
                    )
                    .with_network(settings.process_network),
            ),
        };
        let (pools, events) = Pools::new(
            runtimes,
            settings.pools.clone(),
            Arc::clone(&snapshots),
            Arc::clone(&metrics),
            Arc::clone(&clock),
        )
        .map_err(|e| refuse(ErrorKind::Internal, e))?;
        let pools = Arc::new(pools);
        for version in state.versions.values() {
            pools.register(&version.id, &version.pool, &version.spec);
        }
        let plane = Arc::new(ControlPlane {
            inner: Mutex::new(Inner { store, state }),
            snapshots,
            pools,
            settings: settings.ephemeral.clone(),
            lifecycle: settings,
            metrics,
            clock,
            published: tokio::sync::watch::channel(0).0,
            https: std::sync::OnceLock::new(),
            feed: std::sync::OnceLock::new(),
        });
        {
            let inner = plane.lock();
            let prepared = plane.prepare(&inner.state)?;
            plane.install(prepared);
            for version in inner.state.versions.values() {
                if version.desired == DesiredState::Running {
                    if let Err(e) = plane.pools.hold(&version.id, false) {
                        log::warn!("version {}: {e}", version.id);
                    }
                }
            }
        }
        spawn_event_handler(Arc::downgrade(&plane), events)?;
        Ok(plane)
    }

    /// The lease source the proxy asks for leases and wakes.
    pub fn lease_source(&self) -> Arc<dyn LeaseSource> {
        Arc::clone(&self.pools) as Arc<dyn LeaseSource>
    }

    /// Stops every running instance; for the end of the process.
    pub fn shutdown(&self) {
        self.pools.shutdown();
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }

    /// Commits `mutations` plus an audit entry, then applies and publishes them.
    /// Publishing rebuilds only the apps and routes the mutations touch, so its
    /// cost does not grow with the number of apps (see ARCHITECTURE.md).
    fn commit(
        &self,
        inner: &mut Inner,
        mut mutations: Vec<Mutation>,
        audit: AuditEntry,
    ) -> Result<(), ControlError> {
        mutations.push(Mutation::Audit(audit));
        let routing = RoutingChange::of(&inner.state, &mutations);
        // The state changes in place; `undo` backs the change out if the snapshot
        // or the store refuses it, so a failure changes nothing.
        let undo = inner.state.apply_with_undo(&mutations);
        // Build the snapshot of the new state first: a change the proxy could not
        // route is refused before anything is written. Changes of desired state,
        // schedules and the audit log route nothing and publish nothing.
        let prepared = match routing.map(|change| self.prepare_change(&inner.state, change)) {
            Some(Err(e)) => {
                inner.state.apply(&undo);
                return Err(e);
            }
            Some(Ok(prepared)) => Some(prepared),
            None => None,
        };
        if let Err(e) = inner.store.commit(&mutations) {
            inner.state.apply(&undo);
            return Err(refuse(
                ErrorKind::Internal,
                format!("the store refused the change: {e}"),
            ));
        }
        // New versions join their pool before the snapshot routes to them, and
        // deleted ones leave it only after the snapshot stops routing to them.
        for mutation in &mutations {
            if let Mutation::PutVersion(version) = mutation {
                self.pools
                    .register(&version.id, &version.pool, &version.spec);
            }
        }
        if let Some((prepared, delta)) = prepared {
            self.install(prepared);
            if let Some(feed) = self.feed.get() {
                feed.routing(&delta);
            }
        }
        for mutation in &mutations {
            match mutation {
                Mutation::PutVersion(version) if version.desired == DesiredState::Running => {
                    if let Err(e) = self.pools.hold(&version.id, false) {
                        log::warn!("version {}: {e}", version.id);
                    }
                }
                Mutation::PutVersion(version) => self.pools.release(&version.id, false),
                Mutation::DeleteVersion(id) => self.pools.release(id, true),
                _ => {}
            }
        }
        Ok(())
    }

    fn audit(&self, actor: &str, action: &str, target: &str, detail: String) -> AuditEntry {
        AuditEntry {
            at_ms: self.now(),
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail,
        }
    }

    /// Builds the proxy's snapshot of `state` without making it current.
    fn prepare(&self, state: &State) -> Result<PreparedSnapshot, ControlError> {
        let input = snapshot_input(state, self.now(), self.settings.tombstone_ttl.0);
        self.snapshots.prepare(&input).map_err(|e| {
            refuse(
                ErrorKind::Internal,
                format!("the change would make the routing snapshot invalid: {e}"),
            )
        })
    }

    /// The current snapshot with the apps and routes of `change` rebuilt from
    /// `state`, without making it current.
    fn prepare_change(
        &self,
        state: &State,
        change: RoutingChange,
    ) -> Result<(PreparedSnapshot, SnapshotDelta), ControlError> {
        let upsert_apps = app_specs(
            state,
            Some(&change.apps),
            self.now(),
            self.settings.tombstone_ttl.0,
        );
        let delta = SnapshotDelta {
            remove_apps: change
                .apps
                .iter()
                .filter(|name| !state.apps.contains_key(*name))
                .cloned()
                .collect(),
            upsert_apps,
            remove_routes: change
                .removed_routes
                .iter()
                .map(|route| route_spec(route).host)
                .collect(),
            add_routes: change.added_routes.iter().map(route_spec).collect(),
        };
        let prepared = self.snapshots.prepare_delta(&delta).map_err(|e| {
            refuse(
                ErrorKind::Internal,
                format!("the change would make the routing snapshot invalid: {e}"),
            )
        })?;
        Ok((prepared, delta))
    }

    /// Makes a prepared snapshot current and tells watchers.
    fn install(&self, prepared: PreparedSnapshot) {
        let generation = self.snapshots.install(prepared);
        self.published.send_replace(generation);
    }

    /// A version as listings show it, at `now_ms`, with what the pools observe of
    /// it.
    fn view(&self, state: &State, version: &Version, now_ms: u64) -> VersionView {
        let status = state.status(version, now_ms);
        let hosts = state.exact_hosts(&version.app);
        let urls = match (status, &version.label) {
            (VersionStatus::Ephemeral, Some(label)) => hosts
                .iter()
                .map(|host| self.url(&format!("{label}.{host}")))
                .collect(),
            (VersionStatus::Active, _) => hosts.iter().map(|host| self.url(host)).collect(),
            _ => Vec::new(),
        };
        let (upstreams, command) = match &version.spec {
            RuntimeSpec::Static { upstreams } => (upstreams.clone(), None),
            RuntimeSpec::Process { command, .. } => (Vec::new(), Some(command.clone())),
        };
        let observed = self.pools.observe(&version.id);
        let activity = self.snapshots.activity().get(&version.id);
        let last_activity_at_ms = activity
            .as_ref()
            .map(|activity| activity.last_seen_ms())
            .filter(|ms| *ms > 0);
        let answers = activity.map_or((0, 0), |activity| activity.answers());
        VersionView {
            id: version.id.clone(),
            app: version.app.clone(),
            status,
            label: version.label.clone(),
            expires_at_ms: version.expires_at_ms,
            env: version.env,
            branch: version.branch.clone(),
            desired_state: version.desired,
            observed_state: observed.observed,
            failure: observed.failure,
            addresses: observed.addresses,
            last_activity_at_ms,
            answers,
            last_start_ms: observed.last_start_ms,
            pending: state.schedules.get(&version.id).cloned(),
            created_at_ms: version.created_at_ms,
            cloned_from: version.cloned_from.clone(),
            runtime: version.spec.kind(),
            command,
            upstreams,
            urls,
        }
    }

    /// `https://host[:port]` when `[tls]` is configured and a loaded certificate
    /// covers `host` (the port left out when the TLS listener is on 443, as in the
    /// proxy's redirects), else `http://host`.
    fn url(&self, host: &str) -> String {
        match self.https.get() {
            Some(https) if https.certs.load().covers(host) => match https.port {
                443 => format!("https://{host}"),
                port => format!("https://{host}:{port}"),
            },
            _ => format!("http://{host}"),
        }
    }

    /// Makes listings and deploys print `https://` URLs for hosts a certificate
    /// in `certs` covers, on the TLS listener's `port`. Called once, at start,
    /// when `[tls]` is configured; later calls change nothing.
    pub fn serve_https_urls(&self, certs: Arc<ingress_proxy::tls::CertStore>, port: u16) {
        let _ = self.https.set(HttpsUrls { certs, port });
    }

    /// Sends every routing change from now on to `feed` too (a control node),
    /// and makes drains wait for the replicas `nodes` knows of. Later calls
    /// change nothing.
    pub fn attach_feed(
        &self,
        feed: Arc<crate::replication::Feed>,
        nodes: Arc<crate::replication::Nodes>,
    ) {
        self.pools
            .set_drain_gate(Arc::new(crate::replication::ReplicaDrain::new(
                Arc::clone(&feed),
                nodes,
            )));
        let _ = self.feed.set(feed);
    }

    /// The whole routing state as `feed`'s full update, consistent with its
    /// generation: taken under the plane's lock, which every routing change holds.
    pub fn replication_state(
        &self,
        feed: &crate::replication::Feed,
    ) -> Vec<crate::grpc::proto::RoutingUpdate> {
        let inner = self.lock();
        let input = snapshot_input(&inner.state, self.now(), self.settings.tombstone_ttl.0);
        feed.full(input)
    }

    /// Every version's endpoint, as the pools see it now.
    pub fn endpoints(&self) -> std::collections::BTreeMap<String, crate::pools::EndpointView> {
        self.pools.endpoints()
    }

    /// The pools changed since the last call, with their versions' endpoints
    /// (`None`: every pool may have changed).
    pub fn changed_endpoints(&self) -> Option<Vec<(String, Vec<crate::pools::EndpointView>)>> {
        self.pools.take_changed()
    }

    /// Changes whenever a pool changed.
    pub fn subscribe_pool_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.pools.subscribe_changes()
    }

    /// The activity counters replicas' reports feed into.
    pub fn activity(&self) -> &ingress_proxy::ActivityRegistry {
        self.snapshots.activity()
    }

    /// Wakes `version` for a request held on a replica, as a request here would
    /// (reason `request`); waits at most `wait` for it to be ready.
    pub async fn wake_for_replica(
        &self,
        version: &str,
        wait: std::time::Duration,
    ) -> Result<crate::pools::EndpointView, ingress_proxy::LeaseError> {
        let app = {
            let inner = self.lock();
            match inner.state.versions.get(version) {
                Some(v) => v.app.clone(),
                None => {
                    return Err(ingress_proxy::LeaseError::Failed {
                        reason: format!("version {version} is not known to the control node"),
                    })
                }
            }
        };
        let woken = tokio::time::timeout(wait, self.pools.wake_version(&app, version)).await;
        match woken {
            Ok(Ok(_)) => self.pools.endpoints().remove(version).ok_or_else(|| {
                ingress_proxy::LeaseError::Failed {
                    reason: format!("version {version} left its pool while it woke"),
                }
            }),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(ingress_proxy::LeaseError::NotRunning {
                reason: format!(
                    "version {version} of app {app} was not ready within {}ms",
                    wait.as_millis()
                ),
            }),
        }
    }

    /// Wakes up after every published snapshot; the value is its generation.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.published.subscribe()
    }

    /// The current routing snapshot's input and generation, as watchers get it.
    pub fn current_snapshot(&self) -> (u64, SnapshotInput) {
        let inner = self.lock();
        let input = snapshot_input(&inner.state, self.now(), self.settings.tombstone_ttl.0);
        (*self.published.borrow(), input)
    }

    // ---------------------------------------------------------------- apps

    /// Creates an app.
    pub fn create_app(&self, actor: &str, name: &str) -> Result<(), ControlError> {
        check_app_name(name).map_err(|e| refuse(ErrorKind::InvalidArgument, e))?;
        let mut inner = self.lock();
        if inner.state.apps.contains_key(name) {
            return Err(refuse(
                ErrorKind::AlreadyExists,
                format!("app {name} already exists"),
            ));
        }
        let app = App {
            name: name.to_string(),
            created_at_ms: self.now(),
            active_version: None,
        };
        let audit = self.audit(actor, "app.create", name, String::new());
        self.commit(&mut inner, vec![Mutation::PutApp(app)], audit)
    }

    /// Deletes an app with its routes, versions and tombstones.
    pub fn delete_app(&self, actor: &str, name: &str) -> Result<(), ControlError> {
        let mut inner = self.lock();
        if !inner.state.apps.contains_key(name) {
            return Err(not_found_app(name));
        }
        let state = &inner.state;
        let mut mutations: Vec<Mutation> = state
            .routes
            .values()
            .filter(|r| r.app == name)
            .map(|r| Mutation::DeleteRoute(r.key()))
            .collect();
        mutations.extend(
            state
                .versions
                .values()
                .filter(|v| v.app == name)
                .map(|v| Mutation::DeleteVersion(v.id.clone())),
        );
        mutations.extend(
            state
                .tombstones
                .values()
                .filter(|t| t.app == name)
                .map(|t| Mutation::DeleteTombstone {
                    app: t.app.clone(),
                    label: t.label.clone(),
                }),
        );
        let detail = format!("{} routes and versions removed with it", mutations.len());
        mutations.push(Mutation::DeleteApp(name.to_string()));
        let audit = self.audit(actor, "app.delete", name, detail);
        self.commit(&mut inner, mutations, audit)
    }

    /// Every app, by name.
    pub fn apps(&self) -> Vec<App> {
        self.lock().state.apps.values().cloned().collect()
    }

    // -------------------------------------------------------------- routes

    /// Adds an exact (`shop.example.com`) or wildcard (`*.example.com`) route.
    pub fn add_route(&self, actor: &str, host: &str, app: &str) -> Result<Route, ControlError> {
        let (kind, canonical) =
            parse_route_host(host).map_err(|e| refuse(ErrorKind::InvalidArgument, e))?;
        self.put_route(
            actor,
            Route {
                kind,
                host: canonical,
                app: app.to_string(),
            },
        )
    }

    /// Makes `app` the default route (replacing none: an existing default route of
    /// another app is a conflict).
    pub fn set_default_route(&self, actor: &str, app: &str) -> Result<Route, ControlError> {
        self.put_route(
            actor,
            Route {
                kind: RouteKind::Default,
                host: String::new(),
                app: app.to_string(),
            },
        )
    }

    fn put_route(&self, actor: &str, route: Route) -> Result<Route, ControlError> {
        let mut inner = self.lock();
        if !inner.state.apps.contains_key(&route.app) {
            return Err(not_found_app(&route.app));
        }
        let key = route.key();
        if let Some(existing) = inner.state.routes.get(&key) {
            return Err(refuse(
                ErrorKind::AlreadyExists,
                format!(
                    "route {key} already belongs to app {}; remove it first",
                    existing.app
                ),
            ));
        }
        if route.kind == RouteKind::Exact {
            for version in inner.state.versions_of(&route.app) {
                if let Some(label) = &version.label {
                    check_preview_host(label, &route.host)?;
                }
            }
        }
        let audit = self.audit(actor, "route.add", &key, format!("app {}", route.app));
        self.commit(&mut inner, vec![Mutation::PutRoute(route.clone())], audit)?;
        Ok(route)
    }

    /// Removes the route written `host` (`shop.example.com`, `*.example.com`, or
    /// `(default)`).
    pub fn remove_route(&self, actor: &str, host: &str) -> Result<(), ControlError> {
        let mut inner = self.lock();
        let key = if host == DEFAULT_ROUTE_KEY {
            DEFAULT_ROUTE_KEY.to_string()
        } else {
            match parse_route_host(host) {
                Ok((kind, canonical)) => Route {
                    kind,
                    host: canonical,
                    app: String::new(),
                }
                .key(),
                // A route the rules of an older ingress let in (an IP address) can
                // still be removed, by its key as `route list` shows it.
                Err(_) if inner.state.routes.contains_key(host) => host.to_string(),
                Err(e) => return Err(refuse(ErrorKind::InvalidArgument, e)),
            }
        };
        let Some(route) = inner.state.routes.get(&key) else {
            return Err(refuse(
                ErrorKind::NotFound,
                format!("there is no route {key}"),
            ));
        };
        let audit = self.audit(actor, "route.remove", &key, format!("app {}", route.app));
        self.commit(&mut inner, vec![Mutation::DeleteRoute(key)], audit)
    }

    /// Every route, by key.
    pub fn routes(&self) -> Vec<Route> {
        self.lock().state.routes.values().cloned().collect()
    }

    // ------------------------------------------------------------- deploys

    /// Deploys a version (SPEC §6). Validates everything first; the deploy, a
    /// replaced label and an eviction are committed together or not at all.
    pub fn deploy(
        &self,
        actor: &str,
        request: &DeployRequest,
    ) -> Result<DeployOutcome, ControlError> {
        let now = self.now();
        let ephemeral = match &request.ephemeral {
            Some((label, ttl)) => Some(self.check_ephemeral(label, ttl.as_deref())?),
            None => None,
        };
        if let Some(branch) = &request.branch {
            check_branch(branch)?;
        }
        let mut inner = self.lock();
        let state = &inner.state;
        let Some(app) = state.apps.get(&request.app) else {
            return Err(not_found_app(&request.app));
        };
        let source = match &request.source {
            DeploySource::Upstreams(addrs) => {
                check_upstreams("--upstream", addrs)?;
                None
            }
            DeploySource::Command { command, ready } => {
                check_command(command, ready)?;
                None
            }
            DeploySource::Version(id) => match state.versions.get(id) {
                Some(version) if version.app == request.app => Some(version.clone()),
                _ => {
                    return Err(refuse(
                        ErrorKind::NotFound,
                        format!("app {} has no version {id}", request.app),
                    ))
                }
            },
        };

        let mut mutations = Vec::new();
        let mut replaced = None;
        let mut evicted = Vec::new();
        let version = match (ephemeral, &source) {
            // Activate an existing version again (a rollback).
            (None, Some(existing)) => {
                if request.env.is_some() || request.branch.is_some() {
                    return Err(refuse(
                        ErrorKind::InvalidArgument,
                        "--env and --branch describe a new version; they cannot change an existing one (activated with --version)",
                    ));
                }
                if existing.label.is_some() {
                    return Err(refuse(
                        ErrorKind::FailedPrecondition,
                        format!(
                            "version {} is ephemeral and never becomes active; deploy it with --ephemeral, or deploy its upstreams",
                            existing.id
                        ),
                    ));
                }
                let mut activated = existing.clone();
                if activated.desired == DesiredState::Stopped {
                    activated.desired = DesiredState::Running;
                    mutations.push(Mutation::PutVersion(activated.clone()));
                }
                activated
            }
            (ephemeral, _) => {
                let spec = match (&request.source, &source) {
                    (DeploySource::Upstreams(addrs), _) => RuntimeSpec::Static {
                        upstreams: addrs.clone(),
                    },
                    (DeploySource::Command { command, ready }, _) => RuntimeSpec::Process {
                        command: command.clone(),
                        ready: ready.clone(),
                    },
                    (_, Some(existing)) => existing.spec.clone(),
                    (DeploySource::Version(_), None) => {
                        return Err(refuse(ErrorKind::Internal, "deploy source vanished"))
                    }
                };
                let (label, expires_at_ms) = match &ephemeral {
                    Some((label, ttl)) => {
                        (Some(label.clone()), Some(now.saturating_add(ttl_ms(*ttl))))
                    }
                    None => (None, None),
                };
                let env = request.env.unwrap_or(match (&label, &source) {
                    (None, _) => Environment::Production,
                    (Some(_), Some(existing)) => existing.env,
                    (Some(_), None) => Environment::Preview,
                });
                let branch = request
                    .branch
                    .clone()
                    .or_else(|| source.as_ref().and_then(|s| s.branch.clone()));
                let id = new_version_id(state);
                Version {
                    // A clone shares its source's pool; a new version has its own.
                    pool: source
                        .as_ref()
                        .map_or_else(|| id.clone(), |s| s.pool.clone()),
                    // Production starts at once; a preview sleeps until its first
                    // request (SPEC §4).
                    desired: if label.is_none() {
                        DesiredState::Running
                    } else {
                        DesiredState::Stopped
                    },
                    id,
                    app: request.app.clone(),
                    spec,
                    env,
                    branch,
                    label,
                    expires_at_ms,
                    created_at_ms: now,
                    cloned_from: source.as_ref().map(|s| s.id.clone()),
                }
            }
        };

        if let Some(label) = &version.label {
            for host in state.exact_hosts(&request.app) {
                check_preview_host(label, host)?;
            }
            // Replace on the same label (live or expired but not yet collected).
            if let Some(old) = state
                .versions_of(&request.app)
                .find(|v| v.label.as_deref() == Some(label))
            {
                if version.cloned_from.as_deref() == Some(old.id.as_str()) {
                    return Err(refuse(
                        ErrorKind::FailedPrecondition,
                        format!(
                            "version {} already holds label {label}; cloning it under its own label would delete it. Choose another label",
                            old.id
                        ),
                    ));
                }
                replaced = Some(old.id.clone());
                mutations.push(Mutation::DeleteVersion(old.id.clone()));
            } else {
                // Make room for one more: normally one eviction, more if the limit
                // was lowered since the labels were deployed.
                let mut live: Vec<&Version> = state.live_previews(&request.app, now).collect();
                live.sort_by_key(|v| (v.expires_at_ms, v.created_at_ms));
                let excess = (live.len() + 1).saturating_sub(self.settings.max_per_app);
                for nearest in live.into_iter().take(excess) {
                    evicted.push(nearest.id.clone());
                    mutations.push(Mutation::DeleteVersion(nearest.id.clone()));
                }
            }
            if state
                .tombstones
                .contains_key(&(request.app.clone(), label.clone()))
            {
                mutations.push(Mutation::DeleteTombstone {
                    app: request.app.clone(),
                    label: label.clone(),
                });
            }
            mutations.push(Mutation::PutVersion(version.clone()));
        } else {
            if source.is_none() {
                mutations.push(Mutation::PutVersion(version.clone()));
            }
            mutations.push(Mutation::PutApp(App {
                active_version: Some(version.id.clone()),
                ..app.clone()
            }));
            // An activated version must not be stopped by a pending change.
            if state.schedules.contains_key(&version.id) {
                mutations.push(Mutation::DeleteSchedule(version.id.clone()));
            }
            // The version it replaces stops after `supersede.grace` (its in-flight
            // requests finish, and a quick rollback finds it warm), unless a change
            // is already pending for it.
            if let Some(previous) = app
                .active_version
                .as_ref()
                .filter(|id| **id != version.id)
                .and_then(|id| state.versions.get(id))
                .filter(|v| {
                    v.desired == DesiredState::Running && !state.schedules.contains_key(&v.id)
                })
            {
                mutations.extend(self.system_stop(
                    previous,
                    now.saturating_add(ttl_ms(self.lifecycle.supersede_grace)),
                    ChangeReason::Superseded,
                    format!("{} is now active", version.id),
                ));
            }
        }

        let detail = deploy_detail(&version, replaced.as_deref(), &evicted);
        let target = format!("{}/{}", version.app, version.id);
        let audit = self.audit(actor, "deploy", &target, detail);
        self.commit(&mut inner, mutations, audit)?;
        let view = self.view(&inner.state, &version, self.now());
        Ok(DeployOutcome {
            version: view,
            replaced,
            evicted,
        })
    }

    fn check_ephemeral(
        &self,
        label: &str,
        ttl: Option<&str>,
    ) -> Result<(String, Duration), ControlError> {
        let label = normalise_label(label).map_err(|e| refuse(ErrorKind::InvalidArgument, e))?;
        let min = self.settings.min_ttl.0;
        let max = self.settings.max_ttl.0;
        let allowed = format!(
            "allowed {} to {} (ephemeral.min_ttl to ephemeral.max_ttl)",
            format_duration(min),
            format_duration(max)
        );
        let ttl = match ttl {
            None => self.settings.default_ttl.0,
            Some(text) => parse_duration(text).map_err(|e| {
                refuse(ErrorKind::InvalidArgument, format!("--ttl: {e}; {allowed}"))
            })?,
        };
        if ttl.is_zero() {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                format!("--ttl must be longer than 0s; {allowed}"),
            ));
        }
        // A preview shorter-lived than this would expire before anyone could use it
        // (a `1ms` preview is expired when the deploy is acknowledged).
        if ttl < min {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                format!(
                    "--ttl {} is shorter than the minimum {}; {allowed}",
                    format_duration(ttl),
                    format_duration(min)
                ),
            ));
        }
        if ttl > max {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                format!(
                    "--ttl {} is longer than the maximum {}; {allowed}",
                    format_duration(ttl),
                    format_duration(max)
                ),
            ));
        }
        Ok((label, ttl))
    }

    /// Deletes a version of an app. The active version cannot be deleted.
    pub fn delete_version(&self, actor: &str, app: &str, id: &str) -> Result<(), ControlError> {
        let mut inner = self.lock();
        let state = &inner.state;
        let Some(application) = state.apps.get(app) else {
            return Err(not_found_app(app));
        };
        match state.versions.get(id) {
            Some(version) if version.app == app => {}
            _ => {
                return Err(refuse(
                    ErrorKind::NotFound,
                    format!("app {app} has no version {id}"),
                ))
            }
        }
        if application.active_version.as_deref() == Some(id) {
            return Err(refuse(
                ErrorKind::FailedPrecondition,
                format!(
                    "version {id} is the active version of app {app}; deploy another version first"
                ),
            ));
        }
        let audit = self.audit(
            actor,
            "version.delete",
            &format!("{app}/{id}"),
            String::new(),
        );
        self.commit(
            &mut inner,
            vec![Mutation::DeleteVersion(id.to_string())],
            audit,
        )
    }

    /// The versions of `app`, newest first; with `ephemeral_only`, only those with a
    /// label.
    pub fn versions(
        &self,
        app: &str,
        ephemeral_only: bool,
    ) -> Result<Vec<VersionView>, ControlError> {
        let inner = self.lock();
        if !inner.state.apps.contains_key(app) {
            return Err(not_found_app(app));
        }
        let now = self.now();
        let mut views: Vec<VersionView> = inner
            .state
            .versions
            .values()
            .filter(|v| v.app == app && (!ephemeral_only || v.label.is_some()))
            .map(|v| self.view(&inner.state, v, now))
            .collect();
        views.sort_by(|a, b| b.created_at_ms.cmp(&a.created_at_ms).then(b.id.cmp(&a.id)));
        Ok(views)
    }

    /// The latest `limit` audit entries, newest first.
    pub fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, ControlError> {
        self.lock()
            .store
            .audit_log(limit)
            .map_err(|e| refuse(ErrorKind::Internal, e.to_string()))
    }

    // -------------------------------------------------------- certificates

    /// Commits certificate `mutations` with their audit entry, atomically and
    /// durably; nothing changes on error. Routing is untouched, so nothing is
    /// published here: the certificate manager publishes after this returns.
    pub(crate) fn commit_certificates(
        &self,
        mutations: Vec<Mutation>,
        audit: AuditEntry,
    ) -> Result<(), ControlError> {
        let mut inner = self.lock();
        self.commit(&mut inner, mutations, audit)
    }

    /// An audit entry by `actor`, stamped now.
    pub(crate) fn audit_entry(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        detail: String,
    ) -> AuditEntry {
        self.audit(actor, action, target, detail)
    }

    /// The certificates added through the control API, by name.
    pub(crate) fn stored_certificates(&self) -> Vec<crate::model::CertRecord> {
        self.lock().state.certificates.values().cloned().collect()
    }

    /// The plane's clock, Unix milliseconds.
    pub(crate) fn now_ms(&self) -> u64 {
        self.now()
    }

    // ------------------------------------------------------------------ GC

    /// One TTL sweep: every expired version is released from its runtime, then
    /// deleted, leaving a tombstone so that its label answers 410 for
    /// `ephemeral.tombstone_ttl`; tombstones older than that are pruned. If the
    /// store refuses, nothing is deleted and the next sweep retries.
    pub fn collect_garbage(&self) -> Result<GcReport, ControlError> {
        let now = self.now();
        let tombstone_ttl = ttl_ms(self.settings.tombstone_ttl.0);
        let mut inner = self.lock();
        let expired: Vec<Version> = inner
            .state
            .versions
            .values()
            .filter(|v| v.is_expired(now))
            .cloned()
            .collect();
        let stale: Vec<Tombstone> = inner
            .state
            .tombstones
            .values()
            .filter(|t| t.expired_at_ms.saturating_add(tombstone_ttl) <= now)
            .cloned()
            .collect();
        if expired.is_empty() && stale.is_empty() {
            return Ok(GcReport::default());
        }
        let mut mutations = Vec::new();
        for version in &expired {
            // The commit releases the version's pool reference (a shared pool stops
            // only with its last version) before the record is gone from memory; if
            // the store refuses, nothing is released and the next sweep retries.
            mutations.push(Mutation::DeleteVersion(version.id.clone()));
            if let (Some(label), Some(expired_at_ms)) = (&version.label, version.expires_at_ms) {
                mutations.push(Mutation::PutTombstone(Tombstone {
                    app: version.app.clone(),
                    label: label.clone(),
                    expired_at_ms,
                }));
            }
        }
        for tombstone in &stale {
            mutations.push(Mutation::DeleteTombstone {
                app: tombstone.app.clone(),
                label: tombstone.label.clone(),
            });
        }
        let deleted: Vec<String> = expired
            .iter()
            .map(|v| format!("{}/{}", v.app, v.id))
            .collect();
        let audit = self.audit(
            SYSTEM_ACTOR,
            "gc",
            &deleted.join(","),
            format!(
                "{} expired versions stopped and deleted (reason ttl), {} tombstones pruned",
                deleted.len(),
                stale.len()
            ),
        );
        self.commit(&mut inner, mutations, audit)?;
        self.metrics.gc_deletions.inc_by(deleted.len() as u64);
        Ok(GcReport {
            deleted,
            tombstones_pruned: stale.len(),
        })
    }
}

/// Most addresses one static version may have. A version is a handful of
/// instances; tens of thousands of addresses are a mistake (a generated list gone
/// wrong), and every lease carries the whole list.
pub const MAX_UPSTREAMS: usize = 64;

/// Refuses a list of static upstreams that is empty, longer than
/// [`MAX_UPSTREAMS`], or holds an address no connection can be made to. `field`
/// names the input (`--upstream`, `upstreams`). The one check of every place
/// addresses enter: deploys and imports.
fn check_upstreams(field: &str, addrs: &[SocketAddr]) -> Result<(), ControlError> {
    if addrs.is_empty() {
        return Err(refuse(
            ErrorKind::InvalidArgument,
            format!("{field} needs at least one address (IP:PORT)"),
        ));
    }
    if addrs.len() > MAX_UPSTREAMS {
        return Err(refuse(
            ErrorKind::InvalidArgument,
            format!(
                "{field} has {} addresses; a version has at most {MAX_UPSTREAMS}",
                addrs.len()
            ),
        ));
    }
    for addr in addrs {
        if let Some(problem) = unconnectable(addr) {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                format!(
                    "{field} {addr} {problem}; an upstream is a unicast IP address with a port from 1 to 65535, for example 127.0.0.1:3000"
                ),
            ));
        }
    }
    Ok(())
}

/// Why no TCP connection can be made to `addr`, if so: port 0, the unspecified
/// address (`0.0.0.0`, `::`), the IPv4 broadcast address or a multicast address
/// (IPv4-mapped IPv6 addresses count as their IPv4 address).
fn unconnectable(addr: &SocketAddr) -> Option<&'static str> {
    let ip = addr.ip().to_canonical();
    if addr.port() == 0 {
        Some("has port 0, which no connection can be made to")
    } else if ip.is_unspecified() {
        Some("is the unspecified address (0.0.0.0 or ::), which names no host")
    } else if ip == std::net::IpAddr::V4(std::net::Ipv4Addr::BROADCAST) {
        Some("is the broadcast address")
    } else if ip.is_multicast() {
        Some("is a multicast address (224.0.0.0/4 or ff00::/8)")
    } else {
        None
    }
}

/// Refuses a branch name that is blank or longer than 255 characters.
fn check_branch(branch: &str) -> Result<(), ControlError> {
    if branch.trim().is_empty() || branch.len() > 255 {
        return Err(refuse(
            ErrorKind::InvalidArgument,
            "branch must be 1 to 255 characters",
        ));
    }
    Ok(())
}

/// Refuses a preview host `label.host` longer than a host may be: the proxy
/// would answer it 400.
fn check_preview_host(label: &str, host: &str) -> Result<(), ControlError> {
    let length = label.len() + 1 + host.len();
    if length > ingress_proxy::host::MAX_HOST_LEN {
        return Err(refuse(
            ErrorKind::InvalidArgument,
            format!(
                "preview host {label}.{host} would be {length} characters; a host is at most {}. Use a shorter label",
                ingress_proxy::host::MAX_HOST_LEN
            ),
        ));
    }
    Ok(())
}

fn not_found_app(name: &str) -> ControlError {
    refuse(
        ErrorKind::NotFound,
        format!("app {name} does not exist; create it with `ingressctl app create {name}`"),
    )
}

fn ttl_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// True when `mutation` changes what the proxy routes, given the state before it.
fn changes_routing(state: &State, mutation: &Mutation) -> bool {
    match mutation {
        Mutation::Audit(_)
        | Mutation::PutSchedule(_)
        | Mutation::DeleteSchedule(_)
        | Mutation::PutCertificate(_)
        | Mutation::DeleteCertificate(_) => false,
        Mutation::PutVersion(version) => !state.versions.get(&version.id).is_some_and(|old| {
            old.label == version.label
                && old.expires_at_ms == version.expires_at_ms
                && old.app == version.app
        }),
        _ => true,
    }
}

/// Refuses a command that cannot be run, or a readiness path that is not a path.
fn check_command(command: &str, ready: &ReadyCheck) -> Result<(), ControlError> {
    if command.trim().is_empty() || command.len() > 4096 || command.contains('\0') {
        return Err(refuse(
            ErrorKind::InvalidArgument,
            "--command must be a non-empty shell command of at most 4096 bytes, without NUL",
        ));
    }
    if let ReadyCheck::Http { path } = ready {
        let valid = path.starts_with('/')
            && path.len() <= 1024
            && path.bytes().all(|b| b.is_ascii_graphic());
        if !valid {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                format!("--ready-path {path:?} must start with '/' and be at most 1024 printable ASCII characters without spaces"),
            ));
        }
    }
    Ok(())
}

/// A fresh version id: `v` and 12 random hex digits, unused in `state`.
fn new_version_id(state: &State) -> String {
    loop {
        let random = getrandom::u64().unwrap_or_else(|_| {
            // No OS randomness: fall back on the clock, still checked for uniqueness.
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64)
        });
        let id = format!("v{:012x}", random & 0xffff_ffff_ffff);
        if !state.versions.contains_key(&id) {
            return id;
        }
    }
}

fn deploy_detail(version: &Version, replaced: Option<&str>, evicted: &[String]) -> String {
    let mut detail = match (&version.label, version.expires_at_ms) {
        (Some(label), Some(expiry)) => format!(
            "ephemeral label {label} until {}",
            ingress_proxy::time::format_unix_millis(expiry)
        ),
        _ => "active".to_string(),
    };
    if let Some(source) = &version.cloned_from {
        detail.push_str(&format!(", cloned from {source}"));
    }
    if let Some(old) = replaced {
        detail.push_str(&format!(", replaced {old}"));
    }
    if !evicted.is_empty() {
        detail.push_str(&format!(
            ", evicted {} (nearest to expiry)",
            evicted.join(", ")
        ));
    }
    detail
}

/// Handles pool events on a thread of its own (each may commit to the store)
/// until the pools or the plane are gone.
fn spawn_event_handler(
    plane: Weak<ControlPlane>,
    mut events: tokio::sync::mpsc::UnboundedReceiver<PoolEvent>,
) -> Result<(), ControlError> {
    std::thread::Builder::new()
        .name("ingress-lifecycle".into())
        .spawn(move || {
            while let Some(event) = events.blocking_recv() {
                let Some(plane) = plane.upgrade() else {
                    return;
                };
                if let Err(e) = plane.handle_event(&event) {
                    log::warn!("lifecycle: {event:?}: {e}");
                }
            }
        })
        .map(|_| ())
        .map_err(|e| {
            refuse(
                ErrorKind::Internal,
                format!("cannot start the lifecycle thread: {e}"),
            )
        })
}

/// The proxy's view of `state` at `now_ms`: active versions, every labelled
/// version (the proxy itself refuses expired ones), and tombstones younger than
/// `tombstone_ttl`.
pub fn snapshot_input(state: &State, now_ms: u64, tombstone_ttl: Duration) -> SnapshotInput {
    SnapshotInput {
        apps: app_specs(state, None, now_ms, tombstone_ttl),
        routes: state.routes.values().map(route_spec).collect(),
    }
}

/// The snapshot entries of the apps named in `only` (every app when `None`):
/// for every app in one pass over versions and tombstones, for a few through the
/// index of versions by app.
fn app_specs(
    state: &State,
    only: Option<&std::collections::BTreeSet<String>>,
    now_ms: u64,
    tombstone_ttl: Duration,
) -> Vec<AppSpec> {
    let tombstone_ttl = ttl_ms(tombstone_ttl);
    let spec = |app: &App| AppSpec {
        name: app.name.clone(),
        active: app.active_version.as_ref().map(|id| VersionRef {
            id: id.clone(),
            state_epoch: 0,
        }),
        previews: Vec::new(),
        expired_labels: Vec::new(),
    };
    let preview = |version: &Version| match (&version.label, version.expires_at_ms) {
        (Some(label), Some(expires_at_ms)) => Some(PreviewSpec {
            label: label.clone(),
            version: VersionRef {
                id: version.id.clone(),
                state_epoch: 0,
            },
            expires_at_ms,
        }),
        _ => None,
    };
    let recent = |tombstone: &Tombstone| {
        (tombstone.expired_at_ms.saturating_add(tombstone_ttl) > now_ms).then(|| ExpiredLabel {
            label: tombstone.label.clone(),
            expired_at_ms: tombstone.expired_at_ms,
        })
    };
    if let Some(names) = only {
        return names
            .iter()
            .filter_map(|name| state.apps.get(name))
            .map(|app| {
                let mut entry = spec(app);
                entry.previews = state.versions_of(&app.name).filter_map(preview).collect();
                entry.expired_labels = state
                    .tombstones
                    .range((app.name.clone(), String::new())..)
                    .take_while(|((owner, _), _)| *owner == app.name)
                    .filter_map(|(_, tombstone)| recent(tombstone))
                    .collect();
                entry
            })
            .collect();
    }
    let mut apps: std::collections::BTreeMap<&str, AppSpec> = state
        .apps
        .values()
        .map(|app| (app.name.as_str(), spec(app)))
        .collect();
    for version in state.versions.values() {
        if let (Some(entry), Some(app)) = (preview(version), apps.get_mut(version.app.as_str())) {
            app.previews.push(entry);
        }
    }
    for tombstone in state.tombstones.values() {
        if let (Some(entry), Some(app)) = (recent(tombstone), apps.get_mut(tombstone.app.as_str()))
        {
            app.expired_labels.push(entry);
        }
    }
    apps.into_values().collect()
}

fn route_spec(route: &Route) -> RouteSpec {
    RouteSpec {
        host: match route.kind {
            RouteKind::Exact => RouteHost::Exact(route.host.clone()),
            RouteKind::Wildcard => RouteHost::Wildcard(route.host.clone()),
            RouteKind::Default => RouteHost::Default,
        },
        app: route.app.clone(),
    }
}

/// What a list of mutations changes in routing, read off the state before they
/// apply: the apps whose snapshot entry must be rebuilt, and the routes removed
/// and added. `None` when routing does not change at all.
struct RoutingChange {
    apps: std::collections::BTreeSet<String>,
    removed_routes: Vec<Route>,
    added_routes: Vec<Route>,
}

impl RoutingChange {
    fn of(state: &State, mutations: &[Mutation]) -> Option<RoutingChange> {
        let mut change = RoutingChange {
            apps: std::collections::BTreeSet::new(),
            removed_routes: Vec::new(),
            added_routes: Vec::new(),
        };
        for mutation in mutations {
            if !changes_routing(state, mutation) {
                continue;
            }
            match mutation {
                Mutation::PutApp(app) => {
                    change.apps.insert(app.name.clone());
                }
                Mutation::DeleteApp(name) => {
                    change.apps.insert(name.clone());
                }
                Mutation::PutVersion(version) => {
                    change.apps.insert(version.app.clone());
                }
                Mutation::DeleteVersion(id) => {
                    change
                        .apps
                        .extend(state.versions.get(id).map(|v| v.app.clone()));
                }
                Mutation::PutTombstone(tombstone) => {
                    change.apps.insert(tombstone.app.clone());
                }
                Mutation::DeleteTombstone { app, .. } => {
                    change.apps.insert(app.clone());
                }
                Mutation::PutRoute(route) => {
                    change
                        .removed_routes
                        .extend(state.routes.get(&route.key()).cloned());
                    change.added_routes.push(route.clone());
                }
                Mutation::DeleteRoute(key) => {
                    change.removed_routes.extend(state.routes.get(key).cloned());
                }
                Mutation::PutSchedule(_)
                | Mutation::DeleteSchedule(_)
                | Mutation::PutCertificate(_)
                | Mutation::DeleteCertificate(_)
                | Mutation::Audit(_) => {}
            }
        }
        let empty = change.apps.is_empty()
            && change.removed_routes.is_empty()
            && change.added_routes.is_empty();
        (!empty).then_some(change)
    }
}

#[path = "lifecycle.rs"]
mod lifecycle;

#[path = "import.rs"]
mod import;
pub use import::{ImportApp, ImportPreview, ImportReport, MAX_IMPORT_APPS};

#[cfg(test)]
#[path = "control_plane_tests.rs"]
mod tests;

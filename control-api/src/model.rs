//! The control plane's records (SPEC §1, §6): apps, routes, versions, tombstones and
//! audit entries, and the whole state they make up.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A named service. Its name is a DNS label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct App {
    pub name: String,
    pub created_at_ms: u64,
    /// The version served on the app's routes.
    pub active_version: Option<String>,
}

/// Which hosts a route claims.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// One host.
    Exact,
    /// Every host one label below the host.
    Wildcard,
    /// Every host nothing else matches.
    Default,
}

impl RouteKind {
    /// The stored name.
    pub fn as_str(&self) -> &'static str {
        match self {
            RouteKind::Exact => "exact",
            RouteKind::Wildcard => "wildcard",
            RouteKind::Default => "default",
        }
    }

    /// Parses the stored name.
    pub fn parse(text: &str) -> Option<RouteKind> {
        match text {
            "exact" => Some(RouteKind::Exact),
            "wildcard" => Some(RouteKind::Wildcard),
            "default" => Some(RouteKind::Default),
            _ => None,
        }
    }
}

/// A host that belongs to an app. `host` is the canonical host (`shop.example.com`),
/// the wildcard's suffix (`example.com` for `*.example.com`), or empty for the
/// default route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub kind: RouteKind,
    pub host: String,
    pub app: String,
}

impl Route {
    /// The key a route is stored under: its host as written (`*.example.com`), or
    /// `(default)`. Two routes with one key conflict.
    pub fn key(&self) -> String {
        match self.kind {
            RouteKind::Exact => self.host.clone(),
            RouteKind::Wildcard => format!("*.{}", self.host),
            RouteKind::Default => DEFAULT_ROUTE_KEY.to_string(),
        }
    }
}

/// The key of the default route.
pub const DEFAULT_ROUTE_KEY: &str = "(default)";

/// How a version runs (SPEC §9). Stored as JSON, tagged by `runtime`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "runtime", rename_all = "lowercase")]
pub enum RuntimeSpec {
    /// Fixed upstream addresses, always ready.
    Static { upstreams: Vec<SocketAddr> },
    /// A command run through `sh -c` on this machine with `PORT` set.
    Process {
        command: String,
        /// How readiness is probed.
        ready: ReadyCheck,
    },
}

impl RuntimeSpec {
    /// The runtime's name: `static` or `process`.
    pub fn kind(&self) -> &'static str {
        match self {
            RuntimeSpec::Static { .. } => "static",
            RuntimeSpec::Process { .. } => "process",
        }
    }
}

/// How a process version is known to be ready.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "probe", rename_all = "lowercase")]
pub enum ReadyCheck {
    /// An HTTP GET of `path` answers with a status below 500.
    Http { path: String },
    /// A TCP connection to `PORT` is accepted.
    Tcp,
}

/// Whether a version should run: the two values of SPEC §1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DesiredState {
    Running,
    Stopped,
}

impl DesiredState {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Stopped => "stopped",
        }
    }

    /// Parses `running` or `stopped`.
    pub fn parse(text: &str) -> Option<DesiredState> {
        match text {
            "running" => Some(DesiredState::Running),
            "stopped" => Some(DesiredState::Stopped),
            _ => None,
        }
    }
}

/// Why a version's desired state changes (SPEC §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeReason {
    /// No activity for `idle.timeout`.
    Idle,
    /// A newer preview of the same branch became ready.
    Superseded,
    /// An admin asked.
    Manual,
    /// The version expired.
    Ttl,
    /// A request arrived for it.
    Request,
}

impl ChangeReason {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            ChangeReason::Idle => "idle",
            ChangeReason::Superseded => "superseded",
            ChangeReason::Manual => "manual",
            ChangeReason::Ttl => "ttl",
            ChangeReason::Request => "request",
        }
    }

    /// Parses a stored name.
    pub fn parse(text: &str) -> Option<ChangeReason> {
        match text {
            "idle" => Some(ChangeReason::Idle),
            "superseded" => Some(ChangeReason::Superseded),
            "manual" => Some(ChangeReason::Manual),
            "ttl" => Some(ChangeReason::Ttl),
            "request" => Some(ChangeReason::Request),
            _ => None,
        }
    }

    /// Whether a change for this reason replaces a pending one. Explicit intent
    /// (an admin, a request) does; the automatic loops (idle, supersede) never do,
    /// so they cannot undo a wake that is already scheduled.
    pub fn overwrites(self) -> bool {
        matches!(
            self,
            ChangeReason::Manual | ChangeReason::Request | ChangeReason::Ttl
        )
    }
}

/// A stored, pending change of one version's desired state: at most one per
/// version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub version: String,
    pub desired: DesiredState,
    pub due_at_ms: u64,
    pub reason: ChangeReason,
    /// Who asked: a token name, or `system`.
    pub actor: String,
    pub created_at_ms: u64,
}

/// `production` or `preview`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Environment {
    Production,
    Preview,
}

impl Environment {
    /// The stored and displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            Environment::Production => "production",
            Environment::Preview => "preview",
        }
    }

    /// Parses `production` or `preview`.
    pub fn parse(text: &str) -> Option<Environment> {
        match text {
            "production" => Some(Environment::Production),
            "preview" => Some(Environment::Preview),
            _ => None,
        }
    }
}

/// An immutable description of how to run an app, plus its metadata. An ephemeral
/// version has a label and an expiry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub id: String,
    pub app: String,
    pub spec: RuntimeSpec,
    pub env: Environment,
    pub branch: Option<String>,
    pub label: Option<String>,
    pub expires_at_ms: Option<u64>,
    pub created_at_ms: u64,
    /// The version this one was cloned from, for ephemeral deploys of an existing
    /// version.
    pub cloned_from: Option<String>,
    /// Whether it should run.
    pub desired: DesiredState,
    /// The id of the pool its instances belong to: its own id, or, for a clone,
    /// its source's pool (so clones share running instances).
    pub pool: String,
}

impl Version {
    /// True for an ephemeral version whose expiry has passed at `now_ms`.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|expiry| now_ms >= expiry)
    }
}

/// What a version is to its app, as `ingressctl versions` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionStatus {
    /// The app's active version.
    Active,
    /// A live preview.
    Ephemeral,
    /// A non-ephemeral version that is no longer active.
    Replaced,
    /// A version no request reaches that is stopped (kept for rollback).
    Stopped,
    /// A preview past its expiry, not yet collected.
    Expired,
}

impl VersionStatus {
    /// The displayed name.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionStatus::Active => "active",
            VersionStatus::Ephemeral => "ephemeral",
            VersionStatus::Replaced => "replaced",
            VersionStatus::Stopped => "stopped",
            VersionStatus::Expired => "expired",
        }
    }
}

impl fmt::Display for VersionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A label whose version expired: answered 410 Gone until it is pruned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tombstone {
    pub app: String,
    pub label: String,
    pub expired_at_ms: u64,
}

/// One audited mutation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub at_ms: u64,
    /// The token name, or `system` for the control loops.
    pub actor: String,
    pub action: String,
    pub target: String,
    pub detail: String,
}

/// A certificate added through the control API (`ingressctl cert add`), as
/// stored: the PEM chain and key the admin gave, and what listings show of it.
/// Its `Debug` leaves the key out, so a logged state or mutation never carries it.
#[derive(Clone, PartialEq, Eq)]
pub struct CertRecord {
    /// Its handle (`cert show NAME`, `tls.default_cert`).
    pub name: String,
    /// The PEM chain, leaf first, as given.
    pub chain_pem: String,
    /// The PEM private key, as given. Never shown, logged or audited.
    pub key_pem: String,
    /// The leaf's DNS names, lower case.
    pub names: Vec<String>,
    /// Validity, Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    /// SHA-256 of the leaf's DER, lower-case hex.
    pub fingerprint: String,
    pub issuer: String,
    pub created_at_ms: u64,
}

impl fmt::Debug for CertRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertRecord")
            .field("name", &self.name)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Everything the control plane knows, as loaded from the store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub apps: BTreeMap<String, App>,
    /// By [`Route::key`].
    pub routes: BTreeMap<String, Route>,
    pub versions: BTreeMap<String, Version>,
    /// By (app, label).
    pub tombstones: BTreeMap<(String, String), Tombstone>,
    /// Pending desired-state changes, by version id.
    pub schedules: BTreeMap<String, Schedule>,
    /// Certificates added through the control API, by name.
    pub certificates: BTreeMap<String, CertRecord>,
    /// Version ids by app, derived from `versions`: kept by [`State::apply`],
    /// rebuilt by [`State::reindex`] after `versions` is filled directly. Lets a
    /// change to one app cost what that app has, not what every app has.
    versions_by_app: BTreeMap<String, BTreeSet<String>>,
    /// Route keys by app, derived from `routes` like `versions_by_app`.
    routes_by_app: BTreeMap<String, BTreeSet<String>>,
}

/// One change to the state. A list of them is committed atomically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    PutApp(App),
    DeleteApp(String),
    PutRoute(Route),
    /// By [`Route::key`].
    DeleteRoute(String),
    PutVersion(Version),
    DeleteVersion(String),
    PutTombstone(Tombstone),
    DeleteTombstone {
        app: String,
        label: String,
    },
    /// Replaces the version's pending change.
    PutSchedule(Schedule),
    /// By version id.
    DeleteSchedule(String),
    /// Adds or replaces the certificate of that name.
    PutCertificate(CertRecord),
    /// By certificate name.
    DeleteCertificate(String),
    Audit(AuditEntry),
}

/// Removes `id` from the set of `owner` in a derived index.
fn unindex(index: &mut BTreeMap<String, BTreeSet<String>>, owner: &str, id: &str) {
    if let Some(ids) = index.get_mut(owner) {
        ids.remove(id);
        if ids.is_empty() {
            index.remove(owner);
        }
    }
}

impl State {
    /// Applies committed mutations to the in-memory copy.
    pub fn apply(&mut self, mutations: &[Mutation]) {
        for mutation in mutations {
            match mutation {
                Mutation::PutApp(app) => {
                    self.apps.insert(app.name.clone(), app.clone());
                }
                Mutation::DeleteApp(name) => {
                    self.apps.remove(name);
                }
                Mutation::PutRoute(route) => {
                    if let Some(old) = self.routes.insert(route.key(), route.clone()) {
                        unindex(&mut self.routes_by_app, &old.app, &old.key());
                    }
                    self.routes_by_app
                        .entry(route.app.clone())
                        .or_default()
                        .insert(route.key());
                }
                Mutation::DeleteRoute(key) => {
                    if let Some(old) = self.routes.remove(key) {
                        unindex(&mut self.routes_by_app, &old.app, key);
                    }
                }
                Mutation::PutVersion(version) => {
                    if let Some(old) = self.versions.get(&version.id) {
                        if old.app != version.app {
                            let (app, id) = (old.app.clone(), old.id.clone());
                            unindex(&mut self.versions_by_app, &app, &id);
                        }
                    }
                    self.versions_by_app
                        .entry(version.app.clone())
                        .or_default()
                        .insert(version.id.clone());
                    self.versions.insert(version.id.clone(), version.clone());
                }
                Mutation::DeleteVersion(id) => {
                    if let Some(old) = self.versions.remove(id) {
                        unindex(&mut self.versions_by_app, &old.app, id);
                    }
                    self.schedules.remove(id);
                }
                Mutation::PutTombstone(tombstone) => {
                    self.tombstones.insert(
                        (tombstone.app.clone(), tombstone.label.clone()),
                        tombstone.clone(),
                    );
                }
                Mutation::DeleteTombstone { app, label } => {
                    self.tombstones.remove(&(app.clone(), label.clone()));
                }
                Mutation::PutSchedule(schedule) => {
                    self.schedules
                        .insert(schedule.version.clone(), schedule.clone());
                }
                Mutation::DeleteSchedule(id) => {
                    self.schedules.remove(id);
                }
                Mutation::PutCertificate(record) => {
                    self.certificates
                        .insert(record.name.clone(), record.clone());
                }
                Mutation::DeleteCertificate(name) => {
                    self.certificates.remove(name);
                }
                Mutation::Audit(_) => {}
            }
        }
    }

    /// Rebuilds the derived index of versions by app from `versions`; for stores,
    /// which fill `versions` directly.
    pub fn reindex(&mut self) {
        self.versions_by_app.clear();
        for version in self.versions.values() {
            self.versions_by_app
                .entry(version.app.clone())
                .or_default()
                .insert(version.id.clone());
        }
        self.routes_by_app.clear();
        for (key, route) in &self.routes {
            self.routes_by_app
                .entry(route.app.clone())
                .or_default()
                .insert(key.clone());
        }
    }

    /// The versions of `app`, by id.
    pub fn versions_of<'s>(&'s self, app: &str) -> impl Iterator<Item = &'s Version> + 's {
        self.versions_by_app
            .get(app)
            .into_iter()
            .flatten()
            .filter_map(|id| self.versions.get(id))
    }

    /// Applies `mutations` and returns the mutations that undo them (apply the
    /// result to get the state back), so that a commit can change the state in
    /// place and still back out when the store refuses.
    pub fn apply_with_undo(&mut self, mutations: &[Mutation]) -> Vec<Mutation> {
        let mut undo = Vec::with_capacity(mutations.len());
        for mutation in mutations {
            match mutation {
                Mutation::PutApp(app) => undo.push(match self.apps.get(&app.name) {
                    Some(old) => Mutation::PutApp(old.clone()),
                    None => Mutation::DeleteApp(app.name.clone()),
                }),
                Mutation::DeleteApp(name) => {
                    undo.extend(self.apps.get(name).cloned().map(Mutation::PutApp));
                }
                Mutation::PutRoute(route) => undo.push(match self.routes.get(&route.key()) {
                    Some(old) => Mutation::PutRoute(old.clone()),
                    None => Mutation::DeleteRoute(route.key()),
                }),
                Mutation::DeleteRoute(key) => {
                    undo.extend(self.routes.get(key).cloned().map(Mutation::PutRoute));
                }
                Mutation::PutVersion(version) => undo.push(match self.versions.get(&version.id) {
                    Some(old) => Mutation::PutVersion(old.clone()),
                    None => Mutation::DeleteVersion(version.id.clone()),
                }),
                Mutation::DeleteVersion(id) => {
                    // Deleting a version also drops its schedule.
                    undo.extend(self.versions.get(id).cloned().map(Mutation::PutVersion));
                    undo.extend(self.schedules.get(id).cloned().map(Mutation::PutSchedule));
                }
                Mutation::PutTombstone(tombstone) => {
                    let key = (tombstone.app.clone(), tombstone.label.clone());
                    undo.push(match self.tombstones.get(&key) {
                        Some(old) => Mutation::PutTombstone(old.clone()),
                        None => Mutation::DeleteTombstone {
                            app: key.0,
                            label: key.1,
                        },
                    });
                }
                Mutation::DeleteTombstone { app, label } => {
                    let key = (app.clone(), label.clone());
                    undo.extend(
                        self.tombstones
                            .get(&key)
                            .cloned()
                            .map(Mutation::PutTombstone),
                    );
                }
                Mutation::PutSchedule(schedule) => {
                    undo.push(match self.schedules.get(&schedule.version) {
                        Some(old) => Mutation::PutSchedule(old.clone()),
                        None => Mutation::DeleteSchedule(schedule.version.clone()),
                    })
                }
                Mutation::DeleteSchedule(id) => {
                    undo.extend(self.schedules.get(id).cloned().map(Mutation::PutSchedule));
                }
                Mutation::PutCertificate(record) => {
                    undo.push(match self.certificates.get(&record.name) {
                        Some(old) => Mutation::PutCertificate(old.clone()),
                        None => Mutation::DeleteCertificate(record.name.clone()),
                    })
                }
                Mutation::DeleteCertificate(name) => {
                    undo.extend(
                        self.certificates
                            .get(name)
                            .cloned()
                            .map(Mutation::PutCertificate),
                    );
                }
                Mutation::Audit(_) => {}
            }
            self.apply(std::slice::from_ref(mutation));
        }
        // A later mutation may touch what an earlier one did: undo newest first.
        undo.reverse();
        undo
    }

    /// The status of `version` at `now_ms`.
    pub fn status(&self, version: &Version, now_ms: u64) -> VersionStatus {
        let active = self
            .apps
            .get(&version.app)
            .and_then(|app| app.active_version.as_deref());
        if active == Some(version.id.as_str()) {
            VersionStatus::Active
        } else if version.label.is_some() {
            if version.is_expired(now_ms) {
                VersionStatus::Expired
            } else {
                VersionStatus::Ephemeral
            }
        } else if version.desired == DesiredState::Stopped {
            VersionStatus::Stopped
        } else {
            VersionStatus::Replaced
        }
    }

    /// True when a request can reach `version` at `now_ms`: it is its app's active
    /// version or holds a live label.
    pub fn is_reachable(&self, version: &Version, now_ms: u64) -> bool {
        matches!(
            self.status(version, now_ms),
            VersionStatus::Active | VersionStatus::Ephemeral
        )
    }

    /// The app's versions that hold a live (unexpired) label at `now_ms`.
    pub fn live_previews<'s>(
        &'s self,
        app: &'s str,
        now_ms: u64,
    ) -> impl Iterator<Item = &'s Version> + 's {
        self.versions_of(app)
            .filter(move |v| v.label.is_some() && !v.is_expired(now_ms))
    }

    /// The exact-route hosts of `app`, sorted.
    pub fn exact_hosts(&self, app: &str) -> Vec<&str> {
        self.routes_by_app
            .get(app)
            .into_iter()
            .flatten()
            .filter_map(|key| self.routes.get(key))
            .filter(|r| r.kind == RouteKind::Exact)
            .map(|r| r.host.as_str())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(id: &str, label: Option<&str>) -> Version {
        Version {
            id: id.into(),
            pool: id.into(),
            app: "shop".into(),
            spec: RuntimeSpec::Static {
                upstreams: vec!["127.0.0.1:3000".parse().unwrap()],
            },
            env: Environment::Preview,
            branch: None,
            label: label.map(str::to_string),
            expires_at_ms: label.map(|_| 10),
            created_at_ms: 1,
            cloned_from: None,
            desired: DesiredState::Stopped,
        }
    }

    fn cert(name: &str, created_at_ms: u64) -> CertRecord {
        CertRecord {
            name: name.into(),
            chain_pem: "-----BEGIN CERTIFICATE-----".into(),
            key_pem: "-----BEGIN PRIVATE KEY----- secret".into(),
            names: vec!["shop.example.com".into()],
            not_before: 0,
            not_after: 10,
            fingerprint: "ab".repeat(32),
            issuer: "CN=test".into(),
            created_at_ms,
        }
    }

    #[test]
    fn a_certificate_record_never_debug_prints_its_key() {
        let text = format!("{:?}", Mutation::PutCertificate(cert("shop", 1)));
        assert!(text.contains("shop.example.com"), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    /// Undo brings back the exact state, for puts over existing values, deletes
    /// of existing and missing values, and two mutations of one key in a batch.
    #[test]
    fn undo_restores_the_state_exactly() {
        let mut state = State::default();
        state.apply(&[
            Mutation::PutApp(App {
                name: "shop".into(),
                created_at_ms: 1,
                active_version: Some("v1".into()),
            }),
            Mutation::PutVersion(version("v1", None)),
            Mutation::PutVersion(version("v2", Some("pr-1"))),
            Mutation::PutSchedule(Schedule {
                version: "v2".into(),
                desired: DesiredState::Stopped,
                reason: ChangeReason::Idle,
                due_at_ms: 5,
                actor: "system".into(),
                created_at_ms: 1,
            }),
            Mutation::PutRoute(Route {
                kind: RouteKind::Exact,
                host: "shop.example.com".into(),
                app: "shop".into(),
            }),
            Mutation::PutCertificate(cert("shop", 1)),
        ]);
        let before = state.clone();
        let undo = state.apply_with_undo(&[
            Mutation::PutVersion(version("v1", Some("pr-9"))),
            Mutation::DeleteVersion("v2".into()),
            Mutation::DeleteVersion("missing".into()),
            Mutation::PutVersion(version("v3", Some("pr-2"))),
            Mutation::PutVersion(version("v3", Some("pr-3"))),
            Mutation::DeleteRoute("shop.example.com".into()),
            Mutation::PutTombstone(Tombstone {
                app: "shop".into(),
                label: "pr-1".into(),
                expired_at_ms: 7,
            }),
            Mutation::DeleteApp("shop".into()),
            Mutation::PutCertificate(cert("shop", 2)),
            Mutation::DeleteCertificate("shop".into()),
            Mutation::PutCertificate(cert("new", 3)),
            Mutation::DeleteCertificate("missing".into()),
        ]);
        assert_ne!(state, before);
        let mut reindexed = state.clone();
        reindexed.reindex();
        assert_eq!(
            reindexed, state,
            "the derived indexes follow every mutation"
        );
        state.apply(&undo);
        assert_eq!(state, before);
    }
}

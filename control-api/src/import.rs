//! Bulk import (`ingressctl import FILE`): many new apps, each with its hosts, an
//! active static version and preview labels, validated as a whole and committed
//! as one store batch with one snapshot publish. Platforms moving onto the
//! ingress, and load tests with 10,000 apps, need this: one deploy at a time
//! would publish a snapshot per preview.
//!
//! All or nothing: the first invalid record refuses the whole import, naming the
//! record and what was wrong, and nothing is written.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::{
    check_branch, check_preview_host, check_upstreams, new_version_id, refuse, ttl_ms,
    ControlError, ControlPlane, ErrorKind,
};
use crate::model::{
    App, DesiredState, Environment, Mutation, Route, RouteKind, RuntimeSpec, Version,
};
use crate::names::{check_app_name, parse_route_host};

/// Most apps one import may create.
pub const MAX_IMPORT_APPS: usize = 1_000_000;

/// One new app of an import.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportApp {
    pub app: String,
    /// Exact (`shop.example.com`) or wildcard (`*.example.com`) hosts.
    pub hosts: Vec<String>,
    /// The active production version's addresses.
    pub upstreams: Vec<SocketAddr>,
    pub previews: Vec<ImportPreview>,
}

/// One preview label of an imported app: a static version that sleeps until its
/// first request, like a preview deploy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportPreview {
    pub label: String,
    pub branch: Option<String>,
    /// The preview's addresses; empty means the app's production addresses.
    pub upstreams: Vec<SocketAddr>,
    /// A duration (`24h`); `None` means `ephemeral.default_ttl`.
    pub ttl: Option<String>,
}

/// What an import created.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportReport {
    pub apps: usize,
    pub routes: usize,
    pub versions: usize,
}

impl ControlPlane {
    /// Creates every app of `apps` with its routes, active version and previews,
    /// in one commit, or nothing at all.
    pub fn import(&self, actor: &str, apps: &[ImportApp]) -> Result<ImportReport, ControlError> {
        if apps.is_empty() {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                "the import has no apps; give one JSON object per line",
            ));
        }
        if apps.len() > MAX_IMPORT_APPS {
            return Err(refuse(
                ErrorKind::InvalidArgument,
                format!(
                    "the import has {} apps; one import creates at most {MAX_IMPORT_APPS}",
                    apps.len()
                ),
            ));
        }
        let now = self.now();
        let mut inner = self.lock();
        let state = &inner.state;
        let mut names = HashSet::with_capacity(apps.len());
        let mut hosts = HashSet::new();
        let mut ids = HashSet::new();
        let mut fresh_id = || loop {
            let id = new_version_id(state);
            if ids.insert(id.clone()) {
                return id;
            }
        };
        let mut mutations = Vec::new();
        let mut report = ImportReport {
            apps: 0,
            routes: 0,
            versions: 0,
        };
        for (index, record) in apps.iter().enumerate() {
            let bad = |message: String| {
                refuse(
                    ErrorKind::InvalidArgument,
                    format!("app #{} ({}): {message}", index + 1, record.app),
                )
            };
            check_app_name(&record.app).map_err(bad)?;
            if state.apps.contains_key(&record.app) || !names.insert(record.app.as_str()) {
                return Err(refuse(
                    ErrorKind::AlreadyExists,
                    format!(
                        "app #{} ({}) already exists; an import only creates new apps",
                        index + 1,
                        record.app
                    ),
                ));
            }
            // The same rules as a deploy, named after the record.
            let in_record = |e: ControlError| {
                refuse(
                    e.kind,
                    format!("app #{} ({}): {}", index + 1, record.app, e.message),
                )
            };
            check_upstreams("upstreams", &record.upstreams).map_err(in_record)?;
            if record.previews.len() > self.settings.max_per_app {
                return Err(bad(format!(
                    "{} previews; an app keeps at most {} (ephemeral.max_per_app)",
                    record.previews.len(),
                    self.settings.max_per_app
                )));
            }
            let mut exact_hosts = Vec::new();
            for host in &record.hosts {
                let (kind, canonical) = parse_route_host(host).map_err(bad)?;
                let route = Route {
                    kind,
                    host: canonical,
                    app: record.app.clone(),
                };
                let key = route.key();
                if state.routes.contains_key(&key) || !hosts.insert(key.clone()) {
                    return Err(refuse(
                        ErrorKind::AlreadyExists,
                        format!(
                            "app #{} ({}): route {key} is already taken",
                            index + 1,
                            record.app
                        ),
                    ));
                }
                if route.kind == RouteKind::Exact {
                    exact_hosts.push(route.host.clone());
                }
                mutations.push(Mutation::PutRoute(route));
                report.routes += 1;
            }
            let active = fresh_id();
            mutations.push(Mutation::PutVersion(Version {
                id: active.clone(),
                pool: active.clone(),
                app: record.app.clone(),
                spec: RuntimeSpec::Static {
                    upstreams: record.upstreams.clone(),
                },
                env: Environment::Production,
                branch: None,
                label: None,
                expires_at_ms: None,
                created_at_ms: now,
                cloned_from: None,
                desired: DesiredState::Running,
            }));
            let mut labels = HashSet::new();
            for preview in &record.previews {
                let (label, ttl) = self
                    .check_ephemeral(&preview.label, preview.ttl.as_deref())
                    .map_err(in_record)?;
                if !labels.insert(label.clone()) {
                    return Err(bad(format!("label {label} appears twice")));
                }
                for host in &exact_hosts {
                    check_preview_host(&label, host).map_err(in_record)?;
                }
                if let Some(branch) = &preview.branch {
                    check_branch(branch).map_err(in_record)?;
                }
                if !preview.upstreams.is_empty() {
                    check_upstreams(&format!("preview {label}: upstreams"), &preview.upstreams)
                        .map_err(in_record)?;
                }
                let id = fresh_id();
                let upstreams = if preview.upstreams.is_empty() {
                    record.upstreams.clone()
                } else {
                    preview.upstreams.clone()
                };
                mutations.push(Mutation::PutVersion(Version {
                    id: id.clone(),
                    pool: id,
                    app: record.app.clone(),
                    spec: RuntimeSpec::Static { upstreams },
                    env: Environment::Preview,
                    branch: preview.branch.clone(),
                    label: Some(label),
                    expires_at_ms: Some(now.saturating_add(ttl_ms(ttl))),
                    created_at_ms: now,
                    cloned_from: None,
                    // Like a preview deploy: asleep until its first request.
                    desired: DesiredState::Stopped,
                }));
            }
            report.versions += 1 + record.previews.len();
            mutations.push(Mutation::PutApp(App {
                name: record.app.clone(),
                created_at_ms: now,
                active_version: Some(active),
            }));
            report.apps += 1;
        }
        let detail = format!(
            "{} apps, {} routes, {} versions",
            report.apps, report.routes, report.versions
        );
        let audit = self.audit(actor, "import", "(import)", detail);
        self.commit(&mut inner, mutations, audit)?;
        Ok(report)
    }
}

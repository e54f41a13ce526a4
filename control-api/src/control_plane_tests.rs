//! Tests of the control plane's operations against a real SQLite store, with a
//! clock the test moves, checking what the published snapshot routes.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ingress_config::EphemeralSettings;
use ingress_proxy::{resolve, ResolutionKind, SnapshotHandle};

use super::*;
use crate::model::{AuditEntry, ChangeReason, Mutation, Route, State};
use crate::store::{SqliteStore, Store};

const T0: u64 = 1_700_000_000_000;
const HOUR: u64 = 3_600_000;

struct Harness {
    plane: Arc<ControlPlane>,
    snapshots: Arc<SnapshotHandle>,
    clock: Arc<AtomicU64>,
    dir: tempfile::TempDir,
}

fn addr(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// A store that refuses its next commits while `failing` is set, as a full disk
/// or an I/O error would.
struct FlakyStore {
    inner: SqliteStore,
    failing: Arc<std::sync::atomic::AtomicBool>,
}

impl Store for FlakyStore {
    fn load(&self) -> Result<State, crate::store::StoreError> {
        self.inner.load()
    }
    fn commit(&mut self, mutations: &[Mutation]) -> Result<(), crate::store::StoreError> {
        if self.failing.load(Ordering::Relaxed) {
            return Err(crate::store::StoreError("disk full (simulated)".into()));
        }
        self.inner.commit(mutations)
    }
    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, crate::store::StoreError> {
        self.inner.audit_log(limit)
    }
}

fn open(dir: tempfile::TempDir, clock: Arc<AtomicU64>) -> Harness {
    open_with(dir, clock, EphemeralSettings::default(), Arc::default())
}

fn open_with(
    dir: tempfile::TempDir,
    clock: Arc<AtomicU64>,
    settings: EphemeralSettings,
    failing: Arc<std::sync::atomic::AtomicBool>,
) -> Harness {
    let snapshots = Arc::new(SnapshotHandle::new());
    let tick = Arc::clone(&clock);
    let store = FlakyStore {
        inner: SqliteStore::open(dir.path()).unwrap(),
        failing,
    };
    let mut config = ingress_config::Config::default();
    config.store.data_dir = dir.path().to_path_buf();
    config.ephemeral = settings;
    let plane = ControlPlane::open(
        Box::new(store),
        Arc::clone(&snapshots),
        PlaneSettings::from_config(&config),
        Arc::new(ControlMetrics::unregistered()),
        Arc::new(move || tick.load(Ordering::Relaxed)),
    )
    .unwrap();
    Harness {
        plane,
        snapshots,
        clock,
        dir,
    }
}

/// A deploy request for app `shop` with no env or branch given.
fn shop_request(
    source: DeploySource,
    ephemeral: Option<(String, Option<String>)>,
) -> DeployRequest {
    DeployRequest {
        app: "shop".into(),
        source,
        env: None,
        branch: None,
        ephemeral,
    }
}

fn harness() -> Harness {
    let h = open(tempfile::tempdir().unwrap(), Arc::new(AtomicU64::new(T0)));
    h.plane.create_app("admin", "shop").unwrap();
    h.plane
        .add_route("admin", "shop.example.com", "shop")
        .unwrap();
    h
}

impl Harness {
    /// Deploys an active static version and waits until its pool is ready.
    fn deploy(&self, upstream: u16) -> DeployOutcome {
        let outcome = self
            .plane
            .deploy(
                "admin",
                &shop_request(DeploySource::Upstreams(vec![addr(upstream)]), None),
            )
            .unwrap();
        self.settle();
        outcome
    }

    /// Waits until no version of shop is starting or stopping.
    fn settle(&self) {
        for _ in 0..500 {
            let moving = self
                .plane
                .versions("shop", false)
                .unwrap()
                .iter()
                .any(|v| matches!(v.observed_state, Observed::Starting | Observed::Stopping));
            if !moving {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        panic!("versions still starting or stopping after 2.5 s");
    }

    fn preview(&self, label: &str, ttl: Option<&str>) -> Result<DeployOutcome, ControlError> {
        self.plane.deploy(
            "admin",
            &DeployRequest {
                app: "shop".into(),
                source: DeploySource::Upstreams(vec![addr(4000)]),
                env: None,
                branch: Some("feature/x".into()),
                ephemeral: Some((label.into(), ttl.map(str::to_string))),
            },
        )
    }

    /// (kind, version id) or the status code the proxy would answer.
    fn route(&self, host: &str) -> Result<(ResolutionKind, String), u16> {
        let snapshot = self.snapshots.load();
        resolve(
            &snapshot,
            host.as_bytes(),
            self.clock.load(Ordering::Relaxed),
        )
        .map(|r| (r.kind, r.target.version_id.to_string()))
        .map_err(|r| r.status())
    }

    fn advance(&self, ms: u64) {
        self.clock.fetch_add(ms, Ordering::Relaxed);
    }
}

#[test]
fn deploy_serves_and_a_preview_leaves_the_active_version_alone() {
    let h = harness();
    let active = h.deploy(3000).version;
    assert_eq!(active.status, VersionStatus::Active);
    assert_eq!(active.env, Environment::Production);
    assert_eq!(active.urls, ["http://shop.example.com"]);
    assert_eq!(
        h.route("shop.example.com"),
        Ok((ResolutionKind::Exact, active.id.clone()))
    );

    let preview = h.preview("Feature/Login_Page", Some("2h")).unwrap().version;
    assert_eq!(preview.label.as_deref(), Some("feature-login-page"));
    assert_eq!(preview.status, VersionStatus::Ephemeral);
    assert_eq!(preview.env, Environment::Preview);
    assert_eq!(preview.expires_at_ms, Some(T0 + 2 * HOUR));
    assert_eq!(preview.urls, ["http://feature-login-page.shop.example.com"]);
    assert_eq!(
        h.route("feature-login-page.shop.example.com"),
        Ok((ResolutionKind::Label, preview.id.clone()))
    );
    assert_eq!(
        h.route("shop.example.com"),
        Ok((ResolutionKind::Exact, active.id))
    );
}

#[test]
fn the_same_label_replaces_the_old_version() {
    let h = harness();
    h.deploy(3000);
    let first = h.preview("pr-1", None).unwrap();
    let second = h.preview("pr-1", None).unwrap();
    assert_eq!(second.replaced.as_deref(), Some(first.version.id.as_str()));
    assert_eq!(
        h.route("pr-1.shop.example.com"),
        Ok((ResolutionKind::Label, second.version.id.clone()))
    );
    let ids: Vec<String> = h
        .plane
        .versions("shop", true)
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(ids, [second.version.id]);
}

#[test]
fn one_label_too_many_evicts_the_nearest_to_expiry() {
    let h = harness();
    let mut nearest = String::new();
    for i in 0..10 {
        // pr-3 gets the shortest TTL.
        let ttl = if i == 3 { "1h" } else { "5h" };
        let outcome = h.preview(&format!("pr-{i}"), Some(ttl)).unwrap();
        if i == 3 {
            nearest = outcome.version.id;
        }
    }
    let eleventh = h.preview("pr-10", Some("5h")).unwrap();
    assert_eq!(eleventh.evicted, vec![nearest]);
    assert_eq!(h.route("pr-3.shop.example.com"), Err(404));
    assert_eq!(h.plane.versions("shop", true).unwrap().len(), 10);
}

#[test]
fn expiry_is_410_at_once_and_gc_deletes_with_a_tombstone() {
    let h = harness();
    h.deploy(3000);
    let preview = h.preview("pr-1", Some("1h")).unwrap().version;
    h.advance(HOUR);
    assert_eq!(h.route("pr-1.shop.example.com"), Err(410));
    assert_eq!(
        h.plane.versions("shop", true).unwrap()[0].status,
        VersionStatus::Expired
    );

    let report = h.plane.collect_garbage().unwrap();
    assert_eq!(report.deleted, [format!("shop/{}", preview.id)]);
    assert!(h.plane.versions("shop", true).unwrap().is_empty());
    assert_eq!(
        h.route("pr-1.shop.example.com"),
        Err(410),
        "the tombstone answers 410"
    );

    // After the tombstone's life the label is a plain 404, and the tombstone is pruned.
    h.advance(24 * HOUR);
    assert_eq!(h.plane.collect_garbage().unwrap().tombstones_pruned, 1);
    assert_eq!(h.route("pr-1.shop.example.com"), Err(404));
    let audit = h.plane.audit_log(10).unwrap();
    assert_eq!(audit[0].actor, SYSTEM_ACTOR);
    assert_eq!(audit[0].action, "gc");
}

#[test]
fn a_clone_leaves_its_source_unchanged() {
    let h = harness();
    let source = h.deploy(3000).version;
    let before = h.plane.versions("shop", false).unwrap();
    let clone = h
        .plane
        .deploy(
            "admin",
            &shop_request(
                DeploySource::Version(source.id.clone()),
                Some(("demo".into(), Some("1h".into()))),
            ),
        )
        .unwrap()
        .version;
    assert_ne!(clone.id, source.id);
    assert_eq!(clone.cloned_from.as_deref(), Some(source.id.as_str()));
    assert_eq!(clone.upstreams, source.upstreams);
    assert_eq!(
        clone.env,
        Environment::Production,
        "a clone keeps its source's environment"
    );
    let after: Vec<VersionView> = h
        .plane
        .versions("shop", false)
        .unwrap()
        .into_iter()
        .filter(|v| v.id == source.id)
        .collect();
    assert_eq!(after, before);
    assert_eq!(
        h.route("shop.example.com"),
        Ok((ResolutionKind::Exact, source.id))
    );
    assert_eq!(
        h.route("demo.shop.example.com"),
        Ok((ResolutionKind::Label, clone.id))
    );
}

#[test]
fn bad_input_is_refused_with_the_rule_and_changes_nothing() {
    let h = harness();
    h.deploy(3000);
    let before = h.plane.versions("shop", false).unwrap();
    let generation = h.snapshots.load().generation();
    let audit_len = h.plane.audit_log(100).unwrap().len();

    let e = h.preview("---", None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("RFC 1123"), "{e}");
    let e = h.preview("pr-1", Some("0s")).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert_eq!(
        e.message,
        "--ttl must be longer than 0s; allowed 1m to 30d (ephemeral.min_ttl to ephemeral.max_ttl)"
    );
    let e = h.preview("pr-1", Some("31d")).unwrap_err();
    assert_eq!(
        e.message,
        "--ttl 31d is longer than the maximum 30d; allowed 1m to 30d (ephemeral.min_ttl to ephemeral.max_ttl)"
    );
    let e = h.preview("pr-1", Some("soon")).unwrap_err();
    assert!(
        e.message.starts_with("--ttl: \"soon\" is not a duration"),
        "{e}"
    );
    let e = h
        .plane
        .deploy(
            "admin",
            &DeployRequest {
                app: "nope".into(),
                source: DeploySource::Upstreams(vec![addr(1)]),
                env: None,
                branch: None,
                ephemeral: None,
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.message.starts_with("app nope does not exist"), "{e}");
    assert_eq!(
        h.plane.create_app("admin", "shop").unwrap_err().kind,
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        h.plane.create_app("admin", "Bad_Name").unwrap_err().kind,
        ErrorKind::InvalidArgument
    );
    assert_eq!(
        h.plane
            .add_route("admin", "shop.example.com", "shop")
            .unwrap_err()
            .kind,
        ErrorKind::AlreadyExists
    );
    assert_eq!(
        h.plane
            .add_route("admin", "*.*.example.com", "shop")
            .unwrap_err()
            .kind,
        ErrorKind::InvalidArgument
    );

    assert_eq!(h.plane.versions("shop", false).unwrap(), before);
    assert_eq!(h.snapshots.load().generation(), generation);
    assert_eq!(h.plane.audit_log(100).unwrap().len(), audit_len);
}

#[test]
fn the_active_version_cannot_be_deleted_and_an_ephemeral_one_never_becomes_active() {
    let h = harness();
    let active = h.deploy(3000).version;
    let e = h
        .plane
        .delete_version("admin", "shop", &active.id)
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    let preview = h.preview("pr-1", None).unwrap().version;
    let e = h
        .plane
        .deploy(
            "admin",
            &shop_request(DeploySource::Version(preview.id.clone()), None),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    h.plane
        .delete_version("admin", "shop", &preview.id)
        .unwrap();
    assert_eq!(h.route("pr-1.shop.example.com"), Err(404));
}

#[test]
fn a_new_active_deploy_replaces_and_a_rollback_reactivates() {
    let h = harness();
    let first = h.deploy(3000).version;
    let second = h.deploy(3001).version;
    let statuses: Vec<(String, VersionStatus)> = h
        .plane
        .versions("shop", false)
        .unwrap()
        .into_iter()
        .map(|v| (v.id, v.status))
        .collect();
    assert!(statuses.contains(&(first.id.clone(), VersionStatus::Replaced)));
    assert!(statuses.contains(&(second.id.clone(), VersionStatus::Active)));
    h.plane
        .deploy(
            "admin",
            &shop_request(DeploySource::Version(first.id.clone()), None),
        )
        .unwrap();
    assert_eq!(
        h.route("shop.example.com"),
        Ok((ResolutionKind::Exact, first.id))
    );
}

#[test]
fn state_survives_reopening_the_store() {
    let h = harness();
    let active = h.deploy(3000).version;
    let preview = h.preview("pr-1", None).unwrap().version;
    let Harness {
        plane, dir, clock, ..
    } = h;
    drop(plane);
    let reopened = open(dir, clock);
    assert_eq!(
        reopened.route("shop.example.com"),
        Ok((ResolutionKind::Exact, active.id))
    );
    assert_eq!(
        reopened.route("pr-1.shop.example.com"),
        Ok((ResolutionKind::Label, preview.id))
    );
}

#[test]
fn deleting_an_app_removes_its_routes_and_versions() {
    let h = harness();
    h.deploy(3000);
    h.preview("pr-1", None).unwrap();
    h.plane.delete_app("admin", "shop").unwrap();
    assert!(h.plane.apps().is_empty());
    assert!(h.plane.routes().is_empty());
    assert_eq!(h.route("shop.example.com"), Err(404));
    assert_eq!(
        h.plane.versions("shop", false).unwrap_err().kind,
        ErrorKind::NotFound
    );
}

#[test]
fn routes_default_and_removal() {
    let h = harness();
    let v = h.deploy(3000).version;
    h.plane.set_default_route("admin", "shop").unwrap();
    assert_eq!(
        h.route("anything.test"),
        Ok((ResolutionKind::Default, v.id.clone()))
    );
    h.plane.add_route("admin", "*.example.org", "shop").unwrap();
    assert_eq!(
        h.route("x.example.org"),
        Ok((ResolutionKind::Wildcard, v.id))
    );
    h.plane.remove_route("admin", "*.example.org").unwrap();
    h.plane.remove_route("admin", "(default)").unwrap();
    assert_eq!(h.route("x.example.org"), Err(404));
    assert_eq!(
        h.plane
            .remove_route("admin", "x.example.org")
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );
}

/// App shop with an active version, on a store that refuses commits while the
/// returned flag is set.
fn flaky_shop() -> (Harness, Arc<std::sync::atomic::AtomicBool>) {
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let h = open_with(
        tempfile::tempdir().unwrap(),
        Arc::new(AtomicU64::new(T0)),
        EphemeralSettings::default(),
        Arc::clone(&failing),
    );
    h.plane.create_app("admin", "shop").unwrap();
    h.plane
        .add_route("admin", "shop.example.com", "shop")
        .unwrap();
    h.deploy(3000);
    (h, failing)
}

#[test]
fn a_failed_commit_changes_nothing_and_the_gc_retries() {
    let (h, failing) = flaky_shop();
    let old = h.preview("pr-1", Some("1h")).unwrap().version;
    let before = h.plane.versions("shop", false).unwrap();
    let generation = h.snapshots.load().generation();

    // A deploy that would replace a label fails as a whole.
    failing.store(true, Ordering::Relaxed);
    let e = h.preview("pr-1", None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal);
    assert!(e.message.contains("disk full"), "{e}");
    assert_eq!(h.plane.versions("shop", false).unwrap(), before);
    assert_eq!(h.snapshots.load().generation(), generation);
    assert_eq!(
        h.route("pr-1.shop.example.com"),
        Ok((ResolutionKind::Label, old.id.clone()))
    );

    // The GC keeps the expired record while the store refuses, and retries.
    h.advance(HOUR);
    assert!(h.plane.collect_garbage().is_err());
    assert_eq!(h.plane.versions("shop", true).unwrap().len(), 1);
    failing.store(false, Ordering::Relaxed);
    assert_eq!(
        h.plane.collect_garbage().unwrap().deleted,
        [format!("shop/{}", old.id)]
    );
    assert!(h.plane.versions("shop", true).unwrap().is_empty());
}

#[test]
fn a_preview_host_longer_than_a_host_is_refused() {
    let h = harness();
    let long_host = format!(
        "{}.{}.example.com",
        vec!["a".repeat(60); 3].join("."),
        "b".repeat(45)
    );
    assert_eq!(long_host.len(), 240);
    h.plane.add_route("admin", &long_host, "shop").unwrap();
    let e = h.preview("pr-1234567890123", None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(e.message.contains("a host is at most 253"), "{e}");
    // And a route that would make an existing label too long is refused too.
    h.plane.remove_route("admin", &long_host).unwrap();
    h.preview("pr-1234567890123", None).unwrap();
    let e = h.plane.add_route("admin", &long_host, "shop").unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
}

#[test]
fn an_exact_host_named_default_is_not_the_default_route() {
    let h = harness();
    h.plane.add_route("admin", "default", "shop").unwrap();
    h.plane.set_default_route("admin", "shop").unwrap();
    h.plane.remove_route("admin", "default").unwrap();
    let keys: Vec<String> = h.plane.routes().iter().map(Route::key).collect();
    assert!(keys.contains(&"(default)".to_string()), "{keys:?}");
    assert!(!keys.contains(&"default".to_string()), "{keys:?}");
}

#[test]
fn a_rollback_refuses_env_and_branch_and_a_clone_cannot_take_its_sources_label() {
    let h = harness();
    let active = h.deploy(3000).version;
    let e = h
        .plane
        .deploy(
            "admin",
            &DeployRequest {
                app: "shop".into(),
                source: DeploySource::Version(active.id.clone()),
                env: Some(Environment::Preview),
                branch: None,
                ephemeral: None,
            },
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);

    let preview = h.preview("pr-1", None).unwrap().version;
    let e = h
        .plane
        .deploy(
            "admin",
            &shop_request(
                DeploySource::Version(preview.id.clone()),
                Some(("pr-1".into(), None)),
            ),
        )
        .unwrap_err();
    assert_eq!(e.kind, ErrorKind::FailedPrecondition);
    assert_eq!(
        h.route("pr-1.shop.example.com"),
        Ok((ResolutionKind::Label, preview.id))
    );
}

#[test]
fn a_lowered_limit_evicts_down_to_it() {
    let clock = Arc::new(AtomicU64::new(T0));
    let first = open(tempfile::tempdir().unwrap(), Arc::clone(&clock));
    first.plane.create_app("admin", "shop").unwrap();
    first
        .plane
        .add_route("admin", "shop.example.com", "shop")
        .unwrap();
    for i in 0..5 {
        first
            .preview(&format!("pr-{i}"), Some(&format!("{}h", i + 1)))
            .unwrap();
    }
    let Harness { plane, dir, .. } = first;
    drop(plane);
    let settings = EphemeralSettings {
        max_per_app: 3,
        ..EphemeralSettings::default()
    };
    let h = open_with(dir, clock, settings, Arc::default());
    let outcome = h.preview("pr-new", None).unwrap();
    assert_eq!(outcome.evicted.len(), 3, "{outcome:?}");
    assert_eq!(h.plane.versions("shop", true).unwrap().len(), 3);
    assert_eq!(h.route("pr-0.shop.example.com"), Err(404));
    assert_eq!(h.route("pr-2.shop.example.com"), Err(404));
    assert!(h.route("pr-3.shop.example.com").is_ok());
}

#[test]
fn a_manual_wake_overwrites_a_pending_idle_stop_and_the_idle_sweep_never_overwrites() {
    let h = harness();
    let outcome = h
        .plane
        .deploy(
            "admin",
            &DeployRequest {
                env: Some(Environment::Preview),
                ..shop_request(DeploySource::Upstreams(vec![addr(3000)]), None)
            },
        )
        .unwrap();
    h.settle();
    let id = outcome.version.id;
    h.clock.fetch_add(2 * HOUR, Ordering::Relaxed);

    let swept = h.plane.check_idle().unwrap();
    assert_eq!(swept.versions, vec![format!("shop/{id}")]);
    let pending = h.plane.versions("shop", false).unwrap()[0].pending.clone();
    assert_eq!(pending.map(|p| p.reason), Some(ChangeReason::Idle));
    // A second sweep leaves the pending change alone.
    assert!(h.plane.check_idle().unwrap().versions.is_empty());

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let woken = runtime
        .block_on(h.plane.wake_version(
            "admin",
            "shop",
            &id,
            Some(std::time::Duration::from_secs(5)),
        ))
        .unwrap();
    assert_eq!(
        woken.pending, None,
        "the manual wake replaced the idle stop"
    );
    assert!(h.plane.run_due_schedules().unwrap().versions.is_empty());
    let after = &h.plane.versions("shop", false).unwrap()[0];
    assert_eq!(after.desired_state, DesiredState::Running);
    assert_eq!(after.observed_state, Observed::Ready);
    let audit = h.plane.audit_log(10).unwrap();
    assert!(audit
        .iter()
        .any(|e| e.action == "version.wake" && e.detail.contains("replaced a pending stop")));

    // Without the wake, the idle stop runs when due.
    h.clock.fetch_add(2 * HOUR, Ordering::Relaxed);
    h.plane.check_idle().unwrap();
    assert_eq!(h.plane.run_due_schedules().unwrap().versions.len(), 1);
    h.settle();
    let stopped = &h.plane.versions("shop", false).unwrap()[0];
    assert_eq!(stopped.desired_state, DesiredState::Stopped);
    assert_eq!(stopped.observed_state, Observed::Stopped);
}

#[test]
fn production_is_exempt_from_the_idle_sweep() {
    let h = harness();
    h.deploy(3000);
    h.clock.fetch_add(2 * HOUR, Ordering::Relaxed);
    assert!(h.plane.check_idle().unwrap().versions.is_empty());
}

#[test]
fn a_replaced_active_version_stops_after_the_grace_and_a_rollback_cancels_the_stop() {
    let h = harness();
    let first = h.deploy(3000).version.id;
    h.deploy(3001);
    let versions = h.plane.versions("shop", false).unwrap();
    let old = versions.iter().find(|v| v.id == first).unwrap();
    let pending = old.pending.clone().expect("a stop is scheduled");
    assert_eq!(pending.reason, ChangeReason::Superseded);
    assert_eq!(pending.desired, DesiredState::Stopped);
    assert_eq!(pending.due_at_ms, T0 + 60_000, "supersede.grace later");

    // Rolling back before the stop is due cancels it.
    h.plane
        .deploy(
            "admin",
            &shop_request(DeploySource::Version(first.clone()), None),
        )
        .unwrap();
    h.clock.fetch_add(HOUR, Ordering::Relaxed);
    let ran = h.plane.run_due_schedules().unwrap();
    assert_eq!(
        ran.versions.len(),
        1,
        "only the newer version, now replaced, stops"
    );
    assert!(!ran.versions[0].ends_with(&first));
    let rolled_back = h.plane.versions("shop", false).unwrap();
    let active = rolled_back.iter().find(|v| v.id == first).unwrap();
    assert_eq!(active.desired_state, DesiredState::Running);
    assert_eq!(active.status, VersionStatus::Active);
}

/// Every host a request could use against the state's apps: routes, labels
/// under exact routes (live, expired, deleted), and hosts nothing routes.
fn probe_hosts(state: &State) -> Vec<String> {
    let mut hosts = vec!["nothing.example.org".to_string()];
    for route in state.routes.values() {
        let host = route.host.clone();
        hosts.push(format!("x.{host}"));
        for label in ["pr-1", "pr-2", "pr-3", "gone", "a", "b"] {
            hosts.push(format!("{label}.{host}"));
        }
        hosts.push(host);
    }
    hosts
}

/// Resolves `hosts` against `snapshot`: (kind, version) or the status.
fn resolve_all(
    snapshot: &ingress_proxy::Snapshot,
    hosts: &[String],
    now_ms: u64,
) -> Vec<Result<(ResolutionKind, String), u16>> {
    hosts
        .iter()
        .map(|host| {
            resolve(snapshot, host.as_bytes(), now_ms)
                .map(|r| (r.kind, r.target.version_id.to_string()))
                .map_err(|r| r.status())
        })
        .collect()
}

/// The incrementally published snapshot routes every host exactly as a snapshot
/// built from scratch out of the same state, after each step of a history that
/// touches every kind of mutation.
#[test]
fn incremental_publishing_routes_like_a_full_rebuild() {
    let h = harness();
    let check = |step: &str| {
        let (_, input) = h.plane.current_snapshot();
        let now = h.clock.load(Ordering::Relaxed);
        let full = ingress_proxy::Snapshot::build(&input, 0, h.snapshots.activity()).unwrap();
        let state = h.plane.lock().state.clone();
        let hosts = probe_hosts(&state);
        assert_eq!(
            resolve_all(&h.snapshots.load(), &hosts, now),
            resolve_all(&full, &hosts, now),
            "after {step}"
        );
    };
    h.deploy(3000);
    check("deploy");
    h.preview("pr-1", None).unwrap();
    h.preview("pr-2", Some("1h")).unwrap();
    check("two previews");
    h.plane.create_app("admin", "blog").unwrap();
    h.plane
        .add_route("admin", "blog.example.com", "blog")
        .unwrap();
    h.plane
        .add_route("admin", "*.blog.example.com", "blog")
        .unwrap();
    h.plane.set_default_route("admin", "blog").unwrap();
    check("a second app with exact, wildcard and default routes");
    let replaced = h.preview("pr-1", None).unwrap();
    assert!(replaced.replaced.is_some());
    check("a label replaced");
    h.advance(2 * HOUR);
    h.plane.collect_garbage().unwrap();
    check("an expired label collected (tombstone)");
    h.plane.remove_route("admin", "*.blog.example.com").unwrap();
    check("a wildcard route removed");
    h.plane.delete_app("admin", "blog").unwrap();
    check("an app deleted with its routes");
    h.plane.create_app("admin", "blog").unwrap();
    h.plane
        .add_route("admin", "blog.example.com", "blog")
        .unwrap();
    check("an app created again in a fresh slot");
    h.advance(25 * HOUR);
    h.plane.collect_garbage().unwrap();
    check("tombstones pruned");
}

/// A refused change leaves the state and the published snapshot as they were.
#[test]
fn a_refused_commit_backs_the_state_out() {
    let (h, failing) = flaky_shop();
    let before = h.plane.lock().state.clone();
    let generation = h.snapshots.load().generation();
    failing.store(true, Ordering::Relaxed);
    assert!(h.preview("pr-1", None).is_err());
    assert!(h.plane.delete_app("admin", "shop").is_err());
    failing.store(false, Ordering::Relaxed);
    assert_eq!(h.plane.lock().state, before);
    assert_eq!(h.snapshots.load().generation(), generation);
    assert!(h.route("shop.example.com").is_ok());
}

/// A static deploy of app shop over `addrs`.
fn deploy_upstreams(h: &Harness, addrs: Vec<SocketAddr>) -> Result<DeployOutcome, ControlError> {
    h.plane
        .deploy("admin", &shop_request(DeploySource::Upstreams(addrs), None))
}

/// One import record: app `name` at `name.example.com` over `upstreams`, with
/// the given previews.
fn import_record(
    name: &str,
    upstreams: Vec<SocketAddr>,
    previews: Vec<ImportPreview>,
) -> ImportApp {
    ImportApp {
        app: name.into(),
        hosts: vec![format!("{name}.example.com")],
        upstreams,
        previews,
    }
}

fn import_preview(upstreams: Vec<SocketAddr>, ttl: Option<&str>) -> ImportPreview {
    ImportPreview {
        label: "pr-1".into(),
        branch: None,
        upstreams,
        ttl: ttl.map(str::to_string),
    }
}

#[test]
fn upstreams_must_be_connectable_unicast_and_few() {
    let h = harness();
    h.deploy(3000);
    let before = h.plane.versions("shop", false).unwrap();
    let generation = h.snapshots.load().generation();
    let audit_len = h.plane.audit_log(100).unwrap().len();
    let apps = h.plane.apps();

    let cases: [(&str, &str); 7] = [
        ("127.0.0.1:0", "has port 0"),
        ("0.0.0.0:80", "is the unspecified address"),
        ("[::]:80", "is the unspecified address"),
        ("255.255.255.255:80", "is the broadcast address"),
        ("224.0.0.1:80", "is a multicast address"),
        ("[ff02::1]:80", "is a multicast address"),
        ("[::ffff:239.1.2.3]:80", "is a multicast address"),
    ];
    for (bad, problem) in cases {
        let bad: SocketAddr = bad.parse().unwrap();
        // Alone, or after a good address: every address is checked.
        for addrs in [vec![bad], vec![addr(3001), bad]] {
            let e = deploy_upstreams(&h, addrs).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
            assert!(
                e.message
                    .starts_with(&format!("--upstream {bad} {problem}"))
                    && e.message.contains(
                        "an upstream is a unicast IP address with a port from 1 to 65535"
                    ),
                "{e}"
            );
        }
        // The import refuses it too, with the same words, for the app and a preview.
        let e = h
            .plane
            .import("admin", &[import_record("other", vec![bad], vec![])])
            .unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(
            e.message
                .starts_with(&format!("app #1 (other): upstreams {bad} {problem}")),
            "{e}"
        );
        let e = h
            .plane
            .import(
                "admin",
                &[import_record(
                    "other",
                    vec![addr(3001)],
                    vec![import_preview(vec![bad], None)],
                )],
            )
            .unwrap_err();
        assert!(
            e.message.starts_with(&format!(
                "app #1 (other): preview pr-1: upstreams {bad} {problem}"
            )),
            "{e}"
        );
    }
    let many: Vec<SocketAddr> = (1..=65).map(addr).collect();
    let e = deploy_upstreams(&h, many.clone()).unwrap_err();
    assert_eq!(
        e.message,
        format!("--upstream has 65 addresses; a version has at most {MAX_UPSTREAMS}")
    );
    let e = h
        .plane
        .import("admin", &[import_record("other", many.clone(), vec![])])
        .unwrap_err();
    assert_eq!(
        e.message,
        "app #1 (other): upstreams has 65 addresses; a version has at most 64"
    );
    let e = deploy_upstreams(&h, vec![]).unwrap_err();
    assert_eq!(e.message, "--upstream needs at least one address (IP:PORT)");

    assert_eq!(h.plane.versions("shop", false).unwrap(), before);
    assert_eq!(h.plane.apps(), apps);
    assert_eq!(h.snapshots.load().generation(), generation);
    assert_eq!(h.plane.audit_log(100).unwrap().len(), audit_len);

    // The limit itself, and ordinary unicast addresses, are fine.
    let mut most: Vec<SocketAddr> = many[..MAX_UPSTREAMS - 2].to_vec();
    most.push("[::1]:8080".parse().unwrap());
    most.push("10.1.2.3:1".parse().unwrap());
    deploy_upstreams(&h, most).unwrap();
}

#[test]
fn a_ttl_below_the_minimum_is_refused_on_deploy_and_import() {
    let h = harness();
    h.deploy(3000);
    let before = h.plane.versions("shop", false).unwrap();
    let audit_len = h.plane.audit_log(100).unwrap().len();
    let allowed = "allowed 1m to 30d (ephemeral.min_ttl to ephemeral.max_ttl)";
    for (ttl, shown) in [("1ms", "1ms"), ("59s", "59s"), ("59999ms", "59999ms")] {
        let e = h.preview("pr-1", Some(ttl)).unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert_eq!(
            e.message,
            format!("--ttl {shown} is shorter than the minimum 1m; {allowed}")
        );
        let e = h
            .plane
            .import(
                "admin",
                &[import_record(
                    "other",
                    vec![addr(3001)],
                    vec![import_preview(vec![], Some(ttl))],
                )],
            )
            .unwrap_err();
        assert_eq!(
            e.message,
            format!("app #1 (other): --ttl {shown} is shorter than the minimum 1m; {allowed}")
        );
    }
    assert_eq!(h.plane.versions("shop", false).unwrap(), before);
    assert_eq!(h.plane.audit_log(100).unwrap().len(), audit_len);
    assert!(h.plane.apps().iter().all(|app| app.name != "other"));
    // The minimum itself is allowed.
    h.preview("pr-1", Some("1m")).unwrap();
}

#[test]
fn route_hosts_that_are_ip_literals_or_empty_are_refused_and_change_nothing() {
    let h = harness();
    let routes = h.plane.routes();
    let audit_len = h.plane.audit_log(100).unwrap().len();
    for host in ["127.0.0.1", "[::1]", "10.0.0.1", "*.10.0.0.1"] {
        let e = h.plane.add_route("admin", host, "shop").unwrap_err();
        assert_eq!(e.kind, ErrorKind::InvalidArgument);
        assert!(e.message.contains("IP literals are refused"), "{host}: {e}");
    }
    let e = h.plane.add_route("admin", "", "shop").unwrap_err();
    assert!(e.message.starts_with("the route host is empty;"), "{e}");
    let e = h.plane.add_route("admin", "*.", "shop").unwrap_err();
    assert!(e.message.contains("nothing after \"*.\""), "{e}");
    let e = h
        .plane
        .import(
            "admin",
            &[ImportApp {
                hosts: vec!["*.".into()],
                ..import_record("other", vec![addr(3001)], vec![])
            }],
        )
        .unwrap_err();
    assert!(
        e.message
            .starts_with("app #1 (other): route host \"*.\" has nothing after"),
        "{e}"
    );
    let e = h.plane.remove_route("admin", "").unwrap_err();
    assert!(e.message.starts_with("the route host is empty;"), "{e}");
    assert_eq!(h.plane.routes(), routes);
    assert_eq!(h.plane.audit_log(100).unwrap().len(), audit_len);
}

#[test]
fn a_route_an_older_ingress_let_in_can_still_be_removed() {
    let h = harness();
    // Written as an older ingress did, straight through the store and the state.
    let legacy = Route {
        kind: RouteKind::Exact,
        host: "127.0.0.1".into(),
        app: "shop".into(),
    };
    {
        let mut inner = h.plane.lock();
        let audit = h
            .plane
            .audit("admin", "route.add", "127.0.0.1", String::new());
        h.plane
            .commit(&mut inner, vec![Mutation::PutRoute(legacy)], audit)
            .unwrap();
    }
    h.plane.remove_route("admin", "127.0.0.1").unwrap();
    assert!(h.plane.routes().iter().all(|r| r.host != "127.0.0.1"));
}

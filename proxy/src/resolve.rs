//! Host resolution (SPEC §2.2): which version of which app a host goes to, in a
//! fixed order, against one snapshot, without locks or allocation on success.

use std::fmt;
use std::sync::Arc;

use crate::host::{normalise_host, HostBuf, HostError, MAX_HOST_LEN};
use crate::snapshot::{AppEntry, LabelEntry, Snapshot, Target};

/// How a request was resolved; a metrics label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ResolutionKind {
    /// An exact route of the app.
    Exact,
    /// A live preview label under an exact route.
    Label,
    /// A one-label wildcard route.
    Wildcard,
    /// The default route.
    Default,
    /// Nothing matched, or a preview label that does not exist.
    NotFound,
    /// A preview label that expired.
    Gone,
    /// The Host header is malformed.
    InvalidHost,
}

impl ResolutionKind {
    /// Every kind, in the order of [`ResolutionKind::index`].
    pub const ALL: [ResolutionKind; 7] = [
        ResolutionKind::Exact,
        ResolutionKind::Label,
        ResolutionKind::Wildcard,
        ResolutionKind::Default,
        ResolutionKind::NotFound,
        ResolutionKind::Gone,
        ResolutionKind::InvalidHost,
    ];

    /// The metrics label value.
    pub fn as_str(self) -> &'static str {
        match self {
            ResolutionKind::Exact => "exact",
            ResolutionKind::Label => "label",
            ResolutionKind::Wildcard => "wildcard",
            ResolutionKind::Default => "default",
            ResolutionKind::NotFound => "not_found",
            ResolutionKind::Gone => "gone",
            ResolutionKind::InvalidHost => "invalid_host",
        }
    }

    /// Position in [`ResolutionKind::ALL`], for arrays indexed by kind.
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A request that resolved to a version.
#[derive(Debug, Clone, Copy)]
pub struct Resolved<'s> {
    pub kind: ResolutionKind,
    pub target: &'s Arc<Target>,
}

/// A request that cannot be routed, and why. Each variant maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// 400: the Host header is malformed.
    InvalidHost(HostError),
    /// 404: no route matches the host.
    NoRoute { host: String },
    /// 404: the host names a preview label of an app that has no such label.
    NoSuchPreview { app: Arc<str>, label: String },
    /// 410: the preview label expired at `expired_at_ms` (Unix milliseconds).
    PreviewExpired {
        app: Arc<str>,
        label: String,
        expired_at_ms: u64,
    },
    /// 503: the route's app has no active version.
    NoActiveVersion { app: Arc<str>, via: ResolutionKind },
}

impl Rejection {
    /// The HTTP status code of the answer.
    pub fn status(&self) -> u16 {
        match self {
            Rejection::InvalidHost(_) => 400,
            Rejection::NoRoute { .. } | Rejection::NoSuchPreview { .. } => 404,
            Rejection::PreviewExpired { .. } => 410,
            Rejection::NoActiveVersion { .. } => 503,
        }
    }

    /// How the request was classified, for metrics.
    pub fn kind(&self) -> ResolutionKind {
        match self {
            Rejection::InvalidHost(_) => ResolutionKind::InvalidHost,
            Rejection::NoRoute { .. } | Rejection::NoSuchPreview { .. } => ResolutionKind::NotFound,
            Rejection::PreviewExpired { .. } => ResolutionKind::Gone,
            Rejection::NoActiveVersion { via, .. } => *via,
        }
    }

    /// A stable machine-readable code for JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            Rejection::InvalidHost(_) => "invalid_host",
            Rejection::NoRoute { .. } => "no_route",
            Rejection::NoSuchPreview { .. } => "no_such_preview",
            Rejection::PreviewExpired { .. } => "preview_expired",
            Rejection::NoActiveVersion { .. } => "no_active_version",
        }
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejection::InvalidHost(e) => write!(f, "invalid Host header: {e}"),
            Rejection::NoRoute { host } => write!(f, "no app is routed at host {host}"),
            Rejection::NoSuchPreview { app, label } => {
                write!(f, "no preview named {label} for app {app}")
            }
            Rejection::PreviewExpired {
                app,
                label,
                expired_at_ms,
            } => write!(
                f,
                "preview {label} of app {app} expired at {}",
                crate::time::format_unix_millis(*expired_at_ms)
            ),
            Rejection::NoActiveVersion { app, .. } => {
                write!(f, "app {app} has no active version")
            }
        }
    }
}

/// Resolves a raw Host value against `snapshot` at `now_ms` (Unix milliseconds).
///
/// The order is SPEC §2.2: exact route; live preview label under an exact route;
/// wildcard route; default route; 404. A label under an exact route that is not
/// live, when no wildcard matches, is 404 or 410 (tombstone or expired) and never
/// falls through to the default route. A preview is expired from `now_ms >= expiry`.
pub fn resolve<'s>(
    snapshot: &'s Snapshot,
    raw_host: &[u8],
    now_ms: u64,
) -> Result<Resolved<'s>, Rejection> {
    let mut buf: HostBuf = [0; MAX_HOST_LEN + 2];
    let host = normalise_host(raw_host, &mut buf).map_err(Rejection::InvalidHost)?;

    let routes = snapshot.host_routes(host);
    if let Some(app) = routes.and_then(|r| r.exact) {
        return active(snapshot.app_at(app), ResolutionKind::Exact);
    }
    if let Some((first, rest)) = host.split_once('.') {
        let parent = snapshot.host_routes(rest).unwrap_or_default();
        let wildcard = parent.wildcard.map(|i| snapshot.app_at(i));
        if let Some(app) = parent.exact.map(|i| snapshot.app_at(i)) {
            let missing = match app.label(first) {
                Some(LabelEntry::Live(target)) => match target.expires_at_ms {
                    Some(expiry) if now_ms >= expiry => Rejection::PreviewExpired {
                        app: Arc::clone(app.name()),
                        label: first.to_string(),
                        expired_at_ms: expiry,
                    },
                    _ => {
                        return Ok(Resolved {
                            kind: ResolutionKind::Label,
                            target,
                        })
                    }
                },
                Some(LabelEntry::Expired { expired_at_ms }) => Rejection::PreviewExpired {
                    app: Arc::clone(app.name()),
                    label: first.to_string(),
                    expired_at_ms: *expired_at_ms,
                },
                None => Rejection::NoSuchPreview {
                    app: Arc::clone(app.name()),
                    label: first.to_string(),
                },
            };
            return match wildcard {
                Some(app) => active(app, ResolutionKind::Wildcard),
                None => Err(missing),
            };
        }
        if let Some(app) = wildcard {
            return active(app, ResolutionKind::Wildcard);
        }
    }
    match snapshot.default_route() {
        Some(app) => active(app, ResolutionKind::Default),
        None => Err(Rejection::NoRoute {
            host: host.to_string(),
        }),
    }
}

fn active(app: &AppEntry, kind: ResolutionKind) -> Result<Resolved<'_>, Rejection> {
    match app.active() {
        Some(target) => Ok(Resolved { kind, target }),
        None => Err(Rejection::NoActiveVersion {
            app: Arc::clone(app.name()),
            via: kind,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activity::ActivityRegistry;
    use crate::snapshot::{
        AppSpec, ExpiredLabel, PreviewSpec, RouteSpec, SnapshotInput, VersionRef,
    };

    const NOW: u64 = 1_700_000_000_000;

    fn version(id: &str) -> VersionRef {
        VersionRef {
            id: id.into(),
            state_epoch: 0,
        }
    }

    fn app(name: &str, active: Option<&str>, previews: &[(&str, &str, u64)]) -> AppSpec {
        AppSpec {
            name: name.into(),
            active: active.map(version),
            previews: previews
                .iter()
                .map(|(label, id, expiry)| PreviewSpec {
                    label: (*label).into(),
                    version: version(id),
                    expires_at_ms: *expiry,
                })
                .collect(),
            expired_labels: vec![],
        }
    }

    /// shop: exact shop.example.com, active v-shop, previews pr-1 (live), old (expired
    ///       a second ago but not yet collected), shop (a label equal to an app name),
    ///       soon (expires exactly at NOW), tombstone gone-1.
    /// blog: wildcard *.blog.example.com and *.example.org, active v-blog.
    /// nover: exact nover.example.com, no active version; wildcard *.nover.example.net.
    /// edge: exact edge.example.com, wildcard *.edge.example.com; preview pr-9.
    /// fallback: the default route.
    fn snapshot() -> Snapshot {
        let mut shop = app(
            "shop",
            Some("v-shop"),
            &[
                ("pr-1", "v-pr1", NOW + 60_000),
                ("old", "v-old", NOW - 1_000),
                ("shop", "v-shoplabel", NOW + 60_000),
                ("soon", "v-soon", NOW),
            ],
        );
        shop.expired_labels.push(ExpiredLabel {
            label: "gone-1".into(),
            expired_at_ms: NOW - 3_600_000,
        });
        let mut edge = app("edge", Some("v-edge"), &[("pr-9", "v-pr9", NOW + 60_000)]);
        edge.expired_labels.push(ExpiredLabel {
            label: "dead".into(),
            expired_at_ms: NOW - 1,
        });
        let input = SnapshotInput {
            apps: vec![
                shop,
                app("blog", Some("v-blog"), &[]),
                app("nover", None, &[]),
                edge,
                app("edgewild", Some("v-edgewild"), &[]),
                app("fallback", Some("v-fallback"), &[]),
            ],
            routes: vec![
                RouteSpec::exact("shop.example.com", "shop"),
                RouteSpec::wildcard("blog.example.com", "blog"),
                RouteSpec::wildcard("example.org", "blog"),
                RouteSpec::exact("nover.example.com", "nover"),
                RouteSpec::wildcard("nover.example.net", "nover"),
                RouteSpec::exact("edge.example.com", "edge"),
                RouteSpec::wildcard("edge.example.com", "edgewild"),
                RouteSpec::default_route("fallback"),
            ],
        };
        Snapshot::build(&input, 1, &ActivityRegistry::default()).unwrap()
    }

    fn resolve_str(snapshot: &Snapshot, host: &str) -> Result<(ResolutionKind, String), Rejection> {
        resolve(snapshot, host.as_bytes(), NOW).map(|r| (r.kind, r.target.version_id.to_string()))
    }

    fn ok(kind: ResolutionKind, version: &str) -> Result<(ResolutionKind, String), Rejection> {
        Ok((kind, version.to_string()))
    }

    #[test]
    fn exact_route_goes_to_the_active_version() {
        let s = snapshot();
        assert_eq!(
            resolve_str(&s, "shop.example.com"),
            ok(ResolutionKind::Exact, "v-shop")
        );
        assert_eq!(
            resolve_str(&s, "SHOP.Example.com.:8080"),
            ok(ResolutionKind::Exact, "v-shop")
        );
    }

    #[test]
    fn a_live_label_goes_to_its_preview_version() {
        let s = snapshot();
        assert_eq!(
            resolve_str(&s, "pr-1.shop.example.com"),
            ok(ResolutionKind::Label, "v-pr1")
        );
        let resolved = resolve(&s, b"pr-1.shop.example.com", NOW).unwrap();
        assert_eq!(resolved.target.label.as_deref(), Some("pr-1"));
    }

    #[test]
    fn a_label_equal_to_an_app_name_is_just_a_label() {
        let s = snapshot();
        assert_eq!(
            resolve_str(&s, "shop.shop.example.com"),
            ok(ResolutionKind::Label, "v-shoplabel")
        );
    }

    #[test]
    fn a_missing_label_is_404_naming_app_and_label_and_the_default_does_not_catch_it() {
        let s = snapshot();
        let rejection = resolve_str(&s, "pr-2.shop.example.com").unwrap_err();
        assert_eq!(
            rejection,
            Rejection::NoSuchPreview {
                app: "shop".into(),
                label: "pr-2".into()
            }
        );
        assert_eq!(rejection.status(), 404);
        assert_eq!(rejection.to_string(), "no preview named pr-2 for app shop");
    }

    #[test]
    fn an_expired_label_is_410_before_any_gc() {
        let s = snapshot();
        let rejection = resolve_str(&s, "old.shop.example.com").unwrap_err();
        assert_eq!(
            rejection,
            Rejection::PreviewExpired {
                app: "shop".into(),
                label: "old".into(),
                expired_at_ms: NOW - 1_000
            }
        );
        assert_eq!(rejection.status(), 410);
        assert!(rejection
            .to_string()
            .contains("expired at 2023-11-14T22:13:19Z"));
    }

    #[test]
    fn a_label_expiring_exactly_now_is_already_unroutable() {
        let s = snapshot();
        assert_eq!(
            resolve(&s, b"soon.shop.example.com", NOW - 1).map(|r| r.kind),
            Ok(ResolutionKind::Label)
        );
        assert_eq!(
            resolve_str(&s, "soon.shop.example.com")
                .unwrap_err()
                .status(),
            410
        );
    }

    #[test]
    fn a_tombstoned_label_is_410_with_its_expiry() {
        let s = snapshot();
        assert_eq!(
            resolve_str(&s, "gone-1.shop.example.com"),
            Err(Rejection::PreviewExpired {
                app: "shop".into(),
                label: "gone-1".into(),
                expired_at_ms: NOW - 3_600_000
            })
        );
    }

    #[test]
    fn a_wildcard_never_hides_a_live_label_of_an_exact_route() {
        let s = snapshot();
        // *.edge.example.com belongs to another app, yet pr-9 is a live label of edge.
        assert_eq!(
            resolve_str(&s, "pr-9.edge.example.com"),
            ok(ResolutionKind::Label, "v-pr9")
        );
        // Labels that are not live fall to the wildcard, expired ones included.
        assert_eq!(
            resolve_str(&s, "other.edge.example.com"),
            ok(ResolutionKind::Wildcard, "v-edgewild")
        );
        assert_eq!(
            resolve_str(&s, "dead.edge.example.com"),
            ok(ResolutionKind::Wildcard, "v-edgewild")
        );
    }

    #[test]
    fn wildcards_match_exactly_one_label() {
        let s = snapshot();
        assert_eq!(
            resolve_str(&s, "a.blog.example.com"),
            ok(ResolutionKind::Wildcard, "v-blog")
        );
        assert_eq!(
            resolve_str(&s, "x.example.org"),
            ok(ResolutionKind::Wildcard, "v-blog")
        );
        // Two labels deep and the bare suffix are not matched by the wildcard.
        assert_eq!(
            resolve_str(&s, "a.b.blog.example.com"),
            ok(ResolutionKind::Default, "v-fallback")
        );
        assert_eq!(
            resolve_str(&s, "blog.example.com"),
            ok(ResolutionKind::Default, "v-fallback")
        );
    }

    #[test]
    fn the_default_route_catches_the_rest() {
        let s = snapshot();
        assert_eq!(
            resolve_str(&s, "unknown.example.net"),
            ok(ResolutionKind::Default, "v-fallback")
        );
        assert_eq!(
            resolve_str(&s, "localhost"),
            ok(ResolutionKind::Default, "v-fallback")
        );
        assert_eq!(
            resolve_str(&s, "[::1]:8080"),
            ok(ResolutionKind::Default, "v-fallback")
        );
    }

    #[test]
    fn nothing_matching_is_404() {
        let empty = Snapshot::empty();
        let rejection = resolve_str(&empty, "shop.example.com").unwrap_err();
        assert_eq!(
            rejection,
            Rejection::NoRoute {
                host: "shop.example.com".into()
            }
        );
        assert_eq!(rejection.status(), 404);
        assert_eq!(rejection.kind(), ResolutionKind::NotFound);
    }

    #[test]
    fn an_app_without_an_active_version_is_503_on_every_route_kind() {
        let s = snapshot();
        let exact = resolve_str(&s, "nover.example.com").unwrap_err();
        assert_eq!(exact.status(), 503);
        assert_eq!(exact.kind(), ResolutionKind::Exact);
        assert_eq!(exact.to_string(), "app nover has no active version");
        let wildcard = resolve_str(&s, "x.nover.example.net").unwrap_err();
        assert_eq!(wildcard.status(), 503);
        assert_eq!(wildcard.kind(), ResolutionKind::Wildcard);

        let only_default = Snapshot::build(
            &SnapshotInput {
                apps: vec![app("d", None, &[])],
                routes: vec![RouteSpec::default_route("d")],
            },
            1,
            &ActivityRegistry::default(),
        )
        .unwrap();
        let default = resolve_str(&only_default, "any.host").unwrap_err();
        assert_eq!(default.status(), 503);
        assert_eq!(default.kind(), ResolutionKind::Default);
    }

    #[test]
    fn a_malformed_host_is_400() {
        let s = snapshot();
        for bad in ["", "bad host", "a..b", &"a".repeat(254), "x.com:port"] {
            let rejection = resolve_str(&s, bad).unwrap_err();
            assert_eq!(rejection.status(), 400, "{bad:?}");
            assert_eq!(rejection.kind(), ResolutionKind::InvalidHost);
        }
    }

    #[test]
    fn an_exact_route_wins_over_a_label_of_its_parent() {
        let input = SnapshotInput {
            apps: vec![
                app("shop", Some("v-shop"), &[("pr-1", "v-pr1", NOW + 1)]),
                app("other", Some("v-other"), &[]),
            ],
            routes: vec![
                RouteSpec::exact("shop.example.com", "shop"),
                RouteSpec::exact("pr-1.shop.example.com", "other"),
            ],
        };
        let s = Snapshot::build(&input, 1, &ActivityRegistry::default()).unwrap();
        assert_eq!(
            resolve_str(&s, "pr-1.shop.example.com"),
            ok(ResolutionKind::Exact, "v-other")
        );
    }

    #[test]
    fn idn_hosts_in_punycode_route() {
        let input = SnapshotInput {
            apps: vec![app("books", Some("v-books"), &[])],
            routes: vec![RouteSpec::exact("xn--bcher-kva.example", "books")],
        };
        let s = Snapshot::build(&input, 1, &ActivityRegistry::default()).unwrap();
        assert_eq!(
            resolve_str(&s, "XN--BCHER-KVA.example"),
            ok(ResolutionKind::Exact, "v-books")
        );
    }
}

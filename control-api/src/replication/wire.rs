//! The routing state on the wire: snapshot apps, routes and endpoints to and
//! from their protobuf messages. `Watch` and the replication stream share it.

use std::net::SocketAddr;

use ingress_proxy::{AppSpec, ExpiredLabel, PreviewSpec, RouteHost, RouteSpec, VersionRef};

use crate::grpc::proto;
use crate::model::DEFAULT_ROUTE_KEY;
use crate::pools::EndpointView;

/// An app as `Watch` and the routing stream send it.
pub fn app_message(app: AppSpec) -> proto::SnapshotApp {
    proto::SnapshotApp {
        name: app.name,
        active_version: app.active.map(|v| v.id),
        previews: app
            .previews
            .into_iter()
            .map(|p| proto::SnapshotPreview {
                label: p.label,
                version: p.version.id,
                expires_at_ms: p.expires_at_ms,
            })
            .collect(),
        expired_labels: app
            .expired_labels
            .into_iter()
            .map(|e| proto::SnapshotExpiredLabel {
                label: e.label,
                expired_at_ms: e.expired_at_ms,
            })
            .collect(),
    }
}

/// The app a message describes.
pub fn app_spec(app: proto::SnapshotApp) -> AppSpec {
    let version = |id: String| VersionRef { id, state_epoch: 0 };
    AppSpec {
        name: app.name,
        active: app.active_version.map(version),
        previews: app
            .previews
            .into_iter()
            .map(|p| PreviewSpec {
                label: p.label,
                version: version(p.version),
                expires_at_ms: p.expires_at_ms,
            })
            .collect(),
        expired_labels: app
            .expired_labels
            .into_iter()
            .map(|e| ExpiredLabel {
                label: e.label,
                expired_at_ms: e.expired_at_ms,
            })
            .collect(),
    }
}

/// A route host with its kind, for messages (the app is filled by the caller).
pub fn route_message(host: RouteHost, app: String) -> proto::RouteInfo {
    let (host, kind) = match host {
        RouteHost::Exact(host) => (host, "exact"),
        RouteHost::Wildcard(suffix) => (format!("*.{suffix}"), "wildcard"),
        RouteHost::Default => (DEFAULT_ROUTE_KEY.to_string(), "default"),
    };
    proto::RouteInfo {
        host,
        kind: kind.to_string(),
        app,
    }
}

/// The route a message describes, or why it cannot be one.
pub fn route_spec(route: proto::RouteInfo) -> Result<RouteSpec, String> {
    let host = match route.kind.as_str() {
        "exact" => RouteHost::Exact(route.host),
        "wildcard" => match route.host.strip_prefix("*.") {
            Some(suffix) => RouteHost::Wildcard(suffix.to_string()),
            None => {
                return Err(format!(
                    "wildcard route {:?} does not start with *.",
                    route.host
                ))
            }
        },
        "default" => RouteHost::Default,
        other => {
            return Err(format!(
                "route kind {other:?} is not exact, wildcard or default"
            ))
        }
    };
    Ok(RouteSpec {
        host,
        app: route.app,
    })
}

/// A version's endpoint as replicas get it.
pub fn endpoint_message(view: &EndpointView) -> proto::Endpoint {
    proto::Endpoint {
        version: view.version.clone(),
        pool: view.pool.clone(),
        addresses: view.addrs.iter().map(SocketAddr::to_string).collect(),
        incarnation: view.incarnation,
        state: view.state.to_string(),
        ready_at_ms: view.ready_at_ms,
        failure: view.failure.clone(),
        retry_after_ms: view.retry_after_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_apps_round_trip() {
        for host in [
            RouteHost::Exact("shop.example.com".into()),
            RouteHost::Wildcard("example.com".into()),
            RouteHost::Default,
        ] {
            let back = route_spec(route_message(host.clone(), "shop".into())).unwrap();
            assert_eq!(back.host, host);
            assert_eq!(back.app, "shop");
        }
        let bad = proto::RouteInfo {
            host: "x".into(),
            kind: "regex".into(),
            app: "a".into(),
        };
        assert!(route_spec(bad).unwrap_err().contains("regex"));
        let app = AppSpec {
            name: "shop".into(),
            active: Some(VersionRef {
                id: "v1".into(),
                state_epoch: 0,
            }),
            previews: vec![PreviewSpec {
                label: "pr-1".into(),
                version: VersionRef {
                    id: "v2".into(),
                    state_epoch: 0,
                },
                expires_at_ms: 5,
            }],
            expired_labels: vec![ExpiredLabel {
                label: "old".into(),
                expired_at_ms: 3,
            }],
        };
        let back = app_spec(app_message(app));
        assert_eq!(back.active.unwrap().id, "v1");
        assert_eq!(back.previews[0].label, "pr-1");
        assert_eq!(back.expired_labels[0].expired_at_ms, 3);
    }
}

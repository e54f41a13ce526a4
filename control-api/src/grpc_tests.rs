//! Every handler checks the caller's role first: each call of the service, made
//! with each role straight through the handlers, is refused exactly when the
//! scope table says, and a refused call changes nothing.

use ingress_proxy::tls::CertStore;
use ingress_proxy::SnapshotHandle;

use super::*;
use crate::certs::CertSettings;
use crate::control_plane::PlaneSettings;
use crate::metrics::ControlMetrics;
use crate::store::SqliteStore;

fn service(dir: &std::path::Path) -> AdminService {
    let mut config = ingress_config::Config::default();
    config.store.data_dir = dir.join("data");
    let plane = ControlPlane::open(
        Box::new(SqliteStore::open(&config.store.data_dir).unwrap()),
        Arc::new(SnapshotHandle::new()),
        PlaneSettings::from_config(&config),
        Arc::new(ControlMetrics::unregistered()),
        Arc::new(|| 1_700_000_000_000),
    )
    .unwrap();
    let store = Arc::new(CertStore::from_config(&config, None));
    let certs = Certs::open(
        Arc::clone(&plane),
        store,
        CertSettings::from_config(&config),
    );
    let (_stop, stopping) = tokio::sync::watch::channel(false);
    AdminService {
        plane,
        certs,
        replicas: None,
        stopping,
    }
}

fn request<T>(message: T, role: Role) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(Caller {
        name: "t".to_string(),
        role,
    });
    request
}

fn app(name: &str) -> proto::AppName {
    proto::AppName {
        name: name.to_string(),
    }
}

/// Makes `rpc` as a token with `role`, with a request that would change
/// something where the call can.
async fn call(service: &AdminService, rpc: Rpc, role: Role) -> Result<(), Status> {
    let version = || proto::VersionName {
        app: "shop".into(),
        version: "v1".into(),
    };
    match rpc {
        Rpc::CreateApp => service
            .create_app(request(app("made"), role))
            .await
            .map(drop),
        Rpc::DeleteApp => service
            .delete_app(request(app("shop"), role))
            .await
            .map(drop),
        Rpc::ListApps => service
            .list_apps(request(proto::Empty {}, role))
            .await
            .map(drop),
        Rpc::AddRoute => service
            .add_route(request(
                proto::RouteRequest {
                    host: "made.example.com".into(),
                    app: "shop".into(),
                },
                role,
            ))
            .await
            .map(drop),
        Rpc::RemoveRoute => service
            .remove_route(request(
                proto::RouteRequest {
                    host: "shop.example.com".into(),
                    app: String::new(),
                },
                role,
            ))
            .await
            .map(drop),
        Rpc::SetDefaultRoute => service
            .set_default_route(request(app("shop"), role))
            .await
            .map(drop),
        Rpc::ListRoutes => service
            .list_routes(request(proto::Empty {}, role))
            .await
            .map(drop),
        Rpc::Deploy => service
            .deploy(request(
                proto::DeployRequest {
                    app: "shop".into(),
                    upstreams: vec!["127.0.0.1:9".into()],
                    ..Default::default()
                },
                role,
            ))
            .await
            .map(drop),
        Rpc::ListVersions => service
            .list_versions(request(
                proto::ListVersionsRequest {
                    app: "shop".into(),
                    ephemeral_only: false,
                },
                role,
            ))
            .await
            .map(drop),
        Rpc::DeleteVersion => service
            .delete_version(request(version(), role))
            .await
            .map(drop),
        Rpc::Import => {
            let stream = Streaming::new_request(
                tonic_prost::ProstDecoder::<proto::ImportApp>::default(),
                tonic::body::Body::empty(),
                None,
                None,
            );
            service.import(request(stream, role)).await.map(drop)
        }
        Rpc::StopVersion => service
            .stop_version(request(
                proto::StopRequest {
                    app: "shop".into(),
                    version: "v1".into(),
                    force: true,
                },
                role,
            ))
            .await
            .map(drop),
        Rpc::WakeVersion => service
            .wake_version(request(
                proto::WakeRequest {
                    app: "shop".into(),
                    version: "v1".into(),
                    wait: false,
                    timeout_ms: 0,
                },
                role,
            ))
            .await
            .map(drop),
        Rpc::Logs => service
            .logs(request(
                proto::LogsRequest {
                    app: "shop".into(),
                    version: "v1".into(),
                    max_bytes: 0,
                },
                role,
            ))
            .await
            .map(drop),
        Rpc::Audit => service
            .audit(request(proto::AuditRequest { limit: 0 }, role))
            .await
            .map(drop),
        Rpc::Watch => service
            .watch(request(proto::Empty {}, role))
            .await
            .map(drop),
        Rpc::CertAdd => service
            .cert_add(request(proto::CertAddRequest::default(), role))
            .await
            .map(drop),
        Rpc::CertList => service
            .cert_list(request(proto::Empty {}, role))
            .await
            .map(drop),
        Rpc::CertShow => service
            .cert_show(request(proto::CertName { name: "x".into() }, role))
            .await
            .map(drop),
        Rpc::CertRemove => service
            .cert_remove(request(proto::CertName { name: "x".into() }, role))
            .await
            .map(drop),
        Rpc::CertReload => service
            .cert_reload(request(proto::Empty {}, role))
            .await
            .map(drop),
        Rpc::CertCheck => service
            .cert_check(request(
                proto::CertCheckRequest {
                    host: "shop.example.com".into(),
                },
                role,
            ))
            .await
            .map(drop),
        Rpc::ListNodes => service
            .list_nodes(request(proto::Empty {}, role))
            .await
            .map(drop),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_checks_the_role_first() {
    let dir = tempfile::tempdir().unwrap();
    let service = service(dir.path());
    service.plane.create_app("setup", "shop").unwrap();
    service
        .plane
        .add_route("setup", "shop.example.com", "shop")
        .unwrap();
    let before = (
        service.plane.apps().len(),
        service.plane.routes(),
        service.plane.audit_log(100).unwrap().len(),
    );
    for role in [Role::Read, Role::Replica] {
        for rpc in Rpc::ALL {
            let result = call(&service, rpc, role).await;
            let refused = matches!(&result, Err(s) if s.code() == tonic::Code::PermissionDenied);
            let allowed = rpc.roles().contains(&role);
            assert_eq!(refused, !allowed, "{role} {rpc:?}: {result:?}");
            if let Err(status) = &result {
                if refused {
                    let message = status.message();
                    assert!(
                        message.starts_with(&format!("token \"t\" has role {role}, which ")),
                        "{message}"
                    );
                    assert!(message.contains(rpc.action()), "{message}");
                }
            }
        }
    }
    let after = (
        service.plane.apps().len(),
        service.plane.routes(),
        service.plane.audit_log(100).unwrap().len(),
    );
    assert_eq!(
        before, after,
        "a refused or read-only call changed something"
    );
    for rpc in Rpc::ALL {
        let result = call(&service, rpc, Role::Admin).await;
        assert!(
            !matches!(&result, Err(s) if s.code() == tonic::Code::PermissionDenied),
            "admin {rpc:?}: {result:?}"
        );
    }
    let audited = service.plane.audit_log(100).unwrap();
    assert!(
        audited
            .iter()
            .any(|e| e.actor == "t" && e.action == "app.create"),
        "the audit log names the token: {:?}",
        audited
            .iter()
            .map(|e| (&e.actor, &e.action))
            .collect::<Vec<_>>()
    );
}

fn report(node: &str, epoch: &str, applied: u64) -> proto::ActivityReport {
    proto::ActivityReport {
        node_id: node.into(),
        address: format!("127.0.0.1:80{}", node.len()),
        epoch: epoch.into(),
        applied_generation: applied,
        versions: Vec::new(),
    }
}

#[test]
fn list_nodes_gives_each_live_replica_its_lag_or_resync() {
    let dir = tempfile::tempdir().unwrap();
    let mut service = service(dir.path());
    // Not a control node: an empty list that says why.
    let list = node_list(&service.plane, service.replicas.as_ref(), 5_000);
    assert!(!list.serves_replicas && list.nodes.is_empty());
    assert!(
        list.note.contains("node.role = \"control\""),
        "{}",
        list.note
    );
    let feed = Arc::new(crate::replication::Feed::new());
    for _ in 0..5 {
        feed.routing(&ingress_proxy::SnapshotDelta::default());
    }
    let nodes = Arc::new(crate::replication::Nodes::new(Duration::from_secs(1)));
    let activity = ingress_proxy::ActivityRegistry::default();
    let epoch = feed.epoch().to_string();
    nodes.report(report("current", &epoch, 5), 4_000, &activity);
    nodes.report(report("behind", &epoch, 3), 4_500, &activity);
    nodes.report(report("other-run", "0011", 9), 4_900, &activity);
    nodes.report(report("silent", &epoch, 5), 1_000, &activity);
    service.replicas = Some(Replicas {
        feed: Arc::clone(&feed),
        nodes,
    });
    let list = node_list(&service.plane, service.replicas.as_ref(), 5_000);
    assert!(list.serves_replicas && list.note.is_empty());
    assert_eq!((list.epoch.as_str(), list.generation), (epoch.as_str(), 5));
    let rows: Vec<(&str, u64, Option<u64>, u64)> = list
        .nodes
        .iter()
        .map(|n| {
            (
                n.id.as_str(),
                n.applied_generation,
                n.lag,
                n.reported_ago_ms,
            )
        })
        .collect();
    // "silent" reported 4 s ago, past three 1 s intervals: not listed.
    assert_eq!(
        rows,
        [
            ("behind", 3, Some(2), 500),
            ("current", 5, Some(0), 1_000),
            ("other-run", 9, None, 100),
        ]
    );
}

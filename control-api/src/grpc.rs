//! The gRPC admin API (tonic): bearer-token authentication, the token's scope
//! checked first in every call ([`crate::scopes`]), and a thin mapping of each
//! call onto a [`ControlPlane`] operation. Operations run on tokio's blocking
//! pool because they commit to the store with fsync.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use subtle::ConstantTimeEq;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status, Streaming};

use crate::certs::{CertAdd, CertView, Certs};
use crate::control_plane::{
    ControlError, ControlPlane, DeployRequest, DeploySource, ErrorKind, ImportApp, ImportPreview,
    VersionView, MAX_IMPORT_APPS,
};
use crate::model::{Environment, ReadyCheck, Route};
use crate::scopes::{self, Role, Rpc};

/// The generated protobuf types and gRPC client and server.
pub mod proto {
    tonic::include_proto!("ingress.v1");

    /// `proto/ingress.proto` as an encoded `FileDescriptorSet` (with its
    /// comments), for gRPC server reflection ([`crate::grpc_tools`]).
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/ingress_descriptor.bin"));
}

use proto::admin_server::{Admin, AdminServer};

/// One accepted bearer token.
#[derive(Clone)]
pub struct Token {
    /// Recorded in the audit log as the actor.
    pub name: String,
    pub secret: String,
    /// What the token may call.
    pub role: Role,
}

/// A token as the authenticator keeps it: the SHA-256 of its secret, so that
/// comparisons take the same time whatever the presented length.
struct KnownToken {
    name: String,
    role: Role,
    digest: [u8; 32],
}

fn known(tokens: Vec<Token>) -> Vec<KnownToken> {
    tokens
        .into_iter()
        .map(|token| KnownToken {
            digest: digest(token.secret.as_bytes()),
            name: token.name,
            role: token.role,
        })
        .collect()
}

fn digest(secret: &[u8]) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::digest(secret).into()
}

/// The token that authenticated a request (a request extension): its name and
/// role.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name: the audit log's actor.
    pub name: String,
    /// What the token may call.
    pub role: Role,
}

/// Checks `authorization: Bearer <secret>` against every token in constant time.
#[derive(Clone)]
pub struct Authenticator {
    /// Shared by every clone; a config reload swaps the whole list.
    tokens: Arc<arc_swap::ArcSwap<Vec<KnownToken>>>,
}

impl Authenticator {
    /// Accepts the given tokens. With none, every call is refused.
    pub fn new(tokens: Vec<Token>) -> Authenticator {
        Authenticator {
            tokens: Arc::new(arc_swap::ArcSwap::from_pointee(known(tokens))),
        }
    }

    /// Accepts `tokens` from now on, instead of the ones before (for every
    /// clone of this authenticator). Calls already admitted go on.
    pub fn replace(&self, tokens: Vec<Token>) {
        self.tokens.store(Arc::new(known(tokens)));
    }

    fn check(&self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(|value| value.as_bytes());
        let caller = self.authenticate(header).map_err(Status::unauthenticated)?;
        request.extensions_mut().insert(caller);
        Ok(request)
    }

    /// The token an `authorization` header value (`Bearer <secret>`) presents,
    /// if it is one of the accepted tokens; else why not, in one line. Shared by
    /// the gRPC API and the dashboard ([`crate::dashboard`]).
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Caller, String> {
        let Some(header) = header else {
            return Err("missing bearer token: pass --token or set INGRESS_TOKEN".to_string());
        };
        let presented = std::str::from_utf8(header)
            .ok()
            .and_then(|value| value.strip_prefix("Bearer "))
            .ok_or_else(|| "the authorization header must be `Bearer <token>`".to_string())?;
        // Compare digests (fixed length) against every token, without stopping
        // early, in constant time. Config refuses two tokens with one secret.
        let presented = digest(presented.as_bytes());
        let mut caller = None;
        for token in self.tokens.load().iter() {
            if bool::from(token.digest.ct_eq(&presented)) {
                caller = Some(Caller {
                    name: token.name.clone(),
                    role: token.role,
                });
            }
        }
        caller.ok_or_else(|| "the bearer token is not valid".to_string())
    }
}

impl tonic::service::Interceptor for Authenticator {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request)
    }
}

/// The longest wait a wake may ask for (`ingressctl wake --timeout`).
pub const MAX_WAKE_WAIT_MS: u64 = 600_000;

/// How long a wake waits for readiness: `None` when it does not wait, the
/// plane's default (`wake.timeout`) for a `timeout_ms` of 0, else `timeout_ms`,
/// which may be at most [`MAX_WAKE_WAIT_MS`] (else the refusal names
/// `field`). Shared by `WakeVersion` and the dashboard.
pub(crate) fn wake_wait(
    plane: &ControlPlane,
    wait: bool,
    timeout_ms: u64,
    field: &str,
) -> Result<Option<Duration>, String> {
    if timeout_ms > MAX_WAKE_WAIT_MS {
        return Err(format!(
            "{field} may be at most {}s",
            MAX_WAKE_WAIT_MS / 1000
        ));
    }
    Ok(wait.then(|| {
        if timeout_ms == 0 {
            plane.default_wake_wait()
        } else {
            Duration::from_millis(timeout_ms)
        }
    }))
}

/// On a control node: the routing stream and the replicas following it, for
/// `ListNodes`.
#[derive(Clone)]
pub struct Replicas {
    pub feed: Arc<crate::replication::Feed>,
    pub nodes: Arc<crate::replication::Nodes>,
}

/// The admin service over a control plane.
pub struct AdminService {
    plane: Arc<ControlPlane>,
    certs: Arc<Certs>,
    /// `None` on a node that serves no replicas.
    replicas: Option<Replicas>,
    /// Becomes true when the ingress stops; ends open `Watch` streams so that the
    /// server can drain.
    stopping: tokio::sync::watch::Receiver<bool>,
}

/// The admin service with authentication, ready for a tonic `Server`. Open `Watch`
/// streams end when `stopping` becomes true. `replicas` is set on a control
/// node (`ListNodes` lists them).
pub fn admin_service(
    plane: Arc<ControlPlane>,
    certs: Arc<Certs>,
    replicas: Option<Replicas>,
    authenticator: Authenticator,
    stopping: tokio::sync::watch::Receiver<bool>,
) -> InterceptedService<AdminServer<AdminService>, Authenticator> {
    AdminServer::with_interceptor(
        AdminService {
            plane,
            certs,
            replicas,
            stopping,
        },
        authenticator,
    )
}

fn status(error: ControlError) -> Status {
    match error.kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(error.message),
        ErrorKind::NotFound => Status::not_found(error.message),
        ErrorKind::AlreadyExists => Status::already_exists(error.message),
        ErrorKind::FailedPrecondition => Status::failed_precondition(error.message),
        ErrorKind::Unavailable => Status::unavailable(error.message),
        ErrorKind::Internal => Status::internal(error.message),
    }
}

/// The first step of every call: the name of the token that made it (the
/// audit log's actor), if its role may make `rpc` ([`scopes::check`]).
/// For the `Replication` service: the caller's name when its role is `replica`
/// or `admin`, else `PermissionDenied` naming the token, its role and the call.
pub(crate) fn authorize_replica<T>(request: &Request<T>, call: &str) -> Result<String, Status> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))?;
    match caller.role {
        Role::Admin | Role::Replica => Ok(caller.name.clone()),
        role => Err(Status::permission_denied(format!(
            "token {:?} has role {}, which may not act as a replica; {call} needs role replica or admin",
            caller.name,
            role.as_str()
        ))),
    }
}

fn authorize<T>(request: &Request<T>, rpc: Rpc) -> Result<String, Status> {
    let caller = request
        .extensions()
        .get::<Caller>()
        .ok_or_else(|| Status::unauthenticated("the request was not authenticated"))?;
    scopes::check(&caller.name, caller.role, rpc).map_err(Status::permission_denied)?;
    Ok(caller.name.clone())
}

/// Runs a control-plane operation on the blocking pool.
async fn run<T: Send + 'static>(
    plane: &Arc<ControlPlane>,
    operation: impl FnOnce(&ControlPlane) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, Status> {
    let plane = Arc::clone(plane);
    tokio::task::spawn_blocking(move || operation(&plane))
        .await
        .map_err(|e| Status::internal(format!("the operation did not finish: {e}")))?
        .map_err(status)
}

/// Runs a certificate operation on the blocking pool (it commits, or reads
/// `tls.cert_dir`).
async fn run_certs<T: Send + 'static>(
    certs: &Arc<Certs>,
    operation: impl FnOnce(&Certs) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, Status> {
    let certs = Arc::clone(certs);
    tokio::task::spawn_blocking(move || operation(&certs))
        .await
        .map_err(|e| Status::internal(format!("the operation did not finish: {e}")))?
        .map_err(status)
}

/// What a reply shows of a certificate: never its key.
fn cert_info(view: CertView) -> proto::CertInfo {
    proto::CertInfo {
        not_before: ingress_proxy::tls::format_unix(view.not_before),
        not_after: view.not_after_text(),
        name: view.name,
        names: view.names,
        not_before_unix: view.not_before,
        not_after_unix: view.not_after,
        status: view.status.as_str().to_string(),
        source: view.source.to_string(),
        file: view.file,
        issuer: view.issuer,
        subject: view.subject,
        fingerprint: view.fingerprint,
        covers: view
            .covers
            .into_iter()
            .map(|cover| proto::CertCover {
                host: cover.host,
                app: cover.app,
                kind: cover.kind.to_string(),
            })
            .collect(),
    }
}

fn route_info(route: &Route) -> proto::RouteInfo {
    proto::RouteInfo {
        host: route.key(),
        kind: route.kind.as_str().to_string(),
        app: route.app.clone(),
    }
}

fn version_info(view: VersionView) -> proto::VersionInfo {
    proto::VersionInfo {
        id: view.id,
        app: view.app,
        status: view.status.as_str().to_string(),
        label: view.label,
        expires_at_ms: view.expires_at_ms,
        env: view.env.as_str().to_string(),
        branch: view.branch,
        desired_state: view.desired_state.as_str().to_string(),
        created_at_ms: view.created_at_ms,
        cloned_from: view.cloned_from,
        upstreams: view.upstreams.iter().map(ToString::to_string).collect(),
        addresses: view.addresses.iter().map(ToString::to_string).collect(),
        urls: view.urls,
        observed_state: view.observed_state.as_str().to_string(),
        failure: view.failure,
        last_activity_at_ms: view.last_activity_at_ms,
        pending: view.pending.map(|p| proto::PendingChange {
            desired_state: p.desired.as_str().to_string(),
            due_at_ms: p.due_at_ms,
            reason: p.reason.as_str().to_string(),
            actor: p.actor,
        }),
        runtime: view.runtime.to_string(),
        command: view.command,
    }
}

fn socket_addrs(texts: &[String]) -> Result<Vec<SocketAddr>, String> {
    texts
        .iter()
        .map(|text| {
            text.parse::<SocketAddr>().map_err(|_| {
                format!("upstream {text:?} is not an address; write IP:PORT, for example 127.0.0.1:3000")
            })
        })
        .collect()
}

fn import_app(record: proto::ImportApp) -> Result<ImportApp, String> {
    let previews = record
        .previews
        .into_iter()
        .map(|preview| {
            Ok(ImportPreview {
                upstreams: socket_addrs(&preview.upstreams)?,
                label: preview.label,
                branch: preview.branch,
                ttl: preview.ttl,
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ImportApp {
        upstreams: socket_addrs(&record.upstreams)?,
        app: record.app,
        hosts: record.hosts,
        previews,
    })
}

fn deploy_request(request: proto::DeployRequest) -> Result<DeployRequest, Status> {
    if request.command.is_none() && (request.ready_path.is_some() || request.ready_tcp) {
        return Err(Status::invalid_argument(
            "--ready-path and --ready-tcp are only for --command deploys",
        ));
    }
    let source = match (
        request.upstreams.is_empty(),
        request.version,
        request.command,
    ) {
        (true, None, Some(command)) => {
            let ready = match (request.ready_path, request.ready_tcp) {
                (Some(_), true) => {
                    return Err(Status::invalid_argument(
                        "give at most one of --ready-path PATH and --ready-tcp",
                    ))
                }
                (_, true) => ReadyCheck::Tcp,
                (path, false) => ReadyCheck::Http {
                    path: path.unwrap_or_else(|| "/".to_string()),
                },
            };
            DeploySource::Command { command, ready }
        }
        (false, None, None) => {
            let addrs = socket_addrs(&request.upstreams).map_err(Status::invalid_argument)?;
            DeploySource::Upstreams(addrs)
        }
        (true, Some(version), None) => DeploySource::Version(version),
        _ => {
            return Err(Status::invalid_argument(
                "give exactly one of --upstream ADDR[,ADDR...], --command CMD and --version ID",
            ))
        }
    };
    let env = match request.env.as_deref() {
        None => None,
        Some(text) => Some(Environment::parse(text).ok_or_else(|| {
            Status::invalid_argument(format!(
                "--env {text:?} is not allowed; use production or preview"
            ))
        })?),
    };
    let ephemeral = match (request.ephemeral_label, request.ttl) {
        (Some(label), ttl) => Some((label, ttl)),
        (None, Some(_)) => {
            return Err(Status::invalid_argument(
                "--ttl is only for --ephemeral deploys",
            ))
        }
        (None, None) => None,
    };
    Ok(DeployRequest {
        app: request.app,
        source,
        env,
        branch: request.branch,
        ephemeral,
    })
}

fn snapshot_message(generation: u64, input: ingress_proxy::SnapshotInput) -> proto::Snapshot {
    use crate::replication::wire::{app_message, route_message};
    proto::Snapshot {
        generation,
        apps: input.apps.into_iter().map(app_message).collect(),
        routes: input
            .routes
            .into_iter()
            .map(|r| route_message(r.host, r.app))
            .collect(),
    }
}

/// What `ListNodes` answers at `now_ms`: the live replicas with their lag
/// behind `replicas`' feed, or, on a node without replicas, an empty list with
/// a note and the routing generation of `plane`.
fn node_list(plane: &ControlPlane, replicas: Option<&Replicas>, now_ms: u64) -> proto::NodeList {
    let Some(replicas) = replicas else {
        return proto::NodeList {
            serves_replicas: false,
            note: "this node serves no replicas: it is not a control node (node.role = \"control\"); ask the control node, or set its role".to_string(),
            epoch: String::new(),
            generation: *plane.subscribe().borrow(),
            now_ms,
            nodes: Vec::new(),
        };
    };
    let epoch = replicas.feed.epoch().to_string();
    let generation = replicas.feed.generation();
    let nodes = replicas
        .nodes
        .live(now_ms)
        .into_iter()
        .map(|node| proto::NodeInfo {
            lag: (node.epoch == epoch).then(|| generation.saturating_sub(node.applied_generation)),
            id: node.id,
            address: node.address,
            epoch: node.epoch,
            applied_generation: node.applied_generation,
            reported_at_ms: node.reported_at_ms,
            reported_ago_ms: now_ms.saturating_sub(node.reported_at_ms),
        })
        .collect();
    proto::NodeList {
        serves_replicas: true,
        note: String::new(),
        epoch,
        generation,
        now_ms,
        nodes,
    }
}

/// The stream of snapshots a `Watch` call returns.
pub type SnapshotStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<proto::Snapshot, Status>> + Send>>;

#[tonic::async_trait]
impl Admin for AdminService {
    type WatchStream = SnapshotStream;

    async fn watch(
        &self,
        request: Request<proto::Empty>,
    ) -> Result<Response<SnapshotStream>, Status> {
        authorize(&request, Rpc::Watch)?;
        let plane = Arc::clone(&self.plane);
        let mut published = plane.subscribe();
        let mut stopping = self.stopping.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(4);
        tokio::spawn(async move {
            loop {
                // Mark the current value seen before reading the state, so a change
                // committed meanwhile wakes the next wait.
                published.borrow_and_update();
                let plane_now = Arc::clone(&plane);
                let Ok((generation, input)) =
                    tokio::task::spawn_blocking(move || plane_now.current_snapshot()).await
                else {
                    return;
                };
                if sender
                    .send(Ok(snapshot_message(generation, input)))
                    .await
                    .is_err()
                {
                    return; // the watcher went away
                }
                tokio::select! {
                    changed = published.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn create_app(
        &self,
        request: Request<proto::AppName>,
    ) -> Result<Response<proto::Empty>, Status> {
        let actor = authorize(&request, Rpc::CreateApp)?;
        let name = request.into_inner().name;
        run(&self.plane, move |plane| plane.create_app(&actor, &name)).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn delete_app(
        &self,
        request: Request<proto::AppName>,
    ) -> Result<Response<proto::Empty>, Status> {
        let actor = authorize(&request, Rpc::DeleteApp)?;
        let name = request.into_inner().name;
        run(&self.plane, move |plane| plane.delete_app(&actor, &name)).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn list_apps(
        &self,
        request: Request<proto::Empty>,
    ) -> Result<Response<proto::AppList>, Status> {
        authorize(&request, Rpc::ListApps)?;
        let apps = run(&self.plane, |plane| Ok(plane.apps())).await?;
        Ok(Response::new(proto::AppList {
            apps: apps
                .into_iter()
                .map(|app| proto::AppInfo {
                    name: app.name,
                    created_at_ms: app.created_at_ms,
                    active_version: app.active_version,
                })
                .collect(),
        }))
    }

    async fn add_route(
        &self,
        request: Request<proto::RouteRequest>,
    ) -> Result<Response<proto::RouteInfo>, Status> {
        let actor = authorize(&request, Rpc::AddRoute)?;
        let proto::RouteRequest { host, app } = request.into_inner();
        let route = run(&self.plane, move |plane| {
            plane.add_route(&actor, &host, &app)
        })
        .await?;
        Ok(Response::new(route_info(&route)))
    }

    async fn remove_route(
        &self,
        request: Request<proto::RouteRequest>,
    ) -> Result<Response<proto::Empty>, Status> {
        let actor = authorize(&request, Rpc::RemoveRoute)?;
        let host = request.into_inner().host;
        run(&self.plane, move |plane| plane.remove_route(&actor, &host)).await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn set_default_route(
        &self,
        request: Request<proto::AppName>,
    ) -> Result<Response<proto::RouteInfo>, Status> {
        let actor = authorize(&request, Rpc::SetDefaultRoute)?;
        let app = request.into_inner().name;
        let route = run(&self.plane, move |plane| {
            plane.set_default_route(&actor, &app)
        })
        .await?;
        Ok(Response::new(route_info(&route)))
    }

    async fn list_routes(
        &self,
        request: Request<proto::Empty>,
    ) -> Result<Response<proto::RouteList>, Status> {
        authorize(&request, Rpc::ListRoutes)?;
        let routes = run(&self.plane, |plane| Ok(plane.routes())).await?;
        Ok(Response::new(proto::RouteList {
            routes: routes.iter().map(route_info).collect(),
        }))
    }

    async fn deploy(
        &self,
        request: Request<proto::DeployRequest>,
    ) -> Result<Response<proto::DeployReply>, Status> {
        let actor = authorize(&request, Rpc::Deploy)?;
        let deploy = deploy_request(request.into_inner())?;
        let outcome = run(&self.plane, move |plane| plane.deploy(&actor, &deploy)).await?;
        Ok(Response::new(proto::DeployReply {
            version: Some(version_info(outcome.version)),
            replaced: outcome.replaced,
            evicted: outcome.evicted,
        }))
    }

    async fn import(
        &self,
        request: Request<Streaming<proto::ImportApp>>,
    ) -> Result<Response<proto::ImportReply>, Status> {
        let actor = authorize(&request, Rpc::Import)?;
        let mut stream = request.into_inner();
        let mut apps = Vec::new();
        while let Some(record) = stream.message().await? {
            if apps.len() == MAX_IMPORT_APPS {
                return Err(Status::invalid_argument(format!(
                    "one import creates at most {MAX_IMPORT_APPS} apps; split the file"
                )));
            }
            let index = apps.len() + 1;
            apps.push(
                import_app(record).map_err(|message| {
                    Status::invalid_argument(format!("app #{index}: {message}"))
                })?,
            );
        }
        let report = run(&self.plane, move |plane| plane.import(&actor, &apps)).await?;
        Ok(Response::new(proto::ImportReply {
            apps: report.apps as u64,
            routes: report.routes as u64,
            versions: report.versions as u64,
        }))
    }

    async fn stop_version(
        &self,
        request: Request<proto::StopRequest>,
    ) -> Result<Response<proto::VersionInfo>, Status> {
        let actor = authorize(&request, Rpc::StopVersion)?;
        let proto::StopRequest {
            app,
            version,
            force,
        } = request.into_inner();
        let view = run(&self.plane, move |plane| {
            plane.stop_version(&actor, &app, &version, force)
        })
        .await?;
        Ok(Response::new(version_info(view)))
    }

    async fn wake_version(
        &self,
        request: Request<proto::WakeRequest>,
    ) -> Result<Response<proto::VersionInfo>, Status> {
        let actor = authorize(&request, Rpc::WakeVersion)?;
        let proto::WakeRequest {
            app,
            version,
            wait,
            timeout_ms,
        } = request.into_inner();
        let wait = wake_wait(&self.plane, wait, timeout_ms, "--timeout")
            .map_err(Status::invalid_argument)?;
        // The wake's store commit takes a few milliseconds; the wait for
        // readiness is asynchronous.
        let view = self
            .plane
            .wake_version(&actor, &app, &version, wait)
            .await
            .map_err(status)?;
        Ok(Response::new(version_info(view)))
    }

    async fn logs(
        &self,
        request: Request<proto::LogsRequest>,
    ) -> Result<Response<proto::LogsReply>, Status> {
        authorize(&request, Rpc::Logs)?;
        let proto::LogsRequest {
            app,
            version,
            max_bytes,
        } = request.into_inner();
        let max_bytes = match max_bytes {
            0 => 64 * 1024,
            n => usize::try_from(n).unwrap_or(usize::MAX),
        };
        let text = run(&self.plane, move |plane| {
            plane.logs(&app, &version, max_bytes)
        })
        .await?;
        Ok(Response::new(proto::LogsReply { text }))
    }

    async fn list_versions(
        &self,
        request: Request<proto::ListVersionsRequest>,
    ) -> Result<Response<proto::VersionList>, Status> {
        authorize(&request, Rpc::ListVersions)?;
        let proto::ListVersionsRequest {
            app,
            ephemeral_only,
        } = request.into_inner();
        let views = run(&self.plane, move |plane| {
            plane.versions(&app, ephemeral_only)
        })
        .await?;
        Ok(Response::new(proto::VersionList {
            versions: views.into_iter().map(version_info).collect(),
        }))
    }

    async fn delete_version(
        &self,
        request: Request<proto::VersionName>,
    ) -> Result<Response<proto::Empty>, Status> {
        let actor = authorize(&request, Rpc::DeleteVersion)?;
        let proto::VersionName { app, version } = request.into_inner();
        run(&self.plane, move |plane| {
            plane.delete_version(&actor, &app, &version)
        })
        .await?;
        Ok(Response::new(proto::Empty {}))
    }

    async fn audit(
        &self,
        request: Request<proto::AuditRequest>,
    ) -> Result<Response<proto::AuditList>, Status> {
        authorize(&request, Rpc::Audit)?;
        let limit = match request.into_inner().limit {
            0 => 50,
            n => n.min(10_000) as usize,
        };
        let entries = run(&self.plane, move |plane| plane.audit_log(limit)).await?;
        Ok(Response::new(proto::AuditList {
            entries: entries
                .into_iter()
                .map(|e| proto::AuditEntry {
                    at_ms: e.at_ms,
                    actor: e.actor,
                    action: e.action,
                    target: e.target,
                    detail: e.detail,
                })
                .collect(),
        }))
    }

    async fn cert_add(
        &self,
        request: Request<proto::CertAddRequest>,
    ) -> Result<Response<proto::CertInfo>, Status> {
        let actor = authorize(&request, Rpc::CertAdd)?;
        let proto::CertAddRequest {
            cert_pem,
            key_pem,
            name,
            force,
        } = request.into_inner();
        let add = CertAdd {
            chain_pem: cert_pem,
            key_pem,
            name,
            force,
        };
        let view = run_certs(&self.certs, move |certs| certs.add(&actor, add)).await?;
        Ok(Response::new(cert_info(view)))
    }

    async fn cert_list(
        &self,
        request: Request<proto::Empty>,
    ) -> Result<Response<proto::CertList>, Status> {
        authorize(&request, Rpc::CertList)?;
        let views = run_certs(&self.certs, |certs| Ok(certs.list())).await?;
        Ok(Response::new(proto::CertList {
            certificates: views.into_iter().map(cert_info).collect(),
        }))
    }

    async fn cert_show(
        &self,
        request: Request<proto::CertName>,
    ) -> Result<Response<proto::CertInfo>, Status> {
        authorize(&request, Rpc::CertShow)?;
        let name = request.into_inner().name;
        let view = run_certs(&self.certs, move |certs| certs.show(&name)).await?;
        Ok(Response::new(cert_info(view)))
    }

    async fn cert_remove(
        &self,
        request: Request<proto::CertName>,
    ) -> Result<Response<proto::CertInfo>, Status> {
        let actor = authorize(&request, Rpc::CertRemove)?;
        let name = request.into_inner().name;
        let view = run_certs(&self.certs, move |certs| certs.remove(&actor, &name)).await?;
        Ok(Response::new(cert_info(view)))
    }

    async fn cert_reload(
        &self,
        request: Request<proto::Empty>,
    ) -> Result<Response<proto::CertReloadReply>, Status> {
        let actor = authorize(&request, Rpc::CertReload)?;
        let report = run_certs(&self.certs, move |certs| certs.reload(Some(&actor))).await?;
        Ok(Response::new(proto::CertReloadReply {
            loaded: report.loaded.into_iter().map(cert_info).collect(),
            refused: report
                .refused
                .into_iter()
                .map(|r| proto::CertRefused {
                    file: r.file,
                    problem: r.problem,
                })
                .collect(),
        }))
    }

    async fn list_nodes(
        &self,
        request: Request<proto::Empty>,
    ) -> Result<Response<proto::NodeList>, Status> {
        authorize(&request, Rpc::ListNodes)?;
        let now_ms = ingress_proxy::time::now_unix_millis();
        Ok(Response::new(node_list(
            &self.plane,
            self.replicas.as_ref(),
            now_ms,
        )))
    }

    async fn cert_check(
        &self,
        request: Request<proto::CertCheckRequest>,
    ) -> Result<Response<proto::CertCheckReply>, Status> {
        authorize(&request, Rpc::CertCheck)?;
        let host = request.into_inner().host;
        let check = run_certs(&self.certs, move |certs| certs.check(&host)).await?;
        Ok(Response::new(proto::CertCheckReply {
            host: check.host,
            reason: check.reason.as_str().to_string(),
            certificate: check.cert.map(cert_info),
            detail: check.detail,
        }))
    }
}

#[cfg(test)]
#[path = "grpc_tests.rs"]
mod tests;

//! The standard gRPC services beside the admin API on `admin.grpc_listen`, so
//! that generic tools work against it:
//!
//! - **Server reflection** (`grpc.reflection.v1` and `v1alpha`, from
//!   `tonic-reflection`): lists the services this listener serves and hands out
//!   their descriptors, `proto/ingress.proto` with its comments included, so
//!   `grpcurl ... list` and `grpcurl ... describe ingress.v1.Admin` work without
//!   the proto file. Behind the same bearer check as the `Admin` service (any
//!   role).
//! - **Health** (`grpc.health.v1.Health`, from `tonic-health`): `""` (the
//!   server), `ingress.v1.Admin` and, on a control node, `ingress.v1.Replication`
//!   are `SERVING` while the ingress runs and `NOT_SERVING` once it stops. Open
//!   without a token: load balancers and orchestrator probes call it without
//!   credentials, and it reveals only a status.

use std::pin::Pin;

use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus as WireStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_health::server::{HealthReporter, HealthService};
use tonic_health::ServingStatus;
use tonic_reflection::server::{v1, v1alpha, Builder};

use crate::grpc::{proto, Authenticator};

/// `ingress.v1.Admin`.
pub const ADMIN: &str = proto::admin_server::SERVICE_NAME;
/// `ingress.v1.Replication` (served on a control node only).
pub const REPLICATION: &str = proto::replication_server::SERVICE_NAME;
/// `grpc.health.v1.Health`.
pub const HEALTH: &str = tonic_health::pb::health_server::SERVICE_NAME;
/// `grpc.reflection.v1.ServerReflection`.
pub const REFLECTION_V1: &str = tonic_reflection::pb::v1::server_reflection_server::SERVICE_NAME;
/// `grpc.reflection.v1alpha.ServerReflection`.
pub const REFLECTION_V1ALPHA: &str =
    tonic_reflection::pb::v1alpha::server_reflection_server::SERVICE_NAME;

/// The ingress's own services on the listener: `Admin`, and `Replication` on a
/// control node.
pub fn own_services(replication: bool) -> Vec<&'static str> {
    let mut services = vec![ADMIN];
    if replication {
        services.push(REPLICATION);
    }
    services
}

/// A reflection builder that knows every descriptor served here and lists
/// exactly the services this listener serves (the proto's `Replication` only
/// when `own` has it), whichever reflection version is asked.
fn builder(own: &[&'static str]) -> Builder<'static> {
    let mut builder = Builder::configure()
        .include_reflection_service(false)
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET);
    for name in own
        .iter()
        .chain(&[HEALTH, REFLECTION_V1, REFLECTION_V1ALPHA])
    {
        builder = builder.with_service_name(*name);
    }
    builder
}

/// Server reflection v1, behind `authenticator`.
pub fn reflection_v1(
    own: &[&'static str],
    authenticator: Authenticator,
) -> Result<
    InterceptedService<v1::ServerReflectionServer<impl v1::ServerReflection>, Authenticator>,
    String,
> {
    let service = builder(own)
        .build_v1()
        .map_err(|e| format!("gRPC reflection: {e}"))?;
    Ok(InterceptedService::new(service, authenticator))
}

/// Server reflection v1alpha (what older `grpcurl` and `grpc_cli` ask), behind
/// `authenticator`.
pub fn reflection_v1alpha(
    own: &[&'static str],
    authenticator: Authenticator,
) -> Result<
    InterceptedService<
        v1alpha::ServerReflectionServer<impl v1alpha::ServerReflection>,
        Authenticator,
    >,
    String,
> {
    let service = builder(own)
        .build_v1alpha()
        .map_err(|e| format!("gRPC reflection: {e}"))?;
    Ok(InterceptedService::new(service, authenticator))
}

/// The health service: `""` and every name in `own` `SERVING` now, and all of
/// them `NOT_SERVING` once `stopping` becomes true (a task waits for it). Open
/// `Watch` streams then get `NOT_SERVING` and end, so they do not hold up the
/// server's drain.
pub async fn health_service(
    own: &[&'static str],
    stopping: watch::Receiver<bool>,
) -> HealthServer<AdminHealth> {
    let reporter = HealthReporter::new();
    for name in own {
        reporter
            .set_service_status(name, ServingStatus::Serving)
            .await;
    }
    let names: Vec<&'static str> = std::iter::once("").chain(own.iter().copied()).collect();
    let mut stopped = stopping.clone();
    let on_stop = reporter.clone();
    tokio::spawn(async move {
        if stopped.wait_for(|stop| *stop).await.is_err() {
            return;
        }
        for name in names {
            on_stop
                .set_service_status(name, ServingStatus::NotServing)
                .await;
        }
    });
    HealthServer::new(AdminHealth {
        inner: HealthService::from_health_reporter(reporter),
        stopping,
    })
}

/// `tonic-health`'s service, with `Watch` streams that end when the ingress
/// stops.
pub struct AdminHealth {
    inner: HealthService,
    stopping: watch::Receiver<bool>,
}

/// The statuses a health `Watch` call streams.
pub type HealthStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for AdminHealth {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        self.inner.check(request).await
    }

    type WatchStream = HealthStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthStream>, Status> {
        let mut statuses = self.inner.watch(request).await?.into_inner();
        let mut stopping = self.stopping.clone();
        let (sender, receiver) = mpsc::channel(4);
        tokio::spawn(async move {
            let not_serving = HealthCheckResponse {
                status: WireStatus::NotServing as i32,
            };
            let mut last = None;
            loop {
                tokio::select! {
                    status = statuses.next() => {
                        let Some(status) = status else { return };
                        last = status.as_ref().ok().map(|s| s.status);
                        if sender.send(status).await.is_err() {
                            return; // the watcher went away
                        }
                    }
                    () = sender.closed() => return,
                    () = async { let _ = stopping.wait_for(|stop| *stop).await; } => {
                        if last != Some(not_serving.status) {
                            let _ = sender.send(Ok(not_serving)).await;
                        }
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }
}

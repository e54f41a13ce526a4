//! The `Replication` gRPC service a control node serves to its replicas: the
//! routing stream, wakes for requests held on replicas, and activity reports.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::feed::{Feed, Since};
use super::nodes::Nodes;
use crate::control_plane::ControlPlane;
use crate::grpc::proto::replication_server::Replication;
use crate::grpc::{authorize_replica, proto};
use crate::pools::EndpointView;

/// The longest a replica's wake may wait.
const MAX_WAKE_WAIT: Duration = Duration::from_secs(600);

/// The replication service over a control plane.
pub struct ReplicationService {
    pub plane: Arc<ControlPlane>,
    pub feed: Arc<Feed>,
    pub nodes: Arc<Nodes>,
    /// Becomes true when the ingress stops; ends open streams.
    pub stopping: tokio::sync::watch::Receiver<bool>,
}

/// The stream of updates a `Routing` call returns.
pub type UpdateStream = std::pin::Pin<
    Box<dyn tokio_stream::Stream<Item = Result<proto::RoutingUpdate, Status>> + Send>,
>;

#[tonic::async_trait]
impl Replication for ReplicationService {
    type RoutingStream = UpdateStream;

    async fn routing(
        &self,
        request: Request<proto::RoutingRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        authorize_replica(&request, "Routing")?;
        let request = request.into_inner();
        let plane = Arc::clone(&self.plane);
        let feed = Arc::clone(&self.feed);
        let mut stopping = self.stopping.clone();
        let (sender, receiver) = tokio::sync::mpsc::channel(64);
        log::info!(
            "replica {:?} follows the routing stream from {}:{}",
            request.node_id,
            if request.epoch.is_empty() {
                "-"
            } else {
                &request.epoch
            },
            request.since_generation
        );
        tokio::spawn(async move {
            let mut latest = feed.subscribe();
            let mut epoch = request.epoch;
            let mut applied = request.since_generation;
            loop {
                latest.borrow_and_update();
                let updates: Vec<proto::RoutingUpdate> = match feed.since(&epoch, applied) {
                    Since::Updates(updates) => updates.iter().map(|u| (**u).clone()).collect(),
                    Since::Full => {
                        let (plane, feed) = (Arc::clone(&plane), Arc::clone(&feed));
                        let Ok(chunks) =
                            tokio::task::spawn_blocking(move || plane.replication_state(&feed))
                                .await
                        else {
                            return;
                        };
                        chunks
                    }
                };
                for update in updates {
                    epoch.clone_from(&update.epoch);
                    applied = update.generation;
                    if sender.send(Ok(update)).await.is_err() {
                        return; // the replica went away
                    }
                }
                tokio::select! {
                    changed = latest.changed() => if changed.is_err() { return },
                    () = sender.closed() => return,
                    _ = stopping.wait_for(|stop| *stop) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(receiver),
        )))
    }

    async fn wake(
        &self,
        request: Request<proto::ReplicaWakeRequest>,
    ) -> Result<Response<proto::Endpoint>, Status> {
        authorize_replica(&request, "Wake")?;
        let request = request.into_inner();
        let wait = Duration::from_millis(request.wait_ms).min(MAX_WAKE_WAIT);
        match self.plane.wake_for_replica(&request.version, wait).await {
            Ok(view) => Ok(Response::new(super::wire::endpoint_message(&view))),
            Err(ingress_proxy::LeaseError::StartFailed {
                reason,
                retry_after,
            }) => {
                // The replica answers 502 with Retry-After, as a local start would.
                let view = EndpointView {
                    version: request.version,
                    pool: String::new(),
                    addrs: Vec::new(),
                    incarnation: 0,
                    state: "failed",
                    ready_at_ms: 0,
                    failure: reason,
                    retry_after_ms: u64::try_from(retry_after.as_millis()).unwrap_or(u64::MAX),
                };
                Ok(Response::new(super::wire::endpoint_message(&view)))
            }
            Err(e) => Err(Status::unavailable(e.to_string())),
        }
    }

    async fn report(
        &self,
        request: Request<proto::ActivityReport>,
    ) -> Result<Response<proto::Empty>, Status> {
        authorize_replica(&request, "Report")?;
        let report = request.into_inner();
        if report.node_id.is_empty() || report.node_id.len() > 128 {
            return Err(Status::invalid_argument(
                "node_id must have 1 to 128 characters",
            ));
        }
        let now = ingress_proxy::time::now_unix_millis();
        self.nodes.report(report, now, self.plane.activity());
        Ok(Response::new(proto::Empty {}))
    }
}

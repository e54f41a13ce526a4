//! A replica's connections to its control node(s): `control.endpoints`, tried
//! in order, each call carrying the replica token.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::Request;

use crate::grpc::proto;
use crate::grpc::proto::replication_client::ReplicationClient;

/// How long a connection to a control node may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// The control nodes a replica follows.
pub struct ControlClients {
    endpoints: Vec<(String, Channel)>,
    authorization: MetadataValue<tonic::metadata::Ascii>,
}

impl ControlClients {
    /// Clients for `endpoints` (`http://IP:PORT`, checked by the config) with
    /// `token`. Connections are made on first use and remade after a failure.
    pub fn new(endpoints: &[String], token: &str) -> Result<ControlClients, String> {
        let authorization = MetadataValue::try_from(format!("Bearer {token}"))
            .map_err(|_| "control.token contains characters a header cannot carry".to_string())?;
        let mut channels = Vec::new();
        for endpoint in endpoints {
            let channel = Endpoint::from_shared(endpoint.clone())
                .map_err(|e| format!("control.endpoints: {endpoint:?} is not a URL: {e}"))?
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(5))
                .connect_lazy();
            channels.push((endpoint.clone(), channel));
        }
        Ok(ControlClients {
            endpoints: channels,
            authorization,
        })
    }

    /// How many control nodes there are.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The address of control node `i`.
    pub fn address(&self, i: usize) -> &str {
        self.endpoints
            .get(i)
            .map_or("", |(address, _)| address.as_str())
    }

    fn request<T>(&self, message: T, timeout: Option<Duration>) -> Request<T> {
        let mut request = Request::new(message);
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        if let Some(timeout) = timeout {
            request.set_timeout(timeout);
        }
        request
    }

    fn client(&self, i: usize) -> Option<ReplicationClient<Channel>> {
        self.endpoints
            .get(i)
            .map(|(_, channel)| ReplicationClient::new(channel.clone()))
    }

    /// Opens the routing stream on control node `i`.
    pub async fn routing(
        &self,
        i: usize,
        request: proto::RoutingRequest,
    ) -> Result<tonic::Streaming<proto::RoutingUpdate>, String> {
        let mut client = self.client(i).ok_or("no such control node")?;
        client
            .routing(self.request(request, None))
            .await
            .map(tonic::Response::into_inner)
            .map_err(|status| describe(self.address(i), &status))
    }

    /// Forwards a wake to the first control node that answers.
    pub async fn wake(
        &self,
        request: proto::ReplicaWakeRequest,
        timeout: Duration,
    ) -> Result<proto::Endpoint, String> {
        let mut last = String::from("no control node is configured");
        for i in 0..self.endpoints.len() {
            let Some(mut client) = self.client(i) else {
                continue;
            };
            match client
                .wake(self.request(request.clone(), Some(timeout)))
                .await
            {
                Ok(endpoint) => return Ok(endpoint.into_inner()),
                // The control node answered: its answer stands.
                Err(status) if status.code() != tonic::Code::Unavailable => {
                    return Err(describe(self.address(i), &status))
                }
                Err(status) => last = describe(self.address(i), &status),
            }
        }
        Err(last)
    }

    /// Sends an activity report to the first control node that takes it.
    pub async fn report(&self, report: proto::ActivityReport) -> Result<(), String> {
        let mut last = String::from("no control node is configured");
        for i in 0..self.endpoints.len() {
            let Some(mut client) = self.client(i) else {
                continue;
            };
            match client
                .report(self.request(report.clone(), Some(Duration::from_secs(5))))
                .await
            {
                Ok(_) => return Ok(()),
                Err(status) => last = describe(self.address(i), &status),
            }
        }
        Err(last)
    }
}

fn describe(address: &str, status: &tonic::Status) -> String {
    format!(
        "control node {address}: {} ({:?})",
        status.message(),
        status.code()
    )
}

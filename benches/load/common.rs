//! What the load script's helper programs (`churn`, `visible`) share: an admin
//! gRPC client that sends the bearer token, and percentiles.

use ingress_control_api::grpc::proto::admin_client::AdminClient;
use tonic::metadata::MetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// A request interceptor that adds `authorization: Bearer TOKEN`.
pub type Bearer =
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send + Sync>;

/// An admin API client at `server` that sends `token` with every call.
pub async fn admin_client(
    server: &str,
    token: &str,
) -> Result<AdminClient<InterceptedService<Channel, Bearer>>, String> {
    let channel = Channel::from_shared(server.to_string())
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| format!("cannot reach {server}: {e}"))?;
    let bearer = MetadataValue::try_from(format!("Bearer {token}"))
        .map_err(|_| "the token cannot be a header")?;
    let add_token: Bearer = Box::new(move |mut request: tonic::Request<()>| {
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        Ok(request)
    });
    Ok(AdminClient::with_interceptor(channel, add_token))
}

/// The `p`th percentile (0–100) of `sorted`, nearest rank; 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

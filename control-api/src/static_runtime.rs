//! The `static` runtime (SPEC §9): versions whose instances are fixed upstream
//! addresses, always ready. Stop and wake are no-ops for it.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use dashmap::DashMap;
use ingress_proxy::{LeaseError, LeaseSource, Target};

/// The fixed upstream addresses of every static version, by version id.
#[derive(Debug, Default)]
pub struct StaticRuntime {
    upstreams: DashMap<Arc<str>, Arc<[SocketAddr]>>,
}

impl StaticRuntime {
    /// An empty runtime.
    pub fn new() -> StaticRuntime {
        StaticRuntime::default()
    }

    /// Sets the addresses of `version_id`, replacing earlier ones.
    pub fn set_upstreams(&self, version_id: &str, addrs: Vec<SocketAddr>) {
        self.upstreams
            .insert(Arc::from(version_id), Arc::from(addrs));
    }

    /// Forgets `version_id`; later lease requests for it fail.
    pub fn forget(&self, version_id: &str) {
        self.upstreams.remove(version_id);
    }
}

#[async_trait]
impl LeaseSource for StaticRuntime {
    async fn lease(&self, target: &Target) -> Result<Vec<SocketAddr>, LeaseError> {
        match self.upstreams.get(&*target.version_id) {
            Some(addrs) if !addrs.is_empty() => Ok(addrs.to_vec()),
            _ => Err(LeaseError::Failed {
                reason: format!(
                    "version {} of app {} has no upstream address in the static runtime",
                    target.version_id, target.app
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingress_proxy::{AppSpec, RouteSpec, SnapshotHandle, SnapshotInput, VersionRef};

    #[tokio::test]
    async fn grants_the_registered_addresses_and_refuses_unknown_versions() {
        let snapshots = SnapshotHandle::new();
        snapshots
            .publish(&SnapshotInput {
                apps: vec![AppSpec {
                    name: "shop".into(),
                    active: Some(VersionRef {
                        id: "v1".into(),
                        state_epoch: 0,
                    }),
                    previews: vec![],
                    expired_labels: vec![],
                }],
                routes: vec![RouteSpec::exact("shop.example.com", "shop")],
            })
            .unwrap();
        let snapshot = snapshots.load_full();
        let target = snapshot.app("shop").unwrap().active().unwrap();

        let runtime = StaticRuntime::new();
        let error = runtime.lease(target).await.unwrap_err();
        assert_eq!(error.status(), 502);
        assert!(error.to_string().contains("version v1 of app shop"));

        let addr = SocketAddr::from(([127, 0, 0, 1], 4000));
        runtime.set_upstreams("v1", vec![addr]);
        assert_eq!(runtime.lease(target).await, Ok(vec![addr]));
        runtime.forget("v1");
        assert!(runtime.lease(target).await.is_err());
    }
}

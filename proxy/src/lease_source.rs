//! The one boundary between the data plane and whatever runs instances: the proxy
//! asks it for a version's ready addresses on a lease-cache miss. The control plane
//! implements it (a runtime); the proxy never depends on the control plane.

use std::fmt;
use std::net::SocketAddr;

use async_trait::async_trait;

use crate::snapshot::Target;

/// Why no lease could be granted. Each variant maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// 503: the version has no ready instance (stopped, or not started yet).
    NotRunning { reason: String },
    /// 502: asking for the lease failed (the runtime does not know the version, or
    /// its instances are broken).
    Failed { reason: String },
}

impl LeaseError {
    /// The HTTP status code of the answer.
    pub fn status(&self) -> u16 {
        match self {
            LeaseError::NotRunning { .. } => 503,
            LeaseError::Failed { .. } => 502,
        }
    }

    /// A stable machine-readable code for JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            LeaseError::NotRunning { .. } => "version_not_running",
            LeaseError::Failed { .. } => "lease_failed",
        }
    }
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::NotRunning { reason } | LeaseError::Failed { reason } => {
                f.write_str(reason)
            }
        }
    }
}

/// Grants leases: the ready upstream addresses of a version.
#[async_trait]
pub trait LeaseSource: Send + Sync + 'static {
    /// The ready addresses of `target`'s version (at least one), or why there are
    /// none. Called on a lease-cache miss only; the answer is cached for
    /// `proxy.lease_ttl` or until the version's state epoch changes.
    async fn lease(&self, target: &Target) -> Result<Vec<SocketAddr>, LeaseError>;
}

//! The one boundary between the data plane and whatever runs instances: the proxy
//! asks it for a version's ready addresses on a lease-cache miss, and asks it to
//! wake a version that has none. The control plane implements it (its runtimes);
//! the proxy never depends on the control plane.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::lease::LeaseValidity;
use crate::snapshot::Target;

/// Why no lease could be granted. Each variant maps to one status code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseError {
    /// 503: the version has no ready instance and this request does not wake it.
    NotRunning { reason: String },
    /// 502: the runtime does not know the version, or its instances are broken.
    Failed { reason: String },
    /// 502: the version's last start failed; no new start is tried until the
    /// back-off has passed (`Retry-After`).
    StartFailed {
        reason: String,
        retry_after: Duration,
    },
}

impl LeaseError {
    /// The HTTP status code of the answer.
    pub fn status(&self) -> u16 {
        match self {
            LeaseError::NotRunning { .. } => 503,
            LeaseError::Failed { .. } | LeaseError::StartFailed { .. } => 502,
        }
    }

    /// A stable machine-readable code for JSON error bodies.
    pub fn code(&self) -> &'static str {
        match self {
            LeaseError::NotRunning { .. } => "version_not_running",
            LeaseError::Failed { .. } => "lease_failed",
            LeaseError::StartFailed { .. } => "start_failed",
        }
    }

    /// Whole seconds a client should wait before trying again, if that is known.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            LeaseError::StartFailed { retry_after, .. } => {
                Some(retry_after.as_secs_f64().ceil().max(1.0) as u64)
            }
            _ => None,
        }
    }
}

impl fmt::Display for LeaseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaseError::NotRunning { reason }
            | LeaseError::Failed { reason }
            | LeaseError::StartFailed { reason, .. } => f.write_str(reason),
        }
    }
}

/// Ready addresses of a version, valid while `validity` holds.
#[derive(Debug, Clone)]
pub struct Grant {
    pub addrs: Vec<SocketAddr>,
    pub validity: Arc<LeaseValidity>,
    /// Unix milliseconds when the instance behind the grant became ready (0 when
    /// it is not known to be fresh): a connect that fails in the first seconds is
    /// retried, since a fresh server may not keep up with its first burst.
    pub ready_at_ms: u64,
}

impl Grant {
    /// A grant over `addrs`, valid while `validity` holds, for instances that are
    /// not fresh.
    pub fn new(addrs: Vec<SocketAddr>, validity: Arc<LeaseValidity>) -> Grant {
        Grant {
            addrs,
            validity,
            ready_at_ms: 0,
        }
    }
}

/// What a lease source has for a version right now.
#[derive(Debug, Clone)]
pub enum LeaseAnswer {
    /// The version has ready instances.
    Ready(Grant),
    /// No ready instance: it is stopped, starting or stopping. A wake is needed.
    Asleep,
}

/// Grants leases and wakes versions.
#[async_trait]
pub trait LeaseSource: Send + Sync + 'static {
    /// What `target`'s version has now, without side effects. Called on a
    /// lease-cache miss only; a ready answer is cached for `proxy.lease_ttl`, until
    /// its validity is revoked, or until the version's state epoch changes.
    fn lease(&self, target: &Target) -> Result<LeaseAnswer, LeaseError>;

    /// Wakes `target`'s version and resolves once it is ready, or fails with why
    /// not. However many callers wake one version at once, it is started once
    /// (single flight). The start begins on the first poll and goes on if the
    /// future is dropped (a client that hangs up does not cancel it); callers bound
    /// their wait with a timeout.
    async fn wake(&self, target: &Target) -> Result<Grant, LeaseError>;
}

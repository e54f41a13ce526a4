//! The data plane of the ingress: resolves each request's host against a lock-free
//! routing snapshot, takes a lease on the version's instances from a cache, and
//! proxies with Pingora. It depends on no control-plane code: it reads snapshots
//! that the control plane publishes and asks a [`LeaseSource`] for leases.

pub mod access_log;
pub mod activity;
pub mod error_response;
pub mod fast_path;
pub mod host;
pub mod http1;
pub mod instance_gate;
pub mod lease;
pub mod lease_source;
pub mod listen_backlog;
pub mod metrics;
pub mod request_id;
pub mod resolve;
pub mod server;
pub mod service;
pub mod snapshot;
pub mod time;
pub mod tls;
pub mod wake_rules;

pub use access_log::AccessLog;
pub use activity::{ActivityRegistry, InFlightGuard, VersionActivity};
pub use lease::{Lease, LeaseCache, LeaseKey, LeaseValidity};
pub use lease_source::{Grant, LeaseAnswer, LeaseError, LeaseSource};
pub use metrics::{Metrics, WakeOutcome};
pub use request_id::RequestId;
pub use resolve::{resolve, Rejection, ResolutionKind, Resolved};
pub use server::{Listeners, LiveOptions, ProxyServer, ServerOptions, ShutdownTrigger};
pub use service::{IngressProxy, ProxyOptions};
pub use snapshot::{
    AppSpec, BuildError, ExpiredLabel, PreparedSnapshot, PreviewSpec, RouteHost, RouteSpec,
    Snapshot, SnapshotDelta, SnapshotHandle, SnapshotInput, Target, VersionRef,
};
pub use wake_rules::IgnoreRules;

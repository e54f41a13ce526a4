//! The control plane of the ingress: version metadata in an embedded store, the
//! operations on it (SPEC §5, §6), snapshot publishing to the proxy, the pools and
//! runtimes that run versions and hand the proxy its leases, and the admin API and
//! control loops built on them.

pub mod certs;
pub mod control_plane;
pub mod dashboard;
pub mod grpc;
pub mod grpc_tools;
pub mod metrics;
pub mod model;
pub mod names;
pub mod pools;
pub mod replication;
pub mod runtime;
pub mod scopes;
pub mod serve;
pub mod store;

pub use control_plane::{
    Clock, ControlError, ControlPlane, DeployOutcome, DeployRequest, DeploySource, ErrorKind,
    LoopReport, PlaneSettings, VersionView,
};
pub use metrics::ControlMetrics;
pub use pools::{Observed, PoolSettings};

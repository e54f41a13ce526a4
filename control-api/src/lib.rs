//! The control plane of the ingress: version metadata in an embedded store, the
//! operations on it (SPEC §6), snapshot publishing to the proxy, and the runtimes
//! that hand the proxy its leases. The admin API and control loops build on it.

pub mod control_plane;
pub mod grpc;
pub mod model;
pub mod names;
pub mod process;
pub mod serve;
pub mod static_runtime;
pub mod store;

pub use control_plane::{
    ControlError, ControlPlane, DeployOutcome, DeployRequest, DeploySource, ErrorKind, VersionView,
};
pub use static_runtime::StaticRuntime;

//! Many edge nodes: a control node serves proxy-only replicas a versioned
//! routing stream with endpoints (`feed.rs`, `service.rs`), wakes versions for
//! requests held on them, and takes their activity reports (`nodes.rs`). The
//! replica's side is in `replica/`.

pub mod client;
pub mod drain;
pub mod feed;
pub mod nodes;
pub mod remote_leases;
pub mod replica;
pub mod service;
pub mod wire;

pub use drain::ReplicaDrain;
pub use feed::Feed;
pub use nodes::Nodes;
pub use remote_leases::RemoteLeases;
pub use replica::{Replica, ReplicaMetrics, ReplicaStatus};
pub use service::ReplicationService;

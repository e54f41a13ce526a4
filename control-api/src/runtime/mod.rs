//! Runtimes (SPEC §9): what starts and stops the instances of a pool. A pool is
//! the running copy of one runtime spec, shared by a version and its clones; the
//! [`crate::pools`] module decides when pools run, a runtime only knows how.
//!
//! - [`StaticRuntime`]: fixed upstream addresses; starting and stopping are
//!   no-ops, so a static version is ready the moment it is woken.
//! - [`ProcessRuntime`]: `sh -c CMD` on this machine with `HOST` and `PORT` set
//!   (`runtime.process.bind`; reached at `runtime.process.advertise`), readiness
//!   probed, SIGTERM then SIGKILL to its whole process tree
//!   ([`process_tree`]), output in a log file per pool; a restart stops what a
//!   previous run left ([`reaper`]).

mod process_runtime;
pub mod process_tree;
pub mod reaper;
mod static_runtime;
pub mod supervisor;

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;

use crate::model::RuntimeSpec;

pub use process_runtime::ProcessRuntime;
pub use reaper::{reap_leftovers, SandboxLedger, SandboxRecord};
pub use static_runtime::StaticRuntime;
pub use supervisor::Network;

/// A future that resolves when an instance ends on its own, with how it ended.
pub type ExitFuture = Pin<Box<dyn Future<Output = String> + Send + 'static>>;

/// One started instance of a pool.
#[async_trait]
pub trait Instance: Send + Sync {
    /// Where it serves.
    fn addrs(&self) -> Vec<SocketAddr>;

    /// Resolves when the instance ends without being asked to (it crashed or was
    /// killed from outside). Never resolves for instances that cannot end.
    fn exited(&self) -> ExitFuture;

    /// Stops it: SIGTERM, then SIGKILL after `grace`, for a process. Returns how it
    /// ended.
    async fn stop(self: Box<Self>, grace: Duration) -> String;
}

/// Starts instances of one kind of runtime spec.
#[async_trait]
pub trait Runtime: Send + Sync {
    /// Starts an instance of `spec` for the pool `pool` and returns once it is
    /// ready, or why it did not become ready (the instance is gone then).
    async fn start(&self, pool: &str, spec: &RuntimeSpec) -> Result<Box<dyn Instance>, String>;
}

/// The runtime of every spec kind, chosen by the spec.
#[derive(Clone)]
pub struct Runtimes {
    pub static_runtime: std::sync::Arc<dyn Runtime>,
    pub process_runtime: std::sync::Arc<dyn Runtime>,
}

impl Runtimes {
    /// The runtime that runs `spec`.
    pub fn for_spec(&self, spec: &RuntimeSpec) -> &std::sync::Arc<dyn Runtime> {
        match spec {
            RuntimeSpec::Static { .. } => &self.static_runtime,
            RuntimeSpec::Process { .. } => &self.process_runtime,
        }
    }
}

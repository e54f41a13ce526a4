//! The `process` runtime (SPEC §9): each pool is one child process, `sh -c CMD`
//! with `PORT` and `INGRESS_VERSION` set, its output appended to
//! `<store.data_dir>/logs/<pool>.log`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;

use super::supervisor::{Process, Readiness};
use super::{ExitFuture, Instance, Runtime};
use crate::model::{ReadyCheck, RuntimeSpec};

/// Runs `process` specs.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    log_dir: PathBuf,
    start_timeout: Duration,
}

impl ProcessRuntime {
    /// A runtime writing logs under `log_dir` and giving each start
    /// `start_timeout` to become ready.
    pub fn new(log_dir: &Path, start_timeout: Duration) -> ProcessRuntime {
        ProcessRuntime {
            log_dir: log_dir.to_path_buf(),
            start_timeout,
        }
    }

    /// The log file of `pool`.
    pub fn log_path(log_dir: &Path, pool: &str) -> PathBuf {
        log_dir.join(format!("{pool}.log"))
    }
}

struct Child(Process);

#[async_trait]
impl Instance for Child {
    fn addrs(&self) -> Vec<SocketAddr> {
        vec![self.0.addr()]
    }

    fn exited(&self) -> ExitFuture {
        Box::pin(self.0.exited())
    }

    async fn stop(self: Box<Self>, grace: Duration) -> String {
        self.0.stop(grace).await
    }
}

#[async_trait]
impl Runtime for ProcessRuntime {
    async fn start(&self, pool: &str, spec: &RuntimeSpec) -> Result<Box<dyn Instance>, String> {
        let RuntimeSpec::Process { command, ready } = spec else {
            return Err(format!(
                "the process runtime cannot run a {} spec",
                spec.kind()
            ));
        };
        let readiness = match ready {
            ReadyCheck::Http { path } => Readiness::Http { path: path.clone() },
            ReadyCheck::Tcp => Readiness::Tcp,
        };
        let log = Self::log_path(&self.log_dir, pool);
        let process = Process::spawn(command, pool, &log)
            .await
            .map_err(|e| e.to_string())?;
        match process.wait_ready(&readiness, self.start_timeout).await {
            Ok(()) => Ok(Box::new(Child(process))),
            Err(error) => {
                // A process that did not become ready is not left behind.
                process.stop(Duration::from_secs(2)).await;
                Err(error.to_string())
            }
        }
    }
}

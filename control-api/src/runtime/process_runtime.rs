//! The `process` runtime (SPEC §9): each pool is one child process, `sh -c CMD`
//! with `HOST` (`runtime.process.bind`), `PORT` and `INGRESS_VERSION` set, reached
//! at `runtime.process.advertise` and that port, its output appended to
//! `<store.data_dir>/logs/<pool>.log`. Each start gets a fresh sandbox marker
//! and, with a ledger, is recorded durably until its stop has reaped its whole
//! process tree (see `reaper.rs` for what a restart does with the records).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use super::process_tree;
use super::reaper::{SandboxLedger, SandboxRecord};
use super::supervisor::{Network, Process, Readiness};
use super::{ExitFuture, Instance, Runtime};
use crate::model::{ReadyCheck, RuntimeSpec};

/// Runs `process` specs.
#[derive(Debug, Clone)]
pub struct ProcessRuntime {
    log_dir: PathBuf,
    start_timeout: Duration,
    /// The first part of every sandbox marker (see `process_tree.rs`).
    scope: String,
    ledger: Option<Arc<dyn SandboxLedger>>,
    /// Where processes listen and are reached.
    network: Network,
}

/// How long a start that failed gives its tree to go after SIGTERM.
const FAILED_START_GRACE: Duration = Duration::from_secs(2);

impl ProcessRuntime {
    /// A runtime writing logs under `log_dir` and giving each start
    /// `start_timeout` to become ready.
    pub fn new(log_dir: &Path, start_timeout: Duration) -> ProcessRuntime {
        ProcessRuntime {
            log_dir: log_dir.to_path_buf(),
            start_timeout,
            scope: process_tree::random_scope(),
            ledger: None,
            network: Network::default(),
        }
    }

    /// Processes listen on `network.bind` (`HOST`) and are reached at
    /// `network.advertise` (default: loopback both ways).
    pub fn with_network(mut self, network: Network) -> ProcessRuntime {
        self.network = network;
        self
    }

    /// Marks sandboxes with `scope` (the data directory's) and records each
    /// running one in `ledger`.
    pub fn with_sandboxes(
        mut self,
        scope: String,
        ledger: Option<Arc<dyn SandboxLedger>>,
    ) -> ProcessRuntime {
        self.scope = scope;
        self.ledger = ledger;
        self
    }

    fn record(&self, process: &Process, pool: &str) {
        let Some(ledger) = &self.ledger else {
            return;
        };
        let tree = process.tree();
        let record = SandboxRecord {
            marker: tree.marker.clone(),
            pool: pool.to_string(),
            pid: process.pid(),
            pgid: tree.pgid,
            start_time: tree.leader_start_time.unwrap_or(0),
            port: process.addr().port(),
            started_at_ms: ingress_proxy::time::now_unix_millis(),
        };
        if let Err(e) = ledger.record(&record) {
            log::warn!(
                "pool {pool}: cannot record sandbox {} (pid {}): {e}; a restart after a crash still finds it by its marker",
                record.marker,
                record.pid
            );
        }
    }

    /// The log file of `pool`.
    pub fn log_path(log_dir: &Path, pool: &str) -> PathBuf {
        log_dir.join(format!("{pool}.log"))
    }
}

/// A started sandbox; its record is forgotten once its tree is gone.
struct Child {
    process: Option<Process>,
    addr: SocketAddr,
    ledger: Option<Arc<dyn SandboxLedger>>,
}

impl Child {
    fn forget(&self, marker: &str) {
        if let Some(ledger) = &self.ledger {
            if let Err(e) = ledger.forget(marker) {
                log::warn!("cannot forget the record of sandbox {marker}: {e}");
            }
        }
    }
}

impl Drop for Child {
    /// Dropped without a stop (it exited on its own and its pool let it go, or
    /// the runtime shut down): the process kills what is left of its tree.
    fn drop(&mut self) {
        if let Some(process) = self.process.take() {
            let marker = process.tree().marker.clone();
            drop(process);
            self.forget(&marker);
        }
    }
}

#[async_trait]
impl Instance for Child {
    fn addrs(&self) -> Vec<SocketAddr> {
        vec![self.addr]
    }

    fn exited(&self) -> ExitFuture {
        match &self.process {
            Some(process) => Box::pin(process.exited()),
            None => Box::pin(std::future::pending()),
        }
    }

    async fn stop(mut self: Box<Self>, grace: Duration) -> String {
        let Some(process) = self.process.take() else {
            return "stopped".to_string();
        };
        let marker = process.tree().marker.clone();
        let status = process.stop(grace).await;
        self.forget(&marker);
        status
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
        let marker = process_tree::new_marker(&self.scope, pool);
        let process = Process::spawn_on(command, pool, &log, &marker, self.network)
            .await
            .map_err(|e| e.to_string())?;
        self.record(&process, pool);
        let ready = process.wait_ready(&readiness, self.start_timeout).await;
        let child = Child {
            addr: process.addr(),
            process: Some(process),
            ledger: self.ledger.clone(),
        };
        match ready {
            Ok(()) => Ok(Box::new(child)),
            Err(error) => {
                // Nothing a start that failed spawned is left behind, not even
                // what `sh` put in the background before it exited.
                Box::new(child).stop(FAILED_START_GRACE).await;
                Err(error.to_string())
            }
        }
    }
}

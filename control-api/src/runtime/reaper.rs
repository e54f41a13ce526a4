//! What a restarted ingress does with the sandboxes a previous run left behind
//! (it was killed with `kill -9`, or crashed): it stops them before it starts
//! anything. Every running sandbox is recorded durably (a [`SandboxLedger`]) with
//! its pid, process group, the leader's start time and port; the reaper stops the
//! tree of every record, and every process whose marker carries this data
//! directory's scope (which also covers a sandbox spawned just before the crash,
//! whose record was never written), then forgets the records.
//!
//! Adopting a leftover that still answers its readiness probe would save a cold
//! start, but its log file, exit status and descendants would be out of the new
//! ingress's hands (it is not its child). Stopping is simpler and certain; the
//! versions whose desired state is running start again right after.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use super::process_tree::{self, ProcStat, Tree};

/// One running sandbox, as recorded in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxRecord {
    /// Its `INGRESS_SANDBOX` value, unique per start.
    pub marker: String,
    pub pool: String,
    /// The pid of its `sh`, also its process group's id.
    pub pid: i32,
    pub pgid: i32,
    /// The leader's start time (`/proc/PID/stat` field 22), to tell it from a
    /// later process that got the same pid.
    pub start_time: u64,
    pub port: u16,
    pub started_at_ms: u64,
}

/// Where running sandboxes are recorded, durably.
pub trait SandboxLedger: Send + Sync + fmt::Debug {
    /// Records a started sandbox.
    fn record(&self, sandbox: &SandboxRecord) -> Result<(), String>;
    /// Forgets the sandbox with this marker (it was stopped).
    fn forget(&self, marker: &str) -> Result<(), String>;
    /// Every recorded sandbox.
    fn recorded(&self) -> Result<Vec<SandboxRecord>, String>;
}

/// What the clean-up at start found and did.
#[derive(Debug, Clone, Default)]
pub struct Reaped {
    /// Records a previous run left.
    pub records: usize,
    /// Processes found and stopped.
    pub stopped: Vec<ProcStat>,
    /// Processes still alive after SIGKILL (none, unless uninterruptible).
    pub survivors: Vec<ProcStat>,
}

/// After SIGKILL, how long the clean-up keeps killing before it gives up.
const KILL_LIMIT: Duration = Duration::from_secs(5);

/// Stops what a previous run on the data directory of `scope` left running:
/// SIGTERM, SIGKILL after `grace`. Blocks; call it before anything is started,
/// with the data directory's lock held (so no live ingress owns these processes).
pub fn reap_leftovers(
    scope: &str,
    ledger: &dyn SandboxLedger,
    grace: Duration,
) -> Result<Reaped, String> {
    let records = ledger.recorded()?;
    let trees: Vec<Tree> = records
        .iter()
        .map(|record| Tree {
            marker: record.marker.clone(),
            pgid: record.pgid,
            leader_start_time: Some(record.start_time),
        })
        .collect();
    let markers: BTreeSet<&str> = records.iter().map(|r| r.marker.as_str()).collect();
    let prefix = format!("{scope}:");
    let matches = |marker: &str| marker.starts_with(&prefix) || markers.contains(marker);
    let (stopped, survivors) = process_tree::stop_blocking(&trees, &matches, grace, KILL_LIMIT);
    for record in &records {
        ledger.forget(&record.marker)?;
    }
    Ok(Reaped {
        records: records.len(),
        stopped,
        survivors,
    })
}

/// A ledger in memory, for tests.
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryLedger(std::sync::Mutex<Vec<SandboxRecord>>);

#[cfg(test)]
impl MemoryLedger {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<SandboxRecord>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
impl SandboxLedger for MemoryLedger {
    fn record(&self, sandbox: &SandboxRecord) -> Result<(), String> {
        self.lock().push(sandbox.clone());
        Ok(())
    }

    fn forget(&self, marker: &str) -> Result<(), String> {
        self.lock().retain(|r| r.marker != marker);
        Ok(())
    }

    fn recorded(&self) -> Result<Vec<SandboxRecord>, String> {
        Ok(self.lock().clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;
    use std::time::Instant;

    #[test]
    fn leftovers_of_the_scope_and_of_records_are_stopped_and_forgotten() {
        let scope = process_tree::random_scope();
        let ledger = MemoryLedger::default();
        // One recorded sandbox whose app ignores SIGTERM, and one never recorded
        // (the crash came between its spawn and its record).
        let recorded = process_tree::new_marker(&scope, "v1");
        let unrecorded = process_tree::new_marker(&scope, "v2");
        let other_scope = process_tree::new_marker(&process_tree::random_scope(), "v3");
        let mut children = Vec::new();
        for (marker, command) in [
            (&recorded, "(trap '' TERM; exec sleep 60) & wait"),
            (&unrecorded, "sleep 60 & wait"),
            (&other_scope, "sleep 60 & wait"),
        ] {
            children.push(
                Command::new("sh")
                    .arg("-c")
                    .arg(command)
                    .env(process_tree::SANDBOX_ENV, marker)
                    .process_group(0)
                    .spawn()
                    .unwrap(),
            );
        }
        let leader = children[0].id() as i32;
        ledger
            .record(&SandboxRecord {
                marker: recorded.clone(),
                pool: "v1".into(),
                pid: leader,
                pgid: leader,
                start_time: process_tree::stat(leader).unwrap().start_time,
                port: 1,
                started_at_ms: 0,
            })
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while process_tree::marked(|m| m.starts_with(&scope)).len() < 4 {
            assert!(Instant::now() < deadline);
            std::thread::sleep(Duration::from_millis(10));
        }
        let reaped = reap_leftovers(&scope, &ledger, Duration::from_millis(300)).unwrap();
        assert_eq!(reaped.records, 1);
        assert_eq!(reaped.stopped.len(), 4, "{:?}", reaped.stopped);
        assert!(reaped.survivors.is_empty(), "{:?}", reaped.survivors);
        assert!(ledger.recorded().unwrap().is_empty());
        assert!(process_tree::marked(|m| m.starts_with(&scope)).is_empty());
        // Another data directory's sandbox is not touched.
        assert_eq!(process_tree::marked(|m| m == other_scope).len(), 2);
        let mut other = children.pop().unwrap();
        process_tree::signal_group(other.id() as i32, libc::SIGKILL);
        let _ = other.wait();
        for mut child in children {
            let _ = child.wait();
        }
    }
}

//! The whole process tree of a sandbox, found and signalled through `/proc`.
//!
//! A sandbox is `sh -c CMD` in its own process group, and everything it starts
//! inherits the environment variable [`SANDBOX_ENV`] with the sandbox's marker,
//! `<scope>:<pool>:<nonce>`. The scope names the data directory (a hash of its
//! path), so a restarted ingress recognises what a previous run on the same
//! directory left behind; the nonce tells two starts of one pool apart.
//!
//! The tree of a sandbox is:
//! - every live process whose `/proc/PID/environ` holds the marker, wherever it is
//!   now: in another process group or session (`setsid`), or re-parented to init
//!   after its parent exited; and
//! - every process of the sandbox's process group, while the group is known to be
//!   the sandbox's (a marked process is in it, or its leader is alive with the
//!   recorded start time), which also catches a member that cleared its
//!   environment.
//!
//! Signals go through a pidfd opened after checking that the pid still has the
//! start time seen in the scan, so a pid reused since the scan is never signalled.
//! Zombies count as gone. What escapes: a process that both cleared its
//! environment and left the process group, or one running as another user whose
//! environment cannot be read.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// The environment variable that marks every process of a sandbox.
pub const SANDBOX_ENV: &str = "INGRESS_SANDBOX";

/// What `/proc/PID/stat` says of a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: i32,
    pub ppid: i32,
    pub pgrp: i32,
    /// `R`, `S`, `Z`...
    pub state: char,
    /// Clock ticks after boot at which it started (field 22): with the pid, it
    /// names one process, whatever pids are reused later.
    pub start_time: u64,
}

impl ProcStat {
    fn gone(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// The `/proc` status of `pid`, if it exists.
pub fn stat(pid: i32) -> Option<ProcStat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may itself hold spaces or ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        pid,
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The sandbox marker in the environment of `pid`, if it has one.
pub fn marker_of(pid: i32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    let prefix = format!("{SANDBOX_ENV}=");
    environ
        .split(|b| *b == 0)
        .find_map(|entry| entry.strip_prefix(prefix.as_bytes()))
        .map(|value| String::from_utf8_lossy(value).into_owned())
}

/// Every live process, with its marker when it has one.
fn scan() -> Vec<(ProcStat, Option<String>)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let stat = stat(pid)?;
            (!stat.gone()).then(|| (stat, marker_of(pid)))
        })
        .collect()
}

/// Live processes whose marker satisfies `matches`, with their marker.
pub fn marked(matches: impl Fn(&str) -> bool) -> Vec<(ProcStat, String)> {
    scan()
        .into_iter()
        .filter_map(|(stat, marker)| {
            let marker = marker?;
            matches(&marker).then_some((stat, marker))
        })
        .collect()
}

/// The scope of sandboxes run on `data_dir`: 16 hex digits of the SHA-256 of
/// its path (canonical when it exists).
pub fn scope_of(data_dir: &Path) -> String {
    use sha2::{Digest, Sha256};
    let path = std::fs::canonicalize(data_dir).unwrap_or_else(|_| data_dir.to_path_buf());
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

/// A scope of its own for runtimes not tied to a data directory (tests).
pub fn random_scope() -> String {
    format!("t{:015x}", random() & 0x0fff_ffff_ffff_ffff)
}

/// A fresh marker for one start of `pool`.
pub fn new_marker(scope: &str, pool: &str) -> String {
    format!("{scope}:{pool}:{:016x}", random())
}

fn random() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id())
    })
}

/// One sandbox's tree: its marker and its process group.
#[derive(Debug, Clone)]
pub struct Tree {
    pub marker: String,
    pub pgid: i32,
    /// The group leader's start time; while the leader lives with it, the group
    /// is the sandbox's.
    pub leader_start_time: Option<u64>,
}

impl Tree {
    /// Every live process of the tree.
    pub fn members(&self) -> Vec<ProcStat> {
        let all = scan();
        let leader_alive = self.leader_start_time.is_some_and(|start| {
            all.iter()
                .any(|(p, _)| p.pid == self.pgid && p.start_time == start)
        });
        let group_is_ours = leader_alive
            || all
                .iter()
                .any(|(p, m)| p.pgrp == self.pgid && m.as_deref() == Some(&self.marker));
        all.into_iter()
            .filter(|(p, m)| {
                m.as_deref() == Some(&self.marker) || (group_is_ours && p.pgrp == self.pgid)
            })
            .map(|(p, _)| p)
            .collect()
    }

    /// Sends `signal` to the whole tree; returns how many processes it found.
    pub fn signal(&self, signal: i32) -> usize {
        let members = self.members();
        if members.iter().any(|p| p.pgrp == self.pgid) {
            // One call reaches every member of the group, even one forked since
            // the scan. The group is known to be ours: it has a member now.
            signal_group(self.pgid, signal);
        }
        for process in members.iter().filter(|p| p.pgrp != self.pgid) {
            signal_process(process, signal);
        }
        members.len()
    }
}

/// Stops every process of the given trees, and every process whose marker
/// satisfies `matches` (restart clean-up): SIGTERM, then SIGKILL to what is left
/// after `grace`, repeated until nothing is left or `kill_limit` more has passed.
/// Blocks. Returns the processes found at first, and those still alive at the end.
pub fn stop_blocking(
    trees: &[Tree],
    matches: &dyn Fn(&str) -> bool,
    grace: Duration,
    kill_limit: Duration,
) -> (Vec<ProcStat>, Vec<ProcStat>) {
    let alive = || {
        let mut found: BTreeMap<i32, ProcStat> = BTreeMap::new();
        for tree in trees {
            found.extend(tree.members().into_iter().map(|p| (p.pid, p)));
        }
        found.extend(marked(matches).into_iter().map(|(p, _)| (p.pid, p)));
        found
    };
    let send = |signal: i32| {
        for tree in trees {
            tree.signal(signal);
        }
        for (process, _) in marked(matches) {
            signal_process(&process, signal);
        }
    };
    let first: Vec<ProcStat> = alive().into_values().collect();
    if first.is_empty() {
        return (first, Vec::new());
    }
    send(libc::SIGTERM);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && !alive().is_empty() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + kill_limit;
    loop {
        let left = alive();
        if left.is_empty() || Instant::now() >= deadline {
            return (first, left.into_values().collect());
        }
        send(libc::SIGKILL);
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `signal` to the process group `pgid`.
pub fn signal_group(pgid: i32, signal: i32) {
    if pgid <= 1 {
        return;
    }
    // SAFETY: `kill` has no memory-safety preconditions; a negative pid addresses
    // a process group.
    if unsafe { libc::kill(-pgid, signal) } != 0 {
        log::debug!(
            "signal {signal} to process group {pgid}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// Sends `signal` to `process`, unless its pid now names another process.
pub fn signal_process(process: &ProcStat, signal: i32) {
    if process.pid <= 1 || process.pid == std::process::id() as i32 {
        return;
    }
    let same = || stat(process.pid).is_some_and(|now| now.start_time == process.start_time);
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::{FromRawFd, OwnedFd};
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, process.pid, 0) };
        if let Ok(raw) = i32::try_from(fd) {
            if raw >= 0 {
                // SAFETY: `raw` was just returned by pidfd_open and is owned here.
                let fd = unsafe { OwnedFd::from_raw_fd(raw) };
                // Checked after opening: the descriptor names the process that had
                // the expected start time, even if its pid is reused later.
                if same() {
                    use std::os::fd::AsRawFd;
                    // SAFETY: a valid pidfd, a signal number, no siginfo, no flags.
                    unsafe {
                        libc::syscall(
                            libc::SYS_pidfd_send_signal,
                            fd.as_raw_fd(),
                            signal,
                            std::ptr::null::<libc::siginfo_t>(),
                            0,
                        )
                    };
                }
                return;
            }
        }
    }
    if same() {
        // SAFETY: a plain signal to a pid whose start time was just checked.
        unsafe { libc::kill(process.pid, signal) };
    }
}

/// For `pre_exec`: the child gets SIGKILL when the thread that forked it ends
/// (the ingress dies), and fails to start if its parent is already gone. Only
/// async-signal-safe calls.
pub fn die_with_parent(parent: libc::pid_t) -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number.
        if unsafe {
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            )
        } != 0
        {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: getppid cannot fail.
        if unsafe { libc::getppid() } != parent {
            return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
        }
    }
    let _ = parent;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    #[test]
    fn stat_reads_this_process() {
        let me = stat(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(me.start_time > 0);
        assert!(!me.gone());
    }

    #[test]
    fn scopes_are_stable_per_directory_and_markers_unique() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(scope_of(dir.path()), scope_of(dir.path()));
        assert_ne!(scope_of(dir.path()), scope_of(&dir.path().join("x")));
        assert_eq!(scope_of(dir.path()).len(), 16);
        assert_ne!(new_marker("s", "v1"), new_marker("s", "v1"));
        assert!(new_marker("s", "v1").starts_with("s:v1:"));
    }

    #[test]
    fn a_marked_process_that_left_the_group_is_found_and_stopped() {
        let marker = new_marker(&random_scope(), "v1");
        // `setsid` puts the sleeper in a new session and group: only the marker
        // finds it.
        let mut shell = Command::new("sh")
            .arg("-c")
            .arg("setsid sleep 60 & sleep 60 & wait")
            .env(SANDBOX_ENV, &marker)
            .process_group(0)
            .spawn()
            .unwrap();
        let pgid = shell.id() as i32;
        let tree = Tree {
            marker: marker.clone(),
            pgid,
            leader_start_time: stat(pgid).map(|s| s.start_time),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while tree.members().len() < 3 {
            assert!(Instant::now() < deadline, "{:?}", tree.members());
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(tree.members().iter().any(|p| p.pgrp != pgid));
        let (first, left) = stop_blocking(
            std::slice::from_ref(&tree),
            &|_| false,
            Duration::from_millis(500),
            Duration::from_secs(5),
        );
        let _ = shell.wait();
        assert_eq!(first.len(), 3, "{first:?}");
        assert!(left.is_empty(), "{left:?}");
        assert!(marked(|m| m == marker).is_empty());
    }
}

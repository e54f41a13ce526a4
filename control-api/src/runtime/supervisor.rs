//! One supervised child process, the building block of the `process` runtime
//! (SPEC §9): `sh -c CMD` with `HOST`, `PORT` and `INGRESS_VERSION` set (it must
//! listen on `$HOST:$PORT`), output appended to
//! a log file, readiness probed with back-off, stopped with SIGTERM and then
//! SIGKILL after a grace period. The child runs in its own process group and
//! carries its sandbox's marker in `INGRESS_SANDBOX`, so that stopping it stops
//! whatever it started too, even after `sh` itself is gone and even what left the
//! group (see [`super::process_tree`]). It gets `PR_SET_PDEATHSIG(SIGKILL)`: it
//! dies when the thread that spawned it ends (the pools' long-lived worker thread,
//! so in practice when the ingress dies); what `sh` starts does not inherit that,
//! which is why a restart also reaps what a previous run left (`reaper.rs`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::process_tree::{self, Tree, SANDBOX_ENV};

/// Where processes listen (`runtime.process.bind`, told to them as `HOST`) and
/// where they are reached (`runtime.process.advertise`: the readiness probe,
/// the proxies and replicas connect there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Network {
    pub bind: IpAddr,
    pub advertise: IpAddr,
}

impl Default for Network {
    /// Loopback only: `127.0.0.1` both ways.
    fn default() -> Self {
        Network {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertise: IpAddr::V4(Ipv4Addr::LOCALHOST),
        }
    }
}

/// How a started process is known to be ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// An HTTP GET of this path answers (any status below 500).
    Http { path: String },
    /// A TCP connection to the port is accepted.
    Tcp,
}

/// Why a process did not become ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// The process could not be started at all.
    Spawn(String),
    /// It exited before it was ready; the status and the end of its log.
    Exited { status: String, log_tail: String },
    /// It was still not ready when the time ran out.
    NotReady { waited: Duration },
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Spawn(reason) => write!(f, "the command could not be started: {reason}"),
            StartError::Exited { status, log_tail } => {
                write!(f, "the command exited before it was ready ({status})")?;
                if !log_tail.is_empty() {
                    write!(f, "; its last output: {log_tail}")?;
                }
                Ok(())
            }
            StartError::NotReady { waited } => {
                write!(
                    f,
                    "the command was not ready after {}ms",
                    waited.as_millis()
                )
            }
        }
    }
}

impl std::error::Error for StartError {}

/// A running (or exited) child process listening on `addr`.
pub struct Process {
    addr: SocketAddr,
    pid: i32,
    log_path: PathBuf,
    /// `None` while it runs; its exit status once it has exited.
    exit: watch::Receiver<Option<String>>,
    /// Everything it started, by marker and process group.
    tree: Tree,
    /// Set once a stop has seen the whole tree gone; a drop before that kills it.
    reaped: bool,
}

/// After SIGKILL, how long a stop keeps killing what is left before it gives up
/// (a process in uninterruptible sleep) and says so in the log.
const KILL_LIMIT: Duration = Duration::from_secs(5);

/// The first probe comes this soon after the start; the interval doubles up to
/// [`PROBE_MAX`], so readiness is seen within about 5 ms of the process's own,
/// however long it takes to start (a refused loopback connect costs well under a
/// millisecond).
const PROBE_FIRST: Duration = Duration::from_millis(1);
const PROBE_MAX: Duration = Duration::from_millis(5);

impl Process {
    /// Starts `sh -c command` on a free loopback port, with `HOST`, `PORT`,
    /// `INGRESS_VERSION` and `INGRESS_SANDBOX` (= `marker`) set and stdout and
    /// stderr appended to `log_path`.
    pub async fn spawn(
        command: &str,
        version_id: &str,
        log_path: &Path,
        marker: &str,
    ) -> Result<Process, StartError> {
        Process::spawn_on(command, version_id, log_path, marker, Network::default()).await
    }

    /// Like [`Process::spawn`], on a free port of `network.bind` (`HOST`); the
    /// process is reached (and probed) at `network.advertise` and that port.
    pub async fn spawn_on(
        command: &str,
        version_id: &str,
        log_path: &Path,
        marker: &str,
        network: Network,
    ) -> Result<Process, StartError> {
        let port = free_port(network.bind).map_err(|e| {
            StartError::Spawn(format!(
                "no free port on {} (runtime.process.bind): {e}",
                network.bind
            ))
        })?;
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir)
                .map_err(|e| StartError::Spawn(format!("log directory {}: {e}", dir.display())))?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_path)
            .map_err(|e| StartError::Spawn(format!("log file {}: {e}", log_path.display())))?;
        let log_err = log
            .try_clone()
            .map_err(|e| StartError::Spawn(format!("log file {}: {e}", log_path.display())))?;
        let mut command_line = tokio::process::Command::new("sh");
        command_line
            .arg("-c")
            .arg(command)
            .env("HOST", network.bind.to_string())
            .env("PORT", port.to_string())
            .env("INGRESS_VERSION", version_id)
            .env(SANDBOX_ENV, marker)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .process_group(0)
            .kill_on_drop(true);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure only makes async-signal-safe calls (prctl, getppid).
        unsafe {
            command_line.pre_exec(move || process_tree::die_with_parent(parent));
        }
        let mut child = command_line
            .spawn()
            .map_err(|e| StartError::Spawn(e.to_string()))?;
        let pid = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .ok_or_else(|| StartError::Spawn("the child has no process id".into()))?;
        let tree = Tree {
            marker: marker.to_string(),
            pgid: pid,
            leader_start_time: process_tree::stat(pid).map(|s| s.start_time),
        };
        let (exited, exit) = watch::channel(None);
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(status) => status.to_string(),
                Err(e) => format!("unknown exit ({e})"),
            };
            exited.send_replace(Some(status));
        });
        Ok(Process {
            addr: SocketAddr::new(network.advertise, port),
            pid,
            log_path: log_path.to_path_buf(),
            exit,
            tree,
            reaped: false,
        })
    }

    /// Its sandbox's process tree.
    pub fn tree(&self) -> &Tree {
        &self.tree
    }

    /// Where the process is reached: the advertised IP and the port it was told
    /// to listen on (`PORT`).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The exit status, once the process has exited.
    pub fn exit_status(&self) -> Option<String> {
        self.exit.borrow().clone()
    }

    /// Its process id (also its process group's).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Resolves with the exit status once the process has exited, whoever ends it.
    pub fn exited(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        let mut exit = self.exit.clone();
        async move {
            let status = match exit.wait_for(Option::is_some).await {
                Ok(status) => status.clone(),
                Err(_) => None,
            };
            match status {
                Some(status) => status,
                // The watcher task is gone: the runtime is shutting down.
                None => std::future::pending().await,
            }
        }
    }

    /// Waits until the process is ready, it exits, or `limit` passes. Probes start
    /// after 1 ms and back off to every 5 ms.
    pub async fn wait_ready(
        &self,
        readiness: &Readiness,
        limit: Duration,
    ) -> Result<(), StartError> {
        let started = tokio::time::Instant::now();
        let deadline = started + limit;
        let mut interval = PROBE_FIRST;
        let mut exit = self.exit.clone();
        loop {
            if let Some(status) = self.exit_status() {
                return Err(StartError::Exited {
                    status,
                    log_tail: log_tail(&self.log_path),
                });
            }
            if probe(self.addr, readiness).await {
                return Ok(());
            }
            let now = tokio::time::Instant::now();
            if now >= deadline {
                return Err(StartError::NotReady {
                    waited: now - started,
                });
            }
            let pause = interval.min(deadline - now);
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                _ = exit.changed() => {}
            }
            interval = (interval * 2).min(PROBE_MAX);
        }
    }

    /// Stops the whole tree, whatever its leader did: SIGTERM to the process
    /// group and to every marked process (also after `sh` has exited), then, if
    /// anything of it still runs after `grace`, SIGKILL to all of it until nothing
    /// is left. Returns the leader's exit status.
    pub async fn stop(mut self, grace: Duration) -> String {
        self.tree.signal(libc::SIGTERM);
        let deadline = tokio::time::Instant::now() + grace;
        let mut pause = Duration::from_millis(5);
        while !self.all_gone() {
            let now = tokio::time::Instant::now();
            if now >= deadline {
                self.kill_all().await;
                break;
            }
            let wait = pause.min(deadline - now);
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                changed = self.exit.changed() => {
                    if changed.is_err() {
                        // The exit watcher is gone (shutdown): poll instead.
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            pause = (pause * 2).min(Duration::from_millis(100));
        }
        self.reaped = true;
        self.exit_status().unwrap_or_else(|| "stopped".to_string())
    }

    /// The leader has exited (and was reaped) and no process of the tree lives.
    fn all_gone(&self) -> bool {
        self.exit_status().is_some() && self.tree.members().is_empty()
    }

    /// SIGKILL to the tree until it is gone, for at most [`KILL_LIMIT`].
    async fn kill_all(&mut self) {
        let deadline = tokio::time::Instant::now() + KILL_LIMIT;
        loop {
            self.tree.signal(libc::SIGKILL);
            // Let the exit of the leader be collected.
            let watcher_gone = matches!(
                tokio::time::timeout(
                    Duration::from_millis(20),
                    self.exit.wait_for(Option::is_some),
                )
                .await,
                Ok(Err(_))
            );
            if watcher_gone {
                // The exit watcher is gone (shutdown): poll instead.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if self.all_gone() {
                return;
            }
            if tokio::time::Instant::now() >= deadline {
                log::warn!(
                    "sandbox {}: processes {:?} still run {}s after SIGKILL",
                    self.tree.marker,
                    self.tree
                        .members()
                        .iter()
                        .map(|p| p.pid)
                        .collect::<Vec<_>>(),
                    KILL_LIMIT.as_secs()
                );
                return;
            }
        }
    }
}

impl Drop for Process {
    /// A process dropped before a stop finished (its task was cancelled at
    /// shutdown, or it exited on its own and its pool let it go) takes its whole
    /// tree with it, not only `sh`.
    fn drop(&mut self) {
        if !self.reaped {
            self.tree.signal(libc::SIGKILL);
        }
    }
}

#[cfg(test)]
fn signal_group(pid: i32, signal: i32) {
    process_tree::signal_group(pid, signal);
}

/// A port free on `ip` now (the process binds it soon after).
fn free_port(ip: IpAddr) -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind(SocketAddr::new(ip, 0))?
        .local_addr()?
        .port())
}

/// The last few lines of the log, on one line, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    lines[start..].join(" | ").chars().take(500).collect()
}

async fn probe(addr: SocketAddr, readiness: &Readiness) -> bool {
    let connect = tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(addr));
    let Ok(Ok(mut stream)) = connect.await else {
        return false;
    };
    let path = match readiness {
        Readiness::Tcp => return true,
        Readiness::Http { path } => path,
    };
    let request =
        format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\nUser-Agent: ingress-readiness\r\n\r\n");
    let exchange = async {
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut head = [0u8; 16];
        let mut read = 0;
        while read < head.len() {
            let n = stream.read(&mut head[read..]).await.ok()?;
            if n == 0 {
                break;
            }
            read += n;
        }
        // "HTTP/1.x NNN ..."
        let text = std::str::from_utf8(&head[..read]).ok()?;
        let status: u16 = text.get(9..12)?.parse().ok()?;
        Some(status)
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(1), exchange).await,
        Ok(Some(status)) if status < 500
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVER: &str = "exec python3 -m http.server \"$PORT\" --bind 127.0.0.1";

    fn marker() -> String {
        process_tree::new_marker(&process_tree::random_scope(), "v1")
    }

    /// Waits (at most 10 s) until no process carries `marker`.
    async fn wait_until_none_carries(marker: &str) -> Vec<i32> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<i32> = process_tree::marked(|m| m == marker)
                .iter()
                .map(|(p, _)| p.pid)
                .collect();
            if left.is_empty() || tokio::time::Instant::now() >= deadline {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_term_ignoring_app_behind_a_shell_that_dies_of_term_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let marker = marker();
        // `sh` (the group leader) dies of SIGTERM; the app ignores it.
        let process = Process::spawn(
            "(trap '' TERM; exec sleep 60) & wait",
            "v1",
            &dir.path().join("v1.log"),
            &marker,
        )
        .await
        .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while process.tree().members().len() < 2 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let status = process.stop(Duration::from_millis(300)).await;
        assert!(status.contains("signal: 15"), "{status}");
        assert_eq!(wait_until_none_carries(&marker).await, Vec::<i32>::new());
    }

    #[tokio::test]
    async fn what_a_leader_left_running_when_it_exited_is_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let marker = marker();
        // The leader exits at once; one child stays in the group, one leaves it.
        let process = Process::spawn(
            "sleep 60 & setsid sleep 60 & exit 0",
            "v1",
            &dir.path().join("v1.log"),
            &marker,
        )
        .await
        .unwrap();
        let error = process
            .wait_ready(&Readiness::Tcp, Duration::from_secs(10))
            .await
            .unwrap_err();
        assert!(matches!(error, StartError::Exited { .. }), "{error:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while process_tree::marked(|m| m == marker).len() < 2 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        process.stop(Duration::from_millis(300)).await;
        assert_eq!(wait_until_none_carries(&marker).await, Vec::<i32>::new());
    }

    #[tokio::test]
    async fn a_dropped_process_takes_its_tree_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let marker = marker();
        let process = Process::spawn("sleep 60 & wait", "v1", &dir.path().join("v1.log"), &marker)
            .await
            .unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while process.tree().members().len() < 2 {
            assert!(tokio::time::Instant::now() < deadline);
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(process);
        assert_eq!(wait_until_none_carries(&marker).await, Vec::<i32>::new());
    }

    #[tokio::test]
    async fn starts_with_port_and_version_and_becomes_ready() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("v1.log");
        let command = format!("echo \"version=$INGRESS_VERSION port=$PORT\"; {SERVER}");
        let process = Process::spawn(&command, "v1", &log, &marker())
            .await
            .unwrap();
        process
            .wait_ready(
                &Readiness::Http { path: "/".into() },
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(
            text.contains(&format!("version=v1 port={}", process.addr().port())),
            "{text}"
        );
        let status = process.stop(Duration::from_secs(5)).await;
        assert!(
            status.contains("signal") || status.contains("exit"),
            "{status}"
        );
    }

    #[tokio::test]
    async fn listens_on_host_and_is_reached_at_the_advertised_ip() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("v2.log");
        // 127.0.0.0/8 is all loopback: a process on 127.0.0.2 only is not on
        // 127.0.0.1, so a ready probe proves it went to the advertised IP.
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        let command = "echo \"host=$HOST\"; exec python3 -m http.server \"$PORT\" --bind \"$HOST\"";
        let process = Process::spawn_on(
            command,
            "v2",
            &log,
            &marker(),
            Network {
                bind: ip,
                advertise: ip,
            },
        )
        .await
        .unwrap();
        assert_eq!(process.addr().ip(), ip);
        process
            .wait_ready(
                &Readiness::Http { path: "/".into() },
                Duration::from_secs(20),
            )
            .await
            .unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(text.contains("host=127.0.0.2"), "{text}");
        let loopback = SocketAddr::from(([127, 0, 0, 1], process.addr().port()));
        assert!(
            std::net::TcpStream::connect(loopback).is_err(),
            "listens on $HOST only"
        );
        process.stop(Duration::from_secs(5)).await;
    }

    #[tokio::test]
    async fn a_command_that_exits_early_reports_its_status_and_output() {
        let dir = tempfile::tempdir().unwrap();
        let process = Process::spawn(
            "echo missing dependency >&2; exit 3",
            "v1",
            &dir.path().join("v1.log"),
            &marker(),
        )
        .await
        .unwrap();
        let error = process
            .wait_ready(&Readiness::Tcp, Duration::from_secs(20))
            .await
            .unwrap_err();
        match &error {
            StartError::Exited { status, log_tail } => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(log_tail, "missing dependency");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            error.to_string().contains("exited before it was ready"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn not_ready_in_time_then_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let process = Process::spawn("sleep 30", "v1", &dir.path().join("v1.log"), &marker())
            .await
            .unwrap();
        let error = process
            .wait_ready(&Readiness::Tcp, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(error, StartError::NotReady { .. }), "{error:?}");
        let status = process.stop(Duration::from_secs(5)).await;
        assert!(status.contains("signal"), "{status}");
    }

    #[tokio::test]
    async fn a_process_ignoring_sigterm_is_killed_with_its_children_after_the_grace() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("child.pid");
        // The shell ignores TERM and starts a child; both must be gone after stop.
        let command = format!(
            "trap '' TERM; sleep 60 & echo $! > {}; wait",
            pid_file.display()
        );
        let process = Process::spawn(&command, "v1", &dir.path().join("v1.log"), &marker())
            .await
            .unwrap();
        let mut child_pid = String::new();
        for _ in 0..200 {
            child_pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
            if !child_pid.trim().is_empty() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let child_pid: i32 = child_pid.trim().parse().expect("the child wrote its pid");
        let status = process.stop(Duration::from_millis(300)).await;
        assert!(
            status.contains("signal: 9") || status.contains("SIGKILL"),
            "{status}"
        );
        // The grandchild got the group's SIGKILL too (allow a moment for reaping).
        let mut alive = true;
        for _ in 0..100 {
            // SAFETY: signal 0 only checks that the process exists.
            alive = unsafe { libc::kill(child_pid, 0) } == 0
                && !std::fs::read_to_string(format!("/proc/{child_pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ");
            if !alive {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!alive, "the child {child_pid} outlived the stop");
    }

    #[tokio::test]
    async fn an_exit_from_outside_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let process = Process::spawn(SERVER, "v1", &dir.path().join("v1.log"), &marker())
            .await
            .unwrap();
        process
            .wait_ready(&Readiness::Tcp, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(process.exit_status(), None);
        signal_group(process.pid, libc::SIGKILL);
        let mut exit = process.exit.clone();
        tokio::time::timeout(Duration::from_secs(5), exit.wait_for(Option::is_some))
            .await
            .expect("the exit is noticed within 5 s")
            .unwrap();
        assert!(process.exit_status().unwrap().contains("signal: 9"));
    }
}

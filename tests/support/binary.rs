//! The real `ingress` binary as a child process, driven with the real `ingressctl`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::{fast_path_off, free_ports};

/// The admin token every test config accepts.
pub const TOKEN: &str = "test-token-0123456789abcdef";

/// A running `ingress` process with its own data directory and free ports. Stopped
/// with SIGTERM when dropped (so that it stops the processes it runs), SIGKILL if
/// it does not exit within 10 s.
pub struct Ingress {
    pub proxy: SocketAddr,
    pub grpc: SocketAddr,
    pub http: SocketAddr,
    /// The TLS listener, when started with [`Ingress::start_tls`].
    pub tls: Option<SocketAddr>,
    pub data_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    sections: String,
    /// Tokens besides the test token, as TOML inline tables.
    tokens: String,
    child: Option<Child>,
    nofile: Option<(u64, u64)>,
}

fn config_text(
    proxy: SocketAddr,
    grpc: SocketAddr,
    http: SocketAddr,
    data_dir: &Path,
    proxy_keys: &str,
    sections: &str,
    tokens: &str,
) -> String {
    // INGRESS_TEST_FAST_PATH=off: the fast path off unless the test chose.
    let fast_path = if fast_path_off() && !proxy_keys.contains("fast_path") {
        "fast_path = false\n"
    } else {
        ""
    };
    format!(
        "[proxy]\nlisten = \"{proxy}\"\n{fast_path}{proxy_keys}\n\n[admin]\ngrpc_listen = \"{grpc}\"\nhttp_listen = \"{http}\"\ntokens = [{{ name = \"tester\", secret = \"{TOKEN}\" }}{tokens}]\n\n[store]\ndata_dir = {:?}\n\n{sections}\n",
        data_dir.display().to_string()
    )
}

/// Runs `command --config CONFIG` with its output appended to `log`, and waits
/// (at most 20 s) until every one of `ports` accepts connections; panics with
/// the log if it exits or does not listen in time.
fn start_and_wait(
    mut command: Command,
    config: &Path,
    log: &Path,
    ports: &[SocketAddr],
    what: &str,
) -> Child {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("open log");
    let mut child = command
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .stdout(file.try_clone().expect("log"))
        .stderr(file)
        .spawn()
        .unwrap_or_else(|e| panic!("start {what}: {e}"));
    let log_text = || std::fs::read_to_string(log).unwrap_or_default();
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        let up = ports
            .iter()
            .all(|addr| std::net::TcpStream::connect(addr).is_ok());
        if up {
            return child;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status}:\n{}", log_text());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(child);
    panic!("{what} did not listen within 20 s:\n{}", log_text());
}

/// SIGTERM to `child`, then SIGKILL if it has not exited within 10 s.
fn stop(mut child: Child) {
    // SAFETY: plain signal to our own child's pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Ingress {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child);
        }
    }
}

impl Ingress {
    /// Starts an ingress on `dir` with the extra TOML `sections` appended to the
    /// config (for example short `[ephemeral]` intervals).
    pub fn start(dir: &Path, sections: &str) -> Ingress {
        Ingress::start_with_proxy(dir, "", sections)
    }

    /// Like [`Ingress::start`], with `proxy_keys` (TOML lines) added to the
    /// `[proxy]` section.
    pub fn start_with_proxy(dir: &Path, proxy_keys: &str, sections: &str) -> Ingress {
        Ingress::start_limited(dir, proxy_keys, sections, None)
    }

    /// Like [`Ingress::start_with_proxy`], with the descriptor limit
    /// (`RLIMIT_NOFILE` soft, hard) set before the binary starts, as `ulimit`
    /// would.
    pub fn start_limited(
        dir: &Path,
        proxy_keys: &str,
        sections: &str,
        nofile: Option<(u64, u64)>,
    ) -> Ingress {
        Ingress::launch(dir, proxy_keys, sections, nofile, "")
    }

    /// Like [`Ingress::start`], with more admin tokens besides the test token:
    /// `tokens` are TOML inline tables, for example
    /// `{ name = "ci", secret = "...", role = "read" }`, comma-separated.
    pub fn start_with_tokens(dir: &Path, tokens: &str, sections: &str) -> Ingress {
        Ingress::launch(dir, "", sections, None, &format!(", {tokens}"))
    }

    fn launch(
        dir: &Path,
        proxy_keys: &str,
        sections: &str,
        nofile: Option<(u64, u64)>,
        tokens: &str,
    ) -> Ingress {
        let [proxy, grpc, http] = free_ports().map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        let data_dir = dir.join("data");
        let config = dir.join("ingress.toml");
        let text = config_text(proxy, grpc, http, &data_dir, proxy_keys, sections, tokens);
        std::fs::write(&config, text).expect("write config");
        let mut ingress = Ingress {
            proxy,
            grpc,
            http,
            tls: None,
            data_dir,
            log: dir.join("ingress.log"),
            config,
            sections: sections.to_string(),
            tokens: tokens.to_string(),
            child: None,
            nofile,
        };
        ingress.spawn();
        ingress
    }

    /// Like [`Ingress::start_with_proxy`], with a `[tls]` section on a free
    /// port of its own plus `tls_keys` (TOML lines).
    pub fn start_tls(dir: &Path, proxy_keys: &str, tls_keys: &str, sections: &str) -> Ingress {
        let [port] = free_ports();
        let tls = SocketAddr::from(([127, 0, 0, 1], port));
        let sections = format!("[tls]\nlisten = \"{tls}\"\n{tls_keys}\n\n{sections}");
        let [proxy, grpc, http] = free_ports().map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        let data_dir = dir.join("data");
        let config = dir.join("ingress.toml");
        let text = config_text(proxy, grpc, http, &data_dir, proxy_keys, &sections, "");
        std::fs::write(&config, text).expect("write config");
        let mut ingress = Ingress {
            proxy,
            grpc,
            http,
            tls: Some(tls),
            data_dir,
            log: dir.join("ingress.log"),
            config,
            sections,
            tokens: String::new(),
            child: None,
            nofile: None,
        };
        ingress.spawn();
        ingress
    }

    fn spawn(&mut self) {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ingress"));
        if let Some((soft, hard)) = self.nofile {
            use std::os::unix::process::CommandExt;
            // SAFETY: setrlimit is async-signal-safe and touches only the child.
            unsafe {
                command.pre_exec(move || {
                    let limit = libc::rlimit {
                        rlim_cur: soft,
                        rlim_max: hard,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let ports: Vec<SocketAddr> = [self.proxy, self.grpc, self.http]
            .into_iter()
            .chain(self.tls)
            .collect();
        self.child = Some(start_and_wait(
            command,
            &self.config,
            &self.log,
            &ports,
            "ingress",
        ));
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs a second ingress on this one's data directory, with ports of its own,
    /// and waits (at most 20 s) for it to exit, killing it if it does not.
    /// Returns its exit status and what it printed.
    pub fn run_second_on_same_data_dir(&self) -> (std::process::ExitStatus, String) {
        let dir = self
            .config
            .parent()
            .expect("the config is in the test directory");
        let config = dir.join("ingress-second.toml");
        let log = dir.join("ingress-second.log");
        let [proxy, grpc, http] = free_ports().map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        let text = config_text(
            proxy,
            grpc,
            http,
            &self.data_dir,
            "",
            &self.sections,
            &self.tokens,
        );
        std::fs::write(&config, text).expect("write config");
        let out = std::fs::File::create(&log).expect("create log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_ingress"))
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("start the second ingress");
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Ok(Some(status)) = child.try_wait() {
                break status;
            }
            if Instant::now() > deadline {
                // SAFETY: plain signal to our own child's pid.
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
                std::thread::sleep(Duration::from_secs(3));
                let _ = child.kill();
                break child.wait().expect("reap the second ingress");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        (status, std::fs::read_to_string(&log).unwrap_or_default())
    }

    /// The config file it runs with (a test may rewrite it and send SIGHUP).
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// Sends `signal` to the running process.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid().expect("running");
        // SAFETY: plain signal to our own child's pid.
        unsafe { libc::kill(pid as i32, signal) };
    }

    /// The graceful upgrade: starts `ingress --upgrade` on this config (its
    /// output appended to the same log), waits (at most 10 s) until it listens
    /// on the upgrade socket, then sends SIGQUIT to the running process. The
    /// new process becomes this one's (stopped when dropped); the old one is
    /// returned, still exiting.
    pub fn start_upgrade(&mut self) -> Child {
        let old = self.child.take().expect("running");
        let sock = self.data_dir.join("upgrade.sock");
        let _ = std::fs::remove_file(&sock);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log");
        let mut new = Command::new(env!("CARGO_BIN_EXE_ingress"))
            .arg("--config")
            .arg(&self.config)
            .arg("--upgrade")
            .stdin(Stdio::null())
            .stdout(file.try_clone().expect("log"))
            .stderr(file)
            .spawn()
            .expect("start ingress --upgrade");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if Instant::now() > deadline || matches!(new.try_wait(), Ok(Some(_))) {
                let _ = new.kill();
                let _ = new.wait();
                self.child = Some(old);
                panic!(
                    "ingress --upgrade did not listen on {}:\n{}",
                    sock.display(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        // SAFETY: plain signal to our own child's pid.
        unsafe { libc::kill(old.id() as i32, libc::SIGQUIT) };
        self.child = Some(new);
        old
    }

    /// Whether the current process has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|child| child.try_wait().ok().flatten())
    }

    /// What the process has logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then start again on the same data directory and ports.
    pub fn kill9_and_restart(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
        self.spawn();
    }

    /// Starts again on the same data directory and ports, after [`Ingress::terminate`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }

    /// SIGTERM; returns the exit status (waits at most 15 s).
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let pid = child.id().to_string();
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("send SIGTERM");
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return status;
            }
            if Instant::now() > deadline {
                let threads = Command::new("sh")
                    .arg("-c")
                    .arg(format!("for t in /proc/{pid}/task/*; do echo $(cat $t/comm) $(cat $t/wchan) $(cut -d' ' -f3 $t/stat); done; ls -la {}", self.log.display()))
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                    .unwrap_or_default();
                let _ = child.kill();
                panic!(
                    "ingress did not stop within 15 s of SIGTERM:\n{threads}\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts an ingress (with `proxy_keys` in `[proxy]`) whose app `shop` on
    /// `shop.example.com` is a static deploy of `upstream`.
    pub fn shop(dir: &Path, upstream: SocketAddr, proxy_keys: &str) -> Ingress {
        let ingress = Ingress::start_with_proxy(dir, proxy_keys, "");
        ingress.ctl(&["app", "create", "shop"]).expect_ok();
        ingress
            .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
            .expect_ok();
        ingress
            .ctl(&["deploy", "shop", "--upstream", &upstream.to_string()])
            .expect_ok();
        ingress
    }

    /// The `/metrics` text of the admin HTTP listener (empty when unreachable).
    pub async fn metrics_text(&self) -> String {
        let url = format!("http://{}/metrics", self.http);
        match super::client().get(url).send().await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    /// Runs `ingressctl ARGS` against this ingress with the test token.
    pub fn ctl(&self, args: &[&str]) -> CtlOutput {
        self.ctl_with_token(Some(TOKEN), args)
    }

    /// Runs `ingressctl ARGS` with the given token (or none).
    pub fn ctl_with_token(&self, token: Option<&str>, args: &[&str]) -> CtlOutput {
        CtlOutput(
            self.ctl_command(token, args)
                .output()
                .expect("run ingressctl"),
        )
    }

    /// `ingressctl ARGS` against this ingress with the given token (or none),
    /// with neither INGRESS_TOKEN nor INGRESS_TIMEOUT from the environment.
    pub fn ctl_command(&self, token: Option<&str>, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ingressctl"));
        command
            .args(args)
            .env("INGRESS_SERVER", format!("http://{}", self.grpc))
            .env_remove("INGRESS_TOKEN")
            .env_remove("INGRESS_TIMEOUT");
        if let Some(token) = token {
            command.env("INGRESS_TOKEN", token);
        }
        command
    }
}

/// An ingress whose app `shop` on `shop.example.com` is served by `upstream`
/// (see [`Ingress::shop`]).
pub fn shop(dir: &Path, upstream: SocketAddr, proxy_keys: &str) -> Ingress {
    Ingress::shop(dir, upstream, proxy_keys)
}

/// What one `ingressctl` run printed.
pub struct CtlOutput(pub Output);

impl CtlOutput {
    pub fn ok(&self) -> bool {
        self.0.status.success()
    }

    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.0.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.0.stderr).into_owned()
    }

    /// Stdout, asserting success.
    pub fn expect_ok(&self) -> String {
        assert!(
            self.ok(),
            "ingressctl failed: {}{}",
            self.stdout(),
            self.stderr()
        );
        self.stdout()
    }

    /// Stdout parsed as JSON, asserting success.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.expect_ok()).expect("ingressctl printed JSON")
    }
}

/// A proxy-only `ingress` (`node.role = "proxy"`) following `control`'s routing
/// stream. Stopped with SIGTERM when dropped.
pub struct ReplicaNode {
    pub id: String,
    pub proxy: SocketAddr,
    pub http: SocketAddr,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Drop for ReplicaNode {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop(child);
        }
    }
}

impl ReplicaNode {
    /// Starts replica `id` in `dir` following the control node at `grpc` with
    /// `token`, with `extra` TOML sections; waits until its ports answer.
    pub fn start(dir: &Path, id: &str, grpc: SocketAddr, token: &str, extra: &str) -> ReplicaNode {
        let [proxy, grpc_unused, http] =
            free_ports().map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
        let config = dir.join(format!("{id}.toml"));
        // INGRESS_TEST_FAST_PATH=off reaches replicas too.
        let fast_path = if fast_path_off() {
            "fast_path = false\n"
        } else {
            ""
        };
        let text = format!(
            "[node]\nrole = \"proxy\"\nid = \"{id}\"\n\n[control]\nendpoints = [\"http://{grpc}\"]\ntoken = \"{token}\"\n\n[proxy]\nlisten = \"{proxy}\"\n{fast_path}\n[admin]\ngrpc_listen = \"{grpc_unused}\"\nhttp_listen = \"{http}\"\n\n{extra}\n"
        );
        std::fs::write(&config, text).expect("write replica config");
        let mut node = ReplicaNode {
            id: id.to_string(),
            proxy,
            http,
            config,
            log: dir.join(format!("{id}.log")),
            child: None,
        };
        node.spawn();
        node
    }

    fn spawn(&mut self) {
        let command = Command::new(env!("CARGO_BIN_EXE_ingress"));
        let ports = [self.proxy, self.http];
        self.child = Some(start_and_wait(
            command,
            &self.config,
            &self.log,
            &ports,
            "replica",
        ));
    }

    /// What the replica has logged.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, then start again on the same ports.
    pub fn kill9_and_restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGKILL (it sends no more reports); not started again.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().expect("kill -9");
            child.wait().expect("reap");
        }
    }
}

/// `GET /routing?wait_generation=G&timeout_ms=T` on an admin listener: the
/// status and the generation the node has applied.
pub fn routing_generation(http: SocketAddr, wait: u64, timeout_ms: u64) -> (u16, u64) {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(http) else {
        return (0, 0);
    };
    let request = format!(
        "GET /routing?wait_generation={wait}&timeout_ms={timeout_ms} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return (0, 0);
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, applied_generation(&text))
}

/// Runs `command` (output captured), killing it if it has not exited after
/// `limit`. Returns what it printed (its status is the kill's when killed) and
/// how long it ran.
pub fn run_bounded(mut command: Command, limit: Duration) -> (CtlOutput, Duration) {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    while started.elapsed() < limit {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let elapsed = started.elapsed();
    if let Ok(None) = child.try_wait() {
        let _ = child.kill();
    }
    let output = child.wait_with_output().expect("collect the output");
    (CtlOutput(output), elapsed)
}

// ---------------------------------------------------------------------------
// For the multi-node suite (tests/multi_node.rs): pausing a process (SIGCONT
// guaranteed), a replica killed and started again as two steps, its pid, and
// `/routing` and other admin HTTP reads from async code.
// ---------------------------------------------------------------------------

/// A process paused with SIGSTOP. Resumed (SIGCONT) by [`Paused::resume`] or
/// when dropped, so a failing test never leaves it stopped.
pub struct Paused {
    pid: i32,
}

impl Paused {
    /// Sends SIGSTOP to `pid` (a child of this test).
    pub fn stop(pid: u32) -> Paused {
        let pid = pid as i32;
        // SAFETY: plain signal to our own child's pid.
        unsafe { libc::kill(pid, libc::SIGSTOP) };
        Paused { pid }
    }

    /// Sends SIGCONT.
    pub fn resume(self) {}
}

impl Drop for Paused {
    fn drop(&mut self) {
        // SAFETY: plain signal to our own child's pid.
        unsafe { libc::kill(self.pid, libc::SIGCONT) };
    }
}

impl ReplicaNode {
    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Starts again on the same ports after [`ReplicaNode::kill9`]; returns
    /// once its ports answer.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "still running");
        self.spawn();
    }
}

/// [`routing_generation`] from async code: `GET
/// /routing?wait_generation=G&timeout_ms=T` on the admin listener `http`; the
/// status (0 when unreachable) and the generation the node has applied.
pub async fn wait_routing(http: SocketAddr, wait: u64, timeout_ms: u64) -> (u16, u64) {
    let path = format!("/routing?wait_generation={wait}&timeout_ms={timeout_ms}");
    let limit = Duration::from_millis(timeout_ms) + Duration::from_secs(5);
    let (status, text) = admin_get(http, &path, limit).await;
    (status, applied_generation(&text))
}

/// The `"generation"` of a `/routing` answer (0 when it has none).
fn applied_generation(text: &str) -> u64 {
    text.split("\"generation\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// `GET path` on an admin HTTP listener (a new connection, `Connection:
/// close`), bounded by `limit`: the status (0 when unreachable or too slow) and
/// the body.
pub async fn admin_get(http: SocketAddr, path: &str, limit: Duration) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(http).await.ok()?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    };
    let Ok(Some(text)) = tokio::time::timeout(limit, exchange).await else {
        return (0, String::new());
    };
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

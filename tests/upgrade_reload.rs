//! End-to-end tests of SIGHUP config reloads and the graceful upgrade
//! (`ingress --upgrade` + SIGQUIT to the old process), each under a bounded
//! load of keep-alive and new-connection clients that must lose no request.
//!
//! "Lost" means a request that got no 200: a refused or reset new connection,
//! an error status, a cut or timed-out answer. A request on a *reused*
//! keep-alive connection that the server closed before any byte of an answer
//! is sent again on a new connection, as HTTP clients do (RFC 9112 §9.3.1);
//! those retries are counted and reported, not failed.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::binary::Ingress;
use support::Upstream;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const HOST: &str = "shop.example.com";
/// Clients of the load loop: even ones keep their connection alive, odd ones
/// open a new one per request.
const CLIENTS: usize = 4;
/// Most requests per client, and the longest any load runs.
const MAX_REQUESTS: u64 = 20_000;
const MAX_LOAD: Duration = Duration::from_secs(120);
/// Longest wait for one answer (an upgrade holds new connections in the
/// listen backlog while the old process finishes and the new one starts).
const ANSWER_WITHIN: Duration = Duration::from_secs(40);

#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Reused keep-alive connections closed before an answer, sent again.
    retried: AtomicU64,
    failures: Mutex<Vec<String>>,
}

/// How one exchange ended.
enum Exchange {
    /// Status and whether the server closes the connection after it.
    Answer(u16, bool),
    /// The connection closed (or reset) before any byte of an answer.
    Closed,
    Broken(String),
}

async fn exchange(stream: &mut TcpStream, path: &str) -> Exchange {
    let request = format!("GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return Exchange::Closed;
    }
    let mut buf = Vec::with_capacity(1024);
    let read = async {
        let head_end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) if buf.is_empty() => return Exchange::Closed,
                Ok(0) => return Exchange::Broken("closed inside the head".into()),
                Err(e) => return Exchange::Broken(format!("read error inside the head: {e}")),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let close = head.contains("\r\nconnection: close");
        let Some(length) = head.split("\r\n").find_map(|line| {
            line.strip_prefix("content-length:")
                .and_then(|v| v.trim().parse::<usize>().ok())
        }) else {
            return Exchange::Broken(format!("no content-length: {head}"));
        };
        while buf.len() < head_end + length {
            let mut chunk = [0u8; 4096];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return Exchange::Broken("answer cut short".into()),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        Exchange::Answer(status, close)
    };
    match tokio::time::timeout(ANSWER_WITHIN, read).await {
        Ok(outcome) => outcome,
        Err(_) => Exchange::Broken(format!("no answer within {ANSWER_WITHIN:?}")),
    }
}

/// One client of the load: requests until `stop`, `MAX_REQUESTS` or `MAX_LOAD`.
async fn client(proxy: SocketAddr, keep_alive: bool, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let started = Instant::now();
    let mut conn: Option<TcpStream> = None;
    let mut sent = 0u64;
    while !stop.load(Ordering::Relaxed) && sent < MAX_REQUESTS && started.elapsed() < MAX_LOAD {
        let reused = conn.is_some();
        let mut stream = match conn.take() {
            Some(stream) => stream,
            None => match TcpStream::connect(proxy).await {
                Ok(stream) => stream,
                Err(e) => {
                    tally.failures.lock().unwrap().push(format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    sent += 1;
                    continue;
                }
            },
        };
        let path = format!("/load?n={sent}");
        match exchange(&mut stream, &path).await {
            Exchange::Answer(200, close) => {
                tally.ok.fetch_add(1, Ordering::Relaxed);
                sent += 1;
                if keep_alive && !close {
                    conn = Some(stream);
                }
            }
            Exchange::Answer(status, _) => {
                tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{path}: status {status}"));
                sent += 1;
            }
            Exchange::Closed if reused => {
                // Sent again on a new connection, not counted as sent.
                tally.retried.fetch_add(1, Ordering::Relaxed);
            }
            Exchange::Closed => {
                tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{path}: a new connection closed before any answer"));
                sent += 1;
            }
            Exchange::Broken(why) => {
                tally
                    .failures
                    .lock()
                    .unwrap()
                    .push(format!("{path}: {why}"));
                sent += 1;
            }
        }
    }
}

/// The load loop running in the background.
struct Load {
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(proxy: SocketAddr) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let tally = Arc::new(Tally::default());
        let tasks = (0..CLIENTS)
            .map(|i| {
                tokio::spawn(client(
                    proxy,
                    i % 2 == 0,
                    Arc::clone(&stop),
                    Arc::clone(&tally),
                ))
            })
            .collect();
        Load { stop, tally, tasks }
    }

    fn ok(&self) -> u64 {
        self.tally.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients and asserts that no request was lost.
    async fn finish(self, what: &str) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("client task");
        }
        let ok = self.tally.ok.load(Ordering::Relaxed);
        let retried = self.tally.retried.load(Ordering::Relaxed);
        let failures = self.tally.failures.lock().unwrap();
        eprintln!(
            "{what}: {ok} requests answered 200, {retried} sent again after a keep-alive close, {} lost",
            failures.len()
        );
        assert!(
            failures.is_empty(),
            "{what}: {} request(s) lost, first ones: {:?}",
            failures.len(),
            &failures[..failures.len().min(10)]
        );
        ok
    }
}

/// Waits (at most `limit`) until `done` holds.
async fn wait_until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done()
}

/// The status of a GET whose target is `target_len` bytes long.
async fn status_for_target(proxy: SocketAddr, target_len: usize) -> u16 {
    let path = format!("/{}", "a".repeat(target_len - 1));
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    match exchange(&mut stream, &path).await {
        Exchange::Answer(status, _) => status,
        Exchange::Closed => panic!("closed without an answer"),
        Exchange::Broken(why) => panic!("{why}"),
    }
}

/// The status answered to a request head that never ends, if one comes
/// within `wait`.
async fn unfinished_head_status(proxy: SocketAddr, wait: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect(proxy).await.expect("connect");
    let head = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n");
    stream.write_all(head.as_bytes()).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(wait, stream.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
}

/// Rewrites the config's `[proxy]` key line `from` to `to`, sends SIGHUP and
/// waits (at most 10 s) until the log holds `expect` once more than before.
async fn reload(ingress: &Ingress, from: &str, to: &str, expect: &str) {
    let path = ingress.config_path();
    let text = std::fs::read_to_string(path).expect("read config");
    assert!(text.contains(from), "{from:?} not in the config:\n{text}");
    std::fs::write(path, text.replacen(from, to, 1)).expect("write config");
    let before = ingress.log_text().matches(expect).count();
    ingress.signal(libc::SIGHUP);
    let seen = wait_until(Duration::from_secs(10), || {
        ingress.log_text().matches(expect).count() > before
    })
    .await;
    assert!(
        seen,
        "no {expect:?} in the log after SIGHUP:\n{}",
        ingress.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_applies_a_changed_limit_refuses_an_invalid_file_and_loses_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = Upstream::start("shop").await;
    let ingress = Ingress::shop(dir.path(), upstream.addr, "max_target_bytes = 8192");
    assert_eq!(status_for_target(ingress.proxy, 300).await, 200);

    let load = Load::start(ingress.proxy);
    assert!(
        wait_until(Duration::from_secs(10), || load.ok() > 200).await,
        "the load does not get answers"
    );

    assert_eq!(
        unfinished_head_status(ingress.proxy, Duration::from_secs(3)).await,
        None,
        "proxy.header_timeout is 60s"
    );
    // Live keys (a limit and a timeout) and one that needs a restart.
    reload(
        &ingress,
        "max_target_bytes = 8192",
        "max_target_bytes = 256\nheader_timeout = \"1s\"\nthreads = 3",
        "proxy.header_timeout, proxy.max_target_bytes applied",
    )
    .await;
    assert_eq!(
        unfinished_head_status(ingress.proxy, Duration::from_secs(5)).await,
        Some(408),
        "proxy.header_timeout = 1s applies at once"
    );
    let log = ingress.log_text();
    assert!(
        log.contains("proxy.threads changed but needs a restart"),
        "{log}"
    );
    assert_eq!(
        status_for_target(ingress.proxy, 300).await,
        414,
        "proxy.max_target_bytes = 256 applies at once"
    );
    assert_eq!(status_for_target(ingress.proxy, 200).await, 200);
    let before = load.ok();
    assert!(wait_until(Duration::from_secs(10), || load.ok() > before + 200).await);

    // A token added to admin.tokens is accepted at once.
    const READER: &str = "reloaded-reader-0123456789abcdef";
    assert!(!ingress.ctl_with_token(Some(READER), &["app", "list"]).ok());
    reload(
        &ingress,
        "{ name = \"tester\", secret = \"test-token-0123456789abcdef\" }",
        &format!("{{ name = \"tester\", secret = \"test-token-0123456789abcdef\" }}, {{ name = \"reader\", secret = \"{READER}\", role = \"read\" }}"),
        "admin.tokens applied",
    )
    .await;
    let apps = ingress
        .ctl_with_token(Some(READER), &["app", "list"])
        .expect_ok();
    assert!(apps.contains("shop"), "{apps}");

    // An invalid file: refused in one line naming the key; nothing changes.
    reload(
        &ingress,
        "max_target_bytes = 256",
        "max_target_bytes = \"lots\"",
        "refused, the running settings stay",
    )
    .await;
    let log = ingress.log_text();
    let refused = log
        .lines()
        .find(|line| line.contains("refused, the running settings stay"))
        .expect("the refusal line");
    assert!(refused.contains("proxy.max_target_bytes"), "{refused}");
    assert_eq!(
        status_for_target(ingress.proxy, 300).await,
        414,
        "the running limit stays"
    );
    assert_eq!(status_for_target(ingress.proxy, 200).await, 200);
    let before = load.ok();
    assert!(wait_until(Duration::from_secs(10), || load.ok() > before + 200).await);
    let served = load.finish("reload").await;
    assert!(served > 600, "only {served} requests served");
    assert!(ingress.pid().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_upgrade_hands_over_the_listeners_and_loses_no_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let upstream = Upstream::start("shop").await;
    let mut ingress = Ingress::shop(dir.path(), upstream.addr, "");
    let old_pid = ingress.pid().expect("running");

    let load = Load::start(ingress.proxy);
    assert!(
        wait_until(Duration::from_secs(10), || load.ok() > 200).await,
        "the load does not get answers"
    );
    let mut old = ingress.start_upgrade();
    let new_pid = ingress.pid().expect("the new process");
    assert_ne!(old_pid, new_pid);

    // The old process hands over, finishes its requests and exits.
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Ok(Some(status)) = old.try_wait() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = old.kill();
            let _ = old.wait();
            panic!(
                "the old ingress did not exit within 60 s of SIGQUIT:\n{}",
                ingress.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "the old ingress exited with {status}");
    let at_exit = load.ok();

    // The new one takes over the control plane and keeps serving.
    let grpc = ingress.grpc;
    let up = wait_until(Duration::from_secs(30), || {
        std::net::TcpStream::connect(grpc).is_ok()
    })
    .await;
    assert!(
        up,
        "the new ingress's admin API is not up:\n{}",
        ingress.log_text()
    );
    assert!(ingress.exited().is_none(), "{}", ingress.log_text());
    assert!(
        wait_until(Duration::from_secs(30), || load.ok() > at_exit + 500).await,
        "the new ingress does not serve the load:\n{}",
        ingress.log_text()
    );
    let served = load.finish("upgrade").await;
    assert!(served > 700);
    let apps = ingress.ctl(&["app", "list"]).expect_ok();
    assert!(apps.contains("shop"), "{apps}");
    assert_eq!(status_for_target(ingress.proxy, 10).await, 200);
    let log = ingress.log_text();
    assert!(
        log.contains("--upgrade: listening sockets received from the old process"),
        "{log}"
    );
}

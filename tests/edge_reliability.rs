//! End-to-end tests of the edge's reliability rules (issue 10), on the real
//! `ingress` binary: ambiguous and oversized requests are refused before they
//! reach an upstream, a descriptor-starved ingress keeps serving, open
//! connections are capped, and a woken burst never overruns a fragile sandbox.

mod support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::binary::{shop, Ingress};
use support::raw::{keepalive_get, send_raw, send_raw_within};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that records every byte it receives and answers each connection
/// once with a fixed 200, then closes it.
struct RecordingUpstream {
    addr: SocketAddr,
    received: Arc<Mutex<Vec<u8>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for RecordingUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl RecordingUpstream {
    async fn start() -> RecordingUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::clone(&received);
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    return;
                };
                let log = Arc::clone(&log);
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        let read =
                            tokio::time::timeout(Duration::from_millis(300), stream.read(&mut buf))
                                .await;
                        match read {
                            Ok(Ok(n)) if n > 0 => {
                                seen.extend_from_slice(&buf[..n]);
                                log.lock().unwrap().extend_from_slice(&buf[..n]);
                                if seen.windows(4).any(|w| w == b"\r\n\r\n") {
                                    break;
                                }
                            }
                            _ => break,
                        }
                    }
                    let _ = stream
                        .write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                        )
                        .await;
                });
            }
        });
        RecordingUpstream {
            addr,
            received,
            task,
        }
    }

    fn take(&self) -> String {
        String::from_utf8_lossy(&std::mem::take(&mut *self.received.lock().unwrap())).into_owned()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_requests_are_refused_and_never_reach_the_upstream() {
    let upstream = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = shop(dir.path(), upstream.addr, "");

    // The control: a plain request does reach the upstream, so an empty record
    // below means the ingress stopped the request.
    let plain = send_raw(
        ingress.proxy,
        b"GET /plain HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(plain.status, 200, "{}", plain.head);
    assert!(upstream.take().contains("GET /plain HTTP/1.1"));

    let cases: &[(&str, &[u8], u16)] = &[
        ("a Content-Length list", b"POST / HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 5, 5\r\n\r\nhelloGET /smuggled HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 400),
        ("two Content-Length fields", b"POST / HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", 400),
        ("identity, chunked", b"POST / HTTP/1.1\r\nHost: shop.example.com\r\nTransfer-Encoding: identity, chunked\r\n\r\n0\r\n\r\n", 501),
        ("gzip, chunked", b"POST / HTTP/1.1\r\nHost: shop.example.com\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501),
        ("chunked, identity", b"POST / HTTP/1.1\r\nHost: shop.example.com\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n", 501),
        ("Content-Length with Transfer-Encoding", b"POST / HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 400),
        ("a space in the target", b"GET /a b HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 400),
        ("a NUL in the target", b"GET /a\0b HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 400),
        ("a control byte in the target", b"GET /a\x07b HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 400),
        ("a target without a leading slash", b"GET a/b HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 400),
        ("TRACE", b"TRACE / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 405),
        ("a lowercase method", b"get / HTTP/1.1\r\nHost: shop.example.com\r\n\r\n", 400),
        ("two Host fields", b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nHost: other.example.com\r\n\r\n", 400),
        ("a space before the colon", b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nX-A : b\r\n\r\n", 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nX-A: b\r\n c\r\n\r\n", 400),
        ("a control byte in a value", b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nX-A: b\x01c\r\n\r\n", 400),
    ];
    for (what, request, status) in cases {
        let answer = send_raw(ingress.proxy, request).await;
        assert_eq!(answer.status, *status, "{what}: {}", answer.head);
        assert!(
            answer.head.contains("connection: close"),
            "{what}: the refusal says Connection: close: {}",
            answer.head
        );
        assert!(
            answer.body.len() > 10,
            "{what}: the refusal explains itself: {:?}",
            answer.body
        );
        let reached = upstream.take();
        assert!(
            reached.is_empty(),
            "{what}: the upstream received {reached:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_limits_answer_431_and_414_and_are_configurable() {
    let upstream = RecordingUpstream::start().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = shop(dir.path(), upstream.addr, "");

    let mut many = String::from("GET / HTTP/1.1\r\nHost: shop.example.com\r\n");
    for i in 0..300 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = send_raw(ingress.proxy, many.as_bytes()).await;
    assert_eq!(answer.status, 431, "{}", answer.head);
    assert!(answer.body.contains("proxy.max_headers"), "{}", answer.body);

    let cookie = format!(
        "GET / HTTP/1.1\r\nHost: shop.example.com\r\nCookie: {}\r\n\r\n",
        "c".repeat(16 * 1024)
    );
    let answer = send_raw(ingress.proxy, cookie.as_bytes()).await;
    assert_eq!(answer.status, 431, "{}", answer.head);
    assert!(
        answer.body.contains("proxy.max_header_bytes"),
        "{}",
        answer.body
    );

    let long = format!(
        "GET /{} HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
        "a".repeat(9000)
    );
    let answer = send_raw(ingress.proxy, long.as_bytes()).await;
    assert_eq!(answer.status, 414, "{}", answer.head);
    assert!(upstream.take().is_empty());
    drop(ingress);

    // Raised limits let the same requests through.
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = shop(
        dir.path(),
        upstream.addr,
        "max_headers = 256\nmax_header_bytes = 65536\nmax_target_bytes = 16384\n",
    );
    let mut fewer = String::from("GET / HTTP/1.1\r\nHost: shop.example.com\r\n");
    for i in 0..200 {
        fewer.push_str(&format!("X-H{i}: v\r\n"));
    }
    fewer.push_str("Connection: close\r\n\r\n");
    for request in [
        fewer,
        cookie.replace("\r\n\r\n", "\r\nConnection: close\r\n\r\n"),
    ] {
        let answer = send_raw(ingress.proxy, request.as_bytes()).await;
        assert_eq!(answer.status, 200, "{}", answer.head);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_framing_error_answers_with_connection_close() {
    let upstream = support::Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = shop(dir.path(), upstream.addr, "");
    let answer = send_raw(
        ingress.proxy,
        b"POST / HTTP/1.1\r\nHost: shop.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    )
    .await;
    assert!(
        answer.status == 400 || answer.status == 502,
        "{}",
        answer.head
    );
    assert!(
        answer.head.contains("connection: close"),
        "the answer must not promise keep-alive on a connection that closes: {}",
        answer.head
    );
}

/// Raises this test process's own descriptor limit, for tests that open
/// thousands of client sockets.
fn raise_own_descriptor_limit(to: u64) {
    let limit = libc::rlimit {
        rlim_cur: to,
        rlim_max: to,
    };
    // SAFETY: setrlimit reads the struct we pass. Raising the hard limit needs
    // root (as in CI); otherwise the soft limit goes as far as the hard one.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        let mut current = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into the struct we pass.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut current) };
        current.rlim_cur = current.rlim_max;
        // SAFETY: as above.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &current) };
    }
}

/// The admin HTTP status of `path`.
async fn admin_status(ingress: &Ingress, path: &str) -> u16 {
    let url = format!("http://{}{path}", ingress.http);
    support::client()
        .get(url)
        .send()
        .await
        .map(|response| response.status().as_u16())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_idle_connections_under_a_low_soft_limit_do_not_stop_new_clients() {
    raise_own_descriptor_limit(8192);
    let upstream = support::Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    // The common soft limit of 1,024 under a higher hard limit, set before start.
    let ingress = Ingress::start_limited(dir.path(), "", "", Some((1024, 8192)));
    ingress.ctl(&["app", "create", "shop"]).expect_ok();
    ingress
        .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
        .expect_ok();
    ingress
        .ctl(&["deploy", "shop", "--upstream", &upstream.addr.to_string()])
        .expect_ok();
    let mut idle = Vec::new();
    for _ in 0..1500 {
        idle.push(TcpStream::connect(ingress.proxy).await.expect("connect"));
    }
    // Let the ingress accept them all.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut fresh = TcpStream::connect(ingress.proxy).await.expect("connect");
    assert_eq!(
        keepalive_get(&mut fresh).await,
        200,
        "a new client is served"
    );
    assert!(
        ingress
            .log_text()
            .contains("descriptor limit raised from 1024 to 8192"),
        "{}",
        ingress.log_text()
    );
    drop(idle);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_new_ones_are_closed_and_open_ones_keep_working() {
    let upstream = support::Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = shop(dir.path(), upstream.addr, "max_connections = 20\n");
    let mut open = Vec::new();
    for _ in 0..20 {
        let mut stream = TcpStream::connect(ingress.proxy).await.expect("connect");
        assert_eq!(keepalive_get(&mut stream).await, 200);
        open.push(stream);
    }
    assert_eq!(
        admin_status(&ingress, "/readyz").await,
        503,
        "full: not ready"
    );
    let mut refused = TcpStream::connect(ingress.proxy).await.expect("connect");
    assert_eq!(keepalive_get(&mut refused).await, 0, "closed at once");
    for stream in open.iter_mut().take(3) {
        assert_eq!(keepalive_get(stream).await, 200, "open ones keep working");
    }
    let metrics = ingress.metrics_text().await;
    assert!(metrics.contains("ingress_connections_open 20"), "{metrics}");
    assert!(
        metrics.contains("ingress_connections_refused_total 1"),
        "{metrics}"
    );
    open.truncate(15);
    // Ready again once the ingress has seen the closes (a loaded machine may
    // take a while), and then a new client is served.
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin_status(&ingress, "/readyz").await != 200 {
        assert!(Instant::now() < deadline, "not ready after closing five");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut again = TcpStream::connect(ingress.proxy).await.expect("connect");
    assert_eq!(keepalive_get(&mut again).await, 200);
}

/// A `--command` preview running Python's plain `http.server` (the default
/// listen backlog of 5) after a boot of `boot_ms`; `concurrent` requests arrive
/// while it sleeps. Returns the statuses and the number of starts.
async fn cold_burst(boot_ms: u64, concurrent: usize) -> (Vec<u16>, usize) {
    raise_own_descriptor_limit(8192);
    let dir = tempfile::tempdir().expect("temp dir");
    // A request the sandbox dropped waits out TCP's retransmission backoff (the
    // kernel drops the handshake's last ACK when the accept queue is full): with
    // 64 connects at once, seconds to a minute. A 5 s read timeout turns such a
    // wait into a 504, so the test sees an overrun however lucky the timing.
    // The queue may take as long as the wake: this checks that no request is
    // lost to an overrun, not how fast a slow machine serves the burst.
    let ingress = Ingress::start_with_proxy(
        dir.path(),
        "read_timeout = \"5s\"\nqueue_timeout = \"60s\"\n",
        "[wake]\ntimeout = \"60s\"\n\n[runtime]\nstop_grace = \"2s\"\nstart_timeout = \"30s\"\n",
    );
    ingress.ctl(&["app", "create", "shop"]).expect_ok();
    ingress
        .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
        .expect_ok();
    let site = dir.path().join("site");
    std::fs::create_dir(&site).expect("site dir");
    std::fs::write(site.join("index.html"), "hello\n").expect("index");
    let starts = dir.path().join("starts");
    let command = format!(
        "echo start >> {}; sleep {}; exec python3 -m http.server \"$PORT\" --bind 127.0.0.1 --directory {}",
        starts.display(),
        boot_ms as f64 / 1000.0,
        site.display()
    );
    ingress
        .ctl(&[
            "deploy",
            "shop",
            "--command",
            &command,
            "--ephemeral",
            "pr-1",
        ])
        .expect_ok();
    let proxy = ingress.proxy;
    let requests: Vec<_> = (0..concurrent)
        .map(|_| {
            tokio::spawn(async move {
                // Bounded by the ingress's own limits (the queue, the wake), not by
                // the client: a slow machine makes a slow burst, not a lost one.
                send_raw_within(
                    proxy,
                    b"GET /index.html HTTP/1.1\r\nHost: pr-1.shop.example.com\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(90),
                )
                .await
                .map_or(0, |answer| answer.status)
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap_or(0));
    }
    let started = std::fs::read_to_string(&starts)
        .map(|text| text.lines().count())
        .unwrap_or(0);
    (statuses, started)
}

fn assert_all_served(statuses: &[u16], starts: usize) {
    let mut failed = std::collections::BTreeMap::new();
    for status in statuses.iter().filter(|status| **status != 200) {
        *failed.entry(*status).or_insert(0usize) += 1;
    }
    assert!(
        failed.is_empty(),
        "of {} requests, these failed (status 0: no answer): {failed:?}",
        statuses.len()
    );
    assert_eq!(starts, 1, "one start for the whole burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_of_200_on_a_fragile_sandbox_is_served_whole_with_one_start() {
    let (statuses, starts) = cold_burst(1000, 200).await;
    assert_all_served(&statuses, starts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_burst_of_1000_after_a_50ms_boot_is_served_whole_with_one_start() {
    let (statuses, starts) = cold_burst(50, 1000).await;
    assert_all_served(&statuses, starts);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saturated_instance_queues_then_answers_503_with_retry_after() {
    let upstream = support::Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = Ingress::start_with_proxy(
        dir.path(),
        "queue_timeout = \"150ms\"\n",
        "[runtime]\nmax_conns_per_instance = 1\n",
    );
    ingress.ctl(&["app", "create", "shop"]).expect_ok();
    ingress
        .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
        .expect_ok();
    ingress
        .ctl(&["deploy", "shop", "--upstream", &upstream.addr.to_string()])
        .expect_ok();
    let proxy = ingress.proxy;
    let slow = |path: &'static str| {
        tokio::spawn(async move {
            let request = format!(
                "GET {path} HTTP/1.1\r\nHost: shop.example.com\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
            );
            send_raw(proxy, request.as_bytes()).await
        })
    };
    // The first holds the only slot for 3 s; the second, sent well inside that
    // (a loaded machine may take a while to pass the first on), waits 150 ms
    // in line.
    let first = slow("/slow?ms=3000");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let second = slow("/").await.expect("second");
    let first = first.await.expect("first");
    assert_eq!(first.status, 200, "{}", first.head);
    assert_eq!(second.status, 503, "{}", second.head);
    assert!(second.head.contains("retry-after: 1"), "{}", second.head);
    let body: serde_json::Value = serde_json::from_str(&second.body).expect("JSON body");
    assert_eq!(body["error"], "instance_saturated", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("runtime.max_conns_per_instance")),
        "{body}"
    );
    let metrics = ingress.metrics_text().await;
    assert!(
        metrics.contains("ingress_instance_queue_rejections_total 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queued_request_is_served_when_a_slot_frees_in_time() {
    let upstream = support::Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = Ingress::start(dir.path(), "[runtime]\nmax_conns_per_instance = 1\n");
    ingress.ctl(&["app", "create", "shop"]).expect_ok();
    ingress
        .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
        .expect_ok();
    ingress
        .ctl(&["deploy", "shop", "--upstream", &upstream.addr.to_string()])
        .expect_ok();
    let proxy = ingress.proxy;
    let requests: Vec<_> = (0..3)
        .map(|_| {
            tokio::spawn(async move {
                send_raw(
                    proxy,
                    b"GET /slow?ms=1500 HTTP/1.1\r\nHost: shop.example.com\r\nConnection: close\r\n\r\n",
                )
                .await
                .status
            })
        })
        .collect();
    for request in requests {
        assert_eq!(request.await.expect("request"), 200);
    }
    let metrics = ingress.metrics_text().await;
    assert!(
        metrics.contains("ingress_instance_queue_wait_seconds_count 2"),
        "two of three waited in line: {metrics}"
    );
}

//! End-to-end tests of slow and pipelining clients (issue 11), on the real
//! `ingress` binary over raw sockets: a trickled head is cut at
//! `proxy.header_timeout`, an idle keep-alive connection at
//! `proxy.keepalive_timeout`, unfinished heads cost at most
//! `proxy.max_header_bytes` each, pipelined requests are answered in order, and
//! a shutdown closes idle connections at once while finishing busy ones.

mod support;

use std::time::Duration;

use support::binary::{shop, Ingress};
use support::raw::{keepalive_get, read_response, wait_for_close, Answer, Closed};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The `[proxy]` keys a test sets.
fn proxy_keys(keys: &str) -> &str {
    keys
}

/// The ingress process's resident set in bytes (`VmRSS`).
fn rss_bytes(ingress: &Ingress) -> u64 {
    let pid = ingress.pid().expect("the ingress runs");
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    kib * 1024
}

/// The largest resident set seen over `samples` readings 100 ms apart.
async fn peak_rss(ingress: &Ingress, samples: usize) -> u64 {
    let mut peak = 0;
    for _ in 0..samples {
        peak = peak.max(rss_bytes(ingress));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    peak
}

/// The `path` the upstream echoed in `answer`'s JSON body.
fn echoed_path(answer: &Answer) -> String {
    let body: serde_json::Value = serde_json::from_str(&answer.body)
        .unwrap_or_else(|_| panic!("a JSON body from the upstream: {answer:?}"));
    body["path"].as_str().unwrap_or_default().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_trickled_a_byte_a_second_is_cut_at_header_timeout() {
    let upstream = support::Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = shop(
        dir.path(),
        upstream.addr,
        proxy_keys("header_timeout = \"2s\"\n"),
    );
    let stream = TcpStream::connect(ingress.proxy).await.expect("connect");
    let (mut reader, mut writer) = stream.into_split();
    // 72 bytes at one a second: the whole head would take over a minute.
    let head =
        b"GET / HTTP/1.1\r\nHost: shop.example.com\r\nX-Slow: trickled-one-byte-at-a-time\r\n\r\n";
    let trickle = tokio::spawn(async move {
        for byte in head {
            if writer.write_all(&[*byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    });
    let closed = wait_for_close(&mut reader, Duration::from_secs(20)).await;
    trickle.abort();
    let Closed::Yes(bytes) = closed else {
        panic!("a head trickled a byte a second was still open after 20 s (header_timeout 2s): {closed:?}");
    };
    let text = String::from_utf8_lossy(&bytes);
    assert!(
        text.starts_with("HTTP/1.1 408"),
        "the cut is answered 408: {text:?}"
    );
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_keepalive_connection_is_closed_at_keepalive_timeout() {
    let upstream = support::Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = shop(
        dir.path(),
        upstream.addr,
        proxy_keys("keepalive_timeout = \"1s\"\n"),
    );
    let mut stream = TcpStream::connect(ingress.proxy).await.expect("connect");
    assert_eq!(keepalive_get(&mut stream).await, 200, "one request served");
    match wait_for_close(&mut stream, Duration::from_secs(10)).await {
        Closed::Yes(bytes) => assert!(
            bytes.is_empty(),
            "closed without an answer: {:?}",
            String::from_utf8_lossy(&bytes)
        ),
        Closed::No(_) => {
            panic!("an idle keep-alive connection was still open 10 s after its answer (keepalive_timeout 1s)")
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_unfinished_large_heads_cost_at_most_max_header_bytes_each() {
    const MAX_HEADER_BYTES: usize = 16_384;
    const CONNECTIONS: usize = 200;
    const SLACK: u64 = 8 * 1024 * 1024;
    let upstream = support::Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = shop(
        dir.path(),
        upstream.addr,
        proxy_keys("max_header_bytes = 16384\n"),
    );
    // Warm up the request path.
    let mut warm = TcpStream::connect(ingress.proxy).await.expect("connect");
    assert_eq!(keepalive_get(&mut warm).await, 200);
    drop(warm);
    // The connections themselves cost memory (each one's task), heads or not:
    // the baseline is taken with all of them open, each with a request line.
    let request_line = "GET / HTTP/1.1\r\n";
    let mut streams = Vec::new();
    for _ in 0..CONNECTIONS {
        let mut stream = TcpStream::connect(ingress.proxy).await.expect("connect");
        stream
            .write_all(request_line.as_bytes())
            .await
            .expect("write the request line");
        streams.push(stream);
    }
    let baseline = peak_rss(&ingress, 20).await;
    let budget = (CONNECTIONS * MAX_HEADER_BYTES) as u64 + SLACK;

    // Each goes on to max_header_bytes - 100 bytes of a head, ending in a header
    // line without its CRLF, and stays.
    let rest = "Host: shop.example.com\r\nX-Big: ";
    let rest = format!(
        "{rest}{}",
        "a".repeat(MAX_HEADER_BYTES - 100 - request_line.len() - rest.len())
    );
    for stream in &mut streams {
        stream
            .write_all(rest.as_bytes())
            .await
            .expect("write the unfinished head");
    }
    let stuck = peak_rss(&ingress, 20).await;
    assert!(
        stuck.saturating_sub(baseline) <= budget,
        "{CONNECTIONS} unfinished heads added {} bytes to the RSS ({baseline} before), more than {budget}",
        stuck - baseline
    );

    // Then each keeps sending the same header line, far past the limit.
    let more = vec![b'a'; 256 * 1024];
    let writers: Vec<_> = streams
        .into_iter()
        .map(|mut stream| {
            let more = more.clone();
            tokio::spawn(async move {
                let _ =
                    tokio::time::timeout(Duration::from_secs(10), stream.write_all(&more)).await;
                stream
            })
        })
        .collect();
    let mut streams = Vec::new();
    for writer in writers {
        streams.push(writer.await.expect("writer"));
    }
    let flooded = peak_rss(&ingress, 20).await;
    assert!(
        flooded.saturating_sub(baseline) <= budget,
        "{CONNECTIONS} heads sent past max_header_bytes added {} bytes to the RSS ({baseline} before), more than {budget}",
        flooded - baseline
    );
    drop(streams);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_in_one_write_are_all_answered_in_order() {
    let upstream = support::Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = shop(dir.path(), upstream.addr, "");
    let wait = Duration::from_secs(10);

    let mut stream = TcpStream::connect(ingress.proxy).await.expect("connect");
    stream
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: shop.example.com\r\n\r\nGET /two HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
        )
        .await
        .expect("write");
    let mut pending = Vec::new();
    for path in ["/one", "/two"] {
        let answer = read_response(&mut stream, &mut pending, wait)
            .await
            .unwrap_or_else(|| panic!("no answer to {path}"));
        assert_eq!(answer.status, 200, "{path}: {}", answer.head);
        assert_eq!(echoed_path(&answer), path);
    }

    // Three, the second with a Content-Length body the third follows at once.
    let mut stream = TcpStream::connect(ingress.proxy).await.expect("connect");
    stream
        .write_all(
            b"GET /first HTTP/1.1\r\nHost: shop.example.com\r\n\r\n\
              POST /second HTTP/1.1\r\nHost: shop.example.com\r\nContent-Length: 11\r\n\r\nhello world\
              GET /third HTTP/1.1\r\nHost: shop.example.com\r\n\r\n",
        )
        .await
        .expect("write");
    let mut pending = Vec::new();
    for path in ["/first", "/second", "/third"] {
        let answer = read_response(&mut stream, &mut pending, wait)
            .await
            .unwrap_or_else(|| panic!("no answer to {path}"));
        assert_eq!(answer.status, 200, "{path}: {}", answer.head);
        assert_eq!(echoed_path(&answer), path);
    }
    // And the connection still serves a next request.
    assert_eq!(keepalive_get(&mut stream).await, 200);
}

// SIGTERM drains first (proxy/src/http1/drain.rs): Pingora alone would cancel
// the request in flight when it shuts its runtimes down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_an_idle_connection_at_once_and_finishes_a_busy_one() {
    let upstream = support::Upstream::start("a").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = shop(dir.path(), upstream.addr, "");

    let mut idle = TcpStream::connect(ingress.proxy).await.expect("connect");
    assert_eq!(keepalive_get(&mut idle).await, 200, "served, then idle");
    let mut busy = TcpStream::connect(ingress.proxy).await.expect("connect");
    busy.write_all(b"GET /slow HTTP/1.1\r\nHost: shop.example.com\r\n\r\n")
        .await
        .expect("write");
    // Let the request reach the upstream, which holds it for 400 ms.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let pid = ingress.pid().expect("the ingress runs");
    // SAFETY: a plain signal to our own child's pid.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);

    let idle_closed = tokio::spawn(async move {
        // The grace for busy connections is seconds; an idle one does not wait.
        wait_for_close(&mut idle, Duration::from_secs(3)).await
    });
    let mut pending = Vec::new();
    let answer = read_response(&mut busy, &mut pending, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| {
            panic!(
                "the busy connection got no whole answer, only {:?}; the log:\n{}",
                String::from_utf8_lossy(&pending),
                ingress.log_text()
            )
        });
    assert_eq!(answer.status, 200, "{}", answer.head);
    assert_eq!(echoed_path(&answer), "/slow");
    assert!(
        answer.head.contains("connection: close"),
        "the answer during shutdown says Connection: close: {}",
        answer.head
    );
    assert!(
        matches!(
            wait_for_close(&mut busy, Duration::from_secs(10)).await,
            Closed::Yes(_)
        ),
        "the busy connection is closed after its answer"
    );
    match idle_closed.await.expect("idle") {
        Closed::Yes(bytes) => assert!(bytes.is_empty(), "{:?}", String::from_utf8_lossy(&bytes)),
        Closed::No(_) => panic!("the idle keep-alive connection was still open 3 s after SIGTERM"),
    }
}

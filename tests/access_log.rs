//! The access log and request ids, end to end: the real `ingress` binary with
//! `[log] access = PATH`, real upstreams (and a real `--command` preview) on
//! loopback. Runs through the fast path by default and through pingora-proxy
//! with `INGRESS_TEST_FAST_PATH=off`.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::binary::Ingress;
use support::Upstream;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/app.py");

/// An ingress logging to `dir/access.log` in `format`, with `shop` on
/// `shop.example.com` served by `upstream`.
fn ingress_logging(dir: &Path, format: &str, upstream: SocketAddr, proxy_keys: &str) -> Ingress {
    let sections = format!(
        "[log]\naccess = {:?}\naccess_format = \"{format}\"\n\n[runtime]\nstop_grace = \"2s\"\nstart_timeout = \"10s\"\n",
        access_path(dir).display().to_string()
    );
    let ingress = Ingress::start_with_proxy(dir, proxy_keys, &sections);
    add_app(&ingress, "shop", "shop.example.com", upstream);
    ingress
}

fn add_app(ingress: &Ingress, app: &str, host: &str, upstream: SocketAddr) {
    ingress.ctl(&["app", "create", app]).expect_ok();
    ingress
        .ctl(&["route", "add", host, "--app", app])
        .expect_ok();
    ingress
        .ctl(&["deploy", app, "--upstream", &upstream.to_string()])
        .expect_ok();
}

fn access_path(dir: &Path) -> PathBuf {
    dir.join("access.log")
}

/// The line of `path` that holds `needle`, waiting up to 10 s for the writer.
fn line_with(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(line) = text.lines().find(|line| line.contains(needle)) {
            return line.to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no line with {needle} in {}:\n{text}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The JSON line of `path` whose request id is `id`.
fn json_line(path: &Path, id: &str) -> Value {
    let line = line_with(path, &format!("\"request_id\":\"{id}\""));
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Answer {
    fn request_id(&self) -> String {
        self.headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .expect("every answer carries x-request-id")
            .to_string()
    }

    /// What the echoing upstream saw of `header`.
    fn upstream_saw(&self, header: &str) -> Option<String> {
        let value: Value = serde_json::from_str(&self.body).expect("upstream JSON");
        value["headers"][header].as_str().map(str::to_string)
    }
}

async fn get(ingress: &Ingress, host: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
    let mut request = support::client()
        .get(format!("http://{}{path}", ingress.proxy))
        .header("host", host);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = request.send().await.expect("request");
    Answer {
        status: response.status().as_u16(),
        headers: response.headers().clone(),
        body: response.text().await.expect("body"),
    }
}

fn is_generated(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `2026-12-02T03:24:53.123Z`: RFC 3339, UTC, milliseconds.
fn assert_rfc3339_millis(time: &Value) {
    let time = time.as_str().expect("time is a string");
    let bytes = time.as_bytes();
    assert_eq!(bytes.len(), 24, "{time}");
    for (at, want) in [
        (4, b'-'),
        (7, b'-'),
        (10, b'T'),
        (13, b':'),
        (16, b':'),
        (19, b'.'),
        (23, b'Z'),
    ] {
        assert_eq!(bytes[at], want, "{time}");
    }
    assert!(time.starts_with("20"), "{time}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_for_a_200_a_404_and_a_502_with_request_ids() {
    let upstream = Upstream::start("shop").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = ingress_logging(dir.path(), "json", upstream.addr, "");
    // An app whose upstream is gone: connections to it are refused.
    let gone = Upstream::start("gone").await;
    let gone_addr = gone.addr;
    add_app(&ingress, "dead", "dead.example.com", gone_addr);
    drop(gone);
    let path = access_path(dir.path());

    // 200, with a valid client id and trace context.
    let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    let ok = get(
        &ingress,
        "shop.example.com",
        "/hello?x=1",
        &[
            ("x-request-id", "client-id.1:a_b-c"),
            ("traceparent", traceparent),
            ("tracestate", "vendor=opaque,other=1"),
            ("user-agent", "access-test/1"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert_eq!(ok.request_id(), "client-id.1:a_b-c");
    assert_eq!(
        ok.upstream_saw("x-request-id").as_deref(),
        Some("client-id.1:a_b-c")
    );
    assert_eq!(ok.upstream_saw("traceparent").as_deref(), Some(traceparent));
    assert_eq!(
        ok.upstream_saw("tracestate").as_deref(),
        Some("vendor=opaque,other=1")
    );
    let line = json_line(&path, "client-id.1:a_b-c");
    assert_rfc3339_millis(&line["time"]);
    assert_eq!(line["client_ip"], "127.0.0.1");
    assert_eq!(line["method"], "GET");
    assert_eq!(line["host"], "shop.example.com");
    assert_eq!(line["path"], "/hello?x=1");
    assert_eq!(line["protocol"], "HTTP/1.1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["bytes_in"], 0);
    assert_eq!(line["bytes_out"], ok.body.len() as u64, "{line}");
    assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    assert_eq!(line["upstream_addr"], upstream.addr.to_string());
    assert!(line["upstream_ms"].as_f64().is_some(), "{line}");
    assert!(
        line["upstream_ms"].as_f64() <= line["duration_ms"].as_f64(),
        "{line}"
    );
    assert_eq!(line["app"], "shop");
    assert!(
        line["version"].as_str().is_some_and(|v| v.starts_with('v')),
        "{line}"
    );
    assert_eq!(line["label"], Value::Null);
    assert_eq!(line["kind"], "exact");
    assert_eq!(line["cold_start_ms"], Value::Null);
    assert_eq!(line["error"], Value::Null);
    assert_eq!(line["user_agent"], "access-test/1");

    // An invalid id is replaced, for the upstream and the client alike.
    let replaced = get(
        &ingress,
        "shop.example.com",
        "/",
        &[("x-request-id", "no spaces allowed")],
    )
    .await;
    let id = replaced.request_id();
    assert!(is_generated(&id), "{id}");
    assert_eq!(replaced.upstream_saw("x-request-id"), Some(id.clone()));
    json_line(&path, &id);
    // A valid id that `Connection` names (a hop-by-hop field to Pingora, which
    // drops it before our filter) still reaches the upstream.
    let named = get(
        &ingress,
        "shop.example.com",
        "/",
        &[("x-request-id", "hop-1"), ("connection", "x-request-id")],
    )
    .await;
    assert_eq!(named.request_id(), "hop-1");
    assert_eq!(named.upstream_saw("x-request-id").as_deref(), Some("hop-1"));
    // No id: one is made, distinct per request.
    let fresh = get(&ingress, "shop.example.com", "/", &[]).await;
    let fresh_id = fresh.request_id();
    assert!(is_generated(&fresh_id) && fresh_id != id, "{fresh_id}");
    assert_eq!(fresh.upstream_saw("x-request-id"), Some(fresh_id.clone()));

    // 404 before any upstream: the id is in the JSON body, the header and the line.
    let missing = get(
        &ingress,
        "nowhere.example.com",
        "/x",
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(missing.status, 404);
    let body: Value = serde_json::from_str(&missing.body).expect("JSON error body");
    let id = missing.request_id();
    assert!(is_generated(&id), "{id}");
    assert_eq!(body["request_id"], id);
    assert_eq!(body["error"], "no_route");
    let line = json_line(&path, &id);
    assert_eq!(line["status"], 404);
    assert_eq!(line["error"], "no_route");
    assert_eq!(line["kind"], "not_found");
    assert_eq!(line["host"], "nowhere.example.com");
    assert_eq!(line["app"], Value::Null);
    assert_eq!(line["upstream_addr"], Value::Null);

    // 502: the upstream refuses. A text body ends with the id.
    let failed = get(
        &ingress,
        "dead.example.com",
        "/y",
        &[("x-request-id", "req-502")],
    )
    .await;
    assert_eq!(failed.status, 502, "{}", failed.body);
    assert_eq!(failed.request_id(), "req-502");
    assert!(
        failed.body.trim_end().ends_with("(request id req-502)"),
        "{}",
        failed.body
    );
    let line = json_line(&path, "req-502");
    assert_eq!(line["status"], 502);
    assert_eq!(line["error"], "upstream_error");
    assert_eq!(line["app"], "dead");
    assert_eq!(line["upstream_addr"], gone_addr.to_string());

    // Nothing was dropped on the way, and the 200s were the fast path's
    // (unless this run turned it off).
    let metrics = ingress.metrics_text().await;
    assert!(
        metrics.contains("ingress_access_log_dropped_total 0"),
        "{metrics}"
    );
    let fast: u64 = metrics
        .lines()
        .find_map(|line| line.strip_prefix("ingress_fast_path_requests_total "))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0);
    if support::fast_path_off() {
        assert_eq!(fast, 0);
    } else {
        assert_eq!(fast, 3, "the three 200s went through the fast path");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_woken_request_logs_its_cold_start() {
    let upstream = Upstream::start("shop").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = ingress_logging(dir.path(), "json", upstream.addr, "");
    let command = format!("exec python3 {APP} --delay-ms 200");
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
    let woken = get(
        &ingress,
        "pr-1.shop.example.com",
        "/",
        &[("x-request-id", "wake-1")],
    )
    .await;
    assert_eq!(woken.status, 200, "{}", woken.body);
    assert_eq!(woken.request_id(), "wake-1");
    let line = json_line(&access_path(dir.path()), "wake-1");
    assert_eq!(line["status"], 200);
    assert_eq!(line["label"], "pr-1");
    assert_eq!(line["kind"], "label");
    let cold = line["cold_start_ms"]
        .as_u64()
        .unwrap_or_else(|| panic!("{line}"));
    assert!(cold >= 200, "{line}");
    let header: u64 = woken
        .headers
        .get("x-ingress-cold-start")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .expect("x-ingress-cold-start");
    assert_eq!(cold, header);
    // Served warm now: no cold start.
    get(
        &ingress,
        "pr-1.shop.example.com",
        "/",
        &[("x-request-id", "warm-1")],
    )
    .await;
    let line = json_line(&access_path(dir.path()), "warm-1");
    assert_eq!(line["cold_start_ms"], Value::Null, "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_combined_format_is_the_apache_and_nginx_one() {
    let upstream = Upstream::start("shop").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = ingress_logging(dir.path(), "combined", upstream.addr, "");
    let ok = get(
        &ingress,
        "shop.example.com",
        "/c?q=1",
        &[
            ("user-agent", "combined-test/2"),
            ("referer", "http://ref.example/page"),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    let line = line_with(&access_path(dir.path()), "combined-test/2");
    // 127.0.0.1 - - [02/Dec/2026:03:24:53 +0000] "GET /c?q=1 HTTP/1.1" 200 N "referer" "agent"
    let (prefix, rest) = line.split_once(" [").expect("time opens with [");
    assert_eq!(prefix, "127.0.0.1 - -");
    let (time, rest) = rest.split_once("] ").expect("time closes with ]");
    assert_eq!(time.len(), 26, "{time}");
    assert!(
        time.ends_with(" +0000") && time.as_bytes()[2] == b'/',
        "{time}"
    );
    assert_eq!(
        rest,
        format!(
            "\"GET /c?q=1 HTTP/1.1\" 200 {} \"http://ref.example/page\" \"combined-test/2\"",
            ok.body.len()
        )
    );
    assert!(!line.contains('{'), "not JSON: {line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_access_log_that_is_off_writes_nothing() {
    let upstream = Upstream::start("shop").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = Ingress::start(dir.path(), "[log]\naccess = \"off\"\n");
    add_app(&ingress, "shop", "shop.example.com", upstream.addr);
    let ok = get(
        &ingress,
        "shop.example.com",
        "/",
        &[("x-request-id", "silent-1")],
    )
    .await;
    assert_eq!(ok.status, 200);
    // Still an id for the upstream and the client, just no line anywhere.
    assert_eq!(ok.request_id(), "silent-1");
    let missing = get(
        &ingress,
        "nowhere.example.com",
        "/",
        &[("x-request-id", "silent-2")],
    )
    .await;
    assert_eq!(missing.status, 404);
    std::thread::sleep(Duration::from_millis(500));
    let output = ingress.log_text();
    assert!(
        !output.contains("silent-1") && !output.contains("silent-2"),
        "{output}"
    );
    assert!(!access_path(dir.path()).exists());
    // logrotate may still send SIGUSR1: with the log off it changes nothing
    // (its default action would end the process).
    let pid = ingress.pid().expect("running") as i32;
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    std::thread::sleep(Duration::from_millis(200));
    let after = get(&ingress, "shop.example.com", "/", &[]).await;
    assert_eq!(after.status, 200, "the process lives on after SIGUSR1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_reopens_the_file_after_a_rotation() {
    let upstream = Upstream::start("shop").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = ingress_logging(dir.path(), "json", upstream.addr, "");
    let path = access_path(dir.path());
    let rotated = dir.path().join("access.log.1");
    get(
        &ingress,
        "shop.example.com",
        "/",
        &[("x-request-id", "before-rotate")],
    )
    .await;
    json_line(&path, "before-rotate");
    std::fs::rename(&path, &rotated).expect("rotate");
    let pid = ingress.pid().expect("running") as i32;
    // SAFETY: a signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGUSR1) }, 0);
    // The writer looks at the signal at each drain, every 20 ms, and reopening
    // creates the file: wait for it rather than for a fixed time, which a
    // loaded machine can overrun.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "SIGUSR1 did not reopen the file");
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = get(
        &ingress,
        "shop.example.com",
        "/",
        &[("x-request-id", "after-rotate")],
    )
    .await;
    assert_eq!(after.status, 200, "the process lives on after SIGUSR1");
    json_line(&path, "after-rotate");
    let old = std::fs::read_to_string(&rotated).expect("rotated file");
    assert!(
        old.contains("before-rotate") && !old.contains("after-rotate"),
        "{old}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_requests_are_logged_with_their_ids() {
    let upstream = Upstream::start("shop").await;
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = ingress_logging(dir.path(), "json", upstream.addr, "h2c = true\n");
    let client = reqwest::Client::builder()
        .http2_prior_knowledge()
        .resolve("shop.example.com", ingress.proxy)
        .timeout(Duration::from_secs(10))
        .build()
        .expect("client");
    let response = client
        .get(format!(
            "http://shop.example.com:{}/h2?z=9",
            ingress.proxy.port()
        ))
        .header("x-request-id", "h2-1")
        .send()
        .await
        .expect("h2 request");
    assert_eq!(response.version(), reqwest::Version::HTTP_2);
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(
        response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some("h2-1")
    );
    let body: Value = response.json().await.expect("upstream JSON");
    assert_eq!(body["headers"]["x-request-id"], "h2-1");
    let line = json_line(&access_path(dir.path()), "h2-1");
    assert_eq!(line["protocol"], "HTTP/2.0");
    assert_eq!(line["status"], 200);
    assert_eq!(line["path"], "/h2?z=9");
    assert_eq!(line["app"], "shop");
}

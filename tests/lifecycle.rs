//! End-to-end tests of the sandbox lifecycle (SPEC §4, §5, §9; issue 4): the real
//! `ingress` binary runs real processes (`tests/support/app.py`) on loopback, and
//! the tests drive it with HTTP requests and the real `ingressctl`. Every timing is
//! a short configured interval; no test asserts how fast something was.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::binary::Ingress;
use support::{raw_request, RawResponse};
use tokio::io::AsyncWriteExt;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/app.py");
const PREVIEW_HOST: &str = "pr-1.shop.example.com";

/// Short lifecycle intervals shared by most tests; `extra` sections are added.
fn sections(extra: &str) -> String {
    format!(
        "[runtime]\nstop_grace = \"2s\"\ndrain_timeout = \"5s\"\nstart_timeout = \"10s\"\n\n{extra}"
    )
}

/// An ingress with app `shop` on `shop.example.com`.
struct Shop {
    ingress: Ingress,
    dir: tempfile::TempDir,
}

impl Shop {
    fn start(config: &str) -> Shop {
        let dir = tempfile::tempdir().expect("temp dir");
        let ingress = Ingress::start(dir.path(), config);
        ingress.ctl(&["app", "create", "shop"]).expect_ok();
        ingress
            .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
            .expect_ok();
        Shop { ingress, dir }
    }

    /// The command of a version whose files (starts, pid) are named after `name`.
    fn command(&self, name: &str, options: &str) -> String {
        format!(
            "exec python3 {APP} --starts {} --pid {} {options}",
            self.file(&format!("{name}.starts")).display(),
            self.file(&format!("{name}.pid")).display()
        )
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Times the app named `name` has started.
    fn starts(&self, name: &str) -> usize {
        std::fs::read_to_string(self.file(&format!("{name}.starts")))
            .map(|text| text.lines().count())
            .unwrap_or(0)
    }

    /// Deploys a process preview with `label` on `branch`; returns its id.
    fn deploy_preview(&self, label: &str, branch: &str, name: &str, options: &str) -> String {
        let command = self.command(name, options);
        let deployed = self
            .ingress
            .ctl(&[
                "deploy",
                "shop",
                "--command",
                &command,
                "--ephemeral",
                label,
                "--branch",
                branch,
                "--output",
                "json",
            ])
            .json();
        deployed["id"].as_str().expect("version id").to_string()
    }

    /// The version `id` as `ingressctl versions --output json` shows it.
    fn version(&self, id: &str) -> Value {
        let versions = self
            .ingress
            .ctl(&["versions", "shop", "--output", "json"])
            .json();
        versions
            .as_array()
            .and_then(|all| all.iter().find(|v| v["id"] == id))
            .cloned()
            .unwrap_or_else(|| panic!("version {id} is not listed: {versions}"))
    }

    /// Waits (at most `limit`) until `check` holds for version `id`.
    fn wait_for(&self, id: &str, limit: Duration, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let version = self.version(id);
            if check(&version) {
                return version;
            }
            assert!(
                Instant::now() < deadline,
                "version {id} did not reach the expected state within {limit:?}: {version}\n{}",
                self.ingress.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    async fn get(&self, host: &str, path: &str) -> RawResponse {
        raw_request(
            self.ingress.proxy,
            &format!("GET {path} HTTP/1.1\r\nHost: {host}"),
        )
        .await
    }

    fn audit(&self) -> String {
        self.ingress.ctl(&["audit", "--limit", "200"]).expect_ok()
    }

    fn metrics(&self) -> String {
        let mut stream =
            std::net::TcpStream::connect(self.ingress.http).expect("connect to the admin port");
        use std::io::{Read, Write};
        stream
            .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
            .expect("write");
        let mut text = String::new();
        stream.read_to_string(&mut text).expect("read");
        text
    }
}

fn observed(version: &Value) -> &str {
    version["observed_state"].as_str().unwrap_or("")
}

fn pid_of(path: &Path) -> i32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {}", path.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cold_preview_is_woken_by_its_first_request_and_served() {
    let shop = Shop::start(&sections(""));
    let id = shop.deploy_preview("pr-1", "feat", "app", "");
    let before = shop.version(&id);
    assert_eq!(before["desired_state"], "stopped", "{before}");
    assert_eq!(observed(&before), "stopped");
    assert_eq!(before["runtime"], "process");
    assert_eq!(
        shop.starts("app"),
        0,
        "a preview sleeps until its first request"
    );

    let first = shop.get(PREVIEW_HOST, "/").await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(first.body, format!("hello from {id}\n"));
    let cold: u64 = first
        .header("x-ingress-cold-start")
        .expect("a woken request carries x-ingress-cold-start")
        .parse()
        .expect("milliseconds");
    assert!(cold > 0);
    let second = shop.get(PREVIEW_HOST, "/").await;
    assert_eq!(second.status, 200);
    assert_eq!(second.header("x-ingress-cold-start"), None);
    assert_eq!(shop.starts("app"), 1);

    let after = shop.wait_for(&id, Duration::from_secs(5), |v| {
        v["desired_state"] == "running"
    });
    assert_eq!(observed(&after), "ready");
    assert!(after["last_activity_at"].is_string(), "{after}");
    assert!(shop.audit().contains("reason request"));
    let logs = shop.ingress.ctl(&["logs", "shop", &id]).expect_ok();
    assert!(logs.contains(&format!("app {id}: listening on")), "{logs}");
    assert!(logs.contains("app ") && logs.contains("GET /"), "{logs}");
    let metrics = shop.metrics();
    assert!(
        metrics.contains("ingress_wakes_total{result=\"ready\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ingress_wake_seconds_count 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("ingress_versions{observed=\"ready\"} 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_cold_requests_cause_one_start() {
    let shop = Shop::start(&sections(""));
    let id = shop.deploy_preview("pr-1", "feat", "app", "--delay-ms 300");
    let proxy = shop.ingress.proxy;
    let requests: Vec<_> = (0..200)
        .map(|_| {
            tokio::spawn(async move {
                raw_request(proxy, &format!("GET / HTTP/1.1\r\nHost: {PREVIEW_HOST}")).await
            })
        })
        .collect();
    let mut held = 0;
    for request in requests {
        let response = request.await.expect("request task");
        assert_eq!(response.status, 200, "{}", response.body);
        assert_eq!(response.body, format!("hello from {id}\n"));
        held += usize::from(response.header("x-ingress-cold-start").is_some());
    }
    assert_eq!(shop.starts("app"), 1, "single flight: exactly one start");
    assert!(held >= 1, "at least the first requests were held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wake_slower_than_the_timeout_answers_503_with_retry_after() {
    let shop = Shop::start(&sections("[wake]\ntimeout = \"300ms\"\n"));
    let id = shop.deploy_preview("pr-1", "feat", "app", "--delay-ms 1500");
    let answer = raw_request(
        shop.ingress.proxy,
        &format!("GET / HTTP/1.1\r\nHost: {PREVIEW_HOST}\r\nAccept: application/json"),
    )
    .await;
    assert_eq!(answer.status, 503, "{}", answer.body);
    assert!(answer.header("retry-after").is_some());
    let body: Value = serde_json::from_str(&answer.body).expect("JSON error");
    assert_eq!(body["error"], "wake_timeout");
    assert!(body["message"].as_str().unwrap_or("").contains(&id));
    // The start goes on: later requests are served by that same start.
    shop.wait_for(&id, Duration::from_secs(10), |v| observed(v) == "ready");
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    assert_eq!(shop.starts("app"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_past_max_waiters_get_503_at_once() {
    let shop = Shop::start(&sections("[wake]\nmax_waiters = 2\n"));
    shop.deploy_preview("pr-1", "feat", "app", "--delay-ms 1000");
    let proxy = shop.ingress.proxy;
    let requests: Vec<_> = (0..6)
        .map(|_| {
            tokio::spawn(async move {
                raw_request(proxy, &format!("GET / HTTP/1.1\r\nHost: {PREVIEW_HOST}")).await
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for request in requests {
        let response = request.await.expect("request task");
        if response.status == 503 {
            assert!(
                response.body.contains("wake.max_waiters"),
                "{}",
                response.body
            );
            assert_eq!(response.header("retry-after"), Some("1"));
        }
        statuses.push(response.status);
    }
    statuses.sort_unstable();
    assert_eq!(
        statuses,
        [200, 200, 503, 503, 503, 503],
        "two held, four refused"
    );
    assert!(shop
        .metrics()
        .contains("ingress_wake_requests_total{result=\"overflow\"} 4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_while_held_does_not_cancel_the_start() {
    let shop = Shop::start(&sections(""));
    let id = shop.deploy_preview("pr-1", "feat", "app", "--delay-ms 800");
    let mut stream = tokio::net::TcpStream::connect(shop.ingress.proxy)
        .await
        .expect("connect");
    stream
        .write_all(format!("GET / HTTP/1.1\r\nHost: {PREVIEW_HOST}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    tokio::time::sleep(Duration::from_millis(150)).await;
    drop(stream);
    // The hang-up is noticed while held, and the start still completes.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !shop
        .metrics()
        .contains("ingress_wake_requests_total{result=\"client_gone\"} 1")
    {
        assert!(Instant::now() < deadline, "{}", shop.metrics());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    shop.wait_for(&id, Duration::from_secs(10), |v| observed(v) == "ready");
    let served = shop.get(PREVIEW_HOST, "/").await;
    assert_eq!(served.status, 200);
    assert_eq!(served.header("x-ingress-cold-start"), None);
    assert_eq!(shop.starts("app"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_mode_serves_browsers_a_starting_page_and_holds_api_clients() {
    let shop = Shop::start(&sections("[wake]\nmode = \"page\"\n"));
    let id = shop.deploy_preview("pr-1", "feat", "app", "--delay-ms 500");
    let browser = raw_request(
        shop.ingress.proxy,
        &format!(
            "GET / HTTP/1.1\r\nHost: {PREVIEW_HOST}\r\nAccept: text/html,application/xhtml+xml"
        ),
    )
    .await;
    assert_eq!(browser.status, 503);
    assert!(browser
        .header("content-type")
        .is_some_and(|t| t.starts_with("text/html")));
    assert!(
        browser.body.contains("http-equiv=\"refresh\""),
        "{}",
        browser.body
    );
    assert!(browser.body.contains(&id));
    let api = raw_request(
        shop.ingress.proxy,
        &format!("GET / HTTP/1.1\r\nHost: {PREVIEW_HOST}\r\nAccept: application/json"),
    )
    .await;
    assert_eq!(api.status, 200, "{}", api.body);
    assert!(api.header("x-ingress-cold-start").is_some());
    let reload = raw_request(
        shop.ingress.proxy,
        &format!("GET / HTTP/1.1\r\nHost: {PREVIEW_HOST}\r\nAccept: text/html"),
    )
    .await;
    assert_eq!(
        reload.status, 200,
        "the page's reload reaches the woken app"
    );
    assert_eq!(shop.starts("app"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_matching_the_ignore_rules_neither_wake_nor_count_as_activity() {
    let shop = Shop::start(&sections(
        "[wake]\nignore_paths = [\"/healthz\"]\nignore_user_agents = [\"kube-probe\"]\n",
    ));
    let id = shop.deploy_preview("pr-1", "feat", "app", "");
    let probe = shop.get(PREVIEW_HOST, "/healthz").await;
    assert_eq!(probe.status, 503, "{}", probe.body);
    assert!(probe.body.contains("do not wake it"), "{}", probe.body);
    let kube = raw_request(
        shop.ingress.proxy,
        &format!("GET / HTTP/1.1\r\nHost: {PREVIEW_HOST}\r\nUser-Agent: kube-probe/1.29"),
    )
    .await;
    assert_eq!(kube.status, 503);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        shop.starts("app"),
        0,
        "ignored requests never start the version"
    );
    let version = shop.version(&id);
    assert_eq!(observed(&version), "stopped");
    assert!(version["last_activity_at"].is_null(), "{version}");

    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    // Once it runs, probes are served but still do not count as activity.
    let before = shop.version(&id)["last_activity_at"].clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(shop.get(PREVIEW_HOST, "/healthz").await.status, 200);
    assert_eq!(shop.version(&id)["last_activity_at"], before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_start_answers_502_with_the_reason_and_retries_after_the_back_off() {
    let shop = Shop::start(&sections(
        "[wake]\nfailure_backoff = \"5s\"\nfailure_backoff_max = \"5s\"\n",
    ));
    let id = shop.deploy_preview("pr-1", "feat", "app", "--exit 3");
    let failed = shop.get(PREVIEW_HOST, "/").await;
    assert_eq!(failed.status, 502, "{}", failed.body);
    assert!(
        failed.body.contains("exited before it was ready"),
        "{}",
        failed.body
    );
    assert!(
        failed.body.contains("missing configuration"),
        "{}",
        failed.body
    );
    assert!(failed.header("retry-after").is_some());
    assert_eq!(shop.starts("app"), 1);
    let version = shop.wait_for(&id, Duration::from_secs(5), |v| observed(v) == "failed");
    assert!(
        version["failure"].as_str().unwrap_or("").contains("exit"),
        "{version}"
    );

    // Within the back-off: 502 at once, no new start.
    let again = shop.get(PREVIEW_HOST, "/").await;
    assert_eq!(again.status, 502);
    assert!(again.body.contains("next start"), "{}", again.body);
    assert_eq!(shop.starts("app"), 1);

    tokio::time::sleep(Duration::from_millis(5200)).await;
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 502);
    assert_eq!(shop.starts("app"), 2, "a new start after the back-off");
    assert!(shop.audit().contains("version.start_failed"));
    assert!(shop
        .metrics()
        .contains("ingress_wakes_total{result=\"failed\"} 2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_preview_is_stopped_and_woken_again_by_the_next_request() {
    let shop = Shop::start(&sections(
        "[idle]\ntimeout = \"1s\"\ncheck_interval = \"100ms\"\n",
    ));
    let id = shop.deploy_preview("pr-1", "feat", "app", "");
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    let stopped = shop.wait_for(&id, Duration::from_secs(10), |v| {
        v["desired_state"] == "stopped" && observed(v) == "stopped"
    });
    assert!(stopped["pending"].is_null(), "{stopped}");
    let audit = shop.audit();
    assert!(audit.contains("reason idle"), "{audit}");
    assert!(audit.contains("system"), "{audit}");
    assert!(shop.metrics().contains("ingress_idle_stops_total 1"));

    let woken = shop.get(PREVIEW_HOST, "/").await;
    assert_eq!(woken.status, 200);
    assert!(woken.header("x-ingress-cold-start").is_some());
    assert_eq!(shop.starts("app"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_request_is_not_cut_by_the_idle_stop() {
    let shop = Shop::start(&sections(
        "[idle]\ntimeout = \"300ms\"\ncheck_interval = \"100ms\"\n",
    ));
    let id = shop.deploy_preview("pr-1", "feat", "app", "");
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    // Longer than the idle timeout: the version has a request in flight throughout.
    let slow = shop.get(PREVIEW_HOST, "/slow?ms=2000").await;
    assert_eq!(slow.status, 200, "{}", slow.body);
    assert_eq!(slow.body, format!("hello from {id}\n"));
    assert_eq!(shop.starts("app"), 1, "not stopped while the request ran");
    // Idle afterwards: stopped.
    shop.wait_for(&id, Duration::from_secs(10), |v| observed(v) == "stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_preview_of_a_branch_supersedes_older_ones_after_the_grace() {
    // A grace long enough for a loaded machine's ctl runs to see it pending.
    let shop = Shop::start(&sections("[supersede]\ngrace = \"5s\"\n"));
    let old = shop.deploy_preview("pr-1", "feature/login", "old", "");
    let other_branch = shop.deploy_preview("pr-9", "main", "other", "");
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    assert_eq!(shop.get("pr-9.shop.example.com", "/").await.status, 200);
    let new = shop.deploy_preview("pr-2", "feature/login", "new", "");
    assert_eq!(shop.get("pr-2.shop.example.com", "/").await.status, 200);

    let pending = shop.wait_for(&old, Duration::from_secs(5), |v| !v["pending"].is_null());
    assert_eq!(pending["pending"]["reason"], "superseded", "{pending}");
    assert_eq!(pending["pending"]["desired_state"], "stopped");
    assert_eq!(
        observed(&pending),
        "ready",
        "still serving during the grace"
    );
    shop.wait_for(&old, Duration::from_secs(20), |v| {
        v["desired_state"] == "stopped" && observed(v) == "stopped" && v["pending"].is_null()
    });
    assert_eq!(observed(&shop.version(&new)), "ready");
    assert_eq!(
        observed(&shop.version(&other_branch)),
        "ready",
        "other branches stay"
    );
    assert!(shop.audit().contains("reason superseded"));
    assert!(shop.metrics().contains("ingress_supersede_stops_total 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_wake_overwrites_a_pending_stop_and_a_manual_stop_drains() {
    let shop = Shop::start(&sections("[supersede]\ngrace = \"5s\"\n"));
    let old = shop.deploy_preview("pr-1", "feat", "old", "");
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    shop.deploy_preview("pr-2", "feat", "new", "");
    assert_eq!(shop.get("pr-2.shop.example.com", "/").await.status, 200);
    shop.wait_for(&old, Duration::from_secs(5), |v| !v["pending"].is_null());

    let woken = shop
        .ingress
        .ctl(&["wake", "shop", &old, "--output", "json"])
        .json();
    assert!(
        woken["pending"].is_null(),
        "the wake replaced the pending stop: {woken}"
    );
    assert_eq!(woken["observed_state"], "ready");
    // Past the end of the grace: the replaced stop must not fire.
    std::thread::sleep(Duration::from_millis(5500));
    let still = shop.version(&old);
    assert_eq!(still["desired_state"], "running", "{still}");
    assert_eq!(observed(&still), "ready");
    assert!(shop.audit().contains("replaced a pending stop"));

    // A manual stop while a request is in flight: the request finishes.
    let proxy = shop.ingress.proxy;
    let slow = tokio::spawn(async move {
        raw_request(
            proxy,
            &format!("GET /slow?ms=800 HTTP/1.1\r\nHost: {PREVIEW_HOST}"),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopped = shop
        .ingress
        .ctl(&["stop", "shop", &old, "--output", "json"])
        .json();
    assert_eq!(stopped["desired_state"], "stopped");
    let slow = slow.await.expect("slow request");
    assert_eq!(slow.status, 200, "drained, not cut: {}", slow.body);
    shop.wait_for(&old, Duration::from_secs(10), |v| observed(v) == "stopped");
    // A request after the stop wakes it again.
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    assert_eq!(shop.starts("old"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_and_wake_refuse_what_would_do_harm_or_nothing() {
    // min_ttl 1s: the test deploys a preview that expires within the test.
    let shop = Shop::start(&sections(
        "[ephemeral]\ngc_interval = \"1h\"\nmin_ttl = \"1s\"\n",
    ));
    let command = shop.command("prod", "");
    let prod = shop
        .ingress
        .ctl(&["deploy", "shop", "--command", &command, "--output", "json"])
        .json()["id"]
        .as_str()
        .expect("id")
        .to_string();
    shop.wait_for(&prod, Duration::from_secs(10), |v| observed(v) == "ready");
    assert_eq!(shop.get("shop.example.com", "/").await.status, 200);

    let refused = shop.ingress.ctl(&["stop", "shop", &prod]);
    assert!(!refused.ok());
    assert!(
        refused.stderr().contains("active production version")
            && refused.stderr().contains("--force"),
        "{}",
        refused.stderr()
    );
    assert_eq!(
        observed(&shop.version(&prod)),
        "ready",
        "refused: nothing changed"
    );

    let forced = shop
        .ingress
        .ctl(&["stop", "shop", &prod, "--force", "--output", "json"])
        .json();
    assert_eq!(forced["desired_state"], "stopped");
    shop.wait_for(&prod, Duration::from_secs(10), |v| observed(v) == "stopped");
    // The next request wakes it: production is never left unreachable.
    assert_eq!(shop.get("shop.example.com", "/").await.status, 200);

    // A replaced production version is reachable by no request: waking it is refused.
    let newer = shop
        .ingress
        .ctl(&[
            "deploy",
            "shop",
            "--upstream",
            "127.0.0.1:9",
            "--output",
            "json",
        ])
        .json()["id"]
        .as_str()
        .expect("id")
        .to_string();
    assert_ne!(newer, prod);
    let refused = shop.ingress.ctl(&["wake", "shop", &prod]);
    assert!(!refused.ok());
    assert!(
        refused.stderr().contains("no request can reach it"),
        "{}",
        refused.stderr()
    );

    for (action, version) in [("stop", "v000000000000"), ("wake", "v000000000000")] {
        let refused = shop.ingress.ctl(&[action, "shop", version]);
        assert!(!refused.ok());
        assert!(
            refused.stderr().contains("does not exist"),
            "{}",
            refused.stderr()
        );
    }
    let short = shop
        .ingress
        .ctl(&[
            "deploy",
            "shop",
            "--upstream",
            "127.0.0.1:9",
            "--ephemeral",
            "short",
            "--ttl",
            "1s",
            "--output",
            "json",
        ])
        .json()["id"]
        .as_str()
        .expect("id")
        .to_string();
    std::thread::sleep(Duration::from_millis(1100));
    for action in ["stop", "wake"] {
        let refused = shop.ingress.ctl(&[action, "shop", &short]);
        assert!(!refused.ok());
        assert!(refused.stderr().contains("expired"), "{}", refused.stderr());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pending_schedule_survives_a_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut shop = Shop {
        ingress: Ingress::start(dir.path(), &sections("[supersede]\ngrace = \"4s\"\n")),
        dir,
    };
    shop.ingress.ctl(&["app", "create", "shop"]).expect_ok();
    shop.ingress
        .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
        .expect_ok();
    let old = shop.deploy_preview("pr-1", "feat", "old", "");
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    shop.deploy_preview("pr-2", "feat", "new", "");
    assert_eq!(shop.get("pr-2.shop.example.com", "/").await.status, 200);
    let pending = shop.wait_for(&old, Duration::from_secs(5), |v| !v["pending"].is_null());

    let status = shop.ingress.terminate();
    assert!(status.success(), "{status}");
    shop.ingress.restart();
    let after = shop.version(&old);
    assert_eq!(
        after["pending"], pending["pending"],
        "the schedule was stored"
    );
    assert_eq!(after["desired_state"], "running");
    // Running versions are started again at boot; the schedule still runs.
    shop.wait_for(&old, Duration::from_secs(15), |v| {
        v["desired_state"] == "stopped" && v["pending"].is_null()
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_from_outside_is_failed_and_the_next_request_wakes_it() {
    let shop = Shop::start(&sections(""));
    let id = shop.deploy_preview("pr-1", "feat", "app", "");
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    let pid = pid_of(&shop.file("app.pid"));
    // SAFETY: a plain signal to the app's pid, which this test's ingress started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let failed = shop.wait_for(&id, Duration::from_secs(10), |v| observed(v) == "failed");
    assert!(
        failed["failure"]
            .as_str()
            .unwrap_or("")
            .contains("signal: 9"),
        "{failed}"
    );
    assert!(shop.audit().contains("version.exited"));

    let woken = shop.get(PREVIEW_HOST, "/").await;
    assert_eq!(woken.status, 200, "{}", woken.body);
    assert!(woken.header("x-ingress-cold-start").is_some());
    assert_eq!(shop.starts("app"), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_shares_its_source_instance_until_the_last_holder_lets_go() {
    let shop = Shop::start(&sections(""));
    let source = shop.deploy_preview("pr-1", "feat", "app", "");
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    let clone = shop
        .ingress
        .ctl(&[
            "deploy",
            "shop",
            "--version",
            &source,
            "--ephemeral",
            "pr-2",
            "--output",
            "json",
        ])
        .json()["id"]
        .as_str()
        .expect("id")
        .to_string();
    let shared = shop.get("pr-2.shop.example.com", "/").await;
    assert_eq!(shared.status, 200);
    assert_eq!(
        shared.body,
        format!("hello from {source}\n"),
        "the source's process"
    );
    assert_eq!(shop.starts("app"), 1, "no second process for the clone");

    shop.ingress.ctl(&["stop", "shop", &source]).expect_ok();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        observed(&shop.version(&clone)),
        "ready",
        "the clone still holds it"
    );
    let still = shop.get("pr-2.shop.example.com", "/").await;
    assert_eq!(still.status, 200);
    assert_eq!(still.header("x-ingress-cold-start"), None);

    shop.ingress.ctl(&["delete", "shop", &clone]).expect_ok();
    shop.wait_for(&source, Duration::from_secs(10), |v| {
        observed(v) == "stopped"
    });
    let pid = pid_of(&shop.file("app.pid"));
    let deadline = Instant::now() + Duration::from_secs(5);
    // SAFETY: signal 0 only checks whether the process exists.
    while unsafe { libc::kill(pid, 0) } == 0 {
        assert!(
            Instant::now() < deadline,
            "the shared process {pid} outlived its last holder"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_while_stopping_wakes_the_version_and_records_it_running() {
    let shop = Shop::start(
        "[runtime]\nstop_grace = \"4s\"\ndrain_timeout = \"1s\"\nstart_timeout = \"10s\"\n",
    );
    let id = shop.deploy_preview("pr-1", "feat", "app", "--ignore-term");
    assert_eq!(shop.get(PREVIEW_HOST, "/").await.status, 200);
    shop.wait_for(&id, Duration::from_secs(5), |v| {
        v["desired_state"] == "running"
    });
    shop.ingress.ctl(&["stop", "shop", &id]).expect_ok();
    // It ignores SIGTERM, so it stays stopping until the SIGKILL four seconds
    // later (long enough for a loaded machine to look).
    assert_eq!(observed(&shop.version(&id)), "stopping");
    let woken = shop.get(PREVIEW_HOST, "/").await;
    assert_eq!(woken.status, 200, "{}", woken.body);
    assert!(woken.header("x-ingress-cold-start").is_some());
    assert_eq!(shop.starts("app"), 2);
    // The request's wake is recorded, so the idle sweep can stop it again later.
    shop.wait_for(&id, Duration::from_secs(5), |v| {
        v["desired_state"] == "running" && observed(v) == "ready"
    });
}

//! End to end through the real `ingress` binary (temp data dir, free ports), driven
//! only with the real `ingressctl` and HTTP requests to the proxy.

mod support;

use std::time::{Duration, Instant};

use support::binary::{Ingress, TOKEN};
use support::{raw_request, RawResponse, Upstream};

async fn get(ingress: &Ingress, host: &str) -> RawResponse {
    raw_request(ingress.proxy, &format!("GET / HTTP/1.1\r\nHost: {host}")).await
}

fn upstream_of(response: &RawResponse) -> String {
    response.header("x-upstream").unwrap_or("-").to_string()
}

/// Polls `check` every 50 ms for at most `limit`; panics with `what` if it never holds.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within {limit:?}");
}

/// An ingress with app `shop` at shop.example.com.
fn shop(dir: &tempfile::TempDir, sections: &str) -> Ingress {
    let ingress = Ingress::start(dir.path(), sections);
    ingress.ctl(&["app", "create", "shop"]).expect_ok();
    ingress
        .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
        .expect_ok();
    ingress
}

fn deploy(ingress: &Ingress, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["deploy", "shop", "--output", "json"];
    all.extend_from_slice(args);
    ingress.ctl(&all).json()
}

fn versions(ingress: &Ingress) -> serde_json::Value {
    ingress
        .ctl(&["versions", "shop", "--output", "json"])
        .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_serves_and_a_preview_leaves_the_active_version_alone() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = shop(&dir, "");
    let live = Upstream::start("live").await;
    let preview = Upstream::start("preview").await;

    let active = deploy(&ingress, &["--upstream", &live.addr.to_string()]);
    assert_eq!(active["status"], "active");
    let response = get(&ingress, "shop.example.com").await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream_of(&response), "live");
    assert_eq!(response.header("x-ingress-version"), active["id"].as_str());

    // The table output prints the URLs where the preview is reachable.
    let text = ingress
        .ctl(&[
            "deploy",
            "shop",
            "--upstream",
            &preview.addr.to_string(),
            "--ephemeral",
            "Feature/Login",
            "--ttl",
            "2h",
            "--branch",
            "feature/login",
        ])
        .expect_ok();
    assert!(
        text.contains("http://feature-login.shop.example.com"),
        "{text}"
    );

    let response = get(&ingress, "feature-login.shop.example.com").await;
    assert_eq!(response.status, 200);
    assert_eq!(upstream_of(&response), "preview");
    let response = get(&ingress, "shop.example.com").await;
    assert_eq!(upstream_of(&response), "live");
    assert_eq!(response.header("x-ingress-version"), active["id"].as_str());

    let listed = versions(&ingress);
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 2);
    let ephemeral = listed.iter().find(|v| v["status"] == "ephemeral").unwrap();
    for field in [
        "id",
        "app",
        "status",
        "label",
        "expires_at",
        "env",
        "branch",
        "desired_state",
        "created_at",
        "urls",
    ] {
        assert!(
            ephemeral.get(field).is_some(),
            "versions JSON lacks {field}"
        );
    }
    assert_eq!(ephemeral["label"], "feature-login");
    assert_eq!(ephemeral["env"], "preview");
    assert_eq!(ephemeral["branch"], "feature/login");
    assert_eq!(ephemeral["desired_state"], "running");
    assert_eq!(
        ephemeral["urls"][0],
        "http://feature-login.shop.example.com"
    );
    let only_ephemeral = ingress
        .ctl(&["versions", "shop", "--ephemeral", "--output", "json"])
        .json();
    assert_eq!(only_ephemeral.as_array().unwrap().len(), 1);

    // The admin HTTP listener serves the proxy's metrics (requests are counted just
    // after their answer, so poll) and health.
    eventually(
        Duration::from_secs(5),
        "the label request in /metrics",
        || async {
            let metrics = raw_request(ingress.http, "GET /metrics HTTP/1.1\r\nHost: admin").await;
            metrics.status == 200
                && metrics
                    .body
                    .contains("ingress_requests_total{kind=\"label\",status=\"2xx\"} 1")
                && metrics.body.contains("ingress_snapshot_generation")
        },
    )
    .await;
    for path in ["/healthz", "/readyz"] {
        let health =
            raw_request(ingress.http, &format!("GET {path} HTTP/1.1\r\nHost: admin")).await;
        assert_eq!(
            (health.status, health.body.as_str()),
            (200, "ok\n"),
            "{path}"
        );
    }

    // Deleting the preview makes its label unroutable; the active version stays.
    let id = ephemeral["id"].as_str().unwrap();
    ingress.ctl(&["delete", "shop", id]).expect_ok();
    assert_eq!(
        get(&ingress, "feature-login.shop.example.com").await.status,
        404
    );
    assert_eq!(
        upstream_of(&get(&ingress, "shop.example.com").await),
        "live"
    );
    let refused = ingress.ctl(&["delete", "shop", active["id"].as_str().unwrap()]);
    assert!(
        !refused.ok() && refused.stderr().contains("is the active version"),
        "{}",
        refused.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_label_replaces_and_the_eleventh_evicts_the_nearest_to_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = shop(&dir, "");
    let first = Upstream::start("first").await;
    let second = Upstream::start("second").await;

    let old = deploy(
        &ingress,
        &["--upstream", &first.addr.to_string(), "--ephemeral", "pr-1"],
    );
    let new = deploy(
        &ingress,
        &[
            "--upstream",
            &second.addr.to_string(),
            "--ephemeral",
            "pr-1",
        ],
    );
    assert_eq!(new["replaced"], old["id"]);
    assert_eq!(
        upstream_of(&get(&ingress, "pr-1.shop.example.com").await),
        "second"
    );

    // Nine more labels; pr-5 expires first.
    let mut nearest = serde_json::Value::Null;
    for i in 2..=10 {
        let ttl = if i == 5 { "30m" } else { "2h" };
        let label = format!("pr-{i}");
        let v = deploy(
            &ingress,
            &[
                "--upstream",
                &first.addr.to_string(),
                "--ephemeral",
                &label,
                "--ttl",
                ttl,
            ],
        );
        if i == 5 {
            nearest = v["id"].clone();
        }
    }
    assert_eq!(get(&ingress, "pr-5.shop.example.com").await.status, 200);
    let eleventh = deploy(
        &ingress,
        &[
            "--upstream",
            &first.addr.to_string(),
            "--ephemeral",
            "pr-11",
        ],
    );
    assert_eq!(eleventh["evicted"], serde_json::json!([nearest]));
    assert_eq!(get(&ingress, "pr-5.shop.example.com").await.status, 404);
    assert_eq!(get(&ingress, "pr-11.shop.example.com").await.status, 200);
    let listed = ingress
        .ctl(&["versions", "shop", "--ephemeral", "--output", "json"])
        .json();
    assert_eq!(listed.as_array().unwrap().len(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_preview_is_410_at_once_and_the_gc_deletes_it() {
    let dir = tempfile::tempdir().unwrap();
    // min_ttl 1s: the preview expires within the test.
    let ingress = shop(
        &dir,
        "[ephemeral]\ngc_interval = \"200ms\"\nmin_ttl = \"1s\"\n",
    );
    let upstream = Upstream::start("preview").await;
    let preview = deploy(
        &ingress,
        &[
            "--upstream",
            &upstream.addr.to_string(),
            "--ephemeral",
            "short",
            "--ttl",
            "4s",
        ],
    );
    assert_eq!(get(&ingress, "short.shop.example.com").await.status, 200);

    eventually(Duration::from_secs(15), "410 after expiry", || async {
        get(&ingress, "short.shop.example.com").await.status == 410
    })
    .await;
    let body = get(&ingress, "short.shop.example.com").await.body;
    assert!(
        body.starts_with("preview short of app shop expired at "),
        "{body}"
    );

    eventually(
        Duration::from_secs(10),
        "the GC deleting the version",
        || async { versions(&ingress).as_array().is_some_and(|v| v.is_empty()) },
    )
    .await;
    // The tombstone keeps answering 410, and the audit log names the system actor.
    assert_eq!(get(&ingress, "short.shop.example.com").await.status, 410);
    let audit = ingress.ctl(&["audit", "--output", "json"]).json();
    let gc = audit
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "gc")
        .expect("a gc entry");
    assert_eq!(gc["actor"], "system");
    assert!(gc["target"]
        .as_str()
        .unwrap()
        .contains(preview["id"].as_str().unwrap()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_leaves_its_source_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = shop(&dir, "");
    let upstream = Upstream::start("live").await;
    let source = deploy(&ingress, &["--upstream", &upstream.addr.to_string()]);
    let source_id = source["id"].as_str().unwrap();
    let before = versions(&ingress);

    let clone = deploy(
        &ingress,
        &["--version", source_id, "--ephemeral", "demo", "--ttl", "1h"],
    );
    assert_ne!(clone["id"], source["id"]);
    assert_eq!(clone["cloned_from"], source["id"]);
    assert_eq!(clone["upstreams"], source["upstreams"]);

    let after = versions(&ingress);
    let source_after = after
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == source["id"])
        .unwrap();
    assert_eq!(Some(source_after), before.as_array().unwrap().first());
    assert_eq!(
        get(&ingress, "demo.shop.example.com")
            .await
            .header("x-ingress-version"),
        clone["id"].as_str()
    );
    assert_eq!(
        get(&ingress, "shop.example.com")
            .await
            .header("x-ingress-version"),
        Some(source_id)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_error_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = shop(&dir, "");
    let upstream = Upstream::start("live").await;
    let addr = upstream.addr.to_string();
    deploy(&ingress, &["--upstream", &addr]);
    let before = versions(&ingress);
    let audit_before = ingress.ctl(&["audit", "--output", "json"]).json();

    let cases: Vec<(Option<&str>, Vec<&str>, &str)> = vec![
        (
            Some(TOKEN),
            vec!["deploy", "shop", "--upstream", &addr, "--ephemeral=___"],
            "RFC 1123",
        ),
        (
            Some(TOKEN),
            vec![
                "deploy",
                "shop",
                "--upstream",
                &addr,
                "--ephemeral",
                "pr-1",
                "--ttl",
                "0s",
            ],
            "--ttl must be longer than 0s",
        ),
        (
            Some(TOKEN),
            vec![
                "deploy",
                "shop",
                "--upstream",
                &addr,
                "--ephemeral",
                "pr-1",
                "--ttl",
                "31d",
            ],
            "longer than the maximum 30d",
        ),
        (
            Some(TOKEN),
            vec!["deploy", "nope", "--upstream", &addr],
            "app nope does not exist",
        ),
        (
            Some(TOKEN),
            vec!["deploy", "shop", "--upstream", "not-an-address"],
            "is not an address",
        ),
        (None, vec!["app", "create", "other"], "missing bearer token"),
        (
            Some("wrong-token"),
            vec!["app", "create", "other"],
            "the bearer token is not valid",
        ),
    ];
    for (token, args, expected) in cases {
        let output = ingress.ctl_with_token(token, &args);
        assert!(!output.ok(), "{args:?} succeeded");
        let stderr = output.stderr();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(
            stderr.starts_with("ingressctl: ") && stderr.contains(expected),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(versions(&ingress), before);
    assert_eq!(
        ingress.ctl(&["audit", "--output", "json"]).json(),
        audit_before
    );
    assert_eq!(
        ingress
            .ctl(&["app", "list", "--output", "json"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn everything_survives_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let mut ingress = shop(&dir, "");
    let live = Upstream::start("live").await;
    let preview = Upstream::start("preview").await;
    let active = deploy(&ingress, &["--upstream", &live.addr.to_string()]);
    let label = deploy(
        &ingress,
        &[
            "--upstream",
            &preview.addr.to_string(),
            "--ephemeral",
            "pr-1",
        ],
    );
    let before = versions(&ingress);

    ingress.kill9_and_restart();

    assert_eq!(versions(&ingress), before);
    let response = get(&ingress, "shop.example.com").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-ingress-version"), active["id"].as_str());
    let response = get(&ingress, "pr-1.shop.example.com").await;
    assert_eq!(upstream_of(&response), "preview");
    assert_eq!(response.header("x-ingress-version"), label["id"].as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_whole_ingress_even_with_a_watcher_connected() {
    use ingress_control_api::grpc::proto::{admin_client::AdminClient, Empty};

    let dir = tempfile::tempdir().unwrap();
    let mut ingress = shop(&dir, "");
    // A remote proxy's watch stream stays open until the ingress stops.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", ingress.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut request = tonic::Request::new(Empty {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let mut stream = AdminClient::new(channel)
        .watch(request)
        .await
        .unwrap()
        .into_inner();
    next_snapshot(&mut stream).await;

    let status = tokio::task::spawn_blocking(move || {
        let status = ingress.terminate();
        (status, ingress)
    })
    .await
    .unwrap();
    let (status, ingress) = status;
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        ingress.log_text()
    );
    assert!(std::net::TcpStream::connect(ingress.grpc).is_err());
    // The watcher sees its stream end rather than hang.
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    assert!(matches!(end, Ok(Ok(None)) | Ok(Err(_))), "{end:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_sends_the_current_snapshot_then_every_change() {
    use ingress_control_api::grpc::proto::{admin_client::AdminClient, Empty};

    let dir = tempfile::tempdir().unwrap();
    let ingress = shop(&dir, "");
    let upstream = Upstream::start("live").await;
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", ingress.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = AdminClient::new(channel);

    // Without a token the stream is refused.
    let refused = client.watch(Empty {}).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);

    let mut request = tonic::Request::new(Empty {});
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let mut stream = client.watch(request).await.unwrap().into_inner();
    let first = next_snapshot(&mut stream).await;
    assert_eq!(first.apps.len(), 1);
    assert_eq!(first.routes[0].host, "shop.example.com");

    let preview = deploy(
        &ingress,
        &[
            "--upstream",
            &upstream.addr.to_string(),
            "--ephemeral",
            "pr-1",
        ],
    );
    let mut latest = next_snapshot(&mut stream).await;
    while latest.apps[0].previews.is_empty() {
        latest = next_snapshot(&mut stream).await;
    }
    assert!(latest.generation > first.generation);
    assert_eq!(latest.apps[0].previews[0].label, "pr-1");
    assert_eq!(
        latest.apps[0].previews[0].version,
        preview["id"].as_str().unwrap()
    );
}

async fn next_snapshot(
    stream: &mut tonic::Streaming<ingress_control_api::grpc::proto::Snapshot>,
) -> ingress_control_api::grpc::proto::Snapshot {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a snapshot within 10 s")
        .expect("no stream error")
        .expect("the stream stays open")
}

#[test]
fn a_proxy_port_in_use_fails_the_start_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let config = dir.path().join("ingress.toml");
    std::fs::write(
        &config,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{port}\"\n[admin]\ngrpc_listen = \"127.0.0.1:{}\"\nhttp_listen = \"127.0.0.1:{}\"\n[store]\ndata_dir = {:?}\n",
            support::free_port(),
            support::free_port(),
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ingress"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run ingress");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!(
            "ingress: proxy.listen 127.0.0.1:{port}: cannot listen"
        )),
        "{stderr}"
    );
}

#[test]
fn a_bad_config_names_the_key_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("ingress.toml");
    std::fs::write(&config, "[proxy]\nlisten = \"x:y\"\n").unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ingress"))
        .arg("--config")
        .arg(&config)
        .output()
        .expect("run ingress");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("proxy.listen: \"x:y\" is not a socket address"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listings_print_aligned_columns_and_completions_need_no_server() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = shop(&dir, "");
    ingress
        .ctl(&["app", "create", "a-much-longer-name"])
        .expect_ok();
    let text = ingress.ctl(&["app", "list"]).expect_ok();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "a header and two apps: {text}");
    assert!(lines[0].starts_with("NAME"), "{text}");
    // Every row's second column starts where the header's does, two spaces
    // after the longest name.
    let column = lines[0].find("ACTIVE").expect("an ACTIVE column");
    assert_eq!(column, "a-much-longer-name".len() + 2, "{text}");
    for line in &lines[1..] {
        assert_eq!(line.trim_end(), *line, "no trailing spaces: {line:?}");
        let name = line.split_whitespace().next().unwrap_or_default();
        assert!(["shop", "a-much-longer-name"].contains(&name), "{text}");
        assert_eq!(&line[column - 2..column], "  ", "{text}");
        assert_ne!(&line[column..column + 1], " ", "{text}");
    }

    // Completions are printed without a server or a token.
    for shell in ["bash", "zsh", "fish"] {
        let mut command = ingress.ctl_command(None, &["completions", shell]);
        command.env("INGRESS_SERVER", "http://127.0.0.1:1");
        let output = command.output().expect("run ingressctl");
        let script = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{shell}: {script}");
        assert!(script.contains("ingressctl"), "{shell}: {script}");
        assert!(script.contains("deploy"), "{shell}: {script}");
    }
    let refused = ingress.ctl_with_token(None, &["completions", "tcsh"]);
    assert!(!refused.ok());
    assert!(
        refused.stderr().contains("possible values"),
        "{}",
        refused.stderr()
    );
}

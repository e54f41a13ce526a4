//! Garbage input, end to end through the real `ingress` and `ingressctl`: each is
//! refused with one clear line, and nothing changes (versions, routes, audit log).

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::binary::{CtlOutput, Ingress, TOKEN};
use support::{closed_addr, free_ports, raw_request, strip_request_id, Upstream};

/// An ingress with app `shop` at shop.example.com and an active version.
async fn shop(dir: &tempfile::TempDir) -> (Ingress, Upstream) {
    let ingress = Ingress::start(dir.path(), "");
    ingress.ctl(&["app", "create", "shop"]).expect_ok();
    ingress
        .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
        .expect_ok();
    let upstream = Upstream::start("live").await;
    ingress
        .ctl(&["deploy", "shop", "--upstream", &upstream.addr.to_string()])
        .expect_ok();
    (ingress, upstream)
}

/// What an operation could have changed: versions, routes, apps and the audit log.
fn observable(ingress: &Ingress) -> Vec<serde_json::Value> {
    [
        &["versions", "shop", "--output", "json"][..],
        &["route", "list", "--output", "json"],
        &["app", "list", "--output", "json"],
        &["audit", "--output", "json"],
    ]
    .iter()
    .map(|args| {
        let mut value = ingress.ctl(args).json();
        // What the runtime observes (a static version turns ready on its own
        // moments after its deploy) is not what a refused call could change.
        if let Some(versions) = value.as_array_mut() {
            for version in versions.iter_mut().filter_map(|v| v.as_object_mut()) {
                for key in ["observed_state", "addresses", "failure", "last_activity_at"] {
                    version.remove(key);
                }
            }
        }
        value
    })
    .collect()
}

/// Asserts `output` failed with exit 1 and one line `ingressctl: ...` containing
/// every one of `expected`.
fn assert_refused(output: &CtlOutput, what: &str, expected: &[&str]) {
    let stderr = output.stderr();
    assert_eq!(output.0.status.code(), Some(1), "{what}: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{what}: {stderr}");
    assert!(stderr.starts_with("ingressctl: "), "{what}: {stderr}");
    for part in expected {
        assert!(
            stderr.contains(part),
            "{what}: expected {part:?} in {stderr}"
        );
    }
}

/// Runs `ingressctl import -` with `lines` on stdin.
fn import(ingress: &Ingress, lines: &str) -> CtlOutput {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingressctl"))
        .args(["import", "-"])
        .env("INGRESS_SERVER", format!("http://{}", ingress.grpc))
        .env("INGRESS_TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ingressctl");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(lines.as_bytes()).expect("write stdin");
    drop(stdin);
    CtlOutput(child.wait_with_output().expect("ingressctl output"))
}

/// Runs `ingressctl --server SERVER ARGS` with the test token.
fn ctl_at(server: &str, args: &[&str]) -> CtlOutput {
    let output = Command::new(env!("CARGO_BIN_EXE_ingressctl"))
        .arg("--server")
        .arg(server)
        .args(args)
        .env_remove("INGRESS_SERVER")
        .env("INGRESS_TOKEN", TOKEN)
        .output()
        .expect("run ingressctl");
    CtlOutput(output)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unconnectable_or_too_many_upstreams_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, upstream) = shop(&dir).await;
    let before = observable(&ingress);
    let rule = "an upstream is a unicast IP address with a port from 1 to 65535";
    let good = upstream.addr.to_string();

    for (bad, problem) in [
        ("127.0.0.1:0", "has port 0"),
        ("0.0.0.0:80", "is the unspecified address"),
        ("[::]:80", "is the unspecified address"),
        ("255.255.255.255:80", "is the broadcast address"),
        ("224.0.0.1:80", "is a multicast address"),
        ("[ff02::1]:80", "is a multicast address"),
    ] {
        let expected = format!("--upstream {bad} {problem}");
        // As the active version, as a preview, and after a good address.
        let mixed = format!("{good},{bad}");
        for args in [
            vec!["deploy", "shop", "--upstream", bad],
            vec!["deploy", "shop", "--upstream", bad, "--ephemeral", "pr-1"],
            vec!["deploy", "shop", "--upstream", &mixed],
        ] {
            assert_refused(&ingress.ctl(&args), bad, &[&expected, rule]);
        }
        // Import applies the deploy's rule, for an app and for a preview.
        let output = import(
            &ingress,
            &format!(r#"{{"app":"other","hosts":["other.example.com"],"upstreams":["{bad}"]}}"#),
        );
        assert_refused(
            &output,
            bad,
            &[&format!("app #1 (other): upstreams {bad} {problem}"), rule],
        );
        let output = import(
            &ingress,
            &format!(
                r#"{{"app":"other","hosts":["other.example.com"],"upstreams":["{good}"],"previews":[{{"label":"pr-1","upstreams":["{bad}"]}}]}}"#
            ),
        );
        assert_refused(
            &output,
            bad,
            &[&format!(
                "app #1 (other): preview pr-1: upstreams {bad} {problem}"
            )],
        );
    }

    // 65 addresses on the command line; 50,000 through an import.
    let many: Vec<String> = (1..=65).map(|port| format!("127.0.0.1:{port}")).collect();
    assert_refused(
        &ingress.ctl(&["deploy", "shop", "--upstream", &many.join(",")]),
        "65 upstreams",
        &["--upstream has 65 addresses; a version has at most 64"],
    );
    let huge: Vec<String> = (0..50_000)
        .map(|i| format!("\"10.{}.{}.1:8080\"", i / 256 % 256, i % 256))
        .collect();
    let output = import(
        &ingress,
        &format!(
            r#"{{"app":"other","hosts":["other.example.com"],"upstreams":[{}]}}"#,
            huge.join(",")
        ),
    );
    assert_refused(
        &output,
        "50,000 upstreams",
        &["app #1 (other): upstreams has 50000 addresses; a version has at most 64"],
    );

    assert_eq!(observable(&ingress), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ttl_below_the_minimum_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, upstream) = shop(&dir).await;
    let before = observable(&ingress);
    let addr = upstream.addr.to_string();
    let allowed = "allowed 1m to 30d (ephemeral.min_ttl to ephemeral.max_ttl)";
    for ttl in ["1ms", "59s"] {
        let output = ingress.ctl(&[
            "deploy",
            "shop",
            "--upstream",
            &addr,
            "--ephemeral",
            "pr-1",
            "--ttl",
            ttl,
        ]);
        assert_refused(
            &output,
            ttl,
            &[
                &format!("--ttl {ttl} is shorter than the minimum 1m"),
                allowed,
            ],
        );
        let output = import(
            &ingress,
            &format!(
                r#"{{"app":"other","hosts":["other.example.com"],"upstreams":["{addr}"],"previews":[{{"label":"pr-1","ttl":"{ttl}"}}]}}"#
            ),
        );
        assert_refused(
            &output,
            ttl,
            &[
                &format!("app #1 (other): --ttl {ttl} is shorter than the minimum 1m"),
                allowed,
            ],
        );
    }
    assert_eq!(observable(&ingress), before);
    // The minimum itself is a valid TTL.
    ingress
        .ctl(&[
            "deploy",
            "shop",
            "--upstream",
            &addr,
            "--ephemeral",
            "pr-1",
            "--ttl",
            "1m",
        ])
        .expect_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ip_literal_and_empty_route_hosts_are_refused_naming_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, _upstream) = shop(&dir).await;
    let before = observable(&ingress);
    let rule = "write a DNS host name (shop.example.com) or one wildcard label in front of one (*.example.com)";
    for host in ["127.0.0.1", "[::1]", "::1", "10.1", "*.10.0.0.1"] {
        assert_refused(
            &ingress.ctl(&["route", "add", host, "--app", "shop"]),
            host,
            &["IP literals are refused", rule],
        );
    }
    assert_refused(
        &ingress.ctl(&["route", "add", "", "--app", "shop"]),
        "empty host",
        &["the route host is empty", rule],
    );
    assert_refused(
        &ingress.ctl(&["route", "add", "*.", "--app", "shop"]),
        "*.",
        &["route host \"*.\" has nothing after \"*.\"", rule],
    );
    assert_refused(
        &ingress.ctl(&["route", "remove", ""]),
        "remove empty host",
        &["the route host is empty"],
    );
    let output = import(
        &ingress,
        r#"{"app":"other","hosts":["*."],"upstreams":["127.0.0.1:3000"]}"#,
    );
    assert_refused(
        &output,
        "import *.",
        &["app #1 (other): route host \"*.\" has nothing after \"*.\""],
    );
    for output in [
        ingress.ctl(&["route", "add", "", "--app", "shop"]),
        ingress.ctl(&["route", "add", "*.", "--app", "shop"]),
    ] {
        assert!(
            !output.stderr().contains("Host header"),
            "{}",
            output.stderr()
        );
    }
    assert_eq!(observable(&ingress), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingressctl_refuses_https_and_names_what_it_reached() {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, _upstream) = shop(&dir).await;
    let before = observable(&ingress);

    // https would be plaintext today: refused before any byte is sent.
    let server = format!("https://{}", ingress.grpc);
    let output = ctl_at(&server, &["app", "create", "other"]);
    assert_refused(
        &output,
        "https",
        &[
            &format!("--server {server}: the ingress admin API does not speak TLS yet"),
            "http://HOST:PORT",
        ],
    );
    assert_eq!(observable(&ingress), before);

    // A server that answers, but not as gRPC: the proxy port and the admin HTTP port.
    for addr in [ingress.proxy, ingress.http] {
        let server = format!("http://{addr}");
        for args in [&["app", "list"][..], &["app", "create", "other"]] {
            assert_refused(
                &ctl_at(&server, args),
                &server,
                &[&format!(
                    "cannot reach the ingress admin API at {server}: it answered, but not as gRPC"
                )],
            );
        }
    }
    // Nothing listening.
    let server = format!("http://{}", closed_addr());
    assert_refused(
        &ctl_at(&server, &["app", "list"]),
        &server,
        &[&format!(
            "cannot reach the ingress admin API at {server}: connection refused"
        )],
    );
    assert_eq!(observable(&ingress), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_header_naming_a_forwarded_header_is_a_400_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, _upstream) = shop(&dir).await;
    for (nominated, named) in [
        ("Host", "(Host)"),
        ("keep-alive, X-Forwarded-For", "(X-Forwarded-For)"),
        ("x-forwarded-proto", "(x-forwarded-proto)"),
    ] {
        let response = raw_request(
            ingress.proxy,
            &format!("GET / HTTP/1.1\r\nHost: shop.example.com\r\nConnection: {nominated}"),
        )
        .await;
        assert_eq!(response.status, 400, "{nominated}: {}", response.body);
        let id = response.header("x-request-id").expect("x-request-id");
        assert_eq!(
            strip_request_id(&response.body, id),
            format!(
                "the Connection header nominates a header the proxy must forward {named}; remove it from Connection\n"
            ),
            "{nominated}"
        );
    }
    // JSON when asked for, with its own error code.
    let response = raw_request(
        ingress.proxy,
        "GET / HTTP/1.1\r\nHost: shop.example.com\r\nAccept: application/json\r\nConnection: host",
    )
    .await;
    assert_eq!(response.status, 400);
    let body: serde_json::Value = serde_json::from_str(&response.body).unwrap();
    assert_eq!(body["error"], "bad_connection_header");
    // An ordinary nomination still passes. (HTTP/1.0, so that the connection
    // closes after the answer: over HTTP/1.1 with this and raw_request's own
    // `Connection: close` header, the connection stayed open.)
    let response = raw_request(
        ingress.proxy,
        "GET / HTTP/1.0\r\nHost: shop.example.com\r\nConnection: x-debug",
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.body);
}

/// Runs `ingress --config FILE` in `dir` with its listeners on free ports; returns
/// its exit code and stderr. A process still running after 10 s is killed (and
/// the test fails on its exit code).
fn run_ingress(dir: &Path, config_text: &str) -> (Option<i32>, String) {
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingress"))
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start ingress");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let output = child.wait_with_output().expect("ingress output");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// `[proxy]` and `[admin]` sections on free loopback ports.
fn listeners() -> String {
    let [proxy, grpc, http] = free_ports().map(|port| SocketAddr::from(([127, 0, 0, 1], port)));
    format!(
        "[proxy]\nlisten = \"{proxy}\"\n\n[admin]\ngrpc_listen = \"{grpc}\"\nhttp_listen = \"{http}\"\n"
    )
}

#[test]
fn config_errors_name_the_line_and_column_or_the_key_and_exit_2() {
    // A syntax error: the file, its line and column, on one line.
    let dir = tempfile::tempdir().unwrap();
    let text = format!("{}\n[store]\ndata_dir = = \"./data\"\n", listeners());
    let line = text.lines().count();
    let (code, stderr) = run_ingress(dir.path(), &text);
    assert_eq!(code, Some(2), "{stderr}");
    let config = dir.path().join("config.toml");
    let prefix = format!("ingress: {}: line {line}, column 12: ", config.display());
    assert!(
        stderr.starts_with(&prefix),
        "expected {prefix:?} in {stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");

    // An empty data_dir would put the store in the working directory.
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = run_ingress(
        dir.path(),
        &format!("{}\n[store]\ndata_dir = \"\"\n", listeners()),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.starts_with("ingress: ") && stderr.contains("store.data_dir: must not be empty"),
        "{stderr}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert_eq!(left, ["config.toml"], "the ingress wrote files: {left:?}");

    // min_ttl <= default_ttl.
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = run_ingress(
        dir.path(),
        &format!(
            "{}\n[store]\ndata_dir = \"data\"\n\n[ephemeral]\nmin_ttl = \"2d\"\n",
            listeners()
        ),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("ephemeral.min_ttl: 2d is longer than ephemeral.default_ttl (1d)"),
        "{stderr}"
    );
}

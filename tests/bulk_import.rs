//! `ingressctl import` end to end: the real `ingress` binary, the real CLI, real
//! upstreams on loopback, and HTTP requests through the proxy.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};

use support::binary::{Ingress, TOKEN};
use support::{raw_request, RawResponse, Upstream};

async fn get(ingress: &Ingress, host: &str) -> RawResponse {
    raw_request(ingress.proxy, &format!("GET / HTTP/1.1\r\nHost: {host}")).await
}

fn write_file(dir: &tempfile::TempDir, name: &str, lines: &[String]) -> String {
    let path = dir.path().join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path.to_string_lossy().into_owned()
}

fn app_names(ingress: &Ingress) -> Vec<String> {
    let apps = ingress.ctl(&["app", "list", "--output", "json"]).json();
    apps.as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_creates_apps_routes_and_previews_that_serve_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = Ingress::start(dir.path(), "");
    let live = Upstream::start("live").await;
    let preview = Upstream::start("preview").await;
    let (live, preview) = (live.addr.to_string(), preview.addr.to_string());
    let file = write_file(
        &dir,
        "apps.jsonl",
        &[
            format!(
                r#"{{"app":"shop","hosts":["shop.example.com","*.shop.test"],"upstreams":["{live}"],"previews":[{{"label":"PR-1","branch":"feature/one"}},{{"label":"pr-2","upstreams":["{preview}"],"ttl":"2h"}}]}}"#
            ),
            String::new(),
            format!(r#"{{"app":"blog","hosts":["blog.example.com"],"upstreams":["{live}"]}}"#),
        ],
    );
    let summary = ingress.ctl(&["import", &file]).expect_ok();
    assert_eq!(summary.trim(), "imported 2 apps, 3 routes, 4 versions");

    // Production on exact and wildcard hosts; previews by label, the label
    // normalised, each sleeping until this first request wakes it.
    for host in ["shop.example.com", "www.shop.test", "blog.example.com"] {
        let response = get(&ingress, host).await;
        assert_eq!(response.status, 200, "{host}");
        assert_eq!(response.header("x-upstream"), Some("live"), "{host}");
    }
    let response = get(&ingress, "pr-1.shop.example.com").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-upstream"), Some("live"));
    let response = get(&ingress, "pr-2.shop.example.com").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-upstream"), Some("preview"));

    let versions = ingress
        .ctl(&["versions", "shop", "--ephemeral", "--output", "json"])
        .json();
    let mut labels: Vec<(String, String)> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["label"].as_str().unwrap().to_string(),
                v["branch"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect();
    labels.sort();
    assert_eq!(
        labels,
        [
            ("pr-1".to_string(), "feature/one".to_string()),
            ("pr-2".to_string(), "-".to_string())
        ]
    );

    let audit = ingress.ctl(&["audit", "--output", "json"]).json();
    let imports: Vec<_> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == "import")
        .collect();
    assert_eq!(imports.len(), 1, "one audit entry for the whole import");
    assert!(imports[0]["detail"]
        .as_str()
        .unwrap()
        .contains("2 apps, 3 routes, 4 versions"));
}

/// Each bad third record refuses the whole file with a message naming the
/// problem, and none of the file's apps exist afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_bad_record_refuses_the_whole_import() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = Ingress::start(dir.path(), "");
    ingress.ctl(&["app", "create", "taken"]).expect_ok();
    ingress
        .ctl(&["route", "add", "taken.example.com", "--app", "taken"])
        .expect_ok();
    let up = r#""upstreams":["127.0.0.1:3000"]"#;
    let eleven: Vec<String> = (0..11).map(|i| format!(r#"{{"label":"l{i}"}}"#)).collect();
    let cases = [
        (
            r#"{"app":"c","hosts":["c.example.com"],"upstreams":["not-an-address"]}"#.to_string(),
            "is not an address",
        ),
        (
            format!(
                r#"{{"app":"c","hosts":["c.example.com"],{up},"previews":[{{"label":"x"}},{{"label":"X"}}]}}"#
            ),
            "label x appears twice",
        ),
        (
            format!(
                r#"{{"app":"c","hosts":["c.example.com"],{up},"previews":[{}]}}"#,
                eleven.join(",")
            ),
            "at most 10 (ephemeral.max_per_app)",
        ),
        (
            format!(r#"{{"app":"taken","hosts":["c.example.com"],{up}}}"#),
            "already exists",
        ),
        (
            format!(r#"{{"app":"c","hosts":["taken.example.com"],{up}}}"#),
            "route taken.example.com is already taken",
        ),
        (
            format!(
                r#"{{"app":"c","hosts":["c.example.com"],{up},"previews":[{{"label":"x","ttl":"90d"}}]}}"#
            ),
            "ephemeral.max_ttl",
        ),
        (
            format!(r#"{{"app":"c","hosts":["c.example.com"],{up},"colour":"red"}}"#),
            "unknown key \"colour\"",
        ),
        ("{not json".to_string(), "line 3: not JSON"),
    ];
    for (third, expected) in cases {
        let file = write_file(
            &dir,
            "bad.jsonl",
            &[
                format!(r#"{{"app":"a","hosts":["a.example.com"],{up}}}"#),
                format!(r#"{{"app":"b","hosts":["b.example.com"],{up}}}"#),
                third.clone(),
            ],
        );
        let output = ingress.ctl(&["import", &file]);
        assert!(!output.ok(), "{third} was accepted");
        let stderr = output.stderr();
        assert!(
            stderr.contains(expected),
            "{third}: expected {expected:?} in {stderr:?}"
        );
        assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
        assert_eq!(app_names(&ingress), ["taken"], "after {third}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_import_reads_standard_input() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = Ingress::start(dir.path(), "");
    let upstream = Upstream::start("stdin").await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_ingressctl"))
        .args(["import", "-", "--output", "json"])
        .env("INGRESS_SERVER", format!("http://{}", ingress.grpc))
        .env("INGRESS_TOKEN", TOKEN)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = format!(
        r#"{{"app":"piped","hosts":["piped.example.com"],"upstreams":["{}"]}}"#,
        upstream.addr
    );
    child
        .stdin
        .take()
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let reply: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(reply["apps"], 1);
    let response = get(&ingress, "piped.example.com").await;
    assert_eq!(response.status, 200);
    assert_eq!(response.header("x-upstream"), Some("stdin"));
}

//! End-to-end tests of certificates through the control API and CLI (issue 12,
//! item 2): the real `ingress` binary driven by the real `ingressctl`, with
//! certificates made by rcgen. What a handshake gets is checked here through
//! `cert check`, which reads the same store the TLS listener's resolver reads.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::binary::{CtlOutput, Ingress};
use support::certs::{Leaf, TestCa};
use support::free_ports;

/// Starts an ingress with a `[tls]` section (a free port plus `tls_keys`).
/// It does not wait for the TLS listener: these tests drive the control side.
fn start(dir: &Path, tls_keys: &str) -> (Ingress, u16) {
    let [port] = free_ports();
    let sections = format!("[tls]\nlisten = \"127.0.0.1:{port}\"\n{tls_keys}\n");
    (Ingress::start_with_proxy(dir, "", &sections), port)
}

fn add(ingress: &Ingress, leaf: &Leaf, extra: &[&str]) -> CtlOutput {
    let cert = leaf.cert_path.to_string_lossy().into_owned();
    let key = leaf.key_path.to_string_lossy().into_owned();
    let mut args = vec!["cert", "add", "--cert", &cert, "--key", &key];
    args.extend_from_slice(extra);
    ingress.ctl(&args)
}

fn list(ingress: &Ingress) -> Value {
    ingress.ctl(&["cert", "list", "--output", "json"]).json()
}

fn list_names(ingress: &Ingress) -> Vec<String> {
    list(ingress)
        .as_array()
        .expect("an array")
        .iter()
        .map(|c| c["name"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn check(ingress: &Ingress, host: &str) -> Value {
    ingress
        .ctl(&["cert", "check", host, "--output", "json"])
        .json()
}

/// The admin listener's `/metrics` text, over a plain socket.
fn metrics_text(ingress: &Ingress) -> String {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(ingress.http).expect("connect to admin HTTP");
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n")
        .expect("write");
    let mut text = String::new();
    stream.read_to_string(&mut text).expect("read");
    text
}

/// A refusal: exit 1, nothing on stdout, one line on stderr containing `what`.
fn assert_refused(out: &CtlOutput, what: &str) {
    assert!(!out.ok(), "expected a refusal: {}", out.stdout());
    assert_eq!(out.0.status.code(), Some(1));
    assert!(out.stdout().is_empty(), "{}", out.stdout());
    let stderr = out.stderr();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(what), "{stderr}");
    assert!(!stderr.contains("PRIVATE KEY"), "{stderr}");
}

#[test]
fn add_list_show_check_remove_with_https_urls_and_audit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ingress, port) = start(dir.path(), "");
    let ca = TestCa::new();
    let apex = ca.leaf(dir.path(), "apex", &["shop.example.com"], false);
    let wild = ca.leaf(dir.path(), "wild", &["*.shop.example.com"], false);
    ingress.ctl(&["app", "create", "shop"]).expect_ok();
    ingress
        .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
        .expect_ok();
    let before = ingress
        .ctl(&["deploy", "shop", "--upstream", "127.0.0.1:3000"])
        .expect_ok();
    assert!(before.contains("  http://shop.example.com\n"), "{before}");

    let added = add(&ingress, &apex, &[]).expect_ok();
    assert!(
        added.starts_with("certificate shop.example.com added\n"),
        "{added}"
    );
    assert!(added.contains("names:       shop.example.com"), "{added}");
    assert!(
        added.contains("not after:   2100-01-01T00:00:00Z (ok)"),
        "{added}"
    );
    assert!(added.contains("issuer:      CN=ingress test CA"), "{added}");
    assert!(added.contains("fingerprint: sha256 "), "{added}");
    assert!(
        added.contains("covers:      shop.example.com (shop)"),
        "{added}"
    );
    let added = add(&ingress, &wild, &["--output", "json"]).json();
    assert_eq!(added["name"], "wildcard.shop.example.com");
    assert_eq!(added["covers"][0]["host"], "*.shop.example.com");
    assert_eq!(added["covers"][0]["kind"], "previews");

    let listed = list(&ingress);
    assert_eq!(
        list_names(&ingress),
        ["shop.example.com", "wildcard.shop.example.com"]
    );
    assert_eq!(listed[0]["status"], "ok");
    assert_eq!(listed[0]["source"], "api");
    assert_eq!(listed[0]["not_after"], "2100-01-01T00:00:00Z");
    assert_eq!(listed[0]["not_after_unix"], 4_102_444_800i64);
    assert_eq!(listed[0]["fingerprint"].as_str().map(str::len), Some(64));
    let table = ingress.ctl(&["cert", "list"]).expect_ok();
    let header = table.lines().next().unwrap_or_default();
    for column in ["NAME", "NAMES", "NOT AFTER", "STATUS", "SOURCE", "COVERS"] {
        assert!(header.contains(column), "{header}");
    }
    assert!(
        table.contains("*.shop.example.com (shop previews)"),
        "{table}"
    );
    let shown = ingress
        .ctl(&[
            "cert",
            "show",
            "wildcard.shop.example.com",
            "--output",
            "json",
        ])
        .json();
    assert_eq!(shown["names"][0], "*.shop.example.com");
    let missing = ingress.ctl(&["cert", "show", "nope"]);
    assert_refused(&missing, "no certificate named nope");

    // What a handshake gets, and why.
    let exact = check(&ingress, "shop.example.com");
    assert_eq!(exact["reason"], "exact");
    assert_eq!(exact["certificate"]["name"], "shop.example.com");
    let preview = check(&ingress, "PR-1.shop.example.com");
    assert_eq!(preview["reason"], "wildcard");
    assert_eq!(preview["certificate"]["name"], "wildcard.shop.example.com");
    assert_eq!(
        check(&ingress, "a.b.shop.example.com")["reason"],
        "rejected"
    );
    assert_eq!(check(&ingress, "other.example.net")["reason"], "rejected");
    let text = ingress
        .ctl(&["cert", "check", "pr-1.shop.example.com"])
        .expect_ok();
    assert!(
        text.contains("certificate wildcard.shop.example.com covers it with *.shop.example.com"),
        "{text}"
    );

    // Deploy output and versions print https:// URLs for covered hosts.
    let deployed = ingress
        .ctl(&[
            "deploy",
            "shop",
            "--upstream",
            "127.0.0.1:3000",
            "--ephemeral",
            "pr-1",
        ])
        .expect_ok();
    assert!(
        deployed.contains(&format!("  https://pr-1.shop.example.com:{port}")),
        "{deployed}"
    );
    let versions = ingress
        .ctl(&["versions", "shop", "--output", "json"])
        .json();
    let urls: Vec<&str> = versions
        .as_array()
        .expect("versions")
        .iter()
        .flat_map(|v| v["urls"].as_array().into_iter().flatten())
        .filter_map(Value::as_str)
        .collect();
    assert!(
        urls.contains(&format!("https://shop.example.com:{port}").as_str()),
        "{urls:?}"
    );

    // The certificate gauges are refreshed on each scrape.
    let metrics = metrics_text(&ingress);
    assert!(
        metrics.contains("ingress_tls_certificates{status=\"ok\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("name=\"wildcard.shop.example.com\""),
        "{metrics}"
    );

    let removed = ingress
        .ctl(&["cert", "remove", "shop.example.com"])
        .expect_ok();
    assert_eq!(removed.trim(), "certificate shop.example.com removed");
    assert_eq!(list_names(&ingress), ["wildcard.shop.example.com"]);
    assert_eq!(check(&ingress, "shop.example.com")["reason"], "rejected");

    // Audited with the token's name; no key anywhere.
    let audit = ingress.ctl(&["audit", "--output", "json"]).json();
    let entries: Vec<(String, String, String)> = audit
        .as_array()
        .expect("audit")
        .iter()
        .map(|e| {
            let field = |k: &str| e[k].as_str().unwrap_or_default().to_string();
            (field("actor"), field("action"), field("target"))
        })
        .collect();
    for expected in [
        ("tester", "cert.add", "shop.example.com"),
        ("tester", "cert.add", "wildcard.shop.example.com"),
        ("tester", "cert.remove", "shop.example.com"),
    ] {
        let expected = (
            expected.0.to_string(),
            expected.1.to_string(),
            expected.2.to_string(),
        );
        assert!(entries.contains(&expected), "{expected:?} in {entries:?}");
    }
    let key_body = apex.key_pem.lines().nth(1).unwrap_or("-").to_string();
    for (what, text) in [
        ("audit", audit.to_string()),
        ("log", ingress.log_text()),
        ("list", table),
    ] {
        assert!(!text.contains("PRIVATE KEY"), "{what}: {text}");
        assert!(!text.contains(&key_body), "{what} carries the key");
    }
}

#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ingress, _) = start(dir.path(), "");
    let ca = TestCa::new();
    let good = ca.leaf(dir.path(), "good", &["shop.example.com"], false);
    add(&ingress, &good, &["--name", "shop"]).expect_ok();
    let before = list(&ingress);
    let audit_before = ingress.ctl(&["audit", "--output", "json"]).json();

    let other = ca.leaf(dir.path(), "other", &["shop.example.com"], false);
    let mismatch = Leaf {
        cert_pem: String::new(),
        key_pem: String::new(),
        cert_path: good.cert_path.clone(),
        key_path: other.key_path.clone(),
    };
    let garbage_path = dir.path().join("garbage.pem");
    std::fs::write(&garbage_path, "this is not PEM\n").expect("write");
    let garbage = Leaf {
        cert_pem: String::new(),
        key_pem: String::new(),
        cert_path: garbage_path,
        key_path: good.key_path.clone(),
    };
    let ip_only = ca.leaf(dir.path(), "ip", &["127.0.0.1"], false);
    let expired = ca.leaf(dir.path(), "expired", &["shop.example.com"], true);
    for (leaf, what) in [
        (&mismatch, "does not match the leaf"),
        (&garbage, "no PEM CERTIFICATE block"),
        (&ip_only, "no DNS subject alternative name"),
        (&expired, "expired at 2021-01-01T00:00:00Z"),
    ] {
        assert_refused(&add(&ingress, leaf, &["--name", "shop"]), what);
        assert_eq!(list(&ingress), before, "{what}: nothing changed");
    }
    assert_refused(
        &add(&ingress, &good, &["--name", "Not/A/Name"]),
        "not a certificate name",
    );
    let missing = ingress.ctl(&[
        "cert",
        "add",
        "--cert",
        "/nonexistent/full.pem",
        "--key",
        "/x",
    ]);
    assert_refused(&missing, "cannot read --cert /nonexistent/full.pem");
    assert_eq!(
        ingress.ctl(&["audit", "--output", "json"]).json(),
        audit_before,
        "no audit entry for a refusal"
    );

    // --force takes the expired certificate.
    let forced = add(
        &ingress,
        &expired,
        &["--name", "old", "--force", "--output", "json"],
    )
    .json();
    assert_eq!(forced["status"], "expired");
    assert_eq!(list_names(&ingress), ["old", "shop"]);
}

#[test]
fn certificates_survive_kill9_and_the_store_file_is_0600() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut ingress, _) = start(dir.path(), "");
    let ca = TestCa::new();
    let wild = ca.leaf(
        dir.path(),
        "wild",
        &["*.shop.example.com", "shop.example.com"],
        false,
    );
    add(&ingress, &wild, &[]).expect_ok();
    let before = list(&ingress);
    ingress.kill9_and_restart();
    assert_eq!(list(&ingress), before);
    assert_eq!(
        check(&ingress, "pr-9.shop.example.com")["reason"],
        "wildcard"
    );
    for suffix in ["", "-wal", "-shm"] {
        let file = ingress.data_dir.join(format!("ingress.db{suffix}"));
        let mode = std::fs::metadata(&file)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()))
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{}", file.display());
    }
}

fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "{what} within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn cert_dir_loads_at_start_and_on_reload_and_sighup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    let ca = TestCa::new();
    ca.leaf(&certs, "first", &["first.example.com"], false);
    std::fs::write(certs.join("broken.crt"), "not PEM").expect("write");
    std::fs::write(certs.join("broken.key"), "not PEM").expect("write");
    let keys = format!(
        "cert_dir = {:?}\nreload_interval = \"0s\"",
        certs.display().to_string()
    );
    let (ingress, _) = start(dir.path(), &keys);
    let listed = list(&ingress);
    assert_eq!(list_names(&ingress), ["first"]);
    assert_eq!(listed[0]["source"], "dir");
    assert!(listed[0]["file"]
        .as_str()
        .is_some_and(|f| f.ends_with("first.crt")));
    let log = ingress.log_text();
    assert!(
        log.contains("broken.crt: the certificate file has no PEM CERTIFICATE block"),
        "{log}"
    );

    // `cert reload` picks up a new pair and reports the bad one.
    ca.leaf(&certs, "second", &["second.example.com"], false);
    let reloaded = ingress.ctl(&["cert", "reload"]).expect_ok();
    assert!(
        reloaded.starts_with("2 certificate(s) loaded from tls.cert_dir: first, second"),
        "{reloaded}"
    );
    assert!(reloaded.contains("broken.crt"), "{reloaded}");
    assert_eq!(check(&ingress, "second.example.com")["reason"], "exact");

    // SIGHUP does the same (no polling: reload_interval = 0s), in the
    // NAME/fullchain.pem layout too, and the ingress keeps running.
    let third = ca.leaf(dir.path(), "third", &["third.example.com"], false);
    std::fs::create_dir_all(certs.join("third")).expect("mkdir");
    std::fs::write(certs.join("third/fullchain.pem"), &third.cert_pem).expect("write");
    std::fs::write(certs.join("third/privkey.pem"), &third.key_pem).expect("write");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(list_names(&ingress), ["first", "second"], "no polling");
    let pid = ingress.pid().expect("running") as i32;
    // SAFETY: a plain signal to our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    wait_for("the SIGHUP reload", || list_names(&ingress).len() == 3);
    assert_eq!(list_names(&ingress), ["first", "second", "third"]);
    assert_eq!(check(&ingress, "third.example.com")["reason"], "exact");
    assert!(ingress
        .log_text()
        .contains("SIGHUP: reloading tls.cert_dir"));
}

#[test]
fn polling_picks_up_changed_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certs = dir.path().join("certs");
    std::fs::create_dir_all(&certs).expect("mkdir");
    let keys = format!(
        "cert_dir = {:?}\nreload_interval = \"1s\"",
        certs.display().to_string()
    );
    let (ingress, _) = start(dir.path(), &keys);
    assert!(list_names(&ingress).is_empty());
    let ca = TestCa::new();
    ca.leaf(&certs, "polled", &["polled.example.com"], false);
    wait_for("the polled reload", || list_names(&ingress) == ["polled"]);
}

#[test]
fn the_default_certificate_serves_unknown_names_and_cannot_be_removed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (ingress, _) = start(
        dir.path(),
        "unknown_sni = \"default\"\ndefault_cert = \"fallback\"",
    );
    let log = ingress.log_text();
    assert!(log.contains("no certificate is loaded"), "{log}");
    assert!(
        log.contains("tls.default_cert fallback is not loaded"),
        "{log}"
    );
    let ca = TestCa::new();
    let fallback = ca.leaf(dir.path(), "fallback", &["fallback.example.com"], false);
    add(&ingress, &fallback, &["--name", "fallback"]).expect_ok();
    let unknown = check(&ingress, "unknown.example.net");
    assert_eq!(unknown["reason"], "default");
    assert_eq!(unknown["certificate"]["name"], "fallback");
    let refused = ingress.ctl(&["cert", "remove", "fallback"]);
    assert_refused(&refused, "certificate fallback is tls.default_cert");
    assert_eq!(list_names(&ingress), ["fallback"]);
}

//! Token roles and `ingressctl --timeout`, end to end through the real `ingress`
//! and `ingressctl` (issue 13, item 6 and the "control node stopped" scenario): a
//! read token lists but cannot change anything, a replica token may only watch,
//! an admin token does everything, and a stopped server fails a call fast.

mod support;

use std::time::Duration;

use ingress_control_api::grpc::proto;
use support::binary::{run_bounded, CtlOutput, Ingress, TOKEN};
use support::certs::TestCa;
use support::Upstream;

const READ: &str = "read-token-0123456789abcdef";
const REPLICA: &str = "replica-token-0123456789abcdef";
const OPS: &str = "ops-token-0123456789abcdef";

/// An ingress with tokens `ci` (read), `edge` (replica) and `ops` (admin, said
/// explicitly) besides the test token, and app `shop` at shop.example.com with
/// an active version.
async fn shop(dir: &tempfile::TempDir) -> (Ingress, Upstream) {
    let tokens = format!(
        "{{ name = \"ci\", secret = \"{READ}\", role = \"read\" }}, {{ name = \"edge\", secret = \"{REPLICA}\", role = \"replica\" }}, {{ name = \"ops\", secret = \"{OPS}\", role = \"admin\" }}"
    );
    let ingress = Ingress::start_with_tokens(dir.path(), &tokens, "");
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

/// What a call could have changed: versions, routes, apps, certificates and the
/// audit log.
fn observable(ingress: &Ingress) -> Vec<serde_json::Value> {
    [
        &["versions", "shop", "--output", "json"][..],
        &["route", "list", "--output", "json"],
        &["app", "list", "--output", "json"],
        &["cert", "list", "--output", "json"],
        &["audit", "--output", "json"],
    ]
    .iter()
    .map(|args| ingress.ctl(args).json())
    .collect()
}

/// Asserts `output` is a refusal for `role` of `action`: exit code 1 and the
/// server's one line.
fn assert_refused(output: &CtlOutput, name: &str, role: &str, action: &str) {
    assert_eq!(
        output.0.status.code(),
        Some(1),
        "{}{}",
        output.stdout(),
        output.stderr()
    );
    assert_eq!(output.stdout(), "", "nothing printed on stdout");
    let stderr = output.stderr();
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let expected = format!("ingressctl: token \"{name}\" has role {role}, which may only ");
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(
        stderr.contains(&format!("; {action} (")) && stderr.contains("needs role admin"),
        "{stderr}"
    );
}

/// The newest version of `shop`.
fn newest_version(ingress: &Ingress) -> String {
    let versions = ingress
        .ctl(&["versions", "shop", "--output", "json"])
        .json();
    versions
        .as_array()
        .and_then(|v| v.last())
        .and_then(|v| v["id"].as_str())
        .expect("shop has a version")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_lists_but_cannot_change_anything() {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, upstream) = shop(&dir).await;
    let version = newest_version(&ingress);
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "shop", &["shop.example.com"], false);
    let cert = leaf.cert_path.to_string_lossy().into_owned();
    let key = leaf.key_path.to_string_lossy().into_owned();
    let before = observable(&ingress);
    let read = |args: &[&str]| ingress.ctl_with_token(Some(READ), args);

    // Listings, show, check and the audit log.
    let apps = read(&["app", "list", "--output", "json"]).json();
    assert_eq!(apps[0]["name"], "shop");
    read(&["route", "list"]).expect_ok();
    let versions = read(&["versions", "shop", "--output", "json"]).json();
    assert_eq!(versions[0]["id"], version.as_str());
    let audit = read(&["audit", "--output", "json"]).json();
    assert!(audit.as_array().is_some_and(|a| !a.is_empty()), "{audit}");
    read(&["cert", "list"]).expect_ok();
    read(&["cert", "check", "shop.example.com"]).expect_ok();
    // `nodes` on a node that is not a control node: no replicas, and why.
    let nodes = read(&["nodes", "--output", "json"]).json();
    assert_eq!(nodes["serves_replicas"], false, "{nodes}");
    assert_eq!(nodes["nodes"], serde_json::json!([]), "{nodes}");
    let note = nodes["note"].as_str().unwrap_or_default();
    assert!(note.contains("not a control node"), "{nodes}");
    let table = read(&["nodes"]).expect_ok();
    assert_eq!(table.trim_end(), note, "{table}");

    // No change.
    let deploy = read(&["deploy", "shop", "--upstream", &upstream.addr.to_string()]);
    assert_refused(&deploy, "ci", "read", "deploy");
    let stop = read(&["stop", "shop", &version, "--force"]);
    assert_refused(&stop, "ci", "read", "stop");
    let cert_add = read(&["cert", "add", "--cert", &cert, "--key", &key]);
    assert_refused(&cert_add, "ci", "read", "cert add");
    assert_refused(
        &read(&["app", "create", "other"]),
        "ci",
        "read",
        "app create",
    );
    assert_refused(
        &read(&["route", "remove", "shop.example.com"]),
        "ci",
        "read",
        "route remove",
    );
    assert_refused(
        &read(&["wake", "shop", &version, "--no-wait"]),
        "ci",
        "read",
        "wake",
    );
    assert_refused(&read(&["delete", "shop", &version]), "ci", "read", "delete");
    assert_eq!(
        observable(&ingress),
        before,
        "a refused call changed something"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_token_may_only_watch() {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, upstream) = shop(&dir).await;
    let before = observable(&ingress);
    let replica = |args: &[&str]| ingress.ctl_with_token(Some(REPLICA), args);
    let deploy = replica(&["deploy", "shop", "--upstream", &upstream.addr.to_string()]);
    assert_refused(&deploy, "edge", "replica", "deploy");
    let list = replica(&["app", "list"]);
    assert_eq!(list.0.status.code(), Some(1));
    assert_eq!(
        list.stderr().trim_end(),
        "ingressctl: token \"edge\" has role replica, which may only follow the routing stream (watch); app list (ListApps) needs role admin or read"
    );
    let audit = replica(&["audit"]);
    assert!(
        audit
            .stderr()
            .contains("audit (Audit) needs role admin or read"),
        "{}",
        audit.stderr()
    );
    assert_eq!(observable(&ingress), before);

    // The routing stream: the current snapshot, at once.
    let channel = tonic::transport::Channel::from_shared(format!("http://{}", ingress.grpc))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = proto::admin_client::AdminClient::new(channel);
    let mut request = tonic::Request::new(proto::Empty {});
    request.metadata_mut().insert(
        "authorization",
        format!("Bearer {REPLICA}").parse().unwrap(),
    );
    let mut stream = client.watch(request).await.unwrap().into_inner();
    let snapshot = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a snapshot within 10 s")
        .unwrap()
        .expect("a snapshot");
    assert!(
        snapshot
            .routes
            .iter()
            .any(|r| r.host == "shop.example.com" && r.app == "shop"),
        "{snapshot:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_token_does_everything_and_the_audit_log_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let (ingress, upstream) = shop(&dir).await;
    let ops = |args: &[&str]| ingress.ctl_with_token(Some(OPS), args);
    let ca = TestCa::new();
    let leaf = ca.leaf(dir.path(), "shop", &["shop.example.com"], false);
    let cert = leaf.cert_path.to_string_lossy().into_owned();
    let key = leaf.key_path.to_string_lossy().into_owned();
    ops(&["app", "create", "blog"]).expect_ok();
    ops(&["route", "add", "blog.example.com", "--app", "blog"]).expect_ok();
    ops(&["deploy", "blog", "--upstream", &upstream.addr.to_string()]).expect_ok();
    let version = newest_version(&ingress);
    ops(&["stop", "shop", &version, "--force"]).expect_ok();
    ops(&["cert", "add", "--cert", &cert, "--key", &key]).expect_ok();
    ops(&["cert", "list"]).expect_ok();
    ops(&["app", "list"]).expect_ok();
    let audit = ops(&["audit", "--output", "json"]).json();
    let by_ops: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "ops")
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "app.create",
        "route.add",
        "deploy",
        "version.stop",
        "cert.add",
    ] {
        assert!(by_ops.contains(&action), "{action} by ops in {by_ops:?}");
    }
    // The test token has no role written: admin, as before roles.
    ingress
        .ctl_with_token(Some(TOKEN), &["app", "delete", "blog"])
        .expect_ok();
}

/// Sends SIGCONT to the process when dropped, so that a failed assertion does not
/// leave the ingress stopped (the harness stops it with SIGTERM).
struct Resume(i32);

impl Drop for Resume {
    fn drop(&mut self) {
        // SAFETY: plain signal to our own child's pid.
        unsafe { libc::kill(self.0, libc::SIGCONT) };
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_server_fails_a_call_within_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = Ingress::start(dir.path(), "");
    ingress.ctl(&["app", "create", "shop"]).expect_ok();
    let pid = ingress.pid().expect("running") as i32;
    // SAFETY: plain signal to our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0);
    let resume = Resume(pid);
    let server = format!("http://{}", ingress.grpc);
    // Killed after 20 s: without a bound, ingressctl would wait much longer.
    let limit = Duration::from_secs(20);

    // INGRESS_TIMEOUT (before --timeout existed, this call waited 60 s).
    let mut command = ingress.ctl_command(
        Some(TOKEN),
        &["deploy", "shop", "--upstream", "127.0.0.1:9"],
    );
    command.env("INGRESS_TIMEOUT", "1s");
    let (output, elapsed) = run_bounded(command, limit);
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert_eq!(
        output.stderr().trim_end(),
        format!("ingressctl: cannot reach the ingress admin API at {server}: no answer within 1s (--timeout)")
    );
    assert_eq!(output.0.status.code(), Some(1));

    // --timeout.
    let (output, elapsed) = run_bounded(
        ingress.ctl_command(Some(TOKEN), &["--timeout", "1s", "app", "list"]),
        limit,
    );
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert_eq!(
        output.stderr().trim_end(),
        format!("ingressctl: cannot reach the ingress admin API at {server}: no answer within 1s (--timeout)")
    );
    assert_eq!(output.0.status.code(), Some(1));

    // A wake's call may last its wait plus --timeout, yet a server that does not
    // answer is still found fast: by the keep-alive pings.
    let (output, elapsed) = run_bounded(
        ingress.ctl_command(
            Some(TOKEN),
            &["--timeout", "1s", "wake", "shop", "v1", "--timeout", "5m"],
        ),
        limit,
    );
    assert!(elapsed < Duration::from_secs(8), "took {elapsed:?}");
    assert_eq!(
        output.stderr().trim_end(),
        format!("ingressctl: cannot reach the ingress admin API at {server}: no answer to keep-alive pings within 1s (--timeout)")
    );
    assert_eq!(output.0.status.code(), Some(1));

    drop(resume);
    // Resumed, it answers again.
    ingress.ctl(&["--timeout", "5s", "app", "list"]).expect_ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_timeout_is_a_command_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let ingress = Ingress::start(dir.path(), "");
    let output = ingress.ctl(&["--timeout", "0s", "app", "list"]);
    assert_eq!(output.0.status.code(), Some(2));
    assert!(
        output
            .stderr()
            .contains("'0s' for '--timeout <DURATION>': 0s is out of range; allowed 1ms to 1d"),
        "{}",
        output.stderr()
    );
    let mut command = ingress.ctl_command(Some(TOKEN), &["app", "list"]);
    command.env("INGRESS_TIMEOUT", "soon");
    let output = CtlOutput(command.output().unwrap());
    assert_eq!(output.0.status.code(), Some(2));
    assert!(
        output.stderr().contains("\"soon\" is not a duration"),
        "{}",
        output.stderr()
    );
    // After `wake`, --timeout is the wake's wait, not the call bound.
    let output = ingress.ctl(&["--timeout", "3s", "wake", "shop", "v1", "--timeout", "1s"]);
    assert_eq!(output.0.status.code(), Some(1));
    assert!(
        output.stderr().contains("app shop does not exist"),
        "{}",
        output.stderr()
    );
}

//! Many edge nodes on one machine: a control node (`node.role = "control"`) and
//! proxy-only replicas following its routing stream, all real `ingress`
//! processes on loopback with real upstreams and real `--command` processes.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::binary::{routing_generation, Ingress, ReplicaNode, TOKEN};
use support::{raw_request, RawResponse, Upstream};

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/app.py");
const CONTROL: &str = "[node]\nrole = \"control\"\n\n[activity]\nreport_interval = \"300ms\"\n\n[runtime]\nstop_grace = \"2s\"\n\n[wake]\ntimeout = \"5s\"\n";
const REPLICA: &str = "[activity]\nreport_interval = \"300ms\"\n\n[wake]\ntimeout = \"5s\"\n";
/// The replicas' token (role replica) and a read-only one.
const REPLICA_TOKEN: &str = "replica-token-0123456789abcdef";
const READ_TOKEN: &str = "read-token-0123456789abcdef";
const TOKENS: &str = "{ name = \"edge\", secret = \"replica-token-0123456789abcdef\", role = \"replica\" }, { name = \"viewer\", secret = \"read-token-0123456789abcdef\", role = \"read\" }";

/// A control node with app `shop` on `shop.example.com`, and `n` replicas.
struct Cluster {
    control: Ingress,
    replicas: Vec<ReplicaNode>,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(n: usize) -> Cluster {
        Cluster::start_with(n, "")
    }

    /// Like [`Cluster::start`], with `sections` (TOML) added to the control
    /// node's config.
    fn start_with(n: usize, sections: &str) -> Cluster {
        let dir = tempfile::tempdir().expect("temp dir");
        let control =
            Ingress::start_with_tokens(dir.path(), TOKENS, &format!("{CONTROL}\n{sections}"));
        control.ctl(&["app", "create", "shop"]).expect_ok();
        control
            .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
            .expect_ok();
        let replicas = (0..n)
            .map(|i| {
                ReplicaNode::start(
                    dir.path(),
                    &format!("r{i}"),
                    control.grpc,
                    REPLICA_TOKEN,
                    REPLICA,
                )
            })
            .collect();
        Cluster {
            control,
            replicas,
            dir,
        }
    }

    /// Deploys `upstream` (a static version) as preview `label` of `shop`.
    fn deploy_preview(&self, upstream: SocketAddr, label: &str) {
        self.control
            .ctl(&[
                "deploy",
                "shop",
                "--upstream",
                &upstream.to_string(),
                "--ephemeral",
                label,
            ])
            .expect_ok();
    }

    /// The control node's routing generation now.
    fn generation(&self) -> u64 {
        routing_generation(self.control.http, 0, 0).1
    }

    /// Waits until every replica has applied the control node's generation.
    fn converge(&self) -> u64 {
        let wanted = self.generation();
        for replica in &self.replicas {
            let (status, applied) = routing_generation(replica.http, wanted, 10_000);
            assert_eq!(
                status,
                200,
                "replica {} is at {applied}, not {wanted}:\n{}",
                replica.id,
                replica.log_text()
            );
        }
        wanted
    }
}

async fn get(addr: SocketAddr, host: &str) -> RawResponse {
    raw_request(addr, &format!("GET / HTTP/1.1\r\nHost: {host}")).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_route_every_host_like_the_control_node_and_follow_changes() {
    let upstream = Upstream::start("blue").await;
    let preview = Upstream::start("green").await;
    let cluster = Cluster::start(2);
    cluster
        .control
        .ctl(&["deploy", "shop", "--upstream", &upstream.addr.to_string()])
        .expect_ok();
    cluster.converge();
    for replica in &cluster.replicas {
        let answer = get(replica.proxy, "shop.example.com").await;
        assert_eq!(answer.status, 200, "{}", replica.log_text());
        assert_eq!(answer.header("x-upstream"), Some("blue"));
        assert_eq!(get(replica.proxy, "nope.example.com").await.status, 404);
    }
    // A change reaches every replica: each one applies the next generation.
    let before = cluster.generation();
    cluster.deploy_preview(preview.addr, "pr-1");
    let after = cluster.converge();
    assert!(after > before);
    for replica in &cluster.replicas {
        let answer = get(replica.proxy, "pr-1.shop.example.com").await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-upstream"), Some("green"));
    }
    // A replica killed and started again is current at once (a whole state).
    let mut cluster = cluster;
    cluster.replicas[0].kill9_and_restart();
    let (status, _) = routing_generation(cluster.replicas[0].http, after, 5_000);
    assert_eq!(status, 200, "{}", cluster.replicas[0].log_text());
    assert_eq!(
        get(cluster.replicas[0].proxy, "pr-1.shop.example.com")
            .await
            .status,
        200
    );
    let metrics = std::process::Command::new("curl")
        .args([
            "-s",
            &format!("http://{}/metrics", cluster.replicas[1].http),
        ])
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&metrics.stdout);
    assert!(text.contains("ingress_control_connected 1"), "{text}");
    let applied: u64 = text
        .lines()
        .find_map(|line| line.strip_prefix("ingress_routing_generation "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(applied >= after, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_keep_serving_while_the_control_node_is_down_and_converge_after() {
    let upstream = Upstream::start("blue").await;
    let mut cluster = Cluster::start(1);
    cluster
        .control
        .ctl(&["deploy", "shop", "--upstream", &upstream.addr.to_string()])
        .expect_ok();
    cluster.converge();
    let pid = cluster.control.pid().expect("running") as i32;
    // SAFETY: plain signals to our own child.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    for _ in 0..20 {
        let answer = get(cluster.replicas[0].proxy, "shop.example.com").await;
        assert_eq!(
            answer.status, 200,
            "served while the control node is stopped"
        );
    }
    unsafe { libc::kill(pid, libc::SIGCONT) };
    // Killed and restarted: a new epoch; the replica starts over from a whole
    // state and sees changes made after the restart.
    cluster.control.kill9_and_restart();
    let green = Upstream::start("green").await;
    cluster.deploy_preview(green.addr, "after");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = get(cluster.replicas[0].proxy, "after.shop.example.com").await;
        if answer.status == 200 {
            assert_eq!(answer.header("x-upstream"), Some("green"));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the replica did not converge after the control node came back:\n{}",
            cluster.replicas[0].log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sleeping_preview_hit_through_every_replica_starts_once_and_activity_reaches_the_control_node(
) {
    let cluster = Cluster::start(2);
    let starts = cluster.dir.path().join("app.starts");
    let pid = cluster.dir.path().join("app.pid");
    let command = format!(
        "exec python3 {APP} --starts {} --pid {} --delay-ms 300",
        starts.display(),
        pid.display()
    );
    let deployed = cluster
        .control
        .ctl(&[
            "deploy",
            "shop",
            "--command",
            &command,
            "--ephemeral",
            "pr-7",
            "--output",
            "json",
        ])
        .json();
    let id = deployed["id"].as_str().expect("id").to_string();
    cluster.converge();
    let mut requests = Vec::new();
    for replica in &cluster.replicas {
        for _ in 0..5 {
            let addr = replica.proxy;
            requests.push(tokio::spawn(async move {
                get(addr, "pr-7.shop.example.com").await.status
            }));
        }
    }
    for request in requests {
        assert_eq!(request.await.expect("request"), 200);
    }
    let count = std::fs::read_to_string(&starts)
        .map(|t| t.lines().count())
        .unwrap_or(0);
    assert_eq!(count, 1, "one start across every replica");
    // The control node learns of the traffic from the replicas' reports.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let versions = cluster
            .control
            .ctl(&["versions", "shop", "--output", "json"])
            .json();
        let seen = versions
            .as_array()
            .and_then(|all| all.iter().find(|v| v["id"] == id.as_str()))
            .map(|v| !v["last_activity_at"].is_null())
            .unwrap_or(false);
        if seen {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no activity reached the control node: {versions}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_token_cannot_deploy_and_a_read_token_cannot_follow() {
    let upstream = Upstream::start("blue").await;
    let cluster = Cluster::start(0);
    let refused = cluster.control.ctl_with_token(
        Some(REPLICA_TOKEN),
        &["deploy", "shop", "--upstream", &upstream.addr.to_string()],
    );
    assert!(!refused.ok());
    assert!(
        refused.stderr().contains("role replica"),
        "{}",
        refused.stderr()
    );
    // A replica holding a read token gets no routing state: never ready.
    let reader = ReplicaNode::start(
        cluster.dir.path(),
        "reader",
        cluster.control.grpc,
        READ_TOKEN,
        REPLICA,
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, generation) = routing_generation(reader.http, 1, 200);
    assert_eq!((status, generation), (504, 0));
    assert!(
        reader.log_text().contains("may not act as a replica"),
        "{}",
        reader.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_waits_for_a_request_in_flight_on_a_replica() {
    let cluster = Cluster::start(1);
    let command = format!(
        "exec python3 {APP} --starts {} --pid {}",
        cluster.dir.path().join("s.starts").display(),
        cluster.dir.path().join("s.pid").display()
    );
    let deployed = cluster
        .control
        .ctl(&[
            "deploy",
            "shop",
            "--command",
            &command,
            "--ephemeral",
            "slow",
            "--output",
            "json",
        ])
        .json();
    let id = deployed["id"].as_str().expect("id").to_string();
    cluster.converge();
    let replica = cluster.replicas[0].proxy;
    assert_eq!(get(replica, "slow.shop.example.com").await.status, 200);
    // A request that takes 2 s, in flight on the replica only.
    let slow = tokio::spawn(async move {
        raw_request(
            replica,
            "GET /slow?ms=2000 HTTP/1.1\r\nHost: slow.shop.example.com",
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.control.ctl(&["stop", "shop", &id]).expect_ok();
    let answer = slow.await.expect("request");
    assert_eq!(
        answer.status,
        200,
        "the stop cut a request in flight on a replica:\n{}",
        cluster.control.log_text()
    );
}

/// `ingressctl nodes --output json` on the control node, with `token`.
fn nodes(cluster: &Cluster, token: &str) -> serde_json::Value {
    cluster
        .control
        .ctl_with_token(Some(token), &["nodes", "--output", "json"])
        .json()
}

/// The ids listed in a `nodes` document.
fn ids(list: &serde_json::Value) -> Vec<String> {
    list["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter_map(|n| n["id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingressctl_nodes_lists_the_replicas_current_and_forgets_a_killed_one() {
    let upstream = Upstream::start("blue").await;
    let mut cluster = Cluster::start(2);
    cluster
        .control
        .ctl(&["deploy", "shop", "--upstream", &upstream.addr.to_string()])
        .expect_ok();
    let generation = cluster.converge();
    // Both replicas report their applied generation within a few intervals.
    let deadline = Instant::now() + Duration::from_secs(10);
    let list = loop {
        let list = nodes(&cluster, READ_TOKEN);
        // The control node's generation moves on by itself (the new version's
        // endpoint turns ready): compare with the listing's own.
        let now = list["generation"].as_u64().unwrap_or(0);
        let current = now >= generation
            && list["nodes"].as_array().is_some_and(|all| {
                all.len() == 2
                    && all
                        .iter()
                        .all(|n| n["applied_generation"] == now && n["lag"] == 0)
            });
        if current {
            break list;
        }
        assert!(
            Instant::now() < deadline,
            "the replicas are not listed at generation {generation}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(list["serves_replicas"], true, "{list}");
    assert!(list["generation"].as_u64() >= Some(generation), "{list}");
    let generation = list["generation"].as_u64().unwrap_or(generation);
    assert_eq!(ids(&list), ["r0", "r1"]);
    for (node, replica) in list["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .zip(&cluster.replicas)
    {
        assert_eq!(
            node["address"],
            replica.proxy.to_string().as_str(),
            "{list}"
        );
        assert_eq!(node["epoch"], list["epoch"], "{list}");
        assert_eq!(node["state"], "current", "{list}");
        assert!(
            node["last_report"]
                .as_str()
                .is_some_and(|t| t.ends_with('Z')),
            "{list}"
        );
        let ago = node["last_report_ago_s"].as_f64().unwrap_or(f64::MAX);
        assert!(ago < 3.0, "{list}");
    }
    // The table.
    let table = cluster.control.ctl(&["nodes"]).expect_ok();
    let mut lines = table.lines();
    assert_eq!(
        lines.next(),
        Some(
            format!(
                "control node: generation {generation} (epoch {}), 2 replica(s)",
                list["epoch"].as_str().unwrap_or_default()
            )
            .as_str()
        ),
        "{table}"
    );
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .collect();
    assert_eq!(
        header,
        ["ID", "ADDRESS", "APPLIED", "LAG", "LAST REPORT"],
        "{table}"
    );
    for (line, replica) in lines.zip(&cluster.replicas) {
        let cells: Vec<&str> = line.split_whitespace().collect();
        let expected = [
            replica.id.clone(),
            replica.proxy.to_string(),
            generation.to_string(),
            "0".to_string(),
        ];
        assert_eq!(cells[..4], expected, "{table}");
        assert!(line.ends_with("s ago)"), "{table}");
    }
    // A replica token follows the stream but may not list the nodes.
    let refused = cluster
        .control
        .ctl_with_token(Some(REPLICA_TOKEN), &["nodes"]);
    assert!(!refused.ok());
    assert!(
        refused
            .stderr()
            .contains("nodes (ListNodes) needs role admin or read"),
        "{}",
        refused.stderr()
    );

    // A replica killed stops reporting: gone after three report intervals
    // (900 ms); the other stays.
    cluster.replicas[1].kill9();
    let killed = Instant::now();
    loop {
        let list = nodes(&cluster, READ_TOKEN);
        if ids(&list) == ["r0"] {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(5),
            "the killed replica is still listed: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The one left keeps reporting, and a change it applies shows as lag 0.
    let green = Upstream::start("green").await;
    cluster.deploy_preview(green.addr, "pr-2");
    let after = cluster.generation();
    assert!(after > generation);
    let (status, _) = routing_generation(cluster.replicas[0].http, after, 10_000);
    assert_eq!(status, 200, "{}", cluster.replicas[0].log_text());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = nodes(&cluster, TOKEN);
        if list["nodes"][0]["applied_generation"] == after && list["nodes"][0]["lag"] == 0 {
            assert_eq!(ids(&list), ["r0"], "{list}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "r0 is not listed at {after}: {list}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_bound_and_advertised_on_another_ip_is_reached_there_from_every_node() {
    // 127.0.0.0/8 is all loopback on Linux, but a socket bound to 127.0.0.2
    // takes no connection to 127.0.0.1: the process answering proves that the
    // proxies, the readiness probe and the replica all went to 127.0.0.2.
    let cluster = Cluster::start_with(
        1,
        "[runtime.process]\nbind = \"127.0.0.2\"\nadvertise = \"127.0.0.2\"\n",
    );
    let command = format!("exec python3 {APP}");
    cluster
        .control
        .ctl(&["deploy", "shop", "--command", &command])
        .expect_ok();
    cluster.converge();
    let answer = get(cluster.control.proxy, "shop.example.com").await;
    assert_eq!(answer.status, 200, "{}", cluster.control.log_text());
    let served_on = answer
        .header("x-served-on")
        .expect("the app says where it was reached")
        .to_string();
    assert!(served_on.starts_with("127.0.0.2:"), "{served_on}");
    let answer = get(cluster.replicas[0].proxy, "shop.example.com").await;
    assert_eq!(answer.status, 200, "{}", cluster.replicas[0].log_text());
    assert_eq!(answer.header("x-served-on"), Some(served_on.as_str()));
    // The version lists the address its endpoint carries.
    let versions = cluster
        .control
        .ctl(&["versions", "shop", "--output", "json"])
        .json();
    assert_eq!(versions[0]["observed_state"], "ready", "{versions}");
    assert_eq!(
        versions[0]["addresses"],
        serde_json::json!([served_on]),
        "{versions}"
    );
    // The process was told its address: HOST.
    let port = served_on.rsplit(':').next().unwrap_or_default();
    let log = std::fs::read_dir(cluster.control.data_dir.join("logs"))
        .expect("process logs")
        .filter_map(Result::ok)
        .map(|entry| std::fs::read_to_string(entry.path()).unwrap_or_default())
        .collect::<String>();
    assert!(
        log.contains(&format!("listening on 127.0.0.2 port {port}")),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_held_for_a_label_that_is_redeployed_meanwhile_follows_the_label() {
    let upstream = Upstream::start("static").await;
    let cluster = Cluster::start(1);
    let command = format!(
        "exec python3 {APP} --starts {} --pid {} --delay-ms 1500",
        cluster.dir.path().join("slow.starts").display(),
        cluster.dir.path().join("slow.pid").display()
    );
    cluster
        .control
        .ctl(&[
            "deploy",
            "shop",
            "--command",
            &command,
            "--ephemeral",
            "moving",
        ])
        .expect_ok();
    cluster.converge();
    let mut held = Vec::new();
    for addr in [cluster.control.proxy, cluster.replicas[0].proxy] {
        held.push(tokio::spawn(async move {
            get(addr, "moving.shop.example.com").await
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The label moves to another version while both requests are held.
    cluster.deploy_preview(upstream.addr, "moving");
    for request in held {
        let answer = request.await.expect("request");
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.header("x-upstream"), Some("static"));
    }
}

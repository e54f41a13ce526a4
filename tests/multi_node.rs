//! The multi-node suite (issue 13, item 8): a control node and three proxy-only
//! replicas, all real `ingress` processes on loopback (distinct ports), with real
//! upstreams and real `--command` processes (`tests/support/app.py`).
//!
//! Each scenario prints one line (its name, what it measured, PASS or FAIL) to
//! a table on stderr (written past the test harness's capture, so `make test`
//! shows it), and the test ends with `N passed, N failed`, failing if any
//! failed. The one timing pass line is a restarted replica current within 1 s
//! of starting; p99 change-to-visible is reported against the 50 ms
//! target, which `benches/load/run.sh --replicas` measures. Every other bound is a generous cap so that nothing waits
//! forever. The load is far below the benches' and is stated in each line.

mod support;

use std::io::Write as _;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use ingress_control_api::grpc::proto::{self, admin_client::AdminClient};
use serde_json::Value;
use support::binary::{run_bounded, wait_routing, Ingress, Paused, ReplicaNode, TOKEN};
use support::{raw_request, Upstream};

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/app.py");
/// The control node: idle stop after 3 s (checked every 300 ms; longer than
/// the control node's 2 s pause, so that pause alone cannot make a version
/// look idle), replicas reporting every 300 ms.
// No access log: four processes share two cores, and the p99 pass line is
// about the routing stream, not about writing lines to a pipe.
const CONTROL: &str = "[node]\nrole = \"control\"\n\n[log]\naccess = \"off\"\n\n[activity]\nreport_interval = \"300ms\"\n\n[idle]\ntimeout = \"3s\"\ncheck_interval = \"300ms\"\n\n[runtime]\nstop_grace = \"1s\"\n";
const IDLE_TIMEOUT: Duration = Duration::from_secs(3);
const REPLICA: &str = "[log]\naccess = \"off\"\n\n[activity]\nreport_interval = \"300ms\"\n";
const REPLICA_TOKEN: &str = "replica-token-0123456789abcdef";
const READ_TOKEN: &str = "read-token-0123456789abcdef";
const TOKENS: &str = "{ name = \"edge\", secret = \"replica-token-0123456789abcdef\", role = \"replica\" }, { name = \"viewer\", secret = \"read-token-0123456789abcdef\", role = \"read\" }";
const REPLICAS: usize = 3;
/// Preview labels redeployed in turn by the churn.
const LABELS: usize = 5;
const CHURN_CHANGES: usize = 200;
const CHURN_INTERVAL: Duration = Duration::from_millis(50);
/// The target: p99 change-to-visible on every replica.
const VISIBLE_P99_MS: f64 = 50.0;
/// The target: a restarted replica is current within 1 s of starting.
const CURRENT_WITHIN: Duration = Duration::from_secs(1);
/// Load: keep-alive clients per replica, each pausing this long between requests.
const CLIENTS_PER_REPLICA: usize = 2;
const CLIENT_PAUSE: Duration = Duration::from_millis(10);
const LOAD_LINE: &str = "3 replicas x 2 keep-alive clients, <=100 req/s each";

/// One line of the table.
struct Row {
    name: &'static str,
    figures: String,
    pass: bool,
}

/// The cluster: the control node with app `shop` (active: upstream `blue`;
/// previews `churn-0..4` on the static upstreams `u0..u2`) and three replicas.
struct Cluster {
    dir: tempfile::TempDir,
    control: Ingress,
    replicas: Vec<ReplicaNode>,
    blue: Upstream,
    upstreams: Vec<Upstream>,
}

fn host(label: &str) -> String {
    format!("{label}.shop.example.com")
}

/// The hosts the load asks for: the active version and every churned preview.
fn load_hosts() -> Vec<String> {
    let mut hosts = vec!["shop.example.com".to_string()];
    hosts.extend((0..LABELS).map(|k| host(&format!("churn-{k}"))));
    hosts
}

impl Cluster {
    async fn start() -> Cluster {
        let blue = Upstream::start("blue").await;
        let mut upstreams = Vec::new();
        for i in 0..3 {
            upstreams.push(Upstream::start(&format!("u{i}")).await);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let control = Ingress::start_with_tokens(dir.path(), TOKENS, CONTROL);
        control.ctl(&["app", "create", "shop"]).expect_ok();
        control
            .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
            .expect_ok();
        control
            .ctl(&["deploy", "shop", "--upstream", &blue.addr.to_string()])
            .expect_ok();
        for k in 0..LABELS {
            control
                .ctl(&[
                    "deploy",
                    "shop",
                    "--upstream",
                    &upstreams[k % 3].addr.to_string(),
                    "--ephemeral",
                    &format!("churn-{k}"),
                ])
                .expect_ok();
        }
        let replicas = (0..REPLICAS)
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
        let cluster = Cluster {
            dir,
            control,
            replicas,
            blue,
            upstreams,
        };
        let wanted = cluster.generation().await;
        for replica in &cluster.replicas {
            let (status, _) = wait_routing(replica.http, wanted, 10_000).await;
            assert_eq!(status, 200, "{}", replica.log_text());
        }
        cluster
    }

    /// The control node's routing generation now.
    async fn generation(&self) -> u64 {
        wait_routing(self.control.http, 0, 0).await.1
    }

    fn replica_addrs(&self) -> Vec<SocketAddr> {
        self.replicas.iter().map(|r| r.proxy).collect()
    }

    /// `ingressctl versions shop --output json`, the version `id`.
    fn version(&self, id: &str) -> Value {
        let versions = self
            .control
            .ctl(&["versions", "shop", "--output", "json"])
            .json();
        versions
            .as_array()
            .and_then(|all| all.iter().find(|v| v["id"] == id))
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// Deploys `shop` with `command` (app.py and `args`) as preview `label`;
    /// returns the version id and its starts file.
    fn deploy_command(&self, label: &str, args: &str) -> (String, std::path::PathBuf) {
        let starts = self.dir.path().join(format!("{label}.starts"));
        let command = format!("exec python3 {APP} --starts {} {args}", starts.display());
        let deployed = self
            .control
            .ctl(&[
                "deploy",
                "shop",
                "--command",
                &command,
                "--ephemeral",
                label,
                "--output",
                "json",
            ])
            .json();
        let id = deployed["id"].as_str().expect("version id").to_string();
        (id, starts)
    }

    /// Waits (at most 10 s) until every replica applied the control node's
    /// generation; false if one did not.
    async fn converge(&self) -> bool {
        let wanted = self.generation().await;
        for replica in &self.replicas {
            if wait_routing(replica.http, wanted, 10_000).await.0 != 200 {
                return false;
            }
        }
        true
    }
}

fn starts(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// What the clients of one load target saw.
#[derive(Default, Clone)]
struct Tally {
    ok: u64,
    failed: u64,
    /// The first few failures, for the report.
    examples: Vec<String>,
}

impl Tally {
    fn add(&mut self, other: &Tally) {
        self.ok += other.ok;
        self.failed += other.failed;
        for e in &other.examples {
            if self.examples.len() < 3 {
                self.examples.push(e.clone());
            }
        }
    }
}

/// Keep-alive clients (`CLIENTS_PER_REPLICA` per target) sending GETs for
/// `hosts` in turn, each pausing `CLIENT_PAUSE` between requests, on a thread
/// and runtime of their own (so they do not delay the measurements). Bounded:
/// each client stops after `limit` or 10,000 requests, whichever comes first.
struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Vec<Tally>>,
}

impl Load {
    fn start(targets: Vec<SocketAddr>, hosts: Vec<String>, limit: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("load runtime");
            runtime.block_on(async move {
                let mut tasks = Vec::new();
                for (index, addr) in targets.iter().copied().enumerate() {
                    for client in 0..CLIENTS_PER_REPLICA {
                        let hosts = hosts.clone();
                        let stop = Arc::clone(&flag);
                        tasks.push((
                            index,
                            tokio::spawn(client_loop(addr, hosts, client, stop, limit)),
                        ));
                    }
                }
                let mut tallies = vec![Tally::default(); targets.len()];
                for (index, task) in tasks {
                    let tally = task.await.unwrap_or_default();
                    tallies[index].add(&tally);
                }
                tallies
            })
        });
        Load { stop, thread }
    }

    /// Stops the clients; what each target's clients saw.
    fn finish(self) -> Vec<Tally> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

async fn client_loop(
    addr: SocketAddr,
    hosts: Vec<String>,
    offset: usize,
    stop: Arc<AtomicBool>,
    limit: Duration,
) -> Tally {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(1)
        .timeout(Duration::from_secs(5))
        .build()
        .expect("client");
    let started = Instant::now();
    let mut tally = Tally::default();
    let mut n = offset;
    while !stop.load(Ordering::Relaxed) && started.elapsed() < limit && n < 10_000 + offset {
        let host = &hosts[n % hosts.len()];
        n += 1;
        let outcome = client
            .get(format!("http://{addr}/"))
            .header("host", host)
            .send()
            .await;
        match outcome {
            Ok(response) if response.status() == 200 => {
                let _ = response.bytes().await;
                tally.ok += 1;
            }
            Ok(response) => {
                let status = response.status();
                let body = response.text().await.unwrap_or_default();
                tally.failed += 1;
                if tally.examples.len() < 3 {
                    tally
                        .examples
                        .push(format!("{host}: {status} {}", body.trim()));
                }
            }
            Err(e) => {
                tally.failed += 1;
                if tally.examples.len() < 3 {
                    tally.examples.push(format!("{host}: {e}"));
                }
            }
        }
        tokio::time::sleep(CLIENT_PAUSE).await;
    }
    tally
}

fn tallies_line(tallies: &[Tally]) -> String {
    tallies
        .iter()
        .enumerate()
        .map(|(i, t)| format!("r{i} {}/{} ok", t.ok, t.ok + t.failed))
        .collect::<Vec<_>>()
        .join(", ")
}

fn failures_line(tallies: &[Tally]) -> String {
    let examples: Vec<String> = tallies
        .iter()
        .enumerate()
        .flat_map(|(i, t)| t.examples.iter().map(move |e| format!("r{i} {e}")))
        .take(3)
        .collect();
    if examples.is_empty() {
        String::new()
    } else {
        format!("; failures: {}", examples.join(" | "))
    }
}

/// GET `/` for `host` through `addr`: the status and `x-upstream` (or the error).
async fn answer(addr: SocketAddr, host: &str) -> String {
    let attempt = tokio::time::timeout(
        Duration::from_secs(10),
        AssertUnwindSafe(raw_request(
            addr,
            &format!("GET / HTTP/1.1\r\nHost: {host}"),
        ))
        .catch_unwind(),
    )
    .await;
    match attempt {
        Ok(Ok(response)) => format!(
            "{} {}",
            response.status,
            response.header("x-upstream").unwrap_or("-")
        ),
        Ok(Err(_)) => "no answer".to_string(),
        Err(_) => "timed out".to_string(),
    }
}

/// 200 deploys 50 ms apart with load on every replica: change-to-visible per
/// replica, then the same generation and the same answers for every host
/// everywhere. Two rows: the churn, and the load during it.
async fn churn(cluster: &Cluster) -> Vec<Row> {
    // Previews are deployed asleep. Each host is asked once through every
    // replica first, so that the churn starts from running versions: a request
    // whose wake is under way when the churn's first deploy replaces that very
    // version gets 503 ("not known to the control node"), and starting the
    // load and the churn at the same instant would provoke exactly that.
    let mut warm_failures = Vec::new();
    for replica in &cluster.replicas {
        for host in load_hosts() {
            let seen = answer(replica.proxy, &host).await;
            if !seen.starts_with("200") {
                warm_failures.push(format!("{} {host}: {seen}", replica.id));
            }
        }
    }
    let load = Load::start(
        cluster.replica_addrs(),
        load_hosts(),
        Duration::from_secs(40),
    );
    let channel =
        tonic::transport::Channel::from_shared(format!("http://{}", cluster.control.grpc))
            .expect("url")
            .connect()
            .await
            .expect("connect to the control node");
    let mut admin = AdminClient::new(channel);
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {TOKEN}").parse().expect("header value");
    let mut ticker = tokio::time::interval(CHURN_INTERVAL);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut waits = Vec::new();
    let mut refused = Vec::new();
    let churn_started = Instant::now();
    for i in 0..CHURN_CHANGES {
        ticker.tick().await;
        let mut request = tonic::Request::new(proto::DeployRequest {
            app: "shop".into(),
            upstreams: vec![cluster.upstreams[i % 3].addr.to_string()],
            ephemeral_label: Some(format!("churn-{}", i % LABELS)),
            ..Default::default()
        });
        request
            .metadata_mut()
            .insert("authorization", bearer.clone());
        if let Err(status) = admin.deploy(request).await {
            refused.push(status.message().to_string());
            continue;
        }
        // The change is committed and published on the control node: from
        // here until each replica's /routing says it applied the control
        // node's generation (read just after) is the change-to-visible time,
        // an upper bound (it includes this read and the HTTP round trips).
        let committed = Instant::now();
        let wanted = cluster.generation().await;
        for (r, replica) in cluster.replicas.iter().enumerate() {
            let http = replica.http;
            waits.push(tokio::spawn(async move {
                let (status, _) = wait_routing(http, wanted, 5_000).await;
                (r, status, committed.elapsed().as_secs_f64() * 1000.0)
            }));
        }
    }
    let churn_took = churn_started.elapsed();
    let mut visible: Vec<Vec<f64>> = vec![Vec::new(); REPLICAS];
    let mut missed = 0;
    for wait in waits {
        let (r, status, ms) = wait.await.expect("wait task");
        if status == 200 {
            visible[r].push(ms);
        } else {
            missed += 1;
        }
    }
    let tallies = load.finish();

    // The end: the same generation everywhere (the control node may still
    // publish endpoint changes for a moment: retried for up to 5 s).
    let deadline = Instant::now() + Duration::from_secs(5);
    let (same_generation, generations) = loop {
        let wanted = cluster.generation().await;
        let mut generations = vec![wanted];
        for replica in &cluster.replicas {
            generations.push(wait_routing(replica.http, wanted, 2_000).await.1);
        }
        generations.push(cluster.generation().await);
        let same = generations.iter().all(|g| *g == wanted);
        if same || Instant::now() > deadline {
            break (same, generations);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Every host answered alike by the control node and every replica.
    let mut hosts = load_hosts();
    hosts.push("nope.example.com".to_string());
    let mut differences = Vec::new();
    for host in &hosts {
        let reference = answer(cluster.control.proxy, host).await;
        for (r, replica) in cluster.replicas.iter().enumerate() {
            let seen = answer(replica.proxy, host).await;
            if seen != reference {
                differences.push(format!("{host}: control {reference}, r{r} {seen}"));
            }
        }
    }

    // Every change must become visible on every replica; the p99 is reported
    // against the 50 ms target but not asserted: timing goals live in the
    // benchmark (`run.sh --replicas`), and on two shared cores this suite's
    // p99 runs at 40-50 ms, too near the line for a pass/fail.
    let mut stats = Vec::new();
    let mut all_visible = true;
    for (r, samples) in visible.iter_mut().enumerate() {
        samples.sort_by(f64::total_cmp);
        let p99 = percentile(samples, 99.0);
        if samples.len() != CHURN_CHANGES - refused.len() || p99.is_nan() {
            all_visible = false;
        }
        let verdict = if p99 <= VISIBLE_P99_MS {
            "within"
        } else {
            "over"
        };
        stats.push(format!(
            "r{r} p50 {:.1} p99 {:.1} ({verdict} the {VISIBLE_P99_MS} ms target) max {:.1} ms",
            percentile(samples, 50.0),
            p99,
            samples.last().copied().unwrap_or(f64::NAN)
        ));
    }
    let pass = all_visible
        && refused.is_empty()
        && missed == 0
        && same_generation
        && differences.is_empty();
    let mut figures = format!(
        "{CHURN_CHANGES} deploys in {:.1} s; {}; generations {generations:?}; {} hosts x {} nodes {}",
        churn_took.as_secs_f64(),
        stats.join(", "),
        hosts.len(),
        REPLICAS + 1,
        if differences.is_empty() {
            "alike"
        } else {
            "DIFFER"
        }
    );
    if !refused.is_empty() {
        figures.push_str(&format!("; {} refused: {}", refused.len(), refused[0]));
    }
    if missed > 0 {
        figures.push_str(&format!("; {missed} waits timed out (5 s)"));
    }
    if !differences.is_empty() {
        figures.push_str(&format!("; {}", differences.join(" | ")));
    }
    let failed: u64 = tallies.iter().map(|t| t.failed).sum();
    let ok: u64 = tallies.iter().map(|t| t.ok).sum();
    vec![
        Row {
            name: "200 deploys 50 ms apart: change-to-visible",
            figures,
            pass,
        },
        Row {
            name: "load on every replica during the churn",
            figures: format!(
                "{LOAD_LINE}: {ok} requests, {failed} failed ({}){}{}",
                tallies_line(&tallies),
                failures_line(&tallies),
                if warm_failures.is_empty() {
                    String::new()
                } else {
                    format!("; warm-up failed: {}", warm_failures.join(" | "))
                }
            ),
            pass: failed == 0 && ok > 0 && warm_failures.is_empty(),
        },
    ]
}

/// `kill -9` of one replica mid-load and its restart.
async fn kill_replica(cluster: &mut Cluster) -> Row {
    let victim = REPLICAS - 1;
    let load = Load::start(
        cluster.replica_addrs(),
        load_hosts(),
        Duration::from_secs(20),
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.replicas[victim].kill9();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let wanted = cluster.generation().await;
    let started = Instant::now();
    tokio::task::block_in_place(|| cluster.replicas[victim].restart());
    let listening = started.elapsed();
    let (status, _) = wait_routing(cluster.replicas[victim].http, wanted, 5_000).await;
    let current = started.elapsed();
    let serves = answer(cluster.replicas[victim].proxy, "shop.example.com").await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let tallies = load.finish();
    let others: Vec<Tally> = tallies[..victim].to_vec();
    let others_failed: u64 = others.iter().map(|t| t.failed).sum();
    let others_ok: u64 = others.iter().map(|t| t.ok).sum();
    let pass = others_failed == 0
        && others_ok > 0
        && status == 200
        && current <= CURRENT_WITHIN
        && serves == "200 blue";
    Row {
        name: "kill -9 one replica mid-load, restart",
        figures: format!(
            "{LOAD_LINE}; others {others_ok} requests, {others_failed} failed; r{victim} listening after {} ms, current (generation {wanted}) after {} ms{}; r{victim}'s own clients {}/{} ok (down ~300 ms){}",
            listening.as_millis(),
            current.as_millis(),
            if status == 200 { "" } else { " NOT CURRENT" },
            tallies[victim].ok,
            tallies[victim].ok + tallies[victim].failed,
            failures_line(&others)
        ),
        pass,
    }
}

/// The control node paused (SIGSTOP) for 2 s under load, then killed and
/// restarted: the replicas serve throughout, admin calls fail fast, and a
/// change made after the restart reaches every replica without restarting it.
async fn control_down(cluster: &mut Cluster) -> Row {
    let pids: Vec<Option<u32>> = cluster.replicas.iter().map(ReplicaNode::pid).collect();
    let load = Load::start(
        cluster.replica_addrs(),
        load_hosts(),
        Duration::from_secs(30),
    );
    tokio::time::sleep(Duration::from_millis(700)).await;
    let paused_at = Instant::now();
    let paused = Paused::stop(cluster.control.pid().expect("running"));
    let list = cluster
        .control
        .ctl_command(Some(TOKEN), &["--timeout", "1s", "app", "list"]);
    let (refused, took) =
        tokio::task::block_in_place(move || run_bounded(list, Duration::from_secs(8)));
    let admin_error = refused.stderr().trim().to_string();
    tokio::time::sleep(Duration::from_secs(2).saturating_sub(paused_at.elapsed())).await;
    paused.resume();
    let paused_for = paused_at.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    tokio::task::block_in_place(|| cluster.control.kill9_and_restart());
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A change after the restart.
    let deployed = cluster.control.ctl(&[
        "deploy",
        "shop",
        "--upstream",
        &cluster.upstreams[1].addr.to_string(),
        "--ephemeral",
        "after-restart",
    ]);
    let changed_at = Instant::now();
    let mut converged = Vec::new();
    for replica in &cluster.replicas {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if answer(replica.proxy, &host("after-restart")).await == "200 u1" {
                converged.push(Some(changed_at.elapsed()));
                break;
            }
            if Instant::now() > deadline {
                converged.push(None);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Let the load run on the new control node for a moment too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tallies = load.finish();
    let same_generation = cluster.converge().await;
    let restarted: Vec<bool> = cluster
        .replicas
        .iter()
        .zip(&pids)
        .map(|(r, pid)| r.pid() != *pid)
        .collect();
    let failed: u64 = tallies.iter().map(|t| t.failed).sum();
    let ok: u64 = tallies.iter().map(|t| t.ok).sum();
    let admin_fast = !refused.ok() && !admin_error.is_empty() && took < Duration::from_secs(8);
    let all_converged = converged.iter().all(Option::is_some);
    let pass = failed == 0
        && ok > 0
        && admin_fast
        && deployed.ok()
        && all_converged
        && same_generation
        && !restarted.contains(&true);
    let converged_line = converged
        .iter()
        .enumerate()
        .map(|(i, c)| match c {
            Some(d) => format!("r{i} {} ms", d.as_millis()),
            None => format!("r{i} NEVER"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    Row {
        name: "control SIGSTOP 2 s, then kill -9 + restart",
        figures: format!(
            "{LOAD_LINE}: {ok} requests, {failed} failed ({}); paused {} ms; `ingressctl --timeout 1s` failed after {} ms: {:?}; change after restart visible: {converged_line}; replicas restarted: {}{}",
            tallies_line(&tallies),
            paused_for.as_millis(),
            took.as_millis(),
            admin_error.lines().last().unwrap_or(""),
            if restarted.contains(&true) { "SOME" } else { "none" },
            failures_line(&tallies)
        ),
        pass,
    }
}

/// A sleeping `--command` preview hit through every replica at once.
async fn one_start(cluster: &Cluster) -> Row {
    let (_, starts_file) = cluster.deploy_command("pr-sleep", "--delay-ms 500");
    let converged = cluster.converge().await;
    let started = Instant::now();
    let mut requests = Vec::new();
    for replica in &cluster.replicas {
        for _ in 0..4 {
            let addr = replica.proxy;
            requests.push(tokio::spawn(async move {
                answer(addr, "pr-sleep.shop.example.com").await
            }));
        }
    }
    let mut statuses = Vec::new();
    for request in requests {
        statuses.push(request.await.unwrap_or_else(|_| "panicked".into()));
    }
    let took = started.elapsed();
    let ok = statuses.iter().filter(|s| s.starts_with("200")).count();
    let count = starts(&starts_file);
    Row {
        name: "sleeping --command preview, concurrent via all replicas",
        figures: format!(
            "12 requests (4 per replica, at once): {ok} x 200, slowest {} ms; starts {count}{}",
            took.as_millis(),
            if ok == statuses.len() {
                String::new()
            } else {
                format!("; answers {statuses:?}")
            }
        ),
        pass: converged && ok == statuses.len() && count == 1,
    }
}

/// Idle stop with traffic only through replica r0: requests every 250 ms
/// for longer than the idle timeout, then one slow request in flight for
/// longer than it; no stop meanwhile; a stop after the traffic ends.
async fn idle_stop(cluster: &Cluster) -> Row {
    let (id, starts_file) = cluster.deploy_command("pr-idle", "");
    let converged = cluster.converge().await;
    let via = cluster.replicas[0].proxy;
    let idle_host = host("pr-idle");
    let first = answer(via, &idle_host).await;
    let mut stops_seen = Vec::new();
    let mut requests = 0;
    let mut failed = 0;
    let mut note = |version: &Value, phase: &str| {
        if version["desired_state"] != "running"
            || !matches!(
                version["observed_state"].as_str(),
                Some("ready" | "starting")
            )
        {
            stops_seen.push(format!(
                "{phase}: desired {} observed {}",
                version["desired_state"], version["observed_state"]
            ));
        }
    };
    // Requests every 250 ms for 1.5 idle timeouts.
    let phase = Instant::now();
    let mut last_check = Instant::now();
    while phase.elapsed() < IDLE_TIMEOUT * 3 / 2 {
        requests += 1;
        if !answer(via, &idle_host).await.starts_with("200") {
            failed += 1;
        }
        if last_check.elapsed() >= Duration::from_millis(500) {
            let version = tokio::task::block_in_place(|| cluster.version(&id));
            note(&version, "requests");
            last_check = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // One request in flight for 1.5 idle timeouts, nothing else.
    let slow_ms = IDLE_TIMEOUT.as_millis() * 3 / 2;
    let slow = tokio::spawn(async move {
        raw_request(
            via,
            &format!("GET /slow?ms={slow_ms} HTTP/1.1\r\nHost: pr-idle.shop.example.com"),
        )
        .await
        .status
    });
    while !slow.is_finished() {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if !slow.is_finished() {
            let version = tokio::task::block_in_place(|| cluster.version(&id));
            note(&version, "in flight");
        }
    }
    let slow_status = slow.await.unwrap_or(0);
    let ended = Instant::now();
    // Then idle: stopped (bounded at 15 s).
    let mut stopped_after = None;
    while ended.elapsed() < Duration::from_secs(15) {
        let version = tokio::task::block_in_place(|| cluster.version(&id));
        if version["observed_state"] == "stopped" {
            stopped_after = Some(ended.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let count = starts(&starts_file);
    let pass = converged
        && first.starts_with("200")
        && failed == 0
        && slow_status == 200
        && stops_seen.is_empty()
        && count == 1
        && stopped_after.is_some();
    Row {
        name: "idle stop with traffic through one replica",
        figures: format!(
            "idle.timeout {} s; via r0: {requests} requests 250 ms apart ({failed} failed), then 1 request in flight {} ms ({slow_status}): {}; starts {count}; stopped {} after the traffic ended",
            IDLE_TIMEOUT.as_secs(),
            slow_ms,
            if stops_seen.is_empty() {
                "never stopped meanwhile".to_string()
            } else {
                format!("STOPPED meanwhile ({})", stops_seen.join(", "))
            },
            match stopped_after {
                Some(d) => format!("{} ms", d.as_millis()),
                None => "NOT within 15 s".to_string(),
            }
        ),
        pass,
    }
}

/// A replica token cannot deploy; a read token cannot stop (the running
/// production version, with `--force`) but can list.
async fn token_scopes(cluster: &Cluster) -> Row {
    let deploy = cluster.control.ctl_with_token(
        Some(REPLICA_TOKEN),
        &[
            "deploy",
            "shop",
            "--upstream",
            &cluster.blue.addr.to_string(),
        ],
    );
    let versions = cluster
        .control
        .ctl_with_token(Some(READ_TOKEN), &["versions", "shop", "--output", "json"]);
    let active = serde_json::from_str::<Value>(&versions.stdout())
        .ok()
        .and_then(|all| {
            all.as_array().and_then(|all| {
                all.iter()
                    .find(|v| v["status"] == "active")
                    .and_then(|v| v["id"].as_str().map(str::to_string))
            })
        })
        .unwrap_or_default();
    let stop = cluster
        .control
        .ctl_with_token(Some(READ_TOKEN), &["stop", "shop", &active, "--force"]);
    let after = cluster.version(&active);
    let serves = answer(cluster.replicas[0].proxy, "shop.example.com").await;
    let pass = !deploy.ok()
        && deploy.stderr().contains("role replica")
        && versions.ok()
        && !active.is_empty()
        && !stop.ok()
        && stop.stderr().contains("role read")
        && after["desired_state"] == "running"
        && serves == "200 blue";
    let first_line = |out: &support::binary::CtlOutput| {
        out.stderr()
            .lines()
            .next()
            .unwrap_or("(no error)")
            .to_string()
    };
    Row {
        name: "replica token cannot deploy; read token cannot stop",
        figures: format!(
            "deploy with the replica token: {:?}; stop --force of the active version with the read token: {:?}; listing with the read token {}; the active version still {} and serving ({serves})",
            first_line(&deploy),
            first_line(&stop),
            if versions.ok() { "works" } else { "FAILED" },
            after["desired_state"]
        ),
        pass,
    }
}

/// Runs a scenario; a panic in it is a FAIL line, not the end of the suite.
async fn run<F>(name: &'static str, scenario: F) -> Vec<Row>
where
    F: std::future::Future<Output = Vec<Row>>,
{
    match AssertUnwindSafe(scenario).catch_unwind().await {
        Ok(rows) => rows,
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            vec![Row {
                name,
                figures: format!(
                    "panicked: {}",
                    message
                        .lines()
                        .next()
                        .unwrap_or("")
                        .chars()
                        .take(300)
                        .collect::<String>()
                ),
                pass: false,
            }]
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_node_suite() {
    let suite_started = Instant::now();
    let mut cluster = Cluster::start().await;
    let started_in = suite_started.elapsed();
    let mut rows = Vec::new();
    rows.extend(run("churn", churn(&cluster)).await);
    rows.extend(
        run("kill replica", async {
            vec![kill_replica(&mut cluster).await]
        })
        .await,
    );
    rows.extend(
        run("control down", async {
            vec![control_down(&mut cluster).await]
        })
        .await,
    );
    rows.extend(run("one start", async { vec![one_start(&cluster).await] }).await);
    rows.extend(run("idle stop", async { vec![idle_stop(&cluster).await] }).await);
    rows.extend(run("token scopes", async { vec![token_scopes(&cluster).await] }).await);

    let passed = rows.iter().filter(|r| r.pass).count();
    let failed = rows.len() - passed;
    let mut table = format!(
        "\nmulti-node suite: control + {REPLICAS} replicas on loopback, fast path {}, cluster up in {} ms\n",
        if support::fast_path_off() { "off" } else { "on" },
        started_in.as_millis()
    );
    for row in &rows {
        table.push_str(&format!(
            "{:<58} | {} | {}\n",
            row.name,
            if row.pass { "PASS" } else { "FAIL" },
            row.figures
        ));
    }
    table.push_str(&format!(
        "{passed} passed, {failed} failed ({:.1} s)\n",
        suite_started.elapsed().as_secs_f64()
    ));
    // Past the harness's capture: the table is shown on every run.
    let _ = std::io::stderr().write_all(table.as_bytes());
    if failed > 0 {
        for replica in &cluster.replicas {
            let log = replica.log_text();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!(
                "--- {} log (last lines) ---\n{}",
                replica.id,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }
    assert_eq!(failed, 0, "{failed} scenario(s) failed:{table}");
}

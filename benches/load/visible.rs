//! Change-to-visible on replicas, for the load script's `--replicas` mode: makes
//! `--changes` routing changes `--interval-ms` apart on a control node (each
//! redeploys a preview label of `--app`, over one gRPC connection) and measures
//! for each one the time until every replica's `/routing?wait_generation=G`
//! answers, G being the control node's generation read from its own `/routing`
//! right after the change returned. Prints one JSON line. Loopback only;
//! bounded (at most 10,000 changes; each wait at most 5 s).
//!
//! `visible --server URL --token T --app APP --upstream IP:PORT --control-http IP:PORT
//!  --replica-http IP:PORT,IP:PORT --changes 100 --interval-ms 30`
//!
//! The time runs from the moment the deploy call returned (the change is
//! committed and in the control node's routing stream by then) to the moment
//! the replica's answer arrived, so it includes reading G and the HTTP round
//! trips: an upper bound of the change-to-visible time.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ingress_control_api::grpc::proto;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[path = "common.rs"]
mod common;
use common::{admin_client, percentile};

struct Args {
    server: String,
    token: String,
    app: String,
    upstream: String,
    control_http: Option<SocketAddr>,
    replicas: Vec<SocketAddr>,
    changes: usize,
    interval: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: String::new(),
        token: String::new(),
        app: String::new(),
        upstream: String::new(),
        control_http: None,
        replicas: Vec::new(),
        changes: 100,
        interval: Duration::from_millis(30),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        let addr = |v: &str| {
            v.parse::<SocketAddr>()
                .map_err(|_| format!("{flag}: IP:PORT, not {v:?}"))
        };
        match flag.as_str() {
            "--server" => args.server = value,
            "--token" => args.token = value,
            "--app" => args.app = value,
            "--upstream" => args.upstream = value,
            "--control-http" => args.control_http = Some(addr(&value)?),
            "--replica-http" => {
                for part in value.split(',').filter(|p| !p.is_empty()) {
                    args.replicas.push(addr(part)?);
                }
            }
            "--changes" => {
                let n: usize = value.parse().map_err(|_| "--changes: a number")?;
                args.changes = n.clamp(1, 10_000);
            }
            "--interval-ms" => {
                let ms: u64 = value.parse().map_err(|_| "--interval-ms: a number")?;
                args.interval = Duration::from_millis(ms.max(1));
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.server.is_empty() || args.app.is_empty() || args.upstream.is_empty() {
        return Err("--server, --app and --upstream are required".into());
    }
    if args.control_http.is_none() || args.replicas.is_empty() {
        return Err("--control-http and --replica-http are required".into());
    }
    Ok(args)
}

/// `GET /routing?wait_generation=G&timeout_ms=T` on an admin listener: the
/// status (0 when unreachable) and the generation applied.
async fn routing(http: SocketAddr, wait: u64, timeout_ms: u64) -> (u16, u64) {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(http).await.ok()?;
        let request = format!(
            "GET /routing?wait_generation={wait}&timeout_ms={timeout_ms} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await.ok()?;
        Some(String::from_utf8_lossy(&bytes).into_owned())
    };
    let limit = Duration::from_millis(timeout_ms) + Duration::from_secs(5);
    let Ok(Some(text)) = tokio::time::timeout(limit, exchange).await else {
        return (0, 0);
    };
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let generation = text
        .split("\"generation\":")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (status, generation)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let control_http = args.control_http.expect("checked");
    let mut client = admin_client(&args.server, &args.token).await?;
    let first_generation = routing(control_http, 0, 0).await.1;
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut deploys = Vec::new();
    let mut failed = 0u64;
    let mut waits = Vec::new();
    let started = Instant::now();
    for turn in 0..args.changes {
        ticker.tick().await;
        // Labels churn-0..4 in turn: each deploy replaces the label's version.
        let label = format!("churn-{}", turn % 5);
        let sent = Instant::now();
        let outcome = client
            .deploy(proto::DeployRequest {
                app: args.app.clone(),
                upstreams: vec![args.upstream.clone()],
                ephemeral_label: Some(label),
                ..Default::default()
            })
            .await;
        let committed = Instant::now();
        deploys.push((committed - sent).as_secs_f64() * 1000.0);
        if let Err(status) = outcome {
            failed += 1;
            eprintln!("change refused: {}", status.message());
            continue;
        }
        let wanted = routing(control_http, 0, 0).await.1;
        for (index, http) in args.replicas.iter().copied().enumerate() {
            waits.push(tokio::spawn(async move {
                let (status, _) = routing(http, wanted, 5_000).await;
                (index, status, committed.elapsed().as_secs_f64() * 1000.0)
            }));
        }
    }
    let took = started.elapsed();
    let mut visible: Vec<Vec<f64>> = vec![Vec::new(); args.replicas.len()];
    let mut missed = vec![0u64; args.replicas.len()];
    for wait in waits {
        let (index, status, ms) = wait.await.map_err(|e| e.to_string())?;
        if status == 200 {
            visible[index].push(ms);
        } else {
            missed[index] += 1;
        }
    }
    let last_generation = routing(control_http, 0, 0).await.1;
    deploys.sort_by(f64::total_cmp);
    let replicas: Vec<String> = visible
        .iter_mut()
        .zip(&missed)
        .zip(&args.replicas)
        .map(|((samples, missed), http)| {
            samples.sort_by(f64::total_cmp);
            format!(
                "{{\"http\": \"{http}\", \"samples\": {}, \"missed\": {missed}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
                samples.len(),
                percentile(samples, 50.0),
                percentile(samples, 99.0),
                samples.last().copied().unwrap_or(0.0)
            )
        })
        .collect();
    println!(
        "{{\"changes\": {}, \"failed\": {failed}, \"seconds\": {:.2}, \"first_generation\": {first_generation}, \"last_generation\": {last_generation}, \"deploy_p50_ms\": {:.2}, \"deploy_p99_ms\": {:.2}, \"replicas\": [{}]}}",
        args.changes,
        took.as_secs_f64(),
        percentile(&deploys, 50.0),
        percentile(&deploys, 99.0),
        replicas.join(", ")
    );
    Ok(())
}

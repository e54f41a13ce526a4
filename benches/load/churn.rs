//! The publisher of the load script's `--publish` mode: redeploys a preview label
//! of one app every `--interval-ms` (each a routing change, so each publishes a
//! snapshot) for `--seconds`, over one gRPC connection, and prints one JSON line
//! with the number of changes and their latency. Loopback only; bounded in time.
//!
//! `churn --server URL --token T --app APP --upstream IP:PORT --interval-ms 10 --seconds 6`

use std::time::{Duration, Instant};

use ingress_control_api::grpc::proto;

#[path = "common.rs"]
mod common;
use common::{admin_client, percentile};

struct Args {
    server: String,
    token: String,
    app: String,
    upstream: String,
    interval: Duration,
    seconds: u64,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        server: String::new(),
        token: String::new(),
        app: String::new(),
        upstream: String::new(),
        interval: Duration::from_millis(10),
        seconds: 6,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--server" => args.server = value,
            "--token" => args.token = value,
            "--app" => args.app = value,
            "--upstream" => args.upstream = value,
            "--interval-ms" => {
                let ms: u64 = value.parse().map_err(|_| "--interval-ms: a number")?;
                args.interval = Duration::from_millis(ms.max(1));
            }
            "--seconds" => {
                let s: u64 = value.parse().map_err(|_| "--seconds: a number")?;
                args.seconds = s.clamp(1, 600);
            }
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.server.is_empty() || args.app.is_empty() || args.upstream.is_empty() {
        return Err("--server, --app and --upstream are required".into());
    }
    Ok(args)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let args = parse_args()?;
    let mut client = admin_client(&args.server, &args.token).await?;
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut ticker = tokio::time::interval(args.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut latencies = Vec::new();
    let mut failed = 0u64;
    let mut turn = 0u64;
    while Instant::now() < deadline {
        ticker.tick().await;
        // Labels churn-0..4 in turn: each deploy replaces the label's version.
        let label = format!("churn-{}", turn % 5);
        turn += 1;
        let started = Instant::now();
        let outcome = client
            .deploy(proto::DeployRequest {
                app: args.app.clone(),
                upstreams: vec![args.upstream.clone()],
                ephemeral_label: Some(label),
                ..Default::default()
            })
            .await;
        latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        if let Err(status) = outcome {
            failed += 1;
            eprintln!("change refused: {}", status.message());
        }
    }
    latencies.sort_by(f64::total_cmp);
    println!(
        "{{\"changes\": {}, \"failed\": {failed}, \"p50_ms\": {:.2}, \"p99_ms\": {:.2}, \"max_ms\": {:.2}}}",
        latencies.len(),
        percentile(&latencies, 50.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0.0)
    );
    Ok(())
}

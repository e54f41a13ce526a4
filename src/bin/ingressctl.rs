//! `ingressctl`: the admin CLI over the gRPC API. Tables by default, one JSON
//! document with `--output json`. Exit code 0 on success, 1 with a one-line error
//! when the server refuses or does not answer in time, 2 for a bad command line.

use std::process::ExitCode;
use std::time::Duration;

#[path = "ingressctl/cert.rs"]
mod cert;

use clap::{Parser, Subcommand, ValueEnum};
use ingress_control_api::grpc::proto::{self, admin_client::AdminClient};
use ingress_proxy::time::format_unix_millis;
use serde_json::{json, Value};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::Request;

#[derive(Parser)]
#[command(
    name = "ingressctl",
    about = "Administer the ingress through its gRPC API"
)]
struct Cli {
    /// The admin gRPC endpoint.
    #[arg(
        long,
        env = "INGRESS_SERVER",
        default_value = "http://127.0.0.1:9090",
        global = true
    )]
    server: String,
    /// A bearer token from the server's admin.tokens.
    #[arg(long, env = "INGRESS_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Output format of listings and results.
    #[arg(long, value_enum, default_value = "table", global = true)]
    output: Output,
    /// Longest wait to connect, and for each call's answer: 500ms, 10s, 2m.
    /// Written before the command (after `wake`, --timeout is the wake's wait,
    /// which its call's bound then covers). `import` allows at least 30m.
    #[arg(
        long = "timeout",
        id = "call_timeout",
        env = "INGRESS_TIMEOUT",
        default_value = "10s",
        value_name = "DURATION",
        value_parser = parse_call_timeout
    )]
    timeout: Duration,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list and delete apps.
    App {
        #[command(subcommand)]
        command: AppCommand,
    },
    /// Add, remove and list routes.
    Route {
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Deploy a version: active, or ephemeral with --ephemeral LABEL.
    Deploy {
        app: String,
        /// Upstream addresses IP:PORT, comma-separated (static runtime).
        #[arg(
            long,
            value_delimiter = ',',
            conflicts_with_all = ["version", "command"],
            required_unless_present_any = ["version", "command"]
        )]
        upstream: Vec<String>,
        /// A command run with `sh -c` on this machine (process runtime); it must
        /// listen on $HOST:$PORT (runtime.process.bind and a free port).
        #[arg(long, conflicts_with = "version")]
        command: Option<String>,
        /// Readiness of --command: HTTP GET of this path (default /).
        #[arg(long, requires = "command", conflicts_with = "ready_tcp")]
        ready_path: Option<String>,
        /// Readiness of --command: a TCP connect to PORT.
        #[arg(long, requires = "command")]
        ready_tcp: bool,
        /// An existing version: activate it again, or clone it with --ephemeral.
        #[arg(long)]
        version: Option<String>,
        /// production or preview.
        #[arg(long)]
        env: Option<String>,
        #[arg(long)]
        branch: Option<String>,
        /// Deploy as a preview reachable at LABEL.<app host>.
        #[arg(long)]
        ephemeral: Option<String>,
        /// Preview lifetime: 90s, 30m, 24h, 7d.
        #[arg(long, requires = "ephemeral")]
        ttl: Option<String>,
    },
    /// Create many new apps at once from a JSON Lines file ("-" for stdin), one app
    /// per line: {"app": "shop", "hosts": ["shop.example.com"], "upstreams":
    /// ["127.0.0.1:3000"], "previews": [{"label": "pr-1", "branch": "feat",
    /// "ttl": "24h", "upstreams": [...]}]}. All or nothing.
    Import { file: String },
    /// List the versions of an app.
    Versions {
        app: String,
        /// Only ephemeral versions.
        #[arg(long)]
        ephemeral: bool,
    },
    /// Delete a version.
    Delete { app: String, version: String },
    /// Stop a version now; its instances drain and stop (unless a clone uses them).
    Stop {
        app: String,
        version: String,
        /// Also stop the active production version.
        #[arg(long)]
        force: bool,
    },
    /// Wake a version and wait until it is ready.
    Wake {
        app: String,
        version: String,
        /// Return at once instead of waiting for readiness.
        #[arg(long)]
        no_wait: bool,
        /// Longest wait for readiness: 500ms, 30s, 2m (default: the server's
        /// wake.timeout). The call may take this wait plus `ingressctl --timeout`
        /// (without it: the longest wait the server allows, 10m, plus --timeout).
        #[arg(long, conflicts_with = "no_wait")]
        timeout: Option<String>,
    },
    /// Print the output of a process version.
    Logs {
        app: String,
        version: String,
        /// At most this many bytes from the end.
        #[arg(long, default_value_t = 65536)]
        bytes: u64,
    },
    /// Manage the TLS listener's certificates.
    Cert {
        #[command(subcommand)]
        command: cert::CertCommand,
    },
    /// Show the audit log, newest first.
    Audit {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// List the replicas following this control node: applied generation, lag
    /// behind the control node, last report.
    Nodes,
    /// Print a shell completion script (no server needed), for example
    /// `ingressctl completions bash > /etc/bash_completion.d/ingressctl`.
    Completions {
        /// The shell to complete in.
        shell: clap_complete::Shell,
    },
}

#[derive(Subcommand)]
enum AppCommand {
    Create { name: String },
    List,
    Delete { name: String },
}

#[derive(Subcommand)]
enum RouteCommand {
    /// HOST is exact (shop.example.com) or a wildcard (*.example.com).
    Add {
        host: String,
        #[arg(long)]
        app: String,
    },
    /// HOST as added, or (default).
    Remove {
        host: String,
    },
    /// Route every unmatched host to an app.
    Default {
        #[arg(long)]
        app: String,
    },
    List,
}

/// The longest `--timeout`.
const MAX_CALL_TIMEOUT: Duration = Duration::from_secs(86_400);

/// `--timeout` / `INGRESS_TIMEOUT`: a duration above zero, at most a day.
fn parse_call_timeout(text: &str) -> Result<Duration, String> {
    let duration = ingress_config::parse_duration(text)?;
    if duration.is_zero() || duration > MAX_CALL_TIMEOUT {
        return Err(format!(
            "{text} is out of range; allowed 1ms to {}",
            ingress_config::format_duration(MAX_CALL_TIMEOUT)
        ));
    }
    Ok(duration)
}

/// An import of a million labels takes minutes: its call may take this long
/// whatever `--timeout` says (an unresponsive server is still found by the
/// keep-alive pings within about twice --timeout).
const IMPORT_CALL_BOUND: Duration = Duration::from_secs(1800);

/// How long a call may take, and why, for the error when it does not answer.
struct Bounds {
    /// `--timeout`: connecting, and keep-alive pings.
    timeout: Duration,
    /// The whole call; `None` for a streaming answer (such as `Watch`), which
    /// only keeps the connect bound and the keep-alive pings.
    call: Option<Duration>,
    /// How `call` was reached, when it is not `--timeout` itself.
    call_reason: Option<String>,
}

impl Bounds {
    fn new(command: &Command, timeout: Duration) -> Result<Bounds, String> {
        let plain = Bounds {
            timeout,
            call: Some(timeout),
            call_reason: None,
        };
        Ok(match command {
            Command::Import { .. } if timeout < IMPORT_CALL_BOUND => Bounds {
                call: Some(IMPORT_CALL_BOUND),
                call_reason: Some("the bound of an import".to_string()),
                ..plain
            },
            Command::Wake {
                no_wait: false,
                timeout: wait,
                ..
            } => {
                // The call waits for readiness: bound it by the wait plus --timeout.
                let (wait, what) = match wake_wait(wait)? {
                    Some(wait) => (wait, format!("wake --timeout {}", format_duration(wait))),
                    None => (
                        Duration::from_millis(ingress_control_api::grpc::MAX_WAKE_WAIT_MS),
                        "the longest wake wait the server allows".to_string(),
                    ),
                };
                let max_wait = Duration::from_millis(ingress_control_api::grpc::MAX_WAKE_WAIT_MS);
                Bounds {
                    call: Some(wait.min(max_wait).saturating_add(timeout)),
                    call_reason: Some(format!(
                        "{what} plus --timeout {}",
                        format_duration(timeout)
                    )),
                    ..plain
                }
            }
            _ => plain,
        })
    }

    /// `1s (--timeout)` or `40s (wake --timeout 30s plus --timeout 10s)`.
    fn call_text(&self) -> String {
        match (self.call, &self.call_reason) {
            (Some(call), Some(reason)) => format!("{} ({reason})", format_duration(call)),
            _ => format!("{} (--timeout)", format_duration(self.timeout)),
        }
    }
}

fn format_duration(duration: Duration) -> String {
    ingress_config::format_duration(duration)
}

/// `wake --timeout`: the wait for readiness, if given.
fn wake_wait(text: &Option<String>) -> Result<Option<Duration>, String> {
    text.as_deref()
        .map(|text| ingress_config::parse_duration(text).map_err(|e| format!("--timeout: {e}")))
        .transpose()
}

/// The records of a JSON Lines import file; blank lines are skipped.
fn read_import(path: &str) -> Result<Vec<proto::ImportApp>, String> {
    let text = if path == "-" {
        std::io::read_to_string(std::io::stdin()).map_err(|e| format!("cannot read stdin: {e}"))?
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?
    };
    let mut apps = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let record: Value = serde_json::from_str(line)
            .map_err(|e| format!("{path} line {}: not JSON: {e}", index + 1))?;
        apps.push(import_record(&record).map_err(|e| format!("{path} line {}: {e}", index + 1))?);
    }
    Ok(apps)
}

const IMPORT_APP_KEYS: [&str; 4] = ["app", "hosts", "upstreams", "previews"];
const IMPORT_PREVIEW_KEYS: [&str; 4] = ["label", "branch", "upstreams", "ttl"];

fn import_record(record: &Value) -> Result<proto::ImportApp, String> {
    let object = record
        .as_object()
        .ok_or("each line must be a JSON object")?;
    check_keys(object, &IMPORT_APP_KEYS)?;
    let previews = match object.get("previews") {
        None => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                let preview = item.as_object().ok_or("each preview must be an object")?;
                check_keys(preview, &IMPORT_PREVIEW_KEYS)?;
                Ok(proto::ImportPreview {
                    label: string_field(preview, "label")?.ok_or("a preview needs a label")?,
                    branch: string_field(preview, "branch")?,
                    upstreams: strings_field(preview, "upstreams")?,
                    ttl: string_field(preview, "ttl")?,
                })
            })
            .collect::<Result<Vec<_>, String>>()?,
        Some(_) => return Err("previews must be an array".to_string()),
    };
    Ok(proto::ImportApp {
        app: string_field(object, "app")?.ok_or("the record needs an app name (\"app\")")?,
        hosts: strings_field(object, "hosts")?,
        upstreams: strings_field(object, "upstreams")?,
        previews,
    })
}

fn check_keys(object: &serde_json::Map<String, Value>, allowed: &[&str]) -> Result<(), String> {
    match object.keys().find(|key| !allowed.contains(&key.as_str())) {
        Some(key) => Err(format!(
            "unknown key {key:?}; allowed: {}",
            allowed.join(", ")
        )),
        None => Ok(()),
    }
}

fn string_field(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => Ok(Some(text.clone())),
        Some(_) => Err(format!("{key} must be a string")),
    }
}

fn strings_field(
    object: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Vec<String>, String> {
    match object.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| {
                item.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| format!("{key} must be an array of strings"))
            })
            .collect(),
        Some(_) => Err(format!("{key} must be an array of strings")),
    }
}

/// Adds the bearer token to every call.
type AddToken = Box<dyn FnMut(Request<()>) -> Result<Request<()>, tonic::Status> + Send>;

type Client = AdminClient<tonic::service::interceptor::InterceptedService<Channel, AddToken>>;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("ingressctl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Refuses a server URL ingressctl cannot talk to as asked. `https://` above all:
/// the admin API does not speak TLS yet, and talking plaintext to an `https://`
/// URL would send the bearer token unencrypted while the user believes otherwise.
fn check_server(server: &str) -> Result<(), String> {
    let scheme = server.split_once("://").map(|(scheme, _)| scheme);
    match scheme.map(str::to_ascii_lowercase).as_deref() {
        Some("http") => Ok(()),
        Some("https") => Err(format!(
            "--server {server}: the ingress admin API does not speak TLS yet, so ingressctl refuses https:// rather than send the token unencrypted; use http://HOST:PORT over a trusted network (for example an SSH tunnel)"
        )),
        _ => Err(format!(
            "--server {server:?} is not an http:// URL; write http://HOST:PORT, for example http://127.0.0.1:9090"
        )),
    }
}

/// Why the admin API at `server` could not be used, from a connection or call
/// failure: refused, timed out, or a server that answered but does not speak
/// gRPC (such as the proxy port or the admin HTTP port). One line.
fn cannot_reach(
    server: &str,
    bounds: &Bounds,
    error: &(dyn std::error::Error + 'static),
) -> String {
    let prefix = format!("cannot reach the ingress admin API at {server}");
    let mut connecting = false;
    let mut source = Some(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => {
                    return format!("{prefix}: connection refused")
                }
                std::io::ErrorKind::TimedOut => return format!("{prefix}: connection timed out"),
                _ => {}
            }
        }
        if cause.downcast_ref::<tonic::TimeoutExpired>().is_some() {
            return format!("{prefix}: no answer within {}", bounds.call_text());
        }
        // hyper's (private) error for HTTP/2 pings left unanswered.
        if cause.to_string() == "keep-alive timed out" {
            return format!(
                "{prefix}: no answer to keep-alive pings within {} (--timeout)",
                format_duration(bounds.timeout)
            );
        }
        connecting |= cause.downcast_ref::<tonic::ConnectError>().is_some();
        if cause.source().is_none() && connecting {
            // A connect that failed for another reason: its innermost cause.
            return format!("{prefix}: {cause}");
        }
        source = cause.source();
    }
    format!("{prefix}: it answered, but not as gRPC")
}

/// The one line to print for a failed call: the server's own message when the
/// admin API answered, otherwise why it could not be reached.
fn call_error(server: &str, bounds: &Bounds, status: tonic::Status) -> String {
    use std::error::Error;
    // A status the server sent has no local cause; one made from a transport
    // failure does. An HTTP answer without a gRPC status is not the admin API.
    let message = status.message();
    let not_grpc = message.starts_with("grpc-status header missing")
        || message.starts_with("protocol error: missing grpc-status");
    if status.source().is_none() && !not_grpc {
        return message.to_string();
    }
    cannot_reach(server, bounds, &status)
}

async fn connect(server: &str, token: Option<String>, bounds: &Bounds) -> Result<Client, String> {
    check_server(server)?;
    let timeout = bounds.timeout;
    let mut endpoint = Channel::from_shared(server.to_string())
        .map_err(|_| format!("--server {server:?} is not a URL; write http://HOST:PORT"))?
        .connect_timeout(timeout)
        // A server that stops answering (a stopped process, a dead link) is found
        // by HTTP/2 pings within about twice --timeout, even in a long call.
        .http2_keep_alive_interval(timeout.max(Duration::from_secs(1)))
        .keep_alive_timeout(timeout)
        .keep_alive_while_idle(true);
    if let Some(call) = bounds.call {
        endpoint = endpoint.timeout(call);
    }
    let channel = tokio::time::timeout(timeout, endpoint.connect())
        .await
        .map_err(|_| {
            format!(
                "cannot reach the ingress admin API at {server}: no connection within {} (--timeout)",
                format_duration(timeout)
            )
        })?
        .map_err(|e| cannot_reach(server, bounds, &e))?;
    let header = match token.filter(|token| !token.is_empty()) {
        Some(token) => Some(
            MetadataValue::try_from(format!("Bearer {token}"))
                .map_err(|_| "--token contains characters a header cannot carry".to_string())?,
        ),
        None => None,
    };
    let interceptor: AddToken = Box::new(move |mut request: Request<()>| {
        if let Some(header) = &header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    });
    Ok(AdminClient::with_interceptor(channel, interceptor))
}

async fn run(cli: Cli) -> Result<(), String> {
    if let Command::Completions { shell } = cli.command {
        // Into a buffer first: clap_complete panics when its writer fails (a
        // closed pipe), and a closed pipe is an ordinary end here.
        let mut script = Vec::new();
        let mut command = <Cli as clap::CommandFactory>::command();
        clap_complete::generate(shell, &mut command, "ingressctl", &mut script);
        use std::io::Write;
        return match std::io::stdout().write_all(&script) {
            Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                Err(format!("cannot write the completion script: {e}"))
            }
            _ => Ok(()),
        };
    }
    let bounds = Bounds::new(&cli.command, cli.timeout)?;
    let mut client = connect(&cli.server, cli.token, &bounds).await?;
    let server = cli.server;
    let refused = |status: tonic::Status| call_error(&server, &bounds, status);
    let output = cli.output;
    match cli.command {
        Command::App { command } => match command {
            AppCommand::Create { name } => {
                client
                    .create_app(proto::AppName { name: name.clone() })
                    .await
                    .map_err(refused)?;
                done(
                    output,
                    json!({ "created": name }),
                    format!("app {name} created"),
                );
            }
            AppCommand::Delete { name } => {
                client
                    .delete_app(proto::AppName { name: name.clone() })
                    .await
                    .map_err(refused)?;
                done(
                    output,
                    json!({ "deleted": name }),
                    format!("app {name} deleted"),
                );
            }
            AppCommand::List => {
                let apps = client
                    .list_apps(proto::Empty {})
                    .await
                    .map_err(refused)?
                    .into_inner()
                    .apps;
                let rows = apps
                    .iter()
                    .map(|a| {
                        vec![
                            a.name.clone(),
                            a.active_version.clone().unwrap_or_else(|| "-".into()),
                            format_unix_millis(a.created_at_ms),
                        ]
                    })
                    .collect();
                let doc = Value::Array(
                    apps.iter()
                        .map(|a| json!({ "name": a.name, "active_version": a.active_version, "created_at": format_unix_millis(a.created_at_ms) }))
                        .collect(),
                );
                listing(output, doc, &["NAME", "ACTIVE VERSION", "CREATED"], rows);
            }
        },
        Command::Route { command } => match command {
            RouteCommand::Add { host, app } => {
                let route = client
                    .add_route(proto::RouteRequest { host, app })
                    .await
                    .map_err(refused)?
                    .into_inner();
                done(
                    output,
                    route_json(&route),
                    format!("route {} -> app {}", route.host, route.app),
                );
            }
            RouteCommand::Remove { host } => {
                client
                    .remove_route(proto::RouteRequest {
                        host: host.clone(),
                        app: String::new(),
                    })
                    .await
                    .map_err(refused)?;
                done(
                    output,
                    json!({ "removed": host }),
                    format!("route {host} removed"),
                );
            }
            RouteCommand::Default { app } => {
                let route = client
                    .set_default_route(proto::AppName { name: app })
                    .await
                    .map_err(refused)?
                    .into_inner();
                done(
                    output,
                    route_json(&route),
                    format!("default route -> app {}", route.app),
                );
            }
            RouteCommand::List => {
                let routes = client
                    .list_routes(proto::Empty {})
                    .await
                    .map_err(refused)?
                    .into_inner()
                    .routes;
                let rows = routes
                    .iter()
                    .map(|r| vec![r.host.clone(), r.kind.clone(), r.app.clone()])
                    .collect();
                let doc = Value::Array(routes.iter().map(route_json).collect());
                listing(output, doc, &["HOST", "KIND", "APP"], rows);
            }
        },
        Command::Deploy {
            app,
            upstream,
            command,
            ready_path,
            ready_tcp,
            version,
            env,
            branch,
            ephemeral,
            ttl,
        } => {
            let reply = client
                .deploy(proto::DeployRequest {
                    app,
                    upstreams: upstream,
                    version,
                    env,
                    branch,
                    ephemeral_label: ephemeral,
                    ttl,
                    command,
                    ready_path,
                    ready_tcp,
                })
                .await
                .map_err(refused)?
                .into_inner();
            let version = reply
                .version
                .ok_or("the server answered without a version")?;
            let mut text = format!(
                "deployed version {} of app {} ({})",
                version.id, version.app, version.status
            );
            if let Some(expiry) = version.expires_at_ms {
                text.push_str(&format!(", expires {}", format_unix_millis(expiry)));
            }
            if let Some(old) = &reply.replaced {
                text.push_str(&format!("\nreplaced version {old} (same label)"));
            }
            for old in &reply.evicted {
                text.push_str(&format!("\nevicted version {old} (nearest to expiry)"));
            }
            for url in &version.urls {
                text.push_str(&format!("\n  {url}"));
            }
            let mut doc = version_json(&version);
            doc["replaced"] = json!(reply.replaced);
            doc["evicted"] = json!(reply.evicted);
            done(output, doc, text);
        }
        Command::Import { file } => {
            let apps = read_import(&file)?;
            let reply = client
                .import(tonic::codegen::tokio_stream::iter(apps))
                .await
                .map_err(refused)?
                .into_inner();
            done(
                output,
                json!({ "apps": reply.apps, "routes": reply.routes, "versions": reply.versions }),
                format!(
                    "imported {} apps, {} routes, {} versions",
                    reply.apps, reply.routes, reply.versions
                ),
            );
        }
        Command::Versions { app, ephemeral } => {
            let versions = client
                .list_versions(proto::ListVersionsRequest {
                    app,
                    ephemeral_only: ephemeral,
                })
                .await
                .map_err(refused)?
                .into_inner()
                .versions;
            let rows = versions
                .iter()
                .map(|v| {
                    vec![
                        v.id.clone(),
                        v.status.clone(),
                        v.label.clone().unwrap_or_else(|| "-".into()),
                        v.expires_at_ms
                            .map_or_else(|| "-".into(), format_unix_millis),
                        v.env.clone(),
                        v.branch.clone().unwrap_or_else(|| "-".into()),
                        v.desired_state.clone(),
                        v.observed_state.clone(),
                        v.last_activity_at_ms
                            .map_or_else(|| "-".into(), format_unix_millis),
                        v.pending.as_ref().map_or_else(|| "-".into(), pending_text),
                        v.urls.join(" "),
                    ]
                })
                .collect();
            let doc = Value::Array(versions.iter().map(version_json).collect());
            listing(
                output,
                doc,
                &[
                    "ID",
                    "STATUS",
                    "LABEL",
                    "EXPIRES",
                    "ENV",
                    "BRANCH",
                    "DESIRED",
                    "OBSERVED",
                    "LAST ACTIVITY",
                    "PENDING",
                    "URLS",
                ],
                rows,
            );
        }
        Command::Stop {
            app,
            version,
            force,
        } => {
            let info = client
                .stop_version(proto::StopRequest {
                    app,
                    version,
                    force,
                })
                .await
                .map_err(refused)?
                .into_inner();
            let text = format!(
                "stopped version {} of app {} (observed: {})",
                info.id, info.app, info.observed_state
            );
            done(output, version_json(&info), text);
        }
        Command::Wake {
            app,
            version,
            no_wait,
            timeout,
        } => {
            let timeout_ms = match wake_wait(&timeout)? {
                None => 0,
                Some(duration) => u64::try_from(duration.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1),
            };
            let info = client
                .wake_version(proto::WakeRequest {
                    app,
                    version,
                    wait: !no_wait,
                    timeout_ms,
                })
                .await
                .map_err(refused)?
                .into_inner();
            let text = format!(
                "woke version {} of app {} (observed: {})",
                info.id, info.app, info.observed_state
            );
            done(output, version_json(&info), text);
        }
        Command::Logs {
            app,
            version,
            bytes,
        } => {
            let text = client
                .logs(proto::LogsRequest {
                    app: app.clone(),
                    version: version.clone(),
                    max_bytes: bytes,
                })
                .await
                .map_err(refused)?
                .into_inner()
                .text;
            match output {
                Output::Json => {
                    println!(
                        "{}",
                        json!({ "app": app, "version": version, "text": text })
                    )
                }
                Output::Table => print!("{text}"),
            }
        }
        Command::Delete { app, version } => {
            client
                .delete_version(proto::VersionName {
                    app: app.clone(),
                    version: version.clone(),
                })
                .await
                .map_err(refused)?;
            done(
                output,
                json!({ "deleted": version, "app": app }),
                format!("version {version} of app {app} deleted"),
            );
        }
        Command::Cert { command } => {
            cert::run(&mut client, output, command, refused).await?;
        }
        // Answered before connecting, above.
        Command::Completions { .. } => {}
        Command::Nodes => {
            let list = client
                .list_nodes(proto::Empty {})
                .await
                .map_err(refused)?
                .into_inner();
            print_nodes(output, &list);
        }
        Command::Audit { limit } => {
            let entries = client
                .audit(proto::AuditRequest { limit })
                .await
                .map_err(refused)?
                .into_inner()
                .entries;
            let rows = entries
                .iter()
                .map(|e| {
                    vec![
                        format_unix_millis(e.at_ms),
                        e.actor.clone(),
                        e.action.clone(),
                        e.target.clone(),
                        e.detail.clone(),
                    ]
                })
                .collect();
            let doc = Value::Array(
                entries
                    .iter()
                    .map(|e| json!({ "at": format_unix_millis(e.at_ms), "actor": e.actor, "action": e.action, "target": e.target, "detail": e.detail }))
                    .collect(),
            );
            listing(
                output,
                doc,
                &["AT", "ACTOR", "ACTION", "TARGET", "DETAIL"],
                rows,
            );
        }
    }
    Ok(())
}

/// `ingressctl nodes`: a line about the control node, then one row per
/// replica; in JSON, one object with the replicas in `nodes`.
fn print_nodes(output: Output, list: &proto::NodeList) {
    let lag_text = |node: &proto::NodeInfo| match node.lag {
        Some(lag) => lag.to_string(),
        None => "resync".to_string(),
    };
    let ago = |node: &proto::NodeInfo| node.reported_ago_ms as f64 / 1000.0;
    if output == Output::Json {
        let nodes: Vec<Value> = list
            .nodes
            .iter()
            .map(|n| {
                json!({
                    "id": n.id,
                    "address": n.address,
                    "epoch": n.epoch,
                    "applied_generation": n.applied_generation,
                    "lag": n.lag,
                    "state": match n.lag {
                        None => "resync",
                        Some(0) => "current",
                        Some(_) => "behind",
                    },
                    "last_report": format_unix_millis(n.reported_at_ms),
                    "last_report_ago_s": ago(n),
                })
            })
            .collect();
        println!(
            "{}",
            json!({
                "serves_replicas": list.serves_replicas,
                "note": (!list.note.is_empty()).then_some(&list.note),
                "epoch": list.epoch,
                "generation": list.generation,
                "nodes": nodes,
            })
        );
        return;
    }
    if !list.serves_replicas {
        println!("{}", list.note);
        return;
    }
    println!(
        "control node: generation {} (epoch {}), {} replica(s)",
        list.generation,
        list.epoch,
        list.nodes.len()
    );
    let rows = list
        .nodes
        .iter()
        .map(|n| {
            vec![
                n.id.clone(),
                n.address.clone(),
                n.applied_generation.to_string(),
                lag_text(n),
                format!(
                    "{} ({:.1}s ago)",
                    format_unix_millis(n.reported_at_ms),
                    ago(n)
                ),
            ]
        })
        .collect();
    listing(
        output,
        Value::Null,
        &["ID", "ADDRESS", "APPLIED", "LAG", "LAST REPORT"],
        rows,
    );
}

fn route_json(route: &proto::RouteInfo) -> Value {
    json!({ "host": route.host, "kind": route.kind, "app": route.app })
}

fn version_json(v: &proto::VersionInfo) -> Value {
    json!({
        "id": v.id,
        "app": v.app,
        "status": v.status,
        "label": v.label,
        "expires_at": v.expires_at_ms.map(format_unix_millis),
        "env": v.env,
        "branch": v.branch,
        "desired_state": v.desired_state,
        "observed_state": v.observed_state,
        "failure": v.failure,
        "last_activity_at": v.last_activity_at_ms.map(format_unix_millis),
        "pending": v.pending.as_ref().map(|p| json!({
            "desired_state": p.desired_state,
            "due_at": format_unix_millis(p.due_at_ms),
            "reason": p.reason,
            "actor": p.actor,
        })),
        "created_at": format_unix_millis(v.created_at_ms),
        "cloned_from": v.cloned_from,
        "runtime": v.runtime,
        "command": v.command,
        "upstreams": v.upstreams,
        "addresses": v.addresses,
        "urls": v.urls,
    })
}

/// `stop at 2026-11-22T10:00:00Z (superseded)`.
fn pending_text(pending: &proto::PendingChange) -> String {
    let verb = if pending.desired_state == "running" {
        "wake"
    } else {
        "stop"
    };
    format!(
        "{verb} at {} ({})",
        format_unix_millis(pending.due_at_ms),
        pending.reason
    )
}

fn done(output: Output, doc: Value, text: String) {
    match output {
        Output::Json => println!("{doc}"),
        Output::Table => println!("{text}"),
    }
}

fn listing(output: Output, doc: Value, header: &[&str], rows: Vec<Vec<String>>) {
    if output == Output::Json {
        println!("{doc}");
        return;
    }
    // comfy-table without borders: columns two spaces apart, as `kubectl get`
    // prints, so the text stays easy to read and to `awk`.
    let mut table = comfy_table::Table::new();
    table
        .load_preset(comfy_table::presets::NOTHING)
        .set_header(header.iter().copied())
        .add_rows(rows);
    for column in table.column_iter_mut() {
        column.set_padding((0, 2));
    }
    for line in table.lines() {
        println!("{}", line.trim_end());
    }
}

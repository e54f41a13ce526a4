//! The typed settings of the configuration file (SPEC §10), with their defaults.
//!
//! Every section and every field may be left out; a missing one takes the default
//! written next to it. Unknown keys are refused (`deny_unknown_fields`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

use crate::duration::ConfigDuration;

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub proxy: ProxySettings,
    pub admin: AdminSettings,
    pub store: StoreSettings,
    pub ephemeral: EphemeralSettings,
    pub idle: IdleSettings,
    pub supersede: SupersedeSettings,
    pub wake: WakeSettings,
    pub runtime: RuntimeSettings,
    /// `[tls]`: absent means no TLS listener.
    pub tls: Option<TlsSettings>,
    pub node: NodeSettings,
    /// `[control]`: how a proxy-only node reaches its control node.
    pub control: ControlSettings,
    pub activity: ActivitySettings,
    /// `[log]`: the access log and the diagnostic log.
    pub log: LogSettings,
}

/// `[proxy]`: the public listener and how the proxy talks to upstreams.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProxySettings {
    /// The public HTTP listener. Default `127.0.0.1:8080`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Worker threads of the proxy service. Default 2.
    pub threads: usize,
    /// Let idle worker threads steal tasks from busy ones. Default false: one
    /// runtime per thread served more requests per second (benches/load).
    pub work_stealing: bool,
    /// Time allowed to open a TCP connection to an upstream. Default `2s`.
    pub connect_timeout: ConfigDuration,
    /// Time allowed between two reads from an upstream (also the idle limit of a
    /// WebSocket after its upgrade). Default `60s`.
    pub read_timeout: ConfigDuration,
    /// Time allowed for one write to an upstream. Default `60s`.
    pub write_timeout: ConfigDuration,
    /// How long an idle upstream keep-alive connection stays in the pool. Default `60s`.
    pub upstream_idle_timeout: ConfigDuration,
    /// Idle upstream connections kept for reuse, per worker thread, over all
    /// upstreams. Default 1024.
    pub upstream_keepalive_pool_size: usize,
    /// How long a lease (a version's ready addresses) is reused before it is asked
    /// for again. Default `30s`.
    pub lease_ttl: ConfigDuration,
    /// Most leases kept in the lease cache. Default 100000.
    pub lease_cache_capacity: u64,
    /// Open client connections at most; past it, a new connection is closed at
    /// once so requests on open ones keep working. Default 0: derived from the
    /// descriptor limit at start (half of what is left after a reserve, since
    /// each client connection may hold an upstream connection too).
    pub max_connections: usize,
    /// Largest request header block (request line and headers) in bytes; past it,
    /// 431. Also the most a connection buffers while its head arrives. Default
    /// 16384 (HAProxy's default buffer; nginx allows 8 KiB per line).
    pub max_header_bytes: usize,
    /// Most header fields in a request; past it, 431. Default 100; at most 256.
    pub max_headers: usize,
    /// Longest request target in bytes; past it, 414. Default 8192.
    pub max_target_bytes: usize,
    /// Longest a request waits for a free slot on a saturated instance
    /// (`runtime.max_conns_per_instance`) before it gets 503. Default `10s`.
    pub queue_timeout: ConfigDuration,
    /// Time allowed for a client to send a whole request header block, from its
    /// first byte. Default `60s` (nginx's `client_header_timeout`).
    pub header_timeout: ConfigDuration,
    /// How long an idle keep-alive client connection is kept open waiting for its
    /// next request. Default `75s` (nginx's `keepalive_timeout`).
    pub keepalive_timeout: ConfigDuration,
    /// Longest pause between two reads of a request body. Default `60s` (nginx's
    /// `client_body_timeout`).
    pub body_timeout: ConfigDuration,
    /// Serve plain HTTP/1.1 requests with the project's own fast path and upstream
    /// pool; everything else (and everything when false) goes through
    /// `pingora-proxy`. Default true.
    pub fast_path: bool,
    /// Accept HTTP/2 with prior knowledge (h2c) on the plain listener, beside
    /// HTTP/1.1. Default false.
    pub h2c: bool,
}

impl Default for ProxySettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            threads: 2,
            work_stealing: false,
            connect_timeout: secs(2),
            read_timeout: secs(60),
            write_timeout: secs(60),
            upstream_idle_timeout: secs(60),
            upstream_keepalive_pool_size: 1024,
            lease_ttl: secs(30),
            lease_cache_capacity: 100_000,
            max_connections: 0,
            max_header_bytes: 16_384,
            max_headers: 100,
            max_target_bytes: 8_192,
            queue_timeout: secs(10),
            header_timeout: secs(60),
            keepalive_timeout: secs(75),
            body_timeout: secs(60),
            fast_path: true,
            h2c: false,
        }
    }
}

/// `[admin]`: the control API listeners and who may call them.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct AdminSettings {
    /// The gRPC control API. Default `127.0.0.1:9090`.
    #[serde(deserialize_with = "socket_addr")]
    pub grpc_listen: SocketAddr,
    /// `/metrics`, `/healthz` and `/readyz`. Default `127.0.0.1:9091`.
    #[serde(deserialize_with = "socket_addr")]
    pub http_listen: SocketAddr,
    /// Bearer tokens accepted by the control API. Default none.
    pub tokens: Vec<TokenSettings>,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            grpc_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            http_listen: SocketAddr::from(([127, 0, 0, 1], 9091)),
            tokens: Vec::new(),
        }
    }
}

/// One admin token: a name (recorded in the audit log), its secret, written
/// inline or read from an environment variable when the config is loaded, and
/// its role (what it may call).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenSettings {
    pub name: String,
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub secret_env: Option<String>,
    /// `admin`, `read` or `replica`. Default `admin`.
    #[serde(default)]
    pub role: TokenRole,
}

/// What an admin token may call (the table of each call's roles is in
/// `ingress_control_api::scopes`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum TokenRole {
    /// Every call.
    #[default]
    Admin,
    /// Listings, show and check, the audit log, logs and `Watch`: no change.
    Read,
    /// What a proxy-only replica needs from its control node: `Watch` and the
    /// `Replication` service (routing stream, wakes, activity reports).
    Replica,
}

impl TokenRole {
    /// Every role, in the order the docs list them.
    pub const ALL: [TokenRole; 3] = [TokenRole::Admin, TokenRole::Read, TokenRole::Replica];

    /// The name written in the config.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Admin => "admin",
            TokenRole::Read => "read",
            TokenRole::Replica => "replica",
        }
    }
}

/// The roles as an error message lists them.
const TOKEN_ROLES: &str = "admin (every call), read (listings, show, check, audit, logs and watch) or replica (the routing stream of a proxy-only replica)";

impl<'de> Deserialize<'de> for TokenRole {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RoleVisitor;
        impl serde::de::Visitor<'_> for RoleVisitor {
            type Value = TokenRole;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                write!(f, "a role: {TOKEN_ROLES}")
            }
            fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<TokenRole, E> {
                TokenRole::ALL
                    .into_iter()
                    .find(|role| role.as_str() == text)
                    .ok_or_else(|| {
                        E::custom(format!("{text:?} is not a role; allowed: {TOKEN_ROLES}"))
                    })
            }
        }
        deserializer.deserialize_str(RoleVisitor)
    }
}

impl std::fmt::Display for TokenRole {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[store]`: where the embedded store keeps its file.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreSettings {
    /// Directory of the store file (and of process logs). Default `./data`. Must
    /// not be empty.
    pub data_dir: PathBuf,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./data"),
        }
    }
}

/// `[ephemeral]`: preview versions with a label and a TTL.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct EphemeralSettings {
    /// Shortest TTL a deploy may ask for: a preview must outlive its deploy
    /// (a `1ms` TTL would be expired when acknowledged). Default `1m`.
    pub min_ttl: ConfigDuration,
    /// TTL of a preview deployed without one. Default `24h`.
    pub default_ttl: ConfigDuration,
    /// Longest TTL a deploy may ask for. Default `30d`.
    pub max_ttl: ConfigDuration,
    /// Live labels per app; one more evicts the nearest to expiry. Default 10.
    pub max_per_app: usize,
    /// How often expired versions are deleted. Default `5m`.
    pub gc_interval: ConfigDuration,
    /// How long an expired label answers 410 Gone before it becomes a plain 404.
    /// Default `24h`.
    pub tombstone_ttl: ConfigDuration,
}

impl Default for EphemeralSettings {
    fn default() -> Self {
        Self {
            min_ttl: secs(60),
            default_ttl: secs(24 * 3600),
            max_ttl: secs(30 * 86_400),
            max_per_app: 10,
            gc_interval: secs(300),
            tombstone_ttl: secs(24 * 3600),
        }
    }
}

/// `[idle]`: stopping versions nobody uses.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct IdleSettings {
    /// Inactivity after which a running preview is stopped. Default `1h`.
    pub timeout: ConfigDuration,
    /// How often idleness is checked. Default `60s`.
    pub check_interval: ConfigDuration,
    /// Also stop idle production versions. Default false.
    pub include_production: bool,
}

impl Default for IdleSettings {
    fn default() -> Self {
        Self {
            timeout: secs(3600),
            check_interval: secs(60),
            include_production: false,
        }
    }
}

/// `[supersede]`: stopping older previews of a branch.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct SupersedeSettings {
    /// Delay between a newer preview of a branch being ready and the older ones
    /// stopping. Default `60s`.
    pub grace: ConfigDuration,
}

impl Default for SupersedeSettings {
    fn default() -> Self {
        Self { grace: secs(60) }
    }
}

/// How a browser's request for a stopped version is answered while it wakes.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum WakeMode {
    /// Hold the request until the version is ready.
    Hold,
    /// Serve browser GETs a small self-refreshing "starting" page.
    Page,
}

/// `[wake]`: waking stopped versions on request.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct WakeSettings {
    /// Longest a request is held while its version starts. Default `30s`.
    pub timeout: ConfigDuration,
    /// Requests held per version; past it, 503 at once. Default 1024.
    pub max_waiters: usize,
    /// `hold` or `page`. Default `hold`.
    pub mode: WakeMode,
    /// Request paths that never wake a version nor count as activity.
    pub ignore_paths: Vec<String>,
    /// User-agent substrings that never wake a version nor count as activity.
    pub ignore_user_agents: Vec<String>,
    /// After a start fails, no new start is tried for this long; the pause doubles
    /// with each failure in a row. Default `2s`.
    pub failure_backoff: ConfigDuration,
    /// The longest pause between failed starts. Default `1m`.
    pub failure_backoff_max: ConfigDuration,
}

impl Default for WakeSettings {
    fn default() -> Self {
        Self {
            timeout: secs(30),
            max_waiters: 1024,
            mode: WakeMode::Hold,
            ignore_paths: vec!["/healthz".to_string()],
            ignore_user_agents: vec!["kube-probe".to_string(), "Prometheus".to_string()],
            failure_backoff: secs(2),
            failure_backoff_max: secs(60),
        }
    }
}

/// `[runtime]`: how instances are started and stopped.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RuntimeSettings {
    /// Time between SIGTERM and SIGKILL when an instance is stopped. Default `10s`.
    pub stop_grace: ConfigDuration,
    /// Longest a stopping version waits for its in-flight requests (and open
    /// WebSockets) to finish before it is signalled. Default `30s`.
    pub drain_timeout: ConfigDuration,
    /// Longest a started process may take to become ready before the start counts
    /// as failed. Default `60s`.
    pub start_timeout: ConfigDuration,
    /// Requests proxied to one instance at once; more wait in a FIFO queue for at
    /// most `proxy.queue_timeout` (HAProxy's per-server `maxconn`). Sandboxes are
    /// often single-process dev servers that drop connections when a woken burst
    /// arrives all at once. Default 64; 0 = no limit.
    pub max_conns_per_instance: usize,
    /// `[runtime.process]`: where `--command` processes listen.
    pub process: ProcessSettings,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        Self {
            stop_grace: secs(10),
            drain_timeout: secs(30),
            start_timeout: secs(60),
            max_conns_per_instance: 64,
            process: ProcessSettings::default(),
        }
    }
}

/// `[runtime.process]`: the address of `--command` processes. A process is told
/// to listen on `$HOST:$PORT` (`HOST` = `bind`, `PORT` a free port on it), and
/// the proxies, its readiness probe and replicas reach it at `advertise:PORT`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessSettings {
    /// The IP a process listens on (`HOST`). Default `127.0.0.1`: reachable from
    /// this machine only. `0.0.0.0` (or `::`) listens on every interface and
    /// needs `advertise`.
    #[serde(deserialize_with = "ip_addr")]
    pub bind: IpAddr,
    /// The IP written into the version's endpoints (what proxies, replicas and
    /// the readiness probe connect to). Default empty: the `bind` IP. Required
    /// when `bind` is a wildcard; never a wildcard itself.
    #[serde(deserialize_with = "optional_ip_addr")]
    pub advertise: Option<IpAddr>,
}

impl Default for ProcessSettings {
    fn default() -> Self {
        Self {
            bind: IpAddr::V4(Ipv4Addr::LOCALHOST),
            advertise: None,
        }
    }
}

impl ProcessSettings {
    /// The IP processes are reached at: `advertise`, else `bind`.
    pub fn advertised(&self) -> IpAddr {
        self.advertise.unwrap_or(self.bind)
    }
}

/// What a TLS handshake gets when no certificate matches its SNI (or it sent none).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum UnknownSni {
    /// The handshake is refused (alert `access_denied`).
    Reject,
    /// `tls.default_cert` is served.
    Default,
}

/// What a TLS request gets when its Host is not covered by the connection's certificate.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Misdirected {
    /// 421 Misdirected Request (RFC 9110 §15.5.20): safe with HTTP/2 connection
    /// coalescing.
    Reject,
    /// Served like any other request.
    Allow,
}

/// `[tls]`: the TLS listener and its certificates.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSettings {
    /// The TLS listener. Default `127.0.0.1:8443`.
    #[serde(deserialize_with = "socket_addr")]
    pub listen: SocketAddr,
    /// Offer HTTP/2 by ALPN (`h2,http/1.1`; HTTP/1.1 stays for WebSockets).
    /// Default true.
    pub h2: bool,
    /// A directory of certificates besides those added through the control API:
    /// `NAME.crt` + `NAME.key`, or `NAME/fullchain.pem` + `NAME/privkey.pem`.
    /// Default none.
    pub cert_dir: Option<PathBuf>,
    /// How often `cert_dir` is rescanned; `0s` = only on SIGHUP or `ingressctl
    /// cert reload`. Default `30s`.
    pub reload_interval: ConfigDuration,
    /// `reject` or `default`. Default `reject`.
    pub unknown_sni: UnknownSni,
    /// The certificate name served when `unknown_sni = "default"`.
    pub default_cert: String,
    /// Plain-HTTP requests for a host a certificate covers get 308 to https.
    /// Default true.
    pub redirect_http: bool,
    /// The `Strict-Transport-Security` value sent on TLS responses; empty = none.
    pub hsts: String,
    /// `reject` (421) or `allow`. Default `reject`.
    pub misdirected: Misdirected,
    /// A certificate expiring within this is `expiring`. Default `21d`.
    pub expiry_warning: ConfigDuration,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8443)),
            h2: true,
            cert_dir: None,
            reload_interval: secs(30),
            unknown_sni: UnknownSni::Reject,
            default_cert: String::new(),
            redirect_http: true,
            hsts: String::new(),
            misdirected: Misdirected::Reject,
            expiry_warning: secs(21 * 86_400),
        }
    }
}

/// What one `ingress` process runs.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum NodeRole {
    /// Everything in one process: the store, the admin API, the runtimes, the
    /// loops and the proxy (a single node).
    All,
    /// The control node of replicas: the same as `all`, and it serves the
    /// routing stream to proxy-only nodes.
    Control,
    /// A proxy-only replica: no store and no runtimes; it follows a control node.
    Proxy,
}

/// `[node]`: this process's role among several ingress nodes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSettings {
    /// `all` (default), `control` or `proxy`.
    pub role: NodeRole,
    /// The node's name in the control node's listings and logs; unique among
    /// replicas. Default: `HOSTNAME:PORT` of `proxy.listen`, filled at start.
    pub id: String,
}

impl Default for NodeSettings {
    fn default() -> Self {
        Self {
            role: NodeRole::All,
            id: String::new(),
        }
    }
}

/// `[control]`: for `node.role = "proxy"`, the control node(s) to follow.
#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct ControlSettings {
    /// gRPC addresses of control nodes (`http://127.0.0.1:9090`), tried in order.
    pub endpoints: Vec<String>,
    /// A token with role `replica` (or `admin`), inline or from an environment
    /// variable read when the config is loaded.
    pub token: Option<String>,
    pub token_env: Option<String>,
}

/// `[activity]`: how replicas report traffic to their control node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ActivitySettings {
    /// How often a replica reports the versions it served. Default `2s`.
    pub report_interval: ConfigDuration,
}

impl Default for ActivitySettings {
    fn default() -> Self {
        Self {
            report_interval: secs(2),
        }
    }
}

fn secs(seconds: u64) -> ConfigDuration {
    ConfigDuration(Duration::from_secs(seconds))
}

fn ip_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address; write one without a port, for example 127.0.0.1, 10.0.0.5, 0.0.0.0 or ::1"
        ))
    })
}

/// An IP address, or empty for none.
fn optional_ip_addr<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<IpAddr>, D::Error> {
    let text = String::deserialize(deserializer)?;
    if text.is_empty() {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not an IP address; write the IP other machines reach this one at, without a port (for example 10.0.0.5), or \"\" for the bind IP"
        ))
    })
}

fn socket_addr<'de, D: Deserializer<'de>>(deserializer: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        serde::de::Error::custom(format!(
            "{text:?} is not a socket address; write IP:PORT, for example 127.0.0.1:8080 or [::1]:8080"
        ))
    })
}

/// `[log]`: where access-log lines go and in what form, and how much the
/// diagnostic log says.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `"stdout"`, `"off"` or the path of a file (appended to, reopened on
    /// SIGUSR1). Default `"stdout"`: SPEC §11 wants every request logged, and
    /// the diagnostic log goes to stderr, so the two streams stay apart.
    pub access: AccessLog,
    /// `"json"` (one object a line) or `"combined"` (Apache/nginx combined log
    /// format). Default `"json"`.
    pub access_format: AccessFormat,
    /// Lines waiting for the writer at most; past it a line is dropped and
    /// counted (`ingress_access_log_dropped_total`) so a slow disk never holds a
    /// request. Default 16384.
    pub access_buffer: usize,
    /// The diagnostic log's level: `off`, `error`, `warn`, `info`, `debug` or
    /// `trace`. `RUST_LOG`, when set, wins. Default `info`; a SIGHUP applies a
    /// new level at once.
    pub level: LogLevel,
    /// The diagnostic log's lines (on stderr): `text` or `json`. Default `text`.
    pub format: LogFormat,
}

impl Default for LogSettings {
    fn default() -> Self {
        Self {
            access: AccessLog::Stdout,
            access_format: AccessFormat::Json,
            access_buffer: 16_384,
            level: LogLevel::Info,
            format: LogFormat::Text,
        }
    }
}

/// Where access-log lines go (`log.access`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLog {
    /// No access log.
    Off,
    /// The process's standard output.
    Stdout,
    /// This file, appended to; reopened on SIGUSR1 (after logrotate moved it).
    File(PathBuf),
}

impl<'de> Deserialize<'de> for AccessLog {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        match text.as_str() {
            "off" => Ok(AccessLog::Off),
            "stdout" => Ok(AccessLog::Stdout),
            path if path.trim().is_empty() => Err(serde::de::Error::custom(
                "must be \"stdout\", \"off\" or the path of a file, not empty",
            )),
            path => Ok(AccessLog::File(PathBuf::from(path))),
        }
    }
}

/// The form of an access-log line (`log.access_format`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum AccessFormat {
    /// One JSON object a line, every field named.
    Json,
    /// Apache/nginx "combined": `IP - - [time] "request" status bytes "referer" "agent"`.
    Combined,
}

/// The form of the diagnostic log's lines (`log.format`).
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-02T03:24:53.123456Z  INFO target: message`.
    Text,
    /// One JSON object a line (`timestamp`, `level`, `fields.message`, `target`).
    Json,
}

/// The diagnostic log's level (`log.level`): the least severe records written.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Off,
    Error,
    Warn,
    #[default]
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    /// The level's name, as the config file and a `RUST_LOG` filter write it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Off => "off",
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

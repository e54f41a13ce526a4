//! Reading and validating the configuration file. Every error names the key that is
//! wrong and what is allowed there.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use crate::settings::Config;

/// A configuration that cannot be used, with the key at fault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the offending key (`proxy.listen`), or the file for I/O and
    /// syntax errors.
    pub key: String,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigError {}

fn error(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.into(),
        message: message.into(),
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`; `secret_env` tokens are read
    /// from the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| error(path.display().to_string(), format!("cannot read: {e}")))?;
        Config::parse(&text, |name| std::env::var(name).ok())
            .map_err(|e| error(format!("{}: {}", path.display(), e.key), e.message))
    }

    /// Parses and validates TOML text. `env` looks up environment variables for
    /// tokens given as `secret_env`; on success every token has its `secret` set.
    pub fn parse(text: &str, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let deserializer = toml::Deserializer::new(text);
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            // A syntax error has no key; its place in the file says where to look.
            let key = match (path.as_str(), inner.span()) {
                (".", Some(span)) => {
                    let (line, column) = line_column(text, span.start);
                    format!("line {line}, column {column}")
                }
                (".", None) => "config".to_string(),
                _ => path,
            };
            error(key, one_line(inner.message()))
        })?;
        config.validate(env)?;
        Ok(config)
    }

    fn validate(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if self.store.data_dir.to_string_lossy().trim().is_empty() {
            return Err(error(
                "store.data_dir",
                "must not be empty; give the directory of the store, for example \"./data\"",
            ));
        }
        if self.proxy.threads == 0 || self.proxy.threads > 1024 {
            return Err(error(
                "proxy.threads",
                format!("{} is out of range; allowed 1 to 1024", self.proxy.threads),
            ));
        }
        for (key, value, max) in [
            (
                "proxy.lease_cache_capacity",
                self.proxy.lease_cache_capacity,
                10_000_000,
            ),
            (
                "proxy.upstream_keepalive_pool_size",
                self.proxy.upstream_keepalive_pool_size as u64,
                65_536,
            ),
            (
                "ephemeral.max_per_app",
                self.ephemeral.max_per_app as u64,
                1_000,
            ),
            ("wake.max_waiters", self.wake.max_waiters as u64, 1_000_000),
            (
                "log.access_buffer",
                self.log.access_buffer as u64,
                1_000_000,
            ),
            ("proxy.max_headers", self.proxy.max_headers as u64, 256),
        ] {
            if value == 0 || value > max {
                return Err(error(
                    key,
                    format!("{value} is out of range; allowed 1 to {max}"),
                ));
            }
        }
        // Bounds that keep every timer and cache well inside what they accept.
        let year = Duration::from_secs(365 * 86_400);
        for (key, value, max, max_text) in [
            (
                "proxy.lease_ttl",
                self.proxy.lease_ttl,
                Duration::from_secs(86_400),
                "1d",
            ),
            (
                "proxy.connect_timeout",
                self.proxy.connect_timeout,
                year,
                "365d",
            ),
            ("proxy.read_timeout", self.proxy.read_timeout, year, "365d"),
            (
                "proxy.write_timeout",
                self.proxy.write_timeout,
                year,
                "365d",
            ),
            (
                "proxy.upstream_idle_timeout",
                self.proxy.upstream_idle_timeout,
                year,
                "365d",
            ),
            ("ephemeral.min_ttl", self.ephemeral.min_ttl, year, "365d"),
            (
                "ephemeral.default_ttl",
                self.ephemeral.default_ttl,
                year,
                "365d",
            ),
            ("ephemeral.max_ttl", self.ephemeral.max_ttl, year, "365d"),
            (
                "ephemeral.gc_interval",
                self.ephemeral.gc_interval,
                year,
                "365d",
            ),
            (
                "ephemeral.tombstone_ttl",
                self.ephemeral.tombstone_ttl,
                year,
                "365d",
            ),
            ("idle.timeout", self.idle.timeout, year, "365d"),
            (
                "idle.check_interval",
                self.idle.check_interval,
                year,
                "365d",
            ),
            ("supersede.grace", self.supersede.grace, year, "365d"),
            ("wake.timeout", self.wake.timeout, year, "365d"),
            ("runtime.stop_grace", self.runtime.stop_grace, year, "365d"),
            (
                "wake.failure_backoff",
                self.wake.failure_backoff,
                Duration::from_secs(86_400),
                "1d",
            ),
            (
                "wake.failure_backoff_max",
                self.wake.failure_backoff_max,
                Duration::from_secs(86_400),
                "1d",
            ),
            (
                "runtime.drain_timeout",
                self.runtime.drain_timeout,
                year,
                "365d",
            ),
            (
                "runtime.start_timeout",
                self.runtime.start_timeout,
                year,
                "365d",
            ),
            (
                "proxy.queue_timeout",
                self.proxy.queue_timeout,
                year,
                "365d",
            ),
            (
                "proxy.header_timeout",
                self.proxy.header_timeout,
                year,
                "365d",
            ),
            (
                "proxy.keepalive_timeout",
                self.proxy.keepalive_timeout,
                year,
                "365d",
            ),
            ("proxy.body_timeout", self.proxy.body_timeout, year, "365d"),
        ] {
            if value.0 > max {
                return Err(error(
                    key,
                    format!("{value} is too long; allowed up to {max_text}"),
                ));
            }
        }
        for (key, value) in [
            ("proxy.connect_timeout", self.proxy.connect_timeout),
            ("proxy.read_timeout", self.proxy.read_timeout),
            ("proxy.write_timeout", self.proxy.write_timeout),
            ("proxy.lease_ttl", self.proxy.lease_ttl),
            ("ephemeral.min_ttl", self.ephemeral.min_ttl),
            ("ephemeral.default_ttl", self.ephemeral.default_ttl),
            ("ephemeral.max_ttl", self.ephemeral.max_ttl),
            ("ephemeral.gc_interval", self.ephemeral.gc_interval),
            ("idle.timeout", self.idle.timeout),
            ("idle.check_interval", self.idle.check_interval),
            ("wake.timeout", self.wake.timeout),
            ("runtime.start_timeout", self.runtime.start_timeout),
            ("proxy.queue_timeout", self.proxy.queue_timeout),
            ("proxy.header_timeout", self.proxy.header_timeout),
            ("proxy.keepalive_timeout", self.proxy.keepalive_timeout),
            ("proxy.body_timeout", self.proxy.body_timeout),
        ] {
            if value.0.is_zero() {
                return Err(error(key, "must be longer than 0s"));
            }
        }
        for (key, value, min, max) in [
            (
                "proxy.max_header_bytes",
                self.proxy.max_header_bytes,
                1_024,
                1_048_576,
            ),
            (
                "proxy.max_target_bytes",
                self.proxy.max_target_bytes,
                64,
                1_048_576,
            ),
            (
                "proxy.max_connections",
                self.proxy.max_connections,
                0,
                10_000_000,
            ),
            (
                "runtime.max_conns_per_instance",
                self.runtime.max_conns_per_instance,
                0,
                1_000_000,
            ),
        ] {
            if value < min || value > max {
                return Err(error(
                    key,
                    format!("{value} is out of range; allowed {min} to {max}"),
                ));
            }
        }
        if self.proxy.max_target_bytes >= self.proxy.max_header_bytes {
            return Err(error(
                "proxy.max_target_bytes",
                format!(
                    "{} is not below proxy.max_header_bytes ({}); the target is part of the header block",
                    self.proxy.max_target_bytes, self.proxy.max_header_bytes
                ),
            ));
        }
        for (i, path) in self.wake.ignore_paths.iter().enumerate() {
            if !path.starts_with('/') || path.len() > 1024 {
                return Err(error(
                    format!("wake.ignore_paths[{i}]"),
                    format!("{path:?} is not a path; write it from its leading '/', for example \"/healthz\" or \"/internal/*\" for a prefix (at most 1024 characters)"),
                ));
            }
        }
        for (i, agent) in self.wake.ignore_user_agents.iter().enumerate() {
            if agent.trim().is_empty() || agent.len() > 256 {
                return Err(error(
                    format!("wake.ignore_user_agents[{i}]"),
                    "must be a non-empty user-agent substring of at most 256 characters",
                ));
            }
        }
        if self.wake.failure_backoff > self.wake.failure_backoff_max {
            return Err(error(
                "wake.failure_backoff",
                format!(
                    "{} is longer than wake.failure_backoff_max ({}); it must be at most the maximum",
                    self.wake.failure_backoff, self.wake.failure_backoff_max
                ),
            ));
        }
        if self.ephemeral.min_ttl > self.ephemeral.default_ttl {
            return Err(error(
                "ephemeral.min_ttl",
                format!(
                    "{} is longer than ephemeral.default_ttl ({}); it must be at most default_ttl (min_ttl <= default_ttl <= max_ttl)",
                    self.ephemeral.min_ttl, self.ephemeral.default_ttl
                ),
            ));
        }
        if self.ephemeral.default_ttl > self.ephemeral.max_ttl {
            return Err(error(
                "ephemeral.default_ttl",
                format!(
                    "{} is longer than ephemeral.max_ttl ({}); it must be at most max_ttl",
                    self.ephemeral.default_ttl, self.ephemeral.max_ttl
                ),
            ));
        }
        self.validate_tls()?;
        self.validate_process()?;
        self.validate_node(&env)?;
        let mut listeners = vec![
            ("proxy.listen", self.proxy.listen),
            ("admin.grpc_listen", self.admin.grpc_listen),
            ("admin.http_listen", self.admin.http_listen),
        ];
        if let Some(tls) = &self.tls {
            listeners.push(("tls.listen", tls.listen));
        }
        for (i, (key, addr)) in listeners.iter().enumerate() {
            if let Some((other, _)) = listeners[..i].iter().find(|(_, a)| a == addr) {
                return Err(error(
                    *key,
                    format!("{addr} is also {other}; each listener needs its own address"),
                ));
            }
        }
        self.resolve_tokens(env)
    }

    fn validate_node(&mut self, env: &impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        use crate::settings::NodeRole;
        if self.node.id.len() > 128
            || self
                .node
                .id
                .bytes()
                .any(|b| b.is_ascii_control() || b == b' ')
        {
            return Err(error(
                "node.id",
                "must be at most 128 characters without spaces or control characters",
            ));
        }
        let report = self.activity.report_interval.0;
        if report < Duration::from_millis(100) || report > Duration::from_secs(300) {
            return Err(error(
                "activity.report_interval",
                format!(
                    "{} is out of range; allowed 100ms to 5m",
                    self.activity.report_interval
                ),
            ));
        }
        let control = &mut self.control;
        if self.node.role != NodeRole::Proxy {
            if !control.endpoints.is_empty()
                || control.token.is_some()
                || control.token_env.is_some()
            {
                return Err(error(
                    "control",
                    "is only for node.role = \"proxy\" (a replica following a control node); remove the section or set the role",
                ));
            }
            return Ok(());
        }
        if self.tls.is_some() {
            return Err(error(
                "tls",
                "is not supported on node.role = \"proxy\" yet: certificates live on the control node; terminate TLS there or in front of the replica",
            ));
        }
        if control.endpoints.is_empty() {
            return Err(error(
                "control.endpoints",
                "is empty, but node.role = \"proxy\" needs the control node's gRPC address, for example [\"http://127.0.0.1:9090\"]",
            ));
        }
        for (i, endpoint) in control.endpoints.iter().enumerate() {
            let ok = endpoint.strip_prefix("http://").is_some_and(|rest| {
                rest.trim_end_matches('/')
                    .parse::<std::net::SocketAddr>()
                    .is_ok()
            });
            if !ok {
                return Err(error(
                    format!("control.endpoints[{i}]"),
                    format!("{endpoint:?} is not a gRPC address; write http://IP:PORT, for example http://127.0.0.1:9090"),
                ));
            }
        }
        let token = match (&control.token, &control.token_env) {
            (Some(token), None) => token.clone(),
            (None, Some(var)) => env(var).ok_or_else(|| {
                error("control.token_env", format!("environment variable {var} is not set"))
            })?,
            _ => {
                return Err(error(
                    "control",
                    "give exactly one of `token` and `token_env` (a token with role replica on the control node)",
                ))
            }
        };
        if token.len() < 16 {
            return Err(error("control.token", "is shorter than 16 characters"));
        }
        control.token = Some(token);
        Ok(())
    }

    /// `[runtime.process]`: a wildcard `bind` needs a concrete `advertise`, and
    /// `advertise` is an address one can connect to, of `bind`'s family when
    /// `bind` is a wildcard.
    fn validate_process(&self) -> Result<(), ConfigError> {
        let process = &self.runtime.process;
        let Some(advertise) = process.advertise else {
            if process.bind.is_unspecified() {
                return Err(error(
                    "runtime.process.advertise",
                    format!(
                        "is empty, but runtime.process.bind = \"{}\" listens on every interface and is no address to connect to; give the IP of this machine that proxies and replicas reach processes at, for example advertise = \"10.0.0.5\"",
                        process.bind
                    ),
                ));
            }
            return Ok(());
        };
        if advertise.is_unspecified() || advertise.is_multicast() {
            return Err(error(
                "runtime.process.advertise",
                format!(
                    "{advertise} is not an address to connect to; give a concrete unicast IP of this machine (for example 10.0.0.5), or \"\" for the bind IP"
                ),
            ));
        }
        if process.bind.is_unspecified() && process.bind.is_ipv4() != advertise.is_ipv4() {
            return Err(error(
                "runtime.process.advertise",
                format!(
                    "{advertise} is not of the family of runtime.process.bind = \"{}\"; give an {} address",
                    process.bind,
                    if process.bind.is_ipv4() { "IPv4" } else { "IPv6" }
                ),
            ));
        }
        Ok(())
    }

    fn validate_tls(&self) -> Result<(), ConfigError> {
        let Some(tls) = &self.tls else {
            return Ok(());
        };
        let default_cert = tls.default_cert.trim();
        if tls.unknown_sni == crate::settings::UnknownSni::Default && default_cert.is_empty() {
            return Err(error(
                "tls.default_cert",
                "is empty, but tls.unknown_sni = \"default\" needs it; name the certificate to serve (its `ingressctl cert list` NAME), or set unknown_sni = \"reject\"",
            ));
        }
        if default_cert != tls.default_cert
            || (!default_cert.is_empty() && !crate::is_cert_name(default_cert))
        {
            return Err(error(
                "tls.default_cert",
                format!(
                    "{:?} is not a certificate name; {}",
                    tls.default_cert,
                    crate::CERT_NAME_RULE
                ),
            ));
        }
        if let Some(problem) = hsts_problem(&tls.hsts) {
            return Err(error(
                "tls.hsts",
                format!("{:?} {problem}; write a Strict-Transport-Security value such as \"max-age=31536000\" (optionally \"; includeSubDomains\" and \"; preload\"), or leave it empty for none", tls.hsts),
            ));
        }
        if let Some(dir) = &tls.cert_dir {
            if dir.as_os_str().is_empty() {
                return Err(error(
                    "tls.cert_dir",
                    "is empty; give a directory of NAME.crt + NAME.key files (or NAME/fullchain.pem + NAME/privkey.pem), or leave the key out",
                ));
            }
        }
        let reload = tls.reload_interval.0;
        if reload != Duration::ZERO
            && (reload < Duration::from_secs(1) || reload > Duration::from_secs(86_400))
        {
            return Err(error(
                "tls.reload_interval",
                format!(
                    "{} is out of range; allowed 0s (no polling) or 1s to 1d",
                    tls.reload_interval
                ),
            ));
        }
        if tls.expiry_warning.0 > Duration::from_secs(365 * 86_400) {
            return Err(error(
                "tls.expiry_warning",
                format!("{} is out of range; allowed 0s to 365d", tls.expiry_warning),
            ));
        }
        Ok(())
    }

    fn resolve_tokens(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        let mut names = HashSet::new();
        let mut secrets = HashSet::new();
        for (i, token) in self.admin.tokens.iter_mut().enumerate() {
            let key = format!("admin.tokens[{i}]");
            if token.name.trim().is_empty() {
                return Err(error(format!("{key}.name"), "must not be empty"));
            }
            if !names.insert(token.name.clone()) {
                return Err(error(
                    format!("{key}.name"),
                    format!(
                        "{:?} is used by another token; names must be unique",
                        token.name
                    ),
                ));
            }
            let secret = match (&token.secret, &token.secret_env) {
                (Some(secret), None) => secret.clone(),
                (None, Some(var)) => env(var).ok_or_else(|| {
                    error(
                        format!("{key}.secret_env"),
                        format!("environment variable {var} is not set"),
                    )
                })?,
                _ => return Err(error(key, "give exactly one of `secret` and `secret_env`")),
            };
            if secret.len() < 16 {
                return Err(error(
                    format!("{key}.secret"),
                    "is shorter than 16 characters; use a long random secret",
                ));
            }
            if !secrets.insert(secret.clone()) {
                return Err(error(
                    format!("{key}.secret"),
                    "is the secret of another token; each token needs its own, or the audit log could name the wrong one",
                ));
            }
            token.secret = Some(secret);
        }
        Ok(())
    }
}

/// Why `value` is not an acceptable `Strict-Transport-Security` value, if it is not.
fn hsts_problem(value: &str) -> Option<&'static str> {
    if value.is_empty() {
        return None;
    }
    if value.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
        return Some("has control or non-ASCII characters");
    }
    let mut max_age = false;
    for directive in value.split(';').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if let Some(seconds) = lower.strip_prefix("max-age=") {
            if max_age
                || seconds.is_empty()
                || !seconds.bytes().all(|b| b.is_ascii_digit())
                || seconds.len() > 10
            {
                return Some("has a max-age that is not one number of seconds");
            }
            max_age = true;
        } else if lower != "includesubdomains" && lower != "preload" {
            return Some("has a directive other than max-age, includeSubDomains and preload");
        }
    }
    if !max_age {
        return Some("has no max-age");
    }
    None
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(text.len());
    while !text.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// A parser message on one line: its lines joined with "; ".
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::{TokenRole, WakeMode};

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, |name| {
            (name == "ADMIN_SECRET").then(|| "0123456789abcdef-from-env".to_string())
        })
    }

    fn error_of(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn an_empty_file_gives_the_spec_defaults() {
        let config = parse("").unwrap();
        assert_eq!(config, Config::default());
        assert_eq!(config.proxy.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.proxy.threads, 2);
        assert_eq!(config.admin.grpc_listen.to_string(), "127.0.0.1:9090");
        assert_eq!(config.admin.http_listen.to_string(), "127.0.0.1:9091");
        assert_eq!(config.ephemeral.min_ttl.0, Duration::from_secs(60));
        assert_eq!(config.ephemeral.default_ttl.0, Duration::from_secs(86_400));
        assert_eq!(config.ephemeral.max_ttl.0, Duration::from_secs(30 * 86_400));
        assert_eq!(config.ephemeral.max_per_app, 10);
        assert_eq!(config.ephemeral.gc_interval.0, Duration::from_secs(300));
        assert_eq!(config.idle.timeout.0, Duration::from_secs(3600));
        assert_eq!(config.idle.check_interval.0, Duration::from_secs(60));
        assert!(!config.idle.include_production);
        assert_eq!(config.supersede.grace.0, Duration::from_secs(60));
        assert_eq!(config.wake.timeout.0, Duration::from_secs(30));
        assert_eq!(config.wake.max_waiters, 1024);
        assert_eq!(config.wake.mode, WakeMode::Hold);
        assert_eq!(config.wake.ignore_paths, ["/healthz"]);
        assert_eq!(config.wake.ignore_user_agents, ["kube-probe", "Prometheus"]);
        assert_eq!(config.runtime.stop_grace.0, Duration::from_secs(10));
    }

    #[test]
    fn the_full_spec_example_parses() {
        let config = parse(
            r#"
[proxy]
listen = "127.0.0.1:8080"
threads = 2

[admin]
grpc_listen = "127.0.0.1:9090"
http_listen = "127.0.0.1:9091"
tokens = [{ name = "admin", secret = "a-long-enough-secret" }, { name = "ci", secret_env = "ADMIN_SECRET" }]

[store]
data_dir = "./data"

[ephemeral]
default_ttl = "24h"
max_ttl = "30d"
max_per_app = 10
gc_interval = "5m"

[idle]
timeout = "1h"
check_interval = "60s"
include_production = false

[supersede]
grace = "60s"

[wake]
timeout = "30s"
max_waiters = 1024
mode = "page"
ignore_paths = ["/healthz"]
ignore_user_agents = ["kube-probe", "Prometheus"]

[runtime]
stop_grace = "10s"
"#,
        )
        .unwrap();
        assert_eq!(config.wake.mode, WakeMode::Page);
        assert_eq!(config.admin.tokens.len(), 2);
        assert_eq!(
            config.admin.tokens[1].secret.as_deref(),
            Some("0123456789abcdef-from-env")
        );
    }

    #[test]
    fn the_committed_example_is_valid_and_holds_the_defaults() {
        let example = parse(include_str!("../example.toml")).unwrap();
        let mut expected = Config::default();
        expected.admin.tokens = example.admin.tokens.clone();
        // The example turns TLS on, with every key at its default.
        expected.tls = Some(crate::TlsSettings::default());
        assert_eq!(example, expected);
        assert_eq!(example.admin.tokens.len(), 1);
    }

    #[test]
    fn process_bind_defaults_to_loopback_and_advertise_to_bind() {
        let config = parse("").unwrap();
        assert_eq!(config.runtime.process.bind.to_string(), "127.0.0.1");
        assert_eq!(config.runtime.process.advertise, None);
        assert_eq!(config.runtime.process.advertised().to_string(), "127.0.0.1");
        let config = parse("[runtime.process]\nbind = \"127.0.0.2\"\nadvertise = \"\"").unwrap();
        assert_eq!(config.runtime.process.advertised().to_string(), "127.0.0.2");
        let config =
            parse("[runtime.process]\nbind = \"0.0.0.0\"\nadvertise = \"10.0.0.5\"").unwrap();
        assert_eq!(config.runtime.process.bind.to_string(), "0.0.0.0");
        assert_eq!(config.runtime.process.advertised().to_string(), "10.0.0.5");
        let config = parse("[runtime.process]\nbind = \"::\"\nadvertise = \"fd00::5\"").unwrap();
        assert_eq!(config.runtime.process.advertised().to_string(), "fd00::5");
        // A specific bind may advertise another address (a NAT in front).
        let config =
            parse("[runtime.process]\nbind = \"10.0.0.5\"\nadvertise = \"192.0.2.7\"").unwrap();
        assert_eq!(config.runtime.process.advertised().to_string(), "192.0.2.7");
    }

    #[test]
    fn process_bind_and_advertise_errors_name_the_key() {
        assert_eq!(
            error_of("[runtime.process]\nbind = \"localhost\""),
            "runtime.process.bind: \"localhost\" is not an IP address; write one without a port, for example 127.0.0.1, 10.0.0.5, 0.0.0.0 or ::1"
        );
        let e = error_of("[runtime.process]\nbind = \"127.0.0.1:3000\"");
        assert!(
            e.starts_with("runtime.process.bind: \"127.0.0.1:3000\" is not an IP address"),
            "{e}"
        );
        let e = error_of("[runtime.process]\nbind = \"0.0.0.0\"");
        assert!(
            e.starts_with("runtime.process.advertise: is empty, but runtime.process.bind = \"0.0.0.0\" listens on every interface"),
            "{e}"
        );
        let e = error_of("[runtime.process]\nbind = \"::\"");
        assert!(e.starts_with("runtime.process.advertise: is empty"), "{e}");
        let e = error_of("[runtime.process]\nbind = \"0.0.0.0\"\nadvertise = \"0.0.0.0\"");
        assert!(
            e.starts_with("runtime.process.advertise: 0.0.0.0 is not an address to connect to"),
            "{e}"
        );
        let e = error_of("[runtime.process]\nadvertise = \"::\"");
        assert!(
            e.starts_with("runtime.process.advertise: :: is not an address to connect to"),
            "{e}"
        );
        let e = error_of("[runtime.process]\nadvertise = \"edge-1.internal\"");
        assert!(
            e.starts_with("runtime.process.advertise: \"edge-1.internal\" is not an IP address"),
            "{e}"
        );
        let e = error_of("[runtime.process]\nbind = \"0.0.0.0\"\nadvertise = \"fd00::5\"");
        assert!(
            e.starts_with("runtime.process.advertise: fd00::5 is not of the family of runtime.process.bind = \"0.0.0.0\"; give an IPv4 address"),
            "{e}"
        );
        let e = error_of("[runtime.process]\nport = 3000");
        assert!(
            e.starts_with("runtime.process.port: unknown field `port`"),
            "{e}"
        );
    }

    #[test]
    fn a_bad_socket_address_names_the_key() {
        assert_eq!(
            error_of("[proxy]\nlisten = \"x:y\""),
            "proxy.listen: \"x:y\" is not a socket address; write IP:PORT, for example 127.0.0.1:8080 or [::1]:8080"
        );
    }

    #[test]
    fn unknown_keys_and_sections_are_errors() {
        let e = error_of("[proxy]\nlisten = \"127.0.0.1:1\"\nthreadz = 4");
        assert!(
            e.starts_with("proxy.threadz: unknown field `threadz`"),
            "{e}"
        );
        assert!(e.contains("threads"), "lists the allowed keys: {e}");
        let e = error_of("[proxies]\nthreads = 4");
        assert!(e.starts_with("proxies: unknown field `proxies`"), "{e}");
    }

    #[test]
    fn the_log_section() {
        let config = parse("").unwrap();
        assert_eq!(config.log.access, crate::AccessLog::Stdout);
        assert_eq!(config.log.access_format, crate::AccessFormat::Json);
        let config = parse(
            "[log]\naccess = \"/var/log/ingress/access.log\"\naccess_format = \"combined\"\nlevel = \"debug\"",
        )
        .unwrap();
        assert_eq!(
            config.log.access,
            crate::AccessLog::File("/var/log/ingress/access.log".into())
        );
        assert_eq!(config.log.access_format, crate::AccessFormat::Combined);
        assert_eq!(config.log.level, crate::LogLevel::Debug);
        assert_eq!(
            parse("[log]\naccess = \"off\"").unwrap().log.access,
            crate::AccessLog::Off
        );
        let e = error_of("[log]\naccess = \"\"");
        assert!(
            e.starts_with("log.access: must be \"stdout\", \"off\" or the path of a file"),
            "{e}"
        );
        let e = error_of("[log]\naccess_format = \"clf\"");
        assert!(
            e.starts_with("log.access_format: unknown variant `clf`"),
            "{e}"
        );
        assert!(e.contains("json") && e.contains("combined"), "{e}");
        assert_eq!(config.log.format, crate::LogFormat::Text);
        assert_eq!(
            parse("[log]\nformat = \"json\"").unwrap().log.format,
            crate::LogFormat::Json
        );
        let e = error_of("[log]\nformat = \"xml\"");
        assert!(e.starts_with("log.format: unknown variant `xml`"), "{e}");
        let e = error_of("[log]\nlevel = \"loud\"");
        assert!(e.starts_with("log.level: unknown variant `loud`"), "{e}");
        let e = error_of("[log]\naccess_buffer = 0");
        assert_eq!(
            e,
            "log.access_buffer: 0 is out of range; allowed 1 to 1000000"
        );
        let e = error_of("[log]\nacess = \"off\"");
        assert!(e.starts_with("log.acess: unknown field `acess`"), "{e}");
    }

    #[test]
    fn bad_values_name_the_key_and_the_rule() {
        let e = error_of("[ephemeral]\nmax_ttl = \"30 fortnights\"");
        assert!(
            e.starts_with("ephemeral.max_ttl: \"30 fortnights\" is not a duration"),
            "{e}"
        );
        let e = error_of("[wake]\nignore_paths = [\"healthz\"]");
        assert!(
            e.starts_with("wake.ignore_paths[0]: \"healthz\" is not a path"),
            "{e}"
        );
        let e = error_of("[wake]\nfailure_backoff = \"2m\"");
        assert!(
            e.starts_with("wake.failure_backoff: 2m is longer than wake.failure_backoff_max"),
            "{e}"
        );
        let e = error_of("[wake]\nmode = \"sleep\"");
        assert!(e.starts_with("wake.mode: unknown variant `sleep`"), "{e}");
        assert!(e.contains("hold") && e.contains("page"), "{e}");
        let e = error_of("[proxy]\nthreads = \"two\"");
        assert!(e.starts_with("proxy.threads: invalid type"), "{e}");
        let e = error_of("[proxy]\nthreads = 0");
        assert_eq!(e, "proxy.threads: 0 is out of range; allowed 1 to 1024");
        let e = error_of("[ephemeral]\ngc_interval = \"0s\"");
        assert_eq!(e, "ephemeral.gc_interval: must be longer than 0s");
        let e = error_of("[ephemeral]\ndefault_ttl = \"40d\"");
        assert!(
            e.starts_with("ephemeral.default_ttl: 40d is longer than"),
            "{e}"
        );
        let e = error_of("[ephemeral]\nmax_per_app = 0");
        assert_eq!(
            e,
            "ephemeral.max_per_app: 0 is out of range; allowed 1 to 1000"
        );
        let e = error_of("[proxy]\nlease_ttl = \"400000d\"");
        assert_eq!(e, "proxy.lease_ttl: 400000d is too long; allowed up to 1d");
        let e = error_of("[proxy]\nupstream_keepalive_pool_size = 100000000");
        assert_eq!(
            e,
            "proxy.upstream_keepalive_pool_size: 100000000 is out of range; allowed 1 to 65536"
        );
        let e = error_of("[idle]\ntimeout = \"1000d\"");
        assert_eq!(e, "idle.timeout: 1000d is too long; allowed up to 365d");
    }

    #[test]
    fn listeners_must_differ() {
        let e = error_of("[admin]\ngrpc_listen = \"127.0.0.1:8080\"");
        assert_eq!(
            e,
            "admin.grpc_listen: 127.0.0.1:8080 is also proxy.listen; each listener needs its own address"
        );
    }

    #[test]
    fn tokens_are_checked() {
        let e = error_of("[admin]\ntokens = [{ name = \"a\", secret_env = \"NOPE\" }]");
        assert_eq!(
            e,
            "admin.tokens[0].secret_env: environment variable NOPE is not set"
        );
        let e = error_of("[admin]\ntokens = [{ name = \"a\" }]");
        assert_eq!(
            e,
            "admin.tokens[0]: give exactly one of `secret` and `secret_env`"
        );
        let e = error_of("[admin]\ntokens = [{ name = \"a\", secret = \"short\" }]");
        assert!(
            e.starts_with("admin.tokens[0].secret: is shorter than 16"),
            "{e}"
        );
        let e = error_of(
            "[admin]\ntokens = [{ name = \"a\", secret = \"0123456789abcdef\" }, { name = \"a\", secret = \"0123456789abcdef\" }]",
        );
        assert!(e.starts_with("admin.tokens[1].name: \"a\" is used"), "{e}");
        let e = error_of(
            "[admin]\ntokens = [{ name = \"a\", secret = \"0123456789abcdef\" }, { name = \"b\", secret = \"0123456789abcdef\" }]",
        );
        assert!(
            e.starts_with("admin.tokens[1].secret: is the secret of another token"),
            "{e}"
        );
        let e = error_of(
            "[admin]\ntokens = [{ name = \"a\", secret = \"0123456789abcdef\", scope = \"x\" }]",
        );
        assert!(
            e.starts_with("admin.tokens[0].scope: unknown field `scope`"),
            "{e}"
        );
    }

    #[test]
    fn a_token_role_defaults_to_admin() {
        let config = parse(
            "[admin]\ntokens = [{ name = \"a\", secret = \"0123456789abcdef-a\" }, { name = \"r\", secret = \"0123456789abcdef-r\", role = \"read\" }, { name = \"p\", secret = \"0123456789abcdef-p\", role = \"replica\" }, { name = \"x\", secret = \"0123456789abcdef-x\", role = \"admin\" }]",
        )
        .unwrap();
        let roles: Vec<_> = config.admin.tokens.iter().map(|t| t.role).collect();
        assert_eq!(
            roles,
            [
                TokenRole::Admin,
                TokenRole::Read,
                TokenRole::Replica,
                TokenRole::Admin
            ]
        );
    }

    #[test]
    fn an_unknown_token_role_names_the_key_and_the_roles() {
        let e = error_of(
            "[admin]\ntokens = [{ name = \"a\", secret = \"0123456789abcdef-a\" }, { name = \"ci\", secret = \"0123456789abcdef-c\", role = \"writer\" }]",
        );
        assert!(
            e.starts_with("admin.tokens[1].role: \"writer\" is not a role; allowed: admin"),
            "{e}"
        );
        for role in ["admin", "read", "replica"] {
            assert!(e.contains(role), "lists {role}: {e}");
        }
        assert_eq!(e.lines().count(), 1, "{e}");
        // Roles are lower case, as written in the docs.
        let e = error_of(
            "[admin]\ntokens = [{ name = \"a\", secret = \"0123456789abcdef-a\", role = \"Read\" }]",
        );
        assert!(
            e.starts_with("admin.tokens[0].role: \"Read\" is not a role"),
            "{e}"
        );
        let e = error_of(
            "[admin]\ntokens = [{ name = \"a\", secret = \"0123456789abcdef-a\", role = 1 }]",
        );
        assert!(e.starts_with("admin.tokens[0].role: invalid type"), "{e}");
        assert!(e.contains("read"), "{e}");
    }

    #[test]
    fn a_syntax_error_names_its_line_and_column_on_one_line() {
        let e = error_of("[proxy\nlisten=");
        assert!(e.starts_with("line 1, column 7: "), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        let e = error_of("[proxy]\nthreads = 2\nlisten = = \"127.0.0.1:1\"\n");
        assert!(e.starts_with("line 3, column 10: "), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
        // Columns count characters, not bytes.
        let e = error_of("# é\n[wake]\nignore_paths = [\"/é\" \"/x\"]\n");
        assert!(e.starts_with("line 3, column 22: "), "{e}");
    }

    #[test]
    fn a_syntax_error_in_a_file_names_the_file_line_and_column() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, "[proxy]\nthreads = 2\nlisten 127.0.0.1\n").unwrap();
        let e = Config::load(&path).unwrap_err().to_string();
        let prefix = format!("{}: line 3, column 8: ", path.display());
        assert!(e.starts_with(&prefix), "{e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }

    #[test]
    fn line_and_column_of_an_offset() {
        assert_eq!(line_column("", 0), (1, 1));
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
        assert_eq!(line_column("ab\n", 3), (2, 1));
        assert_eq!(line_column("é", 1), (1, 1));
        assert_eq!(line_column("ab", 99), (1, 3));
    }

    #[test]
    fn an_empty_data_dir_is_refused() {
        let e = error_of("[store]\ndata_dir = \"\"");
        assert!(e.starts_with("store.data_dir: must not be empty"), "{e}");
        let e = error_of("[store]\ndata_dir = \"  \"");
        assert!(e.starts_with("store.data_dir: must not be empty"), "{e}");
    }

    #[test]
    fn min_ttl_defaults_to_a_minute_and_stays_below_default_ttl() {
        assert_eq!(
            parse("").unwrap().ephemeral.min_ttl.0,
            Duration::from_secs(60)
        );
        let e = error_of("[ephemeral]\nmin_ttl = \"2d\"");
        assert_eq!(
            e,
            "ephemeral.min_ttl: 2d is longer than ephemeral.default_ttl (1d); it must be at most default_ttl (min_ttl <= default_ttl <= max_ttl)"
        );
        let e = error_of("[ephemeral]\nmin_ttl = \"0s\"");
        assert_eq!(e, "ephemeral.min_ttl: must be longer than 0s");
        let config = parse("[ephemeral]\nmin_ttl = \"1s\"\ndefault_ttl = \"1s\"").unwrap();
        assert_eq!(config.ephemeral.min_ttl.0, Duration::from_secs(1));
    }

    #[test]
    fn a_missing_file_names_the_file() {
        let e = Config::load(Path::new("/nonexistent/ingress.toml")).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("/nonexistent/ingress.toml: cannot read"),
            "{e}"
        );
    }

    #[test]
    fn tls_is_off_without_its_section_and_defaults_with_it() {
        let config = parse("").unwrap();
        assert!(config.tls.is_none());
        assert!(!config.proxy.h2c);
        let tls = parse("[tls]").unwrap().tls.unwrap();
        assert_eq!(tls.listen.to_string(), "127.0.0.1:8443");
        assert!(tls.h2 && tls.redirect_http && tls.hsts.is_empty() && tls.cert_dir.is_none());
        assert_eq!(tls.unknown_sni, crate::UnknownSni::Reject);
        assert_eq!(tls.misdirected, crate::Misdirected::Reject);
        assert_eq!(tls.expiry_warning.0, Duration::from_secs(21 * 86_400));
        let tls = parse("[tls]\nunknown_sni = \"default\"\ndefault_cert = \"fallback\"\nhsts = \"max-age=31536000; includeSubDomains\"\nmisdirected = \"allow\"\nreload_interval = \"0s\"")
            .unwrap()
            .tls
            .unwrap();
        assert_eq!(tls.unknown_sni, crate::UnknownSni::Default);
        assert_eq!(tls.default_cert, "fallback");
    }

    #[test]
    fn tls_errors_name_the_key() {
        for (text, expected) in [
            (
                "[proxy]\nlisten = \"127.0.0.1:8443\"\n[tls]",
                "tls.listen: 127.0.0.1:8443 is also proxy.listen",
            ),
            (
                "[tls]\nunknown_sni = \"default\"",
                "tls.default_cert: is empty, but tls.unknown_sni = \"default\" needs it",
            ),
            (
                "[tls]\ndefault_cert = \"Bad Name\"",
                "tls.default_cert: \"Bad Name\" is not a certificate name",
            ),
            (
                "[tls]\nunknown_sni = \"maybe\"",
                "tls.unknown_sni: unknown variant `maybe`",
            ),
            (
                "[tls]\nhsts = \"max-age=abc\"",
                "tls.hsts: \"max-age=abc\" has a max-age that is not one number",
            ),
            (
                "[tls]\nhsts = \"preload\"",
                "tls.hsts: \"preload\" has no max-age",
            ),
            (
                "[tls]\nhsts = \"max-age=1; nosuch\"",
                "tls.hsts: \"max-age=1; nosuch\" has a directive other than",
            ),
            (
                "[tls]\nreload_interval = \"10ms\"",
                "tls.reload_interval: 10ms is out of range",
            ),
            ("[tls]\ncert_dir = \"\"", "tls.cert_dir: is empty"),
            ("[tls]\nport = 443", "tls.port: unknown field `port`"),
        ] {
            let e = error_of(text);
            assert!(e.starts_with(expected), "{text}: {e}");
        }
    }
}

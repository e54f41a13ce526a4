//! SIGHUP: the config file is read again, and what can change while the
//! ingress serves changes at once:
//! - `log.level` (unless `RUST_LOG` was set at start: it wins);
//! - the proxy's timeouts and request limits (`proxy.connect_timeout`,
//!   `read_timeout`, `write_timeout`, `upstream_idle_timeout`,
//!   `queue_timeout`, `header_timeout`, `keepalive_timeout`, `body_timeout`,
//!   `max_header_bytes`, `max_headers`, `max_target_bytes`);
//! - the `[wake]` request rules (`wake.timeout` for held requests,
//!   `max_waiters`, `mode`, `ignore_paths`, `ignore_user_agents`);
//! - `admin.tokens` (calls already admitted go on).
//!
//! Each reaches the request path as one new options value swapped in whole
//! (`ArcSwap`): a request reads it with one atomic load, and never sees half a
//! reload. Everything else (listeners, store, node role, `[tls]`, the control
//! plane's loops and limits...) is left as it runs, and a changed key is
//! logged as needing a restart (or `ingress --upgrade`). A file that does not
//! load is refused with one log line naming the key at fault, and nothing
//! changes. Certificates of `tls.cert_dir` are reloaded on SIGHUP by the
//! control plane's certificate loop, right after this.

use std::path::PathBuf;
use std::sync::{Mutex, OnceLock};

use ingress_config::{Config, LogFormat, LogLevel};
use ingress_control_api::grpc::{Authenticator, Token};
use ingress_proxy::LiveOptions;

/// What a new config file changes, by dotted key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Applied while serving.
    pub live: Vec<&'static str>,
    /// Left as they run: they need a restart.
    pub restart: Vec<&'static str>,
}

/// Pushes the name of each `section.field` that differs between two configs.
macro_rules! differing {
    ($prefix:literal, $old:expr, $new:expr, $out:expr, $($($field:ident).+),+ $(,)?) => {{
        $(
            if $old.$($field).+ != $new.$($field).+ {
                $out.push(concat!($prefix, stringify!($($field).+)));
            }
        )+
    }};
    ($old:expr, $new:expr, $out:expr, $($($field:ident).+),+ $(,)?) => {
        $(
            if $old.$($field).+ != $new.$($field).+ {
                $out.push(stringify!($($field).+));
            }
        )+
    };
}

/// The keys that differ between the running config and `new`, split into
/// those a reload applies and those that need a restart.
pub fn changes(running: &Config, new: &Config) -> Changes {
    let mut changes = Changes::default();
    live_keys(running, new, &mut changes.live);
    let (old, new) = (running, new);
    let out = &mut changes.restart;
    differing!(
        old,
        new,
        out,
        proxy.listen,
        proxy.threads,
        proxy.work_stealing,
        proxy.upstream_keepalive_pool_size,
        proxy.lease_ttl,
        proxy.lease_cache_capacity,
        proxy.max_connections,
        proxy.fast_path,
        proxy.h2c,
        admin.grpc_listen,
        admin.http_listen,
        store.data_dir,
        ephemeral.min_ttl,
        ephemeral.default_ttl,
        ephemeral.max_ttl,
        ephemeral.max_per_app,
        ephemeral.gc_interval,
        ephemeral.tombstone_ttl,
        idle.timeout,
        idle.check_interval,
        idle.include_production,
        supersede.grace,
        wake.failure_backoff,
        wake.failure_backoff_max,
        runtime.stop_grace,
        runtime.drain_timeout,
        runtime.start_timeout,
        runtime.max_conns_per_instance,
        runtime.process.bind,
        runtime.process.advertise,
        node.role,
        node.id,
        control.endpoints,
        control.token,
        activity.report_interval,
        log.access,
        log.access_format,
        log.access_buffer,
        log.format,
    );
    match (&old.tls, &new.tls) {
        (Some(old), Some(new)) => differing!(
            "tls.",
            old,
            new,
            out,
            listen,
            h2,
            cert_dir,
            reload_interval,
            unknown_sni,
            default_cert,
            redirect_http,
            hsts,
            misdirected,
            expiry_warning,
        ),
        (None, None) => {}
        _ => out.push("tls"),
    }
    changes
}

/// The keys a reload applies that differ.
fn live_keys(old: &Config, new: &Config, out: &mut Vec<&'static str>) {
    differing!(
        old,
        new,
        out,
        log.level,
        proxy.connect_timeout,
        proxy.read_timeout,
        proxy.write_timeout,
        proxy.upstream_idle_timeout,
        proxy.queue_timeout,
        proxy.header_timeout,
        proxy.keepalive_timeout,
        proxy.body_timeout,
        proxy.max_header_bytes,
        proxy.max_headers,
        proxy.max_target_bytes,
        wake.timeout,
        wake.max_waiters,
        wake.mode,
        wake.ignore_paths,
        wake.ignore_user_agents,
        admin.tokens,
    );
}

/// `running` with the settings a reload applies taken from `new`; the rest
/// stays as it runs.
pub fn take_live(running: &Config, new: &Config) -> Config {
    let mut next = running.clone();
    next.log.level = new.log.level;
    let (p, n) = (&mut next.proxy, &new.proxy);
    p.connect_timeout = n.connect_timeout;
    p.read_timeout = n.read_timeout;
    p.write_timeout = n.write_timeout;
    p.upstream_idle_timeout = n.upstream_idle_timeout;
    p.queue_timeout = n.queue_timeout;
    p.header_timeout = n.header_timeout;
    p.keepalive_timeout = n.keepalive_timeout;
    p.body_timeout = n.body_timeout;
    p.max_header_bytes = n.max_header_bytes;
    p.max_headers = n.max_headers;
    p.max_target_bytes = n.max_target_bytes;
    let (w, n) = (&mut next.wake, &new.wake);
    w.timeout = n.timeout;
    w.max_waiters = n.max_waiters;
    w.mode = n.mode;
    w.ignore_paths = n.ignore_paths.clone();
    w.ignore_user_agents = n.ignore_user_agents.clone();
    next.admin.tokens = new.admin.tokens.clone();
    next
}

/// The admin API's tokens of `config` (the config check set every secret).
pub fn admin_tokens(config: &Config) -> Vec<Token> {
    config
        .admin
        .tokens
        .iter()
        .filter_map(|t| {
            t.secret.clone().map(|secret| Token {
                name: t.name.clone(),
                secret,
                role: t.role,
            })
        })
        .collect()
}

/// The `log` crate's filter for `level`.
pub fn level_filter(level: LogLevel) -> log::LevelFilter {
    match level {
        LogLevel::Off => log::LevelFilter::Off,
        LogLevel::Error => log::LevelFilter::Error,
        LogLevel::Warn => log::LevelFilter::Warn,
        LogLevel::Info => log::LevelFilter::Info,
        LogLevel::Debug => log::LevelFilter::Debug,
        LogLevel::Trace => log::LevelFilter::Trace,
    }
}

/// Sets the diagnostic log's level at run time; set once the log is started
/// from `log.level` (not while `RUST_LOG` decides).
static SET_LEVEL: OnceLock<Box<dyn Fn(LogLevel) + Send + Sync>> = OnceLock::new();

/// Starts the diagnostic log on stderr, through `tracing-subscriber`: at
/// `log.level`, which a reload may change, or by `RUST_LOG` when set (with
/// its per-target directives such as `pingora_core=warn`; `log.level` is then
/// not used), as text or JSON lines (`log.format`). `log` records, the
/// project's and Pingora's, are bridged in. Returns whether `RUST_LOG` decides.
pub fn init_logging(config: &Config) -> Result<bool, String> {
    use tracing_subscriber::EnvFilter;
    let from_env = match std::env::var("RUST_LOG") {
        Ok(spec) if !spec.trim().is_empty() => {
            Some(EnvFilter::try_new(&spec).map_err(|e| format!("RUST_LOG {spec:?}: {e}"))?)
        }
        _ => None,
    };
    let by_env = from_env.is_some();
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(config.log.level.as_str()));
    // The two formats are two types; each keeps a handle to swap its filter.
    let set_level: Box<dyn Fn(LogLevel) + Send + Sync> = match config.log.format {
        LogFormat::Text => {
            let builder = tracing_subscriber::fmt()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder
                .try_init()
                .map_err(|e| format!("cannot set up logging: {e}"))?;
            Box::new(move |level| {
                let _ = handle.reload(EnvFilter::new(level.as_str()));
            })
        }
        LogFormat::Json => {
            let builder = tracing_subscriber::fmt()
                .json()
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .with_filter_reloading();
            let handle = builder.reload_handle();
            builder
                .try_init()
                .map_err(|e| format!("cannot set up logging: {e}"))?;
            Box::new(move |level| {
                let _ = handle.reload(EnvFilter::new(level.as_str()));
            })
        }
    };
    if !by_env {
        let _ = SET_LEVEL.set(set_level);
    }
    Ok(by_env)
}

/// Applies a new `log.level`: the subscriber's filter and the `log` crate's
/// maximum (which `log` macros check before anything else).
fn set_log_level(level: LogLevel) {
    log::set_max_level(level_filter(level));
    if let Some(set) = SET_LEVEL.get() {
        set(level);
    }
}

/// Reloads the config file on SIGHUP and applies what can change live.
pub struct Reloader {
    path: PathBuf,
    /// The settings in effect: the start's, with every live change applied.
    running: Mutex<Config>,
    proxy: LiveOptions,
    /// The admin API's token check (none on a replica).
    authenticator: Option<Authenticator>,
    /// `RUST_LOG` set at start: `log.level` is not used.
    log_from_env: bool,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        running: Config,
        proxy: LiveOptions,
        authenticator: Option<Authenticator>,
        log_from_env: bool,
    ) -> Reloader {
        Reloader {
            path,
            running: Mutex::new(running),
            proxy,
            authenticator,
            log_from_env,
        }
    }

    /// Reads the file again and applies what changed; logs the outcome in one
    /// line (plus one for keys that need a restart). Returns the changes, or
    /// why the file was refused.
    pub fn reload(&self) -> Result<Changes, String> {
        let new = match Config::load(&self.path) {
            Ok(new) => new,
            Err(e) => {
                let why = e.to_string().replace('\n', " ");
                log::error!(
                    "SIGHUP: config {} refused, the running settings stay: {why}",
                    self.path.display()
                );
                return Err(why);
            }
        };
        let mut running = self
            .running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let changes = changes(&running, &new);
        let next = take_live(&running, &new);
        self.proxy.apply(&next);
        if let Some(authenticator) = &self.authenticator {
            authenticator.replace(admin_tokens(&next));
        }
        if next.log.level != running.log.level {
            if self.log_from_env {
                log::warn!("SIGHUP: log.level is not used while RUST_LOG is set");
            } else {
                set_log_level(next.log.level);
            }
        }
        *running = next;
        if changes.live.is_empty() {
            log::info!(
                "SIGHUP: config {} reloaded: nothing that applies live changed",
                self.path.display()
            );
        } else {
            log::info!(
                "SIGHUP: config {} reloaded: {} applied",
                self.path.display(),
                changes.live.join(", ")
            );
        }
        if !changes.restart.is_empty() {
            log::warn!(
                "SIGHUP: {} changed but needs a restart (or `ingress --upgrade`); the running value stays",
                changes.restart.join(", ")
            );
        }
        Ok(changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingress_config::ConfigDuration;
    use std::time::Duration;

    fn parse(text: &str) -> Config {
        Config::parse(text, |_| None).expect("valid config")
    }

    #[test]
    fn nothing_changed_is_no_change() {
        let config = parse("[proxy]\nlisten = \"127.0.0.1:8080\"\n");
        assert_eq!(changes(&config, &config.clone()), Changes::default());
    }

    #[test]
    fn live_keys_are_applied_and_named() {
        let old = parse("");
        let new = parse(
            "[log]\nlevel = \"debug\"\n[proxy]\nread_timeout = \"5s\"\nkeepalive_timeout = \"3s\"\nmax_headers = 50\n[wake]\ntimeout = \"3s\"\nignore_paths = [\"/ping\"]\n[admin]\ntokens = [{ name = \"ops\", secret = \"0123456789abcdef-ops\" }]\n",
        );
        let found = changes(&old, &new);
        assert_eq!(
            found.live,
            vec![
                "log.level",
                "proxy.read_timeout",
                "proxy.keepalive_timeout",
                "proxy.max_headers",
                "wake.timeout",
                "wake.ignore_paths",
                "admin.tokens"
            ]
        );
        assert!(found.restart.is_empty(), "{:?}", found.restart);
        let next = take_live(&old, &new);
        assert_eq!(next, new, "every live key taken");
    }

    #[test]
    fn keys_that_need_a_restart_are_named_and_keep_their_running_value() {
        let old = parse("[proxy]\nlisten = \"127.0.0.1:8080\"\n");
        let new = parse(
            "[proxy]\nlisten = \"127.0.0.1:8081\"\nthreads = 4\nfast_path = false\nread_timeout = \"9s\"\n[store]\ndata_dir = \"/elsewhere\"\n[node]\nrole = \"control\"\n[idle]\ntimeout = \"5m\"\n[tls]\nlisten = \"127.0.0.1:8443\"\n",
        );
        let found = changes(&old, &new);
        assert_eq!(found.live, vec!["proxy.read_timeout"]);
        assert_eq!(
            found.restart,
            vec![
                "proxy.listen",
                "proxy.threads",
                "proxy.fast_path",
                "store.data_dir",
                "idle.timeout",
                "node.role",
                "tls"
            ]
        );
        let next = take_live(&old, &new);
        assert_eq!(next.proxy.listen, old.proxy.listen);
        assert_eq!(next.proxy.threads, old.proxy.threads);
        assert!(next.proxy.fast_path);
        assert_eq!(next.store.data_dir, old.store.data_dir);
        assert_eq!(next.node.role, old.node.role);
        assert_eq!(next.idle.timeout, old.idle.timeout);
        assert!(next.tls.is_none());
        assert_eq!(
            next.proxy.read_timeout,
            ConfigDuration(Duration::from_secs(9))
        );
        // Applied once, the same file changes nothing live any more, and
        // still names what needs a restart.
        let again = changes(&next, &new);
        assert!(again.live.is_empty());
        assert_eq!(again.restart, found.restart);
    }

    #[test]
    fn the_access_log_and_log_format_need_a_restart_the_level_does_not() {
        let old = parse("");
        let new = parse(
            "[log]\naccess = \"off\"\naccess_format = \"combined\"\naccess_buffer = 8\nformat = \"json\"\nlevel = \"debug\"\n",
        );
        let found = changes(&old, &new);
        assert_eq!(found.live, vec!["log.level"]);
        assert_eq!(
            found.restart,
            vec![
                "log.access",
                "log.access_format",
                "log.access_buffer",
                "log.format"
            ]
        );
    }

    #[test]
    fn tls_keys_are_named_one_by_one() {
        let old = parse("[tls]\nlisten = \"127.0.0.1:8443\"\n");
        let new = parse("[tls]\nlisten = \"127.0.0.1:8443\"\nhsts = \"max-age=60\"\n");
        assert_eq!(changes(&old, &new).restart, vec!["tls.hsts"]);
    }

    #[test]
    fn only_live_keys_differ_after_taking_them() {
        // Whatever differs after take_live must be named as needing a
        // restart: no key is silently dropped.
        let old = parse("");
        let new = parse(
            "[proxy]\nconnect_timeout = \"1s\"\nqueue_timeout = \"1s\"\n[wake]\nmode = \"page\"\nmax_waiters = 3\nfailure_backoff = \"1s\"\n[runtime]\nstop_grace = \"1s\"\n",
        );
        let found = changes(&old, &new);
        assert_eq!(
            found.restart,
            vec!["wake.failure_backoff", "runtime.stop_grace"]
        );
        let mut next = take_live(&old, &new);
        next.wake.failure_backoff = new.wake.failure_backoff;
        next.runtime.stop_grace = new.runtime.stop_grace;
        assert_eq!(next, new);
    }
}

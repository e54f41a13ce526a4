//! Certificates for the TLS listener, on the control side: the ones added
//! through the admin API (kept in the store, with their keys) and the files of
//! `tls.cert_dir`, checked, merged (an API certificate wins over a `cert_dir` one
//! of the same name) and published whole to the proxy's [`CertStore`] at start,
//! after every add, remove and reload, when polling sees `cert_dir` change, and
//! on SIGHUP. Private keys go into the store and the proxy's store only: no
//! reply, log line or audit entry carries one.

pub mod dir;
pub mod view;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use ingress_config::{Config, UnknownSni};
use ingress_proxy::tls::{format_unix, CertSource, CertStatus, CertStore, Certificate, Reason};

use crate::control_plane::{ControlError, ControlPlane, ErrorKind};
use crate::model::{CertRecord, Mutation};

pub use dir::{DirCert, Refused, MAX_PEM_BYTES};
pub use view::{CertView, CheckView, Cover};

/// The `[tls]` settings the certificate manager follows.
#[derive(Debug, Clone, Default)]
pub struct CertSettings {
    /// Whether `[tls]` is configured (a TLS listener runs).
    pub configured: bool,
    /// The TLS listener's port, for `https://` URLs.
    pub port: u16,
    pub cert_dir: Option<PathBuf>,
    /// How often `cert_dir` is polled for changes; zero = never.
    pub reload_interval: Duration,
    /// Certificates expiring within this are `expiring`.
    pub expiry_warning: Duration,
    /// `tls.default_cert`, when `unknown_sni = "default"`: `cert remove` refuses it.
    pub default_cert: Option<String>,
}

impl CertSettings {
    /// The settings of `config`'s `[tls]` section (none: not configured).
    pub fn from_config(config: &Config) -> CertSettings {
        match &config.tls {
            Some(tls) => CertSettings {
                configured: true,
                port: tls.listen.port(),
                cert_dir: tls.cert_dir.clone(),
                reload_interval: tls.reload_interval.0,
                expiry_warning: tls.expiry_warning.0,
                default_cert: (tls.unknown_sni == UnknownSni::Default
                    && !tls.default_cert.is_empty())
                .then(|| tls.default_cert.clone()),
            },
            None => CertSettings {
                expiry_warning: Duration::from_secs(21 * 86_400),
                ..CertSettings::default()
            },
        }
    }
}

/// What `cert add` asks for.
#[derive(Clone)]
pub struct CertAdd {
    /// The PEM chain, leaf first.
    pub chain_pem: Vec<u8>,
    /// The PEM private key.
    pub key_pem: Vec<u8>,
    /// Its name; default [`default_name`] of the leaf's names.
    pub name: Option<String>,
    /// Accept an expired certificate.
    pub force: bool,
}

impl std::fmt::Debug for CertAdd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAdd")
            .field("name", &self.name)
            .field("force", &self.force)
            .finish_non_exhaustive()
    }
}

/// What a reload of `tls.cert_dir` loaded and skipped.
#[derive(Debug, Clone, Default)]
pub struct ReloadReport {
    /// The `cert_dir` certificates now loaded (also those a same-name API
    /// certificate shadows), by name.
    pub loaded: Vec<CertView>,
    pub refused: Vec<Refused>,
}

/// The name a certificate gets when `cert add` is given none: the leaf's first
/// DNS name, with a leading `*.` written `wildcard.` (`*.shop.example.com` →
/// `wildcard.shop.example.com`), since names are also file names in
/// `tls.cert_dir`.
pub fn default_name(names: &[String]) -> Option<String> {
    let first = names.first()?;
    Some(match first.strip_prefix("*.") {
        Some(parent) => format!("wildcard.{parent}"),
        None => first.clone(),
    })
}

struct Loaded {
    /// Added through the API, by name.
    api: BTreeMap<String, Arc<Certificate>>,
    /// From `tls.cert_dir`, by name.
    dir: BTreeMap<String, DirCert>,
    /// `cert_dir` as last scanned.
    stamp: dir::Stamp,
    /// The next time (Unix seconds) a loaded certificate becomes valid or
    /// expires, which can change which one serves a name: published again then.
    next_boundary: i64,
}

/// The certificate manager: the control side of the TLS listener's certificates.
pub struct Certs {
    plane: Arc<ControlPlane>,
    store: Arc<CertStore>,
    settings: CertSettings,
    loaded: Mutex<Loaded>,
}

impl std::fmt::Debug for Certs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certs")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

fn refuse(kind: ErrorKind, message: impl Into<String>) -> ControlError {
    ControlError {
        kind,
        message: message.into(),
    }
}

impl Certs {
    /// Loads the stored certificates and `tls.cert_dir`, publishes them to
    /// `store`, and logs what is wrong: files skipped, certificates expired or
    /// expiring, none at all while `[tls]` is configured. When `[tls]` is
    /// configured, the plane's URLs become `https://` for covered hosts.
    pub fn open(
        plane: Arc<ControlPlane>,
        store: Arc<CertStore>,
        settings: CertSettings,
    ) -> Arc<Certs> {
        let mut api = BTreeMap::new();
        for record in plane.stored_certificates() {
            match Certificate::from_pem(
                &record.name,
                CertSource::Api,
                record.chain_pem.as_bytes(),
                record.key_pem.as_bytes(),
            ) {
                Ok(cert) => {
                    api.insert(record.name.clone(), Arc::new(cert));
                }
                Err(e) => log::error!(
                    "stored certificate {} cannot be used and is not served: {e}; `ingressctl cert add` it again",
                    record.name
                ),
            }
        }
        if settings.configured {
            plane.serve_https_urls(Arc::clone(&store), settings.port);
        }
        let certs = Arc::new(Certs {
            plane,
            store,
            settings,
            loaded: Mutex::new(Loaded {
                api,
                dir: BTreeMap::new(),
                stamp: dir::Stamp::new(),
                next_boundary: i64::MAX,
            }),
        });
        {
            let mut loaded = certs.lock();
            let refused = certs.rescan(&mut loaded);
            log_refused(&refused);
            certs.publish(&mut loaded);
        }
        certs.warn_at_start();
        certs
    }

    fn lock(&self) -> MutexGuard<'_, Loaded> {
        self.loaded
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The settings it follows.
    pub fn settings(&self) -> &CertSettings {
        &self.settings
    }

    fn now_secs(&self) -> i64 {
        i64::try_from(self.plane.now_ms() / 1000).unwrap_or(i64::MAX)
    }

    fn warning_secs(&self) -> i64 {
        i64::try_from(self.settings.expiry_warning.as_secs()).unwrap_or(i64::MAX)
    }

    /// Rescans `cert_dir` into `loaded`; returns what it skipped.
    fn rescan(&self, loaded: &mut Loaded) -> Vec<Refused> {
        let Some(cert_dir) = &self.settings.cert_dir else {
            return Vec::new();
        };
        loaded.stamp = dir::stamp(cert_dir);
        let scan = dir::scan(cert_dir);
        loaded.dir = scan.certs;
        scan.refused
    }

    /// Publishes the API certificates and the `cert_dir` ones no API
    /// certificate of the same name shadows.
    fn publish(&self, loaded: &mut Loaded) {
        let mut all: Vec<Arc<Certificate>> = loaded.api.values().cloned().collect();
        all.extend(
            loaded
                .dir
                .iter()
                .filter(|(name, _)| !loaded.api.contains_key(*name))
                .map(|(_, dir)| Arc::clone(&dir.cert)),
        );
        let now = self.now_secs();
        loaded.next_boundary = all
            .iter()
            .flat_map(|c| [c.not_before, c.not_after])
            .filter(|at| *at > now)
            .min()
            .unwrap_or(i64::MAX);
        self.store.publish(all);
    }

    /// Publishes again when a certificate became valid or expired since the
    /// last publish (a renewal dated in the future takes over at its time).
    /// For the periodic certificate loop.
    pub fn republish_if_due(&self) {
        let mut loaded = self.lock();
        if self.now_secs() >= loaded.next_boundary {
            self.publish(&mut loaded);
        }
    }

    fn warn_at_start(&self) {
        let now = self.now_secs();
        let set = self.store.load();
        if self.settings.configured && set.is_empty() {
            log::warn!(
                "[tls] is configured but no certificate is loaded: every TLS handshake is refused until `ingressctl cert add` or a file in tls.cert_dir provides one"
            );
        }
        for cert in set.all() {
            match cert.status(now, self.warning_secs()) {
                CertStatus::Expired => log::warn!(
                    "certificate {} ({}) expired at {}; renew it",
                    cert.name,
                    cert.names.join(", "),
                    format_unix(cert.not_after)
                ),
                CertStatus::Expiring => log::warn!(
                    "certificate {} ({}) expires at {} (within tls.expiry_warning); renew it",
                    cert.name,
                    cert.names.join(", "),
                    format_unix(cert.not_after)
                ),
                CertStatus::Ok => {}
            }
        }
        if let Some(default) = &self.settings.default_cert {
            if set.get(default).is_none() {
                log::warn!(
                    "tls.default_cert {default} is not loaded: handshakes for unknown names are refused until it is"
                );
            }
        }
        if self.settings.configured || !set.is_empty() {
            log::info!("{} TLS certificate(s) loaded", set.len());
        }
    }

    fn view(&self, cert: &Certificate, file: Option<&str>) -> CertView {
        let routes = self.plane.routes();
        CertView::of(cert, file, &routes, self.now_secs(), self.warning_secs())
    }

    /// Checks and stores a certificate, replacing one of the same name, then
    /// publishes it: new handshakes get it at once. Refused (`InvalidArgument`,
    /// nothing changed) when the PEM does not parse, the key does not match the
    /// leaf, the leaf has no canonical DNS name, the name is not a certificate
    /// name, or it has expired and `force` is not set.
    pub fn add(&self, actor: &str, request: CertAdd) -> Result<CertView, ControlError> {
        let invalid = |message: String| refuse(ErrorKind::InvalidArgument, message);
        for (what, pem) in [
            ("certificate", &request.chain_pem),
            ("key", &request.key_pem),
        ] {
            if pem.len() as u64 > MAX_PEM_BYTES {
                return Err(invalid(format!(
                    "the {what} file is {} bytes; a PEM file may be at most {MAX_PEM_BYTES} bytes",
                    pem.len()
                )));
            }
        }
        let chain_pem = String::from_utf8(request.chain_pem)
            .map_err(|_| invalid("the certificate file is not PEM text".to_string()))?;
        let key_pem = String::from_utf8(request.key_pem)
            .map_err(|_| invalid("the key file is not PEM text".to_string()))?;
        // The checks need a name; the default comes from the leaf, so check it
        // once under a placeholder name to learn the leaf's names.
        let name = match request.name {
            Some(name) => name,
            None => {
                let probe = Certificate::from_pem(
                    "probe",
                    CertSource::Api,
                    chain_pem.as_bytes(),
                    key_pem.as_bytes(),
                )
                .map_err(|e| invalid(e.0))?;
                let name = default_name(&probe.names).unwrap_or_default();
                if !ingress_config::is_cert_name(&name) {
                    return Err(invalid(format!(
                        "the default name {name:?} (from the leaf's first DNS name) is not a certificate name; give --name NAME ({})",
                        ingress_config::CERT_NAME_RULE
                    )));
                }
                name
            }
        };
        let cert = Certificate::from_pem(
            &name,
            CertSource::Api,
            chain_pem.as_bytes(),
            key_pem.as_bytes(),
        )
        .map_err(|e| invalid(e.0))?;
        let now = self.now_secs();
        let expired = cert.check_current(now).is_err();
        if !request.force {
            cert.check_current(now).map_err(|e| invalid(e.0))?;
        }
        let record = CertRecord {
            name: name.clone(),
            chain_pem,
            key_pem,
            names: cert.names.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            fingerprint: cert.fingerprint.clone(),
            issuer: cert.issuer.clone(),
            created_at_ms: self.plane.now_ms(),
        };
        let cert = Arc::new(cert);
        let mut loaded = self.lock();
        let mut detail = format!(
            "names {}; not after {}; fingerprint {}",
            cert.names.join(", "),
            format_unix(cert.not_after),
            cert.fingerprint
        );
        if let Some(old) = loaded.api.get(&name) {
            detail.push_str(&format!("; replaced fingerprint {}", old.fingerprint));
        } else if let Some(dir) = loaded.dir.get(&name) {
            detail.push_str(&format!("; shadows {}", dir.file));
        }
        if expired {
            detail.push_str("; expired, added with --force");
        }
        let audit = self.plane.audit_entry(actor, "cert.add", &name, detail);
        self.plane
            .commit_certificates(vec![Mutation::PutCertificate(record)], audit)?;
        loaded.api.insert(name.clone(), Arc::clone(&cert));
        self.publish(&mut loaded);
        drop(loaded);
        log::info!(
            "certificate {name} ({}) added by {actor}, not after {}",
            cert.names.join(", "),
            format_unix(cert.not_after)
        );
        Ok(self.view(&cert, None))
    }

    /// Removes an API certificate and publishes the set without it (a
    /// `cert_dir` certificate of the same name then serves again). `NotFound`
    /// for an unknown name or a `cert_dir` one (its files are the source);
    /// `FailedPrecondition` for `tls.default_cert` when nothing would replace it.
    pub fn remove(&self, actor: &str, name: &str) -> Result<CertView, ControlError> {
        let mut loaded = self.lock();
        let Some(cert) = loaded.api.get(name).cloned() else {
            return Err(match loaded.dir.get(name) {
                Some(dir) => refuse(
                    ErrorKind::NotFound,
                    format!(
                        "certificate {name} comes from tls.cert_dir ({}), not the API; delete its files and run `ingressctl cert reload`",
                        dir.file
                    ),
                ),
                None => not_found(name),
            });
        };
        if self.settings.default_cert.as_deref() == Some(name) && !loaded.dir.contains_key(name) {
            return Err(refuse(
                ErrorKind::FailedPrecondition,
                format!(
                    "certificate {name} is tls.default_cert, served for unknown names (tls.unknown_sni = \"default\"); replace it with `ingressctl cert add --name {name}`, or change tls.default_cert first"
                ),
            ));
        }
        let audit = self.plane.audit_entry(
            actor,
            "cert.remove",
            name,
            format!(
                "names {}; fingerprint {}",
                cert.names.join(", "),
                cert.fingerprint
            ),
        );
        self.plane
            .commit_certificates(vec![Mutation::DeleteCertificate(name.to_string())], audit)?;
        loaded.api.remove(name);
        self.publish(&mut loaded);
        drop(loaded);
        log::info!("certificate {name} removed by {actor}");
        Ok(self.view(&cert, None))
    }

    /// Every certificate served, by name: the API ones and the `cert_dir` ones
    /// they do not shadow.
    pub fn list(&self) -> Vec<CertView> {
        let loaded = self.lock();
        let routes = self.plane.routes();
        let (now, warning) = (self.now_secs(), self.warning_secs());
        let mut views: Vec<CertView> = loaded
            .api
            .values()
            .map(|cert| CertView::of(cert, None, &routes, now, warning))
            .chain(
                loaded
                    .dir
                    .iter()
                    .filter(|(name, _)| !loaded.api.contains_key(*name))
                    .map(|(_, dir)| {
                        CertView::of(&dir.cert, Some(&dir.file), &routes, now, warning)
                    }),
            )
            .collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        views
    }

    /// One certificate by name (the one served under that name).
    pub fn show(&self, name: &str) -> Result<CertView, ControlError> {
        let loaded = self.lock();
        if let Some(cert) = loaded.api.get(name) {
            return Ok(self.view(cert, None));
        }
        match loaded.dir.get(name) {
            Some(dir) => Ok(self.view(&dir.cert, Some(&dir.file))),
            None => Err(not_found(name)),
        }
    }

    /// Rescans `tls.cert_dir` and publishes; `actor` (an admin call) is audited.
    /// A file that cannot be used is skipped and reported; the rest load.
    pub fn reload(&self, actor: Option<&str>) -> Result<ReloadReport, ControlError> {
        let mut loaded = self.lock();
        if let Some(actor) = actor {
            let target = self.settings.cert_dir.as_ref().map_or_else(
                || "(no tls.cert_dir)".to_string(),
                |d| d.display().to_string(),
            );
            let audit = self
                .plane
                .audit_entry(actor, "cert.reload", &target, String::new());
            self.plane.commit_certificates(Vec::new(), audit)?;
        }
        let refused = self.rescan(&mut loaded);
        self.publish(&mut loaded);
        // The routes once for all certificates (once per certificate took
        // seconds at 10,000 of each).
        let routes = self.plane.routes();
        let (now, warning) = (self.now_secs(), self.warning_secs());
        let report = ReloadReport {
            loaded: loaded
                .dir
                .values()
                .map(|dir| CertView::of(&dir.cert, Some(&dir.file), &routes, now, warning))
                .collect(),
            refused,
        };
        drop(loaded);
        log_refused(&report.refused);
        log::info!(
            "tls.cert_dir reloaded: {} certificate(s) loaded, {} file(s) skipped",
            report.loaded.len(),
            report.refused.len()
        );
        Ok(report)
    }

    /// Reloads `tls.cert_dir` if its files changed since the last scan (by
    /// name, modification time and size); for the `tls.reload_interval` loop.
    pub fn reload_if_changed(&self) -> Option<ReloadReport> {
        let cert_dir = self.settings.cert_dir.as_ref()?;
        let now = dir::stamp(cert_dir);
        if now == self.lock().stamp {
            return None;
        }
        self.reload(None).ok()
    }

    /// The certificate a handshake for `host` would get now, and why. `host`
    /// may carry a port and any case; empty means a handshake without SNI.
    pub fn check(&self, host: &str) -> Result<CheckView, ControlError> {
        let host = normalise_host(host)?;
        let sni = (!host.is_empty()).then_some(host.as_str());
        let (cert, reason) = self.store.check(sni);
        let file = cert.as_ref().and_then(|cert| {
            (cert.source == CertSource::Dir)
                .then(|| self.lock().dir.get(&cert.name).map(|dir| dir.file.clone()))
                .flatten()
        });
        let view = cert.as_ref().map(|cert| self.view(cert, file.as_deref()));
        let shown = if host.is_empty() {
            "a handshake without SNI"
        } else {
            host.as_str()
        };
        let mut detail = match (&view, reason) {
            (Some(v), Reason::Exact) => format!("{shown}: certificate {} names it exactly", v.name),
            (Some(v), Reason::Wildcard) => {
                let parent = host.split_once('.').map_or("", |(_, parent)| parent);
                format!("{shown}: certificate {} covers it with *.{parent}", v.name)
            }
            (Some(v), _) => format!(
                "{shown}: no certificate names it; the default certificate {} is served (tls.unknown_sni = \"default\")",
                v.name
            ),
            (None, _) => format!(
                "{shown}: no certificate covers it{}; the handshake is refused",
                if self.settings.default_cert.is_some() {
                    " and tls.default_cert is not loaded"
                } else {
                    " and tls.unknown_sni = \"reject\""
                }
            ),
        };
        if let Some(v) = &view {
            detail.push_str(&format!(
                " ({}, not after {})",
                v.status.as_str(),
                v.not_after_text()
            ));
        }
        if !self.settings.configured {
            detail.push_str("; note: [tls] is not configured, so no TLS listener runs");
        }
        Ok(CheckView {
            host,
            reason,
            cert: view,
            detail,
        })
    }
}

fn not_found(name: &str) -> ControlError {
    refuse(
        ErrorKind::NotFound,
        format!("no certificate named {name}; `ingressctl cert list` shows them"),
    )
}

fn log_refused(refused: &[Refused]) {
    for skipped in refused {
        log::warn!(
            "tls.cert_dir: {}: {}; skipped",
            skipped.file,
            skipped.problem
        );
    }
}

/// `host` as a handshake would send it: lower case, without a port or a
/// trailing dot. Refuses what no SNI could be.
fn normalise_host(host: &str) -> Result<String, ControlError> {
    let trimmed = host.trim();
    let without_port = match trimmed.rsplit_once(':') {
        Some((name, port)) if !name.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => {
            name
        }
        _ => trimmed,
    };
    let host = without_port.trim_end_matches('.').to_ascii_lowercase();
    let valid = host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.');
    if !valid {
        return Err(refuse(
            ErrorKind::InvalidArgument,
            format!(
                "{host:?} is not a host name; give a DNS name such as shop.example.com (at most 253 characters of a-z, 0-9, '-' and '.')"
            ),
        ));
    }
    Ok(host)
}

#[cfg(test)]
mod tests;

//! The certificates the TLS listener serves, chosen by SNI from a lock-free map.
//!
//! The control plane publishes the whole set ([`CertStore::publish`]); a
//! handshake reads the current map with one atomic load and looks up the SNI by
//! `&str` (no lock, no allocation). Only new handshakes see a publish: open
//! connections (HTTP/1 keep-alive and HTTP/2 alike) keep the certificate they
//! were handshaken with.

use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;
use ingress_config::UnknownSni;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::certificate::Certificate;
use crate::metrics::Metrics;

/// Why a handshake got the certificate it got (`ingressctl cert check`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A certificate names the host itself.
    Exact,
    /// A certificate names `*.parent` and the host is one label under `parent`.
    Wildcard,
    /// Nothing matched (or no SNI was sent) and `unknown_sni = "default"`.
    Default,
    /// Nothing matched and `unknown_sni = "reject"` (or the default certificate
    /// is not loaded): the handshake is refused.
    Rejected,
}

impl Reason {
    /// `exact`, `wildcard`, `default` or `rejected`.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Exact => "exact",
            Reason::Wildcard => "wildcard",
            Reason::Default => "default",
            Reason::Rejected => "rejected",
        }
    }
}

/// One published set of certificates, indexed for SNI lookups.
#[derive(Default)]
pub struct CertSet {
    by_name: HashMap<String, Arc<Certificate>>,
    exact: HashMap<String, Arc<Certificate>>,
    /// Keyed by the wildcard's parent: `*.shop.example.com` under `shop.example.com`.
    wildcard: HashMap<String, Arc<Certificate>>,
    default: Option<Arc<Certificate>>,
}

impl CertSet {
    /// Indexes `certificates` at `now` (Unix seconds). When two name the same
    /// host, one valid now beats one that is not (a renewal dated in the
    /// future, or an expired one), then the one that expires last serves it (a
    /// renewed certificate takes over from the old one); equal expiry goes to
    /// the first name in order, so the choice is stable.
    fn build(certificates: Vec<Arc<Certificate>>, default_name: &str, now: i64) -> CertSet {
        let mut set = CertSet::default();
        let mut sorted = certificates;
        let valid = |c: &Certificate| c.not_before <= now && now < c.not_after;
        sorted.sort_by(|a, b| {
            valid(b)
                .cmp(&valid(a))
                .then(b.not_after.cmp(&a.not_after))
                .then(a.name.cmp(&b.name))
        });
        for cert in sorted {
            for name in &cert.names {
                let (map, key) = match name.strip_prefix("*.") {
                    Some(parent) => (&mut set.wildcard, parent),
                    None => (&mut set.exact, name.as_str()),
                };
                map.entry(key.to_string())
                    .or_insert_with(|| Arc::clone(&cert));
            }
            if cert.name == default_name {
                set.default = Some(Arc::clone(&cert));
            }
            set.by_name.insert(cert.name.clone(), cert);
        }
        set
    }

    /// The certificate a handshake for `sni` gets, and why.
    pub fn select(
        &self,
        sni: Option<&str>,
        unknown: UnknownSni,
    ) -> (Option<&Arc<Certificate>>, Reason) {
        if let Some(host) = sni {
            if let Some(cert) = self.exact.get(host) {
                return (Some(cert), Reason::Exact);
            }
            if let Some(cert) = host
                .split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
            {
                return (Some(cert), Reason::Wildcard);
            }
        }
        match (unknown, &self.default) {
            (UnknownSni::Default, Some(cert)) => (Some(cert), Reason::Default),
            _ => (None, Reason::Rejected),
        }
    }

    /// Whether some certificate covers `host` (lower case, no port): the plain
    /// listener redirects such hosts to https.
    pub fn covers(&self, host: &str) -> bool {
        self.exact.contains_key(host)
            || host
                .split_once('.')
                .is_some_and(|(_, parent)| self.wildcard.contains_key(parent))
    }

    /// A certificate by its name.
    pub fn get(&self, name: &str) -> Option<&Arc<Certificate>> {
        self.by_name.get(name)
    }

    /// Every certificate, by name.
    pub fn all(&self) -> impl Iterator<Item = &Arc<Certificate>> {
        let mut all: Vec<_> = self.by_name.values().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all.into_iter()
    }

    /// How many certificates are loaded.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// Whether none are loaded.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// The certificates of the TLS listener, swapped atomically, and the SNI
/// resolver rustls calls during each handshake.
pub struct CertStore {
    current: ArcSwap<CertSet>,
    unknown_sni: UnknownSni,
    default_name: String,
    metrics: Option<Arc<Metrics>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("certificates", &self.current.load().len())
            .field("unknown_sni", &self.unknown_sni)
            .finish()
    }
}

impl CertStore {
    /// An empty store with the `[tls]` policy for unknown SNI.
    pub fn new(
        unknown_sni: UnknownSni,
        default_name: &str,
        metrics: Option<Arc<Metrics>>,
    ) -> CertStore {
        CertStore {
            current: ArcSwap::from_pointee(CertSet::default()),
            unknown_sni,
            default_name: default_name.to_string(),
            metrics,
        }
    }

    /// The store for `config` (its `[tls]` section; reject unknown SNI without one).
    pub fn from_config(
        config: &ingress_config::Config,
        metrics: Option<Arc<Metrics>>,
    ) -> CertStore {
        match &config.tls {
            Some(tls) => CertStore::new(tls.unknown_sni, &tls.default_cert, metrics),
            None => CertStore::new(UnknownSni::Reject, "", metrics),
        }
    }

    /// Replaces the whole set. New handshakes see it at once; open connections
    /// keep theirs.
    pub fn publish(&self, certificates: Vec<Arc<Certificate>>) {
        let now = crate::time::now_unix_millis() / 1000;
        let set = CertSet::build(
            certificates,
            &self.default_name,
            i64::try_from(now).unwrap_or(i64::MAX),
        );
        self.current.store(Arc::new(set));
    }

    /// The current set.
    pub fn load(&self) -> arc_swap::Guard<Arc<CertSet>> {
        self.current.load()
    }

    /// The certificate a handshake for `sni` gets now, and why.
    pub fn check(&self, sni: Option<&str>) -> (Option<Arc<Certificate>>, Reason) {
        let set = self.current.load();
        let (cert, reason) = set.select(sni, self.unknown_sni);
        (cert.cloned(), reason)
    }

    /// The name of the certificate served for unknown SNI, if that is the policy.
    pub fn default_name(&self) -> Option<&str> {
        (self.unknown_sni == UnknownSni::Default).then_some(self.default_name.as_str())
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let set = self.current.load();
        let (cert, _) = set.select(hello.server_name(), self.unknown_sni);
        if cert.is_none() {
            if let Some(metrics) = &self.metrics {
                metrics.tls_handshakes.with_label_values(&["no_cert"]).inc();
            }
        }
        cert.map(|cert| Arc::clone(&cert.key))
    }
}

impl CertStore {
    /// Sets the certificate gauges for `now` (Unix seconds): counts by status and
    /// seconds to expiry per certificate. Called before each metrics scrape.
    pub fn refresh_metrics(&self, now: i64, warning: i64) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        let set = self.current.load();
        let mut counts = [0i64; 3];
        metrics.tls_cert_expiry.reset();
        for cert in set.all() {
            let status = cert.status(now, warning);
            counts[status as usize] += 1;
            metrics
                .tls_cert_expiry
                .with_label_values(&[cert.name.as_str()])
                .set((cert.not_after - now) as f64);
        }
        for (status, count) in [
            super::CertStatus::Ok,
            super::CertStatus::Expiring,
            super::CertStatus::Expired,
        ]
        .iter()
        .zip(counts)
        {
            metrics
                .tls_certificates
                .with_label_values(&[status.as_str()])
                .set(count);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertSource, CertStatus};

    fn cert(name: &str, names: &[&str], not_after_year: i32) -> Arc<Certificate> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_after = rcgen::date_time_ymd(not_after_year, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        Arc::new(
            Certificate::from_pem(
                name,
                CertSource::Api,
                cert.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
            )
            .unwrap(),
        )
    }

    fn chosen(store: &CertStore, sni: Option<&str>) -> (Option<String>, Reason) {
        let (cert, reason) = store.check(sni);
        (cert.map(|c| c.name.clone()), reason)
    }

    #[test]
    fn exact_then_one_level_wildcard_then_default_or_nothing() {
        let store = CertStore::new(UnknownSni::Reject, "", None);
        store.publish(vec![
            cert("shop", &["shop.example.com", "*.shop.example.com"], 2100),
            cert("pr-9", &["pr-9.shop.example.com"], 2100),
        ]);
        let some = |name: &str| Some(name.to_string());
        assert_eq!(
            chosen(&store, Some("shop.example.com")),
            (some("shop"), Reason::Exact)
        );
        assert_eq!(
            chosen(&store, Some("pr-1.shop.example.com")),
            (some("shop"), Reason::Wildcard)
        );
        assert_eq!(
            chosen(&store, Some("pr-9.shop.example.com")),
            (some("pr-9"), Reason::Exact)
        );
        for unknown in [Some("a.pr-1.shop.example.com"), Some("example.com"), None] {
            assert_eq!(chosen(&store, unknown), (None, Reason::Rejected));
        }
        assert!(store.load().covers("pr-1.shop.example.com"));
        assert!(!store.load().covers("a.pr-1.shop.example.com"));

        let defaulting = CertStore::new(UnknownSni::Default, "fallback", None);
        defaulting.publish(vec![cert("fallback", &["fallback.example.net"], 2100)]);
        assert_eq!(
            chosen(&defaulting, Some("x.test")),
            (some("fallback"), Reason::Default)
        );
        assert_eq!(
            chosen(&defaulting, None),
            (some("fallback"), Reason::Default)
        );
        // A default named but not loaded: refused.
        let missing = CertStore::new(UnknownSni::Default, "absent", None);
        assert_eq!(chosen(&missing, None), (None, Reason::Rejected));
    }

    #[test]
    fn the_certificate_expiring_last_serves_a_shared_name() {
        let store = CertStore::new(UnknownSni::Reject, "", None);
        store.publish(vec![
            cert("old", &["shop.example.com"], 2030),
            cert("new", &["shop.example.com"], 2040),
        ]);
        assert_eq!(
            chosen(&store, Some("shop.example.com")).0.as_deref(),
            Some("new")
        );
        // A publish replaces the whole set.
        store.publish(vec![cert("old", &["shop.example.com"], 2030)]);
        assert_eq!(
            chosen(&store, Some("shop.example.com")).0.as_deref(),
            Some("old")
        );
        assert_eq!(store.load().len(), 1);
    }

    #[test]
    fn a_renewal_dated_in_the_future_waits_for_its_time() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(vec!["shop.example.com".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2090, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        let future = params.self_signed(&key).unwrap();
        let future = Arc::new(
            Certificate::from_pem(
                "future",
                CertSource::Api,
                future.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
            )
            .unwrap(),
        );
        let store = CertStore::new(UnknownSni::Reject, "", None);
        store.publish(vec![future, cert("current", &["shop.example.com"], 2080)]);
        assert_eq!(
            chosen(&store, Some("shop.example.com")).0.as_deref(),
            Some("current")
        );
    }

    #[test]
    fn status_and_metrics_follow_the_clock() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let store = CertStore::new(UnknownSni::Reject, "", Some(Arc::clone(&metrics)));
        let soon = cert("soon", &["soon.example.com"], 2027);
        let not_after = soon.not_after;
        store.publish(vec![soon, cert("later", &["later.example.com"], 2100)]);
        let day = 86_400;
        let set = store.load();
        let soon = set.get("soon").unwrap();
        assert_eq!(soon.status(not_after - 30 * day, 21 * day), CertStatus::Ok);
        assert_eq!(
            soon.status(not_after - 20 * day, 21 * day),
            CertStatus::Expiring
        );
        assert_eq!(soon.status(not_after, 21 * day), CertStatus::Expired);
        store.refresh_metrics(not_after - 10 * day, 21 * day);
        let text = metrics.encode_text();
        assert!(
            text.contains("ingress_tls_certificates{status=\"expiring\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ingress_tls_certificates{status=\"ok\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ingress_tls_cert_expiry_seconds{name=\"soon\"} 864000"),
            "{text}"
        );
    }
}

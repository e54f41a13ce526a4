//! The TLS listener's settings and what each TLS connection carries into request
//! handling.
//!
//! Pingora's rustls back-end never calls `TlsAccept::certificate_callback`; the
//! certificate comes from the [`CertStore`] resolver, and the handshake-complete
//! callback records the SNI and the certificate served in the connection's
//! `SslDigest` extension, where the request path finds them.

use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use pingora_core::listeners::tls::TlsSettings;
use pingora_core::listeners::TlsAccept;
use pingora_core::protocols::tls::TlsRef;
use pingora_core::protocols::Digest;

use super::certificate::Certificate;
use super::store::CertStore;
use crate::metrics::Metrics;

/// The `[tls]` settings the data plane uses.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub listen: SocketAddr,
    /// Offer HTTP/2 by ALPN.
    pub h2: bool,
    /// Plain requests for covered hosts get 308 to https.
    pub redirect_http: bool,
    /// `Strict-Transport-Security` for TLS responses, if any.
    pub hsts: Option<String>,
    /// 421 for a Host the connection's certificate does not cover.
    pub reject_misdirected: bool,
}

impl TlsOptions {
    /// The options of `config`'s `[tls]` section, if it has one.
    pub fn from_config(config: &ingress_config::Config) -> Option<TlsOptions> {
        let tls = config.tls.as_ref()?;
        Some(TlsOptions {
            listen: tls.listen,
            h2: tls.h2,
            redirect_http: tls.redirect_http,
            hsts: (!tls.hsts.is_empty()).then(|| tls.hsts.clone()),
            reject_misdirected: tls.misdirected == ingress_config::Misdirected::Reject,
        })
    }

    /// The authority suffix of redirects: empty for port 443, else `:PORT`.
    pub fn port_suffix(&self) -> String {
        match self.listen.port() {
            443 => String::new(),
            port => format!(":{port}"),
        }
    }
}

/// What a TLS connection was handshaken with.
#[derive(Debug)]
pub struct ConnTls {
    /// The SNI the client sent (lower case), if any.
    pub sni: Option<String>,
    /// The certificate served.
    pub cert: Option<Arc<Certificate>>,
}

impl ConnTls {
    /// The TLS facts of a connection from its digest: `None` on plain connections.
    pub fn of(digest: Option<&Digest>) -> Option<&ConnTls> {
        digest?.ssl_digest.as_ref()?.extension.get::<ConnTls>()
    }

    /// Whether a request for `host` may be served on this connection: its
    /// certificate names the host (HTTP/2 clients coalesce only onto such
    /// connections; anything else was misdirected).
    pub fn covers(&self, host: &str) -> bool {
        self.cert.as_ref().is_some_and(|cert| cert.covers(host))
    }
}

/// Records each finished handshake's SNI and certificate.
struct Handshakes {
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
}

#[async_trait]
impl TlsAccept for Handshakes {
    async fn handshake_complete_callback(
        &self,
        tls: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        self.metrics.tls_handshakes.with_label_values(&["ok"]).inc();
        let sni = tls.server_name().map(str::to_ascii_lowercase);
        // The resolver chose from the set current during the handshake; a publish
        // in between could make this differ, which only moves the 421 decision
        // to the newer set.
        let (cert, _) = self.store.check(sni.as_deref());
        Some(Arc::new(ConnTls { sni, cert }))
    }
}

/// The rustls settings of the TLS listener: certificates from `store` by SNI,
/// TLS 1.2 and 1.3, ALPN `h2,http/1.1` when `h2` (HTTP/1.1 stays for WebSockets).
pub fn tls_settings(
    options: &TlsOptions,
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
) -> pingora_core::Result<TlsSettings> {
    pingora_core::tls::install_default_crypto_provider();
    let mut settings = TlsSettings::with_callbacks(Box::new(Handshakes {
        store: Arc::clone(&store),
        metrics,
    }))?;
    settings.set_cert_resolver(store);
    if options.h2 {
        settings.enable_h2();
    } else {
        settings.set_alpn(pingora_core::protocols::ALPN::H1);
    }
    Ok(settings)
}

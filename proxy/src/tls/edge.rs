//! What the request path adds once the ingress terminates TLS: plain requests for
//! a host that has a certificate are redirected to https (308), TLS requests for
//! a host the connection's certificate does not cover are refused (421), and TLS
//! responses may carry `Strict-Transport-Security`. Both the fast path and the
//! Pingora hooks ask [`Edge::verdict`]; only the hooks answer redirects and 421s
//! (they are rare), so the fast path hands those requests on.

use std::sync::Arc;

use super::listener::{ConnTls, TlsOptions};
use super::store::CertStore;
use crate::error_response::ErrorAnswer;
use crate::host::{normalise_host, HostBuf, MAX_HOST_LEN};

/// Never redirected: an ACME HTTP-01 validation must be answered over plain HTTP.
const ACME_CHALLENGE: &[u8] = b"/.well-known/acme-challenge/";

/// What becomes of one request at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Route it as usual.
    Serve,
    /// 308 to this `https://` URL.
    Redirect(String),
    /// 421: the connection's certificate does not cover this host.
    Misdirected(String),
}

/// The `[tls]` request-path rules and the certificates they consult.
pub struct Edge {
    options: TlsOptions,
    certs: Arc<CertStore>,
    port_suffix: String,
}

impl Edge {
    /// The rules of `options` over `certs`.
    pub fn new(options: TlsOptions, certs: Arc<CertStore>) -> Edge {
        let port_suffix = options.port_suffix();
        Edge {
            options,
            certs,
            port_suffix,
        }
    }

    /// The verdict for a request for `raw_host` with origin-form `target` (path
    /// and query), on a TLS connection (`tls`, with what it was handshaken with)
    /// or a plain one. A host that does not normalise is left to routing, which
    /// answers 400.
    pub fn verdict(
        &self,
        tls: Option<&ConnTls>,
        is_tls: bool,
        raw_host: &[u8],
        target: &[u8],
    ) -> Verdict {
        let mut buf: HostBuf = [0; MAX_HOST_LEN + 2];
        let Ok(host) = normalise_host(raw_host, &mut buf) else {
            return Verdict::Serve;
        };
        if !is_tls {
            // Only origin-form targets move (`OPTIONS *` has no URL to move to).
            if self.options.redirect_http
                && target.starts_with(b"/")
                && !target.starts_with(ACME_CHALLENGE)
                && self.certs.load().covers(host)
            {
                let target = String::from_utf8_lossy(target);
                return Verdict::Redirect(format!("https://{host}{}{target}", self.port_suffix));
            }
            return Verdict::Serve;
        }
        if !self.options.reject_misdirected {
            return Verdict::Serve;
        }
        // The host the client connected for is never misdirected, even when only
        // the default certificate answered it, and neither is any host on a
        // connection without SNI (made to an IP address: no name was claimed);
        // another host is (HTTP/2 clients reuse a connection for any host its
        // certificate covers).
        match tls {
            Some(conn)
                if conn.sni.is_none() || conn.sni.as_deref() == Some(host) || conn.covers(host) =>
            {
                Verdict::Serve
            }
            _ => Verdict::Misdirected(host.to_string()),
        }
    }

    /// The `Strict-Transport-Security` value for TLS responses, if configured.
    pub fn hsts(&self) -> Option<&str> {
        self.options.hsts.as_deref()
    }

    /// Whether any request may get a verdict other than [`Verdict::Serve`]: the
    /// fast path skips the check when not.
    pub fn may_intervene(&self, is_tls: bool) -> bool {
        if is_tls {
            self.options.reject_misdirected
        } else {
            self.options.redirect_http && !self.certs.load().is_empty()
        }
    }
}

/// The 421 answer for `host`.
pub fn misdirected_answer(host: &str) -> ErrorAnswer {
    ErrorAnswer {
        status: 421,
        code: "misdirected_request",
        message: format!(
            "this connection's certificate does not cover {host}; open a new connection for it"
        ),
        retry_after_secs: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{CertSource, Certificate};

    fn edge(redirect: bool, reject: bool, port: u16) -> Edge {
        let certs = Arc::new(CertStore::new(ingress_config::UnknownSni::Reject, "", None));
        let options = TlsOptions {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
            h2: true,
            redirect_http: redirect,
            hsts: None,
            reject_misdirected: reject,
        };
        Edge::new(options, certs)
    }

    fn with_cert(edge: &Edge, names: &[&str]) -> Arc<Certificate> {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        let cert = Arc::new(
            Certificate::from_pem(
                "shop",
                CertSource::Api,
                cert.pem().as_bytes(),
                key.serialize_pem().as_bytes(),
            )
            .unwrap(),
        );
        edge.certs.publish(vec![Arc::clone(&cert)]);
        cert
    }

    #[test]
    fn plain_requests_for_covered_hosts_are_redirected() {
        let edge = edge(true, true, 8443);
        assert_eq!(
            edge.verdict(None, false, b"shop.example.com", b"/"),
            Verdict::Serve
        );
        with_cert(&edge, &["shop.example.com", "*.shop.example.com"]);
        assert_eq!(
            edge.verdict(None, false, b"Shop.Example.com:8080", b"/a?b=1"),
            Verdict::Redirect("https://shop.example.com:8443/a?b=1".into())
        );
        assert_eq!(
            edge.verdict(None, false, b"pr-1.shop.example.com", b"/"),
            Verdict::Redirect("https://pr-1.shop.example.com:8443/".into())
        );
        // Two levels under the wildcard, another host, ACME: served.
        for (host, target) in [
            (&b"a.pr-1.shop.example.com"[..], &b"/"[..]),
            (b"other.example.com", b"/"),
            (b"shop.example.com", b"/.well-known/acme-challenge/token"),
            (b"shop.example.com", b"*"),
        ] {
            assert_eq!(edge.verdict(None, false, host, target), Verdict::Serve);
        }
        let on_443 = self::edge(true, true, 443);
        with_cert(&on_443, &["shop.example.com"]);
        assert_eq!(
            on_443.verdict(None, false, b"shop.example.com", b"/"),
            Verdict::Redirect("https://shop.example.com/".into())
        );
        let off = self::edge(false, true, 8443);
        with_cert(&off, &["shop.example.com"]);
        assert_eq!(
            off.verdict(None, false, b"shop.example.com", b"/"),
            Verdict::Serve
        );
    }

    #[test]
    fn tls_requests_outside_the_certificate_are_misdirected() {
        let edge = edge(true, true, 8443);
        let cert = with_cert(&edge, &["*.shop.example.com"]);
        let conn = ConnTls {
            sni: Some("pr-1.shop.example.com".into()),
            cert: Some(cert),
        };
        assert_eq!(
            edge.verdict(Some(&conn), true, b"pr-2.shop.example.com", b"/"),
            Verdict::Serve
        );
        assert_eq!(
            edge.verdict(Some(&conn), true, b"other.example.com", b"/"),
            Verdict::Misdirected("other.example.com".into())
        );
        // The SNI's own host is served even when the default certificate answered.
        let default = ConnTls {
            sni: Some("unknown.test".into()),
            cert: None,
        };
        assert_eq!(
            edge.verdict(Some(&default), true, b"unknown.test", b"/"),
            Verdict::Serve
        );
        let no_sni = ConnTls {
            sni: None,
            cert: None,
        };
        assert_eq!(
            edge.verdict(Some(&no_sni), true, b"shop.example.com", b"/"),
            Verdict::Serve
        );
        let allow = self::edge(true, false, 8443);
        assert_eq!(
            allow.verdict(Some(&conn), true, b"other.example.com", b"/"),
            Verdict::Serve
        );
    }
}

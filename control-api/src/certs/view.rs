//! What listings show of a certificate: never its key.

use ingress_proxy::tls::{format_unix, CertStatus, Certificate, Reason};

use crate::model::{Route, RouteKind};

/// A route a certificate covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cover {
    /// `shop.example.com` (an exact route), `*.shop.example.com` (the previews
    /// of that route) or `*.example.org` (a wildcard route).
    pub host: String,
    pub app: String,
    /// `exact`, `previews` or `wildcard`.
    pub kind: &'static str,
}

/// A certificate as `cert list` and `cert show` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertView {
    pub name: String,
    pub names: Vec<String>,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub status: CertStatus,
    /// `api` or `dir`.
    pub source: &'static str,
    /// The file it was loaded from, for `dir` certificates.
    pub file: Option<String>,
    pub issuer: String,
    pub subject: String,
    /// SHA-256 of the leaf, lower-case hex.
    pub fingerprint: String,
    /// The routes it covers, in route order.
    pub covers: Vec<Cover>,
}

impl CertView {
    /// The view of `cert` at `now` (Unix seconds), `warning` seconds of notice
    /// before expiry, against `routes`.
    pub fn of(
        cert: &Certificate,
        file: Option<&str>,
        routes: &[Route],
        now: i64,
        warning: i64,
    ) -> CertView {
        CertView {
            name: cert.name.clone(),
            names: cert.names.clone(),
            not_before: cert.not_before,
            not_after: cert.not_after,
            status: cert.status(now, warning),
            source: cert.source.as_str(),
            file: file.map(str::to_string),
            issuer: cert.issuer.clone(),
            subject: cert.subject.clone(),
            fingerprint: cert.fingerprint.clone(),
            covers: covers(cert, routes),
        }
    }

    /// `2100-01-01T00:00:00Z`.
    pub fn not_after_text(&self) -> String {
        format_unix(self.not_after)
    }
}

/// The routes `cert` covers: an exact route's host, the previews under it
/// (`label.host`, through `*.host`), and wildcard routes whose every host it
/// covers (`*.suffix`).
pub fn covers(cert: &Certificate, routes: &[Route]) -> Vec<Cover> {
    let has = |name: &str| cert.names.iter().any(|n| n == name);
    let mut covers = Vec::new();
    for route in routes {
        match route.kind {
            RouteKind::Exact => {
                if cert.covers(&route.host) {
                    covers.push(Cover {
                        host: route.host.clone(),
                        app: route.app.clone(),
                        kind: "exact",
                    });
                }
                let previews = format!("*.{}", route.host);
                if has(&previews) {
                    covers.push(Cover {
                        host: previews,
                        app: route.app.clone(),
                        kind: "previews",
                    });
                }
            }
            RouteKind::Wildcard => {
                let wildcard = format!("*.{}", route.host);
                if has(&wildcard) {
                    covers.push(Cover {
                        host: wildcard,
                        app: route.app.clone(),
                        kind: "wildcard",
                    });
                }
            }
            RouteKind::Default => {}
        }
    }
    covers
}

/// What `cert check HOST` answers: the certificate a handshake for the host
/// would get now, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckView {
    /// The host checked, lower case (empty: a handshake without SNI).
    pub host: String,
    pub reason: Reason,
    pub cert: Option<CertView>,
    /// One line saying it all.
    pub detail: String,
}

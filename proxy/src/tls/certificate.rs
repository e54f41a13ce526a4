//! One certificate: a PEM chain and its private key, checked and ready for handshakes.
//!
//! The checks are the ones `ingressctl cert add` promises: both PEM blocks parse,
//! the key matches the leaf, the leaf names DNS subject alternative names in
//! canonical form, and (unless forced) it has not expired. A [`Certificate`] never
//! prints its key: it has no `Display` of it and its `Debug` leaves it out.

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};

/// Where a certificate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// `ingressctl cert add`, kept in the store.
    Api,
    /// A file pair in `tls.cert_dir`.
    Dir,
}

impl CertSource {
    /// `api` or `dir`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertSource::Api => "api",
            CertSource::Dir => "dir",
        }
    }
}

/// Whether a certificate is fit to serve, as `cert list` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CertStatus {
    Ok,
    /// Expires within `tls.expiry_warning`.
    Expiring,
    Expired,
}

impl CertStatus {
    /// `ok`, `expiring` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            CertStatus::Ok => "ok",
            CertStatus::Expiring => "expiring",
            CertStatus::Expired => "expired",
        }
    }
}

/// A certificate that passed the checks, with what `cert list` shows of it.
pub struct Certificate {
    /// Its handle (`cert show NAME`, `tls.default_cert`).
    pub name: String,
    /// The leaf's DNS names, lower case: `shop.example.com`, `*.shop.example.com`.
    pub names: Vec<String>,
    /// Validity, in Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
    pub issuer: String,
    pub subject: String,
    /// The leaf's serial number, hex.
    pub serial: String,
    /// SHA-256 of the leaf's DER, lower-case hex.
    pub fingerprint: String,
    pub source: CertSource,
    /// The chain and signing key handed to rustls.
    pub key: Arc<CertifiedKey>,
}

impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("name", &self.name)
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .field("fingerprint", &self.fingerprint)
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// Why a certificate was refused: one line naming the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertError(pub String);

impl fmt::Display for CertError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CertError {}

fn refuse<T>(message: impl Into<String>) -> Result<T, CertError> {
    Err(CertError(message.into()))
}

impl Certificate {
    /// Parses and checks a PEM chain (leaf first) and its private key (PKCS#8,
    /// PKCS#1 or SEC1). Expiry is not checked here (see [`Certificate::check_current`]):
    /// a stored certificate that has expired since is still loaded and served.
    pub fn from_pem(
        name: &str,
        source: CertSource,
        chain_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Certificate, CertError> {
        if !ingress_config::is_cert_name(name) {
            return refuse(format!(
                "{name:?} is not a certificate name; {}",
                ingress_config::CERT_NAME_RULE
            ));
        }
        let mut chain = Vec::new();
        for item in CertificateDer::pem_slice_iter(chain_pem) {
            match item {
                Ok(der) => chain.push(der),
                Err(e) => return refuse(format!("the certificate file is not valid PEM: {e}")),
            }
        }
        if chain.is_empty() {
            return refuse(
                "the certificate file has no PEM CERTIFICATE block; give the full chain, leaf first",
            );
        }
        let key = match PrivateKeyDer::from_pem_slice(key_pem) {
            Ok(key) => key,
            Err(e) => {
                return refuse(format!(
                    "the key file has no usable PEM private key (PKCS#8, RSA or EC): {e}"
                ))
            }
        };
        let leaf = match x509_parser::parse_x509_certificate(&chain[0]) {
            Ok((_, leaf)) => leaf,
            Err(e) => {
                return refuse(format!(
                    "the first certificate of the chain does not parse: {e}"
                ))
            }
        };
        let names = leaf_names(&leaf)?;
        let provider = rustls::crypto::ring::default_provider();
        let certified =
            match CertifiedKey::from_der(chain.clone(), key, &provider) {
                Ok(certified) => certified,
                Err(rustls::Error::InconsistentKeys(_)) => return refuse(
                    "the private key does not match the leaf certificate (the first in the chain)",
                ),
                Err(e) => return refuse(format!("the private key cannot be used: {e}")),
            };
        let validity = leaf.validity();
        Ok(Certificate {
            name: name.to_string(),
            names,
            not_before: validity.not_before.timestamp(),
            not_after: validity.not_after.timestamp(),
            issuer: leaf.issuer().to_string(),
            subject: leaf.subject().to_string(),
            serial: leaf.raw_serial_as_string().replace(':', ""),
            fingerprint: hex(&Sha256::digest(chain[0].as_ref())),
            source,
            key: Arc::new(certified),
        })
    }

    /// Refuses a certificate past its `notAfter` at `now` (Unix seconds): what
    /// `cert add` does without `--force`.
    pub fn check_current(&self, now: i64) -> Result<(), CertError> {
        if self.not_after <= now {
            return refuse(format!(
                "the certificate expired at {} (Unix {}); add it with --force to serve it anyway",
                crate::tls::format_unix(self.not_after),
                self.not_after
            ));
        }
        Ok(())
    }

    /// Its status at `now`, with `warning` seconds of notice before expiry.
    pub fn status(&self, now: i64, warning: i64) -> CertStatus {
        if self.not_after <= now {
            CertStatus::Expired
        } else if self.not_after - now <= warning {
            CertStatus::Expiring
        } else {
            CertStatus::Ok
        }
    }

    /// Whether this certificate is valid for `host` (lower case): one of its names
    /// is `host`, or is `*.parent` where `host` is one label under `parent`.
    pub fn covers(&self, host: &str) -> bool {
        let parent = host.split_once('.').map(|(_, parent)| parent);
        self.names.iter().any(|name| match name.strip_prefix("*.") {
            Some(wild_parent) => parent == Some(wild_parent),
            None => name == host,
        })
    }
}

/// The leaf's DNS subject alternative names, checked to be canonical.
fn leaf_names(
    leaf: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<Vec<String>, CertError> {
    use x509_parser::extensions::GeneralName;
    let san = match leaf.subject_alternative_name() {
        Ok(Some(san)) => san,
        Ok(None) => {
            return refuse(
                "the leaf certificate has no subject alternative names; clients ignore the common name, so it needs DNS names such as shop.example.com and *.shop.example.com",
            )
        }
        Err(e) => return refuse(format!("the leaf's subject alternative names do not parse: {e}")),
    };
    let mut names = Vec::new();
    for general in &san.value.general_names {
        if let GeneralName::DNSName(name) = general {
            if let Some(problem) = dns_name_problem(name) {
                return refuse(format!("the leaf names {name:?}, which {problem}"));
            }
            if !names.iter().any(|n: &String| n == name) {
                names.push(name.to_string());
            }
        }
    }
    if names.is_empty() {
        return refuse(
            "the leaf certificate has no DNS subject alternative name (only IP addresses or others); routes are host names",
        );
    }
    Ok(names)
}

/// Why `name` is not a canonical DNS name for a certificate, if it is not:
/// lower case, no trailing dot, labels of letters, digits and '-', and a
/// wildcard only as a whole first label over at least two labels.
fn dns_name_problem(name: &str) -> Option<&'static str> {
    let rest = name.strip_prefix("*.").unwrap_or(name);
    if name.len() > 253 || rest.is_empty() {
        return Some("is empty or longer than 253 characters");
    }
    if name.bytes().any(|b| b.is_ascii_uppercase()) {
        return Some("is not in lower case (names are compared in lower case)");
    }
    if name.ends_with('.') {
        return Some("ends with a dot");
    }
    if name.starts_with("*.") && !rest.contains('.') {
        return Some("is a wildcard directly under a top-level domain");
    }
    for label in rest.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Some("has an empty label or one longer than 63 characters");
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            || label.starts_with('-')
            || label.ends_with('-')
        {
            return Some("is not a host name (a wildcard may only be the whole first label, '*.')");
        }
    }
    None
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        let _ = write!(text, "{byte:02x}");
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn refusal(chain: &str, key: &str) -> String {
        Certificate::from_pem("shop", CertSource::Api, chain.as_bytes(), key.as_bytes())
            .unwrap_err()
            .0
    }

    #[test]
    fn a_good_pair_is_read_with_its_names_and_fingerprint() {
        let (chain, key) = pair(&["shop.example.com", "*.shop.example.com"]);
        let cert = Certificate::from_pem("shop", CertSource::Api, chain.as_bytes(), key.as_bytes())
            .unwrap();
        assert_eq!(cert.names, ["shop.example.com", "*.shop.example.com"]);
        assert_eq!(cert.fingerprint.len(), 64);
        assert!(cert.covers("shop.example.com") && cert.covers("pr-1.shop.example.com"));
        assert!(!cert.covers("a.pr-1.shop.example.com") && !cert.covers("example.com"));
        assert!(!format!("{cert:?}").contains("PRIVATE"));
        cert.check_current(0).unwrap();
        assert!(cert
            .check_current(cert.not_after)
            .unwrap_err()
            .0
            .contains("--force"));
    }

    #[test]
    fn bad_input_is_refused_with_the_reason() {
        let (chain, key) = pair(&["shop.example.com"]);
        let (_, other_key) = pair(&["shop.example.com"]);
        assert!(
            refusal(&chain, &other_key).contains("does not match"),
            "{}",
            refusal(&chain, &other_key)
        );
        assert!(refusal("garbage", &key).contains("no PEM CERTIFICATE"));
        assert!(refusal(&chain, "garbage").contains("no usable PEM private key"));
        let (upper, upper_key) = pair(&["Shop.example.com"]);
        assert!(refusal(&upper, &upper_key).contains("lower case"));
        let (tld, tld_key) = pair(&["*.com"]);
        assert!(refusal(&tld, &tld_key).contains("top-level"));
        let (deep, deep_key) = pair(&["a.*.example.com"]);
        assert!(refusal(&deep, &deep_key).contains("not a host name"));
        let bad_name = Certificate::from_pem(
            "Bad/Name",
            CertSource::Api,
            chain.as_bytes(),
            key.as_bytes(),
        )
        .unwrap_err();
        assert!(bad_name.0.contains("certificate name"));
    }
}

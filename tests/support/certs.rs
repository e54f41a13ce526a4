//! Test certificates made with rcgen: one test CA, leaves for any names, written
//! as PEM files for `ingressctl cert add` or `tls.cert_dir`, and a rustls client
//! that trusts the CA.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A certificate authority for one test.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// A leaf certificate and its key, PEM, with where they were written.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl TestCa {
    pub fn new() -> TestCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "ingress test CA");
        params.key_usages.push(KeyUsagePurpose::KeyCertSign);
        params.key_usages.push(KeyUsagePurpose::DigitalSignature);
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        TestCa {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A leaf for `names`, valid from 2020 to 2100 unless `expired` (then it ended
    /// in 2021), written to `dir/FILE.crt` and `dir/FILE.key`.
    pub fn leaf(&self, dir: &Path, file: &str, names: &[&str], expired: bool) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = if expired {
            rcgen::date_time_ymd(2021, 1, 1)
        } else {
            rcgen::date_time_ymd(2100, 1, 1)
        };
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign leaf");
        let leaf = Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path: dir.join(format!("{file}.crt")),
            key_path: dir.join(format!("{file}.key")),
        };
        std::fs::write(&leaf.cert_path, &leaf.cert_pem).expect("write cert");
        std::fs::write(&leaf.key_path, &leaf.key_pem).expect("write key");
        leaf
    }

    /// Writes the CA certificate to `dir/ca.pem` (for curl `--cacert`).
    pub fn write(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.pem).expect("write ca");
        path
    }

    /// A rustls client config trusting this CA, offering `alpn`.
    pub fn client_config(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        for der in rustls::pki_types::CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(der.expect("ca pem")).expect("add ca");
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("protocol versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}

use rustls::pki_types::pem::PemObject;

/// What a TLS handshake with `sni` on `addr` got: the served leaf's DNS names
/// (or the handshake error) and the negotiated ALPN protocol.
pub async fn handshake(
    ca: &TestCa,
    addr: std::net::SocketAddr,
    sni: &str,
    alpn: &[&[u8]],
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    ),
    String,
> {
    let name = rustls::pki_types::ServerName::try_from(sni.to_string())
        .map_err(|e| format!("server name: {e}"))?;
    connect(ca.client_config(alpn), addr, name).await
}

/// A TLS connection to `addr` for `name` with `config`, and the served leaf.
async fn connect(
    config: Arc<rustls::ClientConfig>,
    addr: std::net::SocketAddr,
    name: rustls::pki_types::ServerName<'static>,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    ),
    String,
> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let leaf = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(|der| der.as_ref().to_vec())
        .unwrap_or_default();
    Ok((stream, leaf))
}

/// Accepts any server certificate: to see what a handshake serves when the
/// names do not match (the default certificate) or no SNI is sent.
#[derive(Debug)]
struct AcceptAnything(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AcceptAnything {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Like [`handshake`] without verifying the served certificate; `sni = None`
/// connects by IP address, so no SNI is sent.
pub async fn handshake_unverified(
    addr: std::net::SocketAddr,
    sni: Option<&str>,
) -> Result<
    (
        tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
        Vec<u8>,
    ),
    String,
> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnything(provider)))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = match sni {
        Some(sni) => rustls::pki_types::ServerName::try_from(sni.to_string())
            .map_err(|e| format!("server name: {e}"))?,
        None => rustls::pki_types::ServerName::IpAddress(addr.ip().into()),
    };
    connect(Arc::new(config), addr, name).await
}

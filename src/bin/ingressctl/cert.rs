//! `ingressctl cert ...`: the TLS listener's certificates. A private key is
//! read from its file and sent to the server once; nothing prints it.

use std::path::PathBuf;

use clap::Subcommand;
use ingress_control_api::grpc::proto;
use serde_json::{json, Value};

use super::{done, listing, Client, Output};

#[derive(Subcommand)]
pub enum CertCommand {
    /// Add a certificate, or replace the one of the same name; new handshakes
    /// get it at once.
    Add {
        /// The PEM chain, leaf first (fullchain.pem).
        #[arg(long)]
        cert: PathBuf,
        /// The PEM private key (privkey.pem).
        #[arg(long)]
        key: PathBuf,
        /// Default: the leaf's first DNS name, `*.` written `wildcard.`.
        #[arg(long)]
        name: Option<String>,
        /// Accept an expired certificate.
        #[arg(long)]
        force: bool,
    },
    /// List the certificates served: names, expiry, status, source, what they cover.
    List,
    /// Show one certificate.
    Show { name: String },
    /// Remove a certificate added with `cert add`.
    Remove { name: String },
    /// Rescan tls.cert_dir now (SIGHUP to the ingress does the same).
    Reload,
    /// Which certificate a TLS handshake for HOST would get, and why.
    Check { host: String },
}

fn read(flag: &str, path: &PathBuf) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {flag} {}: {e}", path.display()))
}

pub async fn run(
    client: &mut Client,
    output: Output,
    command: CertCommand,
    refused: impl Fn(tonic::Status) -> String,
) -> Result<(), String> {
    match command {
        CertCommand::Add {
            cert,
            key,
            name,
            force,
        } => {
            let request = proto::CertAddRequest {
                cert_pem: read("--cert", &cert)?,
                key_pem: read("--key", &key)?,
                name,
                force,
            };
            let info = client
                .cert_add(request)
                .await
                .map_err(refused)?
                .into_inner();
            let text = format!("certificate {} added\n{}", info.name, details(&info));
            done(output, cert_json(&info), text);
        }
        CertCommand::List => {
            let certs = client
                .cert_list(proto::Empty {})
                .await
                .map_err(refused)?
                .into_inner()
                .certificates;
            let rows = certs
                .iter()
                .map(|c| {
                    vec![
                        c.name.clone(),
                        c.names.join(","),
                        c.not_after.clone(),
                        c.status.clone(),
                        c.source.clone(),
                        covers_text(c),
                    ]
                })
                .collect();
            let doc = Value::Array(certs.iter().map(cert_json).collect());
            listing(
                output,
                doc,
                &["NAME", "NAMES", "NOT AFTER", "STATUS", "SOURCE", "COVERS"],
                rows,
            );
        }
        CertCommand::Show { name } => {
            let info = client
                .cert_show(proto::CertName { name })
                .await
                .map_err(refused)?
                .into_inner();
            let text = format!("certificate {}\n{}", info.name, details(&info));
            done(output, cert_json(&info), text);
        }
        CertCommand::Remove { name } => {
            let info = client
                .cert_remove(proto::CertName { name })
                .await
                .map_err(refused)?
                .into_inner();
            done(
                output,
                json!({ "removed": info.name, "fingerprint": info.fingerprint }),
                format!("certificate {} removed", info.name),
            );
        }
        CertCommand::Reload => {
            let reply = client
                .cert_reload(proto::Empty {})
                .await
                .map_err(refused)?
                .into_inner();
            let loaded: Vec<&str> = reply.loaded.iter().map(|c| c.name.as_str()).collect();
            let mut text = format!(
                "{} certificate(s) loaded from tls.cert_dir{}{}",
                loaded.len(),
                if loaded.is_empty() { "" } else { ": " },
                loaded.join(", ")
            );
            for skipped in &reply.refused {
                text.push_str(&format!("\nskipped {}: {}", skipped.file, skipped.problem));
            }
            let doc = json!({
                "loaded": reply.loaded.iter().map(cert_json).collect::<Vec<_>>(),
                "refused": reply.refused.iter().map(|r| json!({ "file": r.file, "problem": r.problem })).collect::<Vec<_>>(),
            });
            done(output, doc, text);
        }
        CertCommand::Check { host } => {
            let reply = client
                .cert_check(proto::CertCheckRequest { host })
                .await
                .map_err(refused)?
                .into_inner();
            let doc = json!({
                "host": reply.host,
                "reason": reply.reason,
                "certificate": reply.certificate.as_ref().map(cert_json),
                "detail": reply.detail,
            });
            done(output, doc, reply.detail.clone());
        }
    }
    Ok(())
}

/// `shop.example.com (shop), *.shop.example.com (shop previews)`, or `-`.
fn covers_text(info: &proto::CertInfo) -> String {
    if info.covers.is_empty() {
        return "-".to_string();
    }
    info.covers
        .iter()
        .map(|c| match c.kind.as_str() {
            "previews" => format!("{} ({} previews)", c.host, c.app),
            _ => format!("{} ({})", c.host, c.app),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn details(info: &proto::CertInfo) -> String {
    let mut text = format!(
        "  names:       {}\n  not before:  {}\n  not after:   {} ({})\n  issuer:      {}\n  fingerprint: sha256 {}\n  source:      {}",
        info.names.join(", "),
        info.not_before,
        info.not_after,
        info.status,
        info.issuer,
        info.fingerprint,
        info.source,
    );
    if let Some(file) = &info.file {
        text.push_str(&format!(" ({file})"));
    }
    text.push_str(&format!("\n  covers:      {}", covers_text(info)));
    text
}

fn cert_json(info: &proto::CertInfo) -> Value {
    json!({
        "name": info.name,
        "names": info.names,
        "not_before": info.not_before,
        "not_before_unix": info.not_before_unix,
        "not_after": info.not_after,
        "not_after_unix": info.not_after_unix,
        "status": info.status,
        "source": info.source,
        "file": info.file,
        "issuer": info.issuer,
        "subject": info.subject,
        "fingerprint": info.fingerprint,
        "covers": info.covers.iter().map(|c| json!({ "host": c.host, "app": c.app, "kind": c.kind })).collect::<Vec<_>>(),
    })
}

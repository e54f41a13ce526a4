//! `tls.cert_dir`: certificates kept as files beside the API's. Two layouts:
//! `NAME.crt` + `NAME.key`, or `NAME/fullchain.pem` + `NAME/privkey.pem` (the
//! layout of certbot's `live/` directory). A file that cannot be used is
//! reported (naming the file and the problem) and skipped; the rest load.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use ingress_proxy::tls::{CertSource, Certificate};

/// The largest certificate or key file read: a full chain is a few KiB.
pub const MAX_PEM_BYTES: u64 = 1024 * 1024;

/// A certificate loaded from `tls.cert_dir`, with the file it came from.
#[derive(Debug, Clone)]
pub struct DirCert {
    pub cert: Arc<Certificate>,
    /// The certificate (chain) file.
    pub file: String,
}

/// A file of `tls.cert_dir` that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub file: String,
    pub problem: String,
}

/// What one scan of `tls.cert_dir` found.
#[derive(Debug, Default)]
pub struct Scan {
    /// By certificate name.
    pub certs: BTreeMap<String, DirCert>,
    pub refused: Vec<Refused>,
}

/// What the files of a directory looked like (name, modification time, size):
/// polling rescans only when this changes.
pub type Stamp = Vec<(PathBuf, Option<SystemTime>, u64)>;

/// The stamp of `dir` now: every file and subdirectory a scan would read.
pub fn stamp(dir: &Path) -> Stamp {
    let mut stamp = Stamp::new();
    let mut note = |path: PathBuf| {
        let metadata = std::fs::metadata(&path).ok();
        let modified = metadata.as_ref().and_then(|m| m.modified().ok());
        let len = metadata.map_or(0, |m| m.len());
        stamp.push((path, modified, len));
    };
    for path in entries(dir).unwrap_or_default() {
        if path.is_dir() {
            note(path.join("fullchain.pem"));
            note(path.join("privkey.pem"));
        }
        note(path);
    }
    stamp
}

/// The entries of `dir` that are not hidden, sorted by name.
fn entries(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .filter(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| !name.starts_with('.'))
        })
        .collect();
    paths.sort();
    Ok(paths)
}

/// Loads every certificate of `dir`.
pub fn scan(dir: &Path) -> Scan {
    let mut scan = Scan::default();
    let paths = match entries(dir) {
        Ok(paths) => paths,
        Err(e) => {
            scan.refused.push(Refused {
                file: dir.display().to_string(),
                problem: format!("cannot read the directory (tls.cert_dir): {e}"),
            });
            return scan;
        }
    };
    for path in &paths {
        let Some(file_name) = path.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let pair = if path.is_dir() {
            Some((
                file_name.to_string(),
                path.join("fullchain.pem"),
                path.join("privkey.pem"),
            ))
        } else if let Some(name) = file_name.strip_suffix(".crt") {
            Some((name.to_string(), path.clone(), path.with_extension("key")))
        } else if let Some(name) = file_name.strip_suffix(".key") {
            let chain = path.with_extension("crt");
            if !chain.exists() {
                scan.refused.push(Refused {
                    file: path.display().to_string(),
                    problem: format!("has no {name}.crt beside it; a certificate is NAME.crt with NAME.key, or NAME/fullchain.pem with NAME/privkey.pem"),
                });
            }
            None // loaded with its .crt
        } else {
            None // other files (a CA bundle, a README) are not certificates
        };
        let Some((name, chain, key)) = pair else {
            continue;
        };
        match load_pair(&name, &chain, &key) {
            Ok(cert) => {
                if let Some(first) = scan.certs.get(&name) {
                    scan.refused.push(Refused {
                        file: chain.display().to_string(),
                        problem: format!(
                            "the certificate name {name} is already taken by {}",
                            first.file
                        ),
                    });
                } else {
                    let file = chain.display().to_string();
                    scan.certs.insert(name, DirCert { cert, file });
                }
            }
            Err(refused) => scan.refused.push(refused),
        }
    }
    scan
}

fn load_pair(name: &str, chain: &Path, key: &Path) -> Result<Arc<Certificate>, Refused> {
    let refused = |path: &Path, problem: String| Refused {
        file: path.display().to_string(),
        problem,
    };
    if !ingress_config::is_cert_name(name) {
        return Err(refused(
            chain,
            format!(
                "{name:?} is not a certificate name; {}",
                ingress_config::CERT_NAME_RULE
            ),
        ));
    }
    let chain_pem = read(chain).map_err(|problem| refused(chain, problem))?;
    let key_pem = read(key).map_err(|problem| refused(key, problem))?;
    Certificate::from_pem(name, CertSource::Dir, &chain_pem, &key_pem)
        .map(Arc::new)
        .map_err(|e| refused(chain, e.0))
}

/// A PEM file's bytes, refusing a missing, unreadable or oversized one.
fn read(path: &Path) -> Result<Vec<u8>, String> {
    let metadata = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => "is missing".to_string(),
        _ => format!("cannot be read: {e}"),
    })?;
    if metadata.len() > MAX_PEM_BYTES {
        return Err(format!(
            "is {} bytes; a PEM file may be at most {MAX_PEM_BYTES} bytes",
            metadata.len()
        ));
    }
    std::fs::read(path).map_err(|e| format!("cannot be read: {e}"))
}

//! The certificate manager against a real SQLite store and a real control
//! plane, with certificates made by rcgen.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use ingress_proxy::tls::{CertStore, Reason};
use ingress_proxy::SnapshotHandle;

use super::*;
use crate::control_plane::{DeployRequest, DeploySource, PlaneSettings};
use crate::metrics::ControlMetrics;
use crate::store::SqliteStore;

/// 2026-12-02T00:00:00Z, in milliseconds.
const NOW_MS: u64 = 1_796_169_600_000;

struct Pem {
    chain: String,
    key: String,
}

/// A self-signed leaf for `names`, valid 2020–2100, or 2020–2021 when `expired`.
fn leaf(names: &[&str], expired: bool) -> Pem {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = if expired {
        rcgen::date_time_ymd(2021, 1, 1)
    } else {
        rcgen::date_time_ymd(2100, 1, 1)
    };
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    Pem {
        chain: cert.pem(),
        key: key.serialize_pem(),
    }
}

fn add_request(pem: &Pem, name: Option<&str>) -> CertAdd {
    CertAdd {
        chain_pem: pem.chain.clone().into_bytes(),
        key_pem: pem.key.clone().into_bytes(),
        name: name.map(str::to_string),
        force: false,
    }
}

fn write(dir: &Path, file: &str, text: &str) {
    if let Some(parent) = dir.join(file).parent() {
        std::fs::create_dir_all(parent).unwrap();
    }
    std::fs::write(dir.join(file), text).unwrap();
}

struct Harness {
    certs: Arc<Certs>,
    store: Arc<CertStore>,
    plane: Arc<ControlPlane>,
    dir: tempfile::TempDir,
}

fn open_in(dir: tempfile::TempDir, tls: ingress_config::TlsSettings) -> Harness {
    let mut config = ingress_config::Config::default();
    config.store.data_dir = dir.path().join("data");
    config.tls = Some(tls);
    let clock = Arc::new(AtomicU64::new(NOW_MS));
    let plane = ControlPlane::open(
        Box::new(SqliteStore::open(&config.store.data_dir).unwrap()),
        Arc::new(SnapshotHandle::new()),
        PlaneSettings::from_config(&config),
        Arc::new(ControlMetrics::unregistered()),
        Arc::new(move || clock.load(Ordering::Relaxed)),
    )
    .unwrap();
    let store = Arc::new(CertStore::from_config(&config, None));
    let certs = Certs::open(
        Arc::clone(&plane),
        Arc::clone(&store),
        CertSettings::from_config(&config),
    );
    Harness {
        certs,
        store,
        plane,
        dir,
    }
}

fn tls_with_dir(dir: &Path) -> ingress_config::TlsSettings {
    ingress_config::TlsSettings {
        cert_dir: Some(dir.join("certs")),
        ..Default::default()
    }
}

fn open() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let tls = tls_with_dir(dir.path());
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    open_in(dir, tls)
}

fn names(views: &[CertView]) -> Vec<String> {
    views.iter().map(|v| v.name.clone()).collect()
}

#[test]
fn the_default_name_is_the_first_dns_name_with_wildcards_spelled_out() {
    let default =
        |names: &[&str]| default_name(&names.iter().map(|n| n.to_string()).collect::<Vec<_>>());
    assert_eq!(
        default(&["*.shop.example.com", "shop.example.com"]).as_deref(),
        Some("wildcard.shop.example.com")
    );
    assert_eq!(
        default(&["shop.example.com", "*.shop.example.com"]).as_deref(),
        Some("shop.example.com")
    );
    assert_eq!(default(&[]), None);
    assert!(ingress_config::is_cert_name("wildcard.shop.example.com"));
}

#[test]
fn cert_dir_loads_both_layouts_and_skips_bad_files_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    let good = leaf(&["a.example.com"], false);
    let other = leaf(&["b.example.com", "*.b.example.com"], false);
    write(dir.path(), "a.crt", &good.chain);
    write(dir.path(), "a.key", &good.key);
    write(dir.path(), "b.example.com/fullchain.pem", &other.chain);
    write(dir.path(), "b.example.com/privkey.pem", &other.key);
    write(dir.path(), "lonely.crt", &good.chain);
    write(dir.path(), "orphan.key", &good.key);
    write(dir.path(), "garbage.crt", "not PEM at all");
    write(dir.path(), "garbage.key", &good.key);
    write(dir.path(), "mismatch.crt", &good.chain);
    write(dir.path(), "mismatch.key", &other.key);
    write(dir.path(), "Bad_Name.crt", &good.chain);
    write(dir.path(), "Bad_Name.key", &good.key);
    write(dir.path(), "half/fullchain.pem", &good.chain);
    write(dir.path(), "README", "certbot's readme");
    write(dir.path(), "ca.pem", &good.chain);
    write(dir.path(), ".hidden.crt", "ignored");

    let scan = dir::scan(dir.path());
    assert_eq!(
        scan.certs.keys().collect::<Vec<_>>(),
        ["a", "b.example.com"]
    );
    assert_eq!(scan.certs["b.example.com"].cert.source, CertSource::Dir);
    assert!(scan.certs["b.example.com"]
        .file
        .ends_with("b.example.com/fullchain.pem"));
    let refused: Vec<(String, String)> = scan
        .refused
        .iter()
        .map(|r| {
            let file = Path::new(&r.file);
            let parent = file.parent().and_then(|p| p.file_name()).unwrap();
            let name = file.file_name().unwrap().to_string_lossy().into_owned();
            let name = if parent == dir.path().file_name().unwrap() {
                name
            } else {
                format!("{}/{name}", parent.to_string_lossy())
            };
            (name, r.problem.clone())
        })
        .collect();
    let problem = |file: &str| {
        refused
            .iter()
            .find(|(f, _)| f == file)
            .map(|(_, p)| p.clone())
            .unwrap_or_else(|| panic!("{file} not refused: {refused:?}"))
    };
    assert!(problem("Bad_Name.crt").contains("not a certificate name"));
    assert!(problem("garbage.crt").contains("PEM"));
    assert!(problem("half/privkey.pem").contains("missing"));
    assert!(problem("lonely.key").contains("missing"));
    assert!(problem("mismatch.crt").contains("does not match"));
    assert!(problem("orphan.key").contains("has no orphan.crt"));
    assert_eq!(refused.len(), 6, "{refused:?}");
    for (_, problem) in &refused {
        assert!(!problem.contains("PRIVATE KEY-----"), "{problem}");
    }
}

#[test]
fn add_list_show_check_and_remove() {
    let h = open();
    let apex = leaf(&["shop.example.com"], false);
    let wild = leaf(&["*.shop.example.com"], false);
    h.plane.create_app("admin", "shop").unwrap();
    h.plane
        .add_route("admin", "shop.example.com", "shop")
        .unwrap();
    h.plane.add_route("admin", "*.example.org", "shop").unwrap();

    let added = h.certs.add("admin", add_request(&apex, None)).unwrap();
    assert_eq!(added.name, "shop.example.com");
    assert_eq!(added.source, "api");
    assert_eq!(added.status, CertStatus::Ok);
    assert_eq!(added.covers.len(), 1);
    assert_eq!(added.covers[0].kind, "exact");
    let added = h.certs.add("admin", add_request(&wild, None)).unwrap();
    assert_eq!(added.name, "wildcard.shop.example.com");
    assert_eq!(
        added.covers,
        vec![Cover {
            host: "*.shop.example.com".into(),
            app: "shop".into(),
            kind: "previews",
        }]
    );
    assert_eq!(
        names(&h.certs.list()),
        ["shop.example.com", "wildcard.shop.example.com"]
    );
    assert_eq!(h.store.load().len(), 2, "published");
    assert_eq!(
        h.certs.show("shop.example.com").unwrap().fingerprint,
        h.store.load().get("shop.example.com").unwrap().fingerprint
    );
    assert_eq!(h.certs.show("nope").unwrap_err().kind, ErrorKind::NotFound);

    let check = |host: &str| h.certs.check(host).unwrap();
    assert_eq!(check("Shop.Example.com:8443").reason, Reason::Exact);
    assert_eq!(check("shop.example.com").host, "shop.example.com");
    let preview = check("pr-1.shop.example.com");
    assert_eq!(preview.reason, Reason::Wildcard);
    assert_eq!(
        preview.cert.map(|c| c.name).as_deref(),
        Some("wildcard.shop.example.com")
    );
    assert_eq!(check("a.b.shop.example.com").reason, Reason::Rejected);
    assert_eq!(check("other.example.net").reason, Reason::Rejected);
    assert_eq!(check("").reason, Reason::Rejected);
    assert_eq!(
        h.certs.check("bad host!").unwrap_err().kind,
        ErrorKind::InvalidArgument
    );

    let removed = h.certs.remove("admin", "shop.example.com").unwrap();
    assert_eq!(removed.name, "shop.example.com");
    assert_eq!(names(&h.certs.list()), ["wildcard.shop.example.com"]);
    assert_eq!(check("shop.example.com").reason, Reason::Rejected);
    assert_eq!(
        h.certs
            .remove("admin", "shop.example.com")
            .unwrap_err()
            .kind,
        ErrorKind::NotFound
    );

    let audit = h.plane.audit_log(10).unwrap();
    let actions: Vec<(&str, &str)> = audit
        .iter()
        .map(|e| (e.action.as_str(), e.target.as_str()))
        .collect();
    assert_eq!(
        &actions[..3],
        [
            ("cert.remove", "shop.example.com"),
            ("cert.add", "wildcard.shop.example.com"),
            ("cert.add", "shop.example.com"),
        ]
    );
    for entry in &audit {
        assert!(!entry.detail.contains("PRIVATE KEY"), "{entry:?}");
        assert!(!entry.detail.contains(&apex.key[40..80]), "{entry:?}");
    }
}

#[test]
fn bad_input_is_refused_with_one_line_and_changes_nothing() {
    let h = open();
    let good = leaf(&["shop.example.com"], false);
    let other = leaf(&["shop.example.com"], false);
    h.certs
        .add("admin", add_request(&good, Some("shop")))
        .unwrap();
    let audit_before = h.plane.audit_log(100).unwrap().len();
    let fingerprint = h.store.load().get("shop").unwrap().fingerprint.clone();

    let ip_only = leaf(&["127.0.0.1"], false);
    let expired = leaf(&["shop.example.com"], true);
    let cases = [
        (
            "key mismatch",
            CertAdd {
                key_pem: other.key.clone().into_bytes(),
                ..add_request(&good, Some("shop"))
            },
            "does not match",
        ),
        (
            "garbage PEM",
            CertAdd {
                chain_pem: b"garbage".to_vec(),
                ..add_request(&good, Some("shop"))
            },
            "PEM",
        ),
        (
            "garbage key",
            CertAdd {
                key_pem: b"garbage".to_vec(),
                ..add_request(&good, Some("shop"))
            },
            "private key",
        ),
        ("no DNS SAN", add_request(&ip_only, Some("shop")), "DNS"),
        ("expired", add_request(&expired, Some("shop")), "--force"),
        (
            "bad name",
            add_request(&good, Some("Shop/1")),
            "certificate name",
        ),
        (
            "not text",
            CertAdd {
                chain_pem: vec![0xff, 0xfe],
                ..add_request(&good, Some("shop"))
            },
            "not PEM text",
        ),
        (
            "too big",
            CertAdd {
                chain_pem: vec![b'a'; 2 * 1024 * 1024],
                ..add_request(&good, Some("shop"))
            },
            "at most",
        ),
    ];
    for (what, request, expected) in cases {
        let error = h.certs.add("admin", request).unwrap_err();
        assert_eq!(error.kind, ErrorKind::InvalidArgument, "{what}");
        assert!(
            error.message.contains(expected),
            "{what}: {}",
            error.message
        );
        assert!(!error.message.contains('\n'), "{what}: one line");
        assert!(!error.message.contains("PRIVATE KEY"), "{what}");
    }
    assert_eq!(h.plane.audit_log(100).unwrap().len(), audit_before);
    assert_eq!(h.store.load().get("shop").unwrap().fingerprint, fingerprint);
    assert_eq!(h.plane.stored_certificates().len(), 1);
    assert_eq!(h.plane.stored_certificates()[0].fingerprint, fingerprint);

    // --force takes the expired one, and says so in the audit.
    let forced = h
        .certs
        .add(
            "admin",
            CertAdd {
                force: true,
                ..add_request(&expired, Some("old"))
            },
        )
        .unwrap();
    assert_eq!(forced.status, CertStatus::Expired);
    assert!(h.plane.audit_log(1).unwrap()[0].detail.contains("--force"));
}

#[test]
fn certificates_survive_a_reopen_and_a_replacement_is_atomic_by_name() {
    let h = open();
    let first = leaf(&["shop.example.com"], false);
    let second = leaf(&["shop.example.com", "www.shop.example.com"], false);
    h.certs
        .add("admin", add_request(&first, Some("shop")))
        .unwrap();
    let replaced = h
        .certs
        .add("admin", add_request(&second, Some("shop")))
        .unwrap();
    assert_eq!(replaced.names.len(), 2);
    assert!(h.plane.audit_log(1).unwrap()[0]
        .detail
        .contains("replaced fingerprint"));
    let Harness {
        dir, plane, certs, ..
    } = h;
    drop(certs);
    plane.shutdown();
    drop(plane);
    let tls = tls_with_dir(dir.path());
    let h = open_in(dir, tls);
    let shown = h.certs.show("shop").unwrap();
    assert_eq!(shown.fingerprint, replaced.fingerprint);
    assert_eq!(h.store.load().len(), 1);
    assert_eq!(
        h.certs.check("www.shop.example.com").unwrap().reason,
        Reason::Exact
    );
}

#[test]
fn cert_dir_reload_polling_and_api_certificates_winning_by_name() {
    let h = open();
    let certs_dir = h.dir.path().join("certs");
    assert!(h.certs.reload_if_changed().is_none(), "nothing changed");
    let from_dir = leaf(&["dir.example.com"], false);
    write(&certs_dir, "site.crt", &from_dir.chain);
    write(&certs_dir, "site.key", &from_dir.key);
    write(&certs_dir, "broken.crt", "nope");
    write(&certs_dir, "broken.key", "nope");
    let report = h.certs.reload_if_changed().expect("the files changed");
    assert_eq!(names(&report.loaded), ["site"]);
    assert_eq!(report.refused.len(), 1);
    assert!(report.refused[0].file.ends_with("broken.crt"));
    assert!(h.certs.reload_if_changed().is_none(), "scanned already");
    let listed = h.certs.show("site").unwrap();
    assert_eq!(listed.source, "dir");
    assert!(listed
        .file
        .as_deref()
        .is_some_and(|f| f.ends_with("site.crt")));

    // An API certificate of the same name wins; removing it brings the file back.
    let api = leaf(&["api.example.com"], false);
    h.certs
        .add("admin", add_request(&api, Some("site")))
        .unwrap();
    assert_eq!(h.certs.show("site").unwrap().source, "api");
    assert_eq!(h.certs.list().len(), 1);
    assert_eq!(
        h.certs.check("dir.example.com").unwrap().reason,
        Reason::Rejected
    );
    h.certs.remove("admin", "site").unwrap();
    assert_eq!(h.certs.show("site").unwrap().source, "dir");
    assert_eq!(
        h.certs.check("dir.example.com").unwrap().reason,
        Reason::Exact
    );
    // A cert_dir certificate is removed by deleting its files.
    let error = h.certs.remove("admin", "site").unwrap_err();
    assert_eq!(error.kind, ErrorKind::NotFound);
    assert!(error.message.contains("tls.cert_dir"), "{}", error.message);
    std::fs::remove_file(certs_dir.join("site.crt")).unwrap();
    std::fs::remove_file(certs_dir.join("site.key")).unwrap();
    let report = h.certs.reload(Some("admin")).unwrap();
    assert!(report.loaded.is_empty());
    assert!(h.certs.show("site").is_err());
    assert_eq!(h.plane.audit_log(1).unwrap()[0].action, "cert.reload");
}

#[test]
fn the_default_certificate_serves_unknown_names_and_cannot_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let tls = ingress_config::TlsSettings {
        unknown_sni: ingress_config::UnknownSni::Default,
        default_cert: "fallback".into(),
        ..Default::default()
    };
    let h = open_in(dir, tls);
    assert_eq!(
        h.certs.check("any.example.net").unwrap().reason,
        Reason::Rejected
    );
    let fallback = leaf(&["fallback.example.com"], false);
    h.certs
        .add("admin", add_request(&fallback, Some("fallback")))
        .unwrap();
    let check = h.certs.check("any.example.net").unwrap();
    assert_eq!(check.reason, Reason::Default);
    assert!(check.detail.contains("fallback"), "{}", check.detail);
    assert_eq!(h.certs.check("").unwrap().reason, Reason::Default);
    let error = h.certs.remove("admin", "fallback").unwrap_err();
    assert_eq!(error.kind, ErrorKind::FailedPrecondition);
    assert!(
        error.message.contains("tls.default_cert"),
        "{}",
        error.message
    );
    assert!(h.certs.show("fallback").is_ok());
}

#[test]
fn urls_are_https_for_hosts_a_certificate_covers() {
    let dir = tempfile::tempdir().unwrap();
    let tls = ingress_config::TlsSettings {
        listen: "127.0.0.1:8443".parse().unwrap(),
        ..Default::default()
    };
    let h = open_in(dir, tls);
    h.plane.create_app("admin", "shop").unwrap();
    h.plane
        .add_route("admin", "shop.example.com", "shop")
        .unwrap();
    h.plane
        .add_route("admin", "shop.example.net", "shop")
        .unwrap();
    let deploy = |label: Option<&str>| {
        h.plane
            .deploy(
                "admin",
                &DeployRequest {
                    app: "shop".into(),
                    source: DeploySource::Upstreams(vec!["127.0.0.1:3000".parse().unwrap()]),
                    env: None,
                    branch: None,
                    ephemeral: label.map(|l| (l.to_string(), None)),
                },
            )
            .unwrap()
            .version
            .urls
    };
    assert_eq!(
        deploy(None),
        ["http://shop.example.com", "http://shop.example.net"]
    );
    let wild = leaf(&["shop.example.com", "*.shop.example.com"], false);
    h.certs.add("admin", add_request(&wild, None)).unwrap();
    assert_eq!(
        deploy(None),
        ["https://shop.example.com:8443", "http://shop.example.net"]
    );
    assert_eq!(
        deploy(Some("pr-1")),
        [
            "https://pr-1.shop.example.com:8443",
            "http://pr-1.shop.example.net"
        ]
    );
    let versions = h.plane.versions("shop", true).unwrap();
    assert_eq!(versions[0].urls[0], "https://pr-1.shop.example.com:8443");
}

//! The dashboard's endpoints straight through [`Dashboard::handle`]: tokens and
//! roles as in gRPC, the CLI's stop guard, and a clear JSON error for every bad
//! request.

use std::net::SocketAddr;

use http_body_util::BodyExt;
use ingress_proxy::SnapshotHandle;

use super::*;
use crate::control_plane::{DeployRequest, DeploySource, PlaneSettings};
use crate::grpc::Token;
use crate::metrics::ControlMetrics;
use crate::scopes::Role;
use crate::store::SqliteStore;

const ADMIN: &str = "admin-secret-0123456789";
const READ: &str = "read-secret-0123456789";
const REPLICA: &str = "replica-secret-0123456789";

fn dashboard(dir: &std::path::Path) -> Dashboard {
    let mut config = ingress_config::Config::default();
    config.store.data_dir = dir.join("data");
    let plane = ControlPlane::open(
        Box::new(SqliteStore::open(&config.store.data_dir).unwrap()),
        Arc::new(SnapshotHandle::new()),
        PlaneSettings::from_config(&config),
        Arc::new(ControlMetrics::unregistered()),
        Arc::new(ingress_proxy::time::now_unix_millis),
    )
    .unwrap();
    let token = |name: &str, secret: &str, role| Token {
        name: name.to_string(),
        secret: secret.to_string(),
        role,
    };
    let authenticator = Authenticator::new(vec![
        token("ops", ADMIN, Role::Admin),
        token("ci", READ, Role::Read),
        token("edge", REPLICA, Role::Replica),
    ]);
    let metrics: Arc<dyn Fn() -> String + Send + Sync> = Arc::new(|| {
        "# HELP ingress_requests_total x\n\
         ingress_requests_total{kind=\"exact\",status=\"2xx\"} 7\n\
         ingress_requests_total{kind=\"label\",status=\"5xx\"} 2\n\
         ingress_requests_total{kind=\"not_found\",status=\"4xx\"} 1\n\
         ingress_wakes_total{result=\"ready\"} 3\n\
         ingress_wake_seconds_sum 0.3\n\
         ingress_wake_seconds_count 2\n"
            .to_string()
    });
    Dashboard::new(plane, authenticator, metrics)
}

/// `shop` on `shop.example.com`, active static version, and a preview `pr-1`.
fn shop(dashboard: &Dashboard) -> (String, String) {
    let plane = &dashboard.plane;
    plane.create_app("ops", "shop").unwrap();
    plane.add_route("ops", "shop.example.com", "shop").unwrap();
    let upstream: SocketAddr = "127.0.0.1:9".parse().unwrap();
    let deploy = |ephemeral: Option<(String, Option<String>)>| DeployRequest {
        app: "shop".into(),
        source: DeploySource::Upstreams(vec![upstream]),
        env: None,
        branch: ephemeral.as_ref().map(|_| "feature/<b>".to_string()),
        ephemeral,
    };
    let active = plane.deploy("ops", &deploy(None)).unwrap().version.id;
    let preview = plane
        .deploy("ops", &deploy(Some(("pr-1".into(), None))))
        .unwrap()
        .version
        .id;
    (active, preview)
}

async fn call(
    dashboard: &Dashboard,
    method: &str,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: &str,
) -> (u16, Value) {
    let mut builder = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if let Some(content_type) = content_type {
        builder = builder.header("content-type", content_type);
    }
    let request = builder
        .body(Full::new(Bytes::from(body.to_string())))
        .unwrap();
    let response = dashboard.handle(request).await;
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, value)
}

async fn get(dashboard: &Dashboard, path: &str, token: Option<&str>) -> (u16, Value) {
    call(dashboard, "GET", path, token, None, "").await
}

async fn post(dashboard: &Dashboard, path: &str, token: &str, body: &str) -> (u16, Value) {
    call(
        dashboard,
        "POST",
        path,
        Some(token),
        Some("application/json"),
        body,
    )
    .await
}

fn error(value: &Value) -> &str {
    value["error"].as_str().unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_is_served_without_a_token_and_loads_nothing_from_elsewhere() {
    let dir = tempfile::tempdir().unwrap();
    let dashboard = dashboard(dir.path());
    for (path, kind) in [
        ("/ui", "text/html"),
        ("/ui/", "text/html"),
        ("/ui/app.js", "text/javascript"),
        ("/ui/style.css", "text/css"),
    ] {
        let request = Request::get(path).body(Full::new(Bytes::new())).unwrap();
        let response = dashboard.handle(request).await;
        assert_eq!(response.status(), 200, "{path}");
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string()
        };
        assert!(header("content-type").starts_with(kind), "{path}");
        assert!(header("content-security-policy").contains("default-src 'none'"));
        assert_eq!(header("cache-control"), "no-store");
    }
    for text in [INDEX_HTML, APP_JS, STYLE_CSS] {
        for remote in ["src=\"http", "href=\"http", "src=\"//", "url(", "@import"] {
            assert!(!text.contains(remote), "the page loads {remote}...");
        }
        assert!(!text.contains("innerHTML"), "values must go in as text");
    }
    let (status, _) = call(&dashboard, "POST", "/ui", None, None, "").await;
    assert_eq!(status, 405);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_needs_a_valid_bearer_token() {
    let dir = tempfile::tempdir().unwrap();
    let dashboard = dashboard(dir.path());
    let (status, body) = get(&dashboard, "/ui/api/apps", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["code"], "unauthenticated");
    assert!(error(&body).contains("missing bearer token"), "{body}");
    let (status, body) = get(&dashboard, "/ui/api/apps", Some("wrong-secret")).await;
    assert_eq!(status, 401);
    assert_eq!(error(&body), "the bearer token is not valid");
    // A replica token may not list.
    let (status, body) = get(&dashboard, "/ui/api/session", Some(REPLICA)).await;
    assert_eq!(status, 403, "{body}");
    assert!(error(&body).contains("needs role admin or read"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_token_sees_everything_and_may_not_stop_or_wake() {
    let dir = tempfile::tempdir().unwrap();
    let dashboard = dashboard(dir.path());
    let (_, preview) = shop(&dashboard);
    let (status, session) = get(&dashboard, "/ui/api/session", Some(READ)).await;
    assert_eq!(status, 200);
    assert_eq!(session["name"], "ci");
    assert_eq!(session["role"], "read");
    assert_eq!(session["can_stop"], false);
    assert_eq!(session["can_wake"], false);
    let (status, apps) = get(&dashboard, "/ui/api/apps", Some(READ)).await;
    assert_eq!(status, 200, "{apps}");
    let app = &apps["apps"][0];
    assert_eq!(app["name"], "shop");
    assert_eq!(app["hosts"][0]["host"], "shop.example.com");
    let versions = app["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2, "{apps}");
    let row = versions
        .iter()
        .find(|v| v["id"] == preview.as_str())
        .unwrap();
    assert_eq!(row["label"], "pr-1");
    assert_eq!(row["branch"], "feature/<b>");
    assert_eq!(row["urls"][0], "http://pr-1.shop.example.com");
    assert_eq!(
        row["desired_state"], "stopped",
        "a preview sleeps until woken"
    );
    assert!(row["expires_at_ms"].as_u64().is_some());
    assert_eq!(apps["total_apps"], 1);
    assert_eq!(apps["matched_apps"], 1);
    dashboard.plane.create_app("ops", "blog").unwrap();
    let (status, some) = get(&dashboard, "/ui/api/apps?q=ho&limit=1", Some(READ)).await;
    assert_eq!(status, 200, "{some}");
    assert_eq!(some["total_apps"], 2);
    assert_eq!(some["matched_apps"], 1);
    assert_eq!(some["apps"][0]["name"], "shop");
    let (_, first) = get(&dashboard, "/ui/api/apps?limit=1", Some(READ)).await;
    assert_eq!(first["matched_apps"], 2);
    assert_eq!(first["apps"].as_array().map(Vec::len), Some(1));
    assert_eq!(first["apps"][0]["name"], "blog", "by name");
    let (status, audit) = get(&dashboard, "/ui/api/audit?limit=2", Some(READ)).await;
    assert_eq!(status, 200);
    assert_eq!(audit["entries"].as_array().unwrap().len(), 2);

    let audit_before = dashboard.plane.audit_log(1000).unwrap().len();
    for action in ["stop", "wake"] {
        let body = format!("{{\"app\":\"shop\",\"version\":\"{preview}\"}}");
        let (status, refusal) = post(&dashboard, &format!("/ui/api/{action}"), READ, &body).await;
        assert_eq!(status, 403, "{refusal}");
        assert_eq!(refusal["code"], "permission_denied");
        assert!(
            error(&refusal).starts_with("token \"ci\" has role read")
                && error(&refusal).ends_with("needs role admin"),
            "the gRPC refusal: {refusal}"
        );
    }
    assert_eq!(dashboard.plane.audit_log(1000).unwrap().len(), audit_before);
    let (_, apps) = get(&dashboard, "/ui/api/apps?q=shop", Some(READ)).await;
    let row = apps["apps"][0]["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == preview.as_str())
        .cloned()
        .unwrap();
    assert_eq!(row["desired_state"], "stopped", "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_stops_and_wakes_with_the_cli_guards() {
    let dir = tempfile::tempdir().unwrap();
    let dashboard = dashboard(dir.path());
    let (active, preview) = shop(&dashboard);
    let (_, session) = get(&dashboard, "/ui/api/session", Some(ADMIN)).await;
    assert_eq!(session["can_stop"], true);

    let body = format!("{{\"app\":\"shop\",\"version\":\"{preview}\"}}");
    let (status, woken) = post(&dashboard, "/ui/api/wake", ADMIN, &body).await;
    assert_eq!(status, 200, "{woken}");
    assert_eq!(woken["desired_state"], "running");
    let (status, stopped) = post(&dashboard, "/ui/api/stop", ADMIN, &body).await;
    assert_eq!(status, 200, "{stopped}");
    assert_eq!(stopped["desired_state"], "stopped");
    let audit = dashboard.plane.audit_log(2).unwrap();
    assert_eq!(audit[0].action, "version.stop");
    assert_eq!(audit[0].actor, "ops");
    assert_eq!(audit[1].action, "version.wake");

    // The active production version needs force, as `ingressctl stop --force`.
    let body = format!("{{\"app\":\"shop\",\"version\":\"{active}\"}}");
    let (status, refusal) = post(&dashboard, "/ui/api/stop", ADMIN, &body).await;
    assert_eq!(status, 409, "{refusal}");
    assert_eq!(refusal["code"], "failed_precondition");
    assert!(error(&refusal).contains("--force"), "{refusal}");
    let body = format!("{{\"app\":\"shop\",\"version\":\"{active}\",\"force\":true}}");
    let (status, stopped) = post(&dashboard, "/ui/api/stop", ADMIN, &body).await;
    assert_eq!(status, 200, "{stopped}");

    let (status, missing) = post(
        &dashboard,
        "/ui/api/stop",
        ADMIN,
        r#"{"app":"shop","version":"v-none"}"#,
    )
    .await;
    // The plane's own answer, as gRPC gives it (FailedPrecondition).
    assert_eq!(status, 409, "{missing}");
    assert!(error(&missing).contains("does not exist"), "{missing}");
    let (status, long) = post(
        &dashboard,
        "/ui/api/wake",
        ADMIN,
        &format!(
            "{{\"app\":\"shop\",\"version\":\"{preview}\",\"wait\":true,\"timeout_ms\":9999999}}"
        ),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        error(&long).starts_with("timeout_ms may be at most"),
        "{long}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_a_json_error_naming_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let dashboard = dashboard(dir.path());
    // (method, path, content type, body, status, what the error says)
    type Case<'a> = (&'a str, &'a str, Option<&'a str>, String, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "POST",
            "/ui/api/stop",
            Some("application/json"),
            "{\"app\":\"shop\"}".into(),
            400,
            "missing field `version`",
        ),
        (
            "POST",
            "/ui/api/stop",
            Some("application/json"),
            "{\"app\":\"shop\",\"version\":\"v\",\"forse\":true}".into(),
            400,
            "unknown field `forse`",
        ),
        (
            "POST",
            "/ui/api/stop",
            Some("application/json"),
            "{\"app\":1,\"version\":\"v\"}".into(),
            400,
            "invalid type: integer `1`, expected a string",
        ),
        (
            "POST",
            "/ui/api/stop",
            Some("application/json"),
            "not json".into(),
            400,
            "the body is not what was expected",
        ),
        (
            "POST",
            "/ui/api/wake",
            Some("text/plain"),
            "{}".into(),
            415,
            "content-type application/json",
        ),
        (
            "POST",
            "/ui/api/wake",
            None,
            "{}".into(),
            415,
            "content-type application/json",
        ),
        (
            "POST",
            "/ui/api/wake",
            Some("application/json"),
            "x".repeat(MAX_BODY_BYTES + 1),
            413,
            "larger than",
        ),
        (
            "GET",
            "/ui/api/stop",
            None,
            String::new(),
            405,
            "/ui/api/stop takes POST, not GET",
        ),
        (
            "DELETE",
            "/ui/api/apps",
            None,
            String::new(),
            405,
            "takes GET",
        ),
        (
            "GET",
            "/ui/api/nope",
            None,
            String::new(),
            404,
            "no dashboard endpoint \"/ui/api/nope\"",
        ),
        (
            "GET",
            "/ui/api/audit?limit=0",
            None,
            String::new(),
            400,
            "limit=\"0\" is not a number from 1 to 1000",
        ),
        (
            "GET",
            "/ui/api/audit?limit=abc",
            None,
            String::new(),
            400,
            "limit=\"abc\"",
        ),
        (
            "GET",
            "/ui/api/audit?limit=1&limit=2",
            None,
            String::new(),
            400,
            "given twice",
        ),
        (
            "GET",
            "/ui/api/audit?x=1",
            None,
            String::new(),
            400,
            "unknown parameter \"x\"; /ui/api/audit takes only limit",
        ),
        (
            "GET",
            "/ui/api/apps?all=1",
            None,
            String::new(),
            400,
            "unknown parameter \"all\"; /ui/api/apps takes only q, limit",
        ),
        (
            "GET",
            "/ui/api/apps?q=Shop",
            None,
            String::new(),
            400,
            "q=\"Shop\" cannot be part of an app name",
        ),
        (
            "GET",
            "/ui/api/apps?q=%3Cb%3E",
            None,
            String::new(),
            400,
            "cannot be part of an app name",
        ),
        (
            "GET",
            "/ui/api/apps?limit=501",
            None,
            String::new(),
            400,
            "limit=\"501\" is not a number from 1 to 500",
        ),
        (
            "GET",
            "/ui/api/session?x",
            None,
            String::new(),
            400,
            "/ui/api/session takes no parameters",
        ),
    ];
    for (method, path, content_type, body, status, message) in cases {
        let (got, answer) = call(&dashboard, method, path, Some(ADMIN), content_type, &body).await;
        assert_eq!(got, status, "{method} {path} {body:.40}: {answer}");
        assert!(
            error(&answer).contains(message),
            "{method} {path}: {answer} should say {message:?}"
        );
        assert!(answer["code"].is_string(), "{answer}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_are_read_back_from_the_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let dashboard = dashboard(dir.path());
    let (status, metrics) = get(&dashboard, "/ui/api/metrics", Some(READ)).await;
    assert_eq!(status, 200, "{metrics}");
    assert_eq!(metrics["per_app"], false);
    assert!(metrics["note"]
        .as_str()
        .unwrap()
        .contains("for the whole ingress"));
    assert_eq!(metrics["requests"]["total"], 10.0);
    assert_eq!(metrics["requests"]["by_status"]["5xx"], 2.0);
    assert_eq!(metrics["requests"]["by_kind"]["exact"], 7.0);
    assert_eq!(metrics["starts"]["ready"], 3.0);
    assert_eq!(metrics["wake_seconds"]["count"], 2.0);
}

#[test]
fn prometheus_lines() {
    use views::parse_sample;
    let sample = parse_sample("a_total{x=\"1\",y=\"q\\\"z\"} 4.5").unwrap();
    assert_eq!(sample.name, "a_total");
    assert_eq!(
        sample.labels,
        vec![("x", "1".to_string()), ("y", "q\"z".to_string())]
    );
    assert_eq!(sample.value, 4.5);
    assert_eq!(parse_sample("b 3 1700000000").unwrap().value, 3.0);
    assert!(parse_sample("# HELP b").is_none());
    assert!(parse_sample("").is_none());
    assert!(parse_sample("c{x=\"1\" 3").is_none());
    assert!(parse_sample("d{x=\"1\"} nope").is_none());
    assert!(parse_sample("e{x=\"unterminated} 1").is_none());
}

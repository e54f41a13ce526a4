//! The dashboard at `/ui` on the admin HTTP listener: one static page (HTML,
//! vanilla JavaScript and CSS, embedded with `include_str!`, nothing fetched
//! from elsewhere) and a few JSON endpoints under `/ui/api/` that it calls.
//!
//! - **Authentication** is the admin API's: the page asks for a token, keeps it
//!   in the tab's `sessionStorage` only, and sends it as `Authorization: Bearer`
//!   on every API call, checked by the same [`Authenticator`] as gRPC.
//! - **Scopes** are the gRPC ones ([`crate::scopes`]): every endpoint asks
//!   [`scopes::check`] with the call it stands for (listing: `ListApps`,
//!   `ListRoutes`, `ListVersions`; audit: `Audit`; stop and wake:
//!   `StopVersion`, `WakeVersion`), so a `read` token sees everything and is
//!   refused a stop or a wake whatever the page shows.
//! - **Stop and wake** call [`ControlPlane::stop_version`] and
//!   [`ControlPlane::wake_version`], the functions behind `ingressctl stop` and
//!   `wake`, with their guards (the active production version needs `force`).
//! - **Errors** are JSON, `{"error": "...", "code": "..."}`, naming what was
//!   wrong; nothing a client sends can panic the handler.
//!
//! The endpoints:
//!
//! | method and path | needs | answers |
//! |---|---|---|
//! | `GET /ui` | nothing | the page |
//! | `GET /ui/app.js`, `/ui/style.css` | nothing | its script and style |
//! | `GET /ui/api/session` | a token that may list apps | the token's name and role, and whether it may stop and wake |
//! | `GET /ui/api/apps?q=PART&limit=N` | `read` | apps whose name contains PART (all by default), the first N (1 to 500, default 50), with hosts, active version and previews ([`views::app_json`]), and how many apps there are and matched |
//! | `GET /ui/api/audit?limit=N` | `read` | the latest N (1 to 1000, default 50) audit entries |
//! | `GET /ui/api/metrics` | `read` | request and wake counters from `/metrics` ([`views::metrics_json`]) |
//! | `POST /ui/api/stop` `{"app", "version", "force"?}` | `admin` | the version after the stop |
//! | `POST /ui/api/wake` `{"app", "version", "wait"?, "timeout_ms"?}` | `admin` | the version after the wake |

pub mod views;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body;
use hyper::{Method, Request, Response};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::control_plane::{ControlError, ControlPlane, ErrorKind};
use crate::grpc::{Authenticator, Caller};
use crate::scopes::{self, Rpc};

/// The page.
const INDEX_HTML: &str = include_str!("index.html");
/// Its script.
const APP_JS: &str = include_str!("app.js");
/// Its style.
const STYLE_CSS: &str = include_str!("style.css");

/// The largest request body accepted (stop and wake bodies are a few dozen bytes).
const MAX_BODY_BYTES: usize = 16 * 1024;

/// The most audit entries one call returns.
pub const MAX_AUDIT_LIMIT: usize = 1000;
/// Audit entries when no `limit` is given.
const DEFAULT_AUDIT: usize = 50;
/// The most apps one call returns: each costs a pass over the versions.
pub const MAX_APPS: usize = 500;
/// Apps when no `limit` is given.
const DEFAULT_APPS: usize = 50;

/// What the page may load and talk to: only this listener, no inline script.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     connect-src 'self'; img-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'";

/// The dashboard's state: the control plane it shows and changes, the tokens it
/// accepts, and the Prometheus text of `/metrics`.
pub struct Dashboard {
    plane: Arc<ControlPlane>,
    authenticator: Authenticator,
    metrics: Arc<dyn Fn() -> String + Send + Sync>,
}

/// An answer of the API that is not a success: its status and message.
#[derive(Debug)]
struct Failure {
    status: u16,
    code: &'static str,
    message: String,
}

impl Failure {
    fn new(status: u16, code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Failure {
        Failure::new(400, "invalid_argument", message)
    }
}

impl From<ControlError> for Failure {
    fn from(error: ControlError) -> Failure {
        let (status, code) = match error.kind {
            ErrorKind::InvalidArgument => (400, "invalid_argument"),
            ErrorKind::NotFound => (404, "not_found"),
            ErrorKind::AlreadyExists => (409, "already_exists"),
            ErrorKind::FailedPrecondition => (409, "failed_precondition"),
            ErrorKind::Unavailable => (503, "unavailable"),
            ErrorKind::Internal => (500, "internal"),
        };
        Failure::new(status, code, error.message)
    }
}

/// The body of `POST /ui/api/stop`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StopBody {
    app: String,
    version: String,
    #[serde(default)]
    force: bool,
}

/// The body of `POST /ui/api/wake`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WakeBody {
    app: String,
    version: String,
    /// Wait for readiness (as `ingressctl wake` does); the page does not.
    #[serde(default)]
    wait: bool,
    /// How long to wait, 0 for `wake.timeout`.
    #[serde(default)]
    timeout_ms: u64,
}

impl Dashboard {
    /// A dashboard over `plane`, accepting the tokens of `authenticator`, with
    /// `metrics` rendering the Prometheus text that `/metrics` serves.
    pub fn new(
        plane: Arc<ControlPlane>,
        authenticator: Authenticator,
        metrics: Arc<dyn Fn() -> String + Send + Sync>,
    ) -> Dashboard {
        Dashboard {
            plane,
            authenticator,
            metrics,
        }
    }

    /// Whether `path` is the dashboard's (`/ui` and below).
    pub fn serves(path: &str) -> bool {
        path == "/ui" || path.starts_with("/ui/")
    }

    /// Answers one request for a path under `/ui`.
    pub async fn handle<B>(&self, request: Request<B>) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let path = request.uri().path().to_string();
        let method = request.method().clone();
        let asset = match path.as_str() {
            "/ui" | "/ui/" => Some(("text/html; charset=utf-8", INDEX_HTML)),
            "/ui/app.js" => Some(("text/javascript; charset=utf-8", APP_JS)),
            "/ui/style.css" => Some(("text/css; charset=utf-8", STYLE_CSS)),
            _ => None,
        };
        if let Some((content_type, body)) = asset {
            if method != Method::GET && method != Method::HEAD {
                return failure(method_not_allowed(&method, &path, "GET"));
            }
            return respond(200, content_type, Bytes::from_static(body.as_bytes()));
        }
        match self.api(request, &method, &path).await {
            Ok(value) => json_response(200, &value),
            Err(failure_) => failure(failure_),
        }
    }

    async fn api<B>(
        &self,
        request: Request<B>,
        method: &Method,
        path: &str,
    ) -> Result<Value, Failure>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let expected = match path {
            "/ui/api/session" | "/ui/api/apps" | "/ui/api/audit" | "/ui/api/metrics" => {
                Method::GET
            }
            "/ui/api/stop" | "/ui/api/wake" => Method::POST,
            _ => {
                return Err(Failure::new(
                    404,
                    "not_found",
                    format!(
                        "no dashboard endpoint {path:?}; the page is /ui, the API is /ui/api/session, /ui/api/apps, /ui/api/audit, /ui/api/metrics (GET), /ui/api/stop and /ui/api/wake (POST)"
                    ),
                ))
            }
        };
        if *method != expected {
            return Err(method_not_allowed(method, path, expected.as_str()));
        }
        let caller = self
            .authenticator
            .authenticate(
                request
                    .headers()
                    .get(hyper::header::AUTHORIZATION)
                    .map(|value| value.as_bytes()),
            )
            .map_err(|message| Failure::new(401, "unauthenticated", message))?;
        let allowed: &[&str] = match path {
            "/ui/api/audit" => &["limit"],
            "/ui/api/apps" => &["q", "limit"],
            _ => &[],
        };
        check_query(request.uri().query(), path, allowed)?;
        match path {
            "/ui/api/session" => self.session(&caller),
            "/ui/api/apps" => self.apps(&caller, request.uri().query()).await,
            "/ui/api/audit" => self.audit(&caller, request.uri().query()).await,
            "/ui/api/metrics" => self.metrics(&caller),
            "/ui/api/stop" => {
                // The scope first: a refused token learns nothing about the body.
                let actor = authorize(&caller, Rpc::StopVersion)?;
                let body: StopBody = read_json(request).await?;
                self.stop(actor, body).await
            }
            _ => {
                let actor = authorize(&caller, Rpc::WakeVersion)?;
                let body: WakeBody = read_json(request).await?;
                self.wake(actor, body).await
            }
        }
    }

    /// Who the token is and what the page may offer it.
    fn session(&self, caller: &Caller) -> Result<Value, Failure> {
        authorize(caller, Rpc::ListApps)?;
        let may = |rpc| scopes::check(&caller.name, caller.role, rpc).is_ok();
        Ok(json!({
            "name": caller.name,
            "role": caller.role.as_str(),
            "can_stop": may(Rpc::StopVersion),
            "can_wake": may(Rpc::WakeVersion),
        }))
    }

    async fn apps(&self, caller: &Caller, query: Option<&str>) -> Result<Value, Failure> {
        for rpc in [Rpc::ListApps, Rpc::ListRoutes, Rpc::ListVersions] {
            authorize(caller, rpc)?;
        }
        let filter = apps_filter(query)?;
        let limit = query_limit(query, DEFAULT_APPS, MAX_APPS)?;
        blocking(&self.plane, move |plane| {
            let all = plane.apps();
            let total = all.len();
            let matched: Vec<_> = all
                .into_iter()
                .filter(|app| app.name.contains(filter.as_str()))
                .collect();
            let routes = plane.routes();
            let mut apps = Vec::new();
            for app in matched.iter().take(limit) {
                let versions = match plane.versions(&app.name, false) {
                    Ok(versions) => versions,
                    // Deleted between the two reads: leave it out.
                    Err(e) if e.kind == ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                apps.push(views::app_json(app, &routes, &versions));
            }
            Ok(json!({
                "now_ms": ingress_proxy::time::now_unix_millis(),
                "total_apps": total,
                "matched_apps": matched.len(),
                "apps": apps,
            }))
        })
        .await
    }

    async fn audit(&self, caller: &Caller, query: Option<&str>) -> Result<Value, Failure> {
        authorize(caller, Rpc::Audit)?;
        let limit = query_limit(query, DEFAULT_AUDIT, MAX_AUDIT_LIMIT)?;
        let entries = blocking(&self.plane, move |plane| plane.audit_log(limit)).await?;
        Ok(json!({ "entries": entries.iter().map(views::audit_json).collect::<Vec<_>>() }))
    }

    fn metrics(&self, caller: &Caller) -> Result<Value, Failure> {
        authorize(caller, Rpc::ListApps)?;
        Ok(views::metrics_json(
            &(self.metrics)(),
            ingress_proxy::time::now_unix_millis(),
        ))
    }

    async fn stop(&self, actor: String, body: StopBody) -> Result<Value, Failure> {
        let StopBody {
            app,
            version,
            force,
        } = body;
        let view = blocking(&self.plane, move |plane| {
            plane.stop_version(&actor, &app, &version, force)
        })
        .await?;
        Ok(views::version_json(&view, false))
    }

    async fn wake(&self, actor: String, body: WakeBody) -> Result<Value, Failure> {
        let wait = crate::grpc::wake_wait(&self.plane, body.wait, body.timeout_ms, "timeout_ms")
            .map_err(Failure::bad_request)?;
        let view = self
            .plane
            .wake_version(&actor, &body.app, &body.version, wait)
            .await?;
        Ok(views::version_json(&view, false))
    }
}

/// The caller's name (the audit log's actor) if its role may make `rpc`, else
/// 403 with the same refusal as gRPC.
fn authorize(caller: &Caller, rpc: Rpc) -> Result<String, Failure> {
    scopes::check(&caller.name, caller.role, rpc)
        .map_err(|message| Failure::new(403, "permission_denied", message))?;
    Ok(caller.name.clone())
}

/// Runs a control-plane operation on the blocking pool (it may commit with fsync).
async fn blocking<T: Send + 'static>(
    plane: &Arc<ControlPlane>,
    operation: impl FnOnce(&ControlPlane) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, Failure> {
    let plane = Arc::clone(plane);
    tokio::task::spawn_blocking(move || operation(&plane))
        .await
        .map_err(|e| {
            Failure::new(
                500,
                "internal",
                format!("the operation did not finish: {e}"),
            )
        })?
        .map_err(Failure::from)
}

fn method_not_allowed(method: &Method, path: &str, allowed: &str) -> Failure {
    Failure::new(
        405,
        "method_not_allowed",
        format!("{path} takes {allowed}, not {method}"),
    )
}

/// Refuses query parameters other than `allowed`, and any given twice.
fn check_query(query: Option<&str>, path: &str, allowed: &[&str]) -> Result<(), Failure> {
    let mut seen = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let key = pair.split_once('=').map_or(pair, |(key, _)| key);
        if !allowed.contains(&key) {
            let takes = match allowed {
                [] => "no parameters".to_string(),
                _ => format!("only {}", allowed.join(", ")),
            };
            return Err(Failure::bad_request(format!(
                "unknown parameter {key:?}; {path} takes {takes}"
            )));
        }
        if seen.contains(&key) {
            return Err(Failure::bad_request(format!(
                "parameter {key:?} is given twice"
            )));
        }
        seen.push(key);
    }
    Ok(())
}

/// The value of parameter `key` in `query`, if given.
fn query_value<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query.unwrap_or("").split('&').find_map(|pair| {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        (name == key).then_some(value)
    })
}

/// `limit`: 1 to `max`, `default` when not given.
fn query_limit(query: Option<&str>, default: usize, max: usize) -> Result<usize, Failure> {
    let Some(value) = query_value(query, "limit") else {
        return Ok(default);
    };
    match value.parse::<usize>() {
        Ok(limit) if (1..=max).contains(&limit) => Ok(limit),
        _ => Err(Failure::bad_request(format!(
            "limit={value:?} is not a number from 1 to {max}"
        ))),
    }
}

/// `q` of `/ui/api/apps`: part of an app name (what app names may hold: a-z,
/// 0-9 and '-'), empty for all.
fn apps_filter(query: Option<&str>) -> Result<String, Failure> {
    let value = query_value(query, "q").unwrap_or("");
    let fits = value.len() <= 63
        && value
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !fits {
        return Err(Failure::bad_request(format!(
            "q={value:?} cannot be part of an app name: at most 63 characters of a-z, 0-9 and '-'"
        )));
    }
    Ok(value.to_string())
}

/// Reads a JSON request body of at most [`MAX_BODY_BYTES`] into `T`; the
/// refusal names what was wrong (the field, the type, the size).
async fn read_json<B, T>(request: Request<B>) -> Result<T, Failure>
where
    B: Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    T: serde::de::DeserializeOwned,
{
    let content_type = request
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("");
    if !content_type
        .split(';')
        .next()
        .is_some_and(|mime| mime.trim().eq_ignore_ascii_case("application/json"))
    {
        return Err(Failure::new(
            415,
            "unsupported_media_type",
            format!(
                "the body must be JSON with content-type application/json, not {content_type:?}"
            ),
        ));
    }
    let collected = Limited::new(request.into_body(), MAX_BODY_BYTES)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Failure::new(
                    413,
                    "payload_too_large",
                    format!("the body is larger than {MAX_BODY_BYTES} bytes"),
                )
            } else {
                Failure::bad_request(format!("cannot read the body: {e}"))
            }
        })?;
    let bytes = collected.to_bytes();
    serde_json::from_slice(&bytes)
        .map_err(|e| Failure::bad_request(format!("the body is not what was expected: {e}")))
}

fn json_response(status: u16, value: &Value) -> Response<Full<Bytes>> {
    let mut text = value.to_string();
    text.push('\n');
    respond(status, "application/json", Bytes::from(text))
}

fn failure(failure: Failure) -> Response<Full<Bytes>> {
    let mut response = json_response(
        failure.status,
        &json!({ "error": failure.message, "code": failure.code }),
    );
    if failure.status == 401 {
        response.headers_mut().insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Bearer"),
        );
    }
    response
}

fn respond(status: u16, content_type: &str, body: Bytes) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .header("cache-control", "no-store")
        .header("x-content-type-options", "nosniff")
        .header("referrer-policy", "no-referrer")
        .header("content-security-policy", CONTENT_SECURITY_POLICY)
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"error\n"))))
}

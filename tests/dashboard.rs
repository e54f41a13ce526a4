//! The dashboard (`/ui` on the admin HTTP listener) driven as a user would, in
//! a headless Chromium through chromedriver (W3C WebDriver): log in with the
//! admin token, see the preview a request woke, stop it with the button, see it
//! stopped, wake it with a request through the proxy, see it running again;
//! then log in with a read token and see no buttons (and the server refusing
//! that token's stop anyway).
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`make test`
//! installs them); without them the test fails saying so. With
//! `INGRESS_UI_SCREENSHOTS=DIR` (relative to the repository, e.g. `docs`) it
//! saves `DIR/dashboard-*.png`.

mod support;

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{json, Value};
use support::binary::{Ingress, TOKEN};
use support::raw_request;
use support::webdriver::{self, wait_for, Browser};

const READ_TOKEN: &str = "read-only-token-0123456789";
/// A branch name that would be markup if the page inserted it as HTML.
const BRANCH: &str = "feature/<img src=x onerror=\"document.title='injected'\">&login";
/// Every wait on the page.
const WAIT: Duration = Duration::from_secs(20);

/// Where screenshots go, when asked for.
fn screenshot_dir() -> Option<PathBuf> {
    let dir = std::env::var("INGRESS_UI_SCREENSHOTS").ok()?;
    Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(dir))
}

async fn screenshot(browser: &Browser, name: &str) {
    if let Some(dir) = screenshot_dir() {
        browser
            .screenshot(&dir.join(format!("dashboard-{name}.png")))
            .await;
    }
}

/// When screenshots are asked for: some requests for 3 s (to pr-7, and to a
/// label that does not exist), so that the page has rates to show, then the
/// screenshot `name`.
async fn screenshot_with_traffic(browser: &Browser, ingress: &Ingress, name: &str) {
    if screenshot_dir().is_none() {
        return;
    }
    let proxy = ingress.proxy;
    let traffic = tokio::spawn(async move {
        let end = std::time::Instant::now() + Duration::from_secs(3);
        let mut n = 0;
        while std::time::Instant::now() < end {
            let host = if n % 5 == 4 { "pr-404" } else { "pr-7" };
            raw_request(
                proxy,
                &format!("GET / HTTP/1.1\r\nHost: {host}.shop.example.com"),
            )
            .await;
            n += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Two samples of the counters, 2 s apart, make a rate.
    tokio::time::sleep(Duration::from_millis(2600)).await;
    screenshot(browser, name).await;
    let _ = traffic.await;
}

/// The text of `cell` in the row of preview `label`.
async fn cell(browser: &Browser, label: &str, cell: &str) -> Result<String, String> {
    browser
        .text_of(&format!("tr.version[data-label=\"{label}\"] td.{cell}"))
        .await
        .ok_or_else(|| format!("no row for {label} (or no {cell} cell) yet"))
}

/// Waits until the row of `label` shows `observed` and `desired`.
async fn wait_state(browser: &Browser, label: &str, observed: &str, desired: &str) {
    wait_for(
        &format!("{label} shown as observed {observed}, desired {desired}"),
        WAIT,
        || async {
            let seen = (
                cell(browser, label, "observed").await?,
                cell(browser, label, "desired").await?,
            );
            if seen.0 == observed && seen.1.starts_with(desired) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
}

/// Logs in on the login form with `token`.
async fn log_in(browser: &Browser, token: &str) {
    let field = wait_for("the login form", WAIT, || async {
        browser
            .find("#login-view:not([hidden]) #token")
            .await
            .ok_or_else(|| "no login form".to_string())
    })
    .await;
    browser
        .type_into(&field, token)
        .await
        .expect("type the token");
    browser.click_on("#login", WAIT).await;
}

/// A request through the proxy to the preview `label`: its status and whether
/// it was held for a cold start.
async fn request_preview(ingress: &Ingress, label: &str) -> (u16, bool) {
    let response = raw_request(
        ingress.proxy,
        &format!("GET / HTTP/1.1\r\nHost: {label}.shop.example.com"),
    )
    .await;
    (
        response.status,
        response.header("x-ingress-cold-start").is_some(),
    )
}

fn deploy(ingress: &Ingress, site: &std::path::Path, args: &[&str]) -> String {
    let command = format!(
        "exec python3 -m http.server \"$PORT\" --bind \"$HOST\" --directory {}",
        site.display()
    );
    let mut all = vec!["deploy", "shop", "--command", &command];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--output", "json"]);
    let deployed: Value = ingress.ctl(&all).json();
    deployed["id"].as_str().expect("version id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_in_a_browser() {
    // Before anything starts: fail at once, saying what to install.
    let binaries = webdriver::binaries();

    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = Ingress::start_with_tokens(
        dir.path(),
        &format!("{{ name = \"viewer\", secret = \"{READ_TOKEN}\", role = \"read\" }}"),
        "[runtime]\nstop_grace = \"2s\"\ndrain_timeout = \"2s\"\nstart_timeout = \"20s\"\n",
    );
    let site = dir.path().join("site");
    std::fs::create_dir_all(&site).expect("site dir");
    std::fs::write(site.join("index.html"), "<h1>preview</h1>\n").expect("index.html");
    ingress.ctl(&["app", "create", "shop"]).expect_ok();
    ingress
        .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
        .expect_ok();
    deploy(&ingress, &site, &[]);
    let preview = deploy(
        &ingress,
        &site,
        &["--ephemeral", "pr-7", "--branch", BRANCH, "--ttl", "2h"],
    );
    // A second preview that stays asleep.
    deploy(
        &ingress,
        &site,
        &[
            "--ephemeral",
            "pr-8",
            "--branch",
            "feature/search",
            "--ttl",
            "30m",
        ],
    );
    // The first request wakes pr-7.
    assert_eq!(request_preview(&ingress, "pr-7").await, (200, true));

    let browser = Browser::start(&binaries, dir.path(), 1440, 1280).await;
    let ui = format!("http://{}/ui", ingress.http);
    browser.goto(&ui).await;
    screenshot(&browser, "login").await;

    // A wrong token is refused on the form.
    log_in(&browser, "not-a-token").await;
    wait_for("the refusal of a wrong token", WAIT, || async {
        let text = browser.text_of("#login-error").await.unwrap_or_default();
        if text.contains("not valid") {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;

    // The admin token: the preview, with its branch as text, its URL, expiry,
    // states, last request and cold start.
    log_in(&browser, TOKEN).await;
    wait_state(&browser, "pr-7", "ready", "running").await;
    wait_state(&browser, "pr-8", "stopped", "stopped").await;
    let whoami = browser.text_of("#whoami").await.unwrap_or_default();
    assert_eq!(whoami, "token tester (admin)");
    assert_eq!(
        cell(&browser, "pr-7", "branch").await.as_deref(),
        Ok(BRANCH)
    );
    assert!(
        browser.find_all("#apps img").await.is_empty(),
        "a branch name became markup"
    );
    assert_eq!(
        cell(&browser, "pr-7", "id").await.as_deref(),
        Ok(preview.as_str())
    );
    assert_eq!(
        cell(&browser, "pr-7", "url").await.as_deref(),
        Ok("http://pr-7.shop.example.com")
    );
    let expires = cell(&browser, "pr-7", "expires").await.unwrap_or_default();
    assert!(expires.starts_with("in 1h 59m"), "countdown: {expires}");
    let activity = cell(&browser, "pr-7", "activity").await.unwrap_or_default();
    assert!(activity.ends_with(" ago"), "last request: {activity}");
    let cold = cell(&browser, "pr-7", "cold-start")
        .await
        .unwrap_or_default();
    assert!(cold.ends_with(" ms"), "cold start: {cold}");
    let hosts = browser.text_of(".app .hosts").await.unwrap_or_default();
    assert_eq!(hosts, "hosts: shop.example.com");
    // The token lives in this tab's sessionStorage only.
    let stored = browser
        .script(
            "return [sessionStorage.length, localStorage.length, document.cookie, document.title];",
            json!([]),
        )
        .await;
    assert_eq!(stored, json!([1, 0, "", "ingress dashboard"]));
    // Request counters from /metrics, with the note that they are the whole
    // ingress's; and the app's own rates next to its name.
    wait_for("request rates", WAIT, || async {
        let rows = browser.find_all("#rates tbody tr").await.len();
        let note = browser.text_of("#rates-note").await.unwrap_or_default();
        if rows >= 3 && note.contains("for the whole ingress") {
            Ok(())
        } else {
            Err(format!("{rows} rows, note {note:?}"))
        }
    })
    .await;
    // The app's own rates, from its versions' counters: the request that woke
    // pr-7 is counted, and the next sample turns counts into rates.
    wait_for("the app's request rates", WAIT, || async {
        let text = browser
            .text_of(".app[data-app=\"shop\"] .rates")
            .await
            .unwrap_or_default();
        if text.contains(" req/s, ") && text.ends_with(" 5xx/s") {
            Ok(())
        } else {
            Err(format!("rates {text:?}"))
        }
    })
    .await;
    screenshot_with_traffic(&browser, &ingress, "admin").await;

    // Stop with the button: stopped, and audited under the token's name.
    browser
        .click_on("tr.version[data-label=\"pr-7\"] button.stop", WAIT)
        .await;
    wait_state(&browser, "pr-7", "stopped", "stopped").await;
    wait_for("the stop in the audit log", WAIT, || async {
        let text = browser.text_of("#audit tbody").await.unwrap_or_default();
        let stop = text.lines().any(|row| {
            row.contains("tester") && row.contains("version.stop") && row.contains("reason manual")
        });
        if stop {
            Ok(())
        } else {
            Err(text.lines().take(3).collect::<Vec<_>>().join(" | "))
        }
    })
    .await;

    // A request through the proxy wakes it; the page shows it running.
    assert_eq!(request_preview(&ingress, "pr-7").await, (200, true));
    wait_state(&browser, "pr-7", "ready", "running").await;
    assert!(browser
        .find("tr.version[data-label=\"pr-7\"] button.stop")
        .await
        .is_some());

    // Log out; the read token sees the same page without buttons.
    browser.click_on("#logout", WAIT).await;
    log_in(&browser, READ_TOKEN).await;
    wait_state(&browser, "pr-7", "ready", "running").await;
    assert_eq!(
        browser.text_of("#whoami").await.unwrap_or_default(),
        "token viewer (read)"
    );
    assert!(
        browser.find_all("#apps button").await.is_empty(),
        "a read token sees no stop or wake buttons"
    );
    screenshot_with_traffic(&browser, &ingress, "read-only").await;

    // The name filter narrows the apps shown.
    let filter = browser.find("#filter").await.expect("the app filter");
    browser
        .type_into(&filter, "blog")
        .await
        .expect("type a filter");
    wait_for("no app for the filter", WAIT, || async {
        let text = browser.text_of("#apps .empty").await.unwrap_or_default();
        if text == "No app name contains this." {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;
    browser.clear(&filter).await.expect("clear the filter");
    browser
        .type_into(&filter, "sho")
        .await
        .expect("type a filter");
    wait_state(&browser, "pr-7", "ready", "running").await;
    browser.quit().await;

    // And the server refuses its stop whatever a page shows, as gRPC does.
    let refused = support::client()
        .post(format!("http://{}/ui/api/stop", ingress.http))
        .bearer_auth(READ_TOKEN)
        .json(&json!({ "app": "shop", "version": preview }))
        .send()
        .await
        .expect("stop with the read token");
    assert_eq!(refused.status().as_u16(), 403);
    let body: Value = refused.json().await.expect("JSON error");
    assert_eq!(
        body["error"],
        "token \"viewer\" has role read, which may only list, show, check, read the audit log and logs, and watch; stop (StopVersion) needs role admin"
    );
    let versions = ingress
        .ctl(&["versions", "shop", "--ephemeral", "--output", "json"])
        .json();
    let row = versions
        .as_array()
        .and_then(|all| all.iter().find(|v| v["id"] == preview.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["desired_state"], "running", "{versions}");
}

/// A proxy-only replica serves no dashboard: `/ui` there is a JSON 404 naming
/// the control node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_points_at_the_control_node() {
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = "replica-token-0123456789abcdef";
    let control = Ingress::start_with_tokens(
        dir.path(),
        &format!("{{ name = \"edge\", secret = \"{secret}\", role = \"replica\" }}"),
        "[node]\nrole = \"control\"\n",
    );
    let replica =
        support::binary::ReplicaNode::start(dir.path(), "edge-1", control.grpc, secret, "");
    for path in ["/ui", "/ui/api/apps"] {
        let (status, body) =
            support::binary::admin_get(replica.http, path, Duration::from_secs(10)).await;
        assert_eq!(status, 404, "{path}: {body}");
        let body: Value = serde_json::from_str(&body).expect("a JSON error");
        assert!(
            body["error"]
                .as_str()
                .is_some_and(|e| e.contains("open /ui on the control node")),
            "{body}"
        );
    }
    let (status, _) =
        support::binary::admin_get(control.http, "/ui", Duration::from_secs(10)).await;
    assert_eq!(status, 200);
}

//! A headless Chromium driven through chromedriver with the W3C WebDriver
//! protocol (plain JSON over HTTP, with the workspace's `reqwest`): start,
//! open a page, find elements by CSS, click, type, read text, take
//! screenshots. No crate for it is used: none is vendored here, and the few
//! calls a test makes do not need one.
//!
//! chromedriver runs on a free loopback port in a process group of its own;
//! dropping the [`Browser`] kills that group (chromedriver and the Chromium it
//! started; Chromium's crash handlers, which leave the group, exit with it),
//! and [`Browser::quit`] first ends the session cleanly.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The W3C key of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// What the Debian packages `chromium` and `chromium-driver` install.
pub struct Binaries {
    pub chromium: PathBuf,
    pub chromedriver: PathBuf,
}

fn on_path(names: &[&str]) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// Chromium and chromedriver from `PATH`; fails the test, saying how to
/// install them, when either is missing.
pub fn binaries() -> Binaries {
    let chromium = on_path(&["chromium", "chromium-browser"]);
    let chromedriver = on_path(&["chromedriver"]);
    match (chromium, chromedriver) {
        (Some(chromium), Some(chromedriver)) => Binaries {
            chromium,
            chromedriver,
        },
        (chromium, chromedriver) => panic!(
            "this test drives a headless Chromium through chromedriver, and {} not on PATH: \
             run `make test` (its deps target installs them) or \
             `scripts/install-system-packages chromium chromium-driver`",
            match (chromium, chromedriver) {
                (None, None) => "chromium and chromedriver are",
                (None, Some(_)) => "chromium is",
                _ => "chromedriver is",
            }
        ),
    }
}

/// A WebDriver session on a headless Chromium.
pub struct Browser {
    driver: Option<Child>,
    base: String,
    session: String,
    http: reqwest::Client,
    log: PathBuf,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(mut driver) = self.driver.take() {
            // SAFETY: a signal to the process group our child leads.
            unsafe { libc::kill(-(driver.id() as i32), libc::SIGKILL) };
            let _ = driver.wait();
        }
    }
}

impl Browser {
    /// Starts chromedriver on a free port (its log in `dir`) and a headless
    /// Chromium session with a window of `width` x `height`. Every step is
    /// bounded: 15 s for chromedriver to answer, 30 s for the session.
    pub async fn start(binaries: &Binaries, dir: &Path, width: u32, height: u32) -> Browser {
        let [port] = super::free_ports();
        let log = dir.join("chromedriver.log");
        let mut command = Command::new(&binaries.chromedriver);
        command
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        {
            use std::os::unix::process::CommandExt;
            command.process_group(0);
        }
        let driver = command
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", binaries.chromedriver.display()));
        let profile = tempfile::tempdir().expect("profile dir");
        let mut browser = Browser {
            driver: Some(driver),
            base: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("client"),
            log,
            _profile: profile,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let status = browser.http.get(format!("{}/status", browser.base)).send();
            if let Ok(Ok(response)) = tokio::time::timeout(Duration::from_secs(2), status).await {
                let ready = response.json::<Value>().await.ok();
                if ready.is_some_and(|v| v["value"]["ready"] == true) {
                    break;
                }
            }
            if let Some(Ok(Some(status))) = browser.driver.as_mut().map(Child::try_wait) {
                panic!("chromedriver exited with {status}:\n{}", browser.log_text());
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer within 15 s:\n{}",
                browser.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let capabilities = json!({
            "capabilities": {
                "alwaysMatch": {
                    "browserName": "chrome",
                    "goog:chromeOptions": {
                        "binary": binaries.chromium,
                        "args": [
                            "--headless=new",
                            "--no-sandbox",
                            "--disable-gpu",
                            "--disable-dev-shm-usage",
                            "--disable-extensions",
                            "--disable-background-networking",
                            "--disable-component-update",
                            "--disable-sync",
                            "--no-first-run",
                            "--no-default-browser-check",
                            "--password-store=basic",
                            "--hide-scrollbars",
                            format!("--window-size={width},{height}"),
                            format!("--user-data-dir={}", browser._profile.path().display()),
                        ],
                    },
                },
            },
        });
        let session = browser
            .request(reqwest::Method::POST, "/session", Some(capabilities))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start a Chromium session: {e}\n{}",
                    browser.log_text()
                )
            });
        browser.session = session["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no sessionId in {session}"))
            .to_string();
        browser
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = text.len().saturating_sub(4000);
        text.get(start..).unwrap_or("").to_string()
    }

    /// One WebDriver command: its `value`, or the error WebDriver reported.
    async fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, String> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method.clone(), &url);
        if let Some(body) = body {
            request = request.json(&body);
        } else if method == reqwest::Method::POST {
            request = request.json(&json!({}));
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("{method} {path}: {e}"))?;
        let status = response.status();
        let value: Value = response
            .json()
            .await
            .map_err(|e| format!("{method} {path}: answer is not JSON: {e}"))?;
        let value = value.get("value").cloned().unwrap_or(Value::Null);
        if !status.is_success() {
            return Err(format!(
                "{method} {path}: {} ({})",
                value["error"].as_str().unwrap_or("error"),
                value["message"]
                    .as_str()
                    .unwrap_or("")
                    .lines()
                    .next()
                    .unwrap_or("")
            ));
        }
        Ok(value)
    }

    async fn session_post(&self, path: &str, body: Value) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        self.request(reqwest::Method::POST, &path, Some(body)).await
    }

    async fn session_get(&self, path: &str) -> Result<Value, String> {
        let path = format!("/session/{}{path}", self.session);
        self.request(reqwest::Method::GET, &path, None).await
    }

    /// Opens `url`.
    pub async fn goto(&self, url: &str) {
        self.session_post("/url", json!({ "url": url }))
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
    }

    /// The elements matching the CSS `selector` now (none is not an error).
    pub async fn find_all(&self, selector: &str) -> Vec<Element> {
        let found = self
            .session_post(
                "/elements",
                json!({ "using": "css selector", "value": selector }),
            )
            .await
            .unwrap_or_else(|e| panic!("find {selector}: {e}"));
        found
            .as_array()
            .map(|all| {
                all.iter()
                    .filter_map(|e| e[ELEMENT].as_str())
                    .map(|id| Element(id.to_string()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The first element matching `selector` now, if any.
    pub async fn find(&self, selector: &str) -> Option<Element> {
        self.find_all(selector).await.into_iter().next()
    }

    /// The text of `element` as rendered, or why it cannot be read (it was
    /// replaced meanwhile, say).
    pub async fn text(&self, element: &Element) -> Result<String, String> {
        let value = self
            .session_get(&format!("/element/{}/text", element.0))
            .await?;
        Ok(value.as_str().unwrap_or("").to_string())
    }

    /// The text of the first element matching `selector`, if there is one.
    pub async fn text_of(&self, selector: &str) -> Option<String> {
        let element = self.find(selector).await?;
        self.text(&element).await.ok()
    }

    /// Clicks `element`.
    pub async fn click(&self, element: &Element) -> Result<(), String> {
        self.session_post(&format!("/element/{}/click", element.0), json!({}))
            .await
            .map(drop)
    }

    /// Types `text` into `element`.
    pub async fn type_into(&self, element: &Element, text: &str) -> Result<(), String> {
        self.session_post(
            &format!("/element/{}/value", element.0),
            json!({ "text": text }),
        )
        .await
        .map(drop)
    }

    /// Empties the input `element`.
    pub async fn clear(&self, element: &Element) -> Result<(), String> {
        self.session_post(&format!("/element/{}/clear", element.0), json!({}))
            .await
            .map(drop)
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page and
    /// returns what it returns.
    pub async fn script(&self, script: &str, args: Value) -> Value {
        self.session_post("/execute/sync", json!({ "script": script, "args": args }))
            .await
            .unwrap_or_else(|e| panic!("script {script}: {e}"))
    }

    /// Clicks the first element matching `selector`, finding it again if the
    /// page replaced it meanwhile; at most `limit`.
    pub async fn click_on(&self, selector: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        let mut last = String::from("no such element");
        while Instant::now() < deadline {
            if let Some(element) = self.find(selector).await {
                match self.click(&element).await {
                    Ok(()) => return,
                    Err(e) => last = e,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("cannot click {selector} within {limit:?}: {last}");
    }

    /// Saves a PNG of the window to `path`.
    pub async fn screenshot(&self, path: &Path) {
        use base64::Engine;
        let data = self
            .session_get("/screenshot")
            .await
            .unwrap_or_else(|e| panic!("screenshot: {e}"));
        let png = base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or(""))
            .expect("the screenshot is base64");
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).expect("screenshot dir");
        }
        std::fs::write(path, png).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }

    /// Ends the session (Chromium exits), then chromedriver.
    pub async fn quit(self) {
        let path = format!("/session/{}", self.session);
        let _ = self.request(reqwest::Method::DELETE, &path, None).await;
        drop(self);
    }
}

/// A reference to an element of the current page.
#[derive(Debug, Clone)]
pub struct Element(String);

/// Polls `check` every 100 ms until it gives a value, for at most `limit`;
/// panics naming `what` (and the last thing `check` saw, from `seen`) after.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + limit;
    loop {
        let last = match check().await {
            Ok(value) => return value,
            Err(seen) => seen,
        };
        assert!(
            Instant::now() < deadline,
            "{what}: not within {limit:?}; last seen: {last}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

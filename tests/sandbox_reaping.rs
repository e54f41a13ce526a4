//! End-to-end tests of "no orphans, no survivors" and "one ingress per data
//! directory" (issue 10, items 4 and 5): the real `ingress` binary runs real
//! processes (`tests/support/app.py`) on loopback, driven by the real
//! `ingressctl`. Each app copy is counted by a unique `--tag` on its command line
//! (`/proc/PID/cmdline`); whatever a test leaves running is killed when it ends,
//! also when it fails. Waits are bounded; nothing asserts how fast.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::binary::Ingress;
use support::raw_request;

const APP: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/app.py");
const PREVIEW_HOST: &str = "pr-1.shop.example.com";

/// Short intervals; `extra` sections are added.
fn sections(extra: &str) -> String {
    format!(
        "[runtime]\nstop_grace = \"1s\"\ndrain_timeout = \"2s\"\nstart_timeout = \"10s\"\n\n{extra}"
    )
}

/// The live app processes (`python3 app.py ... --tag TAG`), by pid. A shell
/// whose command line mentions the tag does not count: its arguments are not
/// split into `--tag` and `TAG`.
fn copies(tag: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|pair| pair[0] == b"--tag" && pair[1] == tag.as_bytes())
        })
        .filter(|pid| {
            // Zombies have no command line, but check the state to be sure.
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    stat.rsplit(')')
                        .next()
                        .is_some_and(|rest| !rest.trim_start().starts_with('Z'))
                })
                .unwrap_or(false)
        })
        .collect()
}

/// Waits (at most `limit`) until `check` holds for the copies of `tag`; returns
/// the last count either way.
fn wait_copies(tag: &str, limit: Duration, check: impl Fn(usize) -> bool) -> Vec<i32> {
    let deadline = Instant::now() + limit;
    loop {
        let found = copies(tag);
        if check(found.len()) || Instant::now() >= deadline {
            return found;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Kills every copy of its tags when dropped: declared before the ingress, it
/// runs after the ingress's own stop, also when the test fails.
struct Sweeper(Vec<String>);

impl Drop for Sweeper {
    fn drop(&mut self) {
        for tag in &self.0 {
            for pid in copies(tag) {
                // SAFETY: a plain signal to an app process this test started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
}

/// A tag unique to this test run.
fn tag(dir: &Path, name: &str) -> String {
    format!("{}/{name}", dir.display())
}

fn start_shop(dir: &Path, config: &str) -> Ingress {
    let ingress = Ingress::start(dir, config);
    ingress.ctl(&["app", "create", "shop"]).expect_ok();
    ingress
        .ctl(&["route", "add", "shop.example.com", "--app", "shop"])
        .expect_ok();
    ingress
}

fn deploy(ingress: &Ingress, command: &str, preview: bool) -> String {
    let mut args = vec!["deploy", "shop", "--command", command, "--output", "json"];
    if preview {
        args.extend(["--ephemeral", "pr-1", "--branch", "feat"]);
    }
    let deployed = ingress.ctl(&args).json();
    deployed["id"].as_str().expect("version id").to_string()
}

fn version(ingress: &Ingress, id: &str) -> Value {
    let versions = ingress
        .ctl(&["versions", "shop", "--output", "json"])
        .json();
    versions
        .as_array()
        .and_then(|all| all.iter().find(|v| v["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("version {id} is not listed: {versions}"))
}

fn wait_for(ingress: &Ingress, id: &str, limit: Duration, check: impl Fn(&Value) -> bool) {
    let deadline = Instant::now() + limit;
    loop {
        let version = version(ingress, id);
        if check(&version) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "version {id} did not reach the expected state within {limit:?}: {version}\n{}",
            ingress.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn observed(version: &Value) -> &str {
    version["observed_state"].as_str().unwrap_or("")
}

async fn get_preview(ingress: &Ingress) -> support::RawResponse {
    raw_request(
        ingress.proxy,
        &format!("GET / HTTP/1.1\r\nHost: {PREVIEW_HOST}"),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_and_a_restart_exactly_one_copy_of_each_sandbox_runs() {
    let dir = tempfile::tempdir().expect("temp dir");
    // `exec`: the app itself is the child, which PR_SET_PDEATHSIG reaches. Behind
    // `& wait`: the app is a grandchild, which only the restart clean-up reaches.
    let direct = tag(dir.path(), "direct");
    let behind_shell = tag(dir.path(), "behind-shell");
    let _sweeper = Sweeper(vec![direct.clone(), behind_shell.clone()]);
    let mut ingress = start_shop(dir.path(), &sections(""));
    let active = deploy(
        &ingress,
        &format!("exec python3 {APP} --tag {direct}"),
        false,
    );
    let preview = deploy(
        &ingress,
        &format!("python3 {APP} --tag {behind_shell} & wait"),
        true,
    );
    assert_eq!(get_preview(&ingress).await.status, 200);
    for id in [&active, &preview] {
        wait_for(&ingress, id, Duration::from_secs(20), |v| {
            observed(v) == "ready" && v["desired_state"] == "running"
        });
    }
    let before: Vec<i32> = [&direct, &behind_shell]
        .iter()
        .flat_map(|tag| copies(tag))
        .collect();
    assert_eq!(before.len(), 2, "{before:?}");

    ingress.kill9_and_restart();
    for id in [&active, &preview] {
        wait_for(&ingress, id, Duration::from_secs(20), |v| {
            observed(v) == "ready"
        });
    }
    for tag in [&direct, &behind_shell] {
        let found = wait_copies(tag, Duration::from_secs(2), |n| n != 1);
        assert_eq!(
            found.len(),
            1,
            "copies of {tag} after the restart: {found:?}\n{}",
            ingress.log_text()
        );
        assert!(
            !before.contains(&found[0]),
            "the copy of {tag} is a new one"
        );
    }
    assert_eq!(get_preview(&ingress).await.status, 200);
    assert!(
        ingress
            .log_text()
            .contains("a previous run left 2 sandbox record(s)"),
        "the restart found the records:\n{}",
        ingress.log_text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_leaves_nothing_of_an_app_that_ignores_sigterm_behind_a_shell() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = tag(dir.path(), "stubborn");
    let _sweeper = Sweeper(vec![app.clone()]);
    let ingress = start_shop(dir.path(), &sections(""));
    // `sh` leads the group and dies of SIGTERM; the app ignores it.
    let id = deploy(
        &ingress,
        &format!("python3 {APP} --ignore-term --tag {app} & wait"),
        true,
    );
    assert_eq!(get_preview(&ingress).await.status, 200);
    assert_eq!(copies(&app).len(), 1);

    ingress.ctl(&["stop", "shop", &id]).expect_ok();
    wait_for(&ingress, &id, Duration::from_secs(10), |v| {
        observed(v) == "stopped"
    });
    let left = wait_copies(&app, Duration::from_secs(10), |n| n == 0);
    assert!(left.is_empty(), "survivors of the stop: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_backgrounds_its_server_and_exits_leaves_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let app = tag(dir.path(), "backgrounded");
    let _sweeper = Sweeper(vec![app.clone()]);
    let ingress = start_shop(
        dir.path(),
        &sections("[wake]\nfailure_backoff = \"200ms\"\nfailure_backoff_max = \"200ms\"\n"),
    );
    // `sh` exits at once: each start attempt fails ("exited before it was ready")
    // while the server it put in the background comes up.
    let id = deploy(&ingress, &format!("python3 {APP} --tag {app} &"), true);
    for _ in 0..3 {
        let failed = get_preview(&ingress).await;
        assert_eq!(failed.status, 502, "{}", failed.body);
        assert!(
            failed.body.contains("exited before it was ready"),
            "{}",
            failed.body
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let left = wait_copies(&app, Duration::from_secs(10), |n| n == 0);
    assert!(left.is_empty(), "survivors of failed starts: {left:?}");

    ingress.ctl(&["stop", "shop", &id]).expect_ok();
    // Nothing starts again after the stop, and nothing was left.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(copies(&app), Vec::<i32>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_ingress_on_the_same_data_directory_refuses_to_start() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ingress = start_shop(dir.path(), &sections(""));
    let pid = ingress.pid().expect("running");

    let (status, output) = ingress.run_second_on_same_data_dir();
    assert!(
        !status.success(),
        "the second ingress ran: {status}\n{output}"
    );
    assert_eq!(status.code(), Some(1), "{output}");
    assert!(
        output.contains(&ingress.data_dir.display().to_string()),
        "the error names the directory: {output}"
    );
    assert!(
        output.contains(&format!("pid {pid}")),
        "the error names the holder: {output}"
    );
    // The first one is untouched.
    ingress.ctl(&["app", "list"]).expect_ok();
}

//! The bounded, non-blocking hand-over to the writer thread, and the thread.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, SyncSender, TryRecvError, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use ingress_config::{AccessFormat, AccessLog as AccessTarget};
use prometheus::IntCounter;

use super::format;
use super::record::AccessRecord;

/// Set by the SIGUSR1 handler; the writer reopens its file at its next drain.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// How long the writer sleeps between two drains of the channel. It polls
/// rather than blocks: a writer parked in `recv` must be woken by a futex call
/// on the request thread for every line (measured: 8 µs of system time per
/// request, 15% of requests/s), while a sleeping one is woken by nobody.
/// Lines reach the file within this; a rotated file is let go of within it.
const DRAIN_INTERVAL: Duration = Duration::from_millis(20);

/// A batch is written once the channel is empty or the buffer holds this much.
const BATCH_BYTES: usize = 256 * 1024;

/// Where the request path sends its records. Cloning is cheap (one `Arc`). An
/// off log ([`AccessLog::off`]) holds nothing, and [`AccessLog::is_on`] lets a
/// request skip building its record.
#[derive(Clone, Default)]
pub struct AccessLog {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    sender: SyncSender<AccessRecord>,
    dropped: IntCounter,
    /// Drains the writer has completed, for [`AccessLog::flush`].
    drains: Arc<AtomicU64>,
}

impl AccessLog {
    /// No access log: [`AccessLog::send`] is never called, nothing is written.
    pub fn off() -> AccessLog {
        AccessLog { inner: None }
    }

    /// Starts the writer thread for `target` in `format`, with room for
    /// `buffer` lines in flight; lines dropped because it was full count in
    /// `dropped`. A file is opened now (appended to, created if missing), so a
    /// path that cannot be written is an error at start, naming the path.
    pub fn start(
        target: &AccessTarget,
        format: AccessFormat,
        buffer: usize,
        dropped: IntCounter,
    ) -> Result<AccessLog, String> {
        let sink = match target {
            AccessTarget::Off => return Ok(AccessLog::off()),
            AccessTarget::Stdout => Sink::Stdout,
            AccessTarget::File(path) => Sink::File {
                file: open(path).map_err(|e| {
                    format!(
                        "log.access {}: cannot open for appending: {e}",
                        path.display()
                    )
                })?,
                path: path.clone(),
            },
        };
        let capacity = buffer.max(1);
        let (sender, receiver) = mpsc::sync_channel(capacity);
        let drains = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&drains);
        std::thread::Builder::new()
            .name("access-log".to_string())
            .spawn(move || run(receiver, sink, format, capacity, &counted))
            .map_err(|e| format!("log.access: cannot start the writer thread: {e}"))?;
        Ok(AccessLog {
            inner: Some(Arc::new(Inner {
                sender,
                dropped,
                drains,
            })),
        })
    }

    /// True when records are wanted.
    pub fn is_on(&self) -> bool {
        self.inner.is_some()
    }

    /// Waits (at most `within`) until the writer has written every line sent
    /// before this call: for the last requests' lines before the process
    /// exits (a stop or an upgrade), which would otherwise be cut.
    pub fn flush(&self, within: Duration) {
        let Some(inner) = &self.inner else {
            return;
        };
        // A drain that was under way when this began may have missed the last
        // lines; the one after it did not.
        let until = inner.drains.load(Ordering::Acquire) + 2;
        let deadline = std::time::Instant::now() + within;
        while inner.drains.load(Ordering::Acquire) < until && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Hands `record` to the writer without waiting: when the channel is full
    /// the line is dropped and counted instead.
    pub fn send(&self, record: AccessRecord) {
        if let Some(inner) = &self.inner {
            match inner.sender.try_send(record) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => inner.dropped.inc(),
                // The writer is gone (it only stops when every sender is).
                Err(TrySendError::Disconnected(_)) => inner.dropped.inc(),
            }
        }
    }
}

/// Makes SIGUSR1 ask the writer to reopen its file (logrotate's `postrotate`
/// sends it after moving the file away). Without it SIGUSR1 would end the
/// process, so it is installed whenever an access log runs.
pub fn install_reopen_signal() -> std::io::Result<()> {
    extern "C" fn on_sigusr1(_signal: libc::c_int) {
        // Async-signal-safe: one atomic store.
        REOPEN.store(true, Ordering::Relaxed);
    }
    // SAFETY: `sigaction` with a zeroed struct, an empty mask and a handler
    // that only stores to an atomic; SA_RESTART keeps interrupted system calls
    // of other threads going.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as usize;
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(libc::SIGUSR1, &action, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

enum Sink {
    Stdout,
    File { file: File, path: PathBuf },
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) {
        let written = match self {
            Sink::Stdout => {
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(bytes).and_then(|()| stdout.flush())
            }
            Sink::File { file, .. } => file.write_all(bytes),
        };
        if let Err(e) = written {
            log::warn!(
                "access log: a write failed, {} bytes lost: {e}",
                bytes.len()
            );
        }
    }

    /// Opens the path again (after a rotation); keeps the old file if that fails.
    fn reopen(&mut self) {
        if let Sink::File { file, path } = self {
            match open(path) {
                Ok(fresh) => *file = fresh,
                Err(e) => log::warn!(
                    "access log: cannot reopen {}: {e}; still writing to the old file",
                    path.display()
                ),
            }
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
}

/// The writer thread: every [`DRAIN_INTERVAL`] it takes what the channel
/// holds, formats it into one reused buffer and writes it in batches of up to
/// [`BATCH_BYTES`], so a busy second costs a few dozen system calls and the
/// request threads never wake it. A drain that found a quarter of the channel
/// full goes on at once instead of sleeping.
fn run(
    receiver: Receiver<AccessRecord>,
    mut sink: Sink,
    form: AccessFormat,
    capacity: usize,
    drains: &AtomicU64,
) {
    let write_line = match form {
        AccessFormat::Json => format::json,
        AccessFormat::Combined => format::combined,
    };
    let mut buffer = Vec::with_capacity(BATCH_BYTES + 4096);
    loop {
        if REOPEN.swap(false, Ordering::Relaxed) {
            sink.reopen();
        }
        let mut taken = 0;
        let gone = loop {
            match receiver.try_recv() {
                Ok(record) => {
                    write_line(&record, &mut buffer);
                    taken += 1;
                    if buffer.len() >= BATCH_BYTES {
                        sink.write(&buffer);
                        buffer.clear();
                    }
                }
                Err(TryRecvError::Empty) => break false,
                Err(TryRecvError::Disconnected) => break true,
            }
        };
        if !buffer.is_empty() {
            sink.write(&buffer);
            buffer.clear();
        }
        drains.fetch_add(1, Ordering::Release);
        if gone {
            return;
        }
        if taken * 4 < capacity.max(4) {
            std::thread::sleep(DRAIN_INTERVAL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access_log::record::RequestText;
    use crate::request_id::RequestId;

    fn record(id: &str) -> AccessRecord {
        AccessRecord {
            time_ms: 0,
            client_ip: None,
            text: RequestText::new(b"GET", b"h", b"/", None, None),
            http_version: 11,
            status: 200,
            bytes_in: 0,
            bytes_out: 0,
            duration_us: 0,
            upstream_addr: None,
            upstream_us: None,
            target: None,
            kind: None,
            cold_start_ms: None,
            error: None,
            request_id: RequestId::parse(id.as_bytes()).unwrap(),
        }
    }

    fn wait_for(path: &Path, needle: &str) -> String {
        for _ in 0..200 {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            if text.contains(needle) {
                return text;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("{needle} never reached {}", path.display());
    }

    #[test]
    fn lines_reach_the_file_and_a_full_channel_drops_and_counts() {
        let dir = tempfile_dir();
        let path = dir.join("access.log");
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let log = AccessLog::start(
            &AccessTarget::File(path.clone()),
            AccessFormat::Json,
            1,
            dropped.clone(),
        )
        .unwrap();
        assert!(log.is_on());
        log.send(record("first"));
        wait_for(&path, "\"request_id\":\"first\"");
        // Far more than the one slot at once: some are dropped, none blocks.
        for i in 0..10_000 {
            log.send(record(&format!("burst-{i}")));
        }
        assert!(dropped.get() > 0);
        let off = AccessLog::off();
        assert!(!off.is_on());
        off.send(record("nowhere"));
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_unwritable_path_is_an_error_naming_it() {
        let dropped = IntCounter::new("dropped", "test").unwrap();
        let error = AccessLog::start(
            &AccessTarget::File("/nonexistent-dir/access.log".into()),
            AccessFormat::Json,
            8,
            dropped,
        )
        .err()
        .unwrap();
        assert!(
            error.starts_with("log.access /nonexistent-dir/access.log: cannot open"),
            "{error}"
        );
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "access-log-test-{}-{}",
            std::process::id(),
            RequestId::generate()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

//! One ingress per data directory: an exclusive `flock` on
//! `<store.data_dir>/ingress.lock`, which holds the owner's pid. It is taken
//! before the store is opened and before any sandbox is started or reaped, and
//! held for the life of the process; the kernel drops it when the process ends,
//! however it ends (`kill -9` too), so a stale lock file never blocks a restart.
//! The descriptor is close-on-exec, so sandboxes never inherit (and keep) it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::StoreError;

/// The lock file's name inside `store.data_dir`.
pub const LOCK_FILE: &str = "ingress.lock";

/// The held lock of a data directory; released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    path: PathBuf,
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (created if missing), or says which process
    /// holds it.
    pub fn acquire(data_dir: &Path) -> Result<DataDirLock, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError(format!(
                "store.data_dir {}: cannot create it: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(LOCK_FILE);
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                StoreError(format!(
                    "{}: cannot open the lock file: {e}",
                    path.display()
                ))
            })?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim().parse::<u32>() {
                    Ok(pid) => format!("pid {pid}"),
                    Err(_) => "a process that has not written its pid yet".to_string(),
                };
                return Err(StoreError(format!(
                    "store.data_dir {} is in use by another ingress ({holder}, holding {}); one data directory serves one ingress: stop that one or point store.data_dir elsewhere",
                    data_dir.display(),
                    path.display()
                )));
            }
            return Err(StoreError(format!(
                "{}: cannot lock it: {error}",
                path.display()
            )));
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)).map(|_| ()))
            .and_then(|()| writeln!(file, "{pid}"))
            .and_then(|()| file.flush())
            .map_err(|e| StoreError(format!("{}: cannot write the pid: {e}", path.display())))?;
        Ok(DataDirLock { _file: file, path })
    }

    /// Like [`DataDirLock::acquire`], but while another ingress holds the lock
    /// (the old process of `ingress --upgrade`, finishing its requests and
    /// stopping its sandboxes) waits for it, `wait` at most.
    pub fn acquire_waiting(
        data_dir: &Path,
        wait: std::time::Duration,
    ) -> Result<DataDirLock, StoreError> {
        let deadline = std::time::Instant::now() + wait;
        let mut said = false;
        loop {
            match DataDirLock::acquire(data_dir) {
                Err(e)
                    if e.0.contains("is in use by another ingress")
                        && std::time::Instant::now() < deadline =>
                {
                    if !said {
                        log::info!(
                            "waiting for the old ingress to release the data directory: {e}"
                        );
                        said = true;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                other => return other,
            }
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_directory_and_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let lock = DataDirLock::acquire(&data).unwrap();
        assert_eq!(
            std::fs::read_to_string(lock.path()).unwrap().trim(),
            std::process::id().to_string()
        );
        // flock locks belong to the open file description, so a second open in the
        // same process conflicts just as another process would.
        let error = DataDirLock::acquire(&data).unwrap_err().0;
        assert!(error.contains(&data.display().to_string()), "{error}");
        assert!(
            error.contains(&format!("pid {}", std::process::id())),
            "{error}"
        );
        drop(lock);
        let again = DataDirLock::acquire(&data).unwrap();
        drop(again);
    }
}

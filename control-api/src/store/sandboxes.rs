//! The `sandboxes` table: the sandboxes running now, written by the process
//! runtime as it starts and stops them, and read at start to stop what a previous
//! run left behind. A connection of its own to `ingress.db` (SQLite in WAL mode
//! lets it write beside the control plane's), so the runtime never waits for the
//! control plane's lock; each write is one small transaction, durable on return.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection};

use super::sqlite::{open_connection, STORE_FILE};
use super::StoreError;
use crate::runtime::{SandboxLedger, SandboxRecord};

/// The ledger of running sandboxes in `ingress.db`.
pub struct SqliteSandboxLedger {
    connection: Mutex<Connection>,
    file: String,
}

impl std::fmt::Debug for SqliteSandboxLedger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteSandboxLedger")
            .field("file", &self.file)
            .finish()
    }
}

impl SqliteSandboxLedger {
    /// Opens the ledger in the store of `data_dir` (migrating it if needed).
    pub fn open(data_dir: &Path) -> Result<SqliteSandboxLedger, StoreError> {
        let (connection, file) = open_connection(&data_dir.join(STORE_FILE))?;
        Ok(SqliteSandboxLedger {
            connection: Mutex::new(connection),
            file,
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl SandboxLedger for SqliteSandboxLedger {
    fn record(&self, sandbox: &SandboxRecord) -> Result<(), String> {
        self.lock()
            .execute(
                "INSERT OR REPLACE INTO sandboxes (marker, pool, pid, pgid, start_time, port, started_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    sandbox.marker,
                    sandbox.pool,
                    sandbox.pid,
                    sandbox.pgid,
                    i64::try_from(sandbox.start_time).unwrap_or(i64::MAX),
                    sandbox.port,
                    i64::try_from(sandbox.started_at_ms).unwrap_or(i64::MAX)
                ],
            )
            .map(|_| ())
            .map_err(|e| format!("{}: recording sandbox {}: {e}", self.file, sandbox.marker))
    }

    fn forget(&self, marker: &str) -> Result<(), String> {
        self.lock()
            .execute("DELETE FROM sandboxes WHERE marker = ?1", params![marker])
            .map(|_| ())
            .map_err(|e| format!("{}: forgetting sandbox {marker}: {e}", self.file))
    }

    fn recorded(&self) -> Result<Vec<SandboxRecord>, String> {
        let connection = self.lock();
        let file = &self.file;
        let mut statement = connection
            .prepare(
                "SELECT marker, pool, pid, pgid, start_time, port, started_at_ms FROM sandboxes",
            )
            .map_err(|e| format!("{file}: reading the sandboxes: {e}"))?;
        let rows = statement
            .query_map([], |row| {
                Ok(SandboxRecord {
                    marker: row.get(0)?,
                    pool: row.get(1)?,
                    pid: row.get(2)?,
                    pgid: row.get(3)?,
                    start_time: u64::try_from(row.get::<_, i64>(4)?).unwrap_or(0),
                    port: row.get(5)?,
                    started_at_ms: u64::try_from(row.get::<_, i64>(6)?).unwrap_or(0),
                })
            })
            .map_err(|e| format!("{file}: reading the sandboxes: {e}"))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{file}: reading the sandboxes: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    fn record(marker: &str) -> SandboxRecord {
        SandboxRecord {
            marker: marker.into(),
            pool: "v1".into(),
            pid: 4242,
            pgid: 4242,
            start_time: 123_456,
            port: 40_000,
            started_at_ms: 7,
        }
    }

    #[test]
    fn records_survive_reopening_until_forgotten() {
        let dir = tempfile::tempdir().unwrap();
        let _store = SqliteStore::open(dir.path()).unwrap();
        {
            let ledger = SqliteSandboxLedger::open(dir.path()).unwrap();
            ledger.record(&record("s:v1:1")).unwrap();
            ledger.record(&record("s:v1:2")).unwrap();
            ledger.forget("s:v1:1").unwrap();
        }
        let ledger = SqliteSandboxLedger::open(dir.path()).unwrap();
        assert_eq!(ledger.recorded().unwrap(), vec![record("s:v1:2")]);
    }

    #[test]
    fn the_checks_refuse_impossible_records() {
        let dir = tempfile::tempdir().unwrap();
        let ledger = SqliteSandboxLedger::open(dir.path()).unwrap();
        let mut bad = record("s:v1:1");
        bad.pid = 0;
        let error = ledger.record(&bad).unwrap_err();
        assert!(
            error.contains("s:v1:1") && error.contains("CHECK"),
            "{error}"
        );
        let mut bad = record("s:v1:2");
        bad.port = 0;
        assert!(ledger.record(&bad).is_err());
    }
}

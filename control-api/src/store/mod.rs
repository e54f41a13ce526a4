//! Where the control plane keeps its state. The [`Store`] trait is the seam for a
//! shared store later (SPEC §8); [`SqliteStore`] is the embedded default.

mod lock;
mod migrations;
mod sandboxes;
mod sqlite;

use std::fmt;

use crate::model::{AuditEntry, Mutation, State};

pub use lock::{DataDirLock, LOCK_FILE};
pub use migrations::SCHEMA_VERSION;
pub use sandboxes::SqliteSandboxLedger;
pub use sqlite::{SqliteStore, STORE_FILE, STORE_FILE_MODE};

/// A store operation that failed; the message names the file or the record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Durable state: loaded whole at start, changed by atomic batches of mutations.
pub trait Store: Send {
    /// Everything stored.
    fn load(&self) -> Result<State, StoreError>;

    /// Applies `mutations` atomically and durably: when this returns `Ok`, they
    /// survive a crash; on error none of them was applied.
    fn commit(&mut self, mutations: &[Mutation]) -> Result<(), StoreError>;

    /// The latest `limit` audit entries, newest first.
    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError>;
}

//! The store's schema, as a list of migrations. `PRAGMA user_version` records how
//! many have been applied. A file from a newer ingress is refused, never guessed at.

use rusqlite::Connection;

use super::StoreError;

/// Schema version 1: apps, routes, versions.
const V1: &str = "
CREATE TABLE apps (
    name            TEXT PRIMARY KEY,
    created_at_ms   INTEGER NOT NULL,
    active_version  TEXT
);
CREATE TABLE routes (
    key   TEXT PRIMARY KEY,          -- host, *.suffix, or (default)
    kind  TEXT NOT NULL CHECK (kind IN ('exact', 'wildcard', 'default')),
    host  TEXT NOT NULL,             -- canonical host, wildcard suffix, or empty
    app   TEXT NOT NULL
);
CREATE TABLE versions (
    id             TEXT PRIMARY KEY,
    app            TEXT NOT NULL,
    spec           TEXT NOT NULL,    -- JSON runtime spec
    env            TEXT NOT NULL CHECK (env IN ('production', 'preview')),
    branch         TEXT,
    label          TEXT,
    expires_at_ms  INTEGER,
    created_at_ms  INTEGER NOT NULL,
    cloned_from    TEXT
);
CREATE INDEX versions_by_app ON versions (app);
";

/// Schema version 2: tombstones of expired labels, and the audit log.
const V2: &str = "
CREATE TABLE tombstones (
    app            TEXT NOT NULL,
    label          TEXT NOT NULL,
    expired_at_ms  INTEGER NOT NULL,
    PRIMARY KEY (app, label)
);
CREATE TABLE audit (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    at_ms   INTEGER NOT NULL,
    actor   TEXT NOT NULL,
    action  TEXT NOT NULL,
    target  TEXT NOT NULL,
    detail  TEXT NOT NULL
);
";

/// Schema version 3: desired state per version, the pool it shares, and stored
/// schedules. Every version written by schema 2 was a static version that was
/// serving, so its desired state is `running`; a clone shares its source's pool.
const V3: &str = "
ALTER TABLE versions ADD COLUMN desired_state TEXT NOT NULL DEFAULT 'running'
    CHECK (desired_state IN ('running', 'stopped'));
ALTER TABLE versions ADD COLUMN pool TEXT;
UPDATE versions SET pool = COALESCE(cloned_from, id);
CREATE TABLE schedules (
    version        TEXT PRIMARY KEY,  -- at most one pending change per version
    desired_state  TEXT NOT NULL CHECK (desired_state IN ('running', 'stopped')),
    due_at_ms      INTEGER NOT NULL,
    reason         TEXT NOT NULL
        CHECK (reason IN ('idle', 'superseded', 'manual', 'ttl', 'request')),
    actor          TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL
);
";

/// Schema version 4: the sandboxes running now (one row per start of a
/// process, deleted once its whole process tree is gone), so that an ingress
/// restarted after `kill -9` stops what the previous run left behind.
const V4: &str = "
CREATE TABLE sandboxes (
    marker         TEXT PRIMARY KEY,  -- INGRESS_SANDBOX of its processes
    pool           TEXT NOT NULL,
    pid            INTEGER NOT NULL CHECK (pid > 1),
    pgid           INTEGER NOT NULL CHECK (pgid > 1),
    start_time     INTEGER NOT NULL CHECK (start_time >= 0),  -- /proc/PID/stat field 22
    port           INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535),
    started_at_ms  INTEGER NOT NULL
);
";

/// Schema version 5: certificates added through the control API (`ingressctl
/// cert add`), with their private keys: the reason the store file is `0600`.
const V5: &str = "
CREATE TABLE certificates (
    name           TEXT PRIMARY KEY
        CHECK (length(name) BETWEEN 1 AND 64 AND name NOT GLOB '*[^a-z0-9._-]*'),
    chain_pem      TEXT NOT NULL CHECK (instr(chain_pem, '-----BEGIN CERTIFICATE-----') > 0),
    key_pem        TEXT NOT NULL CHECK (instr(key_pem, 'PRIVATE KEY-----') > 0),
    names          TEXT NOT NULL     -- JSON array of the leaf's DNS names
        CHECK (json_valid(names) AND json_type(names) = 'array' AND json_array_length(names) > 0),
    not_before     INTEGER NOT NULL,  -- Unix seconds
    not_after      INTEGER NOT NULL,
    fingerprint    TEXT NOT NULL CHECK (length(fingerprint) = 64),  -- SHA-256 of the leaf, hex
    issuer         TEXT NOT NULL,
    created_at_ms  INTEGER NOT NULL
);
";

/// Migration `i` takes the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[V1, V2, V3, V4, V5];

/// The schema version this build writes.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// Brings the schema of `connection` to [`SCHEMA_VERSION`], one migration per
/// transaction. Refuses a file whose schema is newer than this build knows.
pub(super) fn migrate(connection: &mut Connection, file: &str) -> Result<(), StoreError> {
    migrate_to(connection, file, SCHEMA_VERSION)
}

/// Applies migrations up to `target` (tests use this to write old-format files).
pub(super) fn migrate_to(
    connection: &mut Connection,
    file: &str,
    target: u32,
) -> Result<(), StoreError> {
    let current: u32 = connection
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .map_err(|e| StoreError(format!("{file}: cannot read the schema version: {e}")))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError(format!(
            "{file} has schema version {current}, written by a newer ingress; this build reads schema versions up to {SCHEMA_VERSION}. Upgrade the ingress or point store.data_dir elsewhere"
        )));
    }
    for version in current..target {
        let transaction = connection
            .transaction()
            .map_err(|e| StoreError(format!("{file}: {e}")))?;
        transaction
            .execute_batch(MIGRATIONS[version as usize])
            .and_then(|()| transaction.pragma_update(None, "user_version", version + 1))
            .and_then(|()| transaction.commit())
            .map_err(|e| {
                StoreError(format!(
                    "{file}: migrating the schema from version {version} to {} failed: {e}",
                    version + 1
                ))
            })?;
        log::info!("{file}: schema migrated to version {}", version + 1);
    }
    Ok(())
}

//! The embedded store: one SQLite file, `ingress.db`, in `store.data_dir`.
//!
//! Write-ahead log with `synchronous = FULL`: a committed batch is on disk before
//! `commit` returns, so it survives `kill -9` and power loss.

use std::path::Path;

use rusqlite::{params, Connection};

use super::migrations::migrate;
use super::{Store, StoreError};
use crate::model::{
    App, AuditEntry, CertRecord, ChangeReason, DesiredState, Environment, Mutation, Route,
    RouteKind, RuntimeSpec, Schedule, State, Tombstone, Version,
};

/// The file name inside `store.data_dir`.
pub const STORE_FILE: &str = "ingress.db";

/// The SQLite store.
pub struct SqliteStore {
    connection: Connection,
    file: String,
}

fn sql_error(file: &str) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |e| StoreError(format!("{file}: {e}"))
}

fn ms(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

fn to_sql_ms(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A connection to the store file at `path`, configured (WAL, `synchronous =
/// FULL`, a busy timeout) and migrated to the current schema, with the file's
/// name for error messages. Every connection to the store is opened this way.
pub(crate) fn open_connection(path: &Path) -> Result<(Connection, String), StoreError> {
    let file = path.display().to_string();
    restrict_permissions(path, &file)?;
    let mut connection = Connection::open(path)
        .map_err(|e| StoreError(format!("{file}: cannot open the store: {e}")))?;
    connection
        .pragma_update(None, "journal_mode", "WAL")
        .and_then(|()| connection.pragma_update(None, "synchronous", "FULL"))
        .and_then(|()| connection.busy_timeout(std::time::Duration::from_secs(5)))
        .map_err(|e| StoreError(format!("{file}: cannot configure the store: {e}")))?;
    migrate(&mut connection, &file)?;
    Ok((connection, file))
}

/// The mode of the store file and its `-wal` and `-shm` companions: it holds
/// certificates' private keys, so only the ingress's own user may read it.
pub const STORE_FILE_MODE: u32 = 0o600;

/// Creates the store file with mode `0600` if it does not exist (SQLite creates
/// its `-wal` and `-shm` files with the database file's mode), and takes group
/// and other access away from an existing one and its companions.
fn restrict_permissions(path: &Path, file: &str) -> Result<(), StoreError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(STORE_FILE_MODE)
        .open(path)
        .map_err(|e| StoreError(format!("{file}: cannot open the store for writing: {e}")))?;
    let mut companions = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        companions.push(name.into());
    }
    for companion in companions {
        let Ok(metadata) = std::fs::metadata(&companion) else {
            continue; // not there yet: SQLite creates it with the file's mode
        };
        if metadata.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(&companion, std::fs::Permissions::from_mode(STORE_FILE_MODE))
                .map_err(|e| {
                    StoreError(format!(
                        "{}: cannot restrict it to mode 0600 (it holds private keys): {e}",
                        companion.display()
                    ))
                })?;
            log::warn!(
                "{}: was readable by other users; now mode 0600 (it holds private keys)",
                companion.display()
            );
        }
    }
    Ok(())
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir` and migrates its schema.
    pub fn open(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|e| {
            StoreError(format!(
                "store.data_dir {}: cannot create it: {e}",
                data_dir.display()
            ))
        })?;
        Self::open_file(&data_dir.join(STORE_FILE))
    }

    /// Opens the store file at `path` and migrates its schema.
    pub fn open_file(path: &Path) -> Result<SqliteStore, StoreError> {
        let (connection, file) = open_connection(path)?;
        Ok(SqliteStore { connection, file })
    }

    #[cfg(test)]
    pub(crate) fn connection(&self) -> &Connection {
        &self.connection
    }

    fn load_versions(&self, state: &mut State) -> Result<(), StoreError> {
        let file = &self.file;
        let mut statement = self
            .connection
            .prepare(
                "SELECT id, app, spec, env, branch, label, expires_at_ms, created_at_ms, cloned_from, desired_state, pool FROM versions",
            )
            .map_err(sql_error(file))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, Option<String>>(4)?,
                    row.get::<_, Option<String>>(5)?,
                    row.get::<_, Option<i64>>(6)?,
                    row.get::<_, i64>(7)?,
                    row.get::<_, Option<String>>(8)?,
                    row.get::<_, String>(9)?,
                    row.get::<_, Option<String>>(10)?,
                ))
            })
            .map_err(sql_error(file))?;
        for row in rows {
            let (id, app, spec, env, branch, label, expires, created, cloned_from, desired, pool) =
                row.map_err(sql_error(file))?;
            let desired = DesiredState::parse(&desired).ok_or_else(|| {
                StoreError(format!(
                    "{file}: version {id} has unknown desired state {desired:?}"
                ))
            })?;
            let spec: RuntimeSpec = serde_json::from_str(&spec).map_err(|e| {
                StoreError(format!(
                    "{file}: version {id} has an unreadable runtime spec: {e}"
                ))
            })?;
            let env = Environment::parse(&env).ok_or_else(|| {
                StoreError(format!(
                    "{file}: version {id} has unknown environment {env:?}"
                ))
            })?;
            state.versions.insert(
                id.clone(),
                Version {
                    id: id.clone(),
                    app,
                    spec,
                    env,
                    branch,
                    label,
                    expires_at_ms: expires.map(ms),
                    created_at_ms: ms(created),
                    pool: pool.unwrap_or(id),
                    cloned_from,
                    desired,
                },
            );
        }
        Ok(())
    }

    fn load_schedules(&self, state: &mut State) -> Result<(), StoreError> {
        let file = &self.file;
        let mut statement = self
            .connection
            .prepare(
                "SELECT version, desired_state, due_at_ms, reason, actor, created_at_ms FROM schedules",
            )
            .map_err(sql_error(file))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, i64>(2)?,
                    row.get::<_, String>(3)?,
                    row.get::<_, String>(4)?,
                    row.get::<_, i64>(5)?,
                ))
            })
            .map_err(sql_error(file))?;
        for row in rows {
            let (version, desired, due, reason, actor, created) = row.map_err(sql_error(file))?;
            let desired = DesiredState::parse(&desired).ok_or_else(|| {
                StoreError(format!(
                    "{file}: the schedule of version {version} has unknown desired state {desired:?}"
                ))
            })?;
            let reason = ChangeReason::parse(&reason).ok_or_else(|| {
                StoreError(format!(
                    "{file}: the schedule of version {version} has unknown reason {reason:?}"
                ))
            })?;
            state.schedules.insert(
                version.clone(),
                Schedule {
                    version,
                    desired,
                    due_at_ms: ms(due),
                    reason,
                    actor,
                    created_at_ms: ms(created),
                },
            );
        }
        Ok(())
    }
}

impl SqliteStore {
    fn load_certificates(&self, state: &mut State) -> Result<(), StoreError> {
        let file = &self.file;
        let mut statement = self
            .connection
            .prepare(
                "SELECT name, chain_pem, key_pem, names, not_before, not_after, fingerprint, issuer, created_at_ms FROM certificates",
            )
            .map_err(sql_error(file))?;
        let rows = statement
            .query_map([], |row| {
                Ok((
                    CertRecord {
                        name: row.get(0)?,
                        chain_pem: row.get(1)?,
                        key_pem: row.get(2)?,
                        names: Vec::new(),
                        not_before: row.get(4)?,
                        not_after: row.get(5)?,
                        fingerprint: row.get(6)?,
                        issuer: row.get(7)?,
                        created_at_ms: ms(row.get(8)?),
                    },
                    row.get::<_, String>(3)?,
                ))
            })
            .map_err(sql_error(file))?;
        for row in rows {
            let (mut record, names) = row.map_err(sql_error(file))?;
            record.names = serde_json::from_str(&names).map_err(|e| {
                StoreError(format!(
                    "{file}: certificate {} has unreadable names: {e}",
                    record.name
                ))
            })?;
            state.certificates.insert(record.name.clone(), record);
        }
        Ok(())
    }
}

impl Store for SqliteStore {
    fn load(&self) -> Result<State, StoreError> {
        let file = &self.file;
        let mut state = State::default();

        let mut apps = self
            .connection
            .prepare("SELECT name, created_at_ms, active_version FROM apps")
            .map_err(sql_error(file))?;
        let rows = apps
            .query_map([], |row| {
                Ok(App {
                    name: row.get(0)?,
                    created_at_ms: ms(row.get(1)?),
                    active_version: row.get(2)?,
                })
            })
            .map_err(sql_error(file))?;
        for app in rows {
            let app = app.map_err(sql_error(file))?;
            state.apps.insert(app.name.clone(), app);
        }

        let mut routes = self
            .connection
            .prepare("SELECT kind, host, app FROM routes")
            .map_err(sql_error(file))?;
        let rows = routes
            .query_map([], |row| {
                Ok((
                    row.get::<_, String>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, String>(2)?,
                ))
            })
            .map_err(sql_error(file))?;
        for row in rows {
            let (kind, host, app) = row.map_err(sql_error(file))?;
            let kind = RouteKind::parse(&kind).ok_or_else(|| {
                StoreError(format!("{file}: route {host:?} has unknown kind {kind:?}"))
            })?;
            let route = Route { kind, host, app };
            state.routes.insert(route.key(), route);
        }

        self.load_versions(&mut state)?;
        self.load_schedules(&mut state)?;
        self.load_certificates(&mut state)?;

        let mut tombstones = self
            .connection
            .prepare("SELECT app, label, expired_at_ms FROM tombstones")
            .map_err(sql_error(file))?;
        let rows = tombstones
            .query_map([], |row| {
                Ok(Tombstone {
                    app: row.get(0)?,
                    label: row.get(1)?,
                    expired_at_ms: ms(row.get(2)?),
                })
            })
            .map_err(sql_error(file))?;
        for tombstone in rows {
            let tombstone = tombstone.map_err(sql_error(file))?;
            state
                .tombstones
                .insert((tombstone.app.clone(), tombstone.label.clone()), tombstone);
        }
        state.reindex();
        Ok(state)
    }

    fn commit(&mut self, mutations: &[Mutation]) -> Result<(), StoreError> {
        let file = self.file.clone();
        let transaction = self.connection.transaction().map_err(sql_error(&file))?;
        for mutation in mutations {
            let result = match mutation {
                Mutation::PutApp(app) => transaction.execute(
                    "INSERT OR REPLACE INTO apps (name, created_at_ms, active_version) VALUES (?1, ?2, ?3)",
                    params![app.name, to_sql_ms(app.created_at_ms), app.active_version],
                ),
                Mutation::DeleteApp(name) => {
                    transaction.execute("DELETE FROM apps WHERE name = ?1", params![name])
                }
                Mutation::PutRoute(route) => transaction.execute(
                    "INSERT OR REPLACE INTO routes (key, kind, host, app) VALUES (?1, ?2, ?3, ?4)",
                    params![route.key(), route.kind.as_str(), route.host, route.app],
                ),
                Mutation::DeleteRoute(key) => {
                    transaction.execute("DELETE FROM routes WHERE key = ?1", params![key])
                }
                Mutation::PutVersion(version) => {
                    let spec = serde_json::to_string(&version.spec).map_err(|e| {
                        StoreError(format!("version {}: cannot encode its spec: {e}", version.id))
                    })?;
                    transaction.execute(
                        "INSERT OR REPLACE INTO versions (id, app, spec, env, branch, label, expires_at_ms, created_at_ms, cloned_from, desired_state, pool) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                        params![
                            version.id,
                            version.app,
                            spec,
                            version.env.as_str(),
                            version.branch,
                            version.label,
                            version.expires_at_ms.map(to_sql_ms),
                            to_sql_ms(version.created_at_ms),
                            version.cloned_from,
                            version.desired.as_str(),
                            version.pool
                        ],
                    )
                }
                Mutation::DeleteVersion(id) => transaction
                    .execute("DELETE FROM schedules WHERE version = ?1", params![id])
                    .and_then(|_| {
                        transaction.execute("DELETE FROM versions WHERE id = ?1", params![id])
                    }),
                Mutation::PutSchedule(schedule) => transaction.execute(
                    "INSERT OR REPLACE INTO schedules (version, desired_state, due_at_ms, reason, actor, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![
                        schedule.version,
                        schedule.desired.as_str(),
                        to_sql_ms(schedule.due_at_ms),
                        schedule.reason.as_str(),
                        schedule.actor,
                        to_sql_ms(schedule.created_at_ms)
                    ],
                ),
                Mutation::DeleteSchedule(id) => {
                    transaction.execute("DELETE FROM schedules WHERE version = ?1", params![id])
                }
                Mutation::PutTombstone(tombstone) => transaction.execute(
                    "INSERT OR REPLACE INTO tombstones (app, label, expired_at_ms) VALUES (?1, ?2, ?3)",
                    params![tombstone.app, tombstone.label, to_sql_ms(tombstone.expired_at_ms)],
                ),
                Mutation::DeleteTombstone { app, label } => transaction.execute(
                    "DELETE FROM tombstones WHERE app = ?1 AND label = ?2",
                    params![app, label],
                ),
                Mutation::PutCertificate(record) => {
                    let names = serde_json::to_string(&record.names).map_err(|e| {
                        StoreError(format!("certificate {}: cannot encode its names: {e}", record.name))
                    })?;
                    transaction.execute(
                        "INSERT OR REPLACE INTO certificates (name, chain_pem, key_pem, names, not_before, not_after, fingerprint, issuer, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                        params![
                            record.name,
                            record.chain_pem,
                            record.key_pem,
                            names,
                            record.not_before,
                            record.not_after,
                            record.fingerprint,
                            record.issuer,
                            to_sql_ms(record.created_at_ms)
                        ],
                    )
                }
                Mutation::DeleteCertificate(name) => {
                    transaction.execute("DELETE FROM certificates WHERE name = ?1", params![name])
                }
                Mutation::Audit(entry) => transaction.execute(
                    "INSERT INTO audit (at_ms, actor, action, target, detail) VALUES (?1, ?2, ?3, ?4, ?5)",
                    params![to_sql_ms(entry.at_ms), entry.actor, entry.action, entry.target, entry.detail],
                ),
            };
            result.map_err(sql_error(&file))?;
        }
        transaction.commit().map_err(sql_error(&file))
    }

    fn audit_log(&self, limit: usize) -> Result<Vec<AuditEntry>, StoreError> {
        let file = &self.file;
        let mut statement = self
            .connection
            .prepare(
                "SELECT at_ms, actor, action, target, detail FROM audit ORDER BY seq DESC LIMIT ?1",
            )
            .map_err(sql_error(file))?;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = statement
            .query_map(params![limit], |row| {
                Ok(AuditEntry {
                    at_ms: ms(row.get(0)?),
                    actor: row.get(1)?,
                    action: row.get(2)?,
                    target: row.get(3)?,
                    detail: row.get(4)?,
                })
            })
            .map_err(sql_error(file))?;
        rows.collect::<Result<Vec<_>, _>>().map_err(sql_error(file))
    }
}

/// The schema version stored in `path`, if the file exists and has one.
#[cfg(test)]
fn stored_schema_version(path: &Path) -> Result<Option<u32>, StoreError> {
    if !path.exists() {
        return Ok(None);
    }
    let connection = Connection::open(path).map_err(sql_error(&path.display().to_string()))?;
    connection
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map(Some)
        .map_err(sql_error(&path.display().to_string()))
}

#[cfg(test)]
mod tests {
    use super::super::SCHEMA_VERSION;
    use super::*;
    use std::net::SocketAddr;

    fn version(id: &str, label: Option<&str>) -> Version {
        Version {
            id: id.into(),
            app: "shop".into(),
            spec: RuntimeSpec::Static {
                upstreams: vec![SocketAddr::from(([127, 0, 0, 1], 3000))],
            },
            env: Environment::Preview,
            branch: Some("feature/x".into()),
            label: label.map(str::to_string),
            expires_at_ms: label.map(|_| 5_000),
            created_at_ms: 1_000,
            cloned_from: None,
            desired: DesiredState::Running,
            pool: id.into(),
        }
    }

    #[test]
    fn committed_state_loads_back_after_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let mutations = vec![
            Mutation::PutApp(App {
                name: "shop".into(),
                created_at_ms: 1,
                active_version: Some("v1".into()),
            }),
            Mutation::PutRoute(Route {
                kind: RouteKind::Exact,
                host: "shop.example.com".into(),
                app: "shop".into(),
            }),
            Mutation::PutRoute(Route {
                kind: RouteKind::Wildcard,
                host: "example.org".into(),
                app: "shop".into(),
            }),
            Mutation::PutRoute(Route {
                kind: RouteKind::Default,
                host: String::new(),
                app: "shop".into(),
            }),
            Mutation::PutVersion(version("v1", None)),
            Mutation::PutVersion(version("p1", Some("pr-1"))),
            Mutation::PutTombstone(Tombstone {
                app: "shop".into(),
                label: "old".into(),
                expired_at_ms: 7,
            }),
            Mutation::PutSchedule(Schedule {
                version: "p1".into(),
                desired: DesiredState::Stopped,
                due_at_ms: 60_000,
                reason: ChangeReason::Superseded,
                actor: "system".into(),
                created_at_ms: 8,
            }),
            Mutation::Audit(AuditEntry {
                at_ms: 9,
                actor: "admin".into(),
                action: "deploy".into(),
                target: "shop/v1".into(),
                detail: String::new(),
            }),
        ];
        let mut expected = State::default();
        expected.apply(&mutations);
        {
            let mut store = SqliteStore::open(dir.path()).unwrap();
            store.commit(&mutations).unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(store.load().unwrap(), expected);
        assert_eq!(store.audit_log(10).unwrap().len(), 1);

        let mut store = store;
        store
            .commit(&[
                Mutation::DeleteVersion("p1".into()),
                Mutation::DeleteRoute("*.example.org".into()),
            ])
            .unwrap();
        let state = store.load().unwrap();
        assert!(!state.versions.contains_key("p1"));
        assert!(
            state.schedules.is_empty(),
            "a deleted version's schedule goes with it"
        );
        assert!(!state.routes.contains_key("*.example.org"));
    }

    #[test]
    fn a_file_of_schema_2_is_migrated_to_desired_state_pools_and_schedules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let connection = Connection::open(&path).unwrap();
            // Schemas 1 and 2 exactly as they shipped, frozen here.
            connection
                .execute_batch(
                    "CREATE TABLE apps (name TEXT PRIMARY KEY, created_at_ms INTEGER NOT NULL, active_version TEXT);
                     CREATE TABLE routes (key TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('exact', 'wildcard', 'default')), host TEXT NOT NULL, app TEXT NOT NULL);
                     CREATE TABLE versions (id TEXT PRIMARY KEY, app TEXT NOT NULL, spec TEXT NOT NULL, env TEXT NOT NULL CHECK (env IN ('production', 'preview')), branch TEXT, label TEXT, expires_at_ms INTEGER, created_at_ms INTEGER NOT NULL, cloned_from TEXT);
                     CREATE INDEX versions_by_app ON versions (app);
                     CREATE TABLE tombstones (app TEXT NOT NULL, label TEXT NOT NULL, expired_at_ms INTEGER NOT NULL, PRIMARY KEY (app, label));
                     CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL);
                     PRAGMA user_version = 2;",
                )
                .unwrap();
            connection
                .execute_batch(
                    "INSERT INTO apps VALUES ('shop', 1, 'v1');
                     INSERT INTO versions VALUES ('v1', 'shop', '{\"runtime\":\"static\",\"upstreams\":[\"127.0.0.1:3000\"]}', 'production', NULL, NULL, NULL, 1, NULL);
                     INSERT INTO versions VALUES ('p1', 'shop', '{\"runtime\":\"static\",\"upstreams\":[\"127.0.0.1:3000\"]}', 'preview', 'main', 'pr-1', 99999999999999, 2, 'v1');
                     INSERT INTO audit (at_ms, actor, action, target, detail) VALUES (3, 'admin', 'deploy', 'shop/p1', '');",
                )
                .unwrap();
        }
        let mut store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(stored_schema_version(&path).unwrap(), Some(SCHEMA_VERSION));
        let state = store.load().unwrap();
        // Every schema-2 version was a serving static version: running.
        assert_eq!(state.versions["v1"].desired, DesiredState::Running);
        assert_eq!(state.versions["p1"].desired, DesiredState::Running);
        assert_eq!(state.versions["v1"].pool, "v1");
        assert_eq!(
            state.versions["p1"].pool, "v1",
            "a clone shares its source's pool"
        );
        assert_eq!(store.audit_log(10).unwrap().len(), 1);
        // The new table and column work, and refuse values outside the enum.
        let schedule = Schedule {
            version: "p1".into(),
            desired: DesiredState::Stopped,
            due_at_ms: 5,
            reason: ChangeReason::Idle,
            actor: "system".into(),
            created_at_ms: 4,
        };
        store
            .commit(&[Mutation::PutSchedule(schedule.clone())])
            .unwrap();
        assert_eq!(store.load().unwrap().schedules["p1"], schedule);
        let refused = store.connection().execute(
            "UPDATE versions SET desired_state = 'standby' WHERE id = 'v1'",
            [],
        );
        assert!(
            refused.is_err(),
            "the CHECK constraint keeps the enum closed"
        );
    }

    #[test]
    fn a_file_of_schema_3_is_migrated_to_the_sandboxes_table_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let connection = Connection::open(&path).unwrap();
            // Schema 3 exactly as it shipped, frozen here.
            connection
                .execute_batch(
                    "CREATE TABLE apps (name TEXT PRIMARY KEY, created_at_ms INTEGER NOT NULL, active_version TEXT);
                     CREATE TABLE routes (key TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('exact', 'wildcard', 'default')), host TEXT NOT NULL, app TEXT NOT NULL);
                     CREATE TABLE versions (id TEXT PRIMARY KEY, app TEXT NOT NULL, spec TEXT NOT NULL, env TEXT NOT NULL CHECK (env IN ('production', 'preview')), branch TEXT, label TEXT, expires_at_ms INTEGER, created_at_ms INTEGER NOT NULL, cloned_from TEXT, desired_state TEXT NOT NULL DEFAULT 'running' CHECK (desired_state IN ('running', 'stopped')), pool TEXT);
                     CREATE INDEX versions_by_app ON versions (app);
                     CREATE TABLE tombstones (app TEXT NOT NULL, label TEXT NOT NULL, expired_at_ms INTEGER NOT NULL, PRIMARY KEY (app, label));
                     CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL);
                     CREATE TABLE schedules (version TEXT PRIMARY KEY, desired_state TEXT NOT NULL CHECK (desired_state IN ('running', 'stopped')), due_at_ms INTEGER NOT NULL, reason TEXT NOT NULL CHECK (reason IN ('idle', 'superseded', 'manual', 'ttl', 'request')), actor TEXT NOT NULL, created_at_ms INTEGER NOT NULL);
                     PRAGMA user_version = 3;",
                )
                .unwrap();
            connection
                .execute_batch(
                    "INSERT INTO apps VALUES ('shop', 1, 'v1');
                     INSERT INTO versions VALUES ('v1', 'shop', '{\"runtime\":\"process\",\"command\":\"exec app\",\"ready\":{\"probe\":\"http\",\"path\":\"/\"}}', 'production', NULL, NULL, NULL, 1, NULL, 'stopped', 'v1');
                     INSERT INTO schedules VALUES ('v1', 'running', 50, 'manual', 'admin', 4);",
                )
                .unwrap();
        }
        let store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(stored_schema_version(&path).unwrap(), Some(SCHEMA_VERSION));
        let state = store.load().unwrap();
        assert_eq!(state.versions["v1"].desired, DesiredState::Stopped);
        assert_eq!(state.schedules["v1"].reason, ChangeReason::Manual);
        // The new table works, and its checks refuse impossible rows.
        let connection = store.connection();
        connection
            .execute(
                "INSERT INTO sandboxes VALUES ('s:v1:1', 'v1', 4242, 4242, 99, 40000, 5)",
                [],
            )
            .unwrap();
        for bad in [
            "INSERT INTO sandboxes VALUES ('s:v1:2', 'v1', 0, 4242, 99, 40000, 5)",
            "INSERT INTO sandboxes VALUES ('s:v1:3', 'v1', 4242, 1, 99, 40000, 5)",
            "INSERT INTO sandboxes VALUES ('s:v1:4', 'v1', 4242, 4242, 99, 70000, 5)",
            "INSERT INTO sandboxes VALUES ('s:v1:1', 'v1', 4243, 4243, 99, 40001, 5)",
        ] {
            assert!(connection.execute(bad, []).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_file_of_schema_1_is_migrated_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let connection = Connection::open(&path).unwrap();
            // Schema 1 exactly as it shipped, frozen here so that an edit to the
            // live migration cannot silently change what this test checks.
            connection
                .execute_batch(
                    "CREATE TABLE apps (name TEXT PRIMARY KEY, created_at_ms INTEGER NOT NULL, active_version TEXT);
                     CREATE TABLE routes (key TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('exact', 'wildcard', 'default')), host TEXT NOT NULL, app TEXT NOT NULL);
                     CREATE TABLE versions (id TEXT PRIMARY KEY, app TEXT NOT NULL, spec TEXT NOT NULL, env TEXT NOT NULL CHECK (env IN ('production', 'preview')), branch TEXT, label TEXT, expires_at_ms INTEGER, created_at_ms INTEGER NOT NULL, cloned_from TEXT);
                     CREATE INDEX versions_by_app ON versions (app);
                     PRAGMA user_version = 1;",
                )
                .unwrap();
            connection
                .execute_batch(
                    "INSERT INTO apps VALUES ('shop', 1, 'v1');
                     INSERT INTO routes VALUES ('shop.example.com', 'exact', 'shop.example.com', 'shop');
                     INSERT INTO versions VALUES ('v1', 'shop', '{\"runtime\":\"static\",\"upstreams\":[\"127.0.0.1:3000\"]}', 'production', NULL, NULL, NULL, 1, NULL);",
                )
                .unwrap();
        }
        assert_eq!(stored_schema_version(&path).unwrap(), Some(1));
        let mut store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(stored_schema_version(&path).unwrap(), Some(SCHEMA_VERSION));
        let state = store.load().unwrap();
        assert_eq!(state.apps["shop"].active_version.as_deref(), Some("v1"));
        assert_eq!(state.routes["shop.example.com"].kind, RouteKind::Exact);
        assert_eq!(state.versions["v1"].env, Environment::Production);
        // The tables schema 2 added work.
        store
            .commit(&[Mutation::PutTombstone(Tombstone {
                app: "shop".into(),
                label: "x".into(),
                expired_at_ms: 1,
            })])
            .unwrap();
        assert_eq!(store.load().unwrap().tombstones.len(), 1);
    }

    fn cert_record(name: &str) -> CertRecord {
        CertRecord {
            name: name.into(),
            chain_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            key_pem: "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n".into(),
            names: vec!["shop.example.com".into(), "*.shop.example.com".into()],
            not_before: 1_577_836_800,
            not_after: 4_102_444_800,
            fingerprint: "0f".repeat(32),
            issuer: "CN=ingress test CA".into(),
            created_at_ms: 11,
        }
    }

    #[test]
    fn a_file_of_schema_4_is_migrated_to_the_certificates_table_and_keeps_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        {
            let connection = Connection::open(&path).unwrap();
            // Schema 4 exactly as it shipped, frozen here.
            connection
                .execute_batch(
                    "CREATE TABLE apps (name TEXT PRIMARY KEY, created_at_ms INTEGER NOT NULL, active_version TEXT);
                     CREATE TABLE routes (key TEXT PRIMARY KEY, kind TEXT NOT NULL CHECK (kind IN ('exact', 'wildcard', 'default')), host TEXT NOT NULL, app TEXT NOT NULL);
                     CREATE TABLE versions (id TEXT PRIMARY KEY, app TEXT NOT NULL, spec TEXT NOT NULL, env TEXT NOT NULL CHECK (env IN ('production', 'preview')), branch TEXT, label TEXT, expires_at_ms INTEGER, created_at_ms INTEGER NOT NULL, cloned_from TEXT, desired_state TEXT NOT NULL DEFAULT 'running' CHECK (desired_state IN ('running', 'stopped')), pool TEXT);
                     CREATE INDEX versions_by_app ON versions (app);
                     CREATE TABLE tombstones (app TEXT NOT NULL, label TEXT NOT NULL, expired_at_ms INTEGER NOT NULL, PRIMARY KEY (app, label));
                     CREATE TABLE audit (seq INTEGER PRIMARY KEY AUTOINCREMENT, at_ms INTEGER NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL, target TEXT NOT NULL, detail TEXT NOT NULL);
                     CREATE TABLE schedules (version TEXT PRIMARY KEY, desired_state TEXT NOT NULL CHECK (desired_state IN ('running', 'stopped')), due_at_ms INTEGER NOT NULL, reason TEXT NOT NULL CHECK (reason IN ('idle', 'superseded', 'manual', 'ttl', 'request')), actor TEXT NOT NULL, created_at_ms INTEGER NOT NULL);
                     CREATE TABLE sandboxes (marker TEXT PRIMARY KEY, pool TEXT NOT NULL, pid INTEGER NOT NULL CHECK (pid > 1), pgid INTEGER NOT NULL CHECK (pgid > 1), start_time INTEGER NOT NULL CHECK (start_time >= 0), port INTEGER NOT NULL CHECK (port BETWEEN 1 AND 65535), started_at_ms INTEGER NOT NULL);
                     PRAGMA user_version = 4;",
                )
                .unwrap();
            connection
                .execute_batch(
                    "INSERT INTO apps VALUES ('shop', 1, 'v1');
                     INSERT INTO routes VALUES ('shop.example.com', 'exact', 'shop.example.com', 'shop');
                     INSERT INTO versions VALUES ('v1', 'shop', '{\"runtime\":\"static\",\"upstreams\":[\"127.0.0.1:3000\"]}', 'production', NULL, NULL, NULL, 1, NULL, 'running', 'v1');
                     INSERT INTO sandboxes VALUES ('s:v1:1', 'v1', 4242, 4242, 99, 40000, 5);
                     INSERT INTO audit (at_ms, actor, action, target, detail) VALUES (3, 'admin', 'deploy', 'shop/v1', '');",
                )
                .unwrap();
        }
        let mut store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(stored_schema_version(&path).unwrap(), Some(SCHEMA_VERSION));
        let state = store.load().unwrap();
        assert_eq!(state.apps["shop"].active_version.as_deref(), Some("v1"));
        assert_eq!(state.routes["shop.example.com"].app, "shop");
        assert!(state.certificates.is_empty());
        assert_eq!(store.audit_log(10).unwrap().len(), 1);
        let count: i64 = store
            .connection()
            .query_row("SELECT count(*) FROM sandboxes", [], |row| row.get(0))
            .unwrap();
        assert_eq!(count, 1, "the sandbox ledger keeps its rows");
        // The new table works, loads back, and its checks refuse impossible rows.
        store
            .commit(&[Mutation::PutCertificate(cert_record("shop"))])
            .unwrap();
        assert_eq!(
            store.load().unwrap().certificates["shop"],
            cert_record("shop")
        );
        let insert = |name: &str, chain: &str, key: &str, names: &str, fingerprint: &str| {
            store.connection().execute(
                "INSERT INTO certificates VALUES (?1, ?2, ?3, ?4, 0, 1, ?5, 'CN=x', 1)",
                params![name, chain, key, names, fingerprint],
            )
        };
        let chain = "-----BEGIN CERTIFICATE-----";
        let key = "-----BEGIN PRIVATE KEY-----";
        let names = "[\"a.example.com\"]";
        let fingerprint = "ab".repeat(32);
        insert("ok", chain, key, names, &fingerprint).unwrap();
        for (what, result) in [
            (
                "bad name",
                insert("Bad/Name", chain, key, names, &fingerprint),
            ),
            ("empty name", insert("", chain, key, names, &fingerprint)),
            (
                "no PEM chain",
                insert("c1", "garbage", key, names, &fingerprint),
            ),
            (
                "no PEM key",
                insert("c2", chain, "garbage", names, &fingerprint),
            ),
            ("no names", insert("c3", chain, key, "[]", &fingerprint)),
            (
                "names not JSON",
                insert("c4", chain, key, "a.example.com", &fingerprint),
            ),
            ("short fingerprint", insert("c5", chain, key, names, "abc")),
            ("same name", insert("ok", chain, key, names, &fingerprint)),
        ] {
            assert!(result.is_err(), "{what}");
        }
    }

    #[test]
    fn certificates_are_replaced_by_name_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = SqliteStore::open(dir.path()).unwrap();
        let mut newer = cert_record("shop");
        newer.fingerprint = "1e".repeat(32);
        store
            .commit(&[
                Mutation::PutCertificate(cert_record("shop")),
                Mutation::PutCertificate(cert_record("other")),
            ])
            .unwrap();
        store
            .commit(&[
                Mutation::PutCertificate(newer.clone()),
                Mutation::DeleteCertificate("other".into()),
            ])
            .unwrap();
        let state = SqliteStore::open(dir.path()).unwrap().load().unwrap();
        assert_eq!(state.certificates.len(), 1);
        assert_eq!(state.certificates["shop"], newer);
    }

    /// The file holds private keys: it and its WAL companions are `0600`, also
    /// under a permissive umask, and an existing file readable by others is
    /// restricted when opened.
    #[test]
    fn the_store_file_and_its_wal_files_are_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(STORE_FILE);
        // SAFETY: umask only changes this process's file-creation mask.
        let old = unsafe { libc::umask(0o022) };
        let mut store = SqliteStore::open(dir.path()).unwrap();
        store
            .commit(&[Mutation::PutCertificate(cert_record("shop"))])
            .unwrap();
        // SAFETY: as above, restoring the previous mask.
        unsafe { libc::umask(old) };
        for suffix in ["", "-wal", "-shm"] {
            let file = dir.path().join(format!("{STORE_FILE}{suffix}"));
            assert!(
                file.exists(),
                "{} exists while the store is open",
                file.display()
            );
            assert_eq!(mode(&file), 0o600, "{}", file.display());
        }
        drop(store);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let _store = SqliteStore::open(dir.path()).unwrap();
        assert_eq!(mode(&path), 0o600, "an existing file is restricted");
    }

    #[test]
    fn a_file_from_a_newer_ingress_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SqliteStore::open(dir.path()).unwrap();
            store
                .connection()
                .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
                .unwrap();
        }
        let error = SqliteStore::open(dir.path()).err().unwrap().0;
        assert!(error.contains("written by a newer ingress"), "{error}");
        assert!(
            error.contains(&format!("schema version {}", SCHEMA_VERSION + 1)),
            "{error}"
        );
    }

    #[test]
    fn an_unwritable_data_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let error = SqliteStore::open(&file.join("data")).err().unwrap().0;
        assert!(error.starts_with("store.data_dir "), "{error}");
    }
}

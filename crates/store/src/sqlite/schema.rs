//! Opening the database file: recognising it (never replacing a corrupt or foreign file),
//! setting the durability pragmas, and migrating the schema to [`SCHEMA_VERSION`].

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode, OpenFlags, TransactionBehavior};

use super::{is_busy, sqlite_error, SqliteOptions};
use crate::error::StoreError;

/// `PRAGMA application_id` of a pr-helper store ("PRST"): tells our file from another
/// application's SQLite database.
pub(crate) const APPLICATION_ID: i64 = 0x5052_5354;

/// The schema version this build writes (`PRAGMA user_version`); older files are migrated on
/// open, newer ones refused.
pub const SCHEMA_VERSION: i64 = 1;

/// The migrations: entry `i` takes the schema from version `i` to `i + 1`. Version 0 is an
/// empty file. A new schema version appends one entry; entries are never edited.
pub(crate) const MIGRATIONS: &[&str] = &[
    // 0 → 1: one row per logical unit, its state as JSON and its PR generation.
    "CREATE TABLE logical_units (
         lu_id      TEXT PRIMARY KEY NOT NULL,
         generation INTEGER NOT NULL,
         state      TEXT NOT NULL
     ) STRICT;",
];

/// What the file holds before we write anything.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// A new or empty database: ours to initialise.
    Empty,
    /// A store database at this schema version.
    Store(i64),
}

/// Opens `path` (creating it when absent) as a store database at [`SCHEMA_VERSION`]: WAL
/// journal, `synchronous=FULL`, the busy timeout of `options`.
pub(crate) fn open(path: &Path, options: &SqliteOptions) -> Result<Connection, StoreError> {
    open_with(path, options, MIGRATIONS)
}

pub(crate) fn open_with(
    path: &Path,
    options: &SqliteOptions,
    migrations: &[&str],
) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let mut conn = Connection::open_with_flags(path, flags).map_err(|e| StoreError::Open {
        path: path.to_owned(),
        source: Arc::new(e),
    })?;
    let err = |op: &'static str| move |e| sqlite_error(path, None, op, options.busy_timeout, e);
    conn.busy_timeout(options.busy_timeout)
        .map_err(err("setting the busy timeout"))?;
    // Look before writing anything: a corrupt, foreign or newer file is left as it is.
    inspect_snapshot(&mut conn, path, options, migrations.len() as i64)?;
    let mode = set_wal(&conn, options.busy_timeout).map_err(err("setting journal_mode=WAL"))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: format!("journal mode stays {mode:?} instead of WAL"),
        });
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(err("setting synchronous=FULL"))?;
    // Another process may be initialising or migrating the same file: decide again under
    // the write lock.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(err("locking the database to check its schema"))?;
    let found = inspect(&tx, path, options, migrations.len() as i64)?;
    let from = match found {
        Found::Empty => {
            tx.pragma_update(None, "application_id", APPLICATION_ID)
                .map_err(err("setting the application id"))?;
            0
        }
        Found::Store(v) => v,
    };
    for (version, sql) in migrations.iter().enumerate().skip(from as usize) {
        tx.execute_batch(sql).map_err(err("migrating the schema"))?;
        tx.pragma_update(None, "user_version", version as i64 + 1)
            .map_err(err("migrating the schema"))?;
    }
    tx.commit().map_err(err("committing the schema"))?;
    Ok(conn)
}

/// `PRAGMA journal_mode=WAL`, retried for up to `timeout` while the file is busy; returns the
/// journal mode it leaves. Two processes opening a new file at once can both hold a shared lock
/// and both want the exclusive one the switch needs: SQLite then answers one of them BUSY at
/// once rather than calling the busy handler (which would wait on a lock never given up), and
/// that one must let go and ask again.
fn set_wal(conn: &Connection, timeout: Duration) -> rusqlite::Result<String> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        match conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0)) {
            Err(e) if is_busy(&e) && Instant::now() + pause < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(50));
            }
            r => return r,
        }
    }
}

/// Opens an existing `path` read-only (nothing is written: no journal mode, no schema set up or
/// migrated). `Ok((conn, true))` for a database without our schema yet (an empty file), which
/// holds no logical unit; an older schema is refused (it must be migrated, read-write).
pub(crate) fn open_read_only(
    path: &Path,
    options: &SqliteOptions,
) -> Result<(Connection, bool), StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let open_err = |e| StoreError::Open {
        path: path.to_owned(),
        source: Arc::new(e),
    };
    let mut conn = Connection::open_with_flags(path, flags).map_err(open_err)?;
    // A WAL database needs its -shm file. When there is none and SQLite may not create it
    // (the user cannot write the directory), no connection has the database open (an open
    // one keeps the -wal file), so the file is read as it is on disk: immutable.
    let probe = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0));
    if let Err(rusqlite::Error::SqliteFailure(e, _)) = &probe {
        let no_shm = matches!(
            e.extended_code,
            rusqlite::ffi::SQLITE_READONLY_DIRECTORY | rusqlite::ffi::SQLITE_READONLY_CANTINIT
        );
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        if no_shm && !Path::new(&wal).exists() {
            drop(conn);
            conn = Connection::open_with_flags(
                format!("file:{}?immutable=1", uri_path(path)),
                flags | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(open_err)?;
        }
    }
    conn.busy_timeout(options.busy_timeout).map_err(|e| {
        sqlite_error(
            path,
            None,
            "setting the busy timeout",
            options.busy_timeout,
            e,
        )
    })?;
    match inspect_snapshot(&mut conn, path, options, MIGRATIONS.len() as i64)? {
        Found::Empty => Ok((conn, true)),
        Found::Store(v) if v == SCHEMA_VERSION => Ok((conn, false)),
        Found::Store(_) => Err(StoreError::ReadOnly {
            path: path.to_owned(),
            operation: "migrate its older schema (open it read-write once, e.g. with pr-helper)",
        }),
    }
}

/// `path` for a `file:` URI: every byte but unreserved ones and '/' percent-encoded.
fn uri_path(path: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str()
        .as_bytes()
        .iter()
        .map(|&b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'/' | b'-' | b'.' | b'_' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Recognises the file: empty, ours at some version ≤ `newest`, or an error naming `path`.
/// [`inspect`] in one read transaction of its own: another process initialising the file
/// commits its header and its tables together, and separate reads could see the tables without
/// the header.
fn inspect_snapshot(
    conn: &mut Connection,
    path: &Path,
    options: &SqliteOptions,
    newest: i64,
) -> Result<Found, StoreError> {
    let snapshot = conn
        .transaction_with_behavior(TransactionBehavior::Deferred)
        .map_err(|e| {
            sqlite_error(
                path,
                None,
                "beginning to read the schema",
                options.busy_timeout,
                e,
            )
        })?;
    inspect(&snapshot, path, options, newest)
}

fn inspect(
    conn: &Connection,
    path: &Path,
    options: &SqliteOptions,
    newest: i64,
) -> Result<Found, StoreError> {
    let read = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(ErrorCode::NotADatabase) | Some(ErrorCode::DatabaseCorrupt) => StoreError::Corrupt {
            path: path.to_owned(),
            detail: e.to_string(),
        },
        _ => sqlite_error(path, None, "reading the schema", options.busy_timeout, e),
    };
    let app: i64 = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .map_err(read)?;
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(read)?;
    let mut stmt = conn
        .prepare("SELECT name FROM sqlite_schema WHERE type = 'table' ORDER BY name")
        .map_err(read)?;
    let tables = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<Vec<_>, _>>())
        .map_err(read)?;
    let foreign = |detail: String| StoreError::Foreign {
        path: path.to_owned(),
        detail,
    };
    if app != APPLICATION_ID {
        if app != 0 {
            return Err(foreign(format!("application_id is {app:#x}")));
        }
        if !tables.is_empty() {
            return Err(foreign(format!("it has tables {}", tables.join(", "))));
        }
        if version != 0 {
            return Err(foreign(format!(
                "user_version {version} on an empty database"
            )));
        }
        return Ok(Found::Empty);
    }
    if version > newest {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found: version,
            supported: newest,
        });
    }
    let check: Vec<String> = conn
        .prepare("PRAGMA quick_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(read)?;
    if check != ["ok"] {
        return Err(StoreError::Corrupt {
            path: path.to_owned(),
            detail: check.join("; "),
        });
    }
    Ok(Found::Store(version))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    fn version(c: &Connection) -> i64 {
        c.query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    }

    /// A file at version 1 with a row is upgraded by a second migration, in one transaction,
    /// and the row survives; reopening at the same version runs nothing again.
    #[test]
    fn migrates_an_older_file_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let o = SqliteOptions::default();
        let c = open_with(&path, &o, &MIGRATIONS[..1]).unwrap();
        assert_eq!(version(&c), 1);
        c.execute("INSERT INTO logical_units VALUES ('naa.1', 7, '{}')", [])
            .unwrap();
        drop(c);
        let v2 = [
            MIGRATIONS[0],
            "ALTER TABLE logical_units ADD COLUMN note TEXT;",
        ];
        let c = open_with(&path, &o, &v2).unwrap();
        assert_eq!(version(&c), 2);
        let (g, note): (i64, Option<String>) = c
            .query_row("SELECT generation, note FROM logical_units", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((g, note), (7, None));
        drop(c);
        // Reopening at version 2 does not run the ALTER again (it would fail: duplicate column).
        let c = open_with(&path, &o, &v2).unwrap();
        assert_eq!(version(&c), 2);
        drop(c);
        // …and the version-1 build now refuses the file.
        let e = open_with(&path, &o, &MIGRATIONS[..1]).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::NewerSchema);
    }

    /// A migration that fails leaves the file at its old version, with nothing half-done.
    #[test]
    fn a_failing_migration_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.db");
        let o = SqliteOptions::default();
        drop(open_with(&path, &o, &MIGRATIONS[..1]).unwrap());
        let bad = [
            MIGRATIONS[0],
            "CREATE TABLE extra (x INTEGER); SELECT no_such_function();",
        ];
        let e = open_with(&path, &o, &bad).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Database, "{e}");
        let c = open_with(&path, &o, &MIGRATIONS[..1]).unwrap();
        assert_eq!(version(&c), 1);
        let extra: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_schema WHERE name = 'extra'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(extra, 0);
    }
}

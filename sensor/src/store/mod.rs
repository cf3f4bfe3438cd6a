//! The local store: SQLite in WAL mode, written by the daemon in batches on
//! a thread of its own (never on the kernel reader's path), read directly by
//! the query commands while the daemon runs or after it stopped.

pub mod query;
pub mod rows;
mod schema;
pub mod writer;

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension as _};

pub use self::schema::VERSION;

/// The writer's page cache, KiB. Measured with the store_throughput tests
/// (release, CPU per event, two rounds on a shared machine): every event a
/// row, 7.5 us at 16 and at 8 MiB, 10.1 at 4, 10.4 at 2 (re-reads); the
/// `keep = "runs"` storm, 3.4–3.7 us at every size. The writer gives the
/// cache back between spells of events (`writer::RELEASE_EVERY`).
const CACHE_KIB: u32 = 8 * 1024;

/// The page size of a database this build creates (SQLite's default is
/// 4096). An event of a run is a row of about 1 KB: at 4 KiB a page, the
/// writer made two `pwrite`s per page into the WAL and one more per page
/// at each checkpoint, and the kernel's per-call cost of those buffered
/// writes was about half of the store thread's CPU under a storm. Larger
/// pages mean a quarter of the calls for the same bytes. A database made
/// with another size keeps it (a WAL database cannot change it).
const PAGE_SIZE: u32 = 16 * 1024;

/// Why the store cannot be used. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "no sensor database at {path} (is the daemon writing elsewhere? see --db / SENSOR_DB, or --config naming its config)"
    )]
    Missing { path: PathBuf },
    #[error("{path} is not a sensor database (it is not SQLite, or it is damaged)")]
    NotSqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{path} is an SQLite database of another application, not the sensor's")]
    Foreign { path: PathBuf },
    #[error(
        "{path} has schema version {found}, newer than this sensor knows ({known}); upgrade the sensor"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error("cannot create the database directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("database {path}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

/// A wall-clock time as the store keeps it: nanoseconds since the Unix epoch
/// (0 before it, saturating far after it).
#[must_use]
pub fn unix_ns(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

fn sqlite(path: &Path) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
    move |source| StoreError::Sqlite {
        path: path.to_owned(),
        source,
    }
}

/// Checks that an open connection is a sensor database and returns its version.
fn check(conn: &Connection, path: &Path) -> Result<u32, StoreError> {
    let version: u32 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|source| StoreError::NotSqlite {
            path: path.to_owned(),
            source,
        })?;
    let tables: u32 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
            [],
            |r| r.get(0),
        )
        .map_err(|source| StoreError::NotSqlite {
            path: path.to_owned(),
            source,
        })?;
    if version == 0 && tables == 0 {
        return Ok(0);
    }
    let application: Option<String> = conn
        .query_row(
            "SELECT value FROM meta WHERE key = 'application'",
            [],
            |r| r.get(0),
        )
        .optional()
        .unwrap_or(None);
    if application.as_deref() != Some("sensor") {
        return Err(StoreError::Foreign {
            path: path.to_owned(),
        });
    }
    if version > VERSION {
        return Err(StoreError::TooNew {
            path: path.to_owned(),
            found: version,
            known: VERSION,
        });
    }
    Ok(version)
}

/// Opens (creating and migrating) the database the daemon writes.
pub fn open_for_writing(path: &Path) -> Result<Connection, StoreError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let mut conn = Connection::open(path).map_err(sqlite(path))?;
    let version = check(&conn, path)?;
    if version == 0 {
        // Before anything is written: it sets the new file's page size.
        conn.pragma_update(None, "page_size", PAGE_SIZE)
            .map_err(sqlite(path))?;
    }
    conn.pragma_update(None, "journal_mode", "WAL")
        .map_err(sqlite(path))?;
    conn.pragma_update(None, "synchronous", "NORMAL")
        .map_err(sqlite(path))?;
    // A transaction of up to 100 ms of a storm dirties a few thousand
    // index pages: they stay in the cache until the commit instead of being
    // spilled to the WAL and read back (the default cache is 2 MiB; 4 MiB
    // still costs a third more CPU per row). Pages
    // are allocated as they are used, so an idle store stays small.
    conn.pragma_update(None, "cache_size", -i64::from(CACHE_KIB))
        .map_err(sqlite(path))?;
    conn.busy_timeout(std::time::Duration::from_secs(2))
        .map_err(sqlite(path))?;
    for (i, migration) in schema::MIGRATIONS.iter().enumerate().skip(version as usize) {
        let tx = conn.transaction().map_err(sqlite(path))?;
        tx.execute_batch(migration).map_err(sqlite(path))?;
        tx.pragma_update(None, "user_version", i + 1)
            .map_err(sqlite(path))?;
        tx.commit().map_err(sqlite(path))?;
    }
    Ok(conn)
}

/// Opens the database read-only for queries.
pub fn open_for_reading(path: &Path) -> Result<Connection, StoreError> {
    if !path.exists() {
        return Err(StoreError::Missing {
            path: path.to_owned(),
        });
    }
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|source| StoreError::NotSqlite {
        path: path.to_owned(),
        source,
    })?;
    conn.busy_timeout(std::time::Duration::from_secs(2))
        .map_err(sqlite(path))?;
    match check(&conn, path)? {
        0 => Err(StoreError::Foreign {
            path: path.to_owned(),
        }),
        _ => Ok(conn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creates_migrates_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/sensor.db");
        drop(open_for_writing(&path).unwrap());
        let conn = open_for_writing(&path).unwrap();
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
        drop(conn);
        open_for_reading(&path).unwrap();
    }

    /// A new database gets [`PAGE_SIZE`]; one made with SQLite's default
    /// keeps its own (a WAL database cannot change it) and still opens.
    #[test]
    fn new_databases_get_the_large_page_size_old_ones_keep_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let page_size = |conn: &Connection| -> u32 {
            conn.query_row("PRAGMA page_size", [], |r| r.get(0))
                .unwrap()
        };
        let path = dir.path().join("new.db");
        drop(open_for_writing(&path).unwrap());
        let conn = open_for_writing(&path).unwrap();
        assert_eq!(page_size(&conn), PAGE_SIZE);
        let old = dir.path().join("old.db");
        let conn = Connection::open(&old).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        assert_eq!(page_size(&conn), 4096);
        drop(conn);
        let conn = open_for_writing(&old).unwrap();
        assert_eq!(page_size(&conn), 4096);
        let v: u32 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, VERSION);
    }

    /// A version 1 database (a Unix socket path in dst_ip, a tamper with
    /// its fields only in the body) gains the escape columns, filled.
    #[test]
    fn version_1_rows_are_migrated_to_the_escape_columns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v1.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(schema::MIGRATIONS[0]).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        let rows = [
            (
                "network.connect",
                Some("/run/docker.sock"),
                Some("deny"),
                r#"{"kind":"network.connect","network":{"family":"unix","path":"/run/docker.sock"}}"#,
            ),
            (
                "network.connect",
                Some("203.0.113.7"),
                Some("deny"),
                r#"{"kind":"network.connect","network":{"family":"ipv4","dst_ip":"203.0.113.7"}}"#,
            ),
            (
                "process.tamper",
                None,
                Some("deny"),
                r#"{"kind":"process.tamper","tamper":{"method":"ptrace","target":{"pid":77,"run":{"id":"r2"}}}}"#,
            ),
            ("process.exec", None, None, r#"{"kind":"process.exec"}"#),
        ];
        for (i, (kind, dst, verdict, body)) in rows.iter().enumerate() {
            conn.execute(
                "INSERT INTO events (seq, time_ns, kind, dst_ip, verdict, body) VALUES (?1, 0, ?2, ?3, ?4, ?5)",
                rusqlite::params![i, kind, dst, verdict, body],
            )
            .unwrap();
        }
        drop(conn);
        let conn = open_for_writing(&path).unwrap();
        type Row = (
            Option<String>,
            Option<String>,
            Option<String>,
            Option<u32>,
            Option<String>,
            bool,
        );
        let got: Vec<Row> = conn
            .prepare("SELECT dst_ip, path, method, target_pid, target_run, escape_attempt FROM events ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            got,
            vec![
                (
                    None,
                    Some("/run/docker.sock".into()),
                    None,
                    None,
                    None,
                    true
                ),
                (Some("203.0.113.7".into()), None, None, None, None, false),
                (
                    None,
                    None,
                    Some("ptrace".into()),
                    Some(77),
                    Some("r2".into()),
                    true
                ),
                (None, None, None, None, None, false),
            ]
        );
    }

    #[test]
    fn missing_corrupt_and_foreign_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.db");
        assert!(matches!(
            open_for_reading(&missing),
            Err(StoreError::Missing { .. })
        ));

        let corrupt = dir.path().join("corrupt.db");
        std::fs::write(&corrupt, vec![0x42; 8192]).unwrap();
        let err = open_for_reading(&corrupt).unwrap_err();
        assert!(matches!(err, StoreError::NotSqlite { .. }), "{err}");
        assert!(open_for_writing(&corrupt).is_err());

        let foreign = dir.path().join("foreign.db");
        let c = Connection::open(&foreign).unwrap();
        c.execute_batch("CREATE TABLE songs (title TEXT);").unwrap();
        drop(c);
        assert!(matches!(
            open_for_reading(&foreign),
            Err(StoreError::Foreign { .. })
        ));
        assert!(matches!(
            open_for_writing(&foreign),
            Err(StoreError::Foreign { .. })
        ));
    }
}

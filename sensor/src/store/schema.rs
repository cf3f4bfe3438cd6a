//! The store's schema, versioned with `PRAGMA user_version`. Each migration
//! takes the database from version N to N+1 and runs in one transaction.
//!
//! ```text
//! meta    (key, value)            application = "sensor"
//! runs    one row per run         id, agent, principal, parent_id, root_id, depth, start/end
//! events  one row per event       id (insertion order), seq, time_ns, kind, run_id, root_id,
//!                                 pid, process_key, dst_ip, dst_port, verdict, body (the JSON line)
//! ```
//! Indexes serve the queries and nothing else (each costs every insert):
//! events by run (a subtree is its runs, found through `runs.parent_id`), by
//! time, by pid and by destination (partial indexes: most events have no
//! destination); runs by parent and root.

/// Migrations, in order; `MIGRATIONS[i]` takes version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 0 → 1
    "
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    INSERT INTO meta (key, value) VALUES ('application', 'sensor');
    CREATE TABLE runs (
        id TEXT PRIMARY KEY,
        agent TEXT NOT NULL,
        principal TEXT NOT NULL,
        principal_claimed TEXT,
        uid INTEGER,
        parent_id TEXT,
        root_id TEXT NOT NULL,
        depth INTEGER NOT NULL,
        policy TEXT,
        labels TEXT,
        started_by TEXT,
        host TEXT,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER,
        end_reason TEXT
    );
    CREATE INDEX runs_parent ON runs(parent_id);
    CREATE INDEX runs_root ON runs(root_id);
    CREATE INDEX runs_start ON runs(start_ns);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        seq INTEGER NOT NULL,
        time_ns INTEGER NOT NULL,
        kind TEXT NOT NULL,
        run_id TEXT,
        root_id TEXT,
        pid INTEGER,
        process_key TEXT,
        dst_ip TEXT,
        dst_port INTEGER,
        verdict TEXT,
        body TEXT NOT NULL
    );
    CREATE INDEX events_run ON events(run_id, id) WHERE run_id IS NOT NULL;
    CREATE INDEX events_time ON events(time_ns);
    CREATE INDEX events_pid ON events(pid, id);
    CREATE INDEX events_dst ON events(dst_ip, dst_port) WHERE dst_ip IS NOT NULL;
    ",
];

/// The version this build writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

//! The store's schema, versioned with `PRAGMA user_version`. Each migration
//! takes the database from version N to N+1 and runs in one transaction.
//!
//! ```text
//! meta    (key, value)            application = "sensor"
//! runs    one row per run         id, agent, principal, parent_id, root_id, depth, start/end
//! events  one row per event       id (insertion order), seq, time_ns, kind, run_id, root_id,
//!                                 pid, process_key, dst_ip, dst_port, verdict, body (the JSON line),
//!                                 (2) path (Unix socket), method, target_pid, target_run (tamper),
//!                                 escape_attempt (1: an escape attempt, `Event::is_escape_attempt`)
//! process_seen      (4) one row per process outside any run (keep = "runs"): process_key, pid,
//!                   first_ns, last_ns, events (count), body (its latest event's JSON line)
//! destination_seen  (4) the same per (dst, unix, port, process_key): dst is dst_ip or the Unix
//!                   socket path (unix = 1, port 0)
//!                                 (5) chain (hex: the event's run chain value, `provenance.chain`)
//! ```
//! Indexes serve the queries and nothing else (each costs every insert):
//! events by run (a subtree is its runs, found through `runs.parent_id`), by
//! pid (no index on time: (3) ids are in time order, bisected), by destination, by Unix socket path, by tamper target and
//! the escape attempts (partial indexes: most events have none of these);
//! runs by parent and root.

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
    // 1 → 2: escape attempts and what they aimed at. A Unix socket path
    // moves from dst_ip (where version 1 kept it) to path.
    "
    ALTER TABLE events ADD COLUMN path TEXT;
    ALTER TABLE events ADD COLUMN method TEXT;
    ALTER TABLE events ADD COLUMN target_pid INTEGER;
    ALTER TABLE events ADD COLUMN target_run TEXT;
    ALTER TABLE events ADD COLUMN escape_attempt INTEGER NOT NULL DEFAULT 0;
    UPDATE events SET path = dst_ip, dst_ip = NULL
     WHERE kind IN ('network.connect', 'policy.violation')
       AND json_extract(body, '$.network.family') = 'unix';
    UPDATE events SET method = json_extract(body, '$.tamper.method'),
                      target_pid = json_extract(body, '$.tamper.target.pid'),
                      target_run = json_extract(body, '$.tamper.target.run.id')
     WHERE kind IN ('process.tamper', 'sensor.tamper', 'policy.violation')
       AND json_extract(body, '$.tamper') IS NOT NULL;
    UPDATE events SET escape_attempt = 1
     WHERE kind IN ('process.tamper', 'sensor.tamper', 'network.socket')
        OR (kind = 'network.connect' AND path IS NOT NULL AND verdict = 'deny');
    CREATE INDEX events_escape ON events(id) WHERE escape_attempt = 1;
    CREATE INDEX events_path ON events(path) WHERE path IS NOT NULL;
    CREATE INDEX events_target ON events(target_pid) WHERE target_pid IS NOT NULL;
    ",
    // 2 → 3: a cheaper write path (issue 23). No index on time: ids are in
    // time order, so retention and `--since` bisect the ids instead. The run
    // and pid indexes lose their explicit id column (an index entry ends with
    // the rowid anyway, which keeps `ORDER BY id` served by the index).
    "
    DROP INDEX events_time;
    DROP INDEX events_pid;
    CREATE INDEX events_pid ON events(pid);
    DROP INDEX events_run;
    CREATE INDEX events_run ON events(run_id) WHERE run_id IS NOT NULL;
    ",
    // 3 → 4: `[store] keep = "runs"` (issue 23): outside any run, a
    // process's and a connection's routine events are summed up per process
    // and per (destination, process) instead of stored one by one. `body` is
    // the latest such event (the JSON line), what `who` answers with.
    // WITHOUT ROWID: a row is found by its key only, one b-tree per table.
    "
    CREATE TABLE process_seen (
        process_key TEXT NOT NULL PRIMARY KEY,
        pid INTEGER NOT NULL,
        first_ns INTEGER NOT NULL,
        last_ns INTEGER NOT NULL,
        events INTEGER NOT NULL,
        body TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX process_seen_pid ON process_seen(pid);
    CREATE TABLE destination_seen (
        dst TEXT NOT NULL,
        unix INTEGER NOT NULL,
        port INTEGER NOT NULL,
        process_key TEXT NOT NULL,
        pid INTEGER NOT NULL,
        first_ns INTEGER NOT NULL,
        last_ns INTEGER NOT NULL,
        events INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (dst, unix, port, process_key)
    ) WITHOUT ROWID;
    ",
    // 4 → 5: the run chain value of each event of a run (provenance).
    "
    ALTER TABLE events ADD COLUMN chain TEXT;
    ",
];

/// The version this build writes.
pub const VERSION: u32 = MIGRATIONS.len() as u32;

//! Read-side queries of the store, shared by the CLI commands.

use rusqlite::{Connection, OptionalExtension as _, Row, params};
use serde_json::Value;

use super::writer::RunRow;

/// A query that cannot be answered.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no run matches {0:?}")]
    NoRun(String),
    #[error("run prefix {prefix:?} is ambiguous: {candidates}")]
    Ambiguous { prefix: String, candidates: String },
    #[error("reading the store")]
    Sqlite(#[from] rusqlite::Error),
}

const RUN_COLUMNS: &str =
    "id, agent, principal, principal_claimed, uid, parent_id, root_id, depth, policy, labels,
     started_by, host, start_ns, end_ns, end_reason";

fn run_row(r: &Row<'_>) -> rusqlite::Result<RunRow> {
    Ok(RunRow {
        id: r.get(0)?,
        agent: r.get(1)?,
        principal: r.get(2)?,
        principal_claimed: r.get(3)?,
        uid: r.get(4)?,
        parent_id: r.get(5)?,
        root_id: r.get(6)?,
        depth: r.get(7)?,
        policy: r.get(8)?,
        labels: r
            .get::<_, Option<String>>(9)?
            .unwrap_or_else(|| "{}".into()),
        started_by: r.get(10)?,
        host: r.get::<_, Option<String>>(11)?.unwrap_or_default(),
        start_ns: r.get(12)?,
        end_ns: r.get(13)?,
        end_reason: r.get(14)?,
    })
}

/// A run by full id or unique prefix.
/// Whether a run with exactly this id was ever stored.
pub fn run_exists(conn: &Connection, id: &str) -> Result<bool, rusqlite::Error> {
    conn.prepare_cached("SELECT 1 FROM runs WHERE id = ?1")?
        .exists([id])
}

pub fn find_run(conn: &Connection, id_or_prefix: &str) -> Result<RunRow, QueryError> {
    if let Some(run) = conn
        .query_row(
            &format!("SELECT {RUN_COLUMNS} FROM runs WHERE id = ?1"),
            params![id_or_prefix],
            run_row,
        )
        .optional()?
    {
        return Ok(run);
    }
    let escaped = id_or_prefix
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    let mut stmt = conn.prepare(&format!(
        "SELECT {RUN_COLUMNS} FROM runs WHERE id LIKE ?1 || '%' ESCAPE '\\' ORDER BY start_ns LIMIT 6"
    ))?;
    let found: Vec<RunRow> = stmt
        .query_map(params![escaped], run_row)?
        .collect::<Result<_, _>>()?;
    match found.len() {
        0 => Err(QueryError::NoRun(id_or_prefix.to_owned())),
        1 => Ok(found
            .into_iter()
            .next()
            .ok_or_else(|| QueryError::NoRun(id_or_prefix.to_owned()))?),
        _ => Err(QueryError::Ambiguous {
            prefix: id_or_prefix.to_owned(),
            candidates: found
                .iter()
                .map(|r| r.id.as_str())
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

/// Runs, newest first.
pub fn list_runs(
    conn: &Connection,
    active_only: bool,
    agent: Option<&str>,
) -> Result<Vec<RunRow>, QueryError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {RUN_COLUMNS} FROM runs
         WHERE (?1 = 0 OR end_ns IS NULL) AND (?2 IS NULL OR agent = ?2)
         ORDER BY start_ns DESC"
    ))?;
    let rows = stmt.query_map(params![i32::from(active_only), agent], run_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The run and every run below it, parents before children.
pub fn subtree(conn: &Connection, run_id: &str) -> Result<Vec<RunRow>, QueryError> {
    let mut stmt = conn.prepare(&format!(
        "WITH RECURSIVE sub(id) AS (
             SELECT id FROM runs WHERE id = ?1
             UNION SELECT runs.id FROM runs JOIN sub ON runs.parent_id = sub.id
         )
         SELECT {RUN_COLUMNS} FROM runs WHERE id IN (SELECT id FROM sub) ORDER BY depth, start_ns"
    ))?;
    let rows = stmt.query_map(params![run_id], run_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What `events` selects.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    /// Only these runs (None: all events).
    pub runs: Option<Vec<String>>,
    pub kind: Option<String>,
    /// Only escape attempts (`Event::is_escape_attempt`).
    pub escapes: bool,
    pub since_ns: Option<i64>,
    /// Only events before this time.
    pub until_ns: Option<i64>,
    /// Only events of this process id (`process.pid`).
    pub pid: Option<u32>,
    /// Only rows after this insertion id (for --follow, and to page).
    pub after_id: i64,
    pub limit: Option<u32>,
}

/// A stored event: its insertion id, its JSON, and whether the store
/// marked it an escape attempt.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub id: i64,
    pub event: Value,
    pub escape: bool,
}

/// The columns [`collect`] reads.
const EVENT_COLUMNS: &str = "id, body, escape_attempt";

fn event_row(r: &Row<'_>) -> rusqlite::Result<(i64, String, bool)> {
    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
}

/// Events in insertion (= sequence) order.
///
/// The SQL holds only the conditions in use: a `(? IS NULL OR …)` clause
/// would keep SQLite from using the index of the condition it guards.
pub fn events(conn: &Connection, filter: &EventFilter) -> Result<Vec<StoredEvent>, QueryError> {
    let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events WHERE id > ?");
    let mut values: Vec<rusqlite::types::Value> = vec![filter.after_id.into()];
    if let Some(runs) = &filter.runs {
        if runs.is_empty() {
            return Ok(Vec::new());
        }
        sql.push_str(" AND run_id IN (");
        for (i, run) in runs.iter().enumerate() {
            sql.push_str(if i == 0 { "?" } else { ", ?" });
            values.push(run.clone().into());
        }
        sql.push(')');
    }
    if let Some(kind) = &filter.kind {
        sql.push_str(" AND kind = ?");
        values.push(kind.clone().into());
    }
    if filter.escapes {
        sql.push_str(" AND escape_attempt = 1");
    }
    if let Some(since) = filter.since_ns {
        // No index on time (it cost every insert): ids are in time order,
        // so the first id at `since` bounds the scan.
        sql.push_str(" AND id >= ? AND time_ns >= ?");
        values.push(first_id_at(conn, since)?.into());
        values.push(since.into());
    }
    if let Some(until) = filter.until_ns {
        sql.push_str(" AND time_ns < ?");
        values.push(until.into());
    }
    if let Some(pid) = filter.pid {
        sql.push_str(" AND pid = ?");
        values.push(i64::from(pid).into());
    }
    sql.push_str(" ORDER BY id");
    if let Some(limit) = filter.limit {
        sql.push_str(" LIMIT ?");
        values.push(i64::from(limit).into());
    }
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values), event_row)?;
    collect(rows)
}

/// What [`earlier_events`] selects: the events a detection state (the
/// first-seen rules') was built from before and while some runs.
#[derive(Debug, Clone, Default)]
pub struct Earlier<'a> {
    /// Only events stored before this one (by insertion id).
    pub before_id: i64,
    /// Only events of these kinds (none: no event).
    pub kinds: &'a [&'a str],
    /// Not the events of these runs.
    pub exclude_runs: &'a [String],
    /// Only the events of the runs of these agents on this host (`runs.host`;
    /// "" for a run stored without one); `None`: every event, in a run or not.
    pub agents: Option<(&'a [String], &'a str)>,
}

/// The events `filter` selects, in insertion (= sequence) order, handed to
/// `each` one by one (never all in memory: an agent's history can be long);
/// returns how many.
pub fn earlier_events(
    conn: &Connection,
    filter: &Earlier<'_>,
    mut each: impl FnMut(StoredEvent),
) -> Result<u64, QueryError> {
    if filter.kinds.is_empty() || filter.agents.is_some_and(|(a, _)| a.is_empty()) {
        return Ok(0);
    }
    let list = |n: usize| vec!["?"; n].join(", ");
    let mut sql = format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE id < ? AND kind IN ({})",
        list(filter.kinds.len())
    );
    let mut values: Vec<rusqlite::types::Value> = vec![filter.before_id.into()];
    values.extend(filter.kinds.iter().map(|k| (*k).to_owned().into()));
    if let Some((agents, host)) = filter.agents {
        sql.push_str(&format!(
            " AND run_id IN (SELECT id FROM runs WHERE agent IN ({}) AND IFNULL(host, '') = ?)",
            list(agents.len())
        ));
        values.extend(agents.iter().map(|a| a.clone().into()));
        values.push((*host).to_owned().into());
    }
    if !filter.exclude_runs.is_empty() {
        sql.push_str(&format!(
            " AND (run_id IS NULL OR run_id NOT IN ({}))",
            list(filter.exclude_runs.len())
        ));
        values.extend(filter.exclude_runs.iter().map(|r| r.clone().into()));
    }
    sql.push_str(" ORDER BY id");
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map(rusqlite::params_from_iter(values), event_row)?;
    let mut n = 0;
    for row in rows {
        let (id, body, escape) = row?;
        if let Ok(event) = serde_json::from_str(&body) {
            n += 1;
            each(StoredEvent { id, event, escape });
        }
    }
    Ok(n)
}

/// The first event id whose time is at or after `time_ns` (one past the
/// last id when none is), found by bisection over the ids: events are
/// inserted in sequence order, whose times only go back by the few
/// milliseconds records of different CPUs are apart.
pub fn first_id_at(conn: &Connection, time_ns: i64) -> rusqlite::Result<i64> {
    let (min, max): (Option<i64>, Option<i64>) =
        conn.query_row("SELECT min(id), max(id) FROM events", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?;
    let (Some(mut lo), Some(max)) = (min, max) else {
        return Ok(0);
    };
    // The smallest x in lo..=hi whose first id at or after it is at
    // `time_ns` or later (or is none): hi = max + 1 holds.
    let mut hi = max.saturating_add(1);
    let mut at =
        conn.prepare_cached("SELECT id, time_ns FROM events WHERE id >= ?1 ORDER BY id LIMIT 1")?;
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let row: Option<(i64, i64)> = at
            .query_row(params![mid], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?;
        match row {
            Some((id, t)) if t < time_ns => lo = id.saturating_add(1),
            _ => hi = mid,
        }
    }
    Ok(lo)
}

/// The latest events of process `pid` (alive or exited), newest first.
pub fn events_of_pid(
    conn: &Connection,
    pid: u32,
    limit: u32,
) -> Result<Vec<StoredEvent>, QueryError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE pid = ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![pid, limit], event_row)?;
    collect(rows)
}

/// Connects to `ip` (and `port` when given), newest first.
pub fn connects_to(
    conn: &Connection,
    ip: &str,
    port: Option<u16>,
    limit: u32,
) -> Result<Vec<StoredEvent>, QueryError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE dst_ip = ?1 AND (?2 IS NULL OR dst_port = ?2)
         ORDER BY id DESC LIMIT ?3"
    ))?;
    let rows = stmt.query_map(params![ip, port, limit], event_row)?;
    collect(rows)
}

/// The distinct destination addresses (`dst_ip`) of the stored events and
/// of the summaries, at most `limit` of each, in text order: `who --ip`
/// with a CIDR matches them. The events' are read by skipping along their
/// index (one lookup per distinct address), never by scanning the rows.
pub fn distinct_dst_ips(conn: &Connection, limit: u32) -> Result<Vec<String>, QueryError> {
    let mut stmt = conn.prepare(
        "WITH RECURSIVE d(ip) AS (
             SELECT (SELECT MIN(dst_ip) FROM events WHERE dst_ip IS NOT NULL)
             UNION ALL
             SELECT (SELECT MIN(dst_ip) FROM events WHERE dst_ip IS NOT NULL AND dst_ip > d.ip)
             FROM d WHERE d.ip IS NOT NULL
         )
         SELECT ip FROM d WHERE ip IS NOT NULL LIMIT ?1",
    )?;
    let mut out: Vec<String> = stmt
        .query_map(params![limit], |r| r.get::<_, String>(0))?
        .collect::<Result<_, _>>()?;
    if has_summaries(conn)? {
        let mut stmt = conn.prepare(
            "SELECT DISTINCT dst FROM destination_seen WHERE unix = 0 ORDER BY dst LIMIT ?1",
        )?;
        for ip in stmt.query_map(params![limit], |r| r.get::<_, String>(0))? {
            out.push(ip?);
        }
        out.sort();
        out.dedup();
    }
    Ok(out)
}

/// Connects (and datagrams) to the Unix socket address `path` (a path, or
/// `@name`), newest first.
pub fn unix_connects_to(
    conn: &Connection,
    path: &str,
    limit: u32,
) -> Result<Vec<StoredEvent>, QueryError> {
    let mut stmt = conn.prepare(&format!(
        "SELECT {EVENT_COLUMNS} FROM events WHERE path = ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    let rows = stmt.query_map(params![path, limit], event_row)?;
    collect(rows)
}

fn collect(
    rows: impl Iterator<Item = rusqlite::Result<(i64, String, bool)>>,
) -> Result<Vec<StoredEvent>, QueryError> {
    let mut out = Vec::new();
    for row in rows {
        let (id, body, escape) = row?;
        if let Ok(event) = serde_json::from_str(&body) {
            out.push(StoredEvent { id, event, escape });
        }
    }
    Ok(out)
}

/// A process outside any run as `[store] keep = "runs"` sums it up (or a
/// process and one destination of its): its latest event, when it was first
/// and last seen, how many events.
#[derive(Debug, Clone)]
pub struct SeenRow {
    pub event: Value,
    pub first_ns: i64,
    pub last_ns: i64,
    pub events: u64,
}

/// Whether the store has the summary tables (a file no daemon of schema 4
/// opened yet has not).
fn has_summaries(conn: &Connection) -> rusqlite::Result<bool> {
    conn.prepare_cached(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'process_seen'",
    )?
    .exists([])
}

fn seen_rows(
    stmt: &mut rusqlite::Statement<'_>,
    params: impl rusqlite::Params,
) -> Result<Vec<SeenRow>, QueryError> {
    let rows = stmt.query_map(params, |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, i64>(2)?,
            r.get::<_, i64>(3)?,
        ))
    })?;
    let mut out = Vec::new();
    for row in rows {
        let (body, first_ns, last_ns, events) = row?;
        if let Ok(event) = serde_json::from_str(&body) {
            out.push(SeenRow {
                event,
                first_ns,
                last_ns,
                events: u64::try_from(events).unwrap_or(0),
            });
        }
    }
    Ok(out)
}

/// The summarized processes (outside any run) with pid `pid`, latest first.
pub fn seen_pid(conn: &Connection, pid: u32, limit: u32) -> Result<Vec<SeenRow>, QueryError> {
    if !has_summaries(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT body, first_ns, last_ns, events FROM process_seen WHERE pid = ?1
         ORDER BY last_ns DESC LIMIT ?2",
    )?;
    seen_rows(&mut stmt, params![pid, limit])
}

/// The summarized processes (outside any run) that connected to `ip` (and
/// `port` when given), latest first.
pub fn seen_ip(
    conn: &Connection,
    ip: &str,
    port: Option<u16>,
    limit: u32,
) -> Result<Vec<SeenRow>, QueryError> {
    if !has_summaries(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT body, first_ns, last_ns, events FROM destination_seen
         WHERE dst = ?1 AND unix = 0 AND (?2 IS NULL OR port = ?2) ORDER BY last_ns DESC LIMIT ?3",
    )?;
    seen_rows(&mut stmt, params![ip, port, limit])
}

/// The summarized processes (outside any run) that connected to the Unix
/// socket address `path`, latest first.
pub fn seen_unix(conn: &Connection, path: &str, limit: u32) -> Result<Vec<SeenRow>, QueryError> {
    if !has_summaries(conn)? {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(
        "SELECT body, first_ns, last_ns, events FROM destination_seen
         WHERE dst = ?1 AND unix = 1 ORDER BY last_ns DESC LIMIT ?2",
    )?;
    seen_rows(&mut stmt, params![path, limit])
}

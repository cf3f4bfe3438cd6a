//! Agent runs: one execution of an agent, with who it acts for and where it
//! sits in the sub-agent tree. Kept by the daemon, persisted to a state file
//! so a restart neither loses nor duplicates them.

use std::{
    collections::{BTreeMap, HashMap},
    fs, io,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

/// One agent run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Run {
    /// Kernel handle (key of the process → run map values); never 0.
    pub handle: u64,
    /// Run id (UUIDv7 unless the launcher gave one).
    pub id: String,
    pub agent: String,
    /// Who the run acts for: the caller's verified user (or what root said).
    pub principal: String,
    /// What a non-root caller claimed with `--principal`, beside the verified one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_claimed: Option<String>,
    /// Verified uid of the process that started the run.
    pub uid: u32,
    pub parent_id: Option<String>,
    pub root_id: String,
    pub depth: u32,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// What its run tokens may carry (`sensor launch --scope`, an
    /// `[[agent]]`'s `scopes`); a sub-run holds at most its parent's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// How the run started: launch, matcher, backfill.
    pub started_by: crate::event::StartedBy,
    #[serde(with = "humantime_serde_compat")]
    pub start: SystemTime,
    #[serde(default, with = "humantime_serde_opt")]
    pub expires: Option<SystemTime>,
    #[serde(default, with = "humantime_serde_opt")]
    pub end: Option<SystemTime>,
    #[serde(default)]
    pub end_reason: Option<String>,
}

impl Run {
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.end.is_none()
    }
}

/// Runs by handle and by id.
#[derive(Debug, Default)]
pub struct RunTable {
    by_handle: HashMap<u64, Run>,
    by_id: HashMap<String, u64>,
    next_handle: u64,
    /// Live processes per run handle.
    live: HashMap<u64, u64>,
    /// Active runs per uid (the `[limits] runs_per_uid` bound).
    active_by_uid: HashMap<u32, u32>,
}

/// The longest TTL a run may have. A client sends it as a number of
/// seconds; anything longer is refused, so `now + ttl` cannot overflow and
/// the expiry is always a time the event format can write.
pub const MAX_TTL: Duration = Duration::from_secs(30 * 86_400);

/// Total bytes of a run's label keys and values.
pub const MAX_LABEL_BYTES: usize = 4096;
/// Labels per run.
pub const MAX_LABELS: usize = 64;
/// Characters of a principal.
pub const MAX_PRINCIPAL_CHARS: usize = 256;
/// Scopes a run may hold (its tokens carry at most these).
pub const MAX_SCOPES: usize = 32;
/// Characters of one scope.
pub const MAX_SCOPE_CHARS: usize = 128;

/// Checks a TTL against [`MAX_TTL`] (at least one second).
pub fn check_ttl(ttl: Duration) -> Result<Duration, RunError> {
    if ttl < Duration::from_secs(1) || ttl > MAX_TTL {
        return Err(RunError::BadTtl(ttl.as_secs()));
    }
    Ok(ttl)
}

/// Why a run cannot be created or found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RunError {
    #[error("run id {0:?} already exists")]
    Exists(String),
    #[error("run id {0:?} is not valid: use 1-64 characters of letters, digits, '.', '_' or '-'")]
    BadId(String),
    #[error("agent name {0:?} is not valid: use 1-64 printable characters")]
    BadAgent(String),
    #[error("ttl of {0} s is not valid: it must be between 1 s and 30 days (2592000 s)")]
    BadTtl(u64),
    #[error(
        "labels are not valid: at most {MAX_LABELS} labels of {MAX_LABEL_BYTES} bytes in all, \
         keys of letters, digits, '.', '_', '-' and '/', values without control characters"
    )]
    BadLabels,
    #[error("principal is not valid: use 1-{MAX_PRINCIPAL_CHARS} printable characters")]
    BadPrincipal,
    #[error("no run handle is left (the saved state counts up to the last one)")]
    NoHandle,
    #[error("no run matches {0:?}")]
    NotFound(String),
    #[error(
        "scope {0:?} is not valid: at most {max} scopes of 1-{chars} printable characters without spaces",
        max = MAX_SCOPES,
        chars = MAX_SCOPE_CHARS
    )]
    BadScope(String),
    #[error(
        "scope {0:?} is not held by the parent run {1} (a sub-run can only narrow its parent's scopes)"
    )]
    ScopeWider(String, String),
    #[error("run prefix {0:?} is ambiguous")]
    Ambiguous(String),
}

/// What a new run needs.
#[derive(Debug, Clone, Default)]
pub struct NewRun {
    pub id: Option<String>,
    pub agent: String,
    pub principal: String,
    pub principal_claimed: Option<String>,
    pub uid: u32,
    pub parent: Option<u64>,
    pub policy: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub ttl: Option<Duration>,
    pub started_by: crate::event::StartedBy,
    /// `None`: the parent's scopes (none at the top).
    pub scopes: Option<Vec<String>>,
}

/// Whether `scopes` may be granted to a run at the top (an `[[agent]]`'s).
pub fn check_scopes(scopes: &[String]) -> Result<(), RunError> {
    scopes_of(Some(scopes.to_vec()), None).map(drop)
}

/// The scopes of a new run: those asked for, each valid and held by the
/// parent run; or, when none were asked for, the parent's.
fn scopes_of(asked: Option<Vec<String>>, parent: Option<&Run>) -> Result<Vec<String>, RunError> {
    let Some(mut asked) = asked else {
        return Ok(parent.map(|p| p.scopes.clone()).unwrap_or_default());
    };
    asked.sort();
    asked.dedup();
    if asked.len() > MAX_SCOPES {
        return Err(RunError::BadScope(asked.join(" ")));
    }
    for s in &asked {
        if !(1..=MAX_SCOPE_CHARS).contains(&s.chars().count())
            || s.chars()
                .any(|c| c.is_control() || c.is_whitespace() || c == '"' || c == '\\')
        {
            return Err(RunError::BadScope(s.clone()));
        }
        if let Some(p) = parent
            && !p.scopes.contains(s)
        {
            return Err(RunError::ScopeWider(s.clone(), p.id.clone()));
        }
    }
    Ok(asked)
}

pub fn valid_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

fn valid_agent(agent: &str) -> bool {
    (1..=64).contains(&agent.chars().count()) && !agent.chars().any(char::is_control)
}

fn valid_principal(principal: &str) -> bool {
    (1..=MAX_PRINCIPAL_CHARS).contains(&principal.chars().count())
        && !principal.chars().any(char::is_control)
}

fn valid_labels(labels: &BTreeMap<String, String>) -> bool {
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    labels.len() <= MAX_LABELS
        && bytes <= MAX_LABEL_BYTES
        && labels.iter().all(|(k, v)| {
            !k.is_empty()
                && k.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-/".contains(&b))
                && !v.chars().any(char::is_control)
        })
}

impl RunTable {
    #[must_use]
    pub fn new() -> Self {
        Self {
            next_handle: 1,
            ..Self::default()
        }
    }

    /// Creates a run (a sub-run when `parent` is set).
    pub fn create(&mut self, new: NewRun, now: SystemTime) -> Result<&Run, RunError> {
        if !valid_agent(&new.agent) {
            return Err(RunError::BadAgent(new.agent));
        }
        if !valid_principal(&new.principal)
            || new
                .principal_claimed
                .as_deref()
                .is_some_and(|p| !valid_principal(p))
        {
            return Err(RunError::BadPrincipal);
        }
        if !valid_labels(&new.labels) {
            return Err(RunError::BadLabels);
        }
        let expires = match new.ttl {
            Some(ttl) => Some(
                now.checked_add(check_ttl(ttl)?)
                    .ok_or(RunError::BadTtl(ttl.as_secs()))?,
            ),
            None => None,
        };
        let id = match new.id {
            Some(id) if !valid_id(&id) => return Err(RunError::BadId(id)),
            Some(id) => id,
            None => uuid::Uuid::now_v7().to_string(),
        };
        if self.by_id.contains_key(&id) {
            return Err(RunError::Exists(id));
        }
        let parent = new.parent.and_then(|h| self.by_handle.get(&h));
        let scopes = scopes_of(new.scopes, parent)?;
        let (parent_id, root_id, depth) = match parent {
            Some(p) => (Some(p.id.clone()), p.root_id.clone(), p.depth + 1),
            None => (None, id.clone(), 0),
        };
        // Handles only grow; u64::MAX is never handed out (the enforcement
        // self-test's run), nor is a handle reused after a wrap.
        let handle = self.next_handle.max(1);
        if handle == crate::policy::selftest::RUN {
            return Err(RunError::NoHandle);
        }
        self.next_handle = handle.saturating_add(1);
        let run = Run {
            handle,
            id: id.clone(),
            agent: new.agent,
            principal: new.principal,
            principal_claimed: new.principal_claimed,
            uid: new.uid,
            parent_id,
            root_id,
            depth,
            policy: new.policy,
            labels: new.labels,
            scopes,
            started_by: new.started_by,
            start: now,
            expires,
            end: None,
            end_reason: None,
        };
        self.by_id.insert(id, handle);
        *self.active_by_uid.entry(run.uid).or_default() += 1;
        Ok(self.by_handle.entry(handle).or_insert(run))
    }

    /// Whether any run is active (by the per-user counts: no walk over the
    /// runs kept after their end).
    #[must_use]
    pub fn has_active(&self) -> bool {
        self.active_by_uid.values().any(|&n| n > 0)
    }

    /// Active runs of user `uid`.
    #[must_use]
    pub fn active_of_uid(&self, uid: u32) -> u32 {
        self.active_by_uid.get(&uid).copied().unwrap_or(0)
    }

    /// Forgets an ended run at once (a launch that was refused).
    pub fn forget(&mut self, handle: u64) {
        if let Some(r) = self.by_handle.get(&handle)
            && !r.is_active()
            && let Some(r) = self.by_handle.remove(&handle)
        {
            self.by_id.remove(&r.id);
            self.live.remove(&handle);
        }
    }

    #[must_use]
    pub fn get(&self, handle: u64) -> Option<&Run> {
        self.by_handle.get(&handle)
    }

    /// The run with exactly this id, while it is in memory.
    #[must_use]
    pub fn get_id(&self, id: &str) -> Option<&Run> {
        self.by_id.get(id).and_then(|h| self.by_handle.get(h))
    }

    #[cfg(test)]
    pub fn by_handle_mut(&mut self, handle: u64) -> Option<&mut Run> {
        self.by_handle.get_mut(&handle)
    }

    /// A run by id or unique id prefix.
    pub fn find(&self, id_or_prefix: &str) -> Result<&Run, RunError> {
        if let Some(h) = self.by_id.get(id_or_prefix) {
            return self
                .by_handle
                .get(h)
                .ok_or_else(|| RunError::NotFound(id_or_prefix.to_owned()));
        }
        let mut found = self
            .by_id
            .iter()
            .filter(|(id, _)| id.starts_with(id_or_prefix));
        match (found.next(), found.next()) {
            (Some((_, h)), None) => self
                .by_handle
                .get(h)
                .ok_or_else(|| RunError::NotFound(id_or_prefix.to_owned())),
            (Some(_), Some(_)) => Err(RunError::Ambiguous(id_or_prefix.to_owned())),
            _ => Err(RunError::NotFound(id_or_prefix.to_owned())),
        }
    }

    /// Active runs.
    pub fn active(&self) -> impl Iterator<Item = &Run> {
        self.by_handle.values().filter(|r| r.is_active())
    }

    /// Forgets every live count (they are recounted from the process table).
    pub fn reset_live(&mut self) {
        self.live.clear();
    }

    /// A process joined the run.
    pub fn add_process(&mut self, handle: u64) {
        *self.live.entry(handle).or_default() += 1;
    }

    /// A process of the run exited; returns the live count left.
    pub fn remove_process(&mut self, handle: u64) -> u64 {
        let n = self.live.entry(handle).or_default();
        *n = n.saturating_sub(1);
        *n
    }

    #[must_use]
    pub fn live_processes(&self, handle: u64) -> u64 {
        self.live.get(&handle).copied().unwrap_or(0)
    }

    /// Whether run `handle` is `ancestor` or one of its sub-runs (at any depth).
    #[must_use]
    pub fn descends_from(&self, handle: u64, ancestor: u64) -> bool {
        let mut at = self.by_handle.get(&handle);
        // Depth bounds the walk; a cycle in a hand-edited state file cannot loop.
        for _ in 0..=1024 {
            let Some(run) = at else { return false };
            if run.handle == ancestor {
                return true;
            }
            at = run
                .parent_id
                .as_deref()
                .and_then(|id| self.by_id.get(id))
                .and_then(|h| self.by_handle.get(h));
        }
        false
    }

    /// True when an active sub-run of `handle` still exists.
    #[must_use]
    pub fn has_active_children(&self, handle: u64) -> bool {
        let Some(run) = self.by_handle.get(&handle) else {
            return false;
        };
        self.active()
            .any(|r| r.parent_id.as_deref() == Some(run.id.as_str()))
    }

    /// Ends a run; returns it, or `None` if it had already ended.
    pub fn end(&mut self, handle: u64, reason: &str, now: SystemTime) -> Option<Run> {
        let run = self.by_handle.get_mut(&handle)?;
        if run.end.is_some() {
            return None;
        }
        run.end = Some(now);
        run.end_reason = Some(reason.to_owned());
        let uid = run.uid;
        let run = run.clone();
        self.live.remove(&handle);
        if let Some(n) = self.active_by_uid.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.active_by_uid.remove(&uid);
            }
        }
        Some(run)
    }

    /// Active runs whose TTL has passed.
    #[must_use]
    pub fn expired(&self, now: SystemTime) -> Vec<u64> {
        self.active()
            .filter(|r| r.expires.is_some_and(|e| e <= now))
            .map(|r| r.handle)
            .collect()
    }

    /// The journal that records run changes between snapshots.
    #[must_use]
    pub fn journal_path(path: &Path) -> PathBuf {
        path.with_extension("journal")
    }

    /// Appends one run's current state to the journal: O(1) per change, where
    /// a snapshot costs the whole table. `load` replays it over the snapshot.
    pub fn journal(path: &Path, run: &Run) -> io::Result<()> {
        use std::io::Write as _;
        let mut line = serde_json::to_vec(run).map_err(io::Error::other)?;
        line.push(b'\n');
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        let mut f = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(Self::journal_path(path))?;
        f.write_all(&line)
    }

    /// Writes the runs in memory atomically, then empties the journal the
    /// snapshot now contains (start-up, tests; the running daemon uses
    /// [`Self::begin_snapshot`] and writes it on another thread).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        self.begin_snapshot(path)?.write()
    }

    /// Starts a snapshot: the runs as they are now, and the journal so far,
    /// moved aside (`runs.journal.old`), so that later changes go to a
    /// fresh journal while [`Snapshot::write`] runs elsewhere. Until it has,
    /// [`Self::load`] replays the old journal too.
    pub fn begin_snapshot(&self, path: &Path) -> io::Result<Snapshot> {
        let state = State {
            next_handle: self.next_handle,
            runs: self.by_handle.values().cloned().collect(),
        };
        let old_journal = Self::old_journal_path(path);
        match fs::read(Self::journal_path(path)) {
            Ok(lines) => {
                // A previous snapshot that never finished left its old
                // journal: the lines of both go first, in order.
                use std::io::Write as _;
                let mut f = fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&old_journal)?;
                f.write_all(&lines)?;
                fs::remove_file(Self::journal_path(path))?;
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Snapshot {
            state,
            path: path.to_owned(),
            old_journal,
        })
    }

    /// Where [`Self::begin_snapshot`] moves the journal it takes in.
    fn old_journal_path(path: &Path) -> PathBuf {
        path.with_extension("journal.old")
    }

    /// Reads a saved table and replays its journal; missing files are an
    /// empty table. A torn last journal line (a crash mid-write) is skipped.
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let mut table = Self::load_snapshot(path)?;
        // The journal a snapshot in progress took in, then the current one.
        for journal in [Self::old_journal_path(path), Self::journal_path(path)] {
            let text = match fs::read(&journal) {
                Ok(t) => t,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => {
                    return Err(StateError::Read {
                        path: journal,
                        source,
                    });
                }
            };
            for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(run) = serde_json::from_slice::<Run>(line) else {
                    tracing::warn!(path = %journal.display(), "skipping a torn line of the run journal");
                    continue;
                };
                table.insert_loaded(run);
            }
        }
        Ok(table)
    }

    /// Takes a run read back from the state files, if it is one this daemon
    /// could have written (a file edited by hand or torn is not trusted
    /// further than that): a real handle, a valid id and agent.
    fn insert_loaded(&mut self, run: Run) {
        if run.handle == 0
            || run.handle == crate::policy::selftest::RUN
            || !valid_id(&run.id)
            || !valid_agent(&run.agent)
        {
            tracing::warn!(handle = run.handle, id = %run.id, "skipping an invalid run in the saved state");
            return;
        }
        // Another handle under the same id (a hand-edited file): the later wins.
        if let Some(old) = self.by_id.insert(run.id.clone(), run.handle)
            && old != run.handle
        {
            self.by_handle.remove(&old);
        }
        self.next_handle = self.next_handle.max(run.handle.saturating_add(1));
        if let Some(old) = self.by_handle.insert(run.handle, run.clone())
            && old.is_active()
            && let Some(n) = self.active_by_uid.get_mut(&old.uid)
        {
            *n = n.saturating_sub(1);
        }
        if run.is_active() {
            *self.active_by_uid.entry(run.uid).or_default() += 1;
        }
    }

    fn load_snapshot(path: &Path) -> Result<Self, StateError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Self::new()),
            Err(source) => {
                return Err(StateError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let state: State = serde_json::from_slice(&bytes).map_err(|source| StateError::Parse {
            path: path.to_owned(),
            source,
        })?;
        let mut table = Self::new();
        for run in state.runs {
            table.insert_loaded(run);
        }
        table.next_handle = table
            .next_handle
            .max(state.next_handle)
            .min(crate::policy::selftest::RUN - 1);
        Ok(table)
    }

    /// Drops ended runs older than `keep` (the store keeps history; this is live state).
    pub fn forget_ended(&mut self, now: SystemTime, keep: Duration) {
        let old: Vec<u64> = self
            .by_handle
            .values()
            .filter(|r| {
                r.end
                    .is_some_and(|e| now.duration_since(e).unwrap_or_default() > keep)
            })
            .map(|r| r.handle)
            .collect();
        for h in old {
            if let Some(r) = self.by_handle.remove(&h) {
                self.by_id.remove(&r.id);
            }
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct State {
    next_handle: u64,
    runs: Vec<Run>,
}

/// A snapshot of the run table, taken on the event thread (a copy) and
/// written wherever [`Snapshot::write`] is called.
#[derive(Debug)]
pub struct Snapshot {
    state: State,
    path: PathBuf,
    old_journal: PathBuf,
}

impl Snapshot {
    /// Writes the snapshot atomically, then drops the journal it contains.
    /// Replaying that journal over this snapshot (a crash between the two
    /// steps) ends in the same state: its lines are the runs' states up to
    /// the snapshot, in order.
    pub fn write(self) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(&self.state).map_err(io::Error::other)?;
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let tmp = self.path.with_extension("json.tmp");
        fs::write(&tmp, bytes)?;
        fs::rename(&tmp, &self.path)?;
        match fs::remove_file(&self.old_journal) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot read run state {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("run state {path} is corrupt (move it away to start without the runs it holds)")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

mod humantime_serde_compat {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(t: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&crate::event::rfc3339(*t))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<SystemTime, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom)
    }
}

mod humantime_serde_opt {
    use std::time::SystemTime;

    use serde::{Deserialize, Deserializer, Serializer};

    #[expect(clippy::ref_option, reason = "serde's `with` passes &Option<T>")]
    pub fn serialize<S: Serializer>(t: &Option<SystemTime>, s: S) -> Result<S::Ok, S::Error> {
        match t {
            Some(t) => s.collect_str(&crate::event::rfc3339(*t)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SystemTime>, D::Error> {
        let s = Option::<String>::deserialize(d)?;
        s.map(|s| humantime::parse_rfc3339(&s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new(agent: &str, parent: Option<u64>) -> NewRun {
        NewRun {
            agent: agent.into(),
            principal: "alice".into(),
            parent,
            started_by: crate::event::StartedBy::Launch,
            ..NewRun::default()
        }
    }

    #[test]
    fn has_active_follows_starts_and_ends() {
        let mut t = RunTable::new();
        let now = SystemTime::now();
        assert!(!t.has_active());
        let a = t.create(new("a", None), now).unwrap().handle;
        let b = t.create(new("b", Some(a)), now).unwrap().handle;
        assert!(t.has_active());
        t.end(b, "exited", now).unwrap();
        assert!(t.has_active(), "a is still active");
        t.end(a, "exited", now).unwrap();
        assert!(!t.has_active(), "ended runs kept in memory are not active");
        assert_eq!(t.active().count(), 0);
    }

    #[test]
    fn sub_runs_form_a_tree() {
        let mut t = RunTable::new();
        let now = SystemTime::now();
        let root = t.create(new("research-bot", None), now).unwrap().clone();
        assert_eq!(root.depth, 0);
        assert_eq!(root.root_id, root.id);
        assert!(root.parent_id.is_none());
        let child = t
            .create(new("coder", Some(root.handle)), now)
            .unwrap()
            .clone();
        let grandchild = t
            .create(new("tester", Some(child.handle)), now)
            .unwrap()
            .clone();
        assert_eq!(child.depth, 1);
        assert_eq!(grandchild.depth, 2);
        assert_eq!(grandchild.parent_id.as_deref(), Some(child.id.as_str()));
        assert_eq!(grandchild.root_id, root.id);
        assert!(t.has_active_children(root.handle));
        t.end(grandchild.handle, "exited", now).unwrap();
        assert!(
            t.end(grandchild.handle, "exited", now).is_none(),
            "ends once"
        );
        assert!(!t.has_active_children(child.handle));
    }

    #[test]
    fn ids_are_checked_and_unique() {
        let mut t = RunTable::new();
        let now = SystemTime::now();
        let mut n = new("a", None);
        n.id = Some("run-1".into());
        t.create(n.clone(), now).unwrap();
        assert_eq!(
            t.create(n, now).unwrap_err(),
            RunError::Exists("run-1".into())
        );
        let mut bad = new("a", None);
        bad.id = Some("../etc".into());
        assert!(matches!(t.create(bad, now), Err(RunError::BadId(_))));
        assert!(matches!(
            t.create(new("", None), now),
            Err(RunError::BadAgent(_))
        ));
    }

    #[test]
    fn prefix_lookup() {
        let mut t = RunTable::new();
        let now = SystemTime::now();
        for id in ["abc1", "abc2", "xyz"] {
            let mut n = new("a", None);
            n.id = Some(id.into());
            t.create(n, now).unwrap();
        }
        assert_eq!(t.find("xy").unwrap().id, "xyz");
        assert_eq!(t.find("abc1").unwrap().id, "abc1");
        assert!(matches!(t.find("abc"), Err(RunError::Ambiguous(_))));
        assert!(matches!(t.find("q"), Err(RunError::NotFound(_))));
    }

    #[test]
    fn save_and_load_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.json");
        let mut t = RunTable::new();
        let now = SystemTime::now();
        let mut n = new("a", None);
        n.ttl = Some(Duration::from_secs(60));
        let h = t.create(n, now).unwrap().handle;
        t.save(&path).unwrap();
        let loaded = RunTable::load(&path).unwrap();
        assert_eq!(loaded.get(h), t.get(h));
        let mut loaded = loaded;
        let next = loaded.create(new("b", None), now).unwrap().handle;
        assert!(next > h, "handles are never reused after a restart");
        assert_eq!(loaded.expired(now + Duration::from_secs(61)), vec![h]);
        fs::write(&path, b"{not json").unwrap();
        assert!(
            RunTable::load(&path)
                .unwrap_err()
                .to_string()
                .contains("corrupt")
        );
    }

    /// fuzz/corpus/runs/crash-handle-u64-max and crash-next-handle-u64-max:
    /// a snapshot with a run of handle `u64::MAX` overflowed `handle + 1`
    /// at load, and one whose `next_handle` is `u64::MAX` overflowed it at
    /// the next create (a panic in debug builds; in release the handle
    /// wrapped to 0, then 1: a new run created over an existing one's handle).
    #[test]
    fn handles_at_the_end_of_the_range_are_refused_not_wrapped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.json");
        let now = SystemTime::now();
        let run = |handle: u64| {
            format!(
                r#"{{"handle":{handle},"id":"r{handle}","agent":"a","principal":"p","uid":0,"parent_id":null,"root_id":"r{handle}","depth":0,"started_by":"launch","start":"2026-01-01T00:00:00Z"}}"#
            )
        };
        fs::write(
            &path,
            format!(r#"{{"next_handle":1,"runs":[{}]}}"#, run(u64::MAX)),
        )
        .unwrap();
        let mut t = RunTable::load(&path).unwrap();
        // u64::MAX is the enforcement self-test's handle: such a run is skipped.
        assert!(t.get(u64::MAX).is_none());
        let created = t.create(new("a", None), now).unwrap().handle;
        assert!(created != u64::MAX, "no run gets the self-test's handle");
        fs::write(
            &path,
            format!(r#"{{"next_handle":{},"runs":[{}]}}"#, u64::MAX, run(1)),
        )
        .unwrap();
        let mut t = RunTable::load(&path).unwrap();
        // The last handle before the self-test's is still given, then none.
        assert_eq!(t.create(new("a", None), now).unwrap().handle, u64::MAX - 1);
        assert_eq!(
            t.create(new("b", None), now).unwrap_err(),
            RunError::NoHandle
        );
        assert_eq!(t.get(1).unwrap().id, "r1", "run 1 is left alone");
        // The last handle before the end is still given.
        fs::write(
            &path,
            format!(r#"{{"next_handle":{},"runs":[]}}"#, u64::MAX - 1),
        )
        .unwrap();
        let mut t = RunTable::load(&path).unwrap();
        assert_eq!(t.create(new("a", None), now).unwrap().handle, u64::MAX - 1);
        assert!(t.create(new("b", None), now).is_err());
    }

    /// fuzz/corpus/runs/crash-journal-not-utf8: a journal holding one byte
    /// that is not UTF-8 (`\xe4`) made the whole state fail to load ("cannot
    /// read run state"), so the daemon refused to start. A crash while a
    /// non-ASCII label is written leaves such a line.
    #[test]
    fn a_journal_line_that_is_not_utf8_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("runs.json");
        fs::write(RunTable::journal_path(&path), b"\xe4").unwrap();
        assert!(RunTable::load(&path).unwrap().active().next().is_none());
        fs::remove_file(RunTable::journal_path(&path)).unwrap();
        // A line torn inside a character, after a good one.
        let now = SystemTime::now();
        let mut t = RunTable::new();
        let mut n = new("a", None);
        n.labels.insert("owner".into(), "zo\u{eb}".into());
        let kept = t.create(n.clone(), now).unwrap().clone();
        let torn = t.create(n, now).unwrap().clone();
        RunTable::journal(&path, &kept).unwrap();
        let mut line = serde_json::to_vec(&torn).unwrap();
        line.truncate(line.iter().position(|&b| b == 0xc3).unwrap() + 1);
        let mut journal = fs::read(RunTable::journal_path(&path)).unwrap();
        journal.extend_from_slice(&line);
        fs::write(RunTable::journal_path(&path), journal).unwrap();
        let loaded = RunTable::load(&path).unwrap();
        assert_eq!(loaded.get(kept.handle), Some(&kept));
        assert!(loaded.get(torn.handle).is_none());
    }
}

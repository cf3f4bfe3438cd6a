//! "Which tool call did this?": the agents' own transcripts, read while their
//! runs go on, as `tool.call` events linked to the run's process and connect
//! events (issue 22, first slice: Claude Code).
//!
//! The pipeline hands every event it emits to [`Transcripts::on_event`]
//! (cheap: a run id lookup) and calls [`Transcripts::tick`] once a second;
//! what the tick returns it numbers like any event (engine) and emits.
//!
//! - A `run.start` of an agent whose `[[agent]]` has `transcripts = "FORMAT"`
//!   starts following: the location is resolved from the environment and the
//!   cwd of the run's first process, read from /proc at once.
//! - The run's process events (spawn, exec, connect) are kept, bounded, for
//!   the reconciliation.
//! - Each tick reads what was appended to the run's transcript files since
//!   the last tick (a bounded poll, not inotify: one `read_dir` and one
//!   `fstat` per file per second, no watch descriptors to manage for files
//!   that appear and rotate, and no extra thread; the cost is up to a
//!   second of latency).
//! - A call whose result is read is emitted as `tool.call` with the events
//!   it explains; at the tick after `run.end` the files are read a last
//!   time, calls without a result are emitted with `result_time: null`,
//!   and the run is forgotten.
//!
//! The transcript is written by the watched agent: it is hostile input.
//! Lines are capped ([`LINE_MAX`]), invalid ones skipped and counted, the
//! reads per tick bounded ([`READ_PER_TICK`]), files opened without following
//! symlinks and only when they are regular files owned by the run's user,
//! the project dir must resolve inside the config dir, and every count
//! (files, pending calls, kept events) is bounded. A problem is reported
//! once per run (`transcript.unreadable`).

pub mod claude;

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::unix::fs::{MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use crate::event::{Event, Kind, Linked, RunRef, Timestamp, ToolCall, TranscriptIssue};

/// A transcript line longer than this is skipped (counted).
pub const LINE_MAX: usize = 1 << 20;
/// Bytes read per run per tick at most (the rest at the next ticks).
pub const READ_PER_TICK: u64 = 4 << 20;
/// A tool call's reported input, at most (bytes).
pub const INPUT_MAX: usize = 4096;
/// Call ids and tool names, at most (bytes).
pub const ID_MAX: usize = 256;
/// Transcript files followed per run, at most.
pub const FILES_MAX: usize = 64;
/// Calls waiting for their result per run, at most (the oldest is emitted
/// without a result beyond it).
pub const PENDING_MAX: usize = 4096;
/// Process and connect events kept per run for the reconciliation (the
/// oldest go first beyond it, or beyond [`ACTS_BYTES`]).
pub const ACTS_MAX: usize = 16_384;
/// Bytes of keys and argv kept per run for the reconciliation, at most.
pub const ACTS_BYTES: usize = 2 << 20;
/// Events listed per call, at most.
pub const LINKED_MAX: usize = 256;
/// Runs followed at once, at most.
pub const RUNS_MAX: usize = 256;
/// Kept of an exec's argv for matching, at most (bytes; the kernel's
/// capture is 8 KiB).
const ARGV_KEPT: usize = 8 << 10;
/// How far outside a call's window (call time .. result time) its
/// processes may begin: the transcript's clock is read by the agent.
const SLACK: Duration = Duration::from_secs(1);
/// A call is emitted this long after its result at the earliest, so that
/// the kernel's records of its last processes are read first.
const SETTLE: Duration = Duration::from_millis(200);

/// How an agent's transcripts are read (`[[agent]] transcripts`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Claude Code 2.x (`claude.rs`).
    ClaudeCode,
}

impl Format {
    /// The format named `name` in the config.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "claude-code" => Some(Self::ClaudeCode),
            _ => None,
        }
    }
}

/// What a transcript line holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Call {
        id: String,
        name: String,
        input: String,
        truncated: bool,
        time: SystemTime,
    },
    Result {
        id: String,
        is_error: bool,
        time: SystemTime,
    },
    /// Any other line (messages, summaries, snapshots).
    Other,
}

/// What the tick hands the pipeline.
#[derive(Debug)]
pub enum Found {
    Call(RunRef, ToolCall),
    /// A shell call the agent says ran (a result that is not an error) of
    /// which the run shows no process: `tool.unobserved`, after its
    /// `tool.call`.
    Unobserved(RunRef, ToolCall),
    Unreadable(RunRef, TranscriptIssue),
}

/// Where a run's transcripts are.
#[derive(Debug, Clone)]
pub struct Source {
    /// The agent's config dir (nothing outside it is read).
    pub config: PathBuf,
    /// The dir of the run's transcript files.
    pub dir: PathBuf,
}

/// A process or connect event of a followed run.
#[derive(Debug, Clone)]
struct Act {
    seq: u64,
    kind: Kind,
    time: SystemTime,
    key: String,
    parent_key: String,
    pid: u32,
    /// An exec's argv after argv[0], joined by spaces (bounded).
    args: Option<String>,
}

impl Act {
    fn bytes(&self) -> usize {
        self.key.len() + self.parent_key.len() + self.args.as_ref().map_or(0, String::len)
    }
}

#[derive(Debug, Default)]
struct FileState {
    offset: u64,
    /// A line not yet ended (at most [`LINE_MAX`]).
    partial: Vec<u8>,
    /// Skipping the rest of a line longer than [`LINE_MAX`].
    skipping: bool,
    /// The file's inode: another one at the same path starts over.
    ino: u64,
}

#[derive(Debug)]
struct Pending {
    name: String,
    input: String,
    truncated: bool,
    time: SystemTime,
    file: PathBuf,
    result: Option<(SystemTime, bool)>,
}

#[derive(Debug)]
struct Followed {
    run: RunRef,
    format: Format,
    uid: u32,
    start: SystemTime,
    source: Option<Source>,
    files: BTreeMap<PathBuf, FileState>,
    pending: BTreeMap<String, Pending>,
    /// Ids emitted (a call is reported once).
    done: std::collections::HashSet<String>,
    acts: VecDeque<Act>,
    /// Bytes the kept acts hold (keys and argv).
    acts_bytes: usize,
    ended: bool,
    /// The first problem, to report; `reported` once it was.
    problem: Option<(Option<PathBuf>, String)>,
    reported: bool,
    skipped: u64,
    other: u64,
}

/// Counters of what was read (for the log and tests).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub calls: u64,
    pub skipped_lines: u64,
    pub other_lines: u64,
}

/// The transcripts of the runs being followed.
#[derive(Debug, Default)]
pub struct Transcripts {
    formats: HashMap<String, Format>,
    runs: HashMap<String, Followed>,
    counts: Counts,
    /// Runs not followed because [`RUNS_MAX`] were.
    runs_refused: u64,
}

impl Transcripts {
    /// Follows the runs of the agents of `formats` (agent name → format).
    #[must_use]
    pub fn new(formats: HashMap<String, Format>) -> Self {
        Self {
            formats,
            ..Self::default()
        }
    }

    /// Follows the runs of the `[[agent]]`s that name a transcripts format
    /// (unknown formats were refused with the config).
    #[must_use]
    pub fn of_agents(agents: &[crate::attribution::AgentConfig]) -> Self {
        Self::new(
            agents
                .iter()
                .filter_map(|a| {
                    let format = Format::parse(a.transcripts.as_deref()?)?;
                    Some((a.name.clone(), format))
                })
                .collect(),
        )
    }

    /// Takes the agents' formats of `other` (a reload): runs followed go
    /// on being read; runs started from now on follow the new formats.
    pub fn set_formats(&mut self, other: Self) {
        self.formats = other.formats;
    }

    /// Whether any agent has transcripts to read.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.formats.is_empty()
    }

    #[must_use]
    pub fn counts(&self) -> Counts {
        self.counts
    }

    /// Sees an event on its way out: a run's start, end, and its process
    /// and connect events.
    pub fn on_event(&mut self, e: &Event) {
        if self.formats.is_empty() {
            return;
        }
        let Some(run) = &e.run else {
            return;
        };
        match e.kind {
            Kind::RunStart => {
                if e.delivery.is_none()
                    && let Some(format) = self.formats.get(&run.agent).copied()
                    && let Some(p) = &e.process
                {
                    let source = resolve(format, p.pid);
                    self.start(e, format, source);
                }
            }
            Kind::RunEnd => {
                if let Some(f) = self.runs.get_mut(&run.id) {
                    f.ended = true;
                }
            }
            Kind::ProcessSpawn | Kind::ProcessExec | Kind::NetworkConnect => {
                let Some(f) = self.runs.get_mut(&run.id) else {
                    return;
                };
                let Some(p) = &e.process else {
                    return;
                };
                if e.kind == Kind::ProcessExec
                    && e.exec
                        .as_ref()
                        .is_some_and(|x| x.result != crate::event::ExecResult::Ok)
                {
                    return;
                }
                let args = (e.kind == Kind::ProcessExec)
                    .then(|| {
                        p.argv.as_ref().map(|a| {
                            let joined = a.iter().skip(1).cloned().collect::<Vec<_>>().join(" ");
                            claude::cut(&joined, ARGV_KEPT).0
                        })
                    })
                    .flatten();
                let act = Act {
                    seq: e.seq,
                    kind: e.kind,
                    time: e.time.0,
                    key: p.key.clone(),
                    parent_key: p.parent_key.clone(),
                    pid: p.pid,
                    args,
                };
                f.acts_bytes += act.bytes();
                f.acts.push_back(act);
                while f.acts.len() > ACTS_MAX || f.acts_bytes > ACTS_BYTES {
                    let Some(old) = f.acts.pop_front() else {
                        break;
                    };
                    f.acts_bytes = f.acts_bytes.saturating_sub(old.bytes());
                }
            }
            _ => {}
        }
    }

    /// Starts following the run of `e` (a `run.start`) at `source`, or
    /// with the reason it has none.
    pub fn start(&mut self, e: &Event, format: Format, source: Result<Source, String>) {
        let Some(run) = &e.run else {
            return;
        };
        if self.runs.len() >= RUNS_MAX {
            self.runs_refused += 1;
            tracing::warn!(run = %run.id, "transcripts: too many runs followed; this one is not");
            return;
        }
        let mut r = run.clone();
        r.details = None;
        let (source, problem) = match source {
            Ok(s) => (Some(s), None),
            Err(why) => (None, Some((None, why))),
        };
        let uid = run
            .details
            .as_ref()
            .map_or_else(|| e.process.as_ref().map_or(0, |p| p.uid), |d| d.uid);
        let start = run.details.as_ref().map_or(e.time.0, |d| d.start.0);
        self.runs.insert(
            run.id.clone(),
            Followed {
                run: r,
                format,
                uid,
                start,
                source,
                files: BTreeMap::new(),
                pending: BTreeMap::new(),
                done: std::collections::HashSet::new(),
                acts: VecDeque::new(),
                acts_bytes: 0,
                ended: false,
                problem,
                reported: false,
                skipped: 0,
                other: 0,
            },
        );
    }

    /// Reads what was appended; returns the calls complete by now and the
    /// problems not yet reported. Runs ended before this tick are read a
    /// last time and forgotten.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Found> {
        let mut found = Vec::new();
        let mut over = Vec::new();
        for (id, f) in &mut self.runs {
            let ended = f.ended;
            if let Some(source) = f.source.clone() {
                read_run(f, &source, &mut self.counts);
            }
            emit_ready(f, now, ended, &mut found, &mut self.counts);
            if !f.reported
                && let Some((path, reason)) = f.problem.clone()
            {
                f.reported = true;
                found.push(Found::Unreadable(
                    f.run.clone(),
                    TranscriptIssue {
                        path: path.map(|p| p.to_string_lossy().into_owned()),
                        reason,
                        skipped_lines: f.skipped,
                    },
                ));
            }
            if ended {
                if f.skipped > 0 || f.other > 0 {
                    tracing::debug!(run = %id, skipped = f.skipped, other = f.other, "transcripts: run over");
                }
                over.push(id.clone());
            }
        }
        for id in over {
            self.runs.remove(&id);
        }
        found
    }
}

/// The source of a run whose first process is `pid`, from /proc.
fn resolve(format: Format, pid: u32) -> Result<Source, String> {
    let env = read_environ(pid).map_err(|e| format!("reading /proc/{pid}/environ: {e}"))?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd"))
        .map_err(|e| format!("reading /proc/{pid}/cwd: {e}"))?;
    match format {
        Format::ClaudeCode => {
            let config = claude::config_dir(&env)
                .ok_or_else(|| "neither CLAUDE_CONFIG_DIR nor HOME is set".to_owned())?;
            let config = if config.is_absolute() {
                config
            } else {
                cwd.join(config)
            };
            let dir = claude::project_dir(&config, &cwd);
            Ok(Source { config, dir })
        }
    }
}

/// `/proc/PID/environ` as pairs (bounded to 1 MiB).
fn read_environ(pid: u32) -> std::io::Result<Vec<(String, String)>> {
    let mut bytes = Vec::new();
    File::open(format!("/proc/{pid}/environ"))?
        .take(1 << 20)
        .read_to_end(&mut bytes)?;
    Ok(bytes
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            let (k, v) = kv.split_once('=')?;
            Some((k.to_owned(), v.to_owned()))
        })
        .collect())
}

/// Notes the first problem of a run.
fn problem(f: &mut Followed, path: Option<&Path>, why: String) {
    if f.problem.is_none() {
        f.problem = Some((path.map(Path::to_path_buf), why));
    }
}

/// Reads the new lines of the run's transcript files.
fn read_run(f: &mut Followed, source: &Source, counts: &mut Counts) {
    // The dir may not exist yet (the agent writes its first line later).
    let Ok(dir) = std::fs::canonicalize(&source.dir) else {
        return;
    };
    let config = std::fs::canonicalize(&source.config).unwrap_or_else(|_| source.config.clone());
    if !dir.starts_with(&config) {
        problem(
            f,
            Some(&source.dir),
            format!("resolves to {} outside {}", dir.display(), config.display()),
        );
        return;
    }
    let entries = match std::fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) => {
            problem(f, Some(&dir), format!("cannot list: {e}"));
            return;
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "jsonl"))
        .take(4 * FILES_MAX)
        .collect();
    paths.sort();
    let mut budget = READ_PER_TICK;
    for path in paths {
        if budget == 0 {
            break;
        }
        if !f.files.contains_key(&path) && f.files.len() >= FILES_MAX {
            problem(
                f,
                Some(&dir),
                format!("more than {FILES_MAX} transcript files"),
            );
            break;
        }
        read_file(f, &path, &mut budget, counts);
    }
}

/// Reads the new lines of one file (not following a symlink).
fn read_file(f: &mut Followed, path: &Path, budget: &mut u64, counts: &mut Counts) {
    let file = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) => {
            problem(f, Some(path), format!("cannot open: {e}"));
            return;
        }
    };
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => {
            problem(f, Some(path), format!("cannot stat: {e}"));
            return;
        }
    };
    if !meta.file_type().is_file() {
        problem(f, Some(path), "not a regular file".to_owned());
        return;
    }
    if meta.uid() != f.uid {
        problem(
            f,
            Some(path),
            format!("owned by uid {}, not the run's uid {}", meta.uid(), f.uid),
        );
        return;
    }
    // A file last written before the run began is another session's.
    let modified = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    if modified + SLACK < f.start && !f.files.contains_key(path) {
        return;
    }
    let state = f.files.entry(path.to_path_buf()).or_default();
    if state.ino != meta.ino() || meta.len() < state.offset {
        // New or replaced (rotated, truncated): from its start.
        *state = FileState {
            ino: meta.ino(),
            ..FileState::default()
        };
    }
    if meta.len() == state.offset {
        return;
    }
    let want = (meta.len() - state.offset).min(*budget);
    let mut buf = Vec::new();
    let mut file = file;
    if file.seek(SeekFrom::Start(state.offset)).is_err()
        || file.take(want).read_to_end(&mut buf).is_err()
    {
        problem(f, Some(path), "read failed".to_owned());
        return;
    }
    *budget = budget.saturating_sub(buf.len() as u64);
    state.offset += buf.len() as u64;
    let mut records = Vec::new();
    let mut skipped = 0u64;
    let mut rest: &[u8] = &buf;
    while let Some(nl) = rest.iter().position(|b| *b == b'\n') {
        let (piece, after) = rest.split_at(nl);
        rest = &after[1..];
        if state.skipping {
            state.skipping = false;
            continue;
        }
        let line: std::borrow::Cow<'_, [u8]> = if state.partial.is_empty() {
            piece.into()
        } else {
            let mut l = std::mem::take(&mut state.partial);
            l.extend_from_slice(piece);
            l.into()
        };
        if line.len() > LINE_MAX {
            skipped += 1;
            continue;
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match f.format {
            Format::ClaudeCode => match claude::parse_line(&line) {
                Some(r) => records.extend(r),
                None => skipped += 1,
            },
        }
    }
    if !state.skipping {
        if state.partial.len() + rest.len() > LINE_MAX {
            state.partial.clear();
            state.skipping = true;
            skipped += 1;
        } else {
            state.partial.extend_from_slice(rest);
        }
    }
    if skipped > 0 {
        f.skipped += skipped;
        counts.skipped_lines += skipped;
        problem(
            f,
            Some(path),
            format!("lines skipped: invalid JSON or longer than {LINE_MAX} bytes"),
        );
    }
    for r in records {
        take(f, r, path, counts);
    }
}

/// Takes one record of a run's transcript.
fn take(f: &mut Followed, r: Record, file: &Path, counts: &mut Counts) {
    match r {
        Record::Call {
            id,
            name,
            input,
            truncated,
            time,
        } => {
            // Calls of a resumed session made before this run are not its.
            if !claude::not_before(time, f.start, SLACK)
                || f.done.contains(&id)
                || f.pending.contains_key(&id)
            {
                return;
            }
            if f.pending.len() >= PENDING_MAX {
                problem(
                    f,
                    Some(file),
                    format!("more than {PENDING_MAX} calls without a result"),
                );
                return;
            }
            f.pending.insert(
                id,
                Pending {
                    name,
                    input,
                    truncated,
                    time,
                    file: file.to_path_buf(),
                    result: None,
                },
            );
        }
        Record::Result { id, is_error, time } => {
            if let Some(p) = f.pending.get_mut(&id)
                && p.result.is_none()
            {
                p.result = Some((time, is_error));
            }
        }
        Record::Other => {
            f.other += 1;
            counts.other_lines += 1;
        }
    }
}

/// Emits the calls whose result is in (settled), or all at the run's end.
fn emit_ready(
    f: &mut Followed,
    now: SystemTime,
    ended: bool,
    out: &mut Vec<Found>,
    counts: &mut Counts,
) {
    let ready: Vec<String> = f
        .pending
        .iter()
        .filter(|(_, p)| ended || p.result.is_some_and(|(t, _)| t + SETTLE <= now))
        .map(|(id, _)| id.clone())
        .collect();
    let mut calls: Vec<(String, Pending)> = ready
        .into_iter()
        .filter_map(|id| f.pending.remove(&id).map(|p| (id, p)))
        .collect();
    calls.sort_by_key(|(_, p)| p.time);
    for (id, p) in calls {
        let end = p.result.map_or(now, |(t, _)| t);
        let (processes, more) = link(&f.acts, &p.input, p.time, end, shell(&p.name));
        counts.calls += 1;
        if f.done.len() < PENDING_MAX * 4 {
            f.done.insert(id.clone());
        }
        let call = ToolCall {
            id,
            name: p.name,
            input: p.input,
            input_truncated: p.truncated.then_some(true),
            call_time: Timestamp(p.time),
            result_time: p.result.map(|(t, _)| Timestamp(t)),
            is_error: p.result.map(|(_, e)| e),
            transcript: p.file.to_string_lossy().into_owned(),
            processes,
            processes_truncated: more.then_some(true),
        };
        let unobserved = shell(&call.name)
            && call.processes.is_empty()
            && !call.input.trim().is_empty()
            && call.is_error == Some(false);
        out.push(Found::Call(f.run.clone(), call.clone()));
        if unobserved {
            out.push(Found::Unobserved(f.run.clone(), call));
        }
    }
}

/// Whether calls of tool `name` run a shell command.
fn shell(name: &str) -> bool {
    name == "Bash"
}

/// The forms a command takes in its shell's `-c` script: as it is, and
/// single-quoted for an `eval '...'` (Claude Code's wrapper).
fn command_forms(cmd: &str) -> Vec<String> {
    let mut forms = vec![cmd.to_owned()];
    if cmd.contains('\'') {
        forms.push(cmd.replace('\'', "'\\''"));
        forms.push(cmd.replace('\'', "'\"'\"'"));
    }
    forms
}

/// The events a shell call with `command` explains: the processes whose
/// exec began in its window (`call - SLACK ..= result + SLACK`) with the
/// command in their arguments, their descendants that began in the window,
/// and the spawn, exec and connect events of all of them in the window.
fn link(
    acts: &VecDeque<Act>,
    command: &str,
    call: SystemTime,
    result: SystemTime,
    shell: bool,
) -> (Vec<Linked>, bool) {
    let cmd = command.trim();
    if !shell || cmd.is_empty() {
        return (Vec::new(), false);
    }
    let from = call.checked_sub(SLACK).unwrap_or(call);
    let to = result + SLACK;
    let forms = command_forms(cmd);
    let in_window = |a: &&Act| a.time >= from && a.time <= to;
    let mut keys = std::collections::HashSet::new();
    for a in acts.iter().filter(in_window) {
        let root = a.kind == Kind::ProcessExec
            && a.args
                .as_deref()
                .is_some_and(|args| forms.iter().any(|f| args.contains(f.as_str())));
        if root || keys.contains(&a.parent_key) {
            keys.insert(a.key.clone());
        }
    }
    let mut linked = Vec::new();
    let mut more = false;
    for a in acts.iter().filter(in_window) {
        if keys.contains(&a.key) {
            if linked.len() >= LINKED_MAX {
                more = true;
                break;
            }
            linked.push(Linked {
                seq: a.seq,
                kind: a.kind,
                key: a.key.clone(),
                pid: a.pid,
            });
        }
    }
    (linked, more)
}

#[cfg(test)]
mod tests;

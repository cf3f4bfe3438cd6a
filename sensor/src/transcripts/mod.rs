//! "Which tool call did this?": the agents' own transcripts, read while their
//! runs go on, as `tool.call` events linked to the run's process and connect
//! events (issue 22: Claude Code, `claude.rs`; Codex, `codex.rs`).
//!
//! The pipeline hands every event it emits to [`Transcripts::on_event`]
//! (cheap: a run id lookup), calls [`Transcripts::wake`] when the inotify
//! fd ([`Transcripts::wake_fd`]) is readable (at most every [`WAKE_GAP`])
//! and [`Transcripts::poll`] when [`Transcripts::next_read`] says (a call
//! settled, an exec to decide, a run's poll), while runs are followed
//! ([`Transcripts::following`]); what they return it numbers like any
//! event (engine) and emits.
//!
//! - A `run.start` of an agent whose `[[agent]]` has `transcripts = "FORMAT"`
//!   starts following: the location is resolved from the environment and the
//!   cwd of the run's first process, read from /proc at once.
//! - The run's process events (spawn, exec, connect) are kept, bounded, for
//!   the reconciliation.
//! - A read takes what was appended to the run's transcript files since the
//!   last one. The run's dirs are watched with inotify ([`follow`]): a
//!   change reads the run (only the files written to, when nothing else
//!   changed); each run is also polled in full every [`POLL_WATCHED`]
//!   (missed events, dirs made later), every [`POLL_UNWATCHED`] when its
//!   dirs could not all be watched.
//! - A call whose result is read is emitted as `tool.call` with the events
//!   it explains, [`SETTLE`] after its result; at the read after `run.end`
//!   the files are read a last time, calls without a result are emitted
//!   with `result_time: null`, and the run is forgotten.
//!
//! Labels on the run's own events (`run.tool_call`): a process event is
//! labelled with the call that was open when it happened, at the moment it
//! goes out (the stream is never held back). Claude Code writes a call's
//! `tool_use` line before it runs the tool, so the call is known when its
//! shell starts: an exec that no open call explains makes the daemon read
//! the run's transcripts at once (at most every [`EAGER_EVERY`]) before it
//! gives up. A process is labelled when its exec's arguments contain an
//! open shell call's command, or when its parent is labelled with a call
//! still open at the event's time; its connects and exits inherit the label
//! while the call is open. An event that goes out before the daemon could
//! know its call is not rewritten: the `tool.call` that follows lists it.
//!
//! `tool.unexplained`: each exec of a run, once no call can claim it any
//! more (its call window passed, [`DECIDE_AFTER`]), is explained by a call
//! (label or `tool.call` link), by being the agent itself, or by the
//! agent's infrastructure (`[[agent]] infrastructure`: a direct child of the
//! agent's process matching an entry, and its descendants), or by being one
//! of its helpers in a chain from it (`[[agent]] helpers`: Codex's sandbox;
//! what the chain runs is not excused); any other is reported once per tree
//! (its descendants are not reported again). A call of a tool that is not a
//! shell explains the execs of its program (`[[agent]] tool_programs`,
//! Claude Code's Grep → ripgrep) in its window.
//!
//! The transcript is written by the watched agent: it is hostile input.
//! Lines are capped ([`LINE_MAX`]), invalid ones skipped and counted, the
//! reads bounded ([`READ_PER_TICK`]), every dir and file opened beneath
//! the config dir's fd with no symlink on the way, no mount crossed
//! ([`follow`]: `openat2`), files read only when they are regular files
//! owned by the run's user, and every count (files, pending calls, kept
//! events, watches) is bounded. A problem is reported once per run
//! (`transcript.unreadable`).

pub mod claude;
pub mod codex;
pub mod follow;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    ffi::OsString,
    fs::File,
    io::{Read as _, Seek as _, SeekFrom},
    os::{
        fd::{AsFd as _, BorrowedFd, OwnedFd},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use std::sync::Arc;

use crate::event::{
    CallRef, Event, Kind, Linked, Process, RunRef, Timestamp, ToolCall, TranscriptIssue,
    Unexplained,
};

/// A transcript line longer than this is skipped (counted).
pub const LINE_MAX: usize = 1 << 20;
/// Bytes read per run per read at most (the rest at the next reads).
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
/// Sandbox helpers walked up from a call's shell, at most.
const HELPER_DEPTH: usize = 16;
/// Processes (and labels, explained keys) remembered per run, at most.
pub const PROCS_MAX: usize = 16_384;
/// Execs awaiting the `tool.unexplained` decision per run, at most (the
/// oldest is decided at once beyond it).
pub const TODO_MAX: usize = 1024;
/// An exec no open call explains reads the transcripts at once, at most
/// this often per run.
pub const EAGER_EVERY: Duration = Duration::from_millis(25);
/// An exec is decided (`tool.unexplained` or not) this long after it
/// began, once no call waiting for its result began before it.
pub const DECIDE_AFTER: Duration = Duration::from_secs(2);
/// Ancestors looked at for a label, at most.
const DEPTH_MAX: usize = 64;
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
    /// Codex CLI 0.x rollouts (`codex.rs`).
    Codex,
}

impl Format {
    /// The format named `name` in the config.
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "claude-code" => Some(Self::ClaudeCode),
            "codex" => Some(Self::Codex),
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

/// An entry of `[[agent]] infrastructure` (or `helpers`): the exe (its file
/// name, or its absolute path when the entry begins with `/`), then
/// optionally the first arguments (argv[1]...), each equal, or a prefix
/// when it ends with `*`, or `sha256:HEX` (the argument's SHA-256 is that:
/// a whole script pinned without copying it into the config), or
/// `@codex-snapshot-check` (Codex's check of its shell snapshot, below).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Infra {
    exe: String,
    args: Vec<InfraArg>,
}

/// An argument of an [`Infra`] entry.
#[derive(Debug, Clone, PartialEq, Eq)]
enum InfraArg {
    Equal(String),
    Prefix(String),
    Sha256([u8; 32]),
    /// `set -e; . "<config>/shell_snapshots/<session>.tmp-<nonce>"`, the
    /// run's own config dir ([`codex::is_snapshot_check`]).
    CodexSnapshotCheck,
}

/// Why an [`Infra`] or [`Program`] entry cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EntryError {
    #[error("{0:?}: sha256: needs 64 hex digits")]
    Sha256(String),
    #[error("{0:?}: unknown (known: @codex-snapshot-check)")]
    UnknownShape(String),
    #[error("{0:?} is no executable (known: {AGENT_EXE})")]
    NoExecutable(String),
    #[error("needs TOOL EXE [ARG...]")]
    NoProgram,
}

impl InfraArg {
    fn parse(word: &str) -> Result<Self, EntryError> {
        if let Some(hex) = word.strip_prefix("sha256:") {
            let mut digest = [0u8; 32];
            if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(EntryError::Sha256(word.to_owned()));
            }
            for (i, d) in digest.iter_mut().enumerate() {
                *d = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16)
                    .map_err(|_| EntryError::Sha256(word.to_owned()))?;
            }
            return Ok(Self::Sha256(digest));
        }
        if let Some(name) = word.strip_prefix('@') {
            return match name {
                "codex-snapshot-check" => Ok(Self::CodexSnapshotCheck),
                _ => Err(EntryError::UnknownShape(word.to_owned())),
            };
        }
        Ok(match word.strip_suffix('*') {
            Some(prefix) => Self::Prefix(prefix.to_owned()),
            None => Self::Equal(word.to_owned()),
        })
    }

    fn matches(&self, arg: &str, config: Option<&Path>) -> bool {
        match self {
            Self::Equal(want) => arg == want,
            Self::Prefix(prefix) => arg.starts_with(prefix.as_str()),
            Self::Sha256(digest) => {
                use sha2::Digest as _;
                sha2::Sha256::digest(arg.as_bytes()).as_slice() == digest
            }
            Self::CodexSnapshotCheck => config.is_some_and(|c| codex::is_snapshot_check(arg, c)),
        }
    }
}

impl Infra {
    /// The entry `text` (`git`, `/usr/bin/git`, `bash -c env`); `Ok(None)`
    /// when it is blank; an error for an argument it cannot read.
    pub fn parse(text: &str) -> Result<Option<Self>, EntryError> {
        let mut words = text.split_whitespace();
        let Some(exe) = words.next() else {
            return Ok(None);
        };
        if (exe.starts_with('@') && exe != AGENT_EXE) || exe.starts_with("sha256:") {
            return Err(EntryError::NoExecutable(exe.to_owned()));
        }
        Ok(Some(Self {
            exe: exe.to_owned(),
            args: words.map(InfraArg::parse).collect::<Result<_, _>>()?,
        }))
    }

    /// Whether the exec of `p` (its resolved exe and argv) is this, in a
    /// run whose agent's config dir is `config`. An entry with an absolute
    /// path also matches a shell running that script (`/bin/sh
    /// /usr/bin/lsb_release -a`: its exe is the shell), the arguments then
    /// counted after the script's path. (A relative entry never matches a
    /// script: anyone can name one `lsb_release`.)
    #[must_use]
    pub fn matches(&self, p: &Process, config: Option<&Path>) -> bool {
        self.matches_in(p, config, &[])
    }

    /// As [`Infra::matches`], in a run whose agent's own processes run the
    /// executables `agent_exes` (for an entry whose EXE is `@agent`: the
    /// exec's executable is one of them, e.g. Codex's sandbox helper is its
    /// own binary again).
    #[must_use]
    pub fn matches_in(&self, p: &Process, config: Option<&Path>, agent_exes: &[String]) -> bool {
        let Some(exe) = p.exe.as_deref() else {
            return false;
        };
        let argv = p.argv.as_deref().unwrap_or_default();
        let first_arg = if self.exe == AGENT_EXE {
            if !agent_exes.iter().any(|a| a == exe) {
                return false;
            }
            1
        } else if self.exe.starts_with('/') {
            if exe == self.exe {
                1
            } else if file_name(exe).is_some_and(|n| SCRIPT_SHELLS.contains(&n))
                && argv.get(1).is_some_and(|a| *a == self.exe)
            {
                2
            } else {
                return false;
            }
        } else if file_name(exe) == Some(self.exe.as_str()) {
            1
        } else {
            return false;
        };
        self.args.iter().enumerate().all(|(i, want)| {
            argv.get(i + first_arg)
                .is_some_and(|a| want.matches(a, config))
        })
    }
}

/// An entry of `[[agent]] tool_programs`: `TOOL EXE [ARG...]`, a program
/// the agent runs itself for calls of a tool that is not a shell (Claude
/// Code's Grep and Glob run ripgrep).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Program {
    tool: String,
    exec: Infra,
}

impl Program {
    /// The entry `text` (`Grep rg`); an error when it names no program or
    /// its program cannot be read.
    pub fn parse(text: &str) -> Result<Self, EntryError> {
        let text = text.trim();
        let Some((tool, rest)) = text.split_once(char::is_whitespace) else {
            return Err(EntryError::NoProgram);
        };
        let exec = Infra::parse(rest)?.ok_or(EntryError::NoProgram)?;
        Ok(Self {
            tool: tool.to_owned(),
            exec,
        })
    }

    /// Whether the exec of `p` is this program. `own`: the exe is the
    /// agent's own binary, then its argv[0] names the program (Claude
    /// Code's native build runs its embedded ripgrep as itself with
    /// argv[0] `rg`).
    fn matches(&self, p: &Process, own: bool) -> bool {
        if self.exec.matches(p, None) {
            return true;
        }
        if !own || self.exec.exe.starts_with('/') {
            return false;
        }
        let argv0 = p.argv.as_ref().and_then(|a| a.first());
        argv0.is_some_and(|a0| {
            let named = Process {
                exe: Some(a0.clone()),
                argv: p.argv.clone(),
                ..Process::default()
            };
            self.exec.matches(&named, None)
        })
    }
}

/// An agent's config dir from the environment `env` of a run's first
/// process (as `/proc/PID/environ` lists it): `$VAR`, else
/// `$HOME/<home_dir>` (an empty value is unset).
fn env_dir(env: &[(String, String)], var: &str, home_dir: &str) -> Option<PathBuf> {
    let get = |k: &str| {
        env.iter()
            .find(|(name, v)| name == k && !v.is_empty())
            .map(|(_, v)| PathBuf::from(v))
    };
    get(var).or_else(|| get("HOME").map(|h| h.join(home_dir)))
}

/// The file name of `path`.
fn file_name(path: &str) -> Option<&str> {
    Path::new(path).file_name().and_then(|n| n.to_str())
}

/// An entry's EXE that is the agent's own executable.
const AGENT_EXE: &str = "@agent";
/// Executables of the agent's own processes remembered per run, at most.
const AGENT_EXES_MAX: usize = 16;

/// The shells a `#!` script runs under, for [`Infra::matches`].
const SCRIPT_SHELLS: [&str; 3] = ["sh", "dash", "bash"];

/// What the tick hands the pipeline.
#[derive(Debug)]
pub enum Found {
    Call(RunRef, ToolCall),
    /// A shell call the agent says ran (a result that is not an error) of
    /// which the run shows no process: `tool.unobserved`, after its
    /// `tool.call`.
    Unobserved(RunRef, ToolCall),
    Unreadable(RunRef, TranscriptIssue),
    /// An exec of the run no call explains (`tool.unexplained`), with the
    /// exec's process.
    Unexplained(RunRef, Box<Process>, Unexplained),
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
    /// An exec of one of the agent's sandbox helpers, which run between
    /// the agent and a tool call's shell (Codex: [`codex::is_helper`]).
    helper: bool,
    /// An exec of a direct child of the agent's process that is the program
    /// of these tools (`[[agent]] tool_programs`).
    tools: Vec<String>,
}

impl Act {
    fn bytes(&self) -> usize {
        self.key.len()
            + self.parent_key.len()
            + self.args.as_ref().map_or(0, String::len)
            + self.tools.iter().map(String::len).sum::<usize>()
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

/// A process of a followed run, for labels.
#[derive(Debug)]
struct Proc {
    parent_key: String,
    /// Its last exec (else its spawn).
    time: SystemTime,
    /// Its last exec's argv after argv[0] (bounded).
    args: Option<String>,
}

impl Proc {
    fn bytes(&self) -> usize {
        self.parent_key.len() + self.args.as_ref().map_or(0, String::len)
    }
}

/// An exec awaiting the `tool.unexplained` decision.
#[derive(Debug)]
struct Candidate {
    seq: u64,
    time: SystemTime,
    process: Box<Process>,
}

#[derive(Debug)]
struct Pending {
    name: String,
    /// The forms of a shell call's command in its shell's arguments (none
    /// for other tools).
    forms: Vec<String>,
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
    /// Ids emitted (a call is reported once), with their result time.
    done: HashMap<String, Option<SystemTime>>,
    acts: VecDeque<Act>,
    /// Bytes the kept acts hold (keys and argv).
    acts_bytes: usize,
    ended: bool,
    /// The first problem, to report; `reported` once it was.
    problem: Option<(Option<PathBuf>, String)>,
    reported: bool,
    skipped: u64,
    other: u64,
    /// The run's processes (bounded by [`PROCS_MAX`] and [`ACTS_BYTES`]).
    procs: HashMap<String, Proc>,
    procs_bytes: usize,
    /// Process key → the call it was labelled with.
    labels: HashMap<String, CallRef>,
    /// The agent's own processes (the run's first).
    agent_keys: HashSet<String>,
    /// The agent's infrastructure processes and their descendants.
    infra_keys: HashSet<String>,
    /// Execs (seq) a `tool.call` explains.
    explained: HashSet<u64>,
    /// Processes reported (or under one reported) as `tool.unexplained`.
    unexplained_keys: HashSet<String>,
    /// Execs to decide, in event order.
    todo: VecDeque<Candidate>,
    infra: Arc<[Infra]>,
    helpers: Arc<[Infra]>,
    programs: Arc<[Program]>,
    /// Processes whose last exec is a helper in a chain of helpers from the
    /// agent's process (`[[agent]] helpers`).
    helper_keys: HashSet<String>,
    /// Processes that could join such a chain and exec'd something else:
    /// they never join it again (a tool's shell that re-execs a lookalike).
    left_chain: HashSet<String>,
    /// The executables of the agent's own processes (`@agent` in entries).
    agent_exes: Vec<String>,
    /// The agent's own matcher: a direct child of the agent's process that
    /// is the agent again (Codex's launcher starts its native binary) is
    /// the agent's process too.
    own: Option<Arc<crate::attribution::Matcher>>,
    last_eager: Option<std::time::Instant>,
    /// Decided early (the bound on `todo`), for the next tick.
    early: Vec<Found>,
    /// Execs not decided at all (beyond both bounds), to log.
    dropped: u64,
    /// CPU time spent on this run (its events and its reads, on the
    /// pipeline's thread), logged at its end.
    busy: Duration,
    /// The agent's config dir, opened (`O_PATH`) the first time it exists:
    /// everything beneath it is opened relative to it ([`follow`]).
    config_fd: Option<OwnedFd>,
    /// Whether every dir of the last full read is watched (inotify): then
    /// the run is read on its changes and polled every [`POLL_WATCHED`],
    /// else every [`POLL_UNWATCHED`].
    watched: bool,
    /// The last full read (every dir listed).
    last_full: Option<SystemTime>,
    /// Reads on inotify's word, and full reads (polls, eager reads), logged
    /// at the run's end.
    woken_reads: u64,
    full_reads: u64,
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
    /// Each agent's infrastructure (`[[agent]] infrastructure`).
    infra: HashMap<String, Arc<[Infra]>>,
    /// Each agent's helpers (`[[agent]] helpers`).
    helpers: HashMap<String, Arc<[Infra]>>,
    /// Each agent's tool programs (`[[agent]] tool_programs`).
    programs: HashMap<String, Arc<[Program]>>,
    /// Each agent's own matcher (`[[agent]]` exe, script, module).
    own: HashMap<String, Arc<crate::attribution::Matcher>>,
    runs: HashMap<String, Followed>,
    counts: Counts,
    /// Runs not followed because [`RUNS_MAX`] were.
    runs_refused: u64,
    /// The inotify watches of the runs' dirs (made at the first run).
    watcher: Option<follow::Watcher>,
    /// inotify could not be had (warned once): runs are polled.
    watcher_failed: bool,
    /// Something changed when the next read is due (a run began or ended,
    /// an event of a followed run was seen): the event loop asks.
    rearm: bool,
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

    /// The infrastructure of agent `agent`: its processes that no tool
    /// call explains and that are not `tool.unexplained`.
    #[must_use]
    pub fn with_infrastructure(mut self, agent: &str, entries: &[String]) -> Self {
        let list: Vec<Infra> = entries
            .iter()
            .filter_map(|e| Infra::parse(e).ok().flatten())
            .collect();
        self.infra.insert(agent.to_owned(), list.into());
        self
    }

    /// The helpers of agent `agent` (`[[agent]] helpers`): the wrappers
    /// between it and a tool call's command, the agent's own only as a
    /// chain from the agent's process.
    #[must_use]
    pub fn with_helpers(mut self, agent: &str, entries: &[String]) -> Self {
        let list: Vec<Infra> = entries
            .iter()
            .filter_map(|e| Infra::parse(e).ok().flatten())
            .collect();
        self.helpers.insert(agent.to_owned(), list.into());
        self
    }

    /// The tool programs of agent `agent` (`[[agent]] tool_programs`).
    #[must_use]
    pub fn with_tool_programs(mut self, agent: &str, entries: &[String]) -> Self {
        let list: Vec<Program> = entries
            .iter()
            .filter_map(|e| Program::parse(e).ok())
            .collect();
        self.programs.insert(agent.to_owned(), list.into());
        self
    }

    /// Follows the runs of the `[[agent]]`s that name a transcripts format
    /// (unknown formats were refused with the config).
    #[must_use]
    pub fn of_agents(agents: &[crate::attribution::AgentConfig]) -> Self {
        let mut t = Self::new(
            agents
                .iter()
                .filter_map(|a| {
                    let format = Format::parse(a.transcripts.as_deref()?)?;
                    Some((a.name.clone(), format))
                })
                .collect(),
        );
        for a in agents {
            if t.formats.contains_key(&a.name) {
                t = t
                    .with_infrastructure(&a.name, &a.infrastructure)
                    .with_helpers(&a.name, &a.helpers)
                    .with_tool_programs(&a.name, &a.tool_programs);
                // (A matcher that does not compile refused the config.)
                if let Ok(m) = crate::attribution::Matcher::new(a) {
                    t.own.insert(a.name.clone(), Arc::new(m));
                }
            }
        }
        t
    }

    /// Whether runs are being followed (or wait for their last read).
    #[must_use]
    pub fn following(&self) -> bool {
        !self.runs.is_empty()
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
    /// and connect events. Returns the tool call to label it with
    /// (`run.tool_call`), when the event is a process or network event of a
    /// followed run caused by a call open at its time.
    pub fn on_event(&mut self, e: &Event) -> Option<CallRef> {
        if self.formats.is_empty() {
            return None;
        }
        let run = e.run.as_ref()?;
        match e.kind {
            Kind::RunStart => {
                if e.delivery.is_none()
                    && let Some(format) = self.formats.get(&run.agent).copied()
                    && let Some(p) = &e.process
                {
                    let source = resolve(format, p.pid);
                    self.start(e, format, source);
                }
                None
            }
            Kind::RunEnd => {
                if let Some(f) = self.runs.get_mut(&run.id) {
                    f.ended = true;
                    self.rearm = true;
                }
                None
            }
            Kind::ProcessSpawn
            | Kind::ProcessExec
            | Kind::ProcessExit
            | Kind::NetworkConnect
            | Kind::NetworkListen
            | Kind::NetworkAccept
            | Kind::NetworkSocket => {
                let Self {
                    runs,
                    counts,
                    watcher,
                    rearm,
                    ..
                } = self;
                let f = runs.get_mut(&run.id)?;
                *rearm = true;
                let began = thread_cpu();
                let p = e.process.as_ref()?;
                let exec_ok = e.kind == Kind::ProcessExec
                    && e.exec
                        .as_ref()
                        .is_none_or(|x| x.result == crate::event::ExecResult::Ok);
                if e.kind == Kind::ProcessExec && !exec_ok {
                    return None;
                }
                let args = exec_ok
                    .then(|| {
                        p.argv.as_ref().map(|a| {
                            let joined = a.iter().skip(1).cloned().collect::<Vec<_>>().join(" ");
                            claude::cut(&joined, ARGV_KEPT).0
                        })
                    })
                    .flatten();
                if matches!(
                    e.kind,
                    Kind::ProcessSpawn | Kind::ProcessExec | Kind::NetworkConnect
                ) {
                    let helper = e.kind == Kind::ProcessExec
                        && f.format == Format::Codex
                        && p.argv.as_deref().is_some_and(codex::is_helper);
                    let tools = if exec_ok { tools_of(f, p) } else { Vec::new() };
                    keep_act(f, e, p, args.clone(), helper, tools);
                }
                if matches!(e.kind, Kind::ProcessSpawn | Kind::ProcessExec) {
                    keep_proc(f, p, e.time.0, args);
                }
                let mut label = find_label(f, &p.key, e.time.0);
                if label.is_none()
                    && (exec_ok || e.kind == Kind::NetworkConnect)
                    && !f.agent_keys.contains(&p.key)
                    && let Some(source) = f.source.clone()
                    && f.last_eager.is_none_or(|t| t.elapsed() >= EAGER_EVERY)
                {
                    // Its call may be in lines written since the last tick.
                    f.last_eager = Some(std::time::Instant::now());
                    read_run(
                        f,
                        &source,
                        SystemTime::now(),
                        counts,
                        watcher.as_mut(),
                        None,
                    );
                    label = find_label(f, &p.key, e.time.0);
                }
                if let Some(l) = &label
                    && (f.labels.len() < PROCS_MAX || f.labels.contains_key(&p.key))
                {
                    f.labels.insert(p.key.clone(), l.clone());
                }
                // A helper's own exec is the agent's, labelled or not; what
                // it runs is decided like any exec.
                let helper = exec_ok && helper_exec(f, p);
                if exec_ok && label.is_none() && !helper {
                    consider(f, e.seq, e.time.0, p);
                }
                f.busy += thread_cpu().saturating_sub(began);
                label
            }
            _ => None,
        }
    }

    /// Starts following the run of `e` (a `run.start`) at `source`, or
    /// with the reason it has none.
    pub fn start(&mut self, e: &Event, format: Format, source: Result<Source, SourceError>) {
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
            Err(why) => (None, Some((None, why.to_string()))),
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
                done: HashMap::new(),
                acts: VecDeque::new(),
                acts_bytes: 0,
                ended: false,
                problem,
                reported: false,
                skipped: 0,
                other: 0,
                procs: HashMap::new(),
                procs_bytes: 0,
                labels: HashMap::new(),
                agent_keys: e.process.iter().map(|p| p.key.clone()).collect(),
                infra_keys: HashSet::new(),
                explained: HashSet::new(),
                unexplained_keys: HashSet::new(),
                todo: VecDeque::new(),
                infra: self
                    .infra
                    .get(&run.agent)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(Vec::new())),
                helpers: self
                    .helpers
                    .get(&run.agent)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(Vec::new())),
                helper_keys: HashSet::new(),
                left_chain: HashSet::new(),
                agent_exes: e.process.iter().filter_map(|p| p.exe.clone()).collect(),
                programs: self
                    .programs
                    .get(&run.agent)
                    .cloned()
                    .unwrap_or_else(|| Arc::from(Vec::new())),
                own: self.own.get(&run.agent).cloned(),
                last_eager: None,
                early: Vec::new(),
                dropped: 0,
                busy: Duration::ZERO,
                config_fd: None,
                watched: false,
                last_full: None,
                woken_reads: 0,
                full_reads: 0,
            },
        );
        self.rearm = true;
        if self.watcher.is_none() && !self.watcher_failed {
            match follow::Watcher::new() {
                Ok(w) => self.watcher = Some(w),
                Err(e) => {
                    self.watcher_failed = true;
                    tracing::warn!(error = %e, "transcripts: no inotify; transcripts are polled");
                }
            }
        }
    }

    /// Reads what was appended to every run's transcripts; returns the
    /// calls complete by now and the problems not yet reported. Runs ended
    /// before this tick are read a last time and forgotten.
    pub fn tick(&mut self, now: SystemTime) -> Vec<Found> {
        self.read_in_full(now, |_| true)
    }

    /// The timed read: the runs whose poll is due ([`POLL_WATCHED`] after
    /// their last full read when their dirs are watched, else
    /// [`POLL_UNWATCHED`]) and the ended ones are read in full; then, as
    /// [`Self::tick`], the calls settled by now are emitted.
    pub fn poll(&mut self, now: SystemTime) -> Vec<Found> {
        self.read_in_full(now, |f| f.ended || poll_due(f) <= now)
    }

    /// Reads the runs `due` picks in full, then emits what is ready.
    fn read_in_full(&mut self, now: SystemTime, due: impl Fn(&Followed) -> bool) -> Vec<Found> {
        let Self {
            runs,
            counts,
            watcher,
            ..
        } = self;
        for f in runs.values_mut().filter(|f| due(f)) {
            full_read(f, now, counts, watcher.as_mut());
        }
        self.finish(now)
    }

    /// The read on inotify's word: the runs whose dirs changed, only the
    /// files written to when nothing else changed; then, as [`Self::tick`].
    pub fn wake(&mut self, now: SystemTime) -> Vec<Found> {
        let Self {
            runs,
            counts,
            watcher,
            ..
        } = self;
        let Some(w) = watcher.as_mut() else {
            return self.finish(now);
        };
        let woken = w.drain();
        for (id, f) in runs.iter_mut() {
            if woken.overflow || f.ended || woken.full.contains(id) {
                f.woken_reads += 1;
                full_read(f, now, counts, Some(w));
            } else if let Some(names) = woken.names.get(id)
                && let Some(source) = f.source.clone()
            {
                let began = thread_cpu();
                f.woken_reads += 1;
                read_run(f, &source, now, counts, Some(w), Some(names));
                f.busy += thread_cpu().saturating_sub(began);
            }
        }
        self.finish(now)
    }

    /// The inotify instance to poll, once there is one.
    #[must_use]
    pub fn wake_fd(&self) -> Option<follow::WakeFd> {
        self.watcher.as_ref().map(follow::Watcher::fd)
    }

    /// Whether the time of the next read may have changed since the last
    /// call ([`Self::next_read`] then says when).
    pub fn take_rearm(&mut self) -> bool {
        std::mem::take(&mut self.rearm)
    }

    /// How long from `now` until a read is due: a call's result settled
    /// ([`SETTLE`]), an exec to decide ([`DECIDE_AFTER`]), a run ended or a
    /// problem to report (at once), a run's poll; `None` when no run is
    /// followed.
    #[must_use]
    pub fn next_read(&self, now: SystemTime) -> Option<Duration> {
        let mut due: Option<SystemTime> = None;
        let mut at = |t: SystemTime| due = Some(due.map_or(t, |d| d.min(t)));
        for f in self.runs.values() {
            if f.ended || !f.early.is_empty() || (f.problem.is_some() && !f.reported) {
                return Some(Duration::ZERO);
            }
            at(poll_due(f));
            for p in f.pending.values() {
                if let Some((t, _)) = p.result {
                    at(t + SETTLE);
                }
            }
            // (One already due waits for a call's result: that read wakes.)
            if let Some(c) = f.todo.front()
                && c.time + DECIDE_AFTER > now
            {
                at(c.time + DECIDE_AFTER);
            }
        }
        due.map(|d| d.duration_since(now).unwrap_or_default())
    }

    /// Watches held (all runs).
    #[must_use]
    pub fn watches(&self) -> usize {
        self.watcher.as_ref().map_or(0, follow::Watcher::count)
    }

    /// Emits what is ready in every run, reports problems, forgets the runs
    /// ended (read a last time by now).
    fn finish(&mut self, now: SystemTime) -> Vec<Found> {
        let mut found = Vec::new();
        let mut over = Vec::new();
        for (id, f) in &mut self.runs {
            let ended = f.ended;
            let began = thread_cpu();
            emit_ready(f, now, ended, &mut found, &mut self.counts);
            decide(f, now, ended, &mut found);
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
            f.busy += thread_cpu().saturating_sub(began);
            if ended {
                tracing::info!(
                    run = %id,
                    cpu_ms = f.busy.as_secs_f64() * 1000.0,
                    skipped = f.skipped,
                    other = f.other,
                    woken_reads = f.woken_reads,
                    full_reads = f.full_reads,
                    watched = f.watched,
                    "transcripts: run over (time spent following it)"
                );
                over.push(id.clone());
            }
        }
        for id in over {
            self.runs.remove(&id);
            if let Some(w) = &mut self.watcher {
                w.forget(&id);
            }
        }
        found
    }
}

/// The transcripts are read on inotify's word at most this often (a
/// hostile or busy agent may write without pause: each wake costs a few
/// syscalls). A call waits [`SETTLE`] after its result anyway, so this adds
/// no latency as long as it is shorter.
pub const WAKE_GAP: Duration = Duration::from_millis(100);
/// How often a run whose dirs are watched is read all the same (events
/// missed: a dir not yet made, the queue overflowed).
pub const POLL_WATCHED: Duration = Duration::from_secs(1);
/// How often a run whose dirs are not all watched is read (no inotify, its
/// limit met, [`follow::WATCHES_MAX`]).
pub const POLL_UNWATCHED: Duration = Duration::from_millis(250);

/// When run `f` is due for its poll.
fn poll_due(f: &Followed) -> SystemTime {
    let every = if f.watched {
        POLL_WATCHED
    } else {
        POLL_UNWATCHED
    };
    f.last_full.map_or(SystemTime::UNIX_EPOCH, |t| t + every)
}

/// Reads every dir and file of run `f`.
fn full_read(
    f: &mut Followed,
    now: SystemTime,
    counts: &mut Counts,
    watcher: Option<&mut follow::Watcher>,
) {
    let began = thread_cpu();
    if let Some(source) = f.source.clone() {
        read_run(f, &source, now, counts, watcher, None);
    }
    f.last_full = Some(now);
    f.full_reads += 1;
    f.busy += thread_cpu().saturating_sub(began);
}

/// Why the transcripts of a run cannot be found (noted on the run).
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("reading /proc/{pid}/{what}: {error}")]
    Proc {
        pid: u32,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("neither {0} nor HOME is set")]
    NoHome(&'static str),
}

/// The source of a run whose first process is `pid`, from /proc.
fn resolve(format: Format, pid: u32) -> Result<Source, SourceError> {
    let proc = |what| move |error| SourceError::Proc { pid, what, error };
    let env = read_environ(pid).map_err(proc("environ"))?;
    let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).map_err(proc("cwd"))?;
    match format {
        Format::ClaudeCode => {
            let config =
                claude::config_dir(&env).ok_or(SourceError::NoHome("CLAUDE_CONFIG_DIR"))?;
            let config = if config.is_absolute() {
                config
            } else {
                cwd.join(config)
            };
            let dir = claude::project_dir(&config, &cwd);
            Ok(Source { config, dir })
        }
        Format::Codex => {
            let config = codex::config_dir(&env).ok_or(SourceError::NoHome("CODEX_HOME"))?;
            let config = if config.is_absolute() {
                config
            } else {
                cwd.join(config)
            };
            let dir = config.join("sessions");
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

/// Reads the new lines of the run's transcript files: Claude Code's in
/// the project dir, Codex's in the day dirs of `sessions` around the run;
/// of the files named `only` when given (inotify said only they were
/// written to). Every dir and file is opened beneath the config dir's fd
/// ([`follow`]); the dirs are watched when `watcher` is given.
fn read_run(
    f: &mut Followed,
    source: &Source,
    now: SystemTime,
    counts: &mut Counts,
    watcher: Option<&mut follow::Watcher>,
    only: Option<&HashSet<OsString>>,
) {
    if f.config_fd.is_none() {
        match follow::open_config(&source.config) {
            Ok(fd) => f.config_fd = Some(fd),
            // Not made yet (the agent writes its first line later).
            Err(nix::errno::Errno::ENOENT) => {
                f.watched = false;
                return;
            }
            Err(e) => {
                f.watched = false;
                problem(f, Some(&source.config), follow::why(e));
                return;
            }
        }
    }
    let Some(config) = f.config_fd.take() else {
        return;
    };
    if only.is_none() && follow::replaced(&source.config, config.as_fd()) {
        problem(
            f,
            Some(&source.config),
            "the config dir was replaced (moved, deleted or now a symlink): the dir the run \
             began with is read on, not what is at its path now"
                .to_owned(),
        );
    }
    read_beneath(f, source, config.as_fd(), now, counts, watcher, only);
    f.config_fd = Some(config);
}

/// Whether `name` is named like a transcript of `format`.
fn transcript_name(format: Format, name: &str) -> bool {
    match format {
        Format::ClaudeCode => Path::new(name).extension().is_some_and(|x| x == "jsonl"),
        Format::Codex => codex::is_rollout(Path::new(name)),
    }
}

/// [`read_run`] once the config dir `config` is open.
fn read_beneath(
    f: &mut Followed,
    source: &Source,
    config: BorrowedFd<'_>,
    now: SystemTime,
    counts: &mut Counts,
    mut watcher: Option<&mut follow::Watcher>,
    only: Option<&HashSet<OsString>>,
) {
    let dirs = match f.format {
        Format::ClaudeCode => vec![source.dir.clone()],
        Format::Codex => codex::day_dirs(&source.dir, f.start, now),
    };
    let mut watched = watcher.is_some();
    let mut opened: Vec<OwnedFd> = Vec::new();
    let mut paths: Vec<(PathBuf, usize, OsString)> = Vec::new();
    for dir in dirs {
        let Ok(rel) = dir.strip_prefix(&source.config) else {
            problem(
                f,
                Some(&dir),
                "not beneath the agent's config dir".to_owned(),
            );
            continue;
        };
        let fd = match follow::open_dir(config, rel) {
            Ok(fd) => fd,
            // Not made yet: the deepest dir on the way that is is watched,
            // to read the run when it comes.
            Err(nix::errno::Errno::ENOENT) => {
                if only.is_none()
                    && let Some(w) = watcher.as_deref_mut()
                    && !watch_nearest(w, &f.run.id, config, rel)
                {
                    watched = false;
                }
                continue;
            }
            Err(e) => {
                problem(f, Some(&dir), follow::why(e));
                continue;
            }
        };
        if only.is_none()
            && let Some(w) = watcher.as_deref_mut()
            && w.watch(&f.run.id, fd.as_fd()).is_err()
        {
            watched = false;
        }
        let names = match only {
            Some(only) => only
                .iter()
                .filter(|n| n.to_str().is_some_and(|n| transcript_name(f.format, n)))
                .cloned()
                .collect(),
            None => {
                let format = f.format;
                match follow::list(fd.as_fd(), |n| transcript_name(format, n)) {
                    Ok((names, more)) => {
                        if more {
                            problem(
                                f,
                                Some(&dir),
                                format!(
                                    "more than {} entries: the rest not looked at",
                                    follow::ENTRIES_MAX
                                ),
                            );
                        }
                        names
                    }
                    Err(e) => {
                        problem(
                            f,
                            Some(&dir),
                            format!("cannot list: {}", std::io::Error::from(e)),
                        );
                        continue;
                    }
                }
            }
        };
        let i = opened.len();
        opened.push(fd);
        paths.extend(
            names
                .into_iter()
                .take(4 * FILES_MAX)
                .map(|n| (dir.join(&n), i, n)),
        );
    }
    if only.is_none() {
        f.watched = watched;
    }
    paths.sort();
    let mut budget = READ_PER_TICK;
    for (path, i, name) in paths {
        if budget == 0 {
            break;
        }
        if !f.files.contains_key(&path) && f.files.len() >= FILES_MAX {
            let dir = path.parent().map(Path::to_path_buf);
            problem(
                f,
                dir.as_deref(),
                format!("more than {FILES_MAX} transcript files"),
            );
            break;
        }
        let Some(dir) = opened.get(i) else {
            continue;
        };
        read_file(f, dir.as_fd(), &path, &name, &mut budget, counts);
    }
}

/// Watches the deepest existing dir of `rel` (beneath `config`, itself
/// included) for run `run`; whether it could.
fn watch_nearest(w: &mut follow::Watcher, run: &str, config: BorrowedFd<'_>, rel: &Path) -> bool {
    let mut at = rel.parent();
    while let Some(p) = at {
        let p_rel = if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        };
        match follow::open_dir(config, p_rel) {
            Ok(fd) => return w.watch(run, fd.as_fd()).is_ok(),
            Err(nix::errno::Errno::ENOENT) => at = p.parent(),
            Err(_) => return false,
        }
    }
    false
}

/// Reads the new lines of the file `name` of the dir `dir` (`path`), not
/// following a symlink.
fn read_file(
    f: &mut Followed,
    dir: BorrowedFd<'_>,
    path: &Path,
    name: &OsString,
    budget: &mut u64,
    counts: &mut Counts,
) {
    let file = match follow::open_file(dir, Path::new(name)) {
        Ok(file) => file,
        // Gone since the listing (rotated), or (named by inotify) in
        // another of the run's dirs.
        Err(nix::errno::Errno::ENOENT) => return,
        Err(e) => {
            problem(f, Some(path), follow::why(e));
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
        let parsed = match f.format {
            Format::ClaudeCode => claude::parse_line(&line),
            Format::Codex => codex::parse_line(&line),
        };
        match parsed {
            Some(r) => records.extend(r),
            None => skipped += 1,
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
                || f.done.contains_key(&id)
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
            let forms = if shell(f.format, &name) && !input.trim().is_empty() {
                command_forms(input.trim())
            } else {
                Vec::new()
            };
            f.pending.insert(
                id,
                Pending {
                    forms,
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
        let is_shell = shell(f.format, &p.name);
        let root = if is_shell {
            Root::Command(&p.input)
        } else {
            Root::Tool(&p.name)
        };
        let (processes, more, keys) = link(&f.acts, root, p.time, end, |key| {
            f.labels.get(key).is_some_and(|l| l.id == id)
        });
        counts.calls += 1;
        if f.done.len() < PENDING_MAX * 4 {
            f.done.insert(id.clone(), p.result.map(|(t, _)| t));
        }
        for seq in keys {
            if f.explained.len() < PROCS_MAX {
                f.explained.insert(seq);
            }
        }
        // The call's processes carry its label from now on, also those that
        // went out before its line was read: a job one of them leaves
        // behind names the call it outlived (`after_call`).
        for l in &processes {
            if f.labels.len() < PROCS_MAX && !f.labels.contains_key(&l.key) {
                f.labels.insert(
                    l.key.clone(),
                    CallRef {
                        id: id.clone(),
                        name: p.name.clone(),
                    },
                );
            }
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
        let unobserved = is_shell
            && call.processes.is_empty()
            && !call.input.trim().is_empty()
            && call.is_error == Some(false);
        out.push(Found::Call(f.run.clone(), call.clone()));
        if unobserved {
            out.push(Found::Unobserved(f.run.clone(), call));
        }
    }
}

/// The CPU time of the calling thread so far (zero when it cannot be read).
fn thread_cpu() -> Duration {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
        .map(Duration::from)
        .unwrap_or_default()
}

/// Keeps a process or connect event for the reconciliation (bounded).
fn keep_act(
    f: &mut Followed,
    e: &Event,
    p: &Process,
    args: Option<String>,
    helper: bool,
    tools: Vec<String>,
) {
    let act = Act {
        seq: e.seq,
        kind: e.kind,
        time: e.time.0,
        key: p.key.clone(),
        parent_key: p.parent_key.clone(),
        pid: p.pid,
        args,
        helper,
        tools,
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

/// The tools (`[[agent]] tool_programs`) whose program the exec of `p` is,
/// when it is a direct child of the agent's process (through forks that
/// did not exec).
fn tools_of(f: &Followed, p: &Process) -> Vec<String> {
    if f.programs.is_empty() || !f.agent_keys.contains(exec_parent(f, &p.parent_key)) {
        return Vec::new();
    }
    let own = f.own.as_ref().is_some_and(|m| is_agent(m, p));
    let mut tools: Vec<String> = f
        .programs
        .iter()
        .filter(|prog| prog.matches(p, own))
        .map(|prog| prog.tool.clone())
        .collect();
    tools.dedup();
    tools
}

/// Remembers a process of the run (its parent, its last exec's args), for
/// labels; beyond the bounds, new processes are not remembered (their
/// events are labelled by their own exec's args only).
fn keep_proc(f: &mut Followed, p: &Process, time: SystemTime, args: Option<String>) {
    let new = Proc {
        parent_key: p.parent_key.clone(),
        time,
        args,
    };
    let bytes = new.bytes();
    if let Some(old) = f.procs.get_mut(&p.key) {
        // The parent stays the one it was started by (an exec after its
        // parent exited names the reaper); an exec without args known (not
        // UTF-8) keeps the ones before.
        if new.args.is_some() {
            let new = Proc {
                parent_key: std::mem::take(&mut old.parent_key),
                ..new
            };
            f.procs_bytes = f.procs_bytes.saturating_sub(old.bytes()) + new.bytes();
            *old = new;
        }
    } else if f.procs.len() < PROCS_MAX && f.procs_bytes + bytes <= ACTS_BYTES {
        f.procs_bytes += bytes;
        f.procs.insert(p.key.clone(), new);
    }
}

/// Whether call `id` of the run was open at `t` (with [`SLACK`]).
fn open_at(f: &Followed, id: &str, t: SystemTime) -> bool {
    if let Some(p) = f.pending.get(id) {
        return t + SLACK >= p.time && p.result.is_none_or(|(r, _)| t <= r + SLACK);
    }
    matches!(f.done.get(id), Some(Some(r)) if t <= *r + SLACK)
}

/// The open shell call whose command is in `args` of an exec at `t` (the
/// earliest call when several are).
fn open_call_in(f: &Followed, args: &str, t: SystemTime) -> Option<CallRef> {
    f.pending
        .iter()
        .filter(|(_, p)| {
            !p.forms.is_empty()
                && t + SLACK >= p.time
                && p.result.is_none_or(|(r, _)| t <= r + SLACK)
                && p.forms.iter().any(|form| args.contains(form.as_str()))
        })
        .min_by_key(|(_, p)| p.time)
        .map(|(id, p)| CallRef {
            id: id.clone(),
            name: p.name.clone(),
        })
}

/// The call an event at `t` of process `key` belongs to: the label of the
/// process or of its nearest labelled ancestor while that call is open at
/// `t`, else the open call whose command is in the exec arguments of the
/// process or of an ancestor (then labelled). The agent's own processes are
/// never labelled, nor is anything above them looked at.
fn find_label(f: &mut Followed, key: &str, t: SystemTime) -> Option<CallRef> {
    let mut k = key.to_owned();
    for _ in 0..DEPTH_MAX {
        if f.agent_keys.contains(&k) {
            return None;
        }
        if let Some(c) = f.labels.get(&k) {
            return open_at(f, &c.id, t).then(|| c.clone());
        }
        let proc = f.procs.get(&k)?;
        if let Some(args) = &proc.args
            && let Some(c) = open_call_in(f, args, proc.time)
        {
            let open = open_at(f, &c.id, t);
            if f.labels.len() < PROCS_MAX {
                f.labels.insert(k, c.clone());
            }
            return open.then_some(c);
        }
        k = proc.parent_key.clone();
    }
    None
}

/// Whether the exec of `p` is the agent itself (its `[[agent]]` matcher
/// recognises it).
fn is_agent(m: &crate::attribution::Matcher, p: &Process) -> bool {
    let (Some(exe), Some(argv)) = (p.exe.as_deref(), p.argv.as_deref()) else {
        return false;
    };
    m.matches(&crate::attribution::ExecView {
        exe,
        argv,
        cwd: p.cwd.as_deref(),
    })
}

/// An exec no call explains when it went out: infrastructure, or a
/// candidate for `tool.unexplained`.
fn consider(f: &mut Followed, seq: u64, time: SystemTime, p: &Process) {
    let key = &p.key;
    if f.agent_keys.contains(key) || f.infra_keys.contains(key) {
        return;
    }
    if f.agent_keys.contains(&p.parent_key) && f.own.as_ref().is_some_and(|m| is_agent(m, p)) {
        if f.agent_keys.len() < PROCS_MAX {
            f.agent_keys.insert(key.clone());
        }
        if let Some(exe) = &p.exe
            && f.agent_exes.len() < AGENT_EXES_MAX
            && !f.agent_exes.contains(exe)
        {
            f.agent_exes.push(exe.clone());
        }
        return;
    }
    let config = f.source.as_ref().map(|s| s.config.as_path());
    let infra = in_tree(f, &p.parent_key, &f.infra_keys)
        || (f.agent_keys.contains(&p.parent_key)
            && f.infra
                .iter()
                .any(|i| i.matches_in(p, config, &f.agent_exes)));
    if infra {
        if f.infra_keys.len() < PROCS_MAX {
            f.infra_keys.insert(key.clone());
        }
        return;
    }
    if f.todo.len() >= TODO_MAX
        && let Some(old) = f.todo.pop_front()
    {
        // Beyond the bound the oldest is decided now, on what is known.
        if let Some(found) = decide_one(f, old) {
            if f.early.len() < TODO_MAX {
                f.early.push(found);
            } else {
                f.dropped += 1;
            }
        }
    }
    f.todo.push_back(Candidate {
        seq,
        time,
        process: Box::new(p.clone()),
    });
}

/// Whether the exec of `p` is one of the agent's helpers (`[[agent]]
/// helpers`) in a chain from the agent: the first exec of a direct child
/// of the agent's process or of a helper of that chain, or a re-exec of
/// such a helper. Remembers the chain; a process that could join it and
/// execs anything else leaves it for good (what it runs is no helper of the
/// agent's, and nor is what that starts or what it re-execs later).
fn helper_exec(f: &mut Followed, p: &Process) -> bool {
    if f.helpers.is_empty() || f.agent_keys.contains(&p.key) {
        return false;
    }
    let parent = exec_parent(f, &p.parent_key);
    // Beyond the bound on the processes that left, none joins by its
    // parent any more (more reported, never fewer).
    let may_join = f.left_chain.len() < PROCS_MAX && !f.left_chain.contains(&p.key);
    let eligible = f.helper_keys.contains(&p.key)
        || (may_join && (f.agent_keys.contains(parent) || f.helper_keys.contains(parent)));
    let config = f.source.as_ref().map(|s| s.config.as_path());
    if eligible
        && f.helpers
            .iter()
            .any(|h| h.matches_in(p, config, &f.agent_exes))
    {
        if f.helper_keys.len() < PROCS_MAX {
            f.helper_keys.insert(p.key.clone());
        }
        return true;
    }
    if eligible {
        f.helper_keys.remove(&p.key);
        if f.left_chain.len() < PROCS_MAX {
            f.left_chain.insert(p.key.clone());
        }
    }
    false
}

/// The nearest process from `key` up that exec'd (through forks that did
/// not), or the agent's: the one whose program started it.
fn exec_parent<'a>(f: &'a Followed, key: &'a str) -> &'a str {
    let mut k = key;
    for _ in 0..DEPTH_MAX {
        if f.agent_keys.contains(k) {
            return k;
        }
        match f.procs.get(k) {
            Some(p) if p.args.is_none() => k = &p.parent_key,
            _ => return k,
        }
    }
    k
}

/// Whether `key` or one of its ancestors below the agent's process is in
/// `set` (the ancestors through forks that never exec'd, as the run's
/// remembered processes give them).
fn in_tree(f: &Followed, key: &str, set: &HashSet<String>) -> bool {
    let mut k = key;
    for _ in 0..DEPTH_MAX {
        if set.contains(k) {
            return true;
        }
        if f.agent_keys.contains(k) {
            return false;
        }
        match f.procs.get(k) {
            Some(p) => k = &p.parent_key,
            None => return false,
        }
    }
    false
}

/// Decides the execs no call can claim any more: `tool.unexplained` for the
/// first of each tree that no call explains.
fn decide(f: &mut Followed, now: SystemTime, ended: bool, out: &mut Vec<Found>) {
    out.append(&mut f.early);
    if f.dropped > 0 {
        tracing::warn!(run = %f.run.id, execs = f.dropped, "transcripts: too many execs to decide at once; some were not");
        f.dropped = 0;
    }
    // A call still waiting for its result may claim what began after it.
    let horizon = f
        .pending
        .values()
        .map(|p| p.time.checked_sub(SLACK).unwrap_or(p.time))
        .min();
    while let Some(c) = f.todo.front() {
        let ripe = ended || (c.time + DECIDE_AFTER <= now && horizon.is_none_or(|h| c.time < h));
        if !ripe {
            break;
        }
        let Some(c) = f.todo.pop_front() else {
            break;
        };
        out.extend(decide_one(f, c));
    }
}

/// The `tool.unexplained` of one exec, if it is one.
fn decide_one(f: &mut Followed, c: Candidate) -> Option<Found> {
    let key = c.process.key.clone();
    let parent = c.process.parent_key.clone();
    if f.explained.contains(&c.seq)
        || f.agent_keys.contains(&key)
        || f.infra_keys.contains(&key)
        || f.unexplained_keys.contains(&key)
        || f.labels
            .get(&key)
            .is_some_and(|l| open_at(f, &l.id, c.time))
    {
        return None;
    }
    if in_tree(f, &parent, &f.infra_keys) {
        if f.infra_keys.len() < PROCS_MAX {
            f.infra_keys.insert(key);
        }
        return None;
    }
    if in_tree(f, &parent, &f.unexplained_keys) {
        if f.unexplained_keys.len() < PROCS_MAX {
            f.unexplained_keys.insert(key);
        }
        return None;
    }
    // The call of the process itself (an exec after its call's result) or
    // of its nearest labelled ancestor: it began after that call's result
    // (a background job that outlived its call, perhaps reparented since).
    let mut after_call = None;
    let mut k = key.clone();
    for _ in 0..DEPTH_MAX {
        if f.agent_keys.contains(&k) {
            break;
        }
        if let Some(l) = f.labels.get(&k) {
            after_call = Some(l.clone());
            break;
        }
        match f.procs.get(&k) {
            Some(p) => k = p.parent_key.clone(),
            None => break,
        }
    }
    if f.unexplained_keys.len() < PROCS_MAX {
        f.unexplained_keys.insert(key);
    }
    let reason = if after_call.is_some() {
        "after_call"
    } else {
        "no_tool_call"
    };
    Some(Found::Unexplained(
        f.run.clone(),
        c.process,
        Unexplained {
            exec_seq: c.seq,
            reason,
            after_call,
        },
    ))
}

/// Whether calls of tool `name` run a shell command.
fn shell(format: Format, name: &str) -> bool {
    match format {
        Format::ClaudeCode => name == "Bash",
        Format::Codex => codex::is_shell(name),
    }
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

/// What roots a call's processes.
#[derive(Debug, Clone, Copy)]
enum Root<'a> {
    /// A shell call's command, in its shell's arguments.
    Command(&'a str),
    /// A call of a tool that is not a shell: the execs of its program
    /// (`[[agent]] tool_programs`).
    Tool(&'a str),
}

/// The events a shell call with `command` explains (or a call of another
/// tool: the execs of its program in its window, as roots): the processes whose
/// exec began in its window (`call - SLACK ..= result + SLACK`) with the
/// command in their arguments, the sandbox helpers they run under (the
/// chain of helper execs in the window between them and the agent: Codex's
/// `codex-linux-sandbox` and bwrap, whose argv the kernel's capture cuts
/// before the command), the descendants of all of them that began in the
/// window, and the spawn, exec and connect events of all of them in the
/// window. Also the processes `labelled` with the call when they happened.
/// Returns the events (at most [`LINKED_MAX`]), whether there were more,
/// and the seqs of all the execs.
fn link(
    acts: &VecDeque<Act>,
    root: Root<'_>,
    call: SystemTime,
    result: SystemTime,
    labelled: impl Fn(&str) -> bool,
) -> (Vec<Linked>, bool, HashSet<u64>) {
    let forms = match root {
        Root::Command(command) => {
            let cmd = command.trim();
            if cmd.is_empty() {
                return (Vec::new(), false, HashSet::new());
            }
            command_forms(cmd)
        }
        Root::Tool(_) => Vec::new(),
    };
    let from = call.checked_sub(SLACK).unwrap_or(call);
    let to = result + SLACK;
    let in_window = |a: &&Act| a.time >= from && a.time <= to;
    let mut keys = HashSet::new();
    let mut parents: HashMap<&str, &str> = HashMap::new();
    let mut helpers = HashSet::new();
    for a in acts.iter().filter(in_window) {
        let root = a.kind == Kind::ProcessExec
            && match root {
                Root::Command(_) => a
                    .args
                    .as_deref()
                    .is_some_and(|args| forms.iter().any(|f| args.contains(f.as_str()))),
                Root::Tool(name) => a.tools.iter().any(|t| t == name),
            };
        if root || keys.contains(&a.parent_key) || labelled(&a.key) {
            keys.insert(a.key.clone());
        }
        if a.helper {
            helpers.insert(a.key.as_str());
        }
        parents
            .entry(a.key.as_str())
            .or_insert(a.parent_key.as_str());
    }
    let roots: Vec<String> = keys.iter().cloned().collect();
    for root in roots {
        let mut at = root.as_str();
        for _ in 0..HELPER_DEPTH {
            match parents.get(at) {
                Some(&parent) if helpers.contains(parent) => {
                    keys.insert(parent.to_owned());
                    at = parent;
                }
                _ => break,
            }
        }
    }
    for a in acts.iter().filter(in_window) {
        if keys.contains(&a.parent_key) {
            keys.insert(a.key.clone());
        }
    }
    let mut linked = Vec::new();
    let mut more = false;
    let mut execs = HashSet::new();
    for a in acts.iter().filter(in_window) {
        if keys.contains(&a.key) {
            if a.kind == Kind::ProcessExec {
                execs.insert(a.seq);
            }
            if linked.len() >= LINKED_MAX {
                more = true;
                continue;
            }
            linked.push(Linked {
                seq: a.seq,
                kind: a.kind,
                key: a.key.clone(),
                pid: a.pid,
            });
        }
    }
    (linked, more, execs)
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod codex_tests;

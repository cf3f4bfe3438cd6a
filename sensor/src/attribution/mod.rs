//! Attribution: which process an event is about, and which agent run it
//! belongs to.
//!
//! The kernel decides inheritance (a child enters its creator's run at fork,
//! in the kernel) and every record carries the run handle the kernel saw.
//! This stage keeps the user-space side: the process table (exe, run per
//! live process, in ring order), the run table (ids, principals, the
//! sub-agent tree, live counts), run starts from `sensor launch`, run ends,
//! attestation, and the state that survives a restart.

pub mod matchers;
pub mod placement;
pub mod process_table;
pub mod runs;

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use sensor_common::event::{EventHeader, HOW_FLAG_COUNTED, ProcRun};

pub use self::{
    matchers::{AgentConfig, ExecView, Matcher, Matchers},
    placement::{How, Placement},
    process_table::{ProcessInfo, ProcessTable},
    runs::{NewRun, Run, RunError, RunTable, check_scopes},
};
use crate::event::RunRef;
pub use crate::run_map::RunMap;

/// Who did something, as [`Attribution::actor`] found them.
#[derive(Debug, Clone)]
pub struct Actor {
    pub pid: u32,
    /// Start time (ns; 0: not known).
    pub start_ns: u64,
    /// Its run (none: 0) and how the process had joined it.
    pub placement: Placement,
    pub exe: Option<std::sync::Arc<str>>,
    /// It still runs (as the process that started at `start_ns`).
    pub alive: bool,
    /// What was known of it at its exit, when it is gone.
    pub exited: Option<process_table::Exited>,
}

impl Actor {
    /// Something is known of it: it runs, or the table or its exit record
    /// had it.
    #[must_use]
    pub fn is_known(&self) -> bool {
        self.alive || self.start_ns != 0
    }
}

/// What [`Attribution::expire`] asks to be done to a process of an expired
/// top-level run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Halt {
    /// Freeze it (SIGSTOP) while the others are found.
    Stop,
    /// SIGKILL it.
    Kill,
}

/// A process whose image may be an agent's, as [`Attribution::place_agent`]
/// decides about it.
#[derive(Debug, Clone, Copy)]
struct Candidate {
    pid: u32,
    /// Start time (ns), for the kernel map entry.
    start_ns: u64,
    /// Its user, the principal of a top-level run it starts.
    uid: u32,
    /// Where it is now.
    current: Placement,
}

/// A candidate's parent process, as the table knows it.
#[derive(Debug, Clone, Copy)]
struct ParentProcess {
    /// Its run (0: none).
    run: u64,
    /// Its current image is an agent's.
    agent: bool,
}

/// Something attribution did that deserves an event of its own.
#[derive(Debug, Clone)]
pub enum RunChange {
    Started { run: Run, pid: u32 },
    Ended { run: Run },
}

/// The verified identity of a control socket peer (SO_PEERCRED), and a
/// pidfd for the very process that connected (SO_PEERPIDFD), so a request
/// whose sender died and whose pid was reused is never taken for the new
/// process's.
#[derive(Debug, Clone)]
pub struct Peer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    pub pidfd: Option<std::sync::Arc<std::os::fd::OwnedFd>>,
}

impl Peer {
    /// A peer known by pid only (the daemon itself, tests).
    #[must_use]
    pub fn local(pid: u32, uid: u32, gid: u32) -> Self {
        Self {
            pid,
            uid,
            gid,
            pidfd: None,
        }
    }

    /// Whether the process that connected still lives (and so still owns
    /// its pid). Checked after whatever was read about the pid (its start
    /// time, its kernel map entry): if it holds, that was about this peer.
    #[must_use]
    pub fn alive(&self) -> bool {
        use std::os::fd::AsRawFd as _;
        let Some(fd) = &self.pidfd else {
            return true;
        };
        // SAFETY: pidfd_send_signal(2) with signal 0 only checks; the fd is ours.
        let r = unsafe {
            nix::libc::syscall(
                nix::libc::SYS_pidfd_send_signal,
                fd.as_raw_fd(),
                0,
                std::ptr::null::<nix::libc::siginfo_t>(),
                0,
            )
        };
        r == 0
    }
}

/// A `sensor launch` registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LaunchRequest {
    pub agent: String,
    #[serde(default)]
    pub run_id: Option<String>,
    #[serde(default)]
    pub principal: Option<String>,
    #[serde(default)]
    pub policy: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// What the run's tokens may carry; absent: the parent run's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
}

/// What attestation and whoami answer.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RunAnswer {
    pub pid: u32,
    pub start_ticks: u64,
    pub process_key: String,
    pub attribution: String,
    pub run: Run,
}

/// What the daemon knows now of a live process (`{"op":"process"}`, `sensor
/// who --pid`): its identity, and its run when it is in one, even when it
/// did nothing since the daemon placed it (from /proc at start-up).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProcessAnswer {
    pub pid: u32,
    pub start_ticks: u64,
    pub process_key: String,
    /// Its real uid.
    pub uid: u32,
    /// Its executable, when the daemon saw it (an exec, or /proc at start-up).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// How it joined its run (launch, inherited, matcher, backfill, env);
    /// absent when it is in no run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attribution: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<Run>,
}

/// Why a request about runs was refused.
#[derive(Debug, thiserror::Error)]
pub enum AttributionError {
    #[error("process {0} does not exist")]
    NoProcess(u32),
    #[error("process {pid} started at tick {actual}, not {given}: the pid was reused")]
    StaleStart { pid: u32, given: u64, actual: u64 },
    #[error("process {0} is not in an agent run")]
    NotInRun(u32),
    #[error(transparent)]
    Run(#[from] RunError),
    /// The kernel's message is part of this one (not a source), as it has
    /// always been answered.
    #[error("the kernel refused the process → run entry: {0}")]
    Kernel(aya::maps::MapError),
    #[error(
        "process {0} that sent the request is gone (its pid may belong to another process now)"
    )]
    PeerGone(u32),
    #[error(transparent)]
    Bind(#[from] crate::policy::kernel::BindRefusal),
}

/// The attribution stage.
pub struct Attribution {
    processes: ProcessTable,
    /// The last exits, for reports that come after their process is gone.
    recent_exits: process_table::RecentExits,
    runs: RunTable,
    map: Box<dyn RunMap>,
    state_path: Option<PathBuf>,
    ns_per_tick: u64,
    keys: crate::identity::ProcessKeys,
    proc_root: PathBuf,
    matchers: Matchers,
    /// Run changes journaled since the last snapshot.
    journaled: u32,
    /// The thread that writes run state snapshots (started on first use).
    snapshots: Option<std::sync::mpsc::Sender<runs::Snapshot>>,
}

/// Starts the thread that writes run state snapshots off the event thread.
fn spawn_snapshot_writer() -> std::sync::mpsc::Sender<runs::Snapshot> {
    let (tx, rx) = std::sync::mpsc::channel::<runs::Snapshot>();
    let spawned = std::thread::Builder::new()
        .name("sensor-runs".into())
        .spawn(move || {
            for snapshot in rx {
                if let Err(e) = snapshot.write() {
                    tracing::error!(error = %e, "cannot save run state");
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "cannot start the run state thread; snapshots are written inline");
    }
    tx
}

/// How long an ended run stays in memory (for records of its processes
/// still in flight, e.g. the exits of a run killed at its TTL).
pub const ENDED_KEPT: Duration = Duration::from_secs(60);

/// Journal lines after which the run state is written as a new snapshot.
const JOURNAL_COMPACT_EVERY: u32 = 1000;

impl Attribution {
    #[must_use]
    pub fn new(
        keys: crate::identity::ProcessKeys,
        map: Box<dyn RunMap>,
        runs: RunTable,
        state_path: Option<PathBuf>,
    ) -> Self {
        let ns_per_tick = keys.ns_per_tick();
        Self {
            processes: ProcessTable::new(ns_per_tick),
            recent_exits: process_table::RecentExits::default(),
            runs,
            map,
            state_path,
            ns_per_tick,
            keys,
            proc_root: PathBuf::from("/proc"),
            matchers: Matchers::default(),
            journaled: 0,
            snapshots: None,
        }
    }

    /// Reads processes under `root` instead of `/proc` (a replay of
    /// recorded records, where the pids are not this machine's).
    #[must_use]
    pub fn with_proc_root(mut self, root: PathBuf) -> Self {
        self.proc_root = root;
        self
    }

    /// Where processes are read (`/proc`).
    #[must_use]
    pub fn proc_root(&self) -> &Path {
        &self.proc_root
    }

    /// Sets the `[[agent]]` matchers.
    #[must_use]
    pub fn with_matchers(mut self, matchers: Matchers) -> Self {
        self.matchers = matchers;
        self
    }

    /// Replaces the `[[agent]]` matchers (a reload): execs from now on are
    /// matched against them; runs already started keep their agent.
    pub fn set_matchers(&mut self, matchers: Matchers) {
        self.matchers = matchers;
    }

    /// The `[[agent]]` matchers in force.
    #[must_use]
    pub fn matchers(&self) -> &Matchers {
        &self.matchers
    }

    /// Live processes tracked.
    #[must_use]
    pub fn tracked_processes(&self) -> usize {
        self.processes.len()
    }

    /// Active runs of user `uid`.
    #[must_use]
    pub fn active_runs_of_uid(&self, uid: u32) -> u32 {
        self.runs.active_of_uid(uid)
    }

    /// Active runs.
    #[must_use]
    pub fn active_runs(&self) -> usize {
        self.runs.active().count()
    }

    /// Whether a run is active (cheap: the event loop asks every round).
    #[must_use]
    pub fn has_active_runs(&self) -> bool {
        self.runs.has_active()
    }

    /// Whether any process is in a run, by the kernel's process → run map
    /// (which also holds what a run that ended left behind until its
    /// processes exit), or a run is active: what decides whether the
    /// programs for processes in runs must be attached.
    #[must_use]
    pub fn runs_in_kernel(&self) -> bool {
        self.has_active_runs() || !self.map.is_empty()
    }

    #[must_use]
    pub fn processes(&self) -> &ProcessTable {
        &self.processes
    }

    /// Records a run's change in the journal; every so many changes the
    /// journal is folded into a new snapshot.
    fn record(&mut self, run: &Run) {
        let Some(path) = &self.state_path else {
            return;
        };
        if let Err(e) = RunTable::journal(path, run) {
            tracing::error!(path = %path.display(), error = %e, "cannot journal a run change");
        }
        self.journaled += 1;
        if self.journaled >= JOURNAL_COMPACT_EVERY {
            self.compact();
        }
    }

    /// Writes a full snapshot of the runs (and empties the journal), now
    /// (start-up).
    fn save(&mut self) {
        self.journaled = 0;
        if let Some(path) = &self.state_path
            && let Err(e) = self.runs.save(path)
        {
            tracing::error!(path = %path.display(), error = %e, "cannot save run state");
        }
    }

    /// Folds the journal into a new snapshot, written on the snapshot
    /// thread: the table is copied here, serialized and written there.
    fn compact(&mut self) {
        self.journaled = 0;
        let Some(path) = &self.state_path else {
            return;
        };
        let snapshot = match self.runs.begin_snapshot(path) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot start a run state snapshot");
                return;
            }
        };
        let writer = self.snapshots.get_or_insert_with(spawn_snapshot_writer);
        if let Err(std::sync::mpsc::SendError(snapshot)) = writer.send(snapshot) {
            // The thread is gone: write it here rather than not at all.
            if let Err(e) = snapshot.write() {
                tracing::error!(path = %path.display(), error = %e, "cannot save run state");
            }
        }
    }

    /// The run with exactly this id, while it is in memory.
    #[must_use]
    pub fn run_by_id(&self, id: &str) -> Option<&Run> {
        self.runs.get_id(id)
    }

    /// The run `handle`, active or ended but still in memory.
    #[must_use]
    pub fn run(&self, handle: u64) -> Option<&Run> {
        self.runs.get(handle)
    }

    /// The handle of the run with id `id`.
    #[must_use]
    pub fn handle_of(&self, id: &str) -> Option<u64> {
        self.runs
            .find(id)
            .ok()
            .filter(|r| r.id == id)
            .map(|r| r.handle)
    }

    /// When the run with id `id` started.
    #[must_use]
    pub fn run_start(&self, id: &str) -> Option<SystemTime> {
        self.runs.get_id(id).map(|r| r.start)
    }

    /// The active runs.
    pub fn runs(&self) -> impl Iterator<Item = &Run> {
        self.runs.active()
    }

    /// The policy of run `handle`, if it has one.
    #[must_use]
    pub fn run_policy(&self, handle: u64) -> Option<&str> {
        self.runs.get(handle).and_then(|r| r.policy.as_deref())
    }

    /// The `run` object of an event of a process placed at `placement`.
    #[must_use]
    pub fn run_ref(&self, placement: Placement) -> Option<RunRef> {
        let run = self.runs.get(placement.run)?;
        Some(RunRef::of(run, placement.how.method()))
    }

    /// The placement of a process, from the table, else the record.
    fn run_of(&self, h: &EventHeader) -> Placement {
        match self.processes.get(h.tgid, h.start_ns) {
            Some(p) if p.placement.is_placed() => p.placement,
            _ => Placement::of_header(h),
        }
    }

    /// A new process. Returns its placement.
    pub fn on_spawn(&mut self, h: &EventHeader, exe: Option<std::sync::Arc<str>>) -> Placement {
        // The kernel put the child in its creator's run at fork, and that
        // decision stands. User space only fills in what the kernel could
        // not know: the parent was placed in a run (a matcher, at its exec)
        // after the fork copied its old entry. So the parent's run is taken
        // only where the kernel had none, or where it is a sub-run of the
        // kernel's (narrower, never wider). The record's `ppid` is the real
        // parent, which CLONE_PARENT makes the creator's parent: without this
        // rule a child of a narrow sub-run could be moved into the wide
        // parent run.
        let parent = self
            .processes
            .get(h.ppid, h.parent_start_ns)
            .map(|p| p.placement.run);
        let mut placed = Placement::of_header(h);
        let run = placed.run;
        if let Some(prun) = parent
            && prun != 0
            && prun != run
            && self.runs.get(prun).is_some_and(Run::is_active)
            && (run == 0 || self.runs.descends_from(prun, run))
        {
            // Keep what the kernel counted (max_processes) or marked.
            let flags = self
                .map
                .get(h.tgid)
                .filter(|e| {
                    e.run == h.run && e.start_ns / self.ns_per_tick == h.start_ns / self.ns_per_tick
                })
                .map_or(0, |e| How::from_word(e.how).flags());
            placed = Placement::new(prun, How::INHERITED);
            let entry = Placement::new(prun, How::INHERITED.with_flags(flags)).entry(h.start_ns);
            if let Err(e) = self.map.set(h.tgid, entry) {
                tracing::warn!(pid = h.tgid, error = %e, "cannot correct the kernel's run entry");
            }
        }
        if placed.is_placed() && self.runs.get(placed.run).is_none_or(|r| !r.is_active()) {
            // An entry for a run we do not know (state lost): not attributable.
            placed = Placement::NONE;
        }
        // A process forked between the probes' attach and the /proc seed is
        // already in the table (and counted) when its spawn is read: count a
        // process once, moving it if its run changed.
        let counted = self
            .processes
            .get(h.tgid, h.start_ns)
            .map_or(0, |p| p.placement.run);
        let exe = self.processes.share_exe(h.ppid, h.parent_start_ns, exe);
        self.processes.upsert(h.tgid, h.start_ns, exe);
        self.processes.set_run(h.tgid, h.start_ns, placed);
        if counted != placed.run {
            if counted != 0 {
                self.runs.remove_process(counted);
            }
            if placed.is_placed() {
                self.runs.add_process(placed.run);
            }
        }
        placed
    }

    /// An exec. The process keeps its run, unless its new image is an agent
    /// that starts a run of its own (see [`Self::place_agent`]).
    /// Returns its placement and the run it started, if any.
    pub fn on_exec(
        &mut self,
        h: &EventHeader,
        exe: Option<std::sync::Arc<str>>,
        view: Option<&ExecView<'_>>,
        now: SystemTime,
    ) -> (Placement, Option<RunChange>) {
        let known = self.processes.get(h.tgid, h.start_ns).is_some();
        let mut placed = self.run_of(h);
        self.processes.upsert(h.tgid, h.start_ns, exe);
        if !known {
            // First sight of this process (started before us, or its spawn was lost).
            if !self.runs.get(placed.run).is_some_and(Run::is_active) {
                placed = Placement::NONE;
            }
            self.processes.set_run(h.tgid, h.start_ns, placed);
            if placed.is_placed() {
                self.runs.add_process(placed.run);
            }
        }
        let Some(view) = view else {
            return (placed, None);
        };
        let candidate = Candidate {
            pid: h.tgid,
            start_ns: h.start_ns,
            uid: h.uid,
            current: placed,
        };
        let parent = self.parent_process(h.ppid, h.parent_start_ns);
        match self.place_agent(
            candidate,
            parent,
            view,
            crate::event::StartedBy::Matcher,
            now,
        ) {
            Some((started, change)) => (started, Some(change)),
            None => (placed, None),
        }
    }

    /// The parent process `ppid` (started at `start_ns`; 0: any), if the
    /// table has it.
    fn parent_process(&self, ppid: u32, start_ns: u64) -> Option<ParentProcess> {
        self.processes.get(ppid, start_ns).map(|p| ParentProcess {
            run: p.placement.run,
            agent: p.agent,
        })
    }

    /// Decides whether the exec `view` of process `candidate` (child of
    /// `parent`) starts a new run, `started_by` a matcher or the start-up
    /// backfill (the method the process then has in it):
    ///
    /// - not an agent (no matcher): no; the process is no longer an agent process;
    /// - the process already leads its run (launched, or matched before: a
    ///   launcher that re-execs in the same pid): no;
    /// - its parent is an agent process of the same run (a launcher that starts
    ///   the native binary as a child, an agent that relaunches itself): no;
    /// - otherwise yes: a new run, below `current` when there is one (a nested
    ///   invocation from the agent's tool shell is a sub-run).
    ///
    /// Returns the process's new placement and the run start.
    fn place_agent(
        &mut self,
        candidate: Candidate,
        parent: Option<ParentProcess>,
        view: &ExecView<'_>,
        started_by: crate::event::StartedBy,
        now: SystemTime,
    ) -> Option<(Placement, RunChange)> {
        let Candidate {
            pid,
            start_ns,
            uid,
            current,
        } = candidate;
        let how = How::started_by(started_by);
        let Some(matcher) = self.matchers.find(view) else {
            self.processes.set_agent(pid, false);
            return None;
        };
        self.processes.set_agent(pid, true);
        let run = current.run;
        if run != 0 {
            if current.how.leads() {
                return None;
            }
            if parent.is_some_and(|p| p.run == run && p.agent) {
                return None;
            }
        }
        let principal = self
            .runs
            .get(run)
            .map_or_else(|| user_name(uid), |r| r.principal.clone());
        let created = self.runs.create(
            NewRun {
                agent: matcher.name.clone(),
                principal,
                uid,
                parent: (run != 0).then_some(run),
                // Inside a run with a policy, the sub-run keeps that policy (a
                // sub-agent never gains rights its parent lacks); the matcher's
                // own policy applies to the runs it starts at the top.
                policy: self
                    .runs
                    .get(run)
                    .and_then(|r| r.policy.clone())
                    .or_else(|| matcher.policy.clone()),
                // Likewise the scopes: the parent's inside a run.
                scopes: (run == 0).then(|| matcher.scopes.clone()),
                started_by,
                ..NewRun::default()
            },
            now,
        );
        let new_run = match created {
            Ok(r) => r.clone(),
            Err(e) => {
                tracing::warn!(pid, agent = %matcher.name, error = %e, "cannot start a matcher run");
                return None;
            }
        };
        // A process counted against its tree's max_processes stays counted.
        let counted = self
            .map
            .get(pid)
            .filter(|e| e.start_ns / self.ns_per_tick == start_ns / self.ns_per_tick)
            .map_or(0, |e| e.how & HOW_FLAG_COUNTED);
        let entry = Placement::new(new_run.handle, how.with_flags(counted)).entry(start_ns);
        // Durable before the kernel map names it: a daemon killed at any
        // instant from here restores the run with its metadata.
        self.record(&new_run);
        if let Err(e) = self.map.set(pid, entry) {
            tracing::warn!(pid, error = %e, "cannot enter a matched agent in the kernel map");
        }
        if run != 0 {
            self.runs.remove_process(run);
        }
        let placed = Placement::new(new_run.handle, how);
        self.processes.set_run(pid, start_ns, placed);
        self.runs.add_process(new_run.handle);
        tracing::info!(run = %new_run.id, agent = %new_run.agent, pid, depth = new_run.depth, started_by = started_by.as_str(), "run started");
        Some((placed, RunChange::Started { run: new_run, pid }))
    }

    /// Any other event of a live process. Returns its placement.
    #[must_use]
    pub fn on_other(&self, h: &EventHeader) -> Placement {
        let placed = self.run_of(h);
        if self.runs.get(placed.run).is_some() {
            placed
        } else {
            Placement::NONE
        }
    }

    /// A process exited; its run ends when it was the last one (and no sub-run lives).
    pub fn on_exit(&mut self, h: &EventHeader, now: SystemTime) -> (Placement, Vec<RunChange>) {
        let placed = self.run_of(h);
        let run = placed.run;
        let info = self.processes.remove(h.tgid, h.start_ns);
        // The kernel removed the process's run entry as it exited. The daemon
        // may have put one back since: a matcher acting on its exec record,
        // read after the process was already gone. Left there, the dead
        // process would count as a live member and its run never end. The
        // daemon puts a process in a run only with its table, so one the
        // table has outside any run needs no look (a map read is a syscall,
        // and most exits on a host are outside runs).
        let tick = self.ns_per_tick;
        if info.as_ref().is_some_and(|p| p.placement.run != 0)
            && self
                .map
                .get(h.tgid)
                .is_some_and(|e| e.start_ns / tick == h.start_ns / tick)
        {
            self.map.remove(h.tgid);
        }
        self.recent_exits.record(process_table::Exited {
            pid: h.tgid,
            start_ns: h.start_ns,
            ppid: h.ppid,
            parent_start_ns: h.parent_start_ns,
            uid: h.uid,
            gid: h.gid,
            comm: h.comm,
            exe: info.as_ref().and_then(|p| p.exe.clone()),
            placement: placed,
        });
        let mut changes = Vec::new();
        if run != 0 && info.is_some_and(|p| p.placement.run == run) {
            self.runs.remove_process(run);
            self.end_if_done(run, "exited", now, &mut changes);
        }
        (placed, changes)
    }

    /// Ends `handle` if it has no live process and no active sub-run, then
    /// looks at its parent the same way.
    fn end_if_done(
        &mut self,
        mut handle: u64,
        reason: &str,
        now: SystemTime,
        changes: &mut Vec<RunChange>,
    ) {
        loop {
            if self.runs.live_processes(handle) > 0 || self.runs.has_active_children(handle) {
                return;
            }
            // The table says none is left; the kernel must agree. Its map is
            // the truth: a spawn record lost under load leaves the table
            // short, and a run that ended early would unbind its policy
            // while its processes live on.
            if self.adopt_kernel_members(handle) > 0 {
                return;
            }
            let Some(run) = self.runs.end(handle, reason, now) else {
                return;
            };
            let parent = run.parent_id.clone();
            self.record(&run);
            changes.push(RunChange::Ended { run });
            match parent.and_then(|p| self.runs.find(&p).ok().map(|r| r.handle)) {
                Some(p) => handle = p,
                None => return,
            }
        }
    }

    /// Drops processes that no longer exist (their exit was lost: a full ring
    /// buffer, reported as `sensor.lost`), so the table does not grow and
    /// their runs can end. Returns the runs that ended.
    pub fn sweep(&mut self, now: SystemTime) -> Vec<RunChange> {
        let dead: Vec<(u32, u64, u64)> = self
            .processes
            .iter()
            .filter(|(pid, _)| !process_exists(*pid))
            .map(|(pid, p)| (pid, p.start_ns, p.placement.run))
            .collect();
        let mut changes = Vec::new();
        for (pid, start, run) in dead {
            self.processes.remove(pid, start);
            if run != 0 {
                self.map.remove(pid);
                self.runs.remove_process(run);
                self.end_if_done(run, "exited", now, &mut changes);
            }
        }
        changes
    }

    /// Stops every process the kernel has in run `handle`, pass after pass
    /// until a pass finds none it has not stopped (a stopped process forks
    /// no more), then kills them all. Nothing of the run is killed while
    /// another member still runs, so none sees a death and acts on it.
    fn halt_members(
        &mut self,
        handle: u64,
        passes: usize,
        halt: &mut impl FnMut(Halt, u32, u64) -> bool,
    ) {
        let tick = self.ns_per_tick;
        let mut stopped: Vec<(u32, u64)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..passes {
            let fresh: Vec<(u32, u64)> = self
                .kernel_members(handle)
                .into_iter()
                .map(|(pid, e)| (pid, e.start_ns / tick))
                .filter(|member| !seen.contains(member))
                .collect();
            if fresh.is_empty() {
                break;
            }
            for (pid, ticks) in fresh {
                halt(Halt::Stop, pid, ticks);
                seen.insert((pid, ticks));
                stopped.push((pid, ticks));
            }
        }
        for (pid, ticks) in stopped {
            if halt(Halt::Kill, pid, ticks) {
                tracing::info!(pid, run = handle, "killed: its run's TTL passed");
            }
        }
    }

    /// Live processes the kernel has in run `handle` (its map entries whose
    /// process still exists with that start time).
    fn kernel_members(&self, handle: u64) -> Vec<(u32, ProcRun)> {
        let tick = self.ns_per_tick;
        self.map
            .entries()
            .into_iter()
            .filter(|(_, e)| e.run == handle)
            .filter(|(pid, e)| {
                self.processes
                    .get(*pid, 0)
                    .map(|p| p.start_ns / tick)
                    .or_else(|| self.proc_start_ticks(*pid))
                    == Some(e.start_ns / tick)
            })
            .collect()
    }

    /// Takes into the table the processes the kernel has in run `handle`
    /// that the table missed (their spawn records were lost); returns how
    /// many processes the run has per the kernel.
    fn adopt_kernel_members(&mut self, handle: u64) -> usize {
        let members = self.kernel_members(handle);
        if members.is_empty() {
            return 0;
        }
        for (pid, entry) in &members {
            let known = self
                .processes
                .get(*pid, entry.start_ns)
                .is_some_and(|p| p.placement.run == handle);
            if !known {
                tracing::warn!(
                    pid,
                    run = handle,
                    "a process the table missed is still in the run (records were lost)"
                );
                self.processes.upsert(*pid, entry.start_ns, None);
                self.processes.set_run(
                    *pid,
                    entry.start_ns,
                    Placement::new(handle, How::from_word(entry.how).without_flags()),
                );
                self.runs.add_process(handle);
            }
        }
        members.len()
    }

    /// Ends runs past their TTL. A process never leaves enforcement because
    /// its run expired: the processes of an expired sub-run fall back to
    /// the parent run (and its policy, which the sub-run's was within); the
    /// processes of an expired top-level run are killed. The kernel's map
    /// says who they are (forks that raced the first pass are found by the
    /// next), and the run is unbound only once none is left in it.
    ///
    /// `halt` is asked to stop or SIGKILL a process (pid, start in clock
    /// ticks) and says whether it did: the engine turns it into a run
    /// effect. Each pass stops every member it found before it kills any,
    /// so no process of the run sees another die and acts on it (a shell
    /// whose `sleep` was killed would run its next command).
    pub fn expire(
        &mut self,
        now: SystemTime,
        mut halt: impl FnMut(Halt, u32, u64) -> bool,
    ) -> Vec<RunChange> {
        /// Passes over the kernel map: a fork racing one pass copies the old
        /// entry and is found by the next.
        const PASSES: usize = 4;
        let mut changes = Vec::new();
        let mut expired = self.runs.expired(now);
        // Deepest first: a sub-run's processes move up before the parent's turn.
        expired.sort_by_key(|h| std::cmp::Reverse(self.runs.get(*h).map_or(0, |r| r.depth)));
        for handle in expired {
            let parent = self
                .runs
                .get(handle)
                .and_then(|r| r.parent_id.as_deref())
                .and_then(|id| self.handle_of(id))
                .filter(|p| self.runs.get(*p).is_some_and(Run::is_active));
            match parent {
                Some(p) => {
                    for _ in 0..PASSES {
                        let members = self.kernel_members(handle);
                        if members.is_empty() {
                            break;
                        }
                        for (pid, entry) in members {
                            self.move_process(pid, entry, p);
                        }
                    }
                }
                None => self.halt_members(handle, PASSES, &mut halt),
            }
            // What the table still has in a sub-run (the kernel had no
            // entry) goes up too. (A top-level run's processes keep it:
            // they were killed, and their exits are the run's.)
            if let Some(p) = parent {
                let leftovers: Vec<(u32, u64)> = self
                    .processes
                    .iter()
                    .filter(|(_, info)| info.placement.run == handle)
                    .map(|(pid, info)| (pid, info.start_ns))
                    .collect();
                for (pid, start) in leftovers {
                    self.processes
                        .set_run(pid, start, Placement::new(p, How::INHERITED));
                    self.runs.add_process(p);
                }
            }
            if let Some(run) = self.runs.end(handle, "ttl", now) {
                self.record(&run);
                changes.push(RunChange::Ended { run });
            }
        }
        changes
    }

    /// Gives back the process table's room after a mass exit
    /// ([`ProcessTable::shrink`]); whether it did.
    pub fn shrink_tables(&mut self) -> bool {
        self.processes.shrink()
    }

    /// Drops runs that ended more than [`ENDED_KEPT`] ago from memory (the
    /// store and the state files keep them): the table holds what is live,
    /// whatever a client launched.
    pub fn forget_ended(&mut self, now: SystemTime) {
        self.runs.forget_ended(now, ENDED_KEPT);
    }

    /// Moves a live process of an expired sub-run to run `to`: its kernel
    /// entry first (flags kept: it still counts against the same tree's
    /// max_processes), then the table.
    fn move_process(&mut self, pid: u32, entry: ProcRun, to: u64) {
        let moved = ProcRun {
            run: to,
            how: How::INHERITED
                .with_flags(How::from_word(entry.how).flags())
                .word(),
            ..entry
        };
        if let Err(e) = self.map.set(pid, moved) {
            tracing::error!(pid, error = %e, "cannot move a process of an expired run to its parent run");
            return;
        }
        let from = entry.run;
        if self.processes.get(pid, entry.start_ns).is_none() {
            self.processes.upsert(pid, entry.start_ns, None);
        } else if self
            .processes
            .get(pid, entry.start_ns)
            .is_some_and(|p| p.placement.run == from)
        {
            self.runs.remove_process(from);
        }
        self.processes
            .set_run(pid, entry.start_ns, Placement::new(to, How::INHERITED));
        self.runs.add_process(to);
    }

    /// Start time (ticks) of a live process, from /proc.
    fn proc_start_ticks(&self, pid: u32) -> Option<u64> {
        crate::identity::proc_start_in(&self.proc_root, pid).map(|(t, _)| t)
    }

    /// Who process `pid` is, for a report that comes after what it did (a
    /// file change): the table's entry if it is still that process, else the
    /// live process per /proc and the kernel map, else its exit if it is
    /// among the last ones. The run is 0 when it was in none (or nothing is
    /// known of it).
    #[must_use]
    pub fn actor(&self, pid: u32) -> Actor {
        let live = self.proc_start_ticks(pid);
        let known_run = |p: Placement| Placement {
            run: if self.runs.get(p.run).is_some() {
                p.run
            } else {
                0
            },
            ..p
        };
        if let Some(p) = self.processes.get(pid, 0)
            && live.is_none_or(|t| t == p.start_ns / self.ns_per_tick)
        {
            return Actor {
                pid,
                start_ns: p.start_ns,
                placement: known_run(p.placement),
                exe: p.exe.clone(),
                alive: live.is_some(),
                exited: None,
            };
        }
        if let Some(ticks) = live {
            let placement = self.kernel_run(pid, ticks).unwrap_or(Placement::NONE);
            return Actor {
                pid,
                start_ns: ticks.saturating_mul(self.ns_per_tick),
                placement: known_run(placement),
                exe: None,
                alive: true,
                exited: None,
            };
        }
        match self.recent_exits.find(pid) {
            Some(e) => Actor {
                pid,
                start_ns: e.start_ns,
                placement: known_run(e.placement),
                exe: e.exe.clone(),
                alive: false,
                exited: Some(e.clone()),
            },
            None => Actor {
                pid,
                start_ns: 0,
                placement: Placement::NONE,
                exe: None,
                alive: false,
                exited: None,
            },
        }
    }

    /// The run of a live process per the kernel map, checked against its start time.
    fn kernel_run(&self, pid: u32, start_ticks: u64) -> Option<Placement> {
        let entry = self.map.get(pid)?;
        (entry.start_ns / self.ns_per_tick == start_ticks).then_some(Placement::of_entry(&entry))
    }

    /// `sensor launch`: the peer process registers itself as the first
    /// process of a new run (a sub-run of its current run, if any).
    ///
    /// `bind` is called with the new run and its parent's handle before the
    /// peer enters the run in the kernel: it binds the run to its policy.
    /// When it fails (the kernel's run→policy map is full) the launch is
    /// refused, so the peer never runs in a run its policy does not enforce.
    pub fn launch(
        &mut self,
        peer: &Peer,
        req: LaunchRequest,
        now: SystemTime,
        bind: impl FnOnce(&Run, Option<u64>) -> Result<(), crate::policy::kernel::BindRefusal>,
    ) -> Result<(Run, RunChange), AttributionError> {
        let start_ticks = self
            .proc_start_ticks(peer.pid)
            .ok_or(AttributionError::NoProcess(peer.pid))?;
        if !peer.alive() {
            return Err(AttributionError::PeerGone(peer.pid));
        }
        let current = self
            .kernel_run(peer.pid, start_ticks)
            .map(|p| p.run)
            .filter(|h| self.runs.get(*h).is_some_and(Run::is_active));
        let verified = user_name(peer.uid);
        let parent = current.and_then(|h| self.runs.get(h));
        let parent_principal = parent.map(|r| r.principal.clone());
        // A sub-run keeps its parent's policy unless it names one.
        let policy = req
            .policy
            .clone()
            .or_else(|| parent.and_then(|r| r.policy.clone()));
        let (principal, principal_claimed) = match req.principal {
            // Root may act for someone else (an orchestrator service).
            Some(p) if peer.uid == 0 => (p, None),
            Some(p) if p == verified => (p, None),
            Some(p) => (verified.clone(), Some(p)),
            None => (parent_principal.unwrap_or(verified), None),
        };
        let run = self
            .runs
            .create(
                NewRun {
                    id: req.run_id,
                    agent: req.agent,
                    principal,
                    principal_claimed,
                    uid: peer.uid,
                    parent: current,
                    policy,
                    labels: req.labels,
                    ttl: req.ttl_secs.map(Duration::from_secs),
                    started_by: crate::event::StartedBy::Launch,
                    scopes: req.scopes,
                },
                now,
            )?
            .clone();
        // Durable before any kernel map names it (the policy binding, then
        // the process entry) and before the launch is acknowledged: a
        // daemon killed at any instant from here restores the run.
        self.record(&run);
        if let Err(e) = bind(&run, current) {
            if let Some(ended) = self.runs.end(run.handle, "refused", now) {
                self.record(&ended);
            }
            self.runs.forget(run.handle);
            return Err(AttributionError::Bind(e));
        }
        let entry = Placement::new(run.handle, How::LAUNCH)
            .entry(start_ticks.saturating_mul(self.ns_per_tick));
        // The kernel map has the precise start time of a process it saw fork;
        // keep it when present, so the kernel's own start-time check matches.
        // It also keeps counting against its tree's max_processes if it did.
        let entry = match self.map.get(peer.pid) {
            Some(old) if old.start_ns / self.ns_per_tick == start_ticks => ProcRun {
                start_ns: old.start_ns,
                how: How::LAUNCH.with_flags(old.how & HOW_FLAG_COUNTED).word(),
                ..entry
            },
            _ => ProcRun {
                start_ns: self
                    .precise_start(peer.pid, start_ticks)
                    .unwrap_or(entry.start_ns),
                ..entry
            },
        };
        if let Err(e) = self.map.set(peer.pid, entry) {
            if let Some(ended) = self.runs.end(run.handle, "failed", now) {
                self.record(&ended);
            }
            return Err(AttributionError::Kernel(e));
        }
        if let Some(old) = current {
            self.runs.remove_process(old);
        }
        self.processes.upsert(peer.pid, entry.start_ns, None);
        self.processes.set_run(
            peer.pid,
            entry.start_ns,
            Placement::new(run.handle, How::LAUNCH),
        );
        self.runs.add_process(run.handle);
        Ok((run.clone(), RunChange::Started { run, pid: peer.pid }))
    }

    /// The precise start time (ns) of a process we saw in a kernel record,
    /// if the table's process `pid` is the one that started at
    /// `start_ticks` (not an earlier holder of the pid whose exit was
    /// missed: its start time would make every later identity check fail).
    fn precise_start(&self, pid: u32, start_ticks: u64) -> Option<u64> {
        self.processes
            .get(pid, start_ticks.saturating_mul(self.ns_per_tick))
            .map(|p| p.start_ns)
            .filter(|ns| ns / self.ns_per_tick == start_ticks)
    }

    /// What is known now of live process `pid`: its run (per the kernel
    /// map, as [`Self::attest`]), or none.
    pub fn process(&self, pid: u32) -> Result<ProcessAnswer, AttributionError> {
        let ticks = self
            .proc_start_ticks(pid)
            .ok_or(AttributionError::NoProcess(pid))?;
        let uid = crate::identity::proc_uid_in(&self.proc_root, pid)
            .ok_or(AttributionError::NoProcess(pid))?;
        let exe = self
            .processes
            .get(pid, 0)
            .filter(|p| p.start_ns / self.ns_per_tick == ticks)
            .and_then(|p| p.exe.as_deref().map(str::to_owned));
        let run = self.kernel_run(pid, ticks).and_then(|placed| {
            self.runs
                .get(placed.run)
                .filter(|r| r.is_active())
                .map(|r| (r.clone(), placed.how))
        });
        Ok(ProcessAnswer {
            pid,
            start_ticks: ticks,
            process_key: self.keys.key_from_ticks(pid, ticks),
            uid,
            exe,
            attribution: run
                .as_ref()
                .map(|(_, how)| how.method().as_str().to_owned()),
            run: run.map(|(r, _)| r),
        })
    }

    /// Which run is process `pid` (optionally: started at `start_ticks`)?
    pub fn attest(
        &self,
        pid: u32,
        start_ticks: Option<u64>,
    ) -> Result<RunAnswer, AttributionError> {
        let actual = self
            .proc_start_ticks(pid)
            .ok_or(AttributionError::NoProcess(pid))?;
        if let Some(given) = start_ticks
            && given != actual
        {
            return Err(AttributionError::StaleStart { pid, given, actual });
        }
        let placed = self
            .kernel_run(pid, actual)
            .ok_or(AttributionError::NotInRun(pid))?;
        let run = self
            .runs
            .get(placed.run)
            .filter(|r| r.is_active())
            .ok_or(AttributionError::NotInRun(pid))?;
        Ok(RunAnswer {
            pid,
            start_ticks: actual,
            process_key: self.keys.key_from_ticks(pid, actual),
            attribution: placed.how.method().as_str().to_owned(),
            run: run.clone(),
        })
    }

    /// The run a process's `SENSOR_RUN_ID` marker names, if the marker may
    /// be believed: the exact id (never a prefix) of an active run of the
    /// process's own user. Anyone can set an environment variable; without
    /// these checks an agent could put its processes in another user's run
    /// (its policy, its tokens, its record) across a daemon restart.
    fn env_placement(&self, pid: u32) -> Option<u64> {
        let id = env_run_id(&self.proc_root, pid)?;
        let run = self
            .runs
            .find(&id)
            .ok()
            .filter(|r| r.id == id && r.is_active())?;
        let uid = crate::identity::proc_uid_in(&self.proc_root, pid)?;
        if uid != run.uid {
            tracing::warn!(
                pid,
                uid,
                run = %run.id,
                run_uid = run.uid,
                "ignoring a SENSOR_RUN_ID marker naming another user's run"
            );
            return None;
        }
        Some(run.handle)
    }

    /// Start-up: reconciles the pinned kernel map with /proc and the saved
    /// runs, then places processes that started while no daemon watched:
    /// by ancestry, by their `SENSOR_RUN_ID` marker (low trust), and by the
    /// `[[agent]]` matchers. Returns the runs started or ended meanwhile.
    pub fn restore(&mut self, now: SystemTime) -> Vec<RunChange> {
        let seeded = self.processes.seed_from_proc(&self.proc_root);
        let tick = self.ns_per_tick;
        // 1. Kernel entries that still describe a live process of a known run.
        for (pid, entry) in self.map.entries() {
            let live = self
                .processes
                .get(pid, 0)
                .is_some_and(|p| p.start_ns / tick == entry.start_ns / tick);
            if live && self.runs.get(entry.run).is_some_and(Run::is_active) {
                self.processes.set_run(pid, 0, Placement::of_entry(&entry));
            } else {
                self.map.remove(pid);
            }
        }
        // 2. Every process, parents before children (start times alone do not
        //    order them: a fork often starts in its parent's clock tick).
        let mut changes = Vec::new();
        for (pid, ppid) in parents_first(&seeded) {
            let Some(start) = self.processes.get(pid, 0).map(|p| p.start_ns) else {
                continue;
            };
            let parent = self.parent_process(ppid, 0);
            let mut current = self
                .processes
                .get(pid, 0)
                .map_or(Placement::NONE, |p| p.placement);
            if !current.is_placed() {
                let placed = match parent {
                    Some(p) if p.run != 0 => Some(Placement::new(p.run, How::BACKFILL)),
                    _ => self
                        .env_placement(pid)
                        .map(|run| Placement::new(run, How::ENV)),
                };
                if let Some(placed) = placed
                    && self.map.set(pid, placed.entry(start)).is_ok()
                {
                    self.processes.set_run(pid, start, placed);
                    current = placed;
                }
            }
            if !self.matchers.is_empty()
                && let Some((exe, argv, cwd)) = proc_exec(&self.proc_root, pid)
            {
                let view = ExecView {
                    exe: &exe,
                    argv: &argv,
                    cwd: cwd.as_deref(),
                };
                // The uid is read only for a process that is an agent.
                let uid = if self.matchers.find(&view).is_some() {
                    crate::identity::proc_uid_in(&self.proc_root, pid)
                } else {
                    Some(0)
                };
                if let Some(uid) = uid
                    && let Some((_, change)) = self.place_agent(
                        Candidate {
                            pid,
                            start_ns: start,
                            uid,
                            current,
                        },
                        parent,
                        &view,
                        crate::event::StartedBy::Backfill,
                        now,
                    )
                {
                    changes.push(change);
                }
            }
        }
        // 3. Live counts from scratch. Runs whose processes all exited
        //    meanwhile are ended by `end_finished`, once what the kernel
        //    recorded while no daemon read has been read: those records are
        //    the runs' last events.
        self.runs.reset_live();
        let members: Vec<u64> = self
            .processes
            .iter()
            .map(|(_, p)| p.placement.run)
            .filter(|r| *r != 0)
            .collect();
        for run in members {
            self.runs.add_process(run);
        }
        self.runs.forget_ended(now, Duration::from_secs(24 * 3600));
        self.save();
        changes
    }

    /// Ends the runs with no live process left (after a restart: those
    /// whose processes all exited while the sensor was not reading).
    pub fn end_finished(&mut self, now: SystemTime) -> Vec<RunChange> {
        let mut changes = Vec::new();
        let active: Vec<u64> = self.runs.active().map(|r| r.handle).collect();
        for handle in active {
            self.end_if_done(
                handle,
                "exited while the sensor was stopped",
                now,
                &mut changes,
            );
        }
        changes
    }
}

/// Processes (pid, ppid) ordered so that every parent comes before its
/// children (start times alone do not order them: a fork often starts in its
/// parent's clock tick).
fn parents_first(processes: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let ppid_of: HashMap<u32, u32> = processes.iter().copied().collect();
    let mut children: HashMap<u32, Vec<u32>> = HashMap::new();
    for &(pid, ppid) in processes {
        children.entry(ppid).or_default().push(pid);
    }
    let mut roots: Vec<u32> = processes
        .iter()
        .filter(|(_, ppid)| !ppid_of.contains_key(ppid))
        .map(|(pid, _)| *pid)
        .collect();
    roots.sort_unstable();
    let mut order = Vec::with_capacity(processes.len());
    let mut stack: Vec<u32> = roots.into_iter().rev().collect();
    while let Some(pid) = stack.pop() {
        if let Some(ppid) = ppid_of.get(&pid) {
            order.push((pid, *ppid));
            if let Some(kids) = children.get(&pid) {
                let mut kids = kids.clone();
                kids.sort_unstable();
                stack.extend(kids.into_iter().rev());
            }
        }
    }
    order
}

/// exe, argv and cwd of a live process, for the matchers.
fn proc_exec(proc_root: &Path, pid: u32) -> Option<(String, Vec<String>, Option<String>)> {
    let dir = proc_root.join(pid.to_string());
    let process = procfs::process::Process::new_with_root(dir.clone()).ok()?;
    let exe = process.exe().ok()?.to_string_lossy().into_owned();
    // The raw area, split as the kernel's exec records are: procfs's
    // `cmdline()` drops empty arguments and refuses bytes that are not UTF-8.
    let cmdline = std::fs::read(dir.join("cmdline")).ok()?;
    let argv = crate::event::text::split_argv(&cmdline)
        .into_iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let cwd = process.cwd().ok().map(|p| p.to_string_lossy().into_owned());
    Some((exe, argv, cwd))
}

/// Whether a process with this pid exists (signal 0).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = i32::try_from(pid) else {
        return false;
    };
    !matches!(
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None),
        Err(nix::errno::Errno::ESRCH)
    )
}

/// `SENSOR_RUN_ID` from a process's environment, if set: the first one, as
/// `getenv(3)` sees it (procfs's `environ()` is a map, which keeps the last).
fn env_run_id(proc_root: &Path, pid: u32) -> Option<String> {
    let environ = std::fs::read(proc_root.join(pid.to_string()).join("environ")).ok()?;
    environ
        .split(|&b| b == 0)
        .find_map(|kv| kv.strip_prefix(b"SENSOR_RUN_ID="))
        .and_then(|v| std::str::from_utf8(v).ok())
        .filter(|v| runs::valid_id(v))
        .map(str::to_owned)
}

/// The user name of `uid`, or the number.
#[must_use]
pub fn user_name(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => u.name,
        _ => uid.to_string(),
    }
}

/// The run object of events, made from a run of the table.
impl RunRef {
    /// The run object for an event whose process was attributed by `how`.
    #[must_use]
    pub fn of(run: &Run, how: crate::event::Attributed) -> Self {
        Self {
            id: run.id.clone(),
            agent: run.agent.clone(),
            principal: run.principal.clone(),
            principal_claimed: run.principal_claimed.clone(),
            parent_id: run.parent_id.clone(),
            root_id: run.root_id.clone(),
            depth: run.depth,
            attribution: how,
            tool_call: None,
            details: None,
        }
    }

    /// With the run's details (run.start, run.end).
    #[must_use]
    pub fn detailed(run: &Run, how: crate::event::Attributed) -> Self {
        let mut r = Self::of(run, how);
        r.details = Some(crate::event::RunDetails {
            uid: run.uid,
            policy: run.policy.clone(),
            labels: run.labels.clone(),
            started_by: run.started_by,
            start: crate::event::Timestamp(run.start),
            expires: run.expires.map(crate::event::Timestamp),
            end: run.end.map(crate::event::Timestamp),
            end_reason: run.end_reason.clone(),
        });
        r
    }
}

#[cfg(test)]
mod tests {
    use HashMap;

    use super::*;
    use crate::event::Attributed;
    use crate::identity::ProcessKeys;

    const TICK: u64 = 10_000_000;

    fn attribution(agents: &[AgentConfig]) -> Attribution {
        Attribution::new(
            ProcessKeys::new("b", 100),
            Box::new(HashMap::<u32, ProcRun>::new()),
            RunTable::new(),
            None,
        )
        .with_matchers(Matchers::new(agents).unwrap())
    }

    fn header(pid: u32, ppid: u32, run: u64, how: How) -> EventHeader {
        EventHeader {
            tgid: pid,
            tid: pid,
            ppid,
            start_ns: u64::from(pid) * TICK * 7,
            parent_start_ns: u64::from(ppid) * TICK * 7,
            run,
            run_how: how.word(),
            ..EventHeader::default()
        }
    }

    fn agent(name: &str, exe: &str) -> AgentConfig {
        AgentConfig {
            name: name.into(),
            exe: vec![exe.into()],
            ..AgentConfig::default()
        }
    }

    fn exec<'a>(exe: &'a str, argv: &'a [String]) -> ExecView<'a> {
        ExecView {
            exe,
            argv,
            cwd: None,
        }
    }

    #[test]
    fn launch_inherit_and_end_after_the_last_process() {
        let mut a = attribution(&[]);
        let now = SystemTime::now();
        let me = std::process::id();
        let (run, change) = a
            .launch(
                &Peer::local(me, 0, 0),
                LaunchRequest {
                    agent: "bot".into(),
                    ..LaunchRequest::default()
                },
                now,
                |_, _| Ok(()),
            )
            .unwrap();
        assert!(matches!(change, RunChange::Started { pid, .. } if pid == me));
        assert_eq!(a.attest(me, None).unwrap().run.id, run.id);
        // A child the kernel put in the run at fork, then a grandchild.
        let me_start = a.processes.get(me, 0).unwrap().start_ns;
        let mut child = header(900_001, me, run.handle, How::INHERITED);
        child.parent_start_ns = me_start;
        assert_eq!(
            a.on_spawn(&child, None),
            Placement::new(run.handle, How::INHERITED)
        );
        let grandchild = header(900_002, 900_001, run.handle, How::INHERITED);
        a.on_spawn(&grandchild, None);
        // The launcher and the child exit: the grandchild keeps the run open.
        // (The kernel drops a process's map entry at its exit.)
        let mut me_exit = header(me, 1, 0, How::NONE);
        me_exit.start_ns = me_start;
        a.map.remove(me);
        assert!(a.on_exit(&me_exit, now).1.is_empty());
        assert!(a.on_exit(&child, now).1.is_empty());
        let (_, changes) = a.on_exit(&grandchild, now);
        assert!(
            matches!(&changes[..], [RunChange::Ended { run: r }] if r.id == run.id && r.end_reason.as_deref() == Some("exited"))
        );
    }

    #[test]
    fn a_fork_before_a_run_change_is_corrected_from_the_table() {
        let mut a = attribution(&[agent("fake", "**/fake-agent")]);
        let now = SystemTime::now();
        let argv = vec!["fake-agent".to_owned()];
        // pid 10 execs the agent: a new run (the kernel did not know).
        let h = header(10, 1, 0, How::NONE);
        a.on_spawn(&h, None);
        let (Placement { run, how }, started) =
            a.on_exec(&h, None, Some(&exec("/opt/fake-agent", &argv)), now);
        assert_eq!(how, How::MATCHER);
        assert!(started.is_some());
        // Its child was forked after the exec but the kernel copied the old
        // (empty) entry: the table's run wins, and the kernel map is fixed.
        let child = header(11, 10, 0, How::NONE);
        assert_eq!(
            a.on_spawn(&child, None),
            Placement::new(run, How::INHERITED)
        );
        assert_eq!(a.map.get(11).map(|e| e.run), Some(run));
    }

    #[test]
    fn same_run_for_re_exec_and_agent_children_sub_run_for_nested_invocations() {
        let mut a = attribution(&[agent("fake", "**/fake-agent")]);
        let now = SystemTime::now();
        let argv = vec!["fake-agent".to_owned()];
        let view = exec("/opt/fake-agent", &argv);
        let root = header(20, 1, 0, How::NONE);
        a.on_spawn(&root, None);
        let (Placement { run, .. }, started) = a.on_exec(&root, None, Some(&view), now);
        assert!(started.is_some());
        // Re-exec in the same pid: same run.
        assert!(a.on_exec(&root, None, Some(&view), now).1.is_none());
        // The agent starts itself as a child (launcher → native): same run.
        let native = header(21, 20, run, How::INHERITED);
        a.on_spawn(&native, None);
        let (Placement { run: r, .. }, started) = a.on_exec(&native, None, Some(&view), now);
        assert_eq!(r, run);
        assert!(started.is_none());
        // The agent's tool shell (not an agent) runs the agent again: a sub-run.
        let shell = header(22, 20, run, How::INHERITED);
        a.on_spawn(&shell, None);
        let sh_argv = vec!["sh".to_owned()];
        assert!(
            a.on_exec(&shell, None, Some(&exec("/usr/bin/dash", &sh_argv)), now)
                .1
                .is_none()
        );
        let nested = header(23, 22, run, How::INHERITED);
        a.on_spawn(&nested, None);
        let (Placement { run: sub, how }, started) = a.on_exec(&nested, None, Some(&view), now);
        assert_ne!(sub, run);
        assert_eq!(how, How::MATCHER);
        let Some(RunChange::Started { run: sub_run, .. }) = started else {
            panic!("a sub-run starts")
        };
        assert_eq!(sub_run.depth, 1);
        assert_eq!(
            sub_run.parent_id.as_deref(),
            Some(a.runs.get(run).unwrap().id.as_str())
        );
    }

    /// An `[[agent]]`'s `scopes` are its top-level runs' (what their tokens
    /// may carry); a matcher run inside a run holds its parent's.
    #[test]
    fn a_matcher_run_holds_its_agents_scopes_at_the_top_and_its_parents_inside() {
        let mut agent = agent("fake", "**/fake-agent");
        agent.scopes = vec!["repo:read".into()];
        let mut a = attribution(&[agent]);
        let now = SystemTime::now();
        let argv = vec!["fake-agent".to_owned()];
        let view = exec("/opt/fake-agent", &argv);
        let root = header(30, 1, 0, How::NONE);
        a.on_spawn(&root, None);
        let (Placement { run, .. }, _) = a.on_exec(&root, None, Some(&view), now);
        assert_eq!(a.runs.get(run).unwrap().scopes, ["repo:read"]);
        // Inside a launched run holding other scopes: the parent's.
        let launched = a
            .runs
            .create(
                NewRun {
                    agent: "bot".into(),
                    principal: "alice".into(),
                    scopes: Some(vec!["db:read".into()]),
                    ..NewRun::default()
                },
                now,
            )
            .unwrap()
            .handle;
        // The launched shell's child runs the agent: a sub-run.
        let inner = header(32, 31, launched, How::INHERITED);
        a.on_spawn(&inner, None);
        let (Placement { run: sub, how }, _) = a.on_exec(&inner, None, Some(&view), now);
        assert_eq!(how, How::MATCHER);
        assert_ne!(sub, launched);
        assert_eq!(a.runs.get(sub).unwrap().scopes, ["db:read"]);
    }

    #[test]
    fn an_exit_takes_out_the_run_entry_a_matcher_put_back() {
        let mut a = attribution(&[agent("fake", "**/fake-agent")]);
        let now = SystemTime::now();
        let argv = vec!["fake-agent".to_owned()];
        let h = header(40, 1, 0, How::NONE);
        a.on_spawn(&h, None);
        // The exec record read late: the kernel already removed the exited
        // process's entry, and the matcher puts one in again.
        let (Placement { run, .. }, _) =
            a.on_exec(&h, None, Some(&exec("/opt/fake-agent", &argv)), now);
        assert_eq!(a.map.get(40).map(|e| e.run), Some(run));
        let (_, changes) = a.on_exit(&h, now);
        assert!(
            a.map.get(40).is_none(),
            "no entry is left for a dead process"
        );
        assert!(matches!(&changes[..], [RunChange::Ended { .. }]));
        // Another process's entry under a reused pid stays.
        let entry = Placement::new(run, How::INHERITED).entry(h.start_ns + 5 * TICK);
        a.map.set(40, entry).unwrap();
        a.on_exit(&h, now);
        assert!(a.map.get(40).is_some(), "a newer process's entry is kept");
    }

    #[test]
    fn sweep_drops_processes_whose_exit_was_lost() {
        let mut a = attribution(&[agent("fake", "**/fake-agent")]);
        let now = SystemTime::now();
        let argv = vec!["fake-agent".to_owned()];
        // pid 4_000_000 is above any pid_max: it cannot exist.
        let h = header(4_000_000, 1, 0, How::NONE);
        a.on_spawn(&h, None);
        a.on_exec(&h, None, Some(&exec("/opt/fake-agent", &argv)), now);
        assert_eq!(a.active_runs(), 1);
        let changes = a.sweep(now);
        assert!(matches!(&changes[..], [RunChange::Ended { .. }]));
        assert_eq!(a.tracked_processes(), 0);
        // This test process exists and is kept.
        a.processes.upsert(std::process::id(), 1, None);
        a.sweep(now);
        assert_eq!(a.tracked_processes(), 1);
    }

    #[test]
    fn a_spawn_read_after_the_seed_is_not_counted_twice() {
        let mut a = attribution(&[agent("fake", "**/fake-agent")]);
        let now = SystemTime::now();
        let argv = vec!["fake-agent".to_owned()];
        let root = header(60, 1, 0, How::NONE);
        a.on_spawn(&root, None);
        let (Placement { run, .. }, _) =
            a.on_exec(&root, None, Some(&exec("/opt/fake-agent", &argv)), now);
        // The child is already known (as if seeded from /proc and counted)…
        let child = header(61, 60, run, How::INHERITED);
        a.on_spawn(&child, None);
        // …then its spawn record is read from the ring.
        a.on_spawn(&child, None);
        assert_eq!(a.runs.live_processes(run), 2, "root and child, each once");
        assert!(a.on_exit(&child, now).1.is_empty());
        let (_, changes) = a.on_exit(&root, now);
        assert!(
            matches!(&changes[..], [RunChange::Ended { .. }]),
            "the run ends with its last process"
        );
    }

    #[test]
    fn events_of_unknown_runs_are_not_attributed() {
        let mut a = attribution(&[]);
        // The kernel entry names a run this daemon does not know (state lost).
        let h = header(30, 1, 77, How::INHERITED);
        assert_eq!(a.on_spawn(&h, None), Placement::NONE);
        assert_eq!(a.on_other(&h), Placement::NONE);
    }

    /// A launched run with this test process as its first process.
    fn launched(a: &mut Attribution, agent: &str, ttl: Option<u64>) -> Run {
        let (run, _) = a
            .launch(
                &Peer::local(std::process::id(), 0, 0),
                LaunchRequest {
                    agent: agent.into(),
                    ttl_secs: ttl,
                    ..LaunchRequest::default()
                },
                SystemTime::now(),
                |_, _| Ok(()),
            )
            .unwrap();
        run
    }

    /// The file watch reports a change after it was made: the process that
    /// made it is named from the table, or from its exit once it is gone.
    #[test]
    fn an_actor_is_found_live_or_after_its_exit() {
        let mut a = attribution(&[]);
        let me = std::process::id();
        let run = launched(&mut a, "actor", None);
        let live = a.actor(me);
        assert!(live.alive && live.exited.is_none());
        assert_eq!(live.placement.run, run.handle);
        // A child that no longer runs (no such pid in /proc), its exit not
        // yet read: the table still names it and its run.
        let child = 4_190_001;
        let h = header(child, me, run.handle, How::INHERITED);
        a.on_spawn(&h, Some(std::sync::Arc::from("/usr/bin/rm")));
        let before = a.actor(child);
        assert!(!before.alive);
        assert_eq!(
            (before.placement.run, before.exe.as_deref()),
            (run.handle, Some("/usr/bin/rm"))
        );
        // Its exit read: gone from the table, still known.
        a.on_exit(&h, SystemTime::now());
        assert!(a.processes.get(child, 0).is_none());
        let after = a.actor(child);
        assert_eq!(after.placement.run, run.handle);
        assert_eq!(after.start_ns, h.start_ns);
        assert_eq!(after.exited.as_ref().map(|e| e.ppid), Some(me));
        assert_eq!(after.exe.as_deref(), Some("/usr/bin/rm"));
        // Nothing known: the pid alone.
        let unknown = a.actor(4_190_002);
        assert_eq!(
            (unknown.placement.run, unknown.start_ns, unknown.alive),
            (0, 0, false)
        );
    }

    #[test]
    fn an_expired_sub_run_hands_its_processes_to_the_parent_run() {
        let mut a = attribution(&[]);
        let me = std::process::id();
        let parent = launched(&mut a, "parent", None);
        // This process launches a sub-run with a TTL (the kernel map moves it).
        let sub = launched(&mut a, "sub", Some(60));
        assert_eq!(a.map.get(me).unwrap().run, sub.handle);
        let later = SystemTime::now() + Duration::from_secs(61);
        let changes = a.expire(later, |_, pid, _| {
            panic!("{pid} must not be stopped or killed")
        });
        assert!(
            matches!(&changes[..], [RunChange::Ended { run: r }] if r.id == sub.id && r.end_reason.as_deref() == Some("ttl"))
        );
        // Never "no run": the process is in the parent run, in the kernel too.
        let entry = a.map.get(me).unwrap();
        assert_eq!(entry.run, parent.handle);
        assert_eq!(How::from_word(entry.how).method(), Attributed::Inherited);
        assert_eq!(a.attest(me, None).unwrap().run.id, parent.id);
        assert_eq!(a.runs.live_processes(parent.handle), 1);
    }

    #[test]
    fn a_run_ends_only_when_the_kernel_has_no_process_left_in_it() {
        let mut a = attribution(&[]);
        let me = std::process::id();
        let run = launched(&mut a, "lossy", None);
        // The table is told the only process it knows exited (its exit record
        // arrived), but the kernel still has a live process in the run (this
        // one, whose spawn record was lost): the run goes on.
        let me_start = a.processes.get(me, 0).unwrap().start_ns;
        let mut ghost = header(me, 1, run.handle, How::LAUNCH);
        ghost.start_ns = me_start;
        a.processes.remove(me, me_start);
        a.runs.remove_process(run.handle);
        let mut changes = Vec::new();
        a.end_if_done(run.handle, "exited", SystemTime::now(), &mut changes);
        assert!(changes.is_empty(), "the run must not end: {changes:?}");
        assert_eq!(
            a.runs.live_processes(run.handle),
            1,
            "the process was adopted"
        );
        // Once the kernel agrees, it ends.
        a.map.remove(me);
        let (_, changes) = a.on_exit(&ghost, SystemTime::now());
        assert!(matches!(&changes[..], [RunChange::Ended { .. }]));
    }

    #[test]
    fn a_clone_parent_child_is_not_moved_into_a_wider_run() {
        let mut a = attribution(&[]);
        let me = std::process::id();
        let wide = launched(&mut a, "wide", None);
        // The real parent (pid 70, in the wide run per the table)…
        let parent = header(70, 1, wide.handle, How::INHERITED);
        a.on_spawn(&parent, None);
        // …and a narrow sub-run of this process.
        let narrow = launched(&mut a, "narrow", None);
        assert_ne!(narrow.handle, wide.handle);
        // A child created by this process with CLONE_PARENT: the kernel put
        // it in the narrow run (its creator's), its ppid is the wide one's.
        let mut child = header(71, 70, narrow.handle, How::INHERITED);
        child.parent_start_ns = parent.start_ns;
        a.map
            .set(
                71,
                ProcRun {
                    run: narrow.handle,
                    start_ns: child.start_ns,
                    how: How::INHERITED.with_flags(HOW_FLAG_COUNTED).word(),
                    _pad: 0,
                },
            )
            .unwrap();
        assert_eq!(a.on_spawn(&child, None).run, narrow.handle);
        assert_eq!(
            a.map.get(71).unwrap().run,
            narrow.handle,
            "the kernel's choice stands"
        );
        let _ = me;
    }
}

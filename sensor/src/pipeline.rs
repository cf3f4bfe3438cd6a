//! The data path: ring buffer → decode → build event → JSON → outputs.
//!
//! One task reads the ring buffer, so sequence numbers follow ring order. It
//! serializes events into batches (one allocation per batch, shared by every
//! output) and checks the kernel's loss counters every second: any loss
//! becomes a `sensor.lost` event and a status figure.

use std::{sync::Arc, time::Duration};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf};
use sensor_common::{
    handover::{MARK_DETACHED, MARK_HANDED_OVER, MARK_RUNNING, MARK_STOPPED, ReaderMark},
    maps::READER_LEASE_SECS,
    stats::{RunStats, SLOT_KINDS, Stats},
};
use tokio::io::unix::AsyncFd;

use crate::{
    attribution::RunChange,
    control::{Command, protocol::Response},
    engine::Engine,
    engine::sequence::SeqFile,
    event::{DELIVERY_RECOVERED, Degraded, Event, Gap, Kind, Lost, Window},
    identity::Clock,
    loader::Probes,
    record,
    sinks::{OutputHandle, Outputs},
    status::DaemonState,
    status::Defense,
    store::writer::StoreWriter,
    tamper::files::{self, FileChange, What},
};

/// Records handled per wake-up before giving other tasks a turn.
const DRAIN_BUDGET: usize = 2048;
/// A batch is handed to the outputs and the store once it holds this many
/// events: with their JSON lines about 300 KiB (an `Event` is 1.2 KiB
/// inline, its rare parts boxed, before its strings), near the 256 KiB of
/// JSON a batch held when it was bytes, so a stalled output's queue
/// (`QUEUE_BATCHES` batches) costs about as much memory as it did.
const BATCH_EVENTS: usize = 128;
/// How often kernel counters are read and the clock offset re-measured.
const TICK: Duration = Duration::from_secs(1);
/// Every this many ticks, processes whose exit was lost are swept.
const SWEEP_TICKS: u64 = 60;
/// Budgets drained before a control request is answered: what the kernel
/// reported up to the request (a launch's own fork, an attested process),
/// but never an endless flood.
const COMMAND_DRAIN_ROUNDS: usize = 1;
/// Budgets drained at most before a canary round is judged (its records may
/// still be in the ring when the reader is behind).
const CANARY_DRAIN_ROUNDS: usize = 32;
/// Every this many ticks, policy files and host names are resolved again.
const REFRESH_TICKS: u64 = 2;
/// How often the ring buffer is drained while records keep coming. The
/// kernel writes them without waking us (a wakeup per record costs more than
/// the probe itself) unless we fall behind, so this bounds the
/// kernel-to-output latency. A drain that finds nothing puts the reader to
/// sleep until the kernel wakes it with the next record (see [`Reader`]).
///
/// Every wake-up of the reader on a busy host is a preemption of the
/// workload, and on two CPUs a chance for the other one to fall idle: a
/// process that only wakes every 5 ms next to the exec storm cost it 2 to 5 %
/// (measured in `docs/architecture.md`, "The reader's drain interval"). So
/// the interval is as long as the latency target allows: a record waits at
/// most this long, and the p99 of the kernel-to-output latency (≤ 10 ms) is
/// this plus the handling.
const DRAIN_INTERVAL: Duration = Duration::from_millis(7);

/// How long the programs for processes in runs stay attached after the last
/// process left its run, so that a host launching agents one after another
/// does not attach and detach them for each.
const RUN_PROBES_LINGER: Duration = Duration::from_secs(10);

/// Keeps the programs for processes in runs ([`Probes::set_run_probes`])
/// attached while the kernel's process → run map holds a process or a run
/// is active, and detached otherwise.
///
/// They are attached before a `launch` request is handled, so a launched
/// command's first instruction runs with them on. A run that a matcher
/// (`[[agent]]`) or the environment starts is created while the daemon
/// reads the agent's exec, after that exec: they are attached in the same
/// loop round, before the next record is read.
struct RunProbes {
    /// The last time a process was in a run (`None`: not since the start,
    /// so nothing lingers).
    needed_at: Option<std::time::Instant>,
    /// An attach failed, and was logged: the next failures are not, until
    /// one succeeds.
    failing: bool,
}

impl RunProbes {
    fn new() -> Self {
        Self {
            needed_at: None,
            failing: false,
        }
    }

    /// Attaches them, when they are not (a run may begin now).
    fn attach(&mut self, probes: &mut Probes, state: &DaemonState) {
        self.needed_at = Some(std::time::Instant::now());
        self.set(probes, state, true);
    }

    /// Attaches them when a matcher or the environment started a run (the
    /// drain stops after that record: [`Pipeline::run_began_on_standby`]).
    /// After a failed attach the tick tries again, not every round.
    fn attach_for_new_runs(&mut self, probes: &mut Probes, engine: &Engine, state: &DaemonState) {
        if !probes.run_probes() && !self.failing && engine.attribution().has_active_runs() {
            self.attach(probes, state);
        }
    }

    /// The tick's (and the start's) look: attached when a process is in a
    /// run or a run is active, detached once none has been for
    /// [`RUN_PROBES_LINGER`].
    fn check(&mut self, probes: &mut Probes, engine: &Engine, state: &DaemonState) {
        let now = std::time::Instant::now();
        let attribution = engine.attribution();
        // Detached, no process can enter the kernel's map but by the daemon,
        // which attaches first: the fork program copies an entry only from
        // a parent already there, and the map was empty at the detach. So
        // the map is read only while something is attached, or an attach
        // failed (a read of an empty hash map walks all of its buckets).
        let needed = if probes.any_run_probe() || self.failing {
            attribution.runs_in_kernel()
        } else {
            attribution.has_active_runs()
        };
        if needed {
            self.needed_at = Some(now);
            self.set(probes, state, true);
        } else if probes.any_run_probe()
            && self
                .needed_at
                .is_none_or(|at| now.duration_since(at) >= RUN_PROBES_LINGER)
        {
            self.set(probes, state, false);
        }
    }

    fn set(&mut self, probes: &mut Probes, state: &DaemonState, on: bool) {
        // Wanted on, a link missing is a fault in status, not a standby.
        if on {
            state.set_run_probes_standby(false);
        }
        match probes.set_run_probes(on) {
            Ok(changed) => {
                self.failing = false;
                if changed {
                    tracing::debug!(attached = on, "programs for processes in runs");
                    state.set_run_probes_standby(!on);
                    state.set_links(probes.link_status());
                }
            }
            Err(e) => {
                if !self.failing {
                    tracing::error!(
                        error = %crate::error::Chain(&e),
                        attach = on,
                        "cannot change the programs for processes in runs; tried again every second"
                    );
                }
                self.failing = true;
                state.set_links(probes.link_status());
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("polling the event ring buffer")]
    Poll(#[source] std::io::Error),
    #[error("reading kernel counters")]
    Stats(#[source] MapError),
}

/// The stages after the reader, and the counters they keep.
pub struct Pipeline {
    builder: Engine,
    outputs: Outputs,
    output_handles: Vec<OutputHandle>,
    state: Arc<DaemonState>,
    /// Events not yet handed to the outputs and the store.
    batch: Vec<Event>,
    /// The event vectors of batches every holder dropped, for new batches.
    recycler: crate::sinks::Recycler,
    /// Where the event sequence is saved (a restart continues it).
    seq_file: Option<SeqFile>,
    kernel_lost_seen: [u64; SLOT_KINDS.len()],
    output_dropped_seen: Vec<u64>,
    store_lost_seen: u64,
    decode_warned: bool,
    /// Reused buffer for the events of one record.
    scratch: Vec<Event>,
    store: Option<StoreWriter>,
    /// The kernel's per-run counters as last reported, by run handle.
    run_stats_seen: std::collections::HashMap<u64, RunStats>,
    /// Whether a caught panic was logged already (once is enough).
    panic_logged: bool,
    /// The pinned copy of `run_stats_seen`, for the next daemon.
    run_stats_seen_map: Option<BpfHashMap<MapData, u64, RunStats>>,
    /// This daemon's program generation: a record of another one was
    /// recorded while this daemon was not reading (`delivery: "recovered"`).
    generation: u32,
    /// Still reading what was recorded before this daemon's programs took
    /// over: until the first record of its own generation, or an empty ring.
    recovering: bool,
    /// Records read that another generation recorded.
    recovered: u64,
    /// Execs of runs get `exec.modified_in_run` (the daemon; not a replay).
    exec_files: bool,
    /// When reading them began.
    recovery_started: std::time::Instant,
    /// Records of another wire version, by version (not readable).
    unreadable: std::collections::BTreeMap<u32, u64>,
    /// Answers control requests (launch, whoami, attest, reload, take-over).
    control: crate::control::handler::Handler,
    /// The canary (`[daemon] canary_interval_secs`; `None`: off).
    canary: Option<crate::canary::Canary>,
    /// systemd's notification socket (READY, WATCHDOG, STATUS, STOPPING).
    notifier: Arc<crate::notify::Notifier>,
    /// `--record-raw`: every record, as read, for replays.
    raw_log: Option<std::io::BufWriter<std::fs::File>>,
    /// The file watch: its reports (taken by [`run`]) and counters.
    file_changes: Option<tokio::sync::mpsc::Receiver<FileChange>>,
    file_watch: Option<Arc<files::Stats>>,
    /// The file watch's loss counters as last reported (overflows, dropped).
    file_watch_seen: (u64, u64),
    /// The kernel's reports of opens for writing of sensor files, lately:
    /// (pid, protected path, when), so that the file watch does not report
    /// the same act again.
    kernel_file_writes: std::collections::VecDeque<(u32, std::path::PathBuf, std::time::Instant)>,
    /// File changes by a process the daemon knew nothing of yet (its records
    /// still on their way through the ring), reported at the next tick.
    deferred_files: Vec<FileChange>,
    /// The detection thread (Sigma rules), fed every batch.
    detector: Option<crate::detect::Detector>,
    /// Its matches (taken by [`run`]).
    detections: Option<tokio::sync::mpsc::Receiver<crate::detect::Match>>,
    /// Chained run records and their checkpoints (`[provenance]`).
    provenance: Option<crate::provenance::Planner>,
    /// The batch handed on last (the next one's lines are made after its).
    last_batch: Option<crate::sinks::EventBatch>,
    /// The agents' transcripts, read on the tick (`tool.call`).
    transcripts: Option<crate::transcripts::Transcripts>,
    /// The outputs' and the store's backlogs: the reader holds back while
    /// one is behind (`sinks::backlog`).
    pressure: crate::sinks::Pressure,
    /// When to give freed memory back to the system.
    trim: crate::memory::Trim,
}

/// A file change by a process within this long of the kernel's report of
/// its open for writing of the same file is the same act.
const SAME_ACT: Duration = Duration::from_secs(2);
/// Kernel open-for-writing reports remembered for that.
const KERNEL_WRITES_KEPT: usize = 256;
/// File changes held back for their process's records, at most.
const DEFERRED_FILES: usize = 1024;

impl Pipeline {
    #[must_use]
    pub fn new(builder: Engine, outputs: Outputs, state: Arc<DaemonState>) -> Self {
        let output_handles = outputs.handles();
        let output_dropped_seen = vec![0; output_handles.len()];
        let mut pressure = crate::sinks::Pressure::default();
        for backlog in outputs.backlogs() {
            pressure.watch(backlog);
        }
        Self {
            builder,
            outputs,
            output_handles,
            state,
            batch: Vec::with_capacity(BATCH_EVENTS),
            recycler: crate::sinks::Recycler::default(),
            seq_file: None,
            kernel_lost_seen: [0; SLOT_KINDS.len()],
            output_dropped_seen,
            store_lost_seen: 0,
            decode_warned: false,
            scratch: Vec::with_capacity(4),
            store: None,
            run_stats_seen: std::collections::HashMap::new(),
            panic_logged: false,
            run_stats_seen_map: None,
            generation: 0,
            recovering: true,
            recovered: 0,
            recovery_started: std::time::Instant::now(),
            unreadable: std::collections::BTreeMap::new(),
            control: crate::control::handler::Handler::new(crate::config::LimitsConfig::default()),
            canary: None,
            notifier: Arc::default(),
            raw_log: None,
            file_changes: None,
            file_watch: None,
            file_watch_seen: (0, 0),
            kernel_file_writes: std::collections::VecDeque::new(),
            deferred_files: Vec::new(),
            detector: None,
            detections: None,
            provenance: None,
            last_batch: None,
            transcripts: None,
            exec_files: false,
            pressure,
            trim: crate::memory::Trim::default(),
        }
    }

    /// Execs of runs get `exec.modified_in_run` from the executed file's
    /// change time (`detect::exec_file`): live only.
    #[must_use]
    pub fn with_exec_files(mut self) -> Self {
        self.exec_files = true;
        self
    }

    /// Reads the transcripts of the runs of the agents that have them
    /// (`[[agent]] transcripts`).
    #[must_use]
    pub fn with_transcripts(mut self, transcripts: crate::transcripts::Transcripts) -> Self {
        if !transcripts.is_empty() {
            self.transcripts = Some(transcripts);
        }
        self
    }

    /// Whether runs' transcripts are being followed.
    #[must_use]
    pub fn transcripts_following(&self) -> bool {
        self.transcripts.as_ref().is_some_and(|t| t.following())
    }

    /// When the transcripts are to be read next, if that may have changed
    /// since the last call (`None`: it did not).
    pub fn transcripts_rearm(&mut self) -> Option<Option<Duration>> {
        let t = self.transcripts.as_mut()?;
        t.take_rearm()
            .then(|| t.next_read(std::time::SystemTime::now()))
    }

    /// When the transcripts are to be read next (`None`: no run followed).
    #[must_use]
    pub fn transcripts_next_read(&self) -> Option<Duration> {
        self.transcripts
            .as_ref()?
            .next_read(std::time::SystemTime::now())
    }

    /// The inotify fd the transcripts are watched with, once there is one.
    #[must_use]
    pub fn transcripts_wake_fd(&self) -> Option<crate::transcripts::follow::WakeFd> {
        self.transcripts.as_ref()?.wake_fd()
    }

    /// The timed read of the transcripts (`Transcripts::poll`).
    pub fn transcripts_poll(&mut self) {
        self.transcripts_read(crate::transcripts::Transcripts::poll);
    }

    /// The read on inotify's word (`Transcripts::wake`).
    pub fn transcripts_wake(&mut self) {
        self.transcripts_read(crate::transcripts::Transcripts::wake);
    }

    /// A read of the transcripts: `tool.call` and `transcript.unreadable`
    /// events, numbered by the engine.
    fn transcripts_read(
        &mut self,
        read: fn(
            &mut crate::transcripts::Transcripts,
            std::time::SystemTime,
        ) -> Vec<crate::transcripts::Found>,
    ) {
        let Some(t) = &mut self.transcripts else {
            return;
        };
        let now = std::time::SystemTime::now();
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| read(t, now)));
        let Ok(found) = found else {
            self.caught_panic("reading the transcripts");
            return;
        };
        for f in found {
            let event = match f {
                crate::transcripts::Found::Call(run, call) => {
                    self.builder.tool_call(Kind::ToolCall, run, call)
                }
                crate::transcripts::Found::Unobserved(run, call) => {
                    self.builder.tool_call(Kind::ToolUnobserved, run, call)
                }
                crate::transcripts::Found::Unexplained(run, process, why) => {
                    self.builder.tool_unexplained(run, *process, why)
                }
                crate::transcripts::Found::Unreadable(run, issue) => {
                    tracing::warn!(run = %run.id, reason = %issue.reason, path = ?issue.path, "transcript.unreadable");
                    self.builder.transcript_unreadable(run, issue)
                }
            };
            self.push(event);
        }
    }

    /// Chains run events and emits their checkpoints (`[provenance]`).
    #[must_use]
    pub fn with_provenance(mut self, planner: crate::provenance::Planner) -> Self {
        self.provenance = Some(planner);
        self
    }

    /// Emits the checkpoints due by time (the tick).
    pub fn checkpoints_due(&mut self) {
        let due = match &mut self.provenance {
            Some(p) => p.due(std::time::Instant::now()),
            None => return,
        };
        for (run, reason, recovered) in due {
            let event = self.builder.checkpoint(run, reason, recovered);
            self.push(event);
        }
    }

    /// Evaluates the detection rules on every event, on the detection
    /// thread; a reload replaces the rules.
    #[must_use]
    pub fn with_detector(
        mut self,
        detector: crate::detect::Detector,
        matches: tokio::sync::mpsc::Receiver<crate::detect::Match>,
    ) -> Self {
        self.control.set_rules(detector.rules().clone());
        self.state.set_detect(Arc::clone(detector.stats()));
        self.detector = Some(detector);
        self.detections = Some(matches);
        self
    }

    /// A rule matched: the `detection` event, numbered by the engine.
    pub fn detection(&mut self, m: crate::detect::Match) {
        let event = self.builder.detection(m);
        self.push(event);
    }

    /// At stop: lets the detection thread finish what it was given, and
    /// emits its last matches (before the sequence is handed on).
    pub fn finish_detection(
        &mut self,
        matches: &mut Option<tokio::sync::mpsc::Receiver<crate::detect::Match>>,
    ) {
        self.flush();
        if let Some(d) = &mut self.detector {
            d.close();
        }
        if let Some(rx) = matches {
            while let Ok(m) = rx.try_recv() {
                self.detection(m);
            }
        }
        self.flush();
    }

    /// Also writes every record, as read, to `file` (`--record-raw`): each
    /// a 4-byte little-endian length, then the record's bytes.
    #[must_use]
    pub fn with_raw_log(mut self, file: std::fs::File) -> Self {
        self.raw_log = Some(std::io::BufWriter::new(file));
        self
    }

    /// This daemon's program generation (see [`sensor_common::handover`]).
    #[must_use]
    pub fn with_generation(mut self, generation: u32) -> Self {
        self.generation = generation;
        self
    }

    /// Runs the canary (see [`crate::canary`]).
    #[must_use]
    pub fn with_canary(mut self, canary: crate::canary::Canary) -> Self {
        self.state.set_canary(canary.status());
        self.canary = Some(canary);
        self
    }

    /// Tells systemd through `notifier` (see [`crate::notify`]).
    #[must_use]
    pub fn with_notifier(mut self, notifier: crate::notify::Notifier) -> Self {
        let notifier = Arc::new(notifier);
        self.control.set_notifier(Arc::clone(&notifier));
        self.notifier = notifier;
        self
    }

    /// systemd's notification socket.
    #[must_use]
    pub fn notifier(&self) -> &crate::notify::Notifier {
        &self.notifier
    }

    /// Reports what the file watch sees (see [`crate::tamper::files`]).
    #[must_use]
    pub fn with_file_watch(mut self, watch: files::FileWatch) -> Self {
        self.state.set_file_watch(Arc::clone(&watch.stats));
        self.file_watch = Some(watch.stats);
        self.file_changes = Some(watch.changes);
        self
    }

    /// Counters of a file watch that could not start (status says why).
    pub fn without_file_watch(&mut self, stats: Arc<files::Stats>) {
        self.state.set_file_watch(stats);
    }

    /// Reports a change the file watch saw to the sensor's files: a
    /// `sensor.tamper` with the process and its run (and a kill under an
    /// enforce policy), unless the kernel already reported the same act
    /// (the same process's open for writing of the same file, just before).
    ///
    /// A change by a process the daemon knows nothing of (gone, and its
    /// records not read yet) waits for the next tick: by then its spawn and
    /// exit have come through the ring, and it is named with its run.
    pub fn file_change(&mut self, change: &FileChange) {
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if change.pid != 0
                && self.deferred_files.len() < DEFERRED_FILES
                && !self.builder.attribution().actor(change.pid).is_known()
            {
                self.deferred_files.push(change.clone());
                return;
            }
            self.report_file_change(change);
        }));
        if handled.is_err() {
            self.caught_panic("a file change");
        }
    }

    /// Reports the file changes held back for their process's records
    /// (every tick, and at stop), with whatever is known by now.
    pub fn report_deferred_files(&mut self) {
        for change in std::mem::take(&mut self.deferred_files) {
            let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                self.report_file_change(&change);
            }));
            if handled.is_err() {
                self.caught_panic("a file change");
            }
        }
    }

    fn report_file_change(&mut self, change: &FileChange) {
        let now = std::time::Instant::now();
        while self
            .kernel_file_writes
            .front()
            .is_some_and(|(_, _, t)| now.duration_since(*t) > SAME_ACT)
        {
            self.kernel_file_writes.pop_front();
        }
        let writes_only = change
            .ops()
            .all(|w| matches!(w, What::Create | What::Modify | What::Attrib));
        let same_act = writes_only
            && self
                .kernel_file_writes
                .iter()
                .any(|(pid, path, _)| *pid == change.pid && change.path.starts_with(path));
        if let Some(stats) = &self.file_watch {
            let counter = if same_act {
                &stats.duplicates
            } else {
                &stats.reported
            };
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        if same_act {
            return;
        }
        let mut events = std::mem::take(&mut self.scratch);
        let outcome = self.builder.file_tamper(change, &mut events);
        if let Some(e) = events.first() {
            let run = e.run.as_ref().map_or("", |r| r.id.as_str());
            tracing::warn!(
                what = change.what().as_str(),
                path = %change.path.display(),
                pid = change.pid,
                run,
                killed = outcome.killed,
                "sensor.tamper: a file of the sensor's changed"
            );
        }
        for event in events.drain(..) {
            self.push(event);
        }
        self.scratch = events;
        self.flush();
    }

    /// Notes the kernel's report of an open for writing of a sensor file.
    fn note_kernel_write(&mut self, event: &Event) {
        let (Some(t), Some(p)) = (&event.tamper, &event.process) else {
            return;
        };
        if t.method != "sensor_file" {
            return;
        }
        let Some(path) = t.file.as_ref().and_then(|f| f.path.as_ref()) else {
            return;
        };
        if self.kernel_file_writes.len() >= KERNEL_WRITES_KEPT {
            self.kernel_file_writes.pop_front();
        }
        self.kernel_file_writes
            .push_back((p.pid, path.into(), std::time::Instant::now()));
    }

    /// Saves the event sequence in `seq_file` (its reservation is taken now).
    #[must_use]
    pub fn with_seq_file(mut self, mut seq_file: SeqFile) -> Self {
        seq_file.keep_ahead(self.builder.next_seq());
        self.seq_file = Some(seq_file);
        self
    }

    /// The per-user bounds on launches (`[limits]`).
    #[must_use]
    pub fn with_limits(mut self, limits: crate::config::LimitsConfig) -> Self {
        self.control.set_limits(limits);
        self
    }

    /// Issues run tokens (`sensor token`).
    #[must_use]
    pub fn with_tokens(mut self, issuer: crate::tokens::Issuer) -> Self {
        self.control.set_tokens(issuer);
        self
    }

    /// Also writes every event to the store.
    #[must_use]
    pub fn with_store(mut self, store: StoreWriter) -> Self {
        self.state.set_store(store.path().to_owned(), store.stats());
        self.control.set_store(store.path().to_owned());
        self.pressure.watch(store.backlog());
        self.store = Some(store);
        self
    }

    /// Handles one ring buffer record. A panic while handling it (a bug
    /// some record reaches) is caught and counted: one lost record, never
    /// a dead daemon.
    pub fn handle_record(&mut self, bytes: &[u8]) {
        if let Some(log) = &mut self.raw_log {
            use std::io::Write as _;
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes();
            if let Err(e) = log.write_all(&len).and_then(|()| log.write_all(bytes)) {
                tracing::error!(error = %e, "cannot write the raw record log; it stops here");
                self.raw_log = None;
            }
        }
        let handled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.decode_and_build(bytes)
        }));
        if handled.is_err() {
            self.caught_panic("a kernel record");
        }
    }

    /// Counts (and logs once) a panic caught while handling `what`.
    fn caught_panic(&mut self, what: &str) {
        Defense::count(&self.state.defense.panics);
        if !self.panic_logged {
            tracing::error!(
                what,
                "handling it panicked (a bug; counted in status as panics, later ones are not logged); the daemon goes on"
            );
            self.panic_logged = true;
        }
    }

    fn decode_and_build(&mut self, bytes: &[u8]) {
        match record::decode(bytes) {
            Ok(raw) => {
                let theirs = raw.header().generation != self.generation;
                if self.recovering && !theirs {
                    // Everything recorded before our programs took over is read.
                    self.finish_recovery();
                }
                // The canary's own records are not user events.
                if let Some(canary) = &mut self.canary
                    && canary.watches(raw.header().tgid)
                    && canary.observe(&raw)
                {
                    return;
                }
                let mut events = std::mem::take(&mut self.scratch);
                self.builder.build_into(raw, &mut events);
                for mut event in events.drain(..) {
                    if theirs {
                        event.delivery = Some(DELIVERY_RECOVERED);
                    }
                    self.push(event);
                }
                self.scratch = events;
                if theirs {
                    self.recovered += 1;
                }
            }
            Err(record::DecodeError::WireVersion { version, ours }) => {
                let n = self.unreadable.entry(version).or_default();
                if *n == 0 {
                    tracing::error!(
                        version,
                        ours,
                        "records of another sensor version's layout in the ring: they cannot be \
                         read, and are counted and reported as lost"
                    );
                }
                *n += 1;
                self.state.count_decode_error();
            }
            Err(e) => {
                self.state.count_decode_error();
                if !self.decode_warned {
                    tracing::warn!(error = %e, "undecodable kernel record (counted in status; further ones are not logged)");
                    self.decode_warned = true;
                }
            }
        }
    }

    /// Whether a new daemon asked to take over.
    #[must_use]
    pub fn handover_requested(&self) -> bool {
        self.control.handover_requested()
    }

    /// Starts reading after a gap: says how long nobody read and why
    /// (`sensor.gap`), reports what the kernel could not keep meanwhile
    /// (`run.degraded` per run, `sensor.lost` with the window), and takes
    /// the previous reader's counters as already reported. What the ring
    /// holds is read next, as recovered.
    pub fn begin_recovery(
        &mut self,
        gap: Option<Gap>,
        baseline: [u64; SLOT_KINDS.len()],
        kernel: &Stats,
        run_stats: &mut BpfHashMap<MapData, u64, RunStats>,
        run_stats_seen: BpfHashMap<MapData, u64, RunStats>,
    ) {
        self.recovery_started = std::time::Instant::now();
        // A counter below the baseline belongs to a map made anew: count from 0.
        for (slot, seen) in self.kernel_lost_seen.iter_mut().enumerate() {
            *seen = if baseline[slot] <= kernel.lost[slot] {
                baseline[slot]
            } else {
                0
            };
        }
        self.run_stats_seen = run_stats_seen.iter().filter_map(Result::ok).collect();
        self.run_stats_seen_map = Some(run_stats_seen);
        let Some(mut gap) = gap else {
            // No daemon before: nothing in the kernel's counters is ours to report.
            self.kernel_lost_seen = kernel.lost;
            return;
        };
        gap.lost = kernel
            .lost
            .iter()
            .zip(self.kernel_lost_seen)
            .map(|(now, seen)| now.saturating_sub(seen))
            .sum();
        tracing::warn!(
            cause = gap.cause,
            seconds = ?gap.seconds,
            recorded = gap.recorded,
            lost = gap.lost,
            "no daemon was reading the kernel's records for a while (sensor.gap)"
        );
        let window = Window {
            start: gap.start,
            end: gap.end,
        };
        let event = self.builder.gap(gap);
        self.push(event);
        let runs = self.check_run_stats(run_stats);
        self.report_losses(kernel, runs, Some(window));
    }

    /// Done reading what was recorded while no daemon was reading: runs
    /// whose processes all exited meanwhile end now, after their last
    /// events.
    fn finish_recovery(&mut self) {
        let ended = self
            .builder
            .attribution_mut()
            .end_finished(std::time::SystemTime::now());
        self.run_changes(&ended);
        self.recovering = false;
        self.emit_deferred_checkpoints();
        let took = self.recovery_started.elapsed();
        self.state.set_recovered(self.recovered, took);
        if self.recovered > 0 {
            tracing::info!(
                records = self.recovered,
                ms = took.as_millis(),
                "read what the kernel recorded while no daemon was reading (delivery: recovered)"
            );
        }
    }

    /// The mark the next daemon starts from (see [`ReaderMark`]).
    fn mark(&self, state: u32) -> ReaderMark {
        let now = std::time::SystemTime::now();
        ReaderMark {
            state,
            generation: self.generation,
            pid: std::process::id(),
            _pad: 0,
            unix_ns: now
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
            boot_ns: nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).map_or(0, |t| {
                u64::try_from(t.tv_sec()).unwrap_or(0) * 1_000_000_000
                    + u64::try_from(t.tv_nsec()).unwrap_or(0)
            }),
            lost_seen: self.kernel_lost_seen,
            next_seq: self.builder.next_seq(),
        }
    }

    /// Emits the events of runs that started or ended.
    pub fn run_changes(&mut self, changes: &[RunChange]) {
        for change in changes {
            let event = self.builder.run_change(change);
            self.push(event);
        }
        self.state
            .set_runs(self.builder.attribution().active_runs());
        if !changes.is_empty() {
            self.publish_policies();
        }
    }

    /// The policies in force, their runs, and the agent matchers, for
    /// `sensor status` and `/metrics`.
    pub fn publish_policies(&self) {
        self.state.set_policies(self.builder.policy_status());
        self.state.set_agents(
            self.builder
                .attribution()
                .matchers()
                .names()
                .map(str::to_owned)
                .collect(),
        );
    }

    /// A reload's `[[agent]]` tables: the transcripts of the agents that
    /// now name a format are read from their next run on.
    fn reloaded_agents(&mut self, agents: &[crate::attribution::AgentConfig]) {
        let formats = crate::transcripts::Transcripts::of_agents(agents);
        match &mut self.transcripts {
            Some(t) => t.set_formats(formats),
            None if !formats.is_empty() => self.transcripts = Some(formats),
            None => {}
        }
    }

    /// Answers a control request about runs. The caller drained the ring
    /// first, so the process table is as fresh as the kernel. A panic while
    /// answering is caught and counted (the caller gets an error).
    pub fn command(&mut self, command: Command) {
        // What may change the policies or their runs (the 1 s tick
        // publishes them anyway): not a whoami or an attestation.
        let republish = matches!(
            &command,
            Command::Reload { .. }
                | Command::Request {
                    request: crate::control::protocol::Request::Launch(_),
                    ..
                }
        );
        let mut events = std::mem::take(&mut self.scratch);
        let answered = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.control
                .handle(&mut self.builder, &self.state, command, &mut events);
        }));
        if answered.is_err() {
            self.caught_panic("a control request");
        }
        if let Some(agents) = self.control.take_reloaded_agents() {
            self.reloaded_agents(&agents);
        }
        for event in events.drain(..) {
            self.push(event);
        }
        self.scratch = events;
        if republish {
            self.publish_policies();
        }
    }

    fn push(&mut self, mut event: Event) {
        if self.exec_files && event.kind == Kind::ProcessExec && event.run.is_some() {
            let attribution = self.builder.attribution();
            crate::detect::exec_file::mark(&mut event, |id| attribution.run_start(id));
        }
        if event.kind == Kind::SensorTamper && self.file_watch.is_some() {
            self.note_kernel_write(&event);
        }
        self.state.count_event(event.kind);
        if let Some(d) = &event.detection {
            self.state.count_detection(&d.rule_id, d.level);
        }
        self.state.count_denial(event.kind, event.policy.as_ref());
        if let Some(t) = &mut self.transcripts
            && let Some(call) = t.on_event(&event)
            && let Some(run) = &mut event.run
        {
            run.tool_call = Some(call);
        }
        let due = match &mut self.provenance {
            Some(p) => p.after(&event, self.recovering),
            None => None,
        };
        self.batch.push(event);
        if let Some((run, reason, recovered)) = due {
            let checkpoint = self.builder.checkpoint(run, reason, recovered);
            self.state.count_event(checkpoint.kind);
            self.batch.push(checkpoint);
        }
        if self.batch.len() >= BATCH_EVENTS {
            // Queued, not yet woken for: the flush at the end of the drain
            // wakes each output once (or a backlog of WAKE_EVENTS does).
            self.hand_off(false);
        }
    }

    /// Hands the current batch to the outputs and the store and wakes the
    /// output threads that wait: one shared batch each encodes on its own
    /// thread (the JSON lines once, by the first that needs them).
    pub fn flush(&mut self) {
        self.hand_off(true);
    }

    /// A matcher or the environment put a process in a run while the
    /// programs for processes in runs stand by: the drain stops there, and
    /// the loop attaches them before it reads on (the run's process is
    /// already in the kernel's map; only this round's handling is between).
    fn run_began_on_standby(&self) -> bool {
        self.state.run_probes_standby() && self.builder.attribution().has_active_runs()
    }

    /// [`Pipeline::flush`]; with `wake` false the outputs are not woken
    /// (mid-drain: a drain's batches cost each output one wake-up, not one
    /// per batch).
    fn hand_off(&mut self, wake: bool) {
        if let Some(log) = &mut self.raw_log {
            use std::io::Write as _;
            let _ = log.flush();
        }
        if self.batch.is_empty() {
            if wake {
                self.outputs.ring();
            }
            return;
        }
        let events = std::mem::replace(&mut self.batch, self.recycler.take(BATCH_EVENTS));
        self.trim.handled(events.len());
        let batch = match &self.provenance {
            Some(p) => {
                crate::sinks::EventBatch::chained(events, p.chainer(), self.last_batch.as_ref())
            }
            None => crate::sinks::EventBatch::new(events),
        }
        .recycled_by(&self.recycler);
        if self.provenance.is_some() {
            self.last_batch = Some(batch.clone());
        }
        if let Some(d) = &self.detector {
            d.send(&batch);
        }
        if wake {
            self.outputs.send(&batch);
        } else {
            self.outputs.send_held(&batch);
        }
        if let Some(store) = &self.store {
            store.send(crate::store::writer::StoreBatch::Events(batch));
        }
    }

    /// The tick's housekeeping of memory: tables shrunk after a mass exit,
    /// and freed memory returned to the system once the consumers have
    /// written what they held ([`crate::memory::Trim`]).
    fn give_back_memory(&mut self) {
        if self.builder.attribution_mut().shrink_tables() {
            self.trim.shrunk();
        }
        self.state.set_reader_holds(self.pressure.holds());
        let peak = self.pressure.take_peak();
        if peak > crate::sinks::backlog::HOLD_EVENTS {
            tracing::debug!(
                peak,
                holds = self.pressure.holds(),
                "a consumer fell behind; the reader held back"
            );
        }
        self.trim
            .maybe(self.pressure.waiting(), std::time::Instant::now());
    }

    /// Reports what the kernel counted per run since the last look: a
    /// `run.degraded` per run that lost records or had denial records
    /// suppressed. Returns the records lost per run id, for `sensor.lost`.
    /// Counters of runs that are over are removed once reported.
    pub fn check_run_stats(
        &mut self,
        map: &mut BpfHashMap<MapData, u64, RunStats>,
    ) -> std::collections::BTreeMap<String, u64> {
        let entries: Vec<(u64, RunStats)> = map.iter().filter_map(Result::ok).collect();
        let mut lost_by_run = std::collections::BTreeMap::new();
        for (handle, now) in entries {
            let seen = self
                .run_stats_seen
                .get(&handle)
                .copied()
                .unwrap_or_default();
            let degraded = Degraded {
                lost_events: now.lost.saturating_sub(seen.lost),
                denials_suppressed: now
                    .denials_suppressed
                    .saturating_sub(seen.denials_suppressed),
            };
            if degraded.lost_events > 0 || degraded.denials_suppressed > 0 {
                let defense = &self.state.defense;
                defense.denials_suppressed.fetch_add(
                    degraded.denials_suppressed,
                    std::sync::atomic::Ordering::Relaxed,
                );
                if seen == RunStats::default() {
                    Defense::count(&defense.runs_degraded);
                }
                let lost = degraded.lost_events;
                if let Some(event) = self.builder.degraded(handle, degraded) {
                    if lost > 0
                        && let Some(run) = &event.run
                    {
                        lost_by_run.insert(run.id.clone(), lost);
                    }
                    self.push(event);
                }
            }
            let active = self
                .builder
                .attribution()
                .run(handle)
                .is_some_and(crate::attribution::Run::is_active);
            // Mirrored in the pinned map: the next daemon reports only
            // what is new.
            if active {
                if self.run_stats_seen.get(&handle) != Some(&now) {
                    if let Some(pinned) = &mut self.run_stats_seen_map
                        && let Err(e) = pinned.insert(handle, now, 0)
                    {
                        tracing::debug!(error = %e, "cannot pin a run's reported counters");
                    }
                    self.run_stats_seen.insert(handle, now);
                }
            } else {
                // Reported to the end: the run is over (or unknown).
                let _ = map.remove(&handle);
                if let Some(pinned) = &mut self.run_stats_seen_map {
                    let _ = pinned.remove(&handle);
                }
                self.run_stats_seen.remove(&handle);
            }
        }
        lost_by_run
    }

    /// Compares the kernel and output counters with the last look and
    /// reports anything newly lost (`runs`: the kernel losses of agent runs,
    /// by run id, from [`Self::check_run_stats`]).
    pub fn check_losses(&mut self, kernel: &Stats, runs: std::collections::BTreeMap<String, u64>) {
        self.report_losses(kernel, runs, None);
    }

    /// [`Self::check_losses`], for losses known to lie in `window` (a gap).
    fn report_losses(
        &mut self,
        kernel: &Stats,
        runs: std::collections::BTreeMap<String, u64>,
        window: Option<Window>,
    ) {
        let mut lost = Lost {
            runs,
            window,
            unreadable: std::mem::take(&mut self.unreadable),
            ..Lost::default()
        };
        let mut cumulative_by_kind = [0u64; Kind::COUNT];
        for (slot, kernel_kind) in SLOT_KINDS.iter().enumerate() {
            let kind = Kind::of_kernel(*kernel_kind);
            let now = kernel.lost[slot];
            cumulative_by_kind[kind.index()] += now;
            lost.cumulative += now;
            let delta = now.saturating_sub(self.kernel_lost_seen[slot]);
            self.kernel_lost_seen[slot] = now;
            if delta > 0 {
                lost.total += delta;
                *lost.by_kind.entry(kind.as_str()).or_default() += delta;
            }
        }
        for kind in Kind::all() {
            self.state
                .set_kernel_lost(kind, cumulative_by_kind[kind.index()]);
        }
        self.state.set_read_errors(kernel.read_errors);
        if kernel.inherit_failed > self.state.report_inherit_failed() {
            tracing::error!(
                count = kernel.inherit_failed,
                "processes could not join their creator's run: the kernel process→run map is full"
            );
        }
        self.state.set_inherit_failed(kernel.inherit_failed);
        self.state
            .set_runs(self.builder.attribution().active_runs());
        self.publish_policies();
        for (i, handle) in self.output_handles.iter().enumerate() {
            let now = handle.dropped();
            let delta = now.saturating_sub(self.output_dropped_seen[i]);
            self.output_dropped_seen[i] = now;
            if delta > 0 {
                lost.by_output.insert(handle.name.clone(), delta);
            }
        }
        if let Some(store) = &self.store {
            let stats = store.stats();
            let now = stats.dropped.load(std::sync::atomic::Ordering::Relaxed)
                + stats.failed.load(std::sync::atomic::Ordering::Relaxed);
            let delta = now.saturating_sub(self.store_lost_seen);
            self.store_lost_seen = now;
            if delta > 0 {
                lost.by_output.insert("store".to_owned(), delta);
            }
        }
        if let Some(stats) = &self.file_watch {
            let now = (
                stats.overflows.load(std::sync::atomic::Ordering::Relaxed),
                stats.dropped.load(std::sync::atomic::Ordering::Relaxed),
            );
            let (o, d) = self.file_watch_seen;
            self.file_watch_seen = now;
            if now != (o, d) {
                lost.file_watch = Some(crate::event::FileWatchLost {
                    overflows: now.0.saturating_sub(o),
                    dropped: now.1.saturating_sub(d),
                });
            }
        }
        if lost.total > 0
            || !lost.by_output.is_empty()
            || !lost.unreadable.is_empty()
            || lost.file_watch.is_some()
        {
            tracing::warn!(kernel = lost.total, outputs = ?lost.by_output, file_watch = ?lost.file_watch, "events lost");
            let event = self.builder.lost(lost);
            self.push(event);
            self.flush();
        }
    }

    /// The integrity check (every tick, and at stop): the pins, links and
    /// owner record ([`Probes::check`]) and the policy maps
    /// ([`crate::policy::kernel::Enforcement::verify`], which compares them
    /// when `foreign_bpf`, the kernel's count of other processes' bpf(2)
    /// calls read before, moved or is `None`, and otherwise now and then).
    /// Each finding is a `sensor.tamper` event, a log line and a count in
    /// status and metrics.
    pub fn check_integrity(&mut self, probes: &mut Probes, foreign_bpf: Option<u64>) {
        let mut found = probes.check();
        found.extend(self.builder.verify_policy_maps(foreign_bpf));
        self.state
            .set_policy_map_checks(self.builder.policy_map_comparisons(), foreign_bpf);
        if let Some(t) = found.first() {
            self.notifier.status(&format!(
                "sensor.tamper: {} {} ({})",
                t.what,
                t.object,
                if t.repaired {
                    "put back"
                } else {
                    "NOT put back"
                }
            ));
        }
        for t in &found {
            let detail = t.detail.as_deref().unwrap_or("");
            if t.repaired {
                tracing::warn!(what = t.what, object = %t.object, detail, "sensor.tamper: changed under the daemon, put back");
            } else {
                tracing::error!(what = t.what, object = %t.object, detail, "sensor.tamper: changed under the daemon, and NOT put back");
            }
            self.state.count_tamper(t.what);
            let event = self.builder.tamper(t);
            self.push(event);
        }
        if !found.is_empty() {
            self.flush();
        }
        self.state.set_links(probes.link_status());
    }

    /// Whether a canary round waits for its records.
    fn canary_pending(&self) -> bool {
        self.canary
            .as_ref()
            .is_some_and(crate::canary::Canary::pending)
    }

    /// The canary's step (every tick): judges its round, starts the next,
    /// and reports a blindness or its end as `sensor.blind` (to every output
    /// and the store), a log line, status and a systemd STATUS= line.
    pub fn check_canary(&mut self, caught_up: bool) {
        use crate::canary::Finding;
        let Some(canary) = &mut self.canary else {
            return;
        };
        let finding = canary.tick(std::time::Instant::now(), caught_up);
        self.state.set_canary(canary.status());
        let Some(finding) = finding else {
            return;
        };
        let (blind, status) = match finding {
            Finding::Blind(b) => {
                let status = format!("BLIND (sensor.blind, not ready): {}", b.detail);
                (b, status)
            }
            Finding::Restored(b) => {
                let status = format!("ready; sight restored: {}", b.detail);
                (b, status)
            }
        };
        self.notifier.status(&status);
        let event = self.builder.blind(blind);
        self.push(event);
        self.flush();
    }

    /// Renews the sequence's reservation when it runs low (every tick).
    fn save_seq(&mut self) {
        let next = self.builder.next_seq();
        if let Some(f) = &mut self.seq_file {
            f.keep_ahead(next);
        }
    }

    /// Closes the outputs and the store after writing everything queued.
    /// The end checkpoints of runs that ended while no daemon ran: after
    /// every record of theirs the kernel kept meanwhile (recovery's end).
    fn emit_deferred_checkpoints(&mut self) {
        let deferred = self
            .provenance
            .as_mut()
            .map(crate::provenance::Planner::take_deferred)
            .unwrap_or_default();
        for (run, reason, recovered) in deferred {
            let event = self.builder.checkpoint(run, reason, recovered);
            self.push(event);
        }
    }

    pub fn close(mut self) {
        self.emit_deferred_checkpoints();
        self.flush();
        let next = self.builder.next_seq();
        if let Some(f) = &mut self.seq_file {
            f.stop_at(next);
        }
        self.outputs.close();
        if let Some(store) = self.store.take() {
            store.close();
        }
    }
}

fn read_stats(stats: &PerCpuArray<MapData, Stats>) -> Result<Stats, PipelineError> {
    let values = stats.get(&0, 0).map_err(PipelineError::Stats)?;
    let mut total = Stats::default();
    for v in values.iter() {
        total.accumulate(v);
    }
    Ok(total)
}

/// What one drain did.
#[derive(Clone, Copy)]
struct Drained {
    records: usize,
    /// The ring was empty at the end (the budget was not used up).
    empty: bool,
}

fn drain(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline, budget: usize) -> Drained {
    for records in 0..budget {
        let Some(item) = ring.next() else {
            if pipeline.recovering {
                // Nothing more from before our programs took over.
                pipeline.finish_recovery();
            }
            return Drained {
                records,
                empty: true,
            };
        };
        pipeline.handle_record(&item);
        if pipeline.run_began_on_standby() {
            // Back to the loop, which attaches them before the next record.
            return Drained {
                records: records + 1,
                empty: false,
            };
        }
    }
    Drained {
        records: budget,
        empty: false,
    }
}

/// Records between two looks at the consumers' backlogs while draining.
const PRESSURE_EVERY: usize = 64;

/// [`drain`], but leaves the rest in the ring while a consumer is behind
/// ([`crate::sinks::Pressure`]): `held` says so, and the caller comes back
/// on the drain timer.
fn drain_paced(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline, budget: usize) -> Paced {
    let mut records = 0;
    while records < budget {
        if pipeline.pressure.holding() {
            pipeline.flush();
            return Paced {
                drained: Drained {
                    records,
                    empty: false,
                },
                held: true,
            };
        }
        let step = drain(ring, pipeline, PRESSURE_EVERY.min(budget - records));
        records += step.records;
        if step.empty || pipeline.run_began_on_standby() {
            return Paced {
                drained: Drained {
                    records,
                    empty: step.empty,
                },
                held: false,
            };
        }
    }
    Paced {
        drained: Drained {
            records,
            empty: false,
        },
        held: false,
    }
}

/// Drains the ring until it is empty, waiting (on this thread) while a
/// consumer is behind: at start-up (what was recorded while no daemon read)
/// and at stop, when the loop's drain timer no longer runs. A stalled
/// consumer does not hold it (its queue drops, counted).
fn drain_all(ring: &mut RingBuf<MapData>, pipeline: &mut Pipeline) {
    loop {
        let paced = drain_paced(ring, pipeline, DRAIN_BUDGET);
        if paced.held {
            std::thread::sleep(HELD_WAIT);
        } else if paced.drained.empty {
            return;
        }
    }
}

/// How long [`drain_all`] sleeps while a consumer is behind.
const HELD_WAIT: Duration = Duration::from_millis(1);

#[derive(Clone, Copy)]
struct Paced {
    drained: Drained,
    /// Stopped because a consumer is behind: records are left in the ring.
    held: bool,
}

/// How the reader learns of new records, told to the kernel programs
/// through the `SNSR_READER` map:
///
/// - awake: it drains every [`DRAIN_INTERVAL`] and records come without a
///   wakeup (a storm costs a few wake-ups per second, not one per record);
/// - asleep, after a drain found nothing: no timer runs and every record
///   wakes it. A quiet host costs nothing, and its events are reported at
///   once. Two wake-ups closer than [`DRAIN_INTERVAL`] put it back on the
///   timer.
///
/// A record whose program read "awake" just before the reader fell asleep is
/// sent without a wakeup: the drain right after falling asleep, the next
/// record, or at the latest the one-second tick picks it up.
///
/// Asleep is a lease of [`READER_LEASE_SECS`], renewed by the tick: a reader
/// that stops ticking (killed, stopped) is no longer woken, so the programs
/// do not raise an irq_work per record for nobody (measured: 3–4 per exec).
struct Reader {
    map: Array<MapData, u32>,
    asleep: bool,
    /// When a record last woke it.
    woken: Option<std::time::Instant>,
}

impl Reader {
    fn new(map: Array<MapData, u32>) -> Self {
        Self {
            map,
            asleep: false,
            woken: None,
        }
    }

    /// A record woke the reader: true when records now come often enough
    /// that it should stay awake.
    fn woken_busy(&mut self) -> bool {
        let now = std::time::Instant::now();
        let busy = self
            .woken
            .is_some_and(|last| now.duration_since(last) < DRAIN_INTERVAL);
        self.woken = Some(now);
        busy
    }

    /// Tells the kernel; false if it could not (the reader then stays awake,
    /// which is always safe). Asleep, the value is the lease: records wake
    /// the reader until that second of `CLOCK_BOOTTIME`, and the tick renews
    /// it (see `sensor_common::maps::READER`), so a reader killed or stopped
    /// while asleep does not cost an irq_work per record for long.
    fn set_asleep(&mut self, asleep: bool) -> bool {
        let value = if asleep { lease_until() } else { 0 };
        match self.map.set(0, value, 0) {
            Ok(()) => {
                self.asleep = asleep;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, asleep, "cannot set the event reader's state");
                false
            }
        }
    }
}

/// The end of a sleeping reader's lease from now, in seconds of
/// `CLOCK_BOOTTIME` (the programs' `bpf_ktime_get_boot_ns`); without that
/// clock, a lease that never ends.
fn lease_until() -> u32 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME)
        .ok()
        .and_then(|t| u32::try_from(t.tv_sec()).ok())
        .map_or(u32::MAX, |now| now.saturating_add(READER_LEASE_SECS))
}

/// The kernel side the pipeline reads.
pub struct KernelStreams {
    pub probes: Probes,
    pub events: RingBuf<MapData>,
    pub reader: Array<MapData, u32>,
    pub stats: PerCpuArray<MapData, Stats>,
    pub run_stats: BpfHashMap<MapData, u64, RunStats>,
    /// The reader's mark, written every tick and at the end.
    pub mark: Array<MapData, ReaderMark>,
    /// Per-run counters already reported (pinned copy).
    pub run_stats_seen: BpfHashMap<MapData, u64, RunStats>,
}

/// Where the daemon picks up: the gap it closes (if a daemon ran before),
/// the previous reader's reported kernel losses, and the previous ring
/// when it could not be reused.
pub struct Resume {
    pub gap: Option<Gap>,
    pub lost_seen: [u64; SLOT_KINDS.len()],
    pub old_ring: Option<RingBuf<MapData>>,
    /// The state dir and boot id, for the last-seen file.
    pub state_dir: std::path::PathBuf,
    pub boot_id: String,
}

/// How the daemon stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// The programs stay attached and keep recording (and enforcing) into
    /// the pinned ring for the next daemon (the default).
    KeepRecording,
    /// Detach the programs (`--detach-on-exit`): nothing is recorded until
    /// a daemon starts again.
    Detach,
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A signal asked it to stop.
    Stopped,
    /// A new daemon took over.
    HandedOver,
}

/// Ticks between two writes of the state dir's last-seen file.
const LAST_SEEN_TICKS: u64 = 10;

/// Writes the reader's mark (pinned) and, with `file`, the state dir's
/// last-seen file.
fn write_mark(
    mark: &mut Array<MapData, ReaderMark>,
    pipeline: &Pipeline,
    state: u32,
    file: Option<(&std::path::Path, &str)>,
) {
    let value = pipeline.mark(state);
    if let Err(e) = mark.set(0, value, 0) {
        tracing::warn!(error = %e, "cannot write the reader's mark for the next daemon");
    }
    if let Some((state_dir, boot_id)) = file {
        let last = crate::recovery::LastSeen {
            boot_id: boot_id.to_owned(),
            unix_ns: value.unix_ns,
            pid: value.pid,
            state: crate::recovery::last_seen_state(state).to_owned(),
        };
        if let Err(e) = last.write(state_dir) {
            tracing::warn!(error = %e, "cannot write the last-seen file");
        }
    }
}

/// Runs until `shutdown` resolves (or a new daemon takes over), then stops
/// as `stop` says: reads what the kernel already produced, reports final
/// losses, leaves the mark for the next daemon and closes the outputs.
pub async fn run(
    kernel: KernelStreams,
    mut pipeline: Pipeline,
    resume: Resume,
    mut commands: tokio::sync::mpsc::Receiver<Command>,
    shutdown: impl Future<Output = ()>,
    stop: StopMode,
) -> Result<Ended, PipelineError> {
    let KernelStreams {
        mut probes,
        events,
        reader,
        stats,
        mut run_stats,
        mut mark,
        run_stats_seen,
    } = kernel;
    let Resume {
        gap,
        lost_seen,
        old_ring,
        state_dir,
        boot_id,
    } = resume;
    let last_seen = Some((state_dir.as_path(), boot_id.as_str()));
    let mut reader = Reader::new(reader);
    pipeline.state.set_links(probes.link_status());
    pipeline.state.set_generation(probes.generation());
    // What the kernel recorded while nobody read comes first: the gap and
    // its losses, then the old ring if it was replaced, then our ring, which
    // holds the rest in order.
    let kernel_stats = read_stats(&stats)?;
    pipeline.begin_recovery(
        gap,
        lost_seen,
        &kernel_stats,
        &mut run_stats,
        run_stats_seen,
    );
    if let Some(mut old) = old_ring {
        drain_all(&mut old, &mut pipeline);
        pipeline.flush();
    }
    write_mark(&mut mark, &pipeline, MARK_RUNNING, last_seen);
    // What start-up parsed and dropped (the kernel's BTF, /proc) goes back.
    pipeline.trim.now(std::time::Instant::now());
    // SAFETY: RingBuf owns its map fd and keeps it open, unchanged, for its
    // whole life, which the AsyncFd spans.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
            .map_err(|e| PipelineError::Poll(e.into()))?;
    let mut tick = tokio::time::interval(TICK);
    let mut ticks: u64 = 0;
    let mut drain_timer = tokio::time::interval(DRAIN_INTERVAL);
    drain_timer.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // systemd's watchdog: pinged from this loop only, so pings stop when it
    // stops (a stopped or hung daemon is restarted).
    let watchdog_on = pipeline.notifier.watchdog_interval().is_some();
    let mut watchdog = tokio::time::interval(pipeline.notifier.watchdog_interval().unwrap_or(TICK));
    watchdog.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The transcripts' reads: when due (a call settled, a poll), and on
    // inotify's word, at most every crate::transcripts::WAKE_GAP.
    let mut transcripts_timer = Box::pin(tokio::time::sleep(TICK));
    let mut transcripts_fd: Option<AsyncFd<crate::transcripts::follow::WakeFd>> = None;
    let mut transcripts_quiet_until = tokio::time::Instant::now();
    let mut file_changes = pipeline.file_changes.take();
    let mut detections = pipeline.detections.take();
    let mut run_probes = RunProbes::new();
    run_probes.check(&mut probes, &pipeline.builder, &pipeline.state);
    tokio::pin!(shutdown);
    let result = loop {
        run_probes.attach_for_new_runs(&mut probes, &pipeline.builder, &pipeline.state);
        if let Some(next) = pipeline.transcripts_rearm() {
            let now = tokio::time::Instant::now();
            let mut at = now + next.unwrap_or(TICK);
            if now < transcripts_quiet_until {
                at = at.min(transcripts_quiet_until);
            }
            transcripts_timer.as_mut().reset(at);
        }
        if transcripts_fd.is_none()
            && let Some(fd) = pipeline.transcripts_wake_fd()
        {
            // SAFETY: the WakeFd holds (an Arc of) the inotify instance, so
            // its fd stays open for as long as the AsyncFd that owns it.
            match unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) } {
                Ok(fd) => transcripts_fd = Some(fd),
                Err(e) => {
                    tracing::warn!(error = %e, "transcripts: cannot poll inotify");
                }
            }
        }
        let transcripts_awake = tokio::time::Instant::now() >= transcripts_quiet_until;
        tokio::select! {
            // In this order: under a flood the ring is always ready, and
            // control requests, shutdown and the 1 s tick (loss reports, TTLs)
            // must still come through promptly.
            biased;
            Some(command) = commands.recv() => {
                // What the kernel reported before the request is applied first
                // (bounded: under a steady flood the ring never empties, and
                // the request must still be answered).
                for _ in 0..COMMAND_DRAIN_ROUNDS {
                    if drain(ring.get_mut(), &mut pipeline, DRAIN_BUDGET).empty {
                        break;
                    }
                }
                run_probes.attach_for_new_runs(&mut probes, &pipeline.builder, &pipeline.state);
                if command.may_start_run() {
                    run_probes.attach(&mut probes, &pipeline.state);
                }
                pipeline.command(command);
                pipeline.flush();
                if pipeline.handover_requested() {
                    break Ok(Ended::HandedOver);
                }
            }
            () = &mut shutdown => break Ok(Ended::Stopped),
            Some(change) = next_file_change(&mut file_changes) => {
                // The process's records first (its spawn, exec, exit), so
                // that it is known by the time its change is reported.
                drain(ring.get_mut(), &mut pipeline, DRAIN_BUDGET);
                pipeline.file_change(&change);
            }
            Some(m) = next_detection(&mut detections) => {
                pipeline.detection(m);
                // What else is there, bounded.
                for _ in 0..DETECTIONS_PER_ROUND {
                    match detections.as_mut().map(tokio::sync::mpsc::Receiver::try_recv) {
                        Some(Ok(m)) => pipeline.detection(m),
                        _ => break,
                    }
                }
                pipeline.flush();
            }
            _ = tick.tick() => {
                if reader.asleep {
                    // Still here: renew the lease first, so that a record
                    // sent after this drain wakes the reader again.
                    reader.set_asleep(true);
                    // A record sent without a wakeup as the reader fell
                    // asleep, or after its lease ran out (the loop was held
                    // up, or the process stopped).
                    drain(ring.get_mut(), &mut pipeline, DRAIN_BUDGET);
                }
                run_probes.attach_for_new_runs(&mut probes, &pipeline.builder, &pipeline.state);
                let lost_by_run = pipeline.check_run_stats(&mut run_stats);
                // Read before the policy maps are compared (check_integrity).
                let foreign_bpf = match read_stats(&stats) {
                    Ok(s) => {
                        pipeline.check_losses(&s, lost_by_run);
                        Some(s.foreign_bpf)
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "kernel counters");
                        None
                    }
                };
                let now = std::time::SystemTime::now();
                let expired = pipeline.builder.expire(now);
                pipeline.run_changes(&expired);
                pipeline.builder.attribution_mut().forget_ended(now);
                pipeline.give_back_memory();
                pipeline.control.tick(&pipeline.builder);
                ticks += 1;
                if ticks.is_multiple_of(REFRESH_TICKS) {
                    pipeline.builder.refresh_policies(std::time::Instant::now());
                }
                if ticks.is_multiple_of(SWEEP_TICKS) {
                    let swept = pipeline.builder.attribution_mut().sweep(now);
                    pipeline.run_changes(&swept);
                }
                pipeline.report_deferred_files();
                pipeline.checkpoints_due();
                pipeline.flush();
                pipeline.save_seq();
                if let Ok(clock) = Clock::now() {
                    pipeline.builder.set_clock(clock);
                }
                run_probes.check(&mut probes, &pipeline.builder, &pipeline.state);
                pipeline.check_integrity(&mut probes, foreign_bpf);
                let file = last_seen.filter(|_| ticks.is_multiple_of(LAST_SEEN_TICKS));
                write_mark(&mut mark, &pipeline, MARK_RUNNING, file);
                // A canary round's records may wait in the ring: take what is
                // there (bounded) before judging it.
                let caught_up = pipeline.canary_pending()
                    && (0..CANARY_DRAIN_ROUNDS)
                        .any(|_| drain(ring.get_mut(), &mut pipeline, DRAIN_BUDGET).empty);
                pipeline.check_canary(caught_up);
                run_probes.attach_for_new_runs(&mut probes, &pipeline.builder, &pipeline.state);
                pipeline.flush();
            }
            () = &mut transcripts_timer, if pipeline.transcripts_following() => {
                pipeline.transcripts_poll();
                pipeline.flush();
                let next = pipeline.transcripts_next_read().unwrap_or(TICK);
                let mut at = tokio::time::Instant::now() + next;
                if !transcripts_awake {
                    // inotify's word waits for the quiet time to pass.
                    at = at.min(transcripts_quiet_until);
                }
                transcripts_timer.as_mut().reset(at);
            }
            guard = transcripts_readable(transcripts_fd.as_ref()), if transcripts_awake => {
                pipeline.transcripts_wake();
                pipeline.flush();
                if let Ok(mut guard) = guard {
                    guard.clear_ready();
                }
                transcripts_quiet_until = tokio::time::Instant::now() + crate::transcripts::WAKE_GAP;
                let next = pipeline.transcripts_next_read().unwrap_or(TICK);
                let at = (tokio::time::Instant::now() + next).min(transcripts_quiet_until);
                transcripts_timer.as_mut().reset(at);
            }
            _ = watchdog.tick(), if watchdog_on => pipeline.notifier.watchdog(),
            guard = ring.readable_mut() => {
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => break Err(PipelineError::Poll(e)),
                };
                if reader.asleep && reader.woken_busy() && reader.set_asleep(false) {
                    // Records keep coming: drain on the timer again.
                    drain_timer.reset();
                }
                let paced = drain_paced(guard.get_inner_mut(), &mut pipeline, DRAIN_BUDGET);
                // Before the run's start goes out.
                run_probes.attach_for_new_runs(&mut probes, &pipeline.builder, &pipeline.state);
                pipeline.flush();
                if paced.held {
                    // A consumer is behind: the records wait in the ring, and
                    // the drain timer (awake) comes back for them.
                    guard.clear_ready();
                    if reader.set_asleep(false) {
                        drain_timer.reset();
                    }
                } else if paced.drained.empty {
                    guard.clear_ready();
                } else {
                    tokio::task::yield_now().await;
                }
            }
            _ = drain_timer.tick(), if !reader.asleep => {
                let paced = drain_paced(ring.get_mut(), &mut pipeline, DRAIN_BUDGET);
                if paced.drained.records == 0 && !paced.held && reader.set_asleep(true) {
                    // What came before the kernel saw the change was sent
                    // without a wakeup: take it now, and stay awake if any.
                    if drain(ring.get_mut(), &mut pipeline, DRAIN_BUDGET).records > 0 {
                        reader.set_asleep(false);
                    }
                }
                // Before the run's start goes out.
                run_probes.attach_for_new_runs(&mut probes, &pipeline.builder, &pipeline.state);
                pipeline.flush();
            }
        }
    };
    pipeline
        .notifier
        .stopping("stopping: writing every event already read");
    // Stop producing first, then take everything already in the ring.
    pipeline.state.set_ready(false);
    // Programs left attached must not wake a reader that is gone.
    reader.set_asleep(false);
    let ended = match result {
        Ok(e) => e,
        Err(e) => {
            // The ring cannot be polled: leave what it holds to the next daemon.
            write_mark(&mut mark, &pipeline, MARK_RUNNING, last_seen);
            pipeline.close();
            return Err(e);
        }
    };
    let links_dir = probes.pin_dir().join(sensor_common::maps::LINKS_DIR);
    let final_state = match (ended, stop) {
        // The new daemon reads the ring from here: nothing more is taken.
        (Ended::HandedOver, _) => MARK_HANDED_OVER,
        (Ended::Stopped, StopMode::KeepRecording) => {
            // The pins are what keeps recording and enforcing once we are
            // gone: put back any that went since the last tick.
            pipeline.check_integrity(&mut probes, None);
            // What the ring holds now is ours to write; what comes after
            // waits there for the next daemon.
            drain_all(ring.get_mut(), &mut pipeline);
            MARK_STOPPED
        }
        (Ended::Stopped, StopMode::Detach) => {
            if let Err(e) = probes.persist(false) {
                tracing::error!(error = %e, "cannot unpin the program links");
            }
            MARK_DETACHED
        }
    };
    log_stop(&probes.stop(), &links_dir);
    if final_state == MARK_DETACHED {
        // Stopped producing: take everything already in the ring.
        drain_all(ring.get_mut(), &mut pipeline);
    }
    pipeline.report_deferred_files();
    let lost_by_run = pipeline.check_run_stats(&mut run_stats);
    match read_stats(&stats) {
        Ok(s) => pipeline.check_losses(&s, lost_by_run),
        Err(e) => tracing::warn!(error = %e, "kernel counters"),
    }
    pipeline.finish_detection(&mut detections);
    let reply = pipeline.control.take_handover();
    // The mark and the seq file before the reply: the new daemon starts
    // from them as soon as this process is gone.
    pipeline.flush();
    let next_seq = pipeline.builder.next_seq();
    write_mark(&mut mark, &pipeline, final_state, last_seen);
    pipeline.close();
    if let Some(reply) = reply {
        let _ = reply.send(Response::HandedOver { next_seq });
    }
    Ok(ended)
}

/// Matches taken from the detection thread at once, at most.
const DETECTIONS_PER_ROUND: usize = 512;

/// The detection thread's next match; pending for good once there is none.
/// The inotify fd of the transcripts ready to be read (never, without one).
async fn transcripts_readable(
    fd: Option<&AsyncFd<crate::transcripts::follow::WakeFd>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, crate::transcripts::follow::WakeFd>> {
    match fd {
        Some(fd) => fd.readable().await,
        None => std::future::pending().await,
    }
}

async fn next_detection(
    matches: &mut Option<tokio::sync::mpsc::Receiver<crate::detect::Match>>,
) -> Option<crate::detect::Match> {
    if let Some(rx) = matches {
        rx.recv().await
    } else {
        std::future::pending().await
    }
}

/// The file watch's next report; pending for good once there is no watch
/// (or it ended).
async fn next_file_change(
    changes: &mut Option<tokio::sync::mpsc::Receiver<FileChange>>,
) -> Option<FileChange> {
    if let Some(rx) = changes {
        if let Some(change) = rx.recv().await {
            return Some(change);
        }
        tracing::error!(
            "the file watch ended; changes to the sensor's files are no longer reported"
        );
        *changes = None;
    }
    std::future::pending().await
}

/// Says what stays attached now that the daemon let go of its programs, as
/// the kernel says it (see [`Probes::stop`]), never as assumed.
fn log_stop(report: &crate::loader::StopReport, links_dir: &std::path::Path) {
    let total = report.total;
    if report.pinned {
        if report.lost.is_empty() {
            tracing::warn!(
                programs = ?report.staying,
                "{} of {total} kernel programs stay attached and keep recording (into the pinned \
                 ring, read by the next daemon) and enforcing until the daemon is back (checked in \
                 the kernel: each is held by an attached link pinned in {}); `sensor unload` or \
                 `sensor daemon --detach-on-exit` removes them",
                report.staying.len(),
                links_dir.display()
            );
        } else {
            tracing::error!(
                staying = ?report.staying,
                lost = ?report.lost,
                "{} of {total} kernel programs stay attached; {} do NOT (their pin is gone, their \
                 link detached or the program unloaded): what they recorded and enforced no \
                 longer is",
                report.staying.len(),
                report.lost.len()
            );
        }
    } else if report.unchecked {
        tracing::info!(
            "every kernel program let go of (not checked: listing the kernel's programs needs \
             CAP_SYS_ADMIN); nothing was pinned, so none stays attached by the sensor"
        );
    } else if report.still_loaded.is_empty() {
        tracing::info!(
            "every kernel program detached (checked: none of the {total} program ids is loaded any more)"
        );
    } else {
        tracing::warn!(
            programs = ?report.still_loaded,
            "{} of {total} kernel programs are still loaded after the daemon let go of them: \
             something else holds them (see `bpftool prog show id ID`)",
            report.still_loaded.len()
        );
    }
}

#[cfg(test)]
mod tests {
    use sensor_common::event::{EventHeader, EventKind, ExitData};

    use super::*;
    use crate::{
        identity::{Host, ProcessKeys},
        record::{RawEvent, encode},
        sinks::OutputSpec,
    };

    fn pipeline(path: &std::path::Path) -> (Pipeline, Arc<DaemonState>) {
        let state = Arc::new(DaemonState::default());
        let spec: OutputSpec = format!("file:{}", path.display()).parse().unwrap();
        let outputs = Outputs::open(
            &[spec],
            &crate::sinks::OutputContext {
                state_dir: std::env::temp_dir(),
                hostname: "h".into(),
                instance_id: "i".into(),
            },
        )
        .unwrap();
        state.set_outputs(outputs.handles());
        let keys = ProcessKeys::new("b", 100);
        let attribution = crate::attribution::Attribution::new(
            keys.clone(),
            Box::new(std::collections::HashMap::new()),
            crate::attribution::RunTable::new(),
            None,
        );
        let builder = Engine::new(
            Host {
                name: "h".into(),
                boot_id: "b".into(),
            },
            keys,
            Clock::with_offset(0),
            attribution,
        );
        (Pipeline::new(builder, outputs, Arc::clone(&state)), state)
    }

    /// User-space pipeline throughput: spawn/exec/exit records of short-lived
    /// processes replayed through decode → attribution → JSON → an output,
    /// on this thread. Run with
    /// `cargo test --release -p sensor pipeline_throughput -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement; run on demand or from the bench"]
    fn pipeline_throughput() {
        use sensor_common::event::{ExecData, SpawnData};

        use crate::record::ExecStrings;
        let (mut p, state) = pipeline(std::path::Path::new("/dev/null"));
        let header = |kind: EventKind, pid: u32| EventHeader {
            kind: kind as u32,
            ktime_ns: 1,
            tgid: pid,
            tid: pid,
            ppid: 1000,
            start_ns: u64::from(pid) * 10_000_000,
            parent_start_ns: 5,
            comm: *b"true\0\0\0\0\0\0\0\0\0\0\0\0",
            ..EventHeader::default()
        };
        let n: u32 = 100_000;
        let records: Vec<[Vec<u8>; 3]> = (0..n)
            .map(|i| {
                let pid = 10_000 + i;
                let exe = b"/usr/bin/true".to_vec();
                [
                    encode(&RawEvent::Spawn {
                        header: header(EventKind::ProcessSpawn, pid),
                        data: SpawnData {
                            exe_len: 13,
                            ..SpawnData::default()
                        },
                        exe: b"/usr/bin/bash".to_vec(),
                    }),
                    encode(&RawEvent::Exec {
                        header: header(EventKind::ProcessExec, pid),
                        data: ExecData {
                            exe_len: 13,
                            cwd_len: 10,
                            filename_len: 9,
                            argv_len: 25,
                            argv_orig_len: 25,
                            argc: 2,
                            old_tid: pid,
                            ..ExecData::default()
                        },
                        strings: ExecStrings {
                            exe: exe.clone(),
                            cwd: b"/home/user".to_vec(),
                            filename: b"/bin/true".to_vec(),
                            argv: b"/bin/true\0marker-0123456\0".to_vec(),
                        },
                        failed: false,
                    }),
                    encode(&RawEvent::Exit {
                        header: header(EventKind::ProcessExit, pid),
                        data: ExitData::default(),
                    }),
                ]
            })
            .collect();
        let started = std::time::Instant::now();
        for r in &records {
            for rec in r {
                p.handle_record(rec);
            }
        }
        p.flush();
        let elapsed = started.elapsed();
        let events = f64::from(n) * 3.0;
        println!(
            "pipeline: {events} events in {:.3} s = {:.0} events/s ({:.2} us/event)",
            elapsed.as_secs_f64(),
            events / elapsed.as_secs_f64(),
            elapsed.as_secs_f64() * 1e6 / events
        );
        p.close();
        assert_eq!(state.report().events["total"], u64::from(n) * 3);
    }

    #[test]
    fn status_counts_the_readers_holds() {
        let dir = tempfile::tempdir().unwrap();
        let (mut p, state) = pipeline(&dir.path().join("e.jsonl"));
        let backlog = p.outputs.backlogs().remove(0);
        assert!(!p.pressure.holding());
        // An output behind that still takes: the reader holds.
        backlog.queued(crate::sinks::backlog::HOLD_EVENTS as usize + 1);
        assert!(p.pressure.holding());
        assert!(p.pressure.holding());
        p.give_back_memory();
        assert_eq!(state.report().reader_holds, 2);
        backlog.took(crate::sinks::backlog::HOLD_EVENTS as usize + 1);
        assert!(!p.pressure.holding());
        p.give_back_memory();
        let report = serde_json::to_value(state.report()).unwrap();
        assert_eq!(report["reader_holds"], 2);
    }

    #[test]
    fn records_become_lines_and_losses_become_events() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let (mut p, state) = pipeline(&path);
        let exit = encode(&RawEvent::Exit {
            header: EventHeader {
                kind: EventKind::ProcessExit as u32,
                tgid: 10,
                ..EventHeader::default()
            },
            data: ExitData::default(),
        });
        for _ in 0..3 {
            p.handle_record(&exit);
        }
        p.handle_record(&[1, 2, 3]);
        let mut kernel = Stats::default();
        kernel.lost[EventKind::ProcessExec.slot()] = 5;
        p.check_losses(&kernel, std::collections::BTreeMap::new());
        // No new loss: no second report.
        p.check_losses(&kernel, std::collections::BTreeMap::new());
        p.close();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[3]["kind"], "sensor.lost");
        assert_eq!(lines[3]["lost"]["total"], 5);
        assert_eq!(lines[3]["lost"]["by_kind"]["process.exec"], 5);
        let seqs: Vec<u64> = lines.iter().map(|l| l["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, [1, 2, 3, 4]);
        let report = state.report();
        assert_eq!(report.lost.total, 5);
        assert_eq!(report.decode_errors, 1);
        assert_eq!(report.events["process.exit"], 3);
        assert_eq!(report.outputs[0].written, 4);
        assert_eq!(report.outputs[0].dropped, 0);
    }
    /// After a restart: a record another generation of the programs wrote
    /// is marked recovered; one of another wire layout is not misread but
    /// counted and reported as lost, by version.
    #[test]
    fn records_of_another_generation_are_recovered_and_of_another_layout_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let (p, state) = pipeline(&path);
        let mut p = p.with_generation(2);
        let exit = |generation: u32| {
            encode(&RawEvent::Exit {
                header: EventHeader {
                    kind: EventKind::ProcessExit as u32,
                    tgid: 10,
                    generation,
                    ..EventHeader::default()
                },
                data: ExitData::default(),
            })
        };
        p.handle_record(&exit(1));
        p.handle_record(&exit(2));
        let mut old_layout = exit(1);
        old_layout[2] = 0;
        old_layout[3] = 0;
        p.handle_record(&old_layout);
        p.check_losses(&Stats::default(), std::collections::BTreeMap::new());
        p.close();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0]["delivery"], "recovered");
        assert!(lines[1].get("delivery").is_none());
        assert_eq!(lines[2]["kind"], "sensor.lost");
        assert_eq!(lines[2]["lost"]["unreadable"]["0"], 1);
        assert_eq!(state.report().decode_errors, 1);
        assert_eq!(state.report().recovered, 1);
    }

    fn file_change(pid: u32, path: &str, ops: &[What]) -> FileChange {
        FileChange {
            pid,
            ops: ops.iter().fold(0, |b, w| b | (1 << *w as u8)),
            path: path.into(),
            to: None,
            moved_in: false,
            area: files::Area::State,
            root: "/s".into(),
            dir: false,
            events: 1,
            suppressed: 0,
        }
    }

    /// A file watch report: by a process the daemon knows nothing of, the
    /// pid alone, no run, no policy. One the kernel already reported (its
    /// open for writing under the same protected path, by the same process)
    /// is left out; an unlink by that process is not.
    #[test]
    fn file_changes_are_reported_once() {
        use sensor_common::event::{SENSOR_FILE_STATE, TAMPER_SENSOR_FILE, TamperData};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let (p, state) = pipeline(&path);
        let stats = Arc::new(files::Stats::default());
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let mut p = p.with_file_watch(files::FileWatch {
            changes: rx,
            stats: Arc::clone(&stats),
        });
        p.builder.set_protected(vec![((5, 9), "/s".to_owned())]);
        let pid = 4_190_003;
        p.handle_record(&encode(&RawEvent::Tamper {
            header: EventHeader {
                kind: EventKind::Tamper as u32,
                tgid: pid,
                ..EventHeader::default()
            },
            data: TamperData {
                method: TAMPER_SENSOR_FILE,
                file_dev: 5,
                file_ino: 9,
                file_kind: SENSOR_FILE_STATE,
                ..TamperData::default()
            },
        }));
        p.file_change(&file_change(pid, "/s/f", &[What::Create, What::Attrib]));
        p.file_change(&file_change(pid, "/s/f", &[What::Unlink]));
        p.file_change(&file_change(pid + 1, "/s/g", &[What::Modify]));
        // Nothing is known of these pids: reported at the tick.
        p.report_deferred_files();
        p.close();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let methods: Vec<(&str, &str)> = lines
            .iter()
            .map(|l| {
                (
                    l["tamper"]["method"].as_str().unwrap(),
                    l["tamper"]["what"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            methods,
            [
                ("sensor_file", "open for writing of a sensor file"),
                ("file", "unlink"),
                ("file", "modify"),
            ]
        );
        let g = &lines[2];
        assert_eq!(g["process"]["pid"], pid + 1);
        assert!(g["run"].is_null() && g.get("policy").is_none());
        assert_eq!(g["tamper"]["detected"], "after");
        assert_eq!(g["tamper"]["file"]["path"], "/s/g");
        assert_eq!(g["tamper"]["file"]["kind"], "state");
        assert!(g["tamper"].get("killed").is_none());
        let fw = state.report().file_watch.unwrap();
        assert_eq!((fw.reported, fw.duplicates), (2, 1));
    }

    /// A change by a process nothing is known of yet waits for the tick
    /// (its records may still be in the ring), then is reported once.
    #[test]
    fn a_change_by_an_unknown_process_waits_for_its_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let (p, _) = pipeline(&path);
        let (_tx, rx) = tokio::sync::mpsc::channel(1);
        let mut p = p.with_file_watch(files::FileWatch {
            changes: rx,
            stats: Arc::new(files::Stats::default()),
        });
        let pid = 4_190_004;
        p.file_change(&file_change(pid, "/s/f", &[What::Unlink]));
        p.flush();
        assert!(
            std::fs::read_to_string(&path)
                .unwrap_or_default()
                .is_empty()
        );
        // Its records come: a spawn (then its exit) of that pid.
        let h = EventHeader {
            kind: EventKind::ProcessSpawn as u32,
            tgid: pid,
            tid: pid,
            start_ns: 77 * 10_000_000,
            ..EventHeader::default()
        };
        p.handle_record(&encode(&RawEvent::Spawn {
            header: h,
            data: sensor_common::event::SpawnData::default(),
            exe: Vec::new(),
        }));
        p.handle_record(&encode(&RawEvent::Exit {
            header: EventHeader {
                kind: EventKind::ProcessExit as u32,
                ..h
            },
            data: ExitData::default(),
        }));
        p.report_deferred_files();
        p.report_deferred_files();
        p.close();
        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|l: &serde_json::Value| l["kind"] == "sensor.tamper")
            .collect();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["process"]["pid"], pid);
        assert_eq!(
            lines[0]["process"]["key"],
            p_key(pid, 77 * 10_000_000),
            "named with its start time, from its exit record"
        );
    }

    fn p_key(pid: u32, start_ns: u64) -> String {
        ProcessKeys::new("b", 100).key(pid, start_ns)
    }
}

//! The engine: turns decoded kernel records into events. It owns
//! attribution (which run a process is in), the policies (the verdicts)
//! and the kernel enforcement state (the maps the verdicts are enforced
//! from), and the sequence numbers. Everything it produces is typed
//! ([`crate::event`]); the pipeline fans it out to the outputs.

pub mod file_tamper;
pub mod sequence;

use std::{net::IpAddr, sync::Arc, time::SystemTime};

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use sensor_common::event::{
    ConnectData, EventHeader, ExecData, PATH_TRUNCATED, UnixConnectData, VIA_SENDMSG,
};

use crate::{
    attribution::{Attribution, ExecView, Halt, How, Placement, Run, RunChange},
    event::{
        Blind, Degraded, Event, Exec, ExecResult, Gap, Kind, Lost, NetResult, Network, Process,
        RunRef, Tamper, TamperFile, TamperTarget, Timestamp,
        text::{errno_name, escape_bytes},
    },
    identity::{Clock, Host, ProcessKeys},
    policy::effects::{Apply, EffectError, Effects, RunEffect},
    record::{ExecStrings, RawEvent},
};

/// A launch refused by `max_depth`.
pub struct DepthRefusal {
    pub message: String,
    pub violation: Event,
}

/// Why the engine did not take new policies (the running ones stay).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "policy {policy:?} is gone from the config, but run {run} is bound to it; \
         keep it until the run ends"
    )]
    PolicyInUse { policy: String, run: String },
    /// The kernel's message is part of this one (not a source), as it has
    /// always been answered.
    #[error("the kernel maps could not take the new policies: {0}")]
    Kernel(crate::policy::kernel::EnforcementError),
}

/// Turns decoded records into events; owns the sequence counter and the
/// process table that supplies what a record does not carry (the exe of an
/// exiting or connecting process).
pub struct Engine {
    host: Arc<Host>,
    keys: ProcessKeys,
    clock: Clock,
    next_seq: u64,
    attribution: Attribution,
    policies: crate::policy::Policies,
    /// The kernel's policy maps (absent in tests without a kernel).
    enforcement: Option<crate::policy::kernel::Enforcement>,
    /// What applies the run effects (binds and unbinds to `enforcement`,
    /// kills); a recorder in unit tests.
    effects: Box<dyn Effects>,
    /// The sensor's files and directories by kernel identity.
    protected: std::collections::HashMap<(u32, u64), String>,
    /// Without kernel maps (a replay): what the recording daemon's policy
    /// ids stood for.
    recorded_ids: Option<crate::policy::kernel::IdNames>,
    /// The exe paths handed to the process table, shared: a host runs the
    /// same few binaries over and over, and each spawn and exec copied its
    /// path into a new allocation (cleared when [`EXES_KEPT`] are held).
    exes: std::collections::HashSet<Arc<str>>,
}

/// Exe paths [`Engine`] shares at most before it starts over.
const EXES_KEPT: usize = 1024;

impl Engine {
    #[must_use]
    pub fn new(host: Host, keys: ProcessKeys, clock: Clock, attribution: Attribution) -> Self {
        Self {
            host: Arc::new(host),
            keys,
            clock,
            next_seq: 1,
            attribution,
            policies: crate::policy::Policies::default(),
            enforcement: None,
            effects: Box::new(Apply),
            protected: std::collections::HashMap::new(),
            recorded_ids: None,
            exes: std::collections::HashSet::new(),
        }
    }

    /// A replay of recorded records: their kernel decisions are named from
    /// the recording daemon's policy ids.
    #[must_use]
    pub fn with_recorded_ids(mut self, ids: crate::policy::kernel::IdNames) -> Self {
        self.recorded_ids = Some(ids);
        self
    }

    /// Applies the run effects with `effects` instead of the daemon's
    /// [`Apply`] (unit tests record them).
    #[must_use]
    pub fn with_effects(mut self, effects: Box<dyn Effects>) -> Self {
        self.effects = effects;
        self
    }

    /// Applies one run effect (see [`crate::policy::effects`]).
    fn emit(&mut self, effect: &RunEffect) -> Result<(), EffectError> {
        self.effects.apply(effect, self.enforcement.as_mut())
    }

    /// Keeps the kernel's policy maps in step: policies installed, runs bound.
    pub fn with_enforcement(
        mut self,
        mut enforcement: crate::policy::kernel::Enforcement,
    ) -> Result<Self, crate::policy::kernel::EnforcementError> {
        enforcement.install(&self.policies)?;
        self.enforcement = Some(enforcement);
        Ok(self)
    }

    /// Binds every active run to its policy in the kernel and unbinds the
    /// handles no active run has (start-up, after the run state was
    /// restored); then the previous daemon's policy slots are released.
    pub fn bind_runs(&mut self) {
        if self.enforcement.is_none() {
            return;
        }
        let active: Vec<(u64, Option<String>, Option<u64>)> = self
            .attribution
            .runs()
            .map(|r| {
                let parent = r
                    .parent_id
                    .as_deref()
                    .and_then(|id| self.attribution.handle_of(id));
                (r.handle, r.policy.clone(), parent)
            })
            .collect();
        let live: std::collections::BTreeSet<u64> = active.iter().map(|(h, _, _)| *h).collect();
        // Parents before children (handles grow with creation), so a sub-run
        // finds its parent's counter.
        let mut sorted = active;
        sorted.sort_unstable_by_key(|(h, _, _)| *h);
        for (handle, policy, parent) in sorted {
            if let Some(name) = policy.as_deref().filter(|p| !self.policies.contains(p)) {
                tracing::warn!(
                    handle,
                    policy = name,
                    "a restored run's policy is not in the config: the run is no longer checked"
                );
            }
            let policy = policy.filter(|p| self.policies.contains(p));
            let bind = RunEffect::Bind {
                run: handle,
                policy,
                parent,
            };
            match self.emit(&bind) {
                Ok(()) => {}
                // The kernel's own error, as before (the run is not refused
                // here: it was running).
                Err(EffectError::Bind(crate::policy::kernel::BindRefusal::Failed {
                    error,
                    ..
                })) => {
                    tracing::error!(handle, %error, "cannot bind a run to its policy in the kernel");
                }
                Err(e) => {
                    tracing::error!(handle, error = %e, "cannot bind a run to its policy in the kernel");
                }
            }
        }
        let bound = self
            .enforcement
            .as_ref()
            .map(crate::policy::kernel::Enforcement::bound_runs)
            .unwrap_or_default();
        for handle in bound {
            if !live.contains(&handle) {
                // (An unbind does not fail.)
                let _ = self.emit(&RunEffect::Unbind { run: handle });
            }
        }
        if let Some(enforcement) = &mut self.enforcement {
            enforcement.release_previous();
        }
    }

    /// Resolves the policies' files and host names again and updates the
    /// kernel maps of those that changed; drops replaced rules past their grace.
    pub fn refresh_policies(&mut self, now: std::time::Instant) {
        let changed = self.policies.refresh();
        let Some(enforcement) = &mut self.enforcement else {
            return;
        };
        for name in changed {
            if let Some(policy) = self.policies.get(&name)
                && let Err(e) = enforcement.update(policy)
            {
                tracing::error!(policy = %name, error = %e, "cannot update the kernel policy maps");
            }
        }
        enforcement.tick(now);
    }

    /// Sets the policies runs are checked against.
    #[must_use]
    pub fn with_policies(mut self, policies: crate::policy::Policies) -> Self {
        self.policies = policies;
        self
    }

    /// Replaces the policies (a validated reload): the kernel switches to
    /// them first; on any error the running ones stay in force. A policy that
    /// active runs are bound to cannot be dropped.
    pub fn set_policies(&mut self, policies: crate::policy::Policies) -> Result<(), ReloadError> {
        if let Some(run) = self
            .attribution
            .runs()
            .find(|r| r.policy.as_ref().is_some_and(|p| !policies.contains(p)))
        {
            return Err(ReloadError::PolicyInUse {
                policy: run.policy.clone().unwrap_or_default(),
                run: run.id.clone(),
            });
        }
        if let Some(enforcement) = &mut self.enforcement {
            enforcement
                .install(&policies)
                .map_err(ReloadError::Kernel)?;
        }
        self.policies = policies;
        Ok(())
    }

    /// The policies (to validate `launch --policy`).
    #[must_use]
    pub fn policies(&self) -> &crate::policy::Policies {
        &self.policies
    }

    /// The policies in force for `sensor status` and `/metrics`: each with
    /// its mode, version, active runs and kernel slot.
    #[must_use]
    pub fn policy_status(&self) -> crate::status::PoliciesStatus {
        let mut runs: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        for run in self.attribution.runs() {
            if let Some(p) = run.policy.as_deref() {
                *runs.entry(p).or_default() += 1;
            }
        }
        crate::status::PoliciesStatus {
            version: self.policies.version(),
            policies: self
                .policies
                .iter()
                .map(|p| {
                    let kernel = self
                        .enforcement
                        .as_ref()
                        .and_then(|k| k.slot_and_id(&p.name));
                    crate::status::PolicyStatus {
                        name: p.name.clone(),
                        mode: p.mode.as_str().to_owned(),
                        version: p.version,
                        runs_active: runs.get(p.name.as_str()).copied().unwrap_or(0),
                        slot: kernel.map(|(slot, _)| slot),
                        id: kernel.map(|(_, id)| id),
                    }
                })
                .collect(),
            hidden: false,
        }
    }

    /// Names the kernel's decision on an exec, connect or spawn event (or,
    /// for an exec or connect the kernel did not decide on, checks it against
    /// the run's policy here); a denial is followed by a `policy.violation`.
    fn apply_policy(
        &mut self,
        mut e: Event,
        run: u64,
        decision: &sensor_common::policy::Decision,
        out: &mut Vec<Event>,
    ) {
        let list = match (&e.network, &e.tamper) {
            (_, Some(_)) => "tamper",
            (Some(_), _) if e.kind == Kind::NetworkSocket => "raw_sockets",
            (Some(n), _) if n.family == "unix" => "unix.allow",
            (Some(_), _) => "connect.allow",
            (None, None) => "exec.allow",
        };
        let decided = match &self.enforcement {
            Some(k) => k.describe(decision, list),
            // A replay: the ids the recording daemon had.
            None => self
                .recorded_ids
                .as_ref()
                .and_then(|ids| ids.describe_decision(decision, list)),
        };
        let verdict = match decided {
            Some(v) => Some(v),
            None if e.kind == Kind::ProcessSpawn => None,
            None => {
                let Some(policy) = self
                    .attribution
                    .run_policy(run)
                    .and_then(|name| self.policies.get(name))
                else {
                    out.push(e);
                    return;
                };
                match (&e.process, &e.exec, &e.network) {
                    (Some(p), Some(x), _) if x.result == ExecResult::Ok => {
                        let dev = x.dev_raw.map_or(0, crate::policy::kernel_dev_to_st_dev);
                        Some(policy.check_exec(
                            p.exe.as_deref().unwrap_or(""),
                            dev,
                            x.inode.unwrap_or(0),
                            x.mnt_id,
                        ))
                    }
                    (_, _, Some(n)) => match (n.dst_ip, n.dst_port) {
                        (Some(ip), Some(port)) => Some(policy.check_connect(ip, port)),
                        // Unix connects are always decided in the kernel.
                        _ => None,
                    },
                    _ => None,
                }
            }
        };
        // A spawn carries a verdict only when max_processes refused it.
        e.policy = verdict.filter(|v| e.kind != Kind::ProcessSpawn || v.is_deny());
        let violation = e
            .policy
            .as_ref()
            .is_some_and(crate::policy::Verdict::is_deny)
            .then(|| {
                let mut v = e.clone();
                v.kind = Kind::PolicyViolation;
                v
            });
        out.push(e);
        if let Some(mut v) = violation {
            v.seq = self.seq();
            out.push(v);
        }
    }

    /// The attribution stage (runs, processes).
    #[must_use]
    pub fn attribution(&self) -> &Attribution {
        &self.attribution
    }

    /// The attribution stage, to act on it (launch, restore, expire).
    pub fn attribution_mut(&mut self) -> &mut Attribution {
        &mut self.attribution
    }

    /// Start time (clock ticks) and parent of a live process, from /proc.
    fn proc_start(&self, pid: u32) -> Option<(u64, u32)> {
        crate::identity::proc_start_in(self.attribution.proc_root(), pid)
    }

    /// The exe of a live process: from the table, else from /proc.
    fn known_exe(&self, pid: u32, start_ns: u64) -> Option<String> {
        if let Some(exe) = self
            .attribution
            .processes()
            .get(pid, start_ns)
            .and_then(|p| p.exe.as_deref())
        {
            return Some(exe.to_owned());
        }
        std::fs::read_link(
            self.attribution
                .proc_root()
                .join(pid.to_string())
                .join("exe"),
        )
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
    }

    /// `exe` as the process table keeps it: the shared copy.
    fn shared_exe(&mut self, exe: Option<&str>) -> Option<Arc<str>> {
        let exe = exe?;
        if let Some(shared) = self.exes.get(exe) {
            return Some(Arc::clone(shared));
        }
        if self.exes.len() >= EXES_KEPT {
            self.exes.clear();
        }
        let shared: Arc<str> = Arc::from(exe);
        self.exes.insert(Arc::clone(&shared));
        Some(shared)
    }

    /// Re-measures the boot-time to wall-clock offset (NTP steps, suspend).
    pub fn set_clock(&mut self, clock: Clock) {
        self.clock = clock;
    }

    /// The seq the next event gets.
    #[must_use]
    pub const fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Numbers events from `next` on (a restart continues the sequence).
    #[must_use]
    pub fn with_first_seq(mut self, next: u64) -> Self {
        self.next_seq = next.max(1);
        self
    }

    fn seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn envelope(&mut self, kind: Kind, time: SystemTime) -> Event {
        let seq = self.seq();
        Event::new(kind, seq, Timestamp(time), Arc::clone(&self.host))
    }

    /// An event of a process's own act (a connect, a socket, a tamper): the
    /// process as it is known, with its exe, and its run (the run's handle
    /// too, for the policy).
    fn act(&mut self, kind: Kind, time: SystemTime, h: &EventHeader) -> (Event, u64) {
        let mut e = self.envelope(kind, time);
        let mut p = self.process(h);
        p.exe = self.known_exe(h.tgid, h.start_ns);
        let placed = self.attribution.on_other(h);
        e.run = self.attribution.run_ref(placed);
        e.process = Some(p);
        (e, placed.run)
    }

    fn process(&self, h: &EventHeader) -> Process {
        let (start_ns, ppid, parent_start_ns) = (h.start_ns, h.ppid, h.parent_start_ns);
        let (key, parent_key, ppid) = if start_ns == 0 {
            // Reported outside a syscall (io_uring): the kernel had no task to read; ask /proc.
            match self.proc_start(h.tgid) {
                Some((ticks, ppid)) => {
                    let parent_key = self
                        .proc_start(ppid)
                        .map(|(pt, _)| self.keys.key_from_ticks(ppid, pt))
                        .unwrap_or_default();
                    (self.keys.key_from_ticks(h.tgid, ticks), parent_key, ppid)
                }
                None => (self.keys.key(h.tgid, 0), String::new(), ppid),
            }
        } else {
            (
                self.keys.key(h.tgid, start_ns),
                self.keys.key(ppid, parent_start_ns),
                ppid,
            )
        };
        Process {
            key,
            pid: h.tgid,
            ns_pid: (h.pid_ns_level > 0).then_some(h.ns_tgid),
            tid: h.tid,
            ppid,
            parent_key,
            uid: h.uid,
            gid: h.gid,
            comm: comm(&h.comm),
            ..Process::default()
        }
    }

    /// The sensor's protected files by kernel identity (for `sensor.tamper`).
    pub fn set_protected(&mut self, files: Vec<((u32, u64), String)>) {
        self.protected = files.into_iter().collect();
    }

    /// The `tamper` object of a kernel tamper record.
    fn kernel_tamper(&self, d: &sensor_common::event::TamperData) -> Tamper {
        use sensor_common::event as k;
        let target = (d.target_tgid != 0).then(|| {
            let key = if d.target_start_ns != 0 {
                self.keys.key(d.target_tgid, d.target_start_ns)
            } else {
                self.proc_start(d.target_tgid)
                    .map(|(t, _)| self.keys.key_from_ticks(d.target_tgid, t))
                    .unwrap_or_default()
            };
            TamperTarget {
                pid: d.target_tgid,
                key,
                exe: self.known_exe(d.target_tgid, d.target_start_ns),
                run: self
                    .attribution
                    .run_ref(Placement::new(d.target_run, How::INHERITED)),
            }
        });
        let file = (d.method == k::TAMPER_SENSOR_FILE).then(|| TamperFile {
            kind: match d.file_kind {
                k::SENSOR_FILE_PINS => "pins",
                k::SENSOR_FILE_STATE => "state",
                k::SENSOR_FILE_STORE => "store",
                k::SENSOR_FILE_CONFIG => "config",
                k::SENSOR_FILE_BINARY => "binary",
                _ => "unknown",
            },
            path: self.protected.get(&(d.file_dev, d.file_ino)).cloned(),
            dev: Some(dev_text(d.file_dev)),
            inode: Some(d.file_ino),
            to: None,
            dir: None,
        });
        let pid = d.target_tgid;
        let target_text = || {
            let exe = target
                .as_ref()
                .and_then(|t| t.exe.clone())
                .unwrap_or_else(|| "?".to_owned());
            format!("pid {pid} ({exe})")
        };
        let (method, what, object) = match d.method {
            k::TAMPER_PTRACE => ("ptrace", "ptrace attach".to_owned(), target_text()),
            k::TAMPER_VM_WRITE => (
                "process_vm_writev",
                "write into another process's memory".to_owned(),
                target_text(),
            ),
            k::TAMPER_PIDFD_GETFD => (
                "pidfd_getfd",
                format!("take file descriptor {} of another process", d.arg),
                target_text(),
            ),
            k::TAMPER_PROC_MEM => ("proc_mem", format!("open /proc/{pid}/mem"), target_text()),
            k::TAMPER_SIGNAL => (
                "signal",
                format!("signal {} to the sensor daemon", signal_name(d.arg)),
                format!("pid {pid}"),
            ),
            k::TAMPER_SENSOR_FILE => (
                "sensor_file",
                "open for writing of a sensor file".to_owned(),
                file.as_ref()
                    .and_then(|f| f.path.clone())
                    .unwrap_or_else(|| format!("inode {}", d.file_ino)),
            ),
            k::TAMPER_BPF => ("bpf", "bpf() call".to_owned(), bpf_cmd_name(d.arg)),
            _ => (
                "unknown",
                format!("tamper method {}", d.method),
                String::new(),
            ),
        };
        Tamper {
            method,
            what,
            object,
            detected: "kernel",
            target,
            file,
            signal: (d.method == k::TAMPER_SIGNAL).then_some(d.arg),
            killed: Some(d.flags & k::TAMPER_FLAG_KILLED != 0),
            ..Tamper::default()
        }
    }

    /// A `sensor.lost` report.
    pub fn lost(&mut self, lost: Lost) -> Event {
        let mut e = self.envelope(Kind::SensorLost, SystemTime::now());
        e.lost = Some(Box::new(lost));
        e
    }

    /// A `sensor.gap` report.
    pub fn gap(&mut self, gap: Gap) -> Event {
        let mut e = self.envelope(Kind::SensorGap, SystemTime::now());
        e.gap = Some(Box::new(gap));
        e
    }

    /// A `run.checkpoint` of `run` (its head and signature are filled in
    /// where the line is made, see [`crate::provenance`]).
    pub fn checkpoint(
        &mut self,
        run: RunRef,
        reason: &'static str,
        recovered: Option<bool>,
    ) -> Event {
        let mut e = self.envelope(Kind::RunCheckpoint, SystemTime::now());
        e.checkpoint = Some(Box::new(crate::event::Checkpoint {
            run_id: run.id.clone(),
            reason,
            recovered,
            ..crate::event::Checkpoint::default()
        }));
        e.run = Some(run);
        e
    }

    /// A `token.issued` report: `pid` of run `handle` was given a token.
    pub fn token_issued(
        &mut self,
        handle: u64,
        pid: u32,
        uid: u32,
        token: crate::event::TokenIssued,
    ) -> Event {
        let mut e = self.envelope(Kind::TokenIssued, SystemTime::now());
        e.run = self
            .attribution
            .run(handle)
            .map(|run| RunRef::of(run, run.started_by.attributed()));
        e.process = Some(self.process_of_pid(pid, uid));
        e.token = Some(Box::new(token));
        e
    }

    /// A `detection` event: a rule matched the event `m` names (its run is
    /// the matched event's run).
    pub fn detection(&mut self, m: crate::detect::Match) -> Event {
        let mut e = self.envelope(Kind::Detection, SystemTime::now());
        e.run = m.run;
        e.detection = Some(Box::new(m.detection));
        e
    }

    /// A `tool.call` event of run `run` (read from its transcript), or
    /// its `tool.unobserved` (`kind`).
    pub fn tool_call(&mut self, kind: Kind, run: RunRef, call: crate::event::ToolCall) -> Event {
        let mut e = self.envelope(kind, SystemTime::now());
        e.run = Some(run);
        e.tool_call = Some(Box::new(call));
        e
    }

    /// A `tool.unexplained` event of run `run`: the exec's process, and why
    /// no tool call explains it.
    pub fn tool_unexplained(
        &mut self,
        run: RunRef,
        process: Process,
        unexplained: crate::event::Unexplained,
    ) -> Event {
        let mut e = self.envelope(Kind::ToolUnexplained, SystemTime::now());
        e.run = Some(run);
        e.process = Some(process);
        e.unexplained = Some(Box::new(unexplained));
        e
    }

    /// A `transcript.unreadable` event of run `run`.
    pub fn transcript_unreadable(
        &mut self,
        run: RunRef,
        issue: crate::event::TranscriptIssue,
    ) -> Event {
        let mut e = self.envelope(Kind::TranscriptUnreadable, SystemTime::now());
        e.run = Some(run);
        e.transcript = Some(Box::new(issue));
        e
    }

    /// A `sensor.blind` report of the canary.
    pub fn blind(&mut self, blind: Blind) -> Event {
        let mut e = self.envelope(Kind::SensorBlind, SystemTime::now());
        e.blind = Some(Box::new(blind));
        e
    }

    /// A `sensor.tamper` report of what the integrity check found. One about
    /// a run's binding carries the run (and names it by id).
    pub fn tamper(&mut self, t: &crate::tamper::Tamper) -> Event {
        let mut e = self.envelope(Kind::SensorTamper, SystemTime::now());
        let mut object = t.object.clone();
        if let Some(handle) = t.run {
            match self.attribution.run(handle) {
                Some(run) => {
                    object = format!("{object} run {}", run.id);
                    e.run = Some(RunRef::of(run, run.started_by.attributed()));
                }
                None => object = format!("{object} run handle {handle}"),
            }
        }
        e.tamper = Some(Box::new(Tamper {
            method: "integrity",
            what: t.what.to_owned(),
            object,
            detected: "integrity check",
            repaired: Some(t.repaired),
            detail: t.detail.clone(),
            ..Tamper::default()
        }));
        e
    }

    /// Checks the kernel policy maps against what was written and writes
    /// back what differs (see [`crate::policy::kernel::Enforcement::verify`]).
    pub fn verify_policy_maps(&mut self, foreign_bpf: Option<u64>) -> Vec<crate::tamper::Tamper> {
        let now = std::time::Instant::now();
        self.enforcement
            .as_mut()
            .map(|e| e.verify(foreign_bpf, now))
            .unwrap_or_default()
    }

    /// Comparisons of the policy maps made so far (0 without enforcement).
    #[must_use]
    pub fn policy_map_comparisons(&self) -> u64 {
        self.enforcement
            .as_ref()
            .map_or(0, crate::policy::kernel::Enforcement::comparisons)
    }

    /// A `run.degraded` report for run `handle`, if it is known.
    pub fn degraded(&mut self, handle: u64, degraded: Degraded) -> Option<Event> {
        let run = self.attribution.run(handle)?;
        let run = RunRef::detailed(run, run.started_by.attributed());
        let mut e = self.envelope(Kind::RunDegraded, SystemTime::now());
        e.run = Some(run);
        e.degraded = Some(Box::new(degraded));
        Some(e)
    }

    /// The event of a run starting or ending.
    pub fn run_change(&mut self, change: &RunChange) -> Event {
        self.run_change_of(change, None)
    }

    /// The event of a run starting or ending; `process` is the process that
    /// started it when the caller has it (an exec that matched an agent).
    fn run_change_of(&mut self, change: &RunChange, process: Option<&Process>) -> Event {
        match change {
            RunChange::Started { run, pid } => {
                if let Err(why) = self.bind_run(run) {
                    // A matcher run whose policy the kernel cannot hold: its
                    // process must not go on unenforced.
                    let enforce = run
                        .policy
                        .as_deref()
                        .and_then(|p| self.policies.get(p))
                        .is_some_and(|p| p.mode == crate::policy::Mode::Enforce);
                    let start = self
                        .attribution
                        .processes()
                        .get(*pid, 0)
                        .map(|p| p.start_ns);
                    let killed = match start.filter(|_| enforce) {
                        Some(s) => self
                            .emit(&RunEffect::Kill {
                                pid: *pid,
                                start_ticks: Some(s / self.keys.ns_per_tick().max(1)),
                            })
                            .is_ok(),
                        None => false,
                    };
                    tracing::error!(run = %run.id, pid, killed, %why, "a new run could not be bound to its policy");
                }
                let mut e = self.envelope(Kind::RunStart, run.start);
                e.run = Some(RunRef::detailed(run, run.started_by.attributed()));
                e.process = Some(match process {
                    Some(p) => p.clone(),
                    None => self.process_of_pid(*pid, run.uid),
                });
                e
            }
            RunChange::Ended { run } => {
                // (An unbind does not fail.)
                let _ = self.emit(&RunEffect::Unbind { run: run.handle });
                let mut e = self.envelope(Kind::RunEnd, run.end.unwrap_or_else(SystemTime::now));
                e.run = Some(RunRef::detailed(run, run.started_by.attributed()));
                e
            }
        }
    }

    /// Ends the runs past their TTL (see [`Attribution::expire`]); the
    /// processes of an expired top-level run are killed (run effects). The
    /// changes are for [`Self::run_change`].
    pub fn expire(&mut self, now: SystemTime) -> Vec<RunChange> {
        let enforcement = &mut self.enforcement;
        let effects = &mut self.effects;
        self.attribution.expire(now, |halt, pid, start_ticks| {
            let effect = match halt {
                Halt::Stop => RunEffect::Stop { pid, start_ticks },
                Halt::Kill => RunEffect::Kill {
                    pid,
                    start_ticks: Some(start_ticks),
                },
            };
            effects.apply(&effect, enforcement.as_mut()).is_ok()
        })
    }

    /// `sensor launch` (see [`Attribution::launch`]): the new run is bound to
    /// its policy in the kernel before the peer enters it, and refused when
    /// that fails.
    pub fn launch(
        &mut self,
        peer: &crate::attribution::Peer,
        req: crate::attribution::LaunchRequest,
        now: SystemTime,
    ) -> Result<(Run, RunChange), crate::attribution::AttributionError> {
        let policies = &self.policies;
        let enforcement = &mut self.enforcement;
        let effects = &mut self.effects;
        self.attribution.launch(peer, req, now, |run, parent| {
            let bind = RunEffect::Bind {
                run: run.handle,
                policy: run.policy.clone().filter(|p| policies.contains(p)),
                parent,
            };
            match effects.apply(&bind, enforcement.as_mut()) {
                Ok(()) => Ok(()),
                Err(EffectError::Bind(refusal)) => Err(refusal),
                // (A bind fails only as a bind.)
                Err(EffectError::NotKilled { .. } | EffectError::NotStopped { .. }) => Ok(()),
            }
        })
    }

    /// A `sensor launch` from process `pid` that would nest deeper than its
    /// run's policy allows: the message for the launcher and the violation.
    pub fn refuse_depth(&mut self, pid: u32) -> Option<DepthRefusal> {
        let answer = self.attribution.attest(pid, None).ok()?;
        let parent = answer.run;
        let policy = self.policies.get(parent.policy.as_deref()?)?.clone();
        let depth = parent.depth + 1;
        let mut verdict = policy.check_depth(depth)?;
        verdict.enforced = true;
        let max = policy.max_depth.unwrap_or_default();
        let mut violation = self.envelope(Kind::PolicyViolation, SystemTime::now());
        let how = self
            .attribution
            .processes()
            .get(pid, 0)
            .map_or(How::INHERITED, |p| p.placement.how);
        violation.run = self.attribution.run_ref(Placement::new(parent.handle, how));
        violation.process = Some(self.process_of_pid(pid, parent.uid));
        violation.policy = Some(verdict);
        Some(DepthRefusal {
            message: format!(
                "refused by policy {:?}: max_depth {max}; run {} is at depth {} and a sub-run \
                 would be at depth {depth}",
                policy.name, parent.id, parent.depth
            ),
            violation,
        })
    }

    /// A sub-run an `[[agent]]` matcher started deeper than its parent's
    /// policy allows: reported, and under an enforce policy its process is
    /// killed by the daemon (the kernel cannot tell an agent's exec apart).
    fn check_matched_depth(&mut self, run: &Run, pid: u32, p: &Process, out: &mut Vec<Event>) {
        let Some(parent) = run
            .parent_id
            .as_deref()
            .and_then(|id| self.attribution.handle_of(id))
        else {
            return;
        };
        let Some(policy) = self
            .attribution
            .run_policy(parent)
            .and_then(|n| self.policies.get(n))
            .cloned()
        else {
            return;
        };
        let Some(mut verdict) = policy.check_depth(run.depth) else {
            return;
        };
        let enforced = policy.mode == crate::policy::Mode::Enforce
            && self
                .emit(&RunEffect::Kill {
                    pid,
                    start_ticks: None,
                })
                .is_ok();
        let mut violation = self.envelope(Kind::PolicyViolation, SystemTime::now());
        violation.run = self
            .attribution
            .run_ref(Placement::new(run.handle, How::MATCHER));
        violation.process = Some(p.clone());
        verdict.enforced = enforced;
        violation.policy = Some(verdict);
        out.push(violation);
    }

    /// Binds a new run to its policy in the kernel, before anything of the
    /// run can act on it (a launch is answered after this).
    fn bind_run(&mut self, run: &Run) -> Result<(), EffectError> {
        let parent = run
            .parent_id
            .as_deref()
            .and_then(|id| self.attribution.handle_of(id));
        let policy = run.policy.clone().filter(|p| self.policies.contains(p));
        self.emit(&RunEffect::Bind {
            run: run.handle,
            policy,
            parent,
        })
    }

    /// What the table and /proc know of a live process, for run.start events
    /// not caused by a kernel record (launch, back-fill).
    fn process_of_pid(&self, pid: u32, uid: u32) -> Process {
        let start_ns = self
            .attribution
            .processes()
            .get(pid, 0)
            .map_or(0, |p| p.start_ns);
        let proc = i32::try_from(pid)
            .ok()
            .and_then(|p| procfs::process::Process::new(p).ok());
        let stat = proc.as_ref().and_then(|p| p.stat().ok());
        let ppid = stat
            .as_ref()
            .and_then(|s| u32::try_from(s.ppid).ok())
            .unwrap_or_default();
        Process {
            key: self.keys.key(pid, start_ns),
            pid,
            tid: pid,
            ppid,
            parent_key: self
                .proc_start(ppid)
                .map(|(t, _)| self.keys.key_from_ticks(ppid, t))
                .unwrap_or_default(),
            uid,
            comm: stat.map(|s| s.comm).unwrap_or_default(),
            exe: self.known_exe(pid, start_ns),
            ..Process::default()
        }
    }

    /// Builds the events of one kernel record into `out`: the record's own,
    /// then the runs that ended with it (the last process of a run exited).
    pub fn build_into(&mut self, raw: RawEvent, out: &mut Vec<Event>) {
        let h = *raw.header();
        if h.run == crate::policy::selftest::RUN {
            // The daemon's own enforcement self-test at start-up.
            return;
        }
        let time = self.clock.wall(h.ktime_ns);
        match raw {
            RawEvent::Spawn { data, exe, .. } => {
                let mut e = self.envelope(Kind::ProcessSpawn, time);
                let mut p = self.process(&h);
                set_exe(&mut p, &exe, data.path_flags & PATH_TRUNCATED != 0);
                p.parent_exe.clone_from(&p.exe);
                let exe = self.shared_exe(p.exe.as_deref());
                let placed = self.attribution.on_spawn(&h, exe);
                e.run = self.attribution.run_ref(placed);
                e.process = Some(p);
                self.apply_policy(e, placed.run, &data.decision, out);
            }
            RawEvent::Exec {
                data,
                strings,
                failed,
                ..
            } => {
                let mut p = self.process(&h);
                let exec = exec_details(&data, &strings, failed);
                fill_exec(&mut p, &data, &strings, failed);
                let placed = if failed {
                    self.attribution.on_other(&h)
                } else {
                    let argv = p.argv.as_deref().unwrap_or_default();
                    let view = p.exe.as_deref().map(|exe| ExecView {
                        exe,
                        argv,
                        cwd: p.cwd.as_deref(),
                    });
                    let exe = self.shared_exe(p.exe.as_deref());
                    let (placed, started) = self.attribution.on_exec(&h, exe, view.as_ref(), time);
                    if let Some(change) = started {
                        // The run starts before the exec that started it.
                        let start = self.run_change_of(&change, Some(&p));
                        out.push(start);
                        if let RunChange::Started { run, pid } = &change {
                            self.check_matched_depth(run, *pid, &p, out);
                        }
                    }
                    placed
                };
                // The envelope (and its seq) comes after a run.start it caused.
                let mut e = self.envelope(Kind::ProcessExec, time);
                e.exec = Some(exec);
                e.run = self.attribution.run_ref(placed);
                e.process = Some(p);
                self.apply_policy(e, placed.run, &data.decision, out);
            }
            RawEvent::Exit { data, .. } => {
                let mut e = self.envelope(Kind::ProcessExit, time);
                let mut p = self.process(&h);
                p.exe = self.known_exe(h.tgid, h.start_ns);
                let status = data.exit_status;
                let signal = status & 0x7f;
                if signal == 0 {
                    p.exit_code = Some(((status >> 8) & 0xff) as i32);
                } else {
                    p.exit_signal = Some(signal as i32);
                    p.core_dumped = Some(status & 0x80 != 0);
                }
                let (placed, changes) = self.attribution.on_exit(&h, time);
                e.run = self.attribution.run_ref(placed);
                e.process = Some(p);
                out.push(e);
                for change in &changes {
                    let e = self.run_change(change);
                    out.push(e);
                }
            }
            RawEvent::Connect { data, .. } => {
                let (mut e, run) = self.act(Kind::NetworkConnect, time, &h);
                e.network = Some(network(&data));
                self.apply_policy(e, run, &data.decision, out);
            }
            RawEvent::Tamper { data, .. } => {
                let kind = if data.method < sensor_common::event::TAMPER_SIGNAL {
                    Kind::ProcessTamper
                } else {
                    Kind::SensorTamper
                };
                let (mut e, run) = self.act(kind, time, &h);
                e.tamper = Some(Box::new(self.kernel_tamper(&data)));
                self.apply_policy(e, run, &data.decision, out);
            }
            RawEvent::Socket { data, .. } => {
                use sensor_common::event as k;
                let kind = match data.what {
                    k::SOCKET_LISTEN => Kind::NetworkListen,
                    k::SOCKET_ACCEPT => Kind::NetworkAccept,
                    k::SOCKET_SENDTO => Kind::NetworkConnect,
                    _ => Kind::NetworkSocket,
                };
                let (mut e, run) = self.act(kind, time, &h);
                e.network = Some(socket_network(&data));
                self.apply_policy(e, run, &data.decision, out);
            }
            RawEvent::Unix { data, .. } => {
                let (mut e, run) = self.act(Kind::NetworkConnect, time, &h);
                e.network = Some(unix_network(&data));
                self.apply_policy(e, run, &data.decision, out);
            }
        }
    }

    /// Builds the first event of one kernel record (tests and tools).
    pub fn build(&mut self, raw: RawEvent) -> Event {
        let mut out = Vec::with_capacity(1);
        self.build_into(raw, &mut out);
        out.swap_remove(0)
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    escape_bytes(&raw[..end]).0
}

fn set_exe(p: &mut Process, exe: &[u8], truncated: bool) {
    if exe.is_empty() {
        return;
    }
    let (s, utf8) = escape_bytes(exe);
    p.exe = Some(s);
    if !utf8 {
        p.exe_b64 = Some(B64.encode(exe));
    }
    if truncated {
        p.exe_truncated = Some(true);
    }
}

fn fill_exec(p: &mut Process, data: &ExecData, s: &ExecStrings, failed: bool) {
    set_exe(p, &s.exe, data.path_flags & PATH_TRUNCATED != 0);
    if !s.cwd.is_empty() {
        p.cwd = Some(escape_bytes(&s.cwd).0);
    }
    // The arguments as `split_argv` splits them, without its vector.
    let area = s.argv.strip_suffix(&[0]).unwrap_or(&s.argv);
    let mut argv: Vec<String> = Vec::new();
    let mut all_utf8 = true;
    if !s.argv.is_empty() {
        argv.reserve_exact(area.iter().filter(|&&b| b == 0).count() + 1);
        argv.extend(area.split(|&b| b == 0).map(|a| {
            let (s, utf8) = escape_bytes(a);
            all_utf8 &= utf8;
            s
        }));
    }
    if !all_utf8 {
        p.argv_b64 = Some(B64.encode(&s.argv));
    }
    let count = u32::try_from(argv.len()).unwrap_or(u32::MAX);
    if failed {
        // The kernel read the argument array one by one; argc == MAX means it stopped early.
        let complete = data.argc != u32::MAX;
        p.argv_truncated = Some(!complete);
        p.argc = complete.then_some(count);
        p.argv_len = complete.then_some(data.argv_orig_len);
    } else {
        let truncated = data.argv_orig_len > data.argv_len;
        p.argv_truncated = Some(truncated);
        p.argv_len = Some(data.argv_orig_len);
        // argc from the initial stack when the area was cut; it cannot be below what we saw.
        p.argc = Some(
            if truncated && data.argc != u32::MAX && data.argc >= count {
                data.argc
            } else {
                count
            },
        );
    }
    p.argv = Some(argv);
}

fn exec_details(data: &ExecData, s: &ExecStrings, failed: bool) -> Exec {
    // saturating: a record's i32::MIN has no negation (-2^31 is no errno anyway).
    let errno = failed.then_some(data.ret.saturating_neg());
    Exec {
        filename: escape_bytes(&s.filename).0,
        result: if failed {
            ExecResult::Error
        } else {
            ExecResult::Ok
        },
        errno,
        error: errno.map(errno_name),
        old_tid: data.old_tid,
        inode: (!failed && data.ino != 0).then_some(data.ino),
        dev: (!failed && data.dev != 0).then(|| dev_text(data.dev)),
        dev_raw: (!failed && data.dev != 0).then_some(data.dev),
        mnt_id: (!failed && data.mnt_id != 0).then_some(data.mnt_id),
        modified_in_run: None,
    }
}

/// A kernel device number as `major:minor` (built by hand: `format!` per
/// exec showed in the pipeline's profile).
fn dev_text(dev: u32) -> String {
    let mut major = itoa::Buffer::new();
    let mut minor = itoa::Buffer::new();
    let (major, minor) = (major.format(dev >> 20), minor.format(dev & 0xf_ffff));
    let mut text = String::with_capacity(major.len() + minor.len() + 1);
    text.push_str(major);
    text.push(':');
    text.push_str(minor);
    text
}

/// `SIGKILL` for 9, or the number.
fn signal_name(sig: u32) -> String {
    i32::try_from(sig)
        .ok()
        .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
        .map_or_else(|| sig.to_string(), |s| s.as_str().to_owned())
}

/// `BPF_LINK_DETACH` for 34, or the number.
fn bpf_cmd_name(cmd: u32) -> String {
    const NAMES: &[&str] = &[
        "BPF_MAP_CREATE",
        "BPF_MAP_LOOKUP_ELEM",
        "BPF_MAP_UPDATE_ELEM",
        "BPF_MAP_DELETE_ELEM",
        "BPF_MAP_GET_NEXT_KEY",
        "BPF_PROG_LOAD",
        "BPF_OBJ_PIN",
        "BPF_OBJ_GET",
        "BPF_PROG_ATTACH",
        "BPF_PROG_DETACH",
        "BPF_PROG_TEST_RUN",
        "BPF_PROG_GET_NEXT_ID",
        "BPF_MAP_GET_NEXT_ID",
        "BPF_PROG_GET_FD_BY_ID",
        "BPF_MAP_GET_FD_BY_ID",
        "BPF_OBJ_GET_INFO_BY_FD",
        "BPF_PROG_QUERY",
        "BPF_RAW_TRACEPOINT_OPEN",
        "BPF_BTF_LOAD",
        "BPF_BTF_GET_FD_BY_ID",
        "BPF_TASK_FD_QUERY",
        "BPF_MAP_LOOKUP_AND_DELETE_ELEM",
        "BPF_MAP_FREEZE",
        "BPF_BTF_GET_NEXT_ID",
        "BPF_MAP_LOOKUP_BATCH",
        "BPF_MAP_LOOKUP_AND_DELETE_BATCH",
        "BPF_MAP_UPDATE_BATCH",
        "BPF_MAP_DELETE_BATCH",
        "BPF_LINK_CREATE",
        "BPF_LINK_UPDATE",
        "BPF_LINK_GET_FD_BY_ID",
        "BPF_LINK_GET_NEXT_ID",
        "BPF_ENABLE_STATS",
        "BPF_ITER_CREATE",
        "BPF_LINK_DETACH",
        "BPF_PROG_BIND_MAP",
    ];
    usize::try_from(cmd)
        .ok()
        .and_then(|i| NAMES.get(i))
        .map_or_else(|| cmd.to_string(), |n| (*n).to_owned())
}

/// The result of a connect that returned `ret` (`-errno` or 0).
fn connect_result(ret: i32) -> (NetResult, Option<i32>) {
    match ret.saturating_neg() {
        0 => (NetResult::Ok, None),
        111 => (NetResult::Refused, Some(111)),
        115 => (NetResult::InProgress, Some(115)),
        e => (NetResult::Error, Some(e)),
    }
}

fn network(d: &ConnectData) -> Network {
    const AF_INET: u16 = 2;
    let (family, dst_ip) = if d.family == AF_INET {
        (
            "ipv4",
            IpAddr::from([d.addr[0], d.addr[1], d.addr[2], d.addr[3]]),
        )
    } else {
        ("ipv6", IpAddr::from(d.addr))
    };
    let transport = match (d.protocol, d.sock_type) {
        (6, _) | (0, 1) => "tcp",
        (17, _) | (0, 2) => "udp",
        (136, _) => "udplite",
        (262, _) => "mptcp",
        (_, 3) => "raw",
        _ => "other",
    };
    let (result, errno) = if d.has_result == 0 {
        (NetResult::Unknown, None)
    } else {
        connect_result(d.ret)
    };
    Network {
        transport,
        family,
        dst_ip: Some(dst_ip),
        dst_port: Some(d.port),
        result,
        errno,
        error: errno.map(errno_name),
        via: (d.via == VIA_SENDMSG).then_some("sendmsg"),
        ..Network::default()
    }
}

/// The `network` object of a socket record.
fn socket_network(d: &sensor_common::event::SocketData) -> Network {
    use sensor_common::event as k;
    const AF_INET: u16 = 2;
    const AF_INET6: u16 = 10;
    let ip = |bytes: &[u8; 16]| -> Option<IpAddr> {
        match d.family {
            AF_INET => Some(IpAddr::from([bytes[0], bytes[1], bytes[2], bytes[3]])),
            AF_INET6 => Some(IpAddr::from(*bytes)),
            _ => None,
        }
    };
    let family = match d.family {
        AF_INET => "ipv4",
        AF_INET6 => "ipv6",
        17 => "packet",
        _ => "other",
    };
    let transport = match (d.family, d.sock_type, d.protocol) {
        (17, _, _) => "packet",
        (_, 2, 1 | 58) => "icmp",
        (_, 3, _) => "raw",
        (_, 1, _) | (_, _, 6) => "tcp",
        (_, 2, _) | (_, _, 17) => "udp",
        _ => "other",
    };
    let mut n = Network {
        transport,
        family,
        result: NetResult::Ok,
        ..Network::default()
    };
    match d.what {
        k::SOCKET_LISTEN => {
            n.local_ip = ip(&d.local);
            n.local_port = Some(d.local_port);
        }
        k::SOCKET_ACCEPT => {
            n.local_ip = ip(&d.local);
            n.local_port = Some(d.local_port);
            n.src_ip = ip(&d.remote);
            n.src_port = Some(d.remote_port);
        }
        k::SOCKET_SENDTO => {
            n.dst_ip = ip(&d.remote);
            n.dst_port = Some(d.remote_port);
            n.via = Some("sendmsg");
            n.sends = Some(d.count);
            n.result = NetResult::Unknown;
        }
        _ => {
            if d.ret < 0 {
                n.result = NetResult::Error;
                n.errno = Some(-d.ret);
                n.error = n.errno.map(errno_name);
            }
        }
    }
    n
}

/// A Unix socket address for events: `/path`, or `@name` for an abstract
/// name (its first byte is NUL); bytes that are not UTF-8 (and NULs inside an
/// abstract name) as `\xNN`.
fn unix_address(bytes: &[u8]) -> (String, bool) {
    match bytes.split_first() {
        Some((0, name)) => {
            let mut out = String::from("@");
            for chunk in name.utf8_chunks() {
                for c in chunk.valid().chars() {
                    if c == '\0' {
                        out.push_str("\\x00");
                    } else {
                        out.push(c);
                    }
                }
                for b in chunk.invalid() {
                    out.push_str(&format!("\\x{b:02x}"));
                }
            }
            (out, true)
        }
        _ => (escape_bytes(bytes).0, false),
    }
}

fn unix_network(d: &UnixConnectData) -> Network {
    let len = (d.key.len as usize).min(d.key.path.len());
    let (path, abstract_name) = unix_address(d.key.path.get(..len).unwrap_or_default());
    let peer_len = usize::from(d.peer_len).min(d.peer.len());
    let peer = (peer_len > 0).then(|| unix_address(d.peer.get(..peer_len).unwrap_or_default()).0);
    let transport = match d.sock_type {
        1 => "stream",
        2 => "dgram",
        5 => "seqpacket",
        _ => "other",
    };
    let (result, errno) = if d.has_result == 0 {
        (NetResult::Unknown, None)
    } else {
        connect_result(d.ret)
    };
    let killed = d.flags & sensor_common::event::UNIX_KILLED_IDENTITY != 0;
    Network {
        transport,
        family: "unix",
        peer_path: peer.filter(|p| *p != path),
        path: Some(path),
        abstract_name: Some(abstract_name),
        result: if killed { NetResult::Killed } else { result },
        errno,
        error: errno.map(errno_name),
        via: (d.via == VIA_SENDMSG).then_some("sendmsg"),
        ..Network::default()
    }
}

#[cfg(test)]
mod tests {
    use sensor_common::event::{EventKind, ExitData};

    use super::*;
    use crate::event::{Decision, json::write_json_line, rfc3339};

    fn builder() -> Engine {
        let keys = ProcessKeys::new("0b5f0e3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c", 100);
        let attribution = Attribution::new(
            keys.clone(),
            Box::new(std::collections::HashMap::new()),
            crate::attribution::RunTable::new(),
            None,
        );
        Engine::new(
            Host {
                name: "h1".into(),
                boot_id: "0b5f0e3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c".into(),
            },
            keys,
            Clock::with_offset(1_700_000_000_000_000_000),
            attribution,
        )
    }

    fn header(kind: EventKind) -> EventHeader {
        EventHeader {
            kind: kind as u32,
            ktime_ns: 5,
            tgid: 4242,
            tid: 4243,
            ppid: 4200,
            uid: 1000,
            gid: 1000,
            start_ns: 7_000_000_000,
            parent_start_ns: 6_000_000_000,
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            ..EventHeader::default()
        }
    }

    fn json(e: &Event) -> serde_json::Value {
        let mut out = Vec::new();
        write_json_line(e, &mut out).unwrap();
        assert_eq!(out.last(), Some(&b'\n'));
        serde_json::from_slice(&out).unwrap()
    }

    fn exec(argv: &[u8], orig: u32, argc: u32, failed: bool, ret: i32) -> RawEvent {
        let strings = ExecStrings {
            exe: b"/usr/bin/curl".to_vec(),
            cwd: b"/home/alice".to_vec(),
            filename: b"curl".to_vec(),
            argv: argv.to_vec(),
        };
        RawEvent::Exec {
            header: header(if failed {
                EventKind::ProcessExecFailed
            } else {
                EventKind::ProcessExec
            }),
            data: ExecData {
                exe_len: 13,
                cwd_len: 11,
                filename_len: 4,
                argv_len: u32::try_from(argv.len()).unwrap(),
                argv_orig_len: orig,
                argc,
                old_tid: 4243,
                ret,
                ino: 77,
                dev: (8 << 20) | 1,
                ..ExecData::default()
            },
            strings,
            failed,
        }
    }

    #[test]
    fn exec_event_has_the_contract_fields() {
        let mut b = builder();
        let argv = b"curl\0-s\0https://x\0";
        let v = json(&b.build(exec(argv, u32::try_from(argv.len()).unwrap(), 3, false, 0)));
        assert_eq!(v["schema"], "sensor.event/v1");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["time"], "2023-11-14T22:13:20.000000005Z");
        assert_eq!(v["host"]["name"], "h1");
        assert_eq!(v["kind"], "process.exec");
        assert!(v["run"].is_null());
        let p = &v["process"];
        assert_eq!(p["pid"], 4242);
        assert_eq!(p["ppid"], 4200);
        assert_eq!(p["key"], "0b5f0e3c1d2e4f5a:700:4242");
        assert_eq!(p["parent_key"], "0b5f0e3c1d2e4f5a:600:4200");
        assert_eq!(p["exe"], "/usr/bin/curl");
        assert_eq!(p["argv"], serde_json::json!(["curl", "-s", "https://x"]));
        assert_eq!(p["argv_truncated"], false);
        assert_eq!(p["argc"], 3);
        assert_eq!(p["cwd"], "/home/alice");
        assert!(p["exit_code"].is_null());
        assert!(p.get("argv_b64").is_none());
        assert_eq!(v["exec"]["result"], "ok");
        assert_eq!(v["exec"]["filename"], "curl");
        assert_eq!(v["exec"]["dev"], "8:1");
        // seq increases
        assert_eq!(json(&b.build(exec(b"a\0", 2, 1, false, 0)))["seq"], 2);
    }

    #[test]
    fn a_matcher_run_start_precedes_its_exec_in_seq() {
        let keys = ProcessKeys::new("b", 100);
        let attribution = Attribution::new(
            keys.clone(),
            Box::new(std::collections::HashMap::new()),
            crate::attribution::RunTable::new(),
            None,
        )
        .with_matchers(
            crate::attribution::Matchers::new(&[crate::attribution::AgentConfig {
                name: "curl-agent".into(),
                exe: vec!["/usr/bin/curl".into()],
                ..Default::default()
            }])
            .unwrap(),
        );
        let mut b = Engine::new(
            Host {
                name: "h".into(),
                boot_id: "b".into(),
            },
            keys,
            Clock::with_offset(0),
            attribution,
        );
        let mut out = Vec::new();
        b.build_into(exec(b"curl\0", 5, 1, false, 0), &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].kind, Kind::RunStart);
        assert_eq!(out[1].kind, Kind::ProcessExec);
        assert!(
            out[0].seq < out[1].seq,
            "seq follows the order of the lines"
        );
        assert_eq!(
            out[0].process.as_ref().unwrap().comm,
            "curl",
            "run.start has the exec's process"
        );
        assert_eq!(
            out[1].run.as_ref().unwrap().attribution,
            crate::event::Attributed::Matcher
        );
    }

    #[test]
    fn truncated_and_non_utf8_argv() {
        let mut b = builder();
        let v = json(&b.build(exec(b"a\0\xff\xfeb\0partial", 70_000, 301, false, 0)));
        let p = &v["process"];
        assert_eq!(p["argv_truncated"], true);
        assert_eq!(p["argv_len"], 70_000);
        assert_eq!(p["argc"], 301);
        assert_eq!(p["argv"][1], "\\xff\\xfeb");
        let raw = B64.decode(p["argv_b64"].as_str().unwrap()).unwrap();
        assert_eq!(raw, b"a\0\xff\xfeb\0partial");
    }

    #[test]
    fn failed_exec_reports_the_error() {
        let mut b = builder();
        let v = json(&b.build(exec(b"/nope\0x\0", 8, 2, true, -2)));
        assert_eq!(v["kind"], "process.exec");
        assert_eq!(v["exec"]["result"], "error");
        assert_eq!(v["exec"]["errno"], 2);
        assert_eq!(v["exec"]["error"], "ENOENT");
        assert!(v["exec"].get("inode").is_none());
        assert_eq!(v["process"]["argv"], serde_json::json!(["/nope", "x"]));
        assert_eq!(v["process"]["argv_truncated"], false);
        let v = json(&b.build(exec(b"x\0", 0, u32::MAX, true, -13)));
        assert_eq!(v["exec"]["error"], "EACCES");
        assert_eq!(v["process"]["argv_truncated"], true);
        assert!(v["process"]["argc"].is_null() || v["process"].get("argc").is_none());
    }

    #[test]
    fn exit_code_and_signal() {
        let mut b = builder();
        let exit = |status| RawEvent::Exit {
            header: header(EventKind::ProcessExit),
            data: ExitData {
                exit_status: status,
                _pad: 0,
            },
        };
        let v = json(&b.build(exit(7 << 8)));
        assert_eq!(v["process"]["exit_code"], 7);
        assert!(v["process"]["exit_signal"].is_null());
        let v = json(&b.build(exit(9)));
        assert!(v["process"]["exit_code"].is_null());
        assert_eq!(v["process"]["exit_signal"], 9);
    }

    #[test]
    fn connect_results() {
        let mut b = builder();
        let connect = |family, addr: [u8; 16], ret, has_result| RawEvent::Connect {
            header: header(EventKind::NetConnect),
            data: ConnectData {
                family,
                sock_type: 1,
                protocol: 6,
                port: 443,
                ret,
                has_result,
                addr,
                ..ConnectData::default()
            },
        };
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&[127, 0, 0, 1]);
        let v = json(&b.build(connect(2, v4, 0, 1)));
        assert_eq!(v["network"]["dst_ip"], "127.0.0.1");
        assert_eq!(v["network"]["dst_port"], 443);
        assert_eq!(v["network"]["transport"], "tcp");
        assert_eq!(v["network"]["family"], "ipv4");
        assert_eq!(v["network"]["result"], "ok");
        let mut v6 = [0u8; 16];
        v6[15] = 1;
        let v = json(&b.build(connect(10, v6, -111, 1)));
        assert_eq!(v["network"]["dst_ip"], "::1");
        assert_eq!(v["network"]["result"], "refused");
        assert_eq!(v["network"]["error"], "ECONNREFUSED");
        let v = json(&b.build(connect(10, v6, -115, 1)));
        assert_eq!(v["network"]["result"], "in_progress");
        let v = json(&b.build(connect(2, v4, 0, 0)));
        assert_eq!(v["network"]["result"], "unknown");
    }

    /// fuzz/corpus/raw/crash-connect-ret-i32-min: a connect record whose
    /// result is `i32::MIN` (and a failed exec's, the same negation) panicked
    /// the pipeline with "attempt to negate with overflow".
    #[test]
    fn a_result_of_i32_min_is_an_error_not_a_panic() {
        let mut b = builder();
        let record = crate::record::encode(&RawEvent::Connect {
            header: EventHeader {
                tgid: 1,
                ppid: 0x8000_0000,
                ..header(EventKind::NetConnect)
            },
            data: ConnectData {
                family: 1,
                ret: i32::MIN,
                has_result: 11_293,
                ..ConnectData::default()
            },
        });
        let v = json(&b.build(crate::record::decode(&record).unwrap()));
        assert_eq!(v["network"]["result"], "error");
        assert_eq!(v["network"]["errno"], i32::MAX);
        let v = json(&b.build(exec(b"x\0", 2, 1, true, i32::MIN)));
        assert_eq!(v["exec"]["result"], "error");
        assert_eq!(v["exec"]["errno"], i32::MAX);
    }

    #[test]
    fn times_outside_rfc3339_are_clamped_not_fatal() {
        let far = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(300_000_000_000);
        assert_eq!(rfc3339(far).to_string(), "9999-12-31T23:59:59.999999999Z");
        let before = SystemTime::UNIX_EPOCH - std::time::Duration::from_secs(5);
        assert_eq!(
            rfc3339(before).to_string(),
            "1970-01-01T00:00:00.000000000Z"
        );
        let json = serde_json::to_string(&Timestamp(far)).unwrap();
        assert_eq!(json, "\"9999-12-31T23:59:59.999999999Z\"");
    }

    #[test]
    fn escape_attempts_are_tampers_raw_sockets_and_denied_unix_connects() {
        let mut b = builder();
        let verdict = |v: Decision| crate::policy::Verdict {
            name: "p".into(),
            verdict: v,
            rule: String::new(),
            enforced: true,
            version: 1,
        };
        let mut of = |kind, network: Option<Network>, policy: Option<Decision>| {
            let mut e = b.envelope(kind, SystemTime::UNIX_EPOCH);
            e.network = network;
            e.policy = policy.map(verdict);
            e.is_escape_attempt()
        };
        let unix = || {
            Some(Network {
                family: "unix",
                path: Some("/run/docker.sock".into()),
                ..Network::default()
            })
        };
        let tcp = || {
            Some(Network {
                family: "ipv4",
                ..Network::default()
            })
        };
        assert!(of(Kind::ProcessTamper, None, None));
        assert!(of(Kind::SensorTamper, None, None));
        assert!(of(Kind::NetworkSocket, tcp(), None));
        assert!(of(Kind::NetworkConnect, unix(), Some(Decision::Deny)));
        assert!(!of(Kind::NetworkConnect, unix(), Some(Decision::Allow)));
        assert!(!of(Kind::NetworkConnect, unix(), None));
        assert!(
            !of(Kind::NetworkConnect, tcp(), Some(Decision::Deny)),
            "a denial, no escape"
        );
        assert!(
            !of(Kind::PolicyViolation, unix(), Some(Decision::Deny)),
            "the twin repeats it"
        );
        assert!(!of(Kind::NetworkListen, tcp(), None));
        assert!(!of(Kind::ProcessExec, None, Some(Decision::Deny)));
    }

    #[test]
    fn device_numbers_read_major_colon_minor() {
        for dev in [0, 1, 0x0fe0_0000, (8 << 20) | 17, u32::MAX] {
            assert_eq!(dev_text(dev), format!("{}:{}", dev >> 20, dev & 0xf_ffff));
        }
        assert_eq!(dev_text((254 << 20) | 3), "254:3");
    }

    #[test]
    fn argv_splitting() {
        use crate::event::text::split_argv;
        assert!(split_argv(b"").is_empty());
        assert_eq!(split_argv(b"a\0\0b\0"), vec![&b"a"[..], b"", b"b"]);
        assert_eq!(split_argv(b"a\0cut"), vec![&b"a"[..], b"cut"]);
        // An exec event's argv is split the same way.
        let mut b = builder();
        for area in [&b""[..], b"\0", b"a\0\0b\0", b"a\0cut", b"x", b"\0\0"] {
            let len = u32::try_from(area.len()).unwrap();
            let v = json(&b.build(exec(area, len, u32::MAX, false, 0)));
            let want: Vec<String> = split_argv(area)
                .iter()
                .map(|a| String::from_utf8(a.to_vec()).unwrap())
                .collect();
            assert_eq!(v["process"]["argv"], serde_json::json!(want), "{area:?}");
            assert_eq!(v["process"]["argc"], want.len(), "{area:?}");
        }
    }
}

/// The run effects the engine emits, recorded instead of applied (no
/// kernel maps, no kills; fake maps where a bind must be refused).
#[cfg(test)]
mod effect_tests {
    use std::time::Duration;

    use sensor_common::event::{EventKind, ExitData};

    use super::*;
    use crate::{
        attribution::{AgentConfig, LaunchRequest, Matchers, Peer, RunTable},
        policy::{
            Mode, Policies, Policy, effects::recorder::Recorder, kernel::Enforcement,
            tables::fake::FakeMaps, testing::policy,
        },
    };

    const TICK: u64 = 10_000_000;

    /// An engine with `agents` and `policies` whose effects go to a
    /// recorder (and on to `maps`' binder, when given).
    fn engine(
        agents: &[AgentConfig],
        policies: Vec<Policy>,
        maps: Option<&FakeMaps>,
    ) -> (Recorder, Engine) {
        let keys = ProcessKeys::new("b", 100);
        let attribution = Attribution::new(
            keys.clone(),
            Box::new(std::collections::HashMap::new()),
            RunTable::new(),
            None,
        )
        .with_matchers(Matchers::new(agents).unwrap());
        let recorder = Recorder::default();
        let mut engine = Engine::new(
            Host {
                name: "h".into(),
                boot_id: "b".into(),
            },
            keys,
            Clock::with_offset(0),
            attribution,
        )
        .with_policies(Policies::of(policies))
        .with_effects(Box::new(recorder.clone()));
        if let Some(maps) = maps {
            engine = engine
                .with_enforcement(Enforcement::open_tables(maps.tables()).unwrap())
                .unwrap();
        }
        (recorder, engine)
    }

    fn curl_agent(policy: Option<&str>) -> AgentConfig {
        AgentConfig {
            name: "curl-agent".into(),
            exe: vec!["/usr/bin/curl".into()],
            policy: policy.map(str::to_owned),
            ..AgentConfig::default()
        }
    }

    /// The exec of /usr/bin/curl by pid 4242 (started at tick 700).
    fn curl_exec() -> RawEvent {
        let strings = ExecStrings {
            exe: b"/usr/bin/curl".to_vec(),
            cwd: b"/".to_vec(),
            filename: b"curl".to_vec(),
            argv: b"curl\0".to_vec(),
        };
        RawEvent::Exec {
            header: EventHeader {
                kind: EventKind::ProcessExec as u32,
                tgid: 4242,
                tid: 4242,
                ppid: 1,
                start_ns: 700 * TICK,
                comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
                ..EventHeader::default()
            },
            data: ExecData {
                exe_len: 13,
                cwd_len: 1,
                filename_len: 4,
                argv_len: 5,
                argv_orig_len: 5,
                argc: 1,
                ..ExecData::default()
            },
            strings,
            failed: false,
        }
    }

    fn curl_exit(run: u64) -> RawEvent {
        RawEvent::Exit {
            header: EventHeader {
                kind: EventKind::ProcessExit as u32,
                tgid: 4242,
                tid: 4242,
                ppid: 1,
                start_ns: 700 * TICK,
                run,
                ..EventHeader::default()
            },
            data: ExitData::default(),
        }
    }

    /// `sensor launch` by this test process.
    fn launch(e: &mut Engine, policy: Option<&str>, ttl: Option<u64>) -> Run {
        let (run, change) = e
            .launch(
                &Peer::local(std::process::id(), 0, 0),
                LaunchRequest {
                    agent: "bot".into(),
                    policy: policy.map(str::to_owned),
                    ttl_secs: ttl,
                    ..LaunchRequest::default()
                },
                SystemTime::now(),
            )
            .unwrap();
        assert_eq!(e.run_change(&change).kind, Kind::RunStart);
        run
    }

    fn bind(run: u64, policy: Option<&str>, parent: Option<u64>) -> RunEffect {
        RunEffect::Bind {
            run,
            policy: policy.map(str::to_owned),
            parent,
        }
    }

    #[test]
    fn a_launch_binds_its_run_and_a_sub_run_binds_under_its_parent() {
        let (effects, mut e) = engine(&[], vec![policy("a", Mode::Audit, &[], &[])], None);
        let top = launch(&mut e, Some("a"), None);
        // Bound before the launch is answered, and again (the same binding:
        // idempotent) by its run.start, as every started run is.
        assert_eq!(
            effects.take(),
            [
                bind(top.handle, Some("a"), None),
                bind(top.handle, Some("a"), None)
            ]
        );
        // This process is in `top` now: its next launch is a sub-run, with
        // the parent's policy.
        let sub = launch(&mut e, None, None);
        assert_eq!(sub.parent_id.as_deref(), Some(top.id.as_str()));
        assert_eq!(
            effects.take(),
            vec![bind(sub.handle, Some("a"), Some(top.handle)); 2]
        );
        // A policy not in the config binds no policy (only counts).
        let (effects, mut e) = engine(&[], vec![], None);
        let run = launch(&mut e, Some("gone"), None);
        assert_eq!(effects.take(), vec![bind(run.handle, None, None); 2]);
    }

    #[test]
    fn a_refused_bind_refuses_the_launch() {
        let maps = FakeMaps::new();
        maps.run_policy.set_capacity(0);
        let (effects, mut e) = engine(
            &[],
            vec![policy("a", Mode::Enforce, &["/usr/bin/true"], &[])],
            Some(&maps),
        );
        let refused = e.launch(
            &Peer::local(std::process::id(), 0, 0),
            LaunchRequest {
                agent: "bot".into(),
                policy: Some("a".into()),
                ..LaunchRequest::default()
            },
            SystemTime::now(),
        );
        assert!(matches!(
            refused,
            Err(crate::attribution::AttributionError::Bind(_))
        ));
        assert!(matches!(&effects.take()[..], [RunEffect::Bind { .. }]));
        assert_eq!(e.attribution().active_runs(), 0);
    }

    #[test]
    fn a_matcher_run_is_bound_when_it_starts_and_unbound_when_it_ends() {
        let (effects, mut e) = engine(
            &[curl_agent(Some("p"))],
            vec![policy("p", Mode::Audit, &[], &[])],
            None,
        );
        let mut out = Vec::new();
        e.build_into(curl_exec(), &mut out);
        assert_eq!(out[0].kind, Kind::RunStart);
        let handle = e
            .attribution()
            .handle_of(&out[0].run.as_ref().unwrap().id)
            .unwrap();
        assert_eq!(effects.take(), [bind(handle, Some("p"), None)]);
        // Its one process exits: the run ends and is unbound.
        out.clear();
        e.build_into(curl_exit(handle), &mut out);
        assert_eq!(
            out.iter().map(|e| e.kind).collect::<Vec<_>>(),
            [Kind::ProcessExit, Kind::RunEnd]
        );
        assert_eq!(effects.take(), [RunEffect::Unbind { run: handle }]);
    }

    #[test]
    fn a_matcher_run_its_enforce_policy_cannot_be_bound_for_is_killed() {
        let maps = FakeMaps::new();
        maps.run_policy.set_capacity(0);
        let (effects, mut e) = engine(
            &[curl_agent(Some("p"))],
            vec![policy("p", Mode::Enforce, &["/usr/bin/curl"], &[])],
            Some(&maps),
        );
        let mut out = Vec::new();
        e.build_into(curl_exec(), &mut out);
        let handle = e
            .attribution()
            .handle_of(&out[0].run.as_ref().unwrap().id)
            .unwrap();
        assert_eq!(
            effects.take(),
            [
                bind(handle, Some("p"), None),
                RunEffect::Kill {
                    pid: 4242,
                    start_ticks: Some(700)
                }
            ]
        );
        // Under an audit policy it goes on (and is reported).
        let maps = FakeMaps::new();
        maps.run_policy.set_capacity(0);
        let (effects, mut e) = engine(
            &[curl_agent(Some("p"))],
            vec![policy("p", Mode::Audit, &[], &[])],
            Some(&maps),
        );
        e.build_into(curl_exec(), &mut Vec::new());
        assert!(matches!(&effects.take()[..], [RunEffect::Bind { .. }]));
    }

    #[test]
    fn a_matcher_sub_run_deeper_than_its_parents_max_depth_is_killed_under_enforce() {
        for kills_fail in [false, true] {
            let mut p = policy("p", Mode::Enforce, &["/usr/bin/curl"], &[]);
            p.max_depth = Some(0);
            let (mut effects, mut e) = engine(&[curl_agent(None)], vec![p], None);
            effects.kills_fail = kills_fail;
            e = e.with_effects(Box::new(effects.clone()));
            let top = launch(&mut e, Some("p"), None);
            effects.take();
            // curl, a child in the launched run, matches an agent: a sub-run
            // at depth 1 under a policy that allows none.
            let RawEvent::Exec {
                mut header,
                data,
                strings,
                failed,
            } = curl_exec()
            else {
                unreachable!()
            };
            header.run = top.handle;
            header.run_how = How::INHERITED.word();
            let mut out = Vec::new();
            e.build_into(
                RawEvent::Exec {
                    header,
                    data,
                    strings,
                    failed,
                },
                &mut out,
            );
            let recorded = effects.take();
            assert!(
                matches!(&recorded[..], [RunEffect::Bind { parent: Some(p), .. }, RunEffect::Kill { pid: 4242, start_ticks: None }] if *p == top.handle),
                "{recorded:?}"
            );
            let violation = out
                .iter()
                .find(|e| e.kind == Kind::PolicyViolation)
                .unwrap();
            let verdict = violation.policy.as_ref().unwrap();
            assert_eq!(verdict.rule, "max_depth 0");
            assert_eq!(verdict.enforced, !kills_fail, "enforced: the kill happened");
        }
    }

    #[test]
    fn an_expired_run_kills_its_processes_and_is_unbound() {
        let me = std::process::id();
        let start_ticks = crate::identity::proc_start(me).unwrap().0;
        // A top-level run: its processes are killed (recorded here, not
        // sent), then it ends.
        let (effects, mut e) = engine(&[], vec![], None);
        let run = launch(&mut e, None, Some(60));
        effects.take();
        let later = SystemTime::now() + Duration::from_secs(61);
        let changes = e.expire(later);
        assert_eq!(
            effects.take(),
            [
                RunEffect::Stop {
                    pid: me,
                    start_ticks
                },
                RunEffect::Kill {
                    pid: me,
                    start_ticks: Some(start_ticks)
                }
            ]
        );
        assert_eq!(changes.len(), 1);
        assert_eq!(e.run_change(&changes[0]).kind, Kind::RunEnd);
        assert_eq!(effects.take(), [RunEffect::Unbind { run: run.handle }]);
        // A sub-run: its processes go to the parent run, nothing is killed.
        let (effects, mut e) = engine(&[], vec![], None);
        launch(&mut e, None, None);
        let sub = launch(&mut e, None, Some(60));
        effects.take();
        let changes = e.expire(later);
        assert_eq!(changes.len(), 1);
        e.run_change(&changes[0]);
        assert_eq!(effects.take(), [RunEffect::Unbind { run: sub.handle }]);
    }
}

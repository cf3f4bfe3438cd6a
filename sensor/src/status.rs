//! Live counters of the daemon, shared by the pipeline (which updates them)
//! and the control socket (which reports them).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Instant,
};

use serde::{Deserialize, Serialize};

use crate::{
    event::Kind,
    loader::{AttachedProgram, LinkStatus},
    sinks::{Health, OutputHandle},
};

/// Shared daemon state.
pub struct DaemonState {
    started: Instant,
    ready: AtomicBool,
    programs: OnceLock<Vec<AttachedProgram>>,
    outputs: OnceLock<Vec<OutputHandle>>,
    store: OnceLock<(std::path::PathBuf, Arc<crate::store::writer::StoreStats>)>,
    events: [AtomicU64; Kind::COUNT],
    /// Cumulative kernel losses per kind (mirrors the kernel counters).
    lost: Arc<[AtomicU64; Kind::COUNT]>,
    decode_errors: AtomicU64,
    read_errors: AtomicU64,
    /// Times the reader left records in the ring for a consumer behind.
    reader_holds: AtomicU64,
    runs_active: AtomicU64,
    inherit_failed: AtomicU64,
    /// Comparisons of the policy maps by the integrity check.
    policy_map_checks: AtomicU64,
    /// The kernel's count of other processes' bpf(2) calls that can change a map.
    foreign_bpf_calls: AtomicU64,
    /// Refusals and degradations an attacker's floods cause (see [`Defense`]).
    pub defense: Defense,
    /// Each program's link as the last integrity check found it.
    links: Mutex<Vec<LinkStatus>>,
    /// The programs for processes in runs are detached on purpose (no
    /// process is in a run): their missing links are `standby`, not a fault.
    run_probes_standby: AtomicBool,
    /// `sensor.tamper` findings, by what happened.
    tamper: Mutex<BTreeMap<&'static str, u64>>,
    /// This daemon's program generation (see `sensor_common::handover`).
    generation: AtomicU64,
    /// Records read at start that were recorded while no daemon read.
    recovered: AtomicU64,
    /// How long reading them took, ms.
    recovery_ms: AtomicU64,
    /// Size of the kernel's event ring, KiB.
    event_ring_kib: AtomicU64,
    /// The canary's rounds, and the blindness it found (not ready while blind).
    canary: Mutex<CanaryStatus>,
    /// The file watch's counters.
    file_watch: OnceLock<Arc<crate::tamper::files::Stats>>,
    /// `detection` events, by rule id and level.
    detections: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// The detection thread's counters.
    detect: OnceLock<Arc<crate::detect::DetectStats>>,
    /// The policies in force, their version and runs (set by the pipeline).
    policies: Mutex<PoliciesStatus>,
    /// The `[[agent]]` matchers in force, by name.
    agents: Mutex<Vec<String>>,
    /// Where the daemon's socket, pins and config are.
    paths: OnceLock<DaemonPaths>,
    /// Reloads (`sensor policy reload`, SIGHUP) applied and refused.
    reloads_ok: AtomicU64,
    reloads_refused: AtomicU64,
    /// The last reload's outcome.
    last_reload: Mutex<Option<LastReload>>,
}

/// Where the daemon's files are (set once at start).
#[derive(Debug, Clone)]
pub struct DaemonPaths {
    pub socket: std::path::PathBuf,
    pub pin_dir: std::path::PathBuf,
    pub config: Option<std::path::PathBuf>,
}

/// Counters of what the daemon refused or held back to stay up and honest
/// under hostile input: `sensor status` and `/metrics` show them.
#[derive(Default)]
pub struct Defense {
    /// `launch` requests refused (limits, bad values, a full kernel map).
    pub launches_refused: AtomicU64,
    /// Control connections closed at once (too many, per user or in all).
    pub connections_refused: AtomicU64,
    /// Denial records the kernel did not send (per-run rate limit).
    pub denials_suppressed: AtomicU64,
    /// Runs that lost records or had denials suppressed.
    pub runs_degraded: AtomicU64,
    /// Requests or records whose handling panicked (caught; the daemon went on).
    pub panics: AtomicU64,
    /// Denials reported, each once (the event with the verdict, not its
    /// `policy.violation` twin): the kernel or the daemon blocked it.
    pub denials_blocked: AtomicU64,
    /// Denials reported that were not blocked: would have been (audit).
    pub denials_audit: AtomicU64,
}

impl Defense {
    /// Adds one to `counter`.
    pub fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

impl Default for DaemonState {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            ready: AtomicBool::new(false),
            programs: OnceLock::new(),
            outputs: OnceLock::new(),
            store: OnceLock::new(),
            events: Default::default(),
            lost: Arc::new(Default::default()),
            decode_errors: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
            reader_holds: AtomicU64::new(0),
            runs_active: AtomicU64::new(0),
            inherit_failed: AtomicU64::new(0),
            policy_map_checks: AtomicU64::new(0),
            foreign_bpf_calls: AtomicU64::new(0),
            defense: Defense::default(),
            links: Mutex::new(Vec::new()),
            run_probes_standby: AtomicBool::new(false),
            tamper: Mutex::new(BTreeMap::new()),
            generation: AtomicU64::new(0),
            recovered: AtomicU64::new(0),
            recovery_ms: AtomicU64::new(0),
            event_ring_kib: AtomicU64::new(0),
            canary: Mutex::new(CanaryStatus::default()),
            file_watch: OnceLock::new(),
            detections: Mutex::new(BTreeMap::new()),
            detect: OnceLock::new(),
            policies: Mutex::new(PoliciesStatus::default()),
            agents: Mutex::new(Vec::new()),
            paths: OnceLock::new(),
            reloads_ok: AtomicU64::new(0),
            reloads_refused: AtomicU64::new(0),
            last_reload: Mutex::new(None),
        }
    }
}

impl DaemonState {
    /// The policies in force (at start, after a reload, as runs change).
    pub fn set_policies(&self, policies: PoliciesStatus) {
        *self.policies.lock().unwrap_or_else(PoisonError::into_inner) = policies;
    }

    /// The `[[agent]]` matchers in force.
    pub fn set_agents(&self, agents: Vec<String>) {
        *self.agents.lock().unwrap_or_else(PoisonError::into_inner) = agents;
    }

    /// Where the daemon's socket, pins and config are.
    pub fn set_paths(&self, paths: DaemonPaths) {
        let _ = self.paths.set(paths);
    }

    /// Counts a reload: applied (`error` none) or refused (why).
    pub fn count_reload(&self, error: Option<&str>) {
        Defense::count(if error.is_none() {
            &self.reloads_ok
        } else {
            &self.reloads_refused
        });
        *self
            .last_reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(LastReload {
            at_ms: unix_ms(std::time::SystemTime::now()),
            ok: error.is_none(),
            error: error.map(str::to_owned),
        });
    }

    /// Counts a `detection` event of rule `rule` at `level`.
    pub fn count_detection(&self, rule: &str, level: &'static str) {
        let mut map = match self.detections.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some(n) = map.get_mut(&(rule.to_owned(), level)) {
            *n += 1;
        } else {
            map.insert((rule.to_owned(), level), 1);
        }
    }

    pub fn set_detect(&self, stats: Arc<crate::detect::DetectStats>) {
        let _ = self.detect.set(stats);
    }

    /// The detection thread's counters, once it runs.
    #[must_use]
    pub fn detect(&self) -> Option<&Arc<crate::detect::DetectStats>> {
        self.detect.get()
    }

    /// `detection` events so far, by (rule id, level).
    #[must_use]
    pub fn detections(&self) -> Vec<((String, &'static str), u64)> {
        let map = match self.detections.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        map.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }

    pub fn set_programs(&self, programs: Vec<AttachedProgram>) {
        let _ = self.programs.set(programs);
    }

    pub fn set_outputs(&self, outputs: Vec<OutputHandle>) {
        let _ = self.outputs.set(outputs);
    }

    pub fn set_store(
        &self,
        path: std::path::PathBuf,
        stats: Arc<crate::store::writer::StoreStats>,
    ) {
        let _ = self.store.set((path, stats));
    }

    /// This daemon's program generation.
    pub fn set_generation(&self, generation: u32) {
        self.generation
            .store(u64::from(generation), Ordering::Relaxed);
    }

    /// Size of the kernel's event ring, KiB.
    pub fn set_event_ring_kib(&self, kib: u32) {
        self.event_ring_kib.store(u64::from(kib), Ordering::Relaxed);
    }

    /// Records read at start that were recorded while no daemon read.
    pub fn set_recovered(&self, records: u64, took: std::time::Duration) {
        self.recovered.store(records, Ordering::Relaxed);
        self.recovery_ms.store(
            u64::try_from(took.as_millis()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The links as the integrity check found them.
    /// Whether the programs for processes in runs are on standby (detached
    /// on purpose), for status.
    pub fn set_run_probes_standby(&self, standby: bool) {
        self.run_probes_standby.store(standby, Ordering::Relaxed);
    }

    /// Whether the programs for processes in runs are on standby.
    #[must_use]
    pub fn run_probes_standby(&self) -> bool {
        self.run_probes_standby.load(Ordering::Relaxed)
    }

    pub fn set_links(&self, links: Vec<LinkStatus>) {
        *self.links.lock().unwrap_or_else(PoisonError::into_inner) = links;
    }

    /// The file watch's counters (see [`crate::tamper::files`]).
    pub fn set_file_watch(&self, stats: Arc<crate::tamper::files::Stats>) {
        let _ = self.file_watch.set(stats);
    }

    /// Counts a `sensor.tamper` finding.
    pub fn count_tamper(&self, what: &'static str) {
        *self
            .tamper
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entry(what)
            .or_default() += 1;
    }

    /// The canary's state after its last step.
    pub fn set_canary(&self, canary: CanaryStatus) {
        *self.canary.lock().unwrap_or_else(PoisonError::into_inner) = canary;
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn count_event(&self, kind: Kind) {
        self.events[kind.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a denial once: an event whose verdict is deny, but not the
    /// `policy.violation` that repeats it.
    pub fn count_denial(&self, kind: Kind, policy: Option<&crate::event::Verdict>) {
        match policy {
            Some(v) if v.is_deny() && kind != Kind::PolicyViolation => {
                Defense::count(if v.enforced {
                    &self.defense.denials_blocked
                } else {
                    &self.defense.denials_audit
                })
            }
            _ => {}
        }
    }

    pub fn count_decode_error(&self) {
        self.decode_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub fn set_kernel_lost(&self, kind: Kind, cumulative: u64) {
        self.lost[kind.index()].store(cumulative, Ordering::Relaxed);
    }

    pub fn set_runs(&self, active: usize) {
        self.runs_active.store(active as u64, Ordering::Relaxed);
    }

    pub fn set_read_errors(&self, cumulative: u64) {
        self.read_errors.store(cumulative, Ordering::Relaxed);
    }

    /// Times the reader held back for a consumer behind (cumulative).
    pub fn set_reader_holds(&self, cumulative: u64) {
        self.reader_holds.store(cumulative, Ordering::Relaxed);
    }

    /// The last inherit-failed figure.
    #[must_use]
    pub fn report_inherit_failed(&self) -> u64 {
        self.inherit_failed.load(Ordering::Relaxed)
    }

    /// Children the kernel could not enter in their creator's run (map full).
    pub fn set_inherit_failed(&self, cumulative: u64) {
        self.inherit_failed.store(cumulative, Ordering::Relaxed);
    }

    /// The integrity check's comparisons of the policy maps so far, and the
    /// kernel's count of other processes' bpf(2) calls (when read).
    pub fn set_policy_map_checks(&self, comparisons: u64, foreign_bpf: Option<u64>) {
        self.policy_map_checks.store(comparisons, Ordering::Relaxed);
        if let Some(calls) = foreign_bpf {
            self.foreign_bpf_calls.store(calls, Ordering::Relaxed);
        }
    }

    /// A snapshot for `sensor status`.
    #[must_use]
    pub fn report(&self) -> StatusReport {
        let mut events = BTreeMap::new();
        let mut total = 0;
        for kind in Kind::all() {
            let n = self.events[kind.index()].load(Ordering::Relaxed);
            total += n;
            events.insert(kind.as_str().to_owned(), n);
        }
        events.insert("total".to_owned(), total);
        let mut by_kind = BTreeMap::new();
        let mut lost_total = 0;
        for kind in Kind::all() {
            let n = self.lost[kind.index()].load(Ordering::Relaxed);
            if n > 0 {
                by_kind.insert(kind.as_str().to_owned(), n);
            }
            lost_total += n;
        }
        let links = self
            .links
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let tamper = {
            let by_what = self.tamper.lock().unwrap_or_else(PoisonError::into_inner);
            TamperStatus {
                total: by_what.values().sum(),
                by_what: by_what.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
                policy_map_checks: self.policy_map_checks.load(Ordering::Relaxed),
                foreign_bpf_calls: self.foreign_bpf_calls.load(Ordering::Relaxed),
            }
        };
        let canary = self
            .canary
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let attached = self.ready.load(Ordering::Acquire);
        let standby = self.run_probes_standby.load(Ordering::Relaxed);
        let reason = if !attached {
            Some("not attached: starting or stopping".to_owned())
        } else {
            canary.blind.as_ref().map(|b| {
                format!(
                    "blind (sensor.blind) since {}: {}",
                    crate::event::rfc3339(
                        std::time::UNIX_EPOCH + std::time::Duration::from_millis(b.since_ms)
                    ),
                    b.detail
                )
            })
        };
        StatusReport {
            ready: reason.is_none(),
            reason,
            canary,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            git: GIT_COMMIT.to_owned(),
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            programs: self
                .programs
                .get()
                .map(|p| {
                    p.iter()
                        .map(|p| {
                            let link = links.iter().find(|l| l.name == p.name);
                            ProgramStatus {
                                name: p.name.to_owned(),
                                id: p.id,
                                attach: p.attach.clone(),
                                link_id: link.map(|l| l.link_id),
                                attached: link.is_some_and(|l| l.attached),
                                pinned: link.is_some_and(|l| l.pinned),
                                standby: link.is_none()
                                    && standby
                                    && crate::loader::programs::in_runs_only(p.name),
                            }
                        })
                        .collect()
                })
                .unwrap_or_default(),
            events,
            lost: LostStatus {
                total: lost_total,
                by_kind,
            },
            runs_active: self.runs_active.load(Ordering::Relaxed),
            kernel_inherit_failed: self.inherit_failed.load(Ordering::Relaxed),
            decode_errors: self.decode_errors.load(Ordering::Relaxed),
            kernel_read_errors: self.read_errors.load(Ordering::Relaxed),
            reader_holds: self.reader_holds.load(Ordering::Relaxed),
            outputs: self
                .outputs
                .get()
                .map(|o| o.iter().map(OutputStatus::of).collect())
                .unwrap_or_default(),
            store: self.store.get().map(|(path, s)| StoreStatus {
                path: path.display().to_string(),
                written: s.written.load(Ordering::Relaxed),
                dropped: s.dropped.load(Ordering::Relaxed),
                failed: s.failed.load(Ordering::Relaxed),
            }),
            launches_refused: self.defense.launches_refused.load(Ordering::Relaxed),
            connections_refused: self.defense.connections_refused.load(Ordering::Relaxed),
            denials_suppressed: self.defense.denials_suppressed.load(Ordering::Relaxed),
            denials_blocked: self.defense.denials_blocked.load(Ordering::Relaxed),
            denials_audit: self.defense.denials_audit.load(Ordering::Relaxed),
            runs_degraded: self.defense.runs_degraded.load(Ordering::Relaxed),
            panics: self.defense.panics.load(Ordering::Relaxed),
            tamper,
            generation: self.generation.load(Ordering::Relaxed),
            recovered: self.recovered.load(Ordering::Relaxed),
            recovery_ms: self.recovery_ms.load(Ordering::Relaxed),
            event_ring_kib: self.event_ring_kib.load(Ordering::Relaxed),
            file_watch: self.file_watch.get().map(|s| FileWatchStatus::of(s)),
            policies: self
                .policies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            agents: self
                .agents
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            paths: self.paths.get().map(PathsStatus::of),
            reloads: ReloadsStatus {
                ok: self.reloads_ok.load(Ordering::Relaxed),
                refused: self.reloads_refused.load(Ordering::Relaxed),
                last: self
                    .last_reload
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .clone(),
            },
        }
    }
}

/// The commit the sensor was built from (`SENSOR_GIT_COMMIT` at build
/// time, else `git rev-parse`; "unknown" outside git).
pub const GIT_COMMIT: &str = match option_env!("SENSOR_GIT_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// Unix time in ms (0 before 1970).
#[must_use]
pub fn unix_ms(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The policies in force.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct PoliciesStatus {
    /// Version of the policy set (1 at start, one more at each reload).
    pub version: u64,
    /// Each policy, by name.
    pub policies: Vec<PolicyStatus>,
    /// The policies (and agents) are left out: the caller is not root.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub hidden: bool,
}

/// One policy in force.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PolicyStatus {
    pub name: String,
    /// `audit` or `enforce`.
    pub mode: String,
    /// The version of the policy set it was loaded in.
    pub version: u64,
    /// Active runs bound to it.
    pub runs_active: u64,
    /// Its kernel slot and policy id (absent without kernel maps): what
    /// `sensor status` shows of the pin dir when the daemon is down.
    #[serde(default)]
    pub slot: Option<u32>,
    #[serde(default)]
    pub id: Option<u32>,
}

/// Where the daemon's socket, pins and config are, and what is pinned.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PathsStatus {
    pub socket: String,
    pub pin_dir: String,
    /// The config file it reads at start and at each reload (absent: the
    /// default, `/etc/sensor/sensor.toml`, when present).
    #[serde(default)]
    pub config: Option<String>,
    /// The maps pinned in the pin dir now (they outlive the daemon: the
    /// policies and run bindings stay in force while it is down).
    #[serde(default)]
    pub maps_pinned: Vec<String>,
    /// The maps that should be.
    #[serde(default)]
    pub maps_expected: u64,
}

impl PathsStatus {
    fn of(p: &DaemonPaths) -> Self {
        let maps_pinned = sensor_common::maps::PINNED
            .iter()
            .filter(|m| p.pin_dir.join(m).exists())
            .map(|m| (*m).to_owned())
            .collect();
        Self {
            socket: p.socket.display().to_string(),
            pin_dir: p.pin_dir.display().to_string(),
            config: p.config.as_ref().map(|c| c.display().to_string()),
            maps_pinned,
            maps_expected: sensor_common::maps::PINNED.len() as u64,
        }
    }
}

/// Reloads since the daemon started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ReloadsStatus {
    /// Applied.
    pub ok: u64,
    /// Refused (the running policies and matchers stayed).
    pub refused: u64,
    #[serde(default)]
    pub last: Option<LastReload>,
}

/// The last reload.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LastReload {
    /// Unix ms.
    pub at_ms: u64,
    pub ok: bool,
    /// Why it was refused.
    #[serde(default)]
    pub error: Option<String>,
}

/// What `sensor status --json` prints.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StatusReport {
    /// Attached, and not blind.
    pub ready: bool,
    /// Why not ready (absent when ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The canary's rounds (see `sensor::canary`).
    #[serde(default)]
    pub canary: CanaryStatus,
    pub pid: u32,
    pub version: String,
    /// The commit it was built from ("unknown" outside git).
    #[serde(default)]
    pub git: String,
    pub uptime_ms: u64,
    pub programs: Vec<ProgramStatus>,
    pub events: BTreeMap<String, u64>,
    pub lost: LostStatus,
    #[serde(default)]
    pub runs_active: u64,
    /// Processes that could not join their creator's run (kernel map full).
    #[serde(default)]
    pub kernel_inherit_failed: u64,
    pub decode_errors: u64,
    pub kernel_read_errors: u64,
    /// Times the daemon stopped reading the kernel's ring because an output
    /// or the store had more than 2048 events waiting (each a pause until
    /// the next drain, 7 ms; the records wait in the ring).
    #[serde(default)]
    pub reader_holds: u64,
    pub outputs: Vec<OutputStatus>,
    #[serde(default)]
    pub store: Option<StoreStatus>,
    /// `launch` requests refused (limits, invalid values, a full kernel map).
    #[serde(default)]
    pub launches_refused: u64,
    /// Control connections closed at once (too many, per user or in all).
    #[serde(default)]
    pub connections_refused: u64,
    /// Denial records the kernel held back (per-run rate limit), counted.
    #[serde(default)]
    pub denials_suppressed: u64,
    /// Denials reported (each once) that were blocked.
    #[serde(default)]
    pub denials_blocked: u64,
    /// Denials reported (each once) that were not blocked: audit, or an
    /// exec the kernel could not decide on.
    #[serde(default)]
    pub denials_audit: u64,
    /// Runs that lost records or had denial records suppressed.
    #[serde(default)]
    pub runs_degraded: u64,
    /// Requests or kernel records whose handling panicked (caught).
    #[serde(default)]
    pub panics: u64,
    /// What the integrity check found (`sensor.tamper` events).
    #[serde(default)]
    pub tamper: TamperStatus,
    /// Generation of this daemon's kernel programs (one more at each
    /// start or take-over on the same pin dir).
    #[serde(default)]
    pub generation: u64,
    /// Records read at start that the kernel recorded while no daemon was
    /// reading (events with `delivery: "recovered"`).
    #[serde(default)]
    pub recovered: u64,
    /// How long reading them took, ms.
    #[serde(default)]
    pub recovery_ms: u64,
    /// Size of the kernel's event ring, KiB (`[limits] event_ring_kib`).
    #[serde(default)]
    pub event_ring_kib: u64,
    /// The watch of the sensor's files (`sensor.tamper`, method `file`).
    #[serde(default)]
    pub file_watch: Option<FileWatchStatus>,
    /// The policies in force: each with its mode, version and runs.
    #[serde(default)]
    pub policies: PoliciesStatus,
    /// The `[[agent]]` matchers in force, by name.
    #[serde(default)]
    pub agents: Vec<String>,
    /// Where the socket, pins and config are; which maps are pinned.
    #[serde(default)]
    pub paths: Option<PathsStatus>,
    /// Reloads since start.
    #[serde(default)]
    pub reloads: ReloadsStatus,
}

/// The canary's rounds since the daemon started, and any blindness now.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct CanaryStatus {
    /// Seconds between rounds (`[daemon] canary_interval_secs`); 0: off.
    pub interval_secs: u64,
    /// Rounds whose exec and connect came through the kernel.
    pub rounds_ok: u64,
    /// Rounds whose records did not (each part of a blindness).
    pub rounds_failed: u64,
    /// Unix ms of the end of the last round that saw both records.
    #[serde(default)]
    pub last_ok_ms: Option<u64>,
    /// While the sensor is blind: since when and what is missing.
    #[serde(default)]
    pub blind: Option<BlindStatus>,
}

/// A blindness in progress (`sensor.blind`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BlindStatus {
    /// Unix ms of the start of the first failed round.
    pub since_ms: u64,
    /// `exec`, `connect`: what the last failed round missed.
    pub missing: Vec<String>,
    /// The last failed round.
    pub round: u64,
    /// What it found.
    pub detail: String,
}

/// The file watch's state and counters since the daemon started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileWatchStatus {
    /// It runs.
    pub watching: bool,
    /// `known`, or `hidden`: without CAP_SYS_ADMIN the kernel does not say
    /// which process made a change.
    pub actors: String,
    /// Directories watched now.
    pub dirs: u64,
    /// Kernel events read, and of them the daemon's own (ignored).
    pub events: u64,
    pub own: u64,
    /// Events gathered into another's report (same process and file).
    pub merged: u64,
    /// Journal metadata changes that changed nothing (SQLite's chown of its
    /// journals when a query opens the store as root), not reported.
    #[serde(default)]
    pub journal_no_ops: u64,
    /// `sensor.tamper` reports made.
    pub reported: u64,
    /// Left out: the kernel had reported the same act (an open for writing).
    pub duplicates: u64,
    /// Changes counted, not reported one by one (rate limit).
    pub suppressed: u64,
    /// Kernel queue overflows (changes lost, how many unknown).
    pub overflows: u64,
    /// Reports lost, the pipeline's queue full.
    pub dropped: u64,
    /// Directories that could not be watched, read errors, unreadable events.
    pub errors: u64,
    /// Why it does not run, or the last error.
    pub error: Option<String>,
}

impl FileWatchStatus {
    #[must_use]
    pub fn of(s: &crate::tamper::files::Stats) -> Self {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Self {
            watching: s.watching.load(Ordering::Relaxed),
            actors: if s.actors_hidden.load(Ordering::Relaxed) {
                "hidden"
            } else {
                "known"
            }
            .to_owned(),
            dirs: get(&s.dirs),
            events: get(&s.events),
            own: get(&s.own),
            merged: get(&s.merged),
            journal_no_ops: get(&s.journal_no_ops),
            reported: get(&s.reported),
            duplicates: get(&s.duplicates),
            suppressed: get(&s.suppressed),
            overflows: get(&s.overflows),
            dropped: get(&s.dropped),
            errors: get(&s.errors) + get(&s.malformed),
            error: s.error(),
        }
    }
}

/// `sensor.tamper` findings since the daemon started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct TamperStatus {
    pub total: u64,
    /// By what happened ("pin removed", "link detached", ...).
    pub by_what: BTreeMap<String, u64>,
    /// Comparisons of the policy maps so far: after each bpf(2) call by
    /// another process that can change a map, and every 10 s otherwise.
    #[serde(default)]
    pub policy_map_checks: u64,
    /// bpf(2) calls by processes other than the daemon that can change a
    /// map (every command but the reads and queries), as the kernel counted.
    #[serde(default)]
    pub foreign_bpf_calls: u64,
}

impl StatusReport {
    /// What a caller that is not root may see: counters and health, not
    /// where events go (output specs can name hosts, paths and indexes),
    /// where the store and the config are, nor the policies and agents.
    #[must_use]
    pub fn redacted(mut self) -> Self {
        for o in &mut self.outputs {
            o.spec = String::new();
            o.last_error = None;
        }
        if let Some(store) = &mut self.store {
            store.path = String::new();
        }
        if let Some(fw) = &mut self.file_watch {
            // It may name the state dir's files.
            fw.error = None;
        }
        if let Some(paths) = &mut self.paths {
            paths.config = None;
        }
        // Which policy is in which mode, and which agents start runs: the
        // config's, for root (a watched agent has no use for them).
        self.policies.policies.clear();
        self.policies.hidden = true;
        self.agents.clear();
        if let Some(last) = &mut self.reloads.last {
            // It may quote the config.
            last.error = None;
        }
        self
    }
}

/// The store writer's counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct StoreStatus {
    pub path: String,
    pub written: u64,
    /// Rows dropped because the writer's queue was full.
    pub dropped: u64,
    /// Rows whose write failed (full disk, locked file).
    pub failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ProgramStatus {
    pub name: String,
    pub id: u32,
    pub attach: String,
    /// The kernel id of its link (a re-attach makes a new one).
    #[serde(default)]
    pub link_id: Option<u32>,
    /// Its link attaches it (checked in the kernel every second).
    #[serde(default)]
    pub attached: bool,
    /// Its link is pinned in `<pin-dir>/links`: it stays attached, and
    /// enforcing, while the daemon is down.
    #[serde(default)]
    pub pinned: bool,
    /// Detached because no process is in a run: it acts on processes in
    /// runs only, and is attached again before one is put in a run.
    #[serde(default)]
    pub standby: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LostStatus {
    pub total: u64,
    pub by_kind: BTreeMap<String, u64>,
}

/// One output's health and counters.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct OutputStatus {
    /// Its name (metrics label, spool directory).
    pub name: String,
    /// Its SPEC, token hidden.
    pub spec: String,
    pub format: String,
    /// `ok`, or `retrying` while the receiver fails (events are spooled).
    pub state: String,
    /// Events written (stdout, file) or acknowledged by the receiver.
    pub sent: u64,
    /// Same as `sent` (the name of the first version).
    pub written: u64,
    /// Events lost: queue full, write failed, spool full.
    pub dropped: u64,
    /// Events the receiver refused for good.
    pub failed: u64,
    pub write_errors: u64,
    /// Events waiting in the spool, and their bytes.
    pub spooled: u64,
    pub spool_bytes: u64,
    pub last_error: Option<String>,
    /// Unix ms of the last delivery (null: none yet).
    pub last_ok_ms: Option<u64>,
}

impl OutputStatus {
    #[must_use]
    pub fn of(o: &OutputHandle) -> Self {
        let sent = o.stats.sent.load(Ordering::Relaxed);
        let (spooled, spool_bytes) = o.spooled();
        let last_ok = o.stats.last_ok_ms.load(Ordering::Relaxed);
        Self {
            name: o.name.clone(),
            spec: o.spec.clone(),
            format: o.format.as_str().to_owned(),
            state: match o.stats.health() {
                Health::Ok => "ok",
                Health::Retrying => "retrying",
            }
            .to_owned(),
            sent,
            written: sent,
            dropped: o.dropped(),
            failed: o.stats.failed.load(Ordering::Relaxed),
            write_errors: o.stats.write_errors.load(Ordering::Relaxed),
            spooled,
            spool_bytes,
            last_error: o.stats.last_error(),
            last_ok_ms: (last_ok > 0).then_some(last_ok),
        }
    }
}

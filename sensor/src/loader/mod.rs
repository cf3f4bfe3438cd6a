//! Loading and attaching the kernel programs.
//!
//! Start-up order: mount tracefs/bpffs when needed, resolve struct offsets
//! from BTF and tracepoint offsets from tracefs, load the object with those
//! offsets as a global, take the event ring buffer and counters, then attach
//! every probe of [`programs::PROBES`]. Dropping [`Probes`] detaches them all,
//! unless they are pinned ([`Probes::persist`]).
//!
//! While the daemon runs, [`Probes::check`] (every second) makes sure what
//! it pinned is still pinned and what it attached is still attached, and
//! puts back what someone removed or detached (`integrity`).

pub mod btf;
mod integrity;
pub mod mounts;
pub mod owner;
pub mod pinned;
pub mod programs;
mod seam;
pub(crate) mod sys;
pub mod tracefs;

use std::{
    fs::File,
    io,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{
        Array, HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::LpmTrie,
    },
    programs::{
        CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, RawTracePoint, TracePoint,
        links::{FdLink, PinnedLink},
    },
};
use sensor_common::{
    config::{CONFIG_GLOBAL, SensorConfig},
    event::ProcRun,
    handover::{ReaderMark, next_generation},
    maps,
    owner::Owner,
    stats::{RunStats, Stats},
};
use tracing::{debug, info};

pub use self::integrity::{LinkStatus, StopReport};
use self::programs::{Attach, Needed, PROBES, Probe};

/// The eBPF object built by build.rs (empty when built with `AYA_BUILD_SKIP=1`).
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/sensor"));

/// Why the kernel side could not be set up. Each message names the object.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("{what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot mount {fs_type} at {target}")]
    Mount {
        fs_type: &'static str,
        target: &'static str,
        #[source]
        source: io::Error,
    },
    #[error(
        "no cgroup2 filesystem is mounted (needed for the connect hooks); mount one, e.g. at /sys/fs/cgroup"
    )]
    NoCgroup2,
    #[error("cannot open the cgroup2 root {path}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "kernel BTF not found at {path}: the sensor needs a kernel built with CONFIG_DEBUG_INFO_BTF=y"
    )]
    NoBtf { path: PathBuf },
    #[error("cannot parse kernel BTF at {path}")]
    Btf {
        path: PathBuf,
        #[source]
        source: btf_rs::Error,
    },
    #[error("kernel BTF has no field {member} in struct {name}")]
    BtfField {
        name: &'static str,
        member: &'static str,
    },
    #[error("tracepoint {category}/{name} is not available ({path})")]
    Tracepoint {
        category: &'static str,
        name: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("tracepoint {category}/{name}: field {field}: {detail}")]
    TracepointField {
        category: &'static str,
        name: &'static str,
        field: &'static str,
        detail: String,
    },
    #[error(
        "pin dir {path} {why}: whoever controls it controls what the kernel enforces (remove it, \
         or make it a directory of root's, mode 0700)"
    )]
    PinDir { path: PathBuf, why: String },
    #[error("this binary was built without its eBPF object (AYA_BUILD_SKIP); rebuild it normally")]
    NoObject,
    #[error("loading the eBPF object")]
    Load(#[source] Box<EbpfError>),
    #[error("program {program} is missing from the eBPF object")]
    MissingProgram { program: &'static str },
    #[error("map {map} is missing from the eBPF object")]
    MissingMap { map: &'static str },
    #[error("map {map}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("program {program}: its link cannot be owned (needed to pin it)")]
    Link {
        program: &'static str,
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    #[error("program {program}: no descriptor of its link could be taken")]
    LinkFd {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("program {program} ({purpose}) could not be loaded or attached to {attach}")]
    Program {
        program: &'static str,
        purpose: &'static str,
        attach: Attach,
        #[source]
        source: Box<ProgramError>,
    },
}

/// An attached program, as `sensor status` lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AttachedProgram {
    pub name: &'static str,
    pub id: u32,
    pub attach: String,
}

/// One attached program and its link. The daemon always keeps its own
/// descriptor of the link (see [`sys::own_link_fd`]); pinning adds a second
/// reference in bpffs, so a failed pin never costs the daemon its handle.
/// Closing the descriptor detaches the program unless the link is pinned.
struct ProbeLink {
    probe: &'static Probe,
    fd: OwnedFd,
    /// The kernel's id of the link (a re-attach makes a new link).
    id: u32,
}

/// A map pinned in the pin dir, with a handle of the daemon's own on it (to
/// pin it again when its pin is removed) and its kernel id (to tell our map
/// from another pinned in its place).
struct PinHandle {
    name: &'static str,
    map: MapData,
    id: u32,
}

/// The loaded object with every probe attached. Dropping it detaches them,
/// unless [`Probes::persist`] pinned them.
pub struct Probes {
    ebpf: Ebpf,
    attached: Vec<AttachedProgram>,
    links: Vec<ProbeLink>,
    /// Whether the links are to be pinned (enforce policies are loaded).
    pinned: bool,
    pin_dir: PathBuf,
    links_dir: PathBuf,
    /// The cgroup2 root the sock_addr programs attach to (kept to attach
    /// one again when its link is detached).
    cgroup: File,
    maps: Vec<PinHandle>,
    /// The owner record map and what this daemon wrote to it.
    owner_map: Array<MapData, Owner>,
    owner: Option<Owner>,
    /// Which generation's programs act, and ours.
    active: Array<MapData, u32>,
    generation: u32,
    /// Findings of the integrity check that could not be put back, reported
    /// once until fixed.
    unresolved: std::collections::BTreeSet<(&'static str, String)>,
    /// Whether every [`Needed::InRuns`] program is attached (see
    /// [`Probes::set_run_probes`]).
    run_probes: bool,
}

impl Probes {
    /// The programs attached, with their kernel ids.
    #[must_use]
    pub fn attached(&self) -> &[AttachedProgram] {
        &self.attached
    }

    /// The pin dir.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Pins every link in `<pin-dir>/links` (`on`), so the programs stay
    /// attached, recording and enforcing, while the daemon is down; or
    /// unpins them so they detach with the daemon (`--detach-on-exit`).
    pub fn persist(&mut self, on: bool) -> io::Result<()> {
        self.pinned = on;
        if on {
            std::fs::create_dir_all(&self.links_dir)?;
        }
        let mut first_error = None;
        for link in &self.links {
            let path = self.links_dir.join(link.probe.program);
            let result = if on {
                if pinned_link_id(&path) == Some(link.id) {
                    Ok(())
                } else {
                    // A stale pin of the same name (a previous daemon's) is replaced.
                    remove_pin(&path).and_then(|()| sys::pin(link.fd.as_fd(), &path))
                }
            } else {
                remove_pin(&path)
            };
            if let Err(e) = result {
                tracing::error!(program = link.probe.program, path = %path.display(), error = %e, "cannot (un)pin a program link");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Whether the programs for processes in runs ([`Needed::InRuns`]) are attached.
    #[must_use]
    pub fn run_probes(&self) -> bool {
        self.run_probes
    }

    /// Whether any of them has a link: all of them, or some after an
    /// attach that failed part way.
    #[must_use]
    pub fn any_run_probe(&self) -> bool {
        self.run_probes || self.links.iter().any(|l| l.probe.needed == Needed::InRuns)
    }

    /// Attaches (`on`) or detaches the programs that act on processes in
    /// runs only ([`Needed::InRuns`]): the caller attaches them before any
    /// process is put in a run, and detaches them once the kernel's
    /// process → run map is empty. Each is a syscall tracepoint, and an
    /// attached one costs every call of its syscall on the host the
    /// tracepoint's dispatch, even when its program returns at once.
    ///
    /// Attached, they are pinned like the others (when the links are), so
    /// they stay while the daemon is down; detached, their pins go. The
    /// integrity check and `sensor status` see the links there are. Returns
    /// whether anything changed; on an error the programs attached so far
    /// stay, and a later call attaches the rest.
    pub fn set_run_probes(&mut self, on: bool) -> Result<bool, LoaderError> {
        // Off also takes away what a partial attach left.
        if on == self.run_probes && (on || !self.any_run_probe()) {
            return Ok(false);
        }
        if on {
            for probe in PROBES.iter().filter(|p| p.needed == Needed::InRuns) {
                if self.links.iter().any(|l| l.probe.program == probe.program) {
                    continue;
                }
                let (program_id, link) = attach_probe(&mut self.ebpf, probe, &self.cgroup, false)?;
                let (fd, id) = own_link(probe, &link)?;
                drop(link);
                self.links.push(ProbeLink { probe, fd, id });
                self.attached.push(AttachedProgram {
                    name: probe.program,
                    id: program_id,
                    attach: probe.attach.to_string(),
                });
                if self.pinned
                    && let Err(e) = self.pin_link(self.links.len() - 1)
                {
                    // The integrity check tries again every second.
                    tracing::error!(program = probe.program, error = %e, "cannot pin a program link");
                }
            }
        } else {
            let mut i = 0;
            while i < self.links.len() {
                if self.links[i].probe.needed != Needed::InRuns {
                    i += 1;
                    continue;
                }
                let link = self.links.remove(i);
                self.attached.remove(i);
                let path = self.links_dir.join(link.probe.program);
                if let Err(e) = remove_pin(&path) {
                    tracing::error!(program = link.probe.program, path = %path.display(), error = %e, "cannot unpin a program link");
                }
                // Our descriptor was the last reference: the program detaches.
                drop(link);
            }
        }
        self.run_probes = on;
        Ok(true)
    }

    /// Makes this load the one acting (see [`seam::take_over`]): ours
    /// pinned under temporary names, the active generation switched to ours
    /// in one write, ours renamed over the previous links. Returns how many
    /// previous links there were.
    fn take_over(&mut self, previous: PreviousLinks) -> Result<usize, LoaderError> {
        let programs: Vec<&str> = self.links.iter().map(|l| l.probe.program).collect();
        let n = seam::take_over(
            &mut seam::Bpffs {
                links: &self.links,
                maps: &self.maps,
            },
            &mut self.active,
            &self.links_dir,
            &programs,
            self.generation,
            previous.0,
        )?;
        self.pinned = true;
        Ok(n)
    }

    /// This load's generation.
    #[must_use]
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Whether the links are pinned (kept while the daemon is down).
    #[must_use]
    pub fn persistent(&self) -> bool {
        self.pinned
    }

    /// Records this daemon as the owner of the pin dir (see
    /// [`sensor_common::owner`]): its pid and start time, its version and
    /// its control socket. `sensor unload` refuses to remove the pins while
    /// this process lives, and the integrity check rewrites the record when
    /// someone else changes it.
    pub fn claim(&mut self, socket: &Path) -> Result<(), LoaderError> {
        let pid = std::process::id();
        let start_ticks = crate::identity::proc_start(pid).map_or(0, |(t, _)| t);
        let record = owner::record(pid, start_ticks, env!("CARGO_PKG_VERSION"), socket);
        self.owner_map
            .set(0, record, 0)
            .map_err(|source| LoaderError::Map {
                map: maps::OWNER,
                source,
            })?;
        self.owner = Some(record);
        Ok(())
    }
}

/// Removes the pin at `path`; a pin that is not there is no error.
fn remove_pin(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The id of the link pinned at `path`, if a link is pinned there.
fn pinned_link_id(path: &Path) -> Option<u32> {
    sys::pinned_link_state(path).ok().map(|s| s.id)
}

/// What the rest of the daemon gets from the kernel side.
pub struct Kernel {
    pub probes: Probes,
    pub events: RingBuf<MapData>,
    /// Whether the event reader sleeps until woken (see `sensor_common::maps::READER`).
    pub reader: Array<MapData, u32>,
    pub stats: PerCpuArray<MapData, Stats>,
    /// Per-run counters: records lost, denials suppressed.
    pub run_stats: BpfHashMap<MapData, u64, RunStats>,
    /// The pinned process → run map.
    pub proc_runs: BpfHashMap<MapData, u32, ProcRun>,
    /// The pinned policy maps.
    pub policy: crate::policy::kernel::PolicyMaps,
    /// The reader's mark, for the next daemon (see [`ReaderMark`]).
    pub mark: Array<MapData, ReaderMark>,
    /// Per-run counters already reported.
    pub run_stats_seen: BpfHashMap<MapData, u64, RunStats>,
    /// What was taken over at start-up.
    pub takeover: Takeover,
}

/// Links left pinned by a previous daemon: its programs, still attached.
struct PreviousLinks(Vec<PathBuf>);

/// Detaches the programs pinned under `pin_dir` by removing it, and waits
/// until the kernel has let go of them: returns how many links were pinned.
///
/// Removing a pin does not detach at once. The kernel drops the link after an
/// RCU grace period and then on a workqueue, so for a moment after the
/// unlink the programs still run (and, in enforce mode, still kill). A
/// caller who was told "unloaded" must be able to rely on it, so this waits
/// until no program the links held is loaded any more.
pub fn unload_pinned(pin_dir: &Path, timeout: Duration) -> Result<usize, UnloadError> {
    let links_dir = pin_dir.join(maps::LINKS_DIR);
    let mut links = 0;
    let mut programs = Vec::new();
    for entry in std::fs::read_dir(&links_dir)
        .into_iter()
        .flatten()
        .flatten()
    {
        links += 1;
        // The fd is closed at the end of this statement: it must not keep the link.
        match PinnedLink::from_pin(entry.path()).map(|l| FdLink::from(l).info()) {
            Ok(Ok(info)) => programs.push(info.program_id()),
            Ok(Err(e)) => {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot read a pinned link")
            }
            Err(e) => {
                tracing::warn!(path = %entry.path().display(), error = %e, "cannot open a pinned link")
            }
        }
    }
    std::fs::remove_dir_all(pin_dir).map_err(|source| UnloadError::Remove {
        path: pin_dir.to_path_buf(),
        source,
    })?;
    let removed = Instant::now();
    loop {
        let loaded: Vec<u32> = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .map(|p| p.id())
            .filter(|id| programs.contains(id))
            .collect();
        if loaded.is_empty() {
            debug!(links, waited = ?removed.elapsed(), "pinned programs unloaded");
            return Ok(links);
        }
        if removed.elapsed() >= timeout {
            return Err(UnloadError::StillLoaded {
                ids: loaded,
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Why [`unload_pinned`] failed.
#[derive(Debug, thiserror::Error)]
pub enum UnloadError {
    #[error("removing {path}")]
    Remove {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "the pins are removed but programs {ids:?} are still loaded after {timeout:?}: something else \
         holds them (see `bpftool prog show id ID` and `bpftool link`)"
    )]
    StillLoaded { ids: Vec<u32>, timeout: Duration },
}

/// One pinned map and the layout this build expects of it.
#[derive(Clone, Copy)]
struct PinnedMap {
    name: &'static str,
    key: usize,
    value: usize,
    max_entries: u32,
}

const PINNED_MAPS: &[PinnedMap] = {
    use sensor_common::{limits as l, policy as p};
    &[
        PinnedMap {
            name: maps::PROC_RUNS,
            key: size_of::<u32>(),
            value: size_of::<ProcRun>(),
            max_entries: l::MAX_TRACKED_PROCESSES,
        },
        PinnedMap {
            name: maps::POLICIES,
            key: size_of::<u32>(),
            value: size_of::<p::PolicySlot>(),
            max_entries: l::MAX_POLICIES,
        },
        PinnedMap {
            name: maps::RUN_POLICY,
            key: size_of::<u64>(),
            value: size_of::<p::RunPolicy>(),
            max_entries: l::MAX_POLICY_RUNS,
        },
        PinnedMap {
            name: maps::RUN_LIVE,
            key: size_of::<u64>(),
            value: size_of::<u64>(),
            max_entries: l::MAX_POLICY_RUNS,
        },
        PinnedMap {
            name: maps::EXEC_RULES,
            key: size_of::<p::ExecKey>(),
            value: size_of::<p::ExecRule>(),
            max_entries: l::MAX_EXEC_RULES,
        },
        PinnedMap {
            name: maps::NET4_RULES,
            key: 4 + size_of::<p::Net4Data>(),
            value: size_of::<p::NetRule>(),
            max_entries: l::MAX_NET_RULES,
        },
        PinnedMap {
            name: maps::NET6_RULES,
            key: 4 + size_of::<p::Net6Data>(),
            value: size_of::<p::NetRule>(),
            max_entries: l::MAX_NET_RULES,
        },
        PinnedMap {
            name: maps::UNIX_RULES,
            key: size_of::<p::UnixKey>(),
            value: size_of::<u32>(),
            max_entries: l::MAX_UNIX_RULES,
        },
        PinnedMap {
            name: maps::UNIX_IDS,
            key: size_of::<p::ExecKey>(),
            value: size_of::<u32>(),
            max_entries: l::MAX_UNIX_RULES,
        },
        PinnedMap {
            name: maps::RUN_TREE,
            key: size_of::<u64>(),
            value: size_of::<u64>(),
            max_entries: l::MAX_RUN_TREE,
        },
        PinnedMap {
            name: maps::OWNER,
            key: size_of::<u32>(),
            value: size_of::<Owner>(),
            max_entries: 1,
        },
        PinnedMap {
            name: maps::EVENTS,
            key: 0,
            value: 0,
            max_entries: l::EVENTS_RING_BYTES,
        },
        PinnedMap {
            name: maps::READER,
            key: size_of::<u32>(),
            value: size_of::<u32>(),
            max_entries: 1,
        },
        PinnedMap {
            name: maps::STATS,
            key: size_of::<u32>(),
            value: size_of::<Stats>(),
            max_entries: 1,
        },
        PinnedMap {
            name: maps::RUN_STATS,
            key: size_of::<u64>(),
            value: size_of::<RunStats>(),
            max_entries: l::MAX_RUN_STATS,
        },
        PinnedMap {
            name: maps::SENSOR_FILES,
            key: size_of::<p::ExecKey>(),
            value: size_of::<u32>(),
            max_entries: l::MAX_SENSOR_FILES,
        },
        PinnedMap {
            name: maps::SEND_SEEN,
            key: size_of::<sensor_common::inflight::SendKey>(),
            value: size_of::<u32>(),
            max_entries: l::MAX_SEND_SEEN,
        },
        PinnedMap {
            name: maps::CONNECT_INFLIGHT,
            key: size_of::<u64>(),
            value: size_of::<sensor_common::inflight::ConnectInflight>(),
            max_entries: l::INFLIGHT_ENTRIES,
        },
        PinnedMap {
            name: maps::RUN_CONNECT_INFLIGHT,
            key: size_of::<u64>(),
            value: size_of::<sensor_common::inflight::ConnectInflight>(),
            max_entries: l::RUN_INFLIGHT_ENTRIES,
        },
        PinnedMap {
            name: maps::ACTIVE,
            key: size_of::<u32>(),
            value: size_of::<u32>(),
            max_entries: 1,
        },
        PinnedMap {
            name: maps::MARK,
            key: size_of::<u32>(),
            value: size_of::<ReaderMark>(),
            max_entries: 1,
        },
        PinnedMap {
            name: maps::RUN_STATS_SEEN,
            key: size_of::<u64>(),
            value: size_of::<RunStats>(),
            max_entries: l::MAX_RUN_STATS,
        },
    ]
};

/// How the kernel side was found and taken over at start-up: what the
/// previous daemon left recording, and what this daemon now runs.
pub struct Takeover {
    /// This load's generation.
    pub generation: u32,
    /// The generation that was active before (0: none, a fresh pin dir).
    pub previous_generation: u32,
    /// Program links a previous daemon had left pinned, and how many of
    /// them were still attached: while they were, the kernel recorded
    /// (and enforced) with no daemon running.
    pub previous_links: usize,
    pub previous_attached: usize,
    /// The previous reader's mark (all zero: none).
    pub mark: ReaderMark,
    /// The previous ring, when it could not be reused (another size): what
    /// it holds is read before the new one.
    pub old_ring: Option<RingBuf<MapData>>,
}

/// Loads and attaches everything, and takes over from the programs a
/// previous daemon left pinned (see [`sensor_common::handover`]): ours are
/// attached first, then made the active generation in one write, then the
/// old links are let go. `own_tgid` is the daemon's pid, whose own activity
/// the programs skip; `pin_dir` (in bpffs) holds the maps and links that
/// outlive the daemon; `policy_runs` sizes the run→policy maps and
/// `ring_bytes` the event ring (`[limits]`).
pub fn load(
    own_tgid: u32,
    pin_dir: &Path,
    policy_runs: u32,
    ring_bytes: u32,
) -> Result<Kernel, LoaderError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoaderError::NoObject);
    }
    for (fs_type, target) in [("tracefs", mounts::TRACEFS), ("bpf", mounts::BPFFS)] {
        if mounts::ensure_mounted(fs_type, target)? {
            info!(fs_type, target, "mounted");
        }
    }
    let kernel = btf::kernel_offsets(Path::new(btf::VMLINUX_BTF))?;
    let tracepoints = tracefs::tracepoint_offsets(Path::new(mounts::TRACEFS))?;
    debug!(?kernel, ?tracepoints, "offsets");
    own_pin_dir(pin_dir)?;
    // What the previous daemon left: its generation and its mark.
    let previous_generation = read_pinned::<u32>(&pin_dir.join(maps::ACTIVE)).unwrap_or(0);
    let mark = read_pinned::<ReaderMark>(&pin_dir.join(maps::MARK)).unwrap_or_default();
    let generation = next_generation(previous_generation);
    let ns_per_tick = 1_000_000_000 / crate::identity::clock_ticks_per_second().max(1);
    let own_start_ns = crate::identity::proc_start(own_tgid)
        .map_or(0, |(ticks, _)| ticks.saturating_mul(ns_per_tick));
    let config = SensorConfig {
        own_tgid,
        own_start_ns,
        ns_per_tick: u32::try_from(ns_per_tick).unwrap_or(10_000_000),
        kernel,
        tracepoints,
        generation,
        _pad: 0,
    };
    let sized = |map: &PinnedMap| PinnedMap {
        max_entries: if [maps::RUN_POLICY, maps::RUN_LIVE].contains(&map.name) {
            policy_runs
        } else if map.name == maps::EVENTS {
            ring_bytes
        } else {
            map.max_entries
        },
        ..*map
    };
    // A ring of another size cannot be shared: keep a handle on the old one
    // (its programs may still be writing to it) to read it first.
    let old_ring = {
        let path = pin_dir.join(maps::EVENTS);
        let events = PINNED_MAPS.iter().find(|m| m.name == maps::EVENTS);
        match events {
            Some(m) if !pin_compatible(&path, &sized(m)) => MapData::from_pin(&path)
                .ok()
                .and_then(|data| RingBuf::try_from(aya::maps::Map::RingBuf(data)).ok()),
            _ => None,
        }
    };
    for map in PINNED_MAPS {
        drop_incompatible_pin(&pin_dir.join(map.name), &sized(map))?;
    }
    let pins: Vec<(&str, PathBuf)> = PINNED_MAPS
        .iter()
        .map(|m| (m.name, pin_dir.join(m.name)))
        .collect();
    let links_dir = pin_dir.join(maps::LINKS_DIR);
    let previous_links = PreviousLinks(
        std::fs::read_dir(&links_dir)
            .map(|dir| dir.filter_map(Result::ok).map(|e| e.path()).collect())
            .unwrap_or_default(),
    );
    let previous_attached = previous_links
        .0
        .iter()
        .filter(|p| sys::pinned_link_state(p).is_ok_and(|s| s.attached))
        .count();
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| LoaderError::Io {
        what: "reading the number of possible CPUs",
        source,
    })?;
    let mut loader = EbpfLoader::new();
    loader
        .override_global(CONFIG_GLOBAL, &config, true)
        .map_max_entries(maps::SCRATCH, u32::try_from(cpus).unwrap_or(u32::MAX))
        .map_max_entries(maps::EVENTS, ring_bytes)
        .map_max_entries(maps::RUN_POLICY, policy_runs)
        .map_max_entries(maps::RUN_LIVE, policy_runs);
    for (name, path) in &pins {
        loader.map_pin_path(name, path.as_path());
    }
    let mut ebpf = loader
        .load(EBPF_OBJECT)
        .map_err(|e| LoaderError::Load(Box::new(e)))?;

    let events = take_map(&mut ebpf, maps::EVENTS)?;
    let events = RingBuf::try_from(events).map_err(|source| LoaderError::Map {
        map: maps::EVENTS,
        source,
    })?;
    let reader = typed_map(&mut ebpf, maps::READER, Array::try_from)?;
    let stats = take_map(&mut ebpf, maps::STATS)?;
    let stats = PerCpuArray::try_from(stats).map_err(|source| LoaderError::Map {
        map: maps::STATS,
        source,
    })?;
    let run_stats = typed_map(&mut ebpf, maps::RUN_STATS, BpfHashMap::try_from)?;

    let proc_runs = typed_map(&mut ebpf, maps::PROC_RUNS, BpfHashMap::try_from)?;
    let policy = crate::policy::kernel::PolicyMaps {
        slots: typed_map(&mut ebpf, maps::POLICIES, Array::try_from)?,
        run_policy: typed_map(&mut ebpf, maps::RUN_POLICY, BpfHashMap::try_from)?,
        run_live: typed_map(&mut ebpf, maps::RUN_LIVE, BpfHashMap::try_from)?,
        exec_rules: typed_map(&mut ebpf, maps::EXEC_RULES, BpfHashMap::try_from)?,
        net4: typed_map(&mut ebpf, maps::NET4_RULES, LpmTrie::try_from)?,
        net6: typed_map(&mut ebpf, maps::NET6_RULES, LpmTrie::try_from)?,
        unix: typed_map(&mut ebpf, maps::UNIX_RULES, BpfHashMap::try_from)?,
        unix_ids: typed_map(&mut ebpf, maps::UNIX_IDS, BpfHashMap::try_from)?,
        run_tree: typed_map(&mut ebpf, maps::RUN_TREE, BpfHashMap::try_from)?,
        sensor_files: typed_map(&mut ebpf, maps::SENSOR_FILES, BpfHashMap::try_from)?,
    };

    let cgroup_root = mounts::cgroup2_root()?;
    let cgroup = File::open(&cgroup_root).map_err(|source| LoaderError::Cgroup {
        path: cgroup_root.clone(),
        source,
    })?;

    let owner_map = typed_map(&mut ebpf, maps::OWNER, Array::try_from)?;
    let active = typed_map(&mut ebpf, maps::ACTIVE, Array::try_from)?;
    let mark_map = typed_map(&mut ebpf, maps::MARK, Array::try_from)?;
    let run_stats_seen = typed_map(&mut ebpf, maps::RUN_STATS_SEEN, BpfHashMap::try_from)?;
    // A handle of our own on each pinned map: what the integrity check pins
    // again if the pin goes.
    let mut handles = Vec::with_capacity(PINNED_MAPS.len());
    for map in PINNED_MAPS {
        let path = pin_dir.join(map.name);
        let data = MapData::from_pin(&path).map_err(|source| LoaderError::Map {
            map: map.name,
            source,
        })?;
        let id = data
            .info()
            .map_err(|source| LoaderError::Map {
                map: map.name,
                source,
            })?
            .id();
        handles.push(PinHandle {
            name: map.name,
            map: data,
            id,
        });
    }

    let mut attached = Vec::with_capacity(PROBES.len());
    let mut links = Vec::with_capacity(PROBES.len());
    for probe in PROBES {
        let (program_id, link) = attach_probe(&mut ebpf, probe, &cgroup, true)?;
        let (fd, link_id) = own_link(probe, &link)?;
        // Our descriptor holds the link now.
        drop(link);
        links.push(ProbeLink {
            probe,
            fd,
            id: link_id,
        });
        let attach = match probe.attach {
            Attach::CgroupSockAddr | Attach::CgroupSock => {
                format!("cgroup {}", cgroup_root.display())
            }
            other => other.to_string(),
        };
        debug!(program = probe.program, id = program_id, link = link_id, %attach, "attached");
        attached.push(AttachedProgram {
            name: probe.program,
            id: program_id,
            attach,
        });
    }
    let mut probes = Probes {
        ebpf,
        attached,
        links,
        pinned: false,
        pin_dir: pin_dir.to_owned(),
        links_dir,
        cgroup,
        maps: handles,
        owner_map,
        owner: None,
        active,
        generation,
        unresolved: std::collections::BTreeSet::new(),
        run_probes: true,
    };
    let released = probes.take_over(previous_links)?;
    info!(
        generation,
        previous_generation,
        previous_links = released,
        previous_attached,
        "programs attached and active"
    );
    Ok(Kernel {
        probes,
        events,
        reader,
        stats,
        run_stats,
        proc_runs,
        policy,
        mark: mark_map,
        run_stats_seen,
        takeover: Takeover {
            generation,
            previous_generation,
            previous_links: released,
            previous_attached,
            mark,
            old_ring,
        },
    })
}

/// Entry 0 of the one-entry array pinned at `path`, if there is one of
/// that value size.
fn read_pinned<T: aya::Pod>(path: &Path) -> Option<T> {
    let info = aya::maps::MapInfo::from_pin(path).ok()?;
    if info.value_size() as usize != size_of::<T>() {
        return None;
    }
    let data = MapData::from_pin(path).ok()?;
    let array = Array::<MapData, T>::try_from(aya::maps::Map::Array(data)).ok()?;
    array.get(&0, 0).ok()
}

/// Attaches `probe`'s program (loading it first when `load`): its id and
/// its link, owned by the caller. Also used to attach a program again after
/// its link was detached.
fn attach_probe(
    ebpf: &mut Ebpf,
    probe: &Probe,
    cgroup: &File,
    load: bool,
) -> Result<(u32, FdLink), LoaderError> {
    let err = |source| LoaderError::Program {
        program: probe.program,
        purpose: probe.purpose,
        attach: probe.attach,
        source: Box::new(source),
    };
    let link_err = |source| LoaderError::Link {
        program: probe.program,
        source: Box::new(source),
    };
    let program = ebpf
        .program_mut(probe.program)
        .ok_or(LoaderError::MissingProgram {
            program: probe.program,
        })?;
    Ok(match probe.attach {
        Attach::RawTracepoint(name) => {
            let p: &mut RawTracePoint = program.try_into().map_err(err)?;
            if load {
                p.load().map_err(err)?;
            }
            let id = p.attach(name).map_err(err)?;
            let link = FdLink::from(p.take_link(id).map_err(err)?);
            (p.info().map_err(err)?.id(), link)
        }
        Attach::Tracepoint { category, name } => {
            let p: &mut TracePoint = program.try_into().map_err(err)?;
            if load {
                p.load().map_err(err)?;
            }
            let id = p.attach(category, name).map_err(err)?;
            let link = FdLink::try_from(p.take_link(id).map_err(err)?).map_err(link_err)?;
            (p.info().map_err(err)?.id(), link)
        }
        Attach::CgroupSock => {
            let p: &mut CgroupSock = program.try_into().map_err(err)?;
            if load {
                p.load().map_err(err)?;
            }
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(err)?;
            let link = FdLink::try_from(p.take_link(id).map_err(err)?).map_err(link_err)?;
            (p.info().map_err(err)?.id(), link)
        }
        Attach::CgroupSockAddr => {
            let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
            if load {
                p.load().map_err(err)?;
            }
            // BPF links on a cgroup always coexist with other programs (they are
            // multi-attach by nature); the link API takes no ALLOW_MULTI flag.
            let id = p.attach(cgroup, CgroupAttachMode::Single).map_err(err)?;
            let link = FdLink::try_from(p.take_link(id).map_err(err)?).map_err(link_err)?;
            (p.info().map_err(err)?.id(), link)
        }
    })
}

/// A descriptor of our own for `probe`'s new link, and the link's id.
fn own_link(probe: &Probe, link: &FdLink) -> Result<(OwnedFd, u32), LoaderError> {
    let err = |source| LoaderError::LinkFd {
        program: probe.program,
        source,
    };
    let fd = sys::own_link_fd(link).map_err(err)?;
    let id = sys::link_state(fd.as_fd()).map_err(err)?.id;
    Ok((fd, id))
}

/// Makes sure the pin dir is root's and private: created mode 0700 when
/// missing; refused when it is a symlink, not a directory, not root's, or
/// writable by others (anyone who could write it could pin their own maps
/// in place of ours before we start).
fn own_pin_dir(pin_dir: &Path) -> Result<(), LoaderError> {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, PermissionsExt as _};
    let refuse = |why: String| LoaderError::PinDir {
        path: pin_dir.to_owned(),
        why,
    };
    match std::fs::symlink_metadata(pin_dir) {
        Ok(m) if m.file_type().is_symlink() => Err(refuse("is a symlink".into())),
        Ok(m) if !m.is_dir() => Err(refuse("is not a directory".into())),
        Ok(m) if m.uid() != 0 => Err(refuse(format!("is owned by uid {}, not root", m.uid()))),
        Ok(m) if m.mode() & 0o022 != 0 => Err(refuse(format!(
            "is writable by others (mode {:o})",
            m.mode() & 0o7777
        ))),
        Ok(m) => {
            if m.mode() & 0o077 != 0 {
                std::fs::set_permissions(pin_dir, std::fs::Permissions::from_mode(0o700)).map_err(
                    |source| LoaderError::Io {
                        what: "making the pin directory private",
                        source,
                    },
                )?;
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(pin_dir)
            .map_err(|source| LoaderError::Io {
                what: "creating the bpffs pin directory",
                source,
            }),
        Err(source) => Err(LoaderError::Io {
            what: "reading the bpffs pin directory",
            source,
        }),
    }
}

fn typed_map<T>(
    ebpf: &mut Ebpf,
    map: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, MapError>,
) -> Result<T, LoaderError> {
    convert(take_map(ebpf, map)?).map_err(|source| LoaderError::Map { map, source })
}

/// bpffs, without handles of this daemon's (before anything is loaded).
const fn bpffs() -> seam::Bpffs<'static> {
    seam::Bpffs {
        links: &[],
        maps: &[],
    }
}

/// The layout this build expects of `map`.
const fn layout(map: &PinnedMap) -> seam::Layout {
    seam::Layout {
        key: map.key as u32,
        value: map.value as u32,
        max_entries: map.max_entries,
    }
}

/// A map pinned by another build is removed rather than reused (see
/// [`seam::drop_incompatible_pin`]).
fn drop_incompatible_pin(path: &Path, map: &PinnedMap) -> Result<(), LoaderError> {
    seam::drop_incompatible_pin(&mut bpffs(), path, layout(map))
}

/// Whether the map pinned at `path` (if any) has `map`'s layout and size.
fn pin_compatible(path: &Path, map: &PinnedMap) -> bool {
    seam::pin_compatible(&bpffs(), path, layout(map))
}

fn take_map(ebpf: &mut Ebpf, map: &'static str) -> Result<aya::maps::Map, LoaderError> {
    ebpf.take_map(map).ok_or(LoaderError::MissingMap { map })
}

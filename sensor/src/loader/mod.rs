//! Loading and attaching the kernel programs.
//!
//! Start-up order: mount tracefs/bpffs when needed, resolve struct offsets
//! from BTF and tracepoint offsets from tracefs, load the object with those
//! offsets as a global, take the event ring buffer and counters, then attach
//! every probe of [`programs::PROBES`]. Dropping [`Probes`] detaches them all.

pub mod btf;
pub mod mounts;
pub mod programs;
pub mod tracefs;

use std::{fs::File, io, path::PathBuf};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{CgroupAttachMode, CgroupSockAddr, ProgramError, RawTracePoint, TracePoint},
};
use sensor_common::{
    config::{CONFIG_GLOBAL, SensorConfig},
    event::ProcRun,
    maps,
    stats::Stats,
};
use tracing::{debug, info};

use self::programs::{Attach, PROBES};

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

/// The loaded object with every probe attached; dropping it detaches them.
pub struct Probes {
    _ebpf: Ebpf,
    attached: Vec<AttachedProgram>,
}

impl Probes {
    /// The programs attached, with their kernel ids.
    #[must_use]
    pub fn attached(&self) -> &[AttachedProgram] {
        &self.attached
    }
}

/// What the rest of the daemon gets from the kernel side.
pub struct Kernel {
    pub probes: Probes,
    pub events: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, Stats>,
    /// The pinned process → run map.
    pub proc_runs: BpfHashMap<MapData, u32, ProcRun>,
}

/// Loads and attaches everything. `own_tgid` is the daemon's pid, whose own
/// activity the programs skip; `pin_dir` (in bpffs) holds the maps that
/// outlive the daemon.
pub fn load(own_tgid: u32, pin_dir: &std::path::Path) -> Result<Kernel, LoaderError> {
    if EBPF_OBJECT.is_empty() {
        return Err(LoaderError::NoObject);
    }
    for (fs_type, target) in [("tracefs", mounts::TRACEFS), ("bpf", mounts::BPFFS)] {
        if mounts::ensure_mounted(fs_type, target)? {
            info!(fs_type, target, "mounted");
        }
    }
    let kernel = btf::kernel_offsets(std::path::Path::new(btf::VMLINUX_BTF))?;
    let tracepoints = tracefs::tracepoint_offsets(std::path::Path::new(mounts::TRACEFS))?;
    debug!(?kernel, ?tracepoints, "offsets");
    let config = SensorConfig {
        own_tgid,
        ns_per_tick: u32::try_from(
            1_000_000_000 / crate::identity::clock_ticks_per_second().max(1),
        )
        .unwrap_or(10_000_000),
        kernel,
        tracepoints,
    };
    std::fs::create_dir_all(pin_dir).map_err(|source| LoaderError::Io {
        what: "creating the bpffs pin directory",
        source,
    })?;
    let proc_runs_pin = pin_dir.join(maps::PROC_RUNS);
    drop_incompatible_pin(&proc_runs_pin)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, source)| LoaderError::Io {
        what: "reading the number of possible CPUs",
        source,
    })?;
    let mut ebpf = EbpfLoader::new()
        .override_global(CONFIG_GLOBAL, &config, true)
        .map_max_entries(maps::SCRATCH, u32::try_from(cpus).unwrap_or(u32::MAX))
        .map_pin_path(maps::PROC_RUNS, proc_runs_pin.as_path())
        .load(EBPF_OBJECT)
        .map_err(|e| LoaderError::Load(Box::new(e)))?;

    let events = take_map(&mut ebpf, maps::EVENTS)?;
    let events = RingBuf::try_from(events).map_err(|source| LoaderError::Map {
        map: maps::EVENTS,
        source,
    })?;
    let stats = take_map(&mut ebpf, maps::STATS)?;
    let stats = PerCpuArray::try_from(stats).map_err(|source| LoaderError::Map {
        map: maps::STATS,
        source,
    })?;

    let proc_runs = take_map(&mut ebpf, maps::PROC_RUNS)?;
    let proc_runs = BpfHashMap::try_from(proc_runs).map_err(|source| LoaderError::Map {
        map: maps::PROC_RUNS,
        source,
    })?;

    let cgroup_root = mounts::cgroup2_root()?;
    let cgroup = File::open(&cgroup_root).map_err(|source| LoaderError::Cgroup {
        path: cgroup_root.clone(),
        source,
    })?;

    let mut attached = Vec::with_capacity(PROBES.len());
    for probe in PROBES {
        let err = |source| LoaderError::Program {
            program: probe.program,
            purpose: probe.purpose,
            attach: probe.attach,
            source: Box::new(source),
        };
        let program = ebpf
            .program_mut(probe.program)
            .ok_or(LoaderError::MissingProgram {
                program: probe.program,
            })?;
        let info = match probe.attach {
            Attach::RawTracepoint(name) => {
                let p: &mut RawTracePoint = program.try_into().map_err(err)?;
                p.load().map_err(err)?;
                p.attach(name).map_err(err)?;
                p.info().map_err(err)?
            }
            Attach::Tracepoint { category, name } => {
                let p: &mut TracePoint = program.try_into().map_err(err)?;
                p.load().map_err(err)?;
                p.attach(category, name).map_err(err)?;
                p.info().map_err(err)?
            }
            Attach::CgroupSockAddr => {
                let p: &mut CgroupSockAddr = program.try_into().map_err(err)?;
                p.load().map_err(err)?;
                // BPF links on a cgroup always coexist with other programs (they are
                // multi-attach by nature); the link API takes no ALLOW_MULTI flag.
                p.attach(&cgroup, CgroupAttachMode::Single).map_err(err)?;
                p.info().map_err(err)?
            }
        };
        let attach = match probe.attach {
            Attach::CgroupSockAddr => format!("cgroup {}", cgroup_root.display()),
            other => other.to_string(),
        };
        debug!(program = probe.program, id = info.id(), %attach, "attached");
        attached.push(AttachedProgram {
            name: probe.program,
            id: info.id(),
            attach,
        });
    }
    Ok(Kernel {
        probes: Probes {
            _ebpf: ebpf,
            attached,
        },
        events,
        stats,
        proc_runs,
    })
}

/// A map pinned by another build may have another layout; reusing it would
/// make the programs fail to load. Such a pin is removed (its attribution is
/// lost, and said so) rather than reused.
fn drop_incompatible_pin(path: &std::path::Path) -> Result<(), LoaderError> {
    let Ok(info) = aya::maps::MapInfo::from_pin(path) else {
        return Ok(());
    };
    let expected = (
        size_of::<u32>() as u32,
        size_of::<ProcRun>() as u32,
        sensor_common::limits::MAX_TRACKED_PROCESSES,
    );
    let found = (info.key_size(), info.value_size(), info.max_entries());
    if found != expected {
        tracing::warn!(
            path = %path.display(),
            ?found,
            ?expected,
            "pinned process→run map has another layout (older sensor?); starting a new one"
        );
        std::fs::remove_file(path).map_err(|source| LoaderError::Io {
            what: "removing an incompatible pinned map",
            source,
        })?;
    }
    Ok(())
}

fn take_map(ebpf: &mut Ebpf, map: &'static str) -> Result<aya::maps::Map, LoaderError> {
    ebpf.take_map(map).ok_or(LoaderError::MissingMap { map })
}

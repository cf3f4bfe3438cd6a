//! The sensor's kernel-side cost per storm op, measured exactly rather than
//! inferred from wall-time ratios: with `kernel.bpf_stats_enabled` the kernel
//! counts each program's runs and the nanoseconds spent in it, which a
//! process holding the program reads from `/proc/PID/fdinfo/FD`.
//!
//! The storm ratios carry a few percent of noise on a shared VM; these
//! numbers do not, so they show what a kernel-side change really saves.
//! Not included: the syscall-tracepoint slow path that enabling any
//! `syscalls/` tracepoint puts every syscall on (the `floor: syscall
//! tracepoint` variant measures it), and the daemon's own CPU
//! (reported per storm in the CPU table).

use std::{collections::BTreeMap, fs, path::Path};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{Env, Results, daemon::Daemon, workloads::Workload};

/// Turns `kernel.bpf_stats_enabled` on while alive and puts back the value
/// it found (the stats cost two clock reads per program run).
pub struct StatsEnabled {
    previous: String,
}

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

impl StatsEnabled {
    pub fn new() -> Result<Self> {
        let previous = fs::read_to_string(STATS_SYSCTL)
            .with_context(|| format!("cannot read {STATS_SYSCTL}"))?;
        fs::write(STATS_SYSCTL, "1")
            .with_context(|| format!("cannot write 1 to {STATS_SYSCTL}"))?;
        Ok(Self {
            previous: previous.trim().to_owned(),
        })
    }
}

impl Drop for StatsEnabled {
    fn drop(&mut self) {
        if let Err(e) = fs::write(STATS_SYSCTL, &self.previous) {
            eprintln!(
                "xtask bench: cannot restore {STATS_SYSCTL} to {}: {e}",
                self.previous
            );
        }
    }
}

/// Run time (ns) and run count of one program, as its fdinfo reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RunStats {
    pub ns: u64,
    pub runs: u64,
}

/// prog id → stats, for every BPF program `pid` holds a descriptor of.
pub fn program_stats(pid: u32) -> Result<BTreeMap<u32, RunStats>> {
    let fd_dir = format!("/proc/{pid}/fd");
    let mut out = BTreeMap::new();
    for entry in fs::read_dir(&fd_dir).with_context(|| format!("cannot list {fd_dir}"))? {
        let Ok(entry) = entry else { continue };
        // Descriptors come and go while we read: skip the ones that went.
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target != Path::new("anon_inode:bpf-prog") {
            continue;
        }
        let info = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        let Ok(text) = fs::read_to_string(&info) else {
            continue;
        };
        if let Some((id, stats)) = parse_fdinfo(&text) {
            out.insert(id, stats);
        }
    }
    Ok(out)
}

/// `prog_id`, `run_time_ns` and `run_cnt` of a bpf-prog fdinfo.
fn parse_fdinfo(text: &str) -> Option<(u32, RunStats)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse::<u64>().ok())
    };
    let id = u32::try_from(field("prog_id")?).ok()?;
    Some((
        id,
        RunStats {
            ns: field("run_time_ns")?,
            runs: field("run_cnt")?,
        },
    ))
}

/// One program's share of a storm.
#[derive(Debug, Clone)]
pub struct ProgramCost {
    pub name: String,
    pub runs: u64,
    pub ns: u64,
}

/// The programs' cost over one storm of a workload.
#[derive(Debug, Clone)]
pub struct KernelCost {
    pub workload: &'static str,
    pub ops: usize,
    /// Cores the storm keeps busy: a cost of c per op stretches its wall
    /// time by about c / cores.
    pub cores: usize,
    /// Programs that ran, most expensive first.
    pub programs: Vec<ProgramCost>,
}

impl KernelCost {
    /// From two snapshots around the storm; `names` maps prog id → name.
    pub fn between(
        workload: &'static str,
        ops: usize,
        cores: usize,
        names: &BTreeMap<u32, String>,
        before: &BTreeMap<u32, RunStats>,
        after: &BTreeMap<u32, RunStats>,
    ) -> Self {
        let mut programs: Vec<ProgramCost> = after
            .iter()
            .filter_map(|(id, a)| {
                let b = before.get(id).copied().unwrap_or_default();
                let runs = a.runs.saturating_sub(b.runs);
                (runs > 0).then(|| ProgramCost {
                    name: names.get(id).cloned().unwrap_or_else(|| format!("id {id}")),
                    runs,
                    ns: a.ns.saturating_sub(b.ns),
                })
            })
            .collect();
        programs.sort_by(|a, b| b.ns.cmp(&a.ns).then_with(|| a.name.cmp(&b.name)));
        Self {
            workload,
            ops,
            cores,
            programs,
        }
    }

    /// Nanoseconds in the programs per storm op.
    pub fn ns_per_op(&self) -> f64 {
        let total: u64 = self.programs.iter().map(|p| p.ns).sum();
        total as f64 / self.ops.max(1) as f64
    }
}

/// One storm of each workload under an audit-mode daemon with
/// `kernel.bpf_stats_enabled`: each program's runs and run time per op.
pub(super) fn measure(
    env: &Env,
    workloads: &[&Workload],
    quick: bool,
    results: &mut Results,
) -> Result<()> {
    let _stats = StatsEnabled::new()?;
    let daemon = Daemon::start(env, 1002, &["--output", "file:/dev/null", "--no-store"])?;
    let measured = (|| -> Result<Vec<KernelCost>> {
        let pid = daemon.pid();
        let names: BTreeMap<u32, String> = daemon
            .status_json()?
            .get("programs")
            .and_then(Value::as_array)
            .context("`sensor status --json` lists no programs")?
            .iter()
            .filter_map(|p| {
                let id = u32::try_from(p.get("id")?.as_u64()?).ok()?;
                Some((id, p.get("name")?.as_str()?.to_owned()))
            })
            .collect();
        let mut costs = Vec::new();
        for workload in workloads {
            let ops = workload.ops(quick);
            eprintln!(
                "xtask bench: kernel cost: {} storm ({ops} ops) with bpf_stats on",
                workload.name
            );
            let before = program_stats(pid)?;
            (workload.run)(ops)?;
            let after = program_stats(pid)?;
            let cost =
                KernelCost::between(workload.name, ops, workload.cores, &names, &before, &after);
            if cost.programs.is_empty() {
                bail!(
                    "no program of the daemon ran during the {} storm (are the stats counted?)",
                    workload.name
                );
            }
            costs.push(cost);
        }
        Ok(costs)
    })();
    let stopped = daemon.stop();
    results.kernel_cost = measured?;
    stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_fields() {
        let text = "pos:\t0\nflags:\t02000002\nmnt_id:\t16\nino:\t1057\nprog_type:\t5\n\
                    prog_jited:\t1\nprog_tag:\t5a9d5e8b9d4b8fd2\nmemlock:\t4096\nprog_id:\t812\n\
                    run_time_ns:\t123456\nrun_cnt:\t789\nrecursion_misses:\t0\nverified_insns:\t99\n";
        assert_eq!(
            parse_fdinfo(text),
            Some((
                812,
                RunStats {
                    ns: 123_456,
                    runs: 789
                }
            ))
        );
        // A map's fdinfo has no prog_id.
        assert_eq!(parse_fdinfo("map_type:\t27\nmap_id:\t5\n"), None);
    }

    #[test]
    fn cost_between_snapshots() {
        let names = BTreeMap::from([(1, "a".to_owned()), (2, "b".to_owned())]);
        let before = BTreeMap::from([
            (1, RunStats { ns: 100, runs: 1 }),
            (2, RunStats { ns: 50, runs: 5 }),
        ]);
        let after = BTreeMap::from([
            (1, RunStats { ns: 1100, runs: 11 }),
            (2, RunStats { ns: 50, runs: 5 }),
            (3, RunStats { ns: 3000, runs: 10 }),
        ]);
        let cost = KernelCost::between("w", 10, 1, &names, &before, &after);
        let got: Vec<(&str, u64, u64)> = cost
            .programs
            .iter()
            .map(|p| (p.name.as_str(), p.runs, p.ns))
            .collect();
        // b did not run; the unnamed program is reported by id.
        assert_eq!(got, vec![("id 3", 10, 3000), ("a", 10, 1000)]);
        assert!((cost.ns_per_op() - 400.0).abs() < 1e-9);
    }
}

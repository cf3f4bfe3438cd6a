//! `cargo xtask bench`: storm workloads × variants (bare, sensor, ...),
//! interleaved over several rounds.
//!
//! Each round runs every variant once, in alternating order (bare, sensor;
//! then sensor, bare; ...). A variant that needs a tool (the sensor daemon)
//! starts it, runs every workload under it, reads its counters and stops it.
//! The report is per workload and variant: median µs per op with min/max and
//! IQR, and the median over rounds of the per-round ratio to `bare`. The
//! Markdown table goes to stdout, the raw numbers to target/bench/results.json.
//!
//! The peers (auditd, bpftrace: see `peers`) are variants like the others;
//! their losses are reported, not failed on. `sensor+outputs` is the daemon
//! with three network outputs to real servers (`outputs`): its losses fail
//! like the other sensor variants', and its spools must empty after each
//! storm with nothing dropped or failed. After the rounds, separate
//! measurements: each kernel program's run time per storm op under
//! `kernel.bpf_stats_enabled` (`kernel_cost`: exact, where the storm ratios
//! carry a few percent of noise), kernel-to-output latency of a trickle of
//! execs (`latency`),
//! daemon RSS with many live processes and runs (`memory`), and the events/s
//! each network output delivers from its spool (`outputs`).
//!
//! Timing never fails the run; lost events or a broken tool (a daemon that
//! does not start, stop cleanly or see the storm, a storm that fails, a peer
//! that cannot be installed or started) do.
//!
//! This file runs the rounds and the measurements after them; the modules:
//! `workloads` (the storms), `variants` (what runs beside them and what it
//! observes), `daemon` (a round's `sensor daemon`, on the workspace's daemon
//! harness `sensor_tests::harness`), `report` (Markdown and JSON), and one
//! module per separate measurement.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::Value;

mod daemon;
mod floor;
mod kernel_cost;
mod latency;
mod memory;
mod outage;
mod outputs;
mod peers;
mod pipeline;
mod report;
mod variants;
mod workloads;

use crate::{
    build::{self, Profile},
    setup, stats, storm, util,
};
use daemon::event_count;
use variants::{Observed, Tool, VARIANTS, Variant};
use workloads::{WORKLOADS, Workload};

pub struct Options {
    pub quick: bool,
    pub rounds: Option<usize>,
    pub no_setup: bool,
    pub workloads: Vec<String>,
    /// Variant names (`--variant`); empty: all.
    pub variants: Vec<String>,
    pub sensor_bin: Option<PathBuf>,
    /// Skip every measurement but the storms.
    pub storms_only: bool,
}

const DEFAULT_ROUNDS: usize = 7;
const QUICK_ROUNDS: usize = 3;

/// Where things are for this bench run.
struct Env {
    sensor_bin: PathBuf,
    /// Short directory for the control socket (sun_path is 108 bytes).
    socket_dir: PathBuf,
    /// target/bench: results and daemon logs.
    out_dir: PathBuf,
    /// Why auditd and bpftrace could not be installed, if so.
    peers_missing: Option<String>,
    /// The release-built HTTP receiver of the outputs benchmark, or why it
    /// could not be built.
    receiver_bin: Result<PathBuf, String>,
}

/// One measurement: a workload under a variant in one round.
#[derive(Debug, Clone)]
struct Sample {
    round: usize,
    elapsed: Duration,
    observed: Observed,
}

#[derive(Default)]
struct Results {
    /// (workload index, variant) → samples in round order.
    samples: BTreeMap<(usize, &'static str), Vec<Sample>>,
    /// variant → lost-event total of each round it ran with a tool.
    lost: BTreeMap<&'static str, Vec<u64>>,
    /// Daemon RSS measurements (issue 8 item 4).
    memory: Vec<memory::MemoryResult>,
    /// Kernel-to-output latency of each exec line of the trickle, ms.
    latency_ms: Vec<f64>,
    /// Execs spawned for the latency measurement.
    latency_execs: usize,
    /// User-space pipeline replay: (events, events per second).
    pipeline: Option<(u64, f64)>,
    /// Detection replay (shipped pack, one core).
    detection: Option<pipeline::Detection>,
    /// (workload index, variant) → per round, CPU seconds of each process
    /// of the tool (daemon, servers) over the workload.
    /// (`thread:NAME` for the threads of the sensor+outputs daemon.)
    cpu: BTreeMap<(usize, &'static str), Vec<BTreeMap<String, f64>>>,
    /// The variants the storms run under (`None`: every one of [`VARIANTS`]).
    variants: Option<Vec<Variant>>,
    /// `sensor+outputs`: the spools' drain after each storm.
    output_drains: Vec<outputs::Drain>,
    /// `sensor+outputs`: delivered and received per output, each round.
    output_rounds: Vec<outputs::RoundOutputs>,
    /// Events/s each network output sustains from its spool.
    output_throughput: Vec<outputs::Throughput>,
    /// The programs' run time per storm op (bpf_stats).
    kernel_cost: Vec<kernel_cost::KernelCost>,
    /// What the default ring keeps while no daemon reads (issue 17).
    outage: Option<outage::Outage>,
    problems: Vec<String>,
}

impl Results {
    /// The variants the storms ran under, in [`VARIANTS`] order.
    fn variants(&self) -> impl Iterator<Item = Variant> + '_ {
        VARIANTS
            .iter()
            .copied()
            .filter(|v| self.variants.as_ref().is_none_or(|s| s.contains(v)))
    }
}

pub fn bench(options: &Options) -> Result<()> {
    util::require_root("`cargo xtask bench`")?;
    util::keep_stdout_for_data();
    let workloads: Vec<&Workload> = if options.workloads.is_empty() {
        WORKLOADS.iter().collect()
    } else {
        options
            .workloads
            .iter()
            .map(|name| {
                WORKLOADS.iter().find(|w| w.name == name).ok_or_else(|| {
                    let known: Vec<_> = WORKLOADS.iter().map(|w| w.name).collect();
                    anyhow!("unknown workload `{name}` (known: {})", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let variants = variants::select(&options.variants)?;
    let rounds = options.rounds.unwrap_or(if options.quick {
        QUICK_ROUNDS
    } else {
        DEFAULT_ROUNDS
    });
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }

    if !options.no_setup {
        setup::setup()?;
    }
    setup::mounts()?;
    let sensor_bin = match &options.sensor_bin {
        Some(bin) => {
            std::path::absolute(bin).with_context(|| format!("cannot resolve {}", bin.display()))?
        }
        None => build::build_sensor(Profile::Release)?,
    };
    warn_other_daemons();

    let out_dir = util::target_dir().join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let _ = fs::remove_file(out_dir.join("daemon.log"));
    let _ = fs::remove_file(out_dir.join("http-receiver.log"));
    let socket_dir = std::env::temp_dir().join(format!("sensor-bench-{}", std::process::id()));
    fs::create_dir_all(&socket_dir)
        .with_context(|| format!("cannot create {}", socket_dir.display()))?;
    // The peers are installed lazily, here rather than by `xtask setup`:
    // only the bench needs them. Failing to install them is a problem of
    // their variants, not a crash of the bench.
    let peers_missing = peers::install().err().map(|err| format!("{err:#}"));
    let receiver_bin = outputs::build_receiver().map_err(|err| format!("{err:#}"));
    let env = Env {
        sensor_bin,
        socket_dir,
        out_dir,
        peers_missing,
        receiver_bin,
    };

    let started = Instant::now();
    let results = run_rounds(&env, &workloads, variants, rounds, options.quick);
    let results = results.map(|mut results| {
        if options.storms_only {
            return results;
        }
        if let Err(err) = kernel_cost::measure(&env, &workloads, options.quick, &mut results) {
            results.problems.push(format!("kernel cost: {err:#}"));
        }
        if let Err(err) = latency::measure(&env, options.quick, &mut results) {
            results.problems.push(format!("latency: {err:#}"));
        }
        if let Err(err) = memory::measure(&env, options.quick, &mut results) {
            results.problems.push(format!("memory: {err:#}"));
        }
        match outage::measure(&env, options.quick) {
            Ok(o) => results.outage = Some(o),
            Err(err) => results.problems.push(format!("outage: {err:#}")),
        }
        outputs::measure_throughput(&env, options.quick, &mut results);
        if let Err(err) = pipeline::measure(&mut results) {
            results.problems.push(format!("pipeline: {err:#}"));
        }
        if let Err(err) = pipeline::measure_detection(&mut results) {
            results.problems.push(format!("detection: {err:#}"));
        }
        results
    });
    let _ = fs::remove_dir_all(&env.socket_dir);
    let results = results?;

    let report = report::json(
        &env,
        &workloads,
        rounds,
        options.quick,
        &results,
        started.elapsed(),
    );
    let json_path = env.out_dir.join("results.json");
    let text = serde_json::to_string_pretty(&report).context("cannot serialize the results")?;
    fs::write(&json_path, text + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;

    print!(
        "{}",
        report::markdown(&workloads, rounds, options.quick, &results)
    );
    eprintln!("\nxtask bench: raw results in {}", json_path.display());

    if !results.problems.is_empty() {
        eprintln!("xtask bench: problems:");
        for problem in &results.problems {
            eprintln!("  - {problem}");
        }
        bail!(
            "{} problem(s): events lost or a tool broke (timing never fails a bench)",
            results.problems.len()
        );
    }
    Ok(())
}

/// Other `sensor daemon` processes skew the `bare` baseline: say so.
fn warn_other_daemons() {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&b| b == 0);
        let exe = args.next().unwrap_or_default();
        let is_sensor = Path::new(&*String::from_utf8_lossy(exe))
            .file_name()
            .is_some_and(|name| name == "sensor");
        if is_sensor && args.any(|arg| arg == b"daemon") {
            eprintln!(
                "xtask bench: WARNING: another sensor daemon is running (pid {pid}); the `bare` numbers include its overhead"
            );
        }
    }
}

fn run_rounds(
    env: &Env,
    workloads: &[&Workload],
    variants: Option<Vec<Variant>>,
    rounds: usize,
    quick: bool,
) -> Result<Results> {
    let mut results = Results {
        variants,
        ..Results::default()
    };
    let selected: Vec<Variant> = results.variants().collect();
    if let Some(err) = &env.peers_missing {
        results.problems.push(format!(
            "auditd, bpftrace: cannot install them, their variants are skipped: {err}"
        ));
    }

    // Warm-up, not recorded: page cache, CPU frequency, lazy kernel state.
    for workload in workloads {
        let ops = workload.ops(quick) / 10 + 1;
        (workload.run)(ops).with_context(|| format!("warm-up of the {} storm", workload.name))?;
    }

    for round in 0..rounds {
        let order: Vec<Variant> = if round % 2 == 0 {
            selected.clone()
        } else {
            selected.iter().rev().copied().collect()
        };
        let names: Vec<_> = order.iter().map(|v| v.name()).collect();
        eprintln!(
            "xtask bench: round {}/{rounds}: {}",
            round + 1,
            names.join(", ")
        );
        for variant in order {
            if variant.is_peer() && env.peers_missing.is_some() {
                continue;
            }
            if let Err(err) = run_variant(env, workloads, variant, round, quick, &mut results) {
                results
                    .problems
                    .push(format!("round {}, {}: {err:#}", round + 1, variant.name()));
            }
        }
    }
    Ok(results)
}

fn run_variant(
    env: &Env,
    workloads: &[&Workload],
    variant: Variant,
    round: usize,
    quick: bool,
    results: &mut Results,
) -> Result<()> {
    let mut tool = variant.start(env, round, quick)?;
    for (index, workload) in WORKLOADS.iter().enumerate() {
        if !workloads.iter().any(|w| w.name == workload.name) {
            continue;
        }
        let ops = workload.ops(quick);
        let cpu_before = tool.cpu_seconds();
        let before = tool.snapshot()?;
        let elapsed = (workload.run)(ops)?;
        let ended = Instant::now();
        if let (Tool::SensorOutputs { daemon, .. }, Some(before)) = (&tool, &before) {
            // Outside the storm's time: every spool empties before the next.
            let at_end = outputs::status(daemon)?;
            let caught_up = |status: &Value| {
                workload.kinds.iter().all(|kind| {
                    event_count(status, kind).saturating_sub(event_count(before, kind))
                        >= ops as u64
                })
            };
            let drain = outputs::drain(
                daemon,
                before,
                (ended, &at_end),
                &caught_up,
                round,
                workload.name,
            )?;
            results.problems.extend(drain.problems());
            results.output_drains.push(drain);
        }
        let observed = tool.observe(before.as_ref(), workload, ops)?;
        // Over the storm and until its events were handled (and, for
        // sensor+outputs, delivered).
        let cpu: BTreeMap<String, f64> = tool
            .cpu_seconds()
            .into_iter()
            .map(|(name, after)| {
                // A thread started meanwhile used all of its time in it.
                let spent = after - cpu_before.get(&name).copied().unwrap_or(0.0);
                (name, spent)
            })
            .collect();
        if !cpu.is_empty() {
            results
                .cpu
                .entry((index, variant.name()))
                .or_default()
                .push(cpu);
        }
        for (kind, &seen) in &observed.events {
            if seen < ops as u64 {
                results.problems.push(format!(
                    "round {}, {}, {} storm: the sensor counted {seen} {kind} events for {ops} ops",
                    round + 1,
                    variant.name(),
                    workload.name
                ));
            }
        }
        eprintln!(
            "  {:<8} {:<8} {:>9.1} us/op{}",
            variant.name(),
            workload.name,
            stats::per_op_us(elapsed, ops),
            observed
                .lost
                .map(|lost| format!("  lost {lost}"))
                .unwrap_or_default()
        );
        results
            .samples
            .entry((index, variant.name()))
            .or_default()
            .push(Sample {
                round,
                elapsed,
                observed,
            });
    }
    if let Tool::SensorOutputs { daemon, servers } = &mut tool {
        let received = servers.check_received(daemon, round)?;
        results.problems.extend(received.problems());
        results.output_rounds.push(received);
    }
    // A peer's losses are reported, never a failure.
    if let Some(lost) = tool.finish()? {
        if lost > 0 && variant.is_sensor() {
            results.problems.push(format!(
                "round {}, {}: the sensor lost {lost} events (status lost.total)",
                round + 1,
                variant.name()
            ));
        }
        results.lost.entry(variant.name()).or_default().push(lost);
    }
    Ok(())
}

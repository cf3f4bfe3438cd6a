//! The bench's report: the Markdown tables on stdout and the JSON of
//! `target/bench/results.json`, from the [`Results`] of a run.

use std::{
    fs, thread,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::{Value, json};

use super::latency::{LATENCY_P99_TARGET_MS, LATENCY_RATE};
use super::pipeline::{DETECTION_TARGET_EPS, PIPELINE_TARGET_EPS};
use super::{
    Env, Results, Sample, latency, outage, outputs, peers,
    variants::Variant,
    workloads::{Workload, index_of},
};
use crate::stats::{self, Summary};

/// Per-round ratio of `variant` to `bare` for one workload, in round order.
pub(super) fn ratios(results: &Results, index: usize, variant: &str) -> Vec<f64> {
    let (Some(bare), Some(samples)) = (
        results.samples.get(&(index, Variant::Bare.name())),
        results.samples.get(&(index, variant)),
    ) else {
        return Vec::new();
    };
    samples
        .iter()
        .filter_map(|sample| {
            let base = bare.iter().find(|b| b.round == sample.round)?;
            let base = base.elapsed.as_secs_f64();
            (base > 0.0).then(|| sample.elapsed.as_secs_f64() / base)
        })
        .collect()
}

pub(super) fn us_per_op(samples: &[Sample], ops: usize) -> Vec<f64> {
    samples
        .iter()
        .map(|s| stats::per_op_us(s.elapsed, ops))
        .collect()
}

pub(super) fn markdown(
    workloads: &[&Workload],
    rounds: usize,
    quick: bool,
    results: &Results,
) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\n## sensor bench: {rounds} rounds{}\n\n",
        if quick { ", quick" } else { "" }
    ));
    out.push_str("| workload | ops | variant | median µs/op | min – max µs/op | IQR µs/op | ratio vs bare (median of rounds) | lost |\n");
    out.push_str("|---|---:|---|---:|---:|---:|---:|---:|\n");
    for workload in workloads {
        let index = index_of(workload.name);
        let ops = workload.ops(quick);
        for variant in results.variants() {
            let samples = results
                .samples
                .get(&(index, variant.name()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let summary = Summary::of(&us_per_op(samples, ops));
            let ratio = Summary::of(&ratios(results, index, variant.name()));
            let lost: Option<u64> = samples
                .iter()
                .map(|s| s.observed.lost)
                .try_fold(0_u64, |sum, lost| lost.map(|l| sum + l));
            let cell = |f: fn(&Summary) -> String| summary.as_ref().map_or("–".to_owned(), f);
            out.push_str(&format!(
                "| {} | {ops} | {} | {} | {} | {} | {} | {} |\n",
                workload.name,
                variant.name(),
                cell(|s| format!("{:.1}", s.median)),
                cell(|s| format!("{:.1} – {:.1}", s.min, s.max)),
                cell(|s| format!("{:.1} – {:.1}", s.q1, s.q3)),
                match (variant, ratio) {
                    (Variant::Bare, _) => "baseline".to_owned(),
                    (_, None) => "–".to_owned(),
                    (_, Some(r)) => format!("{:.3}x ({:.3} – {:.3})", r.median, r.min, r.max),
                },
                match (variant, lost) {
                    (Variant::Bare, _) | (_, None) => "–".to_owned(),
                    (_, Some(lost)) => lost.to_string(),
                }
            ));
        }
    }
    out.push_str(
        "\nRatio: the median over rounds of (variant time / bare time in the same round), with its min – max. \
         Lost: events the tool lost during the workload: for the sensor its status lost.total, \
         for auditd the kernel's `lost` count (`auditctl -s`), for bpftrace its \"Lost N events\" lines. \
         Only the sensor's losses fail the bench.\n\n",
    );
    for workload in workloads {
        out.push_str(&format!("- {}: {}\n", workload.name, workload.description));
    }
    out.push_str(&format!(
        "- auditd: rules for {} (arch b64), backlog {}, written to /var/log/audit/audit.log\n\
         - bpftrace: tracepoints sched_process_fork/exec/exit and sys_enter_connect printed to a file\n\
         - floor: syscall tracepoint: a no-op program on {} (no storm calls it): every syscall takes \
         the syscall tracepoints' slow path and nothing more, what any sensor on `syscalls/` tracepoints pays first\n",
        peers::AUDIT_SYSCALLS.join(", "),
        peers::AUDIT_BACKLOG,
        super::floor::TRACEPOINT
    ));
    for (variant, lost) in &results.lost {
        out.push_str(&format!(
            "- {variant}: lost per round {:?}{}\n",
            lost,
            if matches!(*variant, "auditd" | "bpftrace") {
                ""
            } else {
                " (must be 0)"
            }
        ));
    }
    out.push_str(&cpu_markdown(workloads, results));
    out.push_str(&kernel_cost_markdown(results));
    if let Some(outage) = &results.outage {
        out.push_str(&outage.markdown());
    }
    if !results.memory.is_empty() {
        out.push_str(
            "\n| daemon memory | live | VmRSS MiB | anon / file / shmem MiB | idle VmRSS MiB | target |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---|\n");
        for m in &results.memory {
            let part = |name| {
                m.parts_kib
                    .get(name)
                    .map_or("?".to_owned(), |&kib| format!("{:.1}", kib as f64 / 1024.0))
            };
            out.push_str(&format!(
                "| {} | {} | {:.1} | {} / {} / {} | {:.1} | {} |\n",
                m.name,
                m.count,
                m.rss_kib as f64 / 1024.0,
                part("RssAnon"),
                part("RssFile"),
                part("RssShmem"),
                m.idle_kib as f64 / 1024.0,
                m.target_kib.map_or("–".to_owned(), |t| format!(
                    "≤ {} MiB: {}",
                    t / 1024,
                    if m.rss_kib <= t { "met" } else { "MISSED" }
                ))
            ));
        }
        out.push_str(
            "\nDaemon memory: `sensor daemon --no-store --output file:/dev/null` with that many \
             processes parked in pause() (forked by a helper), read 3 s after the daemon counted \
             them all (the JSON also has the reading at the count), the same 8 s after they were all \
             killed (`processes, exited`), or that many runs live (each a parked process that \
             sent its own launch request); `default config` rows: `sensor daemon --output file:…` \
             (the store on, `keep = \"runs\"`). VmRSS from /proc/PID/status. Its file pages include \
             the kernel's 16 MiB event ring, which the daemon maps twice (32 MiB of VmRSS for \
             16 MiB of kernel memory).\n",
        );
    }
    if !results.latency_ms.is_empty() {
        let p = |q| latency::percentile(&results.latency_ms, q).unwrap_or(f64::NAN);
        let p99 = p(0.99);
        out.push_str("\n| latency | execs | lines | p50 ms | p99 ms | max ms | target |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---|\n");
        out.push_str(&format!(
            "| kernel → output file | {} | {} | {:.2} | {:.2} | {:.2} | p99 ≤ {LATENCY_P99_TARGET_MS} ms: {} |\n",
            results.latency_execs,
            results.latency_ms.len(),
            p(0.5),
            p99,
            p(1.0),
            if p99 <= LATENCY_P99_TARGET_MS { "met" } else { "MISSED" }
        ));
        out.push_str(&format!(
            "\nLatency: {LATENCY_RATE} execs/s of {} under `sensor daemon --no-store --output file:...`; \
             a thread polls the file every 1 ms and takes, for each process.exec line, the wall clock \
             when it read the line minus the line's `time` (the kernel timestamp).\n",
            "/bin/true"
        ));
    }
    if let Some((events, eps)) = results.pipeline {
        out.push_str("\n| pipeline | events | events/s | target |\n|---|---:|---:|---|\n");
        out.push_str(&format!(
            "| replay: decode → attribution → policy → JSON, one core | {events} | {eps:.0} | ≥ {PIPELINE_TARGET_EPS:.0}: {} |\n",
            if eps >= PIPELINE_TARGET_EPS { "met" } else { "MISSED" }
        ));
    }
    if let Some(d) = results.detection {
        out.push_str(
            "\n| detection (rules/agent) | events | events/s | target |\n|---|---:|---:|---|\n",
        );
        out.push_str(&format!(
            "| replay: typed event → rules (fields read from the typed event), one core (the `detect` thread) | {} | {:.0} | ≥ {DETECTION_TARGET_EPS:.0}: {} |\n\
             | replay: JSON value → rules, one core (`sensor rules test`) | {} | {:.0} | |\n",
            d.events,
            d.daemon_eps,
            if d.daemon_eps >= DETECTION_TARGET_EPS { "met" } else { "MISSED" },
            d.events,
            d.rules_eps,
        ));
    }
    out.push_str(&outputs::markdown(results));
    if !results.problems.is_empty() {
        out.push_str(&format!("- problems: {}\n", results.problems.len()));
    }
    out
}

/// CPU seconds per storm of the daemon (and of the servers of
/// `sensor+outputs`): the median over rounds.
pub(super) fn cpu_markdown(workloads: &[&Workload], results: &Results) -> String {
    let mut names: Vec<&str> = results
        .cpu
        .values()
        .flatten()
        .flat_map(|m| m.keys().map(String::as_str))
        .filter(|name| !name.starts_with("thread:"))
        .collect();
    names.sort_unstable_by_key(|n| (*n != "daemon", *n));
    names.dedup();
    if names.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n| CPU s per storm (median) | variant | {} |\n|---|---|{}\n",
        names.join(" | "),
        "---:|".repeat(names.len())
    );
    for workload in workloads {
        let index = index_of(workload.name);
        for variant in results.variants() {
            let Some(rounds) = results.cpu.get(&(index, variant.name())) else {
                continue;
            };
            let cells: Vec<String> = names
                .iter()
                .map(|name| {
                    let values: Vec<f64> = rounds
                        .iter()
                        .filter_map(|m| m.get(*name))
                        .copied()
                        .collect();
                    Summary::of(&values).map_or("–".to_owned(), |s| format!("{:.2}", s.median))
                })
                .collect();
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                workload.name,
                variant.name(),
                cells.join(" | ")
            ));
        }
    }
    out.push_str(
        "\nCPU s: user + system time (/proc/PID/stat) from just before the storm until the tool had \
         handled its events (sensor+outputs: until every spool was empty), median over rounds; the \
         storm itself runs on the same 2 CPUs.\n",
    );
    out
}

pub(super) fn summary_json(summary: Option<Summary>) -> Value {
    summary.map_or(
        Value::Null,
        |s| json!({"median": s.median, "min": s.min, "max": s.max, "q1": s.q1, "q3": s.q3}),
    )
}

/// Per workload: the programs' ns per run and per op, and what that is
/// against the bare storm's time per op.
pub(super) fn kernel_cost_markdown(results: &Results) -> String {
    let mut out = String::new();
    if results.kernel_cost.is_empty() {
        return out;
    }
    out.push_str("\n| kernel cost | program | runs per op | ns per run | ns per op |\n");
    out.push_str("|---|---|---:|---:|---:|\n");
    let mut totals = String::new();
    for cost in &results.kernel_cost {
        let ops = cost.ops.max(1) as f64;
        for p in &cost.programs {
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.0} | {:.0} |\n",
                cost.workload,
                p.name,
                p.runs as f64 / ops,
                p.ns as f64 / p.runs.max(1) as f64,
                p.ns as f64 / ops,
            ));
        }
        let per_op = cost.ns_per_op();
        let bare = results
            .samples
            .get(&(index_of(cost.workload), Variant::Bare.name()))
            .and_then(|samples| Summary::of(&us_per_op(samples, cost.ops)))
            .map(|s| s.median);
        totals.push_str(&format!(
            "- {}: {:.2} µs of program time per op{}\n",
            cost.workload,
            per_op / 1000.0,
            bare.map_or(String::new(), |bare| format!(
                "; the storm keeps {} core(s) busy, so about {:.1} % of the bare {bare:.1} µs/op",
                cost.cores,
                100.0 * per_op / 1000.0 / cost.cores.max(1) as f64 / bare
            ))
        ));
    }
    out.push_str(
        "\nKernel cost: one storm of each workload under `sensor daemon --no-store --output file:/dev/null` \
         with kernel.bpf_stats_enabled = 1 (restored after); each program's run_cnt and run_time_ns \
         from the daemon's /proc/PID/fdinfo. Not included: the syscall-tracepoint slow path every \
         syscall takes once any syscalls/ tracepoint is on (the `floor: syscall tracepoint` variant's \
         ratio), and the daemon's own CPU.\n",
    );
    out.push_str(&totals);
    out
}

pub(super) fn json(
    env: &Env,
    workloads: &[&Workload],
    rounds: usize,
    quick: bool,
    results: &Results,
    elapsed: Duration,
) -> Value {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, usize::from);
    let time_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let workloads: Vec<Value> = workloads
        .iter()
        .map(|workload| {
            let index = index_of(workload.name);
            let ops = workload.ops(quick);
            let variants: Vec<Value> = results
                .variants()
                .map(|variant| {
                    let samples = results
                        .samples
                        .get(&(index, variant.name()))
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    let per_op = us_per_op(samples, ops);
                    let ratio = ratios(results, index, variant.name());
                    json!({
                        "name": variant.name(),
                        "rounds": samples.iter().map(|s| s.round + 1).collect::<Vec<_>>(),
                        "us_per_op": per_op,
                        "summary_us_per_op": summary_json(Summary::of(&per_op)),
                        "ratio_vs_bare": {
                            "per_round": ratio,
                            "summary": summary_json(Summary::of(&ratio)),
                        },
                        "lost": samples.iter().map(|s| s.observed.lost).collect::<Vec<_>>(),
                        "events_seen": samples.iter().map(|s| &s.observed.events).collect::<Vec<_>>(),
                        "cpu_s": results.cpu.get(&(index, variant.name())),
                    })
                })
                .collect();
            json!({
                "name": workload.name,
                "description": workload.description,
                "ops": ops,
                "variants": variants,
            })
        })
        .collect();
    json!({
        "schema": "sensor.bench/v1",
        "time_unix": time_unix,
        "quick": quick,
        "rounds": rounds,
        "elapsed_s": elapsed.as_secs_f64(),
        "host": {"kernel": kernel, "cpus": cpus},
        "sensor_bin": env.sensor_bin,
        "workloads": workloads,
        "lost_per_round": results.lost,
        "pipeline": results.pipeline.map(|(events, eps)| json!({
            "events": events,
            "events_per_s": eps,
            "target_events_per_s": PIPELINE_TARGET_EPS,
        })),
        "detection": results.detection.map(|d| json!({
            "events": d.events,
            "events_per_s": d.daemon_eps,
            "rules_only_events_per_s": d.rules_eps,
            "target_events_per_s": DETECTION_TARGET_EPS,
        })),
        "latency_ms": {
            "execs": results.latency_execs,
            "lines": results.latency_ms.len(),
            "rate_per_s": LATENCY_RATE,
            "p50": latency::percentile(&results.latency_ms, 0.5),
            "p99": latency::percentile(&results.latency_ms, 0.99),
            "max": latency::percentile(&results.latency_ms, 1.0),
            "target_p99": LATENCY_P99_TARGET_MS,
        },
        "memory": results.memory.iter().map(|m| json!({
            "name": m.name,
            "live": m.count,
            "rss_kib": m.rss_kib,
            "idle_rss_kib": m.idle_kib,
            "rss_parts_kib": m.parts_kib,
            "target_kib": m.target_kib,
            "target_met": m.target_kib.map(|t| m.rss_kib <= t),
        })).collect::<Vec<_>>(),
        "outputs": outputs::json(results),
        "outage": results.outage.as_ref().map(outage::Outage::json),
        "kernel_cost": results.kernel_cost.iter().map(|c| json!({
            "workload": c.workload,
            "ops": c.ops,
            "cores": c.cores,
            "ns_per_op": c.ns_per_op(),
            "programs": c.programs.iter().map(|p| json!({
                "name": p.name,
                "runs": p.runs,
                "run_time_ns": p.ns,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "problems": results.problems,
        "ok": results.problems.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::variants::Observed;

    fn sample(round: usize, millis: u64) -> Sample {
        Sample {
            round,
            elapsed: Duration::from_millis(millis),
            observed: Observed::default(),
        }
    }

    #[test]
    fn ratios_pair_rounds() {
        let mut results = Results::default();
        results
            .samples
            .insert((0, "bare"), vec![sample(0, 100), sample(1, 200)]);
        results
            .samples
            .insert((0, "sensor"), vec![sample(1, 220), sample(0, 105)]);
        let r = ratios(&results, 0, "sensor");
        assert_eq!(r.len(), 2);
        assert!((r[0] - 1.1).abs() < 1e-9);
        assert!((r[1] - 1.05).abs() < 1e-9);
        assert!(ratios(&results, 1, "sensor").is_empty());
    }
}

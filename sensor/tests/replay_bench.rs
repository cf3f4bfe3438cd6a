//! The pipeline replay rate (issue 18): the golden recording
//! (`golden/records.bin`) replayed through the engine into a JSON and an
//! OCSF file output, `REPLAY_ROUNDS` times (default 200), each round with a
//! fresh engine; prints records/s and events/s. Timing covers the records'
//! handling and the outputs' close (so the formatting on the output threads
//! counts). Run with
//! `cargo test -p sensor --test replay_bench -- --ignored --nocapture`.

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a failure is a panic with its cause"
)]

use std::{
    fs,
    path::Path,
    sync::Arc,
    time::{Duration, Instant},
};

use sensor::{pipeline::Pipeline, status::DaemonState};

mod replay;

use replay::{golden, records};

/// CPU time of the whole process (every thread: the pipeline's and the
/// outputs'), which other processes on the machine do not inflate.
fn cpu_time() -> Duration {
    use nix::sys::resource::{UsageWho, getrusage};
    let Ok(usage) = getrusage(UsageWho::RUSAGE_SELF) else {
        return Duration::ZERO;
    };
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    tv(usage.user_time()) + tv(usage.system_time())
}

/// One round: a fresh engine and outputs; returns the wall and CPU time
/// spent and the events written to the JSON file.
fn round(dir: &Path, records: &[&[u8]], generation: u32) -> (Duration, Duration, usize) {
    let engine = replay::engine(dir);
    let (json, _ocsf, outputs) = replay::outputs(dir);
    let started = Instant::now();
    let cpu_started = cpu_time();
    let mut p = Pipeline::new(engine, outputs, Arc::new(DaemonState::default()))
        .with_generation(generation);
    if provenance() {
        let chainer = Arc::new(sensor::provenance::Chainer::new());
        let rng = ring::rand::SystemRandom::new();
        let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        chainer.set_key("bench-key", der.as_ref(), None).unwrap();
        p = p.with_provenance(sensor::provenance::Planner::new(
            sensor::provenance::ProvenanceConfig::default(),
            chainer,
        ));
    }
    for record in records {
        p.handle_record(record);
    }
    p.close();
    let took = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_started);
    let events = fs::read_to_string(&json).unwrap().lines().count();
    (took, cpu, events)
}

/// `REPLAY_PROVENANCE=1`: run events chained and checkpointed, as the
/// daemon does by default (`[provenance]`).
fn provenance() -> bool {
    std::env::var_os("REPLAY_PROVENANCE").is_some_and(|v| v == "1")
}

#[test]
#[ignore = "a benchmark: run it by name with --ignored --nocapture"]
fn replay_rate() {
    let rounds: usize = std::env::var("REPLAY_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let bytes = fs::read(golden().join("records.bin")).unwrap();
    let records = records(&bytes);
    let generation = replay::generation(&records);
    let dir = tempfile::tempdir().unwrap();
    let (mut total, mut cpu, mut events) = (Duration::ZERO, Duration::ZERO, 0);
    // One round to warm up (page cache, allocator).
    round(dir.path(), &records, generation);
    for _ in 0..rounds {
        let (took, used, n) = round(dir.path(), &records, generation);
        total += took;
        cpu += used;
        events += n;
    }
    let (secs, cpu_secs) = (total.as_secs_f64(), cpu.as_secs_f64());
    let n = (rounds * records.len()) as f64;
    println!(
        "replay: {rounds} rounds x {} records ({events} events) in {secs:.3} s wall, {cpu_secs:.3} s CPU: \
         {:.0} records/s wall, {:.0} records/s per CPU second (JSON + OCSF outputs, provenance {})",
        records.len(),
        n / secs,
        n / cpu_secs,
        if provenance() { "on" } else { "off" },
    );
}

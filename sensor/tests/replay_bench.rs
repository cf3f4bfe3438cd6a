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
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant},
};

use sensor::{
    attribution::{Attribution, Matchers, RunTable},
    config::Config,
    engine::Engine,
    identity::{Clock, Host, ProcessKeys},
    pipeline::Pipeline,
    policy::kernel::IdNames,
    sinks::{OutputContext, OutputSpec, Outputs},
    status::DaemonState,
};
use sensor_common::event::ProcRun;

const BOOT_ID: &str = "60a1de4c-0000-4000-8000-000000000017";
const CLOCK_OFFSET_NS: i128 = 1_000_000_000_000_000_000;

fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}

fn records(bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= 4 {
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let Some(record) = rest.get(4..4 + len) else {
            break;
        };
        out.push(record);
        rest = &rest[4 + len..];
    }
    out
}

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
    let config_text = fs::read_to_string(golden().join("config.toml")).unwrap();
    let (config, _policies) =
        Config::parse_with_policies(&config_text, &golden().join("config.toml")).unwrap();
    let matchers = Matchers::new(&config.agents).unwrap();
    let empty_proc = dir.join("proc");
    fs::create_dir_all(&empty_proc).unwrap();
    let keys = ProcessKeys::new(BOOT_ID, 100);
    let attribution = Attribution::new(
        keys.clone(),
        Box::new(HashMap::<u32, ProcRun>::new()),
        RunTable::new(),
        None,
    )
    .with_matchers(matchers)
    .with_proc_root(empty_proc);
    let engine = Engine::new(
        Host {
            name: "golden".into(),
            boot_id: BOOT_ID.into(),
        },
        keys,
        Clock::with_offset(CLOCK_OFFSET_NS),
        attribution,
    )
    .with_recorded_ids(IdNames::open(golden().join("policy_ids.json")));
    let json = dir.join("events.jsonl");
    let ocsf = dir.join("ocsf.jsonl");
    let _ = fs::remove_file(&json);
    let _ = fs::remove_file(&ocsf);
    let specs: Vec<OutputSpec> = [
        format!("file:{}", json.display()),
        format!("file:{},format=ocsf", ocsf.display()),
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let outputs = Outputs::open(
        &specs,
        &OutputContext {
            state_dir: dir.to_owned(),
            hostname: "golden".into(),
            instance_id: "golden".into(),
        },
    )
    .unwrap();
    let started = Instant::now();
    let cpu_started = cpu_time();
    let mut p = Pipeline::new(engine, outputs, Arc::new(DaemonState::default()))
        .with_generation(generation);
    for record in records {
        p.handle_record(record);
    }
    p.close();
    let took = started.elapsed();
    let cpu = cpu_time().saturating_sub(cpu_started);
    let events = fs::read_to_string(&json).unwrap().lines().count();
    (took, cpu, events)
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
    let generation = records
        .first()
        .and_then(|r| sensor::record::decode(r).ok())
        .map_or(0, |r| r.header().generation);
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
         {:.0} records/s wall, {:.0} records/s per CPU second (JSON + OCSF outputs)",
        records.len(),
        n / secs,
        n / cpu_secs,
    );
}

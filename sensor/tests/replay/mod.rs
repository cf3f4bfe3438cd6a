//! The golden recording and what replays it, shared by the golden test and
//! the replay benchmark: the records of `golden/records.bin`, and an engine
//! and outputs set up as the recording daemon's were.

use std::{
    collections::HashMap,
    fs,
    path::{Path, PathBuf},
};

use sensor::{
    attribution::{Attribution, Matchers, RunTable},
    config::Config,
    engine::Engine,
    identity::{Clock, Host, ProcessKeys},
    policy::kernel::IdNames,
    sinks::{OutputContext, OutputSpec, Outputs},
};
use sensor_common::event::ProcRun;

/// Boot id of the replayed host.
pub const BOOT_ID: &str = "60a1de4c-0000-4000-8000-000000000017";
/// realtime - boottime of the replay: kernel times land in 2001, far from
/// any real "now", so the normalizer can tell them apart.
pub const CLOCK_OFFSET_NS: i128 = 1_000_000_000_000_000_000;

pub fn golden() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("golden")
}

/// The records of `records.bin`: each a 4-byte LE length, then the bytes.
pub fn records(bytes: &[u8]) -> Vec<&[u8]> {
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

/// The recording daemon's generation (from the first record): nothing is
/// "recovered".
pub fn generation(records: &[&[u8]]) -> u32 {
    records
        .first()
        .and_then(|r| sensor::record::decode(r).ok())
        .map_or(0, |r| r.header().generation)
}

/// An engine with the recording's agents, policy ids, host and clock, and
/// an empty /proc under `dir`.
pub fn engine(dir: &Path) -> Engine {
    // Only the agents are used (the recorded verdicts carry the policy
    // ids): the policies are not resolved, so the files their rules name
    // need not exist on this machine.
    let config_text = fs::read_to_string(golden().join("config.toml")).unwrap();
    let config: Config = toml::from_str(&config_text).unwrap();
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
    Engine::new(
        Host {
            name: "golden".into(),
            boot_id: BOOT_ID.into(),
        },
        keys,
        Clock::with_offset(CLOCK_OFFSET_NS),
        attribution,
    )
    .with_recorded_ids(IdNames::open(golden().join("policy_ids.json")))
}

/// A JSON and an OCSF file output in `dir`: their paths and the outputs.
pub fn outputs(dir: &Path) -> (PathBuf, PathBuf, Outputs) {
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
    (json, ocsf, outputs)
}

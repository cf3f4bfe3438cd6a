//! Detection throughput with the shipped pack (rules/agent), one thread,
//! replayed like the pipeline bench: the golden recording
//! (sensor/tests/golden/records.bin, a real kernel record stream) decoded and
//! attributed by the engine into typed events, then
//!
//! - `daemon`: each event as the daemon's `detect` thread takes it
//!   (`sensor::detect::evaluate`: the JSON form of the typed event when a
//!   rule applies to its kind, then the rules and correlations);
//! - `rules`: the rule engine alone over each event's JSON value
//!   (`RuleSet::evaluate`), as `sensor rules test` runs it.
//!
//! `cargo test -p sensor --release --test detect_bench -- --ignored --nocapture`
//! (`DETECT_ROUNDS=N`, default 200). Each figure prints as
//! `detection (WHAT): ... = R events/s`.

#![allow(
    clippy::unwrap_used,
    reason = "a benchmark: a failure is a panic with its cause"
)]

use std::{fs, time::Instant};

use sensor::{
    detect::{Correlator, RuleSet},
    event::Event,
};
use serde_json::Value;

#[allow(
    dead_code,
    reason = "the outputs the golden test uses are not needed here"
)]
mod replay;

fn typed_events() -> Vec<Event> {
    let dir = tempfile::tempdir().unwrap();
    let mut engine = replay::engine(dir.path());
    let bytes = fs::read(replay::golden().join("records.bin")).unwrap();
    let mut events = Vec::new();
    for record in replay::records(&bytes) {
        if let Ok(raw) = sensor::record::decode(record) {
            engine.build_into(raw, &mut events);
        }
    }
    events
}

fn report(what: &str, set: &RuleSet, n: usize, secs: f64, fired: usize) {
    println!(
        "detection ({what}): {} rules + {} correlations, {n} events in {secs:.3} s = {:.0} events/s ({fired} matches)",
        set.len(),
        set.correlations().len(),
        n as f64 / secs
    );
}

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn detection_throughput() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = RuleSet::load(&[root.join("../rules/agent")]).unwrap();
    let events = typed_events();
    assert!(events.len() > 100, "{}", events.len());
    let values: Vec<Value> = events
        .iter()
        .map(|e| serde_json::to_value(e).unwrap())
        .collect();
    let rounds: usize = std::env::var("DETECT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let n = events.len() * rounds;

    let mut state = Correlator::default();
    let mut fired = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        for e in &events {
            fired += sensor::detect::evaluate(&set, &mut state, e).len();
        }
    }
    report("daemon", &set, n, start.elapsed().as_secs_f64(), fired);
    let daemon_fired = fired;

    let mut state = Correlator::default();
    let mut fired = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        for (e, v) in events.iter().zip(&values) {
            fired += set.evaluate(&mut state, e.kind, v).len();
        }
    }
    report("rules", &set, n, start.elapsed().as_secs_f64(), fired);
    assert_eq!(
        daemon_fired, fired,
        "the daemon's JSON form fires as the whole"
    );
    assert!(n > 0 && fired > 0);
}

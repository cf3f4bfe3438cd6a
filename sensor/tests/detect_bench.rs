//! Detection throughput with the shipped pack (rules/agent), one thread,
//! replayed like the pipeline bench: the golden recording
//! (sensor/tests/golden/records.bin, a real kernel record stream) decoded and
//! attributed by the engine into typed events, then
//!
//! - `daemon`: each event as the daemon's `detect` thread takes it
//!   (`sensor::detect::evaluate`: the fields the rules read, read from the
//!   typed event when a rule applies to its kind, then the rules and
//!   correlations);
//! - `json form`: the daemon's path before it read typed events (the
//!   pruned JSON form of each typed event, `RuleSet::json_form`, then
//!   `RuleSet::evaluate`), for comparison;
//! - `rules`: the rule engine alone over each event's JSON value
//!   (`RuleSet::evaluate`), as `sensor rules test` runs it.
//!
//! `cargo test -p sensor --release --test detect_bench -- --ignored --nocapture`
//! (`DETECT_ROUNDS=N`, default 200). Each figure prints as
//! `detection (WHAT): ... = R events/s (N matches), C µs CPU/event`, C the
//! measuring thread's own CPU time (steadier than the rate on a busy host).

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

fn report(what: &str, set: &RuleSet, n: usize, secs: f64, cpu: f64, fired: usize) {
    println!(
        "detection ({what}): {} rules + {} correlations, {n} events in {secs:.3} s = {:.0} events/s ({fired} matches), {:.2} µs CPU/event",
        set.len(),
        set.correlations().len(),
        n as f64 / secs,
        cpu * 1e6 / n as f64
    );
}

/// This thread's CPU time, in seconds.
fn thread_cpu() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID).unwrap();
    t.tv_sec() as f64 + t.tv_nsec() as f64 / 1e9
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
    let (start, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..rounds {
        for e in &events {
            fired += sensor::detect::evaluate(&set, &mut state, e).len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report("daemon", &set, n, secs, thread_cpu() - cpu, fired);
    let daemon_fired = fired;

    let mut state = Correlator::default();
    let mut fired = 0usize;
    let (start, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..rounds {
        for e in &events {
            if e.kind == sensor::event::Kind::Detection || !set.applies(e.kind) {
                continue;
            }
            let v = set.json_form(e.kind, e).unwrap();
            fired += set.evaluate(&mut state, e.kind, &v).len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report("json form", &set, n, secs, thread_cpu() - cpu, fired);
    assert_eq!(daemon_fired, fired, "the JSON form fires as the typed");

    let mut state = Correlator::default();
    let mut fired = 0usize;
    let (start, cpu) = (Instant::now(), thread_cpu());
    for _ in 0..rounds {
        for (e, v) in events.iter().zip(&values) {
            fired += set.evaluate(&mut state, e.kind, v).len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    report("rules", &set, n, secs, thread_cpu() - cpu, fired);
    assert_eq!(
        daemon_fired, fired,
        "the daemon's JSON form fires as the whole"
    );
    assert!(n > 0 && fired > 0);
}

/// The daemon's path (`sensor::detect::evaluate`: the typed event's fields
/// read by the typed accessors) fires exactly what the whole JSON form of
/// each golden event fires (`sensor rules test`'s path), event by event,
/// rules and correlations, over several rounds (first-seen state and
/// correlation windows carried along).
#[test]
fn the_daemon_path_fires_as_the_whole_json_over_the_golden_events() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = RuleSet::load(&[root.join("../rules/agent")]).unwrap();
    let events = typed_events();
    assert!(events.len() > 100, "{}", events.len());
    let typed_kinds = events.iter().filter(|e| set.reads_typed(e.kind)).count();
    assert!(
        typed_kinds > 100,
        "{typed_kinds} golden events are read typed"
    );
    let (mut daemon, mut whole) = (Correlator::default(), Correlator::default());
    let mut fired = 0;
    for _ in 0..5 {
        for e in &events {
            let v = serde_json::to_value(e).unwrap();
            let want: Vec<String> = set
                .evaluate(&mut whole, e.kind, &v)
                .iter()
                .map(|r| r.id.clone())
                .collect();
            let got: Vec<String> = sensor::detect::evaluate(&set, &mut daemon, e)
                .iter()
                .map(|m| m.detection.rule_id.clone())
                .collect();
            if e.kind != sensor::event::Kind::Detection {
                assert_eq!(got, want, "{v}");
            }
            fired += want.len();
        }
    }
    assert!(fired > 10, "{fired}");
}

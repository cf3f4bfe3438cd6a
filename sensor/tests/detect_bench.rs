//! Detection throughput: the shipped pack (rules/agent) over the golden
//! events (sensor/tests/golden/expected/events.jsonl, 364 events of a real
//! recording), each as the daemon's detect thread sees it (the event's JSON
//! value; the daemon also pays `serde_json::to_value` of the typed event,
//! not counted here), one thread.
//!
//! `cargo test -p sensor --release --test detect_bench -- --ignored --nocapture`
//! (`DETECT_ROUNDS=N`, default 200).

use std::time::Instant;

use sensor::{
    detect::{Correlator, RuleSet},
    event::Kind,
};
use serde_json::Value;

#[test]
#[ignore = "a measurement: run with --ignored --nocapture"]
fn detection_throughput() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let set = RuleSet::load(&[root.join("../rules/agent")]).unwrap();
    let text = std::fs::read_to_string(root.join("tests/golden/expected/events.jsonl")).unwrap();
    let events: Vec<(Kind, Value)> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| Some((Kind::parse(v["kind"].as_str()?)?, v)))
        .collect();
    let rounds: usize = std::env::var("DETECT_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(200);
    let mut state = Correlator::default();
    let mut fired = 0usize;
    let start = Instant::now();
    for _ in 0..rounds {
        for (kind, e) in &events {
            fired += set.evaluate(&mut state, *kind, e).len();
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let n = events.len() * rounds;
    println!(
        "detection: {} rules + {} correlations, {n} events in {secs:.3} s: {:.0} events/s ({fired} matches)",
        set.len(),
        set.correlations().len(),
        n as f64 / secs
    );
    assert!(n > 0);
}

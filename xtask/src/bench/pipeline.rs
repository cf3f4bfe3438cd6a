//! The user-space pipeline's replay rate: the sensor's own release-mode
//! measurement test, run and read.

use anyhow::{Context as _, Result, anyhow, bail};

use super::Results;
use crate::util;

/// Pipeline replay target (issue 8): events/s on one core.
pub(super) const PIPELINE_TARGET_EPS: f64 = 300_000.0;

/// Detection target (issue 20): events/s through the rule engine with the
/// shipped pack, on one core.
pub(super) const DETECTION_TARGET_EPS: f64 = 200_000.0;

/// What the detection replay measured.
#[derive(Debug, Clone, Copy)]
pub(super) struct Detection {
    pub events: u64,
    /// As the daemon's `detect` thread takes a typed event (its JSON form
    /// when a rule applies to its kind, then the rules).
    pub daemon_eps: f64,
    /// The rule engine alone over each event's JSON value.
    pub rules_eps: f64,
}

/// The golden recording's typed events through the shipped pack on one
/// core: the sensor's own release-mode measurement test
/// (`sensor/tests/detect_bench.rs`), whose `detection (daemon|rules): … N
/// events in T s = R events/s` lines are read here.
pub(super) fn measure_detection(results: &mut Results) -> Result<()> {
    eprintln!("xtask bench: detection: replaying the golden events through rules/agent (release)");
    let text = run_measurement(&[
        "--test",
        "detect_bench",
        "--",
        "--ignored",
        "--exact",
        "detection_throughput",
        "--nocapture",
    ])?;
    let (events, daemon_eps) = read_rate(&text, "detection (daemon): ")?;
    let (_, rules_eps) = read_rate(&text, "detection (rules): ")?;
    results.detection = Some(Detection {
        events,
        daemon_eps,
        rules_eps,
    });
    Ok(())
}

/// Replays recorded raw kernel events through decode → attribution →
/// policy → JSON on one core: the sensor's own release-mode measurement
/// test, whose `pipeline: N events in T s = R events/s` line is read here.
pub(super) fn measure(results: &mut Results) -> Result<()> {
    eprintln!(
        "xtask bench: pipeline: replaying raw events through the user-space stages (release)"
    );
    let text = run_measurement(&[
        "--lib",
        "pipeline::tests::pipeline_throughput",
        "--",
        "--ignored",
        "--exact",
        "--nocapture",
    ])?;
    // "pipeline: 300000 events in 0.373 s = 805022 events/s (1.24 us/event)"
    let (events, eps) = read_rate(&text, "pipeline: ")?;
    results.pipeline = Some((events, eps));
    Ok(())
}

/// Runs one of the sensor's release-mode measurement tests
/// (`cargo test --release -p sensor ARGS`); returns its stdout and stderr.
fn run_measurement(args: &[&str]) -> Result<String> {
    let mut cmd = util::cargo()?;
    cmd.args(["test", "--release", "-p", "sensor"]).args(args);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", util::display(&cmd)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`{}` failed: {}", util::display(&cmd), text.trim());
    }
    Ok(text)
}

/// The event count and the rate of the line starting with `prefix`:
/// `PREFIX N events in T s = R events/s ...`.
fn read_rate(text: &str, prefix: &str) -> Result<(u64, f64)> {
    let line = text
        .lines()
        .find(|l| l.starts_with(prefix))
        .ok_or_else(|| anyhow!("no `{}` line in the measurement's output", prefix.trim()))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let events: u64 = words
        .iter()
        .position(|w| *w == "events")
        .and_then(|i| i.checked_sub(1))
        .and_then(|i| words.get(i))
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the event count in {line:?}"))?;
    let eps: f64 = words
        .iter()
        .position(|w| *w == "=")
        .and_then(|i| words.get(i + 1))
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the rate in {line:?}"))?;
    Ok((events, eps))
}

#[cfg(test)]
mod tests {
    use super::read_rate;

    #[test]
    fn rates_are_read_from_the_measurement_lines() {
        let text = "noise\npipeline: 300000 events in 0.373 s = 805022 events/s (1.24 us/event)\n\
                    detection (rules): 15 rules + 3 correlations, 72800 events in 0.091 s = 796000 events/s (9 matches), 1.25 µs CPU/event\n";
        let (n, eps) = read_rate(text, "pipeline: ").expect("pipeline line");
        assert_eq!(n, 300_000);
        assert!((eps - 805_022.0).abs() < 0.5);
        let (n, eps) = read_rate(text, "detection (rules): ").expect("rules line");
        assert_eq!(n, 72_800);
        assert!((eps - 796_000.0).abs() < 0.5);
        assert!(read_rate(text, "detection (daemon): ").is_err());
        assert!(read_rate("pipeline: many events in 1 s = 2 events/s", "pipeline: ").is_err());
    }
}

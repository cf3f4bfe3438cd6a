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
    let mut cmd = util::cargo()?;
    cmd.args([
        "test",
        "--release",
        "-p",
        "sensor",
        "--test",
        "detect_bench",
        "--",
        "--ignored",
        "--exact",
        "detection_throughput",
        "--nocapture",
    ]);
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
    let read = |what: &str| -> Result<(u64, f64)> {
        let prefix = format!("detection ({what}): ");
        let line = text
            .lines()
            .find(|l| l.starts_with(&prefix))
            .ok_or_else(|| {
                anyhow!(
                    "no `{prefix}` line in the output of `{}`",
                    util::display(&cmd)
                )
            })?;
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
    };
    let (events, daemon_eps) = read("daemon")?;
    let (_, rules_eps) = read("rules")?;
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
    let mut cmd = util::cargo()?;
    cmd.args([
        "test",
        "--release",
        "-p",
        "sensor",
        "--lib",
        "pipeline::tests::pipeline_throughput",
        "--",
        "--ignored",
        "--exact",
        "--nocapture",
    ]);
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
    // "pipeline: 300000 events in 0.373 s = 805022 events/s (1.24 us/event)"
    let line = text
        .lines()
        .find(|l| l.starts_with("pipeline: "))
        .ok_or_else(|| {
            anyhow!(
                "no `pipeline:` line in the output of `{}`",
                util::display(&cmd)
            )
        })?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let events: u64 = words
        .get(1)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the event count in {line:?}"))?;
    let eps: f64 = words
        .iter()
        .position(|w| *w == "=")
        .and_then(|i| words.get(i + 1))
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the rate in {line:?}"))?;
    results.pipeline = Some((events, eps));
    Ok(())
}

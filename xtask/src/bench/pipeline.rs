//! The user-space pipeline's replay rate: the sensor's own release-mode
//! measurement test, run and read.

use anyhow::{Context as _, Result, anyhow, bail};

use super::Results;
use crate::util;

/// Pipeline replay target (issue 8): events/s on one core.
pub(super) const PIPELINE_TARGET_EPS: f64 = 300_000.0;

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

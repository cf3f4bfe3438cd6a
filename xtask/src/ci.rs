//! `cargo xtask test`: the CI entry point. A list of steps, each printed with
//! a header and its duration; the first failing step stops the run.

use std::time::Duration;

use anyhow::{Result, anyhow};
use clap::ValueEnum;

use crate::{
    build::{self, Profile},
    fuzz, setup, util,
};

/// What the fuzz step gives each target: enough to replay the committed
/// corpus and look a little further, the whole step (with a cold build)
/// inside ~5 minutes on two cores.
const FUZZ_BUDGET: Duration = Duration::from_secs(20);

/// Groups of steps that `--only` selects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Group {
    /// rustfmt check and clippy (host crates, then the eBPF crate).
    Lint,
    /// Unit tests of every crate except the eBPF and integration-test crates.
    Unit,
    /// Every fuzz target for a fixed budget on top of its committed corpus.
    Fuzz,
    /// Build the sensor, mount, run the integration tests (root).
    Integration,
}

type Action = Box<dyn FnOnce() -> Result<()>>;

struct Step {
    name: &'static str,
    action: Action,
}

impl Step {
    fn new(name: &'static str, action: impl FnOnce() -> Result<()> + 'static) -> Self {
        Self {
            name,
            action: Box::new(action),
        }
    }
}

pub fn test(no_setup: bool, only: &[Group]) -> Result<()> {
    let wants = |group: Group| only.is_empty() || only.contains(&group);
    if wants(Group::Integration) {
        util::require_root("`cargo xtask test` (the integration tests)")?;
    }

    let mut steps = Vec::new();
    if !no_setup {
        steps.push(Step::new("setup", setup::setup));
    }
    if wants(Group::Lint) {
        steps.push(Step::new("fmt", || {
            util::run(util::cargo()?.args(["fmt", "--all", "--", "--check"]))
        }));
        steps.push(Step::new("clippy (host crates)", || {
            util::run(util::cargo()?.args([
                "clippy",
                "--workspace",
                "--exclude",
                "sensor-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        }));
        steps.push(Step::new("clippy (eBPF crate)", || {
            util::run(util::cargo()?.args([
                "+nightly",
                "clippy",
                "-p",
                "sensor-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Zbuild-std=core",
                "--",
                "-D",
                "warnings",
            ]))
        }));
    }
    if wants(Group::Unit) {
        steps.push(Step::new("unit tests", || {
            util::run(util::cargo()?.args([
                "test",
                "--workspace",
                "--exclude",
                "sensor-ebpf",
                "--exclude",
                "sensor-tests",
            ]))
        }));
    }
    if wants(Group::Fuzz) {
        steps.push(Step::new("fuzz", || fuzz::ci(FUZZ_BUDGET)));
    }
    if wants(Group::Integration) {
        let bin = build::sensor_bin(Profile::Debug)?;
        steps.push(Step::new("build sensor", || {
            build::build_sensor(Profile::Debug).map(drop)
        }));
        steps.push(Step::new("mounts", setup::mounts));
        steps.push(Step::new("integration tests", move || {
            util::run(util::cargo()?.env("SENSOR_BIN", &bin).args([
                "test",
                "-p",
                "sensor-tests",
                // Every test file runs, so one failure does not hide others.
                "--no-fail-fast",
                "--",
                "--test-threads=1",
            ]))
        }));
    }

    run_steps(steps)
}

fn run_steps(steps: Vec<Step>) -> Result<()> {
    let total = steps.len();
    let mut done: Vec<(&'static str, Duration)> = Vec::new();
    for (index, step) in steps.into_iter().enumerate() {
        let number = index + 1;
        println!("\n==> [{number}/{total}] {}", step.name);
        let (result, elapsed) = util::timed(step.action);
        match result {
            Ok(()) => {
                println!(
                    "<== [{number}/{total}] {}: ok in {}",
                    step.name,
                    util::secs(elapsed)
                );
                done.push((step.name, elapsed));
            }
            Err(err) => {
                println!(
                    "<== [{number}/{total}] {}: FAILED after {}",
                    step.name,
                    util::secs(elapsed)
                );
                summary(&done);
                return Err(anyhow!("step `{}` failed: {err:#}", step.name));
            }
        }
    }
    summary(&done);
    println!("xtask test: ok, every step passed ({total} of {total})");
    Ok(())
}

fn summary(done: &[(&'static str, Duration)]) {
    if done.is_empty() {
        return;
    }
    println!("\nxtask test: steps that passed");
    for (name, elapsed) in done {
        println!("  {:>7}  {name}", util::secs(*elapsed));
    }
}

//! `cargo xtask fuzz`: the libFuzzer targets of `fuzz/` (cargo-fuzz), each
//! for a time budget on top of its corpus (and its dictionary,
//! `fuzz/dict/<target>.dict`, when it has one), with executions per second and
//! total executions per target; a target that crashes fails the run and
//! names its artifact (the input that crashed, under `fuzz/artifacts/`).
//!
//! Built once for all targets, `-s none`: no AddressSanitizer. The fuzzed
//! code is safe Rust but for the record decoder's length-checked reads
//! (debug assertions stay on), and a cold ASan build takes ~3m50s here
//! against ~2m45s, which the CI step cannot afford on two cores.

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

/// Every fuzz target (`fuzz/fuzz_targets/<name>.rs`), in the order they run.
pub const TARGETS: &[&str] = &["control", "config", "raw", "runs", "spool", "spec"];

/// libFuzzer's memory bound per target process: above it (or one malloc
/// above it) the input counts as a crash.
const RSS_LIMIT_MB: u32 = 2048;
/// One input running longer than this is a hang, reported as a crash.
const TIMEOUT_SECS: u32 = 30;

/// Where new inputs a run finds are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corpus {
    /// Into `fuzz/corpus/<target>/`, to be minimized and committed.
    Committed,
    /// Into `target/fuzz-corpus/<target>/`; the committed corpus is only read
    /// (CI: the work tree stays as it is).
    Scratch,
}

/// What one target's run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub target: String,
    /// Inputs executed (`stat::number_of_executed_units`, else `Done N runs`).
    pub runs: Option<u64>,
    /// Seconds libFuzzer says it ran (`Done N runs in S second(s)`).
    pub secs: Option<u64>,
    /// The crashing input, when libFuzzer wrote one.
    pub artifact: Option<String>,
    pub ok: bool,
}

impl Outcome {
    fn per_sec(&self) -> Option<f64> {
        Some(self.runs? as f64 / self.secs?.max(1) as f64)
    }
}

/// `cargo xtask fuzz [TARGET] [--time S]`.
pub fn fuzz(target: Option<&str>, secs: u64, corpus: Corpus) -> Result<()> {
    let targets: Vec<&str> = match target {
        Some(name) if TARGETS.contains(&name) => vec![name],
        Some(name) => bail!("no fuzz target {name:?} (targets: {})", TARGETS.join(", ")),
        None => TARGETS.to_vec(),
    };
    setup::cargo_fuzz()?;
    let root = util::workspace_root();
    let (built, elapsed) =
        util::timed(|| util::run(cargo_fuzz(&root).args(["build", "-s", "none"])));
    built.context("building the fuzz targets")?;
    eprintln!("xtask fuzz: built in {}", util::secs(elapsed));

    let mut outcomes = Vec::new();
    for name in &targets {
        let outcome = run_target(&root, name, secs, corpus)?;
        eprintln!("{}", line(&outcome));
        outcomes.push(outcome);
    }
    println!("\nxtask fuzz: {secs} s per target");
    for outcome in &outcomes {
        println!("  {}", line(outcome));
    }
    let crashed: Vec<String> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| match &o.artifact {
            Some(path) => format!("{} (input: {path})", o.target),
            None => format!("{} (no artifact written; see its output above)", o.target),
        })
        .collect();
    if !crashed.is_empty() {
        bail!(
            "fuzz target(s) failed: {}; replay one with `cargo +nightly fuzz run -s none TARGET INPUT`, \
             and make it a regression test",
            crashed.join(", ")
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz ...` from the workspace root, with the eBPF build skipped.
fn cargo_fuzz(root: &Path) -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root)
        .env("AYA_BUILD_SKIP", "1")
        .args(["+nightly", "fuzz"]);
    cmd
}

fn run_target(root: &Path, name: &str, secs: u64, corpus: Corpus) -> Result<Outcome> {
    let committed = root.join("fuzz/corpus").join(name);
    let mut dirs: Vec<PathBuf> = Vec::new();
    if corpus == Corpus::Scratch {
        let scratch = util::target_dir().join("fuzz-corpus").join(name);
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        dirs.push(scratch);
    }
    dirs.push(committed);
    let mut cmd = cargo_fuzz(root);
    cmd.args(["run", "-s", "none", name])
        .args(&dirs)
        .arg("--")
        .arg(format!("-max_total_time={secs}"))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={TIMEOUT_SECS}"))
        .arg("-print_final_stats=1");
    let dict = root.join("fuzz/dict").join(format!("{name}.dict"));
    if dict.is_file() {
        cmd.arg(format!("-dict={}", dict.display()));
    }
    cmd.stdout(Stdio::inherit()).stderr(Stdio::piped());
    eprintln!("\n$ {}", util::display(&cmd));
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start `{}`", util::display(&cmd)))?;
    let stderr = child.stderr.take().context("no stderr of cargo fuzz")?;
    // libFuzzer reports on stderr; its progress lines (`#N NEW ...`) are
    // read, not echoed, the rest (build output, panics, stats) is.
    let mut output = String::new();
    for line in BufReader::new(stderr).lines() {
        let line = line.context("reading cargo fuzz's output")?;
        if !is_progress(&line) {
            eprintln!("{line}");
        }
        output.push_str(&line);
        output.push('\n');
    }
    let status = child.wait().context("waiting for cargo fuzz")?;
    let mut outcome = parse_output(name, &output);
    outcome.ok = status.success() && outcome.artifact.is_none();
    Ok(outcome)
}

/// A line of libFuzzer's progress (`#4096 pulse ...`, `NEW_FUNC[1/2]: ...`),
/// or its warning that there is no sanitizer to ask for a stack trace.
fn is_progress(line: &str) -> bool {
    line.strip_prefix('#')
        .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        || line.trim_start().starts_with("NEW_FUNC[")
        || line.starts_with("WARNING: Failed to find function \"__sanitizer_")
}

/// Reads libFuzzer's final report: `Done N runs in S second(s)`,
/// `stat::number_of_executed_units: N`, `Test unit written to PATH`.
pub fn parse_output(target: &str, output: &str) -> Outcome {
    let mut outcome = Outcome {
        target: target.to_owned(),
        runs: None,
        secs: None,
        artifact: None,
        ok: false,
    };
    for line in output.lines() {
        if let Some(rest) = line.strip_prefix("Done ") {
            let mut words = rest.split_whitespace();
            let runs = words.next().and_then(|n| n.parse().ok());
            outcome.runs = outcome.runs.or(runs);
            outcome.secs = words.nth(2).and_then(|n| n.parse().ok());
        } else if let Some(n) = line.strip_prefix("stat::number_of_executed_units:") {
            outcome.runs = n.trim().parse().ok().or(outcome.runs);
        } else if let Some((_, path)) = line.split_once("Test unit written to ") {
            outcome.artifact = Some(path.trim().to_owned());
        }
    }
    outcome
}

fn line(outcome: &Outcome) -> String {
    let count = |n: Option<u64>| n.map_or_else(|| "?".to_owned(), |n| n.to_string());
    let rate = outcome
        .per_sec()
        .map_or_else(|| "?".to_owned(), |r| format!("{r:.0}"));
    let result = match (&outcome.artifact, outcome.ok) {
        (_, true) => "ok".to_owned(),
        (Some(path), false) => format!("CRASHED: {path}"),
        (None, false) => "FAILED".to_owned(),
    };
    format!(
        "{:<8} {:>9} exec/s {:>11} runs in {:>4} s  {result}",
        outcome.target,
        rate,
        count(outcome.runs),
        count(outcome.secs)
    )
}

/// The step `cargo xtask test` runs: every target for `budget` on top of
/// the committed corpus, new inputs kept out of the work tree.
pub fn ci(budget: Duration) -> Result<()> {
    fuzz(None, budget.as_secs(), Corpus::Scratch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzers_final_report() {
        let done = "\
INFO: Running with entropic power schedule (0xFF, 100).
#2\tINITED cov: 10 ft: 10 corp: 1/1b exec/s: 0 rss: 30Mb
#65536\tpulse  cov: 10 ft: 10 corp: 1/1b lim: 4 exec/s: 32768 rss: 30Mb
Done 123456 runs in 21 second(s)
stat::number_of_executed_units: 123457
stat::average_exec_per_sec:     5878
";
        let o = parse_output("spec", done);
        assert_eq!(
            (o.runs, o.secs, o.artifact.as_deref()),
            (Some(123_457), Some(21), None)
        );
        assert_eq!(o.per_sec().map(f64::round), Some(5879.0));
        let crash = "\
thread '<unnamed>' panicked at sensor/src/event/mod.rs:1010:15:
attempt to negate with overflow
==1== ERROR: libFuzzer: deadly signal
MS: 1 ChangeBit-; base unit: 0000
artifact_prefix='/w/fuzz/artifacts/raw/'; Test unit written to /w/fuzz/artifacts/raw/crash-a4cb
stat::number_of_executed_units: 99
";
        let o = parse_output("raw", crash);
        assert_eq!(
            o.artifact.as_deref(),
            Some("/w/fuzz/artifacts/raw/crash-a4cb")
        );
        assert_eq!((o.runs, o.secs), (Some(99), None));
        assert!(is_progress("#65536\tpulse  cov: 10"));
        assert!(is_progress("\tNEW_FUNC[1/2]: 0x55732e4c02c1"));
        assert!(!is_progress("#![no_main]"));
    }

    #[test]
    fn every_target_has_a_source_and_a_corpus() {
        let root = util::workspace_root();
        let manifest = std::fs::read_to_string(root.join("fuzz/Cargo.toml")).unwrap();
        for entry in std::fs::read_dir(root.join("fuzz/fuzz_targets")).unwrap() {
            let path = entry.unwrap().path();
            let stem = path.file_stem().unwrap().to_str().unwrap();
            assert!(TARGETS.contains(&stem), "{stem} is not in TARGETS");
        }
        for name in TARGETS {
            assert!(
                manifest.contains(&format!("name = \"{name}\"")),
                "fuzz/Cargo.toml has no [[bin]] {name}"
            );
            let source = root.join("fuzz/fuzz_targets").join(format!("{name}.rs"));
            assert!(source.is_file(), "{}", source.display());
            let corpus = root.join("fuzz/corpus").join(name);
            assert!(
                std::fs::read_dir(&corpus).is_ok_and(|mut d| d.next().is_some()),
                "{} is empty",
                corpus.display()
            );
        }
    }
}

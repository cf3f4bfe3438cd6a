//! OCSF output (`--output SPEC,format=ocsf`) checked by third-party packages:
//! `tests/ocsf/validate.py` run by the venv `cargo xtask setup` makes at
//! `<target>/ocsf-venv` (xtask/src/ocsf.rs; pins in tests/ocsf/requirements.txt).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use serde_json::Value;

use crate::{run_with_timeout, target_dir, text, workspace_root};

const INSTALL_HINT: &str =
    "run `cargo xtask setup` (it installs the OCSF validator under target/ocsf-venv)";

/// How long one validation may take (it loads the OCSF schema first: ~2 s).
pub const VALIDATE_TIMEOUT: Duration = Duration::from_secs(120);

/// The validator's python, `<target>/ocsf-venv/bin/python`, or an error saying
/// how to install it.
pub fn python() -> Result<PathBuf> {
    let python = target_dir().join("ocsf-venv").join("bin").join("python");
    ensure!(
        python.exists(),
        "{} is missing: {INSTALL_HINT}",
        python.display()
    );
    Ok(python)
}

/// Validates every line of `jsonl` (OCSF events) with the third-party OCSF
/// packages; each class in `require_classes` (class_uid) must occur. Returns
/// the validator's report (per-class counts), or an error with all of its
/// output when any event is invalid, the file has no event, or a required
/// class is absent.
pub fn validate(jsonl: &Path, require_classes: &[u32]) -> Result<String> {
    let python = python()?;
    let script = workspace_root()
        .join("tests")
        .join("ocsf")
        .join("validate.py");
    let mut cmd = Command::new(&python);
    cmd.arg(&script).arg(jsonl);
    for class in require_classes {
        cmd.arg("--require-class").arg(class.to_string());
    }
    let (_, out) = run_with_timeout(&mut cmd, VALIDATE_TIMEOUT)?;
    let stdout = text(&out.stdout);
    if !out.status.success() {
        bail!(
            "OCSF validation of {} failed ({}):\n{}{}\n(the validator is {} {}; if it cannot \
             start: {INSTALL_HINT})",
            jsonl.display(),
            out.status,
            stdout,
            text(&out.stderr),
            python.display(),
            script.display()
        );
    }
    Ok(stdout)
}

/// `--output` SPEC of an OCSF file output at `path`.
pub fn spec(path: &Path) -> String {
    format!("file:{},format=ocsf", path.display())
}

/// The OCSF events of the OCSF file output `ocsf` whose sensor kind
/// (`metadata.event_code`) is one of `kinds`, once `ready` holds for them
/// (the output is written in batches: waits up to `timeout`). They are
/// written to `<ocsf>.<first kind>.jsonl` and validated by the third-party
/// validator, each class of `require_classes` present; returns them parsed.
pub fn validated_kinds(
    ocsf: &Path,
    kinds: &[&str],
    require_classes: &[u32],
    timeout: Duration,
    ready: impl Fn(&[Value]) -> bool,
) -> Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    let (lines, events) = loop {
        let text = fs::read_to_string(ocsf).unwrap_or_default();
        let mut lines = String::new();
        let mut events = Vec::new();
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<Value>(line) else {
                continue;
            };
            if v["metadata"]["event_code"]
                .as_str()
                .is_some_and(|k| kinds.contains(&k))
            {
                lines.push_str(line);
                lines.push('\n');
                events.push(v);
            }
        }
        if ready(&events) {
            break (lines, events);
        }
        ensure!(
            Instant::now() < deadline,
            "{} never had the OCSF events awaited of kinds {kinds:?}: {} of them: {events:?}",
            ocsf.display(),
            events.len()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let name = format!(
        "{}.{}.jsonl",
        ocsf.file_name().and_then(|n| n.to_str()).unwrap_or("ocsf"),
        kinds.first().copied().unwrap_or("all")
    );
    let path = ocsf.with_file_name(name);
    fs::write(&path, lines).with_context(|| format!("write {}", path.display()))?;
    let report = validate(&path, require_classes)?;
    eprintln!("OCSF validator on {}:\n{report}", path.display());
    Ok(events)
}

/// The OCSF event of sensor seq `seq` among `events` (`metadata.sequence`).
pub fn by_seq(events: &[Value], seq: &Value) -> Option<Value> {
    events
        .iter()
        .find(|o| o["metadata"]["sequence"] == *seq)
        .cloned()
}

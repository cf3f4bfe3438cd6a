//! OCSF output (`--output SPEC,format=ocsf`) checked by third-party packages:
//! `tests/ocsf/validate.py` run by the venv `cargo xtask setup` makes at
//! `<target>/ocsf-venv` (xtask/src/ocsf.rs; pins in tests/ocsf/requirements.txt).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Result, bail, ensure};

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

//! The third-party OCSF validator of the tests (`tests/ocsf/validate.py`):
//! a Python venv at `<target>/ocsf-venv` with the packages pinned in
//! `tests/ocsf/requirements.txt` (ocsf-json-schema + jsonschema,
//! pydantic-ocsf), made with Debian's `/usr/bin/python3` so it depends on no
//! user's pyenv or PATH. A second `setup` compares the requirements with the
//! copy saved in the venv after the last install and starts nothing.

use std::{fs, path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{agents, setup::report, util};

/// The requirements the venv was last installed from, inside the venv.
const STAMP: &str = ".sensor-requirements.txt";

/// Creates (or brings up to date) `<target>/ocsf-venv` with the pinned OCSF
/// validation packages; returns the venv's python.
pub fn ensure_ocsf_validator() -> Result<PathBuf> {
    ensure_pinned_venv("ocsf", "validate.py", "OCSF validator")
}

/// Creates (or brings up to date) `<target>/jwt-venv` with the pinned
/// third-party JWT verifier of the run-token tests (PyJWT, tests/jwt);
/// returns the venv's python.
pub fn ensure_jwt_verifier() -> Result<PathBuf> {
    ensure_pinned_venv("jwt", "verify.py", "JWT verifier")
}

/// Creates (or brings up to date) `<target>/sigma-venv` with the pinned
/// third-party Sigma tooling the rule pack must pass (sigma-cli, pySigma
/// with the Splunk and Elasticsearch backends, tests/sigma); returns the
/// venv's python.
pub fn ensure_sigma_tools() -> Result<PathBuf> {
    ensure_pinned_venv("sigma", "check.py", "Sigma tools (sigma-cli, pySigma)")
}

/// The third-party DSSE verifier of provenance bundles (securesystemslib):
/// `<target>/dsse-venv`, pinned by tests/dsse/requirements.txt.
pub fn ensure_dsse_verifier() -> Result<PathBuf> {
    ensure_pinned_venv("dsse", "verify.py", "DSSE verifier")
}

/// `<target>/<name>-venv` with `tests/<name>/requirements.txt` installed,
/// checked by running `tests/<name>/<script> --help`.
fn ensure_pinned_venv(name: &str, script: &str, what: &str) -> Result<PathBuf> {
    let root = util::workspace_root();
    let requirements = root.join("tests").join(name).join("requirements.txt");
    let script = root.join("tests").join(name).join(script);
    let wanted = fs::read_to_string(&requirements)
        .with_context(|| format!("cannot read {}", requirements.display()))?;
    let venv = util::target_dir().join(format!("{name}-venv"));
    let python = venv.join("bin").join("python");
    let stamp = venv.join(STAMP);
    let shown = format!("{what} (target/{name}-venv)");
    if python.exists() && fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str()) {
        report(false, &shown, "present");
        return Ok(python);
    }
    eprintln!("  installing the {what} into {} ...", venv.display());
    agents::fresh_venv(&venv, &["-r".as_ref(), requirements.as_os_str()])
        .with_context(|| format!("installing {} (is PyPI reachable?)", requirements.display()))?;
    // The script imports every package it uses before parsing its arguments.
    util::output_ok(Command::new(&python).arg(&script).arg("--help"))
        .with_context(|| format!("the freshly installed {what} does not start"))?;
    fs::write(&stamp, &wanted).with_context(|| format!("cannot write {}", stamp.display()))?;
    report(
        true,
        &shown,
        &format!("installed tests/{name}/requirements.txt"),
    );
    Ok(python)
}

//! Run tokens checked by a third-party verifier: `tests/jwt/verify.py`
//! (PyJWT and its JWKS client) in the venv `cargo xtask setup` makes at
//! `<target>/jwt-venv` (pins in tests/jwt/requirements.txt).

use std::process::Command;

use anyhow::{Result, ensure};
use serde_json::Value;

use crate::{COMMAND_TIMEOUT, run_with_timeout, target_dir, text, workspace_root};

/// What PyJWT said of a token.
#[derive(Debug)]
pub enum Verdict {
    /// It verifies: the claims.
    Accepted(Value),
    /// It does not: PyJWT's exception, `Class: message`.
    Rejected(String),
}

/// Verifies `token` for `aud` as a broker configured from the discovery
/// document at `discovery` (a URL) would.
pub fn verify(discovery: &str, aud: &str, token: &str) -> Result<Verdict> {
    let python = target_dir().join("jwt-venv").join("bin").join("python");
    ensure!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it installs the JWT verifier)",
        python.display()
    );
    let script = workspace_root().join("tests").join("jwt").join("verify.py");
    let (_, out) = run_with_timeout(
        Command::new(&python)
            .arg(&script)
            .args(["--discovery", discovery, "--aud", aud, token]),
        COMMAND_TIMEOUT,
    )?;
    let stdout = text(&out.stdout);
    if out.status.success() {
        return Ok(Verdict::Accepted(serde_json::from_str(stdout.trim())?));
    }
    match stdout.trim().strip_prefix("REJECTED ") {
        Some(why) => Ok(Verdict::Rejected(why.to_owned())),
        None => anyhow::bail!(
            "the JWT verifier failed ({}): {stdout}{}",
            out.status,
            text(&out.stderr)
        ),
    }
}

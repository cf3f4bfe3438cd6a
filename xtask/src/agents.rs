//! The real agent CLIs that `tests/tests/agent_clis.rs` runs against the
//! `[[agent]]` matchers of `config/sensor.example.toml`: npm and PyPI
//! packages at pinned versions, installed under `<target>/agent-clis/`
//! (never globally):
//!
//! - `npm/`: one npm prefix (`npm install --prefix`) for the npm packages;
//! - `venv/<package>/`: one Python venv per PyPI package (aider-chat pins its
//!   dependencies exactly and conflicts with crewai's, so they cannot share).
//!
//! Only `--version` / `--help` of these CLIs run offline; that is what the
//! tests use. A second `setup` checks the installed versions on disk and
//! starts nothing.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use crate::{
    setup::{ensure_apt, report},
    util,
};

/// Where a package comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Registry {
    Npm,
    PyPi,
}

/// One pinned agent CLI package.
#[derive(Debug)]
pub struct AgentCli {
    /// Agent name of the runs it starts (the `[[agent]]` name in the example config).
    pub agent: &'static str,
    pub registry: Registry,
    /// Package name in its registry.
    pub package: &'static str,
    /// Exact version.
    pub version: &'static str,
    /// The command it installs, relative to its prefix (`npm/` or `venv/<package>/`).
    pub bin: &'static str,
    /// Arguments of the offline check run right after installing it.
    pub probe: &'static [&'static str],
    /// Whether the probe prints `version`.
    pub probe_prints_version: bool,
}

/// The agent CLIs, pinned. The tests know them by `bin` path; bump the
/// versions here (and in the expectations of tests/tests/agent_clis.rs).
pub const AGENT_CLIS: &[AgentCli] = &[
    AgentCli {
        agent: "claude-code",
        registry: Registry::Npm,
        package: "@anthropic-ai/claude-code",
        version: "2.1.330",
        bin: "node_modules/.bin/claude",
        probe: &["--version"],
        probe_prints_version: true,
    },
    AgentCli {
        agent: "codex",
        registry: Registry::Npm,
        package: "@openai/codex",
        version: "0.169.0",
        bin: "node_modules/.bin/codex",
        probe: &["--version"],
        probe_prints_version: true,
    },
    AgentCli {
        agent: "gemini-cli",
        registry: Registry::Npm,
        package: "@google/gemini-cli",
        version: "0.61.0",
        bin: "node_modules/.bin/gemini",
        probe: &["--version"],
        probe_prints_version: true,
    },
    AgentCli {
        agent: "aider",
        registry: Registry::PyPi,
        package: "aider-chat",
        version: "0.86.2",
        bin: "bin/aider",
        probe: &["--version"],
        probe_prints_version: true,
    },
    AgentCli {
        agent: "crewai",
        registry: Registry::PyPi,
        package: "crewai",
        version: "1.15.30",
        bin: "bin/crewai",
        probe: &["--version"],
        probe_prints_version: true,
    },
    AgentCli {
        agent: "smolagents",
        registry: Registry::PyPi,
        package: "smolagents",
        version: "1.26.0",
        bin: "bin/smolagent",
        // smolagent has no --version.
        probe: &["--help"],
        probe_prints_version: false,
    },
];

/// Node.js major version the npm packages need (@google/gemini-cli: >= 20).
const NODE_MIN_MAJOR: u32 = 20;
/// The interpreter of the venvs: Debian's, so the venvs do not depend on a
/// user's pyenv or PATH (`python3-venv` provides ensurepip for it).
const PYTHON: &str = "/usr/bin/python3";

/// `<target>/agent-clis`.
pub fn dir() -> Result<PathBuf> {
    Ok(util::target_dir().join("agent-clis"))
}

impl AgentCli {
    /// The prefix it is installed into, under `root` (`<target>/agent-clis`).
    fn prefix(&self, root: &Path) -> PathBuf {
        match self.registry {
            Registry::Npm => root.join("npm"),
            Registry::PyPi => root.join("venv").join(self.package),
        }
    }

    /// Its command, under `root`.
    pub fn bin_path(&self, root: &Path) -> PathBuf {
        self.prefix(root).join(self.bin)
    }

    fn spec(&self) -> String {
        match self.registry {
            Registry::Npm => format!("{}@{}", self.package, self.version),
            Registry::PyPi => format!("{}=={}", self.package, self.version),
        }
    }

    /// The version installed under `root`, from the package's metadata on
    /// disk (nothing is run), when its command exists too.
    fn installed_version(&self, root: &Path) -> Option<String> {
        if !self.bin_path(root).exists() {
            return None;
        }
        match self.registry {
            Registry::Npm => {
                let manifest = self
                    .prefix(root)
                    .join("node_modules")
                    .join(self.package)
                    .join("package.json");
                let text = fs::read_to_string(manifest).ok()?;
                let json: serde_json::Value = serde_json::from_str(&text).ok()?;
                json.get("version")?.as_str().map(str::to_owned)
            }
            Registry::PyPi => dist_info_version(&self.prefix(root), self.package),
        }
    }
}

/// The version of distribution `package` in the venv at `venv`: the
/// `<name>-<version>.dist-info` directory in its site-packages.
fn dist_info_version(venv: &Path, package: &str) -> Option<String> {
    let wanted = normalize(package);
    for lib in fs::read_dir(venv.join("lib")).ok()?.flatten() {
        let site = lib.path().join("site-packages");
        let Ok(entries) = fs::read_dir(&site) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".dist-info")) else {
                continue;
            };
            if let Some((dist, version)) = stem.rsplit_once('-')
                && normalize(dist) == wanted
            {
                return Some(version.to_owned());
            }
        }
    }
    None
}

/// PEP 503 name normalization (`aider-chat`, `aider_chat`, `Aider.Chat` are one).
fn normalize(name: &str) -> String {
    name.to_ascii_lowercase().replace(['-', '.'], "_")
}

/// Install every pinned agent CLI that is missing or at another version, and
/// print one line per package.
pub fn ensure_agent_clis() -> Result<()> {
    let root = dir()?;
    let missing: Vec<&AgentCli> = AGENT_CLIS
        .iter()
        .filter(|cli| cli.installed_version(&root).as_deref() != Some(cli.version))
        .collect();
    let npm: Vec<&AgentCli> = missing
        .iter()
        .copied()
        .filter(|cli| cli.registry == Registry::Npm)
        .collect();
    if !npm.is_empty() {
        install_npm(&root, &npm)?;
    }
    for cli in missing.iter().filter(|cli| cli.registry == Registry::PyPi) {
        install_venv(&root, cli)?;
    }
    for cli in AGENT_CLIS {
        let bin = cli.bin_path(&root);
        let shown = bin.strip_prefix(&root).unwrap_or(&bin).display();
        let installed = missing.iter().any(|m| m.package == cli.package);
        if installed {
            let probe = probe(cli, &bin)?;
            report(
                true,
                &format!("agent CLI {}", cli.agent),
                &format!("installed {} ({shown}: {probe})", cli.spec()),
            );
        } else {
            report(
                false,
                &format!("agent CLI {}", cli.agent),
                &format!("{} present ({shown})", cli.spec()),
            );
        }
    }
    Ok(())
}

/// `npm install --prefix <root>/npm` of the pinned npm packages (all of them,
/// so the prefix's package.json and lock pin every one).
fn install_npm(root: &Path, missing: &[&AgentCli]) -> Result<()> {
    node_is_recent_enough()?;
    let prefix = root.join("npm");
    fs::create_dir_all(&prefix).with_context(|| format!("cannot create {}", prefix.display()))?;
    let names: Vec<&str> = missing.iter().map(|cli| cli.package).collect();
    eprintln!("  installing npm packages {} ...", names.join(" "));
    let specs: Vec<String> = AGENT_CLIS
        .iter()
        .filter(|cli| cli.registry == Registry::Npm)
        .map(AgentCli::spec)
        .collect();
    util::run(
        Command::new("npm")
            .arg("install")
            .arg("--prefix")
            .arg(&prefix)
            // Install scripts must run: @anthropic-ai/claude-code's postinstall
            // puts the native binary in place of its bin/claude.exe stub.
            .args([
                "--save-exact",
                "--no-audit",
                "--no-fund",
                "--update-notifier=false",
                "--loglevel=error",
            ])
            .args(&specs),
    )
    .context("installing the npm agent CLIs (is the npm registry reachable?)")
}

/// Fails unless `node` is there and at least [`NODE_MIN_MAJOR`].
fn node_is_recent_enough() -> Result<()> {
    let out = Command::new("node")
        .arg("--version")
        .output()
        .context("`node` not found: the npm agent CLIs need Node.js >= 20 and npm")?;
    let version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let major = version
        .trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(major) if out.status.success() && major >= NODE_MIN_MAJOR => Ok(()),
        _ => bail!(
            "`node --version` says {version:?}; the npm agent CLIs need Node.js >= {NODE_MIN_MAJOR}"
        ),
    }
}

/// A fresh venv `<root>/venv/<package>` with the pinned package.
fn install_venv(root: &Path, cli: &AgentCli) -> Result<()> {
    let venv = cli.prefix(root);
    eprintln!("  installing {} into {} ...", cli.spec(), venv.display());
    let spec = cli.spec();
    fresh_venv(&venv, &[spec.as_ref()])
        .with_context(|| format!("installing {spec} (is PyPI reachable?)"))
}

/// A new venv at `venv` (an old one is removed first) with Debian's python,
/// then `pip install <pip_args>` in it.
pub(crate) fn fresh_venv(venv: &Path, pip_args: &[&std::ffi::OsStr]) -> Result<()> {
    ensure_apt(&["python3-venv"])?;
    if venv.exists() {
        // Another version, or a broken install: start over.
        fs::remove_dir_all(venv).with_context(|| format!("cannot remove {}", venv.display()))?;
    }
    if let Some(parent) = venv.parent() {
        fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    util::run(Command::new(PYTHON).args(["-m", "venv"]).arg(venv))
        .with_context(|| format!("creating the venv {}", venv.display()))?;
    util::run(
        Command::new(venv.join("bin").join("pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--no-input",
                "--progress-bar",
                "off",
            ])
            .args(pip_args),
    )
}

/// `<target>/agent-clis/home`, created.
fn bin_home() -> Result<PathBuf> {
    let home = dir()?.join("home");
    fs::create_dir_all(&home).with_context(|| format!("cannot create {}", home.display()))?;
    Ok(home)
}

/// Runs the freshly installed CLI offline once; returns the first line of its
/// output, and fails unless it exits 0 (and names its version when it should).
fn probe(cli: &AgentCli, bin: &Path) -> Result<String> {
    let mut cmd = Command::new(bin);
    // A HOME of their own: some write their settings there (~/.gemini, ~/.codex).
    let home = bin_home()?;
    cmd.args(cli.probe).env("HOME", &home);
    let out = util::output(&mut cmd)?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().next().unwrap_or("").trim().to_owned();
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}{}",
            util::display(&cmd),
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    if cli.probe_prints_version && !stdout.contains(cli.version) {
        bail!(
            "`{}` printed {line:?}, not version {}",
            util::display(&cmd),
            cli.version
        );
    }
    Ok(line)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalize() {
        assert_eq!(normalize("aider-chat"), "aider_chat");
        assert_eq!(normalize("Aider.Chat"), "aider_chat");
        assert_eq!(normalize("crewai"), "crewai");
    }

    #[test]
    fn finds_dist_info_version() {
        let tmp = std::env::temp_dir().join(format!("xtask-agents-{}", std::process::id()));
        let site = tmp.join("lib/python3.11/site-packages");
        fs::create_dir_all(site.join("aider_chat-0.86.2.dist-info")).unwrap();
        fs::create_dir_all(site.join("crewai_cli-1.15.30.dist-info")).unwrap();
        assert_eq!(
            dist_info_version(&tmp, "aider-chat").as_deref(),
            Some("0.86.2")
        );
        assert_eq!(dist_info_version(&tmp, "crewai"), None);
        fs::remove_dir_all(&tmp).unwrap();
    }

    #[test]
    fn pins_are_exact_and_unique() {
        for cli in AGENT_CLIS {
            assert!(
                cli.version.split('.').all(|p| p.parse::<u32>().is_ok()),
                "{} {}",
                cli.package,
                cli.version
            );
            assert_eq!(
                AGENT_CLIS.iter().filter(|c| c.agent == cli.agent).count(),
                1
            );
        }
    }
}

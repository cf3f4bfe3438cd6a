//! `cargo xtask build` and `cargo xtask run`.

use std::{os::unix::process::CommandExt as _, path::PathBuf, process::Command};

use anyhow::{Result, bail};

use crate::{setup, util};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Debug,
    Release,
}

impl Profile {
    pub fn from_release(release: bool) -> Self {
        if release { Self::Release } else { Self::Debug }
    }

    /// The directory name under `target/`.
    pub fn dir(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Release => "release",
        }
    }
}

/// `cargo build -p sensor` (its build.rs builds the eBPF object); returns the
/// absolute path of the `sensor` binary.
pub fn build_sensor(profile: Profile) -> Result<PathBuf> {
    let mut cmd = util::cargo()?;
    cmd.args(["build", "-p", "sensor"]);
    if profile == Profile::Release {
        cmd.arg("--release");
    }
    util::run(&mut cmd)?;
    let bin = sensor_bin(profile)?;
    if !bin.is_file() {
        bail!(
            "`cargo build -p sensor` succeeded but {} does not exist",
            bin.display()
        );
    }
    Ok(bin)
}

/// Where `cargo build -p sensor` puts the binary for `profile`.
pub fn sensor_bin(profile: Profile) -> Result<PathBuf> {
    Ok(util::target_dir().join(profile.dir()).join("sensor"))
}

/// Set up, build, mount, then replace this process with `sensor daemon ARGS`.
pub fn run(profile: Profile, no_setup: bool, args: &[String]) -> Result<()> {
    util::require_root("`cargo xtask run`")?;
    util::keep_stdout_for_data();
    if no_setup {
        setup::mounts()?;
    } else {
        setup::setup()?;
    }
    let bin = build_sensor(profile)?;
    let mut cmd = Command::new(&bin);
    cmd.arg("daemon").args(args);
    eprintln!("$ {}", util::display(&cmd));
    // exec only returns on failure; on success the daemon owns this pid, so
    // Ctrl-C and SIGTERM reach it directly.
    let err = cmd.exec();
    bail!("cannot exec {}: {err}", bin.display())
}

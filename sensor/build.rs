//! Builds `sensor-ebpf` for the bpf target and leaves the object in OUT_DIR,
//! where `src/loader` embeds it. `AYA_BUILD_SKIP=1` skips it.
use anyhow::{Context as _, anyhow};
use aya_build::{Package, Toolchain};

/// The commit the sensor is built from, for `sensor_build_info` and
/// `sensor status`: `SENSOR_GIT_COMMIT` when set (a package built outside
/// git), else `git rev-parse`, else "unknown". The build script runs again
/// when HEAD or the branch it names moves.
fn git_commit() {
    println!("cargo:rerun-if-env-changed=SENSOR_GIT_COMMIT");
    let git = |args: &[&str]| -> Option<String> {
        let out = std::process::Command::new("git").args(args).output().ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
            .filter(|s| !s.is_empty())
    };
    let commit = std::env::var("SENSOR_GIT_COMMIT")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| {
            // HEAD, and the ref it names (a commit moves the ref, not HEAD).
            for path in [
                git(&["rev-parse", "--git-path", "HEAD"]),
                git(&["symbolic-ref", "-q", "HEAD"])
                    .and_then(|r| git(&["rev-parse", "--git-path", &r])),
                git(&["rev-parse", "--git-path", "packed-refs"]),
            ]
            .into_iter()
            .flatten()
            {
                // Relative to the build script's directory (the package's).
                let Ok(path) = std::path::absolute(path) else {
                    continue;
                };
                if path.exists() {
                    println!("cargo:rerun-if-changed={}", path.display());
                }
            }
            git(&["rev-parse", "--short=12", "HEAD"])
        })
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo:rustc-env=SENSOR_GIT_COMMIT={commit}");
}

fn main() -> anyhow::Result<()> {
    git_commit();
    // With AYA_BUILD_SKIP the object is not built; leave an empty one so the
    // crate still compiles (for lints), and the daemon says so at start-up.
    if std::env::var_os("AYA_BUILD_SKIP")
        .is_some_and(|v| v == "1" || v.eq_ignore_ascii_case("true"))
    {
        let out = std::path::PathBuf::from(
            std::env::var_os("OUT_DIR").ok_or_else(|| anyhow!("OUT_DIR not set"))?,
        );
        let object = out.join("sensor");
        if !object.exists() {
            std::fs::write(&object, b"")
                .with_context(|| format!("writing {}", object.display()))?;
        }
    }
    let cargo_metadata::Metadata { packages, .. } = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("MetadataCommand::exec")?;
    let ebpf = packages
        .into_iter()
        .find(|p| p.name.as_str() == "sensor-ebpf")
        .ok_or_else(|| anyhow!("sensor-ebpf package not found"))?;
    let root_dir = ebpf
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("no parent for {}", ebpf.manifest_path))?;
    aya_build::build_ebpf(
        [Package {
            name: ebpf.name.as_str(),
            root_dir: root_dir.as_str(),
            ..Default::default()
        }],
        Toolchain::Nightly,
    )
}

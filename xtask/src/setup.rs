//! `cargo xtask setup`: install what the build and tests need, each step
//! checked first so a second run only looks and says everything is present.

use std::{
    path::Path,
    process::Command,
    sync::atomic::{AtomicBool, Ordering},
};

use anyhow::{Context as _, Result, bail};

use crate::{
    agents, ocsf,
    util::{self, is_root},
};

/// Packages the build (bpf-linker against LLVM 22) and the tests need.
pub const APT_PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "bpftool",
    "linux-perf",
    "iproute2",
    "procps",
    "python3",
    // `setpriv` and `unshare` for the attribution tests.
    "util-linux",
    // The report test renders the page in headless Chromium.
    "chromium",
    // Real receivers for the output tests (tests/tests/outputs.rs): rsyslogd
    // over TCP and TLS (the ossl stream driver), nats-server with JetStream,
    // and the openssl CLI that makes their test CA.
    "rsyslog",
    "rsyslog-openssl",
    "nats-server",
    "openssl",
    // `systemd-analyze verify` of dist/sensor.service (xtask/src/install.rs tests).
    "systemd",
    // Spawners an agent run may try to escape through (tests/tests/escape*.rs):
    // a tmux server, `at` with atd, an sshd on loopback; and gdb for the
    // injection tests.
    "tmux",
    "at",
    "openssh-server",
    "gdb",
];

const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz for the libFuzzer targets of `fuzz/` (`cargo xtask fuzz`).
const CARGO_FUZZ_VERSION: &str = "0.13.2";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

/// Components of the nightly toolchain: aya-build compiles the eBPF crate with
/// `-Zbuild-std=core` (needs rust-src); the eBPF crate is linted with nightly clippy.
const NIGHTLY_COMPONENTS: &[&str] = &["rust-src", "clippy"];
/// Components of the active (stable) toolchain used by `xtask test`.
const ACTIVE_COMPONENTS: &[&str] = &["clippy", "rustfmt"];

/// A pseudo file system the sensor and its tests need, and where.
pub struct Mount {
    pub fstype: &'static str,
    pub target: &'static str,
}

pub const MOUNTS: &[Mount] = &[
    Mount {
        fstype: "tracefs",
        target: "/sys/kernel/tracing",
    },
    Mount {
        fstype: "bpf",
        target: "/sys/fs/bpf",
    },
];

/// Print one line per step: what was already there, what this run did.
pub(crate) fn report(done: bool, what: &str, detail: &str) {
    let tag = if done { "done" } else { "ok  " };
    eprintln!("  {tag} {what}: {detail}");
}

pub fn setup() -> Result<()> {
    eprintln!("xtask setup");
    let (result, elapsed) = util::timed(|| -> Result<()> {
        nightly_toolchain()?;
        components(Some("nightly"), NIGHTLY_COMPONENTS)?;
        components(None, ACTIVE_COMPONENTS)?;
        ensure_apt(APT_PACKAGES)?;
        bpf_linker()?;
        cargo_fuzz()?;
        mounts()?;
        agents::ensure_agent_clis().context("agent CLIs (for tests/tests/agent_clis.rs)")?;
        ocsf::ensure_ocsf_validator().context("OCSF validator (tests/ocsf)")?;
        ocsf::ensure_jwt_verifier().context("JWT verifier (tests/jwt)")?;
        ocsf::ensure_sigma_tools().context("Sigma tools (tests/sigma)")?;
        ocsf::ensure_dsse_verifier().context("DSSE verifier (tests/dsse)")?;
        kernel_facts();
        Ok(())
    });
    result.context("setup failed")?;
    eprintln!("xtask setup: done in {}", util::secs(elapsed));
    Ok(())
}

fn nightly_toolchain() -> Result<()> {
    let out = util::output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !out.status.success() {
        bail!(
            "`rustup toolchain list` failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    if listed.lines().any(|line| line.starts_with("nightly")) {
        report(false, "nightly toolchain", "present");
        return Ok(());
    }
    util::run(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
        "--component",
        &NIGHTLY_COMPONENTS.join(","),
    ]))
    .context("installing the nightly toolchain (aya-build compiles the eBPF crate with it)")?;
    report(true, "nightly toolchain", "installed");
    Ok(())
}

/// Make sure `wanted` components are installed for `toolchain` (None: the active one).
fn components(toolchain: Option<&str>, wanted: &[&str]) -> Result<()> {
    let label = toolchain.unwrap_or("active");
    let mut list = Command::new("rustup");
    list.args(["component", "list", "--installed"]);
    if let Some(toolchain) = toolchain {
        list.args(["--toolchain", toolchain]);
    }
    let out = util::output(&mut list)?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            util::display(&list),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let installed = String::from_utf8_lossy(&out.stdout);
    let missing = missing_components(&installed, wanted);
    if missing.is_empty() {
        report(
            false,
            &format!("{label} toolchain components"),
            &format!("{} present", wanted.join(", ")),
        );
        return Ok(());
    }
    let mut add = Command::new("rustup");
    add.args(["component", "add"]).args(&missing);
    if let Some(toolchain) = toolchain {
        add.args(["--toolchain", toolchain]);
    }
    util::run(&mut add)?;
    report(
        true,
        &format!("{label} toolchain components"),
        &format!("installed {}", missing.join(", ")),
    );
    Ok(())
}

/// `installed` is `rustup component list --installed` output: names such as
/// `rust-src` or `clippy-x86_64-unknown-linux-gnu`.
fn missing_components<'a>(installed: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|name| {
            !installed.lines().map(str::trim).any(|line| {
                line == *name
                    || line.strip_prefix(name).is_some_and(|rest| {
                        rest.starts_with("-x86_64") || rest.starts_with("-aarch64")
                    })
            })
        })
        .collect()
}

static APT_UPDATED: AtomicBool = AtomicBool::new(false);

/// Install the Debian packages that are not installed yet (one `apt-get
/// update` per xtask process, only when something is missing).
pub fn ensure_apt(packages: &[&str]) -> Result<()> {
    let label = format!("apt packages ({})", packages.join(" "));
    let out = util::output(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package} ${db:Status-Status}\\n"])
            .args(packages),
    )?;
    // dpkg-query exits 1 when some package is unknown; the known ones are still listed.
    let missing = missing_packages(&String::from_utf8_lossy(&out.stdout), packages);
    if missing.is_empty() {
        report(false, &label, "present");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "apt packages missing: {}; installing them needs root (you are uid {})",
            missing.join(" "),
            util::euid()
        );
    }
    if !APT_UPDATED.swap(true, Ordering::SeqCst) {
        util::run(
            Command::new("apt-get")
                .env("DEBIAN_FRONTEND", "noninteractive")
                .args(["update"]),
        )?;
    }
    util::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(&missing),
    )?;
    report(true, &label, &format!("installed {}", missing.join(" ")));
    Ok(())
}

/// `listing` is `dpkg-query -W -f='${Package} ${db:Status-Status}\n'` output.
fn missing_packages<'a>(listing: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|name| {
            !listing.lines().any(|line| {
                let mut fields = line.split_whitespace();
                // dpkg-query may print `name:arch` for multi-arch packages.
                let pkg = fields.next().unwrap_or("");
                let pkg = pkg.split(':').next().unwrap_or(pkg);
                pkg == *name && fields.next() == Some("installed")
            })
        })
        .collect()
}

fn bpf_linker() -> Result<()> {
    let found = Command::new("bpf-linker")
        .arg("--version")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    if let Some(version) = &found
        && version
            .split_whitespace()
            .any(|word| word == BPF_LINKER_VERSION)
    {
        report(false, "bpf-linker", &format!("{version} present"));
        return Ok(());
    }
    util::run(Command::new("cargo").env("LLVM_PREFIX", LLVM_PREFIX).args([
        "install",
        "--locked",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--no-default-features",
        "--features",
        "llvm-22",
    ]))
    .context("installing bpf-linker (links the eBPF object)")?;
    let was = found.unwrap_or_else(|| "none".to_owned());
    report(
        true,
        "bpf-linker",
        &format!("installed {BPF_LINKER_VERSION} (was: {was})"),
    );
    Ok(())
}

/// cargo-fuzz at [`CARGO_FUZZ_VERSION`] (`cargo fuzz --version` prints `cargo-fuzz 0.13.2`).
pub fn cargo_fuzz() -> Result<()> {
    let found = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).trim().to_owned());
    if let Some(version) = &found
        && version
            .split_whitespace()
            .any(|word| word == CARGO_FUZZ_VERSION)
    {
        report(false, "cargo-fuzz", &format!("{version} present"));
        return Ok(());
    }
    util::run(Command::new("cargo").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
    .context("installing cargo-fuzz (builds and runs the fuzz targets)")?;
    let was = found.unwrap_or_else(|| "none".to_owned());
    report(
        true,
        "cargo-fuzz",
        &format!("installed {CARGO_FUZZ_VERSION} (was: {was})"),
    );
    Ok(())
}

/// Mount tracefs and bpffs where they are missing.
pub fn mounts() -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
        .context("cannot read /proc/self/mountinfo")?;
    for mount in MOUNTS {
        let what = format!("{} at {}", mount.fstype, mount.target);
        if is_mounted(&mountinfo, mount.fstype, mount.target) {
            report(false, &what, "mounted");
            continue;
        }
        if !is_root() {
            bail!(
                "{what} is not mounted and mounting it needs root (you are uid {})",
                util::euid()
            );
        }
        util::run(Command::new("mount").args(["-t", mount.fstype, mount.fstype, mount.target]))?;
        report(true, &what, "mounted now");
    }
    Ok(())
}

/// One mountinfo line: `id parent maj:min root mountpoint opts [optional...] - fstype source superopts`.
pub fn is_mounted(mountinfo: &str, fstype: &str, target: &str) -> bool {
    mountinfo_entries(mountinfo).any(|(point, fs)| point == target && fs == fstype)
}

/// (mount point, file system type) of each mountinfo line.
fn mountinfo_entries(mountinfo: &str) -> impl Iterator<Item = (&str, &str)> {
    mountinfo.lines().filter_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split_whitespace().nth(4)?;
        let fstype = right.split_whitespace().next()?;
        Some((point, fstype))
    })
}

/// What the sensor needs from the kernel but setup cannot install: say so early.
fn kernel_facts() {
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        report(false, "kernel BTF", "/sys/kernel/btf/vmlinux present");
    } else {
        eprintln!(
            "  WARN kernel BTF: /sys/kernel/btf/vmlinux is missing; the sensor needs a kernel with CONFIG_DEBUG_INFO_BTF"
        );
    }
    let cgroup2 = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|info| {
            mountinfo_entries(&info)
                .find(|(_, fs)| *fs == "cgroup2")
                .map(|(point, _)| point.to_owned())
        });
    match cgroup2 {
        Some(point) => report(false, "cgroup v2", &format!("mounted at {point}")),
        None => eprintln!(
            "  WARN cgroup v2: not mounted; the sensor attaches its connect hooks to the cgroup2 root"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_mounts_in_mountinfo() {
        let info = "\
42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw
43 23 0:39 / /sys/fs/bpf rw,relatime shared:5 - bpf bpf rw
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert!(is_mounted(info, "tracefs", "/sys/kernel/tracing"));
        assert!(is_mounted(info, "bpf", "/sys/fs/bpf"));
        assert!(!is_mounted(info, "bpf", "/sys/kernel/tracing"));
        assert!(!is_mounted("", "bpf", "/sys/fs/bpf"));
    }

    #[test]
    fn missing_packages_from_dpkg_listing() {
        let listing = "bpftool installed\nprocps not-installed\nlibc6:amd64 installed\n";
        assert_eq!(
            missing_packages(listing, &["bpftool", "procps", "python3", "libc6"]),
            vec!["procps", "python3"]
        );
    }

    #[test]
    fn missing_components_from_rustup_listing() {
        let listing = "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\n";
        assert!(missing_components(listing, &["rust-src", "clippy"]).is_empty());
        assert_eq!(
            missing_components(listing, &["rustfmt", "rust"]),
            vec!["rustfmt", "rust"]
        );
    }
}

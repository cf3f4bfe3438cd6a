//! `sensor doctor` and `sensor unload`.

use std::{path::Path, process::ExitCode};

use anyhow::Context as _;
use serde::Serialize;

use super::{
    args::{DoctorArgs, UnloadArgs},
    display::escape_terminal,
};
use crate::{
    config::Config,
    loader::{self, Kernel, mounts},
    policy::{Mode, kernel::Enforcement, selftest},
};

/// How long `sensor unload` waits for the kernel to let go of the programs.
const UNLOAD_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// One finding.
#[derive(Debug, Serialize)]
struct Check {
    what: String,
    ok: bool,
    detail: String,
}

/// What one policy will do on this machine.
#[derive(Debug, Serialize)]
struct PolicyReport {
    name: String,
    mode: &'static str,
    /// What it really does here.
    effect: String,
    ok: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    kernel: String,
    checks: Vec<Check>,
    programs: Vec<loader::AttachedProgram>,
    policies: Vec<PolicyReport>,
    ok: bool,
}

fn check(what: &str, result: Result<String, String>) -> Check {
    match result {
        Ok(detail) => Check {
            what: what.to_owned(),
            ok: true,
            detail,
        },
        Err(detail) => Check {
            what: what.to_owned(),
            ok: false,
            detail,
        },
    }
}

pub fn execute(args: &DoctorArgs) -> anyhow::Result<ExitCode> {
    let mut checks = Vec::new();
    let root = nix::unistd::geteuid().is_root();
    checks.push(check(
        "root",
        if root {
            Ok("running as root".into())
        } else {
            Err(
                "not root: loading programs needs root (CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)"
                    .into(),
            )
        },
    ));
    let kernel = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    checks.push(check(
        "BTF",
        if Path::new(loader::btf::VMLINUX_BTF).exists() {
            Ok(format!("{} present", loader::btf::VMLINUX_BTF))
        } else {
            Err(format!(
                "{} missing: the kernel needs CONFIG_DEBUG_INFO_BTF=y",
                loader::btf::VMLINUX_BTF
            ))
        },
    ));
    checks.push(check(
        "cgroup2",
        mounts::cgroup2_root()
            .map(|p| format!("mounted at {}", p.display()))
            .map_err(|e| e.to_string()),
    ));
    let config = Config::load_with_policies(args.config.as_deref());
    let mut policies = Vec::new();
    let mut programs = Vec::new();
    let mut enforce_ok: Option<selftest::Outcome> = None;
    if root {
        let pin_dir =
            Path::new(mounts::BPFFS).join(format!("sensor-doctor-{}", std::process::id()));
        match loader::load(
            std::process::id(),
            &pin_dir,
            sensor_common::limits::MAX_POLICY_RUNS,
            sensor_common::limits::EVENTS_RING_BYTES,
        ) {
            Ok(Kernel {
                probes,
                mut proc_runs,
                policy,
                ..
            }) => {
                programs = probes.attached().to_vec();
                checks.push(check(
                    "kernel programs",
                    Ok(format!(
                        "{} loaded and attached (tracepoints, raw tracepoint, cgroup sock_addr)",
                        programs.len()
                    )),
                ));
                let outcome =
                    Enforcement::open(policy)
                        .map_err(|e| e.to_string())
                        .map(|mut enforcement| {
                            selftest::run(
                                &mut enforcement,
                                &mut proc_runs,
                                1_000_000_000 / crate::identity::clock_ticks_per_second().max(1),
                            )
                        });
                match outcome {
                    Ok(o) => {
                        checks.push(check(
                            "exec kill",
                            o.exec_killed
                                .clone()
                                .map(|()| {
                                    "a denied exec was killed before it ran (bpf_send_signal)"
                                        .into()
                                })
                                .map_err(|e| e.to_string()),
                        ));
                        checks.push(check(
                            "connect deny",
                            o.connect_denied
                                .clone()
                                .map(|()| {
                                    "a denied connect failed with EPERM (cgroup sock_addr)".into()
                                })
                                .map_err(|e| e.to_string()),
                        ));
                        enforce_ok = Some(o);
                    }
                    Err(e) => checks.push(check("policy maps", Err(e))),
                }
                drop(probes);
            }
            Err(e) => checks.push(check(
                "kernel programs",
                Err(format!("{:#}", anyhow::Error::new(e))),
            )),
        }
        let _ = std::fs::remove_dir_all(&pin_dir);
    }
    match config {
        Err(e) => checks.push(check("config", Err(format!("{:#}", anyhow::Error::new(e))))),
        Ok((_, loaded)) => {
            checks.push(check(
                "config",
                Ok(super::display::count(
                    loaded.names().count(),
                    "policy",
                    "policies",
                )),
            ));
            for p in loaded.iter() {
                let rules = p.rule_count();
                let limits = match (p.max_depth, p.max_processes) {
                    (None, None) => String::new(),
                    (d, n) => format!(
                        "; max_depth {} max_processes {}",
                        d.map_or("-".into(), |d| d.to_string()),
                        n.map_or("-".into(), |n| n.to_string())
                    ),
                };
                let (effect, ok) = match (p.mode, &enforce_ok) {
                        (Mode::Audit, _) => (
                            format!("reports every exec and connect of its runs against {rules} rules; blocks nothing{limits}"),
                            true,
                        ),
                        (Mode::Enforce, Some(o)) if o.ok() => (
                            format!("blocks in the kernel: denied execs are killed, denied connects and datagrams fail with EPERM ({rules} rules{limits})"),
                            true,
                        ),
                        (Mode::Enforce, Some(o)) => (
                            format!("CANNOT be enforced here ({}); the daemon refuses to start it", o.why_not().unwrap_or_default()),
                            false,
                        ),
                        (Mode::Enforce, None) => (
                            "not checked (the kernel programs did not load); the daemon would refuse it".into(),
                            false,
                        ),
                    };
                policies.push(PolicyReport {
                    name: p.name.clone(),
                    mode: p.mode.as_str(),
                    effect,
                    ok,
                });
            }
        }
    }
    let ok = checks.iter().all(|c| c.ok) && policies.iter().all(|p| p.ok);
    let report = Report {
        kernel,
        checks,
        programs,
        policies,
        ok,
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        // Details quote errors, paths and policy rules: escaped.
        println!("kernel {}", escape_terminal(&report.kernel));
        for c in &report.checks {
            println!(
                "{} {:<16} {}",
                if c.ok { "ok  " } else { "FAIL" },
                escape_terminal(&c.what),
                escape_terminal(&c.detail)
            );
        }
        for p in &report.programs {
            println!(
                "     program {:<16} id {:<6} {}",
                p.name,
                p.id,
                escape_terminal(&p.attach)
            );
        }
        for p in &report.policies {
            println!(
                "{} policy \"{}\" ({}): {}",
                if p.ok { "ok  " } else { "FAIL" },
                escape_terminal(&p.name),
                p.mode,
                escape_terminal(&p.effect)
            );
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `sensor unload`: refuses while the pin dir's owner (from its owner
/// record: pid and start time) is alive, or a daemon answers on the socket,
/// unless `--force`.
pub fn unload(args: &UnloadArgs) -> anyhow::Result<ExitCode> {
    let config = Config::load(args.config.as_deref())?;
    let pin_dir = args
        .pin_dir
        .clone()
        .unwrap_or_else(|| config.daemon.pin_dir.clone());
    let socket = args
        .socket
        .clone()
        .unwrap_or_else(|| config.daemon.socket.clone());
    if !pin_dir.exists() {
        println!(
            "nothing pinned at {}",
            escape_terminal(&pin_dir.to_string_lossy())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let owner = loader::owner::read(&pin_dir)
        .with_context(|| format!("reading the owner record of {}", pin_dir.display()))?
        .filter(loader::owner::OwnerInfo::alive);
    let answering =
        crate::control::request(&socket, &crate::control::protocol::Request::Status).is_ok();
    if !args.force {
        if let Some(owner) = &owner {
            eprintln!(
                "sensor: refused: a running daemon owns {}: {}. Its pinned programs and maps are \
                 its own, and it keeps them; stop it first (SIGTERM), then unload. --force \
                 removes the pins anyway (the daemon reports that and pins them again)",
                escape_terminal(&pin_dir.to_string_lossy()),
                escape_terminal(&owner.describe())
            );
            return Ok(ExitCode::FAILURE);
        }
        if answering {
            eprintln!(
                "sensor: refused: a daemon is running on {}: stop it first (its pinned programs \
                 are its own), or pass --force",
                escape_terminal(&socket.to_string_lossy())
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    if let Some(owner) = owner {
        // Its daemon holds the programs: they stay loaded whatever we remove,
        // so there is nothing to wait for.
        std::fs::remove_dir_all(&pin_dir)
            .with_context(|| format!("removing {}", pin_dir.display()))?;
        println!(
            "removed {} (--force) while its daemon runs, {}: the daemon still holds its programs \
             and maps, will report this (sensor.tamper) and pin them again; stop it to end \
             enforcement",
            escape_terminal(&pin_dir.to_string_lossy()),
            escape_terminal(&owner.describe())
        );
        return Ok(ExitCode::SUCCESS);
    }
    let links = loader::unload_pinned(&pin_dir, UNLOAD_TIMEOUT)?;
    println!(
        "removed {}: {links} program links detached, pinned maps dropped",
        escape_terminal(&pin_dir.to_string_lossy())
    );
    Ok(ExitCode::SUCCESS)
}

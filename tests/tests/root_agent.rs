//! Issue 16 item 8: a root agent inside an enforce run, against the claims
//! of docs/security.md ("A root agent inside a run"): what is prevented,
//! what is only recorded, and that the kernel side goes on without the
//! daemon.

use std::{os::unix::process::ExitStatusExt as _, thread, time::Duration};

use anyhow::{Result, ensure};
use sensor_tests::{
    Checks, Daemon, check, compact,
    enforce::{Fixture, KILLED, base_exec, describe, launch_sh, outputs},
};
use serde_json::Value;

fn config(exec: &[String]) -> String {
    let list = exec
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!("[policy.p]\nmode = \"enforce\"\nexec.allow = [{list}]\nconnect.allow = []\n")
}

/// The exec rules of the tests plus the tools a root agent uses here.
fn exec_rules() -> Result<Vec<String>> {
    let mut exec = base_exec()?;
    exec.extend(["/usr/sbin/bpftool".to_owned(), "/usr/bin/kill".to_owned()]);
    Ok(exec)
}

fn tampers<'a>(evs: &'a [Value], agent: &str, method: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| {
            e["kind"] == "sensor.tamper"
                && e["run"]["agent"] == agent
                && e["tamper"]["method"] == method
        })
        .collect()
}

/// Every use of bpf(2) by a root agent in an enforce run kills it before
/// the call runs: it cannot list, write a policy map or detach a link, and
/// everything the daemon attached stays attached and pinned.
#[test]
fn a_root_agent_in_an_enforce_run_cannot_use_bpf() -> Result<()> {
    let d = Daemon::start_with(Some(&config(&exec_rules()?)), &[])?;
    let pins = d.pin_dir().display().to_string();
    let script = format!(
        "/usr/sbin/bpftool prog show >/dev/null 2>&1; echo \"list: $?\"\n\
         /usr/sbin/bpftool map update pinned {pins}/SNSR_POLICIES key 1 0 0 0 \
           value 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 >/dev/null 2>&1; echo \"update: $?\"\n\
         /usr/sbin/bpftool link detach pinned {pins}/links/snsr_connect4 >/dev/null 2>&1; \
           echo \"detach: $?\"\n"
    );
    let out = launch_sh(&d, "root-bpf", "p", &script)?;
    let got = outputs(&out);
    let mut c = Checks::new();
    for step in ["list", "update", "detach"] {
        check!(
            c,
            got.get(step) == Some(&KILLED.to_string()),
            "bpftool {step} is killed before it runs: {}",
            describe(&out)
        );
    }
    thread::sleep(Duration::from_millis(500));
    let status = d.status_json()?;
    let programs = status["programs"].as_array().cloned().unwrap_or_default();
    let loose: Vec<String> = programs
        .iter()
        .filter(|p| p["attached"] != true || p["pinned"] != true)
        .map(compact)
        .collect();
    check!(
        c,
        !programs.is_empty() && loose.is_empty(),
        "every program stays attached and pinned: {loose:?}"
    );
    check!(
        c,
        status["tamper"]["total"] == 0,
        "nothing needed repair (the calls never ran): {}",
        status["tamper"]
    );
    let evs = d.events()?;
    let bpf = tampers(&evs, "root-bpf", "bpf");
    check!(
        c,
        bpf.len() >= 3 && bpf.iter().all(|e| e["tamper"]["killed"] == true),
        "each bpf() is sensor.tamper with the run, killed: {:?}",
        bpf.iter().map(|e| compact(e)).collect::<Vec<_>>()
    );
    c.finish()
}

/// A root agent in an enforce run SIGKILLs the daemon. The kill is not
/// prevented (a tracepoint cannot stop a syscall): the daemon dies. What it
/// left in the kernel does not: the next denied exec is still killed, and
/// everything, the kill included, is recorded and reported by the next
/// daemon after a `sensor.gap`.
#[test]
fn a_root_agent_that_kills_the_daemon_is_still_enforced_and_recorded() -> Result<()> {
    let fx = Fixture::new("root-kill")?;
    let mut d = Daemon::start_with(Some(&config(&exec_rules()?)), &[])?;
    let daemon_pid = d.pid();
    let target = fx.target("after-kill");
    let script = format!(
        "/usr/bin/kill -KILL {daemon_pid}; echo \"kill: $?\"\nsleep 0.5\n\
         {} {}; echo \"denied: $?\"\n",
        fx.denied,
        target.display()
    );
    let out = launch_sh(&d, "root-kill", "p", &script)?;
    let status = d.wait_exit(Duration::from_secs(10))?;
    let got = outputs(&out);
    let mut c = Checks::new();
    check!(
        c,
        status.signal() == Some(libc::SIGKILL),
        "the daemon was killed (not prevented): {status}"
    );
    check!(
        c,
        got.get("kill") == Some(&KILLED.to_string()),
        "the killer is killed too (enforce): {}",
        describe(&out)
    );
    check!(
        c,
        got.get("denied") == Some(&KILLED.to_string()) && !target.exists(),
        "with the daemon dead, the kernel still kills the denied exec: {}",
        describe(&out)
    );
    d.resume()?;
    let evs = d.wait_events(Duration::from_secs(20), |evs| {
        evs.iter().any(|e| e["kind"] == "sensor.gap")
            && evs.iter().any(|e| {
                e["kind"] == "process.exec"
                    && e["process"]["exe"] == fx.denied.as_str()
                    && e["run"]["agent"] == "root-kill"
            })
    })?;
    let signal = tampers(&evs, "root-kill", "signal");
    check!(
        c,
        signal.iter().any(|e| e["tamper"]["signal"] == libc::SIGKILL
            && e["tamper"]["target"]["pid"] == daemon_pid),
        "the SIGKILL to the daemon is sensor.tamper with the run: {:?}",
        signal.iter().map(|e| compact(e)).collect::<Vec<_>>()
    );
    let denied = evs
        .iter()
        .find(|e| e["kind"] == "process.exec" && e["process"]["exe"] == fx.denied.as_str());
    check!(
        c,
        denied.is_some_and(|e| e["policy"]["verdict"] == "deny"
            && e["policy"]["enforced"] == true
            && e["delivery"] == "recovered"),
        "the denied exec of the downtime is reported, enforced, recovered: {:?}",
        denied.map(compact)
    );
    let gap = evs.iter().find(|e| e["kind"] == "sensor.gap");
    check!(
        c,
        gap.is_some_and(|g| g["gap"]["cause"] == "crash"
            && g["gap"]["recorded"] == true
            && g["gap"]["policies_pinned"]["enforce"].as_u64().unwrap_or(0) >= 1),
        "sensor.gap: a crash, recorded, enforce policies kept: {:?}",
        gap.map(compact)
    );
    ensure!(d.status_json()?["ready"] == true, "the new daemon is ready");
    c.finish()
}

//! Processes in new pid namespaces and sessions stay attributed by host pid
//! and fork-time lineage, and report both host and namespace pids.

use std::process::Command;

use anyhow::{Result, ensure};
use sensor_tests::{Daemon, EVENT_TIMEOUT, argv_of, marker, run_child, sensor_bin, text};

#[test]
fn a_tool_in_a_new_pid_namespace_keeps_its_run_and_reports_both_pids() -> Result<()> {
    let d = Daemon::start()?;
    let m = marker();
    let script = format!("/bin/true {m}; echo $$");
    let (_, out) = run_child(
        Command::new(sensor_bin()?)
            .args(["launch", "--agent", "ns-agent", "--socket"])
            .arg(d.socket())
            .args([
                "--",
                "unshare",
                "--pid",
                "--fork",
                "--mount-proc",
                "sh",
                "-c",
                &script,
            ]),
    )?;
    ensure!(out.status.success(), "launch failed: {}", text(&out.stderr));
    ensure!(
        text(&out.stdout).trim() == "1",
        "sh is pid 1 in its namespace: {}",
        text(&out.stdout)
    );

    let exec = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "process.exec" && e["exec"]["result"] == "ok" && argv_of(e).contains(&m)
    })?;
    let p = &exec["process"];
    let host_pid = p["pid"].as_u64().unwrap_or(0);
    let ns_pid = p["ns_pid"].as_u64().unwrap_or(0);
    // /bin/true is the second process of the namespace (sh is 1).
    ensure!(ns_pid == 2, "ns_pid should be 2: {exec}");
    ensure!(
        host_pid > 2 && host_pid != ns_pid,
        "pid is the host pid: {exec}"
    );
    ensure!(
        exec["run"]["agent"] == "ns-agent",
        "still in the run: {exec}"
    );
    ensure!(exec["run"]["attribution"] == "inherited", "{exec}");
    ensure!(exec["run"]["depth"] == 0, "{exec}");
    Ok(())
}

#[test]
fn a_new_session_does_not_leave_the_run_and_host_processes_have_no_ns_pid() -> Result<()> {
    let d = Daemon::start()?;
    let m = marker();
    let (_, out) = run_child(
        Command::new(sensor_bin()?)
            .args(["launch", "--agent", "session-agent", "--socket"])
            .arg(d.socket())
            .args(["--", "setsid", "--fork", "--wait", "/bin/true", &m]),
    )?;
    ensure!(out.status.success(), "launch failed: {}", text(&out.stderr));
    let exec = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "process.exec"
            && e["exec"]["result"] == "ok"
            && argv_of(e).first().map(String::as_str) == Some("/bin/true")
            && argv_of(e).contains(&m)
    })?;
    ensure!(exec["run"]["agent"] == "session-agent", "{exec}");
    ensure!(
        exec["process"].get("ns_pid").is_none(),
        "no ns_pid in the host namespace: {exec}"
    );
    Ok(())
}

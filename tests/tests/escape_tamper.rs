//! Injection into a process outside the run, and tamper with the sensor
//! (issue: no way out of a run unseen). A run that cannot start a process
//! outside itself can still take one over (ptrace, process_vm_writev,
//! pidfd_getfd, /proc/PID/mem), or go after the sensor (signal the daemon,
//! write its files, use bpf()). Each attempt is reported with the run that
//! made it; under enforce the injections are stopped before their effect
//! (the caller is killed at the syscall, and the target is unchanged).
//!
//! Run as root: `cargo test -p sensor-tests --test escape_tamper -- --test-threads=1`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use sensor_tests::enforce::{
    Fixture, KILLED, base_exec, check_deny, check_violation, launch_sh, outputs, s,
};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, check, compact, die_with_parent, helper_bin, ocsf, text,
};
use serde_json::Value;

const HELPER: &str = helper_bin!();
const TAMPER_RULE: &str = "tamper (a process outside the run, or the sensor)";

fn config(exec: &[String]) -> String {
    let list = exec
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "[policy.p]\nmode = \"enforce\"\nexec.allow = [{list}]\nconnect.allow = []\n\
         [policy.a]\nmode = \"audit\"\nexec.allow = [{list}]\nconnect.allow = []\n"
    )
}

/// A `memory-target` helper outside any run: its pid, buffer address, the
/// fd it holds, and the process.
struct Target {
    child: Child,
    pid: u32,
    addr: u64,
    fd: u32,
}

impl Target {
    fn start(file: &Path) -> Result<Self> {
        let mut cmd = Command::new(HELPER);
        cmd.arg("memory-target")
            .arg(file)
            .arg("60")
            .stdout(Stdio::piped());
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn()?;
        let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut reader = BufReader::new(out);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let field = |name: &str| -> Result<u64> {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| anyhow!("memory-target said {line:?}"))
        };
        let (pid, addr, fd) = (field("pid=")?, field("addr=")?, field("fd=")?);
        // Keep the rest of its output for `buffer`.
        child.stdout = Some(reader.into_inner());
        Ok(Self {
            child,
            pid: u32::try_from(pid)?,
            addr,
            fd: u32::try_from(fd)?,
        })
    }

    /// Ends it (SIGUSR1) and returns what its buffer holds. A SIGCONT goes
    /// first: a ptrace attach stops its target (SIGSTOP), and when the
    /// tracer is killed before it resumes it, the target stays stopped.
    fn buffer(mut self) -> Result<String> {
        let pid = i32::try_from(self.pid)?;
        // SAFETY: kill(2) on our own child.
        unsafe {
            libc::kill(pid, libc::SIGCONT);
            libc::kill(pid, libc::SIGUSR1);
        }
        let out = self
            .child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout"))?;
        let mut rest = String::new();
        for line in BufReader::new(out).lines() {
            rest = line?;
        }
        let _ = self.child.wait();
        rest.strip_prefix("buffer=")
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("memory-target ended with {rest:?}"))
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tampers<'a>(evs: &'a [Value], kind: &str, agent: &str, method: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| {
            e["kind"] == kind && e["run"]["agent"] == agent && e["tamper"]["method"] == method
        })
        .collect()
}

/// ptrace, process_vm_writev, pidfd_getfd and /proc/PID/mem against a
/// process outside the run: under enforce the caller is killed and the
/// target's memory is unchanged; in audit the injection works and is
/// reported. Either way a `process.tamper` names the method, the target
/// (no run) and the caller's run.
#[test]
fn injection_into_a_process_outside_the_run_is_stopped_under_enforce() -> Result<()> {
    let fx = Fixture::new("inject")?;
    let secret = fx.dir().join("secret");
    fs::write(&secret, b"secret")?;
    let ocsf_path = fx.dir().join("ocsf.jsonl");
    let d = Daemon::start_with(
        Some(&config(&base_exec()?)),
        &["--output", &ocsf::spec(&ocsf_path)],
    )?;
    let mut c = Checks::new();
    for how in ["ptrace", "vm-write", "getfd", "mem"] {
        for (policy, agent) in [("p", format!("inj-e-{how}")), ("a", format!("inj-a-{how}"))] {
            let target = Target::start(&secret)?;
            let arg = if how == "getfd" {
                target.fd.to_string()
            } else {
                target.addr.to_string()
            };
            let script = format!(
                "{HELPER} inject {how} {} {arg}\necho \"inject: $?\"\n",
                target.pid
            );
            let out = launch_sh(&d, &agent, policy, &script)?;
            let status = outputs(&out).get("inject").cloned().unwrap_or_default();
            let buffer = target.buffer()?;
            if policy == "p" {
                check!(
                    c,
                    status == KILLED.to_string(),
                    "{how} under enforce: the caller is killed ({status}) {:?}",
                    text(&out.stdout)
                );
                check!(
                    c,
                    buffer.starts_with("untouched"),
                    "{how} under enforce: the target's memory is unchanged: {buffer:?}"
                );
            } else {
                check!(
                    c,
                    status == "0",
                    "{how} in audit: the injection runs: {:?}",
                    text(&out.stdout)
                );
                if how != "getfd" {
                    check!(
                        c,
                        buffer.starts_with("injected"),
                        "{how} in audit: the injection really wrote (else the enforce check proves nothing): {buffer:?}"
                    );
                }
            }
        }
    }
    thread::sleep(Duration::from_millis(500));
    let evs = d.events()?;
    for (how, method) in [
        ("ptrace", "ptrace"),
        ("vm-write", "process_vm_writev"),
        ("getfd", "pidfd_getfd"),
        ("mem", "proc_mem"),
    ] {
        let enforce = tampers(&evs, "process.tamper", &format!("inj-e-{how}"), method);
        match enforce.first() {
            Some(e) => {
                check!(
                    c,
                    e["tamper"]["killed"] == true
                        && e["tamper"]["detected"] == "kernel"
                        && e["tamper"]["target"]["pid"].is_u64()
                        && e["tamper"]["target"]["run"].is_null(),
                    "{how}: the enforce run's process.tamper: {}",
                    compact(e)
                );
                check_deny(&mut c, how, e, "p", Some(TAMPER_RULE), true);
                check_violation(&mut c, how, &evs, e);
            }
            None => c.fail(format!(
                "{how}: no process.tamper ({method}) for the enforce run"
            )),
        }
        let audit = tampers(&evs, "process.tamper", &format!("inj-a-{how}"), method);
        check!(
            c,
            audit
                .first()
                .is_some_and(|e| e["tamper"]["killed"] == false && e["policy"]["enforced"] == false),
            "{how}: the audit run's process.tamper is reported, not enforced: {:?}",
            audit.first().map(|e| compact(e))
        );
    }
    // OCSF: Process Activity, Inject (Open for pidfd_getfd) into the
    // target, by the caller; validated by the third-party validator.
    let want: Vec<&Value> = evs
        .iter()
        .filter(|e| e["kind"] == "process.tamper")
        .collect();
    let o = ocsf::validated_kinds(
        &ocsf_path,
        &["process.tamper", "policy.violation"],
        &[1007],
        EVENT_TIMEOUT,
        |o| want.iter().all(|e| ocsf::by_seq(o, &e["seq"]).is_some()),
    )?;
    for (how, method, activity) in [
        ("ptrace", "ptrace", 4),
        ("vm-write", "process_vm_writev", 4),
        ("getfd", "pidfd_getfd", 3),
        ("mem", "proc_mem", 4),
    ] {
        for (agent, killed) in [
            (format!("inj-e-{how}"), true),
            (format!("inj-a-{how}"), false),
        ] {
            let Some(e) = tampers(&evs, "process.tamper", &agent, method)
                .first()
                .copied()
            else {
                continue;
            };
            match ocsf::by_seq(&o, &e["seq"]) {
                Some(o) => check!(
                    c,
                    o["class_uid"] == 1007
                        && o["activity_id"] == activity
                        && o["process"]["pid"] == e["tamper"]["target"]["pid"]
                        && o["actor"]["process"]["pid"] == e["process"]["pid"]
                        && o["actor"]["session"]["uid"] == e["run"]["id"]
                        && o["is_alert"] == true
                        && (o["status_id"] == 2) == killed,
                    "{agent}: OCSF of the process.tamper: {}",
                    compact(&o)
                ),
                None => c.fail(format!("{agent}: no OCSF event of the process.tamper")),
            }
        }
    }
    c.finish()
}

/// The scenario: `sleep 1000` started before the run; inside an
/// enforce run, gdb attaches to it and makes it exec a denied binary. gdb
/// dies at the attach; the sleep is untouched and keeps sleeping.
#[test]
fn gdb_cannot_make_a_process_outside_the_run_exec_a_denied_binary() -> Result<()> {
    let fx = Fixture::new("gdb")?;
    let mut sleeper = {
        let mut cmd = Command::new("/usr/bin/sleep");
        cmd.arg("1000");
        die_with_parent(&mut cmd);
        cmd.spawn()?
    };
    let pid = sleeper.id();
    let mut exec = base_exec()?;
    exec.push("/usr/bin/gdb".into());
    let d = Daemon::start_with(Some(&config(&exec)), &[])?;
    let target = fx.target("via-gdb");
    let script = format!(
        "/usr/bin/gdb -p {pid} -batch -nx -ex 'call (int)execl(\"{denied}\", \"touch\", \"{t}\", (char*)0)' >/dev/null 2>&1\n\
         echo \"gdb: $?\"\n",
        denied = fx.denied,
        t = s(&target)
    );
    let out = launch_sh(&d, "gdb-e", "p", &script)?;
    let mut c = Checks::new();
    check!(
        c,
        outputs(&out).get("gdb") == Some(&KILLED.to_string()),
        "gdb is killed at its attach: {:?}",
        outputs(&out)
    );
    thread::sleep(Duration::from_millis(500));
    check!(
        c,
        !target.exists(),
        "the denied binary never ran in the sleep"
    );
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    check!(
        c,
        sleeper.try_wait()?.is_none()
            && status
                .lines()
                .any(|l| l.starts_with("TracerPid:") && l.ends_with("\t0")),
        "the sleep lives on, traced by nobody: {status:?}"
    );
    let e = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "process.tamper" && e["run"]["agent"] == "gdb-e"
    });
    match e {
        Ok(e) => check!(
            c,
            e["tamper"]["method"] == "ptrace"
                && e["tamper"]["target"]["pid"] == pid
                && e["tamper"]["killed"] == true
                && e["process"]["exe"] == "/usr/bin/gdb",
            "the attach is reported with gdb, the run and the target: {}",
            compact(&e)
        ),
        Err(err) => c.fail(format!("no process.tamper for gdb: {err:#}")),
    }
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    c.finish()
}

/// A run goes after the sensor: signals the daemon, writes into its state
/// directory, calls bpf(). Each is `sensor.tamper`, with the run; a write to
/// the sensor's files under enforce kills the writer.
#[test]
fn a_run_that_goes_after_the_sensor_is_reported() -> Result<()> {
    let mut exec = base_exec()?;
    exec.extend([
        "/usr/bin/touch".to_owned(),
        "/usr/sbin/bpftool".to_owned(),
        "/usr/bin/kill".to_owned(),
    ]);
    let tmp = TempDir::new("sensor-tamper-ocsf")?;
    let ocsf_path = tmp.path().join("ocsf.jsonl");
    let d = Daemon::start_with(Some(&config(&exec)), &["--output", &ocsf::spec(&ocsf_path)])?;
    let daemon_pid = d.pid();
    let state = d.state_dir().to_owned();
    let script = |tag: &str| {
        format!(
            "/usr/bin/kill -CONT {daemon_pid}\necho \"kill: $?\"\n\
             /usr/bin/touch {}/{tag}-planted\necho \"touch: $?\"\n\
             /usr/sbin/bpftool prog show >/dev/null 2>&1\necho \"bpftool: $?\"\n",
            s(&state)
        )
    };
    let out_a = launch_sh(&d, "tamper-a", "a", &script("a"))?;
    let out_e = launch_sh(&d, "tamper-e", "p", &script("e"))?;
    let mut c = Checks::new();
    check!(
        c,
        outputs(&out_e).get("touch") == Some(&KILLED.to_string()),
        "a write into the sensor's state dir kills the writer under enforce: {:?}",
        outputs(&out_e)
    );
    check!(
        c,
        outputs(&out_a).get("touch").map(String::as_str) == Some("0"),
        "in audit it is not blocked: {:?}",
        outputs(&out_a)
    );
    d.check_alive().context("the daemon after a CONT signal")?;
    thread::sleep(Duration::from_millis(500));
    let evs = d.events()?;
    for agent in ["tamper-a", "tamper-e"] {
        let signal = tampers(&evs, "sensor.tamper", agent, "signal");
        check!(
            c,
            signal
                .first()
                .is_some_and(|e| e["tamper"]["signal"] == libc::SIGCONT
                    && e["tamper"]["target"]["pid"] == daemon_pid),
            "{agent}: the signal to the daemon is sensor.tamper: {:?}",
            signal.first().map(|e| compact(e))
        );
        let file = tampers(&evs, "sensor.tamper", agent, "sensor_file");
        check!(
            c,
            file.first()
                .is_some_and(|e| e["tamper"]["file"]["kind"] == "state"
                    && e["tamper"]["file"]["path"] == s(&state).as_str()),
            "{agent}: the write into the state dir is sensor.tamper naming it: {:?}",
            file.first().map(|e| compact(e))
        );
        let bpf = tampers(&evs, "sensor.tamper", agent, "bpf");
        check!(
            c,
            !bpf.is_empty(),
            "{agent}: bpf() from the run is sensor.tamper"
        );
    }
    // OCSF: a Detection Finding whose actor is the process of the run;
    // validated by the third-party validator.
    let want: Vec<&Value> = evs
        .iter()
        .filter(|e| e["kind"] == "sensor.tamper" && !e["run"].is_null())
        .collect();
    let o = ocsf::validated_kinds(
        &ocsf_path,
        &["sensor.tamper"],
        &[2004],
        EVENT_TIMEOUT,
        |o| want.iter().all(|e| ocsf::by_seq(o, &e["seq"]).is_some()),
    )?;
    for (agent, method, severity) in [
        ("tamper-a", "signal", 4),
        ("tamper-a", "sensor_file", 4),
        ("tamper-e", "sensor_file", 3),
        // Killed under enforce (issue 16 item 8: a run gets one bpf() call).
        ("tamper-e", "bpf", 3),
    ] {
        let Some(e) = tampers(&evs, "sensor.tamper", agent, method)
            .first()
            .copied()
        else {
            continue;
        };
        match ocsf::by_seq(&o, &e["seq"]) {
            Some(o) => check!(
                c,
                o["class_uid"] == 2004
                    && o["finding_info"]["types"][0] == "sensor.tamper"
                    && o["actor"]["process"]["pid"] == e["process"]["pid"]
                    && o["actor"]["session"]["uid"] == e["run"]["id"]
                    && o["severity_id"] == severity
                    && o["is_alert"] == true,
                "{agent} {method}: OCSF of the sensor.tamper: {}",
                compact(&o)
            ),
            None => c.fail(format!("{agent} {method}: no OCSF event")),
        }
    }
    ensure!(d.status_json()?["ready"] == true, "the daemon stays ready");
    c.finish()
}

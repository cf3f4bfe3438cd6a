//! Escapes through other processes (issue: no way out of a run unseen): a
//! run asks a process outside it to act for it, over a Unix socket (a tmux
//! server, a spawner daemon), over TCP (an sshd on loopback), or through a
//! spool and a signal (`at` with atd). The escaped command's own events carry
//! no run, but the attempt is reported with the run, and under an enforce
//! policy the attempt fails.
//!
//! Run as root: `cargo test -p sensor-tests --test escape_spawners -- --test-threads=1`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sensor_tests::enforce::{
    KILLED, base_exec, check_deny, check_violation, launch_sh, outputs, s,
};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, check, compact, die_with_parent, dump, helper_bin,
    marker, ocsf, text,
};
use serde_json::Value;

const HELPER: &str = helper_bin!();
const UNIX_NO_MATCH: &str = "unix.allow (no rule matches)";

// ----- helpers -----

/// A policy table with exec, connect and unix allow-lists.
fn policy(name: &str, mode: &str, exec: &[String], connect: &[&str], unix: &[&str]) -> String {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|i| format!("{i:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let exec: Vec<&str> = exec.iter().map(String::as_str).collect();
    format!(
        "[policy.{name}]\nmode = {mode:?}\nexec.allow = [{}]\nconnect.allow = [{}]\nunix.allow = [{}]\n",
        list(&exec),
        list(connect),
        list(unix)
    )
}

/// A background process killed (and reaped) on drop.
struct Bg(Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `sensor-test-helper unix-server KIND ADDR SECS`, once it said "ready".
fn unix_server(kind: &str, addr: &str, secs: u32) -> Result<Bg> {
    let mut cmd = Command::new(HELPER);
    cmd.args(["unix-server", kind, addr, &secs.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    die_with_parent(&mut cmd);
    let mut child = cmd.spawn().context("start a unix server")?;
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut line = String::new();
    BufReader::new(out).read_line(&mut line)?;
    ensure!(line.trim() == "ready", "the unix server said {line:?}");
    Ok(Bg(child))
}

/// The network.connect events of family unix to `path` (as the event shows it).
fn unix_connects<'a>(evs: &'a [Value], path: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| {
            e["kind"] == "network.connect"
                && e["network"]["family"] == "unix"
                && e["network"]["path"] == path
        })
        .collect()
}

/// The first successful exec of `/usr/bin/true MARKER`.
fn true_exec<'a>(evs: &'a [Value], m: &str) -> Option<&'a Value> {
    evs.iter().find(|e| {
        e["kind"] == "process.exec"
            && e["exec"]["result"] == "ok"
            && e["process"]["exe"] == "/usr/bin/true"
            && e["process"]["argv"][1] == m
    })
}

fn wait_for_file(path: &Path, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

// ===== Unix connects =====

/// Every AF_UNIX connect of a process in a run is reported, with its path
/// (abstract names marked), its result and the run; none outside runs.
/// `unix.allow` decides on the address the caller gave (paths, globs,
/// `@name`); under enforce the rest fails with EPERM and is a violation, a
/// denied datagram to a Unix address too; the sensor's own socket is always
/// allowed.
#[test]
fn unix_connects_are_reported_and_unix_allow_decides() -> Result<()> {
    let tmp = TempDir::new("unix-allow")?;
    let dir = tmp.path();
    let ok = s(&dir.join("ok.sock"));
    let globbed = s(&dir.join("app-1.sock"));
    let bad = s(&dir.join("bad.sock"));
    let dgram = s(&dir.join("dgram.sock"));
    let m = marker();
    let ok_name = format!("@{m}-ok");
    let bad_name = format!("@{m}-bad");
    let servers = [
        unix_server("stream", &ok, 60)?,
        unix_server("stream", &globbed, 60)?,
        unix_server("stream", &bad, 60)?,
        unix_server("stream", &ok_name, 60)?,
        unix_server("stream", &bad_name, 60)?,
        unix_server("dgram", &dgram, 60)?,
    ];
    let glob = format!("{}/app-*.sock", dir.display());
    let config = format!(
        "{}{}",
        policy("p", "enforce", &base_exec()?, &[], &[&ok, &glob, &ok_name]),
        policy("a", "audit", &base_exec()?, &[], &[&ok])
    );
    let ocsf_path = dir.join("ocsf.jsonl");
    let d = Daemon::start_with(Some(&config), &["--output", &ocsf::spec(&ocsf_path)])?;
    let sensor = sensor_tests::sensor_bin()?;
    let script = format!(
        "echo \"ok: $({HELPER} connect unix {ok})\"\n\
         echo \"glob: $({HELPER} connect unix {globbed})\"\n\
         echo \"bad: $({HELPER} connect unix {bad})\"\n\
         echo \"okname: $({HELPER} connect unix {ok_name})\"\n\
         echo \"badname: $({HELPER} connect unix {bad_name})\"\n\
         echo \"dgram: $({HELPER} sendto unix {dgram})\"\n\
         {} whoami >/dev/null && echo \"whoami: ok\"\n",
        sensor.display()
    );
    let out = launch_sh(&d, "unix-enforce", "p", &script)?;
    let o = outputs(&out);
    let mut c = Checks::new();
    for (what, want) in [
        ("ok", "ok"),
        ("glob", "ok"),
        ("bad", "errno=1"),
        ("okname", "ok"),
        ("badname", "errno=1"),
        ("dgram", "errno=1"),
        ("whoami", "ok"),
    ] {
        check!(
            c,
            o.get(what).map(String::as_str) == Some(want),
            "under enforce, {what} must be {want}: {o:?} {:?}",
            text(&out.stderr)
        );
    }
    // The same in audit: reported as denials, not blocked.
    let out = launch_sh(
        &d,
        "unix-audit",
        "a",
        &format!("echo \"bad: $({HELPER} connect unix {bad})\"\n"),
    )?;
    check!(
        c,
        outputs(&out).get("bad").map(String::as_str) == Some("ok"),
        "audit does not block: {:?}",
        outputs(&out)
    );
    // And outside any run: not reported.
    let outside = Command::new(HELPER)
        .args(["connect", "unix", &bad])
        .output()?;
    ensure!(text(&outside.stdout).trim() == "ok", "outside: {outside:?}");
    d.wait_until(
        EVENT_TIMEOUT,
        |evs| unix_connects(evs, &bad).len() >= 2,
        |evs| {
            dump(
                &unix_connects(evs, &bad)
                    .into_iter()
                    .cloned()
                    .collect::<Vec<_>>(),
            )
        },
    )?;
    thread::sleep(Duration::from_millis(300));
    let evs = d.events()?;
    let enforce_run = |e: &&Value| e["run"]["agent"] == "unix-enforce";
    let one = |path: &str| {
        unix_connects(&evs, path)
            .into_iter()
            .find(enforce_run)
            .cloned()
    };
    match one(&ok) {
        Some(e) => {
            check!(
                c,
                e["network"]["result"] == "ok"
                    && e["network"]["transport"] == "stream"
                    && e["network"]["abstract"] == false
                    && e["policy"]["verdict"] == "allow"
                    && e["policy"]["rule"] == format!("unix.allow {ok}"),
                "the allowed connect: {}",
                compact(&e)
            );
        }
        None => c.fail(format!("no network.connect to {ok} in the run")),
    }
    match one(&globbed) {
        Some(e) => check!(
            c,
            e["policy"]["rule"] == format!("unix.allow {glob}"),
            "a glob rule allows it: {}",
            compact(&e)
        ),
        None => c.fail(format!("no network.connect to {globbed}")),
    }
    for path in [bad.as_str(), bad_name.as_str()] {
        match one(path) {
            Some(e) => {
                check!(
                    c,
                    e["network"]["result"] == "error" && e["network"]["errno"] == 1,
                    "a denied connect fails with EPERM: {}",
                    compact(&e)
                );
                check_deny(&mut c, path, &e, "p", Some(UNIX_NO_MATCH), true);
                check_violation(&mut c, path, &evs, &e);
            }
            None => c.fail(format!("no network.connect to {path} in the run")),
        }
    }
    match one(&ok_name) {
        Some(e) => check!(
            c,
            e["network"]["abstract"] == true && e["network"]["result"] == "ok",
            "an abstract name is marked: {}",
            compact(&e)
        ),
        None => c.fail(format!("no network.connect to {ok_name}")),
    }
    match one(&dgram) {
        Some(e) => check!(
            c,
            e["network"]["via"] == "sendmsg"
                && e["network"]["transport"] == "dgram"
                && e["policy"]["enforced"] == true,
            "a denied datagram to a Unix address is reported: {}",
            compact(&e)
        ),
        None => c.fail(format!("no denied datagram to {dgram}")),
    }
    let audit = unix_connects(&evs, &bad)
        .into_iter()
        .find(|e| e["run"]["agent"] == "unix-audit");
    check!(
        c,
        audit.is_some_and(|e| e["policy"]["verdict"] == "deny"
            && e["policy"]["enforced"] == false
            && e["network"]["result"] == "ok"),
        "audit reports the denial without blocking: {:?}",
        audit.map(compact)
    );
    check!(
        c,
        unix_connects(&evs, &bad)
            .iter()
            .all(|e| !e["run"].is_null()),
        "a Unix connect outside any run is not reported"
    );
    // OCSF: Network Activity, local; the socket path is the destination
    // endpoint's name. Checked by the third-party validator. A denial is
    // one record (issue 21): the connect; its policy.violation twin is not
    // written again.
    let want: Vec<Value> = evs
        .iter()
        .filter(|e| {
            e["kind"] == "network.connect"
                && e["network"]["family"] == "unix"
                && !e["run"].is_null()
        })
        .cloned()
        .collect();
    let o = ocsf::validated_kinds(
        &ocsf_path,
        &["network.connect", "policy.violation"],
        &[4001],
        EVENT_TIMEOUT,
        |o| want.iter().all(|e| ocsf::by_seq(o, &e["seq"]).is_some()),
    )?;
    let twins = evs
        .iter()
        .filter(|e| e["kind"] == "policy.violation" && e["network"]["family"] == "unix")
        .count();
    check!(
        c,
        twins > 0
            && !o
                .iter()
                .any(|o| o["metadata"]["event_code"] == "policy.violation"),
        "OCSF writes each Unix denial once ({twins} policy.violation twins in JSON, none in OCSF)"
    );
    for (path, activity, disposition) in [(&ok, 1, "Allowed"), (&bad, 4, "Blocked")] {
        match one(path).and_then(|e| ocsf::by_seq(&o, &e["seq"])) {
            Some(o) => check!(
                c,
                o["class_uid"] == 4001
                    && o["activity_id"] == activity
                    && o["dst_endpoint"]["name"] == path.as_str()
                    && o["connection_info"]["direction"] == "Local"
                    && o["disposition"] == disposition
                    && o["unmapped"]["network"]["family"] == "unix",
                "OCSF of the connect to {path}: {}",
                compact(&o)
            ),
            None => c.fail(format!("no OCSF event of the connect to {path}")),
        }
    }
    drop(servers);
    c.finish()
}

/// An allowed socket path is replaced by a symlink to another socket (the
/// attacker can write the directory): the address still matches the rule,
/// but the connect reaches another socket. The kernel kills the caller at
/// the connect's exit, before it can use the connection.
#[test]
fn an_allowed_path_swapped_for_another_socket_is_killed_at_once() -> Result<()> {
    let tmp = TempDir::new("unix-swap")?;
    let allowed = tmp.path().join("allowed.sock");
    let other = tmp.path().join("other.sock");
    let _a = unix_server("stream", &s(&allowed), 60)?;
    let _o = unix_server("stream", &s(&other), 60)?;
    let mut exec = base_exec()?;
    exec.push("/usr/bin/mv".into());
    let config = policy("p", "enforce", &exec, &[], &[&s(&allowed)]);
    let ocsf_path = tmp.path().join("ocsf.jsonl");
    let d = Daemon::start_with(Some(&config), &["--output", &ocsf::spec(&ocsf_path)])?;
    // Swap, then connect at once (before the 2 s refresh looks again).
    let script = format!(
        "echo \"before: $({HELPER} connect unix {a})\"\n\
         /usr/bin/mv {a} {a}.real && /usr/bin/ln -s {o} {a}\n\
         {HELPER} connect unix {a}\necho \"after: $?\"\n",
        a = s(&allowed),
        o = s(&other)
    );
    let out = launch_sh(&d, "swap", "p", &script)?;
    let o = outputs(&out);
    let mut c = Checks::new();
    check!(
        c,
        o.get("before").map(String::as_str) == Some("ok"),
        "the allowed socket works: {o:?} {:?}",
        text(&out.stderr)
    );
    check!(
        c,
        o.get("after") == Some(&KILLED.to_string()),
        "connecting through the swapped path kills the caller: {o:?}"
    );
    let e = d.wait_for(EVENT_TIMEOUT, |e| {
        e["network"]["family"] == "unix" && e["network"]["result"] == "killed"
    });
    match e {
        Ok(e) => {
            check!(
                c,
                e["network"]["path"] == s(&allowed).as_str()
                    && e["network"]["peer_path"] == s(&other).as_str(),
                "the event shows the address given and the socket reached: {}",
                compact(&e)
            );
            check_deny(
                &mut c,
                "swapped",
                &e,
                "p",
                Some("unix.allow (the socket reached is not the one the allowed address names)"),
                true,
            );
            // OCSF: an Open that failed (the caller killed), validated.
            let o = ocsf::validated_kinds(
                &ocsf_path,
                &["network.connect"],
                &[4001],
                EVENT_TIMEOUT,
                |o| ocsf::by_seq(o, &e["seq"]).is_some(),
            )?;
            let o = ocsf::by_seq(&o, &e["seq"]).unwrap_or_default();
            check!(
                c,
                o["activity_id"] == 1
                    && o["status_id"] == 2
                    && o["disposition"] == "Blocked"
                    && o["unmapped"]["network"]["peer_path"] == s(&other).as_str(),
                "OCSF of the killed connect: {}",
                compact(&o)
            );
        }
        Err(err) => c.fail(format!("no killed unix connect reported: {err:#}")),
    }
    c.finish()
}

// ===== spawners =====

/// A tmux server started before the run runs a command for the run's
/// client: the command has no run, the client's connect to the server's
/// socket is reported with the run, and under enforce it fails.
#[test]
fn a_tmux_server_outside_the_run_is_seen_and_refused_under_enforce() -> Result<()> {
    let tmp = TempDir::new("tmux")?;
    let sock = tmp.path().join("tmux.sock");
    let started = Command::new("tmux")
        .arg("-S")
        .arg(&sock)
        .args([
            "new-session",
            "-d",
            "-s",
            "sensor-test",
            "/usr/bin/sleep 120",
        ])
        .output()?;
    ensure!(started.status.success(), "tmux server: {started:?}");
    let _server = TmuxServer(sock.clone());
    let mut exec = base_exec()?;
    exec.push("/usr/bin/tmux".into());
    let config = format!(
        "{}{}",
        policy("open", "audit", &exec, &[], &[]),
        policy("closed", "enforce", &exec, &[], &[])
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let m1 = marker();
    let m2 = marker();
    let t1 = tmp.path().join("escaped-1");
    let t2 = tmp.path().join("escaped-2");
    for (agent, policy_name, m, t) in [("tmux-a", "open", &m1, &t1), ("tmux-e", "closed", &m2, &t2)]
    {
        let script = format!(
            "/usr/bin/tmux -S {} new-window '/usr/bin/true {m}; /usr/bin/touch {}'\necho \"tmux: $?\"\n",
            s(&sock),
            s(t)
        );
        launch_sh(&d, agent, policy_name, &script)?;
    }
    let mut c = Checks::new();
    check!(
        c,
        wait_for_file(&t1, EVENT_TIMEOUT),
        "in audit, the tmux server ran the command (the escape works)"
    );
    thread::sleep(Duration::from_secs(1));
    check!(
        c,
        !t2.exists(),
        "under enforce, the tmux server never got the command"
    );
    let evs = d.events()?;
    match true_exec(&evs, &m1) {
        Some(e) => check!(
            c,
            e["run"].is_null(),
            "the escaped command runs outside the run: {}",
            compact(e)
        ),
        None => c.fail("the escaped command's exec was not seen".into()),
    }
    let attempts = unix_connects(&evs, &s(&sock));
    let audit = attempts.iter().find(|e| e["run"]["agent"] == "tmux-a");
    check!(
        c,
        audit.is_some_and(|e| e["policy"]["verdict"] == "deny" && e["policy"]["enforced"] == false),
        "the audit run's connect to the tmux server is reported as a denial: {:?}",
        audit.map(|e| compact(e))
    );
    let enforce = attempts.iter().find(|e| e["run"]["agent"] == "tmux-e");
    check!(
        c,
        enforce.is_some_and(|e| e["policy"]["enforced"] == true && e["network"]["errno"] == 1),
        "the enforce run's connect to the tmux server failed with EPERM: {:?}",
        enforce.map(|e| compact(e))
    );
    check!(
        c,
        true_exec(&evs, &m2).is_none(),
        "nothing ran for the enforce run"
    );
    c.finish()
}

/// Kills the tmux server on drop.
struct TmuxServer(PathBuf);

impl Drop for TmuxServer {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.0)
            .arg("kill-server")
            .output();
    }
}

/// `at` with atd: the job runs under atd, outside the run. There is no
/// socket: `at` writes the job to atd's spool and signals it. What the run
/// does is an exec of `at` (reported with the run; refused under enforce
/// unless `at` is allowed).
#[test]
fn at_jobs_run_outside_the_run_and_at_is_refused_under_enforce() -> Result<()> {
    let _atd = start_atd()?;
    let tmp = TempDir::new("at")?;
    let exec = base_exec()?;
    let mut with_at = exec.clone();
    with_at.push("/usr/bin/at".into());
    let config = format!(
        "{}{}",
        policy("open", "audit", &with_at, &[], &[]),
        policy("closed", "enforce", &exec, &[], &[])
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let m1 = marker();
    let m2 = marker();
    let t1 = tmp.path().join("at-1");
    let t2 = tmp.path().join("at-2");
    let job = |m: &str, t: &Path| {
        format!(
            "echo '/usr/bin/true {m}; /usr/bin/touch {}' | /usr/bin/at now 2>/dev/null\necho \"at: $?\"\n",
            s(t)
        )
    };
    let out1 = launch_sh(&d, "at-a", "open", &job(&m1, &t1))?;
    let out2 = launch_sh(&d, "at-e", "closed", &job(&m2, &t2))?;
    let mut c = Checks::new();
    check!(
        c,
        outputs(&out1).get("at").map(String::as_str) == Some("0"),
        "at queues the job in the audit run: {:?}",
        text(&out1.stderr)
    );
    check!(
        c,
        outputs(&out2).get("at") == Some(&KILLED.to_string()),
        "at is killed under enforce (it is not in exec.allow): {:?}",
        outputs(&out2)
    );
    check!(
        c,
        wait_for_file(&t1, Duration::from_secs(75)),
        "atd ran the audit run's job"
    );
    // The job's touch is done; its exec may still be on its way through the
    // daemon's outputs.
    let _ = d.wait_events(EVENT_TIMEOUT, |evs| true_exec(evs, &m1).is_some());
    let evs = d.events()?;
    match true_exec(&evs, &m1) {
        Some(e) => check!(
            c,
            e["run"].is_null(),
            "the job runs outside the run: {}",
            compact(e)
        ),
        None => c.fail("the job's exec was not seen".into()),
    }
    let at_exec = evs.iter().find(|e| {
        e["kind"] == "process.exec"
            && e["process"]["exe"] == "/usr/bin/at"
            && e["run"]["agent"] == "at-a"
    });
    check!(
        c,
        at_exec.is_some(),
        "the run's exec of at is reported with the run"
    );
    check!(c, !t2.exists(), "no job of the enforce run ran");
    c.finish()
}

/// Starts atd in the foreground (it signals nothing back; `at` finds it by
/// its pid file).
fn start_atd() -> Result<Bg> {
    fs::create_dir_all("/var/spool/cron/atjobs")?;
    fs::create_dir_all("/var/spool/cron/atspool")?;
    let _ = Command::new("pkill").args(["-x", "atd"]).status();
    let mut cmd = Command::new("/usr/sbin/atd");
    cmd.arg("-f").stdout(Stdio::null()).stderr(Stdio::null());
    die_with_parent(&mut cmd);
    let child = cmd.spawn().context("start atd (apt-get install at)")?;
    thread::sleep(Duration::from_millis(500));
    Ok(Bg(child))
}

/// An ssh to an sshd on loopback: the remote command runs under sshd,
/// outside the run; the run's TCP connect is reported, and refused under
/// enforce (loopback is not in its connect.allow).
#[test]
fn ssh_to_a_loopback_sshd_is_seen_and_refused_under_enforce() -> Result<()> {
    let tmp = TempDir::new("sshd")?;
    let (port, _sshd, key) = start_sshd(tmp.path())?;
    let mut exec = base_exec()?;
    exec.push("/usr/bin/ssh".into());
    let addr = format!("127.0.0.1:{port}");
    let config = format!(
        "{}{}",
        policy("open", "audit", &exec, &[], &[]),
        policy("closed", "enforce", &exec, &[], &[])
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let m1 = marker();
    let m2 = marker();
    let ssh = |m: &str| {
        format!(
            "/usr/bin/ssh -p {port} -i {} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null \
             -o BatchMode=yes -o ConnectTimeout=5 root@127.0.0.1 /usr/bin/true {m} 2>/dev/null\n\
             echo \"ssh: $?\"\n",
            s(&key)
        )
    };
    let out1 = launch_sh(&d, "ssh-a", "open", &ssh(&m1))?;
    let out2 = launch_sh(&d, "ssh-e", "closed", &ssh(&m2))?;
    let mut c = Checks::new();
    check!(
        c,
        outputs(&out1).get("ssh").map(String::as_str) == Some("0"),
        "ssh works from the audit run: {:?}",
        text(&out1.stderr)
    );
    check!(
        c,
        outputs(&out2).get("ssh").map(String::as_str) != Some("0"),
        "ssh fails from the enforce run: {:?}",
        outputs(&out2)
    );
    let _ = d.wait_for(EVENT_TIMEOUT, |e| {
        true_exec(std::slice::from_ref(e), &m1).is_some()
    });
    // The enforce run came second: its refused connect may still be on its
    // way to the output when m1's exec is there.
    let _ = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "network.connect" && e["run"]["agent"] == "ssh-e"
    });
    let evs = d.events()?;
    match true_exec(&evs, &m1) {
        Some(e) => check!(
            c,
            e["run"].is_null(),
            "the remote command runs outside the run: {}",
            compact(e)
        ),
        None => c.fail("the remote command's exec was not seen".into()),
    }
    check!(
        c,
        true_exec(&evs, &m2).is_none(),
        "nothing ran for the enforce run"
    );
    let connects = |agent: &str| -> Vec<&Value> {
        evs.iter()
            .filter(|e| {
                e["kind"] == "network.connect"
                    && e["run"]["agent"] == agent
                    && e["network"]["dst_port"] == port
            })
            .collect()
    };
    check!(
        c,
        connects("ssh-a")
            .iter()
            .any(|e| e["policy"]["verdict"] == "deny"),
        "the audit run's connect to sshd is reported as a denial ({addr})"
    );
    check!(
        c,
        connects("ssh-e")
            .iter()
            .any(|e| e["policy"]["enforced"] == true && e["network"]["errno"] == 1),
        "the enforce run's connect to sshd fails with EPERM"
    );
    c.finish()
}

/// Starts sshd on a free loopback port with a host key and a client key of
/// its own: (port, the server, the client's private key).
fn start_sshd(dir: &Path) -> Result<(u16, Bg, PathBuf)> {
    fs::create_dir_all("/run/sshd")?;
    let host_key = dir.join("host_ed25519");
    let client_key = dir.join("client_ed25519");
    for key in [&host_key, &client_key] {
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(key)
            .output()?;
        ensure!(out.status.success(), "ssh-keygen: {out:?}");
    }
    let authorized = dir.join("authorized_keys");
    fs::copy(client_key.with_extension("pub"), &authorized)?;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.local_addr()?.port()
    };
    let config = dir.join("sshd_config");
    fs::write(
        &config,
        format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {}\nAuthorizedKeysFile {}\n\
             PermitRootLogin prohibit-password\nPasswordAuthentication no\nUsePAM no\n\
             StrictModes no\nPidFile none\n",
            s(&host_key),
            s(&authorized)
        ),
    )?;
    let mut cmd = Command::new("/usr/sbin/sshd");
    cmd.arg("-D")
        .arg("-e")
        .arg("-f")
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .context("start sshd (apt-get install openssh-server)")?;
    let server = Bg(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("sshd did not listen on port {port}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok((port, server, client_key))
}

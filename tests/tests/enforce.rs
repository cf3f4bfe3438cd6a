//! Kernel enforcement of allow-list policies (`mode = "enforce"`) on the real
//! kernel: a denied exec is killed with SIGKILL before its first instruction,
//! a denied connect (TCP, UDP, IPv4, IPv6, io_uring) or unconnected UDP
//! sendto fails with EPERM, forks beyond `max_processes` are killed, sub-runs
//! beyond `max_depth` are refused, every denial is reported
//! (`policy.enforced = true`, then a `policy.violation`), processes outside
//! runs are never blocked, and the kernel keeps enforcing across a daemon
//! killed with SIGKILL and across reloads (good or refused). The bypass test
//! tries the usual ways around an exec allow-list.
//!
//! Most tests use a copy of `/usr/bin/touch` in a temp dir as the denied
//! binary, so "did it run" is "did the file it would touch appear".
//! Network tests use loopback addresses only (127.0.0.0/8 and ::1).
//!
//! Run as root: `cargo test -p sensor-tests --test enforce -- --test-threads=1`.

use std::fs::{self};
use std::net::{TcpListener, UdpSocket};
use std::os::unix::fs::symlink;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sensor_tests::enforce::*;
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, canonical_str, check, compact, daemon_on_config, dump,
    helper_bin, marker, run_with_timeout, sensor_bin, text,
};
use serde_json::Value;

/// The test helper (its directory is allowed by every enforce policy here).
const HELPER: &str = helper_bin!();

// ===== exec =====

#[test]
fn denied_exec_is_killed_before_its_first_instruction_and_reported() -> Result<()> {
    let fx = Fixture::new("enf-exec")?;
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "");
    let d = Daemon::start_with(Some(&config), &[])?;
    let m = marker();
    let target = fx.target("basic");
    let script = format!(
        "/usr/bin/true {m} before\n{denied} {t}\necho \"denied: $?\"\n/usr/bin/true {m} after\n",
        denied = fx.denied,
        t = s(&target)
    );
    let out = launch_sh(&d, "enf-exec", "p", &script)?;
    let mut c = Checks::new();
    check!(
        c,
        out.status.success(),
        "the run's shell goes on after a denial and exits 0: {}",
        describe(&out)
    );
    check!(
        c,
        outputs(&out).get("denied") == Some(&KILLED.to_string()),
        "the shell sees its child killed by SIGKILL ({KILLED}): {}",
        describe(&out)
    );
    // The command `sensor launch` itself execs is checked too.
    let launched = fx.target("launched");
    let (_, out2) = run_with_timeout(
        &mut d.launch_cmd(
            "enf-exec-2",
            &["--policy", "p"],
            &[&fx.denied, &s(&launched)],
        ),
        RUN_TIMEOUT,
    )?;
    check!(
        c,
        out2.status.signal() == Some(libc::SIGKILL),
        "`sensor launch --policy p -- DENIED` dies of SIGKILL: {}",
        describe(&out2)
    );

    wait_denied(&d, &[s(&target), s(&launched)])?;
    d.wait_for(EVENT_TIMEOUT, |e| {
        is_exec_ok(e) && argv_eq(e, &m) && argv_eq(e, "after")
    })
    .context("the run goes on after the denial: the exec of `/usr/bin/true MARKER after`")?;
    let evs = d.events()?;
    check_killed(
        &mut c,
        "denied exec",
        &evs,
        &s(&target),
        &target,
        "p",
        Some(EXEC_NO_MATCH),
    );
    if let Some(e) = denied_exec(&evs, &s(&target)) {
        check!(
            c,
            e["process"]["exe"] == fx.denied.as_str() && e["run"]["agent"] == "enf-exec",
            "the denied exec names the file and the run: {}",
            compact(e)
        );
    }
    check_killed(
        &mut c,
        "the launched command",
        &evs,
        &s(&launched),
        &launched,
        "p",
        Some(EXEC_NO_MATCH),
    );
    for tag in ["before", "after"] {
        match evs
            .iter()
            .find(|e| is_exec_ok(e) && argv_eq(e, &m) && argv_eq(e, tag))
        {
            Some(e) => check_allow(
                &mut c,
                &format!("allowed exec ({tag})"),
                e,
                "p",
                "exec.allow /usr/bin/true",
            ),
            None => c.fail(format!("no exec of /usr/bin/true {m} {tag}")),
        }
    }
    check_tools_allowed(&mut c, &evs)?;
    c.finish()
}

#[test]
fn exec_rules_decide_by_file_identity_directory_and_glob() -> Result<()> {
    let tmp = TempDir::new("enf-rules")?;
    let t = tmp.path();
    let tools = t.join("tools");
    fs::create_dir_all(tools.join("sub"))?;
    fs::create_dir_all(t.join("tools-extra"))?;
    fs::create_dir_all(t.join("kit-1/bin"))?;
    fs::create_dir_all(t.join("other/bin"))?;
    for rel in [
        "tools/mytrue",
        "tools/sub/mytrue",
        "tools-extra/mytrue",
        "true-copy",
        "kit-1/bin/mytrue",
        "other/bin/mytrue",
    ] {
        fs::copy("/usr/bin/true", t.join(rel))?;
    }
    symlink("/usr/bin/true", t.join("true-link"))?;
    // A hard link needs the same filesystem; skip that case otherwise.
    let hard = fs::hard_link("/usr/bin/true", t.join("true-hard")).is_ok();
    let dir_rule = format!("{}/", s(&tools));
    // A glob ending in '/' names directories: everything under each match.
    let dir_glob = format!("{}/kit-*/", s(t));
    let mut exec = vec![
        "/usr/bin/dash".to_owned(),
        "/usr/bin/true".to_owned(),
        dir_rule.clone(),
        "/usr/bin/base*".to_owned(),
        dir_glob.clone(),
    ];
    exec.extend(bin_dirs()?);
    let config = policy_toml::<_, &str>("p", "enforce", &exec, &[], "");
    let d = Daemon::start_with(Some(&config), &[])?;

    let true_rule = "exec.allow /usr/bin/true".to_owned();
    let dir_allow = format!("exec.allow {dir_rule}");
    // (case, path executed, Some(rule that allows it) | None: denied)
    let mut cases: Vec<(&str, String, Option<String>)> = vec![
        ("exact", "/usr/bin/true".into(), Some(true_rule.clone())),
        (
            "symlink-to-allowed",
            s(&t.join("true-link")),
            Some(true_rule.clone()),
        ),
        ("in-dir", s(&tools.join("mytrue")), Some(dir_allow.clone())),
        (
            "in-subdir",
            s(&tools.join("sub/mytrue")),
            Some(dir_allow.clone()),
        ),
        ("lookalike-dir", s(&t.join("tools-extra/mytrue")), None),
        ("copy-of-allowed", s(&t.join("true-copy")), None),
        (
            "glob",
            "/usr/bin/basename".into(),
            Some("exec.allow /usr/bin/base*".into()),
        ),
        ("glob-no-match", "/usr/bin/dirname".into(), None),
        (
            "dir-glob",
            s(&t.join("kit-1/bin/mytrue")),
            Some(format!("exec.allow {dir_glob}")),
        ),
        ("dir-glob-no-match", s(&t.join("other/bin/mytrue")), None),
    ];
    if hard {
        cases.push((
            "hardlink-to-allowed",
            s(&t.join("true-hard")),
            Some(true_rule.clone()),
        ));
    }
    let m = marker();
    let script: String = cases
        .iter()
        .map(|(name, path, _)| format!("{path} {m}-{name} >/dev/null\necho \"{name}: $?\"\n"))
        .collect();
    let out = launch_sh(&d, "enf-rules", "p", &script)?;
    let got = outputs(&out);
    let needles: Vec<String> = cases
        .iter()
        .map(|(name, _, _)| format!("{m}-{name}"))
        .collect();
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            cases.iter().zip(&needles).all(|((_, _, allow), n)| {
                exec_with(evs, n).is_some_and(|e| allow.is_some() || exit_of(evs, e).is_some())
            })
        },
        |_| String::new(),
    );
    d.check_alive()?;
    let evs = d.events()?;
    let mut c = Checks::new();
    for ((name, path, allow), needle) in cases.iter().zip(&needles) {
        let what = format!("{name} ({path})");
        let want = if allow.is_some() { 0 } else { KILLED };
        check!(
            c,
            got.get(*name) == Some(&want.to_string()),
            "{what}: exit status {:?}, want {want} ({}): {}",
            got.get(*name),
            if allow.is_some() {
                "allowed, runs"
            } else {
                "denied, killed"
            },
            describe(&out)
        );
        let Some(e) = exec_with(&evs, needle) else {
            c.fail(format!("{what}: no successful process.exec with {needle}"));
            continue;
        };
        match allow {
            Some(rule) => check_allow(&mut c, &what, e, "p", rule),
            None => {
                check_deny(&mut c, &what, e, "p", Some(EXEC_NO_MATCH), true);
                check_violation(&mut c, &what, &evs, e);
            }
        }
    }
    c.finish()
}

#[test]
fn running_the_dynamic_loader_directly_is_denied_unless_it_is_an_exact_rule() -> Result<()> {
    let loader = dynamic_loader()?;
    let loader_real = canonical_str(loader)?;
    let loader_dir = format!(
        "{}/",
        Path::new(&loader_real)
            .parent()
            .ok_or_else(|| anyhow!("loader without a directory"))?
            .display()
    );
    let mut dirs = vec![
        "/usr/bin/dash".to_owned(),
        "/usr/bin/true".to_owned(),
        "/usr/bin/".to_owned(),
        loader_dir.clone(),
    ];
    dirs.extend(bin_dirs()?);
    let mut exact = vec![
        "/usr/bin/dash".to_owned(),
        "/usr/bin/true".to_owned(),
        loader.to_owned(),
    ];
    exact.extend(bin_dirs()?);
    let config = format!(
        "{}{}",
        policy_toml::<_, &str>("dirs", "enforce", &dirs, &[], ""),
        policy_toml::<_, &str>("exact", "enforce", &exact, &[], "")
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let m = marker();
    let mut c = Checks::new();

    // A directory rule that covers the loader's file does not allow running
    // it directly (it would run any file).
    let script = format!(
        "/usr/bin/true {m}-plain\necho \"plain: $?\"\n{loader} /usr/bin/true {m}-dirs\necho \"loader: $?\"\n"
    );
    let out = launch_sh(&d, "enf-loader-dirs", "dirs", &script)?;
    let got = outputs(&out);
    check!(
        c,
        got.get("plain").map(String::as_str) == Some("0"),
        "/usr/bin/true itself runs: {}",
        describe(&out)
    );
    check!(
        c,
        got.get("loader") == Some(&KILLED.to_string()),
        "`{loader} /usr/bin/true` under a directory rule for {loader_dir} is killed: {}",
        describe(&out)
    );
    // An exact rule for the loader allows it.
    let script = format!("{loader} /usr/bin/true {m}-exact\necho \"loader: $?\"\n");
    let out = launch_sh(&d, "enf-loader-exact", "exact", &script)?;
    check!(
        c,
        outputs(&out).get("loader").map(String::as_str) == Some("0"),
        "`{loader} /usr/bin/true` with the loader as an exact rule runs: {}",
        describe(&out)
    );

    let dirs_needle = format!("{m}-dirs");
    let exact_needle = format!("{m}-exact");
    wait_denied(&d, std::slice::from_ref(&dirs_needle))?;
    let _ = d.wait_for(EVENT_TIMEOUT, |e| {
        is_exec_ok(e) && argv_eq(e, &exact_needle)
    });
    let evs = d.events()?;
    match denied_exec(&evs, &dirs_needle) {
        Some(e) => {
            check!(
                c,
                e["process"]["exe"] == loader_real.as_str(),
                "the denied exec is the loader's: {}",
                compact(e)
            );
            // The rule text of a loader denial is not fixed by the contract.
            check_deny(&mut c, "loader run directly", e, "dirs", None, true);
            check_violation(&mut c, "loader run directly", &evs, e);
            if let Some(x) = exit_of(&evs, e) {
                check!(
                    c,
                    x["process"]["exit_signal"] == libc::SIGKILL,
                    "the loader was killed: {}",
                    compact(x)
                );
            }
        }
        None => c.fail(format!(
            "no denied exec of the loader; execs:\n{}",
            dump(&execs_with(&evs, &dirs_needle))
        )),
    }
    match exec_with(&evs, &exact_needle) {
        Some(e) => check_allow(
            &mut c,
            "loader as an exact rule",
            e,
            "exact",
            &format!("exec.allow {loader}"),
        ),
        None => c.fail("no exec of the loader under the exact rule".into()),
    }
    c.finish()
}

#[test]
fn a_script_is_judged_by_its_interpreter() -> Result<()> {
    let fx = Fixture::new("enf-script")?;
    let scripts = fx.dir().join("scripts");
    fs::create_dir_all(&scripts)?;
    let ran = fx.target("script-ran");
    let good = scripts.join("good.sh");
    write_exe(&good, &format!("#!/usr/bin/dash\n: > {}\n", s(&ran)))?;
    let bad = scripts.join("bad.sh");
    write_exe(&bad, &format!("#!{}\n", fx.denied))?;
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "");
    let d = Daemon::start_with(Some(&config), &[])?;
    let m = marker();
    let target = fx.target("shebang");
    let script = format!(
        "{good} {m}\necho \"good: $?\"\n{bad} {t}\necho \"bad: $?\"\n",
        good = s(&good),
        bad = s(&bad),
        t = s(&target)
    );
    let out = launch_sh(&d, "enf-script", "p", &script)?;
    let got = outputs(&out);
    let mut c = Checks::new();
    check!(
        c,
        got.get("good").map(String::as_str) == Some("0") && ran.exists(),
        "a script in a directory no rule names, run by an allowed interpreter (dash), runs: {}",
        describe(&out)
    );
    check!(
        c,
        got.get("bad") == Some(&KILLED.to_string()),
        "a script whose interpreter is the denied binary is killed: {}",
        describe(&out)
    );
    wait_denied(&d, &[s(&target)])?;
    let _ = d.wait_for(EVENT_TIMEOUT, |e| is_exec_ok(e) && argv_eq(e, &m));
    let evs = d.events()?;
    match exec_with(&evs, &m) {
        Some(e) => {
            check_allow(
                &mut c,
                "script run by dash",
                e,
                "p",
                "exec.allow /usr/bin/dash",
            );
            check!(
                c,
                e["process"]["exe"] == "/usr/bin/dash",
                "the exe of a script is its interpreter: {}",
                compact(e)
            );
        }
        None => c.fail(format!("no exec of {}", s(&good))),
    }
    check_killed(
        &mut c,
        "script with the denied binary as interpreter",
        &evs,
        &s(&target),
        &target,
        "p",
        Some(EXEC_NO_MATCH),
    );
    c.finish()
}

#[test]
fn bypasses_of_a_denied_binary_are_all_killed_and_reported() -> Result<()> {
    let fx = Fixture::new("enf-bypass")?;
    let scripts = fx.dir().join("scripts");
    fs::create_dir_all(&scripts)?;
    fs::create_dir_all(fx.dir().join("links"))?;
    let shebang = scripts.join("shebang");
    write_exe(&shebang, &format!("#!{}\n", fx.denied))?;
    let loader = dynamic_loader()?;
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "");
    let d = Daemon::start_with(Some(&config), &[])?;

    let denied = fx.denied.as_str();
    let sym = fx.at("links/sym");
    let hard = fx.at("links/hard");
    let copy = fx.at("copy-of-touch");
    let denied_dir = fx.at("denied");
    let h = HELPER;
    let o = |name: &str| s(&fx.target(name));
    // (attempt, shell line); each attempt would create out/<attempt>.
    let attempts: Vec<(&str, String)> = vec![
        ("symlink", format!("{sym} {}", o("symlink"))),
        ("hardlink", format!("{hard} {}", o("hardlink"))),
        (
            "proc-root",
            format!("/proc/self/root{denied} {}", o("proc-root")),
        ),
        (
            "dotdot",
            format!("{denied_dir}/../denied/touch {}", o("dotdot")),
        ),
        ("copy", format!("{copy} {}", o("copy"))),
        ("loader", format!("{loader} {denied} {}", o("loader"))),
        ("memfd", format!("{h} memfd-exec {denied} {}", o("memfd"))),
        (
            "execveat",
            format!("{h} execveat-empty {denied} {}", o("execveat")),
        ),
        ("env", format!("/usr/bin/env {denied} {}", o("env"))),
        ("nohup", format!("/usr/bin/nohup {denied} {}", o("nohup"))),
        (
            "xargs",
            format!("echo {} | /usr/bin/xargs {denied}", o("xargs")),
        ),
        (
            "find-exec",
            format!(
                "/usr/bin/find {denied_dir} -maxdepth 0 -exec {denied} {} ';'",
                o("find-exec")
            ),
        ),
        (
            "thread-exec",
            format!("{h} thread-exec {denied} {}", o("thread-exec")),
        ),
        ("shebang", format!("{} {}", s(&shebang), o("shebang"))),
        (
            "setsid-double-fork",
            format!(
                "(/usr/bin/setsid -f {denied} {} >/dev/null 2>&1 &)",
                o("setsid-double-fork")
            ),
        ),
    ];
    let mut script = format!(
        "/usr/bin/ln -s {denied} {sym} || echo 'setup: ln -s failed'\n\
         /usr/bin/ln {denied} {hard} || echo 'setup: ln failed'\n\
         /usr/bin/cp {denied} {copy} || echo 'setup: cp failed'\n"
    );
    for (name, line) in &attempts {
        script.push_str(&format!("{line}\necho \"{name}: $?\"\n"));
    }
    let out = launch_sh(&d, "enf-bypass", "p", &script)?;
    let needles: Vec<String> = attempts.iter().map(|(name, _)| o(name)).collect();
    wait_denied(&d, &needles)?;
    let evs = d.events()?;
    let mut c = Checks::new();
    check!(
        c,
        !text(&out.stdout).contains("setup:"),
        "setting up the links and the copy failed: {}",
        describe(&out)
    );
    for ((name, line), needle) in attempts.iter().zip(&needles) {
        let what = format!("bypass {name} (`{line}`)");
        // A loader denial may name its own rule.
        let rule = (*name != "loader").then_some(EXEC_NO_MATCH);
        check_killed(&mut c, &what, &evs, needle, &fx.target(name), "p", rule);
    }
    check_tools_allowed(&mut c, &evs)?;
    if c.failed() {
        c.fail(format!("(context) the run's output: {}", describe(&out)));
    }
    c.finish()
}

// ===== processes outside runs =====

#[test]
fn processes_outside_any_run_are_never_blocked() -> Result<()> {
    let fx = Fixture::new("enf-outside")?;
    let (listener, port) = listen("127.0.0.1")?;
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "");
    let d = Daemon::start_with(Some(&config), &[])?;
    let mut c = Checks::new();

    // In a run: both denied (so the policy is live).
    let inside = fx.target("inside");
    let script = format!(
        "{} {}\necho \"connect: $({HELPER} connect tcp 127.0.0.1:{port})\"\n",
        fx.denied,
        s(&inside)
    );
    let out = launch_sh(&d, "enf-outside", "p", &script)?;
    check!(
        c,
        !inside.exists(),
        "in the run, the denied binary ran: {}",
        describe(&out)
    );
    check!(
        c,
        outputs(&out).get("connect").map(String::as_str) == Some("errno=1"),
        "in the run, the connect was not refused with EPERM: {}",
        describe(&out)
    );
    check!(
        c,
        !accepted(&listener)?,
        "in the run, a connection reached the listener"
    );

    // Outside any run: the same binary and the same address work.
    let outside = fx.target("outside");
    let (_, out) = run_with_timeout(
        Command::new(&fx.denied).arg(&outside),
        Duration::from_secs(10),
    )?;
    check!(
        c,
        out.status.success() && outside.exists(),
        "outside any run, the binary must run: {}",
        describe(&out)
    );
    let (_, out) = run_with_timeout(
        Command::new(HELPER).args(["connect", "tcp", &format!("127.0.0.1:{port}")]),
        Duration::from_secs(10),
    )?;
    check!(
        c,
        text(&out.stdout).trim() == "ok",
        "outside any run, the connect must succeed: {}",
        describe(&out)
    );
    check!(
        c,
        accepted(&listener)?,
        "outside any run, the listener got no connection"
    );
    let e = d.wait_for(EVENT_TIMEOUT, |e| is_exec_ok(e) && argv_eq(e, &s(&outside)))?;
    check!(
        c,
        e["run"].is_null() && e.get("policy").is_none(),
        "an exec outside runs carries no run and no policy: {}",
        compact(&e)
    );
    c.finish()
}

// ===== network =====

#[test]
fn denied_tcp_connect_fails_with_eperm_and_is_reported() -> Result<()> {
    let (l_allowed, p_allowed) = listen("127.0.0.1")?;
    let (l_denied, p_denied) = listen("127.0.0.1")?;
    let rule = format!("127.0.0.1:{p_allowed}");
    let config = policy_toml("p", "enforce", &base_exec()?, &[&rule], "");
    let d = Daemon::start_with(Some(&config), &[])?;
    let script = format!(
        "echo \"allowed: $({HELPER} connect tcp 127.0.0.1:{p_allowed})\"\n\
         echo \"denied: $({HELPER} connect tcp 127.0.0.1:{p_denied})\"\n"
    );
    let out = launch_sh(&d, "enf-tcp", "p", &script)?;
    let got = outputs(&out);
    let mut c = Checks::new();
    check!(
        c,
        got.get("allowed").map(String::as_str) == Some("ok"),
        "the allowed connect succeeds: {}",
        describe(&out)
    );
    check!(
        c,
        got.get("denied").map(String::as_str) == Some("errno=1"),
        "the denied connect fails with EPERM (errno=1): {}",
        describe(&out)
    );
    check!(
        c,
        accepted(&l_allowed)?,
        "the allowed listener got no connection"
    );
    check!(
        c,
        !accepted(&l_denied)?,
        "the denied listener got a connection"
    );
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            connect_event(evs, "tcp", "127.0.0.1", p_denied)
                .is_some_and(|e| violation_after(evs, e).is_some())
                && connect_event(evs, "tcp", "127.0.0.1", p_allowed).is_some()
        },
        |_| String::new(),
    );
    let evs = d.events()?;
    check_denied_connect(
        &mut c,
        "denied TCP connect",
        &evs,
        ("tcp", "127.0.0.1", p_denied),
        "p",
    );
    match connect_event(&evs, "tcp", "127.0.0.1", p_allowed) {
        Some(e) => {
            check_allow(
                &mut c,
                "allowed TCP connect",
                e,
                "p",
                &format!("connect.allow {rule}"),
            );
            check!(
                c,
                e["network"]["result"] == "ok",
                "the allowed connect's result: {}",
                compact(e)
            );
        }
        None => c.fail(format!(
            "no network.connect for the allowed connect:\n{}",
            dump(&run_connects(&evs))
        )),
    }
    c.finish()
}

/// A run's flood of denied connect()s: the syscall's exit sends the
/// first records of each second and counts the rest as suppressed (a
/// record assembled in the ring, then discarded): none is lost or counted
/// twice, and the reader goes on past the discarded ones (the allowed
/// connect after the flood is reported).
#[test]
fn a_flood_of_denied_connects_is_rate_limited_and_every_one_accounted_for() -> Result<()> {
    const FLOOD: usize = 1000;
    let (l_allowed, p_allowed) = listen("127.0.0.1")?;
    let (l_denied, p_denied) = listen("127.0.0.1")?;
    let rule = format!("127.0.0.1:{p_allowed}");
    let config = policy_toml("p", "enforce", &base_exec()?, &[&rule], "");
    let d = Daemon::start_with(Some(&config), &[])?;
    let flood = format!("tcp 127.0.0.1:{p_denied} ").repeat(FLOOD);
    // Shell builtins only to count: the policy allows few binaries.
    let script = format!(
        "n=0\nfor r in $({HELPER} connect {flood}); do\n  [ \"$r\" = errno=1 ] && n=$((n+1))\ndone\n\
         echo \"denied: $n\"\n\
         echo \"allowed: $({HELPER} connect tcp 127.0.0.1:{p_allowed})\"\n"
    );
    let out = launch_sh(&d, "enf-flood", "p", &script)?;
    let got = outputs(&out);
    let mut c = Checks::new();
    check!(
        c,
        got.get("denied") == Some(&FLOOD.to_string()),
        "every connect of the flood fails with EPERM: {}",
        describe(&out)
    );
    check!(
        c,
        got.get("allowed").map(String::as_str) == Some("ok"),
        "the allowed connect after the flood succeeds: {}",
        describe(&out)
    );
    check!(
        c,
        accepted(&l_allowed)?,
        "the allowed listener got no connection"
    );
    check!(
        c,
        !accepted(&l_denied)?,
        "the denied listener got a connection"
    );
    d.wait_until(
        EVENT_TIMEOUT,
        |evs| connect_event(evs, "tcp", "127.0.0.1", p_allowed).is_some(),
        |evs| {
            format!(
                "the allowed connect after the flood:\n{}",
                dump(&run_connects(evs))
            )
        },
    )?;
    let evs = d.events()?;
    let reported = evs
        .iter()
        .filter(|e| {
            e["kind"] == "network.connect"
                && e["network"]["dst_port"] == p_denied
                && e["policy"]["verdict"] == "deny"
                && e["policy"]["enforced"] == true
                && e["network"]["result"] == "error"
        })
        .count();
    // The suppressed count reaches the status on the reader's next tick.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let (status, suppressed) = loop {
        let status = d.status_json()?;
        let suppressed = status["denials_suppressed"].as_u64().unwrap_or(0);
        let accounted = reported + usize::try_from(suppressed).unwrap_or(usize::MAX);
        if accounted >= FLOOD || Instant::now() >= deadline {
            break (status, suppressed);
        }
        thread::sleep(Duration::from_millis(200));
    };
    let lost = status["lost"]["total"].as_u64().unwrap_or(u64::MAX);
    check!(c, lost == 0, "no record lost: {status}");
    check!(
        c,
        reported > 0 && suppressed > 0,
        "some denials reported ({reported}), the rest suppressed ({suppressed})"
    );
    check!(
        c,
        reported + usize::try_from(suppressed).unwrap_or(usize::MAX) == FLOOD,
        "reported ({reported}) + suppressed ({suppressed}) = the {FLOOD} denied connects"
    );
    c.finish()
}

#[test]
fn connect_rules_decide_by_address_cidr_port_range_and_host_name() -> Result<()> {
    let (l_exact, p_exact) = listen("127.0.0.1")?;
    let (l_other, p_other) = listen("127.0.0.1")?;
    let (l_v6, p_v6) = listen("::1")?;
    let (l_v6_other, p_v6_other) = listen("::1")?;
    let (l_in, p_in) = listen("127.0.1.5")?;
    let (l_out, p_out) = listen("127.0.1.5")?;
    // A range that holds p_in and not p_out.
    let (lo, hi) = if p_in < p_out {
        (p_in, p_out - 1)
    } else {
        (p_out + 1, p_in)
    };
    // Same port as p_in, outside the CIDR (no listener if the port is taken).
    let l_net_out = TcpListener::bind(("127.0.2.5", p_in)).ok();
    if let Some(l) = &l_net_out {
        l.set_nonblocking(true)?;
    }
    let (l_net, p_net) = listen("127.0.3.9")?;
    let (l_lh, l_lh2, p_lh) = listen_pair("127.0.0.1", "127.0.0.2")?;

    let r_exact = format!("127.0.0.1:{p_exact}");
    let r_v6 = format!("[::1]:{p_v6}");
    let r_range = format!("127.0.1.0/24:{lo}-{hi}");
    let r_net = "127.0.3.0/24".to_owned();
    let r_host = format!("localhost:{p_lh}");
    // 10.0.0.0/8 is only parsed, never connected to (loopback tests only).
    let connect = [
        r_exact.clone(),
        r_v6.clone(),
        r_range.clone(),
        r_net.clone(),
        "10.0.0.0/8".to_owned(),
        r_host.clone(),
    ];
    let config = policy_toml("p", "enforce", &base_exec()?, &connect, "");
    let d = Daemon::start_with(Some(&config), &[])?;

    struct Case<'a> {
        name: &'static str,
        transport: &'static str,
        ip: &'static str,
        port: u16,
        /// The rule that allows it (None: denied).
        allow: Option<&'a str>,
        listener: Option<&'a TcpListener>,
    }
    let cases = [
        Case {
            name: "exact",
            transport: "tcp",
            ip: "127.0.0.1",
            port: p_exact,
            allow: Some(&r_exact),
            listener: Some(&l_exact),
        },
        Case {
            name: "exact-other-port",
            transport: "tcp",
            ip: "127.0.0.1",
            port: p_other,
            allow: None,
            listener: Some(&l_other),
        },
        Case {
            name: "ipv6-exact",
            transport: "tcp",
            ip: "::1",
            port: p_v6,
            allow: Some(&r_v6),
            listener: Some(&l_v6),
        },
        Case {
            name: "ipv6-other-port",
            transport: "tcp",
            ip: "::1",
            port: p_v6_other,
            allow: None,
            listener: Some(&l_v6_other),
        },
        Case {
            name: "cidr-port-in-range",
            transport: "tcp",
            ip: "127.0.1.5",
            port: p_in,
            allow: Some(&r_range),
            listener: Some(&l_in),
        },
        Case {
            name: "cidr-port-out-of-range",
            transport: "tcp",
            ip: "127.0.1.5",
            port: p_out,
            allow: None,
            listener: Some(&l_out),
        },
        Case {
            name: "outside-cidr",
            transport: "tcp",
            ip: "127.0.2.5",
            port: p_in,
            allow: None,
            listener: l_net_out.as_ref(),
        },
        Case {
            name: "cidr-any-port",
            transport: "tcp",
            ip: "127.0.3.9",
            port: p_net,
            allow: Some(&r_net),
            listener: Some(&l_net),
        },
        Case {
            name: "host-name",
            transport: "tcp",
            ip: "127.0.0.1",
            port: p_lh,
            allow: Some(&r_host),
            listener: Some(&l_lh),
        },
        Case {
            name: "host-name-other-address",
            transport: "tcp",
            ip: "127.0.0.2",
            port: p_lh,
            allow: None,
            listener: Some(&l_lh2),
        },
        Case {
            name: "udp-allowed",
            transport: "udp",
            ip: "127.0.0.1",
            port: p_exact,
            allow: Some(&r_exact),
            listener: None,
        },
        Case {
            name: "udp-denied",
            transport: "udp",
            ip: "127.0.0.1",
            port: p_other,
            allow: None,
            listener: None,
        },
        Case {
            name: "udp-ipv6-denied",
            transport: "udp",
            ip: "::1",
            port: p_v6_other,
            allow: None,
            listener: None,
        },
    ];
    let addr = |c: &Case| {
        if c.ip.contains(':') {
            format!("[{}]:{}", c.ip, c.port)
        } else {
            format!("{}:{}", c.ip, c.port)
        }
    };
    let script: String = cases
        .iter()
        .map(|k| {
            format!(
                "echo \"{}: $({HELPER} connect {} '{}')\"\n",
                k.name,
                k.transport,
                addr(k)
            )
        })
        .collect();
    let out = launch_sh(&d, "enf-net", "p", &script)?;
    let got = outputs(&out);
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            cases.iter().all(|k| {
                connect_event(evs, k.transport, k.ip, k.port)
                    .is_some_and(|e| k.allow.is_some() || violation_after(evs, e).is_some())
            })
        },
        |_| String::new(),
    );
    d.check_alive()?;
    let evs = d.events()?;
    let mut c = Checks::new();
    for k in &cases {
        let what = format!("{} ({} {})", k.name, k.transport, addr(k));
        let want = if k.allow.is_some() { "ok" } else { "errno=1" };
        check!(
            c,
            got.get(k.name).map(String::as_str) == Some(want),
            "{what}: the helper printed {:?}, want {want:?}: {}",
            got.get(k.name),
            describe(&out)
        );
        if let Some(l) = k.listener {
            let conn = accepted(l)?;
            check!(
                c,
                conn == k.allow.is_some(),
                "{what}: the listener {} a connection",
                if conn { "got" } else { "did not get" }
            );
        }
        match k.allow {
            Some(rule) => match connect_event(&evs, k.transport, k.ip, k.port) {
                Some(e) => {
                    let p = &e["policy"];
                    // A host-name rule may be reported as written or as
                    // the address it resolved to.
                    let rule_ok = if k.name == "host-name" {
                        p["rule"]
                            .as_str()
                            .is_some_and(|r| r.starts_with("connect.allow "))
                    } else {
                        p["rule"] == format!("connect.allow {rule}")
                    };
                    check!(
                        c,
                        p["name"] == "p"
                            && p["verdict"] == "allow"
                            && p["enforced"] == false
                            && rule_ok,
                        "{what}: want verdict allow by \"connect.allow {rule}\", enforced false: {}",
                        compact(e)
                    );
                }
                None => c.fail(format!("{what}: no network.connect event")),
            },
            None => check_denied_connect(&mut c, &what, &evs, (k.transport, k.ip, k.port), "p"),
        }
    }
    c.finish()
}

#[test]
fn unconnected_udp_sendto_to_a_denied_address_fails_with_eperm() -> Result<()> {
    let r_allowed = UdpSocket::bind("127.0.0.1:0")?;
    let p_allowed = r_allowed.local_addr()?.port();
    let r_denied = UdpSocket::bind("127.0.0.1:0")?;
    let p_denied = r_denied.local_addr()?.port();
    let r_denied6 = UdpSocket::bind("[::1]:0")?;
    let p_denied6 = r_denied6.local_addr()?.port();
    r_allowed.set_read_timeout(Some(Duration::from_secs(2)))?;
    r_denied.set_nonblocking(true)?;
    r_denied6.set_nonblocking(true)?;
    let rule = format!("127.0.0.1:{p_allowed}");
    let config = policy_toml("p", "enforce", &base_exec()?, &[&rule], "");
    let d = Daemon::start_with(Some(&config), &[])?;
    let script = format!(
        "echo \"allowed: $({HELPER} sendto udp 127.0.0.1:{p_allowed})\"\n\
         echo \"denied: $({HELPER} sendto udp 127.0.0.1:{p_denied})\"\n\
         echo \"denied6: $({HELPER} sendto udp '[::1]:{p_denied6}')\"\n"
    );
    let out = launch_sh(&d, "enf-sendto", "p", &script)?;
    let got = outputs(&out);
    let mut c = Checks::new();
    for (name, want) in [
        ("allowed", "ok"),
        ("denied", "errno=1"),
        ("denied6", "errno=1"),
    ] {
        check!(
            c,
            got.get(name).map(String::as_str) == Some(want),
            "sendto {name}: want {want:?}: {}",
            describe(&out)
        );
    }
    let mut buf = [0u8; 256];
    check!(
        c,
        r_allowed.recv_from(&mut buf).is_ok(),
        "the allowed datagram did not arrive"
    );
    check!(
        c,
        r_denied.recv_from(&mut buf).is_err() && r_denied6.recv_from(&mut buf).is_err(),
        "a denied datagram arrived"
    );
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            [("127.0.0.1", p_denied), ("::1", p_denied6)]
                .iter()
                .all(|(ip, port)| {
                    connect_event(evs, "udp", ip, *port)
                        .is_some_and(|e| violation_after(evs, e).is_some())
                })
        },
        |_| String::new(),
    );
    // The allowed datagram went first: any event for it is written by now.
    thread::sleep(Duration::from_millis(500));
    let evs = d.events()?;
    for (what, ip, port) in [
        ("denied sendto (IPv4)", "127.0.0.1", p_denied),
        ("denied sendto (IPv6)", "::1", p_denied6),
    ] {
        match connect_event(&evs, "udp", ip, port) {
            Some(e) => {
                check_deny(&mut c, what, e, "p", Some(CONNECT_NO_MATCH), true);
                check_violation(&mut c, what, &evs, e);
            }
            None => c.fail(format!(
                "{what}: no network.connect udp to {ip} port {port}:\n{}",
                dump(&run_connects(&evs))
            )),
        }
    }
    // An allowed datagram is reported once (issue 16: `sends` counts it, and
    // later reports come at the 2nd, 4th, 8th, ... datagram), never denied.
    match connect_event(&evs, "udp", "127.0.0.1", p_allowed) {
        Some(e) => {
            if e["policy"]["verdict"] != "allow" || e["network"]["sends"] != 1 {
                c.fail(format!(
                    "the allowed sendto should be reported once as allowed: {}",
                    compact(e)
                ));
            }
        }
        None => c.fail(format!(
            "the allowed unconnected sendto was not reported:\n{}",
            dump(&run_connects(&evs))
        )),
    }
    c.finish()
}

#[test]
fn io_uring_connect_to_a_denied_address_fails_with_eperm() -> Result<()> {
    let (l_allowed, p_allowed) = listen("127.0.0.1")?;
    let (l_denied, p_denied) = listen("127.0.0.1")?;
    let (l_denied6, p_denied6) = listen("::1")?;
    let rule = format!("127.0.0.1:{p_allowed}");
    let config = policy_toml("p", "enforce", &base_exec()?, &[&rule], "");
    let d = Daemon::start_with(Some(&config), &[])?;
    let script = format!(
        "echo \"allowed: $({HELPER} uring-connect 127.0.0.1:{p_allowed})\"\n\
         echo \"denied: $({HELPER} uring-connect 127.0.0.1:{p_denied})\"\n\
         echo \"denied6: $({HELPER} uring-connect '[::1]:{p_denied6}')\"\n"
    );
    let out = launch_sh(&d, "enf-uring", "p", &script)?;
    let got = outputs(&out);
    let mut c = Checks::new();
    for (name, want, l) in [
        ("allowed", "ok", &l_allowed),
        ("denied", "errno=1", &l_denied),
        ("denied6", "errno=1", &l_denied6),
    ] {
        check!(
            c,
            got.get(name).map(String::as_str) == Some(want),
            "io_uring connect {name}: want {want:?}: {}",
            describe(&out)
        );
        check!(
            c,
            accepted(l)? == (want == "ok"),
            "io_uring connect {name}: the listener's accept queue does not match {want:?}"
        );
    }
    // Each is reported, by the cgroup hook: an io_uring connect has no
    // connect() syscall (the hook sees io_uring_enter's number, or an io
    // worker's), so no sys_exit_connect would report one left for it.
    for (name, port, verdict) in [
        ("allowed", p_allowed, "allow"),
        ("denied", p_denied, "deny"),
        ("denied6", p_denied6, "deny"),
    ] {
        let reported = wait_run_connect(&d, "enf-uring", port);
        check!(
            c,
            reported
                .as_ref()
                .is_ok_and(|e| e["policy"]["verdict"] == verdict),
            "io_uring connect {name} (port {port}) reported with verdict {verdict:?}: {}",
            reported.map_or_else(|e| format!("{e:#}"), |e| compact(&e))
        );
    }
    c.finish()
}

// ===== limits =====

#[test]
fn max_processes_kills_forks_beyond_the_limit() -> Result<()> {
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "max_processes = 5\n");
    let d = Daemon::start_with(Some(&config), &[])?;
    // The helper is the run's first process (launch execs it in its pid):
    // with 5 at most, 4 children live and the 5th and 6th are killed.
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(
            "enf-maxproc",
            &["--policy", "p"],
            &[HELPER, "fork-children", "6"],
        ),
        RUN_TIMEOUT,
    )?;
    let stdout = text(&out.stdout);
    let children: Vec<(u32, String)> = stdout
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix("child=")?;
            let (pid, status) = rest.split_once(" status=")?;
            Some((pid.parse().ok()?, status.to_owned()))
        })
        .collect();
    ensure!(
        out.status.success() && children.len() == 6,
        "fork-children 6 did not report 6 children: {}",
        describe(&out)
    );
    let statuses: Vec<&str> = children.iter().map(|(_, st)| st.as_str()).collect();
    ensure!(
        statuses
            == [
                "exited:0",
                "exited:0",
                "exited:0",
                "exited:0",
                "signaled:9",
                "signaled:9"
            ],
        "with max_processes = 5 (the forking process included) the first 4 children live and \
         the 5th and 6th die of SIGKILL: {statuses:?}"
    );
    let killed: Vec<u32> = children
        .iter()
        .filter(|(_, st)| st == "signaled:9")
        .map(|(pid, _)| *pid)
        .collect();
    let spawn_of = |evs: &[Value], pid: u32| -> Option<Value> {
        evs.iter()
            .find(|e| e["kind"] == "process.spawn" && e["process"]["pid"] == pid)
            .cloned()
    };
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            killed
                .iter()
                .all(|pid| spawn_of(evs, *pid).is_some_and(|e| violation_after(evs, &e).is_some()))
        },
        |_| String::new(),
    );
    let evs = d.events()?;
    let mut c = Checks::new();
    for pid in &killed {
        let what = format!("the killed child {pid}");
        match spawn_of(&evs, *pid) {
            Some(e) => {
                check_deny(&mut c, &what, &e, "p", Some("max_processes 5"), true);
                check_violation(&mut c, &what, &evs, &e);
            }
            None => c.fail(format!("{what}: no process.spawn event")),
        }
    }
    c.finish()
}

#[test]
fn max_depth_refuses_a_sub_run_beyond_the_limit() -> Result<()> {
    let fx = Fixture::new("enf-depth")?;
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "max_depth = 1\n");
    let d = Daemon::start_with(Some(&config), &[])?;
    let sensor = s(&sensor_bin()?);
    let depth1 = fx.target("depth1");
    let depth2 = fx.target("depth2");
    let depth1_sh = fx.dir().join("depth1.sh");
    fs::write(
        &depth1_sh,
        format!(
            ": > {d1}\n{sensor} launch --agent enf-depth2 -- /bin/sh -c ': > {d2}'\necho \"depth2-exit: $?\"\n",
            d1 = s(&depth1),
            d2 = s(&depth2)
        ),
    )?;
    let script = format!(
        "{sensor} launch --agent enf-depth1 -- /bin/sh {}\necho \"depth1-exit: $?\"\n",
        s(&depth1_sh)
    );
    let out = launch_sh(&d, "enf-depth0", "p", &script)?;
    let got = outputs(&out);
    let mut c = Checks::new();
    check!(
        c,
        got.get("depth1-exit").map(String::as_str) == Some("0") && depth1.exists(),
        "a sub-run at depth 1 (= max_depth) starts and runs: {}",
        describe(&out)
    );
    check!(
        c,
        got.get("depth2-exit")
            .is_some_and(|code| code != "0" && !code.is_empty()),
        "`sensor launch` of a sub-run at depth 2 (> max_depth 1) exits non-zero: {}",
        describe(&out)
    );
    check!(
        c,
        !depth2.exists(),
        "the command of the refused sub-run ran: {}",
        describe(&out)
    );
    check!(
        c,
        text(&out.stderr).contains("max_depth"),
        "the refusal names max_depth: {}",
        describe(&out)
    );
    c.finish()
}

// ===== sub-runs =====

#[test]
fn a_sub_run_cannot_widen_its_policy_and_inherits_enforcement() -> Result<()> {
    let fx = Fixture::new("enf-subrun")?;
    let exec = base_exec()?;
    let mut wider = exec.clone();
    wider.push(format!("{}/", fx.at("denied")));
    let config = format!(
        "{}{}",
        policy_toml::<_, &str>("p", "enforce", &exec, &[], ""),
        policy_toml::<_, &str>("wider", "enforce", &wider, &[], "")
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let sensor = s(&sensor_bin()?);
    let wider_target = fx.target("wider");
    let inherited = fx.target("inherited");
    let script = format!(
        "{sensor} launch --agent enf-wider --policy wider -- {denied} {w}\necho \"wider: $?\"\n\
         {sensor} launch --agent enf-inherit -- {denied} {i}\necho \"inherited: $?\"\n",
        denied = fx.denied,
        w = s(&wider_target),
        i = s(&inherited)
    );
    let out = launch_sh(&d, "enf-parent", "p", &script)?;
    let got = outputs(&out);
    let mut c = Checks::new();
    check!(
        c,
        got.get("wider").map(String::as_str) == Some("1") && !wider_target.exists(),
        "a sub-run naming a policy wider than its parent's is refused (exit 1, command not run): {}",
        describe(&out)
    );
    check!(
        c,
        text(&out.stderr).contains("wider"),
        "the refusal says the policy is wider: {}",
        describe(&out)
    );
    check!(
        c,
        got.get("inherited") == Some(&KILLED.to_string()),
        "a sub-run without --policy inherits the enforced policy: its denied command is killed: {}",
        describe(&out)
    );
    wait_denied(&d, &[s(&inherited)])?;
    let evs = d.events()?;
    check_killed(
        &mut c,
        "denied exec in an inheriting sub-run",
        &evs,
        &s(&inherited),
        &inherited,
        "p",
        Some(EXEC_NO_MATCH),
    );
    if let Some(e) = denied_exec(&evs, &s(&inherited)) {
        check!(
            c,
            e["run"]["agent"] == "enf-inherit" && e["run"]["depth"] == 1,
            "the denial is the sub-run's: {}",
            compact(e)
        );
    }
    c.finish()
}

// ===== daemon crash =====

#[test]
fn enforcement_survives_the_daemon_killed_with_sigkill() -> Result<()> {
    let fx = Fixture::new("enf-sigkill")?;
    let (l_allowed, p_allowed) = listen("127.0.0.1")?;
    let (l_denied, p_denied) = listen("127.0.0.1")?;
    let rule = format!("127.0.0.1:{p_allowed}");
    let config = policy_toml("p", "enforce", &base_exec()?, &[&rule], "");
    let mut d = Daemon::start_with(Some(&config), &[])?;
    let mut puppet = Puppet::start(&d, "enf-survivor", "p", fx.dir())?;
    let puppet_pid = puppet.pid();
    let first = d.wait_for(EVENT_TIMEOUT, |e| {
        is_exec_ok(e) && e["process"]["pid"] == puppet_pid && e["run"]["agent"] == "enf-survivor"
    })?;
    let run_id = first["run"]["id"].clone();
    ensure!(run_id.is_string(), "the run has an id: {}", compact(&first));
    let mut c = Checks::new();
    let before = fx.target("before");
    let code = puppet.run(&format!("{} {}", fx.denied, s(&before)))?;
    check!(
        c,
        code == KILLED && !before.exists(),
        "before the crash: the denied exec exited {code}, want {KILLED}"
    );

    let status = d.kill9()?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "the daemon did not die of SIGKILL: {status}"
    );
    let during = fx.target("during");
    let code = puppet.run(&format!("{} {}", fx.denied, s(&during)))?;
    check!(
        c,
        code == KILLED && !during.exists(),
        "with the daemon dead: the denied exec exited {code} (want {KILLED}); file created: {}",
        during.exists()
    );
    let conn_out = fx.dir().join("connect-during");
    puppet.run(&format!(
        "{HELPER} connect tcp 127.0.0.1:{p_denied} > {}",
        s(&conn_out)
    ))?;
    let printed = fs::read_to_string(&conn_out).unwrap_or_default();
    check!(
        c,
        printed.trim() == "errno=1" && !accepted(&l_denied)?,
        "with the daemon dead: the denied connect printed {printed:?}, want \"errno=1\", and no connection"
    );
    let conn_ok = fx.dir().join("connect-during-ok");
    puppet.run(&format!(
        "{HELPER} connect tcp 127.0.0.1:{p_allowed} > {}",
        s(&conn_ok)
    ))?;
    let printed = fs::read_to_string(&conn_ok).unwrap_or_default();
    check!(
        c,
        printed.trim() == "ok" && accepted(&l_allowed)?,
        "with the daemon dead: the allowed connect printed {printed:?}, want \"ok\""
    );

    d.resume()?;
    let after = fx.target("after");
    let code = puppet.run(&format!("{} {}", fx.denied, s(&after)))?;
    check!(
        c,
        code == KILLED && !after.exists(),
        "after the restart: the denied exec exited {code}, want {KILLED}"
    );
    wait_denied(&d, &[s(&after)])?;
    let evs = d.events()?;
    check_killed(
        &mut c,
        "denied exec after the restart",
        &evs,
        &s(&after),
        &after,
        "p",
        Some(EXEC_NO_MATCH),
    );
    if let Some(e) = denied_exec(&evs, &s(&after)) {
        check!(
            c,
            e["run"]["id"] == run_id,
            "after the restart the run's events carry the same run id {run_id}: {}",
            compact(e)
        );
    }
    puppet.finish()?;
    c.finish()
}

// ===== reload =====

#[test]
fn a_malformed_reload_is_refused_and_the_old_policy_keeps_enforcing() -> Result<()> {
    let fx = Fixture::new("enf-reload-bad")?;
    let exec = base_exec()?;
    // Line 1 [policy.p], 2 mode, 3 exec.allow, 4 connect.allow, 5... extra.
    let v1 = policy_toml::<_, &str>("p", "enforce", &exec, &[], "");
    let d = Daemon::start_with(Some(&v1), &[])?;
    let config = d
        .config_path()
        .ok_or_else(|| anyhow!("no config path"))?
        .to_owned();
    let file = s(&config);
    let mut puppet = Puppet::start(&d, "enf-reload", "p", fx.dir())?;
    let first = d.wait_for(EVENT_TIMEOUT, |e| {
        is_exec_ok(e) && e["run"]["agent"] == "enf-reload"
    })?;
    let run_id = first["run"]["id"].as_str().unwrap_or("").to_owned();
    let mut c = Checks::new();

    let bad_cidr = policy_toml("p", "enforce", &exec, &["10.0.0.0/33"], "");
    let removes_p = policy_toml::<_, &str>("q", "enforce", &exec, &[], "");
    // (case, config, what the error must name)
    let cases: Vec<(&str, String, Vec<String>)> = vec![
        (
            "syntax error",
            format!("{v1}max_depth = = 1\n"),
            vec![format!("{file}:5")],
        ),
        (
            "unknown key",
            format!("{v1}max_proceses = 3\n"),
            vec![format!("{file}:5")],
        ),
        (
            "bad CIDR",
            bad_cidr,
            vec![format!("{file}:4"), "10.0.0.0/33".into()],
        ),
        (
            "agent naming an unknown policy",
            format!(
                "{v1}[[agent]]\nname = \"ghost\"\nexe = [\"/nonexistent/ghost\"]\npolicy = \"missing\"\n"
            ),
            vec!["\"missing\"".into()],
        ),
        (
            "a live run's policy removed",
            removes_p,
            vec!["\"p\"".into()],
        ),
    ];
    for (i, (case, toml, names)) in cases.iter().enumerate() {
        fs::write(&config, toml)?;
        let out = reload(&d)?;
        let err = text(&out.stderr);
        check!(
            c,
            !out.status.success() && err.contains("reload refused; the policies, agent matchers and detection rules in force stay: "),
            "reload with a {case}: must be refused (`reload refused; the policies, agent matchers and detection rules in force stay: …`): {}",
            describe(&out)
        );
        for name in names {
            // The run id is an acceptable name for the run's missing policy.
            let named = err.contains(name.as_str())
                || (*case == "a live run's policy removed"
                    && !run_id.is_empty()
                    && err.contains(&run_id));
            check!(
                c,
                named,
                "reload with a {case}: the error does not name {name:?}: {err:?}"
            );
        }
        let target = fx.target(&format!("after-bad-{i}"));
        let code = puppet.run(&format!("{} {}", fx.denied, s(&target)))?;
        check!(
            c,
            code == KILLED && !target.exists(),
            "after a refused reload ({case}) the old policy must still kill the denied exec: exit {code}, file created {}",
            target.exists()
        );
        d.check_alive()?;
    }

    // SIGHUP with a bad file: refused in the daemon's log, still enforcing.
    fs::write(&config, format!("{v1}max_depth = = 1\n"))?;
    let pid = libc::pid_t::try_from(d.pid())?;
    // SAFETY: kill(2) on the daemon this test started.
    ensure!(unsafe { libc::kill(pid, libc::SIGHUP) } == 0, "SIGHUP");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !d.stderr().contains(&format!("{file}:5")) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(100));
    }
    check!(
        c,
        d.stderr().contains(&format!("{file}:5")),
        "a refused SIGHUP reload logs the file:line"
    );
    d.check_alive()?;
    let target = fx.target("after-bad-sighup");
    let code = puppet.run(&format!("{} {}", fx.denied, s(&target)))?;
    check!(
        c,
        code == KILLED && !target.exists(),
        "after a refused SIGHUP reload the old policy must still kill the denied exec: exit {code}"
    );

    let needles: Vec<String> = (0..cases.len())
        .map(|i| s(&fx.target(&format!("after-bad-{i}"))))
        .chain([s(&target)])
        .collect();
    wait_denied(&d, &needles)?;
    let evs = d.events()?;
    for needle in &needles {
        match denied_exec(&evs, needle) {
            Some(e) => check!(
                c,
                e["policy"]["version"] == 1 && e["policy"]["enforced"] == true,
                "a refused reload must not change the version deciding: {}",
                compact(e)
            ),
            None => c.fail(format!("no denied exec reported for {needle}")),
        }
    }

    // A valid reload that allows the binary applies to the live run.
    let mut wider = exec.clone();
    wider.push(format!("{}/", fx.at("denied")));
    fs::write(
        &config,
        policy_toml::<_, &str>("p", "enforce", &wider, &[], ""),
    )?;
    let out = reload(&d)?;
    check!(
        c,
        out.status.success() && text(&out.stdout).contains("version 2"),
        "a valid reload after refused ones is version 2: {}",
        describe(&out)
    );
    let allowed = fx.target("allowed-after-reload");
    let code = puppet.run(&format!("{} {}", fx.denied, s(&allowed)))?;
    check!(
        c,
        code == 0 && allowed.exists(),
        "after a valid reload that allows it, the binary runs in the live run: exit {code}"
    );
    puppet.finish()?;
    c.finish()
}

#[test]
fn an_enforce_policy_with_errors_stops_the_daemon_at_start_up() -> Result<()> {
    let head = "[policy.p]\nmode = \"enforce\"\nexec.allow = [\"/usr/bin/dash\"]\n";
    let cases = [
        (
            "bad CIDR",
            format!("{head}connect.allow = [\"10.0.0.0/33\"]\n"),
            ":4",
        ),
        ("unknown key", format!("{head}max_proceses = 5\n"), ":4"),
        ("syntax error", format!("{head}max_depth = = 1\n"), ":4"),
        (
            "max_depth not a number",
            format!("{head}max_depth = \"deep\"\n"),
            ":4",
        ),
        (
            "bad port range",
            format!("{head}connect.allow = [\"127.0.0.1:9000-80\"]\n"),
            ":4",
        ),
    ];
    // All at once (each in its own temp dir and pin dir): a daemon that
    // wrongly starts costs its timeout once, not once per case.
    let handles: Vec<_> = cases
        .iter()
        .map(|(case, toml, line)| {
            let (case, toml, line) = (case.to_string(), toml.clone(), line.to_string());
            thread::spawn(move || -> Result<Option<String>> {
                let (config, out) = match daemon_on_config(&toml, Duration::from_secs(15)) {
                    Ok(done) => done,
                    Err(e) => {
                        return Ok(Some(format!(
                            "{case}: the daemon started with a bad config ({e:#}):\n{toml}"
                        )));
                    }
                };
                let err = text(&out.stderr);
                let want = format!("{}{line}", s(&config));
                Ok((out.status.success() || err.contains("panicked") || !err.contains(&want))
                    .then(|| {
                        format!(
                            "{case}: the daemon must exit non-zero naming {want:?}:\n{toml}\n{}",
                            describe(&out)
                        )
                    }))
            })
        })
        .collect();
    let mut c = Checks::new();
    for h in handles {
        match h.join() {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(failure))) => c.fail(failure),
            Ok(Err(e)) => c.fail(format!("{e:#}")),
            Err(_) => c.fail("a case thread panicked".into()),
        }
    }
    c.finish()
}

#[test]
fn reloading_has_no_window_for_a_denied_exec() -> Result<()> {
    let fx = Fixture::new("enf-reload-window")?;
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "");
    let d = Daemon::start_with(Some(&config), &["--no-store"])?;
    let target = fx.target("window");
    let stop = fx.dir().join("stop");
    let script = format!(
        "while [ ! -e {stop} ]; do {denied} {t}; done\n",
        stop = s(&stop),
        denied = fx.denied,
        t = s(&target)
    );
    let mut child = d
        .launch_cmd(
            "enf-window",
            &["--policy", "p"],
            &["/bin/sh", "-c", &script],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let result = (|| -> Result<()> {
        // The loop is running: its execs are being denied.
        d.wait_for(EVENT_TIMEOUT, |e| {
            is_exec_ok(e) && argv_eq(e, &s(&target)) && e["policy"]["verdict"] == "deny"
        })
        .context("the exec loop's first denial")?;
        let (t0, b0) = (Instant::now(), events_bytes(&d));
        // Let the loop run at full speed for a while first: reloads must be
        // answered (and atomic) under a sustained flood, not only before the
        // daemon falls behind.
        thread::sleep(Duration::from_secs(2));
        for i in 1..=20 {
            let asked = Instant::now();
            let out = reload(&d)?;
            // Shown when the test fails (or with --nocapture).
            eprintln!("reload {i} answered in {:?}", asked.elapsed());
            if !out.status.success() {
                let mb_s =
                    events_bytes(&d).saturating_sub(b0) as f64 / t0.elapsed().as_secs_f64() / 1e6;
                bail!(
                    "reload {i} of the same valid policy failed after {:?} while the run \
                     exec-loops (its events file grew by {mb_s:.1} MB/s meanwhile; a timeout \
                     here means control requests starve behind the event flood): {}",
                    asked.elapsed(),
                    describe(&out)
                );
            }
            ensure!(
                !target.exists(),
                "the denied binary ran during or right after reload {i}"
            );
        }
        thread::sleep(Duration::from_millis(300));
        ensure!(
            child.try_wait()?.is_none(),
            "the exec loop stopped before the reloads were done"
        );
        Ok(())
    })();
    fs::write(&stop, "")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait()?.is_none() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    if child.try_wait()?.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    result?;
    ensure!(
        !target.exists(),
        "the denied binary ran while the policy was reloaded 20 times"
    );
    // The loop's denials went on under the reloaded policies (the daemon may
    // still be writing its backlog: a few tries).
    let mut last = None;
    for _ in 0..10 {
        last = last_deny_version(&d, &s(&target))?;
        if last.is_some_and(|v| v >= 2) {
            break;
        }
        thread::sleep(Duration::from_millis(500));
    }
    ensure!(
        last.is_some_and(|v| v >= 2),
        "the exec loop's last reported denial should be under a reloaded policy (version >= 2), \
         it is {last:?}"
    );
    Ok(())
}

// ===== audit =====

#[test]
fn audit_mode_reports_the_same_denials_without_blocking() -> Result<()> {
    let fx = Fixture::new("enf-audit")?;
    let (l_denied, p_denied) = listen("127.0.0.1")?;
    let r_denied = UdpSocket::bind("127.0.0.1:0")?;
    let p_udp = r_denied.local_addr()?.port();
    r_denied.set_read_timeout(Some(Duration::from_secs(2)))?;
    let config = policy_toml::<_, &str>("a", "audit", &base_exec()?, &[], "");
    let d = Daemon::start_with(Some(&config), &[])?;
    let target = fx.target("audit");
    let script = format!(
        "{} {}\necho \"exec: $?\"\n\
         echo \"connect: $({HELPER} connect tcp 127.0.0.1:{p_denied})\"\n\
         echo \"sendto: $({HELPER} sendto udp 127.0.0.1:{p_udp})\"\n",
        fx.denied,
        s(&target)
    );
    let out = launch_sh(&d, "enf-audit", "a", &script)?;
    let got = outputs(&out);
    let mut c = Checks::new();
    check!(
        c,
        got.get("exec").map(String::as_str) == Some("0") && target.exists(),
        "audit: the denied binary runs: {}",
        describe(&out)
    );
    check!(
        c,
        got.get("connect").map(String::as_str) == Some("ok") && accepted(&l_denied)?,
        "audit: the denied connect goes through: {}",
        describe(&out)
    );
    let mut buf = [0u8; 256];
    check!(
        c,
        got.get("sendto").map(String::as_str) == Some("ok") && r_denied.recv_from(&mut buf).is_ok(),
        "audit: the denied sendto goes through: {}",
        describe(&out)
    );
    let t = s(&target);
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            denied_exec(evs, &t).is_some_and(|e| violation_after(evs, e).is_some())
                && connect_event(evs, "tcp", "127.0.0.1", p_denied)
                    .is_some_and(|e| violation_after(evs, e).is_some())
                && connect_event(evs, "udp", "127.0.0.1", p_udp)
                    .is_some_and(|e| violation_after(evs, e).is_some())
        },
        |_| String::new(),
    );
    let evs = d.events()?;
    match denied_exec(&evs, &t) {
        Some(e) => {
            check_deny(&mut c, "audit exec", e, "a", Some(EXEC_NO_MATCH), false);
            check_violation(&mut c, "audit exec", &evs, e);
            if let Some(x) = exit_of(&evs, e) {
                check!(
                    c,
                    x["process"]["exit_code"] == 0,
                    "audit: the denied process ran to its end: {}",
                    compact(x)
                );
            }
        }
        None => c.fail(format!(
            "audit: no denied exec reported; execs:\n{}",
            dump(&execs_with(&evs, &t))
        )),
    }
    for (what, transport, port) in [
        ("audit connect", "tcp", p_denied),
        ("audit sendto", "udp", p_udp),
    ] {
        match connect_event(&evs, transport, "127.0.0.1", port) {
            Some(e) => {
                check_deny(&mut c, what, e, "a", Some(CONNECT_NO_MATCH), false);
                check_violation(&mut c, what, &evs, e);
                check!(
                    c,
                    e["network"]["errno"].is_null() || e["network"]["errno"] == 0,
                    "{what}: not blocked, no errno: {}",
                    compact(e)
                );
            }
            None => c.fail(format!(
                "{what}: no network.connect {transport} to port {port}:\n{}",
                dump(&run_connects(&evs))
            )),
        }
    }
    c.finish()
}

/// A daemon stopped cleanly (SIGTERM) with an enforce policy leaves it
/// enforcing; `sensor unload` ends that, and returns only once the programs
/// are gone.
#[test]
fn a_stopped_daemon_keeps_enforcing_until_sensor_unload() -> Result<()> {
    let fx = Fixture::new("enf-unload")?;
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "");
    let mut d = Daemon::start_with(Some(&config), &[])?;
    let mut puppet = Puppet::start(&d, "enf-unload", "p", fx.dir())?;
    let status = d.stop()?;
    ensure!(status.success(), "the daemon's SIGTERM exit: {status}");
    let stopped = fx.target("stopped");
    let code = puppet.run(&format!("{} {}", fx.denied, s(&stopped)))?;
    ensure!(
        code == KILLED && !stopped.exists(),
        "with the daemon stopped, the denied exec exited {code} (want {KILLED})"
    );
    let out = run_with_timeout(
        d.sensor()
            .arg("unload")
            .arg("--pin-dir")
            .arg(d.pin_dir())
            .arg("--socket")
            .arg(d.socket()),
        Duration::from_secs(20),
    )?
    .1;
    ensure!(out.status.success(), "sensor unload: {}", describe(&out));
    ensure!(
        !d.pin_dir().exists(),
        "the pin dir {} is still there",
        d.pin_dir().display()
    );
    let unloaded = fx.target("unloaded");
    let code = puppet.run(&format!("{} {}", fx.denied, s(&unloaded)))?;
    ensure!(
        code == 0 && unloaded.exists(),
        "after sensor unload the binary must run: it exited {code}"
    );
    Ok(())
}

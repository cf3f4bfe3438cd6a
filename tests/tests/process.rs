//! Process events on the real kernel: spawn, exec (ok and failed), exit,
//! argv capture, threads, exe resolution. Run as root:
//! `SENSOR_BIN=... cargo test -p sensor-tests -- --test-threads=1`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, absent_or_null, argv_area_len, argv_has, argv_of,
    b64_decode, bool_at, canonical_str, check, check_common, compact, dump, helper_bin, i64_at,
    is_kind_pid, kind, marker, pid_of, run_child, str_at, text,
};
use serde_json::Value;

fn helper_exe() -> Result<String> {
    canonical_str(helper_bin!())
}

fn our_pid() -> i64 {
    i64::from(std::process::id())
}

fn seq(e: &Value) -> u64 {
    e.get("seq").and_then(Value::as_u64).unwrap_or(0)
}

/// Pause so that events emitted just before the one a test waited for are
/// surely in the file before the test counts them.
fn settle() {
    thread::sleep(Duration::from_millis(500));
}

/// Case 1: A marker command: spawn, exec and exit with the right pid, ppid, exe
/// (symlink resolved), argv, cwd, exit code.
#[test]
fn spawn_exec_exit_of_a_marker_command() -> Result<()> {
    let d = Daemon::start()?;
    let mut c = Checks::new();
    let m = marker();
    let cwd = TempDir::new("cwd")?;
    let argv = ["/bin/sh", "-c", "exit 7", m.as_str()];
    let (pid, out) = run_child(
        Command::new(argv[0])
            .args(&argv[1..])
            .current_dir(cwd.path()),
    )?;
    ensure!(
        out.status.code() == Some(7),
        "child exited with {}",
        out.status
    );

    let exit = d
        .wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.exit", pid))
        .context("process.exit of the marker command")?;
    let exec = d
        .wait_for(EVENT_TIMEOUT, |e| {
            is_kind_pid(e, "process.exec", pid) && argv_has(e, &m)
        })
        .context("process.exec of the marker command")?;
    let spawn = d
        .wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.spawn", pid))
        .context("process.spawn of the marker command")?;

    let sh = canonical_str("/bin/sh")?; // /usr/bin/dash on Debian
    let test_exe = canonical_str(std::env::current_exe()?)?;
    let cwd = canonical_str(cwd.path())?;
    let all = [&spawn, &exec, &exit];
    for e in all {
        c.result(check_common(e));
        check!(
            c,
            i64_at(e, "/process/ppid") == Some(our_pid()),
            "ppid is not the test's pid {}: {}",
            our_pid(),
            compact(e)
        );
        check!(
            c,
            i64_at(e, "/process/tid") == Some(i64::from(pid)),
            "tid != pid for a single-threaded child: {}",
            compact(e)
        );
        check!(
            c,
            i64_at(e, "/process/uid") == Some(0),
            "uid is not 0: {}",
            compact(e)
        );
    }

    // The process key survives exec and is the same on all three events.
    let key = str_at(&exec, "/process/key").unwrap_or("");
    check!(
        c,
        !key.is_empty(),
        "process.key missing: {}",
        compact(&exec)
    );
    for e in [&spawn, &exit] {
        check!(
            c,
            str_at(e, "/process/key") == Some(key),
            "process.key differs from the exec's {key:?}: {}",
            compact(e)
        );
    }
    check!(
        c,
        str_at(&spawn, "/process/parent_key").is_some_and(|k| !k.is_empty())
            && str_at(&spawn, "/process/parent_key") == str_at(&exec, "/process/parent_key"),
        "parent_key missing or differs between spawn and exec:\n{}\n{}",
        compact(&spawn),
        compact(&exec)
    );
    check!(
        c,
        seq(&spawn) < seq(&exec) && seq(&exec) < seq(&exit),
        "events out of order (spawn {}, exec {}, exit {})",
        seq(&spawn),
        seq(&exec),
        seq(&exit)
    );

    // spawn: the child before its exec still runs the test binary.
    check!(
        c,
        str_at(&spawn, "/process/parent_exe") == Some(test_exe.as_str()),
        "spawn parent_exe is not {test_exe}: {}",
        compact(&spawn)
    );
    check!(
        c,
        str_at(&spawn, "/process/exe") == Some(test_exe.as_str()),
        "spawn exe (child before exec) is not {test_exe}: {}",
        compact(&spawn)
    );
    check!(
        c,
        absent_or_null(&spawn, "/process/argv") && absent_or_null(&spawn, "/process/cwd"),
        "argv/cwd must be absent on spawn: {}",
        compact(&spawn)
    );

    // exec
    let want_argv: Vec<String> = argv.iter().map(|s| (*s).to_owned()).collect();
    check!(
        c,
        str_at(&exec, "/process/exe") == Some(sh.as_str()),
        "exec exe is not the resolved {sh}: {}",
        compact(&exec)
    );
    check!(
        c,
        argv_of(&exec) == want_argv,
        "argv is not {want_argv:?}: {}",
        compact(&exec)
    );
    check!(
        c,
        i64_at(&exec, "/process/argc") == Some(4),
        "argc is not 4: {}",
        compact(&exec)
    );
    check!(
        c,
        bool_at(&exec, "/process/argv_truncated") == Some(false),
        "argv_truncated is not false: {}",
        compact(&exec)
    );
    let len = i64::try_from(argv_area_len(&argv))?;
    check!(
        c,
        i64_at(&exec, "/process/argv_len") == Some(len),
        "argv_len is not {len}: {}",
        compact(&exec)
    );
    check!(
        c,
        absent_or_null(&exec, "/process/argv_b64"),
        "argv_b64 present for a UTF-8 argv: {}",
        compact(&exec)
    );
    check!(
        c,
        str_at(&exec, "/process/cwd") == Some(cwd.as_str()),
        "cwd is not {cwd}: {}",
        compact(&exec)
    );
    check!(
        c,
        str_at(&exec, "/process/comm") == Some("sh"),
        "comm is not \"sh\": {}",
        compact(&exec)
    );
    check!(
        c,
        str_at(&exec, "/exec/result") == Some("ok")
            && str_at(&exec, "/exec/filename") == Some("/bin/sh")
            && i64_at(&exec, "/exec/old_tid") == Some(i64::from(pid)),
        "exec object wrong (want result ok, filename /bin/sh, old_tid {pid}): {}",
        compact(&exec)
    );

    // exit
    check!(
        c,
        i64_at(&exit, "/process/exit_code") == Some(7)
            && absent_or_null(&exit, "/process/exit_signal"),
        "exit_code is not 7 with exit_signal null: {}",
        compact(&exit)
    );
    check!(
        c,
        str_at(&exit, "/process/exe") == Some(sh.as_str()),
        "exit exe is not {sh}: {}",
        compact(&exit)
    );
    c.finish()
}

/// Checks a (possibly truncated) reported argv against the original.
fn check_argv_prefix(e: &Value, full: &[String]) -> Result<()> {
    let got = argv_of(e);
    ensure!(!got.is_empty(), "argv is empty: {}", compact(e));
    ensure!(
        got.len() <= full.len(),
        "argv has {} elements, more than the {} passed",
        got.len(),
        full.len()
    );
    let last = got.len() - 1;
    for (i, (g, f)) in got.iter().zip(full).enumerate() {
        if i < last {
            ensure!(g == f, "argv[{i}] is {g:?}, expected {f:?}");
        } else {
            ensure!(
                f.starts_with(g.as_str()),
                "last captured argv[{i}] ({} bytes) is not a prefix of the original ({} bytes)",
                g.len(),
                f.len()
            );
        }
    }
    Ok(())
}

/// Case 2a: 300 arguments and one 64 KiB argument: truncated, with the original
/// size reported.
#[test]
fn huge_argv_is_truncated_with_original_length() -> Result<()> {
    let d = Daemon::start()?;
    let mut c = Checks::new();
    let m = marker();
    let mut full: Vec<String> = vec!["/bin/true".to_owned(), m.clone()];
    full.extend((1..300).map(|i| format!("arg{i}")));
    full.push("x".repeat(64 * 1024));
    ensure!(full.len() == 302, "test bug: {} args", full.len());
    let (pid, out) = run_child(Command::new(&full[0]).args(&full[1..]))?;
    ensure!(out.status.success(), "/bin/true failed: {}", out.status);

    let exec = d
        .wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.exec", pid))
        .context("process.exec with a 300-argument + 64 KiB argv")?;
    let want_len = i64::try_from(argv_area_len(&full))?;
    check!(
        c,
        bool_at(&exec, "/process/argv_truncated") == Some(true),
        "argv_truncated is not true for a {want_len}-byte argv: {}",
        compact(&exec)
    );
    check!(
        c,
        i64_at(&exec, "/process/argv_len") == Some(want_len),
        "argv_len is {:?}, expected the original size {want_len}",
        exec.pointer("/process/argv_len")
    );
    c.result(check_argv_prefix(&exec, &full).with_context(|| compact(&exec)));
    check!(
        c,
        argv_of(&exec).get(1) == Some(&m),
        "argv[1] is not the marker: {}",
        compact(&exec)
    );
    check!(
        c,
        str_at(&exec, "/process/exe") == Some(canonical_str("/bin/true")?.as_str())
            && str_at(&exec, "/exec/result") == Some("ok"),
        "exe/result wrong: {}",
        compact(&exec)
    );
    c.finish()
}

/// Case 2b: 300 short arguments: either captured whole, or flagged truncated with
/// a correct prefix; argv_len is the original size either way.
#[test]
fn three_hundred_arguments_are_consistent() -> Result<()> {
    let d = Daemon::start()?;
    let m = marker();
    let mut full: Vec<String> = vec!["/bin/true".to_owned(), m.clone()];
    full.extend((1..300).map(|i| format!("a{i}")));
    let (pid, out) = run_child(Command::new(&full[0]).args(&full[1..]))?;
    ensure!(out.status.success(), "/bin/true failed: {}", out.status);

    let exec = d
        .wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.exec", pid))
        .context("process.exec with 300 arguments")?;
    let want_len = i64::try_from(argv_area_len(&full))?;
    ensure!(
        i64_at(&exec, "/process/argv_len") == Some(want_len),
        "argv_len is {:?}, expected {want_len}: {}",
        exec.pointer("/process/argv_len"),
        compact(&exec)
    );
    match bool_at(&exec, "/process/argv_truncated") {
        Some(false) => {
            ensure!(
                argv_of(&exec) == full,
                "argv_truncated is false but argv differs from the 301 arguments passed: {}",
                compact(&exec)
            );
            ensure!(
                i64_at(&exec, "/process/argc") == Some(301),
                "argc is not 301: {}",
                compact(&exec)
            );
        }
        Some(true) => {
            check_argv_prefix(&exec, &full).with_context(|| compact(&exec))?;
            ensure!(
                argv_of(&exec) != full,
                "argv_truncated is true but the whole argv was reported"
            );
        }
        None => anyhow::bail!("argv_truncated missing: {}", compact(&exec)),
    }
    Ok(())
}

/// Case 2c: Non-UTF-8 argv bytes: `\xNN` in argv, exact bytes in argv_b64.
#[test]
fn non_utf8_argv_round_trips() -> Result<()> {
    let d = Daemon::start()?;
    let m = marker();
    let raw_args: [&[u8]; 4] = [b"/bin/true", m.as_bytes(), b"\xff\xfe", b"a\xc3\xa9b\xff"];
    let (pid, out) = run_child(
        Command::new(OsStr::from_bytes(raw_args[0]))
            .args(raw_args[1..].iter().map(|a| OsStr::from_bytes(a))),
    )?;
    ensure!(out.status.success(), "/bin/true failed: {}", out.status);

    let exec = d
        .wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.exec", pid))
        .context("process.exec with a non-UTF-8 argv")?;
    let argv: Vec<String> = argv_of(&exec).iter().map(|a| a.to_lowercase()).collect();
    let want = ["/bin/true", m.as_str(), "\\xff\\xfe", "aéb\\xff"];
    ensure!(
        argv == want,
        "argv is {argv:?}, expected {want:?} (non-UTF-8 bytes as \\xNN, valid UTF-8 kept)"
    );
    let b64 = str_at(&exec, "/process/argv_b64")
        .with_context(|| format!("argv_b64 missing for a non-UTF-8 argv: {}", compact(&exec)))?;
    let got = b64_decode(b64)?;
    let mut area: Vec<u8> = Vec::new();
    for a in raw_args {
        area.extend_from_slice(a);
        area.push(0);
    }
    // "exactly as captured": the raw argv area, NUL-separated; the final NUL
    // terminator may or may not be kept.
    ensure!(
        got == area || got == area[..area.len() - 1],
        "argv_b64 decodes to {got:?}, expected {area:?}"
    );
    ensure!(
        i64_at(&exec, "/process/argv_len") == Some(i64::try_from(area.len())?)
            && bool_at(&exec, "/process/argv_truncated") == Some(false),
        "argv_len/argv_truncated wrong (want {}, false): {}",
        area.len(),
        compact(&exec)
    );
    Ok(())
}

/// How the helper tries to run the file, and the filename the syscall got.
#[derive(Clone, Copy)]
enum ExecCall {
    /// `execve(path, ...)`.
    Execve,
    /// `execveat(fd, "", ..., AT_EMPTY_PATH)` on the opened file.
    ExecveatEmpty,
}

fn failed_exec(
    call: ExecCall,
    file: &std::path::Path,
    want_errno: i64,
    want_error: &str,
) -> Result<()> {
    let d = Daemon::start()?;
    let mut c = Checks::new();
    let m = marker();
    let file_s = file.to_str().context("non-UTF-8 temp path")?.to_owned();
    let (subcommand, want_filename) = match call {
        ExecCall::Execve => ("exec", file_s.as_str()),
        ExecCall::ExecveatEmpty => ("execveat-empty", ""),
    };
    let (pid, out) = run_child(Command::new(helper_bin!()).args([subcommand, &file_s, &m]))?;
    let stderr = text(&out.stderr);
    ensure!(
        out.status.code() == Some(111) && stderr.contains(&format!("errno={want_errno}")),
        "the helper's exec did not fail with errno {want_errno}: {} {stderr:?}",
        out.status
    );

    // Found by the argv it tried, which carries this test's marker.
    let want_argv = vec![file_s.clone(), m.clone()];
    let exec = d
        .wait_for(EVENT_TIMEOUT, |e| {
            kind(e) == "process.exec" && argv_of(e) == want_argv
        })
        .with_context(|| format!("failed process.exec of {file_s}"))?;
    check!(
        c,
        str_at(&exec, "/exec/filename") == Some(want_filename),
        "want exec.filename {want_filename:?}, as the caller passed it: {}",
        compact(&exec)
    );
    check!(
        c,
        pid_of(&exec) == Some(pid),
        "failed exec reported for pid {:?}, the helper is {pid}: {}",
        pid_of(&exec),
        compact(&exec)
    );
    check!(
        c,
        str_at(&exec, "/exec/result") == Some("error")
            && i64_at(&exec, "/exec/errno") == Some(want_errno)
            && str_at(&exec, "/exec/error") == Some(want_error),
        "want exec.result error, errno {want_errno}, error {want_error}: {}",
        compact(&exec)
    );
    let helper = helper_exe()?;
    check!(
        c,
        str_at(&exec, "/process/exe") == Some(helper.as_str()),
        "a failed exec must report the unchanged caller image {helper}: {}",
        compact(&exec)
    );
    c.finish()
}

/// Case 3a: exec of a missing file: ENOENT.
#[test]
fn failed_exec_missing_file_is_enoent() -> Result<()> {
    let dir = TempDir::new("missing")?;
    let file = dir.path().join(format!("missing-{}", marker()));
    failed_exec(ExecCall::Execve, &file, 2, "ENOENT")
}

/// Case 3b: exec of a file without execute permission: EACCES.
#[test]
fn failed_exec_non_executable_is_eacces() -> Result<()> {
    let (_dir, file) = non_executable_script("noexec")?;
    failed_exec(ExecCall::Execve, &file, 13, "EACCES")
}

/// Case 3c: execveat(fd, "", AT_EMPTY_PATH) of a file without execute
/// permission: the arguments come from other registers than execve's.
#[test]
fn failed_execveat_non_executable_is_eacces() -> Result<()> {
    let (_dir, file) = non_executable_script("noexec-at")?;
    failed_exec(ExecCall::ExecveatEmpty, &file, 13, "EACCES")
}

/// A shell script without execute permission (mode 0644) in a new temp
/// directory, which the caller keeps alive.
fn non_executable_script(name: &str) -> Result<(TempDir, std::path::PathBuf)> {
    let dir = TempDir::new(name)?;
    let file = dir.path().join(format!("{name}-{}.sh", marker()));
    fs::write(&file, "#!/bin/sh\nexit 0\n")?;
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644))?;
    Ok((dir, file))
}

/// Case 4: 50 threads: one process.spawn (and one process.exit) for the process,
/// none for its threads.
#[test]
fn threads_are_not_processes() -> Result<()> {
    let d = Daemon::start()?;
    let mut c = Checks::new();
    let m = marker();
    let (pid, out) = run_child(Command::new(helper_bin!()).args(["threads", "50", &m]))?;
    ensure!(out.status.success(), "helper failed: {}", out.status);
    let stdout = text(&out.stdout);
    let tids: HashSet<u32> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix("tid="))
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("helper output {stdout:?}"))?;
    ensure!(
        tids.len() == 50 && !tids.contains(&pid),
        "helper reported {} distinct thread ids (pid {pid}): {stdout:?}",
        tids.len()
    );

    d.wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.exit", pid))
        .context("process.exit of the 50-thread helper")?;
    settle();
    let tid_of = |e: &Value| i64_at(e, "/process/tid").and_then(|t| u32::try_from(t).ok());
    let touches = |e: &Value| {
        pid_of(e) == Some(pid)
            || pid_of(e).is_some_and(|p| tids.contains(&p))
            || tid_of(e).is_some_and(|t| tids.contains(&t))
    };
    let related =
        d.matching(|e| (kind(e) == "process.spawn" || kind(e) == "process.exit") && touches(e))?;
    let spawns: Vec<&Value> = related
        .iter()
        .filter(|e| kind(e) == "process.spawn")
        .collect();
    let exits: Vec<&Value> = related
        .iter()
        .filter(|e| kind(e) == "process.exit")
        .collect();
    check!(
        c,
        spawns.len() == 1 && pid_of(spawns[0]) == Some(pid),
        "expected exactly one process.spawn (pid {pid}) and none for its 50 threads; got:\n{}",
        dump(&related)
    );
    check!(
        c,
        exits.len() == 1 && pid_of(exits[0]) == Some(pid),
        "expected exactly one process.exit (pid {pid}) and none for its 50 threads; got:\n{}",
        dump(&related)
    );
    check!(
        c,
        i64_at(exits[0], "/process/exit_code") == Some(0),
        "exit code is not 0: {}",
        compact(exits[0])
    );
    c.finish()
}

/// Case 5a: exec from a non-leader thread: reported under the process's pid
/// (tgid), with the real exe and the calling thread as old_tid.
#[test]
fn exec_from_a_non_leader_thread() -> Result<()> {
    let d = Daemon::start()?;
    let mut c = Checks::new();
    let m = marker();
    let (pid, out) = run_child(Command::new(helper_bin!()).args([
        "thread-exec",
        "/bin/sh",
        "-c",
        "exit 5",
        &m,
    ]))?;
    ensure!(
        out.status.code() == Some(5),
        "helper exited with {}",
        out.status
    );
    let stderr = text(&out.stderr);
    let old_tid: i64 = stderr
        .lines()
        .find_map(|l| l.strip_prefix("tid="))
        .with_context(|| format!("no tid= line in {stderr:?}"))?
        .trim()
        .parse()?;
    ensure!(
        old_tid != i64::from(pid),
        "test bug: the exec thread is the leader"
    );

    let exec = d
        .wait_for(EVENT_TIMEOUT, |e| {
            // Not the helper's own exec (its argv also holds the marker).
            kind(e) == "process.exec"
                && argv_has(e, &m)
                && argv_of(e).first().map(String::as_str) == Some("/bin/sh")
        })
        .context("process.exec from a non-leader thread")?;
    let sh = canonical_str("/bin/sh")?;
    check!(
        c,
        pid_of(&exec) == Some(pid) && i64_at(&exec, "/process/tid") == Some(i64::from(pid)),
        "exec from thread {old_tid} must be reported as pid = tid = {pid} (the tgid): {}",
        compact(&exec)
    );
    check!(
        c,
        str_at(&exec, "/process/exe") == Some(sh.as_str())
            && str_at(&exec, "/exec/result") == Some("ok"),
        "exe is not {sh} / result not ok: {}",
        compact(&exec)
    );
    check!(
        c,
        i64_at(&exec, "/exec/old_tid") == Some(old_tid),
        "exec.old_tid is not the calling thread {old_tid}: {}",
        compact(&exec)
    );
    let exit = d
        .wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.exit", pid))
        .context("process.exit after the thread exec")?;
    settle();
    let exits = d.matching(|e| is_kind_pid(e, "process.exit", pid))?;
    check!(
        c,
        exits.len() == 1 && i64_at(&exit, "/process/exit_code") == Some(5),
        "expected one process.exit with code 5 for pid {pid} (the threads torn down by exec are no process exit):\n{}",
        dump(&exits)
    );
    let spawns = d.matching(|e| is_kind_pid(e, "process.spawn", pid))?;
    check!(
        c,
        spawns.len() == 1,
        "expected one process.spawn for pid {pid}:\n{}",
        dump(&spawns)
    );
    c.finish()
}

/// Case 5b: A process that renames itself (PR_SET_NAME) keeps its exe.
#[test]
fn prctl_rename_does_not_change_exe() -> Result<()> {
    let d = Daemon::start()?;
    let mut c = Checks::new();
    let m = marker();
    let (pid, out) =
        run_child(Command::new(helper_bin!()).args(["prctl-name", "curl", "/bin/true", &m]))?;
    ensure!(
        out.status.success(),
        "helper failed: {} {:?}",
        out.status,
        text(&out.stderr)
    );
    let stdout = text(&out.stdout);
    let child: u32 = stdout
        .lines()
        .find_map(|l| l.strip_prefix("child="))
        .with_context(|| format!("no child= line in {stdout:?}"))?
        .trim()
        .parse()?;
    let helper = helper_exe()?;

    let exit = d
        .wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.exit", pid))
        .context("process.exit of the renamed helper")?;
    check!(
        c,
        str_at(&exit, "/process/exe") == Some(helper.as_str()),
        "the renamed process's exe must stay {helper}: {}",
        compact(&exit)
    );
    let spawn = d
        .wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.spawn", child))
        .context("process.spawn of the renamed helper's child")?;
    check!(
        c,
        i64_at(&spawn, "/process/ppid") == Some(i64::from(pid))
            && str_at(&spawn, "/process/parent_exe") == Some(helper.as_str())
            && str_at(&spawn, "/process/exe") == Some(helper.as_str()),
        "child of the renamed process: want ppid {pid}, parent_exe and exe {helper}: {}",
        compact(&spawn)
    );
    let exec = d
        .wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.exec", child))
        .context("process.exec of the renamed helper's child")?;
    check!(
        c,
        str_at(&exec, "/process/exe") == Some(canonical_str("/bin/true")?.as_str()),
        "child exe wrong: {}",
        compact(&exec)
    );
    c.finish()
}

/// Case 5c: A faked argv[0] does not change the reported exe.
#[test]
fn fake_argv0_does_not_change_exe() -> Result<()> {
    let d = Daemon::start()?;
    let mut c = Checks::new();
    let m = marker();
    let (pid, out) = run_child(Command::new(helper_bin!()).args([
        "fake-argv0",
        "/usr/sbin/sshd",
        "/bin/sh",
        "-c",
        "exit 0",
        &m,
    ]))?;
    ensure!(
        out.status.success(),
        "helper failed: {} {:?}",
        out.status,
        text(&out.stderr)
    );
    let exec = d
        .wait_for(EVENT_TIMEOUT, |e| {
            // Not the helper's own exec (its argv also holds the marker).
            is_kind_pid(e, "process.exec", pid)
                && argv_has(e, &m)
                && str_at(e, "/exec/filename") == Some("/bin/sh")
        })
        .context("process.exec with a fake argv[0]")?;
    let sh = canonical_str("/bin/sh")?;
    check!(
        c,
        argv_of(&exec).first().map(String::as_str) == Some("/usr/sbin/sshd"),
        "argv[0] should be the faked one: {}",
        compact(&exec)
    );
    check!(
        c,
        str_at(&exec, "/process/exe") == Some(sh.as_str())
            && str_at(&exec, "/exec/filename") == Some("/bin/sh"),
        "exe must be the real image {sh} (filename /bin/sh), not argv[0]: {}",
        compact(&exec)
    );
    let exit = d
        .wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.exit", pid))
        .context("process.exit with a fake argv[0]")?;
    check!(
        c,
        str_at(&exit, "/process/exe") == Some(sh.as_str()),
        "exit exe must be {sh}: {}",
        compact(&exit)
    );
    c.finish()
}

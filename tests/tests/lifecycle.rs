//! Daemon lifecycle on the real kernel (status, SIGTERM, detach, flush) and
//! CLI error handling of the real binary. Run as root:
//! `SENSOR_BIN=... cargo test -p sensor-tests -- --test-threads=1`.

use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sensor_tests::{
    Daemon, TempDir, argv_has, check_common, check_seq_increasing, compact, is_kind_pid, marker,
    prog_exists, prog_name, run_child, sensor_bin, text,
};
use serde_json::Value;

/// The `(name, id)` pairs of `status --json` `programs`.
fn programs(status: &Value) -> Result<Vec<(String, u32)>> {
    let list = status
        .get("programs")
        .and_then(Value::as_array)
        .with_context(|| format!("status --json has no programs array: {status}"))?;
    list.iter()
        .map(|p| {
            let name = p.get("name").and_then(Value::as_str);
            let id = p
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|i| u32::try_from(i).ok());
            match (name, id) {
                (Some(n), Some(i)) => Ok((n.to_owned(), i)),
                _ => bail!("bad programs entry {p} in {status}"),
            }
        })
        .collect()
}

/// Case 8: SIGTERM with `--detach-on-exit`: exit 0, every event read before
/// the stop is in the file, and no program the daemon attached is left in
/// the kernel. (Without the flag the programs stay and keep recording:
/// `restart.rs`.)
#[test]
fn sigterm_with_detach_on_exit_flushes_and_detaches() -> Result<()> {
    let mut d = Daemon::start_with_args(&["--detach-on-exit"])?;
    let status = d.status_json()?;
    ensure!(
        status.get("ready").and_then(Value::as_bool) == Some(true)
            && status.get("pid").and_then(Value::as_u64) == Some(u64::from(d.pid())),
        "status --json should say ready with the daemon's pid {}: {status}",
        d.pid()
    );
    let progs = programs(&status)?;
    ensure!(
        !progs.is_empty(),
        "status --json lists no programs: {status}"
    );
    for (name, id) in &progs {
        ensure!(
            name.starts_with("snsr_"),
            "program {name} ({id}) lacks the snsr_ prefix"
        );
        // The kernel keeps 15 bytes of a program name.
        let kernel_name = prog_name(*id)?
            .with_context(|| format!("program {name} id {id} from status does not exist"))?;
        let short: String = name.chars().take(15).collect();
        ensure!(
            kernel_name == short,
            "program id {id} is named {kernel_name:?} in the kernel, status says {name:?}"
        );
    }

    // A marker process that has fully exited right before SIGTERM.
    let m = marker();
    let (pid, out) = run_child(Command::new("/bin/sh").args(["-c", "exit 3", &m]))?;
    ensure!(
        out.status.code() == Some(3),
        "marker exited with {}",
        out.status
    );
    d.stop()?;

    let raw = d.raw_output()?;
    ensure!(
        raw.is_empty() || raw.ends_with(b"\n"),
        "the output file ends with a partial line after the stop"
    );
    let events = d.events()?;
    check_seq_increasing(&events)?;
    for e in &events {
        check_common(e)?;
    }
    for k in ["process.spawn", "process.exec", "process.exit"] {
        ensure!(
            events
                .iter()
                .any(|e| is_kind_pid(e, k, pid) && (k != "process.exec" || argv_has(e, &m))),
            "the {k} of pid {pid} (exited right before SIGTERM) is not in the file after the stop; {} events, last: {}",
            events.len(),
            events.last().map(compact).unwrap_or_default()
        );
    }

    // Program ids are freed asynchronously once the last reference goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for (name, id) in &progs {
            if prog_exists(*id)? {
                left.push(format!("{name} (id {id}, now {:?})", prog_name(*id)?));
            }
        }
        if left.is_empty() {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "programs still loaded 10 s after the daemon exited: {left:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }

    let (_, out) = run_child(Command::new(sensor_bin()?).args([
        "status",
        "--socket",
        &d.socket().to_string_lossy(),
    ]))?;
    ensure!(
        out.status.code() == Some(1),
        "status after the stop should exit 1, got {}: {:?}",
        out.status,
        text(&out.stderr)
    );
    Ok(())
}

// ----- CLI error handling (real binary; no events needed) -----

fn no_panic(stderr: &str) -> Result<()> {
    ensure!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "the binary panicked: {stderr:?}"
    );
    Ok(())
}

/// An unknown flag is a usage error (exit 2), one `error:` line, no panic.
#[test]
fn unknown_flag_is_a_usage_error() -> Result<()> {
    let (_, out) = run_child(Command::new(sensor_bin()?).args(["daemon", "--no-such-flag"]))?;
    let stderr = text(&out.stderr);
    no_panic(&stderr)?;
    ensure!(
        out.status.code() == Some(2),
        "unknown flag should exit 2 (usage error), got {}: {stderr:?}",
        out.status
    );
    let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    ensure!(
        first.starts_with("error:") && first.contains("--no-such-flag"),
        "the first stderr line should be one error line naming the flag: {stderr:?}"
    );
    Ok(())
}

/// `--output file:` in a missing directory: exit 1, a message naming the path.
#[test]
fn output_in_missing_directory_fails_naming_the_path() -> Result<()> {
    let dir = TempDir::new("cli")?;
    let path = format!("/nonexistent-dir-{}/x.jsonl", marker());
    let (_, out) = run_child(Command::new(sensor_bin()?).args([
        "daemon",
        "--output",
        &format!("file:{path}"),
        "--socket",
        &dir.path().join("s.sock").to_string_lossy(),
    ]))?;
    let stderr = text(&out.stderr);
    no_panic(&stderr)?;
    ensure!(
        out.status.code() == Some(1),
        "should exit 1, got {}: {stderr:?}",
        out.status
    );
    ensure!(
        stderr.lines().any(|l| l.contains(&path)),
        "the error should name {path}: {stderr:?}"
    );
    Ok(())
}

/// An unknown output scheme: non-zero exit with a clear error naming it.
#[test]
fn bogus_output_scheme_is_rejected() -> Result<()> {
    let dir = TempDir::new("cli")?;
    let (_, out) = run_child(Command::new(sensor_bin()?).args([
        "daemon",
        "--output",
        "bogus://x",
        "--socket",
        &dir.path().join("s.sock").to_string_lossy(),
    ]))?;
    let stderr = text(&out.stderr);
    no_panic(&stderr)?;
    ensure!(
        matches!(out.status.code(), Some(1 | 2)),
        "should exit 1 or 2, got {}: {stderr:?}",
        out.status
    );
    ensure!(
        stderr.lines().any(|l| l.contains("bogus://x")),
        "the error should name the spec bogus://x: {stderr:?}"
    );
    Ok(())
}

/// `status` with no daemon behind the socket exits 1.
#[test]
fn status_without_daemon_exits_1() -> Result<()> {
    let dir = TempDir::new("cli")?;
    let (_, out) = run_child(Command::new(sensor_bin()?).args([
        "status",
        "--socket",
        &dir.path().join("none.sock").to_string_lossy(),
    ]))?;
    let stderr = text(&out.stderr);
    no_panic(&stderr)?;
    ensure!(
        out.status.code() == Some(1),
        "status without a daemon should exit 1, got {}: {stderr:?}",
        out.status
    );
    Ok(())
}

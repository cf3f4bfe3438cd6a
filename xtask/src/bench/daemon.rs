//! A round's `sensor daemon`: the workspace's daemon harness
//! (`sensor_tests::harness`) on the bench's dirs, its stderr appended to
//! `target/bench/daemon.log`, stopped with `sensor unload` after it so no
//! enforcing program outlives its variant.
//!
//! When the bench puts itself in a run bound to an enforce policy
//! ([`Daemon::launch_self`]), the kernel kills it for what a run may not do
//! to the sensor: signal the daemon, call bpf() (`sensor unload`), write
//! into its state dir. A shell started just before, outside the run
//! ([`Outside`]), sends the SIGTERM and runs `sensor unload` for it; the
//! state dir is removed once nothing enforces any more.

use std::{
    ffi::OsString,
    fs::{self, OpenOptions},
    io::{self, Write as _},
    path::PathBuf,
    process::{Child, ChildStdin, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use sensor_tests::harness::{DaemonProcess, DaemonSpec};
use serde_json::{Value, json};

use super::Env;
use crate::util;

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A `sensor daemon` started for one round.
pub(super) struct Daemon {
    process: DaemonProcess,
    /// Set once stopped or killed on purpose: its dirs are then the caller's.
    stopped: bool,
    /// Started before this process joined a run with a policy.
    outside: Option<Outside>,
}

impl Daemon {
    /// Starts a daemon with `args` on fresh state and pin dirs of its own
    /// (removed when it stops), so no round inherits the runs of another.
    pub(super) fn start(env: &Env, round: usize, args: &[&str]) -> Result<Self> {
        let state_dir = env.socket_dir.join(format!("state-{round}"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sensor-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&state_dir);
        let _ = fs::remove_dir_all(&pin_dir);
        Self::start_on(env, round, args, state_dir, pin_dir)
    }

    /// Starts a daemon on `state_dir` and `pin_dir` as they are (a restart).
    pub(super) fn start_on(
        env: &Env,
        round: usize,
        args: &[&str],
        state_dir: PathBuf,
        pin_dir: PathBuf,
    ) -> Result<Self> {
        let socket = env.socket_dir.join("sensor.sock");
        let _ = fs::remove_file(&socket);
        let log = env.out_dir.join("daemon.log");
        let spec = DaemonSpec {
            bin: env.sensor_bin.clone(),
            args: args.iter().map(OsString::from).collect(),
            socket,
            state_dir,
            pin_dir,
            stderr: log.clone(),
            stdout: None,
            wrapper: Vec::new(),
            env: Vec::new(),
            ready_timeout: READY_TIMEOUT,
            stop_timeout: STOP_TIMEOUT,
        };
        let mut log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        writeln!(
            log_file,
            "=== round {}: {}",
            round + 1,
            util::display(&spec.command())
        )
        .with_context(|| format!("cannot write {}", log.display()))?;
        let (state_dir, pin_dir) = (spec.state_dir.clone(), spec.pin_dir.clone());
        let process = DaemonProcess::start(spec).inspect_err(|_| {
            let _ = fs::remove_dir_all(&state_dir);
            let _ = fs::remove_dir_all(&pin_dir);
        })?;
        Ok(Self {
            process,
            stopped: false,
            outside: None,
        })
    }

    /// The daemon's pid.
    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Its control socket.
    pub(super) fn socket(&self) -> &std::path::Path {
        &self.process.spec().socket
    }

    /// `sensor status --json`, parsed.
    pub(super) fn status_json(&self) -> Result<Value> {
        self.process.status_json()
    }

    /// One request over the control socket (one JSON line each way), without
    /// starting a process (so it adds no events); the answer must carry
    /// `"result": want`.
    pub(super) fn request(&self, request: &Value, want: &str) -> Result<Value> {
        self.process.request_expecting(request, want)
    }

    /// `count` runs, each a `sensor launch --agent bench-N -- sleep 3600`;
    /// returns once the daemon reports them active.
    pub(super) fn start_runs(&self, count: usize) -> Result<Vec<Child>> {
        let mut sleepers = Vec::with_capacity(count);
        for i in 0..count {
            let child = Command::new(&self.process.spec().bin)
                .args(["launch", "--agent", &format!("bench-{i}"), "--socket"])
                .arg(self.socket())
                .args(["--", "sleep", "3600"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start `sensor launch ... sleep`")?;
            sleepers.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let active = self
                .status_json()?
                .get("runs_active")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if active >= count as u64 {
                return Ok(sleepers);
            }
            if Instant::now() >= deadline {
                bail!("only {active} of {count} runs became active within 60 s");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Registers this process (the storm driver) as the first process of a
    /// run, bound to `policy` if given (then an [`Outside`] shell is started
    /// first, to stop the daemon from outside the run).
    pub(super) fn launch_self(&mut self, agent: &str, policy: Option<&str>) -> Result<()> {
        let request = match policy {
            Some(p) => {
                self.outside = Some(Outside::start(&self.process)?);
                json!({"op": "launch", "agent": agent, "policy": p})
            }
            None => json!({"op": "launch", "agent": agent}),
        };
        self.request(&request, "launched").map(drop)
    }

    /// SIGKILL: no chance to stop cleanly. Its programs stay attached and
    /// keep recording; returns the state and pin dirs to start again on.
    pub(super) fn kill9(mut self) -> (PathBuf, PathBuf) {
        self.stopped = true;
        let _ = self.process.kill9();
        let spec = self.process.spec();
        (spec.state_dir.clone(), spec.pin_dir.clone())
    }

    /// SIGTERM, then wait for a clean exit (0); `sensor unload` detaches
    /// what it left pinned, and its state dir is removed.
    pub(super) fn stop(mut self) -> Result<()> {
        self.stopped = true;
        let spec = self.process.spec().clone();
        // An enforcing daemon leaves its programs attached when it stops:
        // `sensor unload` detaches them and returns once they are gone, so
        // the next variant (the bench itself is in the run) is not enforced.
        let (stopped, unload) = match self.outside.take() {
            Some(mut outside) => {
                let stopped = self.process.stop_with(|| outside.send("term"));
                (stopped, outside.unload())
            }
            None => {
                let stopped = self.process.stop();
                let unload = util::run(
                    Command::new(&spec.bin)
                        .arg("unload")
                        .arg("--pin-dir")
                        .arg(&spec.pin_dir)
                        .arg("--socket")
                        .arg(&spec.socket),
                );
                (stopped, unload)
            }
        };
        let _ = fs::remove_dir_all(&spec.state_dir);
        stopped.context("sensor daemon did not stop cleanly")?;
        unload
    }
}

/// A shell outside any run that, for a bench in an enforce run, sends the
/// daemon SIGTERM (at the first line on its stdin), then execs `sensor
/// unload` (at the second).
struct Outside {
    child: Child,
    stdin: Option<ChildStdin>,
}

/// `sh -c SCRIPT sh PID SENSOR PIN_DIR SOCKET`.
const OUTSIDE_SCRIPT: &str = "read -r _ || exit 1\n\
    kill -TERM \"$1\" || exit 1\n\
    read -r _ || exit 1\n\
    exec \"$2\" unload --pin-dir \"$3\" --socket \"$4\"\n";

impl Outside {
    fn start(daemon: &DaemonProcess) -> Result<Self> {
        let spec = daemon.spec();
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(OUTSIDE_SCRIPT)
            .arg("sh")
            .arg(daemon.pid().to_string())
            .arg(&spec.bin)
            .arg(&spec.pin_dir)
            .arg(&spec.socket)
            .stdin(Stdio::piped())
            // stdout carries the bench's table: `unload` reports on stderr.
            .stdout(io::stderr())
            .stderr(io::stderr());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start `{}`", util::display(&cmd)))?;
        let stdin = child.stdin.take();
        Ok(Self { child, stdin })
    }

    fn send(&mut self, line: &str) -> Result<()> {
        let stdin = self
            .stdin
            .as_mut()
            .context("the outside shell's stdin is closed")?;
        writeln!(stdin, "{line}").context("cannot write to the outside shell")
    }

    /// Runs `sensor unload` and waits for it.
    fn unload(mut self) -> Result<()> {
        eprintln!("$ sensor unload (from outside the run)");
        self.send("unload")?;
        drop(self.stdin.take());
        let status = self
            .child
            .wait()
            .context("cannot wait for `sensor unload`")?;
        if !status.success() {
            bail!("`sensor unload` (from outside the run) failed ({status})");
        }
        Ok(())
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.process.kill9();
            let spec = self.process.spec();
            let _ = fs::remove_dir_all(&spec.state_dir);
            let _ = fs::remove_dir_all(&spec.pin_dir);
        }
    }
}

/// `[limits]` for a daemon that must take thousands of runs from one user
/// (root, the bench) in seconds: the defaults (a few thousand runs per uid,
/// 50 launches per second, 32 connections per uid) bound a hostile user,
/// not a benchmark.
const MANY_RUNS_LIMITS: &str = "[limits]\n\
    runs_per_uid = 1000000\n\
    launches_per_second = 1000000\n\
    connections = 4096\n\
    connections_per_uid = 4096\n";

/// A config file with [`MANY_RUNS_LIMITS`], for `--config`.
pub(super) fn many_runs_config(env: &Env) -> Result<String> {
    let path = env.socket_dir.join("many-runs.toml");
    fs::write(&path, MANY_RUNS_LIMITS)
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path.display().to_string())
}

/// `lost.total` of a `sensor status --json`.
pub(super) fn lost_total(status: &Value) -> Result<u64> {
    status
        .pointer("/lost/total")
        .and_then(Value::as_u64)
        .context("`sensor status --json` has no lost.total count")
}

/// The count of events of `kind` in a `sensor status --json` (0: none).
pub(super) fn event_count(status: &Value, kind: &str) -> u64 {
    status
        .get("events")
        .and_then(|events| events.get(kind))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_counters() {
        let status = json!({"events": {"total": 9, "process.exec": 7}, "lost": {"total": 2}});
        assert_eq!(event_count(&status, "process.exec"), 7);
        assert_eq!(event_count(&status, "network.connect"), 0);
        assert_eq!(lost_total(&status).unwrap(), 2);
        assert!(lost_total(&json!({})).is_err());
    }
}

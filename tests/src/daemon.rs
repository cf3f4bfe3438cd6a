//! The integration tests' `sensor daemon`: [`Daemon`], the workspace's
//! daemon harness ([`crate::harness`]) in a temp dir of its own, writing
//! JSON lines to a file the test reads.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::harness::{DaemonProcess, DaemonSpec};
use crate::{
    BPFFS, POLL, READY_TIMEOUT, STOP_TIMEOUT, TempDir, compact, kind, marker, sensor_bin, text,
    truncate,
};

#[derive(Default)]
struct EventCache {
    /// Bytes of the file consumed so far (always at a line boundary).
    offset: u64,
    events: Vec<Value>,
}

/// A running `sensor daemon` writing JSON lines to a file of its own.
///
/// Every instance has its own temp dir (events file, socket, config,
/// `--state-dir <tmp>/state`) and its own bpffs pin dir
/// (`--pin-dir /sys/fs/bpf/sensor-test-<unique>`), so no two daemons share
/// runs; the pin dir is removed when the `Daemon` is dropped (after the
/// process is dead). [`Daemon::restart`] (or [`Daemon::stop`] then
/// [`Daemon::resume`]) runs the daemon again with the very same arguments:
/// same state dir, pin dir, socket, and events file (appended to).
pub struct Daemon {
    process: DaemonProcess,
    events_path: PathBuf,
    config_path: Option<PathBuf>,
    cache: RefCell<EventCache>,
    // Last: dropped after the daemon is killed.
    dir: TempDir,
}

impl Daemon {
    /// Starts `sensor daemon --output file:<tmp>/events.jsonl --socket
    /// <tmp>/s.sock --state-dir <tmp>/state --pin-dir
    /// /sys/fs/bpf/sensor-test-<unique>` and waits until `sensor status`
    /// exits 0.
    pub fn start() -> Result<Self> {
        Self::start_with(None, &[])
    }

    /// [`Daemon::start`] with extra daemon arguments.
    pub fn start_with_args(extra: &[&str]) -> Result<Self> {
        Self::start_with(None, extra)
    }

    /// [`Daemon::start`] with `--config <tmp>/sensor.toml` holding `toml`.
    pub fn start_with_config(toml: &str) -> Result<Self> {
        Self::start_with(Some(toml), &[])
    }

    /// [`Daemon::start`] with an optional config file (its text) and extra
    /// daemon arguments.
    pub fn start_with(config: Option<&str>, extra: &[&str]) -> Result<Self> {
        Self::start_wrapped(config, extra, &[])
    }

    /// [`Daemon::start_with`], the daemon run as `WRAPPER... sensor daemon
    /// ...` by a wrapper that execs it in place (same pid), such as
    /// `setpriv --bounding-set -sys_admin --`.
    pub fn start_wrapped(config: Option<&str>, extra: &[&str], wrapper: &[&str]) -> Result<Self> {
        Self::start_full(config, extra, wrapper, &[])
    }

    /// [`Daemon::start_wrapped`] with environment variables `env` set for
    /// the daemon (and kept across [`Daemon::restart`]).
    pub fn start_full(
        config: Option<&str>,
        extra: &[&str],
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Self> {
        let bin = sensor_bin()?;
        let dir = TempDir::new("daemon")?;
        let events_path = dir.path().join("events.jsonl");
        let reference = format!("file:{}", events_path.display());
        // `--output` replaces the config's outputs: a config that names its
        // own (`[[output]]` tables) gets the reference file as one more table.
        let config_outputs = config.is_some_and(|toml| toml.contains("[[output]]"));
        let mut args: Vec<OsString> = Vec::new();
        if !config_outputs {
            args.push("--output".into());
            args.push(reference.clone().into());
        }
        let config_path = match config {
            Some(toml) => {
                let path = dir.path().join("sensor.toml");
                let text = if config_outputs {
                    format!("{toml}\n[[output]]\nspec = {reference:?}\n")
                } else {
                    toml.to_owned()
                };
                fs::write(&path, text).with_context(|| format!("write {}", path.display()))?;
                args.push("--config".into());
                args.push(path.clone().into());
                Some(path)
            }
            None => None,
        };
        args.extend(extra.iter().map(OsString::from));
        let spec = DaemonSpec {
            bin,
            args,
            socket: dir.path().join("s.sock"),
            state_dir: dir.path().join("state"),
            // Unique per daemon instance (pid of the test binary + counter).
            pin_dir: Path::new(BPFFS).join(marker()),
            stderr: dir.path().join("daemon.stderr"),
            stdout: Some(dir.path().join("daemon.stdout")),
            wrapper: wrapper.iter().map(OsString::from).collect(),
            env: env
                .iter()
                .map(|(k, v)| (OsString::from(k), OsString::from(v)))
                .collect(),
            ready_timeout: READY_TIMEOUT,
            stop_timeout: STOP_TIMEOUT,
        };
        // On failure the pin dir goes with `spec` unused: remove it.
        let pin_dir = spec.pin_dir.clone();
        let process = DaemonProcess::start(spec).inspect_err(|_| {
            let _ = fs::remove_dir_all(&pin_dir);
        })?;
        Ok(Self {
            process,
            events_path,
            config_path,
            cache: RefCell::default(),
            dir,
        })
    }

    /// An upgrade: starts a second daemon on the same dirs and arguments
    /// with `--takeover` while this one runs, waits until the running one
    /// has handed over and exited, then until the new one is ready. Returns
    /// the old daemon's exit status.
    pub fn take_over(&mut self) -> Result<ExitStatus> {
        self.process.take_over()
    }

    /// Starts the daemon again after [`Daemon::stop`], with identical
    /// arguments (same state dir, pin dir, socket, config; the events file is
    /// appended to), and waits until it is ready.
    pub fn resume(&mut self) -> Result<()> {
        self.process
            .resume()
            .context("restarting the daemon on the same state and pin dirs")
    }

    /// SIGTERM, wait for exit status 0, then [`Daemon::resume`].
    pub fn restart(&mut self) -> Result<()> {
        self.stop().context("stopping the daemon for a restart")?;
        self.resume()
    }

    /// SIGKILL (no chance to detach or flush anything), then reaps the
    /// process. The pin dir, state dir and socket path stay as they are, so
    /// [`Daemon::resume`] starts it again on the same state.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        self.process.kill9()
    }

    /// Sends SIGTERM, waits for the daemon to exit and fails unless it exited
    /// with status 0.
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.process.stop()
    }

    /// Waits until the daemon exits by itself (something killed it) and
    /// reaps it, so that [`Daemon::resume`] can start it again.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.process.wait_exit(timeout)
    }

    /// Sends signal `sig` to the daemon process (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, sig: libc::c_int) {
        self.process.signal(sig);
    }

    /// Fails (with the daemon's stderr) if the daemon has exited.
    pub fn check_alive(&self) -> Result<()> {
        self.process.check_alive()
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The control socket it was started with.
    pub fn socket(&self) -> &Path {
        &self.process.spec().socket
    }

    /// The JSON lines output file.
    pub fn events_path(&self) -> &Path {
        &self.events_path
    }

    /// The daemon's private temp dir.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its `--state-dir` (`<tmp>/state`).
    pub fn state_dir(&self) -> &Path {
        &self.process.spec().state_dir
    }

    /// Its `--pin-dir` (`/sys/fs/bpf/sensor-test-<unique>`).
    pub fn pin_dir(&self) -> &Path {
        &self.process.spec().pin_dir
    }

    /// Its `--config` file, when started with one.
    pub fn config_path(&self) -> Option<&Path> {
        self.config_path.as_deref()
    }

    /// The `sensor` binary it runs.
    pub fn bin(&self) -> &Path {
        &self.process.spec().bin
    }

    /// The run table file, `<state-dir>/runs.json`.
    pub fn runs_path(&self) -> PathBuf {
        self.state_dir().join("runs.json")
    }

    /// Raw bytes of `<state-dir>/runs.json` (`None` when it does not exist).
    pub fn runs_file(&self) -> Result<Option<Vec<u8>>> {
        let path = self.runs_path();
        match fs::read(&path) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("read {}", path.display())),
        }
    }

    /// A `sensor` command with `SENSOR_SOCKET` set to this daemon's socket
    /// (inherited by everything it starts, so nested `sensor launch`/`whoami`
    /// find the daemon), and no `SENSOR_RUN_ID` from the test's environment.
    pub fn sensor(&self) -> Command {
        let mut cmd = Command::new(self.bin());
        cmd.env("SENSOR_SOCKET", self.socket())
            .env_remove("SENSOR_RUN_ID");
        cmd
    }

    /// `sensor launch --agent AGENT [launch_args...] -- CMD...` as a
    /// [`Daemon::sensor`] command.
    pub fn launch_cmd(&self, agent: &str, launch_args: &[&str], cmd: &[&str]) -> Command {
        let mut c = self.sensor();
        c.arg("launch")
            .arg("--agent")
            .arg(agent)
            .args(launch_args)
            .arg("--")
            .args(cmd);
        c
    }

    /// Connects to the control socket, writes `bytes` (then shuts down the
    /// write side), and returns everything the daemon sent back before it
    /// closed the connection (lossy UTF-8). A daemon that closes before
    /// reading everything is not an error (the write error is ignored).
    pub fn socket_exchange(&self, bytes: &[u8]) -> Result<String> {
        self.process.socket_exchange(bytes)
    }

    /// Sends one JSON request line and parses the first line of the answer.
    pub fn request(&self, request: &Value) -> Result<Value> {
        self.process.request(request)
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        self.process.stderr()
    }

    /// `sensor status --json`, parsed. Fails when the command fails.
    pub fn status_json(&self) -> Result<Value> {
        self.process.status_json()
    }

    /// `sensor status --json` whatever its exit status: whether it exited 0,
    /// and the JSON it printed.
    pub fn status_json_any(&self) -> Result<(bool, Value)> {
        let out = self.process.status_command(true)?;
        let stdout = text(&out.stdout);
        let value = serde_json::from_str(stdout.trim()).with_context(|| {
            format!(
                "`sensor status --json` ({}) printed invalid JSON: {stdout:?}; stderr {:?}",
                out.status,
                text(&out.stderr)
            )
        })?;
        Ok((out.status.success(), value))
    }

    /// `sensor status` (text) whatever its exit status: whether it exited 0,
    /// and what it printed.
    pub fn status_text(&self) -> Result<(bool, String)> {
        let out = self.process.status_command(false)?;
        Ok((out.status.success(), text(&out.stdout)))
    }

    /// The programs `sensor status --json` lists: name → kernel id.
    pub fn program_ids(&self) -> Result<BTreeMap<String, u32>> {
        let status = self.status_json()?;
        status["programs"]
            .as_array()
            .ok_or_else(|| anyhow!("status --json has no programs: {}", compact(&status)))?
            .iter()
            .map(|p| {
                let name = p["name"].as_str();
                let id = p["id"].as_u64().and_then(|i| u32::try_from(i).ok());
                match (name, id) {
                    (Some(n), Some(i)) => Ok((n.to_owned(), i)),
                    _ => bail!("bad programs entry {p}"),
                }
            })
            .collect()
    }

    /// Reads the lines appended since the last call. A partial last line is
    /// left for the next call; a complete line that is not a JSON object fails.
    fn refresh(&self) -> Result<()> {
        let mut cache = self.cache.borrow_mut();
        let mut file = match File::open(&self.events_path) {
            Ok(f) => f,
            // Not created yet (the daemon may open it lazily).
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => {
                return Err(e).with_context(|| format!("open {}", self.events_path.display()));
            }
        };
        file.seek(SeekFrom::Start(cache.offset))?;
        let mut buf = Vec::new();
        file.read_to_end(&mut buf)
            .with_context(|| format!("read {}", self.events_path.display()))?;
        let Some(last_nl) = buf.iter().rposition(|&b| b == b'\n') else {
            return Ok(());
        };
        let mut line_start = cache.offset;
        for line in buf[..last_nl].split(|&b| b == b'\n') {
            let this_line = line_start;
            line_start += line.len() as u64 + 1;
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            let value: Value = serde_json::from_slice(line).with_context(|| {
                format!(
                    "{} has an invalid JSON line at byte {this_line}: {}",
                    self.events_path.display(),
                    truncate(&text(line), 500)
                )
            })?;
            ensure!(
                value.is_object(),
                "{} has a JSON line that is not an object at byte {this_line}: {}",
                self.events_path.display(),
                truncate(&text(line), 500)
            );
            cache.events.push(value);
        }
        cache.offset += last_nl as u64 + 1;
        Ok(())
    }

    /// All events written so far (complete lines only).
    pub fn events(&self) -> Result<Vec<Value>> {
        self.refresh()?;
        Ok(self.cache.borrow().events.clone())
    }

    /// Calls `f` on all events written so far, without copying them.
    pub fn with_events<R>(&self, f: impl FnOnce(&[Value]) -> R) -> Result<R> {
        self.refresh()?;
        Ok(f(&self.cache.borrow().events))
    }

    /// Events matching `pred`, in file order.
    pub fn matching(&self, pred: impl Fn(&Value) -> bool) -> Result<Vec<Value>> {
        self.with_events(|evs| evs.iter().filter(|e| pred(e)).cloned().collect())
    }

    /// Waits until an event matching `pred` has been written and returns the
    /// first one. On timeout fails with a dump of the last events and the
    /// daemon's stderr; fails at once if the daemon dies.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut next = 0;
        loop {
            self.refresh()?;
            {
                let cache = self.cache.borrow();
                if let Some(e) = cache.events[next..].iter().find(|e| pred(e)) {
                    return Ok(e.clone());
                }
                next = cache.events.len();
            }
            if Instant::now() >= deadline {
                bail!(
                    "no matching event within {timeout:?}\n{}",
                    self.timeout_report()
                );
            }
            if self.process.is_started() {
                self.check_alive()?;
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until `done(all events)` is true. On timeout fails with
    /// `describe(all events)`, a dump of the last events and the daemon's
    /// stderr.
    pub fn wait_until(
        &self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
        describe: impl Fn(&[Value]) -> String,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.with_events(&done)? {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let what = self.with_events(&describe)?;
                bail!(
                    "condition not met within {timeout:?}: {what}\n{}",
                    self.timeout_report()
                );
            }
            if self.process.is_started() {
                self.check_alive()?;
            }
            thread::sleep(POLL);
        }
    }

    /// Waits until `done` holds for the events so far, then returns them.
    pub fn wait_events(
        &self,
        timeout: Duration,
        done: impl Fn(&[Value]) -> bool,
    ) -> Result<Vec<Value>> {
        self.wait_until(timeout, done, |evs| format!("{} events", evs.len()))?;
        self.events()
    }

    /// A dump for failure messages: counts by kind, the last events, stderr.
    pub fn timeout_report(&self) -> String {
        let cache = self.cache.borrow();
        let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
        for e in &cache.events {
            *by_kind.entry(kind(e)).or_default() += 1;
        }
        let from = cache.events.len().saturating_sub(25);
        let mut out = format!(
            "{} events in {} (by kind: {by_kind:?}); last {}:\n",
            cache.events.len(),
            self.events_path.display(),
            cache.events.len() - from
        );
        for e in &cache.events[from..] {
            out.push_str("  ");
            out.push_str(&compact(e));
            out.push('\n');
        }
        out.push_str(&self.process.stderr_report());
        out
    }

    /// Raw bytes of the output file.
    pub fn raw_output(&self) -> Result<Vec<u8>> {
        fs::read(&self.events_path).with_context(|| format!("read {}", self.events_path.display()))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SIGKILL unless it already exited (then kill9 has nothing to do).
        let _ = self.process.kill9();
        // The process is dead: forget its pinned maps (nothing else uses them).
        let pin_dir = self.pin_dir();
        if let Err(e) = fs::remove_dir_all(pin_dir)
            && e.kind() != io::ErrorKind::NotFound
        {
            eprintln!("cannot remove {}: {e}", pin_dir.display());
        }
        // libtest shows a test's output only when it fails, so this is the
        // daemon's side of the story for any failing test.
        eprintln!(
            "daemon pid {} ({} events read from {}; set SENSOR_TEST_KEEP=1 to keep it)\n{}",
            self.pid(),
            self.cache.borrow().events.len(),
            self.events_path.display(),
            self.process.stderr_report()
        );
    }
}

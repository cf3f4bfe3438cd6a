//! The one `sensor daemon` harness of the workspace: start a daemon on given
//! dirs, wait until `sensor status` answers, query it over its control
//! socket, stop it (SIGTERM, exit status 0 required), kill it, start it
//! again on the same state.
//!
//! Two users build on it: the integration tests' [`crate::Daemon`] (a temp
//! dir of its own, an events file it reads) and `cargo xtask bench` (the
//! daemons of its rounds, `xtask/src/bench/daemon.rs`). Neither spawns or
//! waits for a daemon process by itself.

use std::cell::RefCell;
use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{COMMAND_TIMEOUT, POLL, die_with_parent, run_with_timeout, send_signal, text};

/// How long one `sensor status` may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(10);
/// Lines of the daemon's stderr that failure messages show.
const STDERR_LINES: usize = 60;

/// How a `sensor daemon` runs: `[WRAPPER...] BIN daemon ARGS... --socket S
/// --state-dir D --pin-dir P`, the same on every (re)start.
#[derive(Debug, Clone)]
pub struct DaemonSpec {
    /// The `sensor` binary.
    pub bin: PathBuf,
    /// Arguments after `sensor daemon` besides the three dirs below
    /// (`--output`, `--config`, ...).
    pub args: Vec<OsString>,
    /// Its control socket (`--socket`): readiness and status ask there.
    pub socket: PathBuf,
    /// Its `--state-dir`.
    pub state_dir: PathBuf,
    /// Its bpffs `--pin-dir`.
    pub pin_dir: PathBuf,
    /// The file its stderr is appended to.
    pub stderr: PathBuf,
    /// The file its stdout is appended to (`None`: discarded).
    pub stdout: Option<PathBuf>,
    /// A command the daemon runs under, exec'ing it in place (same pid),
    /// such as `setpriv --bounding-set -sys_admin --`: empty for none.
    pub wrapper: Vec<OsString>,
    /// Environment variables set for the daemon (e.g. `NOTIFY_SOCKET`).
    pub env: Vec<(OsString, OsString)>,
    /// How long it may take to attach and answer `sensor status` with exit 0.
    pub ready_timeout: Duration,
    /// How long it may take to exit after SIGTERM.
    pub stop_timeout: Duration,
}

impl DaemonSpec {
    /// The command line (without stdio): for running, and for logs.
    pub fn command(&self) -> Command {
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut cmd = Command::new(program);
                cmd.args(args).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        cmd.arg("daemon")
            .args(&self.args)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--pin-dir")
            .arg(&self.pin_dir)
            // Only the arguments say where things are.
            .env_remove("SENSOR_SOCKET")
            .env_remove("SENSOR_CONFIG")
            .env_remove("SENSOR_STATE_DIR")
            .env_remove("SENSOR_PIN_DIR")
            .env_remove("NOTIFY_SOCKET")
            .env_remove("WATCHDOG_USEC")
            .env_remove("WATCHDOG_PID")
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }
}

/// A `sensor daemon` process run from a [`DaemonSpec`]. Killed (SIGKILL)
/// when dropped while running; its dirs are the caller's to clean up.
#[derive(Debug)]
pub struct DaemonProcess {
    spec: DaemonSpec,
    child: RefCell<Option<Child>>,
    pid: u32,
}

impl DaemonProcess {
    /// Starts the daemon and waits until it is ready.
    pub fn start(spec: DaemonSpec) -> Result<Self> {
        let mut process = Self {
            spec,
            child: RefCell::new(None),
            pid: 0,
        };
        process.resume()?;
        Ok(process)
    }

    /// Starts it again after [`DaemonProcess::stop`] (or a kill) with
    /// identical arguments, and waits until it is ready.
    pub fn resume(&mut self) -> Result<()> {
        ensure!(
            self.child.borrow().is_none(),
            "the daemon (pid {}) is still running",
            self.pid
        );
        self.spawn(&[])?;
        self.wait_ready()
    }

    /// An upgrade: starts a second daemon with the same arguments and
    /// `--takeover` while this one runs, waits until the running one has
    /// handed over and exited, then until the new one is ready. Returns the
    /// old daemon's exit status.
    pub fn take_over(&mut self) -> Result<ExitStatus> {
        let Some(mut old) = self.child.borrow_mut().take() else {
            bail!("no daemon is running to take over from");
        };
        let old_pid = self.pid;
        self.spawn(&["--takeover"])?;
        let status = old
            .wait()
            .with_context(|| format!("waiting for the old daemon (pid {old_pid})"))?;
        self.wait_ready()?;
        Ok(status)
    }

    /// Starts the process with the spec's arguments and `extra`; stdout and
    /// stderr are appended to the spec's files.
    fn spawn(&mut self, extra: &[&str]) -> Result<()> {
        let open = |path: &Path| {
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open {}", path.display()))
        };
        let stderr = open(&self.spec.stderr)?;
        let stdout = match &self.spec.stdout {
            Some(path) => Stdio::from(open(path)?),
            None => Stdio::null(),
        };
        let mut cmd = self.spec.command();
        cmd.args(extra)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr);
        // The daemon is killed if the thread that started it dies without
        // dropping this, so no daemon outlives a crashed test or bench.
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", self.spec.bin.display()))?;
        self.pid = child.id();
        *self.child.borrow_mut() = Some(child);
        Ok(())
    }

    fn wait_ready(&self) -> Result<()> {
        let timeout = self.spec.ready_timeout;
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()
                .context("the daemon exited before becoming ready")?;
            let last = self.status_command(false);
            if let Ok(out) = &last
                && out.status.success()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                let last = match last {
                    Ok(out) => format!(
                        "{}; stdout: {}; stderr: {}",
                        out.status,
                        text(&out.stdout).trim(),
                        text(&out.stderr).trim()
                    ),
                    Err(e) => format!("{e:#}"),
                };
                bail!(
                    "daemon not ready after {timeout:?} (`sensor status` never exited 0; last: {last})\n{}",
                    self.stderr_report()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `sensor status --socket <its socket> [--json]`, whatever its exit
    /// status.
    pub fn status_command(&self, json: bool) -> Result<Output> {
        let mut cmd = Command::new(&self.spec.bin);
        cmd.arg("status").arg("--socket").arg(&self.spec.socket);
        if json {
            cmd.arg("--json");
        }
        cmd.env_remove("SENSOR_SOCKET");
        Ok(run_with_timeout(&mut cmd, STATUS_TIMEOUT)?.1)
    }

    /// `sensor status --json`, parsed. Fails when the command fails.
    pub fn status_json(&self) -> Result<Value> {
        let out = self.status_command(true)?;
        ensure!(
            out.status.success(),
            "`sensor status --json` failed with {}: stdout {:?} stderr {:?}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        let stdout = text(&out.stdout);
        serde_json::from_str(stdout.trim())
            .with_context(|| format!("`sensor status --json` printed invalid JSON: {stdout:?}"))
    }

    /// Connects to the control socket, writes `bytes` (then shuts down the
    /// write side), and returns everything the daemon sent back before it
    /// closed the connection (lossy UTF-8). A daemon that closes before
    /// reading everything is not an error (the write error is ignored).
    pub fn socket_exchange(&self, bytes: &[u8]) -> Result<String> {
        let socket = &self.spec.socket;
        let mut stream = UnixStream::connect(socket)
            .with_context(|| format!("connect to {}", socket.display()))?;
        stream.set_read_timeout(Some(COMMAND_TIMEOUT))?;
        stream.set_write_timeout(Some(COMMAND_TIMEOUT))?;
        if !bytes.is_empty() {
            let _ = stream.write_all(bytes);
        }
        let _ = stream.shutdown(Shutdown::Write);
        let mut out = Vec::new();
        match stream.read_to_end(&mut out) {
            Ok(_) => {}
            // The daemon may reset a connection whose data it did not read.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            Err(e) => {
                return Err(e).with_context(|| format!("read from {}", socket.display()));
            }
        }
        Ok(text(&out))
    }

    /// Sends one JSON request line and parses the first line of the answer
    /// (read to the end of the connection).
    pub fn request(&self, request: &Value) -> Result<Value> {
        let mut line = request.to_string().into_bytes();
        line.push(b'\n');
        let answer = self.socket_exchange(&line)?;
        let first = answer.lines().next().unwrap_or("");
        serde_json::from_str(first)
            .with_context(|| format!("the answer to {request} is not JSON: {answer:?}"))
    }

    /// One request line over the control socket and one answer line,
    /// without waiting for the daemon to close the connection; the answer
    /// must carry `"result": want`.
    pub fn request_expecting(&self, request: &Value, want: &str) -> Result<Value> {
        let op = request.get("op").and_then(Value::as_str).unwrap_or("?");
        let socket = &self.spec.socket;
        let mut stream = UnixStream::connect(socket)
            .with_context(|| format!("cannot connect to {}", socket.display()))?;
        stream
            .set_read_timeout(Some(STATUS_TIMEOUT))
            .context("cannot set a read timeout on the control socket")?;
        writeln!(stream, "{request}").with_context(|| format!("cannot send the {op} request"))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .with_context(|| format!("cannot read the {op} answer"))?;
        let answer: Value =
            serde_json::from_str(&line).with_context(|| format!("bad {op} answer: {line:?}"))?;
        if answer.get("result").and_then(Value::as_str) != Some(want) {
            bail!("the daemon answered the {op} request without result {want:?}: {line}");
        }
        Ok(answer)
    }

    /// Fails (with the daemon's stderr) if the daemon has exited.
    pub fn check_alive(&self) -> Result<()> {
        let mut guard = self.child.borrow_mut();
        let Some(child) = guard.as_mut() else {
            bail!("the daemon was already stopped");
        };
        if let Some(status) = child.try_wait().context("waitpid on the daemon")? {
            guard.take();
            drop(guard);
            bail!(
                "the daemon (pid {}) exited unexpectedly with {status}\n{}",
                self.pid,
                self.stderr_report()
            );
        }
        Ok(())
    }

    /// Whether a process was started and not yet reaped (it may have exited).
    pub fn is_started(&self) -> bool {
        self.child.borrow().is_some()
    }

    /// Sends signal `sig` to the daemon process (SIGSTOP, SIGCONT, ...).
    pub fn signal(&self, sig: libc::c_int) {
        send_signal(self.pid, sig);
    }

    /// SIGTERM, waits for the daemon to exit and fails unless it exited with
    /// status 0 (killed with SIGKILL when it does not exit in time).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        let pid = self.pid;
        self.stop_with(|| {
            send_signal(pid, libc::SIGTERM);
            Ok(())
        })
    }

    /// [`DaemonProcess::stop`] with the SIGTERM sent by `terminate` (for a
    /// caller that may not signal the daemon itself, such as a process in
    /// an enforce run: the kernel kills it for that).
    pub fn stop_with(&mut self, terminate: impl FnOnce() -> Result<()>) -> Result<ExitStatus> {
        let Some(mut child) = self.child.borrow_mut().take() else {
            bail!("the daemon was already stopped or had exited");
        };
        if let Err(e) = terminate() {
            *self.child.borrow_mut() = Some(child);
            return Err(e.context("cannot ask the daemon to stop"));
        }
        let timeout = self.spec.stop_timeout;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = child.try_wait().context("waitpid on the daemon")? {
                break status;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the daemon did not exit within {timeout:?} of SIGTERM (killed)\n{}",
                    self.stderr_report()
                );
            }
            thread::sleep(POLL);
        };
        ensure!(
            status.code() == Some(0),
            "the daemon exited with {status} after SIGTERM, expected exit status 0\n{}",
            self.stderr_report()
        );
        Ok(status)
    }

    /// SIGKILL (no chance to detach or flush anything), then reaps the
    /// process. Its dirs and socket path stay as they are, so
    /// [`DaemonProcess::resume`] starts it again on the same state.
    pub fn kill9(&mut self) -> Result<ExitStatus> {
        let Some(mut child) = self.child.borrow_mut().take() else {
            bail!("the daemon was already stopped or had exited");
        };
        send_signal(self.pid, libc::SIGKILL);
        child.wait().context("waitpid on the SIGKILLed daemon")
    }

    /// Waits until the daemon exits by itself (something killed it) and
    /// reaps it, so that [`DaemonProcess::resume`] can start it again.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let Some(mut child) = self.child.borrow_mut().take() else {
            bail!("the daemon was already stopped or had exited");
        };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().context("waitpid on the daemon")? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                *self.child.borrow_mut() = Some(child);
                bail!(
                    "the daemon (pid {}) is still running after {timeout:?}",
                    self.pid
                );
            }
            thread::sleep(POLL);
        }
    }

    /// Everything the daemon wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let path = &self.spec.stderr;
        fs::read(path)
            .map(|b| text(&b))
            .unwrap_or_else(|e| format!("<cannot read {}: {e}>", path.display()))
    }

    /// The last lines of its stderr, framed, for failure messages.
    pub fn stderr_report(&self) -> String {
        let s = self.stderr();
        let lines: Vec<&str> = s.lines().collect();
        let tail = lines.len().saturating_sub(STDERR_LINES);
        format!(
            "--- daemon stderr ({} lines, last {} shown) ---\n{}\n--- end of daemon stderr ---",
            lines.len(),
            lines.len() - tail,
            lines[tail..].join("\n")
        )
    }

    /// The daemon's pid (of the last process started).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What it runs with.
    pub fn spec(&self) -> &DaemonSpec {
        &self.spec
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.borrow_mut().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

//! Helpers for the real-kernel integration tests of the `sensor` daemon.
//!
//! The tests run as root on the real kernel:
//!
//! ```text
//! SENSOR_BIN=/abs/path/to/sensor cargo test -p sensor-tests -- --test-threads=1
//! ```
//!
//! `SENSOR_BIN` defaults to `<workspace>/target/debug/sensor` (or
//! `$CARGO_TARGET_DIR/debug/sensor`). A test that cannot start or attach the
//! daemon fails; nothing here skips.
//!
//! Every test starts its own [`Daemon`] writing to its own file, with its own
//! `--state-dir` and bpffs `--pin-dir` (so no two daemons share runs; the pin
//! dir is removed on drop), and finds its own processes among all host events
//! by pid and by a unique [`marker`] put in their argv. [`Daemon::restart`]
//! continues on the same state, pin dir and events file;
//! [`Daemon::start_with_config`] passes a `--config` file. `SENSOR_TEST_KEEP=1`
//! keeps each test's temp dir (events file, daemon stderr) for inspection.
//!
//! Modules: [`harness`] (the workspace's one daemon harness, which
//! [`Daemon`] and `cargo xtask bench` build on), [`daemon`] (the tests'
//! [`Daemon`]), [`bpf`] (BPF objects seen from outside: bpftool, aya's
//! program listing), [`enforce`] (fixtures of the enforcement tests),
//! [`servers`] (real syslog, NATS and HTTP receivers), [`ocsf`] (the OCSF
//! validator); this file keeps paths, commands, soft checks and event
//! accessors.

pub mod bpf;
pub mod daemon;
pub mod enforce;
pub mod fake_model;
pub mod harness;
pub mod jwt;
pub mod ocsf;
pub mod pid_race;
pub mod servers;

pub use bpf::*;
pub use daemon::Daemon;

use std::env;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

/// How long a test waits for an event to show up in the output file.
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the daemon may take to attach and answer `status` with exit 0.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a short-lived command (a `sensor` CLI call, a test child) may run.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the daemon may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two polls of the output file.
pub const POLL: Duration = Duration::from_millis(50);
/// The bpffs directory under which the test daemons pin their maps.
pub const BPFFS: &str = "/sys/fs/bpf";

/// Path of the `sensor-test-helper` binary, for integration tests of this
/// package (`CARGO_BIN_EXE_*` is only set when compiling those).
#[macro_export]
macro_rules! helper_bin {
    () => {
        env!("CARGO_BIN_EXE_sensor-test-helper")
    };
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A string unique to this test process and call, to put in argv (or in a
/// file name) so a test can find its own processes among all host events.
pub fn marker() -> String {
    format!(
        "sensor-test-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The process `cmd` starts gets SIGKILL when the thread that started it
/// ends (`PR_SET_PDEATHSIG`): no daemon or server outlives a crashed test.
pub fn die_with_parent(cmd: &mut Command) {
    // SAFETY: prctl(2) is async-signal-safe; the closure touches nothing else.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The `sensor-test-helper` binary, beside the running test executable
/// (`target/<profile>/deps/<test>` → `target/<profile>/sensor-test-helper`):
/// for library code, where `helper_bin!` (a compile-time path) is not set.
pub fn helper_path() -> PathBuf {
    env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.join("sensor-test-helper")))
        .unwrap_or_else(|| target_dir().join("debug").join("sensor-test-helper"))
}

/// The workspace root (parent of this crate's directory).
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent()
        .map_or_else(|| here.to_path_buf(), Path::to_path_buf)
}

/// `$CARGO_TARGET_DIR` (relative: from the workspace root), else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(t) if !t.is_empty() => {
            let t = PathBuf::from(t);
            if t.is_absolute() {
                t
            } else {
                workspace_root().join(t)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// The `sensor` binary under test: `$SENSOR_BIN` (a relative path is taken
/// from the workspace root), else `target/debug/sensor` of this workspace.
pub fn sensor_bin() -> Result<PathBuf> {
    let path = match env::var_os("SENSOR_BIN") {
        Some(p) if !p.is_empty() => {
            let p = PathBuf::from(p);
            if p.is_absolute() {
                p
            } else {
                workspace_root().join(p)
            }
        }
        _ => target_dir().join("debug").join("sensor"),
    };
    ensure!(
        path.is_file(),
        "sensor binary not found at {} (build it with `cargo build -p sensor` or set SENSOR_BIN)",
        path.display()
    );
    Ok(path)
}

/// `fs::canonicalize` with the path in the error.
pub fn canonical(path: impl AsRef<Path>) -> Result<PathBuf> {
    let path = path.as_ref();
    fs::canonicalize(path).with_context(|| format!("canonicalize {}", path.display()))
}

/// The canonical path as a string, for comparison with `process.exe`/`cwd`.
pub fn canonical_str(path: impl AsRef<Path>) -> Result<String> {
    let p = canonical(path)?;
    p.to_str()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

/// A directory under the system temp dir (`tempfile`), removed on drop
/// (kept, and its path printed, when the test is failing or
/// `SENSOR_TEST_KEEP` is set, so its files can be looked at).
#[derive(Debug)]
pub struct TempDir {
    /// `None` once dropped.
    dir: Option<tempfile::TempDir>,
    /// Canonical (`/tmp` may be a symlink), as events name it.
    path: PathBuf,
}

impl TempDir {
    /// Creates a fresh directory named after the test process and `tag`;
    /// its path is canonical. Mode 0755 (less the umask), as `mkdir` makes
    /// it: tests run processes as other users that must reach into it.
    pub fn new(tag: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("{}-{tag}-", marker()))
            .permissions(fs::Permissions::from_mode(0o755))
            .tempdir()
            .with_context(|| format!("create a temp dir for {tag}"))?;
        let path = canonical(dir.path())?;
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Whether `SENSOR_TEST_KEEP` asks to keep temp dirs (events files, daemon
/// stderr) after the tests.
pub fn keep_temp() -> bool {
    env::var_os("SENSOR_TEST_KEEP").is_some_and(|v| !v.is_empty() && v != "0")
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take()
            && (thread::panicking() || keep_temp())
        {
            eprintln!("keeping {} for inspection", dir.keep().display());
        }
        // Otherwise `dir` was dropped above: removed with what it holds.
    }
}

/// Runs `sensor daemon` on a config file holding `toml`, alone: its own temp
/// dir (config, socket, state, events) and its own bpffs pin dir, both
/// removed afterwards, so a daemon that wrongly starts touches nothing
/// shared. For configs the daemon must refuse: returns the config's path and
/// the daemon's output; a daemon still running after `timeout` is killed and
/// that is an error.
pub fn daemon_on_config(toml: &str, timeout: Duration) -> Result<(PathBuf, Output)> {
    let tmp = TempDir::new("bad-config")?;
    let config = tmp.path().join("sensor.toml");
    fs::write(&config, toml).with_context(|| format!("write {}", config.display()))?;
    let pin_dir = Path::new(BPFFS).join(marker());
    let mut cmd = Command::new(sensor_bin()?);
    cmd.arg("daemon")
        .arg("--config")
        .arg(&config)
        .arg("--socket")
        .arg(tmp.path().join("s.sock"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--output")
        .arg(format!("file:{}", tmp.path().join("e.jsonl").display()));
    let result = run_with_timeout(&mut cmd, timeout);
    let _ = fs::remove_dir_all(&pin_dir);
    let (_, out) = result?;
    Ok((config, out))
}

/// `config/sensor.example.toml`, as shipped.
pub fn example_config() -> Result<String> {
    let path = workspace_root().join("config/sensor.example.toml");
    fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))
}

/// The example config without its `[daemon]` table (a test daemon has
/// outputs, socket and dirs of its own): its `[[agent]]` tables.
pub fn example_agent_tables() -> Result<String> {
    let text = example_config()?;
    let mut out = String::new();
    let mut in_daemon = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_daemon = t == "[daemon]";
        }
        if !in_daemon {
            out.push_str(line);
            out.push('\n');
        }
    }
    ensure!(
        out.contains("[[agent]]"),
        "config/sensor.example.toml has no [[agent]] table"
    );
    Ok(out)
}

/// Runs a command to completion (stdin null, stdout and stderr captured),
/// killing it and failing after `timeout`. Returns its pid and output.
pub fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<(u32, Output)> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {cmd:?}"))?;
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(timeout) {
        Ok(out) => Ok((pid, out.with_context(|| format!("wait for {cmd:?}"))?)),
        Err(_) => {
            send_signal(pid, libc::SIGKILL);
            bail!("{cmd:?} (pid {pid}) did not finish within {timeout:?}; killed")
        }
    }
}

/// [`run_with_timeout`] with [`COMMAND_TIMEOUT`].
pub fn run_child(cmd: &mut Command) -> Result<(u32, Output)> {
    run_with_timeout(cmd, COMMAND_TIMEOUT)
}

/// Lossy text of a byte buffer (for stdout/stderr).
pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

pub(crate) fn send_signal(pid: u32, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(pid) {
        // SAFETY: kill(2) has no memory-safety preconditions.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// The thread id of the calling thread.
pub fn gettid() -> u32 {
    // SAFETY: gettid(2) cannot fail and has no preconditions.
    let tid = unsafe { libc::gettid() };
    u32::try_from(tid).unwrap_or(0)
}

// ----- metrics -----

/// The text of `GET /metrics` at `addr` (the daemon's `[metrics] listen`).
pub fn scrape_metrics(addr: &str) -> Result<String> {
    use std::net::TcpStream;
    let mut stream =
        TcpStream::connect(addr).with_context(|| format!("metrics: connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "GET /metrics: {}",
        truncate(&answer, 300)
    );
    Ok(answer)
}

/// The value of the sample `series` (`name` or `name{label="v"}`) in a
/// Prometheus text.
pub fn metric_sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

// ----- soft assertions -----

/// Collects failed checks so that a test reports every mismatch of an event
/// at once instead of the first one only. Use with [`check!`].
#[derive(Debug, Default)]
pub struct Checks {
    failures: Vec<String>,
}

impl Checks {
    /// No failures yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether some check failed so far.
    pub fn failed(&self) -> bool {
        !self.failures.is_empty()
    }

    /// Records a failure.
    pub fn fail(&mut self, msg: String) {
        self.failures.push(msg);
    }

    /// Records the error of a sub-check, if any.
    pub fn result(&mut self, r: Result<()>) {
        if let Err(e) = r {
            self.fail(format!("{e:#}"));
        }
    }

    /// Fails with every recorded failure.
    pub fn finish(self) -> Result<()> {
        if self.failures.is_empty() {
            return Ok(());
        }
        let n = self.failures.len();
        bail!(
            "{n} check(s) failed:\n{}",
            self.failures
                .iter()
                .enumerate()
                .map(|(i, f)| format!("[{}] {f}", i + 1))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// `check!(checks, cond, "format", args..)`: like `ensure!`, but records the
/// failure in a [`Checks`] and goes on.
#[macro_export]
macro_rules! check {
    ($c:expr, $cond:expr, $($arg:tt)+) => {
        if !$cond {
            $c.fail(format!($($arg)+));
        }
    };
}

// ----- event accessors -----

/// `kind` of an event ("" when absent).
pub fn kind(e: &Value) -> &str {
    e.get("kind").and_then(Value::as_str).unwrap_or("")
}

/// A string at a JSON pointer (e.g. "/process/exe").
pub fn str_at<'a>(e: &'a Value, ptr: &str) -> Option<&'a str> {
    e.pointer(ptr).and_then(Value::as_str)
}

/// An integer at a JSON pointer.
pub fn i64_at(e: &Value, ptr: &str) -> Option<i64> {
    e.pointer(ptr).and_then(Value::as_i64)
}

/// A bool at a JSON pointer.
pub fn bool_at(e: &Value, ptr: &str) -> Option<bool> {
    e.pointer(ptr).and_then(Value::as_bool)
}

/// True when the pointer is absent or null.
pub fn absent_or_null(e: &Value, ptr: &str) -> bool {
    e.pointer(ptr).is_none_or(Value::is_null)
}

/// `process.pid`.
pub fn pid_of(e: &Value) -> Option<u32> {
    i64_at(e, "/process/pid").and_then(|p| u32::try_from(p).ok())
}

/// `process.argv` as strings (empty when absent).
pub fn argv_of(e: &Value) -> Vec<String> {
    e.pointer("/process/argv")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .map(|s| s.as_str().unwrap_or("<non-string>").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// True when some element of `process.argv` contains `needle`.
pub fn argv_has(e: &Value, needle: &str) -> bool {
    e.pointer("/process/argv")
        .and_then(Value::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|s| s.as_str().is_some_and(|s| s.contains(needle)))
        })
}

/// `kind == k` and `process.pid == pid`.
pub fn is_kind_pid(e: &Value, k: &str, pid: u32) -> bool {
    kind(e) == k && pid_of(e) == Some(pid)
}

/// One event on one line, cut to a readable length.
pub fn compact(e: &Value) -> String {
    truncate(&e.to_string(), 700)
}

/// Events, one per line, for failure messages.
pub fn dump(events: &[Value]) -> String {
    if events.is_empty() {
        return "  <none>".to_owned();
    }
    events
        .iter()
        .map(|e| format!("  {}", compact(e)))
        .collect::<Vec<_>>()
        .join("\n")
}

/// `s` cut to at most `max` bytes (at a char boundary), saying how much was cut.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…(+{} bytes)", &s[..end], s.len() - end)
}

/// Checks the fields every event carries: schema, seq, time (RFC 3339 with 9
/// fraction digits, UTC), host, kind.
pub fn check_common(e: &Value) -> Result<()> {
    let ctx = || compact(e);
    ensure!(
        str_at(e, "/schema") == Some("sensor.event/v1"),
        "schema is not sensor.event/v1: {}",
        ctx()
    );
    ensure!(
        e.get("seq").and_then(Value::as_u64).is_some(),
        "seq is not a u64: {}",
        ctx()
    );
    let time = str_at(e, "/time").unwrap_or("");
    ensure!(
        is_rfc3339_nanos(time),
        "time {time:?} is not YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ: {}",
        ctx()
    );
    ensure!(
        str_at(e, "/host/name").is_some_and(|s| !s.is_empty()),
        "host.name missing: {}",
        ctx()
    );
    ensure!(
        str_at(e, "/host/boot_id").is_some_and(|s| !s.is_empty()),
        "host.boot_id missing: {}",
        ctx()
    );
    ensure!(!kind(e).is_empty(), "kind missing: {}", ctx());
    Ok(())
}

fn is_rfc3339_nanos(t: &str) -> bool {
    let b = t.as_bytes();
    if b.len() != 30 {
        return false;
    }
    let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
    digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && b[10] == b'T'
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19)
        && b[19] == b'.'
        && digits(20..29)
        && b[29] == b'Z'
}

/// Fails unless `seq` strictly increases along `events`.
pub fn check_seq_increasing(events: &[Value]) -> Result<()> {
    let mut prev: Option<u64> = None;
    for e in events {
        let seq = e
            .get("seq")
            .and_then(Value::as_u64)
            .ok_or_else(|| anyhow!("event without a u64 seq: {}", compact(e)))?;
        if let Some(p) = prev {
            ensure!(
                seq > p,
                "seq {seq} follows {p}: not strictly increasing: {}",
                compact(e)
            );
        }
        prev = Some(seq);
    }
    Ok(())
}

/// The size of an argv area in the kernel: every argument plus its NUL.
pub fn argv_area_len<T: AsRef<[u8]>>(argv: &[T]) -> usize {
    argv.iter().map(|a| a.as_ref().len() + 1).sum()
}

/// Decodes standard base64 (with or without `=` padding).
pub fn b64_decode(s: &str) -> Result<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    const STANDARD_ANY_PAD: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
    );
    STANDARD_ANY_PAD
        .decode(s)
        .with_context(|| format!("invalid base64 {s:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() -> Result<()> {
        assert_eq!(b64_decode("")?, b"");
        assert_eq!(b64_decode("Zg==")?, b"f");
        assert_eq!(b64_decode("Zm8=")?, b"fo");
        assert_eq!(b64_decode("Zm9v")?, b"foo");
        assert_eq!(
            b64_decode("L2Jpbi90cnVlAP/+AA==")?,
            b"/bin/true\0\xff\xfe\0"
        );
        assert!(b64_decode("Zm9v!").is_err());
        Ok(())
    }

    #[test]
    fn time_format() {
        assert!(is_rfc3339_nanos("2026-11-23T10:00:00.123456789Z"));
        assert!(!is_rfc3339_nanos("2026-11-23T10:00:00.123456Z"));
        assert!(!is_rfc3339_nanos("2026-11-23T10:00:00.123456789+00:00"));
    }

    #[test]
    fn argv_len() {
        assert_eq!(argv_area_len(&["/bin/true", "x"]), 12);
    }
}

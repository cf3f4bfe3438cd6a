//! Small helpers: workspace paths, running commands, root check.

use std::{
    ffi::OsStr,
    process::{Command, Output},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root and the cargo target directory: the same helpers the
/// integration tests use (`CARGO_TARGET_DIR` when set, else `<root>/target`).
pub use sensor_tests::{target_dir, workspace_root};

/// A `cargo` command (the rustup proxy from PATH) run from the workspace root.
pub fn cargo() -> Result<Command> {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    Ok(cmd)
}

/// The command line as one printable string.
pub fn display(cmd: &Command) -> String {
    let mut line = String::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            line.push_str(&format!(
                "{}={} ",
                key.to_string_lossy(),
                value.to_string_lossy()
            ));
        }
    }
    line.push_str(&cmd.get_program().to_string_lossy());
    for arg in cmd.get_args() {
        line.push(' ');
        line.push_str(&quote(arg));
    }
    line
}

fn quote(arg: &OsStr) -> String {
    let arg = arg.to_string_lossy();
    if !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_=+./:,@%".contains(c))
    {
        arg.into_owned()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

static STDOUT_IS_DATA: AtomicBool = AtomicBool::new(false);

/// From now on stdout carries data (daemon events, a bench table): commands
/// run through [`run`] send their stdout to stderr, as xtask's progress does.
pub fn keep_stdout_for_data() {
    STDOUT_IS_DATA.store(true, Ordering::SeqCst);
}

/// Print the command (on stderr), run it with inherited stdio, fail unless it
/// exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let line = display(cmd);
    eprintln!("$ {line}");
    if STDOUT_IS_DATA.load(Ordering::SeqCst) {
        cmd.stdout(std::io::stderr());
    }
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({status})");
    }
    Ok(())
}

/// Run the command quietly and return its output, whatever its exit status;
/// fails only when it cannot be started.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.output()
        .with_context(|| format!("cannot start `{}`", display(cmd)))
}

/// Like [`output`], but a non-zero exit is an error naming the command, its
/// status and its stderr.
pub fn output_ok(cmd: &mut Command) -> Result<Output> {
    let out = output(cmd)?;
    if !out.status.success() {
        anyhow::bail!(
            "`{}` failed ({}): {}",
            display(cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Seconds with one decimal, for step durations.
pub fn secs(elapsed: Duration) -> String {
    format!("{:.1}s", elapsed.as_secs_f64())
}

/// Run `f` and return its result with how long it took.
pub fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let value = f();
    (value, start.elapsed())
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// Fail with a clear message unless running as root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "{what} must run as root (it loads eBPF programs and mounts tracefs/bpffs); \
             you are uid {}: try `sudo -E env PATH=\"$PATH\" cargo xtask ...`",
            euid()
        );
    }
    Ok(())
}

//! The peers the sensor is compared with: auditd (rules for execve, connect
//! and clone written to its log) and bpftrace (printing the same four events
//! to a file). Each is installed lazily from Debian's packages, started for
//! one round and stopped by a Drop guard even when the round fails.

use std::{
    fs::{self, File},
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Install auditd and bpftrace (once per bench run).
pub fn install() -> Result<()> {
    setup::ensure_apt(&["auditd", "bpftrace"])
}

/// Syscalls the bench rule audits (a typical exec/connect audit set).
pub const AUDIT_SYSCALLS: &[&str] = &[
    "execve", "execveat", "connect", "clone", "clone3", "fork", "vfork",
];
/// The key of the bench's rule; cleanup deletes the rules with this key only.
const AUDIT_KEY: &str = "sensorbench";
/// Debian's rules file sets the backlog to 8192; the kernel's default of 64
/// loses records at once.
pub const AUDIT_BACKLOG: &str = "8192";

/// How auditd was started, so it is stopped the same way.
enum Started {
    /// It was running already: leave it.
    No,
    /// `auditd -n` as our child.
    Child(Child),
    /// `systemctl start auditd`.
    Systemd,
}

/// auditd with the bench rules loaded; Drop removes the rules, restores the
/// kernel's audit `enabled` flag and stops auditd if the bench started it.
pub struct Auditd {
    started: Started,
    was_enabled: bool,
    /// The backlog limit before the bench set its own.
    old_backlog: Option<u64>,
    /// The kernel's lost count (since boot) when the rules were loaded.
    lost_at_start: u64,
    done: bool,
}

impl Auditd {
    pub fn start(log: &Path) -> Result<Self> {
        let status = audit_status()?;
        let was_enabled = status.get("enabled").is_some_and(|v| *v != 0);
        let running = status.get("pid").is_some_and(|&pid| pid != 0);
        let mut auditd = Self {
            started: Started::No,
            was_enabled,
            old_backlog: None,
            lost_at_start: 0,
            done: false,
        };
        if !running {
            auditd.started = if pid1_is_systemd() {
                util::run(Command::new("systemctl").args(["start", "auditd"]))?;
                Started::Systemd
            } else {
                let log_file = File::create(log)
                    .with_context(|| format!("cannot create {}", log.display()))?;
                let child = Command::new(sbin("auditd"))
                    .arg("-n")
                    .stdin(Stdio::null())
                    .stdout(log_file.try_clone().context("cannot clone a file handle")?)
                    .stderr(log_file)
                    .spawn()
                    .context("cannot start `auditd -n`")?;
                Started::Child(child)
            };
            let deadline = Instant::now() + START_TIMEOUT;
            loop {
                if let Started::Child(child) = &mut auditd.started
                    && let Some(status) = child.try_wait().context("cannot wait for auditd")?
                {
                    auditd.started = Started::No;
                    bail!(
                        "auditd exited ({status}) at start: {}",
                        fs::read_to_string(log).unwrap_or_default().trim()
                    );
                }
                if audit_status()?.get("pid").is_some_and(|&pid| pid != 0) {
                    break;
                }
                if Instant::now() >= deadline {
                    bail!("auditd did not register with the kernel within 30 s");
                }
                thread::sleep(Duration::from_millis(100));
            }
        }
        // Only the bench's own rules (key sensorbench) are ever deleted:
        // an auditd that was running keeps its rules.
        auditctl(&["-D", "-k", AUDIT_KEY])?;
        auditd.old_backlog = audit_status()?.get("backlog_limit").copied();
        auditctl(&["-b", AUDIT_BACKLOG])?;
        if auditctl(&audit_rule(AUDIT_SYSCALLS)).is_err() {
            // Older auditctl does not know clone3.
            let syscalls: Vec<&str> = AUDIT_SYSCALLS
                .iter()
                .copied()
                .filter(|&s| s != "clone3")
                .collect();
            auditctl(&audit_rule(&syscalls))?;
        }
        auditctl(&["-e", "1"])?;
        auditd.lost_at_start = auditd.lost()?;
        Ok(auditd)
    }

    /// The kernel's count of audit records lost since boot (`auditctl -s`,
    /// `lost`).
    pub fn lost(&self) -> Result<u64> {
        audit_status()?
            .get("lost")
            .copied()
            .context("`auditctl -s` printed no `lost` count")
    }

    /// Remove the rules and stop what we started; returns the records lost
    /// since the rules were loaded.
    pub fn stop(mut self) -> Result<u64> {
        let lost = self
            .lost()
            .map(|lost| lost.saturating_sub(self.lost_at_start));
        let cleaned = self.cleanup();
        let lost = lost?;
        cleaned?;
        Ok(lost)
    }

    fn cleanup(&mut self) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let deleted = auditctl(&["-D", "-k", AUDIT_KEY]);
        let backlog = match self.old_backlog.take() {
            Some(old) => auditctl(&["-b", &old.to_string()]),
            None => Ok(()),
        };
        let stopped = match std::mem::replace(&mut self.started, Started::No) {
            Started::No => Ok(()),
            Started::Systemd => util::run(Command::new("systemctl").args(["stop", "auditd"])),
            Started::Child(child) => stop_child(child, libc::SIGTERM, "auditd").map(|_| ()),
        };
        let restored = if self.was_enabled {
            Ok(())
        } else {
            auditctl(&["-e", "0"])
        };
        deleted?;
        backlog?;
        stopped?;
        restored
    }
}

impl Drop for Auditd {
    fn drop(&mut self) {
        if let Err(err) = self.cleanup() {
            eprintln!("xtask bench: cleaning up auditd: {err:#}");
        }
    }
}

fn audit_rule<'a>(syscalls: &[&'a str]) -> Vec<&'a str> {
    let mut rule = vec!["-a", "always,exit", "-F", "arch=b64"];
    for syscall in syscalls {
        rule.extend(["-S", syscall]);
    }
    rule.extend(["-k", AUDIT_KEY]);
    rule
}

fn pid1_is_systemd() -> bool {
    fs::read_to_string("/proc/1/comm").is_ok_and(|comm| comm.trim() == "systemd")
}

/// /usr/sbin/NAME or /sbin/NAME, else NAME from PATH.
fn sbin(name: &str) -> PathBuf {
    ["/usr/sbin", "/sbin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

fn auditctl(args: &[&str]) -> Result<()> {
    let mut cmd = Command::new(sbin("auditctl"));
    cmd.args(args).stdin(Stdio::null());
    util::output_ok(&mut cmd).map(drop)
}

/// `auditctl -s` as key → number (fields that are not numbers are left out).
fn audit_status() -> Result<std::collections::BTreeMap<String, u64>> {
    let mut cmd = Command::new(sbin("auditctl"));
    cmd.arg("-s").stdin(Stdio::null());
    let out = util::output(&mut cmd)?;
    if !out.status.success() {
        bail!(
            "`auditctl -s` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(parse_audit_status(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_audit_status(text: &str) -> std::collections::BTreeMap<String, u64> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            let key = words.next()?;
            let value = words.next()?.parse().ok()?;
            Some((key.to_owned(), value))
        })
        .collect()
}

/// The four events the sensor reports, printed by bpftrace.
const BPFTRACE_SCRIPT: &str = r#"
tracepoint:sched:sched_process_fork { printf("fork %d %d %s\n", args->parent_pid, args->child_pid, comm); }
tracepoint:sched:sched_process_exec { printf("exec %d %d %s\n", pid, uid, str(args->filename)); }
tracepoint:sched:sched_process_exit { printf("exit %d %s\n", pid, comm); }
tracepoint:syscalls:sys_enter_connect { printf("connect %d %d %s\n", pid, args->fd, comm); }
"#;

/// `bpftrace -o FILE -e SCRIPT`; Drop stops it (SIGINT, then SIGKILL).
pub struct Bpftrace {
    child: Option<Child>,
    output: PathBuf,
    stderr: PathBuf,
}

impl Bpftrace {
    pub fn start(dir: &Path) -> Result<Self> {
        let output = dir.join("bpftrace.out");
        let stderr = dir.join("bpftrace.err");
        let _ = fs::remove_file(&output);
        let err_file =
            File::create(&stderr).with_context(|| format!("cannot create {}", stderr.display()))?;
        let child = Command::new("bpftrace")
            .arg("-o")
            .arg(&output)
            .args(["-e", BPFTRACE_SCRIPT])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err_file)
            .spawn()
            .context("cannot start bpftrace")?;
        let mut bpftrace = Self {
            child: Some(child),
            output,
            stderr,
        };
        bpftrace.wait_attached()?;
        Ok(bpftrace)
    }

    /// Until it printed "Attaching N probes..." and then an exec of ours.
    fn wait_attached(&mut self) -> Result<()> {
        let deadline = Instant::now() + START_TIMEOUT;
        let mut attached = false;
        loop {
            if let Some(child) = &mut self.child
                && let Some(status) = child.try_wait().context("cannot wait for bpftrace")?
            {
                self.child = None;
                bail!(
                    "bpftrace exited ({status}) at start: {}",
                    fs::read_to_string(&self.stderr).unwrap_or_default().trim()
                );
            }
            let text = fs::read_to_string(&self.output).unwrap_or_default();
            if !attached {
                attached = text.contains("Attaching ")
                    || fs::read_to_string(&self.stderr)
                        .unwrap_or_default()
                        .contains("Attaching ");
            }
            if attached {
                // The probes are live once an exec of ours shows up.
                let status = Command::new("/bin/true")
                    .status()
                    .context("cannot run /bin/true")?;
                if status.success() && text.lines().any(|l| l.starts_with("exec ")) {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                bail!(
                    "bpftrace not attached within 30 s: {}",
                    fs::read_to_string(&self.stderr).unwrap_or_default().trim()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Events bpftrace reported lost so far ("Lost N events" lines).
    pub fn lost(&self) -> Result<u64> {
        let mut total = 0;
        for path in [&self.output, &self.stderr] {
            let Ok(file) = File::open(path) else {
                continue;
            };
            for line in BufReader::new(file).lines() {
                let line = line.with_context(|| format!("cannot read {}", path.display()))?;
                total += lost_in_line(&line);
            }
        }
        Ok(total)
    }

    /// SIGINT, wait; returns the lost count.
    pub fn stop(mut self) -> Result<u64> {
        let stopped = match self.child.take() {
            Some(child) => stop_child(child, libc::SIGINT, "bpftrace"),
            None => Ok(true),
        };
        let lost = self.lost()?;
        let _ = fs::remove_file(&self.output);
        if !stopped? {
            bail!("bpftrace did not exit within 20 s of SIGINT; killed");
        }
        Ok(lost)
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            let _ = stop_child(child, libc::SIGINT, "bpftrace");
        }
    }
}

fn lost_in_line(line: &str) -> u64 {
    let Some(rest) = line.trim().strip_prefix("Lost ") else {
        return 0;
    };
    rest.strip_suffix(" events")
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Send `signal`, wait up to [`STOP_TIMEOUT`], then SIGKILL. Ok(true) when it
/// exited by itself.
fn stop_child(mut child: Child, signal: libc::c_int, what: &str) -> Result<bool> {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill has no memory-safety preconditions; pid is our own
        // child, not yet reaped.
        unsafe { libc::kill(pid, signal) };
    }
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if child
            .try_wait()
            .with_context(|| format!("cannot wait for {what}"))?
            .is_some()
        {
            return Ok(true);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(false);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auditctl_status() {
        let status = parse_audit_status(
            "enabled 1\nfailure 1\npid 42\nlost 7\nloginuid_immutable 0 unlocked\n",
        );
        assert_eq!(status.get("lost"), Some(&7));
        assert_eq!(status.get("pid"), Some(&42));
        assert_eq!(status.get("loginuid_immutable"), Some(&0));
    }

    #[test]
    fn parses_bpftrace_loss() {
        assert_eq!(lost_in_line("Lost 12 events"), 12);
        assert_eq!(lost_in_line("exec 1 0 /bin/true"), 0);
        assert_eq!(lost_in_line("Lost x events"), 0);
    }
}

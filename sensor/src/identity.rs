//! Who and when: the host's identity, the clock that turns kernel boot-time
//! stamps into wall-clock time, and process keys that survive pid reuse.

use std::{fs, io, path::Path, time::SystemTime};

use nix::time::{ClockId, clock_gettime};

/// The host an event comes from.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Host {
    pub name: String,
    pub boot_id: String,
}

impl Host {
    /// Reads the host name and the kernel's boot id.
    pub fn current() -> io::Result<Self> {
        let name = nix::unistd::gethostname()
            .map_err(io::Error::from)?
            .to_string_lossy()
            .into_owned();
        let boot_id = procfs::sys::kernel::random::boot_id().map_err(io::Error::other)?;
        Ok(Self { name, boot_id })
    }
}

/// Builds process keys: `<boot id prefix>:<start time in clock ticks>:<pid>`.
///
/// The start time is the one `/proc/<pid>/stat` shows (field 22), so a key can
/// be computed both from kernel events and from /proc, and a recycled pid
/// gets a different key because its start time differs.
#[derive(Debug, Clone)]
pub struct ProcessKeys {
    boot_prefix: String,
    ns_per_tick: u64,
}

impl ProcessKeys {
    #[must_use]
    pub fn new(boot_id: &str, clock_ticks_per_second: u64) -> Self {
        let boot_prefix: String = boot_id
            .chars()
            .filter(char::is_ascii_hexdigit)
            .take(16)
            .collect();
        Self {
            boot_prefix,
            ns_per_tick: 1_000_000_000 / clock_ticks_per_second.max(1),
        }
    }

    /// Nanoseconds per clock tick.
    #[must_use]
    pub fn ns_per_tick(&self) -> u64 {
        self.ns_per_tick
    }

    /// Key of the process `pid` started at `start_ns` (CLOCK_BOOTTIME).
    #[must_use]
    pub fn key(&self, pid: u32, start_ns: u64) -> String {
        self.key_from_ticks(pid, start_ns / self.ns_per_tick)
    }

    /// Key from a start time already in clock ticks (as /proc gives it).
    #[must_use]
    pub fn key_from_ticks(&self, pid: u32, start_ticks: u64) -> String {
        // Built by hand, not with `format!`: two keys go into every event,
        // and the formatting machinery was a tenth of the daemon's time.
        let mut ticks = itoa::Buffer::new();
        let mut pid_digits = itoa::Buffer::new();
        let ticks = ticks.format(start_ticks);
        let pid = pid_digits.format(pid);
        let mut key = String::with_capacity(self.boot_prefix.len() + ticks.len() + pid.len() + 2);
        key.push_str(&self.boot_prefix);
        key.push(':');
        key.push_str(ticks);
        key.push(':');
        key.push_str(pid);
        key
    }
}

/// The number of clock ticks per second (`sysconf(_SC_CLK_TCK)`).
#[must_use]
pub fn clock_ticks_per_second() -> u64 {
    match nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK) {
        Ok(Some(v)) if v > 0 => v.unsigned_abs(),
        _ => 100,
    }
}

/// Converts `CLOCK_BOOTTIME` nanoseconds to wall-clock time.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// realtime - boottime, in ns.
    offset_ns: i128,
}

impl Clock {
    /// Measures the current offset between the two clocks.
    pub fn now() -> io::Result<Self> {
        let real = clock_gettime(ClockId::CLOCK_REALTIME).map_err(io::Error::from)?;
        let boot = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(io::Error::from)?;
        let ns = |t: nix::sys::time::TimeSpec| {
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        };
        Ok(Self {
            offset_ns: ns(real) - ns(boot),
        })
    }

    /// A clock with a fixed offset (tests).
    #[must_use]
    pub const fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    /// Wall-clock time of a boot-time stamp.
    #[must_use]
    pub fn wall(&self, boot_ns: u64) -> SystemTime {
        let unix_ns = i128::from(boot_ns) + self.offset_ns;
        let unix_ns = u64::try_from(unix_ns).unwrap_or(0);
        SystemTime::UNIX_EPOCH + std::time::Duration::from_nanos(unix_ns)
    }
}

/// Start time (clock ticks) and parent pid of a live process, from /proc.
#[must_use]
pub fn proc_start(pid: u32) -> Option<(u64, u32)> {
    proc_start_in(Path::new("/proc"), pid)
}

/// [`proc_start`] under another /proc root (tests, start-up seeding).
#[must_use]
pub fn proc_start_in(proc_root: &Path, pid: u32) -> Option<(u64, u32)> {
    let process = procfs::process::Process::new_with_root(proc_root.join(pid.to_string())).ok()?;
    let stat = process.stat().ok()?;
    Some((stat.starttime, u32::try_from(stat.ppid).ok()?))
}

/// Sends SIGKILL to process `pid` if it is still the process that started
/// at `start_ticks` (clock ticks, as /proc gives them): the pid is pinned
/// with a pidfd first, its start time checked, then the pidfd signalled, so
/// a pid reused meanwhile is never hit. Returns whether it was signalled.
pub fn kill_process(pid: u32, start_ticks: u64) -> bool {
    signal_process(pid, start_ticks, nix::sys::signal::Signal::SIGKILL)
}

/// Sends `signal` to process `pid` if it is still the process that started
/// at `start_ticks`, the way [`kill_process`] does.
pub fn signal_process(pid: u32, start_ticks: u64, signal: nix::sys::signal::Signal) -> bool {
    use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd};
    let Ok(raw) = i32::try_from(pid) else {
        return false;
    };
    // SAFETY: pidfd_open(2) with flags 0 returns a new fd or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, raw, 0) };
    let Ok(fd) = i32::try_from(fd) else {
        return false;
    };
    if fd < 0 {
        return false;
    }
    // SAFETY: the kernel just gave us this fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if proc_start(pid).map(|(t, _)| t) != Some(start_ticks) {
        return false;
    }
    // SAFETY: pidfd_send_signal(2) on our own pidfd, no siginfo.
    let r = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            signal as nix::libc::c_int,
            std::ptr::null::<nix::libc::siginfo_t>(),
            0,
        )
    };
    r == 0
}

/// Real uid of a live process (from `status`), under a /proc root.
#[must_use]
pub fn proc_uid_in(proc_root: &Path, pid: u32) -> Option<u32> {
    let process = procfs::process::Process::new_with_root(proc_root.join(pid.to_string())).ok()?;
    Some(process.status().ok()?.ruid)
}

/// This sensor's id, made once per state directory and kept in
/// `<state_dir>/instance_id`: unique across hosts and across daemons of one
/// host, stable across restarts (receivers deduplicate by it and `seq`).
pub fn instance_id(state_dir: &Path) -> io::Result<String> {
    let path = state_dir.join("instance_id");
    match fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => return Ok(id.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir_all(state_dir)?;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, format!("{id}\n"))?;
    fs::rename(&tmp, &path)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_differ_under_pid_reuse_and_match_proc_ticks() {
        let keys = ProcessKeys::new("0b5f0e3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c", 100);
        let a = keys.key(4242, 5_000_000_000);
        let b = keys.key(4242, 5_020_000_000);
        assert_ne!(a, b, "same pid, later start");
        assert_eq!(a, "0b5f0e3c1d2e4f5a:500:4242");
        assert_eq!(keys.key_from_ticks(4242, 500), a);
    }

    #[test]
    fn clock_converts_boot_time() {
        let clock = Clock::with_offset(1_700_000_000_000_000_000);
        let t = clock.wall(123);
        assert_eq!(
            humantime::format_rfc3339_nanos(t).to_string(),
            "2023-11-14T22:13:20.000000123Z"
        );
    }

    #[test]
    fn this_process_has_a_start_time() {
        let (ticks, ppid) = proc_start(std::process::id()).unwrap();
        assert!(ticks > 0);
        assert!(ppid > 0);
    }
}

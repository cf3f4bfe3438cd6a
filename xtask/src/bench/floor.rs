//! The `floor: syscall tracepoint` reference variant: what any sensor built
//! on `syscalls/` tracepoints pays before its programs do anything.
//!
//! Attaching a BPF program to any syscall tracepoint sets
//! `TIF_SYSCALL_TRACEPOINT` on every task, so every syscall of every task
//! leaves the fast path: `syscall_trace_enter`/`syscall_exit_work` and the
//! `sys_enter`/`sys_exit` tracepoints' perf handlers, which look the syscall
//! up and return when no program is attached to it. This variant attaches
//! one program that only returns 0 to `syscalls/sys_enter_getppid`, which
//! no storm calls: the storms' syscalls take the slow path and nothing
//! else. It uses the raw `bpf(2)` and `perf_event_open(2)` calls (two
//! instructions, no loader, no helper process), the same attachment a
//! libbpf or aya tracepoint link makes.

use std::{
    fs,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context as _, Result, bail};

/// The tracepoint the no-op program sits on: a syscall no storm makes.
pub const TRACEPOINT: &str = "syscalls/sys_enter_getppid";

/// Every classic tracepoint the sensor keeps attached while no process is in
/// a run, as in the storms (the `tp(…)` probes of
/// `sensor/src/loader/programs.rs`, not its `tp_in_runs(…)` ones; a unit test
/// keeps the two lists equal), plus [`TRACEPOINT`] for the check that the
/// program runs. Its raw tracepoint and cgroup hooks are not here: they have
/// no perf dispatch.
pub const SENSOR_TRACEPOINTS: &[&str] = &[
    TRACEPOINT,
    "sched/sched_process_exec",
    "sched/sched_process_exit",
    "syscalls/sys_enter_bpf",
    "syscalls/sys_enter_kill",
    "syscalls/sys_enter_pidfd_getfd",
    "syscalls/sys_enter_pidfd_send_signal",
    "syscalls/sys_enter_process_vm_writev",
    "syscalls/sys_enter_ptrace",
    "syscalls/sys_enter_tgkill",
    "syscalls/sys_enter_tkill",
    "syscalls/sys_exit_connect",
    "syscalls/sys_exit_execve",
    "syscalls/sys_exit_execveat",
];

/// `BPF_PROG_LOAD`.
const BPF_PROG_LOAD: libc::c_long = 5;
/// `BPF_ENABLE_STATS`.
const BPF_ENABLE_STATS: libc::c_long = 32;
/// `BPF_PROG_TYPE_TRACEPOINT`.
const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
/// `BPF_STATS_RUN_TIME`.
const BPF_STATS_RUN_TIME: u32 = 0;
/// `PERF_TYPE_TRACEPOINT`.
const PERF_TYPE_TRACEPOINT: u32 = 2;
/// `PERF_FLAG_FD_CLOEXEC`.
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;
/// `PERF_EVENT_IOC_ENABLE` (`_IO('$', 0)`).
const PERF_EVENT_IOC_ENABLE: libc::c_ulong = 0x2400;
/// `PERF_EVENT_IOC_SET_BPF` (`_IOW('$', 8, __u32)`).
const PERF_EVENT_IOC_SET_BPF: libc::c_ulong = 0x4004_2408;
/// Calls of the tracepoint's syscall made to check the program runs.
const CHECK_CALLS: u64 = 100;

/// The program: `r0 = 0; exit`.
const NOOP_INSNS: [u64; 2] = [
    0xb7, // BPF_ALU64 | BPF_MOV | BPF_K, dst r0, imm 0
    0x95, // BPF_JMP | BPF_EXIT
];

/// The head of `union bpf_attr` for `BPF_PROG_LOAD` (the kernel takes a
/// shorter attr and treats the rest as zero).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

/// `struct perf_event_attr` up to `PERF_ATTR_SIZE_VER0` (64 bytes): type
/// and size, config, sample_period, sample_type, read_format, the flag
/// bits (bit 0: disabled), wakeup_events and bp_type, config1.
#[repr(C)]
#[derive(Default)]
struct PerfEventAttr {
    type_: u32,
    size: u32,
    config: u64,
    sample_period: u64,
    sample_type: u64,
    read_format: u64,
    flags: u64,
    wakeup_events: u32,
    bp_type: u32,
    config1: u64,
}
const _: () = assert!(size_of::<PerfEventAttr>() == 64);

/// The no-op program attached to tracepoints; detached on drop (the perf
/// events' descriptors, then the program's).
pub struct Floor {
    // Field order is drop order: the events (the attachments) first.
    _events: Vec<OwnedFd>,
    prog: OwnedFd,
}

impl Floor {
    /// Loads and attaches the program, then checks that it runs: with run
    /// statistics on for a moment, [`CHECK_CALLS`] getppid() calls must
    /// each run it. Any failure is an error (the variant then measured
    /// nothing).
    pub fn start(tracepoints: &[&str]) -> Result<Self> {
        if !tracepoints.contains(&TRACEPOINT) {
            bail!("the floor's tracepoints must include {TRACEPOINT} (its check calls getppid)");
        }
        let prog = load_noop()?;
        let events = tracepoints
            .iter()
            .map(|tp| attach(&prog, tracepoint_id(tp)?))
            .collect::<Result<Vec<_>>>()?;
        let floor = Self {
            _events: events,
            prog,
        };
        floor.check_runs()?;
        Ok(floor)
    }

    fn check_runs(&self) -> Result<()> {
        let stats = enable_stats()?;
        let before = run_count(&self.prog)?;
        for _ in 0..CHECK_CALLS {
            // SAFETY: getppid has no preconditions (glibc does not cache it;
            // the raw call makes sure).
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        let ran = run_count(&self.prog)?.saturating_sub(before);
        drop(stats);
        if ran < CHECK_CALLS {
            bail!(
                "the no-op program on {TRACEPOINT} ran {ran} times for {CHECK_CALLS} getppid() calls: not attached"
            );
        }
        Ok(())
    }
}

/// The perf id of tracepoint `name` (`group/event`), from tracefs.
fn tracepoint_id(name: &str) -> Result<u64> {
    let mut errors = Vec::new();
    for root in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        let path = format!("{root}/events/{name}/id");
        match fs::read_to_string(&path) {
            Ok(text) => {
                return text
                    .trim()
                    .parse()
                    .with_context(|| format!("{path}: not a number: {text:?}"));
            }
            Err(err) => errors.push(format!("{path}: {err}")),
        }
    }
    bail!(
        "cannot read the id of tracepoint {name} (is tracefs mounted?): {}",
        errors.join("; ")
    )
}

/// `bpf(cmd, attr, size)`: a new descriptor, or the error.
fn bpf_fd<T>(cmd: libc::c_long, attr: &T, what: &str) -> Result<OwnedFd> {
    // SAFETY: `attr` is a valid, initialized attr of `size_of::<T>()` bytes
    // for this command; the kernel only reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("bpf({what})"));
    }
    let fd = i32::try_from(fd).with_context(|| format!("bpf({what}) returned {fd}"))?;
    // SAFETY: a new descriptor the kernel just gave us, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn load_noop() -> Result<OwnedFd> {
    let license = c"GPL";
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_TRACEPOINT,
        insn_cnt: NOOP_INSNS.len() as u32,
        insns: NOOP_INSNS.as_ptr() as u64,
        license: license.as_ptr() as u64,
        ..ProgLoadAttr::default()
    };
    let name = b"bench_floor";
    attr.prog_name[..name.len()].copy_from_slice(name);
    bpf_fd(BPF_PROG_LOAD, &attr, "BPF_PROG_LOAD of the no-op program")
}

/// A perf event on tracepoint `id` (all tasks; CPU 0, as for any
/// tracepoint program: it runs on every CPU) with `prog` attached, enabled.
fn attach(prog: &OwnedFd, id: u64) -> Result<OwnedFd> {
    let attr = PerfEventAttr {
        type_: PERF_TYPE_TRACEPOINT,
        size: size_of::<PerfEventAttr>() as u32,
        config: id,
        sample_period: 1,
        flags: 1, // disabled until the program is set
        wakeup_events: 1,
        ..PerfEventAttr::default()
    };
    // SAFETY: a valid perf_event_attr of `attr.size` bytes; pid -1, cpu 0,
    // no group.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            std::ptr::from_ref(&attr),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("perf_event_open of tracepoint {TRACEPOINT}"));
    }
    let fd = i32::try_from(fd).with_context(|| format!("perf_event_open returned {fd}"))?;
    // SAFETY: a new descriptor the kernel just gave us.
    let event = unsafe { OwnedFd::from_raw_fd(fd) };
    for (request, arg, what) in [
        (
            PERF_EVENT_IOC_SET_BPF,
            prog.as_raw_fd(),
            "PERF_EVENT_IOC_SET_BPF",
        ),
        (PERF_EVENT_IOC_ENABLE, 0, "PERF_EVENT_IOC_ENABLE"),
    ] {
        // SAFETY: ioctls of a perf event descriptor we own, with an int argument.
        if unsafe { libc::ioctl(event.as_raw_fd(), request, arg) } < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("{what} on tracepoint {TRACEPOINT}"));
        }
    }
    Ok(event)
}

/// Run statistics on while the descriptor lives (`BPF_ENABLE_STATS`).
fn enable_stats() -> Result<OwnedFd> {
    #[repr(C)]
    struct EnableStatsAttr {
        type_: u32,
    }
    bpf_fd(
        BPF_ENABLE_STATS,
        &EnableStatsAttr {
            type_: BPF_STATS_RUN_TIME,
        },
        "BPF_ENABLE_STATS",
    )
}

/// `run_cnt` of a program of ours, from /proc/self/fdinfo.
fn run_count(prog: &OwnedFd) -> Result<u64> {
    let path = format!("/proc/self/fdinfo/{}", prog.as_raw_fd());
    let text = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("run_cnt:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no run_cnt in {path}: {text:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tracepoints of `tp(PROGRAM, "group", "name", …)` in the loader's
    /// table (attached whether or not a process is in a run; the
    /// `tp_in_runs(…)` ones are not: the split on `tp(` leaves them in the
    /// text before).
    fn loader_tracepoints() -> Vec<String> {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../sensor/src/loader/programs.rs"
        );
        let source = fs::read_to_string(path).unwrap();
        let mut found = Vec::new();
        for call in source.split("tp(").skip(1) {
            let quoted: Vec<&str> = call.split('"').skip(1).step_by(2).take(2).collect();
            if let [group, name] = quoted[..]
                && call.trim_start().starts_with("p::")
            {
                found.push(format!("{group}/{name}"));
            }
        }
        found.sort();
        found.dedup();
        found
    }

    #[test]
    fn the_floor_sits_on_every_tracepoint_the_sensor_uses() {
        let mut ours: Vec<String> = SENSOR_TRACEPOINTS
            .iter()
            .filter(|tp| **tp != TRACEPOINT)
            .map(|tp| (*tp).to_owned())
            .collect();
        ours.sort();
        let loader = loader_tracepoints();
        assert!(loader.len() > 10, "{loader:?}");
        assert_eq!(ours, loader);
    }
}

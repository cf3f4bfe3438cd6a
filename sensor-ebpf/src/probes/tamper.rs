//! Tamper: a process of a run reaching into a process outside its run
//! (`process.tamper`: ptrace, process_vm_writev, pidfd_getfd, an open of
//! /proc/PID/mem), or into the sensor (`sensor.tamper`: a signal to the
//! daemon, an open for writing of its files, a bpf() call).
//!
//! A run may reach into its own processes and those of its sub-runs (it
//! started them); anything else is tamper. Under an enforce policy the
//! caller is killed where the kernel lets that stop the effect:
//!
//! - ptrace (attach, seize): the attach happens, but the tracer dies before
//!   it returns and can issue a request; its tracees are detached at its exit.
//! - process_vm_writev: with SIGKILL pending, the kernel's page pinning
//!   (`__get_user_pages`) fails with EINTR before the first page: nothing is
//!   written.
//! - pidfd_getfd: the fd is installed in a process that is already dying.
//! - /proc/PID/mem: seen at the open's exit (the file that was really
//!   opened, however it was named); the caller dies before it returns, and
//!   any other thread's access to the memory fails (fatal signal pending).
//! - a signal to the daemon, a bpf() call: the syscall still happens; they
//!   are reported before their effect, not blocked.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated::bpf_ktime_get_boot_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use sensor_common::handover::kind_word;
use sensor_common::{
    event::{
        EventHeader, EventKind, FixedEvent, HOW_MASK, TAMPER_BPF, TAMPER_FLAG_KILLED,
        TAMPER_PIDFD_GETFD, TAMPER_PROC_MEM, TAMPER_PTRACE, TAMPER_SENSOR_FILE, TAMPER_SIGNAL,
        TAMPER_VM_WRITE, TamperData,
    },
    limits::SENSOR_DIR_DEPTH,
    policy::{Decision, ExecKey, MODE_ENFORCE, RULE_TAMPER, VERDICT_DENY},
    stats::bpf_cmd_reads_only,
};

use crate::{
    config::{active, is_own, offset},
    emit::{count_foreign_bpf, deny_budget, emit},
    kernel::{Reader, current_task, run_of},
    maps::{PROC_RUNS, RUN_TREE, SENSOR_FILES},
    policy::{kill_current, policy_of},
    syscall,
};

/// `PTRACE_ATTACH`, `PTRACE_SEIZE`: the requests that take a new tracee.
const PTRACE_ATTACH: u64 = 16;
const PTRACE_SEIZE: u64 = 0x4206;
/// `FMODE_WRITE` in `file.f_mode`.
const FMODE_WRITE: u32 = 0x2;
/// `PROC_SUPER_MAGIC`.
const PROC_SUPER_MAGIC: u64 = 0x9fa0;
/// Run-tree levels walked to see whether a run is a sub-run of another.
const RUN_TREE_DEPTH: usize = 8;

/// The run of the current process, if it is in one (and not the daemon).
#[inline(always)]
fn caller_run() -> Option<(u32, u64, u32)> {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let (run, how) = run_of(tgid, 0);
    if run == 0 || is_own(tgid) {
        return None;
    }
    Some((tgid, run, how))
}

/// Whether run `target` is run `run` or one of its sub-runs.
#[inline(always)]
fn within(target: u64, run: u64) -> bool {
    let mut at = target;
    let mut i = 0;
    while i < RUN_TREE_DEPTH {
        if at == run {
            return true;
        }
        if at == 0 {
            return false;
        }
        // SAFETY: value copy out of the map.
        at = match unsafe { RUN_TREE.get(at) } {
            Some(parent) => *parent,
            None => 0,
        };
        i += 1;
    }
    false
}

/// Decides and reports what the current process (of run `run`) did; kills
/// it under an enforce policy when `kill` says that stops the effect.
#[inline(always)]
fn report(mut data: TamperData, tgid: u32, run: u64, how: u32, kill: bool) {
    if let Some((_, slot)) = policy_of(run) {
        let enforce = slot.mode == MODE_ENFORCE && kill;
        data.decision = Decision {
            policy: slot.id,
            rule: RULE_TAMPER,
            verdict: VERDICT_DENY,
            enforced: u16::from(enforce),
            _pad: 0,
        };
        if enforce {
            kill_current();
            data.flags |= TAMPER_FLAG_KILLED;
        }
    }
    if !deny_budget(run) {
        return;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let mut r = Reader::new();
    let mut ev = FixedEvent {
        header: EventHeader {
            kind: kind_word(EventKind::Tamper as u32),
            generation: offset!(generation),
            size: size_of::<FixedEvent<TamperData>>() as u32,
            // SAFETY: no preconditions.
            ktime_ns: unsafe { bpf_ktime_get_boot_ns() },
            tgid,
            tid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            ..EventHeader::default()
        },
        payload: data,
    };
    r.fill_current(&mut ev.header);
    ev.header.run = run;
    ev.header.run_how = how & HOW_MASK;
    // SAFETY: ev lives on the stack for the call.
    unsafe {
        emit(
            (&raw const ev).cast(),
            size_of::<FixedEvent<TamperData>>(),
            EventKind::Tamper,
            r.errors,
            run,
        );
    }
}

/// A process target `target` (host pid) of method `method`: tamper unless it
/// is in the caller's run or a sub-run of it.
#[inline(always)]
fn process_target(method: u16, arg: u32, target: u32, kill: bool) {
    let Some((tgid, run, how)) = caller_run() else {
        return;
    };
    if target == 0 || target == tgid {
        return;
    }
    // SAFETY: value copy out of the map.
    let entry = unsafe { PROC_RUNS.get(target).copied() };
    let (target_run, target_start) = entry.map_or((0, 0), |e| (e.run, e.start_ns));
    if target_run != 0 && within(target_run, run) {
        return;
    }
    let data = TamperData {
        method,
        arg,
        target_tgid: target,
        target_start_ns: target_start,
        target_run,
        ..TamperData::default()
    };
    report(data, tgid, run, how, kill);
}

/// tracepoint `syscalls/sys_enter_ptrace(request, pid, addr, data)`: an
/// attach to a process outside the run.
#[tracepoint]
pub fn snsr_ptrace(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    let request = syscall::arg(&ctx, 0);
    if request == PTRACE_ATTACH || request == PTRACE_SEIZE {
        process_target(
            TAMPER_PTRACE,
            request as u32,
            syscall::arg(&ctx, 1) as u32,
            true,
        );
    }
    0
}

/// tracepoint `syscalls/sys_enter_process_vm_writev(pid, ...)`.
#[tracepoint]
pub fn snsr_vm_write(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    process_target(TAMPER_VM_WRITE, 0, syscall::arg(&ctx, 0) as u32, true);
    0
}

/// The host pid a pidfd of the current task refers to (0: unknown).
#[inline(always)]
fn pidfd_target(r: &mut Reader, pidfd: u32) -> u32 {
    let file = file_of(r, pidfd);
    // pidfs (6.9+) keeps the struct pid in the inode; anon-inode pidfds
    // before it kept it in the file.
    let inode: u64 = r.read(file, offset!(kernel.file_f_inode));
    let mut pid: u64 = r.read(inode, offset!(kernel.inode_i_private));
    if pid == 0 {
        pid = r.read(file, offset!(kernel.file_private_data));
    }
    // pid->numbers[0].nr: the pid in the initial namespace.
    r.read(pid, offset!(kernel.pid_numbers) + offset!(kernel.upid_nr))
}

/// The `struct file *` of fd `fd` of the current task (0: none).
#[inline(always)]
fn file_of(r: &mut Reader, fd: u32) -> u64 {
    let task = current_task();
    let files: u64 = r.read(task, offset!(kernel.task_files));
    let fdt: u64 = r.read(files, offset!(kernel.files_fdt));
    let max_fds: u32 = r.read(fdt, offset!(kernel.fdtable_max_fds));
    if fd >= max_fds {
        return 0;
    }
    let fds: u64 = r.read(fdt, offset!(kernel.fdtable_fd));
    r.read(fds + u64::from(fd) * 8, 0)
}

/// tracepoint `syscalls/sys_enter_pidfd_getfd(pidfd, fd, flags)`.
#[tracepoint]
pub fn snsr_getfd(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    if caller_run().is_none() {
        return 0;
    }
    let mut r = Reader::new();
    let target = pidfd_target(&mut r, syscall::arg(&ctx, 0) as u32);
    process_target(
        TAMPER_PIDFD_GETFD,
        syscall::arg(&ctx, 1) as u32,
        target,
        true,
    );
    0
}

/// tracepoint `syscalls/sys_exit_openat`.
#[tracepoint]
pub fn snsr_openat_out(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

/// tracepoint `syscalls/sys_exit_openat2`.
#[tracepoint]
pub fn snsr_opena2_out(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

/// tracepoint `syscalls/sys_exit_open`.
#[tracepoint]
pub fn snsr_open_out(ctx: TracePointContext) -> u32 {
    open_exit(&ctx);
    0
}

/// An open of a process in a run, judged on the file it really opened:
/// `/proc/PID/mem` of a process outside the run, or one of the sensor's
/// files opened for writing.
///
/// The failed opens go first, before any map lookup: this program runs at
/// every open on the host, and most of them fail (the dynamic loader tries
/// each directory of its search path: 55 opens per exec under `cargo run`'s
/// `LD_LIBRARY_PATH`, 53 of them ENOENT).
#[inline(always)]
fn open_exit(ctx: &TracePointContext) {
    let ret = syscall::ret(ctx);
    if ret < 0 {
        return;
    }
    if !active() {
        return; // the active load records
    }
    let Some((tgid, run, how)) = caller_run() else {
        return;
    };
    let mut r = Reader::new();
    let file = file_of(&mut r, ret as u32);
    if file == 0 {
        return;
    }
    let f_path = offset!(kernel.file_f_path);
    let dentry: u64 = r.read(file, f_path + offset!(kernel.path_dentry));
    let inode: u64 = r.read(dentry, offset!(kernel.dentry_d_inode));
    let sb: u64 = r.read(inode, offset!(kernel.inode_i_sb));
    let magic: u64 = r.read(sb, offset!(kernel.sb_s_magic));
    let mode: u32 = r.read(file, offset!(kernel.file_f_mode));
    if magic == PROC_SUPER_MAGIC {
        if let Some(target) = proc_mem_target(&mut r, dentry) {
            process_target(TAMPER_PROC_MEM, mode, target, true);
        }
        return;
    }
    if mode & FMODE_WRITE == 0 {
        return;
    }
    if let Some((kind, dev, ino)) = sensor_file(&mut r, dentry) {
        let data = TamperData {
            method: TAMPER_SENSOR_FILE,
            arg: mode,
            file_dev: dev,
            file_ino: ino,
            file_kind: kind,
            ..TamperData::default()
        };
        report(data, tgid, run, how, true);
    }
}

/// For a procfs dentry named `mem` whose parent is a pid directory, that pid.
#[inline(always)]
fn proc_mem_target(r: &mut Reader, dentry: u64) -> Option<u32> {
    let name_off = offset!(kernel.dentry_d_name);
    let len: u32 = r.read(dentry, name_off + offset!(kernel.qstr_len));
    let name: u64 = r.read(dentry, name_off + offset!(kernel.qstr_name));
    let text: [u8; 4] = r.read(name, 0);
    if len != 3 || text[0] != b'm' || text[1] != b'e' || text[2] != b'm' {
        return None;
    }
    // /proc/PID/mem or /proc/PID/task/TID/mem: the nearest numeric parent
    // below "task" is the thread; its process is what PROC_RUNS knows, and a
    // thread's number in /proc/PID/task is its tid: use the top pid.
    let parent: u64 = r.read(dentry, offset!(kernel.dentry_d_parent));
    let mut at = parent;
    let mut pid = 0u32;
    let mut i = 0;
    while i < 3 {
        let plen: u32 = r.read(at, name_off + offset!(kernel.qstr_len));
        let pname: u64 = r.read(at, name_off + offset!(kernel.qstr_name));
        let digits: [u8; 8] = r.read(pname, 0);
        if let Some(n) = parse_pid(&digits, plen) {
            pid = n;
        }
        at = r.read(at, offset!(kernel.dentry_d_parent));
        i += 1;
    }
    (pid != 0).then_some(pid)
}

/// A decimal pid of `len` (<= 7) digits at the start of `digits`.
#[inline(always)]
fn parse_pid(digits: &[u8; 8], len: u32) -> Option<u32> {
    if len == 0 || len > 7 {
        return None;
    }
    let mut n = 0u32;
    let mut i = 0;
    while i < 7 {
        if (i as u32) < len {
            let d = digits[i];
            if !d.is_ascii_digit() {
                return None;
            }
            n = n * 10 + u32::from(d - b'0');
        }
        i += 1;
    }
    Some(n)
}

/// Whether `dentry` is one of the sensor's files, or is below one of its
/// directories: (kind, dev, ino) of the match.
#[inline(always)]
fn sensor_file(r: &mut Reader, dentry: u64) -> Option<(u32, u32, u64)> {
    let mut at = dentry;
    let mut i = 0;
    while i < SENSOR_DIR_DEPTH {
        let inode: u64 = r.read(at, offset!(kernel.dentry_d_inode));
        let ino: u64 = r.read(inode, offset!(kernel.inode_i_ino));
        let sb: u64 = r.read(inode, offset!(kernel.inode_i_sb));
        let dev: u32 = r.read(sb, offset!(kernel.sb_s_dev));
        let key = ExecKey {
            policy: 0,
            dev,
            ino,
        };
        // SAFETY: value copy out of the map.
        if let Some(kind) = unsafe { SENSOR_FILES.get(key).copied() } {
            return Some((kind, dev, ino));
        }
        let parent: u64 = r.read(at, offset!(kernel.dentry_d_parent));
        if parent == at || parent == 0 {
            return None;
        }
        at = parent;
        i += 1;
    }
    None
}

/// A signal from a process of a run to the daemon: `target` is the pid the
/// call names (`-1`: every process, the daemon included).
#[inline(always)]
fn signal(target: i32, sig: u32) {
    if sig == 0 {
        return;
    }
    let own = offset!(own_tgid);
    if target != -1 && target != own as i32 {
        return;
    }
    let Some((tgid, run, how)) = caller_run() else {
        return;
    };
    let data = TamperData {
        method: TAMPER_SIGNAL,
        arg: sig,
        target_tgid: own,
        ..TamperData::default()
    };
    // Killed under enforce; the signal itself still lands (a tracepoint
    // cannot stop the syscall), but the attacker goes with it.
    report(data, tgid, run, how, true);
}

/// tracepoint `syscalls/sys_enter_kill(pid, sig)`.
#[tracepoint]
pub fn snsr_kill(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    signal(syscall::arg(&ctx, 0) as i32, syscall::arg(&ctx, 1) as u32);
    0
}

/// tracepoint `syscalls/sys_enter_tgkill(tgid, tid, sig)`.
#[tracepoint]
pub fn snsr_tgkill(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    signal(syscall::arg(&ctx, 0) as i32, syscall::arg(&ctx, 2) as u32);
    0
}

/// tracepoint `syscalls/sys_enter_tkill(tid, sig)` (the daemon's main thread).
#[tracepoint]
pub fn snsr_tkill(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    signal(syscall::arg(&ctx, 0) as i32, syscall::arg(&ctx, 1) as u32);
    0
}

/// tracepoint `syscalls/sys_enter_pidfd_send_signal(pidfd, sig, info, flags)`.
#[tracepoint]
pub fn snsr_pidfd_sig(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    if caller_run().is_none() {
        return 0;
    }
    let mut r = Reader::new();
    let target = pidfd_target(&mut r, syscall::arg(&ctx, 0) as u32);
    signal(target as i32, syscall::arg(&ctx, 1) as u32);
    0
}

/// tracepoint `syscalls/sys_enter_bpf(cmd, attr, size)`: a process of a run
/// using bpf() at all (loading, detaching, reading or writing maps: the
/// sensor's among them). Any other process's call that can change a map is
/// counted (`Stats::foreign_bpf`): the daemon compares its policy maps in
/// full after one.
#[tracepoint]
pub fn snsr_bpf(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    let cmd = syscall::arg(&ctx, 0) as u32;
    if !bpf_cmd_reads_only(cmd) && !is_own((bpf_get_current_pid_tgid() >> 32) as u32) {
        count_foreign_bpf();
    }
    let Some((tgid, run, how)) = caller_run() else {
        return 0;
    };
    let data = TamperData {
        method: TAMPER_BPF,
        arg: cmd,
        ..TamperData::default()
    };
    // Killed under enforce. The call itself still runs (a tracepoint
    // cannot stop it) and the kill lands as it returns, so a process of
    // the run gets exactly one bpf(2) call, and no descriptor from it:
    // a map update or a link detach needs an fd that only an earlier
    // bpf(2) call (BPF_OBJ_GET, *_GET_FD_BY_ID) gives. (An fd passed in
    // by a process outside the run is an escape of its own.)
    report(data, tgid, run, how, true);
    0
}

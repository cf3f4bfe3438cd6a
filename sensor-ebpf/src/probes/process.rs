//! Process lifecycle: spawn (fork), exec (success and failure), exit.

use aya_ebpf::{
    EbpfContext as _,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_ktime_get_boot_ns, bpf_task_pt_regs},
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use sensor_common::handover::kind_word;
use sensor_common::{
    config::ABSENT,
    event::{
        CWD_TRUNCATED, Event, EventHeader, EventKind, ExecData, ExitData, FILENAME_TRUNCATED,
        FixedEvent, HOW_FLAG_COUNTED, HOW_FLAG_KILL, HOW_INHERITED, HOW_MASK, PATH_TRUNCATED,
        ProcRun, SpawnData,
    },
    limits::{
        ARGV_MASK, ARGV_MAX_CAPTURE, EVENT_DATA_CURSOR_MASK, FAILED_EXEC_MAX_ARGS, PATH_MASK,
    },
    policy::Decision,
};

use crate::{
    config::{active, is_own, offset},
    emit::{count_inherit_failed, count_lost, emit},
    kernel::{Reader, current_task, current_task_btf, load, opaque, run_of},
    maps::{PATH_SCRATCH, PROC_RUNS, event_scratch},
    policy::{check_exec, count_exit, count_spawn, kill_current, mount_id_of},
    syscall,
};

/// `SIGNAL_GROUP_EXIT` in `signal_struct.flags` (include/linux/sched/signal.h).
const SIGNAL_GROUP_EXIT: u32 = 0x0000_0004;
/// Bytes read for a path-like string (NUL included).
const STR_MAX: u32 = (PATH_MASK + 1) as u32;

#[inline(always)]
fn new_header(kind: EventKind) -> EventHeader {
    let uid_gid = bpf_get_current_uid_gid();
    EventHeader {
        kind: kind_word(kind as u32),
        generation: offset!(generation),
        // SAFETY: no preconditions.
        ktime_ns: unsafe { bpf_ktime_get_boot_ns() },
        uid: uid_gid as u32,
        gid: (uid_gid >> 32) as u32,
        ..EventHeader::default()
    }
}

/// Appends the path of the file at `file` (`struct file *`) to `data` at `cursor`.
/// Returns (bytes written, truncated).
#[inline(always)]
unsafe fn put_file_path(
    r: &mut Reader,
    pathbuf: *mut u8,
    data: *mut u8,
    cursor: usize,
    file: u64,
) -> (usize, bool) {
    if file == 0 {
        return (0, false);
    }
    let (mnt, dentry) = read_path(r, file + u64::from(offset!(kernel.file_f_path)));
    // SAFETY: pathbuf is the per-CPU path buffer; data has room for cursor (masked) + PATH_MASK.
    unsafe { put_path(r, pathbuf, data, cursor, mnt, dentry) }
}

/// The `mnt` and `dentry` of the `struct path` at `path`: one read where
/// they are neighbours (`struct path { mnt; dentry; }` in every kernel
/// since 2.6), two otherwise.
#[inline(always)]
fn read_path(r: &mut Reader, path: u64) -> (u64, u64) {
    let mnt_off = offset!(kernel.path_mnt);
    let dentry_off = offset!(kernel.path_dentry);
    if dentry_off == mnt_off + 8 {
        let both: [u64; 2] = r.read(path, mnt_off);
        return (both[0], both[1]);
    }
    (r.read(path, mnt_off), r.read(path, dentry_off))
}

#[inline(always)]
unsafe fn put_path(
    r: &mut Reader,
    pathbuf: *mut u8,
    data: *mut u8,
    cursor: usize,
    mnt: u64,
    dentry: u64,
) -> (usize, bool) {
    // SAFETY: see callers.
    let (start, len, truncated) = unsafe { r.build_path(pathbuf, mnt, dentry) };
    let len = opaque(len) & PATH_MASK;
    let start = opaque(start) & PATH_MASK;
    // SAFETY: start & PATH_MASK + len <= 8190 < PATH_SCRATCH_BYTES; the destination is masked.
    let ok = unsafe {
        r.copy_kernel(
            data.add(opaque(cursor) & EVENT_DATA_CURSOR_MASK),
            len as u32,
            pathbuf.add(start & PATH_MASK) as u64,
        )
    };
    if ok { (len, truncated) } else { (0, true) }
}

/// Appends the working directory of `task`.
#[inline(always)]
unsafe fn put_cwd(
    r: &mut Reader,
    pathbuf: *mut u8,
    data: *mut u8,
    cursor: usize,
    task: u64,
) -> (usize, bool) {
    let fs: u64 = r.read(task, offset!(kernel.task_fs));
    if fs == 0 {
        return (0, false);
    }
    let (mnt, dentry) = read_path(r, fs + u64::from(offset!(kernel.fs_pwd)));
    // SAFETY: as in put_file_path.
    unsafe { put_path(r, pathbuf, data, cursor, mnt, dentry) }
}

/// raw_tp `sched_process_fork(struct task_struct *parent, struct task_struct *child)`.
/// Reports new processes only: a new thread shares its creator's tgid.
#[raw_tracepoint(tracepoint = "sched_process_fork")]
pub fn snsr_fork(ctx: RawTracePointContext) -> i32 {
    if !active() {
        return 0; // the active load records
    }
    // SAFETY: tracepoint context as documented above.
    unsafe { try_fork(&ctx) };
    0
}

#[inline(always)]
unsafe fn try_fork(ctx: &RawTracePointContext) -> Option<()> {
    let child: u64 = ctx.arg(1);
    let mut r = Reader::new();
    // `pid_t pid; pid_t tgid;` side by side in task_struct: one read.
    let (pid, tgid) = if offset!(kernel.task_tgid) == offset!(kernel.task_pid) + 4 {
        let both: [u32; 2] = r.read(child, offset!(kernel.task_pid));
        (both[0], both[1])
    } else {
        (
            r.read::<u32>(child, offset!(kernel.task_pid)),
            r.read::<u32>(child, offset!(kernel.task_tgid)),
        )
    };
    if tgid != pid || tgid == 0 {
        return None;
    }
    let parent_tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_own(parent_tgid) {
        return None;
    }
    // SAFETY: BTF-typed pointers from the current task, at BTF offsets.
    let creator_start: u64 = unsafe {
        let leader: *const u8 = load(current_task_btf(), offset!(kernel.task_group_leader));
        load(leader, offset!(kernel.task_start_boottime))
    };
    // A new process is its own group leader (tgid == pid above).
    let child_start: u64 = r.read(child, offset!(kernel.task_start_boottime));
    let inherited = inherit_run(parent_tgid, creator_start, tgid, child_start);
    let Some(ev) = event_scratch() else {
        count_lost(EventKind::ProcessSpawn);
        return None;
    };
    let ev = ev.cast::<Event<SpawnData>>();
    let pathbuf = PATH_SCRATCH.get_ptr_mut(0)?.cast::<u8>();
    // SAFETY: per-CPU scratch value, large enough for Event<SpawnData> (smaller than Event<ExecData>).
    unsafe {
        (*ev).header = new_header(EventKind::ProcessSpawn);
        r.fill_child(
            &mut (*ev).header,
            child,
            tgid,
            child_start,
            parent_tgid,
            creator_start,
        );
        (*ev).header.run = inherited.run;
        (*ev).header.run_how = inherited.how & HOW_MASK;
        let data = (&raw mut (*ev).data).cast::<u8>();
        let exe = r.exe_file(child);
        let (len, truncated) = put_file_path(&mut r, pathbuf, data, 0, exe);
        (*ev).payload = SpawnData {
            exe_len: len as u16,
            path_flags: if truncated { PATH_TRUNCATED } else { 0 },
            _pad: 0,
            decision: inherited.decision,
        };
        let size = EventKind::ProcessSpawn.fixed_size() + len;
        (*ev).header.size = size as u32;
        emit(
            ev.cast(),
            size,
            EventKind::ProcessSpawn,
            r.errors,
            (*ev).header.run,
        );
    }
    Some(())
}

/// What [`inherit_run`] did for a new process: the run policy's decision,
/// and the run entry the process now has (`run` 0: none).
struct Inherited {
    decision: Decision,
    run: u64,
    how: u32,
}

/// Enters a new process in its creator's run, before anything can run in it:
/// double-fork, setsid, daemonizing and reparenting never leave the run.
/// Counts it against the run policy's `max_processes` and returns that
/// decision; a child over the limit of an enforce policy is marked to be
/// killed on its way to user space (see [`snsr_clone_out`]).
///
/// The creator is the current process (`parent_tgid`, started at
/// `creator_start`), the child `child_tgid` started at `child_start`. The
/// entry returned is the one the child's events carry: what was inserted,
/// or none (the map then holds no live entry for the child either).
#[inline(always)]
fn inherit_run(
    parent_tgid: u32,
    creator_start: u64,
    child_tgid: u32,
    child_start: u64,
) -> Inherited {
    let (run, _) = run_of(parent_tgid, creator_start);
    if run == 0 {
        // Not in a run; clear any stale entry left under the recycled pid.
        if run_of(child_tgid, 0).0 != 0 {
            let _ = PROC_RUNS.remove(child_tgid);
        }
        return Inherited {
            decision: Decision::default(),
            run: 0,
            how: 0,
        };
    }
    let (decision, counted) = count_spawn(run);
    let mut how = HOW_INHERITED;
    if counted {
        how |= HOW_FLAG_COUNTED;
    }
    if decision.enforced != 0 {
        how |= HOW_FLAG_KILL;
    }
    let entry = ProcRun {
        run,
        start_ns: child_start,
        how,
        _pad: 0,
    };
    if PROC_RUNS.insert(child_tgid, entry, 0).is_err() {
        count_inherit_failed();
        if counted {
            count_exit(run);
        }
        // Whatever the map holds for the child (nothing, or a stale entry
        // of another process, which this finds stale).
        let (run, how) = run_of(child_tgid, child_start);
        return Inherited { decision, run, how };
    }
    Inherited { decision, run, how }
}

/// tracepoint `syscalls/sys_exit_clone` (and clone3, fork, vfork): the new
/// child's first step back to user space. A child created over its run's
/// `max_processes` under an enforce policy is killed here, before it runs.
#[tracepoint]
pub fn snsr_clone_out(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    // SAFETY: the context is this tracepoint's record; see clone_exit.
    unsafe { clone_exit(&ctx) };
    0
}

/// tracepoint `syscalls/sys_exit_clone3`.
#[tracepoint]
pub fn snsr_clone3_out(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    // SAFETY: the context is this tracepoint's record; see clone_exit.
    unsafe { clone_exit(&ctx) };
    0
}

/// tracepoint `syscalls/sys_exit_fork`.
#[tracepoint]
pub fn snsr_fork_out(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    // SAFETY: the context is this tracepoint's record; see clone_exit.
    unsafe { clone_exit(&ctx) };
    0
}

/// tracepoint `syscalls/sys_exit_vfork`.
#[tracepoint]
pub fn snsr_vfork_out(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    // SAFETY: the context is this tracepoint's record; see clone_exit.
    unsafe { clone_exit(&ctx) };
    0
}

#[inline(always)]
unsafe fn clone_exit(ctx: &TracePointContext) -> Option<()> {
    let ret = syscall::ret(ctx);
    if ret != 0 {
        // The parent's return (the child's pid) or a failure.
        return None;
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: value copy out of the map.
    let entry = unsafe { PROC_RUNS.get(tgid)? };
    if entry.how & HOW_FLAG_KILL != 0 {
        kill_current();
    }
    Some(())
}

/// tracepoint `sched/sched_process_exec`: the new image is in place, before its first instruction.
#[tracepoint]
pub fn snsr_exec(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    // SAFETY: tracepoint context; field offsets come from the format file.
    unsafe { try_exec(&ctx) };
    0
}

#[inline(always)]
unsafe fn try_exec(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    // SAFETY: offset from the format file.
    let old_pid: u32 = unsafe { ctx.read_at(offset!(tracepoints.exec_old_pid) as usize) }.ok()?;
    if is_own(tgid) {
        return None;
    }
    let Some(ev) = event_scratch() else {
        count_lost(EventKind::ProcessExec);
        return None;
    };
    let pathbuf = PATH_SCRATCH.get_ptr_mut(0)?.cast::<u8>();
    let task = current_task();
    let mut r = Reader::new();
    // SAFETY: per-CPU scratch; every write below is masked to stay in the data area.
    unsafe {
        (*ev).header = new_header(EventKind::ProcessExec);
        let data = (&raw mut (*ev).data).cast::<u8>();
        let mut flags = 0u16;

        let exe = r.exe_file(task);
        let (exe_len, t) = put_file_path(&mut r, pathbuf, data, 0, exe);
        if t {
            flags |= PATH_TRUNCATED;
        }
        let mut cursor = exe_len;

        let (cwd_len, t) = put_cwd(&mut r, pathbuf, data, cursor, task);
        if t {
            flags |= CWD_TRUNCATED;
        }
        cursor += cwd_len;

        // The filename as the caller passed it: `__data_loc char[]` = (len << 16) | offset.
        let loc: u32 = ctx
            .read_at(offset!(tracepoints.exec_filename) as usize)
            .unwrap_or(0);
        let filename = ctx.as_ptr() as u64 + u64::from(loc & 0xffff);
        let filename_len = r.copy_kernel_str(
            data.add(opaque(cursor) & EVENT_DATA_CURSOR_MASK),
            STR_MAX,
            filename,
        );
        if (loc >> 16) as usize > STR_MAX as usize {
            flags |= FILENAME_TRUNCATED;
        }
        let filename_len = opaque(filename_len) & PATH_MASK;
        cursor += filename_len;

        // From here on the current task is read through BTF-typed pointers:
        // plain loads the verifier checks, not a helper call per field. (Not
        // before the path walks: with BTF-typed registers live across their
        // loops the verifier cannot prune, and gives up.)
        let task_btf = current_task_btf();
        let mm: *const u8 = load(task_btf, offset!(kernel.task_mm));

        // argv as it now sits at the top of the new stack.
        let arg_start: u64 = load(mm, offset!(kernel.mm_arg_start));
        let arg_end: u64 = load(mm, offset!(kernel.mm_arg_end));
        let orig = arg_end.saturating_sub(arg_start);
        let mut argv_len = if orig > ARGV_MAX_CAPTURE as u64 {
            ARGV_MAX_CAPTURE
        } else {
            orig as usize
        };
        argv_len = opaque(argv_len) & ARGV_MASK;
        if !r.copy_user(
            data.add(opaque(cursor) & EVENT_DATA_CURSOR_MASK),
            argv_len as u32,
            arg_start,
        ) {
            argv_len = 0;
        }
        cursor += argv_len;
        // The ELF loader leaves argc at the bottom of the initial stack.
        let start_stack: u64 = load(mm, offset!(kernel.mm_start_stack));
        let argc: u64 = r.read_user(start_stack);

        r.fill_current(&mut (*ev).header);

        // The policy decides last, so its branches do not multiply the
        // verifier's states through the path walks above. The new image has
        // not run yet either way: a kill here lands before its first instruction.
        let decision = check_exec(&mut r, (*ev).header.run, exe);
        // The executed file's identity and mount, from the same `mm->exe_file`.
        let exe_btf: *const u8 = load(mm, offset!(kernel.mm_exe_file));
        let file_inode: *const u8 = load(exe_btf, offset!(kernel.file_f_inode));
        let ino: u64 = load(file_inode, offset!(kernel.inode_i_ino));
        let sb: *const u8 = load(file_inode, offset!(kernel.inode_i_sb));
        let dev: u32 = load(sb, offset!(kernel.sb_s_dev));
        let mnt: *const u8 = load(
            exe_btf,
            offset!(kernel.file_f_path) + offset!(kernel.path_mnt),
        );
        let mnt_id = mount_id_of(&mut r, mnt as u64);

        (*ev).payload = ExecData {
            exe_len: exe_len as u16,
            cwd_len: cwd_len as u16,
            filename_len: filename_len as u16,
            path_flags: flags,
            argv_len: argv_len as u32,
            argv_orig_len: orig as u32,
            argc: if argc > u64::from(u32::MAX) {
                u32::MAX
            } else {
                argc as u32
            },
            old_tid: old_pid,
            ret: 0,
            _pad: 0,
            ino,
            dev,
            mnt_id,
            decision,
        };
        let size = EventKind::ProcessExec.fixed_size() + cursor;
        (*ev).header.size = size as u32;
        emit(
            ev.cast(),
            size,
            EventKind::ProcessExec,
            r.errors,
            (*ev).header.run,
        );
    }
    Some(())
}

/// tracepoint `syscalls/sys_exit_execve`: report a failed exec.
///
/// A failed exec returns to the old image, so its arguments are still where
/// the caller put them: `execve(filename, argv, envp)` in the saved user
/// registers, the strings in its memory. Nothing is kept from the syscall's
/// entry (that cost a map insert and delete on every exec, failed or not).
#[tracepoint]
pub fn snsr_execve_out(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    // SAFETY: offsets from the format file and BTF.
    unsafe { execve_exit(&ctx, offset!(kernel.pt_regs_di), offset!(kernel.pt_regs_si)) };
    0
}

/// tracepoint `syscalls/sys_exit_execveat`: `execveat(dirfd, filename, argv, envp, flags)`.
#[tracepoint]
pub fn snsr_execat_out(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    // SAFETY: offsets from the format file and BTF.
    unsafe { execve_exit(&ctx, offset!(kernel.pt_regs_si), offset!(kernel.pt_regs_dx)) };
    0
}

/// The failed exec's `filename` and `argv`, from the caller's registers
/// (`filename_reg` and `argv_reg`: their offsets in `struct pt_regs`).
#[inline(always)]
fn failed_exec_args(filename_reg: u32, argv_reg: u32) -> (u64, u64) {
    // SAFETY: the current task is a BTF pointer; bpf_task_pt_regs returns
    // its saved user registers as one, and both offsets come from BTF.
    unsafe {
        let task = current_task_btf();
        let regs = bpf_task_pt_regs(task.cast_mut().cast()) as *const u8;
        (load(regs, filename_reg), load(regs, argv_reg))
    }
}

#[inline(always)]
unsafe fn execve_exit(ctx: &TracePointContext, filename_reg: u32, argv_reg: u32) -> Option<()> {
    let ret = syscall::ret(ctx);
    if ret >= 0 {
        return None;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if is_own((pid_tgid >> 32) as u32) {
        return None;
    }
    let (filename, argv) = failed_exec_args(filename_reg, argv_reg);
    let Some(ev) = event_scratch() else {
        count_lost(EventKind::ProcessExecFailed);
        return None;
    };
    let pathbuf = PATH_SCRATCH.get_ptr_mut(0)?.cast::<u8>();
    let task = current_task();
    let mut r = Reader::new();
    // SAFETY: per-CPU scratch; every write is masked into the data area.
    unsafe {
        (*ev).header = new_header(EventKind::ProcessExecFailed);
        r.fill_task(&mut (*ev).header, task);
        let data = (&raw mut (*ev).data).cast::<u8>();
        let mut flags = 0u16;
        let exe = r.exe_file(task);
        let (exe_len, t) = put_file_path(&mut r, pathbuf, data, 0, exe);
        if t {
            flags |= PATH_TRUNCATED;
        }
        let mut cursor = exe_len;
        let (cwd_len, t) = put_cwd(&mut r, pathbuf, data, cursor, task);
        if t {
            flags |= CWD_TRUNCATED;
        }
        cursor += cwd_len;
        let filename_len = match r.copy_user_str(
            data.add(opaque(cursor) & EVENT_DATA_CURSOR_MASK),
            STR_MAX,
            filename,
        ) {
            Some(n) if n > 0 => n - 1,
            _ => 0,
        };
        if filename_len + 1 >= STR_MAX as usize {
            flags |= FILENAME_TRUNCATED;
        }
        let filename_len = opaque(filename_len) & PATH_MASK;
        cursor += filename_len;

        // argv: read the caller's pointer array, one string after another.
        let mut used: usize = 0;
        let mut count: u32 = 0;
        let mut complete = false;
        for i in 0..FAILED_EXEC_MAX_ARGS {
            let ptr: u64 = if argv == 0 {
                0
            } else {
                r.read_user(argv + u64::from(i) * 8)
            };
            if ptr == 0 {
                complete = true;
                break;
            }
            let room = ARGV_MAX_CAPTURE.saturating_sub(used);
            if room == 0 {
                break;
            }
            let dst =
                data.add((opaque(cursor) & EVENT_DATA_CURSOR_MASK) + (opaque(used) & ARGV_MASK));
            let Some(n) = r.copy_user_str(dst, (opaque(room) & ARGV_MASK) as u32, ptr) else {
                break;
            };
            used = opaque(used + n) & ARGV_MASK;
            count += 1;
            if n >= room {
                break;
            }
        }
        let used = used & ARGV_MASK;
        cursor += used;

        (*ev).payload = ExecData {
            exe_len: exe_len as u16,
            cwd_len: cwd_len as u16,
            filename_len: filename_len as u16,
            path_flags: flags,
            argv_len: used as u32,
            argv_orig_len: if complete { used as u32 } else { 0 },
            argc: if complete { count } else { u32::MAX },
            old_tid: pid_tgid as u32,
            ret: ret as i32,
            _pad: 0,
            ino: 0,
            dev: 0,
            mnt_id: 0,
            decision: Decision::default(),
        };
        let size = EventKind::ProcessExecFailed.fixed_size() + cursor;
        (*ev).header.size = size as u32;
        emit(
            ev.cast(),
            size,
            EventKind::ProcessExecFailed,
            r.errors,
            (*ev).header.run,
        );
    }
    Some(())
}

/// tracepoint `sched/sched_process_exit`: reported once, when the thread group is dead.
#[tracepoint]
pub fn snsr_exit(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    // SAFETY: offsets from the format file and BTF.
    unsafe { try_exit(&ctx) };
    0
}

#[inline(always)]
unsafe fn try_exit(ctx: &TracePointContext) -> Option<()> {
    // SAFETY (every `load` here): BTF-typed pointers from the current task,
    // at BTF offsets; the verifier checks each load.
    let task = current_task_btf();
    let signal: *const u8 = unsafe { load(task, offset!(kernel.task_signal)) };
    let group_dead_off = offset!(tracepoints.exit_group_dead);
    if group_dead_off == ABSENT {
        // Older kernels: the live counter is already decremented when the tracepoint fires.
        let live: i32 = unsafe { load(signal, offset!(kernel.signal_live)) };
        if live != 0 {
            return None;
        }
    } else {
        // SAFETY: offset from the format file.
        let group_dead: u8 = unsafe { ctx.read_at(group_dead_off as usize) }.ok()?;
        if group_dead == 0 {
            return None;
        }
    }
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if is_own(tgid) {
        return None;
    }
    // What wait() will report: the group exit code on a group exit, else the leader's.
    let flags: u32 = unsafe { load(signal, offset!(kernel.signal_flags)) };
    let status: u32 = if flags & SIGNAL_GROUP_EXIT != 0 {
        unsafe { load(signal, offset!(kernel.signal_group_exit_code)) }
    } else {
        let leader: *const u8 = unsafe { load(task, offset!(kernel.task_group_leader)) };
        unsafe { load(leader, offset!(kernel.task_exit_code)) }
    };
    let mut r = Reader::new();
    let mut ev = FixedEvent {
        header: new_header(EventKind::ProcessExit),
        payload: ExitData {
            exit_status: status,
            _pad: 0,
        },
    };
    r.fill_current(&mut ev.header);
    if ev.header.run != 0 {
        // SAFETY: value copy out of the map.
        if let Some(entry) = unsafe { PROC_RUNS.get(tgid) }
            && entry.how & HOW_FLAG_COUNTED != 0
        {
            count_exit(entry.run);
        }
        let _ = PROC_RUNS.remove(tgid);
    }
    let size = size_of::<FixedEvent<ExitData>>();
    ev.header.size = size as u32;
    // SAFETY: ev lives on the stack for the call.
    unsafe {
        emit(
            (&raw const ev).cast(),
            size,
            EventKind::ProcessExit,
            r.errors,
            ev.header.run,
        )
    };
    Some(())
}

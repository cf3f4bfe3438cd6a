//! Bounded reads of kernel structures at offsets the loader found in BTF.
//!
//! A failed read yields zero and is counted in `Reader::errors`; the event is
//! still sent with what could be read, and the counter reaches user space.

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid,
    generated::{
        bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str, bpf_probe_read_user, bpf_probe_read_user_str,
    },
};
use sensor_common::{
    event::{EventHeader, HOW_MASK},
    limits::{NAME_MAX, PATH_MASK, PATH_MAX_COMPONENTS},
};

use crate::{config::offset, maps::PROC_RUNS};

/// Collects read failures while an event is built.
pub struct Reader {
    pub errors: u64,
}

impl Reader {
    #[inline(always)]
    pub const fn new() -> Self {
        Self { errors: 0 }
    }

    /// Reads a `T` at `base + off` in kernel memory; zero on failure.
    #[inline(always)]
    pub fn read<T: Copy + Default>(&mut self, base: u64, off: u32) -> T {
        if base == 0 {
            return T::default();
        }
        let mut v = T::default();
        // SAFETY: the helper checks the source address; `v` is a valid destination of size_of::<T>().
        let ret = unsafe {
            bpf_probe_read_kernel(
                (&raw mut v).cast(),
                size_of::<T>() as u32,
                (base + u64::from(off)) as *const _,
            )
        };
        if ret < 0 {
            self.errors += 1;
            return T::default();
        }
        v
    }

    /// Reads a user-space `T`; zero on failure.
    #[inline(always)]
    pub fn read_user<T: Copy + Default>(&mut self, addr: u64) -> T {
        let mut v = T::default();
        // SAFETY: as above, for user memory.
        let ret = unsafe {
            bpf_probe_read_user((&raw mut v).cast(), size_of::<T>() as u32, addr as *const _)
        };
        if ret < 0 {
            self.errors += 1;
            return T::default();
        }
        v
    }

    /// Copies `len` kernel bytes to `dst`; returns false on failure.
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes (the verifier checks it too).
    #[inline(always)]
    pub unsafe fn copy_kernel(&mut self, dst: *mut u8, len: u32, src: u64) -> bool {
        // SAFETY: caller guarantees dst; the helper checks src.
        let ret = unsafe { bpf_probe_read_kernel(dst.cast(), len, src as *const _) };
        if ret < 0 {
            self.errors += 1;
            return false;
        }
        true
    }

    /// Copies `len` user bytes to `dst`; returns false on failure.
    ///
    /// # Safety
    /// `dst` must be valid for `len` bytes.
    #[inline(always)]
    pub unsafe fn copy_user(&mut self, dst: *mut u8, len: u32, src: u64) -> bool {
        // SAFETY: caller guarantees dst; the helper checks src.
        let ret = unsafe { bpf_probe_read_user(dst.cast(), len, src as *const _) };
        if ret < 0 {
            self.errors += 1;
            return false;
        }
        true
    }

    /// Copies a NUL-terminated kernel string of at most `max` bytes (NUL included) to `dst`.
    /// Returns its length without the NUL.
    ///
    /// # Safety
    /// `dst` must be valid for `max` bytes.
    #[inline(always)]
    pub unsafe fn copy_kernel_str(&mut self, dst: *mut u8, max: u32, src: u64) -> usize {
        // SAFETY: as above.
        let ret = unsafe { bpf_probe_read_kernel_str(dst.cast(), max, src as *const _) };
        if ret <= 0 {
            self.errors += 1;
            return 0;
        }
        (ret - 1) as usize
    }

    /// Copies a NUL-terminated user string of at most `max` bytes (NUL included) to `dst`.
    /// Returns its length with the NUL, or `None` when unreadable.
    ///
    /// # Safety
    /// `dst` must be valid for `max` bytes.
    #[inline(always)]
    pub unsafe fn copy_user_str(&mut self, dst: *mut u8, max: u32, src: u64) -> Option<usize> {
        // SAFETY: as above.
        let ret = unsafe { bpf_probe_read_user_str(dst.cast(), max, src as *const _) };
        if ret < 0 {
            self.errors += 1;
            return None;
        }
        Some(ret as usize)
    }

    /// [`Self::fill_task`] for the current task, without a helper call per
    /// field: the task pointer is BTF-typed, so each field is a plain load
    /// that the verifier checks against the kernel's BTF (the offsets are
    /// constants of the frozen config) and makes fault-tolerant. Only the
    /// namespace pid of a process in a nested pid namespace, at an offset
    /// that depends on the level, is read with the helper; at level 0 (the
    /// host's processes) it is one more load.
    ///
    /// A load that faults reads 0, as a failed probe read does, but is not
    /// counted in `errors`: the current task and what it points to cannot
    /// be freed under the running program, so it does not happen.
    ///
    /// For programs without loops (connect, exit): in front of the path
    /// walks of `snsr_exec` the BTF-typed registers stop the verifier from
    /// pruning, and it gives up after 1M instructions.
    #[inline(always)]
    pub fn fill_current(&mut self, h: &mut EventHeader) {
        let pid_tgid = bpf_get_current_pid_tgid();
        h.tgid = (pid_tgid >> 32) as u32;
        h.tid = pid_tgid as u32;
        // SAFETY: BTF-typed kernel pointers at BTF offsets; the verifier
        // checks every load and turns it into one that cannot fault.
        let (pid, level) = unsafe {
            let task = current_task_btf();
            let leader: *const u8 = load(task, offset!(kernel.task_group_leader));
            h.start_ns = load(leader, offset!(kernel.task_start_boottime));
            let parent: *const u8 = load(task, offset!(kernel.task_real_parent));
            h.ppid = load(parent, offset!(kernel.task_tgid));
            let parent_leader: *const u8 = load(parent, offset!(kernel.task_group_leader));
            h.parent_start_ns = load(parent_leader, offset!(kernel.task_start_boottime));
            // `char comm[16]` as two words: the verifier allows scalar
            // loads anywhere inside an array of scalars.
            let comm = [
                load::<u64>(task, offset!(kernel.task_comm)),
                load::<u64>(task, offset!(kernel.task_comm) + 8),
            ];
            h.comm = core::mem::transmute::<[u64; 2], [u8; 16]>(comm);
            let pid: *const u8 = load(leader, offset!(kernel.task_thread_pid));
            let level: u32 = load(pid, offset!(kernel.pid_level));
            if level == 0 {
                h.pid_ns_level = 0;
                h.ns_tgid = load(pid, offset!(kernel.pid_numbers) + offset!(kernel.upid_nr));
            }
            (pid, level)
        };
        if level != 0 {
            self.fill_ns_pid(h, pid as u64, level);
        }
        Self::fill_run(h);
    }

    /// Fills the process part of a header from `task` (any task of the process).
    #[inline(always)]
    pub fn fill_task(&mut self, h: &mut EventHeader, task: u64) {
        h.tgid = self.read::<u32>(task, offset!(kernel.task_tgid));
        h.tid = self.read::<u32>(task, offset!(kernel.task_pid));
        let leader: u64 = self.read(task, offset!(kernel.task_group_leader));
        h.start_ns = self.read(leader, offset!(kernel.task_start_boottime));
        let parent: u64 = self.read(task, offset!(kernel.task_real_parent));
        h.ppid = self.read(parent, offset!(kernel.task_tgid));
        let parent_leader: u64 = self.read(parent, offset!(kernel.task_group_leader));
        h.parent_start_ns = self.read(parent_leader, offset!(kernel.task_start_boottime));
        h.comm = self.read(task, offset!(kernel.task_comm));
        // The process id as its own pid namespace sees it: leader->thread_pid->numbers[level].nr.
        let pid: u64 = self.read(leader, offset!(kernel.task_thread_pid));
        let level: u32 = self.read(pid, offset!(kernel.pid_level));
        self.fill_ns_pid(h, pid, level);
        Self::fill_run(h);
    }

    /// Fills the process part of a header for `child`, a new process (its
    /// own group leader) that the current task just created, whose tgid and
    /// start time the caller has read already. Its parent is nearly always
    /// the current task (not with `CLONE_PARENT`): then the parent's pid and
    /// start time are the caller's `parent_tgid` and `parent_start` rather
    /// than three more reads. The run is left to the caller, which has just
    /// set it (see `snsr_fork`).
    #[inline(always)]
    pub fn fill_child(
        &mut self,
        h: &mut EventHeader,
        child: u64,
        tgid: u32,
        start_ns: u64,
        parent_tgid: u32,
        parent_start: u64,
    ) {
        h.tgid = tgid;
        h.tid = tgid;
        h.start_ns = start_ns;
        let parent: u64 = self.read(child, offset!(kernel.task_real_parent));
        if parent == current_task() {
            h.ppid = parent_tgid;
            h.parent_start_ns = parent_start;
        } else {
            h.ppid = self.read(parent, offset!(kernel.task_tgid));
            let parent_leader: u64 = self.read(parent, offset!(kernel.task_group_leader));
            h.parent_start_ns = self.read(parent_leader, offset!(kernel.task_start_boottime));
        }
        h.comm = self.read(child, offset!(kernel.task_comm));
        let pid: u64 = self.read(child, offset!(kernel.task_thread_pid));
        let level: u32 = self.read(pid, offset!(kernel.pid_level));
        self.fill_ns_pid(h, pid, level);
    }

    /// The run the kernel has for the header's process (its tgid and start).
    #[inline(always)]
    fn fill_run(h: &mut EventHeader) {
        let (run, how) = run_of(h.tgid, h.start_ns);
        h.run = run;
        h.run_how = how & HOW_MASK;
    }

    /// The process id as its own pid namespace sees it.
    #[inline(always)]
    fn fill_ns_pid(&mut self, h: &mut EventHeader, pid: u64, level: u32) {
        let level = level & 31; // MAX_PID_NS_LEVEL is 32
        h.pid_ns_level = level;
        h.ns_tgid = self.read(
            pid,
            offset!(kernel.pid_numbers)
                + level * offset!(kernel.upid_size)
                + offset!(kernel.upid_nr),
        );
    }

    /// The executable file of `task` (its `mm->exe_file`), or 0 for kernel threads.
    #[inline(always)]
    pub fn exe_file(&mut self, task: u64) -> u64 {
        let mm: u64 = self.read(task, offset!(kernel.task_mm));
        if mm == 0 {
            return 0;
        }
        self.read(mm, offset!(kernel.mm_exe_file))
    }

    /// Walks `(vfsmount, dentry)` up to the root and writes the path right-aligned
    /// so that it ends just before `PATH_MASK` in `buf`.
    ///
    /// Returns `(start, len, truncated)`; the path is `buf[start..start + len]`.
    ///
    /// Every loop-carried offset is kept masked to `[0, PATH_MASK]`, so the
    /// verifier sees the same range at each iteration and can prune the states
    /// of the two branches (mount crossing or not) instead of multiplying them.
    ///
    /// # Safety
    /// `buf` must be valid for `PATH_SCRATCH_BYTES` bytes.
    #[inline(always)]
    pub unsafe fn build_path(
        &mut self,
        buf: *mut u8,
        mut mnt: u64,
        mut dentry: u64,
    ) -> (usize, usize, bool) {
        const END: usize = PATH_MASK;
        let mut pos: usize = END;
        let mut truncated = true;
        if mnt == 0 || dentry == 0 {
            return (END, 0, false);
        }
        let mut mount = mnt.wrapping_sub(u64::from(offset!(kernel.mount_mnt)));
        // Read once per mount, not once per component.
        let mut mnt_root: u64 = self.read(mnt, offset!(kernel.vfsmount_mnt_root));
        for _ in 0..PATH_MAX_COMPONENTS {
            if dentry == mnt_root {
                let parent: u64 = self.read(mount, offset!(kernel.mount_mnt_parent));
                if parent == mount || parent == 0 {
                    truncated = false;
                    break;
                }
                // Cross into the parent mount at the mountpoint.
                dentry = self.read(mount, offset!(kernel.mount_mnt_mountpoint));
                mount = parent;
                mnt = parent.wrapping_add(u64::from(offset!(kernel.mount_mnt)));
                mnt_root = self.read(mnt, offset!(kernel.vfsmount_mnt_root));
                continue;
            }
            let link = self.dentry_link(dentry);
            let at_fs_root = link.parent == dentry || link.parent == 0;
            // SAFETY: buf as documented above.
            let Some(p) = (unsafe { self.component(buf, link.len, link.name, pos) }) else {
                break;
            };
            pos = opaque(p) & PATH_MASK;
            if at_fs_root {
                // Root of a filesystem mounted nowhere (pipefs, memfd, ...): its
                // own name is the only component.
                truncated = false;
                break;
            }
            dentry = link.parent;
        }
        if pos == END {
            pos -= 1;
            // SAFETY: pos < END < PATH_SCRATCH_BYTES.
            unsafe { *buf.add(pos & PATH_MASK) = b'/' };
        }
        let pos = opaque(pos) & PATH_MASK;
        (pos, END.saturating_sub(pos), truncated)
    }

    /// The parent and name of `dentry`. One read of `d_parent` and `d_name`
    /// together where they are neighbours (`struct dentry` has had
    /// `d_parent` right before `d_name` since 3.x; `struct qstr` is
    /// `{ hash, len, name }`), three reads otherwise: a path walk makes
    /// this call once per component, and a helper call costs ~40 ns.
    #[inline(always)]
    fn dentry_link(&mut self, dentry: u64) -> DentryLink {
        let parent_off = offset!(kernel.dentry_d_parent);
        let name_off = offset!(kernel.dentry_d_name);
        if name_off == parent_off + 8
            && offset!(kernel.qstr_len) == 4
            && offset!(kernel.qstr_name) == 8
        {
            let w: DentryWindow = self.read(dentry, parent_off);
            return DentryLink {
                parent: w.parent,
                len: w.len,
                name: w.name,
            };
        }
        DentryLink {
            parent: self.read(dentry, parent_off),
            len: self.read(dentry, name_off + offset!(kernel.qstr_len)),
            name: self.read(dentry, name_off + offset!(kernel.qstr_name)),
        }
    }

    /// Writes `/name` (`len` bytes at `name`) just before `pos`; returns
    /// the new start, or `None` when it does not fit (a path keeps `pos >= 1`).
    #[inline(always)]
    unsafe fn component(&mut self, buf: *mut u8, len: u32, name: u64, pos: usize) -> Option<usize> {
        let len = (len as usize) & NAME_MAX;
        if pos < len + 2 {
            return None;
        }
        let p = opaque(pos - len) & PATH_MASK;
        // SAFETY: p <= 4095 and len <= 255, inside the 8 KiB buffer.
        unsafe { self.copy_kernel(buf.add(p), len as u32, name) };
        let p = opaque(p - 1) & PATH_MASK;
        // SAFETY: p <= 4095.
        unsafe { *buf.add(p) = b'/' };
        Some(p)
    }
}

/// `d_parent` and `d_name` of a `struct dentry`, as laid out in the kernel
/// (see [`Reader::dentry_link`]).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct DentryWindow {
    parent: u64,
    hash: u32,
    len: u32,
    name: u64,
}

/// What a path walk needs of one dentry.
struct DentryLink {
    parent: u64,
    len: u32,
    name: u64,
}

/// The run of process `tgid` started at `start_ns` (0: do not check), as
/// `(handle, how)`; `(0, 0)` when it is in no run or the entry is stale.
#[inline(always)]
pub fn run_of(tgid: u32, start_ns: u64) -> (u64, u32) {
    // SAFETY: value copy out of the map.
    match unsafe { PROC_RUNS.get(tgid) } {
        Some(r) if start_ns == 0 || same_start(r.start_ns, start_ns) => (r.run, r.how),
        _ => (0, 0),
    }
}

/// Two start times of the same process: equal at clock-tick grain (the
/// entry may come from user space, which reads ticks from /proc).
#[inline(always)]
pub fn same_start(a: u64, b: u64) -> bool {
    let tick = u64::from(offset!(ns_per_tick));
    match (a.checked_div(tick), b.checked_div(tick)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// A `T` at `base + off` of a kernel object reached through a BTF-typed
/// pointer. Volatile, so LLVM keeps it one load of exactly this field (the
/// verifier refuses a load that spans two fields).
///
/// # Safety
/// `base` must be a BTF-typed pointer the verifier knows, and `base + off` a
/// field of type `T` in it.
#[inline(always)]
pub unsafe fn load<T: Copy>(base: *const u8, off: u32) -> T {
    // SAFETY: see above; the verifier makes the load fault-tolerant.
    unsafe { core::ptr::read_volatile(base.add(off as usize).cast::<T>()) }
}

/// Hides a value from the optimizer, so a mask applied after it survives.
///
/// LLVM drops `x & MASK` when it can prove `x` already fits; the verifier,
/// which does not track relations between registers, then sees an unbounded
/// offset. A volatile round trip through the stack keeps the mask in the code.
#[inline(always)]
pub fn opaque(v: usize) -> usize {
    // SAFETY: reading a local through a valid reference.
    unsafe { core::ptr::read_volatile(&v) }
}

/// The current task as a BTF-typed pointer, for [`load`].
#[inline(always)]
pub fn current_task_btf() -> *const u8 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_task_btf().cast::<u8>().cast_const() }
}

/// The current task as an address.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_get_current_task() }
}

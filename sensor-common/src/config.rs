//! Settings user space hands to the kernel programs as a read-only global at
//! load time: struct field offsets read from the running kernel's BTF,
//! tracepoint field offsets read from tracefs `format` files, and the
//! daemon's own process id.

/// Name of the global in the eBPF object.
pub const CONFIG_GLOBAL: &str = "SNSR_CONFIG";

/// Marks an offset that does not exist on this kernel.
pub const ABSENT: u32 = u32::MAX;

/// Byte offsets of kernel struct fields, from `/sys/kernel/btf/vmlinux`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_tgid: u32,
    pub task_pid: u32,
    pub task_real_parent: u32,
    pub task_group_leader: u32,
    pub task_start_boottime: u32,
    pub task_mm: u32,
    pub task_fs: u32,
    pub task_signal: u32,
    pub task_exit_code: u32,
    pub task_comm: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    pub mm_arg_end: u32,
    pub mm_start_stack: u32,
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub fs_pwd: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name: u32,
    pub dentry_d_inode: u32,
    pub qstr_len: u32,
    pub qstr_name: u32,
    pub vfsmount_mnt_root: u32,
    pub mount_mnt: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    /// `struct mount` `mnt_id`: the mount's id, unique among live mounts
    /// (a mount namespace's copy of a mount is another mount, with its own).
    pub mount_mnt_id: u32,
    pub signal_live: u32,
    pub signal_flags: u32,
    pub signal_group_exit_code: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    pub task_thread_pid: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    /// `sizeof(struct upid)`: stride of `pid.numbers[]`.
    pub upid_size: u32,
    pub upid_nr: u32,
    /// `struct pt_regs` (x86-64): the registers a syscall's first three
    /// arguments arrive in, saved at entry and still there at its exit.
    pub pt_regs_di: u32,
    pub pt_regs_si: u32,
    pub pt_regs_dx: u32,
    /// `struct pt_regs` `orig_ax`: the number of the syscall the task is in
    /// (`-1` outside one).
    pub pt_regs_orig_ax: u32,
    /// `inode` change time: seconds (`i_ctime_sec`, 6.11+; `__i_ctime.tv_sec`
    /// before) and nanoseconds (`i_ctime_nsec`; `__i_ctime.tv_nsec`).
    pub inode_ctime_sec: u32,
    pub inode_ctime_nsec: u32,
    /// `struct bpf_sock_addr_kern` (what a sock_addr program's context
    /// really is): the kernel's copy of the caller's address and its length.
    pub sock_addr_uaddr: u32,
    pub sock_addr_uaddrlen: u32,
    /// From a connected socket's fd to its peer: `task->files->fdt->fd[]`,
    /// `file->private_data` (the socket), `socket->sk`, and the AF_UNIX
    /// socket's `peer`, bound `addr` (`unix_address.len`, `.name`) and `path`.
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdtable_fd: u32,
    pub fdtable_max_fds: u32,
    pub file_private_data: u32,
    pub socket_sk: u32,
    pub unix_sock_peer: u32,
    pub unix_sock_addr: u32,
    pub unix_sock_path: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// `file.f_mode` (`FMODE_WRITE`) and `super_block.s_magic` (procfs).
    pub file_f_mode: u32,
    pub sb_s_magic: u32,
    /// `inode.i_private` (a pidfd's `struct pid`, 6.9+).
    pub inode_i_private: u32,
    /// A socket's addresses and type: `sock_common` `skc_family`,
    /// `skc_daddr`, `skc_rcv_saddr`, `skc_dport`, `skc_num`, `skc_v6_daddr`,
    /// `skc_v6_rcv_saddr`; `sock` `sk_type`, `sk_protocol`.
    pub skc_family: u32,
    pub skc_daddr: u32,
    pub skc_rcv_saddr: u32,
    pub skc_dport: u32,
    pub skc_num: u32,
    pub skc_v6_daddr: u32,
    pub skc_v6_rcv_saddr: u32,
    pub sk_type: u32,
    pub sk_protocol: u32,
}

/// Byte offsets of tracepoint fields, from tracefs `events/*/*/format`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TracepointOffsets {
    /// `sched_process_exec`: `__data_loc char[] filename`.
    pub exec_filename: u32,
    /// `sched_process_exec`: `pid_t old_pid`.
    pub exec_old_pid: u32,
    /// `sched_process_exit`: `bool group_dead`, or [`ABSENT`] on kernels without it.
    pub exit_group_dead: u32,
}

/// `sys_enter_*`: the offset of the first argument (`args[0]`; the others
/// follow, 8 bytes each), the same for every syscall entry: `struct
/// syscall_trace_enter` is `{ struct trace_entry ent; int nr; unsigned long
/// args[]; }`.
///
/// A constant, not a field of [`TracepointOffsets`]: the programs read a
/// tracepoint's record with plain loads of their context, which the
/// verifier accepts only at offsets fixed in the instruction (a helper
/// call per read, at ~40 ns here, was a tenth of the connect path). The
/// loader checks every format file the programs read against it and
/// refuses to load on a kernel where it differs.
pub const SYSCALL_ARGS_OFFSET: u32 = 16;
/// `sys_exit_*`: the offset of `long ret`, the same for every syscall exit
/// (`struct syscall_trace_exit` is `{ struct trace_entry ent; int nr; long
/// ret; }`); a constant for the reason given at [`SYSCALL_ARGS_OFFSET`].
pub const SYSCALL_RET_OFFSET: u32 = 16;

/// The whole global.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SensorConfig {
    /// The daemon's tgid: its own activity is not reported.
    pub own_tgid: u32,
    /// Nanoseconds per clock tick (`1e9 / sysconf(_SC_CLK_TCK)`): process start
    /// times are compared at this grain, the one /proc gives user space.
    pub ns_per_tick: u32,
    /// The daemon's start time (`CLOCK_BOOTTIME` ns, at tick grain): with
    /// `own_tgid` it names the daemon, so a process that later gets the
    /// daemon's pid (after it died, with the programs still pinned) is not
    /// taken for it.
    pub own_start_ns: u64,
    /// Struct field offsets.
    pub kernel: KernelOffsets,
    /// Tracepoint field offsets.
    pub tracepoints: TracepointOffsets,
    /// This load's generation: its programs act only while the pinned
    /// [`crate::maps::ACTIVE`] map holds this number, and every record they
    /// send carries it (see [`crate::handover`]).
    pub generation: u32,
    /// Zero: makes the size a multiple of 8 without hidden padding.
    pub _pad: u32,
}
const _: () = assert!(size_of::<SensorConfig>() == 8 + 8 + 71 * 4 + 3 * 4 + 4 + 4);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no padding (size checked above).
unsafe impl aya::Pod for SensorConfig {}

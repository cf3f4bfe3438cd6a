//! The read-only global the loader fills in before load (see `sensor_common::config`).

use sensor_common::config::SensorConfig;

#[unsafe(no_mangle)]
pub(crate) static SNSR_CONFIG: SensorConfig = SensorConfig {
    own_tgid: 0,
    ns_per_tick: 0,
    own_start_ns: 0,
    kernel: sensor_common::config::KernelOffsets {
        task_tgid: 0,
        task_pid: 0,
        task_real_parent: 0,
        task_group_leader: 0,
        task_start_boottime: 0,
        task_mm: 0,
        task_fs: 0,
        task_signal: 0,
        task_exit_code: 0,
        task_comm: 0,
        mm_exe_file: 0,
        mm_arg_start: 0,
        mm_arg_end: 0,
        mm_start_stack: 0,
        file_f_path: 0,
        file_f_inode: 0,
        path_mnt: 0,
        path_dentry: 0,
        fs_pwd: 0,
        dentry_d_parent: 0,
        dentry_d_name: 0,
        dentry_d_inode: 0,
        qstr_len: 0,
        qstr_name: 0,
        vfsmount_mnt_root: 0,
        mount_mnt: 0,
        mount_mnt_parent: 0,
        mount_mnt_mountpoint: 0,
        mount_mnt_id: 0,
        signal_live: 0,
        signal_flags: 0,
        signal_group_exit_code: 0,
        inode_i_ino: 0,
        inode_i_sb: 0,
        sb_s_dev: 0,
        task_thread_pid: 0,
        pid_level: 0,
        pid_numbers: 0,
        upid_size: 0,
        upid_nr: 0,
        pt_regs_di: 0,
        pt_regs_si: 0,
        pt_regs_dx: 0,
        pt_regs_orig_ax: 0,
        inode_ctime_sec: 0,
        inode_ctime_nsec: 0,
        sock_addr_uaddr: 0,
        sock_addr_uaddrlen: 0,
        task_files: 0,
        files_fdt: 0,
        fdtable_fd: 0,
        fdtable_max_fds: 0,
        file_private_data: 0,
        socket_sk: 0,
        unix_sock_peer: 0,
        unix_sock_addr: 0,
        unix_sock_path: 0,
        unix_address_len: 0,
        unix_address_name: 0,
        file_f_mode: 0,
        sb_s_magic: 0,
        inode_i_private: 0,
        skc_family: 0,
        skc_daddr: 0,
        skc_rcv_saddr: 0,
        skc_dport: 0,
        skc_num: 0,
        skc_v6_daddr: 0,
        skc_v6_rcv_saddr: 0,
        sk_type: 0,
        sk_protocol: 0,
    },
    tracepoints: sensor_common::config::TracepointOffsets {
        exec_filename: 0,
        exec_old_pid: 0,
        exit_group_dead: 0,
    },
    generation: 0,
    _pad: 0,
};

/// Reads one field of the global. The volatile read keeps the compiler from
/// folding the zero placeholder above into the code.
macro_rules! offset {
    ($($field:ident).+) => {
        $crate::config::read_volatile(&raw const $crate::config::SNSR_CONFIG.$($field).+)
    };
}
pub(crate) use offset;

/// Volatile read of a field of the global.
#[inline(always)]
pub fn read_volatile<T: Copy>(field: *const T) -> T {
    // SAFETY: `field` points into a static that lives for the whole program.
    unsafe { core::ptr::read_volatile(field) }
}

/// True when the current task (of process `tgid`) belongs to the daemon
/// itself: its pid and its start time. The pid alone is not enough: pinned
/// programs outlive the daemon, and a process that later gets its pid must
/// not be exempt from anything.
#[inline(always)]
pub fn is_own(tgid: u32) -> bool {
    if tgid != offset!(own_tgid) {
        return false;
    }
    let mut r = crate::kernel::Reader::new();
    let task = crate::kernel::current_task();
    let leader: u64 = r.read(task, offset!(kernel.task_group_leader));
    let start: u64 = r.read(leader, offset!(kernel.task_start_boottime));
    crate::kernel::same_start(start, offset!(own_start_ns))
}

/// Whether this load's programs are the ones acting now: the pinned
/// `ACTIVE` map holds their generation. A new daemon attaches its programs
/// while the old ones still run and then switches this entry in one write,
/// so every event is recorded, and every decision taken, by exactly one
/// load (see `sensor_common::handover`). Programs that are not active
/// return at once, allowing what they would otherwise judge.
#[inline(always)]
pub fn active() -> bool {
    crate::maps::ACTIVE
        .get(0)
        .is_some_and(|g| *g == offset!(generation))
}

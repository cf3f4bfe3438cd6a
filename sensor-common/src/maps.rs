//! Names of the kernel maps and programs, used by both sides.
//!
//! The kernel keeps 15 characters of a program or map name; all of ours carry
//! a distinctive `snsr_`/`SNSR_` prefix so `bpftool` output is easy to read.

/// Ring buffer of events (kernel → user).
pub const EVENTS: &str = "SNSR_EVENTS";
/// Per-CPU counters, see [`crate::stats::Stats`].
pub const STATS: &str = "SNSR_STATS";
/// Whether the event reader sleeps until woken (one `u32`):
/// - 0: it is awake, draining on a short timer, and records are written
///   without a wakeup;
/// - otherwise it sleeps until a record wakes it, and the value is the
///   second of `CLOCK_BOOTTIME` until which that holds (its lease). The
///   daemon renews the lease every tick while it sleeps. Past it the reader
///   is taken to be gone (killed or stopped while asleep) and records are
///   written without a wakeup: each would be an irq_work (in a VM an IPI)
///   for nobody. The next reader drains them when it starts, and a stopped
///   one at its next tick.
pub const READER: &str = "SNSR_READER";
/// How long a sleeping reader's lease in [`READER`] lasts, in seconds: a
/// few of its 1 s ticks.
pub const READER_LEASE_SECS: u32 = 3;
/// Process → run map, pinned so attribution survives a daemon restart.
pub const PROC_RUNS: &str = "SNSR_PROC_RUNS";
/// Per-CPU event assembly buffers (an array indexed by CPU id).
pub const SCRATCH: &str = "SNSR_SCRATCH";
/// Policy slots, see [`crate::policy`]. Pinned.
pub const POLICIES: &str = "SNSR_POLICIES";
/// Run → policy slot. Pinned.
pub const RUN_POLICY: &str = "SNSR_RUN_POLICY";
/// Live processes per counted run (`max_processes`). Pinned.
pub const RUN_LIVE: &str = "SNSR_RUN_LIVE";
/// Exec rules: file and directory identities per policy. Pinned.
pub const EXEC_RULES: &str = "SNSR_EXEC_RULES";
/// IPv4 prefix trie per policy. Pinned.
pub const NET4_RULES: &str = "SNSR_NET4_RULES";
/// IPv6 prefix trie per policy. Pinned.
pub const NET6_RULES: &str = "SNSR_NET6_RULES";

/// The pin dir's owner record: the daemon holding the pins, see
/// [`crate::owner`]. Pinned; written by user space only.
pub const OWNER: &str = "SNSR_OWNER";

/// Per-run counters: records lost and denial records suppressed, see
/// [`crate::stats::RunStats`].
pub const RUN_STATS: &str = "SNSR_RUN_STATS";

/// `unix.allow` rules by address (`UnixKey` → rule). Pinned.
pub const UNIX_RULES: &str = "SNSR_UNIX_RULES";
/// `unix.allow` rules by socket file identity (`ExecKey` → rule). Pinned.
pub const UNIX_IDS: &str = "SNSR_UNIX_IDS";

/// Files and directories of the sensor (`ExecKey` with policy 0 → a
/// `SENSOR_FILE_*` kind): an open for writing by a run is `sensor.tamper`.
pub const SENSOR_FILES: &str = "SNSR_FILES";
/// Run → parent run, for the tamper checks (a run may reach into its own
/// sub-runs' processes, not the other way). Pinned.
pub const RUN_TREE: &str = "SNSR_RUN_TREE";

/// Datagrams sent without connect() per process and destination (LRU).
pub const SEND_SEEN: &str = "SNSR_SEND_SEEN";

/// The generation whose programs act (a one-entry array; see
/// [`crate::handover`]). Pinned; written by user space only.
pub const ACTIVE: &str = "SNSR_ACTIVE";
/// The last reader's mark ([`crate::handover::ReaderMark`]). Pinned;
/// written by user space only.
pub const MARK: &str = "SNSR_MARK";
/// Per-run counters already reported (run handle → `RunStats`), so the next
/// daemon reports only what is new. Pinned; written by user space only.
pub const RUN_STATS_SEEN: &str = "SNSR_RUN_SEEN";
/// Per-CPU path buffer (see the eBPF `PATH_SCRATCH`).
pub const PATH_SCRATCH: &str = "SNSR_PATHBUF";
/// A thread's connect() in flight (see the eBPF `CONNECT_INFLIGHT`).
pub const CONNECT_INFLIGHT: &str = "SNSR_CONNECT";
/// A connect() in flight of a thread of a process in a run (see the eBPF
/// `RUN_CONNECT_INFLIGHT`).
pub const RUN_CONNECT_INFLIGHT: &str = "SNSR_RUN_CONNECT";

/// Every map the programs use, pinned in the pin directory: they keep
/// attribution, enforcement and recording going while the daemon is down
/// or restarting, and a new daemon's programs share them with the old
/// ones. Only the per-CPU assembly buffers ([`SCRATCH`], [`PATH_SCRATCH`])
/// are each load's own.
pub const PINNED: &[&str] = &[
    PROC_RUNS,
    POLICIES,
    RUN_POLICY,
    RUN_LIVE,
    EXEC_RULES,
    NET4_RULES,
    NET6_RULES,
    UNIX_RULES,
    UNIX_IDS,
    RUN_TREE,
    OWNER,
    EVENTS,
    READER,
    STATS,
    RUN_STATS,
    SENSOR_FILES,
    SEND_SEEN,
    CONNECT_INFLIGHT,
    RUN_CONNECT_INFLIGHT,
    ACTIVE,
    MARK,
    RUN_STATS_SEEN,
];
/// Subdirectory of the pin directory holding the program links.
pub const LINKS_DIR: &str = "links";

/// Program names: what the loader looks up and what bpftool shows.
pub mod programs {
    /// raw_tp `sched_process_fork`: new processes.
    pub const FORK: &str = "snsr_fork";
    /// tracepoint `sched/sched_process_exec`: successful exec.
    pub const EXEC: &str = "snsr_exec";
    /// tracepoint `sched/sched_process_exit`: process (thread group) exit.
    pub const EXIT: &str = "snsr_exit";
    /// tracepoint `syscalls/sys_exit_execve`.
    pub const EXECVE_EXIT: &str = "snsr_execve_out";
    /// tracepoint `syscalls/sys_exit_execveat`.
    pub const EXECVEAT_EXIT: &str = "snsr_execat_out";
    /// tracepoint `syscalls/sys_exit_connect`.
    pub const CONNECT_EXIT: &str = "snsr_conn_out";
    /// cgroup_sock_addr connect4 on the cgroup2 root.
    pub const CONNECT4: &str = "snsr_connect4";
    /// cgroup_sock_addr connect6 on the cgroup2 root.
    pub const CONNECT6: &str = "snsr_connect6";
    /// cgroup_sock_addr sendmsg4 (unconnected UDP) on the cgroup2 root.
    pub const SENDMSG4: &str = "snsr_sendmsg4";
    /// cgroup_sock_addr sendmsg6 on the cgroup2 root.
    pub const SENDMSG6: &str = "snsr_sendmsg6";
    /// cgroup_sock_addr connect_unix on the cgroup2 root (6.7+).
    pub const CONNECT_UNIX: &str = "snsr_conn_unix";
    /// cgroup_sock_addr sendmsg_unix on the cgroup2 root (6.7+).
    pub const SENDMSG_UNIX: &str = "snsr_send_unix";
    /// tracepoint `syscalls/sys_enter_ptrace`.
    pub const PTRACE: &str = "snsr_ptrace";
    /// tracepoint `syscalls/sys_enter_process_vm_writev`.
    pub const VM_WRITE: &str = "snsr_vm_write";
    /// tracepoint `syscalls/sys_enter_pidfd_getfd`.
    pub const PIDFD_GETFD: &str = "snsr_getfd";
    /// tracepoint `syscalls/sys_exit_openat`.
    pub const OPENAT_EXIT: &str = "snsr_openat_out";
    /// tracepoint `syscalls/sys_exit_openat2`.
    pub const OPENAT2_EXIT: &str = "snsr_opena2_out";
    /// tracepoint `syscalls/sys_exit_open`.
    pub const OPEN_EXIT: &str = "snsr_open_out";
    /// tracepoint `syscalls/sys_enter_kill`.
    pub const KILL: &str = "snsr_kill";
    /// tracepoint `syscalls/sys_enter_tgkill`.
    pub const TGKILL: &str = "snsr_tgkill";
    /// tracepoint `syscalls/sys_enter_tkill`.
    pub const TKILL: &str = "snsr_tkill";
    /// tracepoint `syscalls/sys_enter_pidfd_send_signal`.
    pub const PIDFD_SIGNAL: &str = "snsr_pidfd_sig";
    /// tracepoint `syscalls/sys_enter_bpf`.
    pub const BPF: &str = "snsr_bpf";
    /// cgroup_sock `sock_create` on the cgroup2 root: raw and ICMP sockets.
    pub const SOCK_CREATE: &str = "snsr_sock_new";
    /// tracepoint `syscalls/sys_enter_socket`: packet sockets.
    pub const SOCKET: &str = "snsr_socket";
    /// tracepoint `syscalls/sys_exit_listen`.
    pub const LISTEN_EXIT: &str = "snsr_listen_out";
    /// tracepoint `syscalls/sys_exit_accept4`.
    pub const ACCEPT4_EXIT: &str = "snsr_accept4_x";
    /// tracepoint `syscalls/sys_exit_accept`.
    pub const ACCEPT_EXIT: &str = "snsr_accept_out";
    /// tracepoint `syscalls/sys_exit_clone`: stops a child over `max_processes`.
    pub const CLONE_EXIT: &str = "snsr_clone_out";
    /// tracepoint `syscalls/sys_exit_clone3`.
    pub const CLONE3_EXIT: &str = "snsr_clone3_out";
    /// tracepoint `syscalls/sys_exit_fork`.
    pub const FORK_EXIT: &str = "snsr_fork_out";
    /// tracepoint `syscalls/sys_exit_vfork`.
    pub const VFORK_EXIT: &str = "snsr_vfork_out";
}

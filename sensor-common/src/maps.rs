//! Names of the kernel maps and programs, used by both sides.
//!
//! The kernel keeps 15 characters of a program or map name; all of ours carry
//! a distinctive `snsr_`/`SNSR_` prefix so `bpftool` output is easy to read.

/// Ring buffer of events (kernel → user).
pub const EVENTS: &str = "SNSR_EVENTS";
/// Per-CPU counters, see [`crate::stats::Stats`].
pub const STATS: &str = "SNSR_STATS";
/// Process → run map, pinned so attribution survives a daemon restart.
pub const PROC_RUNS: &str = "SNSR_PROC_RUNS";
/// Per-CPU event assembly buffers (an array indexed by CPU id).
pub const SCRATCH: &str = "SNSR_SCRATCH";

/// Program names: what the loader looks up and what bpftool shows.
pub mod programs {
    /// raw_tp `sched_process_fork`: new processes.
    pub const FORK: &str = "snsr_fork";
    /// tracepoint `sched/sched_process_exec`: successful exec.
    pub const EXEC: &str = "snsr_exec";
    /// tracepoint `sched/sched_process_exit`: process (thread group) exit.
    pub const EXIT: &str = "snsr_exit";
    /// tracepoint `syscalls/sys_enter_execve`.
    pub const EXECVE_ENTER: &str = "snsr_execve_in";
    /// tracepoint `syscalls/sys_exit_execve`.
    pub const EXECVE_EXIT: &str = "snsr_execve_out";
    /// tracepoint `syscalls/sys_enter_execveat`.
    pub const EXECVEAT_ENTER: &str = "snsr_execat_in";
    /// tracepoint `syscalls/sys_exit_execveat`.
    pub const EXECVEAT_EXIT: &str = "snsr_execat_out";
    /// tracepoint `syscalls/sys_enter_connect`.
    pub const CONNECT_ENTER: &str = "snsr_conn_in";
    /// tracepoint `syscalls/sys_exit_connect`.
    pub const CONNECT_EXIT: &str = "snsr_conn_out";
    /// cgroup_sock_addr connect4 on the cgroup2 root.
    pub const CONNECT4: &str = "snsr_connect4";
    /// cgroup_sock_addr connect6 on the cgroup2 root.
    pub const CONNECT6: &str = "snsr_connect6";
}

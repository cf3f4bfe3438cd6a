//! The probe table: each kernel program and where it attaches, in attach order.
//!
//! Helpers that bracket a syscall (enter/exit) are attached before the hook
//! that produces the event, so the first events already carry their results.

use sensor_common::maps::programs as p;

/// Where a program attaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attach {
    /// A raw tracepoint (no tracefs needed), by name.
    RawTracepoint(&'static str),
    /// A tracefs tracepoint.
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// A cgroup `sock_addr` hook on the cgroup2 root.
    CgroupSockAddr,
    /// A cgroup `sock` hook (socket creation) on the cgroup2 root.
    CgroupSock,
}

/// When a program must be attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needed {
    /// Always: it reports or guards processes whether in a run or not.
    Always,
    /// While some process is in a run (the kernel's process → run map is
    /// not empty): its program returns at once for a process outside every
    /// run. Detached otherwise, so that the host does not pay the dispatch
    /// (a syscall tracepoint's record, a cgroup hook's run) on every such
    /// call for nothing (see `loader::Probes::set_run_probes`). Only hooks
    /// on calls a busy host makes often stand by: the rare ones (signals,
    /// bpf, ptrace) cost nothing until called, and stay, so that they guard
    /// the daemon from the first instant of every run.
    InRuns,
}

/// One program of the table.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// Program (function) name in the eBPF object.
    pub program: &'static str,
    /// Attach point.
    pub attach: Attach,
    /// What the user gets from it, for messages.
    pub purpose: &'static str,
    /// When it is attached.
    pub needed: Needed,
}

const fn tp(
    program: &'static str,
    category: &'static str,
    name: &'static str,
    purpose: &'static str,
) -> Probe {
    Probe {
        program,
        attach: Attach::Tracepoint { category, name },
        purpose,
        needed: Needed::Always,
    }
}

/// [`tp`] for a program that acts on processes in runs only ([`Needed::InRuns`]).
const fn tp_in_runs(
    program: &'static str,
    category: &'static str,
    name: &'static str,
    purpose: &'static str,
) -> Probe {
    Probe {
        needed: Needed::InRuns,
        ..tp(program, category, name, purpose)
    }
}

/// Every probe the daemon attaches.
pub const PROBES: &[Probe] = &[
    tp(
        p::EXECVE_EXIT,
        "syscalls",
        "sys_exit_execve",
        "failed execve",
    ),
    tp(
        p::EXECVEAT_EXIT,
        "syscalls",
        "sys_exit_execveat",
        "failed execveat",
    ),
    tp(p::EXEC, "sched", "sched_process_exec", "process.exec"),
    tp(p::EXIT, "sched", "sched_process_exit", "process.exit"),
    Probe {
        program: p::FORK,
        attach: Attach::RawTracepoint("sched_process_fork"),
        purpose: "process.spawn",
        needed: Needed::Always,
    },
    tp(
        p::CONNECT_EXIT,
        "syscalls",
        "sys_exit_connect",
        "connect results",
    ),
    Probe {
        program: p::CONNECT4,
        attach: Attach::CgroupSockAddr,
        purpose: "network.connect (IPv4)",
        needed: Needed::Always,
    },
    Probe {
        program: p::CONNECT6,
        attach: Attach::CgroupSockAddr,
        purpose: "network.connect (IPv6)",
        needed: Needed::Always,
    },
    Probe {
        program: p::SENDMSG4,
        attach: Attach::CgroupSockAddr,
        purpose: "connect.allow on UDP datagrams (IPv4)",
        needed: Needed::InRuns,
    },
    Probe {
        program: p::SENDMSG6,
        attach: Attach::CgroupSockAddr,
        purpose: "connect.allow on UDP datagrams (IPv6)",
        needed: Needed::InRuns,
    },
    Probe {
        program: p::CONNECT_UNIX,
        attach: Attach::CgroupSockAddr,
        purpose: "network.connect (Unix sockets) and unix.allow",
        needed: Needed::InRuns,
    },
    Probe {
        program: p::SENDMSG_UNIX,
        attach: Attach::CgroupSockAddr,
        purpose: "unix.allow on Unix datagrams",
        needed: Needed::InRuns,
    },
    tp(
        p::PTRACE,
        "syscalls",
        "sys_enter_ptrace",
        "process.tamper (ptrace)",
    ),
    tp(
        p::VM_WRITE,
        "syscalls",
        "sys_enter_process_vm_writev",
        "process.tamper (process_vm_writev)",
    ),
    tp(
        p::PIDFD_GETFD,
        "syscalls",
        "sys_enter_pidfd_getfd",
        "process.tamper (pidfd_getfd)",
    ),
    tp_in_runs(
        p::OPENAT_EXIT,
        "syscalls",
        "sys_exit_openat",
        "process.tamper (/proc/PID/mem), sensor.tamper (files)",
    ),
    tp_in_runs(
        p::OPENAT2_EXIT,
        "syscalls",
        "sys_exit_openat2",
        "process.tamper (/proc/PID/mem), sensor.tamper (files)",
    ),
    tp_in_runs(
        p::OPEN_EXIT,
        "syscalls",
        "sys_exit_open",
        "process.tamper (/proc/PID/mem), sensor.tamper (files)",
    ),
    tp(
        p::KILL,
        "syscalls",
        "sys_enter_kill",
        "sensor.tamper (signals)",
    ),
    tp(
        p::TGKILL,
        "syscalls",
        "sys_enter_tgkill",
        "sensor.tamper (signals)",
    ),
    tp(
        p::TKILL,
        "syscalls",
        "sys_enter_tkill",
        "sensor.tamper (signals)",
    ),
    tp(
        p::PIDFD_SIGNAL,
        "syscalls",
        "sys_enter_pidfd_send_signal",
        "sensor.tamper (signals)",
    ),
    tp(p::BPF, "syscalls", "sys_enter_bpf", "sensor.tamper (bpf)"),
    Probe {
        program: p::SOCK_CREATE,
        attach: Attach::CgroupSock,
        purpose: "raw and ICMP sockets (network.socket, raw_sockets)",
        needed: Needed::InRuns,
    },
    tp_in_runs(
        p::SOCKET,
        "syscalls",
        "sys_enter_socket",
        "packet sockets (network.socket, raw_sockets)",
    ),
    tp_in_runs(
        p::LISTEN_EXIT,
        "syscalls",
        "sys_exit_listen",
        "network.listen",
    ),
    tp_in_runs(
        p::ACCEPT4_EXIT,
        "syscalls",
        "sys_exit_accept4",
        "network.accept",
    ),
    tp_in_runs(
        p::ACCEPT_EXIT,
        "syscalls",
        "sys_exit_accept",
        "network.accept",
    ),
    tp_in_runs(p::CLONE_EXIT, "syscalls", "sys_exit_clone", "max_processes"),
    tp_in_runs(
        p::CLONE3_EXIT,
        "syscalls",
        "sys_exit_clone3",
        "max_processes",
    ),
    tp_in_runs(p::FORK_EXIT, "syscalls", "sys_exit_fork", "max_processes"),
    tp_in_runs(p::VFORK_EXIT, "syscalls", "sys_exit_vfork", "max_processes"),
];

/// Whether `program` is one of the table's [`Needed::InRuns`] programs.
#[must_use]
pub fn in_runs_only(program: &str) -> bool {
    PROBES
        .iter()
        .any(|p| p.program == program && p.needed == Needed::InRuns)
}

impl std::fmt::Display for Attach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::RawTracepoint(name) => write!(f, "raw tracepoint {name}"),
            Self::Tracepoint { category, name } => write!(f, "tracepoint {category}/{name}"),
            Self::CgroupSockAddr | Self::CgroupSock => f.write_str("cgroup2 root"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_limit_and_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for probe in PROBES {
            assert!(
                probe.program.len() <= 15,
                "{} is cut by the kernel",
                probe.program
            );
            assert!(probe.program.starts_with("snsr_"));
            assert!(seen.insert(probe.program), "{} twice", probe.program);
        }
    }

    /// Standby is for the hooks of calls a busy host makes often and whose
    /// programs act on processes in runs only. What reports every process
    /// (the sched hooks, connects and their results, failed execs) is always
    /// attached, and so are the guards of rare calls (signals, bpf, ptrace,
    /// process_vm_writev, pidfd_getfd): they cost nothing until called, and
    /// must hold from the first instant of a run.
    #[test]
    fn only_hooks_of_frequent_calls_for_runs_stand_by() {
        let always = [
            p::EXEC,
            p::EXIT,
            p::FORK,
            p::EXECVE_EXIT,
            p::EXECVEAT_EXIT,
            p::CONNECT_EXIT,
            p::CONNECT4,
            p::CONNECT6,
            p::PTRACE,
            p::VM_WRITE,
            p::PIDFD_GETFD,
            p::KILL,
            p::TGKILL,
            p::TKILL,
            p::PIDFD_SIGNAL,
            p::BPF,
        ];
        for program in always {
            assert!(
                PROBES.iter().any(|p| p.program == program),
                "{program} is in the table"
            );
            assert!(!in_runs_only(program), "{program} must stay attached");
        }
        let standby: Vec<_> = PROBES
            .iter()
            .filter(|p| p.needed == Needed::InRuns)
            .collect();
        assert_eq!(standby.len() + always.len(), PROBES.len());
        for probe in standby {
            assert!(
                matches!(
                    probe.attach,
                    Attach::Tracepoint {
                        category: "syscalls",
                        ..
                    } | Attach::CgroupSock
                        | Attach::CgroupSockAddr
                ),
                "{} stands by but is neither a syscall tracepoint nor a cgroup hook",
                probe.program
            );
        }
    }
}

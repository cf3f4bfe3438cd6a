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

/// One program of the table.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    /// Program (function) name in the eBPF object.
    pub program: &'static str,
    /// Attach point.
    pub attach: Attach,
    /// What the user gets from it, for messages.
    pub purpose: &'static str,
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
    },
    tp(
        p::CONNECT_ENTER,
        "syscalls",
        "sys_enter_connect",
        "connect results",
    ),
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
    },
    Probe {
        program: p::CONNECT6,
        attach: Attach::CgroupSockAddr,
        purpose: "network.connect (IPv6)",
    },
    Probe {
        program: p::SENDMSG4,
        attach: Attach::CgroupSockAddr,
        purpose: "connect.allow on UDP datagrams (IPv4)",
    },
    Probe {
        program: p::SENDMSG6,
        attach: Attach::CgroupSockAddr,
        purpose: "connect.allow on UDP datagrams (IPv6)",
    },
    Probe {
        program: p::CONNECT_UNIX,
        attach: Attach::CgroupSockAddr,
        purpose: "network.connect (Unix sockets) and unix.allow",
    },
    Probe {
        program: p::SENDMSG_UNIX,
        attach: Attach::CgroupSockAddr,
        purpose: "unix.allow on Unix datagrams",
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
    tp(
        p::OPENAT_EXIT,
        "syscalls",
        "sys_exit_openat",
        "process.tamper (/proc/PID/mem), sensor.tamper (files)",
    ),
    tp(
        p::OPENAT2_EXIT,
        "syscalls",
        "sys_exit_openat2",
        "process.tamper (/proc/PID/mem), sensor.tamper (files)",
    ),
    tp(
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
    },
    tp(
        p::SOCKET,
        "syscalls",
        "sys_enter_socket",
        "packet sockets (network.socket, raw_sockets)",
    ),
    tp(
        p::LISTEN_EXIT,
        "syscalls",
        "sys_exit_listen",
        "network.listen",
    ),
    tp(
        p::ACCEPT4_EXIT,
        "syscalls",
        "sys_exit_accept4",
        "network.accept",
    ),
    tp(
        p::ACCEPT_EXIT,
        "syscalls",
        "sys_exit_accept",
        "network.accept",
    ),
    tp(p::CLONE_EXIT, "syscalls", "sys_exit_clone", "max_processes"),
    tp(
        p::CLONE3_EXIT,
        "syscalls",
        "sys_exit_clone3",
        "max_processes",
    ),
    tp(p::FORK_EXIT, "syscalls", "sys_exit_fork", "max_processes"),
    tp(p::VFORK_EXIT, "syscalls", "sys_exit_vfork", "max_processes"),
];

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
}

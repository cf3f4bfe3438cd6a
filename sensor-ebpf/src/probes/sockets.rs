//! Sockets of processes in runs that the connect hooks do not see: raw,
//! ICMP ("ping") and packet sockets send to any address without a connect;
//! a listener takes connections in; datagrams sent without connect() go
//! anywhere one at a time.
//!
//! - `sock_create` (cgroup, inet sockets): a raw or ICMP datagram socket of
//!   an enforce run is refused (EPERM) unless the policy has `raw_sockets`.
//! - `sys_enter_socket`: a packet socket (AF_PACKET, which `sock_create`
//!   does not see): the caller is killed under enforce (the socket is made,
//!   in a process that dies before it can use it).
//! - `sys_exit_listen`, `sys_exit_accept4`, `sys_exit_accept`: reported with
//!   the local (and peer) address.
//! - unconnected datagrams (`sendmsg4/6`, see `network.rs`): the first to
//!   each destination, then at 2, 4, 8, ... with the count, per process.

use aya_ebpf::{
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{bpf_ktime_get_boot_ns, bpf_task_pt_regs},
    },
    macros::{cgroup_sock, tracepoint},
    programs::{SockContext, TracePointContext},
};
use sensor_common::handover::kind_word;
use sensor_common::inflight::SendKey;
use sensor_common::{
    event::{
        ConnectData, EventHeader, EventKind, FixedEvent, HOW_MASK, SOCKET_ACCEPT, SOCKET_CREATE,
        SOCKET_LISTEN, SOCKET_SENDTO, SocketData,
    },
    policy::{Decision, MODE_ENFORCE, RULE_RAW_SOCKET, SLOT_RAW_SOCKETS, VERDICT_DENY},
};

use crate::{
    config::{active, is_own, offset},
    emit::{count, deny_budget, wakeup_flags},
    kernel::{Reader, current_task, current_task_btf, load, run_of},
    maps::{EVENTS, SEND_SEEN},
    policy::{kill_current, policy_of},
    syscall,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const AF_PACKET: u64 = 17;
const SOCK_DGRAM: u16 = 2;
const SOCK_RAW: u16 = 3;
const IPPROTO_ICMP: u16 = 1;
const IPPROTO_ICMPV6: u16 = 58;
/// Verdicts of a cgroup sock program.
const ALLOW: i32 = 1;
const REJECT: i32 = 0;

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

/// The run policy's decision on a raw-like socket: denied unless the policy
/// allows raw sockets (`None`: no policy, or allowed).
#[inline(always)]
fn raw_decision(run: u64) -> Option<Decision> {
    let (_, slot) = policy_of(run)?;
    if slot.flags & SLOT_RAW_SOCKETS != 0 {
        return None;
    }
    Some(Decision {
        policy: slot.id,
        rule: RULE_RAW_SOCKET,
        verdict: VERDICT_DENY,
        enforced: u16::from(slot.mode == MODE_ENFORCE),
        _pad: 0,
    })
}

/// Sends a socket record of the current task, assembled in place in the
/// ring buffer (not on the 512-byte stack).
#[inline(always)]
fn report(data: &SocketData, tgid: u32, run: u64, how: u32) {
    let Some(mut entry) = EVENTS.reserve::<FixedEvent<SocketData>>(0) else {
        count(EventKind::NetSocket, false, 0, run);
        return;
    };
    let ev = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let mut r = Reader::new();
    // SAFETY: `ev` is a reserved ring buffer record of this type.
    unsafe {
        (*ev).header = EventHeader {
            kind: kind_word(EventKind::NetSocket as u32),
            generation: offset!(generation),
            size: size_of::<FixedEvent<SocketData>>() as u32,
            // SAFETY: no preconditions.
            ktime_ns: bpf_ktime_get_boot_ns(),
            tgid,
            tid: pid_tgid as u32,
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            ..EventHeader::default()
        };
        r.fill_task(&mut (*ev).header, current_task());
        (*ev).header.run = run;
        (*ev).header.run_how = how & HOW_MASK;
        (*ev).payload = *data;
    }
    let errors = r.errors;
    entry.submit(wakeup_flags(EventKind::NetSocket));
    count(EventKind::NetSocket, true, errors, run);
}

/// cgroup_sock `sock_create` on the cgroup2 root: an inet socket is made.
#[cgroup_sock(sock_create)]
pub fn snsr_sock_new(ctx: SockContext) -> i32 {
    if !active() {
        return 1; // allow: the active load decides
    }
    // SAFETY: the kernel's bpf_sock; the fields are rewritten by the verifier.
    let (family, sock_type, protocol) = unsafe {
        (
            (*ctx.sock).family as u16,
            (*ctx.sock).type_ as u16,
            (*ctx.sock).protocol as u16,
        )
    };
    let raw_like = sock_type == SOCK_RAW
        || (sock_type == SOCK_DGRAM && (protocol == IPPROTO_ICMP || protocol == IPPROTO_ICMPV6));
    if !raw_like || (family != AF_INET && family != AF_INET6) {
        return ALLOW;
    }
    let Some((tgid, run, how)) = caller_run() else {
        return ALLOW;
    };
    let decision = raw_decision(run).unwrap_or_default();
    let refused = decision.enforced != 0;
    if decision.verdict != VERDICT_DENY || deny_budget(run) {
        let data = SocketData {
            what: SOCKET_CREATE,
            family,
            sock_type,
            protocol,
            ret: if refused { -1 } else { 0 },
            decision,
            ..SocketData::default()
        };
        report(&data, tgid, run, how);
    }
    if refused { REJECT } else { ALLOW }
}

/// tracepoint `syscalls/sys_enter_socket(family, type, protocol)`: packet
/// sockets, which `sock_create` does not see.
#[tracepoint]
pub fn snsr_socket(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    let family = syscall::arg(&ctx, 0);
    if family != AF_PACKET {
        return 0;
    }
    let Some((tgid, run, how)) = caller_run() else {
        return 0;
    };
    let sock_type = syscall::arg(&ctx, 1);
    let protocol = syscall::arg(&ctx, 2);
    let decision = raw_decision(run).unwrap_or_default();
    if decision.enforced != 0 {
        kill_current();
    }
    if decision.verdict != VERDICT_DENY || deny_budget(run) {
        let data = SocketData {
            what: SOCKET_CREATE,
            family: AF_PACKET as u16,
            // SOCK_* flags (NONBLOCK, CLOEXEC) live in the high bits.
            sock_type: (sock_type & 0xf) as u16,
            protocol: u16::from_be(protocol as u16),
            decision,
            ..SocketData::default()
        };
        report(&data, tgid, run, how);
    }
    0
}

/// The socket behind fd `fd` of the current task: `struct sock *` (0: none).
#[inline(always)]
fn sock_of(r: &mut Reader, fd: u32) -> u64 {
    let task = current_task();
    let files: u64 = r.read(task, offset!(kernel.task_files));
    let fdt: u64 = r.read(files, offset!(kernel.files_fdt));
    let max_fds: u32 = r.read(fdt, offset!(kernel.fdtable_max_fds));
    if fd >= max_fds {
        return 0;
    }
    let fds: u64 = r.read(fdt, offset!(kernel.fdtable_fd));
    let file: u64 = r.read(fds + u64::from(fd) * 8, 0);
    let socket: u64 = r.read(file, offset!(kernel.file_private_data));
    r.read(socket, offset!(kernel.socket_sk))
}

/// The addresses and type of an inet socket into `data` (false: not inet).
#[inline(always)]
fn describe(r: &mut Reader, sk: u64, data: &mut SocketData) -> bool {
    data.family = r.read(sk, offset!(kernel.skc_family));
    if data.family != AF_INET && data.family != AF_INET6 {
        return false;
    }
    data.sock_type = r.read(sk, offset!(kernel.sk_type));
    data.protocol = r.read(sk, offset!(kernel.sk_protocol));
    data.local_port = r.read(sk, offset!(kernel.skc_num));
    let dport: u16 = r.read(sk, offset!(kernel.skc_dport));
    data.remote_port = u16::from_be(dport);
    if data.family == AF_INET {
        let local: [u8; 4] = r.read(sk, offset!(kernel.skc_rcv_saddr));
        let remote: [u8; 4] = r.read(sk, offset!(kernel.skc_daddr));
        data.local[..4].copy_from_slice(&local);
        data.remote[..4].copy_from_slice(&remote);
    } else {
        data.local = r.read(sk, offset!(kernel.skc_v6_rcv_saddr));
        data.remote = r.read(sk, offset!(kernel.skc_v6_daddr));
    }
    true
}

/// The syscall's first argument, from the caller's saved registers (still
/// there at the syscall's exit).
#[inline(always)]
fn first_arg() -> u64 {
    // SAFETY: the current task is a BTF pointer; bpf_task_pt_regs returns
    // its saved user registers as one, and the offset comes from BTF.
    unsafe {
        let task = current_task_btf();
        let regs = bpf_task_pt_regs(task.cast_mut().cast()) as *const u8;
        load(regs, offset!(kernel.pt_regs_di))
    }
}

/// tracepoint `syscalls/sys_exit_listen`: a run now takes connections in.
#[tracepoint]
pub fn snsr_listen_out(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    let ret = syscall::ret(&ctx);
    if ret != 0 {
        return 0;
    }
    let Some((tgid, run, how)) = caller_run() else {
        return 0;
    };
    let mut r = Reader::new();
    let sk = sock_of(&mut r, first_arg() as u32);
    let mut data = SocketData {
        what: SOCKET_LISTEN,
        ..SocketData::default()
    };
    if describe(&mut r, sk, &mut data) {
        report(&data, tgid, run, how);
    }
    0
}

/// tracepoint `syscalls/sys_exit_accept4`: a connection came in.
#[tracepoint]
pub fn snsr_accept4_x(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    accept_exit(&ctx);
    0
}

/// tracepoint `syscalls/sys_exit_accept`.
#[tracepoint]
pub fn snsr_accept_out(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    accept_exit(&ctx);
    0
}

#[inline(always)]
fn accept_exit(ctx: &TracePointContext) {
    let ret = syscall::ret(ctx);
    if ret < 0 {
        return;
    }
    let Some((tgid, run, how)) = caller_run() else {
        return;
    };
    let mut r = Reader::new();
    let sk = sock_of(&mut r, ret as u32);
    let mut data = SocketData {
        what: SOCKET_ACCEPT,
        ..SocketData::default()
    };
    if describe(&mut r, sk, &mut data) {
        report(&data, tgid, run, how);
    }
}

/// An unconnected datagram of a process in run `run` to `dst` (already
/// decided): counted per process and destination, reported at the 1st, 2nd,
/// 4th, 8th, ... datagram with the count.
#[inline(always)]
pub fn sent_datagram(tgid: u32, run: u64, how: u32, dst: &ConnectData) {
    let key = SendKey {
        tgid,
        family: dst.family,
        port: dst.port,
        addr: dst.addr,
    };
    let count = match SEND_SEEN.get_ptr_mut(key) {
        // SAFETY: a map value of this type; a race between CPUs may skip a
        // report, never invent one.
        Some(n) => unsafe {
            *n = (*n).saturating_add(1);
            *n
        },
        None => {
            let _ = SEND_SEEN.insert(key, 1, 0);
            1
        }
    };
    if !count.is_power_of_two() {
        return;
    }
    let mut data = SocketData {
        what: SOCKET_SENDTO,
        family: dst.family,
        sock_type: dst.sock_type,
        protocol: dst.protocol,
        remote_port: dst.port,
        count,
        decision: dst.decision,
        ..SocketData::default()
    };
    data.remote = dst.addr;
    report(&data, tgid, run, how);
}

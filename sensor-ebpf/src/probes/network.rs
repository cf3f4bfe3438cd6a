//! Outgoing connections: cgroup `connect4`/`connect6` see the destination
//! and, inside the connect() syscall, leave it in the thread's slot;
//! `sys_exit_connect` reports it from there with the syscall's result.
//!
//! A connect that does not come through the connect() syscall (io_uring,
//! in-kernel users) is reported at the cgroup hook, without a result.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::bpf_ktime_get_boot_ns,
    },
    macros::{cgroup_sock_addr, tracepoint},
    programs::{SockAddrContext, TracePointContext},
};
use sensor_common::handover::kind_word;
use sensor_common::inflight::{ConnectInflight, FILLED_INET, FILLED_UNIX};
use sensor_common::{
    event::{ConnectData, EventHeader, EventKind, FixedEvent, HOW_MASK, VIA_CONNECT, VIA_SENDMSG},
    policy::{VERDICT_DENY, VERDICT_NONE},
};

use crate::{
    config::{active, is_own, offset},
    emit::{deny_budget, emit},
    kernel::{Reader, run_of},
    maps::{CONNECT_INFLIGHT, RUN_CONNECT_INFLIGHT, connect_slot, run_connect_slot},
    policy::check_net,
    syscall,
};

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;

/// Verdict of a cgroup sock_addr program: let the connect proceed.
const ALLOW: i32 = 1;
/// Verdict of a cgroup sock_addr program: fail the call with EPERM.
const REJECT: i32 = 0;
/// EPERM, what a rejected call returns.
const EPERM: i32 = 1;

/// cgroup_sock_addr `connect4` on the cgroup2 root.
#[cgroup_sock_addr(connect4)]
pub fn snsr_connect4(ctx: SockAddrContext) -> i32 {
    if !active() {
        return 1; // allow: the active load decides
    }
    // SAFETY: ctx fields are read with their native width.
    unsafe { on_connect(&ctx, AF_INET) }
}

/// cgroup_sock_addr `connect6` on the cgroup2 root.
#[cgroup_sock_addr(connect6)]
pub fn snsr_connect6(ctx: SockAddrContext) -> i32 {
    if !active() {
        return 1; // allow: the active load decides
    }
    // SAFETY: ctx fields are read with their native width.
    unsafe { on_connect(&ctx, AF_INET6) }
}

/// cgroup_sock_addr `sendmsg4`: a datagram to an address without connect().
/// Only decided (and reported when denied): one event per datagram would flood.
#[cgroup_sock_addr(sendmsg4)]
pub fn snsr_sendmsg4(ctx: SockAddrContext) -> i32 {
    if !active() {
        return 1; // allow: the active load decides
    }
    // SAFETY: ctx fields are read with their native width.
    unsafe { on_sendmsg(&ctx, AF_INET) }
}

/// cgroup_sock_addr `sendmsg6`.
#[cgroup_sock_addr(sendmsg6)]
pub fn snsr_sendmsg6(ctx: SockAddrContext) -> i32 {
    if !active() {
        return 1; // allow: the active load decides
    }
    // SAFETY: ctx fields are read with their native width.
    unsafe { on_sendmsg(&ctx, AF_INET6) }
}

/// The destination of a sock_addr hook.
#[inline(always)]
unsafe fn destination(ctx: &SockAddrContext, family: u16) -> ConnectData {
    let sa = ctx.sock_addr;
    let mut data = ConnectData {
        family,
        ..ConnectData::default()
    };
    // SAFETY: the kernel passes a valid bpf_sock_addr; loads are rewritten by the verifier.
    unsafe {
        data.sock_type = (*sa).type_ as u16;
        data.protocol = (*sa).protocol as u16;
        data.port = u16::from_be((*sa).user_port as u16);
        if family == AF_INET {
            let ip = (*sa).user_ip4.to_ne_bytes();
            data.addr[0] = ip[0];
            data.addr[1] = ip[1];
            data.addr[2] = ip[2];
            data.addr[3] = ip[3];
        } else {
            let words = [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ];
            let mut i = 0;
            while i < 4 {
                let b = words[i].to_ne_bytes();
                data.addr[i * 4] = b[0];
                data.addr[i * 4 + 1] = b[1];
                data.addr[i * 4 + 2] = b[2];
                data.addr[i * 4 + 3] = b[3];
                i += 1;
            }
        }
    }
    data
}

/// The run policy's decision on `data`'s destination, stored in it. Returns
/// the hook's verdict: [`REJECT`] when an enforce policy denies it.
#[inline(always)]
fn decide(run: u64, data: &mut ConnectData) -> i32 {
    let d = if data.family == AF_INET {
        check_net(run, true, &data.addr, data.port)
    } else if data.addr[..10] == [0; 10] && data.addr[10] == 0xff && data.addr[11] == 0xff {
        // An IPv4-mapped IPv6 destination is an IPv4 destination.
        let mut v4 = [0u8; 16];
        v4[..4].copy_from_slice(&data.addr[12..16]);
        check_net(run, true, &v4, data.port)
    } else {
        check_net(run, false, &data.addr, data.port)
    };
    if d.verdict == VERDICT_NONE {
        return ALLOW;
    }
    data.decision = d;
    if d.enforced != 0 {
        data.ret = -EPERM;
        data.has_result = 1;
        REJECT
    } else {
        ALLOW
    }
}

#[inline(always)]
unsafe fn on_connect(ctx: &SockAddrContext, family: u16) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    if is_own(tgid) {
        return ALLOW;
    }
    // SAFETY: see destination().
    let mut data = unsafe { destination(ctx, family) };
    let (run, how) = run_of(tgid, 0);
    let verdict = decide(run, &mut data);
    // Inside connect(): its exit reports it, with the result, from the
    // thread's slot (a run's own map: see `RUN_CONNECT_INFLIGHT`).
    if let Some(fd) = syscall::in_connect()
        && let Some(slot) = if run == 0 {
            connect_slot(pid_tgid)
        } else {
            run_connect_slot(pid_tgid)
        }
    {
        // SAFETY: map value owned by this thread's syscall.
        unsafe {
            (*slot).data = data;
            (*slot).fd = fd;
            (*slot).filled = FILLED_INET;
            (*slot).open = 1;
        }
        return verdict;
    }
    // Not inside connect() (io_uring, in-kernel users): report now, with a
    // result only when the policy refused it.
    if data.decision.verdict != VERDICT_DENY || deny_budget(run) {
        report_now(data, tgid, pid_tgid, run, how);
    }
    verdict
}

#[inline(always)]
unsafe fn on_sendmsg(ctx: &SockAddrContext, family: u16) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let (run, how) = run_of(tgid, 0);
    if run == 0 || is_own(tgid) {
        return ALLOW;
    }
    // SAFETY: see destination().
    let mut data = unsafe { destination(ctx, family) };
    data.via = VIA_SENDMSG;
    let verdict = decide(run, &mut data);
    if data.decision.verdict == VERDICT_DENY {
        if deny_budget(run) {
            report_now(data, tgid, pid_tgid, run, how);
        }
    } else {
        // Allowed (or no policy): the first to each destination, then at
        // 2, 4, 8, ... with the count.
        super::sockets::sent_datagram(tgid, run, how, &data);
    }
    verdict
}

#[inline(always)]
fn report_now(data: ConnectData, tgid: u32, pid_tgid: u64, run: u64, how: u32) {
    let uid_gid = bpf_get_current_uid_gid();
    let mut ev = FixedEvent {
        header: EventHeader {
            kind: kind_word(EventKind::NetConnect as u32),
            generation: offset!(generation),
            size: size_of::<FixedEvent<ConnectData>>() as u32,
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
    ev.header.comm = bpf_get_current_comm().unwrap_or_default();
    ev.header.run = run;
    ev.header.run_how = how & HOW_MASK;
    // SAFETY: ev lives on the stack for the call.
    unsafe {
        emit(
            (&raw const ev).cast(),
            size_of::<FixedEvent<ConnectData>>(),
            EventKind::NetConnect,
            0,
            run,
        )
    };
}

/// tracepoint `syscalls/sys_exit_connect`: send the connect with its result.
#[tracepoint]
pub fn snsr_conn_out(ctx: TracePointContext) -> u32 {
    if !active() {
        return 0; // the active load records
    }
    // SAFETY: the context is this tracepoint's record; connect_exit touches
    // only this thread's in-flight slot.
    unsafe { connect_exit(&ctx) };
    0
}

#[inline(always)]
unsafe fn connect_exit(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    // The thread's slot outside runs; a run's connect is in the runs' map
    // (looked up only when the first has no open slot), removed once read.
    match CONNECT_INFLIGHT.get_ptr_mut(pid_tgid) {
        // SAFETY: map value; only this thread uses its own slot.
        Some(slot) if unsafe { (*slot).open } != 0 => unsafe { report_slot(ctx, slot) },
        _ => {
            let slot = RUN_CONNECT_INFLIGHT.get_ptr_mut(pid_tgid)?;
            // SAFETY: as above.
            let sent = unsafe { report_slot(ctx, slot) };
            let _ = RUN_CONNECT_INFLIGHT.remove(pid_tgid);
            sent
        }
    }
}

/// Sends the connect left in `slot` with the syscall's result, and closes
/// the slot.
///
/// # Safety
/// `slot` is the current thread's own map value.
#[inline(always)]
unsafe fn report_slot(ctx: &TracePointContext, slot: *mut ConnectInflight) -> Option<()> {
    // SAFETY: the caller's.
    let (open, filled, fd) = unsafe { ((*slot).open, (*slot).filled, (*slot).fd) };
    // SAFETY: as above.
    unsafe { (*slot).open = 0 };
    if open == 0 || filled == 0 {
        // Not an IPv4/IPv6/Unix destination the hooks saw (AF_UNSPEC, a bad
        // address, a Unix connect outside runs), or the entry was missed
        // (the programs attached mid-call).
        return None;
    }
    let ret = syscall::ret(ctx);
    if filled == FILLED_UNIX {
        super::unix::connect_exit(slot, ret, fd);
        return Some(());
    }
    // SAFETY: as above.
    let data = unsafe { (*slot).data };
    let uid_gid = bpf_get_current_uid_gid();
    let mut ev = FixedEvent {
        header: EventHeader {
            kind: kind_word(EventKind::NetConnect as u32),
            generation: offset!(generation),
            size: size_of::<FixedEvent<ConnectData>>() as u32,
            // SAFETY: no preconditions.
            ktime_ns: unsafe { bpf_ktime_get_boot_ns() },
            uid: uid_gid as u32,
            gid: (uid_gid >> 32) as u32,
            ..EventHeader::default()
        },
        payload: data,
    };
    ev.payload.ret = ret as i32;
    ev.payload.has_result = 1;
    ev.payload.via = VIA_CONNECT;
    let mut r = Reader::new();
    r.fill_current(&mut ev.header);
    if ev.payload.decision.verdict == VERDICT_DENY && !deny_budget(ev.header.run) {
        return None;
    }
    // SAFETY: ev lives on the stack for the call.
    unsafe {
        emit(
            (&raw const ev).cast(),
            size_of::<FixedEvent<ConnectData>>(),
            EventKind::NetConnect,
            r.errors,
            ev.header.run,
        )
    };
    Some(())
}

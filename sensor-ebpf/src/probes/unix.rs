//! AF_UNIX connects of processes in agent runs: the way out of a run through
//! a spawner (systemd, tmux, docker, at) is a Unix socket.
//!
//! The cgroup `connect_unix`/`sendmsg_unix` hooks (6.7+) see every AF_UNIX
//! connect and addressed datagram. Their context is the kernel's
//! `bpf_sock_addr_kern`, whose `uaddr` is the kernel's own copy of the
//! caller's address: read from there, a thread of the caller cannot change
//! it between the check and the connect. The hook decides on the address
//! (`unix.allow`) and refuses with EPERM under enforce; the connect's exit
//! reports it with its result and checks the socket it really reached: a
//! path whose socket file is not the one the rule names (a symlink to
//! another socket, a path replaced in between) kills the caller before it
//! returns with the connection.

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid, generated::bpf_ktime_get_boot_ns,
    },
};
use sensor_common::handover::kind_word;
use sensor_common::inflight::{ConnectInflight, FILLED_UNIX};
use sensor_common::{
    event::{
        EventHeader, EventKind, FixedEvent, HOW_MASK, UNIX_KILLED_IDENTITY, UNIX_PATH_BYTES,
        UnixConnectData, VIA_CONNECT, VIA_SENDMSG,
    },
    policy::{
        Decision, ExecKey, MODE_ENFORCE, RULE_NO_MATCH, RULE_UNIX_IDENTITY, UnixKey, VERDICT_ALLOW,
        VERDICT_DENY,
    },
};

use crate::{
    config::{active, is_own, offset},
    emit::{count, deny_budget, wakeup_flags},
    kernel::{Reader, current_task, opaque, run_of},
    maps::{EVENTS, UNIX_IDS, UNIX_RULES, connect_slot, run_connect_slot},
    policy::{kill_current, policy_of},
};

/// Verdict of a cgroup sock_addr program: let the call proceed.
const ALLOW: i32 = 1;
/// Verdict of a cgroup sock_addr program: fail the call with EPERM.
const REJECT: i32 = 0;
/// EPERM, what a rejected call returns.
const EPERM: i32 = 1;
/// `offsetof(struct sockaddr_un, sun_path)`.
const SUN_PATH: u64 = 2;

/// cgroup_sock_addr `connect_unix` on the cgroup2 root.
#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/connect_unix")]
pub fn snsr_conn_unix(ctx: *mut bpf_sock_addr) -> i32 {
    if !active() {
        return 1; // allow: the active load decides
    }
    // SAFETY: the kernel passes its bpf_sock_addr_kern; read as documented above.
    unsafe { on_unix(ctx, VIA_CONNECT) }
}

/// cgroup_sock_addr `sendmsg_unix`: a datagram to a Unix address without
/// connect(). Decided, and reported when denied (one event per datagram
/// would flood: `/dev/log` alone gets one per log line).
#[unsafe(no_mangle)]
#[unsafe(link_section = "cgroup/sendmsg_unix")]
pub fn snsr_send_unix(ctx: *mut bpf_sock_addr) -> i32 {
    if !active() {
        return 1; // allow: the active load decides
    }
    // SAFETY: as above.
    unsafe { on_unix(ctx, VIA_SENDMSG) }
}

/// The address of the call, from the kernel's copy, into `out` (zeroed
/// first): returns its length as the kernel will use it. A path name ends at
/// its first NUL (what the kernel looks up); an abstract name (first byte
/// NUL) is every byte the caller gave. The rest of `out` stays zero, so it
/// can be a map key.
#[inline(always)]
unsafe fn address(r: &mut Reader, ctx: *mut bpf_sock_addr, out: &mut [u8; UNIX_PATH_BYTES]) -> u32 {
    let kern = ctx as u64;
    let uaddr: u64 = r.read(kern, offset!(kernel.sock_addr_uaddr));
    let uaddrlen: u32 = r.read(kern, offset!(kernel.sock_addr_uaddrlen));
    if uaddr == 0 || uaddrlen <= SUN_PATH as u32 {
        return 0;
    }
    // SAFETY: `out` is UNIX_PATH_BYTES long; see `sun_path`.
    unsafe { sun_path(r, uaddr + SUN_PATH, uaddrlen - SUN_PATH as u32, out) }
}

/// Copies a `sun_path` of `given` bytes at kernel address `src` into `out`
/// (already zero) the way the kernel reads it; returns its length.
///
/// # Safety
/// `out` must be the whole buffer (UNIX_PATH_BYTES).
#[inline(always)]
unsafe fn sun_path(r: &mut Reader, src: u64, given: u32, out: &mut [u8; UNIX_PATH_BYTES]) -> u32 {
    let first: u8 = r.read(src, 0);
    let given = opaque(given as usize) & 127;
    let given = if given > UNIX_PATH_BYTES {
        UNIX_PATH_BYTES
    } else {
        given
    };
    if first == 0 {
        // Abstract: every byte given.
        // SAFETY: given <= UNIX_PATH_BYTES.
        if given > 0 && unsafe { r.copy_kernel(out.as_mut_ptr(), given as u32, src) } {
            return given as u32;
        }
        return 0;
    }
    // A path: up to its NUL, within the bytes given (the kernel adds the
    // NUL after the bytes given only later, when it looks the path up).
    // Reading at most `given` bytes and a NUL leaves the rest of `out` zero.
    let size = opaque(given + 1) & 127;
    let size = if size > UNIX_PATH_BYTES {
        UNIX_PATH_BYTES
    } else {
        size
    };
    if size == 0 {
        return 0;
    }
    // SAFETY: at most `size` <= UNIX_PATH_BYTES bytes are written.
    let n = unsafe { r.copy_kernel_str(out.as_mut_ptr(), size as u32, src) };
    n as u32
}

/// The run policy's decision on the address in `key` (its `policy` is set
/// here to the policy's id) for run `run`.
#[inline(always)]
fn decide(run: u64, key: &mut UnixKey) -> Decision {
    let Some((_, slot)) = policy_of(run) else {
        return Decision::default();
    };
    key.policy = slot.id;
    // SAFETY: value copy out of the map.
    let rule = unsafe { UNIX_RULES.get(key).copied() };
    match rule {
        Some(rule) => Decision {
            policy: slot.id,
            rule,
            verdict: VERDICT_ALLOW,
            enforced: 0,
            _pad: 0,
        },
        None => Decision {
            policy: slot.id,
            rule: RULE_NO_MATCH,
            verdict: VERDICT_DENY,
            enforced: u16::from(slot.mode == MODE_ENFORCE),
            _pad: 0,
        },
    }
}

#[inline(always)]
unsafe fn on_unix(ctx: *mut bpf_sock_addr, via: u16) -> i32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let (run, how) = run_of(tgid, 0);
    if run == 0 || is_own(tgid) {
        return ALLOW;
    }
    let mut r = Reader::new();
    // Inside connect(), the syscall's exit reports it, with its result and
    // its peer, from the thread's slot in the runs' map (nothing pushes it
    // out while the connect waits: see `RUN_CONNECT_INFLIGHT`). Otherwise
    // (a datagram, io_uring, that map full) the thread's other slot is only
    // where the record is assembled (it is too big for the stack), and it is
    // reported here.
    let in_connect = if via == VIA_CONNECT {
        crate::syscall::in_connect()
    } else {
        None
    };
    let (slot, waiting) = match in_connect.and_then(|fd| Some((run_connect_slot(pid_tgid)?, fd))) {
        Some((slot, fd)) => (Some(slot), Some(fd)),
        None => (connect_slot(pid_tgid), None),
    };
    let Some(slot) = slot else {
        return ALLOW;
    };
    // SAFETY: map value owned by this thread.
    let unix = unsafe { &mut (*slot).unix };
    // SAFETY: a plain-integer struct; zero is a valid value.
    unsafe { core::ptr::write_bytes(unix as *mut UnixConnectData, 0, 1) };
    // SAFETY: see `address`.
    unix.key.len = unsafe { address(&mut r, ctx, &mut unix.key.path) };
    // SAFETY: the kernel's bpf_sock_addr; the field is rewritten by the verifier.
    unix.sock_type = unsafe { (*ctx).type_ } as u16;
    unix.via = via;
    unix.decision = decide(run, &mut unix.key);
    let verdict = if unix.decision.enforced != 0 {
        unix.ret = -EPERM;
        unix.has_result = 1;
        REJECT
    } else {
        ALLOW
    };
    if let Some(fd) = waiting {
        // SAFETY: as above.
        unsafe {
            (*slot).fd = fd;
            (*slot).filled = FILLED_UNIX;
            (*slot).open = 1;
        }
        return verdict;
    }
    // A datagram (reported when denied), or a connect from io_uring.
    let denied = unix.decision.verdict == VERDICT_DENY;
    if (via == VIA_CONNECT && !denied) || (denied && deny_budget(run)) {
        report(unix, tgid, pid_tgid, run, how, &mut r);
    }
    verdict
}

/// Sends a Unix connect record of the current task, assembled in place in
/// the ring buffer (the record is too big for the stack beside `unix`).
#[inline(always)]
fn report(unix: &UnixConnectData, tgid: u32, pid_tgid: u64, run: u64, how: u32, r: &mut Reader) {
    let Some(mut entry) = EVENTS.reserve::<FixedEvent<UnixConnectData>>(0) else {
        count(EventKind::NetUnix, false, 0, run);
        return;
    };
    let ev = entry.as_mut_ptr();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `ev` is a reserved ring buffer record of this type.
    unsafe {
        (*ev).header = EventHeader {
            kind: kind_word(EventKind::NetUnix as u32),
            generation: offset!(generation),
            size: size_of::<FixedEvent<UnixConnectData>>() as u32,
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
        (*ev).payload = *unix;
    }
    let errors = r.errors;
    entry.submit(wakeup_flags(EventKind::NetUnix));
    count(EventKind::NetUnix, true, errors, run);
}

/// The connect's exit, for a Unix destination the hook saw: its result,
/// the peer it reached (address and socket file, read from the kernel's
/// socket), and the identity check under an allowing policy. `ret` is the
/// syscall's return value, `fd` the socket's.
#[inline(always)]
pub fn connect_exit(slot: *mut ConnectInflight, ret: i64, fd: u32) {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let (run, how) = run_of(tgid, 0);
    let mut r = Reader::new();
    // SAFETY: map value owned by this thread's syscall.
    let unix = unsafe { &mut (*slot).unix };
    if unix.has_result == 0 {
        unix.ret = ret as i32;
        unix.has_result = 1;
    }
    if ret == 0 {
        peer_of(&mut r, fd, unix);
        if unix.decision.verdict == VERDICT_ALLOW && !same_socket(unix) {
            // The address was allowed, but the socket behind it is not the
            // one the rule names: under enforce, die before the connection
            // is used.
            if let Some((_, slot)) = policy_of(run) {
                unix.decision.rule = RULE_UNIX_IDENTITY;
                unix.decision.verdict = VERDICT_DENY;
                if slot.mode == MODE_ENFORCE {
                    unix.decision.enforced = 1;
                    unix.flags |= UNIX_KILLED_IDENTITY;
                    kill_current();
                }
            }
        }
    }
    if unix.decision.verdict == VERDICT_DENY && !deny_budget(run) {
        return;
    }
    report(unix, tgid, pid_tgid, run, how, &mut r);
}

/// Whether the peer `unix` reached is one its allowing rule names: the
/// socket file's identity for a path, the bound name for an abstract one.
#[inline(always)]
fn same_socket(unix: &UnixConnectData) -> bool {
    if unix.peer_ino != 0 {
        let key = ExecKey {
            policy: unix.decision.policy,
            dev: unix.peer_dev,
            ino: unix.peer_ino,
        };
        // SAFETY: lookup only.
        return unsafe { UNIX_IDS.get(key).is_some() };
    }
    // No socket file: an abstract (or unnamed) peer, allowed by the name it
    // is bound to, which must be the name that was allowed.
    if u32::from(unix.peer_len) != unix.key.len {
        return false;
    }
    let mut diff = 0u8;
    let mut i = 0;
    while i < UNIX_PATH_BYTES {
        diff |= unix.peer[i] ^ unix.key.path[i];
        i += 1;
    }
    diff == 0
}

/// Fills the peer of socket `fd` of the current task into `unix`: the
/// address it is bound to and its socket file's identity.
#[inline(always)]
fn peer_of(r: &mut Reader, fd: u32, unix: &mut UnixConnectData) {
    let task = current_task();
    let files: u64 = r.read(task, offset!(kernel.task_files));
    let fdt: u64 = r.read(files, offset!(kernel.files_fdt));
    let max_fds: u32 = r.read(fdt, offset!(kernel.fdtable_max_fds));
    if fd >= max_fds {
        return;
    }
    let fds: u64 = r.read(fdt, offset!(kernel.fdtable_fd));
    let file: u64 = r.read(fds + u64::from(fd) * 8, 0);
    let socket: u64 = r.read(file, offset!(kernel.file_private_data));
    let sk: u64 = r.read(socket, offset!(kernel.socket_sk));
    let peer: u64 = r.read(sk, offset!(kernel.unix_sock_peer));
    if peer == 0 {
        return;
    }
    let addr: u64 = r.read(peer, offset!(kernel.unix_sock_addr));
    if addr != 0 {
        let len: i32 = r.read(addr, offset!(kernel.unix_address_len));
        let name = addr + u64::from(offset!(kernel.unix_address_name));
        if len > SUN_PATH as i32 {
            // SAFETY: `peer` is the whole buffer, zero (the slot was zeroed).
            unix.peer_len = unsafe {
                sun_path(
                    r,
                    name + SUN_PATH,
                    (len - SUN_PATH as i32) as u32,
                    &mut unix.peer,
                )
            } as u16;
        }
    }
    let path = peer + u64::from(offset!(kernel.unix_sock_path));
    let dentry: u64 = r.read(path, offset!(kernel.path_dentry));
    let inode: u64 = r.read(dentry, offset!(kernel.dentry_d_inode));
    if inode != 0 {
        unix.peer_ino = r.read(inode, offset!(kernel.inode_i_ino));
        let sb: u64 = r.read(inode, offset!(kernel.inode_i_sb));
        unix.peer_dev = r.read(sb, offset!(kernel.sb_s_dev));
    }
}

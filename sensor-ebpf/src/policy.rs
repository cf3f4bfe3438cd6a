//! Policy decisions in the kernel: the executed file against the run's exec
//! rules, a destination against its network rules, a new process against
//! `max_processes`. The state is described in `sensor_common::policy`.

use aya_ebpf::{
    helpers::generated::{bpf_loop, bpf_send_signal},
    maps::lpm_trie::Key,
};
use sensor_common::{
    limits::POLICY_DIR_DEPTH,
    policy::{
        Decision, EXEC_DIR, EXEC_FILE, ExecKey, LOADER_POLICY_ID, MODE_ENFORCE, MODE_NONE,
        Net4Data, Net6Data, NetRule, PolicySlot, RULE_LOADER, RULE_MAX_PROCESSES, RULE_NO_MATCH,
        RunPolicy, VERDICT_ALLOW, VERDICT_DENY,
    },
};

use crate::{
    config::offset,
    kernel::Reader,
    maps::{EXEC_RULES, NET4_RULES, NET6_RULES, POLICIES, RUN_LIVE, RUN_POLICY},
};

/// SIGKILL.
const SIGKILL: u32 = 9;

/// The policy bound to run `run`: its binding and slot, if the slot is in use.
#[inline(always)]
pub fn policy_of(run: u64) -> Option<(RunPolicy, PolicySlot)> {
    if run == 0 {
        return None;
    }
    // SAFETY: value copies out of the maps.
    let binding = unsafe { *RUN_POLICY.get(run)? };
    let slot = *POLICIES.get(binding.slot)?;
    if slot.mode == MODE_NONE {
        return None;
    }
    Some((binding, slot))
}

#[inline(always)]
fn decision(slot: &PolicySlot, rule: Option<u32>, deny_rule: u32) -> Decision {
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
            rule: deny_rule,
            verdict: VERDICT_DENY,
            enforced: u16::from(slot.mode == MODE_ENFORCE),
            _pad: 0,
        },
    }
}

/// Identity (`sb->s_dev`, `i_ino`) of the inode at `inode`.
#[inline(always)]
fn identity(r: &mut Reader, inode: u64) -> (u32, u64) {
    let ino: u64 = r.read(inode, offset!(kernel.inode_i_ino));
    let sb: u64 = r.read(inode, offset!(kernel.inode_i_sb));
    let dev: u32 = r.read(sb, offset!(kernel.sb_s_dev));
    (dev, ino)
}

/// Decides on executing `file` (`struct file *` of the new image) in run
/// `run`; in enforce mode a denial kills the current task (SIGKILL is pending
/// before the new image's first instruction). `VERDICT_NONE` when no policy
/// applies (plain values throughout: see [`count_spawn`]).
#[inline(always)]
pub fn check_exec(r: &mut Reader, run: u64, file: u64) -> Decision {
    let Some((_, slot)) = policy_of(run) else {
        return Decision::default();
    };
    let inode: u64 = r.read(file, offset!(kernel.file_f_inode));
    let (dev, ino) = identity(r, inode);
    let key = |policy, dev, ino| ExecKey { policy, dev, ino };
    // SAFETY (all lookups): value copies out of the map.
    let exact = unsafe { EXEC_RULES.get(key(slot.id, dev, ino)).copied() };
    // A pinned file rewritten since it was hashed (same inode, new ctime)
    // is no longer what its rule names, until user space has hashed it again.
    let exact =
        exact.filter(|e| (e.ctime_sec == 0 && e.ctime_nsec == 0) || same_ctime(r, inode, e));
    let is_loader = unsafe { EXEC_RULES.get(key(LOADER_POLICY_ID, dev, ino)).is_some() };
    let mut rule = None;
    let mut deny_rule = RULE_NO_MATCH;
    if is_loader {
        // The loader runs whatever file it is given: only an exact rule allows it.
        match exact {
            Some(e) if e.kind == EXEC_FILE => rule = Some(e.rule),
            _ => deny_rule = RULE_LOADER,
        }
    } else if let Some(e) = exact {
        rule = Some(e.rule);
    } else {
        rule = dir_rule(r, slot.id, file);
    }
    let d = decision(&slot, rule, deny_rule);
    if d.enforced != 0 {
        // SAFETY: no preconditions; signals the current task's process.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    d
}

/// `I_CTIME_QUERIED` (include/linux/fs.h, 6.13+): multigrain timestamps
/// keep a flag in the top bit of `i_ctime_nsec`, not part of the time.
const CTIME_NSEC_MASK: u32 = 0x7fff_ffff;

/// Whether the inode at `inode` has the change time rule `e` was hashed at.
#[inline(always)]
fn same_ctime(r: &mut Reader, inode: u64, e: &sensor_common::policy::ExecRule) -> bool {
    let sec: i64 = r.read(inode, offset!(kernel.inode_ctime_sec));
    let nsec: u32 = r.read(inode, offset!(kernel.inode_ctime_nsec));
    sec == e.ctime_sec && nsec & CTIME_NSEC_MASK == e.ctime_nsec
}

/// The `mnt_id` of the `struct mount` around the `struct vfsmount` at `mnt`
/// (0 when unreadable).
#[inline(always)]
pub fn mount_id_of(r: &mut Reader, mnt: u64) -> u32 {
    if mnt == 0 {
        return 0;
    }
    let mount = mnt.wrapping_sub(u64::from(offset!(kernel.mount_mnt)));
    r.read(mount, offset!(kernel.mount_mnt_id))
}

/// State of the parent-directory walk, one step per `bpf_loop` iteration.
#[repr(C)]
struct DirWalk {
    id: u32,
    found: u32,
    rule: u32,
    /// The executed file's mount: a directory rule must have been resolved on it.
    mnt_id: u32,
    /// Root dentry of that mount: the walk stops there.
    mnt_root: u64,
    dentry: u64,
}

/// Walks the parent directories of `file` up to the root of the file's own
/// mount, and returns the rule of the first one that is a directory rule of
/// policy `id` resolved on that mount.
///
/// The walk never crosses into a parent mount. Whatever is mounted below an
/// allowed directory (a tmpfs, a bind mount of another directory or of a
/// single file, an overlay), in any mount namespace, is a mount of its own
/// whose root is not the allowed directory, so its files are not under it.
/// And since a mount namespace's copy of a mount has its own id, the rule
/// holds only in the mount namespace it was resolved in.
///
/// The walk runs under `bpf_loop`, so the verifier checks one step instead of
/// every unrolled iteration (the exec program is large already).
#[inline(always)]
fn dir_rule(r: &mut Reader, id: u32, file: u64) -> Option<u32> {
    let f_path = offset!(kernel.file_f_path);
    let mnt: u64 = r.read(file, f_path + offset!(kernel.path_mnt));
    let dentry: u64 = r.read(file, f_path + offset!(kernel.path_dentry));
    if mnt == 0 || dentry == 0 {
        return None;
    }
    let mnt_root: u64 = r.read(mnt, offset!(kernel.vfsmount_mnt_root));
    if mnt_root == 0 {
        return None;
    }
    let mount = mnt.wrapping_sub(u64::from(offset!(kernel.mount_mnt)));
    let mnt_id: u32 = r.read(mount, offset!(kernel.mount_mnt_id));
    let mut walk = DirWalk {
        id,
        found: 0,
        rule: 0,
        mnt_id,
        mnt_root,
        dentry,
    };
    // SAFETY: the callback gets `walk` back as its context, for this call only.
    unsafe {
        bpf_loop(
            POLICY_DIR_DEPTH,
            dir_step as *mut core::ffi::c_void,
            (&raw mut walk).cast(),
            0,
        )
    };
    (walk.found != 0).then_some(walk.rule)
}

/// One step up: returns 1 to stop (found, at the mount's root, or at the
/// file system's root), 0 to go on.
extern "C" fn dir_step(_index: u32, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the DirWalk dir_rule passed to bpf_loop.
    let walk = unsafe { &mut *ctx.cast::<DirWalk>() };
    if walk.dentry == walk.mnt_root {
        // The top of the file's mount. What lies above it (the mountpoint
        // and its parents) belongs to another mount: never looked at.
        return 1;
    }
    let mut r = Reader::new();
    let parent: u64 = r.read(walk.dentry, offset!(kernel.dentry_d_parent));
    if parent == walk.dentry || parent == 0 {
        return 1;
    }
    walk.dentry = parent;
    let inode: u64 = r.read(parent, offset!(kernel.dentry_d_inode));
    let (dev, ino) = identity(&mut r, inode);
    let key = ExecKey {
        policy: walk.id,
        dev,
        ino,
    };
    // SAFETY: value copy out of the map.
    match unsafe { EXEC_RULES.get(key) } {
        Some(e) if e.kind == EXEC_DIR && e.mnt_id == walk.mnt_id => {
            walk.found = 1;
            walk.rule = e.rule;
            1
        }
        _ => 0,
    }
}

/// The rule of `entry` allowing `port`, if any.
#[inline(always)]
fn port_rule(entry: &NetRule, port: u16) -> Option<u32> {
    let mut i = 0;
    while i < sensor_common::policy::NET_PORT_RANGES {
        if (i as u32) < entry.count && entry.lo[i] <= port && port <= entry.hi[i] {
            return Some(entry.rule[i]);
        }
        i += 1;
    }
    None
}

/// Decides on a destination (`addr`: 4 bytes for IPv4 or 16 for IPv6, network
/// order) for run `run`. `VERDICT_NONE` when no policy applies.
#[inline(always)]
pub fn check_net(run: u64, v4: bool, addr: &[u8; 16], port: u16) -> Decision {
    let Some((_, slot)) = policy_of(run) else {
        return Decision::default();
    };
    let id = slot.id.to_be_bytes();
    let entry = if v4 {
        let mut data: Net4Data = [0; 8];
        data[..4].copy_from_slice(&id);
        data[4..].copy_from_slice(&addr[..4]);
        NET4_RULES.get(Key::new(64, data)).copied()
    } else {
        let mut data: Net6Data = [0; 20];
        data[..4].copy_from_slice(&id);
        data[4..].copy_from_slice(addr);
        NET6_RULES.get(Key::new(160, data)).copied()
    };
    let rule = entry.and_then(|e| port_rule(&e, port));
    decision(&slot, rule, RULE_NO_MATCH)
}

/// Counts a new process of run `run` against `max_processes`. Returns the
/// decision (`VERDICT_NONE` without a limit) and whether the process was
/// counted. (A plain value, not an `Option`: a `None` leaves the payload
/// undefined, and LLVM may then copy a register the verifier sees unset.)
#[inline(always)]
pub fn count_spawn(run: u64) -> (Decision, bool) {
    let Some((binding, slot)) = policy_of(run) else {
        return (Decision::default(), false);
    };
    if slot.max_processes == 0 {
        return (Decision::default(), false);
    }
    let counter = binding.count_run;
    if RUN_LIVE.get_ptr_mut(counter).is_none() {
        // BPF_NOEXIST: a racing insert by another CPU wins, and is used below.
        let _ = RUN_LIVE.insert(counter, 0, 1);
    }
    let Some(live) = RUN_LIVE.get_ptr_mut(counter) else {
        return (Decision::default(), false);
    };
    // The run's first process is not counted here (user space placed it), so
    // the tree holds it plus `live` children.
    // Add first, then look: a fork racing on another CPU at the limit may be
    // refused too, but the tree never exceeds it.
    atomic_add(live, 1);
    // SAFETY: a map value of this type.
    let now = unsafe { core::ptr::read_volatile(live) };
    if sensor_common::policy::fork_within(now, slot.max_processes) {
        return (decision(&slot, Some(RULE_MAX_PROCESSES), 0), true);
    }
    atomic_add(live, u64::MAX);
    (decision(&slot, None, RULE_MAX_PROCESSES), false)
}

/// A counted process of run `run` exited.
#[inline(always)]
pub fn count_exit(run: u64) {
    let Some((binding, _)) = policy_of(run) else {
        return;
    };
    if let Some(live) = RUN_LIVE.get_ptr_mut(binding.count_run) {
        // Never below zero (a counter reset by user space while processes live).
        // SAFETY: a map value of this type.
        if unsafe { core::ptr::read_volatile(live) } > 0 {
            atomic_add(live, u64::MAX);
        }
    }
}

/// Kills the current task (a child created over `max_processes`).
#[inline(always)]
pub fn kill_current() {
    // SAFETY: no preconditions.
    unsafe { bpf_send_signal(SIGKILL) };
}

/// Atomically adds `v` (wrapping: `u64::MAX` subtracts one) to the map value
/// at `p`, so concurrent forks on other CPUs stay exact. The BPF target has
/// no `AtomicU64`, so the intrinsic is used directly; its result is unused,
/// which keeps it a plain `lock xadd` (BPF v1, no fetch needed).
#[inline(always)]
fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: `p` is a map value pointer the verifier checked, aligned for u64.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
    }
}

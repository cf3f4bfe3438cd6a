//! Kernel-side policy state: what the enforcement programs look up.
//!
//! ```text
//! PROC_RUNS[tgid].run ──► RUN_POLICY[run].slot ──► POLICIES[slot] = {id, mode, max_processes}
//!                                                         │
//!            EXEC_RULES[{id, dev, ino}]  (files, globs, directories)
//!            NET4/NET6 LPM[{id, addr}/32+len] = port ranges
//! ```
//!
//! A policy's rules are keyed by its `id`, fresh at every load. A reload
//! writes the new rules under a new id, then switches the slot to it in one
//! array update, then deletes the old rules: every check sees one whole
//! policy, the old or the new, never a half-written one.

use bytemuck::{Pod, Zeroable};

/// `PolicySlot::mode`: the slot is unused.
pub const MODE_NONE: u32 = 0;
/// `PolicySlot::mode`: decide and report, never block.
pub const MODE_AUDIT: u32 = 1;
/// `PolicySlot::mode`: decide, report and block.
pub const MODE_ENFORCE: u32 = 2;

/// Policy id reserved for the identities of the dynamic loaders (`ld.so`):
/// running one directly executes any file, so it is allowed only by an exact
/// file rule, never by a directory or glob rule.
pub const LOADER_POLICY_ID: u32 = 0;

/// One policy slot (an array entry, indexed by the slot a run points to).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicySlot {
    /// Key of the policy's rules in the rule maps (never [`LOADER_POLICY_ID`] for a policy).
    pub id: u32,
    /// `MODE_*`.
    pub mode: u32,
    /// Live processes allowed in a run's tree (0: no limit).
    pub max_processes: u32,
    /// `SLOT_*` flags.
    pub flags: u32,
}

/// `PolicySlot::flags`: the policy allows raw, ICMP and packet sockets.
pub const SLOT_RAW_SOCKETS: u32 = 1;
const _: () = assert!(size_of::<PolicySlot>() == 16);

/// A run's binding to a policy slot (key: run handle).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunPolicy {
    /// Index into the policy slots.
    pub slot: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// The run whose live-process counter `max_processes` applies to: the
    /// topmost run of the tree bound to this policy (itself for a root run).
    pub count_run: u64,
}
const _: () = assert!(size_of::<RunPolicy>() == 16);

/// Key of an exec rule: a file or directory identity under a policy id.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ExecKey {
    /// Policy id ([`LOADER_POLICY_ID`] for the loader set).
    pub policy: u32,
    /// Kernel `dev_t` of the file's filesystem (`sb->s_dev`).
    pub dev: u32,
    /// Inode number.
    pub ino: u64,
}
const _: () = assert!(size_of::<ExecKey>() == 16);

/// `ExecRule::kind`: an exact file.
pub const EXEC_FILE: u32 = 1;
/// `ExecRule::kind`: a file a glob matched.
pub const EXEC_GLOB: u32 = 2;
/// `ExecRule::kind`: a directory (everything below it, on its mount).
pub const EXEC_DIR: u32 = 3;

/// Value of an exec rule.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExecRule {
    /// Index of the rule in the policy (see [`Decision::rule`]).
    pub rule: u32,
    /// `EXEC_*`.
    pub kind: u32,
    /// For a file pinned by its sha256: the inode's change time when it was
    /// hashed (seconds, nanoseconds). A file rewritten in place keeps its
    /// inode but not its ctime, so the kernel denies it from its first exec
    /// until user space has hashed it again. 0 (both): not checked.
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    /// For a directory ([`EXEC_DIR`]): the id of the mount the directory was
    /// resolved on (`struct mount` `mnt_id`, as `statx` `STATX_MNT_ID` gives
    /// it). The rule allows a file only when the file is on that mount, below
    /// the directory: the kernel's walk up from the file never leaves the
    /// file's mount, and a mount namespace's copy of a mount has its own id.
    /// Zero for files.
    pub mnt_id: u32,
}
// 24 bytes: a multiple of 8 (the i64), so no padding; `mnt_id` fills the tail.
const _: () = assert!(size_of::<ExecRule>() == 24);
const _: () = assert!(core::mem::offset_of!(ExecRule, mnt_id) == 20);

/// Port ranges one network prefix entry holds.
pub const NET_PORT_RANGES: usize = 8;

/// Value of a network prefix entry: the port ranges allowed to it, each with
/// the rule that allows it. User space folds the ranges of every shorter
/// covering prefix in, so the longest match alone decides.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    /// Ranges in use.
    pub count: u32,
    /// Rule index per range.
    pub rule: [u32; NET_PORT_RANGES],
    /// Lowest port per range (host order).
    pub lo: [u16; NET_PORT_RANGES],
    /// Highest port per range (host order).
    pub hi: [u16; NET_PORT_RANGES],
}
const _: () = assert!(size_of::<NetRule>() == 4 + 8 * 4 + 2 * 8 * 2);

/// Key data of the IPv4 prefix trie: policy id (big-endian) then address.
pub type Net4Data = [u8; 8];
/// Key data of the IPv6 prefix trie: policy id (big-endian) then address.
pub type Net6Data = [u8; 20];

/// Key of a `unix.allow` rule by address: the policy id and the address
/// bytes exactly as a caller passes them (`sun_path`, zero-padded; an
/// abstract name starts with a NUL byte), with its length.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Pod, Zeroable)]
pub struct UnixKey {
    pub policy: u32,
    /// Bytes of `path` that are the address.
    pub len: u32,
    pub path: [u8; crate::event::UNIX_PATH_BYTES],
}
const _: () = assert!(size_of::<UnixKey>() == 8 + crate::event::UNIX_PATH_BYTES);

/// `Decision::rule`: the socket a Unix connect reached is not the one its
/// allowed path names (a symlink or other alias, or the path changed).
pub const RULE_UNIX_IDENTITY: u32 = u32::MAX - 3;

/// `Decision::rule`: the sensor's own control socket, which every policy
/// allows (a run must be able to ask the sensor who it is, or launch a
/// sub-run).
pub const RULE_SENSOR_SOCKET: u32 = u32::MAX - 4;

/// `Decision::rule`: a process of the run reached into a process outside
/// it (`process.tamper`), or into the sensor (`sensor.tamper`).
pub const RULE_TAMPER: u32 = u32::MAX - 5;

/// `Decision::rule`: a raw, ICMP or packet socket (the policy does not
/// allow them: `raw_sockets`).
pub const RULE_RAW_SOCKET: u32 = u32::MAX - 6;

/// `Decision::verdict`: no policy applies.
pub const VERDICT_NONE: u16 = 0;
/// `Decision::verdict`: allowed.
pub const VERDICT_ALLOW: u16 = 1;
/// `Decision::verdict`: denied.
pub const VERDICT_DENY: u16 = 2;

/// `Decision::rule`: no rule of the list matched.
pub const RULE_NO_MATCH: u32 = u32::MAX;
/// `Decision::rule`: the dynamic loader run directly, without an exact rule for it.
pub const RULE_LOADER: u32 = u32::MAX - 1;
/// `Decision::rule`: the run's tree is at `max_processes`.
pub const RULE_MAX_PROCESSES: u32 = u32::MAX - 2;

/// The `max_processes` decision on a new process of a run's tree: with
/// `children` processes counted once it is (the tree's first process, placed
/// by user space, is not counted: the tree holds it plus `children`), the
/// new one may live when the tree stays within `max_processes`. The kernel
/// decides with it on every fork (`count_spawn`), `sensor policy test` when
/// it replays stored forks.
#[inline(always)]
#[must_use]
pub fn fork_within(children: u64, max_processes: u32) -> bool {
    children < u64::from(max_processes)
}

/// What the kernel decided about an action, carried in its event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Decision {
    /// Policy id that decided (0 with `VERDICT_NONE`).
    pub policy: u32,
    /// Rule index, or one of the `RULE_*` values.
    pub rule: u32,
    /// `VERDICT_*`.
    pub verdict: u16,
    /// 1 when the kernel blocked the action (enforce mode).
    pub enforced: u16,
    /// Reserved, zero.
    pub _pad: u32,
}
const _: () = assert!(size_of::<Decision>() == 16);

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all): repr(C), integers only, no padding (sizes checked above).
    unsafe impl aya::Pod for super::PolicySlot {}
    unsafe impl aya::Pod for super::RunPolicy {}
    unsafe impl aya::Pod for super::ExecKey {}
    unsafe impl aya::Pod for super::ExecRule {}
    unsafe impl aya::Pod for super::NetRule {}
    unsafe impl aya::Pod for super::UnixKey {}
}

//! Every size and cap the kernel side works with, in one place.
//!
//! The masks must stay powers of two minus one: the verifier accepts a
//! variable offset only when it can prove its bound, and `off & MASK` is how
//! the programs prove it.

/// Ring buffer carrying events to user space (bytes, power of two, page multiple).
pub const EVENTS_RING_BYTES: u32 = 16 * 1024 * 1024;

/// Unread bytes in the ring buffer above which the kernel wakes the reader.
///
/// Below it records are written without a wakeup (a wakeup is an irq_work
/// and, in a VM, an IPI costing ~10 µs per record); the reader drains on a
/// short timer instead (see `sensor::pipeline`). Above it the reader is
/// behind and is woken at once.
pub const EVENTS_WAKEUP_BYTES: u64 = 1024 * 1024;

/// Longest path captured (exe, cwd, requested filename), bytes, without NUL.
pub const PATH_MAX_CAPTURE: usize = 4095;
/// Mask proving a path length is `<= PATH_MAX_CAPTURE`.
pub const PATH_MASK: usize = 4095;
/// Path components walked from a dentry up to the root before giving up.
pub const PATH_MAX_COMPONENTS: u32 = 64;
/// Longest single path component (NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Size of the per-CPU buffer a path is assembled in (right-aligned in the first half).
pub const PATH_SCRATCH_BYTES: usize = 8192;

/// argv bytes captured per exec (NULs included). Longer argv areas are cut and flagged.
pub const ARGV_MAX_CAPTURE: usize = 8191;
/// Mask proving an argv length is `<= ARGV_MAX_CAPTURE`.
pub const ARGV_MASK: usize = 8191;
/// Arguments read one by one from the caller's argv array on a failed exec.
pub const FAILED_EXEC_MAX_ARGS: u32 = 32;

/// Variable-length data area of one event: exe, cwd, filename, argv back to back.
/// Sized so that every masked write (cursor <= 32767, length <= 8191) stays inside;
/// the real cursor never exceeds 3 * 4095 + 8191, so the mask never wraps.
pub const EVENT_DATA_BYTES: usize = 40 * 1024;
/// Mask for the write cursor into the data area.
pub const EVENT_DATA_CURSOR_MASK: usize = 32767;

/// Threads with a connect() slot (see the eBPF `CONNECT_INFLIGHT` map).
pub const INFLIGHT_ENTRIES: u32 = 16 * 1024;

/// Threads of processes in runs inside connect() at once (see the eBPF
/// `RUN_CONNECT_INFLIGHT` map). Past it a connect of a run is reported at
/// its cgroup hook, without its result.
pub const RUN_INFLIGHT_ENTRIES: u32 = 4 * 1024;

/// Processes inside agent runs the kernel can track at once. An insert into a
/// full map fails and is counted (`Stats::inherit_failed`), never silent.
pub const MAX_TRACKED_PROCESSES: u32 = 256 * 1024;

/// Policy slots (distinct policies loaded at once).
pub const MAX_POLICIES: u32 = 256;
/// Runs bound to a policy at once.
pub const MAX_POLICY_RUNS: u32 = 64 * 1024;
/// File and directory identities across all loaded policies (two
/// generations of each live during a reload).
pub const MAX_EXEC_RULES: u32 = 128 * 1024;
/// Network prefixes across all loaded policies, per address family.
pub const MAX_NET_RULES: u32 = 64 * 1024;
/// Parent directories walked from an executed file, up to the root of its
/// mount at most, to find a directory rule.
pub const POLICY_DIR_DEPTH: u32 = 32;

/// Runs with per-run counters (losses, suppressed denials) at once; an LRU
/// map, so the oldest run's counters make room (after user space read them).
pub const MAX_RUN_STATS: u32 = 16 * 1024;
/// Denial records (denied connect or sendmsg) a run may send per second;
/// past it they are counted in [`crate::stats::RunStats`] instead. A flood of
/// denied `sendto()`s cannot then fill the ring and hide everything else.
pub const DENIALS_PER_RUN_PER_SEC: u64 = 100;

/// `unix.allow` addresses and socket identities across all loaded policies.
pub const MAX_UNIX_RULES: u32 = 16 * 1024;

/// Runs the kernel knows the parent of (the tamper checks).
pub const MAX_RUN_TREE: u32 = 64 * 1024;
/// Files and directories of the sensor the kernel watches for writes.
pub const MAX_SENSOR_FILES: u32 = 64;
/// Parent directories walked from a file opened for writing, to find one of
/// the sensor's directories.
pub const SENSOR_DIR_DEPTH: u32 = 16;

/// Process and destination pairs whose unconnected datagrams are counted
/// (LRU: the oldest pair is forgotten, and reported again if it comes back).
pub const MAX_SEND_SEEN: u32 = 16 * 1024;

/// Bytes of the daemon version in the pin dir's owner record
/// ([`crate::owner::Owner`]).
pub const OWNER_VERSION_BYTES: usize = 32;
/// Bytes of the control socket path in the owner record: `sun_path` (108),
/// rounded up to a multiple of 8.
pub const OWNER_SOCKET_BYTES: usize = 112;

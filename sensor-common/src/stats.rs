//! Kernel-side counters, one per-CPU array entry summed by user space.

use crate::event::EventKind;

/// Number of kernel event kinds with their own counter slot.
pub const KIND_SLOTS: usize = 8;

/// Per-CPU counters of what the kernel programs produced and failed to deliver.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Events written to the ring buffer, by [`EventKind::slot`].
    pub emitted: [u64; KIND_SLOTS],
    /// Events that did not fit in the ring buffer (lost), by [`EventKind::slot`].
    pub lost: [u64; KIND_SLOTS],
    /// Kernel reads that failed while building an event (the event is still sent, with what was read).
    pub read_errors: u64,
    /// Children of processes in a run that could not be entered in the
    /// process → run map (map full): they are reported, but outside the run.
    pub inherit_failed: u64,
    /// bpf(2) calls by processes other than the daemon with a command that
    /// can change a map (every one but [`bpf_cmd_reads_only`]'s): nothing
    /// else writes a hash or array map, so the daemon compares its policy
    /// maps in full after one, and otherwise only now and then.
    pub foreign_bpf: u64,
}

const _: () = assert!(size_of::<Stats>() == 8 * (2 * KIND_SLOTS + 3));

/// Whether bpf(2) command `cmd` leaves every existing map as it is: the
/// queries, reads, map creation (a new map) and pinning. Every other
/// command, and any the kernel may add, can change a map: it writes one
/// (`BPF_MAP_UPDATE_ELEM`, the batches, `BPF_MAP_FREEZE`), or loads, runs,
/// attaches or iterates a program that may (`BPF_PROG_LOAD`,
/// `BPF_PROG_TEST_RUN`, `BPF_LINK_CREATE`, `BPF_ITER_CREATE`, ...).
#[inline(always)]
#[must_use]
pub const fn bpf_cmd_reads_only(cmd: u32) -> bool {
    matches!(
        cmd,
        0   // BPF_MAP_CREATE
        | 1 // BPF_MAP_LOOKUP_ELEM
        | 4 // BPF_MAP_GET_NEXT_KEY
        | 6 // BPF_OBJ_PIN
        | 7 // BPF_OBJ_GET
        | 11
            ..=16 // BPF_{PROG,MAP}_GET_NEXT_ID, _GET_FD_BY_ID, BPF_OBJ_GET_INFO_BY_FD, BPF_PROG_QUERY
        | 19 // BPF_BTF_GET_FD_BY_ID
        | 20 // BPF_TASK_FD_QUERY
        | 23 // BPF_BTF_GET_NEXT_ID
        | 24 // BPF_MAP_LOOKUP_BATCH
        | 30 // BPF_LINK_GET_FD_BY_ID
        | 31 // BPF_LINK_GET_NEXT_ID
        | 32 // BPF_ENABLE_STATS
    )
}

impl Stats {
    /// Adds `other` into `self` (used to sum the per-CPU values).
    pub fn accumulate(&mut self, other: &Self) {
        for i in 0..KIND_SLOTS {
            self.emitted[i] = self.emitted[i].wrapping_add(other.emitted[i]);
            self.lost[i] = self.lost[i].wrapping_add(other.lost[i]);
        }
        self.read_errors = self.read_errors.wrapping_add(other.read_errors);
        self.inherit_failed = self.inherit_failed.wrapping_add(other.inherit_failed);
        self.foreign_bpf = self.foreign_bpf.wrapping_add(other.foreign_bpf);
    }

    /// Total of the lost counters.
    #[must_use]
    pub fn lost_total(&self) -> u64 {
        self.lost.iter().fold(0, |a, b| a.wrapping_add(*b))
    }
}

#[cfg(feature = "user")]
// SAFETY: plain integers, repr(C), no padding (size checked above).
unsafe impl aya::Pod for Stats {}

/// What the kernel counts per run (value of the `RUN_STATS` map, key: run
/// handle): records of the run it could not deliver, and denial records it
/// held back under the per-run rate limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunStats {
    /// Records of the run lost because the ring buffer was full.
    pub lost: u64,
    /// Denial records not sent (over `DENIALS_PER_RUN_PER_SEC`).
    pub denials_suppressed: u64,
    /// Start of the current rate-limit window, `CLOCK_BOOTTIME` ns.
    pub window_start_ns: u64,
    /// Denial records sent in the current window.
    pub window_sent: u64,
}
const _: () = assert!(size_of::<RunStats>() == 32);

#[cfg(feature = "user")]
// SAFETY: plain integers, repr(C), no padding (size checked above).
unsafe impl aya::Pod for RunStats {}

/// The kinds that have a counter slot, in slot order.
pub const SLOT_KINDS: [EventKind; 8] = [
    EventKind::ProcessSpawn,
    EventKind::ProcessExec,
    EventKind::ProcessExecFailed,
    EventKind::ProcessExit,
    EventKind::NetConnect,
    EventKind::NetUnix,
    EventKind::Tamper,
    EventKind::NetSocket,
];

#[cfg(test)]
mod tests {
    use super::bpf_cmd_reads_only;

    #[test]
    fn only_reads_and_queries_are_left_uncounted() {
        // BPF_MAP_CREATE, _LOOKUP_ELEM, _GET_NEXT_KEY, OBJ_PIN, OBJ_GET, the
        // GET_NEXT_ID / GET_FD_BY_ID calls, OBJ_GET_INFO_BY_FD, PROG_QUERY,
        // BTF_GET_FD_BY_ID, TASK_FD_QUERY, BTF_GET_NEXT_ID, MAP_LOOKUP_BATCH,
        // LINK_GET_FD_BY_ID, LINK_GET_NEXT_ID, ENABLE_STATS.
        let reads = [
            0, 1, 4, 6, 7, 11, 12, 13, 14, 15, 16, 19, 20, 23, 24, 30, 31, 32,
        ];
        for cmd in 0..64 {
            assert_eq!(
                bpf_cmd_reads_only(cmd),
                reads.contains(&cmd),
                "command {cmd}"
            );
        }
        // Writes, program loads and runs, attaches, iterators, and what the
        // kernel may add: counted.
        for cmd in [2, 3, 5, 8, 10, 17, 22, 26, 28, 33, 35, 36, u32::MAX] {
            assert!(!bpf_cmd_reads_only(cmd), "command {cmd}");
        }
    }
}

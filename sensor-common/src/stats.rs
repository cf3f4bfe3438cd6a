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
}

const _: () = assert!(size_of::<Stats>() == 8 * (2 * KIND_SLOTS + 2));

impl Stats {
    /// Adds `other` into `self` (used to sum the per-CPU values).
    pub fn accumulate(&mut self, other: &Self) {
        for i in 0..KIND_SLOTS {
            self.emitted[i] = self.emitted[i].wrapping_add(other.emitted[i]);
            self.lost[i] = self.lost[i].wrapping_add(other.lost[i]);
        }
        self.read_errors = self.read_errors.wrapping_add(other.read_errors);
        self.inherit_failed = self.inherit_failed.wrapping_add(other.inherit_failed);
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

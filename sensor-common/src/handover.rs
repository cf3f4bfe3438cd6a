//! Recording that outlives the daemon, and the hand-over between daemons.
//!
//! The programs, their links and every map they use (the ring buffer
//! included) are pinned, so the kernel keeps recording, and enforcing,
//! while no daemon runs: after a crash, a SIGKILL, a stop or during an
//! upgrade. The next daemon reads what was recorded meanwhile from the
//! same ring, before anything new.
//!
//! Two loads of the programs are attached at once for a moment when a
//! daemon takes over (the new one attaches before the old one lets go, so
//! that nothing is ever unwatched). Each load has a *generation*, given in
//! its read-only config; a program acts only while the one-entry
//! [`crate::maps::ACTIVE`] map holds its generation, and the new daemon
//! switches that entry from the old generation to its own in one write. So
//! each event is recorded (and each decision taken) by exactly one of them,
//! in the one ring, in order. Every record carries its generation: a
//! record of another generation was recorded while this daemon was not
//! reading, and is reported as recovered.
//!
//! The reader's own bookkeeping, which the next reader needs to continue
//! without counting anything twice, is the [`ReaderMark`], also pinned.

use crate::stats::KIND_SLOTS;

/// Wire version of the records in the ring buffer, in the top 16 bits of
/// [`crate::event::EventHeader::kind`]. A change to any record's layout
/// must change it: a daemon skips (and counts, and reports) records of a
/// version it cannot read instead of misreading them. Version 0 is every
/// build before the ring was pinned.
pub const WIRE_VERSION: u32 = 1;

/// Bits of the header's `kind` word that hold the kind; the rest is
/// [`WIRE_VERSION`].
pub const KIND_MASK: u32 = 0xffff;

/// The header's `kind` word for `kind` in this build's wire version.
#[must_use]
pub const fn kind_word(kind: u32) -> u32 {
    (kind & KIND_MASK) | (WIRE_VERSION << 16)
}

/// Splits a header's `kind` word into (wire version, kind).
#[must_use]
pub const fn split_kind_word(word: u32) -> (u32, u32) {
    (word >> 16, word & KIND_MASK)
}

/// The generation after `current` (never 0, which no load has).
#[must_use]
pub const fn next_generation(current: u32) -> u32 {
    match current.wrapping_add(1) {
        0 => 1,
        n => n,
    }
}

/// [`ReaderMark::state`]: a daemon is reading the ring.
pub const MARK_RUNNING: u32 = 1;
/// [`ReaderMark::state`]: the daemon stopped (SIGTERM); the programs
/// stayed attached.
pub const MARK_STOPPED: u32 = 2;
/// [`ReaderMark::state`]: the daemon handed over to a new one.
pub const MARK_HANDED_OVER: u32 = 3;
/// [`ReaderMark::state`]: the daemon stopped and detached the programs
/// (`--detach-on-exit`): nothing was recorded after it.
pub const MARK_DETACHED: u32 = 4;

/// What the last reader of the ring had done, written by the daemon every
/// second and when it stops (value of the one-entry
/// [`crate::maps::MARK`] map; no program reads it). With it the next
/// daemon knows when the gap began and which kernel losses were already
/// reported. A SIGKILLed daemon's mark is its last heartbeat, at most a
/// second old, and says `MARK_RUNNING`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReaderMark {
    /// `MARK_*`; 0: no daemon ever wrote a mark in this pin dir.
    pub state: u32,
    /// Generation of the programs that daemon had loaded.
    pub generation: u32,
    /// pid of that daemon.
    pub pid: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// When the mark was written: Unix time, nanoseconds.
    pub unix_ns: u64,
    /// When the mark was written: `CLOCK_BOOTTIME` ns (the records' clock).
    pub boot_ns: u64,
    /// Kernel loss counters ([`crate::stats::Stats::lost`], summed over
    /// CPUs) already reported by that daemon.
    pub lost_seen: [u64; KIND_SLOTS],
    /// The next event `seq` that daemon would have used.
    pub next_seq: u64,
}
const _: () = assert!(size_of::<ReaderMark>() == 32 + 8 * KIND_SLOTS + 8);

#[cfg(feature = "user")]
// SAFETY: plain integers, repr(C), no padding (size checked above).
unsafe impl aya::Pod for ReaderMark {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_words_round_trip_and_carry_the_version() {
        let w = kind_word(80);
        assert_eq!(split_kind_word(w), (WIRE_VERSION, 80));
        // A record of a build before the version existed reads as version 0.
        assert_eq!(split_kind_word(2), (0, 2));
    }

    #[test]
    fn generations_skip_zero() {
        assert_eq!(next_generation(0), 1);
        assert_eq!(next_generation(7), 8);
        assert_eq!(next_generation(u32::MAX), 1);
    }
}

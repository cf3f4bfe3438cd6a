//! The owner record of a pin directory: which daemon holds the pins.
//!
//! bpffs holds only pins (maps, programs, links) and directories, no regular
//! files, and a file kept elsewhere (the state dir) would not travel with the
//! pin dir: a second daemon or an operator pointing at the same pin dir with
//! another state dir would never see it. So the record is a pinned map of its
//! own, `<pin-dir>/SNSR_OWNER`, a one-entry array holding an [`Owner`]. The
//! daemon writes it at start-up, rewrites it when someone else changed it, and
//! `sensor unload` reads it to refuse removing the pins of a live daemon. No
//! kernel program reads it.

use crate::limits::{OWNER_SOCKET_BYTES, OWNER_VERSION_BYTES};

/// The daemon owning a pin directory.
///
/// A pid alone could be recycled by the time someone reads it, so the
/// record also carries the process's start time (clock ticks since boot,
/// field 22 of `/proc/PID/stat`): the owner is alive only while a process
/// with that pid *and* that start time exists.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    /// The daemon's pid (0: no owner recorded).
    pub pid: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// The daemon's start time, in clock ticks since boot.
    pub start_ticks: u64,
    /// The daemon's version, UTF-8, NUL-padded.
    pub version: [u8; OWNER_VERSION_BYTES],
    /// The daemon's control socket path, NUL-padded (a longer path is cut).
    pub socket: [u8; OWNER_SOCKET_BYTES],
}
const _: () = assert!(size_of::<Owner>() == 16 + OWNER_VERSION_BYTES + OWNER_SOCKET_BYTES);
const _: () = assert!(size_of::<Owner>().is_multiple_of(8));

impl Owner {
    /// No owner recorded.
    pub const NONE: Self = Self {
        pid: 0,
        _pad: 0,
        start_ticks: 0,
        version: [0; OWNER_VERSION_BYTES],
        socket: [0; OWNER_SOCKET_BYTES],
    };
}

impl Default for Owner {
    fn default() -> Self {
        Self::NONE
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), integers and byte arrays only, no padding (size checked above).
    unsafe impl aya::Pod for super::Owner {}
}

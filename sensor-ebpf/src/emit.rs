//! Sending a finished record to user space, and counting it.

use sensor_common::{event::EventKind, event::MAX_EVENT_SIZE};

use crate::maps::{EVENTS, STATS};

/// Copies `size` bytes at `record` into the ring buffer and counts the result:
/// `emitted` on success, `lost` when the ring buffer is full.
///
/// # Safety
/// `record` must point to at least `min(size, MAX_EVENT_SIZE)` readable bytes.
#[inline(always)]
pub unsafe fn emit(record: *const u8, size: usize, kind: EventKind, read_errors: u64) {
    let size = if size > MAX_EVENT_SIZE { MAX_EVENT_SIZE } else { size };
    // SAFETY: caller guarantees the bytes; the verifier checks the bound against the map value.
    let bytes = unsafe { core::slice::from_raw_parts(record, size) };
    let sent = EVENTS.output::<[u8]>(bytes, 0).is_ok();
    if let Some(stats) = STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value, not shared with another CPU; tracepoint programs do not nest here.
        unsafe {
            let slot = kind.slot();
            if sent {
                (*stats).emitted[slot] += 1;
            } else {
                (*stats).lost[slot] += 1;
            }
            (*stats).read_errors += read_errors;
        }
    }
}

/// Counts an event that could not even be assembled (no scratch buffer for this CPU).
#[inline(always)]
pub fn count_lost(kind: EventKind) {
    if let Some(stats) = STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value.
        unsafe { (*stats).lost[kind.slot()] += 1 };
    }
}

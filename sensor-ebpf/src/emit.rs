//! Sending a finished record to user space, and counting it.

use sensor_common::{
    event::{EventKind, MAX_EVENT_SIZE},
    limits::EVENTS_WAKEUP_BYTES,
    maps::READER_SLEEPING,
};

use crate::maps::{EVENTS, READER, STATS};

/// `bpf_ringbuf_output` flag: do not wake the consumer.
const BPF_RB_NO_WAKEUP: u64 = 1;
/// `bpf_ringbuf_output` flag: wake the consumer now.
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `bpf_ringbuf_query` flag: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Copies `size` bytes at `record` into the ring buffer and counts the result:
/// `emitted` on success, `lost` when the ring buffer is full.
///
/// # Safety
/// `record` must point to at least `min(size, MAX_EVENT_SIZE)` readable bytes.
#[inline(always)]
pub unsafe fn emit(record: *const u8, size: usize, kind: EventKind, read_errors: u64) {
    let size = if size > MAX_EVENT_SIZE {
        MAX_EVENT_SIZE
    } else {
        size
    };
    // SAFETY: caller guarantees the bytes; the verifier checks the bound against the map value.
    let bytes = unsafe { core::slice::from_raw_parts(record, size) };
    // Wake the reader when it sleeps (an idle host: no timer runs then) or is
    // behind; otherwise it drains on its timer, and a wakeup per record (an
    // irq_work, in a VM an IPI) would cost more than this program.
    let sleeping = READER.get(0).is_some_and(|v| *v == READER_SLEEPING);
    let flags = if sleeping || EVENTS.query(BPF_RB_AVAIL_DATA) > EVENTS_WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    let sent = EVENTS.output::<[u8]>(bytes, flags).is_ok();
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

/// Counts a child that could not be entered in its creator's run.
#[inline(always)]
pub fn count_inherit_failed() {
    if let Some(stats) = STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value.
        unsafe { (*stats).inherit_failed += 1 };
    }
}

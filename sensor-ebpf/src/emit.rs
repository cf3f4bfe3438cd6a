//! Sending a finished record to user space, and counting it.

use aya_ebpf::helpers::generated::bpf_ktime_get_boot_ns;
use sensor_common::{
    event::{EventKind, MAX_EVENT_SIZE},
    limits::{DENIALS_PER_RUN_PER_SEC, EVENTS_WAKEUP_BYTES},
    stats::RunStats,
};

use crate::maps::{EVENTS, READER, RUN_STATS, STATS};

/// `bpf_ringbuf_output` flag: do not wake the consumer.
const BPF_RB_NO_WAKEUP: u64 = 1;
/// `bpf_ringbuf_output` flag: wake the consumer now.
const BPF_RB_FORCE_WAKEUP: u64 = 2;
/// `bpf_ringbuf_query` flag: bytes not yet consumed.
const BPF_RB_AVAIL_DATA: u64 = 0;
/// See [`wakeup_flags`]: a power of two, so the test is a mask.
const BEHIND_CHECK_EVERY: u64 = 8;

/// Copies `size` bytes at `record` into the ring buffer and counts the result:
/// `emitted` on success, `lost` when the ring buffer is full (and, for a
/// record of run `run`, the run's own `lost`).
///
/// # Safety
/// `record` must point to at least `min(size, MAX_EVENT_SIZE)` readable bytes.
#[inline(always)]
pub unsafe fn emit(record: *const u8, size: usize, kind: EventKind, read_errors: u64, run: u64) {
    let size = if size > MAX_EVENT_SIZE {
        MAX_EVENT_SIZE
    } else {
        size
    };
    // SAFETY: caller guarantees the bytes; the verifier checks the bound against the map value.
    let bytes = unsafe { core::slice::from_raw_parts(record, size) };
    let sent = EVENTS.output::<[u8]>(bytes, wakeup_flags(kind)).is_ok();
    count(kind, sent, read_errors, run);
}

/// The wakeup flag for a record of `kind` sent now: wake the reader when it
/// sleeps (an idle host: no timer runs then) or is behind; otherwise it
/// drains on its timer, and a wakeup per record (an irq_work, in a VM an
/// IPI) would cost more than the program. A sleeping reader whose lease ran
/// out is gone (`sensor_common::maps::READER`): no wakeup either.
///
/// Whether it is behind is asked of the ring at every
/// [`BEHIND_CHECK_EVERY`]th record of a kind on a CPU (the query is a
/// helper call, about a tenth of the connect exit's time when made for
/// every record): the wakeup comes at most that many records late, and
/// the ring holds many times [`EVENTS_WAKEUP_BYTES`].
#[inline(always)]
pub fn wakeup_flags(kind: EventKind) -> u64 {
    let lease = READER.get(0).copied().unwrap_or(0);
    if lease != 0 {
        // SAFETY: no preconditions.
        let now = unsafe { bpf_ktime_get_boot_ns() } / 1_000_000_000;
        return if now < u64::from(lease) {
            BPF_RB_FORCE_WAKEUP
        } else {
            BPF_RB_NO_WAKEUP
        };
    }
    // SAFETY: per-CPU value; a plain read.
    let sent = STATS
        .get_ptr(0)
        .map_or(0, |stats| unsafe { (*stats).emitted[kind.slot()] });
    if sent.is_multiple_of(BEHIND_CHECK_EVERY)
        && EVENTS.query(BPF_RB_AVAIL_DATA) > EVENTS_WAKEUP_BYTES
    {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Counts a record: `emitted` when `sent`, else `lost` (and, for a record
/// of run `run`, the run's own `lost`).
#[inline(always)]
pub fn count(kind: EventKind, sent: bool, read_errors: u64, run: u64) {
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
    if !sent
        && run != 0
        && let Some(rs) = run_stats(run)
    {
        // SAFETY: a map value of this type, aligned for u64.
        unsafe { atomic_add(&raw mut (*rs).lost, 1) };
    }
}

/// The counters of run `run`, created on first use.
#[inline(always)]
fn run_stats(run: u64) -> Option<*mut RunStats> {
    if let Some(p) = RUN_STATS.get_ptr_mut(run) {
        return Some(p);
    }
    // BPF_NOEXIST: a racing insert by another CPU wins, and is used below.
    let _ = RUN_STATS.insert(run, RunStats::default(), 1);
    RUN_STATS.get_ptr_mut(run)
}

/// Whether run `run` may send one more denial record now: at most
/// `DENIALS_PER_RUN_PER_SEC` per one-second window. Past it the record is
/// counted in the run's `denials_suppressed` instead, which user space
/// reports. (The window's fields race between CPUs; the budget is
/// approximate, the suppressed count is exact.)
#[inline(always)]
pub fn deny_budget(run: u64) -> bool {
    if run == 0 {
        return true;
    }
    let Some(rs) = run_stats(run) else {
        return true;
    };
    // SAFETY: no preconditions.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: a map value of this type; see the note above on races.
    unsafe {
        if now.wrapping_sub((*rs).window_start_ns) >= 1_000_000_000 {
            (*rs).window_start_ns = now;
            (*rs).window_sent = 0;
        }
        if (*rs).window_sent < DENIALS_PER_RUN_PER_SEC {
            (*rs).window_sent += 1;
            return true;
        }
        atomic_add(&raw mut (*rs).denials_suppressed, 1);
    }
    false
}

/// Atomically adds `v` to the map value at `p` (see `policy::atomic_add`).
#[inline(always)]
unsafe fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: the caller passes a map value pointer, aligned for u64.
    unsafe {
        core::intrinsics::atomic_xadd::<u64, u64, { core::intrinsics::AtomicOrdering::Relaxed }>(
            p, v,
        );
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

/// Counts a bpf(2) call by another process that can change a map.
#[inline(always)]
pub fn count_foreign_bpf() {
    if let Some(stats) = STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU value.
        unsafe { (*stats).foreign_bpf += 1 };
    }
}

//! The records of `syscalls/sys_enter_*` and `syscalls/sys_exit_*`
//! tracepoints, read with plain loads of the program's context.
//!
//! The verifier accepts an aligned load anywhere inside a tracepoint's
//! record, but only at an offset fixed in the instruction, so these offsets
//! are constants ([`SYSCALL_ARGS_OFFSET`], [`SYSCALL_RET_OFFSET`]) that the
//! loader checks against every format file the programs read. The connect
//! path reads a syscall record three times; `bpf_probe_read` there cost
//! about 40 ns a read.

use aya_ebpf::{EbpfContext, programs::TracePointContext};
use sensor_common::config::{SYSCALL_ARGS_OFFSET, SYSCALL_RET_OFFSET};

/// Argument `i` of a `sys_enter_*` record. `i` must be a constant at each
/// call (these are always inlined), so the offset lands in the load.
#[inline(always)]
pub fn arg(ctx: &TracePointContext, i: usize) -> u64 {
    let off = SYSCALL_ARGS_OFFSET as usize + 8 * i;
    // SAFETY: the context is the tracepoint's record; the loader checked
    // that the arguments start at SYSCALL_ARGS_OFFSET, 8 bytes each, and
    // the verifier checks the load (inside the record, aligned).
    unsafe { ctx.as_ptr().cast::<u8>().add(off).cast::<u64>().read() }
}

/// The return value in a `sys_exit_*` record.
#[inline(always)]
pub fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: as in `arg`, at SYSCALL_RET_OFFSET.
    unsafe {
        ctx.as_ptr()
            .cast::<u8>()
            .add(SYSCALL_RET_OFFSET as usize)
            .cast::<i64>()
            .read()
    }
}

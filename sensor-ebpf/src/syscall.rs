//! The records of `syscalls/sys_enter_*` and `syscalls/sys_exit_*`
//! tracepoints, read with plain loads of the program's context.
//!
//! The verifier accepts an aligned load anywhere inside a tracepoint's
//! record, but only at an offset fixed in the instruction, so these offsets
//! are constants ([`SYSCALL_ARGS_OFFSET`], [`SYSCALL_RET_OFFSET`]) that the
//! loader checks against every format file the programs read. The connect
//! path reads a syscall record three times; `bpf_probe_read` there cost
//! about 40 ns a read.

use aya_ebpf::{EbpfContext, helpers::generated::bpf_task_pt_regs, programs::TracePointContext};
use sensor_common::config::{SYSCALL_ARGS_OFFSET, SYSCALL_RET_OFFSET};

use crate::{
    config::offset,
    kernel::{current_task_btf, load},
};

/// x86-64 `__NR_connect`.
const NR_CONNECT: u64 = 42;

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

/// The socket descriptor of the `connect()` call the current task is in,
/// if it is in one: the syscall number in its saved user registers is
/// connect's, so `sys_exit_connect` will follow with the result. A cgroup
/// connect hook also runs for io_uring's connects (in `io_uring_enter`, or
/// in an io worker, whose frame is zeroed), for a 32-bit task's `connect`
/// or `socketcall` (other numbers; the syscall tracepoints skip 32-bit
/// calls), and for TCP Fast Open in `sendto`/`sendmsg`: no exit reports
/// those, so the hook does.
#[inline(always)]
pub fn in_connect() -> Option<u32> {
    // SAFETY: the current task is a BTF pointer; bpf_task_pt_regs returns
    // its saved user registers as one, and the offsets come from BTF.
    let (nr, fd) = unsafe {
        let regs = bpf_task_pt_regs(current_task_btf().cast_mut().cast()) as *const u8;
        (
            load::<u64>(regs, offset!(kernel.pt_regs_orig_ax)),
            load::<u64>(regs, offset!(kernel.pt_regs_di)),
        )
    };
    (nr == NR_CONNECT).then_some(fd as u32)
}

//! Kernel programs of the sensor.
//!
//! Only tracepoints, raw tracepoints and cgroup `sock_addr` programs are used:
//! kprobes, fentry/fexit and BPF LSM are unavailable on the target kernels.
//! Every struct field offset comes from the loader (BTF) and every tracepoint
//! field offset from the tracepoint's `format` file; the two offsets of the
//! syscall tracepoints' records are constants that the loader checks against
//! those files (see `syscall`).
#![no_std]
// Atomic add on map values (max_processes counters): no AtomicU64 on bpfel.
#![feature(core_intrinsics)]
#![allow(internal_features)]
#![no_main]

mod config;
mod emit;
mod kernel;
mod maps;
mod policy;
mod probes;
mod syscall;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // Unreachable in a verified program: the verifier rejects code that could get here.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

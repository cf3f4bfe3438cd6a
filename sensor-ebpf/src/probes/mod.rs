//! Programs, one file per event family.
//!
//! Each program is a thin `snsr_*` entry point that calls a `try_*` function
//! and always lets the traced operation continue.

mod network;
mod process;
mod sockets;
mod tamper;
mod unix;

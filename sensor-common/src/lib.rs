//! Types shared by the kernel programs (`sensor-ebpf`) and user space (`sensor`).
//!
//! Everything here crosses the kernel boundary as plain bytes: structs are
//! `#[repr(C)]`, `Copy`, free of pointers and padding surprises, and each has a
//! compile-time size check. The records of the ring ([`event`]) derive
//! `bytemuck::Pod`, which refuses a struct with padding at compile time, so
//! user space reads them from bytes without `unsafe`. The `user` feature adds
//! `aya::Pod` so user space can hand [`config::SensorConfig`] to the loader.
#![no_std]

pub mod config;
pub mod event;
pub mod handover;
pub mod inflight;
pub mod limits;
pub mod maps;
pub mod owner;
pub mod policy;
pub mod stats;

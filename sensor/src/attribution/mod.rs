//! Attribution: which process an event is about, and (with runs) which agent
//! run it belongs to. The process table is the user-space mirror of live
//! processes, kept in ring order from spawn/exec/exit events and seeded from
//! /proc at start-up.

pub mod process_table;

pub use self::process_table::{ProcessInfo, ProcessTable};

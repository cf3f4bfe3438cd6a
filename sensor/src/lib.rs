//! The sensor daemon and CLI, as a library: each stage of the data path is a
//! module with a narrow type at its boundary.
//!
//! ```text
//! loader (kernel programs) → pipeline: ring buffer → record::decode → RawEvent
//!   → event::Engine → Event → JSON lines → sinks (one bounded queue each)
//! control: the Unix socket `sensor status` (and later launch/attest) talk to
//! ```

pub mod attribution;
pub mod canary;
pub mod cli;
pub mod config;
pub mod control;
pub mod detect;
pub mod engine;
pub mod error;
pub mod event;
pub mod identity;
pub mod loader;
pub mod memory;
pub mod metrics;
pub mod notify;
pub mod paths;
pub mod pipeline;
pub mod policy;
pub mod provenance;
pub mod record;
pub mod recovery;
pub mod run_map;
pub mod sched;
pub mod sinks;
pub mod status;
pub mod store;
pub mod tamper;
pub mod tokens;
pub mod transcripts;

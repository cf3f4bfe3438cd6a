//! What the fuzz targets share: how one input is cut into several pieces
//! (records, files), and the attribution and event stage set up the way the
//! daemon has it, without a kernel.
//!
//! The seed generator (`examples/seeds.rs`) writes its inputs with the same
//! framing, so the committed corpora decode the way the targets read them.

use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, SystemTime},
};

use sensor::{
    attribution::{Attribution, Matchers, RunTable},
    config::Config,
    engine::Engine,
    identity::{Clock, Host, ProcessKeys},
    policy::Policies,
};
use sensor_common::event::ProcRun;

/// A fixed "now" (2026-05-28T20:26:40.123456789Z), so a crash replays the same way.
#[must_use]
pub fn now() -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::new(1_780_000_000, 123_456_789)
}

/// Boot id of the fuzzed host (process keys take its first 16 hex digits).
pub const BOOT_ID: &str = "0b5f0e3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c";

/// Clock ticks per second, as on every Linux the sensor runs on.
pub const TICKS_PER_SECOND: u64 = 100;

/// A new temporary directory, in memory (`/dev/shm`) where there is one:
/// the targets that work on files create and remove several per input.
///
/// # Panics
/// When no temporary directory can be made.
#[must_use]
pub fn scratch_dir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() {
        tempfile::tempdir_in(shm)
    } else {
        tempfile::tempdir()
    };
    dir.unwrap_or_else(|e| panic!("cannot make a temporary directory: {e}"))
}

/// Splits `data` into pieces, each `len: u16 LE | bytes[len]`; a piece whose
/// length runs past the end takes what is left.
#[must_use]
pub fn frames(mut data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while data.len() >= 2 {
        let len = usize::from(u16::from_le_bytes([data[0], data[1]]));
        let rest = &data[2..];
        let (piece, tail) = rest.split_at(len.min(rest.len()));
        out.push(piece);
        data = tail;
    }
    out
}

/// The inverse of [`frames`] (for the seed generator).
#[must_use]
pub fn frame(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        let len = u16::try_from(piece.len()).unwrap_or(u16::MAX);
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&piece[..usize::from(len)]);
    }
    out
}

/// The config the event builder of the `raw` target runs with: an agent
/// matcher (so an exec can start a run, and a run nest in another) whose runs
/// get an audit policy (so execs and connects get verdicts). Audit only: an
/// enforce policy makes the builder kill the process of a too-deep sub-run,
/// and the pids here come from the fuzzer.
pub const RAW_CONFIG: &str = r#"
[[agent]]
name = "fake-agent"
exe = ["**/fake-agent"]
script = ["**/fake-agent.py"]
module = ["fake_agent"]
exclude_argv = ["--helper"]
policy = "fuzz"

[policy.fuzz]
mode = "audit"
exec.allow = ["/usr/bin/", "/usr/bin/env", "/bin/sh*"]
connect.allow = ["127.0.0.0/8", "[::1]:443", "10.0.0.0/8:1000-2000"]
max_depth = 1
max_processes = 4
"#;

/// The agent matchers and policies of [`RAW_CONFIG`].
///
/// # Panics
/// When the constant does not load (a bug in this file).
#[must_use]
pub fn raw_config() -> (Matchers, Policies) {
    let (config, policies) = Config::parse_with_policies(RAW_CONFIG, Path::new("raw.toml"))
        .unwrap_or_else(|e| panic!("RAW_CONFIG: {e}"));
    let matchers = Matchers::new(&config.agents).unwrap_or_else(|e| panic!("RAW_CONFIG: {e}"));
    (matchers, policies)
}

/// An attribution stage over a fake kernel map (a `HashMap`), no state file.
#[must_use]
pub fn attribution(matchers: Matchers) -> Attribution {
    Attribution::new(
        ProcessKeys::new(BOOT_ID, TICKS_PER_SECOND),
        Box::new(HashMap::<u32, ProcRun>::new()),
        RunTable::new(),
        None,
    )
    .with_matchers(matchers)
}

/// An event builder as the daemon's pipeline has it, without kernel maps.
#[must_use]
pub fn builder(attribution: Attribution, policies: Policies) -> Engine {
    Engine::new(
        Host {
            name: "fuzz".into(),
            boot_id: BOOT_ID.into(),
        },
        ProcessKeys::new(BOOT_ID, TICKS_PER_SECOND),
        Clock::with_offset(1_700_000_000_000_000_000),
        attribution,
    )
    .with_policies(policies)
}

/// Serializes an event as the daemon writes it and checks it is what the
/// contract says: one line of one JSON object.
///
/// # Panics
/// When it is not.
pub fn check_json_line(event: &sensor::event::Event) {
    let mut line = Vec::new();
    sensor::event::json::write_json_line(event, &mut line)
        .unwrap_or_else(|e| panic!("an event does not serialize: {e}: {event:?}"));
    assert_eq!(line.last(), Some(&b'\n'), "a JSON line ends in a newline");
    assert!(
        !line[..line.len() - 1].contains(&b'\n'),
        "one event, one line: {}",
        String::from_utf8_lossy(&line)
    );
    let value: serde_json::Value =
        serde_json::from_slice(&line).unwrap_or_else(|e| panic!("an event line is not JSON: {e}"));
    assert!(value.is_object(), "an event is a JSON object");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let pieces: [&[u8]; 3] = [b"abc", b"", b"xy"];
        assert_eq!(frames(&frame(&pieces)), pieces);
        // A length past the end takes the rest; a lone byte is dropped.
        assert_eq!(frames(&[9, 0, 1, 2]), [&[1u8, 2][..]]);
        assert!(frames(&[1]).is_empty());
    }
}

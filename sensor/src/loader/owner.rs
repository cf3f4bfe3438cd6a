//! The pin dir's owner record (`<pin-dir>/SNSR_OWNER`): which daemon holds
//! the pins. Why it is a pinned map and not a file: see
//! [`sensor_common::owner`].
//!
//! The daemon writes it at start-up ([`super::Probes::claim`]) and keeps it
//! (the integrity check rewrites it when it changed). `sensor unload`
//! refuses to remove the pins while the owner lives, a second daemon refuses
//! to start on the pin dir, and `sensor status` names the last owner when no
//! daemon answers.

use std::path::{Path, PathBuf};

use aya::maps::{Array, Map, MapData, MapError};
use sensor_common::{maps, owner::Owner};

/// What the record says, decoded.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct OwnerInfo {
    pub pid: u32,
    /// Start time of the process, clock ticks since boot (`/proc/PID/stat`
    /// field 22).
    pub start_ticks: u64,
    pub version: String,
    pub socket: PathBuf,
}

impl OwnerInfo {
    /// Whether the owner is running: a process with its pid exists, started
    /// at its start time (a recycled pid does not count), and has not exited
    /// (a zombie holds nothing any more).
    #[must_use]
    pub fn alive(&self) -> bool {
        let Ok(pid) = i32::try_from(self.pid) else {
            return false;
        };
        pid != 0
            && procfs::process::Process::new(pid)
                .and_then(|p| p.stat())
                .is_ok_and(|s| s.starttime == self.start_ticks && !matches!(s.state, 'Z' | 'X'))
    }

    /// `pid N (version V, socket S)`, for messages.
    #[must_use]
    pub fn describe(&self) -> String {
        format!(
            "pid {} (version {}, socket {})",
            self.pid,
            self.version,
            self.socket.display()
        )
    }
}

/// The record of a daemon.
#[must_use]
pub fn record(pid: u32, start_ticks: u64, version: &str, socket: &Path) -> Owner {
    use std::os::unix::ffi::OsStrExt as _;
    let mut owner = Owner {
        pid,
        start_ticks,
        ..Owner::NONE
    };
    copy_cut(&mut owner.version, version.as_bytes());
    copy_cut(&mut owner.socket, socket.as_os_str().as_bytes());
    owner
}

/// Copies `from` into `to`, cut to leave at least one NUL at the end.
fn copy_cut(to: &mut [u8], from: &[u8]) {
    let n = from.len().min(to.len().saturating_sub(1));
    to[..n].copy_from_slice(&from[..n]);
}

/// Decodes a record; `None` for "no owner" (pid 0).
#[must_use]
pub fn decode(owner: &Owner) -> Option<OwnerInfo> {
    use std::os::unix::ffi::OsStrExt as _;
    if owner.pid == 0 {
        return None;
    }
    let text = |b: &[u8]| {
        let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
        b[..end].to_vec()
    };
    Some(OwnerInfo {
        pid: owner.pid,
        start_ticks: owner.start_ticks,
        version: String::from_utf8_lossy(&text(&owner.version)).into_owned(),
        socket: PathBuf::from(std::ffi::OsStr::from_bytes(&text(&owner.socket))),
    })
}

/// Reads the owner record of `pin_dir`: `Ok(None)` when there is none (no
/// pin dir, no record pinned, or one without an owner).
pub fn read(pin_dir: &Path) -> Result<Option<OwnerInfo>, MapError> {
    let path = pin_dir.join(maps::OWNER);
    if !path.exists() {
        return Ok(None);
    }
    let map = Map::from_map_data(MapData::from_pin(&path)?)?;
    let array: Array<MapData, Owner> = Array::try_from(map)?;
    Ok(decode(&array.get(&0, 0)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_long_values_are_cut() {
        let socket = PathBuf::from("/run/sensor/sensor.sock");
        let r = record(42, 1234, "0.1.0", &socket);
        let info = decode(&r).unwrap();
        assert_eq!(info.pid, 42);
        assert_eq!(info.start_ticks, 1234);
        assert_eq!(info.version, "0.1.0");
        assert_eq!(info.socket, socket);
        let long = PathBuf::from(format!("/{}", "s".repeat(300)));
        let info = decode(&record(1, 1, &"v".repeat(100), &long)).unwrap();
        assert_eq!(info.version.len(), 31);
        assert_eq!(info.socket.as_os_str().len(), 111);
        assert_eq!(decode(&Owner::NONE), None);
    }

    #[test]
    fn a_dead_or_recycled_owner_is_not_alive() {
        let me = std::process::id();
        let (ticks, _) = crate::identity::proc_start(me).unwrap();
        let alive = decode(&record(me, ticks, "v", Path::new("/s"))).unwrap();
        assert!(alive.alive());
        let recycled = decode(&record(me, ticks + 1, "v", Path::new("/s"))).unwrap();
        assert!(!recycled.alive(), "same pid, another start time");
        let gone = decode(&record(u32::MAX - 1, ticks, "v", Path::new("/s"))).unwrap();
        assert!(!gone.alive());
    }
}

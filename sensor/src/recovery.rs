//! Gaps: the times no daemon read the kernel's records, and how a daemon
//! picks up after one (see [`sensor_common::handover`] for the kernel side).
//!
//! The kernel keeps recording while no daemon runs, into the pinned ring.
//! A starting daemon says how long nobody read and why (`sensor.gap`),
//! reports what the ring could not keep (`sensor.lost` with the window),
//! and then reads what was recorded, marked `delivery: "recovered"`. What
//! it needs to know about its predecessor comes from the pinned
//! [`ReaderMark`] (written every second and at stop) and, when the pin dir
//! is gone (a reboot, `sensor unload`), from the state dir's last-seen
//! file.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use sensor_common::handover::{
    MARK_DETACHED, MARK_HANDED_OVER, MARK_RUNNING, MARK_STOPPED, ReaderMark,
};
use serde::{Deserialize, Serialize};

use crate::{
    event::{Gap, Timestamp},
    loader::{Takeover, pinned::PinnedState},
};

/// The state dir's record of the last daemon's last sign of life.
pub use crate::paths::LAST_SEEN_FILE;

/// What [`LAST_SEEN_FILE`] holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastSeen {
    /// The boot the daemon ran in (`/proc/sys/kernel/random/boot_id`).
    pub boot_id: String,
    /// Unix time, nanoseconds.
    pub unix_ns: u64,
    /// The daemon's pid.
    pub pid: u32,
    /// `running`, `stop`, `handover`, `detached`.
    pub state: String,
}

impl LastSeen {
    /// Reads the file in `state_dir`; `None` when absent or unreadable.
    #[must_use]
    pub fn read(state_dir: &Path) -> Option<Self> {
        let text = std::fs::read(state_dir.join(LAST_SEEN_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }

    /// Writes the file atomically (a temporary file renamed over it).
    pub fn write(&self, state_dir: &Path) -> std::io::Result<()> {
        let path = state_dir.join(LAST_SEEN_FILE);
        let tmp: PathBuf = path.with_extension("tmp");
        let text = serde_json::to_vec(self).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)
    }
}

/// How the previous reader ended, from its mark's state.
#[must_use]
pub const fn cause_of(state: u32) -> &'static str {
    match state {
        MARK_RUNNING => "crash",
        MARK_STOPPED => "stop",
        MARK_HANDED_OVER => "handover",
        MARK_DETACHED => "detached",
        _ => "unknown",
    }
}

/// The [`LastSeen::state`] name of a mark state.
#[must_use]
pub const fn last_seen_state(state: u32) -> &'static str {
    match state {
        MARK_STOPPED => "stop",
        MARK_HANDED_OVER => "handover",
        MARK_DETACHED => "detached",
        _ => "running",
    }
}

fn time_of(unix_ns: u64) -> Option<SystemTime> {
    (unix_ns > 0).then(|| SystemTime::UNIX_EPOCH + Duration::from_nanos(unix_ns))
}

/// The gap this daemon closes, if there was a daemon before it on these
/// dirs: from the pinned mark when the pin dir survived, else from the
/// state dir's last-seen file. `None` on a first start. `lost` is filled
/// in later, from the kernel's counters.
#[must_use]
pub fn gap(
    takeover: &Takeover,
    before: Option<&PinnedState>,
    last: Option<&LastSeen>,
    boot_id: &str,
    now: SystemTime,
) -> Option<Gap> {
    let mark: &ReaderMark = &takeover.mark;
    let (start, cause, previous_pid) = if mark.state != 0 {
        (time_of(mark.unix_ns), cause_of(mark.state), Some(mark.pid))
    } else if let Some(last) = last {
        let cause = if last.boot_id == boot_id {
            // Same boot, no pins: they were removed (`sensor unload`).
            "unloaded"
        } else {
            "reboot"
        };
        (time_of(last.unix_ns), cause, Some(last.pid))
    } else {
        return None;
    };
    let recorded = mark.state != 0
        && mark.state != MARK_DETACHED
        && takeover.previous_attached > 0
        && takeover.previous_generation == mark.generation;
    let mut policies_pinned: BTreeMap<&'static str, u32> = BTreeMap::new();
    if recorded {
        for p in before.map(|b| b.policies.as_slice()).unwrap_or_default() {
            *policies_pinned.entry(p.mode).or_default() += 1;
        }
    }
    Some(Gap {
        start: start.map(Timestamp),
        end: Timestamp(now),
        seconds: start
            .and_then(|s| now.duration_since(s).ok())
            .map(|d| d.as_secs_f64()),
        cause,
        previous_pid,
        recorded,
        programs_attached: takeover.previous_attached,
        policies_pinned,
        lost: 0,
        ring: if takeover.old_ring.is_some() {
            "replaced"
        } else {
            "reused"
        },
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn takeover(mark: ReaderMark, attached: usize, previous_generation: u32) -> Takeover {
        Takeover {
            generation: previous_generation + 1,
            previous_generation,
            previous_links: attached,
            previous_attached: attached,
            mark,
            old_ring: None,
        }
    }

    #[test]
    fn a_first_start_has_no_gap() {
        let t = takeover(ReaderMark::default(), 0, 0);
        assert!(gap(&t, None, None, "b", SystemTime::now()).is_none());
    }

    #[test]
    fn a_crash_with_the_programs_attached_was_recorded() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        let mark = ReaderMark {
            state: MARK_RUNNING,
            generation: 3,
            pid: 42,
            unix_ns: 98_500_000_000,
            ..ReaderMark::default()
        };
        let g = gap(&takeover(mark, 33, 3), None, None, "b", now).unwrap();
        assert_eq!(g.cause, "crash");
        assert!(g.recorded);
        assert_eq!(g.previous_pid, Some(42));
        assert!((g.seconds.unwrap() - 1.5).abs() < 1e-9);
        assert_eq!(g.ring, "reused");
    }

    #[test]
    fn a_detached_stop_or_another_active_generation_was_not_recorded() {
        let now = SystemTime::now();
        let mark = ReaderMark {
            state: MARK_DETACHED,
            generation: 3,
            ..ReaderMark::default()
        };
        assert!(
            !gap(&takeover(mark, 0, 3), None, None, "b", now)
                .unwrap()
                .recorded
        );
        // Someone switched the active generation away from the programs.
        let mark = ReaderMark {
            state: MARK_STOPPED,
            generation: 3,
            ..ReaderMark::default()
        };
        let g = gap(&takeover(mark, 33, 9), None, None, "b", now).unwrap();
        assert!(!g.recorded);
        assert_eq!(g.cause, "stop");
    }

    #[test]
    fn without_pins_the_state_dir_says_reboot_or_unloaded() {
        let now = SystemTime::now();
        let last = LastSeen {
            boot_id: "old".into(),
            unix_ns: 1,
            pid: 7,
            state: "running".into(),
        };
        let t = takeover(ReaderMark::default(), 0, 0);
        let g = gap(&t, None, Some(&last), "new", now).unwrap();
        assert_eq!((g.cause, g.recorded), ("reboot", false));
        let g = gap(&t, None, Some(&last), "old", now).unwrap();
        assert_eq!(g.cause, "unloaded");
    }

    #[test]
    fn last_seen_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let last = LastSeen {
            boot_id: "b".into(),
            unix_ns: 5,
            pid: 1,
            state: "stop".into(),
        };
        last.write(dir.path()).unwrap();
        assert_eq!(LastSeen::read(dir.path()), Some(last));
        std::fs::write(dir.path().join(LAST_SEEN_FILE), b"{garbage").unwrap();
        assert_eq!(LastSeen::read(dir.path()), None);
    }
}

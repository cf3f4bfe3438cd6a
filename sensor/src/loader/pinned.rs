//! What a pin dir holds, read without a daemon: for `sensor status` when no
//! daemon answers (what is still attached and enforcing) and for
//! `sensor unload` (who owns it).

use std::path::{Path, PathBuf};

use aya::maps::{Array, HashMap as BpfHashMap, Map, MapData};
use sensor_common::{
    limits::MAX_POLICIES,
    maps,
    policy::{MODE_AUDIT, MODE_ENFORCE, MODE_NONE, PolicySlot, RunPolicy},
};
use serde::Serialize;

use super::{owner::OwnerInfo, sys};

/// A pin dir's contents, as the kernel sees them.
#[derive(Debug, Clone, Serialize)]
pub struct PinnedState {
    pub pin_dir: PathBuf,
    /// Each link pinned in `<pin-dir>/links`.
    pub links: Vec<PinnedLinkState>,
    /// The policy slots in use and their modes.
    pub policies: Vec<PolicySlotState>,
    /// Runs bound to a policy (`SNSR_RUN_POLICY` entries), if readable.
    pub runs_bound: Option<usize>,
    /// The pinned maps present.
    pub maps: Vec<&'static str>,
    /// The daemon that owned the pins last, if it left a record.
    pub owner: Option<OwnerState>,
    /// Programs are attached and a policy slot is in enforce mode: denied
    /// execs and connects of bound runs are blocked, daemon or not.
    pub enforcing: bool,
}

/// One pinned link.
#[derive(Debug, Clone, Serialize)]
pub struct PinnedLinkState {
    /// The program's name (the pin's name).
    pub name: String,
    pub link_id: Option<u32>,
    pub program_id: Option<u32>,
    /// The link attaches its program (checked in the kernel).
    pub attached: bool,
}

/// One policy slot in use.
#[derive(Debug, Clone, Serialize)]
pub struct PolicySlotState {
    pub slot: u32,
    pub id: u32,
    pub mode: &'static str,
    pub max_processes: u32,
}

/// The owner record and whether that process is alive.
#[derive(Debug, Clone, Serialize)]
pub struct OwnerState {
    #[serde(flatten)]
    pub owner: OwnerInfo,
    pub alive: bool,
}

/// Reads `pin_dir`; `None` when it does not exist. Unreadable parts are
/// left out (the caller is not root, or a map has another layout).
#[must_use]
pub fn inspect(pin_dir: &Path) -> Option<PinnedState> {
    if !pin_dir.is_dir() {
        return None;
    }
    let mut links = Vec::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(pin_dir.join(maps::LINKS_DIR))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    for path in entries {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let state = sys::pinned_link_state(&path).ok();
        links.push(PinnedLinkState {
            name,
            link_id: state.map(|s| s.id),
            program_id: state.map(|s| s.program_id),
            attached: state.is_some_and(|s| s.attached),
        });
    }
    let open = |name: &str| -> Option<Map> {
        Map::from_map_data(MapData::from_pin(pin_dir.join(name)).ok()?).ok()
    };
    let mut policies = Vec::new();
    if let Some(slots) = open(maps::POLICIES).and_then(|m| Array::<_, PolicySlot>::try_from(m).ok())
    {
        for slot in 0..MAX_POLICIES {
            let Ok(v) = slots.get(&slot, 0) else { break };
            if v.mode == MODE_NONE {
                continue;
            }
            policies.push(PolicySlotState {
                slot,
                id: v.id,
                mode: match v.mode {
                    MODE_AUDIT => "audit",
                    MODE_ENFORCE => "enforce",
                    _ => "unknown",
                },
                max_processes: v.max_processes,
            });
        }
    }
    let runs_bound = open(maps::RUN_POLICY)
        .and_then(|m| BpfHashMap::<_, u64, RunPolicy>::try_from(m).ok())
        .map(|m| m.keys().filter_map(Result::ok).count());
    let present = maps::PINNED
        .iter()
        .copied()
        .filter(|m| pin_dir.join(m).exists())
        .collect();
    let owner = super::owner::read(pin_dir)
        .ok()
        .flatten()
        .map(|owner| OwnerState {
            alive: owner.alive(),
            owner,
        });
    let enforcing =
        links.iter().any(|l| l.attached) && policies.iter().any(|p| p.mode == "enforce");
    Some(PinnedState {
        pin_dir: pin_dir.to_owned(),
        links,
        policies,
        runs_bound,
        maps: present,
        owner,
        enforcing,
    })
}

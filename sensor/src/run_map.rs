//! The kernel's process → run map (`SNSR_PROC_RUNS`) behind a trait, so
//! attribution (which keeps it) and the enforcement self-test (which puts
//! its children in a throw-away run) are tested without a kernel. It sits
//! below both: `attribution` and `policy` import it, it imports neither.

use std::collections::HashMap;

use sensor_common::event::ProcRun;

/// The kernel's process → run map, behind a trait so attribution can be
/// tested without a kernel.
pub trait RunMap: Send {
    fn get(&self, tgid: u32) -> Option<ProcRun>;
    fn set(&mut self, tgid: u32, entry: ProcRun) -> Result<(), aya::maps::MapError>;
    fn remove(&mut self, tgid: u32);
    fn entries(&self) -> Vec<(u32, ProcRun)>;
    /// Whether no process is in a run (one lookup, not a copy of the map).
    fn is_empty(&self) -> bool;
}

impl RunMap for aya::maps::HashMap<aya::maps::MapData, u32, ProcRun> {
    fn get(&self, tgid: u32) -> Option<ProcRun> {
        aya::maps::HashMap::get(self, &tgid, 0).ok()
    }

    fn set(&mut self, tgid: u32, entry: ProcRun) -> Result<(), aya::maps::MapError> {
        self.insert(tgid, entry, 0)
    }

    fn remove(&mut self, tgid: u32) {
        let _ = aya::maps::HashMap::remove(self, &tgid);
    }

    fn entries(&self) -> Vec<(u32, ProcRun)> {
        self.iter().filter_map(Result::ok).collect()
    }

    fn is_empty(&self) -> bool {
        // A key that cannot be read counts as an entry: the caller keeps
        // what runs need attached.
        self.keys().next().is_none()
    }
}

impl RunMap for HashMap<u32, ProcRun> {
    fn get(&self, tgid: u32) -> Option<ProcRun> {
        HashMap::get(self, &tgid).copied()
    }

    fn set(&mut self, tgid: u32, entry: ProcRun) -> Result<(), aya::maps::MapError> {
        self.insert(tgid, entry);
        Ok(())
    }

    fn remove(&mut self, tgid: u32) {
        HashMap::remove(self, &tgid);
    }

    fn entries(&self) -> Vec<(u32, ProcRun)> {
        self.iter().map(|(k, v)| (*k, *v)).collect()
    }

    fn is_empty(&self) -> bool {
        HashMap::is_empty(self)
    }
}

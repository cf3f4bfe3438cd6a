//! The storms the bench times ([`WORKLOADS`]): what each does, how many
//! ops, and which event kind the sensor must count once per op.

use std::time::Duration;

use anyhow::Result;

use crate::storm;

/// One storm: what it does, how many ops, and which event kind the sensor must
/// count at least once per op.
pub(super) struct Workload {
    pub(super) name: &'static str,
    pub(super) description: &'static str,
    pub(super) ops: usize,
    pub(super) quick_ops: usize,
    pub(super) run: fn(usize) -> Result<Duration>,
    /// Cores the storm keeps busy (a per-op CPU cost c stretches its wall
    /// time by about c / cores).
    pub(super) cores: usize,
    /// Event kinds the sensor reports at least once per op of this workload.
    pub(super) kinds: &'static [&'static str],
}

impl Workload {
    pub(super) fn ops(&self, quick: bool) -> usize {
        if quick { self.quick_ops } else { self.ops }
    }
}

pub(super) const WORKLOADS: &[Workload] = &[
    Workload {
        name: "exec",
        description: "exec storm: posix_spawn /bin/true and wait, 2 threads",
        ops: 10_000,
        quick_ops: 1000,
        run: storm::exec_storm,
        cores: storm::EXEC_THREADS,
        kinds: &["process.exec"],
    },
    Workload {
        name: "connect",
        description: "connect storm: loopback TCP connect, accept, close",
        ops: 60_000,
        quick_ops: 10_000,
        run: storm::connect_storm,
        // The client and the listener are pinned to one CPU.
        cores: 1,
        kinds: &["network.connect"],
    },
];

/// The index of the workload named `name` in [`WORKLOADS`] (the key of its
/// samples), or `usize::MAX`, which keys nothing.
pub(super) fn index_of(name: &str) -> usize {
    WORKLOADS
        .iter()
        .position(|w| w.name == name)
        .unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workload_names_are_unique() {
        for (i, a) in WORKLOADS.iter().enumerate() {
            assert_eq!(index_of(a.name), i);
        }
    }
}

//! Live processes by pid, with the start time that makes their identity
//! unique under pid reuse, and what the kernel told us about their image.
//!
//! Events arrive in ring buffer order, so a process's spawn and exec come
//! before its connects and its exit; the entry is dropped at exit. Processes
//! that started before the daemon are read from /proc once at start-up.

use std::{collections::HashMap, path::Path, sync::Arc};

use super::Placement;

/// What the table knows of a process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Start time, `CLOCK_BOOTTIME` ns (from the kernel), or clock ticks × ns-per-tick (from /proc).
    pub start_ns: u64,
    /// Resolved path of the running image.
    pub exe: Option<Arc<str>>,
    /// Its run (none: 0) and how the process joined it.
    pub placement: Placement,
    /// Its current image matched an `[[agent]]` matcher (an agent process).
    pub agent: bool,
}

/// What was known of a process when it exited: the file watch reports
/// changes some time after they were made, often by processes gone by then
/// (`rm`), and still names them and their run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exited {
    pub pid: u32,
    pub start_ns: u64,
    pub ppid: u32,
    pub parent_start_ns: u64,
    pub uid: u32,
    pub gid: u32,
    pub comm: [u8; 16],
    pub exe: Option<Arc<str>>,
    /// Its run (none: 0) and how the process had joined it.
    pub placement: Placement,
}

/// The last [`RecentExits::CAPACITY`] exits, in a ring: recording one (at
/// every exit, on the event path) is a copy; finding one (rare: a file
/// change to report) is a scan, newest first.
#[derive(Debug, Default)]
pub struct RecentExits {
    ring: Vec<Exited>,
    /// Where the next one goes once the ring is full.
    next: usize,
}

impl RecentExits {
    pub const CAPACITY: usize = 4096;

    pub fn record(&mut self, e: Exited) {
        if self.ring.len() < Self::CAPACITY {
            self.ring.push(e);
        } else if let Some(slot) = self.ring.get_mut(self.next) {
            *slot = e;
            self.next = (self.next + 1) % Self::CAPACITY;
        }
    }

    /// The latest exit of `pid`.
    #[must_use]
    pub fn find(&self, pid: u32) -> Option<&Exited> {
        // Newest first: from just before `next` back round the ring
        // (slots before `next` were written after those from it on).
        let (recent, earlier) = self.ring.split_at(self.next.min(self.ring.len()));
        recent
            .iter()
            .rev()
            .chain(earlier.iter().rev())
            .find(|e| e.pid == pid)
    }
}

/// Live processes by tgid.
///
/// Hashed with foldhash, not SipHash: every record looks a pid up, and
/// SipHash was most of that. The keys are pids, which the kernel hands
/// out: a watched agent steers its own pid only loosely (by forking until
/// one comes up), the table holds live processes only (bounded by
/// `pid_max` and the agent's process limits), and the hasher's seed is
/// random per table, so collisions cannot be aimed without knowing it.
#[derive(Debug, Default)]
pub struct ProcessTable {
    by_pid: HashMap<u32, ProcessInfo, foldhash::fast::RandomState>,
    /// Start times from /proc have clock-tick resolution: compare at that grain.
    ns_per_tick: u64,
}

impl ProcessTable {
    #[must_use]
    pub fn new(ns_per_tick: u64) -> Self {
        Self {
            by_pid: HashMap::default(),
            ns_per_tick: ns_per_tick.max(1),
        }
    }

    /// Number of live processes tracked.
    #[must_use]
    pub fn len(&self) -> usize {
        self.by_pid.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_pid.is_empty()
    }

    /// Gives back the table's room after a mass exit: a hash table keeps the
    /// capacity of its largest size (100,000 forked and exited processes
    /// left 6 MiB of empty buckets). Shrinks when fewer than a quarter of
    /// the buckets are used, to twice the live count; returns whether it
    /// did (the caller may then return the freed memory to the system).
    pub fn shrink(&mut self) -> bool {
        let (len, capacity) = (self.by_pid.len(), self.by_pid.capacity());
        if capacity <= Self::SHRINK_ABOVE || len >= capacity / 4 {
            return false;
        }
        self.by_pid
            .shrink_to(len.saturating_mul(2).max(Self::SHRINK_ABOVE));
        self.by_pid.capacity() < capacity
    }

    /// Tables this small are left alone by [`ProcessTable::shrink`].
    const SHRINK_ABOVE: usize = 4096;

    /// Records a process (spawn, exec or /proc).
    pub fn upsert(&mut self, pid: u32, start_ns: u64, exe: Option<Arc<str>>) {
        let tick = self.ns_per_tick;
        let fresh = ProcessInfo {
            start_ns,
            exe: None,
            placement: Placement::NONE,
            agent: false,
        };
        let entry = self.by_pid.entry(pid).or_insert_with(|| fresh.clone());
        if entry.start_ns / tick != start_ns / tick {
            // A recycled pid: forget what belonged to the previous process.
            *entry = fresh;
        }
        if exe.is_some() {
            entry.exe = exe;
        }
    }

    /// `exe`, or the equal path its parent holds, shared: a fork keeps its
    /// parent's image, so 100,000 forked children hold one path, not
    /// 100,000 copies of it.
    #[must_use]
    pub fn share_exe(
        &self,
        ppid: u32,
        parent_start_ns: u64,
        exe: Option<Arc<str>>,
    ) -> Option<Arc<str>> {
        match (
            exe,
            self.get(ppid, parent_start_ns).and_then(|p| p.exe.as_ref()),
        ) {
            (Some(own), Some(parents)) if *own == **parents => Some(Arc::clone(parents)),
            (exe, _) => exe,
        }
    }

    /// Sets the run of a live process (no-op for an unknown or recycled pid).
    pub fn set_run(&mut self, pid: u32, start_ns: u64, placement: Placement) {
        let tick = self.ns_per_tick;
        if let Some(p) = self.by_pid.get_mut(&pid)
            && (start_ns == 0 || p.start_ns / tick == start_ns / tick)
        {
            p.placement = placement;
        }
    }

    /// Marks whether the current image of a live process is an agent.
    pub fn set_agent(&mut self, pid: u32, agent: bool) {
        if let Some(p) = self.by_pid.get_mut(&pid) {
            p.agent = agent;
        }
    }

    /// Every live process (pid, info).
    pub fn iter(&self) -> impl Iterator<Item = (u32, &ProcessInfo)> {
        self.by_pid.iter().map(|(pid, p)| (*pid, p))
    }

    /// The process `pid` if it is the one started at `start_ns` (0: any).
    #[must_use]
    pub fn get(&self, pid: u32, start_ns: u64) -> Option<&ProcessInfo> {
        self.by_pid
            .get(&pid)
            .filter(|p| start_ns == 0 || self.same_start(p.start_ns, start_ns))
    }

    /// Drops the process at its exit, returning what was known.
    pub fn remove(&mut self, pid: u32, start_ns: u64) -> Option<ProcessInfo> {
        if self.get(pid, start_ns).is_some() {
            self.by_pid.remove(&pid)
        } else {
            None
        }
    }

    fn same_start(&self, a: u64, b: u64) -> bool {
        a / self.ns_per_tick == b / self.ns_per_tick
    }

    /// Seeds the table from a /proc tree (every numeric directory).
    /// Returns `(pid, ppid)` of every process read.
    pub fn seed_from_proc(&mut self, proc_root: &Path) -> Vec<(u32, u32)> {
        let Ok(dir) = std::fs::read_dir(proc_root) else {
            return Vec::new();
        };
        let mut seeded = Vec::new();
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Some((start_ticks, ppid)) = crate::identity::proc_start_in(proc_root, pid) else {
                continue;
            };
            let exe = std::fs::read_link(entry.path().join("exe"))
                .ok()
                .map(|p| Arc::<str>::from(p.to_string_lossy().as_ref()));
            self.upsert(pid, start_ticks.saturating_mul(self.ns_per_tick), exe);
            seeded.push((pid, ppid));
        }
        seeded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_reuse_forgets_the_old_image() {
        let mut t = ProcessTable::new(10_000_000);
        t.upsert(42, 1_000_000_000, Some("/usr/bin/curl".into()));
        assert_eq!(
            t.get(42, 1_000_000_000).unwrap().exe.as_deref(),
            Some("/usr/bin/curl")
        );
        // Same tick: same process (a /proc start time has tick resolution).
        assert!(t.get(42, 1_000_000_009).is_some());
        // A later process with the same pid.
        assert!(t.get(42, 2_000_000_000).is_none());
        t.upsert(42, 2_000_000_000, None);
        assert_eq!(t.get(42, 2_000_000_000).unwrap().exe, None);
        assert!(
            t.remove(42, 1_000_000_000).is_none(),
            "stale start time does not remove"
        );
        assert!(t.remove(42, 2_000_000_000).is_some());
        assert!(t.is_empty());
    }

    #[test]
    fn a_forked_child_shares_its_parents_exe() {
        let mut t = ProcessTable::new(10_000_000);
        t.upsert(10, 1_000_000_000, Some("/usr/bin/bash".into()));
        let parents = t.get(10, 0).and_then(|p| p.exe.clone()).unwrap();
        let shared = t.share_exe(10, 1_000_000_000, Some("/usr/bin/bash".into()));
        assert!(Arc::ptr_eq(&shared.unwrap(), &parents));
        let other = t.share_exe(10, 1_000_000_000, Some("/usr/bin/ls".into()));
        assert_eq!(other.as_deref(), Some("/usr/bin/ls"));
        assert!(!Arc::ptr_eq(&other.unwrap(), &parents));
        assert_eq!(t.share_exe(11, 0, None), None);
        // A recycled parent pid: not the parent.
        let stale = t.share_exe(10, 5_000_000_000, Some("/usr/bin/bash".into()));
        assert!(!Arc::ptr_eq(&stale.unwrap(), &parents));
    }

    #[test]
    fn shrinks_after_a_mass_exit() {
        let mut t = ProcessTable::new(10_000_000);
        for pid in 0..50_000 {
            t.upsert(pid, u64::from(pid) * 10_000_000, None);
        }
        assert!(!t.shrink(), "full: nothing to give back");
        let big = t.by_pid.capacity();
        for pid in 100..50_000 {
            assert!(t.remove(pid, u64::from(pid) * 10_000_000).is_some());
        }
        assert!(t.shrink());
        assert!(
            t.by_pid.capacity() <= big / 8,
            "{} of {big}",
            t.by_pid.capacity()
        );
        assert_eq!(t.len(), 100);
        assert!(t.get(7, 70_000_000).is_some(), "the live ones are kept");
        assert!(!t.shrink(), "small tables are left alone");
    }

    #[test]
    fn seeds_from_this_machines_proc() {
        let mut t = ProcessTable::new(10_000_000);
        assert!(!t.seed_from_proc(Path::new("/proc")).is_empty());
        let me = t.get(std::process::id(), 0).unwrap();
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert_eq!(me.exe.as_deref(), Some(exe.to_str().unwrap()));
    }

    #[test]
    fn stat_with_parentheses_in_comm() {
        // A fake /proc with one process whose name has spaces and parentheses.
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("77");
        std::fs::create_dir(&dir).unwrap();
        let mut fields = vec!["0"; 50];
        fields[1] = "5"; // ppid
        fields[19] = "12345"; // starttime
        std::fs::write(
            dir.join("stat"),
            format!("77 (a) b (c) {}", fields.join(" ")),
        )
        .unwrap();
        assert_eq!(
            crate::identity::proc_start_in(root.path(), 77),
            Some((12345, 5))
        );
        let mut t = ProcessTable::new(10_000_000);
        assert_eq!(t.seed_from_proc(root.path()), vec![(77, 5)]);
        assert_eq!(t.get(77, 0).unwrap().start_ns, 12345 * 10_000_000);
    }

    #[test]
    fn recent_exits_find_the_latest_of_a_pid_and_forget_the_oldest() {
        let exit = |pid: u32, start_ns: u64| Exited {
            pid,
            start_ns,
            ppid: 1,
            parent_start_ns: 0,
            uid: 0,
            gid: 0,
            comm: [0; 16],
            exe: None,
            placement: Placement::NONE,
        };
        let mut r = RecentExits::default();
        r.record(exit(5, 1));
        r.record(exit(6, 1));
        r.record(exit(5, 2));
        assert_eq!(r.find(5).map(|e| e.start_ns), Some(2));
        assert_eq!(r.find(7), None);
        for i in 0..RecentExits::CAPACITY as u64 {
            r.record(exit(10, i));
        }
        assert_eq!(r.find(5), None, "pushed out");
        assert_eq!(
            r.find(10).map(|e| e.start_ns),
            Some(RecentExits::CAPACITY as u64 - 1)
        );
        r.record(exit(10, 99_999));
        assert_eq!(r.find(10).map(|e| e.start_ns), Some(99_999));
    }
}

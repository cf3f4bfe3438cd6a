//! The seam between the policy binder ([`super::kernel::Enforcement`]) and
//! the kernel's policy maps: [`Table`] is one map as the binder reads and
//! writes it. The daemon's tables are aya's maps ([`Tables::from`] the
//! loaded [`PolicyMaps`]); unit tests use [`fake`] tables in memory, so the
//! slot switch, the grace period, the repair of tampered entries and the
//! refusals are tested without a kernel.
//!
//! The binder is not on the per-event path (it runs at start-up, at a
//! reload, when a run starts or ends and in the one-second check), and each
//! call it makes through a table is a bpf(2) system call in the daemon: the
//! virtual call in front of it costs nothing measurable.

use aya::maps::{
    Array, HashMap as BpfHashMap, MapData, MapError, lpm_trie::Key, lpm_trie::LpmTrie,
};
use sensor_common::policy::{
    ExecKey, ExecRule, Net4Data, Net6Data, NetRule, PolicySlot, RunPolicy, UnixKey,
};

use super::kernel::PolicyMaps;

/// One kernel map, as the binder uses it.
pub trait Table<K, V>: Send {
    /// The value under `key` (a missing key is an error, as in the kernel).
    fn get(&self, key: &K) -> Result<V, MapError>;
    /// Writes `value` under `key` (one system call: atomic for the kernel).
    fn insert(&mut self, key: &K, value: &V) -> Result<(), MapError>;
    /// Deletes `key`.
    fn remove(&mut self, key: &K) -> Result<(), MapError>;
    /// Every entry (one that cannot be read is skipped).
    fn entries(&self) -> Box<dyn Iterator<Item = (K, V)> + '_>;
    /// Every key (one that cannot be read is skipped).
    fn keys(&self) -> Box<dyn Iterator<Item = K> + '_>;
}

/// The policy maps as the binder holds them.
pub struct Tables {
    /// `SNSR_POLICIES`: slot → {id, mode, max_processes} (an array: every
    /// slot exists; "removing" one writes it empty).
    pub slots: Box<dyn Table<u32, PolicySlot>>,
    /// `SNSR_RUN_POLICY`: run handle → its slot and counter run.
    pub run_policy: Box<dyn Table<u64, RunPolicy>>,
    /// `SNSR_RUN_LIVE`: live process counts (the kernel writes them).
    pub run_live: Box<dyn Table<u64, u64>>,
    /// `SNSR_EXEC_RULES`.
    pub exec_rules: Box<dyn Table<ExecKey, ExecRule>>,
    /// `SNSR_NET4_RULES`, keyed (prefix length, id ++ address).
    pub net4: Box<dyn Table<(u32, Net4Data), NetRule>>,
    /// `SNSR_NET6_RULES`, keyed (prefix length, id ++ address).
    pub net6: Box<dyn Table<(u32, Net6Data), NetRule>>,
    /// `SNSR_UNIX_RULES`.
    pub unix: Box<dyn Table<UnixKey, u32>>,
    /// `SNSR_UNIX_IDS`.
    pub unix_ids: Box<dyn Table<ExecKey, u32>>,
    /// `SNSR_RUN_TREE`: run → parent run.
    pub run_tree: Box<dyn Table<u64, u64>>,
    /// `SNSR_SENSOR_FILES`.
    pub sensor_files: Box<dyn Table<ExecKey, u32>>,
}

impl From<PolicyMaps> for Tables {
    fn from(m: PolicyMaps) -> Self {
        Self {
            slots: Box::new(m.slots),
            run_policy: Box::new(m.run_policy),
            run_live: Box::new(m.run_live),
            exec_rules: Box::new(m.exec_rules),
            net4: Box::new(m.net4),
            net6: Box::new(m.net6),
            unix: Box::new(m.unix),
            unix_ids: Box::new(m.unix_ids),
            run_tree: Box::new(m.run_tree),
            sensor_files: Box::new(m.sensor_files),
        }
    }
}

impl<K, V> Table<K, V> for BpfHashMap<MapData, K, V>
where
    K: aya::Pod + Send,
    V: aya::Pod + Send,
{
    fn get(&self, key: &K) -> Result<V, MapError> {
        BpfHashMap::get(self, key, 0)
    }

    fn insert(&mut self, key: &K, value: &V) -> Result<(), MapError> {
        BpfHashMap::insert(self, key, value, 0)
    }

    fn remove(&mut self, key: &K) -> Result<(), MapError> {
        BpfHashMap::remove(self, key)
    }

    fn entries(&self) -> Box<dyn Iterator<Item = (K, V)> + '_> {
        Box::new(self.iter().filter_map(Result::ok))
    }

    fn keys(&self) -> Box<dyn Iterator<Item = K> + '_> {
        Box::new(BpfHashMap::keys(self).filter_map(Result::ok))
    }
}

impl<V: aya::Pod + Default + Send> Table<u32, V> for Array<MapData, V> {
    fn get(&self, key: &u32) -> Result<V, MapError> {
        Array::get(self, key, 0)
    }

    fn insert(&mut self, key: &u32, value: &V) -> Result<(), MapError> {
        self.set(*key, value, 0)
    }

    /// An array entry cannot be deleted: it is written empty.
    fn remove(&mut self, key: &u32) -> Result<(), MapError> {
        self.set(*key, V::default(), 0)
    }

    fn entries(&self) -> Box<dyn Iterator<Item = (u32, V)> + '_> {
        Box::new((0..self.len()).filter_map(move |i| Array::get(self, &i, 0).ok().map(|v| (i, v))))
    }

    fn keys(&self) -> Box<dyn Iterator<Item = u32> + '_> {
        Box::new(0..self.len())
    }
}

impl<D: aya::Pod + Send> Table<(u32, D), NetRule> for LpmTrie<MapData, D, NetRule> {
    fn get(&self, key: &(u32, D)) -> Result<NetRule, MapError> {
        LpmTrie::get(self, &Key::new(key.0, key.1), 0)
    }

    fn insert(&mut self, key: &(u32, D), value: &NetRule) -> Result<(), MapError> {
        LpmTrie::insert(self, &Key::new(key.0, key.1), value, 0)
    }

    fn remove(&mut self, key: &(u32, D)) -> Result<(), MapError> {
        LpmTrie::remove(self, &Key::new(key.0, key.1))
    }

    fn entries(&self) -> Box<dyn Iterator<Item = ((u32, D), NetRule)> + '_> {
        Box::new(
            self.iter()
                .filter_map(Result::ok)
                .map(|(k, v)| ((k.prefix_len(), k.data()), v)),
        )
    }

    fn keys(&self) -> Box<dyn Iterator<Item = (u32, D)> + '_> {
        Box::new(
            LpmTrie::keys(self)
                .filter_map(Result::ok)
                .map(|k| (k.prefix_len(), k.data())),
        )
    }
}

/// Tables in memory, for unit tests: shared handles (the test keeps one to
/// look at or tamper with what the binder wrote), a bound on entries like
/// the kernel's `max_entries` (a full table refuses an insert with E2BIG, as
/// the kernel does), and one journal of every write in order.
#[cfg(test)]
pub mod fake {
    use std::{
        collections::BTreeMap,
        fmt::Debug,
        sync::{Arc, Mutex, MutexGuard},
    };

    use aya::maps::MapError;
    use sensor_common::limits::MAX_POLICIES;

    use super::{Table, Tables};

    /// One write, as the journal records it.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Write {
        Insert { map: &'static str, key: String },
        Remove { map: &'static str, key: String },
    }

    impl Write {
        /// The map written.
        #[must_use]
        pub fn map(&self) -> &'static str {
            match self {
                Self::Insert { map, .. } | Self::Remove { map, .. } => map,
            }
        }
    }

    /// Every write to any table of one [`FakeMaps`], in order.
    pub type Journal = Arc<Mutex<Vec<Write>>>;

    struct Inner<K, V> {
        entries: BTreeMap<K, V>,
        capacity: usize,
        /// An array: every index exists, and a removed one is written empty.
        array: bool,
    }

    /// One table in memory.
    pub struct FakeTable<K, V> {
        name: &'static str,
        inner: Arc<Mutex<Inner<K, V>>>,
        journal: Journal,
    }

    impl<K, V> Clone for FakeTable<K, V> {
        fn clone(&self) -> Self {
            Self {
                name: self.name,
                inner: Arc::clone(&self.inner),
                journal: Arc::clone(&self.journal),
            }
        }
    }

    fn e2big() -> MapError {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_update_elem",
            io_error: std::io::Error::from_raw_os_error(nix::libc::E2BIG),
        })
    }

    fn enoent() -> MapError {
        MapError::SyscallError(aya::sys::SyscallError {
            call: "bpf_map_lookup_elem",
            io_error: std::io::Error::from_raw_os_error(nix::libc::ENOENT),
        })
    }

    impl<K: Ord + Clone, V: Clone> FakeTable<K, V> {
        fn new(name: &'static str, capacity: usize, journal: &Journal) -> Self {
            Self {
                name,
                inner: Arc::new(Mutex::new(Inner {
                    entries: BTreeMap::new(),
                    capacity,
                    array: false,
                })),
                journal: Arc::clone(journal),
            }
        }

        fn lock(&self) -> MutexGuard<'_, Inner<K, V>> {
            self.inner
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
        }

        /// What the table holds.
        #[must_use]
        pub fn snapshot(&self) -> BTreeMap<K, V> {
            self.lock().entries.clone()
        }

        /// Writes behind the binder's back (someone with `bpftool`).
        pub fn tamper_insert(&self, key: K, value: V) {
            self.lock().entries.insert(key, value);
        }

        /// Deletes behind the binder's back.
        pub fn tamper_remove(&self, key: &K) {
            self.lock().entries.remove(key);
        }

        /// How many entries the table takes (the kernel's `max_entries`).
        pub fn set_capacity(&self, capacity: usize) {
            self.lock().capacity = capacity;
        }
    }

    impl<K, V> Table<K, V> for FakeTable<K, V>
    where
        K: Ord + Clone + Debug + Send,
        V: Clone + Default + Send,
    {
        fn get(&self, key: &K) -> Result<V, MapError> {
            self.lock().entries.get(key).cloned().ok_or_else(enoent)
        }

        fn insert(&mut self, key: &K, value: &V) -> Result<(), MapError> {
            let mut inner = self.lock();
            if !inner.entries.contains_key(key) && inner.entries.len() >= inner.capacity {
                return Err(e2big());
            }
            inner.entries.insert(key.clone(), value.clone());
            drop(inner);
            self.journal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Write::Insert {
                    map: self.name,
                    key: format!("{key:?}"),
                });
            Ok(())
        }

        fn remove(&mut self, key: &K) -> Result<(), MapError> {
            let mut inner = self.lock();
            let had = if inner.array {
                // An array entry cannot go: it is written empty.
                inner.entries.insert(key.clone(), V::default()).is_some()
            } else {
                inner.entries.remove(key).is_some()
            };
            drop(inner);
            self.journal
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(Write::Remove {
                    map: self.name,
                    key: format!("{key:?}"),
                });
            if had { Ok(()) } else { Err(enoent()) }
        }

        fn entries(&self) -> Box<dyn Iterator<Item = (K, V)> + '_> {
            let all: Vec<(K, V)> = self
                .lock()
                .entries
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Box::new(all.into_iter())
        }

        fn keys(&self) -> Box<dyn Iterator<Item = K> + '_> {
            Box::new(
                self.entries()
                    .map(|(k, _)| k)
                    .collect::<Vec<_>>()
                    .into_iter(),
            )
        }
    }

    /// A set of policy tables in memory, and the handles a test keeps.
    pub struct FakeMaps {
        pub journal: Journal,
        pub slots: FakeTable<u32, sensor_common::policy::PolicySlot>,
        pub run_policy: FakeTable<u64, sensor_common::policy::RunPolicy>,
        pub run_live: FakeTable<u64, u64>,
        pub exec_rules: FakeTable<sensor_common::policy::ExecKey, sensor_common::policy::ExecRule>,
        pub net4: FakeTable<(u32, sensor_common::policy::Net4Data), sensor_common::policy::NetRule>,
        pub net6: FakeTable<(u32, sensor_common::policy::Net6Data), sensor_common::policy::NetRule>,
        pub unix: FakeTable<sensor_common::policy::UnixKey, u32>,
        pub unix_ids: FakeTable<sensor_common::policy::ExecKey, u32>,
        pub run_tree: FakeTable<u64, u64>,
        pub sensor_files: FakeTable<sensor_common::policy::ExecKey, u32>,
    }

    impl Default for FakeMaps {
        fn default() -> Self {
            Self::new()
        }
    }

    impl FakeMaps {
        /// Empty tables, sized generously (`set_capacity` to fill one).
        #[must_use]
        pub fn new() -> Self {
            let journal = Journal::default();
            let many = 1 << 16;
            let slots = FakeTable::new("SNSR_POLICIES", MAX_POLICIES as usize, &journal);
            {
                let mut inner = slots.lock();
                inner.array = true;
                inner.entries = (0..MAX_POLICIES)
                    .map(|i| (i, sensor_common::policy::PolicySlot::default()))
                    .collect();
            }
            Self {
                slots,
                run_policy: FakeTable::new("SNSR_RUN_POLICY", many, &journal),
                run_live: FakeTable::new("SNSR_RUN_LIVE", many, &journal),
                exec_rules: FakeTable::new("SNSR_EXEC_RULES", many, &journal),
                net4: FakeTable::new("SNSR_NET4_RULES", many, &journal),
                net6: FakeTable::new("SNSR_NET6_RULES", many, &journal),
                unix: FakeTable::new("SNSR_UNIX_RULES", many, &journal),
                unix_ids: FakeTable::new("SNSR_UNIX_IDS", many, &journal),
                run_tree: FakeTable::new("SNSR_RUN_TREE", many, &journal),
                sensor_files: FakeTable::new("SNSR_SENSOR_FILES", many, &journal),
                journal,
            }
        }

        /// The binder's tables, sharing these handles' contents.
        #[must_use]
        pub fn tables(&self) -> Tables {
            Tables {
                slots: Box::new(self.slots.clone()),
                run_policy: Box::new(self.run_policy.clone()),
                run_live: Box::new(self.run_live.clone()),
                exec_rules: Box::new(self.exec_rules.clone()),
                net4: Box::new(self.net4.clone()),
                net6: Box::new(self.net6.clone()),
                unix: Box::new(self.unix.clone()),
                unix_ids: Box::new(self.unix_ids.clone()),
                run_tree: Box::new(self.run_tree.clone()),
                sensor_files: Box::new(self.sensor_files.clone()),
            }
        }

        /// The writes so far, and forgets them.
        pub fn take_writes(&self) -> Vec<Write> {
            std::mem::take(
                &mut *self
                    .journal
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        }
    }
}

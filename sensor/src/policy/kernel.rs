//! The kernel's policy maps, kept in step with the loaded policies and runs.
//!
//! Every policy gets a fresh id per load; its rules are written under that
//! id, then its slot is switched to it in one array update, and the rules of
//! the id it replaced are deleted a grace period later (a program that read
//! the old id just before the switch still finds its rules). A check
//! therefore always sees one complete policy, old or new: a reload opens no
//! window. At start-up the policies go into slots unused by the previous
//! daemon's (whose runs are still enforced through the pinned maps); runs
//! are re-bound to the new slots one atomic update each, then the old slots
//! are emptied.
//!
//! Anyone with root can write the pinned maps too (`bpftool map update
//! pinned …`). [`Enforcement::verify`], every second, compares the maps with
//! what this daemon wrote and writes back whatever differs (see there).

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    time::{Duration, Instant},
};

use aya::maps::{Array, HashMap as BpfHashMap, MapData, MapError, lpm_trie::LpmTrie};
use sensor_common::{
    limits::MAX_POLICIES,
    policy::{
        Decision, EXEC_DIR, EXEC_FILE, EXEC_GLOB, ExecKey, ExecRule, LOADER_POLICY_ID, MODE_AUDIT,
        MODE_ENFORCE, MODE_NONE, Net4Data, Net6Data, NetRule, PolicySlot, RunPolicy, UnixKey,
        VERDICT_ALLOW, VERDICT_DENY,
    },
};

use super::{ExecTarget, FileId, Mode, Policies, Policy, Verdict, resolve, tables::Tables};
use crate::tamper::{self, Tamper};

/// How long replaced rules stay in the maps after their slot moved on.
const GRACE: Duration = Duration::from_secs(1);

/// Rule entries [`Enforcement::verify`] compares per call at most, on
/// average: policies with more rules have them compared every few calls
/// (seconds) instead, bounding the check to a few milliseconds a second. The
/// policy slots and run bindings, which decide whether anything is
/// enforced at all, are compared on every call.
const RULES_PER_VERIFY: usize = 8192;

/// Without a bpf(2) call by another process that can change a map, the
/// policy maps are compared this often (see [`Enforcement::verify`]).
pub const COMPARE_QUIET_EVERY: Duration = Duration::from_secs(10);

/// The pinned policy maps, taken from the loaded object (the binder holds
/// them as [`Tables`]).
pub struct PolicyMaps {
    pub slots: Array<MapData, PolicySlot>,
    pub run_policy: BpfHashMap<MapData, u64, RunPolicy>,
    pub run_live: BpfHashMap<MapData, u64, u64>,
    pub exec_rules: BpfHashMap<MapData, ExecKey, ExecRule>,
    pub net4: LpmTrie<MapData, Net4Data, NetRule>,
    pub net6: LpmTrie<MapData, Net6Data, NetRule>,
    pub unix: BpfHashMap<MapData, UnixKey, u32>,
    pub unix_ids: BpfHashMap<MapData, ExecKey, u32>,
    /// Run → parent run, for the tamper checks (every run, policy or not).
    pub run_tree: BpfHashMap<MapData, u64, u64>,
    /// The sensor's files and directories (identity → `SENSOR_FILE_*`).
    pub sensor_files: BpfHashMap<MapData, ExecKey, u32>,
}

/// The entries one policy id owns in the rule maps.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct RuleSet {
    id: u32,
    exec: BTreeMap<ExecKey, ExecRule>,
    net4: BTreeMap<(u32, Net4Data), NetRule>,
    net6: BTreeMap<(u32, Net6Data), NetRule>,
    unix: BTreeMap<UnixKey, u32>,
    unix_ids: BTreeMap<ExecKey, u32>,
}

/// The sensor's control socket, which every policy allows: its address and
/// its socket file's identity.
#[derive(Debug, Clone, Default)]
pub struct SensorSocket {
    pub address: Vec<u8>,
    pub id: Option<FileId>,
}

impl SensorSocket {
    /// The control socket at `path` (bound already).
    #[must_use]
    pub fn at(path: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt as _;
        Self {
            address: path.as_os_str().as_bytes().to_vec(),
            id: FileId::of(path).ok(),
        }
    }
}

/// The `unix.allow` address entries of one policy exactly as [`Enforcement`]
/// writes them to `SNSR_UNIX_RULES` (the sensor's control socket included),
/// for `sensor policy test`: a stored Unix connect is decided by looking its
/// address up here, as the kernel's `connect_unix` hook looks it up there.
#[derive(Debug, Clone, Default)]
pub struct UnixAddresses {
    entries: BTreeMap<UnixKey, u32>,
}

impl UnixAddresses {
    /// Policy id of the entries (any id: they are only looked up here).
    const ID: u32 = 1;

    /// The entries of `policy` with each of `sensors` as the control socket
    /// (the daemon writes one; a replay may know several).
    #[must_use]
    pub fn of(policy: &Policy, sensors: &[SensorSocket]) -> Self {
        let mut entries = rule_set(policy, Self::ID, &SensorSocket::default()).unix;
        for sensor in sensors {
            entries.extend(rule_set(policy, Self::ID, sensor).unix);
        }
        Self { entries }
    }

    /// The rule index that allows address `bytes` (a path, or a NUL and an
    /// abstract name), or `None`: the kernel's decision is then
    /// [`sensor_common::policy::RULE_NO_MATCH`].
    #[must_use]
    pub fn rule(&self, bytes: &[u8]) -> Option<u32> {
        let key = unix_key(Self::ID, bytes)?;
        self.entries.get(&key).copied()
    }
}

/// The kernel key of Unix address `bytes` under policy `id` (too long: none).
fn unix_key(id: u32, bytes: &[u8]) -> Option<UnixKey> {
    let mut key = UnixKey {
        policy: id,
        len: u32::try_from(bytes.len()).ok()?,
        path: [0; sensor_common::event::UNIX_PATH_BYTES],
    };
    key.path.get_mut(..bytes.len())?.copy_from_slice(bytes);
    Some(key)
}

/// A policy as the kernel knows it: what decisions under its id mean.
#[derive(Debug, Clone)]
struct Installed {
    policy: Policy,
    rules: RuleSet,
}

/// Why the kernel maps could not be updated.
#[derive(Debug, thiserror::Error)]
pub enum EnforcementError {
    #[error("kernel policy map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: MapError,
    },
    #[error("no free policy slot (at most {MAX_POLICIES} policies, two generations of each)")]
    NoSlot,
    #[error("policy {0:?} is not loaded")]
    Unknown(String),
    #[error("an enforce policy cannot be enforced on this kernel ({0}); see `sensor doctor`")]
    Incapable(String),
}

impl EnforcementError {
    /// Whether a kernel map was full (the insert failed with E2BIG).
    #[must_use]
    pub fn is_full(&self) -> bool {
        matches!(
            self,
            Self::Map {
                source: MapError::SyscallError(e),
                ..
            } if e.io_error.raw_os_error() == Some(nix::libc::E2BIG)
        )
    }
}

/// Why a run was refused when its policy could not be bound in the kernel
/// (the run is refused rather than started unenforced).
#[derive(Debug, thiserror::Error)]
pub enum BindRefusal {
    #[error(
        "the kernel's run→policy map is full ([limits] policy_runs): policy {policy:?} could \
         not be bound, so the run is refused rather than started unenforced"
    )]
    Full { policy: String },
    /// The kernel's message is part of this one (not a source), as it has
    /// always been answered.
    #[error(
        "policy {policy:?} could not be bound in the kernel ({error}); the run is refused rather \
         than started unenforced"
    )]
    Failed {
        policy: String,
        error: EnforcementError,
    },
}

impl BindRefusal {
    /// The refusal of binding a run to `policy` (`None`: no policy).
    #[must_use]
    pub fn new(error: EnforcementError, policy: Option<&str>) -> Self {
        let policy = policy.unwrap_or("(none)").to_owned();
        if error.is_full() {
            Self::Full { policy }
        } else {
            Self::Failed { policy, error }
        }
    }
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> EnforcementError {
    move |source| EnforcementError::Map { map, source }
}

/// The rule-map entries of `policy` under `id`.
fn rule_set(policy: &Policy, id: u32, sensor: &SensorSocket) -> RuleSet {
    let mut set = RuleSet {
        id,
        ..RuleSet::default()
    };
    for (i, rule) in policy.exec.iter().enumerate() {
        let index = u32::try_from(i).unwrap_or(u32::MAX);
        let mut add = |file: &FileId, kind, ctime: Option<resolve::Ctime>, mnt_id| {
            let key = ExecKey {
                policy: id,
                dev: file.kernel_dev(),
                ino: file.ino,
            };
            let (ctime_sec, ctime_nsec) = ctime.unwrap_or_default();
            // The first rule naming an identity decides, as in user space.
            set.exec.entry(key).or_insert(ExecRule {
                rule: index,
                kind,
                ctime_sec,
                ctime_nsec,
                mnt_id,
            });
        };
        match &rule.target {
            ExecTarget::File {
                id: Some(file),
                ctime,
                ..
            } => add(file, EXEC_FILE, *ctime, 0),
            ExecTarget::File { id: None, .. } => {}
            ExecTarget::Dir(dir) => add(&dir.id, EXEC_DIR, None, dir.mnt_id),
            ExecTarget::Glob { ids, .. } => ids.iter().for_each(|f| add(f, EXEC_GLOB, None, 0)),
            ExecTarget::DirGlob(dirs) => dirs
                .iter()
                .for_each(|d| add(&d.id, EXEC_DIR, None, d.mnt_id)),
        }
    }
    let first = u32::try_from(policy.exec.len()).unwrap_or(u32::MAX);
    // Checked when the policy loaded; an address added since that overflows is dropped.
    let prefixes = super::net::fold(&policy.connect, first).unwrap_or_else(|e| {
        tracing::error!(policy = %policy.name, error = %e, "connect rules do not fit the kernel maps");
        super::net::Prefixes::default()
    });
    let mut unix_rule = |bytes: &[u8], ids: &[FileId], rule: u32| {
        if let Some(key) = unix_key(id, bytes) {
            set.unix.entry(key).or_insert(rule);
        }
        for file in ids {
            let key = ExecKey {
                policy: id,
                dev: file.kernel_dev(),
                ino: file.ino,
            };
            set.unix_ids.entry(key).or_insert(rule);
        }
    };
    unix_rule(
        &sensor.address,
        &sensor.id.into_iter().collect::<Vec<_>>(),
        sensor_common::policy::RULE_SENSOR_SOCKET,
    );
    for (rule, unix) in policy.unix_rules() {
        let resolved = unix.resolved();
        for address in &resolved.addresses {
            unix_rule(address, &resolved.ids, rule);
        }
    }
    let id_be = id.to_be_bytes();
    for ((addr, prefix), entry) in prefixes.v4 {
        let mut data = [0u8; 8];
        data[..4].copy_from_slice(&id_be);
        data[4..].copy_from_slice(&addr);
        set.net4.insert((32 + u32::from(prefix), data), entry);
    }
    for ((addr, prefix), entry) in prefixes.v6 {
        let mut data = [0u8; 20];
        data[..4].copy_from_slice(&id_be);
        data[4..].copy_from_slice(&addr);
        set.net6.insert((32 + u32::from(prefix), data), entry);
    }
    set
}

/// Whether a run under `policy` may open a raw, ICMP or packet socket: the
/// flag of the slot the daemon writes for it, as the kernel's socket hook
/// tests it (`sensor policy test` replays stored `network.socket` events
/// with it).
#[must_use]
pub fn raw_sockets_allowed(policy: &Policy) -> bool {
    slot_value(policy, 0).flags & sensor_common::policy::SLOT_RAW_SOCKETS != 0
}

fn slot_value(policy: &Policy, id: u32) -> PolicySlot {
    PolicySlot {
        id,
        mode: match policy.mode {
            Mode::Audit => MODE_AUDIT,
            Mode::Enforce => MODE_ENFORCE,
        },
        max_processes: policy.max_processes.unwrap_or(0),
        flags: if policy.raw_sockets {
            sensor_common::policy::SLOT_RAW_SOCKETS
        } else {
            0
        },
    }
}

/// Keeps the kernel's policy maps in step with the policies and runs.
pub struct Enforcement {
    maps: Tables,
    /// This daemon's slot per policy name.
    slot_of: BTreeMap<String, u32>,
    /// What is in force per name.
    installed: BTreeMap<String, Installed>,
    /// Every id this daemon installed, for naming decisions (older ones
    /// stay: events decided under them may still be in the ring).
    by_id: HashMap<u32, Policy>,
    next_id: u32,
    /// Rule sets to delete once their grace period is over.
    retired: Vec<(Instant, RuleSet)>,
    /// Slots and ids of a previous daemon, emptied by [`Self::release_previous`].
    previous: Vec<(u32, u32)>,
    /// Why enforcement does not work on this kernel, if the self-test failed.
    incapable: Option<String>,
    /// The control socket every policy allows.
    sensor_socket: SensorSocket,
    /// Every run binding this daemon wrote (what `SNSR_RUN_POLICY` must hold).
    bound: HashMap<u64, RunPolicy>,
    /// The dynamic loader identities (policy id 0) this daemon wrote.
    loaders: BTreeMap<ExecKey, ExecRule>,
    /// Comparisons [`Self::verify`] made so far.
    verified: u64,
    /// The kernel's count of other processes' bpf(2) calls that can change
    /// a map, as the last comparison began, and when that was.
    compared: Option<(u64, Instant)>,
    /// What the ids of earlier daemons stood for, and where this daemon
    /// keeps its own for the next one (see [`IdNames`]).
    id_names: IdNames,
}

/// What each policy id a daemon installed stood for: its policy's name and
/// version and the text of each of its rules. Kept in the state dir
/// (`policy_ids.json`), because records the kernel decided under a previous
/// daemon's ids are read after a restart (recorded while no daemon read)
/// and must still name their policy and rule.
#[derive(Debug, Default)]
pub struct IdNames {
    path: Option<std::path::PathBuf>,
    known: BTreeMap<u32, IdName>,
}

/// One id's entry in [`IdNames`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IdName {
    pub name: String,
    pub version: u64,
    /// Rule index (or special rule number) → its text.
    pub rules: BTreeMap<u32, String>,
}

/// Ids kept in [`IdNames`] (the newest): a daemon installs a few per
/// reload, and records of older ones are long out of the ring.
const ID_NAMES_KEPT: usize = 256;

impl IdNames {
    /// Reads `path` (absent or unreadable: nothing known, warned).
    #[must_use]
    pub fn open(path: std::path::PathBuf) -> Self {
        let known = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(path = %path.display(), error = %e, "unreadable policy id names; \
                    verdicts recorded under a previous daemon's policies will not be named");
                BTreeMap::new()
            }),
            Err(_) => BTreeMap::new(),
        };
        Self {
            path: Some(path),
            known,
        }
    }

    /// What id `id` stood for, if known.
    #[must_use]
    pub fn get(&self, id: u32) -> Option<&IdName> {
        self.known.get(&id)
    }

    fn remember(&mut self, id: u32, policy: &Policy) {
        use sensor_common::policy::{
            RULE_LOADER, RULE_MAX_PROCESSES, RULE_NO_MATCH, RULE_RAW_SOCKET, RULE_SENSOR_SOCKET,
            RULE_TAMPER, RULE_UNIX_IDENTITY,
        };
        let specials = [
            RULE_MAX_PROCESSES,
            RULE_LOADER,
            RULE_NO_MATCH,
            RULE_UNIX_IDENTITY,
            RULE_SENSOR_SOCKET,
            RULE_TAMPER,
            RULE_RAW_SOCKET,
        ];
        let rules = (0..u32::try_from(policy.rule_count()).unwrap_or(u32::MAX))
            .chain(specials)
            .map(|r| (r, policy.rule_text(r)))
            .collect();
        self.known.insert(
            id,
            IdName {
                name: policy.name.clone(),
                version: policy.version,
                rules,
            },
        );
        while self.known.len() > ID_NAMES_KEPT {
            self.known.pop_first();
        }
    }

    fn save(&self) {
        let Some(path) = &self.path else { return };
        let tmp = path.with_extension("tmp");
        let written = serde_json::to_vec(&self.known)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the policy id names");
        }
    }

    /// The verdict a kernel decision stands for, named from what its id
    /// stood for (a replay of recorded records, without kernel maps).
    #[must_use]
    pub fn describe_decision(&self, d: &Decision, list: &str) -> Option<Verdict> {
        let verdict = match d.verdict {
            VERDICT_ALLOW => crate::event::Decision::Allow,
            VERDICT_DENY => crate::event::Decision::Deny,
            _ => return None,
        };
        self.describe(d, verdict, list)
    }

    /// The verdict of decision `d` under an id of an earlier daemon.
    fn describe(
        &self,
        d: &Decision,
        verdict: crate::event::Decision,
        list: &str,
    ) -> Option<Verdict> {
        let known = self.known.get(&d.policy)?;
        let rule = match d.rule {
            sensor_common::policy::RULE_NO_MATCH => format!("{list} (no rule matches)"),
            r => known
                .rules
                .get(&r)
                .cloned()
                .unwrap_or_else(|| format!("(rule {r})")),
        };
        Some(Verdict {
            name: known.name.clone(),
            verdict,
            rule,
            enforced: d.enforced != 0,
            version: known.version,
        })
    }
}

impl Enforcement {
    /// Names the ids of earlier daemons from `names`, and keeps this
    /// daemon's there.
    pub fn remember_ids(&mut self, names: IdNames) {
        self.id_names = names;
    }

    /// Takes over the pinned maps: notes the previous daemon's slots (still
    /// enforcing its runs) and writes this machine's dynamic loader identities.
    pub fn open(maps: PolicyMaps) -> Result<Self, EnforcementError> {
        Self::open_tables(Tables::from(maps))
    }

    /// [`Self::open`] on any tables (in memory in unit tests).
    pub fn open_tables(mut maps: Tables) -> Result<Self, EnforcementError> {
        let mut previous = Vec::new();
        let mut next_id = 1;
        for slot in 0..MAX_POLICIES {
            let value = maps.slots.get(&slot).map_err(map_err("SNSR_POLICIES"))?;
            if value.mode != MODE_NONE {
                previous.push((slot, value.id));
                next_id = next_id.max(value.id.wrapping_add(1));
            }
        }
        // Stale loader entries (another machine image, an upgraded libc) go.
        let loaders: BTreeSet<ExecKey> = resolve::loaders()
            .iter()
            .map(|f| ExecKey {
                policy: LOADER_POLICY_ID,
                dev: f.kernel_dev(),
                ino: f.ino,
            })
            .collect();
        let stale: Vec<ExecKey> = maps
            .exec_rules
            .keys()
            .filter(|k| k.policy == LOADER_POLICY_ID && !loaders.contains(k))
            .collect();
        for key in stale {
            let _ = maps.exec_rules.remove(&key);
        }
        let loaders: BTreeMap<ExecKey, ExecRule> = loaders
            .into_iter()
            .map(|key| {
                let rule = ExecRule {
                    rule: 0,
                    kind: EXEC_FILE,
                    ..ExecRule::default()
                };
                (key, rule)
            })
            .collect();
        for (key, rule) in &loaders {
            maps.exec_rules
                .insert(key, rule)
                .map_err(map_err("SNSR_EXEC_RULES"))?;
        }
        tracing::debug!(
            loaders = loaders.len(),
            previous = previous.len(),
            "policy maps opened"
        );
        Ok(Self {
            maps,
            slot_of: BTreeMap::new(),
            installed: BTreeMap::new(),
            by_id: HashMap::new(),
            next_id: next_id.max(1),
            retired: Vec::new(),
            previous,
            incapable: None,
            sensor_socket: SensorSocket::default(),
            bound: HashMap::new(),
            loaders,
            verified: 0,
            compared: None,
            id_names: IdNames::default(),
        })
    }

    fn fresh_id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        id
    }

    fn free_slot(&self) -> Result<u32, EnforcementError> {
        let used: BTreeSet<u32> = self
            .slot_of
            .values()
            .copied()
            .chain(self.previous.iter().map(|(s, _)| *s))
            .collect();
        (0..MAX_POLICIES)
            .find(|s| !used.contains(s))
            .ok_or(EnforcementError::NoSlot)
    }

    fn write_rules(&mut self, set: &RuleSet) -> Result<(), EnforcementError> {
        for (k, v) in &set.exec {
            self.maps
                .exec_rules
                .insert(k, v)
                .map_err(map_err("SNSR_EXEC_RULES"))?;
        }
        for ((len, data), v) in &set.net4 {
            self.maps
                .net4
                .insert(&(*len, *data), v)
                .map_err(map_err("SNSR_NET4_RULES"))?;
        }
        for ((len, data), v) in &set.net6 {
            self.maps
                .net6
                .insert(&(*len, *data), v)
                .map_err(map_err("SNSR_NET6_RULES"))?;
        }
        for (k, v) in &set.unix {
            self.maps
                .unix
                .insert(k, v)
                .map_err(map_err("SNSR_UNIX_RULES"))?;
        }
        for (k, v) in &set.unix_ids {
            self.maps
                .unix_ids
                .insert(k, v)
                .map_err(map_err("SNSR_UNIX_IDS"))?;
        }
        Ok(())
    }

    /// Deletes the entries of `set` that `keep` does not also hold.
    fn delete_rules(&mut self, set: &RuleSet, keep: Option<&RuleSet>) {
        for k in set.exec.keys() {
            if !keep.is_some_and(|s| s.exec.contains_key(k)) {
                let _ = self.maps.exec_rules.remove(k);
            }
        }
        for (len, data) in set.net4.keys() {
            if !keep.is_some_and(|s| s.net4.contains_key(&(*len, *data))) {
                let _ = self.maps.net4.remove(&(*len, *data));
            }
        }
        for (len, data) in set.net6.keys() {
            if !keep.is_some_and(|s| s.net6.contains_key(&(*len, *data))) {
                let _ = self.maps.net6.remove(&(*len, *data));
            }
        }
        for k in set.unix.keys() {
            if !keep.is_some_and(|s| s.unix.contains_key(k)) {
                let _ = self.maps.unix.remove(k);
            }
        }
        for k in set.unix_ids.keys() {
            if !keep.is_some_and(|s| s.unix_ids.contains_key(k)) {
                let _ = self.maps.unix_ids.remove(k);
            }
        }
    }

    /// The control socket every policy allows (set before [`Self::install`]).
    pub fn set_sensor_socket(&mut self, socket: SensorSocket) {
        self.sensor_socket = socket;
    }

    /// Records the self-test's finding: `Some(why)` when this kernel does not
    /// enforce, so enforce policies are refused instead of silently audited.
    pub fn set_capability(&mut self, why_not: Option<String>) {
        self.incapable = why_not;
    }

    /// Puts `policies` in force: each under a fresh id, switched in with one
    /// slot update. Policies no longer present are emptied (the caller
    /// refuses to drop a policy live runs are bound to). On error, what was
    /// in force stays in force.
    pub fn install(&mut self, policies: &Policies) -> Result<(), EnforcementError> {
        if let (true, Some(why)) = (policies.enforcing(), &self.incapable) {
            return Err(EnforcementError::Incapable(why.clone()));
        }
        let now = Instant::now();
        let mut staged = Vec::new();
        for policy in policies.iter() {
            let id = self.fresh_id();
            let set = rule_set(policy, id, &self.sensor_socket);
            if let Err(e) = self.write_rules(&set) {
                for (_, _, s) in &staged {
                    self.delete_rules(s, None);
                }
                self.delete_rules(&set, None);
                return Err(e);
            }
            staged.push((policy.clone(), id, set));
        }
        // Slots for new names first, so that running out switches nothing.
        let mut added = Vec::new();
        for (policy, _, _) in &staged {
            if self.slot_of.contains_key(&policy.name) {
                continue;
            }
            match self.free_slot() {
                Ok(s) => {
                    self.slot_of.insert(policy.name.clone(), s);
                    added.push(policy.name.clone());
                }
                Err(e) => {
                    for name in &added {
                        self.slot_of.remove(name);
                    }
                    for (_, _, set) in &staged {
                        self.delete_rules(set, None);
                    }
                    return Err(e);
                }
            }
        }
        // Every new rule set is complete: switch the slots.
        for (policy, id, set) in staged {
            let Some(&slot) = self.slot_of.get(&policy.name) else {
                continue;
            };
            self.maps
                .slots
                .insert(&slot, &slot_value(&policy, id))
                .map_err(map_err("SNSR_POLICIES"))?;
            self.by_id.insert(id, policy.clone());
            self.id_names.remember(id, &policy);
            let name = policy.name.clone();
            if let Some(old) = self
                .installed
                .insert(name, Installed { policy, rules: set })
            {
                self.retired.push((now + GRACE, old.rules));
            }
        }
        let gone: Vec<String> = self
            .installed
            .keys()
            .filter(|n| !policies.contains(n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(slot) = self.slot_of.remove(&name) {
                let _ = self.maps.slots.insert(&slot, &PolicySlot::default());
            }
            if let Some(old) = self.installed.remove(&name) {
                self.retired.push((now + GRACE, old.rules));
            }
        }
        self.id_names.save();
        Ok(())
    }

    /// Re-writes the rules of `policy` (same id) after its files or host
    /// names resolved differently: new entries first, then stale ones go.
    pub fn update(&mut self, policy: &Policy) -> Result<(), EnforcementError> {
        let Some(current) = self.installed.get(&policy.name) else {
            return Err(EnforcementError::Unknown(policy.name.clone()));
        };
        let id = current.rules.id;
        let old = current.rules.clone();
        let new = rule_set(policy, id, &self.sensor_socket);
        if new == old {
            return Ok(());
        }
        self.write_rules(&new)?;
        self.delete_rules(&old, Some(&new));
        self.by_id.insert(id, policy.clone());
        self.id_names.remember(id, policy);
        self.id_names.save();
        self.installed.insert(
            policy.name.clone(),
            Installed {
                policy: policy.clone(),
                rules: new,
            },
        );
        Ok(())
    }

    /// Binds run `handle` to `policy` (or unbinds it with `None`). Its
    /// processes count against `max_processes` with those of its parent run
    /// when the parent is bound too (one counter per tree).
    pub fn bind(
        &mut self,
        handle: u64,
        policy: Option<&str>,
        parent: Option<u64>,
    ) -> Result<(), EnforcementError> {
        // Every run's place in the tree (the tamper checks), policy or not.
        self.maps
            .run_tree
            .insert(&handle, &parent.unwrap_or(0))
            .map_err(map_err("SNSR_RUN_TREE"))?;
        let Some(name) = policy else {
            self.bound.remove(&handle);
            let _ = self.maps.run_policy.remove(&handle);
            let _ = self.maps.run_live.remove(&handle);
            return Ok(());
        };
        let slot = *self
            .slot_of
            .get(name)
            .ok_or_else(|| EnforcementError::Unknown(name.to_owned()))?;
        let count_run = parent
            .and_then(|p| self.maps.run_policy.get(&p).ok())
            .map_or(handle, |p| p.count_run);
        let binding = RunPolicy {
            slot,
            _pad: 0,
            count_run,
        };
        self.maps
            .run_policy
            .insert(&handle, &binding)
            .map_err(map_err("SNSR_RUN_POLICY"))?;
        self.bound.insert(handle, binding);
        Ok(())
    }

    /// Forgets run `handle` (it ended).
    pub fn unbind(&mut self, handle: u64) {
        self.bound.remove(&handle);
        let _ = self.maps.run_policy.remove(&handle);
        let _ = self.maps.run_live.remove(&handle);
        let _ = self.maps.run_tree.remove(&handle);
    }

    /// Tells the kernel which files and directories are the sensor's: an
    /// open of one (or of anything below a directory) for writing by a
    /// process of a run is `sensor.tamper`.
    pub fn protect(&mut self, files: &[(std::path::PathBuf, u32)]) {
        for (path, kind) in files {
            match FileId::of(path) {
                Ok(id) => {
                    let key = ExecKey {
                        policy: 0,
                        dev: id.kernel_dev(),
                        ino: id.ino,
                    };
                    if let Err(e) = self.maps.sensor_files.insert(&key, kind) {
                        tracing::warn!(path = %path.display(), error = %e, "cannot watch a sensor file for tampering");
                    }
                }
                Err(e) => {
                    tracing::debug!(path = %path.display(), error = %e, "sensor file not watched");
                }
            }
        }
    }

    /// Run handles bound in the kernel (a previous daemon's included).
    #[must_use]
    pub fn bound_runs(&self) -> Vec<u64> {
        self.maps.run_policy.keys().collect()
    }

    /// Empties the previous daemon's slots and rules, once every live run
    /// is bound to this daemon's.
    pub fn release_previous(&mut self) {
        let previous = std::mem::take(&mut self.previous);
        if previous.is_empty() {
            return;
        }
        let ids: BTreeSet<u32> = previous.iter().map(|(_, id)| *id).collect();
        let mine: BTreeSet<u32> = self.slot_of.values().copied().collect();
        for (slot, _) in &previous {
            if !mine.contains(slot) {
                let _ = self.maps.slots.insert(slot, &PolicySlot::default());
            }
        }
        let exec: Vec<ExecKey> = self
            .maps
            .exec_rules
            .keys()
            .filter(|k| ids.contains(&k.policy))
            .collect();
        let net4: Vec<(u32, Net4Data)> = self
            .maps
            .net4
            .keys()
            .filter(|k| ids.contains(&id_of(&k.1)))
            .collect();
        let net6: Vec<(u32, Net6Data)> = self
            .maps
            .net6
            .keys()
            .filter(|k| ids.contains(&id_of(&k.1)))
            .collect();
        let unix: Vec<UnixKey> = self
            .maps
            .unix
            .keys()
            .filter(|k| ids.contains(&k.policy))
            .collect();
        let unix_ids: Vec<ExecKey> = self
            .maps
            .unix_ids
            .keys()
            .filter(|k| ids.contains(&k.policy))
            .collect();
        // A check that read an old slot just before it was emptied may still
        // be looking its rules up: give it far more than it needs (µs).
        std::thread::sleep(Duration::from_millis(10));
        for k in unix {
            let _ = self.maps.unix.remove(&k);
        }
        for k in unix_ids {
            let _ = self.maps.unix_ids.remove(&k);
        }
        for k in exec {
            let _ = self.maps.exec_rules.remove(&k);
        }
        for k in net4 {
            let _ = self.maps.net4.remove(&k);
        }
        for k in net6 {
            let _ = self.maps.net6.remove(&k);
        }
        tracing::info!(
            slots = previous.len(),
            "previous daemon's policies released"
        );
    }

    /// Deletes rule sets whose grace period is over.
    pub fn tick(&mut self, now: Instant) {
        let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.retired)
            .into_iter()
            .partition(|(t, _)| *t <= now);
        self.retired = keep;
        for (_, set) in due {
            self.delete_rules(&set, None);
        }
    }

    /// Checks that the policy maps hold what this daemon wrote, writes back
    /// what differs, and returns what it found (a `sensor.tamper` each):
    ///
    /// - every policy slot: this daemon's hold `{id, mode, max_processes}` of
    ///   their policy, the others are empty (a previous daemon's, until
    ///   released at start-up, are left alone);
    /// - every run binding (`SNSR_RUN_POLICY`): exactly the runs this daemon
    ///   bound, each to its slot and counter;
    /// - the exec and network rules under the ids in force, and the dynamic
    ///   loader identities: entry by entry, no more, no fewer. Entries under
    ///   other ids (rules being retired, a previous daemon's) decide nothing
    ///   while no slot points to them, and the slots are checked.
    ///
    /// The maps are read in full, which costs two bpf(2) calls per entry
    /// and, per hash map, a walk of all its buckets (131,072 for the exec
    /// rules): a few milliseconds, and no write when nothing changed; past
    /// [`RULES_PER_VERIFY`] rule entries, the rules are compared every few
    /// comparisons without a call (below), and at every one after a call. The comparison is exact rather than a digest: reading
    /// the entries is the cost either way, and an exact compare cannot be
    /// matched by a crafted collision. `SNSR_RUN_LIVE` (counters the kernel
    /// writes) and `SNSR_PROC_RUNS` (the kernel enters every new process)
    /// are not checked here.
    ///
    /// When: `foreign_bpf` is the kernel programs' count of bpf(2) calls by
    /// other processes that can change a map (`Stats::foreign_bpf`), read
    /// before this call. Only such a call writes one of these maps, or
    /// loads, attaches or runs a program that may, so the maps are compared
    /// when it moved since the last comparison (the call before its write:
    /// the next check sees the write), and otherwise every
    /// [`COMPARE_QUIET_EVERY`], for a program loaded earlier that writes
    /// without a call. Without the count (`None`: the counters could not be
    /// read, or the daemon stops) they are compared. Returns nothing when
    /// no comparison was due.
    pub fn verify(&mut self, foreign_bpf: Option<u64>, now: Instant) -> Vec<Tamper> {
        // `called`: a call may have written them (or nothing says it did not).
        let (due, called) = match (foreign_bpf, self.compared) {
            (Some(calls), Some((seen, at))) => {
                let called = calls != seen;
                (
                    called || now.saturating_duration_since(at) >= COMPARE_QUIET_EVERY,
                    called,
                )
            }
            _ => (true, true),
        };
        if !due {
            return Vec::new();
        }
        if let Some(calls) = foreign_bpf {
            self.compared = Some((calls, now));
        }
        let mut found = Vec::new();
        self.verify_slots(&mut found);
        self.verify_bindings(&mut found);
        let entries: usize = self.loaders.len()
            + self
                .installed
                .values()
                .map(|i| i.rules.exec.len() + i.rules.net4.len() + i.rules.net6.len())
                .sum::<usize>();
        // Many rules are compared every few quiet comparisons, but always
        // after a call that may have written them.
        let every = u64::try_from(entries / RULES_PER_VERIFY + 1).unwrap_or(u64::MAX);
        if called || self.verified.is_multiple_of(every) {
            self.verify_rules(&mut found);
        }
        self.verified = self.verified.wrapping_add(1);
        found
    }

    /// Comparisons of the policy maps made so far ([`Self::verify`]).
    #[must_use]
    pub const fn comparisons(&self) -> u64 {
        self.verified
    }

    fn verify_slots(&mut self, found: &mut Vec<Tamper>) {
        let mine: BTreeMap<u32, (String, PolicySlot)> = self
            .slot_of
            .iter()
            .filter_map(|(name, slot)| {
                let i = self.installed.get(name)?;
                Some((*slot, (name.clone(), slot_value(&i.policy, i.rules.id))))
            })
            .collect();
        let previous: BTreeSet<u32> = self.previous.iter().map(|(s, _)| *s).collect();
        for slot in 0..MAX_POLICIES {
            if previous.contains(&slot) {
                continue;
            }
            let Ok(have) = self.maps.slots.get(&slot) else {
                continue;
            };
            let (name, want) = mine
                .get(&slot)
                .map_or((None, PolicySlot::default()), |(n, v)| (Some(n), *v));
            if have == want {
                continue;
            }
            let object = match name {
                Some(n) => format!("SNSR_POLICIES slot {slot} (policy {n:?})"),
                None => format!("SNSR_POLICIES slot {slot} (unused)"),
            };
            let t = Tamper::new(tamper::POLICY_MAP_CHANGED, object);
            let found_text = describe_slot(&have);
            found.push(match self.maps.slots.insert(&slot, &want) {
                Ok(()) => t.repaired(
                    true,
                    format!("found {found_text}; wrote {} again", describe_slot(&want)),
                ),
                Err(e) => t.repaired(
                    false,
                    format!("found {found_text}; cannot write it back: {e}"),
                ),
            });
        }
    }

    fn verify_bindings(&mut self, found: &mut Vec<Tamper>) {
        let kernel: Vec<(u64, RunPolicy)> = self.maps.run_policy.entries().collect();
        let mut seen = HashSet::with_capacity(kernel.len());
        let mut fixes: Vec<(u64, Option<RunPolicy>, String)> = Vec::new();
        for (handle, have) in kernel {
            seen.insert(handle);
            match self.bound.get(&handle) {
                Some(want) if *want == have => {}
                Some(want) => fixes.push((
                    handle,
                    Some(*want),
                    format!("bound to slot {}, not slot {}", have.slot, want.slot),
                )),
                None => fixes.push((
                    handle,
                    None,
                    format!("bound to slot {} by someone else", have.slot),
                )),
            }
        }
        for (handle, want) in &self.bound {
            if !seen.contains(handle) {
                fixes.push((*handle, Some(*want), "its binding was deleted".to_owned()));
            }
        }
        for (handle, want, what) in fixes {
            // The event names the run (by id, when it is known).
            let mut t = Tamper::new(tamper::POLICY_MAP_CHANGED, "SNSR_RUN_POLICY");
            t.run = Some(handle);
            let result = match want {
                Some(w) => self
                    .maps
                    .run_policy
                    .insert(&handle, &w)
                    .map(|()| format!("{what}; bound again to slot {}", w.slot)),
                None => self
                    .maps
                    .run_policy
                    .remove(&handle)
                    .map(|()| format!("{what}; removed")),
            };
            found.push(match result {
                Ok(done) => t.repaired(true, done),
                Err(e) => t.repaired(false, format!("{what}; cannot put it back: {e}")),
            });
        }
    }

    fn verify_rules(&mut self, found: &mut Vec<Tamper>) {
        // What each id in force must hold, and a name for messages.
        let names: HashMap<u32, String> = self
            .installed
            .iter()
            .map(|(n, i)| (i.rules.id, format!("policy {n:?} (id {})", i.rules.id)))
            .chain(std::iter::once((
                LOADER_POLICY_ID,
                format!("dynamic loaders (id {LOADER_POLICY_ID})"),
            )))
            .collect();
        let exec: HashMap<u32, &BTreeMap<ExecKey, ExecRule>> = self
            .installed
            .values()
            .map(|i| (i.rules.id, &i.rules.exec))
            .chain(std::iter::once((LOADER_POLICY_ID, &self.loaders)))
            .collect();
        let net4: HashMap<u32, &BTreeMap<(u32, Net4Data), NetRule>> = self
            .installed
            .values()
            .map(|i| (i.rules.id, &i.rules.net4))
            .collect();
        let net6: HashMap<u32, &BTreeMap<(u32, Net6Data), NetRule>> = self
            .installed
            .values()
            .map(|i| (i.rules.id, &i.rules.net6))
            .collect();

        let exec_fix = fixes(
            diff_entries(
                self.maps.exec_rules.entries(),
                |k: &ExecKey| k.policy,
                &exec,
            ),
            &exec,
        );
        let net4_fix = fixes(
            diff_entries(
                self.maps.net4.entries(),
                |k: &(u32, Net4Data)| id_of(&k.1),
                &net4,
            ),
            &net4,
        );
        let net6_fix = fixes(
            diff_entries(
                self.maps.net6.entries(),
                |k: &(u32, Net6Data)| id_of(&k.1),
                &net6,
            ),
            &net6,
        );

        let name = |id: u32| {
            names
                .get(&id)
                .cloned()
                .unwrap_or_else(|| format!("id {id}"))
        };
        for fix in exec_fix {
            let mut result = Ok(());
            for (k, v) in &fix.want {
                result = result.and(self.maps.exec_rules.insert(k, v));
            }
            for k in &fix.diff.added {
                result = result.and(self.maps.exec_rules.remove(k));
            }
            found.push(rules_tamper(
                "SNSR_EXEC_RULES",
                &name(fix.id),
                &fix.diff,
                result,
            ));
        }
        for fix in net4_fix {
            let mut result = Ok(());
            for ((len, data), v) in &fix.want {
                result = result.and(self.maps.net4.insert(&(*len, *data), v));
            }
            for (len, data) in &fix.diff.added {
                result = result.and(self.maps.net4.remove(&(*len, *data)));
            }
            found.push(rules_tamper(
                "SNSR_NET4_RULES",
                &name(fix.id),
                &fix.diff,
                result,
            ));
        }
        for fix in net6_fix {
            let mut result = Ok(());
            for ((len, data), v) in &fix.want {
                result = result.and(self.maps.net6.insert(&(*len, *data), v));
            }
            for (len, data) in &fix.diff.added {
                result = result.and(self.maps.net6.remove(&(*len, *data)));
            }
            found.push(rules_tamper(
                "SNSR_NET6_RULES",
                &name(fix.id),
                &fix.diff,
                result,
            ));
        }
    }

    /// The verdict a kernel decision stands for, named from the policy it
    /// was made under. `list` is `exec.allow` or `connect.allow`.
    #[must_use]
    pub fn describe(&self, d: &Decision, list: &str) -> Option<Verdict> {
        let verdict = match d.verdict {
            VERDICT_ALLOW => crate::event::Decision::Allow,
            VERDICT_DENY => crate::event::Decision::Deny,
            _ => return None,
        };
        let Some(policy) = self.by_id.get(&d.policy) else {
            // Decided under an earlier daemon (a record read after a restart).
            return self.id_names.describe(d, verdict, list);
        };
        let rule = match d.rule {
            sensor_common::policy::RULE_NO_MATCH => format!("{list} (no rule matches)"),
            r => policy.rule_text(r),
        };
        Some(Verdict {
            name: policy.name.clone(),
            verdict,
            rule,
            enforced: d.enforced != 0,
            version: policy.version,
        })
    }

    /// The kernel slot and policy id of `name` (what the pin dir shows).
    #[must_use]
    pub fn slot_and_id(&self, name: &str) -> Option<(u32, u32)> {
        Some((*self.slot_of.get(name)?, self.installed.get(name)?.rules.id))
    }

    /// The policy in force under `name`.
    #[must_use]
    pub fn installed(&self, name: &str) -> Option<&Policy> {
        self.installed.get(name).map(|i| &i.policy)
    }
}

/// How the entries of one policy id differ from what was written.
#[derive(Debug, PartialEq, Eq)]
struct Diff<K> {
    /// Entries written that are gone.
    missing: usize,
    /// Entries whose value is not what was written.
    changed: usize,
    /// Keys nobody here wrote.
    added: Vec<K>,
}

impl<K> Default for Diff<K> {
    fn default() -> Self {
        Self {
            missing: 0,
            changed: 0,
            added: Vec::new(),
        }
    }
}

/// Compares `entries` (a map's contents) with `expected` (per id, what was
/// written under it); ids not in `expected` are not looked at. Returns the
/// ids that differ.
fn diff_entries<K: Ord, V: PartialEq>(
    entries: impl Iterator<Item = (K, V)>,
    id_of: impl Fn(&K) -> u32,
    expected: &HashMap<u32, &BTreeMap<K, V>>,
) -> BTreeMap<u32, Diff<K>> {
    let mut present: HashMap<u32, usize> = HashMap::new();
    let mut out: BTreeMap<u32, Diff<K>> = BTreeMap::new();
    for (k, v) in entries {
        let id = id_of(&k);
        let Some(want) = expected.get(&id) else {
            continue;
        };
        match want.get(&k) {
            Some(w) => {
                *present.entry(id).or_default() += 1;
                if *w != v {
                    out.entry(id).or_default().changed += 1;
                }
            }
            None => out.entry(id).or_default().added.push(k),
        }
    }
    for (id, want) in expected {
        let have = present.get(id).copied().unwrap_or(0);
        if have < want.len() {
            out.entry(*id).or_default().missing = want.len() - have;
        }
    }
    out
}

/// What to write back under one id: all it must hold, and what to delete.
struct Fix<K, V> {
    id: u32,
    want: Vec<(K, V)>,
    diff: Diff<K>,
}

/// The fixes of the ids that differ (owned copies: writing needs the maps
/// mutably while `expected` borrows the rule sets).
fn fixes<K: Copy, V: Copy>(
    diffs: BTreeMap<u32, Diff<K>>,
    expected: &HashMap<u32, &BTreeMap<K, V>>,
) -> Vec<Fix<K, V>> {
    diffs
        .into_iter()
        .map(|(id, diff)| Fix {
            id,
            want: expected
                .get(&id)
                .map(|m| m.iter().map(|(k, v)| (*k, *v)).collect())
                .unwrap_or_default(),
            diff,
        })
        .collect()
}

/// The tamper of a rule map whose entries under one id differed.
fn rules_tamper<K>(map: &str, name: &str, diff: &Diff<K>, result: Result<(), MapError>) -> Tamper {
    let what = format!(
        "{} missing, {} changed, {} added",
        diff.missing,
        diff.changed,
        diff.added.len()
    );
    let t = Tamper::new(tamper::POLICY_MAP_CHANGED, format!("{map} {name}"));
    match result {
        Ok(()) => t.repaired(true, format!("{what}; written again")),
        Err(e) => t.repaired(false, format!("{what}; cannot write it back: {e}")),
    }
}

fn describe_slot(s: &PolicySlot) -> String {
    match s.mode {
        MODE_NONE if *s == PolicySlot::default() => "an empty slot".to_owned(),
        mode => format!(
            "{{id {}, mode {}, max_processes {}}}",
            s.id,
            match mode {
                MODE_AUDIT => "audit".to_owned(),
                MODE_ENFORCE => "enforce".to_owned(),
                MODE_NONE => "none".to_owned(),
                other => other.to_string(),
            },
            s.max_processes
        ),
    }
}

fn id_of(data: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&data[..4]);
    u32::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{
        Mode,
        tables::fake::{FakeMaps, Write},
        testing::policy,
    };

    /// A binder over tables in memory, and the handles to look at them.
    fn binder() -> (FakeMaps, Enforcement) {
        let maps = FakeMaps::new();
        let e = Enforcement::open_tables(maps.tables()).unwrap();
        (maps, e)
    }

    fn ids<K, V>(m: &BTreeMap<K, V>, id: impl Fn(&K) -> u32) -> BTreeSet<u32> {
        m.keys().map(id).collect()
    }

    fn exec_ids(maps: &FakeMaps) -> BTreeSet<u32> {
        ids(&maps.exec_rules.snapshot(), |k| k.policy)
    }

    fn net4_ids(maps: &FakeMaps) -> BTreeSet<u32> {
        ids(&maps.net4.snapshot(), |k| id_of(&k.1))
    }

    #[test]
    fn a_reload_switches_the_slot_in_one_write_after_the_new_rules_and_deletes_the_old_after_grace()
    {
        let (maps, mut e) = binder();
        let v1 = policy("a", Mode::Audit, &["/usr/bin/true"], &["10.0.0.0/8:443"]);
        e.install(&Policies::of(vec![v1])).unwrap();
        let before = maps.slots.snapshot()[&0];
        assert_eq!(before.mode, MODE_AUDIT);
        let old = before.id;
        assert!(exec_ids(&maps).contains(&old));
        assert!(net4_ids(&maps).contains(&old));
        maps.take_writes();

        let v2 = policy("a", Mode::Enforce, &["/usr/bin/env"], &["10.0.0.0/8:80"]);
        e.install(&Policies::of(vec![v2])).unwrap();
        let after = maps.slots.snapshot()[&0];
        let new = after.id;
        assert_ne!(new, old, "a reload installs under a fresh id");
        assert_eq!(after.mode, MODE_ENFORCE);
        // The new rules are written first, then the slot, in one write;
        // nothing is deleted yet.
        let writes = maps.take_writes();
        let switches: Vec<usize> = writes
            .iter()
            .enumerate()
            .filter(|(_, w)| w.map() == "SNSR_POLICIES")
            .map(|(i, _)| i)
            .collect();
        assert_eq!(switches, vec![writes.len() - 1], "{writes:#?}");
        assert!(
            writes.iter().all(|w| matches!(w, Write::Insert { .. })),
            "{writes:#?}"
        );
        for map in ["SNSR_EXEC_RULES", "SNSR_NET4_RULES", "SNSR_UNIX_RULES"] {
            assert!(writes.iter().any(|w| w.map() == map), "{map}: {writes:#?}");
        }
        // Both generations are in the maps through the grace period…
        e.tick(Instant::now());
        assert!(exec_ids(&maps).is_superset(&[old, new].into()));
        assert!(net4_ids(&maps).is_superset(&[old, new].into()));
        // …and the old one goes after it.
        e.tick(Instant::now() + GRACE * 2);
        assert!(!exec_ids(&maps).contains(&old));
        assert!(!net4_ids(&maps).contains(&old));
        assert!(!ids(&maps.unix.snapshot(), |k| k.policy).contains(&old));
        assert!(exec_ids(&maps).contains(&new));
        assert!(net4_ids(&maps).contains(&new));
        assert!(
            maps.take_writes()
                .iter()
                .all(|w| matches!(w, Write::Remove { .. }))
        );
        // A decision made under the old id is still named.
        let d = Decision {
            policy: old,
            rule: 0,
            verdict: VERDICT_ALLOW,
            enforced: 0,
            ..Decision::default()
        };
        assert_eq!(
            e.describe(&d, "exec.allow").map(|v| v.rule),
            Some("exec.allow /usr/bin/true".to_owned())
        );
    }

    #[test]
    fn an_update_keeps_the_id_writes_new_entries_first_then_drops_stale_ones() {
        let (maps, mut e) = binder();
        let v1 = policy("a", Mode::Audit, &["/usr/bin/true"], &[]);
        e.install(&Policies::of(vec![v1])).unwrap();
        let slot = maps.slots.snapshot()[&0];
        let keys = |maps: &FakeMaps| -> BTreeSet<ExecKey> {
            maps.exec_rules
                .snapshot()
                .into_keys()
                .filter(|k| k.policy == slot.id)
                .collect()
        };
        let before = keys(&maps);
        maps.take_writes();
        // The files resolved differently: same policy, same id.
        let v2 = policy("a", Mode::Audit, &["/usr/bin/env"], &[]);
        e.update(&v2).unwrap();
        assert_eq!(maps.slots.snapshot()[&0], slot, "the slot does not move");
        let after = keys(&maps);
        assert_eq!(after.len(), 1);
        assert!(before.is_disjoint(&after));
        let writes = maps.take_writes();
        let first_remove = writes
            .iter()
            .position(|w| matches!(w, Write::Remove { .. }))
            .unwrap();
        assert!(
            writes[..first_remove]
                .iter()
                .any(|w| w.map() == "SNSR_EXEC_RULES"),
            "{writes:#?}"
        );
        assert!(
            writes[first_remove..]
                .iter()
                .all(|w| matches!(w, Write::Remove { .. })),
            "{writes:#?}"
        );
        // Nothing to do when nothing changed; an unknown policy is an error.
        e.update(&v2).unwrap();
        assert!(maps.take_writes().is_empty());
        let err = e.update(&policy("zz", Mode::Audit, &[], &[])).unwrap_err();
        assert_eq!(err.to_string(), "policy \"zz\" is not loaded");
        assert!(e.verify(None, Instant::now()).is_empty());
    }

    #[test]
    fn maps_are_compared_after_a_foreign_bpf_call_and_otherwise_now_and_then() {
        let (maps, mut e) = binder();
        let a = policy("a", Mode::Enforce, &["/usr/bin/true"], &[]);
        e.install(&Policies::of(vec![a])).unwrap();
        let t0 = Instant::now();
        assert!(e.verify(Some(3), t0).is_empty());
        assert_eq!(e.comparisons(), 1, "the first check compares");
        // A write with no bpf(2) call counted (a program loaded earlier).
        let slot = maps.slots.snapshot()[&0];
        maps.slots.tamper_insert(0, PolicySlot { id: 999, ..slot });
        let second = t0 + Duration::from_secs(1);
        assert!(
            e.verify(Some(3), second).is_empty(),
            "no call since: not compared"
        );
        assert_eq!(e.comparisons(), 1);
        let found = e.verify(Some(3), t0 + COMPARE_QUIET_EVERY);
        assert_eq!(
            found.len(),
            1,
            "compared after the quiet interval: {found:?}"
        );
        assert_eq!(e.comparisons(), 2);
        // A counted call: the next check compares, however soon.
        maps.slots.tamper_insert(0, PolicySlot { id: 998, ..slot });
        let soon = t0 + COMPARE_QUIET_EVERY + Duration::from_millis(1);
        let found = e.verify(Some(4), soon);
        assert_eq!(found.len(), 1, "compared after a call: {found:?}");
        assert!(
            e.verify(Some(4), soon).is_empty(),
            "and not again until the next"
        );
        assert_eq!(e.comparisons(), 3);
        // Without the count (unreadable, or the daemon stops): compared.
        maps.slots.tamper_insert(0, PolicySlot { id: 997, ..slot });
        assert_eq!(e.verify(None, soon).len(), 1);
        assert_eq!(e.comparisons(), 4);
    }

    #[test]
    fn many_rules_are_compared_every_few_quiet_checks_but_after_every_call() {
        let (maps, mut e) = binder();
        // Past RULES_PER_VERIFY entries: the rules every second comparison.
        let nets: Vec<String> = (0..RULES_PER_VERIFY + 8)
            .map(|i| format!("10.{}.{}.0/24:443", i / 256, i % 256))
            .collect();
        let nets: Vec<&str> = nets.iter().map(String::as_str).collect();
        e.install(&Policies::of(vec![policy(
            "big",
            Mode::Enforce,
            &[],
            &nets,
        )]))
        .unwrap();
        let t0 = Instant::now();
        assert!(e.verify(Some(0), t0).is_empty());
        let net4 = maps.net4.snapshot();
        let (k, _) = net4.iter().next().unwrap();
        // An entry deleted with a counted call: the next check compares the
        // rules, though a quiet one would skip them this time.
        maps.net4.tamper_remove(k);
        let found = e.verify(Some(1), t0 + Duration::from_secs(1));
        assert!(
            found.iter().any(|t| t.object.contains("SNSR_NET4_RULES")),
            "the rules were compared after the call: {found:?}"
        );
        // Written back. Without a call, every other comparison has them:
        // this third one does, the fourth does not, the fifth does.
        let quiet = t0 + Duration::from_secs(1);
        for (n, compares) in [(1, true), (2, false), (3, true)] {
            maps.net4.tamper_remove(k);
            let found = e.verify(Some(1), quiet + COMPARE_QUIET_EVERY * n);
            assert_eq!(
                found.iter().any(|t| t.object.contains("SNSR_NET4_RULES")),
                compares,
                "quiet comparison {n}: {found:?}"
            );
        }
    }

    #[test]
    fn verify_reports_and_writes_back_tampered_slots_rules_and_bindings() {
        let (maps, mut e) = binder();
        let a = policy("a", Mode::Audit, &["/usr/bin/true"], &["10.0.0.0/8:443"]);
        e.install(&Policies::of(vec![a])).unwrap();
        e.bind(5, Some("a"), None).unwrap();
        assert!(
            e.verify(None, Instant::now()).is_empty(),
            "nothing changed, nothing found"
        );
        let slot = maps.slots.snapshot()[&0];
        let id = slot.id;
        let exec = maps.exec_rules.snapshot();
        let net4 = maps.net4.snapshot();
        let bound = maps.run_policy.snapshot();

        // Someone with root writes the pinned maps.
        maps.slots.tamper_insert(0, PolicySlot { id: 999, ..slot });
        maps.slots.tamper_insert(
            7,
            PolicySlot {
                mode: MODE_ENFORCE,
                ..slot
            },
        );
        let (k, v) = exec.iter().find(|(k, _)| k.policy == id).unwrap();
        maps.exec_rules
            .tamper_insert(*k, ExecRule { rule: 42, ..*v });
        maps.exec_rules.tamper_insert(
            ExecKey {
                policy: id,
                dev: 1,
                ino: 2,
            },
            ExecRule::default(),
        );
        maps.net4.tamper_remove(net4.keys().next().unwrap());
        maps.run_policy.tamper_remove(&5);
        maps.run_policy.tamper_insert(
            77,
            RunPolicy {
                slot: 0,
                _pad: 0,
                count_run: 77,
            },
        );

        let found = e.verify(None, Instant::now());
        let seen: BTreeSet<(String, Option<u64>, String)> = found
            .iter()
            .map(|t| {
                assert_eq!(t.what, tamper::POLICY_MAP_CHANGED);
                assert!(t.repaired, "{t:?}");
                (
                    t.object.clone(),
                    t.run,
                    t.detail.clone().unwrap_or_default(),
                )
            })
            .collect();
        let expected: BTreeSet<(String, Option<u64>, String)> = [
            (
                "SNSR_POLICIES slot 0 (policy \"a\")".to_owned(),
                None,
                format!(
                    "found {{id 999, mode audit, max_processes 0}}; wrote {{id {id}, mode audit, \
                     max_processes 0}} again"
                ),
            ),
            (
                "SNSR_POLICIES slot 7 (unused)".to_owned(),
                None,
                format!(
                    "found {{id {id}, mode enforce, max_processes 0}}; wrote an empty slot again"
                ),
            ),
            (
                "SNSR_RUN_POLICY".to_owned(),
                Some(5),
                "its binding was deleted; bound again to slot 0".to_owned(),
            ),
            (
                "SNSR_RUN_POLICY".to_owned(),
                Some(77),
                "bound to slot 0 by someone else; removed".to_owned(),
            ),
            (
                format!("SNSR_EXEC_RULES policy \"a\" (id {id})"),
                None,
                "0 missing, 1 changed, 1 added; written again".to_owned(),
            ),
            (
                format!("SNSR_NET4_RULES policy \"a\" (id {id})"),
                None,
                "1 missing, 0 changed, 0 added; written again".to_owned(),
            ),
        ]
        .into();
        assert_eq!(seen, expected);
        assert_eq!(found.len(), expected.len());
        // Written back: the maps hold what the binder wrote, and the next
        // check finds nothing.
        assert_eq!(maps.slots.snapshot()[&0], slot);
        assert_eq!(maps.slots.snapshot()[&7], PolicySlot::default());
        assert_eq!(maps.exec_rules.snapshot(), exec);
        assert_eq!(maps.net4.snapshot(), net4);
        assert_eq!(maps.run_policy.snapshot(), bound);
        assert!(e.verify(None, Instant::now()).is_empty());
    }

    #[test]
    fn a_full_run_policy_map_refuses_the_binding() {
        let (maps, mut e) = binder();
        let a = policy("a", Mode::Enforce, &["/usr/bin/true"], &[]);
        e.install(&Policies::of(vec![a])).unwrap();
        maps.run_policy.set_capacity(1);
        e.bind(1, Some("a"), None).unwrap();
        let err = e.bind(2, Some("a"), None).unwrap_err();
        assert!(err.is_full(), "{err}");
        let refusal = BindRefusal::new(err, Some("a"));
        assert!(matches!(refusal, BindRefusal::Full { .. }));
        assert_eq!(
            refusal.to_string(),
            "the kernel's run→policy map is full ([limits] policy_runs): policy \"a\" could not \
             be bound, so the run is refused rather than started unenforced"
        );
        // Not bound, and not expected to be.
        assert!(!maps.run_policy.snapshot().contains_key(&2));
        assert!(e.verify(None, Instant::now()).is_empty());
        // Another failure is named as such.
        let err = e.bind(3, Some("gone"), None).unwrap_err();
        assert!(!err.is_full());
        assert_eq!(
            BindRefusal::new(err, Some("gone")).to_string(),
            "policy \"gone\" could not be bound in the kernel (policy \"gone\" is not loaded); \
             the run is refused rather than started unenforced"
        );
    }

    #[test]
    fn start_up_uses_unused_slots_rebinds_runs_then_releases_the_previous_daemons() {
        let maps = FakeMaps::new();
        // A previous daemon's: two slots, their rules, a run bound to slot 0.
        let enforce = PolicySlot {
            id: 5,
            mode: MODE_ENFORCE,
            max_processes: 0,
            flags: 0,
        };
        maps.slots.tamper_insert(0, enforce);
        maps.slots.tamper_insert(
            1,
            PolicySlot {
                id: 6,
                mode: MODE_AUDIT,
                ..enforce
            },
        );
        for (id, ino) in [(5, 1), (6, 2)] {
            maps.exec_rules.tamper_insert(
                ExecKey {
                    policy: id,
                    dev: 1,
                    ino,
                },
                ExecRule::default(),
            );
        }
        maps.net4
            .tamper_insert((40, [0, 0, 0, 5, 10, 0, 0, 0]), NetRule::default());
        maps.run_policy.tamper_insert(
            10,
            RunPolicy {
                slot: 0,
                _pad: 0,
                count_run: 10,
            },
        );

        let mut e = Enforcement::open_tables(maps.tables()).unwrap();
        let a = policy("a", Mode::Enforce, &["/usr/bin/true"], &["10.0.0.0/8"]);
        let b = policy("b", Mode::Audit, &["/usr/bin/env"], &[]);
        e.install(&Policies::of(vec![a, b])).unwrap();
        let slots = maps.slots.snapshot();
        // The previous daemon's runs stay enforced meanwhile.
        assert_eq!((slots[&0], slots[&1].id), (enforce, 6));
        // This daemon's go into unused slots, under ids the previous did not use.
        let (sa, sb) = (slots[&2], slots[&3]);
        assert_eq!((sa.mode, sb.mode), (MODE_ENFORCE, MODE_AUDIT));
        assert!(sa.id > 6 && sb.id > 6 && sa.id != sb.id, "{sa:?} {sb:?}");

        // The run is bound again, to the new slot of its policy, in one write.
        assert_eq!(e.bound_runs(), vec![10]);
        maps.take_writes();
        e.bind(10, Some("a"), None).unwrap();
        assert_eq!(maps.run_policy.snapshot()[&10].slot, 2);
        assert_eq!(
            maps.take_writes()
                .iter()
                .filter(|w| w.map() == "SNSR_RUN_POLICY")
                .count(),
            1
        );
        // The check leaves the previous daemon's slots alone until released.
        assert!(e.verify(None, Instant::now()).is_empty());
        assert_eq!(maps.slots.snapshot()[&0], enforce);

        e.release_previous();
        let slots = maps.slots.snapshot();
        assert_eq!((slots[&0], slots[&1]), Default::default());
        assert_eq!((slots[&2], slots[&3]), (sa, sb));
        let exec = exec_ids(&maps);
        assert!(!exec.contains(&5) && !exec.contains(&6), "{exec:?}");
        assert!(exec.contains(&sa.id) && exec.contains(&sb.id));
        assert_eq!(net4_ids(&maps), [sa.id].into());
        assert!(e.verify(None, Instant::now()).is_empty());
    }

    #[test]
    fn no_free_slot_refuses_the_install_and_switches_nothing() {
        let maps = FakeMaps::new();
        // A previous daemon holds every slot but the last.
        for slot in 0..MAX_POLICIES - 1 {
            maps.slots.tamper_insert(
                slot,
                PolicySlot {
                    id: slot + 1,
                    mode: MODE_AUDIT,
                    max_processes: 0,
                    flags: 0,
                },
            );
        }
        let mut e = Enforcement::open_tables(maps.tables()).unwrap();
        let before = maps.slots.snapshot();
        let exec_before = maps.exec_rules.snapshot();
        let two = Policies::of(vec![
            policy("a", Mode::Audit, &["/usr/bin/true"], &[]),
            policy("b", Mode::Audit, &["/usr/bin/env"], &[]),
        ]);
        let err = e.install(&two).unwrap_err();
        assert!(matches!(err, EnforcementError::NoSlot), "{err}");
        assert_eq!(maps.slots.snapshot(), before);
        assert_eq!(
            maps.exec_rules.snapshot(),
            exec_before,
            "staged rules deleted"
        );
        // One fits.
        e.install(&Policies::of(vec![policy(
            "a",
            Mode::Audit,
            &["/usr/bin/true"],
            &[],
        )]))
        .unwrap();
        assert_eq!(maps.slots.snapshot()[&(MAX_POLICIES - 1)].mode, MODE_AUDIT);
    }

    #[test]
    fn an_enforce_policy_is_refused_where_the_kernel_cannot_enforce() {
        let (maps, mut e) = binder();
        e.set_capability(Some("no bpf_send_signal".into()));
        let a = policy("a", Mode::Enforce, &["/usr/bin/true"], &[]);
        let err = e.install(&Policies::of(vec![a])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "an enforce policy cannot be enforced on this kernel (no bpf_send_signal); see \
             `sensor doctor`"
        );
        assert_eq!(maps.slots.snapshot()[&0], PolicySlot::default());
        let audit = policy("a", Mode::Audit, &["/usr/bin/true"], &[]);
        e.install(&Policies::of(vec![audit])).unwrap();
        assert_eq!(maps.slots.snapshot()[&0].mode, MODE_AUDIT);
    }

    #[test]
    fn entries_are_compared_per_id_exactly() {
        let want_a: BTreeMap<u32, u32> = [(0x0001_0001, 1), (0x0001_0002, 2)].into();
        let want_b: BTreeMap<u32, u32> = [(0x0002_0001, 7)].into();
        let expected: HashMap<u32, &BTreeMap<u32, u32>> = [(1, &want_a), (2, &want_b)].into();
        let id = |k: &u32| k >> 16;
        // As written, plus an entry under an id nobody here owns: no difference.
        let same = [
            (0x0001_0002, 2),
            (0x0002_0001, 7),
            (0x0001_0001, 1),
            (0x0009_0001, 5),
        ];
        assert!(diff_entries(same.into_iter(), id, &expected).is_empty());
        // One entry of id 1 gone, one changed in id 2, one added to id 2.
        let tampered = [(0x0001_0001, 1), (0x0002_0001, 8), (0x0002_0002, 3)];
        let d = diff_entries(tampered.into_iter(), id, &expected);
        assert_eq!(d.len(), 2);
        assert_eq!(
            d[&1],
            Diff {
                missing: 1,
                changed: 0,
                added: vec![]
            }
        );
        assert_eq!(
            d[&2],
            Diff {
                missing: 0,
                changed: 1,
                added: vec![0x0002_0002]
            }
        );
        // Everything gone.
        let d = diff_entries(std::iter::empty(), id, &expected);
        assert_eq!(d[&1].missing, 2);
        assert_eq!(d[&2].missing, 1);
    }

    #[test]
    fn slots_are_described_for_the_log() {
        assert_eq!(describe_slot(&PolicySlot::default()), "an empty slot");
        let s = PolicySlot {
            id: 3,
            mode: MODE_AUDIT,
            max_processes: 5,
            flags: 0,
        };
        assert_eq!(describe_slot(&s), "{id 3, mode audit, max_processes 5}");
    }
}

//! Maps. Sizes come from `sensor_common::limits`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use sensor_common::{
    event::{Event, ExecData, ProcRun},
    handover::ReaderMark,
    inflight::{ConnectInflight, SendKey},
    limits::{
        EVENTS_RING_BYTES, INFLIGHT_ENTRIES, MAX_EXEC_RULES, MAX_NET_RULES, MAX_POLICIES,
        MAX_POLICY_RUNS, MAX_RUN_STATS, MAX_RUN_TREE, MAX_SEND_SEEN, MAX_SENSOR_FILES,
        MAX_TRACKED_PROCESSES, MAX_UNIX_RULES, PATH_SCRATCH_BYTES, RUN_INFLIGHT_ENTRIES,
    },
    owner::Owner,
    policy::{ExecKey, ExecRule, Net4Data, Net6Data, NetRule, PolicySlot, RunPolicy, UnixKey},
    stats::{RunStats, Stats},
};

/// Events to user space.
#[map(name = "SNSR_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

/// Whether user space sleeps until a record wakes it (until the lease's
/// second, see `sensor_common::maps::READER`) or
/// drains on its timer (0). Set by user space only.
#[map(name = "SNSR_READER")]
pub static READER: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU counters.
#[map(name = "SNSR_STATS")]
pub static STATS: PerCpuArray<Stats> = PerCpuArray::with_max_entries(1, 0);

/// Per-run counters (records lost, denials suppressed) and the denial rate
/// limit's window, by run handle. LRU: the map never refuses a run.
#[map(name = "SNSR_RUN_STATS")]
pub static RUN_STATS: LruHashMap<u64, RunStats> = LruHashMap::with_max_entries(MAX_RUN_STATS, 0);

/// One buffer per CPU an exec or spawn event is assembled in: too big for the
/// stack and for a per-CPU map value (32 KiB), so a plain array indexed by CPU
/// id, sized to the possible CPUs by the loader.
#[map(name = "SNSR_SCRATCH")]
pub static SCRATCH: Array<Event<ExecData>> = Array::with_max_entries(1, 0);

/// This CPU's event buffer. Programs using it run with preemption disabled
/// (tracepoints), so nothing else on this CPU touches it meanwhile.
#[inline(always)]
pub fn event_scratch() -> Option<*mut Event<ExecData>> {
    // SAFETY: no preconditions.
    let cpu = unsafe { aya_ebpf::helpers::generated::bpf_get_smp_processor_id() };
    SCRATCH.get_ptr_mut(cpu)
}

/// Per-CPU buffer a path is walked into, right to left.
#[map(name = "SNSR_PATHBUF")]
pub static PATH_SCRATCH: PerCpuArray<[u8; PATH_SCRATCH_BYTES]> =
    PerCpuArray::with_max_entries(1, 0);

/// A new, empty connect slot: inserted from here (read-only data), not from
/// a copy on the 512-byte stack.
pub static EMPTY_SLOT: ConnectInflight = ConnectInflight {
    data: sensor_common::event::ConnectData {
        family: 0,
        sock_type: 0,
        protocol: 0,
        port: 0,
        ret: 0,
        has_result: 0,
        via: 0,
        addr: [0; 16],
        decision: sensor_common::policy::Decision {
            policy: 0,
            rule: 0,
            verdict: 0,
            enforced: 0,
            _pad: 0,
        },
    },
    filled: 0,
    open: 0,
    fd: 0,
    _pad: 0,
    unix: sensor_common::event::UnixConnectData::ZERO,
};

/// A thread's connect() slot, by pid_tgid: the cgroup hook, inside the
/// connect() syscall, fills in the address and opens it; the syscall exit
/// adds the result, sends it and closes the slot.
///
/// The slot stays in the map after the exit and is reused by the thread's
/// next connect (a lookup and a few stores instead of an LRU insert and a
/// delete per call); the LRU drops the slots of threads that stopped
/// connecting.
#[map(name = "SNSR_CONNECT")]
pub static CONNECT_INFLIGHT: LruHashMap<u64, ConnectInflight> =
    LruHashMap::with_max_entries(INFLIGHT_ENTRIES, 0);

/// The connect() slots of threads of processes in runs, by pid_tgid. A hash
/// map, not an LRU one: however many other threads connect meanwhile, none
/// pushes out the slot of a connect that waits in the syscall (a slow or
/// full peer), which its exit then could not report. Each is removed at the
/// syscall's exit. When it is full (that many threads of runs inside
/// connect() at once), the hook reports the connect itself, without its
/// result.
#[map(name = "SNSR_RUN_CONNECT")]
pub static RUN_CONNECT_INFLIGHT: HashMap<u64, ConnectInflight> =
    HashMap::with_max_entries(RUN_INFLIGHT_ENTRIES, 0);

/// The slot of the connect() the current thread, of a process in a run, is
/// in (made for it; removed at the syscall's exit).
#[inline(always)]
pub fn run_connect_slot(pid_tgid: u64) -> Option<*mut ConnectInflight> {
    // BPF_NOEXIST from a zeroed static, as in `connect_slot`; one left by a
    // connect whose exit was missed is used again.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, the 336-byte static would be copied onto the 512-byte stack"
    )]
    let _ = RUN_CONNECT_INFLIGHT.insert(pid_tgid, &EMPTY_SLOT, 1);
    RUN_CONNECT_INFLIGHT.get_ptr_mut(pid_tgid)
}

/// This thread's connect slot, made when it has none.
#[inline(always)]
pub fn connect_slot(pid_tgid: u64) -> Option<*mut ConnectInflight> {
    if let Some(slot) = CONNECT_INFLIGHT.get_ptr_mut(pid_tgid) {
        return Some(slot);
    }
    // BPF_NOEXIST from a zeroed static: the value is not built on the stack.
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "by value, the 336-byte static would be copied onto the 512-byte stack"
    )]
    let _ = CONNECT_INFLIGHT.insert(pid_tgid, &EMPTY_SLOT, 1);
    CONNECT_INFLIGHT.get_ptr_mut(pid_tgid)
}

/// Process → run (key: tgid). Pinned by the loader, so it outlives a daemon restart.
#[map(name = "SNSR_PROC_RUNS")]
pub static PROC_RUNS: HashMap<u32, ProcRun> = HashMap::with_max_entries(MAX_TRACKED_PROCESSES, 0);

/// Policy slots (see `sensor_common::policy`). Pinned by the loader.
#[map(name = "SNSR_POLICIES")]
pub static POLICIES: Array<PolicySlot> = Array::with_max_entries(MAX_POLICIES, 0);

/// Run handle → policy slot. Pinned by the loader.
#[map(name = "SNSR_RUN_POLICY")]
pub static RUN_POLICY: HashMap<u64, RunPolicy> = HashMap::with_max_entries(MAX_POLICY_RUNS, 0);

/// Counted run → live processes of its tree. Pinned by the loader.
#[map(name = "SNSR_RUN_LIVE")]
pub static RUN_LIVE: HashMap<u64, u64> = HashMap::with_max_entries(MAX_POLICY_RUNS, 0);

/// File and directory identities allowed per policy id. Pinned by the loader.
#[map(name = "SNSR_EXEC_RULES")]
pub static EXEC_RULES: HashMap<ExecKey, ExecRule> = HashMap::with_max_entries(MAX_EXEC_RULES, 0);

/// IPv4 prefixes allowed per policy id. Pinned by the loader.
#[map(name = "SNSR_NET4_RULES")]
pub static NET4_RULES: LpmTrie<Net4Data, NetRule> = LpmTrie::with_max_entries(MAX_NET_RULES, 0);

/// IPv6 prefixes allowed per policy id. Pinned by the loader.
#[map(name = "SNSR_NET6_RULES")]
pub static NET6_RULES: LpmTrie<Net6Data, NetRule> = LpmTrie::with_max_entries(MAX_NET_RULES, 0);

/// `unix.allow` addresses per policy id. Pinned by the loader.
#[map(name = "SNSR_UNIX_RULES")]
pub static UNIX_RULES: HashMap<UnixKey, u32> = HashMap::with_max_entries(MAX_UNIX_RULES, 0);

/// `unix.allow` socket file identities per policy id. Pinned by the loader.
#[map(name = "SNSR_UNIX_IDS")]
pub static UNIX_IDS: HashMap<ExecKey, u32> = HashMap::with_max_entries(MAX_UNIX_RULES, 0);

/// Run → its parent run (0: a top-level run). Pinned by the loader.
#[map(name = "SNSR_RUN_TREE")]
pub static RUN_TREE: HashMap<u64, u64> = HashMap::with_max_entries(MAX_RUN_TREE, 0);

/// The sensor's files and directories (identity → `SENSOR_FILE_*`).
#[map(name = "SNSR_FILES")]
pub static SENSOR_FILES: HashMap<ExecKey, u32> = HashMap::with_max_entries(MAX_SENSOR_FILES, 0);

/// Datagrams sent per process and destination (reported at 1, 2, 4, ...).
#[map(name = "SNSR_SEND_SEEN")]
pub static SEND_SEEN: LruHashMap<SendKey, u32> = LruHashMap::with_max_entries(MAX_SEND_SEEN, 0);

/// The pin dir's owner record (see `sensor_common::owner`): which daemon
/// holds the pins. No program reads it; it is declared here so the loader
/// creates (or reuses) and pins it with the other maps. Pinned by the loader.
#[map(name = "SNSR_OWNER")]
pub static OWNER: Array<Owner> = Array::with_max_entries(1, 0);

/// The generation whose programs act (see `sensor_common::handover`).
/// Written by user space only.
#[map(name = "SNSR_ACTIVE")]
pub static ACTIVE: Array<u32> = Array::with_max_entries(1, 0);

/// The last reader's mark (see `sensor_common::handover::ReaderMark`). No
/// program reads it; declared so the loader creates (or reuses) and pins it.
#[map(name = "SNSR_MARK")]
pub static MARK: Array<ReaderMark> = Array::with_max_entries(1, 0);

/// Per-run counters already reported, by run handle. No program reads it;
/// declared so the loader creates (or reuses) and pins it.
#[map(name = "SNSR_RUN_SEEN")]
pub static RUN_STATS_SEEN: HashMap<u64, RunStats> = HashMap::with_max_entries(MAX_RUN_STATS, 0);

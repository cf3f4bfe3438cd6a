//! Wire format of kernel events: a common [`EventHeader`], then a fixed
//! per-kind payload, then (for some kinds) variable-length bytes whose lengths
//! the payload gives.
//!
//! ```text
//! | EventHeader | payload (ExecData, SpawnData, ...) | data: exe | cwd | filename | argv |
//! ```
//!
//! The header comes first in every record because the decoder reads the kind
//! there before it knows anything else.

use bytemuck::{Pod, Zeroable};

use crate::{
    limits::EVENT_DATA_BYTES,
    policy::{Decision, UnixKey},
};

/// Stable numeric event kinds. Families have ranges (process from 1, network
/// from 60, sensor-internal from 500); retired ids are never reused.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// A new process (thread group) was created.
    ProcessSpawn = 1,
    /// A process executed a new image.
    ProcessExec = 2,
    /// An execve/execveat failed.
    ProcessExecFailed = 3,
    /// The last thread of a process exited.
    ProcessExit = 4,
    /// A connect() on an IPv4/IPv6 socket.
    NetConnect = 60,
    /// A connect() on an AF_UNIX socket, or a datagram sent to a Unix
    /// address without connect() (reported when denied).
    NetUnix = 61,
    /// A socket of a run: a listen(), an accept(), the creation of a raw,
    /// ICMP or packet socket, or datagrams sent without connect().
    NetSocket = 62,
    /// A process of a run reached into a process outside it (ptrace,
    /// process_vm_writev, pidfd_getfd, /proc/PID/mem), or into the sensor
    /// (a signal, a write to its files, a bpf() call).
    Tamper = 80,
}

impl EventKind {
    /// Decodes a kind read from the wire.
    #[must_use]
    pub const fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::ProcessSpawn,
            2 => Self::ProcessExec,
            3 => Self::ProcessExecFailed,
            4 => Self::ProcessExit,
            60 => Self::NetConnect,
            61 => Self::NetUnix,
            62 => Self::NetSocket,
            80 => Self::Tamper,
            _ => return None,
        })
    }

    /// Index of this kind's counters in [`crate::stats::Stats`].
    #[must_use]
    pub const fn slot(self) -> usize {
        match self {
            Self::ProcessSpawn => 0,
            Self::ProcessExec => 1,
            Self::ProcessExecFailed => 2,
            Self::ProcessExit => 3,
            Self::NetConnect => 4,
            Self::NetUnix => 5,
            Self::Tamper => 6,
            Self::NetSocket => 7,
        }
    }

    /// Size of the fixed part of a record of this kind (header + payload).
    /// A new kind without an arm here fails to build.
    #[must_use]
    pub const fn fixed_size(self) -> usize {
        HEADER_SIZE
            + match self {
                Self::ProcessSpawn => size_of::<SpawnData>(),
                Self::ProcessExec | Self::ProcessExecFailed => size_of::<ExecData>(),
                Self::ProcessExit => size_of::<ExitData>(),
                Self::NetConnect => size_of::<ConnectData>(),
                Self::NetUnix => size_of::<UnixConnectData>(),
                Self::Tamper => size_of::<TamperData>(),
                Self::NetSocket => size_of::<SocketData>(),
            }
    }
}

/// Common header of every kernel event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct EventHeader {
    /// [`EventKind`] as a number (low 16 bits) and the wire version
    /// (high 16 bits): see [`crate::handover::kind_word`].
    pub kind: u32,
    /// Total size of the record in bytes (header, payload and data).
    pub size: u32,
    /// `CLOCK_BOOTTIME` nanoseconds when the event happened.
    pub ktime_ns: u64,
    /// Process id (thread group id) in the initial pid namespace.
    pub tgid: u32,
    /// Thread id of the task the event happened on.
    pub tid: u32,
    /// Parent's process id (real parent's tgid).
    pub ppid: u32,
    /// Real user id.
    pub uid: u32,
    /// Real group id.
    pub gid: u32,
    /// How the process got its run ([`ProcRun::how`]), 0 when `run` is 0.
    pub run_how: u32,
    /// Run handle of the process from the kernel's process→run map (0: none).
    pub run: u64,
    /// Start time of the process (its group leader), `CLOCK_BOOTTIME` ns.
    pub start_ns: u64,
    /// Start time of the parent process, `CLOCK_BOOTTIME` ns.
    pub parent_start_ns: u64,
    /// Task command name (NUL-padded).
    pub comm: [u8; 16],
    /// Process id in its own pid namespace (equal to `tgid` in the initial one).
    pub ns_tgid: u32,
    /// Depth of its pid namespace (0: the initial one).
    pub pid_ns_level: u32,
    /// Generation of the programs that recorded it (see [`crate::handover`]).
    pub generation: u32,
    /// Reserved, zero.
    pub _reserved: u32,
}

/// Size of [`EventHeader`] on the wire.
pub const HEADER_SIZE: usize = size_of::<EventHeader>();
const _: () = assert!(HEADER_SIZE == 96);

/// `process.spawn`: `data` holds `exe_len` bytes of the (shared) executable path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SpawnData {
    /// Bytes of exe path in the data area.
    pub exe_len: u16,
    /// [`PATH_TRUNCATED`] when the path walk was cut short.
    pub path_flags: u16,
    /// Reserved, zero.
    pub _pad: u32,
    /// The run policy's decision on the new process (`max_processes`).
    pub decision: Decision,
}
const _: () = assert!(size_of::<SpawnData>() == 24);

/// Set in `path_flags` when the exe path was cut (too deep or too long).
pub const PATH_TRUNCATED: u16 = 1;
/// Set in `path_flags` when the cwd path was cut.
pub const CWD_TRUNCATED: u16 = 2;
/// Set in `path_flags` when the requested filename was cut.
pub const FILENAME_TRUNCATED: u16 = 4;

/// `process.exec` (success or failure): data holds exe, cwd, filename, argv in that order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ExecData {
    /// Bytes of the resolved executable path.
    pub exe_len: u16,
    /// Bytes of the working directory path.
    pub cwd_len: u16,
    /// Bytes of the filename as the caller passed it.
    pub filename_len: u16,
    /// `*_TRUNCATED` flags.
    pub path_flags: u16,
    /// Bytes of argv captured (NUL-separated).
    pub argv_len: u32,
    /// Size of the process's whole argv area (may exceed `argv_len`). For a failed
    /// exec: the bytes of the arguments read, or 0 when the array was cut.
    pub argv_orig_len: u32,
    /// Number of arguments (`argc`), or `u32::MAX` if unknown.
    pub argc: u32,
    /// Thread that called exec (differs from tgid for a non-leader exec).
    pub old_tid: u32,
    /// Return value of the failed syscall (negative errno); 0 on success.
    pub ret: i32,
    /// Reserved, zero.
    pub _pad: u32,
    /// Inode of the executed file (0 for a failed exec).
    pub ino: u64,
    /// Device of the executed file (kernel `dev_t`).
    pub dev: u32,
    /// Id of the mount the executed file was reached on (`struct mount`
    /// `mnt_id`; 0 for a failed exec).
    pub mnt_id: u32,
    /// The run policy's decision on the executed file.
    pub decision: Decision,
}
const _: () = assert!(size_of::<ExecData>() == 64);
const _: () = assert!(core::mem::offset_of!(ExecData, mnt_id) == 44);

/// `process.exit`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ExitData {
    /// Wait status as the parent sees it: `(code << 8) | signal | core flag 0x80`.
    pub exit_status: u32,
    /// Reserved, zero.
    pub _pad: u32,
}
const _: () = assert!(size_of::<ExitData>() == 8);

/// `network.connect`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ConnectData {
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// `SOCK_STREAM` (1) or `SOCK_DGRAM` (2).
    pub sock_type: u16,
    /// IPPROTO_* of the socket.
    pub protocol: u16,
    /// Destination port, host byte order.
    pub port: u16,
    /// Return value of connect(): 0 or a negative errno; see `has_result`.
    pub ret: i32,
    /// 1 when `ret` is known (the connect came through the syscall, or the
    /// kernel refused it), 0 otherwise (io_uring, kernel).
    pub has_result: u16,
    /// How the destination was given: [`VIA_CONNECT`] or [`VIA_SENDMSG`].
    pub via: u16,
    /// Destination address: 4 bytes for IPv4, 16 for IPv6, network order.
    pub addr: [u8; 16],
    /// The run policy's decision on the destination.
    pub decision: Decision,
}
const _: () = assert!(size_of::<ConnectData>() == 48);

/// `ConnectData::via`: connect() (or io_uring connect).
pub const VIA_CONNECT: u16 = 0;
/// `ConnectData::via`: a datagram sent to an address without connect()
/// (reported only when a policy denies it).
pub const VIA_SENDMSG: u16 = 1;

/// Bytes of `sockaddr_un.sun_path`.
pub const UNIX_PATH_BYTES: usize = 108;

/// `network.connect` on an AF_UNIX socket (or a denied datagram to a Unix
/// address). A fixed-size record: both addresses are at most 108 bytes.
///
/// It starts with the `unix.allow` lookup key (policy id, address length,
/// address), so the kernel looks the address up where it assembled it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct UnixConnectData {
    /// The address as the caller gave it (`sun_path` up to its NUL; an
    /// abstract name starts with a NUL byte and is every byte given), with
    /// its length, under the deciding policy's id (0 without a policy).
    pub key: UnixKey,
    /// Return value of connect(): 0 or a negative errno; see `has_result`.
    pub ret: i32,
    /// 1 when `ret` is known.
    pub has_result: u16,
    /// [`VIA_CONNECT`] or [`VIA_SENDMSG`].
    pub via: u16,
    /// `SOCK_STREAM` (1), `SOCK_DGRAM` (2), `SOCK_SEQPACKET` (5).
    pub sock_type: u16,
    /// Bytes of `peer` (the address the connected peer is bound to, read
    /// from the kernel's socket, not from the caller), 0 when unknown.
    pub peer_len: u16,
    /// `UNIX_*` flags.
    pub flags: u16,
    /// Reserved, zero.
    pub _pad: u16,
    /// Identity of the peer's socket file (`sb->s_dev`, `i_ino`), 0 when it
    /// has none (abstract, unnamed) or the connect failed.
    pub peer_dev: u32,
    pub peer_ino: u64,
    /// The run policy's decision (`unix.allow`).
    pub decision: Decision,
    pub peer: [u8; UNIX_PATH_BYTES],
    /// Reserved, zero.
    pub _pad2: u32,
}
const _: () = assert!(size_of::<UnixConnectData>() == 272);
const _: () = assert!(size_of::<UnixConnectData>().is_multiple_of(8));

impl UnixConnectData {
    /// All zero (a `const`, for statics).
    pub const ZERO: Self = Self {
        key: UnixKey {
            policy: 0,
            len: 0,
            path: [0; UNIX_PATH_BYTES],
        },
        ret: 0,
        has_result: 0,
        via: 0,
        sock_type: 0,
        peer_len: 0,
        flags: 0,
        _pad: 0,
        peer_dev: 0,
        peer_ino: 0,
        decision: Decision {
            policy: 0,
            rule: 0,
            verdict: 0,
            enforced: 0,
            _pad: 0,
        },
        peer: [0; UNIX_PATH_BYTES],
        _pad2: 0,
    };
}

impl Default for UnixConnectData {
    fn default() -> Self {
        Self::ZERO
    }
}

/// `UnixConnectData::flags`: the kernel killed the caller at the connect's
/// exit: the socket it reached is not the one its allowed path names (an
/// alias, or a path swapped between the check and the connect).
pub const UNIX_KILLED_IDENTITY: u16 = 1;

/// A socket of a process in a run (`network.listen`, `network.accept`,
/// `network.socket`, or datagrams to an address: `network.connect` with
/// `via: "sendmsg"`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SocketData {
    /// `SOCKET_*`.
    pub what: u16,
    /// `AF_*`.
    pub family: u16,
    /// `SOCK_*`.
    pub sock_type: u16,
    /// `IPPROTO_*`.
    pub protocol: u16,
    /// Host byte order.
    pub local_port: u16,
    pub remote_port: u16,
    /// The call's result where known (0 or a negative errno).
    pub ret: i32,
    /// [`SOCKET_SENDTO`]: datagrams sent to this destination so far (the
    /// record is sent at 1, 2, 4, 8, ...).
    pub count: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// Addresses: 4 bytes for IPv4, 16 for IPv6, network order.
    pub local: [u8; 16],
    pub remote: [u8; 16],
    /// The run policy's decision (raw sockets; connect.allow for sends).
    pub decision: Decision,
}
const _: () = assert!(size_of::<SocketData>() == 72);

/// `SocketData::what`: a socket was created that skips the connect hooks
/// (raw, ICMP datagram, packet).
pub const SOCKET_CREATE: u16 = 1;
/// A listen() succeeded.
pub const SOCKET_LISTEN: u16 = 2;
/// An accept() returned a connection.
pub const SOCKET_ACCEPT: u16 = 3;
/// Datagrams were sent to an address without connect().
pub const SOCKET_SENDTO: u16 = 4;

/// `process.tamper` or `sensor.tamper`: what a process of a run did to a
/// process outside its run, or to the sensor.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TamperData {
    /// `TAMPER_*`.
    pub method: u16,
    /// `TAMPER_FLAG_*`.
    pub flags: u16,
    /// The method's argument: the ptrace request, the signal, the bpf()
    /// command, the open flags.
    pub arg: u32,
    /// The target process (0: none, e.g. a file of the sensor).
    pub target_tgid: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// The target's start time and run, from the kernel's process → run
    /// map (0: the target is in no run).
    pub target_start_ns: u64,
    pub target_run: u64,
    /// For a sensor file: its identity (`sb->s_dev`, `i_ino`) and what it
    /// is (`SENSOR_FILE_*`).
    pub file_dev: u32,
    pub file_kind: u32,
    pub file_ino: u64,
    /// The caller's run policy's decision (`tamper`).
    pub decision: Decision,
}
const _: () = assert!(size_of::<TamperData>() == 64);

/// `TamperData::method`: `ptrace(2)` (`arg`: the request).
pub const TAMPER_PTRACE: u16 = 1;
/// `process_vm_writev(2)`.
pub const TAMPER_VM_WRITE: u16 = 2;
/// `pidfd_getfd(2)`: a file descriptor taken out of another process.
pub const TAMPER_PIDFD_GETFD: u16 = 3;
/// An open of `/proc/PID/mem` (`arg`: the open flags).
pub const TAMPER_PROC_MEM: u16 = 4;
/// A signal to the sensor daemon (`arg`: the signal).
pub const TAMPER_SIGNAL: u16 = 10;
/// An open for writing of a file of the sensor (`file_*`).
pub const TAMPER_SENSOR_FILE: u16 = 11;
/// A `bpf(2)` call (`arg`: the command).
pub const TAMPER_BPF: u16 = 12;
/// `TamperData::flags`: the kernel killed the caller.
pub const TAMPER_FLAG_KILLED: u16 = 1;

/// `TamperData::file_kind`: the pin directory (or a pin in it).
pub const SENSOR_FILE_PINS: u32 = 1;
/// The state directory (or a file in it).
pub const SENSOR_FILE_STATE: u32 = 2;
/// The store database.
pub const SENSOR_FILE_STORE: u32 = 3;
/// The daemon's config file.
pub const SENSOR_FILE_CONFIG: u32 = 4;
/// The daemon's binary.
pub const SENSOR_FILE_BINARY: u32 = 5;

/// A whole record as the kernel assembles it in per-CPU scratch memory.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Event<T: Copy> {
    /// Common header (must stay first).
    pub header: EventHeader,
    /// Per-kind payload.
    pub payload: T,
    /// Variable-length bytes; only the first `header.size - fixed_size` are sent.
    pub data: [u8; EVENT_DATA_BYTES],
}

/// Largest record the kernel can send.
pub const MAX_EVENT_SIZE: usize = size_of::<Event<ExecData>>();

/// A record without variable-length data (connect, exit).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FixedEvent<T: Copy> {
    /// Common header (must stay first).
    pub header: EventHeader,
    /// Per-kind payload.
    pub payload: T,
}

/// Value of the kernel's process → run map (key: tgid).
///
/// A process inherits its creator's entry at fork, in the kernel; the entry is
/// removed when the process exits. `start_ns` guards against pid reuse: an
/// entry whose start time is not the process's own is stale and ignored.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcRun {
    /// Run handle (user space maps it to the run id); never 0.
    pub run: u64,
    /// Start time of the process the entry belongs to, `CLOCK_BOOTTIME` ns.
    pub start_ns: u64,
    /// How the process joined the run: one of the `HOW_*` values.
    pub how: u32,
    /// Reserved, zero.
    pub _pad: u32,
}
const _: () = assert!(size_of::<ProcRun>() == 24);

#[cfg(feature = "user")]
// SAFETY: repr(C), integers only, no padding (size checked above).
unsafe impl aya::Pod for ProcRun {}

/// The process started the run (`sensor launch`).
pub const HOW_LAUNCH: u32 = 1;
/// The process inherited the run from its creator at fork.
pub const HOW_INHERITED: u32 = 2;
/// An `[[agent]]` matcher started the run on the process's exec.
pub const HOW_MATCHER: u32 = 3;
/// Placed at start-up from /proc (ancestry or matcher).
pub const HOW_BACKFILL: u32 = 4;
/// Placed at start-up from its `SENSOR_RUN_ID` environment marker (low trust).
pub const HOW_ENV: u32 = 5;
/// Mask of the `HOW_*` value in [`ProcRun::how`]; the bits above are flags.
pub const HOW_MASK: u32 = 0xff;
/// Flag in [`ProcRun::how`]: the process counts against its run's `max_processes`.
pub const HOW_FLAG_COUNTED: u32 = 0x100;
/// Flag in [`ProcRun::how`]: the process was created over `max_processes`
/// under an enforce policy and is killed before it runs.
pub const HOW_FLAG_KILL: u32 = 0x200;

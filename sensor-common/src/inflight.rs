//! State the kernel programs keep between two hooks of one action, in
//! pinned maps (so a new daemon's programs continue what the old ones
//! began). Defined here so that user space knows their layout: a pinned
//! map of another layout is not reused.

use crate::event::{ConnectData, UnixConnectData};

/// A thread's connect() slot (value of the `SNSR_CONNECT` map, key:
/// pid_tgid): the syscall's entry opens it, a cgroup hook fills in the
/// destination, the syscall's exit adds the result and sends the record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ConnectInflight {
    pub data: ConnectData,
    /// [`FILLED_INET`] or [`FILLED_UNIX`] once a cgroup hook saw the
    /// destination (0: not yet).
    pub filled: u32,
    /// 1 between the syscall's entry and its exit.
    pub open: u32,
    /// The socket's fd, from the syscall's entry.
    pub fd: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// An AF_UNIX destination (`filled == FILLED_UNIX`).
    pub unix: UnixConnectData,
}

/// [`ConnectInflight::filled`]: an IPv4/IPv6 destination is in `data`.
pub const FILLED_INET: u32 = 1;
/// [`ConnectInflight::filled`]: an AF_UNIX destination is in `unix`.
pub const FILLED_UNIX: u32 = 2;

/// A process's datagrams to one destination without connect() (key of the
/// `SNSR_SEND_SEEN` map).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SendKey {
    pub tgid: u32,
    pub family: u16,
    pub port: u16,
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<SendKey>() == 24);

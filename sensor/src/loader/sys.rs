//! The few bpf(2) calls aya does not expose: a link by its id, its full
//! info (a cgroup link's target, which says whether it is still attached),
//! and pinning a link without giving up our own handle on it.
//!
//! aya's `FdLink` keeps its descriptor private and its `pin` consumes the
//! link: a failed pin would close the daemon's only handle and detach the
//! program. Here a second descriptor of the same link is opened by id and
//! pinned; the daemon's own handle is never at risk.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use nix::libc;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;

/// `bpf_link_type`: a cgroup link (`BPF_LINK_TYPE_CGROUP`).
pub const LINK_TYPE_CGROUP: u32 = 3;

/// `union bpf_attr` for `BPF_*_GET_FD_BY_ID`.
#[repr(C)]
struct GetFdById {
    id: u32,
    next_id: u32,
    open_flags: u32,
}

/// `union bpf_attr` for `BPF_OBJ_PIN`.
#[repr(C)]
struct ObjPin {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
}

/// `union bpf_attr` for `BPF_OBJ_GET_INFO_BY_FD`.
#[repr(C)]
struct InfoByFd {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: bpf(2) reads `size_of::<T>()` bytes of an initialised,
    // repr(C) attribute struct that lives across the call; every pointer in
    // it points to memory that outlives the call too.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            std::ptr::from_ref(attr),
            size_of::<T>() as libc::c_uint,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A new descriptor of link `id`.
pub fn link_fd(id: u32) -> io::Result<OwnedFd> {
    let fd = bpf(
        BPF_LINK_GET_FD_BY_ID,
        &GetFdById {
            id,
            next_id: 0,
            open_flags: 0,
        },
    )?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// What the kernel says of one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkState {
    pub id: u32,
    pub program_id: u32,
    /// `bpf_link_type`.
    pub kind: u32,
    /// Whether the link still attaches its program. Only a cgroup link can
    /// be detached while open (`BPF_LINK_DETACH`; its cgroup id reads 0
    /// afterwards); tracepoint and raw tracepoint links refuse it.
    pub attached: bool,
}

/// The state of link `id`, or `None` when no such link exists.
pub fn link_state(id: u32) -> io::Result<Option<LinkState>> {
    match link_fd(id) {
        Ok(fd) => link_state_of(&fd).map(Some),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The state of the link behind `fd`.
pub fn link_state_of(fd: &OwnedFd) -> io::Result<LinkState> {
    // struct bpf_link_info: type, id, prog_id (u32 each), then an
    // 8-aligned union (offset 16) whose cgroup member starts with the cgroup
    // id. Pointers in the union (names of tracepoints) are left 0, so the
    // kernel writes no string.
    #[repr(C, align(8))]
    struct Info([u8; 64]);
    let mut info = Info([0; 64]);
    bpf(
        BPF_OBJ_GET_INFO_BY_FD,
        &InfoByFd {
            bpf_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
            info_len: size_of::<Info>() as u32,
            info: info.0.as_mut_ptr() as u64,
        },
    )?;
    let b = &info.0;
    let u32_at = |o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let mut cgroup = [0u8; 8];
    cgroup.copy_from_slice(&b[16..24]);
    let kind = u32_at(0);
    Ok(LinkState {
        id: u32_at(4),
        program_id: u32_at(8),
        kind,
        attached: kind != LINK_TYPE_CGROUP || u64::from_ne_bytes(cgroup) != 0,
    })
}

/// Pins link `id` at `path` (which must not exist), through a descriptor of
/// its own.
pub fn pin_link(id: u32, path: &Path) -> io::Result<()> {
    let fd = link_fd(id)?;
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a pin path"))?;
    bpf(
        BPF_OBJ_PIN,
        &ObjPin {
            pathname: path.as_ptr() as u64,
            bpf_fd: u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX),
            file_flags: 0,
        },
    )?;
    Ok(())
}

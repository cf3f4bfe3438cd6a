//! The few bpf(2) calls aya does not expose for links: a descriptor of our
//! own, the full link info (a cgroup link's target says whether it is still
//! attached), pinning through that descriptor, and opening a pin.
//!
//! aya's `FdLink` keeps its descriptor private, and its `pin` consumes the
//! link: a failed pin would close the daemon's only handle and detach the
//! program. So the daemon takes a duplicate of the link's descriptor
//! ([`own_link_fd`]) and works with that alone. None of these calls needs
//! `CAP_SYS_ADMIN` (the systemd unit does not grant it): no lookup by id, only
//! descriptors the daemon holds and pins it can read.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use aya::programs::links::FdLink;
use nix::libc;

const BPF_OBJ_PIN: libc::c_long = 6;
const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// `bpf_link_type`: a cgroup link (`BPF_LINK_TYPE_CGROUP`).
pub const LINK_TYPE_CGROUP: u32 = 3;

/// `union bpf_attr` for `BPF_OBJ_PIN` and `BPF_OBJ_GET`.
#[repr(C)]
struct ObjPath {
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

fn fd_u32(fd: BorrowedFd<'_>) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(u32::MAX)
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a pin path"))
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

/// The state of the link behind `fd`.
pub fn link_state(fd: BorrowedFd<'_>) -> io::Result<LinkState> {
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
            bpf_fd: fd_u32(fd),
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

/// Pins the object behind `fd` at `path` (which must not exist).
pub fn pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let path = c_path(path)?;
    bpf(
        BPF_OBJ_PIN,
        &ObjPath {
            pathname: path.as_ptr() as u64,
            bpf_fd: fd_u32(fd),
            file_flags: 0,
        },
    )?;
    Ok(())
}

/// A descriptor of the object pinned at `path`.
pub fn open_pin(path: &Path) -> io::Result<OwnedFd> {
    let path = c_path(path)?;
    let fd = bpf(
        BPF_OBJ_GET,
        &ObjPath {
            pathname: path.as_ptr() as u64,
            bpf_fd: 0,
            file_flags: 0,
        },
    )?;
    let fd = RawFd::try_from(fd).map_err(|_| io::Error::other("bpf returned a bad fd"))?;
    // SAFETY: the kernel just returned this descriptor to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The state of the link pinned at `path` (an error when nothing, or no
/// link, is pinned there).
pub fn pinned_link_state(path: &Path) -> io::Result<LinkState> {
    let fd = open_pin(path)?;
    link_state(std::os::fd::AsFd::as_fd(&fd))
}

/// A descriptor of our own for `link`, which keeps the link alive by itself
/// (`link` can then be dropped).
///
/// aya does not lend the descriptor out, so the process's descriptors are
/// searched: each one that is a BPF link is duplicated, and the duplicate
/// kept if it is the link with `link`'s id. Duplicating before looking means
/// a descriptor closed and reused meanwhile (by another thread) is only ever
/// looked at, never taken by mistake.
pub fn own_link_fd(link: &FdLink) -> io::Result<OwnedFd> {
    let id = link.info().map_err(io::Error::other)?.id();
    for entry in std::fs::read_dir("/proc/self/fd")?.flatten() {
        let is_link = std::fs::read_link(entry.path())
            .is_ok_and(|t| t.as_os_str().as_bytes() == b"anon_inode:bpf_link");
        let Some(raw) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<RawFd>().ok())
        else {
            continue;
        };
        if !is_link {
            continue;
        }
        // SAFETY: F_DUPFD_CLOEXEC on any number is harmless: it fails on a
        // closed one, and what it returns is a new descriptor of ours.
        let dup = unsafe { libc::fcntl(raw, libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            continue;
        }
        // SAFETY: fcntl just created this descriptor for us.
        let dup = unsafe { OwnedFd::from_raw_fd(dup) };
        if link_state(std::os::fd::AsFd::as_fd(&dup)).is_ok_and(|s| s.id == id) {
            return Ok(dup);
        }
    }
    Err(io::Error::other(format!(
        "link {id} is not among this process's descriptors"
    )))
}

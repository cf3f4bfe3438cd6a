//! Exec rules resolved to file identities: what the kernel compares the
//! executed file against. An exact path is resolved to the file it names
//! (symlinks followed), a directory to the directory's own identity (the
//! kernel walks the executed file's parents), a glob to every file it
//! matches now. Resolution runs when the policy loads and again on every
//! refresh, so a replaced binary (a package upgrade writes a new inode) is
//! picked up.

use std::{
    io::Read as _,
    os::{
        fd::{AsFd, AsRawFd as _, BorrowedFd, OwnedFd},
        unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    },
    path::Path,
    sync::OnceLock,
};

use sha2::{Digest as _, Sha256};

/// A file's identity as user space sees it (`st_dev`, `st_ino`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The identity of the file at `path` (symlinks followed).
    pub fn of(path: &Path) -> std::io::Result<Self> {
        let meta = std::fs::metadata(path)?;
        Ok(Self {
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// The device as the kernel's `sb->s_dev` encodes it (`major << 20 | minor`).
    #[must_use]
    pub fn kernel_dev(&self) -> u32 {
        st_dev_to_kernel_dev(self.dev)
    }
}

/// What a file looks like without reading it: identity and change time
/// (`ctime` moves on every write, rename over it, or chmod).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    id: FileId,
    ctime: i64,
    ctime_nsec: i64,
}

impl Stamp {
    /// The stamp of the file at `path` now (symlinks followed).
    #[must_use]
    pub fn of(path: &Path) -> Option<Self> {
        let meta = std::fs::metadata(path).ok()?;
        Some(Self {
            id: FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            },
            ctime: meta.ctime(),
            ctime_nsec: meta.ctime_nsec(),
        })
    }
}

/// glibc's `st_dev` encoding to the kernel's internal `dev_t`.
#[must_use]
pub fn st_dev_to_kernel_dev(dev: u64) -> u32 {
    let major = ((dev >> 8) & 0xfff) | ((dev >> 32) & !0xfff);
    let minor = (dev & 0xff) | ((dev >> 12) & !0xff);
    ((major as u32) << 20) | (minor as u32 & 0xf_ffff)
}

/// The kernel's `dev_t` (major << 20 | minor) as `st_dev` (glibc's encoding).
#[must_use]
pub fn kernel_dev_to_st_dev(dev: u32) -> u64 {
    let (major, minor) = (u64::from(dev >> 20), u64::from(dev & 0xf_ffff));
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// The largest file a pinned rule hashes (a bigger one cannot be pinned):
/// hashing it takes about a second here, and a sparse file of any size is
/// one `truncate` away for whoever can write the path.
pub const HASH_MAX_BYTES: u64 = 1 << 30;

/// The change time of a file (seconds, nanoseconds), as the kernel stores it.
pub type Ctime = (i64, u32);

/// A file a pinned rule allows: the identity and change time of the file
/// whose contents were hashed (the same open file, so they cannot differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hashed {
    pub id: FileId,
    pub ctime: Ctime,
}

/// Why a file or directory rule does not resolve (the message is what
/// follows the rule in the config refusal).
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot be hashed: {0}")]
    Hash(std::io::Error),
    #[error("cannot be hashed: it is {0}, not a regular file")]
    NotRegular(&'static str),
    #[error(
        "cannot be hashed: it is {0} bytes, over the {HASH_MAX_BYTES}-byte limit for pinned files"
    )]
    TooBig(u64),
    #[error("cannot be hashed: it grew past the limit while it was read")]
    Grew,
    #[error("cannot be hashed: it changed while it was read")]
    Changed,
    #[error("sha256 is {actual}, not the pinned {expected}")]
    Mismatch { actual: String, expected: String },
    #[error("{0}")]
    Io(std::io::Error),
    #[error("is a directory (end it with '/' to allow everything under it)")]
    IsDir,
    #[error("is not a directory")]
    NotDir,
    #[error("{}", .0.desc())]
    Open(nix::errno::Errno),
    #[error("cannot stat it: {0}")]
    Stat(std::io::Error),
    #[error("{0}")]
    Pattern(super::pathglob::PatternError),
}

/// Hex sha256 of the file at `path`, and which file that was. Never blocks
/// on what the path may have been replaced with: it is opened with
/// `O_NONBLOCK` (a FIFO opens at once) and `O_NOFOLLOW` after resolving it
/// (a symlink swapped in meanwhile fails), and only a regular file of at most
/// [`HASH_MAX_BYTES`] is read (not a device like /dev/zero, nor a 1 TiB
/// sparse file). Errors say why the file cannot be hashed.
pub fn sha256_file(path: &Path) -> Result<(String, Hashed), ResolveError> {
    let resolved = std::fs::canonicalize(path).map_err(ResolveError::Hash)?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(&resolved)
        .map_err(ResolveError::Hash)?;
    let before = file.metadata().map_err(ResolveError::Hash)?;
    let kind = before.file_type();
    if !kind.is_file() {
        let what = if kind.is_fifo() {
            "a FIFO"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_socket() {
            "a socket"
        } else if kind.is_dir() {
            "a directory"
        } else {
            "not a regular file"
        };
        return Err(ResolveError::NotRegular(what));
    }
    if before.len() > HASH_MAX_BYTES {
        return Err(ResolveError::TooBig(before.len()));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut read: u64 = 0;
    loop {
        let n = file.read(&mut buf).map_err(ResolveError::Hash)?;
        if n == 0 {
            break;
        }
        read = read.saturating_add(n as u64);
        if read > HASH_MAX_BYTES {
            return Err(ResolveError::Grew);
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    let after = file.metadata().map_err(ResolveError::Hash)?;
    let ctime = |m: &std::fs::Metadata| (m.ctime(), u32::try_from(m.ctime_nsec()).unwrap_or(0));
    if ctime(&after) != ctime(&before) || after.len() != before.len() {
        return Err(ResolveError::Changed);
    }
    Ok((
        hex::encode(hasher.finalize()),
        Hashed {
            id: FileId {
                dev: after.dev(),
                ino: after.ino(),
            },
            ctime: ctime(&after),
        },
    ))
}

/// A pinned file: hashed, and checked against the pinned sha256.
pub fn resolve_pinned(path: &str, expected: &str) -> Result<Hashed, ResolveError> {
    let (actual, hashed) = sha256_file(Path::new(path))?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(ResolveError::Mismatch {
            actual,
            expected: expected.to_owned(),
        });
    }
    Ok(hashed)
}

/// An exact file rule (not pinned): the identity of the file it names.
pub fn resolve_file(path: &str) -> Result<FileId, ResolveError> {
    let meta = std::fs::metadata(Path::new(path)).map_err(ResolveError::Io)?;
    if meta.is_dir() {
        return Err(ResolveError::IsDir);
    }
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// A directory a directory rule allows: everything below it on the mount it
/// was resolved on (the kernel's walk up from an executed file stays on the
/// file's mount, and compares the mount's id with `mnt_id`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dir {
    /// Canonical path, ending in `/` (user space's own check compares it).
    pub path: String,
    pub id: FileId,
    /// Id of the mount the directory was reached on (`STATX_MNT_ID`): the
    /// same number the kernel has in `struct mount` `mnt_id`.
    pub mnt_id: u32,
}

/// A directory rule: the directory, resolved in the rules' mount namespace
/// (see [`rules_root`]).
pub fn resolve_dir(path: &str) -> Result<Dir, ResolveError> {
    resolve_dir_in(rules_root(), path)
}

/// [`resolve_dir`] looking the path up under `root` (a directory handle
/// that stands for `/`, as `/proc/PID/root` does for another mount
/// namespace), or in the daemon's own mount namespace.
pub fn resolve_dir_in(root: Option<BorrowedFd<'_>>, path: &str) -> Result<Dir, ResolveError> {
    let resolved = std::fs::canonicalize(path).map_err(ResolveError::Io)?;
    let mut text = resolved.to_string_lossy().into_owned();
    if !text.ends_with('/') {
        text.push('/');
    }
    // Identity and mount from one open handle, so they describe the same
    // directory even if the path changes meanwhile.
    let dir = open_dir(root, path).map_err(|e| match e {
        nix::errno::Errno::ENOTDIR => ResolveError::NotDir,
        e => ResolveError::Open(e),
    })?;
    let (id, mnt_id) = dir_identity(dir.as_fd()).map_err(ResolveError::Stat)?;
    Ok(Dir {
        path: text,
        id,
        mnt_id,
    })
}

/// Opens the directory at absolute `path` (`O_PATH`): under `root` with
/// `RESOLVE_IN_ROOT` (absolute symlinks and `..` stay inside it), or from
/// the daemon's own root.
fn open_dir(root: Option<BorrowedFd<'_>>, path: &str) -> nix::Result<OwnedFd> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    match root {
        Some(root) => openat2(
            root,
            match path.trim_start_matches('/') {
                "" => ".",
                rel => rel,
            },
            OpenHow::new()
                .flags(flags)
                .resolve(ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS),
        ),
        None => open(path, flags, nix::sys::stat::Mode::empty()),
    }
}

/// Identity and mount id of the open directory `fd` (`statx`; the mount id
/// from `/proc/self/fdinfo` on kernels before 5.8, whose `statx` lacks it).
fn dir_identity(fd: BorrowedFd<'_>) -> std::io::Result<(FileId, u32)> {
    use nix::libc;
    // SAFETY: an all-zero statx is a valid value to be overwritten.
    let mut stx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, an empty C string with AT_EMPTY_PATH, a valid out pointer.
    let rc = unsafe {
        libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            libc::STATX_TYPE | libc::STATX_INO | libc::STATX_MNT_ID,
            &raw mut stx,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if u32::from(stx.stx_mode) & libc::S_IFMT != libc::S_IFDIR {
        return Err(std::io::Error::other("not a directory"));
    }
    let id = FileId {
        dev: libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
    };
    let mnt_id = if stx.stx_mask & libc::STATX_MNT_ID != 0 {
        u32::try_from(stx.stx_mnt_id).map_err(std::io::Error::other)?
    } else {
        fdinfo_mnt_id(fd)?
    };
    Ok((id, mnt_id))
}

/// Identity and mount id of the file at `path` now (symlinks followed), or
/// `None` when it cannot be looked at: `sensor policy test` replays a stored
/// exec, whose record has the file's identity but not its mount.
#[must_use]
pub fn file_mount(path: &Path) -> Option<(FileId, u32)> {
    use nix::fcntl::{OFlag, open};
    let fd = open(
        path,
        OFlag::O_PATH | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()?;
    // SAFETY: an all-zero statx is a valid value to be overwritten.
    let mut stx: nix::libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid fd, an empty C string with AT_EMPTY_PATH, a valid out pointer.
    let rc = unsafe {
        nix::libc::statx(
            fd.as_raw_fd(),
            c"".as_ptr(),
            nix::libc::AT_EMPTY_PATH,
            nix::libc::STATX_INO | nix::libc::STATX_MNT_ID,
            &raw mut stx,
        )
    };
    if rc != 0 {
        return None;
    }
    let id = FileId {
        dev: nix::libc::makedev(stx.stx_dev_major, stx.stx_dev_minor),
        ino: stx.stx_ino,
    };
    let mnt_id = if stx.stx_mask & nix::libc::STATX_MNT_ID != 0 {
        u32::try_from(stx.stx_mnt_id).ok()?
    } else {
        fdinfo_mnt_id(fd.as_fd()).ok()?
    };
    Some((id, mnt_id))
}

/// `mnt_id:` of `/proc/self/fdinfo/FD`.
fn fdinfo_mnt_id(fd: BorrowedFd<'_>) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| std::io::Error::other("no mnt_id in fdinfo"))
}

/// Where directory rules are looked up: `None` for the daemon's own mount
/// namespace, or a handle on the root of PID 1's (the host's) when the
/// daemon runs in a mount namespace of its own, as under the shipped
/// systemd unit (`ProtectSystem=` and friends): there every mount is a copy
/// with its own id, and a rule resolved on it would allow nothing to the
/// agents on the host. Decided once. When the daemon cannot look into PID
/// 1's namespace (`/proc/1/ns/mnt` and `/proc/1/root` need ptrace access to
/// PID 1), its own is used.
pub fn rules_root() -> Option<BorrowedFd<'static>> {
    static ROOT: OnceLock<Option<OwnedFd>> = OnceLock::new();
    ROOT.get_or_init(|| {
        let ns = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino()));
        let (own, host) = match (ns("/proc/self/ns/mnt"), ns("/proc/1/ns/mnt")) {
            (Ok(own), Ok(host)) => (own, host),
            (_, Err(e)) => {
                tracing::debug!(error = %e, "cannot see PID 1's mount namespace; directory rules are resolved in the daemon's own");
                return None;
            }
            (Err(e), _) => {
                tracing::debug!(error = %e, "cannot see the daemon's own mount namespace");
                return None;
            }
        };
        if own == host {
            return None;
        }
        match nix::fcntl::open(
            "/proc/1/root",
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        ) {
            Ok(fd) => {
                tracing::info!("the daemon runs in a mount namespace of its own: directory rules are resolved in PID 1's (the host's)");
                Some(fd)
            }
            Err(e) => {
                tracing::warn!(error = %e, "the daemon runs in a mount namespace of its own and cannot open /proc/1/root: directory rules are resolved in the daemon's namespace and allow nothing on the host");
                None
            }
        }
    })
    .as_ref()
    .map(AsFd::as_fd)
}

/// Every regular file a glob matches now (symlinks followed), sorted.
pub fn expand_glob(pattern: &str) -> Result<Vec<FileId>, ResolveError> {
    let paths = super::pathglob::paths(pattern).map_err(ResolveError::Pattern)?;
    let mut ids: Vec<FileId> = paths
        .into_iter()
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            meta.is_file().then(|| FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            })
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// Every directory a glob ending in `/` matches now, each resolved as a
/// directory rule, sorted.
pub fn expand_dir_glob(pattern: &str) -> Result<Vec<Dir>, ResolveError> {
    let paths =
        super::pathglob::paths(pattern.trim_end_matches('/')).map_err(ResolveError::Pattern)?;
    let mut dirs: Vec<Dir> = paths
        .into_iter()
        .filter(|p| p.is_dir())
        .filter_map(|p| resolve_dir(p.to_str()?).ok())
        .collect();
    dirs.sort_unstable();
    dirs.dedup();
    Ok(dirs)
}

/// Where dynamic loaders live on the distributions we know; the identities
/// found are the loader set (run directly, a loader executes any file).
const LOADER_GLOBS: &[&str] = &[
    "/lib/ld-linux*.so*",
    "/lib64/ld-linux*.so*",
    "/lib/*/ld-linux*.so*",
    "/usr/lib/ld-linux*.so*",
    "/usr/lib64/ld-linux*.so*",
    "/usr/lib/*/ld-linux*.so*",
    "/lib/ld-musl-*.so*",
    "/usr/lib/ld-musl-*.so*",
    "/lib/ld64.so*",
    "/lib64/ld64.so*",
];

/// Identities of the dynamic loaders on this machine.
#[must_use]
pub fn loaders() -> Vec<FileId> {
    let mut ids: Vec<FileId> = LOADER_GLOBS
        .iter()
        .filter_map(|g| expand_glob(g).ok())
        .flatten()
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a watched agent can put where a pinned file was: each is refused
    /// at once with a reason, none is read (a FIFO would block forever,
    /// /dev/zero and a sparse 1 TiB file would never end).
    /// (Also fuzz/corpus/config/crash-sha256-of-dev-zero.)
    #[test]
    fn what_cannot_be_hashed_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o644)).unwrap();
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        let sparse = dir.path().join("sparse");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(1 << 40)
            .unwrap();
        let started = std::time::Instant::now();
        for (path, why) in [
            (&fifo, "a FIFO"),
            (&zero, "a device"),
            (&sparse, "over the"),
            (&dir.path().to_path_buf(), "a directory"),
        ] {
            let err = sha256_file(path).unwrap_err().to_string();
            assert!(
                err.contains("cannot be hashed") && err.contains(why),
                "{}: {err}",
                path.display()
            );
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn dev_encodings_round_trip() {
        let meta = std::fs::metadata("/usr/bin/true").unwrap();
        let k = st_dev_to_kernel_dev(meta.dev());
        assert_eq!(kernel_dev_to_st_dev(k), meta.dev());
        // 259:1 (nvme) and 8:17 (sd) as the kernel encodes them.
        assert_eq!(
            st_dev_to_kernel_dev(kernel_dev_to_st_dev((259 << 20) | 1)),
            (259 << 20) | 1
        );
        assert_eq!(
            st_dev_to_kernel_dev(kernel_dev_to_st_dev((8 << 20) | 17)),
            (8 << 20) | 17
        );
    }

    #[test]
    fn files_dirs_globs_and_loaders_resolve() {
        let t = resolve_file("/usr/bin/true").unwrap();
        assert_eq!(t, FileId::of(Path::new("/usr/bin/true")).unwrap());
        assert!(resolve_file("/usr/bin/").is_err());
        assert!(matches!(
            resolve_pinned("/usr/bin/true", "00"),
            Err(ResolveError::Mismatch { .. })
        ));
        let (sum, _) = sha256_file(Path::new("/usr/bin/true")).unwrap();
        assert_eq!(resolve_pinned("/usr/bin/true", &sum).unwrap().id, t);
        let dir = resolve_dir("/usr/bin/").unwrap();
        assert!(dir.path.ends_with("/bin/"), "{}", dir.path);
        let usr_bin = FileId::of(Path::new("/usr/bin")).unwrap();
        assert_eq!(dir.id, usr_bin);
        assert_eq!(
            resolve_dir("/usr/bin/true").unwrap_err().to_string(),
            "is not a directory"
        );
        assert!(expand_glob("/usr/bin/tru*").unwrap().contains(&t));
        assert!(!expand_glob("/usr/bi*").unwrap().contains(&usr_bin));
        assert!(expand_dir_glob("/usr/bi*/").unwrap().contains(&dir));
        assert!(
            !loaders().is_empty(),
            "no dynamic loader found on this machine"
        );
    }

    /// The id of the mount at `mountpoint` in /proc/self/mountinfo (the
    /// last one there: what the path reaches).
    fn mountinfo_id(mountpoint: &str) -> u32 {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        text.lines()
            .rev()
            .find_map(|l| {
                let f: Vec<&str> = l.split(' ').collect();
                (f.get(4) == Some(&mountpoint)).then(|| f[0].parse().unwrap())
            })
            .unwrap()
    }

    #[test]
    fn a_directory_is_resolved_with_the_id_of_its_mount() {
        let root = resolve_dir("/").unwrap();
        assert_eq!(root.mnt_id, mountinfo_id("/"));
        // The fallback of kernels before 5.8 reads the same number.
        let fd = open_dir(None, "/").unwrap();
        assert_eq!(fdinfo_mnt_id(fd.as_fd()).unwrap(), root.mnt_id);
        let proc = resolve_dir("/proc/").unwrap();
        assert_eq!(proc.mnt_id, mountinfo_id("/proc"));
        assert_ne!(proc.mnt_id, root.mnt_id);
    }

    /// Through `/proc/PID/root` a path is looked up in PID's mount
    /// namespace: a tmpfs mounted there (and only there) is what the rule
    /// gets, and the namespace's copy of `/` is another mount than ours.
    /// (How the daemon resolves rules in the host's namespace from a
    /// namespace of its own.) Needs root.
    #[test]
    fn a_directory_is_resolved_in_another_mount_namespace_through_its_root() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root (unshare -m)");
            return;
        }
        use std::io::BufRead as _;
        let dir = tempfile::tempdir().unwrap();
        let at = dir.path().display().to_string();
        let mut child = std::process::Command::new("unshare")
            .args(["-m", "sh", "-c"])
            .arg(format!(
                "mount -t tmpfs x {at} && echo ready && exec sleep 30"
            ))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let result = std::panic::catch_unwind(|| {
            assert_eq!(line.trim(), "ready");
            let root = nix::fcntl::open(
                format!("/proc/{}/root", child.id()).as_str(),
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY,
                nix::sys::stat::Mode::empty(),
            )
            .unwrap();
            let ours = resolve_dir_in(None, &at).unwrap();
            let theirs = resolve_dir_in(Some(root.as_fd()), &at).unwrap();
            assert_eq!(ours.path, theirs.path);
            assert_ne!(ours.id.dev, theirs.id.dev, "their tmpfs, not our directory");
            assert_ne!(ours.mnt_id, theirs.mnt_id);
            let our_root = resolve_dir_in(None, "/").unwrap();
            let their_root = resolve_dir_in(Some(root.as_fd()), "/").unwrap();
            assert_eq!(our_root.id, their_root.id, "the same directory");
            assert_ne!(our_root.mnt_id, their_root.mnt_id, "on a copy of the mount");
        });
        let _ = child.kill();
        let _ = child.wait();
        if let Err(e) = result {
            std::panic::resume_unwind(e);
        }
    }
}

//! Exec rules resolved to file identities: what the kernel compares the
//! executed file against. An exact path is resolved to the file it names
//! (symlinks followed), a directory to the directory's own identity (the
//! kernel walks the executed file's parents), a glob to every file it
//! matches now. Resolution runs when the policy loads and again on every
//! refresh, so a replaced binary (a package upgrade writes a new inode) is
//! picked up.

use std::{
    io::Read as _,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::Path,
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

/// Hex sha256 of the file at `path`, and which file that was. Never blocks
/// on what the path may have been replaced with: it is opened with
/// `O_NONBLOCK` (a FIFO opens at once) and `O_NOFOLLOW` after resolving it
/// (a symlink swapped in meanwhile fails), and only a regular file of at most
/// [`HASH_MAX_BYTES`] is read (not a device like /dev/zero, nor a 1 TiB
/// sparse file). Errors say why the file cannot be hashed.
pub fn sha256_file(path: &Path) -> Result<(String, Hashed), String> {
    let resolved = std::fs::canonicalize(path).map_err(|e| format!("cannot be hashed: {e}"))?;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK | nix::libc::O_NOCTTY)
        .open(&resolved)
        .map_err(|e| format!("cannot be hashed: {e}"))?;
    let before = file
        .metadata()
        .map_err(|e| format!("cannot be hashed: {e}"))?;
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
        return Err(format!(
            "cannot be hashed: it is {what}, not a regular file"
        ));
    }
    if before.len() > HASH_MAX_BYTES {
        return Err(format!(
            "cannot be hashed: it is {} bytes, over the {HASH_MAX_BYTES}-byte limit for pinned files",
            before.len()
        ));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut read: u64 = 0;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| format!("cannot be hashed: {e}"))?;
        if n == 0 {
            break;
        }
        read = read.saturating_add(n as u64);
        if read > HASH_MAX_BYTES {
            return Err("cannot be hashed: it grew past the limit while it was read".into());
        }
        hasher.update(buf.get(..n).unwrap_or_default());
    }
    let after = file
        .metadata()
        .map_err(|e| format!("cannot be hashed: {e}"))?;
    let ctime = |m: &std::fs::Metadata| (m.ctime(), u32::try_from(m.ctime_nsec()).unwrap_or(0));
    if ctime(&after) != ctime(&before) || after.len() != before.len() {
        return Err("cannot be hashed: it changed while it was read".into());
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
pub fn resolve_pinned(path: &str, expected: &str) -> Result<Hashed, String> {
    let (actual, hashed) = sha256_file(Path::new(path))?;
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(format!("sha256 is {actual}, not the pinned {expected}"));
    }
    Ok(hashed)
}

/// An exact file rule (not pinned): the identity of the file it names.
pub fn resolve_file(path: &str) -> Result<FileId, String> {
    let meta = std::fs::metadata(Path::new(path)).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("is a directory (end it with '/' to allow everything under it)".into());
    }
    Ok(FileId {
        dev: meta.dev(),
        ino: meta.ino(),
    })
}

/// A directory rule: the directory's canonical path (ending in `/`) and identity.
pub fn resolve_dir(path: &str) -> Result<(String, FileId), String> {
    let resolved = std::fs::canonicalize(path).map_err(|e| e.to_string())?;
    let meta = std::fs::metadata(&resolved).map_err(|e| e.to_string())?;
    if !meta.is_dir() {
        return Err("is not a directory".into());
    }
    let mut text = resolved.to_string_lossy().into_owned();
    if !text.ends_with('/') {
        text.push('/');
    }
    Ok((
        text,
        FileId {
            dev: meta.dev(),
            ino: meta.ino(),
        },
    ))
}

/// Every regular file (or, with `dirs`, every directory) a glob matches now
/// (symlinks followed), sorted.
pub fn expand_glob(pattern: &str, dirs: bool) -> Result<Vec<FileId>, String> {
    let paths = glob::glob(pattern.trim_end_matches('/')).map_err(|e| e.to_string())?;
    let mut ids: Vec<FileId> = paths
        .filter_map(Result::ok)
        .filter_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            let wanted = if dirs { meta.is_dir() } else { meta.is_file() };
            wanted.then(|| FileId {
                dev: meta.dev(),
                ino: meta.ino(),
            })
        })
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
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
        .filter_map(|g| expand_glob(g, false).ok())
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
            let err = sha256_file(path).unwrap_err();
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
        assert!(
            resolve_pinned("/usr/bin/true", "00")
                .unwrap_err()
                .contains("sha256")
        );
        let (sum, _) = sha256_file(Path::new("/usr/bin/true")).unwrap();
        assert_eq!(resolve_pinned("/usr/bin/true", &sum).unwrap().id, t);
        let (text, _) = resolve_dir("/usr/bin/").unwrap();
        assert!(text.ends_with("/bin/"), "{text}");
        assert!(expand_glob("/usr/bin/tru*", false).unwrap().contains(&t));
        let usr_bin = FileId::of(Path::new("/usr/bin")).unwrap();
        assert!(expand_glob("/usr/bi*/", true).unwrap().contains(&usr_bin));
        assert!(!expand_glob("/usr/bi*/", false).unwrap().contains(&usr_bin));
        assert!(
            !loaders().is_empty(),
            "no dynamic loader found on this machine"
        );
    }
}

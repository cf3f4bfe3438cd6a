//! Exec rules resolved to file identities: what the kernel compares the
//! executed file against. An exact path is resolved to the file it names
//! (symlinks followed), a directory to the directory's own identity (the
//! kernel walks the executed file's parents), a glob to every file it
//! matches now. Resolution runs when the policy loads and again on every
//! refresh, so a replaced binary (a package upgrade writes a new inode) is
//! picked up.

use std::{io::Read as _, os::unix::fs::MetadataExt as _, path::Path};

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

/// Hex sha256 of the regular file at `path`. Anything else is an error: a
/// device such as /dev/zero never ends, a FIFO blocks (opened non-blocking,
/// then checked on the open file, so a swap in between changes nothing).
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// An exact file rule: its identity, checked against a pinned sha256 if given.
pub fn resolve_file(path: &str, sha256: Option<&str>) -> Result<FileId, String> {
    let p = Path::new(path);
    let meta = std::fs::metadata(p).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("is a directory (end it with '/' to allow everything under it)".into());
    }
    if let Some(expected) = sha256 {
        let actual = sha256_file(p).map_err(|e| e.to_string())?;
        if !actual.eq_ignore_ascii_case(expected) {
            return Err(format!("sha256 is {actual}, not the pinned {expected}"));
        }
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

    /// fuzz/corpus/config/crash-sha256-of-dev-zero: a policy pinning the
    /// sha256 of /dev/zero (`exec.allow = [{ path = "/dev/zero", sha256 =
    /// "00" }]`) hashed it forever: config load, `policy check` and a reload
    /// hung (the config target's 30 s timeout). A FIFO blocked in open.
    #[test]
    fn only_regular_files_are_hashed() {
        let err = resolve_file("/dev/zero", Some("00")).unwrap_err();
        assert!(err.contains("not a regular file"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(resolve_file(fifo.to_str().unwrap(), Some("00")).is_err());
    }

    #[test]
    fn files_dirs_globs_and_loaders_resolve() {
        let t = resolve_file("/usr/bin/true", None).unwrap();
        assert_eq!(t, FileId::of(Path::new("/usr/bin/true")).unwrap());
        assert!(resolve_file("/usr/bin/", None).is_err());
        assert!(
            resolve_file("/usr/bin/true", Some("00"))
                .unwrap_err()
                .contains("sha256")
        );
        let sum = sha256_file(Path::new("/usr/bin/true")).unwrap();
        assert_eq!(resolve_file("/usr/bin/true", Some(&sum)).unwrap(), t);
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

//! The pseudo-filesystems the sensor needs: tracefs (tracepoint formats and
//! attach), bpffs (pins) and the cgroup2 root (connect hooks). Found in
//! `/proc/self/mountinfo`, mounted when absent.

use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::mount::{MsFlags, mount};
use procfs::process::MountInfo;

use super::LoaderError;

/// Where tracefs is expected (aya looks here first).
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where bpffs is expected.
pub const BPFFS: &str = "/sys/fs/bpf";

/// One line of `/proc/self/mountinfo`, the two fields we need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_point: PathBuf,
    pub fs_type: String,
}

/// Parses mountinfo text (see proc(5)) with `procfs`; a line it cannot
/// parse is skipped. The mount point comes back with its octal escapes
/// (`\040` for a space), which procfs leaves as they are.
#[must_use]
pub fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines()
        .filter_map(|line| MountInfo::from_line(line).ok())
        .map(|m| MountEntry {
            mount_point: PathBuf::from(unescape_octal(&m.mount_point.to_string_lossy())),
            fs_type: m.fs_type,
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && bytes[i + 1..i + 4]
                .iter()
                .all(|b| (b'0'..=b'7').contains(b))
        {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn mounts() -> Result<Vec<MountEntry>, LoaderError> {
    let text = fs::read_to_string("/proc/self/mountinfo").map_err(|source| LoaderError::Io {
        what: "reading /proc/self/mountinfo",
        source,
    })?;
    Ok(parse_mountinfo(&text))
}

/// Mounts `fs_type` at `target` unless a filesystem of that type is already there.
/// Returns true when it mounted.
pub fn ensure_mounted(fs_type: &'static str, target: &'static str) -> Result<bool, LoaderError> {
    let target_path = Path::new(target);
    if mounts()?
        .iter()
        .any(|m| m.fs_type == fs_type && m.mount_point == target_path)
    {
        return Ok(false);
    }
    // A bpffs mounted by default is world-writable (mode 1777): any user
    // could create the daemon's pin directory first. Ours is root's alone.
    let data = (fs_type == "bpf").then_some("mode=0700");
    mount(
        Some(fs_type),
        target_path,
        Some(fs_type),
        MsFlags::empty(),
        data,
    )
    .map_err(|errno| LoaderError::Mount {
        fs_type,
        target,
        source: errno.into(),
    })?;
    Ok(true)
}

/// The root of the cgroup v2 hierarchy (`/sys/fs/cgroup` or `/sys/fs/cgroup/unified`, ...).
pub fn cgroup2_root() -> Result<PathBuf, LoaderError> {
    mounts()?
        .into_iter()
        .find(|m| m.fs_type == "cgroup2")
        .map(|m| m.mount_point)
        .ok_or(LoaderError::NoCgroup2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:13 / /sys/kernel/tracing rw,relatime - tracefs tracefs rw
50 23 0:40 / /mnt/with\\040space rw shared:1 - ext4 /dev/vdb rw
";

    #[test]
    fn finds_types_and_mount_points() {
        let m = parse_mountinfo(SAMPLE);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].fs_type, "cgroup2");
        assert_eq!(m[1].mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[2].fs_type, "tracefs");
        // optional fields (shared:1) before the separator do not shift the type
        assert_eq!(m[3].fs_type, "ext4");
        assert_eq!(m[3].mount_point, PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn garbage_lines_are_skipped() {
        assert!(parse_mountinfo("nonsense\n\n1 2 3\n").is_empty());
    }
}

//! `exec.modified_in_run`: whether the file a process of a run executed
//! was changed after that run started (a file the run wrote, or copied,
//! or made executable, then ran: "downloads and executes").
//!
//! The kernel's exec record names the file by device and inode; the daemon
//! (live only: a replay has no such files) reads that inode's change time
//! (`ctime`: content, mode, owner, links, a rename; no process can set it
//! back) through `/proc/PID/exe`, or, once the process is gone, through
//! the resolved exe path, and only when the device and inode there are the
//! ones the kernel recorded. The field is absent when neither is there any
//! more (a file deleted by a process that also exited before the daemon
//! read its record), outside runs, and for failed execs.

use std::{os::unix::fs::MetadataExt as _, path::Path, time::SystemTime};

use crate::event::{Event, Kind};

/// Sets `exec.modified_in_run` on a successful exec of a process of a run
/// whose start `run_start` gives.
pub fn mark(event: &mut Event, run_start: impl FnOnce(&str) -> Option<SystemTime>) {
    if event.kind != Kind::ProcessExec {
        return;
    }
    let (Some(run), Some(process), Some(exec)) = (&event.run, &event.process, &mut event.exec)
    else {
        return;
    };
    let (Some(ino), Some(dev)) = (exec.inode, exec.dev_raw) else {
        return;
    };
    let Some(start) = run_start(&run.id) else {
        return;
    };
    let by_pid = format!("/proc/{}/exe", process.pid);
    let ctime = changed(Path::new(&by_pid), ino, dev).or_else(|| {
        process
            .exe
            .as_deref()
            .and_then(|p| changed(Path::new(p), ino, dev))
    });
    exec.modified_in_run = ctime.map(|c| c >= start);
}

/// The change time of the file at `path`, when it is inode `ino` on the
/// device the kernel numbers `dev` (`major << 20 | minor`).
fn changed(path: &Path, ino: u64, dev: u32) -> Option<SystemTime> {
    let meta = std::fs::metadata(path).ok()?;
    let (major, minor) = (
        nix::sys::stat::major(meta.dev()),
        nix::sys::stat::minor(meta.dev()),
    );
    if meta.ino() != ino || major != u64::from(dev >> 20) || minor != u64::from(dev & 0xf_ffff) {
        return None;
    }
    let secs = u64::try_from(meta.ctime()).ok()?;
    let nanos = u32::try_from(meta.ctime_nsec()).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::new(secs, nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_is_found_only_by_its_device_and_inode() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("x");
        std::fs::write(&f, b"x").unwrap();
        let meta = std::fs::metadata(&f).unwrap();
        let dev = u32::try_from(
            (nix::sys::stat::major(meta.dev()) << 20) | nix::sys::stat::minor(meta.dev()),
        )
        .unwrap();
        let before = SystemTime::now() - std::time::Duration::from_secs(60);
        let c = changed(&f, meta.ino(), dev).unwrap();
        assert!(c >= before && c <= SystemTime::now());
        assert!(changed(&f, meta.ino() + 1, dev).is_none());
        assert!(changed(&f, meta.ino(), dev ^ 1).is_none());
        assert!(changed(&dir.path().join("gone"), meta.ino(), dev).is_none());
    }
}

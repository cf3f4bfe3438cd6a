//! Opening and watching a run's transcript files without trusting the
//! paths the watched agent controls (issue 22).
//!
//! - The agent's config dir is opened once (`O_PATH`), the first time it
//!   exists, and everything beneath it is opened relative to that fd with
//!   `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_XDEV)`: the
//!   kernel refuses, in the same call that opens it, any path that goes
//!   through a symlink, leaves the config dir or crosses a mount point, so a
//!   dir swapped for a symlink between a check and an open is never followed.
//!   Dirs are listed through their fd and files opened relative to it (no
//!   path is resolved twice).
//! - Dirs are watched with inotify (through the fd: `/proc/self/fd/N`), so a
//!   run is read when its transcripts change rather than on a fast poll; a
//!   slow poll stays as the fallback for missed events, and a run whose
//!   watches could not all be placed (the kernel's limit, or [`WATCHES_MAX`]
//!   per run) is polled as before.

use std::{
    collections::{HashMap, HashSet},
    ffi::OsString,
    os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd},
    path::Path,
    sync::Arc,
};

use nix::{
    errno::Errno,
    fcntl::{OFlag, OpenHow, ResolveFlag},
    sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor},
};

/// Dirs watched per run, at most (a hostile agent can create many): beyond
/// it the run is polled.
pub const WATCHES_MAX: usize = 32;
/// Entries of a dir looked at per listing, at most (a hostile agent may
/// fill it).
pub const ENTRIES_MAX: usize = 4096;

/// The config dir `config`, opened (`O_PATH`) following the path as the
/// agent's environment names it (the agent chooses it: `CLAUDE_CONFIG_DIR`,
/// `CODEX_HOME`); nothing beneath it is opened by path.
pub fn open_config(config: &Path) -> nix::Result<OwnedFd> {
    nix::fcntl::open(
        config,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
}

/// Whether `config` (by path) is no longer the dir `fd` holds.
pub fn replaced(config: &Path, fd: BorrowedFd<'_>) -> bool {
    let (Ok(now), Ok(held)) = (nix::sys::stat::stat(config), nix::sys::stat::fstat(fd)) else {
        // Gone (or unreadable): not the dir held either.
        return true;
    };
    (now.st_dev, now.st_ino) != (held.st_dev, held.st_ino)
}

/// `rel` beneath `dir`, opened with `flags` (`O_CLOEXEC` added), without
/// following a symlink anywhere on the way, leaving `dir` or crossing a
/// mount point.
pub fn open_beneath(dir: BorrowedFd<'_>, rel: &Path, flags: OFlag) -> nix::Result<OwnedFd> {
    let how = OpenHow::new().flags(flags | OFlag::O_CLOEXEC).resolve(
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_XDEV,
    );
    // The kernel asks for a retry (EAGAIN) when a rename or a mount raced a
    // `..` step of the lookup; the retries are bounded, since any process
    // can rename all the time and this runs on the pipeline's thread. What
    // is still refused is a problem of the read, reported, and the next
    // read tries again.
    let mut last = Errno::EAGAIN;
    for _ in 0..OPEN_TRIES {
        match nix::fcntl::openat2(dir, rel, how) {
            Err(e @ (Errno::EAGAIN | Errno::EINTR)) => last = e,
            other => return other,
        }
    }
    Err(last)
}

/// Tries of one `openat2` the kernel asks to retry ([`open_beneath`]).
const OPEN_TRIES: usize = 32;

/// The dir `rel` beneath `dir`, opened for listing.
pub fn open_dir(dir: BorrowedFd<'_>, rel: &Path) -> nix::Result<OwnedFd> {
    open_beneath(dir, rel, OFlag::O_RDONLY | OFlag::O_DIRECTORY)
}

/// The file `name` in `dir`, opened for reading (a FIFO does not block).
pub fn open_file(dir: BorrowedFd<'_>, name: &Path) -> nix::Result<std::fs::File> {
    open_beneath(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
    )
    .map(std::fs::File::from)
}

/// The names in the dir `fd` (read through the fd) that `keep` keeps, and
/// whether there were more entries than [`ENTRIES_MAX`] (the rest not
/// looked at).
pub fn list(fd: BorrowedFd<'_>, keep: impl Fn(&str) -> bool) -> nix::Result<(Vec<OsString>, bool)> {
    // The listing needs its own open file description (it moves its offset).
    let own = open_beneath(fd, Path::new("."), OFlag::O_RDONLY | OFlag::O_DIRECTORY)?;
    let mut dir = nix::dir::Dir::from_fd(own)?;
    let mut names = Vec::new();
    for (i, entry) in dir.iter().enumerate() {
        if i >= ENTRIES_MAX {
            return Ok((names, true));
        }
        let entry = entry?;
        let Ok(name) = entry.file_name().to_str() else {
            continue;
        };
        if name != "." && name != ".." && keep(name) {
            names.push(OsString::from(name));
        }
    }
    Ok((names, false))
}

/// Why `rel` could not be opened beneath the config dir, for
/// `transcript.unreadable`.
#[must_use]
pub fn why(e: Errno) -> String {
    match e {
        Errno::ELOOP => {
            "cannot open: a symlink on the way (not followed: it may lead outside the agent's config dir)"
                .to_owned()
        }
        Errno::EXDEV => {
            "cannot open: the path leaves the agent's config dir or crosses a mount point (outside)"
                .to_owned()
        }
        e => format!("cannot open: {}", std::io::Error::from(e)),
    }
}

/// What a drain of the watches found.
#[derive(Debug, Default)]
pub struct Woken {
    /// Runs to read in full (a file or dir appeared, went or moved; an
    /// ancestor changed; the queue overflowed: all of them).
    pub full: HashSet<String>,
    /// Runs of which only these files were written to.
    pub names: HashMap<String, HashSet<OsString>>,
    /// The kernel's queue overflowed: every run is read in full.
    pub overflow: bool,
}

/// The inotify watches of the followed runs. Watches are shared: two runs
/// in the same dir get the same watch descriptor.
#[derive(Debug)]
pub struct Watcher {
    inotify: Arc<Inotify>,
    /// Watch → the runs watching it.
    runs: HashMap<WatchDescriptor, HashSet<String>>,
    /// Run → its watches, and the (dev, ino) of the dirs they are on.
    of_run: HashMap<String, HashMap<(u64, u64), WatchDescriptor>>,
    /// The kernel's limit was met (warned once).
    limited: bool,
}

/// Why a watch was not placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotWatched {
    /// [`WATCHES_MAX`] for this run.
    RunLimit,
    /// The kernel's limit (`max_user_watches`) or another error.
    Kernel,
}

/// What happens in a watched dir: files written, created, moved in or out,
/// deleted; the dir itself deleted or moved.
fn mask() -> AddWatchFlags {
    AddWatchFlags::IN_MODIFY
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_DELETE
        | AddWatchFlags::IN_DELETE_SELF
        | AddWatchFlags::IN_MOVE_SELF
        | AddWatchFlags::IN_ONLYDIR
}

impl Watcher {
    /// A new inotify instance (non-blocking).
    pub fn new() -> nix::Result<Self> {
        let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)?;
        Ok(Self {
            inotify: Arc::new(inotify),
            runs: HashMap::new(),
            of_run: HashMap::new(),
            limited: false,
        })
    }

    /// The inotify instance, for the event loop to poll.
    #[must_use]
    pub fn fd(&self) -> WakeFd {
        WakeFd(Arc::clone(&self.inotify))
    }

    /// Watches the dir `fd` for run `run` (once per dir).
    pub fn watch(&mut self, run: &str, fd: BorrowedFd<'_>) -> Result<(), NotWatched> {
        let Ok(st) = nix::sys::stat::fstat(fd) else {
            return Err(NotWatched::Kernel);
        };
        let id = (st.st_dev, st.st_ino);
        let mine = self.of_run.entry(run.to_owned()).or_default();
        if mine.contains_key(&id) {
            return Ok(());
        }
        if mine.len() >= WATCHES_MAX {
            return Err(NotWatched::RunLimit);
        }
        // Through the fd: the dir opened beneath the config dir, not a path
        // the agent could swap meanwhile.
        let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
        match self.inotify.add_watch(path.as_str(), mask()) {
            Ok(wd) => {
                mine.insert(id, wd);
                self.runs.entry(wd).or_default().insert(run.to_owned());
                Ok(())
            }
            Err(e) => {
                if !self.limited {
                    self.limited = true;
                    tracing::warn!(error = %e, "transcripts: cannot watch a transcript dir (inotify limit?): such runs are polled");
                }
                Err(NotWatched::Kernel)
            }
        }
    }

    /// Stops watching for run `run` (a watch no other run shares is removed).
    pub fn forget(&mut self, run: &str) {
        let Some(mine) = self.of_run.remove(run) else {
            return;
        };
        for wd in mine.into_values() {
            if let Some(runs) = self.runs.get_mut(&wd) {
                runs.remove(run);
                if runs.is_empty() {
                    self.runs.remove(&wd);
                    // It may be gone already (its dir deleted).
                    let _ = self.inotify.rm_watch(wd);
                }
            }
        }
    }

    /// Reads every event queued (bounded), and says which runs to read.
    pub fn drain(&mut self) -> Woken {
        let mut woken = Woken::default();
        // A hostile agent may write without pause: what is not taken now is
        // taken at the next wake.
        for _ in 0..64 {
            let events = match self.inotify.read_events() {
                Ok(ev) if !ev.is_empty() => ev,
                Ok(_) | Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "transcripts: reading inotify events");
                    woken.overflow = true;
                    break;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    woken.overflow = true;
                    continue;
                }
                let Some(runs) = self.runs.get(&ev.wd) else {
                    continue;
                };
                let just_written = ev.mask == AddWatchFlags::IN_MODIFY;
                for run in runs {
                    match (&ev.name, just_written) {
                        (Some(name), true) if !woken.full.contains(run) => {
                            woken
                                .names
                                .entry(run.clone())
                                .or_default()
                                .insert(name.clone());
                        }
                        _ => {
                            woken.names.remove(run);
                            woken.full.insert(run.clone());
                        }
                    }
                }
                if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                    // Its dir is gone: the runs place new watches when they
                    // read again.
                    if let Some(runs) = self.runs.remove(&ev.wd) {
                        for run in runs {
                            if let Some(mine) = self.of_run.get_mut(&run) {
                                mine.retain(|_, wd| *wd != ev.wd);
                            }
                        }
                    }
                }
            }
        }
        woken
    }

    /// Watches held, in all.
    #[must_use]
    pub fn count(&self) -> usize {
        self.runs.len()
    }
}

/// The inotify fd, for the event loop (shared with the [`Watcher`]).
#[derive(Debug, Clone)]
pub struct WakeFd(Arc<Inotify>);

impl AsRawFd for WakeFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_fd(p: &Path) -> OwnedFd {
        open_config(p).unwrap()
    }

    #[test]
    fn watches_are_shared_and_bounded_per_run() {
        let tmp = tempfile::tempdir().unwrap();
        let mut w = Watcher::new().unwrap();
        let a = tmp.path().join("a");
        std::fs::create_dir(&a).unwrap();
        w.watch("r1", dir_fd(&a).as_fd()).unwrap();
        w.watch("r1", dir_fd(&a).as_fd()).unwrap();
        w.watch("r2", dir_fd(&a).as_fd()).unwrap();
        assert_eq!(w.count(), 1, "one dir, one watch");
        for i in 0..WATCHES_MAX - 1 {
            let d = tmp.path().join(format!("d{i}"));
            std::fs::create_dir(&d).unwrap();
            w.watch("r1", dir_fd(&d).as_fd()).unwrap();
        }
        let over = tmp.path().join("over");
        std::fs::create_dir(&over).unwrap();
        assert_eq!(
            w.watch("r1", dir_fd(&over).as_fd()),
            Err(NotWatched::RunLimit)
        );
        assert_eq!(w.count(), WATCHES_MAX);
        // Another run is not limited by r1's watches.
        w.watch("r2", dir_fd(&over).as_fd()).unwrap();
        // A write in `a` wakes both runs (only that file for each).
        std::fs::write(a.join("s.jsonl"), "x").unwrap();
        let woken = w.drain();
        // (The file was created: a full read.)
        assert!(
            woken.full.contains("r1") && woken.full.contains("r2"),
            "{woken:?}"
        );
        w.forget("r1");
        assert_eq!(w.count(), 2, "a and over stay for r2");
        w.forget("r2");
        assert_eq!(w.count(), 0);
    }

    #[test]
    fn a_dir_too_full_is_said() {
        let tmp = tempfile::tempdir().unwrap();
        for i in 0..ENTRIES_MAX + 10 {
            std::fs::write(tmp.path().join(format!("f{i}")), "").unwrap();
        }
        let fd = open_dir(dir_fd(tmp.path()).as_fd(), Path::new(".")).unwrap();
        let (names, more) = list(fd.as_fd(), |n| n.ends_with('7')).unwrap();
        assert!(more);
        assert!(!names.is_empty() && names.len() < ENTRIES_MAX / 5);
    }
}

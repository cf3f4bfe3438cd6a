//! The file watch: changes to the sensor's own files that no open for
//! writing shows (unlink, rename, rmdir, chmod, chown, utimes, truncate by
//! path, a file created or written by a process the kernel programs do not
//! check), seen with fanotify(7) and reported as `sensor.tamper` with
//! `method: "file"`.
//!
//! The kernel programs see an open for writing of a sensor file at the
//! syscall, and only for processes in runs. Resolving paths at the entry of
//! `unlinkat`/`renameat2`/... in BPF would be defeatable (relative paths,
//! directory fds, symlinks, races), and kprobes and BPF LSM are not
//! available. fanotify reports what the file system really did, with the
//! process that did it, after it is done: so these reports say
//! `detected: "after"`, and a kill under an enforce policy comes after the
//! change.
//!
//! What is watched ([`roots`]): the pin dir and the state dir with all their
//! subdirectories (new ones are marked as they appear), and the database
//! files (`sensor.db`, `-wal`, `-shm`, `-journal`) wherever the store is.
//!
//! The thread ([`start`]) reads the group, keeps the table of marked
//! directories (fanotify names a directory by its file handle; the table
//! maps it back to a path), drops the daemon's own changes (its store,
//! spools, journal, and the pins it makes again: they come from its own
//! process), gathers a process's changes to one file for [`GATHER`], limits
//! what one process (and all together) can make it report ([`Limiter`]),
//! and hands each [`FileChange`] to the pipeline, which attributes the
//! process to its run and reports it.
//!
//! A full kernel queue (16384 events) is `FAN_Q_OVERFLOW`: counted, and
//! reported in `sensor.lost` (`lost.file_watch.overflows`); the directories
//! are marked again in case one was created meanwhile.

use std::{
    collections::{HashMap, VecDeque},
    ffi::OsString,
    os::{fd::OwnedFd, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use nix::libc;

use super::fanotify::{self, FileId, Group, RawEvent, Record, RecordKind};

/// How long a process's changes to one file are gathered into one report
/// (`rm` is an ATTRIB and a DELETE; `touch` a CREATE and an ATTRIB).
pub const GATHER: Duration = Duration::from_millis(100);
/// Reports per process: a burst, then so many per second.
const PID_BURST: f64 = 20.0;
const PID_RATE: f64 = 10.0;
/// Reports of all processes together: a burst, then so many per second.
const ALL_BURST: f64 = 200.0;
const ALL_RATE: f64 = 100.0;
/// Processes whose budget is tracked at once; past that a process has only
/// the shared budget.
const MAX_PIDS: usize = 4096;
/// Changes being gathered at once; past that they are all handed on early.
const MAX_PENDING: usize = 4096;
/// Directories marked at once, and how deep below a root.
const MAX_DIRS: usize = 1024;
const MAX_DEPTH: usize = 16;
/// Reports waiting for the pipeline; past that they are counted as dropped.
pub const QUEUE: usize = 1024;
/// How often the roots are looked at again (made again, replaced).
const ROOT_CHECK: Duration = Duration::from_secs(1);
/// Read buffer: many events per read.
const READ_BUF: usize = 64 * 1024;
/// Rest after a read that found events (bounds wake-ups; well under
/// [`GATHER`]).
const PAUSE: Duration = Duration::from_millis(10);

/// Which of the sensor's files a change is to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Area {
    /// The pin dir (bpffs): maps and program links.
    Pins,
    /// The state dir: run table, spools, sequence, instance id.
    State,
    /// The database and its journal files.
    Store,
}

impl Area {
    /// As in `tamper.file.kind` (the kernel's reports use the same words).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Pins => "pins",
            Self::State => "state",
            Self::Store => "store",
        }
    }
}

/// What was done, strongest first (a report names the strongest of what
/// it gathered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum What {
    Unlink,
    Rename,
    Create,
    Modify,
    Attrib,
}

impl What {
    const ALL: [Self; 5] = [
        Self::Unlink,
        Self::Rename,
        Self::Create,
        Self::Modify,
        Self::Attrib,
    ];

    /// As in `tamper.what`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Unlink => "unlink",
            Self::Rename => "rename",
            Self::Create => "create",
            Self::Modify => "modify",
            Self::Attrib => "attrib",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }

    /// What a fanotify mask says was done.
    fn of_mask(mask: u64) -> u8 {
        let mut ops = 0;
        if mask & (libc::FAN_DELETE | libc::FAN_DELETE_SELF) != 0 {
            ops |= Self::Unlink.bit();
        }
        if mask
            & (libc::FAN_RENAME | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO | libc::FAN_MOVE_SELF)
            != 0
        {
            ops |= Self::Rename.bit();
        }
        if mask & libc::FAN_CREATE != 0 {
            ops |= Self::Create.bit();
        }
        if mask & libc::FAN_MODIFY != 0 {
            ops |= Self::Modify.bit();
        }
        if mask & libc::FAN_ATTRIB != 0 {
            ops |= Self::Attrib.bit();
        }
        ops
    }
}

/// One report: a process's changes to one file (or directory).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileChange {
    /// The process (thread group) that made it; 0 when the kernel did not
    /// say (the daemon lacks `CAP_SYS_ADMIN`).
    pub pid: u32,
    /// Everything done to it (bits of [`What`]).
    pub ops: u8,
    /// The file, or for a rename the name it had.
    pub path: PathBuf,
    /// A rename's new name, when it is in a watched directory.
    pub to: Option<PathBuf>,
    /// A rename into a watched directory from elsewhere (`path` is then
    /// the new name, and the old one is not known).
    pub moved_in: bool,
    pub area: Area,
    /// The watched root it is under (pin dir, state dir, the database).
    pub root: PathBuf,
    /// It is a directory.
    pub dir: bool,
    /// Kernel events gathered into it.
    pub events: u32,
    /// Changes by the same process before this one that were counted, not
    /// reported one by one (rate limit).
    pub suppressed: u64,
}

impl FileChange {
    /// The strongest of what was done.
    #[must_use]
    pub fn what(&self) -> What {
        What::ALL
            .into_iter()
            .find(|w| self.ops & w.bit() != 0)
            .unwrap_or(What::Modify)
    }

    /// Everything done, strongest first.
    pub fn ops(&self) -> impl Iterator<Item = What> + '_ {
        What::ALL.into_iter().filter(|w| self.ops & w.bit() != 0)
    }
}

/// A directory to watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Root {
    pub path: PathBuf,
    pub area: Area,
    /// Its subdirectories too.
    pub recursive: bool,
    /// Names directly in it that belong to another area (the database
    /// files in the state dir).
    pub names: Vec<(OsString, Area)>,
    /// Only those names count (the database's directory, when it is not
    /// the state dir).
    pub only_names: bool,
    /// The database, when it is directly in this directory.
    pub db: Option<PathBuf>,
}

/// The database's files: itself and SQLite's journals.
fn db_names(db: &Path) -> Vec<OsString> {
    let Some(name) = db.file_name() else {
        return Vec::new();
    };
    ["", "-wal", "-shm", "-journal"]
        .iter()
        .map(|suffix| {
            let mut n = name.to_owned();
            n.push(suffix);
            n
        })
        .collect()
}

/// What the daemon watches: the pin dir, the state dir, and the database.
#[must_use]
pub fn roots(pin_dir: &Path, state_dir: &Path, db: Option<&Path>) -> Vec<Root> {
    let mut roots = vec![Root {
        path: pin_dir.to_owned(),
        area: Area::Pins,
        recursive: true,
        names: Vec::new(),
        only_names: false,
        db: None,
    }];
    let mut state = Root {
        path: state_dir.to_owned(),
        area: Area::State,
        recursive: true,
        names: Vec::new(),
        only_names: false,
        db: None,
    };
    if let Some(db) = db {
        let names: Vec<(OsString, Area)> =
            db_names(db).into_iter().map(|n| (n, Area::Store)).collect();
        match db.parent() {
            Some(parent) if parent == state_dir => {
                state.names = names;
                state.db = Some(db.to_owned());
            }
            // Deeper in the state dir: watched as state files.
            Some(parent) if parent.starts_with(state_dir) => {}
            Some(parent) => roots.push(Root {
                path: parent.to_owned(),
                area: Area::Store,
                recursive: false,
                names,
                only_names: true,
                db: Some(db.to_owned()),
            }),
            None => {}
        }
    }
    roots.push(state);
    roots
}

/// The file watch's counters (status, metrics, `sensor.lost`).
#[derive(Debug, Default)]
pub struct Stats {
    /// The watch runs.
    pub watching: AtomicBool,
    /// The kernel does not tell who made a change (no `CAP_SYS_ADMIN`).
    pub actors_hidden: AtomicBool,
    /// Directories marked now.
    pub dirs: AtomicU64,
    /// Events read from the kernel.
    pub events: AtomicU64,
    /// Of them, the daemon's own (ignored).
    pub own: AtomicU64,
    /// Events gathered into another's report (same process and file).
    pub merged: AtomicU64,
    /// Metadata changes of a database journal that left it as the database
    /// is (SQLite, run as root, chowns its journals to the database's owner
    /// when it opens them: every `sensor events` an operator runs).
    pub journal_no_ops: AtomicU64,
    /// Reports handed to the pipeline.
    pub handed: AtomicU64,
    /// Reports made (`sensor.tamper` events), by the pipeline.
    pub reported: AtomicU64,
    /// Reports left out: the kernel had reported the same process's open
    /// for writing of the same file just before (one act, one report).
    pub duplicates: AtomicU64,
    /// Changes counted, not reported one by one (rate limit).
    pub suppressed: AtomicU64,
    /// Kernel queue overflows (`FAN_Q_OVERFLOW`): events lost, how many
    /// unknown.
    pub overflows: AtomicU64,
    /// Reports lost because the pipeline's queue was full.
    pub dropped: AtomicU64,
    /// Events or records that could not be read.
    pub malformed: AtomicU64,
    /// Directories that could not be marked, and read errors.
    pub errors: AtomicU64,
    /// Why the watch does not run, or the last error.
    pub error: Mutex<Option<String>>,
}

impl Stats {
    fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn set_error(&self, e: String) {
        *self.error.lock().unwrap_or_else(PoisonError::into_inner) = Some(e);
    }

    /// The last error, if any.
    #[must_use]
    pub fn error(&self) -> Option<String> {
        self.error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// A running file watch: the reports, and its counters.
pub struct FileWatch {
    pub changes: tokio::sync::mpsc::Receiver<FileChange>,
    pub stats: Arc<Stats>,
}

/// Whether this process has `CAP_SYS_ADMIN` in effect (without it,
/// fanotify does not tell a listener which process caused an event).
fn has_sys_admin() -> bool {
    procfs::process::Process::myself()
        .and_then(|p| p.status())
        // CAP_SYS_ADMIN is capability 21.
        .is_ok_and(|s| s.capeff & (1 << 21) != 0)
}

/// Starts the watch on its own thread. `own_pid`: the daemon (its changes
/// are not reported). A watch that cannot start returns the error; the
/// caller logs it, the stats say so, and the daemon goes on without.
///
/// # Errors
/// When fanotify cannot be had (`fanotify_init(2)`: a seccomp filter, an
/// old kernel) or the thread cannot start.
pub fn start(roots: Vec<Root>, own_pid: u32, stats: Arc<Stats>) -> std::io::Result<FileWatch> {
    let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
    let group = match Group::new() {
        Ok(g) => g,
        Err(e) => {
            stats.set_error(format!("fanotify_init: {e}"));
            return Err(e);
        }
    };
    stats
        .actors_hidden
        .store(!has_sys_admin(), Ordering::Relaxed);
    let mut watcher = Watcher::new(group, roots, own_pid, Arc::clone(&stats));
    watcher.check_roots(true);
    stats.watching.store(true, Ordering::Relaxed);
    let thread_stats = Arc::clone(&stats);
    std::thread::Builder::new()
        .name("sensor-files".into())
        .spawn(move || {
            watcher.run(&tx);
            thread_stats.watching.store(false, Ordering::Relaxed);
        })
        .inspect_err(|e| {
            stats.watching.store(false, Ordering::Relaxed);
            stats.set_error(format!("cannot start the thread: {e}"));
        })?;
    Ok(FileWatch { changes: rx, stats })
}

/// A marked directory.
#[derive(Debug)]
struct Dir {
    path: PathBuf,
    /// Index of its root in `Watcher::roots`.
    root: usize,
    is_root: bool,
}

/// One change as the kernel told it, before gathering.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    ops: u8,
    path: PathBuf,
    to: Option<PathBuf>,
    moved_in: bool,
    area: Area,
    root: PathBuf,
    dir: bool,
}

struct Watcher {
    group: Group,
    roots: Vec<Root>,
    dirs: HashMap<FileId, Dir>,
    own_pid: u32,
    stats: Arc<Stats>,
    gather: Gatherer,
    limiter: Limiter,
    /// The directory limit was logged.
    full_logged: bool,
}

impl Watcher {
    fn new(group: Group, roots: Vec<Root>, own_pid: u32, stats: Arc<Stats>) -> Self {
        Self {
            group,
            roots,
            dirs: HashMap::new(),
            own_pid,
            gather: Gatherer::default(),
            limiter: Limiter::new(Instant::now()),
            stats,
            full_logged: false,
        }
    }

    fn run(&mut self, tx: &tokio::sync::mpsc::Sender<FileChange>) {
        let mut buf = vec![0u8; READ_BUF];
        let mut last_check = Instant::now();
        let mut read_failed = false;
        loop {
            let now = Instant::now();
            let next = [self.gather.deadline(), self.limiter.deadline()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(now + ROOT_CHECK);
            let wait = next
                .saturating_duration_since(now)
                .min(ROOT_CHECK)
                .max(Duration::from_millis(1));
            let timeout = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
            if let Err(e) = self.group.wait(timeout) {
                self.failed("poll", &e, &mut read_failed);
            }
            let mut read_any = false;
            loop {
                match self.group.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        read_any = true;
                        let parsed = fanotify::parse(buf.get(..n).unwrap_or_default());
                        Stats::add(&self.stats.malformed, u64::from(parsed.malformed));
                        let now = Instant::now();
                        for ev in parsed.events {
                            self.handle(ev, now);
                        }
                        if n < READ_BUF / 2 {
                            break;
                        }
                    }
                    Err(e) => {
                        self.failed("read", &e, &mut read_failed);
                        break;
                    }
                }
            }
            let now = Instant::now();
            for change in self.gather.due(now) {
                if self.journal_no_op(&change) {
                    Stats::add(&self.stats.journal_no_ops, 1);
                    continue;
                }
                if let Some(c) = self.limiter.admit(change, now, &self.stats)
                    && !Self::hand_on(tx, c, &self.stats)
                {
                    return;
                }
            }
            for c in self.limiter.due(now) {
                if !Self::hand_on(tx, c, &self.stats) {
                    return;
                }
            }
            if now.duration_since(last_check) >= ROOT_CHECK {
                last_check = now;
                self.check_roots(false);
            }
            if read_any {
                // The daemon's own writes (the store's) come in streams: a
                // pause lets the kernel merge them in its queue, so they cost
                // a wake-up per pause, not one per write.
                std::thread::sleep(PAUSE);
            }
        }
    }

    /// A poll or read error: counted, logged once, and a pause so that a
    /// persistent one does not spin.
    fn failed(&self, what: &str, e: &std::io::Error, logged: &mut bool) {
        Stats::add(&self.stats.errors, 1);
        self.stats.set_error(format!("{what}: {e}"));
        if !*logged {
            tracing::error!(error = %e, "file watch: {what} of the fanotify group failed");
            *logged = true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    /// Hands a report to the pipeline; false when the pipeline is gone.
    fn hand_on(tx: &tokio::sync::mpsc::Sender<FileChange>, c: FileChange, stats: &Stats) -> bool {
        match tx.try_send(c) {
            Ok(()) => {
                Stats::add(&stats.handed, 1);
                true
            }
            Err(tokio::sync::mpsc::error::TrySendError::Full(_)) => {
                Stats::add(&stats.dropped, 1);
                true
            }
            Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    fn handle(&mut self, ev: RawEvent, now: Instant) {
        if ev.fd >= 0 {
            // SAFETY: an fd the kernel installed for this event, ours to close.
            drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(ev.fd) });
        }
        Stats::add(&self.stats.events, 1);
        if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
            Stats::add(&self.stats.overflows, 1);
            tracing::warn!(
                "file watch: the kernel's event queue overflowed; file changes were lost (counted)"
            );
            // A directory created meanwhile would be unmarked.
            self.check_roots(true);
            return;
        }
        let seen = self.interpret(&ev);
        let pid = u32::try_from(ev.pid).unwrap_or(0);
        if pid != 0 && pid == self.own_pid {
            Stats::add(&self.stats.own, 1);
            return;
        }
        for s in seen {
            self.gather.push(pid, s, now, &self.stats);
        }
    }

    /// Whether `c` is only a metadata change of a database journal (`-wal`,
    /// `-shm`, `-journal`) that leaves it with the database's own mode and
    /// owner: what SQLite does, as root, to the journals when it opens a
    /// database (`fchown` to the database's owner), on every query of the
    /// store. A real change (another mode or owner) is reported; so is any
    /// change to the database file itself.
    fn journal_no_op(&self, c: &FileChange) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        if c.ops != What::Attrib.bit() || c.area != Area::Store || c.dir {
            return false;
        }
        let Some(db) = self.roots.iter().find_map(|r| r.db.as_ref()) else {
            return false;
        };
        let journal = ["-wal", "-shm", "-journal"].iter().any(|suffix| {
            let mut name = db.as_os_str().to_owned();
            name.push(suffix);
            c.path.as_os_str() == name
        });
        if !journal {
            return false;
        }
        // As it is now (after the change), against the database.
        match (
            std::fs::symlink_metadata(&c.path),
            std::fs::symlink_metadata(db),
        ) {
            (Ok(j), Ok(d)) => {
                j.is_file() && (j.mode(), j.uid(), j.gid()) == (d.mode(), d.uid(), d.gid())
            }
            _ => false,
        }
    }

    /// What an event says was done to which files, keeping the table of
    /// marked directories in step with it (whoever made the change).
    fn interpret(&mut self, ev: &RawEvent) -> Vec<Seen> {
        let ops = What::of_mask(ev.mask);
        let ondir = ev.mask & libc::FAN_ONDIR != 0;
        let record = |kind: RecordKind| ev.records.iter().find(|r| r.kind == kind);
        if ev.mask & libc::FAN_RENAME != 0 {
            return self.rename(
                record(RecordKind::OldDirName),
                record(RecordKind::NewDirName),
                ondir,
            );
        }
        let Some(r) = record(RecordKind::DirName) else {
            if !ev.records.is_empty() {
                Stats::add(&self.stats.malformed, 1);
            }
            return Vec::new();
        };
        if ev.mask & libc::FAN_MOVED_FROM != 0 {
            return self.rename(Some(r), None, ondir);
        }
        if ev.mask & libc::FAN_MOVED_TO != 0 {
            return self.rename(None, Some(r), ondir);
        }
        let Some(name) = r.name.as_deref() else {
            return Vec::new();
        };
        if name == b"." {
            return self.on_dir_itself(&r.id, ev.mask, ops);
        }
        let Some((path, area, root)) = self.entry(&r.id, name) else {
            return Vec::new();
        };
        if ondir
            && ev.mask & libc::FAN_CREATE != 0
            && let Some(i) = self.dirs.get(&r.id).map(|d| d.root)
            && self.roots.get(i).is_some_and(|r| r.recursive)
        {
            self.mark_tree(&path, i);
        }
        if ondir && ev.mask & libc::FAN_DELETE != 0 {
            self.forget_under(&path);
        }
        vec![Seen {
            ops,
            path,
            to: None,
            moved_in: false,
            area,
            root,
            dir: ondir,
        }]
    }

    /// An event on a marked directory itself (`.`): deleted, moved, or its
    /// metadata changed.
    fn on_dir_itself(&mut self, id: &FileId, mask: u64, ops: u8) -> Vec<Seen> {
        let Some(dir) = self.dirs.get(id) else {
            return Vec::new();
        };
        let Some(root) = self.roots.get(dir.root) else {
            return Vec::new();
        };
        if root.only_names {
            // The database's directory: only its database files count.
            return Vec::new();
        }
        let (path, is_root, area, root_path) =
            (dir.path.clone(), dir.is_root, root.area, root.path.clone());
        if mask & (libc::FAN_DELETE_SELF | libc::FAN_MOVE_SELF) != 0 {
            if !is_root {
                // Its parent's event reports it and keeps the table (a
                // rename's MOVE_SELF comes after the parent's RENAME, which
                // may have marked it again under its new name).
                return Vec::new();
            }
            // A root gone from its path: the check marks what is there
            // next. (Moved, it keeps its mark: its events then name a
            // directory the table no longer has, and are skipped.)
            if let Some(d) = self.dirs.remove(id) {
                self.forget_under(&d.path);
            }
            self.count_dirs();
        }
        vec![Seen {
            ops,
            path,
            to: None,
            moved_in: false,
            area,
            root: root_path,
            dir: true,
        }]
    }

    /// A rename, from `old` (a watched directory's entry, if it was one)
    /// to `new` (same).
    fn rename(&mut self, old: Option<&Record>, new: Option<&Record>, ondir: bool) -> Vec<Seen> {
        let at = |w: &Self, r: Option<&Record>| {
            r.and_then(|r| {
                w.entry(&r.id, r.name.as_deref()?)
                    .map(|e| (e, r.id.clone()))
            })
        };
        let from = at(self, old);
        let to = at(self, new);
        if ondir {
            if let Some(((path, _, _), _)) = &from {
                self.forget_under(path);
            }
            if let Some(((path, _, _), id)) = &to
                && let Some(i) = self.dirs.get(id).map(|d| d.root)
                && self.roots.get(i).is_some_and(|r| r.recursive)
            {
                self.mark_tree(path, i);
            }
        }
        let ops = What::Rename.bit();
        match (from, to) {
            (Some(((path, area, root), _)), to) => vec![Seen {
                ops,
                path,
                to: to.map(|((p, _, _), _)| p),
                moved_in: false,
                area,
                root,
                dir: ondir,
            }],
            (None, Some(((path, area, root), _))) => vec![Seen {
                ops,
                path,
                to: None,
                moved_in: true,
                area,
                root,
                dir: ondir,
            }],
            (None, None) => Vec::new(),
        }
    }

    /// The path, area and root of entry `name` of the marked directory
    /// `id`, if it is one the watch covers.
    fn entry(&self, id: &FileId, name: &[u8]) -> Option<(PathBuf, Area, PathBuf)> {
        let Some(dir) = self.dirs.get(id) else {
            // A directory that left the watch (its mark goes with it).
            return None;
        };
        let root = self.roots.get(dir.root)?;
        let name = std::ffi::OsStr::from_bytes(name);
        let named = dir
            .is_root
            .then(|| root.names.iter().find(|(n, _)| n == name).map(|(_, a)| *a))
            .flatten();
        if root.only_names && named.is_none() {
            return None;
        }
        Some((
            dir.path.join(name),
            named.unwrap_or(root.area),
            root.path.clone(),
        ))
    }

    /// Marks `path` and the directories below it (for root `root`).
    fn mark_tree(&mut self, path: &Path, root: usize) {
        let mut queue = VecDeque::from([(path.to_owned(), 0usize)]);
        while let Some((dir, depth)) = queue.pop_front() {
            if !self.mark(&dir, root, false) || depth >= MAX_DEPTH {
                continue;
            }
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                // file_type() does not follow symlinks: a link to a
                // directory elsewhere does not extend the watch.
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    queue.push_back((entry.path(), depth + 1));
                }
            }
        }
        self.count_dirs();
    }

    /// Marks one directory; false when it cannot be.
    fn mark(&mut self, path: &Path, root: usize, is_root: bool) -> bool {
        let fd = match fanotify::open_dir(path) {
            Ok(fd) => fd,
            Err(_) => return false, // gone again, or not a directory
        };
        let id = match fanotify::file_id(&fd) {
            Ok(id) => id,
            Err(e) => {
                self.mark_failed(path, &e);
                return false;
            }
        };
        if let Some(d) = self.dirs.get_mut(&id) {
            // Marked already (moved, or seen again): its path now.
            path.clone_into(&mut d.path);
            d.root = root;
            d.is_root |= is_root;
            return true;
        }
        if self.dirs.len() >= MAX_DIRS {
            Stats::add(&self.stats.errors, 1);
            if !self.full_logged {
                tracing::error!(limit = MAX_DIRS, path = %path.display(), "file watch: too many directories under the sensor's; the ones past the limit are not watched");
                self.full_logged = true;
            }
            return false;
        }
        if let Err(e) = self.group.mark(&fd) {
            self.mark_failed(path, &e);
            return false;
        }
        self.dirs.insert(
            id,
            Dir {
                path: path.to_owned(),
                root,
                is_root,
            },
        );
        true
    }

    fn mark_failed(&self, path: &Path, e: &std::io::Error) {
        Stats::add(&self.stats.errors, 1);
        self.stats
            .set_error(format!("cannot watch {}: {e}", path.display()));
        tracing::warn!(path = %path.display(), error = %e, "file watch: cannot watch a directory of the sensor's");
    }

    /// Forgets `path` and every directory below it. No fd is held to
    /// unmark them (an open directory is not deleted, and so not reported
    /// deleted, until it is closed): a deleted directory loses its mark in
    /// the kernel; one moved out of the watch keeps it, and its events are
    /// skipped (they name a directory the table does not have).
    fn forget_under(&mut self, path: &Path) {
        self.dirs
            .retain(|_, d| d.is_root || !d.path.starts_with(path));
        self.count_dirs();
    }

    fn count_dirs(&self) {
        self.stats
            .dirs
            .store(self.dirs.len() as u64, Ordering::Relaxed);
    }

    /// Marks every root that is not marked as the directory now at its
    /// path (made again after a removal, or replaced), and with `all` every
    /// directory below them too (start, overflow).
    fn check_roots(&mut self, all: bool) {
        for i in 0..self.roots.len() {
            let Some(root) = self.roots.get(i).cloned() else {
                continue;
            };
            let current = fanotify::open_dir(&root.path)
                .ok()
                .and_then(|fd| fanotify::file_id(&fd).ok());
            let marked = current
                .as_ref()
                .and_then(|id| self.dirs.get(id))
                .is_some_and(|d| d.is_root && d.root == i);
            if marked && !all {
                continue;
            }
            // Another directory at the path: the old one's entries go.
            let stale: Vec<FileId> = self
                .dirs
                .iter()
                .filter(|(id, d)| d.is_root && d.root == i && Some(*id) != current.as_ref())
                .map(|(id, _)| id.clone())
                .collect();
            for id in stale {
                if let Some(d) = self.dirs.remove(&id) {
                    self.forget_under(&d.path);
                }
            }
            if current.is_none() {
                continue;
            }
            if self.mark(&root.path, i, true) && root.recursive {
                let Ok(entries) = std::fs::read_dir(&root.path) else {
                    continue;
                };
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        self.mark_tree(&entry.path(), i);
                    }
                }
            }
        }
        self.count_dirs();
    }
}

/// Gathers a process's changes to one file for [`GATHER`].
#[derive(Default)]
struct Gatherer {
    pending: HashMap<(u32, PathBuf), (FileChange, Instant)>,
    /// Handed on early (the table was full); taken at the next turn.
    ready: VecDeque<FileChange>,
}

impl Gatherer {
    /// Adds a change. When the table is full, all are handed on early.
    fn push(&mut self, pid: u32, s: Seen, now: Instant, stats: &Stats) {
        let key = (pid, s.path.clone());
        if let Some((c, _)) = self.pending.get_mut(&key) {
            c.ops |= s.ops;
            c.events = c.events.saturating_add(1);
            c.dir |= s.dir;
            if s.to.is_some() {
                c.to = s.to;
            }
            Stats::add(&stats.merged, 1);
            return;
        }
        if self.pending.len() >= MAX_PENDING {
            // A flood: hand on everything gathered so far (one pass per
            // MAX_PENDING changes, not a search for the oldest per change).
            let mut all: Vec<(FileChange, Instant)> =
                self.pending.drain().map(|(_, v)| v).collect();
            all.sort_by_key(|(_, t)| *t);
            self.ready.extend(all.into_iter().map(|(c, _)| c));
        }
        self.pending.insert(
            key,
            (
                FileChange {
                    pid,
                    ops: s.ops,
                    path: s.path,
                    to: s.to,
                    moved_in: s.moved_in,
                    area: s.area,
                    root: s.root,
                    dir: s.dir,
                    events: 1,
                    suppressed: 0,
                },
                now,
            ),
        );
    }

    fn deadline(&self) -> Option<Instant> {
        if !self.ready.is_empty() {
            return Some(Instant::now());
        }
        self.pending.values().map(|(_, t)| *t + GATHER).min()
    }

    /// The changes gathered for [`GATHER`] (and any handed on early), oldest
    /// first.
    fn due(&mut self, now: Instant) -> Vec<FileChange> {
        let mut due: Vec<(FileChange, Instant)> = Vec::new();
        self.pending.retain(|_, (c, t)| {
            if now.saturating_duration_since(*t) >= GATHER {
                due.push((c.clone(), *t));
                false
            } else {
                true
            }
        });
        due.sort_by_key(|(_, t)| *t);
        let mut out: Vec<FileChange> = self.ready.drain(..).collect();
        out.extend(due.into_iter().map(|(c, _)| c));
        out
    }
}

/// A token bucket.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

impl Bucket {
    const fn full(burst: f64, now: Instant) -> Self {
        Self {
            tokens: burst,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant, rate: f64, burst: f64) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + dt * rate).min(burst);
        self.last = now;
    }

    /// When it next has a whole token.
    fn next_token(&self, rate: f64) -> Instant {
        let missing = (1.0 - self.tokens).max(0.0);
        self.last + Duration::from_secs_f64(missing / rate)
    }
}

/// One process's budget, and what it had suppressed.
#[derive(Debug)]
struct PidBudget {
    bucket: Bucket,
    /// Changes counted for good (not reported one by one).
    suppressed: u64,
    /// The latest suppressed change: reported, with the count, once the
    /// budget allows (so that a flood's last word is not lost).
    held: Option<FileChange>,
}

/// How much one process, and all together, can make the watch report: a
/// burst, then a rate; the rest is counted and carried in the next report
/// of that process (`suppressed`).
struct Limiter {
    all: Bucket,
    pids: HashMap<u32, PidBudget>,
}

impl Limiter {
    fn new(now: Instant) -> Self {
        Self {
            all: Bucket::full(ALL_BURST, now),
            pids: HashMap::new(),
        }
    }

    /// The change to report now, if the budgets allow; else it is counted.
    fn admit(&mut self, mut c: FileChange, now: Instant, stats: &Stats) -> Option<FileChange> {
        self.all.refill(now, ALL_RATE, ALL_BURST);
        if !self.pids.contains_key(&c.pid) {
            if self.pids.len() >= MAX_PIDS {
                self.prune(now);
            }
            if self.pids.len() < MAX_PIDS {
                self.pids.insert(
                    c.pid,
                    PidBudget {
                        bucket: Bucket::full(PID_BURST, now),
                        suppressed: 0,
                        held: None,
                    },
                );
            }
        }
        let Some(budget) = self.pids.get_mut(&c.pid) else {
            // Untracked (too many processes at once): the shared budget only.
            if self.all.tokens >= 1.0 {
                self.all.tokens -= 1.0;
                return Some(c);
            }
            Stats::add(&stats.suppressed, 1);
            return None;
        };
        budget.bucket.refill(now, PID_RATE, PID_BURST);
        if budget.bucket.tokens >= 1.0 && self.all.tokens >= 1.0 {
            budget.bucket.tokens -= 1.0;
            self.all.tokens -= 1.0;
            // The one held back is now counted for good: this one carries it.
            if budget.held.take().is_some() {
                budget.suppressed += 1;
                Stats::add(&stats.suppressed, 1);
            }
            c.suppressed = std::mem::take(&mut budget.suppressed);
            return Some(c);
        }
        // Held, to be reported with the count once the budget allows; the
        // one it replaces is counted for good.
        if budget.held.replace(c).is_some() {
            budget.suppressed += 1;
            Stats::add(&stats.suppressed, 1);
        }
        None
    }

    /// Held changes whose process's budget allows them now, each carrying
    /// its count.
    fn due(&mut self, now: Instant) -> Vec<FileChange> {
        self.all.refill(now, ALL_RATE, ALL_BURST);
        let mut out = Vec::new();
        for budget in self.pids.values_mut() {
            if budget.held.is_none() {
                continue;
            }
            budget.bucket.refill(now, PID_RATE, PID_BURST);
            if budget.bucket.tokens >= 1.0 && self.all.tokens >= 1.0 {
                budget.bucket.tokens -= 1.0;
                self.all.tokens -= 1.0;
                if let Some(mut c) = budget.held.take() {
                    c.suppressed = std::mem::take(&mut budget.suppressed);
                    out.push(c);
                }
            }
        }
        if self.pids.len() > MAX_PIDS / 2 {
            self.prune(now);
        }
        out
    }

    /// When a held change can next be reported.
    fn deadline(&self) -> Option<Instant> {
        self.pids
            .values()
            .filter(|b| b.held.is_some())
            .map(|b| {
                b.bucket
                    .next_token(PID_RATE)
                    .max(self.all.next_token(ALL_RATE))
            })
            .min()
    }

    /// Drops the budgets that are full again with nothing held (they would
    /// be made the same anew).
    fn prune(&mut self, now: Instant) {
        self.pids.retain(|_, b| {
            let mut bucket = b.bucket;
            bucket.refill(now, PID_RATE, PID_BURST);
            b.held.is_some() || b.suppressed > 0 || bucket.tokens < PID_BURST
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(pid: u32, path: &str) -> FileChange {
        FileChange {
            pid,
            ops: What::Unlink.bit(),
            path: PathBuf::from(path),
            to: None,
            moved_in: false,
            area: Area::State,
            root: PathBuf::from("/s"),
            dir: false,
            events: 1,
            suppressed: 0,
        }
    }

    fn seen(ops: u8, path: &str) -> Seen {
        Seen {
            ops,
            path: PathBuf::from(path),
            to: None,
            moved_in: false,
            area: Area::State,
            root: PathBuf::from("/s"),
            dir: false,
        }
    }

    #[test]
    fn the_roots_cover_the_pins_the_state_and_the_database() {
        let r = roots(
            Path::new("/sys/fs/bpf/sensor"),
            Path::new("/var/lib/sensor"),
            Some(Path::new("/var/lib/sensor/sensor.db")),
        );
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].area, r[0].recursive), (Area::Pins, true));
        assert_eq!(r[1].path, Path::new("/var/lib/sensor"));
        let names: Vec<_> = r[1]
            .names
            .iter()
            .map(|(n, a)| (n.to_str().unwrap(), *a))
            .collect();
        assert_eq!(
            names,
            [
                ("sensor.db", Area::Store),
                ("sensor.db-wal", Area::Store),
                ("sensor.db-shm", Area::Store),
                ("sensor.db-journal", Area::Store),
            ]
        );
        // A store elsewhere: its directory, its files only.
        let r = roots(
            Path::new("/p"),
            Path::new("/var/lib/sensor"),
            Some(Path::new("/srv/db/events.db")),
        );
        assert_eq!(r.len(), 3);
        assert_eq!(r[1].path, Path::new("/srv/db"));
        assert!(r[1].only_names && !r[1].recursive && r[1].area == Area::Store);
        assert!(r[2].names.is_empty());
    }

    #[test]
    fn a_report_names_the_strongest_of_what_was_done() {
        let mut c = change(1, "/s/f");
        c.ops = What::Attrib.bit() | What::Unlink.bit() | What::Modify.bit();
        assert_eq!(c.what(), What::Unlink);
        assert_eq!(
            c.ops().collect::<Vec<_>>(),
            [What::Unlink, What::Modify, What::Attrib]
        );
        assert_eq!(
            What::of_mask(libc::FAN_CREATE | libc::FAN_ATTRIB | libc::FAN_ONDIR),
            What::Create.bit() | What::Attrib.bit()
        );
        assert_eq!(What::of_mask(libc::FAN_MOVE_SELF), What::Rename.bit());
    }

    #[test]
    fn a_full_table_hands_everything_on_at_once() {
        let stats = Stats::default();
        let mut g = Gatherer::default();
        let t0 = Instant::now();
        for i in 0..=MAX_PENDING {
            g.push(1, seen(What::Unlink.bit(), &format!("/s/f{i}")), t0, &stats);
        }
        assert_eq!((g.ready.len(), g.pending.len()), (MAX_PENDING, 1));
        assert_eq!(g.deadline().map(|d| d <= Instant::now()), Some(true));
        let due = g.due(t0);
        assert_eq!(
            due.len(),
            MAX_PENDING,
            "the early ones now, the last when gathered"
        );
        assert_eq!(g.due(t0 + GATHER).len(), 1);
    }

    #[test]
    fn a_processs_changes_to_one_file_are_gathered_into_one_report() {
        let stats = Stats::default();
        let mut g = Gatherer::default();
        let t0 = Instant::now();
        g.push(7, seen(What::Attrib.bit(), "/s/f"), t0, &stats);
        g.push(7, seen(What::Unlink.bit(), "/s/f"), t0, &stats);
        // Another process, another file: reports of their own.
        g.push(8, seen(What::Unlink.bit(), "/s/f"), t0, &stats);
        g.push(7, seen(What::Modify.bit(), "/s/g"), t0 + GATHER / 2, &stats);
        assert!(g.due(t0 + GATHER / 2).is_empty());
        let due = g.due(t0 + GATHER);
        assert_eq!(due.len(), 2);
        let f7 = due.iter().find(|c| c.pid == 7).unwrap();
        assert_eq!((f7.what(), f7.events), (What::Unlink, 2));
        assert_eq!(stats.merged.load(Ordering::Relaxed), 1);
        let later = g.due(t0 + GATHER * 2);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].path, Path::new("/s/g"));
        assert_eq!(g.deadline(), None);
    }

    #[test]
    fn a_flood_from_one_process_is_counted_and_its_last_change_reported() {
        let stats = Stats::default();
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let n = 300u64;
        let admitted: Vec<FileChange> = (0..n)
            .filter_map(|i| l.admit(change(9, &format!("/s/f{i}")), t0, &stats))
            .collect();
        assert_eq!(admitted.len(), PID_BURST as usize);
        assert!(admitted.iter().all(|c| c.suppressed == 0));
        // Nothing held can go before the budget refills.
        assert!(l.due(t0).is_empty());
        let at = l.deadline().unwrap();
        assert!(at > t0 && at <= t0 + Duration::from_millis(150));
        let last = l.due(at);
        assert_eq!(last.len(), 1);
        assert_eq!(last[0].path, Path::new("/s/f299"));
        // Every change is reported or counted, exactly once.
        assert_eq!(admitted.len() as u64 + 1 + last[0].suppressed, n);
        assert_eq!(
            stats.suppressed.load(Ordering::Relaxed),
            n - PID_BURST as u64 - 1
        );
        // Another process still has its own budget.
        assert!(l.admit(change(10, "/s/x"), at, &stats).is_some());
    }

    #[test]
    fn a_held_change_is_counted_in_the_next_admitted_one() {
        let stats = Stats::default();
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        for i in 0..(PID_BURST as usize + 3) {
            l.admit(change(9, &format!("/s/f{i}")), t0, &stats);
        }
        // Three over the burst: two counted for good, one held.
        let later = t0 + Duration::from_secs(1);
        let c = l.admit(change(9, "/s/next"), later, &stats).unwrap();
        assert_eq!(c.suppressed, 3);
        assert!(l.due(later).is_empty());
    }

    #[test]
    fn many_processes_share_a_bound() {
        let stats = Stats::default();
        let t0 = Instant::now();
        let mut l = Limiter::new(t0);
        let admitted = (0..1000u32)
            .filter(|pid| l.admit(change(*pid, "/s/f"), t0, &stats).is_some())
            .count();
        assert_eq!(admitted, ALL_BURST as usize);
    }

    /// The watch on a real directory (no CAP_SYS_ADMIN needed: an
    /// unprivileged group only sees its own pid, which is what this test
    /// makes the changes with).
    #[test]
    fn a_real_directory_tree_is_watched_and_followed() {
        let Ok(group) = Group::new() else {
            eprintln!("fanotify not available here; skipped");
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        std::fs::write(state.join("sensor.db"), b"").unwrap();
        std::fs::write(state.join("runs.json"), b"").unwrap();
        let stats = Arc::new(Stats::default());
        let roots = roots(
            &dir.path().join("pins"),
            &state,
            Some(&state.join("sensor.db")),
        );
        // Not our own pid: this test's changes are reported.
        let mut w = Watcher::new(group, roots, 0, Arc::clone(&stats));
        w.check_roots(true);
        assert_eq!(
            stats.dirs.load(Ordering::Relaxed),
            1,
            "the state dir (no pin dir)"
        );
        std::fs::create_dir(state.join("spool")).unwrap();
        let read = |w: &mut Watcher| {
            let mut buf = vec![0u8; READ_BUF];
            let now = Instant::now();
            while w.group.wait(200).unwrap() {
                let n = w.group.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                for ev in fanotify::parse(&buf[..n]).events {
                    w.handle(ev, now);
                }
            }
            w.gather.due(now + GATHER)
        };
        let first = read(&mut w);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].what(), first[0].dir), (What::Create, true));
        assert_eq!(
            stats.dirs.load(Ordering::Relaxed),
            2,
            "the new subdirectory is marked"
        );
        // In the new subdirectory, the database, the directory itself.
        std::fs::write(state.join("spool").join("seg"), b"x").unwrap();
        std::fs::rename(state.join("sensor.db"), state.join("moved.db")).unwrap();
        std::fs::remove_file(state.join("runs.json")).unwrap();
        std::fs::set_permissions(&state, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut got: Vec<(String, &str, &str, Option<String>)> = read(&mut w)
            .iter()
            .map(|c| {
                (
                    c.path
                        .strip_prefix(dir.path())
                        .unwrap()
                        .display()
                        .to_string(),
                    c.what().as_str(),
                    c.area.as_str(),
                    c.to.as_ref()
                        .map(|t| t.strip_prefix(dir.path()).unwrap().display().to_string()),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                ("state".into(), "attrib", "state", None),
                ("state/runs.json".into(), "unlink", "state", None),
                (
                    "state/sensor.db".into(),
                    "rename",
                    "store",
                    Some("state/moved.db".into())
                ),
                ("state/spool/seg".into(), "create", "state", None),
            ]
        );
        // The subdirectory removed: unmarked and forgotten.
        std::fs::remove_file(state.join("spool").join("seg")).unwrap();
        std::fs::remove_dir(state.join("spool")).unwrap();
        let _ = read(&mut w);
        assert_eq!(stats.dirs.load(Ordering::Relaxed), 1);
        // The root removed and made again: marked again by the check.
        std::fs::remove_file(state.join("moved.db")).unwrap();
        std::fs::remove_dir(&state).unwrap();
        let gone = read(&mut w);
        assert!(
            gone.iter()
                .any(|c| c.path == state && c.what() == What::Unlink && c.dir)
        );
        assert_eq!(stats.dirs.load(Ordering::Relaxed), 0);
        std::fs::create_dir(&state).unwrap();
        w.check_roots(false);
        assert_eq!(stats.dirs.load(Ordering::Relaxed), 1);
        std::fs::write(state.join("again"), b"").unwrap();
        let again = read(&mut w);
        assert!(again.iter().any(|c| c.path == state.join("again")));
    }

    /// Own changes are not reported (the group reports this test's pid).
    #[test]
    fn the_own_process_is_ignored() {
        let Ok(group) = Group::new() else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let roots = roots(&dir.path().join("p"), dir.path(), None);
        let mut w = Watcher::new(group, roots, std::process::id(), Arc::clone(&stats));
        w.check_roots(true);
        std::fs::write(dir.path().join("f"), b"x").unwrap();
        let mut buf = vec![0u8; READ_BUF];
        let now = Instant::now();
        while w.group.wait(200).unwrap() {
            let n = w.group.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            for ev in fanotify::parse(&buf[..n]).events {
                w.handle(ev, now);
            }
        }
        assert!(w.gather.due(now + GATHER).is_empty());
        assert!(stats.own.load(Ordering::Relaxed) >= 1);
    }
}

//! The seam between the loader's delicate decisions and the kernel: the
//! take-over from a previous daemon's pins, the active generation and owner
//! record checks, the map pin checks and the refusal of a pin of another
//! layout are written here against [`Pins`] (what bpffs holds) and [`Slot`]
//! (a one-entry array map), so they are unit-tested without a kernel.
//!
//! In the daemon, [`Bpffs`] is bpffs and aya's pins, and each slot is aya's
//! [`Array`]; every call is a system call, off the per-event path (start-up
//! and the one-second check). [`policy::tables::Table`] is the binder's seam
//! over whole maps; a one-entry array is read and written whole here (its
//! value types are wire structs of `sensor-common` without a `Default`, which
//! `Table`'s array "removal" needs).
//!
//! [`policy::tables::Table`]: crate::policy::tables::Table

use std::{
    io,
    os::fd::AsFd as _,
    path::{Path, PathBuf},
};

use aya::maps::{Array, MapData, MapError};
use sensor_common::{maps, owner::Owner};

use super::{LoaderError, PinHandle, ProbeLink, sys};
use crate::tamper::{self, Tamper};

/// What is pinned at a path: nothing, an object with this id, or something
/// we cannot read as such (another kind of object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pinned {
    Nothing,
    Id(u32),
    Other,
}

/// A map's key size, value size and `max_entries`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub key: u32,
    pub value: u32,
    pub max_entries: u32,
}

/// The pins in bpffs, as the loader reads and changes them.
pub trait Pins {
    /// The map pinned at `path`.
    fn map_at(&self, path: &Path) -> Pinned;
    /// The link pinned at `path`.
    fn link_at(&self, path: &Path) -> Pinned;
    /// The layout of the map pinned at `path`, if a map is pinned there.
    fn layout_at(&self, path: &Path) -> Option<Layout>;
    /// Removes the pin at `path` (none there is no error).
    fn remove(&mut self, path: &Path) -> io::Result<()>;
    /// Renames a pin (over what is at `to`: one step for the kernel).
    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()>;
    /// Makes the directory `path` (and its parents).
    fn create_dir(&mut self, path: &Path) -> io::Result<()>;
    /// Pins this daemon's link `i` at `path`.
    fn pin_link(&mut self, i: usize, path: &Path) -> io::Result<()>;
    /// Pins this daemon's map `i` at `path`.
    fn pin_map(&mut self, i: usize, path: &Path) -> io::Result<()>;
}

/// A one-entry array map (the active generation, the owner record).
pub trait Slot<V> {
    /// The entry (`None` when it cannot be read).
    fn read(&self) -> Option<V>;
    /// Writes the entry (one system call).
    fn write(&mut self, value: V) -> Result<(), MapError>;
}

impl<V: aya::Pod> Slot<V> for Array<MapData, V> {
    fn read(&self) -> Option<V> {
        self.get(&0, 0).ok()
    }

    fn write(&mut self, value: V) -> Result<(), MapError> {
        self.set(0, value, 0)
    }
}

/// bpffs, with this daemon's links and maps to pin.
pub struct Bpffs<'a> {
    pub links: &'a [ProbeLink],
    pub maps: &'a [PinHandle],
}

impl Pins for Bpffs<'_> {
    fn map_at(&self, path: &Path) -> Pinned {
        if std::fs::symlink_metadata(path).is_err() {
            return Pinned::Nothing;
        }
        aya::maps::MapInfo::from_pin(path).map_or(Pinned::Other, |i| Pinned::Id(i.id()))
    }

    fn link_at(&self, path: &Path) -> Pinned {
        if std::fs::symlink_metadata(path).is_err() {
            return Pinned::Nothing;
        }
        sys::pinned_link_state(path).map_or(Pinned::Other, |s| Pinned::Id(s.id))
    }

    fn layout_at(&self, path: &Path) -> Option<Layout> {
        let info = aya::maps::MapInfo::from_pin(path).ok()?;
        Some(Layout {
            key: info.key_size(),
            value: info.value_size(),
            max_entries: info.max_entries(),
        })
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        super::remove_pin(path)
    }

    fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn create_dir(&mut self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn pin_link(&mut self, i: usize, path: &Path) -> io::Result<()> {
        let link = self
            .links
            .get(i)
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
        sys::pin(link.fd.as_fd(), path)
    }

    fn pin_map(&mut self, i: usize, path: &Path) -> io::Result<()> {
        let handle = self
            .maps
            .get(i)
            .ok_or_else(|| io::Error::other("no such map"))?;
        handle.map.pin(path).map_err(io::Error::other)
    }
}

/// Makes this load the one acting, with no moment in which neither the
/// previous daemon's programs nor ours act, and none in which both do: our
/// links (`programs`, in link order) are pinned under temporary names first
/// (a crash from here on leaves them for the next daemon), then the active
/// generation is switched to ours in one map write, then each of our pins is
/// renamed over the previous link of the same program (the old link
/// detaches as its pin goes), and what is left of the `previous` links is
/// removed. Returns how many previous links there were. A failure before
/// the switch leaves the previous generation acting.
pub fn take_over(
    fs: &mut dyn Pins,
    active: &mut dyn Slot<u32>,
    links_dir: &Path,
    programs: &[&str],
    generation: u32,
    previous: Vec<PathBuf>,
) -> Result<usize, LoaderError> {
    let io = |what: &'static str| move |source| LoaderError::Io { what, source };
    fs.create_dir(links_dir)
        .map_err(io("creating the links pin directory"))?;
    let staged: Vec<(PathBuf, PathBuf)> = programs
        .iter()
        .map(|program| {
            (
                // (bpffs refuses names with a dot.)
                links_dir.join(format!("new_{generation}_{program}")),
                links_dir.join(program),
            )
        })
        .collect();
    for (i, (temp, _)) in staged.iter().enumerate() {
        fs.remove(temp)
            .and_then(|()| fs.pin_link(i, temp))
            .map_err(io("pinning a program link"))?;
    }
    active
        .write(generation)
        .map_err(|source| LoaderError::Map {
            map: maps::ACTIVE,
            source,
        })?;
    for (temp, path) in &staged {
        fs.rename(temp, path)
            .map_err(io("renaming a pinned program link"))?;
    }
    let n = previous.len();
    for path in previous {
        if staged.iter().any(|(_, ours)| *ours == path) {
            continue;
        }
        if let Err(e) = fs.remove(&path) {
            tracing::warn!(path = %path.display(), error = %e, "cannot remove a previous daemon's link");
        }
    }
    Ok(n)
}

/// The active generation is ours: another value leaves every program idle
/// (each acts only while it names its load), so it is written back.
pub fn check_generation(
    active: &mut dyn Slot<u32>,
    generation: u32,
    pin_dir: &Path,
) -> Option<Tamper> {
    let found = active.read()?;
    if found == generation {
        return None;
    }
    let t = Tamper::new(
        tamper::GENERATION_CHANGED,
        pin_dir.join(maps::ACTIVE).display().to_string(),
    );
    Some(match active.write(generation) {
        Ok(()) => t.repaired(
            true,
            format!("found generation {found}; wrote {generation} again"),
        ),
        Err(e) => t.repaired(
            false,
            format!("found generation {found}; cannot write it again: {e}"),
        ),
    })
}

/// The owner record is `expected` (this daemon's, once it claimed the pin
/// dir): rewritten when it is not.
pub fn check_owner(
    owner: &mut dyn Slot<Owner>,
    expected: Option<Owner>,
    pin_dir: &Path,
) -> Option<Tamper> {
    let expected = expected?;
    let found = owner.read()?;
    if found == expected {
        return None;
    }
    let who =
        |o: &Owner| super::owner::decode(o).map_or_else(|| "no owner".to_owned(), |i| i.describe());
    let t = Tamper::new(
        tamper::OWNER_CHANGED,
        pin_dir.join(maps::OWNER).display().to_string(),
    );
    Some(match owner.write(expected) {
        Ok(()) => t.repaired(
            true,
            format!("found {}; wrote {} again", who(&found), who(&expected)),
        ),
        Err(e) => t.repaired(
            false,
            format!("found {}; cannot write it again: {e}", who(&found)),
        ),
    })
}

/// Map `i` (`name`, kernel id `id`) is pinned at `<pin_dir>/<name>`: pinned
/// again when its pin is gone or holds another object.
pub fn check_map_pin(
    fs: &mut dyn Pins,
    pin_dir: &Path,
    i: usize,
    name: &str,
    id: u32,
) -> Option<Tamper> {
    let path = pin_dir.join(name);
    let what = match fs.map_at(&path) {
        Pinned::Id(found) if found == id => return None,
        Pinned::Nothing => tamper::PIN_REMOVED,
        Pinned::Id(_) | Pinned::Other => tamper::PIN_REPLACED,
    };
    let t = Tamper::new(what, path.display().to_string());
    let repinned = fs.remove(&path).and_then(|()| fs.pin_map(i, &path));
    Some(match repinned {
        Ok(()) => t.repaired(true, format!("map {name} (id {id}) pinned again")),
        Err(e) => t.repaired(false, format!("map {name} cannot be pinned again: {e}")),
    })
}

/// Whether the map pinned at `path` (if any) has the `expected` layout. No
/// pin is compatible: there is nothing to drop.
pub fn pin_compatible(fs: &dyn Pins, path: &Path, expected: Layout) -> bool {
    fs.layout_at(path).is_none_or(|found| found == expected)
}

/// A map pinned by another build may have another layout; reusing it would
/// make the programs fail to load. Such a pin is removed (what it held is
/// lost, and said so) rather than reused.
pub fn drop_incompatible_pin(
    fs: &mut dyn Pins,
    path: &Path,
    expected: Layout,
) -> Result<(), LoaderError> {
    let Some(found) = fs.layout_at(path).filter(|found| *found != expected) else {
        return Ok(());
    };
    tracing::warn!(
        path = %path.display(),
        found = ?(found.key, found.value, found.max_entries),
        expected = ?(expected.key, expected.value, expected.max_entries),
        "pinned map has another layout or size (another sensor version, or the config changed); starting a new one"
    );
    fs.remove(path).map_err(|source| LoaderError::Io {
        what: "removing an incompatible pinned map",
        source,
    })
}

/// bpffs and one-entry maps in memory, for unit tests: what is pinned where,
/// a journal of every change in order, and failures on demand.
#[cfg(test)]
pub mod fake {
    use std::{
        collections::{BTreeMap, BTreeSet},
        io,
        path::{Path, PathBuf},
    };

    use aya::maps::MapError;

    use super::{Layout, Pinned, Pins, Slot};

    /// One object in the fake bpffs.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Object {
        /// A map: its id and layout.
        Map(u32, Layout),
        /// A link: its id.
        Link(u32),
        /// Something else (a file someone put there).
        Other,
    }

    /// One change to the fake bpffs or a slot.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Op {
        Pin(PathBuf, Object),
        Remove(PathBuf),
        Rename(PathBuf, PathBuf),
        Write(String),
    }

    /// Every change, in order (shared by a bpffs and its slots).
    pub type Journal = std::rc::Rc<std::cell::RefCell<Vec<Op>>>;

    /// A bpffs in memory. This daemon's links are ids `link_ids[i]`, its
    /// maps `maps[i]`.
    #[derive(Default)]
    pub struct FakeFs {
        pub pins: BTreeMap<PathBuf, Object>,
        pub dirs: BTreeSet<PathBuf>,
        pub link_ids: Vec<u32>,
        pub maps: Vec<(u32, Layout)>,
        pub journal: Journal,
        /// Pinning at these paths fails (EPERM).
        pub refuse_pins: BTreeSet<PathBuf>,
    }

    impl Pins for FakeFs {
        fn map_at(&self, path: &Path) -> Pinned {
            match self.pins.get(path) {
                None => Pinned::Nothing,
                Some(Object::Map(id, _)) => Pinned::Id(*id),
                Some(_) => Pinned::Other,
            }
        }

        fn link_at(&self, path: &Path) -> Pinned {
            match self.pins.get(path) {
                None => Pinned::Nothing,
                Some(Object::Link(id)) => Pinned::Id(*id),
                Some(_) => Pinned::Other,
            }
        }

        fn layout_at(&self, path: &Path) -> Option<Layout> {
            match self.pins.get(path) {
                Some(Object::Map(_, layout)) => Some(*layout),
                _ => None,
            }
        }

        fn remove(&mut self, path: &Path) -> io::Result<()> {
            if self.pins.remove(path).is_some() {
                self.journal.borrow_mut().push(Op::Remove(path.to_owned()));
            }
            Ok(())
        }

        fn rename(&mut self, from: &Path, to: &Path) -> io::Result<()> {
            let object = self
                .pins
                .remove(from)
                .ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
            self.pins.insert(to.to_owned(), object);
            self.journal
                .borrow_mut()
                .push(Op::Rename(from.to_owned(), to.to_owned()));
            Ok(())
        }

        fn create_dir(&mut self, path: &Path) -> io::Result<()> {
            self.dirs.insert(path.to_owned());
            Ok(())
        }

        fn pin_link(&mut self, i: usize, path: &Path) -> io::Result<()> {
            if self.refuse_pins.contains(path) {
                return Err(io::Error::from(io::ErrorKind::PermissionDenied));
            }
            let object = Object::Link(self.link_ids[i]);
            self.pins.insert(path.to_owned(), object);
            self.journal
                .borrow_mut()
                .push(Op::Pin(path.to_owned(), object));
            Ok(())
        }

        fn pin_map(&mut self, i: usize, path: &Path) -> io::Result<()> {
            if self.refuse_pins.contains(path) {
                return Err(io::Error::other("Operation not permitted"));
            }
            let (id, layout) = self.maps[i];
            let object = Object::Map(id, layout);
            self.pins.insert(path.to_owned(), object);
            self.journal
                .borrow_mut()
                .push(Op::Pin(path.to_owned(), object));
            Ok(())
        }
    }

    /// A one-entry map in memory.
    pub struct FakeSlot<V> {
        pub value: Option<V>,
        /// Writes fail (EPERM).
        pub refuse: bool,
        pub writes: usize,
        /// Where its writes are journaled (beside a bpffs's changes).
        pub journal: Journal,
    }

    impl<V> FakeSlot<V> {
        pub fn holding(value: V) -> Self {
            Self {
                value: Some(value),
                refuse: false,
                writes: 0,
                journal: Journal::default(),
            }
        }
    }

    impl<V: Copy + std::fmt::Debug> Slot<V> for FakeSlot<V> {
        fn read(&self) -> Option<V> {
            self.value
        }

        fn write(&mut self, value: V) -> Result<(), MapError> {
            if self.refuse {
                return Err(MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: io::Error::from_raw_os_error(nix::libc::EPERM),
                }));
            }
            self.writes += 1;
            self.value = Some(value);
            self.journal
                .borrow_mut()
                .push(Op::Write(format!("{value:?}")));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::{
        fake::{FakeFs, FakeSlot, Object, Op},
        *,
    };

    const LAYOUT: Layout = Layout {
        key: 4,
        value: 16,
        max_entries: 1024,
    };

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    /// A previous daemon (generation 4) left links for `exec` and `exit`
    /// and one for a program this build no longer has; this daemon
    /// (generation 5) attaches `exec`, `exit` and `connect`.
    fn beside_a_previous_daemon() -> FakeFs {
        let mut fs = FakeFs {
            link_ids: vec![51, 52, 53],
            ..FakeFs::default()
        };
        for (name, id) in [("exec", 41), ("exit", 42), ("gone", 43)] {
            fs.pins.insert(p("/pin/links").join(name), Object::Link(id));
        }
        fs
    }

    fn previous(fs: &FakeFs) -> Vec<PathBuf> {
        fs.pins.keys().cloned().collect()
    }

    #[test]
    fn a_take_over_pins_ours_then_switches_then_replaces_the_previous_links() {
        let mut fs = beside_a_previous_daemon();
        let before = previous(&fs);
        let mut active = FakeSlot::holding(4);
        active.journal = std::rc::Rc::clone(&fs.journal);
        let n = take_over(
            &mut fs,
            &mut active,
            Path::new("/pin/links"),
            &["exec", "exit", "connect"],
            5,
            before,
        )
        .unwrap();
        assert_eq!(n, 3);
        assert_eq!(active.value, Some(5));
        // Ours pinned under temporary names, the switch (one write), then
        // ours renamed over the previous ones; the link of a program we do
        // not have goes last.
        let staged = |name: &str| p(&format!("/pin/links/new_5_{name}"));
        let ops: Vec<Op> = fs.journal.borrow().clone();
        assert_eq!(
            ops,
            [
                Op::Pin(staged("exec"), Object::Link(51)),
                Op::Pin(staged("exit"), Object::Link(52)),
                Op::Pin(staged("connect"), Object::Link(53)),
                Op::Write("5".into()),
                Op::Rename(staged("exec"), p("/pin/links/exec")),
                Op::Rename(staged("exit"), p("/pin/links/exit")),
                Op::Rename(staged("connect"), p("/pin/links/connect")),
                Op::Remove(p("/pin/links/gone")),
            ]
        );
        assert_eq!(active.writes, 1);
        assert_eq!(
            fs.pins,
            [("connect", 53), ("exec", 51), ("exit", 52)]
                .into_iter()
                .map(|(n, id)| (p("/pin/links").join(n), Object::Link(id)))
                .collect()
        );
    }

    #[test]
    fn a_take_over_that_cannot_pin_leaves_the_previous_generation_acting() {
        let mut fs = beside_a_previous_daemon();
        fs.refuse_pins.insert(p("/pin/links/new_5_exit"));
        let before = previous(&fs);
        let mut active = FakeSlot::holding(4);
        let err = take_over(
            &mut fs,
            &mut active,
            Path::new("/pin/links"),
            &["exec", "exit", "connect"],
            5,
            before.clone(),
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "pinning a program link");
        assert_eq!(active.value, Some(4), "not switched");
        assert_eq!(active.writes, 0);
        // The previous links are all still there, untouched.
        for path in before {
            assert!(matches!(fs.pins.get(&path), Some(Object::Link(41..=43))));
        }
        // A switch the kernel refuses: the previous links stay too.
        let mut fs = beside_a_previous_daemon();
        let before = previous(&fs);
        let mut active = FakeSlot::holding(4);
        active.refuse = true;
        assert!(
            take_over(
                &mut fs,
                &mut active,
                Path::new("/pin/links"),
                &["exec"],
                5,
                before
            )
            .is_err()
        );
        assert_eq!(fs.link_at(Path::new("/pin/links/exec")), Pinned::Id(41));
        assert!(
            !fs.journal
                .borrow()
                .iter()
                .any(|op| matches!(op, Op::Rename(..) | Op::Remove(..)))
        );
    }

    #[test]
    fn a_generation_changed_behind_the_daemon_is_written_back() {
        let pin_dir = Path::new("/pin");
        let mut active = FakeSlot::holding(5);
        assert!(check_generation(&mut active, 5, pin_dir).is_none());
        assert_eq!(active.writes, 0, "no write when nothing changed");
        // Someone wrote another generation: every program idles until ours
        // is written back.
        active.value = Some(9);
        let t = check_generation(&mut active, 5, pin_dir).unwrap();
        assert_eq!(t.what, tamper::GENERATION_CHANGED);
        assert_eq!(t.object, "/pin/SNSR_ACTIVE");
        assert!(t.repaired);
        assert_eq!(
            t.detail.as_deref(),
            Some("found generation 9; wrote 5 again")
        );
        assert_eq!(active.value, Some(5));
        // When it cannot be written back, that is said.
        active.value = Some(9);
        active.refuse = true;
        let t = check_generation(&mut active, 5, pin_dir).unwrap();
        assert!(!t.repaired);
        assert!(
            t.detail
                .as_deref()
                .unwrap()
                .starts_with("found generation 9; cannot write it again:")
        );
    }

    #[test]
    fn a_tampered_map_pin_is_pinned_again() {
        let pin_dir = Path::new("/pin");
        let mut fs = FakeFs {
            maps: vec![(7, LAYOUT)],
            ..FakeFs::default()
        };
        fs.pins.insert(p("/pin/SNSR_X"), Object::Map(7, LAYOUT));
        assert!(check_map_pin(&mut fs, pin_dir, 0, "SNSR_X", 7).is_none());
        assert!(fs.journal.borrow().is_empty());
        // Another map pinned in its place.
        fs.pins.insert(p("/pin/SNSR_X"), Object::Map(99, LAYOUT));
        let t = check_map_pin(&mut fs, pin_dir, 0, "SNSR_X", 7).unwrap();
        assert_eq!(t.what, tamper::PIN_REPLACED);
        assert!(t.repaired);
        assert_eq!(t.detail.as_deref(), Some("map SNSR_X (id 7) pinned again"));
        assert_eq!(fs.map_at(Path::new("/pin/SNSR_X")), Pinned::Id(7));
        // A file in its place.
        fs.pins.insert(p("/pin/SNSR_X"), Object::Other);
        let t = check_map_pin(&mut fs, pin_dir, 0, "SNSR_X", 7).unwrap();
        assert_eq!(t.what, tamper::PIN_REPLACED);
        // Removed, and cannot be pinned again.
        fs.pins.clear();
        fs.refuse_pins.insert(p("/pin/SNSR_X"));
        let t = check_map_pin(&mut fs, pin_dir, 0, "SNSR_X", 7).unwrap();
        assert_eq!(t.what, tamper::PIN_REMOVED);
        assert!(!t.repaired);
        assert_eq!(
            t.detail.as_deref(),
            Some("map SNSR_X cannot be pinned again: Operation not permitted")
        );
    }

    #[test]
    fn an_owner_record_changed_behind_the_daemon_is_written_back() {
        let pin_dir = Path::new("/pin");
        let ours = super::super::owner::record(1234, 56, "0.1.0", Path::new("/run/s.sock"));
        let theirs = super::super::owner::record(999, 1, "0.0.9", Path::new("/x.sock"));
        let mut slot = FakeSlot::holding(ours);
        // Not claimed yet: nothing to check.
        slot.value = Some(theirs);
        assert!(check_owner(&mut slot, None, pin_dir).is_none());
        let t = check_owner(&mut slot, Some(ours), pin_dir).unwrap();
        assert_eq!(t.what, tamper::OWNER_CHANGED);
        assert_eq!(t.object, "/pin/SNSR_OWNER");
        assert!(t.repaired);
        assert_eq!(slot.value, Some(ours));
        assert!(check_owner(&mut slot, Some(ours), pin_dir).is_none());
    }

    #[test]
    fn a_pin_of_another_layout_is_dropped_and_a_compatible_one_kept() {
        let path = Path::new("/pin/SNSR_X");
        let mut fs = FakeFs::default();
        // No pin: compatible, nothing to drop.
        assert!(pin_compatible(&fs, path, LAYOUT));
        drop_incompatible_pin(&mut fs, path, LAYOUT).unwrap();
        // Same layout: kept (what it holds survives the restart).
        fs.pins.insert(path.to_owned(), Object::Map(3, LAYOUT));
        assert!(pin_compatible(&fs, path, LAYOUT));
        drop_incompatible_pin(&mut fs, path, LAYOUT).unwrap();
        assert!(fs.journal.borrow().is_empty());
        // Another size ([limits] changed): dropped.
        let resized = Layout {
            max_entries: 2048,
            ..LAYOUT
        };
        assert!(!pin_compatible(&fs, path, resized));
        drop_incompatible_pin(&mut fs, path, resized).unwrap();
        assert_eq!(*fs.journal.borrow(), [Op::Remove(path.to_owned())]);
        assert_eq!(fs.map_at(path), Pinned::Nothing);
    }
}

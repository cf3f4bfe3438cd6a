//! A small safe wrapper of fanotify(7), for what the file watch needs: a
//! notification group that reports directory entry changes by parent
//! directory and name (`FAN_REPORT_DFID_NAME`), marks on directories, and
//! the parsing of what `read(2)` returns.
//!
//! nix's fanotify (0.30 and 0.32) has neither the reporting flags nor the
//! information records, so the three system calls are here, each behind a
//! safe function; everything the kernel hands back is parsed by
//! [`parse`], a pure function over bytes that checks every length before it
//! reads (the buffer comes from the kernel, but a parser that trusts it is
//! one bug away from reading past it).
//!
//! Minimum kernel: 5.9 (`FAN_REPORT_DFID_NAME`); `FAN_RENAME` 5.17 (without
//! it a rename is two events, `FAN_MOVED_FROM` and `FAN_MOVED_TO`);
//! directory handles of file systems that cannot export them (bpffs) 6.5.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd},
        unix::ffi::OsStrExt as _,
    },
    path::Path,
};

use nix::libc;

/// A file system object as fanotify names it: the file system id and the
/// file handle (`name_to_handle_at(2)` with `AT_HANDLE_FID`). The same
/// directory always has the same id while it exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FileId {
    pub fsid: [u8; 8],
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

/// Which information record a [`Record`] was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// The directory and the name of the entry (`FAN_EVENT_INFO_TYPE_DFID_NAME`).
    DirName,
    /// A rename's old directory and name.
    OldDirName,
    /// A rename's new directory and name.
    NewDirName,
    /// A directory, without a name (`FAN_EVENT_INFO_TYPE_DFID`).
    Dir,
    /// The object itself (`FAN_EVENT_INFO_TYPE_FID`).
    Object,
}

/// One identifying record of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub kind: RecordKind,
    pub id: FileId,
    /// The entry's name in the directory (`.` for an event on the
    /// directory itself); absent for records without a name.
    pub name: Option<Vec<u8>>,
}

/// One event as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawEvent {
    /// `FAN_*` bits.
    pub mask: u64,
    /// The process (thread group) that caused it; 0 when the kernel does
    /// not say (a listener without `CAP_SYS_ADMIN` only learns its own).
    pub pid: i32,
    /// An open file of the object (never with the reporting flags used
    /// here, where it is `FAN_NOFD`); the reader must close one it gets.
    pub fd: RawFd,
    pub records: Vec<Record>,
}

/// What [`parse`] made of a buffer.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Parsed {
    pub events: Vec<RawEvent>,
    /// Events or records that did not make sense (skipped).
    pub malformed: u32,
}

/// Size of `struct fanotify_event_metadata`.
const METADATA_LEN: usize = 24;
/// `struct fanotify_event_info_header` + `__kernel_fsid_t` + the two `int`s
/// of `struct file_handle`.
const FID_RECORD_MIN: usize = 4 + 8 + 8;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Parses what one `read(2)` of a fanotify group returned: events of
/// `struct fanotify_event_metadata`, each followed by its information
/// records. Never reads past `buf`, never panics: an event whose lengths do
/// not fit ends the parse (what follows cannot be framed), a record that
/// does not fit is skipped; both are counted in `malformed`.
#[must_use]
pub fn parse(buf: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut at = 0usize;
    while at < buf.len() {
        let Some(ev) = buf.get(at..) else { break };
        let (Some(event_len), Some(&version), Some(metadata_len)) =
            (u32_at(ev, 0), ev.get(4), u16_at(ev, 6))
        else {
            out.malformed += 1;
            break;
        };
        let event_len = event_len as usize;
        let metadata_len = usize::from(metadata_len);
        if metadata_len < METADATA_LEN || event_len < metadata_len || event_len > ev.len() {
            out.malformed += 1;
            break;
        }
        at += event_len;
        let Some(ev) = ev.get(..event_len) else { break };
        let (Some(mask), Some(fd), Some(pid)) = (u64_at(ev, 8), i32_at(ev, 16), i32_at(ev, 20))
        else {
            out.malformed += 1;
            continue;
        };
        if version != libc::FANOTIFY_METADATA_VERSION {
            out.malformed += 1;
            // Still hand back the fd, so that the reader can close it.
            out.events.push(RawEvent {
                mask: 0,
                pid,
                fd,
                records: Vec::new(),
            });
            continue;
        }
        let mut records = Vec::new();
        let mut r = metadata_len;
        while r < event_len {
            let Some(rec) = ev.get(r..) else { break };
            let (Some(&info_type), Some(len)) = (rec.first(), u16_at(rec, 2)) else {
                out.malformed += 1;
                break;
            };
            let len = usize::from(len);
            if len < 4 || len > rec.len() {
                out.malformed += 1;
                break;
            }
            r += len;
            if let Some(rec) = rec.get(..len) {
                match parse_record(info_type, rec) {
                    Some(Some(record)) => records.push(record),
                    Some(None) => {} // a record of another type (pidfd, error)
                    None => out.malformed += 1,
                }
            }
        }
        out.events.push(RawEvent {
            mask,
            pid,
            fd,
            records,
        });
    }
    out
}

/// One information record (`rec` is exactly its `len` bytes). `None`: it
/// does not fit; `Some(None)`: a type this reader does not use.
fn parse_record(info_type: u8, rec: &[u8]) -> Option<Option<Record>> {
    let kind = match info_type {
        libc::FAN_EVENT_INFO_TYPE_DFID_NAME => RecordKind::DirName,
        libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME => RecordKind::OldDirName,
        libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME => RecordKind::NewDirName,
        libc::FAN_EVENT_INFO_TYPE_DFID => RecordKind::Dir,
        libc::FAN_EVENT_INFO_TYPE_FID => RecordKind::Object,
        _ => return Some(None),
    };
    if rec.len() < FID_RECORD_MIN {
        return None;
    }
    let fsid: [u8; 8] = rec.get(4..12)?.try_into().ok()?;
    let handle_bytes = u32_at(rec, 12)? as usize;
    let handle_type = i32_at(rec, 16)?;
    let handle_end = FID_RECORD_MIN.checked_add(handle_bytes)?;
    let handle = rec.get(FID_RECORD_MIN..handle_end)?.to_vec();
    let name = match kind {
        RecordKind::DirName | RecordKind::OldDirName | RecordKind::NewDirName => {
            // NUL-terminated, then padding to 4 bytes.
            let rest = rec.get(handle_end..)?;
            let end = rest.iter().position(|&b| b == 0)?;
            Some(rest.get(..end)?.to_vec())
        }
        RecordKind::Dir | RecordKind::Object => None,
    };
    Some(Some(Record {
        kind,
        id: FileId {
            fsid,
            handle_type,
            handle,
        },
        name,
    }))
}

/// What a mark asks to hear about: entries created, deleted, renamed,
/// written (`FAN_MODIFY`: write, truncate) or changed in their metadata
/// (`FAN_ATTRIB`: chmod, chown, utimes, link count), in the directory and
/// of the directory itself, and the directory itself deleted or moved.
pub const WATCH_MASK: u64 = libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_DELETE_SELF
    | libc::FAN_MOVE_SELF
    | libc::FAN_ONDIR
    | libc::FAN_EVENT_ON_CHILD;

/// A fanotify notification group.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
    /// The rename events marks ask for: `FAN_RENAME` (one event with both
    /// names), or `FAN_MOVED_FROM | FAN_MOVED_TO` before Linux 5.17.
    rename_mask: u64,
}

impl Group {
    /// A non-blocking notification group that reports the parent directory
    /// and name of each change.
    ///
    /// # Errors
    /// `fanotify_init(2)`'s (EPERM: no `CAP_SYS_ADMIN` and an older kernel
    /// or a seccomp filter; EINVAL: a kernel before 5.9).
    pub fn new() -> io::Result<Self> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DFID_NAME;
        let event_flags = (libc::O_RDONLY | libc::O_CLOEXEC | libc::O_LARGEFILE) as libc::c_uint;
        // SAFETY: fanotify_init(2) takes two flag words and returns an fd or -1.
        let fd = unsafe { libc::fanotify_init(flags, event_flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this fd; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self {
            fd,
            rename_mask: libc::FAN_RENAME,
        })
    }

    /// Marks the directory open as `dir` (the very object: no path is
    /// looked up again) with [`WATCH_MASK`] and the rename events.
    ///
    /// # Errors
    /// `fanotify_mark(2)`'s (ENOSPC: the per-user mark limit;
    /// ENODEV/EXDEV: a file system fanotify cannot name objects of).
    pub fn mark(&mut self, dir: &OwnedFd) -> io::Result<()> {
        match self.mark_with(dir, WATCH_MASK | self.rename_mask) {
            Err(e)
                if e.raw_os_error() == Some(libc::EINVAL)
                    && self.rename_mask == libc::FAN_RENAME =>
            {
                // Before 5.17: no FAN_RENAME.
                self.rename_mask = libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO;
                self.mark_with(dir, WATCH_MASK | self.rename_mask)
            }
            other => other,
        }
    }

    fn mark_with(&self, dir: &OwnedFd, mask: u64) -> io::Result<()> {
        // SAFETY: both fds are open (borrowed for the call); a null path
        // names the object `dir` itself.
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_ONLYDIR,
                mask,
                dir.as_raw_fd(),
                std::ptr::null(),
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Waits up to `timeout_ms` for events; true when there are some.
    ///
    /// # Errors
    /// `poll(2)`'s, but EINTR, which is "no events yet".
    pub fn wait(&self, timeout_ms: u16) -> io::Result<bool> {
        use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
        use std::os::fd::AsFd as _;
        let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(timeout_ms)) {
            Ok(n) => Ok(n > 0),
            Err(nix::errno::Errno::EINTR) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Reads what is queued into `buf` (at most its length); 0 when
    /// nothing is.
    ///
    /// # Errors
    /// `read(2)`'s, but EAGAIN and EINTR (0 bytes).
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match nix::unistd::read(&self.fd, buf) {
            Ok(n) => Ok(n),
            Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => Ok(0),
            Err(e) => Err(e.into()),
        }
    }
}

/// Opens the directory at `path` (not following a final symlink), for a
/// mark and its id.
///
/// # Errors
/// `open(2)`'s (ENOTDIR: not a directory; ELOOP: a symlink).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: open(2) of a valid C string; returns an fd or -1.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The id fanotify reports for the object open as `fd`: its file system's
/// `f_fsid` and its handle as `name_to_handle_at(2)` encodes it with
/// `AT_HANDLE_FID` (the encoding fanotify uses).
///
/// # Errors
/// `fstatfs(2)`'s or `name_to_handle_at(2)`'s (EOPNOTSUPP: the file
/// system cannot name its objects).
pub fn file_id(fd: &OwnedFd) -> io::Result<FileId> {
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: fstatfs(2) of an open fd into a buffer of the right type.
    if unsafe { libc::fstatfs(fd.as_raw_fd(), &raw mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // `fsid_t` hides its two ints; it is 8 bytes of plain data.
    const _: () = assert!(size_of::<libc::fsid_t>() == 8);
    // SAFETY: reading the 8 bytes of a plain-data field we own.
    let fsid: [u8; 8] = unsafe { std::ptr::read_unaligned((&raw const st.f_fsid).cast()) };

    /// `struct file_handle` with room for the largest handle.
    #[repr(C)]
    struct Handle {
        handle_bytes: u32,
        handle_type: i32,
        f_handle: [u8; libc::MAX_HANDLE_SZ as usize],
    }
    let mut h = Handle {
        handle_bytes: libc::MAX_HANDLE_SZ as u32,
        handle_type: 0,
        f_handle: [0; libc::MAX_HANDLE_SZ as usize],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: name_to_handle_at(2) of an open fd with an empty path
    // (AT_EMPTY_PATH), into a handle buffer whose handle_bytes says its room.
    let r = unsafe {
        libc::name_to_handle_at(
            fd.as_raw_fd(),
            c"".as_ptr(),
            (&raw mut h).cast(),
            &raw mut mount_id,
            libc::AT_EMPTY_PATH | libc::AT_HANDLE_FID,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let n = (h.handle_bytes as usize).min(h.f_handle.len());
    Ok(FileId {
        fsid,
        handle_type: h.handle_type,
        handle: h.f_handle.get(..n).unwrap_or_default().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One event's bytes: metadata then records.
    fn event(mask: u64, pid: i32, records: &[Vec<u8>]) -> Vec<u8> {
        let body: usize = records.iter().map(Vec::len).sum();
        let len = u32::try_from(METADATA_LEN + body).unwrap();
        let mut b = Vec::new();
        b.extend_from_slice(&len.to_ne_bytes());
        b.push(libc::FANOTIFY_METADATA_VERSION);
        b.push(0);
        b.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        b.extend_from_slice(&mask.to_ne_bytes());
        b.extend_from_slice(&libc::FAN_NOFD.to_ne_bytes());
        b.extend_from_slice(&pid.to_ne_bytes());
        for r in records {
            b.extend_from_slice(r);
        }
        b
    }

    /// One fid record with `name` (padded to 4 bytes, as the kernel does).
    fn record(info_type: u8, handle: &[u8], name: Option<&[u8]>) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        body.extend_from_slice(&u32::try_from(handle.len()).unwrap().to_ne_bytes());
        body.extend_from_slice(&1i32.to_ne_bytes());
        body.extend_from_slice(handle);
        if let Some(name) = name {
            body.extend_from_slice(name);
            body.push(0);
        }
        while (body.len() + 4) % 4 != 0 {
            body.push(0);
        }
        let mut r = vec![info_type, 0];
        r.extend_from_slice(&u16::try_from(body.len() + 4).unwrap().to_ne_bytes());
        r.extend_from_slice(&body);
        r
    }

    fn id(handle: &[u8]) -> FileId {
        FileId {
            fsid: [1, 2, 3, 4, 5, 6, 7, 8],
            handle_type: 1,
            handle: handle.to_vec(),
        }
    }

    #[test]
    fn a_delete_and_a_rename_are_read_with_their_names() {
        let mut buf = event(
            libc::FAN_DELETE,
            42,
            &[record(
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
                &[9; 8],
                Some(b"f"),
            )],
        );
        buf.extend(event(
            libc::FAN_RENAME,
            43,
            &[
                record(
                    libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME,
                    &[9; 8],
                    Some(b"sensor.db"),
                ),
                record(
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                    &[7; 12],
                    Some(b"moved.db"),
                ),
            ],
        ));
        let p = parse(&buf);
        assert_eq!(p.malformed, 0);
        assert_eq!(p.events.len(), 2);
        assert_eq!(p.events[0].pid, 42);
        assert_eq!(p.events[0].mask, libc::FAN_DELETE);
        assert_eq!(p.events[0].fd, libc::FAN_NOFD);
        assert_eq!(
            p.events[0].records,
            [Record {
                kind: RecordKind::DirName,
                id: id(&[9; 8]),
                name: Some(b"f".to_vec()),
            }]
        );
        let r = &p.events[1].records;
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].kind, r[0].name.as_deref()),
            (RecordKind::OldDirName, Some(&b"sensor.db"[..]))
        );
        assert_eq!(
            (r[1].kind, &r[1].id),
            (RecordKind::NewDirName, &id(&[7; 12]))
        );
        assert_eq!(r[1].name.as_deref(), Some(&b"moved.db"[..]));
    }

    #[test]
    fn an_overflow_has_no_records() {
        let p = parse(&event(libc::FAN_Q_OVERFLOW, 0, &[]));
        assert_eq!(p.malformed, 0);
        assert_eq!(p.events[0].mask, libc::FAN_Q_OVERFLOW);
        assert!(p.events[0].records.is_empty());
    }

    #[test]
    fn records_of_other_types_are_skipped_not_malformed() {
        let pidfd = {
            let mut r = vec![libc::FAN_EVENT_INFO_TYPE_PIDFD, 0];
            r.extend_from_slice(&8u16.to_ne_bytes());
            r.extend_from_slice(&5i32.to_ne_bytes());
            r
        };
        let p = parse(&event(libc::FAN_ATTRIB, 1, &[pidfd]));
        assert_eq!(p.malformed, 0);
        assert!(p.events[0].records.is_empty());
    }

    #[test]
    fn lengths_that_do_not_fit_are_malformed_and_never_read_past_the_buffer() {
        let good = event(
            libc::FAN_CREATE,
            7,
            &[record(
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
                &[1; 8],
                Some(b"x"),
            )],
        );
        // event_len past the end: the parse stops.
        let mut long = good.clone();
        long[0..4].copy_from_slice(&10_000u32.to_ne_bytes());
        assert_eq!(
            parse(&long),
            Parsed {
                events: vec![],
                malformed: 1
            }
        );
        // event_len 0 (would loop forever if trusted).
        let mut zero = good.clone();
        zero[0..4].copy_from_slice(&0u32.to_ne_bytes());
        assert_eq!(parse(&zero).malformed, 1);
        // A handle longer than its record: the record is skipped, the event kept.
        let mut handle = good.clone();
        handle[METADATA_LEN + 12..METADATA_LEN + 16].copy_from_slice(&500u32.to_ne_bytes());
        let p = parse(&handle);
        assert_eq!((p.events.len(), p.malformed), (1, 1));
        assert!(p.events[0].records.is_empty());
        // A name without its NUL.
        let mut name = good.clone();
        let end = name.len();
        for b in &mut name[end - 4..] {
            *b = b'a';
        }
        assert_eq!(parse(&name).malformed, 1);
        // A record length of 0 (would loop forever if trusted).
        let mut rec0 = good.clone();
        rec0[METADATA_LEN + 2..METADATA_LEN + 4].copy_from_slice(&0u16.to_ne_bytes());
        assert_eq!(parse(&rec0).malformed, 1);
        // A truncated buffer: what fits is read, the rest counted.
        let mut two = good.clone();
        two.extend_from_slice(&good[..10]);
        let p = parse(&two);
        assert_eq!((p.events.len(), p.malformed), (1, 1));
        // Another metadata version: skipped, its fd still handed back.
        let mut vers = good;
        vers[4] = 2;
        let p = parse(&vers);
        assert_eq!((p.events.len(), p.malformed, p.events[0].mask), (1, 1, 0));
    }

    /// Every prefix and every single-byte corruption of a valid buffer
    /// parses without panicking (a poor man's fuzz run).
    #[test]
    fn no_input_makes_the_parser_panic() {
        let mut buf = event(
            libc::FAN_RENAME,
            9,
            &[
                record(libc::FAN_EVENT_INFO_TYPE_OLD_DFID_NAME, &[3; 8], Some(b"a")),
                record(
                    libc::FAN_EVENT_INFO_TYPE_NEW_DFID_NAME,
                    &[4; 8],
                    Some(b"bb"),
                ),
            ],
        );
        buf.extend(event(libc::FAN_Q_OVERFLOW, 0, &[]));
        for n in 0..=buf.len() {
            let _ = parse(&buf[..n]);
        }
        for i in 0..buf.len() {
            for v in [0u8, 1, 3, 0x7f, 0x80, 0xff] {
                let mut b = buf.clone();
                b[i] = v;
                let _ = parse(&b);
            }
        }
    }

    #[test]
    fn the_id_of_a_directory_is_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = file_id(&open_dir(dir.path()).unwrap()).unwrap();
        let b = file_id(&open_dir(dir.path()).unwrap()).unwrap();
        assert_eq!(a, b);
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        assert_ne!(file_id(&open_dir(&sub).unwrap()).unwrap(), a);
        // Not a directory, or a symlink to one: refused.
        std::fs::write(dir.path().join("f"), b"").unwrap();
        assert!(open_dir(&dir.path().join("f")).is_err());
        std::os::unix::fs::symlink(&sub, dir.path().join("l")).unwrap();
        assert!(open_dir(&dir.path().join("l")).is_err());
    }
}

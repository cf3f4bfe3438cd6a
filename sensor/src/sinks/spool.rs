//! A network output's on-disk spool: every record the output must deliver
//! is appended here first, and the output's sender reads it back, in order,
//! and moves the cursor past what the receiver acknowledged.
//!
//! ```text
//! <dir>/00000000000000000001.seg   records, appended
//! <dir>/00000000000000000002.seg
//! <dir>/cursor                     "<segment> <offset>": first byte not delivered
//! ```
//!
//! A record is `len u32 | seq u64 | time_ns i64 | kind_len u8 | kind | payload`
//! (little endian; `len` counts what follows it). What is in the spool
//! survives the daemon (stop, crash, SIGKILL: it is in the page cache, not
//! only in our memory), so the next daemon delivers it: at-least-once, with
//! duplicates only for what was sent but not yet acknowledged. A torn record
//! at the end of the last segment (a crash mid-write) is cut off at open.
//! Nothing is fsynced: a power loss can lose the newest records.
//!
//! The spool is bounded: when it holds more than its maximum, its oldest
//! segment is deleted, delivered or not, and the records it still had are
//! counted as dropped.

use std::{
    collections::VecDeque,
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write as _},
    os::unix::fs::{FileExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{Condvar, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use super::transport::Record;

/// The cursor is saved at most this often (and when the spool is dropped):
/// a rename per delivered batch cost a third of a sender's CPU. A crash
/// resends what was delivered since the last save: duplicates, no gap.
const CURSOR_SAVE_INTERVAL: Duration = Duration::from_millis(250);

/// Bytes of a record's fixed header after its length.
const HEADER: usize = 8 + 8 + 1;
/// Longest record accepted (a sane bound on one event).
const MAX_RECORD: usize = 16 << 20;

/// Why the spool cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("spool {}: {what}", path.display())]
pub struct SpoolError {
    pub path: PathBuf,
    pub what: &'static str,
    #[source]
    pub source: io::Error,
}

#[derive(Debug)]
struct Segment {
    id: u64,
    /// Bytes of complete records in it.
    bytes: u64,
    /// Records in it.
    records: u64,
}

/// Where the reader is: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    pub segment: u64,
    pub offset: u64,
}

struct Inner {
    dir: PathBuf,
    /// Oldest first; the last one is written.
    segments: VecDeque<Segment>,
    writer: Option<BufWriter<File>>,
    /// Bytes buffered in `writer`, not yet readable from the file.
    buffered: u64,
    /// The reader's position, and how many records of its segment it passed.
    cursor: Position,
    cursor_records: u64,
    /// Total bytes of all segments.
    total: u64,
    max_bytes: u64,
    segment_bytes: u64,
    /// Records deleted unread because the spool was full.
    dropped: u64,
    /// The highest seq ever appended (0: none).
    last_seq: u64,
    closed: bool,
    /// The cursor moved since it was last saved, and when that was.
    dirty: bool,
    saved_at: Option<Instant>,
}

/// The spool of one output; the writer and the reader share it.
pub struct Spool {
    inner: Mutex<Inner>,
    ready: Condvar,
}

/// Records read from the spool, owned, with where each one ends.
#[derive(Debug, Default)]
pub struct ReadBatch {
    buf: Vec<u8>,
    items: Vec<ReadItem>,
}

/// A record of a [`ReadBatch`]: where its parts are in the buffer, and the
/// spool position after it.
#[derive(Debug)]
struct ReadItem {
    seq: u64,
    time_ns: i64,
    kind: std::ops::Range<usize>,
    payload: std::ops::Range<usize>,
    after: Position,
}

impl ReadBatch {
    #[must_use]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The records, borrowed.
    #[must_use]
    pub fn records(&self) -> Vec<Record<'_>> {
        self.items
            .iter()
            .map(|item| Record {
                seq: item.seq,
                time_ns: item.time_ns,
                kind: std::str::from_utf8(&self.buf[item.kind.clone()]).unwrap_or("unknown"),
                payload: &self.buf[item.payload.clone()],
            })
            .collect()
    }

    /// The position after the first `n` records.
    #[must_use]
    pub fn position_after(&self, n: usize) -> Option<Position> {
        n.checked_sub(1)
            .and_then(|i| self.items.get(i))
            .map(|item| item.after)
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir`, recovering what a previous
    /// daemon left: its segments, its cursor, a torn last record.
    pub fn open(dir: &Path, max_bytes: u64) -> Result<Self, SpoolError> {
        let err = |what: &'static str| {
            let path = dir.to_owned();
            move |source| SpoolError { path, what, source }
        };
        fs::create_dir_all(dir).map_err(err("cannot create the directory"))?;
        let _ = fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700));
        let mut ids: Vec<u64> = fs::read_dir(dir)
            .map_err(err("cannot list"))?
            .filter_map(Result::ok)
            .filter_map(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|n| n.strip_suffix(".seg"))
                    .and_then(|n| n.parse().ok())
            })
            .collect();
        ids.sort_unstable();
        let cursor = read_cursor(dir);
        let mut segments = VecDeque::new();
        let mut last_seq = 0;
        let mut cursor_records = 0;
        let mut cursor_pos = cursor.unwrap_or(Position {
            segment: ids.first().copied().unwrap_or(1),
            offset: 0,
        });
        for id in ids {
            let path = segment_path(dir, id);
            if id < cursor_pos.segment {
                // Delivered before the previous daemon stopped.
                let _ = fs::remove_file(&path);
                continue;
            }
            let scan = scan_segment(
                &path,
                if id == cursor_pos.segment {
                    cursor_pos.offset
                } else {
                    0
                },
            )
            .map_err(err("cannot read a segment"))?;
            if scan.valid < scan.len {
                // A torn record from a crash mid-write: cut it off.
                tracing::warn!(segment = %path.display(), bytes = scan.len - scan.valid, "spool: cutting a torn record");
                OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .and_then(|f| f.set_len(scan.valid))
                    .map_err(err("cannot repair a segment"))?;
            }
            if id == cursor_pos.segment {
                // Back to where a record starts: a cursor past the valid
                // records, or inside one (a damaged cursor file), would have
                // the reader parse from the middle of a record forever.
                cursor_records = scan.records_before_offset;
                cursor_pos.offset = scan.offset_boundary;
            }
            last_seq = last_seq.max(scan.last_seq);
            segments.push_back(Segment {
                id,
                bytes: scan.valid,
                records: scan.records,
            });
        }
        if segments.front().is_none_or(|s| s.id != cursor_pos.segment) {
            // The cursor's segment is gone: start at the oldest there is.
            cursor_pos = Position {
                segment: segments.front().map_or(1, |s| s.id),
                offset: 0,
            };
            cursor_records = 0;
        }
        let total = segments.iter().map(|s| s.bytes).sum();
        let segment_bytes = (max_bytes / 8).clamp(64 * 1024, 16 << 20);
        let spool = Self {
            inner: Mutex::new(Inner {
                dir: dir.to_owned(),
                segments,
                writer: None,
                buffered: 0,
                cursor: cursor_pos,
                cursor_records,
                total,
                max_bytes,
                segment_bytes,
                dropped: 0,
                last_seq,
                closed: false,
                dirty: true,
                saved_at: None,
            }),
            ready: Condvar::new(),
        };
        {
            let mut inner = spool.lock();
            inner.open_writer().map_err(err("cannot open a segment"))?;
            inner.save_cursor(true);
        }
        Ok(spool)
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent enough state for
        // counting; keep going rather than poisoning every later call.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends records (buffered: [`Spool::commit`] makes them readable).
    pub fn append(&self, records: &[Record<'_>]) -> io::Result<()> {
        let mut inner = self.lock();
        for r in records {
            inner.append_one(r)?;
        }
        Ok(())
    }

    /// Makes what was appended readable and wakes the reader.
    pub fn commit(&self) -> io::Result<()> {
        let mut inner = self.lock();
        let result = inner.flush();
        drop(inner);
        self.ready.notify_all();
        result
    }

    /// Closes the writing side: the reader drains what is there, then sees the end.
    pub fn close(&self) {
        let mut inner = self.lock();
        let _ = inner.flush();
        inner.closed = true;
        drop(inner);
        self.ready.notify_all();
    }

    /// Reads up to `max_bytes` of records from the cursor, waiting up to
    /// `wait` for some. `Ok(None)`: closed and nothing left.
    pub fn read(&self, max_bytes: usize, wait: Duration) -> io::Result<Option<ReadBatch>> {
        let mut inner = self.lock();
        if inner.available() == 0 {
            if inner.closed {
                return Ok(None);
            }
            inner = self
                .ready
                .wait_timeout(inner, wait)
                .map(|(g, _)| g)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        // Idle: a cursor the last acks left unsaved is saved now.
        inner.save_cursor(false);
        let mut batch = ReadBatch::default();
        inner.read_into(&mut batch, max_bytes)?;
        Ok(Some(batch))
    }

    /// The receiver holds everything before `pos`: move the cursor there
    /// (and delete segments left behind). `passed` records are behind it.
    pub fn ack(&self, pos: Position, passed: u64) {
        let mut inner = self.lock();
        if pos <= inner.cursor {
            // Dropped meanwhile (spool full): the cursor already moved on.
            return;
        }
        if pos.segment == inner.cursor.segment {
            inner.cursor_records += passed;
        } else {
            // `passed` spans segments: count from the new segment's start.
            inner.cursor_records = inner.records_before(pos);
        }
        inner.cursor = pos;
        inner.release_behind();
        inner.dirty = true;
        inner.save_cursor(false);
    }

    /// Records waiting (appended, not yet acknowledged) and their bytes.
    #[must_use]
    pub fn pending(&self) -> (u64, u64) {
        let inner = self.lock();
        inner.pending()
    }

    /// Records deleted unread because the spool was full.
    #[must_use]
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// The highest seq ever appended (0 when none): the next daemon's
    /// sequence continues after it.
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.lock().last_seq
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        self.lock().save_cursor(true);
    }
}

impl Inner {
    fn current(&self) -> Option<&Segment> {
        self.segments.back()
    }

    fn open_writer(&mut self) -> io::Result<()> {
        let id = match self.current() {
            Some(s) if s.bytes < self.segment_bytes => s.id,
            Some(s) => s.id + 1,
            None => self.cursor.segment.max(1),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(segment_path(&self.dir, id))?;
        if self.current().is_none_or(|s| s.id != id) {
            self.segments.push_back(Segment {
                id,
                bytes: 0,
                records: 0,
            });
        }
        self.writer = Some(BufWriter::with_capacity(1 << 16, file));
        self.buffered = 0;
        Ok(())
    }

    fn append_one(&mut self, r: &Record<'_>) -> io::Result<()> {
        let kind = r.kind.as_bytes();
        let kind = &kind[..kind.len().min(255)];
        let len = HEADER + kind.len() + r.payload.len();
        if len > MAX_RECORD {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "record larger than 16 MiB",
            ));
        }
        if self.writer.is_none()
            || self
                .current()
                .is_some_and(|s| s.bytes >= self.segment_bytes)
        {
            self.flush()?;
            self.writer = None;
            self.open_writer()?;
        }
        let Some(w) = self.writer.as_mut() else {
            return Err(io::Error::other("spool writer not open"));
        };
        #[allow(clippy::cast_possible_truncation)] // bounded by MAX_RECORD
        w.write_all(&(len as u32).to_le_bytes())?;
        w.write_all(&r.seq.to_le_bytes())?;
        w.write_all(&r.time_ns.to_le_bytes())?;
        #[allow(clippy::cast_possible_truncation)] // cut to 255 above
        w.write_all(&[kind.len() as u8])?;
        w.write_all(kind)?;
        w.write_all(r.payload)?;
        let bytes = 4 + len as u64;
        if let Some(s) = self.segments.back_mut() {
            s.bytes += bytes;
            s.records += 1;
        }
        self.buffered += bytes;
        self.total += bytes;
        self.last_seq = self.last_seq.max(r.seq);
        self.enforce_bound();
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if let Some(w) = self.writer.as_mut() {
            w.flush()?;
        }
        self.buffered = 0;
        Ok(())
    }

    /// Deletes the oldest segments while over the bound (never the one written).
    fn enforce_bound(&mut self) {
        while self.total > self.max_bytes && self.segments.len() > 1 {
            let Some(old) = self.segments.pop_front() else {
                break;
            };
            self.total -= old.bytes;
            let _ = fs::remove_file(segment_path(&self.dir, old.id));
            if old.id >= self.cursor.segment {
                let unread = if old.id == self.cursor.segment {
                    old.records.saturating_sub(self.cursor_records)
                } else {
                    old.records
                };
                self.dropped += unread;
                if let Some(next) = self.segments.front() {
                    self.cursor = Position {
                        segment: next.id,
                        offset: 0,
                    };
                    self.cursor_records = 0;
                }
                tracing::warn!(
                    spool = %self.dir.display(),
                    records = unread,
                    "spool full: oldest undelivered records dropped"
                );
            }
        }
    }

    /// Bytes readable from the cursor on.
    fn available(&self) -> u64 {
        let (_, bytes) = self.pending();
        bytes.saturating_sub(self.buffered)
    }

    fn pending(&self) -> (u64, u64) {
        let mut records = 0;
        let mut bytes = 0;
        for s in &self.segments {
            if s.id == self.cursor.segment {
                records += s.records.saturating_sub(self.cursor_records);
                bytes += s.bytes.saturating_sub(self.cursor.offset);
            } else if s.id > self.cursor.segment {
                records += s.records;
                bytes += s.bytes;
            }
        }
        (records, bytes)
    }

    /// Records of `pos`'s segment before `pos` (read from the file).
    fn records_before(&self, pos: Position) -> u64 {
        scan_segment(&segment_path(&self.dir, pos.segment), pos.offset)
            .map_or(0, |s| s.records_before_offset)
    }

    fn read_into(&mut self, batch: &mut ReadBatch, max_bytes: usize) -> io::Result<()> {
        // Skip to the next segment when the cursor is at the end of a finished one.
        loop {
            let Some(seg) = self.segments.iter().find(|s| s.id == self.cursor.segment) else {
                return Ok(());
            };
            let is_last = self.segments.back().is_some_and(|b| b.id == seg.id);
            let readable_end = if is_last {
                seg.bytes.saturating_sub(self.buffered)
            } else {
                seg.bytes
            };
            if self.cursor.offset < readable_end {
                let id = seg.id;
                let want = usize::try_from(readable_end - self.cursor.offset)
                    .unwrap_or(usize::MAX)
                    .min(max_bytes.max(4 + MAX_RECORD.min(1 << 20)));
                let file = File::open(segment_path(&self.dir, id))?;
                let mut buf = vec![0u8; want];
                let n = read_full_at(&file, &mut buf, self.cursor.offset)?;
                buf.truncate(n);
                parse_records(&buf, id, self.cursor.offset, max_bytes, batch);
                if batch.is_empty() && n > 0 {
                    // One record larger than the read: read exactly it.
                    let len = buf
                        .get(..4)
                        .and_then(|b| b.try_into().ok())
                        .map_or(0, u32::from_le_bytes) as usize;
                    let mut one = vec![0u8; 4 + len];
                    let m = read_full_at(&file, &mut one, self.cursor.offset)?;
                    one.truncate(m);
                    parse_records(&one, id, self.cursor.offset, usize::MAX, batch);
                }
                return Ok(());
            }
            if is_last {
                return Ok(());
            }
            // This segment is done: move to the next.
            let next = self
                .segments
                .iter()
                .find(|s| s.id > self.cursor.segment)
                .map(|s| s.id);
            match next {
                Some(id) => {
                    self.cursor = Position {
                        segment: id,
                        offset: 0,
                    };
                    self.cursor_records = 0;
                    self.release_behind();
                    self.dirty = true;
                    self.save_cursor(false);
                }
                None => return Ok(()),
            }
        }
    }

    /// Deletes segments wholly before the cursor.
    fn release_behind(&mut self) {
        while let Some(front) = self.segments.front() {
            if front.id >= self.cursor.segment {
                break;
            }
            let id = front.id;
            let bytes = front.bytes;
            self.segments.pop_front();
            self.total -= bytes;
            let _ = fs::remove_file(segment_path(&self.dir, id));
        }
    }

    /// Saves the cursor if it moved, unless it was saved less than
    /// [`CURSOR_SAVE_INTERVAL`] ago (`force`: now).
    fn save_cursor(&mut self, force: bool) {
        if !self.dirty
            || (!force
                && self
                    .saved_at
                    .is_some_and(|t| t.elapsed() < CURSOR_SAVE_INTERVAL))
        {
            return;
        }
        self.write_cursor();
        self.dirty = false;
        self.saved_at = Some(Instant::now());
    }

    fn write_cursor(&self) {
        let tmp = self.dir.join("cursor.tmp");
        let text = format!("{} {}\n", self.cursor.segment, self.cursor.offset);
        let result = fs::write(&tmp, text).and_then(|()| fs::rename(&tmp, self.dir.join("cursor")));
        if let Err(e) = result {
            tracing::error!(spool = %self.dir.display(), error = %e, "cannot save the spool cursor; a restart resends from the last saved one");
        }
    }
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:020}.seg"))
}

fn read_cursor(dir: &Path) -> Option<Position> {
    let text = fs::read_to_string(dir.join("cursor")).ok()?;
    let mut parts = text.split_whitespace();
    Some(Position {
        segment: parts.next()?.parse().ok()?,
        offset: parts.next()?.parse().ok()?,
    })
}

fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(m) => n += m,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// Parses complete records of `buf` (read at `base` of segment `id`) into
/// `batch`, up to about `max_bytes` (at least one record).
fn parse_records(buf: &[u8], id: u64, base: u64, max_bytes: usize, batch: &mut ReadBatch) {
    let mut at = 0usize;
    while let Some(rec) = parse_one(&buf[at..]) {
        if !batch.items.is_empty() && batch.buf.len() + rec.total > max_bytes {
            break;
        }
        let start = batch.buf.len();
        batch.buf.extend_from_slice(rec.kind);
        let kind = start..batch.buf.len();
        batch.buf.extend_from_slice(rec.payload);
        let payload = kind.end..batch.buf.len();
        at += rec.total;
        batch.items.push(ReadItem {
            seq: rec.seq,
            time_ns: rec.time_ns,
            kind,
            payload,
            after: Position {
                segment: id,
                offset: base + at as u64,
            },
        });
    }
}

struct Parsed<'a> {
    total: usize,
    seq: u64,
    time_ns: i64,
    kind: &'a [u8],
    payload: &'a [u8],
}

fn parse_one(buf: &[u8]) -> Option<Parsed<'_>> {
    let len = u32::from_le_bytes(buf.get(..4)?.try_into().ok()?) as usize;
    if !(HEADER..=MAX_RECORD).contains(&len) {
        return None;
    }
    let body = buf.get(4..4 + len)?;
    let seq = u64::from_le_bytes(body.get(..8)?.try_into().ok()?);
    let time_ns = i64::from_le_bytes(body.get(8..16)?.try_into().ok()?);
    let kind_len = *body.get(16)? as usize;
    let kind = body.get(HEADER..HEADER + kind_len)?;
    let payload = body.get(HEADER + kind_len..)?;
    Some(Parsed {
        total: 4 + len,
        seq,
        time_ns,
        kind,
        payload,
    })
}

struct Scan {
    len: u64,
    valid: u64,
    records: u64,
    records_before_offset: u64,
    /// Where the last of those ends (0 when none does).
    offset_boundary: u64,
    last_seq: u64,
}

/// Walks a segment's records: where the valid ones end, how many, the last
/// seq, and how many end at or before `offset` (and where the last of them ends).
fn scan_segment(path: &Path, offset: u64) -> io::Result<Scan> {
    let data = fs::read(path)?;
    let mut at = 0usize;
    let mut scan = Scan {
        len: data.len() as u64,
        valid: 0,
        records: 0,
        records_before_offset: 0,
        offset_boundary: 0,
        last_seq: 0,
    };
    while let Some(rec) = parse_one(&data[at..]) {
        at += rec.total;
        scan.records += 1;
        scan.last_seq = scan.last_seq.max(rec.seq);
        if at as u64 <= offset {
            scan.records_before_offset += 1;
            scan.offset_boundary = at as u64;
        }
    }
    scan.valid = at as u64;
    Ok(scan)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn rec(seq: u64, payload: &[u8]) -> Record<'_> {
        Record {
            seq,
            time_ns: 1_700_000_000_000_000_000 + i64::try_from(seq).unwrap(),
            kind: "process.exec",
            payload,
        }
    }

    fn append_n(spool: &Spool, from: u64, n: u64, size: usize) {
        let payload = vec![b'x'; size];
        for seq in from..from + n {
            spool.append(&[rec(seq, &payload)]).unwrap();
        }
        spool.commit().unwrap();
    }

    fn read_all(spool: &Spool, ack: bool) -> Vec<u64> {
        let mut seqs = Vec::new();
        loop {
            let batch = spool.read(4096, Duration::from_millis(1)).unwrap().unwrap();
            if batch.is_empty() {
                return seqs;
            }
            seqs.extend(batch.records().iter().map(|r| r.seq));
            if ack {
                spool.ack(
                    batch.position_after(batch.len()).unwrap(),
                    batch.len() as u64,
                );
            } else {
                return seqs;
            }
        }
    }

    #[test]
    fn delivers_in_order_across_segments_and_deletes_what_was_acked() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        append_n(&spool, 1, 2000, 200);
        assert_eq!(spool.pending().0, 2000);
        let seqs = read_all(&spool, true);
        assert_eq!(seqs, (1..=2000).collect::<Vec<_>>());
        assert_eq!(spool.pending(), (0, 0));
        let segs = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .path()
                    .extension()
                    .is_some_and(|x| x == "seg")
            })
            .count();
        assert_eq!(segs, 1, "delivered segments are deleted");
        let r = rec(1, b"{\"a\":1}");
        assert_eq!(r.kind, "process.exec");
    }

    #[test]
    fn unacknowledged_records_survive_a_reopen_and_seq_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            append_n(&spool, 1, 100, 50);
            let batch = spool.read(40 * 75, Duration::ZERO).unwrap().unwrap();
            let k = 30;
            assert!(batch.len() > k);
            // The receiver took 30; then the daemon dies.
            spool.ack(batch.position_after(k).unwrap(), k as u64);
        }
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(spool.pending().0, 70);
        assert_eq!(spool.last_seq(), 100);
        assert_eq!(read_all(&spool, true), (31..=100).collect::<Vec<_>>());
    }

    #[test]
    fn a_torn_last_record_is_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            append_n(&spool, 1, 10, 50);
        }
        let seg = segment_path(dir.path(), 1);
        let len = fs::metadata(&seg).unwrap().len();
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .unwrap()
            .set_len(len - 7)
            .unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        assert_eq!(read_all(&spool, true), (1..=9).collect::<Vec<_>>());
        append_n(&spool, 10, 1, 50);
        assert_eq!(read_all(&spool, true), [10]);
    }

    /// fuzz/corpus/spool/crash-cursor-inside-a-record: a cursor file naming
    /// an offset inside a record (`1 5`) had the reader parse from there:
    /// every read came back empty with records pending (a sender spinning
    /// forever), each after allocating whatever length the bytes there said
    /// (up to 4 GiB).
    #[test]
    fn a_cursor_inside_a_record_resumes_at_its_start() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            append_n(&spool, 1, 10, 50);
        }
        let record = 4 + HEADER as u64 + "process.exec".len() as u64 + 50;
        for (offset, first) in [(5, 1), (2 * record + 1, 3), (10 * record + 7, 11)] {
            fs::write(dir.path().join("cursor"), format!("1 {offset}\n")).unwrap();
            let spool = Spool::open(dir.path(), 1 << 20).unwrap();
            assert_eq!(spool.pending().0, 11 - first);
            assert_eq!(read_all(&spool, false), (first..=10).collect::<Vec<_>>());
        }
    }

    #[test]
    fn a_full_spool_drops_the_oldest_and_counts_them() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 1 << 20).unwrap();
        // 4 MiB into a 1 MiB spool, nothing read.
        append_n(&spool, 1, 4096, 1000);
        let (pending, bytes) = spool.pending();
        assert!(bytes <= (1 << 20) + (64 << 10) * 2, "{bytes}");
        assert_eq!(pending + spool.dropped(), 4096);
        let seqs = read_all(&spool, true);
        assert_eq!(seqs.len() as u64, pending);
        assert_eq!(*seqs.last().unwrap(), 4096, "the newest are kept");
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "what is kept is contiguous"
        );
    }

    #[test]
    fn reader_waits_for_commit_and_sees_close() {
        let dir = tempfile::tempdir().unwrap();
        let spool = std::sync::Arc::new(Spool::open(dir.path(), 1 << 20).unwrap());
        let s2 = std::sync::Arc::clone(&spool);
        let t = std::thread::spawn(move || {
            let b = s2.read(4096, Duration::from_secs(10)).unwrap().unwrap();
            b.records().iter().map(|r| r.seq).collect::<Vec<_>>()
        });
        std::thread::sleep(Duration::from_millis(50));
        spool.append(&[rec(7, b"{}")]).unwrap();
        spool.commit().unwrap();
        assert_eq!(t.join().unwrap(), [7]);
        spool.close();
        let b = spool.read(4096, Duration::from_secs(10)).unwrap().unwrap();
        assert_eq!(b.records()[0].seq, 7, "not acked: read again");
        spool.ack(b.position_after(1).unwrap(), 1);
        assert!(spool.read(4096, Duration::from_secs(10)).unwrap().is_none());
    }
}

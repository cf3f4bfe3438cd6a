//! The event sequence outlives the daemon: `seq` keeps increasing across
//! restarts with the same state directory, so receivers can tell a gap from
//! a restart, and an id built from `seq` (NATS message ids) never names two
//! events.
//!
//! `<state-dir>/seq` holds a number no event has reached yet. A running
//! daemon keeps it a reservation ahead of its sequence; a clean stop writes
//! the exact next value. After a crash the next daemon starts at the
//! reservation: the gap says events may have been lost, and no seq repeats.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

/// How far ahead of the sequence the file is kept.
const RESERVE: u64 = 1 << 20;

/// The persisted high-water mark of one state directory.
#[derive(Debug)]
pub struct SeqFile {
    path: PathBuf,
    /// What the file says now.
    mark: u64,
}

impl SeqFile {
    /// Reads the mark (1 when the file is absent or unreadable: warned).
    #[must_use]
    pub fn open(state_dir: &Path) -> Self {
        let path = state_dir.join(crate::paths::SEQ_FILE);
        let mark = match fs::read_to_string(&path) {
            Ok(text) => text.trim().parse().unwrap_or_else(|_| {
                tracing::warn!(file = %path.display(), "unreadable sequence file; numbering from 1");
                1
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => 1,
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot read the sequence file; numbering from 1");
                1
            }
        };
        Self { path, mark }
    }

    /// The first seq this daemon may use.
    #[must_use]
    pub const fn start(&self) -> u64 {
        self.mark
    }

    /// Keeps the mark a reservation ahead of `next` (the next seq to use).
    pub fn keep_ahead(&mut self, next: u64) {
        if next.saturating_add(RESERVE / 2) > self.mark {
            self.write(next.saturating_add(RESERVE));
        }
    }

    /// A clean stop: the next daemon continues exactly at `next`.
    pub fn stop_at(&mut self, next: u64) {
        self.write(next);
    }

    fn write(&mut self, mark: u64) {
        let tmp = self.path.with_extension("tmp");
        match fs::write(&tmp, format!("{mark}\n")).and_then(|()| fs::rename(&tmp, &self.path)) {
            Ok(()) => self.mark = mark,
            Err(e) => {
                tracing::error!(file = %self.path.display(), error = %e, "cannot save the event sequence; a restart may repeat seq numbers");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn continues_exactly_after_a_clean_stop_and_past_the_reservation_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let mut f = SeqFile::open(dir.path());
        assert_eq!(f.start(), 1);
        f.keep_ahead(1);
        f.keep_ahead(500);
        // Crash: the file still holds the reservation.
        let crashed = SeqFile::open(dir.path());
        assert_eq!(crashed.start(), 1 + RESERVE);
        let mut f = crashed;
        f.keep_ahead(RESERVE + 10);
        f.stop_at(RESERVE + 42);
        assert_eq!(SeqFile::open(dir.path()).start(), RESERVE + 42);
    }
}

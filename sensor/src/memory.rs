//! Giving freed memory back to the system.
//!
//! glibc's allocator keeps what a thread freed in its arena for the next
//! allocation: after an exit storm (100,000 `process.exit` events queued
//! and written) the daemon's heap stayed at 300 MB although nearly all of
//! it was free. `malloc_trim(0)` returns the free pages of every arena
//! (`MADV_DONTNEED`); [`Trim`] says when: after a busy spell, at most
//! every [`TRIM_EVERY`], or when a table gave back its room.

use std::time::{Duration, Instant};

/// Events handled since the last trim that make the next one due.
pub const TRIM_AFTER_EVENTS: u64 = 4096;
/// Trims are this far apart at least.
pub const TRIM_EVERY: Duration = Duration::from_secs(5);
/// After a quiet spell with a few events, a trim comes this long after the last.
pub const TRIM_IDLE: Duration = Duration::from_secs(60);

/// When to trim.
#[derive(Debug)]
pub struct Trim {
    events: u64,
    shrunk: bool,
    last: Instant,
    /// Trims done (for tests and logs).
    pub done: u64,
}

impl Default for Trim {
    fn default() -> Self {
        Self::new(Instant::now())
    }
}

impl Trim {
    #[must_use]
    pub const fn new(now: Instant) -> Self {
        Self {
            events: 0,
            shrunk: false,
            last: now,
            done: 0,
        }
    }

    /// `n` more events were handed on (their memory freed once written).
    pub const fn handled(&mut self, n: usize) {
        self.events = self.events.saturating_add(n as u64);
    }

    /// A table gave back its room.
    pub const fn shrunk(&mut self) {
        self.shrunk = true;
    }

    /// Whether to trim now, with `waiting` events still queued for the
    /// consumers (their memory is not free yet: wait for them).
    #[must_use]
    pub fn due(&self, waiting: u64, now: Instant) -> bool {
        let since = now.saturating_duration_since(self.last);
        waiting < crate::sinks::backlog::HOLD_EVENTS
            && since >= TRIM_EVERY
            && (self.events >= TRIM_AFTER_EVENTS
                || self.shrunk
                || (self.events > 0 && since >= TRIM_IDLE))
    }

    /// Trims if due ([`Trim::due`]); whether it did.
    pub fn maybe(&mut self, waiting: u64, now: Instant) -> bool {
        if !self.due(waiting, now) {
            return false;
        }
        self.now(now);
        true
    }

    /// Trims now.
    pub fn now(&mut self, now: Instant) {
        let started = Instant::now();
        let released = release();
        tracing::debug!(
            events = self.events,
            shrunk = self.shrunk,
            released,
            took_us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
            "returned free memory to the system"
        );
        self.events = 0;
        self.shrunk = false;
        self.last = now;
        self.done += 1;
    }
}

/// Returns the allocator's free pages to the system; whether any were.
#[must_use]
pub fn release() -> bool {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: malloc_trim takes no pointers; it only walks and releases
        // glibc's own free lists, under its arena locks.
        unsafe { nix::libc::malloc_trim(0) == 1 }
    }
    #[cfg(not(target_env = "gnu"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_after_a_busy_spell_once_the_queues_drained() {
        let t0 = Instant::now();
        let mut t = Trim::new(t0);
        let later = t0 + TRIM_EVERY;
        assert!(!t.due(0, later), "nothing happened");
        t.handled(TRIM_AFTER_EVENTS as usize);
        assert!(!t.due(0, t0 + Duration::from_secs(1)), "too soon");
        assert!(
            !t.due(crate::sinks::backlog::HOLD_EVENTS, later),
            "still queued"
        );
        assert!(t.maybe(0, later));
        assert_eq!(t.done, 1);
        assert!(!t.due(0, later + TRIM_EVERY), "nothing since");
        t.shrunk();
        assert!(t.due(0, later + TRIM_EVERY));
        t.now(later + TRIM_EVERY);
        t.handled(1);
        assert!(!t.due(0, later + TRIM_EVERY * 2), "a few events: later");
        assert!(t.due(0, later + TRIM_EVERY + TRIM_IDLE));
    }

    #[test]
    fn release_gives_back_a_freed_heap() {
        // Many small blocks (below the mmap threshold, so on the heap),
        // freed but the last: the free pages in the middle go back.
        let rss = || {
            std::fs::read_to_string("/proc/self/statm")
                .ok()
                .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        let mut blocks: Vec<Vec<u8>> = (0..64 * 1024).map(|i| vec![i as u8; 1000]).collect();
        let keep = blocks.pop();
        let before = rss();
        drop(blocks);
        let _ = release();
        let after = rss();
        drop(keep);
        if cfg!(target_env = "gnu") {
            // 64 MiB freed; other tests' threads allocate meanwhile.
            assert!(
                after + 8 * 1024 < before,
                "resident pages {before} -> {after}"
            );
        }
    }
}

//! How many events wait in one consumer's queue (an output, the store, the
//! detection thread), and how the pipeline holds back while one is behind.
//!
//! A queued event costs memory until every consumer has taken its batch
//! (an `Event` is about 2 KiB, with its strings and JSON line near 3 KiB):
//! an exit storm of 100,000 processes queued for a store that writes
//! 90,000 rows a second held 260 MB. So each queue is bounded in events
//! ([`QUEUE_EVENTS`]; past it the batch is dropped, counted), and the
//! pipeline stops reading the kernel's ring while a consumer that is still
//! taking batches has more than [`HOLD_EVENTS`] waiting ([`Pressure`]): the
//! records wait in the ring (a fixed 16 MiB the kernel allocated at load),
//! and the kernel counts what does not fit (`sensor.lost`). A consumer that
//! took nothing for [`STALLED_AFTER`] (a hung file system, a stuck disk)
//! does not hold the reader: its queue fills and drops, counted, and the
//! other consumers go on.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

/// Events one consumer's queue may hold; a batch past it is dropped (counted).
pub const QUEUE_EVENTS: u64 = 8192;
/// The pipeline stops reading the ring while a consumer has more than this
/// many events waiting (and is taking them).
pub const HOLD_EVENTS: u64 = 2048;
/// A consumer that took nothing for this long no longer holds the reader.
pub const STALLED_AFTER: Duration = Duration::from_secs(2);

/// Events queued for one consumer and not yet taken.
#[derive(Debug, Default)]
pub struct Backlog {
    queued: AtomicU64,
    taken: AtomicU64,
}

impl Backlog {
    /// Whether `n` more events fit in the queue ([`QUEUE_EVENTS`]); an
    /// empty queue takes any one batch (the producer holds it already).
    #[must_use]
    pub fn has_room(&self, n: usize) -> bool {
        let waiting = self.waiting();
        waiting == 0 || waiting + n as u64 <= QUEUE_EVENTS
    }

    /// The producer queued `n` events.
    pub fn queued(&self, n: usize) {
        self.queued.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The consumer took `n` events off the queue.
    pub fn took(&self, n: usize) {
        self.taken.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Events queued and not yet taken.
    #[must_use]
    pub fn waiting(&self) -> u64 {
        // Taken is read first: a take between the two loads only makes
        // `queued` look larger, never the difference negative.
        let taken = self.taken.load(Ordering::Relaxed);
        self.queued.load(Ordering::Relaxed).saturating_sub(taken)
    }

    /// Events taken so far (moves while the consumer works).
    #[must_use]
    pub fn taken(&self) -> u64 {
        self.taken.load(Ordering::Relaxed)
    }
}

/// The pipeline's view of every consumer's backlog: whether to hold back.
#[derive(Debug, Default)]
pub struct Pressure {
    watched: Vec<Watched>,
    /// Times [`Pressure::holding`] said to hold (for status and tests).
    holds: u64,
    /// The most events any consumer had waiting since the last
    /// [`Pressure::take_peak`].
    peak: u64,
}

#[derive(Debug)]
struct Watched {
    backlog: Arc<Backlog>,
    /// `taken` when it last moved, and when.
    taken: u64,
    moved: Instant,
}

impl Pressure {
    pub fn watch(&mut self, backlog: Arc<Backlog>) {
        self.watched.push(Watched {
            taken: backlog.taken(),
            backlog,
            moved: Instant::now(),
        });
    }

    /// Whether the reader should leave the ring alone for now: some
    /// consumer has more than [`HOLD_EVENTS`] waiting and took some within
    /// [`STALLED_AFTER`].
    pub fn holding(&mut self) -> bool {
        self.holding_at(Instant::now())
    }

    fn holding_at(&mut self, now: Instant) -> bool {
        let mut hold = false;
        for w in &mut self.watched {
            let waiting = w.backlog.waiting();
            self.peak = self.peak.max(waiting);
            let taken = w.backlog.taken();
            if taken != w.taken {
                w.taken = taken;
                w.moved = now;
            }
            if waiting > HOLD_EVENTS {
                // A stalled consumer's queue drops instead (counted).
                hold |= now.saturating_duration_since(w.moved) < STALLED_AFTER;
            } else {
                // Not behind: its stall clock starts when it next falls behind.
                w.moved = now;
            }
        }
        self.holds += u64::from(hold);
        hold
    }

    /// Times the reader was told to hold.
    #[must_use]
    pub const fn holds(&self) -> u64 {
        self.holds
    }

    /// The most events any consumer had waiting since the last call.
    pub fn take_peak(&mut self) -> u64 {
        let peak = self
            .watched
            .iter()
            .map(|w| w.backlog.waiting())
            .fold(self.peak, u64::max);
        self.peak = 0;
        peak
    }

    /// Events waiting, summed over the consumers.
    #[must_use]
    pub fn waiting(&self) -> u64 {
        self.watched.iter().map(|w| w.backlog.waiting()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_events() {
        let b = Backlog::default();
        assert!(
            b.has_room(QUEUE_EVENTS as usize * 10),
            "empty: any one batch"
        );
        b.queued(QUEUE_EVENTS as usize - 10);
        assert!(b.has_room(10));
        assert!(!b.has_room(11));
        b.took(100);
        assert_eq!(b.waiting(), QUEUE_EVENTS - 110);
        assert!(b.has_room(110));
    }

    #[test]
    fn holds_while_a_moving_consumer_is_behind_not_a_stalled_one() {
        let slow = Arc::new(Backlog::default());
        let mut p = Pressure::default();
        p.watch(Arc::clone(&slow));
        let t0 = Instant::now();
        assert!(!p.holding_at(t0), "nothing waiting");
        slow.queued(HOLD_EVENTS as usize + 1);
        assert!(p.holding_at(t0), "behind");
        // It keeps taking: the hold lasts past the stall time.
        slow.took(1);
        slow.queued(1);
        assert!(p.holding_at(t0 + STALLED_AFTER + Duration::from_millis(1)));
        // It takes nothing for the stall time: the reader goes on.
        assert!(!p.holding_at(t0 + STALLED_AFTER * 2 + Duration::from_millis(2)));
        // It catches up: no hold, and the next fall behind holds again.
        slow.took(HOLD_EVENTS as usize);
        let t1 = t0 + STALLED_AFTER * 3;
        assert!(!p.holding_at(t1));
        slow.queued(HOLD_EVENTS as usize + 5);
        assert!(p.holding_at(t1 + Duration::from_millis(1)));
        assert_eq!(p.holds(), 3);
        assert_eq!(p.take_peak(), HOLD_EVENTS + 6);
    }
}

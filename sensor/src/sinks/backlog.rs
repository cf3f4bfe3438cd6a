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

//!
//! The backlog is also the consumer's doorbell ([`Backlog::recv`]): the
//! consumer parks instead of blocking on its channel, and the pipeline wakes
//! it once per drain of the ring ([`Backlog::ring`], from the pipeline's
//! flush), or mid-drain once [`WAKE_EVENTS`] wait, not once per batch sent.
//! A consumer that gathers ([`Wait::Gather`], the store within a
//! transaction) is woken only when [`GATHER_EVENTS`] wait, or by its own
//! deadline. Each wake-up of a consumer is a context switch, and on a busy
//! host a preemption of the workload the sensor watches.

use std::{
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, TrySendError},
    },
    thread::Thread,
    time::{Duration, Instant},
};

/// Events one consumer's queue may hold; a batch past it is dropped (counted).
pub const QUEUE_EVENTS: u64 = 8192;
/// The pipeline stops reading the ring while a consumer has more than this
/// many events waiting (and is taking them).
pub const HOLD_EVENTS: u64 = 2048;
/// A consumer that took nothing for this long no longer holds the reader.
pub const STALLED_AFTER: Duration = Duration::from_secs(2);

/// A parked consumer is woken mid-drain once this many events wait for it
/// (a long drain of the ring hands off several batches before its flush).
pub const WAKE_EVENTS: u64 = 512;
/// A consumer gathering ([`Wait::Gather`]) is woken before its deadline once
/// this many events wait: well below [`HOLD_EVENTS`], so a gathering
/// consumer never holds the reader back.
pub const GATHER_EVENTS: u64 = 1024;

/// What a parked consumer waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Wait {
    /// Any batch: woken by the pipeline's next flush (or [`WAKE_EVENTS`]).
    Any = 1,
    /// [`GATHER_EVENTS`] events, or the deadline: the store within a
    /// transaction, which commits at its deadline anyway.
    Gather = 2,
}

/// `Backlog::waits` when the consumer is not parked.
const RUNNING: u8 = 0;

/// Events queued for one consumer and not yet taken, and the consumer's
/// doorbell.
#[derive(Debug, Default)]
pub struct Backlog {
    queued: AtomicU64,
    taken: AtomicU64,
    /// [`RUNNING`], or the [`Wait`] of the parked consumer.
    waits: AtomicU8,
    /// The consumer thread, once it called [`Backlog::recv`].
    consumer: OnceLock<Thread>,
    /// The producer closed the queue ([`Backlog::close`]).
    closed: AtomicBool,
    /// A gathering consumer takes the queue to its end (set when
    /// [`GATHER_EVENTS`] woke it; the consumer's own flag).
    draining: AtomicBool,
}

impl Backlog {
    /// Whether `n` more events fit in the queue ([`QUEUE_EVENTS`]); an
    /// empty queue takes any one batch (the producer holds it already).
    #[must_use]
    pub fn has_room(&self, n: usize) -> bool {
        let waiting = self.waiting();
        waiting == 0 || waiting + n as u64 <= QUEUE_EVENTS
    }

    /// The producer queued `n` events (after sending them): wakes a parked
    /// consumer once enough wait for it ([`WAKE_EVENTS`], [`GATHER_EVENTS`]);
    /// otherwise the next [`Backlog::ring`] does.
    pub fn queued(&self, n: usize) {
        self.queued.fetch_add(n as u64, Ordering::Relaxed);
        self.wake_if(WAKE_EVENTS);
    }

    /// The pipeline's flush: wakes a consumer parked for [`Wait::Any`] if
    /// anything waits for it (a gathering one only past [`GATHER_EVENTS`]).
    pub fn ring(&self) {
        self.wake_if(1);
    }

    /// The producer closes the queue (its [`Sender`] is dropped): wakes the
    /// consumer to take the rest and see the queue closed.
    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        if let Some(t) = self.consumer.get() {
            t.unpark();
        }
    }

    /// Unparks the consumer (once per park) if it waits for any batch and
    /// `any` events wait, or gathers and [`GATHER_EVENTS`] wait.
    fn wake_if(&self, any: u64) {
        // Between the producer's send (and count) and its look at `waits`,
        // as between the consumer's store of `waits` and its look at the
        // queue (and count) in `recv`: either the consumer sees what was
        // sent before it parks, or the producer sees it parked.
        std::sync::atomic::fence(Ordering::SeqCst);
        let parked = self.waits.load(Ordering::Relaxed);
        let wanted = match parked {
            w if w == Wait::Any as u8 => any,
            w if w == Wait::Gather as u8 => GATHER_EVENTS,
            _ => return,
        };
        if self.waiting() >= wanted
            && self
                .waits
                .compare_exchange(parked, RUNNING, Ordering::SeqCst, Ordering::Relaxed)
                .is_ok()
            && let Some(t) = self.consumer.get()
        {
            t.unpark();
        }
    }

    /// The consumer's next item of `rx` (it counts what it took with
    /// [`Backlog::took`] before it asks again).
    ///
    /// With [`Wait::Any`], the next item queued, woken by the pipeline's
    /// next [`Backlog::ring`]; with [`Wait::Gather`], the next item once
    /// [`GATHER_EVENTS`] wait or `deadline` passed (what is queued then
    /// comes one item a call, without parking, until the queue is empty).
    /// `Timeout` once `deadline` passed with nothing queued; `Disconnected`
    /// once the producer dropped its sender and the queue is empty. It parks
    /// at most once per wake-up of the producer or the deadline: never a
    /// spin. Call it from the one consumer thread only.
    pub fn recv<T>(
        &self,
        rx: &Receiver<T>,
        wait: Wait,
        deadline: Option<Instant>,
    ) -> Result<T, RecvTimeoutError> {
        let _ = self.consumer.set(std::thread::current());
        let passed = || deadline.is_some_and(|d| Instant::now() >= d);
        let ready = || match wait {
            Wait::Any => true,
            Wait::Gather => {
                passed() || self.draining.load(Ordering::Relaxed) || self.waiting() >= GATHER_EVENTS
            }
        };
        let take = || match rx.try_recv() {
            Ok(item) => {
                // Gathering, woken: the rest of the queue comes too.
                self.draining.store(wait == Wait::Gather, Ordering::Relaxed);
                Some(Ok(item))
            }
            Err(TryRecvError::Disconnected) => Some(Err(RecvTimeoutError::Disconnected)),
            Err(TryRecvError::Empty) => {
                self.draining.store(false, Ordering::Relaxed);
                passed().then_some(Err(RecvTimeoutError::Timeout))
            }
        };
        loop {
            if self.closed.load(Ordering::SeqCst) {
                // The producer is gone or going: block until its sender is
                // dropped, taking what is left.
                return rx.recv().map_err(|_| RecvTimeoutError::Disconnected);
            }
            if ready()
                && let Some(got) = take()
            {
                return got;
            }
            self.waits.store(wait as u8, Ordering::Relaxed);
            std::sync::atomic::fence(Ordering::SeqCst);
            if ready()
                && let Some(got) = take()
            {
                self.waits.store(RUNNING, Ordering::Relaxed);
                return got;
            }
            match deadline {
                Some(d) => std::thread::park_timeout(d.saturating_duration_since(Instant::now())),
                None => std::thread::park(),
            }
            self.waits.store(RUNNING, Ordering::Relaxed);
        }
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

/// The producer's end of a consumer's queue: the channel's sender and the
/// consumer's [`Backlog`]. Dropping it closes the queue and wakes the
/// consumer, which takes what is left and sees the channel disconnected.
#[derive(Debug)]
pub struct Sender<T> {
    tx: Option<SyncSender<T>>,
    backlog: Arc<Backlog>,
}

impl<T> Sender<T> {
    #[must_use]
    pub const fn new(tx: SyncSender<T>, backlog: Arc<Backlog>) -> Self {
        Self {
            tx: Some(tx),
            backlog,
        }
    }

    /// Queues `item` of `n` events, counted in the backlog; the consumer is
    /// woken by [`Backlog::ring`] or once [`WAKE_EVENTS`] wait.
    pub fn try_send(&self, item: T, n: usize) -> Result<(), TrySendError<T>> {
        match &self.tx {
            Some(tx) => {
                tx.try_send(item)?;
                self.backlog.queued(n);
                Ok(())
            }
            None => Err(TrySendError::Disconnected(item)),
        }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        drop(self.tx.take());
        self.backlog.close();
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

    /// A consumer parked on the doorbell, in a thread: what it received.
    fn consumer(
        backlog: &Arc<Backlog>,
        rx: Receiver<usize>,
        wait: Wait,
        deadline: Option<Instant>,
    ) -> (
        std::thread::JoinHandle<()>,
        Receiver<Result<usize, RecvTimeoutError>>,
    ) {
        let (got_tx, got) = std::sync::mpsc::channel();
        let backlog = Arc::clone(backlog);
        let t = std::thread::spawn(move || {
            loop {
                let r = backlog.recv(&rx, wait, deadline);
                if let Ok(n) = &r {
                    backlog.took(*n);
                }
                let end = r.is_err();
                got_tx.send(r).unwrap();
                if end {
                    break;
                }
            }
        });
        (t, got)
    }

    const QUIET: Duration = Duration::from_millis(100);

    #[test]
    fn a_waiting_consumer_is_woken_by_the_ring_not_by_each_send() {
        let backlog = Arc::new(Backlog::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let tx = Sender::new(tx, Arc::clone(&backlog));
        let (t, got) = consumer(&backlog, rx, Wait::Any, None);
        std::thread::sleep(QUIET);
        tx.try_send(10, 10).unwrap();
        tx.try_send(20, 20).unwrap();
        assert!(got.recv_timeout(QUIET).is_err(), "not woken by a send");
        backlog.ring();
        assert_eq!(got.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(10));
        assert_eq!(got.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(20));
        // A backlog of WAKE_EVENTS wakes it without a ring.
        tx.try_send(WAKE_EVENTS as usize, WAKE_EVENTS as usize)
            .unwrap();
        assert_eq!(
            got.recv_timeout(Duration::from_secs(10)).unwrap(),
            Ok(WAKE_EVENTS as usize)
        );
        // Dropping the sender wakes it to the end.
        tx.try_send(1, 1).unwrap();
        drop(tx);
        assert_eq!(got.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(1));
        assert_eq!(
            got.recv_timeout(Duration::from_secs(10)).unwrap(),
            Err(RecvTimeoutError::Disconnected)
        );
        t.join().unwrap();
    }

    #[test]
    fn a_gathering_consumer_waits_for_enough_events_or_its_deadline() {
        let backlog = Arc::new(Backlog::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let tx = Sender::new(tx, Arc::clone(&backlog));
        let (t, got) = consumer(&backlog, rx, Wait::Gather, None);
        std::thread::sleep(QUIET);
        tx.try_send(100, 100).unwrap();
        backlog.ring();
        assert!(
            got.recv_timeout(QUIET).is_err(),
            "not woken below GATHER_EVENTS"
        );
        let rest = GATHER_EVENTS as usize - 100;
        tx.try_send(rest, rest).unwrap();
        assert_eq!(got.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(100));
        assert_eq!(got.recv_timeout(Duration::from_secs(10)).unwrap(), Ok(rest));
        drop(tx);
        assert_eq!(
            got.recv_timeout(Duration::from_secs(10)).unwrap(),
            Err(RecvTimeoutError::Disconnected)
        );
        t.join().unwrap();

        // With a deadline: what is queued comes when it passes, then Timeout.
        let backlog = Arc::new(Backlog::default());
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let tx = Sender::new(tx, Arc::clone(&backlog));
        tx.try_send(5, 5).unwrap();
        let start = Instant::now();
        let deadline = start + QUIET;
        assert_eq!(backlog.recv(&rx, Wait::Gather, Some(deadline)), Ok(5));
        assert!(start.elapsed() >= QUIET, "taken at the deadline");
        backlog.took(5);
        assert_eq!(
            backlog.recv(&rx, Wait::Gather, Some(deadline)),
            Err(RecvTimeoutError::Timeout)
        );
        drop(tx);
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

//! Detection: Sigma rules evaluated on every event, after attribution and
//! policy, on a thread of its own (never on the kernel reader's).
//!
//! ```text
//! pipeline ── EventBatch ─► detection queue (bounded, try_send) ─► [detect thread]
//!    ▲                                                               │ rules (swappable)
//!    └──────────── Match (bounded, try_send) ◄───────────────────────┘
//! pipeline: Match ─► engine (seq, envelope) ─► `detection` event ─► outputs, store
//! ```
//!
//! The detection thread never numbers events: a match goes back to the
//! pipeline, whose engine gives the `detection` event its seq, so that the
//! sequence stays one. A full queue either way drops, counted.

pub mod correlation;
pub mod exec_file;
pub mod first_seen;
pub mod rules;
pub mod typed;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError},
    },
    thread::JoinHandle,
};

pub use self::{
    correlation::Correlator,
    first_seen::FirstSeen,
    rules::{LoadedRule, RuleError, RuleInfo, RuleSet, Rules},
};
use crate::{
    event::{Detection, Event, Kind, RunRef},
    sinks::{Backlog, EventBatch},
};

/// Batches waiting for the detection thread, at most. The queue is bounded
/// in events too: 256 batches of up to 128 events were 32,768 events (near
/// 3 KiB each with their strings and JSON line); past
/// [`crate::sinks::backlog::QUEUE_EVENTS`] waiting, a batch is dropped
/// (counted in `batches_dropped`).
const QUEUE_BATCHES: usize = 256;
/// Matches waiting for the pipeline, at most.
const MATCHES_QUEUED: usize = 4096;

/// What a rule matched: enough for the engine to make the `detection` event
/// (its `detection` object, and the matched event's run).
#[derive(Debug, Clone)]
pub struct Match {
    pub detection: Detection,
    pub run: Option<RunRef>,
}

impl Match {
    #[must_use]
    pub fn of(rule: &RuleInfo, event: &Event) -> Self {
        Self {
            detection: Detection {
                rule_id: rule.id.clone(),
                title: rule.title.clone(),
                level: rule.level,
                tags: rule.tags.clone(),
                rule_file: rule.file.clone(),
                event_seq: event.seq,
                event_kind: event.kind,
                process_key: event.process.as_ref().map(|p| p.key.clone()),
            },
            run: event.run.clone(),
        }
    }
}

/// The detection thread's counters.
#[derive(Debug, Default)]
pub struct DetectStats {
    /// Events evaluated.
    pub evaluated: AtomicU64,
    /// Batches dropped: the detection queue was full.
    pub batches_dropped: AtomicU64,
    /// Matches dropped: the pipeline's queue was full.
    pub matches_dropped: AtomicU64,
    /// Batches whose evaluation panicked (a bug; caught).
    pub panics: AtomicU64,
}

/// The pipeline's end of the detection thread.
pub struct Detector {
    tx: Option<SyncSender<EventBatch>>,
    /// Events queued and not yet taken by the thread.
    backlog: Arc<Backlog>,
    rules: Rules,
    stats: Arc<DetectStats>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector").finish_non_exhaustive()
    }
}

impl Detector {
    /// Starts the detection thread on `rules`; its matches come out of the
    /// returned receiver.
    pub fn start(rules: Rules) -> std::io::Result<(Self, tokio::sync::mpsc::Receiver<Match>)> {
        Self::start_with(rules, FirstSeen::default())
    }

    /// [`Detector::start`], with the first-seen rules' state `seen` (kept
    /// in the state dir by the daemon: see `first_seen.rs`).
    pub fn start_with(
        rules: Rules,
        seen: FirstSeen,
    ) -> std::io::Result<(Self, tokio::sync::mpsc::Receiver<Match>)> {
        let (tx, rx) = std::sync::mpsc::sync_channel::<EventBatch>(QUEUE_BATCHES);
        let (mtx, mrx) = tokio::sync::mpsc::channel(MATCHES_QUEUED);
        let stats = Arc::new(DetectStats::default());
        let backlog = Arc::new(Backlog::default());
        let thread = {
            let rules = rules.clone();
            let stats = Arc::clone(&stats);
            let backlog = Arc::clone(&backlog);
            std::thread::Builder::new()
                .name("detect".into())
                .spawn(move || {
                    crate::sched::batch_worker("detect");
                    detect_loop(&rx, &backlog, &rules, &mtx, &stats, seen);
                })?
        };
        Ok((
            Self {
                tx: Some(tx),
                backlog,
                rules,
                stats,
                thread: Some(thread),
            },
            mrx,
        ))
    }

    /// Hands a batch to the detection thread (dropped, counted, when it
    /// is behind: its queue is full in batches or in events).
    pub fn send(&self, batch: &EventBatch) {
        let Some(tx) = &self.tx else { return };
        if self.rules.current().is_empty() {
            return;
        }
        if !self.backlog.has_room(batch.len()) {
            self.stats.batches_dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match tx.try_send(batch.clone()) {
            Ok(()) => self.backlog.queued(batch.len()),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.batches_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// The detection queue's backlog, in events.
    #[must_use]
    pub fn backlog(&self) -> &Arc<Backlog> {
        &self.backlog
    }

    #[must_use]
    pub fn rules(&self) -> &Rules {
        &self.rules
    }

    #[must_use]
    pub fn stats(&self) -> &Arc<DetectStats> {
        &self.stats
    }

    /// Lets the thread finish the batches queued, and waits for it.
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Detector {
    fn drop(&mut self) {
        self.close();
    }
}

fn detect_loop(
    rx: &Receiver<EventBatch>,
    backlog: &Backlog,
    rules: &Rules,
    out: &tokio::sync::mpsc::Sender<Match>,
    stats: &DetectStats,
    seen: FirstSeen,
) {
    let mut set = rules.current();
    let mut state = Correlator::with_seen(seen);
    loop {
        // A timeout only while first-seen changes wait to be written (until
        // they are due): an idle daemon's detection thread sleeps until the
        // next batch.
        let next = match state.seen.due_in() {
            Some(due) => rx.recv_timeout(due),
            None => rx.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        let batch = match next {
            Ok(batch) => {
                backlog.took(batch.len());
                batch
            }
            Err(RecvTimeoutError::Timeout) => {
                state.seen.flush_if_due();
                continue;
            }
            Err(RecvTimeoutError::Disconnected) => break,
        };
        let current = rules.current();
        if !Arc::ptr_eq(&current, &set) {
            // A reload: the correlations count afresh; what the first-seen
            // rules saw stays.
            set = current;
            state = Correlator::with_seen(std::mem::take(&mut state.seen));
        }
        let done = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            for event in batch.events() {
                for m in evaluate(&set, &mut state, event) {
                    if out.try_send(m).is_err() {
                        stats.matches_dropped.fetch_add(1, Ordering::Relaxed);
                    }
                }
                stats.evaluated.fetch_add(1, Ordering::Relaxed);
            }
        }));
        if done.is_err() {
            stats.panics.fetch_add(1, Ordering::Relaxed);
        }
        state.seen.flush_if_due();
    }
    state.seen.flush();
}

/// The matches of one event (none for a `detection` event: rules do not
/// fire on their own findings).
#[must_use]
pub fn evaluate(set: &RuleSet, state: &mut Correlator, event: &Event) -> Vec<Match> {
    if event.kind == Kind::Detection || !set.applies(event.kind) {
        return Vec::new();
    }
    set.evaluate_event(state, event)
        .into_iter()
        .map(|rule| Match::of(rule, event))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sinks::{backlog::QUEUE_EVENTS, tests::batch_of};

    const EXEC: &str = "title: exec\nid: exec\nlogsource:\n  product: agent-sensor\n  category: process_creation\ndetection:\n  s:\n    process.pid|exists: true\n  condition: s\n";

    #[test]
    fn the_queue_is_bounded_in_events() {
        let rule = match rules::parse_any(EXEC, std::path::Path::new("t.yml")).unwrap() {
            rules::Loaded::Rule(r) => *r,
            rules::Loaded::Correlation(_) => panic!("not a rule"),
        };
        let (mut detector, _matches) =
            Detector::start(Rules::new(RuleSet::of(vec![rule]))).unwrap();
        let batch = batch_of(&[(1, Kind::ProcessExec, false), (2, Kind::ProcessExec, false)]);
        detector.send(&batch);
        let backlog = Arc::clone(detector.backlog());
        while backlog.waiting() > 0 {
            std::thread::yield_now();
        }
        // A thread behind by as many events as the bound allows (far fewer
        // than 256 batches): the next batch is dropped, counted.
        backlog.queued(QUEUE_EVENTS as usize - 1);
        detector.send(&batch);
        assert_eq!(detector.stats().batches_dropped.load(Ordering::Relaxed), 1);
        backlog.took(QUEUE_EVENTS as usize - 1);
        detector.send(&batch);
        detector.close();
        assert_eq!(detector.stats().batches_dropped.load(Ordering::Relaxed), 1);
        assert_eq!(detector.stats().evaluated.load(Ordering::Relaxed), 4);
        assert_eq!(backlog.waiting(), 0, "every batch taken is counted off");
    }
}

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
    sinks::EventBatch,
};

/// Batches waiting for the detection thread, at most.
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
        let thread = {
            let rules = rules.clone();
            let stats = Arc::clone(&stats);
            std::thread::Builder::new()
                .name("detect".into())
                .spawn(move || {
                    crate::sched::batch_worker("detect");
                    detect_loop(&rx, &rules, &mtx, &stats, seen);
                })?
        };
        Ok((
            Self {
                tx: Some(tx),
                rules,
                stats,
                thread: Some(thread),
            },
            mrx,
        ))
    }

    /// Hands a batch to the detection thread (dropped, counted, when it
    /// is behind).
    pub fn send(&self, batch: &EventBatch) {
        let Some(tx) = &self.tx else { return };
        if self.rules.current().is_empty() {
            return;
        }
        match tx.try_send(batch.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.stats.batches_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
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
            Ok(batch) => batch,
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
    let Ok(value) = set.json_form(event.kind, event) else {
        return Vec::new();
    };
    set.evaluate(state, event.kind, &value)
        .into_iter()
        .map(|rule| Match::of(rule, event))
        .collect()
}

//! The batch the pipeline hands to every output and the store: typed
//! events, shared, and their JSON lines, made once by the first consumer
//! that needs them (every JSON output and the store's `body` column take
//! the same bytes; an OCSF output never asks for them).

use std::{
    ops::Range,
    sync::{Arc, Mutex, OnceLock, Weak},
};

use crate::{
    event::{Event, json::write_json_line},
    provenance::{Chainer, chain::Hash},
};

/// Events of one pipeline batch; cloning shares them.
#[derive(Debug, Clone)]
pub struct EventBatch(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    events: Vec<Event>,
    /// Where `events`, emptied, goes when the batch is dropped.
    recycler: Option<Recycler>,
    json: OnceLock<JsonLines>,
    /// Chains the lines of run events (`provenance`).
    chainer: Option<Arc<Chainer>>,
    /// The batch made before this one, while its lines are not made: they
    /// are made first, so that chains follow the order events were made in.
    before: Mutex<Weak<Inner>>,
}

/// The JSON lines of a batch's events, back to back.
#[derive(Debug)]
pub struct JsonLines {
    bytes: Arc<Vec<u8>>,
    /// Per event, its line in `bytes` (newline included); `None` for an
    /// event that could not be encoded.
    lines: Vec<Option<Range<usize>>>,
    /// Per event of a run, its chain value.
    chains: Vec<Option<Hash>>,
    encoded: usize,
}

impl EventBatch {
    #[must_use]
    pub fn new(events: Vec<Event>) -> Self {
        Self(Arc::new(Inner {
            events,
            recycler: None,
            json: OnceLock::new(),
            chainer: None,
            before: Mutex::new(Weak::new()),
        }))
    }

    /// A batch whose run events are chained by `chainer`, made after
    /// `before` (whose lines are made first).
    #[must_use]
    pub fn chained(events: Vec<Event>, chainer: &Arc<Chainer>, before: Option<&Self>) -> Self {
        Self(Arc::new(Inner {
            events,
            recycler: None,
            json: OnceLock::new(),
            chainer: Some(Arc::clone(chainer)),
            before: Mutex::new(before.map_or_else(Weak::new, |b| Arc::downgrade(&b.0))),
        }))
    }

    /// The batch gives its emptied event vector to `recycler` when the
    /// last of its holders drops it.
    #[must_use]
    pub fn recycled_by(self, recycler: &Recycler) -> Self {
        match Arc::try_unwrap(self.0) {
            Ok(mut inner) => {
                inner.recycler = Some(recycler.clone());
                Self(Arc::new(inner))
            }
            // Shared already: it stays as it is (not recycled).
            Err(shared) => Self(shared),
        }
    }

    #[must_use]
    pub fn events(&self) -> &[Event] {
        &self.0.events
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.0.events.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.events.is_empty()
    }

    /// The events' JSON lines: encoded by the first caller, shared after.
    pub fn json(&self) -> &JsonLines {
        if let Some(lines) = self.0.json.get() {
            return lines;
        }
        if self.0.chainer.is_some() {
            // The earlier batches still alive without lines, oldest first
            // (a loop, not recursion: each finds its predecessor done).
            // The link stays locked until they are done: a second thread
            // asking for this batch's lines waits here, not in line.
            let mut link = self
                .0
                .before
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let mut waiting = Vec::new();
            let mut at = std::mem::take(&mut *link).upgrade();
            while let Some(inner) = at {
                if inner.json.get().is_some() {
                    break;
                }
                at = take_before(&inner);
                waiting.push(inner);
            }
            for inner in waiting.into_iter().rev() {
                Self(inner).json();
            }
            drop(link);
        }
        self.0
            .json
            .get_or_init(|| JsonLines::of(&self.0.events, self.0.chainer.as_deref()))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(recycler) = &self.recycler {
            recycler.give(std::mem::take(&mut self.events));
        }
    }
}

/// How many emptied event vectors a [`Recycler`] keeps.
const RECYCLED_KEPT: usize = 4;

/// Event vectors of dropped batches, emptied, for the next batches: a
/// batch's vector is large (an event is several hundred bytes inline), and
/// allocating one per batch and freeing it on another thread made glibc
/// consolidate its heap over and over under a storm.
#[derive(Debug, Clone, Default)]
pub struct Recycler(Arc<Mutex<Vec<Vec<Event>>>>);

impl Recycler {
    /// An empty vector with room for `capacity` events: a recycled one
    /// when there is one.
    #[must_use]
    pub fn take(&self, capacity: usize) -> Vec<Event> {
        let recycled = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .pop();
        match recycled {
            Some(mut events) => {
                events.reserve(capacity);
                events
            }
            None => Vec::with_capacity(capacity),
        }
    }

    /// Keeps `events` (emptied here, outside the lock) for a later batch,
    /// unless enough are kept.
    fn give(&self, mut events: Vec<Event>) {
        events.clear();
        if events.capacity() == 0 {
            return;
        }
        let mut kept = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if kept.len() < RECYCLED_KEPT {
            kept.push(events);
        }
    }
}

/// The batch before `inner`, if it is still alive; forgets the link.
fn take_before(inner: &Inner) -> Option<Arc<Inner>> {
    std::mem::take(
        &mut *inner
            .before
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    )
    .upgrade()
}

impl JsonLines {
    fn of(events: &[Event], chainer: Option<&Chainer>) -> Self {
        let mut bytes = Vec::with_capacity(events.len() * 512);
        let mut lines = Vec::with_capacity(events.len());
        let mut chains = Vec::new();
        let mut encoded = 0;
        if let Some(chainer) = chainer {
            chains.reserve(events.len());
            chainer.write_lines(events, &mut bytes, |range, chain| {
                encoded += usize::from(range.is_some());
                lines.push(range);
                chains.push(chain);
            });
            return Self {
                bytes: Arc::new(bytes),
                lines,
                chains,
                encoded,
            };
        }
        for event in events {
            let begin = bytes.len();
            if write_json_line(event, &mut bytes).is_ok() {
                lines.push(Some(begin..bytes.len()));
                encoded += 1;
            } else {
                tracing::debug!(seq = event.seq, "cannot encode an event as JSON; skipped");
                bytes.truncate(begin);
                lines.push(None);
            }
        }
        Self {
            bytes: Arc::new(bytes),
            lines,
            chains,
            encoded,
        }
    }

    /// Event `i`'s chain value (events of a run, when chained).
    #[must_use]
    pub fn chain(&self, i: usize) -> Option<Hash> {
        self.chains.get(i).copied().flatten()
    }

    /// Every line, back to back.
    #[must_use]
    pub fn bytes(&self) -> &Arc<Vec<u8>> {
        &self.bytes
    }

    /// How many events have a line.
    #[must_use]
    pub const fn encoded(&self) -> usize {
        self.encoded
    }

    /// Where event `i`'s line is in [`Self::bytes`] (newline included).
    #[must_use]
    pub fn range(&self, i: usize) -> Option<Range<usize>> {
        self.lines.get(i).cloned().flatten()
    }

    /// Event `i`'s line, newline included.
    #[must_use]
    pub fn line(&self, i: usize) -> Option<&[u8]> {
        self.range(i).and_then(|r| self.bytes.get(r))
    }
}

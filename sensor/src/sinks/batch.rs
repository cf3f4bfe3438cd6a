//! The batch the pipeline hands to every output and the store: typed
//! events, shared, and their JSON lines, made once by the first consumer
//! that needs them (every JSON output and the store's `body` column take
//! the same bytes; an OCSF output never asks for them).

use std::{
    ops::Range,
    sync::{Arc, OnceLock},
};

use crate::event::{Event, json::write_json_line};

/// Events of one pipeline batch; cloning shares them.
#[derive(Debug, Clone)]
pub struct EventBatch(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    events: Vec<Event>,
    json: OnceLock<JsonLines>,
}

/// The JSON lines of a batch's events, back to back.
#[derive(Debug)]
pub struct JsonLines {
    bytes: Arc<Vec<u8>>,
    /// Per event, its line in `bytes` (newline included); `None` for an
    /// event that could not be encoded.
    lines: Vec<Option<Range<usize>>>,
    encoded: usize,
}

impl EventBatch {
    #[must_use]
    pub fn new(events: Vec<Event>) -> Self {
        Self(Arc::new(Inner {
            events,
            json: OnceLock::new(),
        }))
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
        self.0.json.get_or_init(|| JsonLines::of(&self.0.events))
    }
}

impl JsonLines {
    fn of(events: &[Event]) -> Self {
        let mut bytes = Vec::with_capacity(events.len() * 512);
        let mut lines = Vec::with_capacity(events.len());
        let mut encoded = 0;
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
            encoded,
        }
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

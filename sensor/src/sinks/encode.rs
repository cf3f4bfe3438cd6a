//! Per output: which events pass its filter, and their bytes in its format.

use super::{Batch, Format, Line, OutputSpec, transport::Record};
use crate::event::Kind;

/// An output's filter and format.
#[derive(Debug, Clone)]
pub struct Selector {
    /// Bit `Kind::index()` set: the kind passes (all set when unfiltered).
    kinds: u32,
    runs_only: bool,
    format: Format,
}

impl Selector {
    #[must_use]
    pub fn new(spec: &OutputSpec) -> Self {
        let kinds = spec.kinds.as_ref().map_or(u32::MAX, |kinds| {
            kinds.iter().fold(0, |bits, k| bits | 1 << k.index())
        });
        Self {
            kinds,
            runs_only: spec.runs_only,
            format: spec.format,
        }
    }

    /// Every line passes unchanged: the batch's bytes can be written as they are.
    #[must_use]
    pub const fn passes_all(&self) -> bool {
        self.kinds == u32::MAX && !self.runs_only && matches!(self.format, Format::Json)
    }

    fn passes(&self, line: &Line) -> bool {
        self.kinds & (1 << line.kind.index()) != 0 && (line.in_run || !self.runs_only)
    }

    /// Appends `bytes` in this output's format to `out` (no newline);
    /// false when it cannot be encoded (counted by the caller as failed).
    fn encode_one(&self, bytes: &[u8], out: &mut Vec<u8>) -> bool {
        match self.format {
            Format::Json => {
                out.extend_from_slice(bytes);
                true
            }
            Format::Ocsf => {
                let start = out.len();
                let ok = serde_json::from_slice::<serde_json::Value>(bytes)
                    .and_then(|event| super::ocsf::encode(&event, out))
                    .is_ok();
                if !ok {
                    out.truncate(start);
                }
                ok
            }
        }
    }

    /// The lines that pass, encoded, newline-terminated; returns how many.
    pub fn encode_lines(&self, batch: &Batch, out: &mut Vec<u8>) -> u64 {
        let mut n = 0;
        for (line, bytes) in batch.iter() {
            if self.passes(line) && self.encode_one(bytes, out) {
                out.push(b'\n');
                n += 1;
            }
        }
        n
    }

    /// The lines that pass, encoded, as spool records.
    pub fn encode_records(&self, batch: &Batch, out: &mut Encoded) {
        out.clear();
        for (line, bytes) in batch.iter() {
            if !self.passes(line) {
                continue;
            }
            let start = out.buf.len();
            if self.encode_one(bytes, &mut out.buf) {
                out.items
                    .push((line.seq, line.time_ns, line.kind, start..out.buf.len()));
            }
        }
    }
}

/// Encoded events of one batch, ready for the spool.
#[derive(Debug, Default)]
pub struct Encoded {
    buf: Vec<u8>,
    items: Vec<(u64, i64, Kind, std::ops::Range<usize>)>,
}

impl Encoded {
    fn clear(&mut self) {
        self.buf.clear();
        self.items.clear();
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    #[must_use]
    pub fn records(&self) -> Vec<Record<'_>> {
        self.items
            .iter()
            .map(|(seq, time_ns, kind, range)| Record {
                seq: *seq,
                time_ns: *time_ns,
                kind: kind.as_str(),
                payload: self.buf.get(range.clone()).unwrap_or_default(),
            })
            .collect()
    }
}

//! Per output: which events pass its filter, and their bytes in its format.
//! JSON takes the batch's shared lines ([`EventBatch::json`]); OCSF encodes
//! each event that passes.

use super::{EventBatch, Format, OutputSpec, format, transport::Record};
use crate::event::{Event, Kind};

/// An output's filter and format.
#[derive(Debug, Clone)]
pub struct Filter {
    /// Bit `Kind::index()` set: the kind passes (all set when unfiltered).
    kinds: u32,
    runs_only: bool,
    format: Format,
}

impl Filter {
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

    /// Whether `event` goes to this output.
    #[must_use]
    pub fn passes(&self, event: &Event) -> bool {
        self.kinds & (1 << event.kind.index()) != 0 && (event.run.is_some() || !self.runs_only)
    }

    /// Whether `event` is a `policy.violation` that OCSF leaves out because
    /// this output also writes the event it repeats (the denial is written
    /// once, by that event; the twin has the same run, so `runs_only`
    /// treats both alike). JSON keeps both: the twin is part of the contract.
    fn repeated(&self, event: &Event) -> bool {
        matches!(self.format, Format::Ocsf)
            && format::ocsf::repeats(event).is_some_and(|k| self.kinds & (1 << k.index()) != 0)
    }

    /// Every event passes.
    const fn passes_all(&self) -> bool {
        self.kinds == u32::MAX && !self.runs_only
    }

    /// The batch's events that pass, with their index and their bytes in
    /// this output's format (no newline), `buf` holding what this output
    /// encoded itself.
    fn each<'b>(
        &self,
        batch: &'b EventBatch,
        buf: &mut Vec<u8>,
        mut f: impl FnMut(&'b Event, &[u8]),
    ) {
        let json = matches!(self.format, Format::Json).then(|| batch.json());
        for (i, event) in batch.events().iter().enumerate() {
            if !self.passes(event) || self.repeated(event) {
                continue;
            }
            if let Some(json) = json {
                if let Some(line) = json.line(i) {
                    f(event, line.strip_suffix(b"\n").unwrap_or(line));
                }
            } else {
                buf.clear();
                if self.encode_one(event, buf) {
                    f(event, buf);
                }
            }
        }
    }

    /// Appends `event` in this output's format to `out` (no newline); false
    /// when it cannot be encoded (then `out` is as it was).
    fn encode_one(&self, event: &Event, out: &mut Vec<u8>) -> bool {
        let start = out.len();
        match format::encode(self.format, event, out) {
            Ok(()) => true,
            Err(e) => {
                out.truncate(start);
                tracing::debug!(seq = event.seq, error = %e, "cannot encode an event; skipped");
                false
            }
        }
    }

    /// The events that pass, encoded, newline-terminated, in `out` (a JSON
    /// output without a filter takes the batch's lines as they are, in
    /// `lines`); returns how many.
    pub fn encode_lines<'b>(
        &self,
        batch: &'b EventBatch,
        out: &mut Vec<u8>,
        lines: &mut Option<&'b [u8]>,
    ) -> u64 {
        if matches!(self.format, Format::Json) && self.passes_all() {
            let json = batch.json();
            *lines = Some(json.bytes().as_slice());
            return json.encoded() as u64;
        }
        *lines = None;
        let mut n = 0;
        let mut buf = Vec::new();
        self.each(batch, &mut buf, |_, bytes| {
            out.extend_from_slice(bytes);
            out.push(b'\n');
            n += 1;
        });
        n
    }

    /// The events that pass, encoded, as spool records.
    pub fn encode_records(&self, batch: &EventBatch, out: &mut Encoded) {
        out.clear();
        let mut buf = Vec::new();
        let Encoded { buf: all, items } = out;
        self.each(batch, &mut buf, |event, bytes| {
            let start = all.len();
            all.extend_from_slice(bytes);
            items.push((
                event.seq,
                format::unix_ns(event.time.0),
                event.kind,
                start..all.len(),
            ));
        });
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
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sinks::tests::batch_of;

    fn filter(spec: &str) -> Filter {
        Filter::new(&spec.parse().unwrap())
    }

    #[test]
    fn json_lines_are_the_events_serde_form_with_or_without_a_filter() {
        let batch = batch_of(&[
            (1, Kind::ProcessExec, false),
            (2, Kind::ProcessExit, true),
            (3, Kind::ProcessExec, true),
        ]);
        let serde_line = |e: &Event| serde_json::to_string(e).unwrap() + "\n";
        let all: String = batch.events().iter().map(serde_line).collect();
        // Unfiltered: the batch's shared lines, as they are.
        let (mut out, mut shared) = (Vec::new(), None);
        assert_eq!(filter("-").encode_lines(&batch, &mut out, &mut shared), 3);
        assert_eq!(shared.unwrap(), all.as_bytes());
        assert!(out.is_empty());
        // Filtered: the lines that pass, from the same shared encoding.
        let mut shared = None;
        let f = filter("-,kinds=process.exec,runs_only=true");
        assert_eq!(f.encode_lines(&batch, &mut out, &mut shared), 1);
        assert!(shared.is_none());
        assert_eq!(out, serde_line(&batch.events()[2]).as_bytes());
        // As spool records: one per event that passes, no newline.
        let mut encoded = Encoded::default();
        filter("-,kinds=process.exec").encode_records(&batch, &mut encoded);
        let records = encoded.records();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 3]);
        for (r, e) in records.iter().zip([&batch.events()[0], &batch.events()[2]]) {
            assert_eq!(r.payload, serde_json::to_string(e).unwrap().as_bytes());
            assert_eq!(r.kind, "process.exec");
            assert_eq!(r.time_ns, 1_700_000_000_000_000_000);
        }
    }

    #[test]
    fn ocsf_outputs_encode_each_event_that_passes() {
        let batch = batch_of(&[(1, Kind::ProcessExec, false), (2, Kind::RunEnd, true)]);
        let (mut out, mut shared) = (Vec::new(), None);
        let n = filter("-,format=ocsf,runs_only=true").encode_lines(&batch, &mut out, &mut shared);
        assert_eq!(n, 1);
        assert!(shared.is_none());
        let text = String::from_utf8(out).unwrap();
        assert_eq!(text.lines().count(), 1);
        let v: serde_json::Value = serde_json::from_str(text.trim_end()).unwrap();
        assert_eq!(v["metadata"]["event_code"], "run.end");
        assert_eq!(v["unmapped"]["seq"], 2);
    }

    #[test]
    fn ocsf_writes_a_denial_once_and_json_keeps_its_twin() {
        use crate::{
            event::{Decision, Exec, ExecResult, Process, Verdict},
            sinks::{EventBatch, tests::event},
        };
        let mut exec = event(1, Kind::ProcessExec, true);
        exec.process = Some(Process::default());
        exec.exec = Some(Exec {
            filename: "/bin/x".into(),
            result: ExecResult::Error,
            errno: Some(1),
            error: Some("EPERM".into()),
            old_tid: 0,
            inode: None,
            dev: None,
            dev_raw: None,
            mnt_id: None,
            modified_in_run: None,
        });
        exec.policy = Some(Verdict {
            name: "p".into(),
            verdict: Decision::Deny,
            rule: "exec.allow (no rule matches)".into(),
            enforced: true,
            version: 1,
        });
        let mut twin = exec.clone();
        twin.kind = Kind::PolicyViolation;
        twin.seq = 2;
        // A refused sub-run: a violation with no twin.
        let mut depth = event(3, Kind::PolicyViolation, true);
        depth.process = Some(Process::default());
        depth.policy = exec.policy.clone().map(|p| Verdict {
            rule: "max_depth 1".into(),
            ..p
        });
        let batch = EventBatch::new(vec![exec, twin, depth]);
        let seqs = |spec: &str| {
            let mut encoded = Encoded::default();
            filter(spec).encode_records(&batch, &mut encoded);
            encoded.records().iter().map(|r| r.seq).collect::<Vec<_>>()
        };
        // OCSF: the exec is the denial; its twin is left out.
        assert_eq!(seqs("-,format=ocsf"), [1, 3]);
        // An output that takes violations but not execs still gets it once.
        assert_eq!(seqs("-,format=ocsf,kinds=policy.violation"), [2, 3]);
        assert_eq!(seqs("-,format=ocsf,kinds=process.exec"), [1]);
        // JSON: every event, as the contract has them.
        assert_eq!(seqs("-"), [1, 2, 3]);
        assert_eq!(seqs("-,kinds=policy.violation"), [2, 3]);
    }
}

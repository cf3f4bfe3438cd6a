//! A network output's on-disk spool as a restarted daemon finds it
//! (`Spool::open`: segments, cursor, a torn record to cut), then read by the
//! output's sender until it is empty (`read`, `ack`), then written again.
//!
//! Input: `flags: u8 | cursor_len: u8 | cursor | segments`, the segments
//! framed as `sensor_fuzz::frames` (up to four). Flags: bit 0 writes no
//! cursor file; bit 1 numbers the segments from near `u64::MAX` instead of 1;
//! bits 2-3 pick the spool's size bound; bits 4-5 how much one read takes.
//!
//! Checked, beyond not panicking: the sender never gets stuck (an empty read
//! while records are pending), every acknowledgement moves it on, and a
//! record appended after recovery reads back.

#![no_main]

use std::{fs, time::Duration};

use libfuzzer_sys::fuzz_target;
use sensor::sinks::{spool::Spool, transport::Record};
use sensor_fuzz::{frames, scratch_dir};

fuzz_target!(|data: &[u8]| {
    let [flags, cursor_len, rest @ ..] = data else {
        return;
    };
    let (cursor, segments) = rest.split_at(usize::from(*cursor_len).min(rest.len()));
    let first_id: u64 = if flags & 2 == 0 { 1 } else { u64::MAX - 3 };
    let max_bytes: u64 = match (flags >> 2) & 3 {
        0 => 1 << 20,
        1 => 64 << 10,
        2 => 0,
        _ => 256 << 20,
    };
    let read_bytes: usize = match (flags >> 4) & 3 {
        0 => 4096,
        1 => 1,
        2 => 64 << 10,
        _ => 300,
    };

    let dir = scratch_dir();
    if flags & 1 == 0 {
        fs::write(dir.path().join("cursor"), cursor).expect("writing the cursor");
    }
    for (i, segment) in (0..4).zip(frames(segments)) {
        let id = first_id + i;
        fs::write(dir.path().join(format!("{id:020}.seg")), segment).expect("writing a segment");
    }

    let Ok(spool) = Spool::open(dir.path(), max_bytes) else {
        return;
    };
    let mut last_seq = 0;
    for _ in 0..10_000 {
        let (pending, _) = spool.pending();
        let batch = spool
            .read(read_bytes, Duration::ZERO)
            .expect("reading the spool")
            .expect("the spool is open");
        if batch.is_empty() {
            assert_eq!(
                pending, 0,
                "the sender is stuck: records pending, none read"
            );
            break;
        }
        let records = batch.records();
        for r in &records {
            let _ = (r.seq, r.time_ns, r.kind, r.payload.len());
        }
        let n = batch.len();
        let after = batch.position_after(n).expect("a batch has an end");
        spool.ack(after, n as u64);
        let (left, _) = spool.pending();
        assert!(
            left < pending,
            "acknowledging {n} records left {left} of {pending}"
        );
        last_seq = last_seq.max(records.last().map_or(0, |r| r.seq));
    }
    assert_eq!(spool.pending().0, 0, "the spool drains");

    // The writer goes on where the recovered spool ends.
    let seq = spool.last_seq().max(last_seq).saturating_add(1);
    let record = Record {
        seq,
        time_ns: 1,
        kind: "process.exec",
        payload: b"{}",
    };
    spool.append(&[record]).expect("appending to the spool");
    spool.commit().expect("committing the spool");
    let batch = spool
        .read(4096, Duration::ZERO)
        .expect("reading the spool")
        .expect("the spool is open");
    let seqs: Vec<u64> = batch.records().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [seq], "the record appended after recovery reads back");
});

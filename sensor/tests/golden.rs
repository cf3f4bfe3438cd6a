//! The golden test of the outputs (issue 18): a recorded kernel record
//! stream (`golden/records.bin`, made by `tests/tests/golden_capture.rs` on
//! a real kernel) is replayed through the whole user-space pipeline, as the
//! daemon runs it, into every output format (JSON lines, OCSF) and the
//! store; each is compared with its committed expected file. Whatever is
//! reshaped inside, the bytes that leave the sensor must not change.
//!
//! What depends on the moment of the replay (the wall-clock time of events
//! the daemon makes itself, run ids, durations) is normalized first; what
//! comes from the records (kernel times through a fixed clock, pids, paths,
//! verdicts) is compared as is. `GOLDEN_UPDATE=1` rewrites the expected
//! files (then read the diff).

#![allow(
    clippy::unwrap_used,
    reason = "a test: a failure is a panic with its cause"
)]

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    sync::Arc,
};

use sensor::{
    pipeline::Pipeline,
    status::DaemonState,
    store::writer::{Retention, StoreWriter},
};
use serde_json::Value;

mod replay;

use replay::{BOOT_ID, golden, records};

/// Replays the recording into JSON and OCSF files and a store in `dir`.
fn replay(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let builder = replay::engine(dir);
    let (json, ocsf, outputs) = replay::outputs(dir);
    let db = dir.join("sensor.db");
    let store = StoreWriter::start(
        &db,
        Retention {
            max_age: std::time::Duration::from_secs(u64::MAX / 4),
            max_bytes: u64::MAX / 4,
        },
    )
    .unwrap();
    let bytes = fs::read(golden().join("records.bin")).unwrap();
    let records = records(&bytes);
    let generation = replay::generation(&records);
    // Run events chained, checkpoints signed (a fresh key: the chain
    // values and signatures are normalized away below).
    let chainer = Arc::new(sensor::provenance::Chainer::new());
    let rng = ring::rand::SystemRandom::new();
    let der = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    chainer.set_key("golden-key", der.as_ref(), None).unwrap();
    let mut p = Pipeline::new(builder, outputs, Arc::new(DaemonState::default()))
        .with_generation(generation)
        .with_store(store)
        .with_provenance(sensor::provenance::Planner::new(
            sensor::provenance::ProvenanceConfig::default(),
            chainer,
        ));
    for record in &records {
        p.handle_record(record);
    }
    p.close();
    (json, ocsf, db)
}

/// The `prev` of a run's first event.
const GENESIS_HEX: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Replaces what depends on the replay's moment: run ids (UUIDs) by their
/// order of appearance, and times that are not kernel times (not in 2001)
/// by a placeholder.
struct Normalizer {
    ids: HashMap<String, String>,
}

impl Normalizer {
    fn value(&mut self, v: &mut Value) {
        match v {
            Value::String(s) => *s = self.text(s),
            Value::Number(n) => {
                // OCSF times are Unix ms; 2001 is 978e9..1010e9 ms.
                if let Some(ms) = n.as_u64()
                    && ms > 1_100_000_000_000
                    && ms < 4_000_000_000_000
                {
                    *v = Value::String("<now ms>".into());
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.value(x)),
            Value::Object(o) => {
                for (k, x) in o.iter_mut() {
                    if [
                        "duration",
                        "uptime_ms",
                        "seconds",
                        "chain",
                        "head",
                        "signature",
                    ]
                    .contains(&k.as_str())
                        || (k == "prev" && x.as_str().is_some_and(|p| p != GENESIS_HEX))
                    {
                        *x = Value::String(format!("<{k}>"));
                    } else {
                        self.value(x);
                    }
                }
            }
            _ => {}
        }
    }

    fn text(&mut self, s: &str) -> String {
        let mut out = String::with_capacity(s.len());
        let mut rest = s;
        while !rest.is_empty() {
            if let Some(uuid) = leading_uuid(rest) {
                let n = self.ids.len();
                let name = self
                    .ids
                    .entry(uuid.to_owned())
                    .or_insert_with(|| format!("<run {n}>"));
                out.push_str(name);
                rest = &rest[uuid.len()..];
            } else if let Some(ts) = leading_time(rest) {
                if ts.starts_with("2001-") {
                    out.push_str(ts);
                } else {
                    out.push_str("<now>");
                }
                rest = &rest[ts.len()..];
            } else {
                let c = rest.chars().next().unwrap_or(' ');
                out.push(c);
                rest = &rest[c.len_utf8()..];
            }
        }
        out
    }
}

/// A UUID at the start of `s` (8-4-4-4-12 hex), not the replay's boot id.
fn leading_uuid(s: &str) -> Option<&str> {
    let cand = s.get(..36)?;
    let ok = cand.char_indices().all(|(i, c)| match i {
        8 | 13 | 18 | 23 => c == '-',
        _ => c.is_ascii_hexdigit(),
    });
    (ok && cand != BOOT_ID).then_some(cand)
}

/// An RFC 3339 time at the start of `s` (`YYYY-MM-DDTHH:MM:SS[.f]Z`).
fn leading_time(s: &str) -> Option<&str> {
    let b = s.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[10] != b'T' || !b[..4].iter().all(u8::is_ascii_digit) {
        return None;
    }
    let end = s[19..].find('Z').map(|i| 19 + i + 1)?;
    s[19..end - 1]
        .chars()
        .all(|c| c == '.' || c.is_ascii_digit())
        .then(|| &s[..end])
}

/// The lines of `path` as written (key order and all: the JSON lines must
/// stay byte-compatible), with what depends on the replay's moment
/// replaced: run ids, times that are not kernel times, durations.
/// Chain values and signatures (over bytes with the replay's run ids and
/// times, so different each replay) replaced by a placeholder; a run's
/// first `prev` (all zeros) kept.
fn blank_hashes(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    'outer: while !rest.is_empty() {
        for key in [
            "\"chain\":\"",
            "\"prev\":\"",
            "\"head\":\"",
            "\"signature\":\"",
        ] {
            if let Some(after) = rest.strip_prefix(key)
                && let Some(end) = after.find('"')
            {
                out.push_str(key);
                if &after[..end] == GENESIS_HEX {
                    out.push_str(GENESIS_HEX);
                } else {
                    out.push_str(&format!("<{}>", &key[1..key.len() - 3]));
                }
                rest = &after[end..];
                continue 'outer;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

fn normalized_lines(path: &Path, n: &mut Normalizer) -> String {
    let mut out = String::new();
    for line in fs::read_to_string(path).unwrap().lines() {
        // Each line is one JSON object.
        assert!(serde_json::from_str::<Value>(line).unwrap().is_object());
        let line = n.text(line);
        let line = blank_numbers_after(&line, &["\"duration\":", "\"seconds\":", "\"uptime_ms\":"]);
        let line = blank_hashes(&line);
        out.push_str(&blank_now_ms(&line));
        out.push('\n');
    }
    out
}

/// The number after each of `keys` replaced by `"<key>"`.
fn blank_numbers_after(line: &str, keys: &[&str]) -> String {
    let mut out = line.to_owned();
    for key in keys {
        let mut from = 0;
        while let Some(i) = out[from..].find(key) {
            let start = from + i + key.len();
            let end = start
                + out[start..]
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '-' || c == 'e'))
                    .unwrap_or(out.len() - start);
            if end > start {
                out.replace_range(start..end, "\"<n>\"");
            }
            from = start;
        }
    }
    out
}

/// 13-digit numbers that are Unix ms of this century but not 2001 (the
/// kernel times), outside strings, replaced by `"<now ms>"`.
fn blank_now_ms(line: &str) -> String {
    let b = line.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(b.len());
    let mut i = 0;
    let mut in_string = false;
    while i < b.len() {
        let c = b[i];
        if in_string {
            out.push(c);
            if c == b'\\' && i + 1 < b.len() {
                out.push(b[i + 1]);
                i += 2;
                continue;
            }
            in_string = c != b'"';
            i += 1;
            continue;
        }
        if c == b'"' {
            in_string = true;
        } else if c.is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_digit()) {
            let end = (i..b.len())
                .find(|&j| !b[j].is_ascii_digit())
                .unwrap_or(b.len());
            let digits = &line[i..end];
            let now_ms = digits.len() == 13
                && digits
                    .parse::<u64>()
                    .is_ok_and(|ms| (1_100_000_000_000..4_000_000_000_000).contains(&ms));
            out.extend_from_slice(if now_ms {
                b"\"<now ms>\""
            } else {
                digits.as_bytes()
            });
            i = end;
            continue;
        }
        out.push(c);
        i += 1;
    }
    String::from_utf8(out).unwrap()
}

/// Every row of the store's tables (but the meta and index tables), in a
/// stable order, as tab-separated text.
fn store_rows(db: &Path, n: &mut Normalizer) -> String {
    let c = rusqlite::Connection::open(db).unwrap();
    let mut out = String::new();
    for (table, order) in [("runs", "id"), ("events", "seq")] {
        let mut stmt = c
            .prepare(&format!("SELECT * FROM {table} ORDER BY {order}"))
            .unwrap();
        let names: Vec<String> = stmt
            .column_names()
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        writeln!(out, "# {table}: {}", names.join("\t")).unwrap();
        let mut rows = stmt.query([]).unwrap();
        let mut lines = Vec::new();
        while let Some(row) = rows.next().unwrap() {
            let mut cells = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let cell = match row.get_ref(i).unwrap() {
                    rusqlite::types::ValueRef::Null => "NULL".to_owned(),
                    rusqlite::types::ValueRef::Integer(v) => {
                        // Times the daemon takes from its own clock.
                        if name.ends_with("_ns")
                            && !(978_000_000_000_000_000..1_010_000_000_000_000_000).contains(&v)
                        {
                            "<now ns>".to_owned()
                        } else {
                            v.to_string()
                        }
                    }
                    rusqlite::types::ValueRef::Real(v) => v.to_string(),
                    rusqlite::types::ValueRef::Text(_) if name == "chain" => "<chain>".to_owned(),
                    rusqlite::types::ValueRef::Text(t) => {
                        let t = String::from_utf8_lossy(t).into_owned();
                        match serde_json::from_str::<Value>(&t) {
                            Ok(mut v @ Value::Object(_)) => {
                                n.value(&mut v);
                                serde_json::to_string(&v).unwrap()
                            }
                            _ => n.text(&t),
                        }
                    }
                    rusqlite::types::ValueRef::Blob(b) => format!("<{} bytes>", b.len()),
                };
                cells.push(cell);
            }
            lines.push(cells.join("\t"));
        }
        // The runs table's order is by id, which the normalizer renames.
        if table == "runs" {
            lines.sort();
        }
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

#[test]
fn the_outputs_of_a_recorded_stream_do_not_change() {
    let dir = tempfile::tempdir().unwrap();
    let (json, ocsf, db) = replay(dir.path());
    let mut n = Normalizer {
        ids: HashMap::new(),
    };
    let got = [
        ("events.jsonl", normalized_lines(&json, &mut n)),
        ("ocsf.jsonl", normalized_lines(&ocsf, &mut n)),
        ("store.tsv", store_rows(&db, &mut n)),
    ];
    let expected_dir = golden().join("expected");
    let update = std::env::var_os("GOLDEN_UPDATE").is_some();
    let mut differ = Vec::new();
    for (name, text) in &got {
        let path = expected_dir.join(name);
        if update {
            fs::create_dir_all(&expected_dir).unwrap();
            fs::write(&path, text).unwrap();
            continue;
        }
        let expected = fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (GOLDEN_UPDATE=1 writes it)", path.display()));
        if &expected != text {
            let at = expected
                .lines()
                .zip(text.lines())
                .position(|(a, b)| a != b)
                .unwrap_or_else(|| expected.lines().count().min(text.lines().count()));
            differ.push(format!(
                "{name}: differs from line {} on\n  expected: {}\n  got:      {}",
                at + 1,
                expected.lines().nth(at).unwrap_or("<end>"),
                text.lines().nth(at).unwrap_or("<end>")
            ));
        }
    }
    assert!(
        differ.is_empty(),
        "the outputs changed (GOLDEN_UPDATE=1 rewrites the expected files):\n{}",
        differ.join("\n")
    );
    assert!(
        got[0].1.lines().count() > 50,
        "the replay produced too few events to mean anything"
    );
}

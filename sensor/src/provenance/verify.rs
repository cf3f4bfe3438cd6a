//! Checking a run's record: every chain recomputed from the lines as
//! stored (or as exported), every checkpoint's signature checked.

use std::collections::HashMap;

use serde::Serialize;

use super::{
    CheckpointFields, PublicKey,
    chain::{self, GENESIS, Hash},
    check_signature,
};

/// One stored line of a run, in the order it was written.
#[derive(Debug, Clone)]
pub struct Line {
    pub seq: u64,
    pub body: String,
    /// The store's `chain` column (absent in a bundle).
    pub chain: Option<String>,
}

/// What is wrong, at the first place it shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Problem {
    /// The seq of the event where the record stops holding.
    pub seq: u64,
    /// `edited`, `deleted`, `reordered`, `inserted`, `unchained`,
    /// `checkpoint` (a bad or missing signed head).
    pub what: &'static str,
    pub detail: String,
}

/// The verdict on one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunVerdict {
    pub run: String,
    pub intact: bool,
    pub events: u64,
    pub checkpoints: u64,
    /// Events after the last checkpoint (chained, not yet signed).
    pub unsigned_tail: u64,
    pub problem: Option<Problem>,
}

/// The chains of the runs not ended, to continue: run id, head, events.
pub fn open_heads(conn: &rusqlite::Connection) -> rusqlite::Result<Vec<(String, Hash, u64)>> {
    let mut stmt = conn.prepare(
        "SELECT e.run_id, e.chain, (SELECT count(*) FROM events c WHERE c.run_id = e.run_id AND c.chain IS NOT NULL)
           FROM events e
          WHERE e.id IN (SELECT max(id) FROM events
                          WHERE chain IS NOT NULL
                            AND run_id IN (SELECT id FROM runs WHERE end_ns IS NULL)
                          GROUP BY run_id)",
    )?;
    let rows = stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            r.get::<_, String>(1)?,
            r.get::<_, i64>(2)?,
        ))
    })?;
    let mut heads = Vec::new();
    for row in rows {
        let (id, chain, count) = row?;
        let mut head = [0; 32];
        if hex::decode_to_slice(&chain, &mut head).is_ok() {
            heads.push((id, head, u64::try_from(count).unwrap_or(0)));
        }
    }
    Ok(heads)
}

/// A run's lines from the store, in the order written.
pub fn stored_lines(conn: &rusqlite::Connection, run: &str) -> rusqlite::Result<Vec<Line>> {
    let mut stmt =
        conn.prepare("SELECT seq, body, chain FROM events WHERE run_id = ?1 ORDER BY id")?;
    let rows = stmt.query_map([run], |r| {
        Ok(Line {
            seq: u64::try_from(r.get::<_, i64>(0)?).unwrap_or(0),
            body: r.get(1)?,
            chain: r.get(2)?,
        })
    })?;
    rows.collect()
}

/// Verifies one run's lines. `ended`: the run is known to have ended, so
/// its record must hold an `end` checkpoint.
#[must_use]
pub fn verify_run(run: &str, lines: &[Line], keys: &[PublicKey], ended: bool) -> RunVerdict {
    let mut verdict = RunVerdict {
        run: run.to_owned(),
        intact: false,
        events: lines.len() as u64,
        checkpoints: 0,
        unsigned_tail: 0,
        problem: None,
    };
    match check(run, lines, keys, ended, &mut verdict) {
        Ok(()) => verdict.intact = true,
        Err(p) => verdict.problem = Some(p),
    }
    verdict
}

fn check(
    run: &str,
    lines: &[Line],
    keys: &[PublicKey],
    ended: bool,
    verdict: &mut RunVerdict,
) -> Result<(), Problem> {
    let sealed: Vec<Option<chain::Sealed>> = lines
        .iter()
        .map(|l| chain::open(l.body.as_bytes()))
        .collect();
    // Where each claimed chain value sits.
    let at: HashMap<Hash, usize> = sealed
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().map(|s| (s.chain, i)))
        .collect();
    let problem = |i: usize, what, detail: String| Problem {
        seq: lines.get(i).map_or(0, |l| l.seq),
        what,
        detail,
    };
    let mut expected = GENESIS;
    let mut end_signed = false;
    let mut last_signed = 0u64;
    for (i, line) in lines.iter().enumerate() {
        let Some(s) = &sealed[i] else {
            // Never chained (`[provenance] enabled = false`, or stored
            // before chains existed), or its member edited.
            let unchained = line.chain.is_none() && !line.body.contains("\"provenance\":");
            return Err(if unchained {
                problem(
                    i,
                    "unchained",
                    "the event carries no provenance member: it was written with [provenance] off or before chains existed, or the member was removed".into(),
                )
            } else {
                problem(
                    i,
                    "edited",
                    "the line has no well-formed provenance member".into(),
                )
            });
        };
        if let Some(column) = &line.chain
            && column != &hex::encode(s.chain)
        {
            return Err(problem(
                i,
                "edited",
                "the stored chain differs from the line's".into(),
            ));
        }
        if chain::next(&s.prev, &s.canonical) != s.chain {
            return Err(problem(
                i,
                "edited",
                "the line's content does not hash to its chain value".into(),
            ));
        }
        if s.prev != expected {
            let next_links_back = sealed
                .get(i + 1)
                .and_then(Option::as_ref)
                .is_some_and(|n| n.prev == expected);
            let skips_one = i >= 2 && sealed[i - 2].as_ref().is_some_and(|p| p.chain == s.prev);
            let later = at.get(&s.prev).copied().filter(|&j| j > i);
            return Err(if let Some(j) = later {
                problem(
                    i,
                    "reordered",
                    format!(
                        "it follows the event with seq {} in the chain",
                        lines[j].seq
                    ),
                )
            } else if next_links_back {
                problem(i, "inserted", "this event is not in the chain".into())
            } else if skips_one {
                problem(i - 1, "inserted", "this event is not in the chain".into())
            } else {
                problem(
                    i,
                    "deleted",
                    "the event chained before this one is missing".into(),
                )
            });
        }
        // The line is the one chained, but it must be of this run: a
        // record moved under another run's id (the store's column) is not
        // that run's, checkpoints and all.
        let head = read_head(&s.canonical).map_err(|why| problem(i, "edited", why))?;
        if head.run_id() != Some(run) {
            return Err(problem(
                i,
                "inserted",
                format!("this event is of run {}", head.run_id().unwrap_or("(none)")),
            ));
        }
        if let Some(c) = head.checkpoint() {
            let c = c.map_err(|why| problem(i, "checkpoint", why))?;
            if c.run_id != run {
                return Err(problem(
                    i,
                    "checkpoint",
                    format!("it signs the record of run {}", c.run_id),
                ));
            }
            if c.events != i as u64 || c.head != hex::encode(expected) {
                return Err(problem(
                    i,
                    "checkpoint",
                    format!(
                        "it signs {} events up to {}, the record has {} up to {}",
                        c.events,
                        c.head,
                        i,
                        hex::encode(expected)
                    ),
                ));
            }
            check_signature(&c, keys).map_err(|why| problem(i, "checkpoint", why.to_string()))?;
            verdict.checkpoints += 1;
            last_signed = i as u64 + 1;
            end_signed |= c.reason.as_deref() == Some("end");
        }
        expected = s.chain;
    }
    verdict.unsigned_tail = lines.len() as u64 - last_signed;
    if ended && !end_signed {
        return Err(Problem {
            seq: lines.last().map_or(0, |l| l.seq),
            what: "checkpoint",
            detail: "the run ended but its end checkpoint is missing".into(),
        });
    }
    Ok(())
}

/// What `check` reads of a line: its kind, its run and its checkpoint.
#[derive(serde::Deserialize)]
struct Head {
    kind: String,
    run: Option<HeadRun>,
    checkpoint: Option<serde_json::Value>,
}

#[derive(serde::Deserialize)]
struct HeadRun {
    id: String,
}

impl Head {
    fn run_id(&self) -> Option<&str> {
        self.run.as_ref().map(|r| r.id.as_str())
    }

    /// The checkpoint of a `run.checkpoint` line; `None` for other kinds.
    fn checkpoint(self) -> Option<Result<CheckpointFields, String>> {
        if self.kind != "run.checkpoint" {
            return None;
        }
        Some(
            self.checkpoint
                .ok_or_else(|| "no checkpoint member".to_owned())
                .and_then(|v| serde_json::from_value(v).map_err(|e| e.to_string())),
        )
    }
}

fn read_head(canonical: &[u8]) -> Result<Head, String> {
    serde_json::from_slice(canonical).map_err(|e| format!("the line is not a JSON event: {e}"))
}

/// `n` and the noun, singular for one.
fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

impl RunVerdict {
    /// One line for people.
    #[must_use]
    pub fn describe(&self) -> String {
        match &self.problem {
            None => format!(
                "{}: intact: {}, {}{}",
                self.run,
                count(self.events, "event", "events"),
                count(self.checkpoints, "checkpoint", "checkpoints"),
                if self.unsigned_tail > 0 {
                    format!(" ({} after the last checkpoint)", self.unsigned_tail)
                } else {
                    String::new()
                }
            ),
            Some(p) => format!(
                "{}: NOT intact: {} at seq {}: {}",
                self.run, p.what, p.seq, p.detail
            ),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::provenance::{Chainer, read_keys};

    /// A run's lines as the daemon writes them: `n` execs, then a checkpoint.
    fn record(n: usize) -> (Vec<Line>, Vec<PublicKey>, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let chainer = Chainer::new();
        let (kid, der) = crate::provenance::tests::key();
        chainer.set_key(&kid, &der, Some(dir.path())).unwrap();
        let mut events: Vec<crate::event::Event> = (0..n)
            .map(|i| {
                crate::sinks::tests::event(i as u64 + 1, crate::event::Kind::ProcessExec, true)
            })
            .collect();
        let mut c =
            crate::sinks::tests::event(n as u64 + 1, crate::event::Kind::RunCheckpoint, true);
        c.checkpoint = Some(Box::new(crate::event::Checkpoint {
            reason: "end",
            ..crate::event::Checkpoint::default()
        }));
        events.push(c);
        let mut bytes = Vec::new();
        let mut lines = Vec::new();
        chainer.write_lines(&events, &mut bytes, |range, chain| {
            lines.push((range.unwrap(), chain.unwrap()));
        });
        let lines = lines
            .into_iter()
            .zip(&events)
            .map(|((r, chain), e)| Line {
                seq: e.seq,
                body: String::from_utf8(bytes[r].strip_suffix(b"\n").unwrap().to_vec()).unwrap(),
                chain: Some(hex::encode(chain)),
            })
            .collect();
        let keys = read_keys(dir.path()).unwrap();
        (lines, keys, dir)
    }

    fn what(lines: &[Line], keys: &[PublicKey]) -> Option<(&'static str, u64)> {
        verify_run("r", lines, keys, true)
            .problem
            .map(|p| (p.what, p.seq))
    }

    #[test]
    fn an_intact_record_verifies_and_each_tamper_is_named() {
        let (lines, keys, _dir) = record(5);
        let v = verify_run("r", &lines, &keys, true);
        assert!(v.intact, "{v:?}");
        assert_eq!((v.events, v.checkpoints, v.unsigned_tail), (6, 1, 0));
        assert_eq!(v.describe(), "r: intact: 6 events, 1 checkpoint");
        // Edited.
        let mut edited = lines.clone();
        edited[2].body = edited[2].body.replace("\"seq\":3", "\"seq\":33");
        assert_eq!(what(&edited, &keys), Some(("edited", 3)));
        // Deleted.
        let mut deleted = lines.clone();
        deleted.remove(2);
        assert_eq!(what(&deleted, &keys), Some(("deleted", 4)));
        // Reordered.
        let mut swapped = lines.clone();
        swapped.swap(1, 2);
        assert_eq!(what(&swapped, &keys), Some(("reordered", 3)));
        // Inserted: a copy of a real event (its chain holds, its link not).
        let mut inserted = lines.clone();
        let mut copy = lines[1].clone();
        copy.seq = 99;
        inserted.insert(3, copy);
        assert_eq!(what(&inserted, &keys), Some(("inserted", 99)));
        // The last events and the checkpoint gone: no end checkpoint.
        let mut cut = lines.clone();
        cut.truncate(4);
        assert_eq!(what(&cut, &keys), Some(("checkpoint", 4)));
        // Another key: the checkpoint's signature does not verify.
        let other = record(5).1;
        assert_eq!(what(&lines, &other), Some(("checkpoint", 6)));
        // The store's chain column disagreeing with the line.
        let mut column = lines.clone();
        column[0].chain = Some("00".repeat(32));
        assert_eq!(what(&column, &keys), Some(("edited", 1)));
        // Never chained (provenance off): said so, and not intact.
        let mut plain = lines.clone();
        for l in &mut plain {
            l.body = String::from_utf8(chain::open(l.body.as_bytes()).unwrap().canonical).unwrap();
            l.chain = None;
        }
        assert_eq!(what(&plain, &keys), Some(("unchained", 1)));
        // Its member mangled: edited.
        let mut mangled = lines.clone();
        mangled[1].body = mangled[1].body.replace("\"chain\":\"", "\"chain\":\"x");
        assert_eq!(what(&mangled, &keys), Some(("edited", 2)));
    }

    /// Someone who can write the store (not the key) moves another run's
    /// record, checkpoints and all, under this run's id: it must not read
    /// as this run's record.
    #[test]
    fn another_runs_record_does_not_verify_as_this_one() {
        let (lines, keys, _dir) = record(3);
        assert!(verify_run("r", &lines, &keys, true).intact);
        let v = verify_run("victim", &lines, &keys, true);
        assert!(!v.intact, "{v:?}");
        assert_eq!(
            v.problem.map(|p| (p.what, p.seq)),
            Some(("inserted", 1)),
            "the first line names another run"
        );
    }
}

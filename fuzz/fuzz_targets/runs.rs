//! The run state a restarted daemon reads back (`RunTable::load`): the
//! snapshot `runs.json` and the journal `runs.journal` replayed over it,
//! both from disk, where a crash, a full disk or a hostile hand may have left
//! anything. Then what the daemon does next with the table: it saves it
//! again, creates a run (a `launch`), ends expired runs and forgets old ones.
//!
//! Input: `flags: u8 | snapshot_len: u16 LE | snapshot | journal`; flag bit 0
//! writes the snapshot file, bit 1 the journal file (else they are absent).
//!
//! Checked, beyond not panicking: the journal is skipped line by line when
//! bad, so it never makes a snapshot that loads alone fail to load; and a
//! table that was saved loads again.

#![no_main]

use std::{fs, path::Path, time::Duration};

use libfuzzer_sys::fuzz_target;
use sensor::attribution::{NewRun, RunTable};
use sensor_fuzz::{now, scratch_dir};

fn write_or_remove(path: &Path, contents: Option<&[u8]>) {
    match contents {
        Some(bytes) => fs::write(path, bytes).expect("writing a state file"),
        None => match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{e}"),
            _ => {}
        },
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((len, rest)) = rest.split_first_chunk::<2>() else {
        return;
    };
    let (snapshot, journal) = rest.split_at(usize::from(u16::from_le_bytes(*len)).min(rest.len()));
    let snapshot = (flags & 1 != 0).then_some(snapshot);
    let journal = (flags & 2 != 0).then_some(journal);

    let dir = scratch_dir();
    let path = dir.path().join("runs.json");
    let journal_path = RunTable::journal_path(&path);
    write_or_remove(&path, snapshot);
    write_or_remove(&journal_path, None);
    let alone = RunTable::load(&path);
    if journal.is_some() {
        write_or_remove(&journal_path, journal);
    }
    let mut table = match RunTable::load(&path) {
        Ok(table) => table,
        Err(e) => {
            assert!(
                alone.is_err() || journal.is_none(),
                "the journal made a loadable snapshot fail to load: {e}"
            );
            return;
        }
    };

    // What the daemon writes it reads back.
    let saved = dir.path().join("saved").join("runs.json");
    table.save(&saved).expect("saving the run state");
    let reloaded = RunTable::load(&saved).expect("a saved run state loads again");
    assert_eq!(
        reloaded.active().count(),
        table.active().count(),
        "the saved state has the same active runs"
    );

    // A launch after the restart gets a new handle.
    let created = table
        .create(
            NewRun {
                agent: "fuzz".into(),
                principal: "root".into(),
                ttl: Some(Duration::from_secs(60)),
                started_by: sensor::event::StartedBy::Launch,
                ..NewRun::default()
            },
            now(),
        )
        .map(|run| (run.handle, run.id.clone()));
    if let Ok((handle, id)) = created {
        let run = table.get(handle).expect("the created run is in the table");
        assert_eq!(run.id, id);
        RunTable::journal(&saved, run).expect("journaling a run");
        let replayed = RunTable::load(&saved).expect("a journaled run state loads");
        assert!(
            replayed.get(handle).is_some(),
            "the journal has the new run"
        );
    }
    for handle in table.expired(now() + Duration::from_secs(3600)) {
        table.end(handle, "ttl", now());
    }
    table.forget_ended(now(), Duration::from_secs(24 * 3600));
    table.save(&saved).expect("saving the run state");
});

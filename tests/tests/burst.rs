//! An exec burst on the real kernel: nothing lost. Run as root:
//! `SENSOR_BIN=... cargo test -p sensor-tests -- --test-threads=1`.

use std::collections::{BTreeMap, HashSet};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use sensor_tests::{Daemon, argv_of, dump, kind, marker};
use serde_json::Value;

const SPAWNERS: usize = 2;
const PER_SPAWNER: usize = 1000;

/// The marker argument of one of our execs (argv[1] = "<marker>-<t>-<i>").
fn burst_arg(e: &Value, m: &str) -> Option<String> {
    if kind(e) != "process.exec" {
        return None;
    }
    argv_of(e)
        .get(1)
        .filter(|a| a.starts_with(m) && a.as_bytes().get(m.len()) == Some(&b'-'))
        .cloned()
}

/// Case 7: 2,000 execs from two parallel spawners: every one reported exactly
/// once, lost.total == 0 and no sensor.lost event.
#[test]
fn exec_burst_of_2000_loses_nothing() -> Result<()> {
    let d = Daemon::start()?;
    let m = marker();
    let spawners: Vec<_> = (0..SPAWNERS)
        .map(|t| {
            let m = m.clone();
            thread::spawn(move || -> Result<()> {
                for i in 0..PER_SPAWNER {
                    let status = Command::new("/bin/true")
                        .arg(format!("{m}-{t}-{i}"))
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .context("spawn /bin/true")?;
                    ensure!(status.success(), "/bin/true {t}-{i} failed: {status}");
                }
                Ok(())
            })
        })
        .collect();
    for s in spawners {
        s.join()
            .map_err(|_| anyhow!("a spawner thread panicked"))??;
    }
    let expected: HashSet<String> = (0..SPAWNERS)
        .flat_map(|t| (0..PER_SPAWNER).map(move |i| (t, i)))
        .map(|(t, i)| format!("{m}-{t}-{i}"))
        .collect();
    let total = SPAWNERS * PER_SPAWNER;

    let seen = |evs: &[Value]| -> HashSet<String> {
        evs.iter().filter_map(|e| burst_arg(e, &m)).collect()
    };
    d.wait_until(
        Duration::from_secs(30),
        |evs| seen(evs).len() >= total,
        |evs| {
            let got = seen(evs);
            let mut missing: Vec<&String> = expected.difference(&got).collect();
            missing.sort();
            format!(
                "{} of {total} execs reported; first missing: {:?}",
                got.len(),
                &missing[..missing.len().min(10)]
            )
        },
    )?;
    // sensor.lost is emitted within ~1 s of a loss: give it time to appear.
    thread::sleep(Duration::from_millis(1500));

    let (reported, lost_events) = d.with_events(|evs| {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for a in evs.iter().filter_map(|e| burst_arg(e, &m)) {
            *counts.entry(a).or_default() += 1;
        }
        let lost: Vec<Value> = evs
            .iter()
            .filter(|e| kind(e) == "sensor.lost")
            .cloned()
            .collect();
        (counts, lost)
    })?;
    let n: usize = reported.values().sum();
    let dups: Vec<(&String, &usize)> = reported.iter().filter(|(_, c)| **c > 1).take(10).collect();
    ensure!(
        n == total && reported.len() == total,
        "{n} process.exec events for {} distinct markers, expected {total} exactly once each (duplicates: {dups:?})",
        reported.len()
    );
    let unexpected: Vec<&String> = reported
        .keys()
        .filter(|k| !expected.contains(*k))
        .take(5)
        .collect();
    ensure!(
        unexpected.is_empty(),
        "unexpected marker args: {unexpected:?}"
    );
    ensure!(
        lost_events.is_empty(),
        "sensor.lost events during the burst:\n{}",
        dump(&lost_events)
    );

    let status = d.status_json()?;
    let lost_total = status.pointer("/lost/total").and_then(Value::as_u64);
    ensure!(
        lost_total == Some(0),
        "status --json lost.total is {:?}, expected 0: {}",
        status.pointer("/lost"),
        status
    );
    Ok(())
}

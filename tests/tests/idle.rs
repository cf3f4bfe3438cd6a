//! A quiet host: the daemon's event reader sleeps until the kernel has a
//! record for it (no timer wakes it), and an isolated exec is still reported
//! at once. Alone in its file, so no other test daemon runs meanwhile. Run as
//! root: `SENSOR_BIN=... cargo test -p sensor-tests`.

use std::fs;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use sensor_tests::{Checks, Daemon, check, marker};

/// How long the daemon is watched while nothing happens.
const QUIET: Duration = Duration::from_secs(3);
/// Wake-ups of the reader thread allowed in [`QUIET`]: its one-second tick
/// and the odd event of the host. A reader on a 5 ms timer makes 600.
const QUIET_WAKEUPS_MAX: u64 = 60;
/// Isolated execs, each after the reader fell asleep again.
const ISOLATED: usize = 5;
/// Each must be written within this. A record that failed to wake the
/// reader waits for its one-second tick (and the test's 1 ms poll adds
/// little), so five in a row under this are not luck.
const ISOLATED_LATENCY_MAX: Duration = Duration::from_millis(200);

fn voluntary_switches(pid: u32) -> Result<u64> {
    // The main thread: it reads the ring buffer.
    let path = format!("/proc/{pid}/task/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no voluntary_ctxt_switches in {path}"))
}

/// Runs /bin/true with `arg` and returns how long until a line holding `arg`
/// is in the daemon's output file (read from `offset` on, polled every ms).
fn exec_to_line(d: &Daemon, arg: &str, offset: &mut u64) -> Result<Duration> {
    let mut file = fs::File::open(d.events_path())
        .with_context(|| format!("open {}", d.events_path().display()))?;
    let mut text = String::new();
    let start = Instant::now();
    let status = Command::new("/bin/true")
        .arg(arg)
        .stdin(Stdio::null())
        .status()
        .context("run /bin/true")?;
    if !status.success() {
        bail!("/bin/true {arg} exited with {status}");
    }
    while start.elapsed() < Duration::from_secs(5) {
        file.seek(SeekFrom::Start(*offset))?;
        text.clear();
        file.read_to_string(&mut text)?;
        if text.contains(arg) {
            let elapsed = start.elapsed();
            *offset += text.len() as u64;
            return Ok(elapsed);
        }
        thread::sleep(Duration::from_millis(1));
    }
    bail!("/bin/true {arg} was not reported within 5 s")
}

#[test]
fn a_quiet_daemon_sleeps_and_still_reports_an_isolated_exec_at_once() -> Result<()> {
    let d = Daemon::start()?;
    let mut c = Checks::new();
    // Its own start-up settles (the tick that finds nothing puts it to sleep).
    thread::sleep(Duration::from_secs(1));

    let before = voluntary_switches(d.pid())?;
    thread::sleep(QUIET);
    let wakeups = voluntary_switches(d.pid())?.saturating_sub(before);
    check!(
        c,
        wakeups <= QUIET_WAKEUPS_MAX,
        "the reader woke {wakeups} times in {QUIET:?} of a quiet host (at most \
         {QUIET_WAKEUPS_MAX}): it should sleep until the kernel has a record"
    );

    let m = marker();
    let mut offset = fs::metadata(d.events_path()).map_or(0, |m| m.len());
    let mut latencies = Vec::with_capacity(ISOLATED);
    for i in 0..ISOLATED {
        // Long enough for the reader to find nothing and fall asleep again.
        thread::sleep(Duration::from_millis(300));
        latencies.push(exec_to_line(&d, &format!("{m}-{i}"), &mut offset)?);
    }
    check!(
        c,
        latencies.iter().all(|l| *l <= ISOLATED_LATENCY_MAX),
        "isolated execs took {latencies:?} from spawn to output line (each at most \
         {ISOLATED_LATENCY_MAX:?}): a record must wake a sleeping reader"
    );
    c.finish()
}

//! Kernel-to-output latency (issue 8 item 5): a steady trickle of execs while
//! a thread tails the daemon's JSON file; for each `process.exec` line of the
//! trickle, the time it was read minus its `time` field (the kernel timestamp
//! as wall clock).

use std::{
    fs::{self, File},
    io::{ErrorKind, Read as _},
    path::Path,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};

use super::{Env, Results, daemon::Daemon};
use serde_json::Value;

/// What the trickle spawns; its exec lines are the ones measured.
const MARKER_BIN: &str = "/bin/true";

/// Spawn `count` execs of /bin/true, `rate` per second, while tailing
/// `output`; returns the latency of each exec line seen, in ms.
pub fn trickle(output: &Path, count: usize, rate: u32) -> Result<Vec<f64>> {
    let stop = AtomicBool::new(false);
    thread::scope(|scope| {
        let tail = scope.spawn(|| tail(output, count, &stop));
        let spawned = spawn_steady(count, rate);
        // The tail ends at `count` lines, or once nothing came for 2 s.
        stop.store(true, Ordering::SeqCst);
        let latencies = tail
            .join()
            .map_err(|_| anyhow!("latency: the tail thread panicked"))?;
        spawned?;
        latencies
    })
}

fn spawn_steady(count: usize, rate: u32) -> Result<()> {
    let interval = Duration::from_secs(1) / rate.max(1);
    let start = Instant::now();
    for index in 0..count {
        let due = start + interval * u32::try_from(index).unwrap_or(u32::MAX);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        let status = Command::new(MARKER_BIN)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("latency: cannot spawn {MARKER_BIN}"))?;
        if !status.success() {
            bail!("latency: {MARKER_BIN} exited with {status}");
        }
    }
    Ok(())
}

/// Poll the file every millisecond; stop after `count` exec lines of the
/// marker, or on 2 s without a line after `stop`, or 30 s without a line.
fn tail(output: &Path, count: usize, stop: &AtomicBool) -> Result<Vec<f64>> {
    let mut file =
        File::open(output).with_context(|| format!("cannot open {}", output.display()))?;
    let mut pending = Vec::new();
    let mut buf = vec![0_u8; 1 << 16];
    let mut latencies = Vec::with_capacity(count);
    let mut last_line = Instant::now();
    while latencies.len() < count {
        let n = match file.read(&mut buf) {
            Ok(n) => n,
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("latency: cannot read the output file"),
        };
        if n == 0 {
            let idle = last_line.elapsed();
            if (stop.load(Ordering::SeqCst) && idle > Duration::from_secs(2))
                || idle > Duration::from_secs(30)
            {
                break;
            }
            thread::sleep(Duration::from_millis(1));
            continue;
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .context("clock before 1970")?;
        last_line = Instant::now();
        pending.extend_from_slice(&buf[..n]);
        let mut start = 0;
        while let Some(end) = pending[start..].iter().position(|&b| b == b'\n') {
            let line = &pending[start..start + end];
            start += end + 1;
            if let Some(event_ns) = marker_exec_time(line) {
                let now_ns = now.as_nanos() as f64;
                latencies.push((now_ns - event_ns as f64) / 1e6);
            }
        }
        pending.drain(..start);
    }
    Ok(latencies)
}

/// The `time` of a `process.exec` line of the marker binary, ns since 1970.
fn marker_exec_time(line: &[u8]) -> Option<i128> {
    // Cheap filter before parsing JSON.
    let text = std::str::from_utf8(line).ok()?;
    if !text.contains("\"process.exec\"") || !text.contains(MARKER_BIN) {
        return None;
    }
    let event: Value = serde_json::from_str(text).ok()?;
    if event.get("kind")?.as_str()? != "process.exec" {
        return None;
    }
    let exe = event.pointer("/process/exe")?.as_str()?;
    if !exe.ends_with("/true") {
        return None;
    }
    parse_rfc3339_ns(event.get("time")?.as_str()?)
}

/// "2026-11-23T10:00:00.123456789Z" → ns since the Unix epoch (UTC only).
fn parse_rfc3339_ns(text: &str) -> Option<i128> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-');
    let year: i64 = date.next()?.parse().ok()?;
    let month: i64 = date.next()?.parse().ok()?;
    let day: i64 = date.next()?.parse().ok()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut hms = hms.split(':');
    let hour: i64 = hms.next()?.parse().ok()?;
    let minute: i64 = hms.next()?.parse().ok()?;
    let second: i64 = hms.next()?.parse().ok()?;
    if frac.is_empty() || frac.len() > 9 || !frac.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let nanos: i64 = format!("{frac:0<9}").parse().ok()?;
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(nanos))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// algorithm).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let yoe = year - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `q` quantile (nearest rank) of unsorted samples; None when empty.
pub fn percentile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = (q * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Execs of the latency trickle, and their rate per second.
pub(super) const LATENCY_EXECS: usize = 2000;
pub(super) const QUICK_LATENCY_EXECS: usize = 500;
pub(super) const LATENCY_RATE: u32 = 500;
/// p99 ≤ 10 ms.
pub(super) const LATENCY_P99_TARGET_MS: f64 = 10.0;

/// A daemon writing JSON to a file, a trickle of execs, the file tailed.
pub(super) fn measure(env: &Env, quick: bool, results: &mut Results) -> Result<()> {
    let execs = if quick {
        QUICK_LATENCY_EXECS
    } else {
        LATENCY_EXECS
    };
    let events = env.socket_dir.join("latency.jsonl");
    let _ = fs::remove_file(&events);
    // Created before the daemon opens it, so the tail can start at once.
    fs::write(&events, "").with_context(|| format!("cannot create {}", events.display()))?;
    let output = format!("file:{}", events.display());
    let daemon = Daemon::start(env, 1001, &["--output", &output, "--no-store"])?;
    eprintln!("xtask bench: latency: {execs} execs at {LATENCY_RATE}/s, tailing the output file");
    let measured = trickle(&events, execs, LATENCY_RATE);
    let stopped = daemon.stop();
    let _ = fs::remove_file(&events);
    results.latency_ms = measured?;
    results.latency_execs = execs;
    stopped?;
    if results.latency_ms.len() < execs {
        bail!(
            "only {} of {execs} exec lines of the trickle reached the output file",
            results.latency_ms.len()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rfc3339() {
        assert_eq!(parse_rfc3339_ns("1970-01-01T00:00:00.000000001Z"), Some(1));
        assert_eq!(
            parse_rfc3339_ns("2023-11-14T22:13:20.000000005Z"),
            Some(1_700_000_000_000_000_005)
        );
        assert_eq!(
            parse_rfc3339_ns("2000-03-01T00:00:00.5Z"),
            Some(951_868_800_500_000_000)
        );
        assert_eq!(parse_rfc3339_ns("2000-03-01T00:00:00+01:00"), None);
    }

    #[test]
    fn percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&samples, 0.5), Some(50.0));
        assert_eq!(percentile(&samples, 0.99), Some(99.0));
        assert_eq!(percentile(&samples, 1.0), Some(100.0));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn finds_marker_execs() {
        let line = br#"{"time":"2023-11-14T22:13:20.000000005Z","kind":"process.exec","process":{"exe":"/usr/bin/true"}}"#;
        assert_eq!(marker_exec_time(line), Some(1_700_000_000_000_000_005));
        let other = br#"{"time":"2023-11-14T22:13:20Z","kind":"process.exit","process":{"exe":"/bin/true"}}"#;
        assert_eq!(marker_exec_time(other), None);
    }
}

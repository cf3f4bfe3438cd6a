//! The daemon's memory through a process storm, with the default
//! configuration (store on, a JSON file output): many processes parked,
//! many short-lived, then all the parked ones killed at once. Any local user
//! can do this; the exit storm once left the daemon holding every queued
//! event (300 MB after 100,000 exits, never given back). Alone in its file,
//! so no other test daemon runs meanwhile. Run as root:
//! `SENSOR_BIN=... cargo test -p sensor-tests --test memory`.

use std::fs;
use std::io::Read as _;
use std::os::fd::FromRawFd as _;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sensor_tests::Daemon;
use serde_json::Value;

/// Processes parked (alive, in pause()) then killed together.
const PARKED: usize = 20_000;
/// Processes that exit at once, forked between.
const SHORT_LIVED: usize = 10_000;
/// The daemon's anonymous memory once the storm is written, at most. Its
/// file pages (the binary, the kernel ring mapped twice) are not counted:
/// they do not grow with the storm, and a debug build's binary is large.
const ANON_AFTER_MAX_KIB: u64 = 32 * 1024;
/// Its anonymous memory at any moment of the storm, at most (sampled).
const ANON_PEAK_MAX_KIB: u64 = 56 * 1024;
/// How long after the storm is written the memory must be back.
const GIVE_BACK_WITHIN: Duration = Duration::from_secs(15);

fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("no {field} in {path}"))
}

fn count(status: &Value, ptr: &str) -> u64 {
    status.pointer(ptr).and_then(Value::as_u64).unwrap_or(0)
}

/// The parker: a process that forks `parked` children blocked in pause()
/// and `short` children that exit at once (reaped), writes one byte to
/// `ready`, and reaps everything once its group gets SIGTERM (which it
/// ignores itself). Returns its pid (also its process group).
fn park(parked: usize, short: usize) -> Result<(libc::pid_t, fs::File)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a writable array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    let [read_fd, write_fd] = fds;
    // SAFETY: the child calls only async-signal-safe functions (fork,
    // pause, waitpid, write, _exit) and allocates nothing.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork");
    }
    if pid == 0 {
        // SAFETY: see above; never returns.
        unsafe {
            libc::close(read_fd);
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::setpgid(0, 0);
            libc::signal(libc::SIGTERM, libc::SIG_IGN);
            let mut status = b'R';
            for _ in 0..parked {
                let child = libc::fork();
                if child == 0 {
                    libc::signal(libc::SIGTERM, libc::SIG_DFL);
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    loop {
                        libc::pause();
                    }
                }
                if child < 0 {
                    status = b'F';
                    break;
                }
            }
            for _ in 0..short {
                let child = libc::fork();
                if child == 0 {
                    libc::_exit(0);
                }
                if child < 0 {
                    status = b'F';
                    break;
                }
                libc::waitpid(child, std::ptr::null_mut(), 0);
            }
            libc::write(write_fd, (&raw const status).cast(), 1);
            libc::close(write_fd);
            while libc::waitpid(-1, std::ptr::null_mut(), 0) > 0 {}
            libc::_exit(0);
        }
    }
    // SAFETY: write_fd is ours, no longer used here; read_fd is an open pipe end.
    let ready = unsafe {
        libc::close(write_fd);
        fs::File::from_raw_fd(read_fd)
    };
    Ok((pid, ready))
}

/// SIGTERM to the parker's group; waits for the parker (it reaps the rest).
fn kill_group(pid: libc::pid_t) -> Result<()> {
    // SAFETY: the group is the parker's, forked by us and not yet reaped.
    unsafe { libc::kill(-pid, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        // SAFETY: waitpid on our own child.
        let rc = unsafe { libc::waitpid(pid, std::ptr::null_mut(), libc::WNOHANG) };
        if rc != 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            // SAFETY: as above.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
            bail!("the parked processes did not exit within 60 s of SIGTERM");
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// The store and the file output have written (or dropped) at least
/// `total` events: the daemon's count at an earlier look, since events of
/// the rest of the host keep coming while the store commits every 100 ms
/// (comparing with the same look's total fails on a busy host).
fn caught_up(status: &Value, total: u64) -> bool {
    let outputs = status
        .get("outputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    count(status, "/store/written") + count(status, "/store/dropped") >= total
        && outputs
            .iter()
            .all(|o| count(o, "/sent") + count(o, "/dropped") >= total)
}

/// 20,000 parked processes and 10,000 short-lived ones, then the 20,000
/// killed together: every spawn and exit is counted, nothing is lost or
/// dropped (the kernel's count, the store's and the output's), the daemon's
/// anonymous memory stays under [`ANON_PEAK_MAX_KIB`] throughout and is
/// back under [`ANON_AFTER_MAX_KIB`] within [`GIVE_BACK_WITHIN`] of the
/// storm being written.
#[test]
fn exit_storm_memory_is_bounded_and_given_back() -> Result<()> {
    let d = Daemon::start()?;
    let pid = d.pid();
    let before = d.status_json()?;
    let spawns0 = count(&before, "/events/process.spawn");
    let exits0 = count(&before, "/events/process.exit");
    let idle_anon = status_kib(pid, "RssAnon")?;

    let started = Instant::now();
    let (parker, mut ready) = park(PARKED, SHORT_LIVED)?;
    let mut byte = [0_u8; 1];
    let read = ready.read(&mut byte);
    if !matches!(read, Ok(1)) || byte[0] != b'R' {
        let _ = kill_group(parker);
        bail!(
            "the parker could not fork them all ({read:?}, {:?})",
            byte[0] as char
        );
    }
    let parked_in = started.elapsed();

    let mut peak_anon = idle_anon;
    let sample = |peak: &mut u64| -> Result<u64> {
        let anon = status_kib(pid, "RssAnon")?;
        *peak = (*peak).max(anon);
        Ok(anon)
    };
    let want = (PARKED + SHORT_LIVED) as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    let live = loop {
        let s = d.status_json()?;
        sample(&mut peak_anon)?;
        if count(&s, "/events/process.spawn").saturating_sub(spawns0) >= want {
            break s;
        }
        if Instant::now() > deadline {
            let _ = kill_group(parker);
            bail!(
                "{} of {want} spawns counted within 30 s",
                count(&s, "/events/process.spawn").saturating_sub(spawns0)
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    let live_anon = status_kib(pid, "RssAnon")?;
    let live_rss = status_kib(pid, "VmRSS")?;

    kill_group(parker)?;
    let killed = Instant::now();
    // The parker's own exit too.
    let deadline = killed + Duration::from_secs(30);
    // The daemon's total once every exit was counted: what the store and
    // the output must reach.
    let mut counted: Option<u64> = None;
    let written = loop {
        let s = d.status_json()?;
        sample(&mut peak_anon)?;
        if let Some(total) = counted
            && caught_up(&s, total)
        {
            break s;
        }
        if counted.is_none() && count(&s, "/events/process.exit").saturating_sub(exits0) > want {
            counted = Some(count(&s, "/events/total"));
        }
        if Instant::now() > deadline {
            bail!(
                "within 30 s of the kill: {} of {} exits counted, caught up with {counted:?}: {}; {s}",
                count(&s, "/events/process.exit").saturating_sub(exits0),
                want + 1,
                counted.is_some_and(|t| caught_up(&s, t))
            );
        }
        thread::sleep(Duration::from_millis(50));
    };
    let written_in = killed.elapsed();

    // Nothing lost or dropped anywhere.
    ensure!(
        count(&written, "/lost/total") == 0,
        "the kernel lost records: {}",
        written.get("lost").unwrap_or(&Value::Null)
    );
    ensure!(
        count(&written, "/store/dropped") == 0 && count(&written, "/store/failed") == 0,
        "the store dropped rows: {}",
        written.get("store").unwrap_or(&Value::Null)
    );
    let outputs = written.get("outputs").cloned().unwrap_or(Value::Null);
    ensure!(
        outputs
            .as_array()
            .is_some_and(|o| !o.is_empty() && o.iter().all(|o| count(o, "/dropped") == 0)),
        "an output dropped events: {outputs}"
    );

    // The memory comes back.
    let deadline = Instant::now() + GIVE_BACK_WITHIN;
    let after_anon = loop {
        let anon = sample(&mut peak_anon)?;
        if anon <= ANON_AFTER_MAX_KIB || Instant::now() > deadline {
            break anon;
        }
        thread::sleep(Duration::from_millis(200));
    };
    let summary = format!(
        "RssAnon idle {idle_anon} KiB, {want} spawned ({PARKED} live) {live_anon} KiB (VmRSS {live_rss} KiB), \
         peak sampled {peak_anon} KiB, after the exit storm {after_anon} KiB; \
         parked in {parked_in:?}, exits written {written_in:?} after the kill; \
         live status: {} processes spawned",
        count(&live, "/events/process.spawn").saturating_sub(spawns0)
    );
    eprintln!("{summary}");
    ensure!(
        peak_anon <= ANON_PEAK_MAX_KIB,
        "anonymous memory peaked over {ANON_PEAK_MAX_KIB} KiB: {summary}"
    );
    ensure!(
        after_anon <= ANON_AFTER_MAX_KIB,
        "anonymous memory not back under {ANON_AFTER_MAX_KIB} KiB within {GIVE_BACK_WITHIN:?}: {summary}"
    );
    Ok(())
}

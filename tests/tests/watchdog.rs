//! The systemd notification protocol, spoken for real: systemd is not PID 1
//! here, so the test plays its part. It binds the unix datagram socket that
//! `NOTIFY_SOCKET` names, starts the daemon with `WATCHDOG_USEC` (and
//! `WATCHDOG_PID`) as systemd's `Type=notify` + `WatchdogSec=` would, and
//! reads what the daemon sends: `READY=1`, then `WATCHDOG=1` every
//! `WATCHDOG_USEC`/2 from its event loop. SIGSTOP of the daemon (what a hung
//! loop looks like from outside) must stop the pings: that is what makes
//! systemd restart it after `WatchdogSec=`. SIGCONT, and they resume. The
//! event loop's thread alone held (ptrace), the daemon's other threads
//! running on, must stop them too: they come from the loop, not from a
//! timer of their own. SIGTERM sends `STOPPING=1`.
//!
//! Run as root: `cargo test -p sensor-tests --test watchdog -- --test-threads=1`.

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use sensor_tests::{Checks, Daemon, TempDir, check};

/// The watchdog interval the tests give (`WatchdogSec=2`): pings every second.
const WATCHDOG_USEC: &str = "2000000";
const WATCHDOG: Duration = Duration::from_secs(2);

/// Datagrams received on the notify socket, each with when it came.
#[derive(Clone, Default)]
struct Received(Arc<Mutex<Vec<(Instant, String)>>>);

impl Received {
    /// Reads `socket` on a thread of its own until the test ends.
    fn listen(socket: UnixDatagram) -> Self {
        let received = Self::default();
        let sink = received.clone();
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                if let Ok(mut v) = sink.0.lock() {
                    v.push((Instant::now(), text));
                }
            }
        });
        received
    }

    fn all(&self) -> Vec<(Instant, String)> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// When each message holding the line `line` came.
    fn times_of(&self, line: &str) -> Vec<Instant> {
        self.all()
            .into_iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .map(|(t, _)| t)
            .collect()
    }

    /// Waits up to `timeout` for a message with the line `line` after `after`.
    fn wait_for(&self, line: &str, after: Instant, timeout: Duration) -> Option<Instant> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(t) = self.times_of(line).into_iter().find(|t| *t > after) {
                return Some(t);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn dump(&self) -> String {
        let all = self.all();
        let first = all.first().map(|(t, _)| *t);
        all.iter()
            .map(|(t, m)| {
                format!(
                    "+{:?} {:?}",
                    first.map(|f| t.duration_since(f)).unwrap_or_default(),
                    m
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Stops thread `tid` alone (PTRACE_SEIZE + PTRACE_INTERRUPT; SIGSTOP would
/// stop every thread of the process) and waits until it is stopped. The
/// caller must release it from this same thread.
fn hold_thread(tid: u32) -> Result<libc::pid_t> {
    let tid = libc::pid_t::try_from(tid)?;
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: ptrace(2) and waitpid(2) on a thread id, no memory passed.
    unsafe {
        ensure!(
            libc::ptrace(libc::PTRACE_SEIZE, tid, null, null) == 0,
            "PTRACE_SEIZE {tid}: {}",
            std::io::Error::last_os_error()
        );
        ensure!(
            libc::ptrace(libc::PTRACE_INTERRUPT, tid, null, null) == 0,
            "PTRACE_INTERRUPT {tid}: {}",
            std::io::Error::last_os_error()
        );
        let mut status = 0;
        ensure!(
            libc::waitpid(tid, &raw mut status, libc::__WALL) == tid,
            "waitpid {tid}: {}",
            std::io::Error::last_os_error()
        );
        ensure!(
            libc::WIFSTOPPED(status),
            "thread {tid} not stopped: {status:#x}"
        );
    }
    Ok(tid)
}

/// Lets a thread [`hold_thread`] stopped go on.
fn release_thread(tid: libc::pid_t) -> Result<()> {
    let null = std::ptr::null_mut::<libc::c_void>();
    // SAFETY: as in hold_thread.
    let rc = unsafe { libc::ptrace(libc::PTRACE_DETACH, tid, null, null) };
    ensure!(
        rc == 0,
        "PTRACE_DETACH {tid}: {}",
        std::io::Error::last_os_error()
    );
    Ok(())
}

/// A notify socket in `dir`, read on a thread.
fn notify_socket(dir: &Path) -> Result<(String, Received)> {
    let path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&path)?;
    Ok((path.display().to_string(), Received::listen(socket)))
}

/// `READY=1` once attached (with a status line), then `WATCHDOG=1` about
/// every second (`WATCHDOG_USEC`/2); none while the daemon is stopped for
/// longer than the watchdog interval; again after SIGCONT; `STOPPING=1` at
/// SIGTERM.
#[test]
fn ready_then_watchdog_pings_that_stop_while_the_daemon_is_stopped() -> Result<()> {
    let dir = TempDir::new("watchdog")?;
    let (path, rx) = notify_socket(dir.path())?;
    let t0 = Instant::now();
    let mut d = Daemon::start_full(
        None,
        &[],
        &[],
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", WATCHDOG_USEC)],
    )?;
    let mut c = Checks::new();
    // `status` exited 0: READY=1 was sent just before.
    let ready = rx.wait_for("READY=1", t0, Duration::from_secs(5));
    ensure!(ready.is_some(), "no READY=1:\n{}", rx.dump());
    let ready_msg = rx
        .all()
        .into_iter()
        .find(|(_, m)| m.lines().any(|l| l == "READY=1"))
        .map(|(_, m)| m)
        .unwrap_or_default();
    check!(
        c,
        ready_msg.contains("STATUS=attached and ready"),
        "READY=1 comes with a status line: {ready_msg:?}"
    );
    let ready = ready.unwrap_or_else(Instant::now);
    check!(
        c,
        rx.times_of("WATCHDOG=1").iter().all(|t| *t >= ready),
        "no watchdog ping before READY=1:\n{}",
        rx.dump()
    );

    // Pings while it runs.
    thread::sleep(Duration::from_secs(5));
    let pings: Vec<Instant> = rx
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t > ready)
        .collect();
    check!(
        c,
        pings.len() >= 3,
        "{} WATCHDOG=1 in the 5 s after READY=1 (every 1 s expected):\n{}",
        pings.len(),
        rx.dump()
    );
    let widest = pings
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    check!(
        c,
        widest < WATCHDOG,
        "pings at most the watchdog interval apart (widest gap {widest:?})"
    );

    // SIGSTOP: no ping for longer than the watchdog interval, the point at
    // which systemd would restart the daemon.
    d.signal(libc::SIGSTOP);
    // A ping already in flight may still arrive.
    thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    thread::sleep(WATCHDOG + Duration::from_secs(2));
    let while_stopped: Vec<Instant> = rx
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t > stopped)
        .collect();
    check!(
        c,
        while_stopped.is_empty(),
        "{} WATCHDOG=1 while the daemon was stopped:\n{}",
        while_stopped.len(),
        rx.dump()
    );
    let resumed = Instant::now();
    d.signal(libc::SIGCONT);
    check!(
        c,
        rx.wait_for("WATCHDOG=1", resumed, WATCHDOG).is_some(),
        "no WATCHDOG=1 within {WATCHDOG:?} of SIGCONT:\n{}",
        rx.dump()
    );
    d.check_alive()?;
    let (ok, _) = d.status_text()?;
    check!(c, ok, "ready after SIGCONT");

    // Only the event loop held, the rest of the daemon running on: its main
    // thread (the loop that reads the ring buffer and ticks) is stopped with
    // a ptrace interrupt; its other threads (outputs, store) go on. Pings
    // sent by a thread of their own would go on too; the loop's stop.
    let held = hold_thread(d.pid())?;
    thread::sleep(Duration::from_millis(300));
    let stopped = Instant::now();
    thread::sleep(WATCHDOG + Duration::from_secs(2));
    let while_held = rx
        .times_of("WATCHDOG=1")
        .into_iter()
        .filter(|t| *t > stopped)
        .count();
    let resumed = Instant::now();
    release_thread(held)?;
    check!(
        c,
        while_held == 0,
        "{while_held} WATCHDOG=1 while the event loop's thread was held:\n{}",
        rx.dump()
    );
    check!(
        c,
        rx.wait_for("WATCHDOG=1", resumed, WATCHDOG).is_some(),
        "no WATCHDOG=1 within {WATCHDOG:?} of releasing the loop:\n{}",
        rx.dump()
    );
    d.check_alive()?;

    let stopping = Instant::now();
    d.stop()?;
    check!(
        c,
        rx.wait_for("STOPPING=1", stopping, Duration::from_secs(5))
            .is_some(),
        "no STOPPING=1 at SIGTERM:\n{}",
        rx.dump()
    );
    c.finish()
}

/// `WATCHDOG_PID` names the process the watchdog is meant for (systemd sets
/// it to the main pid): another process's pid means no pings (but READY=1
/// all the same); the daemon's own pid means pings.
#[test]
fn watchdog_pid_decides_whether_the_daemon_pings() -> Result<()> {
    let mut c = Checks::new();
    let dir = TempDir::new("watchdog-pid")?;

    // WATCHDOG_PID of another process (init).
    let (path, rx) = notify_socket(dir.path())?;
    let since = Instant::now();
    let d = Daemon::start_full(
        None,
        &[],
        &[],
        &[
            ("NOTIFY_SOCKET", &path),
            ("WATCHDOG_USEC", WATCHDOG_USEC),
            ("WATCHDOG_PID", "1"),
        ],
    )?;
    check!(
        c,
        rx.wait_for("READY=1", since, Duration::from_secs(5))
            .is_some(),
        "READY=1 with another process's WATCHDOG_PID:\n{}",
        rx.dump()
    );
    thread::sleep(WATCHDOG + Duration::from_secs(1));
    check!(
        c,
        rx.times_of("WATCHDOG=1").is_empty(),
        "WATCHDOG=1 although WATCHDOG_PID names pid 1:\n{}",
        rx.dump()
    );
    drop(d);

    // WATCHDOG_PID of the daemon itself: a shell exports its own pid, then
    // execs the daemon in place (same pid).
    let own = dir.path().join("own");
    std::fs::create_dir_all(&own)?;
    let (path, rx) = notify_socket(&own)?;
    let since = Instant::now();
    let d = Daemon::start_full(
        None,
        &[],
        &["/bin/sh", "-c", "export WATCHDOG_PID=$$; exec \"$@\"", "sh"],
        &[("NOTIFY_SOCKET", &path), ("WATCHDOG_USEC", WATCHDOG_USEC)],
    )?;
    check!(
        c,
        rx.wait_for("WATCHDOG=1", since, WATCHDOG + Duration::from_secs(2))
            .is_some(),
        "no WATCHDOG=1 with WATCHDOG_PID = the daemon's pid {}:\n{}",
        d.pid(),
        rx.dump()
    );
    c.finish()
}

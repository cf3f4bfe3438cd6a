//! The canary: proof, every `[daemon] canary_interval_secs`, that the kernel
//! path still reports what happens on the host.
//!
//! Each round the daemon opens a loopback TCP listener on a port of its own
//! and starts a child that execs the sensor binary (`/proc/self/exe`, hidden
//! subcommand [`SUBCOMMAND`], a per-round nonce in argv), connects to that
//! port and sends the nonce. The kernel must report the child's exec (the
//! `sched_process_exec` tracepoint) and its connect (the cgroup connect hook
//! and the connect syscall's tracepoints), through the ring buffer to the
//! pipeline. When either record has not come within [`DEADLINE`], the sensor
//! is **blind**: a `sensor.blind` event to every output and the store,
//! `sensor status` not ready (exit 1, with the reason), the `sensor_blind`
//! gauge at 1. The first later round that sees both restores sight: a
//! `sensor.blind` with `restored: true`, ready again.
//!
//! # Which records are the canary's
//!
//! A record is the canary's when the kernel says it comes from the child's
//! process: its tgid is the child's pid and its start time the child's (read
//! from /proc while the daemon holds the child unreaped, so the pid cannot
//! be reused meanwhile). Nothing a process can choose makes a record carry
//! another process's tgid and start time: argv, the nonce (readable in
//! /proc/PID/cmdline by anyone) and the port (any local process can connect
//! to it) only describe what the round expects of the child's records, they
//! never make a record the canary's. So an agent can neither fake a round's
//! success while the kernel path is broken (its own exec or connect is not
//! the child's) nor hide its own records by dressing them up as the
//! canary's (they are reported as usual). The canary's records are not user
//! events: they are swallowed before attribution.
//!
//! The check on the hot path is one comparison of the record's tgid with the
//! few pids of live canary children (none between rounds but the last one
//! until its exit record).
//!
//! # What it proves, and what not
//!
//! A round proves that, at that moment, an exec and an IPv4 connect of a
//! process outside every run come through the tracepoint, the cgroup hook,
//! the ring buffer and the reader. It does not prove that every process is
//! seen (a program of an agent's own could filter, the per-run maps could be
//! edited: see the integrity check in [`crate::loader::integrity`]), nor
//! anything between two rounds: rounds come every interval, each a random
//! 0–25 % early, so a blindness cannot be timed around them.
//!
//! A round that cannot even start (no fork, no listener) counts as failed:
//! the sensor cannot show that it sees, and says so.

use std::{
    collections::BTreeSet,
    io::Read as _,
    net::{Ipv4Addr, SocketAddrV4, TcpListener},
    os::unix::process::CommandExt as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use crate::{
    event::{Blind, Timestamp},
    record::RawEvent,
};

/// The hidden subcommand the child runs.
pub const SUBCOMMAND: &str = "canary";
/// How long a round's records may take. On a healthy host they come within
/// milliseconds; this absorbs a loaded one.
pub const DEADLINE: Duration = Duration::from_secs(5);
/// How long a failing round may wait for a reader that is behind (records
/// still in the ring buffer) before it is judged all the same.
pub const DEADLINE_BEHIND: Duration = Duration::from_secs(15);
/// How long the child may wait for its connect.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Children whose exit record has not come yet, at most.
const LINGERING: usize = 4;
/// `AF_INET`.
const AF_INET: u16 = 2;

/// What a record of the canary showed.
const EXEC: &str = "exec";
const CONNECT: &str = "connect";

/// The canary's state in the pipeline.
pub struct Canary {
    interval: Duration,
    ns_per_tick: u64,
    /// Rounds started so far (the current one's number).
    round: u64,
    next: Instant,
    current: Option<Round>,
    /// (pid, start ticks) of every child whose records are swallowed, until
    /// its exit record (at most [`LINGERING`]).
    watched: Vec<(u32, u64)>,
    blind: Option<Blindness>,
    stats: CanaryStats,
}

/// The canary's counters (`sensor status`, `/metrics`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CanaryStats {
    pub rounds_ok: u64,
    pub rounds_failed: u64,
    /// When the last round that saw both records ended.
    pub last_ok: Option<SystemTime>,
}

/// One round in progress.
struct Round {
    number: u64,
    started: Instant,
    started_at: SystemTime,
    nonce: String,
    exec_seen: bool,
    connect_seen: bool,
    /// The child and what it runs against; `Err` when the round could not start.
    child: Result<RoundChild, SpawnError>,
}

/// Why a round could not start (the message is the round's detail).
#[derive(Debug, thiserror::Error)]
enum SpawnError {
    #[error("loopback listener: {0}")]
    Listener(std::io::Error),
    #[error("starting the child: {0}")]
    Child(std::io::Error),
}

struct RoundChild {
    child: Child,
    pid: u32,
    listener: TcpListener,
    port: u16,
}

/// The blindness in progress.
struct Blindness {
    since: SystemTime,
    rounds_failed: u64,
    /// What was missing in any failed round.
    missing: BTreeSet<&'static str>,
    /// What the last report said was missing.
    reported: Vec<&'static str>,
    /// The last failed round, and what it found.
    last_round: u64,
    last_missing: Vec<&'static str>,
    last_detail: String,
}

/// What a tick of the canary found: an event to emit.
#[derive(Debug, Clone)]
pub enum Finding {
    /// A round failed (the first, or one missing other records than the last
    /// report said).
    Blind(Blind),
    /// A round saw both records after a blindness.
    Restored(Blind),
}

impl Canary {
    /// A canary with rounds every `interval`, the first at the next tick.
    #[must_use]
    pub fn new(interval: Duration, ns_per_tick: u64) -> Self {
        Self {
            interval,
            ns_per_tick: ns_per_tick.max(1),
            round: 0,
            next: Instant::now(),
            current: None,
            watched: Vec::new(),
            blind: None,
            stats: CanaryStats::default(),
        }
    }

    /// The interval between rounds.
    #[must_use]
    pub const fn interval(&self) -> Duration {
        self.interval
    }

    /// Whether the record of process `tgid` may be the canary's (the hot
    /// path: one comparison per child watched, none between rounds).
    #[inline]
    #[must_use]
    pub fn watches(&self, tgid: u32) -> bool {
        self.watched.iter().any(|(pid, _)| *pid == tgid)
    }

    /// Takes a record of a watched pid: true when it is the canary's (it is
    /// then not reported), false when the pid is the canary's but the
    /// process is another (a reused pid: reported as usual).
    pub fn observe(&mut self, raw: &RawEvent) -> bool {
        let h = raw.header();
        let (tgid, start_ns) = (h.tgid, h.start_ns);
        let Some(i) = self.watched.iter().position(|(pid, ticks)| {
            *pid == tgid
                // 0: reported outside a syscall, with no task to read; the
                // pid is the child's while it is watched and unreaped.
                && (start_ns == 0 || start_ns / self.ns_per_tick == *ticks)
        }) else {
            return false;
        };
        let current = self
            .current
            .as_mut()
            .filter(|r| r.child.as_ref().is_ok_and(|c| c.pid == tgid));
        match raw {
            RawEvent::Exec {
                strings,
                failed: false,
                ..
            } => {
                if let Some(r) = current
                    && contains(&strings.argv, r.nonce.as_bytes())
                {
                    r.exec_seen = true;
                }
            }
            RawEvent::Connect { data, .. } => {
                if let Some(r) = current
                    && let Ok(c) = &r.child
                    && data.family == AF_INET
                    && data.addr[..4] == [127, 0, 0, 1]
                    && data.port == c.port
                {
                    r.connect_seen = true;
                }
            }
            RawEvent::Exit { .. } => {
                // The child is gone: nothing more will come from it.
                self.watched.swap_remove(i);
            }
            _ => {}
        }
        true
    }

    /// The canary's step on the pipeline's tick: judges the current round
    /// (early when both records came, at [`DEADLINE`] otherwise) and starts
    /// the next one when it is due. `caught_up`: the reader emptied the ring
    /// buffer just before; while it is behind, the round's records may still
    /// be in the ring, and a failing round waits (up to [`DEADLINE_BEHIND`]).
    pub fn tick(&mut self, now: Instant, caught_up: bool) -> Option<Finding> {
        let due = self.current.as_ref().is_some_and(|round| {
            let age = now.duration_since(round.started);
            (round.exec_seen && round.connect_seen)
                || (age >= DEADLINE && caught_up)
                || age >= DEADLINE_BEHIND
        });
        let finding = match self.current.take_if(|_| due) {
            Some(round) => self.judge(round),
            None => None,
        };
        if self.current.is_none() && now >= self.next {
            self.start(now);
        }
        finding
    }

    /// Whether a round waits for its records (the pipeline drains the ring
    /// before judging it).
    #[must_use]
    pub fn pending(&self) -> bool {
        self.current.is_some()
    }

    /// The counters.
    #[must_use]
    pub fn stats(&self) -> &CanaryStats {
        &self.stats
    }

    /// Whether the sensor is blind now.
    #[must_use]
    pub const fn is_blind(&self) -> bool {
        self.blind.is_some()
    }

    /// What `sensor status` shows of the canary.
    #[must_use]
    pub fn status(&self) -> crate::status::CanaryStatus {
        crate::status::CanaryStatus {
            interval_secs: self.interval.as_secs(),
            rounds_ok: self.stats.rounds_ok,
            rounds_failed: self.stats.rounds_failed,
            last_ok_ms: self.stats.last_ok.map(unix_ms),
            blind: self.blind.as_ref().map(|b| crate::status::BlindStatus {
                since_ms: unix_ms(b.since),
                missing: b.last_missing.iter().map(|m| (*m).to_owned()).collect(),
                round: b.last_round,
                detail: b.last_detail.clone(),
            }),
        }
    }

    fn start(&mut self, now: Instant) {
        self.round += 1;
        let id = uuid::Uuid::now_v7();
        let nonce = id.simple().to_string();
        // The next round a random 0-25 % early (the uuid's last bytes are random).
        let bytes = id.as_bytes();
        let jitter = f64::from(u16::from_le_bytes([bytes[14], bytes[15]])) / 65_536.0;
        self.next = now + self.interval.mul_f64(1.0 - 0.25 * jitter);
        let child = spawn(&nonce);
        if let Ok(c) = &child {
            match crate::identity::proc_start(c.pid) {
                Some((ticks, _)) => {
                    if self.watched.len() >= LINGERING {
                        self.watched.remove(0);
                    }
                    self.watched.push((c.pid, ticks));
                }
                None => tracing::warn!(pid = c.pid, "canary: cannot read the child's start time"),
            }
        }
        self.current = Some(Round {
            number: self.round,
            started: now,
            started_at: SystemTime::now(),
            nonce,
            exec_seen: false,
            connect_seen: false,
            child,
        });
    }

    /// Ends a round: reaps the child, counts, and says what changed.
    fn judge(&mut self, round: Round) -> Option<Finding> {
        let ok = round.exec_seen && round.connect_seen;
        let mut missing = Vec::new();
        if !round.exec_seen {
            missing.push(EXEC);
        }
        if !round.connect_seen {
            missing.push(CONNECT);
        }
        let ran = match round.child {
            Ok(c) => finish(c, &round.nonce),
            Err(e) => format!("the canary could not be started: {e}"),
        };
        if ok {
            self.stats.rounds_ok += 1;
            self.stats.last_ok = Some(SystemTime::now());
            let blindness = self.blind.take()?;
            let detail = format!(
                "round {}: the canary's exec and connect came through the kernel again, after {} \
                 failed round(s)",
                round.number, blindness.rounds_failed
            );
            tracing::warn!(round = round.number, "sensor.blind: sight restored");
            return Some(Finding::Restored(Blind {
                restored: true,
                missing: blindness.missing.into_iter().collect(),
                since: Timestamp(blindness.since),
                until: Some(Timestamp(SystemTime::now())),
                round: round.number,
                rounds_failed: blindness.rounds_failed,
                detail,
            }));
        }
        self.stats.rounds_failed += 1;
        let records: Vec<&str> = missing
            .iter()
            .map(|m| match *m {
                EXEC => "process.exec",
                _ => "network.connect",
            })
            .collect();
        let detail = format!(
            "round {}: no {} record of the canary came through the kernel within {} s; {ran}",
            round.number,
            records.join(" or "),
            DEADLINE.as_secs()
        );
        let blindness = self.blind.get_or_insert_with(|| Blindness {
            since: round.started_at,
            rounds_failed: 0,
            missing: BTreeSet::new(),
            reported: Vec::new(),
            last_round: 0,
            last_missing: Vec::new(),
            last_detail: String::new(),
        });
        blindness.rounds_failed += 1;
        blindness.last_round = round.number;
        blindness.last_missing.clone_from(&missing);
        blindness.last_detail.clone_from(&detail);
        blindness.missing.extend(missing.iter().copied());
        tracing::error!(round = round.number, missing = ?missing, %detail, "sensor.blind");
        if blindness.reported == missing {
            return None;
        }
        blindness.reported.clone_from(&missing);
        Some(Finding::Blind(Blind {
            restored: false,
            missing,
            since: Timestamp(blindness.since),
            until: None,
            round: round.number,
            rounds_failed: blindness.rounds_failed,
            detail,
        }))
    }
}

/// Starts the round's listener and child.
fn spawn(nonce: &str) -> Result<RoundChild, SpawnError> {
    let listener = TcpListener::bind(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))
        .map_err(SpawnError::Listener)?;
    let port = listener.local_addr().map_err(SpawnError::Listener)?.port();
    listener
        .set_nonblocking(true)
        .map_err(SpawnError::Listener)?;
    // The running binary, even when its file was replaced or removed since.
    let child = Command::new("/proc/self/exe")
        .arg0("sensor")
        .args([
            SUBCOMMAND,
            "--port",
            &port.to_string(),
            "--nonce",
            nonce,
        ])
        // Nothing of the daemon's: no NOTIFY_SOCKET, no tokens.
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(SpawnError::Child)?;
    Ok(RoundChild {
        pid: child.id(),
        child,
        listener,
        port,
    })
}

/// Reaps the child (killed if it still runs) and says what it did, as seen
/// from user space: whether it reached the listener with the nonce.
fn finish(mut c: RoundChild, nonce: &str) -> String {
    let status = match c.child.try_wait() {
        Ok(Some(s)) => s.to_string(),
        Ok(None) => {
            let _ = c.child.kill();
            match c.child.wait() {
                Ok(s) => format!("still running at the deadline, killed ({s})"),
                Err(e) => format!("still running at the deadline, killed (wait: {e})"),
            }
        }
        Err(e) => format!("wait: {e}"),
    };
    // Any local process may connect too: look at a few.
    let mut reached = false;
    for _ in 0..8 {
        let Ok((mut stream, _)) = c.listener.accept() else {
            break;
        };
        let _ = stream.set_nonblocking(true);
        let mut buf = [0u8; 64];
        if let Ok(n) = stream.read(&mut buf)
            && contains(&buf[..n], nonce.as_bytes())
        {
            reached = true;
            break;
        }
    }
    format!(
        "the canary (pid {}) {} the daemon's loopback listener and ended: {status}",
        c.pid,
        if reached { "reached" } else { "did NOT reach" }
    )
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// The child's part (`sensor canary --port P --nonce N`): connect to the
/// daemon's listener on 127.0.0.1:P and send the nonce. Exit status 0 when
/// it did.
pub fn child(port: u16, nonce: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let mut stream = std::net::TcpStream::connect_timeout(&addr, CONNECT_TIMEOUT)?;
    stream.write_all(nonce.as_bytes())
}

#[cfg(test)]
mod tests {
    use sensor_common::event::{ConnectData, EventHeader, ExecData, ExitData};

    use super::*;
    use crate::record::ExecStrings;

    const TICK_NS: u64 = 10_000_000;

    fn header(tgid: u32, start_ns: u64) -> EventHeader {
        EventHeader {
            tgid,
            start_ns,
            ..EventHeader::default()
        }
    }

    fn exec(tgid: u32, start_ns: u64, argv: &[u8]) -> RawEvent {
        RawEvent::Exec {
            header: header(tgid, start_ns),
            data: ExecData::default(),
            strings: ExecStrings {
                argv: argv.to_vec(),
                ..ExecStrings::default()
            },
            failed: false,
        }
    }

    fn connect(tgid: u32, start_ns: u64, port: u16) -> RawEvent {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[127, 0, 0, 1]);
        RawEvent::Connect {
            header: header(tgid, start_ns),
            data: ConnectData {
                family: AF_INET,
                port,
                addr,
                ..ConnectData::default()
            },
        }
    }

    /// A canary whose current round's child is this test process's child
    /// `sleep` (a real process to reap), with its pid and start time.
    fn with_round(canary: &mut Canary) -> (u32, u64, u16, String) {
        let child = Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id();
        let (ticks, _) = crate::identity::proc_start(pid).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        canary.round += 1;
        canary.watched.push((pid, ticks));
        let nonce = format!("nonce-{}", canary.round);
        canary.current = Some(Round {
            number: canary.round,
            started: Instant::now(),
            started_at: SystemTime::now(),
            nonce: nonce.clone(),
            exec_seen: false,
            connect_seen: false,
            child: Ok(RoundChild {
                child,
                pid,
                listener,
                port,
            }),
        });
        (pid, ticks * TICK_NS, port, nonce)
    }

    #[test]
    fn only_the_childs_own_records_count_and_are_swallowed() {
        let mut c = Canary::new(Duration::from_secs(30), TICK_NS);
        let (pid, start, port, nonce) = with_round(&mut c);
        let argv = format!("sensor\0canary\0--nonce\0{nonce}\0");
        // Another process with the canary's argv and port: not the canary's.
        assert!(!c.watches(pid + 1));
        // The canary's pid with another start time (a reused pid): reported.
        assert!(c.watches(pid));
        assert!(!c.observe(&exec(pid, start + 5 * TICK_NS, argv.as_bytes())));
        assert!(!c.observe(&connect(pid, start + 5 * TICK_NS, port)));
        let r = c.current.as_ref().unwrap();
        assert!(!r.exec_seen && !r.connect_seen);
        // The child's exec without the nonce is swallowed but proves nothing.
        assert!(c.observe(&exec(pid, start, b"sensor\0canary\0")));
        assert!(!c.current.as_ref().unwrap().exec_seen);
        // A connect of the child elsewhere: swallowed, not the round's.
        assert!(c.observe(&connect(pid, start, port.wrapping_add(1))));
        assert!(!c.current.as_ref().unwrap().connect_seen);
        assert!(c.observe(&exec(pid, start, argv.as_bytes())));
        assert!(c.observe(&connect(pid, start + TICK_NS / 2, port)));
        let r = c.current.as_ref().unwrap();
        assert!(r.exec_seen && r.connect_seen);
        // Seen: judged at the next tick, healthy, nothing to report.
        assert!(c.tick(Instant::now(), true).is_none());
        assert_eq!(c.stats().rounds_ok, 1);
        // The child's exit record after the round: swallowed, then forgotten.
        assert!(c.observe(&RawEvent::Exit {
            header: header(pid, start),
            data: ExitData::default(),
        }));
        assert!(!c.watched.iter().any(|(p, _)| *p == pid));
        c.current = None;
    }

    #[test]
    fn a_round_missing_a_record_makes_it_blind_until_one_sees_both() {
        let mut c = Canary::new(Duration::from_secs(3600), TICK_NS);
        c.next = Instant::now() + Duration::from_secs(3600);
        // Round 1: only the exec comes; judged at the deadline.
        let (pid, start, _, nonce) = with_round(&mut c);
        assert!(c.observe(&exec(pid, start, nonce.as_bytes())));
        assert!(
            c.tick(Instant::now(), true).is_none(),
            "not judged before the deadline"
        );
        let later = Instant::now() + DEADLINE;
        assert!(
            c.tick(later, false).is_none(),
            "not judged while the reader is behind"
        );
        let Some(Finding::Blind(b)) = c.tick(later, true) else {
            panic!("no blind finding");
        };
        assert!(!b.restored);
        assert_eq!(b.missing, ["connect"]);
        assert_eq!(b.round, 1);
        assert_eq!(b.rounds_failed, 1);
        assert!(b.detail.contains("network.connect"), "{}", b.detail);
        assert!(b.detail.contains("killed"), "{}", b.detail);
        assert!(c.is_blind());
        assert_eq!(c.status().blind.unwrap().missing, ["connect"]);
        // Round 2: the same missing: counted, not reported again.
        let (pid, start, _, nonce) = with_round(&mut c);
        assert!(c.observe(&exec(pid, start, nonce.as_bytes())));
        assert!(c.tick(Instant::now() + DEADLINE, true).is_none());
        // Round 3: nothing at all: reported (what is missing changed).
        with_round(&mut c);
        let Some(Finding::Blind(b)) = c.tick(Instant::now() + DEADLINE, true) else {
            panic!("no second report");
        };
        assert_eq!(b.missing, ["exec", "connect"]);
        assert_eq!(b.rounds_failed, 3);
        // Round 4 sees both: restored, with everything that was missing.
        let (pid, start, port, nonce) = with_round(&mut c);
        assert!(c.observe(&exec(pid, start, nonce.as_bytes())));
        assert!(c.observe(&connect(pid, start, port)));
        let Some(Finding::Restored(b)) = c.tick(Instant::now(), true) else {
            panic!("not restored");
        };
        assert!(b.restored);
        assert_eq!(b.missing, ["connect", "exec"]);
        assert_eq!(b.rounds_failed, 3);
        assert!(b.until.is_some());
        assert!(!c.is_blind());
        assert!(c.status().blind.is_none());
        assert_eq!(c.stats().rounds_failed, 3);
        assert_eq!(c.stats().rounds_ok, 1);
    }

    #[test]
    fn a_round_that_cannot_start_is_a_failed_round() {
        let mut c = Canary::new(Duration::from_secs(3600), TICK_NS);
        c.round = 1;
        c.current = Some(Round {
            number: 1,
            started: Instant::now(),
            started_at: SystemTime::now(),
            nonce: "n".into(),
            exec_seen: false,
            connect_seen: false,
            child: Err(SpawnError::Child(std::io::Error::other("no pids left"))),
        });
        c.next = Instant::now() + Duration::from_secs(3600);
        let Some(Finding::Blind(b)) = c.tick(Instant::now() + DEADLINE, true) else {
            panic!("no blind finding");
        };
        assert_eq!(b.missing, ["exec", "connect"]);
        assert!(b.detail.contains("could not be started"), "{}", b.detail);
    }

    #[test]
    fn the_child_connects_and_sends_the_nonce() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        child(port, "n0nce").unwrap();
        let (mut s, _) = listener.accept().unwrap();
        let mut got = String::new();
        s.read_to_string(&mut got).unwrap();
        assert_eq!(got, "n0nce");
    }
}

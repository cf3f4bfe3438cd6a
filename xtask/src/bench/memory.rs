//! Daemon RSS with many live processes and many live runs (issue 8 item 4).
//!
//! A parker process (forked from xtask) forks `count` children that block in
//! pause(); with `launch`, each child first registers itself as a run over the
//! control socket. The parker and its children share a process group:
//! SIGTERM to the group kills the children (the parker ignores it), the parker
//! reaps them and exits.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use super::{
    Env, Results,
    daemon::{Daemon, event_count, lost_total, many_runs_config},
};

const PID_MAX: &str = "/proc/sys/kernel/pid_max";
const THREADS_MAX: &str = "/proc/sys/kernel/threads-max";

/// A sysctl raised for the bench and restored on drop.
pub struct Raised {
    path: &'static str,
    old: Option<String>,
}

impl Raised {
    /// Raise `path` to at least `min` (no change when it is already there).
    pub fn at_least(path: &'static str, min: u64) -> Result<Self> {
        let old = fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
        let current: u64 = old
            .trim()
            .parse()
            .with_context(|| format!("{path} is not a number: {old:?}"))?;
        if current >= min {
            return Ok(Self { path, old: None });
        }
        fs::write(path, min.to_string())
            .with_context(|| format!("cannot raise {path} from {current} to {min}"))?;
        Ok(Self {
            path,
            old: Some(old.trim().to_owned()),
        })
    }
}

impl Drop for Raised {
    fn drop(&mut self) {
        if let Some(old) = &self.old
            && let Err(err) = fs::write(self.path, old)
        {
            eprintln!("xtask bench: cannot restore {} to {old}: {err}", self.path);
        }
    }
}

/// Raise pid_max and threads-max so that `count` more processes fit.
pub fn make_room(count: usize) -> Result<Vec<Raised>> {
    let count = count as u64;
    let mut raised = Vec::new();
    if count + 20_000 > 32_768 {
        raised.push(Raised::at_least(PID_MAX, 4_194_304)?);
    }
    raised.push(Raised::at_least(THREADS_MAX, count * 2 + 20_000)?);
    Ok(raised)
}

/// The parker and its parked children; Drop kills and reaps them.
pub struct Parked {
    pid: libc::pid_t,
    pub count: usize,
    reaped: bool,
}

/// Fork a parker with `count` children blocked in pause(). With `launch`
/// (the control socket), each child registers itself as the first process of
/// a run before it blocks. Returns once all are parked.
pub fn park(count: usize, launch: Option<&Path>) -> Result<Parked> {
    let mut fds = [0; 2];
    // SAFETY: fds is a writable array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2 failed");
    }
    let [read_fd, write_fd] = fds;
    // SAFETY: the child only calls async-signal-safe functions and, with
    // `launch`, std's Unix socket calls with no allocation (xtask has only
    // the calling thread here: the storms have ended).
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork failed");
    }
    if pid == 0 {
        // SAFETY: the parker: see `parker`.
        unsafe {
            libc::close(read_fd);
            parker(count, launch, write_fd)
        }
    }
    // SAFETY: write_fd is ours and no longer used here.
    unsafe { libc::close(write_fd) };
    let mut parked = Parked {
        pid,
        count: 0,
        reaped: false,
    };
    // SAFETY: read_fd is an open pipe end owned by nobody else.
    let mut progress = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(read_fd) };
    let mut buf = [0_u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(600);
    while parked.count < count {
        let n = progress
            .read(&mut buf)
            .context("cannot read the parker's pipe")?;
        if n == 0 {
            bail!(
                "the parker exited after parking {} of {count}",
                parked.count
            );
        }
        for &byte in &buf[..n] {
            match byte {
                b'1' => parked.count += 1,
                b'L' => bail!(
                    "a parked child's launch request failed after {} were parked",
                    parked.count
                ),
                _ => bail!(
                    "fork failed after {} of {count} processes (pid_max, threads-max, memory?)",
                    parked.count
                ),
            }
        }
        if Instant::now() >= deadline {
            bail!("only {} of {count} parked within 600 s", parked.count);
        }
    }
    Ok(parked)
}

/// The parker's body; never returns.
///
/// # Safety
/// Only in a child of fork().
unsafe fn parker(count: usize, launch: Option<&Path>, report: libc::c_int) -> ! {
    // SAFETY: plain syscalls on this process.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        libc::setpgid(0, 0);
        libc::signal(libc::SIGTERM, libc::SIG_IGN);
    }
    for index in 0..count {
        let mut ack = [0; 2];
        // SAFETY: ack is a writable array of two ints.
        if launch.is_some() && unsafe { libc::pipe(ack.as_mut_ptr()) } != 0 {
            break;
        }
        // SAFETY: fork in a single-threaded process.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            // SAFETY: report is our pipe end.
            unsafe { libc::write(report, b"F".as_ptr().cast(), 1) };
            break;
        }
        if pid == 0 {
            // SAFETY: the parked child.
            unsafe {
                libc::signal(libc::SIGTERM, libc::SIG_DFL);
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if let Some(socket) = launch {
                    let ok = launch_self(socket, index);
                    libc::write(ack[1], if ok { b"1" } else { b"L" }.as_ptr().cast(), 1);
                    libc::close(ack[0]);
                    libc::close(ack[1]);
                }
                libc::close(report);
                loop {
                    libc::pause();
                }
            }
        }
        let mut byte = b'1';
        if launch.is_some() {
            // SAFETY: ack is our pipe; byte is a writable byte.
            unsafe {
                libc::close(ack[1]);
                if libc::read(ack[0], (&raw mut byte).cast(), 1) != 1 {
                    byte = b'L';
                }
                libc::close(ack[0]);
            }
        }
        // SAFETY: report is our pipe end.
        unsafe { libc::write(report, (&raw const byte).cast(), 1) };
        if byte != b'1' {
            break;
        }
    }
    // SAFETY: report is our pipe end.
    unsafe { libc::close(report) };
    // Reap children until none are left (they die by SIGTERM to the group).
    loop {
        // SAFETY: waitpid with a null status pointer.
        let rc = unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) };
        if rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ECHILD) {
            break;
        }
    }
    // SAFETY: _exit never returns and runs no destructors of the parent's state.
    unsafe { libc::_exit(0) }
}

/// The launch request for this process, without allocating (after fork).
fn launch_self(socket: &Path, index: usize) -> bool {
    let mut request = [0_u8; 128];
    let len = {
        let mut cursor = std::io::Cursor::new(&mut request[..]);
        if writeln!(cursor, r#"{{"op":"launch","agent":"bench-rss-{index}"}}"#).is_err() {
            return false;
        }
        cursor.position() as usize
    };
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    if stream.write_all(&request[..len]).is_err() {
        return false;
    }
    let mut answer = [0_u8; 512];
    let mut got = 0;
    while got < answer.len() {
        match stream.read(&mut answer[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got += n;
                if answer[..got].contains(&b'\n') {
                    break;
                }
            }
        }
    }
    answer[..got].windows(10).any(|w| w == b"\"launched\"")
}

impl Parked {
    /// SIGTERM to the children, wait for the parker to reap them all.
    pub fn kill(mut self) -> Result<()> {
        self.terminate()
    }

    fn terminate(&mut self) -> Result<()> {
        if self.reaped {
            return Ok(());
        }
        self.reaped = true;
        // SAFETY: the group is the parker's, which we forked and not yet reaped.
        unsafe { libc::kill(-self.pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            // SAFETY: waitpid on our own child with a null status pointer.
            let rc = unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), libc::WNOHANG) };
            if rc != 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                // SAFETY: as above.
                unsafe {
                    libc::kill(-self.pid, libc::SIGKILL);
                    libc::waitpid(self.pid, std::ptr::null_mut(), 0);
                }
                bail!("the parked processes did not exit within 120 s of SIGTERM; killed");
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        // The parker reaps its children, so none is left a zombie.
        if let Err(err) = self.terminate() {
            eprintln!("xtask bench: {err:#}");
        }
    }
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    status_kib(pid, "VmRSS")
}

/// A "kB" field of /proc/PID/status (VmRSS, RssAnon, RssFile, RssShmem...).
pub fn status_kib(pid: u32, field: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .with_context(|| format!("{path} has no {field}"))
}

/// Daemon RSS with `count` live processes or runs.
#[derive(Debug, Clone)]
pub(super) struct MemoryResult {
    pub(super) name: &'static str,
    pub(super) count: usize,
    /// VmRSS of the idle daemon just before, KiB.
    pub(super) idle_kib: u64,
    pub(super) rss_kib: u64,
    /// RssAnon, RssFile and RssShmem at the same moment, KiB.
    pub(super) parts_kib: BTreeMap<&'static str, u64>,
    /// The target, when one applies at this count.
    pub(super) target_kib: Option<u64>,
}

/// Live processes parked for the RSS measurement (the target is set at 100k).
pub(super) const RSS_PROCESSES: usize = 100_000;
pub(super) const QUICK_RSS_PROCESSES: usize = 10_000;
/// Live runs for the RSS measurement.
pub(super) const RSS_RUNS: usize = 10_000;
pub(super) const QUICK_RSS_RUNS: usize = 1000;
/// How long the daemon may take to end the runs whose processes were killed.
pub(super) const RUNS_DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long after the daemon counted every parked process the memory is read.
pub(super) const LIVE_SETTLE: Duration = Duration::from_secs(3);
/// How long after the parked processes were killed the memory is read again.
pub(super) const EXITED_SETTLE: Duration = Duration::from_secs(8);
/// ≤ 64 MiB RSS at 100,000 live processes.
pub(super) const RSS_TARGET_KIB: u64 = 64 * 1024;

pub(super) fn rss_parts(pid: u32) -> BTreeMap<&'static str, u64> {
    ["RssAnon", "RssFile", "RssShmem"]
        .into_iter()
        .filter_map(|field| Some((field, status_kib(pid, field).ok()?)))
        .collect()
}

/// Starts a daemon, parks processes, then runs, and reads its VmRSS each time.
pub(super) fn measure(env: &Env, quick: bool, results: &mut Results) -> Result<()> {
    let processes = if quick {
        QUICK_RSS_PROCESSES
    } else {
        RSS_PROCESSES
    };
    let runs = if quick { QUICK_RSS_RUNS } else { RSS_RUNS };
    let _room = make_room(processes.max(runs))?;
    let config = many_runs_config(env)?;
    let daemon = Daemon::start(
        env,
        1000,
        &[
            "--output",
            "file:/dev/null",
            "--no-store",
            "--config",
            &config,
        ],
    )?;
    let pid = daemon.pid();

    measure_processes(&daemon, processes, NO_STORE, results)?;

    eprintln!("xtask bench: memory: launching {runs} runs");
    let idle_kib = rss_kib(pid)?;
    let parked = park(runs, Some(daemon.socket()))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let active = daemon
            .status_json()?
            .get("runs_active")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        if active >= runs as u64 {
            break;
        }
        if Instant::now() >= deadline {
            bail!("only {active} of {runs} runs became active within 120 s");
        }
        thread::sleep(Duration::from_millis(200));
    }
    let rss_kib = rss_kib(pid)?;
    let parts_kib = rss_parts(pid);
    parked.kill()?;
    eprintln!("  {runs} runs: VmRSS {rss_kib} KiB (idle {idle_kib} KiB)");
    // The daemon ends the runs as their processes exit: wait for that before
    // stopping it, so a slow stop and a slow run end are told apart.
    // A daemon busy ending runs may not answer `status` in time: retry.
    let killed = Instant::now();
    let mut unanswered = 0;
    loop {
        let active = daemon.status_json().map(|status| {
            status
                .get("runs_active")
                .and_then(Value::as_u64)
                .unwrap_or(0)
        });
        match &active {
            Ok(0) => {
                eprintln!(
                    "  all runs ended {:.1}s after their processes were killed ({unanswered} status requests unanswered meanwhile)",
                    killed.elapsed().as_secs_f64()
                );
                break;
            }
            Ok(_) => {}
            Err(_) => unanswered += 1,
        }
        if killed.elapsed() > RUNS_DRAIN_TIMEOUT {
            let state = match active {
                Ok(active) => format!("{active} of {runs} runs still active"),
                Err(err) => format!("the daemon does not answer `status` ({err:#})"),
            };
            results.problems.push(format!(
                "memory: {state} {} s after the processes of {runs} runs were killed",
                RUNS_DRAIN_TIMEOUT.as_secs()
            ));
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    results.memory.push(MemoryResult {
        name: "runs",
        count: runs,
        idle_kib,
        rss_kib,
        parts_kib,
        target_kib: None,
    });
    let status = daemon.status_json();
    daemon.stop()?;
    let lost = lost_total(&status?)?;
    if lost > 0 {
        bail!("the sensor lost {lost} events while processes were parked");
    }

    // The default configuration: the store on (`keep = "runs"`), a JSON
    // file output.
    let events = env.socket_dir.join("memory-events.jsonl");
    let output = format!("file:{}", events.display());
    let daemon = Daemon::start(env, 1001, &["--output", &output])?;
    let measured = measure_processes(&daemon, processes, DEFAULT_CONFIG, results);
    let status = daemon.status_json();
    daemon.stop()?;
    let _ = fs::remove_file(&events);
    measured?;
    let status = status?;
    let lost = lost_total(&status)?;
    let store_dropped = status
        .pointer("/store/dropped")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    if lost > 0 || store_dropped > 0 {
        bail!(
            "the default config lost {lost} events (store dropped {store_dropped}) while processes were parked"
        );
    }
    Ok(())
}

/// The names of the rows of one configuration: live, exited.
type RowNames = (&'static str, &'static str);
const NO_STORE: RowNames = ("processes", "processes, exited");
const DEFAULT_CONFIG: RowNames = (
    "processes, default config",
    "processes, exited, default config",
);

/// Parks `processes` processes, reads the daemon's memory once it counted
/// them all, kills them, reads it again [`EXITED_SETTLE`] later.
fn measure_processes(
    daemon: &Daemon,
    processes: usize,
    (live_name, exited_name): RowNames,
    results: &mut Results,
) -> Result<()> {
    let pid = daemon.pid();
    eprintln!("xtask bench: memory ({live_name}): parking {processes} processes");
    let idle_kib = rss_kib(pid)?;
    let before = event_count(&daemon.status_json()?, "process.spawn");
    let parked = park(processes, None)?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let seen = event_count(&daemon.status_json()?, "process.spawn").saturating_sub(before);
        if seen >= processes as u64 {
            break;
        }
        if Instant::now() >= deadline {
            bail!("the daemon saw {seen} of {processes} parked processes within 120 s");
        }
        thread::sleep(Duration::from_millis(200));
    }
    // Read once they are all counted, and again once the daemon is idle
    // with them live (the store gives its page cache back after 1 s
    // without events): the row is the latter, the JSON has both.
    let at_count_kib = rss_kib(pid)?;
    thread::sleep(LIVE_SETTLE);
    let rss_kib = rss_kib(pid)?;
    let mut parts_kib = rss_parts(pid);
    parts_kib.insert("VmRSS at count", at_count_kib);
    parked.kill()?;
    eprintln!(
        "  {processes} processes: VmRSS {rss_kib} KiB ({at_count_kib} KiB when all were counted; idle {idle_kib} KiB)"
    );
    results.memory.push(MemoryResult {
        name: live_name,
        count: processes,
        idle_kib,
        rss_kib,
        parts_kib,
        target_kib: (processes >= RSS_PROCESSES).then_some(RSS_TARGET_KIB),
    });

    // After the exit storm: the daemon gives back what it held once the
    // exits are written (the tick trims at most every 5 s).
    thread::sleep(EXITED_SETTLE);
    let rss_kib = self::rss_kib(pid)?;
    eprintln!("  {processes} processes exited: VmRSS {rss_kib} KiB");
    results.memory.push(MemoryResult {
        name: exited_name,
        count: processes,
        idle_kib,
        rss_kib,
        parts_kib: rss_parts(pid),
        target_kib: None,
    });
    Ok(())
}

//! `cargo xtask bench`: storm workloads × variants (bare, sensor, ...),
//! interleaved over several rounds.
//!
//! Each round runs every variant once, in alternating order (bare, sensor;
//! then sensor, bare; ...). A variant that needs a tool (the sensor daemon)
//! starts it, runs every workload under it, reads its counters and stops it.
//! The report is per workload and variant: median µs per op with min/max and
//! IQR, and the median over rounds of the per-round ratio to `bare`. The
//! Markdown table goes to stdout, the raw numbers to target/bench/results.json.
//!
//! The peers (auditd, bpftrace: see `peers`) are variants like the others;
//! their losses are reported, not failed on. `sensor+outputs` is the daemon
//! with three network outputs to real servers (`outputs`): its losses fail
//! like the other sensor variants', and its spools must empty after each
//! storm with nothing dropped or failed. After the rounds, separate
//! measurements: each kernel program's run time per storm op under
//! `kernel.bpf_stats_enabled` (`kernel_cost`: exact, where the storm ratios
//! carry a few percent of noise), kernel-to-output latency of a trickle of
//! execs (`latency`),
//! daemon RSS with many live processes and runs (`memory`), and the events/s
//! each network output delivers from its spool (`outputs`).
//!
//! Timing never fails the run; lost events or a broken tool (a daemon that
//! does not start, stop cleanly or see the storm, a storm that fails, a peer
//! that cannot be installed or started) do.

use std::{
    collections::BTreeMap,
    fs::{self, OpenOptions},
    io::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail};
use serde_json::{Value, json};

mod kernel_cost;
mod latency;
mod memory;
mod outage;
mod outputs;
mod peers;

use crate::{
    build::{self, Profile},
    setup,
    stats::{self, Summary},
    storm, util,
};

pub struct Options {
    pub quick: bool,
    pub rounds: Option<usize>,
    pub no_setup: bool,
    pub workloads: Vec<String>,
    pub sensor_bin: Option<PathBuf>,
}

const DEFAULT_ROUNDS: usize = 7;
const QUICK_ROUNDS: usize = 3;

/// One storm: what it does, how many ops, and which event kind the sensor must
/// count at least once per op.
struct Workload {
    name: &'static str,
    description: &'static str,
    ops: usize,
    quick_ops: usize,
    run: fn(usize) -> Result<Duration>,
    /// Cores the storm keeps busy (a per-op CPU cost c stretches its wall
    /// time by about c / cores).
    cores: usize,
    /// Event kinds the sensor reports at least once per op of this workload.
    kinds: &'static [&'static str],
}

impl Workload {
    fn ops(&self, quick: bool) -> usize {
        if quick { self.quick_ops } else { self.ops }
    }
}

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "exec",
        description: "exec storm: posix_spawn /bin/true and wait, 2 threads",
        ops: 10_000,
        quick_ops: 1000,
        run: storm::exec_storm,
        cores: storm::EXEC_THREADS,
        kinds: &["process.exec"],
    },
    Workload {
        name: "connect",
        description: "connect storm: loopback TCP connect, accept, close",
        ops: 60_000,
        quick_ops: 10_000,
        run: storm::connect_storm,
        // The client and the listener are pinned to one CPU.
        cores: 1,
        kinds: &["network.connect"],
    },
];

/// How the workloads run. `Bare` is the baseline every ratio refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    /// No tool running.
    Bare,
    /// `sensor daemon --output file:/dev/null` (audit only, no policy).
    Sensor,
    /// The daemon writing its local store and a JSON file (issue 8's "store
    /// and a file output").
    SensorStore,
    /// The same daemon with [`LIVE_RUNS`] agent runs live, and the storm
    /// itself inside a run: every storm process is entered in the run by the
    /// kernel at fork and attributed in user space.
    SensorRuns,
    /// The daemon with an enforce policy of [`ENFORCE_RULES`] rules loaded
    /// and the storm inside a run bound to it: every exec and connect of the
    /// storm is decided (and allowed) in the kernel.
    SensorEnforce,
    /// The daemon (`--no-store`) with three network outputs (syslog+tcp,
    /// HTTP HEC with gzip, NATS JetStream) to real servers on loopback
    /// (issue 7): see [`outputs`].
    SensorOutputs,
    /// auditd with rules for execve, connect and clone, written to its log.
    Auditd,
    /// bpftrace printing fork, exec, exit and connect to a file.
    Bpftrace,
}

const VARIANTS: &[Variant] = &[
    Variant::Bare,
    Variant::Sensor,
    Variant::SensorStore,
    Variant::SensorRuns,
    Variant::SensorEnforce,
    Variant::SensorOutputs,
    Variant::Auditd,
    Variant::Bpftrace,
];

/// Rules of the `sensor+enforce` policy (issue 5: "an enforce policy of 1,000 rules").
const ENFORCE_RULES: usize = 1000;

/// The `sensor+enforce` config: one enforce policy of [`ENFORCE_RULES`]
/// rules. Half are exec rules (exact files of /usr/bin, so each resolves to
/// its own identity, then /usr/bin/ itself, which is what allows the storm's
/// /bin/true: a file miss, then a parent-directory walk), half connect rules
/// (distinct /24s with port ranges, then 127.0.0.0/8 for the storm).
fn enforce_config(sensor_bin: &Path) -> Result<String> {
    let mut files: Vec<String> = fs::read_dir("/usr/bin")
        .context("cannot list /usr/bin")?
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.path().to_str().map(str::to_owned))
        // Not the storm's own binary, and no name a glob would read ("[").
        .filter(|p| !p.ends_with("/true") && !p.contains(['*', '?', '[']))
        .collect();
    files.sort();
    // The bench itself runs `sensor status` from inside the run.
    let sensor = sensor_bin
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", sensor_bin.display()))?;
    let exec_rules = ENFORCE_RULES / 2;
    files.truncate(exec_rules - 2);
    if files.len() < exec_rules - 2 {
        bail!(
            "/usr/bin has only {} files; {} exec rules need more",
            files.len(),
            exec_rules - 2
        );
    }
    let mut exec: Vec<String> = files.iter().map(|f| format!("{f:?}")).collect();
    exec.push(format!("{:?}", sensor.display().to_string()));
    exec.push("\"/usr/bin/\"".to_owned());
    let mut connect: Vec<String> = (0..ENFORCE_RULES / 2 - 1)
        .map(|i| {
            format!(
                "\"10.{}.{}.0/24:{}-{}\"",
                i / 256,
                i % 256,
                1000 + i,
                2000 + i
            )
        })
        .collect();
    connect.push("\"127.0.0.0/8\"".to_owned());
    Ok(format!(
        "[policy.bench]\nmode = \"enforce\"\nexec.allow = [{}]\nconnect.allow = [{}]\n",
        exec.join(", "),
        connect.join(", ")
    ))
}

/// Runs kept live during the `sensor+runs` variant (issue 4: "1,000 runs live").
const LIVE_RUNS: usize = 1000;
/// Fewer with --quick.
const QUICK_LIVE_RUNS: usize = 100;

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Sensor => "sensor",
            Self::SensorStore => "sensor+store",
            Self::SensorRuns => "sensor+runs",
            Self::SensorEnforce => "sensor+enforce",
            Self::SensorOutputs => "sensor+outputs",
            Self::Auditd => "auditd",
            Self::Bpftrace => "bpftrace",
        }
    }

    /// The sensor's own variants: their losses fail the bench.
    fn is_sensor(self) -> bool {
        matches!(
            self,
            Self::Sensor
                | Self::SensorStore
                | Self::SensorRuns
                | Self::SensorEnforce
                | Self::SensorOutputs
        )
    }

    fn is_peer(self) -> bool {
        matches!(self, Self::Auditd | Self::Bpftrace)
    }

    /// Start what this variant needs for one round.
    fn start(self, env: &Env, round: usize, quick: bool) -> Result<Tool> {
        match self {
            Self::Bare => Ok(Tool::None),
            Self::Sensor => {
                Daemon::start(env, round, &["--output", "file:/dev/null", "--no-store"])
                    .map(Tool::Sensor)
            }
            Self::SensorStore => {
                // One round's file at a time: the storms write hundreds of MB.
                let events = env.socket_dir.join("events.jsonl");
                let _ = fs::remove_file(&events);
                let output = format!("file:{}", events.display());
                let daemon = Daemon::start(env, round, &["--output", &output])?;
                Ok(Tool::Sensor(daemon))
            }
            Self::SensorRuns => {
                let daemon =
                    Daemon::start(env, round, &["--output", "file:/dev/null", "--no-store"])?;
                let runs = if quick { QUICK_LIVE_RUNS } else { LIVE_RUNS };
                let sleepers = daemon.start_runs(runs)?;
                // The storms run in this process: put it in a run too.
                daemon.launch_self("bench-storm", None)?;
                Ok(Tool::SensorRuns { daemon, sleepers })
            }
            Self::SensorEnforce => {
                let config = env.socket_dir.join("enforce.toml");
                fs::write(&config, enforce_config(&env.sensor_bin)?)
                    .with_context(|| format!("cannot write {}", config.display()))?;
                let config = config.display().to_string();
                let daemon = Daemon::start(
                    env,
                    round,
                    &[
                        "--output",
                        "file:/dev/null",
                        "--no-store",
                        "--config",
                        &config,
                    ],
                )?;
                daemon.launch_self("bench-storm", Some("bench"))?;
                Ok(Tool::Sensor(daemon))
            }
            Self::SensorOutputs => {
                // Fresh servers each round: what they store stays bounded.
                let servers = outputs::VariantServers::start(env)?;
                let mut args = vec!["--no-store".to_owned()];
                args.extend(servers.output_args()?);
                let args: Vec<&str> = args.iter().map(String::as_str).collect();
                let daemon = Daemon::start(env, round, &args)?;
                Ok(Tool::SensorOutputs { daemon, servers })
            }
            Self::Auditd => {
                if let Some(err) = &env.peers_missing {
                    bail!("auditd is not available: {err}");
                }
                peers::Auditd::start(&env.out_dir.join("auditd.log")).map(Tool::Auditd)
            }
            Self::Bpftrace => {
                if let Some(err) = &env.peers_missing {
                    bail!("bpftrace is not available: {err}");
                }
                peers::Bpftrace::start(&env.socket_dir).map(Tool::Bpftrace)
            }
        }
    }
}

/// What a variant runs while the workloads go.
enum Tool {
    None,
    Sensor(Daemon),
    SensorRuns {
        daemon: Daemon,
        sleepers: Vec<Child>,
    },
    /// The daemon and the servers its outputs deliver to (dropped after it).
    SensorOutputs {
        daemon: Daemon,
        servers: outputs::VariantServers,
    },
    Auditd(peers::Auditd),
    Bpftrace(peers::Bpftrace),
}

/// What a tool reports around one workload.
#[derive(Debug, Default, Clone)]
struct Observed {
    /// Events counted per expected kind while the workload ran.
    events: BTreeMap<String, u64>,
    /// Events the tool lost while the workload ran.
    lost: Option<u64>,
}

impl Tool {
    /// Counters before a workload (None for tools without counters).
    fn snapshot(&self) -> Result<Option<Value>> {
        match self {
            Self::None => Ok(None),
            Self::Sensor(daemon)
            | Self::SensorRuns { daemon, .. }
            | Self::SensorOutputs { daemon, .. } => daemon.status_json().map(Some),
            Self::Auditd(_) | Self::Bpftrace(_) => {
                self.peer_lost().map(|lost| Some(json!({"lost": lost})))
            }
        }
    }

    /// A peer's lost count so far (0 for the sensor's tools, which have
    /// their own counters).
    fn peer_lost(&self) -> Result<u64> {
        match self {
            Self::Auditd(auditd) => auditd.lost(),
            Self::Bpftrace(bpftrace) => bpftrace.lost(),
            _ => Ok(0),
        }
    }

    /// The processes whose CPU time is reported: the daemon, and for
    /// `sensor+outputs` its servers.
    fn processes(&self) -> Vec<(&'static str, u32)> {
        let mut processes: Vec<(&'static str, u32)> = self
            .daemon()
            .map(|daemon| ("daemon", daemon.child.id()))
            .into_iter()
            .collect();
        if let Self::SensorOutputs { servers, .. } = self {
            processes.extend(servers.processes());
        }
        processes
    }

    /// CPU seconds (user + system) each of [`Tool::processes`] used so far;
    /// for `sensor+outputs` also the daemon's threads, by name, as
    /// `thread:NAME`.
    fn cpu_seconds(&self) -> BTreeMap<String, f64> {
        let mut cpu: BTreeMap<String, f64> = self
            .processes()
            .into_iter()
            .filter_map(|(name, pid)| Some((name.to_owned(), cpu_seconds(pid).ok()?)))
            .collect();
        if let Self::SensorOutputs { daemon, .. } = self {
            for (name, seconds) in thread_cpu_seconds(daemon.child.id()) {
                cpu.insert(format!("thread:{name}"), seconds);
            }
        }
        cpu
    }

    fn daemon(&self) -> Option<&Daemon> {
        match self {
            Self::None | Self::Auditd(_) | Self::Bpftrace(_) => None,
            Self::Sensor(daemon)
            | Self::SensorRuns { daemon, .. }
            | Self::SensorOutputs { daemon, .. } => Some(daemon),
        }
    }

    /// Counters after a workload of `ops` ops, compared with `before`. Waits
    /// (bounded) for the reader to catch up with the storm.
    fn observe(&self, before: Option<&Value>, workload: &Workload, ops: usize) -> Result<Observed> {
        if matches!(self, Self::Auditd(_) | Self::Bpftrace(_)) {
            let before = before
                .and_then(|b| b.get("lost"))
                .and_then(Value::as_u64)
                .unwrap_or(0);
            return Ok(Observed {
                lost: Some(self.peer_lost()?.saturating_sub(before)),
                ..Observed::default()
            });
        }
        let (Some(daemon), Some(before)) = (self.daemon(), before) else {
            return Ok(Observed::default());
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let after = daemon.status_json()?;
            let mut observed = Observed {
                lost: Some(lost_total(&after)?.saturating_sub(lost_total(before)?)),
                ..Observed::default()
            };
            for kind in workload.kinds {
                let seen = event_count(&after, kind).saturating_sub(event_count(before, kind));
                observed.events.insert((*kind).to_owned(), seen);
            }
            let caught_up = observed.events.values().all(|&seen| seen >= ops as u64);
            if caught_up || Instant::now() >= deadline {
                return Ok(observed);
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stop the tool; returns its lost-event total for the round.
    fn finish(self) -> Result<Option<u64>> {
        match self {
            Self::None => Ok(None),
            Self::Auditd(auditd) => auditd.stop().map(Some),
            Self::Bpftrace(bpftrace) => bpftrace.stop().map(Some),
            Self::SensorRuns { daemon, sleepers } => {
                let status = daemon.status_json();
                for mut sleeper in sleepers {
                    let _ = sleeper.kill();
                    let _ = sleeper.wait();
                }
                let stopped = daemon.stop();
                let lost = status.and_then(|status| lost_total(&status));
                stopped?;
                Ok(Some(lost?))
            }
            Self::Sensor(daemon) | Self::SensorOutputs { daemon, .. } => {
                let status = daemon.status_json();
                let stopped = daemon.stop();
                let lost = status.and_then(|status| lost_total(&status));
                stopped?;
                let lost = lost?;
                Ok(Some(lost))
            }
        }
    }
}

/// User + system CPU seconds of process `pid` so far (/proc/PID/stat).
fn cpu_seconds(pid: u32) -> Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of the live threads of `pid`, summed by thread name.
fn thread_cpu_seconds(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let (Ok(name), Ok(seconds)) = (
            fs::read_to_string(dir.join("comm")),
            stat_cpu_seconds(&dir.join("stat").to_string_lossy()),
        ) else {
            continue;
        };
        *out.entry(name.trim().to_owned()).or_default() += seconds;
    }
    out
}

/// utime + stime of a /proc stat file, in seconds.
fn stat_cpu_seconds(path: &str) -> Result<f64> {
    let stat = fs::read_to_string(path).with_context(|| format!("cannot read {path}"))?;
    // After the command's closing parenthesis: state is field 3, utime 14, stime 15.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |field: usize| -> Result<u64> {
        fields
            .get(field - 3)
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("no field {field} in {path}: {stat:?}"))
    };
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    let per_second = if per_second > 0 {
        per_second as f64
    } else {
        100.0
    };
    Ok((ticks(14)? + ticks(15)?) as f64 / per_second)
}

fn lost_total(status: &Value) -> Result<u64> {
    status
        .pointer("/lost/total")
        .and_then(Value::as_u64)
        .context("`sensor status --json` has no lost.total count")
}

fn event_count(status: &Value, kind: &str) -> u64 {
    status
        .get("events")
        .and_then(|events| events.get(kind))
        .and_then(Value::as_u64)
        .unwrap_or(0)
}

/// Where things are for this bench run.
struct Env {
    sensor_bin: PathBuf,
    /// Short directory for the control socket (sun_path is 108 bytes).
    socket_dir: PathBuf,
    /// target/bench: results and daemon logs.
    out_dir: PathBuf,
    /// Why auditd and bpftrace could not be installed, if so.
    peers_missing: Option<String>,
    /// The release-built HTTP receiver of the outputs benchmark, or why it
    /// could not be built.
    receiver_bin: Result<PathBuf, String>,
}

const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// A `sensor daemon` started for one round.
struct Daemon {
    child: Child,
    bin: PathBuf,
    socket: PathBuf,
    log: PathBuf,
    stopped: bool,
    /// Its own state and bpffs pin directories, removed when it stops, so
    /// no round inherits the runs of another.
    state_dir: PathBuf,
    pin_dir: PathBuf,
}

impl Daemon {
    fn start(env: &Env, round: usize, args: &[&str]) -> Result<Self> {
        let state_dir = env.socket_dir.join(format!("state-{round}"));
        let pin_dir = PathBuf::from(format!("/sys/fs/bpf/sensor-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&state_dir);
        let _ = fs::remove_dir_all(&pin_dir);
        Self::start_on(env, round, args, state_dir, pin_dir)
    }

    /// Starts a daemon on `state_dir` and `pin_dir` as they are (a restart).
    fn start_on(
        env: &Env,
        round: usize,
        args: &[&str],
        state_dir: PathBuf,
        pin_dir: PathBuf,
    ) -> Result<Self> {
        let socket = env.socket_dir.join("sensor.sock");
        let _ = fs::remove_file(&socket);
        let log = env.out_dir.join("daemon.log");
        let mut log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut cmd = Command::new(&env.sensor_bin);
        cmd.arg("daemon")
            .args(args)
            .arg("--socket")
            .arg(&socket)
            .arg("--state-dir")
            .arg(&state_dir)
            .arg("--pin-dir")
            .arg(&pin_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        writeln!(log_file, "=== round {}: {}", round + 1, util::display(&cmd))
            .with_context(|| format!("cannot write {}", log.display()))?;
        let child = cmd
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start `{}`", util::display(&cmd)))?;
        let mut daemon = Self {
            child,
            bin: env.sensor_bin.clone(),
            socket,
            log,
            stopped: false,
            state_dir,
            pin_dir,
        };
        daemon.wait_ready()?;
        Ok(daemon)
    }

    fn status_cmd(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.arg("status").arg("--socket").arg(&self.socket);
        cmd
    }

    fn wait_ready(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .try_wait()
                .context("cannot wait for the daemon")?
            {
                self.stopped = true;
                bail!(
                    "sensor daemon exited ({status}) before it was ready{}",
                    log_tail(&self.log)
                );
            }
            let ready = util::output(self.status_cmd().stdin(Stdio::null()))?;
            if ready.status.success() {
                return Ok(());
            }
            if start.elapsed() > READY_TIMEOUT {
                bail!(
                    "sensor daemon not ready after {}s (`sensor status` keeps failing: {}){}",
                    READY_TIMEOUT.as_secs(),
                    String::from_utf8_lossy(&ready.stderr).trim(),
                    log_tail(&self.log)
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// `sensor status --json`, parsed.
    fn status_json(&self) -> Result<Value> {
        let mut cmd = self.status_cmd();
        cmd.arg("--json").stdin(Stdio::null());
        let out = util::output_ok(&mut cmd)?;
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`{}` printed no JSON object: {:?}",
                util::display(&cmd),
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// `count` runs, each a `sensor launch --agent bench-N -- sleep 3600`;
    /// returns once the daemon reports them active.
    fn start_runs(&self, count: usize) -> Result<Vec<Child>> {
        let mut sleepers = Vec::with_capacity(count);
        for i in 0..count {
            let child = Command::new(&self.bin)
                .args(["launch", "--agent", &format!("bench-{i}"), "--socket"])
                .arg(&self.socket)
                .args(["--", "sleep", "3600"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .spawn()
                .context("cannot start `sensor launch ... sleep`")?;
            sleepers.push(child);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let active = self
                .status_json()?
                .get("runs_active")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if active >= count as u64 {
                return Ok(sleepers);
            }
            if Instant::now() >= deadline {
                bail!("only {active} of {count} runs became active within 60 s");
            }
            thread::sleep(Duration::from_millis(200));
        }
    }

    /// Registers this process (the storm driver) as the first process of a
    /// run, bound to `policy` if given.
    fn launch_self(&self, agent: &str, policy: Option<&str>) -> Result<()> {
        let request = match policy {
            Some(p) => json!({"op": "launch", "agent": agent, "policy": p}),
            None => json!({"op": "launch", "agent": agent}),
        };
        self.request(&request, "launched").map(drop)
    }

    /// One request over the control socket (one JSON line each way), without
    /// starting a process (so it adds no events); the answer must carry
    /// `"result": want`.
    fn request(&self, request: &Value, want: &str) -> Result<Value> {
        use std::io::{BufRead as _, BufReader};
        let op = request.get("op").and_then(Value::as_str).unwrap_or("?");
        let mut stream = std::os::unix::net::UnixStream::connect(&self.socket)
            .with_context(|| format!("cannot connect to {}", self.socket.display()))?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .context("cannot set a read timeout on the control socket")?;
        writeln!(stream, "{request}").with_context(|| format!("cannot send the {op} request"))?;
        let mut line = String::new();
        BufReader::new(&stream)
            .read_line(&mut line)
            .with_context(|| format!("cannot read the {op} answer"))?;
        let answer: Value =
            serde_json::from_str(&line).with_context(|| format!("bad {op} answer: {line:?}"))?;
        if answer.get("result").and_then(Value::as_str) != Some(want) {
            bail!("the daemon answered the {op} request without result {want:?}: {line}");
        }
        Ok(answer)
    }

    /// SIGKILL: no chance to stop cleanly. Its programs stay attached and
    /// keep recording; returns the state and pin dirs to start again on.
    fn kill9(mut self) -> (PathBuf, PathBuf) {
        self.stopped = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
        (self.state_dir.clone(), self.pin_dir.clone())
    }

    /// SIGTERM, then wait for a clean exit (0).
    fn stop(mut self) -> Result<()> {
        self.stopped = true;
        signal(&self.child, libc::SIGTERM)?;
        let status = wait_timeout(&mut self.child, STOP_TIMEOUT)?;
        let _ = fs::remove_dir_all(&self.state_dir);
        // An enforcing daemon leaves its programs attached when it stops:
        // `sensor unload` detaches them and returns once they are gone, so
        // the next variant (the bench itself is in the run) is not enforced.
        let unload = util::run(
            Command::new(&self.bin)
                .arg("unload")
                .arg("--pin-dir")
                .arg(&self.pin_dir)
                .arg("--socket")
                .arg(&self.socket),
        );
        match status {
            Some(status) if status.success() => unload,
            Some(status) => bail!(
                "sensor daemon exited with {status} after SIGTERM (expected 0){}",
                log_tail(&self.log)
            ),
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                bail!(
                    "sensor daemon did not exit within {}s of SIGTERM; killed{}",
                    STOP_TIMEOUT.as_secs(),
                    log_tail(&self.log)
                )
            }
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
            let _ = self.child.wait();
            let _ = fs::remove_dir_all(&self.state_dir);
            let _ = fs::remove_dir_all(&self.pin_dir);
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(child.id()).context("pid out of range")?;
    // SAFETY: kill has no memory-safety preconditions; pid is our own child,
    // not yet reaped, so it cannot name another process.
    if unsafe { libc::kill(pid, signal) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot send signal {signal} to pid {pid}"));
    }
    Ok(())
}

fn wait_timeout(child: &mut Child, timeout: Duration) -> Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("cannot wait for the daemon")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// The last lines of the daemon log, for error messages.
fn log_tail(log: &Path) -> String {
    let Ok(text) = fs::read_to_string(log) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(15)..].join("\n    ");
    format!("\n  last lines of {}:\n    {tail}", log.display())
}

/// One measurement: a workload under a variant in one round.
#[derive(Debug, Clone)]
struct Sample {
    round: usize,
    elapsed: Duration,
    observed: Observed,
}

#[derive(Default)]
struct Results {
    /// (workload index, variant) → samples in round order.
    samples: BTreeMap<(usize, &'static str), Vec<Sample>>,
    /// variant → lost-event total of each round it ran with a tool.
    lost: BTreeMap<&'static str, Vec<u64>>,
    /// Daemon RSS measurements (issue 8 item 4).
    memory: Vec<MemoryResult>,
    /// Kernel-to-output latency of each exec line of the trickle, ms.
    latency_ms: Vec<f64>,
    /// Execs spawned for the latency measurement.
    latency_execs: usize,
    /// User-space pipeline replay: (events, events per second).
    pipeline: Option<(u64, f64)>,
    /// (workload index, variant) → per round, CPU seconds of each process
    /// of the tool (daemon, servers) over the workload.
    /// (`thread:NAME` for the threads of the sensor+outputs daemon.)
    cpu: BTreeMap<(usize, &'static str), Vec<BTreeMap<String, f64>>>,
    /// `sensor+outputs`: the spools' drain after each storm.
    output_drains: Vec<outputs::Drain>,
    /// `sensor+outputs`: delivered and received per output, each round.
    output_rounds: Vec<outputs::RoundOutputs>,
    /// Events/s each network output sustains from its spool.
    output_throughput: Vec<outputs::Throughput>,
    /// The programs' run time per storm op (bpf_stats).
    kernel_cost: Vec<kernel_cost::KernelCost>,
    /// What the default ring keeps while no daemon reads (issue 17).
    outage: Option<outage::Outage>,
    problems: Vec<String>,
}

/// Pipeline replay target (issue 8): events/s on one core.
const PIPELINE_TARGET_EPS: f64 = 300_000.0;

/// Replays recorded raw kernel events through decode → attribution →
/// policy → JSON on one core: the sensor's own release-mode measurement
/// test, whose `pipeline: N events in T s = R events/s` line is read here.
fn measure_pipeline(results: &mut Results) -> Result<()> {
    eprintln!(
        "xtask bench: pipeline: replaying raw events through the user-space stages (release)"
    );
    let mut cmd = util::cargo()?;
    cmd.args([
        "test",
        "--release",
        "-p",
        "sensor",
        "--lib",
        "pipeline::tests::pipeline_throughput",
        "--",
        "--ignored",
        "--exact",
        "--nocapture",
    ]);
    let out = cmd
        .output()
        .with_context(|| format!("cannot run `{}`", util::display(&cmd)))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if !out.status.success() {
        bail!("`{}` failed: {}", util::display(&cmd), text.trim());
    }
    // "pipeline: 300000 events in 0.373 s = 805022 events/s (1.24 us/event)"
    let line = text
        .lines()
        .find(|l| l.starts_with("pipeline: "))
        .ok_or_else(|| {
            anyhow!(
                "no `pipeline:` line in the output of `{}`",
                util::display(&cmd)
            )
        })?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let events: u64 = words
        .get(1)
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the event count in {line:?}"))?;
    let eps: f64 = words
        .iter()
        .position(|w| *w == "=")
        .and_then(|i| words.get(i + 1))
        .and_then(|w| w.parse().ok())
        .ok_or_else(|| anyhow!("cannot read the rate in {line:?}"))?;
    results.pipeline = Some((events, eps));
    Ok(())
}

/// Daemon RSS with `count` live processes or runs.
#[derive(Debug, Clone)]
struct MemoryResult {
    name: &'static str,
    count: usize,
    /// VmRSS of the idle daemon just before, KiB.
    idle_kib: u64,
    rss_kib: u64,
    /// RssAnon, RssFile and RssShmem at the same moment, KiB.
    parts_kib: BTreeMap<&'static str, u64>,
    /// The target, when one applies at this count.
    target_kib: Option<u64>,
}

/// Live processes parked for the RSS measurement (the target is set at 100k).
const RSS_PROCESSES: usize = 100_000;
const QUICK_RSS_PROCESSES: usize = 10_000;
/// Live runs for the RSS measurement.
const RSS_RUNS: usize = 10_000;
const QUICK_RSS_RUNS: usize = 1000;
/// How long the daemon may take to end the runs whose processes were killed.
const RUNS_DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// ≤ 64 MiB RSS at 100,000 live processes.
const RSS_TARGET_KIB: u64 = 64 * 1024;

/// Execs of the latency trickle, and their rate per second.
const LATENCY_EXECS: usize = 2000;
const QUICK_LATENCY_EXECS: usize = 500;
const LATENCY_RATE: u32 = 500;
/// p99 ≤ 10 ms.
const LATENCY_P99_TARGET_MS: f64 = 10.0;

/// One storm of each workload under an audit-mode daemon with
/// `kernel.bpf_stats_enabled`: each program's runs and run time per op.
fn measure_kernel_cost(
    env: &Env,
    workloads: &[&Workload],
    quick: bool,
    results: &mut Results,
) -> Result<()> {
    let _stats = kernel_cost::StatsEnabled::new()?;
    let daemon = Daemon::start(env, 1002, &["--output", "file:/dev/null", "--no-store"])?;
    let measured = (|| -> Result<Vec<kernel_cost::KernelCost>> {
        let pid = daemon.child.id();
        let names: BTreeMap<u32, String> = daemon
            .status_json()?
            .get("programs")
            .and_then(Value::as_array)
            .context("`sensor status --json` lists no programs")?
            .iter()
            .filter_map(|p| {
                let id = u32::try_from(p.get("id")?.as_u64()?).ok()?;
                Some((id, p.get("name")?.as_str()?.to_owned()))
            })
            .collect();
        let mut costs = Vec::new();
        for workload in workloads {
            let ops = workload.ops(quick);
            eprintln!(
                "xtask bench: kernel cost: {} storm ({ops} ops) with bpf_stats on",
                workload.name
            );
            let before = kernel_cost::program_stats(pid)?;
            (workload.run)(ops)?;
            let after = kernel_cost::program_stats(pid)?;
            let cost = kernel_cost::KernelCost::between(
                workload.name,
                ops,
                workload.cores,
                &names,
                &before,
                &after,
            );
            if cost.programs.is_empty() {
                bail!(
                    "no program of the daemon ran during the {} storm (are the stats counted?)",
                    workload.name
                );
            }
            costs.push(cost);
        }
        Ok(costs)
    })();
    let stopped = daemon.stop();
    results.kernel_cost = measured?;
    stopped
}

/// A daemon writing JSON to a file, a trickle of execs, the file tailed.
fn measure_latency(env: &Env, quick: bool, results: &mut Results) -> Result<()> {
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
    let measured = latency::trickle(&events, execs, LATENCY_RATE);
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

fn rss_parts(pid: u32) -> BTreeMap<&'static str, u64> {
    ["RssAnon", "RssFile", "RssShmem"]
        .into_iter()
        .filter_map(|field| Some((field, memory::status_kib(pid, field).ok()?)))
        .collect()
}

/// Starts a daemon, parks processes, then runs, and reads its VmRSS each time.
fn measure_memory(env: &Env, quick: bool, results: &mut Results) -> Result<()> {
    let processes = if quick {
        QUICK_RSS_PROCESSES
    } else {
        RSS_PROCESSES
    };
    let runs = if quick { QUICK_RSS_RUNS } else { RSS_RUNS };
    let _room = memory::make_room(processes.max(runs))?;
    let daemon = Daemon::start(env, 1000, &["--output", "file:/dev/null", "--no-store"])?;
    let pid = daemon.child.id();

    eprintln!("xtask bench: memory: parking {processes} processes");
    let idle_kib = memory::rss_kib(pid)?;
    let before = event_count(&daemon.status_json()?, "process.spawn");
    let parked = memory::park(processes, None)?;
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
    let rss_kib = memory::rss_kib(pid)?;
    let parts_kib = rss_parts(pid);
    parked.kill()?;
    eprintln!("  {processes} processes: VmRSS {rss_kib} KiB (idle {idle_kib} KiB)");
    results.memory.push(MemoryResult {
        name: "processes",
        count: processes,
        idle_kib,
        rss_kib,
        parts_kib,
        target_kib: (processes >= RSS_PROCESSES).then_some(RSS_TARGET_KIB),
    });

    eprintln!("xtask bench: memory: launching {runs} runs");
    // Let the daemon forget the exited processes first.
    thread::sleep(Duration::from_secs(1));
    let idle_kib = memory::rss_kib(pid)?;
    let parked = memory::park(runs, Some(&daemon.socket))?;
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
    let rss_kib = memory::rss_kib(pid)?;
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
    Ok(())
}

pub fn bench(options: &Options) -> Result<()> {
    util::require_root("`cargo xtask bench`")?;
    util::keep_stdout_for_data();
    let workloads: Vec<&Workload> = if options.workloads.is_empty() {
        WORKLOADS.iter().collect()
    } else {
        options
            .workloads
            .iter()
            .map(|name| {
                WORKLOADS.iter().find(|w| w.name == name).ok_or_else(|| {
                    let known: Vec<_> = WORKLOADS.iter().map(|w| w.name).collect();
                    anyhow!("unknown workload `{name}` (known: {})", known.join(", "))
                })
            })
            .collect::<Result<_>>()?
    };
    let rounds = options.rounds.unwrap_or(if options.quick {
        QUICK_ROUNDS
    } else {
        DEFAULT_ROUNDS
    });
    if rounds == 0 {
        bail!("--rounds must be at least 1");
    }

    if !options.no_setup {
        setup::setup()?;
    }
    setup::mounts()?;
    let sensor_bin = match &options.sensor_bin {
        Some(bin) => {
            std::path::absolute(bin).with_context(|| format!("cannot resolve {}", bin.display()))?
        }
        None => build::build_sensor(Profile::Release)?,
    };
    warn_other_daemons();

    let out_dir = util::target_dir()?.join("bench");
    fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let _ = fs::remove_file(out_dir.join("daemon.log"));
    let _ = fs::remove_file(out_dir.join("http-receiver.log"));
    let socket_dir = std::env::temp_dir().join(format!("sensor-bench-{}", std::process::id()));
    fs::create_dir_all(&socket_dir)
        .with_context(|| format!("cannot create {}", socket_dir.display()))?;
    // The peers are installed lazily, here rather than by `xtask setup`:
    // only the bench needs them. Failing to install them is a problem of
    // their variants, not a crash of the bench.
    let peers_missing = peers::install().err().map(|err| format!("{err:#}"));
    let receiver_bin = outputs::build_receiver().map_err(|err| format!("{err:#}"));
    let env = Env {
        sensor_bin,
        socket_dir,
        out_dir,
        peers_missing,
        receiver_bin,
    };

    let started = Instant::now();
    let results = run_rounds(&env, &workloads, rounds, options.quick);
    let results = results.map(|mut results| {
        if let Err(err) = measure_kernel_cost(&env, &workloads, options.quick, &mut results) {
            results.problems.push(format!("kernel cost: {err:#}"));
        }
        if let Err(err) = measure_latency(&env, options.quick, &mut results) {
            results.problems.push(format!("latency: {err:#}"));
        }
        if let Err(err) = measure_memory(&env, options.quick, &mut results) {
            results.problems.push(format!("memory: {err:#}"));
        }
        match outage::measure(&env, options.quick) {
            Ok(o) => results.outage = Some(o),
            Err(err) => results.problems.push(format!("outage: {err:#}")),
        }
        outputs::measure_throughput(&env, options.quick, &mut results);
        if let Err(err) = measure_pipeline(&mut results) {
            results.problems.push(format!("pipeline: {err:#}"));
        }
        results
    });
    let _ = fs::remove_dir_all(&env.socket_dir);
    let results = results?;

    let report = report_json(
        &env,
        &workloads,
        rounds,
        options.quick,
        &results,
        started.elapsed(),
    );
    let json_path = env.out_dir.join("results.json");
    let text = serde_json::to_string_pretty(&report).context("cannot serialize the results")?;
    fs::write(&json_path, text + "\n")
        .with_context(|| format!("cannot write {}", json_path.display()))?;

    print!("{}", markdown(&workloads, rounds, options.quick, &results));
    eprintln!("\nxtask bench: raw results in {}", json_path.display());

    if !results.problems.is_empty() {
        eprintln!("xtask bench: problems:");
        for problem in &results.problems {
            eprintln!("  - {problem}");
        }
        bail!(
            "{} problem(s): events lost or a tool broke (timing never fails a bench)",
            results.problems.len()
        );
    }
    Ok(())
}

/// Other `sensor daemon` processes skew the `bare` baseline: say so.
fn warn_other_daemons() {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    for entry in entries.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let mut args = cmdline.split(|&b| b == 0);
        let exe = args.next().unwrap_or_default();
        let is_sensor = Path::new(&*String::from_utf8_lossy(exe))
            .file_name()
            .is_some_and(|name| name == "sensor");
        if is_sensor && args.any(|arg| arg == b"daemon") {
            eprintln!(
                "xtask bench: WARNING: another sensor daemon is running (pid {pid}); the `bare` numbers include its overhead"
            );
        }
    }
}

fn run_rounds(env: &Env, workloads: &[&Workload], rounds: usize, quick: bool) -> Result<Results> {
    let mut results = Results::default();
    if let Some(err) = &env.peers_missing {
        results.problems.push(format!(
            "auditd, bpftrace: cannot install them, their variants are skipped: {err}"
        ));
    }

    // Warm-up, not recorded: page cache, CPU frequency, lazy kernel state.
    for workload in workloads {
        let ops = workload.ops(quick) / 10 + 1;
        (workload.run)(ops).with_context(|| format!("warm-up of the {} storm", workload.name))?;
    }

    for round in 0..rounds {
        let order: Vec<Variant> = if round % 2 == 0 {
            VARIANTS.to_vec()
        } else {
            VARIANTS.iter().rev().copied().collect()
        };
        let names: Vec<_> = order.iter().map(|v| v.name()).collect();
        eprintln!(
            "xtask bench: round {}/{rounds}: {}",
            round + 1,
            names.join(", ")
        );
        for variant in order {
            if variant.is_peer() && env.peers_missing.is_some() {
                continue;
            }
            if let Err(err) = run_variant(env, workloads, variant, round, quick, &mut results) {
                results
                    .problems
                    .push(format!("round {}, {}: {err:#}", round + 1, variant.name()));
            }
        }
    }
    Ok(results)
}

fn run_variant(
    env: &Env,
    workloads: &[&Workload],
    variant: Variant,
    round: usize,
    quick: bool,
    results: &mut Results,
) -> Result<()> {
    let mut tool = variant.start(env, round, quick)?;
    for (index, workload) in WORKLOADS.iter().enumerate() {
        if !workloads.iter().any(|w| w.name == workload.name) {
            continue;
        }
        let ops = workload.ops(quick);
        let cpu_before = tool.cpu_seconds();
        let before = tool.snapshot()?;
        let elapsed = (workload.run)(ops)?;
        let ended = Instant::now();
        if let (Tool::SensorOutputs { daemon, .. }, Some(before)) = (&tool, &before) {
            // Outside the storm's time: every spool empties before the next.
            let at_end = outputs::status(daemon)?;
            let caught_up = |status: &Value| {
                workload.kinds.iter().all(|kind| {
                    event_count(status, kind).saturating_sub(event_count(before, kind))
                        >= ops as u64
                })
            };
            let drain = outputs::drain(
                daemon,
                before,
                (ended, &at_end),
                &caught_up,
                round,
                workload.name,
            )?;
            results.problems.extend(drain.problems());
            results.output_drains.push(drain);
        }
        let observed = tool.observe(before.as_ref(), workload, ops)?;
        // Over the storm and until its events were handled (and, for
        // sensor+outputs, delivered).
        let cpu: BTreeMap<String, f64> = tool
            .cpu_seconds()
            .into_iter()
            .map(|(name, after)| {
                // A thread started meanwhile used all of its time in it.
                let spent = after - cpu_before.get(&name).copied().unwrap_or(0.0);
                (name, spent)
            })
            .collect();
        if !cpu.is_empty() {
            results
                .cpu
                .entry((index, variant.name()))
                .or_default()
                .push(cpu);
        }
        for (kind, &seen) in &observed.events {
            if seen < ops as u64 {
                results.problems.push(format!(
                    "round {}, {}, {} storm: the sensor counted {seen} {kind} events for {ops} ops",
                    round + 1,
                    variant.name(),
                    workload.name
                ));
            }
        }
        eprintln!(
            "  {:<8} {:<8} {:>9.1} us/op{}",
            variant.name(),
            workload.name,
            stats::per_op_us(elapsed, ops),
            observed
                .lost
                .map(|lost| format!("  lost {lost}"))
                .unwrap_or_default()
        );
        results
            .samples
            .entry((index, variant.name()))
            .or_default()
            .push(Sample {
                round,
                elapsed,
                observed,
            });
    }
    if let Tool::SensorOutputs { daemon, servers } = &mut tool {
        let received = servers.check_received(daemon, round)?;
        results.problems.extend(received.problems());
        results.output_rounds.push(received);
    }
    // A peer's losses are reported, never a failure.
    if let Some(lost) = tool.finish()? {
        if lost > 0 && variant.is_sensor() {
            results.problems.push(format!(
                "round {}, {}: the sensor lost {lost} events (status lost.total)",
                round + 1,
                variant.name()
            ));
        }
        results.lost.entry(variant.name()).or_default().push(lost);
    }
    Ok(())
}

/// Per-round ratio of `variant` to `bare` for one workload, in round order.
fn ratios(results: &Results, index: usize, variant: &str) -> Vec<f64> {
    let (Some(bare), Some(samples)) = (
        results.samples.get(&(index, Variant::Bare.name())),
        results.samples.get(&(index, variant)),
    ) else {
        return Vec::new();
    };
    samples
        .iter()
        .filter_map(|sample| {
            let base = bare.iter().find(|b| b.round == sample.round)?;
            let base = base.elapsed.as_secs_f64();
            (base > 0.0).then(|| sample.elapsed.as_secs_f64() / base)
        })
        .collect()
}

fn us_per_op(samples: &[Sample], ops: usize) -> Vec<f64> {
    samples
        .iter()
        .map(|s| stats::per_op_us(s.elapsed, ops))
        .collect()
}

/// The index of the workload named `name` in [`WORKLOADS`] (the key of its
/// samples), or `usize::MAX`, which keys nothing.
fn index_of(name: &str) -> usize {
    WORKLOADS
        .iter()
        .position(|w| w.name == name)
        .unwrap_or(usize::MAX)
}

fn markdown(workloads: &[&Workload], rounds: usize, quick: bool, results: &Results) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "\n## sensor bench: {rounds} rounds{}\n\n",
        if quick { ", quick" } else { "" }
    ));
    out.push_str("| workload | ops | variant | median µs/op | min – max µs/op | IQR µs/op | ratio vs bare (median of rounds) | lost |\n");
    out.push_str("|---|---:|---|---:|---:|---:|---:|---:|\n");
    for workload in workloads {
        let index = index_of(workload.name);
        let ops = workload.ops(quick);
        for variant in VARIANTS {
            let samples = results
                .samples
                .get(&(index, variant.name()))
                .map(Vec::as_slice)
                .unwrap_or_default();
            let summary = Summary::of(&us_per_op(samples, ops));
            let ratio = Summary::of(&ratios(results, index, variant.name()));
            let lost: Option<u64> = samples
                .iter()
                .map(|s| s.observed.lost)
                .try_fold(0_u64, |sum, lost| lost.map(|l| sum + l));
            let cell = |f: fn(&Summary) -> String| summary.as_ref().map_or("–".to_owned(), f);
            out.push_str(&format!(
                "| {} | {ops} | {} | {} | {} | {} | {} | {} |\n",
                workload.name,
                variant.name(),
                cell(|s| format!("{:.1}", s.median)),
                cell(|s| format!("{:.1} – {:.1}", s.min, s.max)),
                cell(|s| format!("{:.1} – {:.1}", s.q1, s.q3)),
                match (variant, ratio) {
                    (Variant::Bare, _) => "baseline".to_owned(),
                    (_, None) => "–".to_owned(),
                    (_, Some(r)) => format!("{:.3}x ({:.3} – {:.3})", r.median, r.min, r.max),
                },
                match (variant, lost) {
                    (Variant::Bare, _) | (_, None) => "–".to_owned(),
                    (_, Some(lost)) => lost.to_string(),
                }
            ));
        }
    }
    out.push_str(
        "\nRatio: the median over rounds of (variant time / bare time in the same round), with its min – max. \
         Lost: events the tool lost during the workload: for the sensor its status lost.total, \
         for auditd the kernel's `lost` count (`auditctl -s`), for bpftrace its \"Lost N events\" lines. \
         Only the sensor's losses fail the bench.\n\n",
    );
    for workload in workloads {
        out.push_str(&format!("- {}: {}\n", workload.name, workload.description));
    }
    out.push_str(&format!(
        "- auditd: rules for {} (arch b64), backlog {}, written to /var/log/audit/audit.log\n\
         - bpftrace: tracepoints sched_process_fork/exec/exit and sys_enter_connect printed to a file\n",
        peers::AUDIT_SYSCALLS.join(", "),
        peers::AUDIT_BACKLOG
    ));
    for (variant, lost) in &results.lost {
        out.push_str(&format!(
            "- {variant}: lost per round {:?}{}\n",
            lost,
            if matches!(*variant, "auditd" | "bpftrace") {
                ""
            } else {
                " (must be 0)"
            }
        ));
    }
    out.push_str(&cpu_markdown(workloads, results));
    out.push_str(&kernel_cost_markdown(results));
    if let Some(outage) = &results.outage {
        out.push_str(&outage.markdown());
    }
    if !results.memory.is_empty() {
        out.push_str(
            "\n| daemon memory | live | VmRSS MiB | anon / file / shmem MiB | idle VmRSS MiB | target |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---|\n");
        for m in &results.memory {
            let part = |name| {
                m.parts_kib
                    .get(name)
                    .map_or("?".to_owned(), |&kib| format!("{:.1}", kib as f64 / 1024.0))
            };
            out.push_str(&format!(
                "| {} | {} | {:.1} | {} / {} / {} | {:.1} | {} |\n",
                m.name,
                m.count,
                m.rss_kib as f64 / 1024.0,
                part("RssAnon"),
                part("RssFile"),
                part("RssShmem"),
                m.idle_kib as f64 / 1024.0,
                m.target_kib.map_or("–".to_owned(), |t| format!(
                    "≤ {} MiB: {}",
                    t / 1024,
                    if m.rss_kib <= t { "met" } else { "MISSED" }
                ))
            ));
        }
        out.push_str(
            "\nDaemon memory: `sensor daemon --no-store --output file:/dev/null` with that many \
             processes parked in pause() (forked by a helper) or that many runs live (each a \
             parked process that sent its own launch request); VmRSS from /proc/PID/status.\n",
        );
    }
    if !results.latency_ms.is_empty() {
        let p = |q| latency::percentile(&results.latency_ms, q).unwrap_or(f64::NAN);
        let p99 = p(0.99);
        out.push_str("\n| latency | execs | lines | p50 ms | p99 ms | max ms | target |\n");
        out.push_str("|---|---:|---:|---:|---:|---:|---|\n");
        out.push_str(&format!(
            "| kernel → output file | {} | {} | {:.2} | {:.2} | {:.2} | p99 ≤ {LATENCY_P99_TARGET_MS} ms: {} |\n",
            results.latency_execs,
            results.latency_ms.len(),
            p(0.5),
            p99,
            p(1.0),
            if p99 <= LATENCY_P99_TARGET_MS { "met" } else { "MISSED" }
        ));
        out.push_str(&format!(
            "\nLatency: {LATENCY_RATE} execs/s of {} under `sensor daemon --no-store --output file:...`; \
             a thread polls the file every 1 ms and takes, for each process.exec line, the wall clock \
             when it read the line minus the line's `time` (the kernel timestamp).\n",
            "/bin/true"
        ));
    }
    if let Some((events, eps)) = results.pipeline {
        out.push_str("\n| pipeline | events | events/s | target |\n|---|---:|---:|---|\n");
        out.push_str(&format!(
            "| replay: decode → attribution → policy → JSON, one core | {events} | {eps:.0} | ≥ {PIPELINE_TARGET_EPS:.0}: {} |\n",
            if eps >= PIPELINE_TARGET_EPS { "met" } else { "MISSED" }
        ));
    }
    out.push_str(&outputs::markdown(results));
    if !results.problems.is_empty() {
        out.push_str(&format!("- problems: {}\n", results.problems.len()));
    }
    out
}

/// CPU seconds per storm of the daemon (and of the servers of
/// `sensor+outputs`): the median over rounds.
fn cpu_markdown(workloads: &[&Workload], results: &Results) -> String {
    let mut names: Vec<&str> = results
        .cpu
        .values()
        .flatten()
        .flat_map(|m| m.keys().map(String::as_str))
        .filter(|name| !name.starts_with("thread:"))
        .collect();
    names.sort_unstable_by_key(|n| (*n != "daemon", *n));
    names.dedup();
    if names.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n| CPU s per storm (median) | variant | {} |\n|---|---|{}\n",
        names.join(" | "),
        "---:|".repeat(names.len())
    );
    for workload in workloads {
        let index = index_of(workload.name);
        for variant in VARIANTS {
            let Some(rounds) = results.cpu.get(&(index, variant.name())) else {
                continue;
            };
            let cells: Vec<String> = names
                .iter()
                .map(|name| {
                    let values: Vec<f64> = rounds
                        .iter()
                        .filter_map(|m| m.get(*name))
                        .copied()
                        .collect();
                    Summary::of(&values).map_or("–".to_owned(), |s| format!("{:.2}", s.median))
                })
                .collect();
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                workload.name,
                variant.name(),
                cells.join(" | ")
            ));
        }
    }
    out.push_str(
        "\nCPU s: user + system time (/proc/PID/stat) from just before the storm until the tool had \
         handled its events (sensor+outputs: until every spool was empty), median over rounds; the \
         storm itself runs on the same 2 CPUs.\n",
    );
    out
}

fn summary_json(summary: Option<Summary>) -> Value {
    summary.map_or(
        Value::Null,
        |s| json!({"median": s.median, "min": s.min, "max": s.max, "q1": s.q1, "q3": s.q3}),
    )
}

/// Per workload: the programs' ns per run and per op, and what that is
/// against the bare storm's time per op.
fn kernel_cost_markdown(results: &Results) -> String {
    let mut out = String::new();
    if results.kernel_cost.is_empty() {
        return out;
    }
    out.push_str("\n| kernel cost | program | runs per op | ns per run | ns per op |\n");
    out.push_str("|---|---|---:|---:|---:|\n");
    let mut totals = String::new();
    for cost in &results.kernel_cost {
        let ops = cost.ops.max(1) as f64;
        for p in &cost.programs {
            out.push_str(&format!(
                "| {} | {} | {:.2} | {:.0} | {:.0} |\n",
                cost.workload,
                p.name,
                p.runs as f64 / ops,
                p.ns as f64 / p.runs.max(1) as f64,
                p.ns as f64 / ops,
            ));
        }
        let per_op = cost.ns_per_op();
        let bare = results
            .samples
            .get(&(index_of(cost.workload), Variant::Bare.name()))
            .and_then(|samples| Summary::of(&us_per_op(samples, cost.ops)))
            .map(|s| s.median);
        totals.push_str(&format!(
            "- {}: {:.2} µs of program time per op{}\n",
            cost.workload,
            per_op / 1000.0,
            bare.map_or(String::new(), |bare| format!(
                "; the storm keeps {} core(s) busy, so about {:.1} % of the bare {bare:.1} µs/op",
                cost.cores,
                100.0 * per_op / 1000.0 / cost.cores.max(1) as f64 / bare
            ))
        ));
    }
    out.push_str(
        "\nKernel cost: one storm of each workload under `sensor daemon --no-store --output file:/dev/null` \
         with kernel.bpf_stats_enabled = 1 (restored after); each program's run_cnt and run_time_ns \
         from the daemon's /proc/PID/fdinfo. Not included: the syscall-tracepoint slow path every \
         syscall takes once any syscalls/ tracepoint is on, and the daemon's own CPU.\n",
    );
    out.push_str(&totals);
    out
}

fn report_json(
    env: &Env,
    workloads: &[&Workload],
    rounds: usize,
    quick: bool,
    results: &Results,
    elapsed: Duration,
) -> Value {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    let cpus = thread::available_parallelism().map_or(0, usize::from);
    let time_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let workloads: Vec<Value> = workloads
        .iter()
        .map(|workload| {
            let index = index_of(workload.name);
            let ops = workload.ops(quick);
            let variants: Vec<Value> = VARIANTS
                .iter()
                .map(|variant| {
                    let samples = results
                        .samples
                        .get(&(index, variant.name()))
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    let per_op = us_per_op(samples, ops);
                    let ratio = ratios(results, index, variant.name());
                    json!({
                        "name": variant.name(),
                        "rounds": samples.iter().map(|s| s.round + 1).collect::<Vec<_>>(),
                        "us_per_op": per_op,
                        "summary_us_per_op": summary_json(Summary::of(&per_op)),
                        "ratio_vs_bare": {
                            "per_round": ratio,
                            "summary": summary_json(Summary::of(&ratio)),
                        },
                        "lost": samples.iter().map(|s| s.observed.lost).collect::<Vec<_>>(),
                        "events_seen": samples.iter().map(|s| &s.observed.events).collect::<Vec<_>>(),
                        "cpu_s": results.cpu.get(&(index, variant.name())),
                    })
                })
                .collect();
            json!({
                "name": workload.name,
                "description": workload.description,
                "ops": ops,
                "variants": variants,
            })
        })
        .collect();
    json!({
        "schema": "sensor.bench/v1",
        "time_unix": time_unix,
        "quick": quick,
        "rounds": rounds,
        "elapsed_s": elapsed.as_secs_f64(),
        "host": {"kernel": kernel, "cpus": cpus},
        "sensor_bin": env.sensor_bin,
        "workloads": workloads,
        "lost_per_round": results.lost,
        "pipeline": results.pipeline.map(|(events, eps)| json!({
            "events": events,
            "events_per_s": eps,
            "target_events_per_s": PIPELINE_TARGET_EPS,
        })),
        "latency_ms": {
            "execs": results.latency_execs,
            "lines": results.latency_ms.len(),
            "rate_per_s": LATENCY_RATE,
            "p50": latency::percentile(&results.latency_ms, 0.5),
            "p99": latency::percentile(&results.latency_ms, 0.99),
            "max": latency::percentile(&results.latency_ms, 1.0),
            "target_p99": LATENCY_P99_TARGET_MS,
        },
        "memory": results.memory.iter().map(|m| json!({
            "name": m.name,
            "live": m.count,
            "rss_kib": m.rss_kib,
            "idle_rss_kib": m.idle_kib,
            "rss_parts_kib": m.parts_kib,
            "target_kib": m.target_kib,
            "target_met": m.target_kib.map(|t| m.rss_kib <= t),
        })).collect::<Vec<_>>(),
        "outputs": outputs::json(results),
        "outage": results.outage.as_ref().map(outage::Outage::json),
        "kernel_cost": results.kernel_cost.iter().map(|c| json!({
            "workload": c.workload,
            "ops": c.ops,
            "cores": c.cores,
            "ns_per_op": c.ns_per_op(),
            "programs": c.programs.iter().map(|p| json!({
                "name": p.name,
                "runs": p.runs,
                "run_time_ns": p.ns,
            })).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "problems": results.problems,
        "ok": results.problems.is_empty(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(round: usize, millis: u64) -> Sample {
        Sample {
            round,
            elapsed: Duration::from_millis(millis),
            observed: Observed::default(),
        }
    }

    #[test]
    fn ratios_pair_rounds() {
        let mut results = Results::default();
        results
            .samples
            .insert((0, "bare"), vec![sample(0, 100), sample(1, 200)]);
        results
            .samples
            .insert((0, "sensor"), vec![sample(1, 220), sample(0, 105)]);
        let r = ratios(&results, 0, "sensor");
        assert_eq!(r.len(), 2);
        assert!((r[0] - 1.1).abs() < 1e-9);
        assert!((r[1] - 1.05).abs() < 1e-9);
        assert!(ratios(&results, 1, "sensor").is_empty());
    }

    #[test]
    fn status_counters() {
        let status = json!({"events": {"total": 9, "process.exec": 7}, "lost": {"total": 2}});
        assert_eq!(event_count(&status, "process.exec"), 7);
        assert_eq!(event_count(&status, "network.connect"), 0);
        assert_eq!(lost_total(&status).unwrap(), 2);
        assert!(lost_total(&json!({})).is_err());
    }

    #[test]
    fn reads_own_cpu_time() {
        let spent = cpu_seconds(std::process::id()).unwrap_or(-1.0);
        assert!(spent >= 0.0, "{spent}");
        assert!(cpu_seconds(u32::MAX).is_err());
    }

    #[test]
    fn workload_names_are_unique() {
        for (i, a) in WORKLOADS.iter().enumerate() {
            assert_eq!(index_of(a.name), i);
        }
    }
}

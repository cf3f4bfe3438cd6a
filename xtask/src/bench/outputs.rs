//! Network outputs (issue 7) in the bench, against the integration tests'
//! real servers (`sensor_tests::servers`): rsyslogd (imtcp, plain and TLS),
//! nats-server with JetStream, and the HTTP receiver (Splunk HEC and `_bulk`)
//! in counting mode, as a release-built process of its own
//! (`bench-http-receiver`).
//!
//! Two measurements:
//!
//! - The `sensor+outputs` variant: the daemon with three network outputs
//!   (syslog+tcp, HEC with gzip, NATS JetStream) runs in the interleaved
//!   rounds like every variant. After each storm the bench waits (bounded)
//!   until every output's spool is empty ([`drain`]), and at the end of the
//!   round compares what each server got with what the output says it
//!   delivered ([`VariantServers::check_received`]).
//! - Throughput ([`measure_throughput`]): per output, a daemon with only that
//!   output spools N events of an exec storm while its server is down; then
//!   the server comes back and the bench times the spool's drain, polling
//!   the daemon's status every [`THROUGHPUT_POLL`] over the control socket
//!   (a `sensor status` exec would add events of its own).
//!
//! The servers run on the same cores as the storm and the daemon, as a SIEM
//! forwarder shares its host with what it watches.

use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{BufRead as _, BufReader, Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, ChildStdout, Command, Stdio},
    thread,
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};
use sensor_tests::servers::{Nats, Rsyslog};
use serde_json::{Value, json};

use super::{Env, Results, daemon::Daemon, workloads::WORKLOADS};
use crate::{storm, util};

/// The bin of this package that runs the HTTP receiver.
const RECEIVER_BIN: &str = "bench-http-receiver";
const NATS_STREAM: &str = "SENSOR_BENCH";
const NATS_SUBJECT: &str = "sensor.bench";
const HEC_PATH: &str = "/services/collector/event";

/// Events spooled for each output's throughput (the issue asks for at least
/// 50,000; twice that makes the drain long enough for the poll's resolution).
const THROUGHPUT_EVENTS: u64 = 100_000;
const QUICK_THROUGHPUT_EVENTS: u64 = 5_000;
/// The spool bound of the throughput daemons: far above N events, so none
/// is dropped while the server is down (the default is 256 MB).
const THROUGHPUT_SPOOL_MAX: &str = "1GB";
/// How often a throughput drain is polled (a status request over the socket
/// costs the daemon a few tens of µs).
const THROUGHPUT_POLL: Duration = Duration::from_millis(10);
/// How often the `sensor+outputs` spools are polled after a storm.
const DRAIN_POLL: Duration = Duration::from_millis(25);
/// How long a throughput spool may take to drain once its server is back
/// (the sender's retry backoff, up to 30 s, included).
const THROUGHPUT_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the `sensor+outputs` spools may take to empty after a storm.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a server may take to show what the daemon says it delivered
/// (rsyslogd writes its file after the TCP stack acknowledged the bytes).
const RECEIVED_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the spool may take to settle after the storm.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// The network outputs the bench knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OutputKind {
    SyslogTcp,
    SyslogTls,
    Hec,
    Bulk,
    Nats,
}

/// Outputs of the `sensor+outputs` variant.
const VARIANT_OUTPUTS: &[OutputKind] = &[OutputKind::SyslogTcp, OutputKind::Hec, OutputKind::Nats];
/// Outputs whose throughput is measured.
const THROUGHPUT_OUTPUTS: &[OutputKind] = &[
    OutputKind::SyslogTcp,
    OutputKind::SyslogTls,
    OutputKind::Hec,
    OutputKind::Bulk,
    OutputKind::Nats,
];

impl OutputKind {
    /// The output's `name=` (status, spool dir).
    fn name(self) -> &'static str {
        match self {
            Self::SyslogTcp => "syslog-tcp",
            Self::SyslogTls => "syslog-tls",
            Self::Hec => "hec",
            Self::Bulk => "bulk",
            Self::Nats => "nats",
        }
    }

    /// What it is, for the report.
    fn label(self) -> &'static str {
        match self {
            Self::SyslogTcp => "syslog+tcp → rsyslogd",
            Self::SyslogTls => "syslog+tls → rsyslogd",
            Self::Hec => "HTTP HEC, gzip → receiver",
            Self::Bulk => "HTTP _bulk, gzip → receiver",
            Self::Nats => "NATS JetStream → nats-server",
        }
    }

    /// Starts its server, listening; a server that does not come up is
    /// started once more (on a shared host, something else may have killed
    /// it: the first failure is printed).
    fn start(self, env: &Env) -> Result<Server> {
        self.start_once(env).or_else(|err| {
            eprintln!(
                "xtask bench: WARNING: the server of {} did not start, trying once more: {err:#}",
                self.label()
            );
            self.start_once(env)
        })
    }

    fn start_once(self, env: &Env) -> Result<Server> {
        Ok(match self {
            Self::SyslogTcp => Server::Syslog(Rsyslog::start_tcp()?),
            Self::SyslogTls => Server::Syslog(Rsyslog::start_tls()?),
            Self::Hec | Self::Bulk => {
                let bin = env.receiver_bin.as_ref().map_err(|err| {
                    anyhow!("the HTTP receiver ({RECEIVER_BIN}) could not be built: {err}")
                })?;
                Server::Http(HttpServer::start(
                    bin,
                    &env.out_dir.join("http-receiver.log"),
                )?)
            }
            Self::Nats => {
                let nats = Nats::start()?;
                nats.create_stream(NATS_STREAM, NATS_SUBJECT)?;
                Server::Nats(nats)
            }
        })
    }

    /// Its `--output` SPEC to `server`.
    fn spec(self, server: &Server) -> Result<String> {
        let name = self.name();
        Ok(match (self, server) {
            (Self::SyslogTcp, Server::Syslog(rs)) => {
                format!("syslog+tcp://{},name={name}", rs.addr())
            }
            (Self::SyslogTls, Server::Syslog(rs)) => {
                let ca = rs.ca_path().context("rsyslogd was started without TLS")?;
                format!("syslog+tls://{},ca={},name={name}", rs.addr(), ca.display())
            }
            (Self::Hec, Server::Http(http)) => format!(
                "{}{HEC_PATH},token=bench,gzip=true,name={name}",
                http.base_url()
            ),
            (Self::Bulk, Server::Http(http)) => format!(
                "{}/_bulk,gzip=true,index=sensor-bench,name={name}",
                http.base_url()
            ),
            (Self::Nats, Server::Nats(nats)) => {
                format!(
                    "nats://127.0.0.1:{}/{NATS_SUBJECT},name={name}",
                    nats.port()
                )
            }
            _ => bail!("{} cannot deliver to this server", self.label()),
        })
    }
}

/// A running server.
pub(super) enum Server {
    Syslog(Rsyslog),
    Http(HttpServer),
    Nats(Nats),
}

impl Server {
    fn kill9(&mut self) -> Result<()> {
        match self {
            Self::Syslog(rs) => rs.kill9(),
            Self::Http(http) => http.kill9(),
            Self::Nats(nats) => nats.kill9(),
        }
    }

    /// Starts it again on the same port and data.
    fn restart(&mut self) -> Result<()> {
        match self {
            Self::Syslog(rs) => rs.restart(),
            Self::Http(http) => http.restart(),
            Self::Nats(nats) => nats.restart(),
        }
    }

    /// Its process, what it is called in the report.
    fn process(&self) -> (&'static str, Option<u32>) {
        match self {
            Self::Syslog(rs) => ("rsyslogd", rs.pid()),
            Self::Http(http) => ("HTTP receiver", Some(http.child.id())),
            Self::Nats(nats) => ("nats-server", nats.pid()),
        }
    }

    /// Events it has: rsyslogd's output lines, the HTTP receiver's events
    /// in requests it answered 2xx, the JetStream stream's messages.
    fn received(&mut self) -> Result<u64> {
        match self {
            Self::Syslog(rs) => count_lines(rs.output_path()),
            Self::Http(http) => http
                .stats()?
                .get("events")
                .and_then(Value::as_u64)
                .context("the HTTP receiver's stats have no event count"),
            Self::Nats(nats) => nats.stream_len(NATS_STREAM),
        }
    }

    /// When rsyslogd last wrote its output file (None for the servers that
    /// acknowledge what they stored: HTTP, NATS).
    fn last_write(&self) -> Result<Option<SystemTime>> {
        match self {
            Self::Syslog(rs) => {
                let path = rs.output_path();
                let meta = std::fs::metadata(path)
                    .with_context(|| format!("cannot stat {}", path.display()))?;
                Ok(Some(meta.modified().with_context(|| {
                    format!("no modification time for {}", path.display())
                })?))
            }
            Self::Http(_) | Self::Nats(_) => Ok(None),
        }
    }

    /// Waits (bounded) until it has at least `want` events; returns how many.
    fn wait_received(&mut self, want: u64) -> Result<u64> {
        let deadline = Instant::now() + RECEIVED_TIMEOUT;
        loop {
            let got = self.received()?;
            if got >= want || Instant::now() >= deadline {
                return Ok(got);
            }
            thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Newlines in a file (0 when it does not exist yet).
fn count_lines(path: &Path) -> Result<u64> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(err) => return Err(err).with_context(|| format!("cannot open {}", path.display())),
    };
    let mut buf = vec![0u8; 1 << 20];
    let mut lines = 0u64;
    loop {
        let n = file
            .read(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
        if n == 0 {
            return Ok(lines);
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
}

/// `cargo build --release -p xtask --bin bench-http-receiver`; returns the binary.
pub(super) fn build_receiver() -> Result<PathBuf> {
    let mut cmd = util::cargo()?;
    cmd.args(["build", "--release", "-p", "xtask", "--bin", RECEIVER_BIN]);
    util::run(&mut cmd)?;
    let bin = util::target_dir().join("release").join(RECEIVER_BIN);
    ensure!(
        bin.is_file(),
        "`{}` succeeded but {} does not exist",
        util::display(&cmd),
        bin.display()
    );
    Ok(bin)
}

/// The `bench-http-receiver` process (see its doc): one command per line.
pub(super) struct HttpServer {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    port: u16,
}

impl HttpServer {
    fn start(bin: &Path, log: &Path) -> Result<Self> {
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("cannot open {}", log.display()))?;
        let mut child = Command::new(bin)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{} has no stdin or stdout pipe", bin.display());
        };
        let mut me = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
            port: 0,
        };
        let first = me.read_line()?;
        me.port = first
            .strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .with_context(|| format!("{RECEIVER_BIN} said {first:?}, not `port N`"))?;
        Ok(me)
    }

    fn read_line(&mut self) -> Result<String> {
        let mut line = String::new();
        let n = self
            .stdout
            .read_line(&mut line)
            .with_context(|| format!("cannot read from {RECEIVER_BIN}"))?;
        if n == 0 {
            let status = self.child.try_wait().ok().flatten();
            bail!("{RECEIVER_BIN} closed its stdout (exit status {status:?})");
        }
        Ok(line.trim_end().to_owned())
    }

    fn command(&mut self, command: &str) -> Result<String> {
        writeln!(self.stdin, "{command}")
            .and_then(|()| self.stdin.flush())
            .with_context(|| format!("cannot send `{command}` to {RECEIVER_BIN}"))?;
        let answer = self.read_line()?;
        if let Some(err) = answer.strip_prefix("error: ") {
            bail!("{RECEIVER_BIN}: `{command}` failed: {err}");
        }
        Ok(answer)
    }

    fn stats(&mut self) -> Result<Value> {
        let answer = self.command("stats")?;
        serde_json::from_str(&answer)
            .with_context(|| format!("{RECEIVER_BIN}: stats are not JSON: {answer:?}"))
    }

    fn kill9(&mut self) -> Result<()> {
        self.command("kill9").map(drop)
    }

    fn restart(&mut self) -> Result<()> {
        self.command("restart").map(drop)
    }

    fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for HttpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One output's entry of `status --json`.
#[derive(Debug, Clone, Default)]
struct OutputStatus {
    name: String,
    state: String,
    sent: u64,
    dropped: u64,
    failed: u64,
    write_errors: u64,
    spooled: u64,
    spool_bytes: u64,
    last_error: Option<String>,
}

fn outputs_of(status: &Value) -> Result<Vec<OutputStatus>> {
    let outputs = status
        .get("outputs")
        .and_then(Value::as_array)
        .context("the daemon's status has no outputs array")?;
    outputs
        .iter()
        .map(|o| {
            let num = |key: &str| {
                o.get(key)
                    .and_then(Value::as_u64)
                    .with_context(|| format!("status output without a number {key}: {o}"))
            };
            let text = |key: &str| o.get(key).and_then(Value::as_str).map(str::to_owned);
            Ok(OutputStatus {
                name: text("name").with_context(|| format!("status output without a name: {o}"))?,
                state: text("state").unwrap_or_default(),
                sent: num("sent")?,
                dropped: num("dropped")?,
                failed: num("failed")?,
                write_errors: o.get("write_errors").and_then(Value::as_u64).unwrap_or(0),
                spooled: num("spooled")?,
                spool_bytes: num("spool_bytes")?,
                last_error: text("last_error"),
            })
        })
        .collect()
}

fn output_named(status: &Value, name: &str) -> Result<OutputStatus> {
    outputs_of(status)?
        .into_iter()
        .find(|o| o.name == name)
        .with_context(|| format!("the daemon's status has no output named {name}"))
}

/// The daemon's status over its control socket (`{"op":"status"}`): unlike
/// `sensor status`, no process is started, so polling adds no events.
pub(super) fn status(daemon: &Daemon) -> Result<Value> {
    daemon.request(&json!({"op": "status"}), "status")
}

// ----- the sensor+outputs variant -----

/// The servers of one round of `sensor+outputs`.
pub(super) struct VariantServers {
    servers: Vec<(OutputKind, Server)>,
}

impl VariantServers {
    pub(super) fn start(env: &Env) -> Result<Self> {
        let servers = VARIANT_OUTPUTS
            .iter()
            .map(|&kind| Ok((kind, kind.start(env)?)))
            .collect::<Result<_>>()?;
        Ok(Self { servers })
    }

    /// Each server's process, named.
    pub(super) fn processes(&self) -> Vec<(&'static str, u32)> {
        self.servers
            .iter()
            .filter_map(|(_, server)| match server.process() {
                (name, Some(pid)) => Some((name, pid)),
                (_, None) => None,
            })
            .collect()
    }

    /// `--output SPEC` for each server.
    pub(super) fn output_args(&self) -> Result<Vec<String>> {
        let mut args = Vec::new();
        for (kind, server) in &self.servers {
            args.push("--output".to_owned());
            args.push(kind.spec(server)?);
        }
        Ok(args)
    }

    /// What each output says it delivered this round against what its
    /// server has (waiting, bounded, for the server to catch up).
    pub(super) fn check_received(&mut self, daemon: &Daemon, round: usize) -> Result<RoundOutputs> {
        let status = status(daemon)?;
        let mut outputs = Vec::new();
        for (kind, server) in &mut self.servers {
            let o = output_named(&status, kind.name())?;
            let received = server.wait_received(o.sent)?;
            outputs.push(Received {
                name: kind.name(),
                sent: o.sent,
                received,
                dropped: o.dropped,
                failed: o.failed,
                spooled: o.spooled,
            });
        }
        Ok(RoundOutputs { round, outputs })
    }
}

/// Totals of one output at the end of a round.
#[derive(Debug, Clone)]
pub(super) struct Received {
    name: &'static str,
    sent: u64,
    received: u64,
    dropped: u64,
    failed: u64,
    spooled: u64,
}

#[derive(Debug, Clone)]
pub(super) struct RoundOutputs {
    round: usize,
    outputs: Vec<Received>,
}

impl RoundOutputs {
    /// What is wrong with this round's outputs.
    pub(super) fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for o in &self.outputs {
            if o.received < o.sent {
                problems.push(format!(
                    "round {}, sensor+outputs: output {} says it delivered {} events, its server has {} (after {}s)",
                    self.round + 1,
                    o.name,
                    o.sent,
                    o.received,
                    RECEIVED_TIMEOUT.as_secs()
                ));
            }
            if o.dropped > 0 || o.failed > 0 {
                problems.push(format!(
                    "round {}, sensor+outputs: output {} dropped {} and failed {} events",
                    self.round + 1,
                    o.name,
                    o.dropped,
                    o.failed
                ));
            }
        }
        problems
    }
}

/// One output's counts over a storm and the drain after it.
#[derive(Debug, Clone)]
pub(super) struct DrainOutput {
    name: String,
    /// Delivered during the storm and the drain.
    sent: u64,
    dropped: u64,
    failed: u64,
    /// Spooled at the first look after the storm.
    spooled_after_storm: u64,
    /// Still spooled when the drain ended (0 unless it timed out).
    spooled: u64,
    /// From the end of the storm until its spool was first seen empty.
    seconds: Option<f64>,
    last_error: Option<String>,
}

/// The wait for the spools to empty after one storm of `sensor+outputs`.
#[derive(Debug, Clone)]
pub(super) struct Drain {
    round: usize,
    workload: &'static str,
    /// From the end of the storm until every spool was empty.
    seconds: f64,
    drained: bool,
    outputs: Vec<DrainOutput>,
}

impl Drain {
    pub(super) fn problems(&self) -> Vec<String> {
        let at = format!(
            "round {}, sensor+outputs, {} storm",
            self.round + 1,
            self.workload
        );
        let mut problems = Vec::new();
        if !self.drained {
            let left: Vec<String> = self
                .outputs
                .iter()
                .filter(|o| o.spooled > 0)
                .map(|o| {
                    format!(
                        "{} {} ({})",
                        o.name,
                        o.spooled,
                        o.last_error.as_deref().unwrap_or("no error")
                    )
                })
                .collect();
            problems.push(format!(
                "{at}: the spools did not empty (or the storm's events were not all counted) within {}s of the storm: still spooled {}",
                DRAIN_TIMEOUT.as_secs(),
                left.join(", ")
            ));
        }
        for o in &self.outputs {
            if o.dropped > 0 || o.failed > 0 {
                problems.push(format!(
                    "{at}: output {} dropped {} and failed {} events (last error: {})",
                    o.name,
                    o.dropped,
                    o.failed,
                    o.last_error.as_deref().unwrap_or("none")
                ));
            }
        }
        problems
    }
}

/// Waits (bounded) until every output of `daemon` has nothing spooled
/// once the storm's events are all counted (`caught_up`, on a status):
/// counts since `before` (the status before the storm), time since `ended`
/// (the end of the storm), spooled as of `at_end` (the status taken then).
/// An output counts as empty at the first of two polls in a row that find
/// it empty, so a batch still queued for its spool is not missed.
pub(super) fn drain(
    daemon: &Daemon,
    before: &Value,
    (ended, at_end): (Instant, &Value),
    caught_up: &dyn Fn(&Value) -> bool,
    round: usize,
    workload: &'static str,
) -> Result<Drain> {
    let before = outputs_of(before)?;
    let first: BTreeMap<String, u64> = outputs_of(at_end)?
        .into_iter()
        .map(|o| (o.name, o.spooled))
        .collect();
    let mut empty_since: BTreeMap<String, f64> = BTreeMap::new();
    let mut emptied: BTreeMap<String, f64> = BTreeMap::new();
    loop {
        let status = status(daemon)?;
        let now = outputs_of(&status)?;
        let elapsed = ended.elapsed().as_secs_f64();
        let counted = caught_up(&status);
        for o in &now {
            if emptied.contains_key(&o.name) {
                continue;
            }
            if counted && o.spooled == 0 {
                match empty_since.get(&o.name) {
                    Some(&since) => {
                        emptied.insert(o.name.clone(), since);
                    }
                    None => {
                        empty_since.insert(o.name.clone(), elapsed);
                    }
                }
            } else {
                empty_since.remove(&o.name);
            }
        }
        let drained = now.iter().all(|o| emptied.contains_key(&o.name));
        if drained || elapsed >= DRAIN_TIMEOUT.as_secs_f64() {
            let outputs = now
                .iter()
                .map(|o| {
                    let was = before.iter().find(|b| b.name == o.name);
                    let since = |f: fn(&OutputStatus) -> u64| f(o).saturating_sub(was.map_or(0, f));
                    DrainOutput {
                        name: o.name.clone(),
                        sent: since(|s| s.sent),
                        dropped: since(|s| s.dropped),
                        failed: since(|s| s.failed),
                        spooled_after_storm: first.get(&o.name).copied().unwrap_or(0),
                        spooled: o.spooled,
                        seconds: emptied.get(&o.name).copied(),
                        last_error: o.last_error.clone(),
                    }
                })
                .collect();
            let seconds = if drained {
                emptied.values().copied().fold(0.0, f64::max)
            } else {
                elapsed
            };
            return Ok(Drain {
                round,
                workload,
                seconds,
                drained,
                outputs,
            });
        }
        thread::sleep(DRAIN_POLL);
    }
}

// ----- throughput -----

/// How fast one output emptied its spool once its server was back.
#[derive(Debug, Clone)]
pub(super) struct Throughput {
    kind: OutputKind,
    spec: String,
    /// Exec storm ops run to fill the spool.
    storm_ops: usize,
    /// Events and bytes in the spool when the server came back.
    spooled: u64,
    spool_bytes: u64,
    /// Delivered from the first delivery until the spool was empty.
    events: u64,
    seconds: f64,
    /// From the server listening again to the first delivery (the sender's
    /// retry backoff).
    first_delivery_s: f64,
    /// syslog: from the start (as `seconds`) until rsyslogd wrote its last
    /// line. The output counts an event delivered once the peer's TCP stack
    /// acknowledged it, which can be before rsyslogd read it.
    server_done_s: Option<f64>,
    /// What the server has at the end, and what the output says it sent.
    received: u64,
    sent_total: u64,
    dropped: u64,
    failed: u64,
    /// Failed delivery attempts (while the server was down: expected).
    write_errors: u64,
}

impl Throughput {
    fn events_per_s(&self) -> f64 {
        self.events as f64 / self.seconds.max(1e-9)
    }

    /// Spooled bytes per second (the encoded events plus the spool's
    /// ~20-byte record header each).
    fn mb_per_s(&self) -> f64 {
        self.spool_bytes as f64 / 1e6 / self.seconds.max(1e-9)
    }

    fn problems(&self) -> Vec<String> {
        let at = format!("output throughput, {}", self.kind.label());
        let mut problems = Vec::new();
        if self.dropped > 0 || self.failed > 0 {
            problems.push(format!(
                "{at}: dropped {} and failed {} events",
                self.dropped, self.failed
            ));
        }
        if self.received < self.sent_total {
            problems.push(format!(
                "{at}: the output says it delivered {} events, its server has {}",
                self.sent_total, self.received
            ));
        }
        problems
    }
}

/// Throughput of every output in [`THROUGHPUT_OUTPUTS`], one at a time.
pub(super) fn measure_throughput(env: &Env, quick: bool, results: &mut Results) {
    let target = if quick {
        QUICK_THROUGHPUT_EVENTS
    } else {
        THROUGHPUT_EVENTS
    };
    for (index, &kind) in THROUGHPUT_OUTPUTS.iter().enumerate() {
        eprintln!(
            "xtask bench: output throughput: {}: spooling {target} events with the server down",
            kind.label()
        );
        match throughput_of(env, kind, 2000 + index, target) {
            Ok(t) => {
                eprintln!(
                    "  {} events in {:.2}s = {:.0} events/s ({:.1} MB/s), first delivery {:.2}s after the server was back",
                    t.events,
                    t.seconds,
                    t.events_per_s(),
                    t.mb_per_s(),
                    t.first_delivery_s
                );
                results.problems.extend(t.problems());
                results.output_throughput.push(t);
            }
            Err(err) => results
                .problems
                .push(format!("output throughput, {}: {err:#}", kind.label())),
        }
    }
}

fn throughput_of(env: &Env, kind: OutputKind, id: usize, target: u64) -> Result<Throughput> {
    let mut server = kind.start(env)?;
    let spec = format!("{},spool_max={THROUGHPUT_SPOOL_MAX}", kind.spec(&server)?);
    server.kill9()?;
    let daemon = Daemon::start(env, id, &["--no-store", "--output", &spec])?;
    let measured = drain_spool(&daemon, &mut server, kind, target);
    let stopped = daemon.stop();
    let mut t = measured?;
    stopped?;
    t.spec = spec;
    Ok(t)
}

/// Polls until the output's spool stops growing; returns its status then.
fn settled(daemon: &Daemon, name: &str) -> Result<OutputStatus> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    let mut last = output_named(&status(daemon)?, name)?;
    let mut still = 0;
    loop {
        thread::sleep(Duration::from_millis(200));
        let now = output_named(&status(daemon)?, name)?;
        // A retry's connect is an event too: a few more are no growth.
        still = if now.spooled <= last.spooled + 2 {
            still + 1
        } else {
            0
        };
        last = now;
        if still >= 3 {
            return Ok(last);
        }
        if Instant::now() >= deadline {
            bail!(
                "the spool of {name} still grows {}s after the storm ({} events)",
                SETTLE_TIMEOUT.as_secs(),
                last.spooled
            );
        }
    }
}

fn drain_spool(
    daemon: &Daemon,
    server: &mut Server,
    kind: OutputKind,
    target: u64,
) -> Result<Throughput> {
    let name = kind.name();
    let mut storm_ops = 0;
    let mut spool = settled(daemon, name)?;
    // An exec storm op is at least three events (spawn, exec, exit).
    for _ in 0..5 {
        if spool.spooled >= target {
            break;
        }
        let ops = usize::try_from((target - spool.spooled) / 3 + 1).unwrap_or(usize::MAX);
        storm::exec_storm(ops)?;
        storm_ops += ops;
        spool = settled(daemon, name)?;
    }
    ensure!(
        spool.spooled >= target,
        "only {} events spooled after {storm_ops} execs (want {target}; dropped {}, last error {:?})",
        spool.spooled,
        spool.dropped,
        spool.last_error
    );
    ensure!(
        spool.dropped == 0,
        "{} events dropped while the server was down (spool_max={THROUGHPUT_SPOOL_MAX})",
        spool.dropped
    );
    let sent_before = spool.sent;
    server.restart()?;
    let up = Instant::now();
    let mut idle_until = up;
    let mut idle_until_wall = SystemTime::now();
    let (done, last) = loop {
        let now = output_named(&status(daemon)?, name)?;
        let at = Instant::now();
        if now.sent == sent_before {
            idle_until = at;
            idle_until_wall = SystemTime::now();
        }
        if now.spooled == 0 {
            break (at, now);
        }
        if up.elapsed() > THROUGHPUT_TIMEOUT {
            bail!(
                "{} of {} events still spooled {}s after the server came back (sent {}, state {}, last error {:?})",
                now.spooled,
                spool.spooled,
                THROUGHPUT_TIMEOUT.as_secs(),
                now.sent - sent_before,
                now.state,
                now.last_error
            );
        }
        thread::sleep(THROUGHPUT_POLL);
    };
    let received = server.wait_received(last.sent)?;
    let server_done_s = server.last_write()?.map(|at| {
        at.duration_since(idle_until_wall)
            .map_or(0.0, |d| d.as_secs_f64())
    });
    Ok(Throughput {
        kind,
        spec: String::new(),
        storm_ops,
        spooled: spool.spooled,
        spool_bytes: spool.spool_bytes,
        events: last.sent - sent_before,
        seconds: done.duration_since(idle_until).as_secs_f64(),
        first_delivery_s: idle_until.duration_since(up).as_secs_f64(),
        server_done_s,
        received,
        sent_total: last.sent,
        dropped: last.dropped,
        failed: last.failed,
        write_errors: last.write_errors,
    })
}

// ----- report -----

fn median(values: &mut [f64]) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    (n > 0).then(|| {
        if n % 2 == 1 {
            values[n / 2]
        } else {
            (values[n / 2 - 1] + values[n / 2]) / 2.0
        }
    })
}

/// The Markdown sections on outputs (empty when nothing was measured).
pub(super) fn markdown(results: &Results) -> String {
    let mut out = String::new();
    if !results.output_drains.is_empty() || !results.output_rounds.is_empty() {
        out.push_str(
            "\n| sensor+outputs: output | storm | spooled after the storm: median | spool empty after the storm s: median (max) | delivered per storm: median | dropped | failed |\n",
        );
        out.push_str("|---|---|---:|---:|---:|---:|---:|\n");
        let mut keys: Vec<(&str, &str)> = results
            .output_drains
            .iter()
            .flat_map(|d| d.outputs.iter().map(|o| (d.workload, o.name.as_str())))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        for (workload, name) in keys {
            let outs: Vec<&DrainOutput> = results
                .output_drains
                .iter()
                .filter(|d| d.workload == workload)
                .flat_map(|d| d.outputs.iter().filter(|o| o.name == name))
                .collect();
            let mut seconds: Vec<f64> = outs.iter().filter_map(|o| o.seconds).collect();
            let not_drained = outs.len() - seconds.len();
            let max = seconds.iter().copied().fold(0.0, f64::max);
            let mut sent: Vec<f64> = outs.iter().map(|o| o.sent as f64).collect();
            let mut spooled: Vec<f64> = outs.iter().map(|o| o.spooled_after_storm as f64).collect();
            out.push_str(&format!(
                "| {name} | {workload} | {:.0} | {:.2} ({max:.2}){} | {:.0} | {} | {} |\n",
                median(&mut spooled).unwrap_or(f64::NAN),
                median(&mut seconds).unwrap_or(f64::NAN),
                if not_drained > 0 {
                    format!(", {not_drained} never empty")
                } else {
                    String::new()
                },
                median(&mut sent).unwrap_or(f64::NAN),
                outs.iter().map(|o| o.dropped).sum::<u64>(),
                outs.iter().map(|o| o.failed).sum::<u64>(),
            ));
        }
        out.push_str(&threads_markdown(results));
        if !results.output_rounds.is_empty() {
            let per_output: Vec<String> = VARIANT_OUTPUTS
                .iter()
                .map(|kind| {
                    let (sent, received) = results
                        .output_rounds
                        .iter()
                        .flat_map(|r| r.outputs.iter().filter(|o| o.name == kind.name()))
                        .fold((0, 0), |(s, r), o| (s + o.sent, r + o.received));
                    format!(
                        "{} delivered {sent}, its server has {received}",
                        kind.name()
                    )
                })
                .collect();
            out.push_str(&format!(
                "\nsensor+outputs, all rounds: {}.\n",
                per_output.join("; ")
            ));
        }
        out.push_str(
            "\nsensor+outputs: `sensor daemon --no-store` with three network outputs: syslog+tcp to rsyslogd \
             (imtcp, every message written to a file as a JSON line), HTTP HEC with gzip to the test \
             harness's HTTP receiver (a separate release-built process that gunzips and counts), and NATS \
             JetStream to nats-server (file-backed stream). The servers start fresh each round and run on the \
             same cores as the storm and the daemon, as a SIEM forwarder shares its host. After each storm \
             the bench polls the daemon every 25 ms until every output's spool is empty (once all the \
             storm's events were counted; the first of two empty polls in a row): that drain is not in the \
             storm's time. Each round ends by checking that every server has at least what the output says \
             it delivered.\n",
        );
    }
    if !results.output_throughput.is_empty() {
        out.push_str(
            "\n| output throughput (loopback) | events | spooled MB | seconds | events/s | MB/s | server done s | first delivery after the server was back s | dropped | failed | server has |\n",
        );
        out.push_str("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
        for t in &results.output_throughput {
            out.push_str(&format!(
                "| {} | {} | {:.1} | {:.2} | {:.0} | {:.1} | {} | {:.2} | {} | {} | {} |\n",
                t.kind.label(),
                t.events,
                t.spool_bytes as f64 / 1e6,
                t.seconds,
                t.events_per_s(),
                t.mb_per_s(),
                t.server_done_s
                    .map_or("= seconds".to_owned(), |s| format!("{s:.2}")),
                t.first_delivery_s,
                t.dropped,
                t.failed,
                t.received
            ));
        }
        out.push_str(
            "\nOutput throughput: per output, `sensor daemon --no-store --output SPEC,spool_max=1GB` alone, \
             its server down while an exec storm fills the spool; then the server starts again on the same \
             port and the daemon's status is polled every 10 ms over its control socket. Seconds: from the \
             last poll before the first delivery until the spool was empty; events/s = events delivered in \
             that time / seconds; MB/s: the spool's bytes (encoded events plus a small record header) / \
             seconds. Server done: syslog counts an event delivered once rsyslogd's TCP stack acknowledged \
             it, so this is when rsyslogd wrote its last line (its output file's mtime), from the same start; \
             HTTP and NATS acknowledge what the server took. The server shares the cores with the daemon. \
             First delivery: the sender's retry backoff (200 ms doubling, ±20 %) after the outage of the \
             storm. Server has: rsyslogd's output lines, the \
             HTTP receiver's events in 2xx-answered requests, the stream's messages. A `file:` output has no \
             spool and is not measured here.\n",
        );
    }
    out
}

/// CPU seconds of the `sensor+outputs` daemon's threads per storm (median
/// over rounds), the busy ones.
fn threads_markdown(results: &Results) -> String {
    let storms: Vec<(&str, &Vec<BTreeMap<String, f64>>)> = WORKLOADS
        .iter()
        .enumerate()
        .filter_map(|(index, w)| Some((w.name, results.cpu.get(&(index, "sensor+outputs"))?)))
        .collect();
    let mut rows: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for (i, (_, rounds)) in storms.iter().enumerate() {
        let mut names: Vec<&str> = rounds
            .iter()
            .flat_map(|m| m.keys().filter_map(|k| k.strip_prefix("thread:")))
            .collect();
        names.sort_unstable();
        names.dedup();
        for name in names {
            let key = format!("thread:{name}");
            let mut values: Vec<f64> = rounds
                .iter()
                .map(|m| m.get(&key).copied().unwrap_or(0.0))
                .collect();
            let row = rows.entry(name).or_insert_with(|| vec![0.0; storms.len()]);
            row[i] = median(&mut values).unwrap_or(0.0);
        }
    }
    rows.retain(|_, row| row.iter().any(|&v| v >= 0.005));
    if rows.is_empty() {
        return String::new();
    }
    let mut out = format!(
        "\n| sensor+outputs daemon thread: CPU s per storm (median) | {} |\n|---|{}\n",
        storms
            .iter()
            .map(|(name, _)| *name)
            .collect::<Vec<_>>()
            .join(" | "),
        "---:|".repeat(storms.len())
    );
    for (name, row) in rows {
        let cells: Vec<String> = row.iter().map(|v| format!("{v:.3}")).collect();
        out.push_str(&format!("| {name} | {} |\n", cells.join(" | ")));
    }
    out.push_str(
        "\nThreads by name (/proc/PID/task/TID/comm, 15 characters): `spool NAME` filters, encodes and \
         appends to the output's spool, `send NAME` delivers it; only threads with ≥ 5 ms in a storm.\n",
    );
    out
}

/// The outputs part of results.json.
pub(super) fn json(results: &Results) -> Value {
    json!({
        "variant": {
            "outputs": VARIANT_OUTPUTS.iter().map(|k| json!({"name": k.name(), "what": k.label()})).collect::<Vec<_>>(),
            "drains": results.output_drains.iter().map(|d| json!({
                "round": d.round + 1,
                "workload": d.workload,
                "seconds": d.seconds,
                "drained": d.drained,
                "outputs": d.outputs.iter().map(|o| json!({
                    "name": o.name,
                    "sent": o.sent,
                    "dropped": o.dropped,
                    "failed": o.failed,
                    "spooled_after_storm": o.spooled_after_storm,
                    "spooled": o.spooled,
                    "seconds": o.seconds,
                    "last_error": o.last_error,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "rounds": results.output_rounds.iter().map(|r| json!({
                "round": r.round + 1,
                "outputs": r.outputs.iter().map(|o| json!({
                    "name": o.name,
                    "sent": o.sent,
                    "received": o.received,
                    "dropped": o.dropped,
                    "failed": o.failed,
                    "spooled": o.spooled,
                })).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        },
        "throughput": results.output_throughput.iter().map(|t| json!({
            "output": t.kind.name(),
            "what": t.kind.label(),
            "spec": t.spec,
            "storm_ops": t.storm_ops,
            "spooled": t.spooled,
            "spool_bytes": t.spool_bytes,
            "events": t.events,
            "seconds": t.seconds,
            "events_per_s": t.events_per_s(),
            "mb_per_s": t.mb_per_s(),
            "first_delivery_s": t.first_delivery_s,
            "server_done_s": t.server_done_s,
            "sent_total": t.sent_total,
            "received": t.received,
            "dropped": t.dropped,
            "failed": t.failed,
            "write_errors": t.write_errors,
        })).collect::<Vec<_>>(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_outputs_parse() {
        let status = json!({"outputs": [
            {"name": "hec", "state": "ok", "sent": 5, "dropped": 0, "failed": 1,
             "spooled": 2, "spool_bytes": 300, "last_error": null},
        ]});
        let o = output_named(&status, "hec").unwrap_or_default();
        assert_eq!((o.sent, o.failed, o.spooled, o.spool_bytes), (5, 1, 2, 300));
        assert!(o.last_error.is_none());
        assert!(output_named(&status, "nats").is_err());
        assert!(outputs_of(&json!({})).is_err());
    }

    #[test]
    fn medians() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0]), Some(2.5));
        assert_eq!(median(&mut []), None);
    }
}

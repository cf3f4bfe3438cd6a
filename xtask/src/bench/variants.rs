//! What runs beside the workloads: the variants (bare, the sensor's own,
//! the peers) and the [`Tool`] each starts for a round, with what it
//! observes around one workload (events counted, lost, CPU seconds).

use std::{
    collections::BTreeMap,
    fs,
    path::Path,
    process::Child,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use super::{
    Env,
    daemon::{Daemon, event_count, lost_total, many_runs_config},
    floor, outputs, peers,
    workloads::Workload,
};

/// How the workloads run. `Bare` is the baseline every ratio refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Variant {
    /// No tool running.
    Bare,
    /// `sensor daemon --output file:/dev/null` (audit only, no policy).
    Sensor,
    /// The daemon writing its local store and a JSON file (issue 8's "store
    /// and a file output"), the store keeping every event (`[store] keep =
    /// "all"`).
    SensorStore,
    /// [`Variant::SensorStore`] with the shipped Sigma pack (`[detect] rules
    /// = ["rules/agent"]`, issue 20): the storm outside any run, so the only
    /// difference from `sensor+store` is the rules (issue 20's "storm ratios
    /// with detection on, no worse than sensor+store").
    SensorStoreDetect,
    /// What `sensor daemon` does with no option but a JSON file output
    /// (issue 23): the store on with its default `keep = "runs"`.
    SensorDefault,
    /// The default config with the storm inside an agent run, no rules:
    /// the baseline of [`Variant::SensorDetect`] (in a run, the store keeps
    /// every event, each is chained, and the connect storm's accepts are
    /// events too).
    SensorDefaultRun,
    /// The default config with the shipped Sigma pack (`[detect] rules =
    /// ["rules/agent"]`, issue 20) and the storm inside an agent run, so
    /// every storm event reaches the rules with its run.
    SensorDetect,
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
    /// A reference, not a tool: a no-op program on a syscall tracepoint no
    /// storm calls ([`floor`]), so the storms pay only the syscall
    /// tracepoints' slow path, the floor under any sensor built on them.
    Floor,
    /// A reference too: the no-op program on every tracepoint the sensor
    /// attaches to ([`floor::SENSOR_TRACEPOINTS`]): the slow path plus the
    /// tracepoints' dispatch for each hit the storms make, which the kernel
    /// cost table (the programs' own run time) leaves out.
    FloorSensor,
}

pub(super) const VARIANTS: &[Variant] = &[
    Variant::Bare,
    Variant::Floor,
    Variant::FloorSensor,
    Variant::Sensor,
    Variant::SensorStore,
    Variant::SensorStoreDetect,
    Variant::SensorDefault,
    Variant::SensorDefaultRun,
    Variant::SensorDetect,
    Variant::SensorRuns,
    Variant::SensorEnforce,
    Variant::SensorOutputs,
    Variant::Auditd,
    Variant::Bpftrace,
];

/// The variants named (`--variant`, by [`Variant::name`]), with `bare`
/// (every ratio's baseline) whether named or not, in [`VARIANTS`] order;
/// `None` (all) when none is named.
pub(super) fn select(names: &[String]) -> Result<Option<Vec<Variant>>> {
    if names.is_empty() {
        return Ok(None);
    }
    for name in names {
        if !VARIANTS.iter().any(|v| v.name() == name) {
            let known: Vec<String> = VARIANTS.iter().map(|v| format!("{:?}", v.name())).collect();
            bail!("unknown variant {name:?} (known: {})", known.join(", "));
        }
    }
    Ok(Some(
        VARIANTS
            .iter()
            .copied()
            .filter(|v| *v == Variant::Bare || names.iter().any(|n| n == v.name()))
            .collect(),
    ))
}

/// Rules of the `sensor+enforce` policy (issue 5: "an enforce policy of 1,000 rules").
pub(super) const ENFORCE_RULES: usize = 1000;

/// The `sensor+enforce` config: one enforce policy of [`ENFORCE_RULES`]
/// rules. Half are exec rules (exact files of /usr/bin, so each resolves to
/// its own identity, then /usr/bin/ itself, which is what allows the storm's
/// /bin/true: a file miss, then a parent-directory walk), half connect rules
/// (distinct /24s with port ranges, then 127.0.0.0/8 for the storm).
pub(super) fn enforce_config(sensor_bin: &Path) -> Result<String> {
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

/// The store section of the variants that keep every event.
const STORE_ALL: &str = "[store]\nkeep = \"all\"\n";

/// The detect section of the variants with the shipped Sigma pack.
fn detect_section() -> String {
    let rules = crate::util::workspace_root().join("rules").join("agent");
    format!("[detect]\nrules = [{:?}]\n", rules.display().to_string())
}

/// Writes a variant's config file into the round's socket dir; its path.
fn write_config(env: &Env, name: &str, text: &str) -> Result<String> {
    let config = env.socket_dir.join(name);
    fs::write(&config, text).with_context(|| format!("cannot write {}", config.display()))?;
    Ok(config.display().to_string())
}

/// Runs kept live during the `sensor+runs` variant (issue 4: "1,000 runs live").
pub(super) const LIVE_RUNS: usize = 1000;
/// Fewer with --quick.
pub(super) const QUICK_LIVE_RUNS: usize = 100;

impl Variant {
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::Bare => "bare",
            Self::Sensor => "sensor",
            Self::SensorStore => "sensor+store",
            Self::SensorStoreDetect => "sensor+store +detect",
            Self::SensorDefault => "sensor (default config)",
            Self::SensorDefaultRun => "sensor (default) +run",
            Self::SensorDetect => "sensor (default) +detect",
            Self::SensorRuns => "sensor+runs",
            Self::SensorEnforce => "sensor+enforce",
            Self::SensorOutputs => "sensor+outputs",
            Self::Auditd => "auditd",
            Self::Bpftrace => "bpftrace",
            Self::Floor => "floor: syscall tracepoint",
            Self::FloorSensor => "floor: the sensor's tracepoints",
        }
    }

    /// The sensor's own variants: their losses fail the bench.
    pub(super) fn is_sensor(self) -> bool {
        matches!(
            self,
            Self::Sensor
                | Self::SensorStore
                | Self::SensorStoreDetect
                | Self::SensorDefault
                | Self::SensorDefaultRun
                | Self::SensorDetect
                | Self::SensorRuns
                | Self::SensorEnforce
                | Self::SensorOutputs
        )
    }

    pub(super) fn is_peer(self) -> bool {
        matches!(self, Self::Auditd | Self::Bpftrace)
    }

    /// Start what this variant needs for one round.
    pub(super) fn start(self, env: &Env, round: usize, quick: bool) -> Result<Tool> {
        match self {
            Self::Bare => Ok(Tool::None),
            Self::Sensor => {
                Daemon::start(env, round, &["--output", "file:/dev/null", "--no-store"])
                    .map(Tool::Sensor)
            }
            Self::SensorStore | Self::SensorStoreDetect | Self::SensorDefault => {
                // One round's file at a time: the storms write hundreds of MB.
                let events = env.socket_dir.join("events.jsonl");
                let _ = fs::remove_file(&events);
                let output = format!("file:{}", events.display());
                let config = match self {
                    Self::SensorStore => Some(("store-all.toml", STORE_ALL.to_owned())),
                    Self::SensorStoreDetect => Some((
                        "store-all-detect.toml",
                        format!("{STORE_ALL}{}", detect_section()),
                    )),
                    _ => None,
                };
                let daemon = match config {
                    Some((name, text)) => {
                        let config = write_config(env, name, &text)?;
                        Daemon::start(env, round, &["--output", &output, "--config", &config])?
                    }
                    None => Daemon::start(env, round, &["--output", &output])?,
                };
                Ok(Tool::Sensor(daemon))
            }
            Self::SensorDefaultRun | Self::SensorDetect => {
                let events = env.socket_dir.join("events.jsonl");
                let _ = fs::remove_file(&events);
                let output = format!("file:{}", events.display());
                let mut daemon = if self == Self::SensorDetect {
                    let config = write_config(env, "detect.toml", &detect_section())?;
                    Daemon::start(env, round, &["--output", &output, "--config", &config])?
                } else {
                    Daemon::start(env, round, &["--output", &output])?
                };
                daemon.launch_self("bench-storm", None)?;
                Ok(Tool::Sensor(daemon))
            }
            Self::SensorRuns => {
                let config = many_runs_config(env)?;
                let mut daemon = Daemon::start(
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
                let mut daemon = Daemon::start(
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
            Self::Floor => floor::Floor::start(&[floor::TRACEPOINT]).map(Tool::Floor),
            Self::FloorSensor => floor::Floor::start(floor::SENSOR_TRACEPOINTS).map(Tool::Floor),
        }
    }
}

/// What a variant runs while the workloads go.
pub(super) enum Tool {
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
    /// The no-op program of `floor: syscall tracepoint`, detached on drop.
    Floor(floor::Floor),
}

/// What a tool reports around one workload.
#[derive(Debug, Default, Clone)]
pub(super) struct Observed {
    /// Events counted per expected kind while the workload ran.
    pub(super) events: BTreeMap<String, u64>,
    /// Events the tool lost while the workload ran.
    pub(super) lost: Option<u64>,
}

impl Tool {
    /// Counters before a workload (None for tools without counters).
    pub(super) fn snapshot(&self) -> Result<Option<Value>> {
        match self {
            Self::None | Self::Floor(_) => Ok(None),
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
    pub(super) fn peer_lost(&self) -> Result<u64> {
        match self {
            Self::Auditd(auditd) => auditd.lost(),
            Self::Bpftrace(bpftrace) => bpftrace.lost(),
            _ => Ok(0),
        }
    }

    /// The processes whose CPU time is reported: the daemon, and for
    /// `sensor+outputs` its servers.
    pub(super) fn processes(&self) -> Vec<(&'static str, u32)> {
        let mut processes: Vec<(&'static str, u32)> = self
            .daemon()
            .map(|daemon| ("daemon", daemon.pid()))
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
    pub(super) fn cpu_seconds(&self) -> BTreeMap<String, f64> {
        let mut cpu: BTreeMap<String, f64> = self
            .processes()
            .into_iter()
            .filter_map(|(name, pid)| Some((name.to_owned(), cpu_seconds(pid).ok()?)))
            .collect();
        if let Self::SensorOutputs { daemon, .. } = self {
            for (name, seconds) in thread_cpu_seconds(daemon.pid()) {
                cpu.insert(format!("thread:{name}"), seconds);
            }
        }
        cpu
    }

    pub(super) fn daemon(&self) -> Option<&Daemon> {
        match self {
            Self::None | Self::Floor(_) | Self::Auditd(_) | Self::Bpftrace(_) => None,
            Self::Sensor(daemon)
            | Self::SensorRuns { daemon, .. }
            | Self::SensorOutputs { daemon, .. } => Some(daemon),
        }
    }

    /// Counters after a workload of `ops` ops, compared with `before`. Waits
    /// (bounded) for the reader to catch up with the storm.
    pub(super) fn observe(
        &self,
        before: Option<&Value>,
        workload: &Workload,
        ops: usize,
    ) -> Result<Observed> {
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
    pub(super) fn finish(self) -> Result<Option<u64>> {
        match self {
            Self::None => Ok(None),
            Self::Floor(floor) => {
                drop(floor);
                Ok(None)
            }
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
pub(super) fn cpu_seconds(pid: u32) -> Result<f64> {
    stat_cpu_seconds(&format!("/proc/{pid}/stat"))
}

/// CPU seconds of the live threads of `pid`, summed by thread name.
pub(super) fn thread_cpu_seconds(pid: u32) -> BTreeMap<String, f64> {
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
pub(super) fn stat_cpu_seconds(path: &str) -> Result<f64> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_are_selected_by_name_with_bare() {
        assert_eq!(select(&[]).unwrap(), None);
        let names = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        assert_eq!(
            select(&names(&["sensor (default) +detect", "sensor+store"])).unwrap(),
            Some(vec![
                Variant::Bare,
                Variant::SensorStore,
                Variant::SensorDetect
            ])
        );
        assert_eq!(
            select(&names(&["bare"])).unwrap(),
            Some(vec![Variant::Bare])
        );
        let err = select(&names(&["sensor", "nope"])).unwrap_err().to_string();
        assert!(
            err.contains("\"nope\"") && err.contains("\"sensor+store\""),
            "{err}"
        );
    }

    #[test]
    fn reads_own_cpu_time() {
        let spent = cpu_seconds(std::process::id()).unwrap_or(-1.0);
        assert!(spent >= 0.0, "{spent}");
        assert!(cpu_seconds(u32::MAX).is_err());
    }
}

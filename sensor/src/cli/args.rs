//! The whole clap tree. Doc comments are the help text.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::{paths, sinks::OutputSpec};

/// eBPF host sensor: reports every process spawn, exec, exit and network
/// connect on this host as JSON events, for attribution to AI agent runs.
#[derive(Debug, Parser)]
#[command(
    name = "sensor",
    version,
    propagate_version = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sensor: load the kernel programs and write events to the outputs (root).
    ///
    /// Mounts tracefs and bpffs when they are not mounted. Stops cleanly on
    /// SIGINT/SIGTERM: every event already read is written; the programs stay
    /// attached and keep recording (and enforcing) into the pinned ring, and
    /// the next daemon reads what they recorded first (--detach-on-exit or
    /// `sensor unload` detaches them).
    Daemon(DaemonArgs),
    /// Run CMD as a new agent run (a sub-run when called inside a run).
    ///
    /// Registers with the daemon, then executes CMD in place: CMD keeps this
    /// pid, its stdout is untouched, SENSOR_RUN_ID is set, and its exit code is
    /// the exit code. Refuses to start CMD when the daemon cannot be reached,
    /// unless --best-effort.
    Launch(LaunchArgs),
    /// Print the agent run of the calling process.
    Whoami(WhoamiArgs),
    /// List agent runs from the local store.
    Runs(RunsArgs),
    /// Show a run's sub-agent tree, with each run's process tree beneath it.
    ///
    /// A process a policy denied something is marked `[deny] blocked` or
    /// `[deny] would have been blocked (audit)`, one that attempted an
    /// escape `[escape attempt]`; such a process is never folded.
    Tree(TreeArgs),
    /// Show stored events (optionally of one run or its whole subtree).
    ///
    /// One line per event: TIME  RUN  VERDICT  RULE  KIND PID WHAT, the
    /// verdict ([allow], [deny] blocked, [deny] audit: would have been
    /// blocked, [violation]: the policy.violation that repeats a denial) and
    /// its rule in fixed columns. Lines are cut to the width only on a
    /// terminal (or when COLUMNS is set): `sensor events | grep -c
    /// '\[deny\]'` counts every denial.
    Events(EventsArgs),
    /// Which run owns a process (alive or exited) or connected to an address.
    ///
    /// --pid asks the daemon first about a live process, which it knows
    /// even when the process did nothing yet, then the store; each answer
    /// says which one it came from. --ip takes a network too (10.0.0.0/8)
    /// and shows each destination's port and result.
    Who(WhoArgs),
    /// A run's timeline, in order, indented by sub-agent and process tree.
    Replay(ReplayArgs),
    /// Write a self-contained HTML page of a run: trees, timeline, verdicts.
    Report(ReportArgs),
    /// Check that a run's record is intact: every event there, unedited, in order.
    ///
    /// Recomputes each run's hash chain from the store and checks every
    /// `run.checkpoint` signature; prints "intact: N events, M checkpoints"
    /// or names the first event (seq) where the record was edited, deleted,
    /// reordered or inserted. With --bundle, checks an exported bundle
    /// instead, offline. Exits 0 when intact, 1 otherwise.
    Verify(VerifyArgs),
    /// Write a run's record as a signed bundle (an in-toto Statement in a DSSE envelope).
    ///
    /// The run (and with --subtree its sub-runs), all their events as
    /// stored, the policy text in force and its hash, the checkpoints and
    /// the public keys; `sensor verify --bundle FILE` checks it anywhere.
    Export(ExportArgs),
    /// Check a policy file, learn one from stored runs, dry-run one on them,
    /// or make the daemon reload its policies.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Check Sigma detection rules, or see which would fire on a stored run.
    ///
    /// Rules are Sigma YAML under `logsource: product: agent-sensor`; their
    /// fields are the event's JSON paths (process.exe, run.agent, ...). See
    /// docs/detection.md.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Print a signed run token (a JWT) for the calling process's run.
    ///
    /// The daemon finds the caller's run from the kernel (as for `whoami`),
    /// never from anything the caller says, and signs a short-lived JWT
    /// (EdDSA) naming the run, its agent, principal, policy and the parent
    /// runs that delegated to it (`act`). A credential broker checks it with
    /// the public keys: `sensor token jwks`, or
    /// http://<[metrics] listen>/.well-known/jwks.json and
    /// /.well-known/openid-configuration. Refused outside a run, for an
    /// ended or expired run, for scopes the run was not granted (`sensor
    /// launch --scope`), and past the run's `[tokens] max_per_run`.
    Token(TokenArgs),
    /// Show whether the daemon is attached and ready, what enforces, and its counters.
    ///
    /// Exits 0 once the daemon is ready, 1 when it cannot be reached or is not
    /// ready. Shows each policy with its mode, version and runs, the agent
    /// matchers, what is pinned where, the socket, config and database, the
    /// reloads. When the daemon cannot be reached, says what its pin
    /// directory still holds: the program links still attached, the maps,
    /// the policy slots with their policies' names and modes, the runs
    /// bound, the last owner.
    Status(StatusArgs),
    /// What this kernel lets the sensor do, and what each policy will really do here (root).
    ///
    /// Checks BTF, tracefs, bpffs and cgroup2, loads and attaches every kernel
    /// program (in a scratch pin directory), proves exec kill and connect deny
    /// with two throw-away children, then reads the config's policies and says
    /// what each will enforce. Exits 0 when everything works, 1 otherwise.
    Doctor(DoctorArgs),
    /// Detach the kernel programs an enforcing daemon left pinned, and drop its pinned maps (root).
    ///
    /// A daemon with an enforce policy keeps its programs attached when it
    /// stops, so enforcement outlives it; this ends that. Refuses while the
    /// daemon that owns the pin directory is running (its pid and start time
    /// are recorded in the pin directory), or a daemon answers on the socket,
    /// unless --force.
    Unload(UnloadArgs),
    /// The daemon's canary child (internal): connect to 127.0.0.1:PORT and send NONCE.
    #[command(hide = true)]
    Canary(CanaryArgs),
}

/// `sensor token`
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct TokenArgs {
    #[command(subcommand)]
    pub action: Option<TokenCommand>,
    /// Who the token is for (the `aud` claim: the broker's id)
    #[arg(long, value_name = "AUDIENCE", required = true)]
    pub aud: Option<String>,
    /// Lifetime (e.g. 2m) [default and most: [tokens] max_ttl, 5m unless
    /// configured; never past the run's own expiry]
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub ttl: Option<std::time::Duration>,
    /// A scope the token carries (repeatable); only scopes granted to the run
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Print the token with its claims as one JSON object
    #[arg(long)]
    pub json: bool,
    /// Control socket of the daemon [default: the config's [daemon] socket,
    /// else /run/sensor/sensor.sock]
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET, hide_default_value = true)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub config: ConfigArg,
}

#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Print the daemon's public keys: a JWKS (RFC 7517), the one its
    /// /.well-known/jwks.json serves.
    Jwks {
        /// Control socket of the daemon [default: the config's [daemon]
        /// socket, else /run/sensor/sensor.sock]
        #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET, hide_default_value = true)]
        socket: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Check a token against the daemon's public keys: signature, times,
    /// issuer and (with --aud) audience; print its claims. Exits 1 when it
    /// does not verify.
    Verify {
        /// The token (compact JWS) [default: read from stdin, which keeps it
        /// out of argv, where every exec event would record it]
        token: Option<String>,
        /// The audience it must be for
        #[arg(long, value_name = "AUDIENCE")]
        aud: Option<String>,
        /// Control socket of the daemon [default: the config's [daemon]
        /// socket, else /run/sensor/sensor.sock]
        #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET, hide_default_value = true)]
        socket: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
}

/// `sensor canary`: what the daemon's canary child runs (see `sensor::canary`).
#[derive(Debug, Args)]
pub struct CanaryArgs {
    #[arg(long)]
    pub port: u16,
    #[arg(long)]
    pub nonce: String,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Configuration file whose policies to check [default: /etc/sensor/sensor.toml, used when present]
    #[arg(long, value_name = "FILE", env = "SENSOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the findings as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct UnloadArgs {
    /// bpffs directory of the pinned maps and links [default: the config's, else /sys/fs/bpf/sensor]
    #[arg(long, value_name = "DIR", env = "SENSOR_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Configuration file [default: /etc/sensor/sensor.toml, used when present]
    #[arg(long, value_name = "FILE", env = "SENSOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Control socket of a daemon that must not be running [default: the config's]
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Remove the pins even while their daemon runs. It still holds its
    /// programs and maps: it reports the removal (sensor.tamper) and pins
    /// them again within a second. Stop it to end enforcement
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// Configuration file [default: /etc/sensor/sensor.toml, used when present]
    #[arg(long, value_name = "FILE", env = "SENSOR_CONFIG")]
    pub config: Option<PathBuf>,
    /// Where events go: `-` (stdout), `file:PATH`, `syslog+tcp://HOST:PORT`,
    /// `syslog+tls://HOST:PORT`, `http(s)://HOST[:PORT]/PATH` (Splunk HEC,
    /// Elasticsearch _bulk) or `nats://HOST:PORT/SUBJECT`, then `,key=value`
    /// options: `format=json|ocsf`, `kinds=K+K`, `runs_only=true`, `name=N`,
    /// and per target (`max_size`, `keep`, `token_env`, `ca`, `spool_max`,
    /// ...; see docs/contract-v1.md, "SPECs"). Repeat for several outputs;
    /// replaces the config's outputs [default: the config's, else -]
    #[arg(long = "output", short = 'o', value_name = "SPEC")]
    pub outputs: Vec<OutputSpec>,
    /// Control socket [default: the config's, else /run/sensor/sensor.sock]
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET")]
    pub socket: Option<PathBuf>,
    /// State directory (runs) [default: the config's, else /var/lib/sensor]
    #[arg(long, value_name = "DIR", env = "SENSOR_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for pinned maps [default: the config's, else /sys/fs/bpf/sensor]
    #[arg(long, value_name = "DIR", env = "SENSOR_PIN_DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Local store (SQLite) [default: the config's, else <state-dir>/sensor.db]
    #[arg(long, value_name = "PATH", env = "SENSOR_DB")]
    pub db: Option<PathBuf>,
    /// Do not write the local store (outputs only)
    #[arg(long, conflicts_with = "db")]
    pub no_store: bool,
    /// Take over from a daemon running on the same pin dir (an upgrade:
    /// start the new binary with this). The running daemon saves
    /// everything and exits; its programs keep recording until this one's
    /// take over, and this one reads what they recorded first. Without it,
    /// a second daemon on a pin dir in use is refused
    #[arg(long)]
    pub takeover: bool,
    /// At stop, detach the kernel programs. By default they stay attached
    /// (pinned) and keep recording, and enforcing, while no daemon runs;
    /// the next daemon reads what they recorded. `sensor unload` detaches
    /// them later
    #[arg(long)]
    pub detach_on_exit: bool,
    /// Also write every kernel record, as read, to FILE (each a 4-byte
    /// little-endian length, then the record), for replays: the golden
    /// test of the outputs (`sensor/tests/golden.rs`) and bug reports. The
    /// file holds every process's argv and paths; it is created 0600
    #[arg(long, value_name = "FILE")]
    pub record_raw: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct LaunchArgs {
    /// Agent name (e.g. research-bot)
    #[arg(long, value_name = "NAME")]
    pub agent: String,
    /// Run id [default: a new UUIDv7]
    #[arg(long, value_name = "ID")]
    pub run_id: Option<String>,
    /// Who the run acts for [default: your user; recorded as claimed unless you are root]
    #[arg(long, value_name = "WHO")]
    pub principal: Option<String>,
    /// Policy name for the run
    #[arg(long, value_name = "NAME")]
    pub policy: Option<String>,
    /// A label (repeatable)
    #[arg(long = "label", value_name = "K=V", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// End the run after this long (e.g. 2h, 30m; 1s to 30d). Processes still
    /// alive then are killed; in a sub-run they fall back to the parent run
    /// and its policy instead
    #[arg(long, value_name = "DURATION", value_parser = parse_ttl)]
    pub ttl: Option<std::time::Duration>,
    /// A scope the run's tokens may carry (repeatable; `sensor token
    /// --scope`). A sub-run may only name scopes its parent holds
    /// [default: the parent run's scopes; none at the top]
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Start CMD even when the daemon cannot be reached (unattributed)
    #[arg(long)]
    pub best_effort: bool,
    /// How long to wait for a daemon that is not listening yet (restarting,
    /// being upgraded) before giving up (e.g. 5s, 0s; at most 1h)
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_wait)]
    pub wait: std::time::Duration,
    /// Control socket of the daemon [default: the config's [daemon] socket,
    /// else /run/sensor/sensor.sock]
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET, hide_default_value = true)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub config: ConfigArg,
    /// The command and its arguments
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<std::ffi::OsString>,
}

/// The longest `launch --wait`.
const MAX_WAIT: std::time::Duration = std::time::Duration::from_secs(3600);

/// A `--wait`: a humantime duration of at most an hour.
fn parse_wait(s: &str) -> Result<std::time::Duration, String> {
    let wait = humantime::parse_duration(s).map_err(|e| format!("wait {s:?}: {e}"))?;
    if wait > MAX_WAIT {
        return Err(format!("wait {s:?}: at most 1h"));
    }
    Ok(wait)
}

/// A `--ttl`: a humantime duration between 1 s and 30 days.
fn parse_ttl(s: &str) -> Result<std::time::Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| format!("ttl {s:?}: {e}"))?;
    crate::attribution::runs::check_ttl(ttl).map_err(|e| e.to_string())
}

#[derive(Debug, Args)]
pub struct WhoamiArgs {
    /// Control socket of the daemon [default: the config's [daemon] socket,
    /// else /run/sensor/sensor.sock]
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET, hide_default_value = true)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print the answer as one JSON object
    #[arg(long)]
    pub json: bool,
}

/// `sensor verify`
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// Run id or unique prefix
    #[arg(required_unless_present = "bundle", conflicts_with = "bundle")]
    pub run: Option<String>,
    /// Also every sub-run of the run
    #[arg(long)]
    pub subtree: bool,
    /// Check this exported bundle instead of the store (offline)
    #[arg(long, value_name = "FILE")]
    pub bundle: Option<PathBuf>,
    /// Trust only these public keys (a JWKS, e.g. `sensor token jwks` or the
    /// state dir's provenance_keys.json); default: the provenance_keys.json
    /// beside the store, else in --state-dir; for a bundle, the keys it carries
    #[arg(long, value_name = "FILE")]
    pub keys: Option<PathBuf>,
    /// The daemon's state dir, whose provenance_keys.json is used when the
    /// store has none beside it [default: the config's [daemon] state_dir,
    /// else /var/lib/sensor]
    #[arg(long, value_name = "DIR", env = "SENSOR_STATE_DIR", default_value = paths::STATE_DIR, hide_default_value = true)]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub db: DbArgs,
}

/// `sensor export`
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Run id or unique prefix
    pub run: String,
    /// Also every sub-run of the run
    #[arg(long)]
    pub subtree: bool,
    /// Where to write the bundle (mode 0600); `-`: stdout, and the summary
    /// goes to stderr
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: PathBuf,
    /// The daemon's state dir (its signing key) [default: the config's
    /// [daemon] state_dir, else /var/lib/sensor]. The config (--config)
    /// also gives the text of the policies in force
    #[arg(long, value_name = "DIR", default_value = paths::STATE_DIR, hide_default_value = true)]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub db: DbArgs,
}

/// The configuration file a client command reads its settings from.
#[derive(Debug, Clone, Default, Args)]
pub struct ConfigArg {
    /// Configuration file: this command uses its [store] path, [daemon]
    /// socket and directories (an explicit --db, --socket, --state-dir or
    /// --pin-dir wins); a missing or bad file is an error [default:
    /// /etc/sensor/sensor.toml, when present]
    #[arg(
        id = "config",
        long = "config",
        value_name = "FILE",
        env = "SENSOR_CONFIG"
    )]
    pub path: Option<PathBuf>,
}

/// Where the query commands read.
#[derive(Debug, Args)]
pub struct DbArgs {
    /// Local store of the daemon [default: the config's [store] path, else
    /// <[daemon] state_dir>/sensor.db: /var/lib/sensor/sensor.db]
    #[arg(long, value_name = "PATH", env = "SENSOR_DB", default_value = paths::DB, hide_default_value = true)]
    pub db: PathBuf,
    #[command(flatten)]
    pub config: ConfigArg,
    /// Print JSON (one object, or one per line for event lists)
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Only runs that have not ended
    #[arg(long)]
    pub active: bool,
    /// Only runs of this agent
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct TreeArgs {
    /// Run id or unique prefix
    pub run: String,
    /// Show every process: identical sibling commands (same exe, argv equal
    /// apart from ids, numbers and temporary names) are not folded into one
    /// row with a count (`git … ×13`); a denied process never is
    #[arg(long)]
    pub no_fold: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// Only events of this run (id or unique prefix)
    #[arg(long, value_name = "RUN")]
    pub run: Option<String>,
    /// With --run: also the events of all its sub-runs
    #[arg(long, requires = "run")]
    pub subtree: bool,
    /// Only this kind (process.exec, network.connect, run.start, ...);
    /// repeat for several. An unknown kind is refused
    #[arg(long, value_name = "KIND", value_parser = parse_kind)]
    pub kind: Vec<String>,
    /// Only events of this process id
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// Only events of runs of this agent
    #[arg(long, value_name = "NAME")]
    pub agent: Option<String>,
    /// Only escape attempts: process.tamper, sensor.tamper, network.socket
    /// (raw, ICMP, packet sockets) and Unix connects a policy denies
    #[arg(long)]
    pub escapes: bool,
    /// Only events since this time: RFC 3339 (a date alone is its
    /// midnight UTC) or a duration ago (10m, 2h)
    #[arg(long, value_name = "T", value_parser = parse_since)]
    pub since: Option<std::time::SystemTime>,
    /// Only events before this time: RFC 3339 (a date alone is its
    /// midnight UTC) or a duration ago (10m, 2h)
    #[arg(long, value_name = "T", value_parser = parse_since)]
    pub until: Option<std::time::SystemTime>,
    /// At most this many events (the first ones)
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Keep printing new events as they are stored
    #[arg(long)]
    pub follow: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["pid", "ip", "unix"])))]
pub struct WhoArgs {
    /// A process id (alive or exited)
    #[arg(long, value_name = "PID")]
    pub pid: Option<u32>,
    /// A destination address or network (CIDR: 10.0.0.0/8, 2001:db8::/32),
    /// optionally with :PORT or :LO-HI ([V6]:PORT, [V6/LEN]:PORT for IPv6):
    /// the processes that connected or sent there, each with the address,
    /// port and result
    #[arg(long, value_name = "ADDR[/LEN][:PORT]", value_parser = parse_ip_query)]
    pub ip: Option<IpQuery>,
    /// A Unix socket as connected to: its path, or @NAME for an abstract one
    /// (/run/docker.sock)
    #[arg(long, value_name = "PATH")]
    pub unix: Option<String>,
    /// Control socket of the daemon, asked by --pid about a live process
    /// [default: the config's [daemon] socket, else /run/sensor/sensor.sock]
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET, hide_default_value = true)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Run id or unique prefix
    pub run: String,
    /// Show every process: identical sibling commands (same exe, argv equal
    /// apart from ids, numbers and temporary names) are not folded into one
    /// row with a count (`git … ×13`); a denied process never is
    #[arg(long)]
    pub no_fold: bool,
    #[command(flatten)]
    pub db: DbArgs,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a config file's policies and agents; errors name file:line.
    Check {
        /// The config file (a daemon config with [policy.NAME] tables)
        /// [default: --config, else /etc/sensor/sensor.toml]
        #[arg(conflicts_with = "config")]
        file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Make the daemon re-read, validate and swap in its policies and
    /// [[agent]] matchers (root).
    ///
    /// Applies the [policy.NAME] tables, the [[agent]] matchers (execs from
    /// now on) and the [detect] rules, all or none. Says which other
    /// sections changed since the daemon started: those need a restart. A
    /// bad file is reported and the running policies and matchers stay.
    Reload {
        /// Control socket of the daemon [default: the config's [daemon]
        /// socket, else /run/sensor/sensor.sock]
        #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET, hide_default_value = true)]
        socket: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Write a least-privilege policy from what stored runs did.
    ///
    /// Exec rules are the files the kernel ran, as exact paths; a directory
    /// with at least --collapse-at distinct files seen becomes a directory
    /// rule only when it and everything below it is root-owned and writable
    /// by root only, and the runs did not run as root. Connect rules are the
    /// addresses and ports reached (never host names: the store has no DNS
    /// data; a v4-mapped IPv6 address as its IPv4 address; --fold-at folds
    /// an IPv4 /24 or an IPv6 /64); unix rules the sockets; max_depth and
    /// max_processes the observed maximum with headroom. Each rule has a
    /// comment with its evidence (count, first and last seen, a run). The
    /// output passes `sensor policy check`; try it with `sensor policy test`.
    Suggest {
        #[command(flatten)]
        select: RunSelect,
        /// The policy's name (default: the agent's, with "-learned")
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// Write `mode = "enforce"` (default: "audit", to try it first)
        #[arg(long)]
        enforce: bool,
        /// Distinct files seen in one directory from which it may become a
        /// directory rule (0: never)
        #[arg(long, value_name = "N", default_value_t = 8)]
        collapse_at: usize,
        /// Distinct addresses seen in one IPv4 /24 or IPv6 /64 on one port
        /// from which they become that network on that port (at least 2; 0:
        /// never, the default; never loopback, link-local, multicast, the
        /// cloud metadata networks or NAT64)
        #[arg(long, value_name = "N", default_value_t = 0)]
        fold_at: usize,
        /// Write the policy to FILE instead of stdout
        #[arg(short = 'o', long = "output", value_name = "FILE")]
        output: Option<PathBuf>,
        /// Local store of the daemon [default: the config's [store] path,
        /// else /var/lib/sensor/sensor.db]
        #[arg(long, value_name = "PATH", env = "SENSOR_DB", default_value = paths::DB, hide_default_value = true)]
        db: PathBuf,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// What a policy would have denied on stored runs (exit 1 if anything).
    ///
    /// Replays the runs' stored decisions through the daemon's own policy
    /// code (execs, connects to addresses and Unix sockets, forks against
    /// max_processes, sub-runs against max_depth, raw sockets) and lists each denial:
    /// rule, event seq, run; then a count.
    Test {
        /// The config file holding the policy ([policy.NAME] tables)
        file: PathBuf,
        /// The policy to test
        #[arg(long, value_name = "NAME")]
        policy: String,
        #[command(flatten)]
        select: RunSelect,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Which stored runs: one (with its sub-runs), or an agent's over a time.
#[derive(Debug, Args)]
pub struct RunSelect {
    /// Run id or unique prefix
    #[arg(
        long,
        value_name = "RUN",
        required_unless_present = "agent",
        conflicts_with = "agent"
    )]
    pub run: Option<String>,
    /// With --run: also every sub-run of the run
    #[arg(long, requires = "run", conflicts_with = "agent")]
    pub subtree: bool,
    /// Every run of this agent (with --since)
    #[arg(long, value_name = "NAME", requires = "since")]
    pub agent: Option<String>,
    /// With --agent: runs active since: RFC 3339 or a duration ago (7d)
    #[arg(long, value_name = "T", value_parser = parse_since, requires = "agent")]
    pub since: Option<std::time::SystemTime>,
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// Validate rule files and directories (their *.yml, *.yaml); errors name file:line.
    Check {
        /// Rule files or directories [default: the config's [detect] rules]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Which rules would have fired on a stored run's events (the daemon's
    /// own matching code, over the events as stored).
    ///
    /// First-seen rules start from what the store holds before and between
    /// the run's events (the same agents' runs on the same host), as the
    /// daemon's state did: a host an earlier run reached is not listed.
    /// Correlations count the run's events only.
    Test {
        /// Rule files or directories [default: the config's [detect] rules]
        paths: Vec<PathBuf>,
        /// Run id or unique prefix
        #[arg(long, value_name = "RUN")]
        run: String,
        /// Also the events of all its sub-runs
        #[arg(long)]
        subtree: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run id or unique prefix
    pub run: String,
    /// The HTML file to write
    #[arg(short = 'o', long = "output", value_name = "FILE.html")]
    pub output: PathBuf,
    /// Show every process in the trees: identical sibling commands are not
    /// folded into one expandable row with a count
    #[arg(long)]
    pub no_fold: bool,
    /// Local store of the daemon [default: the config's [store] path, else
    /// /var/lib/sensor/sensor.db]
    #[arg(long, value_name = "PATH", env = "SENSOR_DB", default_value = paths::DB, hide_default_value = true)]
    pub db: PathBuf,
    /// The daemon's state dir, whose provenance_keys.json checks the records
    /// when the store has none beside it [default: the config's [daemon]
    /// state_dir, else /var/lib/sensor]
    #[arg(long, value_name = "DIR", env = "SENSOR_STATE_DIR", default_value = paths::STATE_DIR, hide_default_value = true)]
    pub state_dir: PathBuf,
    #[command(flatten)]
    pub config: ConfigArg,
}

/// An event kind the sensor reports (`process.exec`, ...).
fn parse_kind(s: &str) -> Result<String, String> {
    if crate::event::Kind::parse(s).is_some() {
        return Ok(s.to_owned());
    }
    let known: Vec<&str> = crate::event::Kind::all()
        .map(crate::event::Kind::as_str)
        .collect();
    Err(format!("unknown kind {s:?} (kinds: {})", known.join(", ")))
}

/// RFC 3339 time (a date alone: its midnight UTC), or a duration before now.
fn parse_since(s: &str) -> Result<std::time::SystemTime, String> {
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t);
    }
    if s.len() == 10
        && let Ok(t) = humantime::parse_rfc3339_weak(&format!("{s}T00:00:00Z"))
    {
        return Ok(t);
    }
    match humantime::parse_duration(s) {
        Ok(d) => std::time::SystemTime::now()
            .checked_sub(d)
            .ok_or_else(|| format!("{s:?} is too far back")),
        Err(_) => Err(format!(
            "{s:?} is neither an RFC 3339 time (2026-12-05T10:00:00Z), a date (2026-12-05) \
             nor a duration like 10m"
        )),
    }
}

/// What `who --ip` looks for: an address or a network, and a port or a
/// port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpQuery {
    pub net: std::net::IpAddr,
    /// The prefix length: 32 or 128 for one address.
    pub prefix: u8,
    /// Inclusive; `None`: any port.
    pub ports: Option<(u16, u16)>,
}

impl IpQuery {
    /// One address, not a network.
    #[must_use]
    pub const fn is_single(&self) -> bool {
        self.prefix == if self.net.is_ipv4() { 32 } else { 128 }
    }

    /// `ip` is in the network (an IPv4-mapped IPv6 address counts as its
    /// IPv4 one).
    #[must_use]
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        crate::policy::net::contains(self.net, self.prefix, ip)
    }

    /// `port` is one of the ports asked for.
    #[must_use]
    pub fn port_matches(&self, port: Option<u64>) -> bool {
        self.ports.is_none_or(|(lo, hi)| {
            port.is_some_and(|p| (u64::from(lo)..=u64::from(hi)).contains(&p))
        })
    }
}

/// `ADDR`, `ADDR/LEN`, either with `:PORT` or `:LO-HI`; `[V6]:PORT`,
/// `[V6/LEN]:PORT`. A network with host bits set (10.0.0.1/8) is refused,
/// naming the network it would be.
fn parse_ip_query(s: &str) -> Result<IpQuery, String> {
    use crate::policy::net::{self, Target};
    let usage = "give ADDR, ADDR/LEN, ADDR:PORT, ADDR/LEN:PORT, [V6]:PORT or [V6/LEN]:PORT";
    let rule = net::parse(s).map_err(|e| format!("{s:?}: {e} ({usage})"))?;
    let Target::Cidr { net, prefix } = rule.target else {
        return Err(format!(
            "{s:?} is not an IP address or network; who --ip does not look up host names ({usage})"
        ));
    };
    let query = IpQuery {
        net,
        prefix,
        ports: rule.ports,
    };
    let network = net::network(net, prefix);
    if network != net {
        return Err(format!(
            "{s:?} has host bits set: the network is {network}/{prefix}"
        ));
    }
    Ok(query)
}

/// `K=V` → (K, V).
fn parse_label(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("label {s:?} is not K=V")),
    }
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Control socket of the daemon [default: the config's [daemon] socket,
    /// else /run/sensor/sensor.sock]
    #[arg(long, value_name = "PATH", env = "SENSOR_SOCKET", default_value = paths::SOCKET, hide_default_value = true)]
    pub socket: PathBuf,
    #[command(flatten)]
    pub config: ConfigArg,
    /// bpffs pin directory, read when the daemon cannot be reached: what it
    /// left attached and enforcing (root) [default: the config's [daemon]
    /// pin_dir, else /sys/fs/bpf/sensor]
    #[arg(long, value_name = "DIR", env = "SENSOR_PIN_DIR", default_value = paths::PIN_DIR, hide_default_value = true)]
    pub pin_dir: PathBuf,
    /// State directory, read when the daemon cannot be reached: the names
    /// and versions of the policies its pinned slots hold (root) [default:
    /// the config's [daemon] state_dir, else /var/lib/sensor]
    #[arg(long, value_name = "DIR", env = "SENSOR_STATE_DIR", default_value = paths::STATE_DIR, hide_default_value = true)]
    pub state_dir: PathBuf,
    /// Print the full status as one JSON object
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_wait_past_an_hour_is_refused_not_overflowed() {
        let launch = |wait: &str| {
            Cli::try_parse_from([
                "sensor", "launch", "--agent", "a", "--wait", wait, "--", "true",
            ])
        };
        assert!(launch("1h").is_ok());
        for wait in ["1h 1s", "9000y", "18446744073709551615s"] {
            let err = launch(wait)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains("--wait"), "{wait}: {err}");
        }
    }

    #[test]
    fn outputs_are_parsed_at_the_command_line() {
        let cli = Cli::try_parse_from([
            "sensor",
            "daemon",
            "--output",
            "-",
            "--output",
            "file:/tmp/x",
        ])
        .unwrap();
        let Command::Daemon(args) = cli.command else {
            panic!("daemon expected")
        };
        assert_eq!(args.outputs.len(), 2);
        let err = Cli::try_parse_from(["sensor", "daemon", "--output", "bogus://x"]).unwrap_err();
        assert!(err.to_string().contains("bogus://x"), "{err}");
        assert!(Cli::try_parse_from(["sensor", "daemon", "--nope"]).is_err());
    }

    #[test]
    fn query_arguments() {
        let cli = Cli::try_parse_from(["sensor", "who", "--ip", "[::1]:443"]).unwrap();
        let Command::Who(args) = cli.command else {
            panic!()
        };
        assert_eq!(
            args.ip,
            Some(IpQuery {
                net: "::1".parse().unwrap(),
                prefix: 128,
                ports: Some((443, 443))
            })
        );
        let ip = |s: &str| parse_ip_query(s);
        let v4 = ip("10.1.0.0/16:443").unwrap();
        assert!(!v4.is_single() && v4.ports == Some((443, 443)));
        assert!(v4.contains("10.1.200.3".parse().unwrap()));
        assert!(v4.contains("::ffff:10.1.0.9".parse().unwrap()), "v4-mapped");
        assert!(!v4.contains("10.2.0.1".parse().unwrap()));
        assert!(v4.port_matches(Some(443)) && !v4.port_matches(Some(80)));
        let v6 = ip("[2001:db8::/32]:1000-2000").unwrap();
        assert!(v6.contains("2001:db8:ffff::1".parse().unwrap()));
        assert!(!v6.contains("2001:db9::1".parse().unwrap()));
        assert!(v6.port_matches(Some(1500)) && !v6.port_matches(None));
        assert!(ip("2001:db8::/32").is_ok_and(|q| q.ports.is_none() && q.prefix == 32));
        assert!(ip("127.0.0.1").is_ok_and(|q| q.is_single()));
        for (bad, says) in [
            ("10.0.0.1/8", "host bits set: the network is 10.0.0.0/8"),
            ("10.0.0.0/33", "bad prefix length"),
            ("2001:db8::/129", "bad prefix length"),
            ("example.com", "does not look up host names"),
            ("10.0.0.0/8:99999", "bad port"),
            ("300.1.1.1/8", "neither an IP address"),
        ] {
            let err = ip(bad).unwrap_err();
            assert!(err.contains(says), "{bad}: {err}");
        }
        assert!(
            Cli::try_parse_from(["sensor", "who"]).is_err(),
            "--pid or --ip is required"
        );
        assert!(Cli::try_parse_from(["sensor", "who", "--ip", "not-an-ip"]).is_err());
        assert!(
            Cli::try_parse_from(["sensor", "events", "--subtree"]).is_err(),
            "--subtree needs --run"
        );
        assert!(Cli::try_parse_from(["sensor", "events", "--since", "10m"]).is_ok());
        assert!(Cli::try_parse_from(["sensor", "events", "--since", "yesterday-ish"]).is_err());
        assert!(Cli::try_parse_from(["sensor", "events", "--since", "2026-12-01"]).is_ok());
        let err = Cli::try_parse_from(["sensor", "events", "--kind", "proces.exec"])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown kind") && err.contains("process.exec"),
            "{err}"
        );
        let cli = Cli::try_parse_from([
            "sensor",
            "events",
            "--kind",
            "process.exec",
            "--kind",
            "network.connect",
            "--pid",
            "7",
            "--until",
            "10m",
            "--limit",
            "3",
        ])
        .unwrap();
        let Command::Events(args) = cli.command else {
            panic!()
        };
        assert_eq!(args.kind, ["process.exec", "network.connect"]);
        assert_eq!((args.pid, args.limit), (Some(7), Some(3)));
    }

    #[test]
    fn launch_arguments() {
        let cli = Cli::try_parse_from([
            "sensor", "launch", "--agent", "bot", "--label", "team=x", "--ttl", "2h", "--",
            "python3", "-c", "1",
        ])
        .unwrap();
        let Command::Launch(args) = cli.command else {
            panic!("launch expected")
        };
        assert_eq!(args.labels, [("team".to_owned(), "x".to_owned())]);
        assert_eq!(args.ttl, Some(std::time::Duration::from_secs(7200)));
        for bad in ["9000y", "8000y", "31d", "0s", "500ms"] {
            let err = Cli::try_parse_from([
                "sensor", "launch", "--agent", "bot", "--ttl", bad, "--", "true",
            ])
            .unwrap_err()
            .to_string();
            assert!(err.contains("ttl"), "{bad}: {err}");
        }
        assert_eq!(args.command.len(), 3);
        assert!(
            Cli::try_parse_from([
                "sensor", "launch", "--agent", "bot", "--label", "novalue", "--", "x"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["sensor", "launch", "--agent", "bot"]).is_err(),
            "CMD is required"
        );
    }

    #[test]
    fn suggest_and_test_take_one_run_or_an_agent_with_a_time() {
        let ok = |args: &[&str]| Cli::try_parse_from(args).is_ok();
        assert!(ok(&[
            "sensor",
            "policy",
            "suggest",
            "--run",
            "r",
            "--subtree",
            "-o",
            "f"
        ]));
        assert!(ok(&[
            "sensor", "policy", "suggest", "--agent", "a", "--since", "7d"
        ]));
        assert!(!ok(&["sensor", "policy", "suggest"]), "a run or an agent");
        assert!(
            !ok(&["sensor", "policy", "suggest", "--agent", "a"]),
            "--since"
        );
        assert!(!ok(&[
            "sensor", "policy", "suggest", "--run", "r", "--agent", "a", "--since", "1d"
        ]));
        assert!(!ok(&[
            "sensor",
            "policy",
            "suggest",
            "--agent",
            "a",
            "--since",
            "1d",
            "--subtree"
        ]));
        assert!(ok(&[
            "sensor", "policy", "test", "f.toml", "--policy", "p", "--run", "r", "--json"
        ]));
        assert!(
            !ok(&["sensor", "policy", "test", "f.toml", "--run", "r"]),
            "--policy"
        );
        assert!(ok(&["sensor", "policy", "check", "f.toml"]));
        assert!(ok(&["sensor", "policy", "check", "--config", "f.toml"]));
        assert!(
            !ok(&["sensor", "policy", "check", "a.toml", "--config", "b.toml"]),
            "one file"
        );
        assert!(ok(&["sensor", "rules", "check", "--config", "f.toml"]));
    }
}

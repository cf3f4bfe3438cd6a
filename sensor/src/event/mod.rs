//! The event users see: schema `sensor.event/v1`, one JSON object per line.
//!
//! [`Engine`] turns a decoded kernel record ([`raw::RawEvent`]) into an
//! [`Event`]: sequence number, wall-clock time, host, process keys, decoded
//! argv and paths. Field names are part of the user contract (DESIGN.md).
//!
//! An optional field is left out of the JSON when it is `None`
//! (`serde_with::skip_serializing_none` on each struct that has them); the
//! few written as `null` instead say `#[serialize_always]`.

pub mod json;
pub mod text;

use std::{collections::BTreeMap, net::IpAddr, sync::Arc, time::SystemTime};

use serde::{Serialize, Serializer};

use crate::identity::Host;

/// Schema name carried by every event.
pub const SCHEMA: &str = "sensor.event/v1";

/// Event kinds. Each name (`process.exec`, ...) is written once, here: the
/// wire form, parsing and the list of all kinds derive from it.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    strum::EnumCount,
    strum::EnumIter,
    strum::EnumString,
    strum::IntoStaticStr,
)]
pub enum Kind {
    #[strum(serialize = "process.spawn")]
    ProcessSpawn,
    #[strum(serialize = "process.exec")]
    ProcessExec,
    #[strum(serialize = "process.exit")]
    ProcessExit,
    #[strum(serialize = "network.connect")]
    NetworkConnect,
    #[strum(serialize = "sensor.lost")]
    SensorLost,
    #[strum(serialize = "run.start")]
    RunStart,
    #[strum(serialize = "run.end")]
    RunEnd,
    #[strum(serialize = "policy.violation")]
    PolicyViolation,
    #[strum(serialize = "run.degraded")]
    RunDegraded,
    #[strum(serialize = "process.tamper")]
    ProcessTamper,
    #[strum(serialize = "sensor.tamper")]
    SensorTamper,
    #[strum(serialize = "network.listen")]
    NetworkListen,
    #[strum(serialize = "network.accept")]
    NetworkAccept,
    #[strum(serialize = "network.socket")]
    NetworkSocket,
    #[strum(serialize = "sensor.gap")]
    SensorGap,
    #[strum(serialize = "sensor.blind")]
    SensorBlind,
    #[strum(serialize = "token.issued")]
    TokenIssued,
    #[strum(serialize = "detection")]
    Detection,
    #[strum(serialize = "run.checkpoint")]
    RunCheckpoint,
    #[strum(serialize = "tool.call")]
    ToolCall,
    #[strum(serialize = "transcript.unreadable")]
    TranscriptUnreadable,
    #[strum(serialize = "tool.unobserved")]
    ToolUnobserved,
    #[strum(serialize = "tool.unexplained")]
    ToolUnexplained,
}

impl Serialize for Kind {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Kind {
    /// How many kinds there are (counters are arrays of this size).
    pub const COUNT: usize = <Self as strum::EnumCount>::COUNT;

    /// Every kind, in a stable order (for counters).
    pub fn all() -> impl Iterator<Item = Self> {
        <Self as strum::IntoEnumIterator>::iter()
    }

    /// The kind named `name` (`process.exec`, ...).
    #[must_use]
    pub fn parse(name: &str) -> Option<Self> {
        name.parse().ok()
    }

    /// Its name on the wire.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// Position in [`Kind::all`].
    #[must_use]
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The user-facing kind of a kernel kind.
    #[must_use]
    pub const fn of_kernel(kind: sensor_common::event::EventKind) -> Self {
        use sensor_common::event::EventKind as K;
        match kind {
            K::ProcessSpawn => Self::ProcessSpawn,
            K::ProcessExec | K::ProcessExecFailed => Self::ProcessExec,
            K::ProcessExit => Self::ProcessExit,
            K::NetConnect | K::NetUnix => Self::NetworkConnect,
            // Counted under one kind (the record says which it is).
            K::Tamper => Self::ProcessTamper,
            K::NetSocket => Self::NetworkSocket,
        }
    }
}

/// A policy's verdict on one action (`policy.verdict`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Decision {
    Allow,
    Deny,
}

/// What a policy says about one action (`policy`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub name: String,
    pub verdict: Decision,
    /// The rule that allowed, or the list that had no match.
    pub rule: String,
    /// Whether the kernel blocked it.
    pub enforced: bool,
    /// Version of the policy set that decided (1 at start-up, +1 per reload).
    pub version: u64,
}

impl Verdict {
    #[must_use]
    pub fn is_deny(&self) -> bool {
        self.verdict == Decision::Deny
    }
}

impl Decision {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

impl Attributed {
    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How an event's process came into its run (`run.attribution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, strum::IntoStaticStr)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum Attributed {
    /// It called `sensor launch`.
    Launch,
    /// It was forked by a process of the run.
    Inherited,
    /// An `[[agent]]` matcher recognised its exec.
    Matcher,
    /// Placed from /proc at start-up, by its ancestry.
    Backfill,
    /// Placed by its `SENSOR_RUN_ID` marker.
    Env,
    Unknown,
}

/// What started a run (`run.started_by`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize, strum::IntoStaticStr,
)]
#[serde(rename_all = "snake_case")]
#[strum(serialize_all = "snake_case")]
pub enum StartedBy {
    #[default]
    Launch,
    Matcher,
    Backfill,
    /// A value this version does not know (a state file of another one).
    #[serde(other)]
    Unknown,
}

impl StartedBy {
    /// How a run's own first process came into it.
    #[must_use]
    pub const fn attributed(self) -> Attributed {
        match self {
            Self::Launch => Attributed::Launch,
            Self::Matcher => Attributed::Matcher,
            Self::Backfill => Attributed::Backfill,
            Self::Unknown => Attributed::Unknown,
        }
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

/// How an exec ended (`exec.result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ExecResult {
    Ok,
    Error,
}

/// How a connect ended (`network.result`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NetResult {
    Ok,
    Refused,
    InProgress,
    Error,
    /// The kernel saw the attempt but not its end.
    #[default]
    Unknown,
    /// Connected to a socket other than the allowed one: the caller was
    /// killed before it could use the connection.
    Killed,
}

/// Wall-clock time, serialized as RFC 3339 with nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp(pub SystemTime);

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&rfc3339(self.0))
    }
}

impl Timestamp {
    /// Milliseconds since the Unix epoch of the instant [`rfc3339`] writes
    /// (clamped to the epoch .. the end of year 9999, the fraction
    /// truncated).
    #[must_use]
    pub fn unix_ms(self) -> i64 {
        let ms = clamped(self.0).as_millis();
        i64::try_from(ms).unwrap_or(i64::MAX)
    }
}

/// The last instant RFC 3339 can write (9999-12-31T23:59:59.999999999Z).
const RFC3339_MAX: std::time::Duration = std::time::Duration::new(253_402_300_799, 999_999_999);

/// `t` as RFC 3339 with nanoseconds, clamped to what the format can hold
/// (the Unix epoch to the end of year 9999). humantime panics before the
/// epoch and fails past 9999, and a clock set by a root agent, a file or a
/// client can be anywhere: a time is never a reason to lose an event.
#[must_use]
pub fn rfc3339(t: SystemTime) -> humantime::Rfc3339Timestamp {
    humantime::format_rfc3339_nanos(SystemTime::UNIX_EPOCH + clamped(t))
}

/// `t` since the Unix epoch, within what RFC 3339 can hold.
fn clamped(t: SystemTime) -> std::time::Duration {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .min(RFC3339_MAX)
}

/// The agent run an event belongs to.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct RunRef {
    pub id: String,
    pub agent: String,
    pub principal: String,
    /// What a non-root launcher claimed with `--principal` (not verified).
    pub principal_claimed: Option<String>,
    #[serialize_always]
    pub parent_id: Option<String>,
    pub root_id: String,
    pub depth: u32,
    /// How this event's process was attributed.
    pub attribution: Attributed,
    /// The agent tool call that caused this event's process (read from the
    /// agent's transcript while the call was open, see `crate::transcripts`).
    pub tool_call: Option<CallRef>,
    /// Details carried by run.start and run.end only.
    #[serde(flatten)]
    pub details: Option<RunDetails>,
}

/// A tool call named on an event (`run.tool_call`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallRef {
    /// The agent's call id (`toolu_...`).
    pub id: String,
    /// The tool (`Bash`, ...).
    pub name: String,
}

/// What run.start and run.end add to the run object.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct RunDetails {
    pub uid: u32,
    #[serialize_always]
    pub policy: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub started_by: StartedBy,
    pub start: Timestamp,
    #[serialize_always]
    pub expires: Option<Timestamp>,
    pub end: Option<Timestamp>,
    pub end_reason: Option<String>,
}

/// One event.
///
/// The parts only a few kinds have are boxed: an event is moved several
/// times between the kernel record and its batch, and a batch holds many,
/// so its inline size is what the hot path copies (serde writes a box as
/// what it holds: the JSON is the same).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub schema: &'static str,
    pub seq: u64,
    pub time: Timestamp,
    pub host: Arc<Host>,
    pub kind: Kind,
    #[serialize_always]
    pub run: Option<RunRef>,
    pub process: Option<Process>,
    pub exec: Option<Exec>,
    pub network: Option<Network>,
    pub lost: Option<Box<Lost>>,
    /// What a run's record is missing (`run.degraded`).
    pub degraded: Option<Box<Degraded>>,
    /// What a process did to another process or to the sensor
    /// (`process.tamper`, `sensor.tamper`).
    pub tamper: Option<Box<Tamper>>,
    /// The run's policy verdict on this exec or connect.
    pub policy: Option<Verdict>,
    /// A time no daemon was reading the kernel's records (`sensor.gap`).
    pub gap: Option<Box<Gap>>,
    /// `"recovered"`: recorded by the kernel while no daemon was reading
    /// (a crash, a stop, an upgrade) and read by the next daemon. Absent
    /// for events read as they happened.
    pub delivery: Option<&'static str>,
    /// What the canary found the kernel path no longer reports, or that it
    /// reports again (`sensor.blind`).
    pub blind: Option<Box<Blind>>,
    /// A run token the daemon signed (`token.issued`); never the token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<Box<TokenIssued>>,
    /// A Sigma rule matched an event (`detection`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detection: Option<Box<Detection>>,
    /// `run.checkpoint`: the run's chain head, signed (filled in where the
    /// line is made, see `crate::provenance`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Box<Checkpoint>>,
    /// `tool.call`: a tool call the agent's transcript records, and the
    /// run's events it explains (see `crate::transcripts`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tool_call: Option<Box<ToolCall>>,
    /// `transcript.unreadable`: what of a run's transcripts could not be read.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Box<TranscriptIssue>>,
    /// `tool.unexplained`: a process tree of a run no tool call explains.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unexplained: Option<Box<Unexplained>>,
}

/// A tool call read from the agent's own transcript (`tool_call`, of
/// `tool.call`). The transcript is the agent's word, not the kernel's: the
/// call's `processes` are the run's events whose time and command line
/// match it.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct ToolCall {
    /// The agent's call id (`toolu_...`).
    pub id: String,
    /// The tool (`Bash`, `Read`, ...).
    pub name: String,
    /// The command of a shell tool; other inputs as compact JSON; cut to
    /// a size bound.
    pub input: String,
    pub input_truncated: Option<bool>,
    /// When the transcript says the call was made and its result came.
    pub call_time: Timestamp,
    #[serialize_always]
    pub result_time: Option<Timestamp>,
    /// The result was an error (as the agent recorded it).
    pub is_error: Option<bool>,
    /// The transcript file it was read from.
    pub transcript: String,
    /// The run's process and connect events this call explains, in seq order.
    pub processes: Vec<Linked>,
    /// More matched than are listed.
    pub processes_truncated: Option<bool>,
}

/// One event a tool call explains.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Linked {
    pub seq: u64,
    pub kind: Kind,
    pub key: String,
    pub pid: u32,
}

/// What `tool.unexplained` adds to the exec's process (`unexplained`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Unexplained {
    /// The `process.exec` that began the unexplained tree.
    pub exec_seq: u64,
    /// `no_tool_call`: it began while no call of the run explains it;
    /// `after_call`: it descends from a call's processes but began after
    /// that call's result (a background job that outlived its call).
    pub reason: &'static str,
    /// The call its parent belonged to (`after_call`).
    pub after_call: Option<CallRef>,
}

/// What could not be read of a run's transcripts (`transcript`, of
/// `transcript.unreadable`); reported once per run.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct TranscriptIssue {
    /// The file or directory concerned, when there is one.
    pub path: Option<String>,
    pub reason: String,
    /// Lines skipped so far: invalid JSON or longer than the bound.
    pub skipped_lines: u64,
}

/// What a `detection` event says: the rule, and the event it matched (the
/// run is the event's `run`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct Detection {
    /// The rule's `id` (its file's name when it has none).
    pub rule_id: String,
    pub title: String,
    /// `informational`, `low`, `medium`, `high`, `critical`.
    pub level: &'static str,
    /// The rule's tags (`attack.t1059`, ...).
    pub tags: Vec<String>,
    /// The file the rule was read from.
    pub rule_file: String,
    /// The matched event's seq and kind.
    pub event_seq: u64,
    pub event_kind: Kind,
    /// The matched event's process key.
    pub process_key: Option<String>,
}

/// A signed chain head (`checkpoint`, of `run.checkpoint`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize)]
pub struct Checkpoint {
    pub run_id: String,
    /// The run's events chained before this one.
    pub events: u64,
    /// The chain value of the last of them (hex).
    pub head: String,
    /// Ed25519 over `crate::provenance::checkpoint_message`, base64url.
    pub signature: String,
    /// The signing key (a kid of the token JWKS).
    pub kid: String,
    /// `end`, `events`, `time`.
    pub reason: &'static str,
    /// The run ended while no daemon ran; signed at the next start.
    pub recovered: Option<bool>,
}

/// What a `token.issued` event says of the token (never the token itself).
#[derive(Debug, Clone, Serialize)]
pub struct TokenIssued {
    pub jti: String,
    pub aud: String,
    pub iss: String,
    pub sub: String,
    pub iat: Timestamp,
    pub exp: Timestamp,
    pub scopes: Vec<String>,
    /// The signing key's id.
    pub kid: String,
}

/// [`Event::delivery`] of an event recorded while no daemon was reading.
pub const DELIVERY_RECOVERED: &str = "recovered";

/// A stretch of time in which no daemon read the kernel's records: from the
/// previous daemon's last sign of life to this daemon's take-over.
#[derive(Debug, Clone, Serialize)]
pub struct Gap {
    /// The previous daemon's last sign of life (its last heartbeat, at most
    /// a second old, or its stop); absent when unknown.
    pub start: Option<Timestamp>,
    /// When this daemon's programs took over.
    pub end: Timestamp,
    /// `end - start`, seconds.
    pub seconds: Option<f64>,
    /// How the previous daemon ended: `crash` (no stop: SIGKILL, a panic,
    /// the OOM killer, a hang killed by the watchdog), `stop`, `handover`
    /// (an upgrade took over), `detached` (stopped with
    /// `--detach-on-exit`), `unloaded` (its pins were removed: `sensor
    /// unload`), `reboot`.
    pub cause: &'static str,
    /// The previous daemon's pid, when known.
    pub previous_pid: Option<u32>,
    /// Whether the kernel kept recording (and enforcing) through the gap:
    /// the previous daemon's programs were still attached and active.
    /// Everything they recorded follows with `delivery: "recovered"`.
    pub recorded: bool,
    /// How many of the previous daemon's programs were still attached.
    pub programs_attached: usize,
    /// Policies whose rules stayed in the kernel through the gap, by
    /// mode (`enforce`, `audit`): slot counts.
    pub policies_pinned: BTreeMap<&'static str, u32>,
    /// Records the kernel could not keep during the gap (the ring was
    /// full); the `sensor.lost` that follows has them by kind and run.
    pub lost: u64,
    /// Whether the previous ring was reused or, its size having changed,
    /// read to the end and replaced.
    pub ring: &'static str,
}

/// A time window (`sensor.lost` of a gap).
#[derive(Debug, Clone, Serialize)]
pub struct Window {
    pub start: Option<Timestamp>,
    pub end: Timestamp,
}

impl Event {
    /// An event of `kind` with its envelope (schema, seq, time, host) and
    /// nothing else: the producer fills in what its kind carries.
    #[must_use]
    pub fn new(kind: Kind, seq: u64, time: Timestamp, host: Arc<Host>) -> Self {
        Self {
            schema: SCHEMA,
            seq,
            time,
            host,
            kind,
            run: None,
            process: None,
            exec: None,
            network: None,
            lost: None,
            degraded: None,
            tamper: None,
            policy: None,
            gap: None,
            delivery: None,
            blind: None,
            token: None,
            detection: None,
            checkpoint: None,
            tool_call: None,
            transcript: None,
            unexplained: None,
        }
    }

    /// Whether this is an attempt to get out of the run's record or control,
    /// which the store marks and the report and `sensor events --escapes`
    /// show next to the denials: a process reached into another one
    /// (`process.tamper`) or into the sensor (`sensor.tamper`), a raw, ICMP or
    /// packet socket (`network.socket`: it reaches any address without the
    /// connect hooks), or a Unix connect the run's policy denies (the way to
    /// a spawner outside the run). Its `policy.violation` twin is not one (it
    /// repeats it).
    #[must_use]
    pub fn is_escape_attempt(&self) -> bool {
        match self.kind {
            Kind::ProcessTamper | Kind::SensorTamper | Kind::NetworkSocket => true,
            Kind::NetworkConnect => {
                self.network.as_ref().is_some_and(|n| n.family == "unix")
                    && self.policy.as_ref().is_some_and(Verdict::is_deny)
            }
            _ => false,
        }
    }
}

/// A `sensor.blind` report: the canary's records did not come through the
/// kernel path (`restored: false`), or came through again (`restored: true`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct Blind {
    /// False: the sensor is blind; true: it sees again.
    pub restored: bool,
    /// What did not come through: `exec` (`process.exec` records), `connect`
    /// (`network.connect` records). On a restore, everything that was
    /// missing during the blindness.
    pub missing: Vec<&'static str>,
    /// When the first round that failed started.
    pub since: Timestamp,
    /// When sight came back (restores only).
    pub until: Option<Timestamp>,
    /// The canary round this report is about (the one that failed, or the
    /// one that saw again).
    pub round: u64,
    /// Rounds that failed since `since`.
    pub rounds_failed: u64,
    /// What the round found, for a person: what was missing, whether the
    /// canary itself ran.
    pub detail: String,
}

/// The process an event is about.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize)]
pub struct Process {
    pub key: String,
    pub pid: u32,
    /// Pid inside the process's own pid namespace, when that is not the host's.
    pub ns_pid: Option<u32>,
    pub tid: u32,
    pub ppid: u32,
    pub parent_key: String,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub exe: Option<String>,
    pub exe_b64: Option<String>,
    pub exe_truncated: Option<bool>,
    pub argv: Option<Vec<String>>,
    pub argv_b64: Option<String>,
    pub argc: Option<u32>,
    pub argv_truncated: Option<bool>,
    pub argv_len: Option<u32>,
    pub cwd: Option<String>,
    #[serialize_always]
    pub exit_code: Option<i32>,
    #[serialize_always]
    pub exit_signal: Option<i32>,
    pub core_dumped: Option<bool>,
    pub parent_exe: Option<String>,
}

/// Details of an exec attempt.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct Exec {
    /// The path as the caller passed it.
    pub filename: String,
    pub result: ExecResult,
    pub errno: Option<i32>,
    pub error: Option<String>,
    pub old_tid: u32,
    pub inode: Option<u64>,
    pub dev: Option<String>,
    /// The executed file changed (its inode's ctime) after the run started;
    /// set by the daemon (`detect::exec_file`), absent when not known.
    pub modified_in_run: Option<bool>,
    /// The kernel's `dev_t` of the executed file, for policy checks.
    #[serde(skip)]
    pub dev_raw: Option<u32>,
    /// The id of the mount the executed file was reached on, for policy checks.
    #[serde(skip)]
    pub mnt_id: Option<u32>,
}

/// Destination and outcome of a connect.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize)]
pub struct Network {
    pub transport: &'static str,
    pub family: &'static str,
    /// IPv4/IPv6 destination (absent for `family: "unix"`).
    pub dst_ip: Option<IpAddr>,
    pub dst_port: Option<u16>,
    /// A Unix socket address as the caller gave it: a path, or `@name` for an
    /// abstract name (bytes that are not UTF-8, NUL included, as `\xNN`).
    pub path: Option<String>,
    /// True for an abstract Unix name (no file).
    #[serde(rename = "abstract")]
    pub abstract_name: Option<bool>,
    /// The address the connected Unix peer is bound to, read from the
    /// kernel's socket, when it differs from `path` (a symlink, a relative
    /// path, a path replaced in between).
    pub peer_path: Option<String>,
    /// The local end (`network.listen`, `network.accept`).
    pub local_ip: Option<IpAddr>,
    pub local_port: Option<u16>,
    /// The peer that connected in (`network.accept`).
    pub src_ip: Option<IpAddr>,
    pub src_port: Option<u16>,
    /// Datagrams sent to this destination without connect() so far, by
    /// this process (reported at the 1st, 2nd, 4th, 8th, ...).
    pub sends: Option<u32>,
    pub result: NetResult,
    #[serialize_always]
    pub errno: Option<i32>,
    #[serialize_always]
    pub error: Option<String>,
    /// `sendmsg` for a datagram sent to an address without connect() (reported
    /// only when a policy denied it); absent for connect().
    pub via: Option<&'static str>,
}

/// What was lost since the previous `sensor.lost`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lost {
    /// Newly lost events (kernel ring buffer full) since the previous report.
    pub total: u64,
    pub by_kind: BTreeMap<&'static str, u64>,
    /// Everything lost in the kernel since the daemon started.
    pub cumulative: u64,
    /// Lines an output dropped (its queue was full or writing failed), since the previous report.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub by_output: BTreeMap<String, u64>,
    /// Of `total`, the records of agent runs, by run id (each run also gets
    /// a `run.degraded`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub runs: BTreeMap<String, u64>,
    /// When the loss happened, when it is known to lie in a gap (no daemon
    /// was reading); absent for losses of a running daemon (since the
    /// previous report).
    pub window: Option<Window>,
    /// Records in the ring that this build could not read (written by a
    /// build with another record layout), by wire version.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub unreadable: BTreeMap<u32, u64>,
    /// What the file watch lost since the previous report (not in `total`:
    /// the kernel does not say how many file events an overflow lost).
    pub file_watch: Option<FileWatchLost>,
}

/// File changes lost by the file watch (`sensor.lost` `lost.file_watch`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileWatchLost {
    /// Times the kernel's queue of file events overflowed (16384 events):
    /// each lost an unknown number of changes.
    pub overflows: u64,
    /// Reports lost because the pipeline's queue was full.
    pub dropped: u64,
}

/// What the kernel could not deliver of one run, since the previous
/// `run.degraded` of that run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Degraded {
    /// Records of the run lost (the ring buffer was full).
    pub lost_events: u64,
    /// Denial records of the run the kernel held back (more than
    /// `DENIALS_PER_RUN_PER_SEC` in a second); each was still decided and,
    /// under enforce, blocked.
    pub denials_suppressed: u64,
}

/// What a process did to another process or to the sensor, or what the
/// daemon's integrity check found (`process.tamper`, `sensor.tamper`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Default, Serialize)]
pub struct Tamper {
    /// `ptrace`, `process_vm_writev`, `pidfd_getfd`, `proc_mem` (process);
    /// `signal`, `sensor_file`, `bpf` (sensor, seen in the kernel);
    /// `integrity` (sensor, found by the daemon's check); `file` (sensor:
    /// a change to its files, seen by the file watch).
    pub method: &'static str,
    /// What happened, briefly: "ptrace attach", "signal", "pin removed",
    /// "link detached", "policy map changed", "unlink", "rename", ...
    pub what: String,
    /// What it happened to: a process, a file, a pin path, a program, a map.
    pub object: String,
    /// `kernel`: seen at the syscall, before its effect; `integrity check`:
    /// found by the daemon's check every second, after it; `after`: told
    /// by the kernel once the change was made (`file`).
    pub detected: &'static str,
    /// The process reached into (process tamper, signals).
    pub target: Option<TamperTarget>,
    /// The sensor file written (`sensor_file`).
    pub file: Option<TamperFile>,
    /// The signal sent (`signal`).
    pub signal: Option<u32>,
    /// The kernel killed the caller (enforce).
    pub killed: Option<bool>,
    /// The daemon put it back (`integrity`).
    pub repaired: Option<bool>,
    /// Earlier changes by the same process counted, not reported one by
    /// one (`file`: rate limit).
    pub suppressed: Option<u64>,
    /// What was found and done (`integrity`).
    pub detail: Option<String>,
}

/// The target process of a tamper.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct TamperTarget {
    pub pid: u32,
    pub key: String,
    pub exe: Option<String>,
    /// The target's run (null: in no run).
    #[serialize_always]
    pub run: Option<RunRef>,
}

/// A file of the sensor that a tamper wrote or changed.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, Serialize)]
pub struct TamperFile {
    /// `pins`, `state`, `store`, `config`, `binary`.
    pub kind: &'static str,
    /// `sensor_file`: the protected path the file is (or is below);
    /// `file`: the file changed (a rename's old name).
    pub path: Option<String>,
    /// The protected file's device and inode (`sensor_file`).
    pub dev: Option<String>,
    pub inode: Option<u64>,
    /// A rename's new name, when it is in the sensor's directories (`file`).
    pub to: Option<String>,
    /// It is a directory (`file`).
    pub dir: Option<bool>,
}

#[cfg(test)]
mod tests {
    /// What the hot path moves per event (several times between the record
    /// and its batch) and a batch holds inline: the parts only a few kinds
    /// have stay boxed (it was 2 KiB before they were; 1160 bytes after,
    /// mostly `process`, `run`, `network` and `exec`).
    #[test]
    fn an_event_stays_small_inline() {
        let size = size_of::<super::Event>();
        assert!(size <= 1200, "an Event is {size} bytes inline");
    }
}

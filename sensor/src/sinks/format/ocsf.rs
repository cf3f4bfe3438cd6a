//! The OCSF form of `sensor.event/v1` events (`--output SPEC,format=ocsf`).
//!
//! Target: OCSF schema **1.7.0** (`metadata.version`), checked in the tests by
//! a third-party validator (`tests/ocsf/validate.py`: the JSON Schema that the
//! `ocsf-json-schema` package generates from the official 1.7.0 export, plus
//! the `pydantic-ocsf` models). Every event declares the profiles it uses in
//! `metadata.profiles`: `host` always, `security_control` when it carries a
//! policy verdict.
//!
//! # Classes
//!
//! | sensor kind | OCSF class (class_uid) | activity_id | notes |
//! |---|---|---|---|
//! | `process.spawn` | Process Activity (1007) | Launch (1), `launch_type_id` Fork (2) | `process` = child, `actor.process` = parent |
//! | `process.exec` | Process Activity (1007) | Launch (1), `launch_type_id` Exec (3) | failed exec: status Failure, `status_code` = errno name, `process.file` = the file it tried |
//! | `process.exit` | Process Activity (1007) | Terminate (2) | `exit_code`; a signal goes to `status_detail` and `unmapped.process.exit_signal` |
//! | `network.connect` (IP) | Network Activity (4001) | `result` ok/in_progress/unknown: Open (1); refused: Refuse (5); error: Fail (4) | `dst_endpoint` {ip, port}, `connection_info` {protocol_name, protocol_num, protocol_ver_id, direction_id Outbound} |
//! | `network.connect` with `sends` (unconnected datagrams) | Network Activity (4001) | Traffic (6) | `traffic.packets_out` = `sends`, status Unknown |
//! | `network.connect` `family: "unix"` | Network Activity (4001) | as for IP; `killed`: Open (1), status Failure | `dst_endpoint.name` = the socket path (`@name` for an abstract one), `direction_id` Local (4); no protocol (family and transport stay in `unmapped.network`) |
//! | `network.listen` | Network Activity (4001) | Listen (7) | `dst_endpoint` = the local address, `direction_id` Inbound |
//! | `network.accept` | Network Activity (4001) | Open (1) | `src_endpoint` = the peer, `dst_endpoint` = the local address, `direction_id` Inbound (1.7.0 has no Accept activity) |
//! | `network.socket` | Network Activity (4001) | created: Open (1); refused (EPERM): Fail (4) | no peer: `src_endpoint` {hostname} is this host; `protocol_name` raw/icmp/packet (ICMP: `protocol_num` 1 or 58), `direction_id` Unknown |
//! | `process.tamper` | Process Activity (1007) | ptrace, process_vm_writev, proc_mem: Inject (4), `injection_type_id` Other (99), `injection_type` "ptrace attach" / "process_vm_writev" / "/proc/PID/mem"; pidfd_getfd: Open (3) (it takes a descriptor of the other process's) | `process` = the target (`process.session.uid` = its run), `actor.process` = the caller; `is_alert` true, severity Medium when the caller was killed (status Failure), High when not (status Unknown) |
//! | `policy.violation` | the class of what it is about: with `network` 4001, with a `tamper` as that tamper, otherwise 1007 (exec, `max_processes` fork, `max_depth` launch) | as for that action | `is_alert` true, severity Medium when blocked, High when only reported |
//! | `run.start` | Application Lifecycle (6002) | Start (3) | `app.name` = agent, `actor.process` = the run's first process |
//! | `run.end` | Application Lifecycle (6002) | Stop (4) | `start_time`, `end_time`, `duration`, `status_detail` = end reason |
//! | `sensor.lost` | Base Event (0) | Other (99), `activity_name` "Events Lost" | `count` = newly lost events |
//! | `sensor.gap` | Base Event (0) | Other (99), `activity_name` "Sensor Gap" | `count` = records lost in the gap, `message` says how long, why and whether the kernel recorded, severity Low when it recorded and lost nothing, Medium otherwise; `gap` whole in `unmapped` (as `delivery` of a recovered event) |
//! | `run.degraded` | Base Event (0) | Other (99), `activity_name` "Run Degraded" | `count` = lost + held-back records, severity Medium when records were lost, Low otherwise; `degraded` whole in `unmapped` |
//! | `sensor.tamper` | Detection Finding (2004) | Create (1) | `finding_info` {uid = boot id + seq, title = "what: object", desc = detail, types ["sensor.tamper"]}, `is_alert` true; integrity check: severity Medium when the daemon put it back, High when not; seen in the kernel: `actor.process` = the caller, severity Medium when it was killed, High when not; no `status` (a finding's status is its review state); `tamper` whole in `unmapped` |
//! | `sensor.blind` | Detection Finding (2004) | blind: Create (1), `is_alert` true, severity High; restored: Close (3), severity Informational | `finding_info` {uid = boot id + "blind" + `since` (the same for a blindness and its restore), title, desc = detail, types ["sensor.blind"]}; `blind` whole in `unmapped` |
//! | `detection` | Detection Finding (2004) | Create (1) | `finding_info` {uid = boot id + seq, title = the rule's title, desc = the rule's file, types ["detection"]}, severity from the rule's level, `is_alert` from low up; `detection` whole in `unmapped` (see `ocsf_detection.rs`) |
//! | anything else | Base Event (0) | Other (99), `activity_name` = kind | |
//!
//! OCSF 1.x has no separate exec activity: the Process Activity `Launch`
//! activity covers both steps of Unix process creation, told apart by
//! `launch_type_id` (Fork = 2 for the new process, Exec = 3 for the image
//! replacement), which is what 1.7.0 prescribes. An agent run starting or
//! ending is an application (the agent) starting or stopping, hence
//! Application Lifecycle rather than the Base Event.
//!
//! # Common fields
//!
//! `time` (ms since the epoch, from the RFC 3339 `time`; the original string
//! is `metadata.original_time`), `type_uid` = class_uid * 100 + activity_id,
//! captions (`class_name`, `category_name`, `activity_name`, `type_name`,
//! `severity`, `status`), `metadata` {version, product {name "sensor",
//! vendor_name "sensor", version}, profiles, log_version (= `schema`),
//! event_code (= `kind`), sequence (= `seq`), original_time, correlation_uid},
//! `device` {hostname = host.name, boot_uid = host.boot_id, type_id Unknown}.
//! A process is {pid, uid (= the process key), tid, name (= comm),
//! file {path, name, type_id Executable File} (= exe), cmd_line (argv joined
//! with spaces), working_directory, user {uid}, parent_process {pid, uid
//! (= parent key), file (spawn: the parent's exe)}}.
//!
//! # The agent run
//!
//! | run field | OCSF place |
//! |---|---|
//! | `id` | `actor.session.uid` |
//! | `agent` | `actor.app_name` (and `app.name` in 6002) |
//! | `principal` | `actor.user.name` (`actor.user.uid` = the run's uid on run.start/end) |
//! | `root_id` | `metadata.correlation_uid` (correlates a whole agent tree) |
//! | `start`, `expires`, `end_reason` (run.start/end) | `actor.session.created_time`, `expiration_time`, `expiration_reason` |
//! | everything (`parent_id`, `depth`, `attribution`, labels, …) | `unmapped.run`, the run object unchanged (`null` outside runs) |
//!
//! # Policy verdicts (`security_control` profile)
//!
//! `policy` {name, version, data {verdict, rule, enforced}}; allow: action
//! Allowed / disposition Allowed; deny enforced: action Denied / disposition
//! Blocked, status Failure; deny not enforced (audit): action Observed /
//! disposition Detected. The event that carries a deny is severity Low; its
//! `policy.violation` twin has `is_alert` true.
//!
//! # Nothing lost
//!
//! `unmapped` always has `kind`, `seq` and `run`, plus `policy` and `lost`
//! unchanged when present, and whatever of `process`, `exec`, `network` and
//! `host` has no OCSF place (e.g. `argv` as an array, `exit_signal`,
//! `exec.filename`, `network.via`), and any top-level field this mapping does
//! not know. OCSF attributes are never `null` (absent instead).
//!
//! # Cost
//!
//! The mapping is decided first (`Plan`, borrowing from the input), then
//! written straight into `out` (no intermediate `Value`): about 4x the cost of
//! re-serializing the input event, for an output about 2.4x its size.

use serde::Serialize;
use serde_json::{Map, Value};

#[path = "ocsf_detection.rs"]
mod detection;

/// The OCSF schema version the output follows (`metadata.version`).
pub const OCSF_VERSION: &str = "1.7.0";

/// Appends the OCSF form of `event` (one JSON object, no newline) to `out`.
pub fn encode(event: &crate::event::Event, out: &mut Vec<u8>) -> Result<(), super::FormatError> {
    let value = serde_json::to_value(event)?;
    encode_value(&value, out)?;
    Ok(())
}

/// Appends the OCSF form of one sensor.event/v1 event (one JSON object, no newline) to `out`.
pub fn encode_value(event: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let empty = Map::new();
    let event = event.as_object().unwrap_or(&empty);
    let plan = Plan::of(event);
    plan.write(event, out)
}

type Obj = Map<String, Value>;
type Res = Result<(), serde_json::Error>;

/// Top-level fields of a sensor event this mapping consumes.
const KNOWN_TOP: &[&str] = &[
    "schema", "seq", "time", "host", "kind", "run", "process", "exec", "network", "lost", "policy",
];
/// `process` fields with an OCSF place.
const MAPPED_PROCESS: &[&str] = &[
    "key",
    "pid",
    "tid",
    "ppid",
    "parent_key",
    "uid",
    "comm",
    "exe",
    "cwd",
    "exit_code",
    "parent_exe",
];
/// `exec` fields with an OCSF place (in Process Activity).
const MAPPED_EXEC: &[&str] = &["result", "error", "old_tid"];
/// `network` fields with an OCSF place (in Network Activity), by what the
/// event is about.
const MAPPED_NETWORK: &[&str] = &[
    "transport",
    "family",
    "dst_ip",
    "dst_port",
    "result",
    "error",
];
/// A Unix connect: the path is `dst_endpoint.name`; family and transport
/// have no OCSF place (IANA protocols and IP versions only).
const MAPPED_UNIX: &[&str] = &["path", "result", "error"];
/// Unconnected datagrams: the count is `traffic.packets_out`.
const MAPPED_TRAFFIC: &[&str] = &[
    "transport",
    "family",
    "dst_ip",
    "dst_port",
    "sends",
    "result",
    "error",
];
/// A listener: the local end is `dst_endpoint` (the end connections come to).
const MAPPED_LISTEN: &[&str] = &[
    "transport",
    "family",
    "local_ip",
    "local_port",
    "result",
    "error",
];
/// An accepted connection: the peer is `src_endpoint`, the local end `dst_endpoint`.
const MAPPED_ACCEPT: &[&str] = &[
    "transport",
    "family",
    "local_ip",
    "local_port",
    "src_ip",
    "src_port",
    "result",
    "error",
];
/// A raw, ICMP or packet socket: no endpoint.
const MAPPED_SOCKET: &[&str] = &["transport", "family", "result", "error"];

/// What a `network` object is about, which decides its activity and
/// endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NetShape {
    /// A connect (or a denied datagram) to an IP address.
    Connect,
    /// A connect or datagram to a Unix socket (`family: "unix"`).
    Unix,
    /// Unconnected datagrams to an IP address, with their count (`sends`).
    Traffic,
    /// `network.listen`.
    Listen,
    /// `network.accept`.
    Accept,
    /// `network.socket` (or its `policy.violation`): no endpoint.
    Socket,
}

impl NetShape {
    fn of(kind: &str, n: &Obj) -> Self {
        match kind {
            "network.listen" => Self::Listen,
            "network.accept" => Self::Accept,
            "network.socket" => Self::Socket,
            _ if str_of(n, "family") == Some("unix") => Self::Unix,
            _ if n.get("sends").is_some_and(|v| !v.is_null()) => Self::Traffic,
            _ if text_of(n, "dst_ip").is_none() && text_of(n, "path").is_none() => Self::Socket,
            _ => Self::Connect,
        }
    }

    const fn mapped(self) -> &'static [&'static str] {
        match self {
            Self::Connect => MAPPED_NETWORK,
            Self::Unix => MAPPED_UNIX,
            Self::Traffic => MAPPED_TRAFFIC,
            Self::Listen => MAPPED_LISTEN,
            Self::Accept => MAPPED_ACCEPT,
            Self::Socket => MAPPED_SOCKET,
        }
    }
}
/// `host` fields with an OCSF place.
const MAPPED_HOST: &[&str] = &["name", "boot_id"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    Base,
    Process,
    Network,
    AppLifecycle,
    Finding,
}

impl Class {
    const fn uid(self) -> u64 {
        match self {
            Self::Base => 0,
            Self::Process => 1007,
            Self::Network => 4001,
            Self::AppLifecycle => 6002,
            Self::Finding => 2004,
        }
    }

    const fn name(self) -> &'static str {
        match self {
            Self::Base => "Base Event",
            Self::Process => "Process Activity",
            Self::Network => "Network Activity",
            Self::AppLifecycle => "Application Lifecycle",
            Self::Finding => "Detection Finding",
        }
    }

    const fn category(self) -> (u64, &'static str) {
        match self {
            Self::Base => (0, "Uncategorized"),
            Self::Process => (1, "System Activity"),
            Self::Network => (4, "Network Activity"),
            Self::AppLifecycle => (6, "Application Activity"),
            Self::Finding => (2, "Findings"),
        }
    }
}

/// OCSF `status_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Unknown = 0,
    Success = 1,
    Failure = 2,
}

impl Status {
    const fn caption(self) -> &'static str {
        match self {
            Self::Unknown => "Unknown",
            Self::Success => "Success",
            Self::Failure => "Failure",
        }
    }
}

/// How a sensor process is shown as an OCSF `process` object.
#[derive(Debug, Clone, Copy)]
enum Shape<'a> {
    /// The process itself: pid, key, tid, comm, `file` (the image to show),
    /// argv/cwd when `cmd`, user, parent; `terminated_time` for an exit.
    Full {
        file: Option<&'a str>,
        name: bool,
        cmd: bool,
        terminated: Option<i64>,
    },
    /// The same process as the one acting on itself (exec, exit): pid, key,
    /// `tid` (the thread that called exec), user, parent; `file`/`name`
    /// only when given (the caller's image of a failed exec).
    Actor {
        tid: Option<u64>,
        file: Option<&'a str>,
        name: bool,
    },
    /// Its parent (the actor of a fork): ppid, parent key, parent exe, user.
    Parent,
}

/// What to write for one event: decided first, then written in one pass.
struct Plan<'a> {
    kind: &'a str,
    class: Class,
    activity_id: u64,
    activity_name: &'a str,
    status: Option<Status>,
    status_code: Option<&'a str>,
    status_detail: Option<String>,
    severity_id: u64,
    message: Option<String>,
    launch_type: Option<(u64, &'static str)>,
    exit_code: Option<i64>,
    count: Option<u64>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    duration: Option<i64>,
    /// Application Lifecycle: the agent.
    app_name: Option<&'a str>,
    process: Option<(&'a Obj, Shape<'a>)>,
    actor_process: Option<(&'a Obj, Shape<'a>)>,
    /// Network Activity: the sensor `network` object and what it is about.
    network: Option<(&'a Obj, NetShape)>,
    /// Process Activity Inject: (`injection_type_id`, `injection_type`).
    injection: Option<(u64, &'static str)>,
    /// The target process's run (`process.session.uid` of a process tamper).
    target_session: Option<&'a str>,
    policy: Option<&'a Obj>,
    /// (action_id, action, disposition_id, disposition)
    security: Option<(u64, &'static str, u64, &'static str)>,
    /// Detection Finding: `finding_info` (uid, title, desc).
    finding: Option<(String, String, Option<&'a str>)>,
    is_alert: bool,
    time_ms: i64,
    time_parsed: bool,
    /// Whether `exec` fields were mapped (only the rest goes to `unmapped`);
    /// otherwise `exec` goes there whole. Same for `network`.
    exec_mapped: bool,
    network_mapped: Option<&'static [&'static str]>,
}

fn obj(v: Option<&Value>) -> Option<&Obj> {
    v.and_then(Value::as_object)
}

fn str_of<'a>(m: &'a Obj, key: &str) -> Option<&'a str> {
    m.get(key).and_then(Value::as_str)
}

/// A non-empty string field.
fn text_of<'a>(m: &'a Obj, key: &str) -> Option<&'a str> {
    str_of(m, key).filter(|s| !s.is_empty())
}

fn u64_of(m: &Obj, key: &str) -> Option<u64> {
    m.get(key).and_then(Value::as_u64)
}

fn i64_of(m: &Obj, key: &str) -> Option<i64> {
    m.get(key).and_then(Value::as_i64)
}

fn bool_of(m: &Obj, key: &str) -> Option<bool> {
    m.get(key).and_then(Value::as_bool)
}

/// `actor.process` of the process that acted: all of it.
fn acting(p: Option<&Obj>) -> Option<(&Obj, Shape<'_>)> {
    p.map(|p| {
        let full = Shape::Full {
            file: text_of(p, "exe"),
            name: true,
            cmd: true,
            terminated: None,
        };
        (p, full)
    })
}

/// `pid N (EXE)` of the process that acted, for messages.
fn who(p: Option<&Obj>) -> String {
    p.map_or_else(
        || "a process".to_owned(),
        |p| {
            format!(
                "pid {} ({})",
                u64_of(p, "pid").unwrap_or(0),
                text_of(p, "exe").unwrap_or("?")
            )
        },
    )
}

fn severity_caption(id: u64) -> &'static str {
    match id {
        1 => "Informational",
        2 => "Low",
        3 => "Medium",
        4 => "High",
        5 => "Critical",
        6 => "Fatal",
        _ => "Unknown",
    }
}

/// The last component of a path (the path itself when it has none).
fn base_name(path: &str) -> &str {
    match path.rsplit('/').next() {
        Some(name) if !name.is_empty() => name,
        _ => path,
    }
}

/// "ENOENT (errno 2)", "errno 2", or the name alone.
fn errno_text(error: Option<&str>, errno: Option<i64>) -> Option<String> {
    match (error, errno) {
        (Some(e), Some(n)) if e != n.to_string() => Some(format!("{e} (errno {n})")),
        (_, Some(n)) => Some(format!("errno {n}")),
        (Some(e), None) => Some(e.to_owned()),
        (None, None) => None,
    }
}

impl<'a> Plan<'a> {
    fn new(kind: &'a str, class: Class, activity_id: u64, activity_name: &'a str) -> Self {
        Self {
            kind,
            class,
            activity_id,
            activity_name,
            status: None,
            status_code: None,
            status_detail: None,
            severity_id: 1,
            message: None,
            launch_type: None,
            exit_code: None,
            count: None,
            start_time: None,
            end_time: None,
            duration: None,
            app_name: None,
            process: None,
            actor_process: None,
            network: None,
            injection: None,
            target_session: None,
            policy: None,
            security: None,
            finding: None,
            is_alert: false,
            time_ms: 0,
            time_parsed: false,
            exec_mapped: false,
            network_mapped: None,
        }
    }

    /// The mapping of one sensor event.
    fn of(event: &'a Obj) -> Self {
        let kind = str_of(event, "kind").unwrap_or("");
        let process = obj(event.get("process"));
        let exec = obj(event.get("exec"));
        let network = obj(event.get("network"));
        let policy = obj(event.get("policy"));
        let parsed = str_of(event, "time").and_then(parse_rfc3339_ms);
        let time_ms = parsed.unwrap_or_else(now_ms);
        let tamper = obj(event.get("tamper"));
        // A tamper's policy.violation twin maps as the tamper does.
        let tamper_class = match kind {
            "process.tamper" | "sensor.tamper" => Some(kind),
            _ => tamper.map(|t| match str_of(t, "method") {
                Some("signal" | "sensor_file" | "bpf" | "integrity") => "sensor.tamper",
                _ => "process.tamper",
            }),
        };
        let mut plan = match (kind, process, network, tamper) {
            ("process.spawn" | "process.exec" | "process.exit", Some(p), _, _) => {
                Self::process(kind, p, exec, policy, time_ms)
            }
            (
                "network.connect" | "network.listen" | "network.accept" | "network.socket"
                | "policy.violation",
                _,
                Some(n),
                _,
            ) => Self::network(kind, n, process),
            ("process.tamper" | "policy.violation", _, None, Some(t))
                if tamper_class == Some("process.tamper") =>
            {
                Self::process_tamper(kind, t, process)
            }
            ("sensor.tamper" | "policy.violation", _, None, Some(t))
                if tamper_class == Some("sensor.tamper") =>
            {
                Self::tamper(kind, event, t, process)
            }
            ("policy.violation", Some(p), None, _) => Self::process(kind, p, exec, policy, time_ms),
            ("run.start" | "run.end", _, _, _) => {
                Self::run(kind, obj(event.get("run")), process, time_ms)
            }
            ("run.degraded", _, _, _) => Self::degraded(kind, event),
            ("sensor.gap", _, _, _) => Self::gap(kind, event),
            ("sensor.blind", _, _, _) if obj(event.get("blind")).is_some() => {
                Self::blind(kind, event)
            }
            ("detection", _, _, _) if obj(event.get("detection")).is_some() => {
                Self::detection(kind, event, obj(event.get("detection")).unwrap_or(event))
            }
            _ => Self::base(kind, obj(event.get("lost")), process),
        };
        plan.time_ms = time_ms;
        plan.time_parsed = parsed.is_some();
        let violation = kind == "policy.violation";
        if let Some(policy) = policy {
            plan.apply_policy(policy, violation, event);
        } else if violation {
            plan.is_alert = true;
            plan.severity_id = plan.severity_id.max(3);
        }
        plan
    }

    /// Process Activity (`process` must be present).
    fn process(
        kind: &'a str,
        p: &'a Obj,
        exec: Option<&'a Obj>,
        policy: Option<&'a Obj>,
        time_ms: i64,
    ) -> Self {
        let rule = policy.and_then(|p| str_of(p, "rule")).unwrap_or("");
        let exe = text_of(p, "exe");
        if kind == "process.exit" {
            let mut m = Self::new(kind, Class::Process, 2, "Terminate");
            let full = Shape::Full {
                file: exe,
                name: true,
                cmd: false,
                terminated: Some(time_ms),
            };
            m.process = Some((p, full));
            let actor = Shape::Actor {
                tid: None,
                file: None,
                name: false,
            };
            m.actor_process = Some((p, actor));
            m.status = Some(Status::Success);
            if let Some(code) = i64_of(p, "exit_code") {
                m.exit_code = Some(code);
                m.status_detail = Some(format!("exited with code {code}"));
            } else if let Some(signal) = i64_of(p, "exit_signal") {
                let core = if bool_of(p, "core_dumped") == Some(true) {
                    ", core dumped"
                } else {
                    ""
                };
                m.status_detail = Some(format!("killed by signal {signal}{core}"));
            }
            return m;
        }
        let mut m = Self::new(kind, Class::Process, 1, "Launch");
        let is_fork =
            kind == "process.spawn" || (exec.is_none() && rule.starts_with("max_processes"));
        if is_fork {
            m.launch_type = Some((2, "Fork"));
            let full = Shape::Full {
                file: exe,
                name: true,
                cmd: true,
                terminated: None,
            };
            m.process = Some((p, full));
            m.actor_process = Some((p, Shape::Parent));
            m.status = Some(Status::Success);
            return m;
        }
        m.launch_type = Some((3, "Exec"));
        let failed = exec.is_some_and(|x| str_of(x, "result") == Some("error"));
        let old_tid = exec.and_then(|x| u64_of(x, "old_tid"));
        if failed {
            // The image is unchanged; what it tried to run is exec.filename.
            let tried = exec.and_then(|x| text_of(x, "filename"));
            let target = Shape::Full {
                file: tried,
                name: false,
                cmd: true,
                terminated: None,
            };
            m.process = Some((p, target));
            let caller = Shape::Actor {
                tid: old_tid,
                file: exe,
                name: true,
            };
            m.actor_process = Some((p, caller));
            m.status = Some(Status::Failure);
            let error = exec.and_then(|x| text_of(x, "error"));
            let errno = exec.and_then(|x| i64_of(x, "errno"));
            m.status_code = error;
            m.status_detail = errno_text(error, errno).map(|e| format!("exec failed: {e}"));
        } else {
            let full = Shape::Full {
                file: exe,
                name: true,
                cmd: true,
                terminated: None,
            };
            m.process = Some((p, full));
            let actor = Shape::Actor {
                tid: old_tid,
                file: None,
                name: false,
            };
            m.actor_process = Some((p, actor));
            m.status = Some(if exec.is_some() {
                Status::Success
            } else {
                Status::Unknown
            });
        }
        m.exec_mapped = exec.is_some();
        m
    }

    /// Network Activity: a connect (IP or Unix), unconnected datagrams, a
    /// listener, an accepted connection, or a raw/ICMP/packet socket.
    fn network(kind: &'a str, n: &'a Obj, p: Option<&'a Obj>) -> Self {
        let shape = NetShape::of(kind, n);
        let result = str_of(n, "result").unwrap_or("unknown");
        let (activity_id, activity_name, status) = match (shape, result) {
            (NetShape::Listen, _) => (7, "Listen", Status::Success),
            (NetShape::Traffic, _) => (6, "Traffic", Status::Unknown),
            (_, "ok") => (1, "Open", Status::Success),
            (_, "refused") => (5, "Refuse", Status::Failure),
            (_, "error") => (4, "Fail", Status::Failure),
            // Connected, to a socket other than the allowed one: the caller
            // was killed before it could use the connection.
            (_, "killed") => (1, "Open", Status::Failure),
            _ => (1, "Open", Status::Unknown),
        };
        let mut m = Self::new(kind, Class::Network, activity_id, activity_name);
        m.status = Some(status);
        m.network = Some((n, shape));
        m.network_mapped = Some(shape.mapped());
        let what = match shape {
            NetShape::Socket => "socket",
            _ => "connect",
        };
        match result {
            "ok" => {}
            _ if shape == NetShape::Traffic => {
                let sends = u64_of(n, "sends").unwrap_or(0);
                let plural = if sends == 1 { "" } else { "s" };
                m.status_detail = Some(format!(
                    "{sends} datagram{plural} sent to this destination without connect() so far"
                ));
            }
            "in_progress" => {
                m.status_detail = Some("connect in progress (EINPROGRESS)".to_owned());
            }
            "unknown" => m.status_detail = Some(format!("{what} result not observed")),
            "killed" => {
                m.status_detail = Some(match text_of(n, "peer_path") {
                    Some(peer) => format!(
                        "connected to {peer}, not the socket the allowed address names: the \
                         caller was killed"
                    ),
                    None => "connected to another socket than the allowed address names: the \
                             caller was killed"
                        .to_owned(),
                });
            }
            _ => {
                let error = text_of(n, "error");
                m.status_code = error;
                m.status_detail =
                    errno_text(error, i64_of(n, "errno")).map(|e| format!("{what} failed: {e}"));
            }
        }
        m.actor_process = acting(p);
        m
    }

    /// Process Activity of a `process.tamper`: the caller (`actor.process`)
    /// reached into a process outside its run (`process`).
    fn process_tamper(kind: &'a str, t: &'a Obj, p: Option<&'a Obj>) -> Self {
        let what = text_of(t, "what").unwrap_or("tamper");
        let (activity_id, activity_name, injection) = match str_of(t, "method") {
            Some("ptrace") => (4, "Inject", Some("ptrace attach")),
            Some("process_vm_writev") => (4, "Inject", Some("process_vm_writev")),
            Some("proc_mem") => (4, "Inject", Some("/proc/PID/mem")),
            // Takes a descriptor of the other process's: OCSF's Open.
            Some("pidfd_getfd") => (3, "Open", None),
            _ => (99, what, None),
        };
        let mut m = Self::new(kind, Class::Process, activity_id, activity_name);
        m.injection = injection.map(|i| (99, i));
        let target = obj(t.get("target"));
        let full = |file| Shape::Full {
            file,
            name: false,
            cmd: false,
            terminated: None,
        };
        // OCSF requires `process`: the target, or else the caller itself.
        m.process = match (target, p) {
            (Some(target), _) => Some((target, full(text_of(target, "exe")))),
            (None, Some(p)) => Some((p, full(text_of(p, "exe")))),
            (None, None) => None,
        };
        m.target_session = target
            .and_then(|t| obj(t.get("run")))
            .and_then(|r| text_of(r, "id"));
        m.actor_process = acting(p);
        let killed = bool_of(t, "killed") == Some(true);
        m.status = Some(if killed {
            Status::Failure
        } else {
            Status::Unknown
        });
        if killed {
            m.status_detail = Some("the caller was killed before the call took effect".to_owned());
        }
        m.severity_id = if killed { 3 } else { 4 };
        m.is_alert = true;
        let object = text_of(t, "object").unwrap_or("?");
        let by = who(p);
        m.message = Some(format!(
            "{what} of {object} by {by}, outside its run; {}",
            if killed {
                "the caller was killed"
            } else {
                "not blocked"
            }
        ));
        m
    }

    /// Application Lifecycle of run.start / run.end.
    fn run(kind: &'a str, run: Option<&'a Obj>, p: Option<&'a Obj>, time_ms: i64) -> Self {
        let start = kind == "run.start";
        let mut m = if start {
            Self::new(kind, Class::AppLifecycle, 3, "Start")
        } else {
            Self::new(kind, Class::AppLifecycle, 4, "Stop")
        };
        m.status = Some(Status::Success);
        let agent = run.and_then(|r| text_of(r, "agent")).unwrap_or("unknown");
        m.app_name = Some(agent);
        m.actor_process = acting(p);
        let id = run.and_then(|r| text_of(r, "id")).unwrap_or("?");
        m.start_time = run
            .and_then(|r| str_of(r, "start"))
            .and_then(parse_rfc3339_ms);
        if start {
            let by = run.and_then(|r| text_of(r, "started_by")).unwrap_or("?");
            m.message = Some(format!("agent run {id} ({agent}) started by {by}"));
        } else {
            let reason = run.and_then(|r| text_of(r, "end_reason"));
            let end = run
                .and_then(|r| str_of(r, "end"))
                .and_then(parse_rfc3339_ms)
                .unwrap_or(time_ms);
            m.end_time = Some(end);
            m.duration = m.start_time.map(|s| (end - s).max(0));
            m.status_detail = reason.map(str::to_owned);
            m.message = Some(format!(
                "agent run {id} ({agent}) ended: {}",
                reason.unwrap_or("?")
            ));
        }
        m
    }

    /// Detection Finding of a `sensor.tamper`: what the integrity check
    /// found, or what a process of a run did to the sensor (seen in the
    /// kernel; the process is `actor.process`).
    fn tamper(kind: &'a str, event: &'a Obj, t: &'a Obj, p: Option<&'a Obj>) -> Self {
        let mut m = Self::new(kind, Class::Finding, 1, "Create");
        let field = |k| text_of(t, k).unwrap_or("");
        let title = format!("{}: {}", field("what"), field("object"));
        let boot = obj(event.get("host")).and_then(|h| text_of(h, "boot_id"));
        let uid = format!(
            "{}:{}",
            boot.unwrap_or("unknown"),
            u64_of(event, "seq").unwrap_or(0)
        );
        if field("detected") == "kernel" {
            let killed = bool_of(t, "killed") == Some(true);
            let by = who(p);
            m.message = Some(format!(
                "{title}, by {by}; {}",
                if killed {
                    "the caller was killed"
                } else {
                    "not blocked"
                }
            ));
            m.severity_id = if killed { 3 } else { 4 };
            m.actor_process = acting(p);
        } else {
            // Only the integrity check puts things back (and says so); the
            // file watch reports a change after it was made.
            let repaired = bool_of(t, "repaired");
            m.message = Some(match repaired {
                Some(true) => format!("{title} (put back by the sensor)"),
                Some(false) => format!("{title} (NOT put back)"),
                None => title.clone(),
            });
            m.severity_id = if repaired == Some(true) { 3 } else { 4 };
            if field("method") == "file" {
                m.actor_process = acting(p);
            }
        }
        m.finding = Some((uid, title, text_of(t, "detail")));
        m.is_alert = true;
        m
    }

    /// Base Event of a `run.degraded`: what the kernel could not deliver
    /// of one run (like `sensor.lost`, per run).
    fn degraded(kind: &'a str, event: &'a Obj) -> Self {
        let mut m = Self::new(kind, Class::Base, 99, "Run Degraded");
        let d = obj(event.get("degraded"));
        let lost = d.and_then(|d| u64_of(d, "lost_events")).unwrap_or(0);
        let held = d.and_then(|d| u64_of(d, "denials_suppressed")).unwrap_or(0);
        let run = obj(event.get("run"));
        let id = run.and_then(|r| text_of(r, "id")).unwrap_or("?");
        let agent = run.and_then(|r| text_of(r, "agent")).unwrap_or("?");
        m.count = Some(lost.saturating_add(held));
        m.message = Some(format!(
            "agent run {id} ({agent}): {lost} events lost, {held} denial records held back \
             (still enforced)"
        ));
        m.severity_id = if lost > 0 { 3 } else { 2 };
        m
    }

    /// Base Event of a `sensor.gap`: a time no daemon read the kernel's
    /// records. Medium when the kernel did not record through it (nothing
    /// of it can be known), or lost records; Low otherwise.
    fn gap(kind: &'a str, event: &'a Obj) -> Self {
        let mut m = Self::new(kind, Class::Base, 99, "Sensor Gap");
        let g = obj(event.get("gap"));
        let cause = g.and_then(|g| text_of(g, "cause")).unwrap_or("unknown");
        let recorded = g.and_then(|g| bool_of(g, "recorded")) == Some(true);
        let lost = g.and_then(|g| u64_of(g, "lost")).unwrap_or(0);
        let seconds = g
            .and_then(|g| g.get("seconds"))
            .and_then(Value::as_f64)
            .map_or_else(|| "an unknown time".to_owned(), |s| format!("{s:.1} s"));
        m.count = Some(lost);
        m.message = Some(format!(
            "no sensor daemon read for {seconds} ({cause}); {}{}",
            if recorded {
                "the kernel kept recording, and what it recorded follows"
            } else {
                "nothing was recorded meanwhile"
            },
            if lost > 0 {
                format!("; {lost} records did not fit and are lost")
            } else {
                String::new()
            }
        ));
        m.severity_id = if recorded && lost == 0 { 2 } else { 3 };
        m
    }

    /// Detection Finding of a `sensor.blind` (the caller checked `blind` is
    /// an object): a blindness opens a finding, its restore closes it.
    fn blind(kind: &'a str, event: &'a Obj) -> Self {
        let b = obj(event.get("blind"));
        let restored = b.and_then(|b| bool_of(b, "restored")) == Some(true);
        let missing: Vec<&str> = b
            .and_then(|b| b.get("missing"))
            .and_then(Value::as_array)
            .map(|m| m.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let since = b.and_then(|b| text_of(b, "since")).unwrap_or("unknown");
        let boot = obj(event.get("host")).and_then(|h| text_of(h, "boot_id"));
        let uid = format!("{}:blind:{since}", boot.unwrap_or("unknown"));
        let records = missing.join(", ");
        let (mut m, title) = if restored {
            (
                Self::new(kind, Class::Finding, 3, "Close"),
                format!("sensor sight restored ({records} records come through again)"),
            )
        } else {
            (
                Self::new(kind, Class::Finding, 1, "Create"),
                format!("sensor blind: {records} records do not come through the kernel"),
            )
        };
        m.message = Some(title.clone());
        m.finding = Some((uid, title, b.and_then(|b| text_of(b, "detail"))));
        m.severity_id = if restored { 1 } else { 4 };
        m.is_alert = !restored;
        m
    }

    /// Base Event: sensor.lost and kinds this mapping does not know.
    fn base(kind: &'a str, lost: Option<&'a Obj>, p: Option<&'a Obj>) -> Self {
        let name = match kind {
            "sensor.lost" => "Events Lost",
            "" => "unknown",
            other => other,
        };
        let mut m = Self::new(kind, Class::Base, 99, name);
        if let Some(lost) = lost {
            let total = u64_of(lost, "total").unwrap_or(0);
            let cumulative = u64_of(lost, "cumulative").unwrap_or(0);
            m.count = Some(total);
            m.message = Some(format!(
                "{total} events lost ({cumulative} since the sensor started)"
            ));
            if total > 0 {
                m.severity_id = 3;
            }
        }
        m.actor_process = acting(p);
        m
    }

    /// A policy verdict (`security_control` profile).
    fn apply_policy(&mut self, policy: &'a Obj, violation: bool, event: &'a Obj) {
        let name = str_of(policy, "name").unwrap_or("");
        let deny = str_of(policy, "verdict") == Some("deny");
        let enforced = bool_of(policy, "enforced") == Some(true);
        let rule = str_of(policy, "rule").unwrap_or("");
        self.policy = Some(policy);
        let (action_id, action, disposition_id, disposition) = match (deny, enforced) {
            (false, _) => (1, "Allowed", 1, "Allowed"),
            (true, true) => (2, "Denied", 2, "Blocked"),
            (true, false) => (3, "Observed", 15, "Detected"),
        };
        self.security = Some((action_id, action, disposition_id, disposition));
        // A tamper is an alert by itself; any other action when it is a violation.
        self.is_alert = self.is_alert || violation;
        if deny {
            if enforced {
                self.status = Some(Status::Failure);
                self.status_detail = Some(format!("blocked by policy {name}: {rule}"));
            }
            self.severity_id = match (violation, enforced) {
                (true, true) => 3,
                (true, false) => 4,
                (false, _) => self.severity_id.max(2),
            };
        }
        if violation {
            let what = match (
                obj(event.get("network")),
                obj(event.get("exec")),
                obj(event.get("process")),
            ) {
                (Some(n), _, _) => match (str_of(n, "path"), str_of(n, "dst_ip")) {
                    (Some(path), _) => format!("connect to Unix socket {path}"),
                    (None, Some(ip)) => format!(
                        "connect to {ip} port {}",
                        u64_of(n, "dst_port").unwrap_or(0)
                    ),
                    (None, None) => format!(
                        "a {} socket ({})",
                        str_of(n, "transport").unwrap_or("?"),
                        str_of(n, "family").unwrap_or("?")
                    ),
                },
                _ if let Some(t) = obj(event.get("tamper")) => format!(
                    "{} ({})",
                    str_of(t, "what").unwrap_or("tamper"),
                    str_of(t, "object").unwrap_or("?")
                ),
                (None, Some(_), Some(p)) => {
                    format!("exec of {}", str_of(p, "exe").unwrap_or("?"))
                }
                (None, None, Some(p)) => format!("process {}", u64_of(p, "pid").unwrap_or(0)),
                _ => "an action".to_owned(),
            };
            let outcome = if enforced {
                "blocked"
            } else {
                "reported, not blocked"
            };
            self.message = Some(format!(
                "policy violation: policy {name} denies {what} ({rule}); {outcome}"
            ));
        }
    }

    /// Writes the OCSF event.
    fn write(&self, event: &Obj, out: &mut Vec<u8>) -> Res {
        let mut o = JsonObj::open(out);
        let class_uid = self.class.uid();
        let (category_uid, category_name) = self.class.category();
        o.val("class_uid", &class_uid)?;
        o.str("class_name", self.class.name())?;
        o.val("category_uid", &category_uid)?;
        o.str("category_name", category_name)?;
        o.val("activity_id", &self.activity_id)?;
        o.str("activity_name", self.activity_name)?;
        o.val("type_uid", &(class_uid * 100 + self.activity_id))?;
        let caption = if self.activity_id == 99 {
            "Other"
        } else {
            self.activity_name
        };
        o.str("type_name", &format!("{}: {caption}", self.class.name()))?;
        o.val("time", &self.time_ms)?;
        o.val("severity_id", &self.severity_id)?;
        o.str("severity", severity_caption(self.severity_id))?;
        // A finding's status is its review state, set by the consumer.
        if let Some(status) = self.status.filter(|_| self.class != Class::Finding) {
            o.val("status_id", &(status as u64))?;
            o.str("status", status.caption())?;
        }
        if let Some(code) = self.status_code {
            o.str("status_code", code)?;
        }
        if let Some(detail) = &self.status_detail {
            o.str("status_detail", detail)?;
        }
        if let Some(message) = &self.message {
            o.str("message", message)?;
        }
        if let Some((id, caption)) = self.launch_type {
            o.val("launch_type_id", &id)?;
            o.str("launch_type", caption)?;
        }
        if let Some(code) = self.exit_code {
            o.val("exit_code", &code)?;
        }
        if let Some(count) = self.count {
            o.val("count", &count)?;
        }
        if let Some(t) = self.start_time {
            o.val("start_time", &t)?;
        }
        if let Some(t) = self.end_time {
            o.val("end_time", &t)?;
        }
        if let Some(d) = self.duration {
            o.val("duration", &d)?;
        }
        if let Some(agent) = self.app_name {
            let mut app = o.obj("app");
            app.str("name", agent)?;
            app.close();
        }
        if let Some((id, caption)) = self.injection {
            o.val("injection_type_id", &id)?;
            o.str("injection_type", caption)?;
        }
        if let Some((p, shape)) = self.process {
            let mut w = o.obj("process");
            write_process(&mut w, p, shape)?;
            if let Some(run) = self.target_session {
                let mut s = w.obj("session");
                s.str("uid", run)?;
                s.close();
            }
            w.close();
        }
        self.write_actor(&mut o, obj(event.get("run")))?;
        if let Some((n, shape)) = self.network {
            let host = obj(event.get("host")).and_then(|h| text_of(h, "name"));
            write_network(&mut o, n, shape, host.unwrap_or("unknown"))?;
        }
        if let Some(policy) = self.policy {
            write_policy(&mut o, policy)?;
        }
        if let Some((action_id, action, disposition_id, disposition)) = self.security {
            o.val("action_id", &action_id)?;
            o.str("action", action)?;
            o.val("disposition_id", &disposition_id)?;
            o.str("disposition", disposition)?;
        }
        if self.security.is_some() || self.is_alert {
            o.val("is_alert", &self.is_alert)?;
        }
        if let Some((uid, title, desc)) = &self.finding {
            let mut f = o.obj("finding_info");
            f.str("uid", uid)?;
            f.str("title", title)?;
            if let Some(desc) = desc {
                f.str("desc", desc)?;
            }
            f.val("types", &[self.kind])?;
            f.close();
        }
        self.write_metadata(&mut o, event)?;
        let host = obj(event.get("host"));
        let mut device = o.obj("device");
        device.str(
            "hostname",
            host.and_then(|h| text_of(h, "name")).unwrap_or("unknown"),
        )?;
        if let Some(boot) = host.and_then(|h| text_of(h, "boot_id")) {
            device.str("boot_uid", boot)?;
        }
        device.val("type_id", &0)?;
        device.str("type", "Unknown")?;
        device.close();
        self.write_unmapped(&mut o, event)?;
        o.close();
        Ok(())
    }

    /// `actor`: the acting process and the agent run.
    fn write_actor(&self, o: &mut JsonObj<'_>, run: Option<&Obj>) -> Res {
        let id = run.and_then(|r| text_of(r, "id"));
        let created = run
            .and_then(|r| str_of(r, "start"))
            .and_then(parse_rfc3339_ms);
        let expires = run
            .and_then(|r| str_of(r, "expires"))
            .and_then(parse_rfc3339_ms);
        let reason = run.and_then(|r| text_of(r, "end_reason"));
        let principal = run.and_then(|r| text_of(r, "principal"));
        let run_uid = run.and_then(|r| u64_of(r, "uid"));
        let agent = run.and_then(|r| text_of(r, "agent"));
        let session = id.is_some() || created.is_some() || expires.is_some() || reason.is_some();
        let user = principal.is_some() || run_uid.is_some();
        if self.actor_process.is_none() && !session && !user && agent.is_none() {
            return Ok(());
        }
        let mut actor = o.obj("actor");
        if let Some((p, shape)) = self.actor_process {
            let mut w = actor.obj("process");
            write_process(&mut w, p, shape)?;
            w.close();
        }
        if session {
            let mut s = actor.obj("session");
            if let Some(id) = id {
                s.str("uid", id)?;
            }
            if let Some(t) = created {
                s.val("created_time", &t)?;
            }
            if let Some(t) = expires {
                s.val("expiration_time", &t)?;
            }
            if let Some(reason) = reason {
                s.str("expiration_reason", reason)?;
            }
            s.close();
        }
        if user {
            let mut u = actor.obj("user");
            if let Some(principal) = principal {
                u.str("name", principal)?;
            }
            if let Some(uid) = run_uid {
                u.key("uid");
                u.out.push(b'"');
                u.raw(&uid)?;
                u.out.push(b'"');
            }
            u.close();
        }
        if let Some(agent) = agent {
            actor.str("app_name", agent)?;
        }
        actor.close();
        Ok(())
    }

    fn write_metadata(&self, o: &mut JsonObj<'_>, event: &Obj) -> Res {
        let mut m = o.obj("metadata");
        m.str("version", OCSF_VERSION)?;
        let mut product = m.obj("product");
        product.str("name", "sensor")?;
        product.str("vendor_name", "sensor")?;
        product.str("version", env!("CARGO_PKG_VERSION"))?;
        product.close();
        m.key("profiles");
        m.out.extend_from_slice(if self.policy.is_some() {
            br#"["host","security_control"]"#
        } else {
            br#"["host"]"#
        });
        if let Some(schema) = text_of(event, "schema") {
            m.str("log_version", schema)?;
        }
        if !self.kind.is_empty() {
            m.str("event_code", self.kind)?;
        }
        if let Some(seq) = u64_of(event, "seq") {
            m.val("sequence", &seq)?;
        }
        if let Some(t) = str_of(event, "time") {
            m.str("original_time", t)?;
        }
        if !self.time_parsed {
            m.key("debug");
            m.out
                .extend_from_slice(br#"["time: not RFC 3339, the time of encoding is used"]"#);
        }
        if let Some(root) = obj(event.get("run")).and_then(|r| text_of(r, "root_id")) {
            m.str("correlation_uid", root)?;
        }
        m.close();
        Ok(())
    }

    /// `unmapped`: kind, seq, run, policy, lost, and what has no OCSF place.
    fn write_unmapped(&self, o: &mut JsonObj<'_>, event: &Obj) -> Res {
        let mut u = o.obj("unmapped");
        u.str("kind", self.kind)?;
        u.val("seq", event.get("seq").unwrap_or(&Value::Null))?;
        u.val("run", event.get("run").unwrap_or(&Value::Null))?;
        for key in ["policy", "lost"] {
            if let Some(v) = event.get(key).filter(|v| !v.is_null()) {
                u.val(key, v)?;
            }
        }
        let rest = [
            ("process", MAPPED_PROCESS, true),
            ("exec", MAPPED_EXEC, self.exec_mapped),
            (
                "network",
                self.network_mapped.unwrap_or_default(),
                self.network_mapped.is_some(),
            ),
            ("host", MAPPED_HOST, true),
        ];
        for (key, mapped, used) in rest {
            match (event.get(key), used) {
                (Some(Value::Object(m)), true) => {
                    let left =
                        |(k, v): &(&String, &Value)| !v.is_null() && !mapped.contains(&k.as_str());
                    if m.iter().any(|kv| left(&kv)) {
                        let mut w = u.obj(key);
                        for (k, v) in m.iter().filter(left) {
                            w.any_key(k)?;
                            w.raw(v)?;
                        }
                        w.close();
                    }
                }
                (Some(v), _) if !v.is_null() => u.val(key, v)?,
                _ => {}
            }
        }
        for (key, v) in event {
            if !KNOWN_TOP.contains(&key.as_str()) {
                u.any_key(key)?;
                u.raw(v)?;
            }
        }
        u.close();
        Ok(())
    }
}

/// An OCSF `process` object.
fn write_process(w: &mut JsonObj<'_>, p: &Obj, shape: Shape<'_>) -> Res {
    if let Shape::Parent = shape {
        if let Some(ppid) = u64_of(p, "ppid") {
            w.val("pid", &ppid)?;
        }
        if let Some(key) = text_of(p, "parent_key") {
            w.str("uid", key)?;
        }
        if let Some(exe) = text_of(p, "parent_exe") {
            write_file(w, exe)?;
        }
        return write_user(w, p);
    }
    if let Some(pid) = u64_of(p, "pid") {
        w.val("pid", &pid)?;
    }
    if let Some(key) = text_of(p, "key") {
        w.str("uid", key)?;
    }
    let (tid, file, name, cmd, terminated) = match shape {
        Shape::Full {
            file,
            name,
            cmd,
            terminated,
        } => (u64_of(p, "tid"), file, name, cmd, terminated),
        Shape::Actor { tid, file, name } => {
            (tid.or_else(|| u64_of(p, "tid")), file, name, false, None)
        }
        Shape::Parent => (None, None, false, false, None),
    };
    if let Some(tid) = tid {
        w.val("tid", &tid)?;
    }
    if name && let Some(comm) = text_of(p, "comm") {
        w.str("name", comm)?;
    }
    if let Some(path) = file {
        write_file(w, path)?;
    }
    if cmd {
        if let Some(argv) = p.get("argv").and_then(Value::as_array) {
            write_cmd_line(w, argv)?;
        }
        if let Some(cwd) = text_of(p, "cwd") {
            w.str("working_directory", cwd)?;
        }
    }
    if let Some(t) = terminated {
        w.val("terminated_time", &t)?;
    }
    write_user(w, p)?;
    if let Some(ppid) = u64_of(p, "ppid") {
        let mut parent = w.obj("parent_process");
        parent.val("pid", &ppid)?;
        if let Some(key) = text_of(p, "parent_key") {
            parent.str("uid", key)?;
        }
        if let Some(exe) = text_of(p, "parent_exe") {
            write_file(&mut parent, exe)?;
        }
        parent.close();
    }
    Ok(())
}

/// `user` {uid} of a sensor process (the uid as a string, as OCSF has it).
fn write_user(w: &mut JsonObj<'_>, p: &Obj) -> Res {
    if let Some(uid) = u64_of(p, "uid") {
        let mut u = w.obj("user");
        u.key("uid");
        u.out.push(b'"');
        u.raw(&uid)?;
        u.out.push(b'"');
        u.close();
    }
    Ok(())
}

/// An OCSF `file` object for an executable path.
fn write_file(w: &mut JsonObj<'_>, path: &str) -> Res {
    let mut f = w.obj("file");
    f.str("path", path)?;
    f.str("name", base_name(path))?;
    f.val("type_id", &8)?;
    f.str("type", "Executable File")?;
    f.close();
    Ok(())
}

/// `cmd_line`: argv joined with spaces.
fn write_cmd_line(w: &mut JsonObj<'_>, argv: &[Value]) -> Res {
    let mut line = String::with_capacity(
        argv.iter()
            .filter_map(Value::as_str)
            .map(str::len)
            .sum::<usize>()
            + argv.len(),
    );
    for (i, arg) in argv.iter().filter_map(Value::as_str).enumerate() {
        if i > 0 {
            line.push(' ');
        }
        line.push_str(arg);
    }
    w.str("cmd_line", &line)
}

/// An OCSF `network_endpoint` {ip, port} from the sensor fields `ip`,
/// `port`; false when the event has no such address.
fn write_endpoint(
    o: &mut JsonObj<'_>,
    key: &'static str,
    n: &Obj,
    ip: &str,
    port: &str,
) -> Result<bool, serde_json::Error> {
    let Some(addr) = text_of(n, ip) else {
        return Ok(false);
    };
    let mut e = o.obj(key);
    e.str("ip", addr)?;
    if let Some(port) = u64_of(n, port) {
        e.val("port", &port)?;
    }
    e.close();
    Ok(true)
}

/// Endpoints, `connection_info` and `traffic` of a network event on host
/// `host`.
fn write_network(o: &mut JsonObj<'_>, n: &Obj, shape: NetShape, host: &str) -> Res {
    let endpoint = match shape {
        NetShape::Connect | NetShape::Traffic => {
            write_endpoint(o, "dst_endpoint", n, "dst_ip", "dst_port")?
        }
        NetShape::Unix => match text_of(n, "path") {
            // A socket path (or @name) has no OCSF attribute of its own:
            // the endpoint's name.
            Some(path) => {
                let mut dst = o.obj("dst_endpoint");
                dst.str("name", path)?;
                dst.close();
                true
            }
            None => false,
        },
        NetShape::Listen => write_endpoint(o, "dst_endpoint", n, "local_ip", "local_port")?,
        NetShape::Accept => {
            let src = write_endpoint(o, "src_endpoint", n, "src_ip", "src_port")?;
            write_endpoint(o, "dst_endpoint", n, "local_ip", "local_port")? || src
        }
        NetShape::Socket => false,
    };
    if !endpoint {
        // OCSF wants one endpoint at least: a raw socket has no peer, its
        // end is this host.
        let mut src = o.obj("src_endpoint");
        src.str("hostname", host)?;
        src.close();
    }
    if shape == NetShape::Traffic
        && let Some(sends) = u64_of(n, "sends")
    {
        let mut t = o.obj("traffic");
        t.val("packets_out", &sends)?;
        t.close();
    }
    let mut c = o.obj("connection_info");
    let (direction_id, direction) = match shape {
        NetShape::Connect | NetShape::Traffic => (2, "Outbound"),
        NetShape::Unix => (4, "Local"),
        NetShape::Listen | NetShape::Accept => (1, "Inbound"),
        NetShape::Socket => (0, "Unknown"),
    };
    c.val("direction_id", &direction_id)?;
    c.str("direction", direction)?;
    let family = str_of(n, "family");
    if shape != NetShape::Unix
        && let Some(transport) = text_of(n, "transport")
    {
        c.str("protocol_name", transport)?;
        let num: Option<u64> = match (transport, family) {
            ("tcp" | "mptcp", _) => Some(6),
            ("udp", _) => Some(17),
            ("udplite", _) => Some(136),
            ("icmp", Some("ipv4")) => Some(1),
            ("icmp", Some("ipv6")) => Some(58),
            _ => None,
        };
        if let Some(num) = num {
            c.val("protocol_num", &num)?;
        }
    }
    match family {
        Some("ipv4") => {
            c.val("protocol_ver_id", &4)?;
            c.str("protocol_ver", "Internet Protocol version 4 (IPv4)")?;
        }
        Some("ipv6") => {
            c.val("protocol_ver_id", &6)?;
            c.str("protocol_ver", "Internet Protocol version 6 (IPv6)")?;
        }
        _ => {}
    }
    c.close();
    Ok(())
}

/// The OCSF `policy` object: name, version (a string), data {verdict, rule, enforced}.
fn write_policy(o: &mut JsonObj<'_>, policy: &Obj) -> Res {
    let mut w = o.obj("policy");
    let name = text_of(policy, "name").unwrap_or("unnamed");
    w.str("name", name)?;
    match policy.get("version") {
        Some(Value::String(v)) => w.str("version", v)?,
        Some(v) if !v.is_null() => {
            w.key("version");
            w.out.push(b'"');
            w.raw(v)?;
            w.out.push(b'"');
        }
        _ => {}
    }
    let mut data = w.obj("data");
    for key in ["verdict", "rule", "enforced"] {
        if let Some(v) = policy.get(key).filter(|v| !v.is_null()) {
            data.val(key, v)?;
        }
    }
    data.close();
    w.close();
    Ok(())
}

/// Writes one JSON object straight into the output buffer. Keys given as
/// `&'static str` literals are plain ASCII and written as they are; keys
/// from the input go through [`JsonObj::any_key`] (escaped).
struct JsonObj<'a> {
    out: &'a mut Vec<u8>,
    comma: bool,
}

impl<'a> JsonObj<'a> {
    fn open(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        Self { out, comma: false }
    }

    fn sep(&mut self) {
        if self.comma {
            self.out.push(b',');
        }
        self.comma = true;
    }

    /// A key known to need no escaping.
    fn key(&mut self, key: &'static str) {
        self.sep();
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    /// Any key, escaped.
    fn any_key(&mut self, key: &str) -> Res {
        self.sep();
        self.raw(key)?;
        self.out.push(b':');
        Ok(())
    }

    /// A value without a key (after [`JsonObj::key`]).
    fn raw<T: Serialize + ?Sized>(&mut self, v: &T) -> Res {
        serde_json::to_writer(&mut *self.out, v)
    }

    fn val<T: Serialize + ?Sized>(&mut self, key: &'static str, v: &T) -> Res {
        self.key(key);
        self.raw(v)
    }

    fn str(&mut self, key: &'static str, v: &str) -> Res {
        self.val(key, v)
    }

    /// A nested object under `key`; close it before writing on in `self`.
    fn obj(&mut self, key: &'static str) -> JsonObj<'_> {
        self.key(key);
        JsonObj::open(self.out)
    }

    fn close(self) {
        self.out.push(b'}');
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Milliseconds since the Unix epoch of an RFC 3339 UTC time (the events'
/// `2026-11-23T10:00:00.123456789Z`); the fraction is truncated to
/// milliseconds. `None` when it is not one.
fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let t = humantime::parse_rfc3339(s).ok()?;
    match t.duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_millis()).ok(),
        Err(e) => i64::try_from(e.duration().as_millis()).ok().map(|ms| -ms),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn ocsf(event: &Value) -> Value {
        let mut out = Vec::new();
        encode_value(event, &mut out).unwrap();
        assert!(!out.contains(&b'\n'), "one line, no newline");
        let v: Value = serde_json::from_slice(&out).unwrap();
        // Written by hand: a key written twice would vanish in the parse.
        assert_eq!(
            serde_json::to_vec(&v).unwrap().len(),
            out.len(),
            "no duplicate key: {}",
            String::from_utf8_lossy(&out)
        );
        v
    }

    fn run() -> Value {
        json!({"id": "run-1", "agent": "research-bot", "principal": "alice",
               "parent_id": "run-0", "root_id": "run-0", "depth": 1,
               "attribution": "inherited"})
    }

    fn process() -> Value {
        json!({"key": "b00t:700:4242", "pid": 4242, "tid": 4242, "ppid": 4200,
               "parent_key": "b00t:600:4200", "uid": 1000, "gid": 1000, "comm": "curl",
               "exe": "/usr/bin/curl", "argv": ["curl", "-s", "https://x"], "argc": 3,
               "argv_truncated": false, "argv_len": 19, "cwd": "/home/alice",
               "exit_code": null, "exit_signal": null})
    }

    fn event(kind: &str) -> Value {
        json!({"schema": "sensor.event/v1", "seq": 42,
               "time": "2023-11-14T22:13:20.123456789Z",
               "host": {"name": "h1", "boot_id": "0b5f0e3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c"},
               "kind": kind, "run": run(), "process": process()})
    }

    fn exec_event() -> Value {
        let mut e = event("process.exec");
        e["exec"] = json!({"filename": "curl", "result": "ok", "old_tid": 4243,
                           "inode": 77, "dev": "8:1"});
        e
    }

    fn connect_event(result: &str, errno: Option<i64>, error: Option<&str>) -> Value {
        let mut e = event("network.connect");
        e["network"] = json!({"transport": "tcp", "family": "ipv4", "dst_ip": "203.0.113.7",
                              "dst_port": 443, "result": result, "errno": errno,
                              "error": error});
        e
    }

    fn policy(verdict: &str, enforced: bool, rule: &str) -> Value {
        json!({"name": "research", "verdict": verdict, "rule": rule,
               "enforced": enforced, "version": 1})
    }

    fn assert_class(o: &Value, class: u64, category: u64, activity: u64) {
        assert_eq!(o["class_uid"], class, "{o}");
        assert_eq!(o["category_uid"], category, "{o}");
        assert_eq!(o["activity_id"], activity, "{o}");
        assert_eq!(o["type_uid"], class * 100 + activity, "{o}");
    }

    /// OCSF attributes are never null (the validators refuse them); only
    /// `unmapped` may hold them.
    fn assert_no_null(v: &Value, path: &str) {
        match v {
            Value::Null => panic!("null at {path}"),
            Value::Object(m) => {
                for (k, v) in m {
                    if path.is_empty() && k == "unmapped" {
                        continue;
                    }
                    assert_no_null(v, &format!("{path}.{k}"));
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    assert_no_null(v, &format!("{path}[{i}]"));
                }
            }
            _ => {}
        }
    }

    fn assert_run_attached(o: &Value) {
        assert_eq!(o["actor"]["session"]["uid"], "run-1");
        assert_eq!(o["actor"]["user"]["name"], "alice");
        assert_eq!(o["actor"]["app_name"], "research-bot");
        assert_eq!(o["metadata"]["correlation_uid"], "run-0");
        assert_eq!(o["unmapped"]["run"], run());
    }

    #[test]
    fn exec_is_a_process_launch_of_type_exec() {
        let o = ocsf(&exec_event());
        assert_class(&o, 1007, 1, 1);
        assert_eq!(o["type_uid"], 100_701);
        assert_eq!(o["class_name"], "Process Activity");
        assert_eq!(o["activity_name"], "Launch");
        assert_eq!(o["type_name"], "Process Activity: Launch");
        assert_eq!(o["launch_type_id"], 3);
        assert_eq!(o["status_id"], 1);
        assert_eq!(o["severity_id"], 1);
        let p = &o["process"];
        assert_eq!(p["pid"], 4242);
        assert_eq!(p["uid"], "b00t:700:4242");
        assert_eq!(p["name"], "curl");
        assert_eq!(p["file"]["path"], "/usr/bin/curl");
        assert_eq!(p["file"]["name"], "curl");
        assert_eq!(p["cmd_line"], "curl -s https://x");
        assert_eq!(p["working_directory"], "/home/alice");
        assert_eq!(p["user"]["uid"], "1000");
        assert_eq!(p["parent_process"]["pid"], 4200);
        assert_eq!(p["parent_process"]["uid"], "b00t:600:4200");
        assert_eq!(o["actor"]["process"]["pid"], 4242);
        assert_eq!(o["actor"]["process"]["tid"], 4243);
        assert_eq!(o["device"]["hostname"], "h1");
        assert_eq!(
            o["device"]["boot_uid"],
            "0b5f0e3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c"
        );
        assert_eq!(o["metadata"]["version"], OCSF_VERSION);
        assert_eq!(o["metadata"]["product"]["name"], "sensor");
        assert_eq!(o["metadata"]["product"]["vendor_name"], "sensor");
        assert_eq!(o["metadata"]["profiles"], json!(["host"]));
        assert_eq!(o["metadata"]["sequence"], 42);
        assert_eq!(o["metadata"]["event_code"], "process.exec");
        assert_eq!(o["metadata"]["log_version"], "sensor.event/v1");
        assert_run_attached(&o);
        let u = &o["unmapped"];
        assert_eq!(u["kind"], "process.exec");
        assert_eq!(u["seq"], 42);
        assert_eq!(u["process"]["argv"], json!(["curl", "-s", "https://x"]));
        assert_eq!(u["process"]["gid"], 1000);
        assert!(u["process"].get("pid").is_none(), "mapped fields stay out");
        assert!(u["process"].get("exit_code").is_none(), "nulls stay out");
        assert_eq!(u["exec"]["filename"], "curl");
        assert_eq!(u["exec"]["inode"], 77);
        assert!(u.get("policy").is_none());
        assert_no_null(&o, "");
    }

    #[test]
    fn time_is_milliseconds_since_the_epoch() {
        let o = ocsf(&exec_event());
        assert_eq!(o["time"], 1_700_000_000_123_i64);
        assert_eq!(
            o["metadata"]["original_time"],
            "2023-11-14T22:13:20.123456789Z"
        );
        let ms = parse_rfc3339_ms;
        assert_eq!(ms("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(ms("1970-01-01T00:00:00.999999999Z"), Some(999));
        assert_eq!(ms("1970-01-01T00:00:00.5Z"), Some(500));
        assert_eq!(ms("2024-02-29T00:00:00Z"), Some(1_709_164_800_000));
        assert_eq!(
            ms("2026-11-23T10:00:00.123456789Z"),
            Some(1_795_428_000_123)
        );
        for bad in [
            "",
            "2026-11-23",
            "2026-11-23T10:00:00",
            "2026-13-01T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2026-11-23T10:00:00Zjunk",
            "2026-11-23 10:00:00+0200",
        ] {
            assert_eq!(ms(bad), None, "{bad}");
        }
        // An unparsable time still gives a valid event, and says so.
        let mut e = exec_event();
        e["time"] = "yesterday".into();
        let o = ocsf(&e);
        assert!(o["time"].as_i64().unwrap() > 1_700_000_000_000);
        assert_eq!(o["metadata"]["original_time"], "yesterday");
        assert!(o["metadata"]["debug"].is_array());
    }

    #[test]
    fn failed_exec_is_a_failed_launch() {
        let mut e = exec_event();
        e["exec"] = json!({"filename": "/nope", "result": "error", "errno": 2,
                           "error": "ENOENT", "old_tid": 4242});
        let o = ocsf(&e);
        assert_class(&o, 1007, 1, 1);
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["status"], "Failure");
        assert_eq!(o["status_code"], "ENOENT");
        assert_eq!(o["status_detail"], "exec failed: ENOENT (errno 2)");
        assert_eq!(o["process"]["file"]["path"], "/nope");
        assert_eq!(o["process"]["file"]["name"], "nope");
        assert_eq!(o["actor"]["process"]["file"]["path"], "/usr/bin/curl");
        assert_no_null(&o, "");
    }

    #[test]
    fn spawn_is_a_fork_launch_by_the_parent() {
        let mut e = event("process.spawn");
        e["process"]["parent_exe"] = "/usr/bin/bash".into();
        e["process"]["exe"] = "/usr/bin/bash".into();
        e["process"].as_object_mut().unwrap().remove("argv");
        let o = ocsf(&e);
        assert_class(&o, 1007, 1, 1);
        assert_eq!(o["launch_type_id"], 2);
        assert_eq!(o["launch_type"], "Fork");
        assert_eq!(o["actor"]["process"]["pid"], 4200);
        assert_eq!(o["actor"]["process"]["file"]["path"], "/usr/bin/bash");
        assert_eq!(o["process"]["pid"], 4242);
        assert!(o["process"].get("cmd_line").is_none());
        assert_run_attached(&o);
        assert_no_null(&o, "");
    }

    #[test]
    fn exit_is_a_terminate() {
        let mut e = event("process.exit");
        e["process"]["exit_code"] = 3.into();
        let o = ocsf(&e);
        assert_class(&o, 1007, 1, 2);
        assert_eq!(o["type_uid"], 100_702);
        assert_eq!(o["activity_name"], "Terminate");
        assert_eq!(o["exit_code"], 3);
        assert_eq!(o["process"]["terminated_time"], 1_700_000_000_123_i64);
        assert_run_attached(&o);
        let mut e = event("process.exit");
        e["process"]["exit_signal"] = 9.into();
        let o = ocsf(&e);
        assert!(o.get("exit_code").is_none());
        assert_eq!(o["status_detail"], "killed by signal 9");
        assert_eq!(o["unmapped"]["process"]["exit_signal"], 9);
        assert_no_null(&o, "");
    }

    #[test]
    fn connect_results_map_to_network_activities() {
        let o = ocsf(&connect_event("ok", None, None));
        assert_class(&o, 4001, 4, 1);
        assert_eq!(o["type_uid"], 400_101);
        assert_eq!(o["status_id"], 1);
        assert_eq!(o["dst_endpoint"], json!({"ip": "203.0.113.7", "port": 443}));
        let c = &o["connection_info"];
        assert_eq!(c["protocol_name"], "tcp");
        assert_eq!(c["protocol_num"], 6);
        assert_eq!(c["protocol_ver_id"], 4);
        assert_eq!(c["direction_id"], 2);
        assert_eq!(o["actor"]["process"]["pid"], 4242);
        assert_eq!(o["actor"]["process"]["file"]["path"], "/usr/bin/curl");
        assert_run_attached(&o);
        assert_no_null(&o, "");

        let o = ocsf(&connect_event("refused", Some(111), Some("ECONNREFUSED")));
        assert_class(&o, 4001, 4, 5);
        assert_eq!(o["activity_name"], "Refuse");
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["status_code"], "ECONNREFUSED");
        assert_eq!(o["unmapped"]["network"]["errno"], 111);

        let o = ocsf(&connect_event("error", Some(101), Some("ENETUNREACH")));
        assert_class(&o, 4001, 4, 4);
        assert_eq!(o["activity_name"], "Fail");

        let o = ocsf(&connect_event(
            "in_progress",
            Some(115),
            Some("EINPROGRESS"),
        ));
        assert_class(&o, 4001, 4, 1);
        assert_eq!(o["status_id"], 0);

        let mut e = connect_event("ok", None, None);
        e["network"]["transport"] = "udp".into();
        e["network"]["family"] = "ipv6".into();
        e["network"]["dst_ip"] = "::1".into();
        let o = ocsf(&e);
        assert_eq!(o["connection_info"]["protocol_num"], 17);
        assert_eq!(o["connection_info"]["protocol_ver_id"], 6);
    }

    #[test]
    fn policy_violations_take_the_class_of_their_action() {
        // A denied exec, blocked: the exec, then its violation.
        let mut e = exec_event();
        e["policy"] = policy("deny", true, "exec.allow (no rule matches)");
        let o = ocsf(&e);
        assert_class(&o, 1007, 1, 1);
        assert_eq!(o["action_id"], 2);
        assert_eq!(o["disposition_id"], 2);
        assert_eq!(o["disposition"], "Blocked");
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["is_alert"], false);
        assert_eq!(o["severity_id"], 2);
        assert_eq!(o["policy"]["name"], "research");
        assert_eq!(o["policy"]["version"], "1");
        assert_eq!(o["policy"]["data"]["rule"], "exec.allow (no rule matches)");
        assert_eq!(
            o["metadata"]["profiles"],
            json!(["host", "security_control"])
        );
        e["kind"] = "policy.violation".into();
        e["seq"] = 43.into();
        let o = ocsf(&e);
        assert_class(&o, 1007, 1, 1);
        assert_eq!(o["launch_type_id"], 3);
        assert_eq!(o["is_alert"], true);
        assert_eq!(o["severity_id"], 3);
        assert_eq!(o["unmapped"]["kind"], "policy.violation");
        assert_eq!(o["unmapped"]["seq"], 43);
        assert_eq!(
            o["unmapped"]["policy"],
            policy("deny", true, "exec.allow (no rule matches)")
        );
        assert!(o["message"].as_str().unwrap().contains("/usr/bin/curl"));
        assert_run_attached(&o);
        assert_no_null(&o, "");

        // A denied connect, audit only.
        let mut e = connect_event("ok", None, None);
        e["kind"] = "policy.violation".into();
        e["policy"] = policy("deny", false, "connect.allow (no rule matches)");
        let o = ocsf(&e);
        assert_class(&o, 4001, 4, 1);
        assert_eq!(o["action_id"], 3);
        assert_eq!(o["disposition_id"], 15);
        assert_eq!(o["status_id"], 1);
        assert_eq!(o["severity_id"], 4);
        assert_eq!(o["is_alert"], true);

        // A fork beyond max_processes.
        let mut e = event("policy.violation");
        e["policy"] = policy("deny", true, "max_processes 5");
        let o = ocsf(&e);
        assert_class(&o, 1007, 1, 1);
        assert_eq!(o["launch_type_id"], 2);
        assert_eq!(o["disposition_id"], 2);

        // An allowed exec.
        let mut e = exec_event();
        e["policy"] = policy("allow", false, "exec.allow /usr/bin/");
        let o = ocsf(&e);
        assert_eq!(o["action_id"], 1);
        assert_eq!(o["disposition_id"], 1);
        assert_eq!(o["status_id"], 1);
        assert_eq!(o["severity_id"], 1);
    }

    #[test]
    fn runs_start_and_stop_an_application() {
        let mut e = event("run.start");
        let mut r = run();
        r["uid"] = 1000.into();
        r["policy"] = Value::Null;
        r["labels"] = json!({"team": "a"});
        r["started_by"] = "launch".into();
        r["start"] = "2023-11-14T22:13:20.000000000Z".into();
        r["expires"] = "2023-11-14T23:13:20.000000000Z".into();
        e["run"] = r.clone();
        let o = ocsf(&e);
        assert_class(&o, 6002, 6, 3);
        assert_eq!(o["type_uid"], 600_203);
        assert_eq!(o["app"]["name"], "research-bot");
        assert_eq!(o["actor"]["session"]["uid"], "run-1");
        assert_eq!(o["actor"]["session"]["created_time"], 1_700_000_000_000_i64);
        assert_eq!(
            o["actor"]["session"]["expiration_time"],
            1_700_003_600_000_i64
        );
        assert_eq!(o["actor"]["user"]["uid"], "1000");
        assert_eq!(o["actor"]["process"]["pid"], 4242);
        assert_eq!(o["unmapped"]["run"], r);
        assert_no_null(&o, "");

        let mut e = event("run.end");
        e.as_object_mut().unwrap().remove("process");
        r["end"] = "2023-11-14T22:13:25.500000000Z".into();
        r["end_reason"] = "exited".into();
        e["run"] = r;
        let o = ocsf(&e);
        assert_class(&o, 6002, 6, 4);
        assert_eq!(o["duration"], 5500);
        assert_eq!(o["end_time"], 1_700_000_005_500_i64);
        assert_eq!(o["status_detail"], "exited");
        assert_eq!(o["actor"]["session"]["expiration_reason"], "exited");
        assert_no_null(&o, "");
    }

    #[test]
    fn lost_and_unknown_kinds_are_base_events() {
        let e = json!({"schema": "sensor.event/v1", "seq": 7,
                       "time": "2023-11-14T22:13:20.000000000Z",
                       "host": {"name": "h1", "boot_id": "b"}, "kind": "sensor.lost",
                       "run": null,
                       "lost": {"total": 5, "by_kind": {"process.exec": 5}, "cumulative": 9}});
        let o = ocsf(&e);
        assert_class(&o, 0, 0, 99);
        assert_eq!(o["type_uid"], 99);
        assert_eq!(o["type_name"], "Base Event: Other");
        assert_eq!(o["activity_name"], "Events Lost");
        assert_eq!(o["count"], 5);
        assert_eq!(o["severity_id"], 3);
        assert!(o.get("actor").is_none());
        assert!(o["metadata"].get("correlation_uid").is_none());
        assert_eq!(o["unmapped"]["lost"]["cumulative"], 9);
        assert!(o["unmapped"]["run"].is_null());
        assert_no_null(&o, "");

        let mut e = exec_event();
        e["kind"] = "file.\"open\"".into();
        e["extra"] = json!({"x": 1});
        let o = ocsf(&e);
        assert_class(&o, 0, 0, 99);
        assert_eq!(o["activity_name"], "file.\"open\"");
        assert_eq!(o["type_name"], "Base Event: Other");
        assert_eq!(o["unmapped"]["exec"]["result"], "ok", "kept whole");
        assert_eq!(o["unmapped"]["extra"], json!({"x": 1}));
        assert_eq!(o["actor"]["process"]["pid"], 4242);

        // Not even an object: still one valid base event.
        let o = ocsf(&json!("garbage"));
        assert_class(&o, 0, 0, 99);
        assert_no_null(&o, "");
    }

    fn tamper_event(repaired: bool) -> Value {
        json!({"schema": "sensor.event/v1", "seq": 9,
               "time": "2023-11-14T22:13:20.000000000Z",
               "host": {"name": "h1", "boot_id": "0b5f0e3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c"},
               "kind": "sensor.tamper", "run": null,
               "tamper": {"what": "pin removed", "object": "/sys/fs/bpf/sensor/links/snsr_exec",
                          "detected": "integrity check", "repaired": repaired,
                          "detail": "link 7 of snsr_exec pinned again"}})
    }

    #[test]
    fn a_tamper_is_a_detection_finding() {
        let o = ocsf(&tamper_event(true));
        assert_class(&o, 2004, 2, 1);
        assert_eq!(o["class_name"], "Detection Finding");
        assert_eq!(o["type_name"], "Detection Finding: Create");
        assert_eq!(
            o["finding_info"]["uid"],
            "0b5f0e3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c:9"
        );
        assert_eq!(
            o["finding_info"]["title"],
            "pin removed: /sys/fs/bpf/sensor/links/snsr_exec"
        );
        assert_eq!(
            o["finding_info"]["desc"],
            "link 7 of snsr_exec pinned again"
        );
        assert_eq!(o["finding_info"]["types"], json!(["sensor.tamper"]));
        assert_eq!(o["is_alert"], true);
        assert_eq!(o["severity_id"], 3);
        assert_eq!(o["unmapped"]["tamper"]["detected"], "integrity check");
        assert!(o["unmapped"]["run"].is_null());
        assert_no_null(&o, "");
        let o = ocsf(&tamper_event(false));
        assert_eq!(o["severity_id"], 4, "not put back: High");
        // A tamper without its object is still a valid event (Base).
        let mut e = tamper_event(true);
        e["tamper"] = Value::Null;
        assert_class(&ocsf(&e), 0, 0, 99);
    }

    fn unix_event(result: &str, errno: Option<i64>, error: Option<&str>) -> Value {
        let mut e = event("network.connect");
        e["network"] = json!({"transport": "stream", "family": "unix",
                              "path": "/run/docker.sock", "abstract": false,
                              "result": result, "errno": errno, "error": error});
        e
    }

    #[test]
    fn unix_connects_are_local_network_activity() {
        let mut e = unix_event("error", Some(1), Some("EPERM"));
        e["policy"] = policy("deny", true, "unix.allow (no rule matches)");
        let o = ocsf(&e);
        assert_class(&o, 4001, 4, 4);
        assert_eq!(o["dst_endpoint"], json!({"name": "/run/docker.sock"}));
        assert_eq!(o["connection_info"]["direction_id"], 4);
        assert_eq!(o["connection_info"]["direction"], "Local");
        assert!(o["connection_info"].get("protocol_name").is_none());
        assert!(o["connection_info"].get("protocol_ver_id").is_none());
        assert_eq!(o["status_code"], "EPERM");
        assert_eq!(o["disposition"], "Blocked");
        assert_eq!(o["unmapped"]["network"]["family"], "unix");
        assert_eq!(o["unmapped"]["network"]["transport"], "stream");
        assert_eq!(o["unmapped"]["network"]["abstract"], false);
        assert!(o["unmapped"]["network"].get("path").is_none(), "mapped");
        assert_run_attached(&o);
        assert_no_null(&o, "");
        e["kind"] = "policy.violation".into();
        let o = ocsf(&e);
        assert_class(&o, 4001, 4, 4);
        assert!(
            o["message"]
                .as_str()
                .unwrap()
                .contains("connect to Unix socket /run/docker.sock"),
            "{o}"
        );

        // Connected, but to another socket than the allowed path named.
        let mut e = unix_event("killed", None, None);
        e["network"]["peer_path"] = "/tmp/other.sock".into();
        e["policy"] = policy(
            "deny",
            true,
            "unix.allow (the socket reached is not the one the allowed address names)",
        );
        let o = ocsf(&e);
        assert_class(&o, 4001, 4, 1);
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["unmapped"]["network"]["peer_path"], "/tmp/other.sock");
        assert_no_null(&o, "");
        let mut e = unix_event("killed", None, None);
        e["network"]["peer_path"] = "/tmp/other.sock".into();
        let o = ocsf(&e);
        assert!(
            o["status_detail"]
                .as_str()
                .unwrap()
                .contains("/tmp/other.sock"),
            "{o}"
        );
    }

    #[test]
    fn unconnected_datagrams_are_traffic_with_their_count() {
        let mut e = connect_event("unknown", None, None);
        e["network"]["transport"] = "udp".into();
        e["network"]["dst_port"] = 53.into();
        e["network"]["sends"] = 8.into();
        e["network"]["via"] = "sendmsg".into();
        let o = ocsf(&e);
        assert_class(&o, 4001, 4, 6);
        assert_eq!(o["activity_name"], "Traffic");
        assert_eq!(o["traffic"], json!({"packets_out": 8}));
        assert_eq!(o["dst_endpoint"], json!({"ip": "203.0.113.7", "port": 53}));
        assert_eq!(o["connection_info"]["direction_id"], 2);
        assert_eq!(o["unmapped"]["network"]["via"], "sendmsg");
        assert!(o["unmapped"]["network"].get("sends").is_none(), "mapped");
        assert!(
            o["status_detail"]
                .as_str()
                .unwrap()
                .starts_with("8 datagrams")
        );
        assert_no_null(&o, "");
    }

    #[test]
    fn listeners_and_accepted_connections_are_inbound() {
        let mut e = event("network.listen");
        e["network"] = json!({"transport": "tcp", "family": "ipv4", "local_ip": "0.0.0.0",
                              "local_port": 4444, "result": "ok", "errno": null,
                              "error": null});
        let o = ocsf(&e);
        assert_class(&o, 4001, 4, 7);
        assert_eq!(o["activity_name"], "Listen");
        assert_eq!(o["dst_endpoint"], json!({"ip": "0.0.0.0", "port": 4444}));
        assert!(o.get("src_endpoint").is_none());
        assert_eq!(o["connection_info"]["direction_id"], 1);
        assert_no_null(&o, "");

        let mut e = event("network.accept");
        e["network"] = json!({"transport": "tcp", "family": "ipv6", "local_ip": "::1",
                              "local_port": 4444, "src_ip": "::1", "src_port": 50000,
                              "result": "ok", "errno": null, "error": null});
        let o = ocsf(&e);
        assert_class(&o, 4001, 4, 1);
        assert_eq!(o["src_endpoint"], json!({"ip": "::1", "port": 50000}));
        assert_eq!(o["dst_endpoint"], json!({"ip": "::1", "port": 4444}));
        assert_eq!(o["connection_info"]["direction"], "Inbound");
        assert_eq!(o["connection_info"]["protocol_ver_id"], 6);
        assert_no_null(&o, "");
    }

    #[test]
    fn raw_sockets_have_this_host_as_their_endpoint() {
        let mut e = event("network.socket");
        e["network"] = json!({"transport": "icmp", "family": "ipv6", "result": "error",
                              "errno": 1, "error": "EPERM"});
        e["policy"] = policy(
            "deny",
            true,
            "raw_sockets (a raw, ICMP or packet socket reaches any address)",
        );
        let o = ocsf(&e);
        assert_class(&o, 4001, 4, 4);
        assert_eq!(o["src_endpoint"], json!({"hostname": "h1"}));
        assert!(o.get("dst_endpoint").is_none());
        assert_eq!(o["connection_info"]["protocol_num"], 58);
        assert_eq!(o["connection_info"]["direction_id"], 0);
        assert_eq!(
            o["status_detail"],
            "blocked by policy research: raw_sockets (a raw, ICMP or packet socket reaches any address)"
        );
        e["kind"] = "policy.violation".into();
        let o = ocsf(&e);
        assert_class(&o, 4001, 4, 4);
        assert!(
            o["message"]
                .as_str()
                .unwrap()
                .contains("a icmp socket (ipv6)"),
            "{o}"
        );
        assert_no_null(&o, "");

        // A packet socket: made, and its creator killed (enforced).
        let mut e = event("network.socket");
        e["network"] = json!({"transport": "packet", "family": "packet", "result": "ok",
                              "errno": null, "error": null});
        let o = ocsf(&e);
        assert_class(&o, 4001, 4, 1);
        assert!(o["connection_info"].get("protocol_num").is_none());
        assert!(o["connection_info"].get("protocol_ver_id").is_none());
        assert_no_null(&o, "");
    }

    fn process_tamper(method: &str, killed: bool) -> Value {
        let mut e = event("process.tamper");
        e["tamper"] = json!({"method": method, "what": "ptrace attach",
                             "object": "pid 77 (/usr/bin/sleep)", "detected": "kernel",
                             "target": {"pid": 77, "key": "b00t:500:77",
                                        "exe": "/usr/bin/sleep", "run": null},
                             "killed": killed});
        e
    }

    #[test]
    fn a_process_tamper_is_an_inject_into_the_target() {
        let mut e = process_tamper("ptrace", true);
        e["policy"] = policy(
            "deny",
            true,
            "tamper (a process outside the run, or the sensor)",
        );
        let o = ocsf(&e);
        assert_class(&o, 1007, 1, 4);
        assert_eq!(o["activity_name"], "Inject");
        assert_eq!(o["type_name"], "Process Activity: Inject");
        assert_eq!(o["injection_type_id"], 99);
        assert_eq!(o["injection_type"], "ptrace attach");
        assert_eq!(o["process"]["pid"], 77);
        assert_eq!(o["process"]["uid"], "b00t:500:77");
        assert_eq!(o["process"]["file"]["path"], "/usr/bin/sleep");
        assert!(
            o["process"].get("session").is_none(),
            "the target is in no run"
        );
        assert_eq!(o["actor"]["process"]["pid"], 4242);
        assert_eq!(o["is_alert"], true);
        assert_eq!(o["severity_id"], 3);
        assert_eq!(o["status_id"], 2);
        assert_eq!(o["disposition"], "Blocked");
        assert_eq!(o["unmapped"]["tamper"]["target"]["pid"], 77);
        assert_run_attached(&o);
        assert_no_null(&o, "");
        e["kind"] = "policy.violation".into();
        let o = ocsf(&e);
        assert_class(&o, 1007, 1, 4);
        assert!(
            o["message"].as_str().unwrap().contains("ptrace attach"),
            "{o}"
        );

        // Not killed (no policy, or audit): High, status unknown.
        let mut e = process_tamper("process_vm_writev", false);
        e["tamper"]["target"]["run"] = run();
        let o = ocsf(&e);
        assert_class(&o, 1007, 1, 4);
        assert_eq!(o["severity_id"], 4);
        assert_eq!(o["status_id"], 0);
        assert_eq!(o["is_alert"], true);
        assert_eq!(o["process"]["session"]["uid"], "run-1", "the target's run");
        assert!(o["message"].as_str().unwrap().ends_with("not blocked"));
        assert_no_null(&o, "");

        let o = ocsf(&process_tamper("proc_mem", true));
        assert_class(&o, 1007, 1, 4);
        assert_eq!(o["injection_type"], "/proc/PID/mem");
        let o = ocsf(&process_tamper("pidfd_getfd", true));
        assert_class(&o, 1007, 1, 3);
        assert_eq!(o["activity_name"], "Open");
        assert!(o.get("injection_type_id").is_none());
        let mut e = process_tamper("something-new", false);
        e["tamper"].as_object_mut().unwrap().remove("target");
        let o = ocsf(&e);
        assert_class(&o, 1007, 1, 99);
        assert_eq!(o["activity_name"], "ptrace attach");
        assert_eq!(o["process"]["pid"], 4242, "no target: the caller");
        assert_no_null(&o, "");
    }

    #[test]
    fn a_kernel_sensor_tamper_is_a_finding_with_its_actor() {
        let mut e = event("sensor.tamper");
        e["tamper"] = json!({"method": "signal", "what": "signal SIGSTOP to the sensor daemon",
                             "object": "pid 100", "detected": "kernel",
                             "target": {"pid": 100, "key": "b00t:1:100", "exe": "/usr/sbin/sensor",
                                        "run": null},
                             "signal": 19, "killed": false});
        e["policy"] = policy(
            "deny",
            false,
            "tamper (a process outside the run, or the sensor)",
        );
        let o = ocsf(&e);
        assert_class(&o, 2004, 2, 1);
        assert_eq!(
            o["finding_info"]["title"],
            "signal SIGSTOP to the sensor daemon: pid 100"
        );
        assert_eq!(o["actor"]["process"]["pid"], 4242);
        assert_eq!(o["is_alert"], true);
        assert_eq!(o["severity_id"], 4);
        assert!(
            o.get("status_id").is_none(),
            "a finding's status is its review state"
        );
        assert_eq!(o["disposition"], "Detected");
        assert!(
            o["message"].as_str().unwrap().ends_with("not blocked"),
            "{o}"
        );
        assert!(!o["message"].as_str().unwrap().contains("put back"));
        assert_run_attached(&o);
        assert_no_null(&o, "");
        e["kind"] = "policy.violation".into();
        assert_class(&ocsf(&e), 2004, 2, 1);

        let mut e = event("sensor.tamper");
        e["tamper"] = json!({"method": "sensor_file", "what": "open for writing of a sensor file",
                             "object": "/var/lib/sensor/sensor.db", "detected": "kernel",
                             "file": {"kind": "store", "path": "/var/lib/sensor/sensor.db",
                                      "dev": "8:1", "inode": 12}, "killed": true});
        e["policy"] = policy(
            "deny",
            true,
            "tamper (a process outside the run, or the sensor)",
        );
        let o = ocsf(&e);
        assert_class(&o, 2004, 2, 1);
        assert_eq!(o["severity_id"], 3);
        assert!(o.get("status_id").is_none());
        assert_eq!(o["unmapped"]["tamper"]["file"]["kind"], "store");
        assert_no_null(&o, "");
    }

    #[test]
    fn a_degraded_run_is_a_base_event_with_a_count() {
        let mut e = event("run.degraded");
        e.as_object_mut().unwrap().remove("process");
        e["degraded"] = json!({"lost_events": 3, "denials_suppressed": 40});
        let o = ocsf(&e);
        assert_class(&o, 0, 0, 99);
        assert_eq!(o["activity_name"], "Run Degraded");
        assert_eq!(o["count"], 43);
        assert_eq!(o["severity_id"], 3);
        assert!(o["message"].as_str().unwrap().contains("3 events lost"));
        assert_eq!(o["unmapped"]["degraded"]["denials_suppressed"], 40);
        assert_run_attached(&o);
        assert_no_null(&o, "");
        e["degraded"]["lost_events"] = 0.into();
        assert_eq!(ocsf(&e)["severity_id"], 2);
    }

    fn blind_event(restored: bool) -> Value {
        let mut b = json!({"restored": restored, "missing": ["connect"],
                           "since": "2023-11-14T22:13:00.000000000Z", "round": 4,
                           "rounds_failed": 2, "detail": "round 4: no network.connect record"});
        if restored {
            b["until"] = json!("2023-11-14T22:14:00.000000000Z");
        }
        json!({"schema": "sensor.event/v1", "seq": 12,
               "time": "2023-11-14T22:13:20.000000000Z",
               "host": {"name": "h1", "boot_id": "b00t"},
               "kind": "sensor.blind", "run": null, "blind": b})
    }

    #[test]
    fn blindness_opens_a_detection_finding_and_its_restore_closes_it() {
        let o = ocsf(&blind_event(false));
        assert_class(&o, 2004, 2, 1);
        assert_eq!(o["finding_info"]["types"], json!(["sensor.blind"]));
        assert_eq!(
            o["finding_info"]["title"],
            "sensor blind: connect records do not come through the kernel"
        );
        assert_eq!(
            o["finding_info"]["desc"],
            "round 4: no network.connect record"
        );
        assert_eq!(o["is_alert"], true);
        assert_eq!(o["severity_id"], 4);
        assert_eq!(o["unmapped"]["blind"]["round"], 4);
        assert_no_null(&o, "");
        let closed = ocsf(&blind_event(true));
        assert_class(&closed, 2004, 2, 3);
        assert_eq!(closed["severity_id"], 1);
        assert!(closed.get("is_alert").is_none());
        // One finding: the restore carries the blindness's uid.
        assert_eq!(closed["finding_info"]["uid"], o["finding_info"]["uid"]);
        assert_eq!(
            o["finding_info"]["uid"],
            "b00t:blind:2023-11-14T22:13:00.000000000Z"
        );
        assert_no_null(&closed, "");
    }

    #[test]
    fn events_outside_runs_have_no_session() {
        let mut e = connect_event("ok", None, None);
        e["run"] = Value::Null;
        let o = ocsf(&e);
        assert!(o["actor"].get("session").is_none());
        assert!(o["actor"].get("user").is_none());
        assert!(o["actor"]["process"].is_object());
        assert!(o["unmapped"]["run"].is_null());
        assert_no_null(&o, "");
    }

    #[test]
    fn encode_appends() {
        let mut out = b"prefix\n".to_vec();
        encode_value(&exec_event(), &mut out).unwrap();
        assert!(out.starts_with(b"prefix\n{"));
        assert!(out.ends_with(b"}"));
    }
}

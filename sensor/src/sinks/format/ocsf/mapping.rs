//! From the typed [`Event`] to its [`OcsfEvent`]: which class, activity,
//! status and severity, and which objects, decided by field accesses on the
//! event (a renamed or retyped event field fails to compile here).

use std::borrow::Cow;

use super::{
    OCSF_VERSION,
    classes::{Class, NetShape, Security, Severity, Status, protocol_num, protocol_ver},
    objects::{
        Actor, App, ConnectionInfo, Device, Endpoint, ExecRest, File, FindingInfo, Metadata,
        NetworkRest, OcsfEvent, ParentProcess, Policy, PolicyData, ProcessObj, ProcessRest,
        Product, RestOr, Session, Sorted, Traffic, Unmapped, User,
    },
};
use crate::event::{
    Decision, Event, Exec, ExecResult, Kind, NetResult, Network, Process, RunRef, Tamper,
    TamperTarget, Timestamp, TokenIssued, Verdict, rfc3339,
};

/// A non-empty string (the mapping treats an empty one as absent).
fn text(s: &str) -> Option<&str> {
    Some(s).filter(|s| !s.is_empty())
}

/// A non-empty optional string.
fn opt_text(s: Option<&String>) -> Option<&str> {
    s.map(String::as_str).filter(|s| !s.is_empty())
}

/// Milliseconds since the Unix epoch of `t`, as written in RFC 3339 (the
/// epoch to the end of year 9999).
fn ms(t: Timestamp) -> i64 {
    t.unix_ms()
}

/// How a sensor process is shown as an OCSF `process` object.
#[derive(Debug, Clone, Copy)]
enum Shape<'a> {
    /// The process itself: pid, key, tid, comm (when `name`), `file` (the
    /// image to show), argv/cwd when `cmd`, user, parent; `terminated_time`
    /// for an exit.
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
        tid: Option<u32>,
        file: Option<&'a str>,
        name: bool,
    },
    /// Its parent (the actor of a fork): ppid, parent key, parent exe, user.
    Parent,
}

/// The `process` object of `p` shown as `shape`.
fn process_obj<'a>(p: &'a Process, shape: Shape<'a>) -> ProcessObj<'a> {
    let user = Some(User {
        name: None,
        uid: Some(p.uid.to_string()),
    });
    let parent_file = opt_text(p.parent_exe.as_ref()).map(File::executable);
    if let Shape::Parent = shape {
        return ProcessObj {
            pid: Some(p.ppid),
            uid: text(&p.parent_key),
            file: parent_file,
            user,
            ..ProcessObj::default()
        };
    }
    let (tid, file, name, cmd, terminated) = match shape {
        Shape::Full {
            file,
            name,
            cmd,
            terminated,
        } => (p.tid, file, name, cmd, terminated),
        Shape::Actor { tid, file, name } => (tid.unwrap_or(p.tid), file, name, false, None),
        Shape::Parent => (p.tid, None, false, false, None),
    };
    ProcessObj {
        pid: Some(p.pid),
        uid: text(&p.key),
        tid: Some(tid),
        name: if name { text(&p.comm) } else { None },
        file: file.map(File::executable),
        cmd_line: if cmd {
            p.argv.as_deref().map(cmd_line)
        } else {
            None
        },
        working_directory: if cmd { opt_text(p.cwd.as_ref()) } else { None },
        terminated_time: terminated,
        user,
        parent_process: Some(ParentProcess {
            pid: p.ppid,
            uid: text(&p.parent_key),
            file: parent_file,
        }),
        session: None,
    }
}

/// A tamper's target as a `process`: pid, key, exe (and its run, set by
/// the caller).
fn target_obj(t: &TamperTarget) -> ProcessObj<'_> {
    ProcessObj {
        pid: Some(t.pid),
        uid: text(&t.key),
        file: opt_text(t.exe.as_ref()).map(File::executable),
        ..ProcessObj::default()
    }
}

/// `cmd_line`: argv joined with spaces.
fn cmd_line(argv: &[String]) -> String {
    argv.join(" ")
}

/// `actor.process` of the process that acted: all of it.
fn acting(p: Option<&Process>) -> Option<ProcessObj<'_>> {
    p.map(|p| {
        let full = Shape::Full {
            file: opt_text(p.exe.as_ref()),
            name: true,
            cmd: true,
            terminated: None,
        };
        process_obj(p, full)
    })
}

/// `pid N (EXE)` of the process that acted, for messages.
fn who(p: Option<&Process>) -> String {
    p.map_or_else(
        || "a process".to_owned(),
        |p| {
            format!(
                "pid {} ({})",
                p.pid,
                opt_text(p.exe.as_ref()).unwrap_or("?")
            )
        },
    )
}

/// "ENOENT (errno 2)", "errno 2", or the name alone.
fn errno_text(error: Option<&str>, errno: Option<i32>) -> Option<String> {
    match (error, errno) {
        (Some(e), Some(n)) if e != n.to_string() => Some(format!("{e} (errno {n})")),
        (_, Some(n)) => Some(format!("errno {n}")),
        (Some(e), None) => Some(e.to_owned()),
        (None, None) => None,
    }
}

/// What the mapping decided for one event, before the common attributes.
struct Draft<'a> {
    class: Class,
    activity_id: u32,
    activity_name: &'a str,
    status: Option<Status>,
    status_code: Option<&'a str>,
    status_detail: Option<Cow<'a, str>>,
    severity: Severity,
    message: Option<String>,
    launch_type: Option<(u8, &'static str)>,
    exit_code: Option<i32>,
    count: Option<u64>,
    start_time: Option<i64>,
    end_time: Option<i64>,
    duration: Option<i64>,
    app_name: Option<&'a str>,
    process: Option<ProcessObj<'a>>,
    actor_process: Option<ProcessObj<'a>>,
    /// Network Activity: the sensor `network` object and what it is about.
    network: Option<(&'a Network, NetShape)>,
    /// Process Activity Inject: `injection_type`.
    injection: Option<&'static str>,
    security: Option<Security>,
    /// Detection Finding: `finding_info` (uid, title, desc).
    finding: Option<(String, String, Option<&'a str>)>,
    is_alert: bool,
    /// Whether `exec` fields were mapped (only the rest goes to
    /// `unmapped`); otherwise `exec` goes there whole.
    exec_mapped: bool,
    /// Authorize Session: `privileges`, `user`, `session`.
    privileges: Option<&'a [String]>,
    user: Option<User<'a>>,
    session: Option<Session<'a>>,
}

impl<'a> Draft<'a> {
    const fn new(class: Class, activity_id: u32, activity_name: &'a str) -> Self {
        Self {
            class,
            activity_id,
            activity_name,
            status: None,
            status_code: None,
            status_detail: None,
            severity: Severity::Informational,
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
            security: None,
            finding: None,
            is_alert: false,
            exec_mapped: false,
            privileges: None,
            user: None,
            session: None,
        }
    }
}

/// The OCSF form of `event`.
#[must_use]
pub fn map(event: &Event) -> OcsfEvent<'_> {
    let kind = event.kind;
    let time_ms = ms(event.time);
    // A tamper's policy.violation twin maps as the tamper does.
    let tamper_class = match kind {
        Kind::ProcessTamper | Kind::SensorTamper => Some(kind),
        _ => event.tamper.as_ref().map(|t| match t.method {
            "signal" | "sensor_file" | "bpf" | "integrity" => Kind::SensorTamper,
            _ => Kind::ProcessTamper,
        }),
    };
    let process = event.process.as_ref();
    let exec = event.exec.as_ref();
    let policy = event.policy.as_ref();
    let mut d = match (kind, process, event.network.as_ref(), event.tamper.as_ref()) {
        (Kind::ProcessSpawn | Kind::ProcessExec | Kind::ProcessExit, Some(p), _, _) => {
            process_activity(kind, p, exec, policy, time_ms)
        }
        (
            Kind::NetworkConnect
            | Kind::NetworkListen
            | Kind::NetworkAccept
            | Kind::NetworkSocket
            | Kind::PolicyViolation,
            _,
            Some(n),
            _,
        ) => network_activity(kind, n, process),
        (Kind::ProcessTamper | Kind::PolicyViolation, _, None, Some(t))
            if tamper_class == Some(Kind::ProcessTamper) =>
        {
            process_tamper(t, process)
        }
        (Kind::SensorTamper | Kind::PolicyViolation, _, None, Some(t))
            if tamper_class == Some(Kind::SensorTamper) =>
        {
            sensor_tamper(event, t, process)
        }
        (Kind::PolicyViolation, Some(p), None, _) => {
            process_activity(kind, p, exec, policy, time_ms)
        }
        (Kind::RunStart | Kind::RunEnd, _, _, _) => {
            run_lifecycle(kind, event.run.as_ref(), process, time_ms)
        }
        (Kind::RunDegraded, _, _, _) => degraded(event),
        (Kind::SensorGap, _, _, _) => gap(event),
        (Kind::SensorBlind, _, _, _) if event.blind.is_some() => blind(event),
        (Kind::TokenIssued, _, _, _) if let Some(t) = &event.token => {
            token_issued(event, t, process)
        }
        _ => base(event, process),
    };
    let violation = kind == Kind::PolicyViolation;
    if let Some(policy) = policy {
        apply_policy(&mut d, policy, violation, event);
    } else if violation {
        d.is_alert = true;
        d.severity = d.severity.max(Severity::Medium);
    }
    finish(d, event, time_ms)
}

/// Process Activity of a spawn, an exec, an exit, or a violation about
/// one (`process` must be present).
fn process_activity<'a>(
    kind: Kind,
    p: &'a Process,
    exec: Option<&'a Exec>,
    policy: Option<&'a Verdict>,
    time_ms: i64,
) -> Draft<'a> {
    let rule = policy.map_or("", |p| p.rule.as_str());
    let exe = opt_text(p.exe.as_ref());
    if kind == Kind::ProcessExit {
        let mut m = Draft::new(Class::Process, 2, "Terminate");
        let full = Shape::Full {
            file: exe,
            name: true,
            cmd: false,
            terminated: Some(time_ms),
        };
        m.process = Some(process_obj(p, full));
        let actor = Shape::Actor {
            tid: None,
            file: None,
            name: false,
        };
        m.actor_process = Some(process_obj(p, actor));
        m.status = Some(Status::Success);
        if let Some(code) = p.exit_code {
            m.exit_code = Some(code);
            m.status_detail = Some(format!("exited with code {code}").into());
        } else if let Some(signal) = p.exit_signal {
            let core = if p.core_dumped == Some(true) {
                ", core dumped"
            } else {
                ""
            };
            m.status_detail = Some(format!("killed by signal {signal}{core}").into());
        }
        return m;
    }
    let mut m = Draft::new(Class::Process, 1, "Launch");
    let is_fork =
        kind == Kind::ProcessSpawn || (exec.is_none() && rule.starts_with("max_processes"));
    if is_fork {
        m.launch_type = Some((2, "Fork"));
        let full = Shape::Full {
            file: exe,
            name: true,
            cmd: true,
            terminated: None,
        };
        m.process = Some(process_obj(p, full));
        m.actor_process = Some(process_obj(p, Shape::Parent));
        m.status = Some(Status::Success);
        return m;
    }
    m.launch_type = Some((3, "Exec"));
    let failed = exec.is_some_and(|x| x.result == ExecResult::Error);
    let old_tid = exec.map(|x| x.old_tid);
    if let Some(x) = exec.filter(|_| failed) {
        // The image is unchanged; what it tried to run is exec.filename.
        let target = Shape::Full {
            file: text(&x.filename),
            name: false,
            cmd: true,
            terminated: None,
        };
        m.process = Some(process_obj(p, target));
        let caller = Shape::Actor {
            tid: old_tid,
            file: exe,
            name: true,
        };
        m.actor_process = Some(process_obj(p, caller));
        m.status = Some(Status::Failure);
        let error = opt_text(x.error.as_ref());
        m.status_code = error;
        m.status_detail =
            errno_text(error, x.errno).map(|e| Cow::Owned(format!("exec failed: {e}")));
    } else {
        let full = Shape::Full {
            file: exe,
            name: true,
            cmd: true,
            terminated: None,
        };
        m.process = Some(process_obj(p, full));
        let actor = Shape::Actor {
            tid: old_tid,
            file: None,
            name: false,
        };
        m.actor_process = Some(process_obj(p, actor));
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
fn network_activity<'a>(kind: Kind, n: &'a Network, p: Option<&'a Process>) -> Draft<'a> {
    let shape = NetShape::of(kind, n);
    let (activity_id, activity_name, status) = match (shape, n.result) {
        (NetShape::Listen, _) => (7, "Listen", Status::Success),
        (NetShape::Traffic, _) => (6, "Traffic", Status::Unknown),
        (_, NetResult::Ok) => (1, "Open", Status::Success),
        (_, NetResult::Refused) => (5, "Refuse", Status::Failure),
        (_, NetResult::Error) => (4, "Fail", Status::Failure),
        // Connected, to a socket other than the allowed one: the caller
        // was killed before it could use the connection.
        (_, NetResult::Killed) => (1, "Open", Status::Failure),
        (_, NetResult::InProgress | NetResult::Unknown) => (1, "Open", Status::Unknown),
    };
    let mut m = Draft::new(Class::Network, activity_id, activity_name);
    m.status = Some(status);
    m.network = Some((n, shape));
    let what = match shape {
        NetShape::Socket => "socket",
        _ => "connect",
    };
    m.status_detail = match n.result {
        NetResult::Ok => None,
        _ if shape == NetShape::Traffic => {
            let sends = n.sends.unwrap_or(0);
            let plural = if sends == 1 { "" } else { "s" };
            Some(
                format!(
                    "{sends} datagram{plural} sent to this destination without connect() so far"
                )
                .into(),
            )
        }
        NetResult::InProgress => Some("connect in progress (EINPROGRESS)".into()),
        NetResult::Unknown => Some(format!("{what} result not observed").into()),
        NetResult::Killed => Some(match opt_text(n.peer_path.as_ref()) {
            Some(peer) => format!(
                "connected to {peer}, not the socket the allowed address names: the caller \
                 was killed"
            )
            .into(),
            None => "connected to another socket than the allowed address names: the caller \
                     was killed"
                .into(),
        }),
        NetResult::Refused | NetResult::Error => {
            let error = opt_text(n.error.as_ref());
            m.status_code = error;
            errno_text(error, n.errno).map(|e| format!("{what} failed: {e}").into())
        }
    };
    m.actor_process = acting(p);
    m
}

/// Process Activity of a `process.tamper`: the caller (`actor.process`)
/// reached into a process outside its run (`process`).
fn process_tamper<'a>(t: &'a Tamper, p: Option<&'a Process>) -> Draft<'a> {
    let what = text(&t.what).unwrap_or("tamper");
    let (activity_id, activity_name, injection) = match t.method {
        "ptrace" => (4, "Inject", Some("ptrace attach")),
        "process_vm_writev" => (4, "Inject", Some("process_vm_writev")),
        "proc_mem" => (4, "Inject", Some("/proc/PID/mem")),
        // Takes a descriptor of the other process's: OCSF's Open.
        "pidfd_getfd" => (3, "Open", None),
        _ => (99, what, None),
    };
    let mut m = Draft::new(Class::Process, activity_id, activity_name);
    m.injection = injection;
    // OCSF requires `process`: the target, or else the caller itself.
    m.process = match (t.target.as_ref(), p) {
        (Some(target), _) => {
            let mut obj = target_obj(target);
            obj.session = target
                .run
                .as_ref()
                .and_then(|r| text(&r.id))
                .map(|id| Session {
                    uid: Some(id),
                    ..Session::default()
                });
            Some(obj)
        }
        (None, Some(p)) => Some(process_obj(
            p,
            Shape::Full {
                file: opt_text(p.exe.as_ref()),
                name: false,
                cmd: false,
                terminated: None,
            },
        )),
        (None, None) => None,
    };
    m.actor_process = acting(p);
    let killed = t.killed == Some(true);
    m.status = Some(if killed {
        Status::Failure
    } else {
        Status::Unknown
    });
    if killed {
        m.status_detail = Some("the caller was killed before the call took effect".into());
    }
    m.severity = if killed {
        Severity::Medium
    } else {
        Severity::High
    };
    m.is_alert = true;
    let object = text(&t.object).unwrap_or("?");
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
fn run_lifecycle<'a>(
    kind: Kind,
    run: Option<&'a RunRef>,
    p: Option<&'a Process>,
    time_ms: i64,
) -> Draft<'a> {
    let start = kind == Kind::RunStart;
    let mut m = if start {
        Draft::new(Class::AppLifecycle, 3, "Start")
    } else {
        Draft::new(Class::AppLifecycle, 4, "Stop")
    };
    m.status = Some(Status::Success);
    let agent = run.and_then(|r| text(&r.agent)).unwrap_or("unknown");
    m.app_name = Some(agent);
    m.actor_process = acting(p);
    let id = run.and_then(|r| text(&r.id)).unwrap_or("?");
    let details = run.and_then(|r| r.details.as_ref());
    m.start_time = details.map(|d| ms(d.start));
    if start {
        let by = details.map_or("?", |d| d.started_by.as_str());
        m.message = Some(format!("agent run {id} ({agent}) started by {by}"));
    } else {
        let reason = details.and_then(|d| opt_text(d.end_reason.as_ref()));
        let end = details.and_then(|d| d.end).map_or(time_ms, ms);
        m.end_time = Some(end);
        m.duration = m.start_time.map(|s| (end - s).max(0));
        m.status_detail = reason.map(Cow::Borrowed);
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
fn sensor_tamper<'a>(event: &'a Event, t: &'a Tamper, p: Option<&'a Process>) -> Draft<'a> {
    let mut m = Draft::new(Class::Finding, 1, "Create");
    let title = format!("{}: {}", t.what, t.object);
    let uid = format!(
        "{}:{}",
        text(&event.host.boot_id).unwrap_or("unknown"),
        event.seq
    );
    if t.detected == "kernel" {
        let killed = t.killed == Some(true);
        let by = who(p);
        m.message = Some(format!(
            "{title}, by {by}; {}",
            if killed {
                "the caller was killed"
            } else {
                "not blocked"
            }
        ));
        m.severity = if killed {
            Severity::Medium
        } else {
            Severity::High
        };
        m.actor_process = acting(p);
    } else {
        // Only the integrity check puts things back (and says so); the
        // file watch reports a change after it was made.
        m.message = Some(match t.repaired {
            Some(true) => format!("{title} (put back by the sensor)"),
            Some(false) => format!("{title} (NOT put back)"),
            None => title.clone(),
        });
        m.severity = if t.repaired == Some(true) {
            Severity::Medium
        } else {
            Severity::High
        };
        if t.method == "file" {
            m.actor_process = acting(p);
        }
    }
    m.finding = Some((uid, title, opt_text(t.detail.as_ref())));
    m.is_alert = true;
    m
}

/// Base Event of a `run.degraded`: what the kernel could not deliver of
/// one run (like `sensor.lost`, per run).
fn degraded(event: &Event) -> Draft<'_> {
    let mut m = Draft::new(Class::Base, 99, "Run Degraded");
    let d = event.degraded.as_ref();
    let lost = d.map_or(0, |d| d.lost_events);
    let held = d.map_or(0, |d| d.denials_suppressed);
    let run = event.run.as_ref();
    let id = run.and_then(|r| text(&r.id)).unwrap_or("?");
    let agent = run.and_then(|r| text(&r.agent)).unwrap_or("?");
    m.count = Some(lost.saturating_add(held));
    m.message = Some(format!(
        "agent run {id} ({agent}): {lost} events lost, {held} denial records held back \
         (still enforced)"
    ));
    m.severity = if lost > 0 {
        Severity::Medium
    } else {
        Severity::Low
    };
    m
}

/// Base Event of a `sensor.gap`: a time no daemon read the kernel's
/// records. Medium when the kernel did not record through it (nothing of
/// it can be known), or lost records; Low otherwise.
fn gap(event: &Event) -> Draft<'_> {
    let mut m = Draft::new(Class::Base, 99, "Sensor Gap");
    let g = event.gap.as_ref();
    let cause = g.and_then(|g| text(g.cause)).unwrap_or("unknown");
    let recorded = g.is_some_and(|g| g.recorded);
    let lost = g.map_or(0, |g| g.lost);
    let seconds = g
        .and_then(|g| g.seconds)
        .filter(|s| s.is_finite())
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
    m.severity = if recorded && lost == 0 {
        Severity::Low
    } else {
        Severity::Medium
    };
    m
}

/// Detection Finding of a `sensor.blind` (the caller checked `blind` is
/// there): a blindness opens a finding, its restore closes it.
fn blind(event: &Event) -> Draft<'_> {
    let b = event.blind.as_ref();
    let restored = b.is_some_and(|b| b.restored);
    let records = b.map(|b| b.missing.join(", ")).unwrap_or_default();
    let since = b.map_or_else(|| "unknown".to_owned(), |b| rfc3339(b.since.0).to_string());
    let boot = text(&event.host.boot_id).unwrap_or("unknown");
    let uid = format!("{boot}:blind:{since}");
    let (mut m, title) = if restored {
        (
            Draft::new(Class::Finding, 3, "Close"),
            format!("sensor sight restored ({records} records come through again)"),
        )
    } else {
        (
            Draft::new(Class::Finding, 1, "Create"),
            format!("sensor blind: {records} records do not come through the kernel"),
        )
    };
    m.message = Some(title.clone());
    m.finding = Some((uid, title, b.and_then(|b| text(&b.detail))));
    m.severity = if restored {
        Severity::Informational
    } else {
        Severity::High
    };
    m.is_alert = !restored;
    m
}

/// Base Event: `sensor.lost`, and the kinds this mapping has no class for.
fn base<'a>(event: &'a Event, p: Option<&'a Process>) -> Draft<'a> {
    let name = match event.kind {
        Kind::SensorLost => "Events Lost",
        other => other.as_str(),
    };
    let mut m = Draft::new(Class::Base, 99, name);
    if let Some(lost) = &event.lost {
        m.count = Some(lost.total);
        m.message = Some(format!(
            "{} events lost ({} since the sensor started)",
            lost.total, lost.cumulative
        ));
        if lost.total > 0 {
            m.severity = Severity::Medium;
        }
    }
    m.actor_process = acting(p);
    m
}

/// A policy verdict (`security_control` profile). A deny is counted once:
/// the event of the action carries it as the alert (`is_alert`, the
/// message), and its `policy.violation` twin is left out where the action
/// is written ([`repeats`]). Blocked (enforce) and "would have been
/// blocked" (audit: the action went ahead) are told apart by
/// `action`/`disposition`: Denied/Blocked versus Allowed/Logged.
fn apply_policy(m: &mut Draft<'_>, policy: &Verdict, violation: bool, event: &Event) {
    let name = &policy.name;
    let deny = policy.verdict == Decision::Deny;
    let enforced = policy.enforced;
    let rule = &policy.rule;
    m.security = Some(match (deny, enforced) {
        (false, _) => Security::Allowed,
        (true, true) => Security::Blocked,
        (true, false) => Security::WouldBlock,
    });
    // A tamper is an alert by itself; any other action when it is denied.
    m.is_alert = m.is_alert || violation || deny;
    if !deny {
        return;
    }
    if enforced {
        m.status = Some(Status::Failure);
        m.status_detail = Some(format!("blocked by policy {name}: {rule}").into());
    } else if m.status_detail.is_none() {
        m.status_detail =
            Some(format!("would have been blocked by policy {name}: {rule} (audit)").into());
    }
    m.severity = if enforced {
        Severity::Medium
    } else {
        Severity::High
    };
    // The tamper mappings say what happened in their own words.
    if violation || m.message.is_none() {
        let what = match (&event.network, &event.exec, &event.process) {
            (Some(n), _, _) => match (&n.path, n.dst_ip) {
                (Some(path), _) => format!("connect to Unix socket {path}"),
                (None, Some(ip)) => format!("connect to {ip} port {}", n.dst_port.unwrap_or(0)),
                (None, None) => format!("a {} socket ({})", n.transport, n.family),
            },
            _ if let Some(t) = &event.tamper => format!("{} ({})", t.what, t.object),
            (None, Some(_), Some(p)) => {
                format!("exec of {}", p.exe.as_deref().unwrap_or("?"))
            }
            (None, None, Some(p)) => format!("process {}", p.pid),
            _ => "an action".to_owned(),
        };
        let outcome = if enforced {
            "blocked"
        } else {
            "would have been blocked (audit: reported, not blocked)"
        };
        m.message = Some(format!(
            "policy violation: policy {name} denies {what} ({rule}); {outcome}"
        ));
    }
}

/// The kind of the event a `policy.violation` repeats (the engine writes
/// one after each denied exec, connect, socket, tamper or `max_processes`
/// fork, a copy of it), `None` for any other event and for a violation
/// that stands alone (`max_depth`). OCSF writes a denial once: where that
/// event is written too, the violation is left out.
#[must_use]
pub fn repeats(event: &Event) -> Option<Kind> {
    if event.kind != Kind::PolicyViolation {
        return None;
    }
    let policy = event.policy.as_ref()?;
    match (&event.exec, &event.network, &event.tamper) {
        (Some(_), _, _) => Some(Kind::ProcessExec),
        (None, Some(n), _) => Some(match NetShape::of(Kind::PolicyViolation, n) {
            NetShape::Socket => Kind::NetworkSocket,
            _ => Kind::NetworkConnect,
        }),
        (None, None, Some(t)) => Some(match t.method {
            "ptrace" | "process_vm_writev" | "pidfd_getfd" | "proc_mem" => Kind::ProcessTamper,
            _ => Kind::SensorTamper,
        }),
        (None, None, None) => policy
            .rule
            .starts_with("max_processes")
            .then_some(Kind::ProcessSpawn),
    }
}

/// Authorize Session of a `token.issued`: the run (the session) got a
/// token (its credential) that grants its scopes (the privileges).
fn token_issued<'a>(event: &'a Event, t: &'a TokenIssued, p: Option<&'a Process>) -> Draft<'a> {
    let mut m = Draft::new(Class::AuthorizeSession, 1, "Assign Privileges");
    m.status = Some(Status::Success);
    let run = event.run.as_ref();
    m.privileges = Some(&t.scopes);
    m.user = Some(match (run.and_then(|r| text(&r.principal)), p) {
        (Some(principal), _) => User {
            name: Some(principal),
            uid: None,
        },
        (None, Some(p)) => User {
            name: None,
            uid: Some(p.uid.to_string()),
        },
        (None, None) => User {
            name: Some("unknown"),
            uid: None,
        },
    });
    m.session = Some(Session {
        uid: run.and_then(|r| text(&r.id)),
        issuer: text(&t.iss),
        credential_uid: text(&t.jti),
        created_time: Some(ms(t.iat)),
        expiration_time: Some(ms(t.exp)),
        expiration_reason: None,
    });
    m.actor_process = acting(p);
    let id = run.and_then(|r| text(&r.id)).unwrap_or("?");
    let agent = run.and_then(|r| text(&r.agent)).unwrap_or("?");
    let scopes = if t.scopes.is_empty() {
        "none".to_owned()
    } else {
        t.scopes.join(", ")
    };
    m.message = Some(format!(
        "run token {} issued to agent run {id} ({agent}) for audience {}, expires {}; scopes: \
         {scopes}",
        t.jti,
        t.aud,
        rfc3339(t.exp.0)
    ));
    m
}

/// The common attributes (captions, metadata, device, actor, unmapped)
/// around what `d` decided.
fn finish<'a>(d: Draft<'a>, event: &'a Event, time_ms: i64) -> OcsfEvent<'a> {
    let class_uid = d.class.uid();
    let (category_uid, category_name) = d.class.category();
    let caption = if d.activity_id == 99 {
        "Other"
    } else {
        d.activity_name
    };
    let host_name = text(&event.host.name).unwrap_or("unknown");
    // A finding's status is its review state, set by the consumer.
    let status = d.status.filter(|_| d.class != Class::Finding);
    let (src_endpoint, dst_endpoint, traffic, connection_info) = match d.network {
        Some((n, shape)) => network_objects(n, shape, host_name),
        None => (None, None, None, None),
    };
    let security = d.security.map(Security::ids);
    let run = event.run.as_ref();
    OcsfEvent {
        class_uid,
        class_name: d.class.name(),
        category_uid,
        category_name,
        activity_id: d.activity_id,
        activity_name: d.activity_name,
        type_uid: class_uid * 100 + d.activity_id,
        type_name: format!("{}: {caption}", d.class.name()),
        time: time_ms,
        severity_id: d.severity as u8,
        severity: d.severity.caption(),
        status_id: status.map(|s| s as u8),
        status: status.map(Status::caption),
        status_code: d.status_code,
        status_detail: d.status_detail,
        message: d.message,
        launch_type_id: d.launch_type.map(|(id, _)| id),
        launch_type: d.launch_type.map(|(_, caption)| caption),
        exit_code: d.exit_code,
        count: d.count,
        start_time: d.start_time,
        end_time: d.end_time,
        duration: d.duration,
        app: d.app_name.map(|name| App { name }),
        injection_type_id: d.injection.map(|_| 99),
        injection_type: d.injection,
        process: d.process,
        actor: actor(d.actor_process, run),
        privileges: d.privileges,
        user: d.user,
        session: d.session,
        src_endpoint,
        dst_endpoint,
        traffic,
        connection_info,
        policy: event.policy.as_ref().map(|p| Policy {
            name: text(&p.name).unwrap_or("unnamed"),
            version: p.version.to_string(),
            data: PolicyData {
                verdict: p.verdict,
                rule: &p.rule,
                enforced: p.enforced,
            },
        }),
        action_id: security.map(|s| s.0),
        action: security.map(|s| s.1),
        disposition_id: security.map(|s| s.2),
        disposition: security.map(|s| s.3),
        is_alert: (security.is_some() || d.is_alert).then_some(d.is_alert),
        finding_info: d.finding.map(|(uid, title, desc)| FindingInfo {
            uid,
            title,
            desc,
            types: [event.kind],
        }),
        metadata: Metadata {
            version: OCSF_VERSION,
            product: Product {
                name: "sensor",
                vendor_name: "sensor",
                version: env!("CARGO_PKG_VERSION"),
            },
            profiles: if event.policy.is_some() {
                &["host", "security_control"]
            } else {
                &["host"]
            },
            log_version: event.schema,
            event_code: event.kind,
            sequence: event.seq,
            original_time: rfc3339(event.time.0).to_string(),
            correlation_uid: run.and_then(|r| text(&r.root_id)),
        },
        device: Device {
            hostname: host_name,
            boot_uid: text(&event.host.boot_id),
            type_id: 0,
            type_: "Unknown",
        },
        unmapped: unmapped(event, d.exec_mapped, d.network.map(|(_, shape)| shape)),
    }
}

/// `actor`: the acting process and the agent run; `None` when there is
/// neither.
fn actor<'a>(process: Option<ProcessObj<'a>>, run: Option<&'a RunRef>) -> Option<Actor<'a>> {
    let details = run.and_then(|r| r.details.as_ref());
    let session = Session {
        uid: run.and_then(|r| text(&r.id)),
        issuer: None,
        credential_uid: None,
        created_time: details.map(|d| ms(d.start)),
        expiration_time: details.and_then(|d| d.expires).map(ms),
        expiration_reason: details.and_then(|d| opt_text(d.end_reason.as_ref())),
    };
    let has_session = session.uid.is_some()
        || session.created_time.is_some()
        || session.expiration_time.is_some()
        || session.expiration_reason.is_some();
    let user = User {
        name: run.and_then(|r| text(&r.principal)),
        uid: details.map(|d| d.uid.to_string()),
    };
    let has_user = user.name.is_some() || user.uid.is_some();
    let app_name = run.and_then(|r| text(&r.agent));
    if process.is_none() && !has_session && !has_user && app_name.is_none() {
        return None;
    }
    Some(Actor {
        process,
        session: has_session.then_some(session),
        user: has_user.then_some(user),
        app_name,
    })
}

type NetworkObjects<'a> = (
    Option<Endpoint<'a>>,
    Option<Endpoint<'a>>,
    Option<Traffic>,
    Option<ConnectionInfo<'a>>,
);

/// (`src_endpoint`, `dst_endpoint`, `traffic`, `connection_info`) of a
/// network event on host `host`.
fn network_objects<'a>(n: &'a Network, shape: NetShape, host: &'a str) -> NetworkObjects<'a> {
    let ip_end = |ip: Option<std::net::IpAddr>, port: Option<u16>| {
        ip.map(|ip| Endpoint {
            ip: Some(ip),
            port,
            ..Endpoint::default()
        })
    };
    let (mut src, dst) = match shape {
        NetShape::Connect | NetShape::Traffic => (None, ip_end(n.dst_ip, n.dst_port)),
        // A socket path (or @name) has no OCSF attribute of its own: the
        // endpoint's name.
        NetShape::Unix => (
            None,
            opt_text(n.path.as_ref()).map(|path| Endpoint {
                name: Some(path),
                ..Endpoint::default()
            }),
        ),
        NetShape::Listen => (None, ip_end(n.local_ip, n.local_port)),
        NetShape::Accept => (
            ip_end(n.src_ip, n.src_port),
            ip_end(n.local_ip, n.local_port),
        ),
        NetShape::Socket => (None, None),
    };
    if src.is_none() && dst.is_none() {
        // OCSF wants one endpoint at least: a raw socket has no peer, its
        // end is this host.
        src = Some(Endpoint {
            hostname: Some(host),
            ..Endpoint::default()
        });
    }
    let traffic = n
        .sends
        .filter(|_| shape == NetShape::Traffic)
        .map(|packets_out| Traffic { packets_out });
    let (direction_id, direction) = shape.direction();
    let transport = text(n.transport).filter(|_| shape != NetShape::Unix);
    let ver = protocol_ver(n.family);
    let info = ConnectionInfo {
        direction_id,
        direction,
        protocol_name: transport,
        protocol_num: transport.and_then(|t| protocol_num(t, n.family)),
        protocol_ver_id: ver.map(|(id, _)| id),
        protocol_ver: ver.map(|(_, caption)| caption),
    };
    (src, dst, traffic, Some(info))
}

/// `unmapped`: kind, seq, run, policy, lost, what of `process`, `exec` and
/// `network` has no OCSF place, and the sensor objects no class maps.
fn unmapped(event: &Event, exec_mapped: bool, shape: Option<NetShape>) -> Unmapped<'_> {
    // Every field is named (no `..`): a new event field fails to compile
    // until it is mapped or sent to `unmapped`.
    let Event {
        schema: _,
        seq,
        time: _,
        host: _,
        kind,
        run,
        process,
        exec,
        network,
        lost,
        degraded,
        tamper,
        policy,
        gap,
        delivery,
        blind,
        token,
    } = event;
    Unmapped {
        kind: *kind,
        seq: *seq,
        run: run.as_ref().map(Sorted),
        policy: policy.as_ref().map(Sorted),
        lost: lost.as_ref().map(Sorted),
        process: process.as_ref().map(process_rest),
        exec: exec.as_ref().map(|x| {
            if exec_mapped {
                RestOr::Rest(exec_rest(x))
            } else {
                RestOr::Whole(Sorted(x))
            }
        }),
        network: network.as_ref().and_then(|n| match shape {
            Some(shape) => Some(network_rest(n, shape))
                .filter(|r| *r != NetworkRest::default())
                .map(RestOr::Rest),
            None => Some(RestOr::Whole(Sorted(n))),
        }),
        blind: blind.as_ref().map(Sorted),
        degraded: degraded.as_ref().map(Sorted),
        delivery: *delivery,
        gap: gap.as_ref().map(Sorted),
        tamper: tamper.as_ref().map(Sorted),
        token: token.as_ref().map(Sorted),
    }
}

/// The `process` fields with no OCSF place.
fn process_rest(p: &Process) -> ProcessRest<'_> {
    let Process {
        key: _,
        pid: _,
        ns_pid,
        tid: _,
        ppid: _,
        parent_key: _,
        uid: _,
        gid,
        comm: _,
        exe: _,
        exe_b64,
        exe_truncated,
        argv,
        argv_b64,
        argc,
        argv_truncated,
        argv_len,
        cwd: _,
        exit_code: _,
        exit_signal,
        core_dumped,
        parent_exe: _,
    } = p;
    ProcessRest {
        argc: *argc,
        argv: argv.as_deref(),
        argv_b64: argv_b64.as_deref(),
        argv_len: *argv_len,
        argv_truncated: *argv_truncated,
        core_dumped: *core_dumped,
        exe_b64: exe_b64.as_deref(),
        exe_truncated: *exe_truncated,
        exit_signal: *exit_signal,
        gid: *gid,
        ns_pid: *ns_pid,
    }
}

/// The `exec` fields with no place in Process Activity.
fn exec_rest(x: &Exec) -> ExecRest<'_> {
    let Exec {
        filename,
        result: _,
        errno,
        error: _,
        old_tid: _,
        inode,
        dev,
        dev_raw: _,
        mnt_id: _,
    } = x;
    ExecRest {
        dev: dev.as_deref(),
        errno: *errno,
        filename,
        inode: *inode,
    }
}

/// The `network` fields with no place in Network Activity of `shape`.
fn network_rest(n: &Network, shape: NetShape) -> NetworkRest<'_> {
    let Network {
        transport,
        family,
        dst_ip,
        dst_port,
        path,
        abstract_name,
        peer_path,
        local_ip,
        local_port,
        src_ip,
        src_port,
        sends,
        result: _,
        errno,
        error: _,
        via,
    } = n;
    let mut rest = NetworkRest {
        abstract_name: *abstract_name,
        dst_ip: *dst_ip,
        dst_port: *dst_port,
        errno: *errno,
        family: Some(family),
        local_ip: *local_ip,
        local_port: *local_port,
        path: path.as_deref(),
        peer_path: peer_path.as_deref(),
        sends: *sends,
        src_ip: *src_ip,
        src_port: *src_port,
        transport: Some(transport),
        via: *via,
    };
    // What each shape maps (`result` and `error` always are).
    let ip = |r: &mut NetworkRest<'_>| {
        r.transport = None;
        r.family = None;
    };
    match shape {
        NetShape::Connect | NetShape::Traffic => {
            ip(&mut rest);
            rest.dst_ip = None;
            rest.dst_port = None;
            if shape == NetShape::Traffic {
                rest.sends = None;
            }
        }
        NetShape::Unix => rest.path = None,
        NetShape::Listen | NetShape::Accept => {
            ip(&mut rest);
            rest.local_ip = None;
            rest.local_port = None;
            if shape == NetShape::Accept {
                rest.src_ip = None;
                rest.src_port = None;
            }
        }
        NetShape::Socket => ip(&mut rest),
    }
    rest
}

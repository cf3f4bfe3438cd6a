//! From the typed [`Event`] to its [`OcsfEvent`]: which class, activity,
//! status and severity, and which objects, decided by field accesses on the
//! event (a renamed or retyped event field fails to compile here).
//!
//! - this file: the dispatch by kind ([`map`]), the [`Draft`] each class
//!   fills, the policy verdict, and the attributes every event has;
//! - [`process`]: Process Activity (spawn, exec, exit, process tamper) and
//!   the OCSF `process` object;
//! - [`network`]: Network Activity and its endpoints;
//! - [`sensor`]: runs (Application Lifecycle), run tokens (Authorize
//!   Session), sensor findings and the Base Events;
//! - [`unmapped`]: what has no OCSF place.

mod network;
mod process;
mod sensor;
mod unmapped;

use std::borrow::Cow;

use self::{
    network::{network_activity, network_objects},
    process::{process_activity, process_tamper},
    sensor::{base, blind, degraded, detection, gap, run_lifecycle, sensor_tamper, token_issued},
    unmapped::unmapped,
};
use super::{
    OCSF_VERSION,
    classes::{Class, NetShape, Security, Severity, Status},
    objects::{
        Actor, App, Device, FindingInfo, Metadata, OcsfEvent, Policy, PolicyData, ProcessObj,
        Product, Session, User,
    },
};
use crate::event::{Decision, Event, Kind, Network, RunRef, Timestamp, Verdict, rfc3339};

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
        (Kind::Detection, _, _, _) if let Some(x) = &event.detection => detection(event, x),
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
            analytic: event.detection.as_deref().map(sensor::analytic),
            attacks: event
                .detection
                .as_ref()
                .map(|x| sensor::attacks(&x.tags))
                .filter(|a| !a.is_empty()),
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

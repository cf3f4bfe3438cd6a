//! Runs (Application Lifecycle 6002), run tokens (Authorize Session 3003),
//! what the sensor found (Detection Finding 2004) and the Base Events.

use std::borrow::Cow;

use super::{
    Draft, ms, opt_text,
    process::{acting, who},
    text,
};
use crate::{
    event::{Detection, Event, Kind, Process, RunRef, Tamper, TokenIssued, rfc3339},
    sinks::format::ocsf::{
        classes::{Class, Severity, Status},
        objects::{Analytic, Attack, AttackRef, Session, User},
    },
};

/// Application Lifecycle of run.start / run.end.
pub(super) fn run_lifecycle<'a>(
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
pub(super) fn sensor_tamper<'a>(
    event: &'a Event,
    t: &'a Tamper,
    p: Option<&'a Process>,
) -> Draft<'a> {
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
pub(super) fn degraded(event: &Event) -> Draft<'_> {
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
pub(super) fn gap(event: &Event) -> Draft<'_> {
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
pub(super) fn blind(event: &Event) -> Draft<'_> {
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

/// Detection Finding of a `detection` (a Sigma rule matched an event):
/// `finding_info` {uid = boot id + seq, title = the rule's title, desc =
/// the rule's file}; severity from the rule's level, an alert from `low`
/// up; the detection whole in `unmapped`.
pub(super) fn detection<'a>(event: &'a Event, d: &'a Detection) -> Draft<'a> {
    let mut m = Draft::new(Class::Finding, 1, "Create");
    let boot = text(&event.host.boot_id).unwrap_or("unknown");
    let uid = format!("{boot}:{}", event.seq);
    m.message = Some(format!(
        "{} (rule {}, {} {})",
        d.title,
        d.rule_id,
        d.event_kind.as_str(),
        d.event_seq
    ));
    m.finding = Some((uid, d.title.clone(), text(&d.rule_file)));
    m.severity = match d.level {
        "informational" => Severity::Informational,
        "low" => Severity::Low,
        "high" => Severity::High,
        "critical" => Severity::Critical,
        _ => Severity::Medium,
    };
    m.is_alert = d.level != "informational";
    m
}

/// `finding_info.analytic` of a `detection`: its rule (id, title), type Rule.
pub(super) fn analytic(d: &Detection) -> Analytic<'_> {
    Analytic {
        uid: &d.rule_id,
        name: &d.title,
        type_id: 1,
        type_name: "Rule",
    }
}

/// ATT&CK tactics by their Sigma tag name: uid, name.
const TACTICS: &[(&str, &str, &str)] = &[
    ("reconnaissance", "TA0043", "Reconnaissance"),
    ("resource-development", "TA0042", "Resource Development"),
    ("initial-access", "TA0001", "Initial Access"),
    ("execution", "TA0002", "Execution"),
    ("persistence", "TA0003", "Persistence"),
    ("privilege-escalation", "TA0004", "Privilege Escalation"),
    ("defense-evasion", "TA0005", "Defense Evasion"),
    ("credential-access", "TA0006", "Credential Access"),
    ("discovery", "TA0007", "Discovery"),
    ("lateral-movement", "TA0008", "Lateral Movement"),
    ("collection", "TA0009", "Collection"),
    ("command-and-control", "TA0011", "Command and Control"),
    ("exfiltration", "TA0010", "Exfiltration"),
    ("impact", "TA0040", "Impact"),
];

/// `finding_info.attacks` of a rule's tags (`attack.t1552.004`,
/// `attack.credential-access`; others are left out): one per technique
/// (its sub-technique with it), with the rule's tactic when it names
/// exactly one; when it names several, one per tactic besides (Sigma does
/// not say which technique goes with which tactic).
pub(super) fn attacks(tags: &[String]) -> Vec<Attack> {
    let mut tactics = Vec::new();
    let mut techniques: Vec<(AttackRef, Option<AttackRef>)> = Vec::new();
    for tag in tags {
        let Some(rest) = tag
            .to_ascii_lowercase()
            .strip_prefix("attack.")
            .map(str::to_owned)
        else {
            continue;
        };
        if let Some(&(_, uid, name)) = TACTICS.iter().find(|(t, _, _)| *t == rest) {
            let r = AttackRef {
                uid: uid.to_owned(),
                name: Some(name),
            };
            if !tactics.contains(&r) {
                tactics.push(r);
            }
            continue;
        }
        let digits = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_digit());
        let Some(t) = rest.strip_prefix('t') else {
            continue;
        };
        let (main, sub) = match t.split_once('.') {
            Some((m, s)) => (m, Some(s)),
            None => (t, None),
        };
        if !digits(main, 4) || sub.is_some_and(|s| !digits(s, 3)) {
            continue;
        }
        let technique = AttackRef {
            uid: format!("T{main}"),
            name: None,
        };
        let sub = sub.map(|s| AttackRef {
            uid: format!("T{main}.{s}"),
            name: None,
        });
        if !techniques.iter().any(|(t, s)| *t == technique && *s == sub) {
            techniques.push((technique, sub));
        }
    }
    let one_tactic = (tactics.len() == 1).then(|| tactics[0].clone());
    let mut out: Vec<Attack> = techniques
        .into_iter()
        .map(|(technique, sub_technique)| Attack {
            tactic: one_tactic.clone(),
            technique: Some(technique),
            sub_technique,
        })
        .collect();
    if one_tactic.is_none() || out.is_empty() {
        out.extend(tactics.into_iter().map(|t| Attack {
            tactic: Some(t),
            technique: None,
            sub_technique: None,
        }));
    }
    out
}

/// Base Event: `sensor.lost`, and the kinds this mapping has no class for.
pub(super) fn base<'a>(event: &'a Event, p: Option<&'a Process>) -> Draft<'a> {
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

/// Authorize Session of a `token.issued`: the run (the session) got a
/// token (its credential) that grants its scopes (the privileges).
pub(super) fn token_issued<'a>(
    event: &'a Event,
    t: &'a TokenIssued,
    p: Option<&'a Process>,
) -> Draft<'a> {
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

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_rules_attack_tags_become_attacks() {
        let tags = |t: &[&str]| t.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let j = |t: &[&str]| serde_json::to_value(attacks(&tags(t))).unwrap();
        // One tactic: with each technique.
        assert_eq!(
            j(&[
                "attack.credential-access",
                "attack.t1552.005",
                "attack.T1078",
                "cve.2024-1"
            ]),
            json!([
                {"tactic": {"uid": "TA0006", "name": "Credential Access"}, "technique": {"uid": "T1552"}, "sub_technique": {"uid": "T1552.005"}},
                {"tactic": {"uid": "TA0006", "name": "Credential Access"}, "technique": {"uid": "T1078"}}
            ])
        );
        // Several: techniques alone, and each tactic.
        assert_eq!(
            j(&["attack.defense-evasion", "attack.impact", "attack.t1489"]),
            json!([
                {"technique": {"uid": "T1489"}},
                {"tactic": {"uid": "TA0005", "name": "Defense Evasion"}},
                {"tactic": {"uid": "TA0040", "name": "Impact"}}
            ])
        );
        // Not ATT&CK, or not a technique id: nothing.
        assert!(
            attacks(&tags(&[
                "attack.t12",
                "attack.t1234.5",
                "attack.g0001",
                "x"
            ]))
            .is_empty()
        );
    }
}

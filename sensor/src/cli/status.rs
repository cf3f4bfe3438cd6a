//! `sensor status`.

use std::process::ExitCode;

use anyhow::Context as _;

use super::{
    args::StatusArgs,
    display::{Column, escape_terminal, text_table},
};
use crate::control::{
    self,
    protocol::{Request, Response},
};

pub fn execute(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let response = match control::request(&args.socket, &Request::Status) {
        Ok(r) => r,
        Err(e) => return down(args, e),
    };
    let Response::Status(report) = response else {
        anyhow::bail!("unexpected response from the daemon");
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the status")?
        );
    } else {
        // Output specs, error strings and the version come from the daemon
        // (an error string may quote what a remote server said): each line is
        // escaped whole (the programs' table, cell by cell); its fixed text
        // has nothing to escape.
        let mut lines = vec![format!(
            "{} (pid {}, up {}s, version {}{})",
            if report.ready { "ready" } else { "not ready" },
            report.pid,
            report.uptime_ms / 1000,
            report.version,
            if report.git.is_empty() {
                String::new()
            } else {
                format!(", git {}", report.git)
            }
        )];
        if let Some(reason) = &report.reason {
            lines.push(format!("why not ready: {reason}"));
        }
        let standby = report.programs.iter().filter(|p| p.standby).count();
        lines.extend([format!(
            "programs attached: {} of {}{}, pinned: {}",
            report.programs.iter().filter(|p| p.attached).count(),
            report.programs.len() - standby,
            if standby > 0 {
                format!(" ({standby} more on standby: they act in runs only, and attach before a process is put in one)")
            } else {
                String::new()
            },
            report.programs.iter().filter(|p| p.pinned).count()
        )]);
        // The programs, one a line (a table; its cells escaped one by one).
        let rows = report
            .programs
            .iter()
            .map(|p| {
                let state = if p.standby {
                    "standby (no process in a run)".to_owned()
                } else {
                    format!(
                        "{}, {}",
                        if p.attached {
                            "attached"
                        } else {
                            "NOT attached"
                        },
                        if p.pinned {
                            "pinned"
                        } else {
                            "not pinned (detaches with the daemon)"
                        }
                    )
                };
                vec![
                    escape_terminal(&p.name).into_owned(),
                    "program".to_owned(),
                    p.id.to_string(),
                    "link".to_owned(),
                    p.link_id.map_or_else(|| "-".to_owned(), |l| l.to_string()),
                    state,
                ]
            })
            .collect();
        let columns = [
            Column::left(16).gap(1),
            Column::left(0).gap(1),
            Column::left(6).gap(1),
            Column::left(0).gap(1),
            Column::left(6).gap(1),
            Column::left(0),
        ];
        // What enforces comes first, the program table last: a glance at
        // the top says whether it is ready, attached and enforcing what.
        let mut shown: Vec<String> = lines
            .drain(..)
            .map(|l| escape_terminal(&l).into_owned())
            .collect();
        shown.extend(enforcing(&report, &args.socket));
        // The kinds seen (every kind, zeros too, is in --json).
        let events: Vec<String> = report
            .events
            .iter()
            .filter(|(k, v)| k.as_str() != "total" && **v > 0)
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let total = report.events.get("total").copied().unwrap_or(0);
        lines.push(if events.is_empty() {
            format!("events: {total}")
        } else {
            format!("events: {total} ({})", events.join(" "))
        });
        lines.push(format!("lost in the kernel: {}", report.lost.total));
        let canary = &report.canary;
        lines.push(if canary.interval_secs == 0 {
            "canary: off ([daemon] canary_interval_secs = 0)".to_owned()
        } else {
            format!(
                "canary: every {} s, {} rounds seen, {} failed",
                canary.interval_secs, canary.rounds_ok, canary.rounds_failed
            )
        });
        lines.push(format!("active runs: {}", report.runs_active));
        if report.kernel_inherit_failed > 0 {
            lines.push(format!(
                "processes outside their run (kernel map full): {}",
                report.kernel_inherit_failed
            ));
        }
        if report.decode_errors > 0 {
            lines.push(format!("undecodable records: {}", report.decode_errors));
        }
        if report.reader_holds > 0 {
            lines.push(format!(
                "reader held back {} times (an output or the store behind; the records waited in the ring)",
                report.reader_holds
            ));
        }
        lines.push(format!(
            "denials: {} blocked, {} would have been blocked (audit)",
            report.denials_blocked, report.denials_audit
        ));
        lines.push(format!(
            "refused: {} launches, {} connections; held back: {} denial records; degraded runs: {}",
            report.launches_refused,
            report.connections_refused,
            report.denials_suppressed,
            report.runs_degraded
        ));
        if report.tamper.total > 0 {
            let by: Vec<String> = report
                .tamper
                .by_what
                .iter()
                .map(|(k, v)| format!("{k}: {v}"))
                .collect();
            lines.push(format!(
                "tampering found and reported (sensor.tamper): {} ({})",
                report.tamper.total,
                by.join(", ")
            ));
        }
        lines.push(format!(
            "policy maps compared: {} times; bpf(2) calls by other processes that can change a \
             map: {}",
            report.tamper.policy_map_checks, report.tamper.foreign_bpf_calls
        ));
        if let Some(fw) = &report.file_watch {
            lines.push(if fw.watching {
                format!(
                    "file watch: {} directories{}; changes reported {}, counted (rate limit) {}, \
                     lost {}",
                    fw.dirs,
                    if fw.actors == "hidden" {
                        ", processes NOT known (no CAP_SYS_ADMIN)"
                    } else {
                        ""
                    },
                    fw.reported,
                    fw.suppressed,
                    fw.overflows + fw.dropped
                )
            } else {
                format!(
                    "file watch: NOT running ({})",
                    fw.error.as_deref().unwrap_or("stopped")
                )
            });
        }
        if report.panics > 0 {
            lines.push(format!(
                "panics caught (bugs; see the daemon's log): {}",
                report.panics
            ));
        }
        for o in &report.outputs {
            let mut line = format!(
                "output {} ({}, {}): {}, sent {} dropped {} failed {}",
                o.name, o.spec, o.format, o.state, o.sent, o.dropped, o.failed
            );
            if o.spooled > 0 || o.spool_bytes > 0 {
                line.push_str(&format!(
                    ", spooled {} ({} KiB)",
                    o.spooled,
                    o.spool_bytes / 1024
                ));
            }
            if let Some(e) = o.last_error.as_deref().filter(|_| o.state != "ok") {
                line.push_str(&format!(", last error: {e}"));
            }
            lines.push(line);
        }
        shown.extend(lines.iter().map(|l| escape_terminal(l).into_owned()));
        shown.push("programs:".to_owned());
        shown.extend(
            text_table(&columns, None, rows)
                .into_iter()
                .map(|l| format!("  {l}")),
        );
        for line in &shown {
            println!("{line}");
        }
    }
    Ok(if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What is enforcing, and where the daemon's files are: the socket asked,
/// the config, the pin dir and what is pinned in it, the database, each
/// policy with its mode, version and runs, the agent matchers, the reloads.
/// Each line is escaped (paths and names come from the daemon).
fn enforcing(report: &crate::status::StatusReport, socket: &std::path::Path) -> Vec<String> {
    let mut lines = Vec::new();
    let shown = |s: &str| escape_terminal(s).into_owned();
    lines.push(shown(&format!(
        "socket: {}{}",
        socket.display(),
        report
            .paths
            .as_ref()
            .and_then(|p| p.config.as_deref())
            .map_or_else(String::new, |c| format!(", config: {c}"))
    )));
    if let Some(p) = &report.paths {
        let links = report.programs.iter().filter(|p| p.pinned).count();
        lines.push(shown(&format!(
            "pin dir: {}: {} of {} maps pinned, {} of {} program links pinned{}",
            p.pin_dir,
            p.maps_pinned.len(),
            p.maps_expected,
            links,
            report.programs.iter().filter(|p| !p.standby).count(),
            if links > 0 && !p.maps_pinned.is_empty() {
                " (they stay attached and enforcing while the daemon is down)"
            } else {
                ""
            }
        )));
    }
    lines.push(match &report.store {
        Some(s) if !s.path.is_empty() => shown(&format!(
            "database: {} (events written {}, dropped {}, failed {})",
            s.path, s.written, s.dropped, s.failed
        )),
        Some(s) => format!(
            "database: (path shown to root) events written {}, dropped {}, failed {}",
            s.written, s.dropped, s.failed
        ),
        None => "database: none (no store)".to_owned(),
    });
    let policies = &report.policies;
    if policies.policies.is_empty() {
        lines.push(format!(
            "policies: version {}, {}",
            policies.version,
            if policies.hidden {
                "shown to root only"
            } else {
                "none"
            }
        ));
    } else {
        lines.push(format!(
            "policies: version {}, {}",
            policies.version,
            super::display::count(policies.policies.len(), "policy", "policies")
        ));
        let rows = policies
            .policies
            .iter()
            .map(|p| {
                vec![
                    shown(&p.name),
                    shown(&p.mode),
                    format!("v{}", p.version),
                    super::display::count(
                        usize::try_from(p.runs_active).unwrap_or(usize::MAX),
                        "run",
                        "runs",
                    ),
                    match (p.slot, p.id) {
                        (Some(slot), Some(id)) => format!("kernel slot {slot} id {id}"),
                        _ => "not in the kernel".to_owned(),
                    },
                ]
            })
            .collect();
        let columns = [
            Column::left(16).gap(1),
            Column::left(7).gap(1),
            Column::left(4).gap(1),
            Column::left(8).gap(1),
            Column::left(0),
        ];
        lines.extend(
            text_table(
                &columns,
                Some(&["NAME", "MODE", "VER", "RUNS", "KERNEL"]),
                rows,
            )
            .into_iter()
            .map(|l| format!("  {l}")),
        );
    }
    lines.push(if policies.hidden {
        "agent matchers: shown to root only".to_owned()
    } else if report.agents.is_empty() {
        "agent matchers: none".to_owned()
    } else {
        shown(&format!("agent matchers: {}", report.agents.join(", ")))
    });
    let r = &report.reloads;
    let mut reloads = format!("reloads: {} applied, {} refused", r.ok, r.refused);
    if let Some(last) = &r.last {
        reloads.push_str(&format!(
            "; last {} at {}{}",
            if last.ok { "applied" } else { "REFUSED" },
            crate::event::rfc3339(
                std::time::UNIX_EPOCH + std::time::Duration::from_millis(last.at_ms)
            ),
            last.error
                .as_deref()
                .map_or_else(String::new, |e| format!(": {e}"))
        ));
    }
    lines.push(shown(&reloads));
    lines
}

/// No daemon answers: say why, then what its pin dir still holds (what stays
/// attached and enforcing without it). Exit 1 (not ready) either way.
fn down(args: &StatusArgs, error: control::ControlError) -> anyhow::Result<ExitCode> {
    let state = if matches!(error, control::ControlError::Connect { .. }) {
        "not running"
    } else {
        "not answering"
    };
    let reason = format!("{:#}", anyhow::Error::new(error));
    let pinned = crate::loader::pinned::inspect(&args.pin_dir);
    // What the slots' policy ids stood for: the daemon kept it in its
    // state dir (policy_ids.json).
    let ids =
        crate::policy::kernel::IdNames::open(args.state_dir.join(crate::paths::POLICY_IDS_FILE));
    let named = |id: u32| ids.get(id).map(|n| (n.name.as_str(), n.version));
    if args.json {
        let policies: Vec<serde_json::Value> = pinned
            .as_ref()
            .map(|p| {
                p.policies
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "slot": s.slot,
                            "id": s.id,
                            "mode": s.mode,
                            "name": named(s.id).map(|(n, _)| n),
                            "version": named(s.id).map(|(_, v)| v),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        let value = serde_json::json!({
            "ready": false,
            "reachable": false,
            "error": reason,
            "socket": args.socket,
            "pin_dir": args.pin_dir,
            "pinned": pinned,
            "policies": policies,
        });
        println!(
            "{}",
            serde_json::to_string(&value).context("encoding the status")?
        );
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("sensor: {}", super::display::escape_message(&reason));
    println!(
        "{}",
        escape_terminal(&format!("socket: {}", args.socket.display()))
    );
    let dir = args.pin_dir.display().to_string();
    let Some(p) = pinned else {
        println!("{state}; nothing pinned at {dir}");
        return Ok(ExitCode::FAILURE);
    };
    let mut lines = vec![match &p.owner {
        Some(o) => format!(
            "{state}; pin dir {dir} (last owner: {}, {})",
            o.owner.describe(),
            if o.alive {
                "ALIVE but not answering on this socket"
            } else {
                "gone"
            }
        ),
        None => format!("{state}; pin dir {dir} (no owner record)"),
    }];
    let attached: Vec<&str> = p
        .links
        .iter()
        .filter(|l| l.attached)
        .map(|l| l.name.as_str())
        .collect();
    lines.push(format!(
        "program links: {} pinned, {} attached{}",
        p.links.len(),
        attached.len(),
        if attached.is_empty() {
            String::new()
        } else {
            format!(": {}", attached.join(" "))
        }
    ));
    for l in p.links.iter().filter(|l| !l.attached) {
        lines.push(format!("  {} NOT attached (link {:?})", l.name, l.link_id));
    }
    lines.push(format!(
        "maps pinned: {} of {}{}",
        p.maps.len(),
        sensor_common::maps::PINNED.len(),
        if p.maps.is_empty() {
            String::new()
        } else {
            format!(" ({})", p.maps.join(" "))
        }
    ));
    if p.policies.is_empty() {
        lines.push("policy slots: none in use".to_owned());
    }
    for s in &p.policies {
        lines.push(format!(
            "policy slot {}: {}{} (id {}{})",
            s.slot,
            match named(s.id) {
                Some((name, version)) => format!("{name} v{version}, "),
                None => format!(
                    "(name unknown: no policy_ids.json in {}), ",
                    args.state_dir.display()
                ),
            },
            s.mode,
            s.id,
            if s.max_processes > 0 {
                format!(", max_processes {}", s.max_processes)
            } else {
                String::new()
            }
        ));
    }
    match p.runs_bound {
        Some(n) => lines.push(format!("runs bound to a policy: {n}")),
        None => lines.push("runs bound to a policy: unknown (map unreadable)".to_owned()),
    }
    lines.push(if p.enforcing {
        "still enforcing: the pinned programs block what the enforce slots deny, for the runs \
         bound to them (`sensor unload` removes them)"
            .to_owned()
    } else if attached.is_empty() {
        "nothing attached: nothing is enforced or watched until the daemon is back".to_owned()
    } else {
        "programs attached, but no policy slot enforces".to_owned()
    });
    for line in &lines {
        println!("{}", escape_terminal(line));
    }
    Ok(ExitCode::FAILURE)
}

//! `sensor policy suggest` and `sensor policy test`: learn a policy from
//! stored runs, and replay stored runs against a policy.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::UNIX_EPOCH,
};

use anyhow::Context as _;

use super::{
    args::{DbArgs, RunSelect},
    display::escape_terminal,
};
use crate::{
    policy::suggest,
    store::{
        open_for_reading,
        query::{self, EventFilter, StoredEvent},
    },
};

/// The stored events of the runs `select` names.
struct Selected {
    events: Vec<StoredEvent>,
    /// Depth of the run asked for (or the agent's shallowest run).
    base_depth: u32,
    agent: String,
    /// `run R` or `agent A since T`, for the output.
    source: String,
}

fn select(db: &Path, select: &RunSelect) -> anyhow::Result<Selected> {
    let conn = open_for_reading(db)?;
    let (runs, since_ns, base_depth, agent, source) = match (&select.run, &select.agent) {
        (Some(run), _) => {
            let run = query::find_run(&conn, run)?;
            let runs = if select.subtree {
                query::subtree(&conn, &run.id)?
                    .into_iter()
                    .map(|r| r.id)
                    .collect()
            } else {
                vec![run.id.clone()]
            };
            let source = format!(
                "run {}{}",
                run.id,
                if select.subtree {
                    " and its sub-runs"
                } else {
                    ""
                }
            );
            (runs, None, run.depth, run.agent, source)
        }
        (None, Some(agent)) => {
            let since = select.since.unwrap_or(UNIX_EPOCH);
            let since_ns = i64::try_from(
                since
                    .duration_since(UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_nanos(),
            )
            .unwrap_or(i64::MAX);
            let rows: Vec<_> = query::list_runs(&conn, false, Some(agent))?
                .into_iter()
                .filter(|r| r.end_ns.is_none_or(|end| end >= since_ns))
                .collect();
            if rows.is_empty() {
                anyhow::bail!(
                    "no run of agent {:?} in the store since {}",
                    agent,
                    humantime::format_rfc3339_seconds(since)
                );
            }
            let base = rows.iter().map(|r| r.depth).min().unwrap_or(0);
            let source = format!(
                "{} of agent {agent} since {}",
                super::display::count(rows.len(), "run", "runs"),
                humantime::format_rfc3339_seconds(since)
            );
            (
                rows.into_iter().map(|r| r.id).collect(),
                Some(since_ns),
                base,
                agent.clone(),
                source,
            )
        }
        (None, None) => anyhow::bail!("give --run RUN or --agent NAME --since T"),
    };
    let events = query::events(
        &conn,
        &EventFilter {
            runs: Some(runs),
            since_ns,
            ..EventFilter::default()
        },
    )?;
    Ok(Selected {
        events,
        base_depth,
        agent,
        source,
    })
}

/// `sensor policy suggest`.
pub fn suggest(
    sel: &RunSelect,
    name: Option<&str>,
    enforce: bool,
    (collapse_at, fold_at): (usize, usize),
    output: Option<&PathBuf>,
    db: &Path,
) -> anyhow::Result<ExitCode> {
    let selected = select(db, sel)?;
    let mut seen = suggest::Observed::new(selected.base_depth);
    for se in &selected.events {
        seen.add(&se.event);
    }
    let opts = suggest::Options {
        name: name.map_or_else(|| format!("{}-learned", selected.agent), str::to_owned),
        enforce,
        collapse_at,
        fold_at,
        source: selected.source,
    };
    let text = suggest::render(&seen, &opts, &suggest::FsCheck);
    match output {
        Some(path) => {
            std::fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "{}: policy {} ({} exec, {} connect, {} unix rules from {})",
                escape_terminal(&path.to_string_lossy()),
                escape_terminal(&opts.name),
                seen.exec.len(),
                seen.connect.len(),
                seen.unix.len(),
                super::display::count(
                    usize::try_from(seen.events).unwrap_or(usize::MAX),
                    "event",
                    "events"
                )
            );
        }
        None => print!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `sensor policy test`.
pub fn test(file: &Path, name: &str, sel: &RunSelect, db: &DbArgs) -> anyhow::Result<ExitCode> {
    let (config, policies) = crate::config::Config::load_with_policies(Some(file))?;
    let Some(policy) = policies.get(name) else {
        anyhow::bail!(
            "{} has no policy {:?} (it has: {})",
            file.display(),
            name,
            policies.names().collect::<Vec<_>>().join(", ")
        );
    };
    let selected = select(&db.db, sel)?;
    let sensors = suggest::sensor_sockets(
        policy,
        &config.daemon.socket,
        selected.events.iter().map(|se| &se.event),
    );
    let mut replay = suggest::Replay::new(policy, &sensors);
    let mut denied = 0usize;
    for se in &selected.events {
        let Some(d) = replay.event(&se.event) else {
            continue;
        };
        denied += 1;
        if db.json {
            println!(
                "{}",
                serde_json::json!({
                    "event_seq": d.seq,
                    "run_id": d.run,
                    "kind": d.kind,
                    "target": d.what,
                    "policy": d.verdict.name,
                    "rule": d.verdict.rule,
                })
            );
        } else {
            println!(
                "{:>8}  run {}  {} {}  denied: {}",
                d.seq,
                escape_terminal(&d.run),
                d.kind,
                escape_terminal(&d.what),
                escape_terminal(&d.verdict.rule)
            );
        }
    }
    let checked = replay.checked;
    if db.json {
        println!(
            "{}",
            serde_json::json!({"summary": {"denied": denied, "checked": checked, "events": selected.events.len(), "policy": name}})
        );
    } else {
        println!(
            "{denied} would be denied of {} replayed (execs, connects, forks, sub-runs, raw sockets; {}) by policy {}",
            super::display::count(checked, "decision", "decisions"),
            super::display::count(selected.events.len(), "event", "events"),
            escape_terminal(name)
        );
    }
    Ok(if denied == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

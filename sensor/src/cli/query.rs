//! The security engineer's queries: `runs`, `tree`, `events`, `who`,
//! `replay`. They read the store directly (read-only), so they work while
//! the daemon runs and after it stopped.
//!
//! Text output shows every string from the store through
//! [`escape_terminal`](super::display::escape_terminal) (a watched process
//! chose them); `--json` prints them exactly.

use std::{
    collections::{BTreeMap, HashMap},
    process::ExitCode,
    time::{Duration, UNIX_EPOCH},
};

use anyhow::Context as _;
use serde_json::{Value, json};

use super::{
    args::{EventsArgs, ReplayArgs, RunsArgs, TreeArgs, WhoArgs},
    display::{Column, argv_shown, escape_terminal, exe_shown, shown_str, shown_value, text_table},
};
use crate::store::{
    open_for_reading,
    query::{self, EventFilter, StoredEvent},
    writer::RunRow,
};

pub(super) fn time_of_ns(ns: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_nanos(u64::try_from(ns).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

fn short(id: &str) -> &str {
    id.get(..13).unwrap_or(id)
}

/// A run id from the store, escaped, then shortened.
fn short_shown(id: &str) -> String {
    short(&escape_terminal(id)).to_owned()
}

fn run_json(r: &RunRow) -> Value {
    json!({
        "id": r.id, "agent": r.agent, "principal": r.principal, "principal_claimed": r.principal_claimed,
        "uid": r.uid, "parent_id": r.parent_id, "root_id": r.root_id, "depth": r.depth, "policy": r.policy,
        "labels": serde_json::from_str::<Value>(&r.labels).unwrap_or(Value::Null),
        "started_by": r.started_by, "host": r.host,
        "start": time_of_ns(r.start_ns), "end": r.end_ns.map(time_of_ns), "end_reason": r.end_reason,
    })
}

/// Terminal width (COLUMNS, else 120).
fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w| *w >= 40)
        .unwrap_or(120)
}

/// `s` cut to `max` characters with a final '…'. `s` is text as shown
/// (escaped), so the cut counts the escapes the terminal will print.
fn fit(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

pub fn runs(args: &RunsArgs) -> anyhow::Result<ExitCode> {
    let conn = open_for_reading(&args.db.db)?;
    let runs = query::list_runs(&conn, args.active, args.agent.as_deref())?;
    if args.db.json {
        println!("{}", Value::Array(runs.iter().map(run_json).collect()));
        return Ok(ExitCode::SUCCESS);
    }
    if runs.is_empty() {
        println!("no runs");
        return Ok(ExitCode::SUCCESS);
    }
    let rows = runs
        .iter()
        .map(|r| {
            let ended = match (&r.end_ns, &r.end_reason) {
                (Some(ns), reason) => format!(
                    "{} ({})",
                    time_of_ns(*ns),
                    escape_terminal(reason.as_deref().unwrap_or(""))
                ),
                (None, _) => "active".to_owned(),
            };
            vec![
                short_shown(&r.id),
                fit(&escape_terminal(&r.agent), 20),
                fit(&escape_terminal(&r.principal), 12),
                r.depth.to_string(),
                r.parent_id
                    .as_deref()
                    .map_or_else(|| "-".to_owned(), short_shown),
                time_of_ns(r.start_ns),
                ended,
            ]
        })
        .collect();
    let columns = [
        Column::left(13),
        Column::left(20),
        Column::left(12),
        Column::right(5),
        Column::left(13),
        Column::left(23),
        Column::left(0),
    ];
    let header = [
        "RUN",
        "AGENT",
        "PRINCIPAL",
        "DEPTH",
        "PARENT",
        "STARTED",
        "ENDED",
    ];
    for line in text_table(&columns, Some(&header), rows) {
        println!("{line}");
    }
    Ok(ExitCode::SUCCESS)
}

/// A process as the events of its run describe it.
#[derive(Debug, Clone, Default)]
pub(super) struct ProcNode {
    pub key: String,
    pub pid: u64,
    pub parent_key: String,
    pub exe: String,
    pub argv: Vec<String>,
    /// `exe` and `argv` as text views show them (escaped, from the raw bytes
    /// when they are not UTF-8).
    pub exe_shown: String,
    pub argv_shown: Vec<String>,
    pub exit: Option<String>,
    pub first_id: i64,
}

fn str_of(v: &Value, ptr: &str) -> String {
    v.pointer(ptr)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
}

/// Processes of one run, from its events, in order of first appearance.
pub(super) fn processes(events: &[&StoredEvent]) -> Vec<ProcNode> {
    let mut by_key: HashMap<String, ProcNode> = HashMap::new();
    for se in events {
        let e = &se.event;
        let Some(p) = e.get("process") else { continue };
        let key = str_of(p, "/key");
        if key.is_empty() {
            continue;
        }
        let node = by_key.entry(key.clone()).or_insert_with(|| ProcNode {
            key,
            pid: p.get("pid").and_then(Value::as_u64).unwrap_or(0),
            parent_key: str_of(p, "/parent_key"),
            first_id: se.id,
            ..ProcNode::default()
        });
        if let Some(exe) = p.get("exe").and_then(Value::as_str) {
            node.exe = exe.to_owned();
            node.exe_shown = exe_shown(p).unwrap_or_default();
        }
        if e["kind"] == "process.exec"
            && e["exec"]["result"] == "ok"
            && let Some(argv) = p.get("argv").and_then(Value::as_array)
        {
            node.argv = argv
                .iter()
                .filter_map(|a| a.as_str().map(str::to_owned))
                .collect();
            node.argv_shown = argv_shown(p).unwrap_or_default();
        }
        if e["kind"] == "process.exit" {
            node.exit = Some(match (p["exit_code"].as_i64(), p["exit_signal"].as_i64()) {
                (Some(c), _) => format!("exit {c}"),
                (_, Some(s)) => format!("signal {s}"),
                _ => "exited".to_owned(),
            });
        }
    }
    let mut nodes: Vec<ProcNode> = by_key.into_values().collect();
    nodes.sort_by_key(|n| n.first_id);
    nodes
}

fn proc_json(node: &ProcNode, all: &[ProcNode]) -> Value {
    let children: Vec<Value> = all
        .iter()
        .filter(|c| c.parent_key == node.key)
        .map(|c| proc_json(c, all))
        .collect();
    json!({"key": node.key, "pid": node.pid, "exe": node.exe, "argv": node.argv, "exit": node.exit, "children": children})
}

impl ProcNode {
    /// Its command line, or its exe when no exec of it was seen, as shown
    /// (escaped).
    pub(super) fn command(&self) -> String {
        if self.argv_shown.is_empty() {
            self.exe_shown.clone()
        } else {
            self.argv_shown.join(" ")
        }
    }
}

/// Processes whose parent is not in the run: the roots of its process tree.
pub(super) fn proc_roots(all: &[ProcNode]) -> impl Iterator<Item = &ProcNode> {
    all.iter()
        .filter(|n| !all.iter().any(|p| p.key == n.parent_key))
}

fn print_procs(node: &ProcNode, all: &[ProcNode], indent: &str, max: usize) {
    let cmd = node.command();
    let exit = node
        .exit
        .as_deref()
        .map(|e| format!("  [{e}]"))
        .unwrap_or_default();
    let line = format!("{indent}└─ {} {}{exit}", node.pid, cmd);
    println!("{}", fit(&line, max));
    let deeper = format!("{indent}   ");
    for child in all.iter().filter(|c| c.parent_key == node.key) {
        print_procs(child, all, &deeper, max);
    }
}

pub fn tree(args: &TreeArgs) -> anyhow::Result<ExitCode> {
    let conn = open_for_reading(&args.db.db)?;
    let root = query::find_run(&conn, &args.run)?;
    let runs = query::subtree(&conn, &root.id)?;
    let ids: Vec<String> = runs.iter().map(|r| r.id.clone()).collect();
    let events = query::events(
        &conn,
        &EventFilter {
            runs: Some(ids),
            ..EventFilter::default()
        },
    )?;
    let mut by_run: BTreeMap<String, Vec<&StoredEvent>> = BTreeMap::new();
    for e in &events {
        if let Some(id) = e.event.pointer("/run/id").and_then(Value::as_str) {
            by_run.entry(id.to_owned()).or_default().push(e);
        }
    }
    let procs: HashMap<&str, Vec<ProcNode>> = runs
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                processes(by_run.get(&r.id).map(Vec::as_slice).unwrap_or_default()),
            )
        })
        .collect();
    if args.db.json {
        fn node(run: &RunRow, runs: &[RunRow], procs: &HashMap<&str, Vec<ProcNode>>) -> Value {
            let all = procs
                .get(run.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut v = run_json(run);
            v["processes"] = Value::Array(proc_roots(all).map(|p| proc_json(p, all)).collect());
            v["runs"] = Value::Array(
                runs.iter()
                    .filter(|r| r.parent_id.as_deref() == Some(run.id.as_str()))
                    .map(|r| node(r, runs, procs))
                    .collect(),
            );
            v
        }
        println!("{}", node(&root, &runs, &procs));
        return Ok(ExitCode::SUCCESS);
    }
    fn print_run(
        run: &RunRow,
        runs: &[RunRow],
        procs: &HashMap<&str, Vec<ProcNode>>,
        indent: &str,
        max: usize,
    ) {
        let state = match &run.end_reason {
            Some(reason) => format!("ended: {}", escape_terminal(reason)),
            None => "active".to_owned(),
        };
        println!(
            "{indent}run {} {} (principal {}, depth {}, {state})",
            escape_terminal(&run.id),
            escape_terminal(&run.agent),
            escape_terminal(&run.principal),
            run.depth
        );
        let all = procs
            .get(run.id.as_str())
            .map(Vec::as_slice)
            .unwrap_or_default();
        let inner = format!("{indent}  ");
        for p in proc_roots(all) {
            print_procs(p, all, &inner, max);
        }
        for child in runs
            .iter()
            .filter(|r| r.parent_id.as_deref() == Some(run.id.as_str()))
        {
            print_run(child, runs, procs, &format!("{indent}    "), max);
        }
    }
    print_run(&root, &runs, &procs, "", width());
    Ok(ExitCode::SUCCESS)
}

/// One line describing an event, for text output: every string of the
/// event escaped.
pub(super) fn describe(e: &Value) -> String {
    let kind = shown_str(e, "/kind");
    let kind = if kind.is_empty() { "?".into() } else { kind };
    let p = &e["process"];
    let pid = p["pid"].as_u64().map(|p| p.to_string()).unwrap_or_default();
    let exe = || exe_shown(p).unwrap_or_default();
    let detail = match kind.as_ref() {
        "process.exec" => {
            if e["exec"]["result"] == "error" {
                format!(
                    "{} FAILED {}",
                    shown_str(e, "/exec/filename"),
                    shown_str(e, "/exec/error")
                )
            } else {
                argv_shown(p).unwrap_or_default().join(" ")
            }
        }
        "process.spawn" => format!(
            "spawn of {}",
            exe_shown(p).unwrap_or_else(|| "?".to_owned())
        ),
        "process.exit" => match (p["exit_code"].as_i64(), p["exit_signal"].as_i64()) {
            (Some(c), _) => format!("{} exit {c}", exe()),
            (_, Some(s)) => format!("{} signal {s}", exe()),
            _ => String::new(),
        },
        "network.connect" | "network.socket" | "network.listen" | "network.accept" => {
            describe_network(e, &kind)
        }
        "process.tamper" | "sensor.tamper" => describe_tamper(e),
        "policy.violation" if e["network"].is_object() => describe_network(e, "network.connect"),
        "policy.violation" if e["tamper"].is_object() => describe_tamper(e),
        "run.degraded" => format!(
            "{} {}: {} events lost, {} denial records held back",
            shown_str(e, "/run/agent"),
            shown_str(e, "/run/id"),
            shown_value(&e["degraded"]["lost_events"]),
            shown_value(&e["degraded"]["denials_suppressed"])
        ),
        "run.start" | "run.end" => format!(
            "{} {} {}",
            shown_str(e, "/run/agent"),
            shown_str(e, "/run/id"),
            shown_str(e, "/run/end_reason")
        ),
        "sensor.lost" => format!("{} events lost", shown_value(&e["lost"]["total"])),
        "sensor.blind" => {
            let missing: Vec<String> = e["blind"]["missing"]
                .as_array()
                .map(|m| m.iter().map(shown_value).collect())
                .unwrap_or_default();
            format!(
                "{} ({}) since {}",
                if e["blind"]["restored"] == true {
                    "SIGHT RESTORED"
                } else {
                    "BLIND"
                },
                missing.join(", "),
                shown_str(e, "/blind/since")
            )
        }
        _ => String::new(),
    };
    let verdict = e
        .pointer("/policy/verdict")
        .and_then(Value::as_str)
        .map(|v| format!(" [{}]", escape_terminal(v)))
        .unwrap_or_default();
    format!("{kind:<15} {pid:>7} {detail}{verdict}")
}

/// The network part of an event's line: `tcp 203.0.113.7:443 ok`,
/// `unix stream /run/docker.sock error EPERM`, `udp 1.1.1.1:53 sendmsg x8`,
/// `listen tcp 0.0.0.0:4444`, `accept tcp 127.0.0.1:4444 from 127.0.0.1:50000`,
/// `raw ipv4 socket error EPERM`.
fn describe_network(e: &Value, kind: &str) -> String {
    let n = &e["network"];
    let result = || {
        let r = shown_str(e, "/network/result");
        match n["error"].as_str() {
            Some(_) if r == "error" => format!("error {}", shown_str(e, "/network/error")),
            _ => r.into_owned(),
        }
    };
    let addr = |ip: &str, port: &str| {
        format!(
            "{}:{}",
            shown_str(e, &format!("/network/{ip}")),
            shown_value(&n[port])
        )
    };
    match kind {
        "network.listen" => format!(
            "listen {} {}",
            shown_str(e, "/network/transport"),
            addr("local_ip", "local_port")
        ),
        "network.accept" => format!(
            "accept {} {} from {}",
            shown_str(e, "/network/transport"),
            addr("local_ip", "local_port"),
            addr("src_ip", "src_port")
        ),
        _ if n["family"] == "unix" => {
            let peer = n["peer_path"]
                .as_str()
                .map(|_| format!(" (reached {})", shown_str(e, "/network/peer_path")))
                .unwrap_or_default();
            format!(
                "unix {} {}{peer} {}",
                shown_str(e, "/network/transport"),
                shown_str(e, "/network/path"),
                result()
            )
        }
        _ if n["dst_ip"].is_string() => {
            let sends = n["sends"]
                .as_u64()
                .map(|s| format!(" sendmsg x{s}"))
                .unwrap_or_default();
            format!(
                "{} {}{sends} {}",
                shown_str(e, "/network/transport"),
                addr("dst_ip", "dst_port"),
                result()
            )
        }
        _ => format!(
            "{} {} socket {}",
            shown_str(e, "/network/transport"),
            shown_str(e, "/network/family"),
            result()
        ),
    }
}

/// A tamper's line: `ptrace attach: pid 77 (/usr/bin/sleep) [killed]`.
fn describe_tamper(e: &Value) -> String {
    let t = &e["tamper"];
    let target_run = match t["target"]["run"]["id"].as_str() {
        Some(_) => format!(", of run {}", shown_str(e, "/tamper/target/run/id")),
        None if t["target"].is_object() && t["method"] != "signal" => ", of no run".to_owned(),
        None => String::new(),
    };
    let outcome = match (t["killed"].as_bool(), t["repaired"].as_bool()) {
        (Some(true), _) => " [killed]",
        (_, Some(true)) => " [put back]",
        (_, Some(false)) => " [NOT put back]",
        _ => "",
    };
    format!(
        "{}: {}{target_run}{outcome}",
        shown_str(e, "/tamper/what"),
        shown_str(e, "/tamper/object")
    )
}

pub fn events(args: &EventsArgs) -> anyhow::Result<ExitCode> {
    let conn = open_for_reading(&args.db.db)?;
    let runs = match &args.run {
        Some(run) => {
            let run = query::find_run(&conn, run)?;
            Some(if args.subtree {
                query::subtree(&conn, &run.id)?
                    .into_iter()
                    .map(|r| r.id)
                    .collect()
            } else {
                vec![run.id]
            })
        }
        None => None,
    };
    let since_ns = args.since.map(crate::store::unix_ns);
    let mut filter = EventFilter {
        runs,
        kind: args.kind.clone(),
        escapes: args.escapes,
        since_ns,
        ..EventFilter::default()
    };
    let max = width();
    loop {
        let batch = query::events(&conn, &filter)?;
        for se in &batch {
            if args.db.json {
                println!("{}", se.event);
            } else {
                let time = shown_str(&se.event, "/time");
                let run = se
                    .event
                    .pointer("/run/id")
                    .and_then(Value::as_str)
                    .map_or_else(|| "-".to_owned(), short_shown);
                println!(
                    "{}",
                    fit(&format!("{time}  {run:<13}  {}", describe(&se.event)), max)
                );
            }
            filter.after_id = se.id;
        }
        if !args.follow {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(ExitCode::SUCCESS)
}

pub fn who(args: &WhoArgs) -> anyhow::Result<ExitCode> {
    let conn = open_for_reading(&args.db.db)?;
    let (found, seen) = match (args.pid, args.ip, &args.unix) {
        (Some(pid), _, _) => (
            query::events_of_pid(&conn, pid, 1000)?,
            query::seen_pid(&conn, pid, 1000)?,
        ),
        (None, Some((ip, port)), _) => {
            let ip = ip.to_string();
            (
                query::connects_to(&conn, &ip, port, 1000)?,
                query::seen_ip(&conn, &ip, port, 1000)?,
            )
        }
        (None, None, Some(path)) => (
            query::unix_connects_to(&conn, path, 1000)?,
            query::seen_unix(&conn, path, 1000)?,
        ),
        (None, None, None) => anyhow::bail!("give --pid, --ip or --unix"),
    };
    // Stored events and, with `[store] keep = "runs"`, the summaries of
    // processes outside any run (their latest event): newest first.
    let mut found: Vec<(&Value, Option<&query::SeenRow>)> = found
        .iter()
        .map(|se| (&se.event, None))
        .chain(seen.iter().map(|s| (&s.event, Some(s))))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(str_of(f.0, "/time")));
    // One answer per process (a pid may have been reused), newest first.
    let mut seen = Vec::<String>::new();
    let mut answers = Vec::new();
    // The exe each answer shows in text (from the raw path when not UTF-8).
    let mut exes = Vec::new();
    for (e, summary) in found {
        let key = str_of(e, "/process/key");
        if seen.contains(&key) {
            continue;
        }
        seen.push(key.clone());
        exes.push(exe_shown(&e["process"]).unwrap_or_else(|| "?".to_owned()));
        let mut answer = json!({
            "process": {"key": key, "pid": e["process"]["pid"], "exe": e["process"]["exe"], "uid": e["process"]["uid"]},
            "run": e["run"],
            "last_seen": e["time"],
            "network": e.get("network"),
        });
        if let Some(s) = summary {
            answer["summary"] = json!({"first_seen": time_of_ns(s.first_ns), "events": s.events});
        }
        answers.push(answer);
    }
    if args.db.json {
        println!("{}", Value::Array(answers));
        return Ok(if seen.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    if answers.is_empty() {
        eprintln!("sensor: no stored event matches");
        return Ok(ExitCode::FAILURE);
    }
    for (a, exe) in answers.iter().zip(&exes) {
        let run = &a["run"];
        let owner = if run.is_null() {
            "not in any agent run".to_owned()
        } else {
            format!(
                "run {} agent {} principal {} depth {} (attribution {})",
                shown_str(run, "/id"),
                shown_str(run, "/agent"),
                shown_str(run, "/principal"),
                shown_value(&run["depth"]),
                shown_str(run, "/attribution")
            )
        };
        let summary = if a["summary"].is_null() {
            String::new()
        } else {
            format!(
                " ({} events since {}, summed up: [store] keep = \"runs\")",
                shown_value(&a["summary"]["events"]),
                shown_str(a, "/summary/first_seen")
            )
        };
        println!(
            "pid {} {exe} (key {}, last seen {}): {owner}{summary}",
            shown_value(&a["process"]["pid"]),
            shown_str(a, "/process/key"),
            shown_str(a, "/last_seen")
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn replay(args: &ReplayArgs) -> anyhow::Result<ExitCode> {
    let conn = open_for_reading(&args.db.db)?;
    let root = query::find_run(&conn, &args.run)?;
    let runs = query::subtree(&conn, &root.id)?;
    let depth_of: HashMap<String, u32> = runs
        .iter()
        .map(|r| (r.id.clone(), r.depth - root.depth))
        .collect();
    let events = query::events(
        &conn,
        &EventFilter {
            runs: Some(runs.iter().map(|r| r.id.clone()).collect()),
            ..EventFilter::default()
        },
    )
    .context("reading the run's events")?;
    // Process depth within its run, from parent keys seen so far.
    let mut proc_depth: HashMap<String, usize> = HashMap::new();
    let max = width();
    for se in &events {
        let e = &se.event;
        if args.db.json {
            println!("{e}");
            continue;
        }
        let run_id = str_of(e, "/run/id");
        let run_depth = depth_of.get(&run_id).copied().unwrap_or(0) as usize;
        let key = str_of(e, "/process/key");
        let parent = str_of(e, "/process/parent_key");
        let depth = if key.is_empty() {
            0
        } else {
            let d = proc_depth.get(&parent).map_or(0, |d| d + 1);
            *proc_depth.entry(key).or_insert(d)
        };
        let indent = "    ".repeat(run_depth) + &"  ".repeat(depth);
        let time = shown_str(e, "/time");
        let agent = shown_str(e, "/run/agent");
        println!(
            "{}",
            fit(&format!("{time}  {indent}[{agent}] {}", describe(e)), max)
        );
    }
    Ok(ExitCode::SUCCESS)
}

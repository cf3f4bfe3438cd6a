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
    display::{
        Column, argv_shown, count_value, escape_terminal, exe_shown, shown_str, shown_value,
        text_table,
    },
    fold,
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

/// The width text lines are cut to: `COLUMNS` when set; else, on a
/// terminal, 120; into a pipe or a file, none (`sensor events | grep` sees
/// whole rows).
fn width() -> usize {
    std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .filter(|w| *w >= 40)
        .unwrap_or_else(|| {
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                120
            } else {
                usize::MAX
            }
        })
}

/// Colours for verdicts on a terminal: `[deny] blocked` red, `[deny] would
/// have been blocked (audit)` yellow, `[allow]` green; none into a pipe or
/// a file, or when `NO_COLOR` is set (<https://no-color.org>). The text it
/// colours was escaped first ([`escape_terminal`]), so the only escape
/// sequences on the line are these.
struct Paint {
    on: bool,
}

impl Paint {
    fn stdout() -> Self {
        Self {
            on: std::io::IsTerminal::is_terminal(&std::io::stdout())
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
        }
    }

    /// `line` with its verdict cell `cell` (at byte `at`, as
    /// [`VerdictColumns::line`] put it) coloured.
    fn cell(&self, line: &str, at: usize, cell: &str) -> String {
        let colour = match cell {
            "[deny] blocked" => "31;1",
            "[deny] audit" => "33;1",
            "[allow]" => "32",
            _ => return line.to_owned(),
        };
        if !self.on || line.get(at..at + cell.len()) != Some(cell) {
            return line.to_owned();
        }
        format!(
            "{}\x1b[{colour}m{cell}\x1b[0m{}",
            &line[..at],
            &line[at + cell.len()..]
        )
    }

    fn verdicts(&self, line: &str) -> String {
        if !self.on {
            return line.to_owned();
        }
        let mut out = line.to_owned();
        for (text, colour) in [
            (" [deny] blocked", "31;1"),
            (" [deny] would have been blocked (audit)", "33;1"),
            (" [allow]", "32"),
        ] {
            if let Some(at) = out.rfind(text) {
                out.replace_range(
                    at + 1..at + text.len(),
                    &format!("\x1b[{colour}m{}\x1b[0m", &text[1..]),
                );
                break;
            }
        }
        out
    }
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
        println!(
            "no runs in {}",
            escape_terminal(&args.db.db.to_string_lossy())
        );
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
    /// The argv of its first successful exec, as shown (empty when it is
    /// the last one too, or none was seen).
    pub first_argv_shown: Vec<String>,
    /// Successful execs seen.
    pub execs: u32,
    pub exit: Option<String>,
    pub first_id: i64,
    /// The agent tool call that caused it (`run.tool_call` on one of its
    /// events, or a `tool.call` listing one of them): the call's id.
    pub tool_call: Option<String>,
    /// A policy denied one of its actions (its exec, a connect, ...):
    /// blocked when any denial was, else audit.
    pub denial: Option<Denial>,
    /// One of its events is an escape attempt.
    pub escape: bool,
}

/// A tool call of a run as views show it above its processes.
#[derive(Debug, Clone, Default)]
pub(super) struct CallInfo {
    pub name: String,
    pub input: String,
}

/// The `tool.call` events of `events` by call id.
pub(super) fn tool_calls(events: &[&StoredEvent]) -> HashMap<String, CallInfo> {
    events
        .iter()
        .filter(|se| se.event["kind"] == "tool.call")
        .filter_map(|se| {
            let c = &se.event["tool_call"];
            Some((
                c["id"].as_str()?.to_owned(),
                CallInfo {
                    name: str_of(c, "/name"),
                    input: str_of(c, "/input"),
                },
            ))
        })
        .collect()
}

/// The call each event belongs to, by seq: the events a `tool.call` lists
/// (they went out before the daemon knew the call), then `run.tool_call`.
fn call_of_seqs(events: &[&StoredEvent]) -> HashMap<u64, String> {
    let mut out = HashMap::new();
    for se in events {
        let e = &se.event;
        if e["kind"] == "tool.call"
            && let Some(id) = e.pointer("/tool_call/id").and_then(Value::as_str)
            && let Some(list) = e.pointer("/tool_call/processes").and_then(Value::as_array)
        {
            for l in list {
                if let Some(seq) = l["seq"].as_u64() {
                    out.entry(seq).or_insert_with(|| id.to_owned());
                }
            }
        }
    }
    for se in events {
        if let Some(id) = se
            .event
            .pointer("/run/tool_call/id")
            .and_then(Value::as_str)
            && let Some(seq) = se.event["seq"].as_u64()
        {
            out.entry(seq).or_insert_with(|| id.to_owned());
        }
    }
    out
}

/// The call of an event's process, per [`call_of_seqs`]: by process key.
pub(super) fn call_of_keys(events: &[&StoredEvent]) -> HashMap<String, String> {
    let seqs = call_of_seqs(events);
    let mut out = HashMap::new();
    for se in events {
        let key = str_of(&se.event, "/process/key");
        if key.is_empty() || se.event["kind"] == "tool.unexplained" {
            continue;
        }
        if let Some(id) = se.event["seq"].as_u64().and_then(|s| seqs.get(&s)) {
            out.entry(key).or_insert_with(|| id.clone());
        }
    }
    out
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
    let calls = call_of_keys(events);
    for se in events {
        let e = &se.event;
        // A finding about a process is not one of its events.
        if e["kind"] == "tool.unexplained" {
            continue;
        }
        let Some(p) = e.get("process") else { continue };
        let key = str_of(p, "/key");
        if key.is_empty() {
            continue;
        }
        let call = calls.get(&key).cloned();
        let node = by_key.entry(key.clone()).or_insert_with(|| ProcNode {
            key,
            pid: p.get("pid").and_then(Value::as_u64).unwrap_or(0),
            parent_key: str_of(p, "/parent_key"),
            first_id: se.id,
            tool_call: call,
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
            let shown = argv_shown(p).unwrap_or_default();
            if node.execs == 1 {
                node.first_argv_shown = std::mem::take(&mut node.argv_shown);
            }
            node.argv_shown = shown;
            node.execs += 1;
        }
        if let Some(d) = denial_of(e)
            && node.denial != Some(Denial::Blocked)
        {
            node.denial = Some(d);
        }
        node.escape |= se.escape;
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
    json!({"key": node.key, "pid": node.pid, "exe": node.exe, "argv": node.argv, "exit": node.exit, "tool_call": node.tool_call, "children": children})
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

    /// What text views print after its label: `[deny] blocked`, `[deny]
    /// would have been blocked (audit)`, `[escape attempt]` (each with a
    /// leading space), or nothing.
    pub(super) fn marks(&self) -> String {
        let mut out = String::new();
        if let Some(d) = self.denial {
            out.push_str(" [deny] ");
            out.push_str(d.text());
        }
        if self.escape {
            out.push_str(" [escape attempt]");
        }
        out
    }

    /// Its label: the first and the last exec when it exec'd more than
    /// once (`bash -c '…' => sensor launch …`), else [`Self::command`].
    pub(super) fn label(&self) -> String {
        if self.execs > 1 && !self.first_argv_shown.is_empty() {
            format!("{} => {}", self.first_argv_shown.join(" "), self.command())
        } else {
            self.command()
        }
    }
}

/// How a denial ended: the kernel (or the daemon) stopped it, or the policy
/// only reported it (audit, or the one exec the kernel could not decide on).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Denial {
    Blocked,
    Audit,
}

impl Denial {
    /// What text views and the report say.
    pub(super) const fn text(self) -> &'static str {
        match self {
            Self::Blocked => "blocked",
            Self::Audit => "would have been blocked (audit)",
        }
    }
}

/// The denial an event stands for, counted once: the event that carries the
/// verdict (an exec, connect, spawn, tamper…), never its `policy.violation`
/// twin that follows it (seq + 1). A `policy.violation` with no twin (a
/// `max_depth` refusal) is its own denial: `twins` holds the seqs of the
/// denials seen (see [`Denials`]).
pub(super) fn denial_of(e: &Value) -> Option<Denial> {
    if e.pointer("/policy/verdict").and_then(Value::as_str) != Some("deny") {
        return None;
    }
    Some(
        if e.pointer("/policy/enforced") == Some(&Value::Bool(true)) {
            Denial::Blocked
        } else {
            Denial::Audit
        },
    )
}

/// Finds each denial once in a stream of events (in seq order).
#[derive(Debug, Default)]
pub(super) struct Denials {
    /// The seqs of the deny verdicts seen, whose violation twin (seq + 1)
    /// is not another denial.
    seen: std::collections::HashSet<u64>,
}

impl Denials {
    /// The denial `e` stands for, if it is one not counted yet.
    pub(super) fn check(&mut self, e: &Value) -> Option<Denial> {
        let denial = denial_of(e)?;
        let seq = e["seq"].as_u64();
        if e["kind"] == "policy.violation" {
            let twin = seq.and_then(|s| s.checked_sub(1));
            if twin.is_some_and(|t| self.seen.contains(&t)) {
                return None;
            }
        } else if let Some(seq) = seq {
            self.seen.insert(seq);
        }
        Some(denial)
    }
}

/// Processes whose parent is not in the run: the roots of its process tree.
pub(super) fn proc_roots(all: &[ProcNode]) -> impl Iterator<Item = &ProcNode> {
    all.iter()
        .filter(|n| !all.iter().any(|p| p.key == n.parent_key))
}

/// The rows of siblings in `sensor tree`: each tool call that begins among
/// them as a line with its tool, id and input (`└─ tool call Bash
/// toolu_…: curl …`), its processes under it.
fn print_rows(siblings: &[&ProcNode], parent_call: Option<&str>, v: &TreeView<'_>, indent: &str) {
    for row in fold::rows(siblings, parent_call, v.fold) {
        match row {
            fold::Row::Group(g) => print_procs(&g, v, indent),
            fold::Row::Call(id, groups) => {
                let info = v.calls.get(id).cloned().unwrap_or_default();
                let line = format!(
                    "{indent}└─ tool call {} {}: {}",
                    escape_terminal(&info.name),
                    escape_terminal(id),
                    escape_terminal(&info.input)
                );
                println!("{}", fit(&line, v.max));
                let deeper = format!("{indent}   ");
                for g in groups {
                    print_procs(&g, v, &deeper);
                }
            }
        }
    }
}

/// What `sensor tree` prints a run's processes with.
struct TreeView<'a> {
    kids: fold::Kids<'a>,
    calls: HashMap<String, CallInfo>,
    max: usize,
    fold: bool,
    paint: Paint,
}

/// One row of `sensor tree`: a process, or identical siblings folded
/// (`└─ 4242+ git -c … ×13`), then the rows of their children.
fn print_procs(group: &[&ProcNode], v: &TreeView<'_>, indent: &str) {
    let (kids, max) = (&v.kids, v.max);
    let Some(lead) = group.first() else { return };
    let exit = match (group.len(), lead.exit.as_deref()) {
        (1, Some(e)) => format!("  [{e}]"),
        _ => String::new(),
    };
    // A denied process is never folded (`fold::group`): its own row says so.
    let marks = lead.marks();
    let more = if group.len() > 1 { "+" } else { "" };
    let prefix = format!("{indent}└─ {}{more} ", lead.pid);
    let room =
        max.saturating_sub(prefix.chars().count() + exit.chars().count() + marks.chars().count());
    let line = format!("{prefix}{}{exit}{marks}", fold::group_label(group, room));
    println!("{}", v.paint.verdicts(&fit(&line, max)));
    let deeper = format!("{indent}   ");
    print_rows(
        &fold::group_children(group, kids),
        lead.tool_call.as_deref(),
        v,
        &deeper,
    );
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
    let calls: HashMap<&str, HashMap<String, CallInfo>> = runs
        .iter()
        .map(|r| {
            (
                r.id.as_str(),
                tool_calls(by_run.get(&r.id).map(Vec::as_slice).unwrap_or_default()),
            )
        })
        .collect();
    if args.db.json {
        fn node(
            run: &RunRow,
            runs: &[RunRow],
            procs: &HashMap<&str, Vec<ProcNode>>,
            calls: &HashMap<&str, HashMap<String, CallInfo>>,
        ) -> Value {
            let all = procs
                .get(run.id.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut v = run_json(run);
            v["processes"] = Value::Array(proc_roots(all).map(|p| proc_json(p, all)).collect());
            let mut tool_calls: Vec<Value> = calls
                .get(run.id.as_str())
                .into_iter()
                .flatten()
                .map(|(id, c)| json!({"id": id, "name": c.name, "input": c.input}))
                .collect();
            tool_calls.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
            v["tool_calls"] = Value::Array(tool_calls);
            v["runs"] = Value::Array(
                runs.iter()
                    .filter(|r| r.parent_id.as_deref() == Some(run.id.as_str()))
                    .map(|r| node(r, runs, procs, calls))
                    .collect(),
            );
            v
        }
        println!("{}", node(&root, &runs, &procs, &calls));
        return Ok(ExitCode::SUCCESS);
    }
    fn print_run(
        run: &RunRow,
        runs: &[RunRow],
        procs: &HashMap<&str, Vec<ProcNode>>,
        calls: &HashMap<&str, HashMap<String, CallInfo>>,
        indent: &str,
        max: usize,
        fold: bool,
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
        let view = TreeView {
            kids: fold::Kids::new(all),
            calls: calls.get(run.id.as_str()).cloned().unwrap_or_default(),
            max,
            fold,
            paint: Paint::stdout(),
        };
        print_rows(&view.kids.roots, None, &view, &inner);
        for child in runs
            .iter()
            .filter(|r| r.parent_id.as_deref() == Some(run.id.as_str()))
        {
            print_run(
                child,
                runs,
                procs,
                calls,
                &format!("{indent}    "),
                max,
                fold,
            );
        }
    }
    print_run(&root, &runs, &procs, &calls, "", width(), !args.no_fold);
    Ok(ExitCode::SUCCESS)
}

/// One line describing an event, for text output: every string of the
/// event escaped; its verdict at the end (see [`verdict_shown`]).
pub(super) fn describe(e: &Value) -> String {
    format!("{}{}", describe_body(e), verdict_shown(e))
}

/// [`describe`] without the verdict: `KIND PID WHAT`.
fn describe_body(e: &Value) -> String {
    describe_columns(e, 15)
}

/// `KIND PID WHAT`, the kind padded to `kind_width`.
fn describe_columns(e: &Value, kind_width: usize) -> String {
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
        "detection" => format!(
            "[{}] {}: {} (event {}, rule {})",
            shown_str(e, "/detection/level"),
            shown_str(e, "/detection/title"),
            shown_str(e, "/detection/event_kind"),
            shown_value(&e["detection"]["event_seq"]),
            shown_str(e, "/detection/rule_id")
        ),
        "policy.violation" if e["network"].is_object() => describe_network(e, "network.connect"),
        "policy.violation" if e["tamper"].is_object() => describe_tamper(e),
        "policy.violation" if e["exec"].is_object() => {
            let filename = shown_str(e, "/exec/filename");
            if filename.is_empty() {
                exe_shown(p).unwrap_or_else(|| "?".to_owned())
            } else {
                filename.into_owned()
            }
        }
        "policy.violation" => exe_shown(p).unwrap_or_default(),
        "run.degraded" => format!(
            "{} {}: {} lost, {} held back",
            shown_str(e, "/run/agent"),
            shown_str(e, "/run/id"),
            count_value(&e["degraded"]["lost_events"], "event", "events"),
            count_value(
                &e["degraded"]["denials_suppressed"],
                "denial record",
                "denial records"
            )
        ),
        "run.start" | "run.end" => format!(
            "{} {} {}",
            shown_str(e, "/run/agent"),
            shown_str(e, "/run/id"),
            shown_str(e, "/run/end_reason")
        ),
        "sensor.lost" => format!(
            "{} lost",
            count_value(&e["lost"]["total"], "event", "events")
        ),
        "tool.call" | "tool.unobserved" => {
            let events: Vec<String> = e["tool_call"]["processes"]
                .as_array()
                .map(|a| a.iter().map(|l| shown_value(&l["seq"])).collect())
                .unwrap_or_default();
            format!(
                "{} {}: {} ({})",
                shown_str(e, "/tool_call/name"),
                shown_str(e, "/tool_call/id"),
                shown_str(e, "/tool_call/input"),
                if events.is_empty() {
                    "no process of the run".to_owned()
                } else {
                    format!("events {}", events.join(","))
                }
            )
        }
        "tool.unexplained" => format!(
            "{} {}{}",
            argv_shown(p).unwrap_or_default().join(" "),
            shown_str(e, "/unexplained/reason"),
            if e["unexplained"]["after_call"].is_object() {
                format!(" (after {})", shown_str(e, "/unexplained/after_call/id"))
            } else {
                String::new()
            }
        ),
        "transcript.unreadable" => format!(
            "{}: {}",
            shown_str(e, "/transcript/path"),
            shown_str(e, "/transcript/reason")
        ),
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
    format!("{kind:<kind_width$} {pid:>7} {detail}")
}

/// The kind column of `events`: as wide as the usual kinds
/// (`policy.violation`); a longer one pushes its line.
const EVENTS_KIND_WIDTH: usize = 16;

/// The verdict and rule columns of an `events` line: `[allow]`, `[deny]
/// blocked`, `[deny] audit` (would have been blocked: the policy audits),
/// `[violation]` (the `policy.violation` that repeats the denial before it,
/// so that counting `[deny]` counts each denial once); and the rule. Both
/// empty for an event without a verdict.
fn verdict_cells(e: &Value) -> (String, String) {
    let Some(verdict) = e.pointer("/policy/verdict").and_then(Value::as_str) else {
        return (String::new(), String::new());
    };
    let rule = shown_str(e, "/policy/rule").into_owned();
    let verdict = if e["kind"] == "policy.violation" {
        "[violation]".to_owned()
    } else {
        match denial_of(e) {
            Some(Denial::Blocked) => "[deny] blocked".to_owned(),
            Some(Denial::Audit) => "[deny] audit".to_owned(),
            None => format!("[{}]", escape_terminal(verdict)),
        }
    };
    (verdict, rule)
}

/// The widths of the verdict and rule columns of `events`: each as wide as
/// its widest cell so far (the rule at most [`RULE_COLUMN_MAX`]: a longer
/// rule is shown whole and pushes the rest of its line), fixed for the
/// lines already printed; 0 (no column) while no event had a verdict.
#[derive(Debug, Default, Clone, Copy)]
struct VerdictColumns {
    verdict: usize,
    rule: usize,
}

/// The widest a rule column grows.
const RULE_COLUMN_MAX: usize = 40;

impl VerdictColumns {
    fn widen(&mut self, cells: &(String, String)) {
        self.verdict = self.verdict.max(cells.0.chars().count());
        self.rule = self.rule.max(cells.1.chars().count().min(RULE_COLUMN_MAX));
    }

    /// `TIME  RUN  VERDICT  RULE  KIND PID WHAT`, the verdict starting at
    /// a fixed column; returns the line and where (bytes) and how long the
    /// verdict cell is, for colouring it.
    fn line(&self, time: &str, run: &str, cells: &(String, String), body: &str) -> (String, usize) {
        let mut line = format!("{time}  {run:<13}  ");
        let at = line.len();
        if self.verdict > 0 {
            line.push_str(&format!(
                "{:<vw$}  {:<rw$}  ",
                cells.0,
                cells.1,
                vw = self.verdict,
                rw = self.rule
            ));
        }
        line.push_str(body);
        (line, at)
    }
}

/// The verdict's part of an event's line: ` [deny] blocked`, ` [deny] would
/// have been blocked (audit)`, ` [allow]`; a `policy.violation` (which
/// repeats the denial before it) ` [violation] rule …`, so that counting
/// `[deny]` counts each denial once.
fn verdict_shown(e: &Value) -> String {
    let Some(verdict) = e.pointer("/policy/verdict").and_then(Value::as_str) else {
        return String::new();
    };
    if e["kind"] == "policy.violation" {
        return format!(" [violation] rule {}", shown_str(e, "/policy/rule"));
    }
    match denial_of(e) {
        Some(d) => format!(" [deny] {}", d.text()),
        None => format!(" [{}]", escape_terminal(verdict)),
    }
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

/// The events `sensor events` reads from the store at a time.
const EVENTS_PAGE: u32 = 5000;

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
    let until_ns = args.until.map(crate::store::unix_ns);
    let page = match args.limit {
        Some(n) if args.agent.is_none() && args.kind.len() < 2 => u32::try_from(n)
            .unwrap_or(EVENTS_PAGE)
            .clamp(1, EVENTS_PAGE),
        _ => EVENTS_PAGE,
    };
    let mut filter = EventFilter {
        runs,
        // One kind: the store selects it; several: selected here.
        kind: match args.kind.as_slice() {
            [one] => Some(one.clone()),
            _ => None,
        },
        escapes: args.escapes,
        since_ns,
        until_ns,
        pid: args.pid,
        // A page at a time: a store can hold millions of events, and
        // `--limit 5` reads no more than it needs (5 rows, when the store
        // selects them all).
        limit: Some(page),
        ..EventFilter::default()
    };
    let wanted = |e: &Value| {
        (args.kind.len() < 2 || args.kind.iter().any(|k| e["kind"] == k.as_str()))
            && args
                .agent
                .as_deref()
                .is_none_or(|a| e.pointer("/run/agent").and_then(Value::as_str) == Some(a))
    };
    let mut printed = 0_u64;
    let max = width();
    let paint = Paint::stdout();
    let mut columns = VerdictColumns::default();
    loop {
        let batch = query::events(&conn, &filter)?;
        let mut shown: Vec<&StoredEvent> = Vec::new();
        for se in &batch {
            filter.after_id = se.id;
            if !wanted(&se.event) {
                continue;
            }
            if args.limit.is_some_and(|limit| printed >= limit) {
                break;
            }
            printed += 1;
            if args.db.json {
                println!("{}", se.event);
            } else {
                shown.push(se);
            }
        }
        // The batch's verdict and rule cells size their columns first.
        let cells: Vec<(String, String)> =
            shown.iter().map(|se| verdict_cells(&se.event)).collect();
        for c in &cells {
            columns.widen(c);
        }
        for (se, cells) in shown.drain(..).zip(&cells) {
            let time = shown_str(&se.event, "/time");
            let run = se
                .event
                .pointer("/run/id")
                .and_then(Value::as_str)
                .map_or_else(|| "-".to_owned(), short_shown);
            let body = describe_columns(&se.event, EVENTS_KIND_WIDTH);
            let (line, at) = columns.line(&time, &run, cells, &body);
            println!("{}", paint.cell(&fit(&line, max), at, &cells.0));
        }
        if args.limit.is_some_and(|limit| printed >= limit) {
            break;
        }
        if batch.len() == page as usize {
            // More stored: the next page at once.
            continue;
        }
        if !args.follow {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    Ok(ExitCode::SUCCESS)
}

/// The most answers `who` gathers from the store (newest first).
const WHO_MAX: usize = 1000;
/// The most distinct destination addresses `who --ip NET/LEN` matches.
const WHO_MAX_ADDRESSES: u32 = 100_000;

/// What the daemon said about a live process (`who --pid`).
enum Live {
    /// `--ip` or `--unix`: not asked.
    NotAsked,
    Known(Box<crate::attribution::ProcessAnswer>),
    /// It answered, but not with the process (none by that pid, another
    /// user's): its message.
    Refused(String),
    /// No daemon answered: why.
    Unreachable(String),
}

/// Asks the daemon at `socket` about live process `pid`.
fn ask_daemon(socket: &std::path::Path, pid: u32) -> Live {
    use crate::control::{
        ControlError,
        protocol::{Request, Response},
    };
    match crate::control::request(socket, &Request::Process { pid }) {
        Ok(Response::Process(answer)) => Live::Known(answer),
        Ok(other) => Live::Refused(format!("unexpected answer {other:?}")),
        Err(ControlError::Refused(message)) => Live::Refused(message),
        Err(e) => Live::Unreachable(format!("{:#}", anyhow::Error::new(e))),
    }
}

/// A live process as the daemon told it, in the shape of a stored answer.
fn live_answer(p: &crate::attribution::ProcessAnswer) -> Value {
    let run = p.run.as_ref().map_or(Value::Null, |r| {
        let mut run = json!({
            "id": r.id, "agent": r.agent, "principal": r.principal, "parent_id": r.parent_id,
            "root_id": r.root_id, "depth": r.depth, "attribution": p.attribution, "policy": r.policy,
        });
        if let Some(claimed) = &r.principal_claimed {
            run["principal_claimed"] = claimed.as_str().into();
        }
        run
    });
    json!({
        "source": "daemon",
        "alive": true,
        "process": {"key": p.process_key, "pid": p.pid, "exe": p.exe, "uid": p.uid},
        "run": run,
        "last_seen": null,
        "network": null,
    })
}

pub fn who(args: &WhoArgs) -> anyhow::Result<ExitCode> {
    // A live process: the daemon knows it even when it did nothing since
    // the daemon placed it (from /proc, at start-up).
    let live = match args.pid {
        Some(pid) => ask_daemon(&args.socket, pid),
        None => Live::NotAsked,
    };
    let conn = match open_for_reading(&args.db.db) {
        Ok(conn) => Some(conn),
        // The daemon's answer stands without the store (`--no-store`).
        Err(e) if matches!(live, Live::Known(_)) => {
            eprintln!(
                "sensor: {} (the daemon's answer only)",
                escape_terminal(&format!("{:#}", anyhow::Error::new(e)))
            );
            None
        }
        Err(e) => return Err(e.into()),
    };
    let (found, seen) = match &conn {
        Some(conn) => who_stored(conn, args)?,
        None => (Vec::new(), Vec::new()),
    };
    // Stored events and, with `[store] keep = "runs"`, the summaries of
    // processes outside any run (their latest event): newest first.
    let mut found: Vec<(&Value, Option<&query::SeenRow>)> = found
        .iter()
        .map(|se| (&se.event, None))
        .chain(seen.iter().map(|s| (&s.event, Some(s))))
        .collect();
    found.sort_by_key(|f| std::cmp::Reverse(str_of(f.0, "/time")));
    // One answer per process (a pid may have been reused), newest first;
    // for --ip, one per process and destination (address and port).
    let answer_key = |e: &Value| {
        let key = str_of(e, "/process/key");
        if args.ip.is_some() {
            format!(
                "{key} {} {}",
                str_of(e, "/network/dst_ip"),
                e["network"]["dst_port"]
            )
        } else {
            key
        }
    };
    let mut keys = Vec::<String>::new();
    let mut answers = Vec::new();
    if let Live::Known(p) = &live {
        keys.push(p.process_key.clone());
        answers.push(live_answer(p));
    }
    for (e, summary) in found {
        let key = answer_key(e);
        if let Some(i) = keys.iter().position(|k| *k == key) {
            // The live process's latest stored event.
            if answers[i]["last_seen"].is_null() && answers[i]["source"] == "daemon" {
                answers[i]["last_seen"] = e["time"].clone();
            }
            continue;
        }
        keys.push(key);
        let mut answer = json!({
            "source": "store",
            "process": {"key": e["process"]["key"], "pid": e["process"]["pid"], "exe": e["process"]["exe"],
                        "exe_b64": e["process"]["exe_b64"], "uid": e["process"]["uid"]},
            "run": e["run"],
            "last_seen": e["time"],
            "network": e.get("network"),
        });
        if args.ip.is_some() || args.unix.is_some() {
            answer["kind"] = e["kind"].clone();
            answer["policy"] = e["policy"].clone();
        }
        if let Some(s) = summary {
            answer["summary"] = json!({"first_seen": time_of_ns(s.first_ns), "events": s.events});
        }
        answers.push(answer);
    }
    match &live {
        Live::Unreachable(why) => eprintln!(
            "sensor: the daemon was not asked about live processes: {}; answering from the store only",
            escape_terminal(why)
        ),
        Live::Refused(why) => eprintln!(
            "sensor: the daemon: {}; answering from the store only",
            escape_terminal(why)
        ),
        Live::NotAsked | Live::Known(_) => {}
    }
    if args.db.json {
        for a in &mut answers {
            if let Some(p) = a["process"].as_object_mut() {
                p.retain(|_, v| !v.is_null());
            }
        }
        println!("{}", Value::Array(answers.clone()));
        return Ok(if answers.is_empty() {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    if answers.is_empty() {
        eprintln!("sensor: no stored event matches");
        return Ok(ExitCode::FAILURE);
    }
    for a in &answers {
        println!("{}", who_line(a));
    }
    Ok(ExitCode::SUCCESS)
}

/// The stored events and summaries `who` answers from (newest first).
fn who_stored(
    conn: &rusqlite::Connection,
    args: &WhoArgs,
) -> anyhow::Result<(Vec<StoredEvent>, Vec<query::SeenRow>)> {
    let max = u32::try_from(WHO_MAX).unwrap_or(u32::MAX);
    let (mut found, seen) = match (args.pid, args.ip, &args.unix) {
        (Some(pid), _, _) => (
            query::events_of_pid(conn, pid, max)?,
            query::seen_pid(conn, pid, max)?,
        ),
        (None, Some(q), _) => {
            let ips: Vec<String> = if q.is_single() {
                vec![q.net.to_string()]
            } else {
                query::distinct_dst_ips(conn, WHO_MAX_ADDRESSES)?
                    .into_iter()
                    .filter(|ip| {
                        ip.parse::<std::net::IpAddr>()
                            .is_ok_and(|ip| q.contains(ip))
                    })
                    .collect()
            };
            // One port: the store selects it; a range: selected here.
            let port = match q.ports {
                Some((lo, hi)) if lo == hi => Some(lo),
                _ => None,
            };
            let (mut found, mut seen) = (Vec::new(), Vec::new());
            for ip in &ips {
                if found.len() + seen.len() >= WHO_MAX {
                    break;
                }
                found.extend(
                    query::connects_to(conn, ip, port, max)?
                        .into_iter()
                        .filter(|se| q.port_matches(se.event["network"]["dst_port"].as_u64())),
                );
                seen.extend(
                    query::seen_ip(conn, ip, port, max)?
                        .into_iter()
                        .filter(|s| q.port_matches(s.event["network"]["dst_port"].as_u64())),
                );
            }
            (found, seen)
        }
        (None, None, Some(path)) => (
            query::unix_connects_to(conn, path, max)?,
            query::seen_unix(conn, path, max)?,
        ),
        (None, None, None) => anyhow::bail!("give --pid, --ip or --unix"),
    };
    // A denied connect's `policy.violation` twin repeats it: the connect
    // answers (with its result and verdict).
    if args.pid.is_none() {
        found.retain(|se| se.event["kind"] != "policy.violation");
    }
    Ok((found, seen))
}

/// One answer of `who` as a text line: the process, where the answer came
/// from, its run; for --ip and --unix what it connected to and how that
/// ended (`tcp 10.0.0.5:443 refused [deny] blocked`).
fn who_line(a: &Value) -> String {
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
            " ({} since {}, summed up: [store] keep = \"runs\")",
            count_value(&a["summary"]["events"], "event", "events"),
            shown_str(a, "/summary/first_seen")
        )
    };
    let exe = exe_shown(&a["process"]).unwrap_or_else(|| "?".to_owned());
    let when = if a["source"] == "daemon" {
        match a["last_seen"].as_str() {
            Some(_) => format!(
                "alive, last event {}; from the daemon",
                shown_str(a, "/last_seen")
            ),
            None => "alive, no event stored; from the daemon".to_owned(),
        }
    } else {
        format!("last seen {}; from the store", shown_str(a, "/last_seen"))
    };
    let network = if a.get("kind").is_some() && a["network"].is_object() {
        let kind = shown_str(a, "/kind");
        let what = if kind == "policy.violation" {
            "network.connect".into()
        } else {
            kind
        };
        format!("; {}{}", describe_network(a, &what), verdict_shown(a))
    } else {
        String::new()
    };
    format!(
        "pid {} {exe} (key {}, {when}): {owner}{summary}{network}",
        shown_value(&a["process"]["pid"]),
        shown_str(a, "/process/key"),
    )
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
    if args.db.json {
        for se in &events {
            println!("{}", se.event);
        }
        return Ok(ExitCode::SUCCESS);
    }
    // Identical sibling commands: the first one's lines stand for all (its
    // exec line says ×N); a denial or an escape attempt is always shown.
    let mut by_run: HashMap<&str, Vec<&StoredEvent>> = HashMap::new();
    for se in &events {
        if let Some(id) = se.event.pointer("/run/id").and_then(Value::as_str) {
            by_run.entry(id).or_default().push(se);
        }
    }
    let mut folded = fold::Folded::default();
    // Each process's tool call, and the calls (shown above the first event
    // of their processes).
    let mut call_of: HashMap<String, String> = HashMap::new();
    let mut calls: HashMap<String, CallInfo> = HashMap::new();
    for run_events in by_run.values() {
        let f = fold::folded(&processes(run_events), !args.no_fold);
        folded.hidden.extend(f.hidden);
        folded.counts.extend(f.counts);
        call_of.extend(call_of_keys(run_events));
        calls.extend(tool_calls(run_events));
    }
    let mut calls_shown: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut left_out = 0_usize;
    let paint = Paint::stdout();
    // Process depth within its run, from parent keys seen so far.
    let mut proc_depth: HashMap<String, usize> = HashMap::new();
    let max = width();
    for se in &events {
        let e = &se.event;
        let key = str_of(e, "/process/key");
        let parent = str_of(e, "/process/parent_key");
        let depth = if key.is_empty() {
            0
        } else {
            let d = proc_depth.get(&parent).map_or(0, |d| d + 1);
            *proc_depth.entry(key.clone()).or_insert(d)
        };
        if folded.hidden.contains(&key) && !se.escape && denial_of(e).is_none() {
            left_out += 1;
            continue;
        }
        let run_id = str_of(e, "/run/id");
        let run_depth = depth_of.get(&run_id).copied().unwrap_or(0) as usize;
        let indent = "    ".repeat(run_depth) + &"  ".repeat(depth);
        let time = shown_str(e, "/time");
        let agent = shown_str(e, "/run/agent");
        let call = (e["kind"] != "tool.unexplained")
            .then(|| call_of.get(&key))
            .flatten();
        if let Some(id) = call
            && calls_shown.insert(id.clone())
        {
            let info = calls.get(id).cloned().unwrap_or_default();
            let line = format!(
                "{time}  {indent}[{agent}] tool call {} {}: {}",
                escape_terminal(&info.name),
                escape_terminal(id),
                escape_terminal(&info.input)
            );
            println!("{}", fit(&line, max));
        }
        let indent = if call.is_some() {
            indent + "  "
        } else {
            indent
        };
        let line = format!("{time}  {indent}[{agent}] {}", describe(e));
        match folded.counts.get(&key) {
            Some(n) if e["kind"] == "process.exec" => {
                let count = format!(" ×{n}");
                let room = max.saturating_sub(count.chars().count()).max(8);
                println!("{}{count}", paint.verdicts(&fit(&line, room)));
            }
            _ => println!("{}", paint.verdicts(&fit(&line, max))),
        }
    }
    if left_out > 0 {
        println!(
            "({left_out} lines of identical sibling commands folded into their first one's (×N); --no-fold shows them)"
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The rule files `rules check` and `rules test` read: those named, else
/// the config's `[detect] rules` (see [`super::settings`]).
fn rule_paths(
    paths: &[std::path::PathBuf],
    config: Option<&std::path::Path>,
) -> anyhow::Result<Vec<std::path::PathBuf>> {
    if !paths.is_empty() {
        return Ok(paths.to_vec());
    }
    let settings = super::settings::Settings::load(config)?;
    if settings.config.detect.rules.is_empty() {
        anyhow::bail!(
            "no rule files: give PATHS, or a config (--config) whose [detect] rules names them"
        );
    }
    Ok(settings.config.detect.rules)
}

/// One match `sensor rules test` reports.
struct RuleMatch<'s> {
    rule: &'s crate::detect::RuleInfo,
    kind: crate::event::Kind,
    event: Value,
}

/// What `set` fires on the stored events of the runs `tested`, in order;
/// how many events they have; and how many earlier events seeded the
/// first-seen rules.
///
/// The first-seen rules start from the state the daemon had: the stored
/// events before and between the runs' own (of the kinds those rules apply
/// to; only of the runs of the same agents on the same host when every such
/// rule keys on `run.agent`, as the shipped one does) are replayed first, in
/// the daemon's order, so that a host an earlier run of the agent reached is
/// not listed as never seen. Correlations count the tested runs' events
/// only. What the store no longer holds (retention) or never held (`[store]
/// keep = "runs"` sums up events outside runs) is not replayed.
fn replay_rules<'s>(
    conn: &rusqlite::Connection,
    set: &'s crate::detect::RuleSet,
    tested: &[RunRow],
) -> anyhow::Result<(Vec<RuleMatch<'s>>, usize, u64)> {
    let runs: Vec<String> = tested.iter().map(|r| r.id.clone()).collect();
    let mut agents: Vec<String> = tested.iter().map(|r| r.agent.clone()).collect();
    agents.sort();
    agents.dedup();
    let host = tested.first().map(|r| r.host.clone()).unwrap_or_default();
    let events = query::events(
        conn,
        &EventFilter {
            runs: Some(runs.clone()),
            ..EventFilter::default()
        },
    )?;
    let kind_of = |e: &Value| {
        e["kind"]
            .as_str()
            .and_then(crate::event::Kind::parse)
            .filter(|k| *k != crate::event::Kind::Detection)
    };
    let mut state = crate::detect::Correlator::default();
    let mut matches = Vec::new();
    let mut test = |state: &mut crate::detect::Correlator, se: &StoredEvent| {
        let Some(kind) = kind_of(&se.event) else {
            return;
        };
        for rule in set.evaluate(state, kind, &se.event) {
            matches.push(RuleMatch {
                rule,
                kind,
                event: se.event.clone(),
            });
        }
    };
    let first_seen_kinds: Vec<&str> = set
        .first_seen_kinds()
        .into_iter()
        .map(crate::event::Kind::as_str)
        .collect();
    let mut pending = events.iter().peekable();
    let mut seeded = 0;
    if let Some(last) = events.last() {
        let earlier = query::Earlier {
            before_id: last.id,
            kinds: &first_seen_kinds,
            exclude_runs: &runs,
            agents: set
                .first_seen_keys_on("run.agent")
                .then_some((agents.as_slice(), host.as_str())),
        };
        seeded = query::earlier_events(conn, &earlier, |se| {
            while let Some(next) = pending.next_if(|e| e.id < se.id) {
                test(&mut state, next);
            }
            if let Some(kind) = kind_of(&se.event) {
                set.remember(&mut state, kind, &se.event);
            }
        })?;
    }
    for se in pending {
        test(&mut state, se);
    }
    Ok((matches, events.len(), seeded))
}

/// `sensor rules check` and `sensor rules test`.
pub fn rules(cmd: &super::args::RulesCommand) -> anyhow::Result<ExitCode> {
    use super::args::RulesCommand;
    match cmd {
        RulesCommand::Check { paths, config } => {
            let paths = rule_paths(paths, config.path.as_deref())?;
            let set = crate::detect::RuleSet::load(&paths)?;
            let infos = set.rules().iter().map(|r| (&r.info, "")).chain(
                set.correlations()
                    .iter()
                    .map(|c| (&c.info, " (correlation)")),
            );
            for (info, what) in infos {
                println!(
                    "{}: ok: {} [{}] {}{what}",
                    escape_terminal(&info.file),
                    escape_terminal(&info.id),
                    info.level,
                    escape_terminal(&info.title)
                );
            }
            println!("{} rules ok", set.len() + set.correlations().len());
            Ok(ExitCode::SUCCESS)
        }
        RulesCommand::Test {
            paths,
            run,
            subtree,
            db,
        } => {
            let paths = rule_paths(paths, db.config.path.as_deref())?;
            let set = crate::detect::RuleSet::load(&paths)?;
            let conn = open_for_reading(&db.db)?;
            let run = query::find_run(&conn, run)?;
            let tested = if *subtree {
                query::subtree(&conn, &run.id)?
            } else {
                vec![run]
            };
            let (matches, events, seeded) = replay_rules(&conn, &set, &tested)?;
            let mut rules_fired = std::collections::BTreeSet::new();
            for m in &matches {
                rules_fired.insert(m.rule.id.as_str());
                let seq = m.event["seq"].as_u64().unwrap_or_default();
                if db.json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "rule_id": m.rule.id,
                            "title": m.rule.title,
                            "level": m.rule.level,
                            "event_seq": seq,
                            "event_kind": m.kind.as_str(),
                            "run_id": m.event["run"]["id"],
                        })
                    );
                } else {
                    println!(
                        "{}",
                        fit(
                            &format!(
                                "{seq:>8}  [{}] {}  {}",
                                m.rule.level,
                                escape_terminal(&m.rule.id),
                                describe(&m.event)
                            ),
                            width()
                        )
                    );
                }
            }
            let fired = matches.len();
            if !db.json {
                println!(
                    "{} of {} (of {}) on {}",
                    super::display::count(fired, "match", "matches"),
                    super::display::count(rules_fired.len(), "rule", "rules"),
                    set.len() + set.correlations().len(),
                    super::display::count(events, "event", "events")
                );
                if !set.first_seen_kinds().is_empty() {
                    println!("(first-seen rules started from {seeded} earlier stored events)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_shown_once_per_denial_and_coloured_only_when_asked() {
        let deny = |kind: &str, enforced: bool| {
            json!({"kind": kind, "process": {"pid": 7, "exe": "/usr/bin/env", "argv": ["env"]},
                   "exec": {"result": "ok", "filename": "/usr/bin/env"},
                   "policy": {"verdict": "deny", "rule": "exec.allow (no rule matches)", "enforced": enforced}})
        };
        let blocked = describe(&deny("process.exec", true));
        let audit = describe(&deny("process.exec", false));
        let twin = describe(&deny("policy.violation", true));
        assert!(blocked.ends_with(" [deny] blocked"), "{blocked}");
        assert!(
            audit.ends_with(" [deny] would have been blocked (audit)"),
            "{audit}"
        );
        assert!(
            twin.contains("/usr/bin/env [violation] rule exec.allow (no rule matches)")
                && !twin.contains("[deny]"),
            "{twin}"
        );
        let mut once = Denials::default();
        let mut seq = 0;
        let counted = [deny("process.exec", true), deny("policy.violation", true)]
            .into_iter()
            .filter_map(|mut e| {
                seq += 1;
                e["seq"] = seq.into();
                once.check(&e)
            })
            .count();
        assert_eq!(counted, 1, "the violation twin is not a second denial");
        let on = Paint { on: true };
        assert_eq!(
            on.verdicts(&blocked)
                .matches("\x1b[31;1m[deny] blocked\x1b[0m")
                .count(),
            1
        );
        assert!(on.verdicts(&audit).contains("\x1b[33;1m[deny] would"));

        // `events`: the verdict and the rule in fixed columns, whatever the
        // detail's length; a violation line names the binary and the rule.
        let mut columns = VerdictColumns::default();
        let rows = [
            deny("process.exec", true),
            deny("policy.violation", true),
            deny("process.exec", false),
            json!({"kind": "process.exec", "process": {"pid": 8, "argv": ["/usr/bin/true", "a long argument"]},
                   "exec": {"result": "ok"}, "policy": {"verdict": "allow", "rule": "exec.allow /usr/bin/"}}),
            json!({"kind": "process.exit", "process": {"pid": 9, "exe": "/x", "exit_code": 0}}),
        ];
        let cells: Vec<_> = rows.iter().map(verdict_cells).collect();
        for c in &cells {
            columns.widen(c);
        }
        let lines: Vec<(String, usize)> = rows
            .iter()
            .zip(&cells)
            .map(|(e, c)| columns.line("T", "run", c, &describe_columns(e, EVENTS_KIND_WIDTH)))
            .collect();
        let kind_at: Vec<usize> = lines
            .iter()
            .zip(&rows)
            .map(|((l, _), e)| l.find(e["kind"].as_str().unwrap()).unwrap())
            .collect();
        assert!(kind_at.windows(2).all(|w| w[0] == w[1]), "{lines:#?}");
        assert!(lines.iter().all(|(_, at)| *at == lines[0].1));
        assert!(
            lines[0]
                .0
                .contains("[deny] blocked  exec.allow (no rule matches)  process.exec"),
            "{}",
            lines[0].0
        );
        assert!(
            lines[1]
                .0
                .contains("[violation]     exec.allow (no rule matches)  policy.violation "),
            "{}",
            lines[1].0
        );
        assert!(lines[1].0.ends_with(" /usr/bin/env"), "{}", lines[1].0);
        assert!(lines[2].0.contains("[deny] audit "), "{}", lines[2].0);
        assert!(
            lines[3].0.contains("[allow]         exec.allow /usr/bin/ "),
            "{}",
            lines[3].0
        );
        assert_eq!(
            lines.iter().filter(|(l, _)| l.contains("[deny]")).count(),
            2,
            "one [deny] per denial"
        );
        let painted = on.cell(&lines[0].0, lines[0].1, &cells[0].0);
        assert!(
            painted.contains("\x1b[31;1m[deny] blocked\x1b[0m"),
            "{painted}"
        );
        assert_eq!(
            Paint { on: false }.cell(&lines[0].0, lines[0].1, &cells[0].0),
            lines[0].0
        );
        assert_eq!(Paint { on: false }.verdicts(&blocked), blocked);
    }

    /// `rules test`'s first-seen rules start from what the store holds
    /// before the run and between its events (same agent, same host), as
    /// the daemon's state did; not from what came after, from another agent
    /// or another host. A correlation counts the tested run only.
    #[test]
    fn rules_test_seeds_first_seen_from_the_agents_earlier_events() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let conn = crate::store::open_for_writing(&db).unwrap();
        for (id, agent, host) in [
            ("r1", "a", "h"),
            ("r2", "b", "h"),
            ("r3", "a", "other"),
            ("t", "a", "h"),
            ("r4", "a", "h"),
            ("r5", "a", "h"),
        ] {
            conn.execute(
                "INSERT INTO runs (id, agent, principal, root_id, depth, host, start_ns)
                 VALUES (?1, ?2, 'p', ?1, 0, ?3, 0)",
                rusqlite::params![id, agent, host],
            )
            .unwrap();
        }
        let connects = [
            ("r1", "a", "10.0.0.1"),
            ("r1", "a", "10.0.0.9"),
            ("r2", "b", "10.0.0.2"),
            ("r3", "a", "10.0.0.3"),
            ("t", "a", "10.0.0.1"),
            ("t", "a", "10.0.0.2"),
            ("t", "a", "10.0.0.3"),
            ("t", "a", "10.0.0.4"),
            ("t", "a", "10.0.0.4"),
            // Another run of the agent, while t runs: before t's own.
            ("r4", "a", "10.0.0.5"),
            ("t", "a", "10.0.0.5"),
            ("t", "a", "10.0.0.7"),
            // After t's last event: no effect on t.
            ("r5", "a", "10.0.0.7"),
        ];
        for (i, (run, agent, ip)) in connects.iter().enumerate() {
            let body = json!({"kind": "network.connect", "seq": i + 1,
                              "time": format!("2026-12-05T00:00:{i:02}Z"),
                              "run": {"id": run, "agent": agent},
                              "network": {"dst_ip": ip, "dst_port": 443}});
            conn.execute(
                "INSERT INTO events (seq, time_ns, kind, run_id, dst_ip, body)
                 VALUES (?1, 0, 'network.connect', ?2, ?3, ?4)",
                rusqlite::params![i + 1, run, ip, body.to_string()],
            )
            .unwrap();
        }
        let rules = dir.path().join("rules");
        std::fs::create_dir(&rules).unwrap();
        let pack = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/agent");
        for f in [
            "agent_never_seen_host.yml",
            "agent_net_connect.yml",
            "agent_many_hosts.yml",
        ] {
            std::fs::copy(pack.join(f), rules.join(f)).unwrap();
        }
        // A correlation over any run's connects: counts t's only.
        std::fs::write(
            rules.join("three.yml"),
            "title: seven hosts\nid: three\ncorrelation:\n  type: value_count\n  \
             rules: [agent_ip_connect]\n  group-by: [run.agent]\n  timespan: 1h\n  \
             condition:\n    gte: 7\n    field: network.dst_ip\n",
        )
        .unwrap();
        let set = crate::detect::RuleSet::load(&[rules]).unwrap();
        let tested = vec![query::find_run(&conn, "t").unwrap()];
        let (matches, events, seeded) = replay_rules(&conn, &set, &tested).unwrap();
        assert_eq!(events, 7);
        // r1's two and r4's (r2: another agent; r3: another host; r5: after).
        assert_eq!(seeded, 3);
        let never_seen: Vec<&str> = matches
            .iter()
            .filter(|m| m.rule.id == "4c8e2a6f-9b1d-4f3e-a7c5-1d6b8e3f2a14")
            .map(|m| m.event["network"]["dst_ip"].as_str().unwrap())
            .collect();
        assert_eq!(
            never_seen,
            ["10.0.0.2", "10.0.0.3", "10.0.0.4", "10.0.0.7"],
            "10.0.0.1 (an earlier run) and 10.0.0.5 (a run in between) were seen"
        );
        assert!(
            matches.iter().all(|m| m.rule.id != "three"),
            "t reached 6 addresses, 7 with the other runs' (not counted)"
        );
        // Of another agent: all its firsts.
        let other = vec![query::find_run(&conn, "r2").unwrap()];
        let (matches, _, _) = replay_rules(&conn, &set, &other).unwrap();
        assert_eq!(matches.len(), 1);
        assert_eq!(matches[0].event["network"]["dst_ip"], "10.0.0.2");
        // A first-seen rule that does not key on the agent: every earlier
        // event counts, whoever made it.
        std::fs::write(
            dir.path().join("rules/any.yml"),
            "title: any agent\nid: any\nlevel: low\nlogsource: {product: agent-sensor, \
             category: network_connection}\ndetection: {selection: {network.dst_ip|exists: true}, \
             condition: selection}\nfirst_seen: {fields: [network.dst_ip]}\n",
        )
        .unwrap();
        let set = crate::detect::RuleSet::load(&[dir.path().join("rules")]).unwrap();
        let (matches, _, seeded) = replay_rules(&conn, &set, &tested).unwrap();
        assert_eq!(seeded, 5, "every earlier event of another run");
        let any: Vec<&str> = matches
            .iter()
            .filter(|m| m.rule.id == "any")
            .map(|m| m.event["network"]["dst_ip"].as_str().unwrap())
            .collect();
        assert_eq!(any, ["10.0.0.4", "10.0.0.7"]);
    }
}

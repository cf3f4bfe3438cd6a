//! `sensor report RUN -o FILE.html`: one self-contained page (no script, no
//! network). Its sections, in order, each a function: a summary of the run
//! tree ([`summary_html`]), the timeline picture ([`picture_html`], an inline
//! SVG: [`svg`]), the denials, each counted once ([`denials_html`]), the
//! escape attempts, the run tokens, the sub-agent tree with each run's
//! process tree, identical sibling commands folded ([`trees_html`]), and
//! the timeline table ([`table_html`]), which truncates past a limit with a
//! note naming the `sensor events` command that shows the rest.

mod svg;

use std::{
    cell::Cell,
    collections::{HashMap, HashSet},
    process::ExitCode,
};

use anyhow::Context as _;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use super::{
    args::ReportArgs,
    display::{escape_terminal, exe_shown, shown_value},
    fold,
    query::{CallInfo, Denial, Denials, ProcNode, describe, processes, time_of_ns, tool_calls},
};
use crate::store::{
    open_for_reading,
    query::{self, EventFilter, StoredEvent},
    writer::RunRow,
};

// The page is written with `maud`: every spliced value is escaped for HTML
// by the template itself, so no string reaches the page raw. Strings from
// the store are first shown as the text views show them ([`shown`]).

/// A string from the store (agent, principal, run id, rule…) for the page:
/// control, bidi and invisible characters shown as visible escapes, as the
/// text views show them (a U+202E in an agent name must not reorder the
/// page's text); the template escapes it for HTML. Text already shown
/// escaped ([`describe`], [`ProcNode::command`], [`exe_shown`]) is spliced
/// as it is.
fn shown(s: &str) -> String {
    escape_terminal(s).into_owned()
}

fn verdict(e: &Value) -> Option<&str> {
    e.pointer("/policy/verdict").and_then(Value::as_str)
}

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#1d232a;background:#fbfbfc}
h1{font-size:1.5em;margin:0 0 .2em} h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #dde}
.meta{color:#555} code{font:12px ui-monospace,monospace;background:#eef0f3;padding:1px 4px;border-radius:3px}
ul.tree{list-style:none;padding-left:1.4em;border-left:1px dashed #ccd;margin:.2em 0}
.run{border:1px solid #ccd;border-radius:6px;padding:.4em .7em;margin:.5em 0;background:#fff}
.run .agent{font-weight:600} .badge{display:inline-block;padding:0 .5em;border-radius:9px;font-size:12px;background:#e7ecf3}
.badge.deny{background:#c62828;color:#fff} .badge.audit{background:#fff;color:#e65100;border:1px solid #e65100} .badge.allow{background:#2e7d32;color:#fff}
table{border-collapse:collapse;width:100%;background:#fff} th,td{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f1f3f6;position:sticky;top:0} td.t{white-space:nowrap;color:#555;font:12px ui-monospace,monospace}
td.n{text-align:right}
tr.deny td{background:#fdecea} tr.deny td.v{color:#b71c1c;font-weight:700}
tr.deny.audit td{background:#fff8e1} tr.deny.audit td.v{color:#e65100}
tr.escape td{background:#fff3e0} tr.escape.deny td{background:#fdecea}
tr.gap td{background:#f1f3f6;font-style:italic}
.badge.escape{background:#e65100;color:#fff} .count{font-weight:700;color:#1a4d8f}
li.call>.tool{font-weight:600;color:#4a148c} li.call>ul.tree{border-left:2px solid #b39ddb}
.denials{border:2px solid #c62828;border-radius:6px;padding:.5em 1em;background:#fdecea}
.escapes{border:2px solid #e65100;border-radius:6px;padding:.5em 1em;background:#fff3e0}
.summary{border:1px solid #ccd;border-radius:6px;padding:.5em 1em;background:#fff}
.summary table{width:auto;min-width:50%} .summary h3{font-size:1em;margin:.8em 0 .3em}
details.rows a{margin-right:.4em} details summary{cursor:pointer}
.full{white-space:pre-wrap;word-break:break-all}
.note{border-left:4px solid #1a4d8f;padding:.3em .8em;background:#eef3fa}
.none{color:#2e7d32}
svg.timeline{background:#fff;border:1px solid #dde;max-width:100%;height:auto}
svg text{font:11px system-ui,sans-serif;fill:#333} svg text.axis{fill:#777;font-size:10px}
svg line.axis{stroke:#eee} svg rect.span{fill:#eef3fa;stroke:#c5d3e8}
svg .exec{stroke:#1a4d8f;fill:#1a4d8f;stroke-width:1.5} svg .connect{stroke:#2e7d32;fill:#2e7d32;stroke-width:1.5}
svg .blocked{fill:#c62828;stroke:#7f0000} svg .audit{fill:#fff;stroke:#e65100;stroke-width:2}
svg .escape{fill:#6a1b9a;stroke:#38006b} svg .detection{stroke:#111;stroke-width:2.5;fill:none}
";

/// Rows of the timeline table at most before it truncates (denials and
/// escape attempts past it are still shown, up to [`EXTRA_LIMIT`]).
const TABLE_LIMIT: usize = 2000;
/// Denial and escape rows shown past [`TABLE_LIMIT`], at most.
const EXTRA_LIMIT: usize = 1000;
/// Process rows of the trees at most (folded rows count once).
const TREE_LIMIT: usize = 2000;
/// Members listed inside a folded row at most.
const MEMBER_LIMIT: usize = 50;
/// Rows of the summary's executables and destinations tables at most.
const SUMMARY_ROWS: usize = 40;
/// Links to rows under one figure at most.
const LINK_LIMIT: usize = 100;
/// Items of the denials and escapes boxes at most.
const BOX_LIMIT: usize = 500;
/// A command line or event text is cut to this many characters; the whole
/// text is behind `<details>`.
const TEXT_WIDTH: usize = 160;
/// The whole text behind `<details>` at most (characters).
const FULL_LIMIT: usize = 16_384;

/// The unix time in ns of an event's `time`.
fn event_ns(e: &Value) -> Option<i64> {
    e["time"]
        .as_str()
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
        .map(crate::store::unix_ns)
}

/// A duration in ns, as `1h 2m 3s` (whole seconds; `0s` below one).
fn duration_text(ns: i64) -> String {
    let ns = u64::try_from(ns).unwrap_or(0);
    if ns < 60_000_000_000 {
        // Under a minute: to the millisecond (`0.064s`).
        return format!("{}.{:03}s", ns / 1_000_000_000, ns / 1_000_000 % 1000);
    }
    humantime::format_duration(std::time::Duration::from_secs(ns / 1_000_000_000)).to_string()
}

/// Everything the sections read, computed once.
struct Report<'a> {
    root: &'a RunRow,
    /// The runs in tree order (parents before their children, depth first).
    runs: Vec<&'a RunRow>,
    events: &'a [StoredEvent],
    procs: HashMap<&'a str, Vec<ProcNode>>,
    /// Each run's tool calls by id (shown above their processes).
    calls: HashMap<&'a str, HashMap<String, CallInfo>>,
    /// Each denial once, with how it ended.
    denials: Vec<(&'a StoredEvent, Denial)>,
    /// Per run: (blocked, audit) denials, escape attempts.
    run_denials: HashMap<&'a str, (usize, usize)>,
    run_escapes: HashMap<&'a str, usize>,
    agent_of: HashMap<&'a str, &'a str>,
    /// The ids of the events whose rows are in the table.
    shown: HashSet<i64>,
    /// The table's rows: the first [`TABLE_LIMIT`], then the denials and
    /// escape attempts past it.
    table: Vec<&'a StoredEvent>,
    /// The first event the table leaves out, and how many it leaves out.
    left_out: Option<(&'a StoredEvent, usize)>,
    fold: bool,
}

fn tree_order<'a>(root: &'a RunRow, runs: &'a [RunRow]) -> Vec<&'a RunRow> {
    fn walk<'a>(run: &'a RunRow, runs: &'a [RunRow], out: &mut Vec<&'a RunRow>) {
        out.push(run);
        for child in runs
            .iter()
            .filter(|r| r.parent_id.as_deref() == Some(run.id.as_str()))
        {
            if !out.iter().any(|o| o.id == child.id) {
                walk(child, runs, out);
            }
        }
    }
    let mut out = Vec::with_capacity(runs.len());
    walk(root, runs, &mut out);
    // A run whose parent is not in the list (cannot happen for a subtree,
    // but a page must not drop a run).
    for r in runs {
        if !out.iter().any(|o| o.id == r.id) {
            out.push(r);
        }
    }
    out
}

impl<'a> Report<'a> {
    fn new(root: &'a RunRow, runs: &'a [RunRow], events: &'a [StoredEvent], fold: bool) -> Self {
        let mut by_run: HashMap<&str, Vec<&StoredEvent>> = HashMap::new();
        let mut once = Denials::default();
        let mut denials = Vec::new();
        let mut run_denials: HashMap<&str, (usize, usize)> = HashMap::new();
        let mut run_escapes: HashMap<&str, usize> = HashMap::new();
        for e in events {
            let run = e.event.pointer("/run/id").and_then(Value::as_str);
            if let Some(id) = run {
                by_run.entry(id).or_default().push(e);
            }
            if let Some(d) = once.check(&e.event) {
                denials.push((e, d));
                if let Some(id) = run {
                    let counts = run_denials.entry(id).or_default();
                    match d {
                        Denial::Blocked => counts.0 += 1,
                        Denial::Audit => counts.1 += 1,
                    }
                }
            }
            if e.escape
                && let Some(id) = run
            {
                *run_escapes.entry(id).or_default() += 1;
            }
        }
        let procs = runs
            .iter()
            .map(|r| {
                (
                    r.id.as_str(),
                    processes(
                        by_run
                            .get(r.id.as_str())
                            .map(Vec::as_slice)
                            .unwrap_or_default(),
                    ),
                )
            })
            .collect();
        let calls = runs
            .iter()
            .map(|r| {
                (
                    r.id.as_str(),
                    tool_calls(
                        by_run
                            .get(r.id.as_str())
                            .map(Vec::as_slice)
                            .unwrap_or_default(),
                    ),
                )
            })
            .collect();
        let mut table: Vec<&StoredEvent> = events.iter().take(TABLE_LIMIT).collect();
        let left_out = events
            .get(TABLE_LIMIT)
            .map(|first| (first, events.len() - TABLE_LIMIT));
        let noted: HashSet<i64> = denials.iter().map(|(e, _)| e.id).collect();
        table.extend(
            events
                .iter()
                .skip(TABLE_LIMIT)
                .filter(|e| e.escape || noted.contains(&e.id))
                .take(EXTRA_LIMIT),
        );
        Self {
            root,
            runs: tree_order(root, runs),
            events,
            procs,
            calls,
            denials,
            run_denials,
            run_escapes,
            agent_of: runs
                .iter()
                .map(|r| (r.id.as_str(), r.agent.as_str()))
                .collect(),
            shown: table.iter().map(|e| e.id).collect(),
            table,
            left_out,
            fold,
        }
    }

    /// The command that lists what the table leaves out.
    fn events_command(&self, since: &str) -> String {
        format!(
            "sensor events --run {} --subtree --since {}",
            shown(&self.root.id),
            shown(since)
        )
    }

    /// A link to an event's row, or its number alone when the row is left
    /// out of the table.
    fn row_link(&self, id: i64) -> Markup {
        html! {
            @if self.shown.contains(&id) {
                a href={ "#e" (id) } { "#" (id) }
            } @else {
                span title="left out of the timeline table" { "#" (id) }
            }
        }
    }

    /// The rows a figure counts: a `<details>` with a link to each (up to
    /// [`LINK_LIMIT`]).
    fn rows_links(&self, ids: &[i64]) -> Markup {
        html! {
            @if !ids.is_empty() {
                " " details.rows {
                    summary { "rows" }
                    @for id in ids.iter().take(LINK_LIMIT) { (self.row_link(*id)) " " }
                    @if ids.len() > LINK_LIMIT { "… and " (ids.len() - LINK_LIMIT) " more" }
                }
            }
        }
    }
}

/// Text as shown, cut to [`TEXT_WIDTH`]; the whole text (up to
/// [`FULL_LIMIT`]) behind `<details>` when cut.
fn long_text(text: &str) -> Markup {
    long_text_after(&html! {}, text)
}

/// [`long_text`] after `prefix` (a process's pid), which stays on the same
/// line as the cut text.
fn long_text_after(prefix: &Markup, text: &str) -> Markup {
    let (cut, was_cut) = fold::cut(text, TEXT_WIDTH);
    html! {
        @if was_cut {
            details.argv {
                summary { (prefix) code { (cut) } }
                @let (full, too_long) = fold::cut(text, FULL_LIMIT);
                code.full { (full) }
                @if too_long { " (cut at " (FULL_LIMIT) " characters; `sensor events --json` shows it all)" }
            }
        } @else {
            (prefix) code { (cut) }
        }
    }
}

/// The summary: per run of the tree its agent, principal, labels, start,
/// duration and depth; then what the tree did, each figure with links to
/// the rows it counts.
fn summary_html(r: &Report<'_>) -> Markup {
    let now_end = r
        .events
        .last()
        .and_then(|e| event_ns(&e.event))
        .unwrap_or(r.root.start_ns);
    // Executables: exec events by exe.
    let mut exes: Vec<(String, Vec<i64>)> = Vec::new();
    let mut exe_index: HashMap<String, usize> = HashMap::new();
    // Destinations: (address, transport) → rows, allowed, blocked, audit.
    type Dest = (String, String, Vec<i64>, usize, usize, usize);
    let mut dests: Vec<Dest> = Vec::new();
    let mut dest_index: HashMap<(String, String), usize> = HashMap::new();
    let mut processes = 0;
    let mut tokens = Vec::new();
    let mut detections = Vec::new();
    for list in r.procs.values() {
        processes += list.len();
    }
    let denial_of_id: HashMap<i64, Denial> = r.denials.iter().map(|(e, d)| (e.id, *d)).collect();
    for se in r.events {
        let e = &se.event;
        match e["kind"].as_str().unwrap_or_default() {
            "process.exec" if e["exec"]["result"] == "ok" => {
                let exe = exe_shown(&e["process"]).unwrap_or_else(|| "?".to_owned());
                let i = *exe_index.entry(exe.clone()).or_insert_with(|| {
                    exes.push((exe, Vec::new()));
                    exes.len() - 1
                });
                exes[i].1.push(se.id);
            }
            "network.connect" => {
                let n = &e["network"];
                let addr = if n["family"] == "unix" {
                    shown(n["path"].as_str().unwrap_or("?"))
                } else {
                    format!(
                        "{}:{}",
                        shown(n["dst_ip"].as_str().unwrap_or("?")),
                        shown_value(&n["dst_port"])
                    )
                };
                let transport = shown(n["transport"].as_str().unwrap_or(""));
                let i = *dest_index
                    .entry((addr.clone(), transport.clone()))
                    .or_insert_with(|| {
                        dests.push((addr, transport, Vec::new(), 0, 0, 0));
                        dests.len() - 1
                    });
                let d = &mut dests[i];
                d.2.push(se.id);
                match denial_of_id.get(&se.id) {
                    Some(Denial::Blocked) => d.4 += 1,
                    Some(Denial::Audit) => d.5 += 1,
                    None if verdict(e) == Some("allow") => d.3 += 1,
                    None => {}
                }
            }
            "token.issued" => tokens.push(se.id),
            k if k.starts_with("detection") => detections.push(se.id),
            _ => {}
        }
    }
    exes.sort_by(|a, b| b.1.len().cmp(&a.1.len()).then_with(|| a.0.cmp(&b.0)));
    // Denied destinations first: the cut never hides one.
    dests.sort_by(|a, b| {
        (b.4 + b.5)
            .cmp(&(a.4 + a.5))
            .then_with(|| b.2.len().cmp(&a.2.len()))
            .then_with(|| a.0.cmp(&b.0))
    });
    let blocked: Vec<i64> = r
        .denials
        .iter()
        .filter(|(_, d)| *d == Denial::Blocked)
        .map(|(e, _)| e.id)
        .collect();
    let audit: Vec<i64> = r
        .denials
        .iter()
        .filter(|(_, d)| *d == Denial::Audit)
        .map(|(e, _)| e.id)
        .collect();
    let escapes: Vec<i64> = r.events.iter().filter(|e| e.escape).map(|e| e.id).collect();
    let execs: usize = exes.iter().map(|(_, ids)| ids.len()).sum();
    html! {
        h2 id="summary" { "Summary" }
        div.summary {
            table.runs {
                thead { tr { th { "run" } th { "agent" } th { "principal" } th { "labels" } th { "started" } th { "duration" } th { "depth" } th { "policy" } } }
                tbody {
                    @for run in &r.runs {
                        @let depth = run.depth.saturating_sub(r.root.depth);
                        tr {
                            td {
                                @for _ in 0..depth { "└ " }
                                a href={ "#run-" (shown(&run.id)) } { code { (shown(&run.id)) } }
                            }
                            td { (shown(&run.agent)) }
                            td {
                                (shown(&run.principal))
                                @if let Some(claimed) = &run.principal_claimed { " (claimed " (shown(claimed)) ")" }
                            }
                            td { (labels_text(&run.labels)) }
                            td.t { (time_of_ns(run.start_ns)) }
                            td.t {
                                @match run.end_ns {
                                    Some(end) => (duration_text(end - run.start_ns)),
                                    None => { (duration_text(now_end - run.start_ns)) " so far (active)" }
                                }
                            }
                            td.n { (run.depth) }
                            td { (shown(run.policy.as_deref().unwrap_or("none"))) }
                        }
                    }
                }
            }
            p {
                span.count { (r.runs.len()) } " run" @if r.runs.len() != 1 { "s" }
                @if r.runs.len() > 1 { " (" (r.runs.len() - 1) " sub-run" @if r.runs.len() != 2 { "s" } ")" }
                " · " a href="#processes" { span.count { (processes) } " process" @if processes != 1 { "es" } }
                " · " span.count { (execs) } " exec" @if execs != 1 { "s" } " of " span.count { (exes.len()) } " executable" @if exes.len() != 1 { "s" }
                " · " span.count { (dests.iter().map(|d| d.2.len()).sum::<usize>()) } " connects to " span.count { (dests.len()) } " destination" @if dests.len() != 1 { "s" }
                " · " a href="#denials" { span.count { (r.denials.len()) } " denial" @if r.denials.len() != 1 { "s" } }
                @if !r.denials.is_empty() {
                    " (" span.count { (blocked.len()) } " blocked"
                    ", " span.count { (audit.len()) } " would have been blocked (audit))"
                }
                @if !escapes.is_empty() {
                    " · " a href="#escapes" { span.count { (escapes.len()) } " escape attempt" @if escapes.len() != 1 { "s" } }
                }
                @if !detections.is_empty() {
                    " · " a href="#detections" { span.count { (detections.len()) } " detection" @if detections.len() != 1 { "s" } }
                }
                @if !tokens.is_empty() {
                    " · " a href="#tokens" { span.count { (tokens.len()) } " run token" @if tokens.len() != 1 { "s" } }
                }
            }
            @if !exes.is_empty() {
                h3 { "Executables" }
                table.exes {
                    thead { tr { th { "executable" } th { "execs" } th { "rows" } } }
                    tbody {
                        @for (exe, ids) in exes.iter().take(SUMMARY_ROWS) {
                            tr { td { code { (exe) } } td.n { (ids.len()) } td { (r.rows_links(ids)) } }
                        }
                        @if exes.len() > SUMMARY_ROWS {
                            tr.gap { td colspan="3" {
                                "… " (exes.len() - SUMMARY_ROWS) " more executables: "
                                code { "sensor events --run " (shown(&r.root.id)) " --subtree --kind process.exec" }
                            } }
                        }
                    }
                }
            }
            @if !dests.is_empty() {
                h3 { "Network destinations" }
                table.dests {
                    thead { tr { th { "destination" } th { "transport" } th { "connects" } th { "verdicts" } th { "rows" } } }
                    tbody {
                        @for (addr, transport, ids, allowed, blocked, audit) in dests.iter().take(SUMMARY_ROWS) {
                            tr class=[(*blocked + *audit > 0).then_some("deny")] {
                                td { code { (addr) } } td { (transport) } td.n { (ids.len()) }
                                td { (verdicts_text(*allowed, *blocked, *audit)) }
                                td { (r.rows_links(ids)) }
                            }
                        }
                        @if dests.len() > SUMMARY_ROWS {
                            tr.gap { td colspan="5" {
                                "… " (dests.len() - SUMMARY_ROWS) " more destinations: "
                                code { "sensor events --run " (shown(&r.root.id)) " --subtree --kind network.connect" }
                            } }
                        }
                    }
                }
            }
        }
    }
}

/// A destination's verdicts: `3 allowed, 1 blocked`, or `—`.
fn verdicts_text(allowed: usize, blocked: usize, audit: usize) -> String {
    let parts: Vec<String> = [
        (allowed, "allowed"),
        (blocked, "blocked"),
        (audit, "would have been blocked (audit)"),
    ]
    .iter()
    .filter(|(n, _)| *n > 0)
    .map(|(n, what)| format!("{n} {what}"))
    .collect();
    if parts.is_empty() {
        "—".to_owned()
    } else {
        parts.join(", ")
    }
}

/// A run's labels (a JSON object) as `k=v, k=v`, or `—`.
fn labels_text(labels: &str) -> String {
    match serde_json::from_str::<Value>(labels) {
        Ok(Value::Object(map)) if !map.is_empty() => map
            .iter()
            .map(|(k, v)| format!("{}={}", shown(k), shown_value(v)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "—".to_owned(),
    }
}

/// The timeline picture: a lane per run, nested by depth.
fn picture_html(r: &Report<'_>) -> Markup {
    let mut lanes: Vec<svg::Lane<'_>> = r
        .runs
        .iter()
        .map(|run| svg::Lane {
            // The id as the text views shorten it (a UUIDv7's first 8
            // characters are the same for every run of a month).
            label: format!(
                "{} {}",
                shown(&run.agent),
                shown(run.id.get(..13).unwrap_or(&run.id))
            ),
            id: shown(&run.id),
            depth: run.depth.saturating_sub(r.root.depth),
            start_ns: run.start_ns,
            end_ns: run.end_ns.unwrap_or(run.start_ns),
            marks: Vec::new(),
        })
        .collect();
    let lane_of: HashMap<&str, usize> = r
        .runs
        .iter()
        .enumerate()
        .map(|(i, run)| (run.id.as_str(), i))
        .collect();
    let denial_of_id: HashMap<i64, Denial> = r.denials.iter().map(|(e, d)| (e.id, *d)).collect();
    let (mut t0, mut t1) = (r.root.start_ns, r.root.end_ns.unwrap_or(r.root.start_ns));
    for se in r.events {
        let Some(ns) = event_ns(&se.event) else {
            continue;
        };
        t0 = t0.min(ns);
        t1 = t1.max(ns);
        let Some(&lane) = se
            .event
            .pointer("/run/id")
            .and_then(Value::as_str)
            .and_then(|id| lane_of.get(id))
        else {
            continue;
        };
        let kind = se.event["kind"].as_str().unwrap_or_default();
        let mut marks = Vec::with_capacity(2);
        match kind {
            "process.exec" => marks.push(svg::MarkKind::Exec),
            "network.connect" => marks.push(svg::MarkKind::Connect),
            k if k.starts_with("detection") => marks.push(svg::MarkKind::Detection),
            _ => {}
        }
        if let Some(d) = denial_of_id.get(&se.id) {
            marks.push(svg::MarkKind::Denial(*d));
        } else if se.escape {
            marks.push(svg::MarkKind::Escape);
        }
        let l = &mut lanes[lane];
        l.end_ns = l.end_ns.max(ns);
        for kind in marks {
            l.marks.push(svg::Mark {
                kind,
                ns,
                event: se,
                linked: r.shown.contains(&se.id),
            });
        }
    }
    for run in &r.runs {
        if let Some(end) = run.end_ns {
            t1 = t1.max(end);
        }
        t0 = t0.min(run.start_ns);
    }
    html! {
        h2 id="picture" { "Timeline picture" }
        (svg::timeline(&lanes, t0, t1))
    }
}

/// The denials, each once, with how it ended.
fn denials_html(r: &Report<'_>) -> Markup {
    html! {
        h2 id="denials" { "Policy denials" }
        @if r.denials.is_empty() {
            p.none { "No action of this run tree was denied." }
        } @else {
            div.denials {
                ul {
                    @for (e, d) in r.denials.iter().take(BOX_LIMIT) {
                        li {
                            @match d {
                                Denial::Blocked => b { "BLOCKED" },
                                Denial::Audit => { b { "NOT BLOCKED" } " (would have been blocked: audit)" }
                            }
                            " " (shown(e.event["time"].as_str().unwrap_or(""))) " — " (long_text(&describe(&e.event)))
                            " (rule " code { (shown(e.event.pointer("/policy/rule").and_then(Value::as_str).unwrap_or(""))) } ") "
                            (r.row_link(e.id))
                        }
                    }
                }
                @if r.denials.len() > BOX_LIMIT {
                    p.note {
                        (r.denials.len() - BOX_LIMIT) " more denials are not listed: "
                        code { "sensor events --run " (shown(&r.root.id)) " --subtree | grep '\\[deny\\]'" }
                        " lists them all."
                    }
                }
            }
        }
    }
}

/// The context of the process trees: the row budget of the page.
struct Trees<'r, 'a> {
    report: &'r Report<'a>,
    rows: Cell<usize>,
    left_out: Cell<usize>,
}

/// The rows of siblings: each tool call that begins among them as an item
/// with its tool, id and input, its processes under it.
fn rows_html(
    siblings: &[&ProcNode],
    parent_call: Option<&str>,
    run: &str,
    kids: &fold::Kids<'_>,
    trees: &Trees<'_, '_>,
) -> Markup {
    let calls = trees.report.calls.get(run);
    html! {
        @for row in fold::rows(siblings, parent_call, trees.report.fold) {
            @match row {
                fold::Row::Group(g) => (proc_html(&g, run, kids, trees)),
                fold::Row::Call(id, groups) => {
                    @let info = calls.and_then(|c| c.get(id)).cloned().unwrap_or_default();
                    li.call {
                        span.tool { "tool call " (shown(&info.name)) " " code { (shown(id)) } }
                        br;
                        (long_text(&shown(&info.input)))
                        ul.tree {
                            @for g in &groups { (proc_html(g, run, kids, trees)) }
                        }
                    }
                }
            }
        }
    }
}

/// One row of a process tree: a process, or identical siblings folded into
/// one expandable row with a count, then the rows of their children.
fn proc_html(
    group: &[&ProcNode],
    run: &str,
    kids: &fold::Kids<'_>,
    trees: &Trees<'_, '_>,
) -> Markup {
    let Some(lead) = group.first() else {
        return html! {};
    };
    if trees.rows.get() >= TREE_LIMIT {
        trees.left_out.set(
            trees.left_out.get()
                + group.len()
                + group.iter().map(|m| kids.descendants(m)).sum::<usize>(),
        );
        return html! {};
    }
    trees.rows.set(trees.rows.get() + 1);
    let children = fold::group_children(group, kids);
    let pid = |n: &ProcNode| {
        html! {
            @if trees.report.shown.contains(&n.first_id) {
                a href={ "#e" (n.first_id) } { code { (n.pid) } }
            } @else {
                code { (n.pid) }
            }
        }
    };
    html! {
        li {
            @if group.len() == 1 {
                (long_text_after(&html! { (pid(lead)) " " }, &lead.label()))
                @if let Some(exit) = &lead.exit { " " span.badge { (shown(exit)) } }
                (proc_marks(lead))
            } @else {
                details.fold {
                    summary {
                        (pid(lead)) "+ " code { (fold::group_label(&group[..1], TEXT_WIDTH)) }
                        " " span.count { "×" (group.len()) }
                    }
                    ul.tree {
                        @for m in group.iter().take(MEMBER_LIMIT) {
                            li {
                                (long_text_after(&html! { (pid(m)) " " }, &m.label()))
                                @if let Some(exit) = &m.exit { " " span.badge { (shown(exit)) } }
                                (proc_marks(m))
                            }
                        }
                        @if group.len() > MEMBER_LIMIT {
                            li { "… and " (group.len() - MEMBER_LIMIT) " more" }
                        }
                    }
                }
            }
            @if !children.is_empty() {
                ul.tree {
                    (rows_html(&children, lead.tool_call.as_deref(), run, kids, trees))
                }
            }
        }
    }
}

/// A process row's marks: a policy denied one of its actions (blocked, or
/// would have been: audit), it attempted an escape. Such a process is never
/// folded ([`fold::group`]).
fn proc_marks(n: &ProcNode) -> Markup {
    html! {
        @match n.denial {
            Some(Denial::Blocked) => { " " span.badge.deny { "blocked" } }
            Some(Denial::Audit) => { " " span.badge.audit { "would have been blocked (audit)" } }
            None => {}
        }
        @if n.escape { " " span.badge.escape { "escape attempt" } }
    }
}

fn run_html(run: &RunRow, trees: &Trees<'_, '_>) -> Markup {
    let r = trees.report;
    let state = match (&run.end_ns, &run.end_reason) {
        (Some(ns), reason) => format!(
            "ended {} ({})",
            time_of_ns(*ns),
            reason.as_deref().unwrap_or("")
        ),
        (None, _) => "active".to_owned(),
    };
    let (blocked, audit) = r
        .run_denials
        .get(run.id.as_str())
        .copied()
        .unwrap_or_default();
    let escaped = r.run_escapes.get(run.id.as_str()).copied().unwrap_or(0);
    let all = r
        .procs
        .get(run.id.as_str())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let kids = fold::Kids::new(all);
    let children: Vec<&&RunRow> = r
        .runs
        .iter()
        .filter(|c| c.parent_id.as_deref() == Some(run.id.as_str()))
        .collect();
    let id = shown(&run.id);
    html! {
        li {
            div.run id={ "run-" (id) } {
                span.agent { (shown(&run.agent)) } " run " code { (id) }
                @if blocked > 0 { " " span.badge.deny { (blocked) " blocked" } }
                @if audit > 0 { " " span.badge.audit { (audit) " would have been blocked (audit)" } }
                @if escaped > 0 {
                    " " span.badge.escape {
                        (escaped) " escape attempt" @if escaped != 1 { "s" }
                    }
                }
                br;
                span.meta {
                    "principal " (shown(&run.principal))
                    @if let Some(claimed) = &run.principal_claimed {
                        " (claimed " (shown(claimed)) ")"
                    }
                    " · depth " (run.depth)
                    " · policy " (shown(run.policy.as_deref().unwrap_or("none")))
                    " · started " (time_of_ns(run.start_ns))
                    " by " (shown(run.started_by.as_deref().unwrap_or("?")))
                    " · " (shown(&state))
                }
                @if !kids.roots.is_empty() {
                    ul.tree {
                        (rows_html(&kids.roots, None, &run.id, &kids, trees))
                    }
                }
            }
            @if !children.is_empty() {
                ul.tree {
                    @for c in children { (run_html(c, trees)) }
                }
            }
        }
    }
}

/// The sub-agent tree with each run's process tree.
fn trees_html(r: &Report<'_>) -> Markup {
    let trees = Trees {
        report: r,
        rows: Cell::new(0),
        left_out: Cell::new(0),
    };
    let tree = run_html(r.root, &trees);
    html! {
        h2 id="processes" { "Sub-agent tree and processes" }
        @if r.fold {
            p.meta { "Identical sibling commands (same executable, arguments equal apart from ids, numbers and temporary names) are folded into one row with a count; `sensor report --no-fold` shows each." }
        }
        ul.tree style="border:0;padding:0" { (tree) }
        @if trees.left_out.get() > 0 {
            p.note {
                (trees.left_out.get()) " more processes are not shown (the trees stop at " (TREE_LIMIT) " rows): "
                code { "sensor tree " (shown(&r.root.id)) } " shows them all."
            }
        }
    }
}

/// The timeline table: every event up to [`TABLE_LIMIT`], then only the
/// denials and escape attempts, with a note on what is left out and the
/// command that shows it.
fn table_html(r: &Report<'_>) -> Markup {
    let kept_after = r.table.len().saturating_sub(TABLE_LIMIT);
    let denial_of_id: HashMap<i64, Denial> = r.denials.iter().map(|(e, d)| (e.id, *d)).collect();
    let time = |ev: &Value| shown(ev["time"].as_str().unwrap_or(""));
    let row = |e: &StoredEvent| {
        let ev = &e.event;
        let run_id = ev.pointer("/run/id").and_then(Value::as_str).unwrap_or("");
        let denial = denial_of_id.get(&e.id).copied();
        let mut class = Vec::new();
        if e.escape {
            class.push("escape");
        }
        match denial {
            Some(Denial::Blocked) => class.push("deny"),
            Some(Denial::Audit) => class.extend(["deny", "audit"]),
            None => {}
        }
        let v = match (denial, ev["kind"] == "policy.violation", verdict(ev)) {
            (Some(Denial::Blocked), _, _) => "deny: blocked".to_owned(),
            (Some(Denial::Audit), _, _) => "deny: would have been blocked (audit)".to_owned(),
            (None, true, Some(_)) => "violation (the denial above)".to_owned(),
            (None, _, Some(v)) => shown(v),
            (None, _, None) => "—".to_owned(),
        };
        html! {
            tr id={ "e" (e.id) } class=[(!class.is_empty()).then(|| class.join(" "))] {
                td.t { (time(ev)) }
                td { (shown(r.agent_of.get(run_id).copied().unwrap_or(""))) }
                td { code { (shown(run_id.get(..13).unwrap_or(run_id))) } }
                td { (long_text(&describe(ev))) }
                td.v { (v) }
            }
        }
    };
    html! {
        h2 id="timeline" { "Timeline" }
        @if let Some((first, count)) = r.left_out {
            p.note {
                "The table shows the first " (TABLE_LIMIT) " of " (r.events.len()) " events; "
                (count) " events from " (time(&first.event)) " on are left out"
                @if kept_after > 0 { " except " (kept_after) " denials and escape attempts, listed after them" }
                ". " code { (r.events_command(first.event["time"].as_str().unwrap_or(""))) } " shows them."
            }
        }
        table {
            thead {
                tr { th { "time" } th { "agent" } th { "run" } th { "event" } th { "verdict" } }
            }
            tbody {
                @for e in r.table.iter().take(TABLE_LIMIT) { (row(e)) }
                @if let Some((first, count)) = r.left_out {
                    tr.gap {
                        td colspan="5" {
                            "… " (count) " events left out here"
                            @if kept_after > 0 { "; the denials and escape attempts among them follow" }
                            " (" code { (r.events_command(first.event["time"].as_str().unwrap_or(""))) } ")"
                        }
                    }
                }
                @for e in r.table.iter().skip(TABLE_LIMIT) { (row(e)) }
            }
        }
    }
}

/// The page for `root` and its subtree.
fn page(root: &RunRow, runs: &[RunRow], events: &[StoredEvent], fold: bool) -> String {
    let r = Report::new(root, runs, events, fold);
    let (id, agent) = (shown(&root.id), shown(&root.agent));
    let mut page = html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                title { "Run " (id) " · " (agent) }
                style { (PreEscaped(STYLE)) }
            }
            body {
                h1 { (agent) " · run " code { (id) } }
                p.meta {
                    "principal " (shown(&root.principal))
                    " · " (runs.len()) " run" @if runs.len() != 1 { "s" } " · " (events.len()) " event" @if events.len() != 1 { "s" } " · generated "
                    (humantime::format_rfc3339_seconds(std::time::SystemTime::now()))
                }
                (summary_html(&r))
                (picture_html(&r))
                (denials_html(&r))
                (detections_html(events))
                (escapes_html(&r))
                (tokens_html(events))
                (trees_html(&r))
                (table_html(&r))
            }
        }
    }
    .into_string();
    page.push('\n');
    page
}

/// The run tokens issued to the runs (`token.issued`): to whom, with what
/// scopes, until when. Never the tokens themselves (the events hold none).
fn tokens_html(events: &[StoredEvent]) -> Markup {
    let tokens: Vec<&Value> = events
        .iter()
        .map(|e| &e.event)
        .filter(|ev| ev["kind"] == "token.issued")
        .collect();
    let text = |v: &Value| shown(v.as_str().unwrap_or(""));
    html! {
        h2 id="tokens" { "Run tokens" }
        @if tokens.is_empty() {
            p.none { "No run of this tree asked for a run token." }
        } @else {
            table {
                thead {
                    tr { th { "issued" } th { "run" } th { "audience" } th { "scopes" } th { "expires" } th { "jti" } }
                }
                tbody {
                    @for ev in tokens {
                        @let scopes: Vec<String> = ev["token"]["scopes"]
                            .as_array()
                            .map(|s| s.iter().map(text).collect())
                            .unwrap_or_default();
                        tr {
                            td.t { (text(&ev["time"])) }
                            td { code { (text(&ev["run"]["id"])) } }
                            td { (text(&ev["token"]["aud"])) }
                            td { @if scopes.is_empty() { "—" } @else { (scopes.join(" ")) } }
                            td.t { (text(&ev["token"]["exp"])) }
                            td { code { (text(&ev["token"]["jti"])) } }
                        }
                    }
                }
            }
        }
    }
}

/// The detections (Sigma rules of `[detect]` that fired), next to the
/// denials: level, rule, and the event each matched.
fn detections_html(events: &[StoredEvent]) -> Markup {
    let found: Vec<&Value> = events
        .iter()
        .map(|e| &e.event)
        .filter(|ev| ev["kind"] == "detection")
        .collect();
    let text = |v: &Value| shown(v.as_str().unwrap_or(""));
    html! {
        h2 id="detections" { "Detections" }
        @if found.is_empty() {
            p.none { "No detection rule fired on this run tree." }
        } @else {
            div.denials {
                ul {
                    @for ev in found {
                        @let d = &ev["detection"];
                        li {
                            b { (text(&d["level"]).to_uppercase()) } " " (text(&ev["time"]))
                            " — " (text(&d["title"]))
                            " (rule " code { (text(&d["rule_id"])) } ", "
                            (text(&d["event_kind"])) " seq " (d["event_seq"].as_u64().unwrap_or(0))
                            ", run " code { (text(&ev["run"]["id"])) } ")"
                        }
                    }
                }
            }
        }
    }
}

/// The escape attempts box: what the store marked (a process or the sensor
/// tampered with, a raw socket, a denied Unix connect), each with how it
/// ended: blocked (killed or refused) or only reported.
fn escapes_html(r: &Report<'_>) -> Markup {
    let escapes: Vec<&StoredEvent> = r.events.iter().filter(|e| e.escape).collect();
    let outcome = |ev: &Value| match ev["tamper"]["repaired"].as_bool() {
        Some(true) => "PUT BACK",
        Some(false) => "NOT PUT BACK",
        None if ev["tamper"]["killed"] == true
            || ev.pointer("/policy/enforced") == Some(&Value::Bool(true)) =>
        {
            "BLOCKED"
        }
        None => "NOT BLOCKED",
    };
    html! {
        h2 id="escapes" { "Escape attempts" }
        @if escapes.is_empty() {
            p.none {
                "No process of this run tree reached into another process or \
                 the sensor, opened a raw socket, or was denied a Unix socket."
            }
        } @else {
            div.escapes {
                ul {
                    @for e in escapes.iter().take(BOX_LIMIT) {
                        @let ev = &e.event;
                        li {
                            b { (outcome(ev)) } " " (shown(ev["time"].as_str().unwrap_or("")))
                            " — " (describe(ev))
                            @if let Some(pid) = ev["process"]["pid"].as_u64() {
                                " by " code { (pid) } " "
                                (exe_shown(&ev["process"]).unwrap_or_else(|| "?".to_owned()))
                            }
                            @if let Some(rule) = ev.pointer("/policy/rule").and_then(Value::as_str) {
                                " (rule " code { (shown(rule)) } ")"
                            }
                            " " (r.row_link(e.id))
                        }
                    }
                }
                @if escapes.len() > BOX_LIMIT {
                    p.note {
                        (escapes.len() - BOX_LIMIT) " more escape attempts are not listed: "
                        code { "sensor events --run " (shown(&r.root.id)) " --subtree --escapes" }
                        " lists them all."
                    }
                }
            }
        }
    }
}

pub fn execute(args: &ReportArgs) -> anyhow::Result<ExitCode> {
    let conn = open_for_reading(&args.db)?;
    let root = query::find_run(&conn, &args.run)?;
    let runs = query::subtree(&conn, &root.id)?;
    let events = query::events(
        &conn,
        &EventFilter {
            runs: Some(runs.iter().map(|r| r.id.clone()).collect()),
            ..EventFilter::default()
        },
    )?;
    let html = super::provenance::with_record_section(
        page(&root, &runs, &events, !args.no_fold),
        &conn,
        &runs,
        &args.db,
        &args.state_dir,
    );
    std::fs::write(&args.output, html)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "wrote {} ({}, {})",
        args.output.display(),
        super::display::count(runs.len(), "run", "runs"),
        super::display::count(events.len(), "event", "events")
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_and_marks_denials() {
        let root = RunRow {
            id: "r1".into(),
            agent: "<script>bot</script>".into(),
            principal: "alice".into(),
            root_id: "r1".into(),
            labels: "{}".into(),
            ..RunRow::default()
        };
        let deny = StoredEvent {
            id: 1,
            escape: false,
            event: serde_json::json!({"kind":"network.connect","time":"t","run":{"id":"r1"},
                "process":{"pid":5,"key":"k"},"network":{"transport":"tcp","dst_ip":"203.0.113.7","dst_port":443,"result":"error"},
                "policy":{"verdict":"deny","rule":"connect.allow"}}),
        };
        let html = page(&root, std::slice::from_ref(&root), &[deny], true);
        assert!(!html.contains("<script>"), "agent names are escaped");
        assert!(html.contains("&lt;script&gt;bot"));
        assert!(html.contains("class=\"deny audit\""), "not enforced: audit");
        assert!(html.contains("<b>NOT BLOCKED</b>") && html.contains("203.0.113.7"));
        assert!(html.contains("<span class=\"count\">1</span> denial</a>"));
        assert!(
            !html.contains("http://") && !html.contains("https://"),
            "self-contained"
        );
    }

    #[test]
    fn run_tokens_are_listed_with_audience_scopes_and_expiry() {
        let root = RunRow {
            id: "r1".into(),
            agent: "bot".into(),
            principal: "alice".into(),
            root_id: "r1".into(),
            labels: "{}".into(),
            ..RunRow::default()
        };
        let quiet = page(&root, std::slice::from_ref(&root), &[], true);
        assert!(quiet.contains("No run of this tree asked for a run token."));
        let issued = StoredEvent {
            id: 1,
            escape: false,
            event: serde_json::json!({"kind":"token.issued","time":"t1","run":{"id":"r1"},
                "process":{"pid":5,"key":"k"},
                "token":{"jti":"j-1","aud":"<vault>","iss":"i","sub":"s","iat":"t1",
                         "exp":"2026-12-05T03:05:00Z","scopes":["repo:read","db:read"],"kid":"k"}}),
        };
        let html = page(&root, std::slice::from_ref(&root), &[issued], true);
        let at = html
            .find("<h2 id=\"tokens\">Run tokens</h2>")
            .expect("the tokens section");
        let listed = &html[at..html.find("Sub-agent tree").unwrap()];
        assert!(
            listed.contains("&lt;vault&gt;")
                && listed.contains("repo:read db:read")
                && listed.contains("2026-12-05T03:05:00Z")
                && listed.contains("j-1"),
            "{listed}"
        );
    }

    #[test]
    fn detections_are_listed_next_to_the_denials() {
        let root = RunRow {
            id: "r1".into(),
            agent: "bot".into(),
            principal: "alice".into(),
            root_id: "r1".into(),
            labels: "{}".into(),
            ..RunRow::default()
        };
        let quiet = page(&root, std::slice::from_ref(&root), &[], true);
        assert!(quiet.contains("No detection rule fired on this run tree."));
        let hit = StoredEvent {
            id: 1,
            escape: false,
            event: serde_json::json!({"kind":"detection","time":"t1","run":{"id":"r1"},
                "detection":{"rule_id":"ssh-<b>","title":"reads <ssh> keys","level":"high",
                             "tags":[],"rule_file":"f","event_seq":41,"event_kind":"process.exec"}}),
        };
        let html = page(&root, std::slice::from_ref(&root), &[hit], true);
        let at = html
            .find("<h2 id=\"detections\">Detections</h2>")
            .expect("the section");
        let listed = &html[at..html
            .find("<h2 id=\"escapes\">Escape attempts</h2>")
            .unwrap()];
        assert!(
            listed.contains("<b>HIGH</b>")
                && listed.contains("reads &lt;ssh&gt; keys")
                && listed.contains("ssh-&lt;b&gt;")
                && listed.contains("process.exec seq 41"),
            "{listed}"
        );
    }

    #[test]
    fn escape_attempts_are_listed_before_the_tree_and_marked() {
        let root = RunRow {
            id: "r1".into(),
            agent: "bot".into(),
            principal: "alice".into(),
            root_id: "r1".into(),
            labels: "{}".into(),
            ..RunRow::default()
        };
        let quiet = page(&root, std::slice::from_ref(&root), &[], true);
        assert!(quiet.contains("<h2 id=\"escapes\">Escape attempts</h2>"));
        assert!(quiet.contains("No process of this run tree reached into another process"));
        let tamper = StoredEvent {
            id: 1,
            escape: true,
            event: serde_json::json!({"kind":"process.tamper","time":"t1","run":{"id":"r1"},
                "process":{"pid":5,"key":"k","exe":"/usr/bin/gdb"},
                "tamper":{"method":"ptrace","what":"ptrace attach","object":"pid 77 (/usr/bin/sleep)",
                          "detected":"kernel","target":{"pid":77,"key":"t","run":null},"killed":true},
                "policy":{"verdict":"deny","rule":"tamper (a process outside the run, or the sensor)","enforced":true}}),
        };
        let unix = StoredEvent {
            id: 2,
            escape: true,
            event: serde_json::json!({"kind":"network.connect","time":"t2","run":{"id":"r1"},
                "process":{"pid":6,"key":"k6","exe":"/usr/bin/docker"},
                "network":{"transport":"stream","family":"unix","path":"/run/docker.sock","abstract":false,
                           "result":"ok","errno":null,"error":null},
                "policy":{"verdict":"deny","rule":"unix.allow (no rule matches)","enforced":false}}),
        };
        let html = page(&root, std::slice::from_ref(&root), &[tamper, unix], true);
        let box_at = html.find("class=\"escapes\"").expect("the escapes box");
        let tree_at = html.find("Sub-agent tree").unwrap();
        assert!(box_at < tree_at, "escape attempts come before the tree");
        let listed = &html[box_at..tree_at];
        assert!(
            listed.contains("<b>BLOCKED</b>")
                && listed.contains("ptrace attach: pid 77 (/usr/bin/sleep), of no run [killed]")
                && listed.contains("/usr/bin/gdb"),
            "{listed}"
        );
        assert!(
            listed.contains("<b>NOT BLOCKED</b>")
                && listed.contains("unix stream /run/docker.sock ok"),
            "{listed}"
        );
        assert!(html.contains("2 escape attempts"), "the run's badge");
        assert!(
            html.contains("<tr id=\"e1\" class=\"escape deny\">")
                && html.contains("<tr id=\"e2\" class=\"escape deny audit\">"),
            "timeline rows marked"
        );
    }

    #[test]
    fn bidi_overrides_and_controls_are_shown_not_obeyed() {
        let root = RunRow {
            id: "r1".into(),
            agent: "bot\u{202e}gpj.exe".into(),
            principal: "al\u{2066}ice\x1b[8m".into(),
            root_id: "r1".into(),
            labels: "{}".into(),
            ..RunRow::default()
        };
        let exec = StoredEvent {
            id: 1,
            escape: false,
            event: serde_json::json!({"kind":"process.exec","time":"t","run":{"id":"r1","agent":"x"},
                "process":{"pid":5,"key":"k","exe":"/usr/bin/true",
                           "argv":["/usr/bin/true","a\u{202e}b <i>","line1\nline2\r\u{9b}2J"]},
                "exec":{"result":"ok"}}),
        };
        let html = page(&root, std::slice::from_ref(&root), &[exec], true);
        assert!(
            !html
                .chars()
                .any(|c| matches!(c, '\u{202e}' | '\u{2066}' | '\x1b' | '\r' | '\u{9b}')),
            "{html}"
        );
        for shown in [
            r"bot\u202egpj.exe",
            r"al\u2066ice\x1b[8m",
            r"a\u202eb &lt;i&gt;",
            r"line1\nline2\r\u009b2J",
        ] {
            assert!(html.contains(shown), "{shown} in {html}");
        }
    }

    fn run(id: &str, parent: Option<&str>, depth: u32, start_ns: i64) -> RunRow {
        RunRow {
            id: id.into(),
            agent: format!("agent-{id}"),
            principal: "alice".into(),
            parent_id: parent.map(Into::into),
            root_id: "root".into(),
            depth,
            labels: r#"{"team":"infra"}"#.into(),
            start_ns,
            ..RunRow::default()
        }
    }

    fn event_of(id: i64, body: Value) -> StoredEvent {
        StoredEvent {
            id,
            escape: false,
            event: body,
        }
    }

    #[test]
    fn denials_are_counted_once_blocked_apart_from_audit() {
        let root = run("root", None, 0, 0);
        let exec = |seq: u64, enforced: bool, kind: &str| {
            serde_json::json!({"seq":seq,"kind":kind,"time":"2026-12-05T04:00:00Z","run":{"id":"root"},
                "process":{"pid":seq,"key":format!("k{seq}"),"exe":"/usr/bin/env","argv":["env"]},
                "exec":{"result":"ok","filename":"/usr/bin/env"},
                "policy":{"verdict":"deny","rule":"exec.allow (no rule matches)","enforced":enforced}})
        };
        let events = vec![
            event_of(1, exec(1, true, "process.exec")),
            event_of(2, exec(2, true, "policy.violation")),
            event_of(3, exec(3, false, "process.exec")),
            event_of(4, exec(4, false, "policy.violation")),
            // A violation with no twin (max_depth) is a denial of its own.
            event_of(9, exec(9, true, "policy.violation")),
        ];
        let html = page(&root, std::slice::from_ref(&root), &events, true);
        assert!(
            html.contains(
                "<span class=\"count\">3</span> denials</a> (<span class=\"count\">2</span> blocked"
            ),
            "{html}"
        );
        assert!(html.contains("<span class=\"count\">1</span> would have been blocked (audit)"));
        let box_at = html.find("class=\"denials\"").unwrap();
        let listed = &html[box_at..html.find("id=\"escapes\"").unwrap()];
        assert_eq!(listed.matches("<b>BLOCKED</b>").count(), 2, "{listed}");
        assert_eq!(listed.matches("<b>NOT BLOCKED</b>").count(), 1, "{listed}");
        assert!(html.contains("violation (the denial above)"));
        // The tree's rows say which process was denied, and how.
        let tree = &html[html.find("id=\"processes\"").unwrap()..];
        assert!(
            tree.contains("<span class=\"badge deny\">blocked</span>"),
            "{tree}"
        );
        assert!(
            tree.contains("<span class=\"badge audit\">would have been blocked (audit)</span>")
        );
        assert!(
            html.contains("<polygon class=\"blocked\""),
            "the picture marks them"
        );
        assert!(html.contains("<polygon class=\"audit\""));
    }

    #[test]
    fn processes_are_grouped_under_their_tool_call_with_its_input() {
        let root = run("root", None, 0, 0);
        let ev = |id: i64,
                  kind: &str,
                  key: &str,
                  parent: &str,
                  argv: &[&str],
                  call: Option<&str>| {
            let mut run = serde_json::json!({"id":"root"});
            if let Some(c) = call {
                run["tool_call"] = serde_json::json!({"id": c, "name": "Bash"});
            }
            event_of(
                id,
                serde_json::json!({"seq":id,"kind":kind,"time":"1970-01-01T00:00:03Z","run":run,
                "process":{"pid":100 + id,"key":key,"parent_key":parent,"exe":"/usr/bin/x","argv":argv},
                "exec":{"result":"ok"}}),
            )
        };
        let mut events = vec![
            ev(1, "process.exec", "claude", "", &["claude", "-p"], None),
            ev(2, "process.exec", "git", "claude", &["git", "status"], None),
            // Labelled as it went out.
            ev(
                3,
                "process.exec",
                "sh1",
                "claude",
                &["bash", "-c", "echo one"],
                Some("toolu_a"),
            ),
            // Not labelled: the tool.call lists it.
            ev(
                4,
                "process.exec",
                "sh2",
                "claude",
                &["bash", "-c", "curl <x>"],
                None,
            ),
            ev(5, "process.exec", "curl", "sh2", &["curl", "<x>"], None),
        ];
        events.push(event_of(
            6,
            serde_json::json!({"seq":6,"kind":"tool.call","time":"1970-01-01T00:00:04Z","run":{"id":"root"},
            "tool_call":{"id":"toolu_b","name":"Bash","input":"curl <x>","processes":[{"seq":4},{"seq":5}]}}),
        ));
        events.push(event_of(
            7,
            serde_json::json!({"seq":7,"kind":"tool.call","time":"1970-01-01T00:00:04Z","run":{"id":"root"},
            "tool_call":{"id":"toolu_a","name":"Bash","input":"echo one","processes":[]}}),
        ));
        let runs = [root.clone()];
        let page = page(&root, &runs, &events, true);
        let from = page.find("id=\"processes\"").unwrap_or(0);
        let to = page.find("id=\"timeline\"").unwrap_or(page.len());
        let html = &page[from..to];
        let call_a = html.find("toolu_a").unwrap_or(usize::MAX);
        let call_b = html.find("toolu_b").unwrap_or(usize::MAX);
        let sh1 = html.find("bash -c echo one").unwrap_or(0);
        let curl = html.find("curl &lt;x&gt;</code>").unwrap_or(0);
        assert!(html.contains("<li class=\"call\">"), "{html}");
        assert!(call_a < sh1 && sh1 < call_b, "{html}");
        assert!(call_b < curl, "{html}");
        // The call's input above its processes, escaped.
        assert!(html.contains("curl &lt;x&gt;"), "{html}");
        // git is outside any call.
        let git = html.find("git status").unwrap_or(usize::MAX);
        assert!(git < call_a, "{html}");
    }

    #[test]
    fn the_summary_counts_and_the_tree_folds() {
        let root = run("root", None, 0, 1_000_000_000);
        let mut sub = run("sub", Some("root"), 1, 2_000_000_000);
        sub.end_ns = Some(62_000_000_000);
        let mut events = Vec::new();
        let exec = |id: i64, run: &str, key: &str, parent: &str, exe: &str, argv: Vec<String>| {
            event_of(
                id,
                serde_json::json!({"seq":id,"kind":"process.exec","time":"1970-01-01T00:00:03Z","run":{"id":run},
                "process":{"pid":100 + id,"key":key,"parent_key":parent,"exe":exe,"argv":argv},"exec":{"result":"ok"}}),
            )
        };
        events.push(exec(
            1,
            "root",
            "claude",
            "",
            "/usr/bin/claude",
            vec!["claude".into(), "-p".into()],
        ));
        let long = "-c hook.x=false ".repeat(100);
        for i in 0..13 {
            let id = 2 + i;
            events.push(exec(
                id,
                "root",
                &format!("git{i}"),
                "claude",
                "/usr/bin/git",
                vec![
                    "git".into(),
                    long.clone(),
                    format!("--pid={i}"),
                    "status".into(),
                ],
            ));
        }
        events.push(exec(
            20,
            "sub",
            "sh",
            "",
            "/bin/sh",
            vec!["sh".into(), "-c".into(), "x".into()],
        ));
        events.push(exec(
            21,
            "sub",
            "sh",
            "",
            "/usr/bin/sensor",
            vec!["sensor".into(), "launch".into()],
        ));
        for (id, port, verdict) in [(22, 443, "allow"), (23, 443, "allow"), (24, 80, "deny")] {
            events.push(event_of(id, serde_json::json!({"seq":id,"kind":"network.connect","time":"1970-01-01T00:00:04Z",
                "run":{"id":"sub"},"process":{"pid":9,"key":"sh"},
                "network":{"transport":"tcp","family":"ipv4","dst_ip":"203.0.113.7","dst_port":port,"result":"ok"},
                "policy":{"verdict":verdict,"rule":"connect.allow","enforced":true}})));
        }
        let runs = [root.clone(), sub];
        let html = page(&root, &runs, &events, true);
        let summary =
            &html[html.find("id=\"summary\"").unwrap()..html.find("id=\"picture\"").unwrap()];
        for needle in [
            "team=infra",
            "└ <a href=\"#run-sub\">",
            "1m", // the sub-run's duration
            "<span class=\"count\">2</span> runs (1 sub-run)",
            "<span class=\"count\">15</span> processes",
            "<span class=\"count\">16</span> execs of <span class=\"count\">4</span> executables",
            "<code>/usr/bin/git</code></td><td class=\"n\">13</td>",
            "<code>203.0.113.7:443</code></td><td>tcp</td><td class=\"n\">2</td><td>2 allowed</td>",
            "<code>203.0.113.7:80</code></td><td>tcp</td><td class=\"n\">1</td><td>1 blocked</td>",
            "<a href=\"#e2\">#2</a>",
        ] {
            assert!(summary.contains(needle), "{needle} in {summary}");
        }
        let tree =
            &html[html.find("id=\"processes\"").unwrap()..html.find("id=\"timeline\"").unwrap()];
        assert_eq!(
            tree.matches("<details class=\"fold\">").count(),
            1,
            "{tree}"
        );
        assert!(tree.contains("<span class=\"count\">×13</span>"), "{tree}");
        assert!(
            tree.contains("sh -c x =&gt; sensor launch"),
            "first and last exec"
        );
        assert!(
            tree.contains("<details class=\"argv\">"),
            "long argv behind details"
        );
        let unfolded = page(&root, &runs, &events, false);
        assert!(!unfolded.contains("<details class=\"fold\">"));
    }

    /// A 12-hour run of 100,000 events in a real store: the page stays
    /// under 5 MB, its picture under a few thousand elements, and the table
    /// says what it left out and which command shows it.
    #[test]
    fn a_big_run_stays_small_and_says_what_it_left_out() {
        use std::sync::Arc;

        use crate::store::writer::{Record, Retention, Rows, StoreBatch, StoreWriter};

        const EVENTS: i64 = 100_000;
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("s.db");
        let hour = 3_600_000_000_000_i64;
        let t0 = crate::store::unix_ns(std::time::SystemTime::now()) - 13 * hour;
        let step = 12 * hour / EVENTS;
        let mut root = run("root-big", None, 0, t0);
        root.root_id = "root-big".into();
        root.end_ns = Some(t0 + 12 * hour);
        let mut sub = run("sub-big", Some("root-big"), 1, t0 + hour);
        sub.root_id = "root-big".into();
        sub.end_ns = Some(t0 + 11 * hour);
        let mut bytes = Vec::new();
        let mut records = Vec::new();
        let mut push =
            |seq: i64, kind: &'static str, run: &RunRow, body: Value, row: Option<RunRow>| {
                let begin = bytes.len();
                bytes.extend_from_slice(body.to_string().as_bytes());
                bytes.push(b'\n');
                records.push(Record {
                    seq: u64::try_from(seq).unwrap(),
                    time_ns: t0 + seq * step,
                    kind,
                    run_id: Some(run.id.clone()),
                    root_id: Some("root-big".into()),
                    pid: Some(1000),
                    verdict: body
                        .pointer("/policy/verdict")
                        .and_then(Value::as_str)
                        .map(Into::into),
                    line: begin..bytes.len() - 1,
                    run: row,
                    ..Record::default()
                });
            };
        let time = |seq: i64| {
            humantime::format_rfc3339_nanos(
                std::time::UNIX_EPOCH
                    + std::time::Duration::from_nanos(u64::try_from(t0 + seq * step).unwrap()),
            )
            .to_string()
        };
        push(
            0,
            "run.start",
            &root,
            serde_json::json!({"seq":0,"kind":"run.start","time":time(0),"run":{"id":"root-big","agent":"big"}}),
            Some(root.clone()),
        );
        push(
            1,
            "run.start",
            &sub,
            serde_json::json!({"seq":1,"kind":"run.start","time":time(1),"run":{"id":"sub-big","agent":"big-sub"}}),
            Some(sub.clone()),
        );
        // A name without digits per process: distinct commands, no folding.
        let word = |mut n: i64| {
            let mut w = String::new();
            loop {
                w.push(char::from(b'a' + u8::try_from(n % 26).unwrap()));
                n /= 26;
                if n == 0 {
                    break w;
                }
            }
        };
        for seq in 2..EVENTS {
            let r = if seq % 2 == 0 { &root } else { &sub };
            let key = format!("k{}", seq / 4);
            let process = serde_json::json!({"pid":1000 + seq / 4,"key":key,"parent_key":"init","exe":"/usr/bin/tool",
                "argv":["tool","--mode",word(seq / 4),"--verbose","--output","/var/log/something/quite/long/for/a/path.log"]});
            let run_obj = serde_json::json!({"id":r.id,"agent":r.agent});
            let (kind, body) = match seq % 4 {
                0 | 1 => (
                    "process.exec",
                    serde_json::json!({"seq":seq,"kind":"process.exec","time":time(seq),"run":run_obj,
                    "process":process,"exec":{"result":"ok"}}),
                ),
                2 if seq % 1000 == 2 => (
                    "network.connect",
                    serde_json::json!({"seq":seq,"kind":"network.connect","time":time(seq),"run":run_obj,
                    "process":process,"network":{"transport":"tcp","family":"ipv4","dst_ip":"198.51.100.9","dst_port":22,"result":"error","error":"EPERM"},
                    "policy":{"verdict":"deny","rule":"connect.allow (no rule matches)","enforced":true}}),
                ),
                2 => (
                    "network.connect",
                    serde_json::json!({"seq":seq,"kind":"network.connect","time":time(seq),"run":run_obj,
                    "process":process,"network":{"transport":"tcp","family":"ipv4","dst_ip":format!("10.0.{}.{}", seq % 7, seq % 11),"dst_port":443,"result":"ok"},
                    "policy":{"verdict":"allow","rule":"connect.allow 10.0.0.0/8","enforced":false}}),
                ),
                _ if seq % 1000 == 3 => (
                    "policy.violation",
                    serde_json::json!({"seq":seq,"kind":"policy.violation","time":time(seq),"run":run_obj,
                    "process":process,"network":{"transport":"tcp","family":"ipv4","dst_ip":"198.51.100.9","dst_port":22,"result":"error","error":"EPERM"},
                    "policy":{"verdict":"deny","rule":"connect.allow (no rule matches)","enforced":true}}),
                ),
                _ => (
                    "process.exit",
                    serde_json::json!({"seq":seq,"kind":"process.exit","time":time(seq),"run":run_obj,
                    "process":{"pid":1000 + seq / 4,"key":key,"exit_code":0}}),
                ),
            };
            push(seq, kind, r, body, None);
        }
        let writer = StoreWriter::start(
            &db,
            Retention {
                max_age: std::time::Duration::from_secs(30 * 86_400),
                max_bytes: u64::MAX,
            },
        )
        .unwrap();
        writer.send(StoreBatch::Rows(Rows {
            bytes: Arc::new(bytes),
            records,
        }));
        writer.close();

        let output = dir.path().join("big.html");
        let started = std::time::Instant::now();
        execute(&ReportArgs {
            run: "root-big".into(),
            output: output.clone(),
            db: db.clone(),
            state_dir: dir.path().to_owned(),
            no_fold: false,
            config: super::super::args::ConfigArg::default(),
        })
        .unwrap();
        let took = started.elapsed();
        let html = std::fs::read_to_string(&output).unwrap();
        eprintln!("100,000 events: {} bytes in {took:?}", html.len());
        // For a look, or a browser's timing: SENSOR_BIG_REPORT=FILE keeps the page.
        if let Some(keep) = std::env::var_os("SENSOR_BIG_REPORT") {
            std::fs::copy(&output, keep).unwrap();
        }
        assert!(html.len() < 5_000_000, "{} bytes", html.len());
        assert!(html.contains(&format!("{EVENTS} events")), "all counted");
        assert!(
            html.contains("The table shows the first 2000 of 100000 events; 98000 events from "),
            "the note"
        );
        assert!(
            html.contains("sensor events --run root-big --subtree --since "),
            "the command"
        );
        // Each denial once (100), and every one past the table's limit kept.
        assert!(html.contains(
            "<span class=\"count\">100</span> denials</a> (<span class=\"count\">100</span> blocked"
        ));
        assert!(
            html.contains("except 98 denials and escape attempts"),
            "{}",
            &html[html.find("id=\"timeline\"").unwrap()..][..2000]
        );
        let svg = &html[html.find("<svg class=\"timeline\"").unwrap()..];
        let svg = &svg[..svg.find("</svg>").unwrap()];
        let elements: usize = ["<line", "<rect", "<polygon", "<path"]
            .iter()
            .map(|t| svg.matches(t).count())
            .sum();
        assert!(elements < 2_000, "{elements} elements in the picture");
        assert!(svg.contains("└ agent-sub-big"), "the sub-run's lane");
        assert!(html.contains("more processes are not shown (the trees stop at 2000 rows)"));
        // 78 destinations: the denied one listed first, 38 cut with the command.
        let summary = &html[..html.find("id=\"picture\"").unwrap()];
        assert!(
            summary.contains("<code>198.51.100.9:22</code>"),
            "the denied destination is kept"
        );
        assert!(
            summary.contains("… 38 more destinations: "),
            "the cut is said"
        );
    }
}

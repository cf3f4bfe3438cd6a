//! `sensor report RUN -o FILE.html`: one self-contained page (no script, no
//! network) with the sub-agent tree, each run's process tree, the timeline
//! and the policy verdicts, denials and escape attempts first and marked.

use std::{collections::HashMap, process::ExitCode};

use anyhow::Context as _;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use serde_json::Value;

use super::{
    args::ReportArgs,
    display::{escape_terminal, exe_shown},
    query::{ProcNode, describe, proc_roots, processes, time_of_ns},
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

const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#1d232a;background:#fbfbfc}
h1{font-size:1.5em;margin:0 0 .2em} h2{font-size:1.15em;margin:1.6em 0 .5em;border-bottom:1px solid #dde}
.meta{color:#555} code{font:12px ui-monospace,monospace;background:#eef0f3;padding:1px 4px;border-radius:3px}
ul.tree{list-style:none;padding-left:1.4em;border-left:1px dashed #ccd;margin:.2em 0}
.run{border:1px solid #ccd;border-radius:6px;padding:.4em .7em;margin:.5em 0;background:#fff}
.run .agent{font-weight:600} .badge{display:inline-block;padding:0 .5em;border-radius:9px;font-size:12px;background:#e7ecf3}
.badge.deny{background:#c62828;color:#fff} .badge.allow{background:#2e7d32;color:#fff}
table{border-collapse:collapse;width:100%;background:#fff} th,td{border-bottom:1px solid #eee;padding:3px 6px;text-align:left;vertical-align:top}
th{background:#f1f3f6;position:sticky;top:0} td.t{white-space:nowrap;color:#555;font:12px ui-monospace,monospace}
tr.deny td{background:#fdecea} tr.deny td.v{color:#b71c1c;font-weight:700}
tr.escape td{background:#fff3e0} tr.escape.deny td{background:#fdecea}
.badge.escape{background:#e65100;color:#fff}
.denials{border:2px solid #c62828;border-radius:6px;padding:.5em 1em;background:#fdecea}
.escapes{border:2px solid #e65100;border-radius:6px;padding:.5em 1em;background:#fff3e0}
.none{color:#2e7d32}
";

fn verdict(e: &Value) -> Option<&str> {
    e.pointer("/policy/verdict").and_then(Value::as_str)
}

fn proc_html(node: &ProcNode, all: &[ProcNode]) -> Markup {
    let children: Vec<&ProcNode> = all.iter().filter(|c| c.parent_key == node.key).collect();
    html! {
        li {
            code { (node.pid) } " " (node.command())
            @if let Some(exit) = &node.exit {
                " " span.badge { (shown(exit)) }
            }
            @if !children.is_empty() {
                ul.tree {
                    @for c in children { (proc_html(c, all)) }
                }
            }
        }
    }
}

/// What the page's run tree needs besides the runs.
struct RunTree<'a> {
    runs: &'a [RunRow],
    procs: &'a HashMap<&'a str, Vec<ProcNode>>,
    denials: &'a HashMap<&'a str, usize>,
    escapes: &'a HashMap<&'a str, usize>,
}

fn run_html(run: &RunRow, tree: &RunTree<'_>) -> Markup {
    let state = match (&run.end_ns, &run.end_reason) {
        (Some(ns), reason) => format!(
            "ended {} ({})",
            time_of_ns(*ns),
            reason.as_deref().unwrap_or("")
        ),
        (None, _) => "active".to_owned(),
    };
    let denied = tree.denials.get(run.id.as_str()).copied().unwrap_or(0);
    let escaped = tree.escapes.get(run.id.as_str()).copied().unwrap_or(0);
    let all = tree
        .procs
        .get(run.id.as_str())
        .map(Vec::as_slice)
        .unwrap_or_default();
    let roots: Vec<&ProcNode> = proc_roots(all).collect();
    let children: Vec<&RunRow> = tree
        .runs
        .iter()
        .filter(|r| r.parent_id.as_deref() == Some(run.id.as_str()))
        .collect();
    let id = shown(&run.id);
    html! {
        li {
            div.run id={ "run-" (id) } {
                span.agent { (shown(&run.agent)) } " run " code { (id) }
                @if denied > 0 {
                    " " span.badge.deny { (denied) " denied" }
                }
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
                @if !roots.is_empty() {
                    ul.tree {
                        @for r in roots { (proc_html(r, all)) }
                    }
                }
            }
            @if !children.is_empty() {
                ul.tree {
                    @for c in children { (run_html(c, tree)) }
                }
            }
        }
    }
}

/// The page for `root` and its subtree.
fn page(root: &RunRow, runs: &[RunRow], events: &[StoredEvent]) -> String {
    let mut by_run: HashMap<&str, Vec<&StoredEvent>> = HashMap::new();
    let mut denials: HashMap<&str, usize> = HashMap::new();
    let mut escapes: HashMap<&str, usize> = HashMap::new();
    for e in events {
        if let Some(id) = e.event.pointer("/run/id").and_then(Value::as_str) {
            by_run.entry(id).or_default().push(e);
            if verdict(&e.event) == Some("deny") {
                *denials.entry(id).or_default() += 1;
            }
            if e.escape {
                *escapes.entry(id).or_default() += 1;
            }
        }
    }
    let procs: HashMap<&str, Vec<ProcNode>> = runs
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
    let agent_of: HashMap<&str, &str> = runs
        .iter()
        .map(|r| (r.id.as_str(), r.agent.as_str()))
        .collect();
    let tree = RunTree {
        runs,
        procs: &procs,
        denials: &denials,
        escapes: &escapes,
    };
    let denied: Vec<&StoredEvent> = events
        .iter()
        .filter(|e| verdict(&e.event) == Some("deny"))
        .collect();
    let (id, agent) = (shown(&root.id), shown(&root.agent));
    let time = |ev: &Value| shown(ev["time"].as_str().unwrap_or(""));
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
                    " · " (runs.len()) " run(s) · " (events.len()) " events · generated "
                    (humantime::format_rfc3339_seconds(std::time::SystemTime::now()))
                }
                h2 { "Policy denials" }
                @if denied.is_empty() {
                    p.none { "No action of this run tree was denied." }
                } @else {
                    div.denials {
                        ul {
                            @for e in &denied {
                                li {
                                    b { "DENIED" } " " (time(&e.event)) " — " (describe(&e.event))
                                    " (rule " code {
                                        (shown(e.event.pointer("/policy/rule").and_then(Value::as_str).unwrap_or("")))
                                    } ")"
                                }
                            }
                        }
                    }
                }
                (escapes_html(events))
                (tokens_html(events))
                h2 { "Sub-agent tree and processes" }
                ul.tree style="border:0;padding:0" { (run_html(root, &tree)) }
                h2 { "Timeline" }
                table {
                    thead {
                        tr { th { "time" } th { "agent" } th { "run" } th { "event" } th { "verdict" } }
                    }
                    tbody {
                        @for e in events {
                            @let ev = &e.event;
                            @let run_id = ev.pointer("/run/id").and_then(Value::as_str).unwrap_or("");
                            @let v = verdict(ev);
                            @let class = match (v == Some("deny"), e.escape) {
                                (true, true) => Some("escape deny"),
                                (true, false) => Some("deny"),
                                (false, true) => Some("escape"),
                                (false, false) => None,
                            };
                            tr class=[class] {
                                td.t { (time(ev)) }
                                td { (shown(agent_of.get(run_id).copied().unwrap_or(""))) }
                                td { code { (shown(run_id.get(..13).unwrap_or(run_id))) } }
                                td { (describe(ev)) }
                                td.v { (shown(v.unwrap_or("—"))) }
                            }
                        }
                    }
                }
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
        h2 { "Run tokens" }
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

/// The escape attempts box: what the store marked (a process or the sensor
/// tampered with, a raw socket, a denied Unix connect), each with how it
/// ended: blocked (killed or refused) or only reported.
fn escapes_html(events: &[StoredEvent]) -> Markup {
    let escapes: Vec<&StoredEvent> = events.iter().filter(|e| e.escape).collect();
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
        h2 { "Escape attempts" }
        @if escapes.is_empty() {
            p.none {
                "No process of this run tree reached into another process or \
                 the sensor, opened a raw socket, or was denied a Unix socket."
            }
        } @else {
            div.escapes {
                ul {
                    @for e in escapes {
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
                        }
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
    let html =
        super::provenance::with_record_section(page(&root, &runs, &events), &conn, &runs, &args.db);
    std::fs::write(&args.output, html)
        .with_context(|| format!("cannot write {}", args.output.display()))?;
    eprintln!(
        "wrote {} ({} runs, {} events)",
        args.output.display(),
        runs.len(),
        events.len()
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
        let html = page(&root, std::slice::from_ref(&root), &[deny]);
        assert!(!html.contains("<script>"), "agent names are escaped");
        assert!(html.contains("&lt;script&gt;bot"));
        assert!(html.contains("class=\"deny\""));
        assert!(html.contains("DENIED") && html.contains("203.0.113.7"));
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
        let quiet = page(&root, std::slice::from_ref(&root), &[]);
        assert!(quiet.contains("No run of this tree asked for a run token."));
        let issued = StoredEvent {
            id: 1,
            escape: false,
            event: serde_json::json!({"kind":"token.issued","time":"t1","run":{"id":"r1"},
                "process":{"pid":5,"key":"k"},
                "token":{"jti":"j-1","aud":"<vault>","iss":"i","sub":"s","iat":"t1",
                         "exp":"2026-12-05T03:05:00Z","scopes":["repo:read","db:read"],"kid":"k"}}),
        };
        let html = page(&root, std::slice::from_ref(&root), &[issued]);
        let at = html
            .find("<h2>Run tokens</h2>")
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
    fn escape_attempts_are_listed_before_the_tree_and_marked() {
        let root = RunRow {
            id: "r1".into(),
            agent: "bot".into(),
            principal: "alice".into(),
            root_id: "r1".into(),
            labels: "{}".into(),
            ..RunRow::default()
        };
        let quiet = page(&root, std::slice::from_ref(&root), &[]);
        assert!(quiet.contains("<h2>Escape attempts</h2>"));
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
        let html = page(&root, std::slice::from_ref(&root), &[tamper, unix]);
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
            html.contains("<tr class=\"escape deny\">"),
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
        let html = page(&root, std::slice::from_ref(&root), &[exec]);
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
}

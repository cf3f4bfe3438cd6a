//! Attack 8 of "The daemon survives the agent it watches": the analyst's
//! terminal is an input too. A watched agent puts carriage returns, escape
//! sequences, newlines, bidi overrides and zero-width characters in its argv,
//! its exe path, its principal and its agent name; the text views (`events`,
//! `tree`, `replay`, `runs`, `who`, `whoami`) must show them as visible
//! escapes (`\r`, `\x1b[2K`, `\n`, `\u202e`, ...) so the agent cannot rewrite
//! what the analyst reads, and every event must stay on one line. The HTML
//! report must not let a bidi override reorder its text either.
//!
//! Run as root: `SENSOR_BIN=... cargo test -p sensor-tests --test adversary_terminal -- --test-threads=1`.

use std::{
    ffi::{OsStr, OsString},
    os::unix::ffi::{OsStrExt as _, OsStringExt as _},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, check, kind, marker, run_with_timeout, sensor_bin,
    str_at, text,
};
use serde_json::Value;

/// The hostile arguments (after a marker), raw bytes, and how a text view
/// must show each one.
const HOSTILE_ARGS: &[(&[u8], &str)] = &[
    // Return to column 0, erase the line, write something else, turn red.
    (
        b"innocent\r\x1b[2Kls -la\x1b[31m",
        r"innocent\r\x1b[2Kls -la\x1b[31m",
    ),
    // Every `python3 -c` script has these.
    (b"line1\nline2", r"line1\nline2"),
    (b"a\tb", r"a\tb"),
    // RIGHT-TO-LEFT OVERRIDE: "exe.pdf" reads as "fdp.exe".
    ("\u{202e}fdp.exe".as_bytes(), r"\u202efdp.exe"),
    // The isolates (LRI, RLI, FSI, PDI).
    (
        "\u{2066}iso\u{2067}\u{2068}\u{2069}".as_bytes(),
        r"\u2066iso\u2067\u2068\u2069",
    ),
    ("zero\u{200b}width".as_bytes(), r"zero\u200bwidth"),
    (b"del\x7f", r"del\x7f"),
    // C1 CSI (U+009B): an escape sequence introducer on some terminals.
    ("c1\u{9b}31m".as_bytes(), r"c1\u009b31m"),
    // A byte that is not UTF-8: shown as the byte it is.
    (b"raw\xffbyte", r"raw\xffbyte"),
    // A literal backslash cannot forge an escape.
    (br"\x1b[0m-forged", r"\\x1b[0m-forged"),
];

/// Agent name: printable, so the daemon takes it, but with a bidi override
/// and an isolate.
const AGENT: &str = "ag\u{202e}\u{2066}x";
const AGENT_SHOWN: &str = r"ag\u202e\u2066x";
/// Principal (root may name anyone): the daemon refuses control characters
/// in it (see `control_characters_in_names_and_labels_are_refused`), so this
/// one carries format characters a terminal would act on.
const PRINCIPAL: &str = "a\u{202e}b";
const PRINCIPAL_SHOWN: &str = r"a\u202eb";
/// A label value with a bidi override and a zero-width space.
const LABEL: &str = "note=\u{202e}x\u{200b}y";
/// The file name of a copy of /usr/bin/true: newline, ESC, bidi, a non-UTF-8 byte.
const EXE_NAME: &[u8] = b"tr\nue\x1b[7m\xe2\x80\xaeok\xfe";
/// How views show it. Exit and connect events carry the exe as text only (no
/// `exe_b64`), so there the 0xfe byte shows as the JSON's `\\xfe`: the part
/// up to it is what every view must show.
const EXE_NAME_SHOWN: &str = r"tr\nue\x1b[7m\u202eok";

/// Code points that must never reach the terminal raw: bidi embeddings,
/// overrides, isolates and marks, zero-width characters, line and paragraph
/// separators.
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061c}'
            | '\u{200b}'..='\u{200f}'
            | '\u{2028}'..='\u{202e}'
            | '\u{2066}'..='\u{2069}'
            | '\u{feff}'
    )
}

/// Fails unless `out` is UTF-8 without any control character but '\n' and
/// without a bidi or zero-width code point.
fn terminal_safe(view: &str, out: &[u8]) -> Result<()> {
    let s = std::str::from_utf8(out).map_err(|e| {
        let at = e.valid_up_to();
        anyhow::anyhow!(
            "{view}: output is not UTF-8 at byte {at}: {:?}",
            String::from_utf8_lossy(&out[at.saturating_sub(40)..(at + 40).min(out.len())])
        )
    })?;
    for (i, c) in s.char_indices() {
        if c != '\n' && (c.is_control() || invisible(c)) {
            let from = s.floor_char_boundary(i.saturating_sub(60));
            let to = s.ceil_char_boundary((i + 60).min(s.len()));
            anyhow::bail!(
                "{view}: raw {:?} (U+{:04X}) reaches the terminal: ...{:?}...",
                c,
                c as u32,
                &s[from..to]
            );
        }
    }
    Ok(())
}

/// Runs `sensor ARGS --db DB` with `COLUMNS=columns`: (success, stdout, stderr).
fn view(db: &Path, args: &[&str], columns: usize) -> Result<(bool, Vec<u8>, Vec<u8>)> {
    let mut cmd = Command::new(sensor_bin()?);
    cmd.args(args)
        .arg("--db")
        .arg(db)
        .env_remove("SENSOR_DB")
        .env("COLUMNS", columns.to_string());
    let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
    Ok((out.status.success(), out.stdout, out.stderr))
}

/// A finished run whose processes carry the hostile strings, in a daemon's store.
struct HostileRun {
    // Declared first: the daemon stops before its temp dir goes.
    daemon: Daemon,
    dir: TempDir,
    db: PathBuf,
    run: String,
    marker: String,
    /// The copy of /usr/bin/true with the hostile file name.
    exe: PathBuf,
    /// Pid of its exec.
    exe_pid: u64,
    /// What `sensor whoami` printed inside the run.
    whoami: Vec<u8>,
}

fn hostile_run(tag: &str) -> Result<HostileRun> {
    let dir = TempDir::new(tag)?;
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let daemon = Daemon::start_with_args(&["--db", &db_arg])?;
    let m = marker();
    let run = format!("term-{}", std::process::id());
    let exe = dir.path().join(OsStr::from_bytes(EXE_NAME));
    std::fs::copy("/usr/bin/true", &exe).context("copy /usr/bin/true")?;

    let mut args: Vec<OsString> = vec![m.clone().into()];
    args.extend(
        HOSTILE_ARGS
            .iter()
            .map(|(raw, _)| OsString::from_vec(raw.to_vec())),
    );
    let script = r#"/usr/bin/true "$@"; "$HOSTILE_EXE" "$@"; "$SENSOR" whoami"#;
    let mut launch = daemon.launch_cmd(
        AGENT,
        &["--run-id", &run, "--principal", PRINCIPAL, "--label", LABEL],
        &["/bin/sh", "-c", script, "sh"],
    );
    launch
        .args(&args)
        .env("HOSTILE_EXE", &exe)
        .env("SENSOR", sensor_bin()?);
    let (_, out) = run_with_timeout(&mut launch, Duration::from_secs(60))?;
    ensure!(
        out.status.success(),
        "launch of agent {AGENT:?} failed: {}",
        text(&out.stderr)
    );
    let whoami = out.stdout;

    daemon.wait_for(EVENT_TIMEOUT, |e| {
        kind(e) == "run.end" && e["run"]["id"] == run.as_str()
    })?;
    let hostile_exec = daemon.wait_for(EVENT_TIMEOUT, |e| {
        kind(e) == "process.exec"
            && e["run"]["id"] == run.as_str()
            && e["process"]["exe_b64"].is_string()
            && e["process"]["argv"][1] == m.as_str()
    })?;
    let exe_pid = hostile_exec["process"]["pid"]
        .as_u64()
        .context("exec without pid")?;

    // The store writer is asynchronous: wait until it has the run's end.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let (ok, out, _) = view(&db, &["events", "--run", &run, "--json"], 200)?;
        if ok && text(&out).contains("\"run.end\"") {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the store never had the end of run {run}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(HostileRun {
        daemon,
        dir,
        db,
        run,
        marker: m,
        exe,
        exe_pid,
        whoami,
    })
}

/// The lines of a view's output about the hostile run, each Rust-escaped
/// (for failure messages: the test's own output must not be rewritten).
fn about(out: &str, h: &HostileRun) -> String {
    out.split_inclusive('\n')
        .filter(|l| l.contains(&h.marker) || l.contains(&h.run))
        .map(|l| format!("  {l:?}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every hostile argument as a view must show it.
fn argv_shown() -> Vec<&'static str> {
    HOSTILE_ARGS.iter().map(|(_, shown)| *shown).collect()
}

#[test]
fn argv_with_terminal_escapes_is_shown_escaped() -> Result<()> {
    let h = hostile_run("terminal")?;
    let run = h.run.as_str();
    let db = h.db.as_path();
    let mut checks = Checks::new();
    let pid = h.exe_pid.to_string();
    const WIDE: usize = 4000;

    // Each view: exit 0, nothing raw, and the escapes it must show.
    let exe_shown = format!(
        "{}/{EXE_NAME_SHOWN}",
        h.exe.parent().context("exe dir")?.display()
    );
    let all_argv = argv_shown();
    let views: Vec<(Vec<&str>, Vec<&str>)> = vec![
        (vec!["events"], all_argv.clone()),
        (vec!["events", "--run", run], all_argv.clone()),
        (vec!["events", "--run", run, "--subtree"], all_argv.clone()),
        (vec!["tree", run], {
            let mut v = all_argv.clone();
            v.extend([AGENT_SHOWN, PRINCIPAL_SHOWN]);
            v
        }),
        (vec!["replay", run], {
            let mut v = all_argv.clone();
            v.push(AGENT_SHOWN);
            v
        }),
        (vec!["runs"], vec![AGENT_SHOWN, PRINCIPAL_SHOWN]),
        (
            vec!["who", "--pid", &pid],
            vec![exe_shown.as_str(), AGENT_SHOWN, PRINCIPAL_SHOWN],
        ),
    ];
    let mut outputs = Vec::new();
    for (args, must_show) in &views {
        let name = format!("sensor {}", args.join(" "));
        let (ok, out, err) = view(db, args, WIDE)?;
        check!(checks, ok, "{name} failed: {}", text(&err));
        checks.result(terminal_safe(&name, &out));
        checks.result(terminal_safe(&format!("{name} (stderr)"), &err));
        let shown = String::from_utf8_lossy(&out).into_owned();
        let missing: Vec<&&str> = must_show.iter().filter(|s| !shown.contains(**s)).collect();
        check!(
            checks,
            missing.is_empty(),
            "{name} does not show {missing:?}; its lines about the run (Rust-escaped here):\n{}",
            about(&shown, &h)
        );
        outputs.push((name, shown));
    }
    // The exe path is shown escaped where events name it (exit of the copy).
    let events_run = &outputs[1].1;
    check!(
        checks,
        events_run
            .lines()
            .any(|l| l.contains("process.exit") && l.contains(&exe_shown)),
        "sensor events --run does not show the exe {exe_shown:?}:\n{}",
        about(events_run, &h)
    );

    // whoami inside the run.
    checks.result(terminal_safe("sensor whoami", &h.whoami));
    let whoami = String::from_utf8_lossy(&h.whoami);
    for s in [AGENT_SHOWN, PRINCIPAL_SHOWN] {
        check!(
            checks,
            whoami.contains(s),
            "whoami does not show {s:?}: {whoami:?}"
        );
    }

    // One line per event: `events` and `replay` print as many lines as the
    // JSON has events; `tree` one line for the run and one per process.
    for args in [vec!["events", "--run", run], vec!["replay", run]] {
        let (_, out, _) = view(db, &args, WIDE)?;
        let mut json = args.clone();
        json.push("--json");
        let (_, js, _) = view(db, &json, WIDE)?;
        let (lines, events) = (text(&out).lines().count(), text(&js).lines().count());
        check!(
            checks,
            lines == events,
            "sensor {}: {lines} lines for {events} events:\n{}",
            args.join(" "),
            about(&text(&out), &h)
        );
    }
    let (_, tree, _) = view(db, &["tree", run, "--no-fold"], WIDE)?;
    let (_, tree_json, _) = view(db, &["tree", run, "--json"], WIDE)?;
    let tree_json: Value = serde_json::from_slice(&tree_json).context("tree --json")?;
    fn count(procs: &Value) -> usize {
        procs
            .as_array()
            .map(|a| a.iter().map(|p| 1 + count(&p["children"])).sum())
            .unwrap_or(0)
    }
    let procs = count(&tree_json["processes"]);
    let lines = text(&tree).lines().count();
    check!(
        checks,
        lines == 1 + procs,
        "sensor tree: {lines} lines for one run and {procs} processes: {:?}",
        text(&tree)
    );

    // Cutting to the terminal width counts what is shown, escapes included.
    for args in [
        vec!["events", "--run", run],
        vec!["replay", run],
        vec!["tree", run],
    ] {
        let (_, out, _) = view(db, &args, 80)?;
        let out = text(&out);
        for line in out.lines() {
            check!(
                checks,
                line.chars().count() <= 80,
                "sensor {} with COLUMNS=80 printed {} characters: {line:?}",
                args.join(" "),
                line.chars().count()
            );
        }
    }

    // An agent name with a control character is refused, and the refusal
    // does not echo it raw.
    let mut bad = h
        .daemon
        .launch_cmd("bad\x1b[2Kagent", &[], &["/usr/bin/true"]);
    let (_, out) = run_with_timeout(&mut bad, Duration::from_secs(30))?;
    check!(
        checks,
        !out.status.success(),
        "an agent name with ESC was accepted"
    );
    checks.result(terminal_safe("refused launch (stderr)", &out.stderr));

    // JSON stays exact: the raw strings are there, JSON-escaped.
    let (_, js, _) = view(db, &["events", "--run", run, "--json"], WIDE)?;
    let js = text(&js);
    let exec = js
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| kind(e) == "process.exec" && str_at(e, "/process/exe") == Some("/usr/bin/true"))
        .context("the exec of /usr/bin/true in --json")?;
    check!(
        checks,
        exec["process"]["argv"][2] == "innocent\r\x1b[2Kls -la\x1b[31m"
            && exec["process"]["argv"][3] == "line1\nline2",
        "--json changed the argv: {exec}"
    );
    checks.finish()
}

#[test]
fn report_shows_bidi_overrides_escaped() -> Result<()> {
    let h = hostile_run("terminal-report")?;
    let page = h.dir.path().join("report.html");
    let mut report = Command::new(sensor_bin()?);
    report
        .args(["report", &h.run, "-o"])
        .arg(&page)
        .arg("--db")
        .arg(&h.db);
    let (_, out) = run_with_timeout(&mut report, Duration::from_secs(30))?;
    ensure!(out.status.success(), "report: {}", text(&out.stderr));
    let html = std::fs::read(&page)?;
    let mut checks = Checks::new();
    checks.result(terminal_safe("report.html", &html));
    let html = text(&html);
    for s in argv_shown()
        .into_iter()
        .chain([AGENT_SHOWN, PRINCIPAL_SHOWN])
    {
        // HTML escaping applies on top: `<`, `>`, `&` and quotes only.
        check!(
            checks,
            html.contains(s),
            "the report does not show {s:?} (escaped)"
        );
    }
    checks.finish()
}

/// What would rewrite the analyst's terminal has no place in a run's names:
/// a principal or label with control characters (an OSC that sets the
/// title, a newline, ESC) is refused at launch, and the command never runs.
#[test]
fn control_characters_in_names_and_labels_are_refused() -> Result<()> {
    let daemon = Daemon::start()?;
    let dir = TempDir::new("term-refused")?;
    let mut checks = Checks::new();
    for (flag, value) in [
        ("--principal", "a\n\x1b[8m"),
        ("--label", "note=\x1b]0;pwned\x07\nx"),
        ("--agent", "ag\x1b[2Jx"),
    ] {
        let ran = dir.path().join("ran");
        let mut launch = if flag == "--agent" {
            daemon.launch_cmd(value, &[], &["/usr/bin/touch"])
        } else {
            daemon.launch_cmd("refused", &[flag, value], &["/usr/bin/touch"])
        };
        launch.arg(&ran);
        let (_, out) = run_with_timeout(&mut launch, Duration::from_secs(30))?;
        check!(
            checks,
            !out.status.success() && !ran.exists(),
            "launch {flag} {value:?} must be refused without running the command: {} {:?}",
            out.status,
            text(&out.stderr)
        );
        checks.result(terminal_safe("the refusal", &out.stderr));
    }
    checks.finish()
}

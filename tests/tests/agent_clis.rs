//! Real agent CLIs against the `[[agent]]` matchers of
//! `config/sensor.example.toml`: Claude Code, Codex and Gemini CLI (npm),
//! Aider, CrewAI and smolagents (PyPI), at the versions `cargo xtask setup`
//! pins and installs under `target/agent-clis/` (xtask/src/agents.rs). Only
//! `--version` / `--help` run: the network is closed.
//!
//! For each CLI invocation: exactly one run starts, with the right agent,
//! whatever the CLI's process shape (a `#!/usr/bin/env node` re-exec in the
//! same pid, a launcher starting its native binary, a self-relaunch, a
//! console script run by the venv's python, helper processes); every event of
//! its process tree carries the run its lineage gives it; the run ends after
//! it exits. Inside `sensor launch --agent outer -- sh -c CLI` the CLI makes a
//! sub-run of `outer` (sh is not an agent) and its own children stay in it.
//!
//! Run as root: `SENSOR_BIN=... cargo test -p sensor-tests --test agent_clis -- --test-threads=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, argv_of, check, compact, dump, kind, marker, pid_of,
    run_child, str_at, text,
};
use serde_json::Value;

const INSTALL_HINT: &str =
    "run `cargo xtask setup` (it installs the agent CLIs the tests run under target/agent-clis)";

// Versions pinned in xtask/src/agents.rs: keep both in step.
const CLAUDE_VERSION: &str = "2.1.330";
const CODEX_VERSION: &str = "0.169.0";
const GEMINI_VERSION: &str = "0.61.0";
const AIDER_VERSION: &str = "0.86.2";
const CREWAI_VERSION: &str = "1.15.30";

// ----- where the CLIs are -----

/// `<target>/agent-clis`, or an error saying how to install it.
fn clis_dir() -> Result<PathBuf> {
    let dir = sensor_tests::target_dir().join("agent-clis");
    ensure!(dir.is_dir(), "{} is missing: {INSTALL_HINT}", dir.display());
    Ok(dir)
}

/// A file under `target/agent-clis`, as a string (it goes into `sh -c`).
fn cli(rel: &str) -> Result<String> {
    let path = clis_dir()?.join(rel);
    ensure!(
        path.exists(),
        "{} is missing: {INSTALL_HINT}",
        path.display()
    );
    path.to_str()
        .map(str::to_owned)
        .with_context(|| format!("{} is not UTF-8", path.display()))
}

const CLAUDE: &str = "npm/node_modules/.bin/claude";
const CLAUDE_WRAPPER: &str = "npm/node_modules/@anthropic-ai/claude-code/cli-wrapper.cjs";
const CODEX: &str = "npm/node_modules/.bin/codex";
const GEMINI: &str = "npm/node_modules/.bin/gemini";
const AIDER: &str = "venv/aider-chat/bin/aider";
const AIDER_PYTHON: &str = "venv/aider-chat/bin/python3";
const CREWAI: &str = "venv/crewai/bin/crewai";
const SMOLAGENT: &str = "venv/smolagents/bin/smolagent";

// ----- the config under test -----

fn start_daemon() -> Result<Daemon> {
    Daemon::start_with_config(&sensor_tests::example_agent_tables()?)
}

// ----- running a CLI -----

/// What one invocation left: its pid, the events from just before it, its output.
struct Ran {
    pid: u32,
    from: usize,
    stdout: String,
}

/// A command with a HOME of its own (the CLIs write settings there) and
/// no run marker from the test's environment.
fn command(program: &str, home: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env("HOME", home)
        .env_remove("SENSOR_RUN_ID")
        .env_remove("CODEX_HOME")
        .env_remove("GEMINI_CLI_NO_RELAUNCH");
    cmd
}

/// Runs `cmd` to completion; fails unless it exits 0.
fn run(d: &Daemon, cmd: &mut Command) -> Result<Ran> {
    let from = d.events()?.len();
    let (pid, out) = run_child(cmd)?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed with {}\nstdout: {}\nstderr: {}",
        out.status,
        text(&out.stdout).trim(),
        text(&out.stderr).trim()
    );
    Ok(Ran {
        pid,
        from,
        stdout: text(&out.stdout),
    })
}

// ----- reading the events -----

fn run_id(e: &Value) -> Option<&str> {
    str_at(e, "/run/id")
}

fn ppid_of(e: &Value) -> Option<u32> {
    e.pointer("/process/ppid")
        .and_then(Value::as_u64)
        .and_then(|p| u32::try_from(p).ok())
}

fn exe_of(e: &Value) -> &str {
    str_at(e, "/process/exe").unwrap_or("")
}

fn is_ok_exec(e: &Value) -> bool {
    kind(e) == "process.exec" && str_at(e, "/exec/result") == Some("ok")
}

/// `root` and every process forked below it, in `events`.
fn tree(events: &[Value], root: u32) -> BTreeSet<u32> {
    let mut pids = BTreeSet::from([root]);
    for e in events {
        if kind(e) == "process.spawn"
            && let (Some(pid), Some(ppid)) = (pid_of(e), ppid_of(e))
            && pids.contains(&ppid)
        {
            pids.insert(pid);
        }
    }
    pids
}

/// Process and run events of the processes of `pids`.
fn events_of<'a>(events: &'a [Value], pids: &BTreeSet<u32>) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| pid_of(e).is_some_and(|p| pids.contains(&p)))
        .collect()
}

fn dump_refs(events: &[&Value]) -> String {
    let owned: Vec<Value> = events.iter().map(|e| (*e).clone()).collect();
    dump(&owned)
}

/// A run that started in the tree.
struct Started {
    id: String,
    agent: String,
}

/// The runs started in the tree of `root`, in order.
fn started(events: &[Value], root: u32) -> Vec<Started> {
    let pids = tree(events, root);
    events
        .iter()
        .filter(|e| kind(e) == "run.start" && pid_of(e).is_some_and(|p| pids.contains(&p)))
        .map(|e| Started {
            id: run_id(e).unwrap_or("").to_owned(),
            agent: str_at(e, "/run/agent").unwrap_or("").to_owned(),
        })
        .collect()
}

fn ended(events: &[Value], id: &str) -> bool {
    events
        .iter()
        .any(|e| kind(e) == "run.end" && run_id(e) == Some(id))
}

/// Waits until `n` runs started in the tree of `ran` and all of them ended.
fn wait_runs_done(d: &Daemon, ran: &Ran, n: usize) -> Result<Vec<Value>> {
    d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            let evs = &evs[ran.from.min(evs.len())..];
            let s = started(evs, ran.pid);
            s.len() >= n && s.iter().all(|r| ended(evs, &r.id))
        },
        |evs| {
            let evs = &evs[ran.from.min(evs.len())..];
            let runs: Vec<String> = started(evs, ran.pid)
                .iter()
                .map(|r| {
                    let state = if ended(evs, &r.id) { "ended" } else { "live" };
                    format!("{} {} ({state})", r.agent, r.id)
                })
                .collect();
            format!(
                "{n} run(s) started in the process tree of pid {} and ended; started: {runs:?}",
                ran.pid
            )
        },
    )?;
    let all = d.events()?;
    Ok(all[ran.from.min(all.len())..].to_vec())
}

/// One run the tree must start.
struct Want<'a> {
    agent: &'a str,
    started_by: &'a str,
    /// Index (in the list of wants) of its parent run.
    parent: Option<usize>,
}

/// A run the tree started, as checked.
struct RunSeen {
    id: String,
    pid: u32,
}

/// Checks the runs started by the tree of `root` against `wants` (same
/// number, agents, parents, depths, started_by; each ended, sub-runs first)
/// and that every process event of the tree carries the run its lineage gives
/// it: a process is in the run of its parent at fork, and enters a run where a
/// `run.start` names it (at the exec that matched, or at `sensor launch`).
fn check_runs(
    c: &mut Checks,
    events: &[Value],
    root: u32,
    wants: &[Want<'_>],
    what: &str,
) -> Vec<RunSeen> {
    let pids = tree(events, root);
    let starts: Vec<&Value> = events
        .iter()
        .filter(|e| kind(e) == "run.start" && pid_of(e).is_some_and(|p| pids.contains(&p)))
        .collect();
    let dump_tree = || dump_refs(&events_of(events, &pids));
    if starts.len() != wants.len() {
        c.fail(format!(
            "{what}: expected {} run.start ({}), got {}:\n{}\nevents of its processes:\n{}",
            wants.len(),
            wants.iter().map(|w| w.agent).collect::<Vec<_>>().join(", "),
            starts.len(),
            dump_refs(&starts),
            dump_tree()
        ));
        return Vec::new();
    }
    let mut seen: Vec<RunSeen> = Vec::new();
    let mut depths: Vec<i64> = Vec::new();
    for (s, w) in starts.iter().zip(wants) {
        let id = run_id(s).unwrap_or("").to_owned();
        let ctx = compact(s);
        check!(
            c,
            str_at(s, "/run/agent") == Some(w.agent),
            "{what}: run.start should have agent {:?}: {ctx}",
            w.agent
        );
        check!(
            c,
            str_at(s, "/run/started_by") == Some(w.started_by),
            "{what}: run.start should say started_by {:?}: {ctx}",
            w.started_by
        );
        let (parent, root_id, depth) = match w.parent {
            Some(i) => (
                seen.get(i).map(|p| p.id.clone()),
                str_at(starts[0], "/run/id").map(str::to_owned),
                depths.get(i).map_or(-1, |d| d + 1),
            ),
            None => (None, Some(id.clone()), 0),
        };
        check!(
            c,
            str_at(s, "/run/parent_id").map(str::to_owned) == parent,
            "{what}: run.start should have parent_id {parent:?}: {ctx}"
        );
        check!(
            c,
            str_at(s, "/run/root_id").map(str::to_owned) == root_id,
            "{what}: run.start should have root_id {root_id:?}: {ctx}"
        );
        check!(
            c,
            s.pointer("/run/depth").and_then(Value::as_i64) == Some(depth),
            "{what}: run.start should have depth {depth}: {ctx}"
        );
        depths.push(depth);
        seen.push(RunSeen {
            id,
            pid: pid_of(s).unwrap_or(0),
        });
    }

    // Every run ends ("exited"), a sub-run before its parent.
    let end_at = |id: &str| {
        events
            .iter()
            .position(|e| kind(e) == "run.end" && run_id(e) == Some(id))
    };
    for (r, w) in seen.iter().zip(wants) {
        match end_at(&r.id) {
            None => c.fail(format!("{what}: run {} ({}) never ended", r.id, w.agent)),
            Some(i) => {
                check!(
                    c,
                    str_at(&events[i], "/run/end_reason") == Some("exited"),
                    "{what}: run.end should say exited: {}",
                    compact(&events[i])
                );
                let last_exit = events
                    .iter()
                    .rposition(|e| kind(e) == "process.exit" && run_id(e) == Some(r.id.as_str()))
                    .unwrap_or(0);
                check!(
                    c,
                    i > last_exit,
                    "{what}: run.end of {} before the exit of its last process",
                    r.id
                );
                if let Some(p) = w.parent.and_then(|p| seen.get(p)) {
                    check!(
                        c,
                        end_at(&p.id).is_some_and(|pi| pi > i),
                        "{what}: sub-run {} should end before its parent {}",
                        r.id,
                        p.id
                    );
                }
            }
        }
    }

    // Lineage: each process event carries the run its ancestry gives it.
    let mut expect: BTreeMap<u32, Option<String>> = BTreeMap::from([(root, None)]);
    let mut bad = Vec::new();
    for e in events {
        let Some(pid) = pid_of(e) else { continue };
        let k = kind(e);
        if k == "process.spawn"
            && !expect.contains_key(&pid)
            && let Some(parent_run) = ppid_of(e).and_then(|pp| expect.get(&pp)).cloned()
        {
            expect.insert(pid, parent_run);
        }
        if k == "run.start" && expect.contains_key(&pid) {
            expect.insert(pid, run_id(e).map(str::to_owned));
            continue;
        }
        if !k.starts_with("process.") {
            continue;
        }
        let Some(want) = expect.get(&pid) else {
            continue;
        };
        if run_id(e) != want.as_deref() {
            bad.push(format!("  expected run {want:?}: {}", compact(e)));
        }
        if k == "process.exit" {
            expect.remove(&pid);
        }
    }
    if !bad.is_empty() {
        c.fail(format!(
            "{what}: {} event(s) not in the run of their lineage:\n{}\nevents of its processes:\n{}",
            bad.len(),
            bad.join("\n"),
            dump_tree()
        ));
    }
    seen
}

/// The successful execs of the tree of `root` that carry run `id`.
fn execs_in_run<'a>(events: &'a [Value], root: u32, id: &str) -> Vec<&'a Value> {
    let pids = tree(events, root);
    events
        .iter()
        .filter(|e| {
            is_ok_exec(e) && pid_of(e).is_some_and(|p| pids.contains(&p)) && run_id(e) == Some(id)
        })
        .collect()
}

/// The exec that started run `r` (the first exec of its pid in the run).
fn leader_exec<'a>(events: &'a [Value], r: &RunSeen) -> Option<&'a Value> {
    events
        .iter()
        .find(|e| is_ok_exec(e) && pid_of(e) == Some(r.pid) && run_id(e) == Some(r.id.as_str()))
}

fn arg(e: &Value, i: usize) -> String {
    argv_of(e).get(i).cloned().unwrap_or_default()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Checks the exec that started the run: its exe and the script argv[1].
fn check_leader(
    c: &mut Checks,
    events: &[Value],
    r: &RunSeen,
    exe: impl Fn(&str) -> bool,
    script_suffix: Option<&str>,
    what: &str,
) -> Option<Value> {
    let Some(e) = leader_exec(events, r) else {
        c.fail(format!(
            "{what}: no exec of pid {} in run {} (the exec that matched)",
            r.pid, r.id
        ));
        return None;
    };
    check!(
        c,
        exe(exe_of(e)),
        "{what}: unexpected exe of the exec that started the run: {}",
        compact(e)
    );
    if let Some(suffix) = script_suffix {
        check!(
            c,
            arg(e, 1).ends_with(suffix),
            "{what}: argv[1] of the exec that started the run should end with {suffix:?}: {}",
            compact(e)
        );
    }
    Some(e.clone())
}

/// Checks that some exec in run `r` by a child of its leader has an exe for
/// which `exe` holds (launcher -> native child, relaunch, helper).
fn check_child_exec(
    c: &mut Checks,
    events: &[Value],
    root: u32,
    r: &RunSeen,
    exe: impl Fn(&Value) -> bool,
    shape: &str,
    what: &str,
) {
    let execs = execs_in_run(events, root, &r.id);
    let found = execs
        .iter()
        .any(|e| pid_of(e) != Some(r.pid) && ppid_of(e) == Some(r.pid) && exe(e));
    check!(
        c,
        found,
        "{what}: no {shape} exec by a child of pid {} in run {}; execs in the run:\n{}",
        r.pid,
        r.id,
        dump_refs(&execs)
    );
}

fn is_node(exe: &str) -> bool {
    matches!(basename(exe), "node" | "nodejs")
}

fn is_python(exe: &str) -> bool {
    basename(exe).starts_with("python3")
}

/// The `#!/usr/bin/env node` shape: before the exec that started the run,
/// the same pid ran /usr/bin/env with `node SCRIPT` (and that exec was in no run).
fn check_env_shebang(c: &mut Checks, events: &[Value], r: &RunSeen, script: &str, what: &str) {
    let env_exec = events.iter().find(|e| {
        is_ok_exec(e)
            && pid_of(e) == Some(r.pid)
            && basename(exe_of(e)) == "env"
            && arg(e, 1) == "node"
            && arg(e, 2).ends_with(script)
    });
    match env_exec {
        None => c.fail(format!(
            "{what}: pid {} did not exec /usr/bin/env node ...{script} first (the shebang)",
            r.pid
        )),
        Some(e) => check!(
            c,
            run_id(e).is_none(),
            "{what}: the env exec before the node exec should be in no run: {}",
            compact(e)
        ),
    }
}

fn check_version(c: &mut Checks, ran: &Ran, version: &str, what: &str) {
    check!(
        c,
        ran.stdout.contains(version),
        "{what}: expected version {version} in its output (pinned in xtask/src/agents.rs), got {:?}",
        ran.stdout.trim()
    );
}

/// `program args...` at top level: exactly one run of `agent`, started by the
/// spawned pid. Returns the run and the events.
fn top_level(
    d: &Daemon,
    c: &mut Checks,
    home: &Path,
    program: &str,
    args: &[&str],
    agent: &str,
) -> Result<(Ran, Vec<Value>, Option<RunSeen>)> {
    let what = format!("`{program} {}`", args.join(" "));
    let ran = run(d, command(program, home).args(args))?;
    let events = wait_runs_done(d, &ran, 1)?;
    let seen = check_runs(
        c,
        &events,
        ran.pid,
        &[Want {
            agent,
            started_by: "matcher",
            parent: None,
        }],
        &what,
    );
    let run = seen.into_iter().next();
    if let Some(r) = &run {
        check!(
            c,
            r.pid == ran.pid,
            "{what}: the run should start in the spawned pid {} (re-exec in the same pid), started in {}",
            ran.pid,
            r.pid
        );
    }
    Ok((ran, events, run))
}

/// `sensor launch --agent outer -- sh -c 'CLI ARGS'`: the CLI is a sub-run of
/// `outer` started by a child of sh. Returns the sub-run and the events.
fn nested(
    d: &Daemon,
    c: &mut Checks,
    home: &Path,
    cli_line: &str,
    agent: &str,
) -> Result<(Ran, Vec<Value>, Option<RunSeen>)> {
    let what = format!("`sensor launch --agent outer -- sh -c '{cli_line}'`");
    let mut cmd = d.launch_cmd("outer", &[], &["/bin/sh", "-c", cli_line]);
    cmd.env("HOME", home);
    let ran = run(d, &mut cmd)?;
    let events = wait_runs_done(d, &ran, 2)?;
    let seen = check_runs(
        c,
        &events,
        ran.pid,
        &[
            Want {
                agent: "outer",
                started_by: "launch",
                parent: None,
            },
            Want {
                agent,
                started_by: "matcher",
                parent: Some(0),
            },
        ],
        &what,
    );
    let mut seen = seen.into_iter();
    let outer = seen.next();
    let sub = seen.next();
    if let (Some(o), Some(s)) = (&outer, &sub) {
        check!(
            c,
            o.pid == ran.pid,
            "{what}: outer should start in the launch pid {}",
            ran.pid
        );
        let sub_parent = events
            .iter()
            .find(|e| kind(e) == "process.spawn" && pid_of(e) == Some(s.pid))
            .and_then(ppid_of);
        check!(
            c,
            sub_parent == Some(ran.pid),
            "{what}: the sub-run should start in a child of sh (pid {}), its parent is {sub_parent:?}",
            ran.pid
        );
    }
    Ok((ran, events, sub))
}

// ----- one table entry per CLI -----

/// An argument of an invocation: as is, or a file under `target/agent-clis`.
#[derive(Clone, Copy)]
enum Arg {
    Lit(&'static str),
    Cli(&'static str),
}

impl Arg {
    fn resolve(self) -> Result<String> {
        match self {
            Self::Lit(s) => Ok(s.to_owned()),
            Self::Cli(rel) => cli(rel),
        }
    }
}

/// What a check on one invocation's run sees.
struct Seen<'a> {
    events: &'a [Value],
    ran: &'a Ran,
    run: &'a RunSeen,
    /// The invocation's arguments (resolved).
    args: &'a [String],
    what: &'a str,
}

/// The checks of one invocation's run, beyond those of every run.
type RunCheck = fn(&mut Checks, &Seen<'_>);

/// One top-level invocation: exactly one run of the CLI's agent, started by
/// the spawned pid (see [`top_level`]), then `check` on that run.
struct Top {
    what: &'static str,
    program: Arg,
    args: &'static [Arg],
    /// The pinned version its output must show.
    version: Option<&'static str>,
    /// Text its output must contain.
    stdout_has: Option<&'static str>,
    check: RunCheck,
}

/// An agent CLI: its top-level invocations, then one inside `sensor launch
/// --agent outer -- sh -c 'CLI ARGS'` (a sub-run of `outer`, see [`nested`]),
/// with `nested` checks on the sub-run.
struct AgentCli {
    /// Name in the messages of the nested invocation (`nested NAME`).
    name: &'static str,
    /// The file under `target/agent-clis` the nested invocation runs.
    bin: &'static str,
    /// The `[[agent]]` its runs carry.
    agent: &'static str,
    top: &'static [Top],
    nested_args: &'static str,
    nested: Option<RunCheck>,
}

/// Runs every invocation of `spec` against one daemon started on the
/// example config's matchers.
fn check_cli(spec: &AgentCli) -> Result<()> {
    // Every file first: a missing install fails before a daemon starts.
    let bin = cli(spec.bin)?;
    let tops = spec
        .top
        .iter()
        .map(|top| {
            let program = top.program.resolve()?;
            let args = top
                .args
                .iter()
                .map(|a| a.resolve())
                .collect::<Result<Vec<_>>>()?;
            Ok((top, program, args))
        })
        .collect::<Result<Vec<_>>>()?;
    let d = start_daemon()?;
    let home = TempDir::new("home")?;
    let mut c = Checks::new();

    for (top, program, args) in &tops {
        let arg_refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ran, events, run) =
            top_level(&d, &mut c, home.path(), program, &arg_refs, spec.agent)?;
        if let Some(version) = top.version {
            check_version(&mut c, &ran, version, top.what);
        }
        if let Some(text) = top.stdout_has {
            check!(
                c,
                ran.stdout.contains(text),
                "{}: unexpected output {:?}",
                top.what,
                ran.stdout
            );
        }
        if let Some(r) = &run {
            let seen = Seen {
                events: &events,
                ran: &ran,
                run: r,
                args,
                what: top.what,
            };
            (top.check)(&mut c, &seen);
        }
    }

    let line = format!("{bin} {}", spec.nested_args);
    let (ran, events, sub) = nested(&d, &mut c, home.path(), &line, spec.agent)?;
    if let (Some(s), Some(check)) = (&sub, spec.nested) {
        let what = format!("nested {}", spec.name);
        let seen = Seen {
            events: &events,
            ran: &ran,
            run: s,
            args: &[],
            what: &what,
        };
        check(&mut c, &seen);
    }
    c.finish()
}

const VERSION: &[Arg] = &[Arg::Lit("--version")];
const HELP: &[Arg] = &[Arg::Lit("--help")];

// Claude Code 2.x: the npm bin is the native binary itself (one exec, no
// node), and with install scripts off `node cli-wrapper.cjs` starts the
// platform package's binary as a child (launcher -> native child).
const CLAUDE_CODE: AgentCli = AgentCli {
    name: "claude",
    bin: CLAUDE,
    agent: "claude-code",
    top: &[
        Top {
            what: "claude --version",
            program: Arg::Cli(CLAUDE),
            args: VERSION,
            version: Some(CLAUDE_VERSION),
            stdout_has: None,
            check: claude_native,
        },
        Top {
            what: "claude --help",
            program: Arg::Cli(CLAUDE),
            args: HELP,
            version: None,
            stdout_has: None,
            check: claude_native,
        },
        Top {
            what: "node cli-wrapper.cjs --version",
            program: Arg::Lit("node"),
            args: &[Arg::Cli(CLAUDE_WRAPPER), Arg::Lit("--version")],
            version: Some(CLAUDE_VERSION),
            stdout_has: None,
            check: claude_wrapper,
        },
    ],
    nested_args: "--version",
    nested: Some(|c, s| {
        check_leader(
            c,
            s.events,
            s.run,
            |exe| exe.ends_with("/claude.exe"),
            None,
            s.what,
        );
    }),
};

fn claude_native(c: &mut Checks, s: &Seen<'_>) {
    let leader = check_leader(
        c,
        s.events,
        s.run,
        |exe| exe.ends_with("/@anthropic-ai/claude-code/bin/claude.exe"),
        None,
        s.what,
    );
    if let Some(e) = leader {
        check!(
            c,
            arg(&e, 0).ends_with("/.bin/claude"),
            "{}: argv[0] should be the bin link: {}",
            s.what,
            compact(&e)
        );
    }
}

fn claude_wrapper(c: &mut Checks, s: &Seen<'_>) {
    check_leader(
        c,
        s.events,
        s.run,
        is_node,
        Some("/cli-wrapper.cjs"),
        s.what,
    );
    check_child_exec(
        c,
        s.events,
        s.ran.pid,
        s.run,
        |e| {
            let exe = exe_of(e);
            exe.contains("/@anthropic-ai/claude-code-linux-") && exe.ends_with("/claude")
        },
        "native binary (@anthropic-ai/claude-code-linux-*/claude)",
        s.what,
    );
}

// Codex: `#!/usr/bin/env node` launcher (env, then node in the same pid)
// that starts the native binary of @openai/codex-linux-* as a child.
const CODEX_CLI: AgentCli = AgentCli {
    name: "codex",
    bin: CODEX,
    agent: "codex",
    top: &[
        Top {
            what: "codex --version",
            program: Arg::Cli(CODEX),
            args: VERSION,
            version: Some(CODEX_VERSION),
            stdout_has: None,
            check: codex_top,
        },
        Top {
            what: "codex --help",
            program: Arg::Cli(CODEX),
            args: HELP,
            version: None,
            stdout_has: None,
            check: codex_top,
        },
    ],
    nested_args: "--version",
    nested: Some(|c, s| {
        check_leader(c, s.events, s.run, is_node, Some("/.bin/codex"), s.what);
        check_child_exec(
            c,
            s.events,
            s.ran.pid,
            s.run,
            |e| is_codex_native(exe_of(e)),
            "native codex binary",
            s.what,
        );
    }),
};

fn codex_top(c: &mut Checks, s: &Seen<'_>) {
    check_env_shebang(c, s.events, s.run, "/.bin/codex", s.what);
    check_leader(c, s.events, s.run, is_node, Some("/.bin/codex"), s.what);
    let first = s.args.first().map_or("", String::as_str);
    check_child_exec(
        c,
        s.events,
        s.ran.pid,
        s.run,
        |e| is_codex_native(exe_of(e)) && arg(e, 1) == first,
        "native codex binary",
        s.what,
    );
}

// Gemini CLI: `#!/usr/bin/env node` bundle that relaunches node on itself
// with `--max-old-space-size=N` (a child with the same script).
const GEMINI_CLI: AgentCli = AgentCli {
    name: "gemini",
    bin: GEMINI,
    agent: "gemini-cli",
    top: &[
        Top {
            what: "gemini --version",
            program: Arg::Cli(GEMINI),
            args: VERSION,
            version: Some(GEMINI_VERSION),
            stdout_has: None,
            check: gemini_top,
        },
        Top {
            what: "gemini --help",
            program: Arg::Cli(GEMINI),
            args: HELP,
            version: None,
            stdout_has: None,
            check: gemini_top,
        },
    ],
    nested_args: "--version",
    nested: Some(|c, s| {
        check_child_exec(
            c,
            s.events,
            s.ran.pid,
            s.run,
            |e| is_node(exe_of(e)) && arg(e, 1).starts_with("--max-old-space-size="),
            "relaunch",
            s.what,
        );
    }),
};

fn gemini_top(c: &mut Checks, s: &Seen<'_>) {
    check_env_shebang(c, s.events, s.run, "/.bin/gemini", s.what);
    check_leader(c, s.events, s.run, is_node, Some("/.bin/gemini"), s.what);
    check_child_exec(
        c,
        s.events,
        s.ran.pid,
        s.run,
        |e| {
            is_node(exe_of(e))
                && arg(e, 1).starts_with("--max-old-space-size=")
                && arg(e, 2).ends_with("/.bin/gemini")
        },
        "relaunch (node --max-old-space-size=N gemini)",
        s.what,
    );
}

// Aider: a console script whose shebang is the venv's python (exe
// python3.X, argv[1] the script), or `python -m aider`; it runs `git
// version` as children.
const AIDER_CLI: AgentCli = AgentCli {
    name: "aider",
    bin: AIDER,
    agent: "aider",
    top: &[
        Top {
            what: "aider --version",
            program: Arg::Cli(AIDER),
            args: VERSION,
            version: Some(AIDER_VERSION),
            stdout_has: None,
            check: aider_script,
        },
        Top {
            what: "aider --help",
            program: Arg::Cli(AIDER),
            args: HELP,
            version: None,
            stdout_has: None,
            check: aider_script,
        },
        Top {
            what: "python -m aider --version",
            program: Arg::Cli(AIDER_PYTHON),
            args: &[Arg::Lit("-m"), Arg::Lit("aider"), Arg::Lit("--version")],
            version: Some(AIDER_VERSION),
            stdout_has: None,
            check: |c, s| {
                check_leader(c, s.events, s.run, is_python, None, s.what);
                aider_git(c, s);
            },
        },
    ],
    nested_args: "--version",
    nested: Some(aider_git),
};

fn aider_script(c: &mut Checks, s: &Seen<'_>) {
    check_leader(c, s.events, s.run, is_python, Some("/bin/aider"), s.what);
    aider_git(c, s);
}

fn aider_git(c: &mut Checks, s: &Seen<'_>) {
    check_child_exec(
        c,
        s.events,
        s.ran.pid,
        s.run,
        |e| basename(exe_of(e)) == "git" && arg(e, 1) == "version",
        "`git version`",
        s.what,
    );
}

// CrewAI: console script `crewai` (python3.X running venv/bin/crewai).
const CREWAI_CLI: AgentCli = AgentCli {
    name: "crewai",
    bin: CREWAI,
    agent: "crewai",
    top: &[
        Top {
            what: "crewai --version",
            program: Arg::Cli(CREWAI),
            args: VERSION,
            version: Some(CREWAI_VERSION),
            stdout_has: None,
            check: crewai_top,
        },
        Top {
            what: "crewai --help",
            program: Arg::Cli(CREWAI),
            args: HELP,
            version: None,
            stdout_has: None,
            check: crewai_top,
        },
    ],
    nested_args: "--version",
    nested: None,
};

fn crewai_top(c: &mut Checks, s: &Seen<'_>) {
    check_leader(c, s.events, s.run, is_python, Some("/bin/crewai"), s.what);
}

// smolagents: console script `smolagent` (no --version; --help runs offline).
const SMOLAGENTS_CLI: AgentCli = AgentCli {
    name: "smolagent",
    bin: SMOLAGENT,
    agent: "smolagents",
    top: &[Top {
        what: "smolagent --help",
        program: Arg::Cli(SMOLAGENT),
        args: HELP,
        version: None,
        stdout_has: Some("usage: smolagent"),
        check: |c, s| {
            check_leader(
                c,
                s.events,
                s.run,
                is_python,
                Some("/bin/smolagent"),
                s.what,
            );
        },
    }],
    nested_args: "--help",
    nested: None,
};

// ----- the tests -----

/// The whole example file, `[daemon]` table included, starts a daemon (the
/// test daemon's flags override its outputs, socket and dirs).
#[test]
fn example_config_starts_the_daemon() -> Result<()> {
    let text = sensor_tests::example_config()?;
    let d = Daemon::start_with(Some(&text), &[])?;
    let status = d.status_json()?;
    ensure!(
        status.get("ready").and_then(Value::as_bool) == Some(true),
        "status of a daemon started with config/sensor.example.toml: {status}"
    );
    Ok(())
}

/// [`CLAUDE_CODE`]: the native binary, and `node cli-wrapper.cjs`.
#[test]
fn claude_code() -> Result<()> {
    check_cli(&CLAUDE_CODE)
}

/// [`CODEX_CLI`]: the env-node launcher and its native child.
#[test]
fn codex() -> Result<()> {
    check_cli(&CODEX_CLI)
}

fn is_codex_native(exe: &str) -> bool {
    exe.contains("/@openai/codex-linux-") && exe.ends_with("/bin/codex")
}

/// `codex sandbox -- sh -c '...; codex --version'`: Codex runs the command
/// through its Linux sandbox, re-running its own binary as a helper
/// (argv[0] `codex-linux-sandbox`, `--sandbox-policy-cwd`), then bwrap in new
/// user and pid namespaces, then the binary again (`--apply-seccomp-then-exec`)
/// whose parent is bwrap. Those helpers must stay in the run (the matcher's
/// exclude_argv), while codex run again by the sandboxed shell is a genuine
/// nested invocation: a sub-run, inside the sandbox's pid namespace.
#[test]
fn codex_sandbox_helpers_and_nested_codex() -> Result<()> {
    let codex = cli(CODEX)?;
    let d = start_daemon()?;
    let home = TempDir::new("home")?;
    let mut c = Checks::new();
    let what = "codex sandbox -- sh -c '...; codex --version'";

    let script = format!("echo in-sandbox; {codex} --version");
    let ran = run(
        &d,
        command(&codex, home.path()).args(["sandbox", "--", "/bin/sh", "-c", &script]),
    )?;
    check!(
        c,
        ran.stdout.contains("in-sandbox") && ran.stdout.contains(CODEX_VERSION),
        "{what}: unexpected output {:?}",
        ran.stdout
    );
    let events = wait_runs_done(&d, &ran, 2)?;
    let seen = check_runs(
        &mut c,
        &events,
        ran.pid,
        &[
            Want {
                agent: "codex",
                started_by: "matcher",
                parent: None,
            },
            Want {
                agent: "codex",
                started_by: "matcher",
                parent: Some(0),
            },
        ],
        what,
    );
    if let [top, sub] = &seen[..] {
        let in_top = execs_in_run(&events, ran.pid, &top.id);
        let helpers: Vec<&&Value> = in_top
            .iter()
            .filter(|e| is_codex_native(exe_of(e)) && arg(e, 0) == "codex-linux-sandbox")
            .collect();
        check!(
            c,
            helpers.len() >= 2
                && helpers
                    .iter()
                    .any(|e| argv_of(e).iter().any(|a| a == "--apply-seccomp-then-exec")),
            "{what}: expected the codex-linux-sandbox helper execs (outside and inside bwrap) in the top run; execs in it:\n{}",
            dump_refs(&in_top)
        );
        check!(
            c,
            helpers
                .iter()
                .any(|e| e.pointer("/process/ns_pid").is_some()),
            "{what}: a helper inside bwrap should report its namespace pid (ns_pid):\n{}",
            dump_refs(&helpers.iter().map(|e| **e).collect::<Vec<_>>())
        );
        check!(
            c,
            in_top.iter().any(|e| arg(e, 0) == "bwrap"),
            "{what}: expected bwrap execs in the top run:\n{}",
            dump_refs(&in_top)
        );
        let leader = check_leader(
            &mut c,
            &events,
            sub,
            is_node,
            Some("/.bin/codex"),
            "codex inside the sandbox",
        );
        if let Some(e) = leader {
            check!(
                c,
                e.pointer("/process/ns_pid").is_some(),
                "{what}: the nested codex runs in the sandbox's pid namespace and should report ns_pid: {}",
                compact(&e)
            );
        }
        check_child_exec(
            &mut c,
            &events,
            ran.pid,
            sub,
            |e| is_codex_native(exe_of(e)),
            "native codex binary",
            "codex inside the sandbox",
        );
    }
    c.finish()
}

/// Codex puts aliases of its binary (`apply_patch`, `applypatch`,
/// `codex-linux-sandbox`: symlinks in `$CODEX_HOME/tmp/arg0-linux/...`, made
/// only when CODEX_HOME is not under /tmp) first in the PATH of the commands
/// it runs. `apply_patch` run by its tool shell is the codex binary
/// (`exe` matches) with only argv[0] to tell it is a helper, and its parent is
/// the shell (not an agent). `exclude_argv` also matches argv[0] by its file
/// name, and the example config excludes these aliases: no sub-run.
#[test]
fn codex_apply_patch_alias_is_not_a_sub_run() -> Result<()> {
    let codex = cli(CODEX)?;
    let d = start_daemon()?;
    // Codex makes its aliases only when CODEX_HOME (~/.codex) is not under
    // /tmp; the checkout (and so target/) may be, so HOME goes elsewhere.
    let home = Path::new("/var/tmp").join(format!("sensor-test-codex-{}", marker()));
    fs::create_dir_all(&home).with_context(|| format!("create {}", home.display()))?;
    let what = "codex sandbox -- sh -c 'apply_patch ...'";
    let script = "apply_patch '*** Begin Patch\n*** End Patch'; true";
    let ran = run(
        &d,
        command(&codex, &home).args(["sandbox", "--", "/bin/sh", "-c", script]),
    );
    let _ = fs::remove_dir_all(&home);
    let ran = ran?;
    let events = wait_runs_done(&d, &ran, 1)?;
    let mut c = Checks::new();
    let pids = tree(&events, ran.pid);
    check!(
        c,
        events.iter().any(|e| is_ok_exec(e)
            && pid_of(e).is_some_and(|p| pids.contains(&p))
            && arg(e, 0) == "apply_patch"
            && is_codex_native(exe_of(e))),
        "{what}: no exec of the apply_patch alias (argv[0] apply_patch, exe the codex binary):\n{}",
        dump_refs(&events_of(&events, &pids))
    );
    check_runs(
        &mut c,
        &events,
        ran.pid,
        &[Want {
            agent: "codex",
            started_by: "matcher",
            parent: None,
        }],
        what,
    );
    c.finish()
}

/// [`GEMINI_CLI`]: the env-node bundle and its relaunch.
#[test]
fn gemini_cli() -> Result<()> {
    check_cli(&GEMINI_CLI)
}

/// [`AIDER_CLI`]: the console script, `python -m aider`, and `git version`.
#[test]
fn aider() -> Result<()> {
    check_cli(&AIDER_CLI)
}

/// [`CREWAI_CLI`]: the console script.
#[test]
fn crewai() -> Result<()> {
    check_cli(&CREWAI_CLI)
}

/// [`SMOLAGENTS_CLI`]: the console script's --help.
#[test]
fn smolagents() -> Result<()> {
    check_cli(&SMOLAGENTS_CLI)
}

/// Nothing installed: every test above fails (never skips) with the hint.
#[test]
fn missing_install_is_an_error_with_a_hint() -> Result<()> {
    match cli("no-such-cli/bin/none") {
        Ok(p) => bail!("{p} should not exist"),
        Err(e) => {
            let msg = format!("{e:#}");
            ensure!(msg.contains("cargo xtask setup"), "unhelpful error: {msg}");
            Ok(())
        }
    }
}

//! "Which tool call did this?" (issue 22) with the real Codex CLI: `codex
//! exec` (the version `cargo xtask setup` pins under `target/agent-clis/`),
//! offline, in its Linux sandbox (`-s workspace-write`, network allowed),
//! against a scripted fake of the OpenAI Responses API on loopback
//! (`tests/fake_model/openai.py`, a `model_providers` entry of
//! `$CODEX_HOME/config.toml`), under the daemon with the example config's
//! `[[agent]]` tables (Codex's has `transcripts = "codex"`).
//!
//! The fake model asks for three `exec_command` calls, the second a `curl`
//! to a loopback listener of the test, then answers with text. The daemon
//! must emit one `tool.call` per call, with its id, tool, command and the
//! rollout's times, each explaining its processes (the sandbox helper, its
//! shell), the curl's exec and connect under the curl's call only; and
//! within a bounded delay of the call's result (the latency is printed).
//!
//! Run as root: `SENSOR_BIN=... cargo test -p sensor-tests --test transcripts_codex -- --test-threads=1 --nocapture`.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, ensure};
use sensor_tests::fake_model::{FakeModel, linked_execs, linked_seqs, listener, tool_calls};
use sensor_tests::{Daemon, TempDir, argv_of, compact, kind, run_with_timeout, str_at, text};
use serde_json::Value;

const CODEX: &str = "npm/node_modules/.bin/codex";
const INSTALL_HINT: &str =
    "run `cargo xtask setup` (it installs the agent CLIs the tests run under target/agent-clis)";

fn codex_bin() -> Result<PathBuf> {
    let path = sensor_tests::target_dir().join("agent-clis").join(CODEX);
    ensure!(
        path.exists(),
        "{} is missing: {INSTALL_HINT}",
        path.display()
    );
    Ok(path)
}

/// The example config's `[[agent]]` tables; its codex agent reads its
/// rollouts and lists its sandbox helper as infrastructure.
fn agent_tables() -> Result<String> {
    let out = sensor_tests::example_agent_tables()?;
    ensure!(
        out.contains("transcripts = \"codex\"")
            && out.contains("\"@agent --sandbox-policy-cwd\"")
            && out.contains("@codex-snapshot-check"),
        "the example config's codex agent reads no rollouts or lists no helpers or infrastructure"
    );
    Ok(out)
}

fn time_at(e: &Value, ptr: &str) -> Result<SystemTime> {
    let s = str_at(e, ptr).with_context(|| format!("{ptr} missing: {}", compact(e)))?;
    // RFC 3339 UTC with fractional seconds, e.g. 2026-12-05T07:40:24.704Z.
    let out = Command::new("date")
        .args(["-u", "-d", s, "+%s.%N"])
        .output()
        .context("date")?;
    ensure!(out.status.success(), "date cannot read {s:?}");
    let secs: f64 = text(&out.stdout).trim().parse().context("date's output")?;
    Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs))
}

/// What one `codex exec` run under the daemon left.
struct Ran {
    run: String,
    events: Vec<Value>,
    script: Vec<String>,
    http: u16,
    codex_home: PathBuf,
    /// The wall clock around the codex process.
    began: SystemTime,
    ended: SystemTime,
    /// Kept until the checks are done (the temp dirs go with them).
    _dirs: (TempDir, Daemon),
}

/// Today's day dir of Codex's rollouts (it names them in local time).
fn day_dir(codex_home: &Path) -> Result<PathBuf> {
    let out = Command::new("date").arg("+%Y/%m/%d").output()?;
    ensure!(out.status.success(), "date failed");
    Ok(codex_home.join("sessions").join(text(&out.stdout).trim()))
}

/// Runs `codex exec` against the fake model under a daemon; `plant` may
/// leave files in today's day dir of the rollouts before it starts;
/// `forge` appends a call that never ran to codex's rollout as it runs.
fn run_codex(plant: impl FnOnce(&Path) -> Result<()>, forge: bool) -> Result<Ran> {
    run_codex_with(plant, forge, |http| {
        vec![
            "echo step-one".to_owned(),
            format!("curl -s http://127.0.0.1:{http}/tool-call-two"),
            "echo step-three".to_owned(),
        ]
    })
}

/// As [`run_codex`], the fake model asking for the commands `steps` gives
/// (with the port of the test's listener).
fn run_codex_with(
    plant: impl FnOnce(&Path) -> Result<()>,
    forge: bool,
    steps: impl FnOnce(u16) -> Vec<String>,
) -> Result<Ran> {
    let codex = codex_bin()?;
    let tmp = TempDir::new("transcripts-codex")?;
    let home = tmp.path().join("home");
    let codex_home = home.join(".codex");
    let work = tmp.path().join("work");
    fs::create_dir_all(&codex_home)?;
    fs::create_dir_all(&work)?;
    let day = day_dir(&codex_home)?;
    fs::create_dir_all(&day)?;
    plant(&day)?;
    let http = listener()?;
    let script = steps(http);
    let model = FakeModel::start(tmp.path(), "openai.py", &script)?;
    fs::write(
        codex_home.join("config.toml"),
        format!(
            r#"model = "gpt-fake"
model_provider = "fake"

[model_providers.fake]
name = "fake"
base_url = "http://127.0.0.1:{}/v1"
wire_api = "responses"
env_key = "FAKE_OPENAI_KEY"

[sandbox_workspace_write]
network_access = true
"#,
            model.port
        ),
    )?;
    let d = Daemon::start_with(Some(&agent_tables()?), &[])?;

    let mut cmd = Command::new(&codex);
    cmd.args([
        "exec",
        "--skip-git-repo-check",
        "-s",
        "workspace-write",
        "Run the three scripted steps.",
    ])
    .current_dir(&work)
    .env("HOME", &home)
    .env("CODEX_HOME", &codex_home)
    .env("FAKE_OPENAI_KEY", "sk-test-dummy")
    .env_remove("OPENAI_API_KEY")
    .env_remove("SENSOR_RUN_ID");
    let forger = forge.then(|| {
        let day = day.clone();
        thread::spawn(move || forge_call(&day))
    });
    let began = SystemTime::now();
    let (pid, out) = run_with_timeout(&mut cmd, Duration::from_secs(120))?;
    let ended = SystemTime::now();
    if let Some(f) = forger {
        f.join()
            .map_err(|_| anyhow::anyhow!("the forger panicked"))?
            .context("forging a call into the rollout")?;
    }
    let model_log = fs::read_to_string(&model.log).unwrap_or_default();
    ensure!(
        out.status.success(),
        "codex exec failed with {}\nstdout: {}\nstderr: {}\nmodel log:\n{model_log}",
        out.status,
        text(&out.stdout).trim(),
        text(&out.stderr).trim()
    );
    ensure!(
        text(&out.stdout).contains("All scripted steps done."),
        "codex did not finish the script: {}\n{}\nmodel log:\n{model_log}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let start = d.wait_for(Duration::from_secs(10), |e| {
        kind(e) == "run.start"
            && str_at(e, "/run/agent") == Some("codex")
            && e.pointer("/process/pid").and_then(Value::as_u64) == Some(u64::from(pid))
    })?;
    let run = str_at(&start, "/run/id")
        .context("run.start without run id")?
        .to_owned();
    let events = d.wait_events(Duration::from_secs(15), |evs| {
        tool_calls(evs, &run).len() >= script.len() + usize::from(forge)
            && evs
                .iter()
                .any(|e| kind(e) == "run.end" && str_at(e, "/run/id") == Some(run.as_str()))
    })?;
    d.check_alive()?;
    Ok(Ran {
        run,
        events,
        script,
        http,
        codex_home,
        began,
        ended,
        _dirs: (tmp, d),
    })
}

/// The forged call's id and command.
const FORGED_ID: &str = "call_forged";
const FORGED_CMD: &str = "curl -s http://evil.example/never-ran";

/// The time now as the rollout writes it (RFC 3339, ms, UTC).
fn now_stamp() -> Result<String> {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%3NZ"])
        .output()?;
    ensure!(out.status.success(), "date failed");
    Ok(text(&out.stdout).trim().to_owned())
}

/// Edits the run's rollout as it is written: once codex has begun its
/// file, appends an `exec_command` call that never ran, with a successful
/// output.
fn forge_call(day: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let file = loop {
        let found = fs::read_dir(day)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("rollout-20"))
            });
        if let Some(f) = found {
            break f;
        }
        ensure!(
            Instant::now() < deadline,
            "codex wrote no rollout in {}",
            day.display()
        );
        thread::sleep(Duration::from_millis(20));
    };
    let args = serde_json::json!({ "cmd": FORGED_CMD }).to_string();
    let call = serde_json::json!({"timestamp": now_stamp()?, "type": "response_item",
        "payload": {"type": "function_call", "name": "exec_command", "arguments": args,
                    "call_id": FORGED_ID}});
    let output = serde_json::json!({"timestamp": now_stamp()?, "type": "response_item",
        "payload": {"type": "function_call_output", "call_id": FORGED_ID,
                    "output": "Chunk ID: 1\nProcess exited with code 0\nOutput:\n"}});
    let mut f = fs::OpenOptions::new().append(true).open(&file)?;
    f.write_all(format!("{call}\n{output}\n").as_bytes())?;
    Ok(())
}

/// The three calls, in order, with their ids, commands and times, each
/// explaining its sandbox helpers and shell; the curl's exec and connect
/// under the second call only; the start-up probes under none; each
/// emitted within 1 s of its result.
fn check_calls(r: &Ran) -> Result<()> {
    let (run, events, script, http) = (&r.run, &r.events, &r.script, r.http);
    let (codex_home, began, ended) = (&r.codex_home, r.began, r.ended);
    let calls: Vec<Value> = tool_calls(events, run)
        .into_iter()
        .filter(|c| str_at(c, "/tool_call/id").is_some_and(|id| id.starts_with("call_fake")))
        .collect();
    ensure!(
        calls.len() == 3,
        "tool.call events: {:?}",
        calls.iter().map(compact).collect::<Vec<_>>()
    );
    let sessions = codex_home.join("sessions").to_string_lossy().into_owned();
    let by_seq = |seq: u64| events.iter().find(|e| e["seq"].as_u64() == Some(seq));
    let mut latencies = Vec::new();
    for (i, (call, cmd)) in calls.iter().zip(script).enumerate() {
        let want_id = format!("call_fake{i:02}");
        ensure!(
            str_at(call, "/tool_call/id") == Some(want_id.as_str())
                && str_at(call, "/tool_call/name") == Some("exec_command")
                && str_at(call, "/tool_call/input") == Some(cmd.as_str())
                && call.pointer("/tool_call/is_error") == Some(&Value::Bool(false)),
            "call {i}: {}",
            compact(call)
        );
        ensure!(
            str_at(call, "/tool_call/transcript").is_some_and(|t| t.starts_with(&sessions)
                && t.contains("/rollout-")
                && t.ends_with(".jsonl")),
            "call {i} transcript path: {}",
            compact(call)
        );
        // The rollout's times: in order, within the codex process's life.
        let call_time = time_at(call, "/tool_call/call_time")?;
        let result_time = time_at(call, "/tool_call/result_time")?;
        let slack = Duration::from_secs(1);
        ensure!(
            began <= call_time + slack && call_time <= result_time && result_time <= ended + slack,
            "call {i} times outside the run ({began:?} .. {ended:?}): {}",
            compact(call)
        );
        // Latency: the rollout's result to the event.
        let emitted = time_at(call, "/time")?;
        let latency = emitted.duration_since(result_time).unwrap_or_default();
        latencies.push(latency);
        // Its processes: through the sandbox helper, to its shell.
        let linked: Vec<&Value> = linked_seqs(call).into_iter().filter_map(by_seq).collect();
        let execs: Vec<Vec<String>> = linked
            .iter()
            .filter(|e| kind(e) == "process.exec")
            .map(|e| argv_of(e))
            .collect();
        ensure!(
            execs
                .iter()
                .any(|a| a.first().is_some_and(|a0| a0 == "codex-linux-sandbox")),
            "call {i}: no sandbox helper among its processes: {execs:?}\n{}",
            compact(call)
        );
        ensure!(
            execs
                .iter()
                .any(|a| a.first().is_some_and(|a0| a0 == "bwrap")),
            "call {i}: no bwrap among its processes: {execs:?}"
        );
        ensure!(
            execs
                .iter()
                .any(|a| a.first().is_some_and(|a0| a0.ends_with("bash")) && a.last() == Some(cmd)),
            "call {i}: no shell running {cmd:?} among its processes: {execs:?}"
        );
        ensure!(
            linked
                .iter()
                .all(|e| str_at(e, "/run/id") == Some(run.as_str())),
            "call {i}: explains events of other runs"
        );
    }

    // The curl's exec and its connect to the listener: under call 1 only.
    let in_run = |e: &&Value| str_at(e, "/run/id") == Some(run.as_str());
    let curl_exec = events
        .iter()
        .filter(in_run)
        .find(|e| {
            kind(e) == "process.exec"
                && argv_of(e).first().is_some_and(|a| a == "curl")
                && argv_of(e).iter().any(|a| a.contains("tool-call-two"))
        })
        .context("no exec of the curl in the run")?;
    let curl_key = str_at(curl_exec, "/process/key").context("curl exec without key")?;
    let connect = events
        .iter()
        .filter(in_run)
        .find(|e| {
            kind(e) == "network.connect"
                && str_at(e, "/process/key") == Some(curl_key)
                && e.pointer("/network/dst_port").and_then(Value::as_u64) == Some(u64::from(http))
        })
        .with_context(|| format!("no connect of the curl to port {http}"))?;
    let exec_seq = curl_exec["seq"].as_u64().context("seq")?;
    let connect_seq = connect["seq"].as_u64().context("seq")?;
    for (i, call) in calls.iter().enumerate() {
        let seqs = linked_seqs(call);
        if i == 1 {
            ensure!(
                seqs.contains(&exec_seq) && seqs.contains(&connect_seq),
                "the curl's exec {exec_seq} and connect {connect_seq} are not under its call: {}",
                compact(call)
            );
        } else {
            ensure!(
                !seqs.contains(&exec_seq) && !seqs.contains(&connect_seq),
                "the curl is under call {i}: {}",
                compact(call)
            );
        }
    }

    // Codex's own start-up probes are no call's.
    let all_linked: Vec<u64> = calls.iter().flat_map(linked_seqs).collect();
    for e in events.iter().filter(in_run) {
        let argv = argv_of(e);
        let probe = kind(e) == "process.exec"
            && (argv
                .first()
                .is_some_and(|a| a == "lsb_release" || a == "getconf")
                || argv.iter().any(|a| a == "ls-remote"));
        let seq = e["seq"].as_u64().unwrap_or(0);
        ensure!(
            !(probe && all_linked.contains(&seq)),
            "a start-up probe is under a call: {}",
            compact(e)
        );
    }

    let ms: Vec<u128> = latencies.iter().map(Duration::as_millis).collect();
    eprintln!("codex: rollout result -> tool.call event latency (ms): {ms:?}");
    // The issue's target: under 1 s (the daemon reads followed transcripts
    // when inotify says they changed, and a call waits 200 ms after its
    // result; the 1 s poll is the fallback).
    ensure!(
        latencies.iter().all(|l| *l < Duration::from_secs(1)),
        "latency result -> tool.call too high: {ms:?} ms"
    );
    Ok(())
}

fn of_run<'a>(r: &'a Ran, k: &str) -> Vec<&'a Value> {
    r.events
        .iter()
        .filter(|e| kind(e) == k && str_at(e, "/run/id") == Some(r.run.as_str()))
        .collect()
}

#[test]
fn codex_tool_calls_are_linked_to_their_processes() -> Result<()> {
    let r = run_codex(|_| Ok(()), false)?;
    let bad: Vec<String> = of_run(&r, "transcript.unreadable")
        .into_iter()
        .chain(of_run(&r, "tool.unobserved"))
        .map(compact)
        .collect();
    ensure!(bad.is_empty(), "unexpected: {bad:?}");
    // Codex's own machinery (its launcher's native binary, the sandbox
    // helpers, bwrap, the OS probes and their pipelines, the plugin sync,
    // the login-shell snapshot and its check) is the agent's: a clean run
    // has no `tool.unexplained`.
    let unexplained: Vec<String> = of_run(&r, "tool.unexplained")
        .into_iter()
        .map(compact)
        .collect();
    ensure!(
        unexplained.is_empty(),
        "tool.unexplained in a clean run: {unexplained:?}"
    );
    check_calls(&r)
}

/// A rollout that is a symlink to /etc/shadow and one of garbage beside
/// codex's own, and a call forged into codex's rollout that never ran: the
/// daemon reads neither file, says so once, stays up, still reports and
/// links the real calls, and reports the forged one as `tool.unobserved`.
#[test]
fn codex_hostile_rollouts_and_a_forged_call() -> Result<()> {
    let r = run_codex(
        |day| {
            // Named to sort before codex's own (rollout-YYYY-...), so that
            // the symlink is the run's first problem.
            std::os::unix::fs::symlink("/etc/shadow", day.join("rollout-0-shadow.jsonl"))?;
            let mut garbage = fs::File::create(day.join("rollout-zz-garbage.jsonl"))?;
            garbage.write_all(b"{not json\n")?;
            garbage.write_all(&vec![b'x'; (1 << 20) + 10])?;
            garbage.write_all(b"\n")?;
            Ok(())
        },
        true,
    )?;
    let bad = of_run(&r, "transcript.unreadable");
    ensure!(
        bad.len() == 1,
        "one transcript.unreadable expected: {:?}",
        bad.iter().map(|e| compact(e)).collect::<Vec<_>>()
    );
    ensure!(
        str_at(bad[0], "/transcript/path").is_some_and(|p| p.ends_with("rollout-0-shadow.jsonl"))
            && str_at(bad[0], "/transcript/reason").is_some_and(|r| r.contains("cannot open")),
        "{}",
        compact(bad[0])
    );
    ensure!(
        !r.events.iter().any(|e| compact(e).contains("root:")),
        "something of /etc/shadow reached the events"
    );
    let unobserved = of_run(&r, "tool.unobserved");
    ensure!(
        unobserved.len() == 1
            && str_at(unobserved[0], "/tool_call/id") == Some(FORGED_ID)
            && str_at(unobserved[0], "/tool_call/input") == Some(FORGED_CMD),
        "tool.unobserved: {:?}",
        unobserved.iter().map(|e| compact(e)).collect::<Vec<_>>()
    );
    check_calls(&r)
}

/// A process the sandbox runs that no call explains: a call's command that
/// goes on after its `exec_command` returned (it asked to wait 500 ms) and
/// starts `cat` 3 s later, while the next call (`sleep 5`) runs. The cat
/// runs under Codex's sandbox helpers, which are the agent's own only as
/// the chain from the codex process to the call's shell: it is
/// `tool.unexplained`, after the call that started it, and the only one.
/// (With the helpers listed as `infrastructure`, everything under them
/// was the agent's and this was not reported.)
#[test]
fn codex_a_process_under_the_sandbox_that_no_call_explains() -> Result<()> {
    let r = run_codex_with(
        |_| Ok(()),
        false,
        |_| {
            vec![
                "@yield=500 sleep 3; cat /etc/hostname".to_owned(),
                "sleep 5".to_owned(),
            ]
        },
    )?;
    let calls = tool_calls(&r.events, &r.run);
    let first = calls
        .iter()
        .find(|c| str_at(c, "/tool_call/id") == Some("call_fake00"))
        .context("no tool.call for call_fake00")?;
    ensure!(
        str_at(first, "/tool_call/input") == Some("sleep 3; cat /etc/hostname"),
        "{}",
        compact(first)
    );
    let shells = linked_execs(&r.events, first);
    ensure!(
        shells
            .iter()
            .any(|a| a.last().is_some_and(|l| l == "sleep 3; cat /etc/hostname")),
        "the call's shell is not linked to it: {shells:?}"
    );
    let unexplained = of_run(&r, "tool.unexplained");
    let all: Vec<String> = unexplained.iter().map(|e| compact(e)).collect();
    ensure!(
        unexplained.len() == 1,
        "one tool.unexplained expected: {all:?}"
    );
    let u = unexplained[0];
    ensure!(
        argv_of(u) == ["cat", "/etc/hostname"]
            && str_at(u, "/unexplained/reason") == Some("after_call")
            && str_at(u, "/unexplained/after_call/id") == Some("call_fake00"),
        "{}",
        compact(u)
    );
    // It ran under the sandbox: its exec's process descends from a helper.
    let exec_seq = u
        .pointer("/unexplained/exec_seq")
        .and_then(Value::as_u64)
        .context("exec_seq")?;
    let exec = r
        .events
        .iter()
        .find(|e| e["seq"].as_u64() == Some(exec_seq))
        .context("the unexplained exec is not in the events")?;
    ensure!(
        kind(exec) == "process.exec" && argv_of(exec) == ["cat", "/etc/hostname"],
        "{}",
        compact(exec)
    );
    let in_run = |e: &&Value| str_at(e, "/run/id") == Some(r.run.as_str());
    let parent_of = |key: &str| {
        r.events
            .iter()
            .filter(in_run)
            .find(|e| str_at(e, "/process/key") == Some(key))
            .and_then(|e| str_at(e, "/process/parent_key"))
            .map(str::to_owned)
    };
    let helper = |key: &str| {
        r.events.iter().filter(in_run).any(|e| {
            kind(e) == "process.exec"
                && str_at(e, "/process/key") == Some(key)
                && argv_of(e)
                    .first()
                    .is_some_and(|a| a == "codex-linux-sandbox")
        })
    };
    let mut key = str_at(exec, "/process/key").map(str::to_owned);
    let mut under_helper = false;
    for _ in 0..32 {
        let Some(k) = key else { break };
        if helper(&k) {
            under_helper = true;
            break;
        }
        key = parent_of(&k);
    }
    ensure!(
        under_helper,
        "the cat is not under a sandbox helper: {}",
        compact(exec)
    );
    Ok(())
}

//! "Which tool call did this?" (issue 22) with the real Claude Code: `claude
//! -p` (the version `cargo xtask setup` pins under `target/agent-clis/`),
//! offline, against a scripted fake of the Anthropic Messages API on
//! loopback (`tests/fake_model/anthropic.py`, through `ANTHROPIC_BASE_URL`),
//! under the daemon with the example config's `[[agent]]` tables (Claude
//! Code's has `transcripts = "claude-code"`).
//!
//! The fake model asks for three Bash tool calls, the second a `curl` to a
//! loopback listener of the test, then answers with text. The daemon must
//! emit one `tool.call` per call, with its id, tool and command, and list
//! the curl's exec and its connect under the curl's call id (and under no
//! other call).
//!
//! Each call's processes and connect belong to the call: they carry its id
//! (`run.tool_call`) or the call's `tool.call` lists them (the daemon labels
//! an event as it goes out when it already read the call; the agent's
//! transcript is buffered, so the first shell of a call may go out before
//! it); `sensor tree`, `sensor replay` and the report show them under the
//! call. A background job that outlives its call is `tool.unexplained`; the
//! agent's own helpers (its `infrastructure`) are not.
//!
//! Run as root: `SENSOR_BIN=... cargo test -p sensor-tests --test transcripts -- --test-threads=1`.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use sensor_tests::fake_model::{FakeModel, linked_execs, linked_seqs, listener, tool_calls};
use sensor_tests::{Daemon, TempDir, argv_of, compact, kind, run_with_timeout, str_at, text};
use serde_json::Value;

const CLAUDE: &str = "npm/node_modules/.bin/claude";
const INSTALL_HINT: &str =
    "run `cargo xtask setup` (it installs the agent CLIs the tests run under target/agent-clis)";

fn claude_bin() -> Result<PathBuf> {
    let path = sensor_tests::target_dir().join("agent-clis").join(CLAUDE);
    ensure!(
        path.exists(),
        "{} is missing: {INSTALL_HINT}",
        path.display()
    );
    Ok(path)
}

/// The example config's `[[agent]]` tables; its claude-code agent reads
/// its transcripts.
fn agent_tables() -> Result<String> {
    let out = sensor_tests::example_agent_tables()?;
    ensure!(
        out.contains("transcripts = \"claude-code\""),
        "the example config's claude-code agent reads no transcripts"
    );
    Ok(out)
}

/// What one `claude -p` run under the daemon left.
struct Ran {
    /// The run's id.
    run: String,
    events: Vec<Value>,
    script: Vec<String>,
    http: u16,
    home: PathBuf,
    /// The daemon's store.
    db: PathBuf,
    /// Kept until the checks are done (the temp dirs go with them).
    dirs: (TempDir, Daemon),
}

/// Runs claude against the fake model under a daemon; `plant` may leave
/// files in the project dir of its transcripts before it starts.
fn run_claude(
    plant: impl FnOnce(&Path) -> Result<()>,
    forge: bool,
    script_of: impl FnOnce(u16) -> Vec<String>,
) -> Result<Ran> {
    let claude = claude_bin()?;
    let tmp = TempDir::new("transcripts")?;
    let home = tmp.path().join("home");
    let work = tmp.path().join("work");
    fs::create_dir_all(&home)?;
    fs::create_dir_all(&work)?;
    let munged: String = work
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    let project = home.join(".claude/projects").join(munged);
    fs::create_dir_all(&project)?;
    plant(&project)?;
    let http = listener()?;
    let script = script_of(http);
    let model = FakeModel::start(tmp.path(), "anthropic.py", &script)?;
    let db = tmp.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let d = Daemon::start_with(Some(&agent_tables()?), &["--db", &db_arg])?;

    let mut cmd = Command::new(&claude);
    cmd.args([
        "-p",
        "Run the three scripted steps.",
        "--allowedTools",
        "Bash,Grep",
    ])
    .current_dir(&work)
    .env("HOME", &home)
    .env_remove("CLAUDE_CONFIG_DIR")
    .env_remove("SENSOR_RUN_ID")
    .env(
        "ANTHROPIC_BASE_URL",
        format!("http://127.0.0.1:{}", model.port),
    )
    .env("ANTHROPIC_API_KEY", "sk-ant-test-dummy")
    .env("DISABLE_AUTOUPDATER", "1")
    .env("DISABLE_TELEMETRY", "1")
    .env("DISABLE_ERROR_REPORTING", "1")
    .env("CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC", "1");
    let forger = forge.then(|| {
        let project = project.clone();
        thread::spawn(move || forge_call(&project))
    });
    let (pid, out) = run_with_timeout(&mut cmd, Duration::from_secs(120))?;
    if let Some(f) = forger {
        f.join()
            .map_err(|_| anyhow::anyhow!("the forger panicked"))?
            .context("forging a call into the transcript")?;
    }
    let model_log = fs::read_to_string(&model.log).unwrap_or_default();
    ensure!(
        out.status.success(),
        "claude -p failed with {}\nstdout: {}\nstderr: {}\nmodel log:\n{model_log}",
        out.status,
        text(&out.stdout).trim(),
        text(&out.stderr).trim()
    );
    ensure!(
        text(&out.stdout).contains("All scripted steps done."),
        "claude did not finish the script: {}\nmodel log:\n{model_log}",
        text(&out.stdout)
    );

    // The run claude started, its calls and its end.
    let start = d.wait_for(Duration::from_secs(10), |e| {
        kind(e) == "run.start"
            && str_at(e, "/run/agent") == Some("claude-code")
            && e.pointer("/process/pid").and_then(Value::as_u64) == Some(u64::from(pid))
    })?;
    let run = str_at(&start, "/run/id")
        .context("run.start without run id")?
        .to_owned();
    let events = d.wait_events(Duration::from_secs(15), |evs| {
        tool_calls(evs, &run).len() >= script.len()
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
        home,
        db,
        dirs: (tmp, d),
    })
}

/// The three steps: the second a curl to the test's listener.
fn three_steps(http: u16) -> Vec<String> {
    vec![
        "echo step-one".to_owned(),
        format!("curl -s http://127.0.0.1:{http}/tool-call-two"),
        "echo step-three".to_owned(),
    ]
}

/// The forged call's id and command.
const FORGED_ID: &str = "toolu_forged";
const FORGED_CMD: &str = "curl -s http://evil.example/never-ran";

/// The time now as the transcript writes it (RFC 3339, ms, UTC).
fn now_stamp() -> Result<String> {
    let out = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%S.%3NZ"])
        .output()?;
    ensure!(out.status.success(), "date failed");
    Ok(text(&out.stdout).trim().to_owned())
}

/// Seconds from the call's result (`tool_call.result_time`, written by the
/// agent as it wrote the result) to its `tool.call` event (`time`, when the
/// daemon emitted it): the reconciliation latency (both UTC, same day).
fn latency(call: &Value) -> Option<f64> {
    fn secs(t: &str) -> Option<f64> {
        let clock = t.split_once('T')?.1.trim_end_matches('Z');
        let mut parts = clock.split(':');
        let h: f64 = parts.next()?.parse().ok()?;
        let m: f64 = parts.next()?.parse().ok()?;
        let s: f64 = parts.next()?.parse().ok()?;
        Some(h * 3600.0 + m * 60.0 + s)
    }
    let emitted = secs(str_at(call, "/time")?)?;
    let result = secs(str_at(call, "/tool_call/result_time")?)?;
    Some((emitted - result).rem_euclid(86_400.0))
}

/// Prints each call's latency (a figure: the machine is shared) and fails
/// when one misses the issue's target, 1 s (inotify wakes the reader, a
/// call waits 200 ms after its result; the fallback poll is every 1 s).
fn check_latency(calls: &[Value]) -> Result<()> {
    for call in calls {
        let l = latency(call).with_context(|| format!("no latency: {}", compact(call)))?;
        eprintln!(
            "latency {}: {l:.3} s (result written -> tool.call)",
            str_at(call, "/tool_call/id").unwrap_or("?")
        );
        ensure!(l < 1.0, "latency {l:.3} s: {}", compact(call));
    }
    Ok(())
}

/// Edits the run's transcript as it is written: once claude has begun its
/// file, appends a Bash call that never ran, with a successful result.
fn forge_call(project: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let file = loop {
        let found = fs::read_dir(project)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.extension().is_some_and(|x| x == "jsonl")
                    && p.file_name()
                        .is_some_and(|n| !n.to_string_lossy().starts_with(['y', 'z']))
            });
        if let Some(f) = found {
            break f;
        }
        ensure!(
            Instant::now() < deadline,
            "claude wrote no transcript in {}",
            project.display()
        );
        thread::sleep(Duration::from_millis(20));
    };
    // Rotated once claude has written its first call: replaced by a copy
    // (another inode, the same lines), which claude appends to from then on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !fs::read_to_string(&file)?.contains("toolu_fake00") {
        ensure!(Instant::now() < deadline, "claude wrote no call");
        thread::sleep(Duration::from_millis(20));
    }
    let copy = file.with_extension("rotating");
    fs::copy(&file, &copy)?;
    fs::rename(&copy, &file)?;
    let call = serde_json::json!({"type": "assistant", "timestamp": now_stamp()?,
        "message": {"role": "assistant", "content": [
            {"type": "tool_use", "id": FORGED_ID, "name": "Bash", "input": {"command": FORGED_CMD}}]}});
    let result = serde_json::json!({"type": "user", "timestamp": now_stamp()?,
        "message": {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": FORGED_ID, "content": "done", "is_error": false}]}});
    let mut f = fs::OpenOptions::new().append(true).open(&file)?;
    f.write_all(format!("{call}\n{result}\n").as_bytes())?;
    Ok(())
}

/// The three calls, in order, with their commands, each explaining its
/// shell; the curl's exec and connect under the second call only.
fn check_calls(r: &Ran) -> Result<()> {
    let (run, events, script, http, home) = (&r.run, &r.events, &r.script, r.http, &r.home);
    let calls: Vec<Value> = tool_calls(events, run)
        .into_iter()
        .filter(|c| str_at(c, "/tool_call/id").is_some_and(|id| id.starts_with("toolu_fake")))
        .collect();
    ensure!(
        calls.len() == 3,
        "tool.call events: {:?}",
        calls.iter().map(compact).collect::<Vec<_>>()
    );
    check_latency(&calls)?;
    for (i, (call, cmd)) in calls.iter().zip(script).enumerate() {
        let want_id = format!("toolu_fake{i:02}");
        ensure!(
            str_at(call, "/tool_call/id") == Some(want_id.as_str())
                && str_at(call, "/tool_call/name") == Some("Bash")
                && str_at(call, "/tool_call/input") == Some(cmd.as_str())
                && call
                    .pointer("/tool_call/result_time")
                    .is_some_and(Value::is_string),
            "call {i}: {}",
            compact(call)
        );
        let projects = home.join(".claude/projects").to_string_lossy().into_owned();
        ensure!(
            str_at(call, "/tool_call/transcript")
                .is_some_and(|t| t.starts_with(&projects) && t.ends_with(".jsonl")),
            "call {i} transcript path: {}",
            compact(call)
        );
        ensure!(
            !linked_seqs(call).is_empty(),
            "call {i} explains no process: {}",
            compact(call)
        );
    }

    // The curl's exec and its connect to the listener, in the run.
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
    check_labels(r, &calls)?;
    for (what, e) in [("exec", curl_exec), ("connect", connect)] {
        let label = str_at(e, "/run/tool_call/id");
        ensure!(
            label.is_none_or(|l| l == "toolu_fake01"),
            "the curl's {what} is labelled with another call: {}",
            compact(e)
        );
    }
    for (i, call) in calls.iter().enumerate() {
        let seqs = linked_seqs(call);
        let has = seqs.contains(&exec_seq) && seqs.contains(&connect_seq);
        let has_any = seqs.contains(&exec_seq) || seqs.contains(&connect_seq);
        if i == 1 {
            ensure!(
                has,
                "the curl's exec {exec_seq} and connect {connect_seq} are not under its call: {}",
                compact(call)
            );
        } else {
            ensure!(!has_any, "the curl is under call {i}: {}", compact(call));
        }
    }
    Ok(())
}

/// Every event labelled with a call (`run.tool_call`) is one of that
/// call's (its `tool.call` lists it), with the call's tool; the events
/// the calls list carry no other call's label.
fn check_labels(r: &Ran, calls: &[Value]) -> Result<()> {
    let mut owner: std::collections::HashMap<u64, &str> = std::collections::HashMap::new();
    for c in calls {
        let id = str_at(c, "/tool_call/id").context("call id")?;
        for seq in linked_seqs(c) {
            owner.insert(seq, id);
        }
    }
    let mut labelled = 0;
    for e in r
        .events
        .iter()
        .filter(|e| str_at(e, "/run/id") == Some(r.run.as_str()))
    {
        let Some(label) = str_at(e, "/run/tool_call/id") else {
            continue;
        };
        labelled += 1;
        let seq = e["seq"].as_u64().context("seq")?;
        ensure!(
            str_at(e, "/run/tool_call/name") == Some("Bash"),
            "label without the tool: {}",
            compact(e)
        );
        match owner.get(&seq) {
            Some(id) => ensure!(*id == label, "event {seq} labelled {label}, listed by {id}"),
            // An exit after the call's window, or a connect the list's
            // bound left out: still one of the call's processes.
            None => ensure!(
                matches!(kind(e), "process.exit" | "network.connect"),
                "event {seq} labelled {label} but no call lists it: {}",
                compact(e)
            ),
        }
    }
    eprintln!(
        "{labelled} events of the run carried run.tool_call as they went out; {} listed by the calls",
        owner.len()
    );
    Ok(())
}

/// `sensor tree RUN` and the report show each call with its input above
/// its processes: the curl under the curl's call, not under another.
fn check_grouped(r: &Ran) -> Result<()> {
    let header = format!(
        "tool call Bash toolu_fake01: curl -s http://127.0.0.1:{}/tool-call-two",
        r.http
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let tree = loop {
        let mut cmd = Command::new(sensor_tests::sensor_bin()?);
        cmd.args(["tree", &r.run, "--db"])
            .arg(&r.db)
            .env_remove("SENSOR_DB")
            .env("COLUMNS", "4000");
        let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
        let shown = text(&out.stdout);
        if out.status.success() && shown.matches("└─ tool call Bash toolu_fake").count() == 3 {
            break shown;
        }
        ensure!(
            Instant::now() < deadline,
            "sensor tree does not show the 3 calls:\n{shown}\n{}",
            text(&out.stderr)
        );
        thread::sleep(Duration::from_millis(200));
    };
    let lines: Vec<&str> = tree.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with(&format!("└─ {header}")))
        .with_context(|| format!("no line {header:?} in:\n{tree}"))?;
    let depth = |l: &str| l.len() - l.trim_start().len();
    let under: Vec<&str> = lines[at + 1..]
        .iter()
        .take_while(|l| depth(l) > depth(lines[at]))
        .copied()
        .collect();
    ensure!(
        under.iter().any(|l| l.contains(&format!(
            "curl -s http://127.0.0.1:{}/tool-call-two",
            r.http
        )) && !l.contains("tool call")),
        "the curl is not under its call in:\n{tree}"
    );
    ensure!(
        !under.iter().any(|l| l.contains("echo step-")),
        "another call's shell under the curl's call:\n{tree}"
    );

    let html = r.db.with_extension("html");
    let mut cmd = Command::new(sensor_tests::sensor_bin()?);
    cmd.args(["report", &r.run, "--db"])
        .arg(&r.db)
        .arg("-o")
        .arg(&html)
        .env_remove("SENSOR_DB");
    let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
    ensure!(out.status.success(), "sensor report: {}", text(&out.stderr));
    let page = fs::read_to_string(&html)?;
    let from = page
        .find("id=\"processes\"")
        .context("no process tree in the report")?;
    let tree = &page[from..];
    let call = tree
        .find("<code>toolu_fake01</code>")
        .context("the report shows no call toolu_fake01")?;
    let item = &tree[..call];
    ensure!(
        item.rfind("<li class=\"call\">").is_some(),
        "the call is not an item of the report's tree"
    );
    let after = &tree[call..];
    let next_call = after[1..]
        .find("<li class=\"call\">")
        .map_or(after.len(), |i| i + 1);
    ensure!(
        after[..next_call].contains(&format!(
            "curl -s http://127.0.0.1:{}/tool-call-two</code>",
            r.http
        )),
        "the report does not show the curl under its call"
    );
    Ok(())
}

fn unexplained(r: &Ran) -> Vec<&Value> {
    r.events
        .iter()
        .filter(|e| kind(e) == "tool.unexplained" && str_at(e, "/run/id") == Some(r.run.as_str()))
        .collect()
}

/// `sensor replay RUN` shows each call, its command and the events it
/// explains (the store lags the outputs by up to 100 ms: polled).
fn check_replay(r: &Ran) -> Result<()> {
    let want = format!(
        "Bash toolu_fake01: curl -s http://127.0.0.1:{}/tool-call-two (events ",
        r.http
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut cmd = Command::new(sensor_tests::sensor_bin()?);
        cmd.args(["replay", &r.run, "--db"])
            .arg(&r.db)
            .env_remove("SENSOR_DB")
            .env("COLUMNS", "4000");
        let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
        let shown = text(&out.stdout);
        let calls = shown.lines().filter(|l| l.contains("] tool.call ")).count();
        if out.status.success() && calls == 3 && shown.contains(&want) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "sensor replay does not show the 3 calls ({want:?}):\n{shown}\n{}",
            text(&out.stderr)
        );
        thread::sleep(Duration::from_millis(200));
    }
}

fn unreadable(r: &Ran) -> Vec<&Value> {
    r.events
        .iter()
        .filter(|e| {
            kind(e) == "transcript.unreadable" && str_at(e, "/run/id") == Some(r.run.as_str())
        })
        .collect()
}

#[test]
fn claude_tool_calls_are_linked_to_their_processes() -> Result<()> {
    let r = run_claude(|_| Ok(()), false, three_steps)?;
    let bad: Vec<String> = unreadable(&r).into_iter().map(compact).collect();
    ensure!(bad.is_empty(), "transcript.unreadable: {bad:?}");
    // Every call ran: none unobserved.
    let unobserved: Vec<String> = r
        .events
        .iter()
        .filter(|e| kind(e) == "tool.unobserved")
        .map(compact)
        .collect();
    ensure!(unobserved.is_empty(), "tool.unobserved: {unobserved:?}");
    // Claude's own start-up processes are its infrastructure.
    let unexplained: Vec<String> = unexplained(&r).into_iter().map(compact).collect();
    ensure!(unexplained.is_empty(), "tool.unexplained: {unexplained:?}");
    check_calls(&r)?;
    check_replay(&r)?;
    check_grouped(&r)
}

/// A call that leaves a job in the background: the job's exec after the
/// call's result is `tool.unexplained` (`after_call`, naming the call); the
/// rest of the run is explained.
#[test]
fn a_background_job_that_outlives_its_call_is_unexplained() -> Result<()> {
    let r = run_claude(
        |_| Ok(()),
        false,
        |_| {
            vec![
                "(sleep 2; cat /etc/hostname) >/dev/null 2>&1 &".to_owned(),
                "sleep 4".to_owned(),
                "echo step-three".to_owned(),
            ]
        },
    )?;
    let d = &r.dirs.1;
    let found = d.wait_events(Duration::from_secs(10), |evs| {
        evs.iter()
            .any(|e| kind(e) == "tool.unexplained" && str_at(e, "/run/id") == Some(r.run.as_str()))
    })?;
    let r = Ran { events: found, ..r };
    let u = unexplained(&r);
    ensure!(
        u.len() == 1,
        "one tool.unexplained expected: {:?}",
        u.iter().map(|e| compact(e)).collect::<Vec<_>>()
    );
    let e = u[0];
    ensure!(
        argv_of(e) == ["cat", "/etc/hostname"]
            && str_at(e, "/unexplained/reason") == Some("after_call")
            && str_at(e, "/unexplained/after_call/id") == Some("toolu_fake00"),
        "{}",
        compact(e)
    );
    // It names the exec it stands for.
    let exec_seq = e.pointer("/unexplained/exec_seq").and_then(Value::as_u64);
    ensure!(
        r.events.iter().any(|x| kind(x) == "process.exec"
            && x["seq"].as_u64() == exec_seq
            && argv_of(x) == ["cat", "/etc/hostname"]),
        "exec_seq {exec_seq:?} is not the cat's exec"
    );
    r.dirs.1.check_alive()
}

/// A symlink to /etc/shadow and a file of garbage beside the real
/// transcript, and a call forged into it that never ran: the daemon reads
/// neither file, says so once, stays up, still reports the real calls, and
/// reports the forged one as `tool.unobserved`.
#[test]
fn hostile_transcripts_are_reported_and_a_forged_call_is_unobserved() -> Result<()> {
    let r = run_claude(
        |project| {
            // Named to sort after claude's own file (a UUID: [0-9a-f]...),
            // so that the symlink is the run's first problem.
            std::os::unix::fs::symlink("/etc/shadow", project.join("y-shadow.jsonl"))?;
            let mut garbage = fs::File::create(project.join("z-garbage.jsonl"))?;
            garbage.write_all(b"{not json\n")?;
            garbage.write_all(&vec![b'x'; (1 << 20) + 10])?;
            garbage.write_all(b"\n")?;
            Ok(())
        },
        true,
        three_steps,
    )?;
    let bad = unreadable(&r);
    ensure!(
        bad.len() == 1,
        "one transcript.unreadable expected: {:?}",
        bad.iter().map(|e| compact(e)).collect::<Vec<_>>()
    );
    let reason = str_at(bad[0], "/transcript/reason").unwrap_or("");
    ensure!(
        str_at(bad[0], "/transcript/path").is_some_and(|p| p.ends_with("y-shadow.jsonl"))
            && reason.contains("cannot open"),
        "{}",
        compact(bad[0])
    );
    ensure!(
        !r.events.iter().any(|e| compact(e).contains("root:")),
        "something of /etc/shadow reached the events"
    );
    // The forged call: a tool.call explaining nothing, then its tool.unobserved.
    let unobserved: Vec<&Value> = r
        .events
        .iter()
        .filter(|e| kind(e) == "tool.unobserved" && str_at(e, "/run/id") == Some(r.run.as_str()))
        .collect();
    ensure!(
        unobserved.len() == 1
            && str_at(unobserved[0], "/tool_call/id") == Some(FORGED_ID)
            && str_at(unobserved[0], "/tool_call/input") == Some(FORGED_CMD),
        "tool.unobserved: {:?}",
        unobserved.iter().map(|e| compact(e)).collect::<Vec<_>>()
    );
    // The rotation: each call reported once.
    let calls = tool_calls(&r.events, &r.run);
    let ids: Vec<&str> = calls
        .iter()
        .filter_map(|c| str_at(c, "/tool_call/id"))
        .collect();
    let mut unique = ids.clone();
    unique.sort_unstable();
    unique.dedup();
    ensure!(unique.len() == ids.len(), "a call reported twice: {ids:?}");
    check_calls(&r)
}

/// A Grep call (Claude Code runs its bundled ripgrep for it): the `rg`
/// process is linked to the call by its window and the tool's known
/// program (`[[agent]] tool_programs`), not excused as infrastructure; the
/// run has no `tool.unexplained`.
#[test]
fn a_grep_call_is_linked_to_its_rg() -> Result<()> {
    let r = run_claude(
        |_| Ok(()),
        false,
        |_| {
            vec![
                r#"@Grep {"pattern": "needle-in-work", "output_mode": "files_with_matches"}"#
                    .to_owned(),
                "echo after-grep".to_owned(),
            ]
        },
    )?;
    let unexplained: Vec<String> = unexplained(&r).into_iter().map(compact).collect();
    ensure!(unexplained.is_empty(), "tool.unexplained: {unexplained:?}");
    let calls = tool_calls(&r.events, &r.run);
    let grep = calls
        .iter()
        .find(|c| str_at(c, "/tool_call/name") == Some("Grep"))
        .context("no tool.call for the Grep call")?;
    ensure!(
        str_at(grep, "/tool_call/id") == Some("toolu_fake00")
            && str_at(grep, "/tool_call/input").is_some_and(|i| i.contains("needle-in-work")),
        "{}",
        compact(grep)
    );
    // Its rg: the exec that searched for the pattern, linked to the call.
    let rg_execs = linked_execs(&r.events, grep);
    ensure!(
        rg_execs
            .iter()
            .any(|a| a.first().is_some_and(|a0| a0 == "rg")
                && a.iter().any(|x| x == "needle-in-work")),
        "the Grep call's rg is not linked to it: {rg_execs:?}\n{}",
        compact(grep)
    );
    // And to no other call.
    let rg_seqs: Vec<u64> = linked_seqs(grep);
    for c in calls
        .iter()
        .filter(|c| str_at(c, "/tool_call/name") != Some("Grep"))
    {
        ensure!(
            !linked_seqs(c).iter().any(|s| rg_seqs.contains(s)),
            "the rg is under another call: {}",
            compact(c)
        );
    }
    Ok(())
}

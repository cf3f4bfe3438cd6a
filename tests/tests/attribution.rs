//! Agent run attribution (issue 4) on the real kernel: launch, sub-runs,
//! matchers, back-fill, restart survival, pid reuse, the control socket's
//! security and attestation, TTL, and principals. Real processes; the
//! assertions are on what the sensor reported (events file, whoami/attest
//! answers, its run table). Run as root:
//! `SENSOR_BIN=... cargo test -p sensor-tests -- --test-threads=1`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, argv_has, check, compact, dump, helper_bin, kind,
    marker, pid_of, run_child, str_at, text,
};
use serde_json::{Value, json};

// ----- helpers -----

/// A shell function `w FILE` that waits until FILE exists, to put in front of
/// `sh -c` scripts so the test decides when a process goes on.
const WAIT_FN: &str = r#"w() { while [ ! -e "$1" ]; do sleep 0.05; done; }; "#;

/// `run.id` of an event.
fn run_id(e: &Value) -> Option<&str> {
    str_at(e, "/run/id")
}

/// `run.attribution` of an event.
fn how(e: &Value) -> Option<&str> {
    str_at(e, "/run/attribution")
}

/// A successful `process.exec` whose argv has `needle`.
fn is_exec_with(e: &Value, needle: &str) -> bool {
    kind(e) == "process.exec" && str_at(e, "/exec/result") == Some("ok") && argv_has(e, needle)
}

/// Is this a `process.*` event?
fn is_process_event(e: &Value) -> bool {
    kind(e).starts_with("process.")
}

/// File-order index of the first event matching `pred`.
fn position(events: &[Value], pred: impl Fn(&Value) -> bool) -> Option<usize> {
    events.iter().position(pred)
}

/// All events of `k` for run `id`.
fn of_run<'a>(events: &'a [Value], k: &str, id: &str) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| kind(e) == k && run_id(e) == Some(id))
        .collect()
}

/// All `run.start` events whose process is `pid`.
fn starts_by_pid(events: &[Value], pid: u32) -> Vec<&Value> {
    events
        .iter()
        .filter(|e| kind(e) == "run.start" && pid_of(e) == Some(pid))
        .collect()
}

fn dump_refs(events: &[&Value]) -> String {
    let owned: Vec<Value> = events.iter().map(|e| (*e).clone()).collect();
    dump(&owned)
}

/// What the `run` object of an event should say.
#[derive(Clone, Copy, Debug)]
struct RunExp<'a> {
    id: &'a str,
    agent: &'a str,
    parent: Option<&'a str>,
    root: &'a str,
    depth: i64,
}

impl<'a> RunExp<'a> {
    /// A top-level run.
    fn top(id: &'a str, agent: &'a str) -> Self {
        Self {
            id,
            agent,
            parent: None,
            root: id,
            depth: 0,
        }
    }
}

/// Checks `run` (an event's `run` object, or a whoami/attest `run`) against
/// `x`; `attribution` too when given (events carry it in `run`).
fn check_run_obj(c: &mut Checks, run: Option<&Value>, x: RunExp<'_>, ctx: &str) {
    let Some(run) = run.filter(|r| r.is_object()) else {
        c.fail(format!("expected run {} ({}), got no run: {ctx}", x.id, x.agent));
        return;
    };
    let s = |k: &str| run.get(k).and_then(Value::as_str);
    check!(
        c,
        s("id") == Some(x.id),
        "run.id should be {}: {ctx}",
        x.id
    );
    check!(
        c,
        s("agent") == Some(x.agent),
        "run.agent should be {:?}: {ctx}",
        x.agent
    );
    let parent_ok = match x.parent {
        None => run.get("parent_id").is_some_and(Value::is_null),
        Some(p) => s("parent_id") == Some(p),
    };
    check!(
        c,
        parent_ok,
        "run.parent_id should be {:?}: {ctx}",
        x.parent
    );
    check!(
        c,
        s("root_id") == Some(x.root),
        "run.root_id should be {}: {ctx}",
        x.root
    );
    check!(
        c,
        run.get("depth").and_then(Value::as_i64) == Some(x.depth),
        "run.depth should be {}: {ctx}",
        x.depth
    );
}

/// [`check_run_obj`] on an event, plus `run.attribution == how`.
fn check_event_run(c: &mut Checks, e: &Value, x: RunExp<'_>, attribution: &str) {
    let ctx = compact(e);
    check_run_obj(c, e.get("run"), x, &ctx);
    if run_id(e) == Some(x.id) {
        check!(
            c,
            how(e) == Some(attribution),
            "run.attribution should be {attribution:?}: {ctx}"
        );
    }
}

/// A background child, killed and reaped on drop.
struct Bg {
    child: Option<Child>,
    pid: u32,
}

impl Bg {
    fn spawn(cmd: &mut Command) -> Result<Self> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("spawn {cmd:?}"))?;
        Ok(Self {
            pid: child.id(),
            child: Some(child),
        })
    }

    fn pid(&self) -> u32 {
        self.pid
    }

    /// Waits (and reaps) up to `timeout`.
    fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let child = self.child.as_mut().context("already reaped")?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = child.try_wait()? {
                self.child = None;
                return Ok(st);
            }
            ensure!(
                Instant::now() < deadline,
                "pid {} did not exit within {timeout:?}",
                self.pid
            );
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bg {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn touch(path: &Path) -> Result<()> {
    fs::write(path, b"").with_context(|| format!("create {}", path.display()))
}

/// Waits until `path` exists and holds a complete last line; returns it all.
fn wait_file(path: &Path) -> Result<String> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Ok(s) = fs::read_to_string(path)
            && s.ends_with('\n')
        {
            return Ok(s);
        }
        ensure!(
            Instant::now() < deadline,
            "{} not written within {EVENT_TIMEOUT:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// Parses a JSON file written by `sensor whoami --json`.
fn read_json(path: &Path) -> Result<Value> {
    let s = wait_file(path)?;
    serde_json::from_str(s.trim()).with_context(|| format!("{}: not JSON: {s:?}", path.display()))
}

/// Field 22 of /proc/PID/stat: start time in clock ticks.
fn start_ticks(pid: u32) -> Result<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    let after = &stat[stat.rfind(')').context("no ) in stat")? + 1..];
    // After "comm)" come fields 3 (state), 4, ...: field 22 is the 20th.
    after
        .split_whitespace()
        .nth(19)
        .context("short stat")?
        .parse()
        .context("start time is not a number")
}

/// The process key the sensor reported on some event of `pid`.
fn key_of(e: &Value) -> Option<&str> {
    str_at(e, "/process/key")
}

/// Waits until the run `id` has a `run.end`; returns it.
fn wait_run_end(d: &Daemon, id: &str) -> Result<Value> {
    d.wait_for(EVENT_TIMEOUT, |e| kind(e) == "run.end" && run_id(e) == Some(id))
        .with_context(|| format!("no run.end for run {id}"))
}

/// Waits for the `run.start` of the run whose first process is `pid`.
fn wait_run_start_pid(d: &Daemon, pid: u32) -> Result<Value> {
    d.wait_for(EVENT_TIMEOUT, |e| {
        kind(e) == "run.start" && pid_of(e) == Some(pid)
    })
    .with_context(|| format!("no run.start for pid {pid}"))
}

/// A `result: error` answer whose message contains `needle` (case-insensitive).
fn check_error(c: &mut Checks, answer: &Value, needle: &str, what: &str) {
    let msg = str_at(answer, "/message").unwrap_or("");
    check!(
        c,
        str_at(answer, "/result") == Some("error")
            && msg.to_lowercase().contains(&needle.to_lowercase()),
        "{what}: expected an error mentioning {needle:?}, got {answer}"
    );
}

/// A copy of /bin/sh (dash) named `fake-agent` in `dir/bin`: an "agent
/// binary" whose resolved exe matches `**/fake-agent` and that runs `-c`
/// scripts. Also `dir/bin/fake-script-agent`, a `#!/bin/sh` script for
/// `script` matchers that runs `/bin/true "$1"` as a child.
fn fake_agents(dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin)?;
    let agent = bin.join("fake-agent");
    let sh = fs::canonicalize("/bin/sh")?;
    fs::copy(&sh, &agent).with_context(|| format!("copy {} to {}", sh.display(), agent.display()))?;
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755))?;
    let script = bin.join("fake-script-agent");
    fs::write(&script, "#!/bin/sh\n/bin/true \"$1\"\nexit 0\n")?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    Ok((agent, script))
}

const MATCHER_CONFIG: &str = r#"
[[agent]]
name = "fake"
exe = ["**/fake-agent"]
exclude_argv = ["--helper"]

[[agent]]
name = "fakescript"
script = ["**/fake-script-agent"]
"#;

/// Runs `cmd` to completion and fails unless it exits 0.
fn run_ok(cmd: &mut Command) -> Result<(u32, String)> {
    let (pid, out) = run_child(cmd)?;
    ensure!(
        out.status.success(),
        "{cmd:?} (pid {pid}) exited with {}; stdout {:?} stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok((pid, text(&out.stdout)))
}

/// Normalised `runs.json` (runs sorted by id), for before/after comparisons.
fn runs_snapshot(d: &Daemon) -> Result<Option<Value>> {
    let Some(bytes) = d.runs_file()? else {
        return Ok(None);
    };
    let mut v: Value = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not JSON", d.runs_path().display()))?;
    if let Some(runs) = v.get_mut("runs").and_then(Value::as_array_mut) {
        runs.sort_by(|a, b| {
            let id = |r: &Value| r.get("id").and_then(Value::as_str).unwrap_or("").to_owned();
            id(a).cmp(&id(b))
        });
    }
    Ok(Some(v))
}

// ----- 1. launch -----

/// launch: every event of CMD and of its descendants carries the run,
/// including a double-forked, setsid'd grandchild that outlives its parent;
/// run.start comes first, run.end ("exited") only after the grandchild
/// exited; SENSOR_RUN_ID is the run id.
#[test]
fn launch_attributes_cmd_and_descendants() -> Result<()> {
    let d = Daemon::start()?;
    let m = marker();
    let gm = format!("{m}-grandchild");
    let script = format!(
        "echo \"id=$SENSOR_RUN_ID\"; (setsid /bin/sh -c 'sleep 1; exec /bin/true {gm}' &) ; exit 0"
    );
    let (pid, stdout) = run_ok(&mut d.launch_cmd("agent-a", &[], &["/bin/sh", "-c", &script, &m]))?;
    let id = stdout
        .trim()
        .strip_prefix("id=")
        .filter(|s| !s.is_empty())
        .with_context(|| format!("the child did not print SENSOR_RUN_ID: {stdout:?}"))?
        .to_owned();

    let gexec = d.wait_for(EVENT_TIMEOUT, |e| is_exec_with(e, &gm))?;
    let gpid = pid_of(&gexec).context("grandchild exec without pid")?;
    d.wait_for(EVENT_TIMEOUT, |e| {
        kind(e) == "process.exit" && pid_of(e) == Some(gpid)
    })?;
    let end = wait_run_end(&d, &id)?;
    let events = d.events()?;

    let mut c = Checks::new();
    let x = RunExp::top(&id, "agent-a");
    let starts = of_run(&events, "run.start", &id);
    check!(
        c,
        starts.len() == 1,
        "expected one run.start for {id}, got:\n{}",
        dump_refs(&starts)
    );
    let start_at = position(&events, |e| kind(e) == "run.start" && run_id(e) == Some(&*id))
        .context("no run.start")?;
    let start = &events[start_at];
    check_event_run(&mut c, start, x, "launch");
    check!(
        c,
        pid_of(start) == Some(pid),
        "run.start process.pid should be the launched pid {pid}: {}",
        compact(start)
    );
    check!(
        c,
        str_at(start, "/run/started_by") == Some("launch")
            && str_at(start, "/run/principal") == Some("root"),
        "run.start should say started_by launch, principal root: {}",
        compact(start)
    );
    let first_in_run = position(&events, |e| run_id(e) == Some(&*id) && kind(e) != "run.start");
    check!(
        c,
        first_in_run.is_some_and(|i| i > start_at),
        "an event of the run precedes its run.start (run.start at {start_at}, first event at {first_in_run:?})"
    );

    // The process tree of the launched pid, from the spawn events.
    let mut tree = BTreeSet::from([pid]);
    for e in &events[start_at..] {
        if kind(e) == "process.spawn"
            && let (Some(p), Some(pp)) = (pid_of(e), sensor_tests::i64_at(e, "/process/ppid"))
            && u32::try_from(pp).is_ok_and(|pp| tree.contains(&pp))
        {
            tree.insert(p);
        }
    }
    check!(
        c,
        tree.contains(&gpid),
        "the grandchild {gpid} is not a descendant of {pid} per the spawn events (tree {tree:?})"
    );
    for e in &events[start_at..] {
        let Some(p) = pid_of(e) else { continue };
        if !is_process_event(e) || !tree.contains(&p) {
            continue;
        }
        let expected = if p == pid { "launch" } else { "inherited" };
        check_event_run(&mut c, e, x, expected);
    }
    for e in &events {
        if run_id(e) == Some(&*id)
            && is_process_event(e)
            && !pid_of(e).is_some_and(|p| tree.contains(&p))
        {
            c.fail(format!(
                "an event outside the launched tree carries the run: {}",
                compact(e)
            ));
        }
    }
    // The grandchild outlived the launched process, and the run outlived both.
    let p_exit = position(&events, |e| {
        kind(e) == "process.exit" && pid_of(e) == Some(pid)
    });
    let g_exec = position(&events, |e| is_exec_with(e, &gm));
    let g_exit = position(&events, |e| {
        kind(e) == "process.exit" && pid_of(e) == Some(gpid)
    });
    let end_at = position(&events, |e| kind(e) == "run.end" && run_id(e) == Some(&*id));
    check!(
        c,
        p_exit.is_some() && g_exec.is_some() && p_exit < g_exec,
        "the launched process's exit ({p_exit:?}) should come before the grandchild's exec ({g_exec:?})"
    );
    check!(
        c,
        g_exit.is_some() && end_at.is_some() && g_exit < end_at,
        "run.end ({end_at:?}) should come after the grandchild's exit ({g_exit:?})"
    );
    check_event_run(&mut c, &end, x, "launch");
    check!(
        c,
        str_at(&end, "/run/end_reason") == Some("exited"),
        "run.end should have end_reason exited: {}",
        compact(&end)
    );
    check!(
        c,
        of_run(&events, "run.end", &id).len() == 1,
        "more than one run.end for {id}"
    );

    // Exit code passed through; stdout untouched.
    let (_, out) = run_child(&mut d.launch_cmd("agent-a", &[], &["/bin/sh", "-c", "exit 7", &m]))?;
    check!(
        c,
        out.status.code() == Some(7),
        "launch -- sh -c 'exit 7' exited with {} (stderr {:?})",
        out.status,
        text(&out.stderr)
    );
    let (_, out) = run_child(&mut d.launch_cmd("agent-a", &[], &["echo", "hi"]))?;
    check!(
        c,
        out.status.success() && out.stdout == b"hi\n",
        "launch -- echo hi: status {}, stdout {:?} (expected exactly \"hi\\n\"), stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    c.finish()
}

/// launch without a daemon: refuses to start CMD (exit 1, error on stderr),
/// unless --best-effort (CMD runs, warning on stderr).
#[test]
fn launch_without_daemon() -> Result<()> {
    let tmp = TempDir::new("nodaemon")?;
    let sock = tmp.path().join("none.sock");
    let bin = sensor_tests::sensor_bin()?;
    let mut c = Checks::new();
    let (_, out) = run_child(
        Command::new(&bin)
            .args(["launch", "--socket"])
            .arg(&sock)
            .args(["--agent", "a", "--", "echo", "hi"])
            .env_remove("SENSOR_SOCKET"),
    )?;
    check!(
        c,
        out.status.code() == Some(1) && out.stdout.is_empty() && !out.stderr.is_empty(),
        "launch without a daemon: expected exit 1, no stdout, an error; got {} stdout {:?} stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    let (_, out) = run_child(
        Command::new(&bin)
            .args(["launch", "--best-effort", "--socket"])
            .arg(&sock)
            .args(["--agent", "a", "--", "echo", "hi"])
            .env_remove("SENSOR_SOCKET"),
    )?;
    check!(
        c,
        out.status.success() && out.stdout == b"hi\n" && !out.stderr.is_empty(),
        "launch --best-effort without a daemon: expected exit 0, stdout \"hi\\n\", a warning; got {} stdout {:?} stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    c.finish()
}

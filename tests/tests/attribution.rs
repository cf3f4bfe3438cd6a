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

// ----- 2. sub-runs -----

/// launch inside launch inside launch: three runs, depth 0/1/2, with the
/// parent/root chain right; whoami inside each level reports its own run;
/// sub-runs without --principal inherit the principal.
#[test]
fn nested_launch_three_levels() -> Result<()> {
    let d = Daemon::start()?;
    let m = marker();
    let dir = d.dir().to_owned();
    let lvl = dir.join("lvl.sh");
    fs::write(
        &lvl,
        r#"n=$1
"$SENSOR" whoami --json > "$DIR/w$n.tmp" 2>&1; mv "$DIR/w$n.tmp" "$DIR/w$n"
echo "$SENSOR_RUN_ID" > "$DIR/id$n.tmp"; mv "$DIR/id$n.tmp" "$DIR/id$n"
if [ "$n" -lt 2 ]; then
  "$SENSOR" launch --agent "level$((n + 1))" -- /bin/sh "$DIR/lvl.sh" $((n + 1))
fi
/bin/true "$MARK-level$n"
exit 0
"#,
    )?;
    let (pid0, _) = run_ok(
        d.launch_cmd(
            "level0",
            &["--principal", "alice"],
            &["/bin/sh", &lvl.to_string_lossy(), "0"],
        )
        .env("SENSOR", d.bin())
        .env("DIR", &dir)
        .env("MARK", &m),
    )?;
    let mut ids = Vec::new();
    let mut whoami = Vec::new();
    for n in 0..3 {
        ids.push(wait_file(&dir.join(format!("id{n}")))?.trim().to_owned());
        whoami.push(read_json(&dir.join(format!("w{n}")))?);
    }
    for id in &ids {
        wait_run_end(&d, id)?;
    }
    let events = d.events()?;
    let mut c = Checks::new();
    let agents = ["level0", "level1", "level2"];
    for n in 0..3 {
        let x = RunExp {
            id: &ids[n],
            agent: agents[n],
            parent: n.checked_sub(1).map(|p| ids[p].as_str()),
            root: &ids[0],
            depth: n as i64,
        };
        let w = &whoami[n];
        check_run_obj(&mut c, w.get("run"), x, &format!("whoami at level {n}: {w}"));
        check!(
            c,
            str_at(w, "/run/principal") == Some("alice")
                && w.pointer("/run/principal_claimed").is_none_or(Value::is_null),
            "level {n}: principal should be alice (root's --principal, inherited by sub-runs), nothing claimed: {w}"
        );
        check!(
            c,
            str_at(w, "/attribution") == Some("inherited"),
            "whoami's process is a child of the level-{n} shell: attribution should be inherited: {w}"
        );
        let starts = of_run(&events, "run.start", &ids[n]);
        check!(
            c,
            starts.len() == 1,
            "level {n}: expected one run.start for {}, got:\n{}",
            ids[n],
            dump_refs(&starts)
        );
        if let Some(s) = starts.first() {
            check_event_run(&mut c, s, x, "launch");
            check!(
                c,
                str_at(s, "/run/principal") == Some("alice"),
                "level {n} run.start principal should be alice: {}",
                compact(s)
            );
            if n == 0 {
                check!(
                    c,
                    pid_of(s) == Some(pid0),
                    "level 0 run.start pid should be {pid0}: {}",
                    compact(s)
                );
            }
        }
        let mark = format!("{m}-level{n}");
        match events.iter().find(|e| is_exec_with(e, &mark)) {
            Some(e) => check_event_run(&mut c, e, x, "inherited"),
            None => c.fail(format!("no exec of /bin/true {mark}")),
        }
        // The level's shell (exec of lvl.sh in the launched pid): attribution launch.
        let shell = events.iter().find(|e| {
            is_exec_with(e, "lvl.sh")
                && argv_of_eq(e, 2, &n.to_string())
                && run_id(e) == Some(&ids[n])
        });
        match shell {
            Some(e) => check_event_run(&mut c, e, x, "launch"),
            None => c.fail(format!(
                "no exec of lvl.sh {n} carrying its run {}",
                ids[n]
            )),
        }
    }
    // A run ends only after its sub-runs ended.
    let end_at = |id: &str| position(&events, |e| kind(e) == "run.end" && run_id(e) == Some(id));
    let (e0, e1, e2) = (end_at(&ids[0]), end_at(&ids[1]), end_at(&ids[2]));
    check!(
        c,
        e2 < e1 && e1 < e0,
        "run.end order should be level2, level1, level0; positions {e2:?}, {e1:?}, {e0:?}"
    );
    c.finish()
}

/// `process.argv[i] == s`.
fn argv_of_eq(e: &Value, i: usize, s: &str) -> bool {
    sensor_tests::argv_of(e).get(i).is_some_and(|a| a == s)
}

// ----- 3. matchers -----

/// An `[[agent]]` exe matcher starts a run without launch (attribution
/// matcher, started_by matcher); a `script` matcher matches `sh SCRIPT` and
/// a `#!/bin/sh` script run directly.
#[test]
fn matcher_starts_run() -> Result<()> {
    let d = Daemon::start_with_config(MATCHER_CONFIG)?;
    let (agent, script) = fake_agents(d.dir())?;
    let m = marker();
    let mut c = Checks::new();

    // exe matcher.
    let child_mark = format!("{m}-exe-child");
    let (apid, _) = run_ok(Command::new(&agent).args([
        "-c",
        &format!("/bin/true {child_mark}; exit 0"),
        &m,
    ]))?;
    let start = wait_run_start_pid(&d, apid)?;
    let id = run_id(&start).context("run.start without run.id")?.to_owned();
    let x = RunExp::top(&id, "fake");
    d.wait_for(EVENT_TIMEOUT, |e| is_exec_with(e, &child_mark))?;
    wait_run_end(&d, &id)?;
    let events = d.events()?;
    check_event_run(&mut c, &start, x, "matcher");
    check!(
        c,
        str_at(&start, "/run/started_by") == Some("matcher"),
        "run.start of a matcher run should say started_by matcher: {}",
        compact(&start)
    );
    let agent_exe = sensor_tests::canonical_str(&agent)?;
    let exec_at = position(&events, |e| {
        kind(e) == "process.exec"
            && pid_of(e) == Some(apid)
            && str_at(e, "/process/exe") == Some(&*agent_exe)
    });
    let start_at = position(&events, |e| kind(e) == "run.start" && run_id(e) == Some(&*id));
    match exec_at {
        Some(i) => {
            check_event_run(&mut c, &events[i], x, "matcher");
            check!(
                c,
                start_at < Some(i),
                "run.start ({start_at:?}) should precede the agent's exec ({i})"
            );
        }
        None => c.fail(format!("no exec of {agent_exe} by pid {apid}")),
    }
    if let Some(e) = events.iter().find(|e| is_exec_with(e, &child_mark)) {
        check_event_run(&mut c, e, x, "inherited");
    }
    check!(
        c,
        of_run(&events, "run.start", &id).len() == 1,
        "more than one run.start for {id}"
    );

    // script matcher: `sh SCRIPT` and the script run by its shebang.
    for (how_run, mut cmd) in [
        ("sh SCRIPT", {
            let mut c = Command::new("/bin/sh");
            c.arg(&script);
            c
        }),
        ("./SCRIPT", Command::new(&script)),
    ] {
        let smark = format!("{m}-script-{}", how_run.len());
        let (spid, _) = run_ok(cmd.arg(&smark))?;
        let start = match wait_run_start_pid(&d, spid) {
            Ok(s) => s,
            Err(e) => {
                c.fail(format!("script matcher ({how_run}): {e:#}"));
                continue;
            }
        };
        let sid = run_id(&start).unwrap_or("").to_owned();
        let sx = RunExp::top(&sid, "fakescript");
        check_event_run(&mut c, &start, sx, "matcher");
        match d.wait_for(EVENT_TIMEOUT, |e| is_exec_with(e, &smark)) {
            Ok(e) => check_event_run(&mut c, &e, sx, "inherited"),
            Err(e) => c.fail(format!("{how_run}: {e:#}")),
        }
    }
    c.finish()
}

/// A matched agent inside a launched run is a sub-run (depth 1, parent = the
/// launched run); a launched process that execs the agent in the same pid
/// stays one run (it already leads its run).
#[test]
fn matcher_inside_launch_is_subrun() -> Result<()> {
    let d = Daemon::start_with_config(MATCHER_CONFIG)?;
    let (agent, _) = fake_agents(d.dir())?;
    let agent = agent.to_string_lossy().into_owned();
    let m = marker();
    let mut c = Checks::new();

    let in_mark = format!("{m}-in");
    let script = format!("{agent} -c '/bin/true {in_mark}; exit 0'; exit 0");
    let (lpid, _) = run_ok(&mut d.launch_cmd("outer", &[], &["/bin/sh", "-c", &script, &m]))?;
    let lstart = wait_run_start_pid(&d, lpid)?;
    let outer = run_id(&lstart).context("no run id")?.to_owned();
    let inner_exec = d.wait_for(EVENT_TIMEOUT, |e| is_exec_with(e, &in_mark))?;
    wait_run_end(&d, &outer)?;
    let events = d.events()?;
    let subs: Vec<&Value> = events
        .iter()
        .filter(|e| kind(e) == "run.start" && str_at(e, "/run/parent_id") == Some(&*outer))
        .collect();
    check!(
        c,
        subs.len() == 1,
        "expected one sub-run of {outer} (the matched agent), got:\n{}",
        dump_refs(&subs)
    );
    if let Some(s) = subs.first() {
        let sid = run_id(s).unwrap_or("");
        let x = RunExp {
            id: sid,
            agent: "fake",
            parent: Some(&outer),
            root: &outer,
            depth: 1,
        };
        check_event_run(&mut c, s, x, "matcher");
        check_event_run(&mut c, &inner_exec, x, "inherited");
        check!(
            c,
            position(&events, |e| kind(e) == "run.end" && run_id(e) == Some(sid))
                < position(&events, |e| kind(e) == "run.end" && run_id(e) == Some(&*outer)),
            "the sub-run should end before its parent"
        );
    }

    // launch -- fake-agent: the launched pid execs the agent: one run.
    let same_mark = format!("{m}-same");
    let (spid, _) = run_ok(&mut d.launch_cmd(
        "launcher",
        &[],
        &[&agent, "-c", &format!("/bin/true {same_mark}; exit 0"), &m],
    ))?;
    let sstart = wait_run_start_pid(&d, spid)?;
    let sid = run_id(&sstart).context("no run id")?.to_owned();
    let e = d.wait_for(EVENT_TIMEOUT, |e| is_exec_with(e, &same_mark))?;
    wait_run_end(&d, &sid)?;
    let x = RunExp::top(&sid, "launcher");
    check_event_run(&mut c, &e, x, "inherited");
    let events = d.events()?;
    let starts = starts_by_pid(&events, spid);
    check!(
        c,
        starts.len() == 1,
        "launch -- fake-agent (same pid) should be one run, got run.starts:\n{}",
        dump_refs(&starts)
    );
    c.finish()
}

/// The agent's child that is the same agent binary stays in its run (one
/// run); an excluded argv (`--helper`) never starts a run, inside or outside
/// a run; a nested invocation from a non-agent shell in the agent's run is a
/// sub-run.
#[test]
fn matcher_children_helpers_and_nesting() -> Result<()> {
    let d = Daemon::start_with_config(MATCHER_CONFIG)?;
    let (agent, _) = fake_agents(d.dir())?;
    let agent = agent.to_string_lossy().into_owned();
    let m = marker();
    let mut c = Checks::new();

    // agent -> child agent (same binary, direct child): one run.
    let cm = format!("{m}-child");
    let (apid, _) = run_ok(Command::new(&agent).args([
        "-c",
        &format!("{agent} -c \"/bin/true {cm}; exit 0\"; exit 0"),
        &m,
    ]))?;
    let start = wait_run_start_pid(&d, apid)?;
    let id = run_id(&start).context("no run id")?.to_owned();
    let e = d.wait_for(EVENT_TIMEOUT, |e| is_exec_with(e, &cm))?;
    wait_run_end(&d, &id)?;
    check_event_run(&mut c, &e, RunExp::top(&id, "fake"), "inherited");
    let events = d.events()?;
    let extra: Vec<&Value> = events
        .iter()
        .filter(|e| kind(e) == "run.start" && str_at(e, "/run/root_id") == Some(&*id))
        .collect();
    check!(
        c,
        extra.len() == 1,
        "agent -> same agent as a direct child should be one run, got run.starts:\n{}",
        dump_refs(&extra)
    );

    // Excluded argv outside any run: no run.
    let xm = format!("{m}-excluded");
    let (xpid, _) = run_ok(Command::new(&agent).args([
        "-c",
        &format!("/bin/true {xm}; exit 0"),
        "--helper",
    ]))?;
    let xe = d.wait_for(EVENT_TIMEOUT, |e| is_exec_with(e, &xm))?;
    d.wait_for(EVENT_TIMEOUT, |e| {
        kind(e) == "process.exit" && pid_of(e) == Some(xpid)
    })?;
    let events = d.events()?;
    check!(
        c,
        starts_by_pid(&events, xpid).is_empty() && xe.get("run").is_some_and(Value::is_null),
        "an excluded argv (--helper) started a run: {}\n{}",
        compact(&xe),
        dump_refs(&starts_by_pid(&events, xpid))
    );
    for e in events.iter().filter(|e| pid_of(e) == Some(xpid)) {
        check!(
            c,
            e.get("run").is_some_and(Value::is_null),
            "event of the excluded helper carries a run: {}",
            compact(e)
        );
    }

    // Nested invocation from a non-agent shell: a sub-run; the same with
    // --helper: no sub-run (stays in the outer run).
    let nm = format!("{m}-nested");
    let hm = format!("{m}-nested-helper");
    let script = format!(
        "/bin/sh -c \"{agent} -c '/bin/true {nm}; exit 0'; exit 0\"; \
         /bin/sh -c \"{agent} -c '/bin/true {hm}; exit 0' --helper; exit 0\"; exit 0"
    );
    let (opid, _) = run_ok(Command::new(&agent).args(["-c", &script, &m]))?;
    let ostart = wait_run_start_pid(&d, opid)?;
    let outer = run_id(&ostart).context("no run id")?.to_owned();
    let ne = d.wait_for(EVENT_TIMEOUT, |e| is_exec_with(e, &nm))?;
    let he = d.wait_for(EVENT_TIMEOUT, |e| is_exec_with(e, &hm))?;
    wait_run_end(&d, &outer)?;
    let events = d.events()?;
    let subs: Vec<&Value> = events
        .iter()
        .filter(|e| kind(e) == "run.start" && str_at(e, "/run/parent_id") == Some(&*outer))
        .collect();
    check!(
        c,
        subs.len() == 1,
        "expected exactly one sub-run of {outer} (the nested agent; not the --helper), got:\n{}",
        dump_refs(&subs)
    );
    if let Some(s) = subs.first() {
        let sid = run_id(s).unwrap_or("");
        let x = RunExp {
            id: sid,
            agent: "fake",
            parent: Some(&outer),
            root: &outer,
            depth: 1,
        };
        check_event_run(&mut c, s, x, "matcher");
        check_event_run(&mut c, &ne, x, "inherited");
    }
    check_event_run(&mut c, &he, RunExp::top(&outer, "fake"), "inherited");
    c.finish()
}

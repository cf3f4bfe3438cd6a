//! Agent run attribution (issue 4) on the real kernel: launch, sub-runs,
//! matchers, back-fill, restart survival, pid reuse, the control socket's
//! security and attestation, TTL, and principals. Real processes; the
//! assertions are on what the sensor reported (events file, whoami/attest
//! answers, its run table). Run as root:
//! `SENSOR_BIN=... cargo test -p sensor-tests -- --test-threads=1`.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
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

/// The successful exec of `/bin/true MARK` (exactly that argv): the marker
/// processes of these tests (a marker inside a script's text does not count).
fn is_true_exec(e: &Value, mark: &str) -> bool {
    kind(e) == "process.exec"
        && str_at(e, "/exec/result") == Some("ok")
        && sensor_tests::argv_of(e) == ["/bin/true", mark]
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
        c.fail(format!(
            "expected run {} ({}), got no run: {ctx}",
            x.id, x.agent
        ));
        return;
    };
    let s = |k: &str| run.get(k).and_then(Value::as_str);
    check!(c, s("id") == Some(x.id), "run.id should be {}: {ctx}", x.id);
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
    d.wait_for(EVENT_TIMEOUT, |e| {
        kind(e) == "run.end" && run_id(e) == Some(id)
    })
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
    fs::copy(&sh, &agent)
        .with_context(|| format!("copy {} to {}", sh.display(), agent.display()))?;
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

    let gexec = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &gm))?;
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
    let start_at = position(&events, |e| {
        kind(e) == "run.start" && run_id(e) == Some(&*id)
    })
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
    let first_in_run = position(&events, |e| {
        run_id(e) == Some(&*id) && kind(e) != "run.start"
    });
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
    let g_exec = position(&events, |e| is_true_exec(e, &gm));
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
            .args(["launch", "--wait", "1s", "--socket"])
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
            .args(["launch", "--best-effort", "--wait", "0s", "--socket"])
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
        check_run_obj(
            &mut c,
            w.get("run"),
            x,
            &format!("whoami at level {n}: {w}"),
        );
        check!(
            c,
            str_at(w, "/run/principal") == Some("alice")
                && w.pointer("/run/principal_claimed")
                    .is_none_or(Value::is_null),
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
        match events.iter().find(|e| is_true_exec(e, &mark)) {
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
            None => c.fail(format!("no exec of lvl.sh {n} carrying its run {}", ids[n])),
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
    let (apid, _) =
        run_ok(Command::new(&agent).args(["-c", &format!("/bin/true {child_mark}; exit 0"), &m]))?;
    let start = wait_run_start_pid(&d, apid)?;
    let id = run_id(&start)
        .context("run.start without run.id")?
        .to_owned();
    let x = RunExp::top(&id, "fake");
    d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &child_mark))?;
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
    let start_at = position(&events, |e| {
        kind(e) == "run.start" && run_id(e) == Some(&*id)
    });
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
    if let Some(e) = events.iter().find(|e| is_true_exec(e, &child_mark)) {
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
        match d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &smark)) {
            Ok(e) => check_event_run(&mut c, &e, sx, "inherited"),
            Err(e) => c.fail(format!("{how_run}: {e:#}")),
        }
    }
    c.finish()
}

/// `policy reload` applies `[[agent]]` matchers added to the config (issue
/// 21: it used to answer "policies reloaded" and apply none): an exec that
/// matched nothing before the reload starts a run of the new agent, under
/// its policy, after it. The answer names the matchers in force and the
/// changed section it did not apply; `status` shows the policy and counts
/// the reload.
#[test]
fn a_reload_applies_a_new_agent_matcher() -> Result<()> {
    let before = r#"
[[agent]]
name = "fakescript"
script = ["**/fake-script-agent"]
"#;
    let d = Daemon::start_with_config(before)?;
    let config = d
        .config_path()
        .context("the daemon has a config")?
        .to_owned();
    let (agent, _) = fake_agents(d.dir())?;
    let m = marker();
    let mut c = Checks::new();

    // Before the reload: fake-agent is no agent.
    let early = format!("{m}-before");
    let (bpid, _) =
        run_ok(Command::new(&agent).args(["-c", &format!("/bin/true {early}; exit 0")]))?;
    d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &early))?;
    check!(
        c,
        !d.events()?
            .iter()
            .any(|e| kind(e) == "run.start" && pid_of(e) == Some(bpid)),
        "before the reload, fake-agent (pid {bpid}) starts no run"
    );

    // Add a matcher for it (with a policy), and change [limits], which a
    // reload does not apply.
    fs::write(
        &config,
        format!(
            "{before}\n[[agent]]\nname = \"reloaded\"\nexe = [\"**/fake-agent\"]\n\
             policy = \"watched\"\n\n[policy.watched]\nmode = \"audit\"\n\n\
             [limits]\nruns_per_uid = 77\n"
        ),
    )?;
    let (_, out) = run_child(
        d.sensor()
            .args(["policy", "reload", "--socket"])
            .arg(d.socket()),
    )?;
    let said = text(&out.stdout);
    check!(
        c,
        out.status.success()
            && said.contains("agent matchers in force: fakescript, reloaded")
            && said.contains("NOT applied")
            && said.contains("[limits]"),
        "the reload names the matchers in force and the change it did not apply: {said:?} {:?}",
        text(&out.stderr)
    );

    // After: the same exec starts a run of the new agent, under its policy.
    let late = format!("{m}-after");
    let (apid, _) =
        run_ok(Command::new(&agent).args(["-c", &format!("/bin/true {late}; exit 0")]))?;
    match wait_run_start_pid(&d, apid) {
        Ok(start) => {
            check!(
                c,
                str_at(&start, "/run/agent") == Some("reloaded")
                    && str_at(&start, "/run/attribution") == Some("matcher")
                    && str_at(&start, "/run/started_by") == Some("matcher")
                    && str_at(&start, "/run/policy") == Some("watched"),
                "after the reload, fake-agent starts a run of agent \"reloaded\" (matcher) under \
                 policy \"watched\": {}",
                compact(&start)
            );
            let id = run_id(&start).unwrap_or("").to_owned();
            match d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &late)) {
                Ok(e) => check_event_run(&mut c, &e, RunExp::top(&id, "reloaded"), "inherited"),
                Err(e) => c.fail(format!("{e:#}")),
            }
        }
        Err(e) => c.fail(format!(
            "after the reload, no run.start for fake-agent (pid {apid}): {e:#}"
        )),
    }
    let status = d.status_json()?;
    check!(
        c,
        status["agents"] == json!(["fakescript", "reloaded"])
            && status["reloads"]["ok"] == 1
            && status["reloads"]["refused"] == 0
            && status["policies"]["version"] == 2
            && status["policies"]["policies"].as_array().is_some_and(|p| p
                .iter()
                .any(|p| p["name"] == "watched" && p["mode"] == "audit")),
        "status: the agents in force, one reload applied, policy set version 2 with \"watched\" \
         (audit): {}",
        compact(
            &json!({"agents": status["agents"], "reloads": status["reloads"],
            "policies": status["policies"]})
        )
    );

    // A refused reload (the new file drops "reloaded" and has an error)
    // changes nothing, and says so: the matchers stay with the policies.
    fs::write(
        &config,
        format!("{before}\n[policy.watched]\nmode = \"audit\"\nexec.allow = [\"/x\"]\nbogus = 1\n"),
    )?;
    let (_, out) = run_child(
        d.sensor()
            .args(["policy", "reload", "--socket"])
            .arg(d.socket()),
    )?;
    let err = text(&out.stderr);
    check!(
        c,
        !out.status.success()
            && err.contains(
                "reload refused; the policies, agent matchers and detection rules in force stay: "
            ),
        "a bad file is refused, saying the matchers stay too: {err:?}"
    );
    let kept = format!("{m}-kept");
    let (kpid, _) =
        run_ok(Command::new(&agent).args(["-c", &format!("/bin/true {kept}; exit 0")]))?;
    match wait_run_start_pid(&d, kpid) {
        Ok(start) => check!(
            c,
            str_at(&start, "/run/agent") == Some("reloaded"),
            "after the refused reload, fake-agent still starts a run of \"reloaded\": {}",
            compact(&start)
        ),
        Err(e) => c.fail(format!(
            "after the refused reload, no run.start for fake-agent (pid {kpid}): {e:#}"
        )),
    }
    let status = d.status_json()?;
    check!(
        c,
        status["agents"] == json!(["fakescript", "reloaded"])
            && status["reloads"]["ok"] == 1
            && status["reloads"]["refused"] == 1,
        "status after the refused reload: {}",
        compact(&json!({"agents": status["agents"], "reloads": status["reloads"]}))
    );
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
    let inner_exec = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &in_mark))?;
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
                < position(&events, |e| kind(e) == "run.end"
                    && run_id(e) == Some(&*outer)),
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
    let e = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &same_mark))?;
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
    let e = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &cm))?;
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
    let (xpid, _) =
        run_ok(Command::new(&agent).args(["-c", &format!("/bin/true {xm}; exit 0"), "--helper"]))?;
    let xe = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &xm))?;
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
    let ne = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &nm))?;
    let he = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &hm))?;
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

// ----- 4. back-fill -----

/// An agent started before the daemon is matched at start-up (run.start
/// started_by backfill); its child that also predates the daemon is placed
/// by ancestry (backfill); its later children inherit the run.
#[test]
fn backfill_agent_started_before_daemon() -> Result<()> {
    let tmp = TempDir::new("backfill")?;
    let (agent, _) = fake_agents(tmp.path())?;
    let m = marker();
    let go = tmp.path().join("go");
    let go_s = go.to_string_lossy();
    let later = format!("{m}-later");
    let early = format!("{m}-early");
    let script = format!(
        "{WAIT_FN}(w {go_s}; exec /bin/true {early}) & w {go_s}; /bin/true {later}; wait; exit 0"
    );
    let mut bg = Bg::spawn(Command::new(&agent).args(["-c", &script, &m]))?;
    let apid = bg.pid();
    // The subshell (the early child) exists before the daemon starts.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let cpid = loop {
        let children =
            fs::read_to_string(format!("/proc/{apid}/task/{apid}/children")).unwrap_or_default();
        let kids: Vec<u32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| {
                // The subshell is a fork of the agent (same exe), not a `sleep`.
                fs::read_link(format!("/proc/{p}/exe")).is_ok_and(|x| x == agent)
            })
            .collect();
        if let Some(&c) = kids.first() {
            break c;
        }
        ensure!(
            Instant::now() < deadline,
            "the agent's subshell did not appear"
        );
        thread::sleep(Duration::from_millis(20));
    };

    let d = Daemon::start_with_config(MATCHER_CONFIG)?;
    let mut c = Checks::new();
    let start = wait_run_start_pid(&d, apid)?;
    let id = run_id(&start).context("no run id")?.to_owned();
    let x = RunExp::top(&id, "fake");
    check_run_obj(&mut c, start.get("run"), x, &compact(&start));
    check!(
        c,
        str_at(&start, "/run/started_by") == Some("backfill")
            && str_at(&start, "/run/attribution") == Some("backfill"),
        "run.start of an agent found at start-up should say started_by backfill, attribution backfill: {}",
        compact(&start)
    );
    // Attestation of the back-filled agent and of its early child.
    let a = d.request(&json!({"op": "attest", "pid": apid}))?;
    check_run_obj(&mut c, a.get("run"), x, &format!("attest {apid}: {a}"));
    check!(
        c,
        str_at(&a, "/attribution") == Some("backfill"),
        "attest of the back-filled agent should say attribution backfill: {a}"
    );
    let a = d.request(&json!({"op": "attest", "pid": cpid}))?;
    check_run_obj(&mut c, a.get("run"), x, &format!("attest {cpid}: {a}"));
    check!(
        c,
        str_at(&a, "/attribution") == Some("backfill"),
        "attest of the agent's child placed by ancestry should say backfill: {a}"
    );

    touch(&go)?;
    let le = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &later))?;
    check_event_run(&mut c, &le, x, "inherited");
    let ee = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &early))?;
    check!(
        c,
        pid_of(&ee) == Some(cpid),
        "the early child's exec should be pid {cpid}: {}",
        compact(&ee)
    );
    check_event_run(&mut c, &ee, x, "backfill");
    let st = bg.wait(EVENT_TIMEOUT)?;
    check!(c, st.success(), "the agent exited with {st}");
    let end = wait_run_end(&d, &id)?;
    check!(
        c,
        str_at(&end, "/run/end_reason") == Some("exited"),
        "run.end: {}",
        compact(&end)
    );
    let events = d.events()?;
    check!(
        c,
        of_run(&events, "run.start", &id).len() == 1,
        "more than one run.start for {id}"
    );
    c.finish()
}

/// Processes started while the daemon was down and its programs detached
/// (`--detach-on-exit`: nothing recorded them): a child of a run's process
/// is placed by ancestry (attribution backfill); an unrelated process with a
/// live run's SENSOR_RUN_ID is placed by the marker (attribution env). (With
/// the default stop the kernel records them: `restart.rs`.)
#[test]
fn backfill_after_restart_by_ancestry_and_env() -> Result<()> {
    let mut d = Daemon::start_with_args(&["--detach-on-exit"])?;
    let m = marker();
    let dir = d.dir().to_owned();
    let (go1, go2, cpid_file) = (dir.join("go1"), dir.join("go2"), dir.join("cpid"));
    let after = format!("{m}-after");
    let script = format!(
        "{WAIT_FN}w {}; (w {}; exec /bin/true {after}) & echo $! > {}; wait; exit 0",
        go1.display(),
        go2.display(),
        cpid_file.display()
    );
    let mut run_proc =
        Bg::spawn(&mut d.launch_cmd("restarted", &[], &["/bin/sh", "-c", &script, &m]))?;
    let start = wait_run_start_pid(&d, run_proc.pid())?;
    let id = run_id(&start).context("no run id")?.to_owned();
    let x = RunExp::top(&id, "restarted");

    d.stop()?;
    // While the daemon is down: the run's process forks a child, and an
    // unrelated process claims the run by its environment.
    touch(&go1)?;
    let cpid: u32 = wait_file(&cpid_file)?.trim().parse()?;
    let env_mark = format!("{m}-env");
    let go3 = dir.join("go3");
    let env_script = format!("{WAIT_FN}w {}; /bin/true {env_mark}; exit 0", go3.display());
    let envp = Bg::spawn(
        Command::new("/bin/sh")
            .args(["-c", &env_script, &m])
            .env("SENSOR_RUN_ID", &id),
    )?;
    d.resume()?;

    let mut c = Checks::new();
    let a = d.request(&json!({"op": "attest", "pid": cpid}))?;
    check_run_obj(&mut c, a.get("run"), x, &format!("attest {cpid}: {a}"));
    check!(
        c,
        str_at(&a, "/attribution") == Some("backfill"),
        "a child forked by a run's process while the daemon was down should be back-filled by ancestry: {a}"
    );
    let a = d.request(&json!({"op": "attest", "pid": envp.pid()}))?;
    check_run_obj(
        &mut c,
        a.get("run"),
        x,
        &format!("attest {}: {a}", envp.pid()),
    );
    check!(
        c,
        str_at(&a, "/attribution") == Some("env"),
        "a process with the live run's SENSOR_RUN_ID, started while the daemon was down, should be placed with attribution env: {a}"
    );
    touch(&go2)?;
    touch(&go3)?;
    let e = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &after))?;
    check!(
        c,
        pid_of(&e) == Some(cpid),
        "the exec should be by {cpid}: {}",
        compact(&e)
    );
    check_event_run(&mut c, &e, x, "backfill");
    let e = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &env_mark))?;
    check_event_run(&mut c, &e, x, "inherited");
    run_proc.wait(EVENT_TIMEOUT)?;
    drop(envp);
    let events = d.events()?;
    check!(
        c,
        of_run(&events, "run.start", &id).len() == 1,
        "run {id} started more than once:\n{}",
        dump_refs(&of_run(&events, "run.start", &id))
    );
    c.finish()
}

// ----- 5. restart -----

/// Restart in the middle of a run: events after the restart carry the same
/// run, the run starts once, whoami (inside the run) and attest still work,
/// and the run ends once when its process exits.
#[test]
fn restart_keeps_run() -> Result<()> {
    let mut d = Daemon::start()?;
    let m = marker();
    let dir = d.dir().to_owned();
    let (go1, go2) = (dir.join("go1"), dir.join("go2"));
    let (m1, m2) = (format!("{m}-before"), format!("{m}-after"));
    let whoami = dir.join("whoami.json");
    let script = format!(
        "{WAIT_FN}w {go1}; /bin/true {m1}; w {go2}; \"$SENSOR\" whoami --json > {who}.tmp; mv {who}.tmp {who}; /bin/true {m2}; exit 0",
        go1 = go1.display(),
        go2 = go2.display(),
        who = whoami.display(),
    );
    let mut p = Bg::spawn(
        d.launch_cmd("survivor", &[], &["/bin/sh", "-c", &script, &m])
            .env("SENSOR", d.bin()),
    )?;
    let start = wait_run_start_pid(&d, p.pid())?;
    let id = run_id(&start).context("no run id")?.to_owned();
    let x = RunExp::top(&id, "survivor");
    touch(&go1)?;
    let e1 = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &m1))?;
    let mut c = Checks::new();
    check_event_run(&mut c, &e1, x, "inherited");

    d.restart()?;
    let a = d.request(&json!({"op": "attest", "pid": p.pid()}))?;
    check_run_obj(
        &mut c,
        a.get("run"),
        x,
        &format!("attest after restart: {a}"),
    );
    check!(
        c,
        str_at(&a, "/attribution") == Some("launch"),
        "the launched process keeps attribution launch across the restart: {a}"
    );
    touch(&go2)?;
    let e2 = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &m2))?;
    check_event_run(&mut c, &e2, x, "inherited");
    let w = read_json(&whoami)?;
    check_run_obj(
        &mut c,
        w.get("run"),
        x,
        &format!("whoami after restart: {w}"),
    );
    let st = p.wait(EVENT_TIMEOUT)?;
    check!(c, st.success(), "the run's process exited with {st}");
    let end = wait_run_end(&d, &id)?;
    check!(
        c,
        str_at(&end, "/run/end_reason") == Some("exited"),
        "run.end: {}",
        compact(&end)
    );
    let events = d.events()?;
    let starts = of_run(&events, "run.start", &id);
    check!(
        c,
        starts.len() == 1,
        "run {id} started {} times:\n{}",
        starts.len(),
        dump_refs(&starts)
    );
    let ends = of_run(&events, "run.end", &id);
    check!(
        c,
        ends.len() == 1,
        "run {id} ended {} times:\n{}",
        ends.len(),
        dump_refs(&ends)
    );
    // Every event of the launched process after the restart carries the run.
    let restart_at = position(&events, |e| is_true_exec(e, &m1)).unwrap_or(0);
    for e in &events[restart_at..] {
        if pid_of(e) == Some(p.pid()) && is_process_event(e) {
            check_event_run(&mut c, e, x, "launch");
        }
    }
    c.finish()
}

// ----- 6. pid reuse -----

/// Recycling a pid on purpose (clone3 with set_tid): the new process never
/// inherits the old run or key, neither while the daemon runs nor when the
/// old run's process died while the daemon was down and detached
/// (`--detach-on-exit`: a stale pinned entry nobody cleared).
#[test]
fn pid_reuse_never_inherits() -> Result<()> {
    let mut d = Daemon::start_with_args(&["--detach-on-exit"])?;
    let m = marker();
    let dir = d.dir().to_owned();
    let helper = helper_bin!();
    let mut c = Checks::new();

    // A: while the daemon runs.
    let (p, _) = run_ok(&mut d.launch_cmd("reuse-a", &[], &["/bin/sh", "-c", "exit 0", &m]))?;
    let start = wait_run_start_pid(&d, p)?;
    let id_a = run_id(&start).context("no run id")?.to_owned();
    let old_key = key_of(&start).unwrap_or("").to_owned();
    wait_run_end(&d, &id_a)?;
    let go = dir.join("go-a");
    let mark_a = format!("{m}-reused-a");
    let script = format!("{WAIT_FN}w {}; /bin/true {mark_a}; exit 0", go.display());
    let mut q = Bg::spawn(Command::new(helper).args([
        "at-pid",
        &p.to_string(),
        "/bin/sh",
        "-c",
        &script,
        &m,
    ]))?;
    let qexec = d
        .wait_for(EVENT_TIMEOUT, |e| {
            kind(e) == "process.exec" && pid_of(e) == Some(p) && argv_has(e, &mark_a)
        })
        .context("the recycled pid did not exec (at-pid could not get the pid?)")?;
    check!(
        c,
        qexec.get("run").is_some_and(Value::is_null),
        "a recycled pid {p} (old run {id_a}) carries a run: {}",
        compact(&qexec)
    );
    check!(
        c,
        key_of(&qexec).is_some_and(|k| k != old_key),
        "the recycled pid has the old process key {old_key}: {}",
        compact(&qexec)
    );
    let a = d.request(&json!({"op": "attest", "pid": p}))?;
    check_error(
        &mut c,
        &a,
        "not in an agent run",
        "attest of a recycled pid",
    );
    touch(&go)?;
    let e = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &mark_a))?;
    check!(
        c,
        e.get("run").is_some_and(Value::is_null),
        "the child of a recycled pid carries a run: {}",
        compact(&e)
    );
    q.wait(EVENT_TIMEOUT)?;

    // B: the run's process dies while the daemon is down (its pinned entry
    // goes stale), and its pid is recycled before the daemon comes back.
    let go1 = dir.join("go-b1");
    let script = format!("{WAIT_FN}w {}; exit 0", go1.display());
    let mut pb = Bg::spawn(&mut d.launch_cmd("reuse-b", &[], &["/bin/sh", "-c", &script, &m]))?;
    let p = pb.pid();
    let start = wait_run_start_pid(&d, p)?;
    let id_b = run_id(&start).context("no run id")?.to_owned();
    let old_key = key_of(&start).unwrap_or("").to_owned();
    d.stop()?;
    touch(&go1)?;
    pb.wait(EVENT_TIMEOUT)?;
    let go2 = dir.join("go-b2");
    let mark_b = format!("{m}-reused-b");
    let script = format!("{WAIT_FN}w {}; /bin/true {mark_b}; exit 0", go2.display());
    let mut q = Bg::spawn(Command::new(helper).args([
        "at-pid",
        &p.to_string(),
        "/bin/sh",
        "-c",
        &script,
        &m,
    ]))?;
    // Wait until the recycled pid runs the shell.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !fs::read(format!("/proc/{p}/cmdline")).is_ok_and(|c| text(&c).contains(&mark_b)) {
        ensure!(
            Instant::now() < deadline,
            "at-pid {p} did not start (pid taken?)"
        );
        thread::sleep(Duration::from_millis(20));
    }
    d.resume()?;
    let a = d.request(&json!({"op": "attest", "pid": p}))?;
    check_error(
        &mut c,
        &a,
        "not in an agent run",
        "attest of a pid recycled while the daemon was down",
    );
    let a = d.request(&json!({"op": "whoami"}))?;
    check_error(
        &mut c,
        &a,
        "not in an agent run",
        "whoami of the test process",
    );
    touch(&go2)?;
    let e = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &mark_b))?;
    check!(
        c,
        e.get("run").is_some_and(Value::is_null),
        "the child of a pid recycled while the daemon was down inherited a run (old run {id_b}): {}",
        compact(&e)
    );
    q.wait(EVENT_TIMEOUT)?;
    let exit = d.wait_for(EVENT_TIMEOUT, |e| {
        kind(e) == "process.exit" && pid_of(e) == Some(p) && key_of(e) != Some(&*old_key)
    })?;
    check!(
        c,
        exit.get("run").is_some_and(Value::is_null),
        "the exit of the recycled pid carries a run: {}",
        compact(&exit)
    );
    let end = wait_run_end(&d, &id_b)?;
    check!(
        c,
        str_at(&end, "/run/end_reason") == Some("exited while the sensor was stopped"),
        "run.end of a run whose last process died while the daemon was down: {}",
        compact(&end)
    );
    c.finish()
}

// ----- 7. security -----

/// The control socket trusts SO_PEERCRED only: a launch naming another pid
/// is refused; a forged SENSOR_RUN_ID does not put a process in a run; a
/// process inside a run can only create runs below it; garbage, oversized
/// and empty requests are refused; the daemon keeps running and the run
/// table is unchanged by refused requests.
#[test]
fn security_of_the_control_socket() -> Result<()> {
    let d = Daemon::start()?;
    let m = marker();
    let dir = d.dir().to_owned();
    let mut c = Checks::new();

    // A live run A, whose shell runs escape attempts when told to.
    let go = dir.join("go");
    let out = |n: &str| dir.join(n).display().to_string();
    let script = format!(
        "{WAIT_FN}w {go}; S=\"$SENSOR\"; \
         $S launch --agent esc -- $S whoami --json > {o1}.tmp; mv {o1}.tmp {o1}; \
         $S launch --agent esc --run-id \"$SENSOR_RUN_ID\" -- /bin/true {m}-dup > {o2}.out 2> {o2}.tmp; echo $? >> {o2}.tmp; mv {o2}.tmp {o2}; \
         $S launch --agent esc --run-id fresh-{m} -- $S whoami --json > {o3}.tmp; mv {o3}.tmp {o3}; \
         env -u SENSOR_RUN_ID setsid $S launch --agent esc -- $S whoami --json > {o4}.tmp; mv {o4}.tmp {o4}; \
         exit 0",
        go = go.display(),
        o1 = out("esc-sub.json"),
        o2 = out("esc-dup.txt"),
        o3 = out("esc-fresh.json"),
        o4 = out("esc-setsid.json"),
    );
    let mut a_proc = Bg::spawn(
        d.launch_cmd("victim", &[], &["/bin/sh", "-c", &script, &m])
            .env("SENSOR", d.bin()),
    )?;
    let start = wait_run_start_pid(&d, a_proc.pid())?;
    let id_a = run_id(&start).context("no run id")?.to_owned();

    // Forged SENSOR_RUN_ID in an unrelated process.
    let forged = format!("{m}-forged");
    let (fpid, _) = run_ok(
        Command::new("/bin/true")
            .arg(&forged)
            .env("SENSOR_RUN_ID", &id_a),
    )?;
    let fe = d.wait_for(EVENT_TIMEOUT, |e| is_true_exec(e, &forged))?;
    d.wait_for(EVENT_TIMEOUT, |e| {
        kind(e) == "process.exit" && pid_of(e) == Some(fpid)
    })?;
    for e in d.events()?.iter().filter(|e| pid_of(e) == Some(fpid)) {
        check!(
            c,
            e.get("run").is_some_and(Value::is_null),
            "a process with a forged SENSOR_RUN_ID={id_a} (outside any run) carries a run: {}",
            compact(e)
        );
    }
    drop(fe);

    // Run-escape attempts from inside run A.
    touch(&go)?;
    let sub = read_json(&dir.join("esc-sub.json"))?;
    let fresh = read_json(&dir.join("esc-fresh.json"))?;
    let setsid = read_json(&dir.join("esc-setsid.json"))?;
    for (what, w) in [
        ("launch inside run A", &sub),
        ("launch --run-id fresh inside run A", &fresh),
        ("env -u SENSOR_RUN_ID setsid launch inside run A", &setsid),
    ] {
        let wid = str_at(w, "/run/id").unwrap_or("");
        check_run_obj(
            &mut c,
            w.get("run"),
            RunExp {
                id: wid,
                agent: "esc",
                parent: Some(&id_a),
                root: &id_a,
                depth: 1,
            },
            &format!("{what}: must be a sub-run of {id_a}: {w}"),
        );
        check!(c, wid != id_a, "{what}: got run A itself: {w}");
    }
    check!(
        c,
        str_at(&fresh, "/run/id") == Some(&*format!("fresh-{m}")),
        "launch --run-id fresh-{m}: whoami says {fresh}"
    );
    let dup = wait_file(&dir.join("esc-dup.txt"))?;
    check!(
        c,
        dup.trim_end().ends_with("\n1") && dup.contains("already exists"),
        "launch --run-id <A's id> inside A should exit 1 saying the id already exists; stderr+status: {dup:?}"
    );
    a_proc.wait(EVENT_TIMEOUT)?;
    wait_run_end(&d, &id_a)?;
    let events = d.events()?;
    let dup_mark = format!("{m}-dup");
    check!(
        c,
        !events.iter().any(|e| is_true_exec(e, &dup_mark)),
        "the command of a refused launch (--run-id of a live run) ran"
    );
    check!(
        c,
        of_run(&events, "run.start", &id_a).len() == 1,
        "run A started more than once"
    );

    // From here on no run is live: refused requests must not touch the run table.
    let before = runs_snapshot(&d)?;
    let starts_before = events.iter().filter(|e| kind(e) == "run.start").count();
    let mut big = vec![b'a'; 100 * 1024];
    big.push(b'\n');
    let mut big_json = br#"{"op":"launch","agent":""#.to_vec();
    big_json.extend(std::iter::repeat_n(b'x', 100 * 1024));
    big_json.extend(b"\"}\n");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        (
            "launch naming another pid",
            br#"{"op":"launch","agent":"x","pid":1}"#.to_vec(),
        ),
        ("garbage bytes", b"\x00\xff\xfegarbage{{{\n".to_vec()),
        ("100 KiB line", big),
        ("100 KiB launch", big_json),
        ("nothing, then close", Vec::new()),
        ("unknown op", br#"{"op":"rm -rf /"}"#.to_vec()),
        ("not an object", b"[1,2,3]\n".to_vec()),
        ("attest without pid", br#"{"op":"attest"}"#.to_vec()),
    ];
    for (what, bytes) in &cases {
        let answer = d.socket_exchange(bytes);
        match &answer {
            Ok(s) if s.is_empty() => {}
            Ok(s) => match serde_json::from_str::<Value>(s.lines().next().unwrap_or("")) {
                Ok(v) => check!(
                    c,
                    str_at(&v, "/result") == Some("error")
                        && str_at(&v, "/message").is_some_and(|m| !m.is_empty()),
                    "{what}: expected {{\"result\":\"error\",\"message\":...}}, got {v}"
                ),
                Err(_) => c.fail(format!("{what}: the answer is not JSON: {s:?}")),
            },
            Err(e) => c.fail(format!("{what}: {e:#}")),
        }
        if let Err(e) = d.check_alive() {
            c.fail(format!("{what}: {e:#}"));
            return c.finish();
        }
    }
    // Refused launches through the CLI (bad id, bad agent, duplicate id).
    for (what, args) in [
        (
            "run id with a slash",
            vec!["--agent", "x", "--run-id", "../x"],
        ),
        ("empty agent", vec!["--agent", ""]),
        (
            "duplicate of an ended run",
            vec!["--agent", "x", "--run-id", &id_a],
        ),
    ] {
        let mark = format!("{m}-refused");
        let mut cmd = d.sensor();
        cmd.arg("launch")
            .args(&args)
            .args(["--", "/bin/true", &mark]);
        let (_, out) = run_child(&mut cmd)?;
        check!(
            c,
            out.status.code() == Some(1) && !out.stderr.is_empty(),
            "{what}: sensor launch should exit 1 with an error, got {} stderr {:?}",
            out.status,
            text(&out.stderr)
        );
    }
    let status = d.status_json()?;
    check!(
        c,
        status.get("ready").and_then(Value::as_bool) == Some(true),
        "status after the refused requests: {status}"
    );
    let a = d.request(&json!({"op": "attest", "pid": 1}))?;
    check_error(
        &mut c,
        &a,
        "not in an agent run",
        "attest of pid 1 after a launch naming pid 1",
    );
    let after = runs_snapshot(&d)?;
    check!(
        c,
        before == after,
        "runs.json changed after refused requests:\nbefore {before:?}\nafter  {after:?}"
    );
    thread::sleep(Duration::from_millis(300));
    let events = d.events()?;
    let starts_after = events.iter().filter(|e| kind(e) == "run.start").count();
    check!(
        c,
        starts_after == starts_before,
        "refused requests started runs:\n{}",
        dump_refs(
            &events
                .iter()
                .filter(|e| kind(e) == "run.start")
                .collect::<Vec<_>>()
        )
    );
    c.finish()
}

// ----- 8. attestation -----

/// attest answers run, agent, principal (and policy) for a process in a run,
/// with or without the right start_ticks; refuses a wrong start_ticks (pid
/// reused), a pid in no run, a pid that does not exist, and a run process
/// after it exited; `sensor whoami` outside any run exits 1.
#[test]
fn attestation() -> Result<()> {
    let d = Daemon::start()?;
    let m = marker();
    let go = d.dir().join("go");
    let script = format!("{WAIT_FN}w {}; exit 0", go.display());
    let mut p = Bg::spawn(&mut d.launch_cmd(
        "attested",
        &["--principal", "carol", "--label", "team=blue"],
        &["/bin/sh", "-c", &script, &m],
    ))?;
    let pid = p.pid();
    let start = wait_run_start_pid(&d, pid)?;
    let id = run_id(&start).context("no run id")?.to_owned();
    let x = RunExp::top(&id, "attested");
    let ticks = start_ticks(pid)?;
    let mut c = Checks::new();

    for (what, req) in [
        ("attest pid", json!({"op": "attest", "pid": pid})),
        (
            "attest pid with start_ticks",
            json!({"op": "attest", "pid": pid, "start_ticks": ticks}),
        ),
    ] {
        let a = d.request(&req)?;
        check!(
            c,
            str_at(&a, "/result") == Some("run"),
            "{what}: expected result run: {a}"
        );
        check_run_obj(&mut c, a.get("run"), x, &format!("{what}: {a}"));
        check!(
            c,
            str_at(&a, "/run/principal") == Some("carol")
                && a.pointer("/run/policy").is_some()
                && str_at(&a, "/run/labels/team") == Some("blue")
                && a.get("pid").and_then(Value::as_u64) == Some(u64::from(pid))
                && a.get("start_ticks").and_then(Value::as_u64) == Some(ticks)
                && str_at(&a, "/attribution") == Some("launch")
                && str_at(&a, "/process_key").is_some_and(|k| Some(k) == key_of(&start)),
            "{what}: expected principal carol, policy, labels, pid {pid}, start_ticks {ticks}, attribution launch, process_key {:?}: {a}",
            key_of(&start)
        );
    }
    let a = d.request(&json!({"op": "attest", "pid": pid, "start_ticks": ticks + 1}))?;
    check_error(&mut c, &a, "reused", "attest with a wrong start_ticks");
    check!(
        c,
        a.get("run").is_none(),
        "a refused attest leaks the run: {a}"
    );
    let own = std::process::id();
    let a = d.request(&json!({"op": "attest", "pid": own}))?;
    check_error(
        &mut c,
        &a,
        "not in an agent run",
        "attest of a pid in no run",
    );
    let a = d.request(&json!({"op": "attest", "pid": 999_999_999u32}))?;
    check_error(
        &mut c,
        &a,
        "does not exist",
        "attest of a pid that does not exist",
    );

    let (_, out) = run_child(d.sensor().arg("whoami"))?;
    check!(
        c,
        out.status.code() == Some(1) && text(&out.stderr).contains("not in an agent run"),
        "sensor whoami outside any run: expected exit 1 and \"not in an agent run\", got {} stderr {:?}",
        out.status,
        text(&out.stderr)
    );

    touch(&go)?;
    p.wait(EVENT_TIMEOUT)?;
    wait_run_end(&d, &id)?;
    let a = d.request(&json!({"op": "attest", "pid": pid}))?;
    check!(
        c,
        str_at(&a, "/result") == Some("error"),
        "attest of a run process after it exited should be refused: {a}"
    );
    c.finish()
}

// ----- 9. TTL -----

/// `--ttl 2s`: the run ends with end_reason ttl and its process (a top-level
/// run's) is killed: nothing of the run goes on outside it.
#[test]
fn ttl_ends_run() -> Result<()> {
    let d = Daemon::start()?;
    let m = marker();
    let go = d.dir().join("go");
    let late = format!("{m}-late");
    let script = format!("{WAIT_FN}w {}; /bin/true {late}; exit 0", go.display());
    let t0 = Instant::now();
    let mut p =
        Bg::spawn(&mut d.launch_cmd("short", &["--ttl", "2s"], &["/bin/sh", "-c", &script, &m]))?;
    let pid = p.pid();
    let start = wait_run_start_pid(&d, pid)?;
    let id = run_id(&start).context("no run id")?.to_owned();
    let mut c = Checks::new();
    check!(
        c,
        start.pointer("/run/expires").is_some_and(Value::is_string),
        "run.start of a --ttl run should have expires: {}",
        compact(&start)
    );
    let end = wait_run_end(&d, &id)?;
    let elapsed = t0.elapsed();
    check!(
        c,
        str_at(&end, "/run/end_reason") == Some("ttl"),
        "run.end of an expired run should say ttl: {}",
        compact(&end)
    );
    check!(
        c,
        elapsed >= Duration::from_millis(1900),
        "the run ended {elapsed:?} after launch, before its 2 s TTL"
    );
    // A top-level run's processes do not outlive its TTL: killed, never
    // left running outside any run.
    let exit = d.wait_for(EVENT_TIMEOUT, |e| {
        kind(e) == "process.exit" && pid_of(e) == Some(pid)
    })?;
    check!(
        c,
        exit.pointer("/process/exit_signal").and_then(Value::as_i64) == Some(9)
            && run_id(&exit) == Some(id.as_str()),
        "the run's process is killed at the TTL, its exit still in the run: {}",
        compact(&exit)
    );
    let a = d.request(&json!({"op": "attest", "pid": pid}))?;
    check_error(&mut c, &a, "not in an agent run", "attest after the TTL");
    touch(&go)?;
    p.wait(EVENT_TIMEOUT)?;
    thread::sleep(Duration::from_millis(300));
    check!(
        c,
        d.matching(|e| is_true_exec(e, &late))?.is_empty(),
        "nothing of the run ran after its TTL"
    );
    let events = d.events()?;
    check!(
        c,
        of_run(&events, "run.end", &id).len() == 1,
        "run {id} ended more than once"
    );
    c.finish()
}

// ----- 10. principals -----

/// Whether user nobody can execute `path` (every directory above it
/// searchable by others, the file executable by others).
fn others_can_exec(path: &Path) -> bool {
    let mode = |p: &Path| fs::metadata(p).map(|m| m.permissions().mode()).unwrap_or(0);
    mode(path) & 0o005 == 0o005
        && path
            .ancestors()
            .skip(1)
            .all(|a| a.as_os_str().is_empty() || mode(a) & 0o001 != 0)
}

/// A non-root `--principal` is recorded as claimed: run.principal is the
/// verified user (nobody), principal_claimed what was claimed; a sub-run
/// without --principal inherits the verified principal.
#[test]
fn non_root_principal_is_claimed() -> Result<()> {
    let d = Daemon::start()?;
    let tmp = TempDir::new("nobody")?;
    let bin = if others_can_exec(d.bin()) {
        d.bin().to_owned()
    } else {
        let copy = tmp.path().join("sensor");
        fs::copy(d.bin(), &copy)?;
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
        copy
    };
    let bin_s = bin.to_string_lossy().into_owned();
    let m = marker();
    let script = format!(
        "\"{bin_s}\" whoami --json; \"{bin_s}\" launch --agent nb-sub -- \"{bin_s}\" whoami --json; exit 0"
    );
    let (pid, stdout) = run_ok(
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(&bin)
            .args([
                "launch",
                "--agent",
                "nb",
                "--principal",
                "alice",
                "--",
                "/bin/sh",
                "-c",
                &script,
                &m,
            ])
            .env("SENSOR_SOCKET", d.socket())
            .env_remove("SENSOR_RUN_ID")
            .current_dir("/"),
    )?;
    let lines: Vec<Value> = stdout
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("whoami output is not JSON lines: {stdout:?}"))?;
    ensure!(
        lines.len() == 2,
        "expected two whoami answers, got {stdout:?}"
    );
    let mut c = Checks::new();
    let who_ok = |p: Option<&str>| matches!(p, Some("nobody" | "65534"));
    let top = &lines[0];
    check!(
        c,
        who_ok(str_at(top, "/run/principal"))
            && str_at(top, "/run/principal_claimed") == Some("alice")
            && top.pointer("/run/uid").and_then(Value::as_u64) == Some(65534),
        "non-root launch --principal alice: expected principal nobody, principal_claimed alice, uid 65534: {top}"
    );
    let id = str_at(top, "/run/id").unwrap_or("").to_owned();
    let sub = &lines[1];
    check!(
        c,
        who_ok(str_at(sub, "/run/principal")) && str_at(sub, "/run/parent_id") == Some(&*id),
        "sub-run of a non-root run without --principal: expected principal nobody and parent {id}: {sub}"
    );
    let start = wait_run_start_pid(&d, pid)?;
    check!(
        c,
        who_ok(str_at(&start, "/run/principal"))
            && str_at(&start, "/run/principal_claimed") == Some("alice")
            && start.pointer("/run/uid").and_then(Value::as_u64) == Some(65534),
        "run.start of the non-root run: {}",
        compact(&start)
    );
    c.finish()
}

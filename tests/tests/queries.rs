//! The query CLI as the security engineer reads it (issue 21), against a
//! daemon on the real kernel: `events` puts the verdict and the rule in
//! fixed columns and keeps whole rows in a pipe; `who --ip` takes a network
//! and shows each destination's port and result; `who --pid` asks the
//! daemon about a live process that did nothing yet (placed from /proc at
//! start-up) and says which source answered; every query follows
//! `--config` (its `[store] path` and `[daemon] socket`).
//!
//! What the queries return for a run tree is in `store.rs`; the report and
//! the text views' folding in `report.rs`.
//!
//! Run as root: `cargo test -p sensor-tests --test queries -- --test-threads=1`.

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, ensure};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, canonical_str, check, helper_bin, marker,
    run_with_timeout, sensor_bin, text,
};
use serde_json::{Value, json};

const HELPER: &str = helper_bin!();
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// `sensor ARGS` with only the arguments saying where things are (no
/// `SENSOR_*` from the environment, no `COLUMNS`: stdout is a pipe);
/// returns (exit code, stdout, stderr).
fn sensor(args: &[&str]) -> Result<(i32, String, String)> {
    let mut cmd = Command::new(sensor_bin()?);
    cmd.args(args)
        .env_remove("SENSOR_DB")
        .env_remove("SENSOR_SOCKET")
        .env_remove("SENSOR_CONFIG")
        .env_remove("COLUMNS")
        .env_remove("NO_COLOR");
    let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
    Ok((
        out.status.code().unwrap_or(-1),
        text(&out.stdout),
        text(&out.stderr),
    ))
}

/// `sensor ARGS --db DB`, which must succeed; its stdout.
fn query(db: &Path, args: &[&str]) -> Result<String> {
    let db = db.display().to_string();
    let mut all = args.to_vec();
    all.extend(["--db", &db]);
    let (code, out, err) = sensor(&all)?;
    ensure!(code == 0, "sensor {all:?} exited {code}: {err}");
    Ok(out)
}

fn query_json(db: &Path, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let out = query(db, &all)?;
    serde_json::from_str(&out).with_context(|| format!("sensor {args:?}: not JSON: {out}"))
}

/// Waits until the store holds the end of run `run` (its writer commits
/// every 100 ms).
fn wait_stored(db: &Path, run: &str) -> Result<()> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Ok(v) = query_json(db, &["runs"])
            && v.as_array()
                .is_some_and(|runs| runs.iter().any(|r| r["id"] == run && !r["end"].is_null()))
        {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "run {run} never ended in the store"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The directories of the `sensor` binary and of the helper, as exec rules.
fn bin_dirs() -> Result<Vec<String>> {
    sensor_tests::enforce::bin_dirs()
}

/// A run under an enforce policy that execs an allowed command with a long
/// argument, a denied one (`/usr/bin/env`), and connects to: 127.0.0.1:9
/// (denied), 127.0.0.2:7 (allowed, refused: nothing listens), 127.0.0.3:P
/// (allowed, ok: the test listens) and [::1]:9 (denied). `events` shows each
/// verdict and rule at a fixed column, a violation line names the binary or
/// the address and the rule, and into a pipe every row is whole; `who --ip`
/// takes a network (v4 and v6) and shows each destination's port and result.
#[test]
fn events_show_verdicts_in_a_column_and_who_ip_takes_a_network() -> Result<()> {
    let dir = TempDir::new("queries-events")?;
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let listener = std::net::TcpListener::bind("127.0.0.3:0")?;
    let port = listener.local_addr()?.port();
    let mut exec = vec!["/usr/bin/dash".to_owned(), "/usr/bin/true".to_owned()];
    exec.extend(bin_dirs()?);
    let config = sensor_tests::enforce::policy_toml(
        "closed",
        "enforce",
        &exec,
        &["127.0.0.2", "127.0.0.3"],
        "",
    );
    let d = Daemon::start_with(Some(&config), &["--db", &db_arg])?;
    let run = format!("queries-{}", std::process::id());
    let m = marker();
    let long = format!("{m}-{}", "x".repeat(300));
    let script = format!(
        "/usr/bin/true {long}\n/usr/bin/env true {m}\n\
         {HELPER} connect tcp 127.0.0.1:9 tcp 127.0.0.2:7 tcp 127.0.0.3:{port} tcp [::1]:9\nexit 0\n"
    );
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(
            "queries",
            &["--policy", "closed", "--run-id", &run],
            &["/bin/sh", "-c", &script],
        ),
        RUN_TIMEOUT,
    )?;
    ensure!(out.status.success(), "launch: {}", text(&out.stderr));
    let answers = text(&out.stdout);
    ensure!(
        answers.lines().collect::<Vec<_>>() == ["errno=1", "errno=111", "ok", "errno=1"],
        "the connects: denied, refused, ok, denied: {answers:?}"
    );
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.end" && e["run"]["id"] == run.as_str()
    })?;
    wait_stored(&db, &run)?;
    let mut c = Checks::new();

    // events, into a pipe.
    let lines = query(&db, &["events", "--run", &run])?;
    let rows: Vec<&str> = lines.lines().collect();
    let stored: Vec<Value> = query(&db, &["events", "--run", &run, "--json"])?
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    check!(c, rows.len() == stored.len(), "one line per event: {lines}");
    check!(
        c,
        rows.iter().any(|l| l.contains(&long)) && !lines.contains('…'),
        "a pipe gets whole rows (the {}-character argument uncut): {lines}",
        long.len()
    );
    // Every line's kind starts at the same column, and so does every
    // verdict; a rule longer than the rule column (40: the exec rule of the
    // build directory may be) is shown whole and pushes its line.
    let column_of = |l: &str, what: &str| l.find(what).map(|at| l[..at].chars().count());
    let kinds: Vec<Option<usize>> = rows
        .iter()
        .zip(&stored)
        .filter(|(_, e)| e["policy"]["rule"].as_str().is_none_or(|r| r.len() <= 40))
        .map(|(l, e)| column_of(l, e["kind"].as_str().unwrap_or("?")))
        .collect();
    check!(
        c,
        kinds.len() >= 15 && kinds.iter().all(|k| k.is_some() && *k == kinds[0]),
        "the kind at one column: {kinds:?}\n{lines}"
    );
    // ... and the WHAT column too (the violation's kind is the longest).
    let whats: Vec<Option<usize>> = rows
        .iter()
        .zip(&stored)
        .filter(|(_, e)| e["policy"]["rule"].as_str().is_none_or(|r| r.len() <= 40))
        .filter_map(|(l, e)| e["process"]["pid"].as_u64().map(|pid| (l, pid)))
        .map(|(l, pid)| column_of(l, &format!(" {pid} ")).map(|at| at + pid.to_string().len()))
        .collect();
    check!(
        c,
        whats.iter().all(|w| w.is_some() && *w == whats[0]),
        "the pid column ends at one column: {whats:?}\n{lines}"
    );
    for e in &stored {
        if let Some(rule) = e["policy"]["rule"].as_str() {
            check!(c, lines.contains(rule), "the whole rule {rule:?}: {lines}");
        }
    }
    let verdicts: Vec<Option<usize>> = rows
        .iter()
        .filter(|l| l.contains("[deny]") || l.contains("[allow]") || l.contains("[violation]"))
        .map(|l| column_of(l, "["))
        .collect();
    check!(
        c,
        verdicts.len() >= 8 && verdicts.iter().all(|v| v.is_some() && *v == verdicts[0]),
        "the verdicts at one column: {verdicts:?}\n{lines}"
    );
    let denials = stored
        .iter()
        .filter(|e| e["policy"]["verdict"] == "deny" && e["kind"] != "policy.violation")
        .count();
    check!(
        c,
        denials == 3 && rows.iter().filter(|l| l.contains("[deny]")).count() == denials,
        "`grep -c '[deny]'` counts the {denials} denials (exec, two connects) once each: {lines}"
    );
    check!(
        c,
        rows.iter().filter(|l| l.contains("[deny] blocked")).count() == 3,
        "blocked: {lines}"
    );
    let violation = |needles: &[&str]| {
        rows.iter().any(|l| {
            l.contains("[violation]")
                && l.contains("policy.violation")
                && needles.iter().all(|n| l.contains(n))
        })
    };
    check!(
        c,
        violation(&["/usr/bin/env", "exec.allow (no rule matches)"]),
        "the exec's violation line names the binary and the rule: {lines}"
    );
    check!(
        c,
        violation(&["127.0.0.1:9", "connect.allow (no rule matches)"])
            && violation(&["::1", "connect.allow (no rule matches)"]),
        "the connects' violation lines name the address and the rule: {lines}"
    );
    check!(
        c,
        rows.iter()
            .any(|l| l.contains("[allow]") && l.contains("connect.allow 127.0.0.3")),
        "an allowed connect shows its rule: {lines}"
    );

    // who --ip with a network: each destination of the run, port and result.
    let who = query_json(&db, &["who", "--ip", "127.0.0.0/8"])?;
    let of_run: Vec<&Value> = who
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|w| w["run"]["id"] == run.as_str())
                .collect()
        })
        .unwrap_or_default();
    let dest = |ip: &str, p: u16| {
        of_run
            .iter()
            .find(|w| w["network"]["dst_ip"] == ip && w["network"]["dst_port"] == p)
    };
    check!(
        c,
        of_run.len() == 3
            && dest("127.0.0.1", 9).is_some_and(|w| w["policy"]["verdict"] == "deny")
            && dest("127.0.0.2", 7).is_some_and(|w| w["network"]["result"] == "refused")
            && dest("127.0.0.3", port).is_some_and(|w| w["network"]["result"] == "ok"),
        "who --ip 127.0.0.0/8: one answer per destination, with its result: {who}"
    );
    let text_who = query(&db, &["who", "--ip", "127.0.0.0/8"])?;
    for needle in [
        "tcp 127.0.0.2:7 refused".to_owned(),
        format!("tcp 127.0.0.3:{port} ok [allow]"),
    ] {
        check!(
            c,
            text_who
                .lines()
                .any(|l| l.contains(&run) && l.contains(&needle)),
            "{needle:?} in {text_who}"
        );
    }
    check!(
        c,
        text_who
            .lines()
            .any(|l| l.contains(&run) && l.contains("127.0.0.1:9") && l.contains("[deny] blocked")),
        "the denied destination: {text_who}"
    );
    let on_port = query_json(&db, &["who", "--ip", "127.0.0.0/8:7"])?;
    check!(
        c,
        on_port
            .as_array()
            .is_some_and(|a| !a.is_empty() && a.iter().all(|w| w["network"]["dst_port"] == 7)),
        "who --ip NET:PORT: that port only: {on_port}"
    );
    for v6 in ["::1/128", "::/0", "[::/0]:9"] {
        let who6 = query_json(&db, &["who", "--ip", v6])?;
        check!(
            c,
            who6.as_array().is_some_and(|a| a
                .iter()
                .any(|w| w["run"]["id"] == run.as_str() && w["network"]["dst_ip"] == "::1")
                && a.iter().all(|w| w["network"]["dst_ip"] == "::1")),
            "who --ip {v6}: {who6}"
        );
    }
    let (code, out, err) = sensor(&["who", "--ip", "10.0.0.0/8", "--db", &db_arg])?;
    check!(
        c,
        code == 1 && out.is_empty() && err.contains("no stored event matches"),
        "who --ip of a network nobody reached: exit {code} {out:?} {err:?}"
    );
    for (bad, says) in [
        ("127.0.0.1/8", "host bits set: the network is 127.0.0.0/8"),
        ("127.0.0.0/33", "bad prefix length"),
        ("2001:db8::/129", "bad prefix length"),
        ("localhost", "does not look up host names"),
    ] {
        let (code, _, err) = sensor(&["who", "--ip", bad, "--db", &db_arg])?;
        check!(
            c,
            code == 2 && err.contains(says),
            "who --ip {bad}: exit {code}, {err:?} should say {says:?}"
        );
    }
    drop(listener);
    c.finish()
}

/// A copy of /usr/bin/sleep named `name` in `dir`.
fn sleeper(dir: &Path, name: &str) -> Result<PathBuf> {
    let copy = dir.join(name);
    fs::copy("/usr/bin/sleep", &copy)?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
    Ok(copy)
}

/// A background process killed (and reaped) on drop.
struct Bg(std::process::Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(cmd: &mut Command) -> Result<Bg> {
    sensor_tests::die_with_parent(cmd);
    Ok(Bg(cmd
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?))
}

/// `setpriv` to `nobody`, then `program`.
fn as_nobody(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(program);
    cmd
}

/// Two processes started BEFORE the daemon, that do nothing afterwards: an
/// agent (an `[[agent]]` matcher places it in a run from /proc at start-up)
/// and a plain one (in no run). `who --pid` asks the daemon and knows both,
/// saying the daemon answered; once the daemon is down it answers from the
/// store and says so. `nobody` may ask the daemon about its own process,
/// not about root's (its run is not in /proc for them).
#[test]
fn who_pid_asks_the_daemon_about_a_back_filled_process() -> Result<()> {
    let dir = TempDir::new("queries-who-pid")?;
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let agent_bin = sleeper(dir.path(), "idle-agent")?;
    let plain_bin = sleeper(dir.path(), "plain-sleeper")?;
    let agent = spawn(Command::new(&agent_bin).arg("120"))?;
    let plain = spawn(Command::new(&plain_bin).arg("120"))?;
    let mut nobodys = spawn(as_nobody(&plain_bin).arg("120"))?;
    let (apid, ppid) = (agent.0.id(), plain.0.id());
    // setpriv execs the sleeper in place: same pid.
    let npid = nobodys.0.id();
    // Each has exec'd its copy before the daemon starts.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    for (pid, bin) in [(apid, &agent_bin), (ppid, &plain_bin), (npid, &plain_bin)] {
        while fs::read_link(format!("/proc/{pid}/exe")).ok().as_ref() != Some(bin) {
            ensure!(
                Instant::now() < deadline,
                "{pid} never ran {}",
                bin.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let config = "[[agent]]\nname = \"idle\"\nexe = [\"**/idle-agent\"]\n";
    let mut d = Daemon::start_with(Some(config), &["--db", &db_arg])?;
    let socket = d.socket().display().to_string();
    let start = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.start" && e["process"]["pid"] == apid
    })?;
    let run = start["run"]["id"].as_str().context("run id")?.to_owned();
    // The store has written the run's start: its commit comes within 100 ms.
    std::thread::sleep(Duration::from_millis(500));
    let mut c = Checks::new();
    let who = |pid: u32| -> Result<(i32, String, String)> {
        sensor(&[
            "who",
            "--pid",
            &pid.to_string(),
            "--db",
            &db_arg,
            "--socket",
            &socket,
        ])
    };

    // The agent, placed by its matcher from /proc, asleep since.
    let (code, out, err) = who(apid)?;
    let line = out.lines().next().unwrap_or_default().to_owned();
    check!(
        c,
        code == 0
            && line.starts_with(&format!("pid {apid} {}", canonical_str(&agent_bin)?))
            && line.contains("alive")
            && line.contains("from the daemon")
            && line.contains(&format!("run {run} agent idle"))
            && line.contains("(attribution backfill)"),
        "who --pid of the back-filled agent: exit {code}, {out:?} {err:?}"
    );
    let (_, json_out, _) = sensor(&[
        "who",
        "--pid",
        &apid.to_string(),
        "--db",
        &db_arg,
        "--socket",
        &socket,
        "--json",
    ])?;
    let answer: Value = serde_json::from_str(&json_out).unwrap_or(Value::Null);
    check!(
        c,
        answer[0]["source"] == "daemon"
            && answer[0]["alive"] == true
            && answer[0]["run"]["id"] == run.as_str()
            && answer[0]["run"]["attribution"] == "backfill"
            && answer[0]["process"]["pid"] == apid,
        "--json: {json_out}"
    );

    // The plain process: no event at all; only the daemon knows it.
    let (code, out, err) = who(ppid)?;
    check!(
        c,
        code == 0
            && out.contains(&format!("pid {ppid} "))
            && out.contains("no event stored; from the daemon")
            && out.contains("not in any agent run"),
        "who --pid of a process that did nothing: exit {code}, {out:?} {err:?}"
    );

    // As nobody, through the socket: its own process yes, root's no.
    fs::set_permissions(d.dir(), fs::Permissions::from_mode(0o755))?;
    let helper = dir.path().join("sensor-test-helper");
    fs::copy(HELPER, &helper)?;
    fs::set_permissions(&helper, fs::Permissions::from_mode(0o755))?;
    let ask = |pid: u32| -> Result<Value> {
        let (_, out) = run_with_timeout(
            as_nobody(&helper)
                .arg("control")
                .arg(d.socket())
                .arg(json!({"op": "process", "pid": pid}).to_string()),
            Duration::from_secs(30),
        )?;
        Ok(serde_json::from_str(text(&out.stdout).trim()).unwrap_or(Value::Null))
    };
    let own = ask(npid)?;
    check!(
        c,
        own["result"] == "process" && own["pid"] == npid && own["uid"] == 65534,
        "nobody asks about its own process: {own}"
    );
    for pid in [apid, ppid] {
        let other = ask(pid)?;
        check!(
            c,
            other["result"] == "error"
                && other["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("another user's"))
                && !other.to_string().contains(&run)
                && !other.to_string().contains("idle"),
            "nobody learns nothing of root's process {pid}: {other}"
        );
    }

    // Daemon down: the store answers, and says it.
    d.stop()?;
    let (code, out, err) = who(apid)?;
    check!(
        c,
        code == 0
            && out.contains(&format!("run {run} agent idle"))
            && out.contains("from the store")
            && err.contains("answering from the store only"),
        "who --pid with the daemon down: exit {code}, {out:?} {err:?}"
    );
    let (code, _, err) = who(ppid)?;
    check!(
        c,
        code == 1 && err.contains("answering from the store only"),
        "the plain process is unknown to the store: exit {code}, {err:?}"
    );
    let _ = nobodys.0.kill();
    let _ = nobodys.0.wait();
    drop((agent, plain));
    c.finish()
}

/// Every query, `launch` and `status` follow `--config`: its `[store]
/// path` and `[daemon] socket` (in a temp dir, nowhere near the defaults).
/// An explicit `--db` wins; a missing or bad config named explicitly is an
/// error.
#[test]
fn queries_launch_and_status_follow_the_config() -> Result<()> {
    let dir = TempDir::new("queries-config")?;
    let db = dir.path().join("elsewhere.db");
    let db_arg = db.display().to_string();
    let d = Daemon::start_with_args(&["--db", &db_arg])?;
    let config = dir.path().join("client.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nsocket = {:?}\n\n[store]\npath = {:?}\n",
            d.socket().display().to_string(),
            db_arg
        ),
    )?;
    let cfg = config.display().to_string();
    let run = format!("config-{}", std::process::id());
    let m = marker();
    let mut c = Checks::new();

    // launch reaches the daemon through the config's socket alone.
    let (code, _, err) = sensor(&[
        "launch",
        "--config",
        &cfg,
        "--agent",
        "configured",
        "--run-id",
        &run,
        "--",
        "/bin/true",
        &m,
    ])?;
    ensure!(code == 0, "launch --config: exit {code}: {err}");
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.end" && e["run"]["id"] == run.as_str()
    })?;
    // The queries read the config's store.
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let (code, out, _) = sensor(&["runs", "--config", &cfg])?;
        if code == 0 && out.contains(&run) && out.contains("exited") {
            break;
        }
        ensure!(Instant::now() < deadline, "runs --config: {out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    for args in [
        vec!["events", "--run", &run],
        vec!["tree", &run],
        vec!["replay", &run],
    ] {
        let mut all = args.clone();
        all.extend(["--config", &cfg]);
        let (code, out, err) = sensor(&all)?;
        check!(
            c,
            code == 0 && out.contains(&m),
            "sensor {all:?}: exit {code}, {out:?} {err:?}"
        );
    }
    let report = dir.path().join("r.html");
    let (code, _, err) = sensor(&[
        "report",
        &run,
        "-o",
        &report.display().to_string(),
        "--config",
        &cfg,
    ])?;
    check!(
        c,
        code == 0 && fs::read_to_string(&report).is_ok_and(|h| h.contains(&m)),
        "report --config: exit {code} {err}"
    );
    let (code, out, err) = sensor(&["status", "--config", &cfg])?;
    check!(
        c,
        code == 0,
        "status --config reaches the daemon: exit {code}, {out:?} {err:?}"
    );
    let (code, out, err) = sensor(&["who", "--pid", &d.pid().to_string(), "--config", &cfg])?;
    check!(
        c,
        code == 0 && out.contains("from the daemon"),
        "who --pid --config asks the config's daemon: exit {code}, {out:?} {err:?}"
    );

    // An explicit --db wins over the config.
    let other = dir.path().join("other.db").display().to_string();
    let (code, _, err) = sensor(&["runs", "--config", &cfg, "--db", &other])?;
    check!(
        c,
        code == 1 && err.contains("no sensor database") && err.contains("other.db"),
        "--db wins: exit {code}, {err:?}"
    );
    // A missing or bad config named explicitly is an error, never defaults.
    let missing = dir.path().join("missing.toml").display().to_string();
    let bad = dir.path().join("bad.toml");
    fs::write(&bad, "[store]\npaht = \"/x.db\"\n")?;
    let bad = bad.display().to_string();
    for (config, says) in [(&missing, "missing.toml"), (&bad, "bad.toml:2")] {
        for cmd in [
            vec!["runs"],
            vec!["status"],
            vec!["launch", "--agent", "x", "--", "/bin/true"],
        ] {
            // `--config` right after the subcommand (before launch's `--`).
            let mut all = vec![cmd[0], "--config", config.as_str()];
            all.extend(&cmd[1..]);
            let (code, out, err) = sensor(&all)?;
            check!(
                c,
                code == 1 && err.contains(says) && out.is_empty(),
                "sensor {all:?}: exit {code}, {out:?} {err:?}"
            );
        }
    }
    // Without --config and --db, not this store.
    let (_, out, _) = sensor(&["runs"])?;
    check!(
        c,
        !out.contains(&run),
        "the default store is another: {out}"
    );
    c.finish()
}

//! The local store and the security engineer's queries, against a daemon on
//! the real kernel: after a launched run with sub-runs, `runs`, `tree`,
//! `events --subtree`, `who` and `replay` return exactly what happened.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use sensor_tests::{Daemon, EVENT_TIMEOUT, TempDir, marker, run_with_timeout, sensor_bin, text};
use serde_json::Value;

/// Runs `sensor ARGS --db DB` and returns (exit success, stdout, stderr).
fn query(db: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let mut cmd = Command::new(sensor_bin()?);
    cmd.args(args)
        .arg("--db")
        .arg(db)
        .env_remove("SENSOR_DB")
        // Into a pipe: whole rows (events puts verdict and rule columns
        // before what happened, which a 200-column cut could lose).
        .env_remove("COLUMNS");
    let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
    Ok((out.status.success(), text(&out.stdout), text(&out.stderr)))
}

fn query_json(db: &Path, args: &[&str]) -> Result<Value> {
    let mut all = args.to_vec();
    all.push("--json");
    let (ok, out, err) = query(db, &all)?;
    ensure!(ok, "sensor {args:?} failed: {err}");
    serde_json::from_str(&out).with_context(|| format!("sensor {args:?} printed no JSON: {out}"))
}

/// A run `outer` whose shell connects to a closed loopback port and starts a
/// sub-run `inner` that runs a marker command; returns the marker.
fn launch_tree(d: &Daemon, outer: &str, inner: &str, port: u16) -> Result<String> {
    let m = marker();
    let sensor = sensor_bin()?;
    let sensor = sensor.display();
    let script = format!(
        "python3 -c \"import socket; s=socket.socket(); s.connect_ex(('127.0.0.1', {port}))\"; \
         {sensor} launch --agent inner-agent --run-id {inner} -- /bin/sh -c '/bin/true {m}; exit 3'; true"
    );
    let mut cmd = Command::new(sensor_bin()?);
    cmd.args([
        "launch",
        "--agent",
        "outer-agent",
        "--run-id",
        outer,
        "--socket",
    ])
    .arg(d.socket())
    .args(["--", "/bin/sh", "-c", &script])
    .env("SENSOR_SOCKET", d.socket());
    let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(60))?;
    ensure!(out.status.success(), "launch failed: {}", text(&out.stderr));
    // Both runs end once every process exited.
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.end" && e["run"]["id"] == outer
    })?;
    Ok(m)
}

/// Waits until the store holds the run's end (the writer is asynchronous).
fn wait_stored(db: &Path, run: &str) -> Result<()> {
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        if let Ok(v) = query_json(db, &["runs"])
            && v.as_array()
                .is_some_and(|runs| runs.iter().any(|r| r["id"] == run && !r["end"].is_null()))
        {
            return Ok(());
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "run {run} never ended in the store"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn queries_return_exactly_the_run_tree_and_its_events() -> Result<()> {
    let dir = TempDir::new("store")?;
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let d = Daemon::start_with_args(&["--db", &db_arg])?;
    let outer = format!("outer-{}", std::process::id());
    let inner = format!("inner-{}", std::process::id());
    let m = launch_tree(&d, &outer, &inner, 9)?;
    wait_stored(&db, &outer)?;

    // runs: both, with the tree relation.
    let runs = query_json(&db, &["runs", "--agent", "inner-agent"])?;
    let inner_row = runs
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == inner.as_str()))
        .with_context(|| format!("no {inner} in {runs}"))?;
    ensure!(
        inner_row["parent_id"] == outer.as_str() && inner_row["depth"] == 1,
        "{inner_row}"
    );
    ensure!(inner_row["end_reason"] == "exited", "{inner_row}");
    let (ok, text_runs, _) = query(&db, &["runs"])?;
    ensure!(
        ok && text_runs.contains(&outer) && text_runs.contains("outer-agent"),
        "{text_runs}"
    );

    // tree: the sub-run under the run, processes beneath each.
    let tree = query_json(&db, &["tree", &outer[..outer.len() - 2]])?;
    ensure!(
        tree["id"] == outer.as_str(),
        "prefix lookup finds the run: {tree}"
    );
    let sub = &tree["runs"][0];
    ensure!(sub["id"] == inner.as_str(), "{tree}");
    let marker_argv = serde_json::json!(["/bin/true", m]).to_string();
    ensure!(
        sub["processes"].to_string().contains(&marker_argv),
        "the sub-run's process tree has the marker command: {sub}"
    );
    ensure!(
        !tree["processes"].to_string().contains(&marker_argv),
        "the marker command is not among the outer run's own processes: {tree}"
    );
    let (ok, text_tree, _) = query(&db, &["tree", &outer])?;
    ensure!(
        ok && text_tree.contains(&format!("run {inner}")) && text_tree.contains(&m),
        "{text_tree}"
    );

    // events: the run alone, and with its subtree; exactly the events the daemon wrote for them.
    let file_events = d.events()?;
    let of = |ids: &[&str]| -> Vec<u64> {
        file_events
            .iter()
            .filter(|e| e["run"]["id"].as_str().is_some_and(|id| ids.contains(&id)))
            .filter_map(|e| e["seq"].as_u64())
            .collect()
    };
    let seqs = |args: &[&str]| -> Result<Vec<u64>> {
        let mut all = args.to_vec();
        all.push("--json");
        let (ok, out, err) = query(&db, &all)?;
        ensure!(ok, "{err}");
        out.lines()
            .map(|l| {
                serde_json::from_str::<Value>(l)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                    .context("an event line without seq")
            })
            .collect()
    };
    ensure!(
        seqs(&["events", "--run", &outer])? == of(&[&outer]),
        "events of the run"
    );
    ensure!(
        seqs(&["events", "--run", &outer, "--subtree"])? == of(&[&outer, &inner]),
        "events of the subtree"
    );
    let execs = seqs(&["events", "--run", &inner, "--kind", "process.exec"])?;
    ensure!(!execs.is_empty(), "the sub-run has execs");
    let (ok, text_events, _) = query(&db, &["events", "--run", &inner])?;
    ensure!(ok && text_events.contains(&m), "{text_events}");

    // replay: the whole subtree in order, the sub-run indented.
    let (ok, replay, _) = query(&db, &["replay", &outer])?;
    ensure!(ok, "replay failed");
    let outer_line = replay
        .lines()
        .position(|l| l.contains("run.start") && l.contains("outer-agent"));
    let inner_line = replay
        .lines()
        .position(|l| l.contains("run.start") && l.contains("inner-agent"));
    ensure!(
        matches!((outer_line, inner_line), (Some(a), Some(b)) if a < b),
        "{replay}"
    );
    let marker_line = replay
        .lines()
        .find(|l| l.contains(&m))
        .context("replay has the marker")?;
    ensure!(
        marker_line.contains("    "),
        "the sub-run's events are indented: {marker_line}"
    );
    Ok(())
}

#[test]
fn who_finds_the_run_of_exited_processes_by_pid_and_by_address() -> Result<()> {
    let dir = TempDir::new("store-who")?;
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let d = Daemon::start_with_args(&["--db", &db_arg])?;
    let outer = format!("who-{}", std::process::id());
    let inner = format!("who-inner-{}", std::process::id());
    let m = launch_tree(&d, &outer, &inner, 7)?;
    wait_stored(&db, &outer)?;

    // The marker process (in the sub-run) has exited by now.
    let marker_argv = serde_json::json!(["/bin/true", m]);
    let exec = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "process.exec"
            && e["process"]["argv"] == marker_argv
            && e["exec"]["result"] == "ok"
    })?;
    let pid = exec["process"]["pid"].as_u64().context("pid")?.to_string();
    let who = query_json(&db, &["who", "--pid", &pid])?;
    ensure!(
        who[0]["run"]["id"] == inner.as_str(),
        "who --pid {pid}: {who}"
    );
    let (ok, text_who, _) = query(&db, &["who", "--pid", &pid])?;
    ensure!(ok && text_who.contains(&inner), "{text_who}");

    // The connect to 127.0.0.1:7 came from the outer run's python.
    let who = query_json(&db, &["who", "--ip", "127.0.0.1:7"])?;
    let runs: Vec<&str> = who
        .as_array()
        .map(|a| a.iter().filter_map(|w| w["run"]["id"].as_str()).collect())
        .unwrap_or_default();
    ensure!(runs.contains(&outer.as_str()), "who --ip: {who}");
    let who_any_port = query_json(&db, &["who", "--ip", "127.0.0.1"])?;
    ensure!(
        who_any_port.as_array().is_some_and(|a| !a.is_empty()),
        "{who_any_port}"
    );
    Ok(())
}

/// A background process killed (and reaped) on drop.
struct Bg(std::process::Child);

impl Drop for Bg {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `cmd`, dying with the test; waits for its first output line when
/// `ready` (a server says when it listens).
fn background(cmd: &mut Command, ready: bool) -> Result<Bg> {
    use std::io::BufRead as _;
    sensor_tests::die_with_parent(cmd);
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn()?;
    if ready {
        let out = child.stdout.take().context("no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(out).read_line(&mut line)?;
        ensure!(line.trim() == "ready", "the server said {line:?}");
    }
    Ok(Bg(child))
}

/// Rows of `sql` on the store, read with Python's sqlite3 (another reader
/// of the file than the sensor's), one JSON array per row.
fn sql_rows(db: &Path, sql: &str) -> Result<Vec<Value>> {
    let script = "import json, sqlite3, sys\n\
                  c = sqlite3.connect('file:' + sys.argv[1] + '?mode=ro', uri=True)\n\
                  for row in c.execute(sys.argv[2]): print(json.dumps(list(row)))\n";
    let mut cmd = Command::new("python3");
    cmd.args(["-c", script]).arg(db).arg(sql);
    let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
    ensure!(
        out.status.success(),
        "python3 sqlite3: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).context("a row"))
        .collect()
}

/// Escape attempts of a run under an enforce policy (a denied Unix connect,
/// a raw socket, a ptrace attach to a process outside the run, a signal to
/// the daemon) are stored with what they aimed at, `events --escapes` lists
/// exactly them (not the allowed Unix connect, not the execs), and `who
/// --unix` finds the run that connected.
#[test]
fn escape_attempts_are_stored_and_queried() -> Result<()> {
    let dir = TempDir::new("store-escapes")?;
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let helper = sensor_tests::helper_bin!();
    let ok_sock = dir.path().join("ok.sock").display().to_string();
    let bad_sock = dir.path().join("bad.sock").display().to_string();
    let _servers = [
        background(
            Command::new(helper).args(["unix-server", "stream", &ok_sock, "60"]),
            true,
        )?,
        background(
            Command::new(helper).args(["unix-server", "stream", &bad_sock, "60"]),
            true,
        )?,
    ];
    let sleeper = background(Command::new("/usr/bin/sleep").arg("60"), false)?;
    let target = sleeper.0.id();
    let exec = sensor_tests::enforce::base_exec()?
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let config = format!(
        "[policy.p]\nmode = \"enforce\"\nexec.allow = [{exec}]\nunix.allow = [{ok_sock:?}]\n"
    );
    let d = Daemon::start_with(Some(&config), &["--db", &db_arg])?;
    let run = format!("escapes-{}", std::process::id());
    // The signal to the daemon comes last: under enforce it kills the shell.
    let script = format!(
        "{helper} connect unix {ok_sock}\n{helper} connect unix {bad_sock}\n\
         {helper} socket raw\n{helper} inject ptrace {target} 0\n\
         kill -CONT {daemon}\n/bin/true\n",
        daemon = d.pid()
    );
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(
            "escaper",
            &["--policy", "p", "--run-id", &run],
            &["/bin/sh", "-c", &script],
        ),
        Duration::from_secs(60),
    )?;
    ensure!(
        text(&out.stdout).matches("errno=1").count() == 2,
        "the denied connect and the raw socket fail with EPERM: {}",
        text(&out.stdout)
    );
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.end" && e["run"]["id"] == run.as_str()
    })?;
    wait_stored(&db, &run)?;

    let (ok, lines, err) = query(&db, &["events", "--run", &run, "--escapes", "--json"])?;
    ensure!(ok, "{err}");
    let escapes: Vec<Value> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let found = |pred: &dyn Fn(&Value) -> bool| escapes.iter().find(|e| pred(e)).cloned();
    let mut c = sensor_tests::Checks::new();
    let unix = found(&|e| e["network"]["path"] == bad_sock.as_str());
    sensor_tests::check!(
        c,
        unix.as_ref().is_some_and(|e| e["kind"] == "network.connect"
            && e["policy"]["verdict"] == "deny"
            && e["network"]["errno"] == 1),
        "the denied Unix connect: {unix:?}"
    );
    sensor_tests::check!(
        c,
        found(&|e| e["kind"] == "network.socket" && e["network"]["transport"] == "raw").is_some(),
        "the raw socket"
    );
    let ptrace = found(&|e| e["kind"] == "process.tamper");
    sensor_tests::check!(
        c,
        ptrace
            .as_ref()
            .is_some_and(|e| e["tamper"]["method"] == "ptrace"
                && e["tamper"]["target"]["pid"] == target
                && e["tamper"]["killed"] == true),
        "the ptrace attach: {ptrace:?}"
    );
    sensor_tests::check!(
        c,
        found(&|e| e["kind"] == "sensor.tamper" && e["tamper"]["method"] == "signal").is_some(),
        "the signal to the daemon"
    );
    sensor_tests::check!(
        c,
        escapes.iter().all(|e| e["run"]["id"] == run.as_str()
            && e["kind"] != "process.exec"
            && e["kind"] != "policy.violation"
            && e["network"]["path"] != ok_sock.as_str()),
        "only the escape attempts of the run: {escapes:?}"
    );
    // The same in text, one line each, saying what was tried.
    let (ok, text_escapes, _) = query(&db, &["events", "--run", &run, "--escapes"])?;
    for needle in [
        format!("unix stream {bad_sock} error EPERM"),
        "raw ipv4 socket error EPERM".to_owned(),
        format!("ptrace attach: pid {target} (/usr/bin/sleep), of no run [killed]"),
        "signal SIGCONT to the sensor daemon".to_owned(),
    ] {
        sensor_tests::check!(
            c,
            ok && text_escapes.contains(&needle),
            "{needle:?} in {text_escapes}"
        );
    }
    // Who connected to the socket: the run.
    let who = query_json(&db, &["who", "--unix", &bad_sock])?;
    sensor_tests::check!(
        c,
        who[0]["run"]["id"] == run.as_str() && who[0]["network"]["path"] == bad_sock.as_str(),
        "who --unix {bad_sock}: {who}"
    );
    // What they aimed at is in columns of its own.
    let rows = sql_rows(
        &db,
        &format!(
            "SELECT kind, path, method, target_pid, escape_attempt FROM events \
             WHERE run_id = '{run}' AND (path IS NOT NULL OR method IS NOT NULL) ORDER BY id"
        ),
    )?;
    let row = |want: Value| rows.contains(&want);
    sensor_tests::check!(
        c,
        row(serde_json::json!([
            "network.connect",
            bad_sock,
            null,
            null,
            1
        ])) && row(serde_json::json!([
            "network.connect",
            ok_sock,
            null,
            null,
            0
        ])) && row(serde_json::json!([
            "process.tamper",
            null,
            "ptrace",
            target,
            1
        ])) && row(serde_json::json!([
            "sensor.tamper",
            null,
            "signal",
            d.pid(),
            1
        ])),
        "the store's columns: {rows:?}"
    );
    drop(sleeper);
    c.finish()
}

#[test]
fn bad_databases_and_unknown_runs_are_clear_errors() -> Result<()> {
    let dir = TempDir::new("store-errors")?;
    let missing = dir.path().join("missing.db");
    let (ok, _, err) = query(&missing, &["runs"])?;
    ensure!(
        !ok && err.contains("no sensor database") && !err.contains("panicked"),
        "{err}"
    );

    let corrupt = dir.path().join("corrupt.db");
    std::fs::write(&corrupt, vec![0x5a_u8; 16384])?;
    let (ok, _, err) = query(&corrupt, &["runs"])?;
    ensure!(!ok && err.contains("not a sensor database"), "{err}");

    let foreign = dir.path().join("foreign.db");
    let status = Command::new("python3")
        .args(["-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); c.execute('create table songs(t)'); c.commit()"])
        .arg(&foreign)
        .status()?;
    ensure!(
        status.success(),
        "python3 sqlite3 made the foreign database"
    );
    let (ok, _, err) = query(&foreign, &["events"])?;
    ensure!(!ok && err.contains("another application"), "{err}");

    // A real store, an unknown run.
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let mut d = Daemon::start_with_args(&["--db", &db_arg])?;
    d.stop()?;
    let (ok, _, err) = query(&db, &["tree", "no-such-run"])?;
    ensure!(
        !ok && err.contains("no run matches \"no-such-run\""),
        "{err}"
    );
    let (ok, _, err) = query(&db, &["replay", "no-such-run"])?;
    ensure!(!ok && err.contains("no run matches"), "{err}");
    Ok(())
}

#[test]
fn a_locked_database_never_blocks_the_reader_and_its_losses_are_reported() -> Result<()> {
    let dir = TempDir::new("store-locked")?;
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let d = Daemon::start_with_args(&["--db", &db_arg])?;
    // Another process holds an exclusive lock on the store for 8 seconds.
    let mut locker = Command::new("python3")
        .args([
            "-c",
            "import sqlite3,sys,time; c=sqlite3.connect(sys.argv[1], isolation_level=None); \
             c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); time.sleep(8); c.execute('ROLLBACK')",
        ])
        .arg(&db)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut first = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(locker.stdout.as_mut().context("locker stdout")?),
        &mut first,
    )?;
    ensure!(first.trim() == "locked", "the lock was taken: {first:?}");

    // While it is locked, events keep reaching the file output at once.
    for i in 0..20 {
        let m = format!("{}-{i}", marker());
        let (_, out) =
            run_with_timeout(Command::new("/bin/true").arg(&m), Duration::from_secs(10))?;
        ensure!(out.status.success());
        let started = std::time::Instant::now();
        d.wait_for(EVENT_TIMEOUT, |e| {
            e["kind"] == "process.exec" && e["process"]["argv"][1] == m.as_str()
        })?;
        ensure!(
            started.elapsed() < Duration::from_secs(2),
            "an event took {:?} to reach the file while the store was locked",
            started.elapsed()
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    let status = locker.wait()?;
    ensure!(status.success(), "the locker exited {status}");

    // What the store could not write was counted, and reported as lost.
    let lost = d.wait_for(Duration::from_secs(20), |e| {
        e["kind"] == "sensor.lost" && e["lost"]["by_output"]["store"].as_u64().unwrap_or(0) > 0
    })?;
    let st = d.status_json()?;
    let store = &st["store"];
    ensure!(
        store["failed"].as_u64().unwrap_or(0) + store["dropped"].as_u64().unwrap_or(0) > 0,
        "status counts the store's losses: {st}"
    );
    ensure!(
        lost["lost"]["total"] == 0,
        "nothing was lost in the kernel: {lost}"
    );
    d.check_alive()?;
    Ok(())
}

/// `[store] keep`: a process outside any run (a python that connects to a
/// closed loopback port) is found by `who --pid` and `who --ip` either way;
/// with "all" its events are rows of `events`, with "runs" (the default)
/// only its summaries are (first and last seen, counts, latest event).
#[test]
fn keep_runs_and_all_both_answer_who_for_processes_outside_runs() -> Result<()> {
    for keep in ["runs", "all"] {
        let dir = TempDir::new(&format!("store-keep-{keep}"))?;
        let db = dir.path().join("sensor.db");
        let db_arg = db.display().to_string();
        let d = Daemon::start_with(
            Some(&format!("[store]\nkeep = \"{keep}\"\n")),
            &["--db", &db_arg],
        )?;
        let m = marker();
        let port = 9;
        let mut cmd = Command::new("python3");
        cmd.args([
            "-c",
            &format!("import socket, sys; s=socket.socket(); s.connect_ex(('127.0.0.1', {port})); sys.exit(0) # {m}"),
        ]);
        let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
        ensure!(out.status.success(), "python3: {}", text(&out.stderr));
        let exec = d.wait_for(EVENT_TIMEOUT, |e| {
            e["kind"] == "process.exec" && e["process"]["argv"].to_string().contains(&m)
        })?;
        let exec_key = exec["process"]["key"].clone();
        let connect = d.wait_for(EVENT_TIMEOUT, |e| {
            e["kind"] == "network.connect"
                && e["network"]["dst_port"] == port
                && e["process"]["key"] == exec_key
        })?;
        ensure!(connect["run"].is_null(), "outside any run: {connect}");
        let pid = connect["process"]["pid"].as_u64().context("pid")?;
        let key = connect["process"]["key"]
            .as_str()
            .context("key")?
            .to_owned();
        // The writer commits within 100 ms of a batch: poll. Until then
        // `who` finds nothing and exits 1, which is no answer yet.
        let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
        let who = loop {
            let (ok, out, err) = query(&db, &["who", "--pid", &pid.to_string(), "--json"])?;
            let who: Value = if ok {
                serde_json::from_str(&out)
                    .with_context(|| format!("who --pid {pid} printed no JSON: {out}"))?
            } else {
                Value::Null
            };
            if who
                .as_array()
                .is_some_and(|a| a.iter().any(|w| w["process"]["key"] == key.as_str()))
            {
                break who;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "keep = {keep}: who --pid {pid}: {who} {err}"
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let answer = who
            .as_array()
            .and_then(|a| a.iter().find(|w| w["process"]["key"] == key.as_str()))
            .context("answer")?;
        ensure!(answer["run"].is_null(), "keep = {keep}: {answer}");
        ensure!(
            answer["summary"].is_null() == (keep == "all"),
            "keep = {keep}: a summary only when summed up: {answer}"
        );
        loop {
            let (ok, out, err) = query(
                &db,
                &["who", "--ip", &format!("127.0.0.1:{port}"), "--json"],
            )?;
            let by_ip: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
            if ok
                && by_ip.as_array().is_some_and(|a| {
                    a.iter().any(|w| {
                        w["process"]["key"] == key.as_str() && w["network"]["dst_port"] == port
                    })
                })
            {
                break;
            }
            ensure!(
                std::time::Instant::now() < deadline,
                "keep = {keep}: who --ip: {out} {err}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        let rows = sql_rows(
            &db,
            &format!("SELECT count(*) FROM events WHERE process_key = '{key}'"),
        )?;
        let summaries = sql_rows(
            &db,
            &format!(
                "SELECT events, first_ns <= last_ns FROM process_seen WHERE process_key = '{key}'"
            ),
        )?;
        if keep == "all" {
            ensure!(
                rows[0][0].as_u64().is_some_and(|n| n >= 2),
                "exec and connect stored: {rows:?}"
            );
            ensure!(summaries.is_empty(), "{summaries:?}");
        } else {
            ensure!(
                rows[0][0] == 0,
                "keep = runs stores no event of it: {rows:?}"
            );
            ensure!(
                summaries.len() == 1
                    && summaries[0][0].as_u64().is_some_and(|n| n >= 2)
                    && summaries[0][1] == 1,
                "its summary: {summaries:?}"
            );
        }
        drop(d);
    }
    Ok(())
}

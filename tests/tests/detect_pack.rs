//! The shipped rule pack (rules/agent/) on the real kernel: each rule here
//! fires on real processes of a launched run, and its benign twin does not.
//! A "none" is decided after a later detection of the same daemon came
//! out: the detection thread takes batches in order, so a detection the
//! earlier event would have caused is out by then.
//!
//! Run as root: `cargo test -p sensor-tests --test detect_pack -- --test-threads=1`.

use std::{
    net::TcpListener,
    os::unix::net::UnixListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, ensure};
use sensor_tests::{
    Daemon, EVENT_TIMEOUT, TempDir, enforce::base_exec, helper_bin, run_with_timeout, text,
    workspace_root,
};
use serde_json::Value;

const HELPER: &str = helper_bin!();

const NEVER_SEEN: &str = "4c8e2a6f-9b1d-4f3e-a7c5-1d6b8e3f2a14";
const SIGNALS: &str = "2e9a5c1f-7b3d-4e8a-9c6f-4a1d7e2b8c15";
const TARGETS_SENSOR: &str = "8f1b6d3a-4e7c-4b9a-a2d5-3c8e1f7a6b08";
const INJECTION: &str = "7c2f8a4e-1d6b-4a9c-b3e5-8f1a6d2c9e16";
const MODIFIED: &str = "3f7b1d9e-6c2a-4e8f-b5d1-9a4c7e2f6b18";
const SPAWNER: &str = "5a1e7c3b-8f2d-4b6e-a9c4-2d7f1b8e3a17";

fn pack() -> PathBuf {
    workspace_root().join("rules").join("agent")
}

/// A daemon with the shipped pack and an audit policy `a` (exec: the test
/// tools; unix: `unix` only; no IP connect), `extra` daemon arguments.
fn daemon_with(unix: &[&str], extra: &[&str]) -> Result<Daemon> {
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|e| format!("{e:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let exec = base_exec()?;
    let exec: Vec<&str> = exec.iter().map(String::as_str).collect();
    let config = format!(
        "[detect]\nrules = [{:?}]\n\n[policy.a]\nmode = \"audit\"\nexec.allow = [{}]\n\
         connect.allow = []\nunix.allow = [{}]\n",
        pack().display().to_string(),
        list(&exec),
        list(unix)
    );
    Daemon::start_with(Some(&config), extra)
}

fn daemon(unix: &[&str]) -> Result<Daemon> {
    daemon_with(unix, &[])
}

/// Launches `script` under `sh -c` as agent `agent` (with `--policy` when
/// given) and waits for its run.end; returns the run id.
fn launch(d: &Daemon, agent: &str, policy: Option<&str>, script: &str) -> Result<String> {
    let run = format!("{agent}-{}", sensor_tests::marker());
    let mut args = vec!["--run-id", run.as_str()];
    if let Some(p) = policy {
        args.extend(["--policy", p]);
    }
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(agent, &args, &["/bin/sh", "-c", script]),
        Duration::from_secs(60),
    )?;
    ensure!(
        out.status.success(),
        "launch {agent} failed: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.end" && e["run"]["id"] == run.as_str()
    })?;
    Ok(run)
}

fn detections_of(d: &Daemon, run: &str, rule: &str) -> Result<Vec<Value>> {
    d.matching(|e| {
        e["kind"] == "detection" && e["run"]["id"] == run && e["detection"]["rule_id"] == rule
    })
}

/// The detections of `rule` for `run`, once there is one.
fn fired(d: &Daemon, run: &str, rule: &str) -> Result<Vec<Value>> {
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "detection" && e["run"]["id"] == run && e["detection"]["rule_id"] == rule
    })
    .with_context(|| format!("no detection {rule} for run {run}"))?;
    // Others of the same batch come with it.
    std::thread::sleep(Duration::from_millis(300));
    detections_of(d, run, rule)
}

/// The event a detection names.
fn matched(d: &Daemon, hit: &Value) -> Result<Value> {
    let seq = hit["detection"]["event_seq"]
        .as_u64()
        .context("event_seq")?;
    d.matching(|e| e["seq"].as_u64() == Some(seq) && e["kind"] != "detection")?
        .into_iter()
        .next()
        .context("the matched event is in the output")
}

/// `times` TCP connects to 127.0.0.1:`port`, from one process.
fn connect_script(port: u16, times: usize) -> String {
    let pairs = vec![format!("tcp 127.0.0.1:{port}"); times].join(" ");
    format!("{HELPER} connect {pairs}; true")
}

/// `sensor rules test PACK --run RUN --json` over `db`, once the store has
/// the run's `connects` IP connects (the store writes a little behind the
/// outputs): the matches, one JSON object each.
fn rules_test(db: &Path, run: &str, connects: usize) -> Result<Vec<Value>> {
    let sensor = sensor_tests::sensor_bin()?;
    let db_s = db.display().to_string();
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let (_, out) = run_with_timeout(
            Command::new(&sensor)
                .args([
                    "events",
                    "--kind",
                    "network.connect",
                    "--run",
                    run,
                    "--json",
                ])
                .args(["--db", &db_s])
                .env_remove("SENSOR_DB"),
            Duration::from_secs(30),
        )?;
        let stored = text(&out.stdout).lines().count();
        if stored >= connects {
            ensure!(stored == connects, "{stored} connects stored for {run}");
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{stored} of {connects} connects of {run} in the store: {}",
            text(&out.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let pack = pack().display().to_string();
    let (_, out) = run_with_timeout(
        Command::new(&sensor)
            .args([
                "rules", "test", &pack, "--run", run, "--json", "--db", &db_s,
            ])
            .env_remove("SENSOR_DB"),
        Duration::from_secs(30),
    )?;
    ensure!(
        out.status.success(),
        "rules test --run {run}: {}",
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("rules test line {l:?}")))
        .collect()
}

/// The matches of `rule` in a `rules test` answer.
fn listed<'a>(matches: &'a [Value], rule: &str) -> Vec<&'a Value> {
    matches.iter().filter(|m| m["rule_id"] == rule).collect()
}

/// The first-seen rule: an agent's first connect to a host fires, the
/// second (same agent, same host, another run) does not, nor after a
/// restart on the same state dir; another agent's first fires; a
/// corrupt state file is an empty one (the daemon starts, warns, and
/// fires again).
#[test]
fn never_seen_host_fires_once_per_agent_and_host_across_a_restart() -> Result<()> {
    let tmp = TempDir::new("detect-seen")?;
    let db = tmp.path().join("sensor.db");
    let mut d = daemon_with(&[], &["--db", &db.display().to_string()])?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // Accept (and drop) whatever comes, so that every connect completes.
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });

    let first = launch(&d, "seen-a", None, &connect_script(port, 2))?;
    let hits = fired(&d, &first, NEVER_SEEN)?;
    ensure!(hits.len() == 1, "one detection for two connects: {hits:?}");
    let e = matched(&d, &hits[0])?;
    ensure!(
        e["kind"] == "network.connect"
            && e["network"]["dst_ip"] == "127.0.0.1"
            && e["run"]["id"] == first.as_str()
            && hits[0]["detection"]["level"] == "low",
        "{e} {}",
        hits[0]
    );
    let connects: Vec<u64> = d
        .matching(|e| e["kind"] == "network.connect" && e["run"]["id"] == first.as_str())?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(
        connects.len() == 2
            && hits[0]["detection"]["event_seq"].as_u64() == connects.first().copied(),
        "the first of the two connects fired: {connects:?} {}",
        hits[0]
    );

    // Same agent, same host, another run: none (decided once agent b's
    // first, launched after, has fired).
    let again = launch(&d, "seen-a", None, &connect_script(port, 1))?;
    let other = launch(&d, "seen-b", None, &connect_script(port, 1))?;
    ensure!(fired(&d, &other, NEVER_SEEN)?.len() == 1, "agent b's first");
    ensure!(
        detections_of(&d, &again, NEVER_SEEN)?.is_empty(),
        "a second run of agent a fired"
    );
    // `rules test` over the store agrees: the first run's connect is
    // listed, the second run's is not (the first run reached the host
    // before), agent b's is.
    let listed_first = rules_test(&db, &first, 2)?;
    let listed_first = listed(&listed_first, NEVER_SEEN);
    ensure!(
        listed_first.len() == 1
            && listed_first[0]["event_seq"] == hits[0]["detection"]["event_seq"],
        "rules test of the first run: {listed_first:?}"
    );
    let listed_again = rules_test(&db, &again, 1)?;
    ensure!(
        listed(&listed_again, NEVER_SEEN).is_empty(),
        "rules test lists the host the first run already reached: {listed_again:?}"
    );
    ensure!(
        listed(&rules_test(&db, &other, 1)?, NEVER_SEEN).len() == 1,
        "rules test of agent b's first"
    );
    // Without --json it says what it started from: the first run's two
    // connects (agent b's run came after).
    let (_, out) = run_with_timeout(
        Command::new(sensor_tests::sensor_bin()?)
            .args([
                "rules",
                "test",
                &pack().display().to_string(),
                "--run",
                &again,
            ])
            .args(["--db", &db.display().to_string()])
            .env_remove("SENSOR_DB"),
        Duration::from_secs(30),
    )?;
    ensure!(
        out.status.success()
            && text(&out.stdout)
                .contains("(first-seen rules started from 2 earlier stored events)"),
        "rules test summary: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    // A restart on the same state dir remembers.
    d.restart()?;
    let seen_file = d.state_dir().join("detect_seen.json");
    ensure!(seen_file.exists(), "{} is missing", seen_file.display());
    let after = launch(&d, "seen-a", None, &connect_script(port, 1))?;
    let third = launch(&d, "seen-c", None, &connect_script(port, 1))?;
    ensure!(fired(&d, &third, NEVER_SEEN)?.len() == 1, "agent c's first");
    ensure!(
        detections_of(&d, &after, NEVER_SEEN)?.is_empty(),
        "agent a fired again after the restart"
    );

    // A hostile state file: the daemon starts, warns, and starts afresh.
    d.stop()?;
    std::fs::write(&seen_file, b"{\"version\":1,\"entries\":[[\"x\",1,")?;
    d.resume()?;
    d.check_alive()?;
    let fresh = launch(&d, "seen-a", None, &connect_script(port, 1))?;
    ensure!(
        fired(&d, &fresh, NEVER_SEEN)?.len() == 1,
        "agent a fires again on an empty state"
    );
    ensure!(
        d.stderr().contains("first-seen state cannot be used"),
        "no warning: {}",
        d.stderr()
    );
    d.stop()?;
    Ok(())
}

/// A signal to the daemon from a run fires the signal rule (and the
/// general "goes after the sensor" one); a signal to the run's own child
/// fires neither.
#[test]
fn a_run_signalling_the_daemon_fires_and_signalling_its_own_child_does_not() -> Result<()> {
    let tmp = TempDir::new("detect-signal")?;
    let ocsf = tmp.path().join("ocsf.jsonl");
    let mut d = daemon_with(&[], &["--output", &sensor_tests::ocsf::spec(&ocsf)])?;
    let benign = launch(
        &d,
        "sig-benign",
        Some("a"),
        "sleep 30 & kill -CONT $!; kill $!; wait; true",
    )?;
    let bad = launch(
        &d,
        "sig-bad",
        Some("a"),
        &format!("kill -CONT {}; true", d.pid()),
    )?;
    let hits = fired(&d, &bad, SIGNALS)?;
    ensure!(hits.len() == 1, "{hits:?}");
    let e = matched(&d, &hits[0])?;
    ensure!(
        e["kind"] == "sensor.tamper"
            && e["tamper"]["method"] == "signal"
            && e["tamper"]["signal"] == 18
            && e["tamper"]["target"]["pid"] == d.pid()
            && hits[0]["detection"]["level"] == "critical",
        "{e} {}",
        hits[0]
    );
    ensure!(
        !fired(&d, &bad, TARGETS_SENSOR)?.is_empty(),
        "the general rule"
    );
    for rule in [SIGNALS, TARGETS_SENSOR] {
        ensure!(
            detections_of(&d, &benign, rule)?.is_empty(),
            "the signal to the run's own child fired {rule}"
        );
    }
    d.check_alive()?;
    // In OCSF: a Detection Finding with the rule as its analytic and the
    // ATT&CK tags as attacks, accepted by the third-party validator.
    let seq = hits[0]["seq"].clone();
    let found = sensor_tests::ocsf::validated_kinds(
        &ocsf,
        &["detection"],
        &[2004],
        EVENT_TIMEOUT,
        |evs| sensor_tests::ocsf::by_seq(evs, &seq).is_some(),
    )?;
    let f = sensor_tests::ocsf::by_seq(&found, &seq).context("the finding")?;
    ensure!(
        f["finding_info"]["analytic"]["uid"] == SIGNALS
            && f["finding_info"]["analytic"]["type_id"] == 1
            && f["finding_info"]["attacks"].as_array().is_some_and(|a| a
                .iter()
                .any(|x| x["sub_technique"]["uid"] == "T1562.001")
                && a.iter().any(|x| x["tactic"]["uid"] == "TA0005")),
        "{f}"
    );
    d.stop()?;
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

/// strace attached to a process outside the run fires the injection rule;
/// strace of the run's own child (a ptrace inside the run) does not.
#[test]
fn ptrace_of_a_process_outside_the_run_fires_and_of_its_own_child_does_not() -> Result<()> {
    let mut d = daemon(&[])?;
    let target = Bg(Command::new("/bin/sleep")
        .arg("120")
        .stdin(Stdio::null())
        .spawn()?);
    let pid = target.0.id();
    let benign = launch(
        &d,
        "inj-benign",
        Some("a"),
        "strace -f -o /dev/null /bin/true; true",
    )?;
    let bad = launch(
        &d,
        "inj-bad",
        Some("a"),
        &format!("timeout -s INT 2 strace -o /dev/null -p {pid}; true"),
    )?;
    let hits = fired(&d, &bad, INJECTION)?;
    let e = matched(&d, &hits[0])?;
    ensure!(
        e["kind"] == "process.tamper"
            && e["tamper"]["method"] == "ptrace"
            && e["tamper"]["target"]["pid"] == pid
            && e["tamper"]["target"]["run"].is_null()
            && hits[0]["detection"]["level"] == "high",
        "{e} {}",
        hits[0]
    );
    ensure!(
        detections_of(&d, &benign, INJECTION)?.is_empty(),
        "strace of the run's own child fired"
    );
    drop(target);
    d.stop()?;
    Ok(())
}

/// A tmux server outside the run: the run's tmux client asks it for a
/// window, which fires the spawner rule; a connect to a plain Unix socket
/// the policy allows does not, nor one to a denied path where no socket
/// is (what glibc's nscd lookup does on every host without nscd: the CI
/// machine's tmux did it, and the rule fired on it).
#[test]
fn a_run_asking_a_tmux_server_outside_it_fires_and_a_plain_allowed_socket_does_not() -> Result<()> {
    let tmp = TempDir::new("detect-spawn")?;
    let tdir = tmp.path().join("tmux-0");
    std::fs::create_dir_all(&tdir)?;
    let tsock = tdir.join("default");
    let tsock_s = tsock.display().to_string();
    struct Tmux(String);
    impl Drop for Tmux {
        fn drop(&mut self) {
            let _ = Command::new("tmux")
                .args(["-S", &self.0, "kill-server"])
                .stderr(Stdio::null())
                .status();
        }
    }
    let (_, out) = run_with_timeout(
        Command::new("tmux").args([
            "-f",
            "/dev/null",
            "-S",
            &tsock_s,
            "new-session",
            "-d",
            "-s",
            "t",
            "sleep 120",
        ]),
        Duration::from_secs(20),
    )?;
    ensure!(out.status.success(), "tmux server: {}", text(&out.stderr));
    let _server = Tmux(tsock_s.clone());
    let plain = tmp.path().join("plain.sock");
    let plain_s = plain.display().to_string();
    let listener = UnixListener::bind(&plain)?;
    std::thread::spawn(move || {
        for s in listener.incoming() {
            drop(s);
        }
    });
    let missing_s = tmp.path().join("nobody-listens.sock").display().to_string();
    let mut d = daemon(&[&plain_s])?;
    let benign = launch(
        &d,
        "spawn-benign",
        Some("a"),
        &format!("{HELPER} connect unix {plain_s} unix {missing_s}; true"),
    )?;
    let bad = launch(
        &d,
        "spawn-bad",
        Some("a"),
        &format!("tmux -S {tsock_s} new-window -d true; true"),
    )?;
    let hits = fired(&d, &bad, SPAWNER)?;
    let mut paths = Vec::new();
    for hit in &hits {
        let e = matched(&d, hit)?;
        ensure!(
            e["kind"] == "network.connect" && e["network"]["family"] == "unix",
            "{e} {hit}"
        );
        paths.push(
            e["network"]["path"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    ensure!(
        paths.iter().all(|p| p == &tsock_s),
        "only the tmux socket fires: {paths:?}"
    );
    ensure!(
        d.matching(|e| e["kind"] == "network.connect"
            && e["run"]["id"] == benign.as_str()
            && e["network"]["path"] == missing_s.as_str()
            && e["policy"]["verdict"] == "deny"
            && e["network"]["error"] == "ENOENT")?
            .len()
            == 1,
        "the benign run's connect to a missing socket is there, denied in audit, ENOENT"
    );
    ensure!(
        d.matching(|e| e["kind"] == "network.connect"
            && e["run"]["id"] == benign.as_str()
            && e["network"]["path"] == plain_s.as_str()
            && e["policy"]["verdict"] == "allow")?
            .len()
            == 1,
        "the benign connect is there, allowed"
    );
    ensure!(
        detections_of(&d, &benign, SPAWNER)?.is_empty(),
        "the plain allowed socket fired"
    );
    d.stop()?;
    Ok(())
}

/// A file the run copies into place and then runs fires the "changed
/// during the run" rule (`exec.modified_in_run: true`); the same binary
/// copied before the run started, run by the run, does not (`false`).
#[test]
fn a_file_the_run_writes_then_runs_fires_and_one_written_before_does_not() -> Result<()> {
    let tmp = TempDir::new("detect-written")?;
    let before = tmp.path().join("before-true");
    std::fs::copy("/usr/bin/true", &before)?;
    let during = tmp.path().join("during-true");
    let mut d = daemon(&[])?;
    let benign = launch(
        &d,
        "written-benign",
        None,
        &format!("{}; true", before.display()),
    )?;
    let bad = launch(
        &d,
        "written-bad",
        None,
        &format!(
            "cp /usr/bin/true {during}; {during}; true",
            during = during.display()
        ),
    )?;
    let hits = fired(&d, &bad, MODIFIED)?;
    ensure!(hits.len() == 1, "{hits:?}");
    let e = matched(&d, &hits[0])?;
    ensure!(
        e["kind"] == "process.exec"
            && e["process"]["exe"] == during.display().to_string().as_str()
            && e["exec"]["modified_in_run"] == true,
        "{e}"
    );
    let pre = d.matching(|e| {
        e["kind"] == "process.exec"
            && e["run"]["id"] == benign.as_str()
            && e["process"]["exe"] == before.display().to_string().as_str()
    })?;
    ensure!(
        pre.len() == 1 && pre[0]["exec"]["modified_in_run"] == false,
        "the file from before the run: {pre:?}"
    );
    // A system binary the run did not touch: false too.
    ensure!(
        d.matching(|e| e["kind"] == "process.exec"
            && e["run"]["id"] == bad.as_str()
            && e["process"]["exe"] == "/usr/bin/cp")?
            .iter()
            .all(|e| e["exec"]["modified_in_run"] == false),
        "cp"
    );
    ensure!(
        detections_of(&d, &benign, MODIFIED)?.is_empty(),
        "the file from before the run fired"
    );
    d.stop()?;
    Ok(())
}

/// The pack's process, listener and denial rules, each through a real run
/// under the audit policy `a`, its benign twin launched first: once the
/// bad run's detection is out, the twin's would be too, and there is none.
#[test]
fn the_pack_rules_fire_on_real_runs_and_their_benign_twins_do_not() -> Result<()> {
    const EXEC_FROM_TMP: &str = "4c8b2d6e-7f1a-4b3c-9d5e-6a2f8c1b7d04";
    const CURL_PIPE_SHELL: &str = "9a1e3c7b-5d2f-4e8a-b6c4-2e7f1d3a8c03";
    const CREDENTIAL_TOOLING: &str = "0d6f6a55-2c7b-4c3e-8b0e-3f5c7d1a9b02";
    const STARTS_LISTENER: &str = "5d9c2a7e-1b4f-4e6a-8c3d-7a1e9b5f2c07";
    const POLICY_DENIED: &str = "3a6e8c1d-9b2f-4d7a-b5e3-8f2c6a1d9e09";
    const MANY_DENIALS: &str = "9d3f1a6c-4b8e-4c2a-a7d9-5e1b3f8c2a12";
    let d = daemon(&[])?;
    let tmp_exe = format!("/tmp/snsr-pack-{}", sensor_tests::marker());
    let denied = |n: usize| vec!["/usr/bin/basename x >/dev/null"; n].join("; ") + "; true";
    // (rule, name, the run that fires it, its benign twin)
    let cases: Vec<(&str, &str, String, String)> = vec![
        (
            EXEC_FROM_TMP,
            "exec-from-tmp",
            format!("/usr/bin/cp /usr/bin/true {tmp_exe} && {tmp_exe}; /usr/bin/rm -f {tmp_exe}"),
            "/usr/bin/true".to_owned(),
        ),
        (
            CURL_PIPE_SHELL,
            "curl-pipe-shell",
            "/usr/bin/curl -s --max-time 2 http://127.0.0.1:9/install.sh | sh; true".to_owned(),
            "/usr/bin/curl -s --max-time 2 -o /dev/null http://127.0.0.1:9/install.sh; true"
                .to_owned(),
        ),
        (
            CREDENTIAL_TOOLING,
            "credential-tooling",
            "/usr/bin/ssh-keygen -l -f /dev/null >/dev/null 2>&1; true".to_owned(),
            "/usr/bin/true".to_owned(),
        ),
        (
            STARTS_LISTENER,
            "listener",
            format!(
                "{HELPER} listen-accept 127.0.0.1:0 >/dev/null & /usr/bin/sleep 1; kill $!; true"
            ),
            format!("{HELPER} connect tcp 127.0.0.1:9; true"),
        ),
        (
            POLICY_DENIED,
            "policy-denied",
            denied(1),
            "/usr/bin/true".to_owned(),
        ),
        // More than 10 denials in a minute; three do not.
        (MANY_DENIALS, "many-denials", denied(12), denied(3)),
    ];
    for (rule, name, bad, benign) in &cases {
        let twin = launch(&d, &format!("{name}-benign"), Some("a"), benign)?;
        let run = launch(&d, name, Some("a"), bad)?;
        let hits = fired(&d, &run, rule)?;
        ensure!(
            hits.len() == 1,
            "{name}: {} detections of {rule}: {hits:?}",
            hits.len()
        );
        let twin_hits = detections_of(&d, &twin, rule)?;
        ensure!(
            twin_hits.is_empty(),
            "{name}: the benign twin fired: {twin_hits:?}"
        );
    }
    d.check_alive()?;
    Ok(())
}

/// A sub-agent four launches deep fires the deep sub-agent rule (depth
/// over 3) once, on the depth-4 run; the runs at depths 0 to 3 do not.
#[test]
fn a_sub_agent_deeper_than_three_fires_and_its_parents_do_not() -> Result<()> {
    const DEEP_SUBAGENT: &str = "7e3a1b9d-2c5f-4a8e-9b6d-1f4c8a2e7b06";
    let d = daemon(&[])?;
    let sensor = sensor_tests::sensor_bin()?;
    let s = sensor.display();
    let top = launch(
        &d,
        "deep-0",
        Some("a"),
        &format!(
            "{s} launch --agent deep-1 -- {s} launch --agent deep-2 -- {s} launch --agent deep-3 \
             -- {s} launch --agent deep-4 -- /usr/bin/true"
        ),
    )?;
    let hit = d
        .wait_for(EVENT_TIMEOUT, |e| {
            e["kind"] == "detection"
                && e["detection"]["rule_id"] == DEEP_SUBAGENT
                && e["run"]["root_id"] == top.as_str()
        })
        .context("no deep sub-agent detection")?;
    std::thread::sleep(Duration::from_millis(300));
    let all = d.matching(|e| {
        e["kind"] == "detection"
            && e["detection"]["rule_id"] == DEEP_SUBAGENT
            && e["run"]["root_id"] == top.as_str()
    })?;
    ensure!(
        all.len() == 1 && hit["run"]["depth"] == 4 && hit["run"]["agent"] == "deep-4",
        "{all:?}"
    );
    d.check_alive()?;
    Ok(())
}

/// The "many distinct hosts" correlation (value_count of network.dst_ip
/// per run.id, more than 20 in 5 minutes): a run that connects to 25
/// distinct loopback addresses (127.0.0.2 to 127.0.0.26; nothing listens,
/// each connect is refused, which is still a connect) fires once, on its
/// 21st distinct address; its benign twin, 20 distinct addresses and the
/// first of them 10 times more, does not. `rules test` over the store lists
/// the same.
#[test]
fn a_run_reaching_more_than_20_hosts_fires_once_and_20_hosts_do_not() -> Result<()> {
    const MANY_HOSTS: &str = "6b2d8f4a-1e7c-4a9b-b3d6-2c5e8a1f7d11";
    let tmp = TempDir::new("detect-hosts")?;
    let db = tmp.path().join("sensor.db");
    let d = daemon_with(&[], &["--db", &db.display().to_string()])?;
    let to = |hosts: &[u8]| {
        let pairs: Vec<String> = hosts.iter().map(|h| format!("tcp 127.0.0.{h}:9")).collect();
        format!("{HELPER} connect {}; true", pairs.join(" "))
    };
    let mut twenty: Vec<u8> = (2..22).collect();
    twenty.extend([2; 10]);
    let many: Vec<u8> = (2..27).collect();
    let twin = launch(&d, "hosts-benign", None, &to(&twenty))?;
    let run = launch(&d, "hosts-many", None, &to(&many))?;
    let hits = fired(&d, &run, MANY_HOSTS)?;
    ensure!(hits.len() == 1, "{} detections: {hits:?}", hits.len());
    let e = matched(&d, &hits[0])?;
    ensure!(
        e["kind"] == "network.connect"
            && e["network"]["dst_ip"] == "127.0.0.22"
            && e["run"]["id"] == run.as_str()
            && hits[0]["detection"]["level"] == "medium",
        "the 21st distinct address fires: {e} {}",
        hits[0]
    );
    // Every connect is an event, refused or not: the twin's 30 reached 20
    // addresses.
    let twin_connects = d.matching(|e| {
        e["kind"] == "network.connect"
            && e["run"]["id"] == twin.as_str()
            && e["network"]["dst_port"] == 9
    })?;
    let distinct: std::collections::BTreeSet<&str> = twin_connects
        .iter()
        .filter_map(|e| e["network"]["dst_ip"].as_str())
        .collect();
    ensure!(
        twin_connects.len() == 30 && distinct.len() == 20,
        "{} connects to {} addresses",
        twin_connects.len(),
        distinct.len()
    );
    ensure!(
        detections_of(&d, &twin, MANY_HOSTS)?.is_empty(),
        "20 distinct hosts fired"
    );
    // The store agrees.
    let tested = rules_test(&db, &run, 25)?;
    let listed_many = listed(&tested, MANY_HOSTS);
    ensure!(
        listed_many.len() == 1 && listed_many[0]["event_seq"] == hits[0]["detection"]["event_seq"],
        "rules test: {listed_many:?}"
    );
    ensure!(
        listed(&rules_test(&db, &twin, 30)?, MANY_HOSTS).is_empty(),
        "rules test of the twin"
    );
    d.check_alive()?;
    Ok(())
}

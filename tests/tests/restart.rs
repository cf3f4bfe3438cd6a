//! Issue 17: nothing is lost across a daemon crash, restart or upgrade. The
//! programs, their links and the ring stay pinned while no daemon runs; the
//! next daemon says how long nobody read (`sensor.gap`), reads what was
//! recorded meanwhile first (`delivery: "recovered"`), and reports what the
//! ring could not hold (`sensor.lost` with the window).

use std::{
    collections::BTreeMap,
    fs,
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use sensor_tests::{
    Checks, Daemon, check, compact, die_with_parent, helper_path, marker, prog_exists, run_child,
    text,
};
use serde_json::Value;

const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// Waits until `done` holds for the events, then returns them.
fn wait_events(d: &Daemon, done: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>> {
    d.wait_events(EVENT_TIMEOUT, done)
}

/// `sh -c SCRIPT` launched in run `agent`, in the background.
fn launch_bg(d: &Daemon, agent: &str, script: &str) -> Result<Child> {
    let mut cmd = d.launch_cmd(agent, &[], &["/bin/sh", "-c", script]);
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    die_with_parent(&mut cmd);
    cmd.spawn().context("spawn sensor launch")
}

/// Waits until `path` exists.
fn wait_file(path: &Path, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !path.exists() {
        ensure!(
            Instant::now() < deadline,
            "{} did not appear within {timeout:?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// The marker execs `/usr/bin/true TAG N` in `events`, as (N, event).
fn markers<'a>(events: &'a [Value], tag: &str) -> Vec<(u64, &'a Value)> {
    events
        .iter()
        .filter(|e| {
            e["kind"] == "process.exec"
                && e["process"]["exe"] == "/usr/bin/true"
                && e["process"]["argv"][1] == tag
        })
        .filter_map(|e| Some((e["process"]["argv"][2].as_str()?.parse().ok()?, e)))
        .collect()
}

fn seq(e: &Value) -> u64 {
    e["seq"].as_u64().unwrap_or(0)
}

/// The shell loop that execs `/usr/bin/true TAG 1..=N` in a forked child.
fn marker_loop(tag: &str, n: u32) -> String {
    format!("(i=1; while [ $i -le {n} ]; do /usr/bin/true {tag} $i; i=$((i+1)); done)")
}

/// SIGKILL the daemon; while it is down, a run started before the kill
/// forks a child that execs 500 marker commands and a process that connects
/// to a listener; restart. Every exec and the connect is reported, with the
/// run, in order, marked recovered, after a `sensor.gap` that says the
/// kernel kept recording.
#[test]
fn what_a_run_does_while_the_daemon_is_sigkilled_is_recovered_in_order() -> Result<()> {
    let ocsf_dir = sensor_tests::TempDir::new("restart-ocsf")?;
    let ocsf = ocsf_dir.path().join("ocsf.jsonl");
    let mut d = Daemon::start_with_args(&["--output", &sensor_tests::ocsf::spec(&ocsf)])?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let go = d.dir().join("go");
    let done = d.dir().join("done");
    let tag = marker();
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.02; done\n{}\n{} connect tcp 127.0.0.1:{port}\ntouch {done}\n",
        marker_loop(&tag, 500),
        helper_path().display(),
        go = go.display(),
        done = done.display(),
    );
    let mut run = launch_bg(&d, "downtime", &script)?;
    let start = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.start" && e["run"]["agent"] == "downtime"
    })?;
    let run_id = start["run"]["id"].clone();
    let last_seq_before = d.events()?.iter().map(seq).max().unwrap_or(0);
    d.kill9()?;
    fs::write(&go, b"")?;
    wait_file(&done, EVENT_TIMEOUT).context("the run's work while the daemon was down")?;
    let _ = run.wait();
    d.resume()?;
    let evs = wait_events(&d, |evs| markers(evs, &tag).len() >= 500)?;
    let mut c = Checks::new();
    let got = markers(&evs, &tag);
    let numbers: Vec<u64> = got.iter().map(|(n, _)| *n).collect();
    check!(
        c,
        numbers == (1..=500).collect::<Vec<_>>(),
        "all 500 marker execs, each once, in order: got {} ({:?}...)",
        numbers.len(),
        numbers.iter().take(10).collect::<Vec<_>>()
    );
    check!(
        c,
        got.windows(2).all(|w| seq(w[0].1) < seq(w[1].1)),
        "their seqs increase with the marker number"
    );
    let foreign: Vec<String> = got
        .iter()
        .filter(|(_, e)| e["run"]["id"] != run_id || e["delivery"] != "recovered")
        .take(3)
        .map(|(_, e)| compact(e))
        .collect();
    check!(
        c,
        foreign.is_empty(),
        "each is attributed to the run and marked recovered: {foreign:?}"
    );
    let connect = evs
        .iter()
        .find(|e| e["kind"] == "network.connect" && e["network"]["dst_port"] == u64::from(port));
    check!(
        c,
        connect.is_some_and(|e| e["run"]["id"] == run_id && e["delivery"] == "recovered"),
        "the connect of the downtime, with the run, recovered: {:?}",
        connect.map(compact)
    );
    let gap = evs.iter().find(|e| e["kind"] == "sensor.gap");
    match gap {
        Some(g) => {
            check!(
                c,
                g["gap"]["cause"] == "crash"
                    && g["gap"]["recorded"] == true
                    && g["gap"]["start"].is_string()
                    && g["gap"]["end"].is_string()
                    && g["gap"]["lost"] == 0,
                "sensor.gap says a crash, recorded, with start and end: {}",
                compact(g)
            );
            check!(
                c,
                got.first().is_some_and(|(_, e)| seq(g) < seq(e)) && seq(g) > last_seq_before,
                "sensor.gap comes first after the restart, before the recovered events"
            );
        }
        None => c.fail("no sensor.gap after the restart".into()),
    }
    let mut seqs: Vec<u64> = evs.iter().map(seq).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    check!(
        c,
        seqs.len() == n,
        "no seq is used twice across the restart"
    );
    c.finish()
}

/// A run started by `launch`, and one started by a matcher, 50 ms before a
/// SIGKILL: the restarted daemon knows both with their metadata.
#[test]
fn runs_started_just_before_a_sigkill_are_restored_with_their_metadata() -> Result<()> {
    let config = "[[agent]]\nname = \"matched\"\nexe = [\"**/fake-agent-17\"]\n";
    let mut d = Daemon::start_with_config(config)?;
    let agent = d.dir().join("fake-agent-17");
    fs::copy("/bin/sh", &agent)?;
    fs::set_permissions(&agent, fs::Permissions::from_mode(0o755))?;
    let mut launched = d.launch_cmd(
        "launched",
        &["--label", "ticket=T-17", "--principal", "alice"],
        &["/bin/sleep", "30"],
    );
    launched.stdin(Stdio::null()).stdout(Stdio::null());
    die_with_parent(&mut launched);
    let mut launched = launched.spawn()?;
    let mut matched = Command::new(&agent);
    matched.args(["-c", "sleep 30"]).stdin(Stdio::null());
    die_with_parent(&mut matched);
    let mut matched = matched.spawn()?;
    thread::sleep(Duration::from_millis(50));
    d.kill9()?;
    d.resume()?;
    let mut c = Checks::new();
    for (pid, agent_name) in [(launched.id(), "launched"), (matched.id(), "matched")] {
        let answer = d.request(&serde_json::json!({"op": "attest", "pid": pid}))?;
        check!(
            c,
            answer["run"]["agent"] == agent_name,
            "pid {pid} is still in its {agent_name} run after the restart: {answer}"
        );
        if agent_name == "launched" {
            check!(
                c,
                answer["run"]["principal"] == "alice"
                    && answer["run"]["labels"]["ticket"] == "T-17",
                "with its principal and labels: {answer}"
            );
        }
    }
    check!(
        c,
        !d.stderr().contains("unknown handle") && !d.stderr().contains("unknown run"),
        "no unknown run handle after the restart"
    );
    let _ = launched.kill();
    let _ = matched.kill();
    let _ = launched.wait();
    let _ = matched.wait();
    c.finish()
}

/// A downtime that overflows a deliberately small ring: what did not fit is
/// counted and reported with the window, and nothing else is lost: the
/// recovered markers are exactly the first ones, in order.
#[test]
fn a_downtime_that_overflows_a_small_ring_is_counted_with_its_window() -> Result<()> {
    let mut d = Daemon::start_with_config("[limits]\nevent_ring_kib = 64\n")?;
    let go = d.dir().join("go");
    let done = d.dir().join("done");
    let tag = marker();
    let script = format!(
        "while [ ! -e {go} ]; do sleep 0.02; done\n{}\ntouch {done}\n",
        marker_loop(&tag, 2000),
        go = go.display(),
        done = done.display(),
    );
    let mut run = launch_bg(&d, "overflow", &script)?;
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.start" && e["run"]["agent"] == "overflow"
    })?;
    d.kill9()?;
    fs::write(&go, b"")?;
    wait_file(&done, Duration::from_secs(60))?;
    let _ = run.wait();
    d.resume()?;
    wait_events(&d, |evs| {
        evs.iter()
            .any(|e| e["kind"] == "sensor.lost" && e["lost"]["window"].is_object())
    })?;
    // Let the recovered records come through.
    thread::sleep(Duration::from_secs(1));
    let evs = d.events()?;
    let mut c = Checks::new();
    let lost = evs
        .iter()
        .find(|e| e["kind"] == "sensor.lost" && e["lost"]["window"].is_object());
    let lost_execs = lost
        .and_then(|e| e["lost"]["by_kind"]["process.exec"].as_u64())
        .unwrap_or(0);
    let got: Vec<u64> = markers(&evs, &tag).iter().map(|(n, _)| *n).collect();
    check!(
        c,
        !got.is_empty() && got.len() < 2000,
        "the ring held some of the 2000 markers, not all: {}",
        got.len()
    );
    check!(
        c,
        got == (1..=got.len() as u64).collect::<Vec<_>>(),
        "the recovered markers are the first ones, in order, none missing among them"
    );
    check!(
        c,
        lost_execs >= 2000 - got.len() as u64,
        "sensor.lost counts at least the {} markers that did not fit: {:?}",
        2000 - got.len(),
        lost.map(compact)
    );
    let gap = evs.iter().find(|e| e["kind"] == "sensor.gap");
    check!(
        c,
        gap.is_some_and(|g| g["gap"]["lost"].as_u64().unwrap_or(0) >= lost_execs
            && lost.is_some_and(|l| l["lost"]["window"]["start"] == g["gap"]["start"])),
        "sensor.gap has the loss and the window starts where the gap does: {:?} {:?}",
        gap.map(compact),
        lost.map(compact)
    );
    c.finish()
}

/// An upgrade: a new daemon started with `--takeover` on the dirs of a
/// running one, under an exec storm. The union of both outputs has every
/// storm event exactly once, none missing, and seq never repeats.
#[test]
fn an_upgrade_under_a_storm_loses_and_repeats_nothing() -> Result<()> {
    let mut d = Daemon::start()?;
    let tag = marker();
    let done = d.dir().join("done");
    let script = format!("{}\ntouch {}\n", marker_loop(&tag, 3000), done.display());
    let mut storm = launch_bg(&d, "storm", &script)?;
    // Take over in the middle of it.
    wait_events(&d, |evs| markers(evs, &tag).len() >= 300)?;
    let old_pid = d.pid();
    let status = d.take_over()?;
    ensure!(
        status.success(),
        "the old daemon exits 0 after handing over: {status}"
    );
    wait_file(&done, Duration::from_secs(120))?;
    let _ = storm.wait();
    let evs = wait_events(&d, |evs| markers(evs, &tag).len() >= 3000)?;
    let mut c = Checks::new();
    let got = markers(&evs, &tag);
    let mut count: BTreeMap<u64, usize> = BTreeMap::new();
    for (n, _) in &got {
        *count.entry(*n).or_default() += 1;
    }
    let missing: Vec<u64> = (1..=3000).filter(|n| !count.contains_key(n)).collect();
    let twice: Vec<u64> = count
        .iter()
        .filter(|(_, k)| **k > 1)
        .map(|(n, _)| *n)
        .collect();
    check!(
        c,
        missing.is_empty(),
        "no storm exec missing: {:?}",
        &missing[..missing.len().min(10)]
    );
    check!(
        c,
        twice.is_empty(),
        "no storm exec twice: {:?}",
        &twice[..twice.len().min(10)]
    );
    check!(
        c,
        got.windows(2)
            .all(|w| seq(w[0].1) < seq(w[1].1) && w[0].0 < w[1].0),
        "in order, with increasing seq"
    );
    let mut seqs: Vec<u64> = evs.iter().map(seq).collect();
    let n = seqs.len();
    seqs.sort_unstable();
    seqs.dedup();
    check!(c, seqs.len() == n, "no seq used twice by the two daemons");
    let gap = evs.iter().find(|e| e["kind"] == "sensor.gap");
    check!(
        c,
        gap.is_some_and(|g| g["gap"]["cause"] == "handover"
            && g["gap"]["previous_pid"] == u64::from(old_pid)
            && g["gap"]["recorded"] == true),
        "sensor.gap says a hand-over from the old daemon: {:?}",
        gap.map(compact)
    );
    c.finish()
}

/// The default stop leaves the programs attached (recording for the next
/// daemon); `sensor unload` then leaves nothing attached. `--detach-on-exit`
/// is in `lifecycle.rs`.
#[test]
fn a_stop_keeps_recording_and_unload_leaves_nothing_attached() -> Result<()> {
    let mut d = Daemon::start()?;
    let ids = d.program_ids()?;
    // With no process in a run, the run-only programs are on standby:
    // nothing holds them, so they go with the daemon.
    let status = d.status_json()?;
    let standby: Vec<&str> = status["programs"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter(|p| p["standby"] == true)
                .filter_map(|p| p["name"].as_str())
                .collect()
        })
        .unwrap_or_default();
    d.stop()?;
    let mut c = Checks::new();
    check!(
        c,
        d.stderr().contains("keep recording"),
        "the stop says the programs keep recording"
    );
    check!(
        c,
        standby.len() < ids.len(),
        "status lists programs not on standby: {standby:?}"
    );
    for (name, id) in &ids {
        if standby.contains(&name.as_str()) {
            continue;
        }
        check!(c, prog_exists(*id)?, "{name} ({id}) stays after the stop");
    }
    let out = run_child(
        d.sensor()
            .args(["unload", "--pin-dir"])
            .arg(d.pin_dir())
            .stdin(Stdio::null()),
    )?
    .1;
    check!(
        c,
        out.status.success(),
        "unload: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut left = Vec::new();
        for (name, id) in &ids {
            if prog_exists(*id)? {
                left.push(name.clone());
            }
        }
        if left.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            bail!("still loaded 10 s after unload: {left:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    c.finish()
}

/// A launch while the daemon restarts (or is upgraded) waits for it
/// (`--wait`, 5 s by default) instead of failing or running unattributed.
#[test]
fn a_launch_during_a_restart_waits_for_the_daemon() -> Result<()> {
    let mut d = Daemon::start()?;
    d.stop()?;
    let mut launch = d.launch_cmd("patient", &["--wait", "30s"], &["/bin/echo", "hi"]);
    launch.stdin(Stdio::null()).stdout(Stdio::piped());
    die_with_parent(&mut launch);
    let launch = launch.spawn()?;
    thread::sleep(Duration::from_millis(500));
    d.resume()?;
    let out = launch.wait_with_output()?;
    ensure!(
        out.status.success() && out.stdout == b"hi\n",
        "the launch waited and ran: {} {:?}",
        out.status,
        text(&out.stdout)
    );
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.start" && e["run"]["agent"] == "patient"
    })?;
    Ok(())
}

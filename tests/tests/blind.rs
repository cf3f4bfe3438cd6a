//! Blindness is never silent (issue 16, item 6): the daemon's canary, on the
//! real kernel.
//!
//! Every `[daemon] canary_interval_secs` the daemon starts a child of its own
//! that execs the sensor binary (`sensor canary --port P --nonce N`) and
//! connects to a loopback listener the daemon opened for the round; the
//! kernel must report both. Here the interval is 1 s.
//!
//! How the sensor is really blinded (no fault-injection knob): the daemon's
//! `snsr_connect4` cgroup link is detached with `bpftool link detach`, again
//! and again, as a root agent that wants its connects unreported would do.
//! A cgroup link is the kind the kernel lets root detach (the exec
//! tracepoint's perf link refuses it). The daemon's integrity check attaches
//! the program again every second with a new link (and reports a
//! `sensor.tamper`), so one detach blinds the connect path for at most a
//! second; the attacker here detaches each new link within milliseconds of
//! its creation, which keeps IPv4 connects unreported nearly all the time.
//! The canary's connect then does not come through, and the sensor must say
//! so: `sensor.blind` (missing `connect`, not `exec`) in the output and the
//! store, `sensor status` not ready with the reason, `sensor_blind` 1. Once
//! the attacker stops, the next round sees again: `sensor.blind` with
//! `restored: true`, ready again.
//!
//! Run as root: `cargo test -p sensor-tests --test blind -- --test-threads=1`.

use std::fs;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use sensor_common::maps;
use sensor_tests::enforce::last_seq;
use sensor_tests::{
    Checks, Daemon, argv_has, bpftool, check, compact, kind, link_attached, links_of_prog, marker,
    metric_sample, pid_of, run_with_timeout, scrape_metrics, servers::free_port, text,
};
use serde_json::Value;

/// Rounds every second in these tests.
const CONFIG: &str = "[daemon]\ncanary_interval_secs = 1\n";
/// How long a blindness may take to be reported: a round's deadline is 5 s,
/// judged on the 1 s tick; the rest is slack for a loaded machine.
const NOTICE: Duration = Duration::from_secs(20);

/// How many, and the first two, compact.
fn few(evs: &[&Value]) -> String {
    let shown: Vec<String> = evs.iter().take(2).map(|e| compact(e)).collect();
    format!("{} event(s), first: {}", evs.len(), shown.join(" | "))
}

fn blinds(evs: &[Value], after: u64, restored: bool) -> Vec<Value> {
    evs.iter()
        .filter(|e| {
            kind(e) == "sensor.blind"
                && e["seq"].as_u64().is_some_and(|s| s > after)
                && e["blind"]["restored"] == restored
        })
        .cloned()
        .collect()
}

/// Whether `e` is a record of a canary child: the hidden subcommand with a
/// nonce in argv.
fn looks_like_canary(e: &Value) -> bool {
    argv_has(e, "--nonce") && argv_has(e, "canary")
}

/// `sensor ARGS --db DB --json`, one JSON object per line.
fn store_events(d: &Daemon, args: &[&str]) -> Result<Vec<Value>> {
    let db = d.state_dir().join("sensor.db");
    let mut cmd = Command::new(d.bin());
    cmd.args(args)
        .arg("--json")
        .arg("--db")
        .arg(&db)
        .env_remove("SENSOR_DB");
    let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
    ensure!(
        out.status.success(),
        "sensor {args:?} --db {}: {}",
        db.display(),
        text(&out.stderr)
    );
    text(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).with_context(|| format!("not JSON: {l}")))
        .collect()
}

/// A daemon left alone with rounds every second: every round sees, it is
/// never blind, `status` stays ready, and none of the canary's records is
/// an event (output or store). A process that runs the canary's subcommand
/// itself, with a nonce and a port of its choosing, is reported like any
/// other: records are the canary's by the kernel's pid and start time of the
/// daemon's own child, never by what argv or the port say.
#[test]
fn a_healthy_daemon_is_never_blind_and_its_canary_is_not_reported() -> Result<()> {
    // The store keeps every event (`keep = "all"`): with the default it
    // would only sum up processes outside runs, and the checks below look
    // for single events (none of the daemon's, the forged canary's).
    let d = Daemon::start_with_config(&format!("{CONFIG}[store]\nkeep = \"all\"\n"))?;
    let mut c = Checks::new();
    // A forged canary: the hidden subcommand, run by the test.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let forged_nonce = marker();
    let mut forged = Command::new(d.bin());
    forged.args([
        "canary",
        "--port",
        &port.to_string(),
        "--nonce",
        &forged_nonce,
    ]);
    let (forged_pid, out) = run_with_timeout(&mut forged, Duration::from_secs(30))?;
    ensure!(
        out.status.success(),
        "the forged canary failed: {}",
        text(&out.stderr)
    );
    // Several rounds, status polled throughout.
    let started = Instant::now();
    let mut not_ready = Vec::new();
    while started.elapsed() < Duration::from_secs(8) {
        let (ok, text) = d.status_text()?;
        if !ok {
            not_ready.push(text);
        }
        thread::sleep(Duration::from_millis(500));
    }
    check!(
        c,
        not_ready.is_empty(),
        "status was not ready {} time(s) on a healthy daemon: {not_ready:?}",
        not_ready.len()
    );
    let (ok, status) = d.status_json_any()?;
    let canary = &status["canary"];
    check!(
        c,
        ok && status["ready"] == true,
        "status ready: {}",
        compact(&status)
    );
    check!(
        c,
        canary["interval_secs"] == 1,
        "canary interval 1 s: {}",
        compact(canary)
    );
    check!(
        c,
        canary["rounds_ok"].as_u64().unwrap_or(0) >= 4,
        "at least 4 rounds saw their records in 8 s: {}",
        compact(canary)
    );
    check!(
        c,
        canary["rounds_failed"] == 0 && canary["blind"].is_null(),
        "no round failed: {}",
        compact(canary)
    );
    let metrics_ok = status.get("reason").is_none();
    check!(c, metrics_ok, "no reason when ready: {}", compact(&status));

    let forged_exec = d.wait_for(Duration::from_secs(10), |e| {
        kind(e) == "process.exec" && argv_has(e, &forged_nonce)
    });
    match &forged_exec {
        Ok(e) => check!(
            c,
            pid_of(e) == Some(forged_pid),
            "the forged canary's exec is reported with its pid {forged_pid}: {}",
            compact(e)
        ),
        Err(e) => c.fail(format!(
            "a process running `sensor canary` itself is reported: {e:#}"
        )),
    }
    let forged_connect = d.wait_for(Duration::from_secs(10), |e| {
        kind(e) == "network.connect"
            && pid_of(e) == Some(forged_pid)
            && e["network"]["dst_port"] == port
    });
    check!(
        c,
        forged_connect.is_ok(),
        "the forged canary's connect to port {port} is reported"
    );

    let evs = d.events()?;
    let blind: Vec<&Value> = evs.iter().filter(|e| kind(e) == "sensor.blind").collect();
    check!(
        c,
        blind.is_empty(),
        "sensor.blind from a healthy daemon: {}",
        few(&blind)
    );
    // This daemon's canary runs as its child; another daemon's on the host
    // (another test's) is a process like any other and is reported.
    let daemon_pid = i64::from(d.pid());
    let ours = |e: &Value| e["process"]["ppid"].as_i64() == Some(daemon_pid);
    let leaked: Vec<&Value> = evs
        .iter()
        .filter(|e| looks_like_canary(e) && !argv_has(e, &forged_nonce) && ours(e))
        .collect();
    check!(
        c,
        leaked.is_empty(),
        "the canary's records reported as events: {}",
        few(&leaked)
    );
    // Nothing of the daemon's own children at all: its canaries (exec,
    // connect, exit) and the self-test's are not user events.
    let children: Vec<&Value> = evs.iter().filter(|e| ours(e)).collect();
    check!(
        c,
        children.is_empty(),
        "events of the daemon's own children: {}",
        few(&children)
    );
    // The store has none of them either (it may lag the output a little).
    thread::sleep(Duration::from_secs(1));
    let stored = store_events(&d, &["events"])?;
    let stored_leaks: Vec<&Value> = stored
        .iter()
        .filter(|e| {
            // The daemon's children: its canaries among them.
            kind(e) == "sensor.blind" || ours(e)
        })
        .collect();
    check!(
        c,
        stored_leaks.is_empty(),
        "canary records or sensor.blind in the store: {}",
        few(&stored_leaks)
    );
    check!(
        c,
        stored.iter().any(|e| argv_has(e, &forged_nonce)),
        "the forged canary's exec is in the store"
    );
    d.check_alive()?;
    c.finish()
}

/// Detaches every attached link of program `prog` (its ids via bpftool),
/// until `stop`; counts the detaches that worked.
fn detach_loop(prog: u32, stop: &AtomicBool, detached: &AtomicU64, errors: &AtomicU64) {
    while !stop.load(Ordering::Relaxed) {
        match links_of_prog(prog) {
            Ok(links) => {
                for l in links.iter().filter(|l| link_attached(l)) {
                    let id = l["id"].to_string();
                    match bpftool(&["link", "detach", "id", &id]) {
                        Ok(out) if out.status.success() => {
                            detached.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// The connect hook kept detached (see the module doc): `sensor.blind`
/// naming `connect` (the exec path still works) in the output, the store and
/// the OCSF output; status not ready with the reason; `sensor_blind` 1.
/// Left alone, the next rounds see again: `restored: true` with the same
/// `since`, status ready, `sensor_blind` 0.
#[test]
fn a_connect_hook_kept_detached_makes_the_sensor_blind_until_it_is_left_alone() -> Result<()> {
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let dir = sensor_tests::TempDir::new("blind")?;
    let ocsf = dir.path().join("ocsf.jsonl");
    let ocsf_spec = format!("file:{},format=ocsf", ocsf.display());
    let config = format!("{CONFIG}\n[metrics]\nlisten = {metrics:?}\n");
    let d = Daemon::start_with(Some(&config), &["--output", &ocsf_spec])?;
    let mut c = Checks::new();
    // The canary works before the attack.
    let deadline = Instant::now() + NOTICE;
    loop {
        let (_, status) = d.status_json_any()?;
        if status["canary"]["rounds_ok"].as_u64().unwrap_or(0) >= 1 {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "no canary round saw its records before the attack: {}",
            compact(&status)
        );
        thread::sleep(Duration::from_millis(200));
    }
    let scraped = scrape_metrics(&metrics)?;
    check!(
        c,
        metric_sample(&scraped, "sensor_blind") == Some(0.0)
            && metric_sample(&scraped, "sensor_ready") == Some(1.0),
        "before: sensor_blind 0, sensor_ready 1: {:?} {:?}",
        metric_sample(&scraped, "sensor_blind"),
        metric_sample(&scraped, "sensor_ready")
    );
    let ids = d.program_ids()?;
    let connect4 = *ids
        .get(maps::programs::CONNECT4)
        .ok_or_else(|| anyhow!("no {} in status", maps::programs::CONNECT4))?;
    let seq = last_seq(&d)?;

    // The attack: detach, and detach again whatever the daemon re-attaches.
    let stop = Arc::new(AtomicBool::new(false));
    let detached = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let attacker = {
        let (stop, detached, errors) = (
            Arc::clone(&stop),
            Arc::clone(&detached),
            Arc::clone(&errors),
        );
        thread::spawn(move || detach_loop(connect4, &stop, &detached, &errors))
    };
    let during = (|| -> Result<(Value, bool, Value, String, String)> {
        d.wait_until(
            NOTICE,
            |evs| !blinds(evs, seq, false).is_empty(),
            |_| {
                format!(
                    "no sensor.blind while the connect hook is kept detached ({} detaches)",
                    detached.load(Ordering::Relaxed)
                )
            },
        )?;
        let blind = d.with_events(|evs| blinds(evs, seq, false)[0].clone())?;
        // Status says so while the attack goes on (a lucky round may see
        // in between: poll).
        let deadline = Instant::now() + NOTICE;
        let (ok, status) = loop {
            let (ok, status) = d.status_json_any()?;
            if !ok || Instant::now() >= deadline {
                break (ok, status);
            }
            thread::sleep(Duration::from_millis(100));
        };
        let (_, text) = d.status_text()?;
        let scraped = scrape_metrics(&metrics)?;
        Ok((blind, ok, status, text, scraped))
    })();
    stop.store(true, Ordering::Relaxed);
    attacker
        .join()
        .map_err(|_| anyhow!("the detaching thread panicked"))?;
    let (blind, ok, status, status_text, scraped) = during?;
    let detaches = detached.load(Ordering::Relaxed);
    eprintln!(
        "detached {detaches} links ({} bpftool errors)",
        errors.load(Ordering::Relaxed)
    );
    check!(c, detaches >= 2, "the attack detached {detaches} links");

    let b = &blind["blind"];
    check!(c, blind["run"].is_null(), "run null: {}", compact(&blind));
    check!(
        c,
        b["missing"] == serde_json::json!(["connect"]),
        "missing is connect only (exec still comes through): {}",
        compact(b)
    );
    check!(
        c,
        b["since"].as_str().is_some_and(|s| s.ends_with('Z')),
        "since is a time: {}",
        compact(b)
    );
    check!(
        c,
        b["round"].as_u64().unwrap_or(0) >= 2 && b["rounds_failed"].as_u64().unwrap_or(0) >= 1,
        "round and rounds_failed: {}",
        compact(b)
    );
    check!(
        c,
        b["detail"]
            .as_str()
            .is_some_and(|t| t.contains("network.connect") && t.contains("listener")),
        "detail names the missing record and what the child did: {}",
        compact(b)
    );
    check!(
        c,
        !ok && status["ready"] == false,
        "status not ready (exit 1) while blind: {}",
        compact(&status)
    );
    check!(
        c,
        status["reason"]
            .as_str()
            .is_some_and(|r| r.contains("blind") && r.contains("network.connect")),
        "status gives the reason: {}",
        compact(&status)
    );
    check!(
        c,
        status["canary"]["blind"]["missing"] == serde_json::json!(["connect"]),
        "status canary.blind: {}",
        compact(&status["canary"])
    );
    check!(
        c,
        status_text.contains("not ready") && status_text.contains("why not ready: blind"),
        "status text: {status_text}"
    );
    check!(
        c,
        metric_sample(&scraped, "sensor_blind") == Some(1.0)
            && metric_sample(&scraped, "sensor_ready") == Some(0.0),
        "while blind: sensor_blind 1, sensor_ready 0: {:?} {:?}",
        metric_sample(&scraped, "sensor_blind"),
        metric_sample(&scraped, "sensor_ready")
    );

    // Left alone: sight comes back.
    let restored = d.wait_until(
        NOTICE,
        |evs| !blinds(evs, seq, true).is_empty(),
        |evs| {
            format!(
                "no restore after the attack stopped; sensor.blind events: {:?}",
                blinds(evs, seq, false)
            )
        },
    );
    match restored {
        Ok(()) => {
            let r = d.with_events(|evs| blinds(evs, seq, true)[0].clone())?;
            let rb = &r["blind"];
            check!(
                c,
                rb["since"] == b["since"]
                    && rb["until"].is_string()
                    && rb["missing"]
                        .as_array()
                        .is_some_and(|m| m.contains(&Value::from("connect"))),
                "restored: same since, until, what was missing: {}",
                compact(rb)
            );
            check!(
                c,
                r["seq"].as_u64() > blind["seq"].as_u64(),
                "the restore comes after the blindness"
            );
        }
        Err(e) => c.fail(format!("{e:#}")),
    }
    let deadline = Instant::now() + NOTICE;
    let status = loop {
        let (ok, status) = d.status_json_any()?;
        if ok || Instant::now() >= deadline {
            break status;
        }
        thread::sleep(Duration::from_millis(200));
    };
    check!(
        c,
        status["ready"] == true && status["canary"]["blind"].is_null(),
        "ready again: {}",
        compact(&status)
    );
    let scraped = scrape_metrics(&metrics)?;
    check!(
        c,
        metric_sample(&scraped, "sensor_blind") == Some(0.0)
            && metric_sample(&scraped, "sensor_canary_rounds_total{result=\"failed\"}")
                .is_some_and(|n| n >= 1.0),
        "after: sensor_blind 0, failed rounds counted: {:?} {:?}",
        metric_sample(&scraped, "sensor_blind"),
        metric_sample(&scraped, "sensor_canary_rounds_total{result=\"failed\"}")
    );

    // In the store, both.
    thread::sleep(Duration::from_secs(1));
    let stored = store_events(&d, &["events", "--kind", "sensor.blind"])?;
    check!(
        c,
        stored.iter().any(|e| e["blind"]["restored"] == false)
            && stored.iter().any(|e| e["blind"]["restored"] == true),
        "the store has the blindness and its restore: {stored:?}"
    );
    // In the OCSF output, a Detection Finding opened and closed.
    let lines: Vec<String> = fs::read_to_string(&ocsf)?
        .lines()
        .filter(|l| l.contains("\"sensor.blind\""))
        .map(str::to_owned)
        .collect();
    check!(
        c,
        lines.len() >= 2,
        "OCSF output has the sensor.blind findings: {lines:?}"
    );
    let findings = dir.path().join("ocsf-blind.jsonl");
    fs::write(&findings, lines.join("\n") + "\n")?;
    c.result(sensor_tests::ocsf::validate(&findings, &[2004]).map(|_| ()));
    d.check_alive()?;
    c.finish()
}

//! Progressive enforcement on the real kernel: a workload runs once under an
//! audit policy; `sensor policy suggest` writes a policy from the stored run
//! (it passes `sensor policy check`); the same workload under that policy in
//! enforce mode runs clean; the workload with one more binary and one more
//! port is denied on exactly those two actions; `sensor policy test` on the
//! first run with a narrowed policy lists exactly the actions the narrowing
//! removes (and nothing with the policy as suggested).
//!
//! Run as root: `cargo test -p sensor-tests --test suggest -- --test-threads=1`.

use std::{
    collections::BTreeSet,
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, ensure};
use sensor_tests::enforce::{listen, outputs, reload};
use sensor_tests::{
    Daemon, EVENT_TIMEOUT, TempDir, canonical_str, helper_bin, run_with_timeout, sensor_bin, text,
};
use serde_json::Value;

const HELPER: &str = helper_bin!();

fn sensor(db: &Path, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new(sensor_bin()?);
    cmd.args(args).arg("--db").arg(db).env_remove("SENSOR_DB");
    let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
    Ok(out)
}

/// Launches `script` as run `run` under `policy`; waits until the store has
/// the run's end.
fn launch(d: &Daemon, db: &Path, run: &str, policy: &str, script: &str) -> Result<Output> {
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(
            "suggest-agent",
            &["--run-id", run, "--policy", policy],
            &["/bin/sh", "-c", script],
        ),
        Duration::from_secs(60),
    )?;
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.end" && e["run"]["id"] == run
    })?;
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let q = sensor(db, &["events", "--run", run, "--kind", "run.end", "--json"])?;
        if q.status.success() && !text(&q.stdout).trim().is_empty() {
            return Ok(out);
        }
        ensure!(
            Instant::now() < deadline,
            "run {run} never reached the store: {}",
            text(&q.stderr)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The (kind, exe or ip:port) of every exec and connect of `run` that a
/// policy denied.
fn denials(d: &Daemon, run: &str) -> Result<BTreeSet<(String, String)>> {
    Ok(d.matching(|e| {
        e["run"]["id"] == run
            && (e["kind"] == "process.exec" || e["kind"] == "network.connect")
            && e["policy"]["verdict"] == "deny"
    })?
    .iter()
    .map(|e| (e["kind"].as_str().unwrap_or("").to_owned(), target(e)))
    .collect())
}

fn target(e: &Value) -> String {
    if e["kind"] == "process.exec" {
        e["process"]["exe"].as_str().unwrap_or("").to_owned()
    } else {
        format!(
            "{}:{}",
            e["network"]["dst_ip"].as_str().unwrap_or(""),
            e["network"]["dst_port"]
        )
    }
}

/// The evidence comment of `rule` (the line above it).
fn evidence<'a>(policy: &'a str, rule: &str) -> Result<&'a str> {
    let lines: Vec<&str> = policy.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.trim_start().starts_with(rule))
        .with_context(|| format!("no rule {rule}:\n{policy}"))?;
    at.checked_sub(1)
        .and_then(|i| lines.get(i))
        .copied()
        .filter(|c| c.trim_start().starts_with('#'))
        .with_context(|| format!("no comment above {rule}:\n{policy}"))
}

#[test]
fn a_suggested_policy_runs_its_workload_clean_and_denies_exactly_what_is_new() -> Result<()> {
    let tmp = TempDir::new("suggest")?;
    let db = tmp.path().join("sensor.db");
    let (_l1, p1) = listen("127.0.0.1")?;
    let (_l2, p2) = listen("127.0.0.1")?;
    let (_l6, p6) = listen("::1")?;
    let observe = "[policy.observe]\nmode = \"audit\"\n";
    let mut d = Daemon::start_with(Some(observe), &["--db", &db.display().to_string()])?;
    let pid = std::process::id();

    // 1. The workload, once, under audit. IPv6 too: a connect to ::1, one
    // to 127.0.0.1 through an IPv6 socket (the v4-mapped ::ffff:127.0.0.1,
    // which the kernel decides as 127.0.0.1), and UDP connects (no packet
    // sent) to three addresses of one documentation /64.
    let workload = format!(
        "/usr/bin/true one; /usr/bin/env /usr/bin/true; echo \"c1: $({HELPER} connect tcp 127.0.0.1:{p1})\"; \
         echo \"c6: $({HELPER} connect tcp [::1]:{p6})\"; \
         echo \"cm: $({HELPER} connect tcp [::ffff:127.0.0.1]:{p1})\"; \
         echo \"u6: $({HELPER} connect udp [2001:db8:1:2::1]:443 udp [2001:db8:1:2::2]:443 udp [2001:db8:1:2::3]:443 | tr '\\n' ' ')\""
    );
    let run1 = format!("suggest-1-{pid}");
    let out = launch(&d, &db, &run1, "observe", &workload)?;
    let got = outputs(&out);
    ensure!(
        ["c1", "c6", "cm"]
            .iter()
            .all(|k| got.get(*k).map(String::as_str) == Some("ok"))
            && got.get("u6").map(String::as_str) == Some("ok ok ok"),
        "the audit run connects: {}",
        text(&out.stdout)
    );

    // 2. suggest, and the policy passes `policy check`.
    let file = tmp.path().join("learned.toml");
    let file_arg = file.display().to_string();
    let q = sensor(
        &db,
        &[
            "policy",
            "suggest",
            "--run",
            &run1,
            "--name",
            "learned",
            "--enforce",
            "-o",
            &file_arg,
        ],
    )?;
    ensure!(q.status.success(), "suggest: {}", text(&q.stderr));
    let learned = std::fs::read_to_string(&file)?;
    let helper = canonical_str(HELPER)?;
    for rule in [
        "\"/usr/bin/true\"".to_owned(),
        format!("\"{helper}\""),
        format!("\"127.0.0.1:{p1}\""),
        format!("\"[::1]:{p6}\""),
        "\"[2001:db8:1:2::1]:443\"".to_owned(),
    ] {
        ensure!(learned.contains(&rule), "{rule} missing:\n{learned}");
    }
    // The mapped connect is the IPv4 rule's evidence, not a rule of its own.
    ensure!(
        !learned.contains("::ffff:")
            && evidence(&learned, &format!("\"127.0.0.1:{p1}\""))?.contains("# 2× connect, first "),
        "the mapped connect counts for 127.0.0.1:{p1}:\n{learned}"
    );
    // `--fold-at 3`: the three addresses of the /64 become it; ::1 stays exact.
    let q = sensor(
        &db,
        &["policy", "suggest", "--run", &run1, "--fold-at", "3"],
    )?;
    let folded = text(&q.stdout);
    ensure!(
        q.status.success()
            && folded.contains("\"[2001:db8:1:2::/64]:443\"")
            && !folded.contains("\"[2001:db8:1:2::1]:443\"")
            && folded.contains(&format!("\"[::1]:{p6}\"")),
        "suggest --fold-at 3: {}\n{folded}",
        text(&q.stderr)
    );
    ensure!(
        learned.contains("# 2× exec, first ") && learned.contains(&format!("e.g. run {run1}")),
        "evidence comments:\n{learned}"
    );
    ensure!(!learned.contains(&p2.to_string()), "{learned}");
    let mut check = Command::new(sensor_bin()?);
    check.args(["policy", "check", &file_arg]);
    let (_, c) = run_with_timeout(&mut check, Duration::from_secs(30))?;
    ensure!(
        c.status.success(),
        "policy check: {}\n{learned}",
        text(&c.stderr)
    );

    // 3. The daemon takes the learned policy; the same workload, enforced, runs clean.
    let config = d
        .config_path()
        .context("the daemon has a config")?
        .to_owned();
    std::fs::write(&config, format!("{observe}\n{learned}"))?;
    let r = reload(&d)?;
    ensure!(r.status.success(), "reload: {}", text(&r.stderr));
    let run2 = format!("suggest-2-{pid}");
    let out = launch(&d, &db, &run2, "learned", &workload)?;
    let got = outputs(&out);
    ensure!(
        out.status.success()
            && ["c1", "c6", "cm"]
                .iter()
                .all(|k| got.get(*k).map(String::as_str) == Some("ok"))
            && got.get("u6").map(String::as_str) == Some("ok ok ok"),
        "the enforced workload runs: {}; stderr {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let denied = denials(&d, &run2)?;
    ensure!(denied.is_empty(), "denied under its own policy: {denied:?}");

    // 4. One more binary and one more port: denied on exactly those two.
    let run3 = format!("suggest-3-{pid}");
    let more = format!(
        "{workload}; /usr/bin/sleep 0; echo \"c2: $({HELPER} connect tcp 127.0.0.1:{p2})\""
    );
    let out = launch(&d, &db, &run3, "learned", &more)?;
    let got = outputs(&out);
    ensure!(
        got.get("c1").map(String::as_str) == Some("ok")
            && got.get("c2").map(String::as_str) == Some("errno=1"),
        "the old connect works, the new one fails with EPERM: {}",
        text(&out.stdout)
    );
    let sleep = canonical_str("/usr/bin/sleep")?;
    let want: BTreeSet<(String, String)> = [
        ("process.exec".to_owned(), sleep),
        ("network.connect".to_owned(), format!("127.0.0.1:{p2}")),
    ]
    .into();
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let denied = denials(&d, &run3)?;
        if denied == want {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "denials {denied:?}, want {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }

    // 5. `policy test` on run 1: clean with the policy as suggested; with the
    // true and the connect rules taken out, exactly those actions.
    let q = sensor(
        &db,
        &[
            "policy", "test", &file_arg, "--policy", "learned", "--run", &run1,
        ],
    )?;
    ensure!(
        q.status.success() && text(&q.stdout).contains("0 would be denied"),
        "policy test with the suggested policy: {} {}",
        text(&q.stdout),
        text(&q.stderr)
    );
    let narrowed: String = learned
        .lines()
        .filter(|l| !l.contains("\"/usr/bin/true\"") && !l.contains(&format!(":{p1}\"")))
        .map(|l| format!("{l}\n"))
        .collect();
    let narrow = tmp.path().join("narrow.toml");
    std::fs::write(&narrow, narrowed)?;
    let q = sensor(
        &db,
        &[
            "policy",
            "test",
            &narrow.display().to_string(),
            "--policy",
            "learned",
            "--run",
            &run1,
            "--json",
        ],
    )?;
    ensure!(
        q.status.code() == Some(1),
        "exit 1 when something would be denied: {} {}",
        text(&q.stdout),
        text(&q.stderr)
    );
    let lines: Vec<Value> = text(&q.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("policy test --json lines")?;
    let listed: BTreeSet<u64> = lines
        .iter()
        .filter_map(|v| v["event_seq"].as_u64())
        .collect();
    let removed: BTreeSet<u64> = d
        .matching(|e| {
            e["run"]["id"] == run1.as_str()
                && ((e["kind"] == "process.exec" && e["process"]["exe"] == "/usr/bin/true")
                    || (e["kind"] == "network.connect"
                        && e["network"]["dst_port"].as_u64() == Some(u64::from(p1))))
        })?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(
        removed.len() == 4,
        "two execs of true and two connects (one mapped) in run 1: {removed:?}"
    );
    ensure!(
        listed == removed,
        "policy test lists {listed:?}, the narrowing removes {removed:?}: {}",
        text(&q.stdout)
    );
    let summary = lines.last().context("a summary line")?;
    ensure!(summary["summary"]["denied"] == 4, "summary: {summary}");
    ensure!(
        lines.iter().all(|v| v.get("summary").is_some()
            || v["rule"]
                .as_str()
                .is_some_and(|r| r.ends_with("(no rule matches)"))),
        "each denial names its rule: {}",
        text(&q.stdout)
    );

    // 6. Over the agent's runs: the blocked actions of run 3 are no evidence
    // for suggest, and `policy test` finds what the kernel denied live.
    let q = sensor(
        &db,
        &[
            "policy",
            "suggest",
            "--agent",
            "suggest-agent",
            "--since",
            "1h",
        ],
    )?;
    let all = text(&q.stdout);
    ensure!(q.status.success(), "suggest --agent: {}", text(&q.stderr));
    ensure!(
        evidence(&all, &format!("\"127.0.0.1:{p1}\""))?.contains("# 6× connect, first ")
            && evidence(&all, &format!("\"[::1]:{p6}\""))?.contains("# 3× connect, first ")
            && all.contains(&format!("\"[::1]:{p6}\""))
            && !all.contains(&format!(":{p2}"))
            && !all.contains("/usr/bin/sleep")
            && all.contains("[policy.\"suggest-agent-learned\"]"),
        "suggest --agent:\n{all}"
    );
    let q = sensor(
        &db,
        &[
            "policy",
            "test",
            &file_arg,
            "--policy",
            "learned",
            "--agent",
            "suggest-agent",
            "--since",
            "1h",
            "--json",
        ],
    )?;
    let replayed: BTreeSet<u64> = text(&q.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["event_seq"].as_u64())
        .collect();
    let live: BTreeSet<u64> = d
        .matching(|e| {
            e["run"]["id"] == run3.as_str()
                && (e["kind"] == "process.exec" || e["kind"] == "network.connect")
                && e["policy"]["verdict"] == "deny"
        })?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(
        q.status.code() == Some(1) && replayed == live && live.len() == 2,
        "policy test over the agent's runs {replayed:?}, denied live {live:?}: {}",
        text(&q.stdout)
    );
    d.stop()?;
    Ok(())
}

/// `sensor policy test` replays every decision the daemon's policy makes:
/// a workload connects to a Unix socket, opens a raw socket, starts a
/// sub-run and holds three processes at once; a policy narrowed from the
/// suggested one (the socket's rule and `raw_sockets` taken out,
/// `max_depth = 0`, `max_processes = 3`) lists exactly that connect, that
/// socket, the sub-run's start and the third process's fork, each with its
/// rule, and exits 1; the suggested policy lists nothing and exits 0.
#[test]
fn policy_test_replays_unix_connects_forks_and_sub_runs() -> Result<()> {
    let tmp = TempDir::new("suggest-replay")?;
    let db = tmp.path().join("sensor.db");
    let sock = tmp.path().join("svc.sock");
    let _server = std::os::unix::net::UnixListener::bind(&sock)?;
    let sock_text = sock.display().to_string();
    let observe = "[policy.observe]\nmode = \"audit\"\n";
    let mut d = Daemon::start_with(Some(observe), &["--db", &db.display().to_string()])?;
    let pid = std::process::id();
    let sensor_path = sensor_bin()?.display().to_string();

    let run1 = format!("replay-1-{pid}");
    let workload = format!(
        "echo \"u: $({HELPER} connect unix {sock_text})\"; \
         echo \"r: $({HELPER} socket raw)\"; \
         {sensor_path} launch --agent suggest-sub -- /usr/bin/true; \
         /usr/bin/sleep 1 & /usr/bin/sleep 1 & /usr/bin/sleep 1 & wait"
    );
    let out = launch(&d, &db, &run1, "observe", &workload)?;
    ensure!(
        outputs(&out).get("u").map(String::as_str) == Some("ok")
            && outputs(&out).get("r").map(String::as_str) == Some("ok"),
        "the Unix connect and the raw socket succeed: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );

    let file = tmp.path().join("learned.toml");
    let file_arg = file.display().to_string();
    let q = sensor(
        &db,
        &[
            "policy",
            "suggest",
            "--run",
            &run1,
            "--subtree",
            "--name",
            "learned",
            "-o",
            &file_arg,
        ],
    )?;
    ensure!(q.status.success(), "suggest: {}", text(&q.stderr));
    let learned = std::fs::read_to_string(&file)?;
    ensure!(
        learned.contains(&format!("\"{sock_text}\""))
            && learned.contains("max_depth = 2")
            && learned.contains("\nraw_sockets = true\n"),
        "the socket, the sub-run and the raw socket are learned:\n{learned}"
    );
    let test = |policy_file: &Path| {
        sensor(
            &db,
            &[
                "policy",
                "test",
                &policy_file.display().to_string(),
                "--policy",
                "learned",
                "--run",
                &run1,
                "--subtree",
                "--json",
            ],
        )
    };
    let q = test(&file)?;
    ensure!(
        q.status.code() == Some(0) && text(&q.stdout).contains("\"denied\":0"),
        "the suggested policy denies nothing: {} {}",
        text(&q.stdout),
        text(&q.stderr)
    );

    let narrowed: String = learned
        .lines()
        .filter(|l| !l.contains(&format!("\"{sock_text}\"")) && *l != "raw_sockets = true")
        .map(|l| {
            if l.starts_with("max_depth =") {
                "max_depth = 0\n".to_owned()
            } else if l.starts_with("max_processes =") {
                "max_processes = 3\n".to_owned()
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    let narrow = tmp.path().join("narrow.toml");
    std::fs::write(&narrow, &narrowed)?;
    let q = test(&narrow)?;
    ensure!(
        q.status.code() == Some(1),
        "exit 1 when something would be denied: {} {}",
        text(&q.stdout),
        text(&q.stderr)
    );
    let lines: Vec<Value> = text(&q.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .context("policy test --json lines")?;
    let listed: BTreeSet<(u64, String)> = lines
        .iter()
        .filter_map(|v| Some((v["event_seq"].as_u64()?, v["rule"].as_str()?.to_owned())))
        .collect();

    // What the narrowing removes, from the events the daemon wrote.
    let in_tree = |e: &Value| e["run"]["root_id"] == run1.as_str();
    let unix: Vec<u64> = d
        .matching(|e| {
            in_tree(e)
                && e["kind"] == "network.connect"
                && e["network"]["path"] == sock_text.as_str()
        })?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let sub_runs: Vec<u64> = d
        .matching(|e| in_tree(e) && e["kind"] == "run.start" && e["run"]["depth"] == 1)?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let raw: Vec<u64> = d
        .matching(|e| in_tree(e) && e["kind"] == "network.socket")?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    let sleep = canonical_str("/usr/bin/sleep")?;
    let sleepers: BTreeSet<String> = d
        .matching(|e| in_tree(e) && e["kind"] == "process.exec" && e["process"]["exe"] == sleep)?
        .iter()
        .filter_map(|e| e["process"]["key"].as_str().map(str::to_owned))
        .collect();
    let forks: Vec<u64> = d
        .matching(|e| {
            in_tree(e)
                && e["kind"] == "process.spawn"
                && e["process"]["key"]
                    .as_str()
                    .is_some_and(|k| sleepers.contains(k))
        })?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(
        unix.len() == 1 && sub_runs.len() == 1 && forks.len() == 3 && raw.len() == 1,
        "one Unix connect {unix:?}, one sub-run {sub_runs:?}, three sleepers forked {forks:?}, \
         one raw socket {raw:?}"
    );
    let third = forks.iter().max().copied().context("a fork")?;
    let want: BTreeSet<(u64, String)> = [
        (unix[0], "unix.allow (no rule matches)".to_owned()),
        (sub_runs[0], "max_depth 0".to_owned()),
        (third, "max_processes 3".to_owned()),
        (
            raw[0],
            "raw_sockets (a raw, ICMP or packet socket reaches any address)".to_owned(),
        ),
    ]
    .into();
    ensure!(
        listed == want,
        "policy test lists {listed:?}, the narrowing removes {want:?}:\n{}\n{narrowed}",
        text(&q.stdout)
    );
    let summary = lines.last().context("a summary line")?;
    ensure!(summary["summary"]["denied"] == 4, "summary: {summary}");
    d.stop()?;
    Ok(())
}

//! Detection on the real kernel: Sigma rules of `[detect]` fire on a
//! launched run's events, each `detection` event names the run and the
//! matched event's seq and process; a bad rule on reload is refused with
//! its file:line and the running rules keep firing; `sensor rules test
//! --run` over the store finds what the daemon found live.

use std::{collections::BTreeSet, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use sensor_tests::{
    Daemon, EVENT_TIMEOUT, TempDir, marker, run_with_timeout, sensor_bin, target_dir, text,
    workspace_root,
};
use serde_json::Value;

const SSH_RULE: &str = "title: test reads ssh keys\nid: test-ssh\nlevel: high\ntags: [attack.t1552.004]\nlogsource:\n  product: agent-sensor\n  category: process_creation\ndetection:\n  run:\n    run.agent|exists: true\n  sel:\n    process.argv|contains: '/.ssh/id_'\n  condition: run and sel\n";

const METADATA_RULE: &str = "title: test metadata\nid: test-metadata\nlevel: critical\nlogsource:\n  product: agent-sensor\n  category: network_connection\ndetection:\n  sel:\n    network.dst_ip: '169.254.169.254'\n    run.agent|exists: true\n  condition: sel\n";

const TRUE_RULE: &str = "title: test true\nname: test_true\nlogsource:\n  product: agent-sensor\n  category: process_creation\ndetection:\n  sel:\n    process.exe: /usr/bin/true\n    run.agent|exists: true\n  condition: sel\n";

const MANY_TRUE: &str = "title: test many trues\nid: test-many-true\nlevel: low\ncorrelation:\n  type: event_count\n  rules: [test_true]\n  group-by: [run.id]\n  timespan: 1m\n  condition:\n    gte: 3\n";

fn launch(d: &Daemon, run: &str, script: &str) -> Result<()> {
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(
            "detect-agent",
            &["--run-id", run],
            &["/bin/sh", "-c", script],
        ),
        Duration::from_secs(60),
    )?;
    ensure!(out.status.success(), "launch failed: {}", text(&out.stderr));
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.end" && e["run"]["id"] == run
    })?;
    Ok(())
}

/// The detection events of `run` for `rule`, once at least one is there.
fn detections(d: &Daemon, run: &str, rule: &str) -> Result<Vec<Value>> {
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "detection" && e["run"]["id"] == run && e["detection"]["rule_id"] == rule
    })?;
    d.matching(|e| {
        e["kind"] == "detection" && e["run"]["id"] == run && e["detection"]["rule_id"] == rule
    })
}

fn query(db: &Path, args: &[&str]) -> Result<(bool, String, String)> {
    let mut cmd = Command::new(sensor_bin()?);
    cmd.args(args).arg("--db").arg(db).env_remove("SENSOR_DB");
    let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(30))?;
    Ok((out.status.success(), text(&out.stdout), text(&out.stderr)))
}

#[test]
fn rules_fire_on_a_run_survive_a_bad_reload_and_agree_with_rules_test() -> Result<()> {
    let tmp = TempDir::new("detect")?;
    let rules = tmp.path().join("rules");
    std::fs::create_dir_all(&rules)?;
    std::fs::write(rules.join("ssh.yml"), SSH_RULE)?;
    std::fs::write(rules.join("metadata.yml"), METADATA_RULE)?;
    std::fs::write(rules.join("true.yml"), TRUE_RULE)?;
    std::fs::write(rules.join("many_true.yml"), MANY_TRUE)?;
    let db = tmp.path().join("sensor.db");
    let ocsf = tmp.path().join("ocsf.jsonl");
    let config = format!(
        "[detect]\nrules = [{:?}]\n\n[[output]]\nspec = {:?}\n",
        rules.display().to_string(),
        sensor_tests::ocsf::spec(&ocsf)
    );
    let mut d = Daemon::start_with(Some(&config), &["--db", &db.display().to_string()])?;

    // A run that names an SSH key on a command line and connects to the
    // metadata address (nothing listens there: the attempt is enough), and
    // one benign command that must not fire.
    let run = format!("detect-{}", std::process::id());
    let m = marker();
    let script = format!(
        "/bin/echo {m} /root/.ssh/id_ed25519 >/dev/null; /bin/echo {m} benign >/dev/null; \
         /usr/bin/true 1; /usr/bin/true 2; /usr/bin/true 3; /usr/bin/true 4; \
         timeout 2 python3 -c \"import socket; s=socket.socket(); s.settimeout(0.5); s.connect_ex(('169.254.169.254', 80))\"; true"
    );
    launch(&d, &run, &script)?;

    // Two execs name the key: the shell (its script does) and the echo.
    let ssh = detections(&d, &run, "test-ssh")?;
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    let ssh = loop {
        let ssh = if ssh.len() >= 2 {
            ssh.clone()
        } else {
            detections(&d, &run, "test-ssh")?
        };
        if ssh.len() >= 2 || std::time::Instant::now() > deadline {
            break ssh;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    ensure!(ssh.len() == 2, "the shell and the echo: {ssh:?}");
    let mut argv0 = BTreeSet::new();
    for hit in &ssh {
        let seq = hit["detection"]["event_seq"]
            .as_u64()
            .context("event_seq")?;
        let matched = d
            .matching(|e| e["seq"].as_u64() == Some(seq))?
            .into_iter()
            .next()
            .context("the matched event is in the output")?;
        ensure!(
            matched["kind"] == "process.exec"
                && matched["run"]["id"] == run.as_str()
                && hit["run"] == matched["run"]
                && hit["detection"]["process_key"] == matched["process"]["key"]
                && hit["detection"]["level"] == "high"
                && hit["detection"]["tags"][0] == "attack.t1552.004"
                && hit["seq"].as_u64() > Some(seq),
            "detection {hit} of {matched}"
        );
        argv0.insert(
            matched["process"]["argv"][0]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ensure!(argv0.contains("/bin/echo"), "{argv0:?}");
    // The benign echo did not fire.
    ensure!(
        d.matching(|e| e["kind"] == "process.exec" && e["process"]["argv"][2] == "benign")?
            .iter()
            .all(|e| !ssh.iter().any(|h| h["detection"]["event_seq"] == e["seq"])),
        "the benign exec fired"
    );
    let meta = detections(&d, &run, "test-metadata")?;
    ensure!(
        meta.iter()
            .all(|h| h["detection"]["event_kind"] == "network.connect"),
        "{meta:?}"
    );

    // The correlation: the third exec of true completes it, once (the
    // fourth starts a new count); the base rule is not reported itself.
    let many = detections(&d, &run, "test-many-true")?;
    ensure!(many.len() == 1, "{many:?}");
    let third = many[0]["detection"]["event_seq"].as_u64().context("seq")?;
    let trues: Vec<u64> = d
        .matching(|e| {
            e["kind"] == "process.exec"
                && e["run"]["id"] == run.as_str()
                && e["process"]["exe"] == "/usr/bin/true"
        })?
        .iter()
        .filter_map(|e| e["seq"].as_u64())
        .collect();
    ensure!(trues.get(2) == Some(&third), "{trues:?} {third}");
    ensure!(
        d.matching(|e| e["kind"] == "detection" && e["detection"]["rule_id"] == "true")?
            .is_empty(),
        "the counted rule is quiet"
    );

    // A bad rule: the reload is refused with file:line, the rules stay.
    std::fs::write(
        rules.join("zbad.yml"),
        "title: bad\nlogsource:\n  product: agent-sensor\ndetection:\n  sel:\n    process.exe: x\n  condition: sel and missing\n",
    )?;
    let (_, out) = run_with_timeout(
        d.sensor().args(["policy", "reload"]),
        Duration::from_secs(20),
    )?;
    let err = text(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains("zbad.yml:4")
            && err.contains(
                "reload refused; the policies, agent matchers and detection rules in force stay: "
            ),
        "{err}"
    );
    let run2 = format!("detect2-{}", std::process::id());
    launch(
        &d,
        &run2,
        &format!("/bin/echo {m} ~/.ssh/id_rsa.pub /x/.ssh/id_rsa >/dev/null"),
    )?;
    let again = detections(&d, &run2, "test-ssh")?;
    ensure!(!again.is_empty(), "{again:?}");

    // rules test --run over the store: the same (rule, seq) pairs.
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    let live: BTreeSet<(String, u64)> = d
        .matching(|e| e["kind"] == "detection" && e["run"]["id"] == run.as_str())?
        .iter()
        .map(|e| {
            (
                e["detection"]["rule_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                e["detection"]["event_seq"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    ensure!(live.len() >= 4, "{live:?}");
    std::fs::remove_file(rules.join("zbad.yml"))?;
    let rules_arg = rules.display().to_string();
    loop {
        let (ok, out, err) = query(&db, &["rules", "test", &rules_arg, "--run", &run, "--json"])?;
        ensure!(ok, "{err}");
        let tested: BTreeSet<(String, u64)> = out
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| {
                (
                    v["rule_id"].as_str().unwrap_or_default().to_owned(),
                    v["event_seq"].as_u64().unwrap_or_default(),
                )
            })
            .collect();
        if tested == live {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "rules test {tested:?} != live {live:?}"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // And the store has the detections: `sensor events --kind detection`.
    let (ok, out, err) = query(
        &db,
        &["events", "--kind", "detection", "--run", &run, "--json"],
    )?;
    ensure!(ok && out.lines().count() == live.len(), "{out} {err}");

    // In OCSF: every record, the Detection Findings (2004) among them, is
    // accepted by the third-party validator.
    d.stop()?;
    sensor_tests::ocsf::validate(&ocsf, &[2004])?;
    Ok(())
}

/// The shipped pack passes the third-party Sigma tooling (no kernel
/// needed): sigma-cli's `sigma check` with issues failing, and one query
/// per rule from the Splunk and the Elasticsearch (Lucene) backends through
/// rules/pipelines/agent-sensor.yml (tests/sigma/check.py; the venv is made
/// by `cargo xtask setup`). The daemon's own loader takes the same files.
#[test]
fn the_rule_pack_passes_sigma_cli_and_converts() -> Result<()> {
    let python = target_dir().join("sigma-venv").join("bin").join("python");
    ensure!(
        python.exists(),
        "{} is missing: run `cargo xtask setup` (it installs the Sigma tools)",
        python.display()
    );
    let root = workspace_root();
    let pack = root.join("rules").join("agent");
    let (_, out) = run_with_timeout(
        Command::new(&python)
            .arg(root.join("tests").join("sigma").join("check.py"))
            .arg(&pack)
            .arg(
                root.join("rules")
                    .join("pipelines")
                    .join("agent-sensor.yml"),
            ),
        Duration::from_secs(600),
    )?;
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    ensure!(
        out.status.success() && report.contains("all passed"),
        "{report}"
    );
    let (_, out) = run_with_timeout(
        Command::new(sensor_bin()?)
            .args(["rules", "check"])
            .arg(&pack),
        Duration::from_secs(30),
    )?;
    ensure!(out.status.success(), "{}", text(&out.stderr));
    Ok(())
}

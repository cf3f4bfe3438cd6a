//! Allow-list verdicts (audit mode) on the real kernel: every exec and connect
//! of a run with a policy carries `policy.{name,verdict,rule,enforced}`, a
//! denial is followed by `policy.violation`, exec rules decide on the file
//! executed (not the name), and bad policies stop the daemon with a clear error.

use std::{net::TcpListener, os::unix::fs::symlink, process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use sensor_tests::{
    Daemon, EVENT_TIMEOUT, TempDir, daemon_on_config, marker, run_with_timeout, sensor_bin, text,
};
use serde_json::Value;

/// The exec of argv `[first, marker]` (result ok), once the daemon wrote it.
fn exec_of(d: &Daemon, first: &str, m: &str) -> Result<Value> {
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "process.exec"
            && e["exec"]["result"] == "ok"
            && e["process"]["argv"][0] == first
            && e["process"]["argv"]
                .as_array()
                .is_some_and(|a| a.iter().any(|x| x == m))
    })
}

fn violation_follows(d: &Daemon, e: &Value) -> Result<()> {
    let seq = e["seq"].as_u64().context("seq")?;
    let key = e["process"]["key"].clone();
    let v = d.wait_for(EVENT_TIMEOUT, |v| {
        v["kind"] == "policy.violation"
            && v["seq"].as_u64() == Some(seq + 1)
            && v["process"]["key"] == key
    })?;
    ensure!(
        v["policy"] == e["policy"],
        "the violation carries the verdict: {v}"
    );
    Ok(())
}

#[test]
fn exec_verdicts_decide_on_the_file_not_its_name() -> Result<()> {
    let tmp = TempDir::new("policy-exec")?;
    let allowed_dir = tmp.path().join("tools");
    let lookalike_dir = tmp.path().join("tools-extra");
    std::fs::create_dir_all(&allowed_dir)?;
    std::fs::create_dir_all(&lookalike_dir)?;
    // A copy of /usr/bin/true inside the allowed directory, and one in a
    // directory that only shares a string prefix with it.
    std::fs::copy("/usr/bin/true", allowed_dir.join("mytrue"))?;
    std::fs::copy("/usr/bin/true", lookalike_dir.join("mytrue"))?;
    // A copy of an allowed binary elsewhere, and a symlink to a denied one.
    std::fs::copy("/usr/bin/true", tmp.path().join("true-copy"))?;
    symlink("/usr/bin/env", tmp.path().join("env-link"))?;
    let sensor_dir = sensor_bin()?.parent().context("dir")?.display().to_string();
    let config = format!(
        "[policy.p]\nmode = \"audit\"\nexec.allow = [\"/usr/bin/dash\", \"/usr/bin/true\", \"{}/\", \"/usr/bin/base*\", \"{sensor_dir}/\"]\n",
        allowed_dir.display()
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let m = marker();
    let t = tmp.path().display();
    let script = format!(
        "/usr/bin/true {m}; {t}/tools/mytrue {m}; {t}/tools-extra/mytrue {m}; {t}/true-copy {m}; \
         {t}/env-link true {m}; /usr/bin/basename {m}; /usr/bin/env true {m}"
    );
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(
            "policy-agent",
            &["--policy", "p"],
            &["/bin/sh", "-c", &script],
        ),
        Duration::from_secs(30),
    )?;
    ensure!(out.status.success(), "launch: {}", text(&out.stderr));

    let verdict = |e: &Value| {
        (
            e["policy"]["verdict"].as_str().unwrap_or("").to_owned(),
            e["policy"]["rule"].as_str().unwrap_or("").to_owned(),
        )
    };
    let e = exec_of(&d, "/usr/bin/true", &m)?;
    ensure!(
        verdict(&e) == ("allow".into(), "exec.allow /usr/bin/true".into()),
        "{e}"
    );
    ensure!(
        e["policy"]["name"] == "p" && e["policy"]["enforced"] == false,
        "{e}"
    );
    let e = exec_of(&d, &format!("{t}/tools/mytrue"), &m)?;
    ensure!(
        verdict(&e).0 == "allow",
        "a file in an allowed directory: {e}"
    );
    let e = exec_of(&d, &format!("{t}/tools-extra/mytrue"), &m)?;
    ensure!(
        verdict(&e).0 == "deny",
        "a directory that only shares a string prefix: {e}"
    );
    violation_follows(&d, &e)?;
    let e = exec_of(&d, &format!("{t}/true-copy"), &m)?;
    ensure!(
        verdict(&e).0 == "deny",
        "a copy of an allowed binary under another name: {e}"
    );
    let e = exec_of(&d, &format!("{t}/env-link"), &m)?;
    ensure!(
        verdict(&e).0 == "deny" && e["process"]["exe"] == "/usr/bin/env",
        "a symlink to a denied binary: {e}"
    );
    ensure!(
        e["exec"]["filename"]
            .as_str()
            .is_some_and(|f| f.ends_with("env-link")),
        "the event keeps the path asked for: {e}"
    );
    violation_follows(&d, &e)?;
    let e = exec_of(&d, "/usr/bin/basename", &m)?;
    ensure!(
        verdict(&e) == ("allow".into(), "exec.allow /usr/bin/base*".into()),
        "glob: {e}"
    );
    let e = exec_of(&d, "/usr/bin/env", &m)?;
    ensure!(
        verdict(&e) == ("deny".into(), "exec.allow (no rule matches)".into()),
        "{e}"
    );
    violation_follows(&d, &e)?;

    // Outside any run: no verdict at all.
    let m2 = marker();
    let (_, out) = run_with_timeout(
        Command::new("/usr/bin/env").args(["true", &m2]),
        Duration::from_secs(10),
    )?;
    ensure!(out.status.success());
    let e = exec_of(&d, "/usr/bin/env", &m2)?;
    ensure!(e["run"].is_null() && e.get("policy").is_none(), "{e}");
    Ok(())
}

#[test]
fn connect_verdicts_by_cidr_and_port_and_sub_runs_inherit_the_policy() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    // A port with no listener, next to it.
    let other = port.checked_add(1).unwrap_or(port - 1);
    let sensor_dir = sensor_bin()?.parent().context("dir")?.display().to_string();
    let config = format!(
        "[policy.net]\nmode = \"audit\"\nexec.allow = [\"/usr/\", \"{sensor_dir}/\", \"/root/\"]\n\
         connect.allow = [\"127.0.0.0/8:{port}\", \"[::1]:1-1023\"]\n"
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let helper = env!("CARGO_BIN_EXE_sensor-test-helper");
    let sensor = sensor_bin()?;
    // The sub-run (no --policy) makes the connects: it inherits "net".
    let script = format!(
        "{s} launch --agent inner -- /bin/sh -c '{h} connect tcp 127.0.0.1:{port}; {h} connect tcp 127.0.0.1:{other}; {h} connect tcp [::1]:9; {h} connect udp [::1]:5353'",
        s = sensor.display(),
        h = helper,
    );
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd("outer", &["--policy", "net"], &["/bin/sh", "-c", &script]),
        Duration::from_secs(30),
    )?;
    ensure!(out.status.success(), "launch: {}", text(&out.stderr));
    let connect = |p: u16, ip: &str| {
        d.wait_for(EVENT_TIMEOUT, |e| {
            e["kind"] == "network.connect"
                && e["network"]["dst_port"] == p
                && e["network"]["dst_ip"] == ip
                && e["run"]["agent"] == "inner"
        })
    };
    let e = connect(port, "127.0.0.1")?;
    ensure!(
        e["policy"]["verdict"] == "allow" && e["policy"]["name"] == "net",
        "{e}"
    );
    ensure!(e["run"]["depth"] == 1, "from the sub-run: {e}");
    let e = connect(other, "127.0.0.1")?;
    ensure!(e["policy"]["verdict"] == "deny", "another port: {e}");
    violation_follows(&d, &e)?;
    let e = connect(9, "::1")?;
    ensure!(e["policy"]["verdict"] == "allow", "IPv6 in range: {e}");
    let e = connect(5353, "::1")?;
    ensure!(
        e["policy"]["verdict"] == "deny" && e["network"]["transport"] == "udp",
        "UDP out of range: {e}"
    );
    drop(listener);
    Ok(())
}

/// Starts `sensor daemon --config` with `toml` and expects it to refuse.
fn refused(toml: &str) -> Result<String> {
    let (config, out) = daemon_on_config(toml, Duration::from_secs(30))?;
    let err = text(&out.stderr);
    ensure!(
        !out.status.success(),
        "the daemon started with a bad policy:\n{toml}"
    );
    ensure!(!err.contains("panicked"), "{err}");
    ensure!(
        err.contains(&config.display().to_string()),
        "the error names the file: {err}"
    );
    Ok(err)
}

#[test]
fn bad_policies_stop_the_daemon_with_a_clear_error() -> Result<()> {
    let err = refused("[policy.p]\nconnect.allow = [\"10.0.0.0/33\"]\n")?;
    ensure!(
        err.contains("10.0.0.0/33") && err.contains("prefix"),
        "{err}"
    );
    let err =
        refused("[policy.p]\nmode = \"audit\"\nexec.allow = [\"/usr/bin/true\"]\nflavour = 1\n")?;
    ensure!(
        err.contains("sensor.toml:4:"),
        "unknown key with file:line: {err}"
    );
    let err = refused("[policy.p]\nexec.allow = [\"/usr/bin/true\"\n")?;
    ensure!(
        err.contains("sensor.toml:"),
        "syntax error with file:line: {err}"
    );
    let err = refused("[[agent]]\nname = \"a\"\nexe = [\"/x\"]\npolicy = \"missing\"\n")?;
    ensure!(err.contains("\"missing\""), "unknown policy name: {err}");
    let err = refused(
        "[policy.p]\nmode = \"enforce\"\nexec.allow = [{ path = \"/usr/bin/true\", sha256 = \"00\" }]\n",
    )?;
    ensure!(
        err.contains("/usr/bin/true") && err.contains("sha256"),
        "a file that does not have its pinned sha256 is refused: {err}"
    );
    let err = refused("[policy.p]\nmax_processes = 0\n")?;
    ensure!(err.contains("max_processes"), "max_processes = 0: {err}");
    Ok(())
}

#[test]
fn launch_with_an_unknown_policy_is_refused() -> Result<()> {
    let d = Daemon::start_with(Some("[policy.p]\nexec.allow = [\"/usr/bin/true\"]\n"), &[])?;
    let m = marker();
    let out = d
        .launch_cmd("a", &["--policy", "nope"], &["/usr/bin/true", &m])
        .output()?;
    ensure!(
        !out.status.success(),
        "launch with an unknown policy must fail"
    );
    ensure!(
        text(&out.stderr).contains("unknown policy \"nope\""),
        "{}",
        text(&out.stderr)
    );
    Ok(())
}

#[test]
fn policy_check_reports_file_and_line() -> Result<()> {
    let tmp = TempDir::new("policy-check")?;
    let good = tmp.path().join("good.toml");
    std::fs::write(
        &good,
        "[policy.p]\nexec.allow = [\"/usr/bin/true\"]\nconnect.allow = [\"10.0.0.0/8:443\"]\n",
    )?;
    let (_, out) = run_with_timeout(
        Command::new(sensor_bin()?)
            .args(["policy", "check"])
            .arg(&good),
        Duration::from_secs(10),
    )?;
    ensure!(
        out.status.success() && text(&out.stdout).contains("ok (1 policy: p"),
        "{}",
        text(&out.stderr)
    );
    let bad = tmp.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[policy.p]\nexec.allow = [\"/usr/bin/true\"]\nconnect.allow = [\"10.0.0.0/8:443\"]\nmax_depht = 3\n",
    )?;
    let (_, out) = run_with_timeout(
        Command::new(sensor_bin()?)
            .args(["policy", "check"])
            .arg(&bad),
        Duration::from_secs(10),
    )?;
    let err = text(&out.stderr);
    ensure!(
        !out.status.success() && err.contains(&format!("{}:4:", bad.display())),
        "{err}"
    );
    Ok(())
}

#[test]
fn reload_is_validated_and_every_verdict_names_its_version() -> Result<()> {
    let sensor_dir = sensor_bin()?.parent().context("dir")?.display().to_string();
    let v1 = format!("[policy.p]\nexec.allow = [\"/usr/bin/dash\", \"{sensor_dir}/\"]\n");
    let d = Daemon::start_with(Some(&v1), &[])?;
    let config = d.dir().join("sensor.toml");
    ensure!(
        config.exists(),
        "the harness wrote the config at {}",
        config.display()
    );
    let env_verdict = |d: &Daemon| -> Result<Value> {
        let m = marker();
        let (_, out) = run_with_timeout(
            &mut d.launch_cmd("a", &["--policy", "p"], &["/usr/bin/env", "true", &m]),
            Duration::from_secs(20),
        )?;
        ensure!(out.status.success(), "{}", text(&out.stderr));
        let e = exec_of(d, "/usr/bin/env", &m)?;
        Ok(e["policy"].clone())
    };
    let p = env_verdict(&d)?;
    ensure!(p["verdict"] == "deny" && p["version"] == 1, "{p}");

    // A valid change, by `sensor policy reload`: version 2 allows env.
    std::fs::write(
        &config,
        format!("{v1}\n[policy.q]\nexec.allow = [\"/usr/bin/true\"]\n")
            .replace("\"/usr/bin/dash\"", "\"/usr/bin/dash\", \"/usr/bin/env\""),
    )?;
    let (_, out) = run_with_timeout(
        d.sensor().args(["policy", "reload"]),
        Duration::from_secs(20),
    )?;
    ensure!(
        out.status.success() && text(&out.stdout).contains("version 2"),
        "{} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let p = env_verdict(&d)?;
    ensure!(p["verdict"] == "allow" && p["version"] == 2, "{p}");

    // A malformed file is refused with its line; version 2 keeps deciding.
    std::fs::write(
        &config,
        "[policy.p]\nexec.allow = [\"/usr/bin/true\"]\nconnect.allow = [\"300.1.1.1\"]\n",
    )?;
    let (_, out) = run_with_timeout(
        d.sensor().args(["policy", "reload"]),
        Duration::from_secs(20),
    )?;
    let err = text(&out.stderr);
    ensure!(
        !out.status.success()
            && err.contains(
                "reload refused; the policies, agent matchers and detection rules in force stay: "
            )
            && err.contains("300.1.1.1"),
        "{err}"
    );
    let p = env_verdict(&d)?;
    ensure!(
        p["verdict"] == "allow" && p["version"] == 2,
        "the old policy still decides: {p}"
    );

    // SIGHUP reloads too: back to v1's rules, as version 3.
    std::fs::write(&config, &v1)?;
    let pid = i32::try_from(d.pid())?;
    // SAFETY: kill(2) on the daemon this test started.
    ensure!(unsafe { libc::kill(pid, libc::SIGHUP) } == 0, "SIGHUP");
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let p = env_verdict(&d)?;
        if p["version"] == 3 {
            ensure!(p["verdict"] == "deny", "{p}");
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "SIGHUP did not reload: {p}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    d.check_alive()?;
    Ok(())
}

#[test]
fn a_sub_run_cannot_widen_its_parents_policy() -> Result<()> {
    let sensor_dir = sensor_bin()?.parent().context("dir")?.display().to_string();
    let config = format!(
        "[policy.parent]\nexec.allow = [\"/usr/bin/dash\", \"/usr/bin/true\", \"{sensor_dir}/\"]\n\
         [policy.narrow]\nexec.allow = [\"/usr/bin/true\"]\n\
         [policy.wide]\nexec.allow = [\"/usr/bin/true\", \"/usr/bin/env\"]\n"
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let sensor = sensor_bin()?.display().to_string();
    let m = marker();
    let script = format!(
        "{sensor} launch --agent narrow-sub --policy narrow -- /usr/bin/true {m}; echo narrow=$?; \
         {sensor} launch --agent wide-sub --policy wide -- /usr/bin/true {m}; echo wide=$?"
    );
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(
            "parent-agent",
            &["--policy", "parent"],
            &["/bin/sh", "-c", &script],
        ),
        Duration::from_secs(30),
    )?;
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    ensure!(
        stdout.contains("narrow=0"),
        "a narrower policy is accepted: {stdout} {stderr}"
    );
    ensure!(
        stdout.contains("wide=1"),
        "a wider policy is refused: {stdout} {stderr}"
    );
    ensure!(
        stderr.contains("wider than the parent run's policy \"parent\"")
            && stderr.contains("/usr/bin/env"),
        "{stderr}"
    );
    let e = exec_of(&d, "/usr/bin/true", &m)?;
    ensure!(
        e["run"]["agent"] == "narrow-sub" && e["policy"]["name"] == "narrow",
        "{e}"
    );
    Ok(())
}

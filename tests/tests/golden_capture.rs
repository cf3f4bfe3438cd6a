//! Records the kernel record stream that `sensor/tests/golden.rs` replays
//! (issue 18: the outputs must not change while the code is reshaped).
//! Not part of the suite: run it by hand when the wire format or the
//! scenario changes, then regenerate the expected outputs:
//!
//! ```text
//! SENSOR_BIN=$PWD/target/debug/sensor cargo test -p sensor-tests --test golden_capture -- --ignored
//! GOLDEN_UPDATE=1 cargo test -p sensor --test golden
//! ```
//!
//! The scenario: an `[[agent]]` matcher starts an enforce run (so every run
//! comes from the records themselves) that execs allowed, denied, failing
//! and exiting binaries, connects allowed and denied (IPv4, a Unix socket),
//! sends datagrams, makes a raw socket, signals the daemon, and starts a
//! sub-agent.

use std::{fs, net::TcpListener, os::unix::fs::PermissionsExt as _, path::PathBuf};

use anyhow::{Context as _, Result, ensure};
use sensor_tests::{Daemon, helper_path, run_with_timeout, workspace_root};

/// Where the recording goes (next to the replay test).
fn golden_dir() -> PathBuf {
    workspace_root().join("sensor").join("tests").join("golden")
}

#[test]
#[ignore = "records the golden stream; run by hand (see the module doc)"]
fn record_the_golden_stream() -> Result<()> {
    let bin_dir = PathBuf::from("/tmp/sensor-golden");
    let _ = fs::remove_dir_all(&bin_dir);
    fs::create_dir_all(&bin_dir)?;
    let agent = bin_dir.join("golden-agent");
    let sub = bin_dir.join("golden-sub");
    let denied = bin_dir.join("denied-touch");
    for (to, from) in [
        (&agent, "/bin/sh"),
        (&sub, "/bin/sh"),
        (&denied, "/usr/bin/touch"),
    ] {
        fs::copy(from, to).with_context(|| format!("copy {from}"))?;
        fs::set_permissions(to, fs::Permissions::from_mode(0o755))?;
    }
    let ok = TcpListener::bind("127.0.0.1:0")?;
    let ok_port = ok.local_addr()?.port();
    let helper = helper_path();
    let config = format!(
        r#"[[agent]]
name = "golden-agent"
exe = ["**/golden-agent"]
policy = "gp"

[[agent]]
name = "golden-sub"
exe = ["**/golden-sub"]

[policy.gp]
mode = "enforce"
exec.allow = ["/usr/bin/", "/bin/", {helper:?}, {agent:?}, {sub:?}]
connect.allow = ["127.0.0.1:{ok_port}"]
unix.allow = ["/run/golden-allowed.sock"]
"#,
        helper = helper.display().to_string(),
        agent = agent.display().to_string(),
        sub = sub.display().to_string(),
    );
    let record = bin_dir.join("records.bin");
    let d = Daemon::start_with(
        Some(&config),
        &["--record-raw", &record.display().to_string()],
    )?;
    let h = helper.display();
    let script = format!(
        "/usr/bin/true golden allowed\n\
         /bin/false\n\
         {denied} /tmp/sensor-golden/never\n\
         /nonexistent/golden-cmd\n\
         {h} connect tcp 127.0.0.1:{ok_port}\n\
         {h} connect tcp 127.0.0.1:9\n\
         {h} connect unix /run/golden-denied.sock\n\
         {h} sendto-n 127.0.0.1:{ok_port} 3\n\
         {h} socket raw\n\
         /usr/bin/kill -CONT {daemon}\n\
         {sub} -c '/usr/bin/true golden sub'\n\
         exit 3\n",
        denied = denied.display(),
        sub = sub.display(),
        daemon = d.pid(),
    );
    let (_, out) = run_with_timeout(
        std::process::Command::new(&agent).args(["-c", &script]),
        std::time::Duration::from_secs(60),
    )?;
    ensure!(
        out.status.code() == Some(3),
        "the scenario ran: {}",
        out.status
    );
    d.wait_for(std::time::Duration::from_secs(20), |e| {
        e["kind"] == "run.end" && e["run"]["agent"] == "golden-agent"
    })?;
    let mut d = d;
    d.stop()?;
    let golden = golden_dir();
    fs::create_dir_all(&golden)?;
    fs::copy(&record, golden.join("records.bin"))?;
    fs::write(golden.join("config.toml"), &config)?;
    fs::copy(
        d.state_dir().join("policy_ids.json"),
        golden.join("policy_ids.json"),
    )?;
    eprintln!(
        "recorded {} bytes into {}",
        fs::metadata(golden.join("records.bin"))?.len(),
        golden.display()
    );
    Ok(())
}

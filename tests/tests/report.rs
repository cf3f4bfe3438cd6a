//! `sensor report`: the page opens in headless Chromium (Debian's package)
//! and the rendered DOM shows the runs, the sub-agent tree and the processes.

use std::{process::Command, time::Duration};

use anyhow::{Context, Result, ensure};
use sensor_tests::{Daemon, EVENT_TIMEOUT, TempDir, marker, run_with_timeout, sensor_bin, text};

const CHROMIUM: &str = "/usr/bin/chromium";

#[test]
fn the_report_renders_in_chromium_with_the_run_tree() -> Result<()> {
    ensure!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `cargo xtask setup` (it installs Debian's chromium)"
    );
    let dir = TempDir::new("report")?;
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    // An audit policy that allows the shells and the sensor, not /usr/bin/env.
    let sensor_dir = sensor_bin()?
        .parent()
        .context("sensor binary has a directory")?
        .display()
        .to_string();
    let config = format!(
        "[policy.report-policy]\nmode = \"audit\"\nexec.allow = [\"/usr/bin/dash\", \"/usr/bin/bash\", \"/usr/bin/true\", \"{sensor_dir}/\"]\n"
    );
    let d = Daemon::start_with(Some(&config), &["--db", &db_arg])?;
    // A process outside the runs for the sub-run to reach into.
    let mut sleeper = {
        let mut cmd = Command::new("/usr/bin/sleep");
        cmd.arg("60");
        sensor_tests::die_with_parent(&mut cmd);
        cmd.spawn()?
    };
    let m = marker();
    let outer = format!("report-{}", std::process::id());
    let inner = format!("report-sub-{}", std::process::id());
    let sensor = sensor_bin()?;
    let helper = sensor_tests::helper_bin!();
    let nowhere = dir.path().join("spawner.sock");
    // The sub-run also tries ways out (the audit policy reports them and
    // blocks nothing): a Unix socket no rule allows, a raw socket, a ptrace
    // attach to the sleep.
    let script = format!(
        "{} launch --agent sub-agent --run-id {inner} -- /bin/sh -c '/bin/true {m} \"<b>tag</b>\"; /usr/bin/env true {m}-denied; \
         {helper} connect unix {nowhere}; {helper} socket raw; {helper} inject ptrace {pid} 0'",
        sensor.display(),
        nowhere = nowhere.display(),
        pid = sleeper.id()
    );
    let mut launch = Command::new(&sensor);
    launch
        .args([
            "launch",
            "--agent",
            "report-agent",
            "--run-id",
            &outer,
            "--policy",
            "report-policy",
            "--socket",
        ])
        .arg(d.socket())
        .args(["--", "/bin/sh", "-c", &script])
        .env("SENSOR_SOCKET", d.socket());
    let (_, out) = run_with_timeout(&mut launch, Duration::from_secs(60))?;
    ensure!(out.status.success(), "launch: {}", text(&out.stderr));
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.end" && e["run"]["id"] == outer.as_str()
    })?;

    let page = dir.path().join("report.html");
    let deadline = std::time::Instant::now() + EVENT_TIMEOUT;
    loop {
        let mut report = Command::new(&sensor);
        report
            .args(["report", &outer, "-o"])
            .arg(&page)
            .arg("--db")
            .arg(&db);
        let (_, out) = run_with_timeout(&mut report, Duration::from_secs(30))?;
        ensure!(out.status.success(), "report: {}", text(&out.stderr));
        let html = std::fs::read_to_string(&page)?;
        // The store writer is asynchronous: wait until it has the denial and
        // both runs' ends.
        if html.contains("DENIED") && html.matches("(exited)").count() >= 2 {
            break;
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the report never showed the denial and the finished runs"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    let html = std::fs::read_to_string(&page)?;
    ensure!(
        !html.contains("http://") && !html.contains("https://"),
        "the page loads nothing from the network"
    );

    let profile = dir.path().join("chromium-profile");
    let mut chromium = Command::new(CHROMIUM);
    chromium
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.display()));
    let (_, out) = run_with_timeout(&mut chromium, Duration::from_secs(90))?;
    let dom = text(&out.stdout);
    ensure!(
        out.status.success() && dom.contains("</html>"),
        "chromium did not render the page: {}",
        text(&out.stderr)
    );
    for needle in [
        outer.as_str(),
        inner.as_str(),
        "report-agent",
        "sub-agent",
        "Sub-agent tree and processes",
        "Timeline",
        "DENIED",
        "report-policy",
    ] {
        ensure!(dom.contains(needle), "the rendered page lacks {needle:?}");
    }
    // The sub-run is nested inside the outer run's tree, and the marker command is under it.
    let outer_at = dom
        .find(&format!("id=\"run-{outer}\""))
        .context("outer run card")?;
    let inner_at = dom
        .find(&format!("id=\"run-{inner}\""))
        .context("sub-run card")?;
    ensure!(outer_at < inner_at, "the sub-run comes after its parent");
    let marker_at = dom[inner_at..]
        .find(&m)
        .context("the marker command under the sub-run")?;
    ensure!(marker_at > 0);
    // The denial stands out: listed first, and its timeline row is marked.
    ensure!(
        !dom.contains("No action of this run tree was denied."),
        "a denial is reported"
    );
    let denials_at = dom.find("class=\"denials\"").context("the denials box")?;
    ensure!(denials_at < outer_at, "denials come before the tree");
    ensure!(
        dom[denials_at..outer_at].contains(&format!("{m}-denied")),
        "the denied exec of /usr/bin/env is in the denials box"
    );
    ensure!(
        dom.contains("<tr class=\"deny\">"),
        "the denied row is marked in the timeline"
    );
    // Argv with markup is shown as text, never as markup.
    ensure!(
        dom.contains("&lt;b&gt;tag&lt;/b&gt;") && !dom.contains("<b>tag</b>"),
        "argv is escaped"
    );
    // The escape attempts next to the denials, before the tree: each one
    // said, with what happened (audit: not blocked); the sub-run's card
    // counts them, and their timeline rows are marked.
    let escapes_at = dom
        .find("class=\"escapes\"")
        .context("the escape attempts box")?;
    ensure!(
        denials_at < escapes_at && escapes_at < outer_at,
        "the escape attempts follow the denials and precede the tree"
    );
    let escapes = &dom[escapes_at..outer_at];
    for needle in [
        format!("unix stream {}", nowhere.display()),
        "raw ipv4 socket".to_owned(),
        format!("ptrace attach: pid {}", sleeper.id()),
        "NOT BLOCKED".to_owned(),
    ] {
        ensure!(
            escapes.contains(&needle),
            "the escape attempts box lacks {needle:?}: {escapes}"
        );
    }
    ensure!(
        dom[inner_at..].contains("3 escape attempts"),
        "the sub-run's card counts its escape attempts"
    );
    ensure!(
        dom.contains("<tr class=\"escape deny\">"),
        "the escape attempts' rows are marked in the timeline"
    );
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    Ok(())
}

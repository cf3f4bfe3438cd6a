//! `sensor report`: the page opens in headless Chromium (Debian's package)
//! and the rendered DOM shows the summary, the timeline picture, the runs,
//! the sub-agent tree and the processes (identical commands folded), and
//! each denial once, blocked apart from audit. `sensor tree` folds too.

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
    // Thirteen identical sibling commands (Claude Code's start-up `git -c
    // hook.*=false …` calls), each with a long argv and its own number.
    let hooks = "-c hook.x=false ".repeat(90);
    let script = format!(
        "i=0; while [ $i -lt 13 ]; do /usr/bin/true {hooks} --n=$i {m}-git; i=$((i+1)); done; \
         /bin/sh -c \"exec /bin/true {m}-last\"; \
         {} launch --agent sub-agent --run-id {inner} -- /bin/sh -c '/bin/true {m} \"<b>tag</b>\"; /usr/bin/env true {m}-denied; \
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
    // Until the store has the denial and both runs' ends.
    report_when(
        &sensor,
        &outer,
        &page,
        &db,
        EVENT_TIMEOUT,
        "the denial and the finished runs",
        |html| {
            html.contains("would have been blocked (audit)")
                && html.matches("(exited)").count() >= 2
        },
    )?;
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
        "NOT BLOCKED",
        "report-policy",
        "Summary",
        "Timeline picture",
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
        dom.contains("class=\"deny audit\""),
        "the denied row is marked in the timeline, as audit (not blocked)"
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
        dom.contains("class=\"escape deny audit\""),
        "the escape attempts' rows are marked in the timeline"
    );
    check_summary_and_folding(&dom, &sensor, &db, &outer, &inner, &m)?;
    let png = screenshot(&page, "report-audit")?;
    eprintln!("screenshot: {}", png.display());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    Ok(())
}

/// `sensor` with `args`, its stdout (exit 0 required).
/// `sensor report RUN -o PAGE` again and again until the page is `ready`
/// (the store commits on its own thread, every 100 ms: until its first
/// commit the run is unknown to `report`, and then it fills in); the page.
fn report_when(
    sensor: &std::path::Path,
    run: &str,
    page: &std::path::Path,
    db: &std::path::Path,
    within: Duration,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> Result<String> {
    report_with(sensor, run, page, db, &[], within, what, ready)
}

/// [`report_when`] with `extra` arguments to `sensor report`.
#[expect(clippy::too_many_arguments, reason = "a test helper")]
fn report_with(
    sensor: &std::path::Path,
    run: &str,
    page: &std::path::Path,
    db: &std::path::Path,
    extra: &[&str],
    within: Duration,
    what: &str,
    ready: impl Fn(&str) -> bool,
) -> Result<String> {
    let deadline = std::time::Instant::now() + within;
    let page_arg = page.display().to_string();
    let mut args = vec!["report", run, "-o", &page_arg];
    args.extend(extra);
    loop {
        let made = sensor_out(sensor, &args, db);
        let html = match made {
            Ok(_) => std::fs::read_to_string(page)?,
            Err(e) => e.to_string(),
        };
        if ready(&html) {
            return Ok(html);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "the report never showed {what}: {}",
            html.get(..html.len().min(4000)).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn sensor_out(sensor: &std::path::Path, args: &[&str], db: &std::path::Path) -> Result<String> {
    let mut cmd = Command::new(sensor);
    // Into a pipe without COLUMNS: whole rows.
    cmd.args(args).arg("--db").arg(db).env_remove("COLUMNS");
    let (_, out) = run_with_timeout(&mut cmd, Duration::from_secs(60))?;
    ensure!(
        out.status.success(),
        "sensor {args:?}: {}",
        text(&out.stderr)
    );
    Ok(text(&out.stdout))
}

/// The summary's counts equal the store's; the 13 identical commands are one
/// folded row marked ×13; the denial and the nested run are in the picture;
/// `sensor tree` folds the same way and `--no-fold` shows all 13.
fn check_summary_and_folding(
    dom: &str,
    sensor: &std::path::Path,
    db: &std::path::Path,
    outer: &str,
    inner: &str,
    m: &str,
) -> Result<()> {
    let summary_at = dom.find("id=\"summary\"").context("the summary")?;
    let picture_at = dom.find("id=\"picture\"").context("the picture")?;
    ensure!(summary_at < picture_at, "the summary comes first");
    let summary = &dom[summary_at..picture_at];
    let execs = sensor_out(
        sensor,
        &[
            "events",
            "--run",
            outer,
            "--subtree",
            "--kind",
            "process.exec",
            "--json",
        ],
        db,
    )?
    .lines()
    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
    .filter(|e| e["exec"]["result"] == "ok")
    .map(|e| e["process"]["exe"].as_str().unwrap_or_default().to_owned())
    .collect::<Vec<_>>();
    let trues = execs.iter().filter(|e| *e == "/usr/bin/true").count();
    let execs = execs.len();
    let denials = sensor_out(sensor, &["events", "--run", outer, "--subtree"], db)?
        .lines()
        .filter(|l| l.contains("[deny]"))
        .count();
    let runs = sensor_out(sensor, &["tree", outer, "--json"], db)?;
    let tree: serde_json::Value = serde_json::from_str(&runs)?;
    fn count_procs(v: &serde_json::Value) -> usize {
        v["processes"]
            .as_array()
            .map_or(0, |p| p.iter().map(count_nodes).sum::<usize>())
            + v["runs"]
                .as_array()
                .map_or(0, |r| r.iter().map(count_procs).sum::<usize>())
    }
    fn count_nodes(v: &serde_json::Value) -> usize {
        1 + v["children"]
            .as_array()
            .map_or(0, |c| c.iter().map(count_nodes).sum::<usize>())
    }
    let procs = count_procs(&tree);
    for needle in [
        "<span class=\"count\">2</span> runs (1 sub-run)".to_owned(),
        format!("<span class=\"count\">{procs}</span> processes"),
        format!("<span class=\"count\">{execs}</span> execs"),
        format!(
            "<span class=\"count\">{denials}</span> denials</a> (<span class=\"count\">0</span> blocked"
        ),
        format!("<span class=\"count\">{denials}</span> would have been blocked (audit)"),
        format!("<code>/usr/bin/true</code></td><td class=\"n\">{trues}</td>"),
    ] {
        ensure!(
            summary.contains(&needle),
            "the summary lacks {needle:?}: {summary}"
        );
    }
    ensure!(
        denials >= 4,
        "the exec, unix, raw and ptrace denials: {denials}"
    );
    // One folded row, ×13, whose full argv is behind <details>.
    let tree_at = dom.find("id=\"processes\"").context("the trees")?;
    let trees = &dom[tree_at..dom.find("id=\"timeline\"").context("the table")?];
    let folds: Vec<&str> = trees.split("<details class=\"fold\">").skip(1).collect();
    ensure!(folds.len() == 1, "one folded row: {trees}");
    ensure!(
        folds[0].contains("<span class=\"count\">×13</span>") && folds[0].contains("hook.x=false"),
        "the folded row is marked ×13: {}",
        folds[0]
    );
    ensure!(
        trees.contains("<details class=\"argv\">"),
        "long argv behind <details>"
    );
    ensure!(
        trees.contains(&format!("exec /bin/true {m}-last =&gt; /bin/true {m}-last")),
        "a process is labelled by its first and last exec: {trees}"
    );
    ensure!(dom.contains(inner), "the sub-run");
    // The picture: a lane per run, the sub-run nested, the denial marked.
    let svg = &dom[picture_at..];
    let svg = &svg[..svg.find("</svg>").context("the picture's end")?];
    ensure!(svg.contains("└ sub-agent"), "the nested run's lane: {svg}");
    ensure!(
        svg.contains("<polygon class=\"audit\"")
            && svg.contains("DENIED, would have been blocked (audit)"),
        "the denial in the picture, with its title"
    );
    // The text tree folds the same way (the outer shell's own line, which
    // holds the loop, aside).
    let folded = sensor_out(sensor, &["tree", outer], db)?;
    let lines: Vec<&str> = folded
        .lines()
        .filter(|l| l.contains("true -c hook.x=false") && !l.contains("while"))
        .collect();
    ensure!(
        lines.len() == 1 && lines[0].ends_with(" ×13"),
        "sensor tree folds the 13 commands: {folded}"
    );
    // Denied processes and escape attempts are marked on their rows.
    ensure!(
        folded.lines().any(|l| l.contains(&format!("{m}-denied"))
            && l.ends_with(" [deny] would have been blocked (audit)")),
        "tree marks the denied exec: {folded}"
    );
    ensure!(
        folded
            .lines()
            .filter(|l| l.contains("sensor-test-helper") && l.contains("[escape attempt]"))
            .count()
            == 3,
        "tree marks the three escape attempts: {folded}"
    );
    let all = sensor_out(sensor, &["tree", outer, "--no-fold"], db)?;
    ensure!(
        all.lines()
            .filter(|l| l.contains(&format!("{m}-git")) && !l.contains("while"))
            .count()
            == 13,
        "--no-fold shows each, whole (a pipe is not cut): {all}"
    );
    // Filters compose, and a typo is refused.
    let two_kinds = sensor_out(
        sensor,
        &[
            "events",
            "--run",
            outer,
            "--subtree",
            "--kind",
            "process.exec",
            "--kind",
            "network.connect",
            "--json",
        ],
        db,
    )?;
    let kinds: Vec<serde_json::Value> = two_kinds
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    ensure!(
        kinds
            .iter()
            .all(|e| e["kind"] == "process.exec" || e["kind"] == "network.connect")
            && kinds.iter().any(|e| e["kind"] == "network.connect")
            && kinds.len() > execs,
        "--kind twice: {two_kinds}"
    );
    let pid = kinds[0]["process"]["pid"].as_u64().context("a pid")?;
    let of_pid = sensor_out(
        sensor,
        &[
            "events",
            "--pid",
            &pid.to_string(),
            "--limit",
            "2",
            "--json",
        ],
        db,
    )?;
    ensure!(
        of_pid.lines().count() == 2
            && of_pid
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .all(|e| e["process"]["pid"].as_u64() == Some(pid)),
        "--pid --limit: {of_pid}"
    );
    // --agent, --since and --until with a date or a time (events' times
    // have 9 digits: their text order is their time order).
    let json_lines = |args: &[&str]| -> Result<Vec<serde_json::Value>> {
        let mut all = args.to_vec();
        all.push("--json");
        Ok(sensor_out(sensor, &all, db)?
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    };
    let of_inner = json_lines(&["events", "--run", inner])?;
    let of_agent = json_lines(&["events", "--agent", "sub-agent"])?;
    ensure!(
        !of_agent.is_empty()
            && of_agent.iter().all(|e| e["run"]["agent"] == "sub-agent")
            && of_agent.len() == of_inner.len(),
        "--agent sub-agent: {} events, the sub-run has {}",
        of_agent.len(),
        of_inner.len()
    );
    let whole = json_lines(&["events", "--run", outer, "--subtree"])?;
    let since_date = json_lines(&[
        "events",
        "--run",
        outer,
        "--subtree",
        "--since",
        "2000-01-01",
    ])?;
    let until_date = json_lines(&[
        "events",
        "--run",
        outer,
        "--subtree",
        "--until",
        "2000-01-01",
    ])?;
    ensure!(
        since_date.len() == whole.len() && until_date.is_empty(),
        "--since/--until a date: {} and {} of {}",
        since_date.len(),
        until_date.len(),
        whole.len()
    );
    let middle = whole[whole.len() / 2]["time"]
        .as_str()
        .context("an event's time")?
        .to_owned();
    let before = whole
        .iter()
        .filter(|e| e["time"].as_str().is_some_and(|t| t < middle.as_str()))
        .count();
    let until = json_lines(&["events", "--run", outer, "--subtree", "--until", &middle])?;
    ensure!(
        until.len() == before
            && before > 0
            && until
                .iter()
                .all(|e| e["time"].as_str().is_some_and(|t| t < middle.as_str())),
        "--until {middle}: {} events, {before} are before it",
        until.len()
    );
    let mut typo = Command::new(sensor);
    typo.args(["events", "--kind", "proces.exec", "--db"])
        .arg(db);
    let (_, out) = run_with_timeout(&mut typo, Duration::from_secs(30))?;
    ensure!(
        !out.status.success() && text(&out.stderr).contains("unknown kind"),
        "--kind typo refused: {}",
        text(&out.stderr)
    );
    let replay = sensor_out(sensor, &["replay", outer], db)?;
    ensure!(
        replay
            .lines()
            .filter(|l| l.contains("process.exec")
                && l.contains("hook.x=false")
                && !l.contains("while"))
            .count()
            == 1
            && replay.contains(" ×13"),
        "sensor replay folds: {replay}"
    );
    Ok(())
}

/// Renders `page` in headless Chromium.
fn render(page: &std::path::Path, extra: &[String]) -> Result<std::process::Output> {
    let profile = page.with_extension("profile");
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
        .args(extra)
        .arg(format!("file://{}", page.display()));
    let (_, out) = run_with_timeout(&mut chromium, Duration::from_secs(90))?;
    Ok(out)
}

/// A PNG of the page under target/report-screenshots/, for a person to look at.
fn screenshot(page: &std::path::Path, name: &str) -> Result<std::path::PathBuf> {
    let dir = sensor_bin()?
        .parent()
        .and_then(std::path::Path::parent)
        .context("target dir")?
        .join("report-screenshots");
    std::fs::create_dir_all(&dir)?;
    let png = dir.join(format!("{name}.png"));
    let out = render(
        page,
        &[
            format!("--screenshot={}", png.display()),
            "--window-size=1280,2400".to_owned(),
            "--hide-scrollbars".to_owned(),
        ],
    )?;
    ensure!(
        out.status.success() && png.exists(),
        "chromium made no screenshot: {}",
        text(&out.stderr)
    );
    Ok(png)
}

/// Under an enforce policy two denied execs are counted as two, both
/// blocked, in the report, the text views and the picture.
#[test]
fn two_blocked_denials_are_counted_as_two() -> Result<()> {
    ensure!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing"
    );
    let dir = TempDir::new("report-enforce")?;
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let sensor = sensor_bin()?;
    let sensor_dir = sensor
        .parent()
        .context("sensor binary has a directory")?
        .display()
        .to_string();
    let config = format!(
        "[policy.closed]\nmode = \"enforce\"\nexec.allow = [\"/usr/bin/dash\", \"{sensor_dir}/\"]\n"
    );
    let d = Daemon::start_with(Some(&config), &["--db", &db_arg])?;
    let run = format!("report-enforce-{}", std::process::id());
    let m = marker();
    let mut launch = Command::new(&sensor);
    launch
        .args([
            "launch",
            "--agent",
            "closed-agent",
            "--run-id",
            &run,
            "--policy",
            "closed",
            "--socket",
        ])
        .arg(d.socket())
        .args([
            "--",
            "/bin/sh",
            "-c",
            &format!("/usr/bin/env true {m}-1; /usr/bin/env true {m}-2; exit 0"),
        ]);
    let (_, out) = run_with_timeout(&mut launch, Duration::from_secs(60))?;
    ensure!(out.status.success(), "launch: {}", text(&out.stderr));
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.end" && e["run"]["id"] == run.as_str()
    })?;
    let page = dir.path().join("report.html");
    let html = report_when(
        &sensor,
        &run,
        &page,
        &db,
        EVENT_TIMEOUT,
        "both denials",
        |html| html.contains("(exited)") && html.matches("<b>BLOCKED</b>").count() >= 2,
    )?;
    let out = render(&page, &["--dump-dom".to_owned()])?;
    let dom = text(&out.stdout);
    ensure!(
        out.status.success() && dom.contains("</html>"),
        "chromium: {}",
        text(&out.stderr)
    );
    ensure!(
        dom.contains(
            "<span class=\"count\">2</span> denials</a> (<span class=\"count\">2</span> blocked"
        ),
        "two denials, both blocked: {}",
        &dom[dom.find("id=\"summary\"").unwrap_or(0)..]
    );
    ensure!(
        html.matches("<b>BLOCKED</b>").count() == 2,
        "each listed once"
    );
    ensure!(!dom.contains("NOT BLOCKED"), "none only reported");
    ensure!(dom.contains("2 blocked"), "the run's badge");
    ensure!(
        dom.matches("<polygon class=\"blocked\"").count() == 2 + 1,
        "two marks and the legend's"
    );
    let events = sensor_out(&sensor, &["events", "--run", &run], &db)?;
    ensure!(
        events
            .lines()
            .filter(|l| l.contains("[deny] blocked"))
            .count()
            == 2
            && events.lines().filter(|l| l.contains("[deny]")).count() == 2,
        "text: each denial once, blocked: {events}"
    );
    ensure!(
        events
            .lines()
            .filter(|l| l.contains("policy.violation")
                && l.contains("/usr/bin/env")
                && l.contains("[violation]")
                && l.contains("exec.allow (no rule matches)"))
            .count()
            == 2,
        "a violation line names the binary and the rule: {events}"
    );
    // `sensor tree` and the page's tree mark each denied process (never
    // folded, though the two commands differ only by a number).
    let tree = sensor_out(&sensor, &["tree", &run], &db)?;
    ensure!(
        tree.lines()
            .filter(|l| l.contains("/usr/bin/env true") && l.ends_with(" [deny] blocked"))
            .count()
            == 2,
        "tree: each denied process on its row, marked blocked: {tree}"
    );
    ensure!(
        dom.matches("<span class=\"badge deny\">blocked</span>")
            .count()
            == 2,
        "the page's tree marks both denied processes"
    );
    // The daemon counts them once too, as blocked.
    let status = d.status_json()?;
    ensure!(
        status["denials_blocked"] == 2 && status["denials_audit"] == 0,
        "status counts each denial once: blocked {} audit {}",
        status["denials_blocked"],
        status["denials_audit"]
    );
    let (_, text_status) = d.status_text()?;
    ensure!(
        text_status.contains("denials: 2 blocked, 0 would have been blocked (audit)"),
        "{text_status}"
    );
    // The record section checks the run's checkpoint with the daemon's
    // keys (its state dir; the store is elsewhere): intact.
    let state_dir = d.state_dir().display().to_string();
    let checked = report_with(
        &sensor,
        &run,
        &page,
        &db,
        &["--state-dir", &state_dir],
        EVENT_TIMEOUT,
        "the record checked with the daemon's keys",
        |html| html.contains("<td class=\"v\">intact</td>"),
    )?;
    ensure!(
        !checked.contains("NOT intact"),
        "the record is intact: {}",
        &checked[checked.find("Record integrity").unwrap_or(0)..]
    );
    let png = screenshot(&page, "report-enforce")?;
    eprintln!("screenshot: {}", png.display());
    Ok(())
}

/// A real run of about 100,000 events (34,000 processes, each a spawn, an
/// exec and an exit, in one shell loop): its page stays under 5 MB, says
/// what it left out of the timeline and which command shows it, and
/// headless Chromium renders it in under 2 s more than it takes for an
/// empty page (Chromium's own start-up is not the page's).
#[test]
fn a_100k_event_run_renders_in_chromium_within_the_limits() -> Result<()> {
    const PROCESSES: u32 = 34_000;
    ensure!(
        std::path::Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: run `cargo xtask setup` (it installs Debian's chromium)"
    );
    let dir = TempDir::new("report-big")?;
    let db = dir.path().join("sensor.db");
    let db_arg = db.display().to_string();
    let d = Daemon::start_with(None, &["--db", &db_arg])?;
    let sensor = sensor_bin()?;
    let run = format!("report-big-{}", std::process::id());
    let mut launch = Command::new(&sensor);
    launch
        .args([
            "launch",
            "--agent",
            "big-agent",
            "--run-id",
            &run,
            "--socket",
        ])
        .arg(d.socket())
        .args([
            "--",
            "/bin/sh",
            "-c",
            &format!("i=0; while [ $i -lt {PROCESSES} ]; do /bin/true $i; i=$((i+1)); done"),
        ]);
    let began = std::time::Instant::now();
    let (_, out) = run_with_timeout(&mut launch, Duration::from_secs(600))?;
    ensure!(out.status.success(), "launch: {}", text(&out.stderr));
    eprintln!("{PROCESSES} processes ran in {:?}", began.elapsed());
    d.wait_for(Duration::from_secs(120), |e| {
        e["kind"] == "run.end" && e["run"]["id"] == run.as_str()
    })?;
    let page = dir.path().join("big.html");
    let want = format!("<span class=\"count\">{}</span> processes", PROCESSES + 1);
    let html = report_when(
        &sensor,
        &run,
        &page,
        &db,
        Duration::from_secs(60),
        &format!("{} processes", PROCESSES + 1),
        |html| html.contains(&want) && html.contains("(exited)"),
    )?;
    let stored = sensor_out(&sensor, &["events", "--run", &run], &db)?;
    let events = stored.lines().count();
    ensure!(events >= 100_000, "{events} events stored for the run");
    ensure!(
        html.len() < 5_000_000,
        "the page of {events} events is {} bytes",
        html.len()
    );
    ensure!(
        html.contains(&format!("sensor events --run {run}")),
        "the page names the command that shows what it left out"
    );
    // Chromium's time for an empty page, then for the big one (best of 2
    // each: the first start warms the disk cache).
    let empty = dir.path().join("empty.html");
    std::fs::write(&empty, "<!doctype html><html><body>x</body></html>")?;
    let time = |p: &std::path::Path| -> Result<Duration> {
        let mut best = Duration::MAX;
        for _ in 0..2 {
            let t = std::time::Instant::now();
            let out = render(p, &["--dump-dom".to_owned()])?;
            ensure!(
                out.status.success() && text(&out.stdout).contains("</html>"),
                "chromium: {}",
                text(&out.stderr)
            );
            best = best.min(t.elapsed());
        }
        Ok(best)
    };
    let base = time(&empty)?;
    let big = time(&page)?;
    eprintln!(
        "{events} events: page {} bytes; chromium {big:?} (empty page {base:?})",
        html.len()
    );
    ensure!(
        big.saturating_sub(base) < Duration::from_secs(2),
        "the page of {events} events took {big:?} to render, an empty one {base:?}"
    );
    let png = screenshot(&page, "report-big")?;
    eprintln!("screenshot: {}", png.display());
    Ok(())
}

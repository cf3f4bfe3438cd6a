//! Changes to the sensor's files that no open for writing shows: `rm`, `mv`,
//! `chmod` (and rmdir, truncate by path, chown, utimes) in the state dir, of
//! the database, or of a pin in the pin dir (issue "No way out of a run
//! unseen", item 5). The daemon watches those directories with fanotify and
//! reports each change as `sensor.tamper` (`method: "file"`, detected
//! "after": the change is made when the kernel tells us), naming the process
//! that made it and its run; under an enforce policy the process is killed,
//! after the fact. A process outside any run is reported too, without a run.
//! The daemon's own writes are never reported.
//!
//! Run as root: `cargo test -p sensor-tests --test tamper_files -- --test-threads=1`.

use std::fs;
use std::process::Command;
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, ensure};
use sensor_common::maps;
use sensor_tests::enforce::{
    KILLED, base_exec, describe, launch_sh, outputs, pin_listing_but_run_only, policy_toml, s,
};
use sensor_tests::{Checks, Daemon, check, compact, die_with_parent, dump, helper_bin, text};
use serde_json::Value;

const HELPER: &str = helper_bin!();
/// How long a report may take: the watcher gathers a process's changes to
/// one file for a moment before it reports them; the rest is slack for a
/// loaded machine.
const NOTICE: Duration = Duration::from_secs(5);
const TAMPER_RULE: &str = "tamper (a process outside the run, or the sensor)";

/// Policy `a` (audit) and `p` (enforce), both allowing the tools used here.
fn config() -> Result<String> {
    let mut exec = base_exec()?;
    exec.extend(
        [
            "/usr/bin/rm",
            "/usr/bin/mv",
            "/usr/bin/chmod",
            "/usr/bin/touch",
        ]
        .map(str::to_owned),
    );
    Ok(format!(
        "{}\n{}",
        policy_toml::<_, &str>("a", "audit", &exec, &[], ""),
        policy_toml::<_, &str>("p", "enforce", &exec, &[], "")
    ))
}

/// The `sensor.tamper` events of method "file".
fn file_tampers(evs: &[Value]) -> Vec<&Value> {
    evs.iter()
        .filter(|e| e["kind"] == "sensor.tamper" && e["tamper"]["method"] == "file")
        .collect()
}

/// Waits until `pred` accepts one of the file tampers; returns it.
fn wait_file_tamper(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    d.wait_until(
        NOTICE,
        |evs| file_tampers(evs).into_iter().any(&pred),
        |evs| {
            format!(
                "no sensor.tamper (method \"file\") for {what}; the file tampers:\n{}",
                dump(&file_tampers(evs).into_iter().cloned().collect::<Vec<_>>())
            )
        },
    )?;
    d.with_events(|evs| file_tampers(evs).into_iter().find(|e| pred(e)).cloned())?
        .ok_or_else(|| anyhow!("the event vanished"))
}

/// The report of `what` (unlink, rename, attrib...) of `path`.
fn of(e: &Value, what: &str, path: &str) -> bool {
    e["tamper"]["what"] == what && e["tamper"]["file"]["path"] == path
}

/// What every file tamper carries.
fn check_shape(c: &mut Checks, label: &str, e: &Value, kind: &str, object: &str) {
    let t = &e["tamper"];
    check!(
        c,
        t["detected"] == "after"
            && t["object"] == object
            && t["file"]["kind"] == kind
            && t["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{label}: tamper = {{method: file, detected: after, object: {object}, file.kind: {kind}, \
         detail}}: {}",
        compact(e)
    );
    c.result(sensor_tests::check_common(e).with_context(|| label.to_owned()));
}

/// Files the attacks act on: a file in the state dir, the database, a pin.
struct Targets {
    planted: String,
    db: String,
    moved_db: String,
    pin: String,
    state: String,
}

impl Targets {
    fn new(d: &Daemon, tag: &str) -> Result<Self> {
        let state = d.state_dir();
        let planted = state.join(format!("planted-{tag}"));
        fs::write(&planted, b"x")?;
        let db = state.join("sensor.db");
        ensure!(db.exists(), "the daemon's store is at {}", db.display());
        Ok(Self {
            planted: s(&planted),
            db: s(&db),
            moved_db: s(&state.join(format!("moved-{tag}.db"))),
            pin: s(&d.pin_dir().join(maps::POLICIES)),
            state: s(state),
        })
    }
}

/// A run in an audit policy removes a file of the state dir, moves the
/// database, removes a pin and makes the state dir readable to all: each
/// change is a `sensor.tamper` with the run, what was done, the file and
/// the process that did it. The pin is put back; the daemon goes on.
#[test]
fn a_runs_changes_to_the_sensors_files_are_reported_with_the_run() -> Result<()> {
    let d = Daemon::start_with(Some(&config()?), &[])?;
    let t = Targets::new(&d, "a")?;
    // The run-only programs' links come with the run: not compared.
    let pins = pin_listing_but_run_only(d.pin_dir());
    let script = format!(
        "/usr/bin/rm {planted}\necho \"rm: $?\"\n\
         /usr/bin/mv {db} {moved}\necho \"mv: $?\"\n\
         /usr/bin/rm {pin}\necho \"rm-pin: $?\"\n\
         /usr/bin/chmod 0755 {state}\necho \"chmod: $?\"\n",
        planted = t.planted,
        db = t.db,
        moved = t.moved_db,
        pin = t.pin,
        state = t.state,
    );
    let out = launch_sh(&d, "files-a", "a", &script)?;
    let mut c = Checks::new();
    let o = outputs(&out);
    check!(
        c,
        ["rm", "mv", "rm-pin", "chmod"]
            .iter()
            .all(|k| o.get(*k).map(String::as_str) == Some("0")),
        "in audit every change is made: {}",
        describe(&out)
    );
    for (label, what, path, kind, exe) in [
        (
            "rm of a state file",
            "unlink",
            &t.planted,
            "state",
            "/usr/bin/rm",
        ),
        (
            "mv of the database",
            "rename",
            &t.db,
            "store",
            "/usr/bin/mv",
        ),
        ("rm of a pin", "unlink", &t.pin, "pins", "/usr/bin/rm"),
        (
            "chmod of the state dir",
            "attrib",
            &t.state,
            "state",
            "/usr/bin/chmod",
        ),
    ] {
        match wait_file_tamper(&d, label, |e| of(e, what, path)) {
            Ok(e) => {
                check_shape(&mut c, label, &e, kind, path);
                check!(
                    c,
                    e["run"]["agent"] == "files-a"
                        && e["process"]["exe"] == exe
                        && e["policy"]["verdict"] == "deny"
                        && e["policy"]["rule"] == TAMPER_RULE
                        && e["policy"]["enforced"] == false
                        && e["tamper"]["killed"] == false,
                    "{label}: reported with the run, by {exe}, denied but not enforced (audit): {}",
                    compact(&e)
                );
                if what == "rename" {
                    check!(
                        c,
                        e["tamper"]["file"]["to"] == t.moved_db.as_str(),
                        "{label}: names where it went: {}",
                        compact(&e)
                    );
                }
                if what == "attrib" {
                    check!(
                        c,
                        e["tamper"]["file"]["dir"] == true,
                        "{label}: a directory: {}",
                        compact(&e)
                    );
                }
            }
            Err(e) => c.fail(format!("{e:#}")),
        }
    }
    // Each act once (the watcher gathers a process's changes to one file).
    let evs = d.events()?;
    for path in [&t.planted, &t.db, &t.pin, &t.state] {
        let n = file_tampers(&evs)
            .iter()
            .filter(|e| {
                e["run"]["agent"] == "files-a" && e["tamper"]["file"]["path"] == path.as_str()
            })
            .count();
        check!(c, n == 1, "one report for {path}, not {n}");
    }
    // The sensor goes on: the integrity check puts the pin back.
    let deadline = std::time::Instant::now() + NOTICE;
    while pin_listing_but_run_only(d.pin_dir()) != pins && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    check!(
        c,
        pin_listing_but_run_only(d.pin_dir()) == pins,
        "the removed pin is pinned again"
    );
    let status = d.status_json()?;
    check!(
        c,
        status["ready"] == true
            && status["file_watch"]["watching"] == true
            && status["file_watch"]["reported"].as_u64().unwrap_or(0) >= 4,
        "ready, and status counts the reports: {}",
        compact(&status["file_watch"])
    );
    c.finish()
}

/// Under an enforce policy the process that changed a sensor file is
/// killed once the change is reported (after the fact: the change stands).
/// Each change here is made by a helper that lingers afterwards.
#[test]
fn under_enforce_the_process_that_changed_a_sensor_file_is_killed() -> Result<()> {
    let d = Daemon::start_with(Some(&config()?), &[])?;
    let t = Targets::new(&d, "e")?;
    let script = format!(
        "{HELPER} fs-op unlink {planted} 4\necho \"unlink: $?\"\n\
         {HELPER} fs-op rename {db} {moved} 4\necho \"rename: $?\"\n\
         {HELPER} fs-op unlink {pin} 4\necho \"unlink-pin: $?\"\n\
         {HELPER} fs-op chmod {state} 0755 4\necho \"chmod: $?\"\n",
        planted = t.planted,
        db = t.db,
        moved = t.moved_db,
        pin = t.pin,
        state = t.state,
    );
    let out = launch_sh(&d, "files-e", "p", &script)?;
    let mut c = Checks::new();
    let o = outputs(&out);
    for k in ["unlink", "rename", "unlink-pin", "chmod"] {
        check!(
            c,
            o.get(k) == Some(&KILLED.to_string()),
            "{k}: the helper is killed after its change: {}",
            describe(&out)
        );
    }
    check!(
        c,
        text(&out.stdout).matches("done").count() == 4,
        "each change was made before the kill (after the fact): {}",
        describe(&out)
    );
    for (label, what, path, kind) in [
        ("unlink of a state file", "unlink", &t.planted, "state"),
        ("rename of the database", "rename", &t.db, "store"),
        ("unlink of a pin", "unlink", &t.pin, "pins"),
        ("chmod of the state dir", "attrib", &t.state, "state"),
    ] {
        match wait_file_tamper(&d, label, |e| of(e, what, path)) {
            Ok(e) => {
                check_shape(&mut c, label, &e, kind, path);
                check!(
                    c,
                    e["run"]["agent"] == "files-e"
                        && e["tamper"]["killed"] == true
                        && e["policy"]["enforced"] == true
                        && e["policy"]["verdict"] == "deny"
                        && e["tamper"]["detail"]
                            .as_str()
                            .is_some_and(|d| d.contains("after")),
                    "{label}: killed under enforce, and the detail says after the fact: {}",
                    compact(&e)
                );
            }
            Err(e) => c.fail(format!("{e:#}")),
        }
        // The violation, as for any denial.
        let violation = d.with_events(|evs| {
            evs.iter().any(|v| {
                v["kind"] == "policy.violation"
                    && v["tamper"]["method"] == "file"
                    && v["tamper"]["file"]["path"] == path.as_str()
            })
        })?;
        check!(c, violation, "{label}: a policy.violation too");
    }
    c.result(sensor_tests::check_seq_increasing(&d.events()?));
    ensure!(d.status_json()?["ready"] == true, "the daemon stays ready");
    c.finish()
}

/// A process in no run (a root operator's shell) doing the same is still a
/// finding: reported without a run, naming the process.
#[test]
fn a_process_outside_any_run_is_reported_without_a_run() -> Result<()> {
    let d = Daemon::start_with(Some(&config()?), &[])?;
    let t = Targets::new(&d, "n")?;
    let mut c = Checks::new();
    for (label, what, path, kind, argv) in [
        (
            "rm of a state file",
            "unlink",
            &t.planted,
            "state",
            vec!["/usr/bin/rm", t.planted.as_str()],
        ),
        (
            "mv of the database",
            "rename",
            &t.db,
            "store",
            vec!["/usr/bin/mv", t.db.as_str(), t.moved_db.as_str()],
        ),
        (
            "rm of a pin",
            "unlink",
            &t.pin,
            "pins",
            vec!["/usr/bin/rm", t.pin.as_str()],
        ),
        (
            "chmod of the state dir",
            "attrib",
            &t.state,
            "state",
            vec!["/usr/bin/chmod", "0755", t.state.as_str()],
        ),
    ] {
        let mut cmd = Command::new(argv[0]);
        cmd.args(&argv[1..]);
        die_with_parent(&mut cmd);
        let child = cmd.spawn()?;
        let pid = child.id();
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "{label}: {}", text(&out.stderr));
        match wait_file_tamper(&d, label, |e| of(e, what, path)) {
            Ok(e) => {
                check_shape(&mut c, label, &e, kind, path);
                check!(
                    c,
                    e["run"].is_null()
                        && e["process"]["exe"] == argv[0]
                        && e["process"]["pid"] == pid
                        && e.get("policy").is_none_or(Value::is_null)
                        && e["tamper"].get("killed").is_none_or(Value::is_null),
                    "{label}: reported without a run, naming {}: {}",
                    argv[0],
                    compact(&e)
                );
            }
            Err(e) => c.fail(format!("{e:#}")),
        }
    }
    c.finish()
}

/// The daemon writes its store, run journal, sequence file and pins all the
/// time, and puts back a removed pin; an operator queries the store: none of
/// that is reported. Only the test's own removal of the pin is (by the
/// test's process, without a run).
/// And one act is one report: a run's `touch` of a state file, which the
/// kernel reports as an open for writing, is not reported again.
#[test]
fn the_daemons_own_writes_are_never_reported_and_one_act_is_one_report() -> Result<()> {
    let d = Daemon::start_with(Some(&config()?), &[])?;
    let state = d.state_dir().to_owned();
    // Runs that start, exec and end: the store, the run journal, the seq.
    for i in 0..5 {
        let out = launch_sh(
            &d,
            &format!("own-{i}"),
            "a",
            "/usr/bin/true\n/usr/bin/true\n",
        )?;
        ensure!(out.status.success(), "run {i}: {}", describe(&out));
    }
    // An operator's queries of the store (SQLite, as root, chowns the
    // journal files to the database's owner when it opens them: no change).
    let db = d.state_dir().join("sensor.db");
    for query in [&["runs"][..], &["events", "--kind", "run.start"][..]] {
        let out = d.sensor().args(query).arg("--db").arg(&db).output()?;
        ensure!(
            out.status.success(),
            "sensor {query:?}: {}",
            text(&out.stderr)
        );
    }
    thread::sleep(Duration::from_secs(2));
    let mut c = Checks::new();
    let early = d.with_events(|evs| file_tampers(evs).into_iter().cloned().collect::<Vec<_>>())?;
    check!(
        c,
        early.is_empty(),
        "no file tamper while nobody tampers: {}",
        dump(&early)
    );
    // The test removes a pin; the daemon pins it again (its own write).
    let pin = d.pin_dir().join(maps::POLICIES);
    let pins = pin_listing_but_run_only(d.pin_dir());
    fs::remove_file(&pin)?;
    let removed = wait_file_tamper(&d, "the test's rm of a pin", |e| of(e, "unlink", &s(&pin)));
    match &removed {
        Ok(e) => check!(
            c,
            e["process"]["pid"] == std::process::id() && e["run"].is_null(),
            "the removal is the test's, without a run: {}",
            compact(e)
        ),
        Err(e) => c.fail(format!("{e:#}")),
    }
    let deadline = std::time::Instant::now() + NOTICE;
    while pin_listing_but_run_only(d.pin_dir()) != pins && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
    }
    check!(
        c,
        pin_listing_but_run_only(d.pin_dir()) == pins,
        "the pin is back"
    );
    // A run's touch: one report (the kernel's, at the open), not two.
    let touched = state.join("touched");
    let out = launch_sh(
        &d,
        "own-touch",
        "a",
        &format!("/usr/bin/touch {}\necho \"touch: $?\"\n", s(&touched)),
    )?;
    check!(
        c,
        outputs(&out).get("touch").map(String::as_str) == Some("0"),
        "touch in audit: {}",
        describe(&out)
    );
    thread::sleep(Duration::from_secs(3));
    let evs = d.events()?;
    let kernel = evs.iter().find(|e| {
        e["kind"] == "sensor.tamper"
            && e["tamper"]["method"] == "sensor_file"
            && e["run"]["agent"] == "own-touch"
    });
    check!(
        c,
        kernel.is_some(),
        "the kernel reports the touch's open for writing"
    );
    let again: Vec<&Value> = file_tampers(&evs)
        .into_iter()
        .filter(|e| e["run"]["agent"] == "own-touch")
        .collect();
    check!(
        c,
        again.is_empty(),
        "the touch is not reported a second time by the file watch: {}",
        again
            .iter()
            .map(|e| compact(e))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let daemon = d.pid();
    let others: Vec<&Value> = file_tampers(&evs)
        .into_iter()
        .filter(|e| e["process"]["pid"] != std::process::id())
        .collect();
    check!(
        c,
        others.is_empty(),
        "no file tamper but the test's own (none of the daemon's, pid {daemon}): {}",
        others
            .iter()
            .map(|e| compact(e))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // A real change of a journal file's mode is reported, though.
    let wal = d.state_dir().join("sensor.db-wal");
    let mut cmd = Command::new("/usr/bin/chmod");
    cmd.arg("0644").arg(&wal);
    die_with_parent(&mut cmd);
    ensure!(cmd.status()?.success(), "chmod of the WAL");
    c.result(
        wait_file_tamper(&d, "chmod of the WAL", |e| {
            of(e, "attrib", &s(&wal)) && e["tamper"]["file"]["kind"] == "store"
        })
        .map(drop),
    );
    c.finish()
}

/// One process that removes hundreds of files cannot flood the outputs:
/// past a burst, its changes are counted, not reported one by one, and the
/// counts add up.
#[test]
fn a_flood_of_changes_is_rate_limited_and_counted() -> Result<()> {
    const N: usize = 300;
    let d = Daemon::start_with(Some(&config()?), &[])?;
    let dir = d.state_dir().join("many");
    // Made by a child (its own reports are its own).
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c").arg(format!(
        "mkdir {dir} && cd {dir} && i=0; while [ $i -lt {N} ]; do : > f$i; i=$((i+1)); done",
        dir = s(&dir)
    ));
    die_with_parent(&mut cmd);
    let out = cmd.output()?;
    ensure!(
        out.status.success(),
        "making the files: {}",
        text(&out.stderr)
    );
    let out = launch_sh(
        &d,
        "files-flood",
        "a",
        &format!("/usr/bin/rm -r {}\necho \"rm: $?\"\n", s(&dir)),
    )?;
    ensure!(
        outputs(&out).get("rm").map(String::as_str) == Some("0"),
        "rm -r: {}",
        describe(&out)
    );
    // The last count comes once the process's budget refills.
    thread::sleep(Duration::from_secs(4));
    let evs = d.events()?;
    let reports: Vec<&Value> = file_tampers(&evs)
        .into_iter()
        .filter(|e| e["run"]["agent"] == "files-flood")
        .collect();
    let suppressed: u64 = reports
        .iter()
        .filter_map(|e| e["tamper"]["suppressed"].as_u64())
        .sum();
    let files = reports
        .iter()
        .filter(|e| e["tamper"]["file"]["dir"] != true)
        .count() as u64;
    let mut c = Checks::new();
    check!(
        c,
        reports.len() < N / 2,
        "{} reports for {N} removals: rate-limited",
        reports.len()
    );
    // Every removal is accounted for: reported, or counted in a report.
    // (The directory itself is one more change.)
    check!(
        c,
        files + suppressed >= N as u64 && files + suppressed <= N as u64 + 1,
        "{files} reported + {suppressed} counted = {N} removals (+ the directory)"
    );
    let status = d.status_json()?;
    check!(
        c,
        status["file_watch"]["suppressed"].as_u64().unwrap_or(0) >= suppressed,
        "status counts the suppressed changes: {}",
        compact(&status["file_watch"])
    );
    c.finish()
}

/// The kernel's queue of file events is bounded (16384 by default,
/// `fs.fanotify.max_queued_events`): a daemon that falls behind (stopped
/// here) loses events. That is a counted loss in `sensor.lost`, and the
/// watch goes on afterwards. (The kernel merges a file's create and unlink
/// while they wait: 25000 files make 25000 events.)
#[test]
fn a_queue_overflow_is_a_counted_loss_and_the_watch_goes_on() -> Result<()> {
    let d = Daemon::start_with(Some(&config()?), &[])?;
    let pid = i32::try_from(d.pid())?;
    // SAFETY: kill(2) of the daemon the test started.
    unsafe { libc::kill(pid, libc::SIGSTOP) };
    let mut cmd = Command::new(HELPER);
    cmd.args(["fs-op", "churn", &s(d.state_dir()), "25000", "0"]);
    die_with_parent(&mut cmd);
    let out = cmd.output();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGCONT) };
    let out = out?;
    ensure!(
        text(&out.stdout).contains("done"),
        "churn: {} {}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let mut c = Checks::new();
    match d.wait_for(NOTICE, |e| {
        e["kind"] == "sensor.lost"
            && e["lost"]["file_watch"]["overflows"].as_u64().unwrap_or(0) >= 1
    }) {
        Ok(e) => check!(
            c,
            e["lost"]["file_watch"]["overflows"].as_u64().is_some(),
            "sensor.lost names the file watch's overflow: {}",
            compact(&e)
        ),
        Err(e) => c.fail(format!("no sensor.lost for the overflow: {e:#}")),
    }
    let status = d.status_json()?;
    check!(
        c,
        status["file_watch"]["overflows"].as_u64().unwrap_or(0) >= 1,
        "status counts it: {}",
        compact(&status["file_watch"])
    );
    // Still watching.
    let after = d.state_dir().join("after-overflow");
    fs::write(&after, b"x")?;
    let mut cmd = Command::new("/usr/bin/rm");
    cmd.arg(&after);
    die_with_parent(&mut cmd);
    ensure!(cmd.status()?.success(), "rm after the overflow");
    c.result(
        wait_file_tamper(&d, "rm after the overflow", |e| {
            of(e, "unlink", &s(&after)) && e["process"]["exe"] == "/usr/bin/rm"
        })
        .map(drop),
    );
    c.finish()
}

/// `CAP_SYS_ADMIN` (capability(7) number 21).
const CAP_SYS_ADMIN: u32 = 21;

/// Without `CAP_SYS_ADMIN` (as the systemd unit runs the daemon) the kernel
/// does not tell a file watcher who made a change: the change is still
/// reported, saying the process is unknown and why.
#[test]
fn without_cap_sys_admin_changes_are_reported_without_the_actor() -> Result<()> {
    let d = Daemon::start_wrapped(
        Some(&config()?),
        &[],
        &["setpriv", "--bounding-set", "-sys_admin", "--"],
    )?;
    let caps = fs::read_to_string(format!("/proc/{}/status", d.pid()))?
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| anyhow!("no CapEff"))?;
    ensure!(caps & (1 << CAP_SYS_ADMIN) == 0, "CapEff {caps:x}");
    let planted = d.state_dir().join("planted-caps");
    fs::write(&planted, b"x")?;
    let out = launch_sh(
        &d,
        "files-caps",
        "a",
        &format!("/usr/bin/rm {}\necho \"rm: $?\"\n", s(&planted)),
    )?;
    ensure!(
        outputs(&out).get("rm").map(String::as_str) == Some("0"),
        "rm: {}",
        describe(&out)
    );
    let mut c = Checks::new();
    match wait_file_tamper(&d, "rm without CAP_SYS_ADMIN", |e| {
        of(e, "unlink", &s(&planted))
    }) {
        Ok(e) => {
            check_shape(&mut c, "rm", &e, "state", &s(&planted));
            check!(
                c,
                e.get("process").is_none_or(Value::is_null)
                    && e["run"].is_null()
                    && e["tamper"]["detail"]
                        .as_str()
                        .is_some_and(|d| d.contains("CAP_SYS_ADMIN")),
                "reported, the process unknown, saying why: {}",
                compact(&e)
            );
        }
        Err(e) => c.fail(format!("{e:#}")),
    }
    let status = d.status_json()?;
    check!(
        c,
        status["file_watch"]["watching"] == true && status["file_watch"]["actors"] == "hidden",
        "status says the actors are hidden: {}",
        compact(&status["file_watch"])
    );
    c.finish()
}

//! The watched agent attacks the sensor first (issue: the daemon survives the
//! agent it watches). Each test performs one attack for real, on the real
//! kernel, with the attack's own processes (as root, and as user `nobody`
//! where an unprivileged agent can do it), then asserts what the sensor
//! reported and that the daemon is alive and answering afterwards.
//!
//! Run as root: `cargo test -p sensor-tests --test adversary -- --test-threads=1`.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use sensor_tests::enforce::{
    Fixture, KILLED, Puppet, base_exec, check_killed, denied_exec, launch_sh, outputs, policy_toml,
    s, wait_denied,
};
use sensor_tests::pid_race::LateRequest;
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, check, compact, daemon_on_config, helper_bin, marker,
    run_with_timeout, sensor_bin, text,
};
use serde_json::{Value, json};

const HELPER: &str = helper_bin!();
/// Bound for one scripted run.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

// ----- acting as another user -----

/// A copy of the helper that `nobody` can execute (the build tree may not
/// be reachable for it), in `dir`.
fn helper_for_nobody(dir: &Path) -> Result<PathBuf> {
    let copy = dir.join("sensor-test-helper");
    fs::copy(HELPER, &copy).with_context(|| format!("copy the helper to {}", copy.display()))?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    Ok(copy)
}

/// A copy of the `sensor` binary that `nobody` can execute.
fn sensor_for_nobody(dir: &Path) -> Result<PathBuf> {
    let copy = dir.join("sensor");
    fs::copy(sensor_bin()?, &copy).with_context(|| format!("copy sensor to {}", copy.display()))?;
    fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;
    Ok(copy)
}

/// `setpriv` to `nobody` (uid, gid, no supplementary groups), then `program`.
fn as_nobody(program: &Path) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("--")
        .arg(program);
    cmd
}

/// Lets `nobody` reach the daemon's socket (its temp dir is root's).
fn open_socket_dir(d: &Daemon) -> Result<()> {
    fs::set_permissions(d.dir(), fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Sends one raw request line to the daemon's socket as `nobody`; returns
/// the answer line parsed.
fn request_as_nobody(d: &Daemon, helper: &Path, line: &str) -> Result<Value> {
    let (_, out) = run_with_timeout(
        as_nobody(helper).arg("control").arg(d.socket()).arg(line),
        RUN_TIMEOUT,
    )?;
    let answer = text(&out.stdout);
    ensure!(
        out.status.success(),
        "the nobody client failed ({}): stdout {answer:?} stderr {:?}",
        out.status,
        text(&out.stderr)
    );
    serde_json::from_str(answer.trim())
        .with_context(|| format!("the answer to {line} is not JSON: {answer:?}"))
}

/// The daemon is alive and `status` answers ready.
fn check_responsive(d: &Daemon, after: &str) -> Result<()> {
    d.check_alive()
        .with_context(|| format!("the daemon died after {after}"))?;
    let status = d
        .status_json()
        .with_context(|| format!("status after {after}"))?;
    ensure!(
        status["ready"] == true,
        "the daemon is not ready after {after}: {status}"
    );
    Ok(())
}

fn is_error(v: &Value) -> bool {
    v["result"] == "error"
}

fn message(v: &Value) -> &str {
    v["message"].as_str().unwrap_or("")
}

// ===== 1. overflow and panic on client input =====

/// Any local user could abort the daemon with one line: a TTL that
/// overflows `now + ttl`, and an expiry past year 9999 that humantime cannot
/// print. Every such value is refused with a clear error, and the daemon
/// answers afterwards.
#[test]
fn huge_ttls_and_odd_values_from_any_user_do_not_kill_the_daemon() -> Result<()> {
    let d = Daemon::start()?;
    open_socket_dir(&d)?;
    let tmp = TempDir::new("adv-ttl")?;
    let helper = helper_for_nobody(tmp.path())?;
    let mut c = Checks::new();
    let lines = [
        json!({"op":"launch","agent":"x","ttl_secs":u64::MAX}),
        json!({"op":"launch","agent":"x","ttl_secs":u64::MAX / 2}),
        // Past year 9999: humantime cannot format it.
        json!({"op":"launch","agent":"x","ttl_secs":8_000u64 * 365 * 86_400}),
        json!({"op":"launch","agent":"x","ttl_secs":31u64 * 86_400}),
        json!({"op":"launch","agent":"x","ttl_secs":0}),
        json!({"op":"attest","pid":u32::MAX,"start_ticks":u64::MAX}),
        json!({"op":"attest","pid":0}),
        json!({"op":"attest","pid":1,"start_ticks":u64::MAX}),
        json!({"op":"launch","agent":"x","run_id":"a".repeat(100_000)}),
        json!({"op":"launch","agent":"\u{0}\u{1b}[2J","principal":"\u{202e}"}),
        json!({"op":"launch","agent":"x","labels":{"k":"v".repeat(60_000)}}),
    ];
    for line in &lines {
        let answer = request_as_nobody(&d, &helper, &line.to_string());
        let what = sensor_tests::truncate(&line.to_string(), 120);
        match answer {
            Ok(a) => {
                if line["op"] == "launch" {
                    check!(
                        c,
                        is_error(&a),
                        "launch {what}: refused with an error, got {a}"
                    );
                }
            }
            Err(e) => c.fail(format!("{what}: {e:#}")),
        }
        if let Err(e) = check_responsive(&d, &what) {
            c.fail(format!("{e:#}"));
            return c.finish();
        }
    }
    // The TTL refusals say what the limit is.
    let a = request_as_nobody(
        &d,
        &helper,
        &json!({"op":"launch","agent":"x","ttl_secs":u64::MAX}).to_string(),
    )?;
    check!(
        c,
        message(&a).contains("ttl") && message(&a).contains("30 days"),
        "the refusal of a huge ttl names the limit: {a}"
    );
    // The stock client, as root and as nobody: refused before anything runs.
    let sensor = sensor_for_nobody(tmp.path())?;
    for ttl in ["9000y", "8000y", "31d", "0s"] {
        let flag = tmp.path().join(format!("ran-{ttl}"));
        for nobody in [false, true] {
            let mut cmd = if nobody {
                as_nobody(&sensor)
            } else {
                Command::new(&sensor)
            };
            cmd.env("SENSOR_SOCKET", d.socket())
                .args([
                    "launch",
                    "--agent",
                    "x",
                    "--ttl",
                    ttl,
                    "--",
                    "/usr/bin/touch",
                ])
                .arg(&flag);
            let (_, out) = run_with_timeout(&mut cmd, RUN_TIMEOUT)?;
            check!(
                c,
                !out.status.success() && !flag.exists(),
                "launch --ttl {ttl} (nobody: {nobody}) must be refused and not run the command: {} {:?}",
                out.status,
                text(&out.stderr)
            );
            check!(
                c,
                text(&out.stderr).contains("ttl"),
                "launch --ttl {ttl}: the error names the ttl: {:?}",
                text(&out.stderr)
            );
            check_responsive(&d, &format!("launch --ttl {ttl}"))?;
        }
    }
    // And a sane TTL still works.
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd("ttl-ok", &["--ttl", "30d"], &["/usr/bin/true"]),
        RUN_TIMEOUT,
    )?;
    check!(
        c,
        out.status.success(),
        "launch --ttl 30d works: {:?}",
        text(&out.stderr)
    );
    c.finish()
}

// ===== 2. a TTL sub-run escapes its parent's enforce policy =====

/// Inside an enforce run, a sub-run with a 1 s TTL waits until it has
/// expired, then runs a denied binary. Expiry must not take its processes
/// out of enforcement: they fall back to the parent run and its policy.
/// A top-level run's processes are killed when its TTL passes.
#[test]
fn an_expired_ttl_sub_run_falls_back_to_its_parent_run_and_policy() -> Result<()> {
    let fx = Fixture::new("adv-ttl-sub")?;
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "");
    let d = Daemon::start_with(Some(&config), &[])?;
    let sensor = sensor_bin()?;
    let target = fx.target("after-ttl");
    let m = marker();
    let script = format!(
        "{sensor} launch --agent ttl-child --ttl 1s -- /bin/sh -c \
         '/usr/bin/sleep 3; /usr/bin/true {m} late; {denied} {t}; echo \"denied: $?\"'\n",
        sensor = sensor.display(),
        denied = fx.denied,
        t = s(&target)
    );
    let out = launch_sh(&d, "ttl-parent", "p", &script)?;
    wait_denied(&d, &[s(&target)])?;
    let evs = d.events()?;
    let mut c = Checks::new();
    check!(
        c,
        outputs(&out).get("denied") == Some(&KILLED.to_string()),
        "the denied binary is killed after the sub-run expired: {} {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    check_killed(
        &mut c,
        "after the TTL",
        &evs,
        &s(&target),
        &target,
        "p",
        None,
    );
    // The sub-run ended by TTL, and what ran afterwards is in the parent run.
    let parent = evs
        .iter()
        .find(|e| e["kind"] == "run.start" && e["run"]["agent"] == "ttl-parent")
        .cloned()
        .unwrap_or(Value::Null);
    let child_end = evs
        .iter()
        .find(|e| e["kind"] == "run.end" && e["run"]["agent"] == "ttl-child");
    check!(
        c,
        child_end.is_some_and(|e| e["run"]["end_reason"] == "ttl"),
        "the sub-run ends with reason ttl: {:?}",
        child_end.map(compact)
    );
    let late = evs.iter().find(|e| true_exec(e, &m, "late"));
    check!(
        c,
        late.is_some_and(|e| e["run"]["id"] == parent["run"]["id"] && e["run"]["depth"] == 0),
        "a process of the expired sub-run is in the parent run {}: {:?}",
        parent["run"]["id"],
        late.map(compact)
    );
    if let Some(e) = denied_exec(&evs, &s(&target)) {
        check!(
            c,
            e["run"]["id"] == parent["run"]["id"],
            "the denied exec is reported with the parent run: {}",
            compact(e)
        );
    }

    // A top-level run: its processes are killed when the TTL passes. Each
    // of its eight subshells waits on a `sleep` and runs `true` once that
    // ends: a kill that reaches a `sleep` before its shell lets the shell
    // see it die and run `true` (the run's processes must all be frozen
    // before any is killed).
    let m2 = marker();
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(
            "ttl-top",
            &["--ttl", "1s"],
            &[
                "/bin/sh",
                "-c",
                &format!(
                    "for i in 1 2 3 4 5 6 7 8; do \
                     (/usr/bin/sleep 4; /usr/bin/true {m2} survived) & done; \
                     /usr/bin/sleep 4; /usr/bin/true {m2} survived"
                ),
            ],
        ),
        RUN_TIMEOUT,
    )?;
    check!(
        c,
        out.status.signal() == Some(libc::SIGKILL),
        "the top-level run's process is killed at its TTL: {}",
        out.status
    );
    thread::sleep(Duration::from_millis(500));
    let evs = d.events()?;
    check!(
        c,
        !evs.iter().any(|e| true_exec(e, &m2, "survived")),
        "nothing of the expired top-level run runs after its TTL"
    );
    check!(
        c,
        evs.iter().any(|e| e["kind"] == "run.end"
            && e["run"]["agent"] == "ttl-top"
            && e["run"]["end_reason"] == "ttl"),
        "the top-level run ends with reason ttl"
    );
    check_responsive(&d, "TTL expiries")?;
    c.finish()
}

/// An exec of `/usr/bin/true TAG WORD` (not a shell whose script names them).
fn true_exec(e: &Value, tag: &str, word: &str) -> bool {
    e["kind"] == "process.exec"
        && e["process"]["exe"] == "/usr/bin/true"
        && e["process"]["argv"][1] == tag
        && e["process"]["argv"][2] == word
}

// ===== 3. CLONE_PARENT moves a child into another run =====

/// A process of a narrow sub-run creates a child with CLONE_PARENT: the
/// child's real parent is the wide parent run's shell. The kernel put the
/// child in the narrow run (it inherits from its creator); user space must
/// not move it to the wide one, where the binary it runs is allowed. The
/// tree's max_processes count must not leak either.
#[test]
fn clone_parent_does_not_move_a_child_into_the_wider_parent_run() -> Result<()> {
    let fx = Fixture::new("adv-clone-parent")?;
    let mut wide = base_exec()?;
    wide.push(fx.denied.clone());
    let narrow = base_exec()?;
    let config = format!(
        "{}\n{}",
        policy_toml::<_, &str>("wide", "enforce", &wide, &[], "max_processes = 12\n"),
        policy_toml::<_, &str>("narrow", "enforce", &narrow, &[], "max_processes = 12\n")
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let sensor = sensor_bin()?;
    let mut targets = Vec::new();
    let mut script = String::new();
    for i in 0..10 {
        let target = fx.target(&format!("cp-{i}"));
        script.push_str(&format!(
            "{sensor} launch --agent narrow --policy narrow -- {HELPER} clone-parent 300 {denied} {t}\n\
             /usr/bin/sleep 1\n",
            sensor = sensor.display(),
            denied = fx.denied,
            t = s(&target)
        ));
        targets.push(target);
    }
    // After 10 children came and went, the tree still has its full
    // max_processes: 4 children at once all live.
    script.push_str(&format!("{HELPER} fork-children 4\n"));
    let out = launch_sh(&d, "wide", "wide", &script)?;
    let needles: Vec<String> = targets.iter().map(|t| s(t)).collect();
    wait_denied(&d, &needles)?;
    let evs = d.events()?;
    let mut c = Checks::new();
    for t in &targets {
        check_killed(&mut c, "CLONE_PARENT child", &evs, &s(t), t, "narrow", None);
        if let Some(e) = denied_exec(&evs, &s(t)) {
            check!(
                c,
                e["run"]["agent"] == "narrow",
                "the CLONE_PARENT child stays in the narrow sub-run: {}",
                compact(e)
            );
        }
    }
    let forks = text(&out.stdout);
    check!(
        c,
        forks.matches("status=exited:0").count() == 4,
        "the tree's max_processes did not leak: 4 children all ran: {forks:?}"
    );
    check_responsive(&d, "CLONE_PARENT")?;
    c.finish()
}

// ===== 4. lost events end a run early and unbind its policy =====

/// Under enforce, denied `sendto()`s from 8 threads for 3 s, while 200
/// quiet children wait to exec a denied binary. The denial records are
/// rate-limited per run in the kernel (the suppressed ones counted), the
/// run does not end while any of its processes lives, and every late exec
/// is still enforced.
#[test]
fn a_flood_of_denied_sends_does_not_end_the_run_or_unbind_its_policy() -> Result<()> {
    let fx = Fixture::new("adv-flood")?;
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "");
    // run.degraded in OCSF too (only that kind: the flood is not re-encoded).
    let ocsf_path = fx.dir().join("ocsf.jsonl");
    let ocsf_spec = format!(
        "{},kinds=run.degraded",
        sensor_tests::ocsf::spec(&ocsf_path)
    );
    let d = Daemon::start_with(Some(&config), &["--output", &ocsf_spec])?;
    let quiet = 200;
    let script = format!(
        "i=0\nwhile [ $i -lt {quiet} ]; do\n  (/usr/bin/sleep 6; {denied} {out}/late-$i) &\n  i=$((i+1))\ndone\n\
         {HELPER} sendto-flood 127.0.0.1:9 8 3\nwait\n",
        denied = fx.denied,
        out = s(&fx.out),
    );
    let started = Instant::now();
    let out = launch_sh(&d, "flood", "p", &script)?;
    let mut c = Checks::new();
    check!(
        c,
        text(&out.stdout).contains("sent=0"),
        "every denied sendto failed with EPERM: {:?}",
        text(&out.stdout)
    );
    let ran: Vec<String> = fs::read_dir(&fx.out)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    check!(
        c,
        ran.is_empty(),
        "no late denied exec ran after the flood ({} did): {ran:?}",
        ran.len()
    );
    d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            evs.iter()
                .any(|e| e["kind"] == "run.end" && e["run"]["agent"] == "flood")
        },
        |_| "the run's run.end".to_owned(),
    )?;
    let evs = d.events()?;
    let end = evs
        .iter()
        .find(|e| e["kind"] == "run.end" && e["run"]["agent"] == "flood")
        .cloned()
        .unwrap_or(Value::Null);
    // The run ends after its last process, never before the late execs.
    let last_late = evs
        .iter()
        .filter(|e| {
            e["kind"] == "process.exec"
                && e["process"]["argv"].as_array().is_some_and(|a| {
                    a.iter()
                        .any(|x| x.as_str().is_some_and(|x| x.contains("/late-")))
                })
        })
        .filter_map(|e| e["seq"].as_u64())
        .max();
    check!(
        c,
        last_late.is_some_and(|l| end["seq"].as_u64().is_some_and(|s| s > l)),
        "run.end (seq {}) comes after the last late exec (seq {last_late:?})",
        end["seq"]
    );
    let late_denied = evs
        .iter()
        .filter(|e| {
            e["kind"] == "process.exec"
                && e["exec"]["result"] == "ok"
                && e["policy"]["verdict"] == "deny"
                && e["policy"]["enforced"] == true
                && e["run"]["agent"] == "flood"
        })
        .count();
    // The kernel may lose records under the flood (reported), but what it
    // delivered is attributed and enforced.
    let status = d.status_json()?;
    let lost = status["lost"]["total"].as_u64().unwrap_or(0);
    check!(
        c,
        late_denied + usize::try_from(lost).unwrap_or(usize::MAX) >= quiet,
        "{late_denied} late execs reported as enforced denials, {lost} records lost: every one of {quiet} accounted for"
    );
    let suppressed = status["denials_suppressed"].as_u64().unwrap_or(0);
    check!(
        c,
        suppressed > 0,
        "status counts the suppressed denial records: {status}"
    );
    let degraded = evs
        .iter()
        .find(|e| e["kind"] == "run.degraded" && e["run"]["agent"] == "flood");
    check!(
        c,
        degraded.is_some_and(|e| e["degraded"]["denials_suppressed"].as_u64().unwrap_or(0) > 0),
        "a run.degraded event names the suppressed denials of the run: {:?}",
        degraded.map(compact)
    );
    // In OCSF: a Base Event "Run Degraded" with the count, the run attached;
    // checked by the third-party validator.
    if let Some(e) = degraded {
        let o = sensor_tests::ocsf::validated_kinds(
            &ocsf_path,
            &["run.degraded"],
            &[0],
            EVENT_TIMEOUT,
            |o| sensor_tests::ocsf::by_seq(o, &e["seq"]).is_some(),
        )?;
        let o = sensor_tests::ocsf::by_seq(&o, &e["seq"]).unwrap_or_default();
        check!(
            c,
            o["class_uid"] == 0
                && o["activity_name"] == "Run Degraded"
                && o["count"].as_u64().unwrap_or(0) > 0
                && o["actor"]["session"]["uid"] == e["run"]["id"],
            "OCSF of the run.degraded: {}",
            compact(&o)
        );
    }
    check!(
        c,
        started.elapsed() < Duration::from_secs(60),
        "the flood took {:?}",
        started.elapsed()
    );
    check_responsive(&d, "the sendto flood")?;
    c.finish()
}

// ===== 5. blocking I/O on the event thread =====

/// A pinned (`sha256`) rule's file is replaced by a FIFO, a symlink to
/// /dev/zero and a 1 TiB sparse file: the daemon keeps answering (hashing
/// is off the event thread, regular files only, size-capped), and says
/// which rule cannot be checked. At start-up such a file is a clear error,
/// not a hang.
#[test]
fn a_pinned_file_replaced_by_a_fifo_or_dev_zero_does_not_hang_the_daemon() -> Result<()> {
    let tmp = TempDir::new("adv-hash")?;
    let pinned = tmp.path().join("tool");
    fs::copy("/usr/bin/true", &pinned)?;
    let sha = sha256_of(&pinned)?;
    let mut exec = base_exec()?;
    exec.retain(|r| r != "/usr/bin/true");
    let config = format!(
        "[policy.p]\nmode = \"audit\"\nexec.allow = [{}, {{ path = {:?}, sha256 = {sha:?} }}]\n",
        exec.iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        s(&pinned)
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let mut c = Checks::new();
    let attacks: [(&str, &Replace); 3] = [
        ("a FIFO", &|p: &Path| {
            fs::remove_file(p)?;
            let path = std::ffi::CString::new(s(p))?;
            // SAFETY: mkfifo(3) with a NUL-terminated path.
            ensure!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) } == 0, "mkfifo");
            Ok(())
        }),
        ("a symlink to /dev/zero", &|p: &Path| {
            fs::remove_file(p)?;
            std::os::unix::fs::symlink("/dev/zero", p)?;
            Ok(())
        }),
        ("a 1 TiB sparse file", &|p: &Path| {
            fs::remove_file(p)?;
            let f = fs::File::create(p)?;
            f.set_len(1 << 40)?;
            Ok(())
        }),
    ];
    for (what, attack) in attacks {
        attack(&pinned).with_context(|| format!("replace the pinned file by {what}"))?;
        // The refresh runs every 2 s: watch the daemon across a few.
        let until = Instant::now() + Duration::from_secs(6);
        while Instant::now() < until {
            let t = Instant::now();
            match d.status_json() {
                Ok(_) => check!(
                    c,
                    t.elapsed() < Duration::from_secs(2),
                    "with the pinned file replaced by {what}, status took {:?}",
                    t.elapsed()
                ),
                Err(e) => {
                    c.fail(format!("with the pinned file replaced by {what}: {e:#}"));
                    return c.finish();
                }
            }
            thread::sleep(Duration::from_millis(300));
        }
        check!(
            c,
            d.stderr().contains(&s(&pinned)) && d.stderr().contains("cannot be hashed"),
            "the daemon names the rule whose file cannot be hashed ({what}):\n{}",
            d.stderr()
        );
    }
    // At start-up: refused at once, naming the file.
    fs::remove_file(&pinned)?;
    let path = std::ffi::CString::new(s(&pinned))?;
    // SAFETY: mkfifo(3) with a NUL-terminated path.
    ensure!(unsafe { libc::mkfifo(path.as_ptr(), 0o644) } == 0, "mkfifo");
    let started = Instant::now();
    let (_, out) = daemon_on_config(&config, Duration::from_secs(20))?;
    check!(
        c,
        !out.status.success()
            && text(&out.stderr).contains(&s(&pinned))
            && started.elapsed() < Duration::from_secs(15),
        "a daemon whose pinned file is a FIFO stops at once, naming it ({:?}): {:?}",
        started.elapsed(),
        text(&out.stderr)
    );
    check_responsive(&d, "the pinned-file attacks")?;
    c.finish()
}

/// Replaces the file at a path by something else.
type Replace = dyn Fn(&Path) -> Result<()>;

fn sha256_of(path: &Path) -> Result<String> {
    let out = Command::new("sha256sum").arg(path).output()?;
    ensure!(out.status.success(), "sha256sum {}", path.display());
    text(&out.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| anyhow!("sha256sum printed nothing"))
}

/// `cat other > pinned` keeps the inode: the exec right after the rewrite
/// is denied by the kernel (the file changed since it was hashed), not two
/// seconds later.
#[test]
fn a_pinned_file_rewritten_in_place_is_denied_at_once() -> Result<()> {
    let fx = Fixture::new("adv-rewrite")?;
    let pinned = fx.dir().join("pinned-tool");
    fs::copy("/usr/bin/true", &pinned)?;
    let sha = sha256_of(&pinned)?;
    let exec = base_exec()?;
    let config = format!(
        "[policy.p]\nmode = \"enforce\"\nexec.allow = [{}, {{ path = {:?}, sha256 = {sha:?} }}]\n",
        exec.iter()
            .map(|r| format!("{r:?}"))
            .collect::<Vec<_>>()
            .join(", "),
        s(&pinned)
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    let target = fx.target("rewritten");
    let m = marker();
    // The pinned tool runs first (allowed), then is overwritten in place
    // with touch and run at once.
    let script = format!(
        "{p} {m}\necho \"first: $?\"\n/usr/bin/cp /usr/bin/touch {p}\n{p} {t}\necho \"rewritten: $?\"\n",
        p = s(&pinned),
        t = s(&target)
    );
    let out = launch_sh(&d, "rewrite", "p", &script)?;
    let mut c = Checks::new();
    let o = outputs(&out);
    check!(
        c,
        o.get("first").map(String::as_str) == Some("0"),
        "the pinned tool runs while it is what was hashed: {o:?} {:?}",
        text(&out.stderr)
    );
    check!(
        c,
        o.get("rewritten") == Some(&KILLED.to_string()) && !target.exists(),
        "the rewritten file is killed at its first exec: {o:?}"
    );
    check_responsive(&d, "an in-place rewrite")?;
    c.finish()
}

// ===== 6. unbounded launches and connections =====

/// One user floods launches: past the per-user bounds they are refused
/// with a clear error; a full kernel run→policy map refuses the launch
/// instead of running it unenforced; oversized labels are refused; 1,000
/// idle connections cannot starve other clients.
#[test]
fn launch_and_connection_floods_are_bounded_and_a_full_map_refuses() -> Result<()> {
    let fx = Fixture::new("adv-limits")?;
    let config = format!(
        "{}\n[limits]\nruns_per_uid = 20\nlaunches_per_second = 20\npolicy_runs = 8\n\
         connections_per_uid = 16\n",
        policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "")
    );
    let d = Daemon::start_with(Some(&config), &[])?;
    open_socket_dir(&d)?;
    let helper = helper_for_nobody(fx.dir())?;
    let mut c = Checks::new();

    // (a) A full kernel map: 8 policy runs live, the 9th is refused.
    let mut parked = Vec::new();
    for i in 0..8 {
        let child = d
            .launch_cmd(
                &format!("park-{i}"),
                &["--policy", "p"],
                &["/usr/bin/sleep", "60"],
            )
            .spawn()?;
        parked.push(child);
    }
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            evs.iter()
                .filter(|e| {
                    e["kind"] == "run.start"
                        && e["run"]["agent"]
                            .as_str()
                            .is_some_and(|a| a.starts_with("park-"))
                })
                .count()
                == 8
        },
        |_| "8 parked runs".to_owned(),
    );
    let flag = fx.target("ninth");
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd("ninth", &["--policy", "p"], &["/usr/bin/touch", &s(&flag)]),
        RUN_TIMEOUT,
    )?;
    check!(
        c,
        !out.status.success() && !flag.exists() && text(&out.stderr).contains("full"),
        "with the kernel's run→policy map full, a policy launch is refused and its command never runs: {} {:?}",
        out.status,
        text(&out.stderr)
    );
    // The parked runs are still enforced.
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd("no-policy", &[], &["/usr/bin/true"]),
        RUN_TIMEOUT,
    )?;
    check!(
        c,
        out.status.success(),
        "a launch without a policy still works when the policy map is full: {:?}",
        text(&out.stderr)
    );
    for mut p in parked {
        let _ = p.kill();
        let _ = p.wait();
    }

    // (b) One unprivileged user holds at most 20 runs: the 21st to 25th
    // `sensor launch` are refused, their commands never run.
    let sensor = sensor_for_nobody(fx.dir())?;
    let mut sleepers = Vec::new();
    for i in 0..25 {
        let child = as_nobody(&sensor)
            .env("SENSOR_SOCKET", d.socket())
            .args([
                "launch",
                "--agent",
                &format!("hold-{i}"),
                "--",
                "/usr/bin/sleep",
                "30",
            ])
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        sleepers.push(child);
        thread::sleep(Duration::from_millis(20));
    }
    thread::sleep(Duration::from_secs(1));
    let mut refused = Vec::new();
    for child in &mut sleepers {
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read as _;
                let _ = e.read_to_string(&mut err);
            }
            refused.push((status, err));
        }
    }
    check!(
        c,
        refused.len() == 5
            && refused
                .iter()
                .all(|(s, e)| !s.success() && e.contains("runs_per_uid")),
        "nobody holds at most 20 runs: the 5 launches past them are refused, naming the bound: {refused:?}"
    );
    for mut child in sleepers {
        let _ = child.kill();
        let _ = child.wait();
    }
    // (b') One user floods launch requests: past the rate, refused.
    let mut rate_refused = 0;
    let mut messages = std::collections::BTreeSet::new();
    for i in 0..200 {
        let line = json!({"op":"launch","agent":format!("flood-{i}")}).to_string();
        let a = request_as_nobody(&d, &helper, &line)?;
        if is_error(&a) {
            rate_refused += 1;
            messages.insert(message(&a).to_owned());
        }
    }
    check!(
        c,
        rate_refused >= 100 && messages.iter().any(|m| m.contains("launches_per_second")),
        "20 launches per second: {rate_refused} of 200 refused ({messages:?})"
    );
    // (c) Labels over 4 KiB.
    let big = json!({"op":"launch","agent":"big","labels":{"k":"v".repeat(5000)}}).to_string();
    let a = d.request(&serde_json::from_str(&big)?)?;
    check!(
        c,
        is_error(&a) && message(&a).contains("label"),
        "labels over 4 KiB are refused: {a}"
    );
    // (d) 1,000 idle connections from one user: other clients are served,
    // and the idle ones are closed.
    let mut hold = as_nobody(&helper);
    hold.arg("hold-connections")
        .arg(d.socket())
        .args(["1000", "8"]);
    let holder = hold.stdout(std::process::Stdio::piped()).spawn()?;
    thread::sleep(Duration::from_secs(1));
    for _ in 0..5 {
        let t = Instant::now();
        check_responsive(&d, "1,000 idle connections")?;
        check!(
            c,
            t.elapsed() < Duration::from_secs(2),
            "status took {:?} while a user held 1,000 idle connections",
            t.elapsed()
        );
        thread::sleep(Duration::from_millis(500));
    }
    let held = holder.wait_with_output()?;
    let held = text(&held.stdout);
    check!(
        c,
        held.contains("closed_by_peer=") && !held.contains("closed_by_peer=0"),
        "the daemon closes excess and idle connections: {held:?}"
    );
    let status = d.status_json()?;
    check!(
        c,
        status["launches_refused"].as_u64().unwrap_or(0) >= 105
            && status["connections_refused"].as_u64().unwrap_or(0) > 0,
        "status counts refused launches and connections: {status}"
    );
    check_responsive(&d, "the floods")?;
    c.finish()
}

// ===== 7. forged placement and pid races =====

/// `SENSOR_RUN_ID=<someone else's run> setsid sleep &` as another user,
/// then a daemon restart: the process is not placed in the victim's run,
/// neither by the full id nor by a prefix of it.
#[test]
fn a_forged_run_id_marker_does_not_join_another_users_run() -> Result<()> {
    let mut d = Daemon::start()?;
    open_socket_dir(&d)?;
    let tmp = TempDir::new("adv-env")?;
    let helper = helper_for_nobody(tmp.path())?;
    let mut victim = d
        .launch_cmd("victim", &[], &["/usr/bin/sleep", "60"])
        .spawn()?;
    let start = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.start" && e["run"]["agent"] == "victim"
    })?;
    let id = start["run"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("run.start without id"))?
        .to_owned();
    let mut forgers = Vec::new();
    for marker_value in [id.clone(), id[..8].to_owned()] {
        let child = as_nobody(Path::new("/usr/bin/env"))
            .arg(format!("SENSOR_RUN_ID={marker_value}"))
            .args(["/usr/bin/setsid", "/usr/bin/sleep", "60"])
            .spawn()?;
        forgers.push(child);
    }
    thread::sleep(Duration::from_millis(300));
    d.restart()?;
    let mut c = Checks::new();
    for f in &forgers {
        // setsid forks when it leads its group; find the sleep by parent too.
        let pids = sleep_pids_of(f.id());
        for pid in pids {
            let a = d.request(&json!({"op":"attest","pid":pid}))?;
            check!(
                c,
                is_error(&a),
                "nobody's process {pid} with a forged SENSOR_RUN_ID must not be in root's run: {a}"
            );
        }
    }
    let _ = helper;
    for mut f in forgers {
        let _ = f.kill();
        let _ = f.wait();
    }
    let _ = victim.kill();
    let _ = victim.wait();
    check_responsive(&d, "forged markers")?;
    c.finish()
}

/// The pid of `pid` and of its children (setsid may fork).
fn sleep_pids_of(pid: u32) -> Vec<u32> {
    let mut pids = vec![pid];
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let stat = fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|x| x.parse::<u32>().ok());
            if ppid == Some(pid) {
                pids.push(p);
            }
        }
    }
    pids
}

/// A client connects, hands the connection to a child and exits; its pid
/// is recycled by another process; then the child sends `launch`. The
/// daemon must not make the recycled pid's process the first of a run.
#[test]
fn a_launch_from_a_recycled_pid_is_refused() -> Result<()> {
    let d = Daemon::start()?;
    let tmp = TempDir::new("adv-pidrace")?;
    let late = LateRequest::open(
        HELPER,
        d.socket(),
        &json!({"op":"launch","agent":"stolen"}),
        tmp.path(),
    )?;
    let pid = late.pid;
    // The client is gone: a new process takes its pid.
    let mut thief = Command::new(HELPER)
        .args(["at-pid", &pid.to_string(), "/usr/bin/sleep", "30"])
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    thread::sleep(Duration::from_millis(300));
    let got_json = late.send()?;
    let mut c = Checks::new();
    check!(
        c,
        is_error(&got_json),
        "a launch whose sender's pid was recycled is refused: {got_json}"
    );
    let a = d.request(&json!({"op":"attest","pid":pid}))?;
    check!(
        c,
        is_error(&a),
        "the process that took the pid ({pid}) is in no run: {a}"
    );
    let _ = thief.kill();
    let _ = thief.wait();
    check_responsive(&d, "a pid race")?;
    c.finish()
}

/// After the daemon dies (enforce programs stay pinned), a process of an
/// enforce run that gets the daemon's old pid is not exempt from checks.
#[test]
fn a_process_with_the_dead_daemons_pid_is_not_exempt() -> Result<()> {
    let fx = Fixture::new("adv-ownpid")?;
    let config = policy_toml::<_, &str>("p", "enforce", &base_exec()?, &[], "");
    let mut d = Daemon::start_with(Some(&config), &[])?;
    let mut puppet = Puppet::start(&d, "ownpid", "p", fx.dir())?;
    let daemon_pid = d.pid();
    d.kill9()?;
    let target = fx.target("as-daemon-pid");
    let status = puppet.run(&format!(
        "{HELPER} at-pid {daemon_pid} {} {}",
        fx.denied,
        s(&target)
    ))?;
    let mut c = Checks::new();
    check!(
        c,
        !target.exists(),
        "a process at the dead daemon's pid {daemon_pid} ran a denied binary (helper exit {status}; \
         112: the pid was taken meanwhile)"
    );
    check!(
        c,
        status == 101,
        "the helper reports its child killed (101: not a normal exit), got {status}"
    );
    puppet.finish()?;
    c.finish()
}

// ===== 9. information for everyone =====

/// The state dir, database and run files are root's alone; the pin dir is
/// root's and checked at start; a non-root caller sees its own runs and
/// counters, not other users' labels or the output specs.
#[test]
fn state_and_answers_are_private_to_root_and_the_caller() -> Result<()> {
    let d = Daemon::start()?;
    let mut c = Checks::new();
    let mut victim = d
        .launch_cmd(
            "secret",
            &["--label", "token=hunter2"],
            &["/usr/bin/sleep", "30"],
        )
        .spawn()?;
    let start = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.start" && e["run"]["agent"] == "secret"
    })?;
    let victim_pid = start["process"]["pid"].as_u64().unwrap_or(0);
    let mode = |p: &Path| fs::metadata(p).map(|m| m.mode() & 0o777).unwrap_or(0o777);
    check!(
        c,
        mode(d.state_dir()) & 0o077 == 0,
        "state dir {} is {:o}, not private",
        d.state_dir().display(),
        mode(d.state_dir())
    );
    for entry in walk(d.state_dir()) {
        let m = fs::symlink_metadata(&entry)?;
        check!(
            c,
            m.mode() & 0o077 == 0,
            "{} is {:o}: readable by others",
            entry.display(),
            m.mode() & 0o777
        );
    }
    let pin = fs::metadata(d.pin_dir())?;
    check!(
        c,
        pin.uid() == 0 && pin.mode() & 0o077 == 0,
        "the pin dir is root's, mode 0700: uid {} mode {:o}",
        pin.uid(),
        pin.mode() & 0o777
    );
    // As nobody: status without specs, no attestation of root's run.
    open_socket_dir(&d)?;
    let tmp = TempDir::new("adv-private")?;
    let helper = helper_for_nobody(tmp.path())?;
    let status = request_as_nobody(&d, &helper, r#"{"op":"status"}"#)?;
    check!(
        c,
        !status.to_string().contains(&s(d.events_path())),
        "a non-root status shows no output spec (path of the events file): {status}"
    );
    check!(
        c,
        status["policies"]["hidden"] == true
            && status["policies"]["policies"] == json!([])
            && status["agents"] == json!([])
            && status["paths"]["config"].is_null(),
        "a non-root status shows no policies, agents or config path: {}",
        compact(
            &json!({"policies": status["policies"], "agents": status["agents"],
            "paths": status["paths"]})
        )
    );
    let a = request_as_nobody(
        &d,
        &helper,
        &json!({"op":"attest","pid":victim_pid}).to_string(),
    )?;
    check!(
        c,
        !a.to_string().contains("hunter2"),
        "a non-root caller does not see another user's run labels: {a}"
    );
    let _ = victim.kill();
    let _ = victim.wait();
    c.finish()
}

/// Every path under `dir` (not following symlinks).
fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}

/// A pin dir that another user owns (or that others may write) is refused
/// at start: whoever controls it controls what the kernel enforces.
#[test]
fn a_pin_dir_owned_by_another_user_is_refused() -> Result<()> {
    let tmp = TempDir::new("adv-pindir")?;
    let pin = Path::new(sensor_tests::BPFFS).join(marker());
    fs::create_dir_all(&pin)?;
    std::os::unix::fs::chown(&pin, Some(NOBODY), Some(NOBODY))?;
    let mut cmd = Command::new(sensor_bin()?);
    cmd.arg("daemon")
        .arg("--socket")
        .arg(tmp.path().join("s.sock"))
        .arg("--state-dir")
        .arg(tmp.path().join("state"))
        .arg("--pin-dir")
        .arg(&pin)
        .arg("--output")
        .arg(format!("file:{}", tmp.path().join("e.jsonl").display()));
    let result = run_with_timeout(&mut cmd, Duration::from_secs(20));
    let _ = fs::remove_dir_all(&pin);
    let (_, out) = result?;
    let mut c = Checks::new();
    check!(
        c,
        !out.status.success() && text(&out.stderr).contains(&s(&pin)),
        "a daemon whose pin dir belongs to nobody refuses to start, naming it: {} {:?}",
        out.status,
        text(&out.stderr)
    );
    c.finish()
}

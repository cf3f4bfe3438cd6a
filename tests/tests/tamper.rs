//! Tampering with the enforcement state under a live daemon, on the real
//! kernel: `sensor unload` of a pin dir a running daemon owns, pins removed
//! (the whole pin dir, one link pin), a cgroup link detached with bpftool,
//! the policy maps written with bpftool; and whether `status` and the stop
//! message say what really is attached.
//!
//! Each attack is followed by what must hold: a `sensor.tamper` event within
//! about a second (the daemon's 1 s integrity check), the state put back,
//! and a denied exec (or connect) in an enforce run blocked again, with the
//! daemon up and after it stopped.
//!
//! Run as root: `cargo test -p sensor-tests --test tamper -- --test-threads=1`.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, ensure};
use sensor_common::{
    maps,
    policy::{ExecKey, MODE_AUDIT, MODE_ENFORCE, PolicySlot},
};
use sensor_tests::enforce::*;
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, bpftool, bpftool_json, check, compact, helper_bin,
    link_attached, links_of_prog, map_delete, map_dump, map_update, metric_sample, prog_exists,
    scrape_metrics, servers::free_port, text,
};
use serde_json::Value;

/// The test helper (its directory is allowed by every enforce policy here).
const HELPER: &str = helper_bin!();
/// How long the daemon may take to notice a tamper: its check runs every
/// second; the rest is slack for a loaded machine.
const NOTICE: Duration = Duration::from_secs(3);

/// An enforce policy `p` allowing the test's tools (and `connect` to the
/// addresses given), with Prometheus metrics on `metrics` when given.
fn enforce_config(connect: &[&str], metrics: Option<&str>) -> Result<String> {
    let mut config = policy_toml("p", "enforce", &base_exec()?, connect, "");
    if let Some(addr) = metrics {
        config.push_str(&format!("\n[metrics]\nlisten = {}\n", q(addr)));
    }
    Ok(config)
}

/// Nothing was reported as tampered before the test tampered with anything:
/// the check has no false alarms on a daemon left alone.
fn no_tamper_yet(d: &Daemon) -> Result<()> {
    // Two checks have run by now (one per second).
    thread::sleep(Duration::from_millis(2100));
    // Any sensor.tamper: the integrity check's, the kernel's, the file watch's.
    let early = d.with_events(|evs| {
        evs.iter()
            .filter(|e| e["kind"] == "sensor.tamper")
            .cloned()
            .collect::<Vec<_>>()
    })?;
    ensure!(
        early.is_empty(),
        "sensor.tamper with nobody tampering: {early:?}"
    );
    Ok(())
}

/// Waits until the pin dir lists `want` again.
fn wait_pins(pin_dir: &Path, want: &[String], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = pin_listing(pin_dir);
        if now == want {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "the pins are not back within {timeout:?}:\n  want {want:?}\n  have {now:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// Every program of the daemon is held by the link pinned under its name,
/// and that link is attached.
fn check_link_pins(c: &mut Checks, pin_dir: &Path, ids: &std::collections::BTreeMap<String, u32>) {
    for (name, id) in ids {
        let pin = pin_dir.join(maps::LINKS_DIR).join(name);
        match bpftool_json(&["link", "show", "pinned", &pin.to_string_lossy()]) {
            Ok(l) => check!(
                c,
                l["prog_id"] == *id && link_attached(&l),
                "the link pinned at {} holds program {name} ({id}) and is attached: {}",
                pin.display(),
                compact(&l)
            ),
            Err(e) => c.fail(format!("{name}: {e:#}")),
        }
    }
}

/// `sensor unload --pin-dir DIR` without `--socket`, while the daemon runs
/// on DIR: refused, naming the daemon's pid, exit 1, nothing removed, still
/// enforcing. With `--force` the pins go, the daemon notices and pins them
/// again, and they keep enforcing after it stops.
#[test]
fn unload_refuses_while_a_live_daemon_owns_the_pin_dir() -> Result<()> {
    let fx = Fixture::new("tamper-unload")?;
    let mut d = Daemon::start_with(Some(&enforce_config(&[], None)?), &[])?;
    let mut puppet = Puppet::start(&d, "tamper-unload", "p", fx.dir())?;
    no_tamper_yet(&d)?;
    let pins = pin_listing(d.pin_dir());
    ensure!(
        pins.iter().any(|p| p == "links/snsr_exec"),
        "an enforce daemon pins its links: {pins:?}"
    );

    let out = unload(&d, &[])?;
    let stderr = text(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "unload of a live daemon's pin dir must exit 1: {}",
        describe(&out)
    );
    ensure!(
        stderr.contains(&format!("pid {}", d.pid())) && stderr.contains("--force"),
        "the refusal names the running daemon (pid {}) and --force: {stderr:?}",
        d.pid()
    );
    ensure!(
        pin_listing(d.pin_dir()) == pins,
        "the refused unload removed pins: {:?}",
        pin_listing(d.pin_dir())
    );
    ensure!(
        denied_is_killed(&mut puppet, &fx, "after-refusal")?,
        "after the refused unload a denied exec is still killed"
    );
    d.check_alive()?;

    let seq = last_seq(&d)?;
    let out = unload(&d, &["--force"])?;
    ensure!(out.status.success(), "unload --force: {}", describe(&out));
    let (e, took) = wait_tamper(&d, seq, NOTICE, |e| e["tamper"]["what"] == "pin removed")?;
    let mut c = Checks::new();
    check_tamper_shape(&mut c, &e, false);
    check!(
        c,
        took <= NOTICE,
        "noticed after {took:?}, want at most {NOTICE:?}"
    );
    wait_pins(d.pin_dir(), &pins, NOTICE)?;
    check!(
        c,
        denied_is_killed(&mut puppet, &fx, "after-force")?,
        "after unload --force and the re-pin, a denied exec is killed"
    );
    let ids = d.program_ids()?;
    check_link_pins(&mut c, d.pin_dir(), &ids);
    d.stop()?;
    check!(
        c,
        denied_is_killed(&mut puppet, &fx, "stopped")?,
        "the pins the daemon made again keep enforcing after it stopped"
    );
    c.finish()?;

    // The owner is gone now: unload goes ahead, no --socket needed.
    let out = unload(&d, &[])?;
    ensure!(
        out.status.success() && !d.pin_dir().exists(),
        "unload after the daemon stopped: {}",
        describe(&out)
    );
    let ran = fx.target("unloaded");
    let code = puppet.run(&format!("{} {}", fx.denied, s(&ran)))?;
    ensure!(
        code == 0 && ran.exists(),
        "after unload the binary runs: exit {code}"
    );
    puppet.finish()
}

/// `rm -r` of the pin dir, then `rm` of one link pin, under a live daemon:
/// a `sensor.tamper` per pin within about a second, counted in status and
/// metrics and logged; every pin is made again from the daemon's own fds,
/// and they hold the programs (and enforce) once the daemon is stopped.
#[test]
fn removed_pins_are_reported_and_pinned_again() -> Result<()> {
    let fx = Fixture::new("tamper-pins")?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let ocsf = fx.dir().join("ocsf.jsonl");
    let ocsf_spec = format!("file:{},format=ocsf", ocsf.display());
    let mut d = Daemon::start_with(
        Some(&enforce_config(&[], Some(&metrics))?),
        &["--output", &ocsf_spec],
    )?;
    let mut puppet = Puppet::start(&d, "tamper-pins", "p", fx.dir())?;
    no_tamper_yet(&d)?;
    let pins = pin_listing(d.pin_dir());
    let ids = d.program_ids()?;

    let seq = last_seq(&d)?;
    fs::remove_dir_all(d.pin_dir())?;
    let policies_pin = d.pin_dir().join(maps::POLICIES).display().to_string();
    let exec_pin = d
        .pin_dir()
        .join(maps::LINKS_DIR)
        .join(maps::programs::EXEC)
        .display()
        .to_string();
    let (_, took) = wait_tamper(&d, seq, NOTICE, |e| {
        e["tamper"]["object"] == exec_pin.as_str()
    })?;
    let mut c = Checks::new();
    check!(c, took <= NOTICE, "noticed after {took:?}");
    let tampers = d.with_events(|evs| tampers_after(evs, seq))?;
    for object in [&policies_pin, &exec_pin] {
        match tampers
            .iter()
            .find(|e| e["tamper"]["object"] == object.as_str())
        {
            Some(e) => {
                check!(
                    c,
                    e["tamper"]["what"] == "pin removed",
                    "what: \"pin removed\": {}",
                    compact(e)
                );
                check_tamper_shape(&mut c, e, false);
            }
            None => c.fail(format!(
                "no sensor.tamper names {object}; the tamper events: {tampers:?}"
            )),
        }
    }
    wait_pins(d.pin_dir(), &pins, NOTICE)?;
    check_link_pins(&mut c, d.pin_dir(), &ids);

    let status = d.status_json()?;
    check!(
        c,
        status["tamper"]["total"].as_u64().unwrap_or(0) >= 2,
        "status counts the tampers: {}",
        compact(&status)
    );
    match scrape_metrics(&metrics) {
        Ok(text) => check!(
            c,
            metric_sample(&text, "sensor_tamper_total").unwrap_or(0.0) >= 2.0,
            "/metrics has sensor_tamper_total >= 2: {}",
            text.lines()
                .filter(|l| l.contains("tamper"))
                .collect::<Vec<_>>()
                .join(" | ")
        ),
        Err(e) => c.fail(format!("{e:#}")),
    }
    check!(
        c,
        d.stderr().contains("sensor.tamper"),
        "the daemon logs the tamper"
    );
    // In OCSF, a tamper is a Detection Finding (2004), checked by the
    // third-party validator.
    // The OCSF sink writes on its own: wait (bounded) until it has written
    // a tamper, rather than validate a file it has not reached yet.
    let findings = fx.dir().join("ocsf-findings.jsonl");
    let ocsf_tampers = || -> Result<Vec<String>> {
        Ok(fs::read_to_string(&ocsf)?
            .lines()
            .filter(|l| l.contains("\"event_code\":\"sensor.tamper\""))
            .map(|l| format!("{l}\n"))
            .collect())
    };
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut lines = ocsf_tampers()?;
    while lines.is_empty() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(50));
        lines = ocsf_tampers()?;
    }
    fs::write(&findings, lines.concat())?;
    c.result(sensor_tests::ocsf::validate(&findings, &[2004]).map(|_| ()));

    // One link pin, as `rm` (or an unpin) would.
    let seq = last_seq(&d)?;
    let link_before = bpftool_json(&["link", "show", "pinned", &exec_pin])?;
    fs::remove_file(&exec_pin)?;
    match wait_tamper(&d, seq, NOTICE, |e| {
        e["tamper"]["object"] == exec_pin.as_str()
    }) {
        Ok((e, _)) => check_tamper_shape(&mut c, &e, false),
        Err(e) => c.fail(format!("{e:#}")),
    }
    wait_pins(d.pin_dir(), &pins, NOTICE)?;
    let link_after = bpftool_json(&["link", "show", "pinned", &exec_pin])?;
    check!(
        c,
        link_after["id"] == link_before["id"],
        "the same link is pinned again: before {}, after {}",
        compact(&link_before),
        compact(&link_after)
    );

    check!(
        c,
        denied_is_killed(&mut puppet, &fx, "running")?,
        "a denied exec is killed after the re-pin"
    );
    d.stop()?;
    check!(
        c,
        denied_is_killed(&mut puppet, &fx, "stopped")?,
        "with the daemon stopped, the re-made pins keep enforcing"
    );
    for (name, id) in &ids {
        check!(
            c,
            prog_exists(*id)?,
            "program {name} ({id}) is still loaded after the stop"
        );
    }
    check!(
        c,
        unload(&d, &[])?.status.success(),
        "unload after the stop"
    );
    puppet.finish()?;
    c.finish()
}

/// `bpftool link detach` of the connect4 link (cgroup links are the ones
/// the kernel lets anyone detach): reported as "link detached", the program
/// attached again and pinned, denied connects fail again, also once the
/// daemon stopped. The exec program's link (a perf_event link) cannot be
/// detached at all here; if a kernel ever allows it, it must be reported
/// and re-attached just the same.
#[test]
fn a_detached_link_is_reported_and_attached_again() -> Result<()> {
    let fx = Fixture::new("tamper-detach")?;
    let (l_allowed, p_allowed) = listen("127.0.0.1")?;
    let (l_denied, p_denied) = listen("127.0.0.1")?;
    let rule = format!("127.0.0.1:{p_allowed}");
    // An IPv6 rule too: both prefix tries are compared by the check.
    let mut d = Daemon::start_with(Some(&enforce_config(&[&rule, "[::1]:1"], None)?), &[])?;
    let mut puppet = Puppet::start(&d, "tamper-detach", "p", fx.dir())?;
    no_tamper_yet(&d)?;
    let connect = |puppet: &mut Puppet, port: u16, tag: &str| -> Result<String> {
        let out = fx.dir().join(format!("connect-{tag}"));
        puppet.run(&format!(
            "{HELPER} connect tcp 127.0.0.1:{port} > {}",
            s(&out)
        ))?;
        Ok(fs::read_to_string(&out)
            .unwrap_or_default()
            .trim()
            .to_owned())
    };
    ensure!(
        connect(&mut puppet, p_denied, "before")? == "errno=1" && !accepted(&l_denied)?,
        "before the detach, the denied connect fails with EPERM"
    );

    let ids = d.program_ids()?;
    let connect4 = *ids
        .get(maps::programs::CONNECT4)
        .ok_or_else(|| anyhow!("no {} in status", maps::programs::CONNECT4))?;
    let link = links_of_prog(connect4)?
        .into_iter()
        .find(link_attached)
        .ok_or_else(|| anyhow!("no attached link of program {connect4}"))?;
    let link_id = link["id"].to_string();
    let seq = last_seq(&d)?;
    let out = bpftool(&["link", "detach", "id", &link_id])?;
    ensure!(
        out.status.success(),
        "bpftool link detach id {link_id}: {}",
        text(&out.stderr)
    );
    let (e, took) = wait_tamper(&d, seq, NOTICE, |e| {
        e["tamper"]["what"] == "link detached" && e["tamper"]["object"] == maps::programs::CONNECT4
    })?;
    let mut c = Checks::new();
    check_tamper_shape(&mut c, &e, false);
    check!(c, took <= NOTICE, "noticed after {took:?}");
    // Re-attached: an attached link of the same program, pinned.
    let deadline = Instant::now() + NOTICE;
    let attached = loop {
        let links = links_of_prog(connect4)?;
        if links.iter().any(link_attached) || Instant::now() >= deadline {
            break links;
        }
        thread::sleep(Duration::from_millis(50));
    };
    check!(
        c,
        attached.iter().any(link_attached),
        "program {connect4} is attached again (bpftool link show): {attached:?}"
    );
    check_link_pins(&mut c, d.pin_dir(), &ids);
    let status = d.status_json()?;
    let entry = status["programs"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == maps::programs::CONNECT4))
        .cloned()
        .unwrap_or(Value::Null);
    check!(
        c,
        entry["attached"] == true && entry["pinned"] == true,
        "status says {} is attached and pinned: {}",
        maps::programs::CONNECT4,
        compact(&entry)
    );
    let printed = connect(&mut puppet, p_denied, "after")?;
    check!(
        c,
        printed == "errno=1" && !accepted(&l_denied)?,
        "after the re-attach, the denied connect printed {printed:?}, want \"errno=1\""
    );
    let printed = connect(&mut puppet, p_allowed, "allowed")?;
    check!(
        c,
        printed == "ok" && accepted(&l_allowed)?,
        "the allowed connect printed {printed:?}, want \"ok\""
    );

    // The exec program's link.
    let exec = ids[maps::programs::EXEC];
    let exec_link = links_of_prog(exec)?
        .into_iter()
        .find(link_attached)
        .ok_or_else(|| anyhow!("no link of program {exec}"))?;
    let seq = last_seq(&d)?;
    let out = bpftool(&["link", "detach", "id", &exec_link["id"].to_string()])?;
    if out.status.success() {
        match wait_tamper(&d, seq, NOTICE, |e| {
            e["tamper"]["what"] == "link detached" && e["tamper"]["object"] == maps::programs::EXEC
        }) {
            Ok((e, _)) => check_tamper_shape(&mut c, &e, false),
            Err(e) => c.fail(format!("the exec link was detached: {e:#}")),
        }
    } else {
        eprintln!(
            "bpftool link detach of the exec program's {} link: {} (the kernel refuses)",
            exec_link["type"],
            text(&out.stderr).trim()
        );
    }
    check!(
        c,
        denied_is_killed(&mut puppet, &fx, "exec")?,
        "a denied exec is killed"
    );

    d.stop()?;
    let printed = connect(&mut puppet, p_denied, "stopped")?;
    check!(
        c,
        printed == "errno=1" && !accepted(&l_denied)?,
        "with the daemon stopped, the re-attached pinned link denies: {printed:?}"
    );
    check!(
        c,
        unload(&d, &[])?.status.success(),
        "unload after the stop"
    );
    puppet.finish()?;
    c.finish()
}

/// Reads the policy slot of the (one) enforce policy: (key, value, slot).
fn enforce_slot(pin_dir: &Path) -> Result<(Vec<u8>, Vec<u8>, PolicySlot)> {
    let slots = map_dump(&pin_dir.join(maps::POLICIES))?;
    let decoded: Vec<(Vec<u8>, Vec<u8>, PolicySlot)> = slots
        .into_iter()
        .filter_map(|(k, v)| {
            let slot = decode_slot(&v)?;
            (slot.mode == MODE_ENFORCE).then_some((k, v, slot))
        })
        .collect();
    ensure!(
        decoded.len() == 1,
        "want exactly one enforce slot in {}: {:?}",
        maps::POLICIES,
        decoded.iter().map(|(_, _, s)| s).collect::<Vec<_>>()
    );
    decoded
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no enforce slot"))
}

fn u32_at(bytes: &[u8], offset: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        bytes.get(offset..offset + 4)?.try_into().ok()?,
    ))
}

fn decode_slot(v: &[u8]) -> Option<PolicySlot> {
    (v.len() == size_of::<PolicySlot>()).then_some(())?;
    Some(PolicySlot {
        id: u32_at(v, std::mem::offset_of!(PolicySlot, id))?,
        mode: u32_at(v, std::mem::offset_of!(PolicySlot, mode))?,
        max_processes: u32_at(v, std::mem::offset_of!(PolicySlot, max_processes))?,
        flags: 0,
    })
}

/// Waits until the map pinned at `path` has `key` = `value` again.
fn wait_entry(path: &Path, key: &[u8], value: &[u8], timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let now = map_dump(path)?
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v);
        if now.as_deref() == Some(value) {
            return Ok(());
        }
        ensure!(
            Instant::now() < deadline,
            "{} key {key:02x?} is not back to {value:02x?} within {timeout:?}: {now:02x?}",
            path.display()
        );
        thread::sleep(Duration::from_millis(50));
    }
}

/// The policy maps written with bpftool under a live daemon: an enforce
/// slot flipped to audit, an exec rule deleted, a run's binding deleted.
/// Each is reported ("policy map changed", naming the map and the slot,
/// policy or run) and put back, and the denied exec is killed again.
#[test]
fn policy_map_writes_are_reported_and_repaired() -> Result<()> {
    let fx = Fixture::new("tamper-maps")?;
    let d = Daemon::start_with(Some(&enforce_config(&[], None)?), &[])?;
    let mut puppet = Puppet::start(&d, "tamper-maps", "p", fx.dir())?;
    let puppet_pid = puppet.pid();
    let first = d.wait_for(EVENT_TIMEOUT, |e| {
        is_exec_ok(e) && e["process"]["pid"] == puppet_pid && e["run"]["agent"] == "tamper-maps"
    })?;
    let run_id = first["run"]["id"].clone();
    no_tamper_yet(&d)?;
    let mut c = Checks::new();

    // 1. The enforce slot flipped to audit.
    let slots = d.pin_dir().join(maps::POLICIES);
    let (key, value, slot) = enforce_slot(d.pin_dir())?;
    let mut flipped = value.clone();
    let mode_at = std::mem::offset_of!(PolicySlot, mode);
    flipped[mode_at..mode_at + 4].copy_from_slice(&MODE_AUDIT.to_ne_bytes());
    let seq = last_seq(&d)?;
    map_update(&slots, &key, &flipped)?;
    let (e, took) = wait_tamper(&d, seq, NOTICE, |e| {
        e["tamper"]["what"] == "policy map changed"
            && e["tamper"]["object"]
                .as_str()
                .is_some_and(|o| o.contains(maps::POLICIES))
    })?;
    check_tamper_shape(&mut c, &e, false);
    check!(c, took <= NOTICE, "noticed after {took:?}");
    let slot_no = u32_at(&key, 0).unwrap_or(u32::MAX);
    check!(
        c,
        e["tamper"]["object"]
            .as_str()
            .is_some_and(|o| o.contains(&format!("slot {slot_no}"))),
        "the tamper names slot {slot_no}: {}",
        compact(&e)
    );
    wait_entry(&slots, &key, &value, NOTICE)?;
    check!(
        c,
        denied_is_killed(&mut puppet, &fx, "after-slot")?,
        "after the slot is put back, a denied exec is killed"
    );

    // 2. An exec rule of the policy deleted.
    let rules = d.pin_dir().join(maps::EXEC_RULES);
    let policy_at = std::mem::offset_of!(ExecKey, policy);
    let (rkey, rvalue) = map_dump(&rules)?
        .into_iter()
        .find(|(k, _)| u32_at(k, policy_at) == Some(slot.id))
        .ok_or_else(|| anyhow!("no exec rule under policy id {}", slot.id))?;
    let seq = last_seq(&d)?;
    map_delete(&rules, &rkey)?;
    match wait_tamper(&d, seq, NOTICE, |e| {
        e["tamper"]["what"] == "policy map changed"
            && e["tamper"]["object"]
                .as_str()
                .is_some_and(|o| o.contains(maps::EXEC_RULES))
    }) {
        Ok((e, _)) => check_tamper_shape(&mut c, &e, false),
        Err(e) => c.fail(format!("{e:#}")),
    }
    wait_entry(&rules, &rkey, &rvalue, NOTICE)?;

    // 3. The run's binding to its policy deleted: its processes would be
    //    checked by nothing.
    let bindings = d.pin_dir().join(maps::RUN_POLICY);
    let (bkey, bvalue) = map_dump(&bindings)?
        .into_iter()
        .next()
        .ok_or_else(|| anyhow!("no run bound in {}", maps::RUN_POLICY))?;
    let seq = last_seq(&d)?;
    map_delete(&bindings, &bkey)?;
    match wait_tamper(&d, seq, NOTICE, |e| {
        e["tamper"]["what"] == "policy map changed"
            && e["tamper"]["object"]
                .as_str()
                .is_some_and(|o| o.contains(maps::RUN_POLICY))
    }) {
        Ok((e, _)) => {
            check_tamper_shape(&mut c, &e, true);
            check!(
                c,
                e["run"]["id"] == run_id,
                "the tamper of a run's binding carries the run {run_id}: {}",
                compact(&e)
            );
        }
        Err(e) => c.fail(format!("{e:#}")),
    }
    wait_entry(&bindings, &bkey, &bvalue, NOTICE)?;
    check!(
        c,
        denied_is_killed(&mut puppet, &fx, "after-maps")?,
        "after the maps are put back, a denied exec is killed"
    );
    let status = d.status_json()?;
    check!(
        c,
        status["tamper"]["total"].as_u64().unwrap_or(0) >= 3,
        "status counts three tampers: {}",
        compact(&status["tamper"])
    );
    puppet.finish()?;
    c.finish()
}

/// `status` says per link whether it is attached and pinned, and what
/// enforces: each policy with its mode, version, runs and kernel slot, the
/// pins, the socket and the database; `/metrics` the same; the stop
/// message says what stays attached, checked against the kernel; `status`
/// with the daemon down reads the pin dir: links, maps, policy slots with
/// their names and modes, bound runs, the last owner; and still exits 1.
/// `bpf(cmd, NULL, 0)`: refused by the kernel (EFAULT or EINVAL), but the
/// call is made, and the sensor's `sys_enter_bpf` program sees it.
fn bpf_call(cmd: libc::c_long) {
    // SAFETY: a null attribute of size 0; the kernel only reads it, and refuses it.
    let _ = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::null::<u8>(), 0_u32) };
}

/// `status` `tamper`: the comparisons of the policy maps so far, and the
/// kernel's count of other processes' bpf(2) calls that can change a map.
fn comparisons_and_calls(d: &Daemon) -> Result<(u64, u64)> {
    let status = d.status_json()?;
    let tamper = &status["tamper"];
    let get = |k: &str| {
        tamper[k]
            .as_u64()
            .ok_or_else(|| anyhow!("status has no tamper.{k}: {}", compact(tamper)))
    };
    Ok((get("policy_map_checks")?, get("foreign_bpf_calls")?))
}

/// Comparing the policy maps walks every bucket of five hash maps (a few
/// milliseconds of a CPU): the check does it after a bpf(2) call by another
/// process that can change a map (nothing else writes one; the kernel
/// programs count them), and every 10 s for a program loaded earlier.
/// Reads and queries (what monitoring tools make) are not counted. That a
/// write is then found at once is `policy_map_writes_are_reported_and_repaired`.
#[test]
fn the_policy_maps_are_compared_after_a_foreign_bpf_call_that_can_write() -> Result<()> {
    const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
    const BPF_MAP_GET_NEXT_ID: libc::c_long = 12;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const QUIET: Duration = Duration::from_secs(4);
    let d = Daemon::start_with(Some(&enforce_config(&[], None)?), &[])?;
    let mut c = Checks::new();
    // The first check has compared them.
    thread::sleep(Duration::from_millis(1500));
    let (checks0, calls0) = comparisons_and_calls(&d)?;
    check!(
        c,
        checks0 >= 1,
        "the first check compared the policy maps ({checks0})"
    );

    for _ in 0..50 {
        bpf_call(BPF_MAP_GET_NEXT_ID);
        bpf_call(BPF_OBJ_GET_INFO_BY_FD);
    }
    thread::sleep(QUIET);
    let (checks1, calls1) = comparisons_and_calls(&d)?;
    check!(
        c,
        calls1 == calls0,
        "reads and queries are not counted: {calls0} -> {calls1}"
    );
    check!(
        c,
        checks1 - checks0 <= 1,
        "no call that can write: at most one comparison (every 10 s) in {QUIET:?}, \
         {} were made",
        checks1 - checks0
    );

    bpf_call(BPF_MAP_UPDATE_ELEM);
    let start = Instant::now();
    let mut after = (checks1, calls1);
    while start.elapsed() < NOTICE {
        after = comparisons_and_calls(&d)?;
        if after.0 > checks1 && after.1 > calls1 {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    check!(
        c,
        after.1 > calls1,
        "a BPF_MAP_UPDATE_ELEM call (refused) is counted: {calls1} -> {}",
        after.1
    );
    check!(
        c,
        after.0 > checks1,
        "the next check compared the maps: {checks1} -> {} within {NOTICE:?}",
        after.0
    );
    let (_, text) = d.status_text()?;
    check!(
        c,
        text.contains("policy maps compared:"),
        "`sensor status` says how often the policy maps were compared: {text}"
    );
    c.finish()
}

#[test]
fn status_and_stop_say_what_is_really_attached() -> Result<()> {
    let fx = Fixture::new("tamper-status")?;
    let metrics = format!("127.0.0.1:{}", free_port()?);
    let mut d = Daemon::start_with(Some(&enforce_config(&[], Some(&metrics))?), &[])?;
    let puppet = Puppet::start(&d, "tamper-status", "p", fx.dir())?;
    let mut c = Checks::new();
    let status = d.status_json()?;
    let programs = status["programs"].as_array().cloned().unwrap_or_default();
    check!(c, !programs.is_empty(), "status lists programs");
    for p in &programs {
        check!(
            c,
            p["attached"] == true && p["pinned"] == true && p["link_id"].as_u64().is_some(),
            "each program of an enforce daemon: attached, pinned, with its link id: {}",
            compact(p)
        );
    }
    let policy = status["policies"]["policies"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"] == "p"))
        .cloned()
        .unwrap_or_default();
    check!(
        c,
        status["policies"]["version"] == 1
            && policy["mode"] == "enforce"
            && policy["version"] == 1
            && policy["runs_active"] == 1
            && policy["slot"].is_u64()
            && policy["id"].is_u64(),
        "status --json: policy p, enforce, version 1, one run, its kernel slot and id: {}",
        compact(&status["policies"])
    );
    let paths = &status["paths"];
    check!(
        c,
        paths["pin_dir"] == d.pin_dir().to_string_lossy().as_ref()
            && paths["maps_pinned"]
                .as_array()
                .is_some_and(|m| !m.is_empty() && m.len() as u64 == paths["maps_expected"])
            && paths["socket"]
                .as_str()
                .is_some_and(|s| s.ends_with(&*d.socket().to_string_lossy())),
        "status --json: the pin dir, every map pinned, the socket: {}",
        compact(paths)
    );
    let out = status_with_pins(&d, false)?;
    let shown = text(&out.stdout);
    for p in &programs {
        let name = p["name"].as_str().unwrap_or("?");
        check!(
            c,
            shown
                .lines()
                .any(|l| l.contains(name) && l.contains("attached") && l.contains("pinned")),
            "the text status has a line for {name} saying attached and pinned:\n{shown}"
        );
    }
    let n = programs.len();
    for want in [
        "policies: version 1, 1 policy".to_owned(),
        format!("pin dir: {}: ", d.pin_dir().display()),
        format!("{n} of {n} program links pinned"),
        format!("socket: {}", d.socket().display()),
        "database: ".to_owned(),
        "reloads: 0 applied, 0 refused".to_owned(),
    ] {
        check!(
            c,
            shown.contains(&want),
            "the text status says {want:?}:\n{shown}"
        );
    }
    check!(
        c,
        shown.lines().any(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            words.first() == Some(&"p")
                && words.get(1) == Some(&"enforce")
                && words.get(2) == Some(&"v1")
                && l.contains("1 run ")
                && l.contains("kernel slot")
        }),
        "the text status has a row for policy p: enforce, v1, 1 run, its kernel slot:\n{shown}"
    );
    match scrape_metrics(&metrics) {
        Ok(m) => {
            for (series, want) in [
                (r#"sensor_policy_mode{policy="p",mode="enforce"}"#, 1.0),
                (r#"sensor_policy_version{policy="p"}"#, 1.0),
                (r#"sensor_policy_runs_active{policy="p"}"#, 1.0),
                ("sensor_policies_version", 1.0),
                (r#"sensor_reloads_total{result="ok"}"#, 0.0),
                (r#"sensor_reloads_total{result="refused"}"#, 0.0),
                (r#"sensor_pinned{what="links"}"#, n as f64),
            ] {
                check!(
                    c,
                    metric_sample(&m, series) == Some(want),
                    "/metrics has {series} {want}: {:?}",
                    metric_sample(&m, series)
                );
            }
            check!(
                c,
                m.lines()
                    .any(|l| l.starts_with("sensor_build_info{version=\"")
                        && l.contains(",git=\"")
                        && l.ends_with(" 1")),
                "/metrics has sensor_build_info{{version,git}} 1:\n{}",
                m.lines()
                    .filter(|l| l.contains("build_info"))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Err(e) => c.fail(format!("scraping /metrics: {e:#}")),
    }
    let ids = d.program_ids()?;
    d.stop()?;
    let stderr = d.stderr();
    check!(
        c,
        stderr.contains(&format!("{n} of {n} kernel programs stay attached")),
        "the stop message says all {n} programs stay attached: {}",
        stderr
            .lines()
            .filter(|l| l.contains("attached") || l.contains("detach"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (name, id) in &ids {
        check!(
            c,
            prog_exists(*id)?,
            "{name} ({id}) is loaded, as the stop message says"
        );
    }

    let out = status_with_pins(&d, false)?;
    let shown = format!("{}{}", text(&out.stdout), text(&out.stderr));
    check!(
        c,
        out.status.code() == Some(1),
        "status with the daemon down exits 1: {}",
        describe(&out)
    );
    for want in [
        format!("{n} pinned, {n} attached"),
        ": p v1, enforce (id ".to_owned(),
        "runs bound to a policy: 1".to_owned(),
        format!("pid {}", d.pid()),
        "maps pinned: ".to_owned(),
        "still enforcing".to_owned(),
    ] {
        check!(
            c,
            shown.contains(&want),
            "status with the daemon down says {want:?}:\n{shown}"
        );
    }
    let out = status_with_pins(&d, true)?;
    check!(
        c,
        out.status.code() == Some(1),
        "status --json with the daemon down exits 1: {}",
        describe(&out)
    );
    match serde_json::from_slice::<Value>(&out.stdout) {
        Ok(j) => {
            let links = j["pinned"]["links"].as_array().cloned().unwrap_or_default();
            check!(
                c,
                j["ready"] == false
                    && links.len() == n
                    && links.iter().all(|l| l["attached"] == true)
                    && j["pinned"]["runs_bound"] == 1
                    && j["pinned"]["owner"]["pid"] == d.pid()
                    && j["pinned"]["owner"]["alive"] == false
                    && j["pinned"]["policies"]
                        .as_array()
                        .is_some_and(|p| p.iter().any(|s| s["mode"] == "enforce"))
                    && j["policies"].as_array().is_some_and(|p| {
                        p.iter().any(|s| {
                            s["mode"] == "enforce" && s["name"] == "p" && s["version"] == 1
                        })
                    }),
                "status --json with the daemon down: ready false, {n} attached links, one bound run, \
                 an enforce slot, the owner (not alive): {}",
                compact(&j)
            );
        }
        Err(e) => c.fail(format!(
            "status --json with the daemon down printed no JSON ({e}): {}",
            describe(&out)
        )),
    }
    check!(
        c,
        unload(&d, &[])?.status.success(),
        "unload after the stop"
    );
    drop(puppet);
    c.finish()
}

/// A daemon stopped with `--detach-on-exit` detaches everything, and says
/// so after checking the kernel.
#[test]
fn a_detaching_stop_says_the_programs_are_gone_after_checking() -> Result<()> {
    let mut d = Daemon::start_with_args(&["--detach-on-exit"])?;
    let ids = d.program_ids()?;
    d.stop()?;
    let stderr = d.stderr();
    let mut c = Checks::new();
    check!(
        c,
        stderr.contains("every kernel program detached (checked"),
        "the stop message says every program detached, checked: {}",
        stderr
            .lines()
            .filter(|l| l.contains("attached") || l.contains("detach"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    for (name, id) in &ids {
        check!(
            c,
            !prog_exists(*id)?,
            "{name} ({id}) is gone, as the stop message says"
        );
    }
    c.finish()
}

/// `CAP_SYS_ADMIN` (capability(7) number 21).
const CAP_SYS_ADMIN: u32 = 21;

/// The daemon as the systemd unit runs it, without `CAP_SYS_ADMIN` (which
/// looking links and programs up by id would need): pins removed and a link
/// detached are still found and put back, and the stop still checks what
/// stays attached.
#[test]
fn the_check_works_without_cap_sys_admin() -> Result<()> {
    let fx = Fixture::new("tamper-caps")?;
    let (l_denied, p_denied) = listen("127.0.0.1")?;
    let mut d = Daemon::start_wrapped(
        Some(&enforce_config(&[], None)?),
        &[],
        &["setpriv", "--bounding-set", "-sys_admin", "--"],
    )?;
    let status = fs::read_to_string(format!("/proc/{}/status", d.pid()))?;
    let caps = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| anyhow!("no CapEff in /proc/{}/status", d.pid()))?;
    ensure!(
        caps & (1 << CAP_SYS_ADMIN) == 0,
        "the daemon runs without CAP_SYS_ADMIN (CapEff {caps:x})"
    );
    let mut puppet = Puppet::start(&d, "tamper-caps", "p", fx.dir())?;
    no_tamper_yet(&d)?;
    let pins = pin_listing(d.pin_dir());
    let ids = d.program_ids()?;
    let seq = last_seq(&d)?;
    fs::remove_dir_all(d.pin_dir())?;
    wait_tamper(&d, seq, NOTICE, |e| e["tamper"]["what"] == "pin removed")?;
    wait_pins(d.pin_dir(), &pins, NOTICE)?;
    let connect4 = ids[maps::programs::CONNECT4];
    let link = links_of_prog(connect4)?
        .into_iter()
        .find(link_attached)
        .ok_or_else(|| anyhow!("no attached link of program {connect4}"))?;
    let seq = last_seq(&d)?;
    let out = bpftool(&["link", "detach", "id", &link["id"].to_string()])?;
    ensure!(
        out.status.success(),
        "bpftool link detach: {}",
        text(&out.stderr)
    );
    let (e, _) = wait_tamper(&d, seq, NOTICE, |e| {
        e["tamper"]["what"] == "link detached" && e["tamper"]["repaired"] == true
    })?;
    let mut c = Checks::new();
    check_tamper_shape(&mut c, &e, false);
    check_link_pins(&mut c, d.pin_dir(), &ids);
    d.stop()?;
    let n = ids.len();
    check!(
        c,
        d.stderr()
            .contains(&format!("{n} of {n} kernel programs stay attached")),
        "the stop says all {n} programs stay attached"
    );
    check!(
        c,
        denied_is_killed(&mut puppet, &fx, "stopped")?,
        "with the daemon stopped, a denied exec is killed"
    );
    let out = fx.dir().join("connect-stopped");
    puppet.run(&format!(
        "{HELPER} connect tcp 127.0.0.1:{p_denied} > {}",
        s(&out)
    ))?;
    let printed = fs::read_to_string(&out).unwrap_or_default();
    check!(
        c,
        printed.trim() == "errno=1" && !accepted(&l_denied)?,
        "with the daemon stopped, the re-attached connect hook denies: {printed:?}"
    );
    check!(
        c,
        unload(&d, &[])?.status.success(),
        "unload after the stop"
    );
    puppet.finish()?;
    c.finish()
}

/// A second daemon pointed at the pin dir of a running one refuses to start
/// (it would take the first one's pins over), naming the owner; the first
/// one goes on enforcing, its pins untouched.
#[test]
fn a_second_daemon_refuses_a_live_daemons_pin_dir() -> Result<()> {
    let fx = Fixture::new("tamper-second")?;
    let d = Daemon::start_with(Some(&enforce_config(&[], None)?), &[])?;
    let mut puppet = Puppet::start(&d, "tamper-second", "p", fx.dir())?;
    let pins = pin_listing(d.pin_dir());
    let mut cmd = std::process::Command::new(d.bin());
    cmd.arg("daemon")
        .arg("--pin-dir")
        .arg(d.pin_dir())
        .arg("--socket")
        .arg(fx.dir().join("second.sock"))
        .arg("--state-dir")
        .arg(fx.dir().join("second-state"))
        .arg("--output")
        .arg(format!("file:{}", fx.dir().join("second.jsonl").display()))
        .env_remove("SENSOR_CONFIG")
        .env_remove("SENSOR_SOCKET")
        .env_remove("SENSOR_PIN_DIR");
    let (_, out) = sensor_tests::run_with_timeout(&mut cmd, Duration::from_secs(30))?;
    let stderr = text(&out.stderr);
    ensure!(
        out.status.code() == Some(1) && stderr.contains(&format!("pid {}", d.pid())),
        "the second daemon refuses, naming pid {}: {}",
        d.pid(),
        describe(&out)
    );
    ensure!(
        pin_listing(d.pin_dir()) == pins,
        "the pins are untouched: {:?}",
        pin_listing(d.pin_dir())
    );
    ensure!(
        denied_is_killed(&mut puppet, &fx, "after-second")?,
        "the first daemon still enforces"
    );
    d.check_alive()?;
    puppet.finish()
}

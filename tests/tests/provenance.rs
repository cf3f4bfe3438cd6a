//! Tamper-evident run records (issue 19): a real run's record verifies;
//! an event edited, deleted, swapped or forged in the store with sqlite
//! is named by `sensor verify` (seq, exit 1); an exported bundle verifies
//! with `sensor verify --bundle` and with a third-party DSSE verifier
//! (securesystemslib, `tests/dsse`), and one changed byte fails both;
//! another run's record moved under a run's id does not verify as its own.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use sensor_tests::{COMMAND_TIMEOUT, Daemon, TempDir, run_with_timeout, target_dir, text};
use serde_json::Value;
use sha2::{Digest as _, Sha256};

/// `sensor verify ARGS --json`: (exit success, answer).
fn verify(d: &Daemon, args: &[&str]) -> Result<(bool, Value)> {
    let (_, out) = run_with_timeout(
        d.sensor().arg("verify").args(args).arg("--json"),
        COMMAND_TIMEOUT,
    )?;
    let v: Value = serde_json::from_str(text(&out.stdout).trim()).with_context(|| {
        format!(
            "verify {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })?;
    Ok((out.status.success(), v))
}

fn sqlite(db: &Path, sql: &str) -> Result<String> {
    let (_, out) = run_with_timeout(Command::new("sqlite3").arg(db).arg(sql), COMMAND_TIMEOUT)?;
    ensure!(out.status.success(), "sqlite3 {sql}: {}", text(&out.stderr));
    Ok(text(&out.stdout).trim().to_owned())
}

/// The first problem `verify` names: (what, seq).
fn problem(v: &Value) -> Option<(String, u64)> {
    let p = v["runs"]
        .as_array()?
        .iter()
        .find_map(|r| r["problem"].as_object())?;
    Some((p["what"].as_str()?.to_owned(), p["seq"].as_u64()?))
}

/// A copy of the stopped daemon's store, to tamper with.
fn copy_db(db: &Path, dir: &Path, name: &str) -> Result<PathBuf> {
    let to = dir.join(format!("{name}.db"));
    std::fs::copy(db, &to).with_context(|| format!("copy {}", db.display()))?;
    Ok(to)
}

/// (id, seq) of the run's stored exec whose argv has `marker`.
fn exec_row(db: &Path, run: &str, marker: &str) -> Result<(i64, u64)> {
    let row = sqlite(
        db,
        &format!(
            "SELECT id, seq FROM events WHERE run_id = '{run}' AND kind = 'process.exec' AND body LIKE '%\"{marker}\"%' ORDER BY id LIMIT 1"
        ),
    )?;
    let (id, seq) = row
        .split_once('|')
        .ok_or_else(|| anyhow!("no exec of {marker} stored: {row:?}"))?;
    Ok((id.parse()?, seq.parse()?))
}

/// The seq of the run's next stored event after row `id`.
fn next_seq(db: &Path, run: &str, id: i64) -> Result<u64> {
    Ok(sqlite(
        db,
        &format!("SELECT seq FROM events WHERE run_id = '{run}' AND id > {id} ORDER BY id LIMIT 1"),
    )?
    .parse()?)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn run_records_are_tamper_evident() -> Result<()> {
    let d = Daemon::start_with(Some("[provenance]\ncheckpoint_events = 4\n"), &[])?;
    let script = "for m in provmark1 provmark2 provmark3 provmark4 provmark5; do /bin/echo $m >/dev/null; done";
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd("prov-agent", &[], &["/bin/sh", "-c", script]),
        COMMAND_TIMEOUT,
    )?;
    ensure!(out.status.success(), "launch: {}", text(&out.stderr));
    let end = d.wait_for(Duration::from_secs(10), |e| {
        e["kind"] == "run.checkpoint" && e["checkpoint"]["reason"] == "end"
    })?;
    let run = end["run"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("checkpoint without run: {end}"))?
        .to_owned();
    // Every event of the run carries its chain; the end checkpoint signs the head.
    let events = d.matching(|e| e["run"]["id"] == run.as_str())?;
    ensure!(
        events.iter().all(|e| e["provenance"]["chain"]
            .as_str()
            .is_some_and(|c| c.len() == 64)),
        "run events without provenance: {events:?}"
    );
    let checkpoints = events
        .iter()
        .filter(|e| e["kind"] == "run.checkpoint")
        .count();
    ensure!(
        checkpoints >= 2,
        "an events checkpoint and the end one: {events:?}"
    );
    // A second run, whose record an attacker moves under the first's id.
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(
            "prov-other",
            &[],
            &["/bin/sh", "-c", "/bin/echo other >/dev/null"],
        ),
        COMMAND_TIMEOUT,
    )?;
    ensure!(out.status.success(), "launch: {}", text(&out.stderr));
    let other_end = d.wait_for(Duration::from_secs(10), |e| {
        e["kind"] == "run.checkpoint"
            && e["checkpoint"]["reason"] == "end"
            && e["run"]["id"] != run.as_str()
    })?;
    let other = other_end["run"]["id"]
        .as_str()
        .ok_or_else(|| anyhow!("checkpoint without run: {other_end}"))?
        .to_owned();
    // Outside runs: no provenance member.
    ensure!(
        d.matching(|e| e["run"].is_null() && !e["provenance"].is_null())?
            .is_empty(),
        "an event outside runs has provenance"
    );

    let db = d.state_dir().join("sensor.db");
    let db_arg = db.display().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    // The store writes on its own thread: wait until it holds every event.
    let intact = loop {
        // Until its first commit the store does not know the run: no JSON.
        let (ok, v) = verify(&d, &[&run, "--db", &db_arg])
            .unwrap_or_else(|e| (false, Value::String(format!("{e:#}"))));
        if ok && v["runs"][0]["events"].as_u64() == Some(events.len() as u64) {
            break v;
        }
        ensure!(Instant::now() < deadline, "the run never verified: {v}");
        std::thread::sleep(Duration::from_millis(300));
    };
    ensure!(
        intact["runs"][0]["events"].as_u64() == Some(events.len() as u64)
            && intact["runs"][0]["checkpoints"].as_u64() == Some(checkpoints as u64),
        "verify counts {intact} against {} events, {checkpoints} checkpoints",
        events.len()
    );
    let (_, human) = run_with_timeout(
        d.sensor().args(["verify", &run, "--db", &db_arg]),
        COMMAND_TIMEOUT,
    )?;
    ensure!(
        text(&human.stdout).contains(&format!(
            "intact: {} events, {checkpoints} checkpoints",
            events.len()
        )),
        "{}",
        text(&human.stdout)
    );

    // The bundle, while the daemon runs.
    let dir = TempDir::new("provenance")?;
    let bundle = dir.path().join("run.bundle.json");
    let mut export = d.sensor();
    export
        .args(["export", &run, "-o"])
        .arg(&bundle)
        .args(["--db", &db_arg, "--state-dir"])
        .arg(d.state_dir());
    if let Some(config) = d.config_path() {
        export.arg("--config").arg(config);
    }
    export.arg("--json");
    let (_, out) = run_with_timeout(&mut export, COMMAND_TIMEOUT)?;
    ensure!(
        out.status.success(),
        "export: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said: Value = serde_json::from_str(text(&out.stdout).trim())
        .with_context(|| format!("export --json: {}", text(&out.stdout)))?;
    ensure!(
        said["runs"] == 1
            && said["events"].as_u64() == Some(events.len() as u64)
            && said["checkpoints"].as_u64() == Some(checkpoints as u64),
        "export --json: {said}"
    );
    // As private as the store it comes from.
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&bundle)?.permissions());
    ensure!(mode & 0o777 == 0o600, "the bundle's mode is {mode:o}");
    let bundle_arg = bundle.display().to_string();
    let (ok, v) = verify(&d, &["--bundle", &bundle_arg])?;
    ensure!(
        ok && v["runs"][0]["intact"] == true && v["bundle"]["keys"] == "bundle",
        "the bundle does not verify (with the keys it carries, said so): {v}"
    );
    let keys = d.state_dir().join("provenance_keys.json");
    let python = target_dir().join("dsse-venv").join("bin").join("python");
    ensure!(
        python.exists(),
        "{} is missing: run `cargo xtask setup`",
        python.display()
    );
    let script = sensor_tests::workspace_root().join("tests/dsse/verify.py");
    let third_party = |file: &Path| -> Result<(bool, String)> {
        let (_, out) = run_with_timeout(
            Command::new(&python)
                .arg(&script)
                .arg("--keys")
                .arg(&keys)
                .arg(file),
            COMMAND_TIMEOUT,
        )?;
        Ok((
            out.status.success(),
            format!("{}{}", text(&out.stdout), text(&out.stderr)),
        ))
    };
    let (ok, said) = third_party(&bundle)?;
    ensure!(
        ok && said.starts_with("VERIFIED"),
        "securesystemslib: {said}"
    );
    let keys_arg = keys.display().to_string();
    let (ok, v) = verify(&d, &["--bundle", &bundle_arg, "--keys", &keys_arg])?;
    ensure!(
        ok && v["runs"][0]["intact"] == true && v["bundle"]["keys"] == "pinned",
        "the bundle does not verify with pinned keys: {v}"
    );
    // `-o -`: the bundle on stdout, the summary on stderr.
    let (_, out) = run_with_timeout(
        d.sensor()
            .args(["export", &run, "-o", "-", "--db", &db_arg, "--state-dir"])
            .arg(d.state_dir()),
        COMMAND_TIMEOUT,
    )?;
    ensure!(
        out.status.success() && text(&out.stderr).contains("signed by key"),
        "export -o -: {}",
        text(&out.stderr)
    );
    let piped = dir.path().join("piped.bundle.json");
    std::fs::write(&piped, &out.stdout)?;
    let (ok, v) = verify(
        &d,
        &[
            "--bundle",
            &piped.display().to_string(),
            "--keys",
            &keys_arg,
        ],
    )?;
    ensure!(ok, "the bundle written to stdout does not verify: {v}");
    // One byte of the payload changed: both refuse it.
    let mut env: Value = serde_json::from_slice(&std::fs::read(&bundle)?)?;
    let payload = env["payload"].as_str().unwrap_or_default().to_owned();
    let mut bytes = payload.into_bytes();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    env["payload"] = Value::String(String::from_utf8(bytes)?);
    let changed = dir.path().join("changed.bundle.json");
    std::fs::write(&changed, serde_json::to_vec_pretty(&env)?)?;
    let (ok, v) = verify(&d, &["--bundle", &changed.display().to_string()])?;
    ensure!(!ok, "a changed bundle verifies: {v}");
    let (ok, said) = third_party(&changed)?;
    ensure!(
        !ok && said.starts_with("REJECTED"),
        "securesystemslib took a changed bundle: {said}"
    );

    // Tampering with the store (a copy of it once the daemon stopped).
    let mut d = d;
    d.stop()?;
    let check = |name: &str, db: &Path, what: &str, seq: u64| -> Result<()> {
        let (ok, v) = verify(
            &d,
            &[&run, "--db", &db.display().to_string(), "--keys", &keys_arg],
        )?;
        ensure!(!ok, "{name}: still intact: {v}");
        ensure!(
            problem(&v) == Some((what.to_owned(), seq)),
            "{name}: expected {what} at seq {seq}: {v}"
        );
        Ok(())
    };
    // A store away from the state dir (as with `[store] path`): the keys
    // are the state dir's.
    let away = copy_db(&db, dir.path(), "away")?;
    let (ok, v) = verify(
        &d,
        &[
            &run,
            "--db",
            &away.display().to_string(),
            "--state-dir",
            &d.state_dir().display().to_string(),
        ],
    )?;
    ensure!(ok, "a store away from its state dir: {v}");
    // Edited argv.
    let edited = copy_db(&db, dir.path(), "edited")?;
    let (id, seq) = exec_row(&edited, &run, "provmark2")?;
    sqlite(
        &edited,
        &format!(
            "UPDATE events SET body = replace(body, 'provmark2', 'provmarkX') WHERE id = {id}"
        ),
    )?;
    check("edited", &edited, "edited", seq)?;
    // Deleted.
    let deleted = copy_db(&db, dir.path(), "deleted")?;
    let (id, _) = exec_row(&deleted, &run, "provmark3")?;
    let after = next_seq(&deleted, &run, id)?;
    sqlite(&deleted, &format!("DELETE FROM events WHERE id = {id}"))?;
    check("deleted", &deleted, "deleted", after)?;
    // Two swapped.
    let swapped = copy_db(&db, dir.path(), "swapped")?;
    let (a, _) = exec_row(&swapped, &run, "provmark4")?;
    let b: i64 = sqlite(
        &swapped,
        &format!("SELECT id FROM events WHERE run_id = '{run}' AND id > {a} ORDER BY id LIMIT 1"),
    )?
    .parse()?;
    let b_seq = next_seq(&swapped, &run, a)?;
    sqlite(
        &swapped,
        &format!(
            "CREATE TEMP TABLE t AS SELECT id, seq, body, chain, kind FROM events WHERE id IN ({a}, {b});
             UPDATE events SET seq = (SELECT seq FROM t WHERE t.id <> events.id),
                               body = (SELECT body FROM t WHERE t.id <> events.id),
                               chain = (SELECT chain FROM t WHERE t.id <> events.id),
                               kind = (SELECT kind FROM t WHERE t.id <> events.id)
              WHERE id IN ({a}, {b});"
        ),
    )?;
    check("swapped", &swapped, "reordered", b_seq)?;
    // A forged event, chained as the daemon would, between two real ones.
    let forged = copy_db(&db, dir.path(), "forged")?;
    let (a, a_seq) = exec_row(&forged, &run, "provmark1")?;
    let body = sqlite(&forged, &format!("SELECT body FROM events WHERE id = {a}"))?;
    let mut v: Value = serde_json::from_str(&body)?;
    let prev = v["provenance"]["chain"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let forged_seq = a_seq + 1_000_000;
    v["seq"] = forged_seq.into();
    v["process"]["argv"] = serde_json::json!(["/bin/echo", "forged"]);
    if let Some(o) = v.as_object_mut() {
        o.remove("provenance");
    }
    let canonical = serde_json::to_string(&v)?;
    let mut prev_raw = Vec::new();
    for i in (0..prev.len()).step_by(2) {
        prev_raw.push(u8::from_str_radix(&prev[i..i + 2], 16)?);
    }
    let chain = hex(&Sha256::new()
        .chain_update(&prev_raw)
        .chain_update(canonical.as_bytes())
        .finalize());
    let line = format!(
        "{},\"provenance\":{{\"prev\":\"{prev}\",\"chain\":\"{chain}\"}}}}",
        &canonical[..canonical.len() - 1]
    );
    sqlite(
        &forged,
        &format!(
            "UPDATE events SET id = id + 100000000 WHERE id > {a};
             INSERT INTO events (id, seq, time_ns, kind, run_id, root_id, body, chain)
               SELECT {a} + 1, {forged_seq}, time_ns, kind, run_id, root_id, '{}', '{chain}' FROM events WHERE id = {a};",
            line.replace('\'', "''")
        ),
    )?;
    check("forged", &forged, "inserted", forged_seq)?;
    // Another run's whole record, checkpoints and all, moved under this
    // run's id (the store's run_id column): not this run's record.
    let moved = copy_db(&db, dir.path(), "moved")?;
    let first_other: u64 = sqlite(
        &moved,
        &format!("SELECT seq FROM events WHERE run_id = '{other}' ORDER BY id LIMIT 1"),
    )?
    .parse()?;
    sqlite(
        &moved,
        &format!(
            "DELETE FROM events WHERE run_id = '{run}';
             UPDATE events SET run_id = '{run}', root_id = '{run}' WHERE run_id = '{other}';"
        ),
    )?;
    check("moved", &moved, "inserted", first_other)?;
    Ok(())
}

/// A run that ends while no daemon runs gets its end checkpoint from the
/// next daemon, marked `recovered`; its chain continues across the restart
/// and the record verifies; the report says so.
#[test]
fn a_run_ended_while_the_daemon_was_down_is_checkpointed_at_the_next_start() -> Result<()> {
    let mut d = Daemon::start()?;
    let mut child = d
        .launch_cmd(
            "prov-down",
            &[],
            &[
                "/bin/sh",
                "-c",
                "/bin/echo before >/dev/null; sleep 3; /bin/echo after >/dev/null",
            ],
        )
        .stdout(std::process::Stdio::null())
        .spawn()?;
    let start = d.wait_for(Duration::from_secs(10), |e| {
        e["kind"] == "run.start" && e["run"]["agent"] == "prov-down"
    })?;
    let run = start["run"]["id"].as_str().unwrap_or_default().to_owned();
    d.wait_for(Duration::from_secs(10), |e| {
        e["run"]["id"] == run.as_str()
            && e["kind"] == "process.exec"
            && e["process"]["argv"][1] == "before"
    })?;
    d.stop()?;
    let status = child.wait()?;
    ensure!(status.success(), "the run's command failed: {status}");
    d.resume()?;
    let checkpoint = d.wait_for(Duration::from_secs(15), |e| {
        e["kind"] == "run.checkpoint" && e["run"]["id"] == run.as_str()
    })?;
    ensure!(
        checkpoint["checkpoint"]["reason"] == "end"
            && checkpoint["checkpoint"]["recovered"] == true,
        "the end checkpoint is not marked recovered: {checkpoint}"
    );
    let db = d.state_dir().join("sensor.db").display().to_string();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        // The store writes on its own thread: wait for the end checkpoint.
        let (ok, v) = verify(&d, &[&run, "--db", &db])?;
        if ok && v["runs"][0]["checkpoints"].as_u64() >= Some(1) {
            ensure!(v["runs"][0]["unsigned_tail"] == 0, "{v}");
            break;
        }
        ensure!(Instant::now() < deadline, "the run never verified: {v}");
        std::thread::sleep(Duration::from_millis(300));
    }
    let dir = TempDir::new("provenance-report")?;
    let html = dir.path().join("report.html");
    let (_, out) = run_with_timeout(
        d.sensor()
            .args(["report", &run, "--db", &db, "-o"])
            .arg(&html),
        COMMAND_TIMEOUT,
    )?;
    ensure!(out.status.success(), "report: {}", text(&out.stderr));
    let page = std::fs::read_to_string(&html)?;
    ensure!(
        page.contains("Record integrity") && page.contains("<td class=\"v\">intact</td>"),
        "the report does not say the record is intact"
    );
    Ok(())
}

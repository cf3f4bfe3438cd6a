//! Run tokens (issue 19): a process in a run asks `sensor token` for a JWT
//! naming its run; a third-party verifier (PyJWT with its JWKS client,
//! configured from the daemon's discovery document) accepts it with the
//! right claims and rejects what it must: another audience, an expired
//! token, a flipped byte, a key rotated out. Sub-runs carry the delegation
//! chain and no wider scope; processes outside runs, over-budget runs and a
//! recycled pid get nothing.

use std::fs;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow};
use sensor_tests::jwt::{self, Verdict};
use sensor_tests::pid_race::LateRequest;
use sensor_tests::servers::free_port;
use sensor_tests::{
    COMMAND_TIMEOUT, Checks, Daemon, EVENT_TIMEOUT, TempDir, check, helper_bin, run_with_timeout,
    text,
};
use serde_json::{Value, json};

const HELPER: &str = helper_bin!();

/// A daemon with the metrics listener (which serves the discovery document
/// and the JWKS) and `extra` TOML after `[tokens]`.
fn daemon(extra: &str) -> Result<(Daemon, String)> {
    daemon_with(extra, &[])
}

/// [`daemon`] with more daemon arguments.
fn daemon_with(extra: &str, args: &[&str]) -> Result<(Daemon, String)> {
    let port = free_port()?;
    let config = format!(
        "[metrics]\nlisten = \"127.0.0.1:{port}\"\n[tokens]\ntrust_domain = \"test.example\"\n{extra}"
    );
    let d = Daemon::start_with(Some(&config), args)?;
    let discovery = format!("http://127.0.0.1:{port}/.well-known/openid-configuration");
    Ok((d, discovery))
}

fn read_json(path: &std::path::Path) -> Result<Value> {
    let t = fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    serde_json::from_str(t.trim()).with_context(|| format!("{} is not JSON: {t:?}", path.display()))
}

/// Runs `script` with `/bin/sh -c` as a new run of `agent`.
fn in_run(d: &Daemon, agent: &str, launch: &[&str], script: &str) -> Result<std::process::Output> {
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(agent, launch, &["/bin/sh", "-c", script]),
        COMMAND_TIMEOUT,
    )?;
    Ok(out)
}

/// `sensor token verify ARGS` with the token on stdin.
fn verify_stdin(d: &Daemon, args: &[&str], token: &str) -> Result<std::process::Output> {
    use std::io::Write as _;
    let mut child = d
        .sensor()
        .args(["token", "verify"])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(token.as_bytes())?;
    }
    Ok(child.wait_with_output()?)
}

fn flip_signature_byte(token: &str) -> String {
    let mut b = token.as_bytes().to_vec();
    let i = b.len() - 5;
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn a_runs_token_is_accepted_by_pyjwt_with_its_run_and_delegation_chain() -> Result<()> {
    let dir = TempDir::new("tokens")?;
    let db = dir.path().join("sensor.db");
    let (d, discovery) = daemon_with(
        "[policy.p]\nmode = \"audit\"\nexec.allow = [\"/usr/bin/\"]\n",
        &["--db", &db.display().to_string()],
    )?;
    let p = |name: &str| dir.path().join(name).display().to_string();
    let sensor = d.bin().display().to_string();
    let outer_id = format!("tok-outer-{}", std::process::id());
    let inner_id = format!("tok-inner-{}", std::process::id());
    let script = format!(
        "{sensor} token --aud vault --scope repo:read --scope repo:write --json > {outer}\n\
         {sensor} launch --agent 'coder bot' --run-id {inner_id} --scope repo:read -- /bin/sh -c \
         '{sensor} token --aud vault --scope repo:read --json > {inner}; \
          {sensor} token --aud vault --scope repo:write 2> {wider_err}; echo $? > {wider_rc}'\n\
         {sensor} launch --agent other --scope admin -- /bin/true 2> {launch_err}; echo $? > {launch_rc}\n",
        outer = p("outer.json"),
        inner = p("inner.json"),
        wider_err = p("wider.err"),
        wider_rc = p("wider.rc"),
        launch_err = p("launch.err"),
        launch_rc = p("launch.rc"),
    );
    let out = in_run(
        &d,
        "planner",
        &[
            "--run-id",
            &outer_id,
            "--policy",
            "p",
            "--scope",
            "repo:read",
            "--scope",
            "repo:write",
        ],
        &script,
    )?;
    let mut c = Checks::new();
    check!(c, out.status.success(), "the run: {out:?}");
    let outer = read_json(&dir.path().join("outer.json"))?;
    let inner = read_json(&dir.path().join("inner.json"))?;
    let outer_token = outer["token"].as_str().ok_or_else(|| anyhow!("{outer}"))?;
    let inner_token = inner["token"].as_str().ok_or_else(|| anyhow!("{inner}"))?;

    // PyJWT, configured from the discovery document, accepts both.
    let outer_sub = format!("spiffe://test.example/agent/planner/run/{outer_id}");
    match jwt::verify(&discovery, "vault", outer_token)? {
        Verdict::Accepted(claims) => {
            check!(
                c,
                claims["iss"] == "spiffe://test.example/sensor"
                    && claims["sub"] == outer_sub.as_str()
                    && claims["aud"] == "vault"
                    && claims["run_id"] == outer_id.as_str()
                    && claims["root_run_id"] == outer_id.as_str()
                    && claims.get("parent_run_id").is_none()
                    && claims["depth"] == 0
                    && claims["agent"] == "planner"
                    && claims["principal"] == "root"
                    && claims["policy"] == "p"
                    && claims["policy_hash"].as_str().is_some_and(|h| h.starts_with("sha256:") && h.len() == 71)
                    // `sensor token` is a child of the run's first process.
                    && claims["attribution"] == "inherited"
                    && claims["scope"] == "repo:read repo:write"
                    && claims.get("act").is_none()
                    && claims["exp"].as_u64().zip(claims["iat"].as_u64()).is_some_and(|(e, i)| e - i == 300)
                    && claims["jti"].as_str().is_some_and(|j| !j.is_empty()),
                "the outer run's claims: {claims}"
            );
        }
        Verdict::Rejected(why) => check!(c, false, "PyJWT rejected the outer token: {why}"),
    }
    match jwt::verify(&discovery, "vault", inner_token)? {
        Verdict::Accepted(claims) => {
            check!(
                c,
                claims["sub"]
                    == format!("spiffe://test.example/agent/coder%20bot/run/{inner_id}").as_str()
                    && claims["run_id"] == inner_id.as_str()
                    && claims["parent_run_id"] == outer_id.as_str()
                    && claims["root_run_id"] == outer_id.as_str()
                    && claims["depth"] == 1
                    && claims["agent"] == "coder bot"
                    && claims["policy"] == "p"
                    && claims["scope"] == "repo:read"
                    && claims["act"] == json!({ "sub": outer_sub }),
                "the sub-run's claims (act chain, narrowed scope): {claims}"
            );
        }
        Verdict::Rejected(why) => check!(c, false, "PyJWT rejected the inner token: {why}"),
    }
    // The same verifier rejects another audience and a flipped byte.
    let other = jwt::verify(&discovery, "someone-else", outer_token)?;
    check!(
        c,
        matches!(&other, Verdict::Rejected(why) if why.starts_with("InvalidAudienceError")),
        "another audience: {other:?}"
    );
    let flipped = jwt::verify(&discovery, "vault", &flip_signature_byte(outer_token))?;
    check!(
        c,
        matches!(&flipped, Verdict::Rejected(why) if why.starts_with("InvalidSignatureError")),
        "a flipped byte: {flipped:?}"
    );
    // `sensor token verify` agrees.
    // (From stdin: a token in argv would be in every process.exec event.)
    let v = verify_stdin(&d, &["--aud", "vault"], outer_token)?;
    check!(
        c,
        v.status.success() && text(&v.stdout).contains(&outer_id),
        "sensor token verify: {v:?}"
    );
    let v = verify_stdin(&d, &[], &flip_signature_byte(outer_token))?;
    check!(
        c,
        v.status.code() == Some(1) && text(&v.stderr).contains("does not verify"),
        "sensor token verify of a flipped byte: {v:?}"
    );
    // No scope wider than the run's, and no sub-run wider than its parent.
    let wider = fs::read_to_string(dir.path().join("wider.err")).unwrap_or_default();
    let wider_rc = fs::read_to_string(dir.path().join("wider.rc")).unwrap_or_default();
    check!(
        c,
        wider_rc.trim() == "1" && wider.contains("scope \"repo:write\" was not granted to run"),
        "a sub-run asking for its parent's wider scope: rc {wider_rc:?}, {wider:?}"
    );
    let launch = fs::read_to_string(dir.path().join("launch.err")).unwrap_or_default();
    let launch_rc = fs::read_to_string(dir.path().join("launch.rc")).unwrap_or_default();
    check!(
        c,
        launch_rc.trim() != "0" && launch.contains("not held by the parent run"),
        "a sub-run launched with a scope its parent lacks: rc {launch_rc:?}, {launch:?}"
    );
    // Each issued token is an event of its run, without the token.
    let issued = d.wait_events(EVENT_TIMEOUT, |evs| {
        evs.iter().filter(|e| e["kind"] == "token.issued").count() >= 2
    })?;
    for (token_json, run_id) in [(&outer, &outer_id), (&inner, &inner_id)] {
        let e = issued.iter().find(|e| {
            e["kind"] == "token.issued" && e["token"]["jti"] == token_json["claims"]["jti"]
        });
        check!(
            c,
            e.is_some_and(|e| e["run"]["id"] == run_id.as_str()
                && e["token"]["aud"] == "vault"
                && e["token"]["kid"].is_string()
                && e["token"]["exp"].is_string()
                && e["process"]["pid"].is_u64()),
            "token.issued of {run_id}: {e:?}"
        );
    }
    // (The verifier's own exec carries it in argv, outside any run.)
    let leaked: Vec<&Value> = issued
        .iter()
        .filter(|e| e["kind"] == "token.issued" || e["run"]["id"] == outer_id.as_str())
        .filter(|e| {
            let line = e.to_string();
            line.contains(outer_token) || line.contains(inner_token)
        })
        .collect();
    check!(c, leaked.is_empty(), "no event carries a token: {leaked:?}");
    // The report lists both tokens under the run tree (the store writes
    // on its own thread: poll).
    let page = dir.path().join("report.html");
    let deadline = Instant::now() + EVENT_TIMEOUT;
    let mut html = String::new();
    while Instant::now() < deadline {
        let (_, out) = run_with_timeout(
            d.sensor()
                .args(["report", &outer_id, "-o"])
                .arg(&page)
                .arg("--db")
                .arg(&db),
            COMMAND_TIMEOUT,
        )?;
        html = fs::read_to_string(&page).unwrap_or_default();
        let jtis = [&outer["claims"]["jti"], &inner["claims"]["jti"]];
        if out.status.success()
            && jtis
                .iter()
                .all(|j| j.as_str().is_some_and(|j| html.contains(j)))
        {
            break;
        }
        thread::sleep(Duration::from_millis(300));
    }
    let section = html
        .split(">Run tokens</h2>")
        .nth(1)
        .and_then(|rest| rest.split("<h2").next())
        .unwrap_or_default();
    check!(
        c,
        section.contains(&outer_id)
            && section.contains(&inner_id)
            && section.contains("repo:read repo:write")
            && section.contains("vault"),
        "the report's run tokens: {section}"
    );
    // The JWKS and the discovery document are served.
    let (_, jwks) = run_with_timeout(d.sensor().args(["token", "jwks"]), COMMAND_TIMEOUT)?;
    let jwks: Value = serde_json::from_slice(&jwks.stdout).unwrap_or(Value::Null);
    check!(
        c,
        jwks["keys"][0]["kty"] == "OKP" && jwks["keys"][0]["crv"] == "Ed25519",
        "sensor token jwks: {jwks}"
    );
    c.finish()
}

#[test]
fn expired_tokens_and_rotated_out_keys_are_rejected_by_pyjwt() -> Result<()> {
    let (d, discovery) = daemon("rotate = \"15s\"\n")?;
    let dir = TempDir::new("tokens-rotate")?;
    let t1_path = dir.path().join("t1");
    let sensor = d.bin().display().to_string();
    let out = in_run(
        &d,
        "short",
        &[],
        &format!(
            "{sensor} token --aud vault --ttl 1s > {}",
            t1_path.display()
        ),
    )?;
    let mut c = Checks::new();
    check!(c, out.status.success(), "the run: {out:?}");
    let t1 = fs::read_to_string(&t1_path)?.trim().to_owned();
    let kid_of = |token: &str| -> Option<String> {
        let header = token.split('.').next()?;
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(header)
            .ok()?;
        let v: Value = serde_json::from_slice(&bytes).ok()?;
        v["kid"].as_str().map(str::to_owned)
    };
    let kid1 = kid_of(&t1).ok_or_else(|| anyhow!("no kid in {t1}"))?;
    thread::sleep(Duration::from_millis(2100));
    let expired = jwt::verify(&discovery, "vault", &t1)?;
    check!(
        c,
        matches!(&expired, Verdict::Rejected(why) if why.starts_with("ExpiredSignatureError")),
        "an expired token: {expired:?}"
    );
    // The key rotates (15 s after the daemon made it: far enough that the
    // expiry above is judged with the key still published, even on a slow
    // start) and, its last token expired, leaves the JWKS.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut jwks = Value::Null;
    while Instant::now() < deadline {
        let (_, out) = run_with_timeout(d.sensor().args(["token", "jwks"]), COMMAND_TIMEOUT)?;
        jwks = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let kids: Vec<&str> = jwks["keys"]
            .as_array()
            .map(|k| k.iter().filter_map(|k| k["kid"].as_str()).collect())
            .unwrap_or_default();
        if !kids.is_empty() && !kids.contains(&kid1.as_str()) {
            break;
        }
        thread::sleep(Duration::from_millis(200));
    }
    check!(
        c,
        jwks["keys"]
            .as_array()
            .is_some_and(|k| !k.is_empty() && k.iter().all(|k| k["kid"] != kid1.as_str())),
        "the rotated-out key {kid1} leaves the JWKS: {jwks}"
    );
    let rotated = jwt::verify(&discovery, "vault", &t1)?;
    check!(
        c,
        matches!(&rotated, Verdict::Rejected(why) if why.starts_with("PyJWKClientError")),
        "a token of a rotated-out key: {rotated:?}"
    );
    // The new key signs, and its tokens verify.
    let t2_path = dir.path().join("t2");
    in_run(
        &d,
        "short",
        &[],
        &format!("{sensor} token --aud vault > {}", t2_path.display()),
    )?;
    let t2 = fs::read_to_string(&t2_path)?.trim().to_owned();
    check!(c, kid_of(&t2).is_some_and(|k| k != kid1), "a new key signs");
    let fresh = jwt::verify(&discovery, "vault", &t2)?;
    check!(
        c,
        matches!(fresh, Verdict::Accepted(_)),
        "the new key's token: {fresh:?}"
    );
    // The key file is private.
    use std::os::unix::fs::PermissionsExt as _;
    let mode = fs::metadata(d.state_dir().join("token_keys.json"))?
        .permissions()
        .mode();
    check!(c, mode & 0o777 == 0o600, "token_keys.json mode {mode:o}");
    c.finish()
}

#[test]
fn no_token_outside_a_run_past_the_budget_for_an_expired_sub_run_or_a_recycled_pid() -> Result<()> {
    let (d, _) = daemon("max_per_run = 2\n")?;
    let dir = TempDir::new("tokens-refused")?;
    let sensor = d.bin().display().to_string();
    let mut c = Checks::new();
    // Outside any run.
    let (_, out) = run_with_timeout(
        d.sensor().args(["token", "--aud", "vault"]),
        COMMAND_TIMEOUT,
    )?;
    check!(
        c,
        out.status.code() == Some(1) && text(&out.stderr).contains("is not in an agent run"),
        "outside a run: {out:?}"
    );
    // Past the run's budget.
    let rc = dir.path().join("rc");
    let err = dir.path().join("err");
    let out = in_run(
        &d,
        "budget",
        &[],
        &format!(
            "{sensor} token --aud a >/dev/null && {sensor} token --aud a >/dev/null && \
             {sensor} token --aud a 2> {err}; echo $? > {rc}",
            err = err.display(),
            rc = rc.display()
        ),
    )?;
    let err_text = fs::read_to_string(&err).unwrap_or_default();
    check!(
        c,
        out.status.success()
            && fs::read_to_string(&rc).unwrap_or_default().trim() == "1"
            && err_text.contains("max_per_run"),
        "the third token of a run with max_per_run = 2: {err_text:?}"
    );
    // A sub-run that expired: its process is back in the parent run, and
    // its token names the parent, never the expired sub-run.
    let parent_id = format!("tok-parent-{}", std::process::id());
    let child_id = format!("tok-child-{}", std::process::id());
    let after = dir.path().join("after.json");
    in_run(
        &d,
        "parent",
        &["--run-id", &parent_id],
        &format!(
            "{sensor} launch --agent child --run-id {child_id} --ttl 1s -- /bin/sh -c \
             'sleep 3; {sensor} token --aud a --json > {}'",
            after.display()
        ),
    )?;
    let after = read_json(&after).unwrap_or(Value::Null);
    check!(
        c,
        after["claims"]["run_id"] == parent_id.as_str() && after["claims"]["depth"] == 0,
        "after its sub-run expired, a process gets its parent run's token: {after}"
    );
    // A client outside runs sends its request after exiting; a process of
    // a run takes its pid. The token must not be that run's.
    let victim = format!("tok-victim-{}", std::process::id());
    let late = LateRequest::open(
        HELPER,
        d.socket(),
        &json!({"op": "token", "aud": "thief"}),
        dir.path(),
    )?;
    let pid = late.pid;
    let mut thief = d
        .launch_cmd(
            "victim",
            &["--run-id", &victim],
            &[HELPER, "at-pid", &pid.to_string(), "/usr/bin/sleep", "30"],
        )
        .spawn()?;
    // The process at `pid` is in the victim's run before the request goes.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let a = d.request(&json!({"op": "attest", "pid": pid}))?;
        if a["run"]["id"] == victim.as_str() {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    let got = late.send()?;
    check!(
        c,
        got["result"] == "error" && got.get("token").is_none(),
        "a token request whose sender's pid was recycled by a run's process: {got}"
    );
    let _ = thief.kill();
    let _ = thief.wait();
    let issued =
        d.matching(|e| e["kind"] == "token.issued" && e["run"]["id"] == victim.as_str())?;
    check!(
        c,
        issued.is_empty(),
        "no token.issued for the victim run: {issued:?}"
    );
    c.finish()
}

/// Token issuance latency over 1,000 requests from one run (each a new
/// connection, as `sensor token` makes): printed for the record, and held
/// to a bound a debug build meets with room (the target, p99 ≤ 1 ms, is
/// for the release build: see the issue's note).
#[test]
fn token_issuance_latency() -> Result<()> {
    let (d, _) = daemon("max_per_run = 1000\n")?;
    let script = format!(
        r#"
import socket, time, json
sock = {sock:?}
lat = []
for i in range(1000):
    t = time.perf_counter()
    s = socket.socket(socket.AF_UNIX)
    s.connect(sock)
    s.sendall(b'{{"op":"token","aud":"bench"}}\n')
    line = s.makefile().readline()
    s.close()
    lat.append(time.perf_counter() - t)
    assert '"token"' in line, line
lat.sort()
print(json.dumps({{"p50_ms": lat[499] * 1e3, "p99_ms": lat[989] * 1e3, "max_ms": lat[-1] * 1e3}}))
"#,
        sock = d.socket().display().to_string()
    );
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd("bench", &[], &["/usr/bin/python3", "-c", &script]),
        Duration::from_secs(120),
    )?;
    let figures: Value =
        serde_json::from_str(text(&out.stdout).trim()).with_context(|| format!("{out:?}"))?;
    eprintln!("token issuance latency: {figures}");
    let mut c = Checks::new();
    check!(
        c,
        figures["p99_ms"].as_f64().is_some_and(|p| p < 50.0),
        "p99 under 50 ms (debug build): {figures}"
    );
    c.finish()
}

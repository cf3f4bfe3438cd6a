//! Fixtures of the enforcement tests, shared by `tests/enforce.rs` and the
//! attack tests (`tests/adversary*.rs`): policy configs, a denied binary, a
//! run driven line by line ([`Puppet`]), and checks on the events of a denial.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde_json::Value;

use crate::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, canonical, canonical_str, check, compact, dump,
    run_with_timeout, sensor_bin, text,
};

/// Bound for one scripted run (`sensor launch ... -- /bin/sh -c SCRIPT`).
pub const RUN_TIMEOUT: Duration = Duration::from_secs(20);
/// The rule of a denied exec.
pub const EXEC_NO_MATCH: &str = "exec.allow (no rule matches)";
/// The rule of a denied connect.
pub const CONNECT_NO_MATCH: &str = "connect.allow (no rule matches)";
/// Exit status a shell reports for a child killed by SIGKILL.
pub const KILLED: i32 = 128 + libc::SIGKILL;

/// What the shell scripts of these tests run besides the denied binary;
/// every enforce policy here allows them (plus the directories of the
/// `sensor` and helper binaries), never `/usr/bin/touch` or the loader.
pub const TOOLS: &[&str] = &[
    "/usr/bin/dash",
    "/usr/bin/true",
    "/usr/bin/env",
    "/usr/bin/nohup",
    "/usr/bin/xargs",
    "/usr/bin/find",
    "/usr/bin/cp",
    "/usr/bin/ln",
    "/usr/bin/setsid",
    "/usr/bin/sleep",
];

// ----- configs -----

/// A TOML basic string.
pub fn q(s: &str) -> String {
    Value::String(s.to_owned()).to_string()
}

pub fn toml_list<S: AsRef<str>>(items: &[S]) -> String {
    let items: Vec<String> = items.iter().map(|s| q(s.as_ref())).collect();
    format!("[{}]", items.join(", "))
}

/// `[policy.NAME]` with mode, exec.allow, connect.allow, then `extra` lines.
pub fn policy_toml<S: AsRef<str>, T: AsRef<str>>(
    name: &str,
    mode: &str,
    exec: &[S],
    connect: &[T],
    extra: &str,
) -> String {
    format!(
        "[policy.{name}]\nmode = {}\nexec.allow = {}\nconnect.allow = {}\n{extra}",
        q(mode),
        toml_list(exec),
        toml_list(connect)
    )
}

/// The (canonical) directories of the `sensor` binary and of the helper, as
/// directory rules.
pub fn bin_dirs() -> Result<Vec<String>> {
    let mut dirs = Vec::new();
    for bin in [sensor_bin()?, crate::helper_path()] {
        let bin = canonical(&bin)?;
        let dir = bin
            .parent()
            .ok_or_else(|| anyhow!("{} has no directory", bin.display()))?;
        let mut dir = dir
            .to_str()
            .ok_or_else(|| anyhow!("{} is not UTF-8", dir.display()))?
            .to_owned();
        dir.push('/');
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    Ok(dirs)
}

/// [`TOOLS`] and [`bin_dirs`]: what a run of these tests needs.
pub fn base_exec() -> Result<Vec<String>> {
    let mut rules: Vec<String> = TOOLS.iter().map(ToString::to_string).collect();
    rules.extend(bin_dirs()?);
    Ok(rules)
}

/// Resolved paths of the binaries [`base_exec`] allows by name.
pub fn tool_exes() -> Result<Vec<String>> {
    let mut exes = TOOLS
        .iter()
        .map(canonical_str)
        .collect::<Result<Vec<_>>>()?;
    exes.push(canonical_str(sensor_bin()?)?);
    exes.push(canonical_str(crate::helper_path())?);
    Ok(exes)
}

// ----- the denied binary -----

/// A temp dir with `denied/touch` (a copy of /usr/bin/touch that no policy
/// allows) and `out/` (where the files it would create go).
pub struct Fixture {
    pub tmp: TempDir,
    pub denied: String,
    pub out: PathBuf,
}

impl Fixture {
    pub fn new(tag: &str) -> Result<Self> {
        let tmp = TempDir::new(tag)?;
        let dir = tmp.path().join("denied");
        fs::create_dir_all(&dir)?;
        let denied = dir.join("touch");
        fs::copy("/usr/bin/touch", &denied)
            .with_context(|| format!("copy /usr/bin/touch to {}", denied.display()))?;
        let out = tmp.path().join("out");
        fs::create_dir_all(&out)?;
        let denied = denied
            .to_str()
            .ok_or_else(|| anyhow!("temp path is not UTF-8"))?
            .to_owned();
        Ok(Self { tmp, denied, out })
    }

    pub fn dir(&self) -> &Path {
        self.tmp.path()
    }

    /// `<tmp>/<rel>` as a string.
    pub fn at(&self, rel: &str) -> String {
        self.tmp.path().join(rel).display().to_string()
    }

    /// `<tmp>/out/<name>`: a file the denied binary would create.
    pub fn target(&self, name: &str) -> PathBuf {
        self.out.join(name)
    }
}

pub fn s(p: &Path) -> String {
    p.display().to_string()
}

/// The dynamic loader of this machine (x86-64 or aarch64).
pub fn dynamic_loader() -> Result<&'static str> {
    ["/lib64/ld-linux-x86-64.so.2", "/lib/ld-linux-aarch64.so.1"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("no dynamic loader found at a known path"))
}

/// Writes an executable file.
pub fn write_exe(path: &Path, body: &str) -> Result<()> {
    fs::write(path, body).with_context(|| format!("write {}", path.display()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

// ----- running things in a run -----

/// `sensor launch --agent AGENT --policy POLICY -- /bin/sh -c SCRIPT`.
pub fn launch_sh(d: &Daemon, agent: &str, policy: &str, script: &str) -> Result<Output> {
    let (_, out) = run_with_timeout(
        &mut d.launch_cmd(agent, &["--policy", policy], &["/bin/sh", "-c", script]),
        RUN_TIMEOUT,
    )?;
    Ok(out)
}

/// `sensor policy reload` against the daemon.
pub fn reload(d: &Daemon) -> Result<Output> {
    let (_, out) = run_with_timeout(
        d.sensor()
            .args(["policy", "reload", "--socket"])
            .arg(d.socket()),
        Duration::from_secs(20),
    )?;
    Ok(out)
}

/// The `NAME: VALUE` lines a script printed.
pub fn outputs(out: &Output) -> BTreeMap<String, String> {
    text(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

pub fn describe(out: &Output) -> String {
    format!(
        "{}; stdout {:?}; stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    )
}

/// A run that stays alive and runs, one at a time, the shell commands the
/// test sends it (so a test can act in a live run before and after some
/// change to the daemon).
pub struct Puppet {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
    stderr_path: PathBuf,
}

impl Puppet {
    /// `sensor launch --agent AGENT --policy POLICY -- /bin/sh -c LOOP`:
    /// reads a command per line from stdin, evals it (its output goes to
    /// `<dir>/puppet-AGENT.log`), answers `done $?`.
    pub fn start(d: &Daemon, agent: &str, policy: &str, dir: &Path) -> Result<Self> {
        let log = dir.join(format!("puppet-{agent}.log"));
        let stderr_path = dir.join(format!("puppet-{agent}.stderr"));
        let script = format!(
            "echo ready\nwhile IFS= read -r cmd; do\n  eval \"$cmd\" >>{} 2>&1\n  echo \"done $?\"\ndone\n",
            s(&log)
        );
        let mut child = d
            .launch_cmd(agent, &["--policy", policy], &["/bin/sh", "-c", &script])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path)?)
            .spawn()
            .context("spawn the puppet run")?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("no stdout pipe"))?;
        let stdin = child.stdin.take();
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let p = Self {
            child,
            stdin,
            lines: rx,
            stderr_path,
        };
        let first = p.next_line(RUN_TIMEOUT)?;
        ensure!(first == "ready", "the puppet run said {first:?}");
        Ok(p)
    }

    pub fn stderr(&self) -> String {
        fs::read(&self.stderr_path)
            .map(|b| text(&b))
            .unwrap_or_default()
    }

    pub fn next_line(&self, timeout: Duration) -> Result<String> {
        match self.lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(mpsc::RecvTimeoutError::Timeout) => bail!(
                "the puppet run did not answer within {timeout:?}; its stderr: {:?}",
                self.stderr()
            ),
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!(
                "the puppet run's shell exited; its stderr: {:?}",
                self.stderr()
            ),
        }
    }

    /// Runs `cmd` in the run's shell; returns its exit status (`$?`).
    pub fn run(&mut self, cmd: &str) -> Result<i32> {
        ensure!(!cmd.contains('\n'), "one line per command");
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| anyhow!("the puppet was finished"))?;
        writeln!(stdin, "{cmd}").context("write to the puppet run")?;
        stdin.flush()?;
        let line = self.next_line(Duration::from_secs(15))?;
        line.strip_prefix("done ")
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("the puppet run answered {line:?} to {cmd:?}"))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes its stdin and waits (10 s at most) for the shell to exit.
    pub fn finish(mut self) -> Result<()> {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.child.try_wait()?.is_none() {
            ensure!(
                Instant::now() < deadline,
                "the puppet run did not exit after its stdin closed"
            );
            thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for Puppet {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ----- events -----

/// Whether some argv element is exactly `needle` (a substring match would
/// also find the `sensor launch` and `sh -c` whose script names it).
pub fn argv_eq(e: &Value, needle: &str) -> bool {
    e["process"]["argv"]
        .as_array()
        .is_some_and(|a| a.iter().any(|x| x == needle))
}

pub fn is_exec_ok(e: &Value) -> bool {
    e["kind"] == "process.exec" && e["exec"]["result"] == "ok"
}

/// Every process.exec (any result) with `needle` in an argv element.
pub fn execs_with(evs: &[Value], needle: &str) -> Vec<Value> {
    evs.iter()
        .filter(|e| e["kind"] == "process.exec" && argv_eq(e, needle))
        .cloned()
        .collect()
}

/// The first successful exec with `needle` in argv.
pub fn exec_with<'a>(evs: &'a [Value], needle: &str) -> Option<&'a Value> {
    evs.iter().find(|e| is_exec_ok(e) && argv_eq(e, needle))
}

/// The first successful exec with `needle` in argv that the policy denied.
pub fn denied_exec<'a>(evs: &'a [Value], needle: &str) -> Option<&'a Value> {
    evs.iter()
        .find(|e| is_exec_ok(e) && argv_eq(e, needle) && e["policy"]["verdict"] == "deny")
}

/// The process.exit of the process of `e`.
pub fn exit_of<'a>(evs: &'a [Value], e: &Value) -> Option<&'a Value> {
    let key = &e["process"]["key"];
    evs.iter()
        .find(|x| x["kind"] == "process.exit" && &x["process"]["key"] == key)
}

/// The event right after `e` (seq + 1) when it is a policy.violation.
pub fn violation_after<'a>(evs: &'a [Value], e: &Value) -> Option<&'a Value> {
    let seq = e["seq"].as_u64()?;
    evs.iter()
        .find(|v| v["kind"] == "policy.violation" && v["seq"].as_u64() == Some(seq + 1))
}

/// `e` carries `policy = {name, verdict: deny, rule, enforced, version}`
/// (`rule: None`: any rule).
pub fn check_deny(
    c: &mut Checks,
    what: &str,
    e: &Value,
    name: &str,
    rule: Option<&str>,
    enforced: bool,
) {
    let p = &e["policy"];
    check!(
        c,
        p["name"] == name
            && p["verdict"] == "deny"
            && p["enforced"] == enforced
            && p["version"].as_u64().is_some_and(|v| v >= 1),
        "{what}: want policy {{name {name:?}, verdict \"deny\", enforced {enforced}, version >= 1}}: {}",
        compact(e)
    );
    if let Some(rule) = rule {
        check!(
            c,
            p["rule"] == rule,
            "{what}: want policy.rule {rule:?}: {}",
            compact(e)
        );
    }
}

/// `e` carries `policy = {name, verdict: allow, rule, enforced: false}`.
pub fn check_allow(c: &mut Checks, what: &str, e: &Value, name: &str, rule: &str) {
    let p = &e["policy"];
    check!(
        c,
        p["name"] == name
            && p["verdict"] == "allow"
            && p["rule"] == rule
            && p["enforced"] == false
            && p["version"].as_u64().is_some_and(|v| v >= 1),
        "{what}: want policy {{name {name:?}, verdict \"allow\", rule {rule:?}, enforced false}}: {}",
        compact(e)
    );
}

/// A policy.violation follows `e` (seq + 1) with the same run, process and
/// policy.
pub fn check_violation(c: &mut Checks, what: &str, evs: &[Value], e: &Value) {
    match violation_after(evs, e) {
        Some(v) => check!(
            c,
            v["process"]["key"] == e["process"]["key"]
                && v["policy"] == e["policy"]
                && v["run"] == e["run"],
            "{what}: the policy.violation at seq + 1 does not repeat the denial's run, process and policy:\n  violation {}\n  denial    {}",
            compact(v),
            compact(e)
        ),
        None => c.fail(format!(
            "{what}: no policy.violation right after (seq + 1) the denial {}",
            compact(e)
        )),
    }
}

/// A killed exec attempt: `file` (what the denied binary would create) does
/// not exist; the successful process.exec with `needle` in argv carries an
/// enforced deny of `policy` (with `rule`, when given), a policy.violation
/// follows, and the process died of SIGKILL.
pub fn check_killed(
    c: &mut Checks,
    what: &str,
    evs: &[Value],
    needle: &str,
    file: &Path,
    policy: &str,
    rule: Option<&str>,
) {
    check!(
        c,
        !file.exists(),
        "{what}: {} exists: the denied binary ran",
        file.display()
    );
    let Some(e) = denied_exec(evs, needle) else {
        c.fail(format!(
            "{what}: no successful process.exec with {needle:?} in argv has policy.verdict \"deny\"; the execs with it:\n{}",
            dump(&execs_with(evs, needle))
        ));
        return;
    };
    check_deny(c, what, e, policy, rule, true);
    check_violation(c, what, evs, e);
    match exit_of(evs, e) {
        Some(x) => check!(
            c,
            x["process"]["exit_signal"] == libc::SIGKILL && x["process"]["exit_code"].is_null(),
            "{what}: the denied process did not die of SIGKILL: {}",
            compact(x)
        ),
        None => c.fail(format!(
            "{what}: no process.exit for the denied process {}",
            compact(e)
        )),
    }
}

/// Waits (EVENT_TIMEOUT at most, in all) until every needle has a denied
/// exec and its process.exit; then fails only if the daemon died (the
/// checks that follow say what is missing).
pub fn wait_denied(d: &Daemon, needles: &[String]) -> Result<()> {
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            needles.iter().all(|n| {
                denied_exec(evs, n)
                    .is_some_and(|e| exit_of(evs, e).is_some() && violation_after(evs, e).is_some())
            })
        },
        |_| String::new(),
    );
    d.check_alive()
}

/// Every successful exec in a run of a binary from [`tool_exes`] was
/// allowed: the test's own tools are not what the policy blocked.
pub fn check_tools_allowed(c: &mut Checks, evs: &[Value]) -> Result<()> {
    let tools = tool_exes()?;
    for e in evs {
        if is_exec_ok(e)
            && !e["run"].is_null()
            && e["process"]["exe"]
                .as_str()
                .is_some_and(|x| tools.iter().any(|t| t == x))
        {
            check!(
                c,
                e["policy"]["verdict"] == "allow",
                "the policy denied a tool this test needs (the test's allow-list or the exec rules are wrong): {}",
                compact(e)
            );
        }
    }
    Ok(())
}

// ----- network -----

/// A non-blocking TCP listener on `ip:0`, and its port.
pub fn listen(ip: &str) -> Result<(TcpListener, u16)> {
    let l = TcpListener::bind((ip, 0)).with_context(|| format!("listen on {ip}:0"))?;
    l.set_nonblocking(true)?;
    let port = l.local_addr()?.port();
    Ok((l, port))
}

/// Non-blocking TCP listeners on `a:PORT` and `b:PORT`, same port.
pub fn listen_pair(a: &str, b: &str) -> Result<(TcpListener, TcpListener, u16)> {
    for _ in 0..50 {
        let (la, port) = listen(a)?;
        if let Ok(lb) = TcpListener::bind((b, port)) {
            lb.set_nonblocking(true)?;
            return Ok((la, lb, port));
        }
    }
    bail!("no port free on both {a} and {b}")
}

/// Whether a connection waits in the accept queue of `l`.
pub fn accepted(l: &TcpListener) -> Result<bool> {
    match l.accept() {
        Ok(_) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
        Err(e) => Err(e).context("accept"),
    }
}

/// The first network.connect of a run to `ip:port` over `transport`.
pub fn connect_event<'a>(
    evs: &'a [Value],
    transport: &str,
    ip: &str,
    port: u16,
) -> Option<&'a Value> {
    evs.iter().find(|e| {
        e["kind"] == "network.connect"
            && !e["run"].is_null()
            && e["network"]["transport"] == transport
            && e["network"]["dst_ip"] == ip
            && e["network"]["dst_port"] == port
    })
}

/// The first network.connect of `agent`'s run to `port`, waited for up to
/// [`EVENT_TIMEOUT`].
pub fn wait_run_connect(d: &Daemon, agent: &str, port: u16) -> Result<Value> {
    d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "network.connect"
            && e["run"]["agent"] == agent
            && e["network"]["dst_port"] == port
    })
}

pub fn run_connects(evs: &[Value]) -> Vec<Value> {
    evs.iter()
        .filter(|e| e["kind"] == "network.connect" && !e["run"].is_null())
        .cloned()
        .collect()
}

/// The network.connect of a denied connect(2): result "error", errno 1
/// (EPERM), an enforced deny, then a policy.violation.
pub fn check_denied_connect(
    c: &mut Checks,
    what: &str,
    evs: &[Value],
    (transport, ip, port): (&str, &str, u16),
    policy: &str,
) {
    let Some(e) = connect_event(evs, transport, ip, port) else {
        c.fail(format!(
            "{what}: no network.connect {transport} to {ip} port {port}; the network.connect events of runs:\n{}",
            dump(&run_connects(evs))
        ));
        return;
    };
    let n = &e["network"];
    check!(
        c,
        n["result"] == "error"
            && n["errno"] == libc::EPERM
            && (n["error"].is_null() || n["error"] == "EPERM"),
        "{what}: a blocked connect has result \"error\", errno 1 (EPERM): {}",
        compact(e)
    );
    check_deny(c, what, e, policy, Some(CONNECT_NO_MATCH), true);
    check_violation(c, what, evs, e);
}

// ----- pins, unload, tamper -----

/// Every path under the pin dir, relative and sorted (maps, `links/`, each
/// link pin).
pub fn pin_listing(pin_dir: &Path) -> Vec<String> {
    fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if let Ok(rel) = path.strip_prefix(root) {
                out.push(rel.display().to_string());
            }
            if path.is_dir() {
                walk(&path, root, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(pin_dir, pin_dir, &mut out);
    out.sort();
    out
}

/// The programs that act on processes in runs only: the daemon detaches them
/// (status: `standby`) while no process is in a run, and attaches and pins
/// them before one is (`Needed::InRuns` in sensor/src/loader/programs.rs).
pub const RUN_ONLY_PROGRAMS: [&str; 16] = [
    "snsr_sendmsg4",
    "snsr_sendmsg6",
    "snsr_conn_unix",
    "snsr_send_unix",
    "snsr_openat_out",
    "snsr_opena2_out",
    "snsr_open_out",
    "snsr_sock_new",
    "snsr_socket",
    "snsr_listen_out",
    "snsr_accept4_x",
    "snsr_accept_out",
    "snsr_clone_out",
    "snsr_clone3_out",
    "snsr_fork_out",
    "snsr_vfork_out",
];

/// [`pin_listing`] without the links of [`RUN_ONLY_PROGRAMS`], which come
/// and go with runs (they stay 10 s after the last one ends).
pub fn pin_listing_but_run_only(pin_dir: &Path) -> Vec<String> {
    pin_listing(pin_dir)
        .into_iter()
        .filter(|p| {
            !RUN_ONLY_PROGRAMS
                .iter()
                .any(|name| p.strip_prefix("links/") == Some(name))
        })
        .collect()
}

/// `sensor unload --pin-dir <the daemon's pin dir> [extra..]`, as an
/// operator would type it: no `--socket`. The config it reads names a
/// socket nobody listens on, so only the pin dir can tell that a daemon
/// owns it (a daemon on the host's default socket changes nothing).
pub fn unload(d: &Daemon, extra: &[&str]) -> Result<Output> {
    let config = d.dir().join("unload.toml");
    fs::write(
        &config,
        format!(
            "[daemon]\nsocket = {}\n",
            q(&s(&d.dir().join("nobody-listens.sock")))
        ),
    )?;
    let mut cmd = std::process::Command::new(d.bin());
    cmd.arg("unload")
        .arg("--pin-dir")
        .arg(d.pin_dir())
        .arg("--config")
        .arg(&config)
        .args(extra)
        .env_remove("SENSOR_SOCKET")
        .env_remove("SENSOR_CONFIG")
        .env_remove("SENSOR_PIN_DIR");
    Ok(run_with_timeout(&mut cmd, Duration::from_secs(30))?.1)
}

/// `sensor status --socket <its socket> --pin-dir <its pin dir>
/// --state-dir <its state dir> [--json]`.
pub fn status_with_pins(d: &Daemon, json: bool) -> Result<Output> {
    let mut cmd = std::process::Command::new(d.bin());
    cmd.arg("status")
        .arg("--socket")
        .arg(d.socket())
        .arg("--pin-dir")
        .arg(d.pin_dir())
        .arg("--state-dir")
        .arg(d.state_dir())
        .env_remove("SENSOR_SOCKET")
        .env_remove("SENSOR_PIN_DIR")
        .env_remove("SENSOR_STATE_DIR");
    if json {
        cmd.arg("--json");
    }
    Ok(run_with_timeout(&mut cmd, Duration::from_secs(20))?.1)
}

/// The highest `seq` written so far (0: none): events after an action are
/// those with a greater seq.
pub fn last_seq(d: &Daemon) -> Result<u64> {
    d.with_events(|evs| {
        evs.iter()
            .filter_map(|e| e["seq"].as_u64())
            .max()
            .unwrap_or(0)
    })
}

/// Size of the daemon's events file.
pub fn events_bytes(d: &Daemon) -> u64 {
    fs::metadata(d.events_path()).map_or(0, |m| m.len())
}

/// `policy.version` of the last denied exec with `needle` in argv, read from
/// the raw events file (an exec loop writes hundreds of thousands of lines;
/// the harness would parse them all).
pub fn last_deny_version(d: &Daemon, needle: &str) -> Result<Option<u64>> {
    let raw = fs::read(d.events_path())?;
    let raw = String::from_utf8_lossy(&raw);
    let quoted = q(needle);
    let Some(line) = raw
        .lines()
        .rev()
        .find(|l| l.contains("\"process.exec\"") && l.contains(&quoted) && l.contains("\"deny\""))
    else {
        return Ok(None);
    };
    let e: Value = serde_json::from_str(line).context("an events line")?;
    Ok(e["policy"]["version"].as_u64())
}

/// The integrity check's `sensor.tamper` events after `seq` (not the file
/// watch's, which name the same pins when a test removes them: see
/// `tamper_files.rs`).
pub fn tampers_after(evs: &[Value], seq: u64) -> Vec<Value> {
    evs.iter()
        .filter(|e| {
            e["kind"] == "sensor.tamper"
                && e["tamper"]["method"] == "integrity"
                && e["seq"].as_u64().is_some_and(|s| s > seq)
        })
        .cloned()
        .collect()
}

/// Waits (`timeout` at most) for a `sensor.tamper` after `seq` that `pred`
/// accepts; returns it and how long it took from the call.
pub fn wait_tamper(
    d: &Daemon,
    seq: u64,
    timeout: Duration,
    pred: impl Fn(&Value) -> bool,
) -> Result<(Value, Duration)> {
    let started = Instant::now();
    d.wait_until(
        timeout,
        |evs| tampers_after(evs, seq).iter().any(&pred),
        |evs| {
            format!(
                "no matching sensor.tamper after seq {seq}; the sensor.tamper events after it:\n{}",
                dump(&tampers_after(evs, seq))
            )
        },
    )?;
    let found = d
        .with_events(|evs| tampers_after(evs, seq).into_iter().find(|e| pred(e)))?
        .ok_or_else(|| anyhow!("the sensor.tamper event vanished"))?;
    Ok((found, started.elapsed()))
}

/// A `sensor.tamper` carries `tamper` = {what, object, detected:
/// "integrity check"} and, when no run is concerned, `run: null`.
pub fn check_tamper_shape(c: &mut Checks, e: &Value, run_known: bool) {
    let t = &e["tamper"];
    check!(
        c,
        t["what"].as_str().is_some_and(|w| !w.is_empty())
            && t["object"].as_str().is_some_and(|o| !o.is_empty())
            && t["detected"] == "integrity check",
        "sensor.tamper has tamper = {{what, object, detected: \"integrity check\"}}: {}",
        compact(e)
    );
    if !run_known {
        check!(
            c,
            e.get("run").is_some_and(Value::is_null),
            "a sensor.tamper concerning no run has run: null: {}",
            compact(e)
        );
    }
    c.result(crate::check_common(e));
}

/// Runs the denied binary in the puppet's run: true when it was killed
/// (exit status [`KILLED`]) and the file it would create is absent.
pub fn denied_is_killed(puppet: &mut Puppet, fx: &Fixture, name: &str) -> Result<bool> {
    let target = fx.target(name);
    let code = puppet.run(&format!("{} {}", fx.denied, s(&target)))?;
    Ok(code == KILLED && !target.exists())
}

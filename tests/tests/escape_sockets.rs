//! Sockets that skip the connect hooks (issue: no way out of a run unseen):
//! raw, ICMP ("ping") and packet sockets send to any address without a
//! connect, so an enforce run may not create them unless its policy says
//! `raw_sockets = true`; datagrams sent without connect() are reported (the
//! first per process and destination, then with a running count); a run's
//! listeners and the connections they accept are reported.
//!
//! Run as root: `cargo test -p sensor-tests --test escape_sockets -- --test-threads=1`.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{TcpStream, UdpSocket};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use sensor_tests::enforce::{
    KILLED, RUN_ONLY_PROGRAMS, base_exec, check_deny, launch_sh, outputs, wait_run_connect,
};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, check, compact, helper_bin, ocsf, text,
};
use serde_json::Value;

const HELPER: &str = helper_bin!();
const RAW_RULE: &str = "raw_sockets (a raw, ICMP or packet socket reaches any address)";

/// The tests' exec rules, as a TOML list's items.
fn exec_rules() -> Result<String> {
    Ok(base_exec()?
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", "))
}

fn config(extra: &str) -> Result<String> {
    let exec = exec_rules()?;
    Ok(format!(
        "[policy.p]\nmode = \"enforce\"\nexec.allow = [{exec}]\nconnect.allow = [\"127.0.0.0/8\"]\n\
         [policy.a]\nmode = \"audit\"\nexec.allow = [{exec}]\nconnect.allow = [\"127.0.0.0/8\"]\n\
         [policy.r]\nmode = \"enforce\"\nexec.allow = [{exec}]\nconnect.allow = [\"127.0.0.0/8\"]\n\
         raw_sockets = true\n{extra}"
    ))
}

/// Lets root open ICMP datagram sockets (`ping_group_range`), restored on drop.
struct PingGroups(String);

impl PingGroups {
    fn open() -> Result<Self> {
        const PATH: &str = "/proc/sys/net/ipv4/ping_group_range";
        let old = fs::read_to_string(PATH)?;
        fs::write(PATH, "0 2147483647\n")?;
        Ok(Self(old))
    }
}

impl Drop for PingGroups {
    fn drop(&mut self) {
        let _ = fs::write("/proc/sys/net/ipv4/ping_group_range", &self.0);
    }
}

/// The OCSF form of sensor event `e` among `ocsf_events`, with its class,
/// activity and what `more` says checked.
fn check_ocsf(
    c: &mut Checks,
    ocsf_events: &[Value],
    e: &Value,
    class: u64,
    activity: u64,
    more: impl Fn(&Value) -> bool,
) {
    match ocsf::by_seq(ocsf_events, &e["seq"]) {
        Some(o) => check!(
            c,
            o["class_uid"] == class && o["activity_id"] == activity && more(&o),
            "OCSF of {} {}: class {class}, activity {activity}, and more: {}",
            e["kind"],
            e["seq"],
            compact(&o)
        ),
        None => c.fail(format!("no OCSF event for seq {}", e["seq"])),
    }
}

fn sockets<'a>(evs: &'a [Value], agent: &str, transport: &str) -> Vec<&'a Value> {
    evs.iter()
        .filter(|e| {
            e["kind"] == "network.socket"
                && e["run"]["agent"] == agent
                && e["network"]["transport"] == transport
        })
        .collect()
}

/// Raw, ICMP and packet sockets: refused (EPERM; a packet socket's creator
/// is killed) under enforce, allowed with `raw_sockets = true`, reported as
/// `network.socket` in every case.
#[test]
fn raw_icmp_and_packet_sockets_are_refused_under_enforce() -> Result<()> {
    let _ping = PingGroups::open()?;
    let tmp = TempDir::new("raw-ocsf")?;
    let ocsf_path = tmp.path().join("ocsf.jsonl");
    let d = Daemon::start_with(Some(&config("")?), &["--output", &ocsf::spec(&ocsf_path)])?;
    let script = format!(
        "echo \"raw: $({HELPER} socket raw)\"\n\
         echo \"icmp: $({HELPER} socket icmp)\"\n\
         echo \"icmp6: $({HELPER} socket icmp6)\"\n\
         {HELPER} socket packet >/dev/null\necho \"packet: $?\"\n"
    );
    let enforce = outputs(&launch_sh(&d, "raw-e", "p", &script)?);
    let audit = outputs(&launch_sh(&d, "raw-a", "a", &script)?);
    let allowed = outputs(&launch_sh(&d, "raw-r", "r", &script)?);
    let mut c = Checks::new();
    for kind in ["raw", "icmp", "icmp6"] {
        check!(
            c,
            enforce.get(kind).map(String::as_str) == Some("errno=1"),
            "{kind} under enforce: EPERM: {enforce:?}"
        );
        check!(
            c,
            audit.get(kind).map(String::as_str) == Some("ok")
                && allowed.get(kind).map(String::as_str) == Some("ok"),
            "{kind} in audit and with raw_sockets: created: {audit:?} {allowed:?}"
        );
    }
    check!(
        c,
        enforce.get("packet") == Some(&KILLED.to_string()),
        "a packet socket's creator is killed under enforce: {enforce:?}"
    );
    check!(
        c,
        audit.get("packet").map(String::as_str) == Some("0")
            && allowed.get("packet").map(String::as_str) == Some("0"),
        "packet sockets in audit and with raw_sockets: {audit:?} {allowed:?}"
    );
    thread::sleep(Duration::from_millis(500));
    let evs = d.events()?;
    for transport in ["raw", "icmp", "packet"] {
        match sockets(&evs, "raw-e", transport).first() {
            Some(e) => check_deny(&mut c, transport, e, "p", Some(RAW_RULE), true),
            None => c.fail(format!("no network.socket {transport} for the enforce run")),
        }
        let audit = sockets(&evs, "raw-a", transport);
        check!(
            c,
            audit.first().is_some_and(
                |e| e["policy"]["verdict"] == "deny" && e["policy"]["enforced"] == false
            ),
            "{transport} in audit: reported as a denial: {:?}",
            audit.first().map(|e| compact(e))
        );
        check!(
            c,
            !sockets(&evs, "raw-r", transport).is_empty(),
            "{transport} with raw_sockets: still reported"
        );
    }
    // OCSF: Network Activity, Fail when refused, Open when made; no peer,
    // so this host is the endpoint. Checked by the third-party validator.
    let want = evs.iter().filter(|e| e["kind"] == "network.socket").count();
    let o = ocsf::validated_kinds(
        &ocsf_path,
        &["network.socket", "policy.violation"],
        &[4001],
        EVENT_TIMEOUT,
        |o| {
            o.iter()
                .filter(|o| o["metadata"]["event_code"] == "network.socket")
                .count()
                >= want
        },
    )?;
    let here = |o: &Value| o["src_endpoint"]["hostname"].is_string() && o["dst_endpoint"].is_null();
    if let Some(e) = sockets(&evs, "raw-e", "raw").first() {
        check_ocsf(&mut c, &o, e, 4001, 4, |o| {
            here(o) && o["disposition"] == "Blocked" && o["status_code"] == "EPERM"
        });
    }
    if let Some(e) = sockets(&evs, "raw-e", "packet").first() {
        check_ocsf(&mut c, &o, e, 4001, 1, |o| {
            here(o)
                && o["disposition"] == "Blocked"
                && o["connection_info"]["protocol_name"] == "packet"
        });
    }
    if let Some(e) = sockets(&evs, "raw-a", "icmp").first() {
        check_ocsf(&mut c, &o, e, 4001, 1, |o| {
            // Audit: would have been blocked (it was made).
            here(o)
                && o["action"] == "Allowed"
                && o["disposition"] == "Logged"
                && o["is_alert"] == true
                && o["connection_info"]["protocol_num"] == 1
        });
    }
    if let Some(e) = sockets(&evs, "raw-r", "raw").first() {
        check_ocsf(&mut c, &o, e, 4001, 1, |o| here(o) && o["policy"].is_null());
    }
    c.finish()
}

/// The helper's stdout, a line at a time.
type Lines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Launches the helper's `listen-accept` on a free loopback port in a run
/// of `agent`: the child, the rest of its output, and the port it listens on.
fn launch_listener(d: &Daemon, agent: &str) -> Result<(std::process::Child, Lines, u16)> {
    let mut child = d
        .launch_cmd(agent, &[], &[HELPER, "listen-accept", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(out).lines();
    let first = lines.next().context("no port line")??;
    let port: u16 = first
        .strip_prefix("port=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("listen-accept said {first:?}"))?;
    Ok((child, lines, port))
}

/// A run's listener and the connection it accepts are reported, with the
/// local address and the peer that came in.
#[test]
fn a_runs_listener_and_accepted_connections_are_reported() -> Result<()> {
    let tmp = TempDir::new("listen-ocsf")?;
    let ocsf_path = tmp.path().join("ocsf.jsonl");
    let d = Daemon::start_with(Some(&config("")?), &["--output", &ocsf::spec(&ocsf_path)])?;
    let (mut child, mut lines, port) = launch_listener(&d, "listener")?;
    let client = TcpStream::connect(("127.0.0.1", port))?;
    let client_port = client.local_addr()?.port();
    let _ = lines.next();
    let _ = child.wait();
    let mut c = Checks::new();
    let listen = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "network.listen" && e["run"]["agent"] == "listener"
    })?;
    check!(
        c,
        listen["network"]["local_port"] == port
            && listen["network"]["local_ip"] == "127.0.0.1"
            && listen["network"]["transport"] == "tcp",
        "network.listen: {}",
        compact(&listen)
    );
    let accept = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "network.accept" && e["run"]["agent"] == "listener"
    })?;
    check!(
        c,
        accept["network"]["local_port"] == port
            && accept["network"]["src_ip"] == "127.0.0.1"
            && accept["network"]["src_port"] == client_port,
        "network.accept names the peer: {}",
        compact(&accept)
    );
    // OCSF: Listen (7) at the local address; the accepted connection an
    // inbound Open (1) from the peer.
    let o = ocsf::validated_kinds(
        &ocsf_path,
        &["network.listen", "network.accept"],
        &[4001],
        EVENT_TIMEOUT,
        |o| o.len() >= 2,
    )?;
    check_ocsf(&mut c, &o, &listen, 4001, 7, |o| {
        o["dst_endpoint"]["port"] == port && o["connection_info"]["direction_id"] == 1
    });
    check_ocsf(&mut c, &o, &accept, 4001, 1, |o| {
        o["src_endpoint"]["port"] == client_port
            && o["dst_endpoint"]["port"] == port
            && o["connection_info"]["direction"] == "Inbound"
    });
    c.finish()
}

/// Datagrams sent without connect(): the first to each destination, then
/// at 2, 4, 8, ... with the count; none for a process outside runs.
#[test]
fn unconnected_datagrams_of_a_run_are_reported_with_a_count() -> Result<()> {
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    let port = sink.local_addr()?.port();
    let tmp = TempDir::new("udp-ocsf")?;
    let ocsf_path = tmp.path().join("ocsf.jsonl");
    let d = Daemon::start_with(Some(&config("")?), &["--output", &ocsf::spec(&ocsf_path)])?;
    let addr = format!("127.0.0.1:{port}");
    let out = launch_sh(&d, "udp", "p", &format!("{HELPER} sendto-n {addr} 20\n"))?;
    let outside = Command::new(HELPER)
        .args(["sendto-n", &addr, "5"])
        .output()?;
    let mut c = Checks::new();
    check!(
        c,
        text(&out.stdout).contains("sent=20"),
        "{:?}",
        text(&out.stdout)
    );
    check!(c, text(&outside.stdout).contains("sent=5"), "{outside:?}");
    let _ = d.wait_until(
        EVENT_TIMEOUT,
        |evs| {
            evs.iter()
                .filter(|e| e["network"]["sends"].is_u64() && e["run"]["agent"] == "udp")
                .count()
                >= 5
        },
        |_| String::new(),
    );
    let evs = d.events()?;
    let sends: Vec<u64> = evs
        .iter()
        .filter(|e| {
            e["kind"] == "network.connect"
                && e["network"]["via"] == "sendmsg"
                && e["network"]["dst_port"] == port
                && e["run"]["agent"] == "udp"
        })
        .filter_map(|e| e["network"]["sends"].as_u64())
        .collect();
    check!(
        c,
        sends == [1, 2, 4, 8, 16],
        "reported at the 1st, 2nd, 4th, 8th and 16th datagram: {sends:?}"
    );
    let allowed = evs
        .iter()
        .find(|e| e["network"]["sends"] == 1 && e["run"]["agent"] == "udp");
    check!(
        c,
        allowed.is_some_and(|e| e["policy"]["verdict"] == "allow"),
        "the datagrams carry the policy's verdict: {:?}",
        allowed.map(compact)
    );
    check!(
        c,
        !evs.iter()
            .any(|e| e["network"]["dst_port"] == port && e["run"].is_null()),
        "a process outside runs is not reported"
    );
    // OCSF: Traffic (6), the count in traffic.packets_out.
    let o = ocsf::validated_kinds(
        &ocsf_path,
        &["network.connect"],
        &[4001],
        EVENT_TIMEOUT,
        |o| o.iter().any(|o| o["traffic"]["packets_out"] == 16),
    )?;
    if let Some(e) = evs
        .iter()
        .find(|e| e["network"]["sends"] == 8 && e["run"]["agent"] == "udp")
    {
        check_ocsf(&mut c, &o, e, 4001, 6, |o| {
            o["traffic"]["packets_out"] == 8 && o["dst_endpoint"]["port"] == port
        });
    }
    c.finish()
}

/// How long the daemon keeps them attached after the last process left its
/// run (`RUN_PROBES_LINGER`), plus its one-second tick and some slack.
const STANDBY_AGAIN: Duration = Duration::from_secs(15);

/// Program name → kernel id, as `sensor status --json` lists them.
type ProgramIds = Vec<(String, u32)>;

/// The programs on standby, and the kernel ids of every program, from status.
fn standby(d: &Daemon) -> Result<(Vec<String>, ProgramIds)> {
    let status = d.status_json()?;
    let programs = status["programs"]
        .as_array()
        .ok_or_else(|| anyhow!("status --json has no programs: {}", compact(&status)))?;
    let mut on_standby = Vec::new();
    let mut ids = Vec::new();
    for p in programs {
        let name = p["name"].as_str().unwrap_or("?").to_owned();
        if p["standby"] == true {
            on_standby.push(name.clone());
        }
        let id = p["id"].as_u64().and_then(|i| u32::try_from(i).ok());
        ids.push((name, id.unwrap_or(0)));
    }
    on_standby.sort();
    Ok((on_standby, ids))
}

/// Whether program `name` (of `ids`) has an attached link in the kernel.
fn linked(ids: &[(String, u32)], name: &str) -> Result<bool> {
    let Some((_, id)) = ids.iter().find(|(n, _)| n == name) else {
        return Ok(false);
    };
    Ok(sensor_tests::bpf::links_of_prog(*id)?
        .iter()
        .any(sensor_tests::bpf::link_attached))
}

/// Checks that every run-only program is on standby with no attached link
/// in the kernel (`attached` false), or that none is and each has one
/// (`attached` true); `when` says at what point of the test.
fn check_run_only(c: &mut Checks, d: &Daemon, attached: bool, when: &str) -> Result<()> {
    let mut want: Vec<String> = Vec::new();
    if !attached {
        want = RUN_ONLY_PROGRAMS.iter().map(|s| (*s).to_owned()).collect();
        want.sort();
    }
    let (on_standby, ids) = standby(d)?;
    check!(
        c,
        on_standby == want,
        "{when}, the programs on standby are {on_standby:?}, want {want:?}"
    );
    for name in RUN_ONLY_PROGRAMS {
        check!(
            c,
            linked(&ids, name)? == attached,
            "{when}, {name} has {} attached link in the kernel",
            if attached { "an" } else { "no" }
        );
    }
    Ok(())
}

/// With no process in a run, the run-only programs are detached (every
/// syscall of theirs on the host would pay a tracepoint's dispatch for a
/// program that returns at once). The attack: an agent whose first
/// instructions listen and accept, racing the daemon to attach them. They
/// are attached before `launch` gets its answer, so the listener and the
/// connection are reported; they stay while the run's process lives, and go
/// back to standby once it is gone.
#[test]
fn run_only_programs_attach_before_a_launched_command_and_stand_by_after() -> Result<()> {
    let d = Daemon::start_with(Some(&config("")?), &[])?;
    let mut c = Checks::new();
    let mut want: Vec<String> = RUN_ONLY_PROGRAMS.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    check_run_only(&mut c, &d, false, "with no run")?;

    let (mut child, mut lines, port) = launch_listener(&d, "first-move")?;
    // The run's process lives (it waits in accept): everything is attached.
    check_run_only(&mut c, &d, true, "while a process is in a run")?;
    let client = TcpStream::connect(("127.0.0.1", port))?;
    let client_port = client.local_addr()?.port();
    let _ = lines.next();
    let _ = child.wait();
    let listen = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "network.listen" && e["run"]["agent"] == "first-move"
    });
    check!(
        c,
        listen.is_ok_and(|l| l["network"]["local_port"] == port),
        "the listen of the launched command's first moves is reported"
    );
    let accept = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "network.accept" && e["run"]["agent"] == "first-move"
    });
    check!(
        c,
        accept.is_ok_and(|a| a["network"]["src_port"] == client_port),
        "the connection it accepted is reported"
    );

    // Its process is gone: back on standby after the linger.
    let deadline = std::time::Instant::now() + STANDBY_AGAIN;
    while standby(&d)?.0 != want && std::time::Instant::now() < deadline {
        thread::sleep(Duration::from_millis(250));
    }
    check_run_only(
        &mut c,
        &d,
        false,
        &format!("within {STANDBY_AGAIN:?} of the run's end"),
    )?;
    d.check_alive()?;
    c.finish()
}

/// A run that a matcher (`[[agent]]`) starts, without `launch`: the daemon
/// puts the agent in its run as it reads the agent's exec, and attaches the
/// run-only programs before that round's events go out. The attack: the
/// agent's first move once it is in its run (it waits for the test, which
/// waits for its `run.start`) sends a datagram to an address its policy
/// denies, through a cgroup hook that was on standby until the run began.
#[test]
fn run_only_programs_attach_when_a_matcher_starts_a_run() -> Result<()> {
    let allowed = UdpSocket::bind("127.0.0.1:0")?;
    let denied = UdpSocket::bind("127.0.0.1:0")?;
    let (p_allowed, p_denied) = (allowed.local_addr()?.port(), denied.local_addr()?.port());
    allowed.set_read_timeout(Some(Duration::from_secs(2)))?;
    denied.set_nonblocking(true)?;
    let exec = exec_rules()?;
    let d = Daemon::start_with(
        Some(&format!(
            "[policy.m]\nmode = \"enforce\"\nexec.allow = [{exec}]\n\
             connect.allow = [\"127.0.0.1:{p_allowed}\"]\n\
             [[agent]]\nname = \"matched\"\nexe = [\"**/matched-agent\"]\npolicy = \"m\"\n"
        )),
        &[],
    )?;
    let mut c = Checks::new();
    check_run_only(&mut c, &d, false, "with no run")?;

    let dir = TempDir::new("matched")?;
    let agent = dir.path().join("matched-agent");
    fs::copy("/bin/sh", &agent).context("copy /bin/sh")?;
    let go = dir.path().join("go");
    let made = Command::new("mkfifo").arg(&go).status()?;
    anyhow::ensure!(made.success(), "mkfifo {}", go.display());
    let script = format!(
        "read x < {go}\n\
         echo \"denied: $({HELPER} sendto udp 127.0.0.1:{p_denied})\"\n\
         echo \"allowed: $({HELPER} sendto udp 127.0.0.1:{p_allowed})\"\n",
        go = go.display()
    );
    let child = Command::new(&agent)
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {}", agent.display()))?;
    let pid = child.id();
    let started = d.wait_for(EVENT_TIMEOUT, |e| {
        e["kind"] == "run.start" && e["process"]["pid"] == pid
    });
    // The agent is in its run: nothing may be on standby any more.
    let during = check_run_only(&mut c, &d, true, "once its run.start is out");
    let mut child = child;
    if started.is_err() || during.is_err() {
        // Not placed (it would wait on its pipe for ever), or no status.
        let _ = child.kill();
    } else {
        fs::write(&go, "go\n").context("release the agent")?;
    }
    let out = child.wait_with_output()?;
    during?;
    check!(
        c,
        started
            .as_ref()
            .is_ok_and(|s| s["run"]["agent"] == "matched"),
        "the matcher started a run for the agent: {started:?}"
    );
    let got = outputs(&out);
    check!(
        c,
        got.get("denied").map(String::as_str) == Some("errno=1")
            && got.get("allowed").map(String::as_str) == Some("ok"),
        "the denied datagram fails with EPERM, the allowed one goes: {got:?}, stderr {}",
        text(&out.stderr)
    );
    let mut buf = [0u8; 256];
    check!(
        c,
        denied.recv_from(&mut buf).is_err(),
        "the denied datagram arrived"
    );
    check!(
        c,
        allowed.recv_from(&mut buf).is_ok(),
        "the allowed datagram did not arrive"
    );
    let reported = wait_run_connect(&d, "matched", p_denied);
    check!(
        c,
        reported
            .as_ref()
            .is_ok_and(|e| e["policy"]["verdict"] == "deny"
                && e["policy"]["enforced"] == true
                && e["network"]["via"] == "sendmsg"),
        "the refused datagram is reported as denied and enforced: {}",
        reported.as_ref().map(compact).unwrap_or_default()
    );
    d.check_alive()?;
    c.finish()
}

/// A listener whose accept queue is full: `listen(2)` again with a backlog
/// of 0 (one connection fits), and that one made. A SYN to it is dropped,
/// so a connect to it stays in the syscall (retrying at 1 s, 3 s, 7 s) until
/// the queue has room.
fn full_listener(addr: &str) -> Result<(std::net::TcpListener, u16, TcpStream)> {
    use std::os::fd::AsRawFd as _;
    let listener = std::net::TcpListener::bind(addr).with_context(|| format!("bind {addr}"))?;
    // SAFETY: a listening socket's descriptor; listen(2) again only sets its backlog.
    if unsafe { libc::listen(listener.as_raw_fd(), 0) } != 0 {
        return Err(std::io::Error::last_os_error()).context("listen(fd, 0)");
    }
    let local = listener.local_addr()?;
    let filler = TcpStream::connect(local).context("fill the accept queue")?;
    Ok((listener, local.port(), filler))
}

/// The cgroup hook leaves a connect's destination in the thread's slot, and
/// the syscall's exit reports it from there with the result. The attack: an
/// agent's thread connects somewhere its audit policy denies, the connect
/// stays in the syscall (here a full accept queue; a slow server does the
/// same), and meanwhile 40,000 short-lived threads connect once each, more
/// than the slots kept for threads that connect (`INFLIGHT_ENTRIES`).
/// Nothing may push the waiting thread's slot out: its connect is reported,
/// as denied, once it returns.
#[test]
fn a_connect_in_the_syscall_is_reported_however_many_threads_connect_meanwhile() -> Result<()> {
    const THREADS: &str = "40000";
    let d = Daemon::start_with(Some(&config("")?), &[])?;
    let (listener, port, _filler) = full_listener("[::1]:0")?;
    let refused = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let tmp = TempDir::new("churn")?;
    let ready = tmp.path().join("ready");
    let target = format!("[::1]:{port}");
    let flood = format!("127.0.0.1:{refused}");
    let ready_arg = ready.to_string_lossy().into_owned();
    let mut child = d
        .launch_cmd(
            "churn",
            &["--policy", "a"],
            &[
                HELPER,
                "connect-under-churn",
                &target,
                &flood,
                THREADS,
                &ready_arg,
            ],
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("launch the helper")?;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    while !ready.exists() {
        if std::time::Instant::now() > deadline || child.try_wait()?.is_some() {
            let _ = child.kill();
            let out = child.wait_with_output()?;
            return Err(anyhow!(
                "the helper's flood did not finish: stdout {:?} stderr {:?}",
                text(&out.stdout),
                text(&out.stderr)
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
    // Room in the queue: the waiting connect's next SYN gets in.
    drop(listener.accept().context("accept the filler")?);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while child.try_wait()?.is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output()?;
    let mut c = Checks::new();
    check!(
        c,
        text(&out.stdout).trim() == "ok",
        "the waiting connect succeeded once there was room: stdout {:?} stderr {:?}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let reported = wait_run_connect(&d, "churn", port);
    check!(
        c,
        reported
            .as_ref()
            .is_ok_and(|e| e["policy"]["verdict"] == "deny" && e["network"]["result"] == "ok"),
        "the connect to [::1]:{port} is reported, denied (audit), with its result: {}",
        reported.map_or_else(|e| format!("{e:#}"), |e| compact(&e))
    );
    c.finish()
}

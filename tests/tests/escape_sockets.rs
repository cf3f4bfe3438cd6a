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
use sensor_tests::enforce::{KILLED, base_exec, check_deny, launch_sh, outputs};
use sensor_tests::{Checks, Daemon, EVENT_TIMEOUT, check, compact, helper_bin, text};
use serde_json::Value;

const HELPER: &str = helper_bin!();
const RAW_RULE: &str = "raw_sockets (a raw, ICMP or packet socket reaches any address)";

fn config(extra: &str) -> Result<String> {
    let exec = base_exec()?
        .iter()
        .map(|e| format!("{e:?}"))
        .collect::<Vec<_>>()
        .join(", ");
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
    let d = Daemon::start_with(Some(&config("")?), &[])?;
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
    c.finish()
}

/// A run's listener and the connection it accepts are reported, with the
/// local address and the peer that came in.
#[test]
fn a_runs_listener_and_accepted_connections_are_reported() -> Result<()> {
    let d = Daemon::start_with(Some(&config("")?), &[])?;
    let mut child = d
        .launch_cmd("listener", &[], &[HELPER, "listen-accept", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()?;
    let out = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
    let mut lines = BufReader::new(out).lines();
    let first = lines.next().context("no port line")??;
    let port: u16 = first
        .strip_prefix("port=")
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| anyhow!("listen-accept said {first:?}"))?;
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
    c.finish()
}

/// Datagrams sent without connect(): the first to each destination, then
/// at 2, 4, 8, ... with the count; none for a process outside runs.
#[test]
fn unconnected_datagrams_of_a_run_are_reported_with_a_count() -> Result<()> {
    let sink = UdpSocket::bind("127.0.0.1:0")?;
    let port = sink.local_addr()?.port();
    let d = Daemon::start_with(Some(&config("")?), &[])?;
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
    c.finish()
}

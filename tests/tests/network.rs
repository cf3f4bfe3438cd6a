//! network.connect events on the real kernel, loopback only. Run as root:
//! `SENSOR_BIN=... cargo test -p sensor-tests -- --test-threads=1`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, absent_or_null, canonical_str, check, check_common, compact,
    dump, helper_bin, i64_at, is_kind_pid, run_child, str_at, text,
};
use serde_json::Value;

/// Runs `sensor-test-helper connect PROTO ADDR` and checks what it printed.
fn helper_connect(proto: &str, addr: SocketAddr, want_stdout: &str) -> Result<u32> {
    let (pid, out) =
        run_child(Command::new(helper_bin!()).args(["connect", proto, &addr.to_string()]))?;
    let stdout = text(&out.stdout);
    ensure!(
        out.status.success() && stdout.trim() == want_stdout,
        "helper connect {proto} {addr}: {} stdout {stdout:?} stderr {:?} (want {want_stdout:?})",
        out.status,
        text(&out.stderr)
    );
    Ok(pid)
}

/// Waits for the network.connect of `pid` to `addr` with `result`, and checks
/// its fields.
fn check_connect(
    d: &Daemon,
    pid: u32,
    addr: SocketAddr,
    transport: &str,
    result: &str,
    c: &mut Checks,
) -> Result<Value> {
    let port = i64::from(addr.port());
    let found = d.wait_for(EVENT_TIMEOUT, |e| {
        is_kind_pid(e, "network.connect", pid)
            && i64_at(e, "/network/dst_port") == Some(port)
            && str_at(e, "/network/result") == Some(result)
    });
    let e = match found {
        Ok(e) => e,
        Err(err) => {
            let mine = d.matching(|e| is_kind_pid(e, "network.connect", pid))?;
            return Err(err).with_context(|| {
                format!(
                    "no network.connect from pid {pid} to {addr} with result {result:?}; \
                     network.connect events of that pid:\n{}",
                    dump(&mine)
                )
            });
        }
    };
    c.result(check_common(&e));
    let family = if addr.is_ipv4() { "ipv4" } else { "ipv6" };
    let ip = addr.ip().to_string();
    check!(
        c,
        str_at(&e, "/network/transport") == Some(transport)
            && str_at(&e, "/network/family") == Some(family)
            && str_at(&e, "/network/dst_ip") == Some(ip.as_str()),
        "want transport {transport}, family {family}, dst_ip {ip}: {}",
        compact(&e)
    );
    let helper = canonical_str(helper_bin!())?;
    check!(
        c,
        str_at(&e, "/process/exe") == Some(helper.as_str()),
        "process.exe is not the connecting helper {helper}: {}",
        compact(&e)
    );
    Ok(e)
}

fn check_ok(e: &Value, c: &mut Checks) {
    check!(
        c,
        (absent_or_null(e, "/network/errno") || i64_at(e, "/network/errno") == Some(0))
            && absent_or_null(e, "/network/error"),
        "a successful connect has errno/error set: {}",
        compact(e)
    );
}

/// Case 6a: TCP connect to a listener on 127.0.0.1.
#[test]
fn tcp_connect_ipv4_loopback_ok() -> Result<()> {
    let d = Daemon::start()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let pid = helper_connect("tcp", addr, "ok")?;
    let mut c = Checks::new();
    let e = check_connect(&d, pid, addr, "tcp", "ok", &mut c)?;
    check_ok(&e, &mut c);
    c.finish()
}

/// Case 6b: TCP connect to a listener on ::1.
#[test]
fn tcp_connect_ipv6_loopback_ok() -> Result<()> {
    let d = Daemon::start()?;
    let listener = TcpListener::bind("[::1]:0").context("bind [::1]:0")?;
    let addr = listener.local_addr()?;
    let pid = helper_connect("tcp", addr, "ok")?;
    let mut c = Checks::new();
    let e = check_connect(&d, pid, addr, "tcp", "ok", &mut c)?;
    check_ok(&e, &mut c);
    c.finish()
}

/// Case 6c: UDP connect on 127.0.0.1.
#[test]
fn udp_connect_ipv4_loopback_ok() -> Result<()> {
    let d = Daemon::start()?;
    let target = UdpSocket::bind("127.0.0.1:0")?;
    let addr = target.local_addr()?;
    let pid = helper_connect("udp", addr, "ok")?;
    let mut c = Checks::new();
    let e = check_connect(&d, pid, addr, "udp", "ok", &mut c)?;
    check_ok(&e, &mut c);
    c.finish()
}

/// Case 6d: TCP connect to a loopback port with no listener: refused.
#[test]
fn tcp_connect_refused() -> Result<()> {
    let d = Daemon::start()?;
    // A port that was free a moment ago and has no listener now.
    let addr = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let pid = helper_connect("tcp", addr, &format!("errno={}", libc::ECONNREFUSED))?;
    let mut c = Checks::new();
    let e = check_connect(&d, pid, addr, "tcp", "refused", &mut c)?;
    check!(
        c,
        i64_at(&e, "/network/errno") == Some(i64::from(libc::ECONNREFUSED))
            && str_at(&e, "/network/error") == Some("ECONNREFUSED"),
        "a refused connect should carry errno 111 / ECONNREFUSED: {}",
        compact(&e)
    );
    c.finish()
}

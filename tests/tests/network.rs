//! network.connect events on the real kernel, loopback only. Run as root:
//! `SENSOR_BIN=... cargo test -p sensor-tests -- --test-threads=1`.

use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, absent_or_null, canonical_str, check, check_common,
    compact, dump, helper_bin, i64_at, is_kind_pid, run_child, str_at, text,
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
    // The connect's process fields are read from the current task (direct
    // BTF loads), the exec's from the task the tracepoint names (helper
    // reads): one process, so they must agree.
    let exec = d.wait_for(EVENT_TIMEOUT, |x| is_kind_pid(x, "process.exec", pid))?;
    for field in [
        "key",
        "pid",
        "ppid",
        "parent_key",
        "uid",
        "gid",
        "comm",
        "ns_pid",
    ] {
        let at = format!("/process/{field}");
        check!(
            c,
            e.pointer(&at) == exec.pointer(&at),
            "process.{field} of the connect differs from the exec's: {} vs {}",
            compact(&e),
            compact(&exec)
        );
    }
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

/// One thread connecting again and again: each inet connect is reported once,
/// with its own destination and result, in order; an AF_UNIX connect in
/// between (which the cgroup hooks never see) reports nothing and does not
/// resend the previous destination. The kernel keeps one in-flight slot per
/// thread and reuses it, so this is what a stale slot would break.
#[test]
fn one_thread_connecting_repeatedly_is_reported_once_per_connect() -> Result<()> {
    let d = Daemon::start()?;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let open = listener.local_addr()?;
    let closed = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
    let udp = UdpSocket::bind("127.0.0.1:0")?;
    let datagram = udp.local_addr()?;
    let dir = TempDir::new("net-seq")?;
    let unix_path = dir.path().join("sock");
    let _unix = std::os::unix::net::UnixListener::bind(&unix_path)?;
    let unix = unix_path.to_str().context("temp path is not UTF-8")?;
    let (open_s, closed_s, datagram_s) =
        (open.to_string(), closed.to_string(), datagram.to_string());
    let args = [
        "connect",
        "tcp",
        &open_s,
        "unix",
        unix,
        "tcp",
        &closed_s,
        "unix",
        unix,
        "udp",
        &datagram_s,
        "tcp",
        &open_s,
    ];
    let (pid, out) = run_child(Command::new(helper_bin!()).args(args))?;
    let refused = format!("errno={}", libc::ECONNREFUSED);
    let want_stdout = ["ok", "ok", refused.as_str(), "ok", "ok", "ok"].join("\n");
    ensure!(
        out.status.success() && text(&out.stdout).trim() == want_stdout,
        "helper {args:?}: {} stdout {:?} stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    // Events of one thread are in syscall order: once the second connect to
    // `open` is in, anything the earlier connects produced is in too.
    let open_port = i64::from(open.port());
    let to_open = move |evs: &[Value]| {
        evs.iter()
            .filter(|e| {
                is_kind_pid(e, "network.connect", pid)
                    && i64_at(e, "/network/dst_port") == Some(open_port)
            })
            .count()
    };
    d.wait_until(
        EVENT_TIMEOUT,
        |evs| to_open(evs) >= 2,
        |evs| {
            format!(
                "{} network.connect to {open} from pid {pid} (want 2)",
                to_open(evs)
            )
        },
    )?;
    let mut mine = d.matching(|e| is_kind_pid(e, "network.connect", pid))?;
    mine.sort_by_key(|e| i64_at(e, "/seq"));
    let got: Vec<(Option<&str>, Option<i64>, Option<&str>)> = mine
        .iter()
        .map(|e| {
            (
                str_at(e, "/network/transport"),
                i64_at(e, "/network/dst_port"),
                str_at(e, "/network/result"),
            )
        })
        .collect();
    let want = vec![
        (Some("tcp"), Some(open_port), Some("ok")),
        (Some("tcp"), Some(i64::from(closed.port())), Some("refused")),
        (Some("udp"), Some(i64::from(datagram.port())), Some("ok")),
        (Some("tcp"), Some(open_port), Some("ok")),
    ];
    let mut c = Checks::new();
    check!(
        c,
        got == want,
        "want exactly {want:?} from pid {pid}, got {got:?}:\n{}",
        dump(&mine)
    );
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

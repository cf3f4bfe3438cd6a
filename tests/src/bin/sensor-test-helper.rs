//! Small programs the integration tests run to make the kernel do things a
//! shell cannot: exec from a non-leader thread, start threads, rename itself,
//! fake argv[0], fail an exec, connect sockets (plain, unconnected UDP sendto,
//! io_uring), exec a memfd or an fd, fork many children at once.
//!
//! ```text
//! sensor-test-helper exec PATH [ARGS...]            execv(PATH, [PATH, ARGS...]); on failure prints
//!                                                   "errno=N" to stderr and exits 111
//! sensor-test-helper fake-argv0 ARGV0 PATH [ARGS...] execv(PATH, [ARGV0, ARGS...])
//! sensor-test-helper thread-exec PATH [ARGS...]     a second thread prints "tid=N" to stderr, then
//!                                                   execv(PATH, [PATH, ARGS...]); the leader waits
//! sensor-test-helper threads N MARKER               starts N threads that all live at once, prints
//!                                                   "tid=N" for each to stdout, joins, exits 0
//! sensor-test-helper prctl-name NAME [CMD ARGS...]  PR_SET_NAME(NAME); then runs CMD as a child,
//!                                                   prints "child=PID", and exits with its code
//!                                                   (or sleeps 100 ms and exits 0 without CMD)
//! sensor-test-helper connect tcp|udp ADDR:PORT      connect(2); prints "ok" or "errno=N"
//!                                                   (`unix PATH` or `unix @name` too)
//!                    [tcp|udp ADDR:PORT|unix PATH]... more connects from the same thread, one
//!                                                   line each
//! sensor-test-helper at-pid PID PATH [ARGS...]      clone3(2) with set_tid = [PID]: a child with
//!                                                   exactly that pid execv(PATH, [PATH, ARGS...]);
//!                                                   prints "pid=PID", waits, exits with its code;
//!                                                   exits 112 with "errno=N" when the pid cannot
//!                                                   be had (EEXIST: in use)
//! sensor-test-helper sendto udp ADDR:PORT           sendto(2) of one datagram on an unconnected UDP
//!                                                   socket; prints "ok" or "errno=N"
//! sensor-test-helper uring-connect ADDR:PORT        TCP connect through io_uring (IORING_OP_CONNECT);
//!                                                   prints "ok" or "errno=N" (from the completion)
//! sensor-test-helper memfd-exec PATH [ARGS...]      copies PATH into a memfd_create(2) file and
//!                                                   execs it (execveat(fd, "", [PATH, ARGS...],
//!                                                   environ, AT_EMPTY_PATH), i.e. fexecve); on
//!                                                   failure prints "errno=N" to stderr, exits 111
//! sensor-test-helper execveat-empty PATH [ARGS...]  open(PATH, O_RDONLY) (no O_CLOEXEC), then
//!                                                   execveat(fd, "", [PATH, ARGS...], environ,
//!                                                   AT_EMPTY_PATH); on failure "errno=N", exit 111
//! sensor-test-helper fork-children N                forks N children that each sleep 2 s and exit
//!                                                   0; waits for all, prints one line per child in
//!                                                   fork order: "child=PID status=exited:C" or
//!                                                   "child=PID status=signaled:S"; exits 0
//! sensor-test-helper control SOCKET LINE            sends LINE (plus a newline) to the control
//!                                                   socket, prints the answer's first line
//! sensor-test-helper late-request SOCKET LINE GO OUT
//!                                                   connects to SOCKET, forks a child that keeps
//!                                                   the connection, prints "pid=PID" (its own)
//!                                                   and exits at once; the child waits until the
//!                                                   file GO exists, then sends LINE and writes
//!                                                   the answer to OUT (a peer whose pid is
//!                                                   recycled before its request is read)
//! sensor-test-helper clone-parent DELAY_MS PATH [ARGS...]
//!                                                   clone(CLONE_PARENT): the child's parent is
//!                                                   this process's parent; the child sleeps
//!                                                   DELAY_MS, then execv(PATH, [PATH, ARGS...]);
//!                                                   prints "pid=PID" and exits 0 at once
//! sensor-test-helper sendto-flood ADDR:PORT THREADS SECS
//!                                                   THREADS threads send UDP datagrams to ADDR
//!                                                   without connect() for SECS seconds; prints
//!                                                   "sent=N failed=M"
//! sensor-test-helper unix-server stream|dgram ADDR SECS
//!                                                   binds ADDR (a path, or @name: abstract) and for
//!                                                   SECS seconds accepts connections (stream) or
//!                                                   reads datagrams; prints "ready" once bound and
//!                                                   "accepted=N" at the end
//! sensor-test-helper memory-target FILE SECS        holds a 64-byte buffer "untouched…" and FILE
//!                                                   open; prints "pid=P addr=A fd=F", then after
//!                                                   SECS seconds (or SIGUSR1) prints "buffer=TEXT"
//! sensor-test-helper inject ptrace|vm-write|getfd|mem PID ADDR|FD
//!                                                   reaches into process PID: ptrace(PTRACE_ATTACH)
//!                                                   then POKEDATA "injected" at ADDR;
//!                                                   process_vm_writev "injected" at ADDR;
//!                                                   pidfd_getfd of its FD (then reads from it);
//!                                                   /proc/PID/mem opened read-write, "injected"
//!                                                   written at ADDR. Prints "done" or "errno=N"
//! sensor-test-helper socket raw|icmp|icmp6|packet   socket(2) of that kind; prints "ok" or "errno=N"
//! sensor-test-helper listen-accept ADDR             listens on ADDR (port 0: any), prints "port=P",
//!                                                   accepts one connection, prints "accepted"
//! sensor-test-helper sendto-n ADDR:PORT N           N UDP datagrams from one unconnected socket
//! sensor-test-helper connect-under-churn ADDR:PORT FLOOD_ADDR:PORT N READY
//!                                                   a thread connects (TCP) to ADDR:PORT while N
//!                                                   threads, one after another, each connect once
//!                                                   to FLOOD_ADDR:PORT; then creates the file
//!                                                   READY and prints the first connect's "ok" or
//!                                                   "errno=N" once it returns
//! sensor-test-helper fs-op OP PATH [ARG] LINGER    one file system change, then prints "done" (or
//!                                                   "errno=N") and sleeps LINGER seconds: OP is
//!                                                   unlink PATH, rename PATH NEW, chmod PATH OCTAL,
//!                                                   mkdir PATH, rmdir PATH, truncate PATH LEN, or
//!                                                   churn DIR N (creates and unlinks N files there)
//! sensor-test-helper hold-connections SOCKET N SECS  opens N connections to SOCKET, holds them
//!                                                   SECS seconds (sending nothing), prints
//!                                                   "opened=N closed_by_peer=M" (M: those the
//!                                                   peer had closed when the time was up)
//! ```

use std::ffi::{CString, OsString};
use std::io::{self, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::os::unix::ffi::OsStrExt;
use std::process::{Command, ExitCode};
use std::sync::{Arc, Barrier, mpsc};
use std::thread;
use std::time::Duration;

fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sensor-test-helper: {e}");
            ExitCode::from(100)
        }
    }
}

fn usage() -> String {
    "usage: sensor-test-helper exec|fake-argv0|thread-exec|threads|prctl-name|connect|at-pid|\
     sendto|uring-connect|memfd-exec|execveat-empty|fork-children|control|late-request|\
     clone-parent|sendto-flood|hold-connections|unix-server|memory-target|inject|socket|listen-accept|sendto-n|\
     fs-op|connect-under-churn ..."
        .to_owned()
}

fn utf8(s: &OsString) -> Result<&str, String> {
    s.to_str()
        .ok_or_else(|| format!("argument {s:?} is not UTF-8"))
}

fn run(args: &[OsString]) -> Result<ExitCode, String> {
    let Some((cmd, rest)) = args.split_first() else {
        return Err(usage());
    };
    match utf8(cmd)? {
        "exec" => {
            let (path, tail) = rest.split_first().ok_or_else(usage)?;
            let mut argv = vec![path.clone()];
            argv.extend(tail.iter().cloned());
            exec_failed(&execv(path, &argv))
        }
        "fake-argv0" => {
            let [argv0, path, tail @ ..] = rest else {
                return Err(usage());
            };
            let mut argv = vec![argv0.clone()];
            argv.extend(tail.iter().cloned());
            exec_failed(&execv(path, &argv))
        }
        "thread-exec" => thread_exec(rest),
        "threads" => threads(rest),
        "prctl-name" => prctl_name(rest),
        "connect" => connect(rest),
        "at-pid" => at_pid(rest),
        "sendto" => sendto(rest),
        "uring-connect" => uring_connect(rest),
        "memfd-exec" => memfd_exec(rest),
        "execveat-empty" => execveat_empty(rest),
        "fork-children" => fork_children(rest),
        "control" => control(rest),
        "late-request" => late_request(rest),
        "clone-parent" => clone_parent(rest),
        "sendto-flood" => sendto_flood(rest),
        "hold-connections" => hold_connections(rest),
        "unix-server" => unix_server(rest),
        "memory-target" => memory_target(rest),
        "socket" => socket(rest),
        "listen-accept" => listen_accept(rest),
        "sendto-n" => sendto_n(rest),
        "inject" => inject(rest),
        "fs-op" => fs_op(rest),
        "connect-under-churn" => connect_under_churn(rest),
        other => Err(format!("unknown subcommand {other:?}; {}", usage())),
    }
}

/// Prints the errno of a failed exec to stderr and exits 111.
fn exec_failed(err: &io::Error) -> ! {
    let errno = err.raw_os_error().unwrap_or(0);
    eprintln!("errno={errno}");
    std::process::exit(111);
}

fn cstring(s: &OsString) -> Result<CString, io::Error> {
    CString::new(s.as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// execv(2) with raw bytes; returns only on failure.
fn execv(path: &OsString, argv: &[OsString]) -> io::Error {
    let path = match cstring(path) {
        Ok(p) => p,
        Err(e) => return e,
    };
    let argv: Vec<CString> = match argv.iter().map(cstring).collect() {
        Ok(a) => a,
        Err(e) => return e,
    };
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: `path` and every element of `ptrs` point to NUL-terminated
    // strings that outlive the call; `ptrs` ends with a null pointer.
    unsafe {
        libc::execv(path.as_ptr(), ptrs.as_ptr());
    }
    io::Error::last_os_error()
}

fn gettid() -> i64 {
    // SAFETY: gettid(2) has no preconditions.
    i64::from(unsafe { libc::gettid() })
}

fn thread_exec(rest: &[OsString]) -> Result<ExitCode, String> {
    let (path, tail) = rest.split_first().ok_or_else(usage)?;
    let mut argv = vec![path.clone()];
    argv.extend(tail.iter().cloned());
    let path = path.clone();
    let handle = thread::spawn(move || {
        let tid = gettid();
        eprintln!("tid={tid}");
        let _ = io::stderr().flush();
        exec_failed(&execv(&path, &argv));
    });
    // The leader stays alive (and is torn down by the exec in the other
    // thread); if the exec failed, that thread has exited the process.
    let _ = handle.join();
    Err("thread-exec: the exec thread returned".to_owned())
}

fn threads(rest: &[OsString]) -> Result<ExitCode, String> {
    let [n, _marker] = rest else {
        return Err(usage());
    };
    let n: usize = utf8(n)?
        .parse()
        .map_err(|e| format!("bad thread count {n:?}: {e}"))?;
    let barrier = Arc::new(Barrier::new(n + 1));
    let (tx, rx) = mpsc::channel();
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let barrier = Arc::clone(&barrier);
            let tx = tx.clone();
            thread::spawn(move || {
                let _ = tx.send(gettid());
                // Every thread is alive at this point at the same time.
                barrier.wait();
            })
        })
        .collect();
    drop(tx);
    barrier.wait();
    for h in handles {
        h.join().map_err(|_| "a thread panicked".to_owned())?;
    }
    let mut out = io::stdout().lock();
    for tid in rx {
        writeln!(out, "tid={tid}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn prctl_name(rest: &[OsString]) -> Result<ExitCode, String> {
    let (name, cmd) = rest.split_first().ok_or_else(usage)?;
    let cname = cstring(name).map_err(|e| e.to_string())?;
    // SAFETY: PR_SET_NAME reads a NUL-terminated string (the kernel copies at
    // most 16 bytes) that outlives the call.
    let r = unsafe { libc::prctl(libc::PR_SET_NAME, cname.as_ptr(), 0, 0, 0) };
    if r != 0 {
        return Err(format!(
            "prctl(PR_SET_NAME): {}",
            io::Error::last_os_error()
        ));
    }
    let comm = std::fs::read_to_string("/proc/self/comm").map_err(|e| e.to_string())?;
    if !utf8(name)?.starts_with(comm.trim_end()) {
        return Err(format!("comm is {comm:?} after PR_SET_NAME({name:?})"));
    }
    let Some((prog, args)) = cmd.split_first() else {
        thread::sleep(Duration::from_millis(100));
        return Ok(ExitCode::SUCCESS);
    };
    let mut child = Command::new(prog)
        .args(args)
        .spawn()
        .map_err(|e| format!("spawn {prog:?}: {e}"))?;
    println!("child={}", child.id());
    let status = child.wait().map_err(|e| e.to_string())?;
    let code = status.code().unwrap_or(101);
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(101)))
}

/// `connect PROTO ADDR [PROTO ADDR ...]`: connects one after another from
/// the same thread, printing one line per connect (`ok` or `errno=N`).
/// PROTO is tcp, udp or unix (ADDR is then a socket path).
fn connect(rest: &[OsString]) -> Result<ExitCode, String> {
    if rest.is_empty() || !rest.len().is_multiple_of(2) {
        return Err(usage());
    }
    for pair in rest.chunks_exact(2) {
        let [proto, addr] = pair else {
            return Err(usage());
        };
        let result = match utf8(proto)? {
            "unix" => unix_addr(addr)
                .and_then(|a| std::os::unix::net::UnixStream::connect_addr(&a))
                .map(drop),
            proto => connect_inet(proto, addr)?,
        };
        match result {
            Ok(()) => println!("ok"),
            Err(e) => println!("errno={}", e.raw_os_error().unwrap_or(0)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn connect_inet(proto: &str, addr: &OsString) -> Result<io::Result<()>, String> {
    let addr: SocketAddr = utf8(addr)?
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    Ok(match proto {
        "tcp" => TcpStream::connect(addr).map(drop),
        "udp" => {
            let local: SocketAddr = if addr.is_ipv4() {
                "0.0.0.0:0".parse().map_err(|e| format!("{e}"))?
            } else {
                "[::]:0".parse().map_err(|e| format!("{e}"))?
            };
            UdpSocket::bind(local).and_then(|s| s.connect(addr))
        }
        other => return Err(format!("unknown protocol {other:?}")),
    })
}

/// `struct clone_args` of clone3(2), up to `set_tid_size` (CLONE_ARGS_SIZE_VER1).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
}

/// Starts `PATH ARGS...` as a child whose pid is exactly `PID` (clone3 with
/// set_tid; needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE), waits for it and
/// exits with its exit code. Lets a test recycle a pid on purpose.
fn at_pid(rest: &[OsString]) -> Result<ExitCode, String> {
    let [pid, path, tail @ ..] = rest else {
        return Err(usage());
    };
    let pid: libc::pid_t = utf8(pid)?
        .parse()
        .map_err(|e| format!("bad pid {pid:?}: {e}"))?;
    // Everything the child needs is prepared before the clone: after it,
    // the child only calls execv and _exit.
    let cpath = cstring(path).map_err(|e| e.to_string())?;
    let mut argv = vec![cstring(path).map_err(|e| e.to_string())?];
    for a in tail {
        argv.push(cstring(a).map_err(|e| e.to_string())?);
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let set_tid = [pid];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: set_tid.as_ptr() as u64,
        set_tid_size: 1,
        ..CloneArgs::default()
    };
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: clone3 without CLONE_VM behaves like fork(2): the child gets a
    // copy of the address space and only calls execv (arguments prepared
    // above, alive in the copy) and _exit, both async-signal-safe.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            size_of::<CloneArgs>() as libc::size_t,
        )
    };
    if r < 0 {
        let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
        eprintln!("errno={errno}");
        std::process::exit(112);
    }
    if r == 0 {
        // SAFETY: see above; execv only returns on failure.
        unsafe {
            libc::execv(cpath.as_ptr(), ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    let child = r as libc::pid_t;
    println!("pid={child}");
    let _ = io::stdout().flush();
    let mut status: libc::c_int = 0;
    // SAFETY: waits for our own child; `status` outlives the call.
    let w = unsafe { libc::waitpid(child, &raw mut status, 0) };
    if w != child {
        return Err(format!("waitpid: {}", io::Error::last_os_error()));
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        101
    };
    Ok(ExitCode::from(u8::try_from(code).unwrap_or(101)))
}

fn parse_addr(addr: &OsString) -> Result<SocketAddr, String> {
    utf8(addr)?
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))
}

/// Prints "ok" or "errno=N" for the outcome of a network call.
fn print_outcome(result: io::Result<()>) -> Result<ExitCode, String> {
    match result {
        Ok(()) => println!("ok"),
        Err(e) => println!("errno={}", e.raw_os_error().unwrap_or(0)),
    }
    Ok(ExitCode::SUCCESS)
}

/// One datagram with sendto(2) on a socket that was never connected.
/// A Unix socket address: a path, or `@name` for an abstract name.
fn unix_addr(addr: &OsString) -> io::Result<std::os::unix::net::SocketAddr> {
    use std::os::linux::net::SocketAddrExt as _;
    match addr.as_bytes().strip_prefix(b"@") {
        Some(name) => std::os::unix::net::SocketAddr::from_abstract_name(name),
        None => std::os::unix::net::SocketAddr::from_pathname(addr),
    }
}

fn sendto(rest: &[OsString]) -> Result<ExitCode, String> {
    let [proto, addr] = rest else {
        return Err(usage());
    };
    if utf8(proto)? == "unix" {
        let result = unix_addr(addr).and_then(|a| {
            let s = std::os::unix::net::UnixDatagram::unbound()?;
            s.send_to_addr(b"sensor-test-helper sendto", &a).map(drop)
        });
        return print_outcome(result);
    }
    if utf8(proto)? != "udp" {
        return Err(format!("sendto: only udp and unix, not {proto:?}"));
    }
    let addr = parse_addr(addr)?;
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().map_err(|e| format!("{e}"))?
    } else {
        "[::]:0".parse().map_err(|e| format!("{e}"))?
    };
    let result = UdpSocket::bind(local).and_then(|s| {
        let n = s.send_to(b"sensor-test-helper sendto", addr)?;
        if n == 0 {
            return Err(io::Error::other("sent 0 bytes"));
        }
        Ok(())
    });
    print_outcome(result)
}

/// A `sockaddr_in`/`sockaddr_in6` for `addr`, in a `sockaddr_storage`.
fn raw_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for
            // sockaddr_in.
            unsafe {
                std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in>(), sin);
            }
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: as above, for sockaddr_in6.
            unsafe {
                std::ptr::write((&raw mut storage).cast::<libc::sockaddr_in6>(), sin6);
            }
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// A TCP connect submitted as IORING_OP_CONNECT: the kernel does the connect
/// from the ring (inline or from an io-wq worker), never through connect(2).
fn uring_connect(rest: &[OsString]) -> Result<ExitCode, String> {
    let [addr] = rest else {
        return Err(usage());
    };
    let addr = parse_addr(addr)?;
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket(2) has no memory-safety preconditions.
    let fd = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket: {}", io::Error::last_os_error()));
    }
    let mut ring = io_uring::IoUring::new(4).map_err(|e| format!("io_uring_setup: {e}"))?;
    let (storage, len) = raw_sockaddr(addr);
    let sqe = io_uring::opcode::Connect::new(
        io_uring::types::Fd(fd),
        (&raw const storage).cast::<libc::sockaddr>(),
        len,
    )
    .build()
    .user_data(7);
    // SAFETY: the sockaddr the entry points to lives until the completion is
    // reaped below.
    unsafe {
        ring.submission()
            .push(&sqe)
            .map_err(|e| format!("push: {e}"))?;
    }
    ring.submit_and_wait(1)
        .map_err(|e| format!("io_uring_enter: {e}"))?;
    let cqe = ring
        .completion()
        .next()
        .ok_or_else(|| "io_uring: no completion".to_owned())?;
    let res = cqe.result();
    // SAFETY: closing the socket this function opened.
    unsafe {
        libc::close(fd);
    }
    let result = if res < 0 {
        Err(io::Error::from_raw_os_error(-res))
    } else {
        Ok(())
    };
    print_outcome(result)
}

/// `[PATH, ARGS...]` and the current environment as C strings.
fn exec_vectors(path: &OsString, tail: &[OsString]) -> io::Result<(Vec<CString>, Vec<CString>)> {
    let mut argv = vec![cstring(path)?];
    for a in tail {
        argv.push(cstring(a)?);
    }
    let mut envp = Vec::new();
    for (k, v) in std::env::vars_os() {
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        envp.push(CString::new(kv).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?);
    }
    Ok((argv, envp))
}

/// execveat(fd, "", argv, envp, AT_EMPTY_PATH); returns only on failure.
fn execveat_fd(fd: libc::c_int, argv: &[CString], envp: &[CString]) -> io::Error {
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let mut envp_ptrs: Vec<*const libc::c_char> = envp.iter().map(|a| a.as_ptr()).collect();
    envp_ptrs.push(std::ptr::null());
    let empty = c"";
    // SAFETY: every pointer is to a NUL-terminated string alive for the call;
    // both vectors end with a null pointer.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            fd,
            empty.as_ptr(),
            argv_ptrs.as_ptr(),
            envp_ptrs.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    io::Error::last_os_error()
}

/// fexecve of an anonymous copy of PATH: the file executed has no path.
fn memfd_exec(rest: &[OsString]) -> Result<ExitCode, String> {
    let (path, tail) = rest.split_first().ok_or_else(usage)?;
    let bytes = std::fs::read(path).map_err(|e| format!("read {path:?}: {e}"))?;
    let (argv, envp) = exec_vectors(path, tail).map_err(|e| e.to_string())?;
    // SAFETY: memfd_create reads a NUL-terminated name.
    let fd = unsafe { libc::memfd_create(c"sensor-test-memfd".as_ptr(), 0) };
    if fd < 0 {
        exec_failed(&io::Error::last_os_error());
    }
    let mut written = 0;
    while written < bytes.len() {
        // SAFETY: writes from a live buffer of at least the given length.
        let n = unsafe { libc::write(fd, bytes[written..].as_ptr().cast(), bytes.len() - written) };
        if n <= 0 {
            exec_failed(&io::Error::last_os_error());
        }
        written += n as usize;
    }
    exec_failed(&execveat_fd(fd, &argv, &envp))
}

/// execveat(2) with AT_EMPTY_PATH on a descriptor of PATH.
fn execveat_empty(rest: &[OsString]) -> Result<ExitCode, String> {
    let (path, tail) = rest.split_first().ok_or_else(usage)?;
    let (argv, envp) = exec_vectors(path, tail).map_err(|e| e.to_string())?;
    let cpath = cstring(path).map_err(|e| e.to_string())?;
    // SAFETY: open(2) reads a NUL-terminated path. No O_CLOEXEC: the fd stays
    // valid for the whole exec (and would be inherited, as for a script).
    let fd = unsafe { libc::open(cpath.as_ptr(), libc::O_RDONLY) };
    if fd < 0 {
        exec_failed(&io::Error::last_os_error());
    }
    exec_failed(&execveat_fd(fd, &argv, &envp))
}

/// Forks N children at once (each sleeps 2 s, then exits 0) and reports how
/// each ended.
fn fork_children(rest: &[OsString]) -> Result<ExitCode, String> {
    let [n] = rest else {
        return Err(usage());
    };
    let n: usize = utf8(n)?
        .parse()
        .map_err(|e| format!("bad child count {n:?}: {e}"))?;
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    let mut children = Vec::with_capacity(n);
    for _ in 0..n {
        // SAFETY: this program has a single thread here; the child only calls
        // async-signal-safe functions (nanosleep, _exit).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(format!("fork: {}", io::Error::last_os_error()));
        }
        if pid == 0 {
            let ts = libc::timespec {
                tv_sec: 2,
                tv_nsec: 0,
            };
            // SAFETY: nanosleep and _exit are async-signal-safe; `ts` lives.
            unsafe {
                libc::nanosleep(&raw const ts, std::ptr::null_mut());
                libc::_exit(0);
            }
        }
        children.push(pid);
    }
    let mut out = io::stdout().lock();
    for pid in children {
        let mut status: libc::c_int = 0;
        // SAFETY: waits for our own child; `status` outlives the call.
        let w = unsafe { libc::waitpid(pid, &raw mut status, 0) };
        let what = if w != pid {
            format!(
                "waitpid-errno:{}",
                io::Error::last_os_error().raw_os_error().unwrap_or(0)
            )
        } else if libc::WIFEXITED(status) {
            format!("exited:{}", libc::WEXITSTATUS(status))
        } else if libc::WIFSIGNALED(status) {
            format!("signaled:{}", libc::WTERMSIG(status))
        } else {
            format!("other:{status}")
        };
        writeln!(out, "child={pid} status={what}").map_err(|e| e.to_string())?;
    }
    out.flush().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

/// One request line on a Unix stream socket; returns the first answer line.
fn exchange(stream: &mut std::os::unix::net::UnixStream, line: &[u8]) -> io::Result<String> {
    use std::io::{BufRead as _, BufReader};
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    // A daemon may answer an oversized request and close before reading
    // all of it: the rest of the write then fails (EPIPE), and the answer
    // is still there to read.
    match stream
        .write_all(line)
        .and_then(|()| stream.write_all(b"\n"))
    {
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        other => other?,
    }
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    Ok(answer.trim_end().to_owned())
}

fn control(rest: &[OsString]) -> Result<ExitCode, String> {
    let [socket, line] = rest else {
        return Err(usage());
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connect {socket:?}: {e}"))?;
    let answer = exchange(&mut stream, line.as_bytes()).map_err(|e| format!("exchange: {e}"))?;
    println!("{answer}");
    Ok(ExitCode::SUCCESS)
}

fn late_request(rest: &[OsString]) -> Result<ExitCode, String> {
    let [socket, line, go, out] = rest else {
        return Err(usage());
    };
    let mut stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(|e| format!("connect {socket:?}: {e}"))?;
    let _ = io::stdout().flush();
    // SAFETY: single-threaded here; the child only uses the stream, the
    // file system and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", io::Error::last_os_error()));
    }
    if pid > 0 {
        println!("pid={}", std::process::id());
        return Ok(ExitCode::SUCCESS);
    }
    // The child must not hold the caller's pipes open (it waits on them).
    // SAFETY: closing our own stdout and stderr.
    unsafe {
        libc::close(1);
        libc::close(2);
    }
    let go = std::path::Path::new(go);
    for _ in 0..600 {
        if go.exists() {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    let answer = exchange(&mut stream, line.as_bytes()).unwrap_or_else(|e| format!("error: {e}"));
    let _ = std::fs::write(out, answer);
    std::process::exit(0);
}

fn clone_parent(rest: &[OsString]) -> Result<ExitCode, String> {
    let [delay, path, tail @ ..] = rest else {
        return Err(usage());
    };
    let delay: u64 = utf8(delay)?
        .parse()
        .map_err(|e| format!("bad delay {delay:?}: {e}"))?;
    let cpath = cstring(path).map_err(|e| e.to_string())?;
    let mut argv = vec![cstring(path).map_err(|e| e.to_string())?];
    for a in tail {
        argv.push(cstring(a).map_err(|e| e.to_string())?);
    }
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(delay / 1000).unwrap_or(0),
        tv_nsec: libc::c_long::try_from((delay % 1000) * 1_000_000).unwrap_or(0),
    };
    let args = CloneArgs {
        flags: libc::CLONE_PARENT as u64,
        ..CloneArgs::default()
    };
    let _ = io::stdout().flush();
    let _ = io::stderr().flush();
    // SAFETY: clone3 without CLONE_VM is a fork; the child only calls
    // nanosleep, execv and _exit on data prepared before the clone.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw const args,
            size_of::<CloneArgs>() as libc::size_t,
        )
    };
    if r < 0 {
        return Err(format!(
            "clone3(CLONE_PARENT): {}",
            io::Error::last_os_error()
        ));
    }
    if r == 0 {
        // SAFETY: see above.
        unsafe {
            libc::nanosleep(&raw const ts, std::ptr::null_mut());
            libc::execv(cpath.as_ptr(), ptrs.as_ptr());
            libc::_exit(127);
        }
    }
    println!("pid={r}");
    Ok(ExitCode::SUCCESS)
}

fn sendto_flood(rest: &[OsString]) -> Result<ExitCode, String> {
    let [addr, threads, secs] = rest else {
        return Err(usage());
    };
    let addr = parse_addr(addr)?;
    let threads: usize = utf8(threads)?
        .parse()
        .map_err(|e| format!("bad thread count: {e}"))?;
    let secs: u64 = utf8(secs)?
        .parse()
        .map_err(|e| format!("bad seconds: {e}"))?;
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            thread::spawn(move || -> (u64, u64) {
                let Ok(sock) = UdpSocket::bind("0.0.0.0:0") else {
                    return (0, 0);
                };
                let (mut sent, mut failed) = (0, 0);
                while std::time::Instant::now() < until {
                    for _ in 0..256 {
                        if sock.send_to(b"x", addr).is_ok() {
                            sent += 1;
                        } else {
                            failed += 1;
                        }
                    }
                }
                (sent, failed)
            })
        })
        .collect();
    let (mut sent, mut failed) = (0, 0);
    for h in handles {
        let (s, f) = h.join().map_err(|_| "a flood thread panicked".to_owned())?;
        sent += s;
        failed += f;
    }
    println!("sent={sent} failed={failed}");
    Ok(ExitCode::SUCCESS)
}

fn hold_connections(rest: &[OsString]) -> Result<ExitCode, String> {
    use std::io::Read as _;
    let [socket, n, secs] = rest else {
        return Err(usage());
    };
    let n: usize = utf8(n)?.parse().map_err(|e| format!("bad count: {e}"))?;
    let secs: u64 = utf8(secs)?
        .parse()
        .map_err(|e| format!("bad seconds: {e}"))?;
    let mut streams = Vec::with_capacity(n);
    for _ in 0..n {
        match std::os::unix::net::UnixStream::connect(socket) {
            Ok(s) => streams.push(s),
            Err(e) => {
                eprintln!("connect: {e}");
                break;
            }
        }
    }
    thread::sleep(Duration::from_secs(secs));
    let mut closed = 0;
    for s in &mut streams {
        let _ = s.set_nonblocking(true);
        let mut buf = [0u8; 512];
        match s.read(&mut buf) {
            // EOF or an error line then EOF: the peer let go of it.
            Ok(_) => closed += 1,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => closed += 1,
        }
    }
    println!("opened={} closed_by_peer={closed}", streams.len());
    Ok(ExitCode::SUCCESS)
}

fn unix_server(rest: &[OsString]) -> Result<ExitCode, String> {
    let [kind, addr, secs] = rest else {
        return Err(usage());
    };
    let secs: u64 = utf8(secs)?
        .parse()
        .map_err(|e| format!("bad seconds: {e}"))?;
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    let addr = unix_addr(addr).map_err(|e| format!("address: {e}"))?;
    let mut accepted = 0u64;
    match utf8(kind)? {
        "stream" => {
            let l = std::os::unix::net::UnixListener::bind_addr(&addr)
                .map_err(|e| format!("bind: {e}"))?;
            l.set_nonblocking(true).map_err(|e| e.to_string())?;
            println!("ready");
            let _ = io::stdout().flush();
            let mut held = Vec::new();
            while std::time::Instant::now() < until {
                match l.accept() {
                    Ok((c, _)) => {
                        accepted += 1;
                        held.push(c);
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        }
        "dgram" => {
            let d = std::os::unix::net::UnixDatagram::bind_addr(&addr)
                .map_err(|e| format!("bind: {e}"))?;
            d.set_read_timeout(Some(Duration::from_millis(50)))
                .map_err(|e| e.to_string())?;
            println!("ready");
            let _ = io::stdout().flush();
            let mut buf = [0u8; 512];
            while std::time::Instant::now() < until {
                if d.recv(&mut buf).is_ok() {
                    accepted += 1;
                }
            }
        }
        other => return Err(format!("unix-server: stream or dgram, not {other:?}")),
    }
    println!("accepted={accepted}");
    Ok(ExitCode::SUCCESS)
}

static TARGET_DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

extern "C" fn on_usr1(_: libc::c_int) {
    TARGET_DONE.store(true, std::sync::atomic::Ordering::SeqCst);
}

fn memory_target(rest: &[OsString]) -> Result<ExitCode, String> {
    use std::os::fd::AsRawFd as _;
    let [file, secs] = rest else {
        return Err(usage());
    };
    let secs: u64 = utf8(secs)?
        .parse()
        .map_err(|e| format!("bad seconds: {e}"))?;
    let f = std::fs::File::open(file).map_err(|e| format!("open {file:?}: {e}"))?;
    let buffer: Box<[u8; 64]> =
        Box::new(*b"untouched-untouched-untouched-untouched-untouched-untouched-xxxx");
    // SAFETY: installing a handler that only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGUSR1, on_usr1 as *const () as libc::sighandler_t);
    }
    println!(
        "pid={} addr={} fd={}",
        std::process::id(),
        buffer.as_ptr() as usize,
        f.as_raw_fd()
    );
    let _ = io::stdout().flush();
    let until = std::time::Instant::now() + Duration::from_secs(secs);
    while std::time::Instant::now() < until
        && !TARGET_DONE.load(std::sync::atomic::Ordering::SeqCst)
    {
        thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: reading our own buffer, which another process may have written.
    let seen = unsafe { std::ptr::read_volatile(buffer.as_ptr().cast::<[u8; 64]>()) };
    println!("buffer={}", String::from_utf8_lossy(&seen));
    drop(f);
    Ok(ExitCode::SUCCESS)
}

fn inject(rest: &[OsString]) -> Result<ExitCode, String> {
    let [how, pid, what] = rest else {
        return Err(usage());
    };
    let pid: libc::pid_t = utf8(pid)?.parse().map_err(|e| format!("bad pid: {e}"))?;
    let what: usize = utf8(what)?
        .parse()
        .map_err(|e| format!("bad address/fd: {e}"))?;
    let payload = *b"injected";
    let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
    // SAFETY (each call): the syscalls get valid pointers to our own buffers;
    // what they do to the other process is the point of this helper.
    let result: Result<(), i32> = match utf8(how)? {
        "ptrace" => unsafe {
            if libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) != 0 {
                Err(errno())
            } else {
                let mut status = 0;
                libc::waitpid(pid, &raw mut status, 0);
                let word = i64::from_ne_bytes(payload);
                let r = libc::ptrace(libc::PTRACE_POKEDATA, pid, what, word);
                libc::ptrace(libc::PTRACE_DETACH, pid, 0, 0);
                if r != 0 { Err(errno()) } else { Ok(()) }
            }
        },
        "vm-write" => unsafe {
            let local = libc::iovec {
                iov_base: payload.as_ptr() as *mut libc::c_void,
                iov_len: payload.len(),
            };
            let remote = libc::iovec {
                iov_base: what as *mut libc::c_void,
                iov_len: payload.len(),
            };
            let n = libc::process_vm_writev(pid, &raw const local, 1, &raw const remote, 1, 0);
            if n < 0 { Err(errno()) } else { Ok(()) }
        },
        "getfd" => unsafe {
            let pidfd = libc::syscall(libc::SYS_pidfd_open, pid, 0);
            if pidfd < 0 {
                Err(errno())
            } else {
                let fd = libc::syscall(libc::SYS_pidfd_getfd, pidfd, what, 0);
                if fd < 0 {
                    Err(errno())
                } else {
                    let mut buf = [0u8; 16];
                    let n = libc::read(fd as libc::c_int, buf.as_mut_ptr().cast(), buf.len());
                    if n < 0 { Err(errno()) } else { Ok(()) }
                }
            }
        },
        "mem" => {
            use std::os::unix::fs::FileExt as _;
            match std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(format!("/proc/{pid}/mem"))
            {
                Ok(f) => f
                    .write_at(&payload, what as u64)
                    .map(drop)
                    .map_err(|e| e.raw_os_error().unwrap_or(0)),
                Err(e) => Err(e.raw_os_error().unwrap_or(0)),
            }
        }
        other => {
            return Err(format!(
                "inject: ptrace, vm-write, getfd or mem, not {other:?}"
            ));
        }
    };
    match result {
        Ok(()) => println!("done"),
        Err(e) => println!("errno={e}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `fs-op`: one change by this very process (so that it is the actor the
/// sensor names), then it lingers, so that a kill after the fact finds it.
fn fs_op(rest: &[OsString]) -> Result<ExitCode, String> {
    use std::os::unix::fs::PermissionsExt as _;
    let Some((linger, args)) = rest.split_last() else {
        return Err(usage());
    };
    let linger: u64 = utf8(linger)?
        .parse()
        .map_err(|e| format!("bad linger: {e}"))?;
    let result = match args {
        [op, path] if op == "unlink" => std::fs::remove_file(path),
        [op, path] if op == "mkdir" => std::fs::create_dir(path),
        [op, path] if op == "rmdir" => std::fs::remove_dir(path),
        [op, path, new] if op == "rename" => std::fs::rename(path, new),
        [op, path, mode] if op == "chmod" => {
            let mode = u32::from_str_radix(utf8(mode)?, 8).map_err(|e| format!("bad mode: {e}"))?;
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        }
        [op, path, len] if op == "truncate" => {
            let len: i64 = utf8(len)?.parse().map_err(|e| format!("bad length: {e}"))?;
            let c = CString::new(path.as_bytes()).map_err(|e| e.to_string())?;
            // SAFETY: truncate(2) by path, a valid C string.
            if unsafe { libc::truncate(c.as_ptr(), len) } == 0 {
                Ok(())
            } else {
                Err(io::Error::last_os_error())
            }
        }
        [op, dir, n] if op == "churn" => {
            let n: u32 = utf8(n)?.parse().map_err(|e| format!("bad count: {e}"))?;
            let dir = std::path::Path::new(dir);
            (0..n).try_for_each(|i| {
                let f = dir.join(format!("churn-{i}"));
                std::fs::File::create(&f)?;
                std::fs::remove_file(&f)
            })
        }
        _ => return Err(format!("fs-op: unknown operation; {}", usage())),
    };
    match result {
        Ok(()) => println!("done"),
        Err(e) => println!("errno={}", e.raw_os_error().unwrap_or(0)),
    }
    let _ = io::stdout().flush();
    thread::sleep(Duration::from_secs(linger));
    Ok(ExitCode::SUCCESS)
}

fn socket(rest: &[OsString]) -> Result<ExitCode, String> {
    let [kind] = rest else {
        return Err(usage());
    };
    let (family, ty, proto) = match utf8(kind)? {
        "raw" => (libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_TCP),
        "icmp" => (libc::AF_INET, libc::SOCK_DGRAM, libc::IPPROTO_ICMP),
        "icmp6" => (libc::AF_INET6, libc::SOCK_DGRAM, libc::IPPROTO_ICMPV6),
        "packet" => (
            libc::AF_PACKET,
            libc::SOCK_RAW,
            i32::from((libc::ETH_P_ALL as u16).to_be()),
        ),
        other => return Err(format!("socket: raw, icmp, icmp6 or packet, not {other:?}")),
    };
    // SAFETY: socket(2) with plain integers.
    let fd = unsafe { libc::socket(family, ty, proto) };
    if fd < 0 {
        println!(
            "errno={}",
            io::Error::last_os_error().raw_os_error().unwrap_or(0)
        );
    } else {
        println!("ok");
    }
    Ok(ExitCode::SUCCESS)
}

fn listen_accept(rest: &[OsString]) -> Result<ExitCode, String> {
    let [addr] = rest else {
        return Err(usage());
    };
    let l = std::net::TcpListener::bind(parse_addr(addr)?).map_err(|e| format!("bind: {e}"))?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    println!("port={port}");
    let _ = io::stdout().flush();
    let (_conn, _) = l.accept().map_err(|e| format!("accept: {e}"))?;
    println!("accepted");
    Ok(ExitCode::SUCCESS)
}

fn sendto_n(rest: &[OsString]) -> Result<ExitCode, String> {
    let [addr, n] = rest else {
        return Err(usage());
    };
    let addr = parse_addr(addr)?;
    let n: u32 = utf8(n)?.parse().map_err(|e| format!("bad count: {e}"))?;
    let sock = UdpSocket::bind("0.0.0.0:0").map_err(|e| e.to_string())?;
    let mut sent = 0;
    for _ in 0..n {
        if sock.send_to(b"x", addr).is_ok() {
            sent += 1;
        }
    }
    println!("sent={sent}");
    Ok(ExitCode::SUCCESS)
}

/// One connect that stays in the syscall (its SYN dropped by a full accept
/// queue until the test makes room) while many short-lived threads each
/// make one connect: a thread's connect slot in the kernel must survive
/// them.
fn connect_under_churn(rest: &[OsString]) -> Result<ExitCode, String> {
    let [addr, flood, n, ready] = rest else {
        return Err(usage());
    };
    let parse = |a: &OsString| -> Result<SocketAddr, String> {
        utf8(a)?
            .parse()
            .map_err(|e| format!("bad address {a:?}: {e}"))
    };
    let (addr, flood) = (parse(addr)?, parse(flood)?);
    let n: usize = utf8(n)?.parse().map_err(|e| format!("bad count: {e}"))?;
    let slow = thread::spawn(move || TcpStream::connect(addr).map(drop));
    // Long enough for the slow connect to be inside the syscall.
    thread::sleep(Duration::from_millis(200));
    for _ in 0..n {
        thread::spawn(move || {
            let _ = TcpStream::connect(flood);
        })
        .join()
        .map_err(|_| "a flood thread panicked".to_owned())?;
    }
    std::fs::write(ready, b"").map_err(|e| format!("cannot write {ready:?}: {e}"))?;
    let result = slow
        .join()
        .map_err(|_| "the connecting thread panicked".to_owned())?;
    match result {
        Ok(()) => println!("ok"),
        Err(e) => println!("errno={}", e.raw_os_error().unwrap_or(0)),
    }
    Ok(ExitCode::SUCCESS)
}

//! Small programs the integration tests run to make the kernel do things a
//! shell cannot: exec from a non-leader thread, start threads, rename itself,
//! fake argv[0], fail an exec, connect sockets.
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
//! sensor-test-helper at-pid PID PATH [ARGS...]      clone3(2) with set_tid = [PID]: a child with
//!                                                   exactly that pid execv(PATH, [PATH, ARGS...]);
//!                                                   prints "pid=PID", waits, exits with its code;
//!                                                   exits 112 with "errno=N" when the pid cannot
//!                                                   be had (EEXIST: in use)
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
    "usage: sensor-test-helper exec|fake-argv0|thread-exec|threads|prctl-name|connect|at-pid ..."
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

fn connect(rest: &[OsString]) -> Result<ExitCode, String> {
    let [proto, addr] = rest else {
        return Err(usage());
    };
    let addr: SocketAddr = utf8(addr)?
        .parse()
        .map_err(|e| format!("bad address {addr:?}: {e}"))?;
    let result = match utf8(proto)? {
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
    };
    match result {
        Ok(()) => println!("ok"),
        Err(e) => println!("errno={}", e.raw_os_error().unwrap_or(0)),
    }
    Ok(ExitCode::SUCCESS)
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

//! Storm drivers: tight loops of the syscalls the sensor hooks. Each returns
//! the wall time of the whole storm; set-up (binding a listener) is outside it.

use std::{
    io::{ErrorKind, Read as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

/// Spawner threads in the exec storm.
pub const EXEC_THREADS: usize = 2;
const TRUE_BIN: &str = "/bin/true";

/// `n` spawns of /bin/true from two threads, each waited for. std's `Command`
/// uses posix_spawn (vfork + exec) here: no cwd, uid or pre_exec changes.
pub fn exec_storm(n: usize) -> Result<Duration> {
    let start = Instant::now();
    thread::scope(|scope| -> Result<()> {
        let spawners: Vec<_> = (0..EXEC_THREADS)
            .map(|index| {
                // Split n as evenly as possible.
                let count = n / EXEC_THREADS + usize::from(index < n % EXEC_THREADS);
                scope.spawn(move || spawn_true(count))
            })
            .collect();
        for spawner in spawners {
            spawner
                .join()
                .map_err(|_| anyhow!("exec storm: a spawner thread panicked"))??;
        }
        Ok(())
    })?;
    Ok(start.elapsed())
}

fn spawn_true(count: usize) -> Result<()> {
    for _ in 0..count {
        // Without `cargo run`'s LD_LIBRARY_PATH (five target and toolchain
        // directories): under it the dynamic loader of /bin/true tried 53
        // paths that do not exist before libc.so.6, 55 openat calls per exec
        // instead of 2, so the storm measured opens as much as execs.
        let status = Command::new(TRUE_BIN)
            .env_remove("LD_LIBRARY_PATH")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .with_context(|| format!("exec storm: cannot spawn {TRUE_BIN}"))?;
        if !status.success() {
            bail!("exec storm: {TRUE_BIN} exited with {status}");
        }
    }
    Ok(())
}

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// `n` loopback TCP connections, one after another: connect, then wait for
/// the listener thread to accept and close (reset), so every op is complete.
///
/// The client and the listener thread are both pinned to one CPU. Otherwise
/// each op hands off between cores, and the time is dominated by whether the
/// other core was idle (wake-up latency, tens of µs in a VM), which makes the
/// numbers bimodal from run to run.
pub fn connect_storm(n: usize) -> Result<Duration> {
    let listener = TcpListener::bind("127.0.0.1:0").context("connect storm: cannot bind")?;
    let addr = listener
        .local_addr()
        .context("connect storm: no local address")?;
    let cpu = storm_cpu()?;
    let stop = AtomicBool::new(false);
    thread::scope(|scope| -> Result<Duration> {
        let acceptor = scope.spawn(|| {
            pin_to_cpu(cpu)?;
            accept_and_close(&listener, n, &stop)
        });
        let client = scope
            .spawn(|| -> Result<Duration> {
                pin_to_cpu(cpu)?;
                let start = Instant::now();
                connect_n(addr, n)?;
                Ok(start.elapsed())
            })
            .join()
            .map_err(|_| anyhow!("connect storm: the client thread panicked"))
            .and_then(|result| result);
        if client.is_err() {
            // Wake the acceptor so it sees `stop` and the scope can end.
            stop.store(true, Ordering::SeqCst);
            let _ = TcpStream::connect_timeout(&addr, IO_TIMEOUT);
        }
        let accepted = acceptor
            .join()
            .map_err(|_| anyhow!("connect storm: the listener thread panicked"))?;
        let elapsed = client?;
        accepted?;
        Ok(elapsed)
    })
}

/// The highest-numbered CPU this process may run on.
fn storm_cpu() -> Result<usize> {
    // SAFETY: cpu_set_t is plain bytes; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid, writable cpu_set_t of the size passed.
    if unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut set) } != 0 {
        return Err(std::io::Error::last_os_error()).context("sched_getaffinity failed");
    }
    (0..libc::CPU_SETSIZE as usize)
        .rev()
        // SAFETY: cpu is below CPU_SETSIZE, the size of `set`.
        .find(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .context("sched_getaffinity returned an empty CPU set")
}

/// Pin the calling thread to `cpu`.
fn pin_to_cpu(cpu: usize) -> Result<()> {
    // SAFETY: cpu_set_t is plain bytes; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the caller got cpu from storm_cpu, so it is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("cannot pin the storm thread to CPU {cpu}"));
    }
    Ok(())
}

fn accept_and_close(listener: &TcpListener, n: usize, stop: &AtomicBool) -> Result<()> {
    for _ in 0..n {
        let (stream, _) = listener.accept().context("connect storm: accept failed")?;
        reset_on_close(&stream)?;
        drop(stream);
        if stop.load(Ordering::SeqCst) {
            break;
        }
    }
    Ok(())
}

/// SO_LINGER with a zero timeout: closing sends a RST and leaves no TIME_WAIT
/// socket behind, so storms of any size never run out of ports or buckets.
fn reset_on_close(stream: &TcpStream) -> Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let len =
        libc::socklen_t::try_from(size_of::<libc::linger>()).context("linger size out of range")?;
    // SAFETY: the fd is open for the lifetime of `stream`, and the option
    // value points to a `linger` of the size passed.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .context("connect storm: cannot set SO_LINGER on the accepted socket");
    }
    Ok(())
}

fn connect_n(addr: SocketAddr, n: usize) -> Result<()> {
    let mut buf = [0_u8; 1];
    for index in 0..n {
        let mut stream = match TcpStream::connect_timeout(&addr, IO_TIMEOUT) {
            Ok(stream) => stream,
            // The listener accepted and reset the connection before the
            // non-blocking connect was polled: the op is complete.
            Err(err) if err.kind() == ErrorKind::ConnectionReset => continue,
            Err(err) => {
                return Err(err)
                    .with_context(|| format!("connect storm: connect {index} to {addr} failed"));
            }
        };
        stream
            .set_read_timeout(Some(IO_TIMEOUT))
            .context("connect storm: cannot set a read timeout")?;
        loop {
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(_) => bail!("connect storm: the listener sent data"),
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                // A reset instead of a FIN still means the server closed.
                Err(err) if err.kind() == ErrorKind::ConnectionReset => break,
                Err(err) => {
                    return Err(err).with_context(|| {
                        format!("connect storm: waiting for the close of connection {index}")
                    });
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_storms_complete() {
        assert!(exec_storm(5).is_ok());
        assert!(connect_storm(20).is_ok());
        assert!(exec_storm(0).is_ok());
        assert!(connect_storm(0).is_ok());
    }
}

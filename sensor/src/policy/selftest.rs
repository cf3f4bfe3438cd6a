//! Proof, on this kernel, that enforcement works: two children are put in a
//! throw-away run bound to a deny-everything enforce policy; one connects to
//! 127.0.0.1:9 and must get EPERM, the other execs /bin/true and must die of
//! SIGKILL before it runs. `sensor doctor` reports the outcome, and the
//! daemon refuses to start an enforce policy when it fails.

use std::{
    os::fd::AsRawFd as _,
    process::ExitStatus,
    time::{Duration, Instant},
};

use sensor_common::event::{HOW_LAUNCH, ProcRun};

use super::{ConnectConfig, ExecConfig, Mode, Policies, Policy, PolicyConfig, kernel::Enforcement};
use crate::run_map::RunMap;

/// Name of the throw-away policy (not a valid config name: it has a space).
const POLICY: &str = "sensor self-test";
/// Handle of the throw-away run (real handles count up from 1); its
/// records are not reported.
pub const RUN: u64 = u64::MAX;
/// How long a child may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// What the self-test found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// A denied connect failed with EPERM.
    pub connect_denied: Result<(), SelfTestError>,
    /// A denied exec was killed before it ran.
    pub exec_killed: Result<(), SelfTestError>,
}

/// Why a part of the self-test failed. Shared (`Arc`) where the cause is
/// not `Clone`: one failure to set the test up fails both parts.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SelfTestError {
    #[error("{0}")]
    Policy(std::sync::Arc<super::PolicyError>),
    #[error("{0}")]
    Kernel(std::sync::Arc<super::kernel::EnforcementError>),
    #[error("pipe: {0}")]
    Pipe(nix::errno::Errno),
    #[error("fork: {0}")]
    Fork(nix::errno::Errno),
    #[error("wait: {0}")]
    Wait(nix::errno::Errno),
    #[error("the child vanished")]
    Vanished,
    #[error("{0}")]
    Place(std::sync::Arc<aya::maps::MapError>),
    #[error("the child did not finish in time")]
    Timeout,
    #[error("connect to 127.0.0.1:9 was not refused with EPERM (errno {0})")]
    NotRefused(i32),
    #[error("the connecting child ended with {0}")]
    ConnectEnded(ExitStatus),
    #[error("/bin/true ran under a deny-all policy ({0})")]
    ExecRan(ExitStatus),
}

/// As its message (what `Result<(), String>` serialized before).
impl serde::Serialize for SelfTestError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl Outcome {
    /// Whether an enforce policy can be enforced here.
    #[must_use]
    pub fn ok(&self) -> bool {
        self.connect_denied.is_ok() && self.exec_killed.is_ok()
    }

    /// Why not, in one line.
    #[must_use]
    pub fn why_not(&self) -> Option<String> {
        let mut reasons = Vec::new();
        if let Err(e) = &self.connect_denied {
            reasons.push(format!("connect deny: {e}"));
        }
        if let Err(e) = &self.exec_killed {
            reasons.push(format!("exec kill: {e}"));
        }
        (!reasons.is_empty()).then(|| reasons.join("; "))
    }
}

/// Runs the self-test with the loaded programs' maps. The throw-away policy
/// stays installed until the next [`Enforcement::install`] replaces the set.
pub fn run(enforcement: &mut Enforcement, runs: &mut dyn RunMap, ns_per_tick: u64) -> Outcome {
    let policy = Policy::load(
        POLICY,
        &PolicyConfig {
            mode: Mode::Enforce,
            exec: ExecConfig::default(),
            connect: ConnectConfig::default(),
            ..PolicyConfig::default()
        },
    );
    let kernel = |e| SelfTestError::Kernel(std::sync::Arc::new(e));
    let installed = policy
        .map_err(|e| SelfTestError::Policy(std::sync::Arc::new(e)))
        .and_then(|p| enforcement.install(&Policies::of(vec![p])).map_err(kernel))
        .and_then(|()| enforcement.bind(RUN, Some(POLICY), None).map_err(kernel));
    if let Err(e) = installed {
        return Outcome {
            connect_denied: Err(e.clone()),
            exec_killed: Err(e),
        };
    }
    let connect_denied =
        in_run(runs, ns_per_tick, Child::Connect).and_then(|status| match status.code() {
            Some(0) => Ok(()),
            Some(errno) => Err(SelfTestError::NotRefused(errno)),
            None => Err(SelfTestError::ConnectEnded(status)),
        });
    let exec_killed = in_run(runs, ns_per_tick, Child::Exec).and_then(|status| {
        use std::os::unix::process::ExitStatusExt as _;
        match status.signal() {
            Some(9) => Ok(()),
            _ => Err(SelfTestError::ExecRan(status)),
        }
    });
    enforcement.unbind(RUN);
    Outcome {
        connect_denied,
        exec_killed,
    }
}

#[derive(Clone, Copy)]
enum Child {
    Connect,
    Exec,
}

/// Forks a child that waits until it is in the run, then does its part.
/// (Not `std::process::Command`: its spawn waits for the exec, which the
/// child holds back until it is placed.)
fn in_run(
    runs: &mut dyn RunMap,
    ns_per_tick: u64,
    what: Child,
) -> Result<ExitStatus, SelfTestError> {
    use std::os::unix::process::ExitStatusExt as _;

    let (go_read, go_write) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(SelfTestError::Pipe)?;
    let true_path = c"/bin/true";
    let argv = [true_path.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<nix::libc::c_char>()];
    // SAFETY: the child only makes async-signal-safe calls (read, socket,
    // connect, execve, _exit) before it exits or execs.
    let pid = match unsafe { nix::unistd::fork() }.map_err(SelfTestError::Fork)? {
        nix::unistd::ForkResult::Child => unsafe {
            // Only the parent writes: if it dies first, the read sees EOF.
            nix::libc::close(go_write.as_raw_fd());
            let mut byte = 0u8;
            if nix::libc::read(go_read.as_raw_fd(), (&raw mut byte).cast(), 1) != 1 {
                nix::libc::_exit(100);
            }
            match what {
                Child::Connect => {
                    let fd = nix::libc::socket(nix::libc::AF_INET, nix::libc::SOCK_STREAM, 0);
                    let addr = nix::libc::sockaddr_in {
                        sin_family: nix::libc::AF_INET as nix::libc::sa_family_t,
                        sin_port: 9u16.to_be(),
                        sin_addr: nix::libc::in_addr {
                            s_addr: u32::from_ne_bytes([127, 0, 0, 1]),
                        },
                        sin_zero: [0; 8],
                    };
                    let rc = nix::libc::connect(
                        fd,
                        (&raw const addr).cast(),
                        size_of::<nix::libc::sockaddr_in>() as nix::libc::socklen_t,
                    );
                    let errno = *nix::libc::__errno_location();
                    nix::libc::_exit(match (rc, errno) {
                        (0, _) => 101,
                        (_, nix::libc::EPERM) => 0,
                        (_, e) => e,
                    });
                }
                Child::Exec => {
                    nix::libc::execve(true_path.as_ptr(), argv.as_ptr(), envp.as_ptr());
                    nix::libc::_exit(102);
                }
            }
        },
        nix::unistd::ForkResult::Parent { child } => child,
    };
    drop(go_read);
    let raw_pid = u32::try_from(pid.as_raw()).unwrap_or_default();
    let placed = crate::identity::proc_start(raw_pid)
        .map(|(ticks, _)| ProcRun {
            run: RUN,
            start_ns: ticks * ns_per_tick,
            how: HOW_LAUNCH,
            _pad: 0,
        })
        .ok_or(SelfTestError::Vanished)
        .and_then(|entry| {
            runs.set(raw_pid, entry)
                .map_err(|e| SelfTestError::Place(std::sync::Arc::new(e)))
        });
    // Go (a child that could not be placed is reaped all the same).
    let _ = nix::unistd::write(&go_write, &[1]);
    drop(go_write);
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        match nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG)) {
            Ok(nix::sys::wait::WaitStatus::Exited(_, code)) => {
                break Ok(ExitStatus::from_raw((code & 0xff) << 8));
            }
            Ok(nix::sys::wait::WaitStatus::Signaled(_, sig, _)) => {
                break Ok(ExitStatus::from_raw(sig as i32));
            }
            Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(_) => {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(pid, None);
                break Err(SelfTestError::Timeout);
            }
            Err(e) => break Err(SelfTestError::Wait(e)),
        }
    };
    runs.remove(raw_pid);
    placed?;
    status
}

//! The control socket: a Unix stream socket speaking [`protocol`].
//!
//! The daemon removes a stale socket file, binds, and sets mode 0666: every
//! request is authorized on its own (by SO_PEERCRED and SO_PEERPIDFD where it
//! matters), and status shows a caller that is not root only counters.
//! Malformed or oversized requests get an error response and never disturb
//! the daemon; connections are bounded in all and per user, and each has a
//! few seconds to send its request (`[limits]`).

pub mod handler;
pub mod protocol;

use std::{
    collections::HashMap,
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::{
        fd::OwnedFd,
        unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
};

use tokio::sync::{mpsc, oneshot};

use self::protocol::{MAX_REQUEST_BYTES, Request, Response};
use crate::{
    attribution::Peer,
    policy::Policies,
    status::{DaemonState, Defense},
};

/// Work the pipeline must do (it owns attribution and the policies).
#[derive(Debug)]
pub enum Command {
    /// A request from a peer, to answer.
    Request {
        peer: Peer,
        request: Request,
        reply: oneshot::Sender<Response>,
    },
    /// Policies and `[[agent]]` matchers read and validated off the event
    /// thread (a reload: `sensor policy reload` or SIGHUP), to swap in
    /// together; `Err` says why they were not.
    Reload {
        loaded: Result<Box<Loaded>, ReloadError>,
        /// The `[detect]` rules, read and checked with the policies (`None`
        /// when `loaded` is an error); swapped in once the policies are.
        rules: Option<Box<crate::detect::RuleSet>>,
        reply: oneshot::Sender<Response>,
    },
}

impl Command {
    /// Whether handling it may put a process in a run (a `launch`).
    #[must_use]
    pub fn may_start_run(&self) -> bool {
        matches!(
            self,
            Self::Request {
                request: Request::Launch(_),
                ..
            }
        )
    }
}

/// What a reload read and validated: its policies and matchers are swapped
/// in together, or neither is.
#[derive(Debug)]
pub struct Loaded {
    pub policies: Policies,
    /// The `[[agent]]` tables (names, transcripts formats).
    pub agents: Vec<crate::attribution::AgentConfig>,
    /// Their matchers, compiled.
    pub matchers: crate::attribution::Matchers,
    /// The config's sections changed since the daemon started that a
    /// reload does not apply (`[limits]`, `[[output]]`, ...): the answer
    /// names them, so nobody takes them for applied.
    pub restart_needed: Vec<String>,
}

impl Loaded {
    /// The policies alone, no matchers (tests).
    #[must_use]
    pub fn policies(policies: Policies) -> Self {
        Self {
            policies,
            agents: Vec::new(),
            matchers: crate::attribution::Matchers::default(),
            restart_needed: Vec::new(),
        }
    }
}

/// Where a reload reads the config, and the config the daemon started
/// with (to name what changed that a reload does not apply).
#[derive(Debug, Clone)]
pub struct ReloadSource {
    /// The daemon's `--config` (absent: the default path, when present).
    pub path: Option<PathBuf>,
    pub started: Arc<crate::config::Config>,
}

/// The sections of `now` that differ from `started` and that only a
/// restart applies: everything but `[policy.*]`, `[[agent]]` and `[detect]`.
#[must_use]
pub fn restart_needed(started: &crate::config::Config, now: &crate::config::Config) -> Vec<String> {
    let mut changed = Vec::new();
    let mut check = |differs: bool, name: &str| {
        if differs {
            changed.push(name.to_owned());
        }
    };
    check(started.daemon != now.daemon, "[daemon]");
    check(started.store != now.store, "[store]");
    check(started.outputs != now.outputs, "[[output]]");
    check(started.metrics != now.metrics, "[metrics]");
    check(started.limits != now.limits, "[limits]");
    check(started.tokens != now.tokens, "[tokens]");
    check(started.provenance != now.provenance, "[provenance]");
    changed
}

/// What one client and one user may hold of the control socket.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once, in all.
    pub total: u32,
    /// Connections one user (uid) may have open at once.
    pub per_uid: u32,
    /// How long a connection may take to send its request.
    pub idle_timeout: Duration,
}

impl From<&crate::config::LimitsConfig> for ConnectionLimits {
    fn from(l: &crate::config::LimitsConfig) -> Self {
        Self {
            total: l.connections,
            per_uid: l.connections_per_uid,
            idle_timeout: Duration::from_secs(u64::from(l.idle_timeout_secs)),
        }
    }
}

/// Why the daemon refused a request or a connection (the message the
/// client gets).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many control connections ({0} open, [limits] connections)")]
    Connections(u32),
    #[error(
        "too many control connections from uid {uid} ({per_uid} open, [limits] connections_per_uid)"
    )]
    ConnectionsOfUid { uid: u32, per_uid: u32 },
    #[error("internal error")]
    Internal,
    #[error("the caller's pid is unknown (SO_PEERCRED); refusing")]
    PidUnknown,
    #[error("only root may reload the policies")]
    ReloadNotRoot,
    #[error("only root may take over the sensor")]
    HandoverNotRoot,
    #[error("a process in agent run {0} cannot take over the sensor")]
    HandoverFromRun(String),
    #[error("the caller is gone")]
    CallerGone,
    #[error("uid {uid} already has {active} active runs (at most {max}: [limits] runs_per_uid)")]
    RunsOfUid { uid: u32, active: u32, max: u32 },
    #[error(
        "too many launches from uid {uid} (more than {per_second} per second: [limits] launches_per_second)"
    )]
    LaunchRate { uid: u32, per_second: u32 },
    #[error("unknown policy {0:?} (the daemon's config defines none by that name)")]
    UnknownPolicy(String),
    #[error(
        "policy {policy:?} is wider than the parent run's policy {parent:?} \
         ({extra} is not in it): a sub-agent cannot gain rights its parent lacks"
    )]
    Wider {
        policy: String,
        parent: String,
        extra: crate::policy::Wider,
    },
}

/// What a refused reload leaves as it was: everything it would have
/// swapped in (`reload refused; {REFUSED_STAYS}: why`).
pub const REFUSED_STAYS: &str = "the policies, agent matchers and detection rules in force stay";

/// Why a policy reload was refused (nothing it would swap in changes:
/// [`REFUSED_STAYS`]).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The config's whole chain (file:line and cause) is the message, as
    /// the CLI prints a config error.
    #[error("{}", crate::error::Chain(.0.as_ref()))]
    Config(Box<crate::config::ConfigError>),
    #[error("loading the config failed: {0}")]
    Task(tokio::task::JoinError),
    #[error(transparent)]
    Engine(#[from] crate::engine::ReloadError),
    /// A rule file's path, line and cause.
    #[error("{0}")]
    Rules(Box<crate::detect::RuleError>),
}

/// Whether `peer` may send `request` at all (before it reaches the
/// pipeline): status is for everyone (redacted for all but root); anything
/// else needs a known pid, and a reload or a take-over needs root.
pub fn authorize(peer: &Peer, request: &Request) -> Result<(), Refusal> {
    match request {
        Request::Status => Ok(()),
        _ if peer.pid == 0 => Err(Refusal::PidUnknown),
        Request::ReloadPolicies if peer.uid != 0 => Err(Refusal::ReloadNotRoot),
        Request::Handover if peer.uid != 0 => Err(Refusal::HandoverNotRoot),
        _ => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the socket directory {path}")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("another daemon is already listening on {path}")]
    InUse { path: PathBuf },
    #[error("cannot bind the control socket {path}")]
    Bind {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "cannot reach the sensor daemon at {path} (is it running? see --socket / SENSOR_SOCKET)"
    )]
    Connect {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("talking to the daemon at {path}")]
    Exchange {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the daemon sent a response that could not be read")]
    BadResponse(#[source] serde_json::Error),
    #[error("the daemon refused: {0}")]
    Refused(String),
}

/// Binds the control socket.
pub fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        fs::create_dir_all(dir).map_err(|source| ControlError::Dir {
            path: dir.to_owned(),
            source,
        })?;
    }
    if path.exists() {
        // A live daemon answers; a stale file from a crash does not.
        if StdUnixStream::connect(path).is_ok() {
            return Err(ControlError::InUse {
                path: path.to_owned(),
            });
        }
        let _ = fs::remove_file(path);
    }
    let bind_err = |source| ControlError::Bind {
        path: path.to_owned(),
        source,
    };
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).map_err(bind_err)?;
    Ok(listener)
}

/// Open connections, in all and per user; a [`Slot`] holds one.
#[derive(Default)]
struct Open {
    total: u32,
    by_uid: HashMap<u32, u32>,
}

/// One open connection, given back when dropped.
struct Slot {
    open: Arc<Mutex<Open>>,
    uid: u32,
}

impl Slot {
    /// Takes a slot for `uid`, unless that would pass a limit (then says which).
    fn take(open: &Arc<Mutex<Open>>, uid: u32, limits: ConnectionLimits) -> Result<Self, Refusal> {
        let Ok(mut o) = open.lock() else {
            return Err(Refusal::Internal);
        };
        if o.total >= limits.total {
            return Err(Refusal::Connections(limits.total));
        }
        let mine = o.by_uid.entry(uid).or_default();
        if *mine >= limits.per_uid {
            return Err(Refusal::ConnectionsOfUid {
                uid,
                per_uid: limits.per_uid,
            });
        }
        *mine += 1;
        o.total += 1;
        Ok(Self {
            open: Arc::clone(open),
            uid,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut o) = self.open.lock() {
            o.total = o.total.saturating_sub(1);
            if let Some(n) = o.by_uid.get_mut(&self.uid) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    o.by_uid.remove(&self.uid);
                }
            }
        }
    }
}

/// Everything a connection handler needs.
struct Server {
    state: Arc<DaemonState>,
    commands: mpsc::Sender<Command>,
    limits: ConnectionLimits,
    open: Arc<Mutex<Open>>,
    /// Where a reload reads the policies and matchers from.
    reload: ReloadSource,
}

/// Serves requests until the task is dropped. Status is answered here;
/// everything about runs goes to the pipeline through `commands`. A client
/// past the connection limits gets one error line and is closed at once;
/// an accepted one has `idle_timeout` to send its request.
pub async fn serve(
    listener: UnixListener,
    state: Arc<DaemonState>,
    commands: mpsc::Sender<Command>,
    limits: ConnectionLimits,
    reload: ReloadSource,
) {
    let server = Arc::new(Server {
        state,
        commands,
        limits,
        open: Arc::new(Mutex::new(Open::default())),
        reload,
    });
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let peer = match peer_of(&stream) {
                    Ok(p) => p,
                    Err(e) => {
                        tracing::debug!(error = %e, "control connection without credentials");
                        continue;
                    }
                };
                let slot = match Slot::take(&server.open, peer.uid, server.limits) {
                    Ok(slot) => slot,
                    Err(refusal) => {
                        Defense::count(&server.state.defense.connections_refused);
                        refuse(stream, &refusal.to_string());
                        continue;
                    }
                };
                let server = Arc::clone(&server);
                tokio::spawn(async move {
                    let _slot = slot;
                    if let Err(e) = handle(stream, peer, &server).await {
                        tracing::debug!(error = %e, "control connection");
                    }
                });
            }
            Err(e) => {
                // EMFILE and the like: the limits keep us below the fd limit,
                // but another part of the daemon may hold many.
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Writes one error line without waiting (the client may not read), then
/// closes the connection.
fn refuse(stream: UnixStream, message: &str) {
    let response = Response::Error {
        message: message.to_owned(),
    };
    if let Ok(mut out) = serde_json::to_vec(&response) {
        out.push(b'\n');
        let _ = stream.try_write(&out);
    }
}

/// The peer of an accepted connection: its credentials and, on kernels
/// with SO_PEERPIDFD (6.5+), a pidfd of the process that connected.
fn peer_of(stream: &UnixStream) -> io::Result<Peer> {
    let cred = stream.peer_cred()?;
    let pid = cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0);
    Ok(Peer {
        pid,
        uid: cred.uid(),
        gid: cred.gid(),
        pidfd: peer_pidfd(stream).map(Arc::new),
    })
}

/// `getsockopt(SO_PEERPIDFD)`: a pidfd for the socket's peer process as it
/// was when it connected, so a later reuse of its pid cannot be mistaken
/// for it.
fn peer_pidfd(stream: &UnixStream) -> Option<OwnedFd> {
    use std::os::fd::{AsRawFd as _, FromRawFd as _};
    /// `SO_PEERPIDFD` (asm-generic/socket.h, Linux 6.5).
    const SO_PEERPIDFD: nix::libc::c_int = 77;
    let mut fd: nix::libc::c_int = -1;
    let mut len = nix::libc::socklen_t::try_from(size_of::<nix::libc::c_int>()).ok()?;
    // SAFETY: getsockopt(2) writes at most `len` bytes to `fd`.
    let r = unsafe {
        nix::libc::getsockopt(
            stream.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&raw mut fd).cast(),
            &raw mut len,
        )
    };
    // SAFETY: on success the kernel installed a new fd that we now own.
    (r == 0 && fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

async fn handle(stream: UnixStream, peer: Peer, server: &Server) -> io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let read = tokio::time::timeout(
        server.limits.idle_timeout,
        reader.read_until(b'\n', &mut line),
    )
    .await;
    let response = match read {
        Err(_) => Response::Error {
            message: "request timed out".to_owned(),
        },
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => Response::Error {
            message: format!("request larger than {MAX_REQUEST_BYTES} bytes"),
        },
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(request) => match authorize(&peer, &request) {
                Err(refusal) => Response::Error {
                    message: refusal.to_string(),
                },
                Ok(()) => match request {
                    Request::Status => {
                        let report = server.state.report();
                        // Who else's outputs and store: root only.
                        Response::Status(Box::new(if peer.uid == 0 {
                            report
                        } else {
                            report.redacted()
                        }))
                    }
                    Request::ReloadPolicies => reload(&server.reload, &server.commands).await,
                    request => forward(peer, request, &server.commands).await,
                },
            },
            Err(e) => Response::Error {
                message: format!("malformed request: {e}"),
            },
        },
    };
    let mut out = serde_json::to_vec(&response).map_err(io::Error::other)?;
    out.push(b'\n');
    write.write_all(&out).await?;
    write.shutdown().await
}

/// Reads and validates the config's policies and `[[agent]]` matchers on
/// a blocking thread (files are resolved and pinned ones hashed: never on
/// the event thread), then has the pipeline swap them in.
pub async fn reload(source: &ReloadSource, commands: &mpsc::Sender<Command>) -> Response {
    let source = source.clone();
    let loaded = tokio::task::spawn_blocking(move || {
        let (config, policies) = crate::config::Config::load_with_policies(source.path.as_deref())
            .map_err(|e| ReloadError::Config(Box::new(e)))?;
        let rules = crate::detect::RuleSet::load(&config.detect.rules)
            .map_err(|e| ReloadError::Rules(Box::new(e)))?;
        let matchers = crate::attribution::Matchers::new(&config.agents).map_err(|e| {
            ReloadError::Config(Box::new(crate::config::ConfigError::Agent {
                path: source
                    .path
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(crate::paths::CONFIG)),
                source: e,
            }))
        })?;
        let restart_needed = restart_needed(&source.started, &config);
        Ok((
            Box::new(Loaded {
                policies,
                agents: config.agents,
                matchers,
                restart_needed,
            }),
            Box::new(rules),
        ))
    })
    .await
    .unwrap_or_else(|e| Err(ReloadError::Task(e)));
    let (loaded, rules) = match loaded {
        Ok((policies, rules)) => (Ok(policies), Some(rules)),
        Err(e) => (Err(e), None),
    };
    let (reply, answer) = oneshot::channel();
    send_and_wait(
        commands,
        Command::Reload {
            loaded,
            rules,
            reply,
        },
        answer,
    )
    .await
}

async fn forward(peer: Peer, request: Request, commands: &mpsc::Sender<Command>) -> Response {
    let (reply, answer) = oneshot::channel();
    send_and_wait(
        commands,
        Command::Request {
            peer,
            request,
            reply,
        },
        answer,
    )
    .await
}

async fn send_and_wait(
    commands: &mpsc::Sender<Command>,
    command: Command,
    answer: oneshot::Receiver<Response>,
) -> Response {
    let unavailable = || Response::Error {
        message: "the daemon is shutting down".to_owned(),
    };
    if commands.send(command).await.is_err() {
        return unavailable();
    }
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => Response::Error {
            message: "the request could not be answered (see the daemon's log)".to_owned(),
        },
        Err(_) => Response::Error {
            message: "the daemon did not answer in time".to_owned(),
        },
    }
}

/// Sends one request and reads the response (blocking; for the CLI).
pub fn request(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let stream = StdUnixStream::connect(path).map_err(|source| ControlError::Connect {
        path: path.to_owned(),
        source,
    })?;
    let exchange = |source| ControlError::Exchange {
        path: path.to_owned(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(exchange)?;
    let mut line = serde_json::to_vec(request).map_err(|e| exchange(io::Error::other(e)))?;
    line.push(b'\n');
    (&stream).write_all(&line).map_err(exchange)?;
    let mut response = String::new();
    BufReader::new(&stream)
        .read_line(&mut response)
        .map_err(exchange)?;
    match serde_json::from_str(&response).map_err(ControlError::BadResponse)? {
        Response::Error { message } => Err(ControlError::Refused(message)),
        ok => Ok(ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_and_take_over_are_for_root_with_a_known_pid() {
        let root = Peer::local(100, 0, 0);
        let user = Peer::local(100, 1000, 1000);
        let nobody = Peer::local(0, 0, 0);
        assert_eq!(authorize(&root, &Request::ReloadPolicies), Ok(()));
        assert_eq!(authorize(&root, &Request::Handover), Ok(()));
        assert_eq!(
            authorize(&user, &Request::ReloadPolicies),
            Err(Refusal::ReloadNotRoot)
        );
        assert_eq!(
            authorize(&user, &Request::Handover),
            Err(Refusal::HandoverNotRoot)
        );
        // Status is for everyone; anything else needs the caller's pid.
        assert_eq!(authorize(&nobody, &Request::Status), Ok(()));
        assert_eq!(authorize(&user, &Request::Status), Ok(()));
        assert_eq!(
            authorize(&nobody, &Request::Whoami),
            Err(Refusal::PidUnknown)
        );
        assert_eq!(authorize(&user, &Request::Whoami), Ok(()));
    }

    #[test]
    fn refusals_read_as_they_always_have() {
        // Clients and the integration tests match on these strings.
        assert_eq!(
            Refusal::ReloadNotRoot.to_string(),
            "only root may reload the policies"
        );
        assert_eq!(
            Refusal::HandoverNotRoot.to_string(),
            "only root may take over the sensor"
        );
        assert_eq!(
            Refusal::HandoverFromRun("r1".into()).to_string(),
            "a process in agent run r1 cannot take over the sensor"
        );
        assert_eq!(
            Refusal::ConnectionsOfUid { uid: 7, per_uid: 2 }.to_string(),
            "too many control connections from uid 7 (2 open, [limits] connections_per_uid)"
        );
        assert_eq!(
            Refusal::RunsOfUid {
                uid: 7,
                active: 3,
                max: 3
            }
            .to_string(),
            "uid 7 already has 3 active runs (at most 3: [limits] runs_per_uid)"
        );
        assert_eq!(
            Refusal::Wider {
                policy: "child".into(),
                parent: "parent".into(),
                extra: crate::policy::Wider::MaxDepth(Some(3)),
            }
            .to_string(),
            "policy \"child\" is wider than the parent run's policy \"parent\" (max_depth Some(3) \
             is not in it): a sub-agent cannot gain rights its parent lacks"
        );
    }

    #[test]
    fn connections_are_bounded_in_all_and_per_user() {
        let open = Arc::new(Mutex::new(Open::default()));
        let limits = ConnectionLimits {
            total: 3,
            per_uid: 2,
            idle_timeout: Duration::from_secs(1),
        };
        let a = Slot::take(&open, 1, limits).unwrap();
        let _b = Slot::take(&open, 1, limits).unwrap();
        assert_eq!(
            Slot::take(&open, 1, limits).err(),
            Some(Refusal::ConnectionsOfUid { uid: 1, per_uid: 2 })
        );
        let _c = Slot::take(&open, 2, limits).unwrap();
        assert_eq!(
            Slot::take(&open, 3, limits).err(),
            Some(Refusal::Connections(3))
        );
        drop(a);
        assert!(Slot::take(&open, 1, limits).is_ok());
    }

    #[test]
    fn a_reload_names_the_changed_sections_it_does_not_apply() {
        let parse = |text: &str| crate::config::Config::parse(text, Path::new("t.toml")).unwrap();
        let started = parse("[limits]\nruns_per_uid = 8\n");
        // Policies, agents and detection rules are applied: nothing to name.
        let same = parse(
            "[limits]\nruns_per_uid = 8\n[policy.p]\nmode = \"audit\"\n\
             [[agent]]\nname = \"a\"\nexe = [\"/usr/bin/a\"]\n",
        );
        assert!(restart_needed(&started, &same).is_empty());
        let changed =
            parse("[limits]\nruns_per_uid = 9\n[daemon]\noutputs = [\"file:/tmp/x.jsonl\"]\n");
        assert_eq!(restart_needed(&started, &changed), ["[daemon]", "[limits]"]);
    }
}

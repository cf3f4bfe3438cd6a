//! The control socket: a Unix stream socket speaking [`protocol`].
//!
//! The daemon removes a stale socket file, binds, and sets mode 0666: every
//! request is authorized on its own (by SO_PEERCRED where it matters), and
//! status is harmless. Malformed or oversized requests get an error response
//! and never disturb the daemon.

pub mod protocol;

use std::{
    fs,
    io::{self, BufRead as _, BufReader, Write as _},
    os::unix::{fs::PermissionsExt as _, net::UnixStream as StdUnixStream},
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _},
    net::{UnixListener, UnixStream},
};

use tokio::sync::{mpsc, oneshot};

use self::protocol::{MAX_REQUEST_BYTES, Request, Response};
use crate::{attribution::Peer, status::DaemonState};

/// A request the pipeline must answer (it owns attribution), with who asked.
#[derive(Debug)]
pub struct Command {
    pub peer: Peer,
    pub request: Request,
    pub reply: oneshot::Sender<Response>,
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

/// Serves requests until the task is dropped. Status is answered here;
/// everything about runs goes to the pipeline through `commands`.
pub async fn serve(
    listener: UnixListener,
    state: Arc<DaemonState>,
    commands: mpsc::Sender<Command>,
) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let state = Arc::clone(&state);
                let commands = commands.clone();
                tokio::spawn(async move {
                    if let Err(e) = handle(stream, &state, &commands).await {
                        tracing::debug!(error = %e, "control connection");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "control socket accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(
    stream: UnixStream,
    state: &DaemonState,
    commands: &mpsc::Sender<Command>,
) -> io::Result<()> {
    let cred = stream.peer_cred()?;
    let peer = Peer {
        pid: cred.pid().and_then(|p| u32::try_from(p).ok()).unwrap_or(0),
        uid: cred.uid(),
        gid: cred.gid(),
    };
    let (read, mut write) = stream.into_split();
    let mut line = Vec::new();
    let mut reader = tokio::io::BufReader::new(read).take(MAX_REQUEST_BYTES as u64 + 1);
    let read =
        tokio::time::timeout(Duration::from_secs(5), reader.read_until(b'\n', &mut line)).await;
    let response = match read {
        Err(_) => Response::Error {
            message: "request timed out".to_owned(),
        },
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if line.len() > MAX_REQUEST_BYTES => Response::Error {
            message: format!("request larger than {MAX_REQUEST_BYTES} bytes"),
        },
        Ok(Ok(_)) => match serde_json::from_slice::<Request>(&line) {
            Ok(Request::Status) => Response::Status(Box::new(state.report())),
            Ok(_) if peer.pid == 0 => Response::Error {
                message: "the caller's pid is unknown (SO_PEERCRED); refusing".to_owned(),
            },
            Ok(request) => forward(peer, request, commands).await,
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

async fn forward(peer: Peer, request: Request, commands: &mpsc::Sender<Command>) -> Response {
    let (reply, answer) = oneshot::channel();
    let unavailable = || Response::Error {
        message: "the daemon is shutting down".to_owned(),
    };
    if commands
        .send(Command {
            peer,
            request,
            reply,
        })
        .await
        .is_err()
    {
        return unavailable();
    }
    match tokio::time::timeout(Duration::from_secs(10), answer).await {
        Ok(Ok(response)) => response,
        Ok(Err(_)) => unavailable(),
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

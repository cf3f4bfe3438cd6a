//! NATS JetStream transport: each record becomes one message on a subject
//! that a JetStream stream captures, and a record counts as delivered once
//! the stream has acknowledged storing it.
//!
//! # Delivery
//!
//! Every message carries `Nats-Msg-Id: <msg_id_prefix>-<seq>`, so a record
//! sent again (after a lost ack, a reconnect or a daemon restart) within the
//! stream's duplicate window (2 minutes unless the stream says otherwise) is
//! acknowledged as a duplicate and not stored twice. Beyond the window a
//! resend is stored again: at-least-once, with `Sensor-Seq` to drop repeats.
//! It also carries `Sensor-Seq`, `Sensor-Kind` and `Sensor-Time-Ns`, so
//! consumers can filter without parsing the payload, which is the record's
//! payload unchanged.
//!
//! # Ordering
//!
//! A batch is published in seq order on one connection, pipelined (at most
//! [`MAX_IN_FLIGHT`] acks outstanding), and the acks are awaited in order:
//! `delivered` is the number of leading records acknowledged. The server
//! reads one connection's messages in order and stores them in that order,
//! so what one connection got stored is a prefix of what it sent (the dedup
//! check and the store happen under the stream's lock, so this holds even
//! while a dropped connection's last bytes are still being read).
//!
//! The async-nats client would reconnect by itself and then send the
//! publishes still queued in it after ones that died in the old socket's
//! buffer, storing later records before earlier ones (a kill -9 and quick
//! restart of nats-server mid-batch did that in testing). So it is never
//! let to: its reconnect delay is a day, a lost connection ends the batch at
//! once (the client reports it as an event), and the client is dropped
//! together with the runtime its tasks live on, queue and all. The next
//! `send` connects afresh and resends from the first record not
//! acknowledged; the ones the old connection did get stored come back as
//! duplicates. A missing ack (timeout) drops the connection the same way.
//!
//! Order can break only when the server rejects one message but stores a
//! later one of the same pipeline (a stream limit that frees up in between,
//! a storage error on one write): the rejected record is resent and lands
//! after its successors. A record too large for the server or the stream is
//! refused for good ([`SendError::refused`]), and the records after it go
//! on in order. A resend that comes after the duplicate window (the server
//! was down longer than that between storing and acknowledging) stores
//! repeats after the originals. Consumers that need strict order sort by
//! `Sensor-Seq` and drop repeats.
//!
//! # Timeouts
//!
//! Connecting (DNS, TCP, TLS, handshake) is bounded by [`CONNECT_TIMEOUT`]
//! and an ack by [`ACK_TIMEOUT`] from when it is awaited; a refused
//! connection or a lost one fails at once. A connection that died while the
//! transport was idle (the server restarted, or closed it as stale because
//! nothing answered its pings between sends) is noticed before the batch
//! and replaced.

use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use async_nats::{
    ConnectOptions, Event, HeaderMap, ServerAddr, Subject,
    connection::State,
    header::NATS_MESSAGE_ID,
    jetstream::{
        self, ErrorCode,
        context::{PublishAckFuture, PublishError, PublishErrorKind},
    },
    rustls::pki_types::{CertificateDer, pem::PemObject},
};
use tokio::{runtime::Runtime, sync::watch};

use super::{Record, SendError, Transport};

/// Bound on connecting: DNS, TCP, TLS and the NATS handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Bound on one ack once awaited, and on JetStream API requests.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Most publishes awaiting their ack at once.
pub const MAX_IN_FLIGHT: usize = 1024;

/// The client's own reconnect delay once connected: long enough that it
/// never reconnects before the transport drops it (see the module doc).
const NO_RECONNECT: Duration = Duration::from_secs(24 * 3600);

/// Where and what to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsConfig {
    /// Server host name or address.
    pub host: String,
    /// Server port (4222 by default on servers).
    pub port: u16,
    /// Subject the records are published on; a JetStream stream must capture
    /// it.
    pub subject: String,
    /// Unique per host (boot id, machine id): message ids are
    /// `<msg_id_prefix>-<seq>`.
    pub msg_id_prefix: String,
    /// PEM file of the CA(s) to trust; when set the connection uses TLS
    /// (`tls://`) and trusts only these.
    pub tls_ca: Option<PathBuf>,
}

/// Why a NATS transport cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum NatsSetupError {
    #[error("NATS host is empty")]
    EmptyHost,
    #[error("NATS port is 0")]
    ZeroPort,
    #[error("NATS server address {address}: {reason}")]
    Address { address: String, reason: String },
    #[error("NATS subject {subject:?}: {reason}")]
    Subject {
        subject: String,
        reason: &'static str,
    },
    #[error("NATS message id prefix {prefix:?}: {reason}")]
    MsgIdPrefix {
        prefix: String,
        reason: &'static str,
    },
    #[error("NATS TLS CA file {}: cannot read it", path.display())]
    TlsCaRead {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("NATS TLS CA file {}: {reason}", path.display())]
    TlsCa { path: PathBuf, reason: String },
    #[error("cannot start the NATS transport's runtime")]
    Runtime(#[source] std::io::Error),
}

/// A JetStream publisher; see the module doc. Its `send` blocks on a
/// runtime of its own, so it must not be called from inside a tokio runtime.
pub struct Nats {
    /// `nats://host:port` or `tls://host:port`.
    server: String,
    subject: Subject,
    msg_id_prefix: String,
    tls_ca: Option<PathBuf>,
    /// The open connection, if any. Dropped before `rt`.
    conn: Option<Conn>,
    /// The runtime the connection's tasks live on; dropped with it, which
    /// ends those tasks. `None` after a teardown until the next `send`.
    rt: Option<Runtime>,
    /// Records the stream acknowledged as duplicates (already stored).
    duplicates: u64,
}

/// One connection and what watches it.
struct Conn {
    client: async_nats::Client,
    js: jetstream::Context,
    /// Turns true once the client reports the connection lost or closed.
    lost: watch::Receiver<bool>,
    /// The last `-ERR` the server sent (e.g. a permissions violation).
    server_error: Arc<Mutex<Option<String>>>,
}

/// A failed batch, and whether the connection is still good for the next.
#[derive(Debug)]
struct Failure {
    error: SendError,
    keep_connection: bool,
}

impl Nats {
    /// Checks the config; connects only on the first `send`.
    pub fn new(cfg: NatsConfig) -> Result<Self, NatsSetupError> {
        if cfg.host.is_empty() {
            return Err(NatsSetupError::EmptyHost);
        }
        if cfg.port == 0 {
            return Err(NatsSetupError::ZeroPort);
        }
        check_subject(&cfg.subject).map_err(|reason| NatsSetupError::Subject {
            subject: cfg.subject.clone(),
            reason,
        })?;
        check_msg_id_prefix(&cfg.msg_id_prefix).map_err(|reason| NatsSetupError::MsgIdPrefix {
            prefix: cfg.msg_id_prefix.clone(),
            reason,
        })?;
        let server = server_url(&cfg.host, cfg.port, cfg.tls_ca.is_some());
        if cfg.host.chars().any(|c| c.is_whitespace() || c == '/') {
            return Err(NatsSetupError::Address {
                address: server,
                reason: "the host must be a bare name or address".into(),
            });
        }
        if let Err(err) = server.parse::<ServerAddr>() {
            return Err(NatsSetupError::Address {
                address: server,
                reason: err.to_string(),
            });
        }
        if let Some(path) = &cfg.tls_ca {
            check_ca_file(path)?;
        }
        Ok(Self {
            server,
            subject: Subject::from(cfg.subject),
            msg_id_prefix: cfg.msg_id_prefix,
            tls_ca: cfg.tls_ca,
            conn: None,
            rt: Some(runtime().map_err(NatsSetupError::Runtime)?),
            duplicates: 0,
        })
    }

    /// How many records the stream acknowledged as duplicates so far: resends
    /// of ones it had stored but whose ack was lost.
    #[must_use]
    pub fn duplicates(&self) -> u64 {
        self.duplicates
    }

    /// Drops the connection and every task of its client.
    fn teardown(&mut self) {
        self.conn = None;
        self.rt = None;
    }

    /// The client's options: no reconnect of its own once connected, and
    /// the events that matter passed on to the returned channel and slot.
    fn connect_options(
        &self,
        connected: Arc<AtomicBool>,
        lost: watch::Sender<bool>,
        server_error: Arc<Mutex<Option<String>>>,
    ) -> ConnectOptions {
        let lost = Arc::new(lost);
        let options = ConnectOptions::new()
            .name(format!("sensor {}", self.msg_id_prefix))
            .connection_timeout(CONNECT_TIMEOUT)
            .request_timeout(Some(ACK_TIMEOUT))
            .ignore_discovered_servers()
            .reconnect_delay_callback(move |_attempts| {
                if connected.load(Ordering::Relaxed) {
                    NO_RECONNECT
                } else {
                    Duration::ZERO
                }
            })
            .event_callback(move |event| {
                let lost = Arc::clone(&lost);
                let server_error = Arc::clone(&server_error);
                async move {
                    match event {
                        Event::Disconnected | Event::Closed => {
                            lost.send_replace(true);
                        }
                        Event::ServerError(err) => {
                            if let Ok(mut last) = server_error.lock() {
                                *last = Some(err.to_string());
                            }
                        }
                        _ => {}
                    }
                }
            });
        match &self.tls_ca {
            Some(ca) => options.require_tls(true).add_root_certificates(ca.clone()),
            None => options,
        }
    }

    async fn connect(&self) -> Result<Conn, SendError> {
        let connected = Arc::new(AtomicBool::new(false));
        let (lost_tx, lost) = watch::channel(false);
        let server_error = Arc::new(Mutex::new(None));
        let options =
            self.connect_options(Arc::clone(&connected), lost_tx, Arc::clone(&server_error));
        // The client's own timeout leaves out resolving the name.
        let bound = CONNECT_TIMEOUT + Duration::from_secs(1);
        let client = match tokio::time::timeout(bound, options.connect(self.server.as_str())).await
        {
            Ok(Ok(client)) => client,
            Ok(Err(err)) => {
                return Err(SendError::retry(
                    0,
                    format!("cannot connect to NATS at {}: {err}", self.server),
                ));
            }
            Err(_) => {
                return Err(SendError::retry(
                    0,
                    format!(
                        "cannot connect to NATS at {}: no answer within {} s",
                        self.server,
                        bound.as_secs()
                    ),
                ));
            }
        };
        connected.store(true, Ordering::Relaxed);
        // Room for a batch's window while the acks a failed batch left
        // behind drain (the client waits for a free slot before publishing).
        let js = jetstream::ContextBuilder::new()
            .timeout(ACK_TIMEOUT)
            .ack_timeout(ACK_TIMEOUT)
            .max_ack_inflight(2 * MAX_IN_FLIGHT)
            .build(client.clone());
        Ok(Conn {
            client,
            js,
            lost,
            server_error,
        })
    }
}

impl Transport for Nats {
    fn send(&mut self, records: &[Record<'_>]) -> Result<(), SendError> {
        if records.is_empty() {
            return Ok(());
        }
        // A connection that died while idle is replaced before use.
        if let (Some(conn), Some(rt)) = (&self.conn, &self.rt)
            && !rt.block_on(conn.still_up())
        {
            self.teardown();
        }
        let rt = match self.rt.take() {
            Some(rt) => rt,
            None => runtime().map_err(|err| {
                SendError::retry(0, format!("cannot start the NATS runtime: {err}"))
            })?,
        };
        if self.conn.is_none() {
            match rt.block_on(self.connect()) {
                Ok(conn) => self.conn = Some(conn),
                // Dropping `rt` ends whatever the attempt left running.
                Err(err) => return Err(err),
            }
        }
        let mut duplicates = 0;
        let result = match &self.conn {
            Some(conn) => rt.block_on(conn.publish_batch(
                &self.server,
                &self.subject,
                &self.msg_id_prefix,
                records,
                &mut duplicates,
            )),
            None => Err(Failure {
                error: SendError::retry(0, "not connected to NATS"),
                keep_connection: false,
            }),
        };
        self.rt = Some(rt);
        self.duplicates += duplicates;
        result.map_err(|failure| {
            if !failure.keep_connection {
                self.teardown();
            }
            failure.error
        })
    }
}

impl Conn {
    /// Lets the client read what came while the transport was idle, then
    /// says whether the connection still stands.
    async fn still_up(&self) -> bool {
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
        !*self.lost.borrow() && self.client.connection_state() == State::Connected
    }

    /// Publishes `records` in order, at most [`MAX_IN_FLIGHT`] unacknowledged
    /// at once, and awaits their acks in order. Counts the acks that say
    /// duplicate into `duplicates`.
    async fn publish_batch(
        &self,
        server: &str,
        subject: &Subject,
        msg_id_prefix: &str,
        records: &[Record<'_>],
        duplicates: &mut u64,
    ) -> Result<(), Failure> {
        let mut lost = self.lost.clone();
        let mut pending: VecDeque<PublishAckFuture> =
            VecDeque::with_capacity(records.len().min(MAX_IN_FLIGHT));
        let mut acked = 0;
        for (index, record) in records.iter().enumerate() {
            if pending.len() >= MAX_IN_FLIGHT
                && let Some(ack) = pending.pop_front()
            {
                *duplicates += self
                    .await_ack(&mut lost, ack, server, subject, records, acked)
                    .await?;
                acked += 1;
            }
            let publish = self.js.publish_with_headers(
                subject.clone(),
                headers(msg_id_prefix, record),
                record.payload.to_vec().into(),
            );
            let error = match or_lost(&mut lost, publish).await {
                Some(Ok(ack)) => {
                    pending.push_back(ack);
                    continue;
                }
                Some(Err(err)) => Some(err),
                None => None,
            };
            // Count what the records before this one got, so `delivered` is
            // exact, then say why this one failed.
            while let Some(ack) = pending.pop_front() {
                *duplicates += self
                    .await_ack(&mut lost, ack, server, subject, records, acked)
                    .await?;
                acked += 1;
            }
            debug_assert_eq!(acked, index);
            return Err(match error {
                Some(err) => publish_failure(&err, index, record.seq, server),
                None => lost_failure(index, record.seq, server),
            });
        }
        while let Some(ack) = pending.pop_front() {
            *duplicates += self
                .await_ack(&mut lost, ack, server, subject, records, acked)
                .await?;
            acked += 1;
        }
        Ok(())
    }

    /// Awaits the ack of `records[index]`: 1 if it says duplicate, else 0.
    async fn await_ack(
        &self,
        lost: &mut watch::Receiver<bool>,
        ack: PublishAckFuture,
        server: &str,
        subject: &Subject,
        records: &[Record<'_>],
        index: usize,
    ) -> Result<u64, Failure> {
        let seq = records.get(index).map_or(0, |r| r.seq);
        match or_lost(lost, ack.into_future()).await {
            Some(Ok(ack)) => Ok(u64::from(ack.duplicate)),
            Some(Err(err)) => {
                let said = self.server_error.lock().ok().and_then(|last| last.clone());
                Err(ack_failure(&err, index, seq, subject, said.as_deref()))
            }
            None => Err(lost_failure(index, seq, server)),
        }
    }
}

/// `fut`'s output, or `None` once the connection is lost first. An output
/// already there wins over a loss.
async fn or_lost<F: Future>(lost: &mut watch::Receiver<bool>, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        out = fut => Some(out),
        _ = lost.wait_for(|lost| *lost) => None,
    }
}

fn runtime() -> std::io::Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

/// The message id of record `seq`.
fn msg_id(prefix: &str, seq: u64) -> String {
    format!("{prefix}-{seq}")
}

/// The headers of one record's message.
fn headers(msg_id_prefix: &str, record: &Record<'_>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(NATS_MESSAGE_ID, msg_id(msg_id_prefix, record.seq));
    headers.insert("Sensor-Seq", record.seq.to_string());
    headers.insert("Sensor-Kind", header_value(record.kind));
    headers.insert("Sensor-Time-Ns", record.time_ns.to_string());
    headers
}

/// `value` with control characters (which would break the header block)
/// replaced.
fn header_value(value: &str) -> String {
    value
        .chars()
        .map(|c| if c.is_control() { '_' } else { c })
        .collect()
}

fn server_url(host: &str, port: u16, tls: bool) -> String {
    let scheme = if tls { "tls" } else { "nats" };
    if host.contains(':') && !host.starts_with('[') {
        format!("{scheme}://[{host}]:{port}")
    } else {
        format!("{scheme}://{host}:{port}")
    }
}

/// A subject one can publish on: dot-separated non-empty tokens, no
/// wildcards, no whitespace.
fn check_subject(subject: &str) -> Result<(), &'static str> {
    if subject.is_empty() {
        return Err("is empty");
    }
    if subject.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("has whitespace or control characters");
    }
    for token in subject.split('.') {
        if token.is_empty() {
            return Err("has an empty token (leading, trailing or double dot)");
        }
        if token == "*" || token == ">" {
            return Err("has a wildcard; one cannot publish on it");
        }
    }
    Ok(())
}

fn check_msg_id_prefix(prefix: &str) -> Result<(), &'static str> {
    if prefix.is_empty() {
        return Err("is empty; use something unique per host (boot id, machine id)");
    }
    if prefix.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("has whitespace or control characters");
    }
    Ok(())
}

fn check_ca_file(path: &Path) -> Result<(), NatsSetupError> {
    let pem = std::fs::read(path).map_err(|source| NatsSetupError::TlsCaRead {
        path: path.to_owned(),
        source,
    })?;
    let mut count = 0;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        if let Err(err) = cert {
            return Err(NatsSetupError::TlsCa {
                path: path.to_owned(),
                reason: format!("bad PEM: {err}"),
            });
        }
        count += 1;
    }
    if count == 0 {
        return Err(NatsSetupError::TlsCa {
            path: path.to_owned(),
            reason: "holds no certificate".into(),
        });
    }
    Ok(())
}

fn lost_failure(index: usize, seq: u64, server: &str) -> Failure {
    Failure {
        error: SendError::retry(
            index,
            format!("connection to NATS at {server} lost before record seq {seq} was acknowledged"),
        ),
        keep_connection: false,
    }
}

/// Why handing record `index` (seq `seq`) to the client failed.
fn publish_failure(err: &PublishError, index: usize, seq: u64, server: &str) -> Failure {
    match err.kind() {
        // Checked against the server's max_payload before sending: it will
        // never fit.
        PublishErrorKind::MaxPayloadExceeded => Failure {
            error: SendError::refused(
                index,
                format!("record seq {seq} is larger than the NATS server accepts: {err}"),
            ),
            keep_connection: true,
        },
        _ => Failure {
            error: SendError::retry(
                index,
                format!("cannot publish record seq {seq} to NATS at {server}: {err}"),
            ),
            keep_connection: false,
        },
    }
}

/// Why the ack of record `index` (seq `seq`) failed. `server_said` is the
/// server's last `-ERR`, if any.
fn ack_failure(
    err: &PublishError,
    index: usize,
    seq: u64,
    subject: &str,
    server_said: Option<&str>,
) -> Failure {
    match err.kind() {
        PublishErrorKind::StreamNotFound => Failure {
            error: SendError::retry(
                index,
                format!(
                    "no JetStream stream captures subject {subject} (or JetStream is off on the \
                     server): create one, e.g. `nats stream add SENSOR --subjects '{subject}' \
                     --storage file --defaults`"
                ),
            ),
            keep_connection: true,
        },
        PublishErrorKind::TimedOut => {
            let mut message = format!(
                "no JetStream ack for record seq {seq} within {} s",
                ACK_TIMEOUT.as_secs()
            );
            if let Some(said) = server_said {
                message.push_str("; the server said: ");
                message.push_str(said);
            }
            Failure {
                error: SendError::retry(index, message),
                keep_connection: false,
            }
        }
        _ => match api_error(err) {
            Some(api)
                if matches!(
                    api.error_code(),
                    ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM
                        | ErrorCode::STREAM_HEADER_EXCEEDS_MAXIMUM
                ) =>
            {
                Failure {
                    error: SendError::refused(
                        index,
                        format!("the JetStream stream refuses record seq {seq}: {api}"),
                    ),
                    keep_connection: true,
                }
            }
            // Limits, storage, leadership: the server answered and may
            // take it later.
            Some(api) => Failure {
                error: SendError::retry(
                    index,
                    format!("the JetStream stream did not store record seq {seq}: {api}"),
                ),
                keep_connection: true,
            },
            None => Failure {
                error: SendError::retry(
                    index,
                    format!("no JetStream ack for record seq {seq}: {err}"),
                ),
                keep_connection: false,
            },
        },
    }
}

/// The JetStream API error the server answered with, if that is the cause.
fn api_error(err: &PublishError) -> Option<&jetstream::Error> {
    std::error::Error::source(err)?.downcast_ref::<jetstream::Error>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: u64, kind: &'static str) -> Record<'static> {
        Record {
            seq,
            time_ns: 1_700_000_000_123_456_789,
            kind,
            payload: b"{\"seq\":1}",
        }
    }

    fn config() -> NatsConfig {
        NatsConfig {
            host: "127.0.0.1".into(),
            port: 4222,
            subject: "sensor.events".into(),
            msg_id_prefix: "0f3c6a4e-boot".into(),
            tls_ca: None,
        }
    }

    fn api_error_json(code: u64, description: &str) -> jetstream::Error {
        serde_json::from_value(serde_json::json!({
            "code": 400,
            "err_code": code,
            "description": description,
        }))
        .unwrap()
    }

    #[test]
    fn headers_carry_the_msg_id_seq_kind_and_time() {
        let headers = headers("host-a", &record(42, "process.exec"));
        let get = |name: &str| headers.get(name).map(|v| v.as_str().to_owned());
        assert_eq!(get("Nats-Msg-Id").as_deref(), Some("host-a-42"));
        assert_eq!(get("Sensor-Seq").as_deref(), Some("42"));
        assert_eq!(get("Sensor-Kind").as_deref(), Some("process.exec"));
        assert_eq!(
            get("Sensor-Time-Ns").as_deref(),
            Some("1700000000123456789")
        );
    }

    #[test]
    fn header_values_lose_control_characters() {
        let headers = headers("h", &record(1, "evil\r\nNats-Msg-Id: x"));
        assert_eq!(
            headers.get("Sensor-Kind").map(|v| v.as_str()),
            Some("evil__Nats-Msg-Id: x")
        );
        assert_eq!(headers.get("Nats-Msg-Id").map(|v| v.as_str()), Some("h-1"));
    }

    #[test]
    fn msg_ids_differ_per_host_and_seq() {
        assert_eq!(msg_id("a", 7), "a-7");
        assert_ne!(msg_id("a", 17), msg_id("a1", 7));
    }

    #[test]
    fn server_urls() {
        assert_eq!(
            server_url("nats.example", 4222, false),
            "nats://nats.example:4222"
        );
        assert_eq!(server_url("10.0.0.1", 4443, true), "tls://10.0.0.1:4443");
        assert_eq!(server_url("::1", 4222, false), "nats://[::1]:4222");
        assert_eq!(server_url("[::1]", 4222, false), "nats://[::1]:4222");
    }

    #[test]
    fn subjects() {
        assert!(check_subject("sensor").is_ok());
        assert!(check_subject("sensor.events.host-1").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a.*", "a.>", ">", "a b", "a\tb"] {
            assert!(check_subject(bad).is_err(), "{bad:?}");
        }
        // A token that merely contains `*` is a literal.
        assert!(check_subject("a.b*c").is_ok());
    }

    #[test]
    fn msg_id_prefixes() {
        assert!(check_msg_id_prefix("3f1c0d5e-7a0b-4c1e-9d2f-5b6a7c8d9e0f").is_ok());
        assert!(check_msg_id_prefix("").is_err());
        assert!(check_msg_id_prefix("a b").is_err());
        assert!(check_msg_id_prefix("a\nb").is_err());
    }

    #[test]
    fn new_checks_the_config() {
        assert!(Nats::new(config()).is_ok());
        type Change = fn(&mut NatsConfig);
        let cases: [(Change, &str); 6] = [
            (|c| c.host.clear(), "host is empty"),
            (|c| c.port = 0, "port is 0"),
            (|c| c.host = "nats://x".into(), "bare name"),
            (|c| c.subject = "a.*".into(), "wildcard"),
            (|c| c.msg_id_prefix.clear(), "is empty"),
            (
                |c| c.tls_ca = Some("/nonexistent/ca.pem".into()),
                "cannot read",
            ),
        ];
        for (change, expected) in cases {
            let mut cfg = config();
            change(&mut cfg);
            let err = Nats::new(cfg)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }

    #[test]
    fn new_checks_the_ca_file() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = Nats::new(NatsConfig {
            tls_ca: Some(empty),
            ..config()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
        assert!(err.contains("holds no certificate"), "{err}");
    }

    #[test]
    fn no_stream_is_retried_with_a_hint() {
        let err = PublishError::new(PublishErrorKind::StreamNotFound);
        let failure = ack_failure(&err, 3, 103, "sensor.events", None);
        assert_eq!(failure.error.delivered, 3);
        assert!(failure.error.retry);
        assert!(failure.keep_connection);
        let message = &failure.error.message;
        assert!(
            message.contains("no JetStream stream captures subject sensor.events"),
            "{message}"
        );
        assert!(message.contains("nats stream add"), "{message}");
    }

    #[test]
    fn a_missing_ack_drops_the_connection_and_says_what_the_server_said() {
        let err = PublishError::new(PublishErrorKind::TimedOut);
        let failure = ack_failure(&err, 0, 7, "s", Some("Permissions Violation for Publish"));
        assert!(failure.error.retry);
        assert!(!failure.keep_connection);
        assert!(failure.error.message.contains("seq 7"));
        assert!(failure.error.message.contains("Permissions Violation"));

        let err = PublishError::new(PublishErrorKind::BrokenPipe);
        let failure = ack_failure(&err, 0, 7, "s", None);
        assert!(failure.error.retry);
        assert!(!failure.keep_connection);
    }

    #[test]
    fn a_record_too_large_for_the_stream_is_refused() {
        for code in [10054, 10097] {
            let api = api_error_json(code, "message size exceeds maximum allowed");
            let err = PublishError::with_source(PublishErrorKind::Other, api);
            let failure = ack_failure(&err, 5, 9, "s", None);
            assert_eq!(failure.error.delivered, 5);
            assert!(!failure.error.retry, "{code}");
            assert!(failure.keep_connection);
            assert!(failure.error.message.contains("message size exceeds"));
        }
    }

    #[test]
    fn other_stream_errors_are_retried_on_the_same_connection() {
        let api = api_error_json(10077, "maximum messages exceeded");
        let err = PublishError::with_source(PublishErrorKind::Other, api);
        let failure = ack_failure(&err, 1, 2, "s", None);
        assert!(failure.error.retry);
        assert!(failure.keep_connection);
        assert!(failure.error.message.contains("maximum messages exceeded"));
    }

    #[test]
    fn publish_errors() {
        let err = PublishError::new(PublishErrorKind::MaxPayloadExceeded);
        let failure = publish_failure(&err, 2, 12, "nats://h:1");
        assert_eq!(failure.error.delivered, 2);
        assert!(!failure.error.retry);

        let err = PublishError::new(PublishErrorKind::TimedOut);
        let failure = publish_failure(&err, 2, 12, "nats://h:1");
        assert!(failure.error.retry);
        assert!(!failure.keep_connection);
    }

    #[test]
    fn nothing_to_send_needs_no_server() {
        let mut nats = Nats::new(config()).unwrap();
        assert!(nats.send(&[]).is_ok());
        assert!(nats.conn.is_none());
    }

    #[test]
    fn a_server_that_is_not_there_fails_fast() {
        // A port nothing listens on.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut nats = Nats::new(NatsConfig { port, ..config() }).unwrap();
        let started = std::time::Instant::now();
        let err = nats.send(&[record(1, "k")]).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(err.delivered, 0);
        assert!(err.retry);
        assert!(err.message.contains("cannot connect"), "{}", err.message);
        // And again: the transport is still usable.
        assert!(nats.send(&[record(1, "k")]).unwrap_err().retry);
    }
}

//! Syslog over TCP (`syslog+tcp://HOST:PORT`) and over TLS
//! (`syslog+tls://HOST:PORT`, RFC 5425).
//!
//! Each record becomes one RFC 5424 message, framed by octet counting
//! (RFC 6587 3.4.1 / RFC 5425 4.3: `MSG-LEN SP SYSLOG-MSG`), so a JSON
//! payload of any size or content reaches the receiver whole:
//!
//! ```text
//! <134>1 2026-11-23T10:00:00.123456Z web-1 sensor 4242 process.exec [sensor@32473 seq="17"] {"seq":17,...}
//! ```
//!
//! PRI is facility local0 (16) with severity warning (4) for
//! `policy.violation` and `sensor.lost`, informational (6) otherwise;
//! TIMESTAMP is the event's time (UTC, microseconds); PROCID the daemon's
//! pid; MSGID the event's kind; the structured data carries the event's
//! `seq` so a receiver can spot duplicates; MSG is the payload as is (no
//! BOM).
//!
//! # What "delivered" means
//!
//! Syslog over TCP has no application-level acknowledgement. After writing
//! and flushing a batch, `send` polls the socket's count of bytes not yet
//! acknowledged by the peer (`SIOCOUTQ`) until it reaches zero: the
//! receiver's kernel then holds every byte of the batch, and `send` returns
//! `Ok`. If that does not happen within [`ACK_TIMEOUT`] (a receiver that
//! stopped reading), a write blocks for [`WRITE_TIMEOUT`], or the
//! connection fails or is reset, the connection is dropped (with a reset,
//! so the kernel does not go on delivering its stale bytes) and the whole
//! batch is reported undelivered (`SendError::retry(0, ..)`), to be sent
//! again on a new connection: a receiver may see records twice (the `seq`
//! in the structured data tells them apart), never a gap the sensor knew
//! of.
//!
//! The limit: a TCP acknowledgement means the receiver's kernel has the
//! bytes, not that the receiving program has read or stored them. A
//! receiver killed (or whose host dies) while acknowledged records are
//! still in its socket buffer or in its in-memory queue loses them; with
//! rsyslog killed by SIGKILL that was the last 10 to 200 records before
//! the kill. To narrow that gap, the batches a connection acknowledged in
//! the [`REPLAY_WINDOW`] before it was found broken (at most
//! [`REPLAY_BYTES`], the newest) are sent again, first, on the next
//! connection, as duplicates. That covers a receiver that dies while
//! records flow; it cannot cover one that held records longer than that
//! (a slow output behind a memory queue), records acknowledged just before
//! the sensor itself stopped, or a reset that arrives after the next
//! successful batch. Only a protocol with application acknowledgements
//! (RELP, HTTP, JetStream) closes the gap.
//!
//! Before reusing a connection, `send` checks without blocking that the
//! peer has not closed or reset it (`POLLRDHUP`/`POLLHUP`/`POLLERR`, or
//! end-of-stream / TLS `close_notify` in what the peer sent), so a
//! connection the receiver dropped between batches is replaced rather than
//! written into.
//!
//! Time bounds: each address is given [`CONNECT_TIMEOUT`], the TLS
//! handshake and each blocked write [`WRITE_TIMEOUT`], the acknowledgement
//! [`ACK_TIMEOUT`]. Name resolution (getaddrinfo) has no time-out of its
//! own.

use std::{
    collections::VecDeque,
    fmt::Write as _,
    io::{self, Read, Write},
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    os::fd::AsRawFd,
    sync::Arc,
    time::{Duration, Instant, UNIX_EPOCH},
};

use nix::libc;
use rustls::{ClientConfig, ClientConnection, StreamOwned};
use rustls_pki_types::ServerName;

use super::{
    Record, SendError, Transport,
    tls::{TlsError, TlsOptions},
};
use crate::sinks::error_chain;

/// Per address tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Per blocked write, and for the whole TLS handshake.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the peer's TCP may take to acknowledge a flushed batch.
pub const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Batches acknowledged this long before a connection is found broken are
/// sent again on the next one (see the module doc)...
pub const REPLAY_WINDOW: Duration = Duration::from_secs(10);
/// ... up to this many bytes of them (the newest).
pub const REPLAY_BYTES: usize = 4 << 20;

/// local0.
const FACILITY: u8 = 16;
const SEVERITY_WARNING: u8 = 4;
const SEVERITY_INFO: u8 = 6;
/// The structured data element's id (32473 is the private enterprise
/// number reserved for examples and documentation, RFC 5612).
const SD_ID: &str = "sensor@32473";

/// Why a batch did not reach the receiver (the connection is dropped and
/// the batch sent again later). The cause is the `source`, kept out of the
/// message; [`crate::sinks::error_chain`] writes both.
#[derive(Debug, thiserror::Error)]
pub enum SyslogError {
    #[error("resolve {host}")]
    Resolve {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("resolve {host}: no address")]
    NoAddress { host: String },
    #[error("connect: {}", .failures.iter().map(|(addr, e)| format!("{addr}: {e}")).collect::<Vec<_>>().join("; "))]
    Connect {
        failures: Vec<(SocketAddr, io::Error)>,
    },
    #[error("socket setup")]
    SocketSetup(#[source] io::Error),
    #[error("TLS setup")]
    TlsSetup(#[source] rustls::Error),
    #[error("TLS handshake")]
    Handshake(#[source] io::Error),
    #[error("TLS handshake: connection closed by the peer")]
    HandshakeClosed,
    #[error("TLS handshake: not done after {0:?}")]
    HandshakeTimeout(Duration),
    #[error("write")]
    Write(#[source] io::Error),
    #[error("read")]
    Read(#[source] io::Error),
    #[error("poll")]
    Poll(#[source] io::Error),
    #[error("set {}", if *.nonblocking { "nonblocking" } else { "blocking" })]
    Blocking {
        nonblocking: bool,
        #[source]
        source: io::Error,
    },
    #[error("TLS")]
    Tls(#[source] rustls::Error),
    #[error("TLS read")]
    TlsRead(#[source] io::Error),
    #[error("connection failed")]
    Failed(#[source] io::Error),
    #[error("the receiver closed the connection")]
    Closed,
    #[error("SO_ERROR")]
    SoError(#[source] io::Error),
    #[error("SIOCOUTQ")]
    Outq(#[source] io::Error),
    #[error("{bytes} bytes still not acknowledged by the receiver after {timeout:?}")]
    Unacknowledged { bytes: usize, timeout: Duration },
}

/// Where and how to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyslogConfig {
    /// DNS name or IP address (an IPv6 address with or without brackets).
    pub host: String,
    pub port: u16,
    /// `Some` for `syslog+tls://`; the certificate must name `host`.
    pub tls: Option<TlsOptions>,
    /// The RFC 5424 HOSTNAME field.
    pub hostname: String,
    /// The RFC 5424 APP-NAME field (`sensor`).
    pub app_name: String,
}

/// A syslog sender; it connects on the first `send`, and again after any
/// failure.
pub struct Syslog {
    host: String,
    port: u16,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
    header: Header,
    conn: Option<Conn>,
    /// Batches acknowledged on `conn` lately, oldest first (framed).
    acked: VecDeque<(Instant, Vec<u8>)>,
    /// Batches to send again first on the next connection (framed).
    replay: VecDeque<Vec<u8>>,
}

impl Syslog {
    /// Checks the TLS settings (CA file, server name); connects later.
    pub fn new(cfg: SyslogConfig) -> Result<Self, TlsError> {
        let host = bare_host(&cfg.host).to_owned();
        let tls = match &cfg.tls {
            None => None,
            Some(opts) => {
                let config = super::tls::client_config(opts)?;
                let name = ServerName::try_from(host.clone())
                    .map_err(|_| TlsError::ServerName { host: host.clone() })?;
                Some((config, name))
            }
        };
        Ok(Self {
            host,
            port: cfg.port,
            tls,
            header: Header::new(&cfg.hostname, &cfg.app_name, std::process::id()),
            conn: None,
            acked: VecDeque::new(),
            replay: VecDeque::new(),
        })
    }

    /// Drops the connection (with a reset), and keeps what it acknowledged
    /// lately for the next one.
    fn drop_connection(&mut self) {
        if let Some(conn) = self.conn.take() {
            abort(conn.socket());
        }
        let now = Instant::now();
        for (at, frames) in self.acked.drain(..) {
            if now.duration_since(at) <= REPLAY_WINDOW {
                self.replay.push_back(frames);
            }
        }
        trim(&mut self.replay, |b| b);
    }

    fn try_send(&mut self, records: &[Record<'_>]) -> Result<(), SyslogError> {
        if let Some(conn) = &mut self.conn
            && let Err(why) = check_open(conn)
        {
            tracing::debug!(host = %self.host, port = self.port, "syslog: reconnecting: {}", error_chain(&why));
            self.drop_connection();
        }
        let frames = frame_batch(&self.header, records);
        let conn = match &mut self.conn {
            Some(conn) => conn,
            None => self.conn.insert(self.connect()?),
        };
        // One buffer per batch: a few large writes, not one per record.
        for batch in self.replay.iter().chain([&frames]) {
            conn.write_all(batch).map_err(SyslogError::Write)?;
        }
        conn.flush().map_err(SyslogError::Write)?;
        wait_acknowledged(conn.socket(), ACK_TIMEOUT)?;
        if !self.replay.is_empty() {
            tracing::debug!(
                host = %self.host,
                port = self.port,
                "syslog: sent again {} batches acknowledged just before the last connection failed",
                self.replay.len()
            );
        }
        // On this connection now, for a later failure to replay.
        let now = Instant::now();
        self.acked.extend(self.replay.drain(..).map(|b| (now, b)));
        self.acked.push_back((now, frames));
        self.acked
            .retain(|(at, _)| now.duration_since(*at) <= REPLAY_WINDOW);
        trim(&mut self.acked, |(_, b)| b);
        Ok(())
    }

    fn connect(&self) -> Result<Conn, SyslogError> {
        let addrs: Vec<SocketAddr> = (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|source| SyslogError::Resolve {
                host: self.host.clone(),
                source,
            })?
            .collect();
        let mut failures = Vec::new();
        let mut sock = None;
        for addr in &addrs {
            match TcpStream::connect_timeout(addr, CONNECT_TIMEOUT) {
                Ok(s) => {
                    sock = Some(s);
                    break;
                }
                Err(e) => failures.push((*addr, e)),
            }
        }
        let Some(mut sock) = sock else {
            return Err(if failures.is_empty() {
                SyslogError::NoAddress {
                    host: self.host.clone(),
                }
            } else {
                SyslogError::Connect { failures }
            });
        };
        sock.set_write_timeout(Some(WRITE_TIMEOUT))
            .map_err(SyslogError::SocketSetup)?;
        sock.set_read_timeout(Some(WRITE_TIMEOUT))
            .map_err(SyslogError::SocketSetup)?;
        let Some((config, name)) = &self.tls else {
            return Ok(Conn::Tcp(sock));
        };
        let mut tls = ClientConnection::new(Arc::clone(config), name.clone())
            .map_err(SyslogError::TlsSetup)?;
        let deadline = Instant::now() + WRITE_TIMEOUT;
        while tls.is_handshaking() {
            let (read, written) = tls.complete_io(&mut sock).map_err(SyslogError::Handshake)?;
            if read == 0 && written == 0 && tls.is_handshaking() {
                return Err(SyslogError::HandshakeClosed);
            }
            if Instant::now() > deadline {
                return Err(SyslogError::HandshakeTimeout(WRITE_TIMEOUT));
            }
        }
        Ok(Conn::Tls(Box::new(StreamOwned::new(tls, sock))))
    }
}

impl Transport for Syslog {
    fn send(&mut self, records: &[Record<'_>]) -> Result<(), SendError> {
        if records.is_empty() {
            return Ok(());
        }
        self.try_send(records).map_err(|why| {
            self.drop_connection();
            let scheme = if self.tls.is_some() { "tls" } else { "tcp" };
            SendError::retry(
                0,
                format!(
                    "syslog+{scheme}://{}:{}: {}",
                    self.host,
                    self.port,
                    error_chain(&why)
                ),
            )
        })
    }
}

/// `[::1]` → `::1`, for resolving and for the TLS server name.
fn bare_host(host: &str) -> &str {
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

enum Conn {
    Tcp(TcpStream),
    Tls(Box<StreamOwned<ClientConnection, TcpStream>>),
}

impl Conn {
    fn socket(&self) -> &TcpStream {
        match self {
            Self::Tcp(s) => s,
            Self::Tls(s) => &s.sock,
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.flush(),
            Self::Tls(s) => s.flush(),
        }
    }
}

/// Drops the oldest batches until at most [`REPLAY_BYTES`] are kept.
fn trim<T>(batches: &mut VecDeque<T>, bytes: impl Fn(&T) -> &Vec<u8>) {
    let mut total: usize = batches.iter().map(|b| bytes(b).len()).sum();
    while total > REPLAY_BYTES {
        match batches.pop_front() {
            Some(b) => total -= bytes(&b).len(),
            None => break,
        }
    }
}

/// The frames (`MSG-LEN SP SYSLOG-MSG`) of `records`, back to back.
fn frame_batch(header: &Header, records: &[Record<'_>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(records.iter().map(|r| r.payload.len() + 160).sum());
    let mut msg = Vec::new();
    for record in records {
        msg.clear();
        format_message(&mut msg, header, record);
        let _ = write!(out, "{} ", msg.len());
        out.extend_from_slice(&msg);
    }
    out
}

/// Makes the coming close a reset: the kernel drops what the receiver has
/// not taken yet instead of delivering it later, next to the batch sent
/// again on a new connection.
fn abort(sock: &TcpStream) {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let _ = nix::sys::socket::setsockopt(sock, nix::sys::socket::sockopt::Linger, &linger);
}

/// Errors unless the connection still looks usable: the peer has not shut
/// it down, reset it, or (TLS) sent `close_notify`. Whatever else the peer
/// sent (TLS session tickets) is consumed. Never blocks.
fn check_open(conn: &mut Conn) -> Result<(), SyslogError> {
    let mut pfd = libc::pollfd {
        fd: conn.socket().as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: one valid pollfd, a zero timeout; the fd is owned by `conn`.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    if n < 0 {
        return Err(SyslogError::Poll(io::Error::last_os_error()));
    }
    if n == 0 {
        return Ok(());
    }
    if pfd.revents & (libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0 {
        return Err(match conn.socket().take_error() {
            Ok(Some(e)) => SyslogError::Failed(e),
            _ => SyslogError::Closed,
        });
    }
    if pfd.revents & libc::POLLIN == 0 {
        return Ok(());
    }
    conn.socket()
        .set_nonblocking(true)
        .map_err(|source| SyslogError::Blocking {
            nonblocking: true,
            source,
        })?;
    let drained = drain(conn);
    conn.socket()
        .set_nonblocking(false)
        .map_err(|source| SyslogError::Blocking {
            nonblocking: false,
            source,
        })?;
    drained
}

/// Reads (and discards) what the peer sent, on a nonblocking socket.
fn drain(conn: &mut Conn) -> Result<(), SyslogError> {
    let mut buf = [0u8; 4096];
    let closed = || Err(SyslogError::Closed);
    match conn {
        Conn::Tcp(s) => loop {
            match s.read(&mut buf) {
                Ok(0) => return closed(),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SyslogError::Read(e)),
            }
        },
        Conn::Tls(s) => loop {
            match s.conn.read_tls(&mut s.sock) {
                Ok(0) => return closed(),
                Ok(_) => {
                    let state = s.conn.process_new_packets().map_err(SyslogError::Tls)?;
                    let mut left = state.plaintext_bytes_to_read();
                    while left > 0 {
                        let n = s
                            .conn
                            .reader()
                            .read(&mut buf[..left.min(4096)])
                            .map_err(SyslogError::TlsRead)?;
                        if n == 0 {
                            break;
                        }
                        left -= n;
                    }
                    if state.peer_has_closed() {
                        return closed();
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SyslogError::Read(e)),
            }
        },
    }
}

/// Waits until the peer's TCP has acknowledged every byte written to
/// `sock`, the connection fails, or `timeout` passes.
fn wait_acknowledged(sock: &TcpStream, timeout: Duration) -> Result<(), SyslogError> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_micros(100);
    loop {
        let unacked = unacknowledged_bytes(sock)?;
        if let Some(e) = sock.take_error().map_err(SyslogError::SoError)? {
            return Err(SyslogError::Failed(e));
        }
        if unacked == 0 {
            return Ok(());
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(SyslogError::Unacknowledged {
                bytes: unacked,
                timeout,
            });
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// Bytes written to `sock` that the peer has not acknowledged yet (sent or
/// not): Linux's `SIOCOUTQ`.
fn unacknowledged_bytes(sock: &TcpStream) -> Result<usize, SyslogError> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ for sockets) writes one int through the
    // pointer, which is valid for the call; the fd is owned by `sock`.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        return Err(SyslogError::Outq(io::Error::last_os_error()));
    }
    Ok(usize::try_from(n).unwrap_or(0))
}

/// The fixed part of every message, checked once.
#[derive(Debug, Clone)]
struct Header {
    hostname: String,
    app_name: String,
    procid: String,
}

impl Header {
    fn new(hostname: &str, app_name: &str, pid: u32) -> Self {
        Self {
            hostname: header_field(hostname, 255),
            app_name: header_field(app_name, 48),
            procid: header_field(&pid.to_string(), 128),
        }
    }
}

/// An RFC 5424 header field: printable US-ASCII only (others become `_`),
/// at most `max` characters, `-` (NILVALUE) when empty.
fn header_field(value: &str, max: usize) -> String {
    let field: String = value
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if field.is_empty() { "-".into() } else { field }
}

/// Appends one SYSLOG-MSG (without its length prefix).
fn format_message(out: &mut Vec<u8>, header: &Header, record: &Record<'_>) {
    let severity = match record.kind {
        "policy.violation" | "sensor.lost" => SEVERITY_WARNING,
        _ => SEVERITY_INFO,
    };
    let mut head = String::with_capacity(160);
    let _ = write!(
        head,
        "<{}>1 {} {} {} {} {} [{SD_ID} seq=\"{}\"] ",
        u16::from(FACILITY) * 8 + u16::from(severity),
        timestamp(record.time_ns),
        header.hostname,
        header.app_name,
        header.procid,
        header_field(record.kind, 32),
        sd_escape(&record.seq.to_string()),
    );
    out.extend_from_slice(head.as_bytes());
    out.extend_from_slice(record.payload);
}

/// RFC 3339 UTC with microseconds; times before 1970 are clamped to it.
fn timestamp(time_ns: i64) -> String {
    let ns = u64::try_from(time_ns).unwrap_or(0);
    humantime::format_rfc3339_micros(UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

/// A PARAM-VALUE with `"`, `\` and `]` escaped (RFC 5424 6.3.3).
fn sd_escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        if matches!(c, '"' | '\\' | ']') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn record<'a>(kind: &'a str, payload: &'a [u8]) -> Record<'a> {
        Record {
            seq: 17,
            time_ns: 1_795_428_000_123_456_789,
            kind,
            payload,
        }
    }

    fn frame(header: &Header, record: &Record<'_>) -> Vec<u8> {
        frame_batch(header, std::slice::from_ref(record))
    }

    #[test]
    fn exact_frame() {
        let header = Header::new("web-1", "sensor", 4242);
        let payload = br#"{"seq":17,"kind":"process.exec"}"#;
        let got = frame(&header, &record("process.exec", payload));
        let msg = r#"<134>1 2026-11-23T10:00:00.123456Z web-1 sensor 4242 process.exec [sensor@32473 seq="17"] {"seq":17,"kind":"process.exec"}"#;
        let want = format!("{} {msg}", msg.len());
        assert_eq!(String::from_utf8(got).unwrap(), want);
        assert_eq!(want.len(), msg.len() + 4);
    }

    #[test]
    fn severity_by_kind() {
        let header = Header::new("h", "sensor", 1);
        for (kind, pri) in [
            ("policy.violation", "<132>"),
            ("sensor.lost", "<132>"),
            ("net.connect", "<134>"),
        ] {
            let mut msg = Vec::new();
            format_message(&mut msg, &header, &record(kind, b"{}"));
            assert!(msg.starts_with(pri.as_bytes()), "{kind}");
        }
    }

    #[test]
    fn length_counts_bytes_not_chars() {
        let header = Header::new("h", "sensor", 1);
        let payload = "{\"p\":\"é€\"}".as_bytes();
        let got = frame(&header, &record("k", payload));
        let text = String::from_utf8(got).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.ends_with("{\"p\":\"é€\"}"));
    }

    #[test]
    fn header_fields_are_sanitized() {
        let header = Header::new("host name\u{e9}", "", 7);
        assert_eq!(header.hostname, "host_name_");
        assert_eq!(header.app_name, "-");
        assert_eq!(header_field(&"k".repeat(40), 32), "k".repeat(32));
        let mut msg = Vec::new();
        format_message(&mut msg, &header, &record("a b", b"{}"));
        assert_eq!(
            String::from_utf8(msg).unwrap(),
            r#"<134>1 2026-11-23T10:00:00.123456Z host_name_ - 7 a_b [sensor@32473 seq="17"] {}"#
        );
    }

    #[test]
    fn sd_values_are_escaped() {
        assert_eq!(sd_escape("12"), "12");
        assert_eq!(sd_escape(r#"a"b\c]d"#), r#"a\"b\\c\]d"#);
        assert_eq!(sd_escape("[x]"), r"[x\]");
    }

    #[test]
    fn timestamps() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(-5), "1970-01-01T00:00:00.000000Z");
        assert_eq!(timestamp(1_000_999), "1970-01-01T00:00:00.001000Z");
        assert_eq!(
            timestamp(1_795_428_000_123_456_789),
            "2026-11-23T10:00:00.123456Z"
        );
    }

    #[test]
    fn ipv6_brackets_are_stripped() {
        assert_eq!(bare_host("[::1]"), "::1");
        assert_eq!(bare_host("::1"), "::1");
        assert_eq!(bare_host("example.org"), "example.org");
    }

    #[test]
    fn tls_needs_a_valid_server_name() {
        let cfg = |host: &str| SyslogConfig {
            host: host.into(),
            port: 6514,
            tls: Some(TlsOptions::default()),
            hostname: "h".into(),
            app_name: "sensor".into(),
        };
        assert!(Syslog::new(cfg("127.0.0.1")).is_ok());
        assert!(Syslog::new(cfg("[::1]")).is_ok());
        assert!(Syslog::new(cfg("siem.example.org")).is_ok());
        assert!(matches!(
            Syslog::new(cfg("bad host")),
            Err(TlsError::ServerName { .. })
        ));
    }

    #[test]
    fn unreachable_receiver_is_a_retry() {
        // A port nothing listens on: connection refused at once.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut s = Syslog::new(SyslogConfig {
            host: "127.0.0.1".into(),
            port,
            tls: None,
            hostname: "h".into(),
            app_name: "sensor".into(),
        })
        .unwrap();
        let err = s.send(&[record("k", b"{}")]).unwrap_err();
        assert!(err.retry);
        assert_eq!(err.delivered, 0);
        assert!(err.message.contains("connect"), "{}", err.message);
    }
}

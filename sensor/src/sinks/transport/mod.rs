//! Where encoded events go: a local file or stdout ([`file`]), or a
//! receiver over the network ([`syslog`], [`http`] for Splunk HEC and
//! Elasticsearch `_bulk`, [`nats`] for JetStream), TLS set up by [`tls`].
//!
//! # Network transports
//!
//! A network output (syslog, HTTP, NATS) reads records from its spool and
//! hands them to a [`Transport`] in order. The transport returns once the
//! receiver holds them (TCP-acknowledged for syslog, a 2xx answer for HTTP,
//! a JetStream ack for NATS); only then does the spool move past them. An
//! error says how far it got and whether trying again can help, so the
//! output retries with backoff from the first record not delivered, and
//! at-least-once holds across reconnects and daemon restarts.

pub mod file;
pub mod http;
pub mod nats;
pub mod syslog;
pub mod tls;

use std::fmt;

/// One encoded event as the spool keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    /// The event's `seq` (unique per host and increasing, across restarts).
    pub seq: u64,
    /// The event's time, nanoseconds since the Unix epoch.
    pub time_ns: i64,
    /// The event's kind (`process.exec`, ...).
    pub kind: &'a str,
    /// The encoded event (JSON or OCSF): one JSON object, no newline.
    pub payload: &'a [u8],
}

/// Why a send stopped before every record was delivered.
#[derive(Debug)]
pub struct SendError {
    /// How many records at the front of the slice the receiver holds.
    pub delivered: usize,
    /// Retry the rest later (connection refused or lost, timeout, 5xx, 429).
    /// When false, the receiver refused the first undelivered record for
    /// good (e.g. HTTP 400): the output counts it as failed and goes on
    /// after it.
    pub retry: bool,
    /// What to log and show in `sensor status`.
    pub message: String,
}

impl SendError {
    /// A failure that may pass: nothing from `delivered` on was delivered.
    #[must_use]
    pub fn retry(delivered: usize, message: impl Into<String>) -> Self {
        Self {
            delivered,
            retry: true,
            message: message.into(),
        }
    }

    /// The receiver refused record `delivered` for good.
    #[must_use]
    pub fn refused(delivered: usize, message: impl Into<String>) -> Self {
        Self {
            delivered,
            retry: false,
            message: message.into(),
        }
    }
}

impl fmt::Display for SendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// A connection-owning sender. It connects lazily inside `send` and drops a
/// broken connection itself, so the caller only retries.
pub trait Transport: Send {
    /// Delivers `records` in order; `Ok` once the receiver holds all of them.
    /// Never blocks longer than its own timeouts (connect, write, answer).
    fn send(&mut self, records: &[Record<'_>]) -> Result<(), SendError>;

    /// Largest batch worth handing to one `send` (bytes of payload).
    fn batch_bytes(&self) -> usize {
        1 << 20
    }
}

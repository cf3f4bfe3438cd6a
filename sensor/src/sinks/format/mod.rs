//! How an output writes an event: every format serializes from the typed
//! [`Event`], never from another format's bytes.
//!
//! - [`json`]: `sensor.event/v1`, the event's own serde form.
//! - [`ocsf`]: OCSF 1.7.0, `#[derive(Serialize)]` OCSF structs built from
//!   the typed event by field accesses (a renamed event field is a compile
//!   error there).
//!
//! Syslog's RFC 5424 framing wraps either format and is part of its
//! transport ([`super::transport::syslog`]).

pub mod json;
pub mod ocsf;

use std::time::SystemTime;

use super::Format;
use crate::event::Event;

/// Why an event could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("encoding the event as JSON")]
    Json(#[from] serde_json::Error),
}

/// Appends `event` in `format` to `out` (one JSON object, no newline).
pub fn encode(format: Format, event: &Event, out: &mut Vec<u8>) -> Result<(), FormatError> {
    match format {
        Format::Json => json::encode(event, out),
        Format::Ocsf => ocsf::encode(event, out),
    }
}

/// Nanoseconds since the Unix epoch (0 before it, saturated past `i64`).
#[must_use]
pub fn unix_ns(t: SystemTime) -> i64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

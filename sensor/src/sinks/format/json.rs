//! `sensor.event/v1` as one JSON object per event: the event's serde form
//! (field names and order are the contract, DESIGN.md).

use super::FormatError;
use crate::event::Event;

/// Appends `event` as JSON (no newline) to `out`.
pub fn encode(event: &Event, out: &mut Vec<u8>) -> Result<(), FormatError> {
    serde_json::to_writer(&mut *out, event)?;
    Ok(())
}

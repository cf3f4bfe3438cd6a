//! Events as JSON lines, the form every output but OCSF writes.

use super::Event;

/// Serializes an event as one JSON line (with the trailing newline) into `out`.
pub fn write_json_line(event: &Event, out: &mut Vec<u8>) -> serde_json::Result<()> {
    serde_json::to_writer(&mut *out, event)?;
    out.push(b'\n');
    Ok(())
}

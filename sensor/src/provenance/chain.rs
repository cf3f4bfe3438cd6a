//! The per-run hash chain over event lines.
//!
//! `chain = SHA-256(prev || canonical)`, `prev` being the run's previous
//! chain value (32 zero bytes before its first event) and `canonical` the
//! event's JSON line as written, without its trailing newline and without
//! its `provenance` member. That member is always the object's last one and
//! has a fixed shape, so the canonical bytes are the line with the suffix
//! `,"provenance":{"prev":"<64 hex>","chain":"<64 hex>"}` removed (the
//! closing `}` kept): exactly what serializing the event without the
//! member gives.

use sha2::{Digest as _, Sha256};

/// A chain value.
pub type Hash = [u8; 32];

/// The `prev` of a run's first event.
pub const GENESIS: Hash = [0; 32];

const HEAD: &[u8] = br#","provenance":{"prev":""#;
const MID: &[u8] = br#"","chain":""#;
const TAIL: &[u8] = br#""}}"#;
/// Length of the member's suffix (the line's closing `}` included).
const SUFFIX_LEN: usize = HEAD.len() + 64 + MID.len() + 64 + TAIL.len();

/// The next chain value.
#[must_use]
pub fn next(prev: &Hash, canonical: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical);
    h.finalize().into()
}

/// Appends the `provenance` member to `line`, a serialized JSON object
/// (no newline) that is the canonical form; returns the new chain value.
pub fn seal(line: &mut Vec<u8>, prev: &Hash) -> Hash {
    seal_at(line, 0, prev)
}

/// [`seal`] for the line that starts at `start` in `buf` (the lines of a
/// batch are written back to back), in place.
pub fn seal_at(buf: &mut Vec<u8>, start: usize, prev: &Hash) -> Hash {
    let chain = next(prev, buf.get(start..).unwrap_or_default());
    if buf.len() > start && buf.last() == Some(&b'}') {
        buf.pop();
        buf.extend_from_slice(HEAD);
        push_hex(buf, prev);
        buf.extend_from_slice(MID);
        push_hex(buf, &chain);
        buf.extend_from_slice(TAIL);
    }
    chain
}

fn push_hex(buf: &mut Vec<u8>, hash: &Hash) {
    let at = buf.len();
    buf.resize(at + 64, 0);
    if let Some(out) = buf.get_mut(at..) {
        // 64 bytes for 32: cannot fail.
        let _ = hex::encode_to_slice(hash, out);
    }
}

/// A line split into its canonical bytes and its `provenance` member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    pub canonical: Vec<u8>,
    pub prev: Hash,
    pub chain: Hash,
}

fn hash_of(hex_bytes: &[u8]) -> Option<Hash> {
    let mut out = [0; 32];
    hex::decode_to_slice(hex_bytes, &mut out).ok()?;
    Some(out)
}

/// Splits a stored or written line (newline optional); `None` when it has
/// no well-formed `provenance` member at its end.
#[must_use]
pub fn open(line: &[u8]) -> Option<Sealed> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let start = line.len().checked_sub(SUFFIX_LEN)?;
    let (body, suffix) = line.split_at(start);
    let rest = suffix.strip_prefix(HEAD)?;
    let (prev, rest) = rest.split_at(64);
    let rest = rest.strip_prefix(MID)?;
    let (chain, rest) = rest.split_at(64);
    if rest != TAIL {
        return None;
    }
    let mut canonical = Vec::with_capacity(body.len() + 1);
    canonical.extend_from_slice(body);
    canonical.push(b'}');
    Some(Sealed {
        canonical,
        prev: hash_of(prev)?,
        chain: hash_of(chain)?,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_open_round_trip() {
        let canonical = br#"{"seq":1,"kind":"process.exec","run":{"id":"r"}}"#.to_vec();
        let mut line = canonical.clone();
        let chain = seal(&mut line, &GENESIS);
        let text = String::from_utf8(line.clone()).unwrap();
        assert!(
            text.ends_with(&format!(
                r#","provenance":{{"prev":"{}","chain":"{}"}}}}"#,
                "0".repeat(64),
                hex::encode(chain)
            )),
            "{text}"
        );
        // Still one JSON object, with the member last.
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["provenance"]["chain"], hex::encode(chain));
        let opened = open(&line).unwrap();
        assert_eq!(opened.canonical, canonical);
        assert_eq!(opened.prev, GENESIS);
        assert_eq!(opened.chain, chain);
        line.push(b'\n');
        assert_eq!(open(&line).unwrap().chain, chain);
    }

    #[test]
    fn the_chain_is_sha256_of_prev_and_the_canonical_bytes() {
        let a = next(&GENESIS, b"{}");
        let mut h = Sha256::new();
        h.update([0u8; 32]);
        h.update(b"{}");
        assert_eq!(a, <Hash>::from(h.finalize()));
        // Order matters, and every byte does.
        let b = next(&a, b"{\"x\":1}");
        assert_ne!(b, next(&GENESIS, b"{\"x\":1}"));
        assert_ne!(next(&a, b"{\"x\":2}"), b);
    }

    #[test]
    fn lines_without_the_member_do_not_open() {
        assert!(open(br#"{"seq":1}"#).is_none());
        assert!(open(b"").is_none());
        let mut line = br#"{"seq":1}"#.to_vec();
        seal(&mut line, &GENESIS);
        let n = line.len();
        line[n - 5] = b'x'; // not hex
        assert!(open(&line).is_none());
    }
}

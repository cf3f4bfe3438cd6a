//! How the bytes a kernel record carries (paths, argv, comm) become text in
//! events: valid UTF-8 as is, anything else as `\xNN`.

/// Renders bytes as a string: valid UTF-8 as is, other bytes as `\xNN`.
/// Returns whether the input was valid UTF-8.
#[must_use]
pub fn escape_bytes(bytes: &[u8]) -> (String, bool) {
    if let Ok(s) = std::str::from_utf8(bytes) {
        return (s.to_owned(), true);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    (out, false)
}

/// Splits a NUL-separated argv area into arguments.
#[must_use]
pub fn split_argv(area: &[u8]) -> Vec<&[u8]> {
    if area.is_empty() {
        return Vec::new();
    }
    let area = area.strip_suffix(&[0]).unwrap_or(area);
    area.split(|&b| b == 0).collect()
}

/// `ENOENT` for 2, or the number when unknown.
#[must_use]
pub fn errno_name(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno);
    if e == nix::errno::Errno::UnknownErrno {
        errno.to_string()
    } else {
        format!("{e:?}")
    }
}

//! `file:PATH` output: JSON lines appended to a file (created 0640).

use std::{fs::OpenOptions, io, os::unix::fs::OpenOptionsExt as _, path::Path};

pub fn open(path: &Path) -> io::Result<std::fs::File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
}

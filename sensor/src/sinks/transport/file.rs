//! Local outputs: stdout, and `file:PATH` appended (created 0640) and
//! rotated by size: PATH → PATH.1 → … → PATH.<keep>, the oldest deleted.
//! A file is only rotated between whole lines.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufWriter, Write},
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

/// Writes whole lines to stdout or a rotated file.
pub struct LineWriter {
    out: BufWriter<Box<dyn Write + Send>>,
    rotation: Option<Rotation>,
}

struct Rotation {
    path: PathBuf,
    size: u64,
    max_size: u64,
    keep: u32,
}

/// Opens the output file for appending; a file it creates is mode 0640
/// (the daemon's umask is 077, so the mode is set again after creation).
fn open(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::PermissionsExt as _;
    match OpenOptions::new()
        .create_new(true)
        .append(true)
        .mode(0o640)
        .open(path)
    {
        Ok(f) => {
            f.set_permissions(fs::Permissions::from_mode(0o640))?;
            Ok(f)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            OpenOptions::new().append(true).open(path)
        }
        Err(e) => Err(e),
    }
}

impl LineWriter {
    #[must_use]
    pub fn stdout() -> Self {
        Self {
            out: BufWriter::with_capacity(1 << 16, Box::new(io::stdout())),
            rotation: None,
        }
    }

    /// Opens (appending to) `path`; a regular file rotates past `max_size`
    /// bytes. Anything else (`/dev/null`, a FIFO, a terminal) is written
    /// as it is and never renamed.
    pub fn file(path: &Path, max_size: u64, keep: u32) -> io::Result<Self> {
        let file = open(path)?;
        let meta = file.metadata()?;
        let rotation = meta.file_type().is_file().then(|| Rotation {
            path: path.to_owned(),
            size: meta.len(),
            max_size,
            keep,
        });
        Ok(Self {
            out: BufWriter::with_capacity(1 << 16, Box::new(file)),
            rotation,
        })
    }

    /// Writes `bytes`, `lines` complete lines, rotating between lines when
    /// the file would pass its size.
    pub fn write_lines(&mut self, bytes: &[u8], lines: u64) -> io::Result<()> {
        let Some(rot) = &self.rotation else {
            return self.out.write_all(bytes);
        };
        if rot.size + bytes.len() as u64 <= rot.max_size || lines == 0 {
            self.out.write_all(bytes)?;
            if let Some(rot) = &mut self.rotation {
                rot.size += bytes.len() as u64;
            }
            return Ok(());
        }
        // Split at line ends so that no file passes max_size (a single line
        // larger than max_size gets a file of its own).
        let mut rest = bytes;
        while !rest.is_empty() {
            let (room, size) = self.rotation.as_ref().map_or((u64::MAX, 0), |r| {
                (r.max_size.saturating_sub(r.size), r.size)
            });
            let take = fitting_prefix(rest, room);
            if take == 0 {
                if size > 0 {
                    self.rotate()?;
                    continue;
                }
                // One line larger than a whole file.
                let line_end = rest
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(rest.len(), |i| i + 1);
                self.write_counted(&rest[..line_end])?;
                rest = &rest[line_end..];
                continue;
            }
            self.write_counted(&rest[..take])?;
            rest = &rest[take..];
        }
        Ok(())
    }

    fn write_counted(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        if let Some(rot) = &mut self.rotation {
            rot.size += bytes.len() as u64;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.out.flush()?;
        let Some(rot) = &mut self.rotation else {
            return Ok(());
        };
        let numbered = |n: u32| {
            let mut p = rot.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if rot.keep == 0 {
            fs::remove_file(&rot.path).or_else(ignore_missing)?;
        } else {
            fs::remove_file(numbered(rot.keep)).or_else(ignore_missing)?;
            for n in (1..rot.keep).rev() {
                fs::rename(numbered(n), numbered(n + 1)).or_else(ignore_missing)?;
            }
            fs::rename(&rot.path, numbered(1))?;
        }
        let file = open(&rot.path)?;
        rot.size = 0;
        self.out = BufWriter::with_capacity(1 << 16, Box::new(file));
        Ok(())
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

fn ignore_missing(e: io::Error) -> io::Result<()> {
    if e.kind() == io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

/// Length of the longest prefix of whole lines of `bytes` within `room`.
fn fitting_prefix(bytes: &[u8], room: u64) -> usize {
    let limit = usize::try_from(room).unwrap_or(usize::MAX).min(bytes.len());
    bytes[..limit]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rotates_between_lines_and_keeps_n_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let mut w = LineWriter::file(&path, 4096, 2).unwrap();
        let mut all = Vec::new();
        for i in 0..1000 {
            let line = format!("{{\"seq\":{i}}}\n");
            all.push(line.clone());
            w.write_lines(line.as_bytes(), 1).unwrap();
        }
        w.flush().unwrap();
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        let (a, b, c) = (
            read(&path),
            read(&dir.path().join("e.jsonl.1")),
            read(&dir.path().join("e.jsonl.2")),
        );
        assert!(!dir.path().join("e.jsonl.3").exists());
        for f in [&a, &b, &c] {
            assert!(f.len() <= 4096 && f.ends_with('\n'), "{}", f.len());
        }
        // Oldest first: .2, .1, current — the tail of what was written.
        let joined = format!("{c}{b}{a}");
        assert!(all.concat().ends_with(&joined));
        assert!(joined.len() > 8000);
    }

    #[test]
    fn devices_are_never_rotated() {
        // /dev/null must stay /dev/null however much is written to it.
        let mut w = LineWriter::file(Path::new("/dev/null"), 4096, 2).unwrap();
        let line = vec![b'x'; 1023];
        for _ in 0..64 {
            w.write_lines(&[line.as_slice(), b"\n"].concat(), 1)
                .unwrap();
        }
        w.flush().unwrap();
        assert!(w.rotation.is_none());
        let meta = fs::metadata("/dev/null").unwrap();
        assert!(
            !meta.file_type().is_file(),
            "/dev/null became a regular file"
        );
        assert!(!Path::new("/dev/null.1").exists());
    }

    #[test]
    fn a_batch_is_split_at_line_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.jsonl");
        let mut w = LineWriter::file(&path, 4096, 1).unwrap();
        let batch: String = (0..500).map(|i| format!("{{\"seq\":{i}}}\n")).collect();
        w.write_lines(batch.as_bytes(), 500).unwrap();
        w.flush().unwrap();
        let cur = fs::read_to_string(&path).unwrap();
        let old = fs::read_to_string(dir.path().join("e.jsonl.1")).unwrap();
        assert!(cur.len() <= 4096 && old.len() <= 4096);
        assert!(batch.ends_with(&format!("{old}{cur}")));
    }
}

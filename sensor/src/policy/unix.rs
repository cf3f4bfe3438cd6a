//! `unix.allow`: the Unix sockets a run may connect to (or send datagrams
//! to). A spawner reached over a Unix socket (systemd, tmux, docker, at) is a
//! way out of a run, so under an allow-list every other socket is refused.
//!
//! A rule is a socket path, a glob over socket paths, or `@name` for an
//! abstract name. The kernel decides in two steps (see the eBPF
//! `probes/unix.rs`): on the address the caller gave, from the kernel's copy
//! of it (the exact bytes: a rule allows the address clients use), and after
//! a connect, on the socket it reached: a socket file must be one a rule's
//! path resolved to (device, inode), so a symlink or a path replaced in
//! between reaches nothing else.

use std::{os::unix::fs::FileTypeExt as _, path::Path};

use sensor_common::event::UNIX_PATH_BYTES;

use super::{FileId, resolve};

/// One resolved `unix.allow` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnixRule {
    /// The rule as written.
    pub text: String,
    target: Target,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    /// An abstract name: the address bytes (a NUL, then the name).
    Abstract(Vec<u8>),
    /// A socket path, and the identity of the socket file it names now
    /// (none while it does not exist).
    Path { path: String, id: Option<FileId> },
    /// A glob: every socket file it matches now, with its path.
    Glob {
        pattern: String,
        matched: Vec<(String, FileId)>,
    },
}

/// What the kernel gets of a rule: addresses and socket identities.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// Address bytes as a caller passes them (at most 108).
    pub addresses: Vec<Vec<u8>>,
    pub ids: Vec<FileId>,
}

/// Why a `unix.allow` rule is refused (the message follows the rule in the
/// config refusal).
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("an abstract name needs at least one character after '@'")]
    EmptyAbstract,
    #[error("an abstract name is exact (no glob)")]
    AbstractGlob,
    #[error("an abstract name is at most {} bytes", UNIX_PATH_BYTES - 1)]
    AbstractTooLong,
    #[error("must be an absolute socket path, or @name for an abstract name")]
    NotAbsolute,
    #[error("a socket path is at most {} bytes", UNIX_PATH_BYTES - 1)]
    PathTooLong,
    #[error("{0}")]
    Glob(#[from] super::pathglob::PatternError),
}

impl UnixRule {
    /// Parses and resolves a rule; an error says what is wrong with it.
    pub fn parse(text: &str) -> Result<Self, RuleError> {
        let target = if let Some(name) = text.strip_prefix('@') {
            if name.is_empty() {
                return Err(RuleError::EmptyAbstract);
            }
            if name.contains(['*', '?', '[']) {
                return Err(RuleError::AbstractGlob);
            }
            let mut bytes = vec![0u8];
            bytes.extend_from_slice(name.as_bytes());
            if bytes.len() > UNIX_PATH_BYTES {
                return Err(RuleError::AbstractTooLong);
            }
            Target::Abstract(bytes)
        } else if !text.starts_with('/') {
            return Err(RuleError::NotAbsolute);
        } else if text.len() >= UNIX_PATH_BYTES {
            return Err(RuleError::PathTooLong);
        } else if text.contains(['*', '?', '[']) {
            // Read as the expansion reads it (its errors too).
            super::pathglob::matcher(text)?;
            Target::Glob {
                pattern: text.to_owned(),
                matched: sockets_matching(text),
            }
        } else {
            Target::Path {
                path: text.to_owned(),
                id: socket_id(Path::new(text)),
            }
        };
        Ok(Self {
            text: text.to_owned(),
            target,
        })
    }

    /// Resolves paths and globs again (a service restarted: its socket is a
    /// new file); true when anything changed.
    pub fn refresh(&mut self) -> bool {
        match &mut self.target {
            Target::Abstract(_) => false,
            Target::Path { path, id } => {
                let now = socket_id(Path::new(path.as_str()));
                let changed = now != *id;
                *id = now;
                changed
            }
            Target::Glob { pattern, matched } => {
                let now = sockets_matching(pattern);
                let changed = now != *matched;
                *matched = now;
                changed
            }
        }
    }

    /// The addresses and socket identities this rule allows now.
    #[must_use]
    pub fn resolved(&self) -> Resolved {
        match &self.target {
            Target::Abstract(bytes) => Resolved {
                addresses: vec![bytes.clone()],
                ids: Vec::new(),
            },
            Target::Path { path, id } => Resolved {
                addresses: vec![path.as_bytes().to_vec()],
                ids: id.iter().copied().collect(),
            },
            Target::Glob { matched, .. } => Resolved {
                addresses: matched.iter().map(|(p, _)| p.as_bytes().to_vec()).collect(),
                ids: matched.iter().map(|(_, id)| *id).collect(),
            },
        }
    }
}

/// The identity of the socket file at `path` (symlinks followed), if it is one.
fn socket_id(path: &Path) -> Option<FileId> {
    let meta = std::fs::metadata(path).ok()?;
    if !meta.file_type().is_socket() {
        return None;
    }
    FileId::of(path).ok()
}

/// Every socket file a glob matches now, with the path it matched at.
fn sockets_matching(pattern: &str) -> Vec<(String, FileId)> {
    let Ok(paths) = super::pathglob::paths(pattern) else {
        return Vec::new();
    };
    let mut found: Vec<(String, FileId)> = paths
        .into_iter()
        .filter_map(|p| {
            let id = socket_id(&p)?;
            let text = p.to_str()?.to_owned();
            (text.len() < UNIX_PATH_BYTES).then_some((text, id))
        })
        .collect();
    found.sort();
    found.dedup();
    found
}

/// The kernel's `dev_t` of a socket identity.
#[must_use]
pub fn kernel_id(id: &FileId) -> (u32, u64) {
    (resolve::st_dev_to_kernel_dev(id.dev), id.ino)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_parse_resolve_and_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let path = sock.to_str().unwrap();
        let rule = UnixRule::parse(path).unwrap();
        let r = rule.resolved();
        assert_eq!(r.addresses, vec![path.as_bytes().to_vec()]);
        assert_eq!(r.ids, vec![FileId::of(&sock).unwrap()]);
        let glob = UnixRule::parse(&format!("{}/*.sock", dir.path().display())).unwrap();
        assert_eq!(glob.resolved().ids, r.ids);
        let abs = UnixRule::parse("@my-name").unwrap();
        assert_eq!(abs.resolved().addresses, vec![b"\0my-name".to_vec()]);
        assert!(abs.resolved().ids.is_empty());
        // A regular file is no socket: the path allows its address, no identity.
        let file = dir.path().join("plain");
        std::fs::write(&file, b"").unwrap();
        assert!(
            UnixRule::parse(file.to_str().unwrap())
                .unwrap()
                .resolved()
                .ids
                .is_empty()
        );
        for bad in [
            "relative.sock",
            "@",
            "@a*",
            &format!("/{}", "x".repeat(120)),
        ] {
            assert!(UnixRule::parse(bad).is_err(), "{bad}");
        }
    }
}

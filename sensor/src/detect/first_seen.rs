//! "First seen": a rule that fires only the first time a combination of
//! field values is seen, e.g. a run's first connection to a host never
//! seen for its agent on this machine.
//!
//! Sigma has no such correlation type, so it is written as a plain Sigma
//! rule plus a custom attribute (the Sigma specification allows custom
//! top-level attributes; `sigma check` accepts them and the SIEM backends
//! convert the rule as the plain query, for a SIEM's own "new terms"
//! feature):
//!
//! ```yaml
//! detection: {selection: {run.agent|exists: true, network.dst_ip|exists: true}, condition: selection}
//! first_seen:
//!     fields: [run.agent, network.dst_ip]
//! ```
//!
//! The daemon keeps the combinations it has seen, per rule id, in
//! [`crate::paths::DETECT_SEEN_FILE`] in the state directory: loaded at
//! start, written atomically (a temporary file renamed over it) at most
//! once per [`FLUSH_EVERY`] while a new combination waits to be written and
//! when the detection thread stops, so a restart does not fire again on
//! what was seen before. A combination seen again only moves its "last
//! seen" (which decides only what the cap forgets first): that alone is
//! written at most once per [`TOUCH_FLUSH_EVERY`], so a busy host whose
//! every connection refreshes some entry does not rewrite the whole file
//! every second.
//! At most [`MAX_ENTRIES`] combinations are kept: at the cap the least
//! recently seen tenth is forgotten (those fire again when seen next; a
//! flood of new values makes noise, never silence). A file that cannot be
//! read or parsed (absent, too large, not a regular file, not this format)
//! is treated as empty, with a warning: a hostile state file cannot stop
//! the daemon.

use std::{
    collections::HashMap,
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use serde::{Deserialize, Serialize};
use serde_norway::Value as Yaml;
use sha2::Digest as _;

use super::rules::RuleError;

/// Combinations kept, at most (every rule together).
pub const MAX_ENTRIES: usize = 100_000;
/// Fields in one `first_seen`, at most.
pub const MAX_FIELDS: usize = 8;
/// A key longer than this (bytes) is kept as its SHA-256.
pub const MAX_KEY_LEN: usize = 512;
/// The state file, at most (larger: not read).
pub const MAX_FILE_BYTES: u64 = 64 * 1024 * 1024;
/// New combinations are written at most this often (and at stop).
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Changes of "last seen" alone are written at most this often (and at
/// stop, or with the next new combination): lost in a crash, they only
/// change which entries the cap forgets first.
pub const TOUCH_FLUSH_EVERY: Duration = Duration::from_secs(300);
/// Format version of the state file.
const VERSION: u32 = 1;

/// A rule's `first_seen` attribute.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spec {
    /// The event fields (dotted JSON paths) whose values make the key.
    pub fields: Vec<String>,
}

/// Reads `first_seen` from a rule's top mapping (`None` without it).
pub fn parse(
    top: &serde_norway::Mapping,
    path: &Path,
    line_of: &dyn Fn(&str) -> usize,
) -> Result<Option<Spec>, RuleError> {
    let Some(value) = top.get("first_seen") else {
        return Ok(None);
    };
    let err = |message: &str| RuleError::At {
        path: path.to_owned(),
        line: line_of("first_seen:").max(1),
        message: message.to_owned(),
    };
    let Some(map) = value.as_mapping() else {
        return Err(err(
            "first_seen is a mapping: first_seen: {fields: [FIELD, ...]}",
        ));
    };
    if let Some((k, _)) = map.iter().find(|(k, _)| k.as_str() != Some("fields")) {
        return Err(err(&format!(
            "first_seen: unknown key {:?} (fields)",
            k.as_str().unwrap_or("?")
        )));
    }
    let fields: Option<Vec<String>> = match map.get("fields") {
        Some(Yaml::String(s)) => Some(vec![s.clone()]),
        Some(Yaml::Sequence(items)) => items
            .iter()
            .map(|i| i.as_str().map(str::to_owned))
            .collect(),
        _ => None,
    };
    let fields = fields
        .filter(|f| !f.is_empty() && f.len() <= MAX_FIELDS)
        .filter(|f| f.iter().all(|x| !x.is_empty() && x.len() <= 256))
        .ok_or_else(|| {
            err(&format!(
                "first_seen.fields is a list of 1 to {MAX_FIELDS} event fields"
            ))
        })?;
    Ok(Some(Spec { fields }))
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Unix seconds (the events' own times).
    first: u64,
    last: u64,
}

/// The state file's form.
#[derive(Serialize, Deserialize)]
struct File {
    version: u32,
    /// `[key, first, last]`.
    entries: Vec<(String, u64, u64)>,
}

/// The combinations seen, per rule.
#[derive(Debug, Default)]
pub struct FirstSeen {
    entries: HashMap<String, Entry>,
    /// Where they are kept (none: in memory only, as `sensor rules test`).
    path: Option<PathBuf>,
    /// A new combination (or a forgotten one) is not written yet.
    added: bool,
    /// Only "last seen" times changed since the last write.
    touched: bool,
    /// The last write.
    written: Option<Instant>,
    /// The load (what was just read needs no write for "last seen" alone).
    loaded: Option<Instant>,
    /// Combinations forgotten at the cap, since start.
    pub evicted: u64,
}

impl FirstSeen {
    /// The set kept in `path`, as that file has it (empty, with a warning,
    /// when it cannot be read or is not this format; empty, silently, when
    /// it does not exist).
    #[must_use]
    pub fn load(path: PathBuf) -> Self {
        let entries = match read(&path) {
            Ok(Some(entries)) => entries,
            Ok(None) => HashMap::new(),
            Err(why) => {
                tracing::warn!(file = %path.display(), %why,
                    "detection: the first-seen state cannot be used; starting from an empty one \
                     (first-seen rules fire again on what they saw before)");
                HashMap::new()
            }
        };
        Self {
            entries,
            path: Some(path),
            loaded: Some(Instant::now()),
            ..Self::default()
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Changes wait to be written (never for a set kept in memory only).
    #[must_use]
    pub fn is_dirty(&self) -> bool {
        (self.added || self.touched) && self.path.is_some()
    }

    /// How long until the changes waiting are due to be written
    /// ([`FirstSeen::flush_if_due`]); `None` when nothing waits.
    #[must_use]
    pub fn due_in(&self) -> Option<Duration> {
        if !self.is_dirty() {
            return None;
        }
        let (every, since) = if self.added {
            (FLUSH_EVERY, self.written)
        } else {
            (TOUCH_FLUSH_EVERY, self.written.or(self.loaded))
        };
        Some(since.map_or(Duration::ZERO, |t| every.saturating_sub(t.elapsed())))
    }

    /// True when `event` is the first with its values of `spec`'s fields
    /// for rule `rule` (it is then remembered). An event without one of
    /// the fields is never a first.
    pub fn first<E: super::correlation::Fields + ?Sized>(
        &mut self,
        rule: &str,
        spec: &Spec,
        event: &E,
        time: SystemTime,
    ) -> bool {
        let mut key = String::from(rule);
        for f in &spec.fields {
            let v = event.text(f);
            if v.is_empty() {
                return false;
            }
            key.push('\u{1f}');
            key.push_str(&v);
        }
        let key = if key.len() > MAX_KEY_LEN {
            format!(
                "sha256:{}",
                hex::encode(sha2::Sha256::digest(key.as_bytes()))
            )
        } else {
            key
        };
        let now = time
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(e) = self.entries.get_mut(&key) {
            if now > e.last {
                e.last = now;
                self.touched = true;
            }
            return false;
        }
        if self.entries.len() >= MAX_ENTRIES {
            self.evict();
        }
        self.entries.insert(
            key,
            Entry {
                first: now,
                last: now,
            },
        );
        self.added = true;
        true
    }

    /// Forgets the least recently seen tenth.
    fn evict(&mut self) {
        let mut lasts: Vec<u64> = self.entries.values().map(|e| e.last).collect();
        let n = (MAX_ENTRIES / 10).max(1).min(lasts.len());
        let (_, cut, _) = lasts.select_nth_unstable(n.saturating_sub(1));
        let cut = *cut;
        let mut removed = 0;
        self.entries.retain(|_, e| {
            if removed < n && e.last <= cut {
                removed += 1;
                false
            } else {
                true
            }
        });
        self.evicted += removed as u64;
        tracing::warn!(
            kept = self.entries.len(),
            forgotten = removed,
            "detection: the first-seen state is full ({MAX_ENTRIES}): the least recently seen \
             combinations are forgotten (they fire again when seen next)"
        );
    }

    /// Writes the set when its changes are due: a new combination once the
    /// last write is [`FLUSH_EVERY`] old, "last seen" times alone once it
    /// is [`TOUCH_FLUSH_EVERY`] old.
    pub fn flush_if_due(&mut self) {
        if self.due_in().is_some_and(|d| d.is_zero()) {
            self.flush();
        }
    }

    /// Writes the set when it changed (a failure is logged; the set stays
    /// dirty and is tried again).
    pub fn flush(&mut self) {
        let Some(path) = self.path.clone() else {
            return;
        };
        if !self.is_dirty() {
            return;
        }
        self.written = Some(Instant::now());
        match self.write(&path) {
            Ok(()) => {
                self.added = false;
                self.touched = false;
            }
            Err(e) => tracing::warn!(file = %path.display(), error = %e,
                "detection: cannot write the first-seen state"),
        }
    }

    fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let mut entries: Vec<(String, u64, u64)> = self
            .entries
            .iter()
            .map(|(k, e)| (k.clone(), e.first, e.last))
            .collect();
        entries.sort_unstable();
        let text = serde_json::to_vec(&File {
            version: VERSION,
            entries,
        })
        .map_err(std::io::Error::other)?;
        let mut name = path.as_os_str().to_owned();
        name.push(".tmp");
        let tmp = PathBuf::from(name);
        // Whatever is there (a link put in its place) goes first.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(&text)?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)
    }
}

/// The file's entries; `None` when it does not exist.
fn read(path: &Path) -> Result<Option<HashMap<String, Entry>>, String> {
    use std::os::unix::fs::OpenOptionsExt as _;
    // Non-blocking: a FIFO put there must not hang the start.
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot open: {e}")),
    };
    let meta = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file".to_owned());
    }
    if meta.len() > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let mut text = Vec::new();
    f.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut text)
        .map_err(|e| format!("cannot read: {e}"))?;
    if text.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("larger than {MAX_FILE_BYTES} bytes"));
    }
    let file: File = serde_json::from_slice(&text).map_err(|e| format!("not its format: {e}"))?;
    if file.version != VERSION {
        return Err(format!(
            "version {} (this sensor reads {VERSION})",
            file.version
        ));
    }
    let mut entries = file.entries;
    if entries
        .iter()
        .any(|(k, _, _)| k.is_empty() || k.len() > 2 * MAX_KEY_LEN)
    {
        return Err("a key is empty or too long".to_owned());
    }
    if entries.len() > MAX_ENTRIES {
        // The most recently seen are kept.
        entries.sort_unstable_by_key(|e| std::cmp::Reverse(e.2));
        entries.truncate(MAX_ENTRIES);
    }
    Ok(Some(
        entries
            .into_iter()
            .map(|(k, first, last)| {
                (
                    k,
                    Entry {
                        first: first.min(last),
                        last,
                    },
                )
            })
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn spec() -> Spec {
        Spec {
            fields: vec!["run.agent".into(), "network.dst_ip".into()],
        }
    }

    fn ev(agent: &str, ip: &str) -> Value {
        json!({"run": {"agent": agent}, "network": {"dst_ip": ip}})
    }

    fn at(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000 + s)
    }

    #[test]
    fn fires_once_per_combination_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.json");
        let mut s = FirstSeen::load(path.clone());
        assert!(s.first("r", &spec(), &ev("a", "10.0.0.1"), at(0)));
        assert!(!s.first("r", &spec(), &ev("a", "10.0.0.1"), at(1)));
        assert!(s.first("r", &spec(), &ev("b", "10.0.0.1"), at(2)));
        assert!(s.first("other", &spec(), &ev("a", "10.0.0.1"), at(3)));
        // A field missing: never a first.
        assert!(!s.first("r", &spec(), &json!({"run": {"agent": "a"}}), at(4)));
        s.flush_if_due();
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let mut again = FirstSeen::load(path);
        assert_eq!(again.len(), 3);
        assert!(!again.first("r", &spec(), &ev("a", "10.0.0.1"), at(9)));
        assert!(again.first("r", &spec(), &ev("a", "10.0.0.2"), at(9)));
    }

    #[test]
    fn last_seen_alone_is_written_rarely() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.json");
        let last_in_file = |path: &Path| -> Vec<u64> {
            let mut lasts: Vec<u64> = read(path)
                .unwrap()
                .unwrap_or_default()
                .values()
                .map(|e| e.last)
                .collect();
            lasts.sort_unstable();
            lasts
        };
        let ago = |secs: u64| Instant::now().checked_sub(Duration::from_secs(secs));
        let mut s = FirstSeen::load(path.clone());
        assert_eq!(s.due_in(), None);
        // A new combination is due at once (nothing written yet), then
        // within FLUSH_EVERY of the last write.
        assert!(s.first("r", &spec(), &ev("a", "10.0.0.1"), at(0)));
        assert_eq!(s.due_in(), Some(Duration::ZERO));
        s.written = Some(Instant::now());
        assert!(
            s.due_in()
                .is_some_and(|d| d > Duration::ZERO && d <= FLUSH_EVERY)
        );
        s.written = ago(2);
        assert_eq!(s.due_in(), Some(Duration::ZERO));
        s.flush_if_due();
        assert_eq!(last_in_file(&path), [1_700_000_000]);
        assert_eq!(s.due_in(), None);
        // Seen again: only "last seen" moves, due after TOUCH_FLUSH_EVERY.
        assert!(!s.first("r", &spec(), &ev("a", "10.0.0.1"), at(5)));
        assert!(s.is_dirty());
        assert!(s.due_in().is_some_and(|d| d > FLUSH_EVERY));
        s.written = ago(2);
        s.flush_if_due();
        assert_eq!(
            last_in_file(&path),
            [1_700_000_000],
            "rewritten for last seen"
        );
        s.written = ago(TOUCH_FLUSH_EVERY.as_secs() + 1);
        s.flush_if_due();
        assert_eq!(last_in_file(&path), [1_700_000_005]);
        assert!(!s.is_dirty());
        // A new combination after a touch takes the touch with it.
        assert!(!s.first("r", &spec(), &ev("a", "10.0.0.1"), at(7)));
        assert!(s.first("r", &spec(), &ev("b", "10.0.0.1"), at(8)));
        s.written = ago(2);
        s.flush_if_due();
        assert_eq!(last_in_file(&path), [1_700_000_007, 1_700_000_008]);
        // At stop, a touch alone is written.
        assert!(!s.first("r", &spec(), &ev("b", "10.0.0.1"), at(9)));
        s.flush();
        assert_eq!(last_in_file(&path), [1_700_000_007, 1_700_000_009]);
        // After a load, "last seen" alone waits TOUCH_FLUSH_EVERY too.
        let mut again = FirstSeen::load(path.clone());
        assert!(!again.first("r", &spec(), &ev("b", "10.0.0.1"), at(20)));
        assert!(again.due_in().is_some_and(|d| d > FLUSH_EVERY));
        again.flush_if_due();
        assert_eq!(last_in_file(&path), [1_700_000_007, 1_700_000_009]);
    }

    #[test]
    fn a_hostile_file_is_an_empty_set() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seen.json");
        for bad in [
            &b"not json"[..],
            b"{\"version\":2,\"entries\":[]}",
            b"{\"version\":1,\"entries\":[[\"\",1,1]]}",
            b"{\"version\":1,\"entries\":[[\"k\",-1,1]]}",
            &[b'['; 100_000][..],
            b"",
        ] {
            std::fs::write(&path, bad).unwrap();
            let mut s = FirstSeen::load(path.clone());
            assert!(s.is_empty());
            assert!(s.first("r", &spec(), &ev("a", "10.0.0.1"), at(0)));
        }
        // A FIFO does not hang the load; a symlink is not followed.
        std::fs::remove_file(&path).unwrap();
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
        assert!(FirstSeen::load(path.clone()).is_empty());
        std::fs::remove_file(&path).unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(
            &real,
            b"{\"version\":1,\"entries\":[[\"r\\u001fa\\u001fx\",1,1]]}",
        )
        .unwrap();
        std::os::unix::fs::symlink(&real, &path).unwrap();
        assert!(FirstSeen::load(path.clone()).is_empty());
        assert_eq!(FirstSeen::load(real).len(), 1);
        // Writing replaces the link, not its target.
        let mut s = FirstSeen::load(path.clone());
        assert!(s.first("r", &spec(), &ev("a", "10.0.0.9"), at(0)));
        s.flush();
        assert!(!std::fs::symlink_metadata(&path).unwrap().is_symlink());
    }

    #[test]
    fn the_cap_forgets_the_least_recently_seen() {
        let mut s = FirstSeen::default();
        for i in 0..MAX_ENTRIES as u64 {
            assert!(s.first("r", &spec(), &ev("a", &i.to_string()), at(i)));
        }
        // Seen again late: kept.
        assert!(!s.first("r", &spec(), &ev("a", "0"), at(MAX_ENTRIES as u64)));
        assert!(s.first("r", &spec(), &ev("a", "new"), at(MAX_ENTRIES as u64 + 1)));
        assert_eq!(s.evicted, (MAX_ENTRIES / 10) as u64);
        assert_eq!(s.len(), MAX_ENTRIES - MAX_ENTRIES / 10 + 1);
        assert!(!s.first("r", &spec(), &ev("a", "0"), at(MAX_ENTRIES as u64 + 2)));
        assert!(s.first("r", &spec(), &ev("a", "1"), at(MAX_ENTRIES as u64 + 2)));
        // Long keys are hashed.
        let long = "x".repeat(10_000);
        assert!(s.first("r", &spec(), &ev("a", &long), at(0)));
        assert!(!s.first("r", &spec(), &ev("a", &long), at(1)));
        assert!(s.entries.keys().all(|k| k.len() <= MAX_KEY_LEN + 7));
    }

    #[test]
    fn the_attribute_is_checked() {
        let parse_text = |t: &str| {
            let y: Yaml = serde_norway::from_str(t).unwrap();
            parse(y.as_mapping().unwrap(), Path::new("x.yml"), &|_| 3)
        };
        assert_eq!(
            parse_text("first_seen:\n  fields: [run.agent, network.dst_ip]\n").unwrap(),
            Some(spec())
        );
        assert_eq!(parse_text("title: x\n").unwrap(), None);
        for bad in [
            "first_seen: [a]\n",
            "first_seen:\n  fields: []\n",
            "first_seen:\n  field: [a]\n",
            "first_seen:\n  fields: [a, b, c, d, e, f, g, h, i]\n",
        ] {
            assert!(
                matches!(parse_text(bad), Err(RuleError::At { line: 3, .. })),
                "{bad}"
            );
        }
    }
}

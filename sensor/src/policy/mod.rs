//! Allow-list policies: which files a run may execute and where it may
//! connect, how deep its sub-agents may nest and how many processes its tree
//! may hold.
//!
//! Exec rules decide on the file the kernel executed, never on the string the
//! caller passed: exact paths, directories and globs are resolved to file
//! identities (device, inode) that the kernel compares the executed file and
//! its parent directories with (see [`resolve`]). Connect rules are folded
//! into prefix tries (see [`net`]). The kernel decides on every exec and
//! connect of a run with a policy and, in enforce mode, blocks ([`kernel`]
//! holds the maps); the decision travels in the event, and user space only
//! names it. Actions the kernel could not decide on (the exec that started a
//! matcher's run, before the run existed) are checked here, in audit.

pub mod effects;
mod hasher;
pub mod kernel;
pub mod net;
pub mod pathglob;
pub mod resolve;
pub mod selftest;
pub mod suggest;
pub mod tables;
pub mod unix;

use std::{collections::BTreeMap, net::IpAddr, path::Path};

use globset::GlobMatcher;
use serde::Deserialize;

use self::net::ConnectRule;
pub use self::resolve::{FileId, kernel_dev_to_st_dev};

/// One `[policy.NAME]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `audit` reports; `enforce` also blocks, in the kernel.
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub exec: ExecConfig,
    #[serde(default)]
    pub connect: ConnectConfig,
    /// Unix sockets the run may connect to (every other is refused under
    /// enforce; the sensor's own control socket is always allowed).
    #[serde(default)]
    pub unix: UnixConfig,
    /// Deepest sub-run allowed below a root run (root = 0).
    #[serde(default)]
    pub max_depth: Option<u32>,
    /// Live processes allowed in a run's tree, its first process included.
    #[serde(default)]
    pub max_processes: Option<u32>,
    /// Allow raw, ICMP ("ping") and packet sockets, which reach any address
    /// without the connect hooks (refused under enforce otherwise).
    #[serde(default)]
    pub raw_sockets: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Audit,
    Enforce,
}

impl Mode {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Audit => "audit",
            Self::Enforce => "enforce",
        }
    }
}

/// An `exec.allow` entry: a path, or a path with a pinned sha256.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum ExecAllow {
    Path(String),
    Pinned { path: String, sha256: String },
}

impl ExecAllow {
    fn path(&self) -> &str {
        match self {
            Self::Path(p) | Self::Pinned { path: p, .. } => p,
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Path(p) => p.clone(),
            Self::Pinned { path, sha256 } => format!("{path} sha256:{sha256}"),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Exact files, directories (ending in `/`) or globs (with where they
    /// are in the file, for errors).
    #[serde(default)]
    pub allow: Vec<toml::Spanned<ExecAllow>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// `ADDR`, `CIDR` or `HOST`, each optionally `:PORT` or `:LOW-HIGH` (`[V6]:PORT` for IPv6).
    #[serde(default)]
    pub allow: Vec<toml::Spanned<String>>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct UnixConfig {
    /// Socket paths, globs over socket paths, or `@name` for abstract names.
    #[serde(default)]
    pub allow: Vec<toml::Spanned<String>>,
}

/// Why an `exec.allow` rule is refused (the message follows the rule in
/// the config refusal).
#[derive(Debug, thiserror::Error)]
pub enum ExecRuleError {
    #[error("must be an absolute path")]
    NotAbsolute,
    #[error("a sha256 can only be pinned on an exact file")]
    PinnedNotExact,
    #[error("{0}")]
    Glob(#[from] pathglob::PatternError),
    #[error(transparent)]
    Resolve(#[from] resolve::ResolveError),
}

/// The first right a policy has that another does not (see
/// [`Policy::within`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Wider {
    /// A rule, as written (`exec.allow …`).
    #[error("{0}")]
    Rule(String),
    #[error("max_depth {0:?}")]
    MaxDepth(Option<u32>),
    #[error("max_processes {0:?}")]
    MaxProcesses(Option<u32>),
    #[error("raw_sockets = true")]
    RawSockets,
    #[error("mode = \"audit\" under an enforce policy")]
    Audit,
}

/// A policy that cannot be loaded. The rule's own error is part of the
/// message (not a source), as the config refusal has always read.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("policy {policy:?}: exec.allow {rule:?}: {why}")]
    Exec {
        policy: String,
        rule: String,
        why: ExecRuleError,
        /// Where the rule is in the config text.
        span: Option<std::ops::Range<usize>>,
    },
    #[error("policy {policy:?}: connect.allow {rule:?}: {why}")]
    Connect {
        policy: String,
        rule: String,
        why: net::RuleError,
        span: Option<std::ops::Range<usize>>,
    },
    #[error("policy {policy:?}: unix.allow {rule:?}: {why}")]
    Unix {
        policy: String,
        rule: String,
        why: unix::RuleError,
        span: Option<std::ops::Range<usize>>,
    },
    #[error("policy {policy:?}: max_processes = 0 would stop every run; leave it out for no limit")]
    MaxProcessesZero { policy: String },
    #[error("{what} names policy {policy:?}, which the config does not define")]
    Unknown { what: String, policy: String },
}

impl PolicyError {
    /// Where in the config text the offending rule is, when known.
    #[must_use]
    pub fn span(&self) -> Option<std::ops::Range<usize>> {
        match self {
            Self::Exec { span, .. } | Self::Connect { span, .. } | Self::Unix { span, .. } => {
                span.clone()
            }
            Self::MaxProcessesZero { .. } | Self::Unknown { .. } => None,
        }
    }
}

/// What an exec rule resolves to.
#[derive(Debug, Clone)]
enum ExecTarget {
    /// A file, by identity; `stamp` is how it looked when last resolved.
    /// For a pinned file, `ctime` is its change time when it was hashed.
    File {
        id: Option<FileId>,
        stamp: Option<resolve::Stamp>,
        ctime: Option<resolve::Ctime>,
    },
    /// Everything under a directory, on the mount it was resolved on.
    Dir(resolve::Dir),
    /// The files a glob matched at the last resolution.
    Glob { glob: GlobMatcher, ids: Vec<FileId> },
    /// The directories a glob ending in `/` matched at the last resolution,
    /// each a directory rule.
    DirGlob(Vec<resolve::Dir>),
}

#[derive(Debug, Clone)]
struct ExecRule {
    allow: ExecAllow,
    target: ExecTarget,
}

impl ExecRule {
    /// Resolves an `exec.allow` entry (an error names what is wrong with it).
    fn resolve(allow: &ExecAllow) -> Result<Self, ExecRuleError> {
        let path = allow.path();
        if !path.starts_with('/') {
            return Err(ExecRuleError::NotAbsolute);
        }
        let target = if is_glob(path) {
            if matches!(allow, ExecAllow::Pinned { .. }) {
                return Err(ExecRuleError::PinnedNotExact);
            }
            // A glob ending in '/' names directories: everything under each.
            let glob = pathglob::matcher(path.trim_end_matches('/'))?;
            if path.ends_with('/') {
                ExecTarget::DirGlob(resolve::expand_dir_glob(path)?)
            } else {
                ExecTarget::Glob {
                    glob,
                    ids: resolve::expand_glob(path)?,
                }
            }
        } else if path.ends_with('/') {
            if matches!(allow, ExecAllow::Pinned { .. }) {
                return Err(ExecRuleError::PinnedNotExact);
            }
            ExecTarget::Dir(resolve::resolve_dir(path)?)
        } else {
            // Stamped before it is resolved: a change meanwhile shows at the next refresh.
            let stamp = resolve::Stamp::of(Path::new(path));
            match pinned(allow) {
                Some(sha256) => {
                    let hashed = resolve::resolve_pinned(path, sha256)?;
                    ExecTarget::File {
                        id: Some(hashed.id),
                        stamp,
                        ctime: Some(hashed.ctime),
                    }
                }
                None => ExecTarget::File {
                    id: Some(resolve::resolve_file(path)?),
                    stamp,
                    ctime: None,
                },
            }
        };
        Ok(Self {
            allow: allow.clone(),
            target,
        })
    }

    /// Resolves again; true when the identities changed. A file that is gone
    /// or no longer has its pinned sha256 allows nothing until it is back.
    fn refresh(&mut self) -> bool {
        let path = self.allow.path().to_owned();
        match &mut self.target {
            ExecTarget::File { id, stamp, ctime } => {
                let now = resolve::Stamp::of(Path::new(&path));
                let new = match pinned(&self.allow) {
                    // A pinned file is hashed again only when it changed,
                    // and by the hashing thread: the refresh runs on the
                    // event path every 2 s, and whoever writes the file
                    // decides how long hashing it takes.
                    Some(_) if now.is_some() && now == *stamp => return false,
                    Some(sha256) => match hasher::hashed(&path, sha256, now) {
                        None => return false,
                        Some(result) => result.map(|h| (h.id, Some(h.ctime))),
                    },
                    None => resolve::resolve_file(&path).map(|id| (id, None)),
                };
                *stamp = now;
                let new = match new {
                    Ok(new) => Some(new),
                    Err(why) => {
                        if id.is_some() {
                            tracing::warn!(rule = %path, %why, "exec.allow file no longer resolves; it allows nothing");
                        }
                        None
                    }
                };
                let changed = (*id, *ctime) != (new.map(|n| n.0), new.and_then(|n| n.1));
                *id = new.map(|n| n.0);
                *ctime = new.and_then(|n| n.1);
                changed
            }
            // A directory that no longer resolves keeps its last identity.
            ExecTarget::Dir(dir) => match resolve::resolve_dir(&path) {
                Ok(new) if new != *dir => {
                    *dir = new;
                    true
                }
                _ => false,
            },
            ExecTarget::Glob { ids, .. } => match resolve::expand_glob(&path) {
                Ok(new) if new != *ids => {
                    *ids = new;
                    true
                }
                _ => false,
            },
            ExecTarget::DirGlob(dirs) => match resolve::expand_dir_glob(&path) {
                Ok(new) if new != *dirs => {
                    *dirs = new;
                    true
                }
                _ => false,
            },
        }
    }
}

fn pinned(allow: &ExecAllow) -> Option<&str> {
    match allow {
        ExecAllow::Pinned { sha256, .. } => Some(sha256),
        ExecAllow::Path(_) => None,
    }
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub mode: Mode,
    /// Version of the policy set this policy was loaded in.
    pub version: u64,
    pub max_depth: Option<u32>,
    pub max_processes: Option<u32>,
    /// Raw, ICMP and packet sockets allowed.
    pub raw_sockets: bool,
    /// `sha256:<hex>` of the policy's content in canonical form (see
    /// [`content_hash`]): what run tokens and provenance name.
    pub content_hash: String,
    exec: Vec<ExecRule>,
    connect: Vec<ConnectRule>,
    unix: Vec<unix::UnixRule>,
}

pub use crate::event::{Decision, Verdict};

/// `sha256:<hex>` of a policy's content: the JSON object of its keys, in
/// this order, with the rules as written (`mode`, `exec`, `connect`,
/// `unix`, `max_depth`, `max_processes`, `raw_sockets`). The same table
/// always hashes the same, wherever it sits in the file.
#[must_use]
pub fn content_hash(c: &PolicyConfig) -> String {
    use sha2::Digest as _;
    let canonical = serde_json::json!([
        c.mode.as_str(),
        c.exec
            .allow
            .iter()
            .map(|a| a.get_ref().text())
            .collect::<Vec<_>>(),
        c.connect
            .allow
            .iter()
            .map(|a| a.get_ref().clone())
            .collect::<Vec<_>>(),
        c.unix
            .allow
            .iter()
            .map(|a| a.get_ref().clone())
            .collect::<Vec<_>>(),
        c.max_depth,
        c.max_processes,
        c.raw_sockets,
    ]);
    format!(
        "sha256:{}",
        hex::encode(sha2::Sha256::digest(canonical.to_string()))
    )
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// Rule text of a `max_processes` decision.
#[must_use]
pub fn max_processes_rule(n: u32) -> String {
    format!("max_processes {n}")
}

impl Policy {
    /// Loads a policy: exec rules are resolved to file identities and host
    /// names to addresses now.
    pub fn load(name: &str, c: &PolicyConfig) -> Result<Self, PolicyError> {
        let exec = c
            .exec
            .allow
            .iter()
            .map(|allow| {
                ExecRule::resolve(allow.get_ref()).map_err(|why| PolicyError::Exec {
                    policy: name.to_owned(),
                    rule: allow.get_ref().text(),
                    why,
                    span: Some(allow.span()),
                })
            })
            .collect::<Result<_, _>>()?;
        let mut connect: Vec<ConnectRule> = c
            .connect
            .allow
            .iter()
            .map(|rule| {
                net::parse(rule.get_ref()).map_err(|why| PolicyError::Connect {
                    policy: name.to_owned(),
                    rule: rule.get_ref().clone(),
                    why,
                    span: Some(rule.span()),
                })
            })
            .collect::<Result<_, _>>()?;
        for rule in &mut connect {
            rule.refresh();
        }
        let unix = c
            .unix
            .allow
            .iter()
            .map(|rule| {
                unix::UnixRule::parse(rule.get_ref()).map_err(|why| PolicyError::Unix {
                    policy: name.to_owned(),
                    rule: rule.get_ref().clone(),
                    why,
                    span: Some(rule.span()),
                })
            })
            .collect::<Result<_, _>>()?;
        if c.max_processes == Some(0) {
            return Err(PolicyError::MaxProcessesZero {
                policy: name.to_owned(),
            });
        }
        let policy = Self {
            name: name.to_owned(),
            mode: c.mode,
            version: 1,
            max_depth: c.max_depth,
            max_processes: c.max_processes,
            raw_sockets: c.raw_sockets,
            content_hash: content_hash(c),
            exec,
            connect,
            unix,
        };
        // The port ranges must fit the kernel's entries.
        net::fold(&policy.connect, 0).map_err(|why| PolicyError::Connect {
            policy: name.to_owned(),
            rule: "(all)".into(),
            why,
            span: c.connect.allow.first().map(toml::Spanned::span),
        })?;
        Ok(policy)
    }

    /// Resolves file rules and takes host names' latest addresses; true
    /// when anything changed.
    pub fn refresh(&mut self) -> bool {
        let mut changed = false;
        for r in &mut self.exec {
            changed |= r.refresh();
        }
        for r in &mut self.connect {
            changed |= r.refresh();
        }
        for r in &mut self.unix {
            changed |= r.refresh();
        }
        changed
    }

    /// The `unix.allow` rules, with their rule indices (after exec and connect).
    pub fn unix_rules(&self) -> impl Iterator<Item = (u32, &unix::UnixRule)> {
        let first = self.exec.len() + self.connect.len();
        self.unix
            .iter()
            .enumerate()
            .map(move |(i, r)| (u32::try_from(first + i).unwrap_or(u32::MAX), r))
    }

    /// Number of rules (exec then connect; what a decision's rule index counts).
    #[must_use]
    pub fn rule_count(&self) -> usize {
        self.exec.len() + self.connect.len() + self.unix.len()
    }

    /// The text of rule `index` as events name it, or of a special rule.
    #[must_use]
    pub fn rule_text(&self, index: u32) -> String {
        use sensor_common::policy::{
            RULE_LOADER, RULE_MAX_PROCESSES, RULE_NO_MATCH, RULE_SENSOR_SOCKET, RULE_UNIX_IDENTITY,
        };
        let i = index as usize;
        let connects = self.exec.len() + self.connect.len();
        match index {
            RULE_MAX_PROCESSES => max_processes_rule(self.max_processes.unwrap_or(0)),
            RULE_LOADER => "exec.allow (dynamic loader run directly: needs an exact rule)".into(),
            RULE_NO_MATCH => "(no rule matches)".into(),
            RULE_UNIX_IDENTITY => {
                "unix.allow (the socket reached is not the one the allowed address names)".into()
            }
            RULE_SENSOR_SOCKET => "unix.allow (the sensor's control socket)".into(),
            sensor_common::policy::RULE_TAMPER => {
                "tamper (a process outside the run, or the sensor)".into()
            }
            sensor_common::policy::RULE_RAW_SOCKET => {
                "raw_sockets (a raw, ICMP or packet socket reaches any address)".into()
            }
            _ if i < self.exec.len() => format!("exec.allow {}", self.exec[i].allow.text()),
            _ if i < connects => {
                format!("connect.allow {}", self.connect[i - self.exec.len()].text)
            }
            _ if i < self.rule_count() => format!("unix.allow {}", self.unix[i - connects].text),
            _ => format!("(rule {index})"),
        }
    }

    fn verdict(&self, allowed_by: Option<String>, list: &str) -> Verdict {
        match allowed_by {
            Some(rule) => Verdict {
                name: self.name.clone(),
                verdict: Decision::Allow,
                rule,
                enforced: false,
                version: self.version,
            },
            None => Verdict {
                name: self.name.clone(),
                verdict: Decision::Deny,
                rule: format!("{list} (no rule matches)"),
                enforced: false,
                version: self.version,
            },
        }
    }

    /// The verdict on executing the file at kernel-resolved `exe` with
    /// identity (`dev`, `ino`) (user-space `st_dev` encoding), reached on
    /// mount `mnt_id`, for an exec the kernel did not decide on.
    ///
    /// As in the kernel, a directory rule allows only a file on the mount
    /// the directory was resolved on (so not in another mount namespace, nor
    /// on anything mounted below the directory), but below the directory by
    /// path, where the kernel walks the file's parent directories: a
    /// directory renamed since it was resolved differs (the kernel follows
    /// it, this check does not). A file glob also matches by path.
    #[must_use]
    pub fn check_exec(&self, exe: &str, dev: u64, ino: u64, mnt_id: Option<u32>) -> Verdict {
        let file = FileId { dev, ino };
        let in_dir = |d: &resolve::Dir| mnt_id == Some(d.mnt_id) && exe.starts_with(&d.path);
        let hit = self.exec.iter().find_map(|r| {
            let hit = match &r.target {
                ExecTarget::File { id, .. } => ino != 0 && *id == Some(file),
                ExecTarget::Dir(dir) => in_dir(dir),
                ExecTarget::DirGlob(dirs) => dirs.iter().any(in_dir),
                ExecTarget::Glob { glob, ids } => ids.contains(&file) || glob.is_match(exe),
            };
            hit.then(|| r.allow.text())
        });
        self.verdict(hit.map(|r| format!("exec.allow {r}")), "exec.allow")
    }

    /// The `max_depth` decision on a sub-run at `depth` (root = 0) of a run
    /// under this policy: a denial (not yet enforced: the caller says) when
    /// it nests deeper than allowed, else none. The daemon decides with it on
    /// a `sensor launch` and on a matcher's sub-run; `sensor policy test`
    /// on stored sub-runs.
    #[must_use]
    pub fn check_depth(&self, depth: u32) -> Option<Verdict> {
        let max = self.max_depth.filter(|m| depth > *m)?;
        Some(Verdict {
            name: self.name.clone(),
            verdict: Decision::Deny,
            rule: format!("max_depth {max}"),
            enforced: false,
            version: self.version,
        })
    }

    /// The verdict on connecting to `ip:port`.
    #[must_use]
    pub fn check_connect(&self, ip: IpAddr, port: u16) -> Verdict {
        let hit = self
            .connect
            .iter()
            .find(|r| r.allows(ip, port))
            .map(|r| format!("connect.allow {}", r.text));
        self.verdict(hit, "connect.allow")
    }

    /// The rules as written, `exec.allow …` and `connect.allow …`.
    fn rule_texts(&self) -> Vec<String> {
        (0..self.rule_count())
            .map(|i| self.rule_text(u32::try_from(i).unwrap_or(u32::MAX)))
            .collect()
    }

    /// Checks that `self` allows nothing `parent` does not: every rule of
    /// `self` is also a rule of `parent`, and its limits are no looser (a
    /// conservative test: a sub-agent never gains rights its parent lacks).
    /// Returns the first extra right.
    pub fn within(&self, parent: &Self) -> Result<(), Wider> {
        let allowed = parent.rule_texts();
        if let Some(extra) = self.rule_texts().into_iter().find(|r| !allowed.contains(r)) {
            return Err(Wider::Rule(extra));
        }
        let looser = |mine: Option<u32>, theirs: Option<u32>| match (mine, theirs) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(a), Some(b)) => a > b,
        };
        if looser(self.max_depth, parent.max_depth) {
            return Err(Wider::MaxDepth(self.max_depth));
        }
        if looser(self.max_processes, parent.max_processes) {
            return Err(Wider::MaxProcesses(self.max_processes));
        }
        if self.raw_sockets && !parent.raw_sockets {
            return Err(Wider::RawSockets);
        }
        if self.mode == Mode::Audit && parent.mode == Mode::Enforce {
            return Err(Wider::Audit);
        }
        Ok(())
    }
}

/// Every policy of the config, by name.
#[derive(Debug, Clone, Default)]
pub struct Policies {
    by_name: BTreeMap<String, Policy>,
    version: u64,
}

impl Policies {
    /// The same policies, numbered as version `version`.
    #[must_use]
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        for p in self.by_name.values_mut() {
            p.version = version;
        }
        self
    }

    /// The version of this policy set.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Names of the policies.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    /// The policies.
    pub fn iter(&self) -> impl Iterator<Item = &Policy> {
        self.by_name.values()
    }

    /// Whether any policy is in enforce mode.
    #[must_use]
    pub fn enforcing(&self) -> bool {
        self.by_name.values().any(|p| p.mode == Mode::Enforce)
    }

    /// A set of already loaded policies.
    #[must_use]
    pub fn of(policies: Vec<Policy>) -> Self {
        Self {
            by_name: policies.into_iter().map(|p| (p.name.clone(), p)).collect(),
            version: 1,
        }
    }

    pub fn load(configs: &BTreeMap<String, PolicyConfig>) -> Result<Self, PolicyError> {
        let by_name = configs
            .iter()
            .map(|(name, c)| Policy::load(name, c).map(|p| (name.clone(), p)))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            by_name,
            version: 1,
        })
    }

    /// Resolves every policy's rules again; the names of those that changed.
    pub fn refresh(&mut self) -> Vec<String> {
        self.by_name
            .iter_mut()
            .filter_map(|(name, p)| p.refresh().then(|| name.clone()))
            .collect()
    }

    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.by_name.get(name)
    }

    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

/// Policies for unit tests elsewhere in the crate.
#[cfg(test)]
pub mod testing {
    use super::{ConnectConfig, ExecAllow, ExecConfig, Mode, Policy, PolicyConfig};

    /// Policy `name` allowing `exec` (paths) and `connect` (rules).
    #[must_use]
    pub fn policy(name: &str, mode: Mode, exec: &[&str], connect: &[&str]) -> Policy {
        Policy::load(
            name,
            &PolicyConfig {
                mode,
                exec: ExecConfig {
                    allow: exec
                        .iter()
                        .map(|s| toml::Spanned::new(0..0, ExecAllow::Path((*s).to_owned())))
                        .collect(),
                },
                connect: ConnectConfig {
                    allow: connect
                        .iter()
                        .map(|s| toml::Spanned::new(0..0, (*s).to_owned()))
                        .collect(),
                },
                ..PolicyConfig::default()
            },
        )
        .unwrap()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt as _;

    use super::*;

    fn policy(exec: &[&str], connect: &[&str]) -> Policy {
        Policy::load(
            "p",
            &PolicyConfig {
                mode: Mode::Audit,
                exec: ExecConfig {
                    allow: exec
                        .iter()
                        .map(|s| toml::Spanned::new(0..0, ExecAllow::Path((*s).to_owned())))
                        .collect(),
                },
                connect: ConnectConfig {
                    allow: connect
                        .iter()
                        .map(|s| toml::Spanned::new(0..0, (*s).to_owned()))
                        .collect(),
                },
                ..PolicyConfig::default()
            },
        )
        .unwrap()
    }

    #[test]
    fn exec_by_identity_prefix_and_glob() {
        let p = policy(&["/usr/bin/true", "/usr/lib/", "/opt/*/bin/tool"], &[]);
        let meta = std::fs::metadata("/usr/bin/true").unwrap();
        let v = p.check_exec("/usr/bin/true", meta.dev(), meta.ino(), None);
        assert_eq!(
            (v.verdict, v.rule.as_str()),
            (Decision::Allow, "exec.allow /usr/bin/true")
        );
        // Another file under another name: denied (identity, not name).
        let other = std::fs::metadata("/usr/bin/env").unwrap();
        assert!(
            p.check_exec("/usr/bin/true", other.dev(), other.ino(), None)
                .is_deny()
        );
        // Below the directory, on the mount it was resolved on.
        let lib = Some(resolve::resolve_dir("/usr/lib/").unwrap().mnt_id);
        let v = p.check_exec("/usr/lib/x/y", 1, 2, lib);
        assert_eq!(
            (v.verdict, v.rule.as_str()),
            (Decision::Allow, "exec.allow /usr/lib/")
        );
        // A path that only shares a string prefix with an allowed directory.
        assert!(p.check_exec("/usr/lib64/x", 1, 2, lib).is_deny());
        assert!(!p.check_exec("/opt/a/bin/tool", 1, 2, None).is_deny());
        let g = policy(&["/usr/li*/"], &[]);
        assert!(!g.check_exec("/usr/lib/x/y", 1, 2, lib).is_deny());
        assert!(g.check_exec("/usr/bin/y", 1, 2, lib).is_deny());
        assert_eq!(
            p.check_exec("/opt/a/bin/toolx", 1, 2, None).rule,
            "exec.allow (no rule matches)"
        );
        // By path, a glob names what its expansion names: `*` stays within
        // one directory, and `{a,b}` is plain text, so a file put deeper
        // (or named like an alternative) is not allowed where the kernel,
        // holding the expansion's files, would refuse it.
        assert!(p.check_exec("/opt/a/b/bin/tool", 1, 2, None).is_deny());
        assert!(p.check_exec("/opt/a/../x/bin/tool", 1, 2, None).is_deny());
        let braces = policy(&["/opt/{a,b}/t*"], &[]);
        assert!(braces.check_exec("/opt/a/tool", 1, 2, None).is_deny());
        assert!(!braces.check_exec("/opt/{a,b}/tool", 1, 2, None).is_deny());
    }

    /// As in the kernel, a directory rule allows a file only on the mount
    /// the directory was resolved on: not on a mount below it, not on a
    /// mount namespace's copy of its mount, not when the mount is unknown.
    #[test]
    fn a_directory_rule_allows_only_files_on_its_own_mount() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        let rule = format!("{}/", dir.path().display());
        let p = policy(&[rule.as_str()], &[]);
        let g = policy(&[format!("{}*/", dir.path().display()).as_str()], &[]);
        let own = resolve::resolve_dir(&rule).unwrap().mnt_id;
        let file = sub.join("tool").display().to_string();
        for p in [&p, &g] {
            assert!(!p.check_exec(&file, 1, 2, Some(own)).is_deny());
            assert!(p.check_exec(&file, 1, 2, Some(own + 1)).is_deny());
            assert!(p.check_exec(&file, 1, 2, None).is_deny());
        }
    }

    #[test]
    fn connect_cidrs_and_ports() {
        let p = policy(
            &[],
            &[
                "127.0.0.0/8",
                "[::1]",
                "10.0.0.0/8:443",
                "192.0.2.1:8000-8100",
            ],
        );
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!p.check_connect(ip("127.1.2.3"), 9).is_deny());
        assert!(!p.check_connect(ip("::1"), 22).is_deny());
        assert!(
            !p.check_connect(ip("::ffff:127.0.0.1"), 22).is_deny(),
            "mapped v4"
        );
        assert!(!p.check_connect(ip("10.9.9.9"), 443).is_deny());
        assert!(p.check_connect(ip("10.9.9.9"), 80).is_deny());
        assert!(!p.check_connect(ip("192.0.2.1"), 8050).is_deny());
        assert!(p.check_connect(ip("192.0.2.1"), 8101).is_deny());
        assert!(p.check_connect(ip("203.0.113.7"), 443).is_deny());
    }

    #[test]
    fn bad_rules_are_refused() {
        let load = |exec: &str, connect: &str, mode| {
            Policy::load(
                "p",
                &PolicyConfig {
                    mode,
                    exec: ExecConfig {
                        allow: if exec.is_empty() {
                            vec![]
                        } else {
                            vec![toml::Spanned::new(0..0, ExecAllow::Path(exec.into()))]
                        },
                    },
                    connect: ConnectConfig {
                        allow: if connect.is_empty() {
                            vec![]
                        } else {
                            vec![toml::Spanned::new(0..0, connect.into())]
                        },
                    },
                    ..PolicyConfig::default()
                },
            )
        };
        assert!(matches!(
            load("relative", "", Mode::Audit),
            Err(PolicyError::Exec { .. })
        ));
        assert!(matches!(
            load("/nonexistent/bin", "", Mode::Audit),
            Err(PolicyError::Exec { .. })
        ));
        assert!(matches!(
            load("", "10.0.0.0/33", Mode::Audit),
            Err(PolicyError::Connect { .. })
        ));
        assert!(matches!(
            load("", "not_a_host:443", Mode::Audit),
            Err(PolicyError::Connect { .. })
        ));
        assert!(matches!(
            load("", "1.2.3.4:90-80", Mode::Audit),
            Err(PolicyError::Connect { .. })
        ));
        assert!(load("/usr/bin/true", "127.0.0.1:80", Mode::Enforce).is_ok());
    }

    #[test]
    fn a_pinned_file_is_hashed_again_only_when_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let tool = dir.path().join("tool");
        std::fs::write(&tool, b"v1").unwrap();
        let (sum, _) = resolve::sha256_file(&tool).unwrap();
        let mut p = Policy::load(
            "p",
            &PolicyConfig {
                exec: ExecConfig {
                    allow: vec![toml::Spanned::new(
                        0..0,
                        ExecAllow::Pinned {
                            path: tool.display().to_string(),
                            sha256: sum,
                        },
                    )],
                },
                ..PolicyConfig::default()
            },
        )
        .unwrap();
        let meta = std::fs::metadata(&tool).unwrap();
        let tool_str = tool.display().to_string();
        assert!(
            !p.check_exec(&tool_str, meta.dev(), meta.ino(), None)
                .is_deny()
        );
        assert!(!p.refresh(), "unchanged: nothing to do");
        // Same inode, other bytes: the pin no longer holds. The hashing
        // thread answers on a later refresh; until then nothing changes.
        std::fs::write(&tool, b"v2").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !p.refresh() {
            assert!(
                std::time::Instant::now() < deadline,
                "the changed file was never hashed again"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert!(
            p.check_exec(&tool_str, meta.dev(), meta.ino(), None)
                .is_deny()
        );
    }

    #[test]
    fn a_narrower_policy_is_within_its_parent() {
        let parent = policy(&["/usr/bin/true", "/usr/lib/"], &["127.0.0.0/8"]);
        assert!(policy(&["/usr/bin/true"], &[]).within(&parent).is_ok());
        assert!(policy(&[], &["127.0.0.0/8"]).within(&parent).is_ok());
        assert_eq!(
            policy(&["/usr/bin/env"], &[]).within(&parent),
            Err(Wider::Rule("exec.allow /usr/bin/env".to_owned()))
        );
        assert!(policy(&[], &["0.0.0.0/0"]).within(&parent).is_err());
    }
}

//! Allow-list policies: which files a run may execute and where it may
//! connect. This is the verdict side (audit): every exec and connect of a run
//! with a policy is checked and carries the verdict and the rule that
//! decided; a denial also becomes a `policy.violation` event.
//!
//! Exec rules decide on the file the kernel executed, never on the string the
//! caller passed: an exact path is resolved to its device and inode when the
//! policy loads, and directory and glob rules are matched against the path the
//! kernel resolved (symlinks, `..` and `/proc/self/root` already gone).
//! Enforcement in the kernel is not built yet; an `enforce` policy is refused
//! at start-up instead of silently degrading to audit.

use std::{collections::BTreeMap, net::IpAddr, os::unix::fs::MetadataExt as _};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

/// One `[policy.NAME]` table.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `audit` reports; `enforce` also blocks (not available in this build).
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub exec: ExecConfig,
    #[serde(default)]
    pub connect: ConnectConfig,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Audit,
    Enforce,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ExecConfig {
    /// Exact files, directories (ending in `/`) or globs.
    #[serde(default)]
    pub allow: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ConnectConfig {
    /// `ADDR`, `CIDR`, each optionally `:PORT` or `:LOW-HIGH` (`[V6]:PORT` for IPv6).
    #[serde(default)]
    pub allow: Vec<String>,
}

/// A policy that cannot be loaded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PolicyError {
    #[error("policy {policy:?}: exec.allow {rule:?}: {why}")]
    Exec {
        policy: String,
        rule: String,
        why: String,
    },
    #[error("policy {policy:?}: connect.allow {rule:?}: {why}")]
    Connect {
        policy: String,
        rule: String,
        why: String,
    },
    #[error(
        "policy {policy:?} is mode = \"enforce\", but this sensor cannot enforce in the kernel yet; \
         use mode = \"audit\" (refusing rather than silently not enforcing)"
    )]
    EnforceUnavailable { policy: String },
    #[error("{what} names policy {policy:?}, which the config does not define")]
    Unknown { what: String, policy: String },
}

#[derive(Debug, Clone)]
enum ExecRule {
    /// A file, by identity; `path` is how the config named it.
    File {
        path: String,
        dev: u64,
        ino: u64,
    },
    /// Everything under a directory (its resolved path, ending in `/`).
    Dir {
        path: String,
        resolved: String,
    },
    Glob {
        pattern: String,
        glob: GlobMatcher,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct NetRule {
    text: String,
    net: IpAddr,
    prefix: u8,
    ports: Option<(u16, u16)>,
}

/// A loaded policy.
#[derive(Debug, Clone)]
pub struct Policy {
    pub name: String,
    pub mode: Mode,
    /// Version of the policy set this policy was loaded in.
    pub version: u64,
    exec: Vec<ExecRule>,
    connect: Vec<NetRule>,
}

/// What a policy says about one action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub name: String,
    /// `allow` or `deny`.
    pub verdict: &'static str,
    /// The rule that allowed, or the list that had no match.
    pub rule: String,
    /// Whether the kernel blocked it (never, in audit mode).
    pub enforced: bool,
    /// Version of the policy set that decided (1 at start-up, +1 per reload).
    pub version: u64,
}

impl Verdict {
    #[must_use]
    pub fn is_deny(&self) -> bool {
        self.verdict == "deny"
    }
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

impl Policy {
    /// Loads a policy: exact paths are resolved to their file identity now.
    pub fn load(name: &str, c: &PolicyConfig) -> Result<Self, PolicyError> {
        if c.mode == Mode::Enforce {
            return Err(PolicyError::EnforceUnavailable {
                policy: name.to_owned(),
            });
        }
        let exec_err = |rule: &str, why: String| PolicyError::Exec {
            policy: name.to_owned(),
            rule: rule.to_owned(),
            why,
        };
        let mut exec = Vec::new();
        for rule in &c.exec.allow {
            if !rule.starts_with('/') {
                return Err(exec_err(rule, "must be an absolute path".into()));
            }
            if is_glob(rule) {
                let glob = Glob::new(rule).map_err(|e| exec_err(rule, e.to_string()))?;
                exec.push(ExecRule::Glob {
                    pattern: rule.clone(),
                    glob: glob.compile_matcher(),
                });
            } else if rule.ends_with('/') {
                let resolved =
                    std::fs::canonicalize(rule).map_err(|e| exec_err(rule, e.to_string()))?;
                let mut resolved = resolved.to_string_lossy().into_owned();
                if !resolved.ends_with('/') {
                    resolved.push('/');
                }
                exec.push(ExecRule::Dir {
                    path: rule.clone(),
                    resolved,
                });
            } else {
                let meta = std::fs::metadata(rule).map_err(|e| exec_err(rule, e.to_string()))?;
                exec.push(ExecRule::File {
                    path: rule.clone(),
                    dev: meta.dev(),
                    ino: meta.ino(),
                });
            }
        }
        let connect = c
            .connect
            .allow
            .iter()
            .map(|rule| {
                parse_net(rule).map_err(|why| PolicyError::Connect {
                    policy: name.to_owned(),
                    rule: rule.clone(),
                    why,
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self {
            name: name.to_owned(),
            mode: c.mode,
            version: 1,
            exec,
            connect,
        })
    }

    fn verdict(&self, allowed_by: Option<String>, list: &str) -> Verdict {
        match allowed_by {
            Some(rule) => Verdict {
                name: self.name.clone(),
                verdict: "allow",
                rule,
                enforced: false,
                version: self.version,
            },
            None => Verdict {
                name: self.name.clone(),
                verdict: "deny",
                rule: format!("{list} (no rule matches)"),
                enforced: false,
                version: self.version,
            },
        }
    }

    /// The verdict on executing the file at kernel-resolved `exe` with
    /// identity (`dev`, `ino`) (user-space `st_dev` encoding).
    #[must_use]
    pub fn check_exec(&self, exe: &str, dev: u64, ino: u64) -> Verdict {
        let hit = self.exec.iter().find_map(|r| match r {
            ExecRule::File {
                path,
                dev: d,
                ino: i,
            } => (*d == dev && *i == ino && ino != 0).then(|| path.clone()),
            ExecRule::Dir { path, resolved } => {
                exe.starts_with(resolved.as_str()).then(|| path.clone())
            }
            ExecRule::Glob { pattern, glob } => glob.is_match(exe).then(|| pattern.clone()),
        });
        self.verdict(hit.map(|r| format!("exec.allow {r}")), "exec.allow")
    }

    /// The rules as written, `exec.allow …` and `connect.allow …`.
    fn rule_texts(&self) -> Vec<String> {
        self.exec
            .iter()
            .map(|r| match r {
                ExecRule::File { path, .. } | ExecRule::Dir { path, .. } => {
                    format!("exec.allow {path}")
                }
                ExecRule::Glob { pattern, .. } => format!("exec.allow {pattern}"),
            })
            .chain(
                self.connect
                    .iter()
                    .map(|r| format!("connect.allow {}", r.text)),
            )
            .collect()
    }

    /// Checks that `self` allows nothing `parent` does not: every rule of
    /// `self` is also a rule of `parent` (a conservative test: a sub-agent
    /// never gains rights its parent lacks). Returns the first extra rule.
    pub fn within(&self, parent: &Self) -> Result<(), String> {
        let allowed = parent.rule_texts();
        match self.rule_texts().into_iter().find(|r| !allowed.contains(r)) {
            None => Ok(()),
            Some(extra) => Err(extra),
        }
    }

    /// The verdict on connecting to `ip:port`.
    #[must_use]
    pub fn check_connect(&self, ip: IpAddr, port: u16) -> Verdict {
        let hit = self
            .connect
            .iter()
            .find(|r| {
                contains(r.net, r.prefix, ip)
                    && r.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
            })
            .map(|r| format!("connect.allow {}", r.text));
        self.verdict(hit, "connect.allow")
    }
}

/// `ADDR[/LEN][:PORT[-PORT]]`, `[V6][/LEN][:PORT]`.
fn parse_net(rule: &str) -> Result<NetRule, String> {
    let (addr, ports) = if let Some(rest) = rule.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or("missing ']'")?;
        let ports = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(format!("unexpected {after:?} after ']'")),
        };
        (inside.to_owned(), ports)
    } else if rule.matches(':').count() == 1 {
        let (a, p) = rule.split_once(':').ok_or("bad address")?;
        (a.to_owned(), Some(p))
    } else {
        (rule.to_owned(), None)
    };
    let (ip, prefix) = match addr.split_once('/') {
        Some((ip, len)) => (ip.to_owned(), Some(len)),
        None => (addr, None),
    };
    let net: IpAddr = ip
        .parse()
        .map_err(|_| format!("{ip:?} is not an IP address (host names are not supported yet)"))?;
    let max = if net.is_ipv4() { 32 } else { 128 };
    let prefix: u8 = match prefix {
        Some(len) => len
            .parse()
            .ok()
            .filter(|l| *l <= max)
            .ok_or(format!("bad prefix length {len:?}"))?,
        None => max,
    };
    let ports = match ports {
        None => None,
        Some(p) => {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            let lo: u16 = lo.parse().map_err(|_| format!("bad port {lo:?}"))?;
            let hi: u16 = hi.parse().map_err(|_| format!("bad port {hi:?}"))?;
            if lo > hi {
                return Err(format!("port range {lo}-{hi} is empty"));
            }
            Some((lo, hi))
        }
    };
    Ok(NetRule {
        text: rule.to_owned(),
        net,
        prefix,
        ports,
    })
}

fn contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    // An IPv4-mapped IPv6 destination is checked as IPv4.
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(a)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix))
            };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(a)) => {
            let mask = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix))
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
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

    #[must_use]
    pub fn get(&self, name: &str) -> Option<&Policy> {
        self.by_name.get(name)
    }

    #[must_use]
    pub fn contains(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }
}

/// The kernel's `dev_t` (major << 20 | minor) as `st_dev` (glibc's encoding).
#[must_use]
pub fn kernel_dev_to_st_dev(dev: u32) -> u64 {
    let (major, minor) = (u64::from(dev >> 20), u64::from(dev & 0xf_ffff));
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(exec: &[&str], connect: &[&str]) -> Policy {
        Policy::load(
            "p",
            &PolicyConfig {
                mode: Mode::Audit,
                exec: ExecConfig {
                    allow: exec.iter().map(|s| (*s).to_owned()).collect(),
                },
                connect: ConnectConfig {
                    allow: connect.iter().map(|s| (*s).to_owned()).collect(),
                },
            },
        )
        .unwrap()
    }

    #[test]
    fn exec_by_identity_prefix_and_glob() {
        let p = policy(&["/usr/bin/true", "/usr/lib/", "/opt/*/bin/tool"], &[]);
        let meta = std::fs::metadata("/usr/bin/true").unwrap();
        let v = p.check_exec("/usr/bin/true", meta.dev(), meta.ino());
        assert_eq!(
            (v.verdict, v.rule.as_str()),
            ("allow", "exec.allow /usr/bin/true")
        );
        // Another file under another name: denied (identity, not name).
        let other = std::fs::metadata("/usr/bin/env").unwrap();
        assert!(
            p.check_exec("/usr/bin/true", other.dev(), other.ino())
                .is_deny()
        );
        assert!(!p.check_exec("/usr/lib/x/y", 1, 2).is_deny());
        // A path that only shares a string prefix with an allowed directory.
        assert!(p.check_exec("/usr/lib64/x", 1, 2).is_deny());
        assert!(!p.check_exec("/opt/a/bin/tool", 1, 2).is_deny());
        assert_eq!(
            p.check_exec("/opt/a/bin/toolx", 1, 2).rule,
            "exec.allow (no rule matches)"
        );
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
    fn bad_rules_and_enforce_are_refused() {
        let load = |exec: &str, connect: &str, mode| {
            Policy::load(
                "p",
                &PolicyConfig {
                    mode,
                    exec: ExecConfig {
                        allow: if exec.is_empty() {
                            vec![]
                        } else {
                            vec![exec.into()]
                        },
                    },
                    connect: ConnectConfig {
                        allow: if connect.is_empty() {
                            vec![]
                        } else {
                            vec![connect.into()]
                        },
                    },
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
            load("", "api.github.com:443", Mode::Audit),
            Err(PolicyError::Connect { .. })
        ));
        assert!(matches!(
            load("", "1.2.3.4:90-80", Mode::Audit),
            Err(PolicyError::Connect { .. })
        ));
        assert!(matches!(
            load("", "", Mode::Enforce),
            Err(PolicyError::EnforceUnavailable { .. })
        ));
    }

    #[test]
    fn a_narrower_policy_is_within_its_parent() {
        let parent = policy(&["/usr/bin/true", "/usr/lib/"], &["127.0.0.0/8"]);
        assert!(policy(&["/usr/bin/true"], &[]).within(&parent).is_ok());
        assert!(policy(&[], &["127.0.0.0/8"]).within(&parent).is_ok());
        assert_eq!(
            policy(&["/usr/bin/env"], &[]).within(&parent),
            Err("exec.allow /usr/bin/env".to_owned())
        );
        assert!(policy(&[], &["0.0.0.0/0"]).within(&parent).is_err());
    }

    #[test]
    fn kernel_dev_matches_stat() {
        let meta = std::fs::metadata("/usr/bin/true").unwrap();
        // st_dev → kernel encoding and back.
        let major = ((meta.dev() >> 8) & 0xfff) as u32 | (((meta.dev() >> 32) & !0xfff) as u32);
        let minor = (meta.dev() & 0xff) as u32 | (((meta.dev() >> 12) & !0xff) as u32);
        assert_eq!(kernel_dev_to_st_dev((major << 20) | minor), meta.dev());
    }
}

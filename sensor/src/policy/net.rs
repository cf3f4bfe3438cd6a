//! `connect.allow` rules: addresses, CIDRs and host names, each with an
//! optional port or port range; and their folding into the prefix entries the
//! kernel's longest-prefix-match tries hold.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, ToSocketAddrs as _},
    sync::{Mutex, OnceLock},
    time::{Duration, Instant},
};

use sensor_common::policy::{NET_PORT_RANGES, NetRule};

/// How long a host name's addresses are kept before it is resolved again.
///
/// The system resolver (getaddrinfo, which also reads /etc/hosts) does not
/// give the records' TTL, so this caps it: an address that left the name's
/// records is dropped within this time (plus the 2 s refresh), a new one added.
pub const HOST_TTL: Duration = Duration::from_secs(60);
/// How soon a name that did not resolve is tried again.
pub const HOST_RETRY: Duration = Duration::from_secs(10);

/// What a rule names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address with a prefix length (a plain address is a full-length prefix).
    Cidr { net: IpAddr, prefix: u8 },
    /// A host name and the addresses it resolved to last.
    Host { name: String, addrs: Vec<IpAddr> },
}

/// One `connect.allow` rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRule {
    /// As written in the policy.
    pub text: String,
    pub target: Target,
    /// Allowed ports, inclusive; `None` for any.
    pub ports: Option<(u16, u16)>,
}

/// Why a `connect.allow` rule is refused (the message follows the rule in
/// the config refusal).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("missing ']'")]
    MissingBracket,
    #[error("unexpected {0:?} after ']'")]
    AfterBracket(String),
    #[error("bad address")]
    BadAddress,
    #[error("bad port {0:?}")]
    BadPort(String),
    #[error("port range {0}-{1} is empty")]
    EmptyRange(u16, u16),
    #[error("bad prefix length {0:?}")]
    BadPrefix(String),
    #[error("{0:?} is neither an IP address, a CIDR, nor a host name")]
    NotAnAddress(String),
    #[error(
        "{net}/{prefix} is covered by more than {NET_PORT_RANGES} port ranges; merge some rules"
    )]
    TooManyRanges { net: IpAddr, prefix: u8 },
}

/// `ADDR[/LEN][:PORT[-PORT]]`, `[V6][/LEN][:PORT]`, `HOST[:PORT[-PORT]]`.
pub fn parse(rule: &str) -> Result<ConnectRule, RuleError> {
    let (addr, ports) = if let Some(rest) = rule.strip_prefix('[') {
        let (inside, after) = rest.split_once(']').ok_or(RuleError::MissingBracket)?;
        let ports = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(RuleError::AfterBracket(after.to_owned())),
        };
        (inside.to_owned(), ports)
    } else if rule.matches(':').count() == 1 {
        let (a, p) = rule.split_once(':').ok_or(RuleError::BadAddress)?;
        (a.to_owned(), Some(p))
    } else {
        (rule.to_owned(), None)
    };
    let ports = match ports {
        None => None,
        Some(p) => {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            let lo: u16 = lo.parse().map_err(|_| RuleError::BadPort(lo.to_owned()))?;
            let hi: u16 = hi.parse().map_err(|_| RuleError::BadPort(hi.to_owned()))?;
            if lo > hi {
                return Err(RuleError::EmptyRange(lo, hi));
            }
            Some((lo, hi))
        }
    };
    let (ip, prefix) = match addr.split_once('/') {
        Some((ip, len)) => (ip.to_owned(), Some(len)),
        None => (addr, None),
    };
    let target = match ip.parse::<IpAddr>() {
        Ok(net) => {
            let max = if net.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = match prefix {
                Some(len) => len
                    .parse()
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| RuleError::BadPrefix(len.to_owned()))?,
                None => max,
            };
            Target::Cidr { net, prefix }
        }
        Err(_) if prefix.is_none() && is_host_name(&ip) => Target::Host {
            name: ip.to_ascii_lowercase(),
            addrs: Vec::new(),
        },
        Err(_) => return Err(RuleError::NotAnAddress(ip)),
    };
    Ok(ConnectRule {
        text: rule.to_owned(),
        target,
        ports,
    })
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens.
fn is_host_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
        // All-numeric dotted names are malformed addresses, not names.
        && !s.split('.').all(|l| l.bytes().all(|b| b.is_ascii_digit()))
}

/// Resolves `name` with the system resolver (blocking).
pub fn resolve_host(name: &str) -> std::io::Result<Vec<IpAddr>> {
    let mut addrs: Vec<IpAddr> = (name, 0).to_socket_addrs()?.map(|a| a.ip()).collect();
    addrs.sort_unstable();
    addrs.dedup();
    Ok(addrs)
}

/// Host names and their last answers. A background thread resolves each
/// name when it is due, so a slow resolver never stalls the event path;
/// rules only read the last answer.
struct HostCache {
    entries: Mutex<HashMap<String, Answer>>,
}

struct Answer {
    addrs: Option<Vec<IpAddr>>,
    due: Instant,
}

fn cache() -> &'static HostCache {
    static CACHE: OnceLock<HostCache> = OnceLock::new();
    CACHE.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("sensor-dns".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(Duration::from_secs(1));
                    let now = Instant::now();
                    let due: Vec<String> = cache()
                        .entries
                        .lock()
                        .map(|m| m.iter().filter(|(_, a)| a.due <= now).map(|(n, _)| n.clone()).collect())
                        .unwrap_or_default();
                    for name in due {
                        let answer = lookup_now(&name);
                        if let Ok(mut m) = cache().entries.lock() {
                            m.insert(name, answer);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the host name resolver thread; names resolve at load only");
        }
        HostCache {
            entries: Mutex::new(HashMap::new()),
        }
    })
}

fn lookup_now(name: &str) -> Answer {
    match resolve_host(name) {
        Ok(addrs) => Answer {
            addrs: Some(addrs),
            due: Instant::now() + HOST_TTL,
        },
        Err(e) => {
            tracing::warn!(host = %name, error = %e, "connect.allow host does not resolve; it allows nothing until it does");
            Answer {
                addrs: None,
                due: Instant::now() + HOST_RETRY,
            }
        }
    }
}

impl ConnectRule {
    /// Takes the latest answer for a host rule (resolving it now, blocking,
    /// the first time a name is seen: at load); true when its addresses changed.
    pub fn refresh(&mut self) -> bool {
        let Target::Host { name, addrs, .. } = &mut self.target else {
            return false;
        };
        let cached = cache()
            .entries
            .lock()
            .ok()
            .and_then(|m| m.get(name.as_str()).map(|a| a.addrs.clone()));
        let latest = match cached {
            Some(a) => a,
            None => {
                let answer = lookup_now(name);
                let a = answer.addrs.clone();
                if let Ok(mut m) = cache().entries.lock() {
                    m.insert(name.clone(), answer);
                }
                a
            }
        };
        let Some(latest) = latest else {
            return false;
        };
        if latest == *addrs {
            return false;
        }
        tracing::info!(host = %name, addrs = ?latest, "connect.allow host resolved");
        *addrs = latest;
        true
    }

    /// The (network, prefix) pairs this rule covers now.
    #[must_use]
    pub fn prefixes(&self) -> Vec<(IpAddr, u8)> {
        match &self.target {
            Target::Cidr { net, prefix } => vec![(*net, *prefix)],
            Target::Host { addrs, .. } => addrs
                .iter()
                .map(|a| (*a, if a.is_ipv4() { 32 } else { 128 }))
                .collect(),
        }
    }

    /// Whether this rule allows `ip:port`.
    #[must_use]
    pub fn allows(&self, ip: IpAddr, port: u16) -> bool {
        self.ports.is_none_or(|(lo, hi)| (lo..=hi).contains(&port))
            && self
                .prefixes()
                .into_iter()
                .any(|(net, prefix)| contains(net, prefix, ip))
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
#[must_use]
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A prefix written with an IPv4-mapped IPv6 address as the IPv4 prefix it
/// is (`[::ffff:10.0.0.0/104]` is 10.0.0.0/8), as the kernel's tries hold
/// it ([`fold`]); any other unchanged.
#[must_use]
pub fn unmap_prefix(net: IpAddr, prefix: u8) -> (IpAddr, u8) {
    match (net, unmap(net)) {
        (IpAddr::V6(_), v4 @ IpAddr::V4(_)) => (v4, prefix.saturating_sub(96)),
        _ => (net, prefix),
    }
}

/// Whether `ip` is inside `net/prefix` (an IPv4-mapped address on either
/// side being the IPv4 address it is, as in the kernel).
#[must_use]
pub fn contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    let (net, prefix) = unmap_prefix(net, prefix);
    match (net, unmap(ip)) {
        (IpAddr::V4(n), IpAddr::V4(a)) => mask4(n, prefix) == mask4(a, prefix),
        (IpAddr::V6(n), IpAddr::V6(a)) => mask6(n, prefix) == mask6(a, prefix),
        _ => false,
    }
}

/// `net/prefix`'s network address: `net` with its host bits cleared.
#[must_use]
pub fn network(net: IpAddr, prefix: u8) -> IpAddr {
    match net {
        IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(mask4(a, prefix))),
        IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(mask6(a, prefix))),
    }
}

fn mask4(a: Ipv4Addr, prefix: u8) -> u32 {
    let m = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix.min(32)))
    };
    u32::from(a) & m
}

fn mask6(a: Ipv6Addr, prefix: u8) -> u128 {
    let m = if prefix == 0 {
        0
    } else {
        u128::MAX << (128 - u32::from(prefix.min(128)))
    };
    u128::from(a) & m
}

/// The prefix entries of one address family, as the kernel trie holds them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Prefixes {
    /// (masked address bytes, prefix length) → allowed port ranges.
    pub v4: BTreeMap<([u8; 4], u8), NetRule>,
    pub v6: BTreeMap<([u8; 16], u8), NetRule>,
}

/// Folds `rules` (numbered from `first_rule`) into longest-prefix entries:
/// each entry also carries the port ranges of every shorter prefix covering
/// it, so the kernel's longest match alone decides.
pub fn fold(rules: &[ConnectRule], first_rule: u32) -> Result<Prefixes, RuleError> {
    // Every (net, prefix) with the (range, rule) pairs of its own rules.
    let mut own: Vec<(IpAddr, u8, (u16, u16), u32)> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let (lo, hi) = r.ports.unwrap_or((0, u16::MAX));
        let rule = first_rule + u32::try_from(i).unwrap_or(u32::MAX - 3);
        for (net, prefix) in r.prefixes() {
            let (net, prefix) = unmap_prefix(net, prefix);
            own.push((net, prefix, (lo, hi), rule));
        }
    }
    let mut out = Prefixes::default();
    for (net, prefix, _, _) in &own {
        // All ranges of rules whose prefix covers this one (itself included).
        let mut entry = NetRule::default();
        for (n2, p2, (lo, hi), rule) in &own {
            if p2 <= prefix && contains(*n2, *p2, *net) {
                let i = entry.count as usize;
                if entry.lo[..i]
                    .iter()
                    .zip(&entry.hi[..i])
                    .any(|(l, h)| (l, h) == (lo, hi))
                {
                    continue;
                }
                if i == NET_PORT_RANGES {
                    return Err(RuleError::TooManyRanges {
                        net: *net,
                        prefix: *prefix,
                    });
                }
                entry.lo[i] = *lo;
                entry.hi[i] = *hi;
                entry.rule[i] = *rule;
                entry.count += 1;
            }
        }
        match net {
            IpAddr::V4(a) => {
                let masked = Ipv4Addr::from(mask4(*a, *prefix)).octets();
                out.v4.insert((masked, *prefix), entry);
            }
            IpAddr::V6(a) => {
                let masked = Ipv6Addr::from(mask6(*a, *prefix)).octets();
                out.v6.insert((masked, *prefix), entry);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_addresses_cidrs_ports_and_hosts() {
        let r = parse("10.0.0.0/8:443").unwrap();
        assert_eq!(
            r.target,
            Target::Cidr {
                net: ip("10.0.0.0"),
                prefix: 8
            }
        );
        assert_eq!(r.ports, Some((443, 443)));
        assert_eq!(parse("[::1]:80-90").unwrap().ports, Some((80, 90)));
        assert!(matches!(
            parse("localhost:8080").unwrap().target,
            Target::Host { .. }
        ));
        assert!(matches!(
            parse("api.github.com").unwrap().target,
            Target::Host { .. }
        ));
        for bad in [
            "10.0.0.0/33",
            "1.2.3.4:90-80",
            "1.2.3:80",
            "bad_name:1",
            "h/8",
            "[::1]x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn allows_by_prefix_port_and_mapped_v4() {
        let r = parse("127.0.0.0/8:8000-8100").unwrap();
        assert!(r.allows(ip("127.1.2.3"), 8050));
        assert!(r.allows(ip("::ffff:127.0.0.1"), 8000));
        assert!(!r.allows(ip("127.1.2.3"), 8101));
        assert!(!r.allows(ip("128.0.0.1"), 8050));
        // A rule written mapped is the IPv4 rule (the kernel's trie holds
        // it so): `policy test` decides as the kernel does.
        let mapped = parse("[::ffff:127.0.0.1]:80").unwrap();
        assert!(mapped.allows(ip("127.0.0.1"), 80));
        assert!(mapped.allows(ip("::ffff:127.0.0.1"), 80));
        assert!(!mapped.allows(ip("127.0.0.2"), 80));
        let net = parse("[::ffff:10.0.0.0/104]").unwrap();
        assert!(net.allows(ip("10.9.9.9"), 1));
        assert!(!net.allows(ip("11.0.0.1"), 1));
        assert!(!net.allows(ip("::1"), 1));
        let p = fold(&[mapped, net], 0).unwrap();
        assert_eq!(
            p.v4.keys().collect::<Vec<_>>(),
            [&([10, 0, 0, 0], 8), &([127, 0, 0, 1], 32)]
        );
        assert!(p.v6.is_empty());
    }

    #[test]
    fn folding_carries_covering_ranges_into_longer_prefixes() {
        let rules = vec![
            parse("10.0.0.0/8:443").unwrap(),
            parse("10.1.0.0/16:80").unwrap(),
            parse("[::1]").unwrap(),
        ];
        let p = fold(&rules, 5).unwrap();
        let e = p.v4[&([10, 1, 0, 0], 16)];
        assert_eq!(e.count, 2);
        assert_eq!((e.lo[0], e.hi[0], e.rule[0]), (443, 443, 5));
        assert_eq!((e.lo[1], e.hi[1], e.rule[1]), (80, 80, 6));
        assert_eq!(p.v4[&([10, 0, 0, 0], 8)].count, 1);
        assert_eq!(p.v6.len(), 1);
        let many: Vec<_> = (0..9)
            .map(|i| parse(&format!("10.0.0.0/8:{}", 100 + i)).unwrap())
            .collect();
        assert!(fold(&many, 0).is_err());
    }

    #[test]
    fn localhost_resolves() {
        let mut r = parse("localhost:1").unwrap();
        assert!(r.refresh());
        assert!(r.allows(ip("127.0.0.1"), 1));
    }
}

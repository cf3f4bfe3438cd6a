//! `sensor policy suggest`: a least-privilege policy from what stored runs
//! did, and `sensor policy test`'s replay of stored events through the
//! daemon's own checks ([`Policy::check_exec`], [`Policy::check_connect`]).
//!
//! Everything read here came from the watched agent (paths, socket names):
//! values are written with the `toml` crate's serializer, and text in
//! comments is escaped ([`comment_text`]) so that no content can end a
//! comment or add a line.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde_json::Value;

use sensor_common::policy::{RULE_MAX_PROCESSES, RULE_NO_MATCH};

use super::{Policy, Verdict, kernel, net};

/// Where and how often one right was used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub count: u64,
    /// RFC 3339 times as stored (fixed width, so they order as text).
    pub first: String,
    pub last: String,
    /// The run of the first use.
    pub run: String,
}

impl Evidence {
    fn new(time: &str, run: &str) -> Self {
        Self {
            count: 1,
            first: time.to_owned(),
            last: time.to_owned(),
            run: run.to_owned(),
        }
    }

    fn add(&mut self, time: &str, run: &str) {
        self.count += 1;
        if time < self.first.as_str() {
            time.clone_into(&mut self.first);
            run.clone_into(&mut self.run);
        }
        if time > self.last.as_str() {
            time.clone_into(&mut self.last);
        }
    }

    fn merge(&mut self, other: &Self) {
        self.count += other.count;
        if other.first < self.first {
            self.first.clone_from(&other.first);
            self.run.clone_from(&other.run);
        }
        if other.last > self.last {
            self.last.clone_from(&other.last);
        }
    }

    /// `N×, first T, last T, e.g. run R`.
    fn describe(&self, what: &str) -> String {
        format!(
            "{}× {what}, first {}, last {}, e.g. run {}",
            self.count,
            comment_text(&self.first),
            comment_text(&self.last),
            comment_text(&self.run)
        )
    }
}

fn note<K: Ord>(map: &mut BTreeMap<K, Evidence>, key: K, time: &str, run: &str) {
    map.entry(key)
        .and_modify(|e| e.add(time, run))
        .or_insert_with(|| Evidence::new(time, run));
}

/// What the selected runs did, gathered from their stored events.
#[derive(Debug, Default)]
pub struct Observed {
    /// Executed files, by the path the kernel ran.
    pub exec: BTreeMap<String, Evidence>,
    /// The identity (`st_dev`, `st_ino`) each was last executed as.
    pub exec_ids: BTreeMap<String, (u64, u64)>,
    pub connect: BTreeMap<(IpAddr, u16), Evidence>,
    /// Unix sockets: paths, or `@name` for abstract names.
    pub unix: BTreeMap<String, Evidence>,
    pub raw_sockets: Option<Evidence>,
    /// Deepest run seen, relative to `base_depth`.
    pub max_depth: u32,
    /// Most processes alive at once in one run tree.
    pub max_processes: u32,
    /// Users the runs' processes ran as.
    pub uids: BTreeSet<u32>,
    pub runs: BTreeSet<String>,
    pub events: u64,
    base_depth: u32,
    live: BTreeMap<String, BTreeSet<String>>,
}

fn s<'a>(e: &'a Value, pointer: &str) -> &'a str {
    e.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// True when a policy's enforcement blocked the action (it never happened,
/// so it is no evidence of a need).
fn blocked(e: &Value) -> bool {
    e.pointer("/policy/verdict").and_then(Value::as_str) == Some("deny")
        && e.pointer("/policy/enforced").and_then(Value::as_bool) == Some(true)
}

impl Observed {
    /// Depths are counted from `base_depth` (the depth of the run asked for).
    #[must_use]
    pub fn new(base_depth: u32) -> Self {
        Self {
            base_depth,
            ..Self::default()
        }
    }

    /// Takes one stored event into account.
    pub fn add(&mut self, e: &Value) {
        let Some(run) = e.pointer("/run/id").and_then(Value::as_str) else {
            return;
        };
        let time = s(e, "/time");
        self.events += 1;
        self.runs.insert(run.to_owned());
        if let Some(depth) = e
            .pointer("/run/depth")
            .and_then(Value::as_u64)
            .and_then(|d| u32::try_from(d).ok())
        {
            self.max_depth = self.max_depth.max(depth.saturating_sub(self.base_depth));
        }
        if let Some(uid) = e
            .pointer("/process/uid")
            .and_then(Value::as_u64)
            .and_then(|u| u32::try_from(u).ok())
        {
            self.uids.insert(uid);
        }
        let kind = s(e, "/kind");
        if blocked(e) {
            // Also a fork max_processes refused: it never ran.
            return;
        }
        self.count_live(e, kind);
        match kind {
            "process.exec" if s(e, "/exec/result") == "ok" => {
                let exe = s(e, "/process/exe");
                if !exe.is_empty() {
                    note(&mut self.exec, exe.to_owned(), time, run);
                    let ino = e.pointer("/exec/inode").and_then(Value::as_u64);
                    if let (Some(dev), Some(ino)) = (parse_dev(s(e, "/exec/dev")), ino) {
                        self.exec_ids.insert(exe.to_owned(), (dev, ino));
                    }
                }
            }
            "network.connect" => {
                // An IPv4-mapped destination is the IPv4 one (the kernel
                // decides it so): one rule, written as IPv4.
                let ip = s(e, "/network/dst_ip")
                    .parse::<IpAddr>()
                    .ok()
                    .map(net::unmap);
                let port = e
                    .pointer("/network/dst_port")
                    .and_then(Value::as_u64)
                    .and_then(|p| u16::try_from(p).ok());
                match (ip, port) {
                    (Some(ip), Some(port)) => note(&mut self.connect, (ip, port), time, run),
                    _ if s(e, "/network/family") == "unix" => {
                        let path = s(e, "/network/path");
                        if !path.is_empty() {
                            note(&mut self.unix, path.to_owned(), time, run);
                        }
                    }
                    _ => {}
                }
            }
            "network.socket" => match &mut self.raw_sockets {
                Some(ev) => ev.add(time, run),
                None => self.raw_sockets = Some(Evidence::new(time, run)),
            },
            _ => {}
        }
    }

    /// Processes alive at once per root run (sub-runs included: an upper
    /// bound for any one run's tree).
    fn count_live(&mut self, e: &Value, kind: &str) {
        let root = s(e, "/run/root_id");
        let key = s(e, "/process/key");
        if root.is_empty() || key.is_empty() {
            return;
        }
        let live = self.live.entry(root.to_owned()).or_default();
        match kind {
            "process.exit" => {
                live.remove(key);
            }
            "process.spawn" | "process.exec" => {
                live.insert(key.to_owned());
                let n = u32::try_from(live.len()).unwrap_or(u32::MAX);
                self.max_processes = self.max_processes.max(n);
            }
            _ => {}
        }
    }
}

/// Whether a directory may stand for the files seen in it.
pub trait DirCheck {
    /// `Ok` when nobody but root can add or change a file anywhere under
    /// `dir` (nor replace `dir` itself), and none of `uids` is root; else why not.
    fn safe(&self, dir: &Path, uids: &BTreeSet<u32>) -> Result<(), NotSafe>;

    /// The identity (`st_dev`, `st_ino`) of the file at `path` now, if any.
    fn file_id(&self, path: &Path) -> Option<(u64, u64)>;
}

/// Why a directory may not stand for the files seen in it (the text goes
/// into the policy's comments).
#[derive(Debug, thiserror::Error)]
pub enum NotSafe {
    #[error("the runs ran as root, which can write anywhere")]
    RootRuns,
    #[error("{}: {error}", path.display())]
    Unreadable {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{} is reached through a symlink", .0.display())]
    Symlink(PathBuf),
    #[error("{} is owned by uid {uid}", path.display())]
    Owner { path: PathBuf, uid: u32 },
    #[error("{} is writable by group or others ({mode:o})", path.display())]
    Writable { path: PathBuf, mode: u32 },
    #[error("more than {WALK_LIMIT} entries below")]
    TooMany,
}

/// [`DirCheck`] on this machine's file system.
pub struct FsCheck;

/// Entries a directory's subtree may hold to be checked at all.
const WALK_LIMIT: usize = 20_000;

fn unreadable(path: &Path) -> impl FnOnce(std::io::Error) -> NotSafe + '_ {
    move |error| NotSafe::Unreadable {
        path: path.to_owned(),
        error,
    }
}

fn root_only(path: &Path) -> Result<std::fs::Metadata, NotSafe> {
    use std::os::unix::fs::MetadataExt as _;
    let meta = std::fs::symlink_metadata(path).map_err(unreadable(path))?;
    if meta.uid() != 0 {
        return Err(NotSafe::Owner {
            path: path.to_owned(),
            uid: meta.uid(),
        });
    }
    if meta.mode() & 0o022 != 0 && !meta.file_type().is_symlink() {
        return Err(NotSafe::Writable {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(meta)
}

impl DirCheck for FsCheck {
    fn file_id(&self, path: &Path) -> Option<(u64, u64)> {
        super::FileId::of(path).ok().map(|id| (id.dev, id.ino))
    }

    fn safe(&self, dir: &Path, uids: &BTreeSet<u32>) -> Result<(), NotSafe> {
        if uids.contains(&0) {
            return Err(NotSafe::RootRuns);
        }
        let real = std::fs::canonicalize(dir).map_err(unreadable(dir))?;
        if real != dir {
            return Err(NotSafe::Symlink(dir.to_owned()));
        }
        for ancestor in dir.ancestors() {
            root_only(ancestor)?;
        }
        let mut stack = vec![dir.to_path_buf()];
        let mut seen = 0usize;
        while let Some(d) = stack.pop() {
            let entries = std::fs::read_dir(&d).map_err(unreadable(&d))?;
            for entry in entries {
                let entry = entry.map_err(unreadable(&d))?;
                seen += 1;
                if seen > WALK_LIMIT {
                    return Err(NotSafe::TooMany);
                }
                let meta = root_only(&entry.path())?;
                if meta.is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        Ok(())
    }
}

/// How `suggest` writes the policy.
#[derive(Debug, Clone)]
pub struct Options {
    pub name: String,
    pub enforce: bool,
    /// Distinct files seen in one directory from which it becomes a
    /// directory rule (when [`DirCheck`] allows); 0 never.
    pub collapse_at: usize,
    /// Distinct addresses seen in one IPv4 /24 or IPv6 /64 on one port
    /// from which they become that network (see [`connect_rules`]); 0 never.
    pub fold_at: usize,
    /// Where the evidence came from (`run R`, `agent A since T`).
    pub source: String,
}

/// One exec rule: an exact file, or a directory standing for files seen in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecRule {
    /// A file; `changed` when the file at the path now is another than the
    /// one executed (an upgrade, or a swap).
    File {
        path: String,
        evidence: Evidence,
        changed: bool,
    },
    Dir {
        dir: String,
        files: usize,
        evidence: Evidence,
    },
    /// A path that cannot be written as an exact rule (why), left out.
    Skipped(String, &'static str),
}

fn exact_path_problem(path: &str) -> Option<&'static str> {
    if !path.starts_with('/') {
        Some("not an absolute path")
    } else if path.contains(['*', '?', '[']) {
        Some("it has glob characters, which would make it a pattern")
    } else if path.ends_with('/') {
        Some("it ends in '/', which would make it a directory rule")
    } else if path.chars().any(char::is_control) {
        Some("it has control characters")
    } else {
        None
    }
}

/// The exec rules: exact files, and a directory rule for each directory
/// with at least `collapse_at` distinct files seen that `check` finds safe.
pub fn exec_rules(
    seen: &Observed,
    collapse_at: usize,
    check: &dyn DirCheck,
) -> (Vec<ExecRule>, Vec<String>) {
    let uids = &seen.uids;
    let mut notes = Vec::new();
    let mut by_dir: BTreeMap<&Path, Vec<(&String, &Evidence, bool)>> = BTreeMap::new();
    let mut rules = Vec::new();
    for (path, ev) in &seen.exec {
        if let Some(why) = exact_path_problem(path) {
            rules.push(ExecRule::Skipped(path.clone(), why));
            continue;
        }
        let Some(now) = check.file_id(Path::new(path)) else {
            rules.push(ExecRule::Skipped(path.clone(), "no file there now"));
            continue;
        };
        let changed = seen.exec_ids.get(path).is_some_and(|id| *id != now);
        let parent = Path::new(path).parent().unwrap_or_else(|| Path::new("/"));
        by_dir.entry(parent).or_default().push((path, ev, changed));
    }
    for (dir, files) in by_dir {
        let collapse = collapse_at > 0 && files.len() >= collapse_at && {
            let dir_text = dir.to_string_lossy();
            let ok =
                exact_path_problem(&format!("{dir_text}/x")).is_none() && dir != Path::new("/");
            match (ok, check.safe(dir, uids)) {
                (true, Ok(())) => true,
                (false, _) => false,
                (true, Err(why)) => {
                    notes.push(format!(
                        "{} files seen in {dir_text}, kept exact: {why}",
                        files.len()
                    ));
                    false
                }
            }
        };
        if collapse {
            let mut evidence = files[0].1.clone();
            for (_, ev, _) in &files[1..] {
                evidence.merge(ev);
            }
            let mut dir = dir.to_string_lossy().into_owned();
            dir.push('/');
            rules.push(ExecRule::Dir {
                dir,
                files: files.len(),
                evidence,
            });
        } else {
            rules.extend(files.into_iter().map(|(p, ev, changed)| ExecRule::File {
                path: p.clone(),
                evidence: ev.clone(),
                changed,
            }));
        }
    }
    (rules, notes)
}

/// Characters that change how the text around them reads without showing
/// themselves: bidirectional overrides and isolates, zero-width ones, the
/// byte order mark ("Trojan Source" in a policy a human reviews).
fn invisible(c: char) -> bool {
    matches!(
        c,
        '\u{061C}'
            | '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2064}'
            | '\u{2066}'..='\u{2069}'
            | '\u{FEFF}'
    )
}

/// Text safe inside a TOML comment: control characters (newlines
/// included), quotes and backslashes escaped, as Rust's `{:?}` writes them,
/// and invisible formatting characters as `\u{...}` too.
#[must_use]
pub fn comment_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if invisible(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.extend(c.escape_debug());
        }
    }
    out
}

/// A TOML basic string, one line (fit for a key as well as a value): `"`
/// and `\\` escaped, every control character as `\\uXXXX`.
fn value(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() || invisible(c) => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn connect_text(ip: IpAddr, port: u16) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{v4}:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
    }
}

/// One connect rule: an exact destination, or a network (an IPv4 /24, an
/// IPv6 /64) on one port that stands for the addresses seen in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectRule {
    Exact {
        ip: IpAddr,
        port: u16,
        evidence: Evidence,
    },
    Net {
        /// The network's first address.
        net: IpAddr,
        /// [`FOLD_V4`] or [`FOLD_V6`].
        prefix: u8,
        port: u16,
        /// The addresses seen in it (at least the threshold).
        addresses: Vec<IpAddr>,
        evidence: Evidence,
    },
}

/// The prefix IPv4 addresses fold into.
pub const FOLD_V4: u8 = 24;
/// The prefix IPv6 addresses fold into: one subnet (RFC 4291's interface
/// identifiers are the other 64 bits, often random: a host's privacy
/// addresses, a service's many addresses in its subnet).
pub const FOLD_V6: u8 = 64;

/// The network `ip` folds into, when its addresses may be folded at all:
/// public or private unicast, but never loopback (every local service),
/// link-local (the cloud metadata address, 169.254.169.254), unspecified,
/// broadcast, multicast or reserved space; in IPv6 also never the /64s of
/// the cloud metadata services (AWS's fd00:ec2::254, GCP's fd20:ce::254),
/// site-local, the first /64 (`::1`, `::`, the deprecated IPv4-compatible
/// addresses), nor the NAT64 prefixes (64:ff9b::/96 and 64:ff9b:1::/48,
/// whose /64 holds every IPv4 address). An IPv4-mapped address is the IPv4
/// address it is ([`net::unmap`]: the kernel decides it so).
fn fold_net(ip: IpAddr) -> Option<IpAddr> {
    match net::unmap(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            let n = std::net::Ipv4Addr::new(a, b, c, 0);
            let reserved = n.is_loopback()
                || n.is_link_local()
                || n.is_unspecified()
                || n.is_broadcast()
                || n.is_multicast()
                || a == 0
                || a >= 240;
            (!reserved).then_some(IpAddr::V4(n))
        }
        IpAddr::V6(v6) => {
            let n = net::network(IpAddr::V6(v6), FOLD_V6);
            let IpAddr::V6(n6) = n else { return None };
            let seg = n6.segments();
            let metadata = ["fd00:ec2::", "fd20:ce::"]
                .iter()
                .filter_map(|m| m.parse::<IpAddr>().ok())
                .any(|m| m == n);
            let reserved = seg[..4] == [0; 4]
                || seg[0] & 0xffc0 == 0xfe80
                || seg[0] & 0xffc0 == 0xfec0
                || seg[0] & 0xff00 == 0xff00
                || (seg[0] == 0x64 && seg[1] == 0xff9b)
                || metadata;
            (!reserved).then_some(n)
        }
    }
}

fn fold_prefix(net: IpAddr) -> u8 {
    if net.is_ipv4() { FOLD_V4 } else { FOLD_V6 }
}

/// The connect rules: exact `ADDR:PORT` for each destination seen, except
/// that with `fold_at` > 0, at least `fold_at` distinct addresses seen in
/// one IPv4 /24 or one IPv6 /64 on the same port become that network on
/// that port (never another port, never a wider prefix, never loopback,
/// link-local or the other networks [`fold_net`] keeps exact). Folding is a
/// trade the reviewer asks for (a service behind many addresses of one
/// network, e.g. a load-balanced API): it allows the network's unseen
/// addresses too, on that one port.
#[must_use]
pub fn connect_rules(seen: &Observed, fold_at: usize) -> Vec<ConnectRule> {
    let mut groups: BTreeMap<(IpAddr, u16), Vec<IpAddr>> = BTreeMap::new();
    if fold_at > 0 {
        for (ip, port) in seen.connect.keys() {
            if let Some(n) = fold_net(*ip) {
                groups.entry((n, *port)).or_default().push(*ip);
            }
        }
        groups.retain(|_, addresses| addresses.len() >= fold_at.max(2));
    }
    let mut rules = Vec::new();
    let mut folded: BTreeMap<(IpAddr, u16), Evidence> = BTreeMap::new();
    for ((ip, port), ev) in &seen.connect {
        let group = fold_net(*ip)
            .map(|n| (n, *port))
            .filter(|key| groups.contains_key(key));
        match group {
            Some(key) => {
                folded
                    .entry(key)
                    .and_modify(|e| e.merge(ev))
                    .or_insert_with(|| ev.clone());
            }
            None => rules.push(ConnectRule::Exact {
                ip: *ip,
                port: *port,
                evidence: ev.clone(),
            }),
        }
    }
    for ((net, port), evidence) in folded {
        let addresses = groups.remove(&(net, port)).unwrap_or_default();
        rules.push(ConnectRule::Net {
            net,
            prefix: fold_prefix(net),
            port,
            addresses,
            evidence,
        });
    }
    rules
}

/// Headroom over an observed maximum: twice it, and at least 4 more.
#[must_use]
pub fn with_headroom(n: u32) -> u32 {
    n.saturating_mul(2).max(n.saturating_add(4))
}

/// The policy as TOML text: a `[policy."NAME"]` table, each rule preceded
/// by a comment with its evidence.
#[must_use]
pub fn render(seen: &Observed, opts: &Options, check: &dyn DirCheck) -> String {
    let mut out = String::new();
    let (exec, notes) = exec_rules(seen, opts.collapse_at, check);
    // Writing to a String cannot fail.
    let _ = writeln!(
        out,
        "# Suggested by `sensor policy suggest` from {} events of {} {} ({}).",
        seen.events,
        seen.runs.len(),
        if seen.runs.len() == 1 { "run" } else { "runs" },
        comment_text(&opts.source)
    );
    out.push_str(
        "# Least privilege for what these runs did: review it, dry-run it with\n\
         # `sensor policy test`, then attach it to the agent ([[agent]] policy = ...).\n",
    );
    for n in &notes {
        let _ = writeln!(out, "# note: {}", comment_text(n));
    }
    let _ = writeln!(out, "[policy.{}]", value(&opts.name));
    let _ = writeln!(
        out,
        "mode = {}",
        value(if opts.enforce { "enforce" } else { "audit" })
    );
    let _ = writeln!(
        out,
        "# deepest sub-run seen: {} below the first run (+1 headroom)",
        seen.max_depth
    );
    let _ = writeln!(out, "max_depth = {}", seen.max_depth.saturating_add(1));
    let procs = seen.max_processes.max(1);
    let _ = writeln!(
        out,
        "# most processes alive at once in a run tree: {procs} (doubled, at least +4)"
    );
    let _ = writeln!(out, "max_processes = {}", with_headroom(procs));
    if let Some(ev) = &seen.raw_sockets {
        let _ = writeln!(out, "# {}", ev.describe("raw/ICMP/packet socket"));
        out.push_str("raw_sockets = true\n");
    }
    out.push_str("\n[policy.");
    out.push_str(&value(&opts.name));
    out.push_str(".exec]\nallow = [\n");
    for rule in &exec {
        match rule {
            ExecRule::File {
                path,
                evidence,
                changed,
            } => {
                let _ = writeln!(out, "  # {}", evidence.describe("exec"));
                if *changed {
                    out.push_str(
                        "  # (the file at this path is not the one executed then: upgraded, or replaced?)\n",
                    );
                }
                let _ = writeln!(out, "  {},", value(path));
            }
            ExecRule::Dir {
                dir,
                files,
                evidence,
            } => {
                let _ = writeln!(
                    out,
                    "  # {} of {files} files, root-owned, writable by root only",
                    evidence.describe("exec")
                );
                let _ = writeln!(out, "  {},", value(dir));
            }
            ExecRule::Skipped(path, why) => {
                let _ = writeln!(out, "  # left out: \"{}\": {why}", comment_text(path));
            }
        }
    }
    out.push_str("]\n\n[policy.");
    out.push_str(&value(&opts.name));
    out.push_str(".connect]\nallow = [\n");
    for rule in connect_rules(seen, opts.fold_at) {
        match rule {
            ConnectRule::Exact { ip, port, evidence } => {
                let _ = writeln!(out, "  # {}", evidence.describe("connect"));
                let _ = writeln!(out, "  {},", value(&connect_text(ip, port)));
            }
            ConnectRule::Net {
                net,
                prefix,
                port,
                addresses,
                evidence,
            } => {
                let _ = writeln!(out, "  # {}", evidence.describe("connect"));
                let listed: Vec<String> = addresses.iter().map(ToString::to_string).collect();
                let _ = writeln!(
                    out,
                    "  # folded (--fold-at {}): {} addresses seen in {net}/{prefix} on port {port}: {}",
                    opts.fold_at,
                    addresses.len(),
                    listed.join(", ")
                );
                let rule = if net.is_ipv4() {
                    format!("{net}/{prefix}:{port}")
                } else {
                    format!("[{net}/{prefix}]:{port}")
                };
                let _ = writeln!(out, "  {},", value(&rule));
            }
        }
    }
    out.push_str("]\n\n[policy.");
    out.push_str(&value(&opts.name));
    out.push_str(".unix]\nallow = [\n");
    for (path, ev) in &seen.unix {
        let bad = path.chars().any(char::is_control)
            || path.contains(['*', '?', '['])
            || path.contains("\\x");
        if bad {
            let _ = writeln!(
                out,
                "  # left out: \"{}\": not expressible as an exact socket rule",
                comment_text(path)
            );
            continue;
        }
        let _ = writeln!(out, "  # {}", ev.describe("connect"));
        let _ = writeln!(out, "  {},", value(path));
    }
    out.push_str("]\n");
    out
}

/// One action a policy would have denied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    pub seq: u64,
    pub run: String,
    pub kind: String,
    /// The file, destination, socket, process or run.
    pub what: String,
    pub verdict: Verdict,
}

/// `sensor policy test`'s replay of stored events, in their order, through
/// the decisions the daemon makes with the same code:
///
/// - an exec (that ran, or that a policy blocked): [`Policy::check_exec`];
/// - a connect to an address: [`Policy::check_connect`];
/// - a Unix connect: its address looked up in the entries the daemon writes
///   for the kernel ([`kernel::UnixAddresses`]), the control socket included;
/// - a fork (`process.spawn`): counted per run tree against `max_processes`
///   by [`sensor_common::policy::fork_within`], the kernel's own test; a
///   process refused is not counted, nor is its exit;
/// - a sub-run's start: [`Policy::check_depth`] on its depth;
/// - a raw, ICMP or packet socket (`network.socket`): the slot flag the
///   kernel tests ([`kernel::raw_sockets_allowed`]).
///
/// What the stored events do not hold is not replayed: the mount an exec's
/// file was reached on is taken from the file at that path now when it is
/// still the same file (so directory rules match as they would have), and
/// unknown otherwise; the socket a Unix connect reached (the kernel's second
/// check, on its identity) is not stored, so only its address is decided; a
/// `sensor launch` refused for its depth started no run to replay.
pub struct Replay<'p> {
    policy: &'p Policy,
    unix: kernel::UnixAddresses,
    /// Per run tree (its root run): the counted processes, by key.
    counted: BTreeMap<String, BTreeSet<String>>,
    /// Decisions made.
    pub checked: usize,
}

impl<'p> Replay<'p> {
    /// A replay against `policy`; `sensors` are the control sockets every
    /// policy allows ([`sensor_sockets`]).
    #[must_use]
    pub fn new(policy: &'p Policy, sensors: &[kernel::SensorSocket]) -> Self {
        Self {
            policy,
            unix: kernel::UnixAddresses::of(policy, sensors),
            counted: BTreeMap::new(),
            checked: 0,
        }
    }

    /// The policy's decision on the next stored event, when it denies.
    pub fn event(&mut self, e: &Value) -> Option<Denied> {
        let kind = s(e, "/kind");
        let (what, verdict) = match kind {
            "process.exec" => self.exec(e)?,
            "network.connect" => self.connect(e)?,
            "process.spawn" | "process.exit" => self.fork(e, kind == "process.spawn")?,
            "network.socket" => {
                self.checked += 1;
                let allowed = kernel::raw_sockets_allowed(self.policy);
                let what = match e.pointer("/network/transport").and_then(Value::as_str) {
                    Some(t) => format!("{t} socket"),
                    None => "socket".to_owned(),
                };
                let rule = sensor_common::policy::RULE_RAW_SOCKET;
                (
                    what,
                    self.named(allowed.then_some(rule), rule, "raw_sockets"),
                )
            }
            "run.start" => {
                let depth = e
                    .pointer("/run/depth")
                    .and_then(Value::as_u64)
                    .and_then(|d| u32::try_from(d).ok())?;
                self.checked += 1;
                let verdict = self.policy.check_depth(depth)?;
                (format!("sub-run at depth {depth}"), verdict)
            }
            _ => return None,
        };
        verdict.is_deny().then(|| Denied {
            seq: e.pointer("/seq").and_then(Value::as_u64).unwrap_or(0),
            run: s(e, "/run/id").to_owned(),
            kind: kind.to_owned(),
            what,
            verdict,
        })
    }

    fn exec(&mut self, e: &Value) -> Option<(String, Verdict)> {
        let tried = s(e, "/exec/result") == "ok"
            || e.pointer("/policy/verdict").and_then(Value::as_str) == Some("deny");
        if !tried {
            return None;
        }
        self.checked += 1;
        let exe = s(e, "/process/exe");
        let ino = e
            .pointer("/exec/inode")
            .and_then(Value::as_u64)
            .unwrap_or(0);
        let dev = parse_dev(s(e, "/exec/dev")).unwrap_or(0);
        let mnt_id = super::resolve::file_mount(Path::new(exe))
            .filter(|(id, _)| id.dev == dev && id.ino == ino)
            .map(|(_, m)| m);
        Some((
            exe.to_owned(),
            self.policy.check_exec(exe, dev, ino, mnt_id),
        ))
    }

    fn connect(&mut self, e: &Value) -> Option<(String, Verdict)> {
        if s(e, "/network/family") == "unix" {
            let text = s(e, "/network/path");
            let is_abstract = e.pointer("/network/abstract").and_then(Value::as_bool) == Some(true);
            let bytes = unix_bytes(text, is_abstract)?;
            self.checked += 1;
            let rule = self.unix.rule(&bytes);
            return Some((
                text.to_owned(),
                self.named(rule, RULE_NO_MATCH, "unix.allow"),
            ));
        }
        let ip = s(e, "/network/dst_ip").parse::<IpAddr>().ok()?;
        let port = e
            .pointer("/network/dst_port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())?;
        self.checked += 1;
        Some((connect_text(ip, port), self.policy.check_connect(ip, port)))
    }

    /// Counts a fork (or an exit) of a run tree, as the kernel does under a
    /// policy with `max_processes`.
    fn fork(&mut self, e: &Value, spawn: bool) -> Option<(String, Verdict)> {
        let max = self.policy.max_processes?;
        let root = s(e, "/run/root_id");
        let key = s(e, "/process/key");
        if root.is_empty() || key.is_empty() {
            return None;
        }
        let counted = self.counted.entry(root.to_owned()).or_default();
        if !spawn {
            counted.remove(key);
            return None;
        }
        self.checked += 1;
        let children = u64::try_from(counted.len())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        let fits = sensor_common::policy::fork_within(children, max);
        if fits {
            counted.insert(key.to_owned());
        }
        let what = match e.pointer("/process/exe").and_then(Value::as_str) {
            Some(exe) => format!("process {key} ({exe})"),
            None => format!("process {key}"),
        };
        Some((
            what,
            self.named(
                fits.then_some(RULE_MAX_PROCESSES),
                RULE_MAX_PROCESSES,
                "max_processes",
            ),
        ))
    }

    /// The verdict a kernel decision stands for (as the daemon names it):
    /// allowed by rule `allowed`, else denied by `denied_by`.
    fn named(&self, allowed: Option<u32>, denied_by: u32, list: &str) -> Verdict {
        let (verdict, rule) = match allowed {
            Some(r) => (super::Decision::Allow, r),
            None => (super::Decision::Deny, denied_by),
        };
        let rule = match rule {
            RULE_NO_MATCH => format!("{list} (no rule matches)"),
            r => self.policy.rule_text(r),
        };
        Verdict {
            name: self.policy.name.clone(),
            verdict,
            rule,
            enforced: false,
            version: self.policy.version,
        }
    }
}

/// The daemon's control sockets a replay allows, as every policy does:
/// `configured` (the config's), and every address stored Unix connects
/// were allowed to as the control socket (the daemon that recorded them may
/// have had another).
#[must_use]
pub fn sensor_sockets<'e>(
    policy: &Policy,
    configured: &Path,
    events: impl IntoIterator<Item = &'e Value>,
) -> Vec<kernel::SensorSocket> {
    use std::os::unix::ffi::OsStrExt as _;
    let control = policy.rule_text(sensor_common::policy::RULE_SENSOR_SOCKET);
    let mut addresses = BTreeSet::from([configured.as_os_str().as_bytes().to_vec()]);
    for e in events {
        if s(e, "/kind") == "network.connect"
            && s(e, "/network/family") == "unix"
            && s(e, "/policy/rule") == control
            && let Some(bytes) = unix_bytes(
                s(e, "/network/path"),
                e.pointer("/network/abstract").and_then(Value::as_bool) == Some(true),
            )
        {
            addresses.insert(bytes);
        }
    }
    addresses
        .into_iter()
        .map(|address| kernel::SensorSocket { address, id: None })
        .collect()
}

/// The address bytes of a stored Unix address: a path, or `@name` (an
/// abstract name: a NUL, then the name), with `\xNN` read back as the byte
/// it stands for (how events write bytes that are not text).
fn unix_bytes(text: &str, is_abstract: bool) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() + 1);
    let rest = if is_abstract {
        out.push(0);
        text.strip_prefix('@')?
    } else {
        text
    };
    let bytes = rest.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'\\' && bytes.get(i + 1) == Some(&b'x'))
            .then(|| bytes.get(i + 2..i + 4))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    Some(out)
}

/// `MAJOR:MINOR` as stored, as user space's `st_dev`.
fn parse_dev(text: &str) -> Option<u64> {
    let (major, minor) = text.split_once(':')?;
    Some(nix::libc::makedev(major.parse().ok()?, minor.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    struct Safe(Vec<&'static str>);
    impl DirCheck for Safe {
        fn file_id(&self, path: &Path) -> Option<(u64, u64)> {
            (!path.starts_with("/gone")).then_some((0, 1))
        }

        fn safe(&self, dir: &Path, _: &BTreeSet<u32>) -> Result<(), NotSafe> {
            if self.0.iter().any(|d| Path::new(d) == dir) {
                Ok(())
            } else {
                Err(NotSafe::Owner {
                    path: dir.to_owned(),
                    uid: 1000,
                })
            }
        }
    }

    fn exec(seq: u64, exe: &str, time: &str, run: &str) -> Value {
        json!({"seq": seq, "time": time, "kind": "process.exec",
               "run": {"id": run, "root_id": run, "depth": 0},
               "process": {"key": format!("k{seq}"), "uid": 1000, "exe": exe},
               "exec": {"result": "ok", "inode": 1, "dev": "0:0"}})
    }

    fn observed(paths: &[&str]) -> Observed {
        let mut o = Observed::new(0);
        for (i, p) in paths.iter().enumerate() {
            let seq = u64::try_from(i).unwrap();
            o.add(&exec(
                seq,
                p,
                &format!("2026-12-05T00:00:0{}Z", i % 10),
                "r1",
            ));
        }
        o
    }

    #[test]
    fn a_directory_is_collapsed_only_at_the_threshold_and_when_safe() {
        let files: Vec<String> = (0..4).map(|i| format!("/usr/bin/t{i}")).collect();
        let mut paths: Vec<&str> = files.iter().map(String::as_str).collect();
        paths.extend([
            "/home/u/bin/a",
            "/home/u/bin/b",
            "/home/u/bin/c",
            "/home/u/bin/d",
        ]);
        let o = observed(&paths);
        let check = Safe(vec!["/usr/bin"]);
        let (rules, notes) = exec_rules(&o, 4, &check);
        let dirs: Vec<_> = rules
            .iter()
            .filter_map(|r| match r {
                ExecRule::Dir { dir, files, .. } => Some((dir.as_str(), *files)),
                _ => None,
            })
            .collect();
        assert_eq!(dirs, [("/usr/bin/", 4)], "{rules:?}");
        let exact = rules
            .iter()
            .filter(
                |r| matches!(r, ExecRule::File { path, .. } if path.starts_with("/home/u/bin/")),
            )
            .count();
        assert_eq!(exact, 4, "the unsafe directory stays exact");
        assert!(notes.iter().any(|n| n.contains("/home/u/bin")), "{notes:?}");
        // Below the threshold: exact.
        let (rules, _) = exec_rules(&o, 5, &check);
        assert!(rules.iter().all(|r| matches!(r, ExecRule::File { .. })));
        // Threshold 0: never.
        let (rules, _) = exec_rules(&o, 0, &check);
        assert!(rules.iter().all(|r| matches!(r, ExecRule::File { .. })));
        // A file gone since is left out; one replaced since is marked.
        let mut o = observed(&["/gone/a", "/usr/bin/x", "/usr/bin/y"]);
        o.exec_ids.insert("/usr/bin/x".to_owned(), (9, 9));
        let (rules, _) = exec_rules(&o, 0, &check);
        assert!(
            matches!(&rules[0], ExecRule::Skipped(p, _) if p == "/gone/a"),
            "{rules:?}"
        );
        assert!(
            matches!(&rules[1], ExecRule::File { changed: true, .. }),
            "{rules:?}"
        );
        assert!(
            matches!(&rules[2], ExecRule::File { changed: false, .. }),
            "{rules:?}"
        );
    }

    #[test]
    fn the_file_system_check_refuses_writable_and_root_runs() {
        let root = BTreeSet::from([0]);
        let user = BTreeSet::from([1000]);
        assert!(FsCheck.safe(Path::new("/usr/bin"), &root).is_err());
        let tmp = std::env::temp_dir();
        assert!(FsCheck.safe(&tmp, &user).is_err(), "/tmp is world-writable");
        let own = tempfile::tempdir().unwrap();
        assert!(matches!(
            FsCheck.safe(Path::new("/usr/bin"), &root),
            Err(NotSafe::RootRuns)
        ));
        let err = FsCheck.safe(own.path(), &user).unwrap_err().to_string();
        assert!(
            err.contains("writable") || err.contains("owned by"),
            "{err}"
        );
    }

    #[test]
    fn the_file_system_check_walks_the_whole_tree() {
        use std::os::unix::fs::{PermissionsExt as _, chown, symlink};
        let base = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(format!("suggest-fscheck-{}", std::process::id()));
        let dir = std::fs::canonicalize(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"))
            .unwrap()
            .join(format!("suggest-fscheck-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let mode = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
        };
        for f in ["a", "b", "sub/c"] {
            std::fs::write(dir.join(f), "").unwrap();
            mode(&dir.join(f), 0o755);
        }
        mode(&dir, 0o755);
        mode(&dir.join("sub"), 0o755);
        let user = BTreeSet::from([1000]);
        let parents_root_only = dir
            .parent()
            .unwrap()
            .ancestors()
            .all(|a| root_only(a).is_ok());
        if nix::unistd::geteuid().is_root() && parents_root_only {
            assert!(FsCheck.safe(&dir, &user).is_ok());
            mode(&dir.join("sub"), 0o777);
            let err = FsCheck.safe(&dir, &user).unwrap_err().to_string();
            assert!(err.contains("sub is writable by group or others"), "{err}");
            mode(&dir.join("sub"), 0o755);
            chown(dir.join("sub/c"), Some(1000), None).unwrap();
            let err = FsCheck.safe(&dir, &user).unwrap_err().to_string();
            assert!(err.contains("c is owned by uid 1000"), "{err}");
            chown(dir.join("sub/c"), Some(0), None).unwrap();
            symlink(&dir, dir.with_extension("link")).unwrap();
            let err = FsCheck
                .safe(&dir.with_extension("link"), &user)
                .unwrap_err()
                .to_string();
            assert!(err.contains("symlink"), "{err}");
            let _ = std::fs::remove_file(dir.with_extension("link"));
            assert!(FsCheck.safe(&dir, &user).is_ok());
        } else {
            // Not root, or under a directory others can write: never safe.
            assert!(FsCheck.safe(&dir, &user).is_err());
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn evidence_comments_count_first_last_and_example_run() {
        let mut o = Observed::new(0);
        o.add(&exec(3, "/usr/bin/true", "2026-12-05T00:00:03Z", "late"));
        o.add(&exec(1, "/usr/bin/true", "2026-12-05T00:00:01Z", "early"));
        o.add(&exec(2, "/usr/bin/true", "2026-12-05T00:00:02Z", "mid"));
        let ev = &o.exec["/usr/bin/true"];
        assert_eq!(ev.count, 3);
        assert_eq!(ev.first, "2026-12-05T00:00:01Z");
        assert_eq!(ev.last, "2026-12-05T00:00:03Z");
        assert_eq!(ev.run, "early");
        let text = render(&o, &opts(), &Safe(vec![]));
        assert!(text.contains(" events of 3 runs (run r1).\n"), "{text}");
        let mut one = Observed::new(0);
        one.add(&exec(1, "/usr/bin/true", "2026-12-05T00:00:01Z", "only"));
        let one = render(&one, &opts(), &Safe(vec![]));
        assert!(one.contains(" events of 1 run (run r1).\n"), "{one}");
        assert!(
            text.contains(
                "  # 3× exec, first 2026-12-05T00:00:01Z, last 2026-12-05T00:00:03Z, e.g. run early\n  \"/usr/bin/true\",\n"
            ),
            "{text}"
        );
    }

    fn opts() -> Options {
        Options {
            name: "learned".to_owned(),
            enforce: false,
            collapse_at: 8,
            fold_at: 0,
            source: "run r1".to_owned(),
        }
    }

    #[test]
    fn hostile_paths_neither_break_nor_inject_into_the_toml() {
        let evil = "/tmp/x\"]\n[policy.evil]\nmode = \"audit\"\n# \u{7f}\r";
        let glob = "/tmp/*";
        let mut o = observed(&[evil, glob, "/tmp/plain"]);
        o.add(
            &json!({"seq": 9, "time": "t\nmax_depth = 99", "kind": "network.connect",
                      "run": {"id": "r\n[policy.z]", "root_id": "r", "depth": 0},
                      "process": {"key": "k", "uid": 1000},
                      "network": {"family": "unix", "path": "/run/a\"\n]"}}),
        );
        o.add(
            &json!({"seq": 10, "time": "t\n[policy.y]\n#", "kind": "network.connect",
                      "run": {"id": "r2\r\n[policy.y]", "root_id": "r", "depth": 0},
                      "process": {"key": "k", "uid": 1000},
                      "network": {"family": "ipv4", "dst_ip": "10.0.0.1", "dst_port": 443}}),
        );
        let mut options = opts();
        options.name = "n\"]\n[x".to_owned();
        let text = render(&o, &options, &Safe(vec![]));
        let parsed: toml::Table = toml::from_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let policy = parsed["policy"].as_table().unwrap();
        assert_eq!(policy.keys().collect::<Vec<_>>(), [&options.name], "{text}");
        let p = policy[&options.name].as_table().unwrap();
        let exec: Vec<&str> = p["exec"]["allow"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(
            exec,
            ["/tmp/plain"],
            "control characters and globs left out"
        );
        assert!(text.contains("# left out: \"/tmp/*\""), "{text}");
        assert_eq!(
            p["connect"]["allow"].as_array().unwrap(),
            &[toml::Value::String("10.0.0.1:443".to_owned())]
        );
        assert!(text.contains("e.g. run r2\\r\\n[policy.y]"), "{text}");
        let unix = p["unix"]["allow"].as_array().unwrap();
        assert!(unix.is_empty(), "{text}");
        assert_eq!(p["max_depth"].as_integer(), Some(1));
        assert!(!text.contains("\n[policy.evil]") && !text.contains("\n[policy.y]"));
        // Values and keys round-trip.
        for s in ["a\"b\\c\n\u{7f}\u{85}é\u{202e}\u{feff}", ""] {
            let parsed: toml::Table =
                toml::from_str(&format!("{} = {}", value(s), value(s))).unwrap();
            assert_eq!(parsed[s].as_str(), Some(s));
        }
        assert!(!value("/usr/bin/\u{202e}x").contains('\u{202e}'));
        assert_eq!(comment_text("a\u{2066}b\n"), "a\\u{2066}b\\n");
        // Every comment line is one line: nothing after it parses as TOML of its own.
        for line in text.lines() {
            assert!(!line.contains('\r') && !line.contains('\u{7f}'), "{line:?}");
        }
    }

    #[test]
    fn depth_and_processes_have_headroom() {
        let mut o = Observed::new(1);
        for (i, kind) in [
            "process.exec",
            "process.spawn",
            "process.spawn",
            "process.exit",
            "process.spawn",
        ]
        .iter()
        .enumerate()
        {
            o.add(&json!({"seq": i, "time": "t", "kind": kind,
                          "run": {"id": "r", "root_id": "root", "depth": 3},
                          "process": {"key": format!("k{}", if *kind == "process.exit" { 1 } else { i }), "uid": 1}}));
        }
        assert_eq!(o.max_depth, 2);
        assert_eq!(o.max_processes, 3);
        // A fork max_processes refused never ran.
        o.add(&json!({"seq": 9, "time": "t", "kind": "process.spawn",
                      "run": {"id": "r", "root_id": "root", "depth": 3},
                      "process": {"key": "k9", "uid": 1},
                      "policy": {"verdict": "deny", "enforced": true, "rule": "max_processes 3"}}));
        assert_eq!(o.max_processes, 3);
        assert_eq!(with_headroom(3), 7);
        assert_eq!(with_headroom(10), 20);
    }

    fn policy_of(toml_text: &str) -> Policy {
        let c: super::super::PolicyConfig = toml::from_str(toml_text).unwrap();
        Policy::load("p", &c).unwrap()
    }

    /// Unix connects, forks against max_processes and sub-runs against
    /// max_depth are replayed through the daemon's decisions, in order.
    #[test]
    fn replay_decides_unix_connects_forks_and_depth() {
        let policy = policy_of(
            "max_processes = 3\nmax_depth = 1\n[unix]\nallow = [\"/run/ok.sock\", \"@abs\\u0000x\"]\n",
        );
        let events = [
            json!({"seq": 1, "kind": "run.start", "run": {"id": "r", "root_id": "r", "depth": 0}}),
            json!({"seq": 2, "kind": "network.connect", "run": {"id": "r", "root_id": "r"},
                   "network": {"family": "unix", "path": "/run/ok.sock", "abstract": false}}),
            json!({"seq": 3, "kind": "network.connect", "run": {"id": "r", "root_id": "r"},
                   "network": {"family": "unix", "path": "/run/other.sock", "abstract": false}}),
            json!({"seq": 4, "kind": "network.connect", "run": {"id": "r", "root_id": "r"},
                   "network": {"family": "unix", "path": "@abs\\x00x", "abstract": true}}),
            // The recording daemon's control socket, as it decided.
            json!({"seq": 5, "kind": "network.connect", "run": {"id": "r", "root_id": "r"},
                   "network": {"family": "unix", "path": "/tmp/t/sensor.sock", "abstract": false},
                   "policy": {"verdict": "allow", "rule": "unix.allow (the sensor's control socket)"}}),
            // "@abs" as a path is another address.
            json!({"seq": 6, "kind": "network.connect", "run": {"id": "r", "root_id": "r"},
                   "network": {"family": "unix", "path": "@abs\\x00x", "abstract": false}}),
            json!({"seq": 10, "kind": "process.spawn", "run": {"id": "r", "root_id": "r"}, "process": {"key": "k1"}}),
            json!({"seq": 11, "kind": "process.spawn", "run": {"id": "r", "root_id": "r"}, "process": {"key": "k2"}}),
            json!({"seq": 12, "kind": "process.spawn", "run": {"id": "r", "root_id": "r"}, "process": {"key": "k3", "exe": "/bin/x"}}),
            json!({"seq": 13, "kind": "process.exit", "run": {"id": "r", "root_id": "r"}, "process": {"key": "k1"}}),
            json!({"seq": 14, "kind": "process.spawn", "run": {"id": "s", "root_id": "r"}, "process": {"key": "k4"}}),
            // k3 was refused: its exit frees nothing.
            json!({"seq": 15, "kind": "process.exit", "run": {"id": "r", "root_id": "r"}, "process": {"key": "k3"}}),
            json!({"seq": 16, "kind": "process.spawn", "run": {"id": "r", "root_id": "r"}, "process": {"key": "k5"}}),
            // Another tree counts on its own.
            json!({"seq": 17, "kind": "process.spawn", "run": {"id": "o", "root_id": "o"}, "process": {"key": "k6"}}),
            json!({"seq": 20, "kind": "run.start", "run": {"id": "s", "root_id": "r", "depth": 1}}),
            json!({"seq": 21, "kind": "run.start", "run": {"id": "t", "root_id": "r", "depth": 2}}),
            json!({"seq": 30, "kind": "network.socket", "run": {"id": "r", "root_id": "r"},
                   "network": {"transport": "raw"}}),
        ];
        let sensors = sensor_sockets(&policy, Path::new("/run/sensor/sensor.sock"), &events);
        assert_eq!(sensors.len(), 2, "{sensors:?}");
        let mut replay = Replay::new(&policy, &sensors);
        let denied: Vec<(u64, String)> = events
            .iter()
            .filter_map(|e| replay.event(e))
            .map(|d| (d.seq, d.verdict.rule))
            .collect();
        assert_eq!(
            denied,
            [
                (3, "unix.allow (no rule matches)".to_owned()),
                (6, "unix.allow (no rule matches)".to_owned()),
                (12, "max_processes 3".to_owned()),
                (16, "max_processes 3".to_owned()),
                (21, "max_depth 1".to_owned()),
                (
                    30,
                    "raw_sockets (a raw, ICMP or packet socket reaches any address)".to_owned()
                ),
            ]
        );
        assert_eq!(
            replay.checked,
            5 + 6 + 3 + 1,
            "unix connects, forks, run starts, socket"
        );
        // Without limits, forks and depths allow everything.
        let open = policy_of("raw_sockets = true\n[unix]\nallow = [\"/run/*.sock\"]\n");
        let mut replay = Replay::new(&open, &[]);
        let denied: Vec<u64> = events
            .iter()
            .filter_map(|e| replay.event(e))
            .map(|d| d.seq)
            .collect();
        assert_eq!(
            denied,
            [2, 3, 4, 5, 6],
            "a glob allows the sockets it matches now only; no control socket given"
        );
    }

    #[test]
    fn stored_unix_addresses_read_back_as_bytes() {
        assert_eq!(unix_bytes("@a\\x00b", true), Some(b"\0a\0b".to_vec()));
        assert_eq!(
            unix_bytes("/run/\\xffs", false),
            Some(b"/run/\xffs".to_vec())
        );
        assert_eq!(unix_bytes("/run/\\xz", false), Some(b"/run/\\xz".to_vec()));
        assert_eq!(unix_bytes("no-at", true), None);
    }

    fn connect(o: &mut Observed, ip: &str, port: u16) {
        o.add(
            &json!({"seq": 1, "time": "2026-12-05T00:00:00Z", "kind": "network.connect",
                      "run": {"id": "r", "root_id": "r", "depth": 0},
                      "process": {"key": "k", "uid": 1000},
                      "network": {"family": "ipv4", "dst_ip": ip, "dst_port": port}}),
        );
    }

    #[test]
    fn addresses_fold_into_a_slash_24_only_when_asked_and_safe() {
        let mut o = Observed::new(0);
        for last in 1..=4 {
            connect(&mut o, &format!("10.1.2.{last}"), 443);
        }
        connect(&mut o, "10.1.2.9", 80);
        connect(&mut o, "10.1.3.1", 443);
        for last in 1..=4 {
            connect(&mut o, &format!("127.0.0.{last}"), 8080);
            connect(&mut o, &format!("169.254.169.{last}"), 80);
        }
        let exact = connect_rules(&o, 0);
        assert!(exact.iter().all(|r| matches!(r, ConnectRule::Exact { .. })));
        assert_eq!(exact.len(), 14);
        let folded = connect_rules(&o, 4);
        let nets: Vec<_> = folded
            .iter()
            .filter_map(|r| match r {
                ConnectRule::Net {
                    net,
                    prefix,
                    port,
                    addresses,
                    evidence,
                } => Some((
                    format!("{net}/{prefix}"),
                    *port,
                    addresses.len(),
                    evidence.count,
                )),
                ConnectRule::Exact { .. } => None,
            })
            .collect();
        assert_eq!(nets, [("10.1.2.0/24".to_owned(), 443, 4, 4)]);
        assert_eq!(
            folded.len(),
            14 - 4 + 1,
            "loopback, link-local, other ports stay exact"
        );
        assert!(
            connect_rules(&o, 5)
                .iter()
                .all(|r| matches!(r, ConnectRule::Exact { .. }))
        );
        let mut options = opts();
        options.fold_at = 4;
        let text = render(&o, &options, &Safe(vec![]));
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let allow = parsed["policy"]["learned"]["connect"]["allow"]
            .as_array()
            .unwrap();
        assert!(
            allow.contains(&toml::Value::String("10.1.2.0/24:443".to_owned())),
            "{text}"
        );
        assert!(
            text.contains("10.1.2.1, 10.1.2.2, 10.1.2.3, 10.1.2.4"),
            "{text}"
        );
        // The folded policy loads, and allows the /24 on that port only.
        let c: super::super::PolicyConfig =
            toml::from_str(&toml::to_string(&parsed["policy"]["learned"]).unwrap()).unwrap();
        let p = Policy::load("learned", &c).unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(!p.check_connect(ip("10.1.2.200"), 443).is_deny());
        assert!(p.check_connect(ip("10.1.2.200"), 80).is_deny());
        assert!(p.check_connect(ip("127.0.0.9"), 8080).is_deny());
    }

    /// IPv6: many addresses of one /64 on one port fold into the /64 at
    /// the same threshold; `::1`, link-local, multicast, the metadata
    /// services' /64s and NAT64 (whose /64 holds all of IPv4) stay exact;
    /// an IPv4-mapped destination is its IPv4 address (one rule with the
    /// IPv4 connects to it, folded with its /24).
    #[test]
    fn ipv6_addresses_fold_into_a_slash_64_and_mapped_ones_are_ipv4() {
        let mut o = Observed::new(0);
        for host in [":1", ":2", "a:b:c:d", "ffff:0:0:9"] {
            connect(&mut o, &format!("2001:db8:1:2:{host}"), 443);
        }
        connect(&mut o, "2001:db8:1:3::1", 443);
        connect(&mut o, "2001:db8:1:2::5", 80);
        for n in 1..=4 {
            for net in [
                "::",
                "fe80::",
                "ff02::",
                "fd00:ec2::",
                "fd20:ce::",
                "64:ff9b::a00:",
                "fec0::",
            ] {
                connect(&mut o, &format!("{net}{n}"), 80);
            }
        }
        // Mapped: the same destination as its IPv4 form, and in its /24.
        connect(&mut o, "::ffff:10.1.2.1", 443);
        connect(&mut o, "10.1.2.1", 443);
        connect(&mut o, "::ffff:10.1.2.2", 443);
        connect(&mut o, "10.1.2.3", 443);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(o.connect[&(ip("10.1.2.1"), 443)].count, 2);
        assert!(
            o.connect
                .keys()
                .all(|(a, _)| a.is_ipv4() || a.to_string().contains(':') && net::unmap(*a) == *a)
        );
        let exact = connect_rules(&o, 0);
        assert_eq!(exact.len(), 4 + 1 + 1 + 4 * 7 + 3);
        let folded = connect_rules(&o, 3);
        let nets: Vec<(String, u16, usize, u64)> = folded
            .iter()
            .filter_map(|r| match r {
                ConnectRule::Net {
                    net,
                    prefix,
                    port,
                    addresses,
                    evidence,
                } => Some((
                    format!("{net}/{prefix}"),
                    *port,
                    addresses.len(),
                    evidence.count,
                )),
                ConnectRule::Exact { .. } => None,
            })
            .collect();
        assert_eq!(
            nets,
            [
                ("10.1.2.0/24".to_owned(), 443, 3, 4),
                ("2001:db8:1:2::/64".to_owned(), 443, 4, 4),
            ]
        );
        assert_eq!(folded.len(), exact.len() - 7 + 2);
        assert!(
            folded
                .iter()
                .any(|r| matches!(r, ConnectRule::Exact { ip: a, .. } if *a == ip("::1"))),
            "::1 stays exact"
        );
        assert!(
            connect_rules(&o, 5)
                .iter()
                .all(|r| matches!(r, ConnectRule::Exact { .. }))
        );
        let mut options = opts();
        options.fold_at = 3;
        let text = render(&o, &options, &Safe(vec![]));
        let parsed: toml::Table = toml::from_str(&text).unwrap();
        let allow: Vec<&str> = parsed["policy"]["learned"]["connect"]["allow"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(toml::Value::as_str)
            .collect();
        for want in [
            "[2001:db8:1:2::/64]:443",
            "[2001:db8:1:3::1]:443",
            "[2001:db8:1:2::5]:80",
            "[::1]:80",
            "[fd00:ec2::1]:80",
            "10.1.2.0/24:443",
        ] {
            assert!(allow.contains(&want), "{want} in {text}");
        }
        assert!(!text.contains("::ffff:"), "{text}");
        assert!(
            text.contains("4 addresses seen in 2001:db8:1:2::/64 on port 443: 2001:db8:1:2::1, "),
            "{text}"
        );
        // The policy loads and decides as folded, a mapped connect as IPv4.
        let c: super::super::PolicyConfig =
            toml::from_str(&toml::to_string(&parsed["policy"]["learned"]).unwrap()).unwrap();
        let p = Policy::load("learned", &c).unwrap();
        assert!(!p.check_connect(ip("2001:db8:1:2:ffff::77"), 443).is_deny());
        assert!(p.check_connect(ip("2001:db8:1:2:ffff::77"), 80).is_deny());
        assert!(p.check_connect(ip("2001:db8:1:3::2"), 443).is_deny());
        assert!(!p.check_connect(ip("::ffff:10.1.2.200"), 443).is_deny());
        assert!(!p.check_connect(ip("::1"), 80).is_deny());
        assert!(p.check_connect(ip("::9"), 80).is_deny());
        assert!(p.check_connect(ip("fd00:ec2::254"), 80).is_deny());
    }

    #[test]
    fn stored_devices_parse_as_st_dev() {
        assert_eq!(parse_dev("254:0"), Some(nix::libc::makedev(254, 0)));
        assert_eq!(parse_dev("x"), None);
    }
}

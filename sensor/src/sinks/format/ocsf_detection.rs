//! OCSF for `detection` events: Detection Finding (2004), Create (1).
//!
//! Kept apart from `ocsf.rs` (one `mod` line and one match arm there) so
//! that the mapping moves as a unit.
//!
//! | sensor field | OCSF place |
//! |---|---|
//! | `detection.title` | `finding_info.title`, `message` |
//! | boot id + `:` + `seq` | `finding_info.uid` |
//! | `detection.rule_id`, `rule_file`, matched `event_kind` and `event_seq` | `finding_info.desc` |
//! | `detection.level` | `severity_id`: informational 1, low 2, medium 3, high 4, critical 5; `is_alert` from low up |
//! | `run` | `actor.session.uid`, `actor.app_name`, `actor.user.name`, `unmapped.run` (as for every event) |
//! | `detection` | whole in `unmapped.detection` (tags, process key) |

use super::{Class, Obj, Plan, text_of, u64_of};

/// Severity of a Sigma level.
fn severity(level: &str) -> u64 {
    match level {
        "informational" => 1,
        "low" => 2,
        "high" => 4,
        "critical" => 5,
        _ => 3,
    }
}

impl<'a> Plan<'a> {
    pub(super) fn detection(kind: &'a str, event: &'a Obj, d: &'a Obj) -> Self {
        let mut m = Self::new(kind, Class::Finding, 1, "Create");
        let title = text_of(d, "title").unwrap_or("detection").to_owned();
        let boot = super::obj(event.get("host")).and_then(|h| text_of(h, "boot_id"));
        let seq = u64_of(event, "seq").unwrap_or(0);
        let uid = format!("{}:{seq}", boot.unwrap_or("unknown"));
        let level = text_of(d, "level").unwrap_or("medium");
        m.message = Some(format!(
            "{title} (rule {}, {} {})",
            text_of(d, "rule_id").unwrap_or("?"),
            text_of(d, "event_kind").unwrap_or("?"),
            u64_of(d, "event_seq").unwrap_or(0)
        ));
        m.finding = Some((uid, title, text_of(d, "rule_file")));
        m.severity_id = severity(level);
        m.is_alert = level != "informational";
        m
    }
}

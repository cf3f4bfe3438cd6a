//! Claude Code's session transcripts (format `claude-code`, Claude Code 2.x).
//!
//! Where: `$CLAUDE_CONFIG_DIR` (else `$HOME/.claude`), then
//! `projects/<cwd with every character but [A-Za-z0-9] as '-'>/<session>.jsonl`.
//! What: one JSON object per line. An `assistant` line's `message.content`
//! holds `tool_use` blocks (`id`, `name`, `input`); a `user` line's holds the
//! `tool_result` blocks (`tool_use_id`, `is_error`); each line has its
//! `timestamp` (RFC 3339, UTC). Every other line type is skipped (counted).

use std::{
    path::{Path, PathBuf},
    time::SystemTime,
};

use serde_json::Value;

use super::{INPUT_MAX, Record};

/// The config dir of a run whose first process had `env` (as
/// `/proc/PID/environ` lists it).
#[must_use]
pub fn config_dir(env: &[(String, String)]) -> Option<PathBuf> {
    super::env_dir(env, "CLAUDE_CONFIG_DIR", ".claude")
}

/// The project dir of `cwd` under `config`.
#[must_use]
pub fn project_dir(config: &Path, cwd: &Path) -> PathBuf {
    let munged: String = cwd
        .to_string_lossy()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    config.join("projects").join(munged)
}

/// The records of one line (a line may hold several tool calls or results);
/// `None` for a line that is not a JSON object.
#[must_use]
pub fn parse_line(line: &[u8]) -> Option<Vec<Record>> {
    let v: Value = serde_json::from_slice(line).ok()?;
    let obj = v.as_object()?;
    let Some(time) = obj
        .get("timestamp")
        .and_then(Value::as_str)
        .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
    else {
        return Some(vec![Record::Other]);
    };
    let blocks = obj
        .get("message")
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array);
    let mut out = Vec::new();
    match (obj.get("type").and_then(Value::as_str), blocks) {
        (Some("assistant"), Some(blocks)) => {
            for b in blocks {
                if b.get("type").and_then(Value::as_str) != Some("tool_use") {
                    continue;
                }
                let (Some(id), Some(name)) = (
                    b.get("id").and_then(Value::as_str),
                    b.get("name").and_then(Value::as_str),
                ) else {
                    continue;
                };
                let (input, truncated) = summarize(name, b.get("input"));
                out.push(Record::Call {
                    id: cut(id, super::ID_MAX).0,
                    name: cut(name, super::ID_MAX).0,
                    input,
                    truncated,
                    time,
                });
            }
        }
        (Some("user"), Some(blocks)) => {
            for b in blocks {
                if b.get("type").and_then(Value::as_str) != Some("tool_result") {
                    continue;
                }
                let Some(id) = b.get("tool_use_id").and_then(Value::as_str) else {
                    continue;
                };
                out.push(Record::Result {
                    id: cut(id, super::ID_MAX).0,
                    is_error: b.get("is_error").and_then(Value::as_bool).unwrap_or(false),
                    time,
                });
            }
        }
        _ => {}
    }
    if out.is_empty() {
        out.push(Record::Other);
    }
    Some(out)
}

/// The input as reported: a shell tool's command, else compact JSON; cut to
/// [`INPUT_MAX`] bytes.
fn summarize(name: &str, input: Option<&Value>) -> (String, bool) {
    let Some(input) = input else {
        return (String::new(), false);
    };
    if name == "Bash"
        && let Some(cmd) = input.get("command").and_then(Value::as_str)
    {
        return cut(cmd, INPUT_MAX);
    }
    cut(&input.to_string(), INPUT_MAX)
}

/// `s` cut to at most `max` bytes on a char boundary, and whether it was cut.
pub(super) fn cut(s: &str, max: usize) -> (String, bool) {
    if s.len() <= max {
        return (s.to_owned(), false);
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    (s[..end].to_owned(), true)
}

/// A transcript time in the past of `t` by at most `slack`.
#[must_use]
pub fn not_before(time: SystemTime, t: SystemTime, slack: std::time::Duration) -> bool {
    time + slack >= t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        let env = vec![("HOME".to_owned(), "/home/a".to_owned())];
        assert_eq!(config_dir(&env), Some(PathBuf::from("/home/a/.claude")));
        let env = vec![
            ("HOME".to_owned(), "/home/a".to_owned()),
            ("CLAUDE_CONFIG_DIR".to_owned(), "/tmp/c".to_owned()),
        ];
        assert_eq!(config_dir(&env), Some(PathBuf::from("/tmp/c")));
        assert_eq!(config_dir(&[]), None);
        assert_eq!(
            project_dir(Path::new("/c"), Path::new("/tmp/x.y_z")),
            PathBuf::from("/c/projects/-tmp-x-y-z")
        );
    }

    #[test]
    fn lines() {
        let call = br#"{"type":"assistant","timestamp":"2026-12-05T06:00:00.500Z","message":{"content":[{"type":"text","text":"hi"},{"type":"tool_use","id":"toolu_1","name":"Bash","input":{"command":"echo hi","description":"d"}},{"type":"tool_use","id":"toolu_2","name":"Read","input":{"file_path":"/x"}}]}}"#;
        let r = parse_line(call).unwrap_or_default();
        assert_eq!(r.len(), 2);
        match &r[0] {
            Record::Call {
                id, name, input, ..
            } => {
                assert_eq!(
                    (id.as_str(), name.as_str(), input.as_str()),
                    ("toolu_1", "Bash", "echo hi")
                );
            }
            other => panic!("{other:?}"),
        }
        match &r[1] {
            Record::Call { input, .. } => assert_eq!(input, r#"{"file_path":"/x"}"#),
            other => panic!("{other:?}"),
        }
        let result = br#"{"type":"user","timestamp":"2026-12-05T06:00:01Z","message":{"role":"user","content":[{"tool_use_id":"toolu_1","type":"tool_result","content":"hi","is_error":true}]}}"#;
        match parse_line(result).unwrap_or_default().first() {
            Some(Record::Result { id, is_error, .. }) => {
                assert_eq!(id, "toolu_1");
                assert!(is_error);
            }
            other => panic!("{other:?}"),
        }
        assert!(parse_line(b"{not json").is_none());
        assert!(parse_line(b"[1,2]").is_none());
        assert!(matches!(
            parse_line(br#"{"type":"summary"}"#)
                .unwrap_or_default()
                .first(),
            Some(Record::Other)
        ));
        // A huge command is cut, on a char boundary.
        let long = "é".repeat(INPUT_MAX);
        let line = format!(
            r#"{{"type":"assistant","timestamp":"2026-12-05T06:00:00Z","message":{{"content":[{{"type":"tool_use","id":"a","name":"Bash","input":{{"command":"{long}"}}}}]}}}}"#
        );
        match parse_line(line.as_bytes()).unwrap_or_default().first() {
            Some(Record::Call {
                input, truncated, ..
            }) => {
                assert!(*truncated);
                assert!(input.len() <= INPUT_MAX);
            }
            other => panic!("{other:?}"),
        }
    }
}

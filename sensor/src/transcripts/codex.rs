//! Codex's rollout files (format `codex`, written by Codex CLI 0.x; checked
//! against @openai/codex 0.169.0).
//!
//! Where: `$CODEX_HOME` (else `$HOME/.codex`), then
//! `sessions/YYYY/MM/DD/rollout-<time>-<session id>.jsonl`, the day being the
//! session's start (Codex's local time: the days around the run's start and
//! around now are listed).
//! What: one JSON object per line, `{"timestamp", "type", "payload"}`
//! (RFC 3339 UTC timestamp). A `response_item` line's payload is an item of
//! the Responses API:
//! - `function_call` (`name`, `call_id`, `arguments`: a JSON string), e.g.
//!   `exec_command` (`{"cmd": "..."}`), `shell_command` (`{"command": "..."}`)
//!   or `shell` (`{"command": ["bash", "-lc", "..."]}`);
//! - `local_shell_call` (`call_id`, `action.command`: an argv);
//! - `custom_tool_call` (`name`, `call_id`, `input`: free text, e.g.
//!   `apply_patch`);
//! - `function_call_output` / `custom_tool_call_output` (`call_id`,
//!   `output`: text such as `Process exited with code 0`, or an object).
//!
//! Lines of older versions without the envelope (the item itself, with a
//! `timestamp`) are read the same way. Every other line (session meta, turn
//! context, messages, reasoning, token counts, `event_msg`s) is skipped and
//! counted as `Other`.

use std::{
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use serde_json::Value;

use super::{ID_MAX, INPUT_MAX, Record, claude::cut};

/// Day dirs listed per tick, at most (a long run: the first and last days).
const DAYS_MAX: usize = 16;
const DAY: Duration = Duration::from_secs(86_400);

/// `$CODEX_HOME`, else `$HOME/.codex`, of a run whose first process had
/// `env`.
#[must_use]
pub fn config_dir(env: &[(String, String)]) -> Option<PathBuf> {
    super::env_dir(env, "CODEX_HOME", ".codex")
}

/// The dirs of `sessions` (`$CODEX_HOME/sessions`) that may hold the
/// rollouts of a run that began at `start`, read at `now`: every day from
/// the day before `start` to the day after `now` (UTC days; a day either
/// side covers Codex's local-time names), the first and last few when the
/// run is longer than [`DAYS_MAX`] days.
#[must_use]
pub fn day_dirs(sessions: &Path, start: SystemTime, now: SystemTime) -> Vec<PathBuf> {
    let from = start.checked_sub(DAY).unwrap_or(start);
    let to = now.max(start) + DAY;
    let span = to.duration_since(from).unwrap_or_default();
    let mut days = Vec::new();
    if span <= DAY * (DAYS_MAX as u32 - 1) {
        push_days(sessions, from, to, &mut days);
    } else {
        let half = DAY * (DAYS_MAX as u32 / 2 - 1);
        push_days(sessions, from, from + half, &mut days);
        push_days(sessions, to.checked_sub(half).unwrap_or(to), to, &mut days);
    }
    days
}

/// The day dirs from `from` to `to` (both included, in steps of a day).
fn push_days(sessions: &Path, from: SystemTime, to: SystemTime, days: &mut Vec<PathBuf>) {
    let mut t = from;
    loop {
        let stamp = humantime::format_rfc3339_seconds(t).to_string();
        // "YYYY-MM-DDT...".
        if let (Some(y), Some(m), Some(d)) = (stamp.get(0..4), stamp.get(5..7), stamp.get(8..10)) {
            let dir = sessions.join(y).join(m).join(d);
            if !days.contains(&dir) {
                days.push(dir);
            }
        }
        if t >= to {
            break;
        }
        t = (t + DAY).min(to);
    }
}

/// Whether `path` is named like a rollout file.
#[must_use]
pub fn is_rollout(path: &Path) -> bool {
    path.file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("rollout-") && n.ends_with(".jsonl"))
}

/// Whether calls of tool `name` run a shell command.
#[must_use]
pub fn is_shell(name: &str) -> bool {
    matches!(
        name,
        "exec_command" | "shell" | "shell_command" | "local_shell" | "container.exec"
    )
}

/// Whether an exec with `argv` is Codex's sandbox machinery between the
/// agent and a tool's shell: its helper re-execs (argv[0]
/// `codex-linux-sandbox`, or a `--codex-run-as-*` mode) and bubblewrap.
#[must_use]
pub fn is_helper(argv: &[String]) -> bool {
    let argv0 = argv
        .first()
        .map(|a| a.rsplit('/').next().unwrap_or(a.as_str()));
    matches!(argv0, Some("codex-linux-sandbox" | "bwrap"))
        || argv
            .iter()
            .take(4)
            .any(|a| a.starts_with("--codex-run-as-"))
}

/// Whether `arg` is the script with which Codex checks the shell snapshot
/// it just took, in the run whose config dir (`$CODEX_HOME`) is `config`:
/// `set -e; . "<config>/shell_snapshots/<session id>.tmp-<nonce>"`, the
/// session id a UUID, the nonce decimal digits (0.169.0). Nothing else
/// passes: no other path, no other command around it.
#[must_use]
pub fn is_snapshot_check(arg: &str, config: &Path) -> bool {
    let Some(path) = arg
        .strip_prefix("set -e; . \"")
        .and_then(|rest| rest.strip_suffix('"'))
    else {
        return false;
    };
    // The exact text: the config dir as the run's environment names it.
    let Some(name) = config
        .to_str()
        .and_then(|c| path.strip_prefix(c.trim_end_matches('/')))
        .and_then(|rest| rest.strip_prefix("/shell_snapshots/"))
    else {
        return false;
    };
    let Some((id, nonce)) = name.split_once(".tmp-") else {
        return false;
    };
    let uuid = id.len() == 36
        && id.char_indices().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        });
    uuid && !nonce.is_empty() && nonce.len() <= 40 && nonce.bytes().all(|b| b.is_ascii_digit())
}

/// The records of one line; `None` for a line that is not a JSON object.
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
    let item = match obj.get("type").and_then(Value::as_str) {
        Some("response_item") => match obj.get("payload") {
            Some(p) => p,
            None => return Some(vec![Record::Other]),
        },
        _ => &v,
    };
    Some(vec![parse_item(item, time).unwrap_or(Record::Other)])
}

fn text<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

fn parse_item(item: &Value, time: SystemTime) -> Option<Record> {
    let call_id = text(item, "call_id").or_else(|| text(item, "id"))?;
    let id = cut(call_id, ID_MAX).0;
    match text(item, "type")? {
        "function_call" => {
            let name = text(item, "name")?;
            let (input, truncated) = match item.get("arguments") {
                Some(Value::String(raw)) => match serde_json::from_str::<Value>(raw) {
                    Ok(args) => summarize(name, &args),
                    Err(_) => cut(raw, INPUT_MAX),
                },
                Some(args) => summarize(name, args),
                None => (String::new(), false),
            };
            Some(Record::Call {
                id,
                name: cut(name, ID_MAX).0,
                input,
                truncated,
                time,
            })
        }
        "local_shell_call" => {
            let command = item.get("action").and_then(|a| a.get("command"));
            let (input, truncated) = command.map_or((String::new(), false), command_of);
            Some(Record::Call {
                id,
                name: "local_shell".to_owned(),
                input,
                truncated,
                time,
            })
        }
        "custom_tool_call" => {
            let name = text(item, "name")?;
            let (input, truncated) = match item.get("input") {
                Some(Value::String(s)) => cut(s, INPUT_MAX),
                Some(other) => cut(&other.to_string(), INPUT_MAX),
                None => (String::new(), false),
            };
            Some(Record::Call {
                id,
                name: cut(name, ID_MAX).0,
                input,
                truncated,
                time,
            })
        }
        "function_call_output" | "custom_tool_call_output" => Some(Record::Result {
            id,
            is_error: is_error(item.get("output")),
            time,
        }),
        _ => None,
    }
}

/// The input as reported: a shell tool's command, else compact JSON; cut to
/// [`INPUT_MAX`] bytes.
fn summarize(name: &str, args: &Value) -> (String, bool) {
    if is_shell(name) {
        for key in ["cmd", "command"] {
            if let Some(c) = args.get(key) {
                return command_of(c);
            }
        }
    }
    cut(&args.to_string(), INPUT_MAX)
}

/// A command given as a string, or as an argv: the script of a
/// `SHELL -c`/`-lc` argv, else the argv joined by spaces.
fn command_of(c: &Value) -> (String, bool) {
    match c {
        Value::String(s) => cut(s, INPUT_MAX),
        Value::Array(argv) => {
            let argv: Vec<&str> = argv.iter().filter_map(Value::as_str).collect();
            if let [_, flag, script] = argv[..]
                && matches!(flag, "-c" | "-lc" | "-ic")
            {
                return cut(script, INPUT_MAX);
            }
            cut(&argv.join(" "), INPUT_MAX)
        }
        other => cut(&other.to_string(), INPUT_MAX),
    }
}

/// Whether a call's output says it failed: `success: false`, an exit code
/// other than 0 in its metadata (`shell`) or in its text (`Process exited
/// with code N`, `Exit code: N`).
fn is_error(output: Option<&Value>) -> bool {
    let Some(output) = output else {
        return false;
    };
    if let Some(ok) = output.get("success").and_then(Value::as_bool) {
        return !ok;
    }
    let text = match output {
        Value::String(s) => s.as_str(),
        Value::Object(_) => output.get("content").and_then(Value::as_str).unwrap_or(""),
        _ => "",
    };
    if let Ok(Value::Object(o)) = serde_json::from_str::<Value>(text)
        && let Some(code) = o
            .get("metadata")
            .and_then(|m| m.get("exit_code"))
            .and_then(Value::as_i64)
    {
        return code != 0;
    }
    // Only the head: the command's own output follows.
    let mut end = text.len().min(512);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let head = &text[..end];
    for line in head.lines() {
        for prefix in ["Process exited with code ", "Exit code: "] {
            if let Some(code) = line.strip_prefix(prefix) {
                return code.trim() != "0";
            }
        }
        if line.starts_with("Output:") {
            break;
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    const TS: &str = "2026-12-05T07:40:24.704Z";

    fn one(line: &str) -> Record {
        match parse_line(line.as_bytes()).as_deref() {
            Some([r]) => r.clone(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn paths() {
        let env = vec![("HOME".to_owned(), "/home/a".to_owned())];
        assert_eq!(config_dir(&env), Some(PathBuf::from("/home/a/.codex")));
        let env = vec![
            ("HOME".to_owned(), "/home/a".to_owned()),
            ("CODEX_HOME".to_owned(), "/tmp/c".to_owned()),
        ];
        assert_eq!(config_dir(&env), Some(PathBuf::from("/tmp/c")));
        assert_eq!(config_dir(&[("CODEX_HOME".into(), String::new())]), None);
        assert!(is_rollout(Path::new(
            "/c/sessions/2026/12/05/rollout-2026-12-05T07-40-24-01a2.jsonl"
        )));
        assert!(!is_rollout(Path::new("/c/sessions/2026/12/05/x.jsonl")));
    }

    #[test]
    fn days() {
        let s = Path::new("/c/sessions");
        let t = humantime::parse_rfc3339("2026-12-31T23:00:00Z").unwrap_or(SystemTime::UNIX_EPOCH);
        let d = day_dirs(s, t, t + Duration::from_secs(7200));
        let names: Vec<String> = d
            .iter()
            .map(|p| p.strip_prefix(s).unwrap_or(p).display().to_string())
            .collect();
        assert_eq!(
            names,
            ["2026/12/30", "2026/12/31", "2027/01/01", "2027/01/02"]
        );
        // A long run: bounded, first and last days kept.
        let d = day_dirs(s, t, t + 100 * DAY);
        assert_eq!(d.len(), DAYS_MAX);
        assert!(d[0].ends_with("2026/12/30"));
        assert!(d[DAYS_MAX - 1].ends_with("2027/04/11"));
    }

    #[test]
    fn lines() {
        let call = format!(
            r#"{{"timestamp":"{TS}","ordinal":9,"type":"response_item","payload":{{"type":"function_call","id":"fc_1","name":"exec_command","arguments":"{{\"cmd\": \"echo one\", \"yield_time_ms\": 10000}}","call_id":"call_1"}}}}"#
        );
        match one(&call) {
            Record::Call {
                id,
                name,
                input,
                truncated,
                ..
            } => assert_eq!(
                (id.as_str(), name.as_str(), input.as_str(), truncated),
                ("call_1", "exec_command", "echo one", false)
            ),
            other => panic!("{other:?}"),
        }
        // The older `shell` tool: an argv.
        let call = format!(
            r#"{{"timestamp":"{TS}","type":"response_item","payload":{{"type":"function_call","name":"shell","arguments":"{{\"command\":[\"bash\",\"-lc\",\"ls -la\"]}}","call_id":"c2"}}}}"#
        );
        assert!(matches!(one(&call), Record::Call { input, .. } if input == "ls -la"));
        let call = format!(
            r#"{{"timestamp":"{TS}","type":"function_call","name":"shell","arguments":"{{\"command\":[\"ls\",\"-la\"]}}","call_id":"c3"}}"#
        );
        assert!(matches!(one(&call), Record::Call { input, .. } if input == "ls -la"));
        let call = format!(
            r#"{{"timestamp":"{TS}","type":"response_item","payload":{{"type":"local_shell_call","call_id":"c4","status":"completed","action":{{"type":"exec","command":["sh","-c","id"]}}}}}}"#
        );
        assert!(
            matches!(one(&call), Record::Call { name, input, .. } if name == "local_shell" && input == "id")
        );
        let call = format!(
            r#"{{"timestamp":"{TS}","type":"response_item","payload":{{"type":"custom_tool_call","call_id":"c5","name":"apply_patch","input":"*** Begin Patch"}}}}"#
        );
        assert!(
            matches!(one(&call), Record::Call { name, input, .. } if name == "apply_patch" && input == "*** Begin Patch")
        );
        // Other tools: compact JSON; invalid arguments as they are.
        let call = format!(
            r#"{{"timestamp":"{TS}","type":"response_item","payload":{{"type":"function_call","name":"view_image","arguments":"{{\"path\": \"/x\"}}","call_id":"c6"}}}}"#
        );
        assert!(matches!(one(&call), Record::Call { input, .. } if input == r#"{"path":"/x"}"#));
        let call = format!(
            r#"{{"timestamp":"{TS}","type":"response_item","payload":{{"type":"function_call","name":"exec_command","arguments":"{{not json","call_id":"c7"}}}}"#
        );
        assert!(matches!(one(&call), Record::Call { input, .. } if input == "{not json"));

        // Outputs.
        let out = |output: &str| {
            format!(
                r#"{{"timestamp":"{TS}","type":"response_item","payload":{{"type":"function_call_output","call_id":"call_1","output":{output}}}}}"#
            )
        };
        let err = |output: &str| match one(&out(output)) {
            Record::Result { id, is_error, .. } => {
                assert_eq!(id, "call_1");
                is_error
            }
            other => panic!("{other:?}"),
        };
        assert!(!err(
            r#""Chunk ID: 1\nWall time: 0.0 seconds\nProcess exited with code 0\nOutput:\none\n""#
        ));
        assert!(err(
            r#""Chunk ID: 1\nProcess exited with code 2\nOutput:\n""#
        ));
        // The command's own output cannot claim an exit code.
        assert!(!err(
            r#""Process running with session ID 5\nOutput:\nProcess exited with code 1\n""#
        ));
        assert!(err(
            r#""{\"output\":\"x\",\"metadata\":{\"exit_code\":1,\"duration_seconds\":0.1}}""#
        ));
        assert!(err(r#"{"content":"denied","success":false}"#));
        assert!(!err(r#""Exit code: 0\nWall time: 1 seconds\nOutput:\n""#));

        // Skipped: not JSON, not an object, other records, no timestamp.
        assert!(parse_line(b"{not json").is_none());
        assert!(parse_line(b"[1]").is_none());
        for other in [
            format!(r#"{{"timestamp":"{TS}","type":"session_meta","payload":{{"id":"x"}}}}"#),
            format!(
                r#"{{"timestamp":"{TS}","type":"response_item","payload":{{"type":"message","role":"user","content":[]}}}}"#
            ),
            format!(r#"{{"timestamp":"{TS}","type":"event_msg","payload":{{"type":"token_count"}}}}"#),
            format!(r#"{{"timestamp":"{TS}","type":"response_item"}}"#),
            format!(
                r#"{{"timestamp":"{TS}","type":"response_item","payload":{{"type":"function_call","name":"exec_command"}}}}"#
            ),
            r#"{"type":"response_item","payload":{"type":"function_call","name":"x","call_id":"c"}}"#
                .to_owned(),
            format!(r#"{{"timestamp":"{TS}","type":"response_item","payload":"x"}}"#),
        ] {
            assert_eq!(one(&other), Record::Other, "{other}");
        }

        // A huge command is cut on a char boundary; a huge id too.
        let long = "é".repeat(INPUT_MAX);
        let id = "i".repeat(2 * ID_MAX);
        let call = serde_json::json!({"timestamp": TS, "type": "response_item", "payload": {
            "type": "function_call", "name": "exec_command", "call_id": id,
            "arguments": serde_json::json!({"cmd": long}).to_string()}});
        match one(&call.to_string()) {
            Record::Call {
                id,
                input,
                truncated,
                ..
            } => {
                assert!(truncated && input.len() <= INPUT_MAX && id.len() == ID_MAX);
            }
            other => panic!("{other:?}"),
        }
    }
}

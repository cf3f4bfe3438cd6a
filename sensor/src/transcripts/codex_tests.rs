//! The follower with Codex rollouts (format `codex`).

use std::{io::Write as _, os::unix::fs::symlink, time::UNIX_EPOCH};

use super::*;
use crate::event::Process;

/// 2026-12-05T06:00:00Z.
const T0: u64 = 1_796_450_400;

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(T0 * 1000 + ms)
}

fn stamp(ms: u64) -> String {
    crate::event::rfc3339(at(ms)).to_string()
}

fn run_start() -> Event {
    let mut e = crate::sinks::tests::event(1, Kind::RunStart, true);
    e.time = Timestamp(at(0));
    e.process = Some(Process {
        key: "k-codex".into(),
        pid: 100,
        uid: nix::unistd::getuid().as_raw(),
        ..Process::default()
    });
    e
}

fn act(seq: u64, kind: Kind, ms: u64, key: &str, parent: &str, argv: Option<&[&str]>) -> Event {
    let mut e = crate::sinks::tests::event(seq, kind, true);
    e.time = Timestamp(at(ms));
    e.process = Some(Process {
        key: key.into(),
        parent_key: parent.into(),
        pid: u32::try_from(seq).unwrap_or(0),
        argv: argv.map(|a| a.iter().map(|s| (*s).to_owned()).collect()),
        ..Process::default()
    });
    e
}

fn call_line(ms: u64, id: &str, tool: &str, cmd: &str) -> String {
    let args = serde_json::json!({ "cmd": cmd, "yield_time_ms": 10000 }).to_string();
    serde_json::json!({"timestamp": stamp(ms), "type": "response_item", "payload": {
        "type": "function_call", "id": "fc", "name": tool, "arguments": args, "call_id": id}})
    .to_string()
}

fn output_line(ms: u64, id: &str, code: i32) -> String {
    let out =
        format!("Chunk ID: 1\nWall time: 0.0 seconds\nProcess exited with code {code}\nOutput:\n");
    serde_json::json!({"timestamp": stamp(ms), "type": "response_item", "payload": {
        "type": "function_call_output", "call_id": id, "output": out}})
    .to_string()
}

struct Fixture {
    dir: tempfile::TempDir,
    t: Transcripts,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("codex-home");
        std::fs::create_dir_all(config.join("sessions/2026/12/05")).unwrap();
        let mut t = Transcripts::new(HashMap::from([("codex".to_owned(), Format::Codex)]));
        t.start(
            &run_start(),
            Format::Codex,
            Ok(Source {
                dir: config.join("sessions"),
                config,
            }),
        );
        Self { dir, t }
    }

    fn day(&self) -> PathBuf {
        self.dir.path().join("codex-home/sessions/2026/12/05")
    }

    fn append(&self, name: &str, lines: &[String]) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.day().join(name))
            .unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
    }
}

const ROLLOUT: &str = "rollout-2026-12-05T06-00-00-01a2.jsonl";

#[test]
fn codex_calls_are_linked_through_the_sandbox_helpers() {
    let mut fx = Fixture::new();
    let curl = "curl -s http://127.0.0.1:9/x";
    let helper = |c: &'static str| -> Vec<&'static str> {
        vec![
            "codex-linux-sandbox",
            "--sandbox-policy-cwd",
            "/w",
            "--",
            "/bin/bash",
            "-lc",
            c,
        ]
    };
    let h1 = helper("echo one");
    // Call 2 as the kernel sees it: the helpers' argv cut before the
    // command (8 KiB), the shell's first script a wrapper that re-execs it.
    let cut: &[&str] = &[
        "codex-linux-sandbox",
        "--sandbox-policy-cwd",
        "/w",
        "--",
        "/bin/bash",
        "-c",
        "__CODEX_SNAPSHOT_OVERRIDE_SET_0=1",
    ];
    let events = [
        // Call 1: the helper (its argv has the command), bwrap, the shell.
        act(10, Kind::ProcessSpawn, 1_100, "k-h1", "k-codex", None),
        act(11, Kind::ProcessExec, 1_110, "k-h1", "k-codex", Some(&h1)),
        act(12, Kind::ProcessSpawn, 1_120, "k-bw1", "k-h1", None),
        act(
            13,
            Kind::ProcessExec,
            1_130,
            "k-bw1",
            "k-h1",
            Some(&["bwrap", "--new-session"]),
        ),
        act(14, Kind::ProcessSpawn, 1_140, "k-sh1", "k-bw1", None),
        act(
            15,
            Kind::ProcessExec,
            1_150,
            "k-sh1",
            "k-bw1",
            Some(&["/bin/bash", "-c", "echo one"]),
        ),
        // Call 2: process setup, the helper, bwrap, the helper inside it,
        // the shell, the curl and its connect.
        act(20, Kind::ProcessSpawn, 3_100, "k-h2", "k-codex", None),
        act(
            21,
            Kind::ProcessExec,
            3_105,
            "k-h2",
            "k-codex",
            Some(&["/proc/self/exe", "--codex-run-as-process-setup", "49"]),
        ),
        act(22, Kind::ProcessExec, 3_110, "k-h2", "k-codex", Some(cut)),
        act(23, Kind::ProcessSpawn, 3_111, "k-bw2", "k-h2", None),
        act(
            24,
            Kind::ProcessExec,
            3_112,
            "k-bw2",
            "k-h2",
            Some(&["bwrap", "--new-session"]),
        ),
        act(25, Kind::ProcessSpawn, 3_113, "k-in2", "k-bw2", None),
        act(26, Kind::ProcessExec, 3_114, "k-in2", "k-bw2", Some(cut)),
        act(27, Kind::ProcessSpawn, 3_120, "k-sh2", "k-in2", None),
        act(
            28,
            Kind::ProcessExec,
            3_121,
            "k-sh2",
            "k-in2",
            Some(&cut[4..]),
        ),
        act(
            29,
            Kind::ProcessExec,
            3_130,
            "k-sh2",
            "k-in2",
            Some(&["/bin/bash", "-c", curl]),
        ),
        act(
            30,
            Kind::ProcessExec,
            3_150,
            "k-sh2",
            "k-in2",
            Some(&["curl", "-s", "http://127.0.0.1:9/x"]),
        ),
        act(31, Kind::NetworkConnect, 3_160, "k-sh2", "k-in2", None),
        // Codex's own probe at start-up, and a process of the agent in the
        // window that is no helper: no call's.
        act(
            40,
            Kind::ProcessExec,
            300,
            "k-git",
            "k-codex",
            Some(&["git", "rev-parse"]),
        ),
        act(
            41,
            Kind::ProcessExec,
            3_140,
            "k-codex",
            "k-node",
            Some(&["codex", "exec", "go"]),
        ),
    ];
    for e in &events {
        fx.t.on_event(e);
    }
    // Another file in the day dir that is not a rollout: not read.
    std::fs::write(fx.day().join("notes.jsonl"), "{not json\n").unwrap();
    fx.append(
        ROLLOUT,
        &[
            r#"{"timestamp":"2026-12-05T06:00:00.100Z","type":"session_meta","payload":{"id":"01a2","cwd":"/w"}}"#.to_owned(),
            call_line(1_000, "call_1", "exec_command", "echo one"),
            output_line(1_500, "call_1", 0),
            call_line(3_000, "call_2", "exec_command", curl),
            output_line(3_500, "call_2", 7),
            r#"{"timestamp":"2026-12-05T06:00:03.600Z","type":"brand_new_record","payload":{}}"#.to_owned(),
        ],
    );
    let found = fx.t.tick(at(4_000));
    let calls: Vec<&ToolCall> = found
        .iter()
        .filter_map(|f| match f {
            Found::Call(_, c) => Some(c),
            Found::Unobserved(..) | Found::Unreadable(..) | Found::Unexplained(..) => None,
        })
        .collect();
    assert_eq!(calls.len(), 2, "{found:?}");
    assert_eq!(found.len(), 2, "nothing else: {found:?}");
    let seqs = |c: &ToolCall| c.processes.iter().map(|l| l.seq).collect::<Vec<_>>();
    assert_eq!(
        (
            calls[0].id.as_str(),
            calls[0].name.as_str(),
            calls[0].input.as_str()
        ),
        ("call_1", "exec_command", "echo one")
    );
    assert_eq!(calls[0].is_error, Some(false));
    assert_eq!(calls[0].result_time, Some(Timestamp(at(1_500))));
    assert_eq!(seqs(calls[0]), [10, 11, 12, 13, 14, 15]);
    assert_eq!(
        (calls[1].id.as_str(), calls[1].input.as_str()),
        ("call_2", curl)
    );
    assert_eq!(calls[1].is_error, Some(true));
    assert_eq!(
        seqs(calls[1]),
        [20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31]
    );
    assert!(calls[1].transcript.ends_with(ROLLOUT));
    // Two session records and one unknown: counted, not fatal.
    assert_eq!(fx.t.counts.other_lines, 2);
    assert_eq!(fx.t.counts.skipped_lines, 0);
}

#[test]
fn codex_unobserved_and_other_tools() {
    let mut fx = Fixture::new();
    fx.append(
        ROLLOUT,
        &[
            call_line(
                1_000,
                "call_1",
                "exec_command",
                "curl -s http://evil.example/",
            ),
            output_line(1_200, "call_1", 0),
            call_line(1_300, "call_2", "write_stdin", ""),
            output_line(1_400, "call_2", 0),
        ],
    );
    let found = fx.t.tick(at(2_000));
    let unobserved: Vec<&str> = found
        .iter()
        .filter_map(|f| match f {
            Found::Unobserved(_, c) => Some(c.id.as_str()),
            Found::Call(..) | Found::Unreadable(..) | Found::Unexplained(..) => None,
        })
        .collect();
    assert_eq!(unobserved, ["call_1"], "{found:?}");
    assert_eq!(found.len(), 3, "{found:?}");
}

#[test]
fn codex_hostile_files_and_dirs() {
    let mut fx = Fixture::new();
    // A rollout that is a symlink to a secret, and a day dir that is a
    // symlink out of CODEX_HOME.
    let secret = fx.dir.path().join("secret");
    std::fs::write(&secret, "root:x:0:0\n").unwrap();
    symlink(&secret, fx.day().join("rollout-0-evil.jsonl")).unwrap();
    let outside = fx.dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(
        outside.join("rollout-1.jsonl"),
        format!(
            "{}\n{}\n",
            call_line(1_000, "call_x", "exec_command", "id"),
            output_line(1_100, "call_x", 0)
        ),
    )
    .unwrap();
    symlink(
        &outside,
        fx.dir.path().join("codex-home/sessions/2026/12/06"),
    )
    .unwrap();
    // Invalid JSON and a huge line in the real rollout, then a real call.
    fx.append(
        ROLLOUT,
        &[
            "{not json".to_owned(),
            "x".repeat(LINE_MAX + 1),
            call_line(1_000, "call_1", "exec_command", "echo ok"),
            output_line(1_100, "call_1", 0),
        ],
    );
    let found = fx.t.tick(at(2_000));
    let issues: Vec<&TranscriptIssue> = found
        .iter()
        .filter_map(|f| match f {
            Found::Unreadable(_, i) => Some(i),
            Found::Call(..) | Found::Unobserved(..) | Found::Unexplained(..) => None,
        })
        .collect();
    assert_eq!(issues.len(), 1, "{found:?}");
    // The first problem is reported (the day dirs are listed before the
    // files are opened): the day dir out of CODEX_HOME.
    assert!(
        issues[0].reason.contains("outside")
            && issues[0]
                .path
                .as_deref()
                .is_some_and(|p| p.ends_with("2026/12/06")),
        "{issues:?}"
    );
    let ids: Vec<&str> = found
        .iter()
        .filter_map(|f| match f {
            Found::Call(_, c) => Some(c.id.as_str()),
            Found::Unobserved(..) | Found::Unreadable(..) | Found::Unexplained(..) => None,
        })
        .collect();
    assert_eq!(
        ids,
        ["call_1"],
        "the call outside CODEX_HOME is not read: {found:?}"
    );
    assert!(!format!("{found:?}").contains("root:x"));
    assert_eq!(fx.t.counts.skipped_lines, 2);
    // Reported once per run.
    let again = fx.t.tick(at(3_000));
    assert!(again.is_empty(), "{again:?}");
}

/// A fake rollout in `dir` (outside CODEX_HOME) claiming call `call_evil`.
fn plant_evil(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("rollout-9-evil.jsonl"),
        format!(
            "{}\n{}\n",
            call_line(1_000, "call_evil", "exec_command", "cat /etc/shadow"),
            output_line(1_100, "call_evil", 0)
        ),
    )
    .unwrap();
}

fn call_ids(found: &[Found]) -> Vec<String> {
    found
        .iter()
        .filter_map(|f| match f {
            Found::Call(_, c) => Some(c.id.clone()),
            Found::Unobserved(..) | Found::Unreadable(..) | Found::Unexplained(..) => None,
        })
        .collect()
}

/// The attack: CODEX_HOME, once the run is followed, moved away and
/// replaced by a symlink to a dir holding a fake rollout. The reader goes on
/// reading the dir it opened (through its fd), never the new target, and
/// says the config dir was replaced.
#[test]
fn codex_a_config_dir_replaced_by_a_symlink_is_not_followed() {
    let mut fx = Fixture::new();
    fx.append(
        ROLLOUT,
        &[
            call_line(1_000, "call_1", "exec_command", "echo ok"),
            output_line(1_100, "call_1", 0),
        ],
    );
    assert_eq!(call_ids(&fx.t.tick(at(2_000))), ["call_1"]);
    let outside = fx.dir.path().join("outside");
    plant_evil(&outside.join("sessions/2026/12/05"));
    let home = fx.dir.path().join("codex-home");
    std::fs::rename(&home, fx.dir.path().join("codex-home.old")).unwrap();
    symlink(&outside, &home).unwrap();
    // The agent goes on writing in the dir it had (now codex-home.old).
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(
            fx.dir
                .path()
                .join("codex-home.old/sessions/2026/12/05")
                .join(ROLLOUT),
        )
        .unwrap();
    writeln!(
        f,
        "{}",
        call_line(2_000, "call_2", "exec_command", "echo 2")
    )
    .unwrap();
    writeln!(f, "{}", output_line(2_100, "call_2", 0)).unwrap();
    let found = fx.t.tick(at(3_000));
    assert_eq!(call_ids(&found), ["call_2"], "{found:?}");
    let issues: Vec<&TranscriptIssue> = found
        .iter()
        .filter_map(|f| match f {
            Found::Unreadable(_, i) => Some(i),
            Found::Call(..) | Found::Unobserved(..) | Found::Unexplained(..) => None,
        })
        .collect();
    assert_eq!(issues.len(), 1, "{found:?}");
    assert!(issues[0].reason.contains("replaced"), "{issues:?}");
}

/// The attack: a day dir swapped (atomically, `RENAME_EXCHANGE`, in a
/// loop) with a symlink to a dir outside CODEX_HOME holding a fake rollout,
/// racing the reader between its check of the dir and its open of the
/// files in it. The reader must never read the fake rollout, and must say
/// what it refused.
#[test]
fn codex_a_day_dir_swapped_for_a_symlink_is_never_followed() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let mut fx = Fixture::new();
    let outside = fx.dir.path().join("outside/05");
    plant_evil(&outside);
    let month = fx.dir.path().join("codex-home/sessions/2026/12");
    symlink(&outside, month.join("swap")).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flipper = {
        let stop = Arc::clone(&stop);
        let month = month.clone();
        std::thread::spawn(move || {
            let mut flips = 0u64;
            while !stop.load(Ordering::Relaxed) {
                nix::fcntl::renameat2(
                    nix::fcntl::AT_FDCWD,
                    &month.join("05"),
                    nix::fcntl::AT_FDCWD,
                    &month.join("swap"),
                    nix::fcntl::RenameFlags::RENAME_EXCHANGE,
                )
                .unwrap();
                flips += 1;
            }
            flips
        })
    };
    let mut all = Vec::new();
    let began = std::time::Instant::now();
    let mut ticks = 0;
    while began.elapsed() < Duration::from_secs(3) {
        all.extend(fx.t.tick(at(2_000 + ticks)));
        ticks += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let flips = flipper.join().unwrap();
    // Leave the symlink in place: the last read must refuse it.
    if !std::fs::symlink_metadata(month.join("05"))
        .unwrap()
        .file_type()
        .is_symlink()
    {
        std::fs::rename(month.join("swap"), month.join("tmp")).unwrap();
        std::fs::rename(month.join("05"), month.join("swap")).unwrap();
        std::fs::rename(month.join("tmp"), month.join("05")).unwrap();
    }
    all.extend(fx.t.tick(at(2_000 + ticks)));
    eprintln!("{ticks} reads, {flips} swaps");
    assert!(flips > 100 && ticks > 100, "{flips} swaps, {ticks} reads");
    assert!(
        !call_ids(&all).iter().any(|id| id == "call_evil"),
        "the fake rollout outside CODEX_HOME was read: {all:?}"
    );
    let issues: Vec<&TranscriptIssue> = all
        .iter()
        .filter_map(|f| match f {
            Found::Unreadable(_, i) => Some(i),
            Found::Call(..) | Found::Unobserved(..) | Found::Unexplained(..) => None,
        })
        .collect();
    assert_eq!(issues.len(), 1, "{issues:?}");
    assert!(issues[0].reason.contains("symlink"), "{issues:?}");
}

#[test]
fn codex_a_symlinked_rollout_is_not_followed() {
    let mut fx = Fixture::new();
    symlink("/etc/shadow", fx.day().join("rollout-0-evil.jsonl")).unwrap();
    let found = fx.t.tick(at(2_000));
    match &found[..] {
        [Found::Unreadable(_, i)] => {
            assert!(i.reason.contains("cannot open"), "{i:?}");
            assert!(
                i.path
                    .as_deref()
                    .is_some_and(|p| p.ends_with("rollout-0-evil.jsonl"))
            );
        }
        other => panic!("{other:?}"),
    }
}

fn with_exe(mut e: Event, path: &str) -> Event {
    if let Some(p) = &mut e.process {
        p.exe = Some(path.to_owned());
    }
    e
}

fn unexplained_of(found: &[Found]) -> Vec<(u64, &'static str, Option<String>)> {
    found
        .iter()
        .filter_map(|f| match f {
            Found::Unexplained(_, _, u) => Some((
                u.exec_seq,
                u.reason,
                u.after_call.as_ref().map(|c| c.id.clone()),
            )),
            Found::Call(..) | Found::Unreadable(..) | Found::Unobserved(..) => None,
        })
        .collect()
}

fn entries(list: &[&str]) -> Arc<[Infra]> {
    list.iter()
        .map(|e| Infra::parse(e).unwrap().unwrap())
        .collect::<Vec<_>>()
        .into()
}

/// The sha256 of `text`, as an entry's `sha256:HEX` argument.
fn sha256_hex(text: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Stands for Codex's snapshot script (the shipped entry pins 0.169.0's
/// real one; the kernel test checks it against the real CLI).
const SNAPSHOT_SCRIPT: &str = "echo '# Snapshot file'\ndeclare -f\nalias -p\n";
const SESSION: &str = "01a245cc-b84d-7c23-9304-5a18fc44fc3e";

#[test]
fn codex_shell_snapshot_is_infrastructure_in_its_exact_shapes_only() {
    let mut fx = Fixture::new();
    let config = fx.dir.path().join("codex-home");
    let check = format!(
        "set -e; . \"{}/shell_snapshots/{SESSION}.tmp-1796467374161665086\"",
        config.display()
    );
    let lookalike_check = format!("set -e; . \"/tmp/evil/shell_snapshots/{SESSION}.tmp-1\"",);
    let check_and_more = format!(
        "set -e; . \"{}/shell_snapshots/{SESSION}.tmp-1\" ; curl \"http://evil.example\"",
        config.display()
    );
    let script_and_more = format!("{SNAPSHOT_SCRIPT}curl http://evil.example/x\n");
    let evil = "curl -s http://evil.example/x";
    if let Some(f) = fx.t.runs.get_mut("r") {
        f.infra = entries(&[
            &format!("bash -lc sha256:{}", sha256_hex(SNAPSHOT_SCRIPT)),
            "bash -c @codex-snapshot-check",
        ]);
    }
    let bash = |seq: u64, ms: u64, key: &str, argv: &[&str]| {
        with_exe(
            act(seq, Kind::ProcessExec, ms, key, "k-codex", Some(argv)),
            "/usr/bin/bash",
        )
    };
    let events = [
        // The snapshot, its pipeline, its check: the agent's.
        bash(10, 100, "k-snap", &["/bin/bash", "-lc", SNAPSHOT_SCRIPT]),
        act(11, Kind::ProcessSpawn, 110, "k-sub", "k-snap", None),
        with_exe(
            act(
                12,
                Kind::ProcessExec,
                120,
                "k-sub",
                "k-snap",
                Some(&["awk", "1"]),
            ),
            "/usr/bin/mawk",
        ),
        bash(13, 200, "k-check", &["/bin/bash", "-c", &check]),
        // A tool call's login shell run by codex itself (no sandbox): its
        // call's, not the snapshot.
        bash(20, 1_100, "k-tool", &["/bin/bash", "-lc", evil]),
        // The same shapes with anything else in them, started by no call.
        bash(30, 3_000, "k-x1", &["/bin/bash", "-lc", evil]),
        bash(31, 3_010, "k-x2", &["/bin/bash", "-lc", &script_and_more]),
        bash(32, 3_020, "k-x3", &["/bin/bash", "-c", &lookalike_check]),
        bash(33, 3_030, "k-x4", &["/bin/bash", "-c", &check_and_more]),
        // The snapshot script, but not run by codex: a tool's (no call).
        with_exe(
            act(
                34,
                Kind::ProcessExec,
                3_040,
                "k-x5",
                "k-x1",
                Some(&["/bin/bash", "-lc", SNAPSHOT_SCRIPT]),
            ),
            "/usr/bin/bash",
        ),
    ];
    for e in &events {
        fx.t.on_event(e);
    }
    fx.append(
        ROLLOUT,
        &[
            call_line(1_000, "call_1", "exec_command", evil),
            output_line(1_500, "call_1", 0),
        ],
    );
    let mut found = fx.t.tick(at(2_000));
    found.extend(fx.t.tick(at(9_000)));
    let calls: Vec<&ToolCall> = found
        .iter()
        .filter_map(|f| match f {
            Found::Call(_, c) => Some(c),
            _ => None,
        })
        .collect();
    assert_eq!(calls.len(), 1, "{found:?}");
    assert!(calls[0].processes.iter().any(|l| l.seq == 20), "{found:?}");
    assert_eq!(
        unexplained_of(&found),
        [
            (30, "no_tool_call", None),
            (31, "no_tool_call", None),
            (32, "no_tool_call", None),
            (33, "no_tool_call", None),
        ],
        "{found:?}"
    );
}

#[test]
fn snapshot_check_shape() {
    let c = Path::new("/h/.codex");
    let ok = format!("set -e; . \"/h/.codex/shell_snapshots/{SESSION}.tmp-123\"");
    assert!(codex::is_snapshot_check(&ok, c));
    assert!(codex::is_snapshot_check(&ok, Path::new("/h/.codex/")));
    for bad in [
        format!("set -e; . \"/h/.codex/shell_snapshots/{SESSION}.tmp-\""),
        format!("set -e; . \"/h/.codex/shell_snapshots/{SESSION}.tmp-1x\""),
        format!("set -e; . \"/h/.codex/shell_snapshots/{SESSION}.sh\""),
        format!("set -e; . \"/h/.codex/shell_snapshots/../{SESSION}.tmp-1\""),
        format!("set -e; . \"/h/.codex/./shell_snapshots/{SESSION}.tmp-1\""),
        format!("set -e; . \"/h/.codex/shell_snapshots/{SESSION}.tmp-1\"; id"),
        format!(
            "set -e; . \"/h/.codex/shell_snapshots/x{}.tmp-1\"",
            &SESSION[1..]
        ),
        format!("set -e; . \"/h/.codexx/shell_snapshots/{SESSION}.tmp-1\""),
        format!("set -e;  . \"/h/.codex/shell_snapshots/{SESSION}.tmp-1\""),
    ] {
        assert!(!codex::is_snapshot_check(&bad, c), "{bad}");
    }
}

#[test]
fn infrastructure_entries_that_cannot_be_read_are_refused() {
    assert_eq!(
        Infra::parse("bash -lc sha256:00"),
        Err(EntryError::Sha256("sha256:00".into()))
    );
    let not_hex = format!("sha256:{}", "g".repeat(64));
    assert_eq!(
        Infra::parse(&format!("bash -lc {not_hex}")),
        Err(EntryError::Sha256(not_hex))
    );
    assert_eq!(
        Infra::parse("bash -c @no-such-shape")
            .unwrap_err()
            .to_string(),
        "\"@no-such-shape\": unknown (known: @codex-snapshot-check)"
    );
    assert_eq!(
        Infra::parse("@codex-snapshot-check"),
        Err(EntryError::NoExecutable("@codex-snapshot-check".into()))
    );
    assert!(Infra::parse("@agent --sandbox-policy-cwd").is_ok());
    assert_eq!(
        Infra::parse("@someone-else x").unwrap_err().to_string(),
        "\"@someone-else\" is no executable (known: @agent)"
    );
    assert!(Infra::parse(&format!("bash -lc sha256:{}", "0".repeat(64))).is_ok());
}

/// Codex's sandbox chain (process setup, the helper, bubblewrap and its
/// probe, the helper inside it) is the agent's; what it runs is not: the
/// call's shell is linked to the call, a process the chain runs that no
/// call explains is `tool.unexplained`, and so is a job that outlived its
/// call. A lookalike helper under the tool's shell is no helper.
#[test]
fn codex_sandbox_helpers_are_the_agents_but_not_what_they_run() {
    let mut fx = Fixture::new();
    if let Some(f) = fx.t.runs.get_mut("r") {
        f.helpers = entries(&[
            "@agent --codex-run-as-*",
            "@agent --sandbox-policy-cwd",
            "bwrap",
            "/usr/bin/true",
        ]);
    }
    const CODEX: &str = "/n/@openai/codex-linux-x64/vendor/x/bin/codex";
    if let Some(f) = fx.t.runs.get_mut("r") {
        f.agent_exes = vec![CODEX.to_owned()];
    }
    const BWRAP: &str = "/n/@openai/codex-linux-x64/vendor/x/codex-resources/bwrap";
    let sandbox: &[&str] = &["codex-linux-sandbox", "--sandbox-policy-cwd", "/w", "--"];
    // One sandbox chain from the codex process, starting at `ms`; returns
    // its events and the key of the process it runs the command in.
    let chain = |seq: u64, ms: u64, n: &str| -> Vec<Event> {
        let k = |s: &str| format!("k-{s}{n}");
        vec![
            act(seq, Kind::ProcessSpawn, ms, &k("h"), "k-codex", None),
            with_exe(
                act(
                    seq + 1,
                    Kind::ProcessExec,
                    ms + 1,
                    &k("h"),
                    "k-codex",
                    Some(&["/proc/self/exe", "--codex-run-as-process-setup", "37"]),
                ),
                CODEX,
            ),
            with_exe(
                act(
                    seq + 2,
                    Kind::ProcessExec,
                    ms + 2,
                    &k("h"),
                    "k-codex",
                    Some(sandbox),
                ),
                CODEX,
            ),
            act(seq + 3, Kind::ProcessSpawn, ms + 3, &k("p"), &k("h"), None),
            with_exe(
                act(
                    seq + 4,
                    Kind::ProcessExec,
                    ms + 4,
                    &k("p"),
                    &k("h"),
                    Some(&["bwrap", "--as-pid-1"]),
                ),
                BWRAP,
            ),
            act(seq + 5, Kind::ProcessSpawn, ms + 5, &k("t"), &k("p"), None),
            with_exe(
                act(
                    seq + 6,
                    Kind::ProcessExec,
                    ms + 6,
                    &k("t"),
                    &k("p"),
                    Some(&["/usr/bin/true"]),
                ),
                "/usr/bin/true",
            ),
            act(seq + 7, Kind::ProcessSpawn, ms + 7, &k("b"), &k("h"), None),
            with_exe(
                act(
                    seq + 8,
                    Kind::ProcessExec,
                    ms + 8,
                    &k("b"),
                    &k("h"),
                    Some(&["bwrap", "--as-pid-1"]),
                ),
                BWRAP,
            ),
            act(seq + 9, Kind::ProcessSpawn, ms + 9, &k("i"), &k("b"), None),
            with_exe(
                act(
                    seq + 10,
                    Kind::ProcessExec,
                    ms + 10,
                    &k("i"),
                    &k("b"),
                    Some(sandbox),
                ),
                CODEX,
            ),
            act(
                seq + 11,
                Kind::ProcessSpawn,
                ms + 11,
                &k("s"),
                &k("i"),
                None,
            ),
        ]
    };
    let mut events = chain(10, 1_100, "1");
    events.extend([
        // Call 1's shell and its background job, whose exec comes after
        // the call's result.
        with_exe(
            act(
                30,
                Kind::ProcessExec,
                1_120,
                "k-s1",
                "k-i1",
                Some(&["/bin/bash", "-c", "sleep 3 & echo one"]),
            ),
            "/usr/bin/bash",
        ),
        act(31, Kind::ProcessSpawn, 1_130, "k-job", "k-s1", None),
        with_exe(
            act(
                32,
                Kind::ProcessExec,
                4_000,
                "k-job",
                "k-s1",
                Some(&["cat", "/etc/hostname"]),
            ),
            "/usr/bin/cat",
        ),
        // A bwrap lookalike under the call's shell, after the call: no
        // helper (the chain ended at the shell).
        act(33, Kind::ProcessSpawn, 4_100, "k-fake", "k-s1", None),
        with_exe(
            act(
                34,
                Kind::ProcessExec,
                4_110,
                "k-fake",
                "k-s1",
                Some(&["bwrap"]),
            ),
            "/tmp/bwrap",
        ),
        // The call's shell itself re-execs a lookalike after the call
        // (its parent is a helper, but it left the chain with its first
        // exec), and that starts a helper lookalike in turn.
        with_exe(
            act(
                35,
                Kind::ProcessExec,
                4_200,
                "k-s1",
                "k-i1",
                Some(&["bwrap", "--as-pid-1"]),
            ),
            "/tmp/x/bwrap",
        ),
        act(36, Kind::ProcessSpawn, 4_210, "k-s1c", "k-s1", None),
        with_exe(
            act(37, Kind::ProcessExec, 4_220, "k-s1c", "k-s1", Some(sandbox)),
            "/tmp/x/codex",
        ),
    ]);
    // A second chain that runs a command no call asked for.
    events.extend(chain(40, 5_000, "2"));
    events.push(with_exe(
        act(
            60,
            Kind::ProcessExec,
            5_020,
            "k-s2",
            "k-i2",
            Some(&["/bin/bash", "-c", "curl -s http://evil.example/x"]),
        ),
        "/usr/bin/bash",
    ));
    // A helper lookalike started by codex itself (not its binary): no
    // helper.
    events.push(act(70, Kind::ProcessSpawn, 6_000, "k-lk", "k-codex", None));
    events.push(with_exe(
        act(
            71,
            Kind::ProcessExec,
            6_010,
            "k-lk",
            "k-codex",
            Some(sandbox),
        ),
        "/tmp/x/codex",
    ));
    for e in &events {
        fx.t.on_event(e);
    }
    fx.append(
        ROLLOUT,
        &[
            call_line(1_000, "call_1", "exec_command", "sleep 3 & echo one"),
            output_line(1_500, "call_1", 0),
        ],
    );
    let mut found = fx.t.tick(at(2_000));
    found.extend(fx.t.tick(at(12_000)));
    let linked: Vec<u64> = found
        .iter()
        .filter_map(|f| match f {
            Found::Call(_, c) => Some(c.processes.iter().map(|l| l.seq)),
            _ => None,
        })
        .flatten()
        .collect();
    assert!(linked.contains(&30), "{found:?}");
    assert_eq!(
        unexplained_of(&found),
        [
            (32, "after_call", Some("call_1".to_owned())),
            (34, "after_call", Some("call_1".to_owned())),
            (35, "after_call", Some("call_1".to_owned())),
            (60, "no_tool_call", None),
            (71, "no_tool_call", None),
        ],
        "{found:?}"
    );
    // The hole this closes: the same chain listed as `infrastructure`
    // (everything under it the agent's) reports none of them (but the
    // lookalike started by codex itself).
    let mut before = Fixture::new();
    if let Some(f) = before.t.runs.get_mut("r") {
        f.infra = entries(&["@agent --codex-run-as-*", "@agent --sandbox-policy-cwd"]);
        f.agent_exes = vec![CODEX.to_owned()];
    }
    for e in &events {
        before.t.on_event(e);
    }
    before.append(
        ROLLOUT,
        &[
            call_line(1_000, "call_1", "exec_command", "sleep 3 & echo one"),
            output_line(1_500, "call_1", 0),
        ],
    );
    let mut found = before.t.tick(at(2_000));
    found.extend(before.t.tick(at(12_000)));
    assert_eq!(
        unexplained_of(&found),
        [(71, "no_tool_call", None)],
        "{found:?}"
    );
}

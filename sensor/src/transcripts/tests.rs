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

fn uid() -> u32 {
    nix::unistd::getuid().as_raw()
}

fn run_start() -> Event {
    let mut e = crate::sinks::tests::event(1, Kind::RunStart, true);
    e.time = Timestamp(at(0));
    e.process = Some(Process {
        key: "k-claude".into(),
        pid: 100,
        uid: uid(),
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

fn call_line(ms: u64, id: &str, cmd: &str) -> String {
    format!(
        r#"{{"type":"assistant","timestamp":"{}","message":{{"content":[{{"type":"tool_use","id":"{id}","name":"Bash","input":{{"command":{}}}}}]}}}}"#,
        stamp(ms),
        serde_json::Value::String(cmd.to_owned())
    )
}

fn result_line(ms: u64, id: &str) -> String {
    format!(
        r#"{{"type":"user","timestamp":"{}","message":{{"content":[{{"type":"tool_result","tool_use_id":"{id}","content":"ok"}}]}}}}"#,
        stamp(ms)
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    t: Transcripts,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("claude");
        let project = claude::project_dir(&config, Path::new("/work/x"));
        std::fs::create_dir_all(&project).unwrap();
        let mut t = Transcripts::new(HashMap::from([("a".to_owned(), Format::ClaudeCode)]));
        t.start(
            &run_start(),
            Format::ClaudeCode,
            Ok(Source {
                config,
                dir: project,
            }),
        );
        Self { dir, t }
    }

    fn project(&self) -> PathBuf {
        claude::project_dir(&self.dir.path().join("claude"), Path::new("/work/x"))
    }

    fn append(&self, name: &str, text: &str) {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.project().join(name))
            .unwrap();
        f.write_all(text.as_bytes()).unwrap();
    }
}

fn calls(found: &[Found]) -> Vec<&ToolCall> {
    found
        .iter()
        .filter_map(|f| match f {
            Found::Call(_, c) => Some(c),
            Found::Unreadable(..) | Found::Unobserved(..) | Found::Unexplained(..) => None,
        })
        .collect()
}

fn issues(found: &[Found]) -> Vec<&TranscriptIssue> {
    found
        .iter()
        .filter_map(|f| match f {
            Found::Unreadable(_, i) => Some(i),
            Found::Call(..) | Found::Unobserved(..) | Found::Unexplained(..) => None,
        })
        .collect()
}

#[test]
fn calls_are_linked_to_their_processes() {
    let mut fx = Fixture::new();
    let wrapped = |c: &str| {
        format!(
            "source /root/.claude/shell-snapshots/s.sh && eval '{c}' < /dev/null && pwd -P >| /tmp/claude-1-cwd"
        )
    };
    let s1 = wrapped("echo one");
    let s2 = wrapped("curl -s http://127.0.0.1:9/x");
    // The shell of call 1, then the shell of call 2, its curl and its connect.
    let events = [
        act(10, Kind::ProcessSpawn, 1_100, "k-sh1", "k-claude", None),
        act(
            11,
            Kind::ProcessExec,
            1_110,
            "k-sh1",
            "k-claude",
            Some(&["/bin/bash", "-c", "-l", s1.as_str()]),
        ),
        act(20, Kind::ProcessSpawn, 3_100, "k-sh2", "k-claude", None),
        act(
            21,
            Kind::ProcessExec,
            3_110,
            "k-sh2",
            "k-claude",
            Some(&["/bin/bash", "-c", "-l", s2.as_str()]),
        ),
        act(22, Kind::ProcessSpawn, 3_120, "k-curl", "k-sh2", None),
        act(
            23,
            Kind::ProcessExec,
            3_130,
            "k-curl",
            "k-sh2",
            Some(&["curl", "-s", "http://127.0.0.1:9/x"]),
        ),
        act(24, Kind::NetworkConnect, 3_140, "k-curl", "k-sh2", None),
        // Not in the run's calls: claude's own start-up shell.
        act(
            30,
            Kind::ProcessExec,
            500,
            "k-snap",
            "k-claude",
            Some(&["/bin/bash", "-c", "snapshot"]),
        ),
    ];
    for e in &events {
        fx.t.on_event(e);
    }
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n{}\n",
            call_line(1_000, "toolu_1", "echo one"),
            result_line(1_500, "toolu_1"),
            call_line(3_000, "toolu_2", "curl -s http://127.0.0.1:9/x"),
        ),
    );
    let found = fx.t.tick(at(3_200));
    let c = calls(&found);
    assert_eq!(c.len(), 1, "{found:?}");
    assert_eq!(c[0].id, "toolu_1");
    assert_eq!(c[0].input, "echo one");
    assert_eq!(c[0].result_time, Some(Timestamp(at(1_500))));
    let seqs: Vec<u64> = c[0].processes.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [10, 11]);
    // Its result, and a repeated line: reported once.
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n",
            result_line(3_500, "toolu_2"),
            call_line(1_000, "toolu_1", "echo one")
        ),
    );
    let found = fx.t.tick(at(4_000));
    let c = calls(&found);
    assert_eq!(c.len(), 1, "{found:?}");
    assert_eq!(c[0].id, "toolu_2");
    let seqs: Vec<u64> = c[0].processes.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [20, 21, 22, 23, 24]);
    assert!(issues(&found).is_empty());
    assert_eq!(fx.t.counts().calls, 2);
}

#[test]
fn a_call_without_result_is_emitted_at_the_run_end() {
    let mut fx = Fixture::new();
    fx.append(
        "s.jsonl",
        &format!("{}\n", call_line(1_000, "toolu_9", "sleep 100")),
    );
    assert!(calls(&fx.t.tick(at(2_000))).is_empty());
    let mut end = crate::sinks::tests::event(50, Kind::RunEnd, true);
    end.time = Timestamp(at(3_000));
    fx.t.on_event(&end);
    let found = fx.t.tick(at(3_500));
    let c = calls(&found);
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].result_time, None);
    // Forgotten after that.
    assert!(fx.t.tick(at(4_000)).is_empty());
    assert!(fx.t.runs.is_empty());
}

#[test]
fn hostile_lines_are_skipped_and_reported_once() {
    let mut fx = Fixture::new();
    let huge = "x".repeat(LINE_MAX + 10);
    fx.append(
        "s.jsonl",
        &format!(
            "{{not json\n{huge}\n{}\n{}\n",
            call_line(1_000, "toolu_1", "true"),
            result_line(1_100, "toolu_1")
        ),
    );
    let found = fx.t.tick(at(2_000));
    assert_eq!(calls(&found).len(), 1);
    let i = issues(&found);
    assert_eq!(i.len(), 1, "{found:?}");
    assert_eq!(i[0].skipped_lines, 2);
    // More bad lines: counted, not reported again.
    fx.append("s.jsonl", "]]\n");
    assert!(issues(&fx.t.tick(at(3_000))).is_empty());
    assert_eq!(fx.t.counts().skipped_lines, 3);
}

#[test]
fn a_huge_line_in_pieces_is_skipped() {
    let mut fx = Fixture::new();
    // A line longer than the bound, written in two appends.
    fx.append("s.jsonl", &"y".repeat(LINE_MAX - 5));
    assert!(calls(&fx.t.tick(at(1_000))).is_empty());
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n{}\n",
            "y".repeat(100),
            call_line(1_000, "toolu_1", "true"),
            result_line(1_100, "toolu_1")
        ),
    );
    let found = fx.t.tick(at(2_000));
    assert_eq!(calls(&found).len(), 1, "{found:?}");
    assert_eq!(fx.t.counts().skipped_lines, 1);
}

#[test]
fn symlinks_are_not_followed() {
    let mut fx = Fixture::new();
    let outside = fx.dir.path().join("secret.jsonl");
    std::fs::write(
        &outside,
        format!(
            "{}\n{}\n",
            call_line(1_000, "toolu_x", "leak"),
            result_line(1_100, "toolu_x")
        ),
    )
    .unwrap();
    symlink(&outside, fx.project().join("evil.jsonl")).unwrap();
    let found = fx.t.tick(at(2_000));
    assert!(calls(&found).is_empty(), "{found:?}");
    let i = issues(&found);
    assert_eq!(i.len(), 1);
    assert!(i[0].reason.contains("cannot open"), "{}", i[0].reason);
}

#[test]
fn a_project_dir_outside_the_config_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("claude");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(config.join("projects")).unwrap();
    std::fs::create_dir_all(&elsewhere).unwrap();
    let project = claude::project_dir(&config, Path::new("/w"));
    symlink(&elsewhere, &project).unwrap();
    std::fs::write(
        elsewhere.join("s.jsonl"),
        format!(
            "{}\n{}\n",
            call_line(1_000, "toolu_x", "x"),
            result_line(1_100, "toolu_x")
        ),
    )
    .unwrap();
    let mut t = Transcripts::new(HashMap::from([("a".to_owned(), Format::ClaudeCode)]));
    t.start(
        &run_start(),
        Format::ClaudeCode,
        Ok(Source {
            config,
            dir: project,
        }),
    );
    let found = t.tick(at(2_000));
    assert!(calls(&found).is_empty());
    assert!(issues(&found)[0].reason.contains("outside"), "{found:?}");
}

#[test]
fn a_rotated_transcript_is_read_from_its_start() {
    let mut fx = Fixture::new();
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n",
            call_line(1_000, "toolu_1", "a"),
            result_line(1_100, "toolu_1")
        ),
    );
    assert_eq!(calls(&fx.t.tick(at(2_000))).len(), 1);
    // Replaced by a shorter file (another inode).
    let path = fx.project().join("s.jsonl");
    std::fs::remove_file(&path).unwrap();
    // Shorter, so that it is seen as new even if its inode is the old one's.
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n",
            call_line(2_000, "t2", "b"),
            result_line(2_100, "t2")
        ),
    );
    let found = fx.t.tick(at(3_000));
    let c = calls(&found);
    assert_eq!(c.len(), 1, "{found:?}");
    assert_eq!(c[0].id, "t2");
}

/// inotify: the run is read when its transcript changes (a new file: in
/// full; an append: only the file written to), with no poll.
#[test]
fn a_change_wakes_the_reader() {
    let mut fx = Fixture::new();
    assert!(fx.t.tick(at(500)).is_empty());
    assert_eq!(fx.t.watches(), 1, "the project dir is watched");
    assert!(fx.t.wake(at(600)).is_empty(), "nothing changed");
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n",
            call_line(1_000, "toolu_1", "a"),
            result_line(1_100, "toolu_1")
        ),
    );
    let found = fx.t.wake(at(2_000));
    assert_eq!(calls(&found).len(), 1, "{found:?}");
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n",
            call_line(2_000, "toolu_2", "b"),
            result_line(2_100, "toolu_2")
        ),
    );
    let found = fx.t.wake(at(3_000));
    let c = calls(&found);
    assert_eq!(c.len(), 1, "{found:?}");
    assert_eq!(c[0].id, "toolu_2");
    // The poll is due a second after the last full read (the wake on the
    // new file; the append read only that file), not before.
    assert_eq!(fx.t.next_read(at(2_500)), Some(Duration::from_millis(500)));
}

/// A project dir made after the run began: its nearest existing parent is
/// watched, and its making wakes the reader.
#[test]
fn a_dir_made_later_wakes_the_reader() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("claude");
    std::fs::create_dir_all(config.join("projects")).unwrap();
    let project = claude::project_dir(&config, Path::new("/w"));
    let mut t = Transcripts::new(HashMap::from([("a".to_owned(), Format::ClaudeCode)]));
    t.start(
        &run_start(),
        Format::ClaudeCode,
        Ok(Source {
            config,
            dir: project.clone(),
        }),
    );
    assert!(t.tick(at(500)).is_empty());
    assert_eq!(t.watches(), 1, "projects/ is watched");
    std::fs::create_dir(&project).unwrap();
    std::fs::write(
        project.join("s.jsonl"),
        format!(
            "{}\n{}\n",
            call_line(1_000, "toolu_x", "x"),
            result_line(1_100, "toolu_x")
        ),
    )
    .unwrap();
    let found = t.wake(at(2_000));
    assert_eq!(calls(&found).len(), 1, "{found:?}");
    assert_eq!(t.watches(), 2, "and now the project dir");
}

/// Cost of following a busy run, the way the daemon does it now (woken by
/// inotify, at most every [`WAKE_GAP`], and polled when [`Transcripts::next_read`]
/// says) and the way it did (a full read every 250 ms): the reader thread's
/// CPU while a writer appends 60 lines a second (a call, its
/// result and a 1.5 KB message each time) for 10 s, and while it writes
/// nothing (a run waiting for its model), with one transcript in the project
/// dir and with 200 old sessions beside it (figures, not a
/// check; a shared machine makes them noisy):
/// `cargo test -p sensor --lib follow_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement"]
fn follow_cost() {
    const FOR: Duration = Duration::from_secs(10);
    for (lines_per_s, old_sessions) in [(60, 0), (60, 200), (0, 0), (0, 200)] {
        for inotify in [true, false] {
            let mut fx = Fixture::new();
            for i in 0..old_sessions {
                fx.append(&format!("old-{i}.jsonl"), "{\"type\":\"summary\"}\n");
                let f = File::options()
                    .append(true)
                    .open(fx.project().join(format!("old-{i}.jsonl")))
                    .unwrap();
                f.set_modified(SystemTime::now() - Duration::from_secs(86_400))
                    .unwrap();
            }
            // The run began now (the old sessions are older).
            let mut start = run_start();
            start.time = Timestamp(SystemTime::now());
            let source = fx.t.runs.values().next().unwrap().source.clone().unwrap();
            fx.t = Transcripts::new(HashMap::from([("a".to_owned(), Format::ClaudeCode)]));
            fx.t.start(&start, Format::ClaudeCode, Ok(source));
            let project = fx.project();
            let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let writer = {
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(project.join("busy.jsonl"))
                        .unwrap();
                    let filler = format!(
                        r#"{{"type":"assistant","timestamp":"{}","message":{{"content":[{{"type":"text","text":"{}"}}]}}}}"#,
                        crate::event::rfc3339(SystemTime::now()),
                        "z".repeat(1_500)
                    );
                    let mut i = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        if lines_per_s == 0 {
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                        let now = crate::event::rfc3339(SystemTime::now()).to_string();
                        let line = match i % 3 {
                            0 => format!(
                                r#"{{"type":"assistant","timestamp":"{now}","message":{{"content":[{{"type":"tool_use","id":"t{i}","name":"Bash","input":{{"command":"echo {i}"}}}}]}}}}"#
                            ),
                            1 => format!(
                                r#"{{"type":"user","timestamp":"{now}","message":{{"content":[{{"type":"tool_result","tool_use_id":"t{}","content":"ok"}}]}}}}"#,
                                i - 1
                            ),
                            _ => filler.clone(),
                        };
                        writeln!(f, "{line}").unwrap();
                        i += 1;
                        std::thread::sleep(Duration::from_millis(1_000 / lines_per_s));
                    }
                    i
                })
            };
            let began = std::time::Instant::now();
            let cpu0 = thread_cpu();
            let mut calls_seen = 0;
            let mut wakes = 0u64;
            let mut in_wake = Duration::ZERO;
            while began.elapsed() < FOR {
                let found = if inotify {
                    let wait =
                        fx.t.next_read(SystemTime::now())
                            .unwrap_or(Duration::from_secs(1));
                    let fd = fx.t.wake_fd().unwrap();
                    let raw = std::os::fd::AsRawFd::as_raw_fd(&fd);
                    // SAFETY: `fd` holds the inotify instance open meanwhile.
                    let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
                    let mut fds = [nix::poll::PollFd::new(
                        borrowed,
                        nix::poll::PollFlags::POLLIN,
                    )];
                    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
                    let ready = nix::poll::poll(&mut fds, ms).unwrap_or(0) > 0;
                    if ready {
                        wakes += 1;
                        let c0 = thread_cpu();
                        let f = fx.t.wake(SystemTime::now());
                        in_wake += thread_cpu().saturating_sub(c0);
                        std::thread::sleep(WAKE_GAP);
                        f
                    } else {
                        fx.t.poll(SystemTime::now())
                    }
                } else {
                    std::thread::sleep(Duration::from_millis(250));
                    fx.t.tick(SystemTime::now())
                };
                calls_seen += calls(&found).len();
            }
            let cpu = thread_cpu().saturating_sub(cpu0);
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            let lines = writer.join().unwrap();
            eprintln!(
                "{} {lines_per_s} lines/s, {old_sessions} old sessions: {lines} lines written, {calls_seen} calls read, {wakes} wakes ({in_wake:?} in them); reader CPU {:.1} ms in {:.1} s = {:.3} % of a core",
                if inotify {
                    "inotify + poll"
                } else {
                    "250 ms poll (before)"
                },
                cpu.as_secs_f64() * 1000.0,
                began.elapsed().as_secs_f64(),
                cpu.as_secs_f64() * 100.0 / began.elapsed().as_secs_f64()
            );
            assert!(calls_seen > 0 || lines == 0);
        }
    }
}

#[test]
fn an_unresolved_source_is_reported() {
    let mut t = Transcripts::new(HashMap::from([("a".to_owned(), Format::ClaudeCode)]));
    t.start(
        &run_start(),
        Format::ClaudeCode,
        Err(SourceError::NoHome("CLAUDE_CONFIG_DIR")),
    );
    let found = t.tick(at(1_000));
    assert_eq!(
        issues(&found)[0].reason,
        "neither CLAUDE_CONFIG_DIR nor HOME is set"
    );
    assert!(t.tick(at(2_000)).is_empty());
}

#[test]
fn calls_before_the_run_are_not_its() {
    let mut fx = Fixture::new();
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n",
            call_line(0, "old", "x").replace(&stamp(0), &stamp(0).replace("2026", "2025")),
            result_line(100, "old")
        ),
    );
    assert!(calls(&fx.t.tick(at(2_000))).is_empty());
}

fn unobserved(found: &[Found]) -> Vec<&ToolCall> {
    found
        .iter()
        .filter_map(|f| match f {
            Found::Unobserved(_, c) => Some(c),
            Found::Call(..) | Found::Unreadable(..) | Found::Unexplained(..) => None,
        })
        .collect()
}

#[test]
fn a_shell_call_that_never_ran_is_unobserved() {
    let mut fx = Fixture::new();
    let script = "eval 'echo ran' < /dev/null";
    fx.t.on_event(&act(
        10,
        Kind::ProcessExec,
        1_100,
        "k-sh",
        "k-claude",
        Some(&["/bin/bash", "-c", script]),
    ));
    let failed = r#"{"type":"user","timestamp":"TS","message":{"content":[{"type":"tool_result","tool_use_id":"toolu_3","is_error":true}]}}"#
        .replace("TS", &stamp(3_100));
    let ok = |ms, id| {
        result_line(ms, id).replace(r#""content":"ok""#, r#""content":"ok","is_error":false"#)
    };
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n",
            call_line(1_000, "toolu_1", "echo ran"),
            ok(1_500, "toolu_1"),
            call_line(2_000, "toolu_2", "curl http://evil.example/never-ran"),
            ok(2_500, "toolu_2"),
            call_line(3_000, "toolu_3", "rm -rf /nope"),
            failed,
        ),
    );
    let found = fx.t.tick(at(5_000));
    assert_eq!(calls(&found).len(), 3, "{found:?}");
    let u = unobserved(&found);
    // The one that ran is not; the one the agent says failed is not.
    assert_eq!(u.len(), 1, "{found:?}");
    assert_eq!(u[0].id, "toolu_2");
    assert!(u[0].processes.is_empty());
}

#[test]
fn quoted_commands_match() {
    let forms = command_forms("echo 'a b'");
    assert!(
        forms
            .iter()
            .any(|f| "eval 'echo '\\''a b'\\''' < /dev/null".contains(f.as_str()))
    );
}

#[test]
fn kept_events_are_bounded() {
    let mut fx = Fixture::new();
    let long = "a".repeat(8 << 10);
    for seq in 0..2_000u64 {
        fx.t.on_event(&act(
            seq + 10,
            Kind::ProcessExec,
            1_000,
            "k",
            "p",
            Some(&["sh", "-c", long.as_str()]),
        ));
    }
    let f = &fx.t.runs["r"];
    assert!(f.acts_bytes <= ACTS_BYTES, "{}", f.acts_bytes);
    assert!(f.acts.len() < 2_000 && !f.acts.is_empty());
    assert_eq!(f.acts.back().map(|a| a.seq), Some(2_009));
    assert_eq!(f.acts_bytes, f.acts.iter().map(Act::bytes).sum::<usize>());
}

/// Cost of following (figures, not a check):
/// `cargo test -p sensor --lib tick_cost -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement"]
fn tick_cost() {
    let mut fx = Fixture::new();
    let filler = format!(
        r#"{{"type":"attachment","timestamp":"{}","attachment":"{}"}}"#,
        stamp(1),
        "z".repeat(1_500)
    );
    let mut text = String::new();
    for i in 0..5_000u64 {
        let id = format!("toolu_{i}");
        text.push_str(&call_line(1_000 + i, &id, "echo hi"));
        text.push('\n');
        text.push_str(&result_line(1_000 + i, &id));
        text.push('\n');
        text.push_str(&filler);
        text.push('\n');
    }
    fx.append("s.jsonl", &text);
    let t0 = std::time::Instant::now();
    let mut n = 0;
    for _ in 0..10 {
        n += calls(&fx.t.tick(at(100_000))).len();
    }
    let busy = t0.elapsed();
    let t1 = std::time::Instant::now();
    for _ in 0..1_000 {
        fx.t.tick(at(100_000));
    }
    let idle = t1.elapsed() / 1_000;
    eprintln!(
        "{} bytes, 15000 lines, {n} calls read in {busy:?} ({:.1} µs/line); an idle tick (1 file): {idle:?}",
        text.len(),
        busy.as_secs_f64() * 1e6 / 15_000.0
    );
    assert_eq!(n, 5_000);
}

fn unexplained(found: &[Found]) -> Vec<(&Process, &Unexplained)> {
    found
        .iter()
        .filter_map(|f| match f {
            Found::Unexplained(_, p, u) => Some((&**p, u)),
            Found::Call(..) | Found::Unreadable(..) | Found::Unobserved(..) => None,
        })
        .collect()
}

fn exe(mut e: Event, path: &str) -> Event {
    if let Some(p) = &mut e.process {
        p.exe = Some(path.to_owned());
    }
    e
}

#[test]
fn events_of_an_open_call_are_labelled_as_they_go_out() {
    let mut fx = Fixture::new();
    let label = |l: Option<CallRef>| l.map(|c| c.id);
    // The call is in the transcript before its shell starts (the read is
    // made at the exec, not at a tick).
    fx.append(
        "s.jsonl",
        &format!("{}\n", call_line(1_000, "toolu_1", "curl -s http://x/")),
    );
    let script = "source s.sh && eval 'curl -s http://x/' < /dev/null";
    let sh = act(
        11,
        Kind::ProcessExec,
        1_100,
        "k-sh",
        "k-claude",
        Some(&["bash", "-c", script]),
    );
    assert_eq!(label(fx.t.on_event(&sh)), Some("toolu_1".to_owned()));
    let spawn = act(12, Kind::ProcessSpawn, 1_110, "k-curl", "k-sh", None);
    assert_eq!(label(fx.t.on_event(&spawn)), Some("toolu_1".to_owned()));
    let curl = act(
        13,
        Kind::ProcessExec,
        1_120,
        "k-curl",
        "k-sh",
        Some(&["curl", "-s", "http://x/"]),
    );
    assert_eq!(label(fx.t.on_event(&curl)), Some("toolu_1".to_owned()));
    let connect = act(14, Kind::NetworkConnect, 1_130, "k-curl", "k-sh", None);
    assert_eq!(label(fx.t.on_event(&connect)), Some("toolu_1".to_owned()));
    // The agent itself is never labelled.
    let own = act(15, Kind::NetworkConnect, 1_140, "k-claude", "k-init", None);
    assert_eq!(label(fx.t.on_event(&own)), None);
    // Its result: what its processes do after it (and the slack) is not the call's.
    fx.append("s.jsonl", &format!("{}\n", result_line(1_500, "toolu_1")));
    let found = fx.t.tick(at(2_000));
    let c = calls(&found);
    assert_eq!(c.len(), 1, "{found:?}");
    let seqs: Vec<u64> = c[0].processes.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [11, 12, 13, 14]);
    let late = act(16, Kind::NetworkConnect, 3_000, "k-curl", "k-sh", None);
    assert_eq!(label(fx.t.on_event(&late)), None);
    assert!(unexplained(&fx.t.tick(at(9_000))).is_empty());
}

#[test]
fn a_call_read_late_labels_the_events_after_it() {
    let mut fx = Fixture::new();
    let label = |l: Option<CallRef>| l.map(|c| c.id);
    // The shell starts before the agent wrote its call: not labelled.
    let script = "eval 'sleep 1; curl http://y/' < /dev/null";
    let sh = act(
        11,
        Kind::ProcessExec,
        1_100,
        "k-sh",
        "k-claude",
        Some(&["bash", "-c", script]),
    );
    assert_eq!(label(fx.t.on_event(&sh)), None);
    std::thread::sleep(EAGER_EVERY);
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n",
            call_line(1_000, "toolu_9", "sleep 1; curl http://y/")
        ),
    );
    // Its child's exec: the transcript is read again, the shell's arguments
    // hold the call's command.
    let curl = act(
        13,
        Kind::ProcessExec,
        2_100,
        "k-curl",
        "k-sh",
        Some(&["curl", "http://y/"]),
    );
    assert_eq!(label(fx.t.on_event(&curl)), Some("toolu_9".to_owned()));
    fx.append("s.jsonl", &format!("{}\n", result_line(2_500, "toolu_9")));
    let found = fx.t.tick(at(3_000));
    let c = calls(&found);
    assert_eq!(c.len(), 1, "{found:?}");
    let seqs: Vec<u64> = c[0].processes.iter().map(|l| l.seq).collect();
    assert_eq!(seqs, [11, 13], "the unlabelled shell is linked by the call");
    assert!(unexplained(&fx.t.tick(at(9_000))).is_empty());
}

#[test]
fn processes_no_call_explains_are_unexplained_once_per_tree() {
    let mut fx = Fixture::new();
    if let Some(f) = fx.t.runs.get_mut("r") {
        f.infra = ["git", "bash -c -l SNAPSHOT_FILE=*"]
            .into_iter()
            .filter_map(|e| Infra::parse(e).ok().flatten())
            .collect::<Vec<_>>()
            .into();
    }
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n",
            call_line(1_000, "toolu_1", "(sleep 2; cat /etc/hostname) &"),
            result_line(1_300, "toolu_1")
        ),
    );
    let events = [
        // The agent's own helpers: git, the snapshot shell and its child.
        exe(
            act(
                5,
                Kind::ProcessExec,
                200,
                "k-git",
                "k-claude",
                Some(&["git", "status"]),
            ),
            "/usr/bin/git",
        ),
        exe(
            act(
                6,
                Kind::ProcessExec,
                300,
                "k-snap",
                "k-claude",
                Some(&["/bin/bash", "-c", "-l", "SNAPSHOT_FILE=/x\n..."]),
            ),
            "/usr/bin/bash",
        ),
        exe(
            act(
                7,
                Kind::ProcessExec,
                310,
                "k-id",
                "k-snap",
                Some(&["id", "-u"]),
            ),
            "/usr/bin/id",
        ),
        // The call's shell, its background subshell, whose exec comes
        // after the call's result.
        exe(
            act(
                11,
                Kind::ProcessExec,
                1_100,
                "k-sh",
                "k-claude",
                Some(&["/bin/bash", "-c", "eval '(sleep 2; cat /etc/hostname) &'"]),
            ),
            "/usr/bin/bash",
        ),
        act(12, Kind::ProcessSpawn, 1_110, "k-sub", "k-sh", None),
        exe(
            act(
                13,
                Kind::ProcessExec,
                1_120,
                "k-sleep",
                "k-sub",
                Some(&["sleep", "2"]),
            ),
            "/usr/bin/sleep",
        ),
        exe(
            act(
                14,
                Kind::ProcessExec,
                3_200,
                "k-sub",
                "k-sh",
                Some(&["cat", "/etc/hostname"]),
            ),
            "/usr/bin/cat",
        ),
        // Injected under the agent, not infrastructure: a git lookalike by
        // name only in argv[0], and its child.
        exe(
            act(
                20,
                Kind::ProcessExec,
                4_000,
                "k-evil",
                "k-claude",
                Some(&["git", "x"]),
            ),
            "/tmp/evil",
        ),
        exe(
            act(
                21,
                Kind::ProcessExec,
                4_100,
                "k-evil2",
                "k-evil",
                Some(&["sh"]),
            ),
            "/usr/bin/dash",
        ),
        // git started by the call's shell is not the agent's own.
    ];
    for e in &events {
        fx.t.on_event(e);
    }
    // Too early for the execs after the result.
    let found = fx.t.tick(at(4_200));
    assert_eq!(calls(&found).len(), 1, "{found:?}");
    let u = unexplained(&found);
    let early: Vec<u64> = u.iter().map(|(_, x)| x.exec_seq).collect();
    assert!(early.is_empty(), "{early:?}");
    let found = fx.t.tick(at(7_000));
    let u = unexplained(&found);
    let got: Vec<(u64, &str, Option<&str>)> = u
        .iter()
        .map(|(_, x)| {
            (
                x.exec_seq,
                x.reason,
                x.after_call.as_ref().map(|c| c.id.as_str()),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            (14, "after_call", Some("toolu_1")),
            (20, "no_tool_call", None)
        ],
        "{found:?}"
    );
    assert_eq!(u[1].0.key, "k-evil");
    // Nothing is reported twice.
    assert!(unexplained(&fx.t.tick(at(9_000))).is_empty());
}

#[test]
fn infrastructure_entries_match_exe_and_first_arguments() {
    let p = |exe: &str, argv: &[&str]| Process {
        exe: Some(exe.to_owned()),
        argv: Some(argv.iter().map(|a| (*a).to_owned()).collect()),
        ..Process::default()
    };
    let git = Infra::parse("git").unwrap().unwrap();
    assert!(git.matches(&p("/usr/bin/git", &["git", "status"]), None));
    assert!(!git.matches(&p("/tmp/evil", &["git"]), None));
    let abs = Infra::parse("/usr/bin/git").unwrap().unwrap();
    assert!(abs.matches(&p("/usr/bin/git", &["x"]), None));
    assert!(!abs.matches(&p("/opt/git", &["git"]), None));
    let env = Infra::parse("bash -c env").unwrap().unwrap();
    assert!(env.matches(&p("/usr/bin/bash", &["/bin/bash", "-c", "env"]), None));
    assert!(!env.matches(
        &p("/usr/bin/bash", &["/bin/bash", "-c", "env; curl x"]),
        None
    ));
    assert!(!env.matches(&p("/usr/bin/bash", &["/bin/bash", "-c"]), None));
    let snap = Infra::parse("bash -c -l SNAPSHOT_FILE=*").unwrap().unwrap();
    assert!(snap.matches(
        &p(
            "/usr/bin/bash",
            &["bash", "-c", "-l", "SNAPSHOT_FILE=/a\nb"]
        ),
        None
    ));
    assert!(!snap.matches(&p("/usr/bin/bash", &["bash", "-c", "-l", "curl x"]), None));
    assert!(Infra::parse("  ").unwrap().is_none());
    // A script by its absolute path, run by its shell; a relative entry
    // never matches a script (anyone can name one so).
    let probe = Infra::parse("/usr/bin/lsb_release -a").unwrap().unwrap();
    assert!(probe.matches(
        &p("/usr/bin/dash", &["/bin/sh", "/usr/bin/lsb_release", "-a"]),
        None
    ));
    assert!(!probe.matches(
        &p("/usr/bin/dash", &["/bin/sh", "/usr/bin/lsb_release", "-x"]),
        None
    ));
    assert!(!probe.matches(
        &p("/usr/bin/dash", &["/bin/sh", "/tmp/lsb_release", "-a"]),
        None
    ));
    assert!(!probe.matches(
        &p(
            "/usr/bin/python3",
            &["python3", "/usr/bin/lsb_release", "-a"]
        ),
        None
    ));
    let relative = Infra::parse("lsb_release").unwrap().unwrap();
    assert!(!relative.matches(&p("/usr/bin/dash", &["/bin/sh", "/tmp/lsb_release"]), None));
}

/// As above, but nothing of the call was labelled as it went out (the
/// agent's transcript write came after all of it): the `tool.call` link
/// labels the call's processes, and the job still names the call.
#[test]
fn a_background_job_of_an_unlabelled_call_names_the_call_it_outlived() {
    let mut fx = Fixture::new();
    let script = "eval '(sleep 2; cat /etc/hostname) &' < /dev/null";
    fx.t.on_event(&act(
        11,
        Kind::ProcessExec,
        1_100,
        "k-sh",
        "k-claude",
        Some(&["bash", "-c", script]),
    ));
    fx.t.on_event(&act(12, Kind::ProcessSpawn, 1_110, "k-sub", "k-sh", None));
    let sleep = act(
        13,
        Kind::ProcessExec,
        1_120,
        "k-sleep",
        "k-sub",
        Some(&["sleep", "2"]),
    );
    assert_eq!(fx.t.on_event(&sleep), None, "no call known yet");
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n",
            call_line(1_000, "toolu_1", "(sleep 2; cat /etc/hostname) &"),
            result_line(1_300, "toolu_1")
        ),
    );
    let found = fx.t.tick(at(1_600));
    assert!(
        found
            .iter()
            .any(|f| matches!(f, Found::Call(_, c) if c.id == "toolu_1")),
        "{found:?}"
    );
    let cat = act(
        14,
        Kind::ProcessExec,
        3_200,
        "k-sub",
        "k-init",
        Some(&["cat", "/etc/hostname"]),
    );
    assert_eq!(fx.t.on_event(&cat), None);
    let found = fx.t.tick(at(6_000));
    let got: Vec<(u64, &str, Option<&str>)> = unexplained(&found)
        .iter()
        .map(|(_, x)| {
            (
                x.exec_seq,
                x.reason,
                x.after_call.as_ref().map(|c| c.id.as_str()),
            )
        })
        .collect();
    assert_eq!(got, [(14, "after_call", Some("toolu_1"))], "{found:?}");
}

#[test]
fn a_reparented_background_job_names_the_call_it_outlived() {
    let mut fx = Fixture::new();
    let script = "eval '(sleep 2; cat /etc/hostname) &' < /dev/null";
    // The shell and its subshell go out before the call is on disk.
    fx.t.on_event(&act(
        11,
        Kind::ProcessExec,
        1_100,
        "k-sh",
        "k-claude",
        Some(&["bash", "-c", script]),
    ));
    fx.t.on_event(&act(12, Kind::ProcessSpawn, 1_110, "k-sub", "k-sh", None));
    fx.append(
        "s.jsonl",
        &format!(
            "{}\n{}\n",
            call_line(1_000, "toolu_1", "(sleep 2; cat /etc/hostname) &"),
            result_line(1_300, "toolu_1")
        ),
    );
    std::thread::sleep(EAGER_EVERY);
    // The sleep's exec reads the call: the shell is the call's.
    let sleep = act(
        13,
        Kind::ProcessExec,
        1_120,
        "k-sleep",
        "k-sub",
        Some(&["sleep", "2"]),
    );
    assert_eq!(
        fx.t.on_event(&sleep).map(|c| c.id),
        Some("toolu_1".to_owned())
    );
    // The subshell's exec after the call's result, its parent gone: the
    // reaper is its parent now.
    let cat = act(
        14,
        Kind::ProcessExec,
        3_200,
        "k-sub",
        "k-init",
        Some(&["cat", "/etc/hostname"]),
    );
    assert_eq!(fx.t.on_event(&cat), None);
    let found = fx.t.tick(at(6_000));
    let u = unexplained(&found);
    let got: Vec<(u64, &str, Option<&str>)> = u
        .iter()
        .map(|(_, x)| {
            (
                x.exec_seq,
                x.reason,
                x.after_call.as_ref().map(|c| c.id.as_str()),
            )
        })
        .collect();
    assert_eq!(got, [(14, "after_call", Some("toolu_1"))], "{found:?}");
}

fn grep_line(ms: u64, id: &str, pattern: &str) -> String {
    format!(
        r#"{{"type":"assistant","timestamp":"{}","message":{{"content":[{{"type":"tool_use","id":"{id}","name":"Grep","input":{{"pattern":{}}}}}]}}}}"#,
        stamp(ms),
        serde_json::Value::String(pattern.to_owned())
    )
}

/// Claude Code's Grep runs ripgrep (its native build: its own binary with
/// argv[0] `rg`; else an `rg` on disk): the `rg` a direct child of the
/// agent starts in a Grep call's window is that call's, by the tool's
/// known program (`[[agent]] tool_programs`), not a blanket exemption; an
/// `rg` outside any Grep call, or in a Bash call's window but not under
/// its shell, is `tool.unexplained`.
#[test]
fn a_grep_call_is_linked_to_its_rg() {
    const CLAUDE: &str = "/n/@anthropic-ai/claude-code/bin/claude.exe";
    let mut fx = Fixture::new();
    if let Some(f) = fx.t.runs.get_mut("r") {
        f.programs = ["Grep rg", "Glob rg"]
            .into_iter()
            .map(|e| Program::parse(e).unwrap())
            .collect::<Vec<_>>()
            .into();
        let agent = crate::attribution::AgentConfig {
            name: "a".into(),
            exe: vec!["**/@anthropic-ai/claude-code/bin/claude.exe".into()],
            ..Default::default()
        };
        f.own = Some(Arc::new(crate::attribution::Matcher::new(&agent).unwrap()));
    }
    fx.append(
        "s.jsonl",
        &[
            grep_line(1_000, "toolu_g", "needle"),
            result_line(1_200, "toolu_g"),
            call_line(5_000, "toolu_b", "echo hi"),
            result_line(5_300, "toolu_b"),
            String::new(),
        ]
        .join("\n"),
    );
    fx.t.on_event(&exe(
        act(
            10,
            Kind::ProcessExec,
            1_050,
            "k-rg1",
            "k-claude",
            Some(&["rg", "--version"]),
        ),
        CLAUDE,
    ));
    fx.t.on_event(&exe(
        act(
            11,
            Kind::ProcessExec,
            1_060,
            "k-rg2",
            "k-claude",
            Some(&["rg", "--no-config", "-l", "needle", "."]),
        ),
        CLAUDE,
    ));
    fx.t.on_event(&exe(
        act(
            12,
            Kind::ProcessExec,
            1_070,
            "k-rg3",
            "k-claude",
            Some(&["rg", "needle"]),
        ),
        "/usr/bin/rg",
    ));
    // Not Grep's: an rg long after it, and one in the Bash call's window
    // that its shell did not start.
    fx.t.on_event(&exe(
        act(
            20,
            Kind::ProcessExec,
            3_500,
            "k-rg4",
            "k-claude",
            Some(&["rg", "x"]),
        ),
        "/usr/bin/rg",
    ));
    fx.t.on_event(&exe(
        act(
            30,
            Kind::ProcessExec,
            5_100,
            "k-sh",
            "k-claude",
            Some(&["bash", "-c", "echo hi"]),
        ),
        "/usr/bin/bash",
    ));
    fx.t.on_event(&exe(
        act(
            31,
            Kind::ProcessExec,
            5_150,
            "k-rg5",
            "k-claude",
            Some(&["rg", "y"]),
        ),
        "/usr/bin/rg",
    ));
    let mut found = fx.t.tick(at(6_000));
    found.extend(fx.t.tick(at(9_000)));
    let c = calls(&found);
    assert_eq!(c.len(), 2, "{found:?}");
    let seqs = |c: &ToolCall| c.processes.iter().map(|l| l.seq).collect::<Vec<_>>();
    assert_eq!((c[0].name.as_str(), seqs(c[0])), ("Grep", vec![10, 11, 12]));
    assert_eq!((c[1].name.as_str(), seqs(c[1])), ("Bash", vec![30]));
    let u: Vec<(u64, &str)> = unexplained(&found)
        .iter()
        .map(|(_, x)| (x.exec_seq, x.reason))
        .collect();
    assert_eq!(u, [(20, "no_tool_call"), (31, "no_tool_call")], "{found:?}");
    assert!(unobserved(&found).is_empty());
}

#[test]
fn tool_program_entries() {
    assert_eq!(Program::parse("Grep"), Err(EntryError::NoProgram));
    assert_eq!(
        Program::parse("Grep rg sha256:1"),
        Err(EntryError::Sha256("sha256:1".into()))
    );
    let p = Program::parse("Grep rg").unwrap();
    let proc_of = |exe: &str, argv: &[&str]| Process {
        exe: Some(exe.to_owned()),
        argv: Some(argv.iter().map(|a| (*a).to_owned()).collect()),
        ..Process::default()
    };
    assert!(p.matches(&proc_of("/usr/bin/rg", &["rg", "x"]), false));
    // argv[0] names the program only when the exe is the agent's own.
    assert!(p.matches(&proc_of("/x/claude.exe", &["rg", "x"]), true));
    assert!(!p.matches(&proc_of("/tmp/evil", &["rg", "x"]), false));
}

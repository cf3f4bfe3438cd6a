//! Writes the seed inputs of every fuzz target into `fuzz/corpus/<target>/`
//! (files named `seed-*`), made with the sensor's own code: a launch request
//! as `sensor launch` sends it, the shipped configs, kernel records encoded
//! the way the kernel writes them, a run state saved and journaled by
//! `RunTable`, spool segments written by `Spool`, every SPEC form of
//! docs/contract-v1.md.
//!
//! ```text
//! cd fuzz && AYA_BUILD_SKIP=1 cargo run --example seeds
//! ```

use std::{collections::BTreeMap, fs, path::Path, time::Duration};

use sensor::{
    attribution::{LaunchRequest, NewRun, RunTable},
    control::protocol::Request,
    record::{ExecStrings, RawEvent, encode},
    sinks::{spool::Spool, transport::Record},
};
use sensor_common::event::{
    ConnectData, EventHeader, EventKind, ExecData, ExitData, HOW_INHERITED, SpawnData,
};
use sensor_fuzz::{frame, now};

fn main() -> std::io::Result<()> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR"));
    let corpus = fuzz.join("corpus");
    control(&corpus.join("control"))?;
    config(&fuzz.join(".."), &corpus.join("config"))?;
    raw(&corpus.join("raw"))?;
    runs(&corpus.join("runs"))?;
    spool(&corpus.join("spool"))?;
    spec(&corpus.join("spec"))?;
    Ok(())
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    let path = dir.join(format!("seed-{name}"));
    fs::write(&path, bytes)?;
    println!("{} ({} bytes)", path.display(), bytes.len());
    Ok(())
}

fn control(dir: &Path) -> std::io::Result<()> {
    let launch = |req: LaunchRequest| serde_json::to_vec(&Request::Launch(req)).unwrap();
    write(
        dir,
        "launch",
        &launch(LaunchRequest {
            agent: "research-bot".into(),
            ..LaunchRequest::default()
        }),
    )?;
    write(
        dir,
        "launch-full",
        &launch(LaunchRequest {
            agent: "research-bot".into(),
            run_id: Some("01J3QZ7K-run.1_a".into()),
            principal: Some("alice".into()),
            policy: Some("research".into()),
            labels: BTreeMap::from([
                ("ticket".into(), "SEC-42".into()),
                ("team".into(), "red".into()),
            ]),
            ttl_secs: Some(3600),
        }),
    )?;
    for (name, request) in [
        ("status", Request::Status),
        ("whoami", Request::Whoami),
        (
            "attest",
            Request::Attest {
                pid: 1,
                start_ticks: Some(7),
            },
        ),
        (
            "attest-no-start",
            Request::Attest {
                pid: u32::MAX,
                start_ticks: None,
            },
        ),
        ("reload", Request::ReloadPolicies),
    ] {
        write(dir, name, &serde_json::to_vec(&request).unwrap())?;
    }
    Ok(())
}

fn config(repo: &Path, dir: &Path) -> std::io::Result<()> {
    write(
        dir,
        "example",
        &fs::read(repo.join("config/sensor.example.toml"))?,
    )?;
    write(dir, "dist", &fs::read(repo.join("dist/sensor.toml"))?)?;
    write(dir, "raw-target", sensor_fuzz::RAW_CONFIG.as_bytes())?;
    write(
        dir,
        "outputs",
        br#"[daemon]
outputs = ["-", "file:/tmp/sensor-fuzz.jsonl,max_size=64KB,keep=2"]

[[output]]
spec = "http://127.0.0.1:8088/services/collector/event"
format = "ocsf"
kinds = ["process.exec", "network.connect"]
token_env = "HEC"
spool_max = "8MB"

[[output]]
spec = "syslog+tls://[::1]:6514"
name = "siem"
ca = "/etc/sensor/ca.pem"
spool_max = 1048576

[metrics]
listen = "127.0.0.1:9464"

[store]
enabled = false
retention_days = 7
"#,
    )?;
    write(
        dir,
        "policies",
        br#"[policy.research]
mode = "enforce"
exec.allow = ["/usr/bin/git", "/usr/bin/python3*", "/usr/local/bin/", { path = "/usr/bin/true", sha256 = "00" }]
connect.allow = ["127.0.0.0/8", "[::1]", "10.0.0.0/8:443", "localhost:8000-8080"]
max_depth = 3
max_processes = 500

[policy.narrow]
exec.allow = ["/usr/bin/git"]
connect.allow = ["127.0.0.1:443"]
max_depth = 1

[[agent]]
name = "bot"
module = ["bot.cli"]
policy = "narrow"
"#,
    )
}

const PID: u32 = 4242;
const TICK_NS: u64 = 10_000_000;

fn header(kind: EventKind, pid: u32, ppid: u32, comm: &[u8]) -> EventHeader {
    let mut c = [0u8; 16];
    c[..comm.len()].copy_from_slice(comm);
    EventHeader {
        kind: kind as u32,
        ktime_ns: 5_000_000_000 + u64::from(pid),
        tgid: pid,
        tid: pid,
        ppid,
        uid: 1000,
        gid: 1000,
        start_ns: u64::from(pid) * 7 * TICK_NS,
        parent_start_ns: u64::from(ppid) * 7 * TICK_NS,
        comm: c,
        ..EventHeader::default()
    }
}

fn spawn(pid: u32, ppid: u32, exe: &[u8]) -> RawEvent {
    RawEvent::Spawn {
        header: header(EventKind::ProcessSpawn, pid, ppid, b"sh"),
        data: SpawnData {
            exe_len: u16::try_from(exe.len()).unwrap(),
            ..SpawnData::default()
        },
        exe: exe.to_vec(),
    }
}

fn exec(pid: u32, ppid: u32, exe: &[u8], argv: &[u8], ret: i32) -> RawEvent {
    let failed = ret != 0;
    let kind = if failed {
        EventKind::ProcessExecFailed
    } else {
        EventKind::ProcessExec
    };
    let cwd = b"/home/alice";
    let filename = exe.rsplit(|&b| b == b'/').next().unwrap();
    let len = |s: &[u8]| u16::try_from(s.len()).unwrap();
    let argv_len = u32::try_from(argv.len()).unwrap();
    RawEvent::Exec {
        header: header(kind, pid, ppid, filename.get(..15).unwrap_or(filename)),
        data: ExecData {
            exe_len: if failed { 0 } else { len(exe) },
            cwd_len: len(cwd),
            filename_len: len(filename),
            argv_len,
            argv_orig_len: argv_len,
            argc: u32::try_from(argv.iter().filter(|&&b| b == 0).count()).unwrap(),
            old_tid: pid,
            ret,
            ino: if failed { 0 } else { 77 },
            dev: if failed { 0 } else { (8 << 20) | 1 },
            ..ExecData::default()
        },
        strings: ExecStrings {
            exe: if failed { Vec::new() } else { exe.to_vec() },
            cwd: cwd.to_vec(),
            filename: filename.to_vec(),
            argv: argv.to_vec(),
        },
        failed,
    }
}

fn exit(pid: u32, ppid: u32, status: u32) -> RawEvent {
    RawEvent::Exit {
        header: header(EventKind::ProcessExit, pid, ppid, b"sh"),
        data: ExitData {
            exit_status: status,
            _pad: 0,
        },
    }
}

fn connect(pid: u32, ppid: u32, family: u16, addr: [u8; 16], port: u16, ret: i32) -> RawEvent {
    RawEvent::Connect {
        header: header(EventKind::NetConnect, pid, ppid, b"curl"),
        data: ConnectData {
            family,
            sock_type: 1,
            protocol: 6,
            port,
            ret,
            has_result: 1,
            addr,
            ..ConnectData::default()
        },
    }
}

fn v4(a: [u8; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    out[..4].copy_from_slice(&a);
    out
}

fn raw(dir: &Path) -> std::io::Result<()> {
    let records = |events: &[RawEvent]| {
        let encoded: Vec<Vec<u8>> = events.iter().map(encode).collect();
        let pieces: Vec<&[u8]> = encoded.iter().map(Vec::as_slice).collect();
        frame(&pieces)
    };
    let (agent, child, shell, nested) = (PID, PID + 1, PID + 2, PID + 3);
    // One record of each kind.
    write(dir, "spawn", &records(&[spawn(PID, 1, b"/usr/bin/bash")]))?;
    write(
        dir,
        "exec",
        &records(&[exec(PID, 1, b"/usr/bin/curl", b"curl\0-s\0https://x\0", 0)]),
    )?;
    write(
        dir,
        "exec-failed",
        &records(&[exec(PID, 1, b"/nope", b"/nope\0x\0", -2)]),
    )?;
    write(dir, "exit", &records(&[exit(PID, 1, 7 << 8)]))?;
    write(
        dir,
        "connect4",
        &records(&[connect(PID, 1, 2, v4([127, 0, 0, 1]), 443, 0)]),
    )?;
    let mut v6 = [0u8; 16];
    v6[15] = 1;
    write(
        dir,
        "connect6",
        &records(&[connect(PID, 1, 10, v6, 443, -111)]),
    )?;
    // An agent's life: its exec starts a run (matcher), a child inherits it,
    // runs tools and connects (allowed and denied), a nested invocation from
    // its shell is a sub-run, then all exit and the runs end.
    let mut inherited = spawn(child, agent, b"/opt/fake-agent");
    if let RawEvent::Spawn { header, .. } = &mut inherited {
        header.run = 1;
        header.run_how = HOW_INHERITED;
    }
    write(
        dir,
        "agent-run",
        &records(&[
            spawn(agent, 1, b"/usr/bin/bash"),
            exec(agent, 1, b"/opt/fake-agent", b"fake-agent\0--task\0x\0", 0),
            inherited,
            exec(child, agent, b"/usr/bin/curl", b"curl\0-s\0\xff\xfe\0", 0),
            connect(child, agent, 2, v4([127, 0, 0, 1]), 443, 0),
            connect(child, agent, 2, v4([203, 0, 113, 7]), 443, -115),
            exec(child, agent, b"/nope", b"/nope\0", -13),
            spawn(shell, agent, b"/opt/fake-agent"),
            exec(shell, agent, b"/usr/bin/dash", b"sh\0-c\0fake-agent\0", 0),
            spawn(nested, shell, b"/usr/bin/dash"),
            exec(nested, shell, b"/opt/fake-agent", b"fake-agent\0", 0),
            spawn(nested + 1, nested, b"/opt/fake-agent"),
            exec(
                nested + 1,
                nested,
                b"/usr/bin/python3",
                b"python3\0-m\0fake_agent\0",
                0,
            ),
            exit(nested + 1, nested, 9),
            exit(nested, shell, 0),
            exit(shell, agent, 0),
            exit(child, agent, 1 << 8),
            exit(agent, 1, 0),
        ]),
    )
}

fn runs(dir: &Path) -> std::io::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("runs.json");
    let mut table = RunTable::new();
    let new = |agent: &str, parent: Option<u64>, ttl: Option<u64>| NewRun {
        id: Some(format!("01J3QZ7K-{agent}")),
        agent: agent.into(),
        principal: "alice".into(),
        uid: 1000,
        parent,
        policy: Some("research".into()),
        labels: BTreeMap::from([("ticket".into(), "SEC-42".into())]),
        ttl: ttl.map(Duration::from_secs),
        started_by: "launch",
        ..NewRun::default()
    };
    let root = table
        .create(new("research-bot", None, Some(3600)), now())
        .unwrap()
        .handle;
    let sub = table
        .create(new("coder", Some(root), None), now())
        .unwrap()
        .handle;
    let done = table
        .create(new("tester", Some(sub), None), now())
        .unwrap()
        .handle;
    table.end(done, "exited", now()).unwrap();
    table.save(&path).unwrap();
    let snapshot = fs::read(&path)?;
    // Changes after the snapshot: a new run, then one that ended.
    let later = table
        .create(new("matcher-agent", None, Some(60)), now())
        .unwrap()
        .clone();
    RunTable::journal(&path, &later).unwrap();
    let ended = table.end(sub, "ttl", now()).unwrap();
    RunTable::journal(&path, &ended).unwrap();
    let journal = fs::read(RunTable::journal_path(&path))?;

    let input = |flags: u8, snapshot: &[u8], journal: &[u8]| {
        let mut out = vec![flags];
        out.extend_from_slice(&u16::try_from(snapshot.len()).unwrap().to_le_bytes());
        out.extend_from_slice(snapshot);
        out.extend_from_slice(journal);
        out
    };
    write(dir, "snapshot", &input(1, &snapshot, b""))?;
    write(dir, "snapshot-journal", &input(3, &snapshot, &journal))?;
    write(dir, "journal", &input(2, b"", &journal))?;
    // A crash mid-write: the last journal line is torn.
    write(
        dir,
        "torn-journal",
        &input(3, &snapshot, &journal[..journal.len() - 9]),
    )
}

fn spool(dir: &Path) -> std::io::Result<()> {
    let tmp = tempfile::tempdir()?;
    let records: Vec<(u64, Vec<u8>)> = (1..=20)
        .map(|seq| {
            let payload = format!(
                r#"{{"schema":"sensor.event/v1","seq":{seq},"kind":"process.exec","process":{{"pid":{seq}}}}}"#
            );
            (seq, payload.into_bytes())
        })
        .collect();
    {
        let spool = Spool::open(tmp.path(), 1 << 20).unwrap();
        for (seq, payload) in &records {
            let kind = if seq % 3 == 0 {
                "network.connect"
            } else {
                "process.exec"
            };
            spool
                .append(&[Record {
                    seq: *seq,
                    time_ns: 1_700_000_000_000_000_000 + i64::try_from(*seq).unwrap(),
                    kind,
                    payload,
                }])
                .unwrap();
        }
        spool.commit().unwrap();
        // The receiver acknowledged the first 5; then the daemon stops.
        let batch = spool.read(1 << 20, Duration::ZERO).unwrap().unwrap();
        spool.ack(batch.position_after(5).unwrap(), 5);
    }
    let segment = fs::read(tmp.path().join(format!("{:020}.seg", 1)))?;
    let cursor = fs::read(tmp.path().join("cursor"))?;
    let input = |flags: u8, cursor: &[u8], segments: &[&[u8]]| {
        let mut out = vec![flags, u8::try_from(cursor.len()).unwrap()];
        out.extend_from_slice(cursor);
        out.extend_from_slice(&frame(segments));
        out
    };
    write(dir, "acked", &input(0, &cursor, &[&segment]))?;
    write(dir, "no-cursor", &input(1, b"", &[&segment]))?;
    let half = segment.len() / 2;
    write(
        dir,
        "two-segments",
        &input(0, b"1 0\n", &[&segment[..half], &segment]),
    )?;
    write(
        dir,
        "torn",
        &input(0x10, b"1 0\n", &[&segment[..segment.len() - 3]]),
    )?;
    write(dir, "high-ids", &input(0x2e, b"", &[&segment, &segment]))?;
    Ok(())
}

fn spec(dir: &Path) -> std::io::Result<()> {
    let specs = [
        "-",
        "-,format=ocsf",
        "file:/var/log/sensor/events.jsonl",
        "file:/var/log/sensor/events.jsonl,max_size=100MB,keep=5",
        "file:/tmp/x.jsonl,format=ocsf,max_size=64KB,keep=3,name=local",
        "syslog+tcp://siem.example:6514",
        "syslog+tls://siem.example:6514,ca=/etc/sensor/siem-ca.pem",
        "syslog+tls://[::1]:6514,spool_max=1GB",
        "https://splunk.example:8088/services/collector/event,token_env=HEC_TOKEN,format=ocsf",
        "http://es.example:9200/_bulk,index=sensor,kinds=process.exec+network.connect",
        "http://127.0.0.1:8080/ingest,shape=hec,token=t0k3n,gzip=false",
        "https://es.example/logs/_bulk/,shape=bulk,ca=/etc/ca.pem",
        "nats://nats.example:4222/sensor.events,runs_only=true",
        "nats://[::1]:4222/sensor.events,spool_max=256MB,kinds=run.start run.end",
        "4096",
        "64KiB",
        "1 GB",
    ];
    for (i, spec) in specs.iter().enumerate() {
        write(dir, &format!("{i:02}"), spec.as_bytes())?;
    }
    Ok(())
}

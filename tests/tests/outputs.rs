//! Network and filtered outputs against real servers: rsyslogd (TCP, TLS),
//! nats-server JetStream, an HTTP receiver playing Splunk HEC and
//! Elasticsearch `_bulk`; per-output filters, file rotation and OCSF. Run as
//! root: `SENSOR_BIN=... cargo test -p sensor-tests --test outputs`.
//!
//! Every test compares what a server received with the daemon's own
//! reference file output (the harness's `--output file:<tmp>/events.jsonl`,
//! which stays: each `--output` a test passes adds an output), by `seq`:
//! every reference event that passes the output's filter must arrive, and
//! the failure names the seqs that did not.
//!
//! The `harness_*` tests check the servers themselves, without a daemon.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use sensor_tests::servers::{
    HttpReceiver, HttpRequest, Nats, NatsMsg, Rsyslog, SyslogMsg, complete_lines,
};
use sensor_tests::{
    Checks, Daemon, EVENT_TIMEOUT, TempDir, argv_has, check, check_seq_increasing, compact,
    helper_bin, is_kind_pid, kind, marker, run_child, str_at, text, truncate,
};
use serde_json::Value;

/// How long every reference event may take to reach a healthy server.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause between two looks at what a server received.
const SERVER_POLL: Duration = Duration::from_millis(300);
/// How long the outputs are down in the kill/restart test. A real outage may
/// last minutes; 20 s keeps the test short and is long enough for several
/// retries, a daemon restart and fresh events while the output is down
/// (nothing in the spool depends on how long the outage is).
const OUTAGE: Duration = Duration::from_secs(20);
/// How long delivery may take once a killed output is back (the daemon's
/// retry backoff included).
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long the HTTP receivers answer 503 in the retry test.
const HTTP_FAIL_FOR: Duration = Duration::from_secs(3);
/// At most this many per-message failures are listed.
const MAX_LISTED: usize = 20;

const NATS_STREAM: &str = "SENSOR";
const NATS_SUBJECT: &str = "sensor.events";
const HEC_PATH: &str = "/services/collector/event";
const HEC_TOKEN: &str = "hec-token-0123";
/// The variable the bulk output reads its API key from (`token_env=`). The
/// daemon inherits the test's environment, and a test cannot set a variable
/// for one daemon only (`set_var` races the other test threads), so PATH,
/// always set, stands in for the key.
const BULK_TOKEN_ENV: &str = "PATH";
const BULK_INDEX: &str = "sensor-test";
/// The SD-ID of the sensor's RFC 5424 structured data.
const SD_ID: &str = "sensor@32473";

// ----- workload and reference -----

fn seq_of(e: &Value) -> Option<u64> {
    e.get("seq").and_then(Value::as_u64)
}

/// Runs `sensor-test-helper connect tcp ADDR` to a fresh loopback listener.
fn loopback_connect() -> Result<(u32, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let (pid, out) =
        run_child(Command::new(helper_bin!()).args(["connect", "tcp", &addr.to_string()]))?;
    ensure!(
        out.status.success() && text(&out.stdout).trim() == "ok",
        "helper connect tcp {addr}: {} stdout {:?} stderr {:?}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
    Ok((pid, addr))
}

/// The seq of the `process.exit` of `pid`, after its exec with `arg` in argv.
fn exit_seq(d: &Daemon, pid: u32, arg: &str) -> Result<u64> {
    let exec = d
        .wait_for(EVENT_TIMEOUT, |e| {
            is_kind_pid(e, "process.exec", pid) && argv_has(e, arg)
        })
        .with_context(|| format!("no process.exec of pid {pid} with {arg:?}"))?;
    let exec_seq = seq_of(&exec).context("exec without seq")?;
    let exit = d
        .wait_for(EVENT_TIMEOUT, |e| {
            is_kind_pid(e, "process.exit", pid) && seq_of(e).is_some_and(|s| s > exec_seq)
        })
        .with_context(|| format!("no process.exit of pid {pid}"))?;
    seq_of(&exit).context("exit without seq")
}

/// Real events: a loopback TCP connect, then `n` runs of `/bin/true MARKER-i`
/// (spawn, exec, exit each). Returns the seq of the last exit in the
/// reference file: everything the workload caused is at or below it.
fn workload(d: &Daemon, n: usize) -> Result<u64> {
    let m = marker();
    loopback_connect()?;
    let mut last = None;
    for i in 0..n.max(1) {
        let arg = format!("{m}-{i}");
        let (pid, out) = run_child(Command::new("/bin/true").arg(&arg))?;
        ensure!(out.status.success(), "/bin/true {arg}: {}", out.status);
        last = Some((pid, arg));
    }
    let (pid, arg) = last.context("no process ran")?;
    exit_seq(d, pid, &arg)
}

/// The reference events (the daemon's own file output), by seq.
fn reference_map(d: &Daemon) -> Result<BTreeMap<u64, Value>> {
    let events = d.events()?;
    check_seq_increasing(&events).context("the reference file")?;
    events
        .into_iter()
        .map(|e| Ok((seq_of(&e).with_context(|| compact(&e))?, e)))
        .collect()
}

/// The seqs of the reference up to `upto` that pass `filter`.
fn want_seqs(
    reference: &BTreeMap<u64, Value>,
    upto: u64,
    filter: impl Fn(&Value) -> bool,
) -> Vec<u64> {
    reference
        .range(..=upto)
        .filter(|(_, e)| filter(e))
        .map(|(s, _)| *s)
        .collect()
}

/// Seqs as compact ranges ("3-9, 12, 15-16"), the first 40 of them.
fn ranges(seqs: &[u64]) -> String {
    let mut v: Vec<u64> = seqs.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    let n = parts.len();
    if n > 40 {
        parts.truncate(40);
        parts.push(format!("…(+{} more ranges)", n - 40));
    }
    if parts.is_empty() {
        "<none>".to_owned()
    } else {
        parts.join(", ")
    }
}

/// The seqs in `want` missing from `got`.
fn missing(want: &[u64], got: &[u64]) -> Vec<u64> {
    let got: BTreeSet<u64> = got.iter().copied().collect();
    want.iter().filter(|s| !got.contains(s)).copied().collect()
}

/// Seqs that occur more than once in `got`.
fn duplicates(got: &[u64]) -> Vec<u64> {
    let mut seen = BTreeSet::new();
    let mut dups = BTreeSet::new();
    for s in got {
        if !seen.insert(*s) {
            dups.insert(*s);
        }
    }
    dups.into_iter().collect()
}

/// Fails unless `got` strictly increases; names the first offending pairs.
fn check_strictly_increasing(what: &str, got: &[u64], c: &mut Checks) {
    let bad: Vec<String> = got
        .windows(2)
        .filter(|w| w[1] <= w[0])
        .take(10)
        .map(|w| format!("{} after {}", w[1], w[0]))
        .collect();
    check!(
        c,
        bad.is_empty(),
        "{what}: seqs do not strictly increase in delivery order ({} duplicates: {}): {}",
        duplicates(got).len(),
        ranges(&duplicates(got)),
        bad.join("; ")
    );
}

/// Polls `fetch` (the seqs an output delivered, in delivery order, and
/// whatever else the caller wants back) until every seq of `want` is among
/// them; on timeout fails naming the missing seqs.
fn wait_delivery<T>(
    what: &str,
    want: &[u64],
    timeout: Duration,
    mut fetch: impl FnMut() -> Result<(Vec<u64>, T)>,
) -> Result<(Vec<u64>, T)> {
    ensure!(!want.is_empty(), "{what}: no reference event to look for");
    let deadline = Instant::now() + timeout;
    loop {
        let (got, extra) = fetch()?;
        let miss = missing(want, &got);
        if miss.is_empty() {
            return Ok((got, extra));
        }
        if Instant::now() >= deadline {
            let (lo, hi) = (want[0], want[want.len() - 1]);
            bail!(
                "{what}: {} of the {} reference seqs in {lo}..={hi} never arrived within \
                 {timeout:?}: {}\n  it received {} events, seqs {}",
                miss.len(),
                want.len(),
                ranges(&miss),
                got.len(),
                ranges(&got)
            );
        }
        thread::sleep(SERVER_POLL);
    }
}

/// `e` without the keys an index may add (`@timestamp`), for comparing a
/// delivered document with the reference event.
fn without_index_keys(e: &Value) -> Value {
    let mut e = e.clone();
    if let Some(o) = e.as_object_mut() {
        o.remove("@timestamp");
    }
    e
}

/// Checks that delivered events equal the reference ones of the same seq.
fn check_same_as_reference(
    what: &str,
    delivered: &[Value],
    reference: &BTreeMap<u64, Value>,
    c: &mut Checks,
) {
    let mut listed = 0;
    for e in delivered {
        let Some(seq) = seq_of(e) else {
            c.fail(format!("{what}: event without seq: {}", compact(e)));
            listed += 1;
            continue;
        };
        if let Some(r) = reference.get(&seq)
            && without_index_keys(e) != *r
        {
            c.fail(format!(
                "{what}: seq {seq} differs from the reference\n    got  {}\n    want {}",
                compact(e),
                compact(r)
            ));
            listed += 1;
        }
        if listed >= MAX_LISTED {
            c.fail(format!("{what}: (more differences not listed)"));
            break;
        }
    }
}

// ----- status --json -----

/// The `outputs` entry of `status --json` whose spec contains `needle`.
fn output_entry(status: &Value, needle: &str) -> Result<Value> {
    let outs = status
        .get("outputs")
        .and_then(Value::as_array)
        .with_context(|| format!("status --json has no outputs array: {status}"))?;
    outs.iter()
        .find(|o| str_at(o, "/spec").is_some_and(|s| s.contains(needle)))
        .cloned()
        .with_context(|| format!("status --json lists no output with {needle:?}: {status}"))
}

fn u64_field(o: &Value, k: &str) -> u64 {
    o.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Checks the fields every `outputs` entry has.
fn check_output_fields(o: &Value, c: &mut Checks) {
    for k in ["name", "spec", "format", "state", "last_error"] {
        check!(
            c,
            o.get(k).is_some(),
            "status output entry without {k}: {o}"
        );
    }
    for k in ["sent", "dropped", "failed", "spooled"] {
        check!(
            c,
            o.get(k).and_then(Value::as_u64).is_some(),
            "status output entry without a numeric {k}: {o}"
        );
    }
}

/// Polls `status --json` until the output with `needle` satisfies `pred`;
/// returns that entry, or fails with `what` and the last entry.
fn wait_output_status(
    d: &Daemon,
    needle: &str,
    timeout: Duration,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let o = output_entry(&d.status_json()?, needle)?;
        if pred(&o) {
            return Ok(o);
        }
        if Instant::now() >= deadline {
            bail!(
                "status --json: the output {needle:?} never showed {what} within {timeout:?}; last: {o}"
            );
        }
        thread::sleep(SERVER_POLL);
    }
}

/// The output with `needle` reports at least `events` sent (within 10 s),
/// and its status entry has every field.
fn check_output_sent(d: &Daemon, needle: &str, events: usize, c: &mut Checks) {
    match wait_output_status(
        d,
        needle,
        Duration::from_secs(10),
        "sent >= the events received",
        |o| u64_field(o, "sent") >= events as u64,
    ) {
        Ok(o) => check_output_fields(&o, c),
        Err(e) => c.fail(format!("{e:#}")),
    }
}

// ----- syslog -----

/// The event JSON carried in a syslog MSG.
fn syslog_event(m: &SyslogMsg) -> Option<Value> {
    serde_json::from_str(m.msg_text()).ok()
}

/// RFC 5424 checks of one message: parsed as version 1, MSGID = kind, SD
/// `[sensor@32473 seq="N"]` with N = the event's seq, MSG = JSON.
fn check_syslog_msg(m: &SyslogMsg, c: &mut Checks) -> bool {
    let Some(e) = syslog_event(m) else {
        c.fail(format!("syslog MSG is not one JSON event: {}", m.line));
        return false;
    };
    let seq = seq_of(&e);
    let sd_seq = m.sd_param(SD_ID, "seq");
    let ok = m.version == "1"
        && m.msgid == kind(&e)
        && sd_seq.as_deref().and_then(|s| s.parse::<u64>().ok()) == seq
        && seq.is_some();
    check!(
        c,
        ok,
        "syslog message not as specified (want RFC 5424 version 1, MSGID = kind {:?}, \
         SD [{SD_ID} seq=\"{seq:?}\"]); rsyslog parsed version {:?} msgid {:?} sd {:?}: {}",
        kind(&e),
        m.version,
        m.msgid,
        m.sd,
        m.line
    );
    ok
}

fn syslog_delivers_every_event(tls: bool) -> Result<()> {
    let mut rs = if tls {
        Rsyslog::start_tls()?
    } else {
        Rsyslog::start_tcp()?
    };
    let spec = match rs.ca_path() {
        Some(ca) => format!("syslog+tls://{},ca={}", rs.addr(), ca.display()),
        None => format!("syslog+tcp://{}", rs.addr()),
    };
    let d = Daemon::start_with_args(&["--output", &spec])?;
    let last = workload(&d, 40)?;
    let want = want_seqs(&reference_map(&d)?, last, |_| true);
    let (got, msgs) = wait_delivery(
        &format!("rsyslogd ({spec})"),
        &want,
        DELIVERY_TIMEOUT,
        || {
            rs.check_alive()?;
            let msgs = rs.messages()?;
            let seqs = msgs
                .iter()
                .filter_map(|m| syslog_event(m).and_then(|e| seq_of(&e)))
                .collect();
            Ok((seqs, msgs))
        },
    )?;
    let reference = reference_map(&d)?;
    let mut c = Checks::new();
    let mut bad = 0;
    for m in &msgs {
        if !check_syslog_msg(m, &mut c) {
            bad += 1;
            if bad >= MAX_LISTED {
                c.fail("(more bad syslog messages not listed)".to_owned());
                break;
            }
        }
    }
    let events: Vec<Value> = msgs.iter().filter_map(syslog_event).collect();
    check_same_as_reference("syslog MSG", &events, &reference, &mut c);
    // One TCP connection, never broken here: in order, nothing twice.
    check_strictly_increasing("syslog", &got, &mut c);
    let needle = rs.addr();
    check_output_sent(&d, &needle, want.len(), &mut c);
    c.finish()
}

/// (a) rsyslogd over TCP (octet-counted RFC 5424) gets every event: MSGID =
/// kind, SD seq = the event's seq, MSG = the event JSON (same as the
/// reference file), in seq order.
#[test]
fn syslog_tcp_receives_every_event() -> Result<()> {
    syslog_delivers_every_event(false)
}

/// (b) The same over TLS, trusting the test CA with `ca=PATH`.
#[test]
fn syslog_tls_receives_every_event() -> Result<()> {
    syslog_delivers_every_event(true)
}

/// (b') TLS really verifies: without `ca=` the test CA is not trusted, so
/// nothing reaches rsyslogd and the output reports the failure.
#[test]
fn syslog_tls_without_the_ca_delivers_nothing() -> Result<()> {
    let mut rs = Rsyslog::start_tls()?;
    let spec = format!("syslog+tls://{}", rs.addr());
    let d = Daemon::start_with_args(&["--output", &spec])?;
    workload(&d, 5)?;
    let o = wait_output_status(
        &d,
        &rs.addr(),
        Duration::from_secs(15),
        "a last_error (the server's certificate is not trusted)",
        |o| {
            u64_field(o, "spooled") > 0
                && o.get("last_error")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
        },
    )?;
    rs.check_alive()?;
    let got = rs.received()?;
    ensure!(
        got.is_empty() && u64_field(&o, "sent") == 0,
        "rsyslogd got {} messages over TLS from a sender that should not trust its CA \
         (status {o}); first: {:?}",
        got.len(),
        got.first()
    );
    Ok(())
}

// ----- NATS -----

fn nats_spec(nats: &Nats) -> String {
    format!("nats://127.0.0.1:{}/{NATS_SUBJECT}", nats.port())
}

/// The events of a stream's messages, in stream order.
fn nats_events(msgs: &[NatsMsg]) -> Result<Vec<Value>> {
    msgs.iter()
        .map(|m| {
            serde_json::from_slice(&m.payload).with_context(|| {
                format!(
                    "NATS message {} is not one JSON event: {}",
                    m.stream_seq,
                    text(&m.payload)
                )
            })
        })
        .collect()
}

fn delivered_nats(nats: &Nats) -> Result<(Vec<u64>, Vec<NatsMsg>)> {
    let msgs = nats.read_all(NATS_STREAM)?;
    let seqs = nats_events(&msgs)?.iter().filter_map(seq_of).collect();
    Ok((seqs, msgs))
}

/// Subject and `Nats-Msg-Id` = `<host id>-<seq>`, one host id for all.
fn check_nats_msgs(msgs: &[NatsMsg], c: &mut Checks) -> Result<()> {
    let events = nats_events(msgs)?;
    let mut prefixes = BTreeSet::new();
    let mut listed = 0;
    for (m, e) in msgs.iter().zip(&events) {
        let seq = seq_of(e).unwrap_or(u64::MAX);
        let id = m.header("Nats-Msg-Id");
        let prefix = id.and_then(|id| id.strip_suffix(&format!("-{seq}")));
        match prefix {
            Some(p) if !p.is_empty() && m.subject == NATS_SUBJECT => {
                prefixes.insert(p.to_owned());
            }
            _ => {
                c.fail(format!(
                    "NATS message {} (event seq {seq}): want subject {NATS_SUBJECT} and header \
                     Nats-Msg-Id <host id>-{seq}; got subject {} headers {:?}",
                    m.stream_seq, m.subject, m.headers
                ));
                listed += 1;
                if listed >= MAX_LISTED {
                    break;
                }
            }
        }
    }
    check!(
        c,
        prefixes.len() <= 1,
        "Nats-Msg-Id has different host ids: {prefixes:?}"
    );
    Ok(())
}

/// (c) nats-server JetStream: the stream the test made on the subject holds
/// every event, in seq order, each once (Nats-Msg-Id = `<host id>-<seq>`),
/// payload = the event JSON.
#[test]
fn nats_jetstream_receives_every_event_in_order() -> Result<()> {
    let nats = Nats::start()?;
    nats.create_stream(NATS_STREAM, NATS_SUBJECT)?;
    let spec = nats_spec(&nats);
    let d = Daemon::start_with_args(&["--output", &spec])?;
    let last = workload(&d, 40)?;
    let want = want_seqs(&reference_map(&d)?, last, |_| true);
    let (got, msgs) = wait_delivery(
        &format!("the JetStream stream ({spec})"),
        &want,
        DELIVERY_TIMEOUT,
        || delivered_nats(&nats),
    )?;
    let reference = reference_map(&d)?;
    let mut c = Checks::new();
    check_strictly_increasing("JetStream stream order", &got, &mut c);
    check_nats_msgs(&msgs, &mut c)?;
    check_same_as_reference("NATS payload", &nats_events(&msgs)?, &reference, &mut c);
    check_output_sent(
        &d,
        &format!("127.0.0.1:{}", nats.port()),
        want.len(),
        &mut c,
    );
    c.finish()
}

/// One Prometheus sample `name{label="value"}` from `/metrics` at `addr`.
fn scrape(addr: &str) -> Result<String> {
    let mut stream =
        TcpStream::connect(addr).with_context(|| format!("metrics: connect to {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    ensure!(
        answer.starts_with("HTTP/1.1 200"),
        "GET /metrics: {}",
        truncate(&answer, 300)
    );
    Ok(answer)
}

fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// `[[output]]` tables in the config (name, kinds) and `[metrics]`: the
/// filtered events reach NATS, and the metrics follow the output's health
/// through an outage.
#[test]
fn config_output_tables_and_prometheus_metrics() -> Result<()> {
    let mut nats = Nats::start()?;
    nats.create_stream(NATS_STREAM, NATS_SUBJECT)?;
    let metrics_addr = format!("127.0.0.1:{}", sensor_tests::servers::free_port()?);
    let config = format!(
        "[[output]]\nspec = \"{}\"\nname = \"fleet\"\nkinds = [\"process.exec\"]\n\n[metrics]\nlisten = \"{metrics_addr}\"\n",
        nats_spec(&nats)
    );
    let d = Daemon::start_with_config(&config)?;
    let last = workload(&d, 20)?;
    let want = want_seqs(&reference_map(&d)?, last, |e| kind(e) == "process.exec");
    let (got, _) = wait_delivery(
        "the JetStream stream (kinds=process.exec)",
        &want,
        DELIVERY_TIMEOUT,
        || delivered_nats(&nats),
    )?;
    let mut c = Checks::new();
    let reference = reference_map(&d)?;
    let other: Vec<u64> = got
        .iter()
        .filter(|s| reference.get(s).is_some_and(|e| kind(e) != "process.exec"))
        .copied()
        .collect();
    check!(
        c,
        other.is_empty(),
        "events of other kinds reached the exec-only output: {}",
        ranges(&other)
    );

    // Healthy: the series exist and agree with status.
    let o = wait_output_status(
        &d,
        "nats://",
        Duration::from_secs(10),
        "sent >= delivered",
        |o| u64_field(o, "sent") >= want.len() as u64,
    )?;
    check!(
        c,
        str_at(&o, "/name") == Some("fleet"),
        "the output's name is not fleet: {o}"
    );
    let m = scrape(&metrics_addr)?;
    let sent = sample(&m, r#"sensor_output_sent_total{output="fleet"}"#);
    check!(
        c,
        sent.is_some_and(|v| v >= want.len() as f64),
        "sensor_output_sent_total for fleet: {sent:?}, want >= {}",
        want.len()
    );
    check!(
        c,
        sample(&m, r#"sensor_output_up{output="fleet"}"#) == Some(1.0),
        "fleet not up:\n{m}"
    );
    let execs = sample(&m, r#"sensor_events_total{kind="process.exec"}"#);
    check!(
        c,
        execs.is_some_and(|v| v >= want.len() as f64),
        "sensor_events_total exec: {execs:?}"
    );
    check!(
        c,
        sample(&m, r#"sensor_runs_active"#).is_some(),
        "no sensor_runs_active:\n{m}"
    );
    check!(
        c,
        sample(&m, r#"sensor_output_dropped_total{output="fleet"}"#) == Some(0.0),
        "fleet dropped events:\n{m}"
    );

    // Down: the output is reported down, with the exec events spooled.
    nats.kill9()?;
    workload(&d, 10)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let down = loop {
        let m = scrape(&metrics_addr)?;
        let up = sample(&m, r#"sensor_output_up{output="fleet"}"#);
        let spooled = sample(&m, r#"sensor_output_spooled{output="fleet"}"#).unwrap_or(0.0);
        if up == Some(0.0) && spooled >= 10.0 {
            break Ok(m);
        }
        if Instant::now() > deadline {
            break Err(anyhow!(
                "with NATS down, fleet never showed up=0 and spooled>=10:\n{m}"
            ));
        }
        thread::sleep(SERVER_POLL);
    };
    c.result(down.map(|_| ()));

    // Back: everything arrives and the spool empties.
    nats.restart()?;
    let last = workload(&d, 5)?;
    let want = want_seqs(&reference_map(&d)?, last, |e| kind(e) == "process.exec");
    c.result(
        wait_delivery(
            "the JetStream stream after the outage",
            &want,
            RECOVERY_TIMEOUT,
            || delivered_nats(&nats),
        )
        .map(|_| ()),
    );
    c.result(
        wait_output_status(
            &d,
            "nats://",
            Duration::from_secs(20),
            "ok with an empty spool",
            |o| str_at(o, "/state") == Some("ok") && u64_field(o, "spooled") == 0,
        )
        .map(|_| ()),
    );
    let m = scrape(&metrics_addr)?;
    check!(
        c,
        sample(&m, r#"sensor_output_up{output="fleet"}"#) == Some(1.0),
        "fleet not up again:\n{m}"
    );
    c.finish()
}

// ----- HTTP -----

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Hec,
    Bulk,
}

/// The events of one HTTP request, its body checked against the shape:
/// HEC: concatenated `{"time","host","source":"sensor",
/// "sourcetype":"sensor:event","event":{..}}`; bulk: NDJSON pairs of
/// `{"create":{"_index":INDEX}}` and the event, ending in a newline.
fn http_events(shape: Shape, r: &HttpRequest) -> Result<Vec<Value>> {
    let ctx = || {
        format!(
            "{shape:?} request {} {} (answered {}): {}",
            r.method,
            r.path,
            r.status,
            truncate(&r.body_text(), 600)
        )
    };
    let mut out = Vec::new();
    match shape {
        Shape::Hec => {
            for w in serde_json::Deserializer::from_slice(&r.body).into_iter::<Value>() {
                let w =
                    w.with_context(|| format!("HEC body is not concatenated JSON: {}", ctx()))?;
                let event = w
                    .get("event")
                    .filter(|e| e.is_object())
                    .with_context(|| format!("HEC wrapper without an event object: {w}"))?;
                ensure!(
                    w.get("time").is_some_and(Value::is_number)
                        && str_at(&w, "/source") == Some("sensor")
                        && str_at(&w, "/sourcetype") == Some("sensor:event")
                        && w.get("host").and_then(Value::as_str).is_some()
                        && w.get("host").and_then(Value::as_str) == str_at(event, "/host/name"),
                    "HEC wrapper not {{\"time\":<number>,\"host\":<event host.name>,\
                     \"source\":\"sensor\",\"sourcetype\":\"sensor:event\",\"event\":..}}: {}",
                    compact(&w)
                );
                out.push(event.clone());
            }
        }
        Shape::Bulk => {
            let body = r.body_text();
            ensure!(
                body.ends_with('\n'),
                "a _bulk body must end with a newline: {}",
                ctx()
            );
            let lines: Vec<&str> = body.lines().filter(|l| !l.trim().is_empty()).collect();
            ensure!(
                lines.len().is_multiple_of(2),
                "_bulk body has an odd number of lines: {}",
                ctx()
            );
            for pair in lines.chunks(2) {
                let action: Value = serde_json::from_str(pair[0])
                    .with_context(|| format!("bad _bulk action line {:?}", pair[0]))?;
                ensure!(
                    action == serde_json::json!({"create": {"_index": BULK_INDEX}}),
                    "_bulk action line is not {{\"create\":{{\"_index\":\"{BULK_INDEX}\"}}}}: {}",
                    pair[0]
                );
                let doc: Value = serde_json::from_str(pair[1])
                    .with_context(|| format!("bad _bulk document line {:?}", pair[1]))?;
                out.push(doc);
            }
        }
    }
    ensure!(!out.is_empty(), "a request without events: {}", ctx());
    Ok(out)
}

/// The seqs of the events a receiver accepted (2xx, answered), in order.
fn delivered_http(recv: &HttpReceiver, shape: Shape) -> Result<(Vec<u64>, Vec<HttpRequest>)> {
    let reqs = recv.requests();
    let mut seqs = Vec::new();
    for r in reqs.iter().filter(|r| r.ok()) {
        seqs.extend(http_events(shape, r)?.iter().filter_map(seq_of));
    }
    Ok((seqs, reqs))
}

/// Method, path, Authorization, Content-Encoding and body shape of every
/// request (failed ones included).
fn check_http_requests(shape: Shape, reqs: &[HttpRequest], path: &str, auth: &str, c: &mut Checks) {
    let mut listed = 0;
    for r in reqs {
        let mut bad = Vec::new();
        if r.method != "POST" || r.path.split('?').next() != Some(path) {
            bad.push(format!("want POST {path}, got {} {}", r.method, r.path));
        }
        if r.header("authorization") != Some(auth) {
            bad.push(format!(
                "want Authorization {auth:?}, got {:?}",
                r.header("authorization")
            ));
        }
        if !r
            .header("content-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"))
        {
            bad.push(format!(
                "want Content-Encoding gzip, got {:?}",
                r.header("content-encoding")
            ));
        }
        if shape == Shape::Bulk && !r.header("content-type").is_some_and(|v| v.contains("json")) {
            bad.push(format!(
                "want Content-Type application/x-ndjson, got {:?}",
                r.header("content-type")
            ));
        }
        if let Err(e) = http_events(shape, r) {
            bad.push(format!("{e:#}"));
        }
        if !bad.is_empty() {
            c.fail(format!(
                "{shape:?} request #{} ({} bytes, answered {}): {}",
                listed,
                r.raw_body.len(),
                r.status,
                bad.join("; ")
            ));
            listed += 1;
            if listed >= MAX_LISTED {
                c.fail(format!("{shape:?}: (more bad requests not listed)"));
                break;
            }
        }
    }
}

/// (d) Two HTTP outputs at once, Splunk HEC (token, gzip by default) and
/// Elasticsearch `_bulk` (token_env, gzip=true, index), to receivers that answer
/// 503 for the first 3 s after the daemon is up: afterwards every event has
/// arrived at both, in seq order within and across accepted requests, none
/// accepted twice (a resend of a refused request is not a duplicate), with
/// the right Authorization, gzip and body shapes.
#[test]
fn http_hec_and_bulk_survive_503_without_loss_or_reorder() -> Result<()> {
    let bulk_key = std::env::var(BULK_TOKEN_ENV)
        .with_context(|| format!("${BULK_TOKEN_ENV} (the bulk API key) is not set"))?;
    let hec = HttpReceiver::start()?;
    let bulk = HttpReceiver::start()?;
    hec.fail_with(503);
    bulk.fail_with(503);
    let hec_spec = format!("{}{HEC_PATH},token={HEC_TOKEN}", hec.base_url());
    let bulk_spec = format!(
        "{}/_bulk,token_env={BULK_TOKEN_ENV},gzip=true,index={BULK_INDEX}",
        bulk.base_url()
    );
    let d = Daemon::start_with_args(&["--output", &hec_spec, "--output", &bulk_spec])?;
    // 503 for HTTP_FAIL_FOR from now on, while events flow.
    hec.fail_for(HTTP_FAIL_FOR);
    bulk.fail_for(HTTP_FAIL_FOR);
    let t0 = Instant::now();
    workload(&d, 20)?;
    thread::sleep(HTTP_FAIL_FOR.saturating_sub(t0.elapsed()) + Duration::from_millis(500));
    let last = workload(&d, 20)?;
    let want = want_seqs(&reference_map(&d)?, last, |_| true);

    let mut c = Checks::new();
    for (recv, shape, spec, path, auth) in [
        (
            &hec,
            Shape::Hec,
            &hec_spec,
            HEC_PATH,
            format!("Splunk {HEC_TOKEN}"),
        ),
        (
            &bulk,
            Shape::Bulk,
            &bulk_spec,
            "/_bulk",
            format!("ApiKey {bulk_key}"),
        ),
    ] {
        let (got, reqs) = match wait_delivery(
            &format!("{shape:?} receiver ({spec})"),
            &want,
            DELIVERY_TIMEOUT,
            || delivered_http(recv, shape),
        ) {
            Ok(r) => r,
            Err(e) => {
                c.fail(format!("{e:#}"));
                continue;
            }
        };
        let reference = reference_map(&d)?;
        check!(
            c,
            reqs.iter().any(|r| r.status == 503),
            "{shape:?}: no request was answered 503, so the retry path was not exercised: {} requests",
            reqs.len()
        );
        check_http_requests(shape, &reqs, path, &auth, &mut c);
        check_strictly_increasing(&format!("{shape:?} accepted requests"), &got, &mut c);
        let mut events = Vec::new();
        for r in reqs.iter().filter(|r| r.ok()) {
            events.extend(http_events(shape, r)?);
        }
        check_same_as_reference(&format!("{shape:?} event"), &events, &reference, &mut c);
        check_output_sent(
            &d,
            &format!("127.0.0.1:{}", recv.port()),
            want.len(),
            &mut c,
        );
    }
    c.finish()
}

// ----- kill and restart -----

/// (e) Network outputs (NATS JetStream and HEC: both acknowledge) are killed
/// with SIGKILL while events flow; events keep coming; `status --json` shows
/// them failing with events spooled; the daemon itself is restarted (same
/// state dir) while they are down, and spools more; after [`OUTAGE`] they
/// come back on the same port and data. Then every reference event arrives
/// at both (duplicates allowed, gaps not), and seq kept increasing across the
/// daemon restart.
#[test]
fn killed_outputs_get_everything_after_restarts() -> Result<()> {
    let mut nats = Nats::start()?;
    nats.create_stream(NATS_STREAM, NATS_SUBJECT)?;
    let mut hec = HttpReceiver::start()?;
    let nats_spec = nats_spec(&nats);
    let hec_spec = format!("{}{HEC_PATH},token={HEC_TOKEN}", hec.base_url());
    let nats_needle = format!("127.0.0.1:{}", nats.port());
    let hec_needle = format!("127.0.0.1:{}", hec.port());
    let mut d = Daemon::start_with_args(&["--output", &nats_spec, "--output", &hec_spec])?;
    let mut c = Checks::new();

    // Healthy first.
    let last = workload(&d, 20)?;
    let want = want_seqs(&reference_map(&d)?, last, |_| true);
    wait_delivery("NATS (healthy)", &want, DELIVERY_TIMEOUT, || {
        delivered_nats(&nats)
    })?;
    wait_delivery("HEC (healthy)", &want, DELIVERY_TIMEOUT, || {
        delivered_http(&hec, Shape::Hec)
    })?;
    let status = d.status_json()?;
    let healthy_nats = output_entry(&status, &nats_needle)?;
    let healthy_hec = output_entry(&status, &hec_needle)?;

    // Both outputs die while events flow.
    let down_at = Instant::now();
    nats.kill9()?;
    hec.kill9()?;
    workload(&d, 20)?;
    for (needle, healthy) in [(&nats_needle, &healthy_nats), (&hec_needle, &healthy_hec)] {
        match wait_output_status(
            &d,
            needle,
            Duration::from_secs(15),
            "spooled > 0 and a last_error while its server is down",
            |o| {
                u64_field(o, "spooled") > 0
                    && o.get("last_error")
                        .is_some_and(|e| e.as_str().is_some_and(|s| !s.is_empty()))
            },
        ) {
            Ok(o) => check!(
                c,
                str_at(&o, "/state") == Some("retrying") && str_at(healthy, "/state") == Some("ok"),
                "the state of {needle} should be \"retrying\" while its server is down and \"ok\" \
                 when healthy: down {o}, healthy {healthy}"
            ),
            Err(e) => c.fail(format!("{e:#}")),
        }
    }

    // The daemon restarts while they are down: the spool is on disk.
    d.restart()?;
    for needle in [&nats_needle, &hec_needle] {
        c.result(
            wait_output_status(
                &d,
                needle,
                Duration::from_secs(15),
                "spooled > 0 after a daemon restart while its server is down",
                |o| u64_field(o, "spooled") > 0,
            )
            .map(drop),
        );
    }
    workload(&d, 20)?;

    // The outage ends.
    thread::sleep(OUTAGE.saturating_sub(down_at.elapsed()));
    nats.restart()?;
    hec.restart()?;
    let last = workload(&d, 20)?;
    let reference = reference_map(&d)?;
    let want = want_seqs(&reference, last, |_| true);
    match wait_delivery("NATS (after the outage)", &want, RECOVERY_TIMEOUT, || {
        delivered_nats(&nats)
    }) {
        Ok((got, msgs)) => {
            let dups = duplicates(&got);
            eprintln!(
                "NATS: {} events, {} duplicates ({})",
                got.len(),
                dups.len(),
                ranges(&dups)
            );
            check_nats_msgs(&msgs, &mut c)?;
            check_same_as_reference("NATS payload", &nats_events(&msgs)?, &reference, &mut c);
        }
        Err(e) => c.fail(format!("{e:#}")),
    }
    match wait_delivery("HEC (after the outage)", &want, RECOVERY_TIMEOUT, || {
        delivered_http(&hec, Shape::Hec)
    }) {
        Ok((got, reqs)) => {
            let dups = duplicates(&got);
            eprintln!(
                "HEC: {} events in {} requests, {} duplicates ({})",
                got.len(),
                reqs.len(),
                dups.len(),
                ranges(&dups)
            );
            check_http_requests(
                Shape::Hec,
                &reqs,
                HEC_PATH,
                &format!("Splunk {HEC_TOKEN}"),
                &mut c,
            );
            let mut events = Vec::new();
            for r in reqs.iter().filter(|r| r.ok()) {
                events.extend(http_events(Shape::Hec, r)?);
            }
            check_same_as_reference("HEC event", &events, &reference, &mut c);
        }
        Err(e) => c.fail(format!("{e:#}")),
    }
    // Back to normal.
    for needle in [&nats_needle, &hec_needle] {
        c.result(
            wait_output_status(
                &d,
                needle,
                Duration::from_secs(30),
                "state \"ok\" again after the outage",
                |o| str_at(o, "/state") == Some("ok"),
            )
            .map(drop),
        );
    }
    c.finish()
}

// ----- filters -----

/// JSON lines of a file output (complete lines; none when it does not exist).
fn read_jsonl(path: &Path) -> Result<Vec<Value>> {
    complete_lines(path)?
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).with_context(|| {
                format!(
                    "{} line {}: not JSON: {}",
                    path.display(),
                    i + 1,
                    truncate(l, 300)
                )
            })
        })
        .collect()
}

fn has_run(e: &Value) -> bool {
    e.get("run").is_some_and(|r| !r.is_null())
}

/// Compares a filtered file output with the reference events passing
/// `filter`: the same events, same order, same JSON.
fn check_filtered(
    what: &str,
    got: &[Value],
    reference: &[Value],
    filter: impl Fn(&Value) -> bool,
    c: &mut Checks,
) {
    let want: Vec<&Value> = reference.iter().filter(|e| filter(e)).collect();
    let want_seqs: Vec<u64> = want.iter().filter_map(|e| seq_of(e)).collect();
    let got_seqs: Vec<u64> = got.iter().filter_map(seq_of).collect();
    let miss = missing(&want_seqs, &got_seqs);
    let extra = missing(&got_seqs, &want_seqs);
    check!(
        c,
        miss.is_empty() && extra.is_empty(),
        "{what}: {} reference events that pass the filter are missing: {}; {} events should \
         not be there: {} (e.g. {})",
        miss.len(),
        ranges(&miss),
        extra.len(),
        ranges(&extra),
        got.iter()
            .find(|e| seq_of(e).is_some_and(|s| extra.contains(&s)))
            .map(compact)
            .unwrap_or_default()
    );
    check!(
        c,
        !want.is_empty(),
        "{what}: no reference event passes the filter"
    );
    check_strictly_increasing(what, &got_seqs, c);
    let by_seq: BTreeMap<u64, Value> = reference
        .iter()
        .filter_map(|e| Some((seq_of(e)?, e.clone())))
        .collect();
    check_same_as_reference(what, got, &by_seq, c);
}

/// (f) Per-output filters on file outputs: `kinds=process.exec+network.connect`,
/// `runs_only=true`, and both combined (`kinds=process.exit,runs_only=true`):
/// each file holds exactly the reference events that pass.
#[test]
fn per_output_kinds_and_runs_only_filters() -> Result<()> {
    let dir = TempDir::new("filters")?;
    let kinds = dir.path().join("kinds.jsonl");
    let runs = dir.path().join("runs.jsonl");
    let both = dir.path().join("both.jsonl");
    let specs = [
        format!(
            "file:{},kinds=process.exec+network.connect",
            kinds.display()
        ),
        format!("file:{},runs_only=true", runs.display()),
        format!("file:{},kinds=process.exit,runs_only=true", both.display()),
    ];
    let mut args = Vec::new();
    for s in &specs {
        args.extend(["--output", s.as_str()]);
    }
    let mut d = Daemon::start_with_args(&args)?;

    // In a run: exec, spawn, exit and a loopback connect.
    let m = marker();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let script = format!("/bin/true {m}-run; {} connect tcp {addr}", helper_bin!());
    let (pid, out) = run_child(&mut d.launch_cmd("x", &[], &["/bin/sh", "-c", &script, &m]))?;
    ensure!(
        out.status.success(),
        "sensor launch: {} {}",
        out.status,
        text(&out.stderr)
    );
    // And outside any run.
    workload(&d, 5)?;
    d.wait_for(EVENT_TIMEOUT, |e| {
        is_kind_pid(e, "process.exit", pid) && has_run(e)
    })
    .context("the launched shell's exit, in a run")?;
    d.stop()?;

    let reference = d.events()?;
    let mut c = Checks::new();
    check!(
        c,
        reference.iter().any(|e| {
            kind(e) == "process.exec"
                && argv_has(e, &format!("{m}-run"))
                && str_at(e, "/run/agent") == Some("x")
        }),
        "the reference has no process.exec of /bin/true {m}-run in a run of agent x"
    );
    check!(
        c,
        reference
            .iter()
            .any(|e| kind(e) == "network.connect" && has_run(e)),
        "the reference has no network.connect in a run"
    );
    check!(
        c,
        reference.iter().any(|e| !has_run(e)),
        "the reference has no event outside a run"
    );
    let is_exec_or_connect = |e: &Value| matches!(kind(e), "process.exec" | "network.connect");
    check_filtered(
        "kinds=process.exec+network.connect",
        &read_jsonl(&kinds)?,
        &reference,
        is_exec_or_connect,
        &mut c,
    );
    check_filtered(
        "runs_only=true",
        &read_jsonl(&runs)?,
        &reference,
        has_run,
        &mut c,
    );
    check_filtered(
        "kinds=process.exit,runs_only=true",
        &read_jsonl(&both)?,
        &reference,
        |e| kind(e) == "process.exit" && has_run(e),
        &mut c,
    );
    c.finish()
}

// ----- rotation -----

/// `PATH`, `PATH.1`, ... for a rotated file.
fn rotated(path: &Path, i: usize) -> PathBuf {
    if i == 0 {
        path.to_path_buf()
    } else {
        PathBuf::from(format!("{}.{i}", path.display()))
    }
}

/// (g) `file:PATH,max_size=64KB,keep=3`: PATH and PATH.1..3 exist (no
/// PATH.4), none is above 64 KiB but by the line that crossed it, each
/// rotated file was full, and their lines, oldest first, are the tail of the
/// reference with no gap (the oldest events were rotated away).
#[test]
fn file_output_rotates_by_size_and_keeps_n() -> Result<()> {
    const MAX_KB: u64 = 64;
    const KEEP: usize = 3;
    let dir = TempDir::new("rotate")?;
    let path = dir.path().join("rot.jsonl");
    let spec = format!("file:{},max_size={MAX_KB}KB,keep={KEEP}", path.display());
    let mut d = Daemon::start_with_args(&["--output", &spec])?;
    // ~1200 events of ~0.5-1 KB: several times (KEEP + 1) * 64 KB.
    workload(&d, 400)?;
    d.stop()?;
    let reference = reference_map(&d)?;

    let mut c = Checks::new();
    // KB may be 1000 or 1024 bytes.
    let (lower, upper) = (MAX_KB * 1000, MAX_KB * 1024);
    let mut files = Vec::new();
    for i in 0..=KEEP {
        let p = rotated(&path, i);
        let bytes = fs::read(&p).with_context(|| format!("{} should exist", p.display()))?;
        ensure!(
            bytes.ends_with(b"\n"),
            "{} does not end with a complete line",
            p.display()
        );
        files.push((p, bytes));
    }
    let beyond = rotated(&path, KEEP + 1);
    check!(
        c,
        !beyond.exists(),
        "{} exists: keep={KEEP} should keep {KEEP} rotated files",
        beyond.display()
    );
    // Oldest first.
    files.reverse();
    let mut union: Vec<Value> = Vec::new();
    for (i, (p, bytes)) in files.iter().enumerate() {
        let size = bytes.len() as u64;
        let s = text(bytes);
        let lines: Vec<&str> = s.lines().collect();
        let last_len = lines.last().map_or(0, |l| l.len() as u64 + 1);
        check!(
            c,
            size <= upper || size - last_len < upper,
            "{} has {size} bytes: more than {MAX_KB} KB beyond the line that crossed it",
            p.display()
        );
        // A rotated file is full: its next line (first of the newer file) did
        // not fit.
        if let Some((_, newer)) = files.get(i + 1) {
            let next_len = text(newer).lines().next().map_or(0, |l| l.len() as u64 + 1);
            check!(
                c,
                size + next_len > lower,
                "{} was rotated at {size} bytes, well below {MAX_KB} KB (next line {next_len} bytes)",
                p.display()
            );
        }
        for (n, l) in lines.iter().enumerate() {
            union.push(serde_json::from_str(l).with_context(|| {
                format!(
                    "{} line {}: not JSON: {}",
                    p.display(),
                    n + 1,
                    truncate(l, 300)
                )
            })?);
        }
    }
    let seqs: Vec<u64> = union.iter().filter_map(seq_of).collect();
    ensure!(
        seqs.len() == union.len() && !seqs.is_empty(),
        "rotated files: events without seq, or none"
    );
    check_strictly_increasing("rotated files, oldest first", &seqs, &mut c);
    let first = seqs[0];
    let ref_first = reference.keys().next().copied().unwrap_or(0);
    check!(
        c,
        first > ref_first,
        "nothing was rotated away: the oldest kept event is seq {first}, the reference starts at {ref_first}"
    );
    let tail: Vec<u64> = reference.range(first..).map(|(s, _)| *s).collect();
    let miss = missing(&tail, &seqs);
    check!(
        c,
        miss.is_empty(),
        "rotated files (from seq {first}) miss {} reference events: {}",
        miss.len(),
        ranges(&miss)
    );
    check_same_as_reference("rotated file line", &union, &reference, &mut c);
    c.finish()
}

// ----- OCSF -----

/// (h) `file:PATH,format=ocsf`: a run's exec, spawn, exit and loopback
/// connect, validated by the third-party OCSF validator, with Process
/// Activity (1007) and Network Activity (4001) present.
#[test]
fn ocsf_file_output_validates() -> Result<()> {
    let dir = TempDir::new("ocsf")?;
    let path = dir.path().join("ocsf.jsonl");
    let spec = format!("file:{},format=ocsf", path.display());
    let mut d = Daemon::start_with_args(&["--output", &spec])?;
    let m = marker();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let script = format!("/bin/true {m}; {} connect tcp {addr}", helper_bin!());
    let (pid, out) = run_child(&mut d.launch_cmd("x", &[], &["/bin/sh", "-c", &script, &m]))?;
    ensure!(
        out.status.success(),
        "sensor launch: {} {}",
        out.status,
        text(&out.stderr)
    );
    d.wait_for(EVENT_TIMEOUT, |e| is_kind_pid(e, "process.exit", pid))
        .context("the launched shell's exit")?;
    d.wait_for(EVENT_TIMEOUT, |e| {
        kind(e) == "network.connect"
            && has_run(e)
            && e.pointer("/network/dst_port").and_then(Value::as_u64)
                == Some(u64::from(addr.port()))
    })
    .context("the run's loopback connect")?;
    d.stop()?;

    let lines = read_jsonl(&path)?;
    let classes: BTreeSet<u64> = lines
        .iter()
        .filter_map(|e| e.get("class_uid").and_then(Value::as_u64))
        .collect();
    ensure!(
        classes.contains(&1007) && classes.contains(&4001),
        "{} ({} lines) lacks class_uid 1007 or 4001: classes {classes:?}",
        path.display(),
        lines.len()
    );
    let report = sensor_tests::ocsf::validate(&path, &[1007, 4001])?;
    eprintln!("OCSF validator:\n{report}");
    Ok(())
}

// ----- the harness itself (no daemon) -----

fn logger(port: u16, msgid: &str, seq: u64, msg: &str) -> Result<()> {
    let (_, out) = run_child(Command::new("logger").args([
        "--tcp",
        "--octet-count",
        "-n",
        "127.0.0.1",
        "-P",
        &port.to_string(),
        "--rfc5424",
        "--msgid",
        msgid,
        "--sd-id",
        SD_ID,
        "--sd-param",
        &format!("seq=\"{seq}\""),
        msg,
    ]))?;
    ensure!(
        out.status.success(),
        "logger failed: {} {}",
        out.status,
        text(&out.stderr)
    );
    Ok(())
}

/// rsyslogd over TCP takes octet-counted RFC 5424 from `logger`, and again
/// after SIGKILL and a restart on the same port.
#[test]
fn harness_rsyslog_tcp() -> Result<()> {
    let mut rs = Rsyslog::start_tcp()?;
    logger(
        rs.port(),
        "process.exec",
        7,
        r#"{"seq":7,"kind":"process.exec","a":"b c"}"#,
    )?;
    let lines = rs.wait_for_lines(1, Duration::from_secs(10))?;
    let m = SyslogMsg::parse(&lines[0])?;
    ensure!(
        m.version == "1"
            && m.msgid == "process.exec"
            && m.sd_param(SD_ID, "seq").as_deref() == Some("7")
            && m.msg_text() == r#"{"seq":7,"kind":"process.exec","a":"b c"}"#,
        "unexpected {m:?}"
    );
    rs.kill9()?;
    rs.restart()?;
    logger(rs.port(), "process.exit", 8, r#"{"seq":8}"#)?;
    let lines = rs.wait_for_lines(2, Duration::from_secs(10))?;
    let m = SyslogMsg::parse(&lines[1])?;
    ensure!(m.msgid == "process.exit", "unexpected {m:?}");
    Ok(())
}

/// rsyslogd over TLS takes a frame from `openssl s_client` that verifies
/// the server against the test CA (IP SAN 127.0.0.1).
#[test]
fn harness_rsyslog_tls() -> Result<()> {
    let mut rs = Rsyslog::start_tls()?;
    let ca = rs.ca_path().context("no CA")?.to_path_buf();
    let msg = r#"<14>1 2026-01-01T00:00:00.000000000Z h sensor - process.exec [sensor@32473 seq="9"] {"seq":9}"#;
    let frame = format!("{} {msg}", msg.len());
    let frame_path = rs.dir().join("frame");
    fs::write(&frame_path, frame)?;
    let (_, out) = run_child(Command::new("sh").arg("-c").arg(format!(
        "openssl s_client -connect {} -CAfile '{}' -verify_return_error -verify_ip 127.0.0.1 \
         -quiet -no_ign_eof < '{}'",
        rs.addr(),
        ca.display(),
        frame_path.display()
    )))?;
    ensure!(
        out.status.success(),
        "openssl s_client: {} {}",
        out.status,
        text(&out.stderr)
    );
    let lines = rs.wait_for_lines(1, Duration::from_secs(10))?;
    let m = SyslogMsg::parse(&lines[0])?;
    ensure!(
        m.msgid == "process.exec"
            && m.sd_param(SD_ID, "seq").as_deref() == Some("9")
            && m.msg_text() == r#"{"seq":9}"#,
        "unexpected {m:?}"
    );
    Ok(())
}

/// nats-server JetStream: a stream, dedup by Nats-Msg-Id (also after a
/// SIGKILL and restart on the same store), read back in order.
#[test]
fn harness_nats_jetstream() -> Result<()> {
    let mut nats = Nats::start()?;
    nats.create_stream(NATS_STREAM, NATS_SUBJECT)?;
    ensure!(nats.publish(NATS_SUBJECT, Some("h-1"), b"one")? == (1, false));
    ensure!(nats.publish(NATS_SUBJECT, Some("h-2"), b"two")? == (2, false));
    let (_, dup) = nats.publish(NATS_SUBJECT, Some("h-1"), b"one")?;
    ensure!(dup, "a second h-1 is not a duplicate");
    nats.kill9()?;
    nats.restart()?;
    let (_, dup) = nats.publish(NATS_SUBJECT, Some("h-2"), b"two")?;
    ensure!(dup, "h-2 is not a duplicate after the server restarted");
    ensure!(nats.publish(NATS_SUBJECT, Some("h-3"), b"three")?.1 == false);
    let msgs = nats.read_all(NATS_STREAM)?;
    let got: Vec<(u64, Option<&str>, String)> = msgs
        .iter()
        .map(|m| (m.stream_seq, m.header("Nats-Msg-Id"), text(&m.payload)))
        .collect();
    ensure!(
        got == vec![
            (1, Some("h-1"), "one".to_owned()),
            (2, Some("h-2"), "two".to_owned()),
            (3, Some("h-3"), "three".to_owned())
        ],
        "read back {got:?}"
    );
    ensure!(nats.stream_len(NATS_STREAM)? == 3);
    Ok(())
}

/// One HTTP/1.1 request on a fresh connection; (status, body).
fn http_post(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = text(&resp);
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("bad response {resp:?}"))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// The HTTP receiver: HEC and bulk answers, gzip bodies, 503 on demand,
/// connection refused after kill9, same port after restart.
#[test]
fn harness_http_receiver() -> Result<()> {
    use flate2::{Compression, write::GzEncoder};
    let mut recv = HttpReceiver::start()?;
    let port = recv.port();
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(br#"{"event":{"seq":1}}{"event":{"seq":2}}"#)?;
    let hec_body = gz.finish()?;
    let (status, body) = http_post(
        port,
        HEC_PATH,
        &[("Content-Encoding", "gzip"), ("Authorization", "Splunk t")],
        &hec_body,
    )?;
    ensure!(
        status == 200 && body == r#"{"text":"Success","code":0}"#,
        "{status} {body}"
    );
    recv.fail_with(503);
    let bulk_body = b"{\"create\":{\"_index\":\"i\"}}\n{\"seq\":3}\n{\"create\":{\"_index\":\"i\"}}\n{\"seq\":4}\n";
    let (status, _) = http_post(port, "/_bulk", &[], bulk_body)?;
    ensure!(status == 503, "fail_with(503) answered {status}");
    recv.succeed();
    let (status, body) = http_post(port, "/_bulk", &[], bulk_body)?;
    let v: Value = serde_json::from_str(&body)?;
    ensure!(
        status == 200
            && v["errors"] == Value::Bool(false)
            && v["items"].as_array().map(Vec::len) == Some(2),
        "{status} {body}"
    );
    recv.fail_for(Duration::from_millis(300));
    ensure!(http_post(port, "/_bulk", &[], bulk_body)?.0 == 503);
    thread::sleep(Duration::from_millis(400));
    ensure!(http_post(port, "/_bulk", &[], bulk_body)?.0 == 200);
    recv.kill9()?;
    ensure!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a killed receiver still accepts connections"
    );
    recv.restart()?;
    ensure!(recv.port() == port);
    ensure!(http_post(port, HEC_PATH, &[], b"{}")?.0 == 200);
    let reqs = recv.requests();
    let summary: Vec<(u16, u32, String)> = reqs
        .iter()
        .map(|r| (r.status, r.generation, r.body_text()))
        .collect();
    ensure!(reqs.len() == 6, "{summary:?}");
    ensure!(
        reqs[0].body_text() == r#"{"event":{"seq":1}}{"event":{"seq":2}}"#
            && reqs[0].header("authorization") == Some("Splunk t")
            && reqs[0].ok(),
        "{summary:?}"
    );
    ensure!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>() == [200, 503, 200, 503, 200, 200]
            && reqs[5].generation == 1,
        "{summary:?}"
    );
    Ok(())
}

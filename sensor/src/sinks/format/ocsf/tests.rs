//! The OCSF mapping, event by event (typed events in, the OCSF JSON read
//! back as a `Value` to look at).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, SystemTime},
};

use serde_json::{Value, json};

use super::encode;
use crate::{
    event::{
        Attributed, Blind, Decision, Degraded, Event, Exec, ExecResult, Kind, Lost, NetResult,
        Network, Process, RunDetails, RunRef, StartedBy, Tamper, TamperFile, TamperTarget,
        Timestamp, Verdict,
    },
    identity::Host,
};

const BOOT: &str = "0b5f0e3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c";

fn ocsf(event: &Event) -> Value {
    let mut out = Vec::new();
    encode(event, &mut out).unwrap();
    assert!(!out.contains(&b'\n'), "one line, no newline");
    let v: Value = serde_json::from_slice(&out).unwrap();
    // A key written twice would vanish in the parse.
    assert_eq!(
        serde_json::to_vec(&v).unwrap().len(),
        out.len(),
        "no duplicate key: {}",
        String::from_utf8_lossy(&out)
    );
    v
}

/// `2023-11-14T22:13:20` UTC plus `ns` nanoseconds.
fn at(secs: u64, ns: u32) -> Timestamp {
    Timestamp(SystemTime::UNIX_EPOCH + Duration::new(secs, ns))
}

const T0: u64 = 1_700_000_000;

fn run() -> RunRef {
    RunRef {
        id: "run-1".into(),
        agent: "research-bot".into(),
        principal: "alice".into(),
        principal_claimed: None,
        parent_id: Some("run-0".into()),
        root_id: "run-0".into(),
        depth: 1,
        attribution: Attributed::Inherited,
        tool_call: None,
        details: None,
    }
}

fn run_json() -> Value {
    json!({"id": "run-1", "agent": "research-bot", "principal": "alice",
           "parent_id": "run-0", "root_id": "run-0", "depth": 1,
           "attribution": "inherited"})
}

fn process() -> Process {
    Process {
        key: "b00t:700:4242".into(),
        pid: 4242,
        tid: 4242,
        ppid: 4200,
        parent_key: "b00t:600:4200".into(),
        uid: 1000,
        gid: 1000,
        comm: "curl".into(),
        exe: Some("/usr/bin/curl".into()),
        argv: Some(vec!["curl".into(), "-s".into(), "https://x".into()]),
        argc: Some(3),
        argv_truncated: Some(false),
        argv_len: Some(19),
        cwd: Some("/home/alice".into()),
        ..Process::default()
    }
}

fn host(name: &str, boot: &str) -> Arc<Host> {
    Arc::new(Host {
        name: name.into(),
        boot_id: boot.into(),
    })
}

fn bare(kind: Kind, seq: u64, time: Timestamp, host: Arc<Host>) -> Event {
    Event::new(kind, seq, time, host)
}

fn event(kind: Kind) -> Event {
    let mut e = bare(kind, 42, at(T0, 123_456_789), host("h1", BOOT));
    e.run = Some(run());
    e.process = Some(process());
    e
}

fn proc_mut(e: &mut Event) -> &mut Process {
    e.process.as_mut().unwrap()
}

fn exec(filename: &str, result: ExecResult, old_tid: u32) -> Exec {
    Exec {
        filename: filename.into(),
        result,
        errno: None,
        error: None,
        old_tid,
        inode: Some(77),
        dev: Some("8:1".into()),
        dev_raw: None,
        mnt_id: None,
        modified_in_run: None,
    }
}

fn exec_event() -> Event {
    let mut e = event(Kind::ProcessExec);
    e.exec = Some(exec("curl", ExecResult::Ok, 4243));
    e
}

fn tcp(result: NetResult, errno: Option<i32>, error: Option<&str>) -> Network {
    Network {
        transport: "tcp",
        family: "ipv4",
        dst_ip: Some("203.0.113.7".parse().unwrap()),
        dst_port: Some(443),
        result,
        errno,
        error: error.map(Into::into),
        ..Network::default()
    }
}

fn connect_event(result: NetResult, errno: Option<i32>, error: Option<&str>) -> Event {
    let mut e = event(Kind::NetworkConnect);
    e.network = Some(tcp(result, errno, error));
    e
}

fn net_mut(e: &mut Event) -> &mut Network {
    e.network.as_mut().unwrap()
}

fn policy(verdict: Decision, enforced: bool, rule: &str) -> Verdict {
    Verdict {
        name: "research".into(),
        verdict,
        rule: rule.into(),
        enforced,
        version: 1,
    }
}

fn policy_json(verdict: &str, enforced: bool, rule: &str) -> Value {
    json!({"name": "research", "verdict": verdict, "rule": rule,
           "enforced": enforced, "version": 1})
}

fn assert_class(o: &Value, class: u64, category: u64, activity: u64) {
    assert_eq!(o["class_uid"], class, "{o}");
    assert_eq!(o["category_uid"], category, "{o}");
    assert_eq!(o["activity_id"], activity, "{o}");
    assert_eq!(o["type_uid"], class * 100 + activity, "{o}");
}

/// OCSF attributes are never null (the validators refuse them); only
/// `unmapped` may hold them.
fn assert_no_null(v: &Value, path: &str) {
    match v {
        Value::Null => panic!("null at {path}"),
        Value::Object(m) => {
            for (k, v) in m {
                if path.is_empty() && k == "unmapped" {
                    continue;
                }
                assert_no_null(v, &format!("{path}.{k}"));
            }
        }
        Value::Array(a) => {
            for (i, v) in a.iter().enumerate() {
                assert_no_null(v, &format!("{path}[{i}]"));
            }
        }
        _ => {}
    }
}

fn assert_run_attached(o: &Value) {
    assert_eq!(o["actor"]["session"]["uid"], "run-1");
    assert_eq!(o["actor"]["user"]["name"], "alice");
    assert_eq!(o["actor"]["app_name"], "research-bot");
    assert_eq!(o["metadata"]["correlation_uid"], "run-0");
    assert_eq!(o["unmapped"]["run"], run_json());
}

#[test]
fn exec_is_a_process_launch_of_type_exec() {
    let o = ocsf(&exec_event());
    assert_class(&o, 1007, 1, 1);
    assert_eq!(o["type_uid"], 100_701);
    assert_eq!(o["class_name"], "Process Activity");
    assert_eq!(o["activity_name"], "Launch");
    assert_eq!(o["type_name"], "Process Activity: Launch");
    assert_eq!(o["launch_type_id"], 3);
    assert_eq!(o["status_id"], 1);
    assert_eq!(o["severity_id"], 1);
    let p = &o["process"];
    assert_eq!(p["pid"], 4242);
    assert_eq!(p["uid"], "b00t:700:4242");
    assert_eq!(p["name"], "curl");
    assert_eq!(p["file"]["path"], "/usr/bin/curl");
    assert_eq!(p["file"]["name"], "curl");
    assert_eq!(p["cmd_line"], "curl -s https://x");
    assert_eq!(p["working_directory"], "/home/alice");
    assert_eq!(p["user"]["uid"], "1000");
    assert_eq!(p["parent_process"]["pid"], 4200);
    assert_eq!(p["parent_process"]["uid"], "b00t:600:4200");
    assert_eq!(o["actor"]["process"]["pid"], 4242);
    assert_eq!(o["actor"]["process"]["tid"], 4243);
    assert_eq!(o["device"]["hostname"], "h1");
    assert_eq!(o["device"]["boot_uid"], BOOT);
    assert_eq!(o["metadata"]["version"], super::OCSF_VERSION);
    assert_eq!(o["metadata"]["product"]["name"], "sensor");
    assert_eq!(o["metadata"]["product"]["vendor_name"], "sensor");
    assert_eq!(o["metadata"]["profiles"], json!(["host"]));
    assert_eq!(o["metadata"]["sequence"], 42);
    assert_eq!(o["metadata"]["event_code"], "process.exec");
    assert_eq!(o["metadata"]["log_version"], "sensor.event/v1");
    assert_run_attached(&o);
    let u = &o["unmapped"];
    assert_eq!(u["kind"], "process.exec");
    assert_eq!(u["seq"], 42);
    assert_eq!(u["process"]["argv"], json!(["curl", "-s", "https://x"]));
    assert_eq!(u["process"]["gid"], 1000);
    assert!(u["process"].get("pid").is_none(), "mapped fields stay out");
    assert!(u["process"].get("exit_code").is_none(), "nulls stay out");
    assert_eq!(u["exec"]["filename"], "curl");
    assert_eq!(u["exec"]["inode"], 77);
    assert!(u.get("policy").is_none());
    assert_no_null(&o, "");
}

#[test]
fn time_is_milliseconds_since_the_epoch() {
    let o = ocsf(&exec_event());
    assert_eq!(o["time"], 1_700_000_000_123_i64);
    assert_eq!(
        o["metadata"]["original_time"],
        "2023-11-14T22:13:20.123456789Z"
    );
    let ms = |secs, ns| at(secs, ns).unix_ms();
    assert_eq!(ms(0, 0), 0);
    assert_eq!(ms(0, 999_999_999), 999);
    assert_eq!(ms(0, 500_000_000), 500);
    assert_eq!(ms(1_709_164_800, 0), 1_709_164_800_000);
    assert_eq!(ms(1_795_428_000, 123_456_789), 1_795_428_000_123);
    // A time before the epoch or past year 9999 is written as RFC 3339
    // can hold it, and `time` agrees with it.
    let mut e = exec_event();
    e.time = Timestamp(SystemTime::UNIX_EPOCH - Duration::from_secs(5));
    let o = ocsf(&e);
    assert_eq!(o["time"], 0);
    assert_eq!(
        o["metadata"]["original_time"],
        "1970-01-01T00:00:00.000000000Z"
    );
    e.time = Timestamp(SystemTime::UNIX_EPOCH + Duration::from_secs(400_000_000_000));
    let o = ocsf(&e);
    assert_eq!(o["time"], 253_402_300_799_999_i64);
    assert_eq!(
        o["metadata"]["original_time"],
        "9999-12-31T23:59:59.999999999Z"
    );
    assert!(o["metadata"].get("debug").is_none());
}

#[test]
fn failed_exec_is_a_failed_launch() {
    let mut e = exec_event();
    let mut x = exec("/nope", ExecResult::Error, 4242);
    x.errno = Some(2);
    x.error = Some("ENOENT".into());
    e.exec = Some(x);
    let o = ocsf(&e);
    assert_class(&o, 1007, 1, 1);
    assert_eq!(o["status_id"], 2);
    assert_eq!(o["status"], "Failure");
    assert_eq!(o["status_code"], "ENOENT");
    assert_eq!(o["status_detail"], "exec failed: ENOENT (errno 2)");
    assert_eq!(o["process"]["file"]["path"], "/nope");
    assert_eq!(o["process"]["file"]["name"], "nope");
    assert_eq!(o["actor"]["process"]["file"]["path"], "/usr/bin/curl");
    assert_no_null(&o, "");
}

#[test]
fn spawn_is_a_fork_launch_by_the_parent() {
    let mut e = event(Kind::ProcessSpawn);
    proc_mut(&mut e).parent_exe = Some("/usr/bin/bash".into());
    proc_mut(&mut e).exe = Some("/usr/bin/bash".into());
    proc_mut(&mut e).argv = None;
    let o = ocsf(&e);
    assert_class(&o, 1007, 1, 1);
    assert_eq!(o["launch_type_id"], 2);
    assert_eq!(o["launch_type"], "Fork");
    assert_eq!(o["actor"]["process"]["pid"], 4200);
    assert_eq!(o["actor"]["process"]["file"]["path"], "/usr/bin/bash");
    assert_eq!(o["process"]["pid"], 4242);
    assert!(o["process"].get("cmd_line").is_none());
    assert_run_attached(&o);
    assert_no_null(&o, "");
}

#[test]
fn exit_is_a_terminate() {
    let mut e = event(Kind::ProcessExit);
    proc_mut(&mut e).exit_code = Some(3);
    let o = ocsf(&e);
    assert_class(&o, 1007, 1, 2);
    assert_eq!(o["type_uid"], 100_702);
    assert_eq!(o["activity_name"], "Terminate");
    assert_eq!(o["exit_code"], 3);
    assert_eq!(o["process"]["terminated_time"], 1_700_000_000_123_i64);
    assert_run_attached(&o);
    let mut e = event(Kind::ProcessExit);
    proc_mut(&mut e).exit_signal = Some(9);
    let o = ocsf(&e);
    assert!(o.get("exit_code").is_none());
    assert_eq!(o["status_detail"], "killed by signal 9");
    assert_eq!(o["unmapped"]["process"]["exit_signal"], 9);
    assert_no_null(&o, "");
}

#[test]
fn connect_results_map_to_network_activities() {
    let o = ocsf(&connect_event(NetResult::Ok, None, None));
    assert_class(&o, 4001, 4, 1);
    assert_eq!(o["type_uid"], 400_101);
    assert_eq!(o["status_id"], 1);
    assert_eq!(o["dst_endpoint"], json!({"ip": "203.0.113.7", "port": 443}));
    let c = &o["connection_info"];
    assert_eq!(c["protocol_name"], "tcp");
    assert_eq!(c["protocol_num"], 6);
    assert_eq!(c["protocol_ver_id"], 4);
    assert_eq!(c["direction_id"], 2);
    assert_eq!(o["actor"]["process"]["pid"], 4242);
    assert_eq!(o["actor"]["process"]["file"]["path"], "/usr/bin/curl");
    assert_run_attached(&o);
    assert_no_null(&o, "");

    let o = ocsf(&connect_event(
        NetResult::Refused,
        Some(111),
        Some("ECONNREFUSED"),
    ));
    assert_class(&o, 4001, 4, 5);
    assert_eq!(o["activity_name"], "Refuse");
    assert_eq!(o["status_id"], 2);
    assert_eq!(o["status_code"], "ECONNREFUSED");
    assert_eq!(o["unmapped"]["network"]["errno"], 111);

    let o = ocsf(&connect_event(
        NetResult::Error,
        Some(101),
        Some("ENETUNREACH"),
    ));
    assert_class(&o, 4001, 4, 4);
    assert_eq!(o["activity_name"], "Fail");

    let o = ocsf(&connect_event(
        NetResult::InProgress,
        Some(115),
        Some("EINPROGRESS"),
    ));
    assert_class(&o, 4001, 4, 1);
    assert_eq!(o["status_id"], 0);

    let mut e = connect_event(NetResult::Ok, None, None);
    net_mut(&mut e).transport = "udp";
    net_mut(&mut e).family = "ipv6";
    net_mut(&mut e).dst_ip = Some("::1".parse().unwrap());
    let o = ocsf(&e);
    assert_eq!(o["connection_info"]["protocol_num"], 17);
    assert_eq!(o["connection_info"]["protocol_ver_id"], 6);
}

#[test]
fn policy_violations_take_the_class_of_their_action() {
    // A denied exec, blocked: the exec, then its violation.
    let mut e = exec_event();
    e.policy = Some(policy(Decision::Deny, true, "exec.allow (no rule matches)"));
    let o = ocsf(&e);
    assert_class(&o, 1007, 1, 1);
    assert_eq!(o["action_id"], 2);
    assert_eq!(o["disposition_id"], 2);
    assert_eq!(o["disposition"], "Blocked");
    assert_eq!(o["status_id"], 2);
    // The denial is counted once: the exec carries it as the alert, and
    // its policy.violation twin repeats it (left out where the exec is
    // written, see `a_denial_is_one_record`).
    assert_eq!(o["is_alert"], true);
    assert_eq!(o["severity_id"], 3);
    assert_eq!(
        o["message"],
        "policy violation: policy research denies exec of /usr/bin/curl (exec.allow (no rule \
         matches)); blocked"
    );
    assert_eq!(o["policy"]["name"], "research");
    assert_eq!(o["policy"]["version"], "1");
    assert_eq!(o["policy"]["data"]["rule"], "exec.allow (no rule matches)");
    assert_eq!(
        o["metadata"]["profiles"],
        json!(["host", "security_control"])
    );
    e.kind = Kind::PolicyViolation;
    e.seq = 43;
    let o = ocsf(&e);
    assert_class(&o, 1007, 1, 1);
    assert_eq!(o["launch_type_id"], 3);
    assert_eq!(o["is_alert"], true);
    assert_eq!(o["severity_id"], 3);
    assert_eq!(o["unmapped"]["kind"], "policy.violation");
    assert_eq!(o["unmapped"]["seq"], 43);
    assert_eq!(
        o["unmapped"]["policy"],
        policy_json("deny", true, "exec.allow (no rule matches)")
    );
    assert!(o["message"].as_str().unwrap().contains("/usr/bin/curl"));
    assert_run_attached(&o);
    assert_no_null(&o, "");

    // A denied connect, audit only.
    let mut e = connect_event(NetResult::Ok, None, None);
    e.kind = Kind::PolicyViolation;
    e.policy = Some(policy(
        Decision::Deny,
        false,
        "connect.allow (no rule matches)",
    ));
    let o = ocsf(&e);
    assert_class(&o, 4001, 4, 1);
    // Would have been blocked: the connect went ahead (Allowed), the deny
    // was logged.
    assert_eq!(o["action_id"], 1);
    assert_eq!(o["action"], "Allowed");
    assert_eq!(o["disposition_id"], 17);
    assert_eq!(o["disposition"], "Logged");
    assert_eq!(o["status_id"], 1);
    assert_eq!(o["severity_id"], 4);
    assert_eq!(o["is_alert"], true);
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .ends_with("would have been blocked (audit: reported, not blocked)"),
        "{o}"
    );
    assert_eq!(
        o["status_detail"],
        "would have been blocked by policy research: connect.allow (no rule matches) (audit)"
    );

    // A fork beyond max_processes.
    let mut e = event(Kind::PolicyViolation);
    e.policy = Some(policy(Decision::Deny, true, "max_processes 5"));
    let o = ocsf(&e);
    assert_class(&o, 1007, 1, 1);
    assert_eq!(o["launch_type_id"], 2);
    assert_eq!(o["disposition_id"], 2);

    // An allowed exec.
    let mut e = exec_event();
    e.policy = Some(policy(Decision::Allow, false, "exec.allow /usr/bin/"));
    let o = ocsf(&e);
    assert_eq!(o["action_id"], 1);
    assert_eq!(o["disposition_id"], 1);
    assert_eq!(o["status_id"], 1);
    assert_eq!(o["severity_id"], 1);
}

#[test]
fn runs_start_and_stop_an_application() {
    let mut e = event(Kind::RunStart);
    let mut r = run();
    let details = RunDetails {
        uid: 1000,
        policy: None,
        labels: BTreeMap::from([("team".to_owned(), "a".to_owned())]),
        started_by: StartedBy::Launch,
        start: at(T0, 0),
        expires: Some(at(T0 + 3600, 0)),
        end: None,
        end_reason: None,
    };
    r.details = Some(details.clone());
    e.run = Some(r.clone());
    let mut r_json = run_json();
    r_json["uid"] = 1000.into();
    r_json["policy"] = Value::Null;
    r_json["labels"] = json!({"team": "a"});
    r_json["started_by"] = "launch".into();
    r_json["start"] = "2023-11-14T22:13:20.000000000Z".into();
    r_json["expires"] = "2023-11-14T23:13:20.000000000Z".into();
    let o = ocsf(&e);
    assert_class(&o, 6002, 6, 3);
    assert_eq!(o["type_uid"], 600_203);
    assert_eq!(o["app"]["name"], "research-bot");
    assert_eq!(o["actor"]["session"]["uid"], "run-1");
    assert_eq!(o["actor"]["session"]["created_time"], 1_700_000_000_000_i64);
    assert_eq!(
        o["actor"]["session"]["expiration_time"],
        1_700_003_600_000_i64
    );
    assert_eq!(o["actor"]["user"]["uid"], "1000");
    assert_eq!(o["actor"]["process"]["pid"], 4242);
    assert_eq!(o["unmapped"]["run"], r_json);
    assert_no_null(&o, "");

    let mut e = event(Kind::RunEnd);
    e.process = None;
    r.details = Some(RunDetails {
        end: Some(at(T0 + 5, 500_000_000)),
        end_reason: Some("exited".into()),
        ..details
    });
    e.run = Some(r);
    let o = ocsf(&e);
    assert_class(&o, 6002, 6, 4);
    assert_eq!(o["duration"], 5500);
    assert_eq!(o["end_time"], 1_700_000_005_500_i64);
    assert_eq!(o["status_detail"], "exited");
    assert_eq!(o["actor"]["session"]["expiration_reason"], "exited");
    assert_no_null(&o, "");
}

#[test]
fn lost_and_unknown_kinds_are_base_events() {
    let mut e = bare(Kind::SensorLost, 7, at(T0, 0), host("h1", "b"));
    e.lost = Some(Box::new(Lost {
        total: 5,
        by_kind: BTreeMap::from([("process.exec", 5)]),
        cumulative: 9,
        ..Lost::default()
    }));
    let o = ocsf(&e);
    assert_class(&o, 0, 0, 99);
    assert_eq!(o["type_uid"], 99);
    assert_eq!(o["type_name"], "Base Event: Other");
    assert_eq!(o["activity_name"], "Events Lost");
    assert_eq!(o["count"], 5);
    assert_eq!(o["severity_id"], 3);
    assert!(o.get("actor").is_none());
    assert!(o["metadata"].get("correlation_uid").is_none());
    assert_eq!(o["unmapped"]["lost"]["cumulative"], 9);
    assert!(o["unmapped"]["run"].is_null());
    assert_no_null(&o, "");

    // A kind with no class of its own (an exec without its process): the
    // base event named after the kind, the objects kept whole.
    let mut e = exec_event();
    e.process = None;
    let o = ocsf(&e);
    assert_class(&o, 0, 0, 99);
    assert_eq!(o["activity_name"], "process.exec");
    assert_eq!(o["type_name"], "Base Event: Other");
    assert_eq!(o["unmapped"]["exec"]["result"], "ok", "kept whole");
    assert_eq!(o["unmapped"]["exec"]["old_tid"], 4243, "kept whole");
    assert_eq!(o["actor"]["session"]["uid"], "run-1");

    // An event with nothing but its envelope: still one valid base event.
    let o = ocsf(&bare(Kind::SensorBlind, 1, at(T0, 0), host("", "")));
    assert_class(&o, 0, 0, 99);
    assert_eq!(o["device"]["hostname"], "unknown");
    assert_no_null(&o, "");
}

fn tamper_event(repaired: bool) -> Event {
    let mut e = bare(Kind::SensorTamper, 9, at(T0, 0), host("h1", BOOT));
    e.tamper = Some(Box::new(Tamper {
        method: "integrity",
        what: "pin removed".into(),
        object: "/sys/fs/bpf/sensor/links/snsr_exec".into(),
        detected: "integrity check",
        repaired: Some(repaired),
        detail: Some("link 7 of snsr_exec pinned again".into()),
        ..Tamper::default()
    }));
    e
}

#[test]
fn a_tamper_is_a_detection_finding() {
    let o = ocsf(&tamper_event(true));
    assert_class(&o, 2004, 2, 1);
    assert_eq!(o["class_name"], "Detection Finding");
    assert_eq!(o["type_name"], "Detection Finding: Create");
    assert_eq!(o["finding_info"]["uid"], format!("{BOOT}:9"));
    assert_eq!(
        o["finding_info"]["title"],
        "pin removed: /sys/fs/bpf/sensor/links/snsr_exec"
    );
    assert_eq!(
        o["finding_info"]["desc"],
        "link 7 of snsr_exec pinned again"
    );
    assert_eq!(o["finding_info"]["types"], json!(["sensor.tamper"]));
    assert_eq!(o["is_alert"], true);
    assert_eq!(o["severity_id"], 3);
    assert_eq!(o["unmapped"]["tamper"]["detected"], "integrity check");
    assert!(o["unmapped"]["run"].is_null());
    assert_no_null(&o, "");
    let o = ocsf(&tamper_event(false));
    assert_eq!(o["severity_id"], 4, "not put back: High");
    // A tamper without its object is still a valid event (Base).
    let mut e = tamper_event(true);
    e.tamper = None;
    assert_class(&ocsf(&e), 0, 0, 99);
}

fn unix_event(result: NetResult, errno: Option<i32>, error: Option<&str>) -> Event {
    let mut e = event(Kind::NetworkConnect);
    e.network = Some(Network {
        transport: "stream",
        family: "unix",
        path: Some("/run/docker.sock".into()),
        abstract_name: Some(false),
        result,
        errno,
        error: error.map(Into::into),
        ..Network::default()
    });
    e
}

#[test]
fn unix_connects_are_local_network_activity() {
    let mut e = unix_event(NetResult::Error, Some(1), Some("EPERM"));
    e.policy = Some(policy(Decision::Deny, true, "unix.allow (no rule matches)"));
    let o = ocsf(&e);
    assert_class(&o, 4001, 4, 4);
    assert_eq!(o["dst_endpoint"], json!({"name": "/run/docker.sock"}));
    assert_eq!(o["connection_info"]["direction_id"], 4);
    assert_eq!(o["connection_info"]["direction"], "Local");
    assert!(o["connection_info"].get("protocol_name").is_none());
    assert!(o["connection_info"].get("protocol_ver_id").is_none());
    assert_eq!(o["status_code"], "EPERM");
    assert_eq!(o["disposition"], "Blocked");
    assert_eq!(o["unmapped"]["network"]["family"], "unix");
    assert_eq!(o["unmapped"]["network"]["transport"], "stream");
    assert_eq!(o["unmapped"]["network"]["abstract"], false);
    assert!(o["unmapped"]["network"].get("path").is_none(), "mapped");
    assert_run_attached(&o);
    assert_no_null(&o, "");
    e.kind = Kind::PolicyViolation;
    let o = ocsf(&e);
    assert_class(&o, 4001, 4, 4);
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains("connect to Unix socket /run/docker.sock"),
        "{o}"
    );

    // Connected, but to another socket than the allowed path named.
    let mut e = unix_event(NetResult::Killed, None, None);
    net_mut(&mut e).peer_path = Some("/tmp/other.sock".into());
    e.policy = Some(policy(
        Decision::Deny,
        true,
        "unix.allow (the socket reached is not the one the allowed address names)",
    ));
    let o = ocsf(&e);
    assert_class(&o, 4001, 4, 1);
    assert_eq!(o["status_id"], 2);
    assert_eq!(o["unmapped"]["network"]["peer_path"], "/tmp/other.sock");
    assert_no_null(&o, "");
    let mut e = unix_event(NetResult::Killed, None, None);
    net_mut(&mut e).peer_path = Some("/tmp/other.sock".into());
    let o = ocsf(&e);
    assert!(
        o["status_detail"]
            .as_str()
            .unwrap()
            .contains("/tmp/other.sock"),
        "{o}"
    );
}

#[test]
fn unconnected_datagrams_are_traffic_with_their_count() {
    let mut e = connect_event(NetResult::Unknown, None, None);
    net_mut(&mut e).transport = "udp";
    net_mut(&mut e).dst_port = Some(53);
    net_mut(&mut e).sends = Some(8);
    net_mut(&mut e).via = Some("sendmsg");
    let o = ocsf(&e);
    assert_class(&o, 4001, 4, 6);
    assert_eq!(o["activity_name"], "Traffic");
    assert_eq!(o["traffic"], json!({"packets_out": 8}));
    assert_eq!(o["dst_endpoint"], json!({"ip": "203.0.113.7", "port": 53}));
    assert_eq!(o["connection_info"]["direction_id"], 2);
    assert_eq!(o["unmapped"]["network"]["via"], "sendmsg");
    assert!(o["unmapped"]["network"].get("sends").is_none(), "mapped");
    assert!(
        o["status_detail"]
            .as_str()
            .unwrap()
            .starts_with("8 datagrams")
    );
    assert_no_null(&o, "");
}

#[test]
fn listeners_and_accepted_connections_are_inbound() {
    let mut e = event(Kind::NetworkListen);
    e.network = Some(Network {
        transport: "tcp",
        family: "ipv4",
        local_ip: Some("0.0.0.0".parse().unwrap()),
        local_port: Some(4444),
        result: NetResult::Ok,
        ..Network::default()
    });
    let o = ocsf(&e);
    assert_class(&o, 4001, 4, 7);
    assert_eq!(o["activity_name"], "Listen");
    assert_eq!(o["dst_endpoint"], json!({"ip": "0.0.0.0", "port": 4444}));
    assert!(o.get("src_endpoint").is_none());
    assert_eq!(o["connection_info"]["direction_id"], 1);
    assert!(o["unmapped"].get("network").is_none(), "all mapped");
    assert_no_null(&o, "");

    let mut e = event(Kind::NetworkAccept);
    e.network = Some(Network {
        transport: "tcp",
        family: "ipv6",
        local_ip: Some("::1".parse().unwrap()),
        local_port: Some(4444),
        src_ip: Some("::1".parse().unwrap()),
        src_port: Some(50000),
        result: NetResult::Ok,
        ..Network::default()
    });
    let o = ocsf(&e);
    assert_class(&o, 4001, 4, 1);
    assert_eq!(o["src_endpoint"], json!({"ip": "::1", "port": 50000}));
    assert_eq!(o["dst_endpoint"], json!({"ip": "::1", "port": 4444}));
    assert_eq!(o["connection_info"]["direction"], "Inbound");
    assert_eq!(o["connection_info"]["protocol_ver_id"], 6);
    assert_no_null(&o, "");
}

#[test]
fn raw_sockets_have_this_host_as_their_endpoint() {
    let mut e = event(Kind::NetworkSocket);
    e.network = Some(Network {
        transport: "icmp",
        family: "ipv6",
        result: NetResult::Error,
        errno: Some(1),
        error: Some("EPERM".into()),
        ..Network::default()
    });
    e.policy = Some(policy(
        Decision::Deny,
        true,
        "raw_sockets (a raw, ICMP or packet socket reaches any address)",
    ));
    let o = ocsf(&e);
    assert_class(&o, 4001, 4, 4);
    assert_eq!(o["src_endpoint"], json!({"hostname": "h1"}));
    assert!(o.get("dst_endpoint").is_none());
    assert_eq!(o["connection_info"]["protocol_num"], 58);
    assert_eq!(o["connection_info"]["direction_id"], 0);
    assert_eq!(
        o["status_detail"],
        "blocked by policy research: raw_sockets (a raw, ICMP or packet socket reaches any address)"
    );
    e.kind = Kind::PolicyViolation;
    let o = ocsf(&e);
    assert_class(&o, 4001, 4, 4);
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains("a icmp socket (ipv6)"),
        "{o}"
    );
    assert_no_null(&o, "");

    // A packet socket: made, and its creator killed (enforced).
    let mut e = event(Kind::NetworkSocket);
    e.network = Some(Network {
        transport: "packet",
        family: "packet",
        result: NetResult::Ok,
        ..Network::default()
    });
    let o = ocsf(&e);
    assert_class(&o, 4001, 4, 1);
    assert!(o["connection_info"].get("protocol_num").is_none());
    assert!(o["connection_info"].get("protocol_ver_id").is_none());
    assert_no_null(&o, "");
}

fn process_tamper(method: &'static str, killed: bool) -> Event {
    let mut e = event(Kind::ProcessTamper);
    e.tamper = Some(Box::new(Tamper {
        method,
        what: "ptrace attach".into(),
        object: "pid 77 (/usr/bin/sleep)".into(),
        detected: "kernel",
        target: Some(TamperTarget {
            pid: 77,
            key: "b00t:500:77".into(),
            exe: Some("/usr/bin/sleep".into()),
            run: None,
        }),
        killed: Some(killed),
        ..Tamper::default()
    }));
    e
}

fn tamper_mut(e: &mut Event) -> &mut Tamper {
    e.tamper.as_mut().unwrap()
}

#[test]
fn a_process_tamper_is_an_inject_into_the_target() {
    let mut e = process_tamper("ptrace", true);
    e.policy = Some(policy(
        Decision::Deny,
        true,
        "tamper (a process outside the run, or the sensor)",
    ));
    let o = ocsf(&e);
    assert_class(&o, 1007, 1, 4);
    assert_eq!(o["activity_name"], "Inject");
    assert_eq!(o["type_name"], "Process Activity: Inject");
    assert_eq!(o["injection_type_id"], 99);
    assert_eq!(o["injection_type"], "ptrace attach");
    assert_eq!(o["process"]["pid"], 77);
    assert_eq!(o["process"]["uid"], "b00t:500:77");
    assert_eq!(o["process"]["file"]["path"], "/usr/bin/sleep");
    assert!(
        o["process"].get("session").is_none(),
        "the target is in no run"
    );
    assert_eq!(o["actor"]["process"]["pid"], 4242);
    assert_eq!(o["is_alert"], true);
    assert_eq!(o["severity_id"], 3);
    assert_eq!(o["status_id"], 2);
    assert_eq!(o["disposition"], "Blocked");
    assert_eq!(o["unmapped"]["tamper"]["target"]["pid"], 77);
    assert_run_attached(&o);
    assert_no_null(&o, "");
    e.kind = Kind::PolicyViolation;
    let o = ocsf(&e);
    assert_class(&o, 1007, 1, 4);
    assert!(
        o["message"].as_str().unwrap().contains("ptrace attach"),
        "{o}"
    );

    // Not killed (no policy, or audit): High, status unknown.
    let mut e = process_tamper("process_vm_writev", false);
    tamper_mut(&mut e).target.as_mut().unwrap().run = Some(run());
    let o = ocsf(&e);
    assert_class(&o, 1007, 1, 4);
    assert_eq!(o["severity_id"], 4);
    assert_eq!(o["status_id"], 0);
    assert_eq!(o["is_alert"], true);
    assert_eq!(o["process"]["session"]["uid"], "run-1", "the target's run");
    assert!(o["message"].as_str().unwrap().ends_with("not blocked"));
    assert_no_null(&o, "");

    let o = ocsf(&process_tamper("proc_mem", true));
    assert_class(&o, 1007, 1, 4);
    assert_eq!(o["injection_type"], "/proc/PID/mem");
    let o = ocsf(&process_tamper("pidfd_getfd", true));
    assert_class(&o, 1007, 1, 3);
    assert_eq!(o["activity_name"], "Open");
    assert!(o.get("injection_type_id").is_none());
    let mut e = process_tamper("something-new", false);
    tamper_mut(&mut e).target = None;
    let o = ocsf(&e);
    assert_class(&o, 1007, 1, 99);
    assert_eq!(o["activity_name"], "ptrace attach");
    assert_eq!(o["process"]["pid"], 4242, "no target: the caller");
    assert_no_null(&o, "");
}

#[test]
fn a_kernel_sensor_tamper_is_a_finding_with_its_actor() {
    let mut e = event(Kind::SensorTamper);
    e.tamper = Some(Box::new(Tamper {
        method: "signal",
        what: "signal SIGSTOP to the sensor daemon".into(),
        object: "pid 100".into(),
        detected: "kernel",
        target: Some(TamperTarget {
            pid: 100,
            key: "b00t:1:100".into(),
            exe: Some("/usr/sbin/sensor".into()),
            run: None,
        }),
        signal: Some(19),
        killed: Some(false),
        ..Tamper::default()
    }));
    e.policy = Some(policy(
        Decision::Deny,
        false,
        "tamper (a process outside the run, or the sensor)",
    ));
    let o = ocsf(&e);
    assert_class(&o, 2004, 2, 1);
    assert_eq!(
        o["finding_info"]["title"],
        "signal SIGSTOP to the sensor daemon: pid 100"
    );
    assert_eq!(o["actor"]["process"]["pid"], 4242);
    assert_eq!(o["is_alert"], true);
    assert_eq!(o["severity_id"], 4);
    assert!(
        o.get("status_id").is_none(),
        "a finding's status is its review state"
    );
    assert_eq!(o["disposition"], "Logged", "audit: would have been blocked");
    assert_eq!(o["action"], "Allowed");
    assert!(
        o["message"].as_str().unwrap().ends_with("not blocked"),
        "{o}"
    );
    assert!(!o["message"].as_str().unwrap().contains("put back"));
    assert_run_attached(&o);
    assert_no_null(&o, "");
    e.kind = Kind::PolicyViolation;
    assert_class(&ocsf(&e), 2004, 2, 1);

    let mut e = event(Kind::SensorTamper);
    e.tamper = Some(Box::new(Tamper {
        method: "sensor_file",
        what: "open for writing of a sensor file".into(),
        object: "/var/lib/sensor/sensor.db".into(),
        detected: "kernel",
        file: Some(TamperFile {
            kind: "store",
            path: Some("/var/lib/sensor/sensor.db".into()),
            dev: Some("8:1".into()),
            inode: Some(12),
            to: None,
            dir: None,
        }),
        killed: Some(true),
        ..Tamper::default()
    }));
    e.policy = Some(policy(
        Decision::Deny,
        true,
        "tamper (a process outside the run, or the sensor)",
    ));
    let o = ocsf(&e);
    assert_class(&o, 2004, 2, 1);
    assert_eq!(o["severity_id"], 3);
    assert!(o.get("status_id").is_none());
    assert_eq!(o["unmapped"]["tamper"]["file"]["kind"], "store");
    assert_no_null(&o, "");
}

#[test]
fn a_degraded_run_is_a_base_event_with_a_count() {
    let mut e = event(Kind::RunDegraded);
    e.process = None;
    e.degraded = Some(Box::new(Degraded {
        lost_events: 3,
        denials_suppressed: 40,
    }));
    let o = ocsf(&e);
    assert_class(&o, 0, 0, 99);
    assert_eq!(o["activity_name"], "Run Degraded");
    assert_eq!(o["count"], 43);
    assert_eq!(o["severity_id"], 3);
    assert!(o["message"].as_str().unwrap().contains("3 events lost"));
    assert_eq!(o["unmapped"]["degraded"]["denials_suppressed"], 40);
    assert_run_attached(&o);
    assert_no_null(&o, "");
    e.degraded.as_mut().unwrap().lost_events = 0;
    assert_eq!(ocsf(&e)["severity_id"], 2);
}

fn blind_event(restored: bool) -> Event {
    let mut e = bare(Kind::SensorBlind, 12, at(T0, 0), host("h1", "b00t"));
    e.blind = Some(Box::new(Blind {
        restored,
        missing: vec!["connect"],
        since: at(T0 - 20, 0),
        until: restored.then(|| at(T0 + 40, 0)),
        round: 4,
        rounds_failed: 2,
        detail: "round 4: no network.connect record".into(),
    }));
    e
}

#[test]
fn blindness_opens_a_detection_finding_and_its_restore_closes_it() {
    let o = ocsf(&blind_event(false));
    assert_class(&o, 2004, 2, 1);
    assert_eq!(o["finding_info"]["types"], json!(["sensor.blind"]));
    assert_eq!(
        o["finding_info"]["title"],
        "sensor blind: connect records do not come through the kernel"
    );
    assert_eq!(
        o["finding_info"]["desc"],
        "round 4: no network.connect record"
    );
    assert_eq!(o["is_alert"], true);
    assert_eq!(o["severity_id"], 4);
    assert_eq!(o["unmapped"]["blind"]["round"], 4);
    assert_no_null(&o, "");
    let closed = ocsf(&blind_event(true));
    assert_class(&closed, 2004, 2, 3);
    assert_eq!(closed["severity_id"], 1);
    assert!(closed.get("is_alert").is_none());
    // One finding: the restore carries the blindness's uid.
    assert_eq!(closed["finding_info"]["uid"], o["finding_info"]["uid"]);
    assert_eq!(
        o["finding_info"]["uid"],
        "b00t:blind:2023-11-14T22:13:00.000000000Z"
    );
    assert_no_null(&closed, "");
}

#[test]
fn events_outside_runs_have_no_session() {
    let mut e = connect_event(NetResult::Ok, None, None);
    e.run = None;
    let o = ocsf(&e);
    assert!(o["actor"].get("session").is_none());
    assert!(o["actor"].get("user").is_none());
    assert!(o["actor"]["process"].is_object());
    assert!(o["unmapped"]["run"].is_null());
    assert_no_null(&o, "");
}

#[test]
fn unmapped_objects_keep_their_keys_sorted() {
    // As the OCSF output always had them (the golden file holds it too).
    let mut e = exec_event();
    e.policy = Some(policy(Decision::Deny, true, "r"));
    let mut out = Vec::new();
    encode(&e, &mut out).unwrap();
    let line = String::from_utf8(out).unwrap();
    assert!(
        line.contains(
            r#""run":{"agent":"research-bot","attribution":"inherited","depth":1,"id":"run-1","parent_id":"run-0","principal":"alice","root_id":"run-0"}"#
        ),
        "{line}"
    );
    assert!(
        line.contains(r#""policy":{"enforced":true,"name":"research","rule":"r","verdict":"deny","version":1}"#),
        "{line}"
    );
    assert!(
        line.contains(r#""process":{"argc":3,"argv":["curl","-s","https://x"],"argv_len":19,"argv_truncated":false,"gid":1000}"#),
        "{line}"
    );
    assert!(
        line.ends_with(r#""exec":{"dev":"8:1","filename":"curl","inode":77}}}"#),
        "{line}"
    );
}

#[test]
fn encode_appends() {
    let mut out = b"prefix\n".to_vec();
    encode(&exec_event(), &mut out).unwrap();
    assert!(out.starts_with(b"prefix\n{"));
    assert!(out.ends_with(b"}"));
}

#[test]
fn a_denial_is_one_record() {
    // Blocked: the exec and its twin are the same denial.
    let mut e = exec_event();
    e.policy = Some(policy(Decision::Deny, true, "exec.allow (no rule matches)"));
    assert_eq!(super::repeats(&e), None, "the action itself");
    let mut v = e.clone();
    v.kind = Kind::PolicyViolation;
    assert_eq!(super::repeats(&v), Some(Kind::ProcessExec));
    // Each twin names the event it repeats.
    let mut c = connect_event(NetResult::Error, Some(1), Some("EPERM"));
    c.kind = Kind::PolicyViolation;
    c.policy = Some(policy(Decision::Deny, true, "connect.allow"));
    assert_eq!(super::repeats(&c), Some(Kind::NetworkConnect));
    let mut u = unix_event(NetResult::Error, Some(1), Some("EPERM"));
    u.kind = Kind::PolicyViolation;
    u.policy = c.policy.clone();
    assert_eq!(super::repeats(&u), Some(Kind::NetworkConnect));
    let mut r = event(Kind::PolicyViolation);
    r.network = Some(Network {
        transport: "raw",
        family: "ipv4",
        result: NetResult::Error,
        ..Network::default()
    });
    r.policy = c.policy.clone();
    assert_eq!(super::repeats(&r), Some(Kind::NetworkSocket));
    let mut t = process_tamper("ptrace", true);
    t.kind = Kind::PolicyViolation;
    t.policy = c.policy.clone();
    assert_eq!(super::repeats(&t), Some(Kind::ProcessTamper));
    let mut t = tamper_event(true);
    t.kind = Kind::PolicyViolation;
    t.policy = c.policy.clone();
    assert_eq!(super::repeats(&t), Some(Kind::SensorTamper));
    let mut f = event(Kind::PolicyViolation);
    f.policy = Some(policy(Decision::Deny, true, "max_processes 5"));
    assert_eq!(super::repeats(&f), Some(Kind::ProcessSpawn));
    // A refused sub-run has no twin: it is written.
    f.policy = Some(policy(Decision::Deny, true, "max_depth 1"));
    assert_eq!(super::repeats(&f), None);
    // An allowed exec is no alert; an audited deny is one, not blocked.
    let mut a = exec_event();
    a.policy = Some(policy(Decision::Allow, true, "exec.allow /usr/bin/"));
    let o = ocsf(&a);
    assert!(o.get("message").is_none());
    assert_eq!(o["is_alert"], false);
    assert_eq!(o["disposition"], "Allowed");
    a.policy = Some(policy(
        Decision::Deny,
        false,
        "exec.allow (no rule matches)",
    ));
    let o = ocsf(&a);
    assert_eq!(o["is_alert"], true);
    assert_eq!(
        (o["action_id"].clone(), o["disposition_id"].clone()),
        (json!(1), json!(17))
    );
    assert_eq!(o["status_id"], 1, "it ran");
    assert!(
        o["message"]
            .as_str()
            .unwrap()
            .contains("would have been blocked"),
        "{o}"
    );
}

#[test]
fn a_run_token_authorizes_the_run_with_its_scopes() {
    use crate::event::TokenIssued;
    let mut e = event(Kind::TokenIssued);
    e.token = Some(Box::new(TokenIssued {
        jti: "jti-1".into(),
        aud: "vault".into(),
        iss: "https://sensor.example".into(),
        sub: "spiffe://example/agent/research-bot/run/run-1".into(),
        iat: at(T0, 0),
        exp: at(T0 + 300, 0),
        scopes: vec!["repo:read".into(), "db:query".into()],
        kid: "k1".into(),
    }));
    let o = ocsf(&e);
    assert_class(&o, 3003, 3, 1);
    assert_eq!(o["class_name"], "Authorize Session");
    assert_eq!(o["category_name"], "Identity & Access Management");
    assert_eq!(o["activity_name"], "Assign Privileges");
    assert_eq!(o["type_name"], "Authorize Session: Assign Privileges");
    assert_eq!(o["status_id"], 1);
    assert_eq!(o["severity_id"], 1);
    assert_eq!(o["privileges"], json!(["repo:read", "db:query"]));
    assert_eq!(o["user"], json!({"name": "alice"}));
    assert_eq!(
        o["session"],
        json!({"uid": "run-1", "issuer": "https://sensor.example", "credential_uid": "jti-1",
               "created_time": 1_700_000_000_000_i64, "expiration_time": 1_700_000_300_000_i64})
    );
    assert_eq!(o["actor"]["process"]["pid"], 4242);
    assert_eq!(
        o["message"],
        "run token jti-1 issued to agent run run-1 (research-bot) for audience vault, expires \
         2023-11-14T22:18:20.000000000Z; scopes: repo:read, db:query"
    );
    // Never the token; its fields, whole, in unmapped.
    assert_eq!(o["unmapped"]["token"]["aud"], "vault");
    assert_eq!(o["unmapped"]["token"]["kid"], "k1");
    assert_run_attached(&o);
    assert_no_null(&o, "");
    // No scopes: none granted (OCSF wants `privileges` or `group`).
    e.token.as_mut().unwrap().scopes.clear();
    let o = ocsf(&e);
    assert_eq!(o["privileges"], json!([]));
    assert!(o["message"].as_str().unwrap().ends_with("scopes: none"));
    // Without its token object it is a base event, as any kind without
    // the object its class needs.
    e.token = None;
    assert_class(&ocsf(&e), 0, 0, 99);
}

#[test]
fn a_detection_is_a_finding_with_the_rules_level_and_the_run() {
    use crate::event::Detection;
    let mut e = event(Kind::Detection);
    e.detection = Some(Box::new(Detection {
        rule_id: "ssh-keys".into(),
        title: "Agent run reads SSH keys".into(),
        level: "critical",
        tags: vec!["attack.t1552.004".into()],
        rule_file: "/etc/sensor/rules/ssh.yml".into(),
        event_seq: 40,
        event_kind: Kind::ProcessExec,
        process_key: Some("4242-1".into()),
    }));
    let o = ocsf(&e);
    assert_class(&o, 2004, 2, 1);
    assert_eq!(o["severity_id"], 5);
    assert_eq!(o["severity"], "Critical");
    assert_eq!(o["is_alert"], true);
    assert_eq!(o["finding_info"]["uid"], format!("{BOOT}:42"));
    assert_eq!(o["finding_info"]["title"], "Agent run reads SSH keys");
    assert_eq!(o["finding_info"]["desc"], "/etc/sensor/rules/ssh.yml");
    assert_eq!(
        o["message"],
        "Agent run reads SSH keys (rule ssh-keys, process.exec 40)"
    );
    assert_eq!(
        o["finding_info"]["analytic"],
        json!({"uid": "ssh-keys", "name": "Agent run reads SSH keys", "type_id": 1, "type": "Rule"})
    );
    assert_eq!(
        o["finding_info"]["attacks"],
        json!([{"technique": {"uid": "T1552"}, "sub_technique": {"uid": "T1552.004"}}])
    );
    assert_eq!(o["unmapped"]["detection"]["event_seq"], 40);
    assert_eq!(
        o["unmapped"]["detection"]["tags"],
        json!(["attack.t1552.004"])
    );
    assert_run_attached(&o);
    assert_no_null(&o, "");
    // An informational rule is a finding, not an alert.
    e.detection.as_mut().unwrap().level = "informational";
    let o = ocsf(&e);
    assert_eq!(o["severity_id"], 1);
    assert_ne!(o["is_alert"], true, "{o}");
    // Without its detection object it is a base event.
    e.detection = None;
    assert_class(&ocsf(&e), 0, 0, 99);
}

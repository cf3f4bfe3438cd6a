//! The OCSF form of `sensor.event/v1` events (`--output SPEC,format=ocsf`).
//!
//! Target: OCSF schema **1.7.0** (`metadata.version`), checked in the tests by
//! a third-party validator (`tests/ocsf/validate.py`: the JSON Schema that the
//! `ocsf-json-schema` package generates from the official 1.7.0 export, plus
//! the `pydantic-ocsf` models). Every event declares the profiles it uses in
//! `metadata.profiles`: `host` always, `security_control` when it carries a
//! policy verdict.
//!
//! # Classes
//!
//! | sensor kind | OCSF class (class_uid) | activity_id | notes |
//! |---|---|---|---|
//! | `process.spawn` | Process Activity (1007) | Launch (1), `launch_type_id` Fork (2) | `process` = child, `actor.process` = parent |
//! | `process.exec` | Process Activity (1007) | Launch (1), `launch_type_id` Exec (3) | failed exec: status Failure, `status_code` = errno name, `process.file` = the file it tried |
//! | `process.exit` | Process Activity (1007) | Terminate (2) | `exit_code`; a signal goes to `status_detail` and `unmapped.process.exit_signal` |
//! | `network.connect` (IP) | Network Activity (4001) | `result` ok/in_progress/unknown: Open (1); refused: Refuse (5); error: Fail (4) | `dst_endpoint` {ip, port}, `connection_info` {protocol_name, protocol_num, protocol_ver_id, direction_id Outbound} |
//! | `network.connect` with `sends` (unconnected datagrams) | Network Activity (4001) | Traffic (6) | `traffic.packets_out` = `sends`, status Unknown |
//! | `network.connect` `family: "unix"` | Network Activity (4001) | as for IP; `killed`: Open (1), status Failure | `dst_endpoint.name` = the socket path (`@name` for an abstract one), `direction_id` Local (4); no protocol (family and transport stay in `unmapped.network`) |
//! | `network.listen` | Network Activity (4001) | Listen (7) | `dst_endpoint` = the local address, `direction_id` Inbound |
//! | `network.accept` | Network Activity (4001) | Open (1) | `src_endpoint` = the peer, `dst_endpoint` = the local address, `direction_id` Inbound (1.7.0 has no Accept activity) |
//! | `network.socket` | Network Activity (4001) | created: Open (1); refused (EPERM): Fail (4) | no peer: `src_endpoint` {hostname} is this host; `protocol_name` raw/icmp/packet (ICMP: `protocol_num` 1 or 58), `direction_id` Unknown |
//! | `process.tamper` | Process Activity (1007) | ptrace, process_vm_writev, proc_mem: Inject (4), `injection_type_id` Other (99), `injection_type` "ptrace attach" / "process_vm_writev" / "/proc/PID/mem"; pidfd_getfd: Open (3) (it takes a descriptor of the other process's) | `process` = the target (`process.session.uid` = its run), `actor.process` = the caller; `is_alert` true, severity Medium when the caller was killed (status Failure), High when not (status Unknown) |
//! | `policy.violation` | the class of what it is about: with `network` 4001, with a `tamper` as that tamper, otherwise 1007 (exec, `max_processes` fork, `max_depth` launch) | as for that action | written only where the event it repeats is not (one record per denial, see below); `is_alert` true, severity Medium when blocked, High when only reported |
//! | `run.start` | Application Lifecycle (6002) | Start (3) | `app.name` = agent, `actor.process` = the run's first process |
//! | `run.end` | Application Lifecycle (6002) | Stop (4) | `start_time`, `end_time`, `duration`, `status_detail` = end reason |
//! | `sensor.lost` | Base Event (0) | Other (99), `activity_name` "Events Lost" | `count` = newly lost events |
//! | `sensor.gap` | Base Event (0) | Other (99), `activity_name` "Sensor Gap" | `count` = records lost in the gap, `message` says how long, why and whether the kernel recorded, severity Low when it recorded and lost nothing, Medium otherwise; `gap` whole in `unmapped` (as `delivery` of a recovered event) |
//! | `run.degraded` | Base Event (0) | Other (99), `activity_name` "Run Degraded" | `count` = lost + held-back records, severity Medium when records were lost, Low otherwise; `degraded` whole in `unmapped` |
//! | `sensor.tamper` | Detection Finding (2004) | Create (1) | `finding_info` {uid = boot id + seq, title = "what: object", desc = detail, types ["sensor.tamper"]}, `is_alert` true; integrity check: severity Medium when the daemon put it back, High when not; seen in the kernel: `actor.process` = the caller, severity Medium when it was killed, High when not; no `status` (a finding's status is its review state); `tamper` whole in `unmapped` |
//! | `sensor.blind` | Detection Finding (2004) | blind: Create (1), `is_alert` true, severity High; restored: Close (3), severity Informational | `finding_info` {uid = boot id + "blind" + `since` (the same for a blindness and its restore), title, desc = detail, types ["sensor.blind"]}; `blind` whole in `unmapped` |
//! | `detection` | Detection Finding (2004) | Create (1) | `finding_info` {uid = boot id + seq, title = the rule's title, desc = the rule's file}, `message` = title (rule id, matched kind and seq), severity from the rule's level (informational 1 … critical 5), `is_alert` from low up; `finding_info.analytic` = the rule (uid, name, type Rule), `finding_info.attacks` from its ATT&CK tags; `detection` whole in `unmapped` |
//! | `token.issued` | Authorize Session (3003) | Assign Privileges (1) | `privileges` = the token's scopes, `user.name` = the run's principal, `session` {uid = run id, issuer = `iss`, credential_uid = `jti`, created_time = `iat`, expiration_time = `exp`}; `token` whole in `unmapped` |
//! | anything else | Base Event (0) | Other (99), `activity_name` = kind | |
//!
//! OCSF 1.x has no separate exec activity: the Process Activity `Launch`
//! activity covers both steps of Unix process creation, told apart by
//! `launch_type_id` (Fork = 2 for the new process, Exec = 3 for the image
//! replacement), which is what 1.7.0 prescribes. An agent run starting or
//! ending is an application (the agent) starting or stopping, hence
//! Application Lifecycle rather than the Base Event.
//!
//! # Common fields
//!
//! `time` (ms since the epoch, of the event's `time`, whose RFC 3339 string
//! is `metadata.original_time`), `type_uid` = class_uid * 100 + activity_id,
//! captions (`class_name`, `category_name`, `activity_name`, `type_name`,
//! `severity`, `status`), `metadata` {version, product {name "sensor",
//! vendor_name "sensor", version}, profiles, log_version (= `schema`),
//! event_code (= `kind`), sequence (= `seq`), original_time, correlation_uid},
//! `device` {hostname = host.name, boot_uid = host.boot_id, type_id Unknown}.
//! A process is {pid, uid (= the process key), tid, name (= comm),
//! file {path, name, type_id Executable File} (= exe), cmd_line (argv joined
//! with spaces), working_directory, user {uid}, parent_process {pid, uid
//! (= parent key), file (spawn: the parent's exe)}}.
//!
//! # The agent run
//!
//! | run field | OCSF place |
//! |---|---|
//! | `id` | `actor.session.uid` |
//! | `agent` | `actor.app_name` (and `app.name` in 6002) |
//! | `principal` | `actor.user.name` (`actor.user.uid` = the run's uid on run.start/end) |
//! | `root_id` | `metadata.correlation_uid` (correlates a whole agent tree) |
//! | `start`, `expires`, `end_reason` (run.start/end) | `actor.session.created_time`, `expiration_time`, `expiration_reason` |
//! | everything (`parent_id`, `depth`, `attribution`, labels, …) | `unmapped.run`, the run object unchanged (`null` outside runs) |
//!
//! # Policy verdicts (`security_control` profile)
//!
//! `policy` {name, version, data {verdict, rule, enforced}}; allow: action
//! Allowed / disposition Allowed; deny enforced (**blocked**): action Denied
//! / disposition Blocked, status Failure, `status_detail` "blocked by policy
//! P: RULE"; deny not enforced (audit, **would have been blocked**: the
//! action went ahead): action Allowed / disposition Logged, `status_detail`
//! "would have been blocked by policy P: RULE (audit)" unless the action's
//! own failure is there.
//!
//! **A denial is one record.** The event that carries a deny is the alert:
//! `is_alert` true, severity Medium when blocked, High when only reported,
//! `message` "policy violation: policy P denies WHAT (RULE); blocked" (or
//! "would have been blocked (audit: ...)"). The `policy.violation` the
//! engine writes after it (a copy, [`repeats`]) is left out of an OCSF
//! output that writes the event it repeats; an output whose `kinds` take
//! violations but not that event gets the violation instead, mapped the
//! same way. A violation with no twin (`max_depth`) is always written.
//!
//! # Nothing lost
//!
//! `unmapped` always has `kind`, `seq` and `run`, plus `policy` and `lost`
//! unchanged when present, and whatever of `process`, `exec`, `network` and
//! `host` has no OCSF place (e.g. `argv` as an array, `exit_signal`,
//! `exec.filename`, `network.via`), and any top-level field this mapping does
//! not know. OCSF attributes are never `null` (absent instead).
//!
//! # Layout
//!
//! - [`classes`]: the classes, statuses, severities, verdict dispositions
//!   and network shapes, with their OCSF ids and captions.
//! - [`objects`]: the OCSF objects as `#[derive(Serialize)]` structs
//!   ([`objects::OcsfEvent`] and what it holds); field order is output order.
//! - [`mapping`] (a folder, by class family): the typed [`Event`] to its
//!   [`objects::OcsfEvent`], by field accesses (the `unmapped` builders
//!   destructure `Event`, `Process`, `Exec` and `Network` whole, so a new
//!   or renamed event field is a compile error there until it has a place).
//!
//! The sensor's own objects in `unmapped` (`run`, `policy`, `lost`,
//! `tamper`, ...) are written through a `serde_json::Value`, so their keys
//! come out sorted, as they always have ([`objects::Sorted`]); the rest
//! objects of `process`, `exec` and `network` are structs in name order.
//!
//! # Cost
//!
//! The event is mapped into borrowed structs and serialized once into
//! `out`; only the sorted `unmapped` objects go through a `Value`.

mod classes;
mod mapping;
mod objects;
#[cfg(test)]
mod tests;

pub use mapping::repeats;

use crate::event::Event;

/// The OCSF schema version the output follows (`metadata.version`).
pub const OCSF_VERSION: &str = "1.7.0";

/// Appends the OCSF form of `event` (one JSON object, no newline) to `out`.
pub fn encode(event: &Event, out: &mut Vec<u8>) -> Result<(), super::FormatError> {
    serde_json::to_writer(&mut *out, &mapping::map(event))?;
    Ok(())
}

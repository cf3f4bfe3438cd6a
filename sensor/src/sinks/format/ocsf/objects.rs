//! The OCSF 1.7.0 objects the sensor writes, as `#[derive(Serialize)]`
//! structs: field order is output order, `None` is left out (OCSF
//! attributes are never `null`).
//!
//! [`OcsfEvent`] holds every attribute any of the classes written uses
//! (Process Activity 1007, Network Activity 4001, Detection Finding 2004,
//! Authorize Session 3003, Application Lifecycle 6002, Base Event 0); [`super::classes`] says which
//! class an event is, [`super::mapping`] fills it from the typed event.

use std::{borrow::Cow, net::IpAddr};

use serde::{Serialize, Serializer, ser::Error as _};

use crate::event::{
    Blind, Checkpoint, Decision, Degraded, Detection, Exec, Gap, Kind, Lost, Network, RunRef,
    Tamper, TokenIssued, Verdict,
};

/// One OCSF event (any class; the attributes a class does not use stay
/// `None`).
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct OcsfEvent<'a> {
    pub class_uid: u32,
    pub class_name: &'static str,
    pub category_uid: u32,
    pub category_name: &'static str,
    pub activity_id: u32,
    pub activity_name: &'a str,
    pub type_uid: u32,
    pub type_name: String,
    /// Milliseconds since the Unix epoch.
    pub time: i64,
    pub severity_id: u8,
    pub severity: &'static str,
    pub status_id: Option<u8>,
    pub status: Option<&'static str>,
    pub status_code: Option<&'a str>,
    pub status_detail: Option<Cow<'a, str>>,
    pub message: Option<String>,
    /// Process Activity Launch: Fork (2) or Exec (3).
    pub launch_type_id: Option<u8>,
    pub launch_type: Option<&'static str>,
    pub exit_code: Option<i32>,
    pub count: Option<u64>,
    pub start_time: Option<i64>,
    pub end_time: Option<i64>,
    pub duration: Option<i64>,
    /// Application Lifecycle: the agent.
    pub app: Option<App<'a>>,
    /// Process Activity Inject.
    pub injection_type_id: Option<u8>,
    pub injection_type: Option<&'static str>,
    pub process: Option<ProcessObj<'a>>,
    pub actor: Option<Actor<'a>>,
    /// Authorize Session: the scopes a run token grants.
    pub privileges: Option<&'a [String]>,
    /// Authorize Session: whom the session (the run) acts for.
    pub user: Option<User<'a>>,
    /// Authorize Session: the run, with the token as its credential.
    pub session: Option<Session<'a>>,
    pub src_endpoint: Option<Endpoint<'a>>,
    pub dst_endpoint: Option<Endpoint<'a>>,
    pub traffic: Option<Traffic>,
    pub connection_info: Option<ConnectionInfo<'a>>,
    /// `security_control` profile.
    pub policy: Option<Policy<'a>>,
    pub action_id: Option<u8>,
    pub action: Option<&'static str>,
    pub disposition_id: Option<u8>,
    pub disposition: Option<&'static str>,
    pub is_alert: Option<bool>,
    /// Detection Finding.
    pub finding_info: Option<FindingInfo<'a>>,
    pub metadata: Metadata<'a>,
    pub device: Device<'a>,
    pub unmapped: Unmapped<'a>,
}

/// `app` (Application Lifecycle).
#[derive(Debug, Serialize)]
pub struct App<'a> {
    pub name: &'a str,
}

/// An OCSF `process`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Default, Serialize)]
pub struct ProcessObj<'a> {
    pub pid: Option<u32>,
    /// The sensor's process key.
    pub uid: Option<&'a str>,
    pub tid: Option<u32>,
    /// `comm`.
    pub name: Option<&'a str>,
    pub file: Option<File<'a>>,
    /// argv joined with spaces.
    pub cmd_line: Option<String>,
    pub working_directory: Option<&'a str>,
    pub terminated_time: Option<i64>,
    pub user: Option<User<'a>>,
    pub parent_process: Option<ParentProcess<'a>>,
    /// The run of a tamper's target.
    pub session: Option<Session<'a>>,
}

/// `process.parent_process`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct ParentProcess<'a> {
    pub pid: u32,
    pub uid: Option<&'a str>,
    pub file: Option<File<'a>>,
}

/// An OCSF `file` of an executable.
#[derive(Debug, Serialize)]
pub struct File<'a> {
    pub path: &'a str,
    pub name: &'a str,
    pub type_id: u8,
    #[serde(rename = "type")]
    pub type_: &'static str,
}

impl<'a> File<'a> {
    /// The executable at `path`.
    #[must_use]
    pub fn executable(path: &'a str) -> Self {
        let name = match path.rsplit('/').next() {
            Some(name) if !name.is_empty() => name,
            _ => path,
        };
        Self {
            path,
            name,
            type_id: 8,
            type_: "Executable File",
        }
    }
}

/// An OCSF `user`: a process's uid (a string, as OCSF has it), or the
/// run's principal.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct User<'a> {
    pub name: Option<&'a str>,
    pub uid: Option<String>,
}

/// An OCSF `session`: the agent run.
#[serde_with::skip_serializing_none]
#[derive(Debug, Default, Serialize)]
pub struct Session<'a> {
    pub uid: Option<&'a str>,
    /// Who issued the session's credential (a run token's `iss`).
    pub issuer: Option<&'a str>,
    /// The session's credential (a run token's `jti`).
    pub credential_uid: Option<&'a str>,
    pub created_time: Option<i64>,
    pub expiration_time: Option<i64>,
    pub expiration_reason: Option<&'a str>,
}

/// `actor`: the acting process and the agent run.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct Actor<'a> {
    pub process: Option<ProcessObj<'a>>,
    pub session: Option<Session<'a>>,
    pub user: Option<User<'a>>,
    pub app_name: Option<&'a str>,
}

/// An OCSF `network_endpoint`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Default, Serialize)]
pub struct Endpoint<'a> {
    pub ip: Option<IpAddr>,
    pub port: Option<u16>,
    /// A Unix socket path (or `@name`).
    pub name: Option<&'a str>,
    /// This host (a socket with no peer).
    pub hostname: Option<&'a str>,
}

/// `traffic` of unconnected datagrams.
#[derive(Debug, Serialize)]
pub struct Traffic {
    pub packets_out: u32,
}

/// `connection_info`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct ConnectionInfo<'a> {
    pub direction_id: u8,
    pub direction: &'static str,
    pub protocol_name: Option<&'a str>,
    pub protocol_num: Option<u8>,
    pub protocol_ver_id: Option<u8>,
    pub protocol_ver: Option<&'static str>,
}

/// The OCSF `policy`: name, version (a string), data {verdict, rule, enforced}.
#[derive(Debug, Serialize)]
pub struct Policy<'a> {
    pub name: &'a str,
    pub version: String,
    pub data: PolicyData<'a>,
}

/// `policy.data`.
#[derive(Debug, Serialize)]
pub struct PolicyData<'a> {
    pub verdict: Decision,
    pub rule: &'a str,
    pub enforced: bool,
}

/// `finding_info` (Detection Finding).
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct FindingInfo<'a> {
    pub uid: String,
    pub title: String,
    pub desc: Option<&'a str>,
    pub types: [Kind; 1],
    /// A `detection`'s rule.
    pub analytic: Option<Analytic<'a>>,
    /// A `detection`'s ATT&CK tags.
    pub attacks: Option<Vec<Attack>>,
}

/// `analytic`: the Sigma rule of a `detection` (type Rule).
#[derive(Debug, Serialize)]
pub struct Analytic<'a> {
    pub uid: &'a str,
    pub name: &'a str,
    pub type_id: u8,
    #[serde(rename = "type")]
    pub type_name: &'static str,
}

/// `attack`: an ATT&CK tactic, technique and sub-technique (any of them).
#[serde_with::skip_serializing_none]
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Attack {
    pub tactic: Option<AttackRef>,
    pub technique: Option<AttackRef>,
    pub sub_technique: Option<AttackRef>,
}

/// `tactic`, `technique`, `sub_technique`: uid, and the name when known.
#[serde_with::skip_serializing_none]
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AttackRef {
    pub uid: String,
    pub name: Option<&'static str>,
}

/// `metadata`.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct Metadata<'a> {
    pub version: &'static str,
    pub product: Product,
    pub profiles: &'static [&'static str],
    /// The sensor schema (`sensor.event/v1`).
    pub log_version: &'static str,
    /// The sensor kind.
    pub event_code: Kind,
    pub sequence: u64,
    /// The event's RFC 3339 time.
    pub original_time: String,
    /// The run tree's root run.
    pub correlation_uid: Option<&'a str>,
}

/// `metadata.product`.
#[derive(Debug, Serialize)]
pub struct Product {
    pub name: &'static str,
    pub vendor_name: &'static str,
    pub version: &'static str,
}

/// `device`: this host.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct Device<'a> {
    pub hostname: &'a str,
    pub boot_uid: Option<&'a str>,
    pub type_id: u8,
    #[serde(rename = "type")]
    pub type_: &'static str,
}

/// `unmapped`: what has no OCSF place, so that nothing is lost. The
/// sensor's own objects are written with their keys sorted ([`Sorted`]),
/// as they always were.
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct Unmapped<'a> {
    pub kind: Kind,
    pub seq: u64,
    #[serialize_always]
    pub run: Option<Sorted<&'a RunRef>>,
    pub policy: Option<Sorted<&'a Verdict>>,
    pub lost: Option<Sorted<&'a Lost>>,
    pub process: Option<ProcessRest<'a>>,
    pub exec: Option<RestOr<ExecRest<'a>, &'a Exec>>,
    pub network: Option<RestOr<NetworkRest<'a>, &'a Network>>,
    // The other top-level fields, in the order of their names.
    pub blind: Option<Sorted<&'a Blind>>,
    pub checkpoint: Option<Sorted<&'a Checkpoint>>,
    pub degraded: Option<Sorted<&'a Degraded>>,
    pub delivery: Option<&'a str>,
    pub detection: Option<Sorted<&'a Detection>>,
    pub gap: Option<Sorted<&'a Gap>>,
    pub tamper: Option<Sorted<&'a Tamper>>,
    pub token: Option<Sorted<&'a TokenIssued>>,
    pub tool_call: Option<Sorted<&'a crate::event::ToolCall>>,
    pub transcript: Option<Sorted<&'a crate::event::TranscriptIssue>>,
    pub unexplained: Option<Sorted<&'a crate::event::Unexplained>>,
}

/// A sensor object written with its keys in sorted order, at every depth
/// (through a `serde_json::Value`, whose maps are sorted).
#[derive(Debug)]
pub struct Sorted<T>(pub T);

impl<T: Serialize> Serialize for Sorted<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        serde_json::to_value(&self.0)
            .map_err(S::Error::custom)?
            .serialize(s)
    }
}

/// What of a sensor object has no OCSF place (`Rest`), or, when the class
/// does not map it, all of it (sorted).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub enum RestOr<R, W: Serialize> {
    Rest(R),
    Whole(Sorted<W>),
}

/// The `process` fields with no OCSF place (in name order).
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct ProcessRest<'a> {
    pub argc: Option<u32>,
    pub argv: Option<&'a [String]>,
    pub argv_b64: Option<&'a str>,
    pub argv_len: Option<u32>,
    pub argv_truncated: Option<bool>,
    pub core_dumped: Option<bool>,
    pub exe_b64: Option<&'a str>,
    pub exe_truncated: Option<bool>,
    pub exit_signal: Option<i32>,
    pub gid: u32,
    pub ns_pid: Option<u32>,
}

/// The `exec` fields with no place in Process Activity (in name order).
#[serde_with::skip_serializing_none]
#[derive(Debug, Serialize)]
pub struct ExecRest<'a> {
    pub dev: Option<&'a str>,
    pub errno: Option<i32>,
    pub filename: &'a str,
    pub inode: Option<u64>,
    pub modified_in_run: Option<bool>,
}

/// The `network` fields with no place in Network Activity, which depends
/// on what the event is about (in name order).
#[serde_with::skip_serializing_none]
#[derive(Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkRest<'a> {
    #[serde(rename = "abstract")]
    pub abstract_name: Option<bool>,
    pub dst_ip: Option<IpAddr>,
    pub dst_port: Option<u16>,
    pub errno: Option<i32>,
    pub family: Option<&'a str>,
    pub local_ip: Option<IpAddr>,
    pub local_port: Option<u16>,
    pub path: Option<&'a str>,
    pub peer_path: Option<&'a str>,
    pub sends: Option<u32>,
    pub src_ip: Option<IpAddr>,
    pub src_port: Option<u16>,
    pub transport: Option<&'a str>,
    pub via: Option<&'a str>,
}

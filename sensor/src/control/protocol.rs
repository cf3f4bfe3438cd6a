//! Control socket protocol: one JSON request per line, one JSON response per line.
//!
//! The daemon identifies callers by SO_PEERCRED only: no request names the
//! process it is about, except attestation, which only reads.

use serde::{Deserialize, Serialize};

use crate::{
    attribution::{LaunchRequest, Run, RunAnswer},
    status::StatusReport,
};

/// Longest request line accepted.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Counters and readiness.
    Status,
    /// Start a run whose first process is the caller (`sensor launch`).
    Launch(LaunchRequest),
    /// The run of the caller.
    Whoami,
    /// The run of process `pid`; `start_ticks` (field 22 of /proc/PID/stat)
    /// makes the answer refuse a recycled pid.
    Attest { pid: u32, start_ticks: Option<u64> },
    /// What the daemon knows now of live process `pid` (`sensor who
    /// --pid`): its key, uid, exe and run, even when it produced no event
    /// yet. A caller that is not root may only ask about its own
    /// processes (same real uid), as /proc would show them.
    Process { pid: u32 },
    /// A run token for the caller's run.
    Token(crate::tokens::TokenRequest),
    /// The public keys of run tokens, and the issuer.
    Jwks,
    /// Re-read the config's policies, validate them, and swap them in (root only).
    ReloadPolicies,
    /// A new daemon takes over (`sensor daemon --takeover`, root only, never
    /// from a process in a run): this one stops reading, saves everything
    /// and exits, leaving its programs attached and recording for the new
    /// one.
    Handover,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "snake_case")]
pub enum Response {
    Status(Box<StatusReport>),
    Launched {
        run: Box<Run>,
    },
    Run(Box<RunAnswer>),
    /// The answer to `process`.
    Process(Box<crate::attribution::ProcessAnswer>),
    /// A reload applied: the policies (by name) under their new version,
    /// the `[[agent]]` matchers now in force, and the config's sections
    /// changed since start that a reload does not apply.
    Reloaded {
        version: u64,
        policies: Vec<String>,
        #[serde(default)]
        agents: Vec<String>,
        #[serde(default)]
        restart_needed: Vec<String>,
    },
    /// The daemon saved everything and is exiting; `next_seq` is the seq
    /// of the next event.
    HandedOver {
        next_seq: u64,
    },
    /// A run token and its claims (`token`).
    Token {
        token: String,
        claims: Box<crate::tokens::Claims>,
    },
    /// The public keys (`jwks`).
    Jwks {
        issuer: String,
        jwks: serde_json::Value,
    },
    Error {
        message: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_shape() {
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"op":"status"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"rm -rf"}"#).is_err());
        assert!(serde_json::from_str::<Request>("garbage").is_err());
        let launch: Request =
            serde_json::from_str(r#"{"op":"launch","agent":"bot","labels":{"k":"v"}}"#).unwrap();
        let Request::Launch(l) = launch else { panic!() };
        assert_eq!(l.agent, "bot");
        assert_eq!(l.labels["k"], "v");
        // A launch cannot name a pid: unknown fields are refused.
        assert!(
            serde_json::from_str::<Request>(r#"{"op":"launch","agent":"bot","pid":1}"#).is_err()
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"attest","pid":5,"start_ticks":7}"#).unwrap(),
            Request::Attest {
                pid: 5,
                start_ticks: Some(7)
            }
        );
    }
}

//! A control request whose sender's pid is recycled before the daemon reads
//! it: the choreography the adversary and token tests share.
//!
//! The helper binary's `late-request` connects to the socket, forks a child
//! that keeps the connection, prints its own pid and exits at once. The test
//! then puts another process at that pid (the helper's `at-pid`, through
//! `clone3` with `set_tid`) and only then lets the child send its request. A
//! daemon that identified its peer by pid alone would answer for the new
//! process.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow};
use serde_json::Value;

use crate::{COMMAND_TIMEOUT, run_with_timeout, text};

/// A request written on a connection whose opener has exited.
pub struct LateRequest {
    /// The pid the connection's opener had: free for a thief to take.
    pub pid: u32,
    go: PathBuf,
    answer: PathBuf,
}

impl LateRequest {
    /// Connects to `socket` with `helper`'s `late-request`, files in `dir`.
    /// Returns once the opener has exited; the request is not sent yet.
    pub fn open(helper: &str, socket: &Path, line: &Value, dir: &Path) -> Result<LateRequest> {
        let go = dir.join("late-request.go");
        let answer = dir.join("late-request.answer");
        let (_, out) = run_with_timeout(
            Command::new(helper)
                .arg("late-request")
                .arg(socket)
                .arg(line.to_string())
                .arg(&go)
                .arg(&answer),
            COMMAND_TIMEOUT,
        )?;
        let pid = text(&out.stdout)
            .trim()
            .strip_prefix("pid=")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("late-request printed {:?}", text(&out.stdout)))?;
        Ok(LateRequest { pid, go, answer })
    }

    /// Lets the child send the request and returns the daemon's answer
    /// (`Null` when none came within 15 s or it was not JSON).
    pub fn send(self) -> Result<Value> {
        fs::write(&self.go, b"")?;
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.answer.exists() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(50));
        }
        // The answer file appears before its content: wait for a full line.
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let got = fs::read_to_string(&self.answer).unwrap_or_default();
            if let Ok(v) = serde_json::from_str::<Value>(&got) {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                return Ok(Value::Null);
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

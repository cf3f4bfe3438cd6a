//! The fake model servers the transcript tests drive the real agent CLIs
//! with (`tests/fake_model/*.py`), a loopback HTTP listener for their
//! tool calls to reach, and readers of the `tool.call` events.

use std::{
    fs,
    io::{Read as _, Write as _},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

use crate::{argv_of, die_with_parent, kind, str_at, workspace_root};

/// A fake model server (Python, `tests/fake_model/SERVER`) answering with
/// the scripted tool calls, killed when dropped.
pub struct FakeModel {
    child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl FakeModel {
    /// Starts `server` (`anthropic.py`, `openai.py`) with `script` (one
    /// command per tool call), its files in `dir`; returns once it listens.
    pub fn start(dir: &Path, server: &str, script: &[String]) -> Result<Self> {
        let port_file = dir.join("model.port");
        let log = dir.join("model.log");
        let server = workspace_root().join("tests/fake_model").join(server);
        let mut cmd = Command::new("python3");
        cmd.arg(&server)
            .arg(&port_file)
            .arg(serde_json::to_string(script)?)
            .arg(&log)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(fs::File::create(dir.join("model.stderr"))?));
        die_with_parent(&mut cmd);
        let child = cmd.spawn().context("start the fake model server")?;
        let mut model = Self {
            child,
            port: 0,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(p) = fs::read_to_string(&port_file)
                && let Ok(port) = p.trim().parse()
            {
                model.port = port;
                return Ok(model);
            }
            if Instant::now() > deadline {
                bail!(
                    "the fake model server did not start: {}",
                    fs::read_to_string(dir.join("model.stderr")).unwrap_or_default()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for FakeModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback HTTP listener answering `200 ok` to every request (bounded:
/// at most 16, its thread ends with the test process).
pub fn listener() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let port = l.local_addr()?.port();
    thread::spawn(move || {
        for conn in l.incoming().take(16) {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let _ = c.write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
            );
        }
    });
    Ok(port)
}

/// The `tool.call` events of run `run`.
#[must_use]
pub fn tool_calls(events: &[Value], run: &str) -> Vec<Value> {
    events
        .iter()
        .filter(|e| kind(e) == "tool.call" && str_at(e, "/run/id") == Some(run))
        .cloned()
        .collect()
}

/// The argv of each exec among `events` that the `tool.call` links.
#[must_use]
pub fn linked_execs(events: &[Value], call: &Value) -> Vec<Vec<String>> {
    linked_seqs(call)
        .into_iter()
        .filter_map(|seq| events.iter().find(|e| e["seq"].as_u64() == Some(seq)))
        .filter(|e| kind(e) == "process.exec")
        .map(argv_of)
        .collect()
}

/// The seqs a `tool.call` links (`tool_call.processes`).
#[must_use]
pub fn linked_seqs(call: &Value) -> Vec<u64> {
    call.pointer("/tool_call/processes")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|l| l.get("seq").and_then(Value::as_u64))
                .collect()
        })
        .unwrap_or_default()
}

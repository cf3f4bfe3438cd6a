//! The HTTP receiver of `cargo xtask bench` (Splunk HEC and Elasticsearch
//! `_bulk`): the test harness's `HttpReceiver` in counting mode (no bodies
//! kept), run as a process of its own built in release, so that what it costs
//! (gunzip, counting) is a real server's cost and not a debug build's.
//!
//! It prints `port N` once it listens, then answers one command per stdin
//! line with one stdout line:
//!
//! - `stats` → `{"events":N,"body_bytes":N,"requests":N,"by_status":{..}}`
//! - `kill9` → `ok`: stops listening and cuts every open connection
//! - `restart` → `ok`: listens again on the same port
//!
//! A failed command answers `error: ...`. It exits when stdin closes, and
//! dies with its parent (`PR_SET_PDEATHSIG`).

use std::{
    collections::BTreeMap,
    io::{self, BufRead as _, Write as _},
};

use anyhow::{Context as _, Result};
use sensor_tests::servers::HttpReceiver;
use serde_json::json;

fn main() -> Result<()> {
    // SAFETY: prctl(2) with these arguments only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error()).context("prctl(PR_SET_PDEATHSIG)");
    }
    let mut receiver = HttpReceiver::start_counting()?;
    let mut out = io::stdout().lock();
    writeln!(out, "port {}", receiver.port())?;
    out.flush()?;
    for line in io::stdin().lock().lines() {
        let line = line.context("read a command")?;
        let answer = match line.trim() {
            "stats" => {
                let requests = receiver.requests();
                let mut by_status: BTreeMap<u16, u64> = BTreeMap::new();
                for r in &requests {
                    *by_status.entry(r.status).or_default() += 1;
                }
                json!({
                    "events": receiver.events(),
                    "body_bytes": receiver.body_bytes(),
                    "requests": requests.len(),
                    "by_status": by_status,
                })
                .to_string()
            }
            "kill9" => result(receiver.kill9()),
            "restart" => result(receiver.restart()),
            other => format!("error: unknown command {other:?}"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

fn result(r: Result<()>) -> String {
    match r {
        Ok(()) => "ok".to_owned(),
        Err(err) => format!("error: {err:#}"),
    }
}

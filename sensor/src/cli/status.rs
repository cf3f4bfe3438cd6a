//! `sensor status`.

use std::process::ExitCode;

use anyhow::Context as _;

use super::{args::StatusArgs, display::escape_terminal};
use crate::control::{
    self,
    protocol::{Request, Response},
};

pub fn execute(args: &StatusArgs) -> anyhow::Result<ExitCode> {
    let response = control::request(&args.socket, &Request::Status)?;
    let Response::Status(report) = response else {
        anyhow::bail!("unexpected response from the daemon");
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the status")?
        );
    } else {
        // Output specs, error strings and the version come from the daemon
        // (an error string may quote what a remote server said): each line is
        // escaped whole; its fixed text has nothing to escape.
        let mut lines = vec![
            format!(
                "{} (pid {}, up {}s, version {})",
                if report.ready { "ready" } else { "not ready" },
                report.pid,
                report.uptime_ms / 1000,
                report.version
            ),
            format!("programs attached: {}", report.programs.len()),
        ];
        let events: Vec<String> = report
            .events
            .iter()
            .filter(|(k, _)| k.as_str() != "total")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        lines.push(format!(
            "events: {} ({})",
            report.events.get("total").copied().unwrap_or(0),
            events.join(" ")
        ));
        lines.push(format!("lost in the kernel: {}", report.lost.total));
        lines.push(format!("active runs: {}", report.runs_active));
        if report.kernel_inherit_failed > 0 {
            lines.push(format!(
                "processes outside their run (kernel map full): {}",
                report.kernel_inherit_failed
            ));
        }
        if report.decode_errors > 0 {
            lines.push(format!("undecodable records: {}", report.decode_errors));
        }
        lines.push(format!(
            "refused: {} launches, {} connections; held back: {} denial records; degraded runs: {}",
            report.launches_refused,
            report.connections_refused,
            report.denials_suppressed,
            report.runs_degraded
        ));
        if report.panics > 0 {
            lines.push(format!(
                "panics caught (bugs; see the daemon's log): {}",
                report.panics
            ));
        }
        for o in &report.outputs {
            let mut line = format!(
                "output {} ({}, {}): {}, sent {} dropped {} failed {}",
                o.name, o.spec, o.format, o.state, o.sent, o.dropped, o.failed
            );
            if o.spooled > 0 || o.spool_bytes > 0 {
                line.push_str(&format!(
                    ", spooled {} ({} KiB)",
                    o.spooled,
                    o.spool_bytes / 1024
                ));
            }
            if let Some(e) = o.last_error.as_deref().filter(|_| o.state != "ok") {
                line.push_str(&format!(", last error: {e}"));
            }
            lines.push(line);
        }
        for line in &lines {
            println!("{}", escape_terminal(line));
        }
    }
    Ok(if report.ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

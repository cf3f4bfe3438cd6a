//! How an event becomes rows of the store: the columns it is found by
//! (run, process, address, verdict, escape attempt) and, for a run's start
//! and end, its row in `runs`. The event's JSON line itself is stored as
//! written to the outputs.

use crate::{
    event::{Event, Kind},
    store::{
        unix_ns,
        writer::{Record, RunRow},
    },
};

#[must_use]
/// What the store indexes of an event whose JSON is `line` in the batch.
pub fn record_of(event: &Event, line: std::ops::Range<usize>) -> Record {
    let run = event.run.as_ref();
    let run_row = match (event.kind, run) {
        (Kind::RunStart | Kind::RunEnd, Some(r)) => r.details.as_ref().map(|d| RunRow {
            id: r.id.clone(),
            agent: r.agent.clone(),
            principal: r.principal.clone(),
            principal_claimed: r.principal_claimed.clone(),
            uid: Some(d.uid),
            parent_id: r.parent_id.clone(),
            root_id: r.root_id.clone(),
            depth: r.depth,
            policy: d.policy.clone(),
            labels: serde_json::to_string(&d.labels).unwrap_or_else(|_| "{}".into()),
            started_by: Some(d.started_by.as_str().to_owned()),
            host: event.host.name.clone(),
            start_ns: unix_ns(d.start.0),
            end_ns: d.end.map(|t| unix_ns(t.0)),
            end_reason: d.end_reason.clone(),
        }),
        _ => None,
    };
    let tamper_target = event.tamper.as_ref().and_then(|t| t.target.as_ref());
    Record {
        seq: event.seq,
        time_ns: unix_ns(event.time.0),
        kind: event.kind.as_str(),
        run_id: run.map(|r| r.id.clone()),
        root_id: run.map(|r| r.root_id.clone()),
        pid: event.process.as_ref().map(|p| p.pid),
        process_key: event.process.as_ref().map(|p| p.key.clone()),
        dst_ip: event
            .network
            .as_ref()
            .and_then(|n| n.dst_ip.map(|ip| ip.to_string())),
        dst_port: event.network.as_ref().and_then(|n| n.dst_port),
        verdict: event.policy.as_ref().map(|v| v.verdict.as_str().to_owned()),
        path: event.network.as_ref().and_then(|n| n.path.clone()),
        method: event.tamper.as_ref().map(|t| t.method),
        target_pid: tamper_target.map(|t| t.pid),
        target_run: tamper_target.and_then(|t| t.run.as_ref().map(|r| r.id.clone())),
        escape: event.is_escape_attempt(),
        chain: None,
        line,
        run: run_row,
    }
}

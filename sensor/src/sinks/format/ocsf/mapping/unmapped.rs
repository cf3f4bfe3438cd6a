//! `unmapped`: kind, seq, run, and whatever of the event has no OCSF place.

use crate::{
    event::{Event, Exec, Network, Process},
    sinks::format::ocsf::{
        classes::NetShape,
        objects::{ExecRest, NetworkRest, ProcessRest, RestOr, Sorted, Unmapped},
    },
};

/// `unmapped`: kind, seq, run, policy, lost, what of `process`, `exec` and
/// `network` has no OCSF place, and the sensor objects no class maps.
pub(super) fn unmapped(event: &Event, exec_mapped: bool, shape: Option<NetShape>) -> Unmapped<'_> {
    // Every field is named (no `..`): a new event field fails to compile
    // until it is mapped or sent to `unmapped`.
    let Event {
        schema: _,
        seq,
        time: _,
        host: _,
        kind,
        run,
        process,
        exec,
        network,
        lost,
        degraded,
        tamper,
        policy,
        gap,
        delivery,
        blind,
        token,
        detection,
        checkpoint,
        tool_call,
        transcript,
        unexplained,
    } = event;
    Unmapped {
        kind: *kind,
        seq: *seq,
        run: run.as_ref().map(Sorted),
        policy: policy.as_ref().map(Sorted),
        lost: lost.as_deref().map(Sorted),
        process: process.as_ref().map(process_rest),
        exec: exec.as_ref().map(|x| {
            if exec_mapped {
                RestOr::Rest(exec_rest(x))
            } else {
                RestOr::Whole(Sorted(x))
            }
        }),
        network: network.as_ref().and_then(|n| match shape {
            Some(shape) => Some(network_rest(n, shape))
                .filter(|r| *r != NetworkRest::default())
                .map(RestOr::Rest),
            None => Some(RestOr::Whole(Sorted(n))),
        }),
        blind: blind.as_deref().map(Sorted),
        checkpoint: checkpoint.as_deref().map(Sorted),
        detection: detection.as_deref().map(Sorted),
        degraded: degraded.as_deref().map(Sorted),
        delivery: *delivery,
        gap: gap.as_deref().map(Sorted),
        tamper: tamper.as_deref().map(Sorted),
        token: token.as_deref().map(Sorted),
        tool_call: tool_call.as_deref().map(Sorted),
        transcript: transcript.as_deref().map(Sorted),
        unexplained: unexplained.as_deref().map(Sorted),
    }
}

/// The `process` fields with no OCSF place.
fn process_rest(p: &Process) -> ProcessRest<'_> {
    let Process {
        key: _,
        pid: _,
        ns_pid,
        tid: _,
        ppid: _,
        parent_key: _,
        uid: _,
        gid,
        comm: _,
        exe: _,
        exe_b64,
        exe_truncated,
        argv,
        argv_b64,
        argc,
        argv_truncated,
        argv_len,
        cwd: _,
        exit_code: _,
        exit_signal,
        core_dumped,
        parent_exe: _,
    } = p;
    ProcessRest {
        argc: *argc,
        argv: argv.as_deref(),
        argv_b64: argv_b64.as_deref(),
        argv_len: *argv_len,
        argv_truncated: *argv_truncated,
        core_dumped: *core_dumped,
        exe_b64: exe_b64.as_deref(),
        exe_truncated: *exe_truncated,
        exit_signal: *exit_signal,
        gid: *gid,
        ns_pid: *ns_pid,
    }
}

/// The `exec` fields with no place in Process Activity.
fn exec_rest(x: &Exec) -> ExecRest<'_> {
    let Exec {
        filename,
        result: _,
        errno,
        error: _,
        old_tid: _,
        inode,
        dev,
        dev_raw: _,
        mnt_id: _,
        modified_in_run,
    } = x;
    ExecRest {
        dev: dev.as_deref(),
        errno: *errno,
        filename,
        inode: *inode,
        modified_in_run: *modified_in_run,
    }
}

/// The `network` fields with no place in Network Activity of `shape`.
fn network_rest(n: &Network, shape: NetShape) -> NetworkRest<'_> {
    let Network {
        transport,
        family,
        dst_ip,
        dst_port,
        path,
        abstract_name,
        peer_path,
        local_ip,
        local_port,
        src_ip,
        src_port,
        sends,
        result: _,
        errno,
        error: _,
        via,
    } = n;
    let mut rest = NetworkRest {
        abstract_name: *abstract_name,
        dst_ip: *dst_ip,
        dst_port: *dst_port,
        errno: *errno,
        family: Some(family),
        local_ip: *local_ip,
        local_port: *local_port,
        path: path.as_deref(),
        peer_path: peer_path.as_deref(),
        sends: *sends,
        src_ip: *src_ip,
        src_port: *src_port,
        transport: Some(transport),
        via: *via,
    };
    // What each shape maps (`result` and `error` always are).
    let ip = |r: &mut NetworkRest<'_>| {
        r.transport = None;
        r.family = None;
    };
    match shape {
        NetShape::Connect | NetShape::Traffic => {
            ip(&mut rest);
            rest.dst_ip = None;
            rest.dst_port = None;
            if shape == NetShape::Traffic {
                rest.sends = None;
            }
        }
        NetShape::Unix => rest.path = None,
        NetShape::Listen | NetShape::Accept => {
            ip(&mut rest);
            rest.local_ip = None;
            rest.local_port = None;
            if shape == NetShape::Accept {
                rest.src_ip = None;
                rest.src_port = None;
            }
        }
        NetShape::Socket => ip(&mut rest),
    }
    rest
}

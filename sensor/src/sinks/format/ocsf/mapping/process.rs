//! Process Activity (1007): spawn, exec, exit, a violation about one, a
//! process tamper; and the OCSF `process` object of a sensor process.

use std::borrow::Cow;

use super::{Draft, errno_text, opt_text, text};
use crate::{
    event::{Exec, ExecResult, Kind, Process, Tamper, TamperTarget, Verdict},
    sinks::format::ocsf::{
        classes::{Class, Severity, Status},
        objects::{File, ParentProcess, ProcessObj, Session, User},
    },
};

/// How a sensor process is shown as an OCSF `process` object.
#[derive(Debug, Clone, Copy)]
enum Shape<'a> {
    /// The process itself: pid, key, tid, comm (when `name`), `file` (the
    /// image to show), argv/cwd when `cmd`, user, parent; `terminated_time`
    /// for an exit.
    Full {
        file: Option<&'a str>,
        name: bool,
        cmd: bool,
        terminated: Option<i64>,
    },
    /// The same process as the one acting on itself (exec, exit): pid, key,
    /// `tid` (the thread that called exec), user, parent; `file`/`name`
    /// only when given (the caller's image of a failed exec).
    Actor {
        tid: Option<u32>,
        file: Option<&'a str>,
        name: bool,
    },
    /// Its parent (the actor of a fork): ppid, parent key, parent exe, user.
    Parent,
}

/// The `process` object of `p` shown as `shape`.
fn process_obj<'a>(p: &'a Process, shape: Shape<'a>) -> ProcessObj<'a> {
    let user = Some(User {
        name: None,
        uid: Some(p.uid.to_string()),
    });
    let parent_file = opt_text(p.parent_exe.as_ref()).map(File::executable);
    if let Shape::Parent = shape {
        return ProcessObj {
            pid: Some(p.ppid),
            uid: text(&p.parent_key),
            file: parent_file,
            user,
            ..ProcessObj::default()
        };
    }
    let (tid, file, name, cmd, terminated) = match shape {
        Shape::Full {
            file,
            name,
            cmd,
            terminated,
        } => (p.tid, file, name, cmd, terminated),
        Shape::Actor { tid, file, name } => (tid.unwrap_or(p.tid), file, name, false, None),
        Shape::Parent => (p.tid, None, false, false, None),
    };
    ProcessObj {
        pid: Some(p.pid),
        uid: text(&p.key),
        tid: Some(tid),
        name: if name { text(&p.comm) } else { None },
        file: file.map(File::executable),
        cmd_line: if cmd {
            p.argv.as_deref().map(cmd_line)
        } else {
            None
        },
        working_directory: if cmd { opt_text(p.cwd.as_ref()) } else { None },
        terminated_time: terminated,
        user,
        parent_process: Some(ParentProcess {
            pid: p.ppid,
            uid: text(&p.parent_key),
            file: parent_file,
        }),
        session: None,
    }
}

/// A tamper's target as a `process`: pid, key, exe (and its run, set by
/// the caller).
fn target_obj(t: &TamperTarget) -> ProcessObj<'_> {
    ProcessObj {
        pid: Some(t.pid),
        uid: text(&t.key),
        file: opt_text(t.exe.as_ref()).map(File::executable),
        ..ProcessObj::default()
    }
}

/// `cmd_line`: argv joined with spaces.
fn cmd_line(argv: &[String]) -> String {
    argv.join(" ")
}

/// `actor.process` of the process that acted: all of it.
pub(super) fn acting(p: Option<&Process>) -> Option<ProcessObj<'_>> {
    p.map(|p| {
        let full = Shape::Full {
            file: opt_text(p.exe.as_ref()),
            name: true,
            cmd: true,
            terminated: None,
        };
        process_obj(p, full)
    })
}

/// `pid N (EXE)` of the process that acted, for messages.
pub(super) fn who(p: Option<&Process>) -> String {
    p.map_or_else(
        || "a process".to_owned(),
        |p| {
            format!(
                "pid {} ({})",
                p.pid,
                opt_text(p.exe.as_ref()).unwrap_or("?")
            )
        },
    )
}

/// Process Activity of a spawn, an exec, an exit, or a violation about
/// one (`process` must be present).
pub(super) fn process_activity<'a>(
    kind: Kind,
    p: &'a Process,
    exec: Option<&'a Exec>,
    policy: Option<&'a Verdict>,
    time_ms: i64,
) -> Draft<'a> {
    let rule = policy.map_or("", |p| p.rule.as_str());
    let exe = opt_text(p.exe.as_ref());
    if kind == Kind::ProcessExit {
        let mut m = Draft::new(Class::Process, 2, "Terminate");
        let full = Shape::Full {
            file: exe,
            name: true,
            cmd: false,
            terminated: Some(time_ms),
        };
        m.process = Some(process_obj(p, full));
        let actor = Shape::Actor {
            tid: None,
            file: None,
            name: false,
        };
        m.actor_process = Some(process_obj(p, actor));
        m.status = Some(Status::Success);
        if let Some(code) = p.exit_code {
            m.exit_code = Some(code);
            m.status_detail = Some(format!("exited with code {code}").into());
        } else if let Some(signal) = p.exit_signal {
            let core = if p.core_dumped == Some(true) {
                ", core dumped"
            } else {
                ""
            };
            m.status_detail = Some(format!("killed by signal {signal}{core}").into());
        }
        return m;
    }
    let mut m = Draft::new(Class::Process, 1, "Launch");
    let is_fork =
        kind == Kind::ProcessSpawn || (exec.is_none() && rule.starts_with("max_processes"));
    if is_fork {
        m.launch_type = Some((2, "Fork"));
        let full = Shape::Full {
            file: exe,
            name: true,
            cmd: true,
            terminated: None,
        };
        m.process = Some(process_obj(p, full));
        m.actor_process = Some(process_obj(p, Shape::Parent));
        m.status = Some(Status::Success);
        return m;
    }
    m.launch_type = Some((3, "Exec"));
    let failed = exec.is_some_and(|x| x.result == ExecResult::Error);
    let old_tid = exec.map(|x| x.old_tid);
    if let Some(x) = exec.filter(|_| failed) {
        // The image is unchanged; what it tried to run is exec.filename.
        let target = Shape::Full {
            file: text(&x.filename),
            name: false,
            cmd: true,
            terminated: None,
        };
        m.process = Some(process_obj(p, target));
        let caller = Shape::Actor {
            tid: old_tid,
            file: exe,
            name: true,
        };
        m.actor_process = Some(process_obj(p, caller));
        m.status = Some(Status::Failure);
        let error = opt_text(x.error.as_ref());
        m.status_code = error;
        m.status_detail =
            errno_text(error, x.errno).map(|e| Cow::Owned(format!("exec failed: {e}")));
    } else {
        let full = Shape::Full {
            file: exe,
            name: true,
            cmd: true,
            terminated: None,
        };
        m.process = Some(process_obj(p, full));
        let actor = Shape::Actor {
            tid: old_tid,
            file: None,
            name: false,
        };
        m.actor_process = Some(process_obj(p, actor));
        m.status = Some(if exec.is_some() {
            Status::Success
        } else {
            Status::Unknown
        });
    }
    m.exec_mapped = exec.is_some();
    m
}

/// Process Activity of a `process.tamper`: the caller (`actor.process`)
/// reached into a process outside its run (`process`).
pub(super) fn process_tamper<'a>(t: &'a Tamper, p: Option<&'a Process>) -> Draft<'a> {
    let what = text(&t.what).unwrap_or("tamper");
    let (activity_id, activity_name, injection) = match t.method {
        "ptrace" => (4, "Inject", Some("ptrace attach")),
        "process_vm_writev" => (4, "Inject", Some("process_vm_writev")),
        "proc_mem" => (4, "Inject", Some("/proc/PID/mem")),
        // Takes a descriptor of the other process's: OCSF's Open.
        "pidfd_getfd" => (3, "Open", None),
        _ => (99, what, None),
    };
    let mut m = Draft::new(Class::Process, activity_id, activity_name);
    m.injection = injection;
    // OCSF requires `process`: the target, or else the caller itself.
    m.process = match (t.target.as_ref(), p) {
        (Some(target), _) => {
            let mut obj = target_obj(target);
            obj.session = target
                .run
                .as_ref()
                .and_then(|r| text(&r.id))
                .map(|id| Session {
                    uid: Some(id),
                    ..Session::default()
                });
            Some(obj)
        }
        (None, Some(p)) => Some(process_obj(
            p,
            Shape::Full {
                file: opt_text(p.exe.as_ref()),
                name: false,
                cmd: false,
                terminated: None,
            },
        )),
        (None, None) => None,
    };
    m.actor_process = acting(p);
    let killed = t.killed == Some(true);
    m.status = Some(if killed {
        Status::Failure
    } else {
        Status::Unknown
    });
    if killed {
        m.status_detail = Some("the caller was killed before the call took effect".into());
    }
    m.severity = if killed {
        Severity::Medium
    } else {
        Severity::High
    };
    m.is_alert = true;
    let object = text(&t.object).unwrap_or("?");
    let by = who(p);
    m.message = Some(format!(
        "{what} of {object} by {by}, outside its run; {}",
        if killed {
            "the caller was killed"
        } else {
            "not blocked"
        }
    ));
    m
}

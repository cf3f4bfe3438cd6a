//! `sensor.tamper` of a change to the sensor's files that the file watch
//! saw ([`crate::tamper::files`]): the process that made it, found by
//! [`crate::attribution::Attribution::actor`] (it may have exited), its
//! run, and under the run's enforce policy a kill, after the change.

use std::time::SystemTime;

use super::{Engine, comm};
use crate::event::{Event, Kind, Process, Tamper, TamperFile};
use crate::{
    attribution::Actor,
    policy::{Mode, Verdict},
    tamper::files::{FileChange, What},
};

/// What a report did beyond its events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileTamperOutcome {
    /// The process was in a run.
    pub in_run: bool,
    /// It was killed (enforce).
    pub killed: bool,
}

impl Engine {
    /// The `sensor.tamper` of change `c` (and its `policy.violation` when
    /// the process's run has a policy) into `out`. Under an enforce policy
    /// the process is killed first, if it still runs: after the fact, the
    /// change stands.
    pub fn file_tamper(&mut self, c: &FileChange, out: &mut Vec<Event>) -> FileTamperOutcome {
        let actor = (c.pid != 0).then(|| self.attribution.actor(c.pid));
        let run = actor.as_ref().map_or(0, |a| a.placement.run);
        let policy = self
            .attribution
            .run_policy(run)
            .and_then(|name| self.policies.get(name))
            .cloned();
        let enforce = policy.as_ref().is_some_and(|p| p.mode == Mode::Enforce);
        let killed = enforce
            && actor.as_ref().is_some_and(|a| {
                a.alive
                    && a.start_ns != 0
                    && crate::identity::kill_process(
                        a.pid,
                        a.start_ns / self.keys.ns_per_tick().max(1),
                    )
            });
        let mut e = self.envelope(Kind::SensorTamper, SystemTime::now());
        e.run = actor
            .as_ref()
            .and_then(|a| self.attribution.run_ref(a.placement));
        e.process = actor.as_ref().map(|a| self.actor_process(a));
        let path = c.path.display().to_string();
        e.tamper = Some(Box::new(Tamper {
            method: "file",
            what: c.what().as_str().to_owned(),
            object: path.clone(),
            detected: "after",
            file: Some(TamperFile {
                kind: c.area.as_str(),
                path: Some(path),
                dev: None,
                inode: None,
                to: c.to.as_ref().map(|t| t.display().to_string()),
                dir: c.dir.then_some(true),
            }),
            killed: policy.as_ref().map(|_| killed),
            suppressed: (c.suppressed > 0).then_some(c.suppressed),
            detail: Some(detail(c, actor.as_ref(), enforce, killed)),
            ..Tamper::default()
        }));
        e.policy = policy.as_ref().map(|p| Verdict {
            name: p.name.clone(),
            verdict: crate::event::Decision::Deny,
            rule: p.rule_text(sensor_common::policy::RULE_TAMPER),
            enforced: killed,
            version: p.version,
        });
        let violation = e.policy.is_some().then(|| {
            let mut v = e.clone();
            v.kind = Kind::PolicyViolation;
            v
        });
        out.push(e);
        if let Some(mut v) = violation {
            v.seq = self.seq();
            out.push(v);
        }
        FileTamperOutcome {
            in_run: run != 0,
            killed,
        }
    }

    /// The `process` object of an actor: from /proc while it runs, from
    /// its exit record when it is gone, its pid alone when nothing is known.
    fn actor_process(&self, a: &Actor) -> Process {
        if a.alive {
            let uid = crate::identity::proc_uid_in(std::path::Path::new("/proc"), a.pid)
                .unwrap_or_default();
            let mut p = self.process_of_pid(a.pid, uid);
            p.key = self.keys.key(a.pid, a.start_ns);
            if p.exe.is_none() {
                p.exe = a.exe.as_deref().map(str::to_owned);
            }
            return p;
        }
        match &a.exited {
            Some(x) => Process {
                key: self.keys.key(x.pid, x.start_ns),
                pid: x.pid,
                tid: x.pid,
                ppid: x.ppid,
                parent_key: self.keys.key(x.ppid, x.parent_start_ns),
                uid: x.uid,
                gid: x.gid,
                comm: comm(&x.comm),
                exe: x.exe.as_deref().map(str::to_owned),
                ..Process::default()
            },
            None => Process {
                key: self.keys.key(a.pid, a.start_ns),
                pid: a.pid,
                tid: a.pid,
                exe: a.exe.as_deref().map(str::to_owned),
                ..Process::default()
            },
        }
    }
}

/// What was done, in words, and what the sensor did about it.
fn detail(c: &FileChange, actor: Option<&Actor>, enforce: bool, killed: bool) -> String {
    let mut d = match c.what() {
        What::Unlink => "removed".to_owned(),
        What::Rename if c.moved_in => "moved here from outside the sensor's directories".to_owned(),
        What::Rename => match &c.to {
            Some(to) => format!("renamed to {}", to.display()),
            None => "moved out of the sensor's directories".to_owned(),
        },
        What::Create => "created".to_owned(),
        What::Modify => "written or truncated".to_owned(),
        What::Attrib => "metadata changed (mode, owner, times or links)".to_owned(),
    };
    let also: Vec<&str> = c.ops().skip(1).map(What::as_str).collect();
    if !also.is_empty() {
        d.push_str(&format!(" (also {})", also.join(", ")));
    }
    d.push_str("; seen after the change was made (fanotify)");
    match actor {
        None => d.push_str(
            "; the kernel did not say which process made it: fanotify names processes only to \
             a listener with CAP_SYS_ADMIN, which the daemon lacks",
        ),
        Some(a) if a.start_ns == 0 && !a.alive => {
            d.push_str("; the process had exited and was not known to the sensor");
        }
        Some(_) => {}
    }
    if killed {
        d.push_str(
            "; the process was killed under its run's enforce policy, after the fact: the change stands",
        );
    } else if enforce {
        d.push_str("; the process had exited before it could be killed (enforce)");
    }
    if c.suppressed > 0 {
        d.push_str(&format!(
            "; {} earlier changes by this process were counted, not reported one by one (rate limit)",
            c.suppressed
        ));
    }
    d
}

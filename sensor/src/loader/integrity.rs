//! The integrity check of what the daemon pinned and attached, and what
//! really stays attached when it stops.
//!
//! Every second ([`Probes::check`]), for the cost of a few dozen bpf(2) calls
//! and no writes when nothing changed:
//!
//! - the pin dir is there and private (made again, mode 0700, when removed);
//! - every pinned map's pin is there and holds our map (compared by kernel
//!   id); a missing one is pinned again from the daemon's own handle, another
//!   object pinned in its place is replaced;
//! - every link still attaches its program (a cgroup link can be detached
//!   with `BPF_LINK_DETACH`, e.g. `bpftool link detach`); a detached program
//!   is attached again with a new link;
//! - while enforcing, every link's pin is there and holds our link;
//! - the owner record is ours;
//! - the active generation is ours (see `sensor_common::handover`).
//!
//! What cannot be put back is reported once, until it is fixed.

use std::{collections::BTreeSet, os::fd::AsFd as _, path::Path, time::Duration};

use super::{
    ProbeLink, Probes, attach_probe, own_link, own_pin_dir, remove_pin,
    seam::{self, Bpffs, Pinned, Pins as _},
    sys,
};
use crate::tamper::{self, Tamper};

/// A link as `sensor status` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkStatus {
    pub name: &'static str,
    pub program_id: u32,
    pub link_id: u32,
    /// The link attaches its program (checked in the kernel).
    pub attached: bool,
    /// The link is pinned in `<pin-dir>/links` (so it outlives the daemon).
    pub pinned: bool,
}

/// What is still attached once the daemon let go of its programs, checked in
/// the kernel.
#[derive(Debug, Clone, Default)]
pub struct StopReport {
    /// The links were meant to stay (enforce policies were loaded).
    pub pinned: bool,
    /// Programs the daemon had attached.
    pub total: usize,
    /// Programs that stay attached: a pinned, attached link holds them.
    pub staying: Vec<&'static str>,
    /// Programs meant to stay that do not (pin gone, link detached, program unloaded).
    pub lost: Vec<&'static str>,
    /// Programs meant to go that are still loaded after the wait (something
    /// else holds them), with their ids.
    pub still_loaded: Vec<(&'static str, u32)>,
    /// The kernel's program list could not be read (no `CAP_SYS_ADMIN`):
    /// whether the programs are gone was not checked.
    pub unchecked: bool,
}

/// The ids of every program loaded in the kernel, or `None` when the list
/// cannot be read.
fn loaded_program_ids() -> Option<BTreeSet<u32>> {
    aya::programs::loaded_programs()
        .map(|p| p.ok().map(|p| p.id()))
        .collect()
}

/// How long the stop waits for programs it let go of to leave the kernel
/// (the kernel frees them after an RCU grace period, within milliseconds).
const UNLOAD_WAIT: Duration = Duration::from_secs(2);

/// The link pinned at `path`.
fn pinned_link(path: &Path) -> Pinned {
    super::bpffs().link_at(path)
}

impl Probes {
    /// Checks the pins, links and owner record against the kernel and puts
    /// back what it can. Returns what was found (a `sensor.tamper` each).
    /// What could not be put back is reported once, not every second, until
    /// a check finds it fixed.
    pub fn check(&mut self) -> Vec<Tamper> {
        let mut found = Vec::new();
        let pin_dir_ok = self.check_pin_dir(&mut found);
        if pin_dir_ok {
            let mut fs = Bpffs {
                links: &self.links,
                maps: &self.maps,
            };
            for (i, handle) in self.maps.iter().enumerate() {
                if let Some(t) =
                    seam::check_map_pin(&mut fs, &self.pin_dir, i, handle.name, handle.id)
                {
                    found.push(t);
                }
            }
        }
        for i in 0..self.links.len() {
            if let Some(t) = self.check_link(i, pin_dir_ok) {
                found.push(t);
            }
        }
        if let Some(t) = self.check_owner() {
            found.push(t);
        }
        if let Some(t) = self.check_generation() {
            found.push(t);
        }
        // What could not be repaired is reported once, until it is fixed.
        let now: BTreeSet<(&'static str, String)> = found
            .iter()
            .filter(|t| !t.repaired)
            .map(|t| (t.what, t.object.clone()))
            .collect();
        found.retain(|t| t.repaired || !self.unresolved.contains(&(t.what, t.object.clone())));
        self.unresolved = now;
        found
    }

    /// Every link: attached (checked in the kernel) and pinned.
    #[must_use]
    pub fn link_status(&self) -> Vec<LinkStatus> {
        self.links
            .iter()
            .zip(&self.attached)
            .map(|(l, a)| LinkStatus {
                name: l.probe.program,
                program_id: a.id,
                link_id: l.id,
                attached: sys::link_state(l.fd.as_fd()).is_ok_and(|s| s.attached),
                pinned: self.pinned
                    && matches!(pinned_link(&self.links_dir.join(l.probe.program)), Pinned::Id(id) if id == l.id),
            })
            .collect()
    }

    /// The pin dir exists (made again when removed) and is private.
    fn check_pin_dir(&self, found: &mut Vec<Tamper>) -> bool {
        match own_pin_dir(&self.pin_dir) {
            Ok(()) => true,
            Err(e) => {
                found.push(
                    Tamper::new(
                        tamper::PIN_DIR_UNUSABLE,
                        self.pin_dir.display().to_string(),
                    )
                    .repaired(
                        false,
                        format!(
                            "{}; the maps and links cannot be pinned again: they outlive the daemon no more",
                            crate::error::Chain(&e)
                        ),
                    ),
                );
                false
            }
        }
    }

    /// Link `i` attaches its program (attached again when detached) and,
    /// while enforcing, is pinned.
    fn check_link(&mut self, i: usize, pin_dir_ok: bool) -> Option<Tamper> {
        let probe = self.links[i].probe;
        let program = probe.program;
        let old = self.links[i].id;
        let attached = match sys::link_state(self.links[i].fd.as_fd()) {
            Ok(state) => state.attached,
            Err(e) => {
                tracing::debug!(program, error = %e, "cannot read a link's state");
                true
            }
        };
        if !attached {
            let result = attach_probe(&mut self.ebpf, probe, &self.cgroup, false)
                .and_then(|(_, link)| own_link(probe, &link));
            return Some(match result {
                Ok((fd, new)) => {
                    // The old (defunct) link goes with its descriptor; its pin is replaced.
                    self.links[i] = ProbeLink { probe, fd, id: new };
                    let pinned = if self.pinned && pin_dir_ok {
                        match self.pin_link(i) {
                            Ok(()) => ", pinned".to_owned(),
                            Err(e) => format!(", but not pinned ({e})"),
                        }
                    } else {
                        String::new()
                    };
                    Tamper::new(tamper::LINK_DETACHED, program).repaired(
                        true,
                        format!(
                            "link {old} was detached; program attached again as link {new}{pinned}"
                        ),
                    )
                }
                Err(e) => Tamper::new(tamper::LINK_DETACHED, program).repaired(
                    false,
                    format!(
                        "link {old} was detached and the program could not be attached again: {}",
                        crate::error::Chain(&e)
                    ),
                ),
            });
        }
        if !self.pinned || !pin_dir_ok {
            return None;
        }
        let path = self.links_dir.join(program);
        let what = match pinned_link(&path) {
            Pinned::Id(id) if id == old => return None,
            Pinned::Nothing => tamper::PIN_REMOVED,
            Pinned::Id(_) | Pinned::Other => tamper::PIN_REPLACED,
        };
        let t = Tamper::new(what, path.display().to_string());
        Some(match self.pin_link(i) {
            Ok(()) => t.repaired(true, format!("link {old} of {program} pinned again")),
            Err(e) => t.repaired(
                false,
                format!("link {old} of {program} cannot be pinned again: {e}"),
            ),
        })
    }

    /// Pins link `i` at `<pin-dir>/links/<program>`, replacing what is there.
    pub(super) fn pin_link(&self, i: usize) -> std::io::Result<()> {
        let link = &self.links[i];
        let path = self.links_dir.join(link.probe.program);
        std::fs::create_dir_all(&self.links_dir)?;
        remove_pin(&path)?;
        sys::pin(link.fd.as_fd(), &path)
    }

    /// The active generation is ours (see [`seam::check_generation`]).
    fn check_generation(&mut self) -> Option<Tamper> {
        seam::check_generation(&mut self.active, self.generation, &self.pin_dir)
    }

    /// The owner record is this daemon's (see [`seam::check_owner`]).
    fn check_owner(&mut self) -> Option<Tamper> {
        seam::check_owner(&mut self.owner_map, self.owner, &self.pin_dir)
    }

    /// Lets go of every program (dropping the daemon's handles) and reports,
    /// from the kernel, what stays attached: with pinned links, each program
    /// whose pin still holds an attached link to it (a link holds its
    /// program loaded); without, it waits (2 s at most) until none of the
    /// programs is loaded any more.
    #[must_use]
    pub fn stop(self) -> StopReport {
        let pinned = self.pinned;
        let links_dir = self.links_dir.clone();
        let programs: Vec<(&'static str, u32)> =
            self.attached.iter().map(|a| (a.name, a.id)).collect();
        drop(self);
        let mut report = StopReport {
            pinned,
            total: programs.len(),
            ..StopReport::default()
        };
        if pinned {
            for (name, program_id) in programs {
                let holds = sys::pinned_link_state(&links_dir.join(name))
                    .is_ok_and(|s| s.attached && s.program_id == program_id);
                if holds {
                    report.staying.push(name);
                } else {
                    report.lost.push(name);
                }
            }
            return report;
        }
        let deadline = std::time::Instant::now() + UNLOAD_WAIT;
        loop {
            // Listing the kernel's programs takes CAP_SYS_ADMIN, which the
            // systemd unit does not grant: then this is not checked.
            let Some(ids) = loaded_program_ids() else {
                report.unchecked = true;
                return report;
            };
            report.still_loaded = programs
                .iter()
                .filter(|(_, id)| ids.contains(id))
                .copied()
                .collect();
            if report.still_loaded.is_empty() || std::time::Instant::now() >= deadline {
                return report;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

//! What the daemon's integrity check finds: each finding becomes a
//! `sensor.tamper` event, a log line and a count in `status` and `/metrics`.
//!
//! The check runs every second on the pipeline's tick (`pipeline::run`):
//!
//! - [`crate::loader::Probes::check`]: the pin dir exists; every pinned map
//!   and (when enforcing) every link pin is there and holds our object; every
//!   link still attaches its program; the owner record is ours; the active
//!   generation is ours. A removed pin
//!   is pinned again from the daemon's own handle, a detached program is
//!   attached again (a new link, pinned in place of the old one).
//! - [`crate::policy::kernel::Enforcement::verify`]: the policy maps hold what
//!   the daemon wrote (policy slots, run bindings, exec and network rules);
//!   whatever differs is written back.
//!
//! And what changes the sensor's files without opening them for writing
//! (unlink, rename, chmod, ...): [`files`], a fanotify watch of the pin
//! dir, the state dir and the database, reported after the change.

pub mod fanotify;
pub mod files;

/// "pin removed": a pin (map or link) is gone from the pin dir.
pub const PIN_REMOVED: &str = "pin removed";
/// "pin replaced": something else is pinned where our object was.
pub const PIN_REPLACED: &str = "pin replaced";
/// "pin dir unusable": the pin dir is gone and cannot be made again, or is
/// no longer a private directory of root's.
pub const PIN_DIR_UNUSABLE: &str = "pin dir unusable";
/// "link detached": a link no longer attaches its program.
pub const LINK_DETACHED: &str = "link detached";
/// "policy map changed": a policy map holds something the daemon did not write.
pub const POLICY_MAP_CHANGED: &str = "policy map changed";
/// "owner record changed": the pin dir's owner record names someone else.
pub const OWNER_CHANGED: &str = "owner record changed";
/// "active generation changed": the map that says which load's programs
/// act no longer names this daemon's (every program would stand idle).
pub const GENERATION_CHANGED: &str = "active generation changed";

/// One finding of the integrity check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tamper {
    /// What happened (one of the constants of this module).
    pub what: &'static str,
    /// What it happened to: a pin path, a program name, a map and its slot,
    /// policy or run.
    pub object: String,
    /// Whether the daemon put it back.
    pub repaired: bool,
    /// What was found and what was done about it.
    pub detail: Option<String>,
    /// The run concerned, by handle (a run's binding to its policy).
    pub run: Option<u64>,
}

impl Tamper {
    #[must_use]
    pub fn new(what: &'static str, object: impl Into<String>) -> Self {
        Self {
            what,
            object: object.into(),
            repaired: false,
            detail: None,
            run: None,
        }
    }

    /// Says whether it was put back and how.
    #[must_use]
    pub fn repaired(mut self, repaired: bool, detail: impl Into<String>) -> Self {
        self.repaired = repaired;
        self.detail = Some(detail.into());
        self
    }
}

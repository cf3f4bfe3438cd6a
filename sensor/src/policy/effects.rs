//! Run effects: what the engine asks of the kernel and the host when runs
//! start and end. The engine decides ([`crate::engine::Engine`] emits a
//! [`RunEffect`] for each run change); an [`Effects`] applies it. In the
//! daemon that is [`Apply`]: a bind or an unbind goes to the policy binder
//! ([`Enforcement`], the kernel maps), a kill to the process. Unit tests of
//! the engine put a recorder in its place and assert on the effects, with
//! or without (fake) maps behind it.
//!
//! An effect is applied at once and its outcome is part of the decision
//! (a launch whose run cannot be bound is refused; a matcher run whose
//! enforce policy cannot be bound has its process killed; a violation says
//! whether its kill happened), so effects are applied one by one, not
//! queued.

use super::kernel::{BindRefusal, Enforcement};

/// A change to a run's enforcement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEffect {
    /// Bind run `run` to `policy` in the kernel (`None`: no policy, its
    /// processes only counted) as a sub-run of `parent`, before anything of
    /// the run acts.
    Bind {
        run: u64,
        policy: Option<String>,
        parent: Option<u64>,
    },
    /// Run `run` ended: its kernel entries go.
    Unbind { run: u64 },
    /// SIGKILL process `pid`: a process that must not go on unenforced.
    /// With `start_ticks`, only the process that started then (a reused pid
    /// is left alone).
    Kill { pid: u32, start_ticks: Option<u64> },
    /// SIGSTOP process `pid` (only the process that started at
    /// `start_ticks`): its run's processes are all stopped before any is
    /// killed, so none can see another die and act on it (a shell whose
    /// child was killed would run its next command).
    Stop { pid: u32, start_ticks: u64 },
}

/// Why an effect did not take.
#[derive(Debug, thiserror::Error)]
pub enum EffectError {
    #[error(transparent)]
    Bind(#[from] BindRefusal),
    #[error("process {pid} could not be killed")]
    NotKilled { pid: u32 },
    #[error("process {pid} could not be stopped")]
    NotStopped { pid: u32 },
}

/// Applies run effects; `binder` is the kernel's policy binder (absent
/// without kernel maps: a replay, a test).
pub trait Effects: Send {
    fn apply(
        &mut self,
        effect: &RunEffect,
        binder: Option<&mut Enforcement>,
    ) -> Result<(), EffectError>;
}

/// The daemon's effects: binds and unbinds on the kernel maps, kills of
/// real processes.
#[derive(Debug, Default, Clone, Copy)]
pub struct Apply;

impl Effects for Apply {
    fn apply(
        &mut self,
        effect: &RunEffect,
        binder: Option<&mut Enforcement>,
    ) -> Result<(), EffectError> {
        match effect {
            RunEffect::Kill { pid, start_ticks } => kill(*pid, *start_ticks),
            RunEffect::Stop { pid, start_ticks } => {
                if crate::identity::signal_process(
                    *pid,
                    *start_ticks,
                    nix::sys::signal::Signal::SIGSTOP,
                ) {
                    Ok(())
                } else {
                    Err(EffectError::NotStopped { pid: *pid })
                }
            }
            _ => binder.map_or(Ok(()), |b| b.apply(effect).map_err(EffectError::Bind)),
        }
    }
}

/// SIGKILLs `pid` (only if it started at `start_ticks`, when given).
fn kill(pid: u32, start_ticks: Option<u64>) -> Result<(), EffectError> {
    let killed = match start_ticks {
        Some(ticks) => crate::identity::kill_process(pid, ticks),
        None => i32::try_from(pid).is_ok_and(|raw| {
            nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(raw),
                nix::sys::signal::Signal::SIGKILL,
            )
            .is_ok()
        }),
    };
    if killed {
        Ok(())
    } else {
        Err(EffectError::NotKilled { pid })
    }
}

impl Enforcement {
    /// Applies a bind or an unbind to the kernel maps (a kill is not the
    /// binder's: it is left to the caller, and is no error here).
    pub fn apply(&mut self, effect: &RunEffect) -> Result<(), BindRefusal> {
        match effect {
            RunEffect::Bind {
                run,
                policy,
                parent,
            } => self
                .bind(*run, policy.as_deref(), *parent)
                .map_err(|e| BindRefusal::new(e, policy.as_deref())),
            RunEffect::Unbind { run } => {
                self.unbind(*run);
                Ok(())
            }
            RunEffect::Kill { .. } | RunEffect::Stop { .. } => Ok(()),
        }
    }
}

/// A recorder of effects, for unit tests: every effect in order; binds
/// and unbinds go on to the binder (fake tables, if the test gave some),
/// kills are recorded and never sent.
#[cfg(test)]
pub mod recorder {
    use std::sync::{Arc, Mutex};

    use super::{EffectError, Effects, Enforcement, RunEffect};

    /// The recorder, and the handle the test keeps on what it recorded.
    #[derive(Default, Clone)]
    pub struct Recorder {
        seen: Arc<Mutex<Vec<RunEffect>>>,
        /// Kills answer "not killed" (the process was gone).
        pub kills_fail: bool,
    }

    impl Recorder {
        /// The effects so far, and forgets them.
        pub fn take(&self) -> Vec<RunEffect> {
            std::mem::take(
                &mut *self
                    .seen
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            )
        }
    }

    impl Effects for Recorder {
        fn apply(
            &mut self,
            effect: &RunEffect,
            binder: Option<&mut Enforcement>,
        ) -> Result<(), EffectError> {
            self.seen
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(effect.clone());
            match effect {
                RunEffect::Kill { pid, .. } if self.kills_fail => {
                    Err(EffectError::NotKilled { pid: *pid })
                }
                RunEffect::Kill { .. } => Ok(()),
                _ => binder.map_or(Ok(()), |b| b.apply(effect).map_err(EffectError::Bind)),
            }
        }
    }
}

//! Answers control requests against the engine: `launch` (within the
//! per-user bounds, the policies' nesting rules and the kernel's map), the
//! run of a process (`whoami`, `attest`), `status`, a policy reload, and a
//! new daemon's take-over. The server (`control::serve`) reads and
//! authorizes requests off the event loop; the pipeline hands each one
//! here after draining the ring, so answers see what the kernel saw.

use std::{path::PathBuf, sync::Arc};

use tokio::sync::oneshot;

use super::{
    Command,
    protocol::{Request, Response},
};
use crate::{
    attribution::{AttributionError, LaunchRequest, Peer},
    config::LimitsConfig,
    engine::Engine,
    event::Event,
    notify::Notifier,
    status::{DaemonState, Defense},
};

/// The control side's own state: the launch bounds and a read connection
/// to the store (run ids are unique for good).
pub struct Handler {
    limits: LimitsConfig,
    launch_rate: LaunchRate,
    store_path: Option<PathBuf>,
    store_reader: Option<rusqlite::Connection>,
    notifier: Arc<Notifier>,
    /// A new daemon asked to take over: answered once everything is saved.
    handover: Option<oneshot::Sender<Response>>,
    /// Signs run tokens (`None`: `[tokens] enabled = false`).
    tokens: Option<crate::tokens::Issuer>,
}

impl Handler {
    #[must_use]
    pub fn new(limits: LimitsConfig) -> Self {
        Self {
            launch_rate: LaunchRate::new(limits.launches_per_second),
            limits,
            store_path: None,
            store_reader: None,
            notifier: Arc::default(),
            handover: None,
            tokens: None,
        }
    }

    /// Issues run tokens with `issuer`.
    pub fn set_tokens(&mut self, issuer: crate::tokens::Issuer) {
        self.tokens = Some(issuer);
    }

    /// The 1 s tick: key rotation, and forgetting the token counts of
    /// runs no longer in memory.
    pub fn tick(&mut self, engine: &Engine) {
        if let Some(tokens) = &mut self.tokens {
            tokens.tick(std::time::SystemTime::now());
            tokens.retain(|handle| engine.attribution().run(handle).is_some());
        }
    }

    /// The per-user bounds on launches (`[limits]`).
    pub fn set_limits(&mut self, limits: LimitsConfig) {
        self.launch_rate = LaunchRate::new(limits.launches_per_second);
        self.limits = limits;
    }

    /// Checks chosen run ids against the store at `path` too.
    pub fn set_store(&mut self, path: PathBuf) {
        self.store_path = Some(path);
    }

    /// Tells systemd about reloads.
    pub fn set_notifier(&mut self, notifier: Arc<Notifier>) {
        self.notifier = notifier;
    }

    /// Answers `command`; the events it produced (a run start, a
    /// violation) go to `out`.
    pub fn handle(
        &mut self,
        engine: &mut Engine,
        state: &DaemonState,
        command: Command,
        out: &mut Vec<Event>,
    ) {
        self.answer(engine, state, command, out);
    }

    /// Whether a new daemon asked to take over.
    #[must_use]
    pub fn handover_requested(&self) -> bool {
        self.handover.is_some()
    }

    /// The take-over's reply, to send once everything is saved.
    pub fn take_handover(&mut self) -> Option<oneshot::Sender<Response>> {
        self.handover.take()
    }

    /// Swaps in policies a reload read and validated. On any error the
    /// running policies stay, untouched.
    pub fn install_policies(
        &mut self,
        engine: &mut Engine,
        policies: crate::policy::Policies,
    ) -> Result<(u64, Vec<String>), String> {
        let version = engine.policies().version().saturating_add(1);
        let policies = policies.with_version(version);
        let names: Vec<String> = policies.names().map(str::to_owned).collect();
        engine.set_policies(policies)?;
        tracing::info!(version, policies = ?names, "policies reloaded");
        self.notifier
            .status(&format!("policies reloaded: version {version}"));
        Ok((version, names))
    }

    fn answer(
        &mut self,
        engine: &mut Engine,
        state: &DaemonState,
        command: Command,
        out: &mut Vec<Event>,
    ) {
        match command {
            Command::Request {
                peer,
                request: Request::Handover,
                reply,
            } => match handover_refusal(engine, &peer) {
                Some(message) => {
                    let _ = reply.send(Response::Error { message });
                }
                None => {
                    tracing::info!(
                        pid = peer.pid,
                        "a new daemon takes over: saving everything and exiting, the programs stay attached"
                    );
                    self.handover = Some(reply);
                }
            },
            Command::Reload { loaded, reply } => {
                let response = match loaded.and_then(|p| self.install_policies(engine, *p)) {
                    Ok((version, policies)) => Response::Reloaded { version, policies },
                    Err(message) => {
                        tracing::error!(%message, "policy reload refused; the running policies stay");
                        Response::Error {
                            message: format!(
                                "reload refused, the running policies stay: {message}"
                            ),
                        }
                    }
                };
                let _ = reply.send(response);
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
                let response = self.answer_request(engine, state, &peer, request, out);
                let _ = reply.send(response);
            }
        }
    }

    fn answer_request(
        &mut self,
        engine: &mut Engine,
        state: &DaemonState,
        peer: &Peer,
        request: Request,
        out: &mut Vec<Event>,
    ) -> Response {
        let error = |e: &dyn std::fmt::Display| Response::Error {
            message: e.to_string(),
        };
        match request {
            Request::Launch(req) => {
                let response = self.launch(engine, state, peer, req, out);
                if matches!(response, Response::Error { .. }) {
                    Defense::count(&state.defense.launches_refused);
                }
                response
            }
            Request::Whoami => match engine.attribution().attest(peer.pid, None) {
                // What was read was about the peer only if it still owns its pid.
                Ok(_) if !peer.alive() => error(&AttributionError::PeerGone(peer.pid)),
                Ok(answer) => Response::Run(Box::new(answer)),
                Err(e) => error(&e),
            },
            Request::Attest { pid, start_ticks } => {
                match engine.attribution().attest(pid, start_ticks) {
                    Ok(mut answer) => {
                        // Another user's labels are theirs (root sees all).
                        if peer.uid != 0 && answer.run.uid != peer.uid {
                            answer.run.labels.clear();
                            answer.run.principal_claimed = None;
                        }
                        Response::Run(Box::new(answer))
                    }
                    Err(e) => error(&e),
                }
            }
            Request::Token(req) => self.token(engine, peer, &req, out),
            Request::Jwks => match &self.tokens {
                Some(t) => Response::Jwks {
                    issuer: t.issuer().to_owned(),
                    jwks: t.jwks(),
                },
                None => error(&crate::tokens::TokenError::Disabled),
            },
            Request::Status => {
                let report = state.report();
                Response::Status(Box::new(if peer.uid == 0 {
                    report
                } else {
                    report.redacted()
                }))
            }
            // The control server reads the config off the event thread and
            // sends `Command::Reload`; a bare request never gets here.
            Request::ReloadPolicies => Response::Error {
                message: "reload through the control socket".to_owned(),
            },
            // Taken in `answer`: it ends the event loop.
            Request::Handover => Response::Error {
                message: "hand-over through the control socket".to_owned(),
            },
        }
    }

    /// A run token for `peer`'s run. The run is the kernel's answer for the
    /// peer's pid, read while the peer still owns it (its pidfd); nothing
    /// the peer sent names it.
    fn token(
        &mut self,
        engine: &mut Engine,
        peer: &Peer,
        req: &crate::tokens::TokenRequest,
        out: &mut Vec<Event>,
    ) -> Response {
        let refuse = |message: String| Response::Error { message };
        let Some(tokens) = self.tokens.as_mut() else {
            return refuse(crate::tokens::TokenError::Disabled.to_string());
        };
        let answer = match engine.attribution().attest(peer.pid, None) {
            Ok(_) if !peer.alive() => {
                return refuse(AttributionError::PeerGone(peer.pid).to_string());
            }
            Ok(answer) => answer,
            Err(e) => return refuse(e.to_string()),
        };
        let run = &answer.run;
        let attribution = engine.attribution();
        let mut parents = Vec::new();
        let mut next = run.parent_id.as_deref();
        while let Some(id) = next {
            let Some(p) = attribution.run_by_id(id) else {
                break;
            };
            parents.push(p);
            next = p.parent_id.as_deref();
        }
        let policy_hash = run
            .policy
            .as_deref()
            .and_then(|name| engine.policies().get(name))
            .map(|p| p.content_hash.clone());
        let now = std::time::SystemTime::now();
        match tokens.issue(run, &parents, &answer.attribution, policy_hash, req, now) {
            Ok(issued) => {
                let c = &issued.claims;
                let at = |secs: u64| {
                    crate::event::Timestamp(
                        std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs),
                    )
                };
                let info = crate::event::TokenIssued {
                    jti: c.jti.clone(),
                    aud: c.aud.clone(),
                    iss: c.iss.clone(),
                    sub: c.sub.clone(),
                    iat: at(c.iat),
                    exp: at(c.exp),
                    scopes: c.scope.split_whitespace().map(str::to_owned).collect(),
                    kid: issued.kid.clone(),
                };
                out.push(engine.token_issued(run.handle, peer.pid, peer.uid, info));
                Response::Token {
                    token: issued.token,
                    claims: Box::new(issued.claims),
                }
            }
            Err(e) => refuse(e.to_string()),
        }
    }

    /// Why `peer` may not launch now, if it may not: the per-user bounds.
    fn launch_bounds(&mut self, engine: &Engine, peer: &Peer) -> Option<String> {
        let limits = &self.limits;
        let active = engine.attribution().active_runs_of_uid(peer.uid);
        if active >= limits.runs_per_uid {
            return Some(format!(
                "uid {} already has {active} active runs (at most {}: [limits] runs_per_uid)",
                peer.uid, limits.runs_per_uid
            ));
        }
        if !self.launch_rate.allow(peer.uid, std::time::Instant::now()) {
            return Some(format!(
                "too many launches from uid {} (more than {} per second: [limits] launches_per_second)",
                peer.uid, limits.launches_per_second
            ));
        }
        None
    }

    /// Whether the store has a run with exactly this id (runs that ended
    /// long ago are no longer in memory). Without a store only memory is
    /// asked, in `RunTable::create`.
    fn run_id_was_used(&mut self, id: &str) -> bool {
        let Some(path) = &self.store_path else {
            return false;
        };
        if self.store_reader.is_none() {
            self.store_reader = crate::store::open_for_reading(path).ok();
        }
        self.store_reader
            .as_ref()
            .is_some_and(|c| crate::store::query::run_exists(c, id).unwrap_or(false))
    }

    /// `sensor launch` from `peer`: bounds and policy checks first, then the
    /// run, bound to its policy in the kernel before the peer enters it.
    fn launch(
        &mut self,
        engine: &mut Engine,
        state: &DaemonState,
        peer: &Peer,
        req: LaunchRequest,
        out: &mut Vec<Event>,
    ) -> Response {
        let now = std::time::SystemTime::now();
        let refuse = |message: String| Response::Error { message };
        if let Some(why) = self.launch_bounds(engine, peer) {
            return refuse(why);
        }
        if let Some(name) = &req.policy
            && !engine.policies().contains(name)
        {
            return refuse(format!(
                "unknown policy {name:?} (the daemon's config defines none by that name)"
            ));
        }
        // A run id names one run for good: a chosen id that an earlier run
        // had (gone from memory, still in the store) would mix two records.
        if let Some(id) = &req.run_id
            && engine.attribution().handle_of(id).is_none()
            && self.run_id_was_used(id)
        {
            return refuse(crate::attribution::RunError::Exists(id.clone()).to_string());
        }
        // A sub-run may name a policy only if it is within its parent run's.
        if let Some(name) = &req.policy
            && let Some(parent_name) = engine
                .attribution()
                .attest(peer.pid, None)
                .ok()
                .and_then(|a| a.run.policy)
            && let (Some(child), Some(parent)) = (
                engine.policies().get(name),
                engine.policies().get(&parent_name),
            )
            && let Err(extra) = child.within(parent)
        {
            return refuse(format!(
                "policy {name:?} is wider than the parent run's policy {parent_name:?} \
                 ({extra} is not in it): a sub-agent cannot gain rights its parent lacks"
            ));
        }
        // max_depth of the parent run's policy: the sub-run is refused.
        if let Some(refusal) = engine.refuse_depth(peer.pid) {
            out.push(refusal.violation);
            return refuse(refusal.message);
        }
        match engine.launch(peer, req, now) {
            Ok((run, change)) => {
                tracing::info!(run = %run.id, agent = %run.agent, pid = peer.pid, depth = run.depth, "run started");
                out.push(engine.run_change(&change));
                state.set_runs(engine.attribution().active_runs());
                Response::Launched { run: Box::new(run) }
            }
            Err(e) => refuse(e.to_string()),
        }
    }
}

/// Why `peer` may not take over, if it may not: a process in an agent
/// run must not be able to make the daemon go away (the control server
/// already refused anyone but root).
fn handover_refusal(engine: &Engine, peer: &Peer) -> Option<String> {
    if peer.uid != 0 {
        return Some("only root may take over the sensor".to_owned());
    }
    match engine.attribution().attest(peer.pid, None) {
        Ok(answer) => Some(format!(
            "a process in agent run {} cannot take over the sensor",
            answer.run.id
        )),
        Err(_) if !peer.alive() => Some("the caller is gone".to_owned()),
        Err(_) => None,
    }
}

/// Launches per second per user: a token bucket per uid, holding two
/// seconds' worth (a burst), refilled continuously.
struct LaunchRate {
    per_second: f64,
    buckets: std::collections::HashMap<u32, (f64, std::time::Instant)>,
}

impl LaunchRate {
    fn new(per_second: u32) -> Self {
        Self {
            per_second: f64::from(per_second.max(1)),
            buckets: std::collections::HashMap::new(),
        }
    }

    /// Takes a token of `uid`'s bucket, if it has one.
    fn allow(&mut self, uid: u32, now: std::time::Instant) -> bool {
        let burst = self.per_second * 2.0;
        let (tokens, last) = self.buckets.entry(uid).or_insert((burst, now));
        let refill = now.duration_since(*last).as_secs_f64() * self.per_second;
        *tokens = (*tokens + refill).min(burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

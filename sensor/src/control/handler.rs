//! Answers control requests against the engine: `launch` (within the
//! per-user bounds, the policies' nesting rules and the kernel's map), the
//! run of a process (`whoami`, `attest`), `status`, a policy reload, and a
//! new daemon's take-over. The server (`control::serve`) reads and
//! authorizes requests off the event loop; the pipeline hands each one
//! here after draining the ring, so answers see what the kernel saw.

use std::{path::PathBuf, sync::Arc};

use tokio::sync::oneshot;

use super::{
    Command, Refusal,
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
    /// The detection rules in force, which a reload replaces.
    rules: Option<crate::detect::Rules>,
    /// The `[[agent]]` tables a reload just installed, for the pipeline's
    /// transcripts (taken with [`Self::take_reloaded_agents`]).
    reloaded_agents: Option<Vec<crate::attribution::AgentConfig>>,
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
            rules: None,
            reloaded_agents: None,
        }
    }

    /// The `[[agent]]` tables of a reload applied since the last call.
    pub fn take_reloaded_agents(&mut self) -> Option<Vec<crate::attribution::AgentConfig>> {
        self.reloaded_agents.take()
    }

    /// A reload replaces these detection rules.
    pub fn set_rules(&mut self, rules: crate::detect::Rules) {
        self.rules = Some(rules);
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

    /// Swaps in the policies and `[[agent]]` matchers a reload read and
    /// validated: the policies first (the kernel may refuse them), then the
    /// matchers, which name them. On any error both stay, untouched.
    pub fn install(
        &mut self,
        engine: &mut Engine,
        loaded: super::Loaded,
    ) -> Result<Response, crate::engine::ReloadError> {
        let super::Loaded {
            policies,
            agents,
            matchers,
            restart_needed,
        } = loaded;
        let version = engine.policies().version().saturating_add(1);
        let policies = policies.with_version(version);
        let names: Vec<String> = policies.names().map(str::to_owned).collect();
        engine.set_policies(policies)?;
        let agent_names: Vec<String> = matchers.names().map(str::to_owned).collect();
        engine.attribution_mut().set_matchers(matchers);
        self.reloaded_agents = Some(agents);
        tracing::info!(version, policies = ?names, agents = ?agent_names, "policies and agent matchers reloaded");
        if !restart_needed.is_empty() {
            tracing::warn!(sections = ?restart_needed, "changed in the config, not applied until the daemon restarts");
        }
        self.notifier
            .status(&format!("policies reloaded: version {version}"));
        Ok(Response::Reloaded {
            version,
            policies: names,
            agents: agent_names,
            restart_needed,
        })
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
                Some(refusal) => {
                    let _ = reply.send(Response::Error {
                        message: refusal.to_string(),
                    });
                }
                None => {
                    tracing::info!(
                        pid = peer.pid,
                        "a new daemon takes over: saving everything and exiting, the programs stay attached"
                    );
                    self.handover = Some(reply);
                }
            },
            Command::Reload {
                loaded,
                rules,
                reply,
            } => {
                let installed =
                    loaded.and_then(|l| self.install(engine, *l).map_err(super::ReloadError::from));
                if installed.is_ok()
                    && let (Some(set), Some(live)) = (rules, &self.rules)
                {
                    tracing::info!(rules = set.len(), "detection rules reloaded");
                    live.replace(*set);
                }
                let response = match installed {
                    Ok(response) => {
                        state.count_reload(None);
                        response
                    }
                    Err(message) => {
                        state.count_reload(Some(&message.to_string()));
                        tracing::error!(%message, "policy reload refused; {}", super::REFUSED_STAYS);
                        Response::Error {
                            message: format!("reload refused; {}: {message}", super::REFUSED_STAYS),
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
            Request::Process { pid } => match engine.attribution().process(pid) {
                // Another user's process: /proc shows the caller no more than
                // that it exists; its run, exe and key are not for them.
                Ok(answer) if peer.uid != 0 && answer.uid != peer.uid => Response::Error {
                    message: format!("process {pid} is another user's: only root may ask about it"),
                },
                Ok(mut answer) => {
                    // A run of another user (a matcher run root started): its
                    // labels, claim and scopes are theirs.
                    if let Some(run) = answer.run.as_mut()
                        && peer.uid != 0
                        && run.uid != peer.uid
                    {
                        run.labels.clear();
                        run.principal_claimed = None;
                        run.scopes.clear();
                    }
                    Response::Process(Box::new(answer))
                }
                Err(e) => error(&e),
            },
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
        // Bounded: a chain of runs is as deep as the run table allows, and
        // a token need not name more delegators than that.
        while let Some(id) = next
            && parents.len() < crate::tokens::MAX_ACT_DEPTH
        {
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
    fn launch_bounds(&mut self, engine: &Engine, peer: &Peer) -> Option<Refusal> {
        let limits = &self.limits;
        let active = engine.attribution().active_runs_of_uid(peer.uid);
        if active >= limits.runs_per_uid {
            return Some(Refusal::RunsOfUid {
                uid: peer.uid,
                active,
                max: limits.runs_per_uid,
            });
        }
        if !self.launch_rate.allow(peer.uid, std::time::Instant::now()) {
            return Some(Refusal::LaunchRate {
                uid: peer.uid,
                per_second: limits.launches_per_second,
            });
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
            return refuse(why.to_string());
        }
        if let Some(name) = &req.policy
            && !engine.policies().contains(name)
        {
            return refuse(Refusal::UnknownPolicy(name.clone()).to_string());
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
            return refuse(
                Refusal::Wider {
                    policy: name.clone(),
                    parent: parent_name,
                    extra,
                }
                .to_string(),
            );
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
fn handover_refusal(engine: &Engine, peer: &Peer) -> Option<Refusal> {
    if peer.uid != 0 {
        return Some(Refusal::HandoverNotRoot);
    }
    match engine.attribution().attest(peer.pid, None) {
        Ok(answer) => Some(Refusal::HandoverFromRun(answer.run.id)),
        Err(_) if !peer.alive() => Some(Refusal::CallerGone),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        attribution::{Attribution, RunTable},
        identity::{Clock, Host, ProcessKeys},
        policy::{Mode, Policies, kernel::Enforcement, tables::fake::FakeMaps, testing::policy},
    };

    const BOOT_ID: &str = "0b5f0e3c-1d2e-4f5a-9b8c-7d6e5f4a3b2c";

    /// An engine whose policies are bound in tables in memory (the test
    /// process is the peer that launches).
    fn engine(policies: Vec<crate::policy::Policy>) -> (FakeMaps, Engine) {
        let keys = ProcessKeys::new(BOOT_ID, crate::identity::clock_ticks_per_second());
        let attribution = Attribution::new(
            keys.clone(),
            Box::new(std::collections::HashMap::new()),
            RunTable::new(),
            None,
        );
        let maps = FakeMaps::new();
        let engine = Engine::new(
            Host {
                name: "h1".into(),
                boot_id: BOOT_ID.into(),
            },
            keys,
            Clock::with_offset(1_700_000_000_000_000_000),
            attribution,
        )
        .with_policies(Policies::of(policies))
        .with_enforcement(Enforcement::open_tables(maps.tables()).unwrap())
        .unwrap();
        (maps, engine)
    }

    fn ask(
        handler: &mut Handler,
        engine: &mut Engine,
        peer: Peer,
        request: Request,
    ) -> (Response, Vec<Event>) {
        let (reply, mut answer) = oneshot::channel();
        let mut out = Vec::new();
        handler.handle(
            engine,
            &DaemonState::default(),
            Command::Request {
                peer,
                request,
                reply,
            },
            &mut out,
        );
        (answer.try_recv().unwrap(), out)
    }

    fn launch(policy: Option<&str>, run_id: Option<&str>) -> Request {
        Request::Launch(LaunchRequest {
            agent: "bot".into(),
            policy: policy.map(str::to_owned),
            run_id: run_id.map(str::to_owned),
            ..LaunchRequest::default()
        })
    }

    fn error(response: Response) -> String {
        match response {
            Response::Error { message } => message,
            other => panic!("not refused: {other:?}"),
        }
    }

    fn me(uid: u32) -> Peer {
        Peer::local(std::process::id(), uid, uid)
    }

    #[test]
    fn a_launch_binds_its_run_before_it_is_answered() {
        let (maps, mut engine) = engine(vec![policy("a", Mode::Enforce, &["/usr/bin/true"], &[])]);
        let mut handler = Handler::new(LimitsConfig::default());
        let (response, out) = ask(&mut handler, &mut engine, me(0), launch(Some("a"), None));
        let Response::Launched { run } = response else {
            panic!("refused: {response:?}");
        };
        assert_eq!(out.len(), 1, "its run.start");
        let binding = maps.run_policy.snapshot()[&run.handle];
        assert_eq!(
            maps.slots.snapshot()[&binding.slot].mode,
            sensor_common::policy::MODE_ENFORCE
        );
        assert_eq!(engine.attribution().active_runs(), 1);
    }

    #[test]
    fn a_full_run_policy_map_refuses_the_launch_rather_than_run_it_unenforced() {
        let (maps, mut engine) = engine(vec![policy("a", Mode::Enforce, &["/usr/bin/true"], &[])]);
        maps.run_policy.set_capacity(0);
        let mut handler = Handler::new(LimitsConfig::default());
        let (response, out) = ask(&mut handler, &mut engine, me(0), launch(Some("a"), None));
        assert_eq!(
            error(response),
            "the kernel's run→policy map is full ([limits] policy_runs): policy \"a\" could not \
             be bound, so the run is refused rather than started unenforced"
        );
        assert!(out.is_empty());
        // No run, and the launcher is in none.
        assert_eq!(engine.attribution().active_runs(), 0);
        assert!(
            engine
                .attribution()
                .attest(std::process::id(), None)
                .is_err()
        );
        assert!(maps.run_policy.snapshot().is_empty());
    }

    #[test]
    fn launches_are_refused_past_the_bounds_and_for_unknown_or_reused_names() {
        let (_maps, mut engine) = engine(vec![policy("a", Mode::Audit, &["/usr/bin/true"], &[])]);
        let mut handler = Handler::new(LimitsConfig {
            runs_per_uid: 1,
            ..LimitsConfig::default()
        });
        assert_eq!(
            error(ask(&mut handler, &mut engine, me(0), launch(Some("nope"), None)).0),
            "unknown policy \"nope\" (the daemon's config defines none by that name)"
        );
        let (first, _) = ask(&mut handler, &mut engine, me(0), launch(None, Some("r-1")));
        assert!(matches!(first, Response::Launched { .. }), "{first:?}");
        assert_eq!(
            error(ask(&mut handler, &mut engine, me(0), launch(None, None)).0),
            "uid 0 already has 1 active runs (at most 1: [limits] runs_per_uid)"
        );
        // Another user: its own bound; the run id is taken for good.
        let other = me(1000);
        assert_eq!(
            error(ask(&mut handler, &mut engine, other, launch(None, Some("r-1"))).0),
            crate::attribution::RunError::Exists("r-1".into()).to_string()
        );
    }

    #[test]
    fn launches_from_one_user_are_rate_limited() {
        let (_maps, mut engine) = engine(Vec::new());
        let mut handler = Handler::new(LimitsConfig {
            launches_per_second: 1,
            ..LimitsConfig::default()
        });
        // A burst of two seconds' worth, then refused (each launch from the
        // same process nests: the bucket is what stops it, not the table).
        let answers: Vec<Response> = (0..3)
            .map(|_| ask(&mut handler, &mut engine, me(0), launch(None, None)).0)
            .collect();
        assert!(
            matches!(answers[0], Response::Launched { .. }),
            "{answers:?}"
        );
        assert!(
            matches!(answers[1], Response::Launched { .. }),
            "{answers:?}"
        );
        assert_eq!(
            error(answers[2].clone()),
            "too many launches from uid 0 (more than 1 per second: [limits] launches_per_second)"
        );
    }

    #[test]
    fn a_take_over_is_refused_to_a_process_in_a_run_and_to_non_root() {
        let (_maps, mut engine) = engine(Vec::new());
        let mut handler = Handler::new(LimitsConfig::default());
        assert_eq!(
            error(ask(&mut handler, &mut engine, me(1000), Request::Handover).0),
            "only root may take over the sensor"
        );
        assert!(!handler.handover_requested());
        let (launched, _) = ask(&mut handler, &mut engine, me(0), launch(None, None));
        let Response::Launched { run } = launched else {
            panic!("{launched:?}");
        };
        // The launcher is in the run now: root or not, it may not make the
        // daemon go away.
        assert_eq!(
            error(ask(&mut handler, &mut engine, me(0), Request::Handover).0),
            format!(
                "a process in agent run {} cannot take over the sensor",
                run.id
            )
        );
        assert!(!handler.handover_requested());
    }

    #[test]
    fn a_take_over_by_root_outside_any_run_is_answered_once_everything_is_saved() {
        let (_maps, mut engine) = engine(Vec::new());
        let mut handler = Handler::new(LimitsConfig::default());
        let (reply, mut answer) = oneshot::channel();
        handler.handle(
            &mut engine,
            &DaemonState::default(),
            Command::Request {
                peer: me(0),
                request: Request::Handover,
                reply,
            },
            &mut Vec::new(),
        );
        assert!(handler.handover_requested());
        assert!(answer.try_recv().is_err(), "not answered yet");
        assert!(handler.take_handover().is_some());
    }

    fn reload(
        handler: &mut Handler,
        engine: &mut Engine,
        loaded: Result<Box<Policies>, super::super::ReloadError>,
    ) -> Response {
        let loaded = loaded.map(|p| Box::new(super::super::Loaded::policies(*p)));
        let (reply, mut answer) = oneshot::channel();
        handler.handle(
            engine,
            &DaemonState::default(),
            Command::Reload {
                loaded,
                rules: None,
                reply,
            },
            &mut Vec::new(),
        );
        answer.try_recv().unwrap()
    }

    #[test]
    fn a_reload_switches_the_policies_or_leaves_them_all_in_force() {
        let a = || policy("a", Mode::Audit, &["/usr/bin/true"], &[]);
        let (maps, mut engine) = engine(vec![a()]);
        let mut handler = Handler::new(LimitsConfig::default());
        let id_before = maps.slots.snapshot()[&0].id;
        let (launched, _) = ask(&mut handler, &mut engine, me(0), launch(Some("a"), None));
        let Response::Launched { run } = launched else {
            panic!("{launched:?}");
        };

        // Dropping the policy a live run is bound to is refused; nothing changes.
        let b = policy("b", Mode::Audit, &["/usr/bin/env"], &[]);
        let response = reload(
            &mut handler,
            &mut engine,
            Ok(Box::new(Policies::of(vec![b.clone()]))),
        );
        assert_eq!(
            error(response),
            format!(
                "reload refused; the policies, agent matchers and detection rules in force \
                 stay: policy \"a\" is gone from the config, but run {} is bound to it; keep it until the run ends",
                run.id
            )
        );
        assert_eq!(maps.slots.snapshot()[&0].id, id_before);
        assert!(!engine.policies().contains("b"));

        // Keeping it: a new version, each policy under a fresh id.
        let response = reload(
            &mut handler,
            &mut engine,
            Ok(Box::new(Policies::of(vec![a(), b]))),
        );
        assert_eq!(
            response,
            Response::Reloaded {
                version: 2,
                policies: vec!["a".into(), "b".into()],
                agents: Vec::new(),
                restart_needed: Vec::new(),
            }
        );
        let slots = maps.slots.snapshot();
        assert_ne!(slots[&0].id, id_before);
        assert_ne!(slots[&1].mode, sensor_common::policy::MODE_NONE);
        // The run stays bound to its policy's slot.
        assert_eq!(maps.run_policy.snapshot()[&run.handle].slot, 0);

        // A kernel that cannot take them: refused, the running ones stay.
        maps.exec_rules.set_capacity(0);
        let response = reload(
            &mut handler,
            &mut engine,
            Ok(Box::new(Policies::of(vec![a()]))),
        );
        let message = error(response);
        assert!(
            message.starts_with(
                "reload refused; the policies, agent matchers and detection rules in force \
                 stay: the kernel maps could not take the new policies: kernel policy map \
                 SNSR_EXEC_RULES"
            ),
            "{message}"
        );
        assert_eq!(maps.slots.snapshot(), slots);
        assert_eq!(engine.policies().version(), 2);
    }

    #[test]
    fn a_reload_installs_the_agent_matchers_with_the_policies_or_neither() {
        let a = || policy("a", Mode::Audit, &["/usr/bin/true"], &[]);
        let (_maps, mut engine) = engine(vec![a()]);
        let mut handler = Handler::new(LimitsConfig::default());
        let state = DaemonState::default();
        let agent = crate::attribution::AgentConfig {
            name: "bot".into(),
            exe: vec!["/usr/bin/curl".into()],
            policy: Some("a".into()),
            ..crate::attribution::AgentConfig::default()
        };
        let loaded = |policies: Vec<crate::policy::Policy>| {
            Box::new(super::super::Loaded {
                policies: Policies::of(policies),
                agents: vec![agent.clone()],
                matchers: crate::attribution::Matchers::new(std::slice::from_ref(&agent)).unwrap(),
                restart_needed: vec!["[limits]".into()],
            })
        };
        let send = |handler: &mut Handler, engine: &mut Engine, l| {
            let (reply, mut answer) = oneshot::channel();
            handler.handle(
                engine,
                &state,
                Command::Reload {
                    loaded: Ok(l),
                    rules: None,
                    reply,
                },
                &mut Vec::new(),
            );
            answer.try_recv().unwrap()
        };
        // Refused (a live run's policy is gone from it): neither the
        // policies nor the matchers change.
        let (launched, _) = ask(&mut handler, &mut engine, me(0), launch(Some("a"), None));
        assert!(
            matches!(launched, Response::Launched { .. }),
            "{launched:?}"
        );
        let b = policy("b", Mode::Audit, &["/usr/bin/env"], &[]);
        let refused = send(&mut handler, &mut engine, loaded(vec![b]));
        assert!(matches!(refused, Response::Error { .. }), "{refused:?}");
        assert!(engine.attribution().matchers().is_empty());
        assert!(handler.take_reloaded_agents().is_none());
        // Applied: the matchers are in force, the answer names them and the
        // sections that need a restart.
        let applied = send(&mut handler, &mut engine, loaded(vec![a()]));
        assert_eq!(
            applied,
            Response::Reloaded {
                version: 2,
                policies: vec!["a".into()],
                agents: vec!["bot".into()],
                restart_needed: vec!["[limits]".into()],
            }
        );
        assert_eq!(
            engine.attribution().matchers().names().collect::<Vec<_>>(),
            ["bot"]
        );
        assert_eq!(
            handler.take_reloaded_agents().map(|a| a.len()),
            Some(1),
            "the pipeline's transcripts learn of them"
        );
        let report = state.report();
        assert_eq!((report.reloads.ok, report.reloads.refused), (1, 1));
        assert_eq!(report.reloads.last.map(|l| l.ok), Some(true));
    }
}

//! Tamper-evident run records (docs/provenance.md).
//!
//! Every event of a run is chained ([`chain`]): its JSON line carries
//! `provenance: {prev, chain}`, computed where the line is made (once per
//! event, by the first output or the store that needs the batch's lines,
//! batches in the order the pipeline made them; never on the kernel
//! reader's path). `run.checkpoint` events sign a run's chain head with the
//! sensor's Ed25519 key (the run tokens' key, so one JWKS verifies both).
//! [`verify`] recomputes chains and checks signatures from the store or
//! from an exported bundle ([`dsse`]).

pub mod chain;
pub mod dsse;
pub mod verify;

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64URL};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};

use self::chain::Hash;
use crate::event::{Checkpoint, Event, Kind, json::write_json_line};

/// `[provenance]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProvenanceConfig {
    /// Chain run events and sign checkpoints (default on).
    pub enabled: bool,
    /// A checkpoint after this many events of a run since its last one.
    pub checkpoint_events: u64,
    /// A checkpoint of a run with new events this many seconds after its last one.
    pub checkpoint_secs: u64,
}

impl Default for ProvenanceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            checkpoint_events: 10_000,
            checkpoint_secs: 60,
        }
    }
}

/// The public keys that ever signed a checkpoint, in the state dir (kept,
/// unlike the token JWKS, which forgets a key once its tokens expired).
pub use crate::paths::PROVENANCE_KEYS_FILE as KEYS_FILE;

/// The bytes a checkpoint's signature covers.
#[must_use]
pub fn checkpoint_message(run_id: &str, events: u64, head: &str) -> Vec<u8> {
    format!("sensor.run.checkpoint/v1\n{run_id}\n{events}\n{head}\n").into_bytes()
}

/// One run's place in its chain.
#[derive(Debug, Clone, Copy)]
struct RunChain {
    head: Hash,
    count: u64,
    /// When its `run.end` was chained; forgotten a while after.
    ended: Option<Instant>,
}

/// How long a run's chain is remembered after its end (late events of it,
/// a process's exit, still chain on).
const FORGET_AFTER: Duration = Duration::from_secs(600);

/// The chains of the runs and the key that signs their checkpoints; shared
/// by the threads that encode batches.
#[derive(Default)]
pub struct Chainer {
    runs: Mutex<Chains>,
    key: Mutex<Option<SigningKey>>,
}

#[derive(Default)]
struct Chains {
    runs: HashMap<String, RunChain>,
    swept: Option<Instant>,
}

struct SigningKey {
    kid: String,
    pair: Ed25519KeyPair,
}

impl std::fmt::Debug for Chainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chainer").finish_non_exhaustive()
    }
}

/// A public key as [`KEYS_FILE`] keeps it (an OKP JWK).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicKey {
    pub kid: String,
    pub kty: String,
    pub crv: String,
    pub x: String,
}

impl PublicKey {
    /// The raw 32-byte key.
    #[must_use]
    pub fn raw(&self) -> Option<Vec<u8>> {
        (self.kty == "OKP" && self.crv == "Ed25519")
            .then(|| B64URL.decode(&self.x).ok())
            .flatten()
    }
}

/// Reads the public keys of [`KEYS_FILE`] (none when it is absent).
pub fn read_keys(state_dir: &Path) -> std::io::Result<Vec<PublicKey>> {
    match std::fs::read(state_dir.join(KEYS_FILE)) {
        Ok(bytes) => serde_json::from_slice::<Jwks>(&bytes)
            .map(|j| j.keys)
            .map_err(std::io::Error::other),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The public keys that check a store's records: the [`KEYS_FILE`] beside
/// the store (the default store is in the state dir), else the state dir's
/// (a `[store] path` elsewhere); with the file they came from.
pub fn read_store_keys(db: &Path, state_dir: &Path) -> std::io::Result<(PathBuf, Vec<PublicKey>)> {
    let beside = db.parent().unwrap_or_else(|| Path::new("."));
    let dir = if beside.join(KEYS_FILE).exists() {
        beside
    } else {
        state_dir
    };
    Ok((dir.join(KEYS_FILE), read_keys(dir)?))
}

/// A JWKS of public keys.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Jwks {
    pub keys: Vec<PublicKey>,
}

impl Chainer {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Continues the chains a previous daemon left: run id, head, events.
    pub fn resume(&self, heads: impl IntoIterator<Item = (String, Hash, u64)>) {
        let mut chains = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for (id, head, count) in heads {
            chains.runs.insert(
                id,
                RunChain {
                    head,
                    count,
                    ended: None,
                },
            );
        }
    }

    /// Signs checkpoints with `pkcs8` (an Ed25519 key pair, PKCS#8 DER) from
    /// now on, and adds its public key to `state_dir`'s [`KEYS_FILE`].
    pub fn set_key(
        &self,
        kid: &str,
        pkcs8: &[u8],
        state_dir: Option<&Path>,
    ) -> Result<(), SetKeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8).map_err(SetKeyError::Key)?;
        let public = PublicKey {
            kid: kid.to_owned(),
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: B64URL.encode(pair.public_key().as_ref()),
        };
        if let Some(dir) = state_dir {
            remember_key(dir, public).map_err(SetKeyError::Remember)?;
        }
        *self
            .key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(SigningKey {
            kid: kid.to_owned(),
            pair,
        });
        Ok(())
    }

    /// Writes `events`' JSON lines into `out`, chaining the run events;
    /// calls `line` with each event's index, range and chain value (`None`:
    /// not of a run, or not encodable: then its range is `None` too).
    pub fn write_lines(
        &self,
        events: &[Event],
        out: &mut Vec<u8>,
        mut line: impl FnMut(Option<std::ops::Range<usize>>, Option<Hash>),
    ) {
        let mut chains = self
            .runs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = Instant::now();
        for event in events {
            let begin = out.len();
            let Some(run) = &event.run else {
                match write_json_line(event, out) {
                    Ok(()) => line(Some(begin..out.len()), None),
                    Err(_) => {
                        out.truncate(begin);
                        line(None, None);
                    }
                }
                continue;
            };
            if !chains.runs.contains_key(&run.id) {
                chains.runs.insert(
                    run.id.clone(),
                    RunChain {
                        head: chain::GENESIS,
                        count: 0,
                        ended: None,
                    },
                );
            }
            let Some(state) = chains.runs.get_mut(&run.id) else {
                line(None, None);
                continue;
            };
            let written = if event.kind == Kind::RunCheckpoint {
                let mut signed = event.clone();
                signed.checkpoint = Some(Box::new(self.sign(
                    &run.id,
                    state,
                    event.checkpoint.as_ref().and_then(|c| c.recovered),
                    event.checkpoint.as_ref().map_or("end", |c| c.reason),
                )));
                serde_json::to_writer(&mut *out, &signed)
            } else {
                serde_json::to_writer(&mut *out, event)
            };
            if written.is_err() {
                tracing::debug!(seq = event.seq, "cannot encode an event as JSON; skipped");
                out.truncate(begin);
                line(None, None);
                continue;
            }
            let head = chain::seal_at(out, begin, &state.head);
            out.push(b'\n');
            state.head = head;
            state.count += 1;
            if event.kind == Kind::RunEnd {
                state.ended = Some(now);
            }
            line(Some(begin..out.len()), Some(head));
        }
        if chains
            .swept
            .is_none_or(|t| now.duration_since(t) > Duration::from_secs(60))
        {
            chains.swept = Some(now);
            chains
                .runs
                .retain(|_, r| r.ended.is_none_or(|t| now.duration_since(t) < FORGET_AFTER));
        }
    }

    fn sign(
        &self,
        run_id: &str,
        state: &RunChain,
        recovered: Option<bool>,
        reason: &'static str,
    ) -> Checkpoint {
        let head = hex::encode(state.head);
        let key = self
            .key
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (kid, signature) = match key.as_ref() {
            Some(k) => (
                k.kid.clone(),
                B64URL.encode(
                    k.pair
                        .sign(&checkpoint_message(run_id, state.count, &head))
                        .as_ref(),
                ),
            ),
            // No key (it could not be read): the checkpoint says so, and
            // verify reports it unsigned.
            None => (String::new(), String::new()),
        };
        Checkpoint {
            run_id: run_id.to_owned(),
            events: state.count,
            head,
            signature,
            kid,
            reason,
            recovered,
        }
    }
}

/// Adds `key` to the state dir's [`KEYS_FILE`] unless it is there.
fn remember_key(state_dir: &Path, key: PublicKey) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut keys = read_keys(state_dir)?;
    if keys.contains(&key) {
        return Ok(());
    }
    keys.push(key);
    let path: PathBuf = state_dir.join(KEYS_FILE);
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&serde_json::to_vec_pretty(&Jwks { keys }).map_err(std::io::Error::other)?)?;
    f.sync_all()?;
    std::fs::rename(&tmp, &path)
}

/// Why [`Chainer::set_key`] cannot sign with a key.
#[derive(Debug, thiserror::Error)]
pub enum SetKeyError {
    #[error("{0}")]
    Key(ring::error::KeyRejected),
    /// Its public key cannot be written to the state dir's [`KEYS_FILE`].
    #[error("{0}")]
    Remember(std::io::Error),
}

/// Why a checkpoint's signature does not verify.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("no public key {0:?}")]
    NoKey(String),
    #[error("key {0} is not Ed25519")]
    NotEd25519(String),
    #[error("the signature is not base64url")]
    NotBase64,
    #[error("bad signature (key {0})")]
    Bad(String),
}

/// Checks a checkpoint's signature with `keys`.
pub fn check_signature(c: &CheckpointFields, keys: &[PublicKey]) -> Result<(), SignatureError> {
    let key = keys
        .iter()
        .find(|k| k.kid == c.kid)
        .ok_or_else(|| SignatureError::NoKey(c.kid.clone()))?;
    let raw = key
        .raw()
        .ok_or_else(|| SignatureError::NotEd25519(c.kid.clone()))?;
    let sig = B64URL
        .decode(&c.signature)
        .map_err(|_| SignatureError::NotBase64)?;
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, raw)
        .verify(&checkpoint_message(&c.run_id, c.events, &c.head), &sig)
        .map_err(|_| SignatureError::Bad(c.kid.clone()))
}

/// A checkpoint as read back.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CheckpointFields {
    pub run_id: String,
    pub events: u64,
    pub head: String,
    pub signature: String,
    pub kid: String,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub recovered: Option<bool>,
}

/// When the pipeline emits `run.checkpoint` events: after a run's end, after
/// every `checkpoint_events` events of a run, and `checkpoint_secs` after a
/// run's last checkpoint when it has had events since. Runs on the event
/// loop; one map look-up per run event.
pub struct Planner {
    config: ProvenanceConfig,
    chainer: std::sync::Arc<Chainer>,
    runs: HashMap<String, Pending>,
    /// End checkpoints held back while the daemon reads what was recorded
    /// while none ran (those records of the run come after its end).
    deferred: Vec<Due>,
}

struct Pending {
    since: u64,
    last: Instant,
    run: crate::event::RunRef,
}

/// A checkpoint to emit: the run, why, and whether its end was recovered.
pub type Due = (crate::event::RunRef, &'static str, Option<bool>);

impl Planner {
    #[must_use]
    pub fn new(config: ProvenanceConfig, chainer: std::sync::Arc<Chainer>) -> Self {
        Self {
            config,
            chainer,
            runs: HashMap::new(),
            deferred: Vec::new(),
        }
    }

    /// The end checkpoints held back during recovery, now due.
    pub fn take_deferred(&mut self) -> Vec<Due> {
        std::mem::take(&mut self.deferred)
    }

    /// The chainer the batches use.
    #[must_use]
    pub fn chainer(&self) -> &std::sync::Arc<Chainer> {
        &self.chainer
    }

    /// Notes an event; a checkpoint due right after it. `recovering`: the
    /// daemon is reading what was recorded while none ran.
    pub fn after(&mut self, event: &Event, recovering: bool) -> Option<Due> {
        let run = event.run.as_ref()?;
        if event.kind == Kind::RunCheckpoint {
            return None;
        }
        let now = Instant::now();
        if event.kind == Kind::RunEnd {
            self.runs.remove(&run.id);
            if recovering {
                self.deferred.push((bare(run), "end", Some(true)));
                return None;
            }
            let recovered =
                (event.delivery == Some(crate::event::DELIVERY_RECOVERED)).then_some(true);
            return Some((bare(run), "end", recovered));
        }
        let pending = match self.runs.get_mut(&run.id) {
            Some(p) => p,
            None => self.runs.entry(run.id.clone()).or_insert(Pending {
                since: 0,
                last: now,
                run: bare(run),
            }),
        };
        pending.since += 1;
        if pending.since >= self.config.checkpoint_events.max(1) {
            pending.since = 0;
            pending.last = now;
            return Some((pending.run.clone(), "events", None));
        }
        None
    }

    /// Runs with events since a checkpoint `checkpoint_secs` ago (the tick).
    pub fn due(&mut self, now: Instant) -> Vec<Due> {
        let every = Duration::from_secs(self.config.checkpoint_secs.max(1));
        let mut due = Vec::new();
        for p in self.runs.values_mut() {
            if p.since > 0 && now.duration_since(p.last) >= every {
                p.since = 0;
                p.last = now;
                due.push((p.run.clone(), "time", None));
            }
        }
        // Runs quiet for long are forgotten (their next event starts anew).
        self.runs
            .retain(|_, p| p.since > 0 || now.duration_since(p.last) < every * 10);
        due
    }
}

/// A run reference without the run's details (what a checkpoint carries).
fn bare(run: &crate::event::RunRef) -> crate::event::RunRef {
    let mut r = run.clone();
    r.details = None;
    r
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key() -> (String, Vec<u8>) {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        ("kid-1".into(), der.as_ref().to_vec())
    }

    /// Lines are made in the order the batches were: asking the later batch
    /// first makes the earlier one's first; events outside runs are not chained.
    #[test]
    fn batches_chain_in_the_order_they_were_made() {
        use crate::{event::Kind, sinks::EventBatch, sinks::tests::event};
        let chainer = std::sync::Arc::new(Chainer::new());
        let a = EventBatch::chained(
            vec![
                event(1, Kind::ProcessExec, true),
                event(2, Kind::SensorLost, false),
            ],
            &chainer,
            None,
        );
        let b = EventBatch::chained(vec![event(3, Kind::ProcessExit, true)], &chainer, Some(&a));
        let line_b = b.json().line(0).unwrap().to_vec();
        let line_a = a.json().line(0).unwrap().to_vec();
        let (sa, sb) = (chain::open(&line_a).unwrap(), chain::open(&line_b).unwrap());
        assert_eq!(sa.prev, chain::GENESIS);
        assert_eq!(sb.prev, sa.chain);
        assert_eq!(a.json().chain(0), Some(sa.chain));
        assert_eq!(b.json().chain(0), Some(sb.chain));
        // Outside runs: the line as ever, no chain.
        let outside = a.json().line(1).unwrap();
        assert!(chain::open(outside).is_none());
        assert!(!String::from_utf8_lossy(outside).contains("provenance"));
        assert_eq!(a.json().chain(1), None);
        // The canonical bytes are the event serialized without the member.
        let mut plain = Vec::new();
        write_json_line(&event(1, Kind::ProcessExec, true), &mut plain).unwrap();
        assert_eq!(sa.canonical, plain.strip_suffix(b"\n").unwrap());
    }

    /// A checkpoint after every N events of a run and after its end; an end
    /// seen while recovering is held back until recovery is done.
    #[test]
    fn the_planner_says_when_checkpoints_are_due() {
        use crate::{event::Kind, sinks::tests::event};
        let config = ProvenanceConfig {
            checkpoint_events: 3,
            ..ProvenanceConfig::default()
        };
        let mut p = Planner::new(config, std::sync::Arc::new(Chainer::new()));
        let exec = event(1, Kind::ProcessExec, true);
        assert!(p.after(&exec, false).is_none());
        assert!(p.after(&exec, false).is_none());
        let (run, reason, _) = p.after(&exec, false).unwrap();
        assert_eq!((run.id.as_str(), reason), ("r", "events"));
        // Outside runs and checkpoints themselves: nothing.
        assert!(p.after(&event(2, Kind::SensorLost, false), false).is_none());
        assert!(
            p.after(&event(3, Kind::RunCheckpoint, true), false)
                .is_none()
        );
        let end = event(4, Kind::RunEnd, true);
        assert_eq!(
            p.after(&end, false).map(|d| (d.1, d.2)),
            Some(("end", None))
        );
        assert!(p.after(&end, true).is_none());
        let deferred = p.take_deferred();
        assert_eq!(deferred.len(), 1);
        assert_eq!((deferred[0].1, deferred[0].2), ("end", Some(true)));
        assert!(p.take_deferred().is_empty());
        // By time: a run with events since its last checkpoint.
        assert!(p.after(&exec, false).is_none());
        let later = Instant::now() + Duration::from_secs(61);
        assert_eq!(p.due(later).len(), 1);
        assert!(p.due(later).is_empty());
    }

    #[test]
    fn checkpoints_sign_the_head_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let chainer = Chainer::new();
        let (kid, der) = key();
        chainer.set_key(&kid, &der, Some(dir.path())).unwrap();
        let keys = read_keys(dir.path()).unwrap();
        assert_eq!(keys.len(), 1);
        let state = RunChain {
            head: chain::next(&chain::GENESIS, b"{}"),
            count: 1,
            ended: None,
        };
        let c = chainer.sign("r1", &state, None, "end");
        assert_eq!(c.head, hex::encode(state.head));
        let fields: CheckpointFields =
            serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();
        check_signature(&fields, &keys).unwrap();
        // Another head, count or run: the signature does not fit.
        for (run, events, head) in [
            ("r2", 1, c.head.clone()),
            ("r1", 2, c.head.clone()),
            ("r1", 1, hex::encode(chain::GENESIS)),
        ] {
            let forged = CheckpointFields {
                run_id: run.into(),
                events,
                head,
                ..fields.clone()
            };
            assert_eq!(
                check_signature(&forged, &keys),
                Err(SignatureError::Bad(kid.clone()))
            );
        }
        // An unknown key.
        assert_eq!(
            check_signature(&fields, &[]).unwrap_err().to_string(),
            format!("no public key {kid:?}")
        );
        let garbled = CheckpointFields {
            signature: "not base64!".into(),
            ..fields.clone()
        };
        assert_eq!(
            check_signature(&garbled, &keys),
            Err(SignatureError::NotBase64)
        );
        assert!(matches!(
            chainer.set_key(&kid, b"not a key", None),
            Err(SetKeyError::Key(_))
        ));
        // A store beside its keys, or elsewhere: the state dir's.
        let elsewhere = tempfile::tempdir().unwrap();
        for db in [dir.path().join("sensor.db"), elsewhere.path().join("s.db")] {
            let (file, found) = read_store_keys(&db, dir.path()).unwrap();
            assert_eq!((file, found), (dir.path().join(KEYS_FILE), keys.clone()));
        }
        // Remembered once.
        chainer.set_key(&kid, &der, Some(dir.path())).unwrap();
        assert_eq!(read_keys(dir.path()).unwrap().len(), 1);
    }
}

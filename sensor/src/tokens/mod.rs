//! Run tokens: short-lived JWTs (compact JWS, `EdDSA`) that name the run of
//! the process asking for one, for a credential broker that must not trust
//! what the agent says about itself.
//!
//! The control handler identifies the caller (peer credentials and pidfd,
//! as for `whoami`) and hands its run, with the run's ancestors, to
//! [`Issuer::issue`]. The claims are the run's facts as the daemon knows
//! them; the caller chooses only the audience, a shorter lifetime and a
//! subset of the scopes its run was granted. Keys live in the state dir
//! ([`keys`]); the public ones are served as a JWKS by the metrics
//! listener (`/.well-known/jwks.json`) and by `sensor token jwks`.
//!
//! Claims (docs/contract-v1.md, "Run tokens"):
//!
//! ```text
//! iss  sub  aud  iat  nbf  exp  jti         registered (RFC 7519)
//! scope                                     space-separated, ⊆ the run's scopes
//! act  {sub, act {sub, ...}}                the parent runs, nearest first (RFC 8693)
//! run_id root_run_id parent_run_id depth agent principal principal_claimed
//! policy policy_hash attribution
//! ```

pub mod keys;

use std::{
    collections::HashMap,
    path::Path,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::attribution::Run;

pub use self::keys::{KeyError, KeyRing};

/// Scopes a run may hold, and characters of one (the run's bounds).
pub use crate::attribution::runs::{MAX_SCOPE_CHARS, MAX_SCOPES};
/// Characters of an audience.
pub const MAX_AUDIENCE_CHARS: usize = 256;
/// Delegators a token names at most (`act`, nearest first).
pub const MAX_ACT_DEPTH: usize = 64;
/// The longest `[tokens] max_ttl`.
pub const MAX_TTL_LIMIT: Duration = Duration::from_secs(3600);

/// A duration in the config, written as humantime text (`"5m"`, `"24h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConfigDuration(pub Duration);

impl<'de> Deserialize<'de> for ConfigDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text)
            .map(Self)
            .map_err(|e| serde::de::Error::custom(format!("{text:?}: {e}")))
    }
}

/// `[tokens]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TokensConfig {
    /// Issue run tokens at all.
    pub enabled: bool,
    /// The `iss` claim: a stable `https://` or `spiffe://` id of this
    /// sensor [default: `spiffe://<trust_domain>/sensor`].
    pub issuer: Option<String>,
    /// The SPIFFE trust domain of `sub` [default: the host name].
    pub trust_domain: Option<String>,
    /// The longest lifetime a token may have (at most 1 h).
    pub max_ttl: ConfigDuration,
    /// How often the signing key is replaced.
    pub rotate: ConfigDuration,
    /// Tokens one run may be issued.
    pub max_per_run: u32,
    /// `jwks_uri` of the discovery document [default:
    /// `http://<[metrics] listen>/.well-known/jwks.json`].
    pub jwks_uri: Option<String>,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            issuer: None,
            trust_domain: None,
            max_ttl: ConfigDuration(Duration::from_secs(300)),
            rotate: ConfigDuration(Duration::from_secs(86_400)),
            max_per_run: 1000,
            jwks_uri: None,
        }
    }
}

impl TokensConfig {
    /// Refuses values that cannot work.
    pub fn validate(&self) -> Result<(), TokenConfigError> {
        let bad = |why: String| Err(TokenConfigError(why));
        if self.max_ttl.0 < Duration::from_secs(1) || self.max_ttl.0 > MAX_TTL_LIMIT {
            return bad("[tokens] max_ttl must be between 1s and 1h".to_owned());
        }
        if self.rotate.0 < Duration::from_secs(1) {
            return bad("[tokens] rotate must be at least 1s".to_owned());
        }
        if self.max_per_run == 0 {
            return bad("[tokens] max_per_run must be at least 1".to_owned());
        }
        if let Some(iss) = &self.issuer
            && !(iss.starts_with("https://") || iss.starts_with("spiffe://"))
        {
            return bad(format!(
                "[tokens] issuer {iss:?} must start with https:// or spiffe://"
            ));
        }
        if let Some(td) = &self.trust_domain
            && !valid_trust_domain(td)
        {
            return bad(format!(
                "[tokens] trust_domain {td:?}: use lowercase letters, digits, '.', '-' and '_'"
            ));
        }
        Ok(())
    }
}

/// A `[tokens]` value that cannot work.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct TokenConfigError(pub String);

fn valid_trust_domain(td: &str) -> bool {
    (1..=255).contains(&td.len())
        && td
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// What a caller asks for.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub aud: String,
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    #[serde(default)]
    pub scopes: Vec<String>,
}

/// Why no token was issued.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("run tokens are off ([tokens] enabled = false)")]
    Disabled,
    #[error("audience {0:?} is not valid: use 1-{MAX_AUDIENCE_CHARS} printable characters")]
    BadAudience(String),
    #[error(
        "ttl of {0} s is not valid: it must be at least 1 s and at most [tokens] max_ttl ({1} s)"
    )]
    BadTtl(u64, u64),
    #[error("scope {0:?} was not granted to run {1} (its scopes: {2})")]
    ScopeNotGranted(String, String, String),
    #[error("run {0} has expired")]
    Expired(String),
    #[error("run {0} has had its {1} tokens ([tokens] max_per_run)")]
    Budget(String, u32),
    #[error("signing: {0}")]
    Sign(String),
    #[error("the signing keys: {0}")]
    Keys(String),
}

/// The delegation chain (RFC 8693 `act`): the parent run, then its parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub sub: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Box<Actor>>,
}

/// A token's claims.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub iat: u64,
    pub nbf: u64,
    pub exp: u64,
    pub jti: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub scope: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Actor>,
    pub run_id: String,
    pub root_run_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_run_id: Option<String>,
    pub depth: u32,
    pub agent: String,
    pub principal: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub principal_claimed: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hash: Option<String>,
    pub attribution: String,
}

/// A token and what it says.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub claims: Claims,
    pub kid: String,
}

/// The public side other threads serve (`/.well-known/*`).
#[derive(Debug, Default)]
pub struct Published {
    jwks: RwLock<Arc<str>>,
    discovery: RwLock<Arc<str>>,
}

impl Published {
    /// The JWKS document.
    #[must_use]
    pub fn jwks(&self) -> Arc<str> {
        self.jwks
            .read()
            .map_or_else(|p| Arc::clone(&p.into_inner()), |j| Arc::clone(&j))
    }

    /// The OpenID discovery document.
    #[must_use]
    pub fn discovery(&self) -> Arc<str> {
        self.discovery
            .read()
            .map_or_else(|p| Arc::clone(&p.into_inner()), |j| Arc::clone(&j))
    }

    fn set(&self, jwks: String, discovery: String) {
        if let Ok(mut j) = self.jwks.write() {
            *j = jwks.into();
        }
        if let Ok(mut d) = self.discovery.write() {
            *d = discovery.into();
        }
    }
}

/// Issues tokens; owned by the control handler.
pub struct Issuer {
    config: TokensConfig,
    issuer: String,
    trust_domain: String,
    jwks_uri: Option<String>,
    keys: KeyRing,
    issued: HashMap<u64, u32>,
    published: Arc<Published>,
    /// Signs run checkpoints with the active key too (`crate::provenance`).
    checkpoints: Option<(Arc<crate::provenance::Chainer>, std::path::PathBuf)>,
}

/// What a path segment of `sub` keeps as it is: RFC 3986's unreserved
/// characters.
const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// A path segment of `sub`, percent-encoded.
fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Issuer {
    /// Opens (or makes) the keys in `state_dir`.
    pub fn open(
        config: TokensConfig,
        state_dir: &Path,
        host: &str,
        metrics: Option<std::net::SocketAddr>,
        now: SystemTime,
    ) -> Result<Self, KeyError> {
        let trust_domain = config.trust_domain.clone().unwrap_or_else(|| {
            let td: String = host
                .to_ascii_lowercase()
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() || "._-".contains(c) {
                        c
                    } else {
                        '-'
                    }
                })
                .collect();
            if td.is_empty() {
                "localhost".to_owned()
            } else {
                td
            }
        });
        let issuer = config
            .issuer
            .clone()
            .unwrap_or_else(|| format!("spiffe://{trust_domain}/sensor"));
        let jwks_uri = config
            .jwks_uri
            .clone()
            .or_else(|| metrics.map(|a| format!("http://{a}/.well-known/jwks.json")));
        let keys = KeyRing::open(state_dir, config.rotate.0, config.max_ttl.0, now)?;
        let issuer = Self {
            config,
            issuer,
            trust_domain,
            jwks_uri,
            keys,
            issued: HashMap::new(),
            published: Arc::default(),
            checkpoints: None,
        };
        issuer.publish();
        Ok(issuer)
    }

    /// What the metrics listener serves.
    #[must_use]
    pub fn published(&self) -> Arc<Published> {
        Arc::clone(&self.published)
    }

    /// The issuer id (`iss`).
    #[must_use]
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// The public keys.
    #[must_use]
    pub fn jwks(&self) -> serde_json::Value {
        self.keys.jwks()
    }

    /// The OpenID Connect discovery document (issuer, jwks_uri, algorithms).
    #[must_use]
    pub fn discovery(&self) -> serde_json::Value {
        serde_json::json!({
            "issuer": self.issuer,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": ["EdDSA"],
            "token_endpoint_auth_signing_alg_values_supported": ["EdDSA"],
            "subject_types_supported": ["public"],
            "response_types_supported": ["id_token"],
            "claims_supported": [
                "iss", "sub", "aud", "iat", "nbf", "exp", "jti", "scope", "act", "run_id",
                "root_run_id", "parent_run_id", "depth", "agent", "principal",
                "principal_claimed", "policy", "policy_hash", "attribution"
            ],
        })
    }

    fn publish(&self) {
        self.published
            .set(self.jwks().to_string(), self.discovery().to_string());
    }

    /// Has `chainer` sign run checkpoints with the active key, now and
    /// after each rotation (its public key kept in `state_dir`).
    pub fn sign_checkpoints(
        &mut self,
        chainer: Arc<crate::provenance::Chainer>,
        state_dir: &Path,
    ) -> Result<(), KeyError> {
        self.checkpoints = Some((chainer, state_dir.to_owned()));
        self.hand_key()
    }

    fn hand_key(&mut self) -> Result<(), KeyError> {
        if let Some((chainer, dir)) = &self.checkpoints {
            let (kid, der) = self.keys.sign_with(0)?;
            chainer
                .set_key(&kid, &der, Some(dir))
                .map_err(|e| KeyError::Generate(e.to_string()))?;
        }
        Ok(())
    }

    /// Rotates the keys when due (the 1 s tick).
    pub fn tick(&mut self, now: SystemTime) {
        match self.keys.rotate(now) {
            Ok(true) => {
                self.publish();
                if let Err(e) = self.hand_key() {
                    tracing::error!(error = %e, "cannot sign run checkpoints with the new key");
                }
            }
            Ok(false) => {}
            Err(e) => tracing::error!(error = %e, "cannot rotate the token keys"),
        }
    }

    /// Forgets the count of an ended run.
    pub fn forget(&mut self, handle: u64) {
        self.issued.remove(&handle);
    }

    /// Keeps the counts of the runs `keep` says are still known.
    pub fn retain(&mut self, keep: impl Fn(u64) -> bool) {
        self.issued.retain(|h, _| keep(*h));
    }

    /// The `sub` of a run.
    #[must_use]
    pub fn subject(&self, run: &Run) -> String {
        format!(
            "spiffe://{}/agent/{}/run/{}",
            self.trust_domain,
            segment(&run.agent),
            segment(&run.id)
        )
    }

    /// A token for `run`, whose ancestors are `parents` (nearest first).
    /// `attribution` is how the caller was found in the run;
    /// `policy_hash` the content hash of the run's policy.
    pub fn issue(
        &mut self,
        run: &Run,
        parents: &[&Run],
        attribution: &str,
        policy_hash: Option<String>,
        req: &TokenRequest,
        now: SystemTime,
    ) -> Result<Issued, TokenError> {
        if !self.config.enabled {
            return Err(TokenError::Disabled);
        }
        if !(1..=MAX_AUDIENCE_CHARS).contains(&req.aud.chars().count())
            || req.aud.chars().any(char::is_control)
        {
            return Err(TokenError::BadAudience(req.aud.clone()));
        }
        let max = self.config.max_ttl.0.as_secs();
        let ttl = match req.ttl_secs {
            Some(t) if t == 0 || t > max => return Err(TokenError::BadTtl(t, max)),
            Some(t) => t,
            None => max,
        };
        for s in &req.scopes {
            if !run.scopes.contains(s) {
                return Err(TokenError::ScopeNotGranted(
                    s.clone(),
                    run.id.clone(),
                    if run.scopes.is_empty() {
                        "none".to_owned()
                    } else {
                        run.scopes.join(" ")
                    },
                ));
            }
        }
        let iat = unix(now);
        let mut exp = iat.saturating_add(ttl);
        // Never past the run's own expiry (nor any ancestor's).
        for r in std::iter::once(run).chain(parents.iter().copied()) {
            if let Some(e) = r.expires {
                let e = unix(e);
                if e <= iat {
                    return Err(TokenError::Expired(r.id.clone()));
                }
                exp = exp.min(e);
            }
        }
        let count = self.issued.get(&run.handle).copied().unwrap_or(0);
        if count >= self.config.max_per_run {
            return Err(TokenError::Budget(run.id.clone(), self.config.max_per_run));
        }
        if self
            .keys
            .rotate(now)
            .map_err(|e| TokenError::Keys(e.to_string()))?
        {
            self.publish();
        }
        // The act chain, nearest delegator outermost.
        let act = parents.iter().rev().fold(None, |inner, p| {
            Some(Actor {
                sub: self.subject(p),
                act: inner.map(Box::new),
            })
        });
        let mut scopes = req.scopes.clone();
        scopes.sort();
        scopes.dedup();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: self.subject(run),
            aud: req.aud.clone(),
            iat,
            nbf: iat,
            exp,
            jti: uuid::Uuid::now_v7().to_string(),
            scope: scopes.join(" "),
            act,
            run_id: run.id.clone(),
            root_run_id: run.root_id.clone(),
            parent_run_id: run.parent_id.clone(),
            depth: run.depth,
            agent: run.agent.clone(),
            principal: run.principal.clone(),
            principal_claimed: run.principal_claimed.clone(),
            policy: run.policy.clone(),
            policy_hash,
            attribution: attribution.to_owned(),
        };
        let (kid, der) = self
            .keys
            .sign_with(exp)
            .map_err(|e| TokenError::Keys(e.to_string()))?;
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        let token = jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_ed_der(&der),
        )
        .map_err(|e| TokenError::Sign(e.to_string()))?;
        self.issued.insert(run.handle, count.saturating_add(1));
        Ok(Issued { token, claims, kid })
    }
}

/// Why a token does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("not a JWT: {0}")]
    NotJwt(jsonwebtoken::errors::Error),
    #[error("algorithm {0:?} is not EdDSA")]
    Algorithm(jsonwebtoken::Algorithm),
    #[error("the token names no key (kid)")]
    NoKid,
    #[error("key {0} is not in the JWKS (rotated out, or another issuer)")]
    UnknownKey(String),
    #[error("the JWKS key has no x")]
    NoX,
    #[error("the JWKS key: {0}")]
    Key(jsonwebtoken::errors::Error),
    /// Signature, time, issuer or audience, in words.
    #[error("{0}")]
    Invalid(String),
}

/// Checks `token` against the JWKS `jwks`: signature, `nbf`/`exp` (no
/// leeway), issuer and, when given, the audience. The claims on success.
pub fn verify(
    token: &str,
    jwks: &serde_json::Value,
    issuer: &str,
    aud: Option<&str>,
) -> Result<Claims, VerifyError> {
    let header = jsonwebtoken::decode_header(token).map_err(VerifyError::NotJwt)?;
    if header.alg != jsonwebtoken::Algorithm::EdDSA {
        return Err(VerifyError::Algorithm(header.alg));
    }
    let kid = header.kid.ok_or(VerifyError::NoKid)?;
    let key = jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["kid"] == kid.as_str()))
        .ok_or_else(|| VerifyError::UnknownKey(kid.clone()))?;
    let x = key["x"].as_str().ok_or(VerifyError::NoX)?;
    let decoding = jsonwebtoken::DecodingKey::from_ed_components(x).map_err(VerifyError::Key)?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
    validation.leeway = 0;
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer]);
    validation.set_required_spec_claims(&["exp", "nbf", "iss", "sub", "aud"]);
    match aud {
        Some(a) => validation.set_audience(&[a]),
        None => validation.validate_aud = false,
    }
    jsonwebtoken::decode::<Claims>(token, &decoding, &validation)
        .map(|d| d.claims)
        .map_err(|e| VerifyError::Invalid(rejection(&e, issuer, aud)))
}

/// Why a token was rejected, in words (jsonwebtoken's own say
/// `InvalidAudience`).
fn rejection(e: &jsonwebtoken::errors::Error, issuer: &str, aud: Option<&str>) -> String {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::InvalidSignature => {
            "the signature does not match the token (it was altered, or another key signed it)"
                .into()
        }
        K::ExpiredSignature => "it has expired (exp)".into(),
        K::ImmatureSignature => "it is not valid yet (nbf)".into(),
        K::InvalidAudience => format!("it is not for audience {:?} (aud)", aud.unwrap_or_default()),
        K::InvalidIssuer => format!("it was not issued by {issuer:?} (iss)"),
        K::MissingRequiredClaim(c) => format!("it has no {c} claim"),
        K::InvalidToken | K::Base64(_) | K::Json(_) | K::Utf8(_) => {
            format!("it is not a well-formed JWT ({e})")
        }
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::StartedBy;

    fn run(id: &str, parent: Option<&Run>, scopes: &[&str]) -> Run {
        Run {
            handle: id.len() as u64,
            id: id.to_owned(),
            agent: "coder bot".to_owned(),
            principal: "alice".to_owned(),
            principal_claimed: None,
            uid: 1000,
            parent_id: parent.map(|p| p.id.clone()),
            root_id: parent.map_or_else(|| id.to_owned(), |p| p.root_id.clone()),
            depth: parent.map_or(0, |p| p.depth + 1),
            policy: Some("p".to_owned()),
            labels: Default::default(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            started_by: StartedBy::Launch,
            start: SystemTime::now(),
            expires: None,
            end: None,
            end_reason: None,
        }
    }

    fn issuer(dir: &Path) -> Issuer {
        let config = TokensConfig {
            trust_domain: Some("example.org".to_owned()),
            ..TokensConfig::default()
        };
        Issuer::open(config, dir, "h", None, SystemTime::now()).unwrap()
    }

    fn req(aud: &str, scopes: &[&str]) -> TokenRequest {
        TokenRequest {
            aud: aud.to_owned(),
            ttl_secs: None,
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn a_sub_runs_token_names_its_delegators_and_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let mut iss = issuer(dir.path());
        let root = run("root", None, &["repo:read", "repo:write"]);
        let mid = run("mid1", Some(&root), &["repo:read"]);
        let leaf = run("leaf12", Some(&mid), &["repo:read"]);
        let now = SystemTime::now();
        let t = iss
            .issue(
                &leaf,
                &[&mid, &root],
                "launch",
                Some("sha256:ab".into()),
                &req("vault", &["repo:read"]),
                now,
            )
            .unwrap();
        assert_eq!(
            t.claims.sub,
            "spiffe://example.org/agent/coder%20bot/run/leaf12"
        );
        assert_eq!(t.claims.iss, "spiffe://example.org/sensor");
        let act = t.claims.act.as_ref().unwrap();
        assert_eq!(act.sub, "spiffe://example.org/agent/coder%20bot/run/mid1");
        assert_eq!(
            act.act.as_ref().unwrap().sub,
            "spiffe://example.org/agent/coder%20bot/run/root"
        );
        assert!(act.act.as_ref().unwrap().act.is_none());
        assert_eq!(t.claims.exp - t.claims.iat, 300);
        let claims = verify(&t.token, &iss.jwks(), iss.issuer(), Some("vault")).unwrap();
        assert_eq!(claims, t.claims);
        assert_eq!(
            verify(&t.token, &iss.jwks(), iss.issuer(), Some("other"))
                .unwrap_err()
                .to_string(),
            r#"it is not for audience "other" (aud)"#
        );
        assert_eq!(
            verify("x.y", &iss.jwks(), iss.issuer(), None)
                .unwrap_err()
                .to_string(),
            "not a JWT: InvalidToken"
        );
        let none = serde_json::json!({ "keys": [] });
        assert!(
            verify(&t.token, &none, iss.issuer(), None)
                .unwrap_err()
                .to_string()
                .ends_with(" is not in the JWKS (rotated out, or another issuer)")
        );
        // One flipped byte of the signature.
        let mut bad = t.token.clone().into_bytes();
        let n = bad.len() - 3;
        bad[n] = if bad[n] == b'A' { b'B' } else { b'A' };
        let why = verify(
            std::str::from_utf8(&bad).unwrap(),
            &iss.jwks(),
            iss.issuer(),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            why.starts_with("the signature does not match") || why.contains("well-formed"),
            "{why}"
        );
        // Another issuer, and one that has expired.
        assert_eq!(
            verify(&t.token, &iss.jwks(), "spiffe://other/sensor", None)
                .unwrap_err()
                .to_string(),
            r#"it was not issued by "spiffe://other/sensor" (iss)"#
        );
        let old = iss
            .issue(
                &root,
                &[],
                "launch",
                None,
                &req("vault", &[]),
                SystemTime::now() - Duration::from_secs(3600),
            )
            .unwrap();
        assert_eq!(
            verify(&old.token, &iss.jwks(), iss.issuer(), None)
                .unwrap_err()
                .to_string(),
            "it has expired (exp)"
        );
    }

    #[test]
    fn scopes_budgets_ttls_and_expiry_are_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let mut iss = issuer(dir.path());
        iss.config.max_per_run = 2;
        let mut r = run("r", None, &["a"]);
        let now = SystemTime::now();
        let e = iss
            .issue(&r, &[], "launch", None, &req("x", &["b"]), now)
            .unwrap_err();
        assert!(matches!(e, TokenError::ScopeNotGranted(..)), "{e}");
        let mut long = req("x", &[]);
        long.ttl_secs = Some(301);
        assert_eq!(
            iss.issue(&r, &[], "launch", None, &long, now).unwrap_err(),
            TokenError::BadTtl(301, 300)
        );
        assert!(matches!(
            iss.issue(&r, &[], "launch", None, &req("", &[]), now),
            Err(TokenError::BadAudience(_))
        ));
        // Never past the run's expiry.
        r.expires = Some(now + Duration::from_secs(10));
        let t = iss
            .issue(&r, &[], "launch", None, &req("x", &["a"]), now)
            .unwrap();
        assert_eq!(t.claims.exp, unix(now) + 10);
        assert_eq!(t.claims.scope, "a");
        iss.issue(&r, &[], "launch", None, &req("x", &[]), now)
            .unwrap();
        assert!(matches!(
            iss.issue(&r, &[], "launch", None, &req("x", &[]), now),
            Err(TokenError::Budget(..))
        ));
        r.expires = Some(now - Duration::from_secs(1));
        iss.forget(r.handle);
        assert!(matches!(
            iss.issue(&r, &[], "launch", None, &req("x", &[]), now),
            Err(TokenError::Expired(_))
        ));
    }
}

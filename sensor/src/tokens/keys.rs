//! The signing keys of run tokens: Ed25519 key pairs in the state dir
//! (`token_keys.json`, mode 0600), one active, the retired ones kept until
//! the last token they signed has expired, so that a verifier holding the
//! JWKS can check every token still valid and none that is not.

use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD as B64URL};
use ring::signature::{Ed25519KeyPair, KeyPair as _};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// The key file in the state dir.
pub use crate::paths::TOKEN_KEYS_FILE as KEYS_FILE;

/// Why the keys cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read the token keys {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the token keys {path} cannot be read as keys: {why}")]
    Corrupt { path: PathBuf, why: String },
    #[error("cannot write the token keys {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot make a signing key: {0}")]
    Generate(String),
}

/// One key as saved.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredKey {
    /// RFC 7638 thumbprint of the public JWK.
    kid: String,
    /// Seconds since the epoch.
    created: u64,
    /// PKCS#8 (v2) DER of the key pair, base64url.
    pkcs8: String,
    /// When it stopped signing (seconds since the epoch).
    #[serde(default)]
    retired: Option<u64>,
    /// The latest expiry of a token it signed (seconds since the epoch).
    #[serde(default)]
    last_exp: u64,
}

/// A key ready to sign.
struct Key {
    stored: StoredKey,
    pair: Ed25519KeyPair,
}

impl Key {
    fn public_x(&self) -> String {
        B64URL.encode(self.pair.public_key().as_ref())
    }

    fn jwk(&self) -> serde_json::Value {
        serde_json::json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": self.public_x(),
            "kid": self.stored.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }
}

/// The active key and the retired ones still needed.
pub struct KeyRing {
    path: PathBuf,
    keys: Vec<Key>,
    rotate: Duration,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// RFC 7638 thumbprint of an Ed25519 public key's JWK.
#[must_use]
pub fn thumbprint(x: &str) -> String {
    let canonical = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
    B64URL.encode(Sha256::digest(canonical.as_bytes()))
}

fn generate(now: SystemTime) -> Result<Key, KeyError> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 =
        Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| KeyError::Generate(e.to_string()))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|e| KeyError::Generate(e.to_string()))?;
    let kid = thumbprint(&B64URL.encode(pair.public_key().as_ref()));
    Ok(Key {
        stored: StoredKey {
            kid,
            created: unix(now),
            pkcs8: B64URL.encode(pkcs8.as_ref()),
            retired: None,
            last_exp: 0,
        },
        pair,
    })
}

/// The active key's id and PKCS#8 DER, read from `state_dir` without
/// changing the file (the daemon owns it): for signing an export.
pub fn read_active(state_dir: &Path) -> Result<(String, Vec<u8>), KeyError> {
    let path = state_dir.join(KEYS_FILE);
    let bytes = std::fs::read(&path).map_err(|source| KeyError::Read {
        path: path.clone(),
        source,
    })?;
    let stored: Vec<StoredKey> = serde_json::from_slice(&bytes).map_err(|e| KeyError::Corrupt {
        path: path.clone(),
        why: e.to_string(),
    })?;
    let active = stored
        .into_iter()
        .find(|k| k.retired.is_none())
        .ok_or_else(|| KeyError::Corrupt {
            path: path.clone(),
            why: "no active key".into(),
        })?;
    let der = B64URL
        .decode(&active.pkcs8)
        .map_err(|e| KeyError::Corrupt {
            path,
            why: e.to_string(),
        })?;
    Ok((active.kid, der))
}

impl KeyRing {
    /// Opens the keys in `state_dir`, making the first one if there is none.
    /// The active key's tokens are known in memory only (no write per
    /// token): after a restart it is taken to have signed one expiring
    /// `max_ttl` from now, so it stays published at least that long once
    /// retired.
    pub fn open(
        state_dir: &Path,
        rotate: Duration,
        max_ttl: Duration,
        now: SystemTime,
    ) -> Result<Self, KeyError> {
        let path = state_dir.join(KEYS_FILE);
        let stored: Vec<StoredKey> = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| KeyError::Corrupt {
                path: path.clone(),
                why: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
            Err(source) => return Err(KeyError::Read { path, source }),
        };
        let keys = stored
            .into_iter()
            .map(|stored| {
                let der = B64URL
                    .decode(&stored.pkcs8)
                    .map_err(|e| e.to_string())
                    .and_then(|der| Ed25519KeyPair::from_pkcs8(&der).map_err(|e| e.to_string()));
                match der {
                    Ok(pair) => Ok(Key { stored, pair }),
                    Err(why) => Err(KeyError::Corrupt {
                        path: path.clone(),
                        why: format!("key {}: {why}", stored.kid),
                    }),
                }
            })
            .collect::<Result<Vec<_>, KeyError>>()?;
        let mut keys = keys;
        let assumed = unix(now).saturating_add(max_ttl.as_secs());
        for k in keys.iter_mut().filter(|k| k.stored.retired.is_none()) {
            k.stored.last_exp = k.stored.last_exp.max(assumed);
        }
        let mut ring = Self { path, keys, rotate };
        ring.rotate(now)?;
        Ok(ring)
    }

    /// Retires the active key once it is `rotate` old (making a new one),
    /// and forgets retired keys whose every token has expired. True when
    /// the keys changed.
    pub fn rotate(&mut self, now: SystemTime) -> Result<bool, KeyError> {
        let t = unix(now);
        let before = self.keys.len();
        self.keys
            .retain(|k| k.stored.retired.is_none() || k.stored.last_exp >= t);
        let mut changed = self.keys.len() != before;
        let due = match self.keys.iter().find(|k| k.stored.retired.is_none()) {
            Some(active) => active.stored.created.saturating_add(self.rotate.as_secs()) <= t,
            None => true,
        };
        if due {
            for k in &mut self.keys {
                if k.stored.retired.is_none() {
                    k.stored.retired = Some(t);
                }
            }
            self.keys
                .retain(|k| k.stored.retired.is_none() || k.stored.last_exp >= t);
            let new = generate(now)?;
            tracing::info!(kid = %new.stored.kid, "new token signing key");
            self.keys.push(new);
            changed = true;
        }
        if changed {
            self.save()?;
        }
        Ok(changed)
    }

    /// The active key's id and PKCS#8 DER, to sign a token expiring at
    /// `exp` (remembered, so the key stays published until then; saved
    /// when the key is retired, not per token: this runs on the event
    /// loop).
    pub fn sign_with(&mut self, exp: u64) -> Result<(String, Vec<u8>), KeyError> {
        let key = self
            .keys
            .iter_mut()
            .find(|k| k.stored.retired.is_none())
            .ok_or_else(|| KeyError::Generate("no active key".to_owned()))?;
        let der = B64URL
            .decode(&key.stored.pkcs8)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        key.stored.last_exp = key.stored.last_exp.max(exp);
        Ok((key.stored.kid.clone(), der))
    }

    /// The public keys as a JWKS (RFC 7517), active key first.
    #[must_use]
    pub fn jwks(&self) -> serde_json::Value {
        let mut keys: Vec<&Key> = self.keys.iter().collect();
        keys.sort_by_key(|k| {
            (
                k.stored.retired.is_some(),
                std::cmp::Reverse(k.stored.created),
            )
        });
        serde_json::json!({ "keys": keys.iter().map(|k| k.jwk()).collect::<Vec<_>>() })
    }

    fn save(&self) -> Result<(), KeyError> {
        let err = |source| KeyError::Write {
            path: self.path.clone(),
            source,
        };
        let stored: Vec<&StoredKey> = self.keys.iter().map(|k| &k.stored).collect();
        let text = serde_json::to_vec_pretty(&stored).map_err(|e| err(e.into()))?;
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(&text).map_err(err)?;
        f.sync_all().map_err(err)?;
        std::fs::rename(&tmp, &self.path).map_err(err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_rotate_and_retired_ones_stay_until_their_tokens_expire() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let ttl = Duration::from_secs(100);
        let mut ring = KeyRing::open(dir.path(), Duration::from_secs(60), ttl, t0).unwrap();
        let (kid_a, _) = ring.sign_with(1_000_050).unwrap();
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 1);
        // Reopened: the same key, taken to have signed a token expiring a
        // max_ttl from now (1_000_100).
        let mut ring = KeyRing::open(dir.path(), Duration::from_secs(60), ttl, t0).unwrap();
        assert_eq!(ring.sign_with(0).unwrap().0, kid_a);
        // 60 s later a new key signs; the old one is still published.
        let t1 = t0 + Duration::from_secs(60);
        assert!(ring.rotate(t1).unwrap());
        let (kid_b, _) = ring.sign_with(0).unwrap();
        assert_ne!(kid_a, kid_b);
        let kids: Vec<_> = ring.jwks()["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kid"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(kids, [kid_b.clone(), kid_a.clone()]);
        // Once its last token expired, the old key is gone.
        ring.rotate(t0 + Duration::from_secs(101)).unwrap();
        assert_eq!(ring.jwks()["keys"].as_array().unwrap().len(), 1);
        assert_eq!(ring.jwks()["keys"][0]["kid"], kid_b.as_str());
        // The file is private.
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(KEYS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_key_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(KEYS_FILE), b"[{\"kid\":1}]").unwrap();
        let err = KeyRing::open(
            dir.path(),
            Duration::from_secs(60),
            Duration::from_secs(1),
            SystemTime::now(),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("cannot be read as keys"), "{err}");
    }
}

//! DSSE envelopes (Dead Simple Signing Envelope, v1.0): the signature
//! covers PAE(payloadType, payload), Ed25519 here.

use base64::{Engine as _, engine::general_purpose::STANDARD as B64};
use ring::signature::Ed25519KeyPair;
use serde::{Deserialize, Serialize};

/// The in-toto payload type.
pub const IN_TOTO: &str = "application/vnd.in-toto+json";

/// `PAE(type, body) = "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body`.
#[must_use]
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "DSSEv1 {} {} {} ",
        payload_type.len(),
        payload_type,
        payload.len()
    )
    .into_bytes();
    out.extend_from_slice(payload);
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature {
    pub keyid: String,
    pub sig: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Base64 (standard) of the payload.
    pub payload: String,
    pub payload_type: String,
    pub signatures: Vec<Signature>,
}

/// Signs `payload` with `pair` as `keyid`.
#[must_use]
pub fn sign(payload_type: &str, payload: &[u8], keyid: &str, pair: &Ed25519KeyPair) -> Envelope {
    let sig = pair.sign(&pae(payload_type, payload));
    Envelope {
        payload: B64.encode(payload),
        payload_type: payload_type.to_owned(),
        signatures: vec![Signature {
            keyid: keyid.to_owned(),
            sig: B64.encode(sig.as_ref()),
        }],
    }
}

/// The payload, when a signature by `keyid` with `public` (raw Ed25519) holds.
pub fn verify(envelope: &Envelope, keyid: &str, public: &[u8]) -> Result<Vec<u8>, String> {
    let payload = B64
        .decode(&envelope.payload)
        .map_err(|_| "the payload is not base64".to_owned())?;
    let message = pae(&envelope.payload_type, &payload);
    let key = ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, public);
    for s in envelope.signatures.iter().filter(|s| s.keyid == keyid) {
        if let Ok(sig) = B64.decode(&s.sig)
            && key.verify(&message, &sig).is_ok()
        {
            return Ok(payload);
        }
    }
    Err(format!("no valid signature by key {keyid}"))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn pae_is_the_spec_s_encoding() {
        // The DSSE spec's example.
        assert_eq!(
            pae("http://example.com/HelloWorld", b"hello world"),
            b"DSSEv1 29 http://example.com/HelloWorld 11 hello world".to_vec()
        );
        assert_eq!(pae("", b""), b"DSSEv1 0  0 ".to_vec());
    }

    #[test]
    fn envelopes_verify_and_a_changed_byte_does_not() {
        let rng = ring::rand::SystemRandom::new();
        let der = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(der.as_ref()).unwrap();
        let public = ring::signature::KeyPair::public_key(&pair)
            .as_ref()
            .to_vec();
        let env = sign(IN_TOTO, b"{\"a\":1}", "k", &pair);
        assert_eq!(verify(&env, "k", &public).unwrap(), b"{\"a\":1}");
        assert!(verify(&env, "other", &public).is_err());
        let mut bad = env.clone();
        bad.payload = B64.encode(b"{\"a\":2}");
        assert!(verify(&bad, "k", &public).is_err());
        let mut bad = env;
        bad.payload_type = "application/json".into();
        assert!(verify(&bad, "k", &public).is_err());
    }
}

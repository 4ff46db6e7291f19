//! Nix binary-cache signing keys.
//!
//! ```text
//! secret key file   <name>:base64(32-byte seed ‖ 32-byte public key)
//! public key        <name>:base64(32 bytes)            (for trusted-public-keys)
//! signature         <name>:base64(ed25519(fingerprint)) (a narinfo `Sig:` line)
//! ```

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer, Verifier};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("key file {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: expected `name:base64`, {reason}")]
    Format { what: &'static str, reason: String },
}

fn split<'a>(what: &'static str, s: &'a str, len: usize) -> Result<(&'a str, Vec<u8>), Error> {
    let bad = |reason: String| Error::Format { what, reason };
    let (name, b64) = s
        .trim()
        .split_once(':')
        .ok_or_else(|| bad("no `:`".into()))?;
    if name.is_empty() {
        return Err(bad("empty name".into()));
    }
    let bytes = B64
        .decode(b64)
        .map_err(|e| bad(format!("bad base64 ({e})")))?;
    if bytes.len() != len {
        return Err(bad(format!("{} bytes instead of {len}", bytes.len())));
    }
    Ok((name, bytes))
}

#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: ed25519_dalek::SigningKey,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.name)
    }
}

impl SecretKey {
    pub fn from_seed(name: &str, seed: [u8; 32]) -> Self {
        SecretKey {
            name: name.to_owned(),
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        }
    }

    pub fn parse(text: &str) -> Result<Self, Error> {
        let (name, bytes) = split("secret key", text, 64)?;
        let arr: [u8; 64] = bytes.try_into().map_err(|_| Error::Format {
            what: "secret key",
            reason: "wrong length".into(),
        })?;
        let key =
            ed25519_dalek::SigningKey::from_keypair_bytes(&arr).map_err(|e| Error::Format {
                what: "secret key",
                reason: format!("public half does not match ({e})"),
            })?;
        Ok(SecretKey {
            name: name.to_owned(),
            key,
        })
    }

    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text)
    }

    /// The secret key file's contents.
    pub fn to_file_text(&self) -> String {
        format!("{}:{}", self.name, B64.encode(self.key.to_keypair_bytes()))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// `name:base64(signature)` over a narinfo fingerprint.
    pub fn sign(&self, fingerprint: &str) -> String {
        let sig = self.key.sign(fingerprint.as_bytes());
        format!("{}:{}", self.name, B64.encode(sig.to_bytes()))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: ed25519_dalek::VerifyingKey,
}

impl PublicKey {
    pub fn parse(text: &str) -> Result<Self, Error> {
        let (name, bytes) = split("public key", text, 32)?;
        let arr: [u8; 32] = bytes.try_into().map_err(|_| Error::Format {
            what: "public key",
            reason: "wrong length".into(),
        })?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&arr).map_err(|e| Error::Format {
            what: "public key",
            reason: e.to_string(),
        })?;
        Ok(PublicKey {
            name: name.to_owned(),
            key,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// True when `sig` (`name:base64`) is this key's signature of `fingerprint`.
    pub fn verifies(&self, fingerprint: &str, sig: &str) -> bool {
        let Some((name, b64)) = sig.split_once(':') else {
            return false;
        };
        if name != self.name {
            return false;
        }
        let Ok(bytes) = B64.decode(b64) else {
            return false;
        };
        let Ok(arr) = <[u8; 64]>::try_from(bytes.as_slice()) else {
            return false;
        };
        let sig = ed25519_dalek::Signature::from_bytes(&arr);
        self.key.verify(fingerprint.as_bytes(), &sig).is_ok()
    }
}

impl std::fmt::Display for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.name, B64.encode(self.key.as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify_and_file_round_trip() {
        let k = SecretKey::from_seed("relay-test-1", [7; 32]);
        let again = SecretKey::parse(&k.to_file_text()).unwrap();
        let fp = "1;/nix/store/x;sha256:abc;5;";
        let sig = again.sign(fp);
        assert!(sig.starts_with("relay-test-1:"));
        let public = PublicKey::parse(&k.public().to_string()).unwrap();
        assert!(public.verifies(fp, &sig));
        assert!(!public.verifies("1;/nix/store/y;sha256:abc;5;", &sig));
        let other = SecretKey::from_seed("relay-test-1", [8; 32]).public();
        assert!(
            !other.verifies(fp, &sig),
            "a different key with the same name"
        );
    }

    #[test]
    fn malformed_keys_are_refused_with_a_reason() {
        assert!(SecretKey::parse("nocolon").is_err());
        assert!(SecretKey::parse("n:!!!").is_err());
        assert!(PublicKey::parse("n:AAAA").is_err());
        let mut bytes = SecretKey::from_seed("n", [1; 32]).to_file_text();
        bytes.truncate(bytes.len() - 8);
        assert!(SecretKey::parse(&bytes).is_err());
    }

    /// A key pair from `nix-store --generate-binary-cache-key` (Nix 2.8).
    #[test]
    fn a_nix_generated_key_pair_matches() {
        let sk = "nix-relay-test-1:nscfMdbo18j/zElcGIB+Avzcbk2uyC7hft6QFAa7mNY1RvdPBx/C++TeUkwRwtxJdKjjVHHo+7XmvH9hhxqJwA==";
        let pk = "nix-relay-test-1:NUb3Twcfwvvk3lJMEcLcSXSo41Rx6Pu15rx/YYcaicA=";
        assert_eq!(SecretKey::parse(sk).unwrap().public().to_string(), pk);
    }

    /// A narinfo signed by real Nix verifies against our fingerprint, and
    /// our signature with the same key is byte-identical (ed25519 is deterministic).
    #[test]
    fn nix_signatures_verify_and_ours_are_identical() {
        let text = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/cache/3qc399yga8a2kdrk6is5fpwq286zg9j7.narinfo"
        ));
        let pk = include_str!(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/golden/cache/nix-relay-test-1.pub"
        ));
        let info = crate::store::NarInfo::parse(text).unwrap();
        let public = PublicKey::parse(pk).unwrap();
        assert!(public.verifies(&info.fingerprint(), &info.sigs[0]));
        let sk = SecretKey::parse("nix-relay-test-1:nscfMdbo18j/zElcGIB+Avzcbk2uyC7hft6QFAa7mNY1RvdPBx/C++TeUkwRwtxJdKjjVHHo+7XmvH9hhxqJwA==").unwrap();
        assert_eq!(sk.sign(&info.fingerprint()), info.sigs[0]);
    }
}

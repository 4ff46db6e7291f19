//! SHA-256 digests in Nix's spellings: base16, nix32, base64, SRI, with or
//! without the `sha256:` prefix. nix32 is Nix's bit-reversed base32
//! (alphabet `0123456789abcdfghijklmnpqrsvwxyz`), not RFC 4648.

use super::Error;

/// A SHA-256 digest (NAR hashes, file hashes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// Parses any spelling Nix accepts for a sha256: 64 hex chars, 52 nix32
    /// chars, 44 base64 chars, each optionally prefixed with `sha256:`, or
    /// SRI `sha256-<base64>`. Any other algorithm prefix is an error.
    pub fn parse_any(_s: &str) -> Result<Self, Error> {
        unimplemented!("helper: hash")
    }
    /// Lowercase base16 without prefix (AddToStoreNar, worker ValidPathInfo).
    pub fn to_hex(&self) -> String {
        unimplemented!("helper: hash")
    }
    /// `sha256:<nix32>` (serve QueryPathInfos, narinfo).
    pub fn to_nix32_prefixed(&self) -> String {
        unimplemented!("helper: hash")
    }
    pub fn digest(data: &[u8]) -> Self {
        use sha2::Digest;
        Sha256Hash(sha2::Sha256::digest(data).into())
    }
}

impl std::fmt::Debug for Sha256Hash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "sha256:{}", self.to_hex())
    }
}

/// Encodes bytes as nix32 (length ceil(8n/5)).
pub fn nix32_encode(_bytes: &[u8]) -> String {
    unimplemented!("helper: hash")
}

/// Decodes nix32; rejects bad characters and set bits beyond the size.
pub fn nix32_decode(_s: &str) -> Result<Vec<u8>, Error> {
    unimplemented!("helper: hash")
}

//! SHA-256 digests in Nix's spellings: base16, nix32, base64, SRI, with or
//! without the `sha256:` prefix. nix32 is Nix's bit-reversed base32
//! (alphabet `0123456789abcdfghijklmnpqrsvwxyz`), not RFC 4648.
//!
//! nix32 writes output character `k` (from the last down to the first) from
//! the 5 bits at bit offset `5k` of the input, so it encodes the **last**
//! input bytes first. A generic base32 crate with a custom alphabet gives the
//! wrong answer.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

use super::Error;

pub const NIX32_ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

const SHA256_LEN: usize = 32;
/// Lengths of an unprefixed sha256 digest in each encoding.
const HEX_LEN: usize = 64;
const NIX32_LEN: usize = 52;
const BASE64_LEN: usize = 44;

/// A SHA-256 digest (NAR hashes, file hashes).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sha256Hash(pub [u8; 32]);

impl Sha256Hash {
    /// Parses any spelling Nix accepts for a sha256: 64 hex chars, 52 nix32
    /// chars, 44 base64 chars, each optionally prefixed with `sha256:`, or
    /// SRI `sha256-<base64>`. Any other algorithm prefix is an error.
    pub fn parse_any(s: &str) -> Result<Self, Error> {
        if let Some(rest) = s.strip_prefix("sha256:") {
            return Self::parse_unprefixed(rest).map_err(|reason| bad_hash(s, reason));
        }
        if let Some(rest) = s.strip_prefix("sha256-") {
            return decode_base64(rest).map_err(|reason| bad_hash(s, reason));
        }
        if s.contains([':', '-']) {
            return Err(bad_hash(s, "unsupported hash algorithm (only sha256)"));
        }
        Self::parse_unprefixed(s).map_err(|reason| bad_hash(s, reason))
    }

    /// Like [`Self::parse_any`] but requires the `sha256:` or `sha256-`
    /// prefix (what narinfo files and Nix's `parseAnyPrefixed` accept).
    pub fn parse_prefixed(s: &str) -> Result<Self, Error> {
        if !s.starts_with("sha256:") && !s.starts_with("sha256-") {
            return Err(bad_hash(s, "missing sha256: prefix"));
        }
        Self::parse_any(s)
    }

    fn parse_unprefixed(s: &str) -> Result<Self, &'static str> {
        match s.len() {
            HEX_LEN => decode_hex(s),
            NIX32_LEN => {
                let v = nix32_decode(s).map_err(|_| "invalid nix32")?;
                to_array(&v)
            }
            BASE64_LEN => decode_base64(s),
            _ => Err("length matches no sha256 encoding (64 hex, 52 nix32, 44 base64)"),
        }
    }

    /// Lowercase base16 without prefix (AddToStoreNar, worker ValidPathInfo).
    pub fn to_hex(&self) -> String {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(HEX_LEN);
        for b in self.0 {
            s.push(char::from(HEX[usize::from(b >> 4)]));
            s.push(char::from(HEX[usize::from(b & 0xf)]));
        }
        s
    }

    /// nix32 without prefix (NAR file names in a binary cache).
    pub fn to_nix32(&self) -> String {
        nix32_encode(&self.0)
    }

    /// `sha256:<nix32>` (serve QueryPathInfos, narinfo).
    pub fn to_nix32_prefixed(&self) -> String {
        format!("sha256:{}", self.to_nix32())
    }

    /// SRI form `sha256-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("sha256-{}", BASE64.encode(self.0))
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

fn bad_hash(value: &str, reason: &'static str) -> Error {
    Error::BadHash {
        value: value.chars().take(200).collect(),
        reason,
    }
}

fn to_array(v: &[u8]) -> Result<Sha256Hash, &'static str> {
    <[u8; SHA256_LEN]>::try_from(v)
        .map(Sha256Hash)
        .map_err(|_| "wrong digest length for sha256")
}

fn decode_hex(s: &str) -> Result<Sha256Hash, &'static str> {
    let digit = |c: u8| char::from(c).to_digit(16).ok_or("invalid hex digit");
    let mut out = [0u8; SHA256_LEN];
    for (o, pair) in out.iter_mut().zip(s.as_bytes().chunks_exact(2)) {
        // to_digit(16) is < 16, so the shift and the cast are lossless.
        *o = ((digit(pair[0])? << 4) | digit(pair[1])?) as u8;
    }
    Ok(Sha256Hash(out))
}

fn decode_base64(s: &str) -> Result<Sha256Hash, &'static str> {
    if s.len() != BASE64_LEN {
        return Err("base64 sha256 must be 44 characters");
    }
    let v = BASE64.decode(s).map_err(|_| "invalid base64")?;
    to_array(&v)
}

/// Length of the nix32 encoding of `n` bytes: `ceil(8n / 5)`.
pub fn nix32_len(n: usize) -> usize {
    (n * 8).div_ceil(5)
}

/// Encodes bytes as nix32 (length ceil(8n/5)).
pub fn nix32_encode(bytes: &[u8]) -> String {
    let len = nix32_len(bytes.len());
    let mut s = String::with_capacity(len);
    for k in (0..len).rev() {
        let b = k * 5;
        let (i, j) = (b / 8, b % 8);
        let lo = u16::from(bytes[i]) >> j;
        let hi = bytes.get(i + 1).map_or(0, |&h| u16::from(h) << (8 - j));
        s.push(char::from(NIX32_ALPHABET[usize::from((lo | hi) & 0x1f)]));
    }
    s
}

/// Decodes nix32; rejects bad characters and set bits beyond the size.
pub fn nix32_decode(s: &str) -> Result<Vec<u8>, Error> {
    let bad = |reason| bad_hash(s, reason);
    let size = s.len() * 5 / 8;
    if nix32_len(size) != s.len() {
        return Err(bad("length is not a valid nix32 length"));
    }
    let mut out = vec![0u8; size];
    for (n, c) in s.bytes().rev().enumerate() {
        let digit = NIX32_ALPHABET
            .iter()
            .position(|&a| a == c)
            .ok_or_else(|| bad("invalid nix32 character"))?;
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        // Bytes are 8 bits: the casts keep exactly the bits that belong there.
        out[i] |= (digit << j) as u8;
        let carry = digit >> (8 - j);
        match out.get_mut(i + 1) {
            Some(next) => *next |= carry as u8,
            None if carry != 0 => return Err(bad("nix32 has bits set beyond the hash size")),
            None => {}
        }
    }
    Ok(out)
}

/// Folds `h` into `n` bytes by XOR (`r[i % n] ^= h[i]`), as Nix does to
/// shorten a sha256 to the 20 bytes of a store path hash.
pub fn compress_hash(h: &[u8], n: usize) -> Vec<u8> {
    let mut r = vec![0u8; n];
    if n == 0 {
        return r;
    }
    for (i, b) in h.iter().enumerate() {
        r[i % n] ^= b;
    }
    r
}

#[cfg(test)]
mod tests;

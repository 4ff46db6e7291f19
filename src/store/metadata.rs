//! Checks on the metadata a peer sends with a path, before any of it is
//! written into a narinfo (whose format is one `Key: value` per line, so a
//! newline in a value would inject fields).
//!
//! ```text
//! Sig  <name>:<base64 of a 64-byte ed25519 signature>   name: printable ASCII, no ':' or space
//! CA   text:<hash>            the hash a sha256
//!      fixed:[r:]<hash>       md5, sha1, sha256 or sha512
//! hash <algo>:<base16|nix32|base64>  or SRI <algo>-<base64>, of the algorithm's length
//! ```
//! References and deriver are [`StorePath`]s, checked when they were decoded.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use crate::wire::hash::NIX32_ALPHABET;
use crate::wire::path_info::ValidPathInfo;

/// Longest key name accepted in a signature.
pub const MAX_KEY_NAME: usize = 256;
/// Length of an ed25519 signature.
const SIG_BYTES: usize = 64;

/// Why a field was refused: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {reason}")]
pub struct BadField {
    pub field: &'static str,
    pub reason: String,
}

fn bad(field: &'static str, reason: impl Into<String>) -> BadField {
    BadField {
        field,
        reason: reason.into(),
    }
}

/// Every field of `info` that ends up in a narinfo as text.
pub fn check_info(info: &ValidPathInfo) -> Result<(), BadField> {
    for s in &info.sigs {
        check_sig(s)?;
    }
    if let Some(ca) = &info.ca {
        check_ca(ca)?;
    }
    Ok(())
}

/// `name:base64` of a 64-byte signature; nothing else (no whitespace).
pub fn check_sig(sig: &str) -> Result<(), BadField> {
    let (name, b64) = sig
        .split_once(':')
        .ok_or_else(|| bad("Sig", format!("no ':' in {:?}", shorten(sig))))?;
    if name.is_empty() || name.len() > MAX_KEY_NAME {
        return Err(bad(
            "Sig",
            format!("key name must be 1 to {MAX_KEY_NAME} bytes"),
        ));
    }
    if !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(bad(
            "Sig",
            format!("key name {:?} is not printable ASCII", shorten(name)),
        ));
    }
    match B64.decode(b64) {
        Ok(bytes) if bytes.len() == SIG_BYTES => Ok(()),
        Ok(bytes) => Err(bad(
            "Sig",
            format!("{} signature bytes instead of {SIG_BYTES}", bytes.len()),
        )),
        Err(e) => Err(bad("Sig", format!("bad base64 ({e})"))),
    }
}

/// A content address as Nix renders it: `text:sha256:…` or `fixed:[r:]<algo>:…`.
pub fn check_ca(ca: &str) -> Result<(), BadField> {
    let (hash, text) = if let Some(rest) = ca.strip_prefix("text:") {
        (rest, true)
    } else if let Some(rest) = ca.strip_prefix("fixed:") {
        (rest.strip_prefix("r:").unwrap_or(rest), false)
    } else {
        return Err(bad(
            "CA",
            format!("not text: or fixed: ({:?})", shorten(ca)),
        ));
    };
    let algo = check_hash(hash).map_err(|r| bad("CA", r))?;
    if text && algo != "sha256" {
        return Err(bad("CA", "a text: content address must use sha256"));
    }
    Ok(())
}

/// `<algo>:<encoded>` or `<algo>-<base64>`; returns the algorithm.
fn check_hash(s: &str) -> Result<&str, String> {
    let sri = s
        .find('-')
        .is_some_and(|d| s.find(':').is_none_or(|c| d < c));
    let (algo, enc) = if sri {
        s.split_once('-')
    } else {
        s.split_once(':')
    }
    .ok_or_else(|| format!("no hash algorithm in {:?}", shorten(s)))?;
    let len = match algo {
        "md5" => 16,
        "sha1" => 20,
        "sha256" => 32,
        "sha512" => 64,
        _ => return Err(format!("unknown hash algorithm {:?}", shorten(algo))),
    };
    let is = |alphabet: &[u8]| enc.bytes().all(|b| alphabet.contains(&b));
    let ok = if sri {
        B64.decode(enc).is_ok_and(|b| b.len() == len)
    } else if enc.len() == 2 * len {
        is(b"0123456789abcdef")
    } else if enc.len() == (len * 8).div_ceil(5) {
        is(NIX32_ALPHABET)
    } else {
        B64.decode(enc).is_ok_and(|b| b.len() == len)
    };
    if !ok {
        return Err(format!("not a {algo} hash: {:?}", shorten(enc)));
    }
    Ok(algo)
}

/// At most 80 characters of a peer's string, for an error message.
fn shorten(s: &str) -> String {
    s.chars().take(80).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIG: &str = "cache.nixos.org-1:TsTTb3WGTZKphvYdBHXwo6weVILmTytUjLB+vcX89fOjjRicCHmKA4RCPMVLkj6TMJ4GMX3HPVWRdD1hkeKZBQ==";

    #[test]
    fn well_formed_signatures_pass_and_injections_do_not() {
        assert_eq!(check_sig(SIG), Ok(()));
        for s in [
            "cache.nixos.org-1:c2ln",
            "nocolon",
            ":AAAA",
            &format!("{SIG}\nCA: fixed:sha256:x"),
            &format!("a b{}", &SIG[17..]),
            &format!("{SIG} "),
            &format!("name\n{}", &SIG[17..]),
        ] {
            let e = check_sig(s).unwrap_err();
            assert_eq!(e.field, "Sig", "{s:?}");
        }
    }

    #[test]
    fn content_addresses_follow_nix_grammar() {
        let nix32 = "1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850ymkq1iyzicy5s";
        let hex = "a".repeat(64);
        for ok in [
            format!("fixed:r:sha256:{nix32}"),
            format!("fixed:sha256:{nix32}"),
            format!("text:sha256:{nix32}"),
            format!("fixed:sha256:{hex}"),
            "fixed:sha1:0000000000000000000000000000000000000000".to_string(),
            "fixed:r:sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=".to_string(),
        ] {
            assert_eq!(check_ca(&ok), Ok(()), "{ok}");
        }
        for no in [
            format!("fixed:r:sha256:{nix32}\nSig: x:y"),
            format!("text:sha1:{}", "0".repeat(40)),
            format!("fixed:sha257:{nix32}"),
            format!("fixed:sha256:{}", &nix32[1..]),
            format!("other:sha256:{nix32}"),
            "fixed:r:sha256:".to_string(),
            format!("fixed:sha256:{}E", &hex[1..]),
        ] {
            assert!(check_ca(&no).is_err(), "{no:?} accepted");
        }
    }
}

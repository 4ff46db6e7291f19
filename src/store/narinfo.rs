//! `.narinfo` rendering and strict parsing (Nix's binary-cache format).

use crate::wire::hash::Sha256Hash;
use crate::wire::store_path::StorePath;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    pub store_path: StorePath,
    /// Relative URL of the NAR file, e.g. `nar/<nix32 filehash>.nar.zst`.
    pub url: String,
    /// `none`, `xz`, `zstd`, `bzip2`, ...
    pub compression: String,
    pub file_hash: Option<Sha256Hash>,
    pub file_size: Option<u64>,
    pub nar_hash: Sha256Hash,
    pub nar_size: u64,
    pub references: Vec<StorePath>,
    pub deriver: Option<StorePath>,
    pub system: Option<String>,
    pub sigs: Vec<String>,
    pub ca: Option<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("narinfo line {line}: {reason}")]
pub struct ParseError {
    pub line: usize,
    pub reason: String,
}

impl NarInfo {
    /// Renders in the order `nix copy` writes: StorePath, URL, Compression,
    /// FileHash, FileSize, NarHash, NarSize, References, Deriver, System, Sig*, CA.
    pub fn render(&self) -> String {
        unimplemented!("helper: narinfo")
    }
    /// Strict parse (": " separator, trailing newline, required keys).
    pub fn parse(_text: &str) -> Result<NarInfo, ParseError> {
        unimplemented!("helper: narinfo")
    }
    /// `1;<path>;<narhash sha256:nix32>;<narsize>;<comma-joined sorted refs>`
    pub fn fingerprint(&self) -> String {
        unimplemented!("helper: narinfo")
    }
}

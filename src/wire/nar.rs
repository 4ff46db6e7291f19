//! Streaming NAR tokenizer: passes bytes through, finds the end of a NAR,
//! enforces the format's rules and computes sha256 + size on the fly.
//! (Grammar in the module doc once implemented.)

use super::hash::Sha256Hash;

/// Bounds on one NAR. Memory used by the parser is O(max_depth * max_name_len).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarLimits {
    pub max_depth: usize,
    pub max_name_len: usize,
    pub max_target_len: usize,
    pub max_nar_bytes: u64,
}

impl Default for NarLimits {
    fn default() -> Self {
        NarLimits {
            max_depth: 256,
            max_name_len: 255,
            max_target_len: 4095,
            max_nar_bytes: 1 << 40,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NarSummary {
    pub size: u64,
    pub sha256: Sha256Hash,
}

/// Push parser. Feed it bytes; it consumes a prefix of each slice and never
/// consumes a byte past the end of the NAR.
pub struct NarParser {
    _limits: NarLimits,
}

impl NarParser {
    pub fn new(limits: NarLimits) -> Self {
        NarParser { _limits: limits }
    }
    /// Consumes a prefix of `buf` and returns its length. Once the NAR is
    /// complete it consumes nothing more (returns 0). Errors are sticky.
    pub fn feed(&mut self, _buf: &[u8]) -> Result<usize, super::Error> {
        unimplemented!("helper: nar")
    }
    pub fn is_done(&self) -> bool {
        unimplemented!("helper: nar")
    }
    /// Bytes consumed so far.
    pub fn consumed(&self) -> u64 {
        unimplemented!("helper: nar")
    }
    /// Size and sha256 of the complete NAR; an error if it is not complete.
    pub fn finish(self) -> Result<NarSummary, super::Error> {
        unimplemented!("helper: nar")
    }
}

//! The Nix wire layer: bytes ⇄ typed values, and nothing else.
//!
//! Invariant: no sockets, no scheduler, no config. Every integer and byte
//! string goes through [`primitives`]; it is the only module that knows the
//! byte order and the padding rule. Everything read from the wire is checked
//! against a [`Limits`] value before anything is allocated.
//!
//! The crate `nix-relay-wire` depends on nothing of the relay (the main
//! crate re-exports it as `crate::wire`; `tests/guard.sh` checks both that
//! and that no code outside calls [`primitives`] or spells a byte order).
//! Its parts: [`primitives`] (u64 LE, padded byte strings, collections),
//! [`store_path`], [`hash`] (sha256 spellings, nix32), [`nar`] (the
//! streaming NAR tokenizer, bounded by [`nar::NarLimits`] — depth, name and
//! target length, entries, size — at the token that breaks the bound, plus
//! a canonical encoder for tests), [`build`] (BasicDerivation,
//! BuildOptions, BuildResult), [`path_info`], [`serve`] (handshake,
//! `Request`, `Reply`), [`export`] (the ImportPaths/ExportPaths stream) and
//! [`worker`] (the daemon protocol 1.21–1.38: handshake in both orders,
//! feature exchange, the STDERR stream and activities, framed streams, ops
//! and results).
//!
//! What the sessions and backend clients use is typed messages per
//! protocol and direction plus one codec per protocol that carries the
//! negotiated version and the limits: [`serve::ServeCodec`]
//! (`read_request`/`encode_reply` for a session, `encode_request`/
//! `read_reply` and per-reply readers for a backend client) and
//! [`worker::WorkerCodec`] (the same, plus STDERR messages, the
//! AddMultipleToStore content and `nar_upload`, how AddToStoreNar's NAR
//! travels). A session reads decode → core call → encode. Each version gate
//! exists once: in its message type, or as a method of `ServeVersion` /
//! `WorkerVersion` (e.g. `has_found_flag`, `frames_nar_upload`). A string's
//! memory grows with the bytes that arrive (at most
//! [`primitives::STRING_PREALLOC`] ahead), never with the length a peer
//! announces.

pub mod build;
pub mod content_address;
pub mod derivation;
pub mod export;
pub mod hash;
pub mod nar;
pub mod path_info;
pub mod primitives;
pub mod serve;
pub mod store_path;
pub mod worker;

use std::io;

/// Bounds on what the relay accepts from a peer. Without them a peer could
/// make the relay allocate whatever length or count it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest generic byte string (derivation env values, error messages).
    pub max_string_bytes: usize,
    /// Most elements in one list, set or map.
    pub max_collection_len: usize,
    /// Largest NAR accepted in one piece.
    pub max_nar_bytes: u64,
}

impl Limits {
    /// Store paths are at most 211 name bytes + hash + store dir.
    pub const MAX_PATH_BYTES: usize = 4096;
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_string_bytes: 64 << 20,
            max_collection_len: 1 << 20,
            max_nar_bytes: 1 << 40,
        }
    }
}

/// A wire-level failure. `field` names what was being read, so a log line
/// says which step failed ("reading clientVersion: unexpected end of stream").
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {field}: unexpected end of stream")]
    UnexpectedEof { field: &'static str },
    #[error("reading {field}")]
    Read {
        field: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("writing to peer")]
    Write(#[source] io::Error),
    #[error("reading {field}: length {len} exceeds the limit of {max}")]
    TooLong {
        field: &'static str,
        len: u64,
        max: u64,
    },
    #[error("reading {field}: non-zero padding")]
    BadPadding { field: &'static str },
    #[error("reading {field}: not valid UTF-8")]
    NotUtf8 { field: &'static str },
    #[error("reading {field}: invalid value {value:#x}")]
    BadValue { field: &'static str, value: u64 },
    #[error("bad magic {got:#x} (expected {expected:#x}): peer does not speak this protocol")]
    BadMagic { got: u64, expected: u64 },
    #[error("unsupported protocol version {major}.{minor}")]
    UnsupportedVersion { major: u64, minor: u64 },
    #[error("derivation, byte {at}: {reason}")]
    BadDerivation { at: usize, reason: &'static str },
    #[error("unknown command {0}")]
    UnknownCommand(u64),
    #[error("invalid store path {path:?}: {reason}")]
    BadStorePath { path: String, reason: &'static str },
    #[error(
        "store path {path:?} is in store directory {dir:?}: nix-relay serves only /nix/store \
         (the client's Nix uses another store directory)"
    )]
    ForeignStoreDir { path: String, dir: String },
    #[error("invalid hash {value:?}: {reason}")]
    BadHash { value: String, reason: &'static str },
    #[error("content address {value:?}: {reason}")]
    BadContentAddress { value: String, reason: String },
    #[error("malformed NAR at byte {offset}: {reason}")]
    BadNar { offset: u64, reason: String },
    #[error("{0}")]
    Protocol(String),
}

impl Error {
    pub fn read(field: &'static str, source: io::Error) -> Self {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            Error::UnexpectedEof { field }
        } else {
            Error::Read { field, source }
        }
    }

    /// True when the peer simply went away (truncated stream).
    pub fn is_eof(&self) -> bool {
        matches!(self, Error::UnexpectedEof { .. })
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

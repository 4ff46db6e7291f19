//! The worker (daemon) protocol (`nix-daemon --stdio`, Nix's `ssh-ng://`
//! stores), versions 1.21 – 1.38. V = min(client, server) gates every field.
//!
//! ```text
//! handshake  C→S u64 WORKER_MAGIC_1 [· u64 clientVersion   (Nix ≥ 2.23 sends it at once)]
//!            S→C u64 WORKER_MAGIC_2 · u64 serverVersion    (flushed before reading the version)
//!            C→S [u64 clientVersion                         (Nix ≤ 2.22 sends it now)]
//!            [V ≥ 1.38] C→S list<str> clientFeatures · S→C list<str> serverFeatures
//!            [V ≥ 1.14] C→S u64 cpuAffinity (≠ 0: u64 cpu follows) · [V ≥ 1.11] C→S u64 reserveSpace
//!            [V ≥ 1.33] S→C str nixVersion · [V ≥ 1.35] S→C u64 trust (0 unknown, 1 yes, 2 no)
//!            S→C stderr*
//! op         C→S u64 op · request [· payload] ;  S→C stderr* · (LAST · result | ERROR)
//! stderr     NEXT str text | READ u64 max (C→S str data) | WRITE str data
//!            | START_ACTIVITY u64 id · u64 level · u64 type · str text · fields · u64 parent
//!            | STOP_ACTIVITY u64 id | RESULT u64 id · u64 type · fields
//!            | ERROR ([V ≥ 1.26] str "Error" · u64 level · str name · str msg · u64 0
//!                       · u64 n · n × (u64 0 · str trace)  |  [V < 1.26] str msg · u64 status)
//! fields     u64 n · n × (u64 0 · u64 int | u64 1 · str s)
//! framed     (u64 len>0 · len raw bytes)* · u64 0                 (no padding)
//! ```
//!
//! Requests, payloads and results per op: [`request`]; value encodings
//! (ValidPathInfo, BuildResult, QueryMissing, replies): [`values`];
//! handshake: [`handshake`]; STDERR messages: [`stderr`]; framing: [`framed`].

pub mod codec;
pub mod framed;
pub mod handshake;
pub mod options;
mod reply;
pub mod request;
pub mod stderr;
pub mod store_ops;
pub mod values;

pub use codec::{NarUpload, WorkerCodec};
pub use framed::{FramedReader, FramedWriter};
pub use handshake::{ClientHandshake, ServerHandshake, client_handshake, server_handshake};
pub use options::{ClientOptions, DrvOutputRegistration, LegacyAddToStore};
pub use request::Request;
pub use stderr::{Field, StderrEnd, StderrMsg, WorkerError, read_stderr_stream};
pub use store_ops::{GcRequest, StoreOp, SubstitutableInfo};
pub use values::{
    QueryMissingReply, Reply, WorkerBuildResult, read_worker_path_info,
    read_worker_valid_path_info, write_worker_path_info, write_worker_valid_path_info,
};

use super::{Error, Result};

pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;

/// A worker protocol version, `(major << 8) | minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkerVersion(pub u64);

impl WorkerVersion {
    pub const V1_21: WorkerVersion = WorkerVersion::new(1, 21);
    pub const V1_25: WorkerVersion = WorkerVersion::new(1, 25);
    pub const V1_32: WorkerVersion = WorkerVersion::new(1, 32);
    /// Nix 2.8 – 2.14.
    pub const V1_34: WorkerVersion = WorkerVersion::new(1, 34);
    pub const V1_35: WorkerVersion = WorkerVersion::new(1, 35);
    pub const V1_37: WorkerVersion = WorkerVersion::new(1, 37);
    pub const V1_38: WorkerVersion = WorkerVersion::new(1, 38);
    /// Oldest peer accepted (Nix 2.3).
    pub const MIN: WorkerVersion = WorkerVersion::V1_21;
    /// Newest version implemented.
    pub const LATEST: WorkerVersion = WorkerVersion::V1_38;

    pub const fn new(major: u8, minor: u8) -> Self {
        WorkerVersion(((major as u64) << 8) | minor as u64)
    }
    pub fn major(self) -> u64 {
        self.0 >> 8
    }
    pub fn minor(self) -> u8 {
        (self.0 & 0xff) as u8
    }
    /// QueryPathInfo's reply starts with a found flag (≥ 1.17), so "not
    /// valid" is a reply; before, only an error can say it.
    pub fn has_found_flag(self) -> bool {
        self.minor() >= 17
    }
    /// AddToStoreNar's NAR travels framed (≥ 1.23); before, the server
    /// pulls it with `STDERR_READ` ([`WorkerCodec::nar_upload`]).
    pub fn frames_nar_upload(self) -> bool {
        self.minor() >= 23
    }
    /// Accepts a peer's version if it is 1.x with x ≥ 21.
    pub fn check_peer(v: u64) -> Result<WorkerVersion> {
        let v = WorkerVersion(v);
        if v.major() != 1 || v < WorkerVersion::MIN {
            return Err(Error::UnsupportedVersion {
                major: v.major(),
                minor: u64::from(v.minor()),
            });
        }
        Ok(v)
    }
}

impl std::fmt::Display for WorkerVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// Whether the server trusts the client (sent at V ≥ 1.35).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Trust {
    Unknown = 0,
    Trusted = 1,
    NotTrusted = 2,
}

impl Trust {
    pub fn from_u64(v: u64) -> Result<Self> {
        match v {
            0 => Ok(Trust::Unknown),
            1 => Ok(Trust::Trusted),
            2 => Ok(Trust::NotTrusted),
            value => Err(Error::BadValue {
                field: "trust",
                value,
            }),
        }
    }
}

/// Worker op codes (Nix `WorkerProto::Op`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Op {
    IsValidPath = 1,
    QueryReferrers = 6,
    AddToStore = 7,
    AddTextToStore = 8,
    BuildPaths = 9,
    EnsurePath = 10,
    AddTempRoot = 11,
    AddIndirectRoot = 12,
    SyncWithGc = 13,
    FindRoots = 14,
    QueryDeriver = 18,
    SetOptions = 19,
    CollectGarbage = 20,
    QuerySubstitutablePathInfo = 21,
    QueryDerivationOutputs = 22,
    QueryAllValidPaths = 23,
    QueryPathInfo = 26,
    QueryDerivationOutputNames = 28,
    QueryPathFromHashPart = 29,
    QuerySubstitutablePathInfos = 30,
    QueryValidPaths = 31,
    QuerySubstitutablePaths = 32,
    QueryValidDerivers = 33,
    OptimiseStore = 34,
    VerifyStore = 35,
    BuildDerivation = 36,
    AddSignatures = 37,
    NarFromPath = 38,
    AddToStoreNar = 39,
    QueryMissing = 40,
    QueryDerivationOutputMap = 41,
    RegisterDrvOutput = 42,
    QueryRealisation = 43,
    AddMultipleToStore = 44,
    AddBuildLog = 45,
    BuildPathsWithResults = 46,
    AddPermRoot = 47,
}

impl Op {
    pub fn from_u64(v: u64) -> Option<Op> {
        use Op::*;
        const ALL: [Op; 37] = [
            IsValidPath,
            QueryReferrers,
            AddToStore,
            AddTextToStore,
            BuildPaths,
            EnsurePath,
            AddTempRoot,
            AddIndirectRoot,
            SyncWithGc,
            FindRoots,
            QueryDeriver,
            SetOptions,
            CollectGarbage,
            QuerySubstitutablePathInfo,
            QueryDerivationOutputs,
            QueryAllValidPaths,
            QueryPathInfo,
            QueryDerivationOutputNames,
            QueryPathFromHashPart,
            QuerySubstitutablePathInfos,
            QueryValidPaths,
            QuerySubstitutablePaths,
            QueryValidDerivers,
            OptimiseStore,
            VerifyStore,
            BuildDerivation,
            AddSignatures,
            NarFromPath,
            AddToStoreNar,
            QueryMissing,
            QueryDerivationOutputMap,
            RegisterDrvOutput,
            QueryRealisation,
            AddMultipleToStore,
            AddBuildLog,
            BuildPathsWithResults,
            AddPermRoot,
        ];
        ALL.into_iter().find(|op| *op as u64 == v)
    }
}

/// Build mode of BuildPaths, BuildDerivation and BuildPathsWithResults.
pub const BUILD_MODE_NORMAL: u64 = 0;
pub const BUILD_MODE_REPAIR: u64 = 1;
pub const BUILD_MODE_CHECK: u64 = 2;

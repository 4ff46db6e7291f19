//! The serve protocol (`nix-store --serve [--write]`, Nix's `ssh://` stores).
//!
//! ```text
//! handshake   C→S u64 SERVE_MAGIC_1 · u64 clientVersion     (sent together)
//!             S→C u64 SERVE_MAGIC_2 · u64 serverVersion     (server answers after the magic)
//! negotiated  min(client, server); every version-dependent field is gated on it
//! commands    C→S u64 cmd · request ;  S→C response          (strictly one at a time)
//!   1 QueryValidPaths   u64 lock · u64 substitute · set<path>     → set<path>
//!   2 QueryPathInfos    set<path>                → records (path_info.rs) · str ""
//!   3 DumpStorePath     str path                 → NAR
//!   4 ImportPaths       export stream (export.rs) → u64 1
//!   5 ExportPaths       u64 sign (ignored) · set<path>  → export stream
//!   6 BuildPaths        list<str> · BuildOptions → u64 0 | u64 code · str msg
//!   7 QueryClosure      u64 includeOutputs · set<path> → set<path>
//!   8 BuildDerivation   str drvPath · BasicDerivation · BuildOptions → BuildResult
//!   9 AddToStoreNar     path info header · exactly narSize NAR bytes → u64 1   (≥2.5)
//! ```
//! There is no error channel: a failing server prints to stderr and exits.

mod reply;

pub use reply::{Reply, ServeCodec};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::build::{BasicDerivation, BuildOptions};
use super::path_info::ValidPathInfo;
use super::primitives::*;
use super::store_path::StorePath;
use super::{Error, Limits, Result};

pub const SERVE_MAGIC_1: u64 = 0x390c_9deb;
pub const SERVE_MAGIC_2: u64 = 0x5452_eecb;

/// A serve protocol version, `(major << 8) | minor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct ServeVersion(pub u64);

impl ServeVersion {
    /// What the relay speaks on both sides (Nix 2.4 – 2.34 speak 2.7).
    pub const LATEST: ServeVersion = ServeVersion(0x207);
    /// Oldest backend the relay drives: it needs AddToStoreNar.
    pub const MIN_BACKEND: ServeVersion = ServeVersion(0x205);

    pub fn major(self) -> u64 {
        self.0 >> 8
    }
    pub fn minor(self) -> u8 {
        (self.0 & 0xff) as u8
    }
    fn check_major(v: u64) -> Result<ServeVersion> {
        let v = ServeVersion(v);
        if v.major() != 2 {
            return Err(Error::UnsupportedVersion {
                major: v.major(),
                minor: u64::from(v.minor()),
            });
        }
        Ok(v)
    }
}

impl std::fmt::Display for ServeVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major(), self.minor())
    }
}

/// Server side: reads the client's magic, answers, then reads its version.
/// Returns the negotiated version.
pub async fn server_handshake<R, W>(r: &mut R, w: &mut W) -> Result<ServeVersion>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let magic = read_u64(r, "SERVE_MAGIC_1").await?;
    if magic != SERVE_MAGIC_1 {
        return Err(Error::BadMagic {
            got: magic,
            expected: SERVE_MAGIC_1,
        });
    }
    let mut buf = Vec::with_capacity(16);
    put_u64(&mut buf, SERVE_MAGIC_2);
    put_u64(&mut buf, ServeVersion::LATEST.0);
    send(w, &buf).await?;
    let client = ServeVersion::check_major(read_u64(r, "clientVersion").await?)?;
    Ok(client.min(ServeVersion::LATEST))
}

/// Client side: sends magic + version, reads the server's hello.
pub async fn client_handshake<R, W>(r: &mut R, w: &mut W) -> Result<ServeVersion>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(16);
    put_u64(&mut buf, SERVE_MAGIC_1);
    put_u64(&mut buf, ServeVersion::LATEST.0);
    send(w, &buf).await?;
    let magic = read_u64(r, "SERVE_MAGIC_2").await?;
    if magic != SERVE_MAGIC_2 {
        return Err(Error::BadMagic {
            got: magic,
            expected: SERVE_MAGIC_2,
        });
    }
    let server = ServeVersion::check_major(read_u64(r, "serverVersion").await?)?;
    Ok(server.min(ServeVersion::LATEST))
}

/// Writes one encoded message and flushes it.
pub async fn send<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> Result<()> {
    w.write_all(buf).await.map_err(Error::Write)?;
    w.flush().await.map_err(Error::Write)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Command {
    QueryValidPaths = 1,
    QueryPathInfos = 2,
    DumpStorePath = 3,
    ImportPaths = 4,
    ExportPaths = 5,
    BuildPaths = 6,
    QueryClosure = 7,
    BuildDerivation = 8,
    AddToStoreNar = 9,
}

impl Command {
    pub const ALL: [Command; 9] = [
        Command::QueryValidPaths,
        Command::QueryPathInfos,
        Command::DumpStorePath,
        Command::ImportPaths,
        Command::ExportPaths,
        Command::BuildPaths,
        Command::QueryClosure,
        Command::BuildDerivation,
        Command::AddToStoreNar,
    ];

    /// The command `code` names, if it is one.
    pub fn from_u64(code: u64) -> Option<Command> {
        Command::ALL.into_iter().find(|c| *c as u64 == code)
    }
}

/// One client request. Payloads that follow a request (the NAR of
/// AddToStoreNar, the export stream of ImportPaths) are left on the stream
/// for the caller to stream through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    QueryValidPaths {
        lock: bool,
        substitute: bool,
        paths: Vec<StorePath>,
    },
    QueryPathInfos {
        paths: Vec<StorePath>,
    },
    DumpStorePath {
        path: StorePath,
    },
    ImportPaths,
    ExportPaths {
        sign: bool,
        paths: Vec<StorePath>,
    },
    BuildPaths {
        paths: Vec<String>,
        options: BuildOptions,
    },
    QueryClosure {
        include_outputs: bool,
        paths: Vec<StorePath>,
    },
    BuildDerivation {
        drv_path: StorePath,
        drv: BasicDerivation,
        options: BuildOptions,
    },
    AddToStoreNar {
        info: ValidPathInfo,
    },
}

impl Request {
    pub fn command(&self) -> Command {
        match self {
            Request::QueryValidPaths { .. } => Command::QueryValidPaths,
            Request::QueryPathInfos { .. } => Command::QueryPathInfos,
            Request::DumpStorePath { .. } => Command::DumpStorePath,
            Request::ImportPaths => Command::ImportPaths,
            Request::ExportPaths { .. } => Command::ExportPaths,
            Request::BuildPaths { .. } => Command::BuildPaths,
            Request::QueryClosure { .. } => Command::QueryClosure,
            Request::BuildDerivation { .. } => Command::BuildDerivation,
            Request::AddToStoreNar { .. } => Command::AddToStoreNar,
        }
    }

    /// Reads the next request; `Ok(None)` on a clean end of stream.
    pub async fn read<R: AsyncRead + Unpin>(
        r: &mut R,
        version: ServeVersion,
        limits: &Limits,
    ) -> Result<Option<Request>> {
        let Some(cmd) = read_u64_or_eof(r, "command").await? else {
            return Ok(None);
        };
        let minor = version.minor();
        let req = match cmd {
            1 => Request::QueryValidPaths {
                lock: read_bool(r, "lock").await?,
                substitute: read_bool(r, "substitute").await?,
                paths: read_paths(r, "paths", limits).await?,
            },
            2 => Request::QueryPathInfos {
                paths: read_paths(r, "paths", limits).await?,
            },
            3 => Request::DumpStorePath {
                path: read_path(r, "path").await?,
            },
            4 => Request::ImportPaths,
            5 => Request::ExportPaths {
                sign: read_bool(r, "sign").await?,
                paths: read_paths(r, "paths", limits).await?,
            },
            6 => Request::BuildPaths {
                paths: read_strings(r, "paths", limits).await?,
                options: BuildOptions::read(r, minor).await?,
            },
            7 => Request::QueryClosure {
                include_outputs: read_bool(r, "includeOutputs").await?,
                paths: read_paths(r, "paths", limits).await?,
            },
            8 => Request::BuildDerivation {
                drv_path: read_path(r, "drvPath").await?,
                drv: BasicDerivation::read(r, limits).await?,
                options: BuildOptions::read(r, minor).await?,
            },
            9 if minor >= 5 => Request::AddToStoreNar {
                info: ValidPathInfo::read_add_header(r, limits).await?,
            },
            other => return Err(Error::UnknownCommand(other)),
        };
        Ok(Some(req))
    }

    pub fn write(&self, buf: &mut Vec<u8>, version: ServeVersion) {
        let minor = version.minor();
        put_u64(buf, self.command() as u64);
        match self {
            Request::QueryValidPaths {
                lock,
                substitute,
                paths,
            } => {
                put_bool(buf, *lock);
                put_bool(buf, *substitute);
                put_paths(buf, paths.iter());
            }
            Request::QueryPathInfos { paths } => put_paths(buf, paths.iter()),
            Request::DumpStorePath { path } => put_str(buf, path.as_str()),
            Request::ImportPaths => {}
            Request::ExportPaths { sign, paths } => {
                put_bool(buf, *sign);
                put_paths(buf, paths.iter());
            }
            Request::BuildPaths { paths, options } => {
                put_strings(buf, paths);
                options.write(buf, minor);
            }
            Request::QueryClosure {
                include_outputs,
                paths,
            } => {
                put_bool(buf, *include_outputs);
                put_paths(buf, paths.iter());
            }
            Request::BuildDerivation {
                drv_path,
                drv,
                options,
            } => {
                put_str(buf, drv_path.as_str());
                drv.write(buf);
                options.write(buf, minor);
            }
            Request::AddToStoreNar { info } => info.write_add_header(buf),
        }
    }
}

//! Shared by the golden-transcript tests: loading `tests/golden/serve/*`
//! and decoding both directions of a serve conversation with the crate's
//! own readers, recording the byte range every message came from.
//!
//! All readers run over `&[u8]` cursors, so a decode never waits: it ends
//! in `Ok` or in an error, and the consumed length is `all.len() - rest.len()`.

#![allow(dead_code)] // each test binary uses a different subset

pub mod props;

use std::collections::BTreeMap;
use std::ops::Range;

use nix_relay::wire::build::BuildResult;
use nix_relay::wire::export::{self, ExportTrailer};
use nix_relay::wire::hash::Sha256Hash;
use nix_relay::wire::nar::{NarLimits, NarParser, NarSummary};
use nix_relay::wire::path_info::ValidPathInfo;
use nix_relay::wire::primitives::{read_paths, read_string, read_u64};
use nix_relay::wire::serve::{Request, SERVE_MAGIC_1, SERVE_MAGIC_2, ServeCodec, ServeVersion};
use nix_relay::wire::store_path::StorePath;
use nix_relay::wire::{Error, Limits};

/// Every transcript under tests/golden/serve.
pub const TRANSCRIPTS: &[&str] = &[
    "legacy-226-build",
    "legacy-226-build.2",
    "legacy-226-build.3",
    "legacy-234-build",
    "legacy-234-build.2",
    "legacy-234-build.3",
    "legacy-234-copy-from",
    "legacy-234-copy-to",
    "legacy-copy-from",
    "legacy-copy-to",
    "legacy-export-paths",
    "legacy-fail",
    "legacy-feature",
    "legacy-foreign",
    "legacy-import-paths",
    "legacy-many",
    "legacy-multi",
    "legacy-top",
];

pub struct Transcript {
    pub name: &'static str,
    pub c2s: Vec<u8>,
    pub s2c: Vec<u8>,
}

pub fn load(name: &'static str) -> Transcript {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/serve");
    let read = |ext: &str| {
        let p = dir.join(format!("{name}.{ext}"));
        std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    };
    Transcript {
        name,
        c2s: read("c2s"),
        s2c: read("s2c"),
    }
}

/// A `&[u8]` reader that remembers where it started.
pub struct Cur<'a> {
    pub all: &'a [u8],
    pub rest: &'a [u8],
}

impl<'a> Cur<'a> {
    pub fn new(all: &'a [u8]) -> Self {
        Cur { all, rest: all }
    }
    pub fn pos(&self) -> usize {
        self.all.len() - self.rest.len()
    }
}

/// Parses one NAR from the cursor. Truncation is reported as end of stream.
pub fn parse_nar(cur: &mut Cur<'_>) -> Result<(NarSummary, Range<usize>), Error> {
    let start = cur.pos();
    let mut p = NarParser::new(NarLimits::default());
    let n = p.feed(cur.rest)?;
    cur.rest = &cur.rest[n..];
    if !p.is_done() {
        return Err(Error::UnexpectedEof { field: "NAR" });
    }
    Ok((p.finish()?, start..cur.pos()))
}

#[derive(Debug)]
pub struct ExportEntry {
    pub nar: NarSummary,
    pub nar_range: Range<usize>,
    pub trailer: ExportTrailer,
    /// From the "NIXE" magic to the end of the signature flag.
    pub trailer_range: Range<usize>,
}

/// An export stream: entries, then the `u64 0` end marker.
#[derive(Debug)]
pub struct ExportStream {
    pub entries: Vec<ExportEntry>,
    pub range: Range<usize>,
}

pub async fn read_export_stream(cur: &mut Cur<'_>, limits: &Limits) -> Result<ExportStream, Error> {
    let start = cur.pos();
    let mut entries = Vec::new();
    while export::read_next(&mut cur.rest).await? {
        let (nar, nar_range) = parse_nar(cur)?;
        let t0 = cur.pos();
        let trailer = export::read_trailer(&mut cur.rest, limits).await?;
        entries.push(ExportEntry {
            nar,
            nar_range,
            trailer,
            trailer_range: t0..cur.pos(),
        });
    }
    Ok(ExportStream {
        entries,
        range: start..cur.pos(),
    })
}

#[derive(Debug)]
pub enum Payload {
    None,
    /// The exactly-narSize NAR after an AddToStoreNar header.
    Nar(NarSummary, Range<usize>),
    /// The export stream after ImportPaths.
    Export(ExportStream),
}

#[derive(Debug)]
pub struct ClientMsg {
    pub req: Request,
    /// The command and its request fields, without the payload.
    pub range: Range<usize>,
    pub payload: Payload,
}

impl ClientMsg {
    /// Where the whole message (payload included) ends.
    pub fn end(&self) -> usize {
        match &self.payload {
            Payload::None => self.range.end,
            Payload::Nar(_, r) => r.end,
            Payload::Export(s) => s.range.end,
        }
    }
}

#[derive(Debug)]
pub struct ClientStream {
    pub client_version: ServeVersion,
    pub msgs: Vec<ClientMsg>,
    /// Bytes consumed; equals the input length on success.
    pub end: usize,
}

impl ClientStream {
    pub fn negotiated(&self) -> ServeVersion {
        self.client_version.min(ServeVersion::LATEST)
    }
    pub fn requests(&self) -> Vec<Request> {
        self.msgs.iter().map(|m| m.req.clone()).collect()
    }
}

/// Decodes a client→server byte stream: hello, then requests with their
/// payloads until a clean end of stream.
pub async fn decode_client(bytes: &[u8], limits: &Limits) -> Result<ClientStream, Error> {
    let mut cur = Cur::new(bytes);
    let magic = read_u64(&mut cur.rest, "SERVE_MAGIC_1").await?;
    if magic != SERVE_MAGIC_1 {
        return Err(Error::BadMagic {
            got: magic,
            expected: SERVE_MAGIC_1,
        });
    }
    let client_version = ServeVersion(read_u64(&mut cur.rest, "clientVersion").await?);
    let version = client_version.min(ServeVersion::LATEST);
    let mut msgs = Vec::new();
    loop {
        let start = cur.pos();
        let Some(req) = Request::read(&mut cur.rest, version, limits).await? else {
            break;
        };
        let range = start..cur.pos();
        let payload = match &req {
            Request::AddToStoreNar { info } => {
                let nar_start = cur.pos();
                let size = usize::try_from(info.nar_size).unwrap_or(usize::MAX);
                if cur.rest.len() < size {
                    return Err(Error::UnexpectedEof { field: "NAR" });
                }
                let mut nar_cur = Cur::new(&cur.rest[..size]);
                let (summary, _) = parse_nar(&mut nar_cur)?;
                if !nar_cur.rest.is_empty() {
                    return Err(Error::Protocol("NAR shorter than narSize".into()));
                }
                cur.rest = &cur.rest[size..];
                Payload::Nar(summary, nar_start..cur.pos())
            }
            Request::ImportPaths => Payload::Export(read_export_stream(&mut cur, limits).await?),
            _ => Payload::None,
        };
        msgs.push(ClientMsg {
            req,
            range,
            payload,
        });
    }
    Ok(ClientStream {
        client_version,
        msgs,
        end: cur.pos(),
    })
}

#[derive(Debug)]
pub enum Response {
    /// QueryValidPaths, QueryClosure.
    Paths(Vec<StorePath>),
    /// QueryPathInfos: each record with the downloadSize it carried.
    PathInfos(Vec<(ValidPathInfo, u64)>),
    /// ImportPaths, AddToStoreNar.
    Ack,
    /// BuildPaths: `0`, or a code and a message.
    BuildPaths(u64, Option<Vec<u8>>),
    Build(BuildResult),
    /// DumpStorePath.
    Nar(NarSummary),
    /// ExportPaths.
    Export(ExportStream),
}

#[derive(Debug)]
pub struct ServerStream {
    pub server_version: ServeVersion,
    pub responses: Vec<(Response, Range<usize>)>,
    pub end: usize,
}

/// Decodes a server→client stream given the requests it answers. A clean
/// end of stream at a response boundary ends the decode with `Ok`.
pub async fn decode_server(
    bytes: &[u8],
    requests: &[Request],
    version: ServeVersion,
    limits: &Limits,
) -> Result<ServerStream, Error> {
    let mut cur = Cur::new(bytes);
    let magic = read_u64(&mut cur.rest, "SERVE_MAGIC_2").await?;
    if magic != SERVE_MAGIC_2 {
        return Err(Error::BadMagic {
            got: magic,
            expected: SERVE_MAGIC_2,
        });
    }
    let server_version = ServeVersion(read_u64(&mut cur.rest, "serverVersion").await?);
    let minor = version.minor();
    let mut responses = Vec::new();
    for req in requests {
        if cur.rest.is_empty() {
            break;
        }
        let start = cur.pos();
        let resp = match req {
            Request::QueryValidPaths { .. } | Request::QueryClosure { .. } => {
                Response::Paths(read_paths(&mut cur.rest, "paths", limits).await?)
            }
            Request::QueryPathInfos { .. } => {
                let mut infos = Vec::new();
                loop {
                    let path = read_string(&mut cur.rest, "path", Limits::MAX_PATH_BYTES).await?;
                    if path.is_empty() {
                        break;
                    }
                    let path = StorePath::parse(&path)?;
                    infos.push(
                        ValidPathInfo::read_serve_record(&mut cur.rest, path, minor, limits)
                            .await?,
                    );
                }
                Response::PathInfos(infos)
            }
            Request::DumpStorePath { .. } => Response::Nar(parse_nar(&mut cur)?.0),
            Request::ImportPaths | Request::AddToStoreNar { .. } => {
                ServeCodec::new(ServeVersion::LATEST, *limits)
                    .read_ack(&mut cur.rest, "ack")
                    .await?;
                Response::Ack
            }
            Request::ExportPaths { .. } => {
                Response::Export(read_export_stream(&mut cur, limits).await?)
            }
            Request::BuildPaths { .. } => {
                let code = read_u64(&mut cur.rest, "status").await?;
                let msg = if code == 0 {
                    None
                } else {
                    let m = nix_relay::wire::primitives::read_bytes(
                        &mut cur.rest,
                        "msg",
                        limits.max_string_bytes,
                    );
                    Some(m.await?)
                };
                Response::BuildPaths(code, msg)
            }
            Request::BuildDerivation { .. } => {
                Response::Build(BuildResult::read_serve(&mut cur.rest, minor, limits).await?)
            }
        };
        responses.push((resp, start..cur.pos()));
    }
    // Anything after the last expected response is undecoded.
    if !cur.rest.is_empty() {
        return Err(Error::Protocol(format!(
            "{} undecoded bytes after the last response",
            cur.rest.len()
        )));
    }
    Ok(ServerStream {
        server_version,
        responses,
        end: cur.pos(),
    })
}

/// narHash of every path seen in QueryPathInfos replies.
pub fn known_nar_hashes(s: &ServerStream) -> BTreeMap<StorePath, (Sha256Hash, u64)> {
    let mut m = BTreeMap::new();
    for (r, _) in &s.responses {
        if let Response::PathInfos(infos) = r {
            for (i, _) in infos {
                m.insert(i.path.clone(), (i.nar_hash, i.nar_size));
            }
        }
    }
    m
}

/// Prefix lengths to try for a stream of `len` bytes: all of them up to
/// `full_below`; beyond, every byte of the first 4 KiB, ±16 bytes around
/// each boundary, every `stride`-th length and the full length.
pub fn prefix_lengths(
    len: usize,
    boundaries: &[usize],
    full_below: usize,
    stride: usize,
) -> Vec<usize> {
    if len <= full_below {
        return (0..=len).collect();
    }
    let mut v: Vec<usize> = (0..=4096.min(len)).collect();
    for &b in boundaries {
        v.extend(b.saturating_sub(16)..=(b + 16).min(len));
    }
    v.extend((0..len).step_by(stride));
    v.push(len);
    v.sort_unstable();
    v.dedup();
    v
}

/// Runs `f` on its own thread and fails if it has not finished after
/// `budget`: catches busy loops that a tokio timeout cannot interrupt.
/// `progress` is shown in the failure message.
pub fn with_watchdog<F>(budget: std::time::Duration, f: F)
where
    F: FnOnce(std::sync::Arc<std::sync::Mutex<String>>) + Send + 'static,
{
    use std::sync::{Arc, Mutex, mpsc};
    let progress = Arc::new(Mutex::new(String::from("not started")));
    let (tx, rx) = mpsc::channel::<()>();
    let p = progress.clone();
    let h = std::thread::spawn(move || {
        f(p);
        let _ = tx.send(());
    });
    match rx.recv_timeout(budget) {
        Ok(()) => h.join().expect("worker thread"),
        Err(mpsc::RecvTimeoutError::Disconnected) => {
            // The worker panicked: re-raise its panic here.
            if let Err(e) = h.join() {
                std::panic::resume_unwind(e);
            }
        }
        Err(mpsc::RecvTimeoutError::Timeout) => {
            let at = progress.lock().map(|s| s.clone()).unwrap_or_default();
            panic!("no progress within {budget:?}: stuck at {at}");
        }
    }
}

/// A current-thread tokio runtime with timers (for `with_watchdog` bodies).
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
}

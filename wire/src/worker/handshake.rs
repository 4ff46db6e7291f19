//! Both sides of the worker handshake (grammar in the module above).
//!
//! The server reads only the magic before answering: Nix ≤ 2.22 clients
//! send the magic and wait for the server's hello, Nix ≥ 2.23 clients send
//! magic and version at once. Reading the version after answering serves
//! both. The relay offers no protocol features (feature lists are empty).

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::super::primitives::*;
use super::super::{Error, Limits, Result};
use super::stderr::{StderrEnd, StderrMsg, read_stderr_stream};
use super::{Trust, WORKER_MAGIC_1, WORKER_MAGIC_2, WorkerVersion};

/// Features the relay offers (none yet).
pub const RELAY_FEATURES: &[&str] = &[];
/// Bounds on a peer's feature list and version string.
const MAX_FEATURES: usize = 64;
const MAX_FEATURE_BYTES: usize = 256;
const MAX_VERSION_BYTES: usize = 256;
/// Startup messages a client keeps from the server before `STDERR_LAST`.
const MAX_STARTUP_MSGS: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerHandshake {
    /// Negotiated: min(client, ours).
    pub version: WorkerVersion,
    /// What the client offered (V ≥ 1.38).
    pub client_features: Vec<String>,
    /// Negotiated: offered by both sides.
    pub features: Vec<String>,
    /// The obsolete CPU affinity, when the client sent one.
    pub cpu_affinity: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHandshake {
    pub version: WorkerVersion,
    /// The server's Nix version (V ≥ 1.33).
    pub daemon_version: Option<String>,
    /// V ≥ 1.35.
    pub trust: Option<Trust>,
    /// Negotiated features (V ≥ 1.38).
    pub features: Vec<String>,
    /// Messages the server sent before `STDERR_LAST` (startup warnings).
    pub messages: Vec<StderrMsg>,
}

async fn send<W: AsyncWrite + Unpin>(w: &mut W, buf: &[u8]) -> Result<()> {
    w.write_all(buf).await.map_err(Error::Write)?;
    w.flush().await.map_err(Error::Write)
}

async fn expect_magic<R: AsyncRead + Unpin>(
    r: &mut R,
    field: &'static str,
    expected: u64,
) -> Result<()> {
    let got = read_u64(r, field).await?;
    if got != expected {
        return Err(Error::BadMagic { got, expected });
    }
    Ok(())
}

async fn read_features<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<String>> {
    let limits = Limits {
        max_string_bytes: MAX_FEATURE_BYTES,
        max_collection_len: MAX_FEATURES,
        ..Limits::default()
    };
    read_strings(r, "features", &limits).await
}

fn put_features(buf: &mut Vec<u8>) {
    put_strs(buf, RELAY_FEATURES.iter().map(|f| f.as_bytes()));
}

fn intersect(theirs: &[String]) -> Vec<String> {
    let mut v: Vec<String> = theirs
        .iter()
        .filter(|f| RELAY_FEATURES.contains(&f.as_str()))
        .cloned()
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Server side, up to (not including) the STDERR stream: the caller then
/// sends any startup messages and `STDERR_LAST` (or `STDERR_ERROR`).
pub async fn server_handshake<R, W>(
    r: &mut R,
    w: &mut W,
    our_max: WorkerVersion,
    nix_version: &str,
    trust: Trust,
) -> Result<ServerHandshake>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    expect_magic(r, "WORKER_MAGIC_1", WORKER_MAGIC_1).await?;
    let mut buf = Vec::with_capacity(64);
    put_u64(&mut buf, WORKER_MAGIC_2);
    put_u64(&mut buf, our_max.0);
    send(w, &buf).await?;
    let client = WorkerVersion::check_peer(read_u64(r, "clientVersion").await?)?;
    let version = client.min(our_max);
    let minor = version.minor();
    let mut client_features = Vec::new();
    if minor >= 38 {
        client_features = read_features(r).await?;
        buf.clear();
        put_features(&mut buf);
        send(w, &buf).await?;
    }
    let mut cpu_affinity = None;
    if minor >= 14 && read_bool(r, "cpuAffinity").await? {
        cpu_affinity = Some(read_u64(r, "cpu").await?);
    }
    if minor >= 11 {
        read_u64(r, "reserveSpace").await?;
    }
    buf.clear();
    if minor >= 33 {
        put_str(&mut buf, nix_version);
    }
    if minor >= 35 {
        put_u64(&mut buf, trust as u64);
    }
    send(w, &buf).await?;
    Ok(ServerHandshake {
        version,
        features: intersect(&client_features),
        client_features,
        cpu_affinity,
    })
}

/// Client side, through the server's `STDERR_LAST`. Sends magic and
/// version together (as Nix ≥ 2.23 does; older servers read the version
/// after answering anyway). A `STDERR_ERROR` becomes `Error::Protocol`.
pub async fn client_handshake<R, W>(
    r: &mut R,
    w: &mut W,
    our_max: WorkerVersion,
    limits: &Limits,
) -> Result<ClientHandshake>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::with_capacity(64);
    put_u64(&mut buf, WORKER_MAGIC_1);
    put_u64(&mut buf, our_max.0);
    send(w, &buf).await?;
    expect_magic(r, "WORKER_MAGIC_2", WORKER_MAGIC_2).await?;
    let server = WorkerVersion::check_peer(read_u64(r, "serverVersion").await?)?;
    let version = server.min(our_max);
    let minor = version.minor();
    let mut features = Vec::new();
    if minor >= 38 {
        buf.clear();
        put_features(&mut buf);
        send(w, &buf).await?;
        features = intersect(&read_features(r).await?);
    }
    buf.clear();
    if minor >= 14 {
        put_u64(&mut buf, 0);
    }
    if minor >= 11 {
        put_u64(&mut buf, 0);
    }
    send(w, &buf).await?;
    let mut hs = ClientHandshake {
        version,
        daemon_version: None,
        trust: None,
        features,
        messages: Vec::new(),
    };
    if minor >= 33 {
        hs.daemon_version = Some(read_string(r, "nixVersion", MAX_VERSION_BYTES).await?);
    }
    if minor >= 35 {
        hs.trust = Some(Trust::from_u64(read_u64(r, "trust").await?)?);
    }
    let messages = &mut hs.messages;
    let end = read_stderr_stream(r, version, limits, |m| {
        if messages.len() >= MAX_STARTUP_MSGS {
            return Err(Error::Protocol("too many startup messages".into()));
        }
        messages.push(m);
        Ok(())
    })
    .await?;
    match end {
        StderrEnd::Last => Ok(hs),
        StderrEnd::Error(e) => Err(Error::Protocol(format!(
            "daemon refused the connection: {}",
            String::from_utf8_lossy(&e.message)
        ))),
    }
}

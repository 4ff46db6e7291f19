//! Connections to backends: a serve-protocol client (`ssh://`, `local`)
//! or a worker-protocol client (`ssh-ng://`) over SSH (russh) or a local
//! subprocess, behind one [`Client`].
//!
//! Invariant: a [`BackendConn`] owns its transport; dropping it closes the
//! SSH connection or kills the subprocess, which makes the remote
//! `nix-store --serve` or `nix-daemon --stdio` stop whatever it was building.
//! [`pool`] keeps idle connections warm between builds and takes back only
//! those whose last operation completed ([`Client::is_idle`]).
//!
//! A connection's stderr goes through a switch ([`LogSwitch`]):
//! [`BackendConn::set_log`] points it at the event sink of the build now
//! using the connection, so each build gets its own log, and
//! [`BackendConn::detach_log`] lets it go once the build is over. Whoever
//! reads the stderr (the SSH channel's pump, or the subprocess's reader
//! task) publishes into that sink directly: no queue, nothing waits. A
//! worker client sends SetOptions before each build ([`Options`]: the
//! client's own worker settings when it sent any) and frames its uploads.

mod client;
mod conn;
pub mod pool;
mod worker;

use std::process::Stdio;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};

use crate::buildlog::{EventSink, LogSwitch};
use crate::config::{Backend, BackendUri, Protocol};
use crate::ssh::stall::{Watch, Watched};
use crate::wire::serve::{self, ServeVersion};
use crate::wire::worker::WorkerVersion;
pub use client::ServeClient;
pub use conn::Client;
pub use pool::{Kind, Lease, Pool, PoolLimits};
pub use worker::{Options, WorkerClient};

/// The command serve backends (`ssh://`, `local`) run.
pub const SERVE_COMMAND: &str = "nix-store --serve --write";
/// The command worker backends (`ssh-ng://`) run.
pub const WORKER_COMMAND: &str = "nix-daemon --stdio";

fn base_command(protocol: Protocol) -> &'static str {
    match protocol {
        Protocol::Serve => SERVE_COMMAND,
        Protocol::Worker => WORKER_COMMAND,
    }
}

/// The remote command line, with `--store` if the backend names one.
fn remote_command(b: &Backend) -> String {
    let base = base_command(b.uri.protocol());
    match &b.store {
        Some(s) => format!("{base} --store '{s}'"),
        None => base.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("backend {backend}: {backend} is missing ssh_key or host_key")]
    Incomplete { backend: String },
    #[error("backend {backend}")]
    Ssh {
        backend: String,
        #[source]
        source: Box<crate::ssh::client::Error>,
    },
    #[error("backend {backend}: starting `{command}`")]
    Spawn {
        backend: String,
        command: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("backend {backend}: {protocol} handshake")]
    Handshake {
        backend: String,
        protocol: Protocol,
        #[source]
        source: crate::wire::Error,
    },
    #[error("backend {backend}: not connected and past its handshake within {after:?}")]
    ConnectTimeout {
        backend: String,
        after: std::time::Duration,
    },
    #[cfg(feature = "testing")]
    #[error("backend {backend}: connecting to the in-process fake")]
    Fake {
        backend: String,
        #[source]
        source: std::io::Error,
    },
    #[error("backend {backend} speaks serve protocol {version}, the relay needs at least 2.5")]
    TooOld {
        backend: String,
        version: ServeVersion,
    },
}

enum Transport {
    Ssh {
        handle: std::sync::Arc<russh::client::Handle<crate::ssh::client::Pinned>>,
        ended: tokio::task::JoinHandle<crate::ssh::ChannelEnd>,
    },
    Local {
        child: tokio::process::Child,
    },
    /// An in-process fake (`crate::testing::fake`): dropping the guard
    /// ends the fake's task, as dropping an SSH connection ends its command.
    #[cfg(feature = "testing")]
    InProcess {
        _stop: tokio_util::sync::DropGuard,
        ended: tokio::task::JoinHandle<()>,
    },
}

/// The reading half of a backend connection.
pub type ConnReader = BufReader<Box<dyn AsyncRead + Send + Sync + Unpin>>;
/// The writing half of a backend connection.
pub type ConnWriter = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// One live `nix-store --serve --write` or `nix-daemon --stdio` on a backend.
pub struct BackendConn {
    pub name: String,
    pub client: Client,
    /// Where the backend's stderr goes now (the build using the connection).
    log: LogSwitch,
    transport: Transport,
    /// Keepalives and the stall watch (SSH backends); see [`crate::ssh::stall`].
    watched: Option<Watched>,
}

impl BackendConn {
    /// Sends the backend's stderr to `log` from now on (`None`: nowhere).
    pub fn set_log(&self, log: Option<Arc<dyn EventSink>>) {
        self.log.set(log);
    }

    /// Stops sending the backend's stderr to the current build's log. What
    /// the backend wrote before a reply was published before the reply
    /// was read (an SSH channel's pump handles its messages in order and
    /// publishes stderr as it reads it), so nothing of this build is lost.
    pub fn detach_log(&self) {
        self.set_log(None);
    }

    /// Whether the transport is still open: the SSH connection and its
    /// channel, or the subprocess; a stalled backend's is not.
    pub fn transport_open(&mut self) -> bool {
        if self
            .watched
            .as_ref()
            .is_some_and(|w| w.stalled.is_cancelled())
        {
            return false;
        }
        match &mut self.transport {
            Transport::Ssh { handle, ended } => !handle.is_closed() && !ended.is_finished(),
            Transport::Local { child } => matches!(child.try_wait(), Ok(None)),
            #[cfg(feature = "testing")]
            Transport::InProcess { ended, .. } => !ended.is_finished(),
        }
    }
}

/// Connects to `b`, runs its command and completes the handshake, all
/// within one `connect_timeout` (a backend that accepts SSH and then hangs
/// costs no more than one that does not answer). The backend's stderr goes
/// to `log` (for serve backends, the build log) until
/// [`BackendConn::set_log`] points it elsewhere.
pub async fn connect(
    b: &Backend,
    log: Option<Arc<dyn EventSink>>,
    limits: crate::wire::Limits,
) -> Result<BackendConn, Error> {
    connect_watched(b, log, limits, None).await
}

/// [`connect`]; an SSH backend is also kept alive and watched for stalls
/// with `watch` (see [`crate::ssh::stall`]).
pub async fn connect_watched(
    b: &Backend,
    log: Option<Arc<dyn EventSink>>,
    limits: crate::wire::Limits,
    watch: Option<Watch>,
) -> Result<BackendConn, Error> {
    let connecting = connect_untimed(b, log, limits, watch);
    match tokio::time::timeout(b.connect_timeout, connecting).await {
        Ok(r) => r,
        Err(_) => Err(Error::ConnectTimeout {
            backend: b.name.clone(),
            after: b.connect_timeout,
        }),
    }
}

async fn connect_untimed(
    b: &Backend,
    log: Option<Arc<dyn EventSink>>,
    limits: crate::wire::Limits,
    watch: Option<Watch>,
) -> Result<BackendConn, Error> {
    let switch = LogSwitch::to(log);
    let log = switch.clone();
    let (r, w, transport, watched): (
        Box<dyn AsyncRead + Send + Sync + Unpin>,
        Box<dyn AsyncWrite + Send + Sync + Unpin>,
        _,
        _,
    ) = match &b.uri {
        // No keepalive reaches a subprocess: a silent local build is
        // indistinguishable from a stuck one, so none is watched.
        BackendUri::Local => {
            let (r, w, child) = spawn_local(b, log)?;
            (r, w, Transport::Local { child }, None)
        }
        #[cfg(any(test, feature = "testing"))]
        BackendUri::LocalWorker => {
            let (r, w, child) = spawn_local(b, log)?;
            (r, w, Transport::Local { child }, None)
        }
        #[cfg(feature = "testing")]
        BackendUri::Fake { name, protocol } => {
            let c =
                crate::testing::fake::connect(name, *protocol).map_err(|source| Error::Fake {
                    backend: b.name.clone(),
                    source,
                })?;
            // The same stderr path as a subprocess's.
            tokio::spawn(forward_stderr(c.stderr, log));
            let transport = Transport::InProcess {
                _stop: c.stop,
                ended: c.ended,
            };
            (c.stdout, c.stdin, transport, None)
        }
        BackendUri::Ssh {
            user, host, port, ..
        } => {
            let (Some(key_file), Some(host_key)) = (&b.ssh_key, &b.host_key) else {
                return Err(Error::Incomplete {
                    backend: b.name.clone(),
                });
            };
            let target = crate::ssh::client::Target {
                user,
                host,
                port: *port,
                key_file,
                host_key,
                timeout: b.connect_timeout,
            };
            let command = remote_command(b);
            let exec = crate::ssh::client::exec_watched(&target, &command, Some(log), watch)
                .await
                .map_err(|source| Error::Ssh {
                    backend: b.name.clone(),
                    source: Box::new(source),
                })?;
            let transport = Transport::Ssh {
                handle: exec.handle,
                ended: exec.ended,
            };
            (exec.stdout, exec.stdin, transport, exec.watched)
        }
    };
    let r = BufReader::with_capacity(256 << 10, r);
    let client = match b.uri.protocol() {
        Protocol::Serve => handshake_serve(b, r, w, limits).await?,
        Protocol::Worker => handshake_worker(b, r, w, limits).await?,
    };
    Ok(BackendConn {
        name: b.name.clone(),
        client,
        log: switch,
        transport,
        watched,
    })
}

/// Runs `handshake` within the backend's connect timeout.
async fn timed<T>(
    b: &Backend,
    protocol: Protocol,
    handshake: impl Future<Output = crate::wire::Result<T>>,
) -> Result<T, Error> {
    let source = match tokio::time::timeout(b.connect_timeout, handshake).await {
        Ok(Ok(v)) => return Ok(v),
        Ok(Err(source)) => source,
        Err(_) => crate::wire::Error::Protocol(format!("no answer within {:?}", b.connect_timeout)),
    };
    Err(Error::Handshake {
        backend: b.name.clone(),
        protocol,
        source,
    })
}

async fn handshake_serve(
    b: &Backend,
    mut r: ConnReader,
    mut w: ConnWriter,
    limits: crate::wire::Limits,
) -> Result<Client, Error> {
    let hs = serve::client_handshake(&mut r, &mut w);
    let version = timed(b, Protocol::Serve, hs).await?;
    tracing::debug!(backend = %b.name, %version, "serve handshake done");
    if version < ServeVersion::MIN_BACKEND {
        return Err(Error::TooOld {
            backend: b.name.clone(),
            version,
        });
    }
    Ok(Client::Serve(ServeClient::new(r, w, version, limits)))
}

async fn handshake_worker(
    b: &Backend,
    mut r: ConnReader,
    mut w: ConnWriter,
    limits: crate::wire::Limits,
) -> Result<Client, Error> {
    let hs = crate::wire::worker::client_handshake(&mut r, &mut w, WorkerVersion::LATEST, &limits);
    let hs = timed(b, Protocol::Worker, hs).await?;
    tracing::debug!(
        backend = %b.name,
        version = %hs.version,
        daemon = hs.daemon_version.as_deref().unwrap_or("?"),
        "worker handshake done"
    );
    Ok(Client::Worker(WorkerClient::new(r, w, hs.version, limits)))
}

type Pipes = (
    Box<dyn AsyncRead + Send + Sync + Unpin>,
    Box<dyn AsyncWrite + Send + Sync + Unpin>,
    tokio::process::Child,
);

/// `nix-store --serve --write` or `nix-daemon --stdio` as a subprocess.
fn spawn_local(b: &Backend, log: LogSwitch) -> Result<Pipes, Error> {
    let command = base_command(b.uri.protocol());
    let spawn_err = |source| Error::Spawn {
        backend: b.name.clone(),
        command,
        source,
    };
    let mut words = command.split(' ');
    let program = words.next().unwrap_or(command);
    let mut child = tokio::process::Command::new(program)
        .args(words)
        .args(b.store.iter().flat_map(|s| ["--store", s.as_str()]))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(spawn_err)?;
    let missing = || spawn_err(std::io::Error::other("child has no pipes"));
    let stdin = child.stdin.take().ok_or_else(missing)?;
    let stdout = child.stdout.take().ok_or_else(missing)?;
    let stderr = child.stderr.take().ok_or_else(missing)?;
    tokio::spawn(forward_stderr(stderr, log));
    Ok((Box::new(stdout), Box::new(stdin), child))
}

/// Publishes a subprocess's (or fake's) stderr to its connection's switch.
async fn forward_stderr(mut stderr: impl AsyncRead + Unpin, log: LogSwitch) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0 {
            break;
        }
        log.log(bytes::Bytes::copy_from_slice(&buf[..n]));
    }
}

//! Connections to backends: a serve-protocol client over SSH (russh) or
//! over a local `nix-store --serve --write` subprocess.
//!
//! Invariant: a [`BackendConn`] owns its transport; dropping it closes the
//! SSH connection or kills the subprocess, which makes the remote
//! `nix-store --serve` stop whatever it was building.

mod client;

use std::process::Stdio;

use tokio::io::{AsyncRead, AsyncWrite, BufReader};

use crate::config::{Backend, BackendUri};
use crate::ssh::LogSink;
use crate::wire::serve::{self, ServeVersion};
pub use client::ServeClient;

/// The command every backend runs.
pub const SERVE_COMMAND: &str = "nix-store --serve --write";

/// The remote command line, with `--store` if the backend names one.
fn serve_command(b: &Backend) -> String {
    match &b.store {
        Some(s) => format!("{SERVE_COMMAND} --store '{s}'"),
        None => SERVE_COMMAND.to_owned(),
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
    #[error("backend {backend}: starting `{SERVE_COMMAND}`")]
    Spawn {
        backend: String,
        #[source]
        source: std::io::Error,
    },
    #[error("backend {backend}: serve handshake")]
    Handshake {
        backend: String,
        #[source]
        source: crate::wire::Error,
    },
    #[error("backend {backend} speaks serve protocol {version}, the relay needs at least 2.5")]
    TooOld {
        backend: String,
        version: ServeVersion,
    },
}

enum Transport {
    Ssh {
        _handle: russh::client::Handle<crate::ssh::client::Pinned>,
        _ended: tokio::task::JoinHandle<crate::ssh::ChannelEnd>,
    },
    Local {
        _child: tokio::process::Child,
    },
}

/// One live `nix-store --serve --write` on a backend.
pub struct BackendConn {
    pub name: String,
    pub client: ServeClient<
        BufReader<Box<dyn AsyncRead + Send + Sync + Unpin>>,
        Box<dyn AsyncWrite + Send + Sync + Unpin>,
    >,
    _transport: Transport,
}

/// Connects to `b`, runs the serve command and completes the handshake.
/// The backend's stderr (its build log) goes to `log`.
pub async fn connect(
    b: &Backend,
    log: LogSink,
    limits: crate::wire::Limits,
) -> Result<BackendConn, Error> {
    let (r, w, transport): (
        Box<dyn AsyncRead + Send + Sync + Unpin>,
        Box<dyn AsyncWrite + Send + Sync + Unpin>,
        _,
    ) = match &b.uri {
        BackendUri::Local => {
            let (r, w, child) = spawn_local(b, log)?;
            (r, w, Transport::Local { _child: child })
        }
        BackendUri::Ssh { user, host, port } => {
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
            let exec = crate::ssh::client::exec(&target, &serve_command(b), Some(log))
                .await
                .map_err(|source| Error::Ssh {
                    backend: b.name.clone(),
                    source: Box::new(source),
                })?;
            let transport = Transport::Ssh {
                _handle: exec.handle,
                _ended: exec.ended,
            };
            (Box::new(exec.stdout), exec.stdin, transport)
        }
    };
    let mut r = BufReader::with_capacity(256 << 10, r);
    let mut w = w;
    let handshake =
        tokio::time::timeout(b.connect_timeout, serve::client_handshake(&mut r, &mut w));
    let version = match handshake.await {
        Ok(Ok(v)) => v,
        Ok(Err(source)) => {
            return Err(Error::Handshake {
                backend: b.name.clone(),
                source,
            });
        }
        Err(_) => {
            return Err(Error::Handshake {
                backend: b.name.clone(),
                source: crate::wire::Error::Protocol(format!(
                    "no answer within {:?}",
                    b.connect_timeout
                )),
            });
        }
    };
    if version < ServeVersion::MIN_BACKEND {
        return Err(Error::TooOld {
            backend: b.name.clone(),
            version,
        });
    }
    Ok(BackendConn {
        name: b.name.clone(),
        client: ServeClient::new(r, w, version, limits),
        _transport: transport,
    })
}

type Pipes = (
    Box<dyn AsyncRead + Send + Sync + Unpin>,
    Box<dyn AsyncWrite + Send + Sync + Unpin>,
    tokio::process::Child,
);

fn spawn_local(b: &Backend, log: LogSink) -> Result<Pipes, Error> {
    let spawn_err = |source| Error::Spawn {
        backend: b.name.clone(),
        source,
    };
    let mut child = tokio::process::Command::new("nix-store")
        .args(["--serve", "--write"])
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

async fn forward_stderr(mut stderr: tokio::process::ChildStderr, log: LogSink) {
    use tokio::io::AsyncReadExt;
    let mut buf = vec![0u8; 16 << 10];
    while let Ok(n) = stderr.read(&mut buf).await {
        if n == 0
            || log
                .send(bytes::Bytes::copy_from_slice(&buf[..n]))
                .await
                .is_err()
        {
            break;
        }
    }
}

//! The relay as an SSH client of its backends: public-key login with a key
//! file, the backend's host key pinned from the config (no trust on first
//! use), one exec channel per connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::{PrivateKeyWithHashAlg, PublicKey, PublicKeyOrCertificate};
use tokio::io::AsyncWrite;
use tokio_util::sync::CancellationToken;

use super::deadline::Cuttable;
use super::stall::{self, Alive, Pinger, Watch, Watched};
use super::{ChannelEnd, ChannelSource, LogSwitch, PIPE_BYTES, pump};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("loading SSH key {path}")]
    Key {
        path: String,
        #[source]
        source: russh::keys::Error,
    },
    #[error("connecting to {addr} timed out after {after:?}")]
    Timeout { addr: String, after: Duration },
    #[error("host key of {addr} does not match the pinned host_key (it offered {offered})")]
    HostKeyMismatch { addr: String, offered: String },
    #[error("connecting to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: russh::Error,
    },
    #[error("{user}@{addr} refused our key")]
    AuthRefused { user: String, addr: String },
    #[error("opening an exec channel on {addr}")]
    Channel {
        addr: String,
        #[source]
        source: russh::Error,
    },
}

pub struct Target<'a> {
    pub user: &'a str,
    pub host: &'a str,
    pub port: u16,
    pub key_file: &'a std::path::Path,
    pub host_key: &'a PublicKey,
    pub timeout: Duration,
}

pub struct Pinned {
    expected: PublicKey,
    offered: Arc<Mutex<Option<String>>>,
}

impl client::Handler for Pinned {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let PublicKeyOrCertificate::PublicKey { key, .. } = key else {
            return Ok(false);
        };
        let ok = key.key_data() == self.expected.key_data();
        if !ok && let Ok(mut o) = self.offered.lock() {
            *o = Some(
                key.to_openssh()
                    .unwrap_or_else(|_| "an unreadable key".into()),
            );
        }
        Ok(ok)
    }
}

/// A running remote command: its stdout as a pipe, its stdin as a writer.
pub struct Exec {
    pub stdout: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>,
    pub stdin: Box<dyn tokio::io::AsyncWrite + Send + Sync + Unpin>,
    pub ended: tokio::task::JoinHandle<ChannelEnd>,
    /// Keeps the connection open; dropping it (and `watched`) disconnects.
    pub handle: Arc<client::Handle<Pinned>>,
    /// The keepalive and stall watch, if asked for; see [`super::stall`].
    pub watched: Option<Watched>,
}

/// AES-GCM first: with AES-NI it costs about a quarter less CPU per byte
/// than chacha20-poly1305, and NARs are most of what crosses this link.
const CIPHERS: &[russh::cipher::Name] = &[
    russh::cipher::AES_256_GCM,
    russh::cipher::AES_128_GCM,
    russh::cipher::CHACHA20_POLY1305,
    russh::cipher::AES_256_CTR,
];

fn config() -> Arc<client::Config> {
    Arc::new(client::Config {
        nodelay: true,
        inactivity_timeout: None,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(CIPHERS),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Connects, authenticates and runs `command`; stderr goes to `log`.
pub async fn exec(t: &Target<'_>, command: &str, log: Option<LogSwitch>) -> Result<Exec, Error> {
    exec_watched(t, command, log, None).await
}

/// [`exec`], with keepalives and a stall watch when `watch` is set: a
/// backend silent for its stall timeout gets its connection cut.
pub async fn exec_watched(
    t: &Target<'_>,
    command: &str,
    log: Option<LogSwitch>,
    watch: Option<Watch>,
) -> Result<Exec, Error> {
    let addr = format!("{}:{}", t.host, t.port);
    let key = russh::keys::load_secret_key(t.key_file, None).map_err(|source| Error::Key {
        path: t.key_file.display().to_string(),
        source,
    })?;
    let offered = Arc::new(Mutex::new(None));
    let handler = Pinned {
        expected: t.host_key.clone(),
        offered: offered.clone(),
    };
    let connect = client::connect(config(), (t.host, t.port), handler);
    let mut handle = match tokio::time::timeout(t.timeout, connect).await {
        Err(_) => {
            return Err(Error::Timeout {
                addr,
                after: t.timeout,
            });
        }
        Ok(Err(source)) => {
            if let Some(offered) = offered.lock().ok().and_then(|o| o.clone()) {
                return Err(Error::HostKeyMismatch { addr, offered });
            }
            return Err(Error::Connect { addr, source });
        }
        Ok(Ok(h)) => h,
    };
    let hash = if key.algorithm().is_rsa() {
        handle
            .best_supported_rsa_hash()
            .await
            .ok()
            .flatten()
            .flatten()
    } else {
        None
    };
    let auth = handle
        .authenticate_publickey(t.user, PrivateKeyWithHashAlg::new(Arc::new(key), hash))
        .await
        .map_err(|source| Error::Connect {
            addr: addr.clone(),
            source,
        })?;
    if !auth.success() {
        return Err(Error::AuthRefused {
            user: t.user.into(),
            addr,
        });
    }
    let chan_err = |source| Error::Channel {
        addr: addr.clone(),
        source,
    };
    let channel = handle.channel_open_session().await.map_err(chan_err)?;
    channel.exec(true, command).await.map_err(chan_err)?;
    let (rx, tx) = channel.split();
    let handle = Arc::new(handle);
    let watch = watch.map(|w| (handle.clone(), w, addr));
    let piped = pipe_channel(rx, tx.make_writer(), log, watch);
    Ok(Exec {
        stdout: piped.stdout,
        stdin: piped.stdin,
        ended: piped.ended,
        handle,
        watched: piped.watched,
    })
}

const STALLED: &str = "connection cut: the backend stalled (no output, no keepalive answer)";
const STALLED_OR_CLOSED: &str = "connection cut: the channel closed or the backend stalled";

/// A channel's two directions as a reader and a writer, and its end.
pub struct Piped {
    pub stdout: Box<dyn tokio::io::AsyncRead + Send + Sync + Unpin>,
    pub stdin: Box<dyn AsyncWrite + Send + Sync + Unpin>,
    pub ended: tokio::task::JoinHandle<ChannelEnd>,
    pub watched: Option<Watched>,
}

/// Drains `rx` into a pipe (see [`pump`]) and wraps both directions so they
/// fail once the channel ends (the writer) or the backend stalls (both),
/// when `watch` names a pinger, its timing and the connection.
pub fn pipe_channel<P: Pinger>(
    rx: impl ChannelSource + 'static,
    tx: impl AsyncWrite + Send + Sync + Unpin + 'static,
    log: Option<LogSwitch>,
    watch: Option<(Arc<P>, Watch, String)>,
) -> Piped {
    let (stdout, pipe_in) = tokio::io::simplex(PIPE_BYTES);
    let alive = watch.as_ref().map(|_| Alive::default());
    let watched = watch
        .zip(alive.clone())
        .map(|((pinger, w, what), alive)| stall::spawn(pinger, alive, w, what));
    let stalled = watched
        .as_ref()
        .map_or_else(CancellationToken::new, |w| w.stalled.clone());
    // russh's writer waits for window space without noticing that the
    // connection is gone: cut it when the channel ends, or a write to a
    // dead backend would wait forever.
    let gone = stalled.child_token();
    let on_end = gone.clone();
    let ended = tokio::spawn(async move {
        let end = pump(rx, pipe_in, log, alive).await;
        on_end.cancel();
        end
    });
    Piped {
        stdout: Box::new(Cuttable::because(stdout, stalled, STALLED)),
        stdin: Box::new(Cuttable::because(tx, gone, STALLED_OR_CLOSED)),
        ended,
        watched,
    }
}

//! The SSH front end clients log into.
//!
//! Public-key authentication against the configured client keys, nothing
//! else. Two execs are served: `nix-store --serve [--write]` (the serve
//! protocol) and `nix-daemon --stdio` (the worker protocol); an appended
//! `--store X` is accepted and ignored (the relay has one store). Every
//! other request — another command, a shell, a pty, a
//! subsystem, port or agent forwarding — is refused; where the client can
//! show it, with a one-line reason on stderr and exit status 1.
//!
//! A refused command, a shell or a subsystem gets that reason and exit
//! status 1; a pty, env, X11 or agent request and port or socket forwarding
//! get an SSH-level failure. [`serve_connection`] runs one connection under
//! `limits.handshake_timeout`: a client without an accepted session by then
//! is cut through [`crate::ssh::deadline::Cuttable`], even mid key exchange.

use std::collections::HashMap;
use std::sync::Arc;

use russh::keys::PublicKey;
use russh::server::{self, Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelOpenFailure, ChannelWriteHalf, MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::Client;
use crate::session::{self, ClientId, Core};
use crate::ssh::deadline::Cuttable;
use crate::ssh::{PIPE_BYTES, pump};
use tokio_util::sync::CancellationToken;

pub use super::command::{Command, parse_command};

/// Shared by every connection.
pub struct FrontEnd {
    pub relay: Arc<Core>,
    pub clients: Arc<Vec<Client>>,
    pub sessions: Arc<Semaphore>,
    /// Connections that have not had a session accepted yet
    /// (`limits.max_handshakes`).
    pub handshakes: Arc<Semaphore>,
}

pub fn config(host_key: russh::keys::PrivateKey) -> Arc<server::Config> {
    Arc::new(server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![host_key],
        inactivity_timeout: None,
        keepalive_interval: Some(std::time::Duration::from_secs(30)),
        keepalive_max: 4,
        auth_rejection_time: std::time::Duration::from_millis(200),
        auth_rejection_time_initial: Some(std::time::Duration::ZERO),
        nodelay: true,
        preferred: russh::Preferred {
            cipher: std::borrow::Cow::Borrowed(CIPHERS),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// Only AES-GCM: SSH clients choose by their own order and OpenSSH lists
/// chacha20-poly1305 first, so offering it would always win. With AES
/// instructions (x86 AES-NI, ARMv8 crypto extensions) GCM costs about a
/// quarter less CPU per byte, and the relay handles every byte twice.
/// Every OpenSSH since 6.2 speaks it.
const CIPHERS: &[russh::cipher::Name] = &[russh::cipher::AES_256_GCM, russh::cipher::AES_128_GCM];

/// Runs one client connection. The client must finish the SSH handshake,
/// authenticate and have a `nix-store --serve` / `nix-daemon --stdio` exec
/// accepted within `limits.handshake_timeout`, or the connection is cut
/// (the session's own protocol hello then has the same limit again).
pub async fn serve_connection<S>(
    front: Arc<FrontEnd>,
    cfg: Arc<server::Config>,
    socket: S,
    peer: String,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let limit = front.relay.limits().handshake_timeout;
    let Ok(permit) = front.handshakes.clone().try_acquire_owned() else {
        warn!(%peer, "dropped: max_handshakes connections are already in their handshake");
        return;
    };
    let cut = CancellationToken::new();
    let established = CancellationToken::new();
    let watch = (cut.clone(), established.clone(), peer.clone());
    let deadline = tokio::spawn(async move {
        let (cut, established, peer) = watch;
        let _permit = permit;
        tokio::select! {
            () = established.cancelled() => {}
            () = tokio::time::sleep(limit) => {
                warn!(%peer, "dropped: no session started within handshake_timeout ({limit:?})");
                cut.cancel();
            }
        }
    });
    let mut handler = Conn::new(front, peer);
    handler.established = established;
    match server::run_stream(cfg, Cuttable::new(socket, cut), handler).await {
        Ok(running) => {
            if let Err(e) = running.await {
                debug!("connection ended: {e}");
            }
        }
        Err(e) => debug!("ssh handshake failed: {e}"),
    }
    deadline.abort();
}

/// One SSH connection.
pub struct Conn {
    front: Arc<FrontEnd>,
    peer: String,
    client: Option<ClientId>,
    channels: HashMap<ChannelId, Channel<Msg>>,
    /// Cancelled when the first session is accepted: the handshake deadline
    /// is met.
    established: CancellationToken,
}

impl Conn {
    pub fn new(front: Arc<FrontEnd>, peer: String) -> Self {
        Conn {
            front,
            peer,
            client: None,
            channels: HashMap::new(),
            established: CancellationToken::new(),
        }
    }

    /// Logs a refused SSH-layer request (forwarding, agent, X11, env, pty).
    fn refused(&self, what: &str) {
        info!(peer = %self.peer, client = ?self.client.as_ref().map(|c| &c.name), "refused {what}");
    }

    fn known(&self, key: &PublicKey) -> Option<&Client> {
        self.front
            .clients
            .iter()
            .find(|c| c.key.key_data() == key.key_data())
    }

    /// Refuses an exec or shell: the reason on stderr, exit status 1.
    /// Nothing on stdout: a refused command runs nothing and says nothing
    /// where its output would go.
    fn refuse(&mut self, id: ChannelId, reason: String) {
        self.refuse_with(id, reason, false)
    }

    /// Refuses a serve session Nix asked for (`nix-store --serve`, e.g. over
    /// `max_sessions`): the reason on stdout too, where Nix reads the hello
    /// and shows what it got ("protocol mismatch from 'relay', got
    /// 'nix-relay: …'"), since the build hook may not show ssh's stderr.
    fn refuse_serve(&mut self, id: ChannelId, reason: String) {
        self.refuse_with(id, reason, true)
    }

    fn refuse_with(&mut self, id: ChannelId, reason: String, on_stdout: bool) {
        warn!(peer = %self.peer, client = ?self.client.as_ref().map(|c| &c.name), "refused: {reason}");
        if let Some(ch) = self.channels.remove(&id) {
            let (_, tx) = ch.split();
            tokio::spawn(async move {
                let line = format!("nix-relay: {reason}\n");
                // The client may hang up first; nothing more to tell it then.
                let _ = tx.extended_data_bytes(1, line.clone().into_bytes()).await;
                if on_stdout {
                    let _ = tx.make_writer().write_all(line.as_bytes()).await;
                }
                finish(&tx, 1).await;
            });
        }
    }

    /// Refuses a worker (`nix-daemon --stdio`) session in-band, after its
    /// handshake, so Nix prints the reason (`session::worker::refuse`).
    fn refuse_worker(&mut self, id: ChannelId, reason: String) {
        warn!(peer = %self.peer, client = ?self.client.as_ref().map(|c| &c.name), "refused: {reason}");
        let limit = self.front.relay.limits().handshake_timeout;
        if let Some(ch) = self.channels.remove(&id) {
            let (rx, tx) = ch.split();
            tokio::spawn(async move {
                let (stdin, pipe_in) = tokio::io::simplex(64 << 10);
                let reading = tokio::spawn(pump(rx, pipe_in, None, None));
                let stdin = BufReader::new(stdin);
                let told = session::worker::refuse(stdin, tx.make_writer(), &reason, limit).await;
                if let Err(e) = told {
                    info!(
                        "could not tell the worker client why: {}",
                        crate::error_chain(&e)
                    );
                }
                let line = format!("nix-relay: {reason}\n");
                let _ = tx.extended_data_bytes(1, line.into_bytes()).await;
                finish(&tx, 1).await;
                reading.abort();
            });
        }
    }
}

async fn finish(tx: &ChannelWriteHalf<Msg>, status: u32) {
    let _ = tx.exit_status(status).await;
    let _ = tx.eof().await;
    let _ = tx.close().await;
}

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey_offered(
        &mut self,
        _user: &str,
        offer: PublicKeyOffer<'_>,
    ) -> Result<Auth, Self::Error> {
        Ok(if self.known(offer.public_key).is_some() {
            Auth::Accept
        } else {
            Auth::reject()
        })
    }

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let Some(id) = self.known(key.public_key).map(|c| ClientId {
            name: c.name.clone(),
            trusted: c.trusted,
        }) else {
            info!(peer = %self.peer, user, "unknown key refused");
            return Ok(Auth::reject());
        };
        info!(peer = %self.peer, user, client = %id.name, trusted = id.trusted, "client authenticated");
        self.client = Some(id);
        Ok(Auth::Accept)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), channel);
        reply.accept().await;
        Ok(())
    }

    async fn exec_request(
        &mut self,
        id: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(id)?;
        let proto = match parse_command(data) {
            Command::Serve { write } => Proto::Serve { write },
            Command::Worker => Proto::Worker,
            Command::Refused(reason) => {
                self.refuse(id, reason);
                return Ok(());
            }
        };
        let Ok(permit) = self.front.sessions.clone().try_acquire_owned() else {
            let reason = "too many sessions; try again later".into();
            match proto {
                Proto::Worker => self.refuse_worker(id, reason),
                Proto::Serve { .. } => self.refuse_serve(id, reason),
            }
            return Ok(());
        };
        let Some(ch) = self.channels.remove(&id) else {
            return Ok(());
        };
        let Some(client) = self.client.clone() else {
            return Ok(());
        };
        let name = if proto == Proto::Worker {
            "worker"
        } else {
            "serve"
        };
        self.established.cancel();
        let span = info_span!("session", client = %client.name, peer = %self.peer, proto = name);
        tokio::spawn(
            run_channel(self.front.relay.clone(), ch, proto, client, permit).instrument(span),
        );
        Ok(())
    }

    async fn shell_request(
        &mut self,
        id: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(id)?;
        self.refuse(
            id,
            "no shell here: this is a Nix remote-build endpoint".into(),
        );
        Ok(())
    }

    async fn subsystem_request(
        &mut self,
        id: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        session.channel_success(id)?;
        self.refuse(id, format!("subsystem {name:?} is not served"));
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        id: ChannelId,
        _term: &str,
        _col: u32,
        _row: u32,
        _pw: u32,
        _ph: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused("a pty");
        session.channel_failure(id)?;
        Ok(())
    }

    async fn x11_request(
        &mut self,
        id: ChannelId,
        _single: bool,
        _proto: &str,
        _cookie: &str,
        _screen: u32,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused("X11 forwarding");
        session.channel_failure(id)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        id: ChannelId,
        name: &str,
        _value: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(&format!("environment variable {name:?}"));
        session.channel_failure(id)?;
        Ok(())
    }

    async fn agent_request(
        &mut self,
        _id: ChannelId,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused("agent forwarding");
        Ok(false)
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(&format!("remote port forwarding ({address}:{port})"));
        Ok(false)
    }

    async fn streamlocal_forward(
        &mut self,
        path: &str,
        _session: &mut Session,
    ) -> Result<bool, Self::Error> {
        self.refused(&format!("remote socket forwarding ({path:?})"));
        Ok(false)
    }

    #[allow(clippy::too_many_arguments)]
    async fn channel_open_direct_tcpip(
        &mut self,
        _channel: Channel<Msg>,
        host: &str,
        port: u32,
        _orig: &str,
        _orig_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(&format!("local port forwarding (to {host}:{port})"));
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_direct_streamlocal(
        &mut self,
        _channel: Channel<Msg>,
        path: &str,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused(&format!("local socket forwarding (to {path:?})"));
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }

    async fn channel_open_x11(
        &mut self,
        _channel: Channel<Msg>,
        _orig: &str,
        _orig_port: u32,
        reply: server::ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.refused("an X11 channel");
        reply
            .reject(ChannelOpenFailure::AdministrativelyProhibited)
            .await;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Serve { write: bool },
    Worker,
}

/// Why a session's channel writers fail once the client's channel closed.
pub const CLIENT_GONE: &str = "the client closed its channel (disconnected)";

/// Runs a session on an accepted exec channel; its end sets the exit status.
async fn run_channel(
    relay: Arc<Core>,
    ch: Channel<Msg>,
    proto: Proto,
    client: ClientId,
    _permit: OwnedSemaphorePermit,
) {
    let (rx, tx) = ch.split();
    let (stdin, pipe_in) = tokio::io::simplex(PIPE_BYTES);
    let gone = CancellationToken::new();
    let on_close = gone.clone();
    tokio::spawn(async move {
        pump(rx, pipe_in, None, None).await;
        on_close.cancel();
    });
    let (log, log_rx) = mpsc::channel(64);
    // russh's writers wait for window space without noticing a closed
    // channel: cut them when it closes, so a vanished client cannot leave
    // this session waiting forever.
    let stderr = Cuttable::because(tx.make_writer_ext(Some(1)), gone.clone(), CLIENT_GONE);
    let stderr = tokio::spawn(forward_log(log_rx, stderr));
    let stdout = Cuttable::because(tx.make_writer(), gone.clone(), CLIENT_GONE);
    let stdin = BufReader::with_capacity(256 << 10, stdin);
    let label = match proto {
        Proto::Serve { .. } => "serve",
        Proto::Worker => "worker",
    };
    info!("session started");
    crate::metrics::session_started(label);
    let result = match proto {
        Proto::Serve { write } => {
            session::serve::run(
                relay,
                stdin,
                stdout,
                log.clone(),
                write,
                client,
                gone.clone(),
            )
            .await
        }
        Proto::Worker => session::worker::run(relay, stdin, stdout, client, gone.clone()).await,
    };
    let status = match &result {
        Ok(()) => 0,
        // Nobody is left to tell: the client hung up (or died) first.
        Err(e) if gone.is_cancelled() => {
            info!(
                "session ended: the client disconnected ({})",
                crate::error_chain(e)
            );
            1
        }
        Err(e) => {
            let msg = crate::error_chain(e);
            let class = e.class().label();
            match e.class() {
                session::Class::Infrastructure => warn!(class, "session failed: {msg}"),
                _ => info!(class, "session failed: {msg}"),
            }
            session::say(&log, format!("error: {msg}")).await;
            1
        }
    };
    drop(log);
    // Let the last log lines out before the exit status.
    let _ = stderr.await;
    finish(&tx, status).await;
    crate::metrics::session_ended(label);
    info!(status, "session ended");
}

async fn forward_log(
    mut rx: mpsc::Receiver<bytes::Bytes>,
    mut w: impl tokio::io::AsyncWrite + Unpin,
) {
    while let Some(chunk) = rx.recv().await {
        if w.write_all(&chunk).await.is_err() || w.flush().await.is_err() {
            break;
        }
    }
}

/// A log sink for tests that just collects lines.
#[cfg(feature = "testing")]
pub fn null_log() -> crate::buildlog::LogSink {
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    tx
}

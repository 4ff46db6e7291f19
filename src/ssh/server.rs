//! The SSH front end clients log into.
//!
//! Public-key authentication against the configured client keys, nothing
//! else. Exactly one kind of exec is served: `nix-store --serve [--write]`
//! (an appended `--store X` is accepted and ignored: the relay has one
//! store). Every other request — another command, a shell, a pty, a
//! subsystem, port or agent forwarding — is refused; where the client can
//! show it, with a one-line reason on stderr and exit status 1.

use std::collections::HashMap;
use std::sync::Arc;

use russh::keys::PublicKey;
use russh::server::{self, Auth, Msg, PublicKeyOffer, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, ChannelWriteHalf, MethodKind, MethodSet};
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tracing::{Instrument, debug, info, info_span, warn};

use super::{LogSink, PIPE_BYTES, pump};
use crate::config::Client;
use crate::session::{self, ClientId, Relay};
use tokio_util::sync::CancellationToken;

/// What a client's exec string asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Serve { write: bool },
    Worker,
    Refused(String),
}

/// Parses an exec string as shell words and matches the program's basename.
pub fn parse_command(cmd: &[u8]) -> Command {
    let Ok(text) = std::str::from_utf8(cmd) else {
        return Command::Refused("command is not UTF-8".into());
    };
    let Some(words) = shell_words(text) else {
        return Command::Refused("unbalanced quotes in command".into());
    };
    let program = words.first().map(|w| w.rsplit('/').next().unwrap_or(w));
    match program {
        Some("nix-store") => serve_args(&words[1..]),
        Some("nix-daemon") => daemon_args(&words[1..]),
        _ => Command::Refused(format!(
            "only `nix-store --serve [--write]` is served here, not {text:?}"
        )),
    }
}

fn daemon_args(args: &[String]) -> Command {
    let mut stdio = false;
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--stdio" => stdio = true,
            "--store" if i + 1 < args.len() => i += 1,
            other => return Command::Refused(format!("unsupported nix-daemon argument {other:?}")),
        }
        i += 1;
    }
    if stdio {
        Command::Worker
    } else {
        Command::Refused("only `nix-daemon --stdio` is served here".into())
    }
}

fn serve_args(args: &[String]) -> Command {
    let (mut serve, mut write) = (false, false);
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--serve" => serve = true,
            "--write" => write = true,
            "--store" if i + 1 < args.len() => i += 1,
            other => return Command::Refused(format!("unsupported nix-store argument {other:?}")),
        }
        i += 1;
    }
    if serve {
        Command::Serve { write }
    } else {
        Command::Refused("only `nix-store --serve [--write]` is served here".into())
    }
}

/// Minimal POSIX-shell word splitting: quotes and backslashes, no expansion.
fn shell_words(s: &str) -> Option<Vec<String>> {
    let mut words = Vec::new();
    let mut cur: Option<String> = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(cur.take()),
            '\'' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '\'' => break,
                        c => w.push(c),
                    }
                }
            }
            '"' => {
                let w = cur.get_or_insert_with(String::new);
                loop {
                    match chars.next()? {
                        '"' => break,
                        '\\' => w.push(chars.next()?),
                        c => w.push(c),
                    }
                }
            }
            '\\' => cur.get_or_insert_with(String::new).push(chars.next()?),
            c => cur.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(cur);
    Some(words)
}

/// Shared by every connection.
pub struct FrontEnd {
    pub relay: Arc<Relay>,
    pub clients: Arc<Vec<Client>>,
    pub sessions: Arc<Semaphore>,
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

/// One SSH connection.
pub struct Conn {
    front: Arc<FrontEnd>,
    peer: String,
    client: Option<ClientId>,
    channels: HashMap<ChannelId, Channel<Msg>>,
}

impl Conn {
    pub fn new(front: Arc<FrontEnd>, peer: String) -> Self {
        Conn {
            front,
            peer,
            client: None,
            channels: HashMap::new(),
        }
    }

    fn known(&self, key: &PublicKey) -> Option<&Client> {
        self.front
            .clients
            .iter()
            .find(|c| c.key.key_data() == key.key_data())
    }

    fn refuse(&mut self, id: ChannelId, reason: String) {
        warn!(peer = %self.peer, client = ?self.client.as_ref().map(|c| &c.name), "refused: {reason}");
        if let Some(ch) = self.channels.remove(&id) {
            let (_, tx) = ch.split();
            tokio::spawn(async move {
                let line = format!("nix-relay: {reason}\n");
                // The client may hang up first; nothing more to tell it then.
                let _ = tx.extended_data_bytes(1, line.into_bytes()).await;
                finish(&tx, 1).await;
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
            self.refuse(id, "too many sessions; try again later".into());
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
        debug!(peer = %self.peer, "pty refused");
        session.channel_failure(id)?;
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proto {
    Serve { write: bool },
    Worker,
}

/// Runs a session on an accepted exec channel; its end sets the exit status.
async fn run_channel(
    relay: Arc<Relay>,
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
        pump(rx, pipe_in, None).await;
        on_close.cancel();
    });
    let (log, log_rx) = mpsc::channel(64);
    let stderr = tokio::spawn(forward_log(log_rx, tx.make_writer_ext(Some(1))));
    let stdout = tx.make_writer();
    let stdin = BufReader::with_capacity(256 << 10, stdin);
    let label = match proto {
        Proto::Serve { .. } => "serve",
        Proto::Worker => "worker",
    };
    info!("session started");
    crate::metrics::session_started(label);
    let result = match proto {
        Proto::Serve { write } => {
            session::serve::run(relay, stdin, stdout, log.clone(), write, client, gone).await
        }
        Proto::Worker => session::worker::run(relay, stdin, stdout, client, gone).await,
    };
    let status = match &result {
        Ok(()) => 0,
        Err(e) => {
            let msg = session::chain(e);
            warn!("session failed: {msg}");
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

/// A log sink for tests and tools that just collects lines.
pub fn null_log() -> LogSink {
    let (tx, mut rx) = mpsc::channel::<bytes::Bytes>(64);
    tokio::spawn(async move { while rx.recv().await.is_some() {} });
    tx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nix_store_serve_variants_are_accepted() {
        assert_eq!(
            parse_command(b"nix-store --serve --write"),
            Command::Serve { write: true }
        );
        assert_eq!(
            parse_command(b"nix-store --serve"),
            Command::Serve { write: false }
        );
        assert_eq!(
            parse_command(
                b"/nix/var/nix/profiles/default/bin/nix-store --serve --write --store '/tmp/x y'"
            ),
            Command::Serve { write: true }
        );
    }

    #[test]
    fn nix_daemon_stdio_starts_a_worker_session() {
        assert_eq!(parse_command(b"nix-daemon --stdio"), Command::Worker);
        assert_eq!(
            parse_command(b"nix-daemon --stdio --store 'ssh-ng://x'"),
            Command::Worker
        );
    }

    #[test]
    fn anything_else_is_refused() {
        for cmd in [
            &b"bash"[..],
            b"nix-store --serve; rm -rf /",
            b"nix-store --serve --write && sh",
            b"nix-store --export /nix/store/x",
            b"echo hi",
            b"nix-store '--serve",
            b"nix-daemon",
            b"nix-daemon --stdio; sh",
            b"",
        ] {
            assert!(
                matches!(parse_command(cmd), Command::Refused(_)),
                "{:?}",
                String::from_utf8_lossy(cmd)
            );
        }
    }
}

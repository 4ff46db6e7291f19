//! Configuration: TOML → [`RawConfig`] (serde, unknown keys refused) →
//! validated [`Config`]. Validation collects every problem before failing,
//! so `check-config` reports them all at once.

pub mod defaults;
pub mod ec2;
mod raw;
mod upstream;
mod validate;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use russh::keys::PublicKey;

pub use raw::RawConfig;
pub use validate::{parse_duration, parse_size};

#[derive(Debug, Clone)]
pub struct Config {
    pub server: Server,
    pub clients: Vec<Client>,
    pub backends: Vec<Backend>,
    pub limits: Limits,
    pub cache: Cache,
    /// The HTTP listener (binary cache); None = no HTTP.
    pub http_listen: Option<SocketAddr>,
    /// EC2 builders on demand; None = no `[ec2]` section.
    pub ec2: Option<ec2::Ec2Config>,
    /// The admin endpoint (drain, undrain); loopback only; None = off.
    pub admin_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone)]
pub struct Cache {
    /// Nix-format secret key (`name:base64`); created if missing.
    pub signing_key: PathBuf,
    /// Name for a generated key (`<name>:…`); conventionally ends in `-1`.
    pub key_name: String,
    pub compression: crate::store::Compression,
    /// Uploads signed by one of these are trusted (public).
    pub trusted_public_keys: Vec<crate::store::signing::PublicKey>,
    /// Finish builds nobody waits for any more, so the cache still gets them.
    pub keep_going: bool,
    /// Evict least recently used entries above this size; None = no cap.
    pub max_size: Option<u64>,
    /// Stored build logs, compressed, at most this many bytes in all
    /// (oldest removed first); None = `store::logs::DEFAULT_MAX_LOG_BYTES`.
    pub max_stored_log_bytes: Option<u64>,
    /// Binary caches substituted from (`[cache] upstream…`).
    pub upstream: Upstream,
    /// The shared, durable copy in an S3 bucket (`[cache] store`); None =
    /// the local directory only.
    pub s3: Option<crate::s3::Location>,
    /// Evict the bucket's least recently used entries above this size
    /// (NAR bytes); None = no cap. Only with `s3`.
    pub store_max_size: Option<u64>,
}

/// `[cache] upstream = [urls]` and its timeouts: the binary caches the relay
/// substitutes from (see `crate::upstream`). No URL: it substitutes nothing.
#[derive(Debug, Clone)]
pub struct Upstream {
    /// Asked in this order.
    pub urls: Vec<crate::outbound::BaseUrl>,
    /// TCP connect (and TLS) to an upstream.
    pub connect_timeout: Duration,
    /// A narinfo request whole; a NAR request until its headers.
    pub timeout: Duration,
    /// A NAR body silent this long fails the fetch.
    pub stall_timeout: Duration,
    /// How long "upstream does not have it" is remembered.
    pub negative_ttl: Duration,
}

impl Default for Upstream {
    fn default() -> Self {
        Upstream {
            urls: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(20),
            stall_timeout: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Server {
    pub listen: SocketAddr,
    /// Created (ed25519) on first start if missing.
    pub host_key: PathBuf,
    pub state_dir: PathBuf,
}

#[derive(Debug, Clone)]
pub struct Client {
    pub name: String,
    pub key: PublicKey,
    pub trusted: bool,
    /// This client's own `[limits]` build timeouts, where it has them.
    pub timeouts: Timeouts,
}

/// Build timeouts the relay applies when a client sends none (Nix's
/// `max-silent-time` and `timeout`; an ssh-ng build hook never sends
/// them). `None`: not set here; zero: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Timeouts {
    pub max_silent_time: Option<Duration>,
    pub build_timeout: Option<Duration>,
}

impl Timeouts {
    /// `self`, with what it leaves unset taken from `fallback`.
    pub fn or(self, fallback: Timeouts) -> Timeouts {
        Timeouts {
            max_silent_time: self.max_silent_time.or(fallback.max_silent_time),
            build_timeout: self.build_timeout.or(fallback.build_timeout),
        }
    }

    /// A client's build options with these filling what it left at 0
    /// (a client that sent limits keeps its own).
    pub fn apply(
        &self,
        mut o: crate::wire::build::BuildOptions,
    ) -> crate::wire::build::BuildOptions {
        if o.max_silent_time == 0 {
            o.max_silent_time = self.max_silent_time.map_or(0, |d| d.as_secs());
        }
        if o.build_timeout == 0 {
            o.build_timeout = self.build_timeout.map_or(0, |d| d.as_secs());
        }
        o
    }
}

/// Which Nix protocol a backend speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// `nix-store --serve --write` (`ssh://`).
    Serve,
    /// `nix-daemon --stdio` (`ssh-ng://`).
    Worker,
}

impl std::fmt::Display for Protocol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Protocol::Serve => "serve",
            Protocol::Worker => "worker",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackendUri {
    /// `ssh://user@host[:port]` (`nix-store --serve --write`) or
    /// `ssh-ng://user@host[:port]` (`nix-daemon --stdio`) over SSH.
    Ssh {
        user: String,
        host: String,
        port: u16,
        protocol: Protocol,
    },
    /// `local`: `nix-store --serve --write` spawned on this machine.
    Local,
    /// `nix-daemon --stdio` spawned on this machine. Not accepted in a
    /// config file: the integration tests use it to drive a real daemon
    /// without SSH.
    #[cfg(any(test, feature = "testing"))]
    LocalWorker,
    /// `fake://NAME` (serve) or `fake-ng://NAME` (worker): an in-process
    /// fake builder registered under NAME (`crate::testing::fake`).
    #[cfg(feature = "testing")]
    Fake { name: String, protocol: Protocol },
}

impl BackendUri {
    pub fn protocol(&self) -> Protocol {
        match self {
            BackendUri::Ssh { protocol, .. } => *protocol,
            BackendUri::Local => Protocol::Serve,
            #[cfg(any(test, feature = "testing"))]
            BackendUri::LocalWorker => Protocol::Worker,
            #[cfg(feature = "testing")]
            BackendUri::Fake { protocol, .. } => *protocol,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Backend {
    pub name: String,
    pub uri: BackendUri,
    pub ssh_key: Option<PathBuf>,
    /// Pinned host key; a backend whose key differs is refused.
    pub host_key: Option<PublicKey>,
    pub systems: Vec<String>,
    pub max_jobs: u32,
    pub speed_factor: f64,
    pub supported_features: Vec<String>,
    pub mandatory_features: Vec<String>,
    pub connect_timeout: Duration,
    /// `--store` for the backend's `nix-store --serve` (a chroot store path
    /// or store URI); None = the backend's default store.
    pub store: Option<String>,
    /// This backend's store may hold untrusted clients' paths: only
    /// untrusted clients' builds run here, never a trusted one (and only
    /// here do they run).
    pub untrusted_clients: bool,
}

/// Every bound the relay enforces on its peers, named in one place.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest NAR accepted from a client or backend.
    pub max_nar_size: u64,
    /// Longest string in a request (env values, error messages).
    pub max_string_size: u64,
    /// Most elements in one wire collection.
    pub max_collection_len: u64,
    /// Concurrent client sessions; more are refused at exec time.
    pub max_sessions: u64,
    /// Connections still in their SSH handshake (no session accepted yet);
    /// more are closed at once, like sshd's MaxStartups.
    pub max_handshakes: u64,
    /// Jobs waiting for a slot across all systems; more fail at once.
    pub max_waiting_jobs: u64,
    /// A client must get a session accepted (SSH handshake, auth, exec) within
    /// this, and then send its protocol hello within this again.
    pub handshake_timeout: Duration,
    /// Warm sessions kept per backend between builds (0: no pooling).
    pub backend_idle_sessions: u64,
    /// An idle backend session is closed after this long.
    pub backend_idle_timeout: Duration,
    /// An SSH backend that neither sends anything nor answers a keepalive
    /// for this long is lost: its build is retried elsewhere.
    pub backend_stall_timeout: Duration,
    /// How often an SSH backend connection is sent a keepalive.
    pub backend_keepalive_interval: Duration,
    /// Most bytes of build log a build may write (Nix's max-log-size); a
    /// client's smaller max-log-size wins. More stops the build with
    /// LogLimitExceeded.
    pub max_log_size: u64,
    /// Build timeouts for clients that send none (`[[client]]` overrides).
    pub timeouts: Timeouts,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_nar_size: 1 << 40,
            max_string_size: 64 << 20,
            max_collection_len: 1 << 20,
            max_sessions: 256,
            max_handshakes: 256,
            max_waiting_jobs: 10_000,
            handshake_timeout: Duration::from_secs(30),
            backend_idle_sessions: 4,
            backend_idle_timeout: Duration::from_secs(120),
            backend_stall_timeout: Duration::from_secs(300),
            backend_keepalive_interval: Duration::from_secs(30),
            max_log_size: 64 << 20,
            timeouts: Timeouts::default(),
        }
    }
}

impl Limits {
    pub fn wire(&self) -> crate::wire::Limits {
        crate::wire::Limits {
            max_string_bytes: self.max_string_size as usize,
            max_collection_len: self.max_collection_len as usize,
            max_nar_bytes: self.max_nar_size,
        }
    }

    pub fn nar(&self) -> crate::wire::nar::NarLimits {
        crate::wire::nar::NarLimits {
            max_nar_bytes: self.max_nar_size,
            ..Default::default()
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {} problem(s):\n  - {}", path.display(), problems.len(), problems.join("\n  - "))]
    Invalid {
        path: PathBuf,
        problems: Vec<String>,
    },
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parses and validates; `origin` only names the source in errors and
    /// anchors relative paths.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, Error> {
        let invalid = |problems| Error::Invalid {
            path: origin.to_owned(),
            problems,
        };
        let raw: RawConfig = toml::from_str(text).map_err(|e| invalid(vec![e.to_string()]))?;
        validate::validate(raw).map_err(invalid)
    }

    pub fn backend(&self, name: &str) -> Option<&Backend> {
        self.backends.iter().find(|b| b.name == name)
    }
}

#[cfg(test)]
mod tests;

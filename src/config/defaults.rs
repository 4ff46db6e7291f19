//! The embedded default: what `nix-relay serve` runs without a config file.
//! One relay on loopback, the local machine as its only backend, state in
//! `./nix-relay-state`, and the user's own SSH public keys as trusted clients.

use std::path::Path;

use super::{Backend, BackendUri, Client, Config, Limits, Server};

pub const LISTEN: &str = "127.0.0.1:2222";
pub const HTTP_LISTEN: &str = "127.0.0.1:5000";
/// Where `nix-relay drain` looks for the admin endpoint without `--config`.
pub const ADMIN_LISTEN: &str = "127.0.0.1:5001";

/// `<hostname>-nix-relay-1`, the name of a generated signing key.
pub fn key_name() -> String {
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    let host = host.trim();
    if host.is_empty() {
        "nix-relay-1".into()
    } else {
        format!("{host}-nix-relay-1")
    }
}
pub const STATE_DIR: &str = "./nix-relay-state";

/// The system double this relay runs on, as Nix spells it.
pub fn local_system() -> String {
    let arch = match std::env::consts::ARCH {
        "x86" => "i686",
        a => a,
    };
    format!("{arch}-{}", std::env::consts::OS)
}

/// Features a stock Nix advertises by default on this machine.
pub fn local_features() -> Vec<String> {
    let mut f: Vec<String> = ["benchmark", "big-parallel", "nixos-test"]
        .map(String::from)
        .to_vec();
    if Path::new("/dev/kvm").exists() {
        f.push("kvm".into());
    }
    f
}

/// Every `*.pub` key in `~/.ssh`, trusted. Unreadable files are skipped
/// with a warning: a missing key only means that client cannot log in.
pub fn home_ssh_keys(home: &Path) -> Vec<Client> {
    let Ok(dir) = std::fs::read_dir(home.join(".ssh")) else {
        return Vec::new();
    };
    let mut paths: Vec<_> = dir
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "pub"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        match std::fs::read_to_string(&p).map(|t| super::validate::parse_public_key(&t)) {
            Ok(Ok(key)) => out.push(Client {
                name: p
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                key,
                trusted: true,
                timeouts: Default::default(),
            }),
            Ok(Err(e)) => tracing::warn!(file = %p.display(), "skipping client key: {e}"),
            Err(e) => tracing::warn!(file = %p.display(), "skipping client key: {e}"),
        }
    }
    out
}

/// The embedded default builds in a chroot store of its own: a client on
/// the same machine holds the locks of the outputs it waits for in the
/// system store, so building there would wait on the client forever.
fn local_store(state_dir: &Path) -> String {
    let dir = state_dir.join("local-store");
    let abs = std::path::absolute(&dir).unwrap_or(dir);
    abs.display().to_string()
}

pub fn embedded(home: Option<&Path>) -> Config {
    let state_dir = Path::new(STATE_DIR).to_owned();
    let store = local_store(&state_dir);
    Config {
        server: Server {
            listen: LISTEN.parse().expect("constant address"),
            host_key: state_dir.join("ssh_host_ed25519_key"),
            state_dir: state_dir.clone(),
        },
        clients: home.map(home_ssh_keys).unwrap_or_default(),
        backends: vec![Backend {
            name: "local".into(),
            uri: BackendUri::Local,
            ssh_key: None,
            host_key: None,
            systems: vec![local_system()],
            max_jobs: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
            speed_factor: 1.0,
            supported_features: local_features(),
            mandatory_features: Vec::new(),
            connect_timeout: std::time::Duration::from_secs(5),
            store: Some(store),
            untrusted_clients: false,
        }],
        limits: Limits::default(),
        cache: super::Cache {
            signing_key: state_dir.join("cache-priv-key.pem"),
            key_name: key_name(),
            compression: crate::store::Compression::default(),
            trusted_public_keys: Vec::new(),
            keep_going: false,
            max_size: None,
            max_stored_log_bytes: None,
            upstream: Default::default(),
            s3: None,
            store_max_size: None,
        },
        http_listen: Some(HTTP_LISTEN.parse().expect("constant address")),
        ec2: None,
        admin_listen: Some(ADMIN_LISTEN.parse().expect("constant address")),
    }
}

//! Command-line surface (clap). `anyhow` lives here and in main only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{Instrument, error, info, info_span};

use crate::config::Config;
use crate::front::server::{FrontEnd, serve_connection};
use crate::scheduler::history::{self, History};
use crate::scheduler::{ReloadSummary, Scheduler};
use crate::session::Core;
use crate::store::Store;

#[derive(Parser)]
#[command(
    name = "nix-relay",
    version,
    about = "One SSH endpoint for Nix remote builds"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
pub enum Cmd {
    /// Run the relay (without --config: local backend, loopback, ./nix-relay-state).
    Serve {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Validate a config file and report every problem (exit 1 on any).
    CheckConfig { file: PathBuf },
    /// Write a cache signing key pair (FILE and FILE.pub); print the public key.
    Keygen {
        /// Key name, conventionally ending in -1.
        #[arg(long)]
        name: Option<String>,
        /// Secret key file to create (refuses to overwrite).
        #[arg(long, default_value = "cache-priv-key.pem")]
        out: PathBuf,
    },
    /// Show what the running relay is doing (from its /status).
    Status {
        /// The relay's HTTP listener.
        #[arg(long, default_value = "http://127.0.0.1:5000")]
        url: String,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the builder entry for clients (machines-file line and Nix form).
    MachinesEntry {
        #[arg(long)]
        config: Option<PathBuf>,
        /// URI scheme: ssh-ng (daemon protocol) or ssh (nix-store --serve).
        #[arg(long, value_enum, default_value_t = crate::machines::Scheme::SshNg)]
        protocol: crate::machines::Scheme,
    },
    /// EC2 builders: `sweep [--dry-run]` terminates leftover instances.
    #[command(subcommand)]
    Ec2(crate::ec2::cli::Ec2Cmd),
    /// Drain a backend: it finishes its running builds and takes no new ones.
    Drain {
        /// The backend's name in the config.
        name: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
    /// Undrain a backend: it takes new builds again.
    Undrain {
        name: String,
        #[command(flatten)]
        admin: AdminTarget,
    },
}

/// Where the running relay's admin endpoint is: `--url`, else the
/// `[admin] listen` of `--config`, else the default 127.0.0.1:5001.
#[derive(clap::Args)]
pub struct AdminTarget {
    /// The relay's config file (its `[admin] listen`).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The admin endpoint, e.g. http://127.0.0.1:5001.
    #[arg(long, conflicts_with = "config")]
    pub url: Option<String>,
}

impl AdminTarget {
    fn url(&self) -> Result<String> {
        if let Some(u) = &self.url {
            return Ok(u.trim_end_matches('/').to_owned());
        }
        let addr = match &self.config {
            Some(path) => Config::load(path)?.admin_listen.with_context(|| {
                format!(
                    "{} has no [admin] listen: the admin endpoint is off",
                    path.display()
                )
            })?,
            None => crate::config::defaults::ADMIN_LISTEN
                .parse()
                .context("default admin address")?,
        };
        Ok(format!("http://{addr}"))
    }
}

/// `nix-relay drain` / `undrain`: asks the admin endpoint, prints its answer.
pub async fn drain(name: &str, on: bool, admin: &AdminTarget) -> Result<()> {
    let verb = if on { "drain" } else { "undrain" };
    let url = format!("{}/admin/backends/{name}/{verb}", admin.url()?);
    let (status, body) = crate::http::client::http_post_json(&url, &serde_json::json!({})).await?;
    let v: serde_json::Value = serde_json::from_str(&body)
        .with_context(|| format!("{url}: HTTP {status}: not JSON: {body:?}"))?;
    if status != 200 {
        anyhow::bail!("{verb} {name}: {}", v["error"].as_str().unwrap_or(&body));
    }
    println!(
        "{name}: {} ({} running)",
        v["admin"].as_str().unwrap_or("?"),
        v["running"]
    );
    Ok(())
}

pub fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(crate::config::defaults::embedded(
            std::env::var_os("HOME").as_deref().map(Path::new),
        )),
    }
}

/// What to do when no client key is configured, so nobody can log in.
fn no_clients_hint(config: Option<&Path>, home: Option<&Path>) -> String {
    match (config, home) {
        (Some(p), _) => format!(
            "no client keys in {}: nobody can log in; add [[client]] entries (name, key) or \
             [server] authorized_keys",
            p.display()
        ),
        (None, Some(h)) => format!(
            "no SSH public key in {ssh}, so nobody can log in: create one with \
             `ssh-keygen -t ed25519 -f {ssh}/id_ed25519` and start nix-relay again (it trusts \
             every {ssh}/*.pub); when a nix-daemon runs your builds, its build hook logs in \
             with root's key, so put root's public key there too (or use --config with \
             [[client]] keys)",
            ssh = h.join(".ssh").display()
        ),
        (None, None) => "HOME is not set, so no ~/.ssh/*.pub key is trusted and nobody can \
                         log in: set HOME, or use --config with [[client]] keys"
            .into(),
    }
}

/// Runs the relay. `path`, the config file it came from, is re-read on
/// SIGHUP to reload the backends.
pub async fn serve(config: Config, path: Option<PathBuf>) -> Result<()> {
    let relay = open_relay(&config)?;
    let host_key = crate::keys::load_or_create_host_key(&config.server.host_key)?;
    if config.clients.is_empty() {
        let home = std::env::var_os("HOME").map(PathBuf::from);
        tracing::warn!("{}", no_clients_hint(path.as_deref(), home.as_deref()));
    }
    let front = Arc::new(FrontEnd {
        relay,
        clients: Arc::new(config.clients.clone()),
        sessions: Arc::new(Semaphore::new(config.limits.max_sessions as usize)),
        handshakes: Arc::new(Semaphore::new(config.limits.max_handshakes as usize)),
    });
    let metrics = install_metrics(&config, &front.relay);
    spawn_scheduler_tick(front.relay.scheduler().clone());
    let ec2 = match &config.ec2 {
        Some(c) => Some(
            crate::ec2::cli::start(c, front.relay.scheduler().clone(), &config.server.state_dir)
                .await?,
        ),
        None => None,
    };
    tokio::spawn(save_history_periodically(front.relay.scheduler().clone()));
    if let Some(addr) = config.http_listen {
        spawn_http(addr, front.relay.clone(), metrics).await?;
    }
    if let Some(addr) = config.admin_listen {
        let bound = crate::http::admin::spawn(addr, front.relay.scheduler().clone())
            .await
            .with_context(|| format!("listening for admin requests on {addr}"))?;
        info!(listen = %bound, "admin endpoint listening (loopback only)");
    }
    tokio::spawn(reload_on_sighup(path, front.relay.scheduler().clone()));
    let listener = TcpListener::bind(config.server.listen)
        .await
        .with_context(|| format!("listening on {}", config.server.listen))?;
    let ssh_config = crate::front::server::config(host_key.clone());
    info!(listen = %config.server.listen, backends = config.backends.len(), "nix-relay listening");
    println!(
        "{}",
        crate::machines::how_to_point_nix(&config, host_key.public_key())
    );
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (socket, peer) = accepted.context("accepting a connection")?;
                // russh applies `nodelay` only in its own accept loop; small
                // protocol replies must not wait for delayed ACKs (~40 ms).
                if let Err(e) = socket.set_nodelay(true) {
                    tracing::debug!("set_nodelay failed: {e}");
                }
                let conn = serve_connection(front.clone(), ssh_config.clone(), socket, peer.to_string());
                tokio::spawn(conn.instrument(info_span!("conn", %peer)));
            }
            _ = shutdown_signal() => {
                info!("shutting down");
                save_history(front.relay.scheduler().clone()).await;
                if let Some(ec2) = ec2 {
                    ec2.shutdown().await;
                }
                return Ok(());
            }
        }
    }
}

/// The relay core `serve` runs: the state dir, the signing key, the
/// store, the scheduler with its history, the backend pool and the limits
/// (also what `testing::harness` runs, so a test relay is this one).
pub fn open_relay(config: &Config) -> Result<Arc<Core>> {
    std::fs::create_dir_all(&config.server.state_dir)
        .with_context(|| format!("creating state dir {}", config.server.state_dir.display()))?;
    let signer =
        crate::keys::load_or_create_signing_key(&config.cache.signing_key, &config.cache.key_name)?;
    info!(key = %signer.public(), "cache signing key (put it in trusted-public-keys)");
    let settings = crate::store::Settings {
        compression: config.cache.compression,
        signer: Some(Arc::new(signer)),
        trusted_keys: config.cache.trusted_public_keys.clone(),
        max_size: config.cache.max_size,
        max_log_bytes: config.cache.max_stored_log_bytes,
    };
    let store = Store::open(&config.server.state_dir.join("cache"), settings)?;
    let bucket = config.cache.s3.clone().map(|loc| {
        info!(store = %loc, "mirroring the cache to S3");
        crate::s3::open(loc, store.clone(), config.cache.store_max_size)
    });
    let private = (bucket.as_ref()).map(|(b, _)| {
        let stall = config.cache.upstream.stall_timeout;
        let nar = config.limits.nar();
        Arc::new(crate::s3::private::Private::new(
            b.clone(),
            store.clone(),
            nar,
            stall,
        ))
    });
    let leases = (bucket.as_ref()).map(|(b, _)| {
        let id = relay_id(&config.cache.key_name);
        let ttl = crate::s3::lease::LEASE_TTL;
        Arc::new(crate::s3::lease::Leases::new(b.clone(), id, ttl))
    });
    let upstream = crate::upstream::Upstream::with_bucket(
        &config.cache.upstream,
        store.clone(),
        config.limits.nar(),
        bucket,
    );
    if let Some(u) = &upstream {
        info!(upstream = ?u.urls(), "substituting from upstream caches");
    }
    let relay = Core::new(
        store,
        Scheduler::with_history(
            config.backends.clone(),
            config.limits.max_waiting_jobs,
            Arc::new(History::load(&config.server.state_dir)),
        ),
        config.limits,
        config.cache.keep_going,
    );
    let timeouts = (config.clients.iter())
        .map(|c| (c.name.clone(), c.timeouts))
        .collect();
    Ok(Arc::new(
        (relay.with_client_timeouts(timeouts))
            .with_upstream(upstream)
            .with_private(private)
            .with_leases(leases),
    ))
}

/// This relay's id in its bucket leases: its key name, host, process and
/// start time (unique among relays sharing a bucket).
fn relay_id(key_name: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let nanos = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH))
        .map_or(0, |d| d.subsec_nanos());
    format!("{key_name}@{}:{}:{nanos}", host.trim(), std::process::id())
}

/// Every second, backends whose backoff ended get their waiting jobs.
pub fn spawn_scheduler_tick(sched: Arc<Scheduler>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
        loop {
            tick.tick().await;
            sched.tick();
        }
    })
}

/// Writes the build history every [`history::SAVE_INTERVAL`] if it changed.
async fn save_history_periodically(sched: Arc<Scheduler>) {
    let mut every = tokio::time::interval(history::SAVE_INTERVAL);
    every.tick().await;
    loop {
        every.tick().await;
        save_history(sched.clone()).await;
    }
}

async fn save_history(sched: Arc<Scheduler>) {
    let saved = tokio::task::spawn_blocking(move || sched.history().save_if_changed()).await;
    match saved {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("{}", crate::error_chain(&e)),
        Err(e) => tracing::warn!("saving the build history: {e}"),
    }
}

/// On SIGHUP, re-reads the config file and reconciles the backends with
/// it; nothing else is reloaded. A config that fails validation changes
/// nothing: every problem is logged and the running config stays.
async fn reload_on_sighup(path: Option<PathBuf>, sched: Arc<Scheduler>) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut hup) = signal(SignalKind::hangup()) else {
        error!("cannot install the SIGHUP handler: no reload");
        return;
    };
    while hup.recv().await.is_some() {
        let Some(path) = &path else {
            tracing::warn!("reload: running the embedded default, no config file to re-read");
            continue;
        };
        match reload(path, &sched) {
            Ok(summary) => info!("reload: {summary}"),
            Err(problems) => {
                for p in &problems {
                    error!("reload: {p}");
                }
                error!("reload: {} problem(s); running config kept", problems.len());
            }
        }
    }
}

/// Re-reads `path` and reconciles the backends with it; on any problem
/// nothing changes and every problem is returned.
pub fn reload(path: &Path, sched: &Arc<Scheduler>) -> Result<ReloadSummary, Vec<String>> {
    match Config::load(path) {
        Ok(new) => Ok(sched.reconcile_backends(new.backends)),
        Err(crate::config::Error::Invalid { path, problems }) => Err(problems
            .into_iter()
            .map(|p| format!("{}: {p}", path.display()))
            .collect()),
        Err(e) => Err(vec![format!("{:#}", anyhow::Error::from(e))]),
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Installs the Prometheus recorder and its upkeep task. A failure only
/// costs the metrics, so it is logged, not fatal.
fn install_metrics(
    config: &Config,
    relay: &Arc<Core>,
) -> Option<metrics_exporter_prometheus::PrometheusHandle> {
    let systems = config
        .backends
        .iter()
        .flat_map(|b| b.systems.iter().cloned())
        .chain(
            config
                .ec2
                .iter()
                .flat_map(|e| e.templates.iter())
                .flat_map(|t| t.systems.clone()),
        )
        .collect();
    let handle = match crate::metrics::install(systems) {
        Ok(h) => h,
        Err(e) => {
            error!("metrics disabled: {e}");
            return None;
        }
    };
    let slots: Vec<(String, u32)> = config
        .backends
        .iter()
        .map(|b| (b.name.clone(), b.max_jobs))
        .collect();
    crate::metrics::register_zeroes(&slots);
    let (h, relay) = (handle.clone(), relay.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            tick.tick().await;
            h.run_upkeep();
            crate::metrics::store_bytes(relay.store().total_bytes());
        }
    });
    Some(handle)
}

/// Serves the public part of the store as a Nix binary cache, plus
/// `/status` and `/metrics`.
async fn spawn_http(
    addr: std::net::SocketAddr,
    relay: Arc<Core>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
) -> Result<()> {
    let store = relay.store().clone();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("listening for HTTP on {addr}"))?;
    let touch = store.clone();
    let state = crate::http::HttpState {
        root: store.root().to_owned(),
        on_narinfo_hit: Some(Arc::new(move |hash: &str| touch.touch_public(hash))),
        upstream: relay.upstream().cloned(),
    };
    let router = crate::http::status::router(relay, metrics).merge(crate::http::router(state));
    info!(listen = %addr, "binary cache listening (HTTP)");
    tokio::spawn(async move {
        if let Err(e) = crate::http::serve(listener, router).await {
            error!(error = %e, "HTTP server stopped");
        }
    });
    Ok(())
}

pub async fn status(url: &str, json: bool) -> Result<()> {
    let body =
        crate::http::client::http_get(&format!("{}/status", url.trim_end_matches('/'))).await?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let v: serde_json::Value = serde_json::from_str(&body).context("parsing /status")?;
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(100);
    print!("{}", crate::status::render(&v, width));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGsl9bcFHoLUq3ANWXnbW6LpSeLX/vfMeDfPmkl2aNB1 lab";

    fn config(backends: &[(&str, u32)]) -> String {
        let mut t = String::from("[server]\nstate_dir = \"/tmp/x\"\n");
        for (name, port) in backends {
            t += &format!(
                "[[backend]]\nname = \"{name}\"\nuri = \"ssh://root@127.0.0.1:{port}\"\nssh_key = \"/k\"\nhost_key = \"{KEY}\"\nsystems = [\"x\"]\n"
            );
        }
        t
    }

    fn names(s: &Scheduler) -> Vec<String> {
        s.backends().into_iter().map(|b| b.name).collect()
    }

    #[test]
    fn a_reload_reconciles_the_backends_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, config(&[("h1", 1), ("h2", 2)])).unwrap();
        let sched = Scheduler::new(Config::load(&file).unwrap().backends, 10);
        std::fs::write(&file, config(&[("h1", 11), ("h3", 3)])).unwrap();
        assert_eq!(reload(&file, &sched).unwrap().to_string(), "+h3 -h2 ~h1");
        assert_eq!(names(&sched), ["h1", "h3"]);
    }

    #[test]
    fn a_broken_config_changes_nothing_and_says_every_problem() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("relay.toml");
        std::fs::write(&file, config(&[("h1", 1), ("h2", 2)])).unwrap();
        let sched = Scheduler::new(Config::load(&file).unwrap().backends, 10);
        let broken =
            config(&[("h1", 1), ("h1", 2)]).replace("systems = [\"x\"]\n", "systems = []\n");
        std::fs::write(&file, broken).unwrap();
        let problems = reload(&file, &sched).unwrap_err();
        assert_eq!(
            problems.len(),
            3,
            "duplicate name, two empty systems: {problems:#?}"
        );
        assert!(problems[0].contains("relay.toml"), "{problems:?}");
        assert_eq!(names(&sched), ["h1", "h2"], "nothing changed");
        std::fs::remove_file(&file).unwrap();
        let unreadable = reload(&file, &sched).unwrap_err();
        assert_eq!(unreadable.len(), 1);
        assert!(
            unreadable[0].contains("reading config file") && unreadable[0].contains("No such file"),
            "the cause is named: {unreadable:?}"
        );
        assert_eq!(names(&sched), ["h1", "h2"]);
    }

    #[test]
    fn no_clients_says_how_to_log_in() {
        let h = no_clients_hint(None, Some(Path::new("/home/ann")));
        assert!(
            h.contains("ssh-keygen -t ed25519 -f /home/ann/.ssh/id_ed25519"),
            "{h}"
        );
        assert!(h.contains("root's key"), "{h}");
        let c = no_clients_hint(Some(Path::new("/etc/r.toml")), None);
        assert!(c.contains("/etc/r.toml") && c.contains("[[client]]"), "{c}");
        assert!(no_clients_hint(None, None).contains("HOME is not set"));
    }
}

//! The EC2 parts of the command line: `nix-relay ec2 sweep` and starting
//! the manager inside `serve`. `anyhow` is allowed here (the CLI edge).

use std::sync::Arc;
use std::time::SystemTime;

use anyhow::{Context, Result};
use tokio::sync::Mutex;

use super::manager::{Manager, Probe, TICK};
use super::{Ec2Api, Error};
use crate::config::Backend;
use crate::config::ec2::Ec2Config;
use crate::scheduler::Scheduler;

#[derive(clap::Subcommand)]
pub enum Ec2Cmd {
    /// Terminate every live instance tagged with this relay's relay_id
    /// (leftovers of a crash). Run it with the relay stopped: a running
    /// relay's instances carry the same tag.
    Sweep {
        #[arg(long)]
        config: std::path::PathBuf,
        /// Only list what would be terminated.
        #[arg(long)]
        dry_run: bool,
    },
}

pub fn run(cmd: Ec2Cmd) -> Result<()> {
    match cmd {
        Ec2Cmd::Sweep { config, dry_run } => {
            let c = crate::config::Config::load(&config)?;
            let ec2 = c.ec2.context("the config has no [ec2] section")?;
            tokio::runtime::Runtime::new()?.block_on(sweep(&ec2, dry_run))
        }
    }
}

async fn sweep(cfg: &Ec2Config, dry_run: bool) -> Result<()> {
    let api = connect(cfg).await?;
    let touched = super::reconcile::sweep(api, &cfg.relay_id, dry_run).await?;
    let verb = if dry_run {
        "would terminate"
    } else {
        "terminated"
    };
    for i in &touched {
        println!(
            "{verb} {} template={} state={:?} ip={}",
            i.id,
            i.template.as_deref().unwrap_or("-"),
            i.state,
            i.private_ip.as_deref().unwrap_or("-")
        );
    }
    eprintln!(
        "{} instance(s) tagged owner={} {verb}",
        touched.len(),
        cfg.relay_id
    );
    Ok(())
}

#[cfg(feature = "ec2")]
async fn connect(cfg: &Ec2Config) -> Result<Arc<dyn Ec2Api>> {
    Ok(Arc::new(
        super::query::connect(cfg).context("the EC2 endpoint")?,
    ))
}

#[cfg(not(feature = "ec2"))]
async fn connect(_cfg: &Ec2Config) -> Result<Arc<dyn Ec2Api>> {
    Err(Error::NotBuilt.into())
}

/// SSH reachability with the pinned host key: log in and run `true`.
fn ssh_probe() -> Probe {
    Arc::new(|b: Backend| {
        Box::pin(async move {
            let (
                Some(key_file),
                Some(host_key),
                crate::config::BackendUri::Ssh {
                    user, host, port, ..
                },
            ) = (&b.ssh_key, &b.host_key, &b.uri)
            else {
                return false;
            };
            let t = crate::ssh::client::Target {
                user,
                host,
                port: *port,
                key_file,
                host_key,
                timeout: b.connect_timeout,
            };
            match crate::ssh::client::exec(&t, "true", None).await {
                Ok(exec) => matches!(exec.ended.await, Ok(end) if end.exit_status == Some(0)),
                Err(e) => {
                    tracing::debug!(backend = %b.name, error = %crate::error_chain(&e), "not reachable yet");
                    false
                }
            }
        })
    })
}

/// The running manager, for shutdown.
pub struct Running {
    manager: Arc<Mutex<Manager>>,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Stops the loop and terminates every tracked instance.
    pub async fn shutdown(self) {
        self.task.abort();
        self.manager.lock().await.shutdown().await;
    }
}

/// Starts the manager for `serve`: loads the day's spend from
/// `state_dir`, resolves slots, reconciles leftovers (terminating them)
/// before anything launches, then ticks.
pub async fn start(
    cfg: &Ec2Config,
    sched: Arc<Scheduler>,
    state_dir: &std::path::Path,
) -> Result<Running> {
    let api = connect(cfg).await?;
    let key =
        russh::keys::load_secret_key(&cfg.ssh_key, None).map_err(|source| Error::BuilderKey {
            path: cfg.ssh_key.display().to_string(),
            source,
        })?;
    let builder_key = crate::keys::openssh_line(key.public_key());
    let mut m = Manager::new(
        api,
        cfg.clone(),
        sched,
        builder_key,
        ssh_probe(),
        SystemTime::now(),
    )
    .with_ledger_file(state_dir);
    m.start().await.context("starting the EC2 manager")?;
    m.tick().await;
    let manager = Arc::new(Mutex::new(m));
    let mm = manager.clone();
    let task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        loop {
            tick.tick().await;
            mm.lock().await.tick().await;
        }
    });
    Ok(Running { manager, task })
}

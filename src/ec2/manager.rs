//! The instance lifecycle, one task: every `TICK` it lists the relay's
//! tagged instances, moves each tracked one along launch → running → SSH
//! reachable (with its pinned host key) → backend, terminates on
//! idle_grace, max_lifetime, a boot that never became reachable, or the
//! day's budget, accrues cost, and launches what `elastic::decide` asks for.
//! The day's spend is written to the state dir after every launch and tick
//! (`ledger_file`).
//! Untracked tagged instances are terminated (`reconcile`).

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use russh::keys::PublicKey;
use tokio::time::Instant;

use super::cost::{Clock, Ledger};
use super::{Ec2Api, Error, Instance, InstanceState};
use crate::config::ec2::{Ec2Config, Template};
use crate::config::{Backend, BackendUri, Protocol};
use crate::scheduler::Scheduler;

pub const TICK: Duration = Duration::from_secs(5);
/// A booted instance that is not reachable by SSH within this many boot
/// estimates (at least `BOOT_TIMEOUT_MIN`) is terminated.
const BOOT_TIMEOUT_FACTOR: u32 = 4;
const BOOT_TIMEOUT_MIN: Duration = Duration::from_secs(600);

/// Checks that a backend answers SSH with its pinned host key.
pub type Probe = Arc<dyn Fn(Backend) -> Pin<Box<dyn Future<Output = bool> + Send>> + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Launched; not yet reachable.
    Booting,
    /// A backend of the scheduler.
    Joined,
}

#[derive(Debug, Clone)]
pub struct Tracked {
    pub id: String,
    pub template: String,
    /// Small per-template number naming the backend (`ec2-<template>-<n>`,
    /// n < max_instances) so metric labels stay a closed set.
    pub index: u32,
    pub host_key: PublicKey,
    pub launched: Instant,
    pub phase: Phase,
    pub state: InstanceState,
    pub address: Option<String>,
    /// Spot or on-demand, as launched.
    pub market: super::Market,
    /// What it costs an hour: the template's price, or its on-demand price
    /// after a spot fallback.
    pub price_per_hour: f64,
    /// Since when no build ran on it (None: busy).
    pub idle_since: Option<Instant>,
    pub(super) accrued_to: Instant,
}

impl Tracked {
    pub fn backend_name(&self) -> String {
        backend_name(&self.template, self.index)
    }
}

pub fn backend_name(template: &str, index: u32) -> String {
    format!("ec2-{template}-{index}")
}

pub struct Manager {
    pub(super) api: Arc<dyn Ec2Api>,
    pub(super) cfg: Ec2Config,
    pub(super) sched: Arc<Scheduler>,
    pub(super) builder_key: String,
    pub(super) probe: Probe,
    pub(super) clock: Clock,
    pub(super) slots: BTreeMap<String, u32>,
    pub(super) tracked: BTreeMap<String, Tracked>,
    pub(super) ledger: Ledger,
    /// `<state_dir>/ec2-ledger.json` (None: the spend is not persisted).
    pub(super) ledger_path: Option<std::path::PathBuf>,
    /// What was last written there.
    pub(super) ledger_saved: Option<super::ledger_file::LedgerFile>,
    pub(super) last_reconcile: Option<Instant>,
    /// Templates withheld from the scheduler: the budget cannot launch them.
    pub(super) blocked: std::collections::BTreeSet<String>,
}

/// Why an instance is terminated (a log field and a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Idle,
    MaxLifetime,
    Budget,
    Unreachable,
    Untracked,
    Shutdown,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Idle => "idle",
            Reason::MaxLifetime => "max_lifetime",
            Reason::Budget => "budget",
            Reason::Unreachable => "unreachable",
            Reason::Untracked => "untracked",
            Reason::Shutdown => "shutdown",
        }
    }
}

impl Manager {
    pub fn new(
        api: Arc<dyn Ec2Api>,
        cfg: Ec2Config,
        sched: Arc<Scheduler>,
        builder_key: String,
        probe: Probe,
        wall_now: SystemTime,
    ) -> Manager {
        Manager {
            api,
            cfg,
            sched,
            builder_key,
            probe,
            clock: Clock::new(wall_now),
            slots: BTreeMap::new(),
            tracked: BTreeMap::new(),
            ledger: Ledger::default(),
            ledger_path: None,
            ledger_saved: None,
            last_reconcile: None,
            blocked: Default::default(),
        }
    }

    /// Checks each template's instance type against its systems
    /// (`arch::check`), resolves its slots (max_jobs, else the type's vCPU
    /// count) and tells the scheduler which jobs elastic capacity can serve.
    pub async fn start(&mut self) -> Result<(), Error> {
        for t in &self.cfg.templates {
            let api = self.api.clone();
            let it = t.instance_type.clone();
            let info = super::api::retry("DescribeInstanceTypes", super::api::RETRY, || {
                let (api, it) = (api.clone(), it.clone());
                async move { api.instance_type(&it).await }
            })
            .await?
            .ok_or_else(|| Error::UnknownType(t.instance_type.clone()))?;
            super::arch::check(t, &info)?;
            let n = match (t.max_jobs, info.vcpus) {
                (Some(n), _) | (None, Some(n)) => n,
                (None, None) => return Err(Error::NoVcpus(t.instance_type.clone())),
            };
            self.slots.insert(t.name.clone(), n.max(1));
        }
        self.sched.set_elastic(self.elastic_specs());
        Ok(())
    }

    pub fn tracked(&self) -> impl Iterator<Item = &Tracked> {
        self.tracked.values()
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    pub(super) fn template(&self, name: &str) -> Option<&Template> {
        self.cfg.templates.iter().find(|t| t.name == name)
    }

    /// One pass of the lifecycle. Errors are logged; the next tick retries.
    pub async fn tick(&mut self) {
        let now = Instant::now();
        let listed = match self.list().await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "listing EC2 instances failed");
                return;
            }
        };
        self.observe(&listed, now);
        if self
            .last_reconcile
            .is_none_or(|t| now - t >= self.cfg.reconcile_interval)
        {
            self.last_reconcile = Some(now);
            let untracked = super::reconcile::untracked(&listed, &self.tracked);
            if !untracked.is_empty() {
                self.terminate(untracked, Reason::Untracked).await;
            }
        }
        self.accrue(now);
        self.join_reachable().await;
        self.retire(now).await;
        self.launch_wanted(now).await;
        self.publish();
        self.persist().await;
    }

    pub(super) async fn list(&self) -> Result<Vec<Instance>, Error> {
        let (api, id) = (self.api.clone(), self.cfg.relay_id.clone());
        super::api::retry("DescribeInstances", super::api::RETRY, || {
            let (api, id) = (api.clone(), id.clone());
            async move { api.describe_owned(&id).await }
        })
        .await
    }

    /// Updates tracked instances from a listing; forgets vanished ones
    /// (their running builds fail over and are requeued by the session).
    fn observe(&mut self, listed: &[Instance], now: Instant) {
        let mut gone = Vec::new();
        for t in self.tracked.values_mut() {
            match listed.iter().find(|i| i.id == t.id) {
                Some(i) if !i.state.is_gone() => {
                    t.state = i.state;
                    if let Some(ip) = &i.private_ip {
                        t.address = Some(ip.clone());
                    }
                }
                _ => gone.push(t.id.clone()),
            }
        }
        for id in gone {
            if let Some(t) = self.tracked.remove(&id) {
                tracing::warn!(instance = %id, template = %t.template, "instance vanished (spot interruption or terminated outside the relay); its jobs are requeued");
                crate::metrics::ec2_terminated(&t.template, "vanished");
                self.accrue_one(&t, now);
                self.sched.remove_backend(&t.backend_name());
            }
        }
    }

    fn accrue(&mut self, now: Instant) {
        let ids: Vec<String> = self.tracked.keys().cloned().collect();
        for id in ids {
            let t = self.tracked[&id].clone();
            self.accrue_one(&t, now);
            if let Some(t) = self.tracked.get_mut(&id) {
                t.accrued_to = now;
            }
        }
    }

    pub(super) fn accrue_one(&mut self, t: &Tracked, now: Instant) {
        let day = self.clock.day(now);
        (self.ledger).accrue(&t.template, now - t.accrued_to, t.price_per_hour, day);
    }

    fn backend_for(&self, t: &Tracked) -> Option<Backend> {
        let tpl = self.template(&t.template)?;
        Some(Backend {
            name: t.backend_name(),
            uri: BackendUri::Ssh {
                user: self.cfg.ssh_user.clone(),
                host: t.address.clone()?,
                port: 22,
                protocol: Protocol::Serve,
            },
            ssh_key: Some(self.cfg.ssh_key.clone()),
            host_key: Some(t.host_key.clone()),
            systems: tpl.systems.clone(),
            max_jobs: self.slots.get(&tpl.name).copied().unwrap_or(1),
            speed_factor: tpl.speed_factor,
            supported_features: tpl.supported_features.clone(),
            mandatory_features: vec![],
            connect_timeout: Duration::from_secs(10),
            store: None,
            untrusted_clients: false,
        })
    }

    /// Running instances that answer SSH with their pinned key join.
    async fn join_reachable(&mut self) {
        let booting: Vec<String> = (self.tracked.values())
            .filter(|t| t.phase == Phase::Booting && t.state == InstanceState::Running)
            .map(|t| t.id.clone())
            .collect();
        for id in booting {
            let Some(b) = self.backend_for(&self.tracked[&id]) else {
                continue;
            };
            if (self.probe)(b.clone()).await {
                tracing::info!(instance = %id, backend = %b.name, "EC2 instance joined as a backend");
                self.sched.add_backend(b);
                if let Some(t) = self.tracked.get_mut(&id) {
                    t.phase = Phase::Joined;
                    t.idle_since = Some(Instant::now());
                }
            }
        }
    }

    pub(super) fn running_on(&self) -> BTreeMap<String, u32> {
        let snap = self.sched.snapshot();
        snap.backends
            .into_iter()
            .map(|b| (b.name, b.running))
            .collect()
    }

    /// Terminates instances past idle_grace, max_lifetime, their boot
    /// timeout, or all of them when the day's budget is spent.
    async fn retire(&mut self, now: Instant) {
        let running = self.running_on();
        let over_budget = self.ledger.spent_on(self.clock.day(now)) >= self.cfg.budget_per_day;
        let mut out: Vec<(String, Reason)> = Vec::new();
        for t in self.tracked.values_mut() {
            let Some(tpl) = self.cfg.templates.iter().find(|x| x.name == t.template) else {
                out.push((t.id.clone(), Reason::Untracked));
                continue;
            };
            let busy = running.get(&t.backend_name()).copied().unwrap_or(0) > 0;
            match (busy, t.idle_since) {
                (true, _) => t.idle_since = None,
                (false, None) => t.idle_since = Some(now),
                _ => {}
            }
            let boot_timeout = (tpl.boot_estimate * BOOT_TIMEOUT_FACTOR).max(BOOT_TIMEOUT_MIN);
            let reason = if over_budget {
                Some(Reason::Budget)
            } else if now - t.launched >= tpl.max_lifetime {
                Some(Reason::MaxLifetime)
            } else if t.phase == Phase::Booting && now - t.launched >= boot_timeout {
                Some(Reason::Unreachable)
            } else if t.phase == Phase::Joined
                && t.idle_since.is_some_and(|s| now - s >= tpl.idle_grace)
            {
                Some(Reason::Idle)
            } else {
                None
            };
            if let Some(r) = reason {
                out.push((t.id.clone(), r));
            }
        }
        for (id, reason) in out {
            self.terminate(vec![id], reason).await;
        }
    }

    /// Terminates `ids` and forgets them (a failed call is retried by the
    /// next reconcile, which finds them untracked).
    pub async fn terminate(&mut self, ids: Vec<String>, reason: Reason) {
        let now = Instant::now();
        for id in &ids {
            if let Some(t) = self.tracked.remove(id) {
                self.accrue_one(&t, now);
                self.sched.remove_backend(&t.backend_name());
                crate::metrics::ec2_terminated(&t.template, reason.as_str());
            }
            tracing::info!(instance = %id, reason = reason.as_str(), "terminating EC2 instance");
        }
        let api = self.api.clone();
        let r = super::api::retry("TerminateInstances", super::api::RETRY, || {
            let (api, ids) = (api.clone(), ids.clone());
            async move { api.terminate(&ids).await }
        })
        .await;
        if let Err(e) = r {
            tracing::error!(error = %crate::error_chain(&e), ?ids, "terminating failed; the next reconcile retries");
        }
    }

    /// Terminates everything this manager tracks (relay shutdown).
    pub async fn shutdown(&mut self) {
        let ids: Vec<String> = self.tracked.keys().cloned().collect();
        if !ids.is_empty() {
            self.terminate(ids, Reason::Shutdown).await;
        }
        self.persist().await;
    }
}

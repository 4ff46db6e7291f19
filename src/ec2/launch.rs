//! The launch half of the manager: the budget the decision sees, the plan,
//! RunInstances (spot first when asked, on-demand on no spot capacity),
//! and the gauges.

use std::collections::BTreeSet;

use russh::keys::PrivateKey;
use tokio::time::Instant;

use super::api::ErrorKind;
use super::manager::{Manager, Phase, Tracked};
use super::{Error, Instance, LaunchSpec, Market, userdata};
use crate::config::ec2::Template;
use crate::scheduler::elastic::{self, Budget, InstanceView, TemplateView, WaitingGroup};
use crate::scheduler::notice::LaunchNotice;
use crate::scheduler::{ElasticSpec, Scheduler};

/// One instance launched.
#[derive(Debug, Clone)]
pub(super) struct Launched {
    pub market: Market,
    /// The spot refusal's error code, when this is an on-demand fallback.
    pub fallback: Option<String>,
}

/// The metric label of a no-spot-capacity error code (the codes
/// `ApiError::from_code` classifies as `NoSpot`: a closed set).
fn spot_code(code: &str) -> &'static str {
    match code {
        "InsufficientInstanceCapacity" => "InsufficientInstanceCapacity",
        "SpotMaxPriceTooLow" => "SpotMaxPriceTooLow",
        "MaxSpotInstanceCountExceeded" => "MaxSpotInstanceCountExceeded",
        "InsufficientCapacity" => "InsufficientCapacity",
        "UnfulfillableCapacity" => "UnfulfillableCapacity",
        _ => "other",
    }
}

/// The scheduler's waiting jobs as the launch decision sees them.
pub(crate) fn waiting_groups(sched: &Scheduler) -> Vec<WaitingGroup> {
    (sched.waiting_summary().into_iter())
        .map(|w| WaitingGroup {
            system: w.system,
            required_features: w.required_features,
            count: u32::try_from(w.count).unwrap_or(u32::MAX),
            oldest_wait: w.oldest_wait,
            static_can_serve: w.servable,
        })
        .collect()
}

impl Manager {
    fn budget(&self, now: Instant) -> Budget {
        let committed = (self.tracked.values())
            .filter_map(|t| {
                let tpl = self.template(&t.template)?;
                let left = tpl.max_lifetime.saturating_sub(now - t.launched);
                Some(t.price_per_hour * left.as_secs_f64() / 3600.0)
            })
            .sum();
        Budget {
            per_day: self.cfg.budget_per_day,
            spent: self.ledger.spent_on(self.clock.day(now)),
            committed,
        }
    }

    fn plan(&self, now: Instant) -> elastic::Plan {
        let running = self.running_on();
        let waiting: Vec<WaitingGroup> = waiting_groups(&self.sched);
        let views: Vec<TemplateView<'_>> = (self.cfg.templates.iter())
            .map(|t| TemplateView {
                name: &t.name,
                systems: &t.systems,
                supported_features: &t.supported_features,
                price_per_hour: t.price_per_hour,
                worst_price_per_hour: t.worst_price(),
                boot_estimate: t.boot_estimate,
                max_lifetime: t.max_lifetime,
                max_instances: t.max_instances,
                slots: self.slots.get(&t.name).copied().unwrap_or(1),
            })
            .collect();
        let instances: Vec<InstanceView<'_>> = (self.tracked.values())
            .map(|t| {
                let slots = self.slots.get(&t.template).copied().unwrap_or(1);
                let used = running.get(&t.backend_name()).copied().unwrap_or(0);
                InstanceView {
                    template: &t.template,
                    free_slots: slots.saturating_sub(used),
                }
            })
            .collect();
        elastic::decide(&waiting, &views, &instances, self.budget(now))
    }

    pub(super) async fn launch_wanted(&mut self, now: Instant) {
        self.withhold_unaffordable(now);
        let plan = self.plan(now);
        for name in &plan.refused_for_budget {
            crate::metrics::ec2_launch(name, "refused_budget");
        }
        let mut told: Vec<LaunchNotice> = Vec::new();
        for want in plan.launch {
            match self.launch(&want.template).await {
                Ok(l) => {
                    // On disk before anything else: a crash now still counts it.
                    self.persist().await;
                    self.count_notice(&mut told, want, &l);
                }
                Err(e) => {
                    let name = &want.template;
                    tracing::error!(template = %name, error = %crate::error_chain(&e), "launching an EC2 instance failed");
                    crate::metrics::ec2_launch(name, "failed");
                }
            }
        }
        for n in told {
            self.sched.announce_launch(n);
        }
    }

    /// Adds launch `l` (for `want`'s jobs) to the notices for waiting jobs:
    /// one per group, template and market.
    fn count_notice(&self, told: &mut Vec<LaunchNotice>, want: elastic::Launch, l: &Launched) {
        let Some(tpl) = self.template(&want.template) else {
            return;
        };
        let market = match (l.market, &l.fallback) {
            (Market::Spot, _) => "spot".to_owned(),
            (Market::OnDemand, None) => "on-demand".to_owned(),
            (Market::OnDemand, Some(code)) => format!("on-demand (no spot capacity: {code})"),
        };
        let same = |n: &&mut LaunchNotice| {
            n.template == want.template
                && n.system == want.system
                && n.required_features == want.required_features
                && n.market == market
        };
        if let Some(n) = told.iter_mut().find(same) {
            n.instances += 1;
            return;
        }
        told.push(LaunchNotice {
            system: want.system,
            required_features: want.required_features,
            template: want.template,
            instance_type: tpl.instance_type.clone(),
            market,
            instances: 1,
            reason: want.reason,
            boot_estimate: tpl.boot_estimate,
        });
    }

    /// Templates the budget cannot launch and that have no live instance
    /// are withheld from the scheduler, so jobs only they could serve fail
    /// with a reason instead of waiting all day; they come back when the
    /// budget allows (the next UTC day, or when live instances end).
    fn withhold_unaffordable(&mut self, now: Instant) {
        let b = self.budget(now);
        let blocked: BTreeSet<String> = (self.cfg.templates.iter())
            .filter(|t| {
                let live = self.tracked.values().any(|x| x.template == t.name);
                let worst = t.worst_price() * t.max_lifetime.as_secs_f64() / 3600.0;
                !live && b.spent + b.committed + worst > b.per_day
            })
            .map(|t| t.name.clone())
            .collect();
        if blocked == self.blocked {
            return;
        }
        for name in blocked.difference(&self.blocked) {
            tracing::warn!(template = %name, budget = b.per_day, spent = b.spent, "EC2 template withheld: the day's budget cannot cover another instance; jobs only it could serve fail");
        }
        for name in self.blocked.difference(&blocked) {
            tracing::info!(template = %name, "EC2 template available again");
        }
        self.blocked = blocked;
        self.sched.set_elastic(self.elastic_specs());
    }

    /// What the scheduler may queue jobs for: every template not withheld.
    pub(super) fn elastic_specs(&self) -> Vec<ElasticSpec> {
        (self.cfg.templates.iter())
            .filter(|t| !self.blocked.contains(&t.name))
            .map(|t| ElasticSpec {
                name: t.name.clone(),
                systems: t.systems.clone(),
                supported_features: t.supported_features.clone(),
                mandatory_features: vec![],
            })
            .collect()
    }

    fn spec(&self, tpl: &Template, user_data: String, market: Market) -> LaunchSpec {
        LaunchSpec {
            name: format!("nix-relay {} {}", self.cfg.relay_id, tpl.name),
            template: tpl.name.clone(),
            relay_id: self.cfg.relay_id.clone(),
            instance_type: tpl.instance_type.clone(),
            ami: tpl.ami.clone(),
            subnet: tpl.subnet.clone(),
            security_group: tpl.security_group.clone(),
            market,
            user_data,
        }
    }

    /// Launches one instance of template `name` and tracks it: spot first
    /// if the template asks, on-demand (at its on-demand price) when EC2
    /// has no spot capacity for it.
    async fn launch(&mut self, name: &str) -> Result<Launched, Error> {
        let Some(tpl) = self.template(name).cloned() else {
            return Err(Error::NoTemplate(name.to_owned()));
        };
        let host_key = userdata::new_host_key().map_err(Error::Random)?;
        let script = self.user_data(&tpl, &host_key)?;
        let first = if tpl.spot {
            Market::Spot
        } else {
            Market::OnDemand
        };
        let mut market = first;
        let mut fallback = None;
        let mut inst = self.run(&self.spec(&tpl, script.clone(), first)).await;
        if let Err(Error::Api { source, .. }) = &inst
            && first == Market::Spot
            && source.kind == ErrorKind::NoSpot
        {
            tracing::warn!(template = %tpl.name, code = %source.code, message = %source.message, "no spot capacity; launching on-demand");
            crate::metrics::ec2_spot_fallback(&tpl.name, spot_code(&source.code));
            fallback = Some(source.code.clone());
            market = Market::OnDemand;
            inst = self.run(&self.spec(&tpl, script, market)).await;
        }
        let inst = inst?;
        let price_per_hour = match market {
            Market::Spot => tpl.price_per_hour,
            Market::OnDemand => tpl.on_demand_price(),
        };
        tracing::info!(instance = %inst.id, template = %tpl.name, ?market, price_per_hour, "launched EC2 instance");
        crate::metrics::ec2_launch(&tpl.name, "launched");
        let now = Instant::now();
        let index = self.free_index(&tpl.name);
        let launched = Launched { market, fallback };
        self.tracked.insert(
            inst.id.clone(),
            Tracked {
                id: inst.id,
                template: tpl.name.clone(),
                index,
                host_key: host_key.public_key().clone(),
                launched: now,
                phase: Phase::Booting,
                state: inst.state,
                address: inst.private_ip,
                market,
                price_per_hour,
                idle_since: None,
                accrued_to: now,
            },
        );
        Ok(launched)
    }

    async fn run(&self, spec: &LaunchSpec) -> Result<Instance, Error> {
        let api = self.api.clone();
        crate::ec2::api::retry("RunInstances", crate::ec2::api::RETRY, || {
            let api = api.clone();
            async move { api.run_instance(spec).await }
        })
        .await
    }

    fn user_data(&self, tpl: &Template, host_key: &PrivateKey) -> Result<String, Error> {
        userdata::render(&userdata::Inputs {
            relay_id: &self.cfg.relay_id,
            template: &tpl.name,
            ssh_user: &self.cfg.ssh_user,
            builder_key: &self.builder_key,
            host_key,
            dead_man_secs: self.cfg.dead_man_switch.as_secs().max(1),
            max_lifetime_minutes: tpl.max_lifetime.as_secs().div_ceil(60),
        })
    }

    /// The lowest index neither a tracked instance nor a backend still
    /// draining in the scheduler uses.
    fn free_index(&self, template: &str) -> u32 {
        let names: Vec<String> = (self.sched.snapshot().backends.into_iter())
            .map(|b| b.name)
            .chain(self.tracked.values().map(Tracked::backend_name))
            .collect();
        (0..)
            .find(|&k| !names.contains(&super::manager::backend_name(template, k)))
            .unwrap_or(0)
    }

    /// Sets the instance gauges (by state and template) and the status.
    pub(super) fn publish(&self) {
        let now = Instant::now();
        super::publish_status(super::Status {
            relay_id: self.cfg.relay_id.clone(),
            budget_per_day: self.cfg.budget_per_day,
            spent_today: self.ledger.spent_on(self.clock.day(now)),
            instances: (self.tracked.values())
                .map(|t| super::InstanceStatus {
                    id: t.id.clone(),
                    template: t.template.clone(),
                    backend: t.backend_name(),
                    phase: t.phase,
                    state: t.state,
                    age_seconds: (now - t.launched).as_secs(),
                })
                .collect(),
            cost: (self.cfg.templates.iter())
                .map(|t| {
                    let c = self.ledger.per_template().get(&t.name);
                    (t.name.clone(), c.cloned().unwrap_or_default())
                })
                .collect(),
        });
        for tpl in &self.cfg.templates {
            for (state, phase) in [("booting", Phase::Booting), ("joined", Phase::Joined)] {
                let n = (self.tracked.values())
                    .filter(|t| t.template == tpl.name && t.phase == phase)
                    .count();
                crate::metrics::ec2_instances(state, &tpl.name, n);
            }
        }
    }
}

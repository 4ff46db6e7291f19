//! When to launch an elastic (EC2) builder: a pure function of the waiting
//! jobs, the templates, the instances already up or booting, the budget
//! and nothing else (time enters only as each group's oldest wait).
//!
//! A group of waiting jobs (same system and required features) asks for
//! capacity when no static backend could ever serve it, or when its oldest
//! job has waited longer than the template's boot estimate (a booted
//! instance would already be serving it). Free slots of instances already
//! up or booting for a fitting template are used first; one instance serves
//! as many jobs as it has slots. Then the cheapest fitting template with
//! room under its `max_instances` is launched, if the day's budget covers
//! its worst case (worst price × max_lifetime; a spot template's worst is
//! its on-demand fallback) on top of what is spent and what
//! the running instances could still cost.

use std::time::Duration;

/// Jobs waiting for one (system, required features).
#[derive(Debug, Clone, PartialEq)]
pub struct WaitingGroup {
    pub system: String,
    pub required_features: Vec<String>,
    pub count: u32,
    pub oldest_wait: Duration,
    /// Some current static backend could ever serve these jobs.
    pub static_can_serve: bool,
}

/// A launchable kind of instance.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateView<'a> {
    pub name: &'a str,
    pub systems: &'a [String],
    pub supported_features: &'a [String],
    /// Dollars an hour as first asked for (orders the templates).
    pub price_per_hour: f64,
    /// The dearest it can cost (a spot template's on-demand fallback): what
    /// the budget reserves.
    pub worst_price_per_hour: f64,
    pub boot_estimate: Duration,
    pub max_lifetime: Duration,
    pub max_instances: u32,
    /// Build slots one instance brings (max_jobs).
    pub slots: u32,
}

/// An instance up or booting: its template and the slots not yet used
/// (a booting instance has all of them free).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceView<'a> {
    pub template: &'a str,
    pub free_slots: u32,
}

/// Dollars for the current UTC day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Budget {
    pub per_day: f64,
    /// Already accrued today.
    pub spent: f64,
    /// What the live instances could still cost before their max_lifetime.
    pub committed: f64,
}

/// Why a group of waiting jobs asked for an instance.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Reason {
    /// No current static backend could ever serve them.
    NoStaticBackend,
    /// The oldest waited `waited`, longer than the template's boot estimate.
    WaitedLonger { waited: Duration },
}

/// One instance to launch, and the waiting jobs it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct Launch {
    pub template: String,
    pub system: String,
    pub required_features: Vec<String>,
    pub reason: Reason,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// One entry per instance.
    pub launch: Vec<Launch>,
    /// Templates a launch was wanted for but the budget refused.
    pub refused_for_budget: Vec<String>,
}

pub fn worst_case_cost(t: &TemplateView<'_>) -> f64 {
    t.worst_price_per_hour * t.max_lifetime.as_secs_f64() / 3600.0
}

fn fits(g: &WaitingGroup, t: &TemplateView<'_>) -> bool {
    t.systems.contains(&g.system)
        && g.required_features
            .iter()
            .all(|f| t.supported_features.contains(f))
}

pub fn decide(
    waiting: &[WaitingGroup],
    templates: &[TemplateView<'_>],
    instances: &[InstanceView<'_>],
    budget: Budget,
) -> Plan {
    let mut plan = Plan::default();
    let mut free: Vec<(String, u32)> = instances
        .iter()
        .map(|i| (i.template.to_owned(), i.free_slots))
        .collect();
    let mut counts: Vec<u32> = templates
        .iter()
        .map(|t| instances.iter().filter(|i| i.template == t.name).count() as u32)
        .collect();
    let mut committed = budget.spent + budget.committed;
    let mut groups: Vec<&WaitingGroup> = waiting.iter().filter(|g| g.count > 0).collect();
    groups.sort_by_key(|g| std::cmp::Reverse(g.oldest_wait));
    for g in groups {
        let mut fitting: Vec<usize> = (0..templates.len())
            .filter(|&i| fits(g, &templates[i]))
            .filter(|&i| !g.static_can_serve || g.oldest_wait > templates[i].boot_estimate)
            .collect();
        fitting.sort_by(|&a, &b| {
            let (a, b) = (&templates[a], &templates[b]);
            a.price_per_hour
                .total_cmp(&b.price_per_hour)
                .then(a.name.cmp(b.name))
        });
        let mut need = g.count;
        for (tname, slots) in free.iter_mut() {
            if fitting.iter().any(|&i| templates[i].name == tname) {
                let used = need.min(*slots);
                *slots -= used;
                need -= used;
            }
        }
        while need > 0 {
            let Some(&i) = fitting
                .iter()
                .find(|&&i| counts[i] < templates[i].max_instances)
            else {
                break;
            };
            let t = &templates[i];
            let cost = worst_case_cost(t);
            if committed + cost > budget.per_day {
                plan.refused_for_budget.push(t.name.to_owned());
                break;
            }
            committed += cost;
            counts[i] += 1;
            plan.launch.push(Launch {
                template: t.name.to_owned(),
                system: g.system.clone(),
                required_features: g.required_features.clone(),
                reason: if g.static_can_serve {
                    Reason::WaitedLonger {
                        waited: g.oldest_wait,
                    }
                } else {
                    Reason::NoStaticBackend
                },
            });
            let slots = t.slots.max(1);
            let used = need.min(slots);
            need -= used;
            free.push((t.name.to_owned(), slots - used));
        }
    }
    plan
}

#[cfg(test)]
#[path = "elastic_tests.rs"]
mod tests;

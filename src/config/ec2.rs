//! The `[ec2]` section: EC2 builders launched on demand.
//!
//! Validation follows the rest of the config: every problem is collected.
//! Safety limits (budget, max_instances, max_lifetime, idle_grace, the
//! dead-man switch) are required or defaulted, never unlimited.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::validate::parse_duration;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEc2 {
    pub region: String,
    /// API endpoint override (tests: a moto server).
    pub endpoint: Option<String>,
    /// Dollars per UTC day, hard cap.
    pub budget_per_day: f64,
    /// Value of the `owner` tag on every instance this relay launches.
    pub relay_id: String,
    /// The builder key: its public half is authorized on every instance.
    pub ssh_key: String,
    /// Login user on the instance (created by the user data).
    pub ssh_user: Option<String>,
    /// An instance powers itself off when the relay has not touched it for
    /// this long (must exceed every template's idle_grace).
    pub dead_man_switch: Option<String>,
    /// How often the relay lists its tagged instances (adopt or terminate).
    pub reconcile_interval: Option<String>,
    #[serde(default)]
    pub template: Vec<RawTemplate>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplate {
    pub name: String,
    pub systems: Vec<String>,
    #[serde(default)]
    pub supported_features: Vec<String>,
    pub instance_type: String,
    pub ami: String,
    pub subnet: Option<String>,
    pub security_group: Option<String>,
    #[serde(default)]
    pub spot: bool,
    pub price_per_hour: f64,
    /// With `spot`: what an on-demand fallback costs (default price_per_hour).
    pub on_demand_price_per_hour: Option<f64>,
    pub boot_estimate: Option<String>,
    pub idle_grace: Option<String>,
    pub max_lifetime: Option<String>,
    pub max_instances: Option<u32>,
    pub speed_factor: Option<f64>,
    /// Default: the instance type's vCPU count (DescribeInstanceTypes).
    pub max_jobs: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Ec2Config {
    pub region: String,
    pub endpoint: Option<String>,
    pub budget_per_day: f64,
    pub relay_id: String,
    pub ssh_key: PathBuf,
    pub ssh_user: String,
    pub dead_man_switch: Duration,
    pub reconcile_interval: Duration,
    pub templates: Vec<Template>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    pub name: String,
    pub systems: Vec<String>,
    pub supported_features: Vec<String>,
    pub instance_type: String,
    pub ami: String,
    pub subnet: Option<String>,
    pub security_group: Option<String>,
    /// Ask for spot capacity first, fall back to on-demand.
    pub spot: bool,
    /// Dollars an hour of an instance as first asked for (the spot price
    /// with `spot`).
    pub price_per_hour: f64,
    /// With `spot`: dollars an hour of an on-demand fallback.
    pub on_demand_price_per_hour: Option<f64>,
    pub boot_estimate: Duration,
    pub idle_grace: Duration,
    pub max_lifetime: Duration,
    pub max_instances: u32,
    pub speed_factor: f64,
    pub max_jobs: Option<u32>,
}

impl Template {
    /// Dollars an hour of an on-demand instance of this template.
    pub fn on_demand_price(&self) -> f64 {
        self.on_demand_price_per_hour.unwrap_or(self.price_per_hour)
    }

    /// The dearest an instance of it can be: a spot template may fall back
    /// to on-demand, so the budget reserves the higher of the two.
    pub fn worst_price(&self) -> f64 {
        if self.spot {
            self.price_per_hour.max(self.on_demand_price())
        } else {
            self.price_per_hour
        }
    }
}

pub const DEFAULT_SSH_USER: &str = "nix-relay";
pub const DEFAULT_BOOT_ESTIMATE: Duration = Duration::from_secs(180);
pub const DEFAULT_IDLE_GRACE: Duration = Duration::from_secs(600);
pub const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(6 * 3600);
pub const DEFAULT_DEAD_MAN: Duration = Duration::from_secs(30 * 60);
pub const DEFAULT_RECONCILE: Duration = Duration::from_secs(60);

fn dur(at: &str, v: Option<String>, default: Duration, p: &mut Vec<String>) -> Duration {
    match v.as_deref().map(parse_duration) {
        None => default,
        Some(Ok(d)) if !d.is_zero() => d,
        Some(Ok(_)) => {
            p.push(format!("{at} must be positive"));
            default
        }
        Some(Err(e)) => {
            p.push(format!("{at}: {e}"));
            default
        }
    }
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.')
}

pub fn validate(raw: RawEc2, p: &mut Vec<String>) -> Option<Ec2Config> {
    let n = p.len();
    let region_ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    if raw.region.is_empty() || !raw.region.chars().all(region_ok) {
        p.push("ec2.region must be an AWS region name such as eu-central-1".into());
    }
    if let Some(e) = &raw.endpoint
        && !(e.starts_with("http://") || e.starts_with("https://"))
    {
        p.push(format!(
            "ec2.endpoint {e:?} must be an http:// or https:// URL"
        ));
    }
    if !(raw.budget_per_day.is_finite() && raw.budget_per_day >= 0.0) {
        p.push("ec2.budget_per_day must be a number of dollars ≥ 0".into());
    }
    if !is_name(&raw.relay_id) {
        p.push("ec2.relay_id must be 1-64 of [A-Za-z0-9._-] (it is a tag value)".into());
    }
    let ssh_user = raw.ssh_user.unwrap_or_else(|| DEFAULT_SSH_USER.into());
    if !is_name(&ssh_user) {
        p.push("ec2.ssh_user must be a plain user name".into());
    }
    let dead_man = dur(
        "ec2.dead_man_switch",
        raw.dead_man_switch,
        DEFAULT_DEAD_MAN,
        p,
    );
    let reconcile = dur(
        "ec2.reconcile_interval",
        raw.reconcile_interval,
        DEFAULT_RECONCILE,
        p,
    );
    if raw.template.is_empty() {
        p.push("ec2: no [[ec2.template]]".into());
    }
    let mut templates: Vec<Template> = Vec::new();
    for (i, t) in raw.template.into_iter().enumerate() {
        if templates.iter().any(|o| o.name == t.name) {
            p.push(format!("ec2.template[{i}]: duplicate name {:?}", t.name));
        }
        templates.push(validate_template(i, t, p));
    }
    for t in &templates {
        if t.idle_grace >= dead_man {
            p.push(format!(
                "ec2.template {:?}: idle_grace must be shorter than ec2.dead_man_switch ({dead_man:?})",
                t.name
            ));
        }
    }
    (p.len() == n).then(|| Ec2Config {
        region: raw.region,
        endpoint: raw.endpoint,
        budget_per_day: raw.budget_per_day,
        relay_id: raw.relay_id,
        ssh_key: PathBuf::from(raw.ssh_key),
        ssh_user,
        dead_man_switch: dead_man,
        reconcile_interval: reconcile,
        templates,
    })
}

fn validate_template(i: usize, t: RawTemplate, p: &mut Vec<String>) -> Template {
    let at = format!("ec2.template[{i}] ({})", t.name);
    if !is_name(&t.name) {
        p.push(format!("{at}: name must be 1-64 of [A-Za-z0-9._-]"));
    }
    if t.systems.is_empty() {
        p.push(format!("{at}: systems is empty"));
    }
    for (k, v) in [("instance_type", &t.instance_type), ("ami", &t.ami)] {
        if v.is_empty() {
            p.push(format!("{at}: {k} is empty"));
        }
    }
    if !(t.price_per_hour.is_finite() && t.price_per_hour > 0.0) {
        p.push(format!("{at}: price_per_hour must be a positive number"));
    }
    match t.on_demand_price_per_hour {
        Some(_) if !t.spot => p.push(format!(
            "{at}: on_demand_price_per_hour is for spot templates (set spot = true, or use price_per_hour)"
        )),
        Some(x) if !(x.is_finite() && x > 0.0) => p.push(format!(
            "{at}: on_demand_price_per_hour must be a positive number"
        )),
        _ => {}
    }
    let speed_factor = t.speed_factor.unwrap_or(1.0);
    if !(speed_factor.is_finite() && speed_factor > 0.0) {
        p.push(format!("{at}: speed_factor must be a positive number"));
    }
    if t.max_jobs == Some(0) {
        p.push(format!("{at}: max_jobs must be at least 1"));
    }
    let max_instances = t.max_instances.unwrap_or(1);
    if max_instances == 0 {
        p.push(format!("{at}: max_instances must be at least 1"));
    }
    let q = |k: &str| format!("{at}: {k}");
    Template {
        boot_estimate: dur(
            &q("boot_estimate"),
            t.boot_estimate,
            DEFAULT_BOOT_ESTIMATE,
            p,
        ),
        idle_grace: dur(&q("idle_grace"), t.idle_grace, DEFAULT_IDLE_GRACE, p),
        max_lifetime: dur(&q("max_lifetime"), t.max_lifetime, DEFAULT_MAX_LIFETIME, p),
        name: t.name,
        systems: t.systems,
        supported_features: t.supported_features,
        instance_type: t.instance_type,
        ami: t.ami,
        subnet: t.subnet,
        security_group: t.security_group,
        spot: t.spot,
        price_per_hour: t.price_per_hour,
        on_demand_price_per_hour: t.on_demand_price_per_hour,
        max_instances,
        speed_factor,
        max_jobs: t.max_jobs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(extra: &str) -> Result<Ec2Config, Vec<String>> {
        parse(extra, "")
    }

    /// With `extra` lines in the template.
    fn raw_template(extra: &str) -> Result<Ec2Config, Vec<String>> {
        parse("", extra)
    }

    fn parse(extra: &str, in_template: &str) -> Result<Ec2Config, Vec<String>> {
        let text = format!(
            r#"
region = "eu-west-1"
budget_per_day = 20.0
relay_id = "relay-1"
ssh_key = "/k"
{extra}
[[template]]
name = "arm"
systems = ["aarch64-linux"]
instance_type = "c7g.2xlarge"
ami = "ami-1"
price_per_hour = 0.29
idle_grace = "5m"
{in_template}
"#
        );
        let raw: RawEc2 = toml::from_str(&text).map_err(|e| vec![e.to_string()])?;
        let mut p = Vec::new();
        validate(raw, &mut p).ok_or(p)
    }

    #[test]
    fn defaults_fill_the_safety_limits() {
        let c = raw("").unwrap();
        let t = &c.templates[0];
        assert_eq!(t.idle_grace, Duration::from_secs(300));
        assert_eq!(t.max_lifetime, DEFAULT_MAX_LIFETIME);
        assert_eq!(t.max_instances, 1);
        assert_eq!(t.max_jobs, None);
        assert_eq!(c.ssh_user, DEFAULT_SSH_USER);
        assert_eq!(c.dead_man_switch, DEFAULT_DEAD_MAN);
    }

    #[test]
    fn a_dead_man_switch_shorter_than_idle_grace_is_refused() {
        let p = raw("dead_man_switch = \"2m\"").unwrap_err();
        assert!(p[0].contains("idle_grace must be shorter"), "{p:?}");
    }

    #[test]
    fn a_spot_template_reserves_its_dearer_on_demand_price() {
        let plain = raw("").unwrap();
        assert_eq!(plain.templates[0].worst_price(), 0.29);
        assert_eq!(plain.templates[0].on_demand_price(), 0.29);
        let spot = raw_template("spot = true\non_demand_price_per_hour = 0.58").unwrap();
        let t = &spot.templates[0];
        assert_eq!(
            (t.price_per_hour, t.on_demand_price(), t.worst_price()),
            (0.29, 0.58, 0.58)
        );
        let p = raw_template("on_demand_price_per_hour = 0.58").unwrap_err();
        assert!(p[0].contains("is for spot templates"), "{p:?}");
        let p = raw_template("spot = true\non_demand_price_per_hour = -1.0").unwrap_err();
        assert!(p[0].contains("must be a positive number"), "{p:?}");
    }

    #[test]
    fn there_is_no_address_override_an_instance_is_reached_at_its_own_address() {
        // The lab's instances have loopback addresses of their own now.
        let p = raw("test_address_override = \"127.0.0.1:2222\"").unwrap_err();
        assert!(
            p.iter()
                .any(|e| e.contains("unknown field `test_address_override`")),
            "{p:?}"
        );
    }
}

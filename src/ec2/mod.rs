//! EC2 builders on demand. The launch decision is the scheduler's pure
//! `scheduler::elastic::decide`; this module carries it out and makes sure
//! nothing is left running:
//!
//! * `api`: the [`Ec2Api`] trait (the few EC2 calls we use) with retries;
//!   `query` implements it on EC2's Query API over `crate::aws` (cargo
//!   feature `ec2`), `query_xml` decodes the replies.
//! * `userdata`: the boot script (builder key, pinned host key, trusted
//!   user, dead-man switch), rendered deterministically.
//! * `manager`: launch → running → SSH reachable → backend; terminate on
//!   idle_grace, max_lifetime or budget; requeue on a vanished instance.
//! * `reconcile`: tagged instances this relay does not track are adopted or
//!   terminated (at start, every `reconcile_interval`, `nix-relay ec2 sweep`).
//! * `cost`: instance-seconds × price per template and per UTC day;
//!   `ledger_file` keeps the day's spend across restarts.
//!
//! Invariant: every instance is launched with `owner = relay_id`, a
//! `template` tag and `InstanceInitiatedShutdownBehavior = terminate`, and
//! is either tracked by the manager or terminated by the next reconcile.

pub mod api;
pub mod arch;
pub mod cli;
pub mod cost;
mod launch;
pub mod ledger_file;
pub mod manager;
#[cfg(feature = "ec2")]
pub mod query;
#[cfg(feature = "ec2")]
mod query_xml;
pub mod reconcile;
pub mod userdata;

#[cfg(test)]
pub(crate) mod fake;
#[cfg(test)]
mod manager_tests;
#[cfg(all(test, feature = "ec2"))]
mod query_tests;

pub use api::{ApiError, Ec2Api, Instance, InstanceState, LaunchSpec, Market, TypeInfo};

/// Tag keys on every instance the relay launches.
pub const TAG_OWNER: &str = "owner";
pub const TAG_TEMPLATE: &str = "nix-relay-template";
pub const TAG_NAME: &str = "Name";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("EC2 {op} failed")]
    Api {
        op: &'static str,
        #[source]
        source: ApiError,
    },
    #[error("encoding the host key for a new instance")]
    HostKey(#[source] russh::keys::ssh_key::Error),
    #[error("reading /dev/urandom for a new instance's host key")]
    Random(#[source] std::io::Error),
    #[error("reading the builder key {path}")]
    BuilderKey {
        path: String,
        #[source]
        source: russh::keys::Error,
    },
    #[error("instance type {0}: DescribeInstanceTypes reported no vCPU count")]
    NoVcpus(String),
    #[error("no EC2 template named {0}")]
    NoTemplate(String),
    #[error("instance type {0}: DescribeInstanceTypes does not list it")]
    UnknownType(String),
    #[error(transparent)]
    Architecture(Box<arch::Mismatch>),
    #[error("nix-relay was built without the `ec2` feature; [ec2] cannot be used")]
    NotBuilt,
    #[error("reading the EC2 spend ledger {path}")]
    LedgerRead {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing the EC2 spend ledger {path}")]
    LedgerParse {
        path: std::path::PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("the EC2 spend ledger {0} has an unknown version or a negative or non-finite amount")]
    LedgerInvalid(std::path::PathBuf),
    #[error("encoding the EC2 spend ledger")]
    LedgerEncode(#[source] serde_json::Error),
    #[error("writing the EC2 spend ledger {path}")]
    LedgerWrite {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `/status` shows of EC2 (the `ec2` field), set by the manager.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Status {
    pub relay_id: String,
    pub budget_per_day: f64,
    pub spent_today: f64,
    pub instances: Vec<InstanceStatus>,
    /// Instance-seconds and dollars per template since start.
    pub cost: std::collections::BTreeMap<String, cost::TemplateCost>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct InstanceStatus {
    pub id: String,
    pub template: String,
    pub backend: String,
    pub phase: manager::Phase,
    pub state: InstanceState,
    pub age_seconds: u64,
}

static STATUS: std::sync::Mutex<Option<Status>> = std::sync::Mutex::new(None);

/// The last status the manager published (None: no `[ec2]`).
pub fn status() -> Option<Status> {
    STATUS.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn publish_status(s: Status) {
    *STATUS.lock().unwrap_or_else(|e| e.into_inner()) = Some(s);
}

/// The fractional cost counters in Prometheus text format (appended to
/// `/metrics`, rendered by [`crate::metrics::ec2_cost_text`]). Empty
/// without `[ec2]`.
pub fn metrics_text() -> String {
    status()
        .map(|s| {
            crate::metrics::ec2_cost_text(s.cost.iter().map(|(t, c)| {
                let cost = crate::metrics::Ec2Cost {
                    instance_seconds: c.instance_seconds,
                    dollars: c.dollars,
                };
                (t.as_str(), cost)
            }))
        })
        .unwrap_or_default()
}

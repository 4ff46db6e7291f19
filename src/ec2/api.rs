//! The EC2 calls the relay makes, behind a trait: `query` is the real one,
//! tests use an in-memory fake (unit) and a moto server (integration).
//! [`retry`] is the only retry layer (nothing under `query` retries):
//! throttling and transient errors back off exponentially, other errors
//! fail at once.

use std::future::Future;
use std::time::{Duration, SystemTime};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InstanceState {
    Pending,
    Running,
    ShuttingDown,
    Stopping,
    Stopped,
    Terminated,
    Unknown,
}

impl InstanceState {
    pub fn parse(s: &str) -> InstanceState {
        match s {
            "pending" => InstanceState::Pending,
            "running" => InstanceState::Running,
            "shutting-down" => InstanceState::ShuttingDown,
            "stopping" => InstanceState::Stopping,
            "stopped" => InstanceState::Stopped,
            "terminated" => InstanceState::Terminated,
            _ => InstanceState::Unknown,
        }
    }

    /// Gone or going: it will never build again.
    pub fn is_gone(self) -> bool {
        matches!(
            self,
            InstanceState::ShuttingDown | InstanceState::Terminated
        )
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    pub id: String,
    pub state: InstanceState,
    /// The `nix-relay-template` tag.
    pub template: Option<String>,
    pub private_ip: Option<String>,
    pub launched_at: Option<SystemTime>,
}

/// What DescribeInstanceTypes says of one instance type.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TypeInfo {
    /// `VCpuInfo.DefaultVCpus`.
    pub vcpus: Option<u32>,
    /// `ProcessorInfo.SupportedArchitectures`: i386, x86_64, arm64, …
    pub architectures: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Market {
    Spot,
    OnDemand,
}

/// One RunInstances call (count 1).
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    /// The `Name` tag.
    pub name: String,
    pub template: String,
    /// The `owner` tag.
    pub relay_id: String,
    pub instance_type: String,
    pub ami: String,
    pub subnet: Option<String>,
    pub security_group: Option<String>,
    pub market: Market,
    /// The boot script, plain text (the SDK layer base64-encodes it).
    pub user_data: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// RequestLimitExceeded, Throttling: back off and retry.
    Throttled,
    /// 5xx, timeouts, connection errors: retry.
    Transient,
    /// No spot capacity (or spot refused): fall back to on-demand.
    NoSpot,
    /// Anything else: do not retry.
    Fatal,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
}

impl ApiError {
    /// Classifies an EC2 error code.
    pub fn from_code(code: &str, message: impl Into<String>) -> ApiError {
        let kind = match code {
            "RequestLimitExceeded" | "Throttling" | "ThrottlingException" => ErrorKind::Throttled,
            "InternalError" | "ServiceUnavailable" | "Unavailable" | "InternalFailure" => {
                ErrorKind::Transient
            }
            "InsufficientInstanceCapacity"
            | "SpotMaxPriceTooLow"
            | "MaxSpotInstanceCountExceeded"
            | "InsufficientCapacity"
            | "UnfulfillableCapacity" => ErrorKind::NoSpot,
            _ => ErrorKind::Fatal,
        };
        ApiError {
            kind,
            code: code.into(),
            message: message.into(),
        }
    }
}

type Fut<'a, T> = std::pin::Pin<Box<dyn Future<Output = Result<T, ApiError>> + Send + 'a>>;

/// The EC2 operations the relay uses. Object-safe so the manager holds an
/// `Arc<dyn Ec2Api>`.
pub trait Ec2Api: Send + Sync {
    /// RunInstances (one instance) with the tags and shutdown behaviour
    /// `terminate`; returns the instance as launched.
    fn run_instance<'a>(&'a self, spec: &'a LaunchSpec) -> Fut<'a, Instance>;
    /// DescribeInstances filtered by `owner = relay_id`, every state.
    fn describe_owned<'a>(&'a self, relay_id: &'a str) -> Fut<'a, Vec<Instance>>;
    /// TerminateInstances.
    fn terminate<'a>(&'a self, ids: &'a [String]) -> Fut<'a, ()>;
    /// DescribeInstanceTypes of one type (None: the reply lists no type).
    fn instance_type<'a>(&'a self, instance_type: &'a str) -> Fut<'a, Option<TypeInfo>>;
}

/// How often and how patiently a call is retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

pub const RETRY: RetryPolicy = RetryPolicy {
    attempts: 6,
    first_backoff: Duration::from_millis(250),
    max_backoff: Duration::from_secs(8),
};

/// Runs `call` until it succeeds, fails with a non-retryable error, or
/// `policy.attempts` are used up; sleeps `first_backoff` doubling between
/// attempts.
pub async fn retry<T, F, Fu>(
    op: &'static str,
    policy: RetryPolicy,
    mut call: F,
) -> Result<T, super::Error>
where
    F: FnMut() -> Fu,
    Fu: Future<Output = Result<T, ApiError>>,
{
    let mut backoff = policy.first_backoff;
    let mut attempt = 1;
    loop {
        match call().await {
            Ok(v) => return Ok(v),
            Err(e)
                if matches!(e.kind, ErrorKind::Throttled | ErrorKind::Transient)
                    && attempt < policy.attempts =>
            {
                tracing::warn!(op, attempt, ?backoff, error = %e, "EC2 call failed; retrying");
                crate::metrics::ec2_api_retry(op);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(policy.max_backoff);
                attempt += 1;
            }
            Err(source) => return Err(super::Error::Api { op, source }),
        }
    }
}
